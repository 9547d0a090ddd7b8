//! Wrapped-key residency in the engine (issue 19): the blobs of wrapped key versions, which
//! the HSM layer asks for when a worker meets a key it has not unwrapped yet, and the start
//! of a wrapped-mode device (its master key).
//!
//! A device's residency is its configuration's (`[hsm] residency`, `[[hsm.cluster]]
//! residency`): `token` keeps each key version as a token object, `wrapped` keeps it here,
//! wrapped on the device under the token's master key and bound to its key id and version.
//! A key version is wrapped exactly when its stored version row has a blob, so keys made
//! before a device switched mode keep working. The blobs of every cached key are held in
//! [`Blobs`], filled wherever the key cache is filled (start-up, a change followed from
//! another node, creation, rotation, import) and emptied when a version is destroyed or its
//! imported material deleted (then every worker's unwrapped copy is evicted too, on this node
//! at once and on the others as they follow the change).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::hsm::{BlobSource, Hsm, MasterState, MasterVersion, ObjectId, WrappedBlob};
use crate::store::{KeyVersion, StoredBlob};

use super::KmsError;

/// `[hsm] residency`: where a device's key material lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// Each key version is an object on the token (the embedded single-node default).
    #[default]
    Token,
    /// Each key version is a blob in the metadata store, wrapped under the token's master
    /// key: the token holds a handful of objects whatever the number of keys.
    Wrapped,
}

/// A wrapped key version's material as the engine holds it: the blob and, for a key pair,
/// its public key (DER SPKI), which exists nowhere else.
#[derive(Clone, Debug)]
pub(crate) struct Wrapped {
    /// The blob (for a key pair: its private half).
    pub blob: Arc<WrappedBlob>,
    /// A key pair's public key as DER SPKI; `None` for a secret key.
    pub public_key: Option<Arc<Vec<u8>>>,
}

impl Wrapped {
    /// A secret key's blob (AES, HMAC).
    pub(crate) fn secret(blob: WrappedBlob) -> Wrapped {
        Wrapped {
            blob: Arc::new(blob),
            public_key: None,
        }
    }

    /// A key pair's blob (its private half) with its public key.
    pub(crate) fn pair(blob: WrappedBlob, spki: Vec<u8>) -> Wrapped {
        Wrapped {
            blob: Arc::new(blob),
            public_key: Some(Arc::new(spki)),
        }
    }

    /// The engine's form of a stored blob; an error if its structure is broken.
    fn of_stored(b: &StoredBlob) -> Result<Wrapped, crate::hsm::BlobFormatError> {
        Ok(Wrapped {
            blob: Arc::new(WrappedBlob::from_bytes(&b.bytes)?),
            public_key: b.public_key.clone().map(Arc::new),
        })
    }
}

type BlobMap = BTreeMap<ObjectId, Wrapped>;

/// [`Blobs::view`]: the blobs held while a scan reads them.
pub(crate) struct BlobsView<'a>(std::sync::RwLockReadGuard<'a, BlobMap>);

impl BlobsView<'_> {
    /// Whether key version `id` is wrapped.
    pub(crate) fn holds(&self, id: ObjectId) -> bool {
        self.0.contains_key(&id)
    }
}

/// The blobs of every wrapped key version this node knows, by version.
#[derive(Default)]
pub struct Blobs {
    map: RwLock<BlobMap>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({} versions)", self.len())
    }
}

impl BlobSource for Blobs {
    fn blob(&self, id: ObjectId) -> Option<Arc<WrappedBlob>> {
        self.read().get(&id).map(|w| w.blob.clone())
    }

    fn public_key(&self, id: ObjectId) -> Option<Arc<Vec<u8>>> {
        self.read().get(&id).and_then(|w| w.public_key.clone())
    }
}

impl Blobs {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BlobMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BlobMap> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A read view of the blobs, for scans that test many versions under one lock.
    pub(crate) fn view(&self) -> BlobsView<'_> {
        BlobsView(self.read())
    }

    /// How many versions are wrapped.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no version is wrapped.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Takes in the stored versions of key `uuid`: each blob replaces the one held for its
    /// version, and a version without a blob (a token object) holds none. A blob whose
    /// structure is broken is logged and left out: its version then fails on use as a
    /// missing key would, never as another key.
    pub(crate) fn put_versions(&self, uuid: [u8; 16], versions: &[KeyVersion]) {
        let mut map = self.write();
        for v in versions {
            let id = ObjectId::new(uuid, v.version);
            match v.wrapped.as_ref().map(Wrapped::of_stored) {
                None => {
                    map.remove(&id);
                }
                Some(Ok(w)) => {
                    map.insert(id, w);
                }
                Some(Err(e)) => {
                    tracing::error!(object = %id, error = %e, "a stored wrapped blob is malformed; its key version cannot be used");
                    map.remove(&id);
                }
            }
        }
    }

    /// Whether taking in `versions` of key `uuid` ([`Blobs::put_versions`]) drops a blob held
    /// now: a version's row lost its blob (imported material deleted, or the version moved to
    /// the token), so the unwrapped copies of it must go too.
    pub(crate) fn loses_blob(&self, uuid: [u8; 16], versions: &[KeyVersion]) -> bool {
        let map = self.read();
        versions
            .iter()
            .any(|v| v.wrapped.is_none() && map.contains_key(&ObjectId::new(uuid, v.version)))
    }

    /// Holds one version's new blob (creation, rotation, import, rewrap).
    pub(crate) fn put(&self, id: ObjectId, wrapped: Wrapped) {
        self.write().insert(id, wrapped);
    }

    /// The blob of one version, if it is wrapped.
    pub(crate) fn get(&self, id: ObjectId) -> Option<Arc<WrappedBlob>> {
        self.blob(id)
    }

    /// Forgets one version's blob (the version was destroyed, or moved to the token).
    pub(crate) fn remove(&self, id: ObjectId) -> Option<Arc<WrappedBlob>> {
        self.write().remove(&id).map(|w| w.blob)
    }

    /// The public key (DER SPKI) of wrapped key pair version `id`; `None` for a token
    /// object or a secret key.
    pub(crate) fn pair_public_key(&self, id: ObjectId) -> Option<Arc<Vec<u8>>> {
        self.public_key(id)
    }

    /// Forgets every version of key `uuid` (the key is gone).
    pub(crate) fn remove_key(&self, uuid: [u8; 16]) {
        let mut map = self.write();
        let ids: Vec<ObjectId> = map
            .range(ObjectId::new(uuid, 0)..=ObjectId::new(uuid, u32::MAX))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            map.remove(&id);
        }
    }
}

/// The stored form of material the HSM wrapped.
pub(crate) fn stored(w: &Wrapped) -> StoredBlob {
    StoredBlob {
        master: w.blob.master().0,
        bytes: w.blob.to_bytes(),
        public_key: w.public_key.as_deref().cloned(),
    }
}

/// Readies a device configured for wrapped residency at start-up: a token without a master
/// key gets an untrusted `v1` (with its bind key), and the state is logged with what the
/// security officer must do. Keys can be created once the newest master is trusted.
pub(crate) async fn start_wrapped(hsm: &Hsm) -> Result<MasterState, KmsError> {
    let mut state = hsm.master_state().await?;
    if state == MasterState::Absent {
        hsm.create_master_untrusted(MasterVersion(1)).await?;
        state = hsm.master_state().await?;
    }
    match state {
        MasterState::Trusted(v) => {
            tracing::info!(token = hsm.token_label(), master = %v, "wrapped residency: key material is wrapped under the trusted master key");
        }
        MasterState::Untrusted(v) => {
            tracing::warn!(token = hsm.token_label(), master = %v, "wrapped residency: the master key is not trusted yet; new keys fail until the security officer runs `p11kms hsm trust-master`");
        }
        MasterState::Absent => {
            tracing::error!(
                token = hsm.token_label(),
                "wrapped residency: no master key on the token"
            );
        }
    }
    Ok(state)
}

impl super::Kms {
    /// Forgets the blobs of a key that is gone (destroyed on another node) and destroys this
    /// node's unwrapped copies of it. Best effort: the key is already out of the cache.
    pub(crate) async fn forget_blobs(&self, uuid: [u8; 16]) {
        self.blobs.remove_key(uuid);
        if let Err(e) = self.hsm.evict_wrapped(uuid).await {
            tracing::warn!(error = %e, "could not destroy the unwrapped copies of a deleted key");
        }
    }

    /// Destroys this node's unwrapped copies of `key` after its stored blob went away on
    /// another node (imported material deleted, a version moved to the token): the blob is
    /// already forgotten here, so no worker unwraps it again. Best effort: the new state is
    /// cached, and a key whose material was deleted is refused before any HSM call.
    pub(crate) async fn evict_lost_blobs(&self, key: &super::CachedKey) {
        let evicted = match self.device_of(key) {
            Ok(device) => device.evict_wrapped(key.uuid).await.map_err(KmsError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = evicted {
            let key_id = &key.record.key_id;
            tracing::warn!(key_id, error = %e, "could not destroy the unwrapped copies of a key whose blob was removed");
        }
    }
}

/// The newest trusted master of a token's masters ([`Hsm::masters`]): the one new key
/// material is wrapped under.
pub(crate) fn newest_trusted(masters: &[(MasterVersion, bool)]) -> Option<MasterVersion> {
    masters.iter().filter(|(_, t)| *t).map(|(v, _)| *v).max()
}
