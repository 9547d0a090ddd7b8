//! Wiring: config -> HSM, store, engine, doors. [`start`] returns a handle so integration tests
//! can run the real daemon in-process on `127.0.0.1:0`; [`run`] serves until a shutdown future
//! resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Server;

use crate::api::grpc::capture::CaptureSigned;
use crate::api::grpc::Door;
use crate::audit::{export_public_key, AuditLog, CheckpointSigner, HsmCheckpointSigner};
use crate::config::{Config, ConfigError};
use crate::core::sweeper::spawn_sweeper;
use crate::core::{Clock, Kms, KmsError, KmsSettings, SystemClock};
use crate::hsm::{Hsm, HsmError};
use crate::identity::auth::Authenticator;
use crate::identity::directory::IdentityError;
use crate::identity::{DirectoryHandle, SessionStore};
use crate::metrics::Metrics;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::key_management_service_server::KeyManagementServiceServer;
use crate::pb::security_token_service_server::SecurityTokenServiceServer;
use crate::store::{SqliteStore, StoreError};

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
}

/// The daemon's listeners, named in bind errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `[server] listen`.
    Grpc,
    /// `[aws_json] listen`.
    AwsDoor,
    /// `[metrics] listen`.
    Metrics,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Grpc => "gRPC door ([server] listen)",
            Listener::AwsDoor => "AWS door ([aws_json] listen)",
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
    shutdown: Option<oneshot::Sender<()>>,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: tokio::task::JoinHandle<()>,
    usage_flusher: tokio::task::JoinHandle<()>,
    reloader: tokio::task::JoinHandle<()>,
    health_task: tokio::task::JoinHandle<()>,
    /// Aggregates refused requests and watches the trail's free space.
    refusals: Arc<crate::audit::RefusalAuditor>,
    refusals_task: tokio::task::JoinHandle<()>,
    /// Where the metrics endpoint listens, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    metrics_task: Option<(
        oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    auth: Arc<Authenticator>,
    directory_files: crate::identity::DirectoryFiles,
    allow_group_readable_secrets: bool,
    /// Where the AWS door (`[aws_json]`) listens, when enabled.
    pub aws_json_addr: Option<SocketAddr>,
    aws_json: Option<crate::api::aws_json::AwsJsonServer>,
    /// The audit trail (tests read its health and files).
    pub audit: Arc<AuditLog>,
}

impl RunningServer {
    /// Stops accepting requests, drains, and stops the HSM workers.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = (&mut self.serve).await;
        self.stop_background().await;
        match served {
            Ok(r) => r.map_err(ServerError::from),
            Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
        }
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
        let served = (&mut self.serve).await;
        self.stop_background().await;
        match served {
            Ok(r) => r.map_err(ServerError::from),
            Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

impl RunningServer {
    async fn stop_background(&mut self) {
        if let Some(aws) = self.aws_json.take() {
            aws.shutdown().await;
        }
        self.sweeper.abort();
        self.usage_flusher.abort();
        // Key last usage is kept in memory between flushes: store it before stopping.
        if let Err(e) = self.kms.flush_key_usage().await {
            tracing::error!(error = %e, "could not store key last usage at shutdown");
        }
        self.reloader.abort();
        self.health_task.abort();
        // No request arrives any more: write the pending aggregates of refused requests.
        self.refusals.stop();
        let _ = (&mut self.refusals_task).await;
        self.refusals.flush().await;
        if let Some((tx, task)) = self.metrics_task.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
        // The final checkpoint needs the HSM: close the trail before the HSM layer.
        if let Err(e) = self.audit.shutdown().await {
            tracing::error!(error = %e, "closing the audit trail failed");
        }
        close_hsm(self.kms.hsm()).await;
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
/// public key exported to the data directory, and the writer.
async fn open_audit(config: &Config, kms: &Arc<Kms>) -> Result<Arc<AuditLog>, ServerError> {
    let signer = HsmCheckpointSigner::new(kms.hsm().clone(), crate::audit::AUDIT_KEY_LABEL).await?;
    std::fs::create_dir_all(&config.store.data_dir)?;
    export_public_key(&config.store.data_dir, signer.public_key_spki_der())
        .map_err(|e| ServerError::Audit(e.to_string()))?;
    let log = AuditLog::open(config.audit_config(), Some(Arc::new(signer)))
        .await
        .map_err(|e| ServerError::Audit(e.to_string()))?;
    Ok(Arc::new(log))
}

/// Keeps the gRPC health service in step with the HSM and the audit trail: SERVING while a
/// session answers and the trail is writable, NOT_SERVING otherwise.
fn spawn_health(
    kms: Arc<Kms>,
    audit: Arc<AuditLog>,
    health: tonic_health::server::HealthReporter,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let services = [
            "",
            "p11kms.v1.KeyManagementService",
            "p11kms.v1.SecurityTokenService",
            "p11kms.v1.AdminService",
        ];
        let mut last = None;
        loop {
            let audit_ok = audit.healthy();
            let ok = audit_ok && kms.hsm().ping().await.is_ok();
            if last != Some(ok) {
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
                } else if last.is_some() {
                    tracing::info!("health: SERVING again");
                }
                last = Some(ok);
            }
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
    })
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

/// Reloads the identity directory on every SIGHUP.
fn spawn_reloader(
    kms: Arc<Kms>,
    auth: Arc<Authenticator>,
    files: crate::identity::DirectoryFiles,
    allow_group_readable_secrets: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; identity reload by signal is off");
            return;
        };
        while hup.recv().await.is_some() {
            // Errors are logged by the directory, which keeps the old one in force.
            let _ = reload(&kms, &auth, &files, allow_group_readable_secrets);
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
    let store = SqliteStore::open(&config.store.data_dir).await?;
    let kms = Kms::open(
        KmsSettings {
            partition: config.kms.partition.clone(),
            region: config.kms.region.clone(),
            creating_grace_ms: i64::try_from(config.kms.creating_grace_secs)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        },
        Arc::new(store),
        hsm,
        Arc::new(directory),
        Arc::new(SessionStore::new()),
        clock,
    )
    .await?;
    Ok(kms)
}

/// The gRPC door's TLS: HTTP/2 by ALPN, and client certificates verified against the CA when
/// presented; a request without one is answered UNAUTHENTICATED by the door (other
/// authentication methods share the port).
fn grpc_tls_acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let s = &config.server;
    crate::api::listener::tls_acceptor(&s.tls_cert, &s.tls_key, Some(&s.client_ca), &[b"h2"])
        .map_err(ServerError::Tls)
}

/// Starts the daemon and returns once it is listening.
pub async fn start(config: &Config, options: ServerOptions) -> Result<RunningServer, ServerError> {
    let bindings = config.certificate_bindings()?;
    let tls = grpc_tls_acceptor(config)?;
    let kms = open_engine(config, options.clock.clone()).await?;
    {
        let dir = kms.directory().current();
        if let Some(b) = bindings
            .iter()
            .find(|b| dir.principal(&b.principal_arn).is_none())
        {
            close_hsm(kms.hsm()).await;
            return Err(ServerError::Config(ConfigError::Invalid(format!(
                "identity.certificate binds to {}, which is not in the identity directory",
                b.principal_arn
            ))));
        }
    }
    let auth = Arc::new(Authenticator::new(
        kms.directory().clone(),
        kms.sessions().clone(),
        bindings,
        &config.kms.region,
    ));
    kms.start_usage_tracking().await?;
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
    let listener = bind(Listener::Grpc, config.server.listen).await?;
    let addr = listener.local_addr()?;
    let audit = open_audit(config, &kms).await?;
    let refusals = Arc::new(crate::audit::RefusalAuditor::new(
        audit.clone(),
        config.refusal_config(),
    ));
    let metrics = Arc::new(Metrics::new(
        kms.clone(),
        vec![
            Box::new(crate::metrics::AuditSource(audit.clone())),
            Box::new(crate::metrics::RefusalSource(refusals.clone())),
        ],
    ));
    kms.set_service_sink(Arc::new(crate::audit::ServiceAuditSink::new(
        audit.clone(),
        config.kms.region.clone(),
    )));
    let refusals_task = refusals.spawn();
    let gate = crate::api::gate::Gate::new(
        kms.clone(),
        metrics.clone(),
        audit.clone(),
        refusals.clone(),
    );
    let aws_json = crate::api::aws_json::start(config, auth.clone(), gate.clone()).await?;
    let door = Door::new(auth.clone(), gate);
    let (health, health_service) = tonic_health::server::health_reporter();
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
        AdminServiceServer::new(door).max_decoding_message_size(MAX_MESSAGE_BYTES),
        body_limit,
    );
    let (tx, rx) = oneshot::channel::<()>();
    let limits = crate::api::listener::Limits::from_config(&config.server);
    let registry = crate::api::listener::Registry::new(crate::api::grpc::DOOR, limits);
    let router = Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .layer(crate::api::listener::TrackedLayer::new(registry.clone()))
        .add_service(kms_service)
        .add_service(sts_service)
        .add_service(admin_service)
        .add_service(health_service)
        .add_service(reflection);
    let serve = tokio::spawn(async move {
        router
            // TLS, the connection caps and deadlines are the shared listener's (which also
            // sets NODELAY: without it, Nagle holds small responses for ~40 ms,
            // docs/benchmarks.md).
            .serve_with_incoming_shutdown(
                crate::api::listener::tls_incoming(listener, tls, registry),
                async {
                    let _ = rx.await;
                },
            )
            .await
    });
    let interval = options
        .sweep_interval
        .unwrap_or(Duration::from_secs(config.kms.deletion_sweep_interval_secs));
    let sweeper = spawn_sweeper(kms.clone(), interval);
    let usage_flusher = crate::core::usage::spawn_usage_flusher(
        kms.clone(),
        Duration::from_secs(config.kms.key_usage_flush_interval_secs),
    );
    let health_task = spawn_health(kms.clone(), audit.clone(), health);
    let (metrics_addr, metrics_task) = if config.metrics.enabled {
        let listener = bind(Listener::Metrics, config.metrics.listen).await?;
        let addr = listener.local_addr()?;
        let (mtx, mrx) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::metrics::serve(metrics.clone(), listener, async {
            let _ = mrx.await;
        }));
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        (Some(addr), Some((mtx, task)))
    } else {
        (None, None)
    };
    let directory_files = config.directory_files();
    let allow_group_readable_secrets = config.server.allow_group_readable_secrets;
    let reloader = spawn_reloader(
        kms.clone(),
        auth.clone(),
        directory_files.clone(),
        allow_group_readable_secrets,
    );
    tracing::info!(%addr, token = kms.hsm().token_label(), keys = kms.key_count(), "p11kms serving gRPC over TLS");
    Ok(RunningServer {
        addr,
        kms,
        shutdown: Some(tx),
        serve,
        sweeper,
        usage_flusher,
        reloader,
        health_task,
        refusals,
        refusals_task,
        metrics_addr,
        metrics_task,
        auth,
        directory_files,
        allow_group_readable_secrets,
        aws_json_addr: aws_json.as_ref().map(|s| s.addr),
        aws_json,
        audit,
    })
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let server = start(&config, ServerOptions::default()).await?;
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await
}
