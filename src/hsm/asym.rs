//! Asymmetric CMKs on the device: RSA and EC key pairs, signatures, RSA-OAEP, public keys,
//! and data key pairs.
//!
//! - **Objects.** A key pair CMK version is two token objects sharing `CKA_ID` = [`ObjectId`]
//!   and `CKA_LABEL` = [`ObjectId::label`]: the private key (private, sensitive, never
//!   extractable, only `CKA_SIGN` or only `CKA_DECRYPT`, `CKA_ALLOWED_MECHANISMS` set) and the
//!   public key (only `CKA_VERIFY` or only `CKA_ENCRYPT`). Handles are cached per
//!   ([`ObjectId`], [`Part`]).
//! - **Signing.** The daemon hashes; the device signs the digest with `CKM_RSA_PKCS_PSS`
//!   (salt = digest length, MGF1 with the same hash), `CKM_RSA_PKCS` over a `DigestInfo`, or
//!   `CKM_ECDSA` (raw `r || s`, converted to DER). Verification runs `C_Verify` on the public
//!   object.
//! - **Data key pairs.** Generated as session objects (private part extractable: it is
//!   returned), read back into `Zeroizing` buffers, assembled as PKCS#8, destroyed, and the
//!   PKCS#8 sealed under a symmetric CMK, all in one job.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};
use zeroize::Zeroizing;

use super::call::Call;
use super::der;
use super::error::{HsmError, HsmErrorKind};
use super::oaep::OaepSha256;
use super::objects::{ObjectId, Part};
use super::ops::{self, with_copy, with_part};
use super::pool::WorkerCtx;
use super::template::{Template, Usage};
use super::{GcmSealed, KeyAttributes};

/// A data key pair: the private key as PKCS#8 DER, the public key as SPKI DER, and the PKCS#8
/// sealed under a symmetric CMK. `Debug` never prints the private key.
pub struct DataKeyPair {
    /// PKCS#8 `PrivateKeyInfo` DER.
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// `SubjectPublicKeyInfo` DER.
    pub spki: Vec<u8>,
    /// The PKCS#8 sealed with AES-256-GCM under the CMK.
    pub sealed: GcmSealed,
}

impl std::fmt::Debug for DataKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyPair")
            .field("pkcs8", &"<redacted>")
            .field("spki_len", &self.spki.len())
            .finish_non_exhaustive()
    }
}

/// An elliptic curve p11kms can generate keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// SECG secp256k1.
    Secp256k1,
}

impl Curve {
    /// DER of the curve's named-curve OID (`CKA_EC_PARAMS`).
    pub fn oid_der(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            Curve::Secp256k1 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
        }
    }

    /// Bytes of a field element (and of each half of a raw ECDSA signature).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The OpenSSL name of the curve (for messages).
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "prime256v1",
            Curve::P384 => "secp384r1",
            Curve::P521 => "secp521r1",
            Curve::Secp256k1 => "secp256k1",
        }
    }
}

/// The shape of a key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairSpec {
    /// RSA with this modulus size in bits (public exponent 65537).
    Rsa(u32),
    /// EC on this curve.
    Ec(Curve),
    /// Ed25519 (`CKK_EC_EDWARDS` on edwards25519; pure EdDSA signatures).
    Ed25519,
}

/// What the private half of a CMK key pair may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairUsage {
    /// Sign (public half: verify).
    Sign,
    /// Decrypt with RSA-OAEP (public half: encrypt).
    Decrypt,
    /// ECDH key agreement (`CKM_ECDH1_DERIVE` with the private half; public half: nothing).
    KeyAgreement,
}

/// A SHA hash used by a signature or OAEP scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaAlg {
    /// SHA-1 (OAEP only).
    Sha1,
    /// SHA-256
    Sha256,
    /// SHA-384
    Sha384,
    /// SHA-512
    Sha512,
}

impl ShaAlg {
    fn mechanism(self) -> MechanismType {
        match self {
            ShaAlg::Sha1 => MechanismType::SHA1,
            ShaAlg::Sha256 => MechanismType::SHA256,
            ShaAlg::Sha384 => MechanismType::SHA384,
            ShaAlg::Sha512 => MechanismType::SHA512,
        }
    }

    fn mgf(self) -> PkcsMgfType {
        match self {
            ShaAlg::Sha1 => PkcsMgfType::MGF1_SHA1,
            ShaAlg::Sha256 => PkcsMgfType::MGF1_SHA256,
            ShaAlg::Sha384 => PkcsMgfType::MGF1_SHA384,
            ShaAlg::Sha512 => PkcsMgfType::MGF1_SHA512,
        }
    }
}

/// A signature scheme over a digest computed by the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignScheme {
    /// RSASSA-PSS, salt = digest length, MGF1 with the same hash.
    RsaPss(ShaAlg),
    /// RSASSA-PKCS1-v1_5 (the device signs `DigestInfo || digest` with `CKM_RSA_PKCS`).
    RsaPkcs1,
    /// ECDSA on this curve; signatures are DER `Ecdsa-Sig-Value`.
    Ecdsa(Curve),
    /// Pure Ed25519 (`CKM_EDDSA` without parameters) over the message itself; signatures are
    /// the raw 64 bytes.
    Ed25519,
}

// ---------------------------------------------------------------- templates

/// `CKA_ALLOWED_MECHANISMS` of a CMK pair. RSA decryption keys get the raw RSA mechanism
/// only on a device without OAEP-SHA-256 (`oaep`; see `oaep.rs`).
fn allowed(spec: PairSpec, usage: PairUsage, oaep: OaepSha256) -> Vec<MechanismType> {
    match (spec, usage) {
        (PairSpec::Rsa(_), PairUsage::Sign) => {
            vec![MechanismType::RSA_PKCS_PSS, MechanismType::RSA_PKCS]
        }
        (PairSpec::Rsa(_), PairUsage::Decrypt) => match oaep {
            OaepSha256::Device => vec![MechanismType::RSA_PKCS_OAEP],
            OaepSha256::RawRsa => vec![MechanismType::RSA_PKCS_OAEP, MechanismType::RSA_X_509],
        },
        // Never created: RSA keys do not agree keys (specs::usages).
        (PairSpec::Rsa(_), PairUsage::KeyAgreement) => Vec::new(),
        (PairSpec::Ec(_), PairUsage::KeyAgreement) => vec![MechanismType::ECDH1_DERIVE],
        (PairSpec::Ec(_), _) => vec![MechanismType::ECDSA],
        (PairSpec::Ed25519, PairUsage::Sign) => vec![MechanismType::EDDSA],
        // Never created: Ed25519 keys only sign (specs::usages).
        (PairSpec::Ed25519, _) => Vec::new(),
    }
}

fn key_type(spec: PairSpec) -> KeyType {
    match spec {
        PairSpec::Rsa(_) => KeyType::RSA,
        PairSpec::Ec(_) => KeyType::EC,
        PairSpec::Ed25519 => KeyType::EC_EDWARDS,
    }
}

fn shape(spec: PairSpec) -> Vec<Attribute> {
    match spec {
        PairSpec::Rsa(bits) => vec![
            Attribute::ModulusBits(u64::from(bits).into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        ],
        PairSpec::Ec(c) => vec![Attribute::EcParams(c.oid_der().to_vec())],
        PairSpec::Ed25519 => vec![Attribute::EcParams(der::OID_ED25519.to_vec())],
    }
}

/// The mechanism and the (public, private) token templates of a CMK key pair `id`: what
/// CreateKey's generation and copy produce. The raw benchmark makes the same object kind.
/// `oaep` matters for RSA decryption pairs only.
pub(crate) fn cmk_pair_generation(
    id: &ObjectId,
    spec: PairSpec,
    usage: PairUsage,
    oaep: OaepSha256,
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let mech = match spec {
        PairSpec::Rsa(_) => Mechanism::RsaPkcsKeyPairGen,
        PairSpec::Ec(_) => Mechanism::EccKeyPairGen,
        PairSpec::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
    };
    (
        mech,
        cmk_public_template(id, spec, usage, oaep),
        cmk_private_template(id, spec, usage, oaep),
    )
}

/// A template of `spec`'s key type plus its shape (modulus size and exponent, or curve).
fn shaped(t: Template, spec: PairSpec) -> Template {
    shape(spec).into_iter().fold(t, Template::with)
}

fn cmk_public_template(
    id: &ObjectId,
    spec: PairSpec,
    usage: PairUsage,
    oaep: OaepSha256,
) -> Vec<Attribute> {
    let t = Template::public(key_type(spec))
        .token(true)
        .private_object(false)
        .allow_if(Usage::Verify, usage == PairUsage::Sign)
        .allow_if(Usage::Encrypt, usage == PairUsage::Decrypt)
        .token_default(&[Usage::VerifyRecover])
        .mechanisms(allowed(spec, usage, oaep))
        .id(&id.0)
        .label(id.label());
    shaped(t, spec).build()
}

fn cmk_private_template(
    id: &ObjectId,
    spec: PairSpec,
    usage: PairUsage,
    oaep: OaepSha256,
) -> Vec<Attribute> {
    Template::private(key_type(spec))
        .token(true)
        .guarded()
        .allow_if(Usage::Sign, usage == PairUsage::Sign)
        .allow_if(Usage::Decrypt, usage == PairUsage::Decrypt)
        .allow_if(Usage::Derive, usage == PairUsage::KeyAgreement)
        .token_default(&[Usage::SignRecover])
        .mechanisms(allowed(spec, usage, oaep))
        .id(&id.0)
        .label(id.label())
        .build()
}

/// The (public, private) session templates of a data key pair: the private half readable
/// (it is returned), both destroyed in the job that makes them.
pub(crate) fn data_key_pair_templates(spec: PairSpec) -> (Vec<Attribute>, Vec<Attribute>) {
    let label = "p11kms/data-key-pair";
    let public = Template::public(key_type(spec))
        .token(false)
        .private_object(false)
        .allow(Usage::Verify)
        .token_default(&[
            Usage::Encrypt,
            Usage::VerifyRecover,
            Usage::Wrap,
            Usage::Derive,
        ])
        .label(label);
    let private = Template::private(key_type(spec))
        .token(false)
        .readable()
        .allow(Usage::Sign)
        .token_default(&[
            Usage::Decrypt,
            Usage::SignRecover,
            Usage::Unwrap,
            Usage::Derive,
        ])
        .label(label);
    (shaped(public, spec).build(), private.build())
}

/// The session object an ECDH derivation on `curve` makes: a readable generic secret of the
/// field length, read and destroyed in the same job.
pub(crate) fn shared_secret_template(curve: Curve) -> Vec<Attribute> {
    Template::secret(KeyType::GENERIC_SECRET)
        .token(false)
        .readable()
        .value_len(curve.field_len())
        .label("p11kms/shared-secret")
        .token_default(&[
            Usage::Encrypt,
            Usage::Decrypt,
            Usage::Sign,
            Usage::Verify,
            Usage::Wrap,
            Usage::Unwrap,
            Usage::Derive,
        ])
        .build()
}

// ---------------------------------------------------------------- CMK key pairs

/// `CKA_LABEL` prefix of key pairs generated as session objects and not yet copied to the
/// token (they carry no `CKA_ID`, so no lookup by key id finds them; they never outlive the
/// request, and vanish with the session if the process dies).
pub const PENDING_LABEL_PREFIX: &str = "p11kms/keygen-pending";
const PENDING_LABEL: &[u8] = PENDING_LABEL_PREFIX.as_bytes();

/// A key pair generated as session objects of one worker's session, waiting to be copied to
/// the token by [`persist_key_pair`] (which destroys it).
#[derive(Debug)]
pub(crate) struct SessionPair {
    pub(crate) public: ObjectHandle,
    pub(crate) private: ObjectHandle,
}

/// The session-object form of a token template: `CKA_TOKEN` false, no `CKA_ID`, the pending
/// label; every custody and usage attribute unchanged.
pub(crate) fn as_session_template(t: Vec<Attribute>) -> Vec<Attribute> {
    t.into_iter()
        .filter(|a| !matches!(a, Attribute::Id(_)))
        .map(|a| match a {
            Attribute::Token(_) => Attribute::Token(false),
            Attribute::Label(_) => Attribute::Label(PENDING_LABEL.to_vec()),
            other => other,
        })
        .collect()
}

/// Copy the session object `h` to the token with `CKA_ID` = `id` and `CKA_LABEL` = `label`.
/// `C_CopyObject` keeps every other attribute, `CKA_ALWAYS_SENSITIVE` and
/// `CKA_NEVER_EXTRACTABLE` included (the custody tests read them back).
pub(crate) fn copy_to_token(
    ctx: &mut WorkerCtx,
    h: ObjectHandle,
    id: Vec<u8>,
    label: Vec<u8>,
) -> Result<ObjectHandle, HsmError> {
    let changes = [
        Attribute::Token(true),
        Attribute::Id(id),
        Attribute::Label(label),
    ];
    ctx.call(Call::CopyObject, |s| s.copy_object(h, &changes))
}

/// Destroy objects, logging (not returning) failures.
pub(crate) fn destroy_quietly(ctx: &mut WorkerCtx, handles: &[ObjectHandle], what: &str) {
    for h in handles {
        if let Err(err) = ctx.call(Call::DestroyObject, |s| s.destroy_object(*h)) {
            tracing::warn!(error = %err, what, "could not destroy an HSM object");
        }
    }
}

/// The private half of a wrapped-residency key pair (issue 19): the CMK private template's
/// usages and mechanisms, as a session object extractable only under trusted keys. Its key
/// type and mechanisms depend on `spec`'s family only (not the size or curve).
pub(crate) fn wrapped_private_template(
    spec: PairSpec,
    usage: PairUsage,
    oaep: OaepSha256,
) -> Vec<Attribute> {
    Template::private(key_type(spec))
        .allow_if(Usage::Sign, usage == PairUsage::Sign)
        .allow_if(Usage::Decrypt, usage == PairUsage::Decrypt)
        .allow_if(Usage::Derive, usage == PairUsage::KeyAgreement)
        .token_default(&[Usage::SignRecover])
        .mechanisms(allowed(spec, usage, oaep))
        .wrapped_session()
        .build()
}

/// The session public object of a wrapped-residency key pair (issue 19), made from the SPKI
/// the caller keeps: the CMK public template's usages and mechanisms with the key's modulus
/// and exponent, or curve and point. `None` unless `spki` is an RSA key or an EC key on a
/// supported curve.
pub(crate) fn public_template_from_spki(
    spki: &[u8],
    usage: PairUsage,
    oaep: OaepSha256,
) -> Option<Vec<Attribute>> {
    const CURVES: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];
    let (spec, key) = match der::rsa_from_spki(spki) {
        Some((n, e)) => (
            PairSpec::Rsa(0),
            vec![Attribute::Modulus(n), Attribute::PublicExponent(e)],
        ),
        None => {
            let (curve, point) = CURVES.iter().find_map(|c| {
                der::ec_point_from_spki(spki, c.oid_der(), c.field_len()).map(|p| (*c, p))
            })?;
            let params = Attribute::EcParams(curve.oid_der().to_vec());
            (
                PairSpec::Ec(curve),
                vec![params, Attribute::EcPoint(der::octets(&point).to_vec())],
            )
        }
    };
    let t = Template::public(key_type(spec))
        .token(false)
        .private_object(false)
        .allow_if(Usage::Verify, usage == PairUsage::Sign)
        .allow_if(Usage::Encrypt, usage == PairUsage::Decrypt)
        .token_default(&[Usage::VerifyRecover])
        .mechanisms(allowed(spec, usage, oaep));
    Some(key.into_iter().fold(t, Template::with).build())
}

/// A wrapped-residency key pair's first step: the pair generated as session objects (the
/// private half with [`wrapped_private_template`]), the public half read as SPKI and
/// destroyed. Returns the private handle, the SPKI and the OAEP variant of its mechanisms.
/// Touches session objects only (an `Unlocked` job).
pub(crate) fn generate_wrapped_pair(
    ctx: &mut WorkerCtx,
    spec: PairSpec,
    usage: PairUsage,
) -> Result<(ObjectHandle, Vec<u8>, OaepSha256), HsmError> {
    let oaep = match (spec, usage) {
        (PairSpec::Rsa(_), PairUsage::Decrypt) => super::oaep::sha256_support(ctx)?,
        _ => OaepSha256::Device,
    };
    let (mech, public_t, _) = cmk_pair_generation(&ObjectId([0; 20]), spec, usage, oaep);
    let public_t = as_session_template(public_t);
    let private_t = wrapped_private_template(spec, usage, oaep);
    let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
        s.generate_key_pair(&mech, &public_t, &private_t)
    })?;
    let spki = spki_of(ctx, public, spec);
    destroy_quietly(ctx, &[public], "wrapped pair's public half");
    match spki {
        Ok(spki) => Ok((private, spki, oaep)),
        Err(e) => {
            destroy_quietly(ctx, &[private], "wrapped pair's private half");
            Err(e)
        }
    }
}

/// Generate a CMK key pair as session objects (no token file is written, so this slow step
/// runs alongside other jobs); [`persist_key_pair`] then copies it to the token.
pub(crate) fn generate_session_pair(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    spec: PairSpec,
    usage: PairUsage,
) -> Result<SessionPair, HsmError> {
    if ctx.shared.handles.get_part(&id, Part::Private).is_some() {
        return Err(HsmError::new(
            HsmErrorKind::Other,
            "C_GenerateKeyPair",
            ctx.token(),
            format!("a key pair with the CKA_ID of {id} already exists"),
        ));
    }
    let oaep = match (spec, usage) {
        (PairSpec::Rsa(_), PairUsage::Decrypt) => super::oaep::sha256_support(ctx)?,
        _ => OaepSha256::Device,
    };
    let (mech, public_t, private_t) = cmk_pair_generation(&id, spec, usage, oaep);
    let (public_t, private_t) = (
        as_session_template(public_t),
        as_session_template(private_t),
    );
    let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
        s.generate_key_pair(&mech, &public_t, &private_t)
    })?;
    Ok(SessionPair { public, private })
}

/// Copy a session key pair to the token as the CMK key pair `id` (token objects with
/// `CKA_ID` = `id`), cache both handles, and destroy the session objects whatever happens.
/// A half copied before a failure is destroyed again: nothing partial stays on the token.
pub(crate) fn persist_key_pair(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    pair: SessionPair,
) -> Result<(), HsmError> {
    let label = id.label().into_bytes();
    let r = copy_to_token(ctx, pair.public, id.0.to_vec(), label.clone()).and_then(|public| {
        match copy_to_token(ctx, pair.private, id.0.to_vec(), label) {
            Ok(private) => Ok((public, private)),
            Err(e) => {
                destroy_quietly(ctx, &[public], "half-copied public key");
                Err(e)
            }
        }
    });
    destroy_quietly(ctx, &[pair.private, pair.public], "session key pair");
    let (public, private) = r?;
    ctx.shared.handles.insert_part(id, Part::Public, public);
    ctx.shared.handles.insert_part(id, Part::Private, private);
    tracing::debug!(token = %ctx.token(), object = %id, "HSM key pair generated");
    Ok(())
}

/// Destroy both halves of a key pair. Absent halves are skipped; `ObjectNotFound` only if
/// neither existed.
pub(crate) fn destroy_key_pair(ctx: &mut WorkerCtx, id: ObjectId) -> Result<(), HsmError> {
    let mut destroyed = 0;
    for part in [Part::Private, Part::Public] {
        super::ops::discard_copy(ctx, &id, part);
        let r = with_part(ctx, &id, part, |ctx, h| {
            ctx.call(Call::DestroyObject, |s| s.destroy_object(h))
        });
        ctx.shared.handles.evict_part(&id, part);
        match r {
            Ok(()) => destroyed += 1,
            Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {}
            Err(e) => return Err(e),
        }
    }
    if destroyed == 0 {
        return Err(HsmError::not_found(
            ctx.token(),
            format!("no key pair objects with the CKA_ID of {id}"),
        ));
    }
    tracing::debug!(token = %ctx.token(), object = %id, "HSM key pair destroyed");
    Ok(())
}

/// The custody attributes of one half of a key pair.
pub(crate) fn part_attributes(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    part: Part,
) -> Result<KeyAttributes, HsmError> {
    let attrs = with_part(ctx, &id, part, ops::custody_attributes)?;
    Ok(ops::key_attributes_from(attrs))
}

fn bytes_of(attrs: &[Attribute], want: AttributeType) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match (a, want) {
        (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::EcPoint(v), AttributeType::EcPoint) => Some(v.clone()),
        _ => None,
    })
}

pub(crate) fn spki_of(
    ctx: &mut WorkerCtx,
    h: ObjectHandle,
    spec: PairSpec,
) -> Result<Vec<u8>, HsmError> {
    let wanted: &[AttributeType] = match spec {
        PairSpec::Rsa(_) => &[AttributeType::Modulus, AttributeType::PublicExponent],
        PairSpec::Ec(_) | PairSpec::Ed25519 => &[AttributeType::EcPoint],
    };
    let attrs = ctx.call(Call::GetAttributeValue, |s| s.get_attributes(h, wanted))?;
    let bad = |ctx: &WorkerCtx, what: &str| {
        HsmError::new(
            HsmErrorKind::Other,
            "C_GetAttributeValue",
            ctx.token(),
            format!("the public key object has no usable {what}"),
        )
    };
    match spec {
        PairSpec::Rsa(_) => {
            let n =
                bytes_of(&attrs, AttributeType::Modulus).ok_or_else(|| bad(ctx, "CKA_MODULUS"))?;
            let e = bytes_of(&attrs, AttributeType::PublicExponent)
                .ok_or_else(|| bad(ctx, "CKA_PUBLIC_EXPONENT"))?;
            Ok(der::rsa_spki(&n, &e))
        }
        PairSpec::Ec(c) => {
            let raw =
                bytes_of(&attrs, AttributeType::EcPoint).ok_or_else(|| bad(ctx, "CKA_EC_POINT"))?;
            let point = der::ec_point_from_attr(&raw, c.field_len())
                .ok_or_else(|| bad(ctx, "CKA_EC_POINT"))?;
            Ok(der::ec_spki(c.oid_der(), &point))
        }
        PairSpec::Ed25519 => {
            let raw =
                bytes_of(&attrs, AttributeType::EcPoint).ok_or_else(|| bad(ctx, "CKA_EC_POINT"))?;
            let point =
                der::ed25519_point_from_attr(&raw).ok_or_else(|| bad(ctx, "CKA_EC_POINT"))?;
            Ok(der::ed25519_spki(&point))
        }
    }
}

/// DER `SubjectPublicKeyInfo` of a CMK key pair, from the public object's attributes.
pub(crate) fn public_key(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    spec: PairSpec,
) -> Result<Vec<u8>, HsmError> {
    with_part(ctx, &id, Part::Public, |ctx, h| spki_of(ctx, h, spec))
}

// ---------------------------------------------------------------- signatures

pub(super) fn sign_input(scheme: SignScheme, digest: &[u8]) -> Option<Vec<u8>> {
    match scheme {
        SignScheme::RsaPkcs1 => {
            let mut v = der::digest_info_prefix(digest.len())?.to_vec();
            v.extend_from_slice(digest);
            Some(v)
        }
        _ => Some(digest.to_vec()),
    }
}

pub(super) fn sign_mechanism(scheme: SignScheme, digest_len: usize) -> Mechanism<'static> {
    match scheme {
        SignScheme::RsaPss(h) => Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg: h.mechanism(),
            mgf: h.mgf(),
            s_len: (digest_len as u64).into(),
        }),
        SignScheme::RsaPkcs1 => Mechanism::RsaPkcs,
        SignScheme::Ecdsa(_) => Mechanism::Ecdsa,
        SignScheme::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
    }
}

fn bad_input(ctx: &WorkerCtx, function: &'static str, what: &str) -> HsmError {
    HsmError::new(HsmErrorKind::Other, function, ctx.token(), what.to_string())
}

/// ECDH (`CKM_ECDH1_DERIVE`, null KDF) between the private key `id` on `curve` and the peer's
/// uncompressed `point`: the raw shared secret (the x coordinate, `field_len` bytes). The
/// secret is derived into a short-lived extractable session object, read and destroyed in
/// the same job; the private key never leaves the device.
pub(crate) fn derive_shared_secret(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    curve: Curve,
    point: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let template = shared_secret_template(curve);
    let derived = with_copy(ctx, &id, Part::Private, |ctx, h| {
        let params = Ecdh1DeriveParams::new(EcKdf::null(), point);
        let r = ctx.call_raw(Call::DeriveKey, |s| {
            s.derive_key(&Mechanism::Ecdh1Derive(params), h, &template)
        });
        r.map_err(|e| {
            let mut err = ctx.fail(Call::DeriveKey, &e);
            // SoftHSM2 answers CKR_GENERAL_ERROR for a point that is not on the curve: on a
            // session that is still well, that is the caller's input, not a sick device.
            if err.kind == HsmErrorKind::Unavailable
                && matches!(
                    e,
                    CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _)
                )
                && ops::session_logged_in(ctx)
            {
                err.kind = HsmErrorKind::Other;
                err.detail = Some("the device refused the peer's public key".into());
            }
            err
        })
    })?;
    let value = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(derived, &[AttributeType::Value])
    });
    destroy_quietly(ctx, &[derived], "derived shared secret");
    let secret = value?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(Zeroizing::new(v)),
            _ => None,
        })
        .ok_or_else(|| {
            bad_input(
                ctx,
                "C_GetAttributeValue",
                "the derived secret has no value",
            )
        })?;
    if secret.len() != curve.field_len() {
        return Err(bad_input(
            ctx,
            "C_DeriveKey",
            "the derived secret has the wrong length",
        ));
    }
    Ok(secret)
}

/// Sign `digest` with the private key `id`. ECDSA answers are DER-encoded.
pub(crate) fn sign(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    scheme: SignScheme,
    digest: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let input = sign_input(scheme, digest)
        .ok_or_else(|| bad_input(ctx, "C_Sign", "unsupported digest length"))?;
    let mech = sign_mechanism(scheme, digest.len());
    let raw = with_copy(ctx, &id, Part::Private, |ctx, h| {
        ctx.call(Call::Sign, |s| s.sign(&mech, h, &input))
    })?;
    match scheme {
        SignScheme::Ecdsa(_) => super::signing::ecdsa_raw_to_der(&raw).ok_or_else(|| {
            bad_input(
                ctx,
                "C_Sign",
                "the device returned a malformed ECDSA signature",
            )
        }),
        _ => Ok(raw),
    }
}

/// Verify `signature` over `digest` with the public key `id` (`C_Verify` on the device).
/// `Ok(false)` for a signature that does not verify or is malformed.
pub(crate) fn verify(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    scheme: SignScheme,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, HsmError> {
    let input = sign_input(scheme, digest)
        .ok_or_else(|| bad_input(ctx, "C_Verify", "unsupported digest length"))?;
    let signature = match scheme {
        SignScheme::Ecdsa(c) => match der::ecdsa_der_to_raw(signature, c.field_len()) {
            Some(raw) => raw,
            None => return Ok(false),
        },
        SignScheme::Ed25519 if signature.len() != 64 => return Ok(false),
        _ => signature.to_vec(),
    };
    let mech = sign_mechanism(scheme, digest.len());
    with_copy(ctx, &id, Part::Public, |ctx, h| {
        let r = ctx.call_raw(Call::Verify, |s| s.verify(&mech, h, &input, &signature));
        verdict(ctx, r)
    })
}

/// `C_Verify`'s answer as a verdict: invalid or wrong-length signatures are `false`.
pub(crate) fn verdict(ctx: &mut WorkerCtx, r: Result<(), CkError>) -> Result<bool, HsmError> {
    match r {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => {
            Ok(false)
        }
        Err(e) => Err(ctx.fail(Call::Verify, &e)),
    }
}

// ---------------------------------------------------------------- RSA-OAEP

/// `CKM_RSA_PKCS_OAEP` with hash `h`, MGF1 with the same hash, and no label.
pub(crate) fn oaep(h: ShaAlg) -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        h.mechanism(),
        h.mgf(),
        PkcsOaepSource::empty(),
    ))
}

/// The modulus length in bytes of key pair `id` (from the public object; for a wrapped pair,
/// which has none, from its unwrapped private half).
fn modulus_len(ctx: &mut WorkerCtx, id: &ObjectId) -> Result<usize, HsmError> {
    let mut read = |ctx: &mut WorkerCtx, h| {
        let attrs = ctx.call(Call::GetAttributeValue, |s| {
            s.get_attributes(h, &[AttributeType::Modulus])
        })?;
        bytes_of(&attrs, AttributeType::Modulus)
            .map(|n| n.len())
            .ok_or_else(|| bad_input(ctx, "C_GetAttributeValue", "no CKA_MODULUS"))
    };
    if let Some(r) = super::wrapped::with_wrapped(ctx, id, Part::Private, &mut read) {
        return r;
    }
    with_part(ctx, id, Part::Public, read)
}

/// Whether RSA-OAEP with `hash` runs as raw RSA on the device with the padding done here:
/// SHA-256 on a device that lacks it.
fn padded_here(ctx: &mut WorkerCtx, hash: ShaAlg) -> Result<bool, HsmError> {
    Ok(hash == ShaAlg::Sha256 && super::oaep::sha256_support(ctx)? == OaepSha256::RawRsa)
}

/// RSA-OAEP encrypt with the public key `id`: `CKM_RSA_PKCS_OAEP` on the device, except
/// SHA-256 on a device without it, which pads here (seed from the device's RNG) and encrypts
/// with `CKM_RSA_X_509` on the device.
pub(crate) fn rsa_encrypt(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    hash: ShaAlg,
    plaintext: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let (mech, input) = if padded_here(ctx, hash)? {
        let k = modulus_len(ctx, &id)?;
        let mut seed = [0u8; 32];
        ctx.call(Call::GenerateRandom, |s| s.generate_random_slice(&mut seed))?;
        let em = super::oaep::encode(plaintext, k, &seed)
            .ok_or_else(|| bad_input(ctx, "C_Encrypt", "plaintext too long for RSA-OAEP"))?;
        (Mechanism::RsaX509, em)
    } else {
        (oaep(hash), Zeroizing::new(plaintext.to_vec()))
    };
    with_copy(ctx, &id, Part::Public, |ctx, h| {
        ctx.call(Call::Encrypt, |s| s.encrypt(&mech, h, &input))
    })
}

/// RSA-OAEP decrypt with the private key `id` (the RSA operation on the device; for SHA-256
/// on a device without it, the padding is removed here). A rejected ciphertext is
/// [`HsmErrorKind::AuthFailed`].
pub(crate) fn rsa_decrypt(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    hash: ShaAlg,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let raw = padded_here(ctx, hash)?;
    let k = if raw { modulus_len(ctx, &id)? } else { 0 };
    let mech = if raw { Mechanism::RsaX509 } else { oaep(hash) };
    let failed = |ctx: &mut WorkerCtx, e: Option<&CkError>| {
        let mut err = match e {
            Some(e) => ctx.fail(Call::Decrypt, e),
            None => HsmError::new(HsmErrorKind::AuthFailed, "C_Decrypt", ctx.token(), ""),
        };
        err.kind = HsmErrorKind::AuthFailed;
        err.detail = Some("RSA-OAEP decryption failed".into());
        err
    };
    if raw && ciphertext.len() != k {
        return Err(failed(ctx, None));
    }
    let out = with_copy(ctx, &id, Part::Private, |ctx, h| {
        match ctx.call_raw(Call::Decrypt, |s| s.decrypt(&mech, h, ciphertext)) {
            Ok(p) => Ok(Zeroizing::new(p)),
            Err(
                e @ CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::DataInvalid
                    | RvError::DataLenRange,
                    _,
                ),
            ) => Err(failed(ctx, Some(&e))),
            // SoftHSM2 answers bad OAEP padding with CKR_GENERAL_ERROR: a forged ciphertext
            // only if the session and the key still answer, else the device is sick.
            Err(e @ CkError::Pkcs11(RvError::GeneralError, _)) if device_healthy(ctx, h) => {
                Err(failed(ctx, Some(&e)))
            }
            Err(e) => Err(ctx.fail(Call::Decrypt, &e)),
        }
    })?;
    if raw {
        return super::oaep::decode(&out, k).ok_or_else(|| failed(ctx, None));
    }
    Ok(out)
}

/// Whether the worker's session is logged in and `key` still answers `C_GetAttributeValue`.
fn device_healthy(ctx: &mut WorkerCtx, key: ObjectHandle) -> bool {
    if !super::ops::session_logged_in(ctx) {
        return false;
    }
    match ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(key, &[AttributeType::Class])
    }) {
        Ok(attrs) => attrs.iter().any(|a| matches!(a, Attribute::Class(_))),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------- data key pairs

fn read_private(
    ctx: &mut WorkerCtx,
    private: ObjectHandle,
    public: ObjectHandle,
    spec: PairSpec,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), HsmError> {
    let spki = spki_of(ctx, public, spec)?;
    let wanted: &[AttributeType] = match spec {
        PairSpec::Rsa(_) => &[
            AttributeType::Modulus,
            AttributeType::PublicExponent,
            AttributeType::PrivateExponent,
            AttributeType::Prime1,
            AttributeType::Prime2,
            AttributeType::Exponent1,
            AttributeType::Exponent2,
            AttributeType::Coefficient,
        ],
        PairSpec::Ec(_) | PairSpec::Ed25519 => &[AttributeType::Value],
    };
    let attrs = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(private, wanted)
    })?;
    let mut parts: Vec<(AttributeType, Zeroizing<Vec<u8>>)> = Vec::with_capacity(8);
    for a in attrs {
        let (t, v) = match a {
            Attribute::Modulus(v) => (AttributeType::Modulus, v),
            Attribute::PublicExponent(v) => (AttributeType::PublicExponent, v),
            Attribute::PrivateExponent(v) => (AttributeType::PrivateExponent, v),
            Attribute::Prime1(v) => (AttributeType::Prime1, v),
            Attribute::Prime2(v) => (AttributeType::Prime2, v),
            Attribute::Exponent1(v) => (AttributeType::Exponent1, v),
            Attribute::Exponent2(v) => (AttributeType::Exponent2, v),
            Attribute::Coefficient(v) => (AttributeType::Coefficient, v),
            Attribute::Value(v) => (AttributeType::Value, v),
            _ => continue,
        };
        parts.push((t, Zeroizing::new(v)));
    }
    let missing = |ctx: &WorkerCtx| {
        HsmError::new(
            HsmErrorKind::Other,
            "C_GetAttributeValue",
            ctx.token(),
            "the data key pair's private components could not be read",
        )
    };
    let mut take = |t: AttributeType| -> Option<Zeroizing<Vec<u8>>> {
        let i = parts.iter().position(|(pt, _)| *pt == t)?;
        Some(parts.swap_remove(i).1)
    };
    let pkcs8 = match spec {
        PairSpec::Rsa(_) => {
            let k = (|| {
                Some(der::RsaPrivateParts {
                    n: take(AttributeType::Modulus)?,
                    e: take(AttributeType::PublicExponent)?,
                    d: take(AttributeType::PrivateExponent)?,
                    p: take(AttributeType::Prime1)?,
                    q: take(AttributeType::Prime2)?,
                    dp: take(AttributeType::Exponent1)?,
                    dq: take(AttributeType::Exponent2)?,
                    qinv: take(AttributeType::Coefficient)?,
                })
            })()
            .ok_or_else(|| missing(ctx))?;
            der::rsa_pkcs8(&k)
        }
        PairSpec::Ec(c) => {
            let d = take(AttributeType::Value).ok_or_else(|| missing(ctx))?;
            // The SPKI ends with the BIT STRING holding the point.
            let point = &spki[spki.len() - (1 + 2 * c.field_len())..];
            der::ec_pkcs8(c.oid_der(), c.field_len(), &d, point).ok_or_else(|| missing(ctx))?
        }
        PairSpec::Ed25519 => {
            let seed = take(AttributeType::Value).ok_or_else(|| missing(ctx))?;
            der::ed25519_pkcs8(&seed).ok_or_else(|| missing(ctx))?
        }
    };
    Ok((pkcs8, spki))
}

/// Generate a key pair as session objects, read it back as PKCS#8 + SPKI and destroy the
/// objects, all in this job (which touches no token object; the caller seals the PKCS#8).
pub(crate) fn generate_data_key_pair(
    ctx: &mut WorkerCtx,
    spec: PairSpec,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), HsmError> {
    let (public_t, private_t) = data_key_pair_templates(spec);
    let mech = match spec {
        PairSpec::Rsa(_) => Mechanism::RsaPkcsKeyPairGen,
        PairSpec::Ec(_) => Mechanism::EccKeyPairGen,
        PairSpec::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
    };
    let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
        s.generate_key_pair(&mech, &public_t, &private_t)
    })?;
    let read = read_private(ctx, private, public, spec);
    destroy_quietly(ctx, &[private, public], "data key pair session object");
    read
}
