//! Asymmetric and HMAC operations: Sign, Verify, GetPublicKey, RSA-OAEP Encrypt/Decrypt,
//! GenerateMac, VerifyMac, GenerateDataKeyPair(WithoutPlaintext).
//!
//! Same path as every operation: validate the input, resolve the key, authorize (with the
//! operation's condition keys), check the state and the key's spec and usage, then one HSM job.
//! Messages are hashed here (sha2); the device signs the digest, verifies with the public
//! object, decrypts with the private object and computes and compares MACs.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::authz::{AuthzRequest, CtxValue};
use super::crypto::{
    aad_builder, blob_from, canonical, check_algorithm, check_symmetric_usage, DecryptRequest,
    DecryptResponse, EncryptRequest, EncryptResponse, ReEncryptRequest, ReEncryptResponse,
    SourceBlob, MAX_CIPHERTEXT,
};
use super::keys::{key_material_id, SYMMETRIC_DEFAULT};
use super::specs::{self, SpecKind, ENCRYPT_DECRYPT, KEY_AGREEMENT, KNOWN_MESSAGE_TYPES};
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
    pub message_type: Option<String>,
    pub signing_algorithm: Option<String>,
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
    pub signing_algorithm: String,
}

/// Verify input.
#[derive(Default)]
pub struct VerifyRequest {
    pub key_id: String,
    pub message: Zeroizing<Vec<u8>>,
    pub message_type: Option<String>,
    pub signature: Vec<u8>,
    pub signing_algorithm: Option<String>,
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
    pub signing_algorithm: String,
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
    pub encryption_algorithms: Vec<String>,
    pub signing_algorithms: Vec<String>,
    pub key_agreement_algorithms: Vec<String>,
}

/// DeriveSharedSecret input.
#[derive(Debug, Default)]
pub struct DeriveSharedSecretRequest {
    pub key_id: String,
    pub key_agreement_algorithm: Option<String>,
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
    pub key_agreement_algorithm: String,
    pub key_origin: String,
}

impl std::fmt::Debug for DeriveSharedSecretResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeriveSharedSecretResponse")
            .field("key_id", &self.key_id)
            .field("shared_secret", &"<redacted>")
            .field("key_agreement_algorithm", &self.key_agreement_algorithm)
            .finish()
    }
}

/// GenerateMac / VerifyMac input (`mac` only for VerifyMac).
#[derive(Default)]
pub struct MacRequest {
    pub key_id: String,
    pub message: Zeroizing<Vec<u8>>,
    pub mac_algorithm: Option<String>,
    pub mac: Vec<u8>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// GenerateMac / VerifyMac output (`mac` empty and `mac_valid` true for VerifyMac).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacResponse {
    /// The key ARN.
    pub key_id: String,
    pub mac: Vec<u8>,
    pub mac_valid: bool,
    pub mac_algorithm: String,
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("key_id", &self.key_id)
                    .field("message", &"<redacted>")
                    .finish_non_exhaustive()
            }
        }
    )*};
}

redacted_debug!(SignRequest, VerifyRequest, MacRequest);

/// GenerateDataKeyPair(WithoutPlaintext) input.
#[derive(Debug, Default, Clone)]
pub struct DataKeyPairRequest {
    pub key_id: String,
    pub encryption_context: BTreeMap<String, String>,
    pub key_pair_spec: Option<String>,
    pub grant_tokens: Vec<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// GenerateDataKeyPair output; `private_key_plaintext` is `None` for WithoutPlaintext.
pub struct DataKeyPairResponse {
    pub private_key_ciphertext_blob: Vec<u8>,
    /// PKCS#8 DER.
    pub private_key_plaintext: Option<Zeroizing<Vec<u8>>>,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// The key ARN.
    pub key_id: String,
    pub key_pair_spec: String,
    pub key_material_id: String,
}

impl std::fmt::Debug for DataKeyPairResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyPairResponse")
            .field("key_id", &self.key_id)
            .field("key_pair_spec", &self.key_pair_spec)
            .field(
                "private_key_plaintext",
                &self.private_key_plaintext.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

fn required<'a>(member: &str, v: Option<&'a str>) -> Result<&'a str, KmsError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(KmsError::validation(member, "Member must not be null")),
    }
}

/// Input checks of Sign and Verify that need no key: message length, message type and
/// algorithm names, and a DIGEST's length.
fn check_sign_input(
    message: &[u8],
    message_type: Option<&str>,
    algorithm: Option<&str>,
) -> Result<(String, bool), KmsError> {
    validate::blob_len("message", message.len(), 1, MAX_MESSAGE)?;
    let algorithm = required("signingAlgorithm", algorithm)?;
    if !specs::KNOWN_SIGNING_ALGORITHMS.contains(&algorithm) {
        return Err(KmsError::validation(
            "signingAlgorithm",
            &format!(
                "Member must satisfy enum value set: {:?}",
                specs::KNOWN_SIGNING_ALGORITHMS
            ),
        ));
    }
    let digest = match message_type.unwrap_or("RAW") {
        "" | "RAW" => false,
        "DIGEST" => true,
        "EXTERNAL_MU" => {
            return Err(KmsError::Validation(
                "MessageType EXTERNAL_MU is only valid for ML-DSA keys.".into(),
            ))
        }
        _ => {
            return Err(KmsError::validation(
                "messageType",
                &format!("Member must satisfy enum value set: {KNOWN_MESSAGE_TYPES:?}"),
            ))
        }
    };
    Ok((algorithm.to_string(), digest))
}

fn message_type_name(digest: bool) -> &'static str {
    if digest {
        "DIGEST"
    } else {
        "RAW"
    }
}

fn pair_of(resolved: &Resolved) -> Option<PairSpec> {
    match specs::kind(&resolved.key.record.key_spec) {
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
    /// Resolves and authorizes a Sign or Verify, returns the key, the scheme and the digest.
    #[allow(clippy::too_many_arguments)]
    fn prepare_signature(
        &self,
        caller: &Caller,
        action: &'static str,
        key_id: &str,
        message: &[u8],
        message_type: Option<&str>,
        algorithm: Option<&str>,
        grant_tokens: &[String],
    ) -> Result<(Resolved, crate::hsm::SignScheme, Vec<u8>, String), KmsError> {
        let (algorithm, is_digest) = check_sign_input(message, message_type, algorithm)?;
        self.check_grant_tokens(grant_tokens)?;
        let resolved = self.resolve(caller, key_id, true)?;
        self.authorize(
            caller,
            AuthzRequest::on_key(action, &resolved)
                .with("kms:SigningAlgorithm", CtxValue::one(algorithm.as_str()))
                .with(
                    "kms:MessageType",
                    CtxValue::one(message_type_name(is_digest)),
                ),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
        let r = &resolved.key.record;
        let (scheme, hash) = specs::signing_scheme(&r.key_spec, &r.key_usage, &algorithm)?;
        let digest = if scheme == crate::hsm::SignScheme::Ed25519 {
            // Pure Ed25519 signs the message itself (it hashes internally with SHA-512).
            if is_digest {
                return Err(KmsError::Validation(format!(
                    "{algorithm} signs RAW messages only; use MessageType RAW."
                )));
            }
            message.to_vec()
        } else if is_digest {
            if message.len() != hash.digest_len() {
                return Err(KmsError::Validation(format!(
                    "Digest is invalid length for algorithm {algorithm}: {} bytes, expected {}.",
                    message.len(),
                    hash.digest_len()
                )));
            }
            message.to_vec()
        } else {
            hash.digest(message)
        };
        super::record::key_version(resolved.key.record.current_version);
        Ok((resolved, scheme, digest, algorithm))
    }

    /// Sign: the device signs the daemon-computed digest with the private key.
    pub async fn sign(&self, caller: &Caller, req: SignRequest) -> Result<SignResponse, KmsError> {
        let (resolved, scheme, digest, algorithm) = self.prepare_signature(
            caller,
            "kms:Sign",
            &req.key_id,
            &req.message,
            req.message_type.as_deref(),
            req.signing_algorithm.as_deref(),
            &req.grant_tokens,
        )?;
        super::end_dry_run(req.dry_run)?;
        let signature = self
            .hsm
            .sign(resolved.key.current_object(), scheme, digest)
            .await?;
        Ok(SignResponse {
            key_id: resolved.key.arn.clone(),
            signature,
            signing_algorithm: algorithm,
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
        let (resolved, scheme, digest, algorithm) = self.prepare_signature(
            caller,
            "kms:Verify",
            &req.key_id,
            &req.message,
            req.message_type.as_deref(),
            req.signing_algorithm.as_deref(),
            &req.grant_tokens,
        )?;
        // A dry run never verifies: the device is not asked.
        super::end_dry_run(req.dry_run)?;
        let valid = self
            .hsm
            .verify(resolved.key.current_object(), scheme, digest, req.signature)
            .await?;
        if !valid {
            return Err(KmsError::InvalidSignature(
                "The signature is not valid for this message, key and algorithm.".into(),
            ));
        }
        Ok(VerifyResponse {
            key_id: resolved.key.arn.clone(),
            signature_valid: true,
            signing_algorithm: algorithm,
        })
    }

    /// GetPublicKey: the DER SubjectPublicKeyInfo built from the device's public object.
    pub async fn get_public_key(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_tokens: &[String],
    ) -> Result<GetPublicKeyResponse, KmsError> {
        self.check_grant_tokens(grant_tokens)?;
        let resolved = self.resolve(caller, key_id, true)?;
        self.authorize_key(caller, "kms:GetPublicKey", &resolved, None)?;
        check_state(&resolved.key, StateClass::Use)?;
        let Some(pair) = pair_of(&resolved) else {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a {} key; only asymmetric keys have a public key.",
                resolved.key.arn, resolved.key.record.key_spec
            )));
        };
        let public_key = self
            .hsm
            .public_key(resolved.key.current_object(), pair)
            .await?;
        let r = &resolved.key.record;
        Ok(GetPublicKeyResponse {
            key_id: resolved.key.arn.clone(),
            public_key,
            key_spec: r.key_spec.clone(),
            key_usage: r.key_usage.clone(),
            encryption_algorithms: specs::encryption_algorithms(&r.key_spec, &r.key_usage),
            signing_algorithms: specs::signing_algorithms(&r.key_spec, &r.key_usage),
            key_agreement_algorithms: specs::key_agreement_algorithms(&r.key_spec, &r.key_usage),
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
        let algorithm = req.key_agreement_algorithm.clone().unwrap_or_default();
        if algorithm != "ECDH" {
            return Err(KmsError::validation(
                "keyAgreementAlgorithm",
                "Member must satisfy enum value set: [ECDH]",
            ));
        }
        validate::blob_len("publicKey", req.public_key.len(), 1, 8192)?;
        self.check_grant_tokens(&req.grant_tokens)?;
        let resolved = self.resolve(caller, &req.key_id, true)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:DeriveSharedSecret", &resolved).with(
                "kms:KeyAgreementAlgorithm",
                CtxValue::one(algorithm.as_str()),
            ),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
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
        super::end_dry_run(req.dry_run)?;
        let object = resolved.key.current_object();
        super::record::key_version(object.version());
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
            key_origin: r.origin.clone(),
        })
    }

    /// The RSA key and OAEP bits of an asymmetric Encrypt/Decrypt, after authorization.
    fn rsa_encryption_key(resolved: &Resolved, algorithm: &str) -> Result<u32, KmsError> {
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
        let algorithm = req.encryption_algorithm.clone().unwrap_or_default();
        validate::blob_len(
            "plaintext",
            req.plaintext.len(),
            1,
            super::crypto::MAX_PLAINTEXT,
        )?;
        self.check_grant_tokens(&req.grant_tokens)?;
        no_context("EncryptionContext", &req.encryption_context)?;
        let resolved = self.resolve(caller, &req.key_id, true)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:Encrypt", &resolved)
                .with("kms:EncryptionAlgorithm", CtxValue::one(algorithm.as_str())),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
        let bits = Self::rsa_encryption_key(&resolved, &algorithm)?;
        let max = specs::oaep_max_plaintext(bits, hash);
        if req.plaintext.len() > max {
            return Err(KmsError::Validation(format!(
                "Plaintext is too long for {algorithm} with a {bits}-bit key: at most {max} bytes."
            )));
        }
        super::end_dry_run(req.dry_run)?;
        let object = resolved.key.current_object();
        super::record::key_version(object.version());
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
        let algorithm = req.encryption_algorithm.clone().unwrap_or_default();
        validate::blob_len(
            "ciphertextBlob",
            req.ciphertext_blob.len(),
            1,
            super::crypto::MAX_CIPHERTEXT,
        )?;
        self.check_grant_tokens(&req.grant_tokens)?;
        let key_id = match req.key_id.as_deref() {
            Some(k) if !k.is_empty() => k,
            _ => {
                return Err(KmsError::Validation(
                    "KeyId is required to decrypt with an asymmetric encryption algorithm.".into(),
                ))
            }
        };
        no_context("EncryptionContext", &req.encryption_context)?;
        let resolved = self.resolve(caller, key_id, true)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:Decrypt", &resolved)
                .with("kms:EncryptionAlgorithm", CtxValue::one(algorithm.as_str())),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
        let bits = Self::rsa_encryption_key(&resolved, &algorithm)?;
        if req.ciphertext_blob.len() != (bits / 8) as usize {
            return Err(KmsError::InvalidCiphertext(
                "The ciphertext is invalid.".into(),
            ));
        }
        super::end_dry_run(req.dry_run)?;
        let object = resolved.key.current_object();
        super::record::key_version(object.version());
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
        self.check_grant_tokens(&req.grant_tokens)?;
        let src_alg = req
            .source_encryption_algorithm
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| SYMMETRIC_DEFAULT.into());
        let dst_alg = req
            .destination_encryption_algorithm
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| SYMMETRIC_DEFAULT.into());
        for (member, alg, hash) in [
            ("sourceEncryptionAlgorithm", &src_alg, src_hash),
            ("destinationEncryptionAlgorithm", &dst_alg, dst_hash),
        ] {
            if hash.is_none() {
                check_algorithm(member, Some(alg))?;
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
        let dest = self
            .resolve_or_create_managed(
                caller,
                &req.destination_key_id,
                "kms:ReEncryptTo",
                Some(&req.destination_encryption_context),
                req.dry_run,
            )
            .await?;
        let on_same_key = |same: bool| {
            (
                "kms:ReEncryptOnSameKey",
                CtxValue::one(if same { "true" } else { "false" }),
            )
        };

        // The source side: located and authorized, not yet decrypted.
        enum Source {
            Rsa(Resolved, ObjectId, ShaAlg),
            Gcm(super::crypto::OpenedBlob),
        }
        let source = match src_hash {
            Some(hash) => {
                let key_id = match req.source_key_id.as_deref() {
                    Some(k) if !k.is_empty() => k,
                    _ => {
                        return Err(KmsError::Validation(
                            "SourceKeyId is required to re-encrypt from an asymmetric key.".into(),
                        ))
                    }
                };
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
                let bits = Self::rsa_encryption_key(&resolved, &src_alg)?;
                if req.ciphertext_blob.len() != (bits / 8) as usize {
                    return Err(KmsError::InvalidCiphertext(
                        "The ciphertext is invalid.".into(),
                    ));
                }
                let object = resolved.key.current_object();
                Source::Rsa(resolved, object, hash)
            }
            None => {
                let same_key = ciphertext::parse(&req.ciphertext_blob)
                    .map(|p| p.key_id == dest.key.uuid)
                    .unwrap_or(false);
                Source::Gcm(self.open_blob(
                    caller,
                    SourceBlob {
                        blob: &req.ciphertext_blob,
                        ctx_member: "sourceEncryptionContext",
                        ctx: &req.source_encryption_context,
                        expected_key: req.source_key_id.as_deref(),
                    },
                    "kms:ReEncryptFrom",
                    Some(on_same_key(same_key)),
                )?)
            }
        };
        let (source_key, source_object) = match &source {
            Source::Rsa(r, o, _) => (r.key.arn.clone(), *o),
            Source::Gcm(b) => (b.resolved.key.arn.clone(), b.object),
        };

        // The destination side, authorized before any HSM call.
        let (k, v) = on_same_key(source_object.key_id() == dest.key.uuid);
        let mut to = AuthzRequest::on_key("kms:ReEncryptTo", &dest).with(k, v);
        to = match dst_hash {
            Some(_) => to.with("kms:EncryptionAlgorithm", CtxValue::one(dst_alg.as_str())),
            None => to.context(&req.destination_encryption_context),
        };
        self.authorize(caller, to)?;
        check_state(&dest.key, StateClass::Use)?;
        let dest_bits = match dst_hash {
            Some(_) => Some(Self::rsa_encryption_key(&dest, &dst_alg)?),
            None => {
                check_symmetric_usage(&dest)?;
                None
            }
        };
        super::end_dry_run(req.dry_run)?;
        let dest_object = dest.key.current_object();

        let plaintext = match source {
            Source::Rsa(_, object, hash) => {
                self.hsm
                    .rsa_decrypt(object, hash, req.ciphertext_blob)
                    .await?
            }
            Source::Gcm(b) => {
                self.hsm
                    .decrypt_gcm(b.object, b.iv, b.ciphertext_and_tag, b.aad)
                    .await?
            }
        };
        let ciphertext_blob = match (dst_hash, dest_bits, dest_ctx) {
            (Some(hash), Some(bits), _) => {
                let max = specs::oaep_max_plaintext(bits, hash);
                if plaintext.len() > max {
                    return Err(KmsError::Validation(format!(
                        "The plaintext of the source ciphertext ({} bytes) is too long for {dst_alg} with a {bits}-bit key: at most {max} bytes.",
                        plaintext.len()
                    )));
                }
                self.hsm.rsa_encrypt(dest_object, hash, plaintext).await?
            }
            (_, _, Some(ctx)) => {
                let sealed = self
                    .hsm
                    .encrypt_gcm(dest_object, plaintext, aad_builder(dest_object, ctx))
                    .await?;
                blob_from(dest_object, &sealed)
            }
            _ => unreachable!(
                "a destination is either RSA (with its size) or symmetric (with its context)"
            ),
        };
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

    /// GenerateMac (`verify` false) or VerifyMac, on the device.
    pub async fn mac(
        &self,
        caller: &Caller,
        req: MacRequest,
        verify: bool,
    ) -> Result<MacResponse, KmsError> {
        validate::blob_len("message", req.message.len(), 1, MAX_MESSAGE)?;
        if verify {
            validate::blob_len("mac", req.mac.len(), 1, MAX_SIGNATURE)?;
        }
        let algorithm = required("macAlgorithm", req.mac_algorithm.as_deref())?.to_string();
        if !specs::KNOWN_MAC_ALGORITHMS.contains(&algorithm.as_str()) {
            return Err(KmsError::validation(
                "macAlgorithm",
                &format!(
                    "Member must satisfy enum value set: {:?}",
                    specs::KNOWN_MAC_ALGORITHMS
                ),
            ));
        }
        self.check_grant_tokens(&req.grant_tokens)?;
        let resolved = self.resolve(caller, &req.key_id, true)?;
        let action = if verify {
            "kms:VerifyMac"
        } else {
            "kms:GenerateMac"
        };
        self.authorize(
            caller,
            AuthzRequest::on_key(action, &resolved)
                .with("kms:MacAlgorithm", CtxValue::one(algorithm.as_str())),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
        let r = &resolved.key.record;
        let alg = specs::mac_algorithm(&r.key_spec, &r.key_usage, &algorithm)?;
        // A dry run of VerifyMac never compares: the device is not asked.
        super::end_dry_run(req.dry_run)?;
        let object = resolved.key.current_object();
        super::record::key_version(object.version());
        let message = req.message;
        if verify {
            let ok = self.hsm.verify_mac(object, alg, message, req.mac).await?;
            if !ok {
                return Err(KmsError::InvalidMac(
                    "The MAC is not valid for this message, key and algorithm.".into(),
                ));
            }
            return Ok(MacResponse {
                key_id: resolved.key.arn.clone(),
                mac: Vec::new(),
                mac_valid: true,
                mac_algorithm: algorithm,
            });
        }
        let mac = self.hsm.generate_mac(object, alg, message).await?;
        Ok(MacResponse {
            key_id: resolved.key.arn.clone(),
            mac,
            mac_valid: false,
            mac_algorithm: algorithm,
        })
    }

    /// GenerateDataKeyPair (`with_plaintext`) or GenerateDataKeyPairWithoutPlaintext: the pair
    /// is generated on the device and its PKCS#8 sealed under the symmetric CMK in one job.
    pub async fn generate_data_key_pair(
        &self,
        caller: &Caller,
        req: DataKeyPairRequest,
        with_plaintext: bool,
    ) -> Result<DataKeyPairResponse, KmsError> {
        let spec_name = required("keyPairSpec", req.key_pair_spec.as_deref())?.to_string();
        let pair = specs::data_key_pair_spec(&spec_name)?;
        self.check_grant_tokens(&req.grant_tokens)?;
        validate::encryption_context("encryptionContext", &req.encryption_context)?;
        let canonical_ctx =
            ciphertext::canonical_context(&req.encryption_context).ok_or_else(|| {
                KmsError::validation(
                    "encryptionContext",
                    "Member values must be shorter than 64 KiB",
                )
            })?;
        let action = if with_plaintext {
            "kms:GenerateDataKeyPair"
        } else {
            "kms:GenerateDataKeyPairWithoutPlaintext"
        };
        let resolved = self
            .resolve_or_create_managed(
                caller,
                &req.key_id,
                action,
                Some(&req.encryption_context),
                req.dry_run,
            )
            .await?;
        self.authorize(
            caller,
            AuthzRequest::on_key(action, &resolved)
                .context(&req.encryption_context)
                .with("kms:DataKeyPairSpec", CtxValue::one(spec_name.as_str()))
                .with(
                    "kms:EncryptionAlgorithm",
                    CtxValue::one("SYMMETRIC_DEFAULT"),
                ),
        )?;
        check_state(&resolved.key, StateClass::Use)?;
        let r = &resolved.key.record;
        if r.key_spec != super::keys::SYMMETRIC_DEFAULT || r.key_usage != ENCRYPT_DECRYPT {
            return Err(KmsError::InvalidKeyUsage(format!(
                "{} key usage is {} and spec {}; data key pairs need a symmetric ENCRYPT_DECRYPT key.",
                resolved.key.arn, r.key_usage, r.key_spec
            )));
        }
        super::end_dry_run(req.dry_run)?;
        let object = resolved.key.current_object();
        super::record::key_version(object.version());
        let crate::hsm::DataKeyPair {
            pkcs8,
            spki: public_key,
            sealed,
        } = self
            .hsm
            .generate_data_key_pair(pair, object, aad_builder(object, canonical_ctx))
            .await?;
        Ok(DataKeyPairResponse {
            private_key_ciphertext_blob: blob_from(object, &sealed),
            private_key_plaintext: with_plaintext.then_some(pkcs8),
            public_key,
            key_id: resolved.key.arn.clone(),
            key_pair_spec: spec_name,
            key_material_id: key_material_id(object),
        })
    }
}
