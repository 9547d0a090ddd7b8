//! Asymmetric and HMAC operations: Sign, Verify, GetPublicKey, RSA-OAEP Encrypt/Decrypt,
//! GenerateMac, VerifyMac, GenerateDataKeyPair(WithoutPlaintext).
//!
//! Same path as every operation: validate the input, resolve the key, authorize (with the
//! operation's condition keys), check the state and the key's spec and usage, then one HSM job.
//! Messages are hashed here (sha2); the device signs the digest, verifies with the public
//! object, decrypts with the private object and computes and compares MACs.

use std::collections::BTreeMap;

use serde_json::Value;
use zeroize::Zeroizing;

use super::algorithms::{
    EncryptionAlgorithm, Hash, KeyAgreementAlgorithm, MacAlgorithm, MessageType, SigningAlgorithm,
};
use super::authz::{AuthzRequest, CtxValue};
use super::crypto::wrapped_params;
use super::crypto::{
    aad_builder, blob_from, canonical, check_algorithm, check_symmetric_usage, DecryptRequest,
    DecryptResponse, EncryptRequest, EncryptResponse, ReEncryptRequest, ReEncryptResponse,
    MAX_CIPHERTEXT,
};
use super::keys::key_material_id;
use super::operation::{redacted_debug, request_parameters, RequestParameters, ResponseElements};
use super::specs::{self, SpecKind, ENCRYPT_DECRYPT, KEY_AGREEMENT};
use super::validate;
use super::{check_state, Kms, KmsError, Resolved, StateClass};
use crate::ciphertext;
use crate::hsm::{HsmErrorKind, ObjectId, PairSpec, ShaAlg};
use crate::identity::Caller;

/// Largest Sign/Verify/GenerateMac message.
pub const MAX_MESSAGE: usize = 4096;
/// Largest signature or MAC accepted.
pub const MAX_SIGNATURE: usize = 6144;

/// Sign input.
#[derive(Default)]
pub struct SignRequest {
    pub key_id: String,
    pub message: Zeroizing<Vec<u8>>,
    pub message_type: Option<MessageType>,
    pub signing_algorithm: Option<SigningAlgorithm>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// Sign output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignResponse {
    /// The key ARN.
    pub key_id: String,
    pub signature: Vec<u8>,
    pub signing_algorithm: SigningAlgorithm,
}

/// Verify input.
#[derive(Default)]
pub struct VerifyRequest {
    pub key_id: String,
    pub message: Zeroizing<Vec<u8>>,
    pub message_type: Option<MessageType>,
    pub signature: Vec<u8>,
    pub signing_algorithm: Option<SigningAlgorithm>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// Verify output (an invalid signature is KMSInvalidSignatureException, never `false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyResponse {
    /// The key ARN.
    pub key_id: String,
    pub signature_valid: bool,
    pub signing_algorithm: SigningAlgorithm,
}

/// GetPublicKey input.
#[derive(Debug, Default, Clone)]
pub struct GetPublicKeyRequest {
    pub key_id: String,
    pub grant_tokens: Vec<String>,
}

/// GetPublicKey output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetPublicKeyResponse {
    /// The key ARN.
    pub key_id: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    pub key_spec: String,
    pub key_usage: String,
    pub encryption_algorithms: &'static [EncryptionAlgorithm],
    pub signing_algorithms: &'static [SigningAlgorithm],
    pub key_agreement_algorithms: &'static [KeyAgreementAlgorithm],
}

/// DeriveSharedSecret input.
#[derive(Debug, Default)]
pub struct DeriveSharedSecretRequest {
    pub key_id: String,
    pub key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
    /// The peer's DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// DeriveSharedSecret output.
pub struct DeriveSharedSecretResponse {
    /// The key ARN.
    pub key_id: String,
    /// The raw ECDH shared secret.
    pub shared_secret: Zeroizing<Vec<u8>>,
    pub key_agreement_algorithm: KeyAgreementAlgorithm,
    pub key_origin: String,
}

/// GenerateMac input.
#[derive(Default)]
pub struct GenerateMacRequest {
    pub key_id: String,
    pub message: Zeroizing<Vec<u8>>,
    pub mac_algorithm: Option<MacAlgorithm>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// GenerateMac output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateMacResponse {
    pub mac: Vec<u8>,
    pub mac_algorithm: MacAlgorithm,
    /// The key ARN.
    pub key_id: String,
}

/// VerifyMac input.
#[derive(Default)]
pub struct VerifyMacRequest {
    pub key_id: String,
    pub message: Zeroizing<Vec<u8>>,
    pub mac_algorithm: Option<MacAlgorithm>,
    /// The MAC to check.
    pub mac: Vec<u8>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// VerifyMac output (an invalid MAC is KMSInvalidMacException, never `false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyMacResponse {
    /// The key ARN.
    pub key_id: String,
    pub mac_valid: bool,
    pub mac_algorithm: MacAlgorithm,
}

redacted_debug! {
    SignRequest { key_id, message: redacted, .. };
    VerifyRequest { key_id, message: redacted, .. };
    GenerateMacRequest { key_id, message: redacted, .. };
    VerifyMacRequest { key_id, message: redacted, .. };
    DeriveSharedSecretResponse { key_id, shared_secret: redacted, key_agreement_algorithm };
    GenerateDataKeyPairResponse { key_id, key_pair_spec, private_key_plaintext: redacted, .. };
}

/// What GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext both ask.
#[derive(Debug, Default, Clone)]
pub struct DataKeyPairRequest {
    pub key_id: String,
    pub encryption_context: BTreeMap<String, String>,
    pub key_pair_spec: Option<String>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// GenerateDataKeyPair input.
#[derive(Debug, Default, Clone)]
pub struct GenerateDataKeyPairRequest(pub DataKeyPairRequest);

/// GenerateDataKeyPairWithoutPlaintext input.
#[derive(Debug, Default, Clone)]
pub struct GenerateDataKeyPairWithoutPlaintextRequest(pub DataKeyPairRequest);

/// GenerateDataKeyPair output. `Debug` never prints the private key.
pub struct GenerateDataKeyPairResponse {
    pub private_key_ciphertext_blob: Vec<u8>,
    /// PKCS#8 DER.
    pub private_key_plaintext: Zeroizing<Vec<u8>>,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// The key ARN.
    pub key_id: String,
    pub key_pair_spec: String,
    pub key_material_id: String,
}

/// GenerateDataKeyPairWithoutPlaintext output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateDataKeyPairWithoutPlaintextResponse {
    pub private_key_ciphertext_blob: Vec<u8>,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// The key ARN.
    pub key_id: String,
    pub key_pair_spec: String,
    pub key_material_id: String,
}

// Never the message, the signature, the MAC or the peer's public key (not secret, but large).
request_parameters! {
    SignRequest { key_id, message_type, signing_algorithm, grant_tokens, dry_run };
    VerifyRequest { key_id, message_type, signing_algorithm, grant_tokens, dry_run };
    GetPublicKeyRequest { key_id, grant_tokens };
    DeriveSharedSecretRequest { key_id, key_agreement_algorithm, grant_tokens, dry_run };
    GenerateMacRequest { key_id, mac_algorithm, grant_tokens, dry_run };
    VerifyMacRequest { key_id, mac_algorithm, grant_tokens, dry_run };
    DataKeyPairRequest { key_id, encryption_context, key_pair_spec, grant_tokens, dry_run };
}

wrapped_params!(
    GenerateDataKeyPairRequest,
    GenerateDataKeyPairWithoutPlaintextRequest
);

impl ResponseElements for SignResponse {}
impl ResponseElements for VerifyResponse {}
impl ResponseElements for GetPublicKeyResponse {}
impl ResponseElements for DeriveSharedSecretResponse {}
impl ResponseElements for GenerateMacResponse {}
impl ResponseElements for VerifyMacResponse {}
impl ResponseElements for GenerateDataKeyPairResponse {}
impl ResponseElements for GenerateDataKeyPairWithoutPlaintextResponse {}

/// A KeyId an asymmetric operation needs, or ValidationException with `message`.
fn required_key<'a>(v: Option<&'a str>, message: &str) -> Result<&'a str, KmsError> {
    v.filter(|k| !k.is_empty())
        .ok_or_else(|| KmsError::Validation(message.into()))
}

fn required<'a>(member: &str, v: Option<&'a str>) -> Result<&'a str, KmsError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(KmsError::validation(member, "Member must not be null")),
    }
}

/// Input checks of Sign and Verify that need no key: message length, algorithm and message
/// type.
fn check_sign_input(
    message: &[u8],
    message_type: Option<MessageType>,
    algorithm: Option<SigningAlgorithm>,
) -> Result<(SigningAlgorithm, MessageType), KmsError> {
    validate::blob_len("message", message.len(), 1, MAX_MESSAGE)?;
    let Some(algorithm) = algorithm else {
        return Err(KmsError::validation(
            "signingAlgorithm",
            "Member must not be null",
        ));
    };
    let message_type = message_type.unwrap_or(MessageType::Raw);
    if message_type == MessageType::ExternalMu {
        return Err(KmsError::Validation(
            "MessageType EXTERNAL_MU is only valid for ML-DSA keys.".into(),
        ));
    }
    Ok((algorithm, message_type))
}

/// The bytes the device signs: the message itself for pure Ed25519, a DIGEST as given
/// (checked against the algorithm's digest length), else the daemon-computed digest.
fn to_be_signed(
    scheme: crate::hsm::SignScheme,
    hash: Hash,
    algorithm: SigningAlgorithm,
    message: &[u8],
    message_type: MessageType,
) -> Result<Vec<u8>, KmsError> {
    let is_digest = message_type == MessageType::Digest;
    if scheme == crate::hsm::SignScheme::Ed25519 {
        // Pure Ed25519 signs the message itself (it hashes internally with SHA-512).
        if is_digest {
            return Err(KmsError::Validation(format!(
                "{algorithm} signs RAW messages only; use MessageType RAW."
            )));
        }
        return Ok(message.to_vec());
    }
    if !is_digest {
        return Ok(hash.digest(message));
    }
    if message.len() != hash.digest_len() {
        return Err(KmsError::Validation(format!(
            "Digest is invalid length for algorithm {algorithm}: {} bytes, expected {}.",
            message.len(),
            hash.digest_len()
        )));
    }
    Ok(message.to_vec())
}

/// A Sign or Verify request's members that the shared preparation reads.
struct SignatureInput<'a> {
    action: &'static str,
    key_id: &'a str,
    message: &'a [u8],
    message_type: Option<MessageType>,
    algorithm: Option<SigningAlgorithm>,
    grant_tokens: &'a [String],
}

/// Sign and Verify name the message, the key and the algorithm alike: one reading of both
/// (`Request: "action"`, one line each).
macro_rules! signature_input {
    ($($req:ty: $action:literal),* $(,)?) => {$(
        impl<'a> From<&'a $req> for SignatureInput<'a> {
            fn from(req: &'a $req) -> Self {
                SignatureInput {
                    action: $action,
                    key_id: &req.key_id,
                    message: &req.message,
                    message_type: req.message_type,
                    algorithm: req.signing_algorithm,
                    grant_tokens: &req.grant_tokens,
                }
            }
        }
    )*};
}

signature_input!(SignRequest: "kms:Sign", VerifyRequest: "kms:Verify");

/// What Sign and Verify hand to the device.
struct PreparedSignature {
    resolved: Resolved,
    scheme: crate::hsm::SignScheme,
    digest: Vec<u8>,
    algorithm: SigningAlgorithm,
}

/// Input checks of GenerateMac and VerifyMac that need no key: the message, the MAC to
/// check (VerifyMac) and the algorithm.
fn check_mac_input(
    message: &[u8],
    mac: Option<&[u8]>,
    algorithm: Option<MacAlgorithm>,
) -> Result<MacAlgorithm, KmsError> {
    validate::blob_len("message", message.len(), 1, MAX_MESSAGE)?;
    if let Some(mac) = mac {
        validate::blob_len("mac", mac.len(), 1, MAX_SIGNATURE)?;
    }
    algorithm.ok_or_else(|| KmsError::validation("macAlgorithm", "Member must not be null"))
}

/// The source of an asymmetric ReEncrypt: located and authorized, not yet decrypted.
enum ReSource {
    Rsa(Resolved, ObjectId, ShaAlg),
    Gcm(super::crypto::OpenedBlob),
}

impl ReSource {
    /// The source key's ARN and object.
    fn key(&self) -> (String, ObjectId) {
        match self {
            ReSource::Rsa(r, o, _) => (r.key.arn.clone(), *o),
            ReSource::Gcm(b) => (b.resolved.key.arn.clone(), b.object),
        }
    }
}

/// The destination of an asymmetric ReEncrypt: an RSA key (its OAEP hash and size) or a
/// symmetric key (the canonical context of the new ciphertext).
enum ReTarget {
    Rsa { hash: ShaAlg, bits: u32 },
    Gcm(Vec<u8>),
}

/// The `kms:ReEncryptOnSameKey` condition key.
pub(super) fn on_same_key(same: bool) -> (&'static str, CtxValue) {
    (
        "kms:ReEncryptOnSameKey",
        CtxValue::one(if same { "true" } else { "false" }),
    )
}

fn pair_of(resolved: &Resolved) -> Option<PairSpec> {
    match specs::kind(resolved.key.record.key_spec) {
        Some(SpecKind::Pair(p)) => Some(p),
        _ => None,
    }
}

fn no_context(member: &str, ctx: &BTreeMap<String, String>) -> Result<(), KmsError> {
    if ctx.is_empty() {
        Ok(())
    } else {
        Err(KmsError::Validation(format!(
            "{member} is not supported for asymmetric keys."
        )))
    }
}

impl Kms {
    /// The key an asymmetric or HMAC operation uses, named by id, ARN or alias: resolved,
    /// authorized for `action` with the operation's condition keys, and Enabled.
    fn key_in_use<const N: usize>(
        &self,
        caller: &Caller,
        key_id: &str,
        action: &'static str,
        conditions: [(&'static str, CtxValue); N],
    ) -> Result<Resolved, KmsError> {
        let resolved = self.resolve(caller, key_id, true)?;
        let authz = AuthzRequest::on_key(action, &resolved);
        let authz = conditions.into_iter().fold(authz, |a, (k, v)| a.with(k, v));
        self.authorize(caller, authz)?;
        check_state(&resolved.key, StateClass::Use)?;
        Ok(resolved)
    }

    /// Resolves and authorizes a Sign or Verify; returns the key, the scheme and the digest.
    async fn prepare_signature(
        &self,
        caller: &Caller,
        input: SignatureInput<'_>,
    ) -> Result<PreparedSignature, KmsError> {
        let (algorithm, message_type) =
            check_sign_input(input.message, input.message_type, input.algorithm)?;
        self.check_grant_tokens(input.grant_tokens).await?;
        let conditions = [
            ("kms:SigningAlgorithm", CtxValue::one(algorithm.as_str())),
            ("kms:MessageType", CtxValue::one(message_type.as_str())),
        ];
        let resolved = self.key_in_use(caller, input.key_id, input.action, conditions)?;
        let r = &resolved.key.record;
        let (scheme, hash) = specs::signing_scheme(r.key_spec, r.key_usage, algorithm)?;
        let digest = to_be_signed(scheme, hash, algorithm, input.message, message_type)?;
        super::record::key_version(resolved.key.record.current_version);
        Ok(PreparedSignature {
            resolved,
            scheme,
            digest,
            algorithm,
        })
    }

    /// Sign: the device signs the daemon-computed digest with the private key.
    pub async fn sign(&self, caller: &Caller, req: SignRequest) -> Result<SignResponse, KmsError> {
        let p = self.prepare_signature(caller, (&req).into()).await?;
        super::end_dry_run(req.dry_run)?;
        let signature = self
            .hsm
            .sign(p.resolved.key.current_object(), p.scheme, p.digest)
            .await?;
        Ok(SignResponse {
            key_id: p.resolved.key.arn.clone(),
            signature,
            signing_algorithm: p.algorithm,
        })
    }

    /// Verify: `C_Verify` with the public object; a bad signature is
    /// KMSInvalidSignatureException.
    pub async fn verify(
        &self,
        caller: &Caller,
        req: VerifyRequest,
    ) -> Result<VerifyResponse, KmsError> {
        validate::blob_len("signature", req.signature.len(), 1, MAX_SIGNATURE)?;
        let p = self.prepare_signature(caller, (&req).into()).await?;
        // A dry run never verifies: the device is not asked.
        super::end_dry_run(req.dry_run)?;
        let object = p.resolved.key.current_object();
        let valid = self
            .hsm
            .verify(object, p.scheme, p.digest, req.signature)
            .await?;
        if !valid {
            return Err(KmsError::InvalidSignature(
                "The signature is not valid for this message, key and algorithm.".into(),
            ));
        }
        Ok(VerifyResponse {
            key_id: p.resolved.key.arn.clone(),
            signature_valid: true,
            signing_algorithm: p.algorithm,
        })
    }

    /// GetPublicKey: the DER SubjectPublicKeyInfo built from the device's public object, or a
    /// wrapped pair's stored one.
    pub async fn get_public_key(
        &self,
        caller: &Caller,
        req: GetPublicKeyRequest,
    ) -> Result<GetPublicKeyResponse, KmsError> {
        self.check_grant_tokens(&req.grant_tokens).await?;
        let resolved = self.key_in_use(caller, &req.key_id, "kms:GetPublicKey", [])?;
        let Some(pair) = pair_of(&resolved) else {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a {} key; only asymmetric keys have a public key.",
                resolved.key.arn, resolved.key.record.key_spec
            )));
        };
        let object = resolved.key.current_object();
        // A wrapped pair's public half is stored with its blob, not on the device.
        let public_key = match self.blobs.pair_public_key(object) {
            Some(spki) => spki.to_vec(),
            None => self.hsm.public_key(object, pair).await?,
        };
        let r = &resolved.key.record;
        Ok(GetPublicKeyResponse {
            key_id: resolved.key.arn.clone(),
            public_key,
            key_spec: r.key_spec.to_string(),
            key_usage: r.key_usage.to_string(),
            encryption_algorithms: specs::encryption_algorithms_of(r.key_spec, r.key_usage),
            signing_algorithms: specs::signing_algorithms_of(r.key_spec, r.key_usage),
            key_agreement_algorithms: specs::key_agreement_algorithms_of(r.key_spec, r.key_usage),
        })
    }

    /// DeriveSharedSecret: ECDH on the device between the key's private half and the peer's
    /// public key (a DER SubjectPublicKeyInfo on the same curve). The raw shared secret is
    /// returned (AWS's answer without a Recipient); the private key never leaves the device.
    pub async fn derive_shared_secret(
        &self,
        caller: &Caller,
        req: DeriveSharedSecretRequest,
    ) -> Result<DeriveSharedSecretResponse, KmsError> {
        let Some(algorithm) = req.key_agreement_algorithm else {
            return Err(KmsError::validation(
                "keyAgreementAlgorithm",
                "Member must satisfy enum value set: [ECDH]",
            ));
        };
        validate::blob_len("publicKey", req.public_key.len(), 1, 8192)?;
        self.check_grant_tokens(&req.grant_tokens).await?;
        let condition = (
            "kms:KeyAgreementAlgorithm",
            CtxValue::one(algorithm.as_str()),
        );
        let resolved =
            self.key_in_use(caller, &req.key_id, "kms:DeriveSharedSecret", [condition])?;
        let r = &resolved.key.record;
        let curve = match pair_of(&resolved) {
            Some(PairSpec::Ec(curve)) if r.key_usage == KEY_AGREEMENT => curve,
            _ => {
                return Err(KmsError::InvalidKeyUsage(format!(
                    "{} ({} {}) is not a KEY_AGREEMENT key; DeriveSharedSecret needs one.",
                    resolved.key.arn, r.key_spec, r.key_usage
                )))
            }
        };
        let Some(point) = crate::hsm::Hsm::ec_point_from_spki(&req.public_key, curve) else {
            return Err(KmsError::Validation(format!(
                "PublicKey must be a DER-encoded X.509 SubjectPublicKeyInfo of an elliptic-curve \
                 key on the curve of {} ({}), with an uncompressed point.",
                resolved.key.arn, r.key_spec
            )));
        };
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let shared_secret = match self.hsm.derive_shared_secret(object, curve, point).await {
            Ok(s) => s,
            // A well-formed SPKI whose point the device refuses (not on the curve): the
            // caller's input, not the device, when the device is otherwise well.
            Err(e) if e.function == "C_DeriveKey" && e.kind == HsmErrorKind::Other => {
                tracing::info!(error = %e, "DeriveSharedSecret: the device refused the public key");
                return Err(KmsError::Validation(
                    "PublicKey is not a valid point on the key's curve.".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(DeriveSharedSecretResponse {
            key_id: resolved.key.arn.clone(),
            shared_secret,
            key_agreement_algorithm: algorithm,
            key_origin: r.origin.to_string(),
        })
    }

    /// The RSA key and OAEP bits of an asymmetric Encrypt/Decrypt, after authorization.
    fn rsa_encryption_key(
        resolved: &Resolved,
        algorithm: EncryptionAlgorithm,
    ) -> Result<u32, KmsError> {
        let r = &resolved.key.record;
        match pair_of(resolved) {
            Some(PairSpec::Rsa(bits)) if r.key_usage == ENCRYPT_DECRYPT => Ok(bits),
            _ => Err(KmsError::InvalidKeyUsage(format!(
                "The encryption algorithm {algorithm} is not valid for {} ({} {}).",
                resolved.key.arn, r.key_spec, r.key_usage
            ))),
        }
    }

    /// Encrypt with RSAES_OAEP_SHA_1/256 under the key's public object.
    pub(crate) async fn encrypt_asymmetric(
        &self,
        caller: &Caller,
        req: EncryptRequest,
        hash: ShaAlg,
    ) -> Result<EncryptResponse, KmsError> {
        let algorithm = req
            .encryption_algorithm
            .unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        validate::blob_len(
            "plaintext",
            req.plaintext.len(),
            1,
            super::crypto::MAX_PLAINTEXT,
        )?;
        self.check_grant_tokens(&req.grant_tokens).await?;
        no_context("EncryptionContext", &req.encryption_context)?;
        let condition = ("kms:EncryptionAlgorithm", CtxValue::one(algorithm.as_str()));
        let resolved = self.key_in_use(caller, &req.key_id, "kms:Encrypt", [condition])?;
        let bits = Self::rsa_encryption_key(&resolved, algorithm)?;
        let max = specs::oaep_max_plaintext(bits, hash);
        if req.plaintext.len() > max {
            return Err(KmsError::Validation(format!(
                "Plaintext is too long for {algorithm} with a {bits}-bit key: at most {max} bytes."
            )));
        }
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let ciphertext_blob = self.hsm.rsa_encrypt(object, hash, req.plaintext).await?;
        Ok(EncryptResponse {
            ciphertext_blob,
            key_id: resolved.key.arn.clone(),
            encryption_algorithm: algorithm,
        })
    }

    /// Decrypt an RSA-OAEP ciphertext with the key's private object on the device. KeyId and
    /// EncryptionAlgorithm are required.
    pub(crate) async fn decrypt_asymmetric(
        &self,
        caller: &Caller,
        req: DecryptRequest,
        hash: ShaAlg,
    ) -> Result<DecryptResponse, KmsError> {
        let algorithm = req
            .encryption_algorithm
            .unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        validate::blob_len(
            "ciphertextBlob",
            req.ciphertext_blob.len(),
            1,
            super::crypto::MAX_CIPHERTEXT,
        )?;
        self.check_grant_tokens(&req.grant_tokens).await?;
        let key_id = required_key(
            req.key_id.as_deref(),
            "KeyId is required to decrypt with an asymmetric encryption algorithm.",
        )?;
        no_context("EncryptionContext", &req.encryption_context)?;
        let condition = ("kms:EncryptionAlgorithm", CtxValue::one(algorithm.as_str()));
        let resolved = self.key_in_use(caller, key_id, "kms:Decrypt", [condition])?;
        let bits = Self::rsa_encryption_key(&resolved, algorithm)?;
        if req.ciphertext_blob.len() != (bits / 8) as usize {
            return Err(KmsError::InvalidCiphertext(
                "The ciphertext is invalid.".into(),
            ));
        }
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let plaintext = self
            .hsm
            .rsa_decrypt(object, hash, req.ciphertext_blob)
            .await?;
        Ok(DecryptResponse {
            key_id: resolved.key.arn.clone(),
            plaintext,
            encryption_algorithm: algorithm,
            key_material_id: key_material_id(object),
        })
    }

    /// ReEncrypt where the source or the destination (or both) is an RSA encryption key
    /// (`SourceEncryptionAlgorithm` / `DestinationEncryptionAlgorithm` RSAES_OAEP_SHA_1/256).
    /// Both sides are authorized (kms:ReEncryptFrom, kms:ReEncryptTo, with
    /// kms:EncryptionAlgorithm and kms:ReEncryptOnSameKey) before any HSM call. The plaintext
    /// is decrypted on the device into a zeroizing buffer and encrypted again on the device;
    /// it never leaves the daemon.
    pub(crate) async fn re_encrypt_asymmetric(
        &self,
        caller: &Caller,
        req: ReEncryptRequest,
        src_hash: Option<ShaAlg>,
        dst_hash: Option<ShaAlg>,
    ) -> Result<ReEncryptResponse, KmsError> {
        self.check_grant_tokens(&req.grant_tokens).await?;
        let src_alg = req
            .source_encryption_algorithm
            .unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        let dst_alg = req
            .destination_encryption_algorithm
            .unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        for (alg, hash) in [(src_alg, src_hash), (dst_alg, dst_hash)] {
            if hash.is_none() {
                check_algorithm(Some(alg))?;
            }
        }
        validate::blob_len(
            "ciphertextBlob",
            req.ciphertext_blob.len(),
            1,
            MAX_CIPHERTEXT,
        )?;
        let dest_ctx = match dst_hash {
            Some(_) => {
                no_context(
                    "DestinationEncryptionContext",
                    &req.destination_encryption_context,
                )?;
                None
            }
            None => Some(canonical(
                "destinationEncryptionContext",
                &req.destination_encryption_context,
            )?),
        };
        let dest = self.re_encrypt_destination(caller, &req).await?;
        let source = self.re_encrypt_source(caller, &req, &dest, src_alg, src_hash)?;
        let (source_key, source_object) = source.key();
        let same_key = source_object.key_id() == dest.key.uuid;
        let target = self.re_encrypt_target(caller, &req, &dest, same_key, dst_alg, dest_ctx)?;
        super::end_dry_run(req.dry_run)?;
        let dest_object = dest.key.current_object();
        let plaintext = self.decrypt_source(source, req.ciphertext_blob).await?;
        let ciphertext_blob = self
            .encrypt_to_target(dest_object, dst_alg, target, plaintext)
            .await?;
        Ok(ReEncryptResponse {
            ciphertext_blob,
            source_key_id: source_key,
            key_id: dest.key.arn.clone(),
            source_encryption_algorithm: src_alg,
            destination_encryption_algorithm: dst_alg,
            source_key_material_id: key_material_id(source_object),
            destination_key_material_id: key_material_id(dest_object),
        })
    }

    /// The source side of an asymmetric ReEncrypt: located and authorized, not yet decrypted.
    fn re_encrypt_source(
        &self,
        caller: &Caller,
        req: &ReEncryptRequest,
        dest: &Resolved,
        src_alg: EncryptionAlgorithm,
        src_hash: Option<ShaAlg>,
    ) -> Result<ReSource, KmsError> {
        let Some(hash) = src_hash else {
            let opened = self.open_re_encrypt_source(caller, req, dest)?;
            super::external::not_with_rsa(&opened.resolved.key)?;
            return Ok(ReSource::Gcm(opened));
        };
        let key_id = required_key(
            req.source_key_id.as_deref(),
            "SourceKeyId is required to re-encrypt from an asymmetric key.",
        )?;
        no_context("SourceEncryptionContext", &req.source_encryption_context)?;
        let resolved = self.resolve(caller, key_id, true)?;
        let (k, v) = on_same_key(resolved.key.uuid == dest.key.uuid);
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:ReEncryptFrom", &resolved)
                .with("kms:EncryptionAlgorithm", CtxValue::one(src_alg.as_str()))
                .with(k, v),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
        let bits = Self::rsa_encryption_key(&resolved, src_alg)?;
        if req.ciphertext_blob.len() != (bits / 8) as usize {
            return Err(KmsError::InvalidCiphertext(
                "The ciphertext is invalid.".into(),
            ));
        }
        let object = resolved.key.current_object();
        Ok(ReSource::Rsa(resolved, object, hash))
    }

    /// The destination side of an asymmetric ReEncrypt, authorized before any HSM call.
    /// `dest_ctx` is the canonical context of a symmetric destination (`None` for RSA).
    fn re_encrypt_target(
        &self,
        caller: &Caller,
        req: &ReEncryptRequest,
        dest: &Resolved,
        same_key: bool,
        dst_alg: EncryptionAlgorithm,
        dest_ctx: Option<Vec<u8>>,
    ) -> Result<ReTarget, KmsError> {
        let (k, v) = on_same_key(same_key);
        let to = AuthzRequest::on_key("kms:ReEncryptTo", dest).with(k, v);
        let to = match dest_ctx {
            None => to.with("kms:EncryptionAlgorithm", CtxValue::one(dst_alg.as_str())),
            Some(_) => to.context(&req.destination_encryption_context),
        };
        self.authorize(caller, to)?;
        check_state(&dest.key, StateClass::Use)?;
        match (dest_ctx, dst_alg.oaep_hash()) {
            (Some(ctx), _) => {
                check_symmetric_usage(dest)?;
                super::external::not_with_rsa(&dest.key)?;
                Ok(ReTarget::Gcm(ctx))
            }
            (None, Some(hash)) => Ok(ReTarget::Rsa {
                hash,
                bits: Self::rsa_encryption_key(dest, dst_alg)?,
            }),
            (None, None) => unreachable!("a destination without a context is an RSAES one"),
        }
    }

    /// Decrypts the source of a ReEncrypt on the device, into a zeroizing buffer.
    async fn decrypt_source(
        &self,
        source: ReSource,
        ciphertext_blob: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        Ok(match source {
            ReSource::Rsa(_, object, hash) => {
                self.hsm.rsa_decrypt(object, hash, ciphertext_blob).await?
            }
            ReSource::Gcm(b) => {
                self.hsm
                    .decrypt_gcm(b.object, b.iv, b.ciphertext_and_tag, b.aad)
                    .await?
            }
        })
    }

    /// Encrypts a ReEncrypt's plaintext on the device under the destination.
    async fn encrypt_to_target(
        &self,
        dest_object: ObjectId,
        dst_alg: EncryptionAlgorithm,
        target: ReTarget,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Vec<u8>, KmsError> {
        match target {
            ReTarget::Rsa { hash, bits } => {
                let max = specs::oaep_max_plaintext(bits, hash);
                if plaintext.len() > max {
                    return Err(KmsError::Validation(format!(
                        "The plaintext of the source ciphertext ({} bytes) is too long for {dst_alg} with a {bits}-bit key: at most {max} bytes.",
                        plaintext.len()
                    )));
                }
                Ok(self.hsm.rsa_encrypt(dest_object, hash, plaintext).await?)
            }
            ReTarget::Gcm(ctx) => {
                let sealed = self
                    .hsm
                    .encrypt_gcm(dest_object, plaintext, aad_builder(dest_object, ctx))
                    .await?;
                Ok(blob_from(dest_object, &sealed))
            }
        }
    }

    /// GenerateMac: the device computes the MAC.
    pub async fn generate_mac(
        &self,
        caller: &Caller,
        req: GenerateMacRequest,
    ) -> Result<GenerateMacResponse, KmsError> {
        let algorithm = check_mac_input(&req.message, None, req.mac_algorithm)?;
        let (resolved, alg) = self
            .prepare_mac(
                caller,
                "kms:GenerateMac",
                &req.key_id,
                algorithm,
                &req.grant_tokens,
            )
            .await?;
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let mac = self.hsm.generate_mac(object, alg, req.message).await?;
        Ok(GenerateMacResponse {
            mac,
            mac_algorithm: algorithm,
            key_id: resolved.key.arn.clone(),
        })
    }

    /// VerifyMac: the device computes and compares the MAC; a bad one is
    /// KMSInvalidMacException.
    pub async fn verify_mac(
        &self,
        caller: &Caller,
        req: VerifyMacRequest,
    ) -> Result<VerifyMacResponse, KmsError> {
        let algorithm = check_mac_input(&req.message, Some(&req.mac), req.mac_algorithm)?;
        let (resolved, alg) = self
            .prepare_mac(
                caller,
                "kms:VerifyMac",
                &req.key_id,
                algorithm,
                &req.grant_tokens,
            )
            .await?;
        // A dry run of VerifyMac never compares: the device is not asked.
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let ok = self
            .hsm
            .verify_mac(object, alg, req.message, req.mac)
            .await?;
        if !ok {
            return Err(KmsError::InvalidMac(
                "The MAC is not valid for this message, key and algorithm.".into(),
            ));
        }
        Ok(VerifyMacResponse {
            key_id: resolved.key.arn.clone(),
            mac_valid: true,
            mac_algorithm: algorithm,
        })
    }

    /// Resolves and authorizes a GenerateMac or VerifyMac (`action`), checks the state and
    /// that the key computes `algorithm`.
    async fn prepare_mac(
        &self,
        caller: &Caller,
        action: &'static str,
        key_id: &str,
        algorithm: MacAlgorithm,
        grant_tokens: &[String],
    ) -> Result<(Resolved, crate::hsm::MacAlg), KmsError> {
        self.check_grant_tokens(grant_tokens).await?;
        let condition = ("kms:MacAlgorithm", CtxValue::one(algorithm.as_str()));
        let resolved = self.key_in_use(caller, key_id, action, [condition])?;
        let r = &resolved.key.record;
        let alg = specs::mac_algorithm(r.key_spec, r.key_usage, algorithm)?;
        Ok((resolved, alg))
    }

    /// GenerateDataKeyPair: a key pair, its private key in plaintext and sealed.
    pub async fn generate_data_key_pair(
        &self,
        caller: &Caller,
        req: GenerateDataKeyPairRequest,
    ) -> Result<GenerateDataKeyPairResponse, KmsError> {
        self.data_key_pair(caller, req.0, "kms:GenerateDataKeyPair")
            .await
    }

    /// GenerateDataKeyPairWithoutPlaintext: the private key sealed only; its plaintext is
    /// zeroized here.
    pub async fn generate_data_key_pair_without_plaintext(
        &self,
        caller: &Caller,
        req: GenerateDataKeyPairWithoutPlaintextRequest,
    ) -> Result<GenerateDataKeyPairWithoutPlaintextResponse, KmsError> {
        let p = self
            .data_key_pair(caller, req.0, "kms:GenerateDataKeyPairWithoutPlaintext")
            .await?;
        Ok(GenerateDataKeyPairWithoutPlaintextResponse {
            private_key_ciphertext_blob: p.private_key_ciphertext_blob,
            public_key: p.public_key,
            key_id: p.key_id,
            key_pair_spec: p.key_pair_spec,
            key_material_id: p.key_material_id,
        })
    }

    /// Both GenerateDataKeyPair operations (`action` is the IAM action checked): the pair is
    /// generated on the device and its PKCS#8 sealed under the symmetric CMK in one job.
    async fn data_key_pair(
        &self,
        caller: &Caller,
        req: DataKeyPairRequest,
        action: &'static str,
    ) -> Result<GenerateDataKeyPairResponse, KmsError> {
        let spec_name = required("keyPairSpec", req.key_pair_spec.as_deref())?.to_string();
        let pair = specs::data_key_pair_spec(&spec_name)?;
        self.check_grant_tokens(&req.grant_tokens).await?;
        validate::encryption_context("encryptionContext", &req.encryption_context)?;
        let canonical_ctx =
            ciphertext::canonical_context(&req.encryption_context).ok_or_else(|| {
                KmsError::validation(
                    "encryptionContext",
                    "Member values must be shorter than 64 KiB",
                )
            })?;
        let conditions = [
            ("kms:DataKeyPairSpec", CtxValue::one(spec_name.as_str())),
            (
                "kms:EncryptionAlgorithm",
                CtxValue::one(EncryptionAlgorithm::SymmetricDefault.as_str()),
            ),
        ];
        let ctx = &req.encryption_context;
        let resolved = self
            .sealing_key(caller, &req.key_id, action, ctx, req.dry_run, conditions)
            .await?;
        let r = &resolved.key.record;
        if r.key_spec != super::keys::SYMMETRIC_DEFAULT || r.key_usage != ENCRYPT_DECRYPT {
            return Err(KmsError::InvalidKeyUsage(format!(
                "{} key usage is {} and spec {}; data key pairs need a symmetric ENCRYPT_DECRYPT key.",
                resolved.key.arn, r.key_usage, r.key_spec
            )));
        }
        if r.custom_key_store_id.is_some() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is in a custom key store; GenerateDataKeyPair and \
                 GenerateDataKeyPairWithoutPlaintext do not support KMS keys in custom key stores.",
                resolved.key.arn
            )));
        }
        let object = super::object_in_use(&resolved.key, req.dry_run)?;
        let crate::hsm::DataKeyPair {
            pkcs8,
            spki: public_key,
            sealed,
        } = self
            .hsm
            .generate_data_key_pair(pair, object, aad_builder(object, canonical_ctx.clone()))
            .await?;
        let private_key_ciphertext_blob = self
            .finish_blob(
                caller,
                &resolved.key,
                action,
                object,
                &canonical_ctx,
                sealed,
            )
            .await?;
        Ok(GenerateDataKeyPairResponse {
            private_key_ciphertext_blob,
            private_key_plaintext: pkcs8,
            public_key,
            key_id: resolved.key.arn.clone(),
            key_pair_spec: spec_name,
            key_material_id: key_material_id(object),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_never_in_params() {
        let sign = SignRequest {
            key_id: "k".into(),
            message: Zeroizing::new(b"SECRET-MESSAGE".to_vec()),
            signing_algorithm: Some(SigningAlgorithm::EcdsaSha256),
            message_type: Some(MessageType::Raw),
            ..Default::default()
        };
        assert_eq!(
            sign.request_parameters(),
            json!({"keyId": "k", "messageType": "RAW", "signingAlgorithm": "ECDSA_SHA_256"})
        );
        let verify = VerifyRequest {
            key_id: "k".into(),
            message: Zeroizing::new(b"SECRET-MESSAGE".to_vec()),
            signature: b"SECRET-SIGNATURE".to_vec(),
            grant_tokens: vec!["SECRET-TOKEN".into(), "SECRET-TOKEN-2".into()],
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(
            verify.request_parameters(),
            json!({"keyId": "k", "grantTokens": 2, "dryRun": true})
        );
        let mac = VerifyMacRequest {
            key_id: "k".into(),
            message: Zeroizing::new(b"SECRET-MESSAGE".to_vec()),
            mac: b"SECRET-MAC".to_vec(),
            mac_algorithm: Some(MacAlgorithm::HmacSha256),
            ..Default::default()
        };
        assert_eq!(
            mac.request_parameters(),
            json!({"keyId": "k", "macAlgorithm": "HMAC_SHA_256"})
        );
        let derive = DeriveSharedSecretRequest {
            key_id: "k".into(),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: b"PEER-PUBLIC-KEY".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            derive.request_parameters(),
            json!({"keyId": "k", "keyAgreementAlgorithm": "ECDH"})
        );
        let pair = GenerateDataKeyPairRequest(DataKeyPairRequest {
            key_id: "k".into(),
            key_pair_spec: Some("RSA_2048".into()),
            encryption_context: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(
            pair.request_parameters(),
            json!({"keyId": "k", "encryptionContext": {"a": "b"}, "keyPairSpec": "RSA_2048"})
        );
        let pk = GetPublicKeyRequest {
            key_id: "k".into(),
            grant_tokens: vec!["SECRET-TOKEN".into()],
        };
        assert_eq!(
            pk.request_parameters(),
            json!({"keyId": "k", "grantTokens": 1})
        );
    }

    #[test]
    fn responses_with_secrets_never_print_them() {
        let out = GenerateDataKeyPairResponse {
            private_key_ciphertext_blob: Vec::new(),
            private_key_plaintext: Zeroizing::new(b"PRIVATE-KEY".to_vec()),
            public_key: Vec::new(),
            key_id: "k".into(),
            key_pair_spec: "RSA_2048".into(),
            key_material_id: String::new(),
        };
        assert!(!format!("{out:?}").contains("PRIVATE-KEY"));
        assert_eq!(out.response_elements(), Value::Null);
        let req = GenerateMacRequest {
            message: Zeroizing::new(b"SECRET-MESSAGE".to_vec()),
            ..Default::default()
        };
        assert!(!format!("{req:?}").contains("SECRET"));
    }

    #[test]
    fn input_checks_keep_their_messages() {
        let e = check_sign_input(
            b"m",
            Some(MessageType::ExternalMu),
            Some(SigningAlgorithm::EcdsaSha256),
        );
        assert!(
            matches!(e, Err(KmsError::Validation(m)) if m == "MessageType EXTERNAL_MU is only valid for ML-DSA keys.")
        );
        assert!(check_sign_input(b"m", None, None).is_err());
        assert_eq!(
            check_sign_input(b"m", None, Some(SigningAlgorithm::EcdsaSha256)).unwrap(),
            (SigningAlgorithm::EcdsaSha256, MessageType::Raw)
        );
        assert!(check_mac_input(b"m", Some(b""), Some(MacAlgorithm::HmacSha256)).is_err());
        assert!(check_mac_input(b"m", None, None).is_err());
        assert_eq!(
            check_mac_input(b"m", Some(b"x"), Some(MacAlgorithm::HmacSha384)).unwrap(),
            MacAlgorithm::HmacSha384
        );
        let digest = to_be_signed(
            crate::hsm::SignScheme::Ecdsa(crate::hsm::Curve::P256),
            Hash::Sha256,
            SigningAlgorithm::EcdsaSha256,
            &[0u8; 31],
            MessageType::Digest,
        );
        assert!(matches!(digest, Err(KmsError::Validation(m)) if m.contains("expected 32")));
    }
}
