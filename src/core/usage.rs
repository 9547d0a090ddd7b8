//! GetKeyLastUsage: the last successful cryptographic operation on each key, with its time,
//! its audit event id and its request id.
//!
//! The gate reports each successful cryptographic request once its audit event is written
//! ([`Kms::note_key_use`]). The engine keeps the last use of each key in memory, in a sharded
//! map (one short lock per key used, no I/O), and writes the entries that changed to the
//! store in one transaction every `kms.key_usage_flush_interval_secs` and at shutdown
//! ([`Kms::flush_key_usage`]). So a request never costs a store write; a crash loses at most
//! one interval of usage updates, which the audit trail still holds event by event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::operation::{request_parameters, ResponseElements};
use super::{Kms, KmsError};
use crate::identity::Caller;
use crate::store::{KeyUsageRecord, UsageOperation};

/// Shards of the in-memory map: requests on different keys rarely share a lock.
const SHARDS: usize = 16;

/// GetKeyLastUsage input: a key id or key ARN (not an alias).
#[derive(Debug, Clone, Default)]
pub struct GetKeyLastUsageRequest {
    pub key_id: String,
}

request_parameters!(GetKeyLastUsageRequest { key_id });

impl ResponseElements for KeyLastUsageOutput {}

/// GetKeyLastUsage output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLastUsageOutput {
    /// The key ARN.
    pub key_id: String,
    /// The last successful cryptographic operation since tracking began, if any.
    pub last_usage: Option<KeyUsageRecord>,
    /// The later of when tracking began and when the key was created (Unix ms).
    pub tracking_start_date_ms: i64,
    /// When the key was created (Unix ms).
    pub key_creation_date_ms: i64,
}

#[derive(Debug)]
struct Slot {
    usage: KeyUsageRecord,
    /// Changed since the last flush.
    dirty: bool,
}

/// The last use of every key, in memory, with what the store has not seen yet.
#[derive(Debug)]
pub struct UsageTracker {
    shards: Vec<Mutex<HashMap<Uuid, Slot>>>,
    /// When tracking began on this database (Unix ms).
    tracking_start_ms: AtomicI64,
    /// Rows written to the store so far (tests and operators: no write per request).
    rows_written: AtomicU64,
}

impl Default for UsageTracker {
    fn default() -> Self {
        UsageTracker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            tracking_start_ms: AtomicI64::new(0),
            rows_written: AtomicU64::new(0),
        }
    }
}

impl UsageTracker {
    fn shard(&self, key: &Uuid) -> MutexGuard<'_, HashMap<Uuid, Slot>> {
        let i = usize::from(key.as_bytes()[15]) % SHARDS;
        // A poisoned shard only means a panic between two statements; the map is consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a use, unless the key already has a later one (concurrent requests may
    /// finish out of order).
    fn record(&self, usage: KeyUsageRecord, dirty: bool) {
        let Ok(key) = crate::core::key_id::parse(&usage.key_id) else {
            return;
        };
        let mut shard = self.shard(&key);
        if shard
            .get(&key)
            .is_some_and(|s| s.usage.used_at_ms > usage.used_at_ms)
        {
            return;
        }
        shard.insert(key, Slot { usage, dirty });
    }

    fn get(&self, key: &Uuid) -> Option<KeyUsageRecord> {
        self.shard(key).get(key).map(|s| s.usage.clone())
    }

    /// Takes the changed entries (marking them clean) and drops entries of keys `keep` rejects.
    fn take_dirty(&self, keep: impl Fn(&Uuid) -> bool) -> Vec<KeyUsageRecord> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|k, _| keep(k));
            for slot in map.values_mut().filter(|s| s.dirty) {
                slot.dirty = false;
                out.push(slot.usage.clone());
            }
        }
        out
    }

    /// Marks entries dirty again after a failed flush, unless a newer use replaced them.
    fn restore_dirty(&self, failed: &[KeyUsageRecord]) {
        for u in failed {
            let Ok(key) = crate::core::key_id::parse(&u.key_id) else {
                continue;
            };
            if let Some(slot) = self.shard(&key).get_mut(&key) {
                if slot.usage == *u {
                    slot.dirty = true;
                }
            }
        }
    }

    /// Rows written to the store since start.
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Relaxed)
    }
}

/// Whether an allow for `action` on a key means a successful request used that key
/// cryptographically (`kms:Encrypt`, ..., and both halves of ReEncrypt).
pub(crate) fn is_use_action(action: &str) -> bool {
    let Some(op) = action.strip_prefix("kms:") else {
        return false;
    };
    matches!(op, "ReEncryptFrom" | "ReEncryptTo") || UsageOperation::parse(op).is_some()
}

/// The key id at the end of a key ARN.
fn key_of_arn(arn: &str) -> Option<Uuid> {
    let (_, id) = arn.rsplit_once(":key/")?;
    crate::core::key_id::parse(id).ok()
}

impl Kms {
    /// Loads the stored last uses (reads only: `check` opens the engine too).
    pub(crate) async fn load_key_usage(&self) -> Result<(), KmsError> {
        for u in self.store.load_key_usage().await? {
            self.usage.record(u, false);
        }
        Ok(())
    }

    /// Starts tracking for the daemon: reads when tracking began on this database, storing
    /// now on the first start of a daemon with this feature.
    pub async fn start_usage_tracking(&self) -> Result<(), KmsError> {
        let start = self.store.usage_tracking_start(self.now_ms()).await?;
        self.usage.tracking_start_ms.store(start, Ordering::SeqCst);
        Ok(())
    }

    /// The in-memory usage tracker (counters).
    pub fn key_usage(&self) -> &UsageTracker {
        &self.usage
    }

    /// Records that the successful request `request_id` (audit event `event_id`, at `at_ms`)
    /// of `operation` used the keys `key_arns`. Operations that are not cryptographic are
    /// ignored. Memory only: [`Kms::flush_key_usage`] stores it later.
    pub fn note_key_use(
        &self,
        operation: &str,
        key_arns: &[String],
        event_id: &str,
        request_id: &str,
        at_ms: i64,
    ) {
        let Some(op) = UsageOperation::parse(operation) else {
            return;
        };
        for key in key_arns.iter().filter_map(|a| key_of_arn(a)) {
            self.usage.record(
                KeyUsageRecord {
                    key_id: crate::core::key_id::render(&key),
                    operation: op,
                    used_at_ms: at_ms,
                    event_id: event_id.to_string(),
                    request_id: request_id.to_string(),
                },
                true,
            );
        }
    }

    /// Writes the last uses recorded since the previous flush to the store, in one
    /// transaction, and forgets keys that no longer exist. Returns the rows written. On a
    /// store error the entries stay pending for the next flush.
    pub async fn flush_key_usage(&self) -> Result<u64, KmsError> {
        let pending = {
            let cache = self.cache_read();
            self.usage.take_dirty(|k| cache.keys.contains_key(k))
        };
        if pending.is_empty() {
            return Ok(0);
        }
        match self.store.put_key_usage(&pending).await {
            Ok(n) => {
                self.usage.rows_written.fetch_add(n, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.usage.restore_dirty(&pending);
                Err(e.into())
            }
        }
    }

    /// GetKeyLastUsage: a key of the caller's account, named by key id or key ARN (not by
    /// alias), in any state; authorized by `kms:GetKeyLastUsage` in the key policy.
    pub async fn get_key_last_usage(
        &self,
        caller: &Caller,
        req: GetKeyLastUsageRequest,
    ) -> Result<KeyLastUsageOutput, KmsError> {
        let resolved = self.resolve(caller, &req.key_id, false)?;
        self.authorize_key(caller, "kms:GetKeyLastUsage", &resolved, None)?;
        let key = &resolved.key;
        let created = key.record.created_at_ms;
        Ok(KeyLastUsageOutput {
            key_id: key.arn.clone(),
            last_usage: self.usage.get(&Uuid::from_bytes(key.uuid)),
            tracking_start_date_ms: created
                .max(self.usage.tracking_start_ms.load(Ordering::SeqCst)),
            key_creation_date_ms: created,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(key: &str, at: i64) -> KeyUsageRecord {
        KeyUsageRecord {
            key_id: key.to_string(),
            operation: UsageOperation::Encrypt,
            used_at_ms: at,
            event_id: format!("e{at}"),
            request_id: format!("r{at}"),
        }
    }

    #[test]
    fn use_actions_are_the_tracked_operations_and_reencrypt_halves() {
        for a in [
            "kms:Encrypt",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
            "kms:VerifyMac",
        ] {
            assert!(is_use_action(a), "{a}");
        }
        for a in [
            "kms:DescribeKey",
            "kms:GetPublicKey",
            "kms:CreateGrant",
            "Encrypt",
        ] {
            assert!(!is_use_action(a), "{a}");
        }
        assert_eq!(
            key_of_arn(
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-44cd-96ef-1234567890ab"
            ),
            crate::core::key_id::parse("1234abcd-12ab-44cd-96ef-1234567890ab").ok()
        );
        assert_eq!(
            key_of_arn("arn:aws:kms:us-east-1:111122223333:alias/a"),
            None
        );
    }

    #[test]
    fn a_failed_flush_keeps_entries_pending_unless_replaced() {
        let t = UsageTracker::default();
        let a = "1234abcd-12ab-44cd-96ef-1234567890ab";
        let b = "2234abcd-12ab-44cd-96ef-1234567890ab";
        t.record(usage(a, 1), true);
        t.record(usage(b, 1), false);
        let taken = t.take_dirty(|_| true);
        assert_eq!(taken, vec![usage(a, 1)]);
        assert!(t.take_dirty(|_| true).is_empty());
        t.record(usage(a, 2), true);
        t.restore_dirty(&taken);
        // The newer use is pending, the failed older one is not resurrected.
        assert_eq!(t.take_dirty(|_| true), vec![usage(a, 2)]);
        t.restore_dirty(&[usage(a, 2)]);
        assert_eq!(t.take_dirty(|_| true), vec![usage(a, 2)]);
        // An older use that finishes last does not replace a newer one.
        t.record(usage(a, 1), true);
        assert!(t.take_dirty(|_| true).is_empty());
        // Entries of keys that are gone are dropped.
        t.take_dirty(|k| k.hyphenated().to_string() != b);
        assert_eq!(t.get(&crate::core::key_id::parse(b).unwrap()), None);
    }
}
