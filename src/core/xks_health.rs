//! GetHealthStatus for the XKS door: a deep check of every HSM behind the door, one
//! `ekmFleetDetails` entry each, reused for up to `[xks] health_cache_ms` (the specification
//! allows a result under a minute old).
//!
//! The backing HSMs are the default token and every AWS_CLOUDHSM custom key store the key
//! administrator asked to connect (an external key id may name a key in any of them). Each
//! connected device is asked for random bytes through its worker pool, so the check covers
//! the queue, a worker's session and the device itself:
//!
//! - `ACTIVE`: it answered within [`DEGRADED_LATENCY`] and its queue is under half full;
//! - `DEGRADED`: it answered, but slowly or with its queue half full or more (requests are
//!   served, with less headroom within AWS's 250 ms budget);
//! - `UNAVAILABLE`: it failed or did not answer within [`PROBE_TIMEOUT`], or the store is
//!   not connected (connecting, or failed and being retried).
//!
//! Stores the administrator disconnected are not listed. The devices are probed at once, and
//! concurrent health requests share one check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connections::StoreHandle;
use super::keystores::ConnectionState;
use super::xks::{EkmDetail, EkmHealth};
use super::Kms;
use crate::hsm::Hsm;

/// A device slower than this to answer the probe is `DEGRADED`.
pub const DEGRADED_LATENCY: Duration = Duration::from_millis(100);

/// A device that has not answered the probe by then is `UNAVAILABLE`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The specification's bound on `ekmFleetDetails` entries.
pub const MAX_FLEET: usize = 10;

/// The last fleet check and when it was made (engine clock, Unix ms).
#[derive(Debug, Default)]
pub struct HealthCache {
    last: std::sync::Mutex<Option<(i64, Vec<EkmDetail>)>>,
    /// Held while a check runs, so that concurrent requests share it.
    checking: tokio::sync::Mutex<()>,
}

impl HealthCache {
    /// The cached fleet when it is at most `max_age_ms` old at `now_ms`.
    fn fresh(&self, now_ms: i64, max_age_ms: i64) -> Option<Vec<EkmDetail>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| max_age_ms > 0 && (0..max_age_ms).contains(&(now_ms - at)))
            .map(|(_, fleet)| fleet.clone())
    }

    /// The last check, however old.
    fn last(&self) -> Option<Vec<EkmDetail>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().map(|(_, fleet)| fleet.clone())
    }

    fn store(&self, at_ms: i64, fleet: Vec<EkmDetail>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((at_ms, fleet));
    }
}

/// The health a probe's outcome means: `answered_in` is `None` when it failed or timed out.
pub fn classify(answered_in: Option<Duration>, queued: usize, capacity: usize) -> EkmHealth {
    match answered_in {
        None => EkmHealth::Unavailable,
        Some(t) if t > DEGRADED_LATENCY || queued * 2 >= capacity.max(1) => EkmHealth::Degraded,
        Some(_) => EkmHealth::Active,
    }
}

/// Probes one device: random bytes through its queue, within [`PROBE_TIMEOUT`].
async fn probe(hsm: &Hsm) -> EkmHealth {
    let started = Instant::now();
    let answered = match tokio::time::timeout(PROBE_TIMEOUT, hsm.random(16)).await {
        Ok(Ok(_)) => Some(started.elapsed()),
        Ok(Err(e)) => {
            tracing::warn!(token = %hsm.token_label(), error = %e, "XKS health: the HSM failed the probe");
            None
        }
        Err(_) => {
            tracing::warn!(token = %hsm.token_label(), "XKS health: the HSM did not answer in time");
            None
        }
    };
    classify(answered, hsm.queued(), hsm.queue_capacity())
}

/// A fleet entry for `hsm` under `id`.
async fn entry(id: String, hsm: &Hsm) -> EkmDetail {
    EkmDetail {
        id,
        model: model_of(hsm),
        health: probe(hsm).await,
    }
}

fn model_of(hsm: &Hsm) -> String {
    match hsm.model() {
        "" => "PKCS#11 token".into(),
        m => m.to_string(),
    }
}

/// An AWS_CLOUDHSM custom key store's entry: probed when connected, `UNAVAILABLE` while it is
/// being connected or retried, absent when the administrator disconnected it. External key
/// stores are not listed: their keys live behind another proxy, not behind this door.
async fn store_entry(handle: &StoreHandle) -> Option<EkmDetail> {
    if handle.is_external() {
        return None;
    }
    let record = handle.record();
    if let Some(hsm) = handle.connected_hsm() {
        return Some(entry(record.store_id, &hsm).await);
    }
    let (state, _) = handle.state();
    let pending = matches!(state, ConnectionState::Connecting | ConnectionState::Failed);
    (pending && record.connect).then(|| EkmDetail {
        id: record.store_id,
        model: "PKCS#11 token".into(),
        health: EkmHealth::Unavailable,
    })
}

impl Kms {
    /// The XKS door's last health check, however old (for the metrics); `None` before the
    /// first.
    pub fn xks_last_fleet(&self) -> Option<Vec<EkmDetail>> {
        self.xks_health.last()
    }

    /// The fleet behind the XKS door: the cached check when fresh, else a new one.
    pub(super) async fn xks_fleet(&self) -> Vec<EkmDetail> {
        let max_age = i64::try_from(self.settings().xks_health_cache_ms).unwrap_or(60_000);
        let cache = &self.xks_health;
        if let Some(fleet) = cache.fresh(self.now_ms(), max_age) {
            return fleet;
        }
        let _one_check = cache.checking.lock().await;
        if let Some(fleet) = cache.fresh(self.now_ms(), max_age) {
            return fleet;
        }
        let fleet = self.check_fleet().await;
        cache.store(self.now_ms(), fleet.clone());
        fleet
    }

    /// Probes the default token and each custom key store at once (so a slow device delays
    /// the answer by one probe at most, not by one per device), in that order, at most
    /// [`MAX_FLEET`] entries.
    async fn check_fleet(&self) -> Vec<EkmDetail> {
        let hsm: Arc<Hsm> = self.hsm().clone();
        let mut probes = tokio::task::JoinSet::new();
        probes.spawn(async move { (0, Some(entry(hsm.token_label().to_string(), &hsm).await)) });
        for (i, handle) in self.key_stores().all().into_iter().enumerate() {
            probes.spawn(async move { (i + 1, store_entry(&handle).await) });
        }
        let mut found: Vec<(usize, EkmDetail)> = probes
            .join_all()
            .await
            .into_iter()
            .filter_map(|(i, e)| Some((i, e?)))
            .collect();
        found.sort_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, e)| e).take(MAX_FLEET).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_active_degraded_or_unavailable() {
        let fast = Some(Duration::from_millis(2));
        assert_eq!(classify(fast, 0, 64), EkmHealth::Active);
        assert_eq!(classify(fast, 31, 64), EkmHealth::Active);
        assert_eq!(classify(fast, 32, 64), EkmHealth::Degraded);
        assert_eq!(
            classify(Some(DEGRADED_LATENCY + Duration::from_millis(1)), 0, 64),
            EkmHealth::Degraded
        );
        assert_eq!(classify(None, 0, 64), EkmHealth::Unavailable);
    }

    #[test]
    fn the_cache_is_reused_only_while_fresh() {
        let cache = HealthCache::default();
        assert!(cache.fresh(1_000, 10_000).is_none());
        let fleet = vec![EkmDetail {
            id: "t".into(),
            model: "m".into(),
            health: EkmHealth::Active,
        }];
        cache.store(1_000, fleet.clone());
        assert_eq!(cache.fresh(10_999, 10_000), Some(fleet));
        assert!(cache.fresh(11_000, 10_000).is_none(), "stale");
        assert!(cache.fresh(999, 10_000).is_none(), "the clock went back");
        assert!(cache.fresh(1_000, 0).is_none(), "0 = never reuse");
    }
}
