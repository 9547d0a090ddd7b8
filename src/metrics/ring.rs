//! The last 15 minutes of requests in 10-second slots, for GetHealth's request chart
//! ([`crate::core::admin`]): counted where every door counts its requests
//! ([`super::Metrics::request`]), in a fixed ring of [`REQUEST_POINTS`] slots behind one
//! mutex held for a few additions, so nothing is allocated per request.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::audit::AuditLog;
use crate::core::admin::{NodeProbe, RequestPoint, REQUEST_INTERVAL_SECS, REQUEST_POINTS};

/// One interval's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// The interval (Unix seconds / [`REQUEST_INTERVAL_SECS`]) these figures are of.
    interval: i64,
    requests: u64,
    errors: u64,
    latency_sum_us: u64,
    latency_max_us: u64,
}

impl Slot {
    /// A slot of no interval yet.
    const EMPTY: Slot = Slot {
        interval: i64::MIN,
        requests: 0,
        errors: 0,
        latency_sum_us: 0,
        latency_max_us: 0,
    };
}

/// The ring of the last [`REQUEST_POINTS`] intervals.
#[derive(Debug)]
pub struct RequestRing {
    slots: Mutex<[Slot; REQUEST_POINTS]>,
}

impl Default for RequestRing {
    fn default() -> Self {
        RequestRing {
            slots: Mutex::new([Slot::EMPTY; REQUEST_POINTS]),
        }
    }
}

/// The interval holding `now_ms`.
fn interval_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(REQUEST_INTERVAL_SECS * 1000)
}

/// The ring slot of an interval.
fn slot_of(interval: i64) -> usize {
    interval.rem_euclid(REQUEST_POINTS as i64) as usize
}

impl RequestRing {
    /// Counts one request served at `now_ms`.
    pub fn record(&self, now_ms: i64, error: bool, latency: Duration) {
        let interval = interval_of(now_ms);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[slot_of(interval)];
        if slot.interval != interval {
            *slot = Slot {
                interval,
                ..Slot::EMPTY
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(error);
        slot.latency_sum_us = slot.latency_sum_us.saturating_add(micros);
        slot.latency_max_us = slot.latency_max_us.max(micros);
    }

    /// The last [`REQUEST_POINTS`] intervals ending with the one holding `now_ms`, oldest
    /// first, zeros where idle.
    pub fn points(&self, now_ms: i64) -> Vec<RequestPoint> {
        let now = interval_of(now_ms);
        let slots = *self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        (now - REQUEST_POINTS as i64 + 1..=now)
            .map(|interval| {
                let s = slots[slot_of(interval)];
                let time_s = interval * REQUEST_INTERVAL_SECS;
                if s.interval != interval || s.requests == 0 {
                    return RequestPoint {
                        time_s,
                        ..RequestPoint::default()
                    };
                }
                RequestPoint {
                    time_s,
                    requests: s.requests,
                    errors: s.errors,
                    latency_mean_ms: s.latency_sum_us as f64 / s.requests as f64 / 1000.0,
                    latency_max_ms: s.latency_max_us as f64 / 1000.0,
                }
            })
            .collect()
    }
}

/// The engine's [`NodeProbe`]: the audit writer's health and the request ring.
pub struct HealthProbe {
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// The requests of the last minutes.
    pub ring: Arc<RequestRing>,
}

impl NodeProbe for HealthProbe {
    fn audit_writable(&self) -> bool {
        self.audit.healthy()
    }

    fn request_points(&self, now_ms: i64) -> Vec<RequestPoint> {
        self.ring.points(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000; // a multiple of 10 s

    #[test]
    fn counts_land_in_their_interval_oldest_first() {
        let ring = RequestRing::default();
        ring.record(T0, false, Duration::from_millis(2));
        ring.record(T0 + 9_999, true, Duration::from_millis(4));
        ring.record(T0 + 10_000, false, Duration::from_micros(500));
        let points = ring.points(T0 + 10_000);
        assert_eq!(points.len(), REQUEST_POINTS);
        let (last, before) = (points[REQUEST_POINTS - 1], points[REQUEST_POINTS - 2]);
        assert_eq!(last.time_s, T0 / 1000 + 10);
        assert_eq!(before.time_s, T0 / 1000);
        assert_eq!((before.requests, before.errors), (2, 1));
        assert_eq!((before.latency_mean_ms, before.latency_max_ms), (3.0, 4.0));
        assert_eq!(
            (last.requests, last.errors, last.latency_max_ms),
            (1, 0, 0.5)
        );
        assert!(points[..REQUEST_POINTS - 2].iter().all(|p| p.requests == 0));
        assert!(points.windows(2).all(|w| w[1].time_s - w[0].time_s == 10));
    }

    /// A slot is reused a full ring later: the old interval's figures are not added to the
    /// new one's, and an interval that fell out of the window is not reported.
    #[test]
    fn old_intervals_fall_out() {
        let ring = RequestRing::default();
        ring.record(T0, false, Duration::from_millis(1));
        let lap = REQUEST_POINTS as i64 * 10_000;
        let points = ring.points(T0 + lap);
        assert!(points.iter().all(|p| p.requests == 0), "{points:?}");
        ring.record(T0 + lap, true, Duration::from_millis(1));
        let points = ring.points(T0 + lap);
        assert_eq!(
            (
                points[REQUEST_POINTS - 1].requests,
                points[REQUEST_POINTS - 1].errors
            ),
            (1, 1)
        );
        assert_eq!(points.iter().map(|p| p.requests).sum::<u64>(), 1);
    }
}
