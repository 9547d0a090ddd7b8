-- Several nodes on one database (issue 17; mirrors sqlite/0008):
-- row_version: every write of a key or key store row is compare-and-set on it and raises it.
-- change_log: one row per committed write, appended in the write's own transaction; other
--   nodes read it to refresh their caches. An AFTER INSERT trigger NOTIFYs channel
--   p11kms_changes with the new seq, delivered when the transaction commits.
-- sessions: AssumeRole sessions shared by every node. The secret access key is sealed on the
--   HSM before it gets here; the session token is kept only as its SHA-256.
-- Uniqueness stays with the database: key ids, aliases per (account, name), key store names
--   per account and clusters per store already have their PRIMARY KEY / UNIQUE constraints
--   (0001, 0006). Grant names are deliberately not unique per key: CreateGrant with a known
--   name but other properties makes a new grant, as in AWS.
-- Never edit this file once released: sqlx records its checksum.

ALTER TABLE keys ADD COLUMN row_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE custom_key_stores ADD COLUMN row_version BIGINT NOT NULL DEFAULT 1;

CREATE TABLE change_log (
    seq   BIGSERIAL NOT NULL PRIMARY KEY,
    at_ms BIGINT    NOT NULL,
    kind  TEXT      NOT NULL,
    id    TEXT      NOT NULL
);

CREATE INDEX change_log_at_ms ON change_log (at_ms);

CREATE FUNCTION p11kms_notify_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('p11kms_changes', NEW.seq::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER change_log_notify AFTER INSERT ON change_log
    FOR EACH ROW EXECUTE FUNCTION p11kms_notify_change();

CREATE TABLE sessions (
    access_key_id  TEXT   NOT NULL PRIMARY KEY,
    token_sha256   TEXT   NOT NULL UNIQUE,
    sealed_secret  BYTEA  NOT NULL,
    role_arn       TEXT   NOT NULL,
    role_id        TEXT   NOT NULL,
    session_name   TEXT   NOT NULL,
    session_arn    TEXT   NOT NULL,
    account        TEXT   NOT NULL,
    session_policy TEXT   NULL,
    tags           TEXT   NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);

CREATE INDEX sessions_expires ON sessions (expires_at_ms);
