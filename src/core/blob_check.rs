//! `p11kms check` in wrapped residency (issue 19): the master keys on the token, the wrapped
//! key versions in the store, and whether their blobs still verify and unwrap on the device
//! (a random sample, or every blob). A blob that does not is reported with its key and
//! version; nothing is changed. A master older than the newest trusted one that no blob
//! uses any more is *retired*: the rewrap duty is done with it, and destroying it is the
//! operator's step (`docs/operations.md`).

use std::sync::Arc;

use crate::hsm::{HsmErrorKind, MasterVersion, ObjectId, WrappedBlob};
use crate::store::{BlobRow, KeyBundle};

use super::residency::Residency;
use super::{Kms, KmsError};

/// How many blobs `check` verifies on the device unless told to verify all.
pub const DEFAULT_BLOB_SAMPLE: usize = 100;

/// Which blobs `check` verifies on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobScope {
    /// A random sample of at most this many.
    Sample(usize),
    /// Every blob in the store (`p11kms check --all-blobs`).
    All,
}

/// One master key on the token, as `check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterReport {
    /// Its version.
    pub version: MasterVersion,
    /// `CKA_TRUSTED`, as the device reports it.
    pub trusted: bool,
    /// How many stored blobs it wraps.
    pub blobs: usize,
    /// Older than the newest trusted master and wrapping nothing: rewrapping is done with
    /// it; the operator may destroy it.
    pub retired: bool,
}

/// What `check` found of wrapped residency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedReport {
    /// The default store's configured residency.
    pub residency: Residency,
    /// The master keys on the token, oldest first.
    pub masters: Vec<MasterReport>,
    /// Wrapped key versions of the default store's keys in the store.
    pub versions: usize,
    /// How many of them were verified on the device.
    pub checked: usize,
    /// The blobs the device (or the blob format) refused: (key id, version, reason).
    pub rejected: Vec<(String, u32, String)>,
}

impl WrappedReport {
    /// True when every checked blob verified and unwrapped.
    pub fn is_ok(&self) -> bool {
        self.rejected.is_empty()
    }
}

impl Kms {
    /// `p11kms check`: the masters on the default token and the wrapped versions of the
    /// store, `scope`'s blobs verified and unwrapped on the device (each into a transient
    /// session object). A device that is unusable fails the check as an error; a blob the
    /// device refuses is reported.
    pub async fn check_wrapped(&self, scope: BlobScope) -> Result<WrappedReport, KmsError> {
        let rows = wrapped_rows(&self.store.load_all().await?);
        let masters = self.hsm.masters().await?;
        let newest_trusted = super::residency::newest_trusted(&masters);
        let masters = masters
            .into_iter()
            .map(|(version, trusted)| {
                let blobs = rows.iter().filter(|r| r.blob.master == version.0).count();
                MasterReport {
                    version,
                    trusted,
                    blobs,
                    retired: blobs == 0 && newest_trusted.is_some_and(|n| version < n),
                }
            })
            .collect();
        let sample = pick(rows.len(), scope)?;
        let mut rejected = Vec::new();
        for &i in &sample {
            if let Some(reason) = self.verify_blob(&rows[i]).await? {
                rejected.push((rows[i].key_id.clone(), rows[i].version, reason));
            }
        }
        Ok(WrappedReport {
            residency: self.settings.residency,
            masters,
            versions: rows.len(),
            checked: sample.len(),
            rejected,
        })
    }

    /// `None` if `row`'s blob verifies and unwraps on the device, else why not. Errors that
    /// say nothing about the blob (queue full, device gone) are the check's.
    async fn verify_blob(&self, row: &BlobRow) -> Result<Option<String>, KmsError> {
        let Ok(uuid) = crate::core::key_id::parse(&row.key_id) else {
            return Ok(Some("the key id is not a UUID".into()));
        };
        let blob = match WrappedBlob::from_bytes(&row.blob.bytes) {
            Ok(b) => Arc::new(b),
            Err(e) => return Ok(Some(e.to_string())),
        };
        let id = ObjectId::new(*uuid.as_bytes(), row.version);
        match self.hsm.check_wrapped(id, blob).await {
            Ok(()) => Ok(None),
            Err(e) => match e.kind {
                HsmErrorKind::Busy
                | HsmErrorKind::Timeout
                | HsmErrorKind::Unavailable
                | HsmErrorKind::Config => Err(e.into()),
                _ => Ok(Some(e.to_string())),
            },
        }
    }
}

/// Every wrapped version of the default store's keys in `bundles`, by key id and version.
/// A custom key store's blobs are wrapped under its own cluster token's masters, which
/// this check does not open, so they are left out (never reported as rejected).
fn wrapped_rows(bundles: &[KeyBundle]) -> Vec<BlobRow> {
    bundles
        .iter()
        .filter(|b| b.key.custom_key_store_id.is_none())
        .flat_map(|b| &b.versions)
        .filter_map(|v| {
            Some(BlobRow {
                key_id: v.key_id.clone(),
                version: v.version,
                blob: v.wrapped.clone()?,
            })
        })
        .collect()
}

/// The indices of `scope`'s blobs among `n`: all, or a uniform random sample (partial
/// Fisher-Yates over the system's random numbers), in ascending order.
fn pick(n: usize, scope: BlobScope) -> Result<Vec<usize>, KmsError> {
    let k = match scope {
        BlobScope::All => n,
        BlobScope::Sample(k) => k.min(n),
    };
    let mut all: Vec<usize> = (0..n).collect();
    if k < n {
        let rng = ring::rand::SystemRandom::new();
        for i in 0..k {
            let r: [u8; 8] = ring::rand::generate(&rng)
                .map_err(|_| KmsError::Internal("no system random numbers".into()))?
                .expose();
            let span = (n - i) as u64;
            let j = i + (u64::from_le_bytes(r) % span) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_distinct_in_range_and_bounded() {
        for (n, scope, want) in [
            (0, BlobScope::Sample(100), 0),
            (5, BlobScope::Sample(100), 5),
            (1000, BlobScope::Sample(100), 100),
            (1000, BlobScope::All, 1000),
        ] {
            let got = pick(n, scope).unwrap();
            assert_eq!(got.len(), want, "{n} {scope:?}");
            assert!(got.windows(2).all(|w| w[0] < w[1]), "distinct, ascending");
            assert!(got.iter().all(|&i| i < n));
        }
    }
}
