//! Lock-free latency histograms and the HSM layer's statistics for metrics: PKCS#11 call
//! counts and latency by function (kept by `call::Counters`), queue waits, and rejections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the latency histogram buckets (the last bucket is +Inf).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 1.0,
];

/// A latency histogram that threads update without locks.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of a histogram: per-bucket counts (not cumulative), with the +Inf
/// bucket last.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of observations, seconds.
    pub sum_secs: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound in seconds, observations in this bucket); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy for export.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum_secs: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// The HSM layer's statistics, for the metrics endpoint.
#[derive(Debug, Clone)]
pub struct HsmStats {
    /// PKCS#11 calls per function.
    pub calls: Vec<(&'static str, u64)>,
    /// PKCS#11 call latency per function (functions with observations only).
    pub latency: Vec<(&'static str, HistogramSnapshot)>,
    /// Time jobs waited in the queue before a worker took them.
    pub queue_wait: HistogramSnapshot,
    /// Jobs waiting now.
    pub queue_depth: usize,
    /// Worker threads (sessions).
    pub workers: usize,
    /// Requests refused because the queue was full (ThrottlingException).
    pub rejected_busy: u64,
    /// Requests that waited past their deadline (DependencyTimeoutException).
    pub rejected_timeout: u64,
    /// Jobs run a second time, on a fresh session, because their session died under them.
    pub retried_lost_session: u64,
    /// Jobs run at once on the submitting thread, on an inline session (`hsm.dispatch =
    /// "inline"`), rather than by a worker.
    pub inline_jobs: u64,
    /// Workers abandoned while stuck in a PKCS#11 call whose call has not returned yet; the
    /// device is degraded while this is above zero.
    pub stuck_workers: usize,
    /// Workers abandoned and replaced since start.
    pub workers_replaced: u64,
    /// Health probes sent to the device (not in `calls`).
    pub health_probes: u64,
    /// Latency of the health probes (not in `latency`).
    pub health_probe_latency: HistogramSnapshot,
    /// Live session-object copies of key objects (see `HsmConfig::session_key_copies`).
    pub session_key_copies: usize,
    /// Wrapped residency: key uses served by a worker's cache of unwrapped keys.
    pub wrapped_cache_hits: u64,
    /// Wrapped residency: key uses that unwrapped the key's blob first.
    pub wrapped_cache_misses: u64,
    /// Wrapped residency: unwrapped keys destroyed (cache full, key disabled or destroyed).
    pub wrapped_cache_evictions: u64,
    /// Wrapped residency: unwrapped keys held now, over all workers.
    pub wrapped_cache_resident: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.000_01, 1));
        assert_eq!(s.buckets[2].1, 1);
        assert_eq!(s.buckets.last().map(|b| b.1), Some(1));
        assert!((s.sum_secs - 5.000_035).abs() < 1e-9);
    }
}
