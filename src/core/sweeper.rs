//! The deletion sweeper: when a key's pending window ends, destroy its HSM objects (every
//! version, and the wrapping keys of outstanding imports), then its metadata. Each step is
//! idempotent, so a sweep interrupted halfway finishes on the next run. The same loop runs the
//! automatic rotation sweep ([`Kms::sweep_rotations`]) and the import expiry sweep
//! ([`Kms::sweep_imports`]), all on the engine's clock.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{Kms, KmsError};
use crate::hsm::{HsmErrorKind, ObjectId};
use crate::store::KeyState;

impl Kms {
    /// Destroys every key whose deletion date has passed by the engine's clock. Returns the
    /// ids of the keys destroyed.
    pub async fn sweep_deletions(&self) -> Result<Vec<String>, KmsError> {
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
        let mut destroyed = Vec::new();
        for key_id in due {
            let _guard = self.mutate.lock().await;
            let Some(key) = Uuid::parse_str(&key_id)
                .ok()
                .and_then(|u| self.cache_read().keys.get(&u).cloned())
            else {
                continue;
            };
            // Re-check under the lock: CancelKeyDeletion may have won the race.
            if key.record.state != KeyState::PendingDeletion
                || key.record.deletion_date_ms.is_none_or(|d| d > now)
            {
                continue;
            }
            let pair = super::specs::is_pair(&key.record.key_spec);
            // Import wrapping keys first (their token rows go with the key), then every
            // version of the key material.
            self.destroy_wrapping_keys_of(&key_id).await?;
            for &version in &key.versions {
                let object = ObjectId::new(key.uuid, version);
                let destroyed = if pair {
                    self.hsm.destroy_key_pair(object).await
                } else {
                    self.hsm.destroy(object).await
                };
                match destroyed {
                    Ok(()) => {}
                    Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.store.destroy_key(&key_id, now).await?;
            {
                let mut cache = self.cache_write();
                let uuid = Uuid::from_bytes(key.uuid);
                cache.keys.remove(&uuid);
                cache.remove_aliases_of(&key_id);
                cache.deleted.insert(uuid);
            }
            self.lifecycle_cache_remove(&key_id);
            tracing::info!(
                key_id,
                "key deleted: HSM objects destroyed and metadata removed"
            );
            destroyed.push(key_id);
        }
        Ok(destroyed)
    }
}

/// Runs [`Kms::sweep_deletions`] every `interval` until the task is aborted.
pub fn spawn_sweeper(kms: Arc<Kms>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = kms.sweep_deletions().await {
                tracing::error!(error = %e, "deletion sweep failed; will retry");
            }
            if let Err(e) = kms.sweep_rotations().await {
                tracing::error!(error = %e, "automatic rotation sweep failed; will retry");
            }
            if let Err(e) = kms.sweep_imports().await {
                tracing::error!(error = %e, "import expiry sweep failed; will retry");
            }
        }
    })
}
