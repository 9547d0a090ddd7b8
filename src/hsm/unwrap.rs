//! Import of key material (BYOK): RSA wrapping key pairs and on-device unwrap.
//!
//! - **Wrapping key pairs.** One fresh RSA key pair per GetParametersForImport. The private
//!   key is a token object (sensitive, never extractable, `CKA_UNWRAP` only, allowed mechanism
//!   `CKM_RSA_PKCS_OAEP`) with its own `CKA_ID` scheme ([`WrappingKeyId`]: 24 bytes, so it can
//!   never be read as a 20-byte key-version [`ObjectId`]) and label `p11kms/import/<uuid>`.
//!   The public key is a session object, read once (modulus, exponent) and destroyed; the
//!   caller gets a DER SubjectPublicKeyInfo built here.
//! - **Unwrap.** `RSAES_OAEP_*`: `C_UnwrapKey(CKM_RSA_PKCS_OAEP)` straight into a key object.
//!   `RSA_AES_KEY_WRAP_*`: the first modulus-length bytes are OAEP-unwrapped into a session
//!   AES key (`CKA_UNWRAP` only), which then unwraps the rest with `CKM_AES_KEY_WRAP_PAD`
//!   (RFC 5649); the session AES key is destroyed. The material never leaves the device.
//! - **Checks before the token object.** Every import first unwraps into a *session* copy,
//!   checks its length and computes a check value with it on the device (AES: AES-GCM of an
//!   HSM-random block under an HSM-random IV; HMAC: the MAC of an HSM-random message). A
//!   re-import must reproduce the stored check value (constant-time comparison); only then
//!   is the token object created (unwrapped again from the same blob). The session copy is
//!   destroyed in the same job. A bad input therefore never leaves an object behind.

use crate::redact::redacted_debug;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use subtle::ConstantTimeEq;

use super::asym::{self, destroy_quietly};
use super::call::Call;
use super::error::{HsmError, HsmErrorKind};
use super::mac::MacAlg;
use super::objects::ObjectId;
use super::pool::WorkerCtx;
use super::template::{Template, Usage};

/// Prefix of a wrapping key's 24-byte `CKA_ID`.
const WRAPPING_ID_PREFIX: &[u8; 8] = b"p11kmsIW";
/// Label prefix of wrapping keys.
pub const WRAPPING_LABEL_PREFIX: &str = "p11kms/import/";

/// Identity of one import wrapping key pair (a UUID); `CKA_ID` = `p11kmsIW` || uuid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WrappingKeyId(pub [u8; 16]);

impl WrappingKeyId {
    /// The 24-byte `CKA_ID`.
    pub fn cka_id(&self) -> Vec<u8> {
        let mut v = WRAPPING_ID_PREFIX.to_vec();
        v.extend_from_slice(&self.0);
        v
    }

    /// Parses a `CKA_ID` of the wrapping-key shape.
    pub fn from_cka_id(id: &[u8]) -> Option<WrappingKeyId> {
        let rest = id.strip_prefix(WRAPPING_ID_PREFIX.as_slice())?;
        Some(WrappingKeyId(rest.try_into().ok()?))
    }

    /// `p11kms/import/<uuid>`.
    pub fn label(&self) -> String {
        format!(
            "{WRAPPING_LABEL_PREFIX}{}",
            uuid::Uuid::from_bytes(self.0).hyphenated()
        )
    }
}

/// AWS wrapping algorithms p11kms accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WrappingAlgorithm {
    /// RSA-OAEP, SHA-1 and MGF1-SHA-1, directly over the material.
    RsaesOaepSha1,
    /// RSA-OAEP, SHA-256 and MGF1-SHA-256, directly over the material.
    RsaesOaepSha256,
    /// RSA-OAEP(SHA-1) of an ephemeral AES-256 key, then RFC 5649 of the material.
    RsaAesKeyWrapSha1,
    /// RSA-OAEP(SHA-256) of an ephemeral AES-256 key, then RFC 5649 of the material.
    RsaAesKeyWrapSha256,
}

impl WrappingAlgorithm {
    /// Parses the AWS name.
    pub fn parse(s: &str) -> Option<WrappingAlgorithm> {
        Some(match s {
            "RSAES_OAEP_SHA_1" => WrappingAlgorithm::RsaesOaepSha1,
            "RSAES_OAEP_SHA_256" => WrappingAlgorithm::RsaesOaepSha256,
            "RSA_AES_KEY_WRAP_SHA_1" => WrappingAlgorithm::RsaAesKeyWrapSha1,
            "RSA_AES_KEY_WRAP_SHA_256" => WrappingAlgorithm::RsaAesKeyWrapSha256,
            _ => return None,
        })
    }

    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            WrappingAlgorithm::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            WrappingAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
            WrappingAlgorithm::RsaAesKeyWrapSha1 => "RSA_AES_KEY_WRAP_SHA_1",
            WrappingAlgorithm::RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
        }
    }

    fn sha256(self) -> bool {
        matches!(
            self,
            WrappingAlgorithm::RsaesOaepSha256 | WrappingAlgorithm::RsaAesKeyWrapSha256
        )
    }

    fn two_step(self) -> bool {
        matches!(
            self,
            WrappingAlgorithm::RsaAesKeyWrapSha1 | WrappingAlgorithm::RsaAesKeyWrapSha256
        )
    }

    fn oaep(self) -> Mechanism<'static> {
        let (hash, mgf) = if self.sha256() {
            (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256)
        } else {
            (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1)
        };
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
    }
}

/// What the imported material becomes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MaterialKind {
    /// SYMMETRIC_DEFAULT: an AES-256 key with the CMK template (exactly 32 bytes).
    Aes256,
    /// HMAC_224/256/384/512: a generic secret with the HMAC template.
    Hmac(HmacSpec),
}

/// An HMAC key spec.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HmacSpec {
    Hmac224,
    Hmac256,
    Hmac384,
    Hmac512,
}

impl HmacSpec {
    /// Parses `HMAC_224` ... `HMAC_512`.
    pub fn parse(spec: &str) -> Option<HmacSpec> {
        Some(match spec {
            "HMAC_224" => HmacSpec::Hmac224,
            "HMAC_256" => HmacSpec::Hmac256,
            "HMAC_384" => HmacSpec::Hmac384,
            "HMAC_512" => HmacSpec::Hmac512,
            _ => return None,
        })
    }

    /// The HMAC algorithm of keys of this spec (its mechanisms).
    fn alg(self) -> MacAlg {
        match self {
            HmacSpec::Hmac224 => MacAlg::Sha224,
            HmacSpec::Hmac256 => MacAlg::Sha256,
            HmacSpec::Hmac384 => MacAlg::Sha384,
            HmacSpec::Hmac512 => MacAlg::Sha512,
        }
    }

    /// Accepted material lengths in bytes (AWS: digest length up to the hash's block size).
    pub fn material_len(self) -> (usize, usize) {
        match self {
            HmacSpec::Hmac224 => (28, 64),
            HmacSpec::Hmac256 => (32, 64),
            HmacSpec::Hmac384 => (48, 128),
            HmacSpec::Hmac512 => (64, 128),
        }
    }
}

impl MaterialKind {
    fn len_range(self) -> (usize, usize) {
        match self {
            MaterialKind::Aes256 => (32, 32),
            MaterialKind::Hmac(h) => h.material_len(),
        }
    }
}

/// A check value computed on the device with the material (not secret: a known-plaintext
/// pair under the key, like a classic key check value).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MaterialCheck {
    /// AES-GCM IV (AES) or empty (HMAC).
    pub iv: Vec<u8>,
    /// The HSM-random input.
    pub message: Vec<u8>,
    /// AES-GCM ciphertext and tag, or the MAC.
    pub value: Vec<u8>,
}

impl MaterialCheck {
    /// Serialises as `u16 len || iv || u16 len || message || value`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for part in [&self.iv, &self.message] {
            v.extend_from_slice(&(part.len() as u16).to_be_bytes());
            v.extend_from_slice(part);
        }
        v.extend_from_slice(&self.value);
        v
    }

    /// Parses [`MaterialCheck::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<MaterialCheck> {
        let mut rest = b;
        let mut take = || -> Option<Vec<u8>> {
            let (len, r) = rest.split_first_chunk::<2>()?;
            let len = u16::from_be_bytes(*len) as usize;
            if r.len() < len {
                return None;
            }
            let (part, r) = r.split_at(len);
            rest = r;
            Some(part.to_vec())
        };
        let iv = take()?;
        let message = take()?;
        Some(MaterialCheck {
            iv,
            message,
            value: rest.to_vec(),
        })
    }
}

/// One ImportKeyMaterial job. `Debug` leaves out the wrapped material.
pub struct ImportJob {
    /// The wrapping key the import token names.
    pub wrapping_key: WrappingKeyId,
    /// How the material is wrapped.
    pub algorithm: WrappingAlgorithm,
    /// The wrapped material as the caller sent it.
    pub wrapped: Vec<u8>,
    /// The key-version object the material becomes.
    pub target: ObjectId,
    /// AES or HMAC.
    pub kind: MaterialKind,
    /// The check value of earlier imports: the new material must reproduce it.
    pub expected: Option<MaterialCheck>,
    /// Create the token object (false when the same material is already on the token).
    pub create_object: bool,
}

redacted_debug!(ImportJob {
    wrapping_key,
    algorithm,
    target,
    kind,
    create_object,
    ..
});

/// The result of a wrapping-key generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrappingKeyOutcome {
    /// The key pair exists; the public key as DER SubjectPublicKeyInfo.
    Created(Vec<u8>),
    /// The token cannot unwrap with RSA-OAEP over SHA-256 (SoftHSM2 2.6 accepts only SHA-1);
    /// nothing was kept.
    OaepSha256Unsupported,
}

/// The result of an import job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The material is on the token (or was already); its check value.
    Imported(MaterialCheck),
    /// The unwrapped material has the wrong length for the key spec (nothing kept).
    WrongLength(usize),
    /// A re-import with different material (nothing kept).
    Mismatch,
}

// ------------------------------------------------------------------------------- templates

/// The wrapping private key as a session object: `CKA_TOKEN` false, no `CKA_ID`, a pending
/// label; [`persist_wrapping_key`] copies it to the token with its id and label.
pub(crate) fn wrapping_private_template() -> Vec<Attribute> {
    Template::private(KeyType::RSA)
        .token(false)
        .guarded()
        .allow(Usage::Unwrap)
        .mechanisms(vec![MechanismType::RSA_PKCS_OAEP])
        .label(format!("{}-wrapping", asym::PENDING_LABEL_PREFIX))
        .build()
}

/// The wrapping public key: a session object, read once and destroyed.
pub(crate) fn wrapping_public_template(bits: u32) -> Vec<Attribute> {
    Template::public(KeyType::RSA)
        .token(false)
        .private_object(false)
        .allow(Usage::Encrypt)
        .token_default(&[Usage::VerifyRecover, Usage::Derive])
        .with(Attribute::ModulusBits(u64::from(bits).into()))
        .with(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]))
        .build()
}

/// The target (token) or check-copy (session) template of imported material. For AES it is
/// the CMK template without `CKA_VALUE_LEN` (set by the unwrap); for HMAC the shared HMAC
/// template of the issue-7 contract, likewise without `CKA_VALUE_LEN`.
pub(crate) fn material_template(
    kind: MaterialKind,
    target: &ObjectId,
    token: bool,
) -> Vec<Attribute> {
    let (key_type, mechanism, encrypt, sign) = match kind {
        MaterialKind::Aes256 => (KeyType::AES, MechanismType::AES_GCM, true, false),
        MaterialKind::Hmac(h) => (
            KeyType::GENERIC_SECRET,
            h.alg().mechanism_type(),
            false,
            true,
        ),
    };
    let t = Template::secret(key_type)
        .token(token)
        .guarded()
        .allow_if(Usage::Encrypt, encrypt)
        .allow_if(Usage::Decrypt, encrypt)
        .allow_if(Usage::Sign, sign)
        .allow_if(Usage::Verify, sign)
        .mechanisms(vec![mechanism]);
    if token {
        t.id(&target.0).label(target.label()).build()
    } else {
        t.label("p11kms/import-check").build()
    }
}

/// The session AES key of the two-step RSA_AES_KEY_WRAP unwrap: may only unwrap.
pub(crate) fn ephemeral_aes_template() -> Vec<Attribute> {
    Template::secret(KeyType::AES)
        .token(false)
        .guarded()
        .allow(Usage::Unwrap)
        .mechanisms(vec![MechanismType::AES_KEY_WRAP_PAD])
        .label("p11kms/import-ephemeral")
        .build()
}

// ------------------------------------------------------------------------------- helpers

fn find_wrapping_key(ctx: &mut WorkerCtx, id: &WrappingKeyId) -> Result<ObjectHandle, HsmError> {
    let search = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Id(id.cka_id()),
    ];
    let clash = |n| format!("{n} objects share the CKA_ID of {}", id.label());
    super::ops::find_unique(ctx, &search, clash)?.ok_or_else(|| {
        HsmError::not_found(
            ctx.token(),
            format!("no import wrapping key {}", id.label()),
        )
    })
}

/// A failed unwrap of a caller's blob: on a healthy device the blob is bad
/// ([`HsmErrorKind::AuthFailed`] -> InvalidCiphertextException), otherwise the device is.
fn classify_unwrap_failure(ctx: &mut WorkerCtx, e: &CkError) -> HsmError {
    let mut err = super::error::from_cryptoki(Call::UnwrapKey.name(), ctx.token(), e);
    let blob_like = matches!(
        e,
        CkError::Pkcs11(
            RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::KeySizeRange
                | RvError::TemplateInconsistent,
            _
        )
    );
    if !blob_like {
        return ctx.fail(Call::UnwrapKey, e);
    }
    let healthy = super::ops::session_logged_in(ctx);
    if healthy {
        err.kind = HsmErrorKind::AuthFailed;
        err.detail = Some("the wrapped key material could not be unwrapped".into());
    } else {
        err.kind = HsmErrorKind::Unavailable;
        err.detail = Some("unwrap failed and the session probe failed".into());
    }
    err
}

fn unwrap_once(
    ctx: &mut WorkerCtx,
    mechanism: &Mechanism<'_>,
    key: ObjectHandle,
    wrapped: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let r = ctx.call_raw(Call::UnwrapKey, |s| {
        s.unwrap_key(mechanism, key, wrapped, template)
    });
    r.map_err(|e| classify_unwrap_failure(ctx, &e))
}

/// Unwraps the caller's blob into a new object with `template` (one or two steps).
fn unwrap_material(
    ctx: &mut WorkerCtx,
    rsa: ObjectHandle,
    modulus_len: usize,
    job: &ImportJob,
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let oaep = job.algorithm.oaep();
    if !job.algorithm.two_step() {
        return unwrap_once(ctx, &oaep, rsa, &job.wrapped, template);
    }
    if job.wrapped.len() <= modulus_len {
        return Err(HsmError::new(
            HsmErrorKind::AuthFailed,
            "C_UnwrapKey",
            ctx.token(),
            "the wrapped key material is shorter than the RSA modulus plus an AES key wrap",
        ));
    }
    let (rsa_part, aes_part) = job.wrapped.split_at(modulus_len);
    let ephemeral = unwrap_once(ctx, &oaep, rsa, rsa_part, &ephemeral_aes_template())?;
    let r = unwrap_once(
        ctx,
        &Mechanism::AesKeyWrapPad,
        ephemeral,
        aes_part,
        template,
    );
    destroy_quietly(ctx, &[ephemeral], "ephemeral AES key");
    r
}

fn value_len(ctx: &mut WorkerCtx, h: ObjectHandle) -> Result<usize, HsmError> {
    let len = |a| match a {
        Attribute::ValueLen(n) => Some(u64::from(n) as usize),
        _ => None,
    };
    let missing = "the unwrapped key has no CKA_VALUE_LEN";
    super::ops::read_attribute(ctx, h, AttributeType::ValueLen, len, missing)
}

fn random_bytes(ctx: &mut WorkerCtx, n: usize) -> Result<Vec<u8>, HsmError> {
    let mut v = vec![0u8; n];
    ctx.call(Call::GenerateRandom, |s| s.generate_random_slice(&mut v))?;
    Ok(v)
}

/// Computes the check value of `key` (fresh HSM-random inputs unless `like` gives them).
/// `Ok(None)` when the device refuses the key for its length (AES takes 16, 24 or 32 bytes).
pub(crate) fn check_value(
    ctx: &mut WorkerCtx,
    kind: MaterialKind,
    key: ObjectHandle,
    like: Option<&MaterialCheck>,
) -> Result<Option<MaterialCheck>, HsmError> {
    match kind {
        MaterialKind::Aes256 => {
            let (mut iv, message) = match like {
                Some(c) => (c.iv.clone(), c.message.clone()),
                None => (random_bytes(ctx, 12)?, random_bytes(ctx, 16)?),
            };
            let iv_copy = iv.clone();
            let params = GcmParams::new(&mut iv, &[], 128.into()).map_err(|e| {
                HsmError::new(
                    HsmErrorKind::Other,
                    "C_EncryptInit",
                    ctx.token(),
                    format!("bad GCM parameters: {e}"),
                )
            })?;
            let value = match ctx.call_raw(Call::Encrypt, |s| {
                s.encrypt(&Mechanism::AesGcm(params), key, &message)
            }) {
                Ok(value) => value,
                Err(CkError::Pkcs11(RvError::KeySizeRange | RvError::KeyTypeInconsistent, _)) => {
                    return Ok(None)
                }
                Err(e) => return Err(ctx.fail(Call::Encrypt, &e)),
            };
            Ok(Some(MaterialCheck {
                iv: iv_copy,
                message,
                value,
            }))
        }
        MaterialKind::Hmac(h) => {
            let message = match like {
                Some(c) => c.message.clone(),
                None => random_bytes(ctx, 32)?,
            };
            let value = ctx.call(Call::Sign, |s| s.sign(&h.alg().mechanism(), key, &message))?;
            Ok(Some(MaterialCheck {
                iv: Vec::new(),
                message,
                value,
            }))
        }
    }
}

// ------------------------------------------------------------------------------- operations

/// Generates a wrapping key pair of `bits` as session objects (no token file is written, so
/// this slow step runs alongside other jobs); returns the public key as DER SPKI and, when
/// created, the session private key for [`persist_wrapping_key`].
pub(crate) fn generate_wrapping_key(
    ctx: &mut WorkerCtx,
    bits: u32,
    sha256: bool,
) -> Result<(WrappingKeyOutcome, Option<ObjectHandle>), HsmError> {
    if sha256 && super::oaep::sha256_support(ctx)? == super::OaepSha256::RawRsa {
        return Ok((WrappingKeyOutcome::OaepSha256Unsupported, None));
    }
    let (public_t, private_t) = (wrapping_public_template(bits), wrapping_private_template());
    let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_t, &private_t)
    })?;
    let wanted = [AttributeType::Modulus, AttributeType::PublicExponent];
    let attrs = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(public, &wanted)
    });
    destroy_quietly(ctx, &[public], "wrapping public key");
    let attrs = match attrs {
        Ok(a) => a,
        Err(e) => {
            destroy_quietly(ctx, &[private], "wrapping private key");
            return Err(e);
        }
    };
    let mut modulus = None;
    let mut exponent = None;
    for a in attrs {
        match a {
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
        destroy_quietly(ctx, &[private], "wrapping private key");
        return Err(HsmError::new(
            HsmErrorKind::Other,
            "C_GetAttributeValue",
            ctx.token(),
            "the RSA public key has no modulus or exponent",
        ));
    };
    Ok((
        WrappingKeyOutcome::Created(super::der::rsa_spki(&modulus, &exponent)),
        Some(private),
    ))
}

/// Copies the session wrapping private key `private` to the token as wrapping key `id` and
/// destroys the session object whatever happens.
pub(crate) fn persist_wrapping_key(
    ctx: &mut WorkerCtx,
    id: WrappingKeyId,
    private: ObjectHandle,
) -> Result<(), HsmError> {
    let r = asym::copy_to_token(ctx, private, id.cka_id(), id.label().into_bytes());
    destroy_quietly(ctx, &[private], "session wrapping private key");
    r?;
    tracing::debug!(token = %ctx.token(), object = %id.label(), "import wrapping key generated");
    Ok(())
}

/// Destroys a wrapping private key; `ObjectNotFound` if absent.
pub(crate) fn destroy_wrapping_key(ctx: &mut WorkerCtx, id: WrappingKeyId) -> Result<(), HsmError> {
    let h = find_wrapping_key(ctx, &id)?;
    ctx.call(Call::DestroyObject, |s| s.destroy_object(h))?;
    tracing::debug!(token = %ctx.token(), object = %id.label(), "import wrapping key destroyed");
    Ok(())
}

/// The custody attributes of wrapping private key `id` (tests read them back).
#[cfg(test)]
pub(crate) fn wrapping_key_attributes(
    ctx: &mut WorkerCtx,
    id: WrappingKeyId,
) -> Result<super::KeyAttributes, HsmError> {
    let h = find_wrapping_key(ctx, &id)?;
    let attrs = super::ops::custody_attributes(ctx, h)?;
    Ok(super::ops::key_attributes_from(attrs))
}

fn modulus_len(ctx: &mut WorkerCtx, rsa: ObjectHandle) -> Result<usize, HsmError> {
    let len = |a| match a {
        Attribute::Modulus(m) => Some(m.len()),
        _ => None,
    };
    let missing = "the wrapping key has no modulus";
    super::ops::read_attribute(ctx, rsa, AttributeType::Modulus, len, missing)
}

/// Runs one import: session copy, length check, check value, then the token object.
pub(crate) fn import_material(
    ctx: &mut WorkerCtx,
    job: ImportJob,
) -> Result<ImportOutcome, HsmError> {
    let rsa = find_wrapping_key(ctx, &job.wrapping_key)?;
    let k = modulus_len(ctx, rsa)?;
    let copy_template = material_template(job.kind, &job.target, false);
    let copy = unwrap_material(ctx, rsa, k, &job, &copy_template)?;
    let outcome = check_copy(ctx, &job, k, copy);
    destroy_quietly(ctx, &[copy], "import check copy");
    let outcome = outcome?;
    if !(job.create_object && matches!(outcome, ImportOutcome::Imported(_))) {
        return Ok(outcome);
    }
    super::ops::refuse_known_id(ctx, &job.target, "C_UnwrapKey")?;
    let template = material_template(job.kind, &job.target, true);
    let h = unwrap_material(ctx, rsa, k, &job, &template)?;
    ctx.shared.handles.insert(job.target, h);
    tracing::debug!(token = %ctx.token(), object = %job.target, "imported key material unwrapped");
    Ok(outcome)
}

/// [`import_material`] in wrapped residency (issue 19): the material is unwrapped into a
/// session object with the wrapped-key custody attributes, checked as above, then wrapped
/// under the current trusted master and tagged for the target on the device; that session
/// object stays in the worker's cache. No token object is made. The blob comes back only
/// when `create_object` and the import succeeded; otherwise the copy is destroyed.
pub(crate) fn import_material_wrapped(
    ctx: &mut WorkerCtx,
    job: ImportJob,
) -> Result<(ImportOutcome, Option<super::WrappedBlob>), HsmError> {
    let rsa = find_wrapping_key(ctx, &job.wrapping_key)?;
    let k = modulus_len(ctx, rsa)?;
    let kind = match job.kind {
        MaterialKind::Aes256 => super::BlobKind::Aes256,
        MaterialKind::Hmac(h) => super::BlobKind::Hmac(h.alg()),
    };
    let copy = unwrap_material(ctx, rsa, k, &job, &kind.template(false))?;
    match check_copy(ctx, &job, k, copy) {
        Ok(outcome @ ImportOutcome::Imported(_)) if job.create_object => {
            let blob = super::wrapped::adopt(ctx, job.target, copy, kind)?;
            tracing::debug!(token = %ctx.token(), object = %job.target, "imported key material wrapped");
            Ok((outcome, Some(blob)))
        }
        other => {
            destroy_quietly(ctx, &[copy], "import check copy");
            Ok((other?, None))
        }
    }
}

/// The checks of an import on its session copy: length, then the check value (compared with
/// the expected one of a re-import).
fn check_copy(
    ctx: &mut WorkerCtx,
    job: &ImportJob,
    k: usize,
    copy: ObjectHandle,
) -> Result<ImportOutcome, HsmError> {
    let (min, max) = job.kind.len_range();
    // SoftHSM2 neither sets CKA_VALUE_LEN on an unwrapped key nor accepts it in the
    // unwrap template; use it where the token reports it, else bound the length by the
    // RFC 5649 part (8 + the material padded to 8 bytes) when there is one.
    let len = value_len(ctx, copy)?;
    if len > 0 && (len < min || len > max) {
        return Ok(ImportOutcome::WrongLength(len));
    }
    if len == 0 && job.algorithm.two_step() {
        let padded = job.wrapped.len().saturating_sub(k + 8);
        if padded < min || padded.saturating_sub(7) > max {
            return Ok(ImportOutcome::WrongLength(padded));
        }
    }
    let Some(check) = check_value(ctx, job.kind, copy, job.expected.as_ref())? else {
        return Ok(ImportOutcome::WrongLength(len));
    };
    if let Some(expected) = &job.expected {
        if !bool::from(check.value.ct_eq(&expected.value)) {
            return Ok(ImportOutcome::Mismatch);
        }
    }
    Ok(ImportOutcome::Imported(check))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_ids_never_look_like_key_versions() {
        let id = WrappingKeyId([9; 16]);
        assert_eq!(id.cka_id().len(), 24);
        assert!(ObjectId::from_bytes(&id.cka_id()).is_none());
        assert_eq!(WrappingKeyId::from_cka_id(&id.cka_id()), Some(id));
        assert!(id.label().starts_with(WRAPPING_LABEL_PREFIX));
    }

    #[test]
    fn check_values_round_trip() {
        let c = MaterialCheck {
            iv: vec![1; 12],
            message: vec![2; 16],
            value: vec![3; 32],
        };
        assert_eq!(MaterialCheck::from_bytes(&c.to_bytes()), Some(c));
        assert_eq!(MaterialCheck::from_bytes(&[0, 5, 1]), None);
    }
}
