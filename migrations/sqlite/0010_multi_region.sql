-- Multi-Region keys (issue 20; mirrored by the other backend's 0010): a multi-Region key's
-- row names its primary Region and its replicas' Regions (comma-separated, in the order
-- they were added), the same on every Region's row of the key. Both NULL for a
-- single-Region key.
-- Never edit this file once released: sqlx records its checksum.

ALTER TABLE keys ADD COLUMN mr_primary_region TEXT;
ALTER TABLE keys ADD COLUMN mr_replica_regions TEXT;
