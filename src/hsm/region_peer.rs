//! Multi-Region keys (issue 20), the transfer between two regions' devices: what a sending
//! token wraps for a trusted peer ([`PeerBlob`]), and how the receiving token takes it into
//! token residency (a token object) or wrapped residency (a blob under its own master).
//!
//! # Paths
//!
//! - **Secret keys** (AES-256, HMAC): `CKM_RSA_PKCS_OAEP` (SHA-1) under the peer's trusted
//!   key; the peer unwraps with its transport private key.
//! - **Private halves**: OAEP refuses them on SoftHSM2 2.6.1 and `CKM_RSA_AES_KEY_WRAP` is
//!   not offered, so they go through the peer's **carrier** (`p11kms/region-carrier/<region>`,
//!   AES-256, `CKA_TRUSTED` by the SO in [`super::region::trust_peer`]): the private half
//!   wrapped under the carrier (`CKM_AES_KEY_WRAP_PAD`), the carrier wrapped under the peer's
//!   trusted key (OAEP). The receiver unwraps the carrier as a session object with its
//!   transport private key, the private half under it, and destroys the carrier. The public
//!   half travels as DER SPKI beside them; the receiver checks on the device that it belongs
//!   to the private half (RSA: the modulus and exponent; signing keys: a signature on a
//!   device-random digest; ECDH keys: a derivation with the curve's generator, which gives
//!   the x coordinate of the true public point) before anything is kept. SoftHSM2 2.6.1
//!   wraps no EdDSA private key, so Ed25519 pairs cannot move (probed).
//! - **Wrapped residency**: the sender first unwraps the version's blob under its master (the
//!   miss path: the tag checked for the key version), the receiver ends by wrapping under its
//!   newest trusted master, tagged for the target version. The session objects in between
//!   have the wrapped custody (sensitive, extractable only under trusted keys) and are
//!   destroyed in the job.

use std::fmt;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};

use super::asym::{Curve, PairSpec, PairUsage, SessionPair, SignScheme};
use super::call::Call;
use super::error::{HsmError, HsmErrorKind};
use super::oaep::OaepSha256;
use super::objects::{ObjectId, Part};
use super::pool::WorkerCtx;
use super::region::{find, oaep_sha1, other, peer_key, refusal, transport_half, RegionName};
use super::template::{Template, Usage};
use super::wrapped::{BlobKind, PairFamily, WrappedBlob};
use super::{der, Hsm, LockClass};

const PEER_BLOB_FORMAT: u8 = 1;
const HAS_CARRIER: u8 = 1;
const HAS_PUBLIC_KEY: u8 = 2;
/// The curves of EC key pairs.
const CURVES: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];
/// Longest part a peer blob may carry (an RSA-4096 private half wrapped is about 2.4 KB).
const MAX_PART_LEN: usize = 16 * 1024;

/// What one region's device wraps for another's: the key (OAEP under the peer's trusted key
/// for a secret key; under the carrier for a private half), the carrier wrapped under the
/// peer's trusted key (private halves only), and the public half as DER SPKI (pairs only).
/// Holds no plaintext; `Debug` shows lengths only.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerBlob {
    /// The carrier key wrapped under the peer's trusted key (`CKM_RSA_PKCS_OAEP`).
    pub carrier: Option<Vec<u8>>,
    /// The key: OAEP under the peer's trusted key, or `CKM_AES_KEY_WRAP_PAD` under the carrier.
    pub key: Vec<u8>,
    /// A key pair's public half (DER SubjectPublicKeyInfo).
    pub public_key: Option<Vec<u8>>,
}

/// Why bytes are not a [`PeerBlob`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerBlobError {
    /// Fewer bytes than the encoding needs.
    #[error("peer blob truncated")]
    Truncated,
    /// A format byte this build does not know.
    #[error("unknown peer blob format {0}")]
    UnknownFormat(u8),
    /// Flag bits this build does not know.
    #[error("unknown peer blob flags {0:#04x}")]
    UnknownFlags(u8),
    /// A part is empty or longer than 16 KiB.
    #[error("peer blob part of {0} bytes")]
    BadLength(usize),
    /// Bytes after the last part.
    #[error("{0} bytes after the peer blob")]
    Trailing(usize),
}

impl PeerBlob {
    /// The stable encoding: `format u8 = 1 | flags u8 (1 carrier, 2 public key) | key |
    /// carrier? | public key?`, each part `len u32 BE | bytes`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let flags = u8::from(self.carrier.is_some()) * HAS_CARRIER
            + u8::from(self.public_key.is_some()) * HAS_PUBLIC_KEY;
        let mut out = vec![PEER_BLOB_FORMAT, flags];
        let parts = [
            Some(&self.key),
            self.carrier.as_ref(),
            self.public_key.as_ref(),
        ];
        for part in parts.into_iter().flatten() {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Parses [`PeerBlob::to_bytes`]'s encoding; any other input is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<PeerBlob, PeerBlobError> {
        let [format, flags, rest @ ..] = bytes else {
            return Err(PeerBlobError::Truncated);
        };
        if *format != PEER_BLOB_FORMAT {
            return Err(PeerBlobError::UnknownFormat(*format));
        }
        if flags & !(HAS_CARRIER | HAS_PUBLIC_KEY) != 0 {
            return Err(PeerBlobError::UnknownFlags(*flags));
        }
        let (key, rest) = take_part(rest)?;
        let (carrier, rest) = take_if(flags & HAS_CARRIER != 0, rest)?;
        let (public_key, rest) = take_if(flags & HAS_PUBLIC_KEY != 0, rest)?;
        if !rest.is_empty() {
            return Err(PeerBlobError::Trailing(rest.len()));
        }
        Ok(PeerBlob {
            carrier,
            key,
            public_key,
        })
    }
}

fn take_part(bytes: &[u8]) -> Result<(Vec<u8>, &[u8]), PeerBlobError> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(PeerBlobError::Truncated)?;
    let len = u32::from_be_bytes(*len) as usize;
    if len == 0 || len > MAX_PART_LEN {
        return Err(PeerBlobError::BadLength(len));
    }
    if rest.len() < len {
        return Err(PeerBlobError::Truncated);
    }
    let (part, rest) = rest.split_at(len);
    Ok((part.to_vec(), rest))
}

fn take_if(present: bool, bytes: &[u8]) -> Result<(Option<Vec<u8>>, &[u8]), PeerBlobError> {
    if !present {
        return Ok((None, bytes));
    }
    let (part, rest) = take_part(bytes)?;
    Ok((Some(part), rest))
}

impl fmt::Debug for PeerBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = |p: &Option<Vec<u8>>| p.as_ref().map_or(0, Vec::len);
        write!(
            f,
            "PeerBlob(key {} bytes, carrier {} bytes, public key {} bytes)",
            self.key.len(),
            len(&self.carrier),
            len(&self.public_key)
        )
    }
}

// ---------------------------------------------------------------- sending

/// The trusted carrier key of `peer` on this token.
fn carrier_key(ctx: &mut WorkerCtx, peer: &RegionName) -> Result<ObjectHandle, HsmError> {
    let search = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(peer.carrier_label().into_bytes()),
    ];
    let detail = format!(
        "no carrier key for region {}: the SO ceremony (region trust) is due",
        peer.as_str()
    );
    find(ctx, &search)?
        .ok_or_else(|| HsmError::new(HsmErrorKind::Config, "C_FindObjects", ctx.token(), detail))
}

/// Object `h` (of `kind`) wrapped for `peer`: (carrier, key). A secret key goes under the
/// peer's trusted key; a private half under the peer's carrier, the carrier under the peer's
/// trusted key. The device refuses anything not extractable under trusted keys.
fn wrap_for_peer(
    ctx: &mut WorkerCtx,
    h: ObjectHandle,
    kind: BlobKind,
    peer: &RegionName,
) -> Result<(Option<Vec<u8>>, Vec<u8>), HsmError> {
    let wrapping = peer_key(ctx, peer)?;
    if !matches!(kind, BlobKind::Private { .. }) {
        let key = ctx.call(Call::WrapKey, |s| s.wrap_key(&oaep_sha1(), wrapping, h))?;
        return Ok((None, key));
    }
    let carrier = carrier_key(ctx, peer)?;
    let key = ctx.call(Call::WrapKey, |s| {
        s.wrap_key(&Mechanism::AesKeyWrapPad, carrier, h)
    })?;
    let wrapped_carrier = ctx.call(Call::WrapKey, |s| {
        s.wrap_key(&oaep_sha1(), wrapping, carrier)
    })?;
    Ok((Some(wrapped_carrier), key))
}

fn not_found(ctx: &WorkerCtx, id: &ObjectId) -> HsmError {
    HsmError::new(
        HsmErrorKind::ObjectNotFound,
        "C_FindObjects",
        ctx.token(),
        format!("{id}"),
    )
}

/// Token residency: key version `id` of `kind` wrapped for `peer` (a pair's public half read
/// from its public token object).
pub(crate) fn export_for_peer(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    kind: BlobKind,
    peer: &RegionName,
) -> Result<PeerBlob, HsmError> {
    let part = match kind {
        BlobKind::Private { .. } => Part::Private,
        _ => Part::Secret,
    };
    let h = super::ops::find_part(ctx, &id, part)?.ok_or_else(|| not_found(ctx, &id))?;
    let public_key = match kind {
        BlobKind::Private { family, .. } => Some(token_spki(ctx, &id, family)?),
        _ => None,
    };
    let (carrier, key) = wrap_for_peer(ctx, h, kind, peer)?;
    Ok(PeerBlob {
        carrier,
        key,
        public_key,
    })
}

/// The SPKI of key pair `id`'s public token object.
fn token_spki(ctx: &mut WorkerCtx, id: &ObjectId, family: PairFamily) -> Result<Vec<u8>, HsmError> {
    let h = super::ops::find_part(ctx, id, Part::Public)?.ok_or_else(|| not_found(ctx, id))?;
    let spec = match family {
        PairFamily::Rsa => PairSpec::Rsa(0),
        PairFamily::Ed25519 => PairSpec::Ed25519,
        PairFamily::Ec => {
            let pick = |a| match a {
                Attribute::EcParams(p) => Some(p),
                _ => None,
            };
            let params =
                super::ops::read_attribute(ctx, h, AttributeType::EcParams, pick, "no curve")?;
            let curve = CURVES
                .into_iter()
                .find(|c| c.oid_der() == params.as_slice());
            PairSpec::Ec(curve.ok_or_else(|| other(ctx, "C_GetAttributeValue", "unknown curve"))?)
        }
    };
    super::asym::spki_of(ctx, h, spec)
}

/// Wrapped residency: unwrap `blob` (its tag checked for `id` under the local master, as the
/// miss path does) into a transient session object, wrap that for `peer`, destroy it. A key
/// pair's `public_key` (the stored SPKI) travels beside it.
pub(crate) fn export_blob_for_peer(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    blob: &WrappedBlob,
    public_key: Option<Vec<u8>>,
    peer: &RegionName,
) -> Result<PeerBlob, HsmError> {
    let kind = blob.kind();
    let is_pair = matches!(kind, BlobKind::Private { .. });
    if is_pair != public_key.is_some() {
        let detail = "a key pair's public key, and only a key pair's, travels beside it";
        return Err(other(ctx, "C_WrapKey", detail));
    }
    let h = super::wrapped::unwrap_verified(ctx, &id, blob)?;
    let r = wrap_for_peer(ctx, h, kind, peer);
    super::wrapped::destroy_session_objects(ctx, &[h]);
    let (carrier, key) = r?;
    Ok(PeerBlob {
        carrier,
        key,
        public_key,
    })
}

// ---------------------------------------------------------------- receiving

/// `CKA_LABEL` of the carrier's session object on the receiving side (reconciliation skips it:
/// [`super::region::is_region_object`]).
pub(crate) const TRANSFER_LABEL: &str = "p11kms/region-transfer";

/// The session object the carrier is unwrapped into: AES, unwrap only
/// (`CKM_AES_KEY_WRAP_PAD`), sensitive, never extractable.
fn carrier_session_template() -> Vec<Attribute> {
    Template::secret(KeyType::AES)
        .token(false)
        .guarded()
        .allow(Usage::Unwrap)
        .mechanisms(vec![cryptoki::mechanism::MechanismType::AES_KEY_WRAP_PAD])
        .label(TRANSFER_LABEL)
        .build()
}

/// Unwrap `pb`'s key of `kind` into an object of `template` with the transport private key
/// (through the carrier for a private half, destroyed after). A blob the device refuses is
/// [`HsmErrorKind::BlobRejected`].
fn unwrap_from_peer(
    ctx: &mut WorkerCtx,
    kind: BlobKind,
    pb: &PeerBlob,
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let is_pair = matches!(kind, BlobKind::Private { .. });
    if is_pair != pb.carrier.is_some() || is_pair != pb.public_key.is_some() {
        let detail = "the peer blob does not have the parts of its key kind";
        return Err(HsmError::new(
            HsmErrorKind::BlobRejected,
            "C_UnwrapKey",
            ctx.token(),
            detail,
        ));
    }
    let Some(transport) = find(ctx, &transport_half(ObjectClass::PRIVATE_KEY))? else {
        let detail = "no region transport key on this token";
        return Err(HsmError::new(
            HsmErrorKind::Config,
            "C_UnwrapKey",
            ctx.token(),
            detail,
        ));
    };
    let Some(carrier) = &pb.carrier else {
        return unwrap_checked(ctx, &oaep_sha1(), transport, &pb.key, template);
    };
    let c = unwrap_checked(
        ctx,
        &oaep_sha1(),
        transport,
        carrier,
        &carrier_session_template(),
    )?;
    let r = unwrap_checked(ctx, &Mechanism::AesKeyWrapPad, c, &pb.key, template);
    super::wrapped::destroy_session_objects(ctx, &[c]);
    r
}

fn unwrap_checked(
    ctx: &mut WorkerCtx,
    mech: &Mechanism<'_>,
    with: ObjectHandle,
    wrapped: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let r = ctx.call_raw(Call::UnwrapKey, |s| {
        s.unwrap_key(mech, with, wrapped, template)
    });
    r.map_err(|e| refusal(ctx, Call::UnwrapKey, "C_UnwrapKey", &e))
}

/// The session template of the public half of a pair of `kind` from `spki`; `None` unless
/// `spki` is a key of the kind's family.
fn public_template(kind: BlobKind, spki: &[u8]) -> Option<Vec<Attribute>> {
    let BlobKind::Private {
        family,
        usage,
        raw_oaep,
    } = kind
    else {
        return None;
    };
    if (family == PairFamily::Rsa) != der::rsa_from_spki(spki).is_some() {
        return None;
    }
    let oaep = if raw_oaep {
        OaepSha256::RawRsa
    } else {
        OaepSha256::Device
    };
    super::asym::public_template_from_spki(spki, usage, oaep)
}

fn bad_public(ctx: &WorkerCtx, detail: &str) -> HsmError {
    HsmError::new(
        HsmErrorKind::BlobRejected,
        "C_CreateObject",
        ctx.token(),
        detail,
    )
}

/// A pair's public half: its SPKI and the session template made from it.
type PublicHalf<'a> = (&'a [u8], Vec<Attribute>);

/// A pair's public half from `pb`, checked to be a key of `kind`'s family: its SPKI and
/// session template. `None` for a secret key.
fn public_of<'a>(
    ctx: &WorkerCtx,
    kind: BlobKind,
    pb: &'a PeerBlob,
) -> Result<Option<PublicHalf<'a>>, HsmError> {
    if !matches!(kind, BlobKind::Private { .. }) {
        return Ok(None);
    }
    let spki = pb.public_key.as_deref().unwrap_or_default();
    match public_template(kind, spki) {
        Some(t) => Ok(Some((spki, t))),
        None => Err(bad_public(
            ctx,
            "the public key is not a key of the pair's kind",
        )),
    }
}

/// A pair from `pb` as session objects (the private half with the wrapped custody), the
/// public half checked on the device to belong to the private half; nothing is left when
/// any step fails.
fn session_pair(
    ctx: &mut WorkerCtx,
    kind: BlobKind,
    pb: &PeerBlob,
    spki: &[u8],
    public_t: &[Attribute],
) -> Result<SessionPair, HsmError> {
    let private = unwrap_from_peer(ctx, kind, pb, &kind.template(false))?;
    let public = match ctx.call(Call::CreateObject, |s| s.create_object(public_t)) {
        Ok(public) => public,
        Err(e) => {
            super::wrapped::destroy_session_objects(ctx, &[private]);
            return Err(e);
        }
    };
    let pair = SessionPair { public, private };
    match check_pair(ctx, &pair, kind, spki) {
        Ok(()) => Ok(pair),
        Err(e) => {
            super::wrapped::destroy_session_objects(ctx, &[private, public]);
            Err(e)
        }
    }
}

/// Token residency: take `pb` into the token object(s) of key version `target` with the
/// multi-Region custody (sensitive, extractable only under trusted keys). A pair is made as
/// session objects, its public half checked against the private half, then both are copied
/// to the token ([`super::asym::persist_key_pair`]). Nothing is left when any step fails.
pub(crate) fn import_from_peer(
    ctx: &mut WorkerCtx,
    target: ObjectId,
    kind: BlobKind,
    pb: &PeerBlob,
) -> Result<(), HsmError> {
    super::ops::refuse_known_id(ctx, &target, "C_UnwrapKey")?;
    match (
        public_of(ctx, kind, pb)?,
        kind.token_template_of(&target, false),
    ) {
        (Some((spki, public_t)), _) => {
            let pair = session_pair(ctx, kind, pb, spki, &public_t)?;
            super::asym::persist_key_pair(ctx, target, pair)
        }
        (None, Some(template)) => unwrap_from_peer(ctx, kind, pb, &template).map(|_| ()),
        (None, None) => Err(other(
            ctx,
            "C_UnwrapKey",
            "a key pair without its public key",
        )),
    }
}

/// Wrapped residency: take `pb` into a transient session object with the wrapped custody,
/// wrap it under the newest trusted master tagged for `target` (as a new wrapped version is
/// wrapped), destroy it. Nothing is made on the token. A pair's public half is checked
/// against the private half; the caller keeps it beside the blob.
pub(crate) fn import_from_peer_wrapped(
    ctx: &mut WorkerCtx,
    target: ObjectId,
    kind: BlobKind,
    pb: &PeerBlob,
) -> Result<WrappedBlob, HsmError> {
    let h = match public_of(ctx, kind, pb)? {
        Some((spki, public_t)) => {
            let pair = session_pair(ctx, kind, pb, spki, &public_t)?;
            super::wrapped::destroy_session_objects(ctx, &[pair.public]);
            pair.private
        }
        None => unwrap_from_peer(ctx, kind, pb, &kind.template(false))?,
    };
    super::wrapped::wrap_parked(ctx, target, h, kind)
}

// ---------------------------------------------------------------- the pair check

/// Whether the public session object of `pair` (made from `spki`) is the public half of its
/// private object (of `kind`), on the device: RSA compares the modulus and exponent the
/// private object holds with the SPKI's; a signing key signs a device-random digest that the
/// public object must verify; an ECDH key derives with the curve's generator, which gives the
/// x coordinate of its own public point. A mismatch is [`HsmErrorKind::BlobRejected`].
fn check_pair(
    ctx: &mut WorkerCtx,
    pair: &SessionPair,
    kind: BlobKind,
    spki: &[u8],
) -> Result<(), HsmError> {
    let BlobKind::Private { family, usage, .. } = kind else {
        return Ok(());
    };
    let same = match (family, usage) {
        (PairFamily::Rsa, _) => same_rsa(ctx, pair.private, spki)?,
        (_, PairUsage::Sign) => signs_for(ctx, pair, family)?,
        (PairFamily::Ec, PairUsage::KeyAgreement) => agrees_for(ctx, pair, spki)?,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(bad_public(
            ctx,
            "the public key is not the private key's public half",
        ))
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    &v[zeros..]
}

fn same_rsa(ctx: &mut WorkerCtx, h: ObjectHandle, spki: &[u8]) -> Result<bool, HsmError> {
    let Some((n, e)) = der::rsa_from_spki(spki) else {
        return Ok(false);
    };
    let types = [AttributeType::Modulus, AttributeType::PublicExponent];
    let attrs = ctx.call(Call::GetAttributeValue, |s| s.get_attributes(h, &types))?;
    let (n, e) = (trim(&n), trim(&e));
    let found_n = attrs
        .iter()
        .any(|a| matches!(a, Attribute::Modulus(m) if trim(m) == n));
    let found_e = attrs
        .iter()
        .any(|a| matches!(a, Attribute::PublicExponent(x) if trim(x) == e));
    Ok(found_n && found_e)
}

fn signs_for(
    ctx: &mut WorkerCtx,
    pair: &SessionPair,
    family: PairFamily,
) -> Result<bool, HsmError> {
    let scheme = match family {
        PairFamily::Ed25519 => SignScheme::Ed25519,
        _ => SignScheme::Ecdsa(Curve::P256),
    };
    let mech = super::asym::sign_mechanism(scheme, 32);
    let digest = super::ops::random(ctx, 32)?;
    let sig = ctx.call(Call::Sign, |s| s.sign(&mech, pair.private, &digest))?;
    let r = ctx.call_raw(Call::Verify, |s| {
        s.verify(&mech, pair.public, &digest, &sig)
    });
    super::asym::verdict(ctx, r)
}

/// The uncompressed generator point of `curve` (SEC 2; FIPS 186-4 for the NIST curves).
fn generator(curve: Curve) -> Option<Vec<u8>> {
    let (x, y) = match curve {
        Curve::P256 => (
            "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
            "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
        ),
        Curve::P384 => (
            "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7",
            "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f",
        ),
        Curve::P521 => (
            "00c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66",
            "011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650",
        ),
        Curve::Secp256k1 => (
            "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
            "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
        ),
    };
    Some([vec![0x04], hex::decode(x).ok()?, hex::decode(y).ok()?].concat())
}

/// Whether ECDH of `pair`'s private half with the curve's generator gives the x coordinate
/// of `spki`'s point (its own public point, if `spki` is its public half).
fn agrees_for(ctx: &mut WorkerCtx, pair: &SessionPair, spki: &[u8]) -> Result<bool, HsmError> {
    let found = CURVES
        .into_iter()
        .find_map(|c| der::ec_point_from_spki(spki, c.oid_der(), c.field_len()).map(|p| (c, p)));
    let Some((curve, point)) = found else {
        return Ok(false);
    };
    let Some(g) = generator(curve) else {
        return Ok(false);
    };
    let template = super::asym::shared_secret_template(curve);
    let params = cryptoki::mechanism::elliptic_curve::Ecdh1DeriveParams::new(
        cryptoki::mechanism::elliptic_curve::EcKdf::null(),
        &g,
    );
    let derived = ctx.call(Call::DeriveKey, |s| {
        s.derive_key(&Mechanism::Ecdh1Derive(params), pair.private, &template)
    })?;
    let value = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(derived, &[AttributeType::Value])
    });
    super::wrapped::destroy_session_objects(ctx, &[derived]);
    let x = &point[1..=curve.field_len()];
    Ok(value?
        .iter()
        .any(|a| matches!(a, Attribute::Value(v) if v.as_slice() == x)))
}

// ---------------------------------------------------------------- jobs

impl Hsm {
    /// Token residency: key version `id` of `kind` wrapped on this device for `peer` (see
    /// the module header), for the peer's [`Hsm::import_from_peer`] or
    /// [`Hsm::import_from_peer_wrapped`]. Fails unless the SO ceremony trusted that peer; the
    /// device refuses keys that are not extractable under trusted keys.
    pub async fn export_for_peer(
        &self,
        id: ObjectId,
        kind: BlobKind,
        peer: RegionName,
    ) -> Result<PeerBlob, HsmError> {
        self.submit(LockClass::Shared, "export_for_peer", move |ctx| {
            export_for_peer(ctx, id, kind, &peer)
        })
        .await
    }

    /// Wrapped residency: key version `id`'s `blob` (tag checked for `id`) unwrapped and
    /// wrapped for `peer` in one job; a key pair's stored SPKI (`public_key`) travels beside.
    pub async fn export_blob_for_peer(
        &self,
        id: ObjectId,
        blob: std::sync::Arc<WrappedBlob>,
        public_key: Option<Vec<u8>>,
        peer: RegionName,
    ) -> Result<PeerBlob, HsmError> {
        self.submit(LockClass::Shared, "export_blob_for_peer", move |ctx| {
            export_blob_for_peer(ctx, id, &blob, public_key, &peer)
        })
        .await
    }

    /// Token residency: a peer's blob unwrapped into the token object(s) of key version
    /// `target` of `kind` (see [`import_from_peer`]). A blob the device refuses, or a public
    /// key that is not the private half's, is [`HsmErrorKind::BlobRejected`].
    pub async fn import_from_peer(
        &self,
        target: ObjectId,
        kind: BlobKind,
        blob: PeerBlob,
    ) -> Result<(), HsmError> {
        self.submit(LockClass::Exclusive, "import_from_peer", move |ctx| {
            import_from_peer(ctx, target, kind, &blob)
        })
        .await
    }

    /// Wrapped residency: a peer's blob rewrapped on the device under this token's newest
    /// trusted master, tagged for `target` (see [`import_from_peer_wrapped`]). Nothing is
    /// made on the token; a pair's public key is the caller's to keep (from `blob`).
    pub async fn import_from_peer_wrapped(
        &self,
        target: ObjectId,
        kind: BlobKind,
        blob: PeerBlob,
    ) -> Result<WrappedBlob, HsmError> {
        self.submit(LockClass::Shared, "import_from_peer_wrapped", move |ctx| {
            import_from_peer_wrapped(ctx, target, kind, &blob)
        })
        .await
    }
}
