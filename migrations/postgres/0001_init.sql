-- p11kms metadata schema on PostgreSQL, version 1: keys, key versions, tags and aliases.
-- Mirrors migrations/sqlite/0001_init.sql (same version, same meaning). Integers are BIGINT
-- throughout: the store reads every integer as a 64-bit value on both backends.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE keys (
    key_id              TEXT   NOT NULL PRIMARY KEY,
    account             TEXT   NOT NULL,
    description         TEXT   NOT NULL,
    key_spec            TEXT   NOT NULL,
    key_usage           TEXT   NOT NULL,
    origin              TEXT   NOT NULL,
    state               TEXT   NOT NULL,
    created_at_ms       BIGINT NOT NULL,
    deletion_date_ms    BIGINT NULL,
    pending_window_days BIGINT NULL,
    current_version     BIGINT NOT NULL,
    policy              TEXT   NOT NULL
);

CREATE INDEX keys_account ON keys (account);

CREATE TABLE key_versions (
    key_id        TEXT   NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    version       BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);

CREATE TABLE tags (
    key_id    TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    tag_key   TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
);

CREATE TABLE aliases (
    account       TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    key_id        TEXT   NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (account, name)
);

CREATE INDEX aliases_key_id ON aliases (key_id);
