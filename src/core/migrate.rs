//! `MigrateResidency` (issue 19): moves the default key store's existing key material between
//! token objects and wrapped blobs, online, one key at a time, in bounded calls
//! (`p11kms key-store migrate-residency` calls it until nothing remains).
//!
//! - **wrapped -> token**: each version with a blob is unwrapped on the device into its token
//!   object, with the custody of the wrapped copies (sensitive, extractable only under a
//!   trusted key, so that it can move back), and the object is checked against the blob
//!   ([`crate::hsm::Hsm::wrapped_to_token`]); then the blob leaves the row (compare-and-set),
//!   [`super::residency::Blobs`] forgets it and the unwrapped copies are evicted. Interrupted
//!   midway, both copies exist and the blob wins until cleared; a rerun finds the object and
//!   finishes.
//! - **token -> wrapped**: every token version of the key is first wrapped on the device under
//!   the newest trusted master and checked to unwrap to the same material
//!   ([`crate::hsm::Hsm::token_to_wrapped`]); only when all can move is each blob stored
//!   (compare-and-set on no blob), held in `Blobs`, and then its token object destroyed. A
//!   key born in token residency is never extractable (PKCS#11 lets `CKA_EXTRACTABLE` go
//!   from true to false only, and `C_WrapKey` refuses it): it is skipped and reported.
//!
//! Key pairs stay where they were made (a wrapped pair's public half exists only in the
//! store; a token pair is never extractable). Requests on a key keep working throughout: the
//! engine serves whichever copy it sees, the blob first. Each key is moved under its change
//! lock, so no rotation, deletion or import changes it meanwhile.

use std::sync::Arc;

use uuid::Uuid;

use super::authz::AuthzRequest;
use super::operation::{request_parameters, response_elements};
use super::residency::{self, Residency, Wrapped};
use super::{CachedKey, Kms, KmsError};
use crate::hsm::{ObjectId, TokenMove, WrappedBlob};
use crate::identity::Caller;
use crate::store::{KeyBundle, KeyState, StoreError, StoredBlob};

/// Keys looked at per call when the request gives no limit.
pub const DEFAULT_MIGRATION_LIMIT: usize = 16;
/// The largest limit a call takes.
pub const MAX_MIGRATION_LIMIT: usize = 1000;

/// MigrateResidency input.
#[derive(Debug, Clone, Default)]
pub struct MigrateResidencyRequest {
    /// Where the material goes; must be the configured `[hsm] residency`.
    pub to: Option<Residency>,
    /// Keys looked at in this call (1-1000; [`DEFAULT_MIGRATION_LIMIT`] when absent).
    pub limit: Option<i32>,
    /// Resume after this key id (a previous answer's `next_after`).
    pub after: Option<String>,
    /// A custom key store: not supported yet (the default store only).
    pub custom_key_store_id: Option<String>,
}

impl MigrateResidencyRequest {
    fn target_name(&self) -> Option<&'static str> {
        self.to.map(residency_name)
    }
}

request_parameters! {
    MigrateResidencyRequest { to = Self::target_name, limit, after, custom_key_store_id };
}

/// Why a key was left where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A token key born in token residency: never extractable, so never a blob.
    NeverExtractable,
    /// A key pair: it stays in the residency it was made in.
    KeyPair,
    /// The key changed meanwhile (compare-and-set lost): the next call takes it again.
    Changed,
}

impl SkipReason {
    /// The reason's name, as the audit trail and the CLI show it.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::NeverExtractable => "NEVER_EXTRACTABLE",
            SkipReason::KeyPair => "KEY_PAIR",
            SkipReason::Changed => "CHANGED",
        }
    }
}

/// A key left where it is, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key id.
    pub key_id: String,
    /// Why.
    pub reason: SkipReason,
    /// What the operator reads.
    pub detail: String,
}

/// MigrateResidency output.
#[derive(Debug, Clone, Default)]
pub struct MigrateResidencyResponse {
    /// The keys moved in this call.
    pub moved: Vec<String>,
    /// Keys after `next_after` still to look at.
    pub remaining: u64,
    /// Keys looked at in this call and left where they are.
    pub skipped: Vec<SkippedKey>,
    /// The last key looked at, to resume after.
    pub next_after: Option<String>,
    /// Token objects an interrupted run left beside their stored blobs, destroyed (the first
    /// call of a run to wrapped looks for them).
    pub leftovers_destroyed: u32,
}

impl MigrateResidencyResponse {
    fn moved_count(&self) -> i32 {
        i32::try_from(self.moved.len()).unwrap_or(i32::MAX)
    }

    fn remaining_count(&self) -> serde_json::Value {
        serde_json::Value::from(self.remaining)
    }

    fn leftovers(&self) -> i32 {
        i32::try_from(self.leftovers_destroyed).unwrap_or(i32::MAX)
    }

    fn skipped_keys(&self) -> serde_json::Value {
        let list = self
            .skipped
            .iter()
            .map(|s| serde_json::json!({"keyId": s.key_id, "reason": s.reason.name()}));
        serde_json::Value::Array(list.collect())
    }
}

response_elements!(MigrateResidencyResponse {
    moved = Self::moved_count, remaining = Self::remaining_count, skipped = Self::skipped_keys,
    leftovers_destroyed = Self::leftovers
});

/// `TOKEN` or `WRAPPED`.
pub fn residency_name(r: Residency) -> &'static str {
    match r {
        Residency::Token => "TOKEN",
        Residency::Wrapped => "WRAPPED",
    }
}

/// What moving one key came to.
enum KeyMove {
    Moved,
    Skipped(SkipReason, String),
}

impl Kms {
    /// Moves up to `limit` keys of the default store to residency `to` (see the module
    /// header). The caller needs `p11kms:MigrateResidency` on `*`.
    pub async fn migrate_residency(
        &self,
        caller: &Caller,
        req: MigrateResidencyRequest,
    ) -> Result<MigrateResidencyResponse, KmsError> {
        let to = req
            .to
            .ok_or_else(|| KmsError::validation("to", "Member must be TOKEN or WRAPPED"))?;
        let limit = migration_limit(req.limit)?;
        let after = match req.after.as_deref() {
            None | Some("") => None,
            Some(id) => Some(crate::core::key_id::parse(id).map_err(|_| {
                KmsError::validation("after", "Member must be a key id from next_after")
            })?),
        };
        self.authorize(caller, AuthzRequest::new("p11kms:MigrateResidency", "*"))?;
        if req.custom_key_store_id.is_some_and(|s| !s.is_empty()) {
            return Err(KmsError::UnsupportedOperation(
                "MigrateResidency moves the default key store's keys only; a custom key store's keys stay in the residency they were made in.".into(),
            ));
        }
        self.migration_target_ready(to).await?;
        let mut out = MigrateResidencyResponse::default();
        if to == Residency::Wrapped && after.is_none() {
            out.leftovers_destroyed = self.destroy_token_twins().await?;
        }
        let (candidates, remaining) = self.migration_candidates(to, after, limit);
        for key in &candidates {
            let key_id = key.record.key_id.clone();
            match self.migrate_key(key, to).await {
                Ok(KeyMove::Moved) => out.moved.push(key_id.clone()),
                Ok(KeyMove::Skipped(reason, detail)) => out.skipped.push(SkippedKey {
                    key_id: key_id.clone(),
                    reason,
                    detail,
                }),
                Err(e) => {
                    tracing::error!(key_id, error = %e, "residency migration stopped at a key");
                    return Err(e);
                }
            }
            out.next_after = Some(key_id);
        }
        out.remaining = remaining;
        tracing::info!(
            to = residency_name(to),
            moved = out.moved.len(),
            skipped = out.skipped.len(),
            remaining = out.remaining,
            "residency migration call done"
        );
        Ok(out)
    }

    /// Refuses a target other than the configured residency (new and moved keys must agree),
    /// and `WRAPPED` without a trusted master.
    async fn migration_target_ready(&self, to: Residency) -> Result<(), KmsError> {
        let configured = self.settings.residency;
        if to != configured {
            return Err(KmsError::Validation(format!(
                "The default key store's residency is {}: set [hsm] residency = \"{}\" and restart the daemon before moving keys to {}, so that new keys and moved keys agree.",
                residency_name(configured),
                residency_name(to).to_lowercase(),
                residency_name(to),
            )));
        }
        if to == Residency::Wrapped {
            let masters = self.hsm.masters().await?;
            if residency::newest_trusted(&masters).is_none() {
                return Err(KmsError::InvalidState(
                    "No trusted master key on the token: the security officer must run `p11kms hsm trust-master` first.".into(),
                ));
            }
        }
        Ok(())
    }

    /// Destroys the token objects an interrupted run left beside their stored blobs (each
    /// checked on the device to hold its blob's material, under its key's lock): how many.
    /// The blob served those keys already; one scan of the token per run.
    async fn destroy_token_twins(&self) -> Result<u32, KmsError> {
        let objects = self.hsm.list_objects().await?;
        let ids = objects
            .iter()
            .filter(|o| o.token)
            .filter_map(|o| ObjectId::from_bytes(&o.id));
        let mut destroyed = 0;
        for id in ids {
            if self.blobs.get(id).is_none() {
                continue;
            }
            let key_id = crate::core::key_id::render_bytes(id.key_id());
            let _guard = self.key_locks.key(&key_id).await;
            // Under the lock: the blob may have gone meanwhile (moved to the token again).
            let Some(blob) = self.blobs.get(id) else {
                continue;
            };
            if self.hsm.destroy_token_twin(id, blob).await? {
                tracing::info!(object = %id, "a token object left beside its blob by an interrupted migration was destroyed");
                destroyed += 1;
            }
        }
        Ok(destroyed)
    }

    /// The first `limit` keys of the default store after `after` (by key id) with a version
    /// in the other residency than `to`, and how many more there are. Keys awaiting imported
    /// material have none to move. One pass over the cache under one read of the blobs: only
    /// the keys this call moves are cloned.
    fn migration_candidates(
        &self,
        to: Residency,
        after: Option<Uuid>,
        limit: usize,
    ) -> (Vec<Arc<CachedKey>>, u64) {
        let cache = self.cache_read();
        let blobs = self.blobs.view();
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut picked = Vec::with_capacity(limit);
        let mut more = 0u64;
        let movable = cache
            .keys
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, k)| k)
            .filter(|k| k.record.custom_key_store_id.is_none())
            .filter(|k| k.record.state != KeyState::PendingImport)
            .filter(|k| {
                let uuid = k.uuid;
                let from_wrapped = to == Residency::Token;
                k.versions
                    .iter()
                    .any(|v| blobs.holds(ObjectId::new(uuid, *v)) == from_wrapped)
            });
        for key in movable {
            match picked.len() < limit {
                true => picked.push(key.clone()),
                false => more += 1,
            }
        }
        (picked, more)
    }

    /// Moves one key under its change lock; a lost compare-and-set is a skip (`Changed`).
    async fn migrate_key(&self, key: &CachedKey, to: Residency) -> Result<KeyMove, KmsError> {
        if super::specs::is_pair(key.record.key_spec) {
            let detail = "a key pair stays in the residency it was made in (a wrapped pair's public key is only in the store; a token pair is never extractable)";
            return Ok(KeyMove::Skipped(SkipReason::KeyPair, detail.into()));
        }
        let key_id = key.record.key_id.as_str();
        let moved = {
            let _guard = self.key_locks.key(key_id).await;
            match to {
                Residency::Token => self.key_to_token(key).await,
                Residency::Wrapped => self.key_to_wrapped(key).await,
            }
        };
        // The rows changed (or another writer did): the cache and the blobs follow the store.
        self.refresh_key(key_id).await?;
        match moved {
            Err(KmsError::Conflict(detail)) => Ok(KeyMove::Skipped(SkipReason::Changed, detail)),
            other => other,
        }
    }

    /// The key's stored state now (under its lock); gone is a conflict.
    async fn fresh_bundle(&self, key_id: &str) -> Result<KeyBundle, KmsError> {
        self.store
            .get_key(key_id)
            .await?
            .ok_or_else(|| KmsError::Conflict(format!("{key_id} was deleted meanwhile")))
    }

    /// Replaces version `version`'s blob, compare-and-set on `old` and the key row.
    async fn swap_blob(
        &self,
        key_id: &str,
        version: u32,
        old: Option<&StoredBlob>,
        new: Option<&StoredBlob>,
    ) -> Result<(), KmsError> {
        let bundle = self.fresh_bundle(key_id).await?;
        match self
            .store
            .set_version_blob(&bundle.key, version, old, new)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(KmsError::Conflict(format!(
                "{key_id} version {version} changed meanwhile; the next call takes it again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// wrapped -> token for every wrapped version of `key`.
    async fn key_to_token(&self, key: &CachedKey) -> Result<KeyMove, KmsError> {
        let key_id = key.record.key_id.as_str();
        let bundle = self.fresh_bundle(key_id).await?;
        for v in &bundle.versions {
            let Some(stored) = &v.wrapped else { continue };
            let id = ObjectId::new(key.uuid, v.version);
            let blob = WrappedBlob::from_bytes(&stored.bytes)
                .map_err(|e| KmsError::Internal(format!("the stored blob of {id}: {e}")))?;
            self.hsm.wrapped_to_token(id, Arc::new(blob)).await?;
            self.swap_blob(key_id, v.version, Some(stored), None)
                .await?;
            self.blobs.remove(id);
        }
        self.hsm.evict_wrapped(key.uuid).await?;
        Ok(KeyMove::Moved)
    }

    /// token -> wrapped for every token version of `key`: all are wrapped and checked on the
    /// device first, so that a key with a never-extractable version changes nowhere.
    async fn key_to_wrapped(&self, key: &CachedKey) -> Result<KeyMove, KmsError> {
        let key_id = key.record.key_id.as_str();
        let bundle = self.fresh_bundle(key_id).await?;
        let mut blobs = Vec::new();
        for v in bundle.versions.iter().filter(|v| v.wrapped.is_none()) {
            let id = ObjectId::new(key.uuid, v.version);
            match self.hsm.token_to_wrapped(id).await? {
                TokenMove::Wrapped(blob) => blobs.push((v.version, Wrapped::secret(blob))),
                TokenMove::NeverExtractable => {
                    let detail = format!("version {} is a token object born in token residency: never extractable (PKCS#11 lets CKA_EXTRACTABLE go from true to false only), so it cannot be wrapped; it stays on the token and keeps working", v.version);
                    return Ok(KeyMove::Skipped(SkipReason::NeverExtractable, detail));
                }
            }
        }
        for (version, wrapped) in blobs {
            let id = ObjectId::new(key.uuid, version);
            let stored = residency::stored(&wrapped);
            self.swap_blob(key_id, version, None, Some(&stored)).await?;
            self.blobs.put(id, wrapped);
            self.hsm.destroy(id).await?;
        }
        Ok(KeyMove::Moved)
    }
}

/// The keys one call looks at: 1-1000, [`DEFAULT_MIGRATION_LIMIT`] when absent.
fn migration_limit(limit: Option<i32>) -> Result<usize, KmsError> {
    match limit {
        None => Ok(DEFAULT_MIGRATION_LIMIT),
        Some(n) if (1..=MAX_MIGRATION_LIMIT as i32).contains(&n) => Ok(n as usize),
        Some(_) => Err(KmsError::validation(
            "limit",
            "Member must have value between 1 and 1000",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(migration_limit(None).unwrap(), DEFAULT_MIGRATION_LIMIT);
        assert_eq!(migration_limit(Some(1000)).unwrap(), 1000);
        for bad in [0, -1, 1001] {
            assert!(matches!(
                migration_limit(Some(bad)),
                Err(KmsError::Validation(_))
            ));
        }
    }
}
