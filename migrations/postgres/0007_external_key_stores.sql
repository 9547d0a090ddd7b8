-- External key stores (mirrors sqlite/0007).
-- Never edit this file once released: sqlx records its checksum.

ALTER TABLE custom_key_stores ADD COLUMN store_type TEXT NOT NULL DEFAULT 'AWS_CLOUDHSM';
ALTER TABLE custom_key_stores ADD COLUMN xks_endpoint TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_uri_path TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_connectivity TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_access_key_id TEXT;
ALTER TABLE custom_key_stores ADD COLUMN xks_sealed_secret BYTEA;

ALTER TABLE keys ADD COLUMN xks_key_id TEXT;

CREATE UNIQUE INDEX keys_xks_key_id ON keys (custom_key_store_id, xks_key_id)
    WHERE xks_key_id IS NOT NULL;
