-- Enterprises, users, follow relations with a version for incremental contact sync.
-- Same tables and meaning as migrations/sqlite; types in Postgres' own terms.
CREATE TABLE enterprises (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    enterprise_id TEXT NOT NULL REFERENCES enterprises(id),
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    signature     TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms    BIGINT NOT NULL,
    UNIQUE (enterprise_id, username)
);

CREATE TABLE follows (
    enterprise_id TEXT NOT NULL,
    follower_id   TEXT NOT NULL REFERENCES users(id),
    followee_id   TEXT NOT NULL REFERENCES users(id),
    following     BOOLEAN NOT NULL,
    version       BIGINT NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_by_version ON follows (follower_id, version);

CREATE SEQUENCE follows_version;
