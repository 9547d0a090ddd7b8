//! Master-key rotation of wrapped residency (issue 19), a background duty of the lead node
//! ([`super::lead`]): once the security officer has made a newer master trusted
//! (`p11kms hsm trust-master --version <N>`), every blob still wrapped under an older master
//! is rewrapped under the newest on the device, in bounded batches, while the daemon serves.
//!
//! Each blob: unwrap under its master and wrap under the newest in one device job
//! ([`crate::hsm::Hsm::rewrap`], tag checked for its key version), then a compare-and-set of
//! the version row on the old blob ([`crate::store::MetadataStore::set_version_blob`]), then
//! the cache. A blob changed meanwhile (a conflict) is skipped and found again next round;
//! the work is found by query ([`crate::store::MetadataStore::blobs_under_master_in`]), so a
//! crash midway resumes where it stopped. The old blob stays valid until its master goes, so
//! requests never fail during the rotation. A master that no blob uses any more is left on
//! the token; `p11kms check` reports it as retired and destroying it is the operator's step.
//!
//! Masters are per device: a custom key store on a `wrapped` cluster has its own masters on
//! its cluster's token (`trust-master --cluster`), so each blob is rewrapped on the device of
//! its key's store under that device's newest trusted master, and only while the store is
//! connected ([`Kms::rewrap_round`]). One round's batch is shared by the devices, the default
//! store's first.

use std::sync::Arc;

use crate::hsm::{Hsm, MasterVersion, ObjectId, WrappedBlob};
use crate::store::{BlobRow, StoreError, StoredBlob};

use super::residency::Residency;
use super::service::{ServiceAction, ServiceEventName};
use super::{Kms, KmsError};

/// How many blobs one round of the duty rewraps at most.
pub const REWRAP_BATCH: usize = 256;

impl Kms {
    /// One round of master-key rotation: up to `batch` blobs under masters older than the
    /// newest trusted one of their device are rewrapped under it, each audited as
    /// `RewrapKeyMaterial`. Masters are per device: the default store's blobs are rewrapped
    /// on the default token (in wrapped residency), each connected custom key store's on its
    /// cluster's token (a `wrapped` cluster's). A store that is not connected is skipped and
    /// its blobs are found again in a later round; a device without a trusted master has
    /// nothing to do.
    pub async fn rewrap_round(&self, batch: usize) -> Result<Vec<ServiceAction>, KmsError> {
        let mut done = Vec::new();
        for (store, device) in self.rewrap_devices() {
            let left = batch.saturating_sub(done.len());
            if left == 0 {
                break;
            }
            let round = self.rewrap_on(store.as_deref(), &device, left).await;
            let paused = match round {
                Ok((actions, paused)) => {
                    done.extend(actions);
                    paused
                }
                // The default store's failure fails the round, as before; a custom store's
                // (its device went away meanwhile) is retried next round.
                Err(e) if store.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(store = store.as_deref(), error = %e, "master-key rotation on a custom key store's device failed; will retry");
                    false
                }
            };
            if paused {
                break;
            }
        }
        Ok(done)
    }

    /// The devices whose blobs the rewrap duty looks at, with their store (`None`: the
    /// default store): the default token in wrapped residency, and every connected custom
    /// key store on a `wrapped` cluster.
    fn rewrap_devices(&self) -> Vec<(Option<String>, Arc<Hsm>)> {
        let mut devices = Vec::new();
        if self.settings.residency == Residency::Wrapped {
            devices.push((None, self.hsm.clone()));
        }
        for store in self.key_stores.all() {
            let id = store.record().store_id;
            if self.key_stores.store_residency(&id) != Residency::Wrapped {
                continue;
            }
            if let Some(device) = store.connected_hsm() {
                devices.push((Some(id), device));
            }
        }
        devices
    }

    /// Up to `batch` blobs of `store`'s keys rewrapped on `device`, under its newest trusted
    /// master; `true` with them when the duty paused (the audit trail cannot be written).
    async fn rewrap_on(
        &self,
        store: Option<&str>,
        device: &Arc<Hsm>,
        batch: usize,
    ) -> Result<(Vec<ServiceAction>, bool), KmsError> {
        let masters = device.masters().await?;
        let Some(newest) = super::residency::newest_trusted(&masters) else {
            return Ok((Vec::new(), false));
        };
        let mut done = Vec::new();
        for (old, _) in masters.into_iter().filter(|(v, _)| *v < newest) {
            let left = batch.saturating_sub(done.len());
            if left == 0 {
                break;
            }
            for row in self.store.blobs_under_master_in(store, old.0, left).await? {
                if !self.service_ready() {
                    tracing::warn!("master-key rotation paused: the audit trail cannot be written");
                    return Ok((done, true));
                }
                if let Some(action) = self.rewrap_audited(device, &row, newest).await {
                    done.push(action);
                }
            }
        }
        Ok((done, false))
    }

    /// Rewraps one blob under `to`, audited (a blob skipped on a conflict too, as failed);
    /// `None` if its key is not in this node's cache yet (found again next round).
    async fn rewrap_audited(
        &self,
        device: &Hsm,
        row: &BlobRow,
        to: MasterVersion,
    ) -> Option<ServiceAction> {
        let key = self.current_key(&row.key_id).ok()?;
        let name = ServiceEventName::RewrapKeyMaterial;
        let result = match self.service_intent(name, &key).await {
            Ok(()) => self.rewrap_one(device, row, to).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {}
            Err(KmsError::Conflict(m)) => {
                tracing::info!(key_id = row.key_id, version = row.version, "{m}");
            }
            Err(e) => {
                tracing::error!(key_id = row.key_id, version = row.version, error = %e, "rewrapping a blob failed; will retry");
            }
        }
        let mut action = ServiceAction::on(name, &key, &result, self.now_ms());
        action.key_version = Some(row.version);
        self.report_service(&action).await;
        Some(action)
    }

    /// Rewraps one blob on the device, then stores it under the key's change lock,
    /// compare-and-set on the old blob and the key row; the cache then holds the new blob. A row that
    /// changed meanwhile (or a key that is gone) is [`KmsError::Conflict`]: skipped, and
    /// found again next round if still due.
    async fn rewrap_one(
        &self,
        device: &Hsm,
        row: &BlobRow,
        to: MasterVersion,
    ) -> Result<(), KmsError> {
        let uuid = crate::core::key_id::parse(&row.key_id)
            .map_err(|_| KmsError::Internal(format!("key id '{}' is not a UUID", row.key_id)))?;
        let id = ObjectId::new(*uuid.as_bytes(), row.version);
        let blob = WrappedBlob::from_bytes(&row.blob.bytes)
            .map_err(|e| KmsError::Internal(format!("the stored blob of {id}: {e}")))?;
        // The device job runs without the key's lock; the write below is compare-and-set on
        // the blob it started from.
        let new = device.rewrap(id, Arc::new(blob), to).await?;
        let _guard = self.key_locks.key(&row.key_id).await;
        let skipped = || {
            KmsError::Conflict(format!(
                "{id} changed meanwhile; its blob is rewrapped next round if still due"
            ))
        };
        let Some(bundle) = self.store.get_key(&row.key_id).await? else {
            return Err(skipped());
        };
        let stored = StoredBlob {
            master: to.0,
            bytes: new.to_bytes(),
            public_key: row.blob.public_key.clone(),
        };
        let cas = self
            .store
            .set_version_blob(&bundle.key, row.version, Some(&row.blob), Some(&stored))
            .await;
        match cas {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(skipped()),
            Err(e) => return Err(e.into()),
        }
        // The key row moved on (its row version): the cache and the blobs follow the store.
        self.refresh_key(&row.key_id).await?;
        Ok(())
    }
}

impl Kms {
    /// `p11kms hsm destroy-master`: destroys master `v` and its bind key, the operator's
    /// step once master-key rotation is done with it. Refused (nothing destroyed) unless `v`
    /// is on the token, older than the newest trusted master, and no stored blob is wrapped
    /// under it (`p11kms check` reports it as retired).
    pub async fn destroy_retired_master(&self, v: MasterVersion) -> Result<(), KmsError> {
        self.destroy_retired_master_on(None, &self.hsm, v).await
    }

    /// [`Kms::destroy_retired_master`] on a custom key store's `device` (opened by the
    /// caller with the store's password), counting only `store`'s blobs: a cluster's masters
    /// are its own, so its "v1" retires when the store's blobs have left it.
    pub async fn destroy_retired_master_on(
        &self,
        store: Option<&str>,
        device: &Hsm,
        v: MasterVersion,
    ) -> Result<(), KmsError> {
        let masters = device.masters().await?;
        if !masters.iter().any(|(m, _)| *m == v) {
            return Err(KmsError::NotFound(format!(
                "master key {v} is not on the token"
            )));
        }
        let newest = super::residency::newest_trusted(&masters);
        if newest.is_none_or(|n| v >= n) {
            return Err(KmsError::InvalidState(format!(
                "master key {v} is not older than the newest trusted master; keep it"
            )));
        }
        if !self
            .store
            .blobs_under_master_in(store, v.0, 1)
            .await?
            .is_empty()
        {
            return Err(KmsError::InvalidState(format!(
                "blobs are still wrapped under master key {v}; the rewrap duty has not finished"
            )));
        }
        device.destroy_master(v).await?;
        tracing::info!(master = %v, store, "retired master key destroyed");
        Ok(())
    }
}
