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

/// `CKA_ID` of a p11kms key object: 16-byte key id + u32 big-endian version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 20]);

impl ObjectId {
    /// Build the id of version `version` of key `key_id` (UUID bytes).
    pub fn new(key_id: [u8; 16], version: u32) -> Self {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&key_id);
        b[16..].copy_from_slice(&version.to_be_bytes());
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
        format!(
            "p11kms/{}/v{}",
            uuid::Uuid::from_bytes(self.key_id()).hyphenated(),
            self.version()
        )
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ObjectId({}/v{})",
            uuid::Uuid::from_bytes(self.key_id()).hyphenated(),
            self.version()
        )
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/v{}",
            uuid::Uuid::from_bytes(self.key_id()).hyphenated(),
            self.version()
        )
    }
}

/// Template for a CMK version: an AES-256 token key usable only for
/// AES-GCM encrypt/decrypt, sensitive and never extractable.
pub(crate) fn cmk_aes_template(id: &ObjectId) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
        Attribute::Id(id.0.to_vec()),
        Attribute::Label(id.label().into_bytes()),
    ]
}

/// Template for the throw-away session AES key used by the custody test
/// `try_wrap_with_new_key`: a session object that may only wrap.
pub(crate) fn session_wrapping_key_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(b"p11kms/custody-probe-wrapping-key".to_vec()),
    ]
}

/// Search template that finds the secret-key object of `id`.
pub(crate) fn secret_key_search(id: &ObjectId) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Id(id.0.to_vec()),
    ]
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
}
