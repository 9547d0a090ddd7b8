//! Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.
//!
//! Every operation here is one HSM job: the IV comes from the device's RNG inside the job, data
//! keys are generated and sealed inside one job, and ReEncrypt's plaintext never leaves the HSM
//! worker. Plaintext and data keys are held in `Zeroizing` buffers.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use zeroize::Zeroizing;

use super::algorithms::{DataKeySpec, EncryptionAlgorithm};
use super::authz::{AuthzRequest, CtxValue};
use super::keys::{key_material_id, ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT};
use super::operation::{redacted_debug, request_parameters, RequestParameters, ResponseElements};
use super::validate;
use super::{check_state, Kms, KmsError, Resolved, StateClass};
use crate::ciphertext::{self, HEADER_LEN};
use crate::hsm::{GcmSealed, ObjectId};
use crate::identity::Caller;

/// Largest plaintext Encrypt accepts.
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest ciphertext blob accepted or produced.
pub const MAX_CIPHERTEXT: usize = 6144;
/// Largest data key / random request.
pub const MAX_DATA_KEY_BYTES: i32 = 1024;

/// Encrypt input.
#[derive(Debug, Default)]
pub struct EncryptRequest {
    pub key_id: String,
    pub plaintext: Zeroizing<Vec<u8>>,
    pub encryption_context: BTreeMap<String, String>,
    pub grant_tokens: Vec<String>,
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// Encrypt output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptResponse {
    pub ciphertext_blob: Vec<u8>,
    /// The key ARN.
    pub key_id: String,
    pub encryption_algorithm: EncryptionAlgorithm,
}

/// Decrypt input.
#[derive(Debug, Default)]
pub struct DecryptRequest {
    pub ciphertext_blob: Vec<u8>,
    pub encryption_context: BTreeMap<String, String>,
    pub grant_tokens: Vec<String>,
    pub key_id: Option<String>,
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// Decrypt output. `Debug` never prints the plaintext.
pub struct DecryptResponse {
    /// The key ARN.
    pub key_id: String,
    pub plaintext: Zeroizing<Vec<u8>>,
    pub encryption_algorithm: EncryptionAlgorithm,
    pub key_material_id: String,
}

redacted_debug! {
    DecryptResponse { key_id, plaintext: redacted, .. };
    GenerateDataKeyResponse { key_id, plaintext: redacted, .. };
    GenerateRandomResponse { plaintext: redacted };
}

/// ReEncrypt input.
#[derive(Debug, Default)]
pub struct ReEncryptRequest {
    pub ciphertext_blob: Vec<u8>,
    pub source_encryption_context: BTreeMap<String, String>,
    pub source_key_id: Option<String>,
    pub destination_key_id: String,
    pub destination_encryption_context: BTreeMap<String, String>,
    pub source_encryption_algorithm: Option<EncryptionAlgorithm>,
    pub destination_encryption_algorithm: Option<EncryptionAlgorithm>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// ReEncrypt output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReEncryptResponse {
    pub ciphertext_blob: Vec<u8>,
    pub source_key_id: String,
    pub key_id: String,
    pub source_encryption_algorithm: EncryptionAlgorithm,
    pub destination_encryption_algorithm: EncryptionAlgorithm,
    pub source_key_material_id: String,
    pub destination_key_material_id: String,
}

/// What GenerateDataKey and GenerateDataKeyWithoutPlaintext both ask: the key, the context
/// and the data key's size.
#[derive(Debug, Default, Clone)]
pub struct DataKeyRequest {
    pub key_id: String,
    pub encryption_context: BTreeMap<String, String>,
    pub number_of_bytes: Option<i32>,
    pub key_spec: Option<DataKeySpec>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// GenerateDataKey input.
#[derive(Debug, Default, Clone)]
pub struct GenerateDataKeyRequest(pub DataKeyRequest);

/// GenerateDataKeyWithoutPlaintext input.
#[derive(Debug, Default, Clone)]
pub struct GenerateDataKeyWithoutPlaintextRequest(pub DataKeyRequest);

/// GenerateDataKey output. `Debug` never prints the plaintext.
pub struct GenerateDataKeyResponse {
    pub ciphertext_blob: Vec<u8>,
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The key ARN.
    pub key_id: String,
    pub key_material_id: String,
}

/// GenerateDataKeyWithoutPlaintext output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateDataKeyWithoutPlaintextResponse {
    pub ciphertext_blob: Vec<u8>,
    /// The key ARN.
    pub key_id: String,
    pub key_material_id: String,
}

/// GenerateRandom input.
#[derive(Debug, Default, Clone)]
pub struct GenerateRandomRequest {
    pub number_of_bytes: Option<i32>,
    pub custom_key_store_id: Option<String>,
}

/// GenerateRandom output. `Debug` never prints the bytes.
pub struct GenerateRandomResponse {
    pub plaintext: Zeroizing<Vec<u8>>,
}

request_parameters! {
    EncryptRequest { key_id, encryption_context, encryption_algorithm, grant_tokens, dry_run };
    DecryptRequest { key_id, encryption_context, encryption_algorithm, grant_tokens, dry_run };
    ReEncryptRequest {
        source_key_id,
        destination_key_id,
        source_encryption_context,
        destination_encryption_context,
        source_encryption_algorithm,
        destination_encryption_algorithm,
        grant_tokens,
        dry_run,
    };
    DataKeyRequest { key_id, encryption_context, key_spec, number_of_bytes, grant_tokens, dry_run };
    GenerateRandomRequest { number_of_bytes, custom_key_store_id };
}

/// `RequestParameters` of requests that wrap the request they share with another operation
/// (`struct Op(pub Shared)`): the shared request's.
macro_rules! wrapped_params {
    ($($t:ty),*) => {$(
        impl RequestParameters for $t {
            fn request_parameters(&self) -> Value {
                self.0.request_parameters()
            }
        }
    )*};
}
pub(super) use wrapped_params;

wrapped_params!(
    GenerateDataKeyRequest,
    GenerateDataKeyWithoutPlaintextRequest
);

impl ResponseElements for EncryptResponse {}
impl ResponseElements for DecryptResponse {}
impl ResponseElements for ReEncryptResponse {}
impl ResponseElements for GenerateDataKeyResponse {}
impl ResponseElements for GenerateDataKeyWithoutPlaintextResponse {}
impl ResponseElements for GenerateRandomResponse {}

/// A symmetric request's algorithm: absent or SYMMETRIC_DEFAULT; another one is
/// InvalidKeyUsageException (the doors have refused names outside the enum).
pub(super) fn check_algorithm(alg: Option<EncryptionAlgorithm>) -> Result<(), KmsError> {
    match alg {
        None | Some(EncryptionAlgorithm::SymmetricDefault) => Ok(()),
        Some(a) => Err(KmsError::InvalidKeyUsage(format!(
            "The encryption algorithm {a} is not valid for a symmetric key."
        ))),
    }
}

pub(super) fn check_symmetric_usage(resolved: &Resolved) -> Result<(), KmsError> {
    let r = &resolved.key.record;
    if r.key_usage != ENCRYPT_DECRYPT || r.key_spec != SYMMETRIC_DEFAULT {
        return Err(KmsError::InvalidKeyUsage(format!(
            "{} key usage is {} and spec {}; this operation needs a symmetric ENCRYPT_DECRYPT key.",
            resolved.key.arn, r.key_usage, r.key_spec
        )));
    }
    Ok(())
}

/// A validated encryption context in its canonical (AAD) form.
pub(super) fn canonical(member: &str, ctx: &BTreeMap<String, String>) -> Result<Vec<u8>, KmsError> {
    validate::encryption_context(member, ctx)?;
    ciphertext::canonical_context(ctx)
        .ok_or_else(|| KmsError::validation(member, "Member values must be shorter than 64 KiB"))
}

/// A closure that builds the AAD once the HSM has chosen the IV (callable again when the HSM
/// layer retries the job on a fresh session).
pub(super) type AadBuilder = Box<dyn Fn(&[u8; 12]) -> Vec<u8> + Send>;

/// The GCM AAD builder of a new ciphertext under `object` with `canonical_ctx`.
pub(super) fn aad_builder(object: ObjectId, canonical_ctx: Vec<u8>) -> AadBuilder {
    Box::new(move |iv: &[u8; 12]| {
        let header = ciphertext::header(&object.key_id(), object.version(), iv);
        ciphertext::aad(&header, &canonical_ctx)
    })
}

/// The ciphertext blob of `sealed` under `object`.
pub(super) fn blob_from(object: ObjectId, sealed: &GcmSealed) -> Vec<u8> {
    let header = ciphertext::header(&object.key_id(), object.version(), &sealed.iv);
    ciphertext::assemble(&header, &sealed.ciphertext_and_tag)
}

fn invalid_ciphertext() -> KmsError {
    KmsError::InvalidCiphertext("The ciphertext is invalid.".into())
}

/// A ciphertext as a request presents it.
pub(super) struct SourceBlob<'a> {
    pub(super) blob: &'a [u8],
    /// The request member holding the context (for validation messages).
    pub(super) ctx_member: &'static str,
    pub(super) ctx: &'a BTreeMap<String, String>,
    /// The KeyId the caller says the blob is under, if any.
    pub(super) expected_key: Option<&'a str>,
}

/// A parsed, located source ciphertext, ready for the HSM.
pub(super) struct OpenedBlob {
    pub(super) resolved: Resolved,
    pub(super) object: ObjectId,
    pub(super) iv: [u8; 12],
    pub(super) ciphertext_and_tag: Vec<u8>,
    pub(super) aad: Vec<u8>,
}

impl Kms {
    /// Encrypt: AES-256-GCM under the key's current version, on the device.
    pub async fn encrypt(
        &self,
        caller: &Caller,
        req: EncryptRequest,
    ) -> Result<EncryptResponse, KmsError> {
        if let Some(h) = req
            .encryption_algorithm
            .and_then(EncryptionAlgorithm::oaep_hash)
        {
            return self.encrypt_asymmetric(caller, req, h).await;
        }
        validate::blob_len("plaintext", req.plaintext.len(), 1, MAX_PLAINTEXT)?;
        self.check_grant_tokens(&req.grant_tokens).await?;
        check_algorithm(req.encryption_algorithm)?;
        let canonical_ctx = canonical("encryptionContext", &req.encryption_context)?;
        let resolved = self
            .sealing_key(
                caller,
                &req.key_id,
                "kms:Encrypt",
                &req.encryption_context,
                req.dry_run,
                [],
            )
            .await?;
        check_symmetric_usage(&resolved)?;
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let sealed = self
            .device_of(&resolved.key)?
            .encrypt_gcm(
                object,
                req.plaintext,
                aad_builder(object, canonical_ctx.clone()),
            )
            .await?;
        let ciphertext_blob = self
            .finish_blob(
                caller,
                &resolved.key,
                "kms:Encrypt",
                object,
                &canonical_ctx,
                sealed,
            )
            .await?;
        Ok(EncryptResponse {
            ciphertext_blob,
            key_id: resolved.key.arn.clone(),
            encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }

    /// The key Encrypt, GenerateDataKey or GenerateDataKeyPair seals under, named by id, ARN
    /// or alias (an AWS managed key's alias creates the key on first use): resolved,
    /// authorized for `action` with the encryption context and the operation's condition
    /// keys, and Enabled.
    pub(super) async fn sealing_key<const N: usize>(
        &self,
        caller: &Caller,
        key_id: &str,
        action: &'static str,
        ctx: &BTreeMap<String, String>,
        dry_run: bool,
        conditions: [(&'static str, CtxValue); N],
    ) -> Result<Resolved, KmsError> {
        let resolved = self
            .resolve_or_create_managed(caller, key_id, action, Some(ctx), dry_run)
            .await?;
        let authz = AuthzRequest::on_key(action, &resolved).context(ctx);
        let authz = conditions.into_iter().fold(authz, |a, (k, v)| a.with(k, v));
        self.authorize(caller, authz)?;
        check_state(&resolved.key, StateClass::Use)?;
        Ok(resolved)
    }

    /// ReEncrypt's destination key, named by id, ARN or alias (an AWS managed key's alias
    /// creates the key on first use); authorized by the caller of this.
    pub(super) async fn re_encrypt_destination(
        &self,
        caller: &Caller,
        req: &ReEncryptRequest,
    ) -> Result<Resolved, KmsError> {
        let ctx = &req.destination_encryption_context;
        self.resolve_or_create_managed(
            caller,
            &req.destination_key_id,
            "kms:ReEncryptTo",
            Some(ctx),
            req.dry_run,
        )
        .await
    }

    /// ReEncrypt's symmetric source ciphertext, opened ([`Kms::open_blob`]) and authorized
    /// for kms:ReEncryptFrom, with kms:ReEncryptOnSameKey against the destination `dest`.
    pub(super) fn open_re_encrypt_source(
        &self,
        caller: &Caller,
        req: &ReEncryptRequest,
        dest: &Resolved,
    ) -> Result<OpenedBlob, KmsError> {
        let same_key = ciphertext::parse(&req.ciphertext_blob)
            .map(|p| p.key_id == dest.key.uuid)
            .unwrap_or(false);
        let src = SourceBlob {
            blob: &req.ciphertext_blob,
            ctx_member: "sourceEncryptionContext",
            ctx: &req.source_encryption_context,
            expected_key: req.source_key_id.as_deref(),
        };
        let same = super::asym::on_same_key(same_key);
        self.open_blob(caller, src, "kms:ReEncryptFrom", Some(same))
    }

    /// Parses a blob, finds its key, checks an optional expected key, authorizes `action`
    /// and checks state. The order is AWS's: parse, look up, KeyId match, authorize, state.
    pub(super) fn open_blob(
        &self,
        caller: &Caller,
        src: SourceBlob<'_>,
        action: &'static str,
        extra: Option<(&'static str, CtxValue)>,
    ) -> Result<OpenedBlob, KmsError> {
        let SourceBlob {
            blob,
            ctx_member,
            ctx,
            expected_key,
        } = src;
        validate::blob_len("ciphertextBlob", blob.len(), 1, MAX_CIPHERTEXT)?;
        let canonical_ctx = canonical(ctx_member, ctx)?;
        let parsed = ciphertext::parse(blob).map_err(|_| invalid_ciphertext())?;
        let Some(key) = self.key_by_uuid(&parsed.key_id) else {
            if self.was_deleted(&parsed.key_id) {
                return Err(KmsError::NotFound(
                    "The key that encrypted this ciphertext has been deleted.".into(),
                ));
            }
            return Err(invalid_ciphertext());
        };
        if let Some(expected) = expected_key.filter(|k| !k.is_empty()) {
            let named = self.resolve(caller, expected, true)?;
            if named.key.uuid != key.uuid {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify the key that encrypted the ciphertext."
                        .into(),
                ));
            }
        }
        let resolved = Resolved { key, alias: None };
        let mut authz = AuthzRequest::on_key(action, &resolved).context(ctx);
        if let Some((k, v)) = extra {
            authz = authz.with(k, v);
        }
        self.authorize(caller, authz)?;
        check_state(&resolved.key, StateClass::Use)?;
        check_symmetric_usage(&resolved)?;
        if !resolved.key.versions.contains(&parsed.key_version) {
            return Err(invalid_ciphertext());
        }
        super::record::key_version(parsed.key_version);
        let header: &[u8; HEADER_LEN] = parsed.header;
        Ok(OpenedBlob {
            object: ObjectId::new(resolved.key.uuid, parsed.key_version),
            iv: parsed.iv,
            ciphertext_and_tag: parsed.ciphertext_and_tag.to_vec(),
            aad: ciphertext::aad(header, &canonical_ctx),
            resolved,
        })
    }

    /// Decrypt: reads the key from the blob; a given KeyId must match it.
    pub async fn decrypt(
        &self,
        caller: &Caller,
        req: DecryptRequest,
    ) -> Result<DecryptResponse, KmsError> {
        if let Some(h) = req
            .encryption_algorithm
            .and_then(EncryptionAlgorithm::oaep_hash)
        {
            return self.decrypt_asymmetric(caller, req, h).await;
        }
        self.check_grant_tokens(&req.grant_tokens).await?;
        check_algorithm(req.encryption_algorithm)?;
        let mut opened = self.open_blob(
            caller,
            SourceBlob {
                blob: &req.ciphertext_blob,
                ctx_member: "encryptionContext",
                ctx: &req.encryption_context,
                expected_key: req.key_id.as_deref(),
            },
            "kms:Decrypt",
            None,
        )?;
        super::end_dry_run(req.dry_run)?;
        self.open_outer(caller, &mut opened, "Decrypt").await?;
        let plaintext = self
            .device_of(&opened.resolved.key)?
            .decrypt_gcm(
                opened.object,
                opened.iv,
                opened.ciphertext_and_tag,
                opened.aad,
            )
            .await?;
        Ok(DecryptResponse {
            key_id: opened.resolved.key.arn.clone(),
            plaintext,
            encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
            key_material_id: key_material_id(opened.object),
        })
    }

    /// ReEncrypt: decrypt and re-encrypt inside one HSM job; the plaintext never leaves it.
    pub async fn re_encrypt(
        &self,
        caller: &Caller,
        req: ReEncryptRequest,
    ) -> Result<ReEncryptResponse, KmsError> {
        let src_hash = req
            .source_encryption_algorithm
            .and_then(EncryptionAlgorithm::oaep_hash);
        let dst_hash = req
            .destination_encryption_algorithm
            .and_then(EncryptionAlgorithm::oaep_hash);
        if src_hash.is_some() || dst_hash.is_some() {
            return self
                .re_encrypt_asymmetric(caller, req, src_hash, dst_hash)
                .await;
        }
        self.check_grant_tokens(&req.grant_tokens).await?;
        check_algorithm(req.source_encryption_algorithm)?;
        check_algorithm(req.destination_encryption_algorithm)?;
        let dest_ctx = canonical(
            "destinationEncryptionContext",
            &req.destination_encryption_context,
        )?;
        let dest = self.re_encrypt_destination(caller, &req).await?;
        let mut source = self.open_re_encrypt_source(caller, &req, &dest)?;
        let (k, v) = super::asym::on_same_key(source.object.key_id() == dest.key.uuid);
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:ReEncryptTo", &dest)
                .context(&req.destination_encryption_context)
                .with(k, v),
        )?;
        check_state(&dest.key, StateClass::Use)?;
        check_symmetric_usage(&dest)?;
        super::end_dry_run(req.dry_run)?;
        self.open_outer(caller, &mut source, "ReEncrypt").await?;
        let dest_object = dest.key.current_object();
        let dest_aad = aad_builder(dest_object, dest_ctx.clone());
        let sealed = self
            .reseal(&mut source, &dest, dest_object, dest_aad)
            .await?;
        let ciphertext_blob = self
            .finish_blob(
                caller,
                &dest.key,
                "kms:ReEncrypt",
                dest_object,
                &dest_ctx,
                sealed,
            )
            .await?;
        Ok(ReEncryptResponse {
            ciphertext_blob,
            source_key_id: source.resolved.key.arn.clone(),
            key_id: dest.key.arn.clone(),
            source_encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
            destination_encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
            source_key_material_id: key_material_id(source.object),
            destination_key_material_id: key_material_id(dest_object),
        })
    }

    /// Opens `source` and seals its plaintext under `dest_object` of `dest`: in one HSM job
    /// when both keys are on one device; between two devices (custom key stores) as a
    /// decryption on one and an encryption on the other, the plaintext passing through this
    /// process in a zeroizing buffer, as a Decrypt followed by an Encrypt would.
    async fn reseal(
        &self,
        source: &mut OpenedBlob,
        dest: &Resolved,
        dest_object: ObjectId,
        dest_aad: AadBuilder,
    ) -> Result<GcmSealed, KmsError> {
        let from = self.device_of(&source.resolved.key)?;
        let to = self.device_of(&dest.key)?;
        let ct = std::mem::take(&mut source.ciphertext_and_tag);
        let aad = std::mem::take(&mut source.aad);
        if Arc::ptr_eq(&from, &to) {
            let sealed = from
                .reencrypt_gcm(source.object, source.iv, ct, aad, dest_object, dest_aad)
                .await?;
            return Ok(sealed);
        }
        let plaintext = from.decrypt_gcm(source.object, source.iv, ct, aad).await?;
        Ok(to.encrypt_gcm(dest_object, plaintext, dest_aad).await?)
    }

    /// GenerateDataKey: a data key, in plaintext and sealed under the KMS key.
    pub async fn generate_data_key(
        &self,
        caller: &Caller,
        req: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyResponse, KmsError> {
        self.data_key(caller, req.0, "kms:GenerateDataKey").await
    }

    /// GenerateDataKeyWithoutPlaintext: a data key sealed under the KMS key only; the
    /// plaintext is zeroized here.
    pub async fn generate_data_key_without_plaintext(
        &self,
        caller: &Caller,
        req: GenerateDataKeyWithoutPlaintextRequest,
    ) -> Result<GenerateDataKeyWithoutPlaintextResponse, KmsError> {
        let k = self
            .data_key(caller, req.0, "kms:GenerateDataKeyWithoutPlaintext")
            .await?;
        Ok(GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: k.ciphertext_blob,
            key_id: k.key_id,
            key_material_id: k.key_material_id,
        })
    }

    /// Both GenerateDataKey operations: `action` is the IAM action checked.
    async fn data_key(
        &self,
        caller: &Caller,
        req: DataKeyRequest,
        action: &'static str,
    ) -> Result<GenerateDataKeyResponse, KmsError> {
        self.check_grant_tokens(&req.grant_tokens).await?;
        let n = data_key_len(req.number_of_bytes, req.key_spec)?;
        let canonical_ctx = canonical("encryptionContext", &req.encryption_context)?;
        let resolved = self
            .sealing_key(
                caller,
                &req.key_id,
                action,
                &req.encryption_context,
                req.dry_run,
                [],
            )
            .await?;
        check_symmetric_usage(&resolved)?;
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let (plaintext, sealed) = self
            .device_of(&resolved.key)?
            .generate_data_key(object, n, aad_builder(object, canonical_ctx.clone()))
            .await?;
        let ciphertext_blob = self
            .finish_blob(
                caller,
                &resolved.key,
                action,
                object,
                &canonical_ctx,
                sealed,
            )
            .await?;
        Ok(GenerateDataKeyResponse {
            ciphertext_blob,
            plaintext,
            key_id: resolved.key.arn.clone(),
            key_material_id: key_material_id(object),
        })
    }

    /// GenerateRandom: bytes from the HSM's RNG.
    pub async fn generate_random(
        &self,
        caller: &Caller,
        req: GenerateRandomRequest,
    ) -> Result<GenerateRandomResponse, KmsError> {
        let Some(n) = req.number_of_bytes else {
            return Err(KmsError::validation(
                "numberOfBytes",
                "Member must not be null",
            ));
        };
        validate::int_range("numberOfBytes", n, 1, MAX_DATA_KEY_BYTES)?;
        self.authorize(caller, AuthzRequest::new("kms:GenerateRandom", "*"))?;
        let device = match req.custom_key_store_id.as_deref() {
            Some(id) => self.connected_store(caller, id)?,
            None => self.hsm.clone(),
        };
        let plaintext = device.random(n as usize).await?;
        Ok(GenerateRandomResponse { plaintext })
    }
}

/// The length of a data key: NumberOfBytes or KeySpec, exactly one of them.
fn data_key_len(
    number_of_bytes: Option<i32>,
    key_spec: Option<DataKeySpec>,
) -> Result<usize, KmsError> {
    match (number_of_bytes, key_spec) {
        (Some(_), Some(_)) => Err(KmsError::Validation(
            "Specify either KeySpec or NumberOfBytes, not both.".into(),
        )),
        (None, None) => Err(KmsError::Validation(
            "Specify either KeySpec or NumberOfBytes.".into(),
        )),
        (Some(n), None) => {
            validate::int_range("numberOfBytes", n, 1, MAX_DATA_KEY_BYTES)?;
            Ok(n as usize)
        }
        (None, Some(spec)) => Ok(spec.bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_never_in_params() {
        let e = EncryptRequest {
            key_id: "alias/a".into(),
            plaintext: Zeroizing::new(b"TOP-SECRET-PLAINTEXT".to_vec()),
            encryption_context: [("Dept".to_string(), "hr".to_string())].into(),
            grant_tokens: vec!["CAPABILITY-TOKEN".into()],
            ..Default::default()
        };
        assert_eq!(
            e.request_parameters(),
            json!({"keyId": "alias/a", "encryptionContext": {"Dept": "hr"}, "grantTokens": 1})
        );
        let d = DecryptRequest {
            ciphertext_blob: b"SECRET-BLOB".to_vec(),
            ..Default::default()
        };
        assert_eq!(d.request_parameters(), json!({}));
        let r = ReEncryptRequest {
            ciphertext_blob: b"SECRET-BLOB".to_vec(),
            destination_key_id: "k2".into(),
            source_encryption_algorithm: Some(EncryptionAlgorithm::RsaesOaepSha1),
            ..Default::default()
        };
        assert_eq!(
            r.request_parameters(),
            json!({"destinationKeyId": "k2", "sourceEncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
        );
        let g = GenerateDataKeyWithoutPlaintextRequest(DataKeyRequest {
            key_id: "k".into(),
            key_spec: Some(DataKeySpec::Aes256),
            ..Default::default()
        });
        assert_eq!(
            g.request_parameters(),
            json!({"keyId": "k", "keySpec": "AES_256"})
        );
        let n = GenerateRandomRequest {
            number_of_bytes: Some(16),
            custom_key_store_id: None,
        };
        assert_eq!(n.request_parameters(), json!({"numberOfBytes": 16}));
    }

    #[test]
    fn dry_run_is_logged_when_set() {
        let d = DecryptRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(d.request_parameters()["dryRun"], json!(true));
        let g = GenerateDataKeyRequest(DataKeyRequest {
            number_of_bytes: Some(32),
            ..Default::default()
        });
        assert_eq!(g.request_parameters(), json!({"numberOfBytes": 32}));
    }

    #[test]
    fn responses_with_plaintext_never_print_it() {
        let out = GenerateDataKeyResponse {
            ciphertext_blob: Vec::new(),
            plaintext: Zeroizing::new(b"DATA-KEY".to_vec()),
            key_id: "k".into(),
            key_material_id: String::new(),
        };
        assert!(!format!("{out:?}").contains("DATA-KEY"));
        assert_eq!(out.response_elements(), Value::Null);
        let r = GenerateRandomResponse {
            plaintext: Zeroizing::new(b"RANDOM".to_vec()),
        };
        assert!(!format!("{r:?}").contains("RANDOM"));
    }

    #[test]
    fn a_data_key_is_sized_by_exactly_one_member() {
        assert_eq!(data_key_len(None, Some(DataKeySpec::Aes128)).unwrap(), 16);
        assert_eq!(data_key_len(Some(7), None).unwrap(), 7);
        assert!(matches!(
            data_key_len(Some(7), Some(DataKeySpec::Aes256)),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            data_key_len(None, None),
            Err(KmsError::Validation(_))
        ));
        assert!(data_key_len(Some(MAX_DATA_KEY_BYTES + 1), None).is_err());
    }

    #[test]
    fn only_symmetric_default_is_symmetric() {
        assert!(check_algorithm(None).is_ok());
        assert!(check_algorithm(Some(EncryptionAlgorithm::SymmetricDefault)).is_ok());
        let Err(KmsError::InvalidKeyUsage(m)) =
            check_algorithm(Some(EncryptionAlgorithm::RsaesOaepSha256))
        else {
            panic!("RSAES on a symmetric key must be InvalidKeyUsage");
        };
        assert_eq!(
            m,
            "The encryption algorithm RSAES_OAEP_SHA_256 is not valid for a symmetric key."
        );
    }
}
