//! Key lifecycle: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription.

use std::sync::Arc;

use uuid::Uuid;

use super::authz::{AuthzRequest, CtxValue};
use super::policies::compile_key_policy;
use super::specs::{self, SpecKind};
use super::validate;
use super::{check_state, CachedKey, InterruptCreate, Kms, KmsError, StateClass};
use crate::hsm::{HsmError, HsmErrorKind, ObjectId, PairSpec};
use crate::identity::Caller;
use crate::store::{KeyRecord, KeyState, KeyVersion, Tag};

/// The default key spec (AES-256-GCM). The other specs this build creates are listed in
/// [`specs`].
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";
/// The usage of symmetric keys.
pub const ENCRYPT_DECRYPT: &str = "ENCRYPT_DECRYPT";

const KNOWN_KEY_SPECS: &[&str] = &[
    "SYMMETRIC_DEFAULT",
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "ECC_NIST_EDWARDS25519",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
];
const KNOWN_USAGES: &[&str] = &[
    "ENCRYPT_DECRYPT",
    "SIGN_VERIFY",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
];
const KNOWN_ORIGINS: &[&str] = &["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"];

/// CreateKey input.
#[derive(Debug, Clone, Default)]
pub struct CreateKeyRequest {
    pub policy: Option<String>,
    pub description: String,
    pub key_usage: Option<String>,
    pub key_spec: Option<String>,
    pub customer_master_key_spec: Option<String>,
    pub origin: Option<String>,
    pub bypass_policy_lockout_safety_check: bool,
    pub tags: Vec<Tag>,
    pub multi_region: bool,
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
    pub key_usage: String,
    pub key_state: String,
    pub deletion_date_ms: Option<i64>,
    pub origin: String,
    pub key_manager: String,
    pub key_spec: String,
    pub encryption_algorithms: Vec<String>,
    pub signing_algorithms: Vec<String>,
    pub mac_algorithms: Vec<String>,
    /// KEY_AGREEMENT keys: `ECDH`.
    pub key_agreement_algorithms: Vec<String>,
    pub multi_region: bool,
    pub pending_deletion_window_in_days: Option<i32>,
    pub current_key_material_id: String,
    /// Imported key material: when it expires (Unix milliseconds).
    pub valid_to_ms: Option<i64>,
    /// Imported key material: `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE`.
    pub expiration_model: Option<String>,
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
    pub key_state: String,
    pub pending_window_in_days: i32,
}

/// The 64-hex-character id of one backing-key version (AWS's KeyMaterialId).
pub fn key_material_id(object: ObjectId) -> String {
    crate::encoding::sha256_hex(&object.0)
}

/// The default key policy of kms-spec 3.3 (it lives in [`crate::policy`]).
pub use crate::policy::default_key_policy;

/// A device refusal to create a key pair (for instance a curve the token does not know)
/// is UnsupportedOperationException naming the mechanism and curve; anything else maps as usual.
fn creation_error(spec: &str, kind: SpecKind, e: HsmError) -> KmsError {
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
    tracing::warn!(spec, error = %e, "the HSM refused to generate a key pair");
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
            key_usage: r.key_usage.clone(),
            key_state: r.state.as_str().to_string(),
            deletion_date_ms: r.deletion_date_ms,
            origin: r.origin.clone(),
            key_manager: self.key_manager(&r.key_id).into(),
            key_spec: r.key_spec.clone(),
            encryption_algorithms: specs::encryption_algorithms(&r.key_spec, &r.key_usage),
            signing_algorithms: specs::signing_algorithms(&r.key_spec, &r.key_usage),
            mac_algorithms: specs::mac_algorithms(&r.key_spec),
            key_agreement_algorithms: specs::key_agreement_algorithms(&r.key_spec, &r.key_usage),
            multi_region: false,
            pending_deletion_window_in_days: r.pending_window_days,
            current_key_material_id: if key.versions.is_empty() {
                String::new()
            } else {
                key_material_id(key.current_object())
            },
            valid_to_ms: None,
            expiration_model: None,
        };
        if r.origin == "EXTERNAL" {
            let l = self.lifecycle_of(&r.key_id);
            m.valid_to_ms = l.valid_to_ms;
            m.expiration_model = l.expiration_model;
        }
        m
    }

    /// CreateKey: a new CMK (symmetric, key pair or HMAC) generated inside the HSM, created in
    /// two phases.
    pub async fn create_key(
        &self,
        caller: &Caller,
        req: CreateKeyRequest,
    ) -> Result<KeyMetadata, KmsError> {
        validate::description(&req.description)?;
        validate::tags(&req.tags)?;
        let spec = match (&req.key_spec, &req.customer_master_key_spec) {
            (Some(a), Some(b)) if a != b => return Err(KmsError::Validation(
                "KeySpec and CustomerMasterKeySpec must not both be given with different values."
                    .into(),
            )),
            (Some(s), _) | (None, Some(s)) => s.as_str(),
            (None, None) => SYMMETRIC_DEFAULT,
        };
        if !KNOWN_KEY_SPECS.contains(&spec) {
            return Err(KmsError::validation(
                "keySpec",
                &format!("Member must satisfy enum value set: {KNOWN_KEY_SPECS:?}"),
            ));
        }
        let usage = req.key_usage.as_deref().unwrap_or(ENCRYPT_DECRYPT);
        if !KNOWN_USAGES.contains(&usage) {
            return Err(KmsError::validation(
                "keyUsage",
                &format!("Member must satisfy enum value set: {KNOWN_USAGES:?}"),
            ));
        }
        let origin = req.origin.as_deref().unwrap_or("AWS_KMS");
        if !KNOWN_ORIGINS.contains(&origin) {
            return Err(KmsError::validation(
                "origin",
                &format!("Member must satisfy enum value set: {KNOWN_ORIGINS:?}"),
            ));
        }
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
        let external = origin == "EXTERNAL";
        if external && spec != SYMMETRIC_DEFAULT && !spec.starts_with("HMAC_") {
            return Err(KmsError::UnsupportedOperation(format!(
                "Origin EXTERNAL is not supported for KeySpec {spec} by this p11kms build."
            )));
        }
        if origin != "AWS_KMS" && !external {
            return Err(KmsError::UnsupportedOperation(format!(
                "Origin {origin} is not supported by this p11kms build yet."
            )));
        }
        if req.multi_region {
            return Err(KmsError::UnsupportedOperation(
                "Multi-Region keys are not supported.".into(),
            ));
        }
        let policy_text = match &req.policy {
            Some(p) => p.clone(),
            None => default_key_policy(&self.settings.partition, &caller.account),
        };
        let compiled = compile_key_policy(&policy_text)?;
        let tag_keys: Vec<String> = req.tags.iter().map(|t| t.key.clone()).collect();
        let mut authz = AuthzRequest::new("kms:CreateKey", "*")
            .with("kms:KeySpec", CtxValue::one(spec))
            .with("kms:KeyUsage", CtxValue::one(usage))
            .with("kms:KeyOrigin", CtxValue::one(origin))
            .with("kms:MultiRegion", CtxValue::one("false"))
            .with(
                "kms:BypassPolicyLockoutSafetyCheck",
                CtxValue::one(if req.bypass_policy_lockout_safety_check {
                    "true"
                } else {
                    "false"
                }),
            );
        if !req.tags.is_empty() {
            authz = authz.with("aws:TagKeys", CtxValue::Many(tag_keys.clone()));
        }
        for t in &req.tags {
            authz = authz.with(
                format!("aws:RequestTag/{}", t.key),
                CtxValue::one(t.value.as_str()),
            );
        }
        self.authorize(caller, authz)?;
        if !req.tags.is_empty() {
            let mut tag_authz = AuthzRequest::new("kms:TagResource", "*")
                .with("aws:TagKeys", CtxValue::Many(tag_keys));
            for t in &req.tags {
                tag_authz = tag_authz.with(
                    format!("aws:RequestTag/{}", t.key),
                    CtxValue::one(t.value.as_str()),
                );
            }
            self.authorize(caller, tag_authz)?;
        }
        if req.policy.is_some() {
            self.check_policy_principals(&compiled)?;
        }

        let uuid = Uuid::new_v4();
        let key_id = uuid.hyphenated().to_string();
        let now = self.now_ms();
        let mut record = KeyRecord {
            key_id: key_id.clone(),
            account: caller.account.clone(),
            description: req.description,
            key_spec: spec.to_string(),
            key_usage: usage.to_string(),
            origin: origin.to_string(),
            state: KeyState::Creating,
            created_at_ms: now,
            deletion_date_ms: None,
            pending_window_days: None,
            current_version: 1,
            policy: policy_text,
        };
        if req.policy.is_some() && !req.bypass_policy_lockout_safety_check {
            let prospective = CachedKey {
                arn: self.key_arn(&record.account, &key_id),
                uuid: *uuid.as_bytes(),
                versions: Vec::new(),
                tags: Vec::new(),
                policy: Some(compiled.clone()),
                grants: Vec::new(),
                record: record.clone(),
            };
            self.lockout_check(caller, &prospective, &compiled)?;
        }
        if external {
            // No HSM object: the key waits for ImportKeyMaterial.
            record.state = KeyState::PendingImport;
            super::record::before_change().await?;
            self.store.insert_key(&record, &req.tags).await?;
            let cached = self.cache_put(CachedKey {
                arn: self.key_arn(&record.account, &key_id),
                uuid: *uuid.as_bytes(),
                versions: Vec::new(),
                tags: req.tags,
                policy: Some(compiled),
                grants: Vec::new(),
                record,
            });
            tracing::info!(
                key_id,
                "key created for imported key material (PendingImport)"
            );
            return Ok(self.key_metadata(&cached));
        }
        let creation = self.insert_creating(&record, &req.tags).await?;
        let cached = self
            .generate_and_enable(record, kind, req.tags, compiled)
            .await?;
        creation.finished();
        tracing::info!(key_id, "key created");
        Ok(self.key_metadata(&cached))
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
        compiled: Arc<crate::policy::Policy>,
    ) -> Result<Arc<CachedKey>, KmsError> {
        let key_id = record.key_id.clone();
        let uuid = Uuid::parse_str(&key_id)
            .map_err(|_| KmsError::Internal(format!("key id '{key_id}' is not a UUID")))?;
        let object = ObjectId::new(*uuid.as_bytes(), 1);
        let generated = match kind {
            SpecKind::Symmetric => self.hsm.generate_aes_key(object).await,
            SpecKind::Pair(p) => {
                self.hsm
                    .generate_key_pair(object, p, specs::pair_usage(&record.key_usage))
                    .await
            }
            SpecKind::Hmac(a) => self.hsm.generate_hmac_key(object, a).await,
        };
        if let Err(e) = generated {
            // Nothing usable exists: remove the row so no partial change remains. If the
            // device created an object anyway, `check` reports it as an orphan.
            if let Err(se) = self.store.delete_key(&key_id).await {
                tracing::error!(key_id, error = %se, "could not roll back a failed CreateKey row");
            }
            return Err(creation_error(&record.key_spec, kind, e));
        }
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
        };
        self.store.add_version_and_update(&version, &record).await?;
        Ok(self.cache_put(CachedKey {
            arn: self.key_arn(&record.account, &key_id),
            uuid: *uuid.as_bytes(),
            versions: vec![1],
            tags,
            policy: Some(compiled),
            grants: Vec::new(),
            record,
        }))
    }

    /// DescribeKey: metadata of a key named by id, ARN, alias name or alias ARN.
    pub async fn describe_key(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_tokens: &[String],
    ) -> Result<KeyMetadata, KmsError> {
        self.check_grant_tokens(grant_tokens)?;
        let resolved = self
            .resolve_or_create_managed(caller, key_id, "kms:DescribeKey", None, false)
            .await?;
        self.authorize_key(caller, "kms:DescribeKey", &resolved, None)?;
        Ok(self.key_metadata(&resolved.key))
    }

    /// ListKeys: the caller's account's keys, ordered by key id, paginated.
    pub async fn list_keys(
        &self,
        caller: &Caller,
        limit: Option<i32>,
        marker: &str,
    ) -> Result<ListKeysResponse, KmsError> {
        let limit = validate::limit(limit)?;
        let after = validate::decode_marker(marker)?;
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
    pub async fn enable_key(&self, caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.set_enabled(caller, key_id, true).await
    }

    /// DisableKey.
    pub async fn disable_key(&self, caller: &Caller, key_id: &str) -> Result<(), KmsError> {
        self.set_enabled(caller, key_id, false).await
    }

    async fn set_enabled(
        &self,
        caller: &Caller,
        key_id: &str,
        enable: bool,
    ) -> Result<(), KmsError> {
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        let action = if enable {
            "kms:EnableKey"
        } else {
            "kms:DisableKey"
        };
        self.authorize_key(caller, action, &resolved, None)?;
        check_state(&resolved.key, StateClass::EnableDisable)?;
        let target = if enable {
            KeyState::Enabled
        } else {
            KeyState::Disabled
        };
        if resolved.key.record.state == target {
            return Ok(());
        }
        let updated = self
            .update_record(&resolved.key, |r| r.state = target)
            .await?;
        if !enable {
            self.drop_session_copies(&updated.record.key_id).await;
        }
        Ok(())
    }

    /// Destroy the HSM's session-object copies of a key that may no longer be used (disabled,
    /// or pending deletion), so its material is left only in the token objects. Best effort:
    /// the state change is already stored, and the state check refuses the key before any HSM
    /// call whether a copy exists or not.
    async fn drop_session_copies(&self, key_id: &str) {
        let Ok(uuid) = Uuid::parse_str(key_id) else {
            return;
        };
        if let Err(e) = self.hsm.drop_session_copies(*uuid.as_bytes()).await {
            tracing::warn!(key_id, error = %e, "could not destroy the session copies of a key");
        }
    }

    /// ScheduleKeyDeletion: PendingDeletion for 7-30 days (default 30).
    pub async fn schedule_key_deletion(
        &self,
        caller: &Caller,
        key_id: &str,
        pending_window_in_days: Option<i32>,
    ) -> Result<ScheduleKeyDeletionResponse, KmsError> {
        let days = pending_window_in_days.unwrap_or(30);
        validate::int_range("pendingWindowInDays", days, 7, 30)?;
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:ScheduleKeyDeletion", &resolved).with(
                "kms:ScheduleKeyDeletionPendingWindowInDays",
                CtxValue::one(days.to_string()),
            ),
        )?;
        check_state(&resolved.key, StateClass::NotPendingDeletion)?;
        let deletion = self.now_ms() + i64::from(days) * 86_400_000;
        let updated = self
            .update_record(&resolved.key, |r| {
                r.state = KeyState::PendingDeletion;
                r.deletion_date_ms = Some(deletion);
                r.pending_window_days = Some(days);
            })
            .await?;
        self.drop_session_copies(&updated.record.key_id).await;
        tracing::info!(key_id = %updated.record.key_id, days, "key scheduled for deletion");
        Ok(ScheduleKeyDeletionResponse {
            key_id: updated.arn.clone(),
            deletion_date_ms: deletion,
            key_state: KeyState::PendingDeletion.as_str().into(),
            pending_window_in_days: days,
        })
    }

    /// CancelKeyDeletion: back to Disabled, as AWS does.
    pub async fn cancel_key_deletion(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<String, KmsError> {
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize_key(caller, "kms:CancelKeyDeletion", &resolved, None)?;
        check_state(&resolved.key, StateClass::PendingDeletion)?;
        let updated = self
            .update_record(&resolved.key, |r| {
                r.state = KeyState::Disabled;
                r.deletion_date_ms = None;
                r.pending_window_days = None;
            })
            .await?;
        Ok(updated.arn.clone())
    }

    /// UpdateKeyDescription.
    pub async fn update_key_description(
        &self,
        caller: &Caller,
        key_id: &str,
        description: &str,
    ) -> Result<(), KmsError> {
        validate::description(description)?;
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize_key(caller, "kms:UpdateKeyDescription", &resolved, None)?;
        check_state(&resolved.key, StateClass::NotPendingDeletion)?;
        self.update_record(&resolved.key, |r| r.description = description.to_string())
            .await?;
        Ok(())
    }

    /// Writes a changed copy of a key's record, then updates the cache. Callers hold the
    /// mutation lock.
    pub(crate) async fn update_record(
        &self,
        key: &CachedKey,
        change: impl FnOnce(&mut KeyRecord),
    ) -> Result<Arc<CachedKey>, KmsError> {
        let mut cached = key.clone();
        change(&mut cached.record);
        if cached.record.policy != key.record.policy {
            cached.policy = Some(compile_key_policy(&cached.record.policy)?);
        }
        super::record::before_change().await?;
        self.store.update_key(&cached.record).await?;
        Ok(self.cache_put(cached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "ECC_SECG_P256K1",
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
            "ECC_SECG_P256K1",
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
