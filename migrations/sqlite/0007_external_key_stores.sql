-- External key stores (issue 16, Part B): custom key stores of type EXTERNAL_KEY_STORE, backed
-- by an XKS proxy rather than an `[[hsm.cluster]]` device. `store_type` tells the two kinds
-- apart. For an external store, `cluster_id` holds the store's own id (the column is NOT NULL
-- and UNIQUE since 0006, and an external store has no cluster), `trust_anchor` is empty and
-- `sealed_password` is empty; its proxy is `xks_endpoint` + `xks_uri_path`, reached with
-- `xks_connectivity` (PUBLIC_ENDPOINT), and it signs with `xks_access_key_id` and the raw
-- secret access key sealed exactly as a store password is (`xks_sealed_secret`: AES-GCM
-- under the sealing key on the default store's HSM, the store id as AAD): never plaintext.
-- keys.xks_key_id is the external key (the proxy's key id) of a key in an external store;
-- one external key backs at most one KMS key per store.
-- Never edit this file once released: sqlx records its checksum.

ALTER TABLE custom_key_stores ADD COLUMN store_type TEXT NOT NULL DEFAULT 'AWS_CLOUDHSM';
ALTER TABLE custom_key_stores ADD COLUMN xks_endpoint TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_uri_path TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_connectivity TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_access_key_id TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_sealed_secret BLOB;

ALTER TABLE keys ADD COLUMN xks_key_id TEXT;

CREATE UNIQUE INDEX keys_xks_key_id ON keys (custom_key_store_id, xks_key_id)
    WHERE xks_key_id IS NOT NULL;
