//! Wrapped-key residency (issue 19): key material lives outside the token, wrapped under an
//! HSM-resident master key, and is unwrapped on the device into a session object when used.
//! The token then holds a handful of objects whatever the number of keys.
//!
//! # Master keys
//!
//! - **Master** `p11kms/master/v<N>`: AES-256 token object, private, sensitive, never
//!   extractable, `CKA_WRAP` and `CKA_UNWRAP` only, `CKA_ALLOWED_MECHANISMS` =
//!   `[CKM_AES_KEY_WRAP_PAD]`. Only a master with `CKA_TRUSTED` = true wraps key material:
//!   p11kms reads the attribute back before every wrap, and the device itself refuses to wrap
//!   a `CKA_WRAP_WITH_TRUSTED` key under anything else. `CKA_TRUSTED` can only be set by the
//!   security officer: [`trust_master`] is that one-time ceremony (a standalone process).
//!   [`super::Hsm::create_master_untrusted`] makes an untrusted one (the daemon's first start
//!   in wrapped mode), usable for nothing until the ceremony replaces it.
//! - **Bind key** `p11kms/master-bind/v<N>`: HMAC-SHA-256 generic-secret token key (sign and
//!   verify only, sensitive, never extractable), made by the user beside each master. It tags
//!   every blob on the device, binding it to its key version.
//! - **`CKA_ID`s**: 16-byte prefix + version u32 BE, 20 bytes like an [`ObjectId`] but never
//!   equal to one: key ids are UUIDv4, whose byte 6 has high nibble 4, and both prefixes have
//!   `:` (0x3a) there. Master: `p11kms:master:00`; bind key: `p11kms:mbind:000`.
//!
//! # Blob format (version 1)
//!
//! ```text
//! fmt u8 = 1 | master u32 BE | kind u8 | len u16 BE | wrapped[len] | tag[32]
//! tag = HMAC-SHA-256 on the device, under the bind key of `master`, of
//!       "p11kms-wrapped-v1" | ObjectId (20) | fmt | master | kind | len | wrapped
//! ```
//!
//! `kind`: 1 AES-256 (CMK version), 2/3/4/5 HMAC-SHA-224/256/384/512. `wrapped` is
//! `CKM_AES_KEY_WRAP_PAD` (RFC 5649) of the key under the master. A blob presented for another
//! [`ObjectId`] (moved to another key's row) or edited fails the device's `C_Verify` and is
//! never unwrapped: [`HsmErrorKind::BlobRejected`].
//!
//! # Use
//!
//! Keys are generated as session objects (sensitive, `CKA_EXTRACTABLE` and
//! `CKA_WRAP_WITH_TRUSTED` true, the usages of the token templates), wrapped and tagged in the
//! same job, and kept in the generating worker's cache. Every operation resolves its key
//! through `ops::with_copy`, which asks this module first: the worker's LRU of unwrapped
//! session objects, then the [`BlobSource`] (a blob: verify, unwrap, cache), then the token.
//! The LRU is per worker (capacity [`super::HsmConfig::wrapped_cache`]); an entry dies with its
//! worker's session (a reopen empties the cache) and eviction destroys the session object.
//!
//! # Residency migration
//!
//! `p11kms key-store migrate-residency` (`core::migrate`) moves keys both ways with three
//! jobs. [`wrapped_to_token`] unwraps a blob into the version's token object with the custody
//! of the session copies (sensitive, `CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED` true:
//! [`Template::wrapped_token`]), so that only a trusted master can ever wrap it again.
//! [`token_to_wrapped`] wraps such a token object under the newest trusted master. Each
//! checks on the device that both copies hold the same key (the import check value: AES-GCM
//! of a device-random block, or an HMAC, computed under one and again under the other).
//! [`destroy_token_twin`] clears a token object an interrupted run left beside its blob. A
//! key generated in token residency is never extractable and PKCS#11 never makes it
//! extractable again (`CKA_EXTRACTABLE` goes from true to false only; `C_WrapKey` answers
//! `CKR_KEY_UNEXTRACTABLE`): it can never become a blob.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::asym::{Curve, PairSpec, PairUsage};
use super::call::{Call, Counters};
use super::error::{is_handle_invalid, HsmError, HsmErrorKind};
use super::mac::MacAlg;
use super::oaep::OaepSha256;
use super::objects::{ObjectId, Part};
use super::pool::WorkerCtx;
use super::template::{Template, Usage};
use super::unwrap::{HmacSpec, MaterialKind};
use super::{module, Pin};

/// Default capacity of each worker's cache of unwrapped keys. 4096 per worker (8192 with the
/// default two workers) keeps a busy tenant set resident while bounding the session objects
/// SoftHSM2 walks on `C_CloseSession`, far below the token-wide copy limit (50,000).
pub const DEFAULT_WRAPPED_CACHE: usize = 4096;

const BLOB_FORMAT: u8 = 1;
const HEADER_LEN: usize = 8;
const TAG_LEN: usize = 32;
const TAG_DOMAIN: &[u8] = b"p11kms-wrapped-v1";
const MASTER_ID_PREFIX: &[u8; 16] = b"p11kms:master:00";
const BIND_ID_PREFIX: &[u8; 16] = b"p11kms:mbind:000";

/// A master wrapping key's version (`p11kms/master/v<N>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterVersion(pub u32);

impl MasterVersion {
    /// `CKA_LABEL` of the master: `p11kms/master/v<N>`.
    pub fn label(self) -> String {
        format!("p11kms/master/v{}", self.0)
    }

    /// `CKA_LABEL` of its bind key: `p11kms/master-bind/v<N>`.
    pub fn bind_label(self) -> String {
        format!("p11kms/master-bind/v{}", self.0)
    }

    /// `CKA_ID` of the master (see the module header).
    pub fn cka_id(self) -> [u8; 20] {
        id_with(MASTER_ID_PREFIX, self.0)
    }

    /// `CKA_ID` of its bind key.
    pub fn bind_cka_id(self) -> [u8; 20] {
        id_with(BIND_ID_PREFIX, self.0)
    }

    /// The version of a master's `CKA_ID`; `None` for any other id.
    pub fn from_cka_id(id: &[u8]) -> Option<MasterVersion> {
        let v = id.strip_prefix(MASTER_ID_PREFIX.as_slice())?;
        Some(MasterVersion(u32::from_be_bytes(v.try_into().ok()?)))
    }
}

impl fmt::Display for MasterVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Whether `id` is the `CKA_ID` of a master or bind key (for reconciliation: they belong to
/// no key version).
pub fn is_master_object(id: &[u8]) -> bool {
    id.len() == 20 && (id.starts_with(MASTER_ID_PREFIX) || id.starts_with(BIND_ID_PREFIX))
}

fn id_with(prefix: &[u8; 16], v: u32) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..16].copy_from_slice(prefix);
    id[16..].copy_from_slice(&v.to_be_bytes());
    id
}

/// The newest master key on the token, as read at [`super::Hsm::master_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterState {
    /// No master key: wrapped mode has never started on this token.
    Absent,
    /// The newest master is not trusted yet: the SO ceremony ([`trust_master`]) is due; no key
    /// can be generated or rewrapped under it.
    Untrusted(MasterVersion),
    /// The newest master is trusted: keys are wrapped under it.
    Trusted(MasterVersion),
}

/// What [`trust_master`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustOutcome {
    /// There was no master of that version: a trusted one was made.
    Created,
    /// An untrusted master of that version was replaced by a trusted one.
    Replaced,
    /// It was trusted already: nothing changed (the bind key was made if missing).
    AlreadyTrusted,
}

/// What a blob holds (its `kind` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// An AES-256 CMK version (AES-GCM encrypt and decrypt).
    Aes256,
    /// An HMAC key of this algorithm (sign and verify).
    Hmac(MacAlg),
    /// The private half of a key pair (PKCS#8 wrapped by the device). The public half is
    /// never on the token: the caller keeps the SPKI [`super::Hsm::generate_wrapped_pair`]
    /// returns.
    Private {
        /// RSA, EC or Ed25519: the object's key type and mechanisms.
        family: PairFamily,
        /// What the private half may do.
        usage: PairUsage,
        /// RSA decryption keys also allow raw RSA (the device lacks OAEP-SHA-256).
        raw_oaep: bool,
    },
}

/// The family of a key pair: what its private object's key type and mechanisms depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairFamily {
    /// RSA (any modulus size).
    Rsa,
    /// EC (any curve).
    Ec,
    /// Ed25519.
    Ed25519,
}

impl PairFamily {
    /// The family of `spec`.
    pub fn of(spec: PairSpec) -> PairFamily {
        match spec {
            PairSpec::Rsa(_) => PairFamily::Rsa,
            PairSpec::Ec(_) => PairFamily::Ec,
            PairSpec::Ed25519 => PairFamily::Ed25519,
        }
    }

    /// A spec of this family, for templates (which depend on the family only).
    fn spec(self) -> PairSpec {
        match self {
            PairFamily::Rsa => PairSpec::Rsa(2048),
            PairFamily::Ec => PairSpec::Ec(Curve::P256),
            PairFamily::Ed25519 => PairSpec::Ed25519,
        }
    }
}

const FAMILIES: [PairFamily; 3] = [PairFamily::Rsa, PairFamily::Ec, PairFamily::Ed25519];
const USAGES: [PairUsage; 3] = [PairUsage::Sign, PairUsage::Decrypt, PairUsage::KeyAgreement];
/// Kind codes of private halves: `0x40 | family << 3 | usage << 1 | raw_oaep`.
const PRIVATE_KINDS: u8 = 0x40;

impl BlobKind {
    fn code(self) -> u8 {
        match self {
            BlobKind::Aes256 => 1,
            BlobKind::Hmac(MacAlg::Sha224) => 2,
            BlobKind::Hmac(MacAlg::Sha256) => 3,
            BlobKind::Hmac(MacAlg::Sha384) => 4,
            BlobKind::Hmac(MacAlg::Sha512) => 5,
            BlobKind::Private {
                family,
                usage,
                raw_oaep,
            } => {
                let f = FAMILIES.iter().position(|x| *x == family).unwrap_or(0) as u8;
                let u = USAGES.iter().position(|x| *x == usage).unwrap_or(0) as u8;
                PRIVATE_KINDS | f << 3 | u << 1 | u8::from(raw_oaep)
            }
        }
    }

    fn from_code(code: u8) -> Option<BlobKind> {
        Some(match code {
            1 => BlobKind::Aes256,
            2 => BlobKind::Hmac(MacAlg::Sha224),
            3 => BlobKind::Hmac(MacAlg::Sha256),
            4 => BlobKind::Hmac(MacAlg::Sha384),
            5 => BlobKind::Hmac(MacAlg::Sha512),
            c if c & 0xc0 == PRIVATE_KINDS => BlobKind::Private {
                family: *FAMILIES.get(usize::from(c >> 3 & 0x7))?,
                usage: *USAGES.get(usize::from(c >> 1 & 0x3))?,
                raw_oaep: c & 1 == 1,
            },
            _ => return None,
        })
    }

    /// The session-object template of a key of this kind; `value_len` only for generation
    /// (an unwrapped key's length comes from the blob).
    pub(crate) fn template(self, value_len: bool) -> Vec<Attribute> {
        match self.usages(value_len) {
            Some(t) => t.wrapped_session().build(),
            None => self.private_template(),
        }
    }

    /// The template of the token object of secret key version `id` moved from wrapped
    /// residency ([`Template::wrapped_token`]); `None` for a key pair.
    fn token_template(self, id: &ObjectId) -> Option<Vec<Attribute>> {
        self.token_template_of(id, false)
    }

    /// [`BlobKind::token_template`] with `CKA_VALUE_LEN` when `value_len` (for generation):
    /// also the token object of a multi-Region key (`region`).
    pub(crate) fn token_template_of(
        self,
        id: &ObjectId,
        value_len: bool,
    ) -> Option<Vec<Attribute>> {
        let t = self.usages(value_len)?.wrapped_token();
        Some(t.id(&id.0).label(id.label()).build())
    }

    /// A private half's session template.
    fn private_template(self) -> Vec<Attribute> {
        let BlobKind::Private {
            family,
            usage,
            raw_oaep,
        } = self
        else {
            return Vec::new();
        };
        let oaep = if raw_oaep {
            OaepSha256::RawRsa
        } else {
            OaepSha256::Device
        };
        super::asym::wrapped_private_template(family.spec(), usage, oaep)
    }

    /// A secret key's class, type, usages and mechanism (and length for generation);
    /// `None` for a key pair.
    fn usages(self, value_len: bool) -> Option<Template> {
        let t = match self {
            BlobKind::Private { .. } => return None,
            BlobKind::Aes256 => Template::secret(KeyType::AES)
                .allow(Usage::Encrypt)
                .allow(Usage::Decrypt)
                .mechanisms(vec![MechanismType::AES_GCM]),
            BlobKind::Hmac(alg) => Template::secret(KeyType::GENERIC_SECRET)
                .allow(Usage::Sign)
                .allow(Usage::Verify)
                .mechanisms(vec![alg.mechanism_type()]),
        };
        let t = match (value_len, self) {
            (true, BlobKind::Aes256) => t.value_len(32),
            (true, BlobKind::Hmac(alg)) => t.value_len(alg.mac_len()),
            _ => t,
        };
        Some(t)
    }

    /// The object part operations resolve for a key of this kind.
    fn part(self) -> Part {
        match self {
            BlobKind::Private { .. } => Part::Private,
            _ => Part::Secret,
        }
    }

    /// The generation mechanism of a secret key of this kind (pairs: `asym`).
    pub(super) fn generation(self) -> Mechanism<'static> {
        match self {
            BlobKind::Hmac(_) => Mechanism::GenericSecretKeyGen,
            _ => Mechanism::AesKeyGen,
        }
    }
}

/// Why bytes are not a wrapped blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobFormatError {
    /// Shorter than header and tag.
    #[error("wrapped blob too short ({0} bytes)")]
    TooShort(usize),
    /// A format byte this build does not know.
    #[error("unknown wrapped blob format {0}")]
    UnknownFormat(u8),
    /// A kind byte this build does not know.
    #[error("unknown wrapped key kind {0}")]
    UnknownKind(u8),
    /// The declared length does not match the bytes.
    #[error("wrapped blob length mismatch (declared {declared}, found {found})")]
    LengthMismatch {
        /// The `len` field.
        declared: usize,
        /// The bytes between header and tag.
        found: usize,
    },
}

/// A key wrapped under a master, tagged for its [`ObjectId`] (format in the module header).
/// Holds no plaintext; `Debug` shows only the length all the same.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedBlob {
    bytes: Vec<u8>,
}

impl WrappedBlob {
    /// Parse stored bytes (structure only: the tag is checked on the device, at unwrap).
    pub fn from_bytes(bytes: &[u8]) -> Result<WrappedBlob, BlobFormatError> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(BlobFormatError::TooShort(bytes.len()));
        }
        if bytes[0] != BLOB_FORMAT {
            return Err(BlobFormatError::UnknownFormat(bytes[0]));
        }
        if BlobKind::from_code(bytes[5]).is_none() {
            return Err(BlobFormatError::UnknownKind(bytes[5]));
        }
        let declared = usize::from(u16::from_be_bytes([bytes[6], bytes[7]]));
        let found = bytes.len() - HEADER_LEN - TAG_LEN;
        if declared != found {
            return Err(BlobFormatError::LengthMismatch { declared, found });
        }
        Ok(WrappedBlob {
            bytes: bytes.to_vec(),
        })
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The stored form, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The master version that wraps it.
    pub fn master(&self) -> MasterVersion {
        MasterVersion(u32::from_be_bytes([
            self.bytes[1],
            self.bytes[2],
            self.bytes[3],
            self.bytes[4],
        ]))
    }

    /// What it holds.
    pub fn kind(&self) -> BlobKind {
        BlobKind::from_code(self.bytes[5]).unwrap_or(BlobKind::Aes256)
    }

    /// Header and wrapped bytes, before a tag is appended.
    pub(super) fn unsigned(
        master: MasterVersion,
        kind: BlobKind,
        wrapped: &[u8],
        token: &str,
    ) -> Result<Vec<u8>, HsmError> {
        let len = u16::try_from(wrapped.len()).map_err(|_| {
            HsmError::new(
                HsmErrorKind::Other,
                "C_WrapKey",
                token,
                "wrapped key longer than 65535 bytes",
            )
        })?;
        let mut b = Vec::with_capacity(HEADER_LEN + wrapped.len() + TAG_LEN);
        b.push(BLOB_FORMAT);
        b.extend_from_slice(&master.0.to_be_bytes());
        b.push(kind.code());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(wrapped);
        Ok(b)
    }

    pub(super) fn wrapped(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - TAG_LEN]
    }

    pub(super) fn tag(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - TAG_LEN..]
    }

    /// What the tag of a blob covers, from the blob itself.
    pub(super) fn tag_message(&self, id: &ObjectId) -> Vec<u8> {
        Self::tagged_message(&self.bytes[..self.bytes.len() - TAG_LEN], id)
    }

    /// A blob of `unsigned` bytes and their `tag` (the raw benchmark's fixture).
    #[cfg(feature = "bench")]
    pub(super) fn with_tag(mut unsigned: Vec<u8>, tag: &[u8]) -> WrappedBlob {
        unsigned.extend_from_slice(tag);
        WrappedBlob { bytes: unsigned }
    }

    /// What the tag covers (the module header's formula).
    pub(super) fn tagged_message(unsigned: &[u8], id: &ObjectId) -> Vec<u8> {
        [TAG_DOMAIN, id.as_bytes(), unsigned].concat()
    }
}

impl fmt::Debug for WrappedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedBlob({} bytes)", self.bytes.len())
    }
}

/// Where workers find the blob of a wrapped key version (the core's key cache). `None`: the
/// key is a token object (or unknown), and the token path serves it.
pub trait BlobSource: Send + Sync {
    /// The blob of key version `id`, if it is wrapped.
    fn blob(&self, id: ObjectId) -> Option<Arc<WrappedBlob>>;

    /// The public key (DER SPKI) of wrapped key pair `id`: public-key operations (verify,
    /// RSA encrypt) run on a session public object made from it. Default: none, and such
    /// operations of wrapped pairs answer `ObjectNotFound`.
    fn public_key(&self, _id: ObjectId) -> Option<Arc<Vec<u8>>> {
        None
    }
}

// ---------------------------------------------------------------- the per-worker LRU

/// What a worker caches: the object of one part of one key version.
type Slot = (ObjectId, Part);

/// A least-recently-used map from (key version, part) to handle, with a capacity. Generic over the
/// handle type only so that its unit test needs no device.
pub(crate) struct Lru<H> {
    cap: usize,
    tick: u64,
    map: HashMap<Slot, (H, u64)>,
    order: BTreeMap<u64, Slot>,
    /// The reset epoch of the session whose objects these are.
    pub(crate) epoch: u64,
}

impl<H: Copy> Lru<H> {
    /// An empty cache of `cap` entries for a session of reset epoch `epoch`.
    pub(crate) fn new(cap: usize, epoch: u64) -> Self {
        Lru {
            cap,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
            epoch,
        }
    }

    /// The handle of `id`, marked most recently used.
    pub(crate) fn get(&mut self, id: &Slot) -> Option<H> {
        self.tick += 1;
        let (h, t) = self.map.get_mut(id)?;
        self.order.remove(t);
        *t = self.tick;
        self.order.insert(self.tick, *id);
        Some(*h)
    }

    /// Whether `id` is still cached as `h` (nothing evicted or replaced it).
    pub(crate) fn holds(&self, id: &Slot, h: H) -> bool
    where
        H: PartialEq,
    {
        self.map.get(id).is_some_and(|(held, _)| *held == h)
    }

    /// Insert `h` for `id`; returns the handles that left (a previous one for `id`, the least
    /// recently used ones past capacity; `h` itself when the capacity is 0).
    pub(crate) fn insert(&mut self, id: Slot, h: H) -> Vec<H> {
        let mut out: Vec<H> = self.remove(&id).into_iter().collect();
        if self.cap == 0 {
            out.push(h);
            return out;
        }
        while self.map.len() >= self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            out.extend(self.map.remove(&oldest).map(|(h, _)| h));
        }
        self.tick += 1;
        self.map.insert(id, (h, self.tick));
        self.order.insert(self.tick, id);
        out
    }

    /// Forget `id`.
    pub(crate) fn remove(&mut self, id: &Slot) -> Option<H> {
        let (h, t) = self.map.remove(id)?;
        self.order.remove(&t);
        Some(h)
    }

    /// Forget every version of key `key_id`.
    pub(crate) fn remove_key(&mut self, key_id: &[u8; 16]) -> Vec<H> {
        let ids: Vec<Slot> = self
            .map
            .keys()
            .filter(|(id, _)| &id.key_id() == key_id)
            .copied()
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Forget everything (the session and its objects are gone); now for epoch `epoch`.
    pub(crate) fn reset(&mut self, epoch: u64) {
        self.map.clear();
        self.order.clear();
        self.epoch = epoch;
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// One worker's cache of unwrapped session objects.
pub(crate) type WorkerCache = Arc<Mutex<Lru<ObjectHandle>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handles of one master version and its bind key (token objects).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MasterHandles {
    master: ObjectHandle,
    bind: ObjectHandle,
    trusted: bool,
}

/// Wrapped residency's state shared by an `Hsm` and its workers.
pub(crate) struct WrappedShared {
    capacity: usize,
    /// Installed once; read on every job, so without a lock.
    source: OnceLock<Arc<dyn BlobSource>>,
    caches: Mutex<Vec<Weak<Mutex<Lru<ObjectHandle>>>>>,
    masters: RwLock<BTreeMap<MasterVersion, MasterHandles>>,
    /// Session copies of masters and bind keys for the miss path, with the reset epoch they
    /// were made in (see [`with_unwrap_keys`]).
    copies: RwLock<BTreeMap<MasterVersion, (MasterHandles, u64)>>,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    /// How many times [`WrappedShared::evict_key`] has begun: a copy made from a blob read
    /// before one began is not cached (it may be of the evicted key).
    key_evictions: AtomicU64,
}

impl WrappedShared {
    /// State for workers caching up to `capacity` unwrapped keys each.
    pub(crate) fn new(capacity: usize) -> Self {
        WrappedShared {
            capacity,
            source: OnceLock::new(),
            caches: Mutex::default(),
            masters: RwLock::default(),
            copies: RwLock::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            key_evictions: AtomicU64::new(0),
        }
    }

    /// A new worker's (empty) cache, registered for [`WrappedShared::evict_key`].
    pub(crate) fn new_worker_cache(&self, epoch: u64) -> WorkerCache {
        let cache = Arc::new(Mutex::new(Lru::new(self.capacity, epoch)));
        let mut caches = lock(&self.caches);
        caches.retain(|w| w.strong_count() > 0);
        caches.push(Arc::downgrade(&cache));
        cache
    }

    /// Install the blob source (once: a second source is refused and logged).
    pub(crate) fn set_source(&self, source: Arc<dyn BlobSource>) {
        if self.source.set(source).is_err() {
            tracing::error!("a blob source is installed already; the first one stays");
        }
    }

    fn source(&self) -> Option<&dyn BlobSource> {
        self.source.get().map(|s| &**s)
    }

    fn live_caches(&self) -> Vec<WorkerCache> {
        lock(&self.caches)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Unwrapped keys held by all workers.
    pub(crate) fn resident(&self) -> usize {
        self.live_caches().iter().map(|c| lock(c).len()).sum()
    }

    /// Remove every version of `key_id` from every worker's cache: the handles still alive in
    /// reset epoch `epoch` (the caller destroys them) and how many entries went.
    fn evict_key(&self, key_id: &[u8; 16], epoch: u64) -> (Vec<ObjectHandle>, usize) {
        // Counted before any cache is searched (see `cache_unless_evicted`).
        self.key_evictions.fetch_add(1, Ordering::SeqCst);
        let mut live = Vec::new();
        let mut n = 0;
        for cache in self.live_caches() {
            let mut c = lock(&cache);
            let gone = c.remove_key(key_id);
            n += gone.len();
            if c.epoch == epoch {
                live.extend(gone);
            }
        }
        (live, n)
    }

    fn master(&self, v: MasterVersion) -> Option<MasterHandles> {
        self.masters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&v)
            .copied()
    }

    fn remember_master(&self, v: MasterVersion, m: Option<MasterHandles>) {
        let mut t = self.masters.write().unwrap_or_else(|p| p.into_inner());
        match m {
            Some(m) => t.insert(v, m),
            None => t.remove(&v),
        };
    }

    /// The miss path's handles of master `v` made in reset epoch `epoch`, if any.
    fn copy_of(&self, v: MasterVersion, epoch: u64) -> Option<MasterHandles> {
        let t = self.copies.read().unwrap_or_else(|p| p.into_inner());
        t.get(&v).filter(|(_, e)| *e == epoch).map(|(m, _)| *m)
    }

    fn remember_copy(&self, v: MasterVersion, m: Option<(MasterHandles, u64)>) {
        let mut t = self.copies.write().unwrap_or_else(|p| p.into_inner());
        match m {
            Some(m) => t.insert(v, m),
            None => t.remove(&v),
        };
    }

    /// Forget every master copy: the session that made them is closing or closed. Called
    /// with no job running (the session gate).
    pub(crate) fn forget_copies(&self) {
        self.copies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn newest_trusted(&self) -> Option<MasterVersion> {
        let t = self.masters.read().unwrap_or_else(|p| p.into_inner());
        t.iter().rev().find(|(_, m)| m.trusted).map(|(v, _)| *v)
    }
}

// ---------------------------------------------------------------- masters on the device

fn config_error(ctx: &WorkerCtx, function: &'static str, detail: String) -> HsmError {
    HsmError::new(HsmErrorKind::Config, function, ctx.token(), detail)
}

pub(crate) fn find_one(
    ctx: &mut WorkerCtx,
    id: &[u8; 20],
) -> Result<Option<ObjectHandle>, HsmError> {
    let search = [
        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Id(id.to_vec()),
    ];
    super::ops::find_unique(ctx, &search, |n| {
        format!("{n} objects share a master CKA_ID")
    })
}

fn read_trusted(ctx: &mut WorkerCtx, h: ObjectHandle) -> Result<bool, HsmError> {
    let pick = |a| match a {
        Attribute::Trusted(t) => Some(t),
        _ => None,
    };
    super::ops::read_attribute(ctx, h, AttributeType::Trusted, pick, "no CKA_TRUSTED")
}

/// Find master `v` and its bind key on the token; `None` when the master is absent.
fn find_master(ctx: &mut WorkerCtx, v: MasterVersion) -> Result<Option<MasterHandles>, HsmError> {
    let Some(master) = find_one(ctx, &v.cka_id())? else {
        return Ok(None);
    };
    let Some(bind) = find_one(ctx, &v.bind_cka_id())? else {
        let detail = format!("master key {v} has no bind key ({})", v.bind_label());
        return Err(config_error(ctx, "C_FindObjects", detail));
    };
    let trusted = read_trusted(ctx, master)?;
    Ok(Some(MasterHandles {
        master,
        bind,
        trusted,
    }))
}

/// Master `v`'s handles, cached (true) or found now (false).
fn resolve_master(
    ctx: &mut WorkerCtx,
    v: MasterVersion,
) -> Result<(MasterHandles, bool), HsmError> {
    if let Some(m) = ctx.shared.wrapped.master(v) {
        return Ok((m, true));
    }
    match find_master(ctx, v)? {
        Some(m) => {
            ctx.shared.wrapped.remember_master(v, Some(m));
            Ok((m, false))
        }
        None => Err(HsmError::not_found(
            ctx.token(),
            format!("no master key {v} ({}) on the token", v.label()),
        )),
    }
}

/// Run `f` with master `v`'s handles; a cached handle the device no longer knows (another
/// process replaced the master) is looked up again once.
fn with_master<T>(
    ctx: &mut WorkerCtx,
    v: MasterVersion,
    mut f: impl FnMut(&mut WorkerCtx, MasterHandles) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    let (m, cached) = resolve_master(ctx, v)?;
    match f(ctx, m) {
        Err(e) if cached && e.kind == HsmErrorKind::ObjectNotFound => {
            ctx.shared.wrapped.remember_master(v, None);
            let (m, _) = resolve_master(ctx, v)?;
            f(ctx, m)
        }
        other => other,
    }
}

/// Run `f` with the miss path's handles of master `v`: session copies of the master and its
/// bind key (`C_CopyObject` with `CKA_TOKEN` false; the copies keep every other attribute:
/// sensitive, never extractable, unwrap and verify only as the originals). SoftHSM2 checks
/// a token object against its file (open, lock, read, close) on every use, which cost an
/// unwrap more than its cryptography; session objects live in memory. The copies die with
/// the session that made them, so they are used only in the reset epoch they were made in.
/// Without `session_key_copies`, or when the device refuses the copy, the token objects serve.
fn with_unwrap_keys<T>(
    ctx: &mut WorkerCtx,
    v: MasterVersion,
    mut f: impl FnMut(&mut WorkerCtx, MasterHandles) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    if !ctx.shared.copies.enabled() {
        return with_master(ctx, v, f);
    }
    let epoch = ctx.session_epoch();
    if let Some(m) = ctx.shared.wrapped.copy_of(v, epoch) {
        match f(ctx, m) {
            Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {
                ctx.shared.wrapped.remember_copy(v, None);
            }
            other => return other,
        }
    }
    let m = with_master(ctx, v, |ctx, m| Ok(copy_master(ctx, m)))?;
    ctx.shared.wrapped.remember_copy(v, Some((m, epoch)));
    f(ctx, m)
}

/// Session copies of master `m` and its bind key; `m` itself when the device refuses.
fn copy_master(ctx: &mut WorkerCtx, m: MasterHandles) -> MasterHandles {
    let t = [Attribute::Token(false)];
    let master = match ctx.call(Call::CopyObject, |s| s.copy_object(m.master, &t)) {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(token = %ctx.token(), error = %e, "the master key cannot be copied to a session object; the token object serves");
            return m;
        }
    };
    match ctx.call(Call::CopyObject, |s| s.copy_object(m.bind, &t)) {
        Ok(bind) => MasterHandles {
            master,
            bind,
            trusted: m.trusted,
        },
        Err(e) => {
            tracing::debug!(token = %ctx.token(), error = %e, "the bind key cannot be copied to a session object; the token objects serve");
            destroy_session_objects(ctx, &[master]);
            m
        }
    }
}

/// Every master on the token (newest last), with trust read from the device; the table of
/// known masters is replaced by what was found.
pub(crate) fn scan_masters(ctx: &mut WorkerCtx) -> Result<Vec<(MasterVersion, bool)>, HsmError> {
    let search = [
        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Wrap(true),
    ];
    let found = ctx.call(Call::FindObjects, |s| s.find_objects(&search))?;
    let mut versions = Vec::new();
    for h in found {
        let pick = |a| match a {
            Attribute::Id(id) => MasterVersion::from_cka_id(&id),
            _ => None,
        };
        if let Ok(v) = super::ops::read_attribute(ctx, h, AttributeType::Id, pick, "no id") {
            versions.push(v);
        }
    }
    versions.sort();
    let mut table = BTreeMap::new();
    for v in versions {
        if let Some(m) = find_master(ctx, v)? {
            table.insert(v, m);
        }
    }
    let out = table.iter().map(|(v, m)| (*v, m.trusted)).collect();
    *ctx.shared
        .wrapped
        .masters
        .write()
        .unwrap_or_else(|p| p.into_inner()) = table;
    Ok(out)
}

/// The newest master's state.
pub(crate) fn master_state(ctx: &mut WorkerCtx) -> Result<MasterState, HsmError> {
    Ok(match scan_masters(ctx)?.last() {
        None => MasterState::Absent,
        Some((v, true)) => MasterState::Trusted(*v),
        Some((v, false)) => MasterState::Untrusted(*v),
    })
}

fn master_template(v: MasterVersion) -> Template {
    Template::secret(KeyType::AES)
        .value_len(32)
        .allow(Usage::Wrap)
        .allow(Usage::Unwrap)
        .mechanisms(vec![MechanismType::AES_KEY_WRAP_PAD])
        .with(Attribute::Sensitive(true))
        .with(Attribute::Extractable(false))
        .id(&v.cka_id())
        .label(v.label())
}

fn bind_template(v: MasterVersion) -> Vec<Attribute> {
    Template::secret(KeyType::GENERIC_SECRET)
        .value_len(32)
        .token(true)
        .guarded()
        .allow(Usage::Sign)
        .allow(Usage::Verify)
        .mechanisms(vec![MechanismType::SHA256_HMAC])
        .id(&v.bind_cka_id())
        .label(v.bind_label())
        .build()
}

/// Make master `v` untrusted (user-created) with its bind key, each unless present; true if
/// the master was made.
pub(crate) fn create_master_untrusted(
    ctx: &mut WorkerCtx,
    v: MasterVersion,
) -> Result<bool, HsmError> {
    let made = match find_one(ctx, &v.cka_id())? {
        Some(_) => false,
        None => {
            let t = master_template(v).token(true).private_object(true).build();
            ctx.call(Call::GenerateKey, |s| {
                s.generate_key(&Mechanism::AesKeyGen, &t)
            })?;
            true
        }
    };
    if find_one(ctx, &v.bind_cka_id())?.is_none() {
        let t = bind_template(v);
        ctx.call(Call::GenerateKey, |s| {
            s.generate_key(&Mechanism::GenericSecretKeyGen, &t)
        })?;
    }
    scan_masters(ctx)?;
    Ok(made)
}

/// Destroy master `v` and its bind key; `ObjectNotFound` if neither exists.
pub(crate) fn destroy_master(ctx: &mut WorkerCtx, v: MasterVersion) -> Result<(), HsmError> {
    ctx.shared.wrapped.remember_master(v, None);
    if let Some(m) = ctx.shared.wrapped.copy_of(v, ctx.session_epoch()) {
        ctx.shared.wrapped.remember_copy(v, None);
        if let Some(token) = find_one(ctx, &v.cka_id())? {
            // Copies only: never the token objects destroyed just below.
            if m.master != token {
                destroy_session_objects(ctx, &[m.master, m.bind]);
            }
        }
    }
    let mut any = false;
    for id in [v.cka_id(), v.bind_cka_id()] {
        if let Some(h) = find_one(ctx, &id)? {
            ctx.call(Call::DestroyObject, |s| s.destroy_object(h))?;
            any = true;
        }
    }
    if !any {
        return Err(HsmError::not_found(
            ctx.token(),
            format!("no master key {v} on the token"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- wrap, tag, unwrap

/// The newest trusted master this `Hsm` knows (the token is scanned when it knows none).
fn current_master(ctx: &mut WorkerCtx) -> Result<MasterVersion, HsmError> {
    if let Some(v) = ctx.shared.wrapped.newest_trusted() {
        return Ok(v);
    }
    scan_masters(ctx)?;
    ctx.shared.wrapped.newest_trusted().ok_or_else(|| {
        config_error(
            ctx,
            "C_WrapKey",
            "no trusted master key on the token (the security officer's trust ceremony has not run)".into(),
        )
    })
}

/// Wrap session key `key` (of `kind`) under master `v` and tag it for `id`. Refuses unless
/// the master reads `CKA_TRUSTED` = true on the device.
fn wrap_under(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    key: ObjectHandle,
    kind: BlobKind,
    v: MasterVersion,
) -> Result<WrappedBlob, HsmError> {
    with_master(ctx, v, |ctx, m| {
        if !read_trusted(ctx, m.master)? {
            let detail = format!("master key {v} is not trusted: p11kms never wraps under it");
            return Err(config_error(ctx, "C_WrapKey", detail));
        }
        let wrapped = ctx.call(Call::WrapKey, |s| {
            s.wrap_key(&Mechanism::AesKeyWrapPad, m.master, key)
        })?;
        let mut bytes = WrappedBlob::unsigned(v, kind, &wrapped, ctx.token())?;
        let message = WrappedBlob::tagged_message(&bytes, id);
        let tag = ctx.call(Call::Sign, |s| {
            s.sign(&Mechanism::Sha256Hmac, m.bind, &message)
        })?;
        bytes.extend_from_slice(&tag);
        Ok(WrappedBlob { bytes })
    })
}

fn rejected(ctx: &WorkerCtx, function: &'static str, detail: String) -> HsmError {
    HsmError::new(HsmErrorKind::BlobRejected, function, ctx.token(), detail)
}

/// Check `blob`'s tag for `id` on the device, then unwrap it into a session object.
pub(crate) fn unwrap_verified(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    blob: &WrappedBlob,
) -> Result<ObjectHandle, HsmError> {
    unwrap_verified_as(ctx, id, blob, &blob.kind().template(false))
}

/// [`unwrap_verified`] into an object of `template`.
fn unwrap_verified_as(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    blob: &WrappedBlob,
    template: &[Attribute],
) -> Result<ObjectHandle, HsmError> {
    let v = blob.master();
    let r = with_unwrap_keys(ctx, v, |ctx, m| {
        let message = blob.tag_message(id);
        let tag = blob.tag();
        let verified = ctx.call_raw(Call::Verify, |s| {
            s.verify(&Mechanism::Sha256Hmac, m.bind, &message, tag)
        });
        match verified {
            Ok(()) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::SignatureInvalid | RvError::SignatureLenRange),
                _,
            )) => {
                let detail = format!("the blob's tag does not verify for {id}: not unwrapped");
                let mut e = rejected(ctx, "C_Verify", detail);
                e.rv = Some(super::error::rv_string(rv));
                return Err(e);
            }
            Err(e) => return Err(ctx.fail(Call::Verify, &e)),
        }
        ctx.call(Call::UnwrapKey, |s| {
            s.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                m.master,
                blob.wrapped(),
                template,
            )
        })
    });
    match r {
        Err(e) if e.kind == HsmErrorKind::ObjectNotFound && e.function == "C_FindObjects" => {
            let detail =
                format!("the blob of {id} names master key {v}, which is not on the token");
            Err(rejected(ctx, "C_FindObjects", detail))
        }
        other => other,
    }
}

/// Destroy session objects; handles already gone are fine.
pub(crate) fn destroy_session_objects(ctx: &mut WorkerCtx, handles: &[ObjectHandle]) {
    for h in handles {
        if let Err(e) = ctx.call_raw(Call::DestroyObject, |s| s.destroy_object(*h)) {
            if !is_handle_invalid(&e) {
                let err = ctx.fail(Call::DestroyObject, &e);
                tracing::warn!(token = %ctx.token(), error = %err, "could not destroy an unwrapped session key");
            }
        }
    }
}

/// Put `h` in this worker's cache for `id`, destroying what it pushes out.
fn cache(ctx: &mut WorkerCtx, id: Slot, h: ObjectHandle) {
    let out = lock(&ctx.wrapped).insert(id, h);
    drop_evicted(ctx, out);
}

/// [`cache`] a copy made from a blob read when `seen` key evictions had begun, unless another
/// has begun since: that one may be of this key and have searched this cache already, so the
/// copy (of a blob since replaced or deleted) is destroyed instead. Checked under the cache's
/// lock, which an eviction takes after counting itself.
fn cache_unless_evicted(ctx: &mut WorkerCtx, id: Slot, h: ObjectHandle, seen: u64) {
    let out = {
        let mut c = lock(&ctx.wrapped);
        if ctx.shared.wrapped.key_evictions.load(Ordering::SeqCst) == seen {
            c.insert(id, h)
        } else {
            vec![h]
        }
    };
    drop_evicted(ctx, out);
}

/// Destroy the copies a cache let go, counted as evictions.
fn drop_evicted(ctx: &mut WorkerCtx, out: Vec<ObjectHandle>) {
    if !out.is_empty() {
        let n = out.len() as u64;
        ctx.shared.wrapped.evictions.fetch_add(n, Ordering::Relaxed);
        destroy_session_objects(ctx, &out);
    }
}

/// Generate a key of `kind` as a session object, wrap it under the current trusted master and
/// tag it for `id`; the session object stays in this worker's cache.
pub(crate) fn generate_wrapped(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    kind: BlobKind,
) -> Result<WrappedBlob, HsmError> {
    let v = current_master(ctx)?;
    let template = kind.template(true);
    let h = ctx.call(Call::GenerateKey, |s| {
        s.generate_key(&kind.generation(), &template)
    })?;
    adopt_under(ctx, id, h, kind, v)
}

/// Wrap session key `h` (made with [`BlobKind::template`]) under the current trusted master
/// for `id` and keep it in this worker's cache; on failure it is destroyed. Imports end here.
pub(crate) fn adopt(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    h: ObjectHandle,
    kind: BlobKind,
) -> Result<WrappedBlob, HsmError> {
    match current_master(ctx) {
        Ok(v) => adopt_under(ctx, id, h, kind, v),
        Err(e) => {
            destroy_session_objects(ctx, &[h]);
            Err(e)
        }
    }
}

fn adopt_under(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    h: ObjectHandle,
    kind: BlobKind,
    v: MasterVersion,
) -> Result<WrappedBlob, HsmError> {
    match wrap_under(ctx, &id, h, kind, v) {
        Ok(blob) => {
            cache(ctx, (id, kind.part()), h);
            Ok(blob)
        }
        Err(e) => {
            destroy_session_objects(ctx, &[h]);
            Err(e)
        }
    }
}

/// A wrapped key pair's second step: wrap the parked private half `h` (made by
/// `asym::generate_wrapped_pair` on some worker's session) under the current trusted master
/// for `id`, and destroy it (it is not this worker's object to cache).
pub(crate) fn wrap_parked(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    h: ObjectHandle,
    kind: BlobKind,
) -> Result<WrappedBlob, HsmError> {
    let r = current_master(ctx).and_then(|v| wrap_under(ctx, &id, h, kind, v));
    destroy_session_objects(ctx, &[h]);
    r
}

/// Unwrap `blob` (checked for `id`) and wrap it again under master `to`, in one job; the
/// transient session object is destroyed.
pub(crate) fn rewrap(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    blob: &WrappedBlob,
    to: MasterVersion,
) -> Result<WrappedBlob, HsmError> {
    let h = unwrap_verified(ctx, &id, blob)?;
    let r = wrap_under(ctx, &id, h, blob.kind(), to);
    destroy_session_objects(ctx, &[h]);
    r
}

/// `p11kms check`: `blob`'s tag verifies for `id` and it unwraps on the device (into a
/// transient session object, destroyed at once).
pub(crate) fn check_blob(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    blob: &WrappedBlob,
) -> Result<(), HsmError> {
    let h = unwrap_verified(ctx, &id, blob)?;
    destroy_session_objects(ctx, &[h]);
    Ok(())
}

// ---------------------------------------------------------------- residency migration

/// What [`token_to_wrapped`] found on the token.
#[derive(Debug)]
pub enum TokenMove {
    /// The token object was wrapped under the newest trusted master into this blob, and the
    /// blob was checked to give back the same material (the token object is untouched).
    Wrapped(WrappedBlob),
    /// The token object is not extractable under a trusted key (a key born in token
    /// residency): PKCS#11 never lets `CKA_EXTRACTABLE` go back to true, so it stays.
    NeverExtractable,
}

/// The import check's material kind of a secret blob kind; `None` for a key pair.
fn material_kind(kind: BlobKind) -> Option<MaterialKind> {
    Some(match kind {
        BlobKind::Aes256 => MaterialKind::Aes256,
        BlobKind::Hmac(MacAlg::Sha224) => MaterialKind::Hmac(HmacSpec::Hmac224),
        BlobKind::Hmac(MacAlg::Sha256) => MaterialKind::Hmac(HmacSpec::Hmac256),
        BlobKind::Hmac(MacAlg::Sha384) => MaterialKind::Hmac(HmacSpec::Hmac384),
        BlobKind::Hmac(MacAlg::Sha512) => MaterialKind::Hmac(HmacSpec::Hmac512),
        BlobKind::Private { .. } => return None,
    })
}

/// Whether objects `a` and `b` hold the same key: the check value of `a` (AES-GCM of a
/// device-random block under a device-random IV, or the HMAC of a device-random message)
/// computed again under `b`, compared in constant time.
fn same_material(
    ctx: &mut WorkerCtx,
    kind: MaterialKind,
    a: ObjectHandle,
    b: ObjectHandle,
) -> Result<bool, HsmError> {
    use subtle::ConstantTimeEq;
    let Some(first) = super::unwrap::check_value(ctx, kind, a, None)? else {
        return Ok(false);
    };
    let Some(second) = super::unwrap::check_value(ctx, kind, b, Some(&first))? else {
        return Ok(false);
    };
    Ok(bool::from(first.value.ct_eq(&second.value)))
}

/// Whether object `h` holds the material of `blob` (tag checked for `id`; the transient
/// session copy is destroyed).
fn same_as_blob(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    kind: MaterialKind,
    h: ObjectHandle,
    blob: &WrappedBlob,
) -> Result<bool, HsmError> {
    let copy = unwrap_verified(ctx, id, blob)?;
    let same = same_material(ctx, kind, h, copy);
    destroy_session_objects(ctx, &[copy]);
    same
}

/// Residency migration wrapped -> token: unwrap `blob` (checked for `id`) straight into the
/// token object of key version `id`, with the custody of the wrapped copies (sensitive,
/// extractable only under a trusted key: [`Template::wrapped_token`]) so that it can move
/// back, then check on the device that the object holds the blob's material. A token object
/// already there (a run interrupted after this step) is checked instead of made again. On a
/// failed check the object made here is destroyed. The blob stays valid; the caller drops it
/// once this succeeded, then evicts the unwrapped copies.
pub(crate) fn wrapped_to_token(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    blob: &WrappedBlob,
) -> Result<(), HsmError> {
    let kind = blob.kind();
    let (Some(material), Some(template)) = (material_kind(kind), kind.token_template(&id)) else {
        let detail = "a key pair cannot move to the token: its public half is not there";
        return Err(config_error(ctx, "C_UnwrapKey", detail.into()));
    };
    let (h, made) = match super::ops::find_part(ctx, &id, Part::Secret)? {
        Some(h) => (h, false),
        None => (unwrap_verified_as(ctx, &id, blob, &template)?, true),
    };
    let checked = same_as_blob(ctx, &id, material, h, blob);
    if !matches!(checked, Ok(true)) {
        if made {
            if let Err(e) = ctx.call(Call::DestroyObject, |s| s.destroy_object(h)) {
                tracing::error!(token = %ctx.token(), object = %id, error = %e, "could not destroy a token object that failed its check");
            }
        }
        let detail = format!("the token object of {id} does not hold the material of its blob");
        return Err(checked
            .err()
            .unwrap_or_else(|| rejected(ctx, "C_Encrypt", detail)));
    }
    ctx.shared.handles.insert(id, h);
    tracing::debug!(token = %ctx.token(), object = %id, "wrapped key moved to a token object");
    Ok(())
}

/// Residency migration to wrapped, after an interrupted run: the token object of `id` beside
/// its stored `blob` is destroyed once checked on the device to hold the blob's material (the
/// blob serves the key already). `false` when there is no such object; an error, and nothing
/// destroyed, when it holds other material.
pub(crate) fn destroy_token_twin(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    blob: &WrappedBlob,
) -> Result<bool, HsmError> {
    let Some(material) = material_kind(blob.kind()) else {
        return Ok(false);
    };
    let Some(h) = super::ops::find_part(ctx, &id, Part::Secret)? else {
        return Ok(false);
    };
    if !same_as_blob(ctx, &id, material, h, blob)? {
        let detail = format!("the token object of {id} does not hold the material of its blob");
        return Err(rejected(ctx, "C_Encrypt", detail));
    }
    super::ops::destroy(ctx, id)?;
    Ok(true)
}

/// The blob kind of a token secret key from its key type and allowed mechanisms: AES-256,
/// or HMAC by its one allowed HMAC mechanism; `None` for anything else.
fn token_blob_kind(attrs: &[Attribute]) -> Option<BlobKind> {
    let key_type = attrs.iter().find_map(|a| match a {
        Attribute::KeyType(t) => Some(*t),
        _ => None,
    })?;
    let mechanisms = attrs.iter().find_map(|a| match a {
        Attribute::AllowedMechanisms(m) => Some(m.clone()),
        _ => None,
    })?;
    if key_type == KeyType::AES {
        return Some(BlobKind::Aes256);
    }
    [
        MacAlg::Sha224,
        MacAlg::Sha256,
        MacAlg::Sha384,
        MacAlg::Sha512,
    ]
    .into_iter()
    .find(|alg| key_type == KeyType::GENERIC_SECRET && mechanisms.contains(&alg.mechanism_type()))
    .map(BlobKind::Hmac)
}

/// Residency migration token -> wrapped: wrap the token object of secret key version `id`
/// under the newest trusted master into a blob tagged for `id`, then check on the device that
/// the blob unwraps to the same material. A token object not extractable under a trusted key
/// is [`TokenMove::NeverExtractable`] (nothing is tried). The token object stays: the caller
/// destroys it once the blob is stored.
pub(crate) fn token_to_wrapped(ctx: &mut WorkerCtx, id: ObjectId) -> Result<TokenMove, HsmError> {
    super::ops::with_part(ctx, &id, Part::Secret, |ctx, h| {
        let attrs = ctx.call(Call::GetAttributeValue, |s| {
            s.get_attributes(h, MOVE_ATTRIBUTES)
        })?;
        let on = |want: Attribute| attrs.contains(&want);
        if !(on(Attribute::Extractable(true)) && on(Attribute::WrapWithTrusted(true))) {
            return Ok(TokenMove::NeverExtractable);
        }
        let kinds = token_blob_kind(&attrs).and_then(|k| Some((k, material_kind(k)?)));
        let Some((kind, material)) = kinds else {
            let detail = format!("the token object of {id} is neither an AES nor an HMAC key");
            return Err(config_error(ctx, "C_WrapKey", detail));
        };
        let master = current_master(ctx)?;
        let blob = wrap_under(ctx, &id, h, kind, master)?;
        if !same_as_blob(ctx, &id, material, h, &blob)? {
            let detail = format!("the new blob of {id} does not give back its token object");
            return Err(rejected(ctx, "C_Encrypt", detail));
        }
        Ok(TokenMove::Wrapped(blob))
    })
}

/// What [`token_to_wrapped`] reads of a token object.
const MOVE_ATTRIBUTES: &[AttributeType] = &[
    AttributeType::KeyType,
    AttributeType::Extractable,
    AttributeType::WrapWithTrusted,
    AttributeType::AllowedMechanisms,
];

/// For the custody probe: wrap object `h` under master `v` as p11kms would (the device
/// decides), without the blob's tag.
#[cfg(test)]
pub(crate) fn try_wrap_under_master(
    ctx: &mut WorkerCtx,
    v: MasterVersion,
    h: ObjectHandle,
) -> Result<Vec<u8>, HsmError> {
    with_master(ctx, v, |ctx, m| {
        ctx.call(Call::WrapKey, |s| {
            s.wrap_key(&Mechanism::AesKeyWrapPad, m.master, h)
        })
    })
}

/// Destroy every cached unwrapped copy of every version of `key_id`, in every worker.
pub(crate) fn evict_wrapped(ctx: &mut WorkerCtx, key_id: &[u8; 16]) -> usize {
    let (live, n) = ctx.shared.wrapped.evict_key(key_id, ctx.current_epoch());
    destroy_session_objects(ctx, &live);
    ctx.shared
        .wrapped
        .evictions
        .fetch_add(n as u64, Ordering::Relaxed);
    n
}

/// The wrapped path of key resolution (`ops::with_copy` asks it first): this worker's cache,
/// else the blob source's blob (verified, unwrapped, cached). `None`: not a wrapped key here
/// (no source, or no blob), so the token path serves it.
pub(crate) fn with_wrapped<T>(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    part: Part,
    f: &mut impl FnMut(&mut WorkerCtx, ObjectHandle) -> Result<T, HsmError>,
) -> Option<Result<T, HsmError>> {
    let slot = (*id, part);
    let hit = lock(&ctx.wrapped).get(&slot);
    if let Some(h) = hit {
        ctx.shared.wrapped.hits.fetch_add(1, Ordering::Relaxed);
        match f(ctx, h) {
            // Evicted and destroyed by another worker's job meanwhile: make it again.
            Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {
                lock(&ctx.wrapped).remove(&slot);
            }
            // Evicted while in use: an object destroyed halfway through a call may fail in
            // any way (SoftHSM2 reads a destroyed object's CKA_ENCRYPT as false and answers
            // CKR_KEY_FUNCTION_NOT_PERMITTED), so any failure after an eviction is a miss.
            Err(_) if !lock(&ctx.wrapped).holds(&slot, h) => {}
            other => return Some(other),
        }
    }
    let seen = ctx.shared.wrapped.key_evictions.load(Ordering::SeqCst);
    let (blob, spki) = {
        let source = ctx.shared.wrapped.source()?;
        let blob = source.blob(*id)?;
        let spki = match part {
            Part::Public => Some(source.public_key(*id)?),
            _ => None,
        };
        (blob, spki)
    };
    let made = if let Some(spki) = spki {
        public_object(ctx, id, &blob, &spki)
    } else if blob.kind().part() != part {
        let detail = format!(
            "the blob of {id} holds a {:?}, not a {part:?} key",
            blob.kind()
        );
        Err(rejected(ctx, "C_UnwrapKey", detail))
    } else {
        unwrap_verified(ctx, id, &blob)
    };
    if made.is_ok() {
        ctx.shared.wrapped.misses.fetch_add(1, Ordering::Relaxed);
    }
    Some(made.and_then(|h| {
        // Cached after the use: with capacity 0 the cache hands `h` straight back to destroy.
        let answer = f(ctx, h);
        cache_unless_evicted(ctx, slot, h, seen);
        answer
    }))
}

/// The session public object of wrapped pair `id`, made from its SPKI (`C_CreateObject`)
/// with the usages of the pair's blob kind.
fn public_object(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    blob: &WrappedBlob,
    spki: &[u8],
) -> Result<ObjectHandle, HsmError> {
    let BlobKind::Private {
        usage, raw_oaep, ..
    } = blob.kind()
    else {
        let detail = format!("{id} is not a key pair ({:?})", blob.kind());
        return Err(rejected(ctx, "C_CreateObject", detail));
    };
    let oaep = if raw_oaep {
        OaepSha256::RawRsa
    } else {
        OaepSha256::Device
    };
    let Some(template) = super::asym::public_template_from_spki(spki, usage, oaep) else {
        let detail = format!("the stored public key of {id} is not a usable SPKI");
        return Err(HsmError::new(
            HsmErrorKind::Other,
            "C_CreateObject",
            ctx.token(),
            detail,
        ));
    };
    ctx.call(Call::CreateObject, |s| s.create_object(&template))
}

/// Reset this worker's cache: its session (and every object in it) is gone.
pub(crate) fn reset_worker_cache(cache: &WorkerCache, epoch: u64) {
    lock(cache).reset(epoch);
}

/// For custody tests: the cached handle of `id` in this worker (after resolving it as an
/// operation would).
#[cfg(test)]
pub(crate) fn resolved_handle(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
) -> Result<ObjectHandle, HsmError> {
    let mut grab = |_: &mut WorkerCtx, h: ObjectHandle| Ok(h);
    with_wrapped(ctx, id, Part::Secret, &mut grab)
        .unwrap_or_else(|| Err(HsmError::not_found(ctx.token(), "not a wrapped key")))
}

// ---------------------------------------------------------------- the SO ceremony

/// The security officer's one-time ceremony: make master `version` trusted. Blocking and
/// standalone: run it in its own process (a login is per process and token, so it fails with
/// `CKR_USER_ANOTHER_ALREADY_LOGGED_IN` beside an open [`super::Hsm`] on the same token).
///
/// In one R/W session: as SO, generate the master as a public session object with
/// `CKA_TRUSTED` = true (the plaintext never reaches the token's files); as the user, copy it
/// to a private token object with the master's label and `CKA_ID`, destroy the session
/// object, destroy the untrusted master of that version if there was one (nothing was ever
/// wrapped under it), and make the bind key if missing. A no-op if already trusted. The PINs
/// are used for `C_Login` only and never logged.
pub fn trust_master(
    module_path: &Path,
    token_label: &str,
    so_pin: &Pin,
    user_pin: &Pin,
    version: MasterVersion,
) -> Result<TrustOutcome, HsmError> {
    let outcome = module::with_standalone_session(module_path, token_label, |c, s| {
        let ceremony = Ceremony {
            c,
            s,
            token: token_label,
            v: version,
        };
        ceremony.run(so_pin, user_pin)
    });
    match &outcome {
        Ok(o) => {
            tracing::info!(token = token_label, master = %version, outcome = ?o, "master key trust ceremony done")
        }
        Err(e) => {
            tracing::warn!(token = token_label, master = %version, error = %e, "master key trust ceremony failed")
        }
    }
    outcome
}

/// One run of [`trust_master`] on its session.
struct Ceremony<'a> {
    c: &'a Counters,
    s: &'a Session,
    token: &'a str,
    v: MasterVersion,
}

impl Ceremony<'_> {
    fn call<T>(
        &self,
        call: Call,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.c.call(call, self.token, || f(self.s))
    }

    fn login(&self, who: UserType, pin: &Pin) -> Result<(), HsmError> {
        let auth = AuthPin::from(pin.expose());
        self.call(Call::Login, |s| s.login(who, Some(&auth)))
    }

    fn logout(&self) -> Result<(), HsmError> {
        self.call(Call::Logout, |s| s.logout())
    }

    fn find(&self, id: &[u8; 20]) -> Result<Option<ObjectHandle>, HsmError> {
        let search = [Attribute::Token(true), Attribute::Id(id.to_vec())];
        let found = self.call(Call::FindObjects, |s| s.find_objects(&search))?;
        Ok(found.first().copied())
    }

    /// The existing master and whether it is trusted.
    fn existing(&self) -> Result<Option<(ObjectHandle, bool)>, HsmError> {
        let Some(h) = self.find(&self.v.cka_id())? else {
            return Ok(None);
        };
        let attrs = self.call(Call::GetAttributeValue, |s| {
            s.get_attributes(h, &[AttributeType::Trusted])
        })?;
        let trusted = attrs.iter().any(|a| matches!(a, Attribute::Trusted(true)));
        Ok(Some((h, trusted)))
    }

    fn ensure_bind(&self) -> Result<(), HsmError> {
        if self.find(&self.v.bind_cka_id())?.is_none() {
            let t = bind_template(self.v);
            self.call(Call::GenerateKey, |s| {
                s.generate_key(&Mechanism::GenericSecretKeyGen, &t)
            })?;
        }
        Ok(())
    }

    fn run(&self, so_pin: &Pin, user_pin: &Pin) -> Result<TrustOutcome, HsmError> {
        self.login(UserType::User, user_pin)?;
        let old = self.existing()?;
        if let Some((_, true)) = old {
            self.ensure_bind()?;
            return Ok(TrustOutcome::AlreadyTrusted);
        }
        self.logout()?;
        self.login(UserType::So, so_pin)?;
        let t = master_template(self.v)
            .token(false)
            .private_object(false)
            .with(Attribute::Trusted(true))
            .build();
        let fresh = self.call(Call::GenerateKey, |s| {
            s.generate_key(&Mechanism::AesKeyGen, &t)
        })?;
        self.logout()?;
        self.login(UserType::User, user_pin)?;
        // Handles of private objects die with a logout: find the untrusted master again,
        // before the copy gives its CKA_ID to a second object.
        let untrusted = match old {
            Some(_) => self.existing()?.filter(|(_, trusted)| !trusted),
            None => None,
        };
        let to_token = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(self.v.label().into_bytes()),
            Attribute::Id(self.v.cka_id().to_vec()),
        ];
        let copied = self.call(Call::CopyObject, |s| s.copy_object(fresh, &to_token));
        self.call(Call::DestroyObject, |s| s.destroy_object(fresh))?;
        copied?;
        if let Some((h, _)) = untrusted {
            self.call(Call::DestroyObject, |s| s.destroy_object(h))?;
        }
        self.ensure_bind()?;
        Ok(match old {
            Some(_) => TrustOutcome::Replaced,
            None => TrustOutcome::Created,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(k: u8, v: u32) -> ObjectId {
        ObjectId::new([k; 16], v)
    }

    fn slot(k: u8, v: u32) -> Slot {
        (id(k, v), Part::Secret)
    }

    #[test]
    fn lru_evicts_the_least_recently_used_and_forgets_keys() {
        let mut lru = Lru::<u64>::new(2, 0);
        assert!(lru.insert(slot(1, 1), 10).is_empty());
        assert!(lru.insert(slot(2, 1), 20).is_empty());
        assert_eq!(lru.get(&slot(1, 1)), Some(10));
        assert_eq!(
            lru.insert(slot(3, 1), 30),
            vec![20],
            "2 was least recently used"
        );
        assert_eq!(lru.get(&slot(2, 1)), None);
        assert!(lru.holds(&slot(3, 1), 30));
        assert_eq!(
            lru.insert(slot(3, 1), 31),
            vec![30],
            "a replaced handle leaves"
        );
        assert!(!lru.holds(&slot(3, 1), 30) && lru.holds(&slot(3, 1), 31));
        assert_eq!(lru.len(), 2);
        // Full: the key's second version pushes out the least recently used (1/v1).
        assert_eq!(lru.insert((id(3, 1), Part::Public), 32), vec![10]);
        assert_eq!(lru.insert(slot(1, 2), 12), vec![31]);
        let mut gone = lru.remove_key(&[3; 16]);
        gone.sort();
        assert_eq!(gone, vec![32], "every part of every version of key 3, only");
        assert!(!lru.holds(&(id(3, 1), Part::Public), 32));
        assert_eq!(lru.get(&slot(1, 2)), Some(12));
        let mut none = Lru::<u64>::new(0, 0);
        assert_eq!(
            none.insert(slot(1, 1), 7),
            vec![7],
            "capacity 0 caches nothing"
        );
        lru.reset(3);
        assert_eq!((lru.len(), lru.epoch), (0, 3));
    }

    #[test]
    fn master_ids_never_collide_with_key_ids() {
        let v = MasterVersion(7);
        for cka in [v.cka_id(), v.bind_cka_id()] {
            // A UUIDv4 has version nibble 4 in byte 6; these do not.
            assert_ne!(cka[6] >> 4, 4);
            assert_ne!(
                uuid::Uuid::from_slice(&cka[..16])
                    .unwrap()
                    .get_version_num(),
                4
            );
        }
        assert_eq!(MasterVersion::from_cka_id(&v.cka_id()), Some(v));
        assert_eq!(MasterVersion::from_cka_id(&v.bind_cka_id()), None);
        assert_eq!(
            MasterVersion::from_cka_id(&ObjectId::new([4; 16], 7).0),
            None
        );
        assert_eq!(v.label(), "p11kms/master/v7");
        assert_eq!(v.bind_label(), "p11kms/master-bind/v7");
    }

    #[test]
    fn blob_format_round_trips_and_refuses_malformed_bytes() {
        let mut b =
            WrappedBlob::unsigned(MasterVersion(3), BlobKind::Aes256, &[9; 40], "t").unwrap();
        b.extend_from_slice(&[1; TAG_LEN]);
        let blob = WrappedBlob::from_bytes(&b).unwrap();
        assert_eq!(blob.master(), MasterVersion(3));
        assert_eq!(blob.kind(), BlobKind::Aes256);
        assert_eq!(blob.wrapped(), &[9; 40]);
        assert_eq!(blob.tag(), &[1; TAG_LEN]);
        assert_eq!(blob.to_bytes(), b);
        assert_eq!(
            format!("{blob:?}"),
            format!("WrappedBlob({} bytes)", b.len())
        );
        assert_eq!(
            WrappedBlob::from_bytes(&b[..10]),
            Err(BlobFormatError::TooShort(10))
        );
        let mut bad = b.clone();
        bad[0] = 2;
        assert_eq!(
            WrappedBlob::from_bytes(&bad),
            Err(BlobFormatError::UnknownFormat(2))
        );
        let mut bad = b.clone();
        bad[5] = 99;
        assert_eq!(
            WrappedBlob::from_bytes(&bad),
            Err(BlobFormatError::UnknownKind(99))
        );
        assert!(matches!(
            WrappedBlob::from_bytes(&b[..b.len() - 1]),
            Err(BlobFormatError::LengthMismatch { .. })
        ));
        for alg in [
            MacAlg::Sha224,
            MacAlg::Sha256,
            MacAlg::Sha384,
            MacAlg::Sha512,
        ] {
            let k = BlobKind::Hmac(alg);
            assert_eq!(BlobKind::from_code(k.code()), Some(k));
        }
        for family in FAMILIES {
            for usage in USAGES {
                for raw_oaep in [false, true] {
                    let k = BlobKind::Private {
                        family,
                        usage,
                        raw_oaep,
                    };
                    assert_eq!(BlobKind::from_code(k.code()), Some(k), "{k:?}");
                }
            }
        }
        assert_eq!(BlobKind::from_code(0x40 | 3 << 3), None, "no fourth family");
        let message = WrappedBlob::tagged_message(&b[..b.len() - TAG_LEN], &id(5, 1));
        assert!(message.starts_with(b"p11kms-wrapped-v1"));
        assert_eq!(&message[17..37], id(5, 1).as_bytes());
    }
}
