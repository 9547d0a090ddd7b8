//! The daemon's configuration: one TOML file, typed, `deny_unknown_fields`, validated before
//! any port is bound.
//!
//! Relative paths are resolved against the directory of the config file. Secrets (the token
//! PIN) come from a file or an environment variable, never from argv, and are held in
//! zeroizing types that `Debug` redacts. `p11kms.example.toml` is the commented reference.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::hsm::{HsmConfig, JobDispatch, Pin};
use crate::identity::arn::Arn;
use crate::identity::directory::AccountFiles;
use crate::identity::{CertBinding, CertMatcher, DirectoryFiles};

pub mod console;
pub mod store;
pub mod xks;

pub use store::{StoreBackend, StoreConfig, StoreTls};

/// Why a configuration was refused. The message names the field and the fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A secret file (PIN, private key, credentials) may be read by other users.
    #[error(
        "{what} {path} is readable by {whom} (mode {mode:04o}): refused, as ssh does. Fix: `chmod 600 {path}`{relax}",
        path = path.display(),
        relax = if *allow_group_readable { "" } else { " (containers whose secret mounts are group-readable: set [server] allow_group_readable_secrets = true)" }
    )]
    SecretPermissions {
        /// The config key that names the file.
        what: &'static str,
        path: PathBuf,
        /// Who besides the owner may read it: `group` or `others`.
        whom: &'static str,
        mode: u32,
        /// Whether the relaxation was already on.
        allow_group_readable: bool,
    },
}

/// Refuses a secret file that users other than its owner may read or write (any group or
/// other permission bit, as ssh checks private keys), or, when `allow_group_readable` is set
/// (containers mount secrets group-readable), any permission for others.
pub fn check_secret_file(
    what: &'static str,
    path: &Path,
    allow_group_readable: bool,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    let whom = if mode & 0o007 != 0 {
        "others"
    } else if mode & 0o070 != 0 && !allow_group_readable {
        "group"
    } else {
        return Ok(());
    };
    Err(ConfigError::SecretPermissions {
        what,
        path: path.to_path_buf(),
        whom,
        mode,
        allow_group_readable,
    })
}

/// The lock file daemons sharing one SoftHSM2 token take, beside its `softhsm2_conf`.
pub const SHARED_TOKEN_LOCK_FILE: &str = "p11kms-token-objects.lock";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub kms: KmsConfig,
    pub hsm: HsmSection,
    pub store: StoreConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The AWS JSON 1.1 door (AWS CLI, SDKs); off unless enabled.
    #[serde(default)]
    pub aws_json: AwsJsonConfig,
    /// The XKS door (AWS KMS's external key store proxy API); off unless enabled.
    #[serde(default)]
    pub xks: xks::XksConfig,
    /// How external key stores reach their XKS proxies.
    #[serde(default)]
    pub xks_client: XksClientConfig,
    /// This node, when several nodes share one store.
    #[serde(default)]
    pub node: NodeConfig,
    /// The peer Regions of multi-Region keys (this Region is `[kms] region`).
    #[serde(default)]
    pub region: RegionConfig,
    /// The operator console served on the AWS door's listener; off unless enabled.
    #[serde(default)]
    pub console: console::ConsoleConfig,
}

/// `[region]`: the other p11kms Regions this one replicates multi-Region keys with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// `[region.peers.<region>]`: how to reach each peer Region's gRPC door and who to be
    /// there (the client settings of a client config: `endpoint`, `ca_cert`, a client
    /// certificate and key, or an access key with its secret in a file). The peer's identity
    /// policies must allow that principal `p11kms:AcceptReplica` and
    /// `p11kms:UpdateMultiRegionKey`.
    #[serde(default)]
    pub peers: BTreeMap<String, crate::client::ClientConfig>,
    /// `[region.peer_principals]`: `<region> = "<principal ARN>"`, who each peer Region's
    /// daemon is here (its certificate binding or access key). A request that says it comes
    /// from that Region is refused from anyone else; a peer without an entry is any principal
    /// with the `p11kms:` action (set one for every peer).
    #[serde(default)]
    pub peer_principals: BTreeMap<String, String>,
    /// How long one call to a peer may take, milliseconds (default 10,000: a replica's
    /// key material is unwrapped on the peer's HSM before it answers).
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
}

fn default_peer_timeout_ms() -> u64 {
    10_000
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            peers: BTreeMap::new(),
            peer_principals: BTreeMap::new(),
            peer_timeout_ms: default_peer_timeout_ms(),
        }
    }
}

/// `[node]`: who this daemon is among the nodes that share one store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node id (`[a-z0-9][a-z0-9-]{0,31}`): in every audit record and segment name, and
    /// in health and metrics, so that each node's trail and figures are told apart. Unset:
    /// a single node, whose audit trail keeps the plain names.
    pub id: Option<String>,
}

/// `[xks_client]`: the outbound side of `EXTERNAL_KEY_STORE` custom key stores.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XksClientConfig {
    /// PEM CA certificates an `https://` proxy's certificate must chain to (the only roots
    /// trusted for proxies). Without it only `http://` proxies on a loopback address can be
    /// reached.
    pub ca_file: Option<PathBuf>,
}

/// `[server]`: the gRPC listener and its TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8443`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM server certificate chain.
    pub tls_cert: PathBuf,
    /// PEM server private key.
    pub tls_key: PathBuf,
    /// PEM CA bundle that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Accept group-readable secret files (PIN file, TLS key, credentials file), for
    /// containers that mount secrets with a group; files readable by others are refused
    /// regardless.
    #[serde(default)]
    pub allow_group_readable_secrets: bool,
    /// How long a TLS handshake may take, ms (both ports).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// How long an HTTP/1.1 request head may take once it has begun, ms.
    #[serde(default = "default_request_head_timeout_ms")]
    pub request_head_timeout_ms: u64,
    /// How long a request body may take after its head, ms.
    #[serde(default = "default_request_body_timeout_ms")]
    pub request_body_timeout_ms: u64,
    /// How long a connection may stay open with no request in flight, ms.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Interval of the HTTP/2 keep-alive PINGs, ms.
    #[serde(default = "default_http2_keepalive_interval_ms")]
    pub http2_keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed, ms.
    #[serde(default = "default_http2_keepalive_timeout_ms")]
    pub http2_keepalive_timeout_ms: u64,
    /// Open connections per listener, at most; the oldest idle one is shed for a new one.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections per listener from one source address, at most.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Longest pause of the accept loop's back-off after a failed accept (EMFILE), ms.
    #[serde(default = "default_accept_backoff_max_ms")]
    pub accept_backoff_max_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_request_head_timeout_ms() -> u64 {
    10_000
}
fn default_request_body_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_http2_keepalive_interval_ms() -> u64 {
    30_000
}
fn default_http2_keepalive_timeout_ms() -> u64 {
    10_000
}
fn default_max_connections() -> usize {
    400
}
fn default_max_connections_per_source() -> usize {
    100
}
fn default_accept_backoff_max_ms() -> u64 {
    1_000
}

/// The longest `[kms] creating_grace_secs` accepted (one day): a longer wait only keeps
/// half-created keys around.
pub const MAX_CREATING_GRACE_SECS: u64 = 86_400;

/// `[kms]`: how the daemon presents itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    /// ARN partition.
    pub partition: String,
    /// Region in ARNs.
    pub region: String,
    /// How often the deletion sweeper runs, in seconds.
    pub deletion_sweep_interval_secs: u64,
    /// How often key last usage (GetKeyLastUsage) is written to the store, in seconds. It is
    /// kept in memory in between and written at shutdown.
    pub key_usage_flush_interval_secs: u64,
    /// How long a key may stay in `Creating` (its CreateKey was interrupted by a crash)
    /// before reconciliation finishes it (HSM object present) or removes it, in seconds.
    pub creating_grace_secs: u64,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            partition: "aws".into(),
            region: "us-east-1".into(),
            deletion_sweep_interval_secs: 60,
            key_usage_flush_interval_secs: 60,
            creating_grace_secs: 300,
        }
    }
}

/// `[hsm]`: the PKCS#11 module, token and session pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSection {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Label of the token. Tokens are found by label, never by slot number.
    pub token_label: String,
    /// File holding the user PIN (trailing newline ignored).
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// For SoftHSM2: its config file. Exported as SOFTHSM2_CONF before the module loads,
    /// unless the environment already sets it.
    pub softhsm2_conf: Option<PathBuf>,
    /// HSM worker threads, each with its own session.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Requests that may wait for a worker before new ones get ThrottlingException.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// How long a request may wait for a worker before DependencyTimeoutException.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// How long one request's HSM call may run before its worker is abandoned and replaced
    /// by a new worker with a new session (the device is then reported degraded).
    #[serde(default = "default_stall_limit_ms")]
    pub stall_limit_ms: u64,
    /// Serve symmetric CMK versions from session-object copies of their token keys (faster on
    /// SoftHSM2; set false for devices whose policy forbids `C_CopyObject`).
    #[serde(default = "default_true")]
    pub session_key_copies: bool,
    /// Where the default key store's key material lives: `token` (each key version a token
    /// object) or `wrapped` (wrapped under the token's master key, kept in the metadata
    /// store, unwrapped on the device when used). `docs/residency.md` says when to choose
    /// which.
    #[serde(default)]
    pub residency: crate::core::residency::Residency,
    /// Wrapped residency: unwrapped keys each HSM worker keeps as session objects.
    #[serde(default = "default_wrapped_cache")]
    pub wrapped_cache: usize,
    /// Who runs fast HSM jobs: `workers` (default; right for network HSMs) or `inline` (the
    /// request's own thread, for devices whose calls take tens of microseconds).
    #[serde(default)]
    pub dispatch: JobDispatch,
    /// `[[hsm.cluster]]`: further devices the operator offers for custom key stores.
    #[serde(default)]
    pub cluster: Vec<ClusterSection>,
}

/// `[[hsm.cluster]]`: a further PKCS#11 device (an HSM, or a vendor HA group presented as one
/// slot) that key administrators may make a custom key store of with CreateCustomKeyStore.
/// The store's `KeyStorePassword` is the token's user PIN, so none is configured here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster id, in AWS's format (`cluster-` and 11-16 letters or digits 2-7): what
    /// CreateCustomKeyStore names as `CloudHsmClusterId`.
    pub id: String,
    /// Path of the cluster's PKCS#11 module (another vendor's library is allowed).
    pub module: PathBuf,
    /// Label of the cluster's token.
    pub token_label: String,
    /// The cluster's trust anchor certificate (PEM): CreateCustomKeyStore's
    /// `TrustAnchorCertificate` must be this certificate.
    pub trust_anchor_file: PathBuf,
    /// Where new key material of the stores on this cluster lives: `token` (default) or
    /// `wrapped` (blobs under the cluster token's own master key, as `[hsm] residency`; the
    /// device's cache of unwrapped keys is `[hsm] wrapped_cache`).
    #[serde(default)]
    pub residency: crate::core::residency::Residency,
}

impl ClusterSection {
    /// Whether `id` has the form of a CloudHSM cluster id (the AWS model's
    /// `cluster-[2-7a-zA-Z]{11,16}`).
    pub fn is_cluster_id(id: &str) -> bool {
        id.strip_prefix("cluster-").is_some_and(|rest| {
            (11..=16).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
        })
    }

    /// The trust anchor's certificates (DER), read from `trust_anchor_file`: at least one,
    /// each a well-formed X.509 certificate.
    pub fn trust_anchor(&self) -> Result<Vec<Vec<u8>>, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let invalid = |why: String| {
            ConfigError::Invalid(format!(
                "hsm.cluster {}: trust_anchor_file {}: {why}",
                self.id,
                self.trust_anchor_file.display()
            ))
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&self.trust_anchor_file)
            .map_err(|e| invalid(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        if certs.is_empty() {
            return Err(invalid("no PEM certificate".into()));
        }
        for c in &certs {
            X509Certificate::from_der(c).map_err(|e| invalid(format!("not X.509: {e}")))?;
        }
        Ok(certs.into_iter().map(|c| c.to_vec()).collect())
    }
}

fn default_workers() -> usize {
    2
}
fn default_queue_depth() -> usize {
    1024
}
fn default_acquire_timeout_ms() -> u64 {
    2000
}
fn default_stall_limit_ms() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}
fn default_wrapped_cache() -> usize {
    crate::hsm::DEFAULT_WRAPPED_CACHE
}

/// `[audit]`: the tamper-evident audit trail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Directory of the JSON-lines segments; default `<store.data_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// `group-commit` (the event is fsynced before the response; concurrent requests share
    /// one fsync) or `relaxed` (fsync every `fsync_interval_ms`).
    pub durability: String,
    /// Relaxed mode's fsync interval.
    pub fsync_interval_ms: u64,
    /// Start a new segment past this size.
    pub max_segment_bytes: u64,
    /// Start a new segment past this age (0 = never by age).
    pub max_segment_age_secs: u64,
    /// Zero-filled, synced space kept ahead of the segment's write position, so that a
    /// group-commit fsync changes no file size or metadata (0 = off; at most
    /// `max_segment_bytes`).
    pub preallocate_bytes: u64,
    /// Add a signed checkpoint every N events.
    pub checkpoint_every_events: u64,
    /// ... and at least every T seconds (0 = count only).
    pub checkpoint_interval_secs: u64,
    /// Refused requests (no or failed authentication) are written in full only for the
    /// first of each (door, source address, operation, error); the rest are counted in one
    /// aggregate record per key per this many seconds.
    pub refused_aggregate_interval_secs: u64,
    /// Most such keys tracked at once; refusals beyond share one overflow aggregate.
    pub refused_aggregate_max_keys: usize,
    /// Free-space floor of the trail's file system: below it refused requests are not
    /// audited at all (counted in a metric). 0 = no floor.
    pub min_free_bytes: u64,
    /// Below this many free bytes the daemon warns (log and metric). 0 = never.
    pub warn_free_bytes: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            dir: None,
            durability: "group-commit".into(),
            fsync_interval_ms: 1000,
            max_segment_bytes: 64 * 1024 * 1024,
            max_segment_age_secs: 86_400,
            preallocate_bytes: 4 << 20,
            checkpoint_every_events: 1000,
            checkpoint_interval_secs: 60,
            refused_aggregate_interval_secs: 60,
            refused_aggregate_max_keys: 1024,
            min_free_bytes: 1 << 30,
            warn_free_bytes: 2 << 30,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Where; loopback by default, because metrics name keys and principals' activity.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// `[aws_json]`: the AWS-compatible door (AWS JSON 1.1 for KMS, the Query protocol for STS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsJsonConfig {
    /// Serve the door.
    pub enabled: bool,
    /// Where to listen, e.g. `127.0.0.1:4443`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTPS with `[server] tls_cert`/`tls_key`. Plain HTTP (`false`) is allowed only on a
    /// loopback address.
    pub tls: bool,
    /// Largest request body accepted; larger ones are refused before they are parsed.
    pub max_body_bytes: usize,
}

impl Default for AwsJsonConfig {
    fn default() -> Self {
        AwsJsonConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 4443)),
            tls: true,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `p11kms=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// `[identity]`: the identity directory and how callers map to principals.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Client-certificate bindings (more may come from the credentials file).
    #[serde(default)]
    pub certificate: Vec<CertificateBindingConfig>,
    /// The credentials file: access keys and certificate bindings (JSON).
    pub credentials: Option<PathBuf>,
    /// One entry per account.
    #[serde(default)]
    pub account: Vec<AccountConfig>,
}

/// One `[[identity.account]]`: the account's IAM configuration and guardrails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The 12-digit account id.
    pub account_id: String,
    /// The JSON `aws iam get-account-authorization-details` prints for the account.
    pub authorization_details: PathBuf,
    /// Guardrail policy documents (the role of SCPs): every one must allow.
    #[serde(default)]
    pub guardrails: Vec<PathBuf>,
}

/// One `[[identity.certificate]]` binding: exactly one of `subject_cn` / `san_uri`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBindingConfig {
    pub subject_cn: Option<String>,
    pub san_uri: Option<String>,
    /// The principal ARN the certificate authenticates as.
    pub principal: String,
}

impl Config {
    /// Reads, parses, resolves relative paths and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses config text with paths relative to `base` (tests build configs in memory).
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: base.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.server.tls_cert);
        fix(&mut self.server.tls_key);
        fix(&mut self.server.client_ca);
        self.store.resolve_paths(fix);
        if let Some(p) = self.hsm.pin_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.hsm.softhsm2_conf.as_mut() {
            fix(p);
        }
        for c in &mut self.hsm.cluster {
            fix(&mut c.module);
            fix(&mut c.trust_anchor_file);
        }
        if let Some(p) = self.identity.credentials.as_mut() {
            fix(p);
        }
        if let Some(p) = self.audit.dir.as_mut() {
            fix(p);
        }
        self.xks.resolve_paths(fix);
        self.console.resolve_paths(fix);
        for peer in self.region.peers.values_mut() {
            for p in [
                &mut peer.ca_cert,
                &mut peer.client_cert,
                &mut peer.client_key,
                &mut peer.secret_access_key_file,
                &mut peer.session_token_file,
            ] {
                if let Some(p) = p.as_mut() {
                    fix(p);
                }
            }
        }
        if let Some(p) = &mut self.xks_client.ca_file {
            fix(p);
        }
        for a in &mut self.identity.account {
            fix(&mut a.authorization_details);
            for g in &mut a.guardrails {
                fix(g);
            }
        }
    }

    /// Checks every value that can be checked without touching the network or the HSM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_kms()?;
        self.validate_hsm()?;
        self.validate_clusters()?;
        self.validate_log()?;
        self.certificate_bindings()?;
        self.validate_aws_json()?;
        self.xks.validate()?;
        self.validate_audit()?;
        self.validate_node()?;
        self.validate_region()?;
        self.console.validate(self.aws_json.enabled)?;
        self.store.validate()?;
        self.validate_identity()
    }

    /// `[region]`: each peer is a Region name other than this one, with an `https://`
    /// endpoint, a CA and credentials.
    fn validate_region(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.region.peer_timeout_ms == 0 {
            return invalid("region.peer_timeout_ms must be at least 1".into());
        }
        for (name, arn) in &self.region.peer_principals {
            if !self.region.peers.contains_key(name) {
                return invalid(format!(
                    "[region.peer_principals] {name}: not a Region of [region.peers]"
                ));
            }
            if Arn::parse(arn).is_err() {
                return invalid(format!("[region.peer_principals] {name}: not an ARN"));
            }
        }
        for (name, peer) in &self.region.peers {
            let at = format!("[region.peers.{name}]");
            if crate::hsm::region::RegionName::parse(name).is_none() {
                return invalid(format!("{at}: a Region name is 1-32 of [a-z0-9-]"));
            }
            if *name == self.kms.region {
                return invalid(format!("{at}: this deployment's own Region (kms.region)"));
            }
            let one_url = |e: &str| e.starts_with("https://") && !e.contains(',');
            if !peer.endpoint.as_deref().is_some_and(one_url) {
                return invalid(format!("{at}: endpoint must be one https:// URL"));
            }
            if !peer.profiles.is_empty() {
                return invalid(format!("{at}: profiles have no meaning for a peer"));
            }
            if peer.ca_cert.is_none() {
                return invalid(format!("{at}: ca_cert is required"));
            }
            let cert = peer.client_cert.is_some() && peer.client_key.is_some();
            let key = peer.access_key_id.is_some() && peer.secret_access_key_file.is_some();
            if !cert && !key {
                return invalid(format!(
                    "{at}: give client_cert and client_key, or access_key_id and secret_access_key_file"
                ));
            }
        }
        Ok(())
    }

    /// `[node] id`: a valid node id when set, and set when nodes share a PostgreSQL store
    /// (each node's audit trail must be told apart).
    fn validate_node(&self) -> Result<(), ConfigError> {
        if self.store.backend == StoreBackend::Postgres && self.node.id.is_none() {
            return Err(ConfigError::Invalid(
                "[node] id is required with store.backend = \"postgres\" (several nodes share \
                 the store; each needs its own id)"
                    .into(),
            ));
        }
        match &self.node.id {
            Some(id) if !crate::audit::valid_node_id(id) => Err(ConfigError::Invalid(format!(
                "[node] id {id:?}: {}",
                crate::audit::NODE_ID_RULE
            ))),
            _ => Ok(()),
        }
    }

    /// `[server]`: the TLS files exist and every timeout and limit is at least 1.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (name, p) in [
            ("server.tls_cert", &self.server.tls_cert),
            ("server.tls_key", &self.server.tls_key),
            ("server.client_ca", &self.server.client_ca),
        ] {
            if !p.is_file() {
                return invalid(format!("{name}: {} is not a readable file", p.display()));
            }
        }
        let s = &self.server;
        for (name, v) in [
            ("server.handshake_timeout_ms", s.handshake_timeout_ms),
            ("server.request_head_timeout_ms", s.request_head_timeout_ms),
            ("server.request_body_timeout_ms", s.request_body_timeout_ms),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
            (
                "server.http2_keepalive_interval_ms",
                s.http2_keepalive_interval_ms,
            ),
            (
                "server.http2_keepalive_timeout_ms",
                s.http2_keepalive_timeout_ms,
            ),
            ("server.max_connections", s.max_connections as u64),
            (
                "server.max_connections_per_source",
                s.max_connections_per_source as u64,
            ),
            ("server.accept_backoff_max_ms", s.accept_backoff_max_ms),
        ] {
            if v == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// `[kms]`: partition and region names, sweep and flush intervals, the creating grace.
    fn validate_kms(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.kms.partition.is_empty() || self.kms.partition.contains(':') {
            return invalid("kms.partition must be a non-empty name without ':'".into());
        }
        if self.kms.region.is_empty() || self.kms.region.contains(':') {
            return invalid("kms.region must be a non-empty name without ':'".into());
        }
        if self.kms.deletion_sweep_interval_secs == 0 {
            return invalid("kms.deletion_sweep_interval_secs must be at least 1".into());
        }
        if self.kms.key_usage_flush_interval_secs == 0 {
            return invalid("kms.key_usage_flush_interval_secs must be at least 1".into());
        }
        if !(1..=MAX_CREATING_GRACE_SECS).contains(&self.kms.creating_grace_secs) {
            return invalid(format!(
                "kms.creating_grace_secs must be 1-{MAX_CREATING_GRACE_SECS}"
            ));
        }
        Ok(())
    }

    /// `[hsm]`: token label, exactly one PIN source, worker pool and timeouts.
    fn validate_hsm(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.hsm.token_label.is_empty() || self.hsm.token_label.len() > 32 {
            return invalid("hsm.token_label must be 1-32 characters".into());
        }
        match (&self.hsm.pin_file, &self.hsm.pin_env) {
            (Some(_), Some(_)) => {
                return invalid("hsm: set exactly one of pin_file and pin_env, not both".into())
            }
            (None, None) => return invalid("hsm: set one of pin_file or pin_env".into()),
            _ => {}
        }
        if self.hsm.workers == 0 || self.hsm.workers > 256 {
            return invalid("hsm.workers must be 1-256".into());
        }
        if self.hsm.queue_depth == 0 {
            return invalid("hsm.queue_depth must be at least 1".into());
        }
        if self.hsm.acquire_timeout_ms == 0 {
            return invalid("hsm.acquire_timeout_ms must be at least 1".into());
        }
        if self.hsm.stall_limit_ms < 100 {
            return invalid("hsm.stall_limit_ms must be at least 100".into());
        }
        Ok(())
    }

    /// `[[hsm.cluster]]`: ids in AWS's format and unique, tokens distinct from each other and
    /// from the default token, and a readable trust anchor certificate.
    fn validate_clusters(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut ids = std::collections::HashSet::new();
        let mut tokens =
            std::collections::HashSet::from([(&self.hsm.module, &self.hsm.token_label)]);
        for c in &self.hsm.cluster {
            if !ClusterSection::is_cluster_id(&c.id) {
                return invalid(format!(
                    "hsm.cluster id {:?} is not a cluster id (cluster- and 11-16 letters or digits 2-7)",
                    c.id
                ));
            }
            if !ids.insert(&c.id) {
                return invalid(format!("hsm.cluster id {} is declared twice", c.id));
            }
            if c.token_label.is_empty() || c.token_label.len() > 32 {
                return invalid(format!(
                    "hsm.cluster {}: token_label must be 1-32 characters",
                    c.id
                ));
            }
            if !tokens.insert((&c.module, &c.token_label)) {
                return invalid(format!(
                    "hsm.cluster {}: token {:?} of {} is already the default token or another cluster's",
                    c.id,
                    c.token_label,
                    c.module.display()
                ));
            }
            c.trust_anchor()?;
        }
        Ok(())
    }

    /// `[log]`: the output format.
    fn validate_log(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            ));
        }
        Ok(())
    }

    /// `[aws_json]`: plain HTTP only on loopback, and the body size limit.
    fn validate_aws_json(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.aws_json.enabled && !self.aws_json.tls && !self.aws_json.listen.ip().is_loopback() {
            return invalid(format!(
                "aws_json.tls = false is allowed only on a loopback address, not {}",
                self.aws_json.listen
            ));
        }
        if self.aws_json.max_body_bytes < 1024 || self.aws_json.max_body_bytes > 16 * 1024 * 1024 {
            return invalid("aws_json.max_body_bytes must be 1024 to 16777216".into());
        }
        Ok(())
    }

    /// `[audit]`: durability mode, refusal aggregation, disk-space and segment limits.
    fn validate_audit(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !matches!(self.audit.durability.as_str(), "group-commit" | "relaxed") {
            return invalid(format!(
                "audit.durability must be \"group-commit\" or \"relaxed\", not {:?}",
                self.audit.durability
            ));
        }
        if self.audit.refused_aggregate_interval_secs == 0
            || self.audit.refused_aggregate_max_keys == 0
        {
            return invalid(
                "audit.refused_aggregate_interval_secs and audit.refused_aggregate_max_keys must be at least 1".into(),
            );
        }
        if self.audit.warn_free_bytes != 0 && self.audit.warn_free_bytes < self.audit.min_free_bytes
        {
            return invalid(
                "audit.warn_free_bytes must be 0 or at least audit.min_free_bytes".into(),
            );
        }
        if self.audit.checkpoint_every_events == 0 || self.audit.max_segment_bytes < 4096 {
            return invalid(
                "audit.checkpoint_every_events must be at least 1 and audit.max_segment_bytes at least 4096"
                    .into(),
            );
        }
        Ok(())
    }

    /// `[identity]`: account ids unique and well formed, and the named files exist.
    fn validate_identity(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in self.identity.account.iter().enumerate() {
            if !crate::identity::arn::is_account_id(&a.account_id) {
                return invalid(format!(
                    "identity.account[{i}].account_id must be 12 digits, not {:?}",
                    a.account_id
                ));
            }
            if !seen.insert(a.account_id.as_str()) {
                return invalid(format!(
                    "identity.account[{i}]: account {} is listed twice",
                    a.account_id
                ));
            }
            for p in std::iter::once(&a.authorization_details).chain(&a.guardrails) {
                if !p.is_file() {
                    return invalid(format!(
                        "identity.account[{i}]: {} is not a readable file",
                        p.display()
                    ));
                }
            }
        }
        if let Some(p) = &self.identity.credentials {
            if !p.is_file() {
                return invalid(format!(
                    "identity.credentials: {} is not a readable file",
                    p.display()
                ));
            }
        }
        Ok(())
    }

    /// The secret files the config names, each with its config key.
    pub fn secret_files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut files = vec![("server.tls_key", self.server.tls_key.clone())];
        if let Some(p) = &self.hsm.pin_file {
            files.push(("hsm.pin_file", p.clone()));
        }
        if let Some(p) = &self.identity.credentials {
            files.push(("identity.credentials", p.clone()));
        }
        if let Some(p) = &self.xks.tls_key {
            files.push(("xks.tls_key", p.clone()));
        }
        for s in &self.xks.key_store {
            files.push(("xks.key_store.credentials_file", s.credentials_file.clone()));
        }
        files.extend(self.store.secret_file());
        files
    }

    /// Refuses to go on when a secret file is readable by others (see [`check_secret_file`]).
    /// Runs at start-up (`serve` and `check`); SIGHUP re-checks the credentials file.
    pub fn check_secret_files(&self) -> Result<(), ConfigError> {
        for (what, path) in self.secret_files() {
            check_secret_file(what, &path, self.server.allow_group_readable_secrets)?;
        }
        Ok(())
    }

    /// The audit directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("audit"))
    }

    /// The audit writer's configuration.
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        let a = &self.audit;
        let mut c = crate::audit::AuditConfig::new(self.audit_dir());
        c.durability = if a.durability == "relaxed" {
            crate::audit::Durability::Relaxed {
                fsync_interval: Duration::from_millis(a.fsync_interval_ms.max(1)),
            }
        } else {
            crate::audit::Durability::GroupCommit
        };
        c.max_segment_bytes = a.max_segment_bytes;
        c.preallocate_bytes = a.preallocate_bytes;
        c.max_segment_age =
            (a.max_segment_age_secs > 0).then(|| Duration::from_secs(a.max_segment_age_secs));
        c.checkpoint_every_events = a.checkpoint_every_events;
        c.checkpoint_interval = (a.checkpoint_interval_secs > 0)
            .then(|| Duration::from_secs(a.checkpoint_interval_secs));
        c.node = self.node.id.clone();
        c
    }

    /// How refused requests are audited and the trail's free-space floor.
    pub fn refusal_config(&self) -> crate::audit::RefusalConfig {
        let a = &self.audit;
        crate::audit::RefusalConfig {
            interval: Duration::from_secs(a.refused_aggregate_interval_secs),
            max_keys: a.refused_aggregate_max_keys,
            min_free_bytes: a.min_free_bytes,
            warn_free_bytes: a.warn_free_bytes,
        }
    }

    /// The identity directory's files.
    pub fn directory_files(&self) -> DirectoryFiles {
        DirectoryFiles {
            accounts: self
                .identity
                .account
                .iter()
                .map(|a| AccountFiles {
                    account_id: a.account_id.clone(),
                    authorization_details: a.authorization_details.clone(),
                    guardrails: a.guardrails.clone(),
                })
                .collect(),
            credentials: self.identity.credentials.clone(),
        }
    }

    /// The certificate bindings, validated.
    pub fn certificate_bindings(&self) -> Result<Vec<CertBinding>, ConfigError> {
        self.identity
            .certificate
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let matcher = match (&b.subject_cn, &b.san_uri) {
                    (Some(cn), None) if !cn.is_empty() => CertMatcher::SubjectCn(cn.clone()),
                    (None, Some(uri)) if !uri.is_empty() => CertMatcher::SanUri(uri.clone()),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "identity.certificate[{i}]: set exactly one of subject_cn or san_uri"
                        )))
                    }
                };
                let arn = Arn::parse(&b.principal).map_err(|e| {
                    ConfigError::Invalid(format!("identity.certificate[{i}].principal: {e}"))
                })?;
                if !matches!(arn.service, "iam" | "sts") || arn.account.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "identity.certificate[{i}].principal must be an IAM or STS principal ARN with an account"
                    )));
                }
                Ok(CertBinding {
                    matcher,
                    principal_arn: b.principal.clone(),
                })
            })
            .collect()
    }

    /// Reads the token PIN from its file or environment variable.
    pub fn read_pin(&self) -> Result<Pin, ConfigError> {
        let raw: Zeroizing<String> = match (&self.hsm.pin_file, &self.hsm.pin_env) {
            (Some(path), _) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("hsm.pin_file {}: {e}", path.display()))
            })?),
            (None, Some(var)) => Zeroizing::new(std::env::var(var).map_err(|_| {
                ConfigError::Invalid(format!(
                    "hsm.pin_env: environment variable {var} is not set"
                ))
            })?),
            (None, None) => return Err(ConfigError::Invalid("hsm: no PIN source".into())),
        };
        let pin = raw.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(ConfigError::Invalid("hsm: the PIN is empty".into()));
        }
        Ok(Pin::new(pin))
    }

    /// The HSM layer's configuration, with the PIN read from its source.
    pub fn hsm_config(&self) -> Result<HsmConfig, ConfigError> {
        let mut cfg = HsmConfig::new(&self.hsm.module, &self.hsm.token_label, self.read_pin()?);
        cfg.workers = self.hsm.workers;
        cfg.queue_depth = self.hsm.queue_depth;
        cfg.acquire_timeout = Duration::from_millis(self.hsm.acquire_timeout_ms);
        cfg.stall_limit = Duration::from_millis(self.hsm.stall_limit_ms);
        cfg.session_key_copies = self.hsm.session_key_copies;
        cfg.wrapped_cache = self.hsm.wrapped_cache;
        cfg.dispatch = self.hsm.dispatch;
        // SoftHSM2 keeps token objects in files that several daemons may share: they take
        // one lock file beside its config around creating and destroying token objects.
        cfg.shared_token_lock = self
            .hsm
            .softhsm2_conf
            .as_ref()
            .and_then(|c| c.parent())
            .map(|d| d.join(SHARED_TOKEN_LOCK_FILE));
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_files() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["server.pem", "server-key.pem", "ca.pem", "pin"] {
            std::fs::write(d.path().join(f), "1234\n").unwrap();
        }
        d
    }

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
client_ca = "ca.pem"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "t"
pin_file = "pin"
[store]
data_dir = "data"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let d = dir_with_files();
        let c = Config::from_toml(BASE, d.path()).unwrap();
        assert_eq!(c.kms.region, "us-east-1");
        assert_eq!(c.hsm.workers, 2);
        assert_eq!(c.store.data_dir, d.path().join("data"));
        assert_eq!(c.read_pin().unwrap().expose(), "1234");
        assert!(format!("{:?}", c.hsm_config().unwrap()).contains("redacted"));
        assert!(!format!("{:?}", c.hsm_config().unwrap()).contains("1234"));
    }

    #[test]
    fn hsm_dispatch_defaults_to_workers_and_names_its_choices() {
        let d = dir_with_files();
        let with = |v: &str| BASE.replace("[store]", &format!("dispatch = {v}\n[store]"));
        let c = Config::from_toml(BASE, d.path()).unwrap();
        assert_eq!(c.hsm_config().unwrap().dispatch, JobDispatch::Workers);
        let c = Config::from_toml(&with("\"inline\""), d.path()).unwrap();
        assert_eq!(c.hsm_config().unwrap().dispatch, JobDispatch::Inline);
        let e = Config::from_toml(&with("\"fast\""), d.path()).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("workers") && e.contains("inline"), "{e}");
    }

    #[test]
    fn creating_grace_has_a_safe_default_and_bounds() {
        let d = dir_with_files();
        let c = Config::from_toml(BASE, d.path()).unwrap();
        assert_eq!(c.kms.creating_grace_secs, 300);
        let with = |v: u64| {
            BASE.replace(
                "[store]",
                &format!("[kms]\ncreating_grace_secs = {v}\n[store]"),
            )
        };
        assert_eq!(
            Config::from_toml(&with(1), d.path())
                .unwrap()
                .kms
                .creating_grace_secs,
            1
        );
        for bad in [0, MAX_CREATING_GRACE_SECS + 1] {
            let e = Config::from_toml(&with(bad), d.path()).unwrap_err();
            assert!(e.to_string().contains("creating_grace_secs"), "{e}");
        }
    }

    #[test]
    fn the_console_needs_the_aws_door_and_a_built_console() {
        let d = dir_with_files();
        let c = Config::from_toml(BASE, d.path()).unwrap();
        assert!(!c.console.enabled);
        assert_eq!(c.console.assets, d.path().join("console/dist"));
        let with = |aws: bool| {
            let door = if aws {
                "[aws_json]\nenabled = true\n"
            } else {
                ""
            };
            format!("{BASE}{door}[console]\nenabled = true\nassets = \"ui\"\n")
        };
        let e = Config::from_toml(&with(false), d.path()).unwrap_err();
        assert!(e.to_string().contains("[aws_json] enabled"), "{e}");
        let e = Config::from_toml(&with(true), d.path()).unwrap_err();
        assert!(e.to_string().contains("scripts/console.sh"), "{e}");
        std::fs::create_dir(d.path().join("ui")).unwrap();
        std::fs::write(d.path().join("ui/index.html"), "<!doctype html>").unwrap();
        let c = Config::from_toml(&with(true), d.path()).unwrap();
        assert_eq!(c.console.assets, d.path().join("ui"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let d = dir_with_files();
        let text = BASE.replace("[store]", "[store]\nbogus = 1");
        assert!(matches!(
            Config::from_toml(&text, d.path()),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn node_id_reaches_the_audit_config_and_bad_ids_are_refused() {
        let d = dir_with_files();
        let c = Config::from_toml(BASE, d.path()).unwrap();
        assert_eq!(c.audit_config().node, None);
        let with = |id: &str| format!("[node]\nid = \"{id}\"\n{BASE}");
        let c = Config::from_toml(&with("node-a1"), d.path()).unwrap();
        assert_eq!(c.audit_config().node.as_deref(), Some("node-a1"));
        for bad in ["", "-a", "Node", "a_b", "a/b", &"a".repeat(33)] {
            let e = Config::from_toml(&with(bad), d.path()).unwrap_err();
            assert!(e.to_string().contains("[node] id"), "{bad}: {e}");
        }
    }

    #[test]
    fn region_peers_are_validated_and_their_paths_resolved() {
        let d = dir_with_files();
        let peer = |name: &str, body: &str| format!("{BASE}\n[region.peers.{name}]\n{body}");
        let good = "endpoint = \"https://10.0.0.2:8443\"\nca_cert = \"peer-ca.pem\"\n\
                    client_cert = \"peer.pem\"\nclient_key = \"peer-key.pem\"\n";
        let c = Config::from_toml(&peer("eu-west-1", good), d.path()).unwrap();
        let p = &c.region.peers["eu-west-1"];
        assert_eq!(
            p.ca_cert.as_deref(),
            Some(d.path().join("peer-ca.pem").as_path())
        );
        assert_eq!(c.region.peer_timeout_ms, 10_000);
        let keyed = "endpoint = \"https://h:1\"\nca_cert = \"c\"\naccess_key_id = \"AKIA\"\n\
                     secret_access_key_file = \"s\"\n";
        assert!(Config::from_toml(&peer("eu-west-1", keyed), d.path()).is_ok());
        let refused = [
            (peer("EU", good), "a Region name"),
            (peer("us-east-1", good), "own Region"),
            (
                peer("eu-west-1", &good.replace("https://", "http://")),
                "one https:// URL",
            ),
            (
                peer("eu-west-1", &good.replace(":8443", ":8443,https://b:1")),
                "one https:// URL",
            ),
            (
                peer("eu-west-1", &good.replace("ca_cert", "#")),
                "ca_cert is required",
            ),
            (
                peer("eu-west-1", &good.replace("client_key", "#")),
                "client_cert and client_key",
            ),
            (
                format!("[region]\npeer_timeout_ms = 0\n{BASE}"),
                "peer_timeout_ms",
            ),
            (
                format!(
                    "{}\n[region.peer_principals]\nap-south-1 = \"arn:aws:iam::1:user/a\"\n",
                    peer("eu-west-1", good)
                ),
                "not a Region of [region.peers]",
            ),
            (
                format!(
                    "{}\n[region.peer_principals]\neu-west-1 = \"admin\"\n",
                    peer("eu-west-1", good)
                ),
                "not an ARN",
            ),
        ];
        for (text, says) in refused {
            let e = Config::from_toml(&text, d.path()).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn pin_sources_must_be_exactly_one() {
        let d = dir_with_files();
        let both = BASE.replace("pin_file = \"pin\"", "pin_file = \"pin\"\npin_env = \"X\"");
        assert!(Config::from_toml(&both, d.path()).is_err());
        let none = BASE.replace("pin_file = \"pin\"", "");
        assert!(Config::from_toml(&none, d.path()).is_err());
        let env = BASE.replace("pin_file = \"pin\"", "pin_env = \"P11KMS_TEST_UNSET_PIN\"");
        let c = Config::from_toml(&env, d.path()).unwrap();
        assert!(c.read_pin().is_err());
    }

    #[test]
    fn missing_tls_file_and_bad_values_are_refused() {
        let d = dir_with_files();
        let t = BASE.replace("ca.pem", "nope.pem");
        assert!(Config::from_toml(&t, d.path()).is_err());
        let t = BASE.replace("[store]", "[kms]\nregion = \"\"\n[store]");
        assert!(Config::from_toml(&t, d.path()).is_err());
        let t = BASE.replace("pin_file = \"pin\"", "pin_file = \"pin\"\nworkers = 0");
        assert!(Config::from_toml(&t, d.path()).is_err());
        let t = BASE.replace(
            "pin_file = \"pin\"",
            "pin_file = \"pin\"\nstall_limit_ms = 5",
        );
        assert!(Config::from_toml(&t, d.path()).is_err());
        let t = format!("{BASE}\n[log]\nformat = \"xml\"\n");
        assert!(Config::from_toml(&t, d.path()).is_err());
    }

    #[test]
    fn refused_request_auditing_and_the_free_space_floor_are_configured_and_checked() {
        let d = dir_with_files();
        let c = Config::from_toml(BASE, d.path()).unwrap().refusal_config();
        assert_eq!(c, crate::audit::RefusalConfig::default());
        assert_eq!((c.min_free_bytes, c.warn_free_bytes), (1 << 30, 2 << 30));
        let t = format!(
            "{BASE}\n[audit]\nrefused_aggregate_interval_secs = 5\nrefused_aggregate_max_keys = 7\n\
             min_free_bytes = 10\nwarn_free_bytes = 0\n"
        );
        let c = Config::from_toml(&t, d.path()).unwrap().refusal_config();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(
            (c.max_keys, c.min_free_bytes, c.warn_free_bytes),
            (7, 10, 0)
        );
        for bad in [
            "refused_aggregate_interval_secs = 0",
            "refused_aggregate_max_keys = 0",
            "min_free_bytes = 10\nwarn_free_bytes = 5",
        ] {
            let t = format!("{BASE}\n[audit]\n{bad}\n");
            assert!(Config::from_toml(&t, d.path()).is_err(), "{bad}");
        }
    }

    #[test]
    fn audit_preallocation_reaches_the_writer() {
        let d = dir_with_files();
        let c = Config::from_toml(BASE, d.path()).unwrap().audit_config();
        assert_eq!(c.preallocate_bytes, 4 << 20);
        let t = format!("{BASE}\n[audit]\npreallocate_bytes = 0\n");
        let c = Config::from_toml(&t, d.path()).unwrap().audit_config();
        assert_eq!(c.preallocate_bytes, 0);
    }

    #[test]
    fn the_reference_config_parses() {
        let d = dir_with_files();
        std::fs::create_dir_all(d.path().join("pki")).unwrap();
        std::fs::create_dir_all(d.path().join("identity")).unwrap();
        for f in [
            "pki/server.pem",
            "pki/server-key.pem",
            "pki/ca.pem",
            "user-pin",
            "identity/credentials.json",
            "identity/111122223333.json",
        ] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let text = include_str!("../p11kms.example.toml");
        let c = Config::from_toml(text, d.path()).expect("p11kms.example.toml must stay valid");
        assert_eq!(c.certificate_bindings().unwrap().len(), 1);
        assert_eq!(c.hsm.acquire_timeout_ms, 2000);
        assert_eq!(c.hsm.stall_limit_ms, 30_000);
        assert_eq!(c.directory_files().accounts.len(), 1);
        assert!(c.metrics.enabled);
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn readable_secret_files_are_refused_with_the_fix() {
        let d = dir_with_files();
        for f in ["server.pem", "server-key.pem", "ca.pem", "pin"] {
            chmod(&d.path().join(f), 0o600);
        }
        chmod(&d.path().join("server.pem"), 0o644);
        let c = Config::from_toml(BASE, d.path()).unwrap();
        c.check_secret_files()
            .expect("0600 secrets and a 0644 certificate pass");
        for (file, mode, whom) in [("pin", 0o640, "group"), ("server-key.pem", 0o604, "others")] {
            let path = d.path().join(file);
            chmod(&path, mode);
            let e = c.check_secret_files().unwrap_err().to_string();
            assert!(
                e.contains(&format!("chmod 600 {}", path.display()))
                    && e.contains(whom)
                    && e.contains(&format!("{mode:04o}")),
                "{e}"
            );
            chmod(&path, 0o600);
        }
        c.check_secret_files().expect("chmod 600 fixes it");
    }

    #[test]
    fn the_container_switch_accepts_group_but_not_world_readable_secrets() {
        let d = dir_with_files();
        for f in ["server-key.pem", "pin"] {
            chmod(&d.path().join(f), 0o640);
        }
        let strict = Config::from_toml(BASE, d.path()).unwrap();
        assert!(strict.check_secret_files().is_err());
        let text = BASE.replace(
            "client_ca = \"ca.pem\"",
            "client_ca = \"ca.pem\"\nallow_group_readable_secrets = true",
        );
        let relaxed = Config::from_toml(&text, d.path()).unwrap();
        relaxed
            .check_secret_files()
            .expect("group-readable accepted");
        chmod(&d.path().join("pin"), 0o644);
        let e = relaxed.check_secret_files().unwrap_err().to_string();
        assert!(e.contains("others") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn certificate_bindings_are_validated() {
        let d = dir_with_files();
        let good = format!(
            "{BASE}\n[[identity.certificate]]\nsubject_cn = \"admin\"\nprincipal = \"arn:aws:iam::111122223333:user/admin\"\n"
        );
        let c = Config::from_toml(&good, d.path()).unwrap();
        assert_eq!(c.certificate_bindings().unwrap().len(), 1);
        let both = good.replace(
            "subject_cn = \"admin\"",
            "subject_cn = \"admin\"\nsan_uri = \"spiffe://x\"",
        );
        assert!(Config::from_toml(&both, d.path()).is_err());
        let bad_arn = good.replace("arn:aws:iam::111122223333:user/admin", "admin");
        assert!(Config::from_toml(&bad_arn, d.path()).is_err());
    }

    /// A `[[hsm.cluster]]` entry with the given id, token and trust anchor file.
    fn cluster(id: &str, token: &str, anchor: &str) -> String {
        format!(
            "[[hsm.cluster]]\nid = \"{id}\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
             token_label = \"{token}\"\ntrust_anchor_file = \"{anchor}\"\n"
        )
    }

    #[test]
    fn clusters_are_validated() {
        let d = dir_with_files();
        crate::devsetup::ensure_ca_and_server(&d.path().join("pki")).unwrap();
        let with = |entries: &[String]| {
            let text = BASE.replace("[store]", &format!("{}[store]", entries.concat()));
            Config::from_toml(&text, d.path())
        };
        let a = cluster("cluster-abcdefgh234", "store-a", "pki/ca.pem");
        let b = cluster("cluster-ABCDEFGHIJ7zz", "store-b", "pki/ca.pem");
        let c = with(&[a.clone(), b]).unwrap();
        assert_eq!(c.hsm.cluster.len(), 2);
        assert_eq!(
            c.hsm.cluster[0].trust_anchor_file,
            d.path().join("pki/ca.pem")
        );
        assert_eq!(c.hsm.cluster[0].trust_anchor().unwrap().len(), 1);
        assert!(with(&[]).unwrap().hsm.cluster.is_empty());
        let refused = |entries: &[String], what: &str| {
            let e = with(entries).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        };
        for bad_id in [
            "cluster-short",
            "cluster-abcdefgh1jk",
            "clusterabcdefghijk",
            "cluster-abcdefghijklmnopq",
        ] {
            refused(&[cluster(bad_id, "x", "pki/ca.pem")], "is not a cluster id");
        }
        refused(
            &[a.clone(), cluster("cluster-abcdefgh234", "y", "pki/ca.pem")],
            "declared twice",
        );
        refused(
            &[cluster("cluster-abcdefgh567", "t", "pki/ca.pem")],
            "already the default token",
        );
        refused(
            &[
                a.clone(),
                cluster("cluster-abcdefgh567", "store-a", "pki/ca.pem"),
            ],
            "another cluster's",
        );
        refused(
            &[cluster("cluster-abcdefgh567", "z", "missing.pem")],
            "trust_anchor_file",
        );
        refused(
            &[cluster("cluster-abcdefgh567", "z", "pin")],
            "no PEM certificate",
        );
        refused(
            &[cluster("cluster-abcdefgh567", "", "pki/ca.pem")],
            "token_label",
        );
    }

    /// `[[hsm.cluster]] residency`: `token` unless set, `wrapped` when set, anything else
    /// refused with the field named.
    #[test]
    fn a_cluster_has_a_residency_of_its_own() {
        use crate::core::residency::Residency;
        let d = dir_with_files();
        crate::devsetup::ensure_ca_and_server(&d.path().join("pki")).unwrap();
        let with = |entries: &[String]| {
            let text = BASE.replace("[store]", &format!("{}[store]", entries.concat()));
            Config::from_toml(&text, d.path())
        };
        let plain = cluster("cluster-abcdefgh234", "store-a", "pki/ca.pem");
        let wrapped =
            cluster("cluster-abcdefgh567", "store-b", "pki/ca.pem") + "residency = \"wrapped\"\n";
        let c = with(&[plain.clone(), wrapped]).unwrap();
        assert_eq!(c.hsm.residency, Residency::Token, "the default store's own");
        let got: Vec<Residency> = c.hsm.cluster.iter().map(|c| c.residency).collect();
        assert_eq!(got, [Residency::Token, Residency::Wrapped]);
        let token = plain.clone() + "residency = \"token\"\n";
        assert_eq!(
            with(&[token]).unwrap().hsm.cluster[0].residency,
            Residency::Token
        );
        let bad = plain + "residency = \"vault\"\n";
        let e = with(&[bad]).unwrap_err().to_string();
        assert!(e.contains("residency") || e.contains("vault"), "{e}");
    }
}
