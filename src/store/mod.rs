//! Metadata persistence: keys, key versions, aliases, tags and key policies.
//!
//! The engine talks to a [`MetadataStore`]; SQLite (embedded, the default) lives in
//! [`sqlite`]. Nothing here ever holds key material: the HSM does. Every multi-row change is
//! one transaction, so a failed request never leaves a partial change behind.

use crate::wire_enum::wire_enum;
use async_trait::async_trait;
use std::collections::BTreeMap;

pub mod sqlite;

pub use sqlite::SqliteStore;

wire_enum!(
    /// Lifecycle state of a KMS key, with AWS's names (kms-spec section 1.4).
    KeyState {
        /// Phase one of a two-phase create: the row exists, the HSM object may not.
        Creating,
        Enabled,
        Disabled,
        PendingDeletion,
        PendingImport,
        Unavailable,
    }
);

/// One KMS key's metadata row. Key ids are lowercase UUID strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    /// 12-digit AWS account id that owns the key.
    pub account: String,
    pub description: String,
    /// `SYMMETRIC_DEFAULT`, `RSA_2048`, ...
    pub key_spec: String,
    /// `ENCRYPT_DECRYPT`, `SIGN_VERIFY`, ...
    pub key_usage: String,
    /// `AWS_KMS` or `EXTERNAL`.
    pub origin: String,
    pub state: KeyState,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds; set while PendingDeletion.
    pub deletion_date_ms: Option<i64>,
    /// Set while PendingDeletion.
    pub pending_window_days: Option<i32>,
    /// The version new encryptions use (1-based).
    pub current_version: u32,
    /// The key policy document (JSON text), policy name `default`.
    pub policy: String,
    /// The custom key store the key lives in (`cks-...`); `None` for the default store.
    pub custom_key_store_id: Option<String>,
    /// The external key (`XksKeyId`) backing a key in an external key store.
    pub xks_key_id: Option<String>,
    /// The row's version as read (a new record starts at 1, as it is inserted). Every write
    /// of the row is compare-and-set on it and raises it by one, so a change made meanwhile
    /// by another node or task is refused with [`StoreError::Conflict`] instead of being
    /// overwritten.
    pub row_version: i64,
}

/// One backing-key version of a KMS key; each is one object on the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub key_id: String,
    pub version: u32,
    /// Unix milliseconds.
    pub created_at_ms: i64,
}

/// An alias: a friendly name in an account that points at exactly one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRecord {
    pub account: String,
    /// Full name including the `alias/` prefix.
    pub name: String,
    pub key_id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A resource tag on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// A grant on a key (kms-spec 3.5). Grants never expire; they end by RetireGrant,
/// RevokeGrant or deletion of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// 64 hex characters.
    pub grant_id: String,
    pub key_id: String,
    /// Optional idempotency name.
    pub name: Option<String>,
    pub grantee_principal: String,
    pub retiring_principal: Option<String>,
    /// Grant operations without the `kms:` prefix (`Decrypt`, `Encrypt`, ...).
    pub operations: Vec<String>,
    /// `EncryptionContextEquals` constraint.
    pub constraint_equals: Option<BTreeMap<String, String>>,
    /// `EncryptionContextSubset` constraint.
    pub constraint_subset: Option<BTreeMap<String, String>>,
    /// The account that created the grant (the key's account), as its root ARN
    /// (`arn:aws:iam::111122223333:root`); grants stored earlier hold the bare account id.
    pub issuing_account: String,
    pub created_at_ms: i64,
}

/// A key with everything that hangs off it, as loaded into the engine's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    pub key: KeyRecord,
    pub versions: Vec<KeyVersion>,
    pub tags: Vec<Tag>,
}

/// Rotation schedule and imported-material state of one key (migration 0004). Keys without
/// a row have rotation disabled and no imported material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLifecycle {
    pub key_id: String,
    pub rotation_enabled: bool,
    /// Set once rotation has been enabled (kept when disabled, as AWS shows it).
    pub rotation_period_days: Option<i32>,
    /// Unix milliseconds of the next automatic rotation (while enabled).
    pub next_rotation_ms: Option<i64>,
    /// On-demand rotations so far (at most 25).
    pub on_demand_rotations: u32,
    /// `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE` once material was imported.
    pub expiration_model: Option<String>,
    /// Unix milliseconds when imported material expires.
    pub valid_to_ms: Option<i64>,
    /// Check value of the imported material (computed on the device; not secret).
    pub material_check: Option<Vec<u8>>,
    /// Whether the imported material object is on the token.
    pub material_present: bool,
}

/// One rotation of a key: the version it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationEntry {
    pub key_id: String,
    pub version: u32,
    pub rotated_at_ms: i64,
    /// `AUTOMATIC` or `ON_DEMAND`.
    pub rotation_type: String,
}

wire_enum!(
    /// The cryptographic operations GetKeyLastUsage reports (the model's
    /// `KeyLastUsageTrackingOperation`), by their AWS operation names.
    UsageOperation {
        Decrypt,
        DeriveSharedSecret,
        Encrypt,
        GenerateDataKey,
        GenerateDataKeyPair,
        GenerateDataKeyPairWithoutPlaintext,
        GenerateDataKeyWithoutPlaintext,
        GenerateMac,
        ReEncrypt,
        Sign,
        Verify,
        VerifyMac,
        Encapsulate,
        Decapsulate,
    }
);

/// The last successful cryptographic operation on a key, as GetKeyLastUsage reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsageRecord {
    pub key_id: String,
    pub operation: UsageOperation,
    /// Unix milliseconds (the audit event's time).
    pub used_at_ms: i64,
    /// The audit event's `eventID`.
    pub event_id: String,
    /// The request id (the audit event's `requestID`).
    pub request_id: String,
}

/// An outstanding GetParametersForImport answer. Only the SHA-256 of the token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportTokenRecord {
    /// Lowercase hex SHA-256 of the opaque import token.
    pub token_sha256: String,
    pub key_id: String,
    /// UUID of the wrapping key pair on the token.
    pub wrapping_key_id: String,
    pub wrapping_algorithm: String,
    pub wrapping_key_spec: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A custom key store (migration 0006): one `[[hsm.cluster]]` device offered to an account.
/// The password is stored only sealed by the default store's HSM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyStoreRecord {
    /// `cks-` plus 17 characters.
    pub store_id: String,
    /// The owning account.
    pub account: String,
    /// Unique per account.
    pub name: String,
    /// The `[[hsm.cluster]]` id (unique: a cluster backs one store).
    pub cluster_id: String,
    /// The trust anchor certificate as given (PEM).
    pub trust_anchor: String,
    /// The KeyStorePassword sealed on the default HSM (never plaintext).
    pub sealed_password: Vec<u8>,
    /// Whether the key administrator last asked to connect (a restart reconnects it).
    pub connect: bool,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// The proxy of an `EXTERNAL_KEY_STORE` store (`None`: an `AWS_CLOUDHSM` store).
    pub xks: Option<XksProxyRecord>,
}

/// How an external key store reaches its XKS proxy (migration 0007).
#[derive(Clone, PartialEq, Eq)]
pub struct XksProxyRecord {
    /// `XksProxyUriEndpoint`.
    pub endpoint: String,
    /// `XksProxyUriPath`.
    pub uri_path: String,
    /// `XksProxyConnectivity` (`PUBLIC_ENDPOINT`).
    pub connectivity: String,
    /// The credential's `AccessKeyId`.
    pub access_key_id: String,
    /// The credential's `RawSecretAccessKey`, sealed on the default HSM (never plaintext).
    pub sealed_secret: Vec<u8>,
}

crate::redact::redacted_debug!(XksProxyRecord {
    endpoint,
    uri_path,
    connectivity,
    access_key_id,
    sealed_secret: redacted,
});

crate::redact::redacted_debug!(KeyStoreRecord {
    store_id,
    account,
    name,
    cluster_id,
    connect,
    created_at_ms,
    xks,
    sealed_password: redacted,
    ..
});

/// A key object left on a custom key store's device: the sweeper deleted its key while the
/// store was not connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanRecord {
    pub store_id: String,
    pub key_id: String,
    pub version: u32,
    /// Unix milliseconds.
    pub orphaned_at_ms: i64,
}

/// Errors of the store layer. The engine maps them to AWS exceptions in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness constraint failed (duplicate alias name, duplicate key id).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The row to change does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored value could not be decoded (corrupt or foreign database).
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The row changed since it was read (its `row_version` moved on): the caller re-reads
    /// and retries, or answers as AWS would. Never a silent overwrite.
    #[error("changed concurrently: {0}")]
    Conflict(String),
    /// The database cannot be reached (connection refused or lost, pool timed out): nothing
    /// was applied, and retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database itself failed (I/O, locking, migration).
    #[error("database error: {0}")]
    Database(String),
}

/// Persistence for key metadata. Implementations must make each method atomic.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Phase one of creation: inserts the key row (normally in `Creating`) with its tags.
    async fn insert_key(&self, key: &KeyRecord, tags: &[Tag]) -> Result<(), StoreError>;
    /// Phase two of creation: records version 1 (or a new version) and sets the key row,
    /// in one transaction.
    async fn add_version_and_update(
        &self,
        version: &KeyVersion,
        key: &KeyRecord,
    ) -> Result<(), StoreError>;
    /// Overwrites the mutable columns of an existing key row (state, description, dates,
    /// current version, policy). `NotFound` if the row does not exist.
    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// One key with its versions and tags.
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyBundle>, StoreError>;
    /// Every key with its versions and tags, ordered by key id (cache warm-up, `check`).
    async fn load_all(&self) -> Result<Vec<KeyBundle>, StoreError>;
    /// Removes a key with its versions, tags and aliases, in one transaction.
    async fn delete_key(&self, key_id: &str) -> Result<(), StoreError>;

    /// The sweeper's last step: removes a key like [`MetadataStore::delete_key`] and records a
    /// tombstone (key id, account, time) in the same transaction.
    async fn destroy_key(&self, key_id: &str, deleted_at_ms: i64) -> Result<(), StoreError>;
    /// Ids of every key destroyed by the sweeper.
    async fn deleted_key_ids(&self) -> Result<Vec<String>, StoreError>;

    /// Replaces or adds the given tags on a key (same tag key overwrites), atomically.
    async fn put_tags(&self, key_id: &str, tags: &[Tag]) -> Result<(), StoreError>;
    /// Removes the given tag keys from a key; absent keys are ignored.
    async fn remove_tags(&self, key_id: &str, tag_keys: &[String]) -> Result<(), StoreError>;

    /// Inserts an alias; `AlreadyExists` if (account, name) is taken.
    async fn create_alias(&self, alias: &AliasRecord) -> Result<(), StoreError>;
    /// Points an existing alias at another key; `NotFound` if absent.
    async fn update_alias(
        &self,
        account: &str,
        name: &str,
        key_id: &str,
        updated_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Deletes an alias; `NotFound` if absent.
    async fn delete_alias(&self, account: &str, name: &str) -> Result<(), StoreError>;
    /// Every alias of every account, ordered by (account, name).
    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError>;

    /// Inserts a grant; `NotFound` if its key does not exist, `AlreadyExists` on a duplicate id.
    async fn insert_grant(&self, grant: &GrantRecord) -> Result<(), StoreError>;
    /// Deletes a grant; `NotFound` if absent.
    async fn delete_grant(&self, grant_id: &str) -> Result<(), StoreError>;
    /// Every grant, ordered by (key id, creation time, grant id).
    async fn list_grants(&self) -> Result<Vec<GrantRecord>, StoreError>;

    // Rotation and import of key material (migration 0004).

    /// Every key's lifecycle row.
    async fn load_lifecycles(&self) -> Result<Vec<KeyLifecycle>, StoreError>;
    /// Inserts or replaces a key's lifecycle row; `NotFound` if the key does not exist.
    async fn put_lifecycle(&self, l: &KeyLifecycle) -> Result<(), StoreError>;
    /// A key's rotations, ordered by version.
    async fn list_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, StoreError>;
    /// Phase one of a rotation: the new version's row (the key keeps its current version).
    async fn begin_rotation(&self, version: &KeyVersion) -> Result<(), StoreError>;
    /// Undoes phase one of a rotation whose HSM object could not be made: removes the version
    /// row unless a rotation entry already names it.
    async fn abort_rotation(&self, key_id: &str, version: u32) -> Result<(), StoreError>;
    /// Phase two of a rotation, in one transaction: the key row (new current version), the
    /// rotation entry and the lifecycle row.
    async fn finish_rotation(
        &self,
        key: &KeyRecord,
        entry: &RotationEntry,
        l: &KeyLifecycle,
    ) -> Result<(), StoreError>;
    /// Records an import token; `NotFound` if its key does not exist.
    async fn insert_import_token(&self, t: &ImportTokenRecord) -> Result<(), StoreError>;
    /// The import token with this SHA-256, if any.
    async fn get_import_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ImportTokenRecord>, StoreError>;
    /// Removes an import token (absent is fine).
    async fn delete_import_token(&self, token_sha256: &str) -> Result<(), StoreError>;
    /// Every outstanding import token.
    async fn list_import_tokens(&self) -> Result<Vec<ImportTokenRecord>, StoreError>;
    /// A successful import, in one transaction: the version row (first import only), the key
    /// row, the lifecycle row, and the used token removed.
    async fn finish_import(
        &self,
        key: &KeyRecord,
        version: Option<&KeyVersion>,
        l: &KeyLifecycle,
        token_sha256: &str,
    ) -> Result<(), StoreError>;
    /// The key row and its lifecycle row together (material expired or deleted).
    async fn update_key_and_lifecycle(
        &self,
        key: &KeyRecord,
        l: &KeyLifecycle,
    ) -> Result<(), StoreError>;

    // Key last usage (migration 0005).

    /// When usage tracking began on this database: the stored time, or `now_ms`, stored now,
    /// on the first call ever.
    async fn usage_tracking_start(&self, now_ms: i64) -> Result<i64, StoreError>;
    /// Every key's last recorded use.
    async fn load_key_usage(&self) -> Result<Vec<KeyUsageRecord>, StoreError>;
    /// Stores a batch of last uses in one transaction (each replaces the key's previous one);
    /// rows of keys that no longer exist are skipped. Returns the number of rows written.
    async fn put_key_usage(&self, rows: &[KeyUsageRecord]) -> Result<u64, StoreError>;

    // Custom key stores (migration 0006).

    /// Inserts a store; `AlreadyExists` if its id, its (account, name) or its cluster is taken.
    async fn insert_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError>;
    /// Overwrites a store's name, cluster, sealed password and connect flag; `NotFound` if
    /// absent, `AlreadyExists` if the new name or cluster is taken.
    async fn update_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError>;
    /// Deletes a store; `NotFound` if absent, `AlreadyExists` while a key still names it.
    async fn delete_key_store(&self, store_id: &str) -> Result<(), StoreError>;
    /// Every store, ordered by (account, creation time, id).
    async fn list_key_stores(&self) -> Result<Vec<KeyStoreRecord>, StoreError>;
    /// Records key objects left on a store's device (an existing record is kept).
    async fn record_orphans(&self, orphans: &[OrphanRecord]) -> Result<(), StoreError>;
    /// Every recorded orphaned object, ordered by (store, key, version).
    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError>;
}
