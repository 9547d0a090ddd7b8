//! Import of key material (BYOK): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial, and the expiry sweeps (kms-spec 1.5 and 4.3).
//!
//! - GetParametersForImport generates a fresh RSA wrapping key pair on the HSM per call and
//!   answers its public key with an opaque import token (`0x01 || wrapping key uuid || 32
//!   HSM-random bytes`). Only the token's SHA-256 is stored, with the key, the wrapping key,
//!   the algorithm and the expiry (24 h).
//! - ImportKeyMaterial validates everything and checks the token before the device is
//!   touched, then unwraps on the device ([`crate::hsm::unwrap`]): a session copy first
//!   (length and check value; a re-import must reproduce the check value of the first
//!   import), then the token object. The wrapping key is destroyed once the import is stored.
//!   In wrapped residency (a key of the default store with `[hsm] residency = "wrapped"`,
//!   decided on the key record as creation decides) the checked session copy is wrapped
//!   under the master key on the device instead (no token object), and the blob is stored on
//!   version 1's row in the same transaction as the rest of the import.
//! - Material with `KEY_MATERIAL_EXPIRES` is destroyed when `ValidTo` passes (sweeper, on the
//!   engine's clock), and the key returns to PendingImport; DeleteImportedKeyMaterial does
//!   the same at once. A wrapped key's blob is removed from its row in the same transaction
//!   as the state change, then forgotten and every unwrapped copy destroyed on the device.
//!   Expired import tokens are swept with their wrapping keys.

use std::sync::Arc;

use uuid::Uuid;

use super::authz::{iso8601, AuthzRequest, CtxValue};
use super::change::{Retry, CHANGE_ATTEMPTS};
use super::domain::Origin;
use super::keys::{key_material_id, SYMMETRIC_DEFAULT};
use super::operation::{redacted_debug, request_parameters, response_elements};
use super::residency::{self, Wrapped};
use super::service::{ServiceAction, ServiceEventName};
use super::{validate, CachedKey, Kms, KmsError};
use crate::hsm::unwrap::{
    HmacSpec, ImportJob, ImportOutcome, MaterialCheck, MaterialKind, WrappingAlgorithm,
    WrappingKeyId, WrappingKeyOutcome,
};
use crate::hsm::{HsmErrorKind, ObjectId};
use crate::identity::Caller;
use crate::store::{ImportTokenRecord, ImportedVersion, KeyLifecycle, KeyState, KeyVersion};

/// Import parameters are valid for 24 hours.
pub const PARAMETERS_VALIDITY_MS: i64 = 24 * 3_600_000;
/// `ValidTo` may be at most 365 days ahead.
pub const MAX_VALID_TO_MS: i64 = 365 * 86_400_000;
/// The expiration model with a `ValidTo`.
pub const KEY_MATERIAL_EXPIRES: &str = "KEY_MATERIAL_EXPIRES";
/// The expiration model without one.
pub const KEY_MATERIAL_DOES_NOT_EXPIRE: &str = "KEY_MATERIAL_DOES_NOT_EXPIRE";
const WRAPPING_ALGORITHMS: &[&str] = &[
    "RSAES_PKCS1_V1_5",
    "RSAES_OAEP_SHA_1",
    "RSAES_OAEP_SHA_256",
    "RSA_AES_KEY_WRAP_SHA_1",
    "RSA_AES_KEY_WRAP_SHA_256",
    "SM2PKE",
];
const WRAPPING_KEY_SPECS: &[&str] = &["RSA_2048", "RSA_3072", "RSA_4096", "SM2"];
const IMPORT_TYPES: &[&str] = &["NEW_KEY_MATERIAL", "EXISTING_KEY_MATERIAL"];
const TOKEN_VERSION: u8 = 1;
/// How long an expired import token's row is kept (its wrapping key is destroyed at expiry).
const EXPIRED_TOKEN_RETENTION_MS: i64 = 7 * 86_400_000;

/// GetParametersForImport input.
#[derive(Debug, Clone, Default)]
pub struct GetParametersForImportRequest {
    pub key_id: String,
    pub wrapping_algorithm: String,
    pub wrapping_key_spec: String,
}

// Never the import token, the wrapping public key or the wrapped material.
request_parameters! {
    GetParametersForImportRequest { key_id, wrapping_algorithm, wrapping_key_spec };
    ImportKeyMaterialRequest {
        key_id,
        valid_to = valid_to,
        expiration_model,
        import_type,
        key_material_id,
    };
    DeleteImportedKeyMaterialRequest { key_id, key_material_id };
}

response_elements! {
    GetParametersForImportResponse { key_id, parameters_valid_to = parameters_valid_to };
    KeyMaterialResponse { key_id, key_material_id };
}

/// ImportKeyMaterial's `ValidTo`, as CloudTrail writes a date.
fn valid_to(r: &ImportKeyMaterialRequest) -> Option<String> {
    r.valid_to_ms.map(iso8601)
}

/// GetParametersForImport's `ParametersValidTo`, as CloudTrail writes a date.
fn parameters_valid_to(r: &GetParametersForImportResponse) -> String {
    iso8601(r.parameters_valid_to_ms)
}

/// GetParametersForImport output. The trail records the key and the validity only, never the
/// import token or the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetParametersForImportResponse {
    /// The key ARN.
    pub key_id: String,
    /// The opaque import token (pass it back to ImportKeyMaterial).
    pub import_token: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the wrapping key.
    pub public_key: Vec<u8>,
    pub parameters_valid_to_ms: i64,
}

/// ImportKeyMaterial input. `Debug` leaves out the token and the wrapped material.
#[derive(Clone, Default)]
pub struct ImportKeyMaterialRequest {
    pub key_id: String,
    pub import_token: Vec<u8>,
    pub encrypted_key_material: Vec<u8>,
    pub valid_to_ms: Option<i64>,
    pub expiration_model: Option<String>,
    pub import_type: Option<String>,
    pub key_material_description: Option<String>,
    pub key_material_id: Option<String>,
}

/// DeleteImportedKeyMaterial input.
#[derive(Debug, Clone, Default)]
pub struct DeleteImportedKeyMaterialRequest {
    pub key_id: String,
    /// When given, it must name the key's current material.
    pub key_material_id: Option<String>,
}

redacted_debug! {
    ImportKeyMaterialRequest { key_id, valid_to_ms, expiration_model, import_type, .. };
}

/// ImportKeyMaterial / DeleteImportedKeyMaterial output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialResponse {
    /// The key ARN.
    pub key_id: String,
    pub key_material_id: String,
}

/// What the key's material becomes on the token (class IMP: EXTERNAL origin only).
fn material_kind(key: &CachedKey) -> Result<MaterialKind, KmsError> {
    let r = &key.record;
    if r.origin != Origin::External {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} has origin {}; importing key material needs a key with origin EXTERNAL.",
            key.arn, r.origin
        )));
    }
    if r.key_spec == SYMMETRIC_DEFAULT {
        return Ok(MaterialKind::Aes256);
    }
    HmacSpec::parse(r.key_spec.as_str())
        .map(MaterialKind::Hmac)
        .ok_or_else(|| {
            KmsError::UnsupportedOperation(format!(
                "Importing key material for key spec {} is not supported.",
                r.key_spec
            ))
        })
}

/// Class IMP's states: PendingImport, or Enabled/Disabled for a re-import.
fn check_import_state(key: &CachedKey) -> Result<(), KmsError> {
    let arn = &key.arn;
    match key.state() {
        KeyState::PendingImport | KeyState::Enabled | KeyState::Disabled => Ok(()),
        KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
            "{arn} is pending deletion."
        ))),
        KeyState::Creating => Err(KmsError::InvalidState(format!("{arn} is creating."))),
        KeyState::Unavailable => Err(KmsError::InvalidState(format!("{arn} is unavailable."))),
    }
}

fn token_hash(token: &[u8]) -> String {
    crate::encoding::sha256_hex(token)
}

fn invalid_token() -> KmsError {
    KmsError::InvalidImportToken("The import token is invalid for this KMS key.".into())
}

/// A stored import token that may be used: its hash, algorithm and wrapping key.
struct UsableToken {
    hash: String,
    algorithm: WrappingAlgorithm,
    wrapping: WrappingKeyId,
}

/// What an import made for the key's version 1, for the store to record and for a failed
/// record to undo.
enum Made {
    /// Nothing new: a re-import that confirmed the material still present.
    Nothing,
    /// A token object (token residency).
    Object(ObjectId),
    /// A blob wrapped under the master key (wrapped residency); its unwrapped session copy is
    /// in a worker's cache.
    Blob(ObjectId, Wrapped),
}

/// ImportKeyMaterial's input checks; answers the expiration model.
fn check_import_input(req: &ImportKeyMaterialRequest) -> Result<&'static str, KmsError> {
    validate::blob_len("importToken", req.import_token.len(), 1, 6144)?;
    validate::blob_len(
        "encryptedKeyMaterial",
        req.encrypted_key_material.len(),
        1,
        6144,
    )?;
    if let Some(t) = req.import_type.as_deref() {
        if !IMPORT_TYPES.contains(&t) {
            return Err(KmsError::validation(
                "importType",
                &format!("Member must satisfy enum value set: {IMPORT_TYPES:?}"),
            ));
        }
    }
    if req
        .key_material_description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 256)
    {
        return Err(KmsError::validation(
            "keyMaterialDescription",
            "Member must have length less than or equal to 256",
        ));
    }
    expiration_model(req.expiration_model.as_deref(), req.valid_to_ms)
}

/// The expiration model of an import: KEY_MATERIAL_EXPIRES exactly when ValidTo is given.
fn expiration_model(
    model: Option<&str>,
    valid_to_ms: Option<i64>,
) -> Result<&'static str, KmsError> {
    match (model, valid_to_ms) {
        (Some(KEY_MATERIAL_EXPIRES), Some(_)) | (None, Some(_)) => Ok(KEY_MATERIAL_EXPIRES),
        (Some(KEY_MATERIAL_DOES_NOT_EXPIRE), None) | (None, None) => {
            Ok(KEY_MATERIAL_DOES_NOT_EXPIRE)
        }
        (Some(KEY_MATERIAL_EXPIRES), None) => Err(KmsError::Validation(
            "A ValidTo date is required when ExpirationModel is KEY_MATERIAL_EXPIRES.".into(),
        )),
        (Some(KEY_MATERIAL_DOES_NOT_EXPIRE), Some(_)) => Err(KmsError::Validation(
            "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE."
                .into(),
        )),
        (Some(_), _) => Err(KmsError::validation(
            "expirationModel",
            "Member must satisfy enum value set: [KEY_MATERIAL_EXPIRES, KEY_MATERIAL_DOES_NOT_EXPIRE]",
        )),
    }
}

/// The check value of material imported before (a re-import must bring the same), and the
/// refusal of NEW_KEY_MATERIAL on a key that has material.
fn stored_check(
    l: &KeyLifecycle,
    import_type: Option<&str>,
) -> Result<Option<MaterialCheck>, KmsError> {
    let expected = match &l.material_check {
        Some(b) => Some(MaterialCheck::from_bytes(b).ok_or_else(|| {
            KmsError::Internal("The stored check value of the key material is corrupt.".into())
        })?),
        None => None,
    };
    if expected.is_some() && import_type == Some("NEW_KEY_MATERIAL") {
        return Err(KmsError::UnsupportedOperation(
            "Importing new key material into a key that already has key material (rotation of imported keys) is not supported."
                .into(),
        ));
    }
    Ok(expected)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    Uuid::parse_str(s).ok().map(|u| *u.as_bytes())
}

impl Kms {
    /// GetParametersForImport: a fresh RSA wrapping key pair on the HSM and an import token,
    /// both valid for 24 hours.
    pub async fn get_parameters_for_import(
        &self,
        caller: &Caller,
        req: GetParametersForImportRequest,
    ) -> Result<GetParametersForImportResponse, KmsError> {
        let key_id = req.key_id.as_str();
        let wrapping_algorithm = req.wrapping_algorithm.as_str();
        let wrapping_key_spec = req.wrapping_key_spec.as_str();
        if !WRAPPING_ALGORITHMS.contains(&wrapping_algorithm) {
            return Err(KmsError::validation(
                "wrappingAlgorithm",
                &format!("Member must satisfy enum value set: {WRAPPING_ALGORITHMS:?}"),
            ));
        }
        if !WRAPPING_KEY_SPECS.contains(&wrapping_key_spec) {
            return Err(KmsError::validation(
                "wrappingKeySpec",
                &format!("Member must satisfy enum value set: {WRAPPING_KEY_SPECS:?}"),
            ));
        }
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:GetParametersForImport", &resolved)
                .with("kms:WrappingAlgorithm", CtxValue::one(wrapping_algorithm))
                .with("kms:WrappingKeySpec", CtxValue::one(wrapping_key_spec)),
        )?;
        check_import_state(&resolved.key)?;
        material_kind(&resolved.key)?;
        let Some(algorithm) = WrappingAlgorithm::parse(wrapping_algorithm) else {
            return Err(KmsError::UnsupportedOperation(format!(
                "The wrapping algorithm {wrapping_algorithm} is not supported by this service."
            )));
        };
        let bits = match wrapping_key_spec {
            "RSA_2048" => 2048,
            "RSA_3072" => 3072,
            "RSA_4096" => 4096,
            other => {
                return Err(KmsError::UnsupportedOperation(format!(
                    "The wrapping key spec {other} is not supported by this service."
                )))
            }
        };
        let sha256 = matches!(
            algorithm,
            WrappingAlgorithm::RsaesOaepSha256 | WrappingAlgorithm::RsaAesKeyWrapSha256
        );
        let wrapping = WrappingKeyId(*Uuid::new_v4().as_bytes());
        let mut token = vec![TOKEN_VERSION];
        token.extend_from_slice(&wrapping.0);
        super::record::before_change().await?;
        token.extend_from_slice(&self.hsm.random(32).await?);
        let public_key = match self
            .hsm
            .generate_wrapping_key(wrapping, bits, sha256)
            .await?
        {
            WrappingKeyOutcome::Created(spki) => spki,
            WrappingKeyOutcome::OaepSha256Unsupported => {
                return Err(KmsError::UnsupportedOperation(format!(
                    "The HSM token does not offer CKM_RSA_PKCS_OAEP with SHA-256 (SoftHSM2 2.6 \
                     implements SHA-1 only), so {wrapping_algorithm} cannot be unwrapped on the \
                     device. Use RSAES_OAEP_SHA_1 or RSA_AES_KEY_WRAP_SHA_1."
                )));
            }
        };
        let now = self.now_ms();
        let record = ImportTokenRecord {
            token_sha256: token_hash(&token),
            key_id: resolved.key.record.key_id.clone(),
            wrapping_key_id: Uuid::from_bytes(wrapping.0).hyphenated().to_string(),
            wrapping_algorithm: wrapping_algorithm.to_string(),
            wrapping_key_spec: wrapping_key_spec.to_string(),
            created_at_ms: now,
            expires_at_ms: now + PARAMETERS_VALIDITY_MS,
        };
        if let Err(e) = self.store.insert_import_token(&record).await {
            if let Err(he) = self.hsm.destroy_wrapping_key(wrapping).await {
                tracing::error!(error = %he, "could not destroy the wrapping key of a failed GetParametersForImport");
            }
            return Err(e.into());
        }
        Ok(GetParametersForImportResponse {
            key_id: resolved.key.arn.clone(),
            import_token: token,
            public_key,
            parameters_valid_to_ms: record.expires_at_ms,
        })
    }

    /// ImportKeyMaterial: unwrap on the device; Enabled on success (a re-import keeps the
    /// key's Enabled/Disabled state and must bring the same material).
    pub async fn import_key_material(
        &self,
        caller: &Caller,
        req: ImportKeyMaterialRequest,
    ) -> Result<KeyMaterialResponse, KmsError> {
        let model = check_import_input(&req)?;
        let now = self.now_ms();
        if let Some(v) = req.valid_to_ms {
            if v <= now || v > now + MAX_VALID_TO_MS {
                return Err(KmsError::Validation(
                    "ValidTo must be in the future and at most 365 days from now.".into(),
                ));
            }
        }
        let resolved = self.resolve(caller, &req.key_id, false)?;
        let mut authz = AuthzRequest::on_key("kms:ImportKeyMaterial", &resolved)
            .with("kms:ExpirationModel", CtxValue::one(model));
        if let Some(v) = req.valid_to_ms {
            authz = authz.with("kms:ValidTo", CtxValue::one(iso8601(v)));
        }
        self.authorize(caller, authz)?;
        check_import_state(&resolved.key)?;
        let kind = material_kind(&resolved.key)?;
        // The token: ours, for this key, not expired. Nothing has been created yet.
        let token = self
            .import_token_for(&resolved.key, &req.import_token, now)
            .await?;

        let key_id = resolved.key.record.key_id.clone();
        let _slot = self.claim_material_job(&resolved.key)?;
        // Read and checked under the key's lock; the unwrap on the device runs without it.
        let (key, expected, create_object) = {
            let _guard = self.key_locks.key(&key_id).await;
            let key = self.current_key(&key_id)?;
            check_import_state(&key)?;
            let l = self.lifecycle_of(&key_id);
            let expected = stored_check(&l, req.import_type.as_deref())?;
            super::record::before_change().await?;
            (key, expected, !l.material_present)
        };
        let target = ObjectId::new(key.uuid, 1);
        let wrapped = self.wraps_new_keys(&key.record);
        let job = ImportJob {
            wrapping_key: token.wrapping,
            algorithm: token.algorithm,
            wrapped: req.encrypted_key_material,
            target,
            kind,
            expected,
            create_object,
        };
        let (check, blob) = self.unwrap_material(&key, job, wrapped).await?;
        let made = match blob {
            Some(b) => Made::Blob(target, b),
            None if create_object => Made::Object(target),
            None => Made::Nothing,
        };
        let material = |l: &mut KeyLifecycle| {
            l.material_check = Some(check.to_bytes());
            l.material_present = true;
            l.expiration_model = Some(model.to_string());
            l.valid_to_ms = req.valid_to_ms;
        };
        let cached = self
            .finish_import(&key_id, material, &token.hash, now, made)
            .await?;
        match self.hsm.destroy_wrapping_key(token.wrapping).await {
            Ok(()) => {}
            Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not destroy a used wrapping key; `check` will report it")
            }
        }
        tracing::info!(key_id = %cached.record.key_id, expiration_model = model, "key material imported");
        Ok(KeyMaterialResponse {
            key_id: cached.arn.clone(),
            key_material_id: key_material_id(target),
        })
    }

    /// The stored import token a request's token names: ours, for this key, not expired.
    async fn import_token_for(
        &self,
        key: &CachedKey,
        import_token: &[u8],
        now: i64,
    ) -> Result<UsableToken, KmsError> {
        let hash = token_hash(import_token);
        let token = self
            .store
            .get_import_token(&hash)
            .await?
            .filter(|t| t.key_id == key.record.key_id)
            .ok_or_else(invalid_token)?;
        if token.expires_at_ms <= now {
            return Err(KmsError::ExpiredImportToken(
                "The import token has expired; call GetParametersForImport again.".into(),
            ));
        }
        let algorithm =
            WrappingAlgorithm::parse(&token.wrapping_algorithm).ok_or_else(invalid_token)?;
        let wrapping = WrappingKeyId(parse_uuid(&token.wrapping_key_id).ok_or_else(invalid_token)?);
        Ok(UsableToken {
            hash,
            algorithm,
            wrapping,
        })
    }

    /// Unwraps the material on the device and checks it (length, same as before). `wrapped`:
    /// the new material is wrapped under the master key (the blob comes back) rather than
    /// made a token object.
    async fn unwrap_material(
        &self,
        key: &CachedKey,
        job: ImportJob,
        wrapped: bool,
    ) -> Result<(MaterialCheck, Option<Wrapped>), KmsError> {
        let done = match wrapped {
            true => self.hsm.import_material_wrapped(job).await,
            false => self.hsm.import_material(job).await.map(|o| (o, None)),
        };
        let (outcome, blob) = done.map_err(|e| match e.kind {
            HsmErrorKind::ObjectNotFound => invalid_token(),
            _ => KmsError::from(e),
        })?;
        match outcome {
            ImportOutcome::Imported(check) => Ok((check, blob.map(Wrapped::secret))),
            ImportOutcome::WrongLength(_) => Err(KmsError::Validation(format!(
                "The key material does not have a valid length for key spec {}.",
                key.record.key_spec
            ))),
            ImportOutcome::Mismatch => Err(KmsError::IncorrectKeyMaterial(
                "The key material in the request is different from the key material previously imported into this KMS key."
                    .into(),
            )),
        }
    }

    /// Records an import in one transaction (the key Enabled if it was PendingImport, version
    /// 1 on the first import, its blob in wrapped residency, the lifecycle changed by
    /// `material`, the spent token) and caches the result. What was `made` is undone when the
    /// store fails: the object destroyed, the blob's unwrapped copy evicted.
    async fn finish_import(
        &self,
        key_id: &str,
        material: impl Fn(&mut KeyLifecycle),
        token_hash: &str,
        now: i64,
        made: Made,
    ) -> Result<Arc<CachedKey>, KmsError> {
        let mut outcome = Err(Retry::Stale.into_error());
        for _ in 0..CHANGE_ATTEMPTS {
            let _guard = self.key_locks.key(key_id).await;
            let key = self.current_key(key_id)?;
            match self
                .try_finish_import(&key, &material, token_hash, now, &made)
                .await
            {
                Err(Retry::Stale) => {
                    self.refresh_key(key_id).await?;
                }
                other => {
                    outcome = other.map_err(Retry::into_error);
                    break;
                }
            }
        }
        if outcome.is_err() {
            // After the lock is released: the destruction is an HSM job.
            self.undo_import(made).await;
        }
        outcome
    }

    /// Destroys what a failed import made on the device: the token object, or the unwrapped
    /// copy of a blob that was never stored.
    async fn undo_import(&self, made: Made) {
        let undone = match made {
            Made::Nothing => return,
            Made::Object(target) => self.hsm.destroy(target).await,
            Made::Blob(target, _) => self.hsm.evict_wrapped(target.key_id()).await.map(|_| ()),
        };
        if let Err(he) = undone {
            tracing::error!(error = %he, "could not destroy the material of a failed import");
        }
    }

    /// One attempt at recording an import on `key` as cached now (compare-and-set).
    async fn try_finish_import(
        &self,
        key: &CachedKey,
        material: &impl Fn(&mut KeyLifecycle),
        token_hash: &str,
        now: i64,
        made: &Made,
    ) -> Result<Arc<CachedKey>, Retry> {
        let mut record = key.record.clone();
        if record.state == KeyState::PendingImport {
            record.state = KeyState::Enabled;
        }
        let first = !key.versions.contains(&1);
        let blob = match made {
            Made::Blob(_, w) => Some(residency::stored(w)),
            _ => None,
        };
        let version = KeyVersion {
            key_id: record.key_id.clone(),
            version: 1,
            created_at_ms: now,
            wrapped: blob.clone(),
        };
        let row = match (first, &blob) {
            (true, _) => ImportedVersion::New(&version),
            (false, Some(blob)) => ImportedVersion::Blob { version: 1, blob },
            (false, None) => ImportedVersion::Unchanged,
        };
        let mut lifecycle = self.lifecycle_of(&record.key_id);
        material(&mut lifecycle);
        self.store
            .finish_import(&record, row, &lifecycle, token_hash)
            .await?;
        // Before the key is cached Enabled: it serves at once.
        if let Made::Blob(id, w) = made {
            self.blobs.put(*id, w.clone());
        }
        let mut cached = key.clone();
        record.row_version += 1;
        cached.record = record;
        if first {
            cached.versions = vec![1];
        }
        self.lifecycle_cache_put(lifecycle);
        Ok(self.cache_put(cached))
    }

    /// DeleteImportedKeyMaterial: destroys the material; the key returns to PendingImport.
    /// No effect on a key in PendingImport.
    pub async fn delete_imported_key_material(
        &self,
        caller: &Caller,
        req: DeleteImportedKeyMaterialRequest,
    ) -> Result<KeyMaterialResponse, KmsError> {
        let key_id = req.key_id.as_str();
        let key_material_id_param = req.key_material_id.as_deref();
        if let Some(m) = key_material_id_param {
            if m.len() != 64 {
                return Err(KmsError::validation(
                    "keyMaterialId",
                    "Member must have length 64",
                ));
            }
        }
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize_key(caller, "kms:DeleteImportedKeyMaterial", &resolved, None)?;
        check_import_state(&resolved.key)?;
        material_kind(&resolved.key)?;
        let _slot = self.claim_material_job(&resolved.key)?;
        let key = {
            let _guard = self.key_locks.key(&resolved.key.record.key_id).await;
            self.current_key(&resolved.key.record.key_id)?
        };
        check_import_state(&key)?;
        let material = key_material_id(ObjectId::new(key.uuid, 1));
        if key_material_id_param.is_some_and(|m| m != material) {
            return Err(KmsError::NotFound(format!(
                "Key material {} of {} does not exist.",
                key_material_id_param.unwrap_or_default(),
                key.arn
            )));
        }
        if key.record.state != KeyState::PendingImport {
            self.drop_material(&key).await?;
        } else if self.wraps_new_keys(&key.record) {
            // Already deleted: a retry after a failed eviction finishes it.
            self.forget_material_blobs(&key).await?;
        }
        Ok(KeyMaterialResponse {
            key_id: key.arn.clone(),
            key_material_id: material,
        })
    }

    /// Destroys a key's imported material and records PendingImport compare-and-set (no lock
    /// held across HSM work; callers hold the key's material claim). The check value stays: a
    /// re-import must bring the same material.
    /// - A token object is destroyed first, then the record written. If the record keeps
    ///   losing to other writers, the material is gone and the error says so; a retry
    ///   completes the record.
    /// - A wrapped version's blob leaves its row in the record's own transaction (so a failed
    ///   record changes nothing); then this node forgets it, so no worker can unwrap it
    ///   again, and every unwrapped copy is destroyed, all before the call answers. Other
    ///   nodes do the same when they follow the change ([`Kms::reload_key`]).
    async fn drop_material(&self, key: &CachedKey) -> Result<(), KmsError> {
        super::record::before_change().await?;
        let wrapped = key
            .versions
            .iter()
            .any(|&v| self.blobs.get(ObjectId::new(key.uuid, v)).is_some());
        if !wrapped {
            self.destroy_material_objects(key).await?;
        }
        self.record_drop(&key.record.key_id).await?;
        if wrapped {
            self.forget_material_blobs(key).await?;
        }
        Ok(())
    }

    /// Destroys the token objects of a key's imported material; absent ones are fine.
    async fn destroy_material_objects(&self, key: &CachedKey) -> Result<(), KmsError> {
        for &v in &key.versions {
            match self.hsm.destroy(ObjectId::new(key.uuid, v)).await {
                Ok(()) => {}
                Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Forgets the blobs of a key whose imported material was deleted (no worker unwraps it
    /// again), then destroys every worker's unwrapped copy on the device.
    async fn forget_material_blobs(&self, key: &CachedKey) -> Result<(), KmsError> {
        for &v in &key.versions {
            self.blobs.remove(ObjectId::new(key.uuid, v));
        }
        self.device_of(key)?.evict_wrapped(key.uuid).await?;
        Ok(())
    }

    /// Records PendingImport after imported material was deleted, compare-and-set, retried
    /// on fresh state.
    async fn record_drop(&self, key_id: &str) -> Result<(), KmsError> {
        for _ in 0..CHANGE_ATTEMPTS {
            let _guard = self.key_locks.key(key_id).await;
            let key = self.current_key(key_id)?;
            match self.record_material_dropped(&key).await {
                Err(Retry::Stale) => {
                    self.refresh_key(key_id).await?;
                }
                other => return other.map_err(Retry::into_error),
            }
        }
        Err(Retry::Stale.into_error())
    }

    /// One attempt at recording PendingImport after the material is destroyed (with every
    /// wrapped blob of the key removed from its row).
    async fn record_material_dropped(&self, key: &CachedKey) -> Result<(), Retry> {
        let mut l = self.lifecycle_of(&key.record.key_id);
        l.material_present = false;
        l.valid_to_ms = None;
        l.expiration_model = None;
        let mut cached = key.clone();
        cached.record.state = KeyState::PendingImport;
        self.store
            .drop_imported_material(&cached.record, &l)
            .await?;
        cached.record.row_version += 1;
        self.lifecycle_cache_put(l);
        self.cache_put(cached);
        tracing::info!(key_id = %key.record.key_id, "imported key material deleted; key is pending import");
        Ok(())
    }

    /// Claims the right to change `key`'s material (ImportKeyMaterial,
    /// DeleteImportedKeyMaterial, the expiry sweep): one such job per key at a time in this
    /// process, without holding a lock across its HSM work. ConflictException while another
    /// runs.
    fn claim_material_job(&self, key: &CachedKey) -> Result<MaterialSlot<'_>, KmsError> {
        let key_id = key.record.key_id.clone();
        let fresh = self
            .material_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.clone());
        if !fresh {
            return Err(KmsError::Conflict(format!(
                "The key material of {} is being changed by another request.",
                key.arn
            )));
        }
        Ok(MaterialSlot { kms: self, key_id })
    }

    /// Destroys imported material whose ValidTo has passed (key -> PendingImport), and
    /// expired import tokens with their wrapping keys. Reports each expiry
    /// (`DeleteExpiredKeyMaterial`, with its outcome) to the service sink and returns what it
    /// did; a key that failed is retried by the next sweep.
    pub async fn sweep_imports(&self) -> Result<Vec<ServiceAction>, KmsError> {
        let now = self.now_ms();
        let expires = |l: &crate::store::KeyLifecycle| {
            l.material_present && l.valid_to_ms.is_some_and(|v| v <= now)
        };
        let due = self.lifecycle_keys_where(expires);
        let mut done = Vec::new();
        for key_id in due {
            if !self.service_ready() {
                tracing::warn!("import expiry sweep paused: the audit trail cannot be written");
                break;
            }
            let Some(key) = crate::core::key_id::parse(&key_id)
                .ok()
                .map(|u| *u.as_bytes())
                .and_then(|u| self.key_by_uuid(&u))
            else {
                continue;
            };
            let Ok(_slot) = self.claim_material_job(&key) else {
                continue;
            };
            // Re-check under the key's lock: a re-import or deletion may have won the race.
            let key = {
                let _guard = self.key_locks.key(&key_id).await;
                let Ok(key) = self.current_key(&key_id) else {
                    continue;
                };
                if !expires(&self.lifecycle_of(&key_id)) {
                    continue;
                }
                key
            };
            let result = match self
                .service_intent(ServiceEventName::DeleteExpiredKeyMaterial, &key)
                .await
            {
                Ok(()) => self.drop_material(&key).await,
                Err(e) => Err(e),
            };
            match &result {
                Ok(()) => tracing::info!(key_id, "imported key material expired"),
                Err(e) => {
                    tracing::error!(key_id, error = %e, "expiring imported key material failed; will retry")
                }
            }
            let action = ServiceAction::on(
                ServiceEventName::DeleteExpiredKeyMaterial,
                &key,
                &result,
                self.now_ms(),
            );
            self.report_service(&action).await;
            done.push(action);
        }
        // Expired tokens: the wrapping key goes at once; the row stays for a while so that a
        // late ImportKeyMaterial hears ExpiredImportTokenException, not InvalidImportToken.
        for t in self.store.list_import_tokens().await? {
            if t.expires_at_ms > now {
                continue;
            }
            let fresh = self
                .swept_wrapping_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t.token_sha256.clone());
            if fresh {
                if let Some(w) = parse_uuid(&t.wrapping_key_id) {
                    match self.hsm.destroy_wrapping_key(WrappingKeyId(w)).await {
                        Ok(()) => {}
                        Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {}
                        Err(e) => {
                            self.swept_wrapping_keys
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&t.token_sha256);
                            return Err(e.into());
                        }
                    }
                }
            }
            if t.expires_at_ms + EXPIRED_TOKEN_RETENTION_MS <= now {
                self.store.delete_import_token(&t.token_sha256).await?;
                self.swept_wrapping_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&t.token_sha256);
            }
        }
        Ok(done)
    }

    /// Destroys the wrapping keys of a key's outstanding import tokens (before the key itself
    /// is destroyed; the token rows go with the key).
    pub(crate) async fn destroy_wrapping_keys_of(&self, key_id: &str) -> Result<(), KmsError> {
        for t in self.store.list_import_tokens().await? {
            if t.key_id != key_id {
                continue;
            }
            if let Some(w) = parse_uuid(&t.wrapping_key_id) {
                match self.hsm.destroy_wrapping_key(WrappingKeyId(w)).await {
                    Ok(()) => {}
                    Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Wrapping-key uuids of every outstanding import token (for reconciliation).
    pub(crate) async fn live_wrapping_keys(&self) -> Result<Vec<[u8; 16]>, KmsError> {
        let now = self.now_ms();
        Ok(self
            .store
            .list_import_tokens()
            .await?
            .iter()
            .filter(|t| t.expires_at_ms > now)
            .filter_map(|t| parse_uuid(&t.wrapping_key_id))
            .collect())
    }
}

/// Removes a key from the set of material jobs under way when dropped.
struct MaterialSlot<'a> {
    kms: &'a Kms,
    key_id: String,
}

impl Drop for MaterialSlot<'_> {
    fn drop(&mut self) {
        self.kms
            .material_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::{RequestParameters, ResponseElements};

    #[test]
    fn import_secrets_are_never_in_params() {
        let r = ImportKeyMaterialRequest {
            key_id: "k".into(),
            import_token: b"IMPORT-TOKEN-BYTES".to_vec(),
            encrypted_key_material: b"WRAPPED-MATERIAL".to_vec(),
            expiration_model: Some("KEY_MATERIAL_DOES_NOT_EXPIRE".into()),
            ..Default::default()
        };
        let p = r.request_parameters().to_string();
        assert!(!p.contains("IMPORT-TOKEN") && !p.contains("WRAPPED"), "{p}");
        assert!(!p.contains("SU1QT1JU") && !p.contains("V1JBUFBF"), "{p}");
        assert!(p.contains("KEY_MATERIAL_DOES_NOT_EXPIRE"), "{p}");
        let out = GetParametersForImportResponse {
            key_id: "k".into(),
            import_token: b"IMPORT-TOKEN-BYTES".to_vec(),
            public_key: b"PUBLIC".to_vec(),
            parameters_valid_to_ms: 0,
        };
        let e = out.response_elements().to_string();
        assert!(!e.contains("IMPORT") && !e.contains("PUBLIC"), "{e}");
        assert!(e.contains("1970-01-01"), "{e}");
    }
}
