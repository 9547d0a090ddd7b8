//! Reconciliation of the metadata store with the token. It reports drift and never deletes:
//! an object it cannot match may be the only copy of someone's key.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{Kms, KmsError};
use crate::hsm::unwrap::WrappingKeyId;
use crate::hsm::ObjectInfo;
use crate::store::KeyState;

/// A key whose creation stopped between its two phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedCreate {
    pub key_id: String,
    /// Whether the HSM object of version 1 exists.
    pub hsm_object_present: bool,
}

/// What differs between the store and the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftReport {
    /// Keys checked in the store.
    pub keys_checked: usize,
    /// Objects seen on the token.
    pub objects_on_token: usize,
    /// Keys left in `Creating`.
    pub interrupted: Vec<InterruptedCreate>,
    /// Key versions the store knows whose HSM object is missing: (key id, version).
    pub missing_objects: Vec<(String, u32)>,
    /// p11kms-labelled objects on the token that no stored key version accounts for.
    pub orphan_objects: Vec<ObjectInfo>,
    /// Rotations stopped between their phases: (key id, new version, whether its HSM object
    /// exists). The key's next rotation completes them.
    pub interrupted_rotations: Vec<(String, u32, bool)>,
}

impl DriftReport {
    /// True when store and token agree.
    pub fn is_clean(&self) -> bool {
        self.interrupted.is_empty()
            && self.interrupted_rotations.is_empty()
            && self.missing_objects.is_empty()
            && self.orphan_objects.is_empty()
    }
}

/// Splits a CKA_ID into (key uuid, version) if it has our 20-byte shape.
fn split_id(id: &[u8]) -> Option<([u8; 16], u32)> {
    let id: &[u8; 20] = id.try_into().ok()?;
    let mut key = [0u8; 16];
    key.copy_from_slice(&id[..16]);
    let mut v = [0u8; 4];
    v.copy_from_slice(&id[16..]);
    Some((key, u32::from_be_bytes(v)))
}

impl Kms {
    /// Compares every stored key version with the token's objects.
    pub async fn reconcile(&self) -> Result<DriftReport, KmsError> {
        // Token objects only: session objects (key copies, key pairs being generated) are
        // working state of this process, not custody.
        let mut objects = self.hsm.list_objects().await?;
        objects.retain(|o| o.token);
        let bundles = self.store.load_all().await?;
        let on_token: BTreeSet<([u8; 16], u32)> =
            objects.iter().filter_map(|o| split_id(&o.id)).collect();
        // (key, version, class): a key pair version needs both halves, a secret key one object.
        let by_class: BTreeSet<([u8; 16], u32, &str)> = objects
            .iter()
            .filter_map(|o| split_id(&o.id).map(|(k, v)| (k, v, o.class.as_str())))
            .collect();
        let mut accounted: BTreeSet<([u8; 16], u32)> = BTreeSet::new();
        let mut report = DriftReport {
            keys_checked: bundles.len(),
            objects_on_token: objects.len(),
            ..DriftReport::default()
        };
        for b in &bundles {
            let Ok(uuid) = Uuid::parse_str(&b.key.key_id) else {
                continue;
            };
            let uuid = *uuid.as_bytes();
            if b.key.state == KeyState::Creating {
                let present = on_token.contains(&(uuid, 1));
                accounted.insert((uuid, 1));
                report.interrupted.push(InterruptedCreate {
                    key_id: b.key.key_id.clone(),
                    hsm_object_present: present,
                });
                continue;
            }
            let classes: &[&str] = if super::specs::is_pair(&b.key.key_spec) {
                &["PRIVATE_KEY", "PUBLIC_KEY"]
            } else {
                &["SECRET_KEY"]
            };
            for v in &b.versions {
                accounted.insert((uuid, v.version));
                if v.version > b.key.current_version {
                    report.interrupted_rotations.push((
                        b.key.key_id.clone(),
                        v.version,
                        on_token.contains(&(uuid, v.version)),
                    ));
                    continue;
                }
                // Imported material that expired or was deleted is absent by design.
                if b.key.state == KeyState::PendingImport {
                    continue;
                }
                if !classes
                    .iter()
                    .all(|c| by_class.contains(&(uuid, v.version, *c)))
                {
                    report
                        .missing_objects
                        .push((b.key.key_id.clone(), v.version));
                }
            }
        }
        // Wrapping keys of outstanding import tokens are accounted for; any other wrapping
        // key (its token expired or was used, and destroying it failed) is an orphan.
        let live_wrapping: BTreeSet<[u8; 16]> =
            self.live_wrapping_keys().await?.into_iter().collect();
        report.orphan_objects = objects
            .into_iter()
            .filter(|o| o.label.starts_with("p11kms/"))
            // Session objects of an import job in flight (they never outlive the job).
            .filter(|o| o.label != "p11kms/import-check" && o.label != "p11kms/import-ephemeral")
            // Session key pairs of a generation in flight, not yet copied to the token.
            .filter(|o| !o.label.starts_with(crate::hsm::asym::PENDING_LABEL_PREFIX))
            .filter(|o| {
                WrappingKeyId::from_cka_id(&o.id).is_none_or(|w| !live_wrapping.contains(&w.0))
            })
            .filter(|o| {
                !o.label
                    .starts_with(crate::hsm::signing::AUDIT_KEY_LABEL_PREFIX)
            })
            .filter(|o| split_id(&o.id).is_none_or(|k| !accounted.contains(&k)))
            .collect();
        Ok(report)
    }
}
