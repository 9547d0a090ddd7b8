-- GetKeyLastUsage (issue 12, item 16): the last successful cryptographic operation on each
-- key. The engine keeps it in memory and writes it here in batches (periodically and at
-- shutdown), never once per request.
-- key_usage_tracking: one row, the time tracking began on this database (TrackingStartDate is
-- the later of it and the key's creation).
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE key_usage_tracking (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    started_at_ms INTEGER NOT NULL
);

CREATE TABLE key_last_usage (
    key_id     TEXT    NOT NULL PRIMARY KEY REFERENCES keys (key_id) ON DELETE CASCADE,
    operation  TEXT    NOT NULL,
    used_at_ms INTEGER NOT NULL,
    event_id   TEXT    NOT NULL,
    request_id TEXT    NOT NULL
);
