//! Metadata persistence: keys, key versions, aliases, tags and key policies.
//!
//! The engine talks to a [`MetadataStore`]; the one implementation, [`SqlStore`] in [`sql`],
//! runs on SQLite (embedded, the default, one node) or PostgreSQL (shared by several nodes),
//! chosen by `[store] backend` and opened by [`open`]. Nothing here ever holds key material:
//! the HSM does. Every change is one transaction, so a failed request never leaves a partial
//! change behind, and every change appends to the change log in that same transaction.

use crate::wire_enum::wire_enum;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

pub mod sql;

pub use sql::{PgSettings, PgTls, SqlStore};

/// The embedded store under its former name (SQLite is one of [`SqlStore`]'s backends).
pub type SqliteStore = SqlStore;

/// Opens the store `[store]` names (migrations run first), for the server and `check`.
pub async fn open(config: &crate::config::StoreConfig) -> Result<Arc<SqlStore>, StoreError> {
    use crate::config::{StoreBackend, StoreTls};
    let store = match config.backend {
        StoreBackend::Sqlite => SqlStore::open_sqlite(&config.data_dir).await?,
        StoreBackend::Postgres => {
            let password = config
                .postgres_password()
                .map_err(|e| StoreError::Database(e.to_string()))?;
            let settings = PgSettings {
                url: config.url.clone().unwrap_or_default(),
                password,
                pool_size: config.pool_size,
                tls: match config.tls {
                    StoreTls::Disable => PgTls::Disable,
                    StoreTls::Require => PgTls::Require,
                    StoreTls::VerifyFull => PgTls::VerifyFull,
                },
                ca_file: config.ca_file.clone(),
            };
            SqlStore::open_postgres(&settings).await?
        }
    };
    Ok(Arc::new(store))
}

/// Which SQL database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file (one node).
    Sqlite,
    /// A PostgreSQL server (any number of nodes).
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`, as `[store] backend` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

wire_enum!(
    /// What one change-log row says changed, so that a node refreshes just that item.
    ChangeKind {
        /// A key row with its versions, tags, lifecycle or import tokens; id: the key id.
        Key,
        /// An alias; id: `<account>/<alias name>`.
        Alias,
        /// The grants of a key; id: the key id.
        Grants,
        /// A custom key store; id: the store id.
        KeyStore,
        /// An AssumeRole session; id: its access key id.
        Session,
    }
);

/// One change-log row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Increasing; a later commit may hold a lower seq than one already read (sequences are
    /// taken before commit), so readers re-read a short window behind their last seq.
    pub seq: i64,
    /// Unix milliseconds of the write.
    pub at_ms: i64,
    pub kind: ChangeKind,
    /// See [`ChangeKind`].
    pub id: String,
}

/// A stored AssumeRole session (migration 0008), so that a session issued by one node works
/// on all. The secret access key arrives sealed on the HSM; the session token only as its
/// SHA-256. Nothing here is a plaintext secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub access_key_id: String,
    /// Lowercase hex SHA-256 of the session token.
    pub token_sha256: String,
    /// The secret access key sealed on the default HSM.
    pub sealed_secret: Vec<u8>,
    pub role_arn: String,
    pub role_id: String,
    pub session_name: String,
    pub session_arn: String,
    pub account: String,
    /// The session policy document (JSON text), if any.
    pub session_policy: Option<String>,
    /// Session tags, in order.
    pub tags: Vec<(String, String)>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
}

crate::redact::redacted_debug!(SessionRecord {
    access_key_id,
    role_arn,
    session_name,
    account,
    created_at_ms,
    expires_at_ms,
    sealed_secret: redacted,
    ..
});

/// A background duty exactly one node runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Duty {
    /// The deletion sweeper.
    Sweeper,
    /// Automatic key rotation.
    Rotation,
    /// Imported-material and import-token expiry.
    ImportExpiry,
    /// Store/token reconciliation.
    Reconcile,
    /// Pruning of the change log and expired sessions.
    Maintenance,
}

impl Duty {
    /// The PostgreSQL advisory-lock key of the duty: fixed, one per duty (`p11k` + index).
    pub fn lock_key(self) -> i64 {
        const BASE: i64 = 0x7031_316b_0000_0000;
        BASE + match self {
            Duty::Sweeper => 1,
            Duty::Rotation => 2,
            Duty::ImportExpiry => 3,
            Duty::Reconcile => 4,
            Duty::Maintenance => 5,
        }
    }
}

/// Leadership of one [`Duty`], held while this value lives. On PostgreSQL it owns one
/// dedicated connection holding `pg_try_advisory_lock(duty.lock_key())`: if that connection
/// is lost the server releases the lock, and [`LeaderGuard::still_held`] says so. On SQLite
/// (one node by definition) it always leads.
pub struct LeaderGuard {
    duty: Duty,
    conn: Option<sqlx::AnyConnection>,
}

impl std::fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("duty", &self.duty)
            .field("dedicated_connection", &self.conn.is_some())
            .finish()
    }
}

/// What `p11kms check` reports of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    pub backend: Backend,
    /// `sqlite_version()` or PostgreSQL's `server_version`.
    pub server_version: String,
    /// Versions recorded as applied in `_sqlx_migrations`, ascending.
    pub applied_migrations: Vec<i64>,
    /// The newest migration this binary knows.
    pub latest_known: i64,
}

impl StoreInfo {
    /// The newest applied migration (0 on an empty database).
    pub fn latest_applied(&self) -> i64 {
        self.applied_migrations.last().copied().unwrap_or(0)
    }
}

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

wire_enum!(
    /// A key's KeySpec (also read from the deprecated CustomerMasterKeySpec).
    KeySpec {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
        EccNistP521 = "ECC_NIST_P521",
        EccSecgP256k1 = "ECC_SECG_P256K1",
        /// AES-256-GCM, the default.
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        Hmac224 = "HMAC_224",
        Hmac256 = "HMAC_256",
        Hmac384 = "HMAC_384",
        Hmac512 = "HMAC_512",
        Sm2 = "SM2",
        MlDsa44 = "ML_DSA_44",
        MlDsa65 = "ML_DSA_65",
        MlDsa87 = "ML_DSA_87",
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
        MlKem512 = "ML_KEM_512",
        MlKem768 = "ML_KEM_768",
        MlKem1024 = "ML_KEM_1024",
    }
);

wire_enum!(
    /// A key's KeyUsage.
    KeyUsage {
        SignVerify = "SIGN_VERIFY",
        /// Symmetric keys, RSA encryption keys; the default.
        EncryptDecrypt = "ENCRYPT_DECRYPT",
        GenerateVerifyMac = "GENERATE_VERIFY_MAC",
        KeyAgreement = "KEY_AGREEMENT",
        EncapsulateDecapsulate = "ENCAPSULATE_DECAPSULATE",
    }
);

wire_enum!(
    /// Where a key's material comes from.
    Origin {
        /// Generated inside the HSM; the default.
        AwsKms = "AWS_KMS",
        /// Imported by the caller (BYOK).
        External = "EXTERNAL",
        AwsCloudhsm = "AWS_CLOUDHSM",
        ExternalKeyStore = "EXTERNAL_KEY_STORE",
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
    pub key_spec: KeySpec,
    /// `ENCRYPT_DECRYPT`, `SIGN_VERIFY`, ...
    pub key_usage: KeyUsage,
    /// `AWS_KMS`, `EXTERNAL`, `EXTERNAL_KEY_STORE`.
    pub origin: Origin,
    pub state: KeyState,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds; set while PendingDeletion.
    pub deletion_date_ms: Option<i64>,
    /// Set while PendingDeletion.
    pub pending_window_days: Option<i32>,
    /// The version new encryptions use (1-based).
    pub current_version: u32,
    /// The key policy document (JSON text), policy name `default`. Shared: keys with the
    /// same policy text hold one copy in the engine's cache.
    pub policy: std::sync::Arc<str>,
    /// The custom key store the key lives in (`cks-...`); `None` for the default store.
    pub custom_key_store_id: Option<String>,
    /// The external key (`XksKeyId`) backing a key in an external key store.
    pub xks_key_id: Option<String>,
    /// The row's version as read (a new record starts at 1, as it is inserted). Every write
    /// of the row is compare-and-set on it and raises it by one, so a change made meanwhile
    /// by another node or task is refused with [`StoreError::Conflict`] instead of being
    /// overwritten.
    pub row_version: i64,
    /// A multi-Region key's Regions (migration 0010); `None` for a single-Region key.
    pub multi_region: Option<MultiRegion>,
}

/// Where a multi-Region key lives: its primary Region and its replicas' Regions. Every
/// Region's row of the key holds the same value, so DescribeKey shows the same
/// `MultiRegionConfiguration` everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiRegion {
    /// The Region of the primary key.
    pub primary_region: String,
    /// The Regions of the replica keys, in the order they were added.
    pub replica_regions: Vec<String>,
}

/// One backing-key version of a KMS key: one object on the token, or (wrapped residency) a
/// blob here that the HSM unwraps when the version is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub key_id: String,
    pub version: u32,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// The version's material wrapped under an HSM master key; `None` for a token object.
    pub wrapped: Option<StoredBlob>,
}

/// A key version's material wrapped on the HSM under one of its master keys (migration
/// 0009). Not secret (only the device can unwrap it), but bound by the device to its key id
/// and version: the bytes are the HSM layer's blob format, kept whole.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// The master key version that wraps it (also inside `bytes`; kept apart so that
    /// master-key rotation finds the blobs still under an old master).
    pub master: u32,
    /// The blob.
    pub bytes: Vec<u8>,
    /// A wrapped key pair's public key (DER SubjectPublicKeyInfo): the pair's public half
    /// exists nowhere else. `None` for a secret key.
    pub public_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for StoredBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredBlob(master v{}, {} bytes, public key {} bytes)",
            self.master,
            self.bytes.len(),
            self.public_key.as_ref().map_or(0, Vec::len)
        )
    }
}

/// What [`MetadataStore::finish_import`] writes on the imported key's version row.
#[derive(Debug, Clone, Copy)]
pub enum ImportedVersion<'a> {
    /// The first import: the version row is inserted (with its blob in wrapped residency).
    New(&'a KeyVersion),
    /// A re-import in wrapped residency after the material was deleted: the blob is written
    /// on the existing row, which must hold none ([`StoreError::Conflict`] otherwise).
    Blob {
        /// The version (imported keys have only version 1).
        version: u32,
        /// The material wrapped under the master key.
        blob: &'a StoredBlob,
    },
    /// A re-import that made no blob (a token object, or the same material confirmed while
    /// it is still present): the row stays as it is.
    Unchanged,
}

/// One blob found by [`MetadataStore::blobs_under_master_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    pub key_id: String,
    pub version: u32,
    pub blob: StoredBlob,
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

/// What store/token reconciliation compares of a stored key: no policy, description, tags or
/// blob bytes, so that a pass over a million keys moves a fraction of the full rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShape {
    pub key_id: String,
    pub key_spec: KeySpec,
    pub state: KeyState,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub current_version: u32,
    pub custom_key_store_id: Option<String>,
    pub xks_key_id: Option<String>,
    /// Sorted by version.
    pub versions: Vec<VersionShape>,
}

/// What reconciliation compares of a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionShape {
    pub version: u32,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Whether its material is a wrapped blob here rather than a token object.
    pub wrapped: bool,
}

impl From<&KeyBundle> for KeyShape {
    fn from(b: &KeyBundle) -> Self {
        KeyShape {
            key_id: b.key.key_id.clone(),
            key_spec: b.key.key_spec,
            state: b.key.state,
            created_at_ms: b.key.created_at_ms,
            current_version: b.key.current_version,
            custom_key_store_id: b.key.custom_key_store_id.clone(),
            xks_key_id: b.key.xks_key_id.clone(),
            versions: b
                .versions
                .iter()
                .map(|v| VersionShape {
                    version: v.version,
                    created_at_ms: v.created_at_ms,
                    wrapped: v.wrapped.is_some(),
                })
                .collect(),
        }
    }
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
    /// Whether the imported material exists (its token object, or in wrapped residency its
    /// blob on version 1's row).
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
    /// The row's version as read (1 for a new store); [`MetadataStore::update_key_store`] is
    /// compare-and-set on it.
    pub row_version: i64,
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
    row_version,
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
    /// A per-key quota counted in the store is reached (grants or aliases per key): nothing
    /// was applied.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The database cannot be reached (connection refused or lost, pool timed out): nothing
    /// was applied, and retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database itself failed (I/O, locking, migration).
    #[error("database error: {0}")]
    Database(String),
}

/// Persistence for key metadata. Implementations must make each method atomic.
///
/// Compare-and-set: every write that takes a `&KeyRecord` (`update_key`,
/// `add_version_and_update`, `finish_rotation`, `finish_import`, `update_key_and_lifecycle`)
/// applies only while the stored row is still at `key.row_version`; on success the stored
/// row version is `key.row_version + 1`. Zero rows matched: `NotFound` if the key is gone,
/// otherwise `Conflict`, and nothing of the call was applied. `put_tags`, `remove_tags` and
/// `put_lifecycle` raise the key's row version too, unconditionally, so that a record read
/// before them is stale afterwards. The same holds for key stores and `update_key_store`.
///
/// Every write also appends to the change log in its own transaction ([`ChangeKind`] says
/// which rows of which kind; `put_key_usage`, `record_orphans` and expiry deletes are not
/// logged: they carry nothing another node caches for a decision).
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Phase one of creation: inserts the key row (normally in `Creating`) with its tags.
    async fn insert_key(&self, key: &KeyRecord, tags: &[Tag]) -> Result<(), StoreError>;
    /// Benchmark seeding only (`p11kms-bench --startup-seed direct`): inserts finished keys,
    /// each with its one version, as CreateKey's two phases leave them, in one transaction
    /// with one change-log entry per key.
    #[cfg(feature = "bench")]
    async fn seed_keys(&self, keys: &[(KeyRecord, KeyVersion)]) -> Result<(), StoreError>;
    /// Phase two of creation: records version 1 (or a new version) and sets the key row,
    /// in one transaction.
    async fn add_version_and_update(
        &self,
        version: &KeyVersion,
        key: &KeyRecord,
    ) -> Result<(), StoreError>;
    /// Records several versions and sets the key row, in one transaction: a multi-Region
    /// replica's versions as its primary sent them, or one version a primary rotated to.
    async fn add_versions_and_update(
        &self,
        versions: &[KeyVersion],
        key: &KeyRecord,
    ) -> Result<(), StoreError>;
    /// Overwrites the mutable columns of an existing key row (state, description, dates,
    /// current version, policy), compare-and-set on `key.row_version` (see the trait).
    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Replaces the wrapped blob of one version (`None`: the material is a token object),
    /// compare-and-set on the blob it holds (`expected`) and on `key.row_version`, and writes
    /// the key row with it (so other nodes reload the key): master-key rotation and
    /// residency migration. [`StoreError::Conflict`] if either changed meanwhile.
    async fn set_version_blob(
        &self,
        key: &KeyRecord,
        version: u32,
        expected: Option<&StoredBlob>,
        new: Option<&StoredBlob>,
    ) -> Result<(), StoreError>;
    /// Up to `limit` blobs of one key store's keys wrapped under master version `master`, by
    /// key id and version: `None` the default store's, `Some(id)` custom key store `id`'s.
    /// Masters are per device, so master `v1` of a cluster's token is not `v1` of the
    /// default token.
    async fn blobs_under_master_in(
        &self,
        store: Option<&str>,
        master: u32,
        limit: usize,
    ) -> Result<Vec<BlobRow>, StoreError>;
    /// One key with its versions and tags.
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyBundle>, StoreError>;
    /// Every key with its versions and tags, ordered by key id (cache warm-up, `check`).
    async fn load_all(&self) -> Result<Vec<KeyBundle>, StoreError>;
    /// [`MetadataStore::load_all`] a page at a time, in one read transaction: `each` gets
    /// every page in key id order, so a caller that converts pages as they come never holds
    /// the rows of every key at once (a node starting with 100,000 keys).
    async fn load_pages(
        &self,
        each: &mut (dyn FnMut(Vec<KeyBundle>) + Send),
    ) -> Result<(), StoreError>;
    /// Every key's [`KeyShape`] a page at a time, in key id order, in one read transaction
    /// (store/token reconciliation).
    async fn load_shapes(
        &self,
        each: &mut (dyn FnMut(Vec<KeyShape>) + Send),
    ) -> Result<(), StoreError>;
    /// Removes a key with its versions, tags and aliases, in one transaction.
    async fn delete_key(&self, key_id: &str) -> Result<(), StoreError>;

    /// The sweeper's last step: removes a key like [`MetadataStore::delete_key`] and records a
    /// tombstone (key id, account, time) in the same transaction.
    async fn destroy_key(&self, key_id: &str, deleted_at_ms: i64) -> Result<(), StoreError>;
    /// Ids of every key destroyed by the sweeper.
    async fn deleted_key_ids(&self) -> Result<Vec<String>, StoreError>;
    /// Whether the sweeper destroyed this key (its tombstone exists): one row, for a node
    /// following another's deletion.
    async fn was_destroyed(&self, key_id: &str) -> Result<bool, StoreError>;

    /// Replaces or adds the given tags on a key (same tag key overwrites), atomically.
    async fn put_tags(&self, key_id: &str, tags: &[Tag]) -> Result<(), StoreError>;
    /// Removes the given tag keys from a key; absent keys are ignored.
    async fn remove_tags(&self, key_id: &str, tag_keys: &[String]) -> Result<(), StoreError>;

    /// Inserts an alias; `AlreadyExists` if (account, name) is taken, `NotFound` if the key
    /// does not exist, `LimitExceeded` when the key already has `max_per_key` aliases
    /// (counted under the key row's lock).
    async fn create_alias(&self, alias: &AliasRecord, max_per_key: usize)
        -> Result<(), StoreError>;
    /// Points an existing alias at another key; `NotFound` if the alias or the key is absent,
    /// `LimitExceeded` when that key already has `max_per_key` other aliases.
    async fn update_alias(
        &self,
        account: &str,
        name: &str,
        key_id: &str,
        updated_at_ms: i64,
        max_per_key: usize,
    ) -> Result<(), StoreError>;
    /// Deletes an alias; `NotFound` if absent.
    async fn delete_alias(&self, account: &str, name: &str) -> Result<(), StoreError>;
    /// Every alias of every account, ordered by (account, name).
    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError>;

    /// Inserts a grant; `NotFound` if its key does not exist, `AlreadyExists` on a duplicate id,
    /// `LimitExceeded` when the key already has `max_grants` grants (counted in the database
    /// under the key row's lock, so concurrent inserts on several nodes cannot pass it).
    async fn insert_grant(&self, grant: &GrantRecord, max_grants: usize) -> Result<(), StoreError>;
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
    /// A successful import, in one transaction: the version row as `version` says, the key
    /// row, the lifecycle row, and the used token removed.
    async fn finish_import(
        &self,
        key: &KeyRecord,
        version: ImportedVersion<'_>,
        l: &KeyLifecycle,
        token_sha256: &str,
    ) -> Result<(), StoreError>;
    /// The key row and its lifecycle row together (material expired or deleted).
    async fn update_key_and_lifecycle(
        &self,
        key: &KeyRecord,
        l: &KeyLifecycle,
    ) -> Result<(), StoreError>;
    /// Imported material deleted or expired, in one transaction: every wrapped blob of the
    /// key's versions removed (wrapped residency: the material then exists nowhere), the key
    /// row (compare-and-set) and its lifecycle row.
    async fn drop_imported_material(
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
    /// Stores a batch of last uses in one transaction (each replaces the key's previous one;
    /// of several rows for one key the last counts); rows of keys that no longer exist are
    /// skipped. Returns the number of rows written.
    async fn put_key_usage(&self, rows: &[KeyUsageRecord]) -> Result<u64, StoreError>;

    // Custom key stores (migration 0006).

    /// Inserts a store; `AlreadyExists` if its id, its (account, name) or its cluster is taken.
    async fn insert_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError>;
    /// Overwrites a store's name, cluster, sealed password and connect flag, compare-and-set
    /// on `store.row_version` (raised by one on success); `NotFound` if absent, `Conflict` if
    /// it changed meanwhile, `AlreadyExists` if the new name or cluster is taken.
    async fn update_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError>;
    /// Deletes a store; `NotFound` if absent, `AlreadyExists` while a key still names it.
    async fn delete_key_store(&self, store_id: &str) -> Result<(), StoreError>;
    /// Every store, ordered by (account, creation time, id).
    async fn list_key_stores(&self) -> Result<Vec<KeyStoreRecord>, StoreError>;
    /// Records key objects left on a store's device (an existing record is kept).
    async fn record_orphans(&self, orphans: &[OrphanRecord]) -> Result<(), StoreError>;
    /// Every recorded orphaned object, ordered by (store, key, version).
    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError>;

    // Several nodes (migration 0008).

    /// Change-log rows with `seq > after_seq`, ascending, at most `limit`.
    async fn changes_since(&self, after_seq: i64, limit: u32) -> Result<Vec<Change>, StoreError>;
    /// The highest seq in the change log (0 when empty).
    async fn last_change_seq(&self) -> Result<i64, StoreError>;
    /// Removes change-log rows written before `older_than_ms`; returns how many.
    async fn prune_changes(&self, older_than_ms: i64) -> Result<u64, StoreError>;
    /// A waker that changes (to the newest seq notified) when another writer commits a
    /// change: PostgreSQL `LISTEN p11kms_changes`, reconnecting by itself (a reconnect also
    /// wakes, as notifications may have been missed). `None` on SQLite (one node).
    fn subscribe_changes(&self) -> Option<tokio::sync::watch::Receiver<i64>>;

    /// Stores a session; `AlreadyExists` if its access key id or token is taken.
    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The session with this access key id, if stored (expired ones included until deleted).
    async fn get_session(&self, access_key_id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Deletes sessions that expired at or before `now_ms`; returns how many.
    async fn delete_expired_sessions(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Tries to become the one node running `duty`; `None` while another node holds it.
    async fn try_lead(&self, duty: Duty) -> Result<Option<LeaderGuard>, StoreError>;
    /// Backend, server version and migration state, for `p11kms check`.
    async fn describe(&self) -> Result<StoreInfo, StoreError>;

    // Point lookups, to refresh one cached item after a change-log row.

    /// One alias.
    async fn get_alias(&self, account: &str, name: &str)
        -> Result<Option<AliasRecord>, StoreError>;
    /// The grants of one key, ordered by (creation time, grant id).
    async fn grants_of(&self, key_id: &str) -> Result<Vec<GrantRecord>, StoreError>;
    /// One grant (a grant token presented before this node saw the grant).
    async fn get_grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError>;
    /// One key's lifecycle row.
    async fn get_lifecycle(&self, key_id: &str) -> Result<Option<KeyLifecycle>, StoreError>;
    /// One custom key store.
    async fn get_key_store(&self, store_id: &str) -> Result<Option<KeyStoreRecord>, StoreError>;
}
