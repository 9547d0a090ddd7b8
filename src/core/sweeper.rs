//! The deletion sweeper: when a key's pending window ends, destroy its HSM objects (every
//! version, and the wrapping keys of outstanding imports), then its metadata. Each step is
//! idempotent, so a sweep interrupted halfway finishes on the next run. The same loop runs the
//! automatic rotation sweep ([`Kms::sweep_rotations`]), the import expiry sweep
//! ([`Kms::sweep_imports`]) and the reconciliation of interrupted creations
//! ([`Kms::reconcile_creates`]), all on the engine's clock, at start-up and then periodically.

use std::sync::Arc;

use uuid::Uuid;

use super::connections::StoreHandle;
use super::service::{ServiceAction, ServiceEventName};
use super::{CachedKey, Kms, KmsError};
use crate::hsm::{HsmErrorKind, ObjectId};
use crate::store::{KeyState, OrphanRecord};

impl Kms {
    /// Destroys every key whose deletion date has passed by the engine's clock, and reports
    /// each destruction (`DeleteKey`, with its outcome) to the service sink. Returns what it
    /// did, one action per key it tried; a key that failed is retried by the next sweep.
    pub async fn sweep_deletions(&self) -> Result<Vec<ServiceAction>, KmsError> {
        let now = self.now_ms();
        let due: Vec<String> = self
            .cache_read()
            .keys
            .values()
            .filter(|k| {
                k.record.state == KeyState::PendingDeletion
                    && k.record.deletion_date_ms.is_some_and(|d| d <= now)
            })
            .map(|k| k.record.key_id.clone())
            .collect();
        let mut done = Vec::new();
        for key_id in due {
            if !self.service_ready() {
                tracing::warn!("deletion sweep paused: the audit trail cannot be written");
                break;
            }
            let Some((key, result)) = self.delete_due_key(&key_id, now).await else {
                continue;
            };
            let action =
                ServiceAction::on(ServiceEventName::DeleteKey, &key, &result, self.now_ms());
            if let Err(e) = &result {
                tracing::error!(key_id, error = %e, "destroying a key failed; will retry");
            }
            self.report_service(&action).await;
            done.push(action);
        }
        Ok(done)
    }

    /// Destroys one key if it is still due (checked under the key's change lock): its import wrapping
    /// keys, every version of its material, then its metadata. `None` when it is no longer
    /// due (CancelKeyDeletion won the race) or gone.
    async fn delete_due_key(
        &self,
        key_id: &str,
        now: i64,
    ) -> Option<(Arc<CachedKey>, Result<(), KmsError>)> {
        let key = {
            let _guard = self.key_locks.key(key_id).await;
            let key = crate::core::key_id::parse(key_id)
                .ok()
                .and_then(|u| self.cache_read().keys.get(&u).cloned())?;
            // Re-check under the lock: CancelKeyDeletion may have won the race. Once the
            // date has passed, nothing brings the key back (CancelKeyDeletion refuses it), so
            // the destruction below runs without the lock.
            if key.record.state != KeyState::PendingDeletion
                || key.record.deletion_date_ms.is_none_or(|d| d > now)
            {
                return None;
            }
            key
        };
        let result = match self.service_intent(ServiceEventName::DeleteKey, &key).await {
            Ok(()) => self.destroy_key_now(&key, now).await,
            Err(e) => Err(e),
        };
        Some((key, result))
    }

    async fn destroy_key_now(&self, key: &CachedKey, now: i64) -> Result<(), KmsError> {
        let key_id = &key.record.key_id;
        let pair = super::specs::is_pair(key.record.key_spec);
        // Import wrapping keys first (their token rows go with the key), then every
        // version of the key material.
        self.destroy_wrapping_keys_of(key_id).await?;
        // A key in an external store has its (inner) material on the default HSM, always
        // reachable; a key in a disconnected HSM store leaves its objects behind.
        let gone = |s: &&Arc<StoreHandle>| !s.is_external() && s.connected_hsm().is_none();
        match key.store.as_ref().filter(gone) {
            Some(store) => self.leave_orphans(key, store, now).await?,
            None => {
                for &version in &key.versions {
                    self.destroy_version_objects(key, ObjectId::new(key.uuid, version), pair)
                        .await?;
                }
            }
        }
        self.store.destroy_key(key_id, now).await?;
        {
            let mut cache = self.cache_write();
            let uuid = Uuid::from_bytes(key.uuid);
            cache.remove_key(&uuid);
            cache.remove_aliases_of(key_id);
            cache.deleted.insert(uuid);
        }
        self.lifecycle_cache_remove(key_id);
        tracing::info!(
            key_id,
            "key deleted: HSM objects destroyed and metadata removed"
        );
        self.report_replica_deleted(key).await;
        Ok(())
    }

    /// Runs every sweep once (deletions, automatic rotations, import expiry, interrupted
    /// creations, a round of master-key rotation) and returns
    /// what they did. A sweep that fails as a whole is logged and retried next time.
    pub async fn sweep_once(&self) -> Vec<ServiceAction> {
        let mut done = Vec::new();
        match self.sweep_deletions().await {
            Ok(a) => done.extend(a),
            Err(e) => tracing::error!(error = %e, "deletion sweep failed; will retry"),
        }
        match self.sweep_rotations().await {
            Ok(a) => done.extend(a),
            Err(e) => tracing::error!(error = %e, "automatic rotation sweep failed; will retry"),
        }
        match self.sweep_imports().await {
            Ok(a) => done.extend(a),
            Err(e) => tracing::error!(error = %e, "import expiry sweep failed; will retry"),
        }
        match self.reconcile_creates().await {
            Ok(a) => done.extend(a),
            Err(e) => {
                tracing::error!(error = %e, "interrupted CreateKey reconciliation failed; will retry")
            }
        }
        let resynced = self.resync_regions().await;
        if resynced > 0 {
            tracing::info!(resynced, "replicas took the primary's multi-Region state");
        }
        match self.rewrap_round(super::rewrap::REWRAP_BATCH).await {
            Ok(a) => done.extend(a),
            Err(e) => tracing::error!(error = %e, "master-key rotation round failed; will retry"),
        }
        done
    }

    /// A key of a custom key store that is not connected is deleted without its objects,
    /// which stay on the store's device: each is recorded for `p11kms check` and audited, as
    /// AWS leaves such material in the cluster for the operator. A wrapped version (a
    /// `wrapped` cluster's) has no object there: its blob goes with the key's rows, and its
    /// unwrapped copies died with the store's sessions when it disconnected.
    async fn leave_orphans(
        &self,
        key: &CachedKey,
        store: &super::connections::StoreHandle,
        now: i64,
    ) -> Result<(), KmsError> {
        let store_id = store.record().store_id;
        let on_token: Vec<u32> = key
            .versions
            .iter()
            .copied()
            .filter(|&v| self.blobs.get(ObjectId::new(key.uuid, v)).is_none())
            .collect();
        let orphans: Vec<OrphanRecord> = on_token
            .iter()
            .map(|&version| OrphanRecord {
                store_id: store_id.clone(),
                key_id: key.record.key_id.clone(),
                version,
                orphaned_at_ms: now,
            })
            .collect();
        if !orphans.is_empty() {
            self.store.record_orphans(&orphans).await?;
        }
        for &version in &key.versions {
            self.blobs.remove(ObjectId::new(key.uuid, version));
        }
        for &version in &on_token {
            let object = ObjectId::new(key.uuid, version);
            self.key_stores.report_orphan(store, object).await;
        }
        Ok(())
    }

    /// Destroys the HSM object(s) of one version of `key` on its device (both halves of a
    /// key pair); an object already gone is not an error. A wrapped version's blob is
    /// forgotten and its unwrapped copies destroyed (the blob row goes with the key's).
    pub(crate) async fn destroy_version_objects(
        &self,
        key: &CachedKey,
        object: ObjectId,
        pair: bool,
    ) -> Result<(), KmsError> {
        let device = match key.store.as_ref().is_some_and(|s| s.is_external()) {
            true => self.hsm.clone(),
            false => self.device_of(key)?,
        };
        if self.blobs.remove(object).is_some() {
            // A wrapped version has no token object: its blob goes with the row, and every
            // worker's unwrapped copy goes now.
            device.evict_wrapped(object.key_id()).await?;
            return Ok(());
        }
        let destroyed = if pair {
            device.destroy_key_pair(object).await
        } else {
            device.destroy(object).await
        };
        match destroyed {
            Err(e) if e.kind != HsmErrorKind::ObjectNotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}
