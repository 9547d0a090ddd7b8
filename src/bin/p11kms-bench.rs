//! `p11kms-bench`: closed-loop load against a real p11kms daemon over gRPC with TLS and real
//! credentials, side by side with the raw HSM in the same run.
//!
//! By default it builds a private world in a temporary directory (a SoftHSM2 token made by
//! `softhsm-config/init-token.sh`, a dev PKI, a daemon config pointing at the identity
//! fixtures), starts the real daemon (`p11kms serve`, the sibling binary) as a child process on
//! 127.0.0.1, and measures. `--endpoint` measures an existing daemon instead.
//!
//! Every case prints ONE JSON line on stdout. Errors are counted by AWS error name and a run
//! with errors also prints a WARNING line on stderr.
//!
//! The raw baseline ([`p11kms::hsm::raw`]) repeats the daemon worker's PKCS#11 calls for the
//! same operation in this process (one thread, no network, no policy) on the same token and
//! the same object kind. Raw and daemon phases alternate (raw, daemon, raw, daemon, ..., raw)
//! so that machine drift hits both; raw is reported as the mean of its phases.
//!
//! `--key-store` (own daemon) adds a second token to the world, offered to the daemon as an
//! `[[hsm.cluster]]`; once the daemon serves, the bench creates and connects a custom key store
//! on it (CreateCustomKeyStore, ConnectCustomKeyStore) and makes the symmetric cases' keys
//! there (`Origin: AWS_CLOUDHSM`). Their raw baseline then runs on that token, and each case's
//! JSON says which store its key is in (`"key_store"`).
//!
//! `--door xks` sends the caller-identity, encrypt and decrypt cases through the XKS proxy API
//! instead (module `xks`: SigV4 `kms-xks-proxy` over HTTPS, one keep-alive HTTP/1.1 connection per worker):
//! to the own daemon's XKS door (the world gains an `[[xks.key_store]]`) or, with
//! `--xks-endpoint`, to any XKS proxy, such as AWS's sample, with the same figures.
//! `--peer-xks` measures such a proxy beside the own daemon's XKS door in the same run, the
//! phases of the two alternating, one JSON line each (`"target": "p11kms"|"peer"`).
//!
//! `--door aws` sends the load through the AWS door (module `aws`: KMS JSON 1.1 and STS Query,
//! SigV4 `kms`/`sts`), over plain HTTP on loopback or HTTPS (`--aws-transport`); the HTTP/1.1
//! client (module `http_client`) is the XKS load's. The `caller-identity` case is each door's
//! floor: an authenticated, audited request without an HSM call, run first so that the later
//! cases' lines carry their ratio to it. `--concurrency 1,8,32` runs each case at each level.
//!
//! `--hsm-delay-ms` (module `shim`) puts the PKCS#11 fault shim between the own daemon and
//! SoftHSM2, sleeping before chosen calls like a network HSM, and reports the HSM workers'
//! throughput ceiling.
//!
//! Secrets: the token PINs are random, live in this process's memory and reach children only
//! through their environment (never argv, logs or JSON). The SigV4 secret is read from the
//! identity fixtures (own daemon) or from a file / environment variable (`--endpoint`).

// The per-case JSON object has more fields than serde_json's macro expands by default.
#![recursion_limit = "256"]

#[path = "p11kms-bench/aws.rs"]
mod aws;
#[path = "p11kms-bench/http_client.rs"]
mod http_client;
#[path = "p11kms-bench/nodes.rs"]
mod nodes;
#[path = "p11kms-bench/propagation.rs"]
mod propagation;
#[path = "p11kms-bench/seed.rs"]
mod seed;
#[path = "p11kms-bench/shim.rs"]
mod shim;
#[path = "p11kms-bench/xks.rs"]
mod xks;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use p11kms::api::grpc::status::aws_reason;
use p11kms::client::{AccessKeyCredentials, ClientConfig, Signer};
use p11kms::hsm::raw::{RawBench, RawKey, RawOp, RawResult, RawSigning};
use p11kms::hsm::Pin;
use p11kms::pb;
use p11kms::pb::key_management_service_client::KeyManagementServiceClient;
use p11kms::pb::security_token_service_client::SecurityTokenServiceClient;

type Client = KeyManagementServiceClient<Channel>;
type StsClient = SecurityTokenServiceClient<Channel>;

const TOKEN_LABEL: &str = "p11kms-bench";
/// The `--key-store` cluster's token (same token directory as [`TOKEN_LABEL`]).
const CLUSTER_TOKEN_LABEL: &str = "p11kms-bench-cks";
/// The `--key-store` cluster's id (AWS's format: `cluster-` and 11-16 letters or digits 2-7).
const CLUSTER_ID: &str = "cluster-benchkeystore";
const PIN_ENV: &str = "P11KMS_BENCH_USER_PIN";
const DEFAULT_ACCESS_KEY: &str = "AKIAADMIN00000000001";
const ADMIN_CERT: &str = "admin";
/// Bound on any single request, so that no loop can hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on requests per task per phase.
const MAX_REQUESTS_PER_TASK: u64 = 10_000_000;
/// Bound on latency samples kept per case (enough for 100k ops/s over 50 s).
const MAX_SAMPLES: usize = 5_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Op {
    /// The door's transport floor: an authenticated, audited request without an HSM call
    /// (gRPC and AWS: GetCallerIdentity; XKS: GetKeyMetadata).
    CallerIdentity,
    Encrypt,
    Decrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    ReEncrypt,
    CreateKey,
    /// TagResource on the case's key (one tag, overwritten): a metadata write, no HSM call.
    TagResource,
    /// Sign with an ECC_NIST_P256 key, ECDSA_SHA_256, MessageType RAW.
    Sign,
    /// Verify such a signature.
    Verify,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::CallerIdentity => "caller-identity",
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::GenerateDataKey => "generate-data-key",
            Op::GenerateDataKeyWithoutPlaintext => "generate-data-key-without-plaintext",
            Op::ReEncrypt => "re-encrypt",
            Op::CreateKey => "create-key",
            Op::TagResource => "tag-resource",
            Op::Sign => "sign",
            Op::Verify => "verify",
        }
    }

    /// The raw baseline's operation (none for the floor case: it makes no HSM call).
    fn raw(self) -> Option<RawOp> {
        Some(match self {
            Op::CallerIdentity | Op::TagResource => return None,
            Op::Encrypt => RawOp::Encrypt,
            Op::Decrypt => RawOp::Decrypt,
            Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => RawOp::GenerateDataKey,
            Op::ReEncrypt => RawOp::ReEncrypt,
            Op::CreateKey => RawOp::CreateKey,
            Op::Sign => RawOp::Sign,
            Op::Verify => RawOp::Verify,
        })
    }

    /// Whether the case uses an existing key object (token key or session copy; not
    /// create-key), so that a raw baseline on a session copy means something.
    fn uses_key_object(self) -> bool {
        !matches!(self, Op::CreateKey | Op::CallerIdentity | Op::TagResource)
    }

    /// Whether the case's key is a SYMMETRIC_DEFAULT key: the only kind a custom key store
    /// holds, so the only cases `--key-store` moves there.
    fn symmetric(self) -> bool {
        !matches!(self, Op::Sign | Op::Verify)
    }

    /// What the HSM does per request, for the JSON.
    fn hsm_calls(self) -> &'static str {
        match self {
            Op::CallerIdentity | Op::TagResource => "none",
            Op::Encrypt => "C_GenerateRandom(12)+C_EncryptInit+C_Encrypt",
            Op::Decrypt => "C_DecryptInit+C_Decrypt",
            Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => {
                "C_GenerateRandom(n)+C_GenerateRandom(12)+C_EncryptInit+C_Encrypt"
            }
            Op::ReEncrypt => "C_DecryptInit+C_Decrypt+C_GenerateRandom(12)+C_EncryptInit+C_Encrypt",
            Op::CreateKey => "C_GenerateKey(AES-256 token key)",
            Op::Sign => "SHA-256+C_SignInit+C_Sign(CKM_ECDSA, P-256 token key)",
            Op::Verify => "SHA-256+C_VerifyInit+C_Verify(CKM_ECDSA, P-256 token key)",
        }
    }
}

/// How the startup suite makes its keys (`--startup-seed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StartupSeed {
    /// CreateKey through the daemon.
    Api,
    /// Written into the stopped daemon's store by the bench (wrapped residency only).
    Direct,
}

impl StartupSeed {
    fn name(self) -> &'static str {
        match self {
            StartupSeed::Api => "api",
            StartupSeed::Direct => "direct",
        }
    }
}

/// The key kind of the sign and verify cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Signing {
    /// ECC_NIST_P256, ECDSA_SHA_256.
    Ecdsa,
    /// RSA_2048, RSASSA_PSS_SHA_256.
    RsaPss,
    /// ECC_NIST_EDWARDS25519, ED25519_SHA_512.
    Ed25519,
}

impl Signing {
    fn key_spec(self) -> &'static str {
        match self {
            Signing::Ecdsa => "ECC_NIST_P256",
            Signing::RsaPss => "RSA_2048",
            Signing::Ed25519 => "ECC_NIST_EDWARDS25519",
        }
    }

    fn algorithm(self) -> &'static str {
        match self {
            Signing::Ecdsa => "ECDSA_SHA_256",
            Signing::RsaPss => "RSASSA_PSS_SHA_256",
            Signing::Ed25519 => "ED25519_SHA_512",
        }
    }

    fn raw(self) -> RawSigning {
        match self {
            Signing::Ecdsa => RawSigning::EcdsaP256,
            Signing::RsaPss => RawSigning::RsaPss2048,
            Signing::Ed25519 => RawSigning::Ed25519,
        }
    }

    /// What the HSM does per Sign and Verify, for the JSON.
    fn hsm_calls(self, op: Op) -> &'static str {
        match (self, op) {
            (Signing::Ecdsa, Op::Sign) => "SHA-256+C_SignInit+C_Sign(CKM_ECDSA, P-256)",
            (Signing::Ecdsa, _) => "SHA-256+C_VerifyInit+C_Verify(CKM_ECDSA, P-256)",
            (Signing::RsaPss, Op::Sign) => "SHA-256+C_SignInit+C_Sign(CKM_RSA_PKCS_PSS, RSA-2048)",
            (Signing::RsaPss, _) => "SHA-256+C_VerifyInit+C_Verify(CKM_RSA_PKCS_PSS, RSA-2048)",
            (Signing::Ed25519, Op::Sign) => "C_SignInit+C_Sign(CKM_EDDSA, Ed25519)",
            (Signing::Ed25519, _) => "C_VerifyInit+C_Verify(CKM_EDDSA, Ed25519)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Suite {
    /// Policy decisions per second, in-process.
    Policy,
    /// The operations of --ops against the daemon, with the raw baseline.
    Crypto,
    /// Daemon start-up time and RSS with --startup-keys keys (slow: creates the keys).
    Startup,
    /// How long a DisableKey on the first --endpoint takes to reach the second (several
    /// nodes on one store): --propagation-rounds rounds, p50/p99/max.
    Propagation,
}

/// The door the crypto suite's load goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Door {
    /// gRPC over HTTP/2 with TLS (mTLS or SigV4).
    Grpc,
    /// The AWS door (KMS JSON 1.1 and STS Query over HTTP/1.1, SigV4 services kms and sts,
    /// one keep-alive connection per worker): caller-identity, encrypt, decrypt,
    /// generate-data-key*, re-encrypt.
    Aws,
    /// The XKS proxy API (HTTP/1.1 over HTTPS, SigV4 service kms-xks-proxy, one keep-alive
    /// connection per worker): caller-identity (GetKeyMetadata), encrypt and decrypt.
    Xks,
}

impl Door {
    /// The door's name in the JSON.
    fn name(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Aws => "aws",
            Door::Xks => "xks",
        }
    }

    /// Whether the door's load has a request for `op`.
    fn serves(self, op: Op) -> bool {
        match self {
            Door::Grpc => true,
            Door::Aws => aws::serves(op),
            Door::Xks => matches!(op, Op::CallerIdentity | Op::Encrypt | Op::Decrypt),
        }
    }
}

/// The transport of the own daemon's AWS door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AwsTransport {
    /// HTTPS with the daemon's server certificate (the world's dev CA).
    Https,
    /// Plain HTTP (the daemon allows it on loopback only).
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// Client certificate (CN admin).
    Mtls,
    /// AWS Signature V4 with an access key (no client certificate).
    Sigv4,
}

/// Benchmark p11kms against the raw HSM. One JSON line per case on stdout.
#[derive(Parser, Debug)]
#[command(name = "p11kms-bench", version)]
#[command(group(clap::ArgGroup::new("external").args(["endpoint", "xks_endpoint"])))]
#[command(group(clap::ArgGroup::new("measured_server").args(["endpoint", "xks_endpoint", "peer_xks"]).multiple(true)))]
#[command(group(clap::ArgGroup::new("xks_remote").args(["xks_endpoint", "peer_xks"]).multiple(true)))]
struct Cli {
    /// Suites to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "policy,crypto"
    )]
    suite: Vec<Suite>,
    /// Operations of the crypto suite.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "caller-identity,encrypt,decrypt,generate-data-key,generate-data-key-without-plaintext,re-encrypt,create-key,sign,verify"
    )]
    ops: Vec<Op>,
    /// Concurrent closed-loop tasks; several levels (`1,8,32`) run each case at each level.
    #[arg(long, value_delimiter = ',', default_value = "32", value_parser = clap::value_parser!(usize))]
    concurrency: Vec<usize>,
    /// HTTP/2 channels (connections) the tasks share.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Plaintext / data-key size in bytes (1-4096; data keys 1-1024).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Measured daemon time per case, in seconds (split into --daemon-phase phases).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured daemon warm-up per case, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Length of one daemon phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    daemon_phase: f64,
    /// Length of one raw phase, in seconds.
    #[arg(long, default_value_t = 2.0)]
    raw_phase: f64,
    /// Measured time of the create-key case, in seconds (it leaves keys on the token).
    #[arg(long, default_value_t = 10.0)]
    create_key_duration: f64,
    /// Skip the raw baseline.
    #[arg(long)]
    no_raw: bool,
    /// Authentication of the load requests.
    #[arg(long, value_enum, default_value = "mtls")]
    auth: Auth,
    /// Tokio worker threads of the client.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// The door of the crypto suite's load. `aws`: the AWS door (KMS JSON 1.1, STS Query;
    /// the own daemon gets an `[aws_json]` listener, or use --aws-endpoint); `xks`: the XKS
    /// proxy API (the own daemon gets an `[[xks.key_store]]`, or use --xks-endpoint). Cases a
    /// door lacks are skipped with a note.
    #[arg(long, value_enum, default_value_t = Door::Grpc)]
    door: Door,
    /// `--door aws` on the own daemon: HTTPS (the server certificate, the world's CA) or plain
    /// HTTP (allowed on loopback).
    #[arg(long, value_enum, default_value_t = AwsTransport::Https)]
    aws_transport: AwsTransport,
    /// The SigV4 region of the gRPC and AWS doors: the own daemon's `[kms] region`, or the
    /// existing daemon's.
    #[arg(long, default_value = "us-east-1")]
    region: String,

    // ---- own daemon
    /// Identity directory (credentials.json + <account>.json files) for the own daemon.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/identity"))]
    identity_dir: PathBuf,
    /// The p11kms binary (default: `p11kms` next to this binary).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// softhsm-config/init-token.sh.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-config/init-token.sh"))]
    init_token_script: PathBuf,
    /// Working directory (default: a fresh directory under the system temp dir).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the working directory (token, PKI, store, daemon log) at the end.
    #[arg(long)]
    keep_workdir: bool,
    /// HSM worker threads of the own daemon (default: the daemon's default).
    #[arg(long)]
    hsm_workers: Option<usize>,
    /// `[hsm] dispatch` of the own daemon: `workers` or `inline` (default: the daemon's
    /// default, `workers`), for A/B runs.
    #[arg(long, value_parser = ["workers", "inline"])]
    hsm_dispatch: Option<String>,
    /// Log level of the own daemon.
    #[arg(long, default_value = "info")]
    daemon_log_level: String,
    /// `[audit] durability` of the own daemon (`group-commit` or `relaxed`; default: the
    /// daemon's default, group commit).
    #[arg(long)]
    audit_durability: Option<String>,
    /// `[audit] preallocate_bytes` of the own daemon (default: the daemon's default).
    #[arg(long)]
    audit_preallocate_bytes: Option<u64>,
    /// `[audit] checkpoint_every_events` of the own daemon (at least 1; default: the
    /// daemon's default, 1000).
    #[arg(long)]
    audit_checkpoint_every_events: Option<u64>,
    /// `[kms] key_usage_flush_interval_secs` of the own daemon (at least 1; default: the
    /// daemon's default, 60): a short interval puts the flush of the keys' last uses inside
    /// the measured phases.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    key_usage_flush_secs: Option<u64>,
    /// Own daemon only: put the PKCS#11 fault shim (`tests/fault-shim/shim.c`, compiled with
    /// `cc`) between the daemon and SoftHSM2, sleeping this many milliseconds before each
    /// call of --hsm-delay-calls: a network HSM's latency. The raw loop runs on the real
    /// module (no delay).
    #[arg(long, conflicts_with_all = ["endpoint", "xks_endpoint"])]
    hsm_delay_ms: Option<u64>,
    /// The PKCS#11 functions --hsm-delay-ms delays.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "C_Encrypt",
        requires = "hsm_delay_ms"
    )]
    hsm_delay_calls: Vec<String>,
    /// With --hsm-delay-ms: C_Encrypt and C_Decrypt length queries (NULL output buffer, the
    /// first of cryptoki's two calls) are not delayed, as with a device whose client library
    /// answers them itself. Without it every call waits.
    #[arg(long, requires = "hsm_delay_ms")]
    hsm_delay_skips_length_queries: bool,
    /// Run the own daemon with `hsm.session_key_copies = false` (CMK versions used through
    /// their token objects), for A/B runs.
    #[arg(long)]
    no_session_key_copies: bool,
    /// Run the own daemon with `hsm.residency = "wrapped"` (docs/residency.md): the bench
    /// runs the security officer's ceremony on its fresh token before the daemon starts, and
    /// keys are blobs in the store unwrapped on the device.
    #[arg(long)]
    wrapped: bool,
    /// With --wrapped: `hsm.wrapped_cache` (unwrapped keys per worker; 0 unwraps every use).
    #[arg(long, requires = "wrapped")]
    wrapped_cache: Option<usize>,
    /// gRPC or AWS door: make this many symmetric keys (CreateKey over gRPC,
    /// --seed-concurrency) before the crypto suite, and send each Encrypt of the encrypt case
    /// to one of them drawn uniformly at random. With --wrapped, the encrypt case's raw
    /// baseline is then the cache miss (tag check + unwrap + encrypt + destroy on the device).
    #[arg(long, default_value_t = 0)]
    spread_keys: usize,
    /// Key kind of the sign and verify cases (MessageType RAW): ECDSA_SHA_256 on ECC_NIST_P256,
    /// RSASSA_PSS_SHA_256 on RSA_2048, or ED25519_SHA_512 on ECC_NIST_EDWARDS25519.
    #[arg(long, value_enum, default_value_t = Signing::Ecdsa)]
    signing: Signing,
    /// Own daemon only (not with --endpoint; crypto suite only): put the keys of the
    /// symmetric cases (encrypt, decrypt, generate-data-key*, re-encrypt, create-key) in a
    /// custom key store on a second SoftHSM2 token (an `[[hsm.cluster]]` of the daemon,
    /// created and connected through gRPC), and run their raw baseline on that token. Sign
    /// and verify keep default-store keys (a custom key store holds SYMMETRIC_DEFAULT keys
    /// only).
    #[arg(long, conflicts_with = "endpoint")]
    key_store: bool,
    /// Keys in the store for the startup suite.
    #[arg(long, default_value_t = 10_000)]
    startup_keys: usize,
    /// How the startup suite makes its keys: `api` (CreateKey through the daemon) or `direct`
    /// (with --wrapped: blobs made on the device by this process and rows written straight
    /// into the store while the daemon is stopped; for a million keys).
    #[arg(long, value_enum, default_value_t = StartupSeed::Api)]
    startup_seed: StartupSeed,
    /// Restarts timed after seeding (each one its own JSON line): several start-up samples
    /// from one seeding, which for a million keys takes minutes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    startup_restarts: u32,
    /// Concurrent CreateKey calls while seeding the startup suite's keys.
    #[arg(long, default_value_t = 8)]
    seed_concurrency: usize,
    /// Most seconds spent seeding keys for the startup suite.
    #[arg(long, default_value_t = 1200)]
    seed_timeout: u64,

    // ---- existing daemon
    /// Use this daemon (`https://host:port`) instead of starting one. Repeat it (or separate
    /// with commas) for several nodes of one cluster: worker `i` starts on endpoint `i % n`,
    /// an endpoint that cannot be reached or answers UNAVAILABLE is skipped, and each case's
    /// JSON has the per-endpoint counts (`endpoints`).
    #[arg(long, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Rounds of the propagation suite.
    #[arg(long, default_value_t = 50)]
    propagation_rounds: usize,
    /// Own daemon: keep the metadata in this PostgreSQL database
    /// (`postgres://user@host:port/db`, no password) instead of SQLite; the daemon gets
    /// `[node] id = "bench"`. With --store-password-file.
    #[arg(long, requires = "store_password_file")]
    store_postgres: Option<String>,
    /// The password file of --store-postgres (mode 0600).
    #[arg(long, requires = "store_postgres")]
    store_password_file: Option<PathBuf>,
    /// CA certificate of the existing daemon.
    #[arg(long, requires = "endpoint")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (mtls) for the existing daemon.
    #[arg(long, requires = "endpoint")]
    client_cert: Option<PathBuf>,
    /// Client key (mtls) for the existing daemon.
    #[arg(long, requires = "endpoint")]
    client_key: Option<PathBuf>,
    /// Name to verify in the server certificate.
    #[arg(long)]
    tls_domain: Option<String>,
    /// SigV4 access key id.
    #[arg(long, default_value = DEFAULT_ACCESS_KEY)]
    access_key_id: String,
    /// File holding the SigV4 secret (existing daemon; else AWS_SECRET_ACCESS_KEY).
    #[arg(long, requires = "endpoint")]
    secret_access_key_file: Option<PathBuf>,
    /// PID of the existing daemon, XKS proxy or --peer-xks peer, to read its CPU and memory.
    #[arg(long, visible_alias = "peer-pid", requires = "measured_server")]
    server_pid: Option<u32>,
    /// Key to use with the existing daemon (default: create one).
    #[arg(long, requires = "endpoint")]
    key_id: Option<String>,
    /// Raw baseline against an existing daemon's (or XKS proxy's) token: the PKCS#11 module.
    #[arg(long, requires = "external")]
    hsm_module: Option<PathBuf>,
    /// Raw baseline against an existing daemon's (or XKS proxy's) token: its label.
    #[arg(long, requires = "external")]
    token_label: Option<String>,
    /// Raw baseline against an existing daemon's (or XKS proxy's) token: SOFTHSM2_CONF.
    #[arg(long, requires = "external")]
    softhsm2_conf: Option<PathBuf>,
    /// Raw baseline against an existing daemon's (or XKS proxy's) token: environment
    /// variable holding the PIN.
    #[arg(long, requires = "external", default_value = PIN_ENV)]
    pin_env: String,

    // ---- an existing XKS proxy (--door xks)
    /// Send the XKS load to this proxy (`https://host:port`) instead of the own daemon's XKS
    /// door: p11kms or any other XKS proxy, e.g. AWS's sample. Needs --door xks,
    /// --xks-credentials and --xks-key-id (and --xks-ca for https).
    #[arg(long, requires_all = ["xks_credentials", "xks_key_id"])]
    xks_endpoint: Option<String>,
    /// With --door xks and the own daemon: also measure this running XKS proxy (e.g. AWS's
    /// sample, `https://host:port`) in the same run, own-daemon and peer phases alternating;
    /// --xks-uri-prefix, --xks-credentials, --xks-key-id, --xks-ca and --peer-pid describe it.
    #[arg(long, requires_all = ["xks_credentials", "xks_key_id"], conflicts_with_all = ["endpoint", "xks_endpoint"])]
    peer_xks: Option<String>,
    /// The proxy's URI path prefix (before `/kms/xks/v1`; empty by default).
    #[arg(long, requires = "xks_remote", default_value = "")]
    xks_uri_prefix: String,
    /// The proxy's SigV4 credential: a JSON file `[{"access_key_id": ..., "secret_access_key":
    /// ...}]` (the XKS door's credentials-file format; the first one is used).
    #[arg(long, requires = "xks_remote")]
    xks_credentials: Option<PathBuf>,
    /// The external key id to encrypt and decrypt under.
    #[arg(long, requires = "xks_remote")]
    xks_key_id: Option<String>,
    /// The proxy's CA certificate (PEM), for https.
    #[arg(long, requires = "xks_remote")]
    xks_ca: Option<PathBuf>,
    /// An existing daemon's AWS door (`https://host:port`, or `http://` on loopback) for
    /// `--door aws`; --endpoint (gRPC) makes the key, --ca-cert and --tls-domain apply.
    #[arg(long, requires = "endpoint")]
    aws_endpoint: Option<String>,
    /// The region of the XKS SigV4 scope.
    #[arg(long, default_value = "us-east-1")]
    xks_region: String,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

// ================================================================ /proc

/// Clock ticks per second for /proc accounting (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime, in ticks, of a /proc/.../stat file.
fn stat_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU of a process: total, of its `hsm-worker-*` threads (the PKCS#11 calls), and per
/// thread name (trailing `-N` / digits stripped: `hsm-worker`, `tokio-rt-worker`, ...),
/// with each thread name's context switches.
#[derive(Clone, Debug, Default)]
struct ProcCpu {
    total: u64,
    hsm: u64,
    by_thread: BTreeMap<String, u64>,
    switches: BTreeMap<String, Switches>,
}

/// Context switches of a thread (or a group of threads): `[voluntary, involuntary]`. A
/// voluntary one is a sleep (a wait for a lock, a queue, the disk, the network); an
/// involuntary one is a preemption.
type Switches = [u64; 2];

/// Adds `v` to `sum`, or subtracts it with `minus` (saturating: a thread that exited
/// between two readings drops out of the later one).
fn add_switches(sum: &mut Switches, v: Switches, minus: bool) {
    for (s, v) in sum.iter_mut().zip(v) {
        *s = if minus { s.saturating_sub(v) } else { *s + v };
    }
}

/// A thread's context switches from its `/proc/<pid>/task/<tid>/status`.
fn thread_switches(path: &str) -> Switches {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    [
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    ]
}

fn thread_group(comm: &str) -> String {
    comm.trim()
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches(['-', '_'])
        .to_string()
}

fn proc_cpu(pid: u32) -> Option<ProcCpu> {
    let total = stat_ticks(&format!("/proc/{pid}/stat"))?;
    let mut out = ProcCpu {
        total,
        ..Default::default()
    };
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        // Bounded by the daemon's thread count.
        for t in rd.flatten().take(10_000) {
            let tid = t.file_name();
            let tid = tid.to_string_lossy();
            let comm =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            let ticks = stat_ticks(&format!("/proc/{pid}/task/{tid}/stat")).unwrap_or(0);
            if comm.starts_with("hsm-worker") {
                out.hsm += ticks;
            }
            let group = thread_group(&comm);
            let sw = thread_switches(&format!("/proc/{pid}/task/{tid}/status"));
            add_switches(out.switches.entry(group.clone()).or_default(), sw, false);
            *out.by_thread.entry(group).or_default() += ticks;
        }
    }
    Some(out)
}

fn self_cpu() -> u64 {
    stat_ticks("/proc/self/stat").unwrap_or(0)
}

fn thread_cpu() -> u64 {
    stat_ticks("/proc/thread-self/stat").unwrap_or(0)
}

/// (VmRSS, VmHWM) in kB.
fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// ================================================================ own daemon

/// The own daemon's world: token, PKI, config. Removed at the end unless kept.
struct World {
    dir: PathBuf,
    pki: PathBuf,
    config: PathBuf,
    softhsm_conf: PathBuf,
    module: PathBuf,
    pin: Pin,
    /// With `--key-store`: the cluster token's user PIN (the store's KeyStorePassword).
    cluster_pin: Option<Pin>,
    addr: SocketAddr,
    /// The daemon's Prometheus endpoint (audit fsync figures).
    metrics_addr: SocketAddr,
    /// With `--door xks`: the XKS door's address and its key store's SigV4 credential.
    xks: Option<(SocketAddr, xks::Credential)>,
    /// With `--door aws`: the AWS door's address.
    aws: Option<SocketAddr>,
    /// With `--hsm-delay-ms`: the fault shim between the daemon and the real module.
    shim: Option<shim::Shim>,
    daemon_bin: PathBuf,
    keep: bool,
}

impl World {
    /// The daemon's `hsm.module`: the fault shim with `--hsm-delay-ms`, else the real module.
    fn daemon_module(&self) -> &Path {
        self.shim.as_ref().map_or(&self.module, |s| &s.lib)
    }

    /// The own daemon's door at `scheme://addr`, its certificate verified as `localhost`
    /// through the world's dev CA.
    fn endpoint(
        &self,
        scheme: &str,
        addr: SocketAddr,
        what: &str,
    ) -> Result<http_client::Endpoint, String> {
        http_client::Endpoint::new(
            &format!("{scheme}://{addr}"),
            Some(&self.pki.join("ca.pem")),
            Some("localhost"),
            what,
        )
    }

    /// With `--hsm-delay-ms`: builds the fault shim in the work dir, forwarding to the real
    /// module, with its delay control files.
    fn attach_shim(&mut self, cli: &Cli) -> Result<(), String> {
        if let Some(ms) = cli.hsm_delay_ms {
            self.shim = Some(shim::build(
                &self.dir,
                &self.module,
                ms,
                &cli.hsm_delay_calls,
                cli.hsm_delay_skips_length_queries,
            )?);
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("p11kms-bench: kept {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("p11kms-bench: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A daemon child process, killed on drop.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    fn spawn(world: &World) -> Result<Daemon, String> {
        let log = world.dir.join("daemon.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&world.daemon_bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&world.config)
            .env(PIN_ENV, world.pin.expose())
            .env("SOFTHSM2_CONF", &world.softhsm_conf)
            .env_remove("RUST_LOG")
            .env_remove("P11KMS_SHIM_TARGET")
            .env_remove("P11KMS_SHIM_CONTROL");
        if let Some(shim) = &world.shim {
            cmd.env("P11KMS_SHIM_TARGET", &shim.target)
                .env("P11KMS_SHIM_CONTROL", &shim.control);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", world.daemon_bin.display()))?;
        let pid = child.id();
        Ok(Daemon {
            child: Some(child),
            pid,
            log,
        })
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "daemon exited ({status}); log tail:\n{}",
                log_tail(&self.log)
            )),
            _ => None,
        }
    }

    /// SIGTERM, wait up to 15 s, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The audit writer's cumulative counters from the daemon's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct AuditCounters {
    events: f64,
    fsyncs: f64,
    fsync_secs: f64,
}

/// Reads [`AuditCounters`] from the Prometheus text at `http://addr/metrics` (`None` if the
/// endpoint does not answer within 2 s or lacks the figures).
fn audit_counters(addr: SocketAddr) -> Option<AuditCounters> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.take(16 << 20).read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(AuditCounters {
        events: value("p11kms_audit_events_total")?,
        fsyncs: value("p11kms_audit_fsync_duration_seconds_count")?,
        fsync_secs: value("p11kms_audit_fsync_duration_seconds_sum")?,
    })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("port probe: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Builds the own daemon's world: its tokens (the default one and, with `--key-store`, the
/// cluster's), then its PKI, credentials and config.
fn build_world(cli: &Cli) -> Result<World, String> {
    let mut world = new_world(cli, daemon_bin(cli)?)?;
    world.attach_shim(cli)?;
    init_token(cli, &world, TOKEN_LABEL, &world.pin)?;
    if let Some(pin) = &world.cluster_pin {
        init_token(cli, &world, CLUSTER_TOKEN_LABEL, pin)?;
    }
    write_world_files(cli, &world)?;
    Ok(world)
}

/// The daemon binary: `--daemon-bin`, or `p11kms` next to this binary; it must exist.
fn daemon_bin(cli: &Cli) -> Result<PathBuf, String> {
    let daemon_bin = match &cli.daemon_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .ok_or("no directory for the current executable")?
            .join("p11kms"),
    };
    if !daemon_bin.exists() {
        return Err(format!(
            "daemon binary {} not found (cargo build --release --bins, or --daemon-bin)",
            daemon_bin.display()
        ));
    }
    Ok(daemon_bin)
}

/// The world's paths, PINs and ports, in its (created) work dir: no file made yet.
fn new_world(cli: &Cli, daemon_bin: PathBuf) -> Result<World, String> {
    let dir = match &cli.workdir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("p11kms-bench-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let module = p11kms::devsetup::find_softhsm_module()
        .ok_or("SoftHSM2 module not found (apt-get install softhsm2)")?;
    Ok(World {
        pki: dir.join("pki"),
        config: dir.join("p11kms.toml"),
        softhsm_conf: dir.join("softhsm").join("softhsm2.conf"),
        module,
        pin: Pin::new(random_secret()),
        // KeyStorePassword is at most 32 characters (AWS): 32 hex digits, 122 random bits.
        cluster_pin: cli
            .key_store
            .then(|| Pin::new(uuid::Uuid::new_v4().simple().to_string())),
        addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        xks: match cli.door {
            Door::Xks => Some((
                SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                xks::random_credential(random_secret()),
            )),
            Door::Grpc | Door::Aws => None,
        },
        aws: match cli.door {
            Door::Aws => Some(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
            Door::Grpc | Door::Xks => None,
        },
        shim: None,
        daemon_bin,
        keep: cli.keep_workdir,
        dir,
    })
}

/// The world's dev PKI (CA, server, admin client), private credentials copy, data dir and
/// daemon config file.
fn write_world_files(cli: &Cli, world: &World) -> Result<(), String> {
    p11kms::devsetup::ensure_ca_and_server(&world.pki).map_err(|e| e.to_string())?;
    p11kms::devsetup::issue_client_cert(&world.pki, ADMIN_CERT, None).map_err(|e| e.to_string())?;

    let id = &cli.identity_dir;
    let accounts = identity_accounts(id)?;
    let creds = private_credentials(id, world)?;
    let mut text = config_text(cli, world, &accounts, &creds);
    if let Some((addr, cred)) = &world.xks {
        let principal = access_key_arn(&id.join("credentials.json"), &cli.access_key_id)?;
        write_private(
            &xks_credentials_file(world),
            &xks::credentials_file_text(cred),
        )?;
        text.push_str(&xks_section(world, *addr, &principal, &cli.xks_region));
    }
    std::fs::create_dir_all(world.dir.join("data")).map_err(|e| e.to_string())?;
    std::fs::write(&world.config, text).map_err(|e| e.to_string())
}

/// The `[hsm]` lines of `--wrapped`.
fn wrapped_lines(cli: &Cli) -> String {
    match (cli.wrapped, cli.wrapped_cache) {
        (false, _) => String::new(),
        (true, None) => "residency = \"wrapped\"\n".into(),
        (true, Some(n)) => format!("residency = \"wrapped\"\nwrapped_cache = {n}\n"),
    }
}

/// Creates SoftHSM2 token `label` with user PIN `pin` in the world's token directory with
/// `init-token.sh`; PINs reach the script through its environment only. With `--wrapped`,
/// the default token's master key is made trusted at once (the SO ceremony, in process).
fn init_token(cli: &Cli, world: &World, label: &str, pin: &Pin) -> Result<(), String> {
    let so_pin = Zeroizing::new(random_secret());
    let out = Command::new("bash")
        .arg(&cli.init_token_script)
        .arg(world.dir.join("softhsm"))
        .arg(label)
        .env("P11KMS_SO_PIN", so_pin.as_str())
        .env("P11KMS_USER_PIN", pin.expose())
        .output()
        .map_err(|e| format!("run {}: {e}", cli.init_token_script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "init-token.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if cli.wrapped && label == TOKEN_LABEL {
        // The bench's own process loads the module: its SOFTHSM2_CONF is the world's.
        std::env::set_var("SOFTHSM2_CONF", &world.softhsm_conf);
        let so = Pin::new(so_pin.as_str());
        let v1 = p11kms::hsm::MasterVersion(1);
        p11kms::hsm::trust_master(&world.module, label, &so, pin, v1)
            .map_err(|e| format!("the master key ceremony failed: {e}"))?;
    }
    Ok(())
}

/// The account ids (`<12 digits>.json` files) of the identity directory, sorted; the
/// directory must hold a `credentials.json`.
fn identity_accounts(id: &Path) -> Result<Vec<String>, String> {
    if !id.join("credentials.json").exists() {
        return Err(format!("{}: no credentials.json", id.display()));
    }
    let mut accounts = Vec::new();
    for e in std::fs::read_dir(id).map_err(|e| format!("{}: {e}", id.display()))? {
        let name = e.map_err(|e| e.to_string())?.file_name();
        let name = name.to_string_lossy();
        if let Some(acct) = name.strip_suffix(".json") {
            if acct.len() == 12 && acct.bytes().all(|b| b.is_ascii_digit()) {
                accounts.push(acct.to_string());
            }
        }
    }
    accounts.sort();
    Ok(accounts)
}

/// A private (0600) copy of the identity directory's `credentials.json` in the work dir.
fn private_credentials(id: &Path, world: &World) -> Result<PathBuf, String> {
    // The daemon refuses a credentials file others may read: use a private copy.
    let creds = world.dir.join("credentials.json");
    std::fs::copy(id.join("credentials.json"), &creds).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
    }
    Ok(creds)
}

/// Writes `text` to a new file at `path` readable by its owner only (0600 from creation).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The own XKS key store's credentials file (`--door xks`).
fn xks_credentials_file(world: &World) -> PathBuf {
    world.dir.join("xks-credentials.json")
}

/// The URI path prefix of the own daemon's XKS key store.
const XKS_PREFIX: &str = "/bench";

/// The `[xks]` section of `--door xks`: the door on its own loopback port (TLS with the
/// server's certificate), one key store run as the `--access-key-id` user of the identity
/// fixtures (the admin by default, whom the default key policy lets encrypt).
fn xks_section(world: &World, addr: SocketAddr, principal: &str, region: &str) -> String {
    format!(
        "\n[xks]\nenabled = true\nlisten = \"{addr}\"\nregion = {}\n\n[[xks.key_store]]\n\
         uri_path_prefix = \"{XKS_PREFIX}\"\nprincipal = {}\ncredentials_file = {}\n",
        toml_str(region),
        toml_str(principal),
        toml_str(&xks_credentials_file(world).display().to_string()),
    )
}

/// The `UserArn` of access key `access_key_id` in an identity `credentials.json`.
fn access_key_arn(path: &Path, access_key_id: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    v["AccessKeys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["AccessKeyId"] == access_key_id))
        .and_then(|k| k["UserArn"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no UserArn for {access_key_id}", path.display()))
}

/// The daemon's config file: server, HSM, store, log, identity, metrics, audit and one
/// `[[identity.account]]` per account.
fn config_text(cli: &Cli, world: &World, accounts: &[String], creds: &Path) -> String {
    let id = &cli.identity_dir;
    let q = |p: &Path| toml_str(&p.display().to_string());
    let mut text = format!(
        "[server]\nlisten = \"{addr}\"\ntls_cert = {cert}\ntls_key = {key}\nclient_ca = {ca}\n\n\
         [hsm]\nmodule = {module}\ntoken_label = \"{TOKEN_LABEL}\"\npin_env = \"{PIN_ENV}\"\nsofthsm2_conf = {conf}\n{workers}\n\
         [store]\ndata_dir = {data}\n\n[log]\nlevel = {level}\n\n[identity]\ncredentials = {creds}\n",
        addr = world.addr,
        cert = q(&world.pki.join("server.pem")),
        key = q(&world.pki.join("server-key.pem")),
        ca = q(&world.pki.join("ca.pem")),
        module = q(world.daemon_module()),
        conf = q(&world.softhsm_conf),
        workers = cli
            .hsm_workers
            .map(|w| format!("workers = {w}\n"))
            .unwrap_or_default()
            + if cli.no_session_key_copies {
                "session_key_copies = false\n"
            } else {
                ""
            }
            + &cli
                .hsm_dispatch
                .as_ref()
                .map(|d| format!("dispatch = \"{d}\"\n"))
                .unwrap_or_default()
            + &wrapped_lines(cli),
        data = q(&world.dir.join("data")),
        level = toml_str(&cli.daemon_log_level),
        creds = q(creds),
    );
    if let (Some(url), Some(pw)) = (&cli.store_postgres, &cli.store_password_file) {
        text = text.replace(
            "[store]\n",
            &format!(
                "[store]\nbackend = \"postgres\"\nurl = {}\npassword_file = {}\n",
                toml_str(url),
                q(pw)
            ),
        );
        text.push_str("\n[node]\nid = \"bench\"\n");
    }
    text.push_str(&format!(
        "\n[metrics]\nlisten = \"{}\"\n\n[kms]\nregion = {}\n",
        world.metrics_addr,
        toml_str(&cli.region)
    ));
    if let Some(n) = cli.key_usage_flush_secs {
        text.push_str(&format!("key_usage_flush_interval_secs = {n}\n"));
    }
    if let Some(addr) = world.aws {
        text.push_str(&format!(
            "\n[aws_json]\nenabled = true\nlisten = \"{addr}\"\ntls = {}\n",
            cli.aws_transport == AwsTransport::Https
        ));
    }
    if cli.audit_durability.is_some()
        || cli.audit_preallocate_bytes.is_some()
        || cli.audit_checkpoint_every_events.is_some()
    {
        text.push_str("\n[audit]\n");
    }
    if let Some(d) = &cli.audit_durability {
        text.push_str(&format!("durability = {}\n", toml_str(d)));
    }
    if let Some(n) = cli.audit_preallocate_bytes {
        text.push_str(&format!("preallocate_bytes = {n}\n"));
    }
    if let Some(n) = cli.audit_checkpoint_every_events {
        text.push_str(&format!("checkpoint_every_events = {n}\n"));
    }
    if world.cluster_pin.is_some() {
        text.push_str(&cluster_section(world));
    }
    for a in accounts {
        text.push_str(&format!(
            "\n[[identity.account]]\naccount_id = \"{a}\"\nauthorization_details = {}\n",
            q(&id.join(format!("{a}.json")))
        ));
    }
    text
}

/// The `[[hsm.cluster]]` entry of the `--key-store` token: the default token's module (and
/// token directory), the world's dev CA as trust anchor. No PIN: the key administrator gives
/// it to CreateCustomKeyStore.
fn cluster_section(world: &World) -> String {
    format!(
        "\n[[hsm.cluster]]\nid = \"{CLUSTER_ID}\"\nmodule = {}\ntoken_label = \"{CLUSTER_TOKEN_LABEL}\"\ntrust_anchor_file = {}\n",
        toml_str(&world.daemon_module().display().to_string()),
        toml_str(&trust_anchor_file(world).display().to_string()),
    )
}

/// The `--key-store` cluster's trust anchor: the world's dev CA certificate.
fn trust_anchor_file(world: &World) -> PathBuf {
    world.pki.join("ca.pem")
}

fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

// ================================================================ client side

/// How to reach the daemon and who to be.
#[derive(Clone)]
struct Target {
    /// The endpoint, for reports.
    endpoint: String,
    /// The further endpoints of `--endpoint` (the other nodes), in order.
    more: Vec<Target>,
    cfg: ClientConfig,
    authority: String,
    credentials: Option<AccessKeyCredentials>,
    /// The SigV4 region (`--region`).
    region: String,
}

impl Target {
    fn own(world: &World, cli: &Cli) -> Result<Target, String> {
        let mut cfg = ClientConfig {
            endpoint: Some(format!("https://{}", world.addr)),
            ca_cert: Some(world.pki.join("ca.pem")),
            tls_domain: Some("localhost".into()),
            ..Default::default()
        };
        let mut credentials = None;
        match cli.auth {
            Auth::Mtls => {
                cfg.client_cert = Some(world.pki.join(format!("{ADMIN_CERT}.pem")));
                cfg.client_key = Some(world.pki.join(format!("{ADMIN_CERT}-key.pem")));
            }
            Auth::Sigv4 => {
                credentials = Some(fixture_credentials(
                    &cli.identity_dir.join("credentials.json"),
                    &cli.access_key_id,
                )?);
            }
        }
        Ok(Target {
            endpoint: format!("https://{}", world.addr),
            more: Vec::new(),
            cfg,
            authority: world.addr.to_string(),
            credentials,
            region: cli.region.clone(),
        })
    }

    /// The existing daemons of `--endpoint`: the first, with the others in `more`.
    fn existing(cli: &Cli, endpoints: &[String]) -> Result<Target, String> {
        let (first, others) = endpoints.split_first().ok_or("no --endpoint")?;
        let mut target = Target::one_existing(cli, first)?;
        target.more = others
            .iter()
            .map(|e| Target::one_existing(cli, e))
            .collect::<Result<_, _>>()?;
        Ok(target)
    }

    fn one_existing(cli: &Cli, endpoint: &str) -> Result<Target, String> {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("--endpoint: {e}"))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or("--endpoint has no host")?;
        let mut cfg = ClientConfig {
            endpoint: Some(endpoint.to_string()),
            ca_cert: cli.ca_cert.clone(),
            tls_domain: cli.tls_domain.clone(),
            ..Default::default()
        };
        let mut credentials = None;
        match cli.auth {
            Auth::Mtls => {
                cfg.client_cert = cli.client_cert.clone();
                cfg.client_key = cli.client_key.clone();
            }
            Auth::Sigv4 => credentials = Some(existing_credentials(cli)?),
        }
        Ok(Target {
            endpoint: endpoint.to_string(),
            more: Vec::new(),
            cfg,
            authority,
            credentials,
            region: cli.region.clone(),
        })
    }

    fn signer(&self) -> Option<Signer> {
        self.credentials.clone().map(|credentials| Signer {
            credentials,
            region: self.region.clone(),
            authority: self.authority.clone(),
        })
    }

    fn auth_name(&self) -> &'static str {
        if self.credentials.is_some() {
            "sigv4"
        } else {
            "mtls"
        }
    }
}

/// The SigV4 credential for an existing daemon: `--access-key-id` with the secret of
/// `--secret-access-key-file` or `AWS_SECRET_ACCESS_KEY`.
fn existing_credentials(cli: &Cli) -> Result<AccessKeyCredentials, String> {
    let secret = match &cli.secret_access_key_file {
        Some(p) => Zeroizing::new(
            std::fs::read_to_string(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => Zeroizing::new(
            std::env::var("AWS_SECRET_ACCESS_KEY")
                .map_err(|_| "sigv4 needs --secret-access-key-file or AWS_SECRET_ACCESS_KEY")?,
        ),
    };
    Ok(AccessKeyCredentials {
        access_key_id: cli.access_key_id.clone(),
        secret_access_key: secret,
        session_token: None,
    })
}

fn fixture_credentials(path: &Path, access_key_id: &str) -> Result<AccessKeyCredentials, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = v["AccessKeys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["AccessKeyId"] == access_key_id))
        .and_then(|k| k["SecretAccessKey"].as_str())
        .ok_or_else(|| format!("{}: no access key {access_key_id}", path.display()))?;
    Ok(AccessKeyCredentials {
        access_key_id: access_key_id.to_string(),
        secret_access_key: Zeroizing::new(secret.to_string()),
        session_token: None,
    })
}

/// Shared per-connection clients plus the optional signer.
#[derive(Clone)]
struct Conn {
    clients: Vec<Client>,
    /// The SecurityTokenService on the same channels (the caller-identity case).
    sts: Vec<StsClient>,
    signer: Option<Signer>,
}

impl Conn {
    async fn open(target: &Target, channels: usize) -> Result<Conn, String> {
        let mut clients = Vec::new();
        let mut sts = Vec::new();
        for _ in 0..channels.max(1) {
            let ch = target
                .cfg
                .channel()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            sts.push(SecurityTokenServiceClient::new(ch.clone()));
            clients.push(KeyManagementServiceClient::new(ch));
        }
        Ok(Conn {
            clients,
            sts,
            signer: target.signer(),
        })
    }

    fn req<T: prost::Message>(&self, msg: T, method: &str) -> tonic::Request<T> {
        self.req_of(msg, "KeyManagementService", method)
    }

    /// A request to `service`'s `method`, signed when the load uses SigV4.
    fn req_of<T: prost::Message>(&self, msg: T, service: &str, method: &str) -> tonic::Request<T> {
        match &self.signer {
            Some(s) => s.sign(msg, &format!("/p11kms.v1.{service}/{method}")),
            None => tonic::Request::new(msg),
        }
    }

    fn client(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }
}

fn reason(s: &tonic::Status) -> String {
    aws_reason(s).unwrap_or_else(|| format!("grpc:{:?}", s.code()))
}

/// CreateKey of a symmetric key, in custom key store `store` if given (else the default
/// store); answers the key id.
async fn create_key(
    conn: &Conn,
    c: &mut Client,
    store: Option<&str>,
) -> Result<String, tonic::Status> {
    create_key_of(conn, c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", store).await
}

/// CreateKey of `spec` and `usage`, in custom key store `store` (`Origin: AWS_CLOUDHSM`) if
/// given; answers the key id.
async fn create_key_of(
    conn: &Conn,
    c: &mut Client,
    spec: &str,
    usage: &str,
    store: Option<&str>,
) -> Result<String, tonic::Status> {
    let r = c
        .create_key(conn.req(
            pb::CreateKeyRequest {
                description: "p11kms-bench".into(),
                key_spec: spec.into(),
                key_usage: usage.into(),
                origin: if store.is_some() { "AWS_CLOUDHSM" } else { "" }.into(),
                custom_key_store_id: store.unwrap_or_default().into(),
                ..Default::default()
            },
            "CreateKey",
        ))
        .await?;
    r.into_inner()
        .key_metadata
        .map(|m| m.key_id)
        .ok_or_else(|| tonic::Status::internal("CreateKey answered no metadata"))
}

/// Most time [`connect_key_store`] waits for the store to be CONNECTED.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// `--key-store`: CreateCustomKeyStore on the world's cluster (its dev-CA trust anchor, the
/// cluster token's PIN as KeyStorePassword), ConnectCustomKeyStore, then DescribeCustomKeyStores
/// until the store is CONNECTED (an error if FAILED or still not after [`CONNECT_TIMEOUT`]).
/// Answers the store id.
async fn connect_key_store(conn: &Conn, world: &World) -> Result<String, String> {
    let pin = world
        .cluster_pin
        .as_ref()
        .ok_or("the world has no cluster")?;
    let anchor = trust_anchor_file(world);
    let anchor =
        std::fs::read_to_string(&anchor).map_err(|e| format!("{}: {e}", anchor.display()))?;
    let failed = |what: &str, s: tonic::Status| format!("{what}: {}: {}", reason(&s), s.message());
    let mut c = conn.client(0);
    let id = c
        .create_custom_key_store(conn.req(
            pb::CreateCustomKeyStoreRequest {
                custom_key_store_name: "p11kms-bench".into(),
                cloud_hsm_cluster_id: CLUSTER_ID.into(),
                trust_anchor_certificate: anchor,
                key_store_password: pin.expose().to_owned(),
                custom_key_store_type: String::new(),
                ..Default::default()
            },
            "CreateCustomKeyStore",
        ))
        .await
        .map_err(|s| failed("CreateCustomKeyStore", s))?
        .into_inner()
        .custom_key_store_id;
    c.connect_custom_key_store(conn.req(
        pb::ConnectCustomKeyStoreRequest {
            custom_key_store_id: id.clone(),
        },
        "ConnectCustomKeyStore",
    ))
    .await
    .map_err(|s| failed("ConnectCustomKeyStore", s))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let r = c
            .describe_custom_key_stores(conn.req(
                pb::DescribeCustomKeyStoresRequest {
                    custom_key_store_id: id.clone(),
                    ..Default::default()
                },
                "DescribeCustomKeyStores",
            ))
            .await
            .map_err(|s| failed("DescribeCustomKeyStores", s))?
            .into_inner();
        let state = r.custom_key_stores.first().map(|s| {
            (
                s.connection_state.as_str(),
                s.connection_error_code.as_str(),
            )
        });
        match state {
            Some(("CONNECTED", _)) => break,
            Some(("FAILED", code)) => return Err(format!("custom key store {id} FAILED: {code}")),
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "custom key store {id} not CONNECTED within {} s: {state:?}",
                    CONNECT_TIMEOUT.as_secs()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    eprintln!(
        "p11kms-bench: custom key store {id} on {CLUSTER_ID} ({CLUSTER_TOKEN_LABEL}) is CONNECTED"
    );
    Ok(id)
}

fn sign_request(f: &Fixture) -> pb::SignRequest {
    pb::SignRequest {
        key_id: f.key_id.clone(),
        message: f.plaintext.clone(),
        message_type: "RAW".into(),
        signing_algorithm: f.signing.algorithm().into(),
        grant_tokens: vec![],
        dry_run: false,
    }
}

/// SecurityTokenService.GetCallerIdentity: the gRPC door's floor (authenticated and audited,
/// no HSM call).
async fn caller_identity(conn: &Conn, sts: &mut StsClient) -> Result<(), tonic::Status> {
    sts.get_caller_identity(conn.req_of(
        pb::GetCallerIdentityRequest {},
        "SecurityTokenService",
        "GetCallerIdentity",
    ))
    .await
    .map(drop)
}

/// Inputs the requests of one case reuse.
struct Fixture {
    op: Op,
    /// The key kind and algorithm of sign and verify.
    signing: Signing,
    key_id: String,
    /// The custom key store of `key_id` (and of the keys create-key makes), if any.
    store: Option<String>,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
    /// A signature over `plaintext` by `key_id` (verify only).
    signature: Vec<u8>,
    data_key_len: i32,
    /// `--door aws|xks`: the HTTP request of the case.
    http: Option<http_client::Call>,
    /// `--spread-keys`: the keys an Encrypt picks from (uniformly at random).
    spread: Option<Arc<Vec<String>>>,
}

/// A key of `keys` drawn uniformly at random (SplitMix64 over a process-wide counter: no
/// state per task, no lock).
fn pick_key(keys: &[String]) -> &str {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x9e37_79b9);
    let mut z = NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    &keys[(z % keys.len() as u64) as usize]
}

async fn one_request(conn: &Conn, c: &mut Client, f: &Fixture) -> Result<(), tonic::Status> {
    match f.op {
        Op::CallerIdentity => caller_identity(conn, &mut conn.sts[0].clone()).await?,
        Op::Encrypt => {
            let key_id = match &f.spread {
                Some(keys) => pick_key(keys).to_owned(),
                None => f.key_id.clone(),
            };
            c.encrypt(conn.req(
                pb::EncryptRequest {
                    key_id,
                    plaintext: f.plaintext.clone(),
                    ..Default::default()
                },
                "Encrypt",
            ))
            .await?;
        }
        Op::Decrypt => {
            c.decrypt(conn.req(
                pb::DecryptRequest {
                    ciphertext_blob: f.ciphertext.clone(),
                    ..Default::default()
                },
                "Decrypt",
            ))
            .await?;
        }
        Op::GenerateDataKey => {
            c.generate_data_key(conn.req(
                pb::GenerateDataKeyRequest {
                    key_id: f.key_id.clone(),
                    number_of_bytes: Some(f.data_key_len),
                    ..Default::default()
                },
                "GenerateDataKey",
            ))
            .await?;
        }
        Op::GenerateDataKeyWithoutPlaintext => {
            c.generate_data_key_without_plaintext(conn.req(
                pb::GenerateDataKeyWithoutPlaintextRequest {
                    key_id: f.key_id.clone(),
                    number_of_bytes: Some(f.data_key_len),
                    ..Default::default()
                },
                "GenerateDataKeyWithoutPlaintext",
            ))
            .await?;
        }
        Op::ReEncrypt => {
            c.re_encrypt(conn.req(
                pb::ReEncryptRequest {
                    ciphertext_blob: f.ciphertext.clone(),
                    destination_key_id: f.key_id.clone(),
                    ..Default::default()
                },
                "ReEncrypt",
            ))
            .await?;
        }
        Op::CreateKey => {
            create_key(conn, c, f.store.as_deref()).await?;
        }
        Op::TagResource => {
            c.tag_resource(conn.req(
                pb::TagResourceRequest {
                    key_id: f.key_id.clone(),
                    tags: vec![pb::Tag {
                        tag_key: "bench".into(),
                        tag_value: f.plaintext.len().to_string(),
                    }],
                },
                "TagResource",
            ))
            .await?;
        }
        Op::Sign => {
            c.sign(conn.req(sign_request(f), "Sign")).await?;
        }
        Op::Verify => {
            c.verify(conn.req(
                pb::VerifyRequest {
                    key_id: f.key_id.clone(),
                    message: f.plaintext.clone(),
                    message_type: "RAW".into(),
                    signature: f.signature.clone(),
                    signing_algorithm: f.signing.algorithm().into(),
                    grant_tokens: vec![],
                    dry_run: false,
                },
                "Verify",
            ))
            .await?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct PhaseResult {
    ops: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    server_cpu: Option<(u64, u64)>,
    server_threads: BTreeMap<String, u64>,
    server_switches: BTreeMap<String, Switches>,
    client_cpu: u64,
}

/// Awaits `$call` (a future of `Result<(), String>`, made anew each time) back to back until
/// `$deadline` (at most [`MAX_REQUESTS_PER_TASK`] times, each bounded by [`REQUEST_TIMEOUT`]):
/// the latencies of the successes (µs) and the error counts by name. (A macro, not a
/// function taking an async closure: such a closure's future is not `Send` for tokio.)
macro_rules! closed_loop {
    ($deadline:expr, $call:expr) => {{
        let mut lat: Vec<u32> = Vec::with_capacity(4096);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut n = 0u64;
        while n < MAX_REQUESTS_PER_TASK && Instant::now() < $deadline {
            let t = Instant::now();
            let r: Result<Result<(), String>, _> =
                tokio::time::timeout(REQUEST_TIMEOUT, $call).await;
            let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
            n += 1;
            match r {
                Ok(Ok(())) => lat.push(us),
                Ok(Err(name)) => *errors.entry(name).or_default() += 1,
                Err(_) => *errors.entry("ClientTimeout".into()).or_default() += 1,
            }
        }
        (lat, errors)
    }};
}

/// What a case's load goes through: gRPC channels, or one HTTP/1.1 connection per worker to
/// the AWS door or an XKS proxy.
#[derive(Clone)]
enum Load {
    Grpc(nodes::Nodes),
    Aws(Arc<aws::Pool>),
    Xks(Arc<xks::Pool>),
}

impl Load {
    /// The gRPC connection (fixtures, the startup suite); an error for the HTTP doors.
    fn grpc(&self) -> Result<&Conn, String> {
        match self {
            Load::Grpc(c) => Ok(c.first()),
            _ => Err("this needs the gRPC door (not --door aws|xks)".into()),
        }
    }

    /// The door, for the JSON.
    fn door(&self) -> Door {
        match self {
            Load::Grpc(_) => Door::Grpc,
            Load::Aws(_) => Door::Aws,
            Load::Xks(_) => Door::Xks,
        }
    }

    /// Whether the load goes over TLS.
    fn tls(&self) -> bool {
        match self {
            Load::Grpc(_) => true,
            Load::Aws(p) => p.tls(),
            Load::Xks(p) => p.tls(),
        }
    }

    /// Connections the load uses (gRPC channels, or HTTP connections).
    fn connections(&self) -> usize {
        match self {
            Load::Grpc(c) => c.connections(),
            Load::Aws(p) => p.len(),
            Load::Xks(p) => p.len(),
        }
    }

    /// What the HSM does per request of `op` on this door, for the JSON.
    fn hsm_calls(&self, op: Op, signing: Signing) -> &'static str {
        match (self, op) {
            (Load::Xks(_), Op::Encrypt) => {
                "C_GenerateRandom(12)+C_EncryptInit+C_Encrypt, then (p11kms, for the CDIV) \
                 C_DecryptInit+C_Decrypt"
            }
            (_, Op::Sign | Op::Verify) => signing.hsm_calls(op),
            _ => op.hsm_calls(),
        }
    }

    /// The raw loop's AAD: the size of the AAD the daemon's HSM sees for the door.
    fn aad(&self) -> Vec<u8> {
        if let Load::Xks(_) = self {
            return xks::raw_aad();
        }
        let header = p11kms::ciphertext::header(&[0u8; 16], 1, &[0u8; 12]);
        p11kms::ciphertext::aad(&header, &[])
    }

    /// Worker `i`'s closed loop on its connection until `deadline`.
    async fn run(
        &self,
        i: usize,
        fixture: &Fixture,
        deadline: Instant,
    ) -> (Vec<u32>, BTreeMap<String, u64>) {
        match (self, &fixture.http) {
            (Load::Grpc(nodes), _) if !nodes.is_single() => {
                let mut w = nodes.worker(i);
                closed_loop!(deadline, nodes.call(&mut w, fixture))
            }
            (Load::Grpc(nodes), _) if fixture.op == Op::CallerIdentity => {
                let conn = nodes.first();
                let mut sts = conn.sts[i % conn.sts.len()].clone();
                closed_loop!(deadline, async {
                    caller_identity(conn, &mut sts)
                        .await
                        .map_err(|s| reason(&s))
                })
            }
            (Load::Grpc(nodes), _) => {
                let conn = nodes.first();
                let mut c = conn.client(i);
                closed_loop!(deadline, async {
                    one_request(conn, &mut c, fixture)
                        .await
                        .map_err(|s| reason(&s))
                })
            }
            (Load::Aws(pool), Some(_)) if fixture.spread.is_some() => {
                let keys = fixture.spread.as_deref().map_or(&[][..], Vec::as_slice);
                let payload = fixture.plaintext.len();
                let mut conn = pool.worker(i).await;
                closed_loop!(deadline, async {
                    let call = aws::encrypt_call(pick_key(keys), payload);
                    pool.call(&mut conn, &call).await
                })
            }
            (Load::Aws(pool), Some(call)) => {
                let mut conn = pool.worker(i).await;
                closed_loop!(deadline, pool.call(&mut conn, call))
            }
            (Load::Xks(pool), Some(call)) => {
                let mut conn = pool.worker(i).await;
                closed_loop!(deadline, pool.call(&mut conn, call))
            }
            (_, None) => (
                Vec::new(),
                BTreeMap::from([("NoHttpRequest".to_string(), 1)]),
            ),
        }
    }
}

/// One closed-loop phase: `concurrency` tasks, each back to back until `dur` has passed.
async fn daemon_phase(
    load: &Load,
    fixture: &Arc<Fixture>,
    concurrency: usize,
    dur: Duration,
    server_pid: Option<u32>,
) -> PhaseResult {
    let cpu0 = server_pid.and_then(proc_cpu);
    let self0 = self_cpu();
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency.max(1) {
        let load = load.clone();
        let fixture = fixture.clone();
        tasks.push(tokio::spawn(async move {
            load.run(i, &fixture, deadline).await
        }));
    }
    let mut out = PhaseResult::default();
    for t in tasks {
        match t.await {
            Ok((lat, errors)) => {
                out.ops += lat.len() as u64;
                if out.latencies_us.len() + lat.len() <= MAX_SAMPLES {
                    out.latencies_us.extend_from_slice(&lat);
                }
                for (k, v) in errors {
                    *out.errors.entry(k).or_default() += v;
                }
            }
            Err(e) => {
                *out.errors
                    .entry(format!("ClientTaskFailed: {e}"))
                    .or_default() += 1
            }
        }
    }
    out.elapsed = start.elapsed();
    out.client_cpu = self_cpu().saturating_sub(self0);
    if let (Some(a), Some(b)) = (cpu0, server_pid.and_then(proc_cpu)) {
        out.server_cpu = Some((b.total.saturating_sub(a.total), b.hsm.saturating_sub(a.hsm)));
        // Threads that exited during the phase are missing from `b`; new ones count from 0.
        for (name, t) in &b.by_thread {
            let before = a.by_thread.get(name).copied().unwrap_or(0);
            out.server_threads
                .insert(name.clone(), t.saturating_sub(before));
        }
        for (name, sw) in &b.switches {
            let mut d = *sw;
            add_switches(
                &mut d,
                a.switches.get(name).copied().unwrap_or_default(),
                true,
            );
            out.server_switches.insert(name.clone(), d);
        }
    }
    out
}

fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Samples VmRSS of `pid` every 200 ms until stopped; returns the peak seen (kB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64, u64)>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut peak, mut sum, mut n) = (0u64, 0u64, 0u64);
            // Bounded: at most one hour of samples.
            for _ in 0..18_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Some((rss, _)) = proc_mem(pid) {
                    peak = peak.max(rss);
                    sum += rss;
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (peak, sum.checked_div(n).unwrap_or(0), n)
        });
        RssSampler { stop, task }
    }

    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or((0, 0, 0))
    }
}

/// Everything a crypto case needs.
struct Bench<'a> {
    cli: &'a Cli,
    rt: &'a tokio::runtime::Runtime,
    load: Load,
    auth: &'static str,
    server_pid: Option<u32>,
    /// The daemon's metrics endpoint, to read the audit writer's fsync counters.
    metrics: Option<SocketAddr>,
    /// The raw baseline on the default token.
    raw: Option<RawBench>,
    /// The raw baseline on the `--key-store` cluster token.
    raw_custom: Option<RawBench>,
    /// The `--key-store` custom key store (connected), if any.
    store_id: Option<String>,
    /// The key of the symmetric cases (in `store_id` if set).
    key_id: String,
    tck: f64,
    cores: usize,
    token_keys_note: Option<usize>,
    /// `--peer-xks`: the peer XKS proxy measured beside the own daemon.
    peer: Option<Peer>,
    /// The own daemon's `hsm.workers` (for the `--hsm-delay-ms` ceiling).
    hsm_workers: Option<usize>,
    /// `--spread-keys`: the encrypt case's keys.
    spread: Option<Arc<Vec<String>>>,
}

/// The `--peer-xks` proxy: its load (its key) and its process (`--peer-pid`).
struct Peer {
    load: Load,
    pid: Option<u32>,
}

/// Who a JSON line measured: the own daemon (or `--endpoint`), the `--peer-xks` peer, or
/// an `--xks-endpoint` proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measuring {
    P11kms,
    Peer,
    XksEndpoint,
}

impl Measuring {
    /// The JSON's `"target"`.
    fn name(self) -> &'static str {
        match self {
            Measuring::P11kms => "p11kms",
            Measuring::Peer => "peer",
            Measuring::XksEndpoint => "xks-endpoint",
        }
    }
}

impl Bench<'_> {
    /// Whether case `op` is the wrapped-residency spread over `--spread-keys` keys, whose
    /// raw baseline is the cache miss.
    fn spread_miss(&self, op: Op) -> bool {
        op == Op::Encrypt && self.spread.is_some() && self.cli.wrapped
    }

    /// The case's device calls per request, for the JSON.
    fn hsm_calls_of(&self, load: &Load, op: Op) -> &'static str {
        match self.spread_miss(op) {
            true => "miss: C_Verify(HMAC tag)+C_UnwrapKey(AES-KWP)+C_GenerateRandom(12)+C_EncryptInit+C_Encrypt+C_DestroyObject",
            false => load.hsm_calls(op, self.cli.signing),
        }
    }

    /// The custom key store the case's key lives in (`--key-store`, symmetric cases), if any.
    fn store_of(&self, op: Op) -> Option<&str> {
        self.store_id.as_deref().filter(|_| op.symmetric())
    }

    /// The raw baseline on the token the case's key lives on.
    fn raw_of(&self, op: Op) -> Option<&RawBench> {
        match self.store_of(op) {
            Some(_) => self.raw_custom.as_ref(),
            None => self.raw.as_ref(),
        }
    }

    /// The HTTP request of case `op` on `load`'s door (decrypt and re-encrypt: of one Encrypt
    /// made first); `None` for the gRPC door.
    fn http_fixture(&self, op: Op, load: &Load) -> Option<Result<Fixture, String>> {
        let payload = self.cli.payload;
        let call = match load {
            Load::Grpc(_) => return None,
            Load::Aws(pool) => self.rt.block_on(aws::call_of(
                pool,
                op,
                &self.key_id,
                payload,
                payload.min(1024),
            )),
            Load::Xks(pool) => {
                let case = match op {
                    Op::CallerIdentity => xks::Case::Metadata,
                    Op::Decrypt => xks::Case::Decrypt,
                    _ => xks::Case::Encrypt,
                };
                self.rt.block_on(xks::call_of(pool, case, payload))
            }
        };
        Some(call.map(|call| {
            Fixture {
                op,
                signing: self.cli.signing,
                key_id: self.key_id.clone(),
                store: self.store_of(op).map(str::to_owned),
                // The spread's Encrypts are made per request, of this plaintext's length.
                plaintext: vec![0x5au8; payload],
                ciphertext: Vec::new(),
                signature: Vec::new(),
                data_key_len: 0,
                http: Some(call),
                spread: self
                    .spread
                    .clone()
                    .filter(|_| op == Op::Encrypt && matches!(load, Load::Aws(_))),
            }
        }))
    }

    /// The inputs of case `op` on `load`.
    fn fixture(&self, op: Op, load: &Load) -> Result<Fixture, String> {
        if let Some(f) = self.http_fixture(op, load) {
            return f;
        }
        let conn = load.grpc()?;
        let payload = self.cli.payload;
        let plaintext = vec![0x5au8; payload];
        let ciphertext = if matches!(op, Op::Decrypt | Op::ReEncrypt) {
            let mut c = conn.client(0);
            let conn = conn.clone();
            let key_id = self.key_id.clone();
            let pt = plaintext.clone();
            self.rt
                .block_on(async move {
                    c.encrypt(conn.req(
                        pb::EncryptRequest {
                            key_id,
                            plaintext: pt,
                            ..Default::default()
                        },
                        "Encrypt",
                    ))
                    .await
                })
                .map_err(|s| format!("fixture Encrypt: {}: {}", reason(&s), s.message()))?
                .into_inner()
                .ciphertext_blob
        } else {
            Vec::new()
        };
        // Sign and verify use their own key (--signing), and verify a signature made first.
        let signing = self.cli.signing;
        let (key_id, signature) = if matches!(op, Op::Sign | Op::Verify) {
            let mut c = conn.client(0);
            let conn = conn.clone();
            let pt = plaintext.clone();
            self.rt
                .block_on(async move {
                    let key_id =
                        create_key_of(&conn, &mut c, signing.key_spec(), "SIGN_VERIFY", None)
                            .await?;
                    let mut f = Fixture {
                        op,
                        signing,
                        key_id,
                        store: None,
                        plaintext: pt,
                        ciphertext: Vec::new(),
                        signature: Vec::new(),
                        data_key_len: 0,
                        http: None,
                        spread: None,
                    };
                    let sig = c.sign(conn.req(sign_request(&f), "Sign")).await?;
                    f.signature = sig.into_inner().signature;
                    Ok::<_, tonic::Status>((f.key_id, f.signature))
                })
                .map_err(|s| format!("fixture signing key: {}: {}", reason(&s), s.message()))?
        } else {
            (self.key_id.clone(), Vec::new())
        };
        Ok(Fixture {
            op,
            signing,
            key_id,
            store: self.store_of(op).map(str::to_owned),
            plaintext,
            ciphertext,
            signature,
            data_key_len: payload.min(1024) as i32,
            http: None,
            spread: self.spread.clone().filter(|_| op == Op::Encrypt),
        })
    }

    fn raw_phase(
        &self,
        kind: RawKey,
        op: Op,
        dur: Duration,
        aad: &[u8],
    ) -> Result<(RawResult, u64), String> {
        let raw = self.raw_of(op).ok_or("no raw bench")?;
        let raw_op = match self.spread_miss(op) {
            true => RawOp::UnwrapEncrypt,
            false => op.raw().ok_or("no raw operation")?,
        };
        let t0 = thread_cpu();
        let r = raw
            .run_on(kind, raw_op, self.cli.payload, aad, dur)
            .map_err(|e| format!("raw {}: {e}", op.name()))?;
        Ok((r, thread_cpu().saturating_sub(t0)))
    }

    /// One case at `concurrency`: warm-up, then raw and daemon (and `--peer-xks` peer) phases
    /// alternately, then one JSON line per target (the own daemon's first).
    fn case(&self, op: Op, label: &str, concurrency: usize) -> Result<Vec<Value>, String> {
        let concurrency = concurrency.max(1);
        let fixture = Arc::new(self.fixture(op, &self.load)?);
        let peer = match &self.peer {
            Some(p) => Some((p, Arc::new(self.fixture(op, &p.load)?))),
            None => None,
        };
        self.warm_up(op, &self.load, &fixture, concurrency)?;
        if let Some((p, f)) = &peer {
            self.warm_up(op, &p.load, f, concurrency)?;
        }
        let (m, peer_tally) = self.measure(op, &fixture, peer.as_ref(), concurrency)?;
        let own_target = match self.cli.xks_endpoint {
            Some(_) => Measuring::XksEndpoint,
            None => Measuring::P11kms,
        };
        let mut own = self.report(op, label, concurrency, m, (&self.load, own_target));
        let (Some(t), Some((p, _))) = (peer_tally, peer) else {
            return Ok(vec![own]);
        };
        let m = Measured {
            t,
            endpoints: None,
            raw: RawTally::default(),
            mem: None,
            hwm: None,
        };
        let peer_line = self.report(op, label, concurrency, m, (&p.load, Measuring::Peer));
        add_peer_fields(&mut own, &peer_line);
        Ok(vec![own, peer_line])
    }

    /// `--warmup` seconds of requests on `load`, not measured; an error if none succeeded.
    fn warm_up(
        &self,
        op: Op,
        load: &Load,
        fixture: &Arc<Fixture>,
        concurrency: usize,
    ) -> Result<(), String> {
        let cli = self.cli;
        if cli.warmup > 0.0 {
            let w = self.rt.block_on(daemon_phase(
                load,
                fixture,
                concurrency,
                secs(cli.warmup),
                None,
            ));
            if w.ops == 0 {
                return Err(format!(
                    "{}: warm-up made no successful request; errors: {:?}",
                    op.name(),
                    w.errors
                ));
            }
        }
        Ok(())
    }

    /// The measured part of a case: daemon phases of `--daemon-phase` up to the case's
    /// duration, each followed by a peer phase as long with `--peer-xks`, raw phases before
    /// each and after the last, the server's memory sampled. Answers the peer's tally too.
    fn measure(
        &self,
        op: Op,
        fixture: &Arc<Fixture>,
        peer: Option<&(&Peer, Arc<Fixture>)>,
        concurrency: usize,
    ) -> Result<(Measured, Option<PhaseTally>), String> {
        let cli = self.cli;
        let total = if op == Op::CreateKey {
            secs(cli.create_key_duration)
        } else {
            secs(cli.duration)
        };
        let phase = secs(cli.daemon_phase).max(Duration::from_millis(100));
        let raw_dur = secs(cli.raw_phase).max(Duration::from_millis(100));
        let aad = self.load.aad();
        let sampler = self.server_pid.map(|pid| {
            let _g = self.rt.enter();
            RssSampler::start(pid)
        });
        let mut raw = RawTally::default();
        let mut t = PhaseTally {
            have_server: self.server_pid.is_some(),
            ..PhaseTally::default()
        };
        let mut peer_t = peer.map(|(p, _)| PhaseTally {
            have_server: p.pid.is_some(),
            ..PhaseTally::default()
        });
        let counts0 = match &self.load {
            Load::Grpc(n) => Some(n.counts()),
            _ => None,
        };
        let mut done = Duration::ZERO;
        // Bounded: at most 10,000 phases.
        while done < total && t.phases < 10_000 {
            self.raw_phases(&mut raw, op, raw_dur, &aad)?;
            let d = phase.min(total - done);
            let audit0 = self.metrics.and_then(audit_counters);
            let p = self.rt.block_on(daemon_phase(
                &self.load,
                fixture,
                concurrency,
                d,
                self.server_pid,
            ));
            if let (Some(a), Some(b)) = (audit0, self.metrics.and_then(audit_counters)) {
                t.add_audit(a, b);
            }
            t.add(p);
            if let (Some((peer, f)), Some(pt)) = (peer, peer_t.as_mut()) {
                pt.add(
                    self.rt
                        .block_on(daemon_phase(&peer.load, f, concurrency, d, peer.pid)),
                );
            }
            done += d;
        }
        self.raw_phases(&mut raw, op, raw_dur, &aad)?;
        let mem = sampler.map(|s| self.rt.block_on(s.finish()));
        let hwm = self.server_pid.and_then(proc_mem).map(|(_, h)| h);
        let endpoints = match (&self.load, counts0) {
            (Load::Grpc(n), Some(c)) => Some(n.json(&c, (t.all.ops, t.all.errors.values().sum()))),
            _ => None,
        };
        let m = Measured {
            t,
            endpoints,
            raw,
            mem,
            hwm,
        };
        Ok((m, peer_t))
    }

    /// With a raw baseline (on the token of the case's key): one raw phase on the token key
    /// and, for cases on an existing key,
    /// one on a session-object copy of it (what the daemon uses with hsm.session_key_copies on).
    fn raw_phases(
        &self,
        raw: &mut RawTally,
        op: Op,
        dur: Duration,
        aad: &[u8],
    ) -> Result<(), String> {
        if self.raw_of(op).is_some() && op.raw().is_some() {
            let (r, cpu) = self.raw_phase(RawKey::Token, op, dur, aad)?;
            raw.rates.push(r.ops_per_sec());
            raw.ops += r.ops;
            raw.cpu_ticks += cpu;
            if op.uses_key_object() {
                let (r, _) = self.raw_phase(RawKey::SessionCopy, op, dur, aad)?;
                raw.copy_rates.push(r.ops_per_sec());
            }
        }
        Ok(())
    }

    /// The case's JSON line from what it measured (and a warning when requests failed).
    fn report(
        &self,
        op: Op,
        label: &str,
        concurrency: usize,
        m: Measured,
        who: (&Load, Measuring),
    ) -> Value {
        let cli = self.cli;
        let (load, target) = who;
        let Measured {
            mut t,
            endpoints,
            raw,
            mem,
            hwm,
        } = m;
        let mut lat = std::mem::take(&mut t.all.latencies_us);
        lat.sort_unstable();
        let secs_d = t.all.elapsed.as_secs_f64();
        let ops_per_sec = if secs_d > 0.0 {
            t.all.ops as f64 / secs_d
        } else {
            0.0
        };
        let error_count: u64 = t.all.errors.values().sum();
        let (cpu_part, cpu_busy, hsm_cores) = self.cpu_json(&t, secs_d);
        let us_per_tick = 1e6 / self.tck;
        let (raw_part, ratio) = raw_json(&raw, ops_per_sec, us_per_tick);
        let (audit_part, fsync_busy) = audit_json(t.audit, secs_d);
        let bound = bound_of(op, ratio, hsm_cores, cpu_busy, fsync_busy);
        if error_count > 0 {
            eprintln!(
                "WARNING: {} case had {error_count} errors: {:?}",
                op.name(),
                t.all.errors
            );
        }
        let mut v = json!({
            "case": label,
            "op": op.name(),
            "target": target.name(),
            "payload_bytes": cli.payload,
            "concurrency": concurrency,
            "door": load.door().name(),
            "channels": load.connections(),
            "auth": if target == Measuring::Peer { "sigv4" } else { self.auth },
            "tls": load.tls(),
            "phases": t.phases,
            "duration_s": round3(secs_d),
            "ops": t.all.ops,
            "ops_per_sec": round1(ops_per_sec),
            "p50_us": percentile(&lat, 0.50),
            "p90_us": percentile(&lat, 0.90),
            "p99_us": percentile(&lat, 0.99),
            "p999_us": percentile(&lat, 0.999),
            "max_us": lat.last(),
            "error_count": error_count,
            "errors": t.all.errors,
        });
        let own = target != Measuring::Peer;
        let store = self.store_of(op).filter(|_| own);
        let rest = json!({
            "key_store": own.then_some(if store.is_some() { "custom" } else { "default" }),
            "custom_key_store_id": store,
            "daemon_session_key_copies": !cli.no_session_key_copies,
            "daemon_hsm_dispatch": cli.hsm_dispatch.as_deref().unwrap_or("workers"),
            "daemon_residency": if cli.wrapped { "wrapped" } else { "token" },
            "hsm_calls_per_op": self.hsm_calls_of(load, op),
            "spread_keys": self.spread.as_ref().filter(|_| op == Op::Encrypt).map(|k| k.len()),
            "xks_endpoint": if own { cli.xks_endpoint.as_deref() } else { cli.peer_xks.as_deref() },
            "signing_algorithm": matches!(op, Op::Sign | Op::Verify).then(|| cli.signing.algorithm()),
            "server_rss_kb_peak": mem.map(|m| m.0),
            "server_rss_kb_mean": mem.map(|m| m.1),
            "server_vmhwm_kb": hwm,
            "token_keys": self.token_keys_note,
            "endpoints": endpoints,
            "bound": bound,
        });
        let delay = match target {
            Measuring::P11kms => self.delay_json(load.hsm_calls(op, cli.signing), ops_per_sec),
            _ => json!({}),
        };
        // All are sorted maps: merging them gives the one object, keys in order.
        if let Some(map) = v.as_object_mut() {
            for part in [cpu_part, raw_part, audit_part, rest, delay] {
                if let Value::Object(r) = part {
                    map.extend(r);
                }
            }
        }
        v
    }

    /// With `--hsm-delay-ms`: the delay, the delayed calls, and the throughput ceiling of the
    /// daemon's HSM workers waiting it (`workers x 1000 / (ms x delayed calls per request)`)
    /// with the case's share of it; the raw loop runs on the real module, without the delay.
    fn delay_json(&self, hsm_calls: &str, ops_per_sec: f64) -> Value {
        let Some(ms) = self.cli.hsm_delay_ms else {
            return json!({});
        };
        let calls = &self.cli.hsm_delay_calls;
        let skip = self.cli.hsm_delay_skips_length_queries;
        let per_op = shim::delayed_calls_per_op(hsm_calls, calls, skip);
        let ceiling = self
            .hsm_workers
            .and_then(|w| shim::ceiling_ops_per_sec(w, ms, per_op));
        json!({
            "hsm_delay_ms": ms,
            "hsm_delay_calls": calls,
            "hsm_delayed_calls_per_op": per_op,
            "hsm_delay_skips_length_queries": skip,
            "hsm_workers": self.hsm_workers,
            "ceiling_ops_per_sec": ceiling.map(round1),
            "ratio_to_ceiling": ceiling.map(|c| round3(ops_per_sec / c)),
            "raw_module": "the real module, without the shim's delay",
        })
    }

    /// The daemon's and the client's CPU figures per operation, the machine's busy share
    /// and the HSM threads' cores.
    fn cpu_json(&self, t: &PhaseTally, secs_d: f64) -> (Value, Option<f64>, Option<f64>) {
        let (all, have_server) = (&t.all, t.have_server);
        let (server_total, server_hsm) = (t.server_total, t.server_hsm);
        let us_per_tick = 1e6 / self.tck;
        let per_op = |ticks: u64| -> Option<f64> {
            (all.ops > 0).then(|| round1(ticks as f64 * us_per_tick / all.ops as f64))
        };
        let server_cpu = have_server.then(|| per_op(server_total)).flatten();
        let server_hsm_cpu = have_server.then(|| per_op(server_hsm)).flatten();
        let outside = match (server_cpu, server_hsm_cpu) {
            (Some(a), Some(b)) => Some(round1(a - b)),
            _ => None,
        };
        let client_cpu = per_op(all.client_cpu);
        let by_thread: BTreeMap<String, Option<f64>> = if have_server {
            all.server_threads
                .iter()
                .filter(|(_, t)| **t > 0)
                .map(|(k, t)| (k.clone(), per_op(*t)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let switches: BTreeMap<&String, [f64; 2]> = all
            .server_switches
            .iter()
            .filter(|(_, sw)| all.ops > 0 && sw[0] + sw[1] > 0)
            .map(|(k, sw)| (k, sw.map(|n| round3(n as f64 / all.ops as f64))))
            .collect();
        let cpu_busy = (secs_d > 0.0).then(|| {
            let server = if have_server {
                server_total as f64 / self.tck
            } else {
                0.0
            };
            round3((server + all.client_cpu as f64 / self.tck) / secs_d / self.cores as f64)
        });
        let hsm_cores =
            (have_server && secs_d > 0.0).then(|| round3(server_hsm as f64 / self.tck / secs_d));
        let v = json!({
            "server_cpu_us_per_op": server_cpu,
            "server_hsm_thread_cpu_us_per_op": server_hsm_cpu,
            "server_cpu_us_per_op_outside_hsm_threads": outside,
            "server_cpu_us_per_op_by_thread": by_thread,
            "server_context_switches_per_op_by_thread": switches,
            "client_cpu_us_per_op": client_cpu,
            "machine_cpu_busy": cpu_busy,
            "server_hsm_threads_cpu_cores": hsm_cores,
        });
        (v, cpu_busy, hsm_cores)
    }
}

/// Adds the `--peer-xks` peer's figures to the own daemon's line of the same case:
/// `peer_ops_per_sec`, `ratio_to_peer`, `peer_server_cpu_us_per_op` and `cpu_ratio_to_peer`
/// (own CPU per operation over the peer's).
fn add_peer_fields(own: &mut Value, peer: &Value) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round3(a / b)),
        _ => None,
    };
    let rate = |v: &Value| v["ops_per_sec"].as_f64();
    let cpu = |v: &Value| v["server_cpu_us_per_op"].as_f64();
    let fields = json!({
        "peer_ops_per_sec": rate(peer),
        "ratio_to_peer": ratio(rate(own), rate(peer)),
        "peer_server_cpu_us_per_op": cpu(peer),
        "cpu_ratio_to_peer": ratio(cpu(own), cpu(peer)),
    });
    if let (Some(map), Value::Object(f)) = (own.as_object_mut(), fields) {
        map.extend(f);
    }
}

/// The caller-identity (floor) rates measured so far, by target and concurrency.
#[derive(Default)]
struct Floors(BTreeMap<(String, u64), f64>);

impl Floors {
    /// Records a floor line's rate, or gives a crypto line `floor_ops_per_sec` and
    /// `ratio_to_floor` from the floor of its target at its concurrency, if measured.
    fn apply(&mut self, line: &mut Value) {
        let key = (
            line["target"].as_str().unwrap_or_default().to_string(),
            line["concurrency"].as_u64().unwrap_or(0),
        );
        let rate = line["ops_per_sec"].as_f64();
        if line["op"] == Op::CallerIdentity.name() {
            if let Some(r) = rate {
                self.0.insert(key, r);
            }
            return;
        }
        let Some(floor) = self.0.get(&key).copied() else {
            return;
        };
        if let Some(map) = line.as_object_mut() {
            map.insert("floor_ops_per_sec".into(), json!(round1(floor)));
            let ratio = rate.filter(|_| floor > 0.0).map(|r| round3(r / floor));
            map.insert("ratio_to_floor".into(), json!(ratio));
        }
    }
}

/// The raw baseline's figures of a case, and the daemon's rate as a share of the raw rate.
fn raw_json(raw: &RawTally, ops_per_sec: f64, us_per_tick: f64) -> (Value, Option<f64>) {
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let raw_mean = mean(&raw.rates);
    let copy_mean = mean(&raw.copy_rates);
    let raw_cpu =
        (raw.ops > 0).then(|| round1(raw.cpu_ticks as f64 * us_per_tick / raw.ops as f64));
    let ratio = raw_mean.map(|r| round3(ops_per_sec / r));
    let v = json!({
        "raw_ops_per_sec": raw_mean.map(round1),
        "raw_phases_ops_per_sec": raw.rates.iter().map(|r| round1(*r)).collect::<Vec<_>>(),
        "raw_cpu_us_per_op": raw_cpu,
        "ratio_to_raw": ratio,
        "raw_session_copy_ops_per_sec": copy_mean.map(round1),
        "raw_session_copy_phases_ops_per_sec": raw.copy_rates.iter().map(|r| round1(*r)).collect::<Vec<_>>(),
        "ratio_to_raw_session_copy": copy_mean.map(|r| round3(ops_per_sec / r)),
    });
    (v, ratio)
}

/// The audit writer's figures over the daemon phases (`secs_d` seconds), and the share of
/// that time it spent in fsync.
fn audit_json(audit: Option<AuditCounters>, secs_d: f64) -> (Value, Option<f64>) {
    // Share of the daemon phases' wall time the audit writer spent in fsync: near 1, every
    // request waits for the disk (group commit), whatever the CPU does.
    let fsync_busy = audit
        .filter(|_| secs_d > 0.0)
        .map(|a| round3(a.fsync_secs / secs_d));
    let v = json!({
        "audit_fsyncs_per_sec": audit.filter(|_| secs_d > 0.0).map(|a| round1(a.fsyncs / secs_d)),
        "audit_events_per_fsync": audit.filter(|a| a.fsyncs > 0.0).map(|a| round1(a.events / a.fsyncs)),
        "audit_fsync_mean_ms": audit.filter(|a| a.fsyncs > 0.0).map(|a| round3(a.fsync_secs * 1e3 / a.fsyncs)),
        "audit_fsync_busy": fsync_busy,
    });
    (v, fsync_busy)
}

/// What one case measured: the daemon phases, the raw baseline, the server's memory
/// (RSS peak, mean, samples) and its VmHWM.
struct Measured {
    t: PhaseTally,
    /// The gRPC load's per-endpoint counts (JSON `endpoints`).
    endpoints: Option<Value>,
    raw: RawTally,
    mem: Option<(u64, u64, u64)>,
    hwm: Option<u64>,
}

/// The raw baseline's phases: rates on the token key and on its session copy, and the
/// operations and CPU ticks of the token-key phases.
#[derive(Default)]
struct RawTally {
    rates: Vec<f64>,
    ops: u64,
    cpu_ticks: u64,
    copy_rates: Vec<f64>,
}

/// The daemon phases added up: requests, server CPU ticks (all threads, HSM threads), the
/// audit writer's counters and the number of phases.
#[derive(Default)]
struct PhaseTally {
    all: PhaseResult,
    server_total: u64,
    server_hsm: u64,
    /// False once a phase could not read the server's CPU.
    have_server: bool,
    audit: Option<AuditCounters>,
    phases: u32,
}

impl PhaseTally {
    /// Adds the audit counters' growth from `a` to `b`.
    fn add_audit(&mut self, a: AuditCounters, b: AuditCounters) {
        let sum = self.audit.get_or_insert(AuditCounters::default());
        sum.events += b.events - a.events;
        sum.fsyncs += b.fsyncs - a.fsyncs;
        sum.fsync_secs += b.fsync_secs - a.fsync_secs;
    }

    /// Adds one daemon phase (latency samples up to MAX_SAMPLES).
    fn add(&mut self, p: PhaseResult) {
        self.phases += 1;
        let all = &mut self.all;
        all.ops += p.ops;
        all.elapsed += p.elapsed;
        if all.latencies_us.len() + p.latencies_us.len() <= MAX_SAMPLES {
            all.latencies_us.extend_from_slice(&p.latencies_us);
        }
        for (k, v) in p.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.client_cpu += p.client_cpu;
        for (k, v) in &p.server_threads {
            *all.server_threads.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &p.server_switches {
            add_switches(all.server_switches.entry(k.clone()).or_default(), *v, false);
        }
        match p.server_cpu {
            Some((t, h)) => {
                self.server_total += t;
                self.server_hsm += h;
            }
            None => self.have_server = false,
        }
    }
}

/// What bounds a case: the HSM (create-key, near the raw rate, or HSM threads near a core),
/// the CPU, the audit fsync, or none of them clearly.
fn bound_of(
    op: Op,
    ratio: Option<f64>,
    hsm_cores: Option<f64>,
    cpu_busy: Option<f64>,
    fsync_busy: Option<f64>,
) -> &'static str {
    if op == Op::CreateKey
        || ratio.is_some_and(|r| r >= 0.85)
        || hsm_cores.is_some_and(|c| c >= 0.85)
    {
        "hsm"
    } else if cpu_busy.is_some_and(|b| b >= 0.9) {
        "cpu"
    } else if fsync_busy.is_some_and(|b| b >= 0.7) {
        "audit fsync (group commit: each answer waits for the disk)"
    } else {
        "undetermined (neither HSM- nor CPU-saturated: locks, queueing or latency)"
    }
}

// ================================================================ suites

fn policy_suite() -> Value {
    use p11kms::policy::bench_scenario::{self, Scenario};
    use std::hint::black_box;
    let scenario = Scenario::build();
    scenario.with_input(|input| {
        let allowed = p11kms::policy::evaluate(input).is_allow();
        for _ in 0..10_000 {
            black_box(p11kms::policy::evaluate(black_box(input)));
        }
        let budget = Duration::from_secs(3);
        let start = Instant::now();
        let t0 = thread_cpu();
        let mut n = 0u64;
        while n < 10_000_000 && start.elapsed() < budget {
            for _ in 0..1_000 {
                black_box(p11kms::policy::evaluate(black_box(input)));
            }
            n += 1_000;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu_s = thread_cpu().saturating_sub(t0) as f64 / clk_tck();
        json!({
            "case": "policy-decisions",
            "key_policy_statements": bench_scenario::KEY_POLICY_STATEMENTS,
            "identity_policies": bench_scenario::IDENTITY_POLICIES,
            "grants": bench_scenario::GRANTS,
            "allowed": allowed,
            "threads": 1,
            "decisions": n,
            "duration_s": round3(elapsed),
            "decisions_per_sec": round1(n as f64 / elapsed),
            "ns_per_decision": round1(elapsed * 1e9 / n as f64),
            "cpu_s": round3(cpu_s),
            "errors": {},
            "bound": "cpu",
        })
    })
}

/// Polls until the daemon accepts TCP and answers `probe` successfully.
fn wait_ready(
    rt: &tokio::runtime::Runtime,
    daemon: &mut Daemon,
    addr: SocketAddr,
    target: &Target,
    key_id: Option<&str>,
    t0: Instant,
) -> Result<(Duration, Duration), String> {
    let deadline = t0 + Duration::from_secs(300);
    let port = loop {
        if let Some(e) = daemon.exited() {
            return Err(e);
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            return Err("daemon did not open its port within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    loop {
        let r: Result<(), String> = rt.block_on(async {
            let conn = Conn::open(target, 1).await?;
            let mut c = conn.client(0);
            match key_id {
                Some(k) => c
                    .describe_key(conn.req(
                        pb::DescribeKeyRequest {
                            key_id: k.to_string(),
                            ..Default::default()
                        },
                        "DescribeKey",
                    ))
                    .await
                    .map(drop),
                None => c
                    .list_keys(conn.req(
                        pb::ListKeysRequest {
                            limit: Some(1),
                            ..Default::default()
                        },
                        "ListKeys",
                    ))
                    .await
                    .map(drop),
            }
            .map_err(|s| format!("{}: {}", reason(&s), s.message()))
        });
        match r {
            Ok(()) => return Ok((port, t0.elapsed())),
            Err(e) => {
                if let Some(x) = daemon.exited() {
                    return Err(x);
                }
                if Instant::now() > deadline {
                    return Err(format!("daemon not ready within 300 s: {e}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Creates keys until the store holds `want` (bounded by `timeout`); answers their ids.
fn seed_keys(
    rt: &tokio::runtime::Runtime,
    conn: &Conn,
    have: usize,
    want: usize,
    concurrency: usize,
    timeout: Duration,
) -> (Vec<String>, BTreeMap<String, u64>, Duration) {
    let start = Instant::now();
    let need = want.saturating_sub(have);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let made = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..concurrency.max(1) {
            let conn = conn.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = conn.client(i);
                let mut made = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= need || start.elapsed() > timeout {
                        break;
                    }
                    match tokio::time::timeout(REQUEST_TIMEOUT, create_key(&conn, &mut c, None))
                        .await
                    {
                        Ok(Ok(id)) => {
                            made.push(id);
                            if (have + k + 1).is_multiple_of(1000) {
                                eprintln!(
                                    "p11kms-bench: seeded ~{} keys ({:.0} s)",
                                    have + k + 1,
                                    start.elapsed().as_secs_f64()
                                );
                            }
                        }
                        Ok(Err(s)) => *errors.entry(reason(&s)).or_default() += 1,
                        Err(_) => *errors.entry("ClientTimeout".into()).or_default() += 1,
                    }
                }
                (made, errors)
            }));
        }
        let mut made = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for t in tasks {
            if let Ok((m, e)) = t.await {
                made.extend(m);
                for (k, v) in e {
                    *errors.entry(k).or_default() += v;
                }
            }
        }
        (made, errors)
    });
    (made.0, made.1, start.elapsed())
}

/// `--spread-keys`: makes that many symmetric keys and answers their ids.
fn spread_keys(bench: &Bench<'_>, conn: &Conn) -> Result<Vec<String>, String> {
    let cli = bench.cli;
    let timeout = Duration::from_secs(cli.seed_timeout);
    let (made, errors, took) = seed_keys(
        bench.rt,
        conn,
        0,
        cli.spread_keys,
        cli.seed_concurrency,
        timeout,
    );
    eprintln!(
        "p11kms-bench: made {} keys for --spread-keys in {:.1} s ({:.0}/s)",
        made.len(),
        took.as_secs_f64(),
        made.len() as f64 / took.as_secs_f64().max(1e-9)
    );
    if made.len() < cli.spread_keys {
        return Err(format!(
            "--spread-keys: made {} of {} keys: {errors:?}",
            made.len(),
            cli.spread_keys
        ));
    }
    Ok(made)
}

/// `--startup-seed direct`: stops the daemon and writes the keys into its store
/// ([`seed::seed`]); the caller starts it again.
fn seed_direct(
    bench: &Bench<'_>,
    w: &World,
    d: &mut Daemon,
    key_id: &str,
    have: usize,
) -> Result<(usize, BTreeMap<String, u64>, Duration), String> {
    let cli = bench.cli;
    d.stop();
    let start = Instant::now();
    let target = seed::SeedTarget {
        module: &w.module,
        token_label: TOKEN_LABEL,
        pin: &w.pin,
        config: &w.config,
        template_key: key_id,
    };
    let need = cli.startup_keys.saturating_sub(have);
    let made = bench.rt.block_on(seed::seed(
        &target,
        need,
        Duration::from_secs(cli.seed_timeout),
    ))?;
    Ok((made, BTreeMap::new(), start.elapsed()))
}

fn startup_json(
    label: &str,
    keys: usize,
    port: Duration,
    ready: Duration,
    pid: u32,
    probe: &str,
) -> Value {
    std::thread::sleep(Duration::from_millis(500));
    let mem = proc_mem(pid);
    json!({
        "case": label,
        "keys_in_store": keys,
        "startup_to_port_ms": round1(port.as_secs_f64() * 1e3),
        "startup_to_first_success_ms": round1(ready.as_secs_f64() * 1e3),
        "first_call": probe,
        "rss_kb_after_start": mem.map(|m| m.0),
        "vmhwm_kb_after_start": mem.map(|m| m.1),
        "errors": {},
        "bound": "start-up work: store load + store/token reconciliation (one C_FindObjects scan of the token)",
    })
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The keys the daemon lists (at most 1,000 pages of 1,000).
fn count_keys(bench: &Bench<'_>) -> Result<usize, String> {
    let conn = bench.load.grpc()?.clone();
    bench.rt.block_on(async move {
        let mut c = conn.client(0);
        let mut n = 0usize;
        let mut marker = String::new();
        // Bounded: at most 1,000 pages of 1,000.
        for _ in 0..1_000 {
            let r = c
                .list_keys(conn.req(
                    pb::ListKeysRequest {
                        limit: Some(1000),
                        marker: marker.clone(),
                    },
                    "ListKeys",
                ))
                .await
                .map_err(|s| format!("ListKeys: {}", reason(&s)))?
                .into_inner();
            n += r.keys.len();
            if !r.truncated || r.next_marker.is_empty() {
                break;
            }
            marker = r.next_marker;
        }
        Ok(n)
    })
}

/// The startup suite: restart time with the keys there are, seeding `--startup-keys` keys,
/// restart time again, then encrypt with that many keys on the token. True on any error.
fn startup_suite(
    bench: &mut Bench<'_>,
    w: &World,
    d: &mut Daemon,
    target: &Target,
    key_id: &str,
) -> Result<bool, String> {
    let cli = bench.cli;
    let rt = bench.rt;
    let mut any_errors = false;
    // Before seeding: a restart with the keys there are now.
    let restart = |d: &mut Daemon, label: &str, keys: usize| -> Result<Value, String> {
        d.stop();
        let t0 = Instant::now();
        *d = Daemon::spawn(w)?;
        let (port, ready) = wait_ready(rt, d, w.addr, target, Some(key_id), t0)?;
        Ok(startup_json(label, keys, port, ready, d.pid, "DescribeKey"))
    };
    let have = count_keys(bench)?;
    emit(&restart(d, "startup", have)?);
    bench.server_pid = Some(d.pid);
    bench.load = Load::Grpc(nodes::Nodes::single(
        target.endpoint.clone(),
        rt.block_on(Conn::open(target, cli.channels))?,
    ));

    let (made, errors, took) = match cli.startup_seed {
        StartupSeed::Api => {
            let (made, errors, took) = seed_keys(
                rt,
                bench.load.grpc()?,
                have,
                cli.startup_keys,
                cli.seed_concurrency,
                Duration::from_secs(cli.seed_timeout),
            );
            (made.len(), errors, took)
        }
        StartupSeed::Direct => seed_direct(bench, w, d, key_id, have)?,
    };
    let seeded_mem = proc_mem(d.pid);
    let n_err: u64 = errors.values().sum();
    if n_err > 0 {
        any_errors = true;
        eprintln!("WARNING: seeding keys had {n_err} errors: {errors:?}");
    }
    emit(&json!({
        "case": "create-key-seed",
        "keys_created": made,
        "seeded": cli.startup_seed.name(),
        "concurrency": cli.seed_concurrency,
        "duration_s": round3(took.as_secs_f64()),
        "ops_per_sec": round1(made as f64 / took.as_secs_f64().max(1e-9)),
        "error_count": n_err,
        "errors": errors,
        "server_rss_kb_after": seeded_mem.map(|m| m.0),
        "server_vmhwm_kb_after": seeded_mem.map(|m| m.1),
        "bound": "hsm",
    }));
    let total = match cli.startup_seed {
        StartupSeed::Api => count_keys(bench)?,
        StartupSeed::Direct => have + made,
    };
    for _ in 0..cli.startup_restarts {
        emit(&restart(d, "startup", total)?);
    }
    bench.server_pid = Some(d.pid);
    bench.load = Load::Grpc(nodes::Nodes::single(
        target.endpoint.clone(),
        rt.block_on(Conn::open(target, cli.channels))?,
    ));
    // Encrypt with that many key objects on the token.
    bench.token_keys_note = Some(total);
    let concurrency = cli.concurrency.iter().copied().max().unwrap_or(1);
    for v in bench.case(Op::Encrypt, "encrypt-with-many-keys", concurrency)? {
        emit(&v);
        any_errors |= v["error_count"].as_u64().unwrap_or(0) > 0;
    }
    Ok(any_errors)
}

/// A token the raw baseline opens: module, token label, user PIN.
type RawCfg = (PathBuf, String, Pin);

/// Where the crypto and startup suites send requests: the bench's own daemon (with its work
/// dir) or the existing `--endpoint`, and the tokens the raw baseline opens, if any (the
/// default token; the `--key-store` cluster token).
struct Setup {
    world: Option<World>,
    daemon: Option<Daemon>,
    /// The gRPC door (none with `--xks-endpoint`).
    target: Option<Target>,
    server_pid: Option<u32>,
    raw_cfg: Option<RawCfg>,
    raw_cluster_cfg: Option<RawCfg>,
}

/// Opens the raw baseline on `cfg`'s token (none without a token or with `--no-raw`).
fn open_raw(cli: &Cli, cfg: Option<&RawCfg>) -> Result<Option<RawBench>, String> {
    match (cfg, cli.no_raw) {
        (Some((m, l, pin)), false) => Ok(Some(
            RawBench::open(m, l, pin)
                .map_err(|e| format!("raw bench on {l}: {e}"))?
                .with_signing(cli.signing.raw()),
        )),
        _ => Ok(None),
    }
}

/// The raw baseline's token of an existing daemon or XKS proxy (`--hsm-module`,
/// `--token-label`, `--softhsm2-conf`, the PIN in `--pin-env`), if given.
fn external_raw_cfg(cli: &Cli) -> Result<Option<RawCfg>, String> {
    let (Some(m), Some(l)) = (&cli.hsm_module, &cli.token_label) else {
        if !cli.no_raw {
            eprintln!("p11kms-bench: no --hsm-module/--token-label: raw baseline skipped");
        }
        return Ok(None);
    };
    if let Some(conf) = &cli.softhsm2_conf {
        std::env::set_var("SOFTHSM2_CONF", conf);
    }
    let pin = std::env::var(&cli.pin_env)
        .map_err(|_| format!("raw baseline needs the PIN in ${}", cli.pin_env))?;
    Ok(Some((m.clone(), l.clone(), Pin::new(pin))))
}

/// Builds the work dir and starts the bench's own daemon (waiting until it answers), or
/// connects to `--endpoint` (no gRPC target with `--xks-endpoint`).
fn start_target(cli: &Cli, rt: &tokio::runtime::Runtime) -> Result<Setup, String> {
    match (cli.endpoint.is_empty(), &cli.xks_endpoint) {
        (false, _) | (true, Some(_)) => Ok(Setup {
            world: None,
            daemon: None,
            target: match cli.endpoint.is_empty() {
                false => Some(Target::existing(cli, &cli.endpoint)?),
                true => None,
            },
            server_pid: cli.server_pid,
            raw_cfg: external_raw_cfg(cli)?,
            raw_cluster_cfg: None,
        }),
        (true, None) => {
            let w = build_world(cli)?;
            // Before this process loads SoftHSM2 for the raw loop.
            std::env::set_var("SOFTHSM2_CONF", &w.softhsm_conf);
            let t0 = Instant::now();
            let mut d = Daemon::spawn(&w)?;
            let t = Target::own(&w, cli)?;
            let (port, ready) = wait_ready(rt, &mut d, w.addr, &t, None, t0)?;
            eprintln!(
                "p11kms-bench: daemon pid {} on {} (port after {:.0} ms, ready after {:.0} ms)",
                d.pid,
                w.addr,
                port.as_secs_f64() * 1e3,
                ready.as_secs_f64() * 1e3
            );
            Ok(Setup {
                server_pid: Some(d.pid),
                raw_cfg: Some((w.module.clone(), TOKEN_LABEL.to_string(), w.pin.clone())),
                raw_cluster_cfg: w.cluster_pin.as_ref().map(|pin| {
                    (
                        w.module.clone(),
                        CLUSTER_TOKEN_LABEL.to_string(),
                        pin.clone(),
                    )
                }),
                daemon: Some(d),
                target: Some(t),
                world: Some(w),
            })
        }
    }
}

/// The crypto suite's cases in order (caller-identity, the floor, first; create-key last: it
/// leaves token keys behind); the cases the door lacks are skipped with a note.
fn case_ops(cli: &Cli) -> Vec<Op> {
    let mut ops = cli.ops.clone();
    ops.sort();
    ops.dedup();
    let skipped: Vec<&str> = ops
        .iter()
        .filter(|o| !cli.door.serves(**o))
        .map(|o| o.name())
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "p11kms-bench: --door {} lacks these cases; skipped: {}",
            cli.door.name(),
            skipped.join(",")
        );
    }
    ops.retain(|o| cli.door.serves(*o));
    ops
}

/// The concurrency levels of `--concurrency`, in the order given, each once (at least 1).
fn concurrency_levels(cli: &Cli) -> Vec<usize> {
    let mut levels: Vec<usize> = Vec::new();
    for c in cli.concurrency.iter().map(|c| (*c).max(1)) {
        if !levels.contains(&c) {
            levels.push(c);
        }
    }
    if levels.is_empty() {
        levels.push(1);
    }
    levels
}

/// The crypto suite's load, the key its cases use, that key's custom key store (if any)
/// and the load's authentication.
struct Loaded {
    load: Load,
    /// The own daemon's gRPC connection (fixtures and `--spread-keys` make keys through it
    /// whatever the door); none with an external XKS proxy.
    grpc: Option<Conn>,
    key_id: String,
    store_id: Option<String>,
    auth: &'static str,
}

/// Opens the load: gRPC channels to the daemon (which also make the key and the custom key
/// store), or with `--door xks` one XKS connection per worker to the own daemon's XKS door
/// or to `--xks-endpoint`.
fn open_load(
    cli: &Cli,
    rt: &tokio::runtime::Runtime,
    world: Option<&World>,
    target: Option<&Target>,
) -> Result<Loaded, String> {
    let Some(target) = target else {
        return open_external_xks(cli, rt);
    };
    let nodes = rt.block_on(nodes::Nodes::open(target, cli.channels))?;
    let conn = nodes.first().clone();
    let store_id = match world.filter(|_| cli.key_store) {
        Some(w) => Some(rt.block_on(connect_key_store(&conn, w))?),
        None => None,
    };
    if store_id.is_some() && cli.ops.iter().any(|op| !op.symmetric()) {
        eprintln!(
            "p11kms-bench: --key-store: sign and verify keep default-store keys (a custom key \
             store holds SYMMETRIC_DEFAULT keys only)"
        );
    }
    let key_id = match &cli.key_id {
        Some(k) => k.clone(),
        None => {
            let mut c = conn.client(0);
            rt.block_on(create_key(&conn, &mut c, store_id.as_deref()))
                .map_err(|s| format!("CreateKey: {}: {}", reason(&s), s.message()))?
        }
    };
    let (load, auth) = match cli.door {
        Door::Grpc => (Load::Grpc(nodes), target.auth_name()),
        Door::Aws => (open_aws(cli, rt, world)?, "sigv4"),
        Door::Xks => (open_own_xks(cli, rt, world, &key_id)?, "sigv4"),
    };
    Ok(Loaded {
        load,
        grpc: Some(conn),
        key_id,
        store_id,
        auth,
    })
}

/// The most concurrent workers of a case: one HTTP connection each.
fn max_concurrency(cli: &Cli) -> usize {
    concurrency_levels(cli).into_iter().max().unwrap_or(1)
}

/// `--door aws`: one connection per worker to the own daemon's AWS door (`--aws-transport`)
/// or to `--aws-endpoint`, signed as `--access-key-id` in `--region`.
fn open_aws(
    cli: &Cli,
    rt: &tokio::runtime::Runtime,
    world: Option<&World>,
) -> Result<Load, String> {
    let (endpoint, cred) = match (world, &cli.aws_endpoint) {
        (
            Some(
                w @ World {
                    aws: Some(addr), ..
                },
            ),
            _,
        ) => {
            let scheme = match cli.aws_transport {
                AwsTransport::Https => "https",
                AwsTransport::Http => "http",
            };
            let endpoint = w.endpoint(scheme, *addr, "AWS door")?;
            let cred = fixture_credentials(
                &cli.identity_dir.join("credentials.json"),
                &cli.access_key_id,
            )?;
            (endpoint, cred)
        }
        (None, Some(url)) => {
            let endpoint = http_client::Endpoint::new(
                url,
                cli.ca_cert.as_deref(),
                cli.tls_domain.as_deref(),
                "--aws-endpoint",
            )?;
            (endpoint, existing_credentials(cli)?)
        }
        _ => {
            return Err("--door aws needs the own daemon, or --endpoint with --aws-endpoint".into())
        }
    };
    let door = aws::Target::new(cred, &cli.region);
    let pool = rt.block_on(aws::Pool::open(endpoint, door, max_concurrency(cli)))?;
    Ok(Load::Aws(Arc::new(pool)))
}

/// `--door xks` on the own daemon: one connection per worker to its XKS door, key `key_id`.
fn open_own_xks(
    cli: &Cli,
    rt: &tokio::runtime::Runtime,
    world: Option<&World>,
    key_id: &str,
) -> Result<Load, String> {
    let Some(
        w @ World {
            xks: Some((addr, cred)),
            ..
        },
    ) = world
    else {
        return Err("--door xks needs the own daemon or --xks-endpoint, not --endpoint".into());
    };
    let endpoint = w.endpoint("https", *addr, "XKS door")?;
    let door = xks::Target::new(XKS_PREFIX, key_id, cred.clone(), &cli.xks_region);
    let pool = rt.block_on(xks::Pool::open(endpoint, door, max_concurrency(cli)))?;
    Ok(Load::Xks(Arc::new(pool)))
}

/// One connection per worker to the XKS proxy at `url` (`--xks-endpoint` or `--peer-xks`),
/// described by `--xks-uri-prefix`, `--xks-credentials`, `--xks-key-id` and `--xks-ca`.
fn open_remote_xks(cli: &Cli, rt: &tokio::runtime::Runtime, url: &str) -> Result<Load, String> {
    let (Some(key_id), Some(creds)) = (&cli.xks_key_id, &cli.xks_credentials) else {
        return Err("an XKS proxy needs --xks-key-id and --xks-credentials".into());
    };
    let endpoint = http_client::Endpoint::new(
        url,
        cli.xks_ca.as_deref(),
        cli.tls_domain.as_deref(),
        "XKS endpoint",
    )?;
    let door = xks::Target::new(
        &cli.xks_uri_prefix,
        key_id,
        xks::read_credential(creds)?,
        &cli.xks_region,
    );
    let pool = rt.block_on(xks::Pool::open(endpoint, door, max_concurrency(cli)))?;
    Ok(Load::Xks(Arc::new(pool)))
}

/// The load of `--xks-endpoint`: one connection per worker, the key `--xks-key-id`.
fn open_external_xks(cli: &Cli, rt: &tokio::runtime::Runtime) -> Result<Loaded, String> {
    let (Some(ep), Some(key_id)) = (&cli.xks_endpoint, &cli.xks_key_id) else {
        return Err("--xks-endpoint needs --xks-key-id and --xks-credentials".into());
    };
    Ok(Loaded {
        load: open_remote_xks(cli, rt, ep)?,
        grpc: None,
        key_id: key_id.clone(),
        store_id: None,
        auth: "sigv4",
    })
}

/// The options that go with one door only: an error naming the first misplaced one.
fn check_door_options(cli: &Cli) -> Result<(), String> {
    if cli.spread_keys > 0 && cli.door == Door::Xks {
        return Err("--spread-keys needs the gRPC or the AWS door".into());
    }
    if cli.door != Door::Xks && cli.xks_endpoint.is_some() {
        return Err("--xks-endpoint needs --door xks".into());
    }
    if cli.door != Door::Xks && cli.peer_xks.is_some() {
        return Err("--peer-xks needs --door xks".into());
    }
    if cli.door != Door::Aws && cli.aws_endpoint.is_some() {
        return Err("--aws-endpoint needs --door aws".into());
    }
    if cli.door == Door::Aws && !cli.endpoint.is_empty() && cli.aws_endpoint.is_none() {
        return Err("--door aws with --endpoint needs --aws-endpoint".into());
    }
    Ok(())
}

/// The own daemon's `hsm.workers`, read back from the config the bench wrote.
fn own_hsm_workers(world: Option<&World>) -> Option<usize> {
    let w = world?;
    p11kms::config::Config::load(&w.config)
        .ok()
        .map(|c| c.hsm.workers)
}

fn run(cli: Cli) -> Result<bool, String> {
    let tck = clk_tck();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut any_errors = false;

    if cli.suite.contains(&Suite::Policy) {
        emit(&policy_suite());
    }
    if cli.suite.contains(&Suite::Propagation) {
        any_errors |= !propagation_suite(&cli, &rt)?;
    }
    let wants_daemon = cli.suite.contains(&Suite::Crypto) || cli.suite.contains(&Suite::Startup);
    if !wants_daemon {
        return Ok(true);
    }
    if cli.suite.contains(&Suite::Startup) && !cli.endpoint.is_empty() {
        return Err("--suite startup needs the bench's own daemon (no --endpoint)".into());
    }
    if cli.suite.contains(&Suite::Startup) && cli.key_store {
        return Err("--key-store applies to the crypto suite only (not --suite startup)".into());
    }
    if cli.suite.contains(&Suite::Startup) && cli.door != Door::Grpc {
        return Err("--door aws|xks applies to the crypto suite only (not --suite startup)".into());
    }
    check_door_options(&cli)?;

    // ---- the daemon
    let setup = start_target(&cli, &rt)?;
    let world = setup.world;
    let mut daemon = setup.daemon;
    let target = setup.target;
    let server_pid = setup.server_pid;
    let raw = open_raw(&cli, setup.raw_cfg.as_ref())?;
    let raw_custom = open_raw(&cli, setup.raw_cluster_cfg.as_ref())?;

    let loaded = open_load(&cli, &rt, world.as_ref(), target.as_ref())?;
    let key_id = loaded.key_id;
    let mut bench = Bench {
        cli: &cli,
        rt: &rt,
        load: loaded.load,
        auth: loaded.auth,
        server_pid,
        metrics: world.as_ref().map(|w| w.metrics_addr),
        raw,
        raw_custom,
        store_id: loaded.store_id,
        key_id: key_id.clone(),
        tck,
        cores,
        token_keys_note: None,
        peer: match &cli.peer_xks {
            Some(url) => Some(Peer {
                load: open_remote_xks(&cli, &rt, url)?,
                pid: cli.server_pid,
            }),
            None => None,
        },
        hsm_workers: own_hsm_workers(world.as_ref()),
        spread: None,
    };
    if cli.spread_keys > 0 && cli.suite.contains(&Suite::Crypto) {
        let conn = loaded
            .grpc
            .as_ref()
            .ok_or("--spread-keys needs the own daemon")?;
        bench.spread = Some(Arc::new(spread_keys(&bench, conn)?));
    }

    if cli.suite.contains(&Suite::Crypto) {
        let mut floors = Floors::default();
        for op in case_ops(&cli) {
            for concurrency in concurrency_levels(&cli) {
                for mut v in bench.case(op, op.name(), concurrency)? {
                    floors.apply(&mut v);
                    any_errors |= v["error_count"].as_u64().unwrap_or(0) > 0;
                    emit(&v);
                }
            }
        }
    }

    if cli.suite.contains(&Suite::Startup) {
        let (Some(w), Some(d), Some(t)) = (world.as_ref(), daemon.as_mut(), target.as_ref()) else {
            return Err("startup suite needs the own daemon".into());
        };
        any_errors |= startup_suite(&mut bench, w, d, t, &key_id)?;
    }

    // Order: the raw session (and its key) first, then the daemon, then the files.
    drop(bench);
    if let Some(mut d) = daemon {
        d.stop();
    }
    drop(world);
    Ok(!any_errors)
}

/// The propagation suite between the first two `--endpoint`s.
fn propagation_suite(cli: &Cli, rt: &tokio::runtime::Runtime) -> Result<bool, String> {
    if cli.endpoint.len() < 2 {
        return Err("--suite propagation needs two --endpoint values (two nodes)".into());
    }
    let a = Target::existing(cli, &cli.endpoint)?;
    let b = a
        .more
        .first()
        .ok_or("--suite propagation needs two --endpoint values (two nodes)")?;
    let (ca, cb) = rt.block_on(async { (Conn::open(&a, 1).await, Conn::open(b, 1).await) });
    emit(&rt.block_on(propagation::run(&ca?, &cb?, cli.propagation_rounds))?);
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("WARNING: the run had errors (see the \"errors\" fields)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("p11kms-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config file the bench writes for `args`, parsed and validated by the daemon's own
    /// loader, with its text and the world (whose work dir is removed on drop).
    fn written_config(args: &[&str]) -> (p11kms::config::Config, String, World) {
        let dir = std::env::temp_dir().join(format!(
            "p11kms-bench-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let dir_arg = dir.display().to_string();
        let mut argv = vec!["p11kms-bench", "--workdir", dir_arg.as_str()];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("arguments");
        let mut world = new_world(&cli, PathBuf::from("p11kms")).expect("world");
        world.attach_shim(&cli).expect("the fault shim builds");
        write_world_files(&cli, &world).expect("world files");
        let text = std::fs::read_to_string(&world.config).expect("config text");
        let cfg = p11kms::config::Config::load(&world.config).expect("the daemon accepts it");
        (cfg, text, world)
    }

    #[test]
    fn key_store_config_offers_the_cluster_token_without_its_pin() {
        let (cfg, text, world) = written_config(&["--key-store"]);
        assert_eq!(cfg.hsm.cluster.len(), 1, "{text}");
        let c = &cfg.hsm.cluster[0];
        assert_eq!(c.id, CLUSTER_ID);
        assert_eq!(c.token_label, CLUSTER_TOKEN_LABEL);
        assert_eq!(c.module, cfg.hsm.module);
        assert_eq!(c.trust_anchor_file, world.pki.join("ca.pem"));
        assert_eq!(cfg.hsm.token_label, TOKEN_LABEL);
        let cluster_pin = world.cluster_pin.as_ref().expect("a cluster PIN");
        assert_ne!(cluster_pin.expose(), world.pin.expose());
        assert!(!text.contains(cluster_pin.expose()));
        assert!(!text.contains(world.pin.expose()));
    }

    #[test]
    fn without_key_store_no_cluster_is_offered() {
        let (cfg, text, world) = written_config(&[]);
        assert!(cfg.hsm.cluster.is_empty(), "{text}");
        assert!(world.cluster_pin.is_none());
        assert!(!cfg.xks.enabled && cfg.xks.key_store.is_empty(), "{text}");
    }

    #[test]
    fn xks_door_config_serves_one_key_store_with_a_private_credential() {
        use std::os::unix::fs::PermissionsExt;
        let (cfg, text, world) = written_config(&["--door", "xks"]);
        let (addr, cred) = world.xks.as_ref().expect("an XKS door");
        assert!(cfg.xks.enabled && cfg.xks.tls, "{text}");
        assert_eq!(cfg.xks.listen, *addr);
        assert_eq!(cfg.xks.region.as_deref(), Some("us-east-1"));
        assert_eq!(cfg.xks.key_store.len(), 1, "{text}");
        let store = &cfg.xks.key_store[0];
        assert_eq!(store.uri_path_prefix, XKS_PREFIX);
        assert_eq!(store.principal, "arn:aws:iam::111122223333:user/admin");
        let mode = std::fs::metadata(&store.credentials_file)
            .expect("credentials file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let back = xks::read_credential(&store.credentials_file).expect("readable");
        assert_eq!(back.access_key_id, cred.access_key_id);
        assert_eq!(back.secret.as_str(), cred.secret.as_str());
        assert!(!text.contains(cred.secret.as_str()));
    }

    /// `p11kms-bench --door xks` with `extra` arguments, parsed.
    fn parse_xks(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["p11kms-bench", "--door", "xks"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn xks_endpoint_options_go_together() {
        let parse = parse_xks;
        let full = [
            "--xks-endpoint",
            "https://127.0.0.1:1",
            "--xks-credentials",
            "c.json",
        ];
        assert!(parse(&full).is_err(), "--xks-key-id is missing");
        let cli = parse(&[&full[..], &["--xks-key-id", "foo", "--server-pid", "7"]].concat())
            .expect("a complete external XKS target");
        assert_eq!(cli.server_pid, Some(7));
        assert!(
            parse(&["--xks-key-id", "foo"]).is_err(),
            "needs --xks-endpoint"
        );
        let both = [
            &full[..],
            &["--xks-key-id", "k", "--endpoint", "https://x:1"],
        ]
        .concat();
        assert!(
            parse(&both).is_err(),
            "--endpoint and --xks-endpoint exclude each other"
        );
        assert!(Cli::try_parse_from(["p11kms-bench", "--server-pid", "7"]).is_err());
        let cli = parse(&["--ops", "encrypt,sign,decrypt"]).expect("arguments");
        assert_eq!(case_ops(&cli), vec![Op::Encrypt, Op::Decrypt]);
    }

    #[test]
    fn aws_door_config_listens_on_its_own_port_with_the_chosen_transport_and_region() {
        let (cfg, text, world) = written_config(&[
            "--door",
            "aws",
            "--aws-transport",
            "http",
            "--region",
            "eu-west-3",
        ]);
        let addr = world.aws.expect("an AWS door");
        assert!(cfg.aws_json.enabled && !cfg.aws_json.tls, "{text}");
        assert_eq!(cfg.aws_json.listen, addr);
        assert!(addr.ip().is_loopback());
        assert_ne!(addr, world.addr);
        assert_eq!(cfg.kms.region, "eu-west-3");
        let (cfg, text, _w) = written_config(&["--door", "aws"]);
        assert!(cfg.aws_json.enabled && cfg.aws_json.tls, "{text}");
        assert_eq!(cfg.kms.region, "us-east-1");
        let (cfg, _, w) = written_config(&[]);
        assert!(!cfg.aws_json.enabled && w.aws.is_none());
    }

    #[test]
    fn hsm_delay_puts_the_shim_before_the_real_module_with_its_delay_files() {
        let (cfg, text, world) = written_config(&[
            "--hsm-delay-ms",
            "5",
            "--hsm-delay-calls",
            "C_Encrypt,C_Decrypt",
            "--hsm-workers",
            "32",
        ]);
        let shim = world.shim.as_ref().expect("a shim");
        assert_eq!(cfg.hsm.module, shim.lib, "{text}");
        assert!(shim.lib.exists());
        assert_eq!(shim.target, world.module);
        assert_ne!(shim.lib, world.module);
        for call in ["C_Encrypt", "C_Decrypt"] {
            let f = shim.control.join(format!("delay_{call}"));
            assert_eq!(std::fs::read_to_string(f).expect("control file"), "5");
        }
        assert!(!shim.control.join("delay_C_Sign").exists());
        assert!(!shim.control.join(shim::SKIP_LENGTH_QUERIES).exists());
        let (_, _, spared) =
            written_config(&["--hsm-delay-ms", "5", "--hsm-delay-skips-length-queries"]);
        let spared = spared.shim.as_ref().expect("a shim");
        assert!(spared.control.join(shim::SKIP_LENGTH_QUERIES).exists());
        assert_eq!(own_hsm_workers(Some(&world)), Some(32));
        let (cfg, _, world) = written_config(&[]);
        assert!(world.shim.is_none());
        assert_eq!(cfg.hsm.module, world.module);
        let bad = Cli::try_parse_from([
            "p11kms-bench",
            "--hsm-delay-ms",
            "5",
            "--hsm-delay-calls",
            "../x",
        ])
        .expect("arguments");
        let mut w = new_world(&bad, PathBuf::from("p11kms")).expect("world");
        assert!(w.attach_shim(&bad).is_err(), "not a PKCS#11 function name");
        let external = [
            "p11kms-bench",
            "--hsm-delay-ms",
            "5",
            "--endpoint",
            "https://x:1",
        ];
        assert!(Cli::try_parse_from(external).is_err(), "own daemon only");
    }

    #[test]
    fn audit_options_reach_the_daemons_audit_section() {
        let (cfg, text, _) = written_config(&[
            "--audit-durability",
            "relaxed",
            "--audit-preallocate-bytes",
            "262144",
            "--audit-checkpoint-every-events",
            "100000",
        ]);
        assert_eq!(cfg.audit.durability, "relaxed", "{text}");
        assert_eq!(cfg.audit.checkpoint_every_events, 100_000, "{text}");
        assert_eq!(cfg.audit.preallocate_bytes, 262_144, "{text}");
        let (cfg, text, _) = written_config(&["--audit-preallocate-bytes", "0"]);
        assert_eq!(cfg.audit.preallocate_bytes, 0, "{text}");
        assert_eq!(text.matches("[audit]").count(), 1, "{text}");
        let (cfg, text, _) = written_config(&[]);
        assert!(!text.contains("[audit]"), "{text}");
        assert_eq!(cfg.audit.preallocate_bytes, 4 << 20);
    }

    #[test]
    fn the_key_usage_flush_option_reaches_the_kms_section() {
        let (cfg, text, _) = written_config(&["--key-usage-flush-secs", "1"]);
        assert_eq!(cfg.kms.key_usage_flush_interval_secs, 1, "{text}");
        let (cfg, _, _) = written_config(&[]);
        assert_eq!(cfg.kms.key_usage_flush_interval_secs, 60);
    }

    #[test]
    fn the_ceiling_counts_the_delayed_calls_of_a_request() {
        let c = |s: &str| s.to_string();
        let enc = Op::Encrypt.hsm_calls();
        let per_op = shim::delayed_calls_per_op;
        // cryptoki asks C_Encrypt for the length first: two waits, one when spared.
        assert_eq!(per_op(enc, &[c("C_Encrypt")], false), 2);
        assert_eq!(per_op(enc, &[c("C_Encrypt")], true), 1);
        assert_eq!(per_op(enc, &[c("C_Decrypt")], false), 0);
        assert_eq!(per_op(enc, &[c("C_GenerateRandom")], false), 1);
        let re = Op::ReEncrypt.hsm_calls();
        let both = [c("C_Encrypt"), c("C_Decrypt")];
        assert_eq!(per_op(re, &both, true), 2);
        assert_eq!(per_op(re, &both, false), 4);
        assert_eq!(per_op(Op::CallerIdentity.hsm_calls(), &both, false), 0);
        assert_eq!(shim::ceiling_ops_per_sec(32, 5, 1), Some(6400.0));
        assert_eq!(shim::ceiling_ops_per_sec(32, 5, 2), Some(3200.0));
        assert_eq!(shim::ceiling_ops_per_sec(32, 5, 0), None);
        assert_eq!(shim::ceiling_ops_per_sec(32, 0, 1), None);
    }

    #[test]
    fn crypto_lines_get_the_floor_of_their_target_and_concurrency() {
        let line = |op: Op, target: &str, c: u64, rate: f64| json!({"op": op.name(), "target": target, "concurrency": c, "ops_per_sec": rate});
        let mut floors = Floors::default();
        let mut early = line(Op::Encrypt, "p11kms", 8, 100.0);
        floors.apply(&mut early);
        assert!(
            early.get("floor_ops_per_sec").is_none(),
            "no floor measured yet"
        );
        floors.apply(&mut line(Op::CallerIdentity, "p11kms", 8, 400.0));
        floors.apply(&mut line(Op::CallerIdentity, "peer", 8, 1000.0));
        let mut enc = line(Op::Encrypt, "p11kms", 8, 100.0);
        floors.apply(&mut enc);
        assert_eq!(enc["floor_ops_per_sec"], 400.0);
        assert_eq!(enc["ratio_to_floor"], 0.25);
        let mut peer = line(Op::Encrypt, "peer", 8, 500.0);
        floors.apply(&mut peer);
        assert_eq!(peer["ratio_to_floor"], 0.5);
        let mut other_level = line(Op::Encrypt, "p11kms", 32, 100.0);
        floors.apply(&mut other_level);
        assert!(other_level.get("floor_ops_per_sec").is_none());
    }

    #[test]
    fn the_own_line_carries_the_peers_rate_and_cpu() {
        let mut own = json!({"ops_per_sec": 3000.0, "server_cpu_us_per_op": 40.0});
        let peer = json!({"ops_per_sec": 1000.0, "server_cpu_us_per_op": 120.0});
        add_peer_fields(&mut own, &peer);
        assert_eq!(own["peer_ops_per_sec"], 1000.0);
        assert_eq!(own["ratio_to_peer"], 3.0);
        assert_eq!(own["peer_server_cpu_us_per_op"], 120.0);
        assert_eq!(own["cpu_ratio_to_peer"], 0.333);
        let mut own = json!({"ops_per_sec": 3000.0, "server_cpu_us_per_op": null});
        add_peer_fields(&mut own, &json!({"ops_per_sec": 0.0}));
        assert!(own["ratio_to_peer"].is_null() && own["cpu_ratio_to_peer"].is_null());
    }

    #[test]
    fn concurrency_levels_and_door_cases() {
        let cli = Cli::try_parse_from(["p11kms-bench", "--concurrency", "1,8,32,8,0"])
            .expect("arguments");
        assert_eq!(concurrency_levels(&cli), vec![1, 8, 32]);
        assert_eq!(max_concurrency(&cli), 32);
        let cli = Cli::try_parse_from(["p11kms-bench"]).expect("arguments");
        assert_eq!(concurrency_levels(&cli), vec![32]);
        let ops = case_ops(&cli);
        assert_eq!(
            ops.first(),
            Some(&Op::CallerIdentity),
            "the floor runs first"
        );
        assert_eq!(ops.last(), Some(&Op::Verify));
        let cli = Cli::try_parse_from(["p11kms-bench", "--door", "aws"]).expect("arguments");
        assert_eq!(
            case_ops(&cli),
            vec![
                Op::CallerIdentity,
                Op::Encrypt,
                Op::Decrypt,
                Op::GenerateDataKey,
                Op::GenerateDataKeyWithoutPlaintext,
                Op::ReEncrypt
            ]
        );
        let cli = Cli::try_parse_from(["p11kms-bench", "--door", "xks"]).expect("arguments");
        assert_eq!(
            case_ops(&cli),
            vec![Op::CallerIdentity, Op::Encrypt, Op::Decrypt]
        );
        assert_eq!(Op::CallerIdentity.raw(), None);
        assert!(!Op::CallerIdentity.uses_key_object());
    }

    #[test]
    fn peer_xks_options_describe_the_peer_beside_the_own_daemon() {
        let parse = parse_xks;
        let peer = [
            "--peer-xks",
            "https://127.0.0.1:4443",
            "--xks-credentials",
            "c.json",
            "--xks-key-id",
            "foo",
            "--xks-uri-prefix",
            "/example",
            "--xks-ca",
            "ca.pem",
        ];
        let cli = parse(&[&peer[..], &["--peer-pid", "42"]].concat()).expect("a peer");
        assert_eq!(cli.server_pid, Some(42));
        assert_eq!(cli.peer_xks.as_deref(), Some("https://127.0.0.1:4443"));
        check_door_options(&cli).expect("--door xks");
        assert!(parse(&peer[..4]).is_err(), "--xks-key-id is missing");
        assert!(parse(&[&peer[..], &["--endpoint", "https://x:1"]].concat()).is_err());
        let other = [&["p11kms-bench"][..], &peer[..]].concat();
        let cli = Cli::try_parse_from(other).expect("arguments");
        assert!(
            check_door_options(&cli).is_err(),
            "--peer-xks needs --door xks"
        );
        let aws = ["p11kms-bench", "--door", "aws", "--endpoint", "https://x:1"];
        let cli = Cli::try_parse_from(aws).expect("arguments");
        assert!(check_door_options(&cli).is_err(), "needs --aws-endpoint");
    }

    #[test]
    fn key_store_is_own_daemon_only_and_moves_only_symmetric_cases() {
        let err = Cli::try_parse_from(["p11kms-bench", "--key-store", "--endpoint", "https://x:1"]);
        assert!(err.is_err());
        assert!(Op::Encrypt.symmetric() && Op::ReEncrypt.symmetric() && Op::CreateKey.symmetric());
        assert!(!Op::Sign.symmetric() && !Op::Verify.symmetric());
    }
}
