-- Several nodes on one database (issue 17; mirrored by postgres/0008):
-- row_version: every write of a key or key store row is compare-and-set on it and raises it.
-- change_log: one row per committed write, appended in the write's own transaction (SQLite
--   has one node by definition, but the log keeps both backends alike and feeds `check`).
-- sessions: AssumeRole sessions. The secret access key is sealed on the HSM before it gets
--   here; the session token is kept only as its SHA-256.
-- Uniqueness stays with the database: key ids, aliases per (account, name), key store names
--   per account and clusters per store already have their PRIMARY KEY / UNIQUE constraints
--   (0001, 0006). Grant names are deliberately not unique per key: CreateGrant with a known
--   name but other properties makes a new grant, as in AWS.
-- Never edit this file once released: sqlx records its checksum.

ALTER TABLE keys ADD COLUMN row_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE custom_key_stores ADD COLUMN row_version INTEGER NOT NULL DEFAULT 1;

CREATE TABLE change_log (
    seq   INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind  TEXT    NOT NULL,
    id    TEXT    NOT NULL
);

CREATE INDEX change_log_at_ms ON change_log (at_ms);

CREATE TABLE sessions (
    access_key_id  TEXT    NOT NULL PRIMARY KEY,
    token_sha256   TEXT    NOT NULL UNIQUE,
    sealed_secret  BLOB    NOT NULL,
    role_arn       TEXT    NOT NULL,
    role_id        TEXT    NOT NULL,
    session_name   TEXT    NOT NULL,
    session_arn    TEXT    NOT NULL,
    account        TEXT    NOT NULL,
    session_policy TEXT    NULL,
    tags           TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);

CREATE INDEX sessions_expires ON sessions (expires_at_ms);
