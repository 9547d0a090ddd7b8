-- Tombstones of keys destroyed by the deletion sweeper (mirrors sqlite/0002).
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE deleted_keys (
    key_id        TEXT   NOT NULL PRIMARY KEY,
    account       TEXT   NOT NULL,
    deleted_at_ms BIGINT NOT NULL
);
