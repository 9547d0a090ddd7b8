//! Multi-Region keys (issue 20), the device's part: key material moves from this region's
//! token to a peer region's token only wrapped, on the device, under a public key of the peer
//! that this token's security officer made trusted, and is unwrapped on the peer's device.
//!
//! # What SoftHSM2 2.6.1 allows (probed in `region_tests`)
//!
//! - Only the SO may set `CKA_TRUSTED` = true (the user gets `CKR_ATTRIBUTE_READ_ONLY`), and
//!   the SO may `C_CreateObject` a public token key with it: [`trust_peer`] is that ceremony.
//! - A `CKA_WRAP_WITH_TRUSTED` key wraps under a trusted RSA public key with
//!   `CKM_RSA_PKCS_OAEP` (SHA-1, the only OAEP hash the device has); under an untrusted one
//!   the device answers `CKR_KEY_NOT_WRAPPABLE`. AES-256 and HMAC keys (up to 64 bytes) move.
//! - Private halves do not move this way: OAEP wraps secret keys only
//!   (`CKR_KEY_NOT_WRAPPABLE`), `CKM_RSA_AES_KEY_WRAP` is not offered, and an ephemeral AES
//!   key the user makes cannot be trusted. Only an AES key the SO made trusted carries them
//!   (two-step, probed): the per-peer carrier key [`trust_peer`] makes, used by
//!   `region_peer`. The SO cannot make private objects, so the carrier is a public token
//!   object (sensitive, never readable; wrap-only; extractable only under trusted keys).
//! - A transport blob changed by one byte is refused by the receiving device.
//!
//! # Objects
//!
//! - **Transport key pair** `p11kms/region-transport/v1` (`CKA_ID` `p11kms:rtrans:000001`):
//!   RSA-3072; the private half private, sensitive, never extractable, `CKA_UNWRAP` only
//!   (`CKM_RSA_PKCS_OAEP`); the public half a public token object with no usage, kept so
//!   that its SPKI can be answered again ([`super::Hsm::region_transport_key`]).
//! - **Peer key** `p11kms/region-peer/<region>`: the peer's transport public key, a public
//!   token object, `CKA_WRAP` only, `CKA_TRUSTED` true (made by [`trust_peer`]).
//! - **Carrier key** `p11kms/region-carrier/<region>`: AES-256 made by the SO beside each
//!   peer key (see [`carrier_template`]), which carries private halves to that peer.
//!
//! The transfers themselves (secret keys, private halves through the carrier, token and
//! wrapped residency on either side) are in `region_peer`.

use std::path::Path;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::asym::{PairSpec, PairUsage};
use super::call::{Call, Counters};
use super::error::{HsmError, HsmErrorKind};
use super::oaep::OaepSha256;
use super::objects::ObjectId;
use super::pool::WorkerCtx;
use super::template::{Template, Usage};
use super::wrapped::{BlobKind, PairFamily};
use super::{der, module, Hsm, LockClass, Pin};

/// `CKA_LABEL` of the transport key pair.
pub const TRANSPORT_LABEL: &str = "p11kms/region-transport/v1";
/// `CKA_ID` of both halves: 20 bytes with `:` at byte 6, never a key id (see `wrapped`).
const TRANSPORT_ID: &[u8; 20] = b"p11kms:rtrans:000001";
const TRANSPORT_BITS: u64 = 3072;
const MAX_REGION_LEN: usize = 32;
/// `CKA_LABEL` prefix of the carrier keys (`p11kms/region-carrier/<region>`).
const CARRIER_LABEL_PREFIX: &str = "p11kms/region-carrier/";

/// Whether an object is the region machinery's (the transport key pair, a trusted peer key,
/// a carrier, a carrier mid-import), which no key version accounts for: reconciliation
/// skips them as it skips master keys.
pub fn is_region_object(id: &[u8], label: &str) -> bool {
    id == TRANSPORT_ID.as_slice()
        || label.starts_with("p11kms/region-peer/")
        || label.starts_with(CARRIER_LABEL_PREFIX)
        || label == super::region_peer::TRANSFER_LABEL
}

/// A peer region's name as it appears in a peer key's label (`us-east-1`): 1 to 32 of
/// lowercase ASCII letters, digits and `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionName(String);

impl RegionName {
    /// Checks `name`; `None` if it is not a region name.
    pub fn parse(name: &str) -> Option<RegionName> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        let fits = !name.is_empty() && name.len() <= MAX_REGION_LEN;
        (fits && name.chars().all(ok)).then(|| RegionName(name.to_owned()))
    }

    /// `CKA_LABEL` of this peer's key: `p11kms/region-peer/<region>`.
    pub fn peer_label(&self) -> String {
        format!("p11kms/region-peer/{}", self.0)
    }

    /// `CKA_LABEL` of the carrier key for this peer: `p11kms/region-carrier/<region>`.
    pub fn carrier_label(&self) -> String {
        format!("{CARRIER_LABEL_PREFIX}{}", self.0)
    }

    /// The name, as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The carrier key of `peer`, made by the SO in [`trust_peer`]: AES-256, a public token
/// object (the SO cannot make private objects, and only the SO can set `CKA_TRUSTED`),
/// sensitive, `CKA_TRUSTED` so that the device wraps private halves under it, `CKA_WRAP`
/// only (`CKM_AES_KEY_WRAP_PAD`), and itself extractable only under trusted keys (the peer's
/// key): it carries private halves to that peer and nowhere else.
fn carrier_template(peer: &RegionName) -> Vec<Attribute> {
    Template::secret(KeyType::AES)
        .token(true)
        .private_object(false)
        .with(Attribute::Sensitive(true))
        .with(Attribute::Extractable(true))
        .with(Attribute::WrapWithTrusted(true))
        .with(Attribute::Trusted(true))
        .allow(Usage::Wrap)
        .mechanisms(vec![MechanismType::AES_KEY_WRAP_PAD])
        .value_len(32)
        .label(peer.carrier_label())
        .build()
}

/// What [`trust_peer`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerTrust {
    /// The peer's key was imported as a trusted token object, or its carrier key made (a
    /// peer trusted before carriers existed).
    Created,
    /// The same key was already trusted for that region, with its carrier: nothing changed.
    AlreadyTrusted,
}

/// `CKM_RSA_PKCS_OAEP` with SHA-1 and MGF1-SHA-1: the OAEP every region's device has.
pub(super) fn oaep_sha1() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

pub(super) fn find(
    ctx: &mut WorkerCtx,
    search: &[Attribute],
) -> Result<Option<ObjectHandle>, HsmError> {
    super::ops::find_unique(ctx, search, |n| format!("{n} objects share a region label"))
}

pub(super) fn transport_half(class: ObjectClass) -> [Attribute; 3] {
    [
        Attribute::Class(class),
        Attribute::Token(true),
        Attribute::Id(TRANSPORT_ID.to_vec()),
    ]
}

fn spki_of(ctx: &mut WorkerCtx, public: ObjectHandle) -> Result<Vec<u8>, HsmError> {
    let types = [AttributeType::Modulus, AttributeType::PublicExponent];
    let attrs = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(public, &types)
    })?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    match (n, e) {
        (Some(n), Some(e)) => Ok(der::rsa_spki(&n, &e)),
        _ => Err(other(
            ctx,
            "C_GetAttributeValue",
            "the transport key has no modulus",
        )),
    }
}

pub(super) fn other(ctx: &WorkerCtx, function: &'static str, detail: &str) -> HsmError {
    HsmError::new(HsmErrorKind::Other, function, ctx.token(), detail)
}

fn transport_templates() -> (Vec<Attribute>, Vec<Attribute>) {
    let public = Template::public(KeyType::RSA)
        .token(true)
        .private_object(false)
        .with(Attribute::ModulusBits(TRANSPORT_BITS.into()))
        .with(Attribute::PublicExponent(vec![1, 0, 1]))
        .id(TRANSPORT_ID)
        .label(TRANSPORT_LABEL)
        .build();
    let private = Template::private(KeyType::RSA)
        .token(true)
        .guarded()
        .allow(Usage::Unwrap)
        .mechanisms(vec![MechanismType::RSA_PKCS_OAEP])
        .id(TRANSPORT_ID)
        .label(TRANSPORT_LABEL)
        .build();
    (public, private)
}

/// The transport key pair's SPKI, the pair generated first if the token has none.
pub(crate) fn ensure_transport(ctx: &mut WorkerCtx) -> Result<Vec<u8>, HsmError> {
    let public = find(ctx, &transport_half(ObjectClass::PUBLIC_KEY))?;
    let private = find(ctx, &transport_half(ObjectClass::PRIVATE_KEY))?;
    match (public, private) {
        (Some(public), Some(_)) => spki_of(ctx, public),
        (None, None) => {
            let (public, private) = transport_templates();
            let (pub_h, _) = ctx.call(Call::GenerateKeyPair, |s| {
                s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
            })?;
            spki_of(ctx, pub_h)
        }
        _ => Err(other(
            ctx,
            "C_FindObjects",
            "one half of the region transport key pair is missing",
        )),
    }
}

pub(super) fn peer_key(ctx: &mut WorkerCtx, peer: &RegionName) -> Result<ObjectHandle, HsmError> {
    let search = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(true),
        Attribute::Label(peer.peer_label().into_bytes()),
    ];
    let missing = || {
        format!(
            "no trusted key for region {}: the SO ceremony is due",
            peer.0
        )
    };
    let h = find(ctx, &search)?.ok_or_else(|| {
        HsmError::new(
            HsmErrorKind::Config,
            "C_FindObjects",
            ctx.token(),
            missing(),
        )
    })?;
    let pick = |a| match a {
        Attribute::Trusted(t) => Some(t),
        _ => None,
    };
    let trusted =
        super::ops::read_attribute(ctx, h, AttributeType::Trusted, pick, "no CKA_TRUSTED")?;
    if !trusted {
        return Err(HsmError::new(
            HsmErrorKind::Config,
            "C_WrapKey",
            ctx.token(),
            missing(),
        ));
    }
    Ok(h)
}

/// The device's refusal `e` of a transport blob in `function` as
/// [`HsmErrorKind::BlobRejected`] while the session is still healthy (SoftHSM2 answers a bad
/// OAEP decoding or a failed RFC 5649 check with `CKR_GENERAL_ERROR`); any other failure as
/// the call's error.
pub(super) fn refusal(
    ctx: &mut WorkerCtx,
    call: Call,
    function: &'static str,
    e: &CkError,
) -> HsmError {
    if refused_blob(e) && super::ops::session_logged_in(ctx) {
        let mut err = super::error::from_cryptoki(function, ctx.token(), e);
        err.kind = HsmErrorKind::BlobRejected;
        err.detail = Some("the device refused the transport blob".into());
        return err;
    }
    ctx.fail(call, e)
}

pub(super) fn refused_blob(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::GeneralError,
            _
        )
    )
}

impl Hsm {
    /// The SPKI of this token's region transport key pair, generated on first call (RSA-3072:
    /// seconds on SoftHSM2, once). Peers import it with their SO ceremony ([`trust_peer`]).
    pub async fn region_transport_key(&self) -> Result<Vec<u8>, HsmError> {
        self.submit(
            LockClass::Exclusive,
            "region_transport_key",
            ensure_transport,
        )
        .await
    }

    /// Generates secret key version `id` of `kind` as a multi-Region key's token object:
    /// sensitive, `CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED` true.
    pub async fn generate_multi_region_key(
        &self,
        id: ObjectId,
        kind: BlobKind,
    ) -> Result<(), HsmError> {
        self.submit(
            LockClass::Exclusive,
            "generate_multi_region_key",
            move |ctx| {
                let Some(t) = kind.token_template_of(&id, true) else {
                    return Err(other(ctx, "C_GenerateKey", "not a secret key kind"));
                };
                super::ops::refuse_known_id(ctx, &id, "C_GenerateKey")?;
                ctx.call(Call::GenerateKey, |s| {
                    s.generate_key(&kind.generation(), &t)
                })?;
                Ok(())
            },
        )
        .await
    }
}

impl Hsm {
    /// The blob kind of the private half of a `spec`/`usage` key pair on this device (RSA
    /// decryption keys also allow raw RSA when the device lacks OAEP-SHA-256): what
    /// [`Hsm::export_for_peer`] and the peer imports take for a key pair.
    pub async fn pair_blob_kind(
        &self,
        spec: PairSpec,
        usage: PairUsage,
    ) -> Result<BlobKind, HsmError> {
        self.submit(LockClass::Unlocked, "pair_blob_kind", move |ctx| {
            let oaep = match (spec, usage) {
                (PairSpec::Rsa(_), PairUsage::Decrypt) => super::oaep::sha256_support(ctx)?,
                _ => OaepSha256::Device,
            };
            Ok(BlobKind::Private {
                family: PairFamily::of(spec),
                usage,
                raw_oaep: oaep == OaepSha256::RawRsa,
            })
        })
        .await
    }

    /// Generates CMK key pair `id` as a multi-Region key's token objects: the public half as
    /// a CMK's, the private half sensitive with `CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED`
    /// true (movable to trusted peers only, through their carrier). Generated as session
    /// objects in an unlocked job (RSA takes seconds), copied to the token in a short
    /// exclusive one, as [`Hsm::generate_key_pair`]. Returns the blob kind of the private half
    /// (what [`Hsm::export_for_peer`] and the peer's import take).
    pub async fn generate_multi_region_pair(
        &self,
        id: ObjectId,
        spec: PairSpec,
        usage: PairUsage,
    ) -> Result<BlobKind, HsmError> {
        let (pending, _guard) = self.pending_objects();
        let permit = self.keygen_permit("generate_multi_region_pair").await?;
        let p = pending.clone();
        let kind = self
            .submit(
                LockClass::Unlocked,
                "generate_multi_region_pair",
                move |ctx| {
                    let (kind, pair) = multi_region_session_pair(ctx, spec, usage)?;
                    super::park(ctx, &p, vec![pair.public, pair.private]);
                    Ok(kind)
                },
            )
            .await?;
        drop(permit);
        self.submit(
            LockClass::Exclusive,
            "persist_multi_region_pair",
            move |ctx| {
                super::ops::refuse_known_id(ctx, &id, "C_CopyObject")?;
                match super::take_parked(&pending)[..] {
                    [public, private] => super::asym::persist_key_pair(
                        ctx,
                        id,
                        super::asym::SessionPair { public, private },
                    ),
                    _ => Err(super::nothing_parked(ctx, "persist_multi_region_pair")),
                }
            },
        )
        .await?;
        Ok(kind)
    }
}

/// A multi-Region pair of `spec` as session objects: the CMK public template, the private
/// half with the wrapped custody ([`BlobKind::template`]).
fn multi_region_session_pair(
    ctx: &mut WorkerCtx,
    spec: PairSpec,
    usage: PairUsage,
) -> Result<(BlobKind, super::asym::SessionPair), HsmError> {
    let oaep = match (spec, usage) {
        (PairSpec::Rsa(_), PairUsage::Decrypt) => super::oaep::sha256_support(ctx)?,
        _ => OaepSha256::Device,
    };
    let kind = BlobKind::Private {
        family: PairFamily::of(spec),
        usage,
        raw_oaep: oaep == OaepSha256::RawRsa,
    };
    let (mech, public_t, _) =
        super::asym::cmk_pair_generation(&ObjectId([0; 20]), spec, usage, oaep);
    let public_t = super::asym::as_session_template(public_t);
    let private_t = kind.template(false);
    let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
        s.generate_key_pair(&mech, &public_t, &private_t)
    })?;
    Ok((kind, super::asym::SessionPair { public, private }))
}

/// The security officer's ceremony: import `peer`'s transport public key (`spki`, RSA) into
/// this token as a trusted, wrap-only public token object, and make that peer's carrier key
/// (each unless present: a second run with the same key changes nothing). Blocking and standalone, like
/// [`super::wrapped::trust_master`] (the SO login fails beside an open [`Hsm`] on the token).
/// The SO PIN is used for `C_Login` only and never kept or logged.
pub fn trust_peer(
    module_path: &Path,
    token_label: &str,
    so_pin: &Pin,
    peer: &RegionName,
    spki: &[u8],
) -> Result<PeerTrust, HsmError> {
    let Some((n, e)) = der::rsa_from_spki(spki) else {
        let detail = "the peer's transport key is not an RSA SubjectPublicKeyInfo";
        return Err(HsmError::new(
            HsmErrorKind::Config,
            "trust_peer",
            token_label,
            detail,
        ));
    };
    let outcome = module::with_standalone_session(module_path, token_label, |c, s| {
        let ceremony = PeerCeremony {
            c,
            s,
            token: token_label,
        };
        ceremony.run(so_pin, peer, n, e)
    });
    tracing::info!(token = token_label, peer = %peer.0, outcome = ?outcome, "region peer trust ceremony");
    outcome
}

struct PeerCeremony<'a> {
    c: &'a Counters,
    s: &'a Session,
    token: &'a str,
}

impl PeerCeremony<'_> {
    fn call<T>(
        &self,
        call: Call,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.c.call(call, self.token, || f(self.s))
    }

    fn run(
        &self,
        so_pin: &Pin,
        peer: &RegionName,
        n: Vec<u8>,
        e: Vec<u8>,
    ) -> Result<PeerTrust, HsmError> {
        let auth = AuthPin::from(so_pin.expose());
        self.call(Call::Login, |s| s.login(UserType::So, Some(&auth)))?;
        let label = peer.peer_label().into_bytes();
        let search = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Label(label.clone()),
        ];
        let found = self.call(Call::FindObjects, |s| s.find_objects(&search))?;
        let made_key = match found.first() {
            Some(h) => {
                self.existing(*h, &n, peer)?;
                false
            }
            None => {
                let t = Template::public(KeyType::RSA)
                    .token(true)
                    .private_object(false)
                    .allow(Usage::Wrap)
                    .with(Attribute::Modulus(n))
                    .with(Attribute::PublicExponent(e))
                    .with(Attribute::Trusted(true))
                    .label(label)
                    .build();
                self.call(Call::CreateObject, |s| s.create_object(&t))?;
                true
            }
        };
        let made_carrier = self.ensure_carrier(peer)?;
        Ok(if made_key || made_carrier {
            PeerTrust::Created
        } else {
            PeerTrust::AlreadyTrusted
        })
    }

    /// The peer's carrier key (see [`carrier_template`]), made unless present; true if made.
    fn ensure_carrier(&self, peer: &RegionName) -> Result<bool, HsmError> {
        let search = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Label(peer.carrier_label().into_bytes()),
        ];
        if !self
            .call(Call::FindObjects, |s| s.find_objects(&search))?
            .is_empty()
        {
            return Ok(false);
        }
        let t = carrier_template(peer);
        self.call(Call::GenerateKey, |s| {
            s.generate_key(&Mechanism::AesKeyGen, &t)
        })?;
        Ok(true)
    }

    /// A key already bears the peer's label: the same trusted key is a no-op, anything else
    /// is refused (replacing a region's trust is its own decision).
    fn existing(
        &self,
        h: ObjectHandle,
        n: &[u8],
        peer: &RegionName,
    ) -> Result<PeerTrust, HsmError> {
        let types = [AttributeType::Modulus, AttributeType::Trusted];
        let attrs = self.call(Call::GetAttributeValue, |s| s.get_attributes(h, &types))?;
        let same = attrs
            .iter()
            .any(|a| matches!(a, Attribute::Modulus(m) if m.as_slice() == n));
        if same && attrs.contains(&Attribute::Trusted(true)) {
            return Ok(PeerTrust::AlreadyTrusted);
        }
        let detail = format!(
            "another key is labelled for region {}: remove it first",
            peer.0
        );
        Err(HsmError::new(
            HsmErrorKind::Config,
            "trust_peer",
            self.token,
            detail,
        ))
    }
}
