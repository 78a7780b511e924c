-- Account events not yet taken by the bus (NATS unreachable): written before the event is
-- published and removed once it is, so an accounts node that dies meanwhile leaves them for
-- any node to publish later (`events.rs`). Edges take an event twice or late without harm.
CREATE TABLE event_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    subject     TEXT NOT NULL,
    body        BLOB NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX event_outbox_by_time ON event_outbox (created_ms);
