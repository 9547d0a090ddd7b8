//! Shared harness for integration tests: one real SoftHSM2 token per test binary (each binary
//! is its own process, with one PKCS#11 instance), a dev PKI, and helpers that start the real
//! daemon in-process on 127.0.0.1:0 and connect real gRPC clients over mutual TLS.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use p11kms::api::grpc::status::aws_reason;
use p11kms::client::{AccessKeyCredentials, ClientConfig, Signer};
use p11kms::config::Config;
use p11kms::core::ManualClock;
use p11kms::pb::admin_service_client::AdminServiceClient;
use p11kms::pb::key_management_service_client::KeyManagementServiceClient;
use p11kms::pb::security_token_service_client::SecurityTokenServiceClient;
use p11kms::server::{self, RunningServer, ServerOptions};
use tonic::transport::Channel;

pub mod cluster;
mod grpc;
mod openssl;
pub mod postgres;
mod serve;
pub mod shim;
pub mod stores;
pub mod xks;
#[allow(unused_imports)]
pub use grpc::*;
#[allow(unused_imports)]
pub use serve::{KillOnDrop, ServeChild};

pub type Client = KeyManagementServiceClient<Channel>;

pub const ACCOUNT: &str = "111122223333";
pub const OTHER_ACCOUNT: &str = "444455556666";
/// The fixture directory's key administrator and two key users (tests/fixtures).
pub const ADMIN: &str = "arn:aws:iam::111122223333:user/admin";
pub const USER1: &str = "arn:aws:iam::111122223333:user/user1";
pub const USER2: &str = "arn:aws:iam::111122223333:user/user2";
pub const TOKEN_LABEL: &str = "p11kms-test";
pub const USER_PIN: &str = "test-user-pin-4821";
pub const SO_PIN: &str = "test-so-pin-9377";

/// The per-process test environment.
pub struct Env {
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub softhsm_conf: PathBuf,
}

static ENV: OnceLock<Env> = OnceLock::new();

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The identity fixtures: two accounts and a credentials file. A private copy (files 0600,
/// made once per test binary), because the daemon refuses a credentials file others may read
/// and git keeps files 0644.
pub fn fixtures_dir() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let dir = process_dir("fixtures");
        for entry in std::fs::read_dir(manifest_dir().join("tests/fixtures/identity")).unwrap() {
            let entry = entry.unwrap();
            write_secret(
                &dir.join(entry.file_name()),
                std::fs::read(entry.path()).unwrap(),
            );
        }
        dir
    })
    .clone()
}

/// Writes a file readable by its owner only (the daemon refuses secret files others may read).
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Creates the token and PKI once per test binary.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let dir = process_dir("it");
        let softhsm_dir = dir.join("softhsm");
        let out = hermetic_command("bash", &dir)
            .arg(manifest_dir().join("softhsm-config/init-token.sh"))
            .arg(&softhsm_dir)
            .arg(TOKEN_LABEL)
            .env("P11KMS_SO_PIN", SO_PIN)
            .env("P11KMS_USER_PIN", USER_PIN)
            .output()
            .expect("run init-token.sh (is softhsm2 installed?)");
        assert_succeeded(&out, "init-token.sh failed");
        stores::make_pool(&softhsm_dir, &dir);
        let softhsm_conf = softhsm_dir.join("softhsm2.conf");
        // Set before any PKCS#11 module is loaded in this process.
        std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
        write_secret(&dir.join("user-pin"), USER_PIN);
        let pki = dir.join("pki");
        p11kms::devsetup::ensure_ca_and_server(&pki).unwrap();
        for name in ["admin", "bob", "keyadmin", "user1", "user2", "unbound"] {
            p11kms::devsetup::issue_client_cert(&pki, name, None).unwrap();
        }
        Env {
            dir,
            pki,
            softhsm_conf,
        }
    })
}

/// A daemon config for a data directory of its own, on an ephemeral port.
pub fn config_text(data_dir: &Path) -> String {
    let e = env();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "{pki}/server.pem"
tls_key = "{pki}/server-key.pem"
client_ca = "{pki}/ca.pem"

[hsm]
module = "{module}"
token_label = "{TOKEN_LABEL}"
pin_file = "{dir}/user-pin"
softhsm2_conf = "{conf}"

[store]
data_dir = "{data}"

[metrics]
listen = "127.0.0.1:0"

[identity]
credentials = "{fixtures}/credentials.json"

[[identity.account]]
account_id = "{ACCOUNT}"
authorization_details = "{fixtures}/{ACCOUNT}.json"

[[identity.account]]
account_id = "{OTHER_ACCOUNT}"
authorization_details = "{fixtures}/{OTHER_ACCOUNT}.json"
"#,
        fixtures = fixtures_dir().display(),
        pki = e.pki.display(),
        dir = e.dir.display(),
        conf = e.softhsm_conf.display(),
        data = data_dir.display(),
        module = p11kms::devsetup::find_softhsm_module()
            .expect("SoftHSM2 module not found")
            .display(),
    )
}

/// Writes the config file for a data directory and returns its path.
pub fn write_config(data_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(data_dir).unwrap();
    let path = data_dir.join("p11kms.toml");
    std::fs::write(&path, config_text(data_dir)).unwrap();
    path
}

/// Writes the config `text` to the file `path` and loads it, which must succeed.
pub fn load_config_text(path: &Path, text: impl AsRef<[u8]>) -> Config {
    std::fs::write(path, text).unwrap();
    Config::load(path).expect("config")
}

pub fn config(data_dir: &Path) -> Config {
    Config::load(&write_config(data_dir)).expect("config")
}

/// The `[aws_json]` section that enables the AWS door over TLS on an ephemeral port.
pub const AWS_DOOR_SECTION: &str =
    "\n[aws_json]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls = true\n";

/// [`config`] with more sections appended to [`config_text`] (e.g. [`AWS_DOOR_SECTION`]).
pub fn config_with(data_dir: &Path, extra: &str) -> Config {
    std::fs::create_dir_all(data_dir).unwrap();
    load_config_text(&data_dir.join("p11kms.toml"), config_text(data_dir) + extra)
}

/// Starts the daemon with the AWS door enabled ([`AWS_DOOR_SECTION`]); returns it and the
/// door's `https://127.0.0.1:<port>` endpoint.
pub async fn start_aws_door(data_dir: &Path, options: ServerOptions) -> (RunningServer, String) {
    serve_aws_door(&config_with(data_dir, AWS_DOOR_SECTION), options).await
}

/// Starts the daemon on `config`, whose AWS door must be enabled on loopback; returns it and
/// the door's `https://127.0.0.1:<port>` endpoint.
pub async fn serve_aws_door(config: &Config, options: ServerOptions) -> (RunningServer, String) {
    let server = server::start(config, options).await.expect("daemon starts");
    let addr = server.aws_json_addr.expect("the AWS door is enabled");
    assert!(addr.ip().is_loopback());
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    (server, endpoint)
}

/// Copies the identity fixtures to `dest/identity` and returns the copy's path, for tests that
/// change identity files under a running daemon.
pub fn copy_fixtures(dest: &Path) -> PathBuf {
    let copy = dest.join("identity");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    copy
}

/// Starts the daemon on the identity files in `fixtures` (a copy from [`copy_fixtures`]), with
/// `server_extra` added to `[server]`.
pub async fn try_start_with_fixtures(
    data: &Path,
    fixtures: &Path,
    server_extra: &str,
) -> Result<RunningServer, server::ServerError> {
    let text = config_text(data)
        .replace(
            &fixtures_dir().display().to_string(),
            &fixtures.display().to_string(),
        )
        .replace("[server]\n", &format!("[server]\n{server_extra}\n"));
    assert!(text.contains(&fixtures.display().to_string()));
    let cfg = load_config_text(&data.join("p11kms-copy.toml"), text);
    server::start(
        &cfg,
        ServerOptions {
            clock: Arc::new(ManualClock::default()),
            sweep_interval: Some(std::time::Duration::from_millis(50)),
        },
    )
    .await
}

/// Starts the daemon on the identity files in `fixtures` (a copy from [`copy_fixtures`]).
pub async fn start_with_fixtures(data: &Path, fixtures: &Path) -> RunningServer {
    try_start_with_fixtures(data, fixtures, "")
        .await
        .expect("daemon starts")
}

/// A fresh data directory under the test environment.
pub fn data_dir(name: &str) -> PathBuf {
    let d = env()
        .dir
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts the real daemon on 127.0.0.1:0 with the given clock.
pub async fn start_with(data_dir: &Path, clock: Arc<ManualClock>) -> RunningServer {
    server::start(
        &config(data_dir),
        ServerOptions {
            clock,
            sweep_interval: Some(std::time::Duration::from_millis(50)),
        },
    )
    .await
    .expect("daemon starts")
}

pub async fn start(data_dir: &Path) -> RunningServer {
    start_with(data_dir, Arc::new(ManualClock::default())).await
}

/// A test's set-up on a manual clock: a fresh data directory `name` ([`data_dir`]), the clock,
/// the daemon `start` starts on both (e.g. [`start_with`], [`start_swept_by_hand`]) and an admin
/// client.
pub async fn start_admin_clocked(
    name: &str,
    start: impl AsyncFnOnce(&Path, Arc<ManualClock>) -> RunningServer,
) -> (PathBuf, Arc<ManualClock>, RunningServer, Client) {
    let dir = data_dir(name);
    let clock = Arc::new(ManualClock::default());
    let server = start(&dir, clock.clone()).await;
    let c = admin(server.addr).await;
    (dir, clock, server, c)
}

/// A client authenticating with the named certificate from the test PKI (or none).
pub async fn client_as(addr: std::net::SocketAddr, cert: Option<&str>) -> Client {
    let pki = &env().pki;
    ClientConfig {
        endpoint: Some(format!("https://127.0.0.1:{}", addr.port())),
        ca_cert: Some(pki.join("ca.pem")),
        client_cert: cert.map(|c| pki.join(format!("{c}.pem"))),
        client_key: cert.map(|c| pki.join(format!("{c}-key.pem"))),
        tls_domain: Some("localhost".into()),
        ..Default::default()
    }
    .connect()
    .await
    .expect("connect")
}

/// The secret of a fixture access key (tests/fixtures/identity/credentials.json).
pub fn fixture_credentials(access_key_id: &str) -> AccessKeyCredentials {
    let text = std::fs::read_to_string(fixtures_dir().join("credentials.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let secret = v["AccessKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["AccessKeyId"] == access_key_id)
        .unwrap_or_else(|| panic!("no fixture access key {access_key_id}"))["SecretAccessKey"]
        .as_str()
        .unwrap()
        .to_string();
    AccessKeyCredentials {
        access_key_id: access_key_id.to_string(),
        secret_access_key: zeroize::Zeroizing::new(secret),
        session_token: None,
    }
}

/// Clients of every service that authenticate with SigV4 (no client certificate).
pub struct Signed {
    pub kms: Client,
    pub sts: SecurityTokenServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
    pub signer: Signer,
}

impl Signed {
    /// Signs a KeyManagementService request for `method` (e.g. "Encrypt").
    pub fn kms_req<T: prost::Message>(&self, msg: T, method: &str) -> tonic::Request<T> {
        self.signer
            .sign(msg, &format!("/p11kms.v1.KeyManagementService/{method}"))
    }

    /// Signs a SecurityTokenService request.
    pub fn sts_req<T: prost::Message>(&self, msg: T, method: &str) -> tonic::Request<T> {
        self.signer
            .sign(msg, &format!("/p11kms.v1.SecurityTokenService/{method}"))
    }

    /// Signs an AdminService request.
    pub fn admin_req<T: prost::Message>(&self, msg: T, method: &str) -> tonic::Request<T> {
        self.signer
            .sign(msg, &format!("/p11kms.v1.AdminService/{method}"))
    }
}

/// SigV4 clients with the given credentials.
pub async fn signed_with(addr: std::net::SocketAddr, credentials: AccessKeyCredentials) -> Signed {
    let pki = &env().pki;
    let cfg = ClientConfig {
        endpoint: Some(format!("https://127.0.0.1:{}", addr.port())),
        ca_cert: Some(pki.join("ca.pem")),
        tls_domain: Some("localhost".into()),
        ..Default::default()
    };
    let channel = cfg.channel().await.expect("connect");
    Signed {
        kms: Client::new(channel.clone()),
        sts: SecurityTokenServiceClient::new(channel.clone()),
        admin: AdminServiceClient::new(channel),
        signer: Signer {
            credentials,
            region: "us-east-1".into(),
            authority: format!("127.0.0.1:{}", addr.port()),
        },
    }
}

/// SigV4 clients for a fixture access key.
pub async fn signed_as(addr: std::net::SocketAddr, access_key_id: &str) -> Signed {
    signed_with(addr, fixture_credentials(access_key_id)).await
}

pub async fn admin(addr: std::net::SocketAddr) -> Client {
    client_as(addr, Some("admin")).await
}

/// A gRPC health client to the daemon at `addr`, over TLS without a client certificate.
pub async fn health_client(
    addr: std::net::SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<Channel> {
    let channel = ClientConfig {
        endpoint: Some(format!("https://127.0.0.1:{}", addr.port())),
        ca_cert: Some(env().pki.join("ca.pem")),
        tls_domain: Some("localhost".into()),
        ..Default::default()
    }
    .channel()
    .await
    .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// The flags that connect a `p11kms` client command to the daemon's gRPC door on `port` as
/// the dev PKI's client certificate `cn` (e.g. "admin").
pub fn cli_connection(port: u16, cn: &str) -> Vec<String> {
    let pki = &env().pki;
    vec![
        format!("--endpoint=https://127.0.0.1:{port}"),
        format!("--ca-cert={}", pki.join("ca.pem").display()),
        format!("--client-cert={}", pki.join(format!("{cn}.pem")).display()),
        format!(
            "--client-key={}",
            pki.join(format!("{cn}-key.pem")).display()
        ),
    ]
}

/// An AWS client (the AWS CLI, or Python with boto3) with a clean environment ([`hermetic_command`])
/// pointed at the AWS door `endpoint`: region, CA bundle, one attempt, and the fixture
/// credentials of `access_key_id` in environment variables (never in argv).
pub fn aws_client_command(
    program: impl AsRef<std::ffi::OsStr>,
    scratch: &Path,
    access_key_id: &str,
    endpoint: &str,
) -> Command {
    let creds = fixture_credentials(access_key_id);
    let mut c = hermetic_command(program, scratch);
    c.env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", creds.secret_access_key.as_str())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KMS", endpoint)
        .env("AWS_CA_BUNDLE", env().pki.join("ca.pem"))
        .env("AWS_MAX_ATTEMPTS", "1");
    c
}

/// The AWS exception name of a failed call.
pub fn reason<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            aws_reason(&s).unwrap_or_else(|| format!("no reason; {:?}: {}", s.code(), s.message()))
        }
    }
}

/// Checks that a call failed (`expected` says why it must) with the AWS exception `reason` and
/// a message that contains `says`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    expected: &str,
    reason: &str,
    says: &str,
) {
    let status = r.expect_err(expected);
    assert_eq!(aws_reason(&status).as_deref(), Some(reason), "{expected}");
    assert!(
        status.message().contains(says),
        "{expected}: the message should say {says:?}: {}",
        status.message()
    );
}

/// Starts the daemon on a fresh data directory `name` ([`data_dir`], [`start`]) and connects
/// an admin client: the directory, the daemon and the client.
pub async fn start_admin(name: &str) -> (PathBuf, RunningServer, Client) {
    let dir = data_dir(name);
    let server = start(&dir).await;
    let c = admin(server.addr).await;
    (dir, server, c)
}

/// Creates a key and returns its id.
pub async fn create_key(c: &mut Client) -> String {
    c.create_key(p11kms::pb::CreateKeyRequest::default())
        .await
        .expect("create key")
        .into_inner()
        .key_metadata
        .expect("metadata")
        .key_id
}

/// An encryption context from literal pairs.
pub fn ctx(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `openssl pkeyutl -encrypt -pubin` with OAEP (`md` for OAEP and MGF1) under a DER
/// SubjectPublicKeyInfo, converted to PEM first, exactly as AWS documents for import wrapping:
/// an independent RSA-OAEP implementation.
pub fn openssl_oaep_encrypt(spki_der: &[u8], md: &str, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let der = dir.path().join("wrapping.der");
    let pem = dir.path().join("wrapping.pem");
    std::fs::write(&der, spki_der).unwrap();
    // The PublicKey is DER SPKI; openssl converts it to the PEM AWS's examples use.
    let st = hermetic_command("openssl", scratch_dir())
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "openssl cannot parse the PublicKey as DER SPKI"
    );
    openssl::pkeyutl_oaep(
        hermetic_command("openssl", scratch_dir()),
        &pem,
        "PEM",
        md,
        data,
    )
}

/// Opens a p11kms v1 blob locally with the known key material (BYOK tests prove the right key
/// arrived): AES-256-GCM, IV at offset 21, AAD = "p11kms/v1" || header (33 bytes) ||
/// canonical EC (pairs sorted by key bytes, each of key and value as u16 BE length || bytes).
pub fn open_locally(material: &[u8], blob: &[u8], ec: &[(&str, &str)]) -> Option<Vec<u8>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let mut pairs: Vec<_> = ec.to_vec();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut aad = b"p11kms/v1".to_vec();
    aad.extend_from_slice(&blob[..33]);
    for (k, v) in pairs {
        for part in [k.as_bytes(), v.as_bytes()] {
            aad.extend_from_slice(&(part.len() as u16).to_be_bytes());
            aad.extend_from_slice(part);
        }
    }
    let iv: [u8; 12] = blob[21..33].try_into().unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).ok()?);
    let mut buf = blob[33..].to_vec();
    key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(&aad), &mut buf)
        .ok()
        .map(|pt| pt.to_vec())
}

/// The objects on the daemon's token whose `CKA_ID` belongs to key `key_id` (a UUID), as
/// (version, whether it is a token object): token objects and the session copies that using a
/// key makes alike.
pub async fn key_objects(server: &RunningServer, key_id: &str) -> Vec<(u32, bool)> {
    let uuid = *p11kms::core::key_id::parse(key_id).unwrap().as_bytes();
    server
        .kms
        .hsm()
        .list_objects()
        .await
        .unwrap()
        .iter()
        .filter_map(|o| Some((p11kms::hsm::ObjectId::from_bytes(&o.id)?, o.token)))
        .filter(|(id, _)| id.key_id() == uuid)
        .map(|(id, token)| (id.version(), token))
        .collect()
}

/// How many objects on the token `hsm` has a label for which `label` holds (left-over
/// session objects, import objects, probes).
pub async fn labelled_objects(hsm: &p11kms::hsm::Hsm, label: impl Fn(&str) -> bool) -> usize {
    let objects = hsm.list_objects().await.unwrap();
    objects.iter().filter(|o| label(&o.label)).count()
}

/// A command that sees nothing of the caller's environment: no `AWS_*`, `P11KMS_*` or
/// `SOFTHSM2_CONF` variable, no `~/.aws` (HOME is `scratch`, the AWS config files are
/// `/dev/null`) and no client config in the working directory (`scratch`, which the test
/// made). Only `PATH` comes from outside. Whatever else the child needs, the test sets.
pub fn hermetic_command(program: impl AsRef<std::ffi::OsStr>, scratch: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch)
        .env("LANG", "C.UTF-8")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(scratch);
    c
}

/// An empty directory of this test process, for children's HOME and working directory.
pub fn scratch_dir() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| process_dir("cwd"))
}

/// A temporary directory that lives as long as this test process: statics are never dropped,
/// so it is named `p11kms-<kind>-<pid>-…` and the next test process to make one removes those
/// whose process has ended (each run's token, PKI and databases are tens of MB).
fn process_dir(kind: &str) -> PathBuf {
    let prefix = format!("p11kms-{kind}-");
    remove_dirs_of_ended_processes(&prefix);
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir()
        .expect("tempdir")
        .keep()
}

/// Removes `<tmp>/<prefix><pid>-…` directories whose process no longer runs.
fn remove_dirs_of_ended_processes(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The `p11kms` binary under test as a [`hermetic_command`] in [`scratch_dir`]: it finds no
/// `p11kms-data/client.toml` and no `P11KMS_*` variable, so every connection setting is one
/// the test passes.
pub fn p11kms_command() -> Command {
    hermetic_command(env!("CARGO_BIN_EXE_p11kms"), scratch_dir())
}

/// A finished command's exit code (-1 when killed by a signal) and its output, stdout then
/// stderr.
pub fn code_and_output(out: &std::process::Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Asserts that a finished command succeeded; the failure message is `what` and its stderr.
#[track_caller]
pub fn assert_succeeded(out: &std::process::Output, what: impl std::fmt::Display) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the real `p11kms check --config <config>` (blocking): its exit code and its output
/// (stdout then stderr).
pub async fn run_check(config: &Path) -> (i32, String) {
    let mut command = p11kms_command();
    command.args(["check", "--config"]).arg(config);
    tokio::task::spawn_blocking(move || code_and_output(&command.output().expect("run check")))
        .await
        .unwrap()
}

/// The ids of the keys the daemon's store holds in `Creating` (creations not finished).
pub async fn creating_ids(server: &RunningServer) -> std::collections::BTreeSet<String> {
    server
        .kms
        .store()
        .load_all()
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.key.state == p11kms::store::KeyState::Creating)
        .map(|b| b.key.key_id)
        .collect()
}

/// Polls `f` every 50 ms for up to 5 s (sweeper-driven changes); whether it became true.
pub async fn wait_for(mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Starts the real daemon with the given clock and its background sweeper held back (it runs
/// once at start, then not for a year), so that a test drives the sweeps itself
/// (`server.kms.sweep_deletions()`, ...) and asserts on what they did.
pub async fn start_swept_by_hand(data_dir: &Path, clock: Arc<ManualClock>) -> RunningServer {
    server::start(
        &config(data_dir),
        ServerOptions {
            clock,
            sweep_interval: Some(std::time::Duration::from_secs(365 * 86_400)),
        },
    )
    .await
    .expect("daemon starts")
}

/// [`start_swept_by_hand`] from a config file rather than a data directory.
pub async fn start_config_swept_by_hand(config: &Path, clock: Arc<ManualClock>) -> RunningServer {
    let cfg = Config::load(config).expect("config");
    let options = ServerOptions {
        clock,
        sweep_interval: Some(std::time::Duration::from_secs(365 * 86_400)),
    };
    server::start(&cfg, options).await.expect("daemon starts")
}

/// An AdminService client over mutual TLS as the fixture PKI's client certificate `cn`.
pub async fn admin_service(addr: std::net::SocketAddr, cn: &str) -> AdminServiceClient<Channel> {
    let pki = &env().pki;
    let channel = ClientConfig {
        endpoint: Some(format!("https://127.0.0.1:{}", addr.port())),
        ca_cert: Some(pki.join("ca.pem")),
        client_cert: Some(pki.join(format!("{cn}.pem"))),
        client_key: Some(pki.join(format!("{cn}-key.pem"))),
        tls_domain: Some("localhost".into()),
        ..Default::default()
    }
    .channel()
    .await
    .expect("connect");
    AdminServiceClient::new(channel)
}

/// The audit segment files (`audit/*.jsonl`) of a data directory, in order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let audit = dir.join("audit");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&audit)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    v.sort();
    v
}

/// The user `name` in an IAM authorization-details document (the identity directory's
/// format, as in tests/fixtures), for a test to edit.
pub fn user_mut<'a>(details: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    details["UserDetailList"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|u| u["UserName"] == name)
        .unwrap_or_else(|| panic!("no user {name} in the authorization details"))
}

/// Every record of the audit trail of a data directory.
pub fn records(dir: &Path) -> Vec<serde_json::Value> {
    segments(dir)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The audit events (records of type `event`) of a data directory, in order.
pub fn events(dir: &Path) -> Vec<serde_json::Value> {
    records(dir)
        .into_iter()
        .filter(|r| r["recordType"] == "event")
        .collect()
}

/// Everything the metadata store holds (and the engine's key count), to prove that a request
/// changed nothing.
#[derive(Debug, PartialEq)]
pub struct StoreSnapshot {
    pub keys: Vec<p11kms::store::KeyBundle>,
    pub aliases: Vec<p11kms::store::AliasRecord>,
    pub grants: Vec<p11kms::store::GrantRecord>,
    pub deleted: Vec<String>,
    pub key_count: usize,
}

/// The store's contents now, in a stable order.
pub async fn store_snapshot(server: &RunningServer) -> StoreSnapshot {
    let store = server.kms.store();
    let mut aliases = store.list_aliases().await.unwrap();
    aliases.sort_by(|a, b| a.name.cmp(&b.name));
    let mut grants = store.list_grants().await.unwrap();
    grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    StoreSnapshot {
        keys: store.load_all().await.unwrap(),
        aliases,
        grants,
        deleted: store.deleted_key_ids().await.unwrap(),
        key_count: server.kms.key_count(),
    }
}

/// The service events (what the daemon did by itself) named `name` about key `key_id`: their
/// outcome events, without the intent records written before each action.
pub fn service_events(data_dir: &Path, name: &str, key_id: &str) -> Vec<serde_json::Value> {
    events(data_dir)
        .into_iter()
        .filter(|e| {
            e["eventType"] == "AwsServiceEvent"
                && e.get("phase").is_none()
                && e["eventName"] == name
                && e["resources"][0]["ARN"]
                    .as_str()
                    .is_some_and(|a| a.ends_with(&format!(":key/{key_id}")))
        })
        .collect()
}

/// Checks the shape of a successful service event: CloudTrail's service identity
/// (`AWSService`, invoked by `p11kms`), the key in `resources`, no error.
pub fn assert_service_success(e: &serde_json::Value) {
    assert_eq!(e["userIdentity"]["type"], "AWSService", "{e}");
    assert_eq!(e["userIdentity"]["invokedBy"], "p11kms", "{e}");
    assert_eq!(e["userIdentity"]["accountId"], ACCOUNT, "{e}");
    assert_eq!(e["resources"][0]["type"], "AWS::KMS::Key", "{e}");
    assert!(e.get("errorCode").is_none(), "{e}");
}

/// Fetches `GET /metrics` with a plain HTTP/1.1 request over loopback.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    text
}

/// The key policy most tests give their keys: `admin` may do everything (statement
/// `KeyAdministrators`), `user` may do `user_actions` (`KeyUsers`), then the `more` statements.
pub fn admin_and_user_policy(
    admin: &str,
    user: &str,
    user_actions: &[&str],
    more: &[serde_json::Value],
) -> serde_json::Value {
    use serde_json::json;
    let mut statements = vec![
        json!({"Sid": "KeyAdministrators", "Effect": "Allow", "Principal": {"AWS": admin},
               "Action": "kms:*", "Resource": "*"}),
        json!({"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"AWS": user},
               "Action": user_actions, "Resource": "*"}),
    ];
    statements.extend_from_slice(more);
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// The value of the first sample line starting with `prefix`.
pub fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// One HTTP/1.1 answer read off the wire: status, headers in the order sent, body bytes
/// (un-chunked when the answer was chunked).
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A SigV4-signed `POST /` to the AWS door over TLS (the test CA) and HTTP/1.1, signed with
/// the library's signer as `credentials` for `service` (`kms` or `sts`) at `amz_secs` (the
/// daemon's clock, seconds), with the given extra headers (`content-type`, `x-amz-target`).
/// `Connection: close`: one request per connection, the whole answer read.
pub async fn aws_door_post(
    addr: std::net::SocketAddr,
    credentials: &AccessKeyCredentials,
    service: &str,
    amz_secs: i64,
    extra: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    let signer = (
        credentials.access_key_id.as_str(),
        credentials.secret_access_key.as_str(),
    );
    let headers = aws_door_headers(addr, Some(signer), service, amz_secs, extra, body);
    tls_exchange(addr, &http_post_bytes(&headers, body, true)).await
}

/// Sends the bytes of one whole HTTP/1.1 request (with `connection: close`) over TLS (the
/// test CA) to a door at `addr` and reads its whole answer.
pub async fn tls_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> HttpAnswer {
    tls_exchange_with(test_ca_connector(b"http/1.1"), addr, bytes).await
}

/// [`tls_exchange`] through `connector` (e.g. one presenting a client certificate).
pub async fn tls_exchange_with(
    connector: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(bytes).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tls.read_to_end(&mut raw),
    )
    .await
    .expect("the door answers")
    .ok();
    parse_http_answer(&raw)
}

/// The headers of a `POST /` to the AWS door at `addr`: `host`, the `extra` ones (names
/// lower-cased), `x-amz-date` at `amz_secs`, and, when `signer` (access key id, secret) is
/// given, the SigV4 `authorization` over all of them for `service`, from the library's signer.
pub fn aws_door_headers(
    addr: std::net::SocketAddr,
    signer: Option<(&str, &str)>,
    service: &str,
    amz_secs: i64,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    use p11kms::identity::sigv4::{self, SignableRequest, SigningParams};
    let amz_date = sigv4::format_amz_date(amz_secs);
    let mut headers: Vec<(String, String)> =
        vec![("host".into(), format!("127.0.0.1:{}", addr.port()))];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())),
    );
    headers.push(("x-amz-date".into(), amz_date.clone()));
    if let Some((access_key_id, secret_access_key)) = signer {
        let names: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let auth = sigv4::authorization_header(
            &SignableRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                payload_sha256_hex: &sigv4::sha256_hex(body),
            },
            &names,
            &SigningParams {
                access_key_id,
                secret_access_key,
                region: "us-east-1",
                service,
                amz_date: &amz_date,
            },
        );
        headers.push(("authorization".into(), auth));
    }
    headers
}

/// The bytes of an HTTP/1.1 `POST /` with `headers`, `content-length`, `connection: close`
/// when `close` (else the connection may be kept alive), and `body`.
pub fn http_post_bytes(headers: &[(String, String)], body: &[u8], close: bool) -> Vec<u8> {
    http_request_bytes("POST", "/", headers, body, close)
}

/// [`http_post_bytes`] with any method and path.
pub fn http_request_bytes(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n", body.len()));
    if close {
        req.push_str("connection: close\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A TLS client trusting the test CA (no client certificate), offering `alpn`.
pub fn test_ca_connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    test_ca_connector_as(alpn, None)
}

/// [`test_ca_connector`] presenting the test PKI's client certificate `cert` (`<cert>.pem`,
/// `<cert>-key.pem`) when given.
pub fn test_ca_connector_as(alpn: &[u8], cert: Option<&str>) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(env().pki.join("ca.pem")).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match cert {
        None => config.with_no_client_auth(),
        Some(name) => {
            let pki = &env().pki;
            let chain =
                rustls_pki_types::CertificateDer::pem_file_iter(pki.join(format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_file(pki.join(format!("{name}-key.pem")))
                    .unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Splits a whole HTTP/1.1 answer into status, headers and body (un-chunking the body).
pub fn parse_http_answer(raw: &[u8]) -> HttpAnswer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpAnswer {
        status,
        headers,
        body,
    }
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    out
}

/// Writes the daemon config of `dir` with `[hsm] residency = "wrapped"` and returns its path.
pub fn wrapped_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = config_text(dir).replace("[hsm]\n", "[hsm]\nresidency = \"wrapped\"\n");
    assert!(text.contains("residency = \"wrapped\""));
    let path = dir.join("p11kms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the real daemon in-process from the config file `config`.
pub async fn start_from(config: &Path) -> RunningServer {
    let cfg = Config::load(config).expect("config");
    server::start(&cfg, ServerOptions::default())
        .await
        .expect("daemon starts")
}

/// Runs a child (a client, a script) to completion off the async runtime, failing the test with
/// its output unless it succeeded; prints its standard output under `what`.
pub async fn run_ok(mut c: Command, what: &str) {
    let what = what.to_string();
    let out = tokio::task::spawn_blocking(move || c.output().expect("run a child"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{what}:\n{stdout}");
}
