//! Refused requests (no credentials, failed authentication) cost the trail a bounded number
//! of records, whatever their rate: [`RefusalAuditor`] writes the first refusal of a
//! (door, source address, operation, error) in full and folds the rest into one aggregate
//! record per interval (`additionalEventData.aggregatedCount`, first and last time, a sample
//! request id). It tracks at most `max_keys` of them; what does not fit is folded into one
//! overflow aggregate, so a flood from many addresses grows neither memory nor the trail
//! without bound. It also watches the free space of the trail's file system: below
//! `warn_free_bytes` it warns (a log line at a bounded rate and a metric), below
//! `min_free_bytes` it sheds refusals (nothing written, counted in a metric), so that
//! strangers cannot fill the disk that authenticated requests need. Authenticated requests
//! are not its business: they keep one record each and fail closed only when the trail
//! cannot be written. `docs/audit.md`, "Refused requests", is the operator's page.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{iso8601_ms, AuditEvent, AuditLog};

/// How often the free space is measured.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Least time between two warnings about free space.
const SPACE_WARN_EVERY: Duration = Duration::from_secs(60);

/// The settings of [`RefusalAuditor`] (`[audit]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalConfig {
    /// One aggregate record per key per interval.
    pub interval: Duration,
    /// Most (door, source, operation, error) keys tracked at once; the rest share one
    /// overflow aggregate.
    pub max_keys: usize,
    /// Below this many free bytes on the trail's file system, refusals are not audited.
    /// 0: never.
    pub min_free_bytes: u64,
    /// Below this many free bytes, warn. 0: never.
    pub warn_free_bytes: u64,
}

impl Default for RefusalConfig {
    fn default() -> Self {
        RefusalConfig {
            interval: Duration::from_secs(60),
            max_keys: 1024,
            min_free_bytes: 1 << 30,
            warn_free_bytes: 2 << 30,
        }
    }
}

/// The free space of the trail's file system, as last measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SpaceState {
    /// Above the warning level (or not measurable).
    Ok = 0,
    /// Below `warn_free_bytes`: warned, nothing shed.
    Low = 1,
    /// Below `min_free_bytes`: refusals are shed.
    Shedding = 2,
}

/// What identifies a group of refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    door: &'static str,
    operation: &'static str,
    source: Option<IpAddr>,
    error: String,
}

/// The refusals of one key since its last aggregate.
#[derive(Default)]
struct Pending {
    /// The event of the first refusal folded in this interval (the aggregate's template).
    sample: Option<AuditEvent>,
    count: u64,
    last_ms: i64,
}

impl Pending {
    fn fold(&mut self, ev: AuditEvent, now_ms: i64) {
        if self.sample.is_none() {
            self.sample = Some(ev);
        }
        self.count += 1;
        self.last_ms = now_ms;
    }

    /// The aggregate record of what was folded, if anything; resets the count.
    fn take_aggregate(&mut self, interval: Duration, overflow: bool) -> Option<AuditEvent> {
        let mut ev = self.sample.take()?;
        let count = std::mem::take(&mut self.count);
        let mut data = json!({
            "aggregatedCount": count,
            "firstEventTime": ev.event_time,
            "lastEventTime": iso8601_ms(self.last_ms),
            "aggregationIntervalSeconds": interval.as_secs(),
        });
        if overflow {
            data["aggregatedOverflow"] = json!(true);
        }
        ev.event_id = super::ids::uuid_v4().hyphenated().to_string();
        ev.additional_event_data = Some(data);
        Some(ev)
    }
}

#[derive(Default)]
struct Groups {
    keys: HashMap<Key, Pending>,
    overflow: Pending,
}

/// Audits refused requests by aggregation and watches the trail's free space (module docs).
pub struct RefusalAuditor {
    log: Arc<AuditLog>,
    config: RefusalConfig,
    dir: PathBuf,
    groups: Mutex<Groups>,
    free_bytes: AtomicU64,
    state: AtomicU8,
    aggregated: AtomicU64,
    shed: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
    /// Stops the background task between two ticks (never in the middle of a flush).
    stop: tokio::sync::Notify,
}

impl std::fmt::Debug for RefusalAuditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalAuditor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Figures for the metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefusalStats {
    /// Free bytes on the trail's file system at the last check (`u64::MAX` if unknown).
    pub free_bytes: u64,
    /// [`SpaceState`] as a number.
    pub space_state: u8,
    /// Refusals folded into aggregates (not written one by one).
    pub aggregated: u64,
    /// Refusals not audited because free space was below the floor.
    pub shed: u64,
    /// Keys tracked now.
    pub keys: u64,
}

impl RefusalAuditor {
    /// An auditor writing to `log`; measures the free space of the trail's directory at once.
    pub fn new(log: Arc<AuditLog>, config: RefusalConfig) -> RefusalAuditor {
        let dir = log.dir().to_path_buf();
        let a = RefusalAuditor {
            log,
            config,
            dir,
            groups: Mutex::new(Groups::default()),
            free_bytes: AtomicU64::new(u64::MAX),
            state: AtomicU8::new(SpaceState::Ok as u8),
            aggregated: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            last_warn: Mutex::new(None),
            stop: tokio::sync::Notify::new(),
        };
        a.check_space();
        a
    }

    /// Accounts for one refused request, whose full event is `ev`, at `now_ms` (Unix ms):
    /// written when it is the first of its key, else folded into the key's aggregate;
    /// dropped (and counted) while free space is below the floor.
    pub async fn refused(
        &self,
        door: &'static str,
        operation: &'static str,
        ev: AuditEvent,
        now_ms: i64,
    ) {
        if self.space_state() == SpaceState::Shedding {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = Key {
            door,
            operation,
            source: ev.source_ip_address.as_deref().and_then(|s| s.parse().ok()),
            error: ev.error_code.clone().unwrap_or_default(),
        };
        {
            let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let max = self.config.max_keys;
            let len = g.keys.len();
            match g.keys.get_mut(&key) {
                Some(p) => {
                    p.fold(ev, now_ms);
                    self.aggregated.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None if len >= max => {
                    g.overflow.fold(ev, now_ms);
                    self.aggregated.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => {
                    g.keys.insert(key, Pending::default());
                }
            }
        }
        self.write(ev).await;
    }

    async fn write(&self, ev: AuditEvent) {
        let id = ev.request_id.clone();
        if let Err(e) = self.log.append(ev).await {
            tracing::error!(request_id = %id, error = %e, "could not audit a refused request");
        }
    }

    /// Writes the aggregate of every key with folded refusals and forgets the keys that saw
    /// none since the last flush (their next refusal is written in full again).
    pub async fn flush(&self) {
        let interval = self.config.interval;
        let out: Vec<AuditEvent> = {
            let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            g.keys
                .retain(|_, p| match p.take_aggregate(interval, false) {
                    Some(ev) => {
                        out.push(ev);
                        true
                    }
                    None => false,
                });
            out.extend(g.overflow.take_aggregate(interval, true));
            out
        };
        for ev in out {
            self.write(ev).await;
        }
    }

    /// Measures the free space of the trail's file system, updates the state and warns at a
    /// bounded rate.
    pub fn check_space(&self) {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                self.warn_rate_limited(|| {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure the free space of the audit trail's file system");
                });
                u64::MAX
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        let c = &self.config;
        let state = if free < c.min_free_bytes {
            SpaceState::Shedding
        } else if free < c.warn_free_bytes {
            SpaceState::Low
        } else {
            SpaceState::Ok
        };
        let before = self.state.swap(state as u8, Ordering::Relaxed);
        match state {
            SpaceState::Ok if before != SpaceState::Ok as u8 => {
                tracing::info!(free_bytes = free, "audit trail free space is above the warning level again");
            }
            SpaceState::Ok => {}
            SpaceState::Low => self.warn_rate_limited(|| {
                tracing::warn!(free_bytes = free, warn_free_bytes = c.warn_free_bytes, min_free_bytes = c.min_free_bytes, "the audit trail's file system is low on space; refused requests will not be audited below min_free_bytes");
            }),
            SpaceState::Shedding => self.warn_rate_limited(|| {
                tracing::warn!(free_bytes = free, min_free_bytes = c.min_free_bytes, "the audit trail's file system is below its free-space floor: refused (unauthenticated) requests are not audited");
            }),
        }
    }

    fn warn_rate_limited(&self, log: impl FnOnce()) {
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= SPACE_WARN_EVERY) {
            *last = Some(Instant::now());
            log();
        }
    }

    /// The free-space state at the last check.
    pub fn space_state(&self) -> SpaceState {
        match self.state.load(Ordering::Relaxed) {
            2 => SpaceState::Shedding,
            1 => SpaceState::Low,
            _ => SpaceState::Ok,
        }
    }

    /// Asks the background task to stop at its next tick (a flush in progress completes).
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Figures for the metrics endpoint.
    pub fn stats(&self) -> RefusalStats {
        let keys = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len();
        RefusalStats {
            free_bytes: self.free_bytes.load(Ordering::Relaxed),
            space_state: self.state.load(Ordering::Relaxed),
            aggregated: self.aggregated.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            keys: keys as u64,
        }
    }

    /// The background task: checks the free space every second and flushes the aggregates
    /// every interval. At shutdown: [`Self::stop`], await the task, then [`Self::flush`].
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SPACE_CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_flush = Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = me.stop.notified() => break,
                }
                let me2 = Arc::clone(&me);
                let _ = tokio::task::spawn_blocking(move || me2.check_space()).await;
                if last_flush.elapsed() >= me.config.interval {
                    last_flush = Instant::now();
                    me.flush().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditConfig;

    fn refusal(ip: &str, error: &str, id: &str) -> AuditEvent {
        let mut ev = AuditEvent::new("ListKeys", id, 1_700_000_000_000);
        ev.source_ip_address = Some(ip.into());
        ev.set_error(error, "no");
        ev
    }

    async fn auditor(
        dir: &std::path::Path,
        config: RefusalConfig,
    ) -> (Arc<AuditLog>, RefusalAuditor) {
        let log = Arc::new(AuditLog::open(AuditConfig::new(dir), None).await.unwrap());
        let a = RefusalAuditor::new(log.clone(), config);
        (log, a)
    }

    fn events(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                // The live segment ends with its preallocated (NUL) space.
                let text = std::fs::read_to_string(&p).unwrap();
                for l in text.trim_end_matches('\0').lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    if v["recordType"] == "event" {
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn the_first_refusal_is_written_in_full_and_the_rest_counted_per_key() {
        let tmp = tempfile::tempdir().unwrap();
        let config = RefusalConfig {
            max_keys: 2,
            min_free_bytes: 0,
            warn_free_bytes: 0,
            ..RefusalConfig::default()
        };
        let (log, a) = auditor(tmp.path(), config).await;
        for i in 0..100 {
            // The third is over the key cap: folded into the overflow aggregate, never
            // written in full.
            let third = format!("10.1.0.{i}");
            for (ip, error, id) in [
                ("10.0.0.1", "A", 'a'),
                ("10.0.0.2", "B", 'b'),
                (&third, "C", 'c'),
            ] {
                let ev = refusal(ip, error, &format!("{id}{i}"));
                a.refused("aws-json", "ListKeys", ev, 0).await;
            }
        }
        assert_eq!(events(tmp.path()).len(), 2, "only the first of each key");
        assert_eq!(a.stats().keys, 2);
        a.flush().await;
        let evs = events(tmp.path());
        assert_eq!(evs.len(), 5);
        let agg = |id: &str| evs.iter().find(|e| e["requestID"] == id).unwrap().clone();
        assert_eq!(agg("a0")["additionalEventData"], serde_json::Value::Null);
        assert_eq!(agg("a1")["additionalEventData"]["aggregatedCount"], 99);
        assert_eq!(agg("b1")["additionalEventData"]["aggregatedCount"], 99);
        let other = agg("c0");
        assert_eq!(other["additionalEventData"]["aggregatedCount"], 100);
        assert_eq!(other["additionalEventData"]["aggregatedOverflow"], true);
        // Idle keys are forgotten at the next flush; nothing new, nothing written.
        a.flush().await;
        a.flush().await;
        assert_eq!(events(tmp.path()).len(), 5);
        assert_eq!(a.stats().keys, 0);
        assert_eq!(a.stats().aggregated, 298);
        log.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_background_task_writes_aggregates_every_interval_and_stops_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let config = RefusalConfig {
            interval: Duration::from_secs(1),
            min_free_bytes: 0,
            warn_free_bytes: 0,
            ..RefusalConfig::default()
        };
        let (log, a) = auditor(tmp.path(), config).await;
        let a = Arc::new(a);
        let task = a.spawn();
        for i in 0..3 {
            let ev = refusal("10.0.0.1", "A", &format!("r{i}"));
            a.refused("grpc", "Encrypt", ev, 0).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = |evs: &[serde_json::Value]| {
            evs.iter()
                .find_map(|e| e["additionalEventData"]["aggregatedCount"].as_u64())
        };
        while count(&events(tmp.path())).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            count(&events(tmp.path())),
            Some(2),
            "no aggregate within 10 s"
        );
        a.stop();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .unwrap();
        log.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn below_the_floor_refusals_are_shed_and_above_the_warning_level_nothing_is() {
        let tmp = tempfile::tempdir().unwrap();
        let huge = 1u64 << 62;
        let (log, a) = auditor(
            tmp.path(),
            RefusalConfig {
                min_free_bytes: huge,
                warn_free_bytes: huge,
                ..RefusalConfig::default()
            },
        )
        .await;
        assert_eq!(a.space_state(), SpaceState::Shedding);
        a.refused("grpc", "Encrypt", refusal("10.0.0.1", "A", "x"), 0)
            .await;
        assert!(events(tmp.path()).is_empty());
        assert_eq!(a.stats().shed, 1);
        assert!(a.stats().free_bytes < huge);
        log.shutdown().await.unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let (log, a) = auditor(
            tmp.path(),
            RefusalConfig {
                min_free_bytes: 0,
                warn_free_bytes: huge,
                ..RefusalConfig::default()
            },
        )
        .await;
        assert_eq!(a.space_state(), SpaceState::Low);
        a.refused("grpc", "Encrypt", refusal("10.0.0.1", "A", "x"), 0)
            .await;
        assert_eq!(events(tmp.path()).len(), 1);
        log.shutdown().await.unwrap();
    }
}
