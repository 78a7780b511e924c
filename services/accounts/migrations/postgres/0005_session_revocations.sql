-- Login sessions (refresh families) that were logged out: their access tokens issued before
-- `revoked_ms` are refused. Edges are primed with the recent ones at start, so a device's
-- logout outlives a restart even without Redis. One row per session; the later instant wins.
-- Same tables and meaning as migrations/sqlite; types in Postgres' own terms.
CREATE TABLE session_revocations (
    family      TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    revoked_ms  BIGINT NOT NULL
);
CREATE INDEX session_revocations_by_time ON session_revocations (revoked_ms);
