//! The `p11kms` command: the daemon (`serve`), the configuration proof (`check`), the dev
//! set-up, and client commands for people. Argument handling only; the work is in the library.

#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use p11kms::api::aws_json::kms as door_render;
use p11kms::api::grpc::decode;
use p11kms::api::grpc::status::aws_reason;
use p11kms::client::{ClientConfig, Signer};
use p11kms::config::Config;
use p11kms::pb;
use p11kms::pb::admin_service_client::AdminServiceClient;
use p11kms::pb::key_management_service_client::KeyManagementServiceClient;
use p11kms::pb::security_token_service_client::SecurityTokenServiceClient;

/// mimalloc instead of glibc's allocator: per-thread free lists without the arena lock and
/// fastbin consolidation that cost the request path ~14 % of daemon CPU
/// (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// p11kms: an on-premises key management daemon with keys held in a PKCS#11 HSM.
#[derive(Parser, Debug)]
#[command(name = "p11kms", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The daemon's TOML config file.
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config, open the token, check mechanisms, reconcile store and token.
    /// Exits non-zero on any problem; never changes anything.
    Check {
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
    },
    /// Create the dev CA, server and admin certificates, PIN files, configs and the SoftHSM2
    /// token (idempotent). A second instance needs its own data directory and addresses.
    DevSetup {
        #[arg(long, default_value = "p11kms-data")]
        data_dir: PathBuf,
        /// The gRPC door's address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// The AWS door's address.
        #[arg(long, default_value = "127.0.0.1:4443")]
        aws_listen: std::net::SocketAddr,
        /// The metrics endpoint's address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: std::net::SocketAddr,
    },
    /// Manage keys.
    Key {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage aliases.
    Alias {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: AliasCommand,
    },
    /// Encrypt up to 4096 bytes under a key.
    Encrypt {
        #[command(flatten)]
        conn: Conn,
        /// Key id, key ARN, alias name or alias ARN.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// Encryption context pair, repeatable.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Write the raw ciphertext here instead of printing base64.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
    /// Decrypt a ciphertext blob.
    Decrypt {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        input: Input,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Optional: the key the ciphertext must be under.
        #[arg(long)]
        key: Option<String>,
        /// Write the raw plaintext here instead of printing base64.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
    /// Sign a message (or, with --message-type DIGEST, its digest) with a SIGN_VERIFY key.
    Sign {
        #[command(flatten)]
        conn: Conn,
        /// Key id, key ARN, alias name or alias ARN.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256, ECDSA_SHA_256, ...
        #[arg(long)]
        algorithm: String,
        /// RAW (the daemon hashes the message) or DIGEST (the input is the digest).
        #[arg(long, default_value = "RAW")]
        message_type: String,
        /// Write the raw signature (ECDSA: DER) here instead of printing base64.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify a signature on the device; exits non-zero with KMSInvalidSignatureException when
    /// it does not match.
    Verify {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        #[arg(long)]
        algorithm: String,
        #[arg(long, default_value = "RAW")]
        message_type: String,
        /// File holding the raw signature.
        #[arg(long)]
        signature_file: PathBuf,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
    /// An asymmetric key's public key: PEM on standard output, or DER SubjectPublicKeyInfo
    /// into --out.
    GetPublicKey {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The last successful cryptographic operation on a key (key id or key ARN), printed as
    /// the AWS door answers GetKeyLastUsage.
    GetKeyLastUsage {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
    },
    /// ECDH on the device with a KEY_AGREEMENT key and a peer's public key (DER or PEM
    /// SubjectPublicKeyInfo file); the raw shared secret goes to --out (mode 0600) or, as
    /// base64, to standard output.
    DeriveSharedSecret {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        /// The peer's public key: DER SubjectPublicKeyInfo, or PEM (`-----BEGIN PUBLIC KEY-----`).
        #[arg(long)]
        peer_public_key: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compute an HMAC on the device with a GENERATE_VERIFY_MAC key.
    GenerateMac {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512.
        #[arg(long)]
        algorithm: String,
        /// Write the raw MAC here instead of printing base64.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Policy tools: offline evaluation of test vectors, and explaining a live decision.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Temporary credentials (AssumeRole) and identity.
    Sts {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: StsCommand,
    },
    /// Manage grants.
    Grant {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Generate a data key: plaintext and ciphertext.
    GenerateDataKey {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        /// AES_256 or AES_128 (default AES_256 unless --bytes is given).
        #[arg(long)]
        key_spec: Option<String>,
        /// Number of bytes, 1-1024, instead of --key-spec.
        #[arg(long)]
        bytes: Option<i32>,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Write the raw plaintext data key here (mode 0600) instead of printing it.
        #[arg(long)]
        plaintext_out: Option<PathBuf>,
        /// Write the raw ciphertext blob here instead of printing it.
        #[arg(long)]
        ciphertext_out: Option<PathBuf>,
        /// Check the request (authorization, key state, usage) without running it; the
        /// daemon answers DryRunOperationException when it would have succeeded.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a key (symmetric by default; see docs/key-types.md for the other specs).
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// SYMMETRIC_DEFAULT (default), RSA_2048/3072/4096, ECC_NIST_P256/P384/P521,
        /// ECC_SECG_P256K1, HMAC_224/256/384/512.
        #[arg(long)]
        key_spec: Option<String>,
        /// ENCRYPT_DECRYPT (default), SIGN_VERIFY or GENERATE_VERIFY_MAC.
        #[arg(long)]
        key_usage: Option<String>,
        /// AWS_KMS (default) or EXTERNAL (bring your own key material).
        #[arg(long)]
        origin: Option<String>,
        /// Tag pair, repeatable.
        #[arg(long = "tag", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        /// A key policy document file.
        #[arg(long)]
        policy_file: Option<PathBuf>,
    },
    /// List keys.
    List {
        #[arg(long)]
        limit: Option<i32>,
    },
    /// Describe a key.
    Describe { key: String },
    /// Enable a key.
    Enable { key: String },
    /// Disable a key.
    Disable { key: String },
    /// Schedule deletion after 7-30 days.
    ScheduleDeletion {
        key: String,
        #[arg(long)]
        days: Option<i32>,
    },
    /// Cancel a scheduled deletion (the key is left Disabled).
    CancelDeletion { key: String },
    /// Turn on automatic rotation (every 90-2560 days; 365 by default).
    EnableRotation {
        key: String,
        #[arg(long)]
        period_days: Option<i32>,
    },
    /// Turn off automatic rotation.
    DisableRotation { key: String },
    /// Show whether automatic rotation is on and when the next one is due.
    RotationStatus { key: String },
    /// Rotate now: a new key version on the HSM; older versions keep decrypting.
    Rotate { key: String },
    /// List a key's rotations (its key material versions).
    ListRotations { key: String },
    /// Print a key's policy document.
    GetPolicy { key: String },
    /// Replace a key's policy document.
    PutPolicy {
        key: String,
        #[arg(long)]
        policy_file: PathBuf,
        /// Skip the check that you can still change the policy afterwards (dangerous).
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check audit segments offline (no HSM, no daemon): hashes, chain, sequence numbers,
    /// segment links and checkpoint signatures. Exits non-zero on any problem.
    Verify {
        /// The audit public key (PEM or DER), `audit-public-key.pem` in the data directory.
        /// Without it, checkpoint signatures are not checked.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Segment files (`audit-*.jsonl`), in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Evaluate a JSON array of cases (the format of tests/fixtures/policy-cases/cases.json) offline
    /// and print `<name> Allow|Deny` per case.
    Eval {
        file: PathBuf,
        /// Compare with each case's `expected`; exit non-zero on any mismatch.
        #[arg(long)]
        check: bool,
    },
    /// Ask the daemon how it would decide a request (needs p11kms:ExplainAccess).
    Explain {
        #[command(flatten)]
        conn: Box<Conn>,
        /// The principal ARN to evaluate for.
        #[arg(long)]
        principal: String,
        /// The action, e.g. kms:Decrypt.
        #[arg(long)]
        action: String,
        /// Key id, key ARN, alias name or alias ARN.
        #[arg(long)]
        key: String,
        /// Encryption context pair, repeatable.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Evaluate as if the request came from this address (aws:SourceIp).
        #[arg(long)]
        source_ip: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum StsCommand {
    /// Assume a role; prints temporary credentials as JSON, like `aws sts assume-role`.
    AssumeRole {
        #[arg(long)]
        role_arn: String,
        #[arg(long)]
        role_session_name: String,
        #[arg(long)]
        duration_seconds: Option<i32>,
        /// Optional session policy document file.
        #[arg(long)]
        policy_file: Option<PathBuf>,
        /// Session tag pair, repeatable.
        #[arg(long = "tag", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
    },
    /// Print who you are.
    GetCallerIdentity,
}

#[derive(Subcommand, Debug)]
enum GrantCommand {
    /// Create a grant.
    Create {
        #[arg(long)]
        key: String,
        #[arg(long)]
        grantee: String,
        /// Comma-separated operations, e.g. Decrypt,Encrypt.
        #[arg(long, value_delimiter = ',')]
        operations: Vec<String>,
        #[arg(long)]
        retiring: Option<String>,
        /// EncryptionContextSubset pair, repeatable.
        #[arg(long = "subset", value_parser = parse_pair)]
        subset: Vec<(String, String)>,
        /// EncryptionContextEquals pair, repeatable.
        #[arg(long = "equals", value_parser = parse_pair)]
        equals: Vec<(String, String)>,
        #[arg(long)]
        name: Option<String>,
        /// Check the request without running it (DryRunOperationException when it would
        /// have succeeded).
        #[arg(long)]
        dry_run: bool,
    },
    /// List a key's grants.
    List {
        #[arg(long)]
        key: String,
    },
    /// Retire a grant by token, or by key and grant id.
    Retire {
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        grant_id: Option<String>,
        /// Check the request without running it (DryRunOperationException when it would
        /// have succeeded).
        #[arg(long)]
        dry_run: bool,
    },
    /// Revoke a grant.
    Revoke {
        #[arg(long)]
        key: String,
        #[arg(long)]
        grant_id: String,
        /// Check the request without running it (DryRunOperationException when it would
        /// have succeeded).
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AliasCommand {
    /// Create an alias (`alias/...`) for a key.
    Create { name: String, key: String },
    /// List aliases.
    List {
        #[arg(long)]
        key: Option<String>,
    },
    /// Delete an alias.
    Delete { name: String },
}

/// Connection options; each falls back to the environment, then the client config file.
#[derive(Args, Debug, Clone)]
struct Conn {
    /// Daemon endpoint, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "P11KMS_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// CA certificate (PEM) the server certificate chains to.
    #[arg(long, env = "P11KMS_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "P11KMS_CLIENT_CERT", global = true)]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "P11KMS_CLIENT_KEY", global = true)]
    client_key: Option<PathBuf>,
    /// Client config file (default: p11kms-data/client.toml when it exists).
    #[arg(long, env = "P11KMS_CLIENT_CONFIG", global = true)]
    client_config: Option<PathBuf>,
    /// A `[profiles.NAME]` section of the client config to use.
    #[arg(long, env = "P11KMS_PROFILE", global = true)]
    profile: Option<String>,
}

/// Where input bytes come from.
#[derive(Args, Debug, Clone)]
struct Input {
    /// Read the input from this file ("-" for standard input).
    #[arg(long = "in", conflicts_with = "b64")]
    file: Option<PathBuf>,
    /// The input as base64 on the command line (not for secrets: argv is visible to others).
    #[arg(long)]
    b64: Option<String>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// The contents of an optional file (a policy document), or "" when none is given.
fn read_optional(path: Option<PathBuf>) -> Result<String, String> {
    match path {
        Some(p) => std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display())),
        None => Ok(String::new()),
    }
}

/// `key=value` pairs as protobuf tags.
fn pb_tags(pairs: Vec<(String, String)>) -> Vec<pb::Tag> {
    pairs
        .into_iter()
        .map(|(k, v)| pb::Tag {
            tag_key: k,
            tag_value: v,
        })
        .collect()
}

fn read_input(input: &Input) -> Result<Zeroizing<Vec<u8>>, String> {
    match (&input.file, &input.b64) {
        (Some(p), _) if p == Path::new("-") => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading standard input: {e}"))?;
            Ok(buf)
        }
        (Some(p), _) => std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|e| format!("reading {}: {e}", p.display())),
        (None, Some(b)) => B64
            .decode(b.trim())
            .map(Zeroizing::new)
            .map_err(|e| format!("--b64 is not base64: {e}")),
        (None, None) => Err("give the input with --in FILE (or - for stdin) or --b64".into()),
    }
}

fn write_output(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn client_config(conn: &Conn) -> Result<ClientConfig, String> {
    let file = conn.client_config.clone().or_else(|| {
        let default = PathBuf::from("p11kms-data/client.toml");
        default.exists().then_some(default)
    });
    let mut base = match file {
        Some(f) => ClientConfig::load(&f).map_err(|e| e.to_string())?,
        None => ClientConfig::default(),
    };
    if let Some(p) = &conn.profile {
        base = base.with_profile(p).map_err(|e| e.to_string())?;
    }
    Ok(base.overlay(ClientConfig {
        endpoint: conn.endpoint.clone(),
        ca_cert: conn.ca_cert.clone(),
        client_cert: conn.client_cert.clone(),
        client_key: conn.client_key.clone(),
        ..Default::default()
    }))
}

/// A connection plus, for access-key callers, a SigV4 signer.
struct Session {
    channel: tonic::transport::Channel,
    signer: Option<Signer>,
}

impl Session {
    async fn open(conn: &Conn) -> Result<Session, String> {
        let cfg = client_config(conn)?;
        let signer = cfg.signer().map_err(|e| e.to_string())?;
        let channel = cfg.channel().await.map_err(|e| e.to_string())?;
        Ok(Session { channel, signer })
    }

    fn kms(&self) -> KeyManagementServiceClient<tonic::transport::Channel> {
        KeyManagementServiceClient::new(self.channel.clone())
    }

    /// A request for `/p11kms.v1.<service>/<method>`, signed when using access keys.
    fn req<T: prost::Message>(&self, service: &str, method: &str, msg: T) -> tonic::Request<T> {
        match &self.signer {
            Some(s) => s.sign(msg, &format!("/p11kms.v1.{service}/{method}")),
            None => tonic::Request::new(msg),
        }
    }

    fn k<T: prost::Message>(&self, method: &str, msg: T) -> tonic::Request<T> {
        self.req("KeyManagementService", method, msg)
    }
}

fn status_error(s: tonic::Status) -> String {
    match aws_reason(&s) {
        Some(reason) => format!("{reason}: {}", s.message()),
        None => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn ctx(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

fn ts(t: &Option<prost_types::Timestamp>) -> serde_json::Value {
    t.as_ref()
        .map(|t| json!(t.seconds as f64 + f64::from(t.nanos) / 1e9))
        .unwrap_or(serde_json::Value::Null)
}

/// A timestamp in Unix milliseconds (0 when absent).
fn ts_ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
        .unwrap_or(0)
}

/// The gRPC answer of GetKeyLastUsage as the engine's output, so the CLI prints exactly what
/// the AWS door answers.
fn last_usage_output(r: pb::GetKeyLastUsageResponse) -> p11kms::core::usage::KeyLastUsageOutput {
    let last = r.key_last_usage.and_then(|u| {
        Some(p11kms::store::KeyUsageRecord {
            key_id: String::new(),
            operation: p11kms::store::UsageOperation::parse(&u.operation)?,
            used_at_ms: ts_ms(&u.timestamp),
            event_id: u.cloud_trail_event_id,
            request_id: u.kms_request_id,
        })
    });
    p11kms::core::usage::KeyLastUsageOutput {
        key_id: r.key_id,
        last_usage: last,
        tracking_start_date_ms: ts_ms(&r.tracking_start_date),
        key_creation_date_ms: ts_ms(&r.key_creation_date),
    }
}

/// Key metadata as the AWS door renders it (one renderer for both).
fn metadata_json(m: pb::KeyMetadata) -> Result<serde_json::Value, String> {
    Ok(door_render::metadata(&decode::key_metadata(m)?))
}

/// A DER SubjectPublicKeyInfo as a PEM `PUBLIC KEY` block (64 base64 characters a line).
/// A public key file's DER: the bytes themselves, or the body of a PEM `PUBLIC KEY` block.
fn spki_from_der_or_pem(raw: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let Ok(text) = std::str::from_utf8(raw) else {
        return Some(raw.to_vec());
    };
    let Some(start) = text.find(BEGIN) else {
        return (!text.trim_start().starts_with("-----")).then(|| raw.to_vec());
    };
    let body = &text[start + BEGIN.len()..];
    let body = &body[..body.find(END)?];
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(b64).ok()
}

fn public_key_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// Prints as AWS does: null members are left out (the AWS door's `compact`).
fn print_json(v: &serde_json::Value) {
    let v = door_render::compact(v.clone());
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(conf) = &config.hsm.softhsm2_conf {
        if std::env::var_os("SOFTHSM2_CONF").is_none() {
            // Single-threaded here: no runtime has started yet.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
    }
    Ok(config)
}

/// `p11kms dev-setup`: the files, then the token in the set-up's own SoftHSM2 directory.
fn dev_setup_command(data_dir: &Path, addrs: &p11kms::devsetup::DevListen) -> Result<(), String> {
    let out = p11kms::devsetup::dev_setup(data_dir, addrs).map_err(|e| e.to_string())?;
    let conf = &out.softhsm2_conf;
    if std::env::var_os("SOFTHSM2_CONF").is_some_and(|v| Path::new(&v) != conf) {
        eprintln!("note: SOFTHSM2_CONF is set in this shell; `serve` would use it instead of {} (unset it)", conf.display());
    }
    // Single-threaded here: no runtime has started and no module is loaded yet.
    std::env::set_var("SOFTHSM2_CONF", conf);
    let created = p11kms::devsetup::init_dev_token(&out).map_err(|e| e.to_string())?;
    let kept = if out.config_written {
        ""
    } else {
        " (existing, kept: its addresses win over the options)"
    };
    println!("config: {}{kept}", out.config.display());
    println!("client config: {}", out.client_config.display());
    println!(
        "token '{}' in {}: {}",
        p11kms::devsetup::DEV_TOKEN_LABEL,
        conf.display(),
        if created { "initialised" } else { "exists" }
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn client_command(command: Command) -> Result<(), String> {
    match command {
        Command::Key { conn, command } => {
            let sess = Session::open(&conn).await?;
            let mut c = sess.kms();
            match command {
                KeyCommand::Create {
                    description,
                    key_spec,
                    key_usage,
                    origin,
                    tags,
                    policy_file,
                } => {
                    let policy = read_optional(policy_file)?;
                    let r = c
                        .create_key(sess.k(
                            "CreateKey",
                            pb::CreateKeyRequest {
                                description,
                                policy,
                                key_spec: key_spec.unwrap_or_default(),
                                key_usage: key_usage.unwrap_or_default(),
                                origin: origin.unwrap_or_default(),
                                tags: pb_tags(tags),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if let Some(m) = r.key_metadata {
                        print_json(&json!({ "KeyMetadata": metadata_json(m)? }));
                    }
                }
                KeyCommand::List { limit } => {
                    let mut marker = String::new();
                    let mut keys = Vec::new();
                    loop {
                        let r = c
                            .list_keys(sess.k(
                                "ListKeys",
                                pb::ListKeysRequest {
                                    limit,
                                    marker: marker.clone(),
                                },
                            ))
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        keys.extend(
                            r.keys
                                .iter()
                                .map(|k| json!({"KeyId": k.key_id, "KeyArn": k.key_arn})),
                        );
                        if !r.truncated || limit.is_some() {
                            break;
                        }
                        marker = r.next_marker;
                    }
                    print_json(&json!({ "Keys": keys }));
                }
                KeyCommand::Describe { key } => {
                    let r = c
                        .describe_key(sess.k(
                            "DescribeKey",
                            pb::DescribeKeyRequest {
                                key_id: key,
                                grant_tokens: vec![],
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if let Some(m) = r.key_metadata {
                        print_json(&json!({ "KeyMetadata": metadata_json(m)? }));
                    }
                }
                KeyCommand::Enable { key } => {
                    c.enable_key(sess.k("EnableKey", pb::EnableKeyRequest { key_id: key }))
                        .await
                        .map_err(status_error)?;
                }
                KeyCommand::Disable { key } => {
                    c.disable_key(sess.k("DisableKey", pb::DisableKeyRequest { key_id: key }))
                        .await
                        .map_err(status_error)?;
                }
                KeyCommand::ScheduleDeletion { key, days } => {
                    let r = c
                        .schedule_key_deletion(sess.k(
                            "ScheduleKeyDeletion",
                            pb::ScheduleKeyDeletionRequest {
                                key_id: key,
                                pending_window_in_days: days,
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&door_render::scheduled_deletion(
                        &decode::scheduled_deletion(r)?,
                    ));
                }
                KeyCommand::GetPolicy { key } => {
                    let r = c
                        .get_key_policy(sess.k(
                            "GetKeyPolicy",
                            pb::GetKeyPolicyRequest {
                                key_id: key,
                                policy_name: String::new(),
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    println!("{}", r.policy);
                }
                KeyCommand::PutPolicy {
                    key,
                    policy_file,
                    bypass_policy_lockout_safety_check,
                } => {
                    let policy = std::fs::read_to_string(&policy_file)
                        .map_err(|e| format!("reading {}: {e}", policy_file.display()))?;
                    c.put_key_policy(sess.k(
                        "PutKeyPolicy",
                        pb::PutKeyPolicyRequest {
                            key_id: key,
                            policy_name: String::new(),
                            policy,
                            bypass_policy_lockout_safety_check,
                        },
                    ))
                    .await
                    .map_err(status_error)?;
                }
                KeyCommand::CancelDeletion { key } => {
                    let r = c
                        .cancel_key_deletion(sess.k(
                            "CancelKeyDeletion",
                            pb::CancelKeyDeletionRequest { key_id: key },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&json!({ "KeyId": r.key_id }));
                }
                KeyCommand::EnableRotation { key, period_days } => {
                    c.enable_key_rotation(sess.k(
                        "EnableKeyRotation",
                        pb::EnableKeyRotationRequest {
                            key_id: key,
                            rotation_period_in_days: period_days,
                        },
                    ))
                    .await
                    .map_err(status_error)?;
                }
                KeyCommand::DisableRotation { key } => {
                    c.disable_key_rotation(sess.k(
                        "DisableKeyRotation",
                        pb::DisableKeyRotationRequest { key_id: key },
                    ))
                    .await
                    .map_err(status_error)?;
                }
                KeyCommand::RotationStatus { key } => {
                    let r = c
                        .get_key_rotation_status(sess.k(
                            "GetKeyRotationStatus",
                            pb::GetKeyRotationStatusRequest { key_id: key },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&door_render::rotation_status(&decode::rotation_status(r)));
                }
                KeyCommand::Rotate { key } => {
                    let r = c
                        .rotate_key_on_demand(sess.k(
                            "RotateKeyOnDemand",
                            pb::RotateKeyOnDemandRequest { key_id: key },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&json!({ "KeyId": r.key_id }));
                }
                KeyCommand::ListRotations { key } => {
                    let mut marker = String::new();
                    let mut rotations = Vec::new();
                    loop {
                        let r = c
                            .list_key_rotations(sess.k(
                                "ListKeyRotations",
                                pb::ListKeyRotationsRequest {
                                    key_id: key.clone(),
                                    limit: None,
                                    marker: marker.clone(),
                                    include_key_material: String::new(),
                                },
                            ))
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        rotations.extend(
                            r.rotations
                                .iter()
                                .cloned()
                                .map(|e| door_render::rotation_entry(decode::rotation_entry(e))),
                        );
                        if !r.truncated {
                            break;
                        }
                        marker = r.next_marker;
                    }
                    print_json(&json!({ "Rotations": rotations }));
                }
            }
        }
        Command::Alias { conn, command } => {
            let sess = Session::open(&conn).await?;
            let mut c = sess.kms();
            match command {
                AliasCommand::Create { name, key } => {
                    c.create_alias(sess.k(
                        "CreateAlias",
                        pb::CreateAliasRequest {
                            alias_name: name,
                            target_key_id: key,
                        },
                    ))
                    .await
                    .map_err(status_error)?;
                }
                AliasCommand::List { key } => {
                    let r = c
                        .list_aliases(sess.k(
                            "ListAliases",
                            pb::ListAliasesRequest {
                                key_id: key.unwrap_or_default(),
                                limit: Some(1000),
                                marker: String::new(),
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let aliases: Vec<_> = r
                        .aliases
                        .into_iter()
                        .map(|a| door_render::alias_entry(decode::alias_entry(a)))
                        .collect();
                    print_json(&json!({ "Aliases": aliases }));
                }
                AliasCommand::Delete { name } => {
                    c.delete_alias(
                        sess.k("DeleteAlias", pb::DeleteAliasRequest { alias_name: name }),
                    )
                    .await
                    .map_err(status_error)?;
                }
            }
        }
        Command::Encrypt {
            conn,
            key,
            input,
            context,
            out,
            dry_run,
        } => {
            let plaintext = read_input(&input)?;
            let sess = Session::open(&conn).await?;
            let mut c = sess.kms();
            let r = c
                .encrypt(sess.k(
                    "Encrypt",
                    pb::EncryptRequest {
                        key_id: key,
                        plaintext: plaintext.to_vec(),
                        encryption_context: ctx(context),
                        dry_run,
                        ..Default::default()
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            match out {
                Some(p) => write_output(&p, &r.ciphertext_blob, false)?,
                None => println!("{}", B64.encode(&r.ciphertext_blob)),
            }
        }
        Command::Sign {
            conn,
            key,
            input,
            algorithm,
            message_type,
            out,
            dry_run,
        } => {
            let message = read_input(&input)?;
            let sess = Session::open(&conn).await?;
            let r = sess
                .kms()
                .sign(sess.k(
                    "Sign",
                    pb::SignRequest {
                        key_id: key,
                        message: message.to_vec(),
                        message_type,
                        signing_algorithm: algorithm,
                        grant_tokens: vec![],
                        dry_run,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            match out {
                Some(p) => write_output(&p, &r.signature, false)?,
                None => println!("{}", B64.encode(&r.signature)),
            }
        }
        Command::Verify {
            conn,
            key,
            input,
            algorithm,
            message_type,
            signature_file,
            dry_run,
        } => {
            let message = read_input(&input)?;
            let signature = std::fs::read(&signature_file)
                .map_err(|e| format!("reading {}: {e}", signature_file.display()))?;
            let sess = Session::open(&conn).await?;
            let r = sess
                .kms()
                .verify(sess.k(
                    "Verify",
                    pb::VerifyRequest {
                        key_id: key,
                        message: message.to_vec(),
                        message_type,
                        signature,
                        signing_algorithm: algorithm,
                        grant_tokens: vec![],
                        dry_run,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            print_json(&json!({
                "KeyId": r.key_id,
                "SignatureValid": r.signature_valid,
                "SigningAlgorithm": r.signing_algorithm,
            }));
        }
        Command::GetPublicKey { conn, key, out } => {
            let sess = Session::open(&conn).await?;
            let r = sess
                .kms()
                .get_public_key(sess.k(
                    "GetPublicKey",
                    pb::GetPublicKeyRequest {
                        key_id: key,
                        grant_tokens: vec![],
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            match out {
                Some(p) => write_output(&p, &r.public_key, false)?,
                None => print!("{}", public_key_pem(&r.public_key)),
            }
        }
        Command::GetKeyLastUsage { conn, key } => {
            let sess = Session::open(&conn).await?;
            let r = sess
                .kms()
                .get_key_last_usage(sess.k(
                    "GetKeyLastUsage",
                    pb::GetKeyLastUsageRequest { key_id: key },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            print_json(&p11kms::api::aws_json::kms::key_last_usage_body(
                &last_usage_output(r),
            ));
        }
        Command::DeriveSharedSecret {
            conn,
            key,
            peer_public_key,
            out,
            dry_run,
        } => {
            let raw = std::fs::read(&peer_public_key)
                .map_err(|e| format!("reading {}: {e}", peer_public_key.display()))?;
            let der = spki_from_der_or_pem(&raw)
                .ok_or_else(|| format!("{}: not a PEM PUBLIC KEY", peer_public_key.display()))?;
            let sess = Session::open(&conn).await?;
            let r = sess
                .kms()
                .derive_shared_secret(sess.k(
                    "DeriveSharedSecret",
                    pb::DeriveSharedSecretRequest {
                        key_id: key,
                        key_agreement_algorithm: "ECDH".into(),
                        public_key: der,
                        grant_tokens: vec![],
                        dry_run,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let secret = Zeroizing::new(r.shared_secret);
            match out {
                Some(p) => write_output(&p, &secret, true)?,
                None => println!("{}", Zeroizing::new(B64.encode(&*secret)).as_str()),
            }
        }
        Command::GenerateMac {
            conn,
            key,
            input,
            algorithm,
            out,
            dry_run,
        } => {
            let message = read_input(&input)?;
            let sess = Session::open(&conn).await?;
            let r = sess
                .kms()
                .generate_mac(sess.k(
                    "GenerateMac",
                    pb::GenerateMacRequest {
                        message: message.to_vec(),
                        key_id: key,
                        mac_algorithm: algorithm,
                        grant_tokens: vec![],
                        dry_run,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            match out {
                Some(p) => write_output(&p, &r.mac, false)?,
                None => println!("{}", B64.encode(&r.mac)),
            }
        }
        Command::Decrypt {
            conn,
            input,
            context,
            key,
            out,
            dry_run,
        } => {
            let blob = read_input(&input)?;
            let sess = Session::open(&conn).await?;
            let mut c = sess.kms();
            let r = c
                .decrypt(sess.k(
                    "Decrypt",
                    pb::DecryptRequest {
                        ciphertext_blob: blob.to_vec(),
                        encryption_context: ctx(context),
                        key_id: key.unwrap_or_default(),
                        dry_run,
                        ..Default::default()
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let plaintext = Zeroizing::new(r.plaintext);
            match out {
                Some(p) => write_output(&p, &plaintext, true)?,
                None => println!("{}", Zeroizing::new(B64.encode(&*plaintext)).as_str()),
            }
        }
        Command::GenerateDataKey {
            conn,
            key,
            key_spec,
            bytes,
            context,
            plaintext_out,
            ciphertext_out,
            dry_run,
        } => {
            let key_spec = match (&key_spec, bytes) {
                (None, None) => "AES_256".to_string(),
                (Some(s), _) => s.clone(),
                (None, Some(_)) => String::new(),
            };
            let sess = Session::open(&conn).await?;
            let mut c = sess.kms();
            let r = c
                .generate_data_key(sess.k(
                    "GenerateDataKey",
                    pb::GenerateDataKeyRequest {
                        key_id: key,
                        encryption_context: ctx(context),
                        number_of_bytes: bytes,
                        key_spec,
                        grant_tokens: vec![],
                        dry_run,
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let plaintext = Zeroizing::new(r.plaintext);
            if let Some(p) = &plaintext_out {
                write_output(p, &plaintext, true)?;
            }
            if let Some(p) = &ciphertext_out {
                write_output(p, &r.ciphertext_blob, false)?;
            }
            let mut v = json!({ "KeyId": r.key_id, "KeyMaterialId": r.key_material_id });
            if plaintext_out.is_none() {
                v["Plaintext"] = json!(Zeroizing::new(B64.encode(&*plaintext)).as_str());
            }
            if ciphertext_out.is_none() {
                v["CiphertextBlob"] = json!(B64.encode(&r.ciphertext_blob));
            }
            print_json(&v);
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    conn,
                    principal,
                    action,
                    key,
                    context,
                    source_ip,
                },
        } => {
            let sess = Session::open(&conn).await?;
            let mut c = AdminServiceClient::new(sess.channel.clone());
            let r = c
                .explain_access(sess.req(
                    "AdminService",
                    "ExplainAccess",
                    pb::ExplainAccessRequest {
                        principal,
                        action,
                        key_id: key,
                        encryption_context: ctx(context),
                        source_ip: source_ip.unwrap_or_default(),
                    },
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let statements: Vec<_> = r
                .deciding_statements
                .iter()
                .map(|d| json!({"PolicyType": d.policy_type, "PolicyName": d.policy_name, "Statement": d.statement}))
                .collect();
            print_json(&json!({
                "Decision": r.decision,
                "Reason": r.reason,
                "Resource": r.resource,
                "DecidingStatements": statements,
                "Message": r.message,
            }));
        }
        Command::Sts { conn, command } => {
            let sess = Session::open(&conn).await?;
            let mut c = SecurityTokenServiceClient::new(sess.channel.clone());
            match command {
                StsCommand::AssumeRole {
                    role_arn,
                    role_session_name,
                    duration_seconds,
                    policy_file,
                    tags,
                } => {
                    let policy = read_optional(policy_file)?;
                    let r = c
                        .assume_role(sess.req(
                            "SecurityTokenService",
                            "AssumeRole",
                            pb::AssumeRoleRequest {
                                role_arn,
                                role_session_name,
                                duration_seconds,
                                policy,
                                tags: pb_tags(tags),
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let creds = r.credentials.unwrap_or_default();
                    let user = r.assumed_role_user.unwrap_or_default();
                    let secret = Zeroizing::new(creds.secret_access_key);
                    let token = Zeroizing::new(creds.session_token);
                    print_json(&json!({
                        "Credentials": {
                            "AccessKeyId": creds.access_key_id,
                            "SecretAccessKey": secret.as_str(),
                            "SessionToken": token.as_str(),
                            "Expiration": ts(&creds.expiration),
                        },
                        "AssumedRoleUser": {"AssumedRoleId": user.assumed_role_id, "Arn": user.arn},
                    }));
                }
                StsCommand::GetCallerIdentity => {
                    let r = c
                        .get_caller_identity(sess.req(
                            "SecurityTokenService",
                            "GetCallerIdentity",
                            pb::GetCallerIdentityRequest {},
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&json!({"UserId": r.user_id, "Account": r.account, "Arn": r.arn}));
                }
            }
        }
        Command::Grant { conn, command } => {
            let sess = Session::open(&conn).await?;
            let mut c = sess.kms();
            match command {
                GrantCommand::Create {
                    key,
                    grantee,
                    operations,
                    retiring,
                    subset,
                    equals,
                    name,
                    dry_run,
                } => {
                    let constraint = |pairs: Vec<(String, String)>| {
                        (!pairs.is_empty())
                            .then(|| pb::EncryptionContextConstraint { pairs: ctx(pairs) })
                    };
                    let subset = constraint(subset);
                    let equals = constraint(equals);
                    let constraints =
                        (subset.is_some() || equals.is_some()).then_some(pb::GrantConstraints {
                            encryption_context_subset: subset,
                            encryption_context_equals: equals,
                        });
                    let r = c
                        .create_grant(sess.k(
                            "CreateGrant",
                            pb::CreateGrantRequest {
                                key_id: key,
                                grantee_principal: grantee,
                                retiring_principal: retiring.unwrap_or_default(),
                                operations,
                                constraints,
                                grant_tokens: vec![],
                                name: name.unwrap_or_default(),
                                dry_run,
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&json!({"GrantId": r.grant_id, "GrantToken": r.grant_token}));
                }
                GrantCommand::List { key } => {
                    let r = c
                        .list_grants(sess.k(
                            "ListGrants",
                            pb::ListGrantsRequest {
                                key_id: key,
                                limit: Some(1000),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let grants: Vec<_> = r
                        .grants
                        .into_iter()
                        .map(|g| door_render::grant_entry(decode::grant_entry(g)))
                        .collect();
                    print_json(&json!({ "Grants": grants }));
                }
                GrantCommand::Retire {
                    token,
                    key,
                    grant_id,
                    dry_run,
                } => {
                    c.retire_grant(sess.k(
                        "RetireGrant",
                        pb::RetireGrantRequest {
                            grant_token: token.unwrap_or_default(),
                            key_id: key.unwrap_or_default(),
                            grant_id: grant_id.unwrap_or_default(),
                            dry_run,
                        },
                    ))
                    .await
                    .map_err(status_error)?;
                }
                GrantCommand::Revoke {
                    key,
                    grant_id,
                    dry_run,
                } => {
                    c.revoke_grant(sess.k(
                        "RevokeGrant",
                        pb::RevokeGrantRequest {
                            key_id: key,
                            grant_id,
                            dry_run,
                        },
                    ))
                    .await
                    .map_err(status_error)?;
                }
            }
        }
        Command::Serve { .. }
        | Command::Check { .. }
        | Command::DevSetup { .. }
        | Command::Audit { .. }
        | Command::Policy {
            command: PolicyCommand::Eval { .. },
        } => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<ExitCode, String> = (|| match cli.command {
        Command::Serve { config } => {
            let config = load_config(&config)?;
            init_logging(&config);
            runtime()?
                .block_on(p11kms::server::run(config, shutdown_signal()))
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = load_config(&config)?;
            println!("config: ok");
            let report = runtime()?
                .block_on(p11kms::check::run(&config))
                .map_err(|e| e.to_string())?;
            print!("{}", report.render());
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Policy {
            command: PolicyCommand::Eval { file, check },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            let outcomes = p11kms::policy::cases::run_text(&text).map_err(|e| e.to_string())?;
            let mut failed = 0usize;
            for o in &outcomes {
                println!("{} {}", o.name, o.decision.effect.as_str());
                if check && !o.passed() {
                    failed += 1;
                    eprintln!(
                        "MISMATCH {}: expected {}, got {} ({})",
                        o.name,
                        o.expected.map(|e| e.as_str()).unwrap_or("-"),
                        o.decision.effect.as_str(),
                        o.decision.summary()
                    );
                }
            }
            if check {
                eprintln!(
                    "{} cases match, {} mismatch",
                    outcomes.len() - failed,
                    failed
                );
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Audit {
            command: AuditCommand::Verify { public_key, files },
        } => {
            let code = p11kms::audit::run_verify_cli(public_key.as_deref(), &files);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::DevSetup {
            data_dir,
            listen,
            aws_listen,
            metrics_listen,
        } => {
            let addrs = p11kms::devsetup::DevListen {
                grpc: listen.to_string(),
                aws: aws_listen.to_string(),
                metrics: metrics_listen.to_string(),
            };
            dev_setup_command(&data_dir, &addrs)?;
            Ok(ExitCode::SUCCESS)
        }
        other => {
            runtime()?.block_on(client_command(other))?;
            Ok(ExitCode::SUCCESS)
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
