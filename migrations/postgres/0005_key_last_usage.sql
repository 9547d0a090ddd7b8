-- GetKeyLastUsage (mirrors sqlite/0005).
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE key_usage_tracking (
    id            BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    started_at_ms BIGINT NOT NULL
);

CREATE TABLE key_last_usage (
    key_id     TEXT   NOT NULL PRIMARY KEY REFERENCES keys (key_id) ON DELETE CASCADE,
    operation  TEXT   NOT NULL,
    used_at_ms BIGINT NOT NULL,
    event_id   TEXT   NOT NULL,
    request_id TEXT   NOT NULL
);
