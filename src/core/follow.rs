//! Following the other nodes: the cache stays coherent with the shared store.
//!
//! Every write to the store appends a change-log row in its own transaction (kind and id of
//! what changed). A node keeps its in-memory view (keys, versions, tags, policies, grants,
//! aliases, lifecycles, key stores), so the request path never reads the database; it learns
//! of other nodes' changes by reading the change log:
//! - at once when PostgreSQL's `NOTIFY` says a change was committed (`LISTEN`), and
//! - every `interval` whatever happens (the fallback when a notification was missed, or the
//!   listening connection was down).
//!
//! Each row names one item, which is read again from the store and put in the cache
//! ([`Kms::apply_change`]); a node's own changes come back too and are harmless (the cache
//! never goes back to a lower row version). Sequence numbers are taken before commit, so a
//! lower one can become visible after a higher one: the reader keeps a watermark below which
//! every row was applied and re-reads above it, and treats a hole as a rolled-back
//! transaction only after [`GAP_GRACE`]. A node that could not read the log for longer than
//! the log is kept ([`RETENTION_MS`], pruned by the leader) reloads everything.
//!
//! The staleness bound (docs/scaling.md): a change is in every connected node's cache within
//! `interval` (default 1 s) plus one store read, and typically within milliseconds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Kms, KmsError};
use crate::store::{Change, ChangeKind, KeyState};

/// How long a hole in the sequence numbers is waited for before it is taken for a
/// transaction that rolled back (store transactions last milliseconds).
pub const GAP_GRACE: Duration = Duration::from_secs(60);
/// How long change-log rows are kept (the leader prunes older ones).
pub const RETENTION_MS: i64 = 60 * 60 * 1000;
/// Most rows read per round.
const BATCH: u32 = 1000;

/// Where a node is in the change log.
#[derive(Debug)]
pub struct Follower {
    /// Every row with a seq at or below this was applied (or is a rolled-back hole).
    low: i64,
    /// Rows above `low` already applied.
    applied: BTreeSet<i64>,
    /// When the hole just above `low` was first seen.
    hole_since: Option<Instant>,
    /// The last round that read the log.
    last_read: Instant,
}

impl Follower {
    /// A follower that has seen everything up to `seq` (read before the cache was loaded, so
    /// that changes made during the load are applied again).
    pub fn from(seq: i64) -> Follower {
        Follower {
            low: seq,
            applied: BTreeSet::new(),
            hole_since: None,
            last_read: Instant::now(),
        }
    }

    /// The rows of `batch` not applied yet.
    fn fresh(&self, batch: &[Change]) -> Vec<Change> {
        batch
            .iter()
            .filter(|c| c.seq > self.low && !self.applied.contains(&c.seq))
            .cloned()
            .collect()
    }

    /// Records `seq` as applied and moves the watermark over every contiguous applied row,
    /// and over a hole older than [`GAP_GRACE`].
    fn mark(&mut self, seq: i64) {
        self.applied.insert(seq);
        self.advance(Instant::now());
    }

    fn advance(&mut self, now: Instant) {
        loop {
            if self.applied.remove(&(self.low + 1)) {
                self.low += 1;
                self.hole_since = None;
                continue;
            }
            let Some(&next) = self.applied.first() else {
                self.hole_since = None;
                return;
            };
            let since = *self.hole_since.get_or_insert(now);
            if now.duration_since(since) < GAP_GRACE {
                return;
            }
            tracing::debug!(
                from = self.low + 1,
                to = next - 1,
                "change-log hole taken as rolled back"
            );
            self.low = next - 1;
            self.hole_since = None;
        }
    }

    /// The watermark (tests, metrics).
    pub fn low(&self) -> i64 {
        self.low
    }
}

impl Kms {
    /// Reads the change log once after `f`'s watermark and applies every new row; a follower
    /// that could not read the log for longer than it is kept reloads everything first.
    /// Returns how many rows were applied.
    pub async fn follow_once(&self, f: &mut Follower) -> Result<usize, KmsError> {
        if f.last_read.elapsed() > Duration::from_millis((RETENTION_MS / 2) as u64) {
            tracing::warn!("the change log was not read for too long; reloading the whole cache");
            let seq = self.store.last_change_seq().await?;
            self.reload_all().await?;
            *f = Follower::from(seq);
        }
        let batch = self.store.changes_since(f.low, BATCH).await?;
        f.last_read = Instant::now();
        let fresh = f.fresh(&batch);
        for c in &fresh {
            self.apply_change(c).await?;
            f.mark(c.seq);
        }
        f.advance(Instant::now());
        Ok(fresh.len())
    }

    /// Runs [`Kms::follow_once`] whenever the store says a change was committed and every
    /// `interval`, until `cancel`. A failed round (database unreachable) is logged and
    /// retried; the request path keeps serving from the cache meanwhile.
    pub async fn follow(
        self: Arc<Self>,
        mut f: Follower,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        let mut notified = self.store.subscribe_changes();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = wait_notified(&mut notified) => {
                    if !changed {
                        notified = None;
                    }
                }
            }
            if let Err(e) = self.follow_once(&mut f).await {
                tracing::warn!(error = %e, "cannot read other nodes' changes; serving from the cache");
            }
        }
    }

    /// Reads the item a change-log row names again and puts it in the cache.
    pub async fn apply_change(&self, c: &Change) -> Result<(), KmsError> {
        match c.kind {
            ChangeKind::Key => self.reload_key(&c.id).await,
            ChangeKind::Grants => self.reload_grants(&c.id).await,
            ChangeKind::Alias => self.reload_alias(&c.id).await,
            ChangeKind::KeyStore => self.reload_key_store(&c.id).await,
            // Sessions are read when first presented (SessionStore::lookup_shared).
            ChangeKind::Session => Ok(()),
        }
    }

    /// A key, its lifecycle and (when it is gone) its aliases and tombstone.
    pub(super) async fn reload_key(&self, key_id: &str) -> Result<(), KmsError> {
        let lifecycle = self.store.get_lifecycle(key_id).await?;
        let Some(bundle) = self.store.get_key(key_id).await? else {
            self.forget_key(key_id).await?;
            return Ok(());
        };
        if bundle.key.state == KeyState::Creating {
            // Another node is creating it (or died doing so): not usable, and reconciled by
            // the leader once the grace period has passed.
            self.strand(bundle.key);
            return Ok(());
        }
        self.unstrand(key_id);
        if let Some(l) = lifecycle {
            self.lifecycle_cache_put(l);
        }
        // A blob gone from its row (imported material deleted): forgotten with the cache
        // fill below, then its unwrapped copies destroyed here too.
        let lost = crate::core::key_id::parse(key_id)
            .is_ok_and(|u| self.blobs.loses_blob(*u.as_bytes(), &bundle.versions));
        let mut cached = self.cached_from_bundle(bundle)?;
        match self.key_by_uuid(&cached.uuid) {
            Some(old) => cached.grants = old.grants.clone(),
            None => cached.grants = self.store.grants_of(key_id).await?,
        }
        let cached = self.cache_put(cached);
        if lost {
            self.evict_lost_blobs(&cached).await;
        }
        Ok(())
    }

    /// A key that is no longer in the store: destroyed by the sweeper (tombstone) or removed
    /// by reconciliation.
    async fn forget_key(&self, key_id: &str) -> Result<(), KmsError> {
        let destroyed = self.store.was_destroyed(key_id).await?;
        self.unstrand(key_id);
        if let Ok(u) = crate::core::key_id::parse(key_id) {
            self.forget_blobs(*u.as_bytes()).await;
        }
        let mut cache = self.cache_write();
        if let Ok(u) = crate::core::key_id::parse(key_id) {
            cache.remove_key(&u);
            if destroyed {
                cache.deleted.insert(u);
            }
        }
        cache.remove_aliases_of(key_id);
        Ok(())
    }

    /// The grants of one key.
    async fn reload_grants(&self, key_id: &str) -> Result<(), KmsError> {
        let grants = self.store.grants_of(key_id).await?;
        let Some(old) = crate::core::key_id::parse(key_id)
            .ok()
            .and_then(|u| self.key_by_uuid(u.as_bytes()))
        else {
            return Ok(());
        };
        let mut cached = (*old).clone();
        cached.grants = grants;
        self.cache_write().put_key(Arc::new(cached));
        Ok(())
    }

    /// One alias (`<account>/<alias name>`).
    async fn reload_alias(&self, id: &str) -> Result<(), KmsError> {
        let Some((account, name)) = id.split_once('/') else {
            return Err(KmsError::Internal(format!("change-log alias id {id:?}")));
        };
        match self.store.get_alias(account, name).await? {
            Some(a) => self.cache_write().put_alias(a),
            None => self
                .cache_write()
                .remove_alias(&(account.to_string(), name.to_string())),
        }
        Ok(())
    }

    /// One custom key store's record (its connection stays this node's own).
    async fn reload_key_store(&self, id: &str) -> Result<(), KmsError> {
        match (self.store.get_key_store(id).await?, self.key_stores.get(id)) {
            (Some(r), Some(h)) => {
                if r.row_version > h.record().row_version {
                    h.set_record(r);
                }
            }
            (Some(r), None) => {
                self.key_stores.insert(r);
            }
            (None, Some(_)) => self.key_stores.remove(id),
            (None, None) => {}
        }
        Ok(())
    }
}

/// Waits until `rx` says a change was committed; `false` when the store stopped notifying
/// (then only the interval drives the follower). Pending forever without a receiver.
async fn wait_notified(rx: &mut Option<tokio::sync::watch::Receiver<i64>>) -> bool {
    match rx {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64) -> Change {
        Change {
            seq,
            at_ms: 0,
            kind: ChangeKind::Key,
            id: String::new(),
        }
    }

    #[test]
    fn the_watermark_waits_for_a_hole_then_passes_it() {
        let mut f = Follower::from(10);
        f.mark(11);
        assert_eq!(f.low(), 11);
        // 12 is not visible yet (its transaction commits later): 13 is applied, the mark
        // stays below the hole, and 12 is still read when it appears.
        f.mark(13);
        assert_eq!(f.low(), 11);
        let batch = [change(12), change(13)];
        let fresh: Vec<i64> = f.fresh(&batch).iter().map(|c| c.seq).collect();
        assert_eq!(fresh, [12]);
        f.mark(12);
        assert_eq!(f.low(), 13);
        // A hole that never fills is passed once it is older than the grace.
        f.mark(15);
        let t0 = Instant::now();
        f.advance(t0);
        assert_eq!(f.low(), 13);
        f.advance(t0 + GAP_GRACE);
        assert_eq!(f.low(), 15);
    }
}
