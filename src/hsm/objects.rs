//! Object identities, object templates and the object-handle cache.
//!
//! Every key object p11kms creates carries `CKA_ID` = [`ObjectId`] (16-byte
//! key id followed by the big-endian u32 key version). Handles are resolved
//! once (by `C_FindObjects` on `CKA_ID`, or directly at creation) and cached:
//! SoftHSM2 object lookup is a linear scan, so there is never a lookup per
//! request once a handle is known.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};

use super::template::{Template, Usage};

/// `CKA_ID` of a p11kms key object: 16-byte key id + u32 big-endian version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 20]);

impl ObjectId {
    /// Build the id of version `version` of key `key_id` (UUID bytes).
    pub const fn new(key_id: [u8; 16], version: u32) -> Self {
        let mut b = [0u8; 20];
        let v = version.to_be_bytes();
        let mut i = 0;
        while i < 20 {
            b[i] = if i < 16 { key_id[i] } else { v[i - 16] };
            i += 1;
        }
        ObjectId(b)
    }

    /// Parse a raw `CKA_ID`; `None` unless it is exactly 20 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(ObjectId(bytes.try_into().ok()?))
    }

    /// The 16-byte key id (UUID bytes).
    pub fn key_id(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[..16]);
        k
    }

    /// The key version.
    pub fn version(&self) -> u32 {
        u32::from_be_bytes([self.0[16], self.0[17], self.0[18], self.0[19]])
    }

    /// The raw 20 bytes (the `CKA_ID` value).
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The `CKA_LABEL` p11kms gives this object: `p11kms/<uuid>/v<version>`.
    pub fn label(&self) -> String {
        format!("p11kms/{self}")
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/v{}",
            crate::encoding::key_id_text(self.key_id()),
            self.version()
        )
    }
}

/// Template for a CMK version: an AES-256 token key usable only for
/// AES-GCM encrypt/decrypt, sensitive and never extractable.
pub(crate) fn cmk_aes_template(id: &ObjectId, label: &str) -> Vec<Attribute> {
    Template::secret(KeyType::AES)
        .value_len(32)
        .token(true)
        .guarded()
        .allow(Usage::Encrypt)
        .allow(Usage::Decrypt)
        .mechanisms(vec![MechanismType::AES_GCM])
        .id(&id.0)
        .label(label)
        .build()
}

/// Template for the throw-away session AES key used by the custody test
/// `try_wrap_with_new_key`: a session object that may only wrap.
pub(crate) fn session_wrapping_key_template() -> Vec<Attribute> {
    Template::secret(KeyType::AES)
        .value_len(32)
        .token(false)
        .guarded()
        .allow(Usage::Wrap)
        .label("p11kms/custody-probe-wrapping-key")
        .build()
}

/// `CKO_SECRET_KEY` -> `SECRET_KEY`.
pub(crate) fn class_name(class: ObjectClass) -> String {
    let s = class.to_string();
    s.strip_prefix("CKO_").map(str::to_owned).unwrap_or(s)
}

/// `CKM_AES_GCM` -> `AES_GCM`.
pub(crate) fn mechanism_name(m: MechanismType) -> String {
    let s = m.to_string();
    s.strip_prefix("CKM_").map(str::to_owned).unwrap_or(s)
}

/// Which object of a key version a cached handle names: the secret key of a symmetric or HMAC
/// key, or the private or public half of a key pair (both halves share the `CKA_ID`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Part {
    /// `CKO_SECRET_KEY`
    Secret,
    /// `CKO_PRIVATE_KEY`
    Private,
    /// `CKO_PUBLIC_KEY`
    Public,
}

impl Part {
    /// The object class of this part.
    pub(crate) fn class(self) -> ObjectClass {
        match self {
            Part::Secret => ObjectClass::SECRET_KEY,
            Part::Private => ObjectClass::PRIVATE_KEY,
            Part::Public => ObjectClass::PUBLIC_KEY,
        }
    }
}

/// Cache of resolved object handles for one token (one [`super::Hsm`]), keyed by
/// ([`ObjectId`], [`Part`]).
///
/// Handles are valid process-wide while any session of the application on
/// the token stays open, which the keeper session guarantees.
#[derive(Default)]
pub(crate) struct HandleCache {
    map: RwLock<HashMap<(ObjectId, Part), ObjectHandle>>,
}

impl HandleCache {
    /// The cached handle of the secret-key object, if any.
    pub(crate) fn get(&self, id: &ObjectId) -> Option<ObjectHandle> {
        self.get_part(id, Part::Secret)
    }

    /// Remember the handle of a secret-key object.
    pub(crate) fn insert(&self, id: ObjectId, h: ObjectHandle) {
        self.insert_part(id, Part::Secret, h)
    }

    /// Forget the handle of a secret-key object (destroyed, or found invalid).
    pub(crate) fn evict(&self, id: &ObjectId) {
        self.evict_part(id, Part::Secret)
    }

    /// The cached handle of one part, if any.
    pub(crate) fn get_part(&self, id: &ObjectId, part: Part) -> Option<ObjectHandle> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(*id, part))
            .copied()
    }

    /// Remember the handle of one part.
    pub(crate) fn insert_part(&self, id: ObjectId, part: Part, h: ObjectHandle) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((id, part), h);
    }

    /// Forget the handle of one part.
    pub(crate) fn evict_part(&self, id: &ObjectId, part: Part) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(*id, part));
    }

    /// Number of cached handles.
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Forget every handle (after a device reset).
    pub(crate) fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Most session-object copies one token keeps. Past it, keys are used through their token
/// objects (correct, a little slower); SoftHSM2's `C_CloseSession` walks every live handle,
/// so the count is bounded.
pub(crate) const MAX_SESSION_COPIES: usize = 50_000;

/// What the copy cache knows about one secret key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyState<H = ObjectHandle> {
    /// A session-object copy made in a session opened in reset epoch `epoch`.
    Live {
        /// The copy's handle.
        handle: H,
        /// The reset epoch of the session that made it (see `WorkerCtx::opened_in`).
        epoch: u64,
    },
    /// The device refused to copy this key (`C_CopyObject` failed): use the token object.
    Refused,
}

/// Session-object copies of token key objects, keyed by ([`ObjectId`], [`Part`]): CMK
/// versions, HMAC keys and both halves of key pairs.
///
/// SoftHSM2 re-reads a token object's files on every use; a session-object copy of the same
/// key (`C_CopyObject` with `CKA_TOKEN = false`, which keeps `CKA_SENSITIVE` and
/// `CKA_EXTRACTABLE = false`) is served 10-15 µs faster per call. A copy lives as long as the
/// worker session that made it: any session reset bumps the pool's reset epoch, every worker
/// reopens its session, and copies tagged with an older epoch are treated as gone.
/// Generic over the handle type only so that its unit test needs no device handles.
pub(crate) struct SessionCopies<H = ObjectHandle> {
    enabled: bool,
    map: RwLock<HashMap<(ObjectId, Part), CopyState<H>>>,
}

impl<H: Copy + PartialEq> SessionCopies<H> {
    /// An empty cache; `enabled = false` makes every lookup miss and nothing is copied.
    pub(crate) fn new(enabled: bool) -> Self {
        SessionCopies {
            enabled,
            map: RwLock::default(),
        }
    }

    /// Whether keys are copied at all.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// What is known about (`id`, `part`) in reset epoch `epoch`: a copy made in an older
    /// epoch is stale and reads as unknown.
    pub(crate) fn get(&self, id: &ObjectId, part: Part, epoch: u64) -> Option<CopyState<H>> {
        match self.read().get(&(*id, part)).copied()? {
            CopyState::Live { epoch: e, .. } if e != epoch => None,
            state => Some(state),
        }
    }

    /// Record a new copy unless another worker recorded a live one first (or the cache is
    /// full). `Err` hands the caller's handle back: the caller destroys it.
    pub(crate) fn insert(&self, id: ObjectId, part: Part, handle: H, epoch: u64) -> Result<(), H> {
        let key = (id, part);
        let mut map = self.write();
        let taken = matches!(map.get(&key), Some(CopyState::Live { epoch: e, .. }) if *e == epoch);
        if taken || (map.len() >= MAX_SESSION_COPIES && !map.contains_key(&key)) {
            return Err(handle);
        }
        map.insert(key, CopyState::Live { handle, epoch });
        Ok(())
    }

    /// Whether the cache has room for one more key.
    pub(crate) fn has_room(&self) -> bool {
        self.read().len() < MAX_SESSION_COPIES
    }

    /// Remember that the device would not copy (`id`, `part`).
    pub(crate) fn refuse(&self, id: ObjectId, part: Part) {
        self.write().insert((id, part), CopyState::Refused);
    }

    /// Forget (`id`, `part`); returns what was known (the caller destroys a live copy).
    pub(crate) fn evict(&self, id: &ObjectId, part: Part) -> Option<CopyState<H>> {
        self.write().remove(&(*id, part))
    }

    /// Forget every part of every version of key `key_id`; returns the states removed.
    pub(crate) fn evict_key(&self, key_id: &[u8; 16]) -> Vec<((ObjectId, Part), CopyState<H>)> {
        let mut map = self.write();
        let keys: Vec<(ObjectId, Part)> = map
            .keys()
            .filter(|(id, _)| &id.key_id() == key_id)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| map.remove(&k).map(|s| (k, s)))
            .collect()
    }

    /// Forget everything (after a device reset, when every copy is gone with its session).
    pub(crate) fn clear(&self) {
        self.write().clear();
    }

    /// Number of live copies made in reset epoch `epoch`.
    pub(crate) fn live(&self, epoch: u64) -> usize {
        self.read()
            .values()
            .filter(|s| matches!(s, CopyState::Live { epoch: e, .. } if *e == epoch))
            .count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(ObjectId, Part), CopyState<H>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(ObjectId, Part), CopyState<H>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_layout() {
        let key = [7u8; 16];
        let id = ObjectId::new(key, 0x0102_0304);
        assert_eq!(&id.0[..16], &key);
        assert_eq!(&id.0[16..], &[1, 2, 3, 4]);
        assert_eq!(id.key_id(), key);
        assert_eq!(id.version(), 0x0102_0304);
        assert_eq!(ObjectId::from_bytes(&id.0), Some(id));
        assert_eq!(ObjectId::from_bytes(&id.0[..19]), None);
        assert_eq!(
            id.label(),
            "p11kms/07070707-0707-0707-0707-070707070707/v16909060"
        );
    }

    #[test]
    fn session_copies_track_epochs_races_and_keys() {
        let copies = SessionCopies::<u64>::new(true);
        let a = ObjectId::new([1; 16], 1);
        let a2 = ObjectId::new([1; 16], 2);
        let b = ObjectId::new([2; 16], 1);
        let h = |n: u64| n;
        const S: Part = Part::Secret;
        assert_eq!(copies.get(&a, S, 0), None);
        copies.insert(a, S, h(10), 0).unwrap();
        assert_eq!(
            copies.get(&a, S, 0),
            Some(CopyState::Live {
                handle: h(10),
                epoch: 0
            })
        );
        // A second worker that lost the race gets its handle back to destroy.
        assert_eq!(copies.insert(a, S, h(11), 0), Err(h(11)));
        // After a session reset the copy is stale: unknown, and replaceable.
        assert_eq!(copies.get(&a, S, 1), None);
        assert_eq!(copies.live(1), 0);
        copies.insert(a, S, h(12), 1).unwrap();
        assert_eq!(copies.live(1), 1);
        copies.insert(a2, Part::Private, h(13), 1).unwrap();
        copies.refuse(b, S);
        assert_eq!(copies.get(&b, S, 7), Some(CopyState::Refused));
        // Dropping a key forgets every version of it and nothing else.
        let mut gone = copies.evict_key(&[1; 16]);
        gone.sort_by_key(|((id, _), _)| *id);
        assert_eq!(
            gone,
            vec![
                (
                    (a, S),
                    CopyState::Live {
                        handle: h(12),
                        epoch: 1
                    }
                ),
                (
                    (a2, Part::Private),
                    CopyState::Live {
                        handle: h(13),
                        epoch: 1
                    }
                )
            ]
        );
        assert_eq!(copies.get(&a, S, 1), None);
        assert_eq!(copies.get(&b, S, 1), Some(CopyState::Refused));
        assert_eq!(copies.evict(&b, S), Some(CopyState::Refused));
        assert!(copies.has_room());
    }
}
