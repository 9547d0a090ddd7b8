//! Reconciliation of the metadata store with the token. [`Kms::reconcile`] reports drift and
//! never deletes: an object it cannot match may be the only copy of someone's key.
//!
//! One kind of drift is repaired, by [`Kms::reconcile_creates`]: a key left in `Creating` (its
//! CreateKey stopped between the two phases, and no client ever got an answer for it). Once it
//! is older than `[kms] creating_grace_secs` it is finished (`Enabled`) when its HSM material
//! is complete, and removed otherwise, with an audit event either way. Until then it is not in
//! the request cache: ListKeys does not show it and every request naming it gets NotFound.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::domain::KeySpec;
use super::service::{ServiceAction, ServiceEventName};
use super::{CachedKey, Kms, KmsError};
use crate::hsm::unwrap::WrappingKeyId;
use crate::hsm::{ObjectId, ObjectInfo};
use crate::store::{KeyRecord, KeyShape, KeyState, KeyVersion};

/// A key whose creation stopped between its two phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedCreate {
    pub key_id: String,
    /// Whether the HSM material of version 1 is complete (both halves of a key pair).
    pub hsm_object_present: bool,
    /// How long ago its creation started (by the engine's clock), in milliseconds.
    pub age_ms: i64,
    /// Older than the grace period: reconciliation finishes it (material present) or removes
    /// it. A younger one may still be in flight and is left alone.
    pub overdue: bool,
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
    /// True when nothing needs attention: store and token agree, except for creations still
    /// within their grace period (they may be in flight).
    pub fn is_clean(&self) -> bool {
        self.interrupted.iter().all(|i| !i.overdue)
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

/// The token objects by (key uuid, version, class).
type ObjectsByClass<'a> = BTreeSet<([u8; 16], u32, &'a str)>;

fn by_class(objects: &[ObjectInfo]) -> ObjectsByClass<'_> {
    objects
        .iter()
        .filter_map(|o| split_id(&o.id).map(|(k, v)| (k, v, o.class.as_str())))
        .collect()
}

/// Whether every object a version of a `spec` key needs is on the token: a key pair needs
/// both halves, a secret key one object.
fn material_complete(
    objects: &ObjectsByClass<'_>,
    uuid: [u8; 16],
    version: u32,
    spec: KeySpec,
) -> bool {
    let classes: &[&str] = if super::specs::is_pair(spec) {
        &["PRIVATE_KEY", "PUBLIC_KEY"]
    } else {
        &["SECRET_KEY"]
    };
    classes
        .iter()
        .all(|c| objects.contains(&(uuid, version, *c)))
}

/// What one pass of reconciliation has seen of the token, and what it has found so far.
struct Pass<'a> {
    /// (key, version) of every token object with our id shape.
    on_token: BTreeSet<([u8; 16], u32)>,
    by_class: ObjectsByClass<'a>,
    /// Token objects some stored key version (or the sealing key) accounts for.
    accounted: BTreeSet<([u8; 16], u32)>,
    /// When the token was listed (before it was): key versions made since are not judged.
    now: i64,
    report: DriftReport,
}

impl Pass<'_> {
    /// Marks (key, version) as accounted for. Only token objects are looked up afterwards,
    /// so a million wrapped versions cost nothing here.
    fn account(&mut self, k: ([u8; 16], u32)) {
        if self.on_token.contains(&k) {
            self.accounted.insert(k);
        }
    }
}

impl Kms {
    /// Compares every stored key version with the token's objects. The store is read a
    /// page at a time, as the start-up load reads it: a million keys are never held at once.
    ///
    /// It may run while the daemon serves (the daemon's start-up pass does, and `check` may):
    /// a key version made after the token was listed is not judged, and an orphan is reported
    /// only if it is still on the token at the end (its key may have been deleted meanwhile).
    pub async fn reconcile(&self) -> Result<DriftReport, KmsError> {
        let now = self.now_ms();
        let objects = self.token_objects().await?;
        let mut pass = Pass {
            on_token: objects.iter().filter_map(|o| split_id(&o.id)).collect(),
            by_class: by_class(&objects),
            accounted: BTreeSet::new(),
            now,
            report: DriftReport {
                objects_on_token: objects.len(),
                ..DriftReport::default()
            },
        };
        // The sealing key of custom key store passwords is accounted for.
        let sealing = super::connections::SEALING_KEY;
        pass.account((sealing.key_id(), sealing.version()));
        // Only the columns it compares: a pass beside a serving daemon holds and moves a
        // fraction of what the cache load does.
        self.store
            .load_shapes(&mut |page| {
                for k in &page {
                    self.reconcile_key(k, &mut pass);
                }
            })
            .await?;
        let Pass {
            accounted,
            mut report,
            ..
        } = pass;
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
            // Master and bind keys of wrapped residency.
            .filter(|o| !crate::hsm::wrapped::is_master_object(&o.id))
            // The multi-Region transport key pair and trusted peer keys.
            .filter(|o| !crate::hsm::region::is_region_object(&o.id, &o.label))
            .filter(|o| split_id(&o.id).is_none_or(|k| !accounted.contains(&k)))
            .collect();
        if !report.orphan_objects.is_empty() {
            let still = self.token_objects().await?;
            report.orphan_objects.retain(|o| still.contains(o));
        }
        Ok(report)
    }

    /// The token objects of this store's device. Session objects (key copies, key pairs being
    /// generated) are working state of this process, not custody.
    async fn token_objects(&self) -> Result<Vec<ObjectInfo>, KmsError> {
        let mut objects = self.hsm.list_objects().await?;
        objects.retain(|o| o.token);
        Ok(objects)
    }

    /// Reconciliation of one stored key against the token.
    fn reconcile_key(&self, k: &KeyShape, pass: &mut Pass<'_>) {
        pass.report.keys_checked += 1;
        let Ok(uuid) = crate::core::key_id::parse(&k.key_id) else {
            return;
        };
        // Keys of custom key stores have their objects on their store's device, except keys
        // of external stores (an XksKeyId): their inner material is on this token.
        if k.custom_key_store_id.is_some() && k.xks_key_id.is_none() {
            return;
        }
        let uuid = *uuid.as_bytes();
        if k.state == KeyState::Creating {
            pass.account((uuid, 1));
            pass.report.interrupted.push(InterruptedCreate {
                key_id: k.key_id.clone(),
                hsm_object_present: material_complete(&pass.by_class, uuid, 1, k.key_spec),
                age_ms: pass.now.saturating_sub(k.created_at_ms),
                overdue: self.creation_overdue(k.created_at_ms, pass.now),
            });
            return;
        }
        for v in &k.versions {
            pass.account((uuid, v.version));
            if v.created_at_ms > pass.now {
                // Made after the token was listed (the daemon serves meanwhile).
                continue;
            }
            if v.version > k.current_version {
                let made = v.wrapped || pass.on_token.contains(&(uuid, v.version));
                let rotation = (k.key_id.clone(), v.version, made);
                pass.report.interrupted_rotations.push(rotation);
                continue;
            }
            // A wrapped version's material is its blob (`check --all-blobs` unwraps them).
            // Imported material that expired or was deleted is absent by design.
            if v.wrapped || k.state == KeyState::PendingImport {
                continue;
            }
            if !material_complete(&pass.by_class, uuid, v.version, k.key_spec) {
                let missing = (k.key_id.clone(), v.version);
                pass.report.missing_objects.push(missing);
            }
        }
    }
}

/// What reconciliation does with one interrupted creation.
enum Resolution {
    /// Still within the grace period, or already resolved: nothing.
    Skip,
    /// Finished (`Enabled`) or removed, with the outcome.
    Done(Box<ServiceAction>),
}

impl Kms {
    /// Hands a key whose creation ended without an answer to reconciliation.
    pub(crate) fn strand(&self, record: KeyRecord) {
        self.stranded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.key_id.clone(), record);
    }

    /// Takes a key off the stranded list (another node finished or removed it).
    pub(crate) fn unstrand(&self, key_id: &str) {
        self.stranded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key_id);
    }

    /// Whether a `Creating` key made at `created_at_ms` is older than the grace period at
    /// `now`.
    fn creation_overdue(&self, created_at_ms: i64, now: i64) -> bool {
        now.saturating_sub(created_at_ms) >= self.settings.creating_grace_ms
    }

    /// Resolves every stranded `Creating` key older than the grace period: with its HSM
    /// material complete it becomes `Enabled` (`CompleteCreateKey`); otherwise whatever part of
    /// its material exists is destroyed and its row, tags and aliases are removed
    /// (`DeleteIncompleteKey`). Each action is audited as the sweeps are (intent first, then
    /// the outcome); one that fails stays stranded and is retried by the next sweep. Creations
    /// in flight are never stranded, so they are never touched.
    pub async fn reconcile_creates(&self) -> Result<Vec<ServiceAction>, KmsError> {
        let now = self.now_ms();
        let due: Vec<KeyRecord> = self
            .stranded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| self.creation_overdue(r.created_at_ms, now))
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut objects = self.hsm.list_objects().await?;
        objects.retain(|o| o.token);
        let objects = by_class(&objects);
        let mut done = Vec::new();
        for record in due {
            if !self.service_ready() {
                tracing::warn!("reconciliation paused: the audit trail cannot be written");
                break;
            }
            if let Resolution::Done(action) =
                self.resolve_creating(&record.key_id, &objects).await?
            {
                self.report_service(&action).await;
                done.push(*action);
            }
        }
        Ok(done)
    }

    /// Resolves one stranded key, re-read from the store (it may
    /// have been resolved or rolled back meanwhile).
    async fn resolve_creating(
        &self,
        key_id: &str,
        objects: &ObjectsByClass<'_>,
    ) -> Result<Resolution, KmsError> {
        // No change lock: a stranded key is in no cache, so no request can change it, and
        // the sweeps run one at a time. The store's compare-and-set (phase two) and its
        // NotFound (removal) catch another node resolving it too.
        let bundle = match self.store.get_key(key_id).await? {
            Some(b) if b.key.state == KeyState::Creating => b,
            _ => {
                self.unstrand(key_id);
                return Ok(Resolution::Skip);
            }
        };
        let key = self.cached_from_bundle(bundle)?;
        // A multi-Region replica whose AcceptReplica was interrupted is never completed: its
        // primary did not get an answer, so it never listed it; its material goes.
        let replica = key
            .record
            .multi_region
            .as_ref()
            .is_some_and(|m| m.primary_region != self.settings.region);
        let complete = match &key.store {
            _ if replica => false,
            None => material_complete(objects, key.uuid, 1, key.record.key_spec),
            Some(s) if s.is_external() => {
                material_complete(objects, key.uuid, 1, key.record.key_spec)
            }
            // A key of a custom key store: its object is on that store's device, which is
            // asked while connected; otherwise the key waits for the store.
            Some(_) => match self.device_of(&key) {
                Ok(device) => device.exists(ObjectId::new(key.uuid, 1)).await?,
                Err(_) => return Ok(Resolution::Skip),
            },
        };
        let event = if complete {
            ServiceEventName::CompleteCreateKey
        } else {
            ServiceEventName::DeleteIncompleteKey
        };
        let result = match self.service_intent(event, &key).await {
            Ok(()) if complete => self.complete_creation(&key).await,
            Ok(()) => self.remove_incomplete(&key).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => self.unstrand(key_id),
            Err(e) => {
                tracing::error!(key_id, error = %e, "reconciling an interrupted CreateKey failed; will retry")
            }
        }
        let mut action = ServiceAction::on(event, &key, &result, self.now_ms());
        if complete {
            action.key_version = Some(1);
        }
        Ok(Resolution::Done(Box::new(action)))
    }

    /// Phase two of an interrupted creation: version 1 and `Enabled`, then into the cache.
    async fn complete_creation(&self, key: &CachedKey) -> Result<(), KmsError> {
        let mut record = key.record.clone();
        record.state = KeyState::Enabled;
        let version = KeyVersion {
            key_id: record.key_id.clone(),
            version: 1,
            created_at_ms: record.created_at_ms,
            wrapped: None,
        };
        self.store.add_version_and_update(&version, &record).await?;
        self.refresh_key(&record.key_id).await?;
        tracing::info!(key_id = %record.key_id, "interrupted CreateKey completed: key Enabled");
        Ok(())
    }

    /// Destroys whatever part of version 1's material exists, then removes the key's row,
    /// tags and aliases (and its lifecycle row, by cascade).
    async fn remove_incomplete(&self, key: &CachedKey) -> Result<(), KmsError> {
        let key_id = &key.record.key_id;
        let pair = super::specs::is_pair(key.record.key_spec);
        // A replica's row names the versions its primary sent (1 to current); any other key
        // was being made with version 1.
        for version in 1..=key.record.current_version.max(1) {
            self.destroy_version_objects(key, ObjectId::new(key.uuid, version), pair)
                .await?;
        }
        self.store.delete_key(key_id).await?;
        {
            let mut cache = self.cache_write();
            cache.remove_key(&Uuid::from_bytes(key.uuid));
            cache.remove_aliases_of(key_id);
        }
        self.lifecycle_cache_remove(key_id);
        tracing::info!(
            key_id,
            "interrupted CreateKey removed: no complete HSM material"
        );
        Ok(())
    }
}
