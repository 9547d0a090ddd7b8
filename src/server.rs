//! Wiring: config -> HSM, store, engine, doors. [`start`] returns a handle so integration tests
//! can run the real daemon in-process on `127.0.0.1:0`; [`run`] serves until a shutdown future
//! resolves.
//!
//! The HTTP doors are started from the registry ([`crate::api::HTTP_DOORS`]), not one by one.
//! Shutdown is one cancellation signal shared by the doors (gRPC and HTTP) and the background
//! tasks: they stop accepting or stop between rounds, and each door drains within
//! [`DRAIN_TIMEOUT`], after which its connections still open are closed. No task is aborted.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::api::gate::Gate;
use crate::api::grpc::capture::CaptureSigned;
use crate::api::grpc::Door;
use crate::api::http::{DoorDeps, DoorStartError, RunningDoor, DRAIN_TIMEOUT};
use crate::api::listener::{tls_incoming, Limits, Registry, TrackedLayer};
use crate::audit::{export_public_key, AuditLog, CheckpointSigner, HsmCheckpointSigner};
use crate::config::{Config, ConfigError};
use crate::core::connections::{Cluster, ClusterSetup, XksClientSetup};
use crate::core::keystores::ConnectionState;
use crate::core::{Clock, Kms, KmsError, KmsSettings, SystemClock};
use crate::hsm::{Hsm, HsmError};
use crate::identity::auth::Authenticator;
use crate::identity::directory::IdentityError;
use crate::identity::{CertBinding, DirectoryHandle, SessionStore};
use crate::metrics::Metrics;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::key_management_service_server::KeyManagementServiceServer;
use crate::pb::region_service_server::RegionServiceServer;
use crate::pb::security_token_service_server::SecurityTokenServiceServer;
use crate::store::StoreError;

/// Largest gRPC message the daemon decodes. The largest legitimate request (a 32 KB key policy
/// or a 6 KB ciphertext with a full encryption context) is far below it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The module could not be initialised or the token was not found: the message names the
    /// module, the token label, the SoftHSM2 config in effect and the command that fixes it.
    #[error("HSM: {source}\n{hint}")]
    HsmOpen { source: HsmError, hint: String },
    /// A listener could not bind its address.
    #[error("cannot listen on {addr} for the {listener}: {source}")]
    Bind {
        listener: Listener,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("identity directory: {0}")]
    Identity(#[from] IdentityError),
    #[error("audit trail: {0}")]
    Audit(String),
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("engine: {0}")]
    Kms(#[from] KmsError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An HTTP door could not start (its TLS files, plain HTTP off loopback, or its bind).
    #[error(transparent)]
    HttpDoor(#[from] DoorStartError),
}

/// The daemon's listeners outside the HTTP door registry, named in bind errors (an HTTP
/// door names its own: [`crate::api::http::HttpBinding::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `[server] listen`.
    Grpc,
    /// `[metrics] listen`.
    Metrics,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Grpc => "gRPC door ([server] listen)",
            Listener::Metrics => "metrics endpoint ([metrics] listen)",
        })
    }
}

/// Binds `addr` for `listener`; the error names both.
pub async fn bind(
    listener: Listener,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            listener,
            addr,
            source,
        })
}

/// Options that tests (and embedders) may set; production uses the defaults.
#[derive(Clone)]
pub struct ServerOptions {
    /// The engine's clock.
    pub clock: Arc<dyn Clock>,
    /// Overrides `kms.deletion_sweep_interval_secs`.
    pub sweep_interval: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            clock: Arc::new(SystemClock),
            sweep_interval: None,
        }
    }
}

/// A running daemon.
pub struct RunningServer {
    /// The address the gRPC door listens on.
    pub addr: SocketAddr,
    /// The engine (tests read HSM counters and set hooks through it).
    pub kms: Arc<Kms>,
    /// The shutdown signal of the doors and the background tasks.
    cancel: CancellationToken,
    grpc: GrpcServer,
    /// The HTTP doors the config enables ([`crate::api::HTTP_DOORS`]).
    http_doors: Vec<RunningDoor>,
    /// The sweeper, the usage flusher, the SIGHUP reloader and the health probe.
    background: Vec<(&'static str, JoinHandle<()>)>,
    /// Aggregates refused requests and watches the trail's free space.
    refusals: Arc<crate::audit::RefusalAuditor>,
    refusals_task: JoinHandle<()>,
    /// Where the metrics endpoint listens, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    metrics: Option<MetricsServer>,
    auth: Arc<Authenticator>,
    directory_files: crate::identity::DirectoryFiles,
    allow_group_readable_secrets: bool,
    /// Where the AWS door (`[aws_json]`) listens, when enabled.
    pub aws_json_addr: Option<SocketAddr>,
    /// The audit trail (tests read its health and files).
    pub audit: Arc<AuditLog>,
}

impl RunningServer {
    /// Stops accepting requests, drains (each door within [`DRAIN_TIMEOUT`]), and stops the
    /// HSM workers.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.cancel.cancel();
        let served = self.grpc.drained().await;
        self.stop_background().await;
        served
    }

    /// Reloads the identity directory from its files, as SIGHUP does. On error the old
    /// directory stays in force.
    pub fn reload_identity(&self) -> Result<(), IdentityError> {
        reload(
            &self.kms,
            &self.auth,
            &self.directory_files,
            self.allow_group_readable_secrets,
        )
    }

    /// Waits until the server stops by itself (it does so only on error).
    pub async fn wait(mut self) -> Result<(), ServerError> {
        let served = self.grpc.stopped().await;
        self.stop_background().await;
        served
    }

    /// Where the HTTP door `name` ([`crate::api::http::HttpDoor::NAME`]) listens, when
    /// enabled.
    pub fn http_door_addr(&self, name: &str) -> Option<SocketAddr> {
        self.http_doors
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.addr)
    }

    /// Cancels the shutdown signal (once more: it may have stopped by itself), waits for the
    /// doors and the background tasks, then closes what they used, trail before HSM.
    async fn stop_background(&mut self) {
        self.cancel.cancel();
        for door in self.http_doors.drain(..) {
            door.drained().await;
        }
        join_background(std::mem::take(&mut self.background)).await;
        // Key last usage is kept in memory between flushes: store it before stopping.
        if let Err(e) = self.kms.flush_key_usage().await {
            tracing::error!(error = %e, "could not store key last usage at shutdown");
        }
        // No request arrives any more: write the pending aggregates of refused requests.
        self.refusals.stop();
        let _ = (&mut self.refusals_task).await;
        self.refusals.flush().await;
        if let Some(m) = self.metrics.take() {
            m.stop().await;
        }
        // The final checkpoint needs the HSM: close the trail before the HSM layer.
        if let Err(e) = self.audit.shutdown().await {
            tracing::error!(error = %e, "closing the audit trail failed");
        }
        let stores = self.kms.key_stores().clone();
        if let Err(e) = tokio::task::spawn_blocking(move || stores.shutdown()).await {
            tracing::error!(error = %e, "closing the custom key stores failed");
        }
        close_hsm(self.kms.hsm()).await;
    }
}

/// How often the custom key store watch probes connected stores and retries failed ones.
const STORE_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Waits for the background tasks to see the shutdown signal (each finishes the round it is
/// in), within [`DRAIN_TIMEOUT`] for all of them; one still busy then is left to end on its
/// own and logged.
async fn join_background(tasks: Vec<(&'static str, JoinHandle<()>)>) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    for (name, task) in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(task = name, error = %e, "background task failed"),
            Err(_) => tracing::warn!(task = name, "background task still busy at shutdown"),
        }
    }
}

/// The gRPC door's server task and the registry of its connections.
struct GrpcServer {
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    connections: Arc<Registry>,
}

impl GrpcServer {
    /// Waits until tonic's server ends (on error, or once drained after the signal).
    async fn stopped(&mut self) -> Result<(), ServerError> {
        join_result((&mut self.serve).await)
    }

    /// After the shutdown signal: waits for the connections to finish their requests, and
    /// after [`DRAIN_TIMEOUT`] closes the ones still open.
    async fn drained(&mut self) -> Result<(), ServerError> {
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.serve).await {
            Ok(served) => join_result(served),
            Err(_) => {
                tracing::debug!("gRPC drain deadline reached: closing the connections still open");
                self.connections.close_all();
                self.stopped().await
            }
        }
    }
}

fn join_result(
    served: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match served {
        Ok(r) => r.map_err(ServerError::from),
        Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
    }
}

/// The metrics endpoint: its own stop signal, cancelled last (it is scraped while the doors
/// drain).
struct MetricsServer {
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Stops the HSM workers and closes the keeper session on a blocking thread: joining the
/// workers waits for the PKCS#11 calls in flight, which must not stall an async thread.
pub async fn close_hsm(hsm: &Arc<Hsm>) {
    let hsm = hsm.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || hsm.shutdown()).await {
        tracing::error!(error = %e, "closing the HSM failed");
    }
}

/// Opens the audit trail: the HSM-resident checkpoint key (created at first start), its
/// public key exported to the data directory, and the writer. Returns the writer and the
/// public key (DER), which VerifyAuditTrail verifies checkpoints with.
async fn open_audit(
    config: &Config,
    kms: &Arc<Kms>,
) -> Result<(Arc<AuditLog>, Vec<u8>), ServerError> {
    let signer = HsmCheckpointSigner::new(kms.hsm().clone(), crate::audit::AUDIT_KEY_LABEL).await?;
    std::fs::create_dir_all(&config.store.data_dir)?;
    export_public_key(&config.store.data_dir, signer.public_key_spki_der())
        .map_err(|e| ServerError::Audit(e.to_string()))?;
    let public_key = signer.public_key_spki_der().to_vec();
    let log = AuditLog::open(config.audit_config(), Some(Arc::new(signer)))
        .await
        .map_err(|e| ServerError::Audit(e.to_string()))?;
    Ok((Arc::new(log), public_key))
}

/// Wires the admin operations' view of this node: its audit trail (directory, node id,
/// checkpoint key) and the live figures GetHealth reads (the writer's health, the request
/// ring every door's requests are counted in).
fn wire_admin(
    config: &Config,
    kms: &Kms,
    audit: &Arc<AuditLog>,
    public_key: Vec<u8>,
    metrics: &Metrics,
) {
    kms.set_admin_wiring(crate::core::admin::AdminWiring {
        audit_dir: audit.dir().to_path_buf(),
        node: config.node.id.clone(),
        audit_public_key: public_key,
        probe: Arc::new(crate::metrics::HealthProbe {
            audit: audit.clone(),
            ring: metrics.request_ring(),
        }),
    });
}

/// Keeps the gRPC health service in step with the HSM and the audit trail: SERVING while a
/// session answers and the trail is writable, NOT_SERVING otherwise. Stops on `cancel`.
fn spawn_health(
    kms: Arc<Kms>,
    audit: Arc<AuditLog>,
    health: tonic_health::server::HealthReporter,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut stores = BTreeMap::new();
        loop {
            report_store_health(&health, &kms, &mut stores).await;
            let audit_ok = audit.healthy();
            let ok = audit_ok
                && tokio::select! {
                    _ = cancel.cancelled() => return,
                    ping = kms.hsm().ping() => ping.is_ok(),
                };
            if last != Some(ok) {
                report_health(&health, ok, audit_ok, last.is_some()).await;
                last = Some(ok);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    })
}

/// The health service name of a custom key store: SERVING while it is CONNECTED. A store
/// that is not connected never makes the daemon's own services NOT_SERVING.
pub fn key_store_health_service(store_id: &str) -> String {
    format!("p11kms.v1.CustomKeyStore/{store_id}")
}

/// Sets each custom key store's health status when it changed since `last` (and clears the
/// status of deleted stores).
async fn report_store_health(
    health: &tonic_health::server::HealthReporter,
    kms: &Kms,
    last: &mut BTreeMap<String, bool>,
) {
    let now: BTreeMap<String, bool> = kms
        .key_stores()
        .states()
        .into_iter()
        .map(|(id, state)| (id, state == ConnectionState::Connected))
        .collect();
    for (id, &connected) in &now {
        if last.get(id) != Some(&connected) {
            let status = if connected {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health
                .set_service_status(key_store_health_service(id), status)
                .await;
        }
    }
    for id in last.keys().filter(|id| !now.contains_key(*id)) {
        let mut health = health.clone();
        health
            .clear_service_status(&key_store_health_service(id))
            .await;
    }
    *last = now;
}

/// Sets every service's health status and logs the change.
async fn report_health(
    health: &tonic_health::server::HealthReporter,
    ok: bool,
    audit_ok: bool,
    was_known: bool,
) {
    let services = [
        "",
        "p11kms.v1.KeyManagementService",
        "p11kms.v1.SecurityTokenService",
        "p11kms.v1.AdminService",
        "p11kms.v1.RegionService",
    ];
    let status = if ok {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for s in services {
        health.set_service_status(s, status).await;
    }
    if !ok {
        tracing::error!(
            audit_writable = audit_ok,
            "health: NOT_SERVING (the HSM does not answer or the audit trail cannot be written)"
        );
    } else if was_known {
        tracing::info!("health: SERVING again");
    }
}

/// How often the health task probes the HSM (and, with the audit trail, its writer).
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

fn reload(
    kms: &Kms,
    auth: &Authenticator,
    files: &crate::identity::DirectoryFiles,
    allow_group_readable_secrets: bool,
) -> Result<(), IdentityError> {
    if let Some(path) = &files.credentials {
        let checked = crate::config::check_secret_file(
            "identity.credentials",
            path,
            allow_group_readable_secrets,
        );
        if let Err(e) = checked {
            tracing::error!(error = %e, "identity directory reload refused; keeping the previous directory");
            return Err(IdentityError::Invalid(e.to_string()));
        }
    }
    kms.directory().reload(files)?;
    auth.refresh_certificates();
    tracing::info!("identity directory reloaded");
    Ok(())
}

/// Reloads the identity directory on every SIGHUP, until `cancel`.
fn spawn_reloader(
    kms: Arc<Kms>,
    auth: Arc<Authenticator>,
    files: crate::identity::DirectoryFiles,
    allow_group_readable_secrets: bool,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; identity reload by signal is off");
            return;
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            // Errors are logged by the directory, which keeps the old one in force.
            let _ = reload(&kms, &auth, &files, allow_group_readable_secrets);
        }
    })
}

/// Runs `work` every `interval` (the first round at once, or after one interval when
/// `first_now` is false) until `cancel`; a round in progress finishes first.
fn spawn_periodic<F, Fut>(
    interval: Duration,
    first_now: bool,
    cancel: CancellationToken,
    mut work: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !first_now {
            tick.tick().await;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            work().await;
        }
    })
}

/// Opens the HSM named by the config (on a blocking thread: it loads and logs into a PKCS#11
/// module).
pub async fn open_hsm(config: &Config) -> Result<Arc<Hsm>, ServerError> {
    let hsm_cfg = config.hsm_config()?;
    tokio::task::spawn_blocking(move || Hsm::open(&hsm_cfg))
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?
        .map_err(|e| hsm_open_error(config, e))
}

/// Turns a failure to load the module or find the token into an error that says what is
/// missing and how to fix it; other HSM errors pass through.
fn hsm_open_error(config: &Config, e: HsmError) -> ServerError {
    let opening = matches!(
        e.function,
        "C_Initialize" | "C_GetFunctionList" | "C_GetSlotList" | "C_GetTokenInfo"
    );
    if !opening {
        return ServerError::Hsm(e);
    }
    let h = &config.hsm;
    let mut hint = format!(
        "  module: {}\n  token label: '{}'\n",
        h.module.display(),
        h.token_label
    );
    let softhsm = h.softhsm2_conf.is_some()
        || h.module
            .to_string_lossy()
            .to_lowercase()
            .contains("softhsm");
    if !softhsm {
        hint.push_str("  fix: check the module path, and that the device has an initialised token with this label (the vendor's tool lists them)");
        return ServerError::HsmOpen { source: e, hint };
    }
    let env = std::env::var_os("SOFTHSM2_CONF").map(std::path::PathBuf::from);
    let conf = env.clone().or_else(|| h.softhsm2_conf.clone());
    let origin = match (&env, &h.softhsm2_conf) {
        (Some(v), Some(c)) if v != c => "from the environment, which overrides [hsm] softhsm2_conf",
        (Some(_), None) => "from the environment",
        (None, None) => "not set: SoftHSM2 uses its system default",
        _ => "[hsm] softhsm2_conf",
    };
    let conf_text = conf
        .as_deref()
        .map_or("(none)".into(), |c| c.display().to_string());
    let tokendir = conf
        .as_deref()
        .and_then(softhsm_tokendir)
        .unwrap_or_else(|| {
            "(unknown: the SoftHSM2 config is missing, unreadable or names none)".into()
        });
    let data_dir = conf
        .as_deref()
        .filter(|c| c.ends_with("softhsm/softhsm2.conf"))
        .and_then(|c| c.parent()?.parent())
        .map_or("<data dir>".into(), |d| d.display().to_string());
    hint.push_str(&format!(
        "  SOFTHSM2_CONF: {conf_text} ({origin})\n  token directory: {tokendir}\n  \
         fix: the SoftHSM2 config or the token is missing. For a dev set-up run \
         `p11kms dev-setup --data-dir {data_dir}` (it writes the SoftHSM2 config and initialises \
         the token); otherwise create the token with \
         `SOFTHSM2_CONF={conf_text} softhsm2-util --init-token --free --label {} --so-pin <SO PIN> --pin <the PIN of [hsm] pin_file>`",
        h.token_label
    ));
    ServerError::HsmOpen { source: e, hint }
}

/// The `directories.tokendir` a SoftHSM2 config names, if it can be read.
fn softhsm_tokendir(conf: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(conf).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "directories.tokendir").then(|| v.trim().to_string())
    })
}

/// Opens the identity directory, the HSM and the store, and builds the engine.
pub async fn open_engine(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<Kms>, ServerError> {
    config.check_secret_files()?;
    let files = config.directory_files();
    let directory = tokio::task::spawn_blocking(move || DirectoryHandle::load(&files))
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))??;
    let hsm = open_hsm(config).await?;
    let store = crate::store::open(&config.store).await?;
    let kms = Kms::open(
        KmsSettings {
            partition: config.kms.partition.clone(),
            region: config.kms.region.clone(),
            creating_grace_ms: i64::try_from(config.kms.creating_grace_secs)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            xks_health_cache_ms: config.xks.health_cache_ms,
            residency: config.hsm.residency,
        },
        store,
        hsm,
        Arc::new(directory),
        Arc::new(SessionStore::new()),
        clock,
    )
    .await?;
    kms.key_stores().configure(cluster_setup(config)?);
    Ok(kms)
}

/// The `[[hsm.cluster]]` devices custom key stores can be made on, with the worker-pool
/// settings of `[hsm]` for each store's device.
fn cluster_setup(config: &Config) -> Result<ClusterSetup, ServerError> {
    let clusters = config
        .hsm
        .cluster
        .iter()
        .map(|c| {
            Ok(Cluster {
                id: c.id.clone(),
                module: c.module.clone(),
                token_label: c.token_label.clone(),
                trust_anchor: c.trust_anchor()?,
                residency: c.residency,
            })
        })
        .collect::<Result<Vec<_>, crate::config::ConfigError>>()?;
    Ok(ClusterSetup {
        clusters,
        pool: config.hsm_config()?,
        xks: xks_client_setup(config)?,
    })
}

/// `[xks_client]`: the CA certificates proxies of external key stores are checked against,
/// and the region their requests are signed for.
fn xks_client_setup(config: &Config) -> Result<XksClientSetup, ServerError> {
    let pem = match &config.xks_client.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            ServerError::Tls(format!("xks_client.ca_file {}: {e}", path.display()))
        })?),
        None => None,
    };
    let tls = crate::xks_client::tls_config(pem.as_deref()).map_err(ServerError::Tls)?;
    Ok(XksClientSetup {
        tls,
        region: config.kms.region.clone(),
    })
}

/// The gRPC door's TLS: HTTP/2 by ALPN, and client certificates verified against the CA when
/// presented; a request without one is answered UNAUTHENTICATED by the door (other
/// authentication methods share the port).
fn grpc_tls_acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let s = &config.server;
    crate::api::listener::tls_acceptor(&s.tls_cert, &s.tls_key, Some(&s.client_ca), &[b"h2"])
        .map_err(ServerError::Tls)
}

/// Starts the daemon and returns once it is listening: the engine, the audit trail, the
/// doors (the gRPC door, then the HTTP doors of [`crate::api::HTTP_DOORS`] the config
/// enables), the background tasks and the metrics endpoint.
pub async fn start(config: &Config, options: ServerOptions) -> Result<RunningServer, ServerError> {
    let bindings = config.certificate_bindings()?;
    let tls = grpc_tls_acceptor(config)?;
    let kms = open_engine(config, options.clock.clone()).await?;
    check_bindings(&kms, &bindings).await?;
    let auth = Arc::new(Authenticator::new(
        kms.directory().clone(),
        kms.sessions().clone(),
        bindings,
        &config.kms.region,
    ));
    kms.start_usage_tracking().await?;
    let listener = bind(Listener::Grpc, config.server.listen).await?;
    let addr = listener.local_addr()?;
    let (audit, audit_public_key) = open_audit(config, &kms).await?;
    let refusals = Arc::new(crate::audit::RefusalAuditor::new(
        audit.clone(),
        config.refusal_config(),
    ));
    let mut sources: Vec<Box<dyn crate::metrics::ScrapeSource>> = vec![
        Box::new(crate::metrics::AuditSource(audit.clone())),
        Box::new(crate::metrics::RefusalSource(refusals.clone())),
    ];
    if let Some(node) = &config.node.id {
        sources.push(Box::new(crate::metrics::NodeInfo(node.clone())));
    }
    let metrics = Arc::new(Metrics::new(kms.clone(), sources));
    wire_admin(config, &kms, &audit, audit_public_key, &metrics);
    kms.set_service_sink(Arc::new(crate::audit::ServiceAuditSink::new(
        audit.clone(),
        config.kms.region.clone(),
    )));
    if let Some(link) = crate::region_link::GrpcRegionLink::from_config(&config.region) {
        kms.set_region_link(Arc::new(link));
    }
    // Every store that was connected when the daemon stopped connects again by itself.
    kms.resume_key_stores();
    let refusals_task = refusals.spawn();
    let gate = Gate::new(
        kms.clone(),
        metrics.clone(),
        audit.clone(),
        refusals.clone(),
    );
    let deps = DoorDeps { auth, gate };
    let cancel = CancellationToken::new();
    // Until start-up succeeds, an early return stops what was started.
    let started = cancel.clone().drop_guard();
    // Every port is bound before any door accepts: a flood of connections arriving at a door
    // the moment it opens must not take the descriptor a later bind needs.
    let metrics_listener = bind_metrics(config).await?;
    let http_doors = start_http_doors(config, &deps, &cancel).await?;
    let (health, grpc) = start_grpc(config, &deps, listener, tls, cancel.clone())?;
    let background = spawn_background(config, &options, &kms, &deps.auth, &audit, health, &cancel);
    let (metrics_addr, metrics) = start_metrics(metrics, metrics_listener)?;
    started.disarm();
    tracing::info!(%addr, token = kms.hsm().token_label(), keys = kms.key_count(), "p11kms serving gRPC over TLS");
    Ok(RunningServer {
        addr,
        kms,
        cancel,
        grpc,
        aws_json_addr: http_doors
            .iter()
            .find(|d| d.name == crate::api::aws_json::DOOR)
            .map(|d| d.addr),
        http_doors,
        background,
        refusals,
        refusals_task,
        metrics_addr,
        metrics,
        auth: deps.auth,
        directory_files: config.directory_files(),
        allow_group_readable_secrets: config.server.allow_group_readable_secrets,
        audit,
    })
}

/// Refuses a certificate binding to a principal the directory does not know (closing the
/// HSM, which is open by then).
async fn check_bindings(kms: &Arc<Kms>, bindings: &[CertBinding]) -> Result<(), ServerError> {
    let dir = kms.directory().current();
    let Some(b) = bindings
        .iter()
        .find(|b| dir.principal(&b.principal_arn).is_none())
    else {
        return Ok(());
    };
    close_hsm(kms.hsm()).await;
    Err(ServerError::Config(ConfigError::Invalid(format!(
        "identity.certificate binds to {}, which is not in the identity directory",
        b.principal_arn
    ))))
}

/// Compares the store with the token; drift is logged, never repaired here. It runs beside
/// the doors, not before them: it reads the whole store a second time after the cache load
/// (more than half of the start-up time with a million keys), and it only ever warns.
async fn reconcile_at_start(kms: &Kms) {
    match kms.reconcile().await {
        Ok(report) if !report.is_clean() => tracing::warn!(
            interrupted = report.interrupted.len(),
            missing = report.missing_objects.len(),
            orphans = report.orphan_objects.len(),
            "store and token disagree; run `p11kms check` for details (nothing was deleted)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not reconcile store and token at start-up"),
    }
}

/// Starts every HTTP door of the registry that the config enables, in registry order.
async fn start_http_doors(
    config: &Config,
    deps: &DoorDeps,
    cancel: &CancellationToken,
) -> Result<Vec<RunningDoor>, ServerError> {
    let mut running = Vec::new();
    for entry in crate::api::HTTP_DOORS {
        if let Some(door) = (entry.start)(config, deps, cancel.clone()).await? {
            running.push(door);
        }
    }
    Ok(running)
}

/// The gRPC door: tonic's server over the shared listener's connections (TLS, caps,
/// deadlines), stopping on `cancel`. Returns the health reporter the health task drives.
fn start_grpc(
    config: &Config,
    deps: &DoorDeps,
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    cancel: CancellationToken,
) -> Result<(tonic_health::server::HealthReporter, GrpcServer), ServerError> {
    let door = Door::new(deps.auth.clone(), deps.gate.clone());
    let (health, health_service) =
        crate::api::grpc::health::node_health_reporter(config.node.id.as_deref());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
    let body_limit = MAX_MESSAGE_BYTES + 5;
    let kms_service = CaptureSigned::new(
        KeyManagementServiceServer::new(door.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        body_limit,
    );
    let sts_service = CaptureSigned::new(
        SecurityTokenServiceServer::new(door.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        body_limit,
    );
    let admin_service = CaptureSigned::new(
        AdminServiceServer::new(door.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        body_limit,
    );
    let region_service = CaptureSigned::new(
        RegionServiceServer::new(door).max_decoding_message_size(MAX_MESSAGE_BYTES),
        body_limit,
    );
    let limits = Limits::from_config(&config.server);
    let connections = Registry::new(crate::api::grpc::DOOR, limits);
    let router = Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .layer(TrackedLayer::new(connections.clone()))
        .add_service(kms_service)
        .add_service(sts_service)
        .add_service(admin_service)
        .add_service(region_service)
        .add_service(health_service)
        .add_service(reflection);
    // TLS, the connection caps and deadlines are the shared listener's (which also sets
    // NODELAY: without it, Nagle holds small responses for ~40 ms, docs/benchmarks.md).
    let incoming = tls_incoming(listener, tls, connections.clone(), cancel.clone());
    let serve =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, cancel.cancelled_owned()));
    Ok((health, GrpcServer { serve, connections }))
}

/// The background tasks, each stopping on `cancel`: the deletion sweeper, the key usage
/// flusher, the health probe and the SIGHUP reloader.
fn spawn_background(
    config: &Config,
    options: &ServerOptions,
    kms: &Arc<Kms>,
    auth: &Arc<Authenticator>,
    audit: &Arc<AuditLog>,
    health: tonic_health::server::HealthReporter,
    cancel: &CancellationToken,
) -> Vec<(&'static str, JoinHandle<()>)> {
    let sweep_every = options
        .sweep_interval
        .unwrap_or(Duration::from_secs(config.kms.deletion_sweep_interval_secs));
    // The sweeps run on the one node holding the store's lead (core::lead).
    let k = kms.clone();
    let lead = Arc::new(tokio::sync::Mutex::new(crate::core::lead::Lead::default()));
    let sweeper = spawn_periodic(sweep_every, true, cancel.clone(), move || {
        let (k, lead) = (k.clone(), lead.clone());
        async move {
            k.lead_once(&mut *lead.lock().await).await;
        }
    });
    let flush_every = Duration::from_secs(config.kms.key_usage_flush_interval_secs);
    let k = kms.clone();
    let usage_flusher = spawn_periodic(flush_every, false, cancel.clone(), move || {
        let k = k.clone();
        async move {
            if let Err(e) = k.flush_key_usage().await {
                tracing::error!(error = %e, "could not store key last usage; will retry");
            }
        }
    });
    let stores = kms.key_stores().clone();
    let store_watch = spawn_periodic(STORE_WATCH_INTERVAL, false, cancel.clone(), move || {
        let stores = stores.clone();
        async move { stores.watch_once().await }
    });
    let health = spawn_health(kms.clone(), audit.clone(), health, cancel.clone());
    let reloader = spawn_reloader(
        kms.clone(),
        auth.clone(),
        config.directory_files(),
        config.server.allow_group_readable_secrets,
        cancel.clone(),
    );
    let (k, c) = (kms.clone(), cancel.clone());
    let reconcile = tokio::spawn(async move {
        tokio::select! {
            _ = c.cancelled() => {}
            _ = reconcile_at_start(&k) => {}
        }
    });
    let mut tasks = vec![
        ("start-up reconciliation", reconcile),
        ("deletion sweeper", sweeper),
        ("key usage flusher", usage_flusher),
        ("custom key store watch", store_watch),
        ("health probe", health),
        ("identity reloader", reloader),
    ];
    // Several nodes share the store (PostgreSQL): follow their changes.
    if kms.store().subscribe_changes().is_some() {
        let follower = crate::core::follow::Follower::from(kms.loaded_at_seq());
        let interval = Duration::from_millis(config.store.follow_interval_ms);
        let task = tokio::spawn(kms.clone().follow(follower, interval, cancel.clone()));
        tasks.push(("change follower", task));
    }
    tasks
}

/// Binds the metrics endpoint's port, when `[metrics]` enables it (served by [`start_metrics`]).
async fn bind_metrics(config: &Config) -> Result<Option<tokio::net::TcpListener>, ServerError> {
    if !config.metrics.enabled {
        return Ok(None);
    }
    Ok(Some(bind(Listener::Metrics, config.metrics.listen).await?))
}

/// Serves the metrics endpoint on its bound listener (none when disabled).
fn start_metrics(
    metrics: Arc<Metrics>,
    listener: Option<tokio::net::TcpListener>,
) -> Result<(Option<SocketAddr>, Option<MetricsServer>), ServerError> {
    let Some(listener) = listener else {
        return Ok((None, None));
    };
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(crate::metrics::serve(
        metrics,
        listener,
        stop.clone().cancelled_owned(),
    ));
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok((Some(addr), Some(MetricsServer { stop, task })))
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let server = start(&config, ServerOptions::default()).await?;
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await
}
