-- Wrapped-key residency (issue 19; mirrored by postgres/0009): a key version whose material
-- lives outside the HSM holds it here, wrapped on the device under an HSM master key and
-- bound to its key id and version by the device (the blob format is the HSM layer's).
-- wrap_master: the master key version that wraps it, kept apart for master-key rotation's
-- batches. public_key: a wrapped key pair's public half (DER SubjectPublicKeyInfo), which
-- has no object anywhere; NULL for a secret key. All NULL for a version whose material is
-- a token object.
-- Never edit this file once released: sqlx records its checksum.

ALTER TABLE key_versions ADD COLUMN wrapped_blob BLOB;
ALTER TABLE key_versions ADD COLUMN wrap_master INTEGER;
ALTER TABLE key_versions ADD COLUMN public_key BLOB;

CREATE INDEX key_versions_wrap_master ON key_versions (wrap_master);
