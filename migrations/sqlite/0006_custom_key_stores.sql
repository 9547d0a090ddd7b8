-- Custom key stores (issue 15): AWS_CLOUDHSM-type stores, each on one operator-declared
-- `[[hsm.cluster]]` PKCS#11 device. A cluster backs at most one store; names are unique per
-- account. `sealed_password` is the KeyStorePassword sealed (AES-GCM) under a non-extractable
-- key on the default store's HSM: never plaintext. `connect` is what the key administrator
-- last asked for (ConnectCustomKeyStore sets it, DisconnectCustomKeyStore clears it), so that a
-- restart reconnects every store that was meant to be connected.
-- keys.custom_key_store_id names the store of a key in one (NULL: the default store); a store
-- with keys cannot be deleted.
-- orphaned_key_objects: key material the deletion sweeper could not destroy because the key's
-- store was not connected (AWS leaves such material in the cluster for the operator); kept
-- for `p11kms check` after the key's rows are gone.
-- Never edit this file once released: sqlx records its checksum.

CREATE TABLE custom_key_stores (
    store_id        TEXT    NOT NULL PRIMARY KEY,
    account         TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    cluster_id      TEXT    NOT NULL UNIQUE,
    trust_anchor    TEXT    NOT NULL,
    sealed_password BLOB    NOT NULL,
    connect         INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    UNIQUE (account, name)
);

ALTER TABLE keys ADD COLUMN custom_key_store_id TEXT REFERENCES custom_key_stores (store_id);

CREATE TABLE orphaned_key_objects (
    store_id       TEXT    NOT NULL,
    key_id         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    orphaned_at_ms INTEGER NOT NULL,
    PRIMARY KEY (store_id, key_id, version)
);
