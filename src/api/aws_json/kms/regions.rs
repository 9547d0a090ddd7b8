//! Multi-Region keys on the AWS door: ReplicateKey, UpdatePrimaryRegion, and KeyMetadata's
//! `MultiRegionConfiguration`.

use super::members::{from_json, to_json};
use crate::core::regions::{
    MultiRegionConfiguration, MultiRegionKey, ReplicateKeyRequest, ReplicateKeyResponse,
    UpdatePrimaryRegionRequest,
};

from_json! {
    ReplicateKeyRequest {
        key_id, replica_region, policy, bypass_policy_lockout_safety_check, description, tags,
    }
    UpdatePrimaryRegionRequest { key_id, primary_region }
}

to_json! {
    ReplicateKeyResponse { replica_key_metadata, replica_policy, replica_tags }
    MultiRegionConfiguration { multi_region_key_type, primary_key, replica_keys }
    MultiRegionKey { arn, region }
}
