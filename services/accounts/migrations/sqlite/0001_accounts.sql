-- Enterprises, users, follow relations with a version for incremental contact sync.
CREATE TABLE enterprises (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    enterprise_id TEXT NOT NULL REFERENCES enterprises(id),
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    signature     TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    UNIQUE (enterprise_id, username)
);

-- One row per (follower, followee) ever related; `following = 0` records an unfollow so that
-- incremental sync can report the removal.
CREATE TABLE follows (
    enterprise_id TEXT NOT NULL,
    follower_id   TEXT NOT NULL REFERENCES users(id),
    followee_id   TEXT NOT NULL REFERENCES users(id),
    following     INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_by_version ON follows (follower_id, version);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('follows', 0);
