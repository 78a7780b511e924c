-- Account events not yet taken by the bus (NATS unreachable): written before the event is
-- published and removed once it is, so an accounts node that dies meanwhile leaves them for
-- any node to publish later (`events.rs`). Edges take an event twice or late without harm.
-- Same tables and meaning as migrations/sqlite; types in Postgres' own terms.
CREATE TABLE event_outbox (
    id          BIGSERIAL PRIMARY KEY,
    subject     TEXT NOT NULL,
    body        BYTEA NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX event_outbox_by_time ON event_outbox (created_ms);
