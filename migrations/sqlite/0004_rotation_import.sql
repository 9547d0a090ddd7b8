-- Rotation and import of key material (issue 7).
-- key_lifecycle: one row per key that has a rotation schedule or imported material.
-- key_rotations: one row per rotation (the version it created, when, and how).
-- import_tokens: outstanding GetParametersForImport answers; the token itself is never stored,
-- only its SHA-256. The wrapping key pair lives on the token under wrapping_key_id.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE key_lifecycle (
    key_id               TEXT    NOT NULL PRIMARY KEY REFERENCES keys (key_id) ON DELETE CASCADE,
    rotation_enabled     INTEGER NOT NULL DEFAULT 0,
    rotation_period_days INTEGER NULL,
    next_rotation_ms     INTEGER NULL,
    on_demand_rotations  INTEGER NOT NULL DEFAULT 0,
    expiration_model     TEXT    NULL,
    valid_to_ms          INTEGER NULL,
    material_check       BLOB    NULL,
    material_present     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE key_rotations (
    key_id        TEXT    NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    rotated_at_ms INTEGER NOT NULL,
    rotation_type TEXT    NOT NULL,
    PRIMARY KEY (key_id, version)
);

CREATE TABLE import_tokens (
    token_sha256       TEXT    NOT NULL PRIMARY KEY,
    key_id             TEXT    NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    wrapping_key_id    TEXT    NOT NULL,
    wrapping_algorithm TEXT    NOT NULL,
    wrapping_key_spec  TEXT    NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    expires_at_ms      INTEGER NOT NULL
);

CREATE INDEX import_tokens_key_id ON import_tokens (key_id);
