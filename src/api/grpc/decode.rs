//! gRPC responses back into the engine's types: the inverse of the door's conversions, by
//! the same field rules ([`super::convert`]), declared once per message. The CLI
//! receives gRPC messages and renders them with the AWS door's renderers
//! (`api::aws_json::kms::metadata` and the rest), so both print AWS's shape: absent members
//! omitted, never `null` or an empty string where AWS leaves a member out.

use std::str::FromStr;

use super::convert::{fields, pairs};
use crate::core::aliases::AliasListEntry;
use crate::core::domain::UnknownValue;
use crate::core::keys::{KeyMetadata, ScheduleKeyDeletionResponse};
use crate::core::keystores::CustomKeyStoresListEntry;
use crate::core::rotation::{KeyRotationStatus, RotationsListEntry};
use crate::pb;
use crate::store::GrantRecord;

/// An enum field as its enum; a value this build does not know (a newer daemon) is an error
/// naming the field.
fn spelled<T: FromStr<Err = UnknownValue>>(field: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|e| format!("the daemon sent {field} '{v}': {e}"))
}

/// A `KeyMetadata` message as the engine's type.
pub fn key_metadata(m: pb::KeyMetadata) -> Result<KeyMetadata, String> {
    Ok(fields!(reply m, KeyMetadata {
        key_usage = spelled("KeyUsage", &m.key_usage)?,
        key_state = spelled("KeyState", &m.key_state)?,
        origin = spelled("Origin", &m.origin)?,
        key_spec = spelled("KeySpec", &m.key_spec)?,
        xks_key_configuration = (!m.xks_key_id.is_empty())
            .then(|| crate::core::external::XksKeyConfiguration { id: m.xks_key_id.clone() }),
        multi_region_configuration = m
            .multi_region_configuration
            .clone()
            .map(super::kms::regions::configuration)
            .transpose()?,
        aws_account_id, key_id, arn, creation_date_ms: creation_date, enabled, description,
        deletion_date_ms: deletion_date, key_manager, encryption_algorithms, signing_algorithms,
        mac_algorithms, key_agreement_algorithms, multi_region, pending_deletion_window_in_days,
        current_key_material_id, valid_to_ms: valid_to, expiration_model, custom_key_store_id,
        cloud_hsm_cluster_id
    }))
}

/// An `AliasListEntry` message as the engine's type.
pub fn alias_entry(a: pb::AliasListEntry) -> AliasListEntry {
    fields!(reply a, AliasListEntry {
        alias_name, alias_arn, target_key_id,
        creation_date_ms: creation_date, last_updated_date_ms: last_updated_date
    })
}

/// An optional enum field: empty (AWS leaves the member out) is `None`, else as [`spelled`].
fn spelled_optional<T: FromStr<Err = UnknownValue>>(
    field: &str,
    v: &str,
) -> Result<Option<T>, String> {
    (!v.is_empty()).then(|| spelled(field, v)).transpose()
}

/// A `CustomKeyStoresListEntry` message as the engine's type.
pub fn key_store_entry(
    e: pb::CustomKeyStoresListEntry,
) -> Result<CustomKeyStoresListEntry, String> {
    Ok(fields!(reply e, CustomKeyStoresListEntry {
        connection_state = spelled("ConnectionState", &e.connection_state)?,
        connection_error_code = spelled_optional("ConnectionErrorCode", &e.connection_error_code)?,
        custom_key_store_type = spelled("CustomKeyStoreType", &e.custom_key_store_type)?,
        xks_proxy_configuration = match &e.xks_proxy_configuration {
            Some(c) => Some(crate::core::external::XksProxyConfiguration {
                connectivity: spelled("XksProxyConnectivity", &c.connectivity)?,
                access_key_id: c.access_key_id.clone(),
                uri_endpoint: c.uri_endpoint.clone(),
                uri_path: c.uri_path.clone(),
            }),
            None => None,
        },
        custom_key_store_id, custom_key_store_name, cloud_hsm_cluster_id,
        trust_anchor_certificate, creation_date_ms: creation_date
    }))
}

/// A `GrantListEntry` message as the engine's grant record.
pub fn grant_entry(g: pb::GrantListEntry) -> GrantRecord {
    fields!(reply g, GrantRecord {
        constraint_equals = pairs(&g.constraints, |c| &c.encryption_context_equals),
        constraint_subset = pairs(&g.constraints, |c| &c.encryption_context_subset),
        grant_id, key_id, name, grantee_principal, retiring_principal, operations,
        issuing_account, created_at_ms: creation_date
    })
}

/// A `RotationsListEntry` message as the engine's type.
pub fn rotation_entry(e: pb::RotationsListEntry) -> RotationsListEntry {
    fields!(reply e, RotationsListEntry {
        key_id, key_material_id, rotation_date_ms: rotation_date, rotation_type,
        key_material_state, import_state, expiration_model, valid_to_ms: valid_to
    })
}

/// A GetKeyRotationStatus response as the engine's type.
pub fn rotation_status(r: pb::GetKeyRotationStatusResponse) -> KeyRotationStatus {
    fields!(reply r, KeyRotationStatus {
        key_id, key_rotation_enabled, rotation_period_in_days,
        next_rotation_date_ms: next_rotation_date,
        on_demand_rotation_start_date_ms: on_demand_rotation_start_date
    })
}

/// A ScheduleKeyDeletion response as the engine's type.
pub fn scheduled_deletion(
    r: pb::ScheduleKeyDeletionResponse,
) -> Result<ScheduleKeyDeletionResponse, String> {
    Ok(fields!(reply r, ScheduleKeyDeletionResponse {
        key_state = spelled("KeyState", &r.key_state)?,
        key_id, deletion_date_ms: deletion_date, pending_window_in_days
    }))
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
        let a = AliasListEntry {
            alias_name: "alias/a".into(),
            alias_arn: "arn:aws:kms:us-east-1:111122223333:alias/a".into(),
            target_key_id: "k".into(),
            creation_date_ms: Some(1_700_000_000_123),
            last_updated_date_ms: None,
        };
        assert_eq!(alias_entry(pb::AliasListEntry::from(a.clone())), a);
        let e = RotationsListEntry {
            key_id: "k".into(),
            key_material_id: "m".into(),
            rotation_date_ms: Some(1_700_000_000_000),
            rotation_type: Some("ON_DEMAND".into()),
            key_material_state: "CURRENT".into(),
            import_state: None,
            expiration_model: None,
            valid_to_ms: None,
        };
        assert_eq!(rotation_entry(pb::RotationsListEntry::from(e.clone())), e);
        let s = KeyRotationStatus {
            key_id: "k".into(),
            key_rotation_enabled: true,
            rotation_period_in_days: Some(90),
            next_rotation_date_ms: Some(1_707_776_000_000),
            on_demand_rotation_start_date_ms: None,
        };
        assert_eq!(
            rotation_status(pb::GetKeyRotationStatusResponse::from(s.clone())),
            s
        );
        let d = ScheduleKeyDeletionResponse {
            key_id: "k".into(),
            deletion_date_ms: 1_700_600_000_000,
            key_state: KeyState::PendingDeletion,
            pending_window_in_days: 7,
        };
        let back = scheduled_deletion(pb::ScheduleKeyDeletionResponse::from(d.clone())).unwrap();
        assert_eq!(back, d);
        let mut bad = pb::KeyMetadata::from(sample());
        bad.key_state = "Melted".into();
        let e = key_metadata(bad).unwrap_err();
        assert!(e.contains("KeyState 'Melted'"), "{e}");
    }

    /// A key store entry, connected (no error code) and failed (with one), comes back as it
    /// went and renders as the door renders it; an unknown state is named.
    #[test]
    fn key_store_entries_round_trip() {
        use crate::core::keystores::{ConnectionErrorCode, ConnectionState, CustomKeyStoreType};
        let connected = CustomKeyStoresListEntry {
            custom_key_store_id: "cks-1234567890abcdefg".into(),
            custom_key_store_name: "store".into(),
            cloud_hsm_cluster_id: "cluster-abcdefghijk".into(),
            trust_anchor_certificate: "-----BEGIN CERTIFICATE-----".into(),
            connection_state: ConnectionState::Connected,
            connection_error_code: None,
            creation_date_ms: 1_700_000_000_000,
            custom_key_store_type: CustomKeyStoreType::AwsCloudhsm,
            xks_proxy_configuration: None,
        };
        let mut failed = connected.clone();
        failed.connection_state = ConnectionState::Failed;
        failed.connection_error_code = Some(ConnectionErrorCode::UserLockedOut);
        let mut bad = pb::CustomKeyStoresListEntry::from(connected.clone());
        for e in [connected, failed] {
            let back = key_store_entry(pb::CustomKeyStoresListEntry::from(e.clone())).unwrap();
            assert_eq!(back, e);
            assert_eq!(door::key_store_entry(back), door::key_store_entry(e));
        }
        bad.connection_state = "MELTED".into();
        let e = key_store_entry(bad).unwrap_err();
        assert!(e.contains("ConnectionState 'MELTED'"), "{e}");
    }
}
