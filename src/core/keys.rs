//! Key lifecycle: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription.

use std::sync::Arc;

use serde_json::{json, Value};

use super::authz::{AuthzRequest, CtxValue};
use super::change::Retry;
use super::domain::{KeySpec, KeyUsage, Origin};
use super::operation::{request_parameters, response_elements, Empty, Page, ResponseElements};
use super::policies::compile_key_policy;
use super::residency::Wrapped;
use super::specs::{self, SpecKind};
use super::tags::with_request_tags;
use super::validate;
use super::{check_state, CachedKey, InterruptCreate, Kms, KmsError, StateClass};
use crate::hsm::{Hsm, HsmError, HsmErrorKind, ObjectId, PairSpec};
use crate::identity::Caller;
use crate::policy::Policy;
use crate::store::{KeyRecord, KeyState, KeyVersion, MultiRegion, Tag};

/// The default key spec (AES-256-GCM). The other specs this build creates are listed in
/// [`specs`].
pub const SYMMETRIC_DEFAULT: KeySpec = KeySpec::SymmetricDefault;
/// The usage of symmetric keys.
pub const ENCRYPT_DECRYPT: KeyUsage = KeyUsage::EncryptDecrypt;

/// The key specs the engine knows (the model also admits the ML-KEM specs, which it refuses).
const KNOWN_KEY_SPECS: &[KeySpec] = &[
    KeySpec::SymmetricDefault,
    KeySpec::Rsa2048,
    KeySpec::Rsa3072,
    KeySpec::Rsa4096,
    KeySpec::EccNistP256,
    KeySpec::EccNistP384,
    KeySpec::EccNistP521,
    KeySpec::EccSecgP256k1,
    KeySpec::EccNistEdwards25519,
    KeySpec::Hmac224,
    KeySpec::Hmac256,
    KeySpec::Hmac384,
    KeySpec::Hmac512,
    KeySpec::Sm2,
    KeySpec::MlDsa44,
    KeySpec::MlDsa65,
    KeySpec::MlDsa87,
];
/// The key usages the engine knows (not `ENCAPSULATE_DECAPSULATE`).
const KNOWN_USAGES: &[KeyUsage] = &[
    KeyUsage::EncryptDecrypt,
    KeyUsage::SignVerify,
    KeyUsage::GenerateVerifyMac,
    KeyUsage::KeyAgreement,
];

/// The ValidationException of a value the engine does not know, listing the ones it does
/// (in the AWS spelling, as before the values were typed).
fn not_in_enum<T: Copy>(member: &str, known: &[T], spell: fn(T) -> &'static str) -> KmsError {
    let known: Vec<&str> = known.iter().map(|v| spell(*v)).collect();
    KmsError::validation(
        member,
        &format!("Member must satisfy enum value set: {known:?}"),
    )
}

/// CreateKey input.
#[derive(Debug, Clone, Default)]
pub struct CreateKeyRequest {
    pub policy: Option<String>,
    pub description: String,
    pub key_usage: Option<KeyUsage>,
    pub key_spec: Option<KeySpec>,
    pub customer_master_key_spec: Option<KeySpec>,
    pub origin: Option<Origin>,
    pub bypass_policy_lockout_safety_check: bool,
    pub tags: Vec<Tag>,
    pub multi_region: bool,
    /// The custom key store to create the key in (with `Origin: AWS_CLOUDHSM` or
    /// `EXTERNAL_KEY_STORE`).
    pub custom_key_store_id: Option<String>,
    /// The external key backing a key of origin `EXTERNAL_KEY_STORE`.
    pub xks_key_id: Option<String>,
}

/// CreateKey output: the new key's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateKeyResponse {
    pub key_metadata: KeyMetadata,
}

/// DescribeKey input: a key id, key ARN, alias name or alias ARN.
#[derive(Debug, Clone, Default)]
pub struct DescribeKeyRequest {
    pub key_id: String,
    pub grant_tokens: Vec<String>,
}

/// DescribeKey output (the same body as CreateKey's, but nothing in the audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeKeyResponse {
    pub key_metadata: KeyMetadata,
}

/// ListKeys input.
#[derive(Debug, Clone, Default)]
pub struct ListKeysRequest {
    /// `Limit` and `Marker`.
    pub page: Page,
}

/// EnableKey input.
#[derive(Debug, Clone, Default)]
pub struct EnableKeyRequest {
    pub key_id: String,
}

/// DisableKey input.
#[derive(Debug, Clone, Default)]
pub struct DisableKeyRequest {
    pub key_id: String,
}

/// ScheduleKeyDeletion input.
#[derive(Debug, Clone, Default)]
pub struct ScheduleKeyDeletionRequest {
    pub key_id: String,
    /// 7-30 days; 30 when not given.
    pub pending_window_in_days: Option<i32>,
}

/// CancelKeyDeletion input.
#[derive(Debug, Clone, Default)]
pub struct CancelKeyDeletionRequest {
    pub key_id: String,
}

/// CancelKeyDeletion output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelKeyDeletionResponse {
    /// The key ARN.
    pub key_id: String,
}

/// UpdateKeyDescription input.
#[derive(Debug, Clone, Default)]
pub struct UpdateKeyDescriptionRequest {
    pub key_id: String,
    pub description: String,
}

/// KeyMetadata, as DescribeKey and CreateKey return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadata {
    pub aws_account_id: String,
    pub key_id: String,
    pub arn: String,
    pub creation_date_ms: i64,
    pub enabled: bool,
    pub description: String,
    pub key_usage: KeyUsage,
    pub key_state: KeyState,
    pub deletion_date_ms: Option<i64>,
    pub origin: Origin,
    pub key_manager: String,
    pub key_spec: KeySpec,
    pub encryption_algorithms: Vec<String>,
    pub signing_algorithms: Vec<String>,
    pub mac_algorithms: Vec<String>,
    /// KEY_AGREEMENT keys: `ECDH`.
    pub key_agreement_algorithms: Vec<String>,
    pub multi_region: bool,
    /// Multi-Region keys: the primary's and the replicas' ARNs and Regions.
    pub multi_region_configuration: Option<super::regions::MultiRegionConfiguration>,
    pub pending_deletion_window_in_days: Option<i32>,
    pub current_key_material_id: String,
    /// Imported key material: when it expires (Unix milliseconds).
    pub valid_to_ms: Option<i64>,
    /// Imported key material: `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE`.
    pub expiration_model: Option<String>,
    /// Keys in a custom key store: the store's id.
    pub custom_key_store_id: Option<String>,
    /// Keys in a custom key store: its cluster.
    pub cloud_hsm_cluster_id: Option<String>,
    /// Keys in an external key store: their external key.
    pub xks_key_configuration: Option<super::external::XksKeyConfiguration>,
}

/// One ListKeys entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListEntry {
    pub key_id: String,
    pub key_arn: String,
}

/// One page of ListKeys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKeysResponse {
    pub keys: Vec<KeyListEntry>,
    pub next_marker: Option<String>,
}

/// ScheduleKeyDeletion output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleKeyDeletionResponse {
    pub key_id: String,
    pub deletion_date_ms: i64,
    pub key_state: KeyState,
    pub pending_window_in_days: i32,
}

request_parameters! {
    CreateKeyRequest {
        description,
        key_usage,
        key_spec,
        customer_master_key_spec,
        origin,
        bypass_policy_lockout_safety_check,
        policy,
        tags,
        multi_region,
        custom_key_store_id,
        xks_key_id,
    };
    DescribeKeyRequest { key_id, grant_tokens };
    ListKeysRequest { page };
    EnableKeyRequest { key_id };
    DisableKeyRequest { key_id };
    ScheduleKeyDeletionRequest { key_id, pending_window_in_days };
    CancelKeyDeletionRequest { key_id };
    UpdateKeyDescriptionRequest { key_id, description };
}

/// CloudTrail records the new key's identity and kind.
impl ResponseElements for CreateKeyResponse {
    fn response_elements(&self) -> Value {
        let m = &self.key_metadata;
        json!({"keyMetadata": {
            "keyId": m.key_id,
            "arn": m.arn,
            "keyState": m.key_state.as_str(),
            "keySpec": m.key_spec.as_str(),
            "keyUsage": m.key_usage.as_str(),
            "origin": m.origin.as_str(),
        }})
    }
}

impl ResponseElements for DescribeKeyResponse {}
impl ResponseElements for ListKeysResponse {}

response_elements! {
    ScheduleKeyDeletionResponse {
        key_id,
        deletion_date = deletion_date,
        key_state,
        pending_window_in_days,
    };
    CancelKeyDeletionResponse { key_id };
}

/// ScheduleKeyDeletion's `DeletionDate`, as CloudTrail writes a date.
fn deletion_date(r: &ScheduleKeyDeletionResponse) -> String {
    crate::time::iso8601(r.deletion_date_ms)
}

/// What CreateKey creates: the key's spec, usage and origin, and the HSM objects behind it.
#[derive(Debug, Clone, Copy)]
struct KeyChoice {
    spec: KeySpec,
    usage: KeyUsage,
    origin: Origin,
    kind: SpecKind,
}

impl KeyChoice {
    /// Reads the spec, usage and origin of a CreateKey request (with their defaults) and
    /// refuses what this build does not create.
    fn of(req: &CreateKeyRequest) -> Result<KeyChoice, KmsError> {
        let spec = match (req.key_spec, req.customer_master_key_spec) {
            (Some(a), Some(b)) if a != b => return Err(KmsError::Validation(
                "KeySpec and CustomerMasterKeySpec must not both be given with different values."
                    .into(),
            )),
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => KeySpec::SymmetricDefault,
        };
        if !KNOWN_KEY_SPECS.contains(&spec) {
            return Err(not_in_enum("keySpec", KNOWN_KEY_SPECS, KeySpec::as_str));
        }
        let usage = req.key_usage.unwrap_or(KeyUsage::EncryptDecrypt);
        if !KNOWN_USAGES.contains(&usage) {
            return Err(not_in_enum("keyUsage", KNOWN_USAGES, KeyUsage::as_str));
        }
        let origin = req.origin.unwrap_or(Origin::AwsKms);
        let Some(kind) = specs::kind(spec) else {
            return Err(KmsError::UnsupportedOperation(format!(
                "KeySpec {spec} is not supported by this p11kms build."
            )));
        };
        if !specs::usages(spec).contains(&usage) {
            return Err(KmsError::Validation(format!(
                "KeyUsage {usage} is not compatible with KeySpec {spec}."
            )));
        }
        // Origin EXTERNAL (BYOK): SYMMETRIC_DEFAULT and HMAC keys, created in PendingImport
        // with no HSM object until ImportKeyMaterial.
        match origin {
            Origin::AwsKms => {}
            Origin::External if spec == KeySpec::SymmetricDefault || spec.is_hmac() => {}
            Origin::External => {
                return Err(KmsError::UnsupportedOperation(format!(
                    "Origin EXTERNAL is not supported for KeySpec {spec} by this p11kms build."
                )))
            }
            Origin::AwsCloudhsm | Origin::ExternalKeyStore if req.custom_key_store_id.is_none() => {
                return Err(KmsError::Validation(format!(
                    "Origin {origin} needs a CustomKeyStoreId."
                )))
            }
            Origin::AwsCloudhsm | Origin::ExternalKeyStore if spec != KeySpec::SymmetricDefault => {
                return Err(KmsError::UnsupportedOperation(format!(
                    "KeySpec {spec} is not supported in a custom key store: only SYMMETRIC_DEFAULT."
                )))
            }
            Origin::AwsCloudhsm => {}
            Origin::ExternalKeyStore if req.xks_key_id.is_none() => {
                return Err(KmsError::Validation(
                    "Origin EXTERNAL_KEY_STORE needs an XksKeyId.".into(),
                ))
            }
            Origin::ExternalKeyStore => {}
        }
        if req.xks_key_id.is_some() && origin != Origin::ExternalKeyStore {
            return Err(KmsError::Validation(
                "XksKeyId is valid only with Origin EXTERNAL_KEY_STORE.".into(),
            ));
        }
        if req.multi_region {
            super::regions::check_multi_region_choice(req, origin, kind)?;
        }
        Ok(KeyChoice {
            spec,
            usage,
            origin,
            kind,
        })
    }
}

/// The 64-hex-character id of one backing-key version (AWS's KeyMaterialId).
pub fn key_material_id(object: ObjectId) -> String {
    crate::encoding::sha256_hex(&object.0)
}

/// The default key policy of kms-spec 3.3 (it lives in [`crate::policy`]).
pub use crate::policy::default_key_policy;

/// A device refusal to create a key pair (for instance a curve the token does not know)
/// is UnsupportedOperationException naming the mechanism and curve; anything else maps as usual.
fn creation_error(spec: KeySpec, kind: SpecKind, e: HsmError) -> KmsError {
    let SpecKind::Pair(pair) = kind else {
        return e.into();
    };
    if e.kind != HsmErrorKind::Other {
        return e.into();
    }
    let what = match pair {
        PairSpec::Rsa(bits) => format!("CKM_RSA_PKCS_KEY_PAIR_GEN with a {bits}-bit modulus"),
        PairSpec::Ec(c) => format!("CKM_EC_KEY_PAIR_GEN on curve {}", c.name()),
        PairSpec::Ed25519 => "CKM_EC_EDWARDS_KEY_PAIR_GEN on edwards25519".to_string(),
    };
    tracing::warn!(spec = spec.as_str(), error = %e, "the HSM refused to generate a key pair");
    KmsError::UnsupportedOperation(format!(
        "The HSM token does not support KeySpec {spec}: {what} was refused ({}).",
        e.rv.as_deref().unwrap_or("no return value")
    ))
}

/// A creation in flight whose row is in `Creating` (see [`Kms::insert_creating`]).
#[must_use = "dropping it hands the key to reconciliation"]
pub(crate) struct Creation<'a> {
    kms: &'a Kms,
    record: Option<KeyRecord>,
}

impl Creation<'_> {
    /// The key is `Enabled` (or its row removed): nothing is left to reconcile.
    pub(crate) fn finished(mut self) {
        self.record = None;
    }
}

impl Drop for Creation<'_> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.kms.strand(record);
        }
    }
}

impl Kms {
    /// KeyMetadata for a cached key.
    pub fn key_metadata(&self, key: &CachedKey) -> KeyMetadata {
        let r = &key.record;
        let mut m = KeyMetadata {
            aws_account_id: r.account.clone(),
            key_id: r.key_id.clone(),
            arn: key.arn.clone(),
            creation_date_ms: r.created_at_ms,
            enabled: r.state == KeyState::Enabled,
            description: r.description.clone(),
            key_usage: r.key_usage,
            key_state: key.state(),
            deletion_date_ms: r.deletion_date_ms,
            origin: r.origin,
            key_manager: self.key_manager(&r.key_id).into(),
            key_spec: r.key_spec,
            encryption_algorithms: specs::encryption_algorithms(r.key_spec, r.key_usage),
            signing_algorithms: specs::signing_algorithms(r.key_spec, r.key_usage),
            mac_algorithms: specs::mac_algorithms(r.key_spec),
            key_agreement_algorithms: specs::key_agreement_algorithms(r.key_spec, r.key_usage),
            multi_region: r.multi_region.is_some(),
            multi_region_configuration: self.multi_region_configuration(key),
            pending_deletion_window_in_days: r.pending_window_days,
            current_key_material_id: if key.versions.is_empty() {
                String::new()
            } else {
                key_material_id(key.current_object())
            },
            valid_to_ms: None,
            expiration_model: None,
            custom_key_store_id: r.custom_key_store_id.clone(),
            cloud_hsm_cluster_id: key
                .store
                .as_ref()
                .filter(|s| !s.is_external())
                .map(|s| s.record().cluster_id),
            xks_key_configuration: r
                .xks_key_id
                .clone()
                .map(|id| super::external::XksKeyConfiguration { id }),
        };
        if r.origin == Origin::External {
            let l = self.lifecycle_of(&r.key_id);
            m.valid_to_ms = l.valid_to_ms;
            m.expiration_model = l.expiration_model;
        }
        m
    }

    /// CreateKey: a new CMK (symmetric, key pair or HMAC) generated inside the HSM, created in
    /// two phases (a `Creating` row, then the HSM object with version 1 and `Enabled`); or,
    /// for origin EXTERNAL, a `PendingImport` key with no HSM object yet.
    pub async fn create_key(
        &self,
        caller: &Caller,
        req: CreateKeyRequest,
    ) -> Result<CreateKeyResponse, KmsError> {
        validate::description(&req.description)?;
        validate::tags(&req.tags)?;
        let choice = KeyChoice::of(&req)?;
        let policy_text = match &req.policy {
            Some(p) => p.clone(),
            None => default_key_policy(&self.settings.partition, &caller.account),
        };
        let compiled = compile_key_policy(&policy_text)?;
        self.authorize_create(caller, &req, &choice)?;
        let custom_key_store_id =
            self.store_for_create(caller, req.custom_key_store_id.as_deref(), choice.origin)?;
        if let (Some(store), Some(xks_key_id)) = (&custom_key_store_id, &req.xks_key_id) {
            self.check_external_key(caller, store, xks_key_id).await?;
        }
        if req.policy.is_some() {
            self.check_policy_principals(&compiled)?;
        }
        let uuid = match req.multi_region {
            true => super::key_id::new_multi_region(),
            false => super::key_id::new_single_region(),
        };
        let record = KeyRecord {
            key_id: crate::core::key_id::render(&uuid),
            account: caller.account.clone(),
            description: req.description,
            key_spec: choice.spec,
            key_usage: choice.usage,
            origin: choice.origin,
            state: KeyState::Creating,
            created_at_ms: self.now_ms(),
            deletion_date_ms: None,
            pending_window_days: None,
            current_version: 1,
            policy: policy_text.into(),
            custom_key_store_id,
            xks_key_id: req.xks_key_id.clone(),
            row_version: 1,
            multi_region: req.multi_region.then(|| MultiRegion {
                primary_region: self.settings.region.clone(),
                replica_regions: Vec::new(),
            }),
        };
        if req.policy.is_some() && !req.bypass_policy_lockout_safety_check {
            self.creation_lockout_check(caller, &record, &compiled)?;
        }
        // The audit trail names the new key among the event's resources, as CloudTrail does.
        let arn = self.key_arn(&record.account, &record.key_id);
        super::record::key(&arn, &record.account);
        let cached = if choice.origin == Origin::External {
            self.create_pending_import(record, req.tags, compiled)
                .await?
        } else {
            let key_id = record.key_id.clone();
            let creation = self.insert_creating(&record, &req.tags).await?;
            let cached = self
                .generate_and_enable(record, choice.kind, req.tags, compiled)
                .await?;
            creation.finished();
            tracing::info!(key_id, "key created");
            cached
        };
        Ok(CreateKeyResponse {
            key_metadata: self.key_metadata(&cached),
        })
    }

    /// The custom key store CreateKey names: one of the caller's, for a key of origin
    /// `AWS_CLOUDHSM`, and `CONNECTED`.
    fn store_for_create(
        &self,
        caller: &Caller,
        id: Option<&str>,
        origin: Origin,
    ) -> Result<Option<String>, KmsError> {
        let Some(id) = id else {
            return Ok(None);
        };
        let store = self.own_store(caller, id)?;
        let needed = match store.is_external() {
            true => Origin::ExternalKeyStore,
            false => Origin::AwsCloudhsm,
        };
        if origin != needed {
            return Err(KmsError::UnsupportedOperation(format!(
                "A key in custom key store {id} needs Origin {needed}, not {origin}."
            )));
        }
        if !store.is_external() {
            self.connected_store(caller, id)?;
        }
        Ok(Some(id.to_string()))
    }

    /// CreateKey's authorization: `kms:CreateKey` with the new key's spec, usage, origin and
    /// tags in the request context, and `kms:TagResource` too when tags are given.
    fn authorize_create(
        &self,
        caller: &Caller,
        req: &CreateKeyRequest,
        choice: &KeyChoice,
    ) -> Result<(), KmsError> {
        let bypass = if req.bypass_policy_lockout_safety_check {
            "true"
        } else {
            "false"
        };
        let authz = AuthzRequest::new("kms:CreateKey", "*")
            .with("kms:KeySpec", CtxValue::one(choice.spec.as_str()))
            .with("kms:KeyUsage", CtxValue::one(choice.usage.as_str()))
            .with("kms:KeyOrigin", CtxValue::one(choice.origin.as_str()))
            .with(
                "kms:MultiRegion",
                CtxValue::one(if req.multi_region { "true" } else { "false" }),
            )
            .with("kms:BypassPolicyLockoutSafetyCheck", CtxValue::one(bypass));
        let authz = match req.multi_region {
            true => authz.with("kms:MultiRegionKeyType", CtxValue::one("PRIMARY")),
            false => authz,
        };
        self.authorize(caller, with_request_tags(authz, &req.tags))?;
        if !req.tags.is_empty() {
            let tag_authz = with_request_tags(AuthzRequest::new("kms:TagResource", "*"), &req.tags);
            self.authorize(caller, tag_authz)?;
        }
        Ok(())
    }

    /// The lockout safety check of a key policy given to CreateKey: the caller must be able
    /// to manage the key it is creating.
    fn creation_lockout_check(
        &self,
        caller: &Caller,
        record: &KeyRecord,
        compiled: &Arc<Policy>,
    ) -> Result<(), KmsError> {
        let prospective =
            self.new_cached(record.clone(), Vec::new(), Vec::new(), compiled.clone())?;
        self.lockout_check(caller, &prospective, compiled)
    }

    /// A key for imported key material: its row in `PendingImport`, and no HSM object until
    /// ImportKeyMaterial.
    async fn create_pending_import(
        &self,
        mut record: KeyRecord,
        tags: Vec<Tag>,
        compiled: Arc<Policy>,
    ) -> Result<Arc<CachedKey>, KmsError> {
        record.state = KeyState::PendingImport;
        super::record::before_change().await?;
        self.store.insert_key(&record, &tags).await?;
        let key_id = record.key_id.clone();
        let cached = self.cache_put(self.new_cached(record, Vec::new(), tags, compiled)?);
        tracing::info!(
            key_id,
            "key created for imported key material (PendingImport)"
        );
        Ok(cached)
    }

    /// The cache entry of a key being created (its versions are `versions`, it has no grants).
    pub(crate) fn new_cached(
        &self,
        record: KeyRecord,
        versions: Vec<u32>,
        tags: Vec<Tag>,
        compiled: Arc<Policy>,
    ) -> Result<CachedKey, KmsError> {
        let uuid = crate::core::key_id::parse(&record.key_id)
            .map_err(|_| KmsError::Internal(format!("key id '{}' is not a UUID", record.key_id)))?;
        Ok(CachedKey {
            arn: self.key_arn(&record.account, &record.key_id),
            uuid: *uuid.as_bytes(),
            versions,
            tags,
            policy: Some(compiled),
            grants: Vec::new(),
            store: self.store_of(&record),
            record,
        })
    }

    /// Phase one of creating a key on the device: its row, in `Creating`. The returned guard
    /// hands the row to reconciliation unless [`Creation::finished`] is called (the creation
    /// failed, or its request was dropped), so no row stays in `Creating` for good.
    pub(crate) async fn insert_creating(
        &self,
        record: &KeyRecord,
        tags: &[Tag],
    ) -> Result<Creation<'_>, KmsError> {
        super::record::before_change().await?;
        self.store.insert_key(record, tags).await?;
        let creation = Creation {
            kms: self,
            record: Some(record.clone()),
        };
        if self.hooks.interrupt_create() == InterruptCreate::AfterMetadataRow {
            return Err(KmsError::Internal(
                "CreateKey interrupted by a test hook after the metadata row".into(),
            ));
        }
        Ok(creation)
    }

    /// The HSM object and phase two (version 1 and `Enabled` in one transaction) of a key
    /// whose `Creating` row exists; on a device failure the row is removed. The one creation
    /// path on the device, for CreateKey and AWS managed keys alike.
    pub(crate) async fn generate_and_enable(
        &self,
        mut record: KeyRecord,
        kind: SpecKind,
        tags: Vec<Tag>,
        compiled: Arc<Policy>,
    ) -> Result<Arc<CachedKey>, KmsError> {
        let key_id = record.key_id.clone();
        let uuid = crate::core::key_id::parse(&key_id)
            .map_err(|_| KmsError::Internal(format!("key id '{key_id}' is not a UUID")))?;
        let object = ObjectId::new(*uuid.as_bytes(), 1);
        let hsm = self.device_of_record(&record)?;
        let generated = self.generate_version(&hsm, &record, kind, object).await;
        let blob = match generated {
            Ok(blob) => blob,
            Err(e) => {
                // Nothing usable exists: remove the row so no partial change remains. If the
                // device created an object anyway, `check` reports it as an orphan.
                if let Err(se) = self.store.delete_key(&key_id).await {
                    tracing::error!(key_id, error = %se, "could not roll back a failed CreateKey row");
                }
                return Err(creation_error(record.key_spec, kind, e));
            }
        };
        if self.hooks.interrupt_create() == InterruptCreate::AfterHsmObject {
            return Err(KmsError::Internal(
                "CreateKey interrupted by a test hook after the HSM object".into(),
            ));
        }
        record.state = KeyState::Enabled;
        let version = KeyVersion {
            key_id: key_id.clone(),
            version: 1,
            created_at_ms: record.created_at_ms,
            wrapped: blob.as_ref().map(super::residency::stored),
        };
        self.store.add_version_and_update(&version, &record).await?;
        record.row_version += 1; // the store raised it (compare-and-set)
        if let Some(blob) = blob {
            self.blobs.put(object, blob);
        }
        Ok(self.cache_put(self.new_cached(record, vec![1], tags, compiled)?))
    }

    /// Makes version `object`'s key material on `hsm`: a token object, or in wrapped
    /// residency ([`Kms::wraps_new_keys`]: the default store's, or a custom key store's
    /// cluster's) a blob wrapped on `hsm` under its token's master key, with a key pair's
    /// public key, which the caller stores with the version.
    async fn generate_version(
        &self,
        hsm: &Hsm,
        record: &KeyRecord,
        kind: SpecKind,
        object: ObjectId,
    ) -> Result<Option<Wrapped>, HsmError> {
        let wrapped = self.wraps_new_keys(record);
        let made = match kind {
            SpecKind::Symmetric if wrapped => {
                Wrapped::secret(hsm.generate_wrapped_aes(object).await?)
            }
            SpecKind::Hmac(a) if wrapped => {
                Wrapped::secret(hsm.generate_wrapped_hmac(object, a).await?)
            }
            SpecKind::Pair(p) if wrapped => {
                let usage = specs::pair_usage(record.key_usage);
                let (blob, spki) = hsm.generate_wrapped_pair(object, p, usage).await?;
                Wrapped::pair(blob, spki)
            }
            // A custom key store's key is labelled with its ARN, as AWS labels the keys it
            // makes in a CloudHSM cluster.
            SpecKind::Symmetric if record.custom_key_store_id.is_some() => {
                let arn = self.key_arn(&record.account, &record.key_id);
                return hsm
                    .generate_labelled_aes_key(object, arn)
                    .await
                    .map(|()| None);
            }
            SpecKind::Symmetric | SpecKind::Hmac(_) if record.multi_region.is_some() => {
                let kind = super::regions::secret_blob_kind(kind);
                return hsm
                    .generate_multi_region_key(object, kind)
                    .await
                    .map(|()| None);
            }
            SpecKind::Symmetric => return hsm.generate_aes_key(object).await.map(|()| None),
            SpecKind::Pair(p) if record.multi_region.is_some() => {
                let usage = specs::pair_usage(record.key_usage);
                return hsm
                    .generate_multi_region_pair(object, p, usage)
                    .await
                    .map(|_| None);
            }
            SpecKind::Pair(p) => {
                let usage = specs::pair_usage(record.key_usage);
                return hsm.generate_key_pair(object, p, usage).await.map(|()| None);
            }
            SpecKind::Hmac(a) => return hsm.generate_hmac_key(object, a).await.map(|()| None),
        };
        Ok(Some(made))
    }

    /// DescribeKey: metadata of a key named by id, ARN, alias name or alias ARN.
    pub async fn describe_key(
        &self,
        caller: &Caller,
        req: DescribeKeyRequest,
    ) -> Result<DescribeKeyResponse, KmsError> {
        self.check_grant_tokens(&req.grant_tokens).await?;
        let resolved = self
            .resolve_or_create_managed(caller, &req.key_id, "kms:DescribeKey", None, false)
            .await?;
        self.authorize_key(caller, "kms:DescribeKey", &resolved, None)?;
        Ok(DescribeKeyResponse {
            key_metadata: self.key_metadata(&resolved.key),
        })
    }

    /// ListKeys: the caller's account's keys, ordered by key id, paginated.
    pub async fn list_keys(
        &self,
        caller: &Caller,
        req: ListKeysRequest,
    ) -> Result<ListKeysResponse, KmsError> {
        let (limit, after) = req.page.start()?;
        self.authorize(caller, AuthzRequest::new("kms:ListKeys", "*"))?;
        let cache = self.cache_read();
        let items = cache
            .keys
            .values()
            .filter(|k| k.record.account == caller.account)
            .map(|k| {
                (
                    k.record.key_id.clone(),
                    KeyListEntry {
                        key_id: k.record.key_id.clone(),
                        key_arn: k.arn.clone(),
                    },
                )
            });
        let (keys, next_marker) = validate::page(items, after.as_deref(), limit);
        Ok(ListKeysResponse { keys, next_marker })
    }

    /// EnableKey.
    pub async fn enable_key(
        &self,
        caller: &Caller,
        req: EnableKeyRequest,
    ) -> Result<Empty, KmsError> {
        self.set_state(caller, &req.key_id, "kms:EnableKey", KeyState::Enabled)
            .await
    }

    /// DisableKey; the key's session copies on the HSM are destroyed.
    pub async fn disable_key(
        &self,
        caller: &Caller,
        req: DisableKeyRequest,
    ) -> Result<Empty, KmsError> {
        self.set_state(caller, &req.key_id, "kms:DisableKey", KeyState::Disabled)
            .await
    }

    /// EnableKey and DisableKey: `action` allowed, the key moves to `target` (`Enabled` or
    /// `Disabled`); nothing is written when it is there already.
    async fn set_state(
        &self,
        caller: &Caller,
        key_id: &str,
        action: &'static str,
        target: KeyState,
    ) -> Result<Empty, KmsError> {
        let updated = self
            .change_key(caller, key_id, move |resolved| async move {
                self.authorize_key(caller, action, &resolved, None)?;
                check_state(&resolved.key, StateClass::EnableDisable)?;
                if resolved.key.record.state == target {
                    return Ok(None);
                }
                let updated = self
                    .update_record(&resolved.key, |r| r.state = target)
                    .await?;
                Ok(Some(updated))
            })
            .await?;
        // After the lock is released: dropping the copies is an HSM job.
        if let Some(updated) = updated.filter(|_| target == KeyState::Disabled) {
            self.drop_session_copies(&updated).await;
        }
        Ok(Empty)
    }

    /// Destroy the HSM's session-object copies of a key that may no longer be used (disabled,
    /// or pending deletion), so its material is left only in the token objects. Best effort:
    /// the state change is already stored, and the state check refuses the key before any HSM
    /// call whether a copy exists or not.
    /// A key of a custom key store that is not connected has no copies: its sessions are
    /// closed.
    async fn drop_session_copies(&self, key: &CachedKey) {
        let Ok(device) = self.device_of(key) else {
            return;
        };
        if let Err(e) = device.drop_session_copies(key.uuid).await {
            let key_id = &key.record.key_id;
            tracing::warn!(key_id, error = %e, "could not destroy the session copies of a key");
        }
        if let Err(e) = device.evict_wrapped(key.uuid).await {
            let key_id = &key.record.key_id;
            tracing::warn!(key_id, error = %e, "could not destroy the unwrapped copies of a key");
        }
    }

    /// ScheduleKeyDeletion: PendingDeletion for 7-30 days (default 30).
    pub async fn schedule_key_deletion(
        &self,
        caller: &Caller,
        req: ScheduleKeyDeletionRequest,
    ) -> Result<ScheduleKeyDeletionResponse, KmsError> {
        let days = req.pending_window_in_days.unwrap_or(30);
        validate::int_range("pendingWindowInDays", days, 7, 30)?;
        let deletion = self.now_ms() + i64::from(days) * 86_400_000;
        let updated = self
            .change_key(caller, &req.key_id, move |resolved| async move {
                self.authorize(
                    caller,
                    AuthzRequest::on_key("kms:ScheduleKeyDeletion", &resolved).with(
                        "kms:ScheduleKeyDeletionPendingWindowInDays",
                        CtxValue::one(days.to_string()),
                    ),
                )?;
                check_state(&resolved.key, StateClass::NotPendingDeletion)?;
                self.check_no_replicas(&resolved.key)?;
                self.update_record(&resolved.key, |r| {
                    r.state = KeyState::PendingDeletion;
                    r.deletion_date_ms = Some(deletion);
                    r.pending_window_days = Some(days);
                })
                .await
            })
            .await?;
        // After the lock is released: dropping the copies is an HSM job.
        self.drop_session_copies(&updated).await;
        tracing::info!(key_id = %updated.record.key_id, days, "key scheduled for deletion");
        Ok(ScheduleKeyDeletionResponse {
            key_id: updated.arn.clone(),
            deletion_date_ms: deletion,
            key_state: KeyState::PendingDeletion,
            pending_window_in_days: days,
        })
    }

    /// CancelKeyDeletion: back to Disabled, as AWS does.
    pub async fn cancel_key_deletion(
        &self,
        caller: &Caller,
        req: CancelKeyDeletionRequest,
    ) -> Result<CancelKeyDeletionResponse, KmsError> {
        let updated = self
            .change_key(caller, &req.key_id, move |resolved| async move {
                self.authorize_key(caller, "kms:CancelKeyDeletion", &resolved, None)?;
                check_state(&resolved.key, StateClass::PendingDeletion)?;
                // Past its date the key is the sweeper's: its material may be going already.
                if resolved
                    .key
                    .record
                    .deletion_date_ms
                    .is_some_and(|d| d <= self.now_ms())
                {
                    return Err(KmsError::InvalidState(format!(
                        "{} is pending deletion and its waiting period has ended.",
                        resolved.key.arn
                    ))
                    .into());
                }
                self.update_record(&resolved.key, |r| {
                    r.state = KeyState::Disabled;
                    r.deletion_date_ms = None;
                    r.pending_window_days = None;
                })
                .await
            })
            .await?;
        Ok(CancelKeyDeletionResponse {
            key_id: updated.arn.clone(),
        })
    }

    /// UpdateKeyDescription.
    pub async fn update_key_description(
        &self,
        caller: &Caller,
        req: UpdateKeyDescriptionRequest,
    ) -> Result<Empty, KmsError> {
        validate::description(&req.description)?;
        let description = &req.description;
        self.change_key(caller, &req.key_id, move |resolved| async move {
            self.authorize_key(caller, "kms:UpdateKeyDescription", &resolved, None)?;
            check_state(&resolved.key, StateClass::NotPendingDeletion)?;
            let description = description.clone();
            self.update_record(&resolved.key, |r| r.description = description)
                .await
        })
        .await?;
        Ok(Empty)
    }

    /// Writes a changed copy of a key's record, compare-and-set on the `row_version` it was
    /// read with, then caches it at the row's next version. Callers hold the key's change lock
    /// (see [`Kms::change_key`], which retries on [`Retry::Stale`]).
    pub(crate) async fn update_record(
        &self,
        key: &CachedKey,
        change: impl FnOnce(&mut KeyRecord),
    ) -> Result<Arc<CachedKey>, Retry> {
        let mut cached = key.clone();
        change(&mut cached.record);
        cached.record.row_version = key.record.row_version;
        if cached.record.policy != key.record.policy {
            cached.policy = Some(compile_key_policy(&cached.record.policy)?);
        }
        super::record::before_change().await?;
        self.store.update_key(&cached.record).await?;
        cached.record.row_version += 1;
        Ok(self.cache_put(cached))
    }
}

/// A KeyMetadata for unit tests: an enabled symmetric key.
#[cfg(test)]
pub(crate) fn sample_metadata() -> KeyMetadata {
    KeyMetadata {
        aws_account_id: "111122223333".into(),
        key_id: "k".into(),
        arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
        creation_date_ms: 1_700_000_000_123,
        enabled: true,
        description: String::new(),
        key_usage: KeyUsage::EncryptDecrypt,
        key_state: KeyState::Enabled,
        deletion_date_ms: None,
        origin: Origin::AwsKms,
        key_manager: "CUSTOMER".into(),
        key_spec: KeySpec::SymmetricDefault,
        encryption_algorithms: vec!["SYMMETRIC_DEFAULT".into()],
        signing_algorithms: vec![],
        mac_algorithms: vec![],
        key_agreement_algorithms: vec![],
        multi_region: false,
        multi_region_configuration: None,
        pending_deletion_window_in_days: None,
        current_key_material_id: "ab".repeat(32),
        valid_to_ms: None,
        expiration_model: None,
        custom_key_store_id: None,
        cloud_hsm_cluster_id: None,
        xks_key_configuration: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::RequestParameters;

    /// CreateKey's parameters are the members sent, in CloudTrail's names, with the AWS
    /// spelling of the enums and tags as `[{tagKey, tagValue}]`.
    #[test]
    fn create_key_parameters_are_the_members_sent() {
        let req = CreateKeyRequest {
            policy: Some("{\"Statement\":[]}".into()),
            description: "payments".into(),
            key_usage: Some(KeyUsage::SignVerify),
            key_spec: Some(KeySpec::EccNistP256),
            origin: Some(Origin::AwsKms),
            bypass_policy_lockout_safety_check: true,
            tags: vec![Tag {
                key: "team".into(),
                value: "blue".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            req.request_parameters(),
            json!({
                "description": "payments",
                "keyUsage": "SIGN_VERIFY",
                "keySpec": "ECC_NIST_P256",
                "origin": "AWS_KMS",
                "bypassPolicyLockoutSafetyCheck": true,
                "policy": "{\"Statement\":[]}",
                "tags": [{"tagKey": "team", "tagValue": "blue"}],
            })
        );
        assert_eq!(CreateKeyRequest::default().request_parameters(), json!({}));
    }

    /// Grant tokens are capabilities: counted, never recorded.
    #[test]
    fn grant_tokens_are_counted_never_recorded() {
        let req = DescribeKeyRequest {
            key_id: "alias/a".into(),
            grant_tokens: vec!["CAPABILITY-TOKEN".into(), "OTHER-TOKEN".into()],
        };
        let p = req.request_parameters();
        assert_eq!(p, json!({"keyId": "alias/a", "grantTokens": 2}));
        assert!(!p.to_string().contains("TOKEN"), "{p}");
        let s = ScheduleKeyDeletionRequest {
            key_id: "k".into(),
            pending_window_in_days: Some(7),
        };
        assert_eq!(
            s.request_parameters(),
            json!({"keyId": "k", "pendingWindowInDays": 7})
        );
        assert_eq!(ListKeysRequest::default().request_parameters(), json!({}));
    }

    /// The elements the trail records of CreateKey, ScheduleKeyDeletion and
    /// CancelKeyDeletion; DescribeKey records none (its answer is the same body as CreateKey's).
    #[test]
    fn response_elements_name_the_key_only() {
        let created = CreateKeyResponse {
            key_metadata: sample_metadata(),
        };
        let e = created.response_elements();
        assert_eq!(
            e,
            json!({"keyMetadata": {
                "keyId": "k",
                "arn": "arn:aws:kms:us-east-1:111122223333:key/k",
                "keyState": "Enabled",
                "keySpec": "SYMMETRIC_DEFAULT",
                "keyUsage": "ENCRYPT_DECRYPT",
                "origin": "AWS_KMS",
            }})
        );
        let described = DescribeKeyResponse {
            key_metadata: sample_metadata(),
        };
        assert_eq!(described.response_elements(), Value::Null);
        let scheduled = ScheduleKeyDeletionResponse {
            key_id: "arn".into(),
            deletion_date_ms: 1_700_000_000_000,
            key_state: KeyState::PendingDeletion,
            pending_window_in_days: 7,
        };
        assert_eq!(
            scheduled.response_elements(),
            json!({
                "keyId": "arn",
                "deletionDate": crate::time::iso8601(1_700_000_000_000),
                "keyState": "PendingDeletion",
                "pendingWindowInDays": 7,
            })
        );
        let cancelled = CancelKeyDeletionResponse {
            key_id: "arn".into(),
        };
        assert_eq!(cancelled.response_elements(), json!({"keyId": "arn"}));
    }

    /// Values the AWS model admits but the engine does not create keep the messages they had
    /// before the values were typed.
    #[test]
    fn refused_choices_keep_their_messages() {
        let refused = |req: CreateKeyRequest| KeyChoice::of(&req).unwrap_err();
        let e = refused(CreateKeyRequest {
            key_spec: Some(KeySpec::MlKem512),
            ..Default::default()
        });
        assert_eq!(e.aws_name(), "ValidationException");
        let old_list = "[\"SYMMETRIC_DEFAULT\", \"RSA_2048\", \"RSA_3072\", \"RSA_4096\", \"ECC_NIST_P256\", \"ECC_NIST_P384\", \"ECC_NIST_P521\", \"ECC_SECG_P256K1\", \"ECC_NIST_EDWARDS25519\", \"HMAC_224\", \"HMAC_256\", \"HMAC_384\", \"HMAC_512\", \"SM2\", \"ML_DSA_44\", \"ML_DSA_65\", \"ML_DSA_87\"]";
        assert_eq!(
            e.message(),
            KmsError::validation(
                "keySpec",
                &format!("Member must satisfy enum value set: {old_list}")
            )
            .message()
        );
        let e = refused(CreateKeyRequest {
            key_usage: Some(KeyUsage::EncapsulateDecapsulate),
            ..Default::default()
        });
        assert!(
            e.message().contains("keyUsage")
                && e.message().contains("[\"ENCRYPT_DECRYPT\", \"SIGN_VERIFY\", \"GENERATE_VERIFY_MAC\", \"KEY_AGREEMENT\"]"),
            "{}",
            e.message()
        );
        let e = refused(CreateKeyRequest {
            key_spec: Some(KeySpec::Rsa2048),
            customer_master_key_spec: Some(KeySpec::Rsa3072),
            ..Default::default()
        });
        assert_eq!(e.aws_name(), "ValidationException");
        let of = |key_spec, origin| CreateKeyRequest {
            key_spec,
            origin,
            ..Default::default()
        };
        let messages = [
            (
                of(Some(KeySpec::Sm2), None),
                "KeySpec SM2 is not supported by this p11kms build.",
            ),
            (
                of(Some(KeySpec::Hmac256), None),
                "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec HMAC_256.",
            ),
            (
                of(Some(KeySpec::Rsa2048), Some(Origin::External)),
                "Origin EXTERNAL is not supported for KeySpec RSA_2048 by this p11kms build.",
            ),
            (
                of(None, Some(Origin::AwsCloudhsm)),
                "Origin AWS_CLOUDHSM needs a CustomKeyStoreId.",
            ),
            (
                CreateKeyRequest {
                    custom_key_store_id: Some("cks-1".into()),
                    ..of(Some(KeySpec::Rsa2048), Some(Origin::AwsCloudhsm))
                },
                "KeySpec RSA_2048 is not supported in a custom key store: only SYMMETRIC_DEFAULT.",
            ),
            (
                of(None, Some(Origin::ExternalKeyStore)),
                "Origin EXTERNAL_KEY_STORE needs a CustomKeyStoreId.",
            ),
            (
                CreateKeyRequest {
                    custom_key_store_id: Some("cks-1".into()),
                    ..of(None, Some(Origin::ExternalKeyStore))
                },
                "Origin EXTERNAL_KEY_STORE needs an XksKeyId.",
            ),
            (
                CreateKeyRequest {
                    xks_key_id: Some("k1".into()),
                    ..of(None, None)
                },
                "XksKeyId is valid only with Origin EXTERNAL_KEY_STORE.",
            ),
        ];
        for (req, want) in messages {
            assert_eq!(refused(req).message(), want);
        }
        let chosen = KeyChoice::of(&CreateKeyRequest {
            key_spec: Some(KeySpec::Hmac256),
            key_usage: Some(KeyUsage::GenerateVerifyMac),
            origin: Some(Origin::External),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(chosen.spec, KeySpec::Hmac256);
        let default = KeyChoice::of(&CreateKeyRequest::default()).unwrap();
        assert_eq!(
            (default.spec, default.usage, default.origin),
            (
                KeySpec::SymmetricDefault,
                KeyUsage::EncryptDecrypt,
                Origin::AwsKms
            )
        );
    }

    #[test]
    fn default_policy_is_the_documented_one() {
        let p = default_key_policy("aws", "111122223333");
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["Id"], "key-default-1");
        assert_eq!(
            v["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::111122223333:root"
        );
        assert_eq!(v["Statement"][0]["Action"], "kms:*");
        assert!(compile_key_policy(&p).is_ok());
    }

    #[test]
    fn policy_document_checks() {
        assert!(matches!(
            compile_key_policy("{"),
            Err(KmsError::MalformedPolicyDocument(_))
        ));
        assert!(matches!(
            compile_key_policy("[]"),
            Err(KmsError::MalformedPolicyDocument(_))
        ));
        assert!(matches!(
            compile_key_policy("{\"Statement\":[]}"),
            Err(KmsError::MalformedPolicyDocument(_))
        ));
        let big = format!("{{\"Statement\":{{}},\"x\":\"{}\"}}", "a".repeat(40_000));
        assert!(matches!(
            compile_key_policy(&big),
            Err(KmsError::LimitExceeded(_))
        ));
    }

    #[test]
    fn a_refused_curve_names_mechanism_and_curve() {
        use crate::hsm::Curve;
        let refused = HsmError {
            kind: HsmErrorKind::Other,
            function: "C_GenerateKeyPair",
            rv: Some("CKR_CURVE_NOT_SUPPORTED (0x140)".into()),
            token: "t".into(),
            detail: None,
        };
        let e = creation_error(
            KeySpec::EccSecgP256k1,
            SpecKind::Pair(PairSpec::Ec(Curve::Secp256k1)),
            refused.clone(),
        );
        assert_eq!(e.aws_name(), "UnsupportedOperationException");
        let m = e.message();
        assert!(
            m.contains("CKM_EC_KEY_PAIR_GEN") && m.contains("secp256k1") && m.contains("0x140"),
            "{m}"
        );
        // A sick device is not a refusal.
        let mut gone = refused;
        gone.kind = HsmErrorKind::Unavailable;
        let e = creation_error(
            KeySpec::EccSecgP256k1,
            SpecKind::Pair(PairSpec::Ec(Curve::Secp256k1)),
            gone,
        );
        assert_eq!(e.aws_name(), "KeyUnavailableException");
    }

    #[test]
    fn material_id_is_64_hex() {
        let id = key_material_id(ObjectId::new([1; 16], 1));
        assert_eq!(id.len(), 64);
        assert_ne!(id, key_material_id(ObjectId::new([1; 16], 2)));
    }
}
