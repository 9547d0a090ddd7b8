-- Grants (kms-spec 3.5). Operations and constraints are JSON. A grant lives as long as its
-- key: deleting the key deletes its grants.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE grants (
    grant_id           TEXT    NOT NULL PRIMARY KEY,
    key_id             TEXT    NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    name               TEXT    NULL,
    grantee_principal  TEXT    NOT NULL,
    retiring_principal TEXT    NULL,
    operations         TEXT    NOT NULL,
    constraints        TEXT    NULL,
    issuing_account    TEXT    NOT NULL,
    created_at_ms      INTEGER NOT NULL
);

CREATE INDEX grants_key_id ON grants (key_id);
CREATE INDEX grants_retiring ON grants (retiring_principal);
