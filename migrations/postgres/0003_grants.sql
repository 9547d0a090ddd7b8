-- Grants (kms-spec 3.5; mirrors sqlite/0003). Operations and constraints are JSON text.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE grants (
    grant_id           TEXT   NOT NULL PRIMARY KEY,
    key_id             TEXT   NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    name               TEXT   NULL,
    grantee_principal  TEXT   NOT NULL,
    retiring_principal TEXT   NULL,
    operations         TEXT   NOT NULL,
    constraints        TEXT   NULL,
    issuing_account    TEXT   NOT NULL,
    created_at_ms      BIGINT NOT NULL
);

CREATE INDEX grants_key_id ON grants (key_id);
CREATE INDEX grants_retiring ON grants (retiring_principal);
