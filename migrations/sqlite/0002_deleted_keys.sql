-- Tombstones of keys destroyed by the deletion sweeper, so that a deleted key's ciphertext
-- gets a clear NotFoundException (and not InvalidCiphertextException) for ever after.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE deleted_keys (
    key_id        TEXT    NOT NULL PRIMARY KEY,
    account       TEXT    NOT NULL,
    deleted_at_ms INTEGER NOT NULL
);
