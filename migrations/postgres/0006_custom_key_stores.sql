-- Custom key stores (mirrors sqlite/0006): a cluster backs at most one store; names are
-- unique per account; sealed_password is sealed on the default HSM, never plaintext.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE custom_key_stores (
    store_id        TEXT   NOT NULL PRIMARY KEY,
    account         TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    cluster_id      TEXT   NOT NULL UNIQUE,
    trust_anchor    TEXT   NOT NULL,
    sealed_password BYTEA  NOT NULL,
    connect         BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL,
    UNIQUE (account, name)
);

ALTER TABLE keys ADD COLUMN custom_key_store_id TEXT REFERENCES custom_key_stores (store_id);

CREATE TABLE orphaned_key_objects (
    store_id       TEXT   NOT NULL,
    key_id         TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    orphaned_at_ms BIGINT NOT NULL,
    PRIMARY KEY (store_id, key_id, version)
);
