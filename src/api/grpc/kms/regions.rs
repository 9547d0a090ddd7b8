//! Multi-Region keys on the gRPC door: ReplicateKey, UpdatePrimaryRegion, and KeyMetadata's
//! `MultiRegionConfiguration` (both ways: the CLI reads it back).

use super::super::convert::{each, from_message, some, to_message};
use crate::core::operation::Empty;
use crate::core::regions::{
    MultiRegionConfiguration, MultiRegionKey, MultiRegionKeyType, ReplicateKeyRequest,
    ReplicateKeyResponse, UpdatePrimaryRegionRequest,
};
use crate::pb;

from_message!(pb::ReplicateKeyRequest => ReplicateKeyRequest {
    key_id, replica_region, policy, bypass_policy_lockout_safety_check, description, tags
});
from_message!(pb::UpdatePrimaryRegionRequest => UpdatePrimaryRegionRequest {
    key_id, primary_region
});

to_message!(ReplicateKeyResponse => pb::ReplicateKeyResponse {
    replica_key_metadata => some, replica_policy, replica_tags => each
});
to_message!(Empty => pb::UpdatePrimaryRegionResponse {});
to_message!(MultiRegionConfiguration => pb::MultiRegionConfiguration {
    multi_region_key_type, primary_key => some, replica_keys => each
});
to_message!(MultiRegionKey => pb::MultiRegionKey { arn, region });

/// A `MultiRegionConfiguration` message as the engine's type (the CLI's replies).
pub fn configuration(m: pb::MultiRegionConfiguration) -> Result<MultiRegionConfiguration, String> {
    let key = |k: pb::MultiRegionKey| MultiRegionKey {
        arn: k.arn,
        region: k.region,
    };
    Ok(MultiRegionConfiguration {
        multi_region_key_type: MultiRegionKeyType::parse(&m.multi_region_key_type).ok_or_else(
            || {
                format!(
                    "the daemon sent MultiRegionKeyType '{}'",
                    m.multi_region_key_type
                )
            },
        )?,
        primary_key: key(m.primary_key.unwrap_or_default()),
        replica_keys: m.replica_keys.into_iter().map(key).collect(),
    })
}
