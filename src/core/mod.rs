//! The engine: transport-independent KMS operations.
//!
//! One file per operation family: [`keys`] (lifecycle), [`aliases`], [`tags`], [`crypto`]
//! (encrypt, decrypt, re-encrypt, data keys, random), [`asym`] (signatures, public keys, key
//! agreement, MACs, data key pairs), [`sweeper`] (deletion), [`reconcile`] (store/token drift),
//! [`keystores`] (custom key stores) over [`connections`] (each store's device and connection
//! life cycle; [`Kms::device_of`] routes a key to its store's device), [`xks`] (the
//! operations of the XKS door: AWS KMS's external key store proxy API), [`admin`] and
//! [`audit_trail`] (the console's operator operations: the directory's principals, the
//! node's health, its audit trail searched and verified).
//! [`operation`] gives every operation one shape and lists them; [`domain`] holds the typed
//! key spec, key usage, origin, key state and grant operation, [`algorithms`] the API's
//! algorithm names, both parsed once by the doors; [`specs`] is the key catalogue. Each
//! operation follows the same path: validate input, resolve the key from the in-memory cache,
//! authorize, check the key state, then touch the HSM or the store. Operations that share
//! those steps share one helper for them: `key_in_use` (asymmetric and HMAC operations),
//! `sealing_key` (Encrypt and the data keys), `object_in_use` (the dry-run end and the key
//! version a cryptographic call uses), `rotation_key` (the rotation settings), `change_tags`.
//! No operation reaches the device or the store without an allow.

pub mod admin;
pub mod algorithms;
pub mod aliases;
pub mod asym;
pub mod audit_trail;
pub mod authz;
pub mod blob_check;
mod change;
pub mod clock;
pub mod connections;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod explain;
pub mod external;
pub mod follow;
pub mod grants;
pub mod import;
pub mod key_id;
pub mod keys;
pub mod keystores;
pub mod lead;
mod locks;
pub mod managed;
pub mod migrate;
pub mod operation;
pub mod policies;
pub mod reconcile;
pub mod record;
pub mod region_peer;
pub mod regions;
pub mod residency;
pub mod rewrap;
pub mod rotation;
pub mod service;
pub mod session_vault;
pub mod specs;
pub mod sts;
pub mod sweeper;
pub mod tags;
#[cfg(test)]
mod tests_change;
pub mod usage;
mod validate;
pub mod xks;
pub mod xks_health;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uuid::Uuid;

use crate::hsm::{Hsm, ObjectId};
use crate::identity::arn::{self, Arn};
use crate::identity::{Caller, DirectoryHandle, SessionStore};
use crate::policy::Policy;
use crate::store::{
    AliasRecord, GrantRecord, KeyBundle, KeyLifecycle, KeyRecord, KeyState, MetadataStore, Tag,
};

pub use authz::{AuthzRequest, CtxValue};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{KmsError, XksException};

/// Engine settings that shape ARNs and limits.
#[derive(Debug, Clone)]
pub struct KmsSettings {
    /// ARN partition, `aws` unless configured otherwise.
    pub partition: String,
    /// The region this daemon presents itself as.
    pub region: String,
    /// How long a key may stay in `Creating` before reconciliation resolves it (milliseconds;
    /// `[kms] creating_grace_secs`). See [`reconcile`].
    pub creating_grace_ms: i64,
    /// How long the XKS door reuses a GetHealthStatus check (`[xks] health_cache_ms`).
    pub xks_health_cache_ms: u64,
    /// Where the default key store's new key material lives (`[hsm] residency`).
    pub residency: residency::Residency,
}

/// Where a test may interrupt CreateKey between its two phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptCreate {
    /// Normal operation.
    Never = 0,
    /// Stop after the metadata row is written, before the HSM object exists.
    AfterMetadataRow = 1,
    /// Stop after the HSM object exists, before the row is switched to Enabled.
    AfterHsmObject = 2,
}

/// Hooks that let integration tests interrupt the engine at chosen points. They do nothing
/// unless a test sets them.
#[derive(Debug, Default)]
pub struct TestHooks {
    interrupt_create: AtomicU8,
    interrupt_rotation: AtomicU8,
}

impl TestHooks {
    /// Makes every following CreateKey stop at `at` (until reset with `Never`).
    pub fn set_interrupt_create(&self, at: InterruptCreate) {
        self.interrupt_create.store(at as u8, Ordering::SeqCst);
    }

    /// Makes every following rotation stop at `at` (until reset with `Never`): after the new
    /// version's row, or after its HSM object.
    pub fn set_interrupt_rotation(&self, at: InterruptCreate) {
        self.interrupt_rotation.store(at as u8, Ordering::SeqCst);
    }

    fn interrupt_rotation(&self) -> InterruptCreate {
        match self.interrupt_rotation.load(Ordering::SeqCst) {
            1 => InterruptCreate::AfterMetadataRow,
            2 => InterruptCreate::AfterHsmObject,
            _ => InterruptCreate::Never,
        }
    }

    fn interrupt_create(&self) -> InterruptCreate {
        match self.interrupt_create.load(Ordering::SeqCst) {
            1 => InterruptCreate::AfterMetadataRow,
            2 => InterruptCreate::AfterHsmObject,
            _ => InterruptCreate::Never,
        }
    }
}

/// Authorization decisions taken so far, by outcome (for metrics).
#[derive(Debug, Default)]
pub struct DecisionCounts {
    allow: std::sync::atomic::AtomicU64,
    explicit_deny: std::sync::atomic::AtomicU64,
    implicit_deny: std::sync::atomic::AtomicU64,
}

impl DecisionCounts {
    fn count(&self, d: &crate::policy::Decision) {
        use crate::policy::DecisionReason::*;
        let c = match d.reason {
            Allowed => &self.allow,
            ExplicitDeny => &self.explicit_deny,
            ImplicitDeny => &self.implicit_deny,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (allowed, explicit denies, implicit denies).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.allow.load(Ordering::Relaxed),
            self.explicit_deny.load(Ordering::Relaxed),
            self.implicit_deny.load(Ordering::Relaxed),
        )
    }
}

/// A key as the engine caches it: the record plus what the request path needs precomputed.
#[derive(Debug, Clone)]
pub struct CachedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The key id as UUID bytes (the ciphertext's key id and the HSM CKA_ID prefix).
    pub uuid: [u8; 16],
    /// The key ARN.
    pub arn: String,
    /// Every backing-key version, ascending.
    pub versions: Vec<u32>,
    /// Resource tags.
    pub tags: Vec<Tag>,
    /// The key policy, compiled once per policy version. `None` if the stored text does not
    /// compile (then only grants and nothing else can allow; `check` and the log say so).
    pub policy: Option<Arc<Policy>>,
    /// The key's grants.
    pub grants: Vec<GrantRecord>,
    /// The custom key store the key lives in (`None`: the default store).
    pub store: Option<Arc<connections::StoreHandle>>,
}

impl CachedKey {
    /// The key's state as callers see it: a key in a custom key store that is not
    /// connected is `Unavailable`, unless it is pending deletion, import or creation.
    pub fn state(&self) -> KeyState {
        let st = self.record.state;
        let disconnected = self
            .store
            .as_ref()
            .is_some_and(|s| s.state().0 != keystores::ConnectionState::Connected);
        match st {
            KeyState::Enabled | KeyState::Disabled if disconnected => KeyState::Unavailable,
            other => other,
        }
    }

    /// The HSM object of the current version.
    pub fn current_object(&self) -> ObjectId {
        ObjectId::new(self.uuid, self.record.current_version)
    }
}

#[derive(Default)]
struct Cache {
    keys: BTreeMap<Uuid, Arc<CachedKey>>,
    /// (account, alias name) -> alias.
    aliases: BTreeMap<(String, String), AliasRecord>,
    /// (key id, alias name): the aliases of each key, for `kms:ResourceAliases`.
    aliases_by_key: BTreeSet<(String, String)>,
    /// Keys destroyed by the sweeper (tombstones from the store).
    deleted: BTreeSet<Uuid>,
    /// grant id -> the key it is on: a grant token is checked without a scan of every key.
    grant_keys: HashMap<String, Uuid>,
}

impl Cache {
    /// Puts a key's entry, keeping the grant index in step with its grants.
    fn put_key(&mut self, key: Arc<CachedKey>) {
        let id = Uuid::from_bytes(key.uuid);
        if let Some(old) = self.keys.get(&id) {
            for g in &old.grants {
                self.grant_keys.remove(&g.grant_id);
            }
        }
        for g in &key.grants {
            self.grant_keys.insert(g.grant_id.clone(), id);
        }
        self.keys.insert(id, key);
    }

    /// Removes a key's entry and its grants from the index.
    fn remove_key(&mut self, id: &Uuid) -> Option<Arc<CachedKey>> {
        let old = self.keys.remove(id)?;
        for g in &old.grants {
            self.grant_keys.remove(&g.grant_id);
        }
        Some(old)
    }

    /// The grant `grant_id`, found through the index.
    fn grant(&self, grant_id: &str) -> Option<&GrantRecord> {
        let key = self.keys.get(self.grant_keys.get(grant_id)?)?;
        key.grants.iter().find(|g| g.grant_id == grant_id)
    }

    /// Adds or repoints an alias, keeping the per-key index in step.
    fn put_alias(&mut self, a: AliasRecord) {
        let k = (a.account.clone(), a.name.clone());
        if let Some(old) = self.aliases.get(&k) {
            self.aliases_by_key
                .remove(&(old.key_id.clone(), old.name.clone()));
        }
        self.aliases_by_key
            .insert((a.key_id.clone(), a.name.clone()));
        self.aliases.insert(k, a);
    }

    /// Removes an alias and its index entry.
    fn remove_alias(&mut self, k: &(String, String)) {
        if let Some(old) = self.aliases.remove(k) {
            self.aliases_by_key.remove(&(old.key_id, old.name));
        }
    }

    /// Removes every alias of a key.
    fn remove_aliases_of(&mut self, key_id: &str) {
        self.aliases.retain(|_, a| a.key_id != key_id);
        self.aliases_by_key.retain(|(k, _)| k != key_id);
    }
}

/// A resolved key reference: the key and, when it was named by alias, the alias name.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The key.
    pub key: Arc<CachedKey>,
    /// The alias name (`alias/...`) when the request named the key by alias.
    pub alias: Option<String>,
}

/// The engine. Shared by every door through an `Arc`.
pub struct Kms {
    settings: KmsSettings,
    store: Arc<dyn MetadataStore>,
    hsm: Arc<Hsm>,
    directory: Arc<DirectoryHandle>,
    sessions: Arc<SessionStore>,
    clock: Arc<dyn Clock>,
    hooks: TestHooks,
    cache: RwLock<Cache>,
    /// Per-key (and per-name) change locks: changes to one key are serialised in this
    /// process, changes to different keys run in parallel; see [`locks`].
    key_locks: locks::KeyLocks,
    /// Decisions by outcome.
    decision_counts: DecisionCounts,
    /// Rotation schedules and imported-material state, by key id (migration 0004).
    lifecycles: RwLock<BTreeMap<String, KeyLifecycle>>,
    /// Keys with a rotation under way -> when it started (ConflictException for a second one).
    rotating: std::sync::Mutex<BTreeMap<String, i64>>,
    /// Keys whose imported material an import, deletion or expiry is changing now.
    material_jobs: std::sync::Mutex<BTreeSet<String>>,
    /// Expired import tokens (by SHA-256) whose wrapping key the sweeper has destroyed.
    swept_wrapping_keys: std::sync::Mutex<BTreeSet<String>>,
    /// The last cryptographic use of each key (GetKeyLastUsage), stored in batches.
    usage: usage::UsageTracker,
    /// Where the engine's own actions (sweeps) are reported; see [`service`].
    service_sink: std::sync::OnceLock<Arc<dyn service::ServiceEventSink>>,
    /// How this Region reaches its peer Regions (multi-Region keys, [`regions`]).
    region_link: std::sync::OnceLock<Arc<dyn regions::RegionLink>>,
    /// (key id, Region) pairs that missed a change to a multi-Region key's shared state,
    /// retried by the sweeps ([`Kms::resync_regions`]).
    region_resync: std::sync::Mutex<BTreeSet<(String, String)>>,
    /// Keys whose creation ended without an answer (found in `Creating` at start-up, or left
    /// so by a CreateKey that failed or was dropped), by key id: never in the request cache,
    /// resolved by [`Kms::reconcile_creates`] once the grace period has passed.
    stranded: std::sync::Mutex<BTreeMap<String, KeyRecord>>,
    /// Custom key stores and their connections.
    key_stores: Arc<connections::KeyStores>,
    /// The XKS door's last health check ([`xks_health`]).
    xks_health: xks_health::HealthCache,
    /// The change-log position the cache was loaded at ([`follow`]).
    loaded_at_seq: std::sync::atomic::AtomicI64,
    /// Compiled key policies by text, shared by every key with the same policy (mostly the
    /// default one): 100,000 keys hold one compiled copy, not 100,000.
    policies: std::sync::Mutex<HashMap<Arc<str>, std::sync::Weak<Policy>>>,
    /// The blobs of wrapped key versions ([`residency`]): the default device's blob source.
    blobs: Arc<residency::Blobs>,
    /// This node's audit trail and live figures, for the admin operations ([`admin`]).
    admin: std::sync::OnceLock<admin::AdminWiring>,
    /// The admin operations' paging markers ([`admin::Markers`]).
    markers: admin::Markers,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("settings", &self.settings)
            .field("token", &self.hsm.token_label())
            .finish_non_exhaustive()
    }
}

impl Kms {
    /// Builds the engine and warms the key, alias and grant cache from the store.
    pub async fn open(
        settings: KmsSettings,
        store: Arc<dyn MetadataStore>,
        hsm: Arc<Hsm>,
        directory: Arc<DirectoryHandle>,
        sessions: Arc<SessionStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Kms>, KmsError> {
        let blobs = Arc::new(residency::Blobs::default());
        let kms = Kms {
            settings,
            store,
            key_stores: connections::KeyStores::new(hsm.clone(), blobs.clone(), clock.clone()),
            xks_health: xks_health::HealthCache::default(),
            hsm,
            directory,
            sessions,
            clock,
            hooks: TestHooks::default(),
            cache: RwLock::new(Cache::default()),
            key_locks: locks::KeyLocks::default(),
            decision_counts: DecisionCounts::default(),
            lifecycles: RwLock::new(BTreeMap::new()),
            rotating: std::sync::Mutex::new(BTreeMap::new()),
            material_jobs: std::sync::Mutex::new(BTreeSet::new()),
            swept_wrapping_keys: std::sync::Mutex::new(BTreeSet::new()),
            usage: usage::UsageTracker::default(),
            service_sink: std::sync::OnceLock::new(),
            region_link: std::sync::OnceLock::new(),
            region_resync: std::sync::Mutex::new(BTreeSet::new()),
            stranded: std::sync::Mutex::new(BTreeMap::new()),
            loaded_at_seq: std::sync::atomic::AtomicI64::new(0),
            policies: std::sync::Mutex::new(HashMap::new()),
            blobs,
            admin: std::sync::OnceLock::new(),
            markers: admin::Markers::default(),
        };
        kms.hsm.set_blob_source(kms.blobs.clone());
        if kms.settings.residency == residency::Residency::Wrapped {
            residency::start_wrapped(&kms.hsm).await?;
        }
        // Read before the load: a change committed during it is applied again by the
        // follower, never missed.
        let seq = kms.store.last_change_seq().await?;
        kms.loaded_at_seq
            .store(seq, std::sync::atomic::Ordering::SeqCst);
        kms.key_stores.load(kms.store.list_key_stores().await?);
        let started = std::time::Instant::now();
        kms.load_key_usage().await?;
        kms.reload_all().await?;
        tracing::info!(
            keys = kms.key_count(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "key cache loaded"
        );
        kms.sessions
            .set_vault(Arc::new(session_vault::StoredSessions::new(
                kms.store.clone(),
                kms.key_stores.clone(),
            )));
        Ok(Arc::new(kms))
    }

    /// Loads keys, versions, tags, policies, grants, aliases, lifecycles and tombstones from
    /// the store and replaces the cache with them in one step (at start-up, and on a node
    /// that lost track of the change log; see [`follow`]).
    pub(crate) async fn reload_all(&self) -> Result<(), KmsError> {
        let aliases = self.store.list_aliases().await?;
        let deleted = self.store.deleted_key_ids().await?;
        let grants = self.store.list_grants().await?;
        let lifecycles = self.store.load_lifecycles().await?;
        let mut grants_by_key: BTreeMap<String, Vec<GrantRecord>> = BTreeMap::new();
        for g in grants {
            grants_by_key.entry(g.key_id.clone()).or_default().push(g);
        }
        let mut cache = Cache::default();
        let mut failed = None;
        // Each page becomes cache entries before the next is read: the rows' transient
        // memory is reused page after page instead of piling up (start-up RSS).
        self.store
            .load_pages(&mut |page| {
                for b in page {
                    // A key still in Creating was never answered to anyone: it stays out of
                    // the request cache (no ListKeys, no use) until reconciliation resolves it.
                    if b.key.state == KeyState::Creating {
                        self.strand(b.key);
                        continue;
                    }
                    match self.cached_from_bundle(b) {
                        Ok(mut cached) => {
                            cached.grants = grants_by_key
                                .remove(&cached.record.key_id)
                                .unwrap_or_default();
                            cache.put_key(Arc::new(cached));
                        }
                        Err(e) => failed = failed.take().or(Some(e)),
                    }
                }
            })
            .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        for a in aliases {
            // Through put_alias, so the per-key index (kms:ResourceAliases, KeyManager)
            // is right after a restart too.
            cache.put_alias(a);
        }
        cache.deleted.extend(
            deleted
                .iter()
                .filter_map(|id| crate::core::key_id::parse(id).ok()),
        );
        *self.lifecycles.write().unwrap_or_else(|p| p.into_inner()) = lifecycles
            .into_iter()
            .map(|l| (l.key_id.clone(), l))
            .collect();
        *self.cache_write() = cache;
        Ok(())
    }

    /// The change-log position the cache was loaded at: where following other nodes starts.
    pub fn loaded_at_seq(&self) -> i64 {
        self.loaded_at_seq.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The engine's settings.
    pub fn settings(&self) -> &KmsSettings {
        &self.settings
    }

    /// The HSM the engine runs on (tests read its counters and attributes).
    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    /// Custom key stores and their connections.
    pub fn key_stores(&self) -> &Arc<connections::KeyStores> {
        &self.key_stores
    }

    /// The custom key store a key record names, if any.
    fn store_of(&self, record: &KeyRecord) -> Option<Arc<connections::StoreHandle>> {
        let id = record.custom_key_store_id.as_deref()?;
        let found = self.key_stores.get(id);
        if found.is_none() {
            tracing::error!(key_id = %record.key_id, store = id, "a key names a custom key store that does not exist");
        }
        found
    }

    /// The device a key's material is on: the default store's HSM, or its custom key
    /// store's while that is connected (KMSInvalidStateException otherwise).
    pub(crate) fn device_of(&self, key: &CachedKey) -> Result<Arc<Hsm>, KmsError> {
        match (&key.record.custom_key_store_id, &key.store) {
            (None, _) => Ok(self.hsm.clone()),
            // A key in an external store: its inner layer is on the default HSM.
            (Some(_), Some(store)) if store.is_external() => store
                .connected_proxy()
                .map(|_| self.hsm.clone())
                .ok_or_else(|| {
                    KmsError::InvalidState(format!(
                        "{} is unavailable: its external key store is {}.",
                        key.arn,
                        store.state().0
                    ))
                }),
            (Some(_), Some(store)) => store.connected_hsm().ok_or_else(|| {
                KmsError::InvalidState(format!(
                    "{} is unavailable: its custom key store is {}.",
                    key.arn,
                    store.state().0
                ))
            }),
            (Some(id), None) => Err(KmsError::InvalidState(format!(
                "{} is unavailable: its custom key store {id} does not exist.",
                key.arn
            ))),
        }
    }

    /// The device of a key record (a key being created): as [`Kms::device_of`].
    pub(crate) fn device_of_record(&self, record: &KeyRecord) -> Result<Arc<Hsm>, KmsError> {
        match &record.custom_key_store_id {
            None => Ok(self.hsm.clone()),
            Some(id) => self
                .key_stores
                .get(id)
                .and_then(|s| match s.is_external() {
                    true => s.connected_proxy().map(|_| self.hsm.clone()),
                    false => s.connected_hsm(),
                })
                .ok_or_else(|| {
                    KmsError::CustomKeyStoreInvalidState(format!(
                        "Custom key store {id} is not connected."
                    ))
                }),
        }
    }

    /// Whether new key material of `record` is wrapped rather than a token object: keys of
    /// the default store when `[hsm] residency = "wrapped"`, keys of a custom key store when
    /// its cluster's `[[hsm.cluster]] residency = "wrapped"` (the blob is made on the
    /// store's device, under its token's master). The inner keys of external stores stay
    /// token objects.
    pub(crate) fn wraps_new_keys(&self, record: &KeyRecord) -> bool {
        match record.custom_key_store_id.as_deref() {
            None => self.settings.residency == residency::Residency::Wrapped,
            Some(id) => self.key_stores.store_residency(id) == residency::Residency::Wrapped,
        }
    }

    /// The device of the caller's custom key store `id`: CustomKeyStoreNotFoundException if
    /// the account has none so named, CustomKeyStoreInvalidStateException unless `CONNECTED`.
    pub(crate) fn connected_store(&self, caller: &Caller, id: &str) -> Result<Arc<Hsm>, KmsError> {
        let store = self.own_store(caller, id)?;
        if store.is_external() {
            return Err(KmsError::UnsupportedOperation(format!(
                "Custom key store {id} is an external key store: it has no device of its own."
            )));
        }
        store.connected_hsm().ok_or_else(|| {
            KmsError::CustomKeyStoreInvalidState(format!(
                "Custom key store {id} is {}: it must be CONNECTED.",
                store.state().0
            ))
        })
    }

    /// The metadata store.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The identity directory (reloadable).
    pub fn directory(&self) -> &Arc<DirectoryHandle> {
        &self.directory
    }

    /// Live AssumeRole sessions.
    pub fn sessions(&self) -> &Arc<SessionStore> {
        &self.sessions
    }

    /// Authorization decisions so far, by outcome.
    pub fn decision_counts(&self) -> &DecisionCounts {
        &self.decision_counts
    }

    /// Test hooks; inert unless set.
    pub fn hooks(&self) -> &TestHooks {
        &self.hooks
    }

    /// Now, by the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Number of keys in the cache (every state).
    pub fn key_count(&self) -> usize {
        self.cache_read().keys.len()
    }

    fn cache_read(&self) -> RwLockReadGuard<'_, Cache> {
        // A poisoned lock means a panic happened while writing; the maps themselves are
        // always consistent between statements, so keep serving.
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    fn key_arn(&self, account: &str, key_id: &str) -> String {
        arn::key_arn(
            &self.settings.partition,
            &self.settings.region,
            account,
            key_id,
        )
    }

    fn alias_arn(&self, account: &str, alias_name: &str) -> String {
        arn::alias_arn(
            &self.settings.partition,
            &self.settings.region,
            account,
            alias_name,
        )
    }

    fn cached_from_bundle(&self, mut b: KeyBundle) -> Result<CachedKey, KmsError> {
        let uuid = crate::core::key_id::parse(&b.key.key_id).map_err(|_| {
            KmsError::Internal(format!("stored key id '{}' is not a UUID", b.key.key_id))
        })?;
        let (text, policy) = self.shared_policy(&b.key.key_id, &b.key.policy);
        b.key.policy = text;
        self.blobs.put_versions(*uuid.as_bytes(), &b.versions);
        Ok(CachedKey {
            arn: self.key_arn(&b.key.account, &b.key.key_id),
            uuid: *uuid.as_bytes(),
            versions: b.versions.iter().map(|v| v.version).collect(),
            tags: b.tags,
            policy,
            store: self.store_of(&b.key),
            record: b.key,
            grants: Vec::new(),
        })
    }

    /// A stored key policy's text and compiled form, both shared with every other key whose
    /// policy has the same text (100,000 keys with the default policy hold one copy of each).
    /// Entries whose policy no key holds any more are dropped as the map grows.
    fn shared_policy(&self, key_id: &str, text: &Arc<str>) -> (Arc<str>, Option<Arc<Policy>>) {
        let mut map = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((shared, p)) = map
            .get_key_value(&**text)
            .and_then(|(k, w)| Some((k.clone(), w.upgrade()?)))
        {
            return (shared, Some(p));
        }
        let Some(compiled) = compile_stored_policy(key_id, text) else {
            return (text.clone(), None);
        };
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(text.clone(), Arc::downgrade(&compiled));
        (text.clone(), Some(compiled))
    }

    /// Alias names of a key, for `kms:ResourceAliases`.
    pub(crate) fn aliases_of(&self, key_id: &str) -> Vec<String> {
        let cache = self.cache_read();
        cache
            .aliases_by_key
            .range((key_id.to_string(), String::new())..)
            .take_while(|(k, _)| k == key_id)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Replaces a key's cache entry from its stored state, unless the cache already holds a
    /// later state of the row (a higher `row_version`: two tasks finishing out of order, or a
    /// reload racing a change). Returns the entry the cache holds afterwards.
    pub(crate) fn cache_put(&self, cached: CachedKey) -> Arc<CachedKey> {
        let mut cache = self.cache_write();
        let id = Uuid::from_bytes(cached.uuid);
        if let Some(held) = cache.keys.get(&id) {
            if held.record.row_version > cached.record.row_version {
                return held.clone();
            }
        }
        let arc = Arc::new(cached);
        cache.put_key(arc.clone());
        arc
    }

    /// Reloads one key from the store into the cache (after a change), keeping its grants.
    async fn refresh_key(&self, key_id: &str) -> Result<Option<Arc<CachedKey>>, KmsError> {
        match self.store.get_key(key_id).await? {
            Some(b) => {
                let mut cached = self.cached_from_bundle(b)?;
                if let Some(old) = self.key_by_uuid(&cached.uuid) {
                    cached.grants = old.grants.clone();
                }
                Ok(Some(self.cache_put(cached)))
            }
            None => {
                if let Ok(u) = crate::core::key_id::parse(key_id) {
                    self.cache_write().remove_key(&u);
                }
                Ok(None)
            }
        }
    }

    fn key_by_uuid(&self, uuid: &[u8; 16]) -> Option<Arc<CachedKey>> {
        self.cache_read()
            .keys
            .get(&Uuid::from_bytes(*uuid))
            .cloned()
    }

    fn was_deleted(&self, uuid: &[u8; 16]) -> bool {
        self.cache_read().deleted.contains(&Uuid::from_bytes(*uuid))
    }

    /// Resolves a KeyId parameter: key id, key ARN, and (when `allow_alias`) alias name or
    /// alias ARN. Bare ids and alias names resolve in the caller's own account.
    pub fn resolve(
        &self,
        caller: &Caller,
        key_ref: &str,
        allow_alias: bool,
    ) -> Result<Resolved, KmsError> {
        validate::key_ref(key_ref)?;
        if key_ref.starts_with("arn:") {
            let parsed = Arn::parse(key_ref)
                .map_err(|_| KmsError::NotFound(format!("Invalid arn {key_ref}")))?;
            if parsed.service != "kms"
                || parsed.partition != self.settings.partition
                || parsed.region != self.settings.region
            {
                return Err(KmsError::NotFound(format!("Invalid arn {key_ref}")));
            }
            if let Some(id) = parsed.resource.strip_prefix("key/") {
                return self.resolve_id(caller, parsed.account, id, key_ref);
            }
            if parsed.resource.starts_with("alias/") {
                if !allow_alias {
                    return Err(KmsError::NotFound(format!(
                        "Invalid keyId {key_ref}: this operation takes a key ID or key ARN"
                    )));
                }
                return self.resolve_alias(caller, parsed.account, parsed.resource, key_ref);
            }
            return Err(KmsError::NotFound(format!("Invalid arn {key_ref}")));
        }
        if key_ref.starts_with("alias/") {
            if !allow_alias {
                return Err(KmsError::NotFound(format!(
                    "Invalid keyId {key_ref}: this operation takes a key ID or key ARN"
                )));
            }
            let account = caller.account.clone();
            return self.resolve_alias(caller, &account, key_ref, key_ref);
        }
        let account = caller.account.clone();
        self.resolve_id(caller, &account, key_ref, key_ref)
    }

    fn resolve_id(
        &self,
        caller: &Caller,
        account: &str,
        id: &str,
        as_given: &str,
    ) -> Result<Resolved, KmsError> {
        let found = crate::core::key_id::parse(id)
            .ok()
            .and_then(|u| self.cache_read().keys.get(&u).cloned())
            .filter(|k| k.record.account == account);
        match found {
            Some(key) => Ok(Resolved { key, alias: None }),
            None => Err(self.absent(caller, account, as_given)),
        }
    }

    fn resolve_alias(
        &self,
        caller: &Caller,
        account: &str,
        name: &str,
        as_given: &str,
    ) -> Result<Resolved, KmsError> {
        let target = {
            let cache = self.cache_read();
            cache
                .aliases
                .get(&(account.to_string(), name.to_string()))
                .and_then(|a| crate::core::key_id::parse(&a.key_id).ok())
                .and_then(|u| cache.keys.get(&u).cloned())
        };
        match target {
            Some(key) => Ok(Resolved {
                key,
                alias: Some(name.to_string()),
            }),
            None if account != caller.account => Err(self.absent(caller, account, as_given)),
            None => Err(KmsError::NotFound(format!(
                "Alias {} is not found.",
                self.alias_arn(account, name)
            ))),
        }
    }

    /// The error for a key that cannot be found. In another account it is AccessDenied, so
    /// that callers cannot probe which keys exist there.
    fn absent(&self, caller: &Caller, account: &str, as_given: &str) -> KmsError {
        if account != caller.account {
            KmsError::AccessDenied(format!(
                "User: {} is not authorized to access {as_given}",
                caller.principal_arn
            ))
        } else if as_given.starts_with("arn:") {
            KmsError::NotFound(format!("Key '{as_given}' does not exist"))
        } else {
            KmsError::NotFound(format!(
                "Key '{}' does not exist",
                self.key_arn(account, as_given)
            ))
        }
    }
}

/// Compiles a stored key policy; a stored policy that no longer compiles denies everything
/// but grants, and is logged.
fn compile_stored_policy(key_id: &str, text: &str) -> Option<Arc<Policy>> {
    match Policy::parse(text, crate::policy::PolicyKind::Key) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::error!(key_id, error = %e, "stored key policy does not compile; only grants can allow use of this key");
            None
        }
    }
}

/// The operations whose AWS input has a `DryRun` member: each checks everything a real call
/// checks, then answers DryRunOperationException without an HSM call or a stored change.
pub const DRY_RUN_OPERATIONS: &[&str] = &[
    "CreateGrant",
    "Decrypt",
    "DeriveSharedSecret",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "ReEncrypt",
    "RetireGrant",
    "RevokeGrant",
    "Sign",
    "Verify",
    "VerifyMac",
];

/// Ends a dry run once every check of the real call has passed: the point just before the
/// HSM call or the stored change.
pub(crate) fn end_dry_run(dry_run: bool) -> Result<(), KmsError> {
    if dry_run {
        Err(KmsError::dry_run())
    } else {
        Ok(())
    }
}

/// Where a cryptographic operation passes from its checks to the device: a dry run ends here
/// ([`end_dry_run`]); a real call uses the key's current version, which the audit event
/// records.
pub(crate) fn object_in_use(key: &CachedKey, dry_run: bool) -> Result<ObjectId, KmsError> {
    end_dry_run(dry_run)?;
    let object = key.current_object();
    record::key_version(object.version());
    Ok(object)
}

/// Key-state classes of kms-spec section 1.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateClass {
    /// Cryptographic use: Enabled only.
    Use,
    /// Anything but PendingDeletion.
    NotPendingDeletion,
    /// EnableKey / DisableKey: Enabled, Disabled, Unavailable.
    EnableDisable,
    /// CancelKeyDeletion: PendingDeletion only.
    PendingDeletion,
    /// DescribeKey, ListResourceTags: any state.
    Any,
}

/// Checks a key's state against an operation's class, with AWS's exceptions and messages.
pub(crate) fn check_state(key: &CachedKey, class: StateClass) -> Result<(), KmsError> {
    let st = key.state();
    let arn = &key.arn;
    let invalid = |what: &str| KmsError::InvalidState(format!("{arn} is {what}."));
    let described = |st: KeyState| match st {
        KeyState::PendingDeletion => invalid("pending deletion"),
        KeyState::PendingImport => invalid("pending import"),
        KeyState::Creating => invalid("creating"),
        KeyState::Unavailable => invalid("unavailable"),
        KeyState::Disabled => KmsError::Disabled(format!("{arn} is disabled.")),
        KeyState::Enabled => invalid("enabled"),
    };
    match class {
        StateClass::Any => Ok(()),
        StateClass::Use => match st {
            KeyState::Enabled => Ok(()),
            other => Err(described(other)),
        },
        StateClass::NotPendingDeletion => match st {
            KeyState::PendingDeletion => Err(invalid("pending deletion")),
            KeyState::Creating => Err(invalid("creating")),
            _ => Ok(()),
        },
        StateClass::EnableDisable => match st {
            KeyState::Enabled | KeyState::Disabled | KeyState::Unavailable => Ok(()),
            other => Err(described(other)),
        },
        StateClass::PendingDeletion => match st {
            KeyState::PendingDeletion => Ok(()),
            _ => Err(invalid("not pending deletion")),
        },
    }
}
