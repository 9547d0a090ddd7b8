//! Prometheus metrics, served on a separate (by default loopback) port.
//!
//! Request counts and latencies are recorded by the doors; HSM, policy and audit figures are
//! read from their owners' counters at scrape time, so the request path never waits on the
//! metrics registry for them.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::Kms;
use crate::hsm::stats::{HistogramSnapshot, HsmStats, LATENCY_BUCKETS};

mod ring;
pub use ring::{HealthProbe, RequestRing};

/// Labels of the request counter. The values are borrowed `'static` strings on the request
/// path, so looking a series up allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `grpc`, `aws-json`.
    pub door: Cow<'static, str>,
    /// The operation (`Encrypt`, `AssumeRole`, ...).
    pub operation: Cow<'static, str>,
    /// `Success`, or the AWS exception name.
    pub outcome: Cow<'static, str>,
}

/// Labels of the request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `grpc`, `aws-json`.
    pub door: Cow<'static, str>,
    /// The operation (`Encrypt`, `AssumeRole`, ...).
    pub operation: Cow<'static, str>,
}

/// Labels of the XKS door's per-key-store request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XksLabels {
    /// The logical key store's URI path prefix.
    pub key_store: String,
    /// The XKS operation (`Encrypt`, `GetHealthStatus`, ...).
    pub operation: Cow<'static, str>,
    /// `Success`, or the specification's error name.
    pub outcome: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    effect: String,
    reason: String,
}

/// Extra figures read at scrape time (the audit writer registers one).
pub trait ScrapeSource: Send + Sync + 'static {
    /// Appends metric families.
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error>;
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram>,
    xks: Family<XksLabels, Counter>,
    /// The last minutes of requests, for GetHealth.
    ring: Arc<RequestRing>,
    /// The engine, whose clock times the ring.
    kms: Arc<Kms>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Encodes one unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The value of one unlabelled metric, for tables of them.
enum Unlabelled {
    Gauge(i64),
    Counter(u64),
}

/// Encodes one unlabelled counter.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn request_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// Encodes a histogram snapshot.
pub fn encode_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Option<(&str, String)>, HistogramSnapshot)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (label, snap) in series {
        let buckets: Vec<(f64, u64)> = snap.buckets.clone();
        match label {
            Some((_, value)) => {
                let labels = FunctionLabels {
                    function: value.clone(),
                };
                let mut e = m.encode_family(&labels)?;
                e.encode_histogram::<Vec<(String, String)>>(
                    snap.sum_secs,
                    snap.count,
                    &buckets,
                    None,
                )?;
            }
            None => m.encode_histogram::<Vec<(String, String)>>(
                snap.sum_secs,
                snap.count,
                &buckets,
                None,
            )?,
        }
    }
    Ok(())
}

#[derive(Debug)]
struct EngineCollector {
    kms: Arc<Kms>,
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.kms.hsm().stats();
        encode_hsm_calls(&mut encoder, &stats)?;
        encode_hsm_latencies(&mut encoder, &stats)?;
        encode_hsm_pool(&mut encoder, &stats)?;
        encode_hsm_rejections(&mut encoder, &stats)?;
        encode_decisions(&mut encoder, &self.kms)?;
        encode_key_stores(&mut encoder, &self.kms)?;
        encode_xks_fleet(&mut encoder, &self.kms)?;
        gauge(
            &mut encoder,
            "p11kms_keys",
            "Keys in the engine's cache, every state",
            self.kms.key_count() as i64,
        )?;
        Ok(())
    }
}

/// Each custom key store: its connection state (`p11kms_custom_key_store_state`, 1 for the
/// store's current state), and while connected its device's calls and queue.
fn encode_key_stores(encoder: &mut DescriptorEncoder, kms: &Kms) -> std::fmt::Result {
    use crate::core::keystores::ConnectionState;
    let stores = kms.key_stores().all();
    let states = stores.iter().flat_map(|h| {
        let (id, current) = (h.record().store_id, h.state().0);
        ConnectionState::ALL.iter().map(move |state| {
            let labels = vec![("store", id.clone()), ("state", state.as_str().to_string())];
            (labels, i64::from(*state == current))
        })
    });
    let help = "Connection state of each custom key store (1 for its current state)";
    labelled_gauge(encoder, "p11kms_custom_key_store_state", help, states)?;
    let devices: Vec<_> = stores
        .iter()
        .filter_map(|h| Some((h.record().store_id, h.connected_hsm()?)))
        .collect();
    let calls = devices
        .iter()
        .map(|(id, hsm)| (id.clone(), hsm.total_ops()));
    let help =
        "PKCS#11 calls made on each connected custom key store's device (since it connected)";
    labelled_counter(
        encoder,
        "p11kms_custom_key_store_hsm_calls",
        help,
        "store",
        calls,
    )?;
    let queues = devices
        .iter()
        .map(|(id, hsm)| (vec![("store", id.clone())], hsm.queued() as i64));
    let help = "Requests waiting for a session of each connected custom key store's device";
    labelled_gauge(
        encoder,
        "p11kms_custom_key_store_hsm_queue_depth",
        help,
        queues,
    )
}

/// The XKS door's last health check (`p11kms_xks_ekm_health`, 1 for each backing HSM's
/// status), once one has run.
fn encode_xks_fleet(encoder: &mut DescriptorEncoder, kms: &Kms) -> std::fmt::Result {
    use crate::core::xks::EkmHealth;
    let Some(fleet) = kms.xks_last_fleet() else {
        return Ok(());
    };
    let rows = fleet.into_iter().flat_map(|d| {
        EkmHealth::ALL.iter().map(move |h| {
            let labels = vec![("ekm", d.id.clone()), ("status", h.as_str().to_string())];
            (labels, i64::from(*h == d.health))
        })
    });
    let help = "Each HSM behind the XKS door as its last GetHealthStatus check found it (1 for its status)";
    labelled_gauge(encoder, "p11kms_xks_ekm_health", help, rows)
}

/// Encodes a gauge family: a series per `(labels, value)` row.
fn labelled_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `p11kms_hsm_calls`: PKCS#11 calls made, by function.
fn encode_hsm_calls(encoder: &mut DescriptorEncoder, stats: &HsmStats) -> std::fmt::Result {
    let rows = stats.calls.iter().map(|(f, n)| (f.to_string(), *n));
    let help = "PKCS#11 calls made, by function";
    labelled_counter(encoder, "p11kms_hsm_calls", help, "function", rows)
}

/// Encodes a counter family with one label: a series per `(label value, count)` row.
fn labelled_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: impl IntoIterator<Item = (String, u64)>,
) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in rows {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// The HSM latency histograms: calls by function, health probes, queue wait.
fn encode_hsm_latencies(encoder: &mut DescriptorEncoder, stats: &HsmStats) -> std::fmt::Result {
    let series: Vec<(Option<(&str, String)>, HistogramSnapshot)> = stats
        .latency
        .iter()
        .map(|(f, s)| (Some(("function", f.to_string())), s.clone()))
        .collect();
    encode_histogram(
        encoder,
        "p11kms_hsm_call_duration_seconds",
        "PKCS#11 call latency, by function",
        &series,
    )?;
    encode_histogram(
            encoder,
            "p11kms_hsm_health_probe_duration_seconds",
            "Latency of the HSM health probes (C_GetSessionInfo), not in p11kms_hsm_call_duration_seconds",
            &[(None, stats.health_probe_latency.clone())],
        )?;
    encode_histogram(
        encoder,
        "p11kms_hsm_queue_wait_seconds",
        "Time requests waited for an HSM session (worker)",
        &[(None, stats.queue_wait.clone())],
    )?;
    Ok(())
}

/// The HSM session pool's gauges and counters: queue, probes, retries, stuck and replaced workers, sessions, key copies, the wrapped-key cache.
fn encode_hsm_pool(encoder: &mut DescriptorEncoder, stats: &HsmStats) -> std::fmt::Result {
    use Unlabelled::{Counter, Gauge};
    let rows = [
        ("p11kms_hsm_queue_depth", "Requests waiting for an HSM session now",
            Gauge(stats.queue_depth as i64)),
        ("p11kms_hsm_health_probes",
            "Health probes sent to the HSM (C_GetSessionInfo), not in p11kms_hsm_calls",
            Counter(stats.health_probes)),
        ("p11kms_hsm_session_retries",
            "HSM jobs run once more on a fresh session because their session died under them",
            Counter(stats.retried_lost_session)),
        ("p11kms_hsm_inline_jobs",
            "HSM jobs the request's own thread ran on an inline session (hsm.dispatch = \"inline\") instead of queueing them for a worker",
            Counter(stats.inline_jobs)),
        ("p11kms_hsm_degraded",
            "1 while a worker abandoned in a stuck PKCS#11 call has not returned (the device is degraded), else 0",
            Gauge(i64::from(stats.stuck_workers > 0))),
        ("p11kms_hsm_stuck_workers",
            "HSM workers abandoned in a stuck PKCS#11 call whose call has not returned yet",
            Gauge(stats.stuck_workers as i64)),
        ("p11kms_hsm_workers_replaced",
            "HSM workers abandoned past hsm.stall_limit_ms and replaced by a new worker with a new session",
            Counter(stats.workers_replaced)),
        ("p11kms_hsm_sessions", "HSM worker sessions", Gauge(stats.workers as i64)),
        ("p11kms_hsm_session_key_copies",
            "Key objects served from session-object copies of their token objects now",
            Gauge(stats.session_key_copies as i64)),
        ("p11kms_hsm_wrapped_cache_keys",
            "Wrapped residency: unwrapped key versions the HSM workers hold as session objects now",
            Gauge(stats.wrapped_cache_resident as i64)),
        ("p11kms_hsm_wrapped_cache_hits",
            "Wrapped residency: uses of a key version its worker had unwrapped already",
            Counter(stats.wrapped_cache_hits)),
        ("p11kms_hsm_wrapped_cache_misses",
            "Wrapped residency: uses that unwrapped the key version's blob on the device first",
            Counter(stats.wrapped_cache_misses)),
        ("p11kms_hsm_wrapped_cache_evictions",
            "Wrapped residency: unwrapped key versions destroyed to make room (LRU)",
            Counter(stats.wrapped_cache_evictions)),
    ];
    for (name, help, value) in rows {
        match value {
            Gauge(v) => gauge(encoder, name, help, v)?,
            Counter(v) => counter(encoder, name, help, v)?,
        }
    }
    Ok(())
}

/// `p11kms_hsm_rejections`: requests the session pool refused, by reason.
fn encode_hsm_rejections(encoder: &mut DescriptorEncoder, stats: &HsmStats) -> std::fmt::Result {
    let rows = [
        ("busy".to_string(), stats.rejected_busy),
        ("timeout".to_string(), stats.rejected_timeout),
    ];
    let help =
        "Requests refused by the HSM session pool (busy: queue full; timeout: waited too long)";
    labelled_counter(encoder, "p11kms_hsm_rejections", help, "reason", rows)
}

/// `p11kms_policy_decisions`: authorization decisions, by effect and reason.
fn encode_decisions(encoder: &mut DescriptorEncoder, kms: &Kms) -> std::fmt::Result {
    let (allow, explicit, implicit) = kms.decision_counts().snapshot();
    let mut m = encoder.encode_descriptor(
        "p11kms_policy_decisions",
        "Authorization decisions, by effect and reason",
        None,
        MetricType::Counter,
    )?;
    for (effect, reason, n) in [
        ("Allow", "Allowed", allow),
        ("Deny", "ExplicitDeny", explicit),
        ("Deny", "ImplicitDeny", implicit),
    ] {
        let labels = DecisionLabels {
            effect: effect.to_string(),
            reason: reason.to_string(),
        };
        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

struct SourceCollector(Box<dyn ScrapeSource>);

impl std::fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(&mut encoder)
    }
}

impl Metrics {
    /// The registry with the request families and the engine's scrape-time figures.
    pub fn new(kms: Arc<Kms>, extra: Vec<Box<dyn ScrapeSource>>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OperationLabels, Histogram>::new_with_constructor(
            request_histogram as fn() -> Histogram,
        );
        registry.register(
            "p11kms_requests",
            "Requests served, by door, operation and outcome (Success or the AWS exception name)",
            requests.clone(),
        );
        registry.register(
            "p11kms_request_duration_seconds",
            "Request latency inside the daemon, by door and operation",
            latency.clone(),
        );
        let xks = Family::<XksLabels, Counter>::default();
        registry.register(
            "p11kms_xks_key_store_requests",
            "XKS door requests, by logical key store (URI path prefix), operation and outcome (Success or the XKS error name)",
            xks.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { kms: kms.clone() }));
        for source in extra {
            registry.register_collector(Box::new(SourceCollector(source)));
        }
        Metrics {
            registry,
            requests,
            latency,
            xks,
            ring: Arc::new(RequestRing::default()),
            kms,
        }
    }

    /// The ring of the last minutes' requests (GetHealth reads it through
    /// [`HealthProbe`]).
    pub fn request_ring(&self) -> Arc<RequestRing> {
        self.ring.clone()
    }

    /// Records one request (and counts it in the [`RequestRing`]). `outcome` is `Success` or
    /// the AWS exception name; pass it borrowed when it is `'static` (the request path), so
    /// that nothing is allocated.
    pub fn request(
        &self,
        door: &'static str,
        operation: &'static str,
        outcome: Cow<'static, str>,
        latency: Duration,
    ) {
        let error = outcome != "Success";
        self.ring.record(self.kms.now_ms(), error, latency);
        self.requests
            .get_or_create(&RequestLabels {
                door: Cow::Borrowed(door),
                operation: Cow::Borrowed(operation),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabels {
                door: Cow::Borrowed(door),
                operation: Cow::Borrowed(operation),
            })
            .observe(latency.as_secs_f64());
    }

    /// Records one XKS door request of the key store at `prefix`.
    pub fn xks_request(&self, prefix: &str, operation: &'static str, outcome: &'static str) {
        self.xks
            .get_or_create(&XksLabels {
                key_store: prefix.to_string(),
                operation: Cow::Borrowed(operation),
                outcome: Cow::Borrowed(outcome),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `p11kms_node_info{node="<id>"} 1` when `[node] id` is set: the node's identity as one
/// info metric rather than a `node` label on every series. Prometheus attaches the target's
/// labels (`instance`, and any the scrape config adds) to every series it scrapes, so each
/// node's series are told apart already; joining on this gauge
/// (`... * on(instance) group_left(node) p11kms_node_info`) names them by node id
/// (`docs/operations.md`, "Several nodes").
pub struct NodeInfo(pub String);

impl ScrapeSource for NodeInfo {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "This node's id ([node] id), as a label; always 1";
        labelled_gauge(
            encoder,
            "p11kms_node_info",
            help,
            [(vec![("node", self.0.clone())], 1)],
        )
    }
}

/// How refused requests are audited and the trail's free space (`docs/audit.md`, "Refused
/// requests").
pub struct RefusalSource(pub Arc<crate::audit::RefusalAuditor>);

impl ScrapeSource for RefusalSource {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let gauges = [
            (
                "p11kms_audit_free_bytes",
                "Free bytes on the audit trail's file system (last check)",
                i64::try_from(s.free_bytes).unwrap_or(i64::MAX),
            ),
            (
                "p11kms_audit_space_state",
                "Audit trail free space: 0 ok, 1 below warn_free_bytes, 2 below min_free_bytes (refused requests shed)",
                i64::from(s.space_state),
            ),
            (
                "p11kms_audit_refused_keys",
                "Refused-request groups (door, source, operation, error) being aggregated",
                i64::try_from(s.keys).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, v) in gauges {
            gauge(encoder, name, help, v)?;
        }
        let counters = [
            (
                "p11kms_audit_refused_aggregated",
                "Refused requests counted in aggregate records instead of one record each",
                s.aggregated,
            ),
            (
                "p11kms_audit_refused_shed",
                "Refused requests not audited because the trail's free space was below min_free_bytes",
                s.shed,
            ),
        ];
        for (name, help, v) in counters {
            counter(encoder, name, help, v)?;
        }
        Ok(())
    }
}

/// The audit writer's figures: queue depth, fsync latency, records, errors, health.
pub struct AuditSource(pub Arc<crate::audit::AuditLog>);

impl ScrapeSource for AuditSource {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::audit::FSYNC_BUCKETS_SECONDS;
        let s = self.0.stats();
        gauge(
            encoder,
            "p11kms_audit_queue_depth",
            "Audit events waiting to be written",
            s.queue_depth as i64,
        )?;
        gauge(
            encoder,
            "p11kms_audit_healthy",
            "1 while the audit trail is writable",
            i64::from(s.healthy),
        )?;
        counter(
            encoder,
            "p11kms_audit_events",
            "Audit events written",
            s.events_written,
        )?;
        counter(
            encoder,
            "p11kms_audit_checkpoints",
            "Signed checkpoints written",
            s.checkpoints_written,
        )?;
        counter(
            encoder,
            "p11kms_audit_write_errors",
            "Audit write failures",
            s.write_errors,
        )?;
        counter(
            encoder,
            "p11kms_audit_checkpoint_errors",
            "Checkpoint signing failures",
            s.checkpoint_errors,
        )?;
        counter(
            encoder,
            "p11kms_audit_rejected",
            "Events refused (queue full or trail unavailable)",
            s.rejected,
        )?;
        // The writer's buckets are cumulative; the encoder wants per-bucket counts.
        let mut prev = 0u64;
        let buckets: Vec<(f64, u64)> = FSYNC_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(s.fsync_buckets.iter().copied())
            .map(|(le, cum)| {
                let n = cum.saturating_sub(prev);
                prev = cum;
                (le, n)
            })
            .collect();
        let snap = HistogramSnapshot {
            sum_secs: s.fsync_seconds_sum,
            count: s.fsyncs,
            buckets,
        };
        encode_histogram(
            encoder,
            "p11kms_audit_fsync_duration_seconds",
            "Audit fsync latency (one fsync per group-committed batch)",
            &[(None, snap)],
        )
    }
}
