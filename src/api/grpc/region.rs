//! `p11kms.v1.RegionService`: what a peer Region's daemon asks of this one (multi-Region
//! keys, issue 20), and the one converter of its messages both ways (the door reads
//! requests and writes answers; `region_link`, the client side, writes requests and reads
//! answers through the same functions).

use super::convert::{each, FromWire, IntoWire};
use super::decode;
use crate::core::operation::Empty;
use crate::core::regions::{
    AcceptReplicaRequest, AcceptReplicaResponse, ReplicaVersion, SharedRotation,
    UpdateMultiRegionKeyRequest,
};
use crate::core::KmsError;
use crate::pb;
use crate::pb::region_service_server::RegionService;

service_table! {
impl RegionService as TABLE, signed as "kms";
operations {
    accept_replica(AcceptReplicaRequest) -> AcceptReplicaResponse = AcceptReplicaRequest;
    update_multi_region_key(UpdateMultiRegionKeyRequest) -> UpdateMultiRegionKeyResponse = UpdateMultiRegionKeyRequest;
}
}

impl super::FromMessage<pb::AcceptReplicaRequest> for AcceptReplicaRequest {
    fn from_message(m: pb::AcceptReplicaRequest) -> Result<Self, KmsError> {
        Ok(AcceptReplicaRequest {
            source_region: m.source_region,
            principal_arn: m.principal_arn,
            key_id: m.key_id,
            account: m.account,
            key_spec: m.key_spec,
            key_usage: m.key_usage,
            current_version: m.current_version,
            primary_region: m.primary_region,
            replica_regions: m.replica_regions,
            policy: Some(m.policy).filter(|p| !p.is_empty()),
            bypass_policy_lockout_safety_check: m.bypass_policy_lockout_safety_check,
            description: m.description,
            tags: Vec::from_wire(m.tags),
            versions: m.versions.into_iter().map(version_from).collect(),
            rotation: m.rotation.map(rotation_from),
        })
    }
}

impl super::FromMessage<pb::UpdateMultiRegionKeyRequest> for UpdateMultiRegionKeyRequest {
    fn from_message(m: pb::UpdateMultiRegionKeyRequest) -> Result<Self, KmsError> {
        Ok(UpdateMultiRegionKeyRequest {
            source_region: m.source_region,
            principal_arn: m.principal_arn,
            key_id: m.key_id,
            primary_region: m.primary_region,
            replica_regions: m.replica_regions,
            new_version: m.new_version.map(version_from),
            current_version: m.current_version,
            rotation: m.rotation.map(rotation_from),
        })
    }
}

impl From<AcceptReplicaResponse> for pb::AcceptReplicaResponse {
    fn from(r: AcceptReplicaResponse) -> Self {
        pb::AcceptReplicaResponse {
            key_metadata: Some(r.key_metadata.into()),
            policy: r.policy,
            tags: each(r.tags),
        }
    }
}

impl From<Empty> for pb::UpdateMultiRegionKeyResponse {
    fn from(_: Empty) -> Self {
        pb::UpdateMultiRegionKeyResponse {}
    }
}

/// The request message of an AcceptReplica (the client side).
pub fn accept_replica_message(r: AcceptReplicaRequest) -> pb::AcceptReplicaRequest {
    pb::AcceptReplicaRequest {
        source_region: r.source_region,
        principal_arn: r.principal_arn,
        key_id: r.key_id,
        account: r.account,
        key_spec: r.key_spec,
        key_usage: r.key_usage,
        current_version: r.current_version,
        primary_region: r.primary_region,
        replica_regions: r.replica_regions,
        policy: r.policy.unwrap_or_default(),
        bypass_policy_lockout_safety_check: r.bypass_policy_lockout_safety_check,
        description: r.description,
        tags: each(r.tags),
        versions: r.versions.into_iter().map(version_to).collect(),
        rotation: r.rotation.map(rotation_to),
    }
}

/// The request message of an UpdateMultiRegionKey (the client side).
pub fn update_message(r: UpdateMultiRegionKeyRequest) -> pb::UpdateMultiRegionKeyRequest {
    pb::UpdateMultiRegionKeyRequest {
        source_region: r.source_region,
        principal_arn: r.principal_arn,
        key_id: r.key_id,
        primary_region: r.primary_region,
        replica_regions: r.replica_regions,
        new_version: r.new_version.map(version_to),
        current_version: r.current_version,
        rotation: r.rotation.map(rotation_to),
    }
}

/// An AcceptReplica answer as the engine's type (the client side).
pub fn accept_replica_answer(
    m: pb::AcceptReplicaResponse,
) -> Result<AcceptReplicaResponse, String> {
    let metadata = m.key_metadata.ok_or("the peer sent no KeyMetadata")?;
    Ok(AcceptReplicaResponse {
        key_metadata: decode::key_metadata(metadata)?,
        policy: m.policy,
        tags: Vec::from_wire(m.tags),
    })
}

fn rotation_from(r: pb::SharedRotation) -> SharedRotation {
    SharedRotation {
        enabled: r.enabled,
        period_days: r.period_days,
        next_rotation_ms: Option::<i64>::from_wire(r.next_rotation),
    }
}

fn rotation_to(r: SharedRotation) -> pb::SharedRotation {
    pb::SharedRotation {
        enabled: r.enabled,
        period_days: r.period_days,
        next_rotation: r.next_rotation_ms.into_wire(),
    }
}

fn version_from(v: pb::ReplicaVersion) -> ReplicaVersion {
    ReplicaVersion {
        version: v.version,
        created_at_ms: i64::from_wire(v.created_at),
        material: v.material,
    }
}

fn version_to(v: ReplicaVersion) -> pb::ReplicaVersion {
    pb::ReplicaVersion {
        version: v.version,
        created_at: v.created_at_ms.into_wire(),
        material: v.material,
    }
}
