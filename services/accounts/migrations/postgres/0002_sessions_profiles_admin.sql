-- Profiles, enterprise admins, token revocation, refresh tokens, per-enterprise ACL tables and
-- API keys. Same meaning as migrations/sqlite; types in Postgres' own terms.
ALTER TABLE users ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN org_unit TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;
-- Access tokens issued before this instant (Unix ms) are refused.
ALTER TABLE users ADD COLUMN tokens_revoked_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX users_by_org_unit ON users (enterprise_id, org_unit);

-- Opaque refresh tokens, stored as their SHA-256. Each use marks the row used and issues the
-- next token of the same family; presenting a used one again revokes the family.
CREATE TABLE refresh_tokens (
    hash        TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    family      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    used        BOOLEAN NOT NULL DEFAULT FALSE,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);

-- An enterprise's own ACL rules and auto-subscribe table (empty text: the default).
CREATE TABLE policies (
    enterprise_id  TEXT PRIMARY KEY REFERENCES enterprises(id),
    acl_rules      TEXT NOT NULL,
    auto_subscribe TEXT NOT NULL,
    version        BIGINT NOT NULL
);

-- Keys business backends authenticate with (the publish API), stored as their SHA-256.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    enterprise_id TEXT NOT NULL REFERENCES enterprises(id),
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    created_ms    BIGINT NOT NULL,
    UNIQUE (enterprise_id, name)
);
