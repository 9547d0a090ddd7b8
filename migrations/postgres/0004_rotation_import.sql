-- Rotation and import of key material (mirrors sqlite/0004). Flags are BIGINT 0/1, as on
-- SQLite, so both backends decode them the same way.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE key_lifecycle (
    key_id               TEXT   NOT NULL PRIMARY KEY REFERENCES keys (key_id) ON DELETE CASCADE,
    rotation_enabled     BIGINT NOT NULL DEFAULT 0,
    rotation_period_days BIGINT NULL,
    next_rotation_ms     BIGINT NULL,
    on_demand_rotations  BIGINT NOT NULL DEFAULT 0,
    expiration_model     TEXT   NULL,
    valid_to_ms          BIGINT NULL,
    material_check       BYTEA  NULL,
    material_present     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE key_rotations (
    key_id        TEXT   NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    version       BIGINT NOT NULL,
    rotated_at_ms BIGINT NOT NULL,
    rotation_type TEXT   NOT NULL,
    PRIMARY KEY (key_id, version)
);

CREATE TABLE import_tokens (
    token_sha256       TEXT   NOT NULL PRIMARY KEY,
    key_id             TEXT   NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    wrapping_key_id    TEXT   NOT NULL,
    wrapping_algorithm TEXT   NOT NULL,
    wrapping_key_spec  TEXT   NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    expires_at_ms      BIGINT NOT NULL
);

CREATE INDEX import_tokens_key_id ON import_tokens (key_id);
