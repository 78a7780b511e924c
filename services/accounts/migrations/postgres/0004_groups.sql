-- Groups: `{enterprise}/im/group/{name}` belongs to the group's members (the ACL's `%g`).
-- A group name is a topic level and follows the username rule: one spelling, unique in its
-- enterprise regardless of case (the API keeps names in lowercase).
-- Same tables and meaning as migrations/sqlite; types in Postgres' own terms.
CREATE TABLE groups (
    id            TEXT PRIMARY KEY,
    enterprise_id TEXT NOT NULL REFERENCES enterprises(id),
    name          TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    -- Bumped by every change of the member list. The row lock it takes orders concurrent
    -- changes to one group, so "is this its last owner?" is never answered from a stale count.
    version       BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX groups_by_lower_name ON groups (enterprise_id, lower(name));

-- One row per (group, user) ever related; `member = FALSE` records a removal so that
-- incremental sync can report it, like `follows.following`.
CREATE TABLE memberships (
    group_id  TEXT NOT NULL REFERENCES groups(id),
    user_id   TEXT NOT NULL REFERENCES users(id),
    role      TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    member    BOOLEAN NOT NULL,
    version   BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX memberships_by_version ON memberships (user_id, version);

CREATE SEQUENCE memberships_version;
