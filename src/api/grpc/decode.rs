//! gRPC responses back into the engine's types: the inverse of the door's conversions. The CLI
//! receives gRPC messages and renders them with the AWS door's renderers
//! (`api::aws_json::kms::metadata` and the rest), so both print AWS's shape: absent members
//! omitted, never `null` or an empty string where AWS leaves a member out.

use std::str::FromStr;

use crate::core::aliases::AliasListEntry;
use crate::core::domain::UnknownValue;
use crate::core::keys::{KeyMetadata, ScheduleKeyDeletionResponse};
use crate::core::rotation::{KeyRotationStatus, RotationsListEntry};
use crate::pb;
use crate::store::GrantRecord;

/// A timestamp as Unix milliseconds.
fn ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn opt_ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(ms)
}

/// Empty (proto3's "not set" for strings) as `None`.
fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// An enum field as its enum; a value this build does not know (a newer daemon) is an error
/// naming the field.
fn spelled<T: FromStr<Err = UnknownValue>>(field: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|e| format!("the daemon sent {field} '{v}': {e}"))
}

/// A `KeyMetadata` message as the engine's type.
pub fn key_metadata(m: pb::KeyMetadata) -> Result<KeyMetadata, String> {
    Ok(KeyMetadata {
        aws_account_id: m.aws_account_id,
        key_id: m.key_id,
        arn: m.arn,
        creation_date_ms: opt_ms(&m.creation_date).unwrap_or_default(),
        enabled: m.enabled,
        description: m.description,
        key_usage: spelled("KeyUsage", &m.key_usage)?,
        key_state: spelled("KeyState", &m.key_state)?,
        deletion_date_ms: opt_ms(&m.deletion_date),
        origin: spelled("Origin", &m.origin)?,
        key_manager: m.key_manager,
        key_spec: spelled("KeySpec", &m.key_spec)?,
        encryption_algorithms: m.encryption_algorithms,
        signing_algorithms: m.signing_algorithms,
        mac_algorithms: m.mac_algorithms,
        key_agreement_algorithms: m.key_agreement_algorithms,
        multi_region: m.multi_region,
        pending_deletion_window_in_days: m.pending_deletion_window_in_days,
        current_key_material_id: m.current_key_material_id,
        valid_to_ms: opt_ms(&m.valid_to),
        expiration_model: opt(m.expiration_model),
    })
}

/// An `AliasListEntry` message as the engine's type.
pub fn alias_entry(a: pb::AliasListEntry) -> AliasListEntry {
    AliasListEntry {
        alias_name: a.alias_name,
        alias_arn: a.alias_arn,
        target_key_id: a.target_key_id,
        creation_date_ms: opt_ms(&a.creation_date),
        last_updated_date_ms: opt_ms(&a.last_updated_date),
    }
}

/// A `GrantListEntry` message as the engine's grant record.
pub fn grant_entry(g: pb::GrantListEntry) -> GrantRecord {
    let (subset, equals) = g
        .constraints
        .map(|c| {
            (
                c.encryption_context_subset.map(|p| p.pairs),
                c.encryption_context_equals.map(|p| p.pairs),
            )
        })
        .unwrap_or_default();
    GrantRecord {
        grant_id: g.grant_id,
        key_id: g.key_id,
        name: opt(g.name),
        grantee_principal: g.grantee_principal,
        retiring_principal: opt(g.retiring_principal),
        operations: g.operations,
        constraint_equals: equals,
        constraint_subset: subset,
        issuing_account: g.issuing_account,
        created_at_ms: opt_ms(&g.creation_date).unwrap_or_default(),
    }
}

/// A `RotationsListEntry` message as the engine's type.
pub fn rotation_entry(e: pb::RotationsListEntry) -> RotationsListEntry {
    RotationsListEntry {
        key_id: e.key_id,
        key_material_id: e.key_material_id,
        rotation_date_ms: opt_ms(&e.rotation_date),
        rotation_type: opt(e.rotation_type),
        key_material_state: e.key_material_state,
        import_state: opt(e.import_state),
        expiration_model: opt(e.expiration_model),
        valid_to_ms: opt_ms(&e.valid_to),
    }
}

/// A GetKeyRotationStatus response as the engine's type.
pub fn rotation_status(r: pb::GetKeyRotationStatusResponse) -> KeyRotationStatus {
    KeyRotationStatus {
        key_id: r.key_id,
        key_rotation_enabled: r.key_rotation_enabled,
        rotation_period_in_days: r.rotation_period_in_days,
        next_rotation_date_ms: opt_ms(&r.next_rotation_date),
        on_demand_rotation_start_date_ms: opt_ms(&r.on_demand_rotation_start_date),
    }
}

/// A ScheduleKeyDeletion response as the engine's type.
pub fn scheduled_deletion(
    r: pb::ScheduleKeyDeletionResponse,
) -> Result<ScheduleKeyDeletionResponse, String> {
    Ok(ScheduleKeyDeletionResponse {
        key_id: r.key_id,
        deletion_date_ms: opt_ms(&r.deletion_date).unwrap_or_default(),
        key_state: spelled("KeyState", &r.key_state)?,
        pending_window_in_days: r.pending_window_in_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::aws_json::kms as door;
    use crate::core::domain::KeyState;

    fn sample() -> KeyMetadata {
        crate::core::keys::sample_metadata()
    }

    #[test]
    fn a_round_trip_through_grpc_renders_as_the_door_renders() {
        let mut pending = sample();
        pending.deletion_date_ms = Some(1_700_100_000_000);
        pending.pending_deletion_window_in_days = Some(7);
        pending.key_state = KeyState::PendingDeletion;
        let mut imported = sample();
        imported.valid_to_ms = Some(1_800_000_000_000);
        imported.expiration_model = Some("KEY_MATERIAL_EXPIRES".into());
        for m in [sample(), pending, imported] {
            let back = key_metadata(pb::KeyMetadata::from(m.clone())).unwrap();
            assert_eq!(back, m);
            assert_eq!(door::metadata(&back), door::metadata(&m));
        }
        let g = GrantRecord {
            grant_id: "g".into(),
            key_id: "k".into(),
            name: None,
            grantee_principal: "arn:aws:iam::111122223333:user/bob".into(),
            retiring_principal: None,
            operations: vec!["Decrypt".into()],
            constraint_equals: None,
            constraint_subset: Some([("a".to_string(), "b".to_string())].into()),
            issuing_account: "111122223333".into(),
            created_at_ms: 1_700_000_000_000,
        };
        assert_eq!(grant_entry(pb::GrantListEntry::from(g.clone())), g);
    }
}
