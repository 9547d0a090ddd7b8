//! The AWS door with real AWS clients from PyPI (issue 6): the AWS CLI, boto3 and the AWS
//! Encryption SDK for Python run as subprocesses against the real daemon (HTTPS on
//! 127.0.0.1:0, the test PKI's CA in `AWS_CA_BUNDLE`, fixture access keys in the environment,
//! no ~/.aws files). Bad requests are sent raw over TLS and checked for AWS's error name, HTTP
//! status, and their count in the metrics (proof that the gate accounted for them).
//!
//! The clients live in `./.venv`, created by `scripts/python-venv.sh` (which `scripts/test.sh`
//! runs first). Without it these tests fail and say so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::*;
use p11kms::config::Config;
use p11kms::core::{Clock, SystemClock};
use p11kms::identity::sigv4::{self, SignableRequest, SigningParams};
use p11kms::server::{self, RunningServer, ServerOptions};
use serde_json::{json, Value};

const AK_ADMIN: &str = "AKIAADMIN00000000001";
const AK_USER2: &str = "AKIAUSER200000000001";

/// A daemon with the AWS door enabled.
struct Door {
    server: RunningServer,
    /// The data directory (the audit trail is under `audit/`).
    dir: PathBuf,
    endpoint: String,
    /// A scratch directory: HOME of the clients, files they read and write.
    scratch: PathBuf,
}

/// A door on a fresh data directory `name`.
async fn start_door(name: &str) -> Door {
    start_door_with(name, "").await
}

/// A door whose config also holds `extra` (e.g. `[[hsm.cluster]]` sections).
async fn start_door_with(name: &str, extra: &str) -> Door {
    let dir = data_dir(name);
    let config = config_with(&dir, &(AWS_DOOR_SECTION.to_owned() + extra));
    let options = ServerOptions {
        clock: Arc::new(SystemClock),
        sweep_interval: None,
    };
    let (server, endpoint) = serve_aws_door(&config, options).await;
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    Door {
        endpoint,
        dir,
        server,
        scratch,
    }
}

/// The venv with the AWS clients; fails the test (never skips it) when missing.
fn venv() -> PathBuf {
    let v = manifest_dir().join(".venv");
    assert!(
        v.join("bin/aws").is_file() && v.join("bin/python").is_file(),
        "the Python venv with awscli, boto3 and aws-encryption-sdk is missing at {}: \
         run scripts/python-venv.sh (scripts/test.sh runs it before the tests)",
        v.display()
    );
    v
}

/// A client command with a clean environment: endpoint, CA bundle, region, and the
/// credentials of `access_key_id` in environment variables (never in argv).
fn client_command(door: &Door, program: &Path, access_key_id: &str) -> Command {
    let mut c = aws_client_command(program, &door.scratch, access_key_id, &door.endpoint);
    c.env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_STS", &door.endpoint)
        .env("AWS_PAGER", "")
        .env(
            "P11KMS_FIXTURE_CREDENTIALS",
            fixtures_dir().join("credentials.json"),
        )
        .env("P11KMS_SCRATCH", &door.scratch);
    c
}

async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("run a client"))
        .await
        .unwrap()
}

/// `aws <args> --output json` as `access_key_id`.
async fn aws(door: &Door, access_key_id: &str, args: &[&str]) -> Output {
    let mut c = client_command(door, &venv().join("bin/aws"), access_key_id);
    c.args(args).args(["--output", "json"]);
    output(c).await
}

/// A successful `aws` call's JSON output (`{}` for none).
async fn aws_ok(door: &Door, access_key_id: &str, args: &[&str]) -> Value {
    let out = aws(door, access_key_id, args).await;
    assert!(
        out.status.success(),
        "aws {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {text}"))
    }
}

/// Runs `tests/python/<script>` with the venv's Python as `access_key_id`.
async fn python(door: &Door, access_key_id: &str, script: &str) {
    python_with(door, access_key_id, script, &[], &[]).await
}

/// Starts a door on a fresh data directory `name`, runs `tests/python/<script>` on it as the
/// admin and stops the door.
async fn admin_python_checks(name: &str, script: &str) {
    let door = start_door(name).await;
    python(&door, AK_ADMIN, script).await;
    door.server.shutdown().await.unwrap();
}

/// Runs `tests/python/<script> <args>...` with the venv's Python as `access_key_id`, with extra
/// environment variables for the script.
async fn python_with(
    door: &Door,
    access_key_id: &str,
    script: &str,
    args: &[&str],
    vars: &[(&str, &Path)],
) {
    let mut c = client_command(door, &venv().join("bin/python"), access_key_id);
    c.arg(manifest_dir().join("tests/python").join(script))
        .args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    run_ok(c, script).await;
}

fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

// ---------------------------------------------------------------------------------------------
// The AWS CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_runs_the_key_lifecycle() {
    let door = start_door("aws-cli").await;
    let a = AK_ADMIN;

    let created = aws_ok(
        &door,
        a,
        &["kms", "create-key", "--description", "made by the AWS CLI"],
    )
    .await;
    let meta = &created["KeyMetadata"];
    let key_id = meta["KeyId"].as_str().unwrap().to_string();
    let arn = meta["Arn"].as_str().unwrap().to_string();
    assert_eq!(
        arn,
        format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"),
        "{created}"
    );
    assert_eq!(meta["KeyState"], "Enabled");
    assert!(meta["CreationDate"].is_number(), "{created}");

    let described = aws_ok(&door, a, &["kms", "describe-key", "--key-id", &arn]).await;
    assert_eq!(described["KeyMetadata"]["KeyId"], key_id.as_str());
    assert_eq!(
        described["KeyMetadata"]["Description"],
        "made by the AWS CLI"
    );

    let listed = aws_ok(&door, a, &["kms", "list-keys"]).await;
    assert!(
        listed["Keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["KeyId"] == key_id.as_str() && k["KeyArn"] == arn.as_str()),
        "{listed}"
    );

    let alias = format!("alias/cli-{}", &key_id[..8]);
    aws_ok(
        &door,
        a,
        &[
            "kms",
            "create-alias",
            "--alias-name",
            &alias,
            "--target-key-id",
            &key_id,
        ],
    )
    .await;

    // Encrypt by alias with an encryption context; decrypt with it.
    let message = b"attack at dawn, via the AWS CLI";
    std::fs::write(door.scratch.join("plain.bin"), message).unwrap();
    let ec = "purpose=cli,team=blue";
    let enc = aws_ok(
        &door,
        a,
        &[
            "kms",
            "encrypt",
            "--key-id",
            &alias,
            "--plaintext",
            "fileb://plain.bin",
            "--encryption-context",
            ec,
        ],
    )
    .await;
    assert_eq!(enc["KeyId"], arn.as_str(), "Encrypt returns the key ARN");
    assert_eq!(enc["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let blob = unb64(enc["CiphertextBlob"].as_str().unwrap());
    std::fs::write(door.scratch.join("blob.bin"), &blob).unwrap();
    let dec = aws_ok(
        &door,
        a,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            "fileb://blob.bin",
            "--encryption-context",
            ec,
        ],
    )
    .await;
    assert_eq!(dec["KeyId"], arn.as_str());
    assert_eq!(unb64(dec["Plaintext"].as_str().unwrap()), message);
    // The wrong context: InvalidCiphertextException.
    let out = aws(
        &door,
        a,
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            "fileb://blob.bin",
            "--encryption-context",
            "purpose=other",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidCiphertextException"));

    let dk = aws_ok(
        &door,
        a,
        &[
            "kms",
            "generate-data-key",
            "--key-id",
            &key_id,
            "--key-spec",
            "AES_256",
        ],
    )
    .await;
    assert_eq!(unb64(dk["Plaintext"].as_str().unwrap()).len(), 32);
    assert_eq!(dk["KeyId"], arn.as_str());

    // The key policy: admin administers, user1 uses.
    let policy = admin_and_user_policy(ADMIN, USER1, &["kms:Encrypt", "kms:Decrypt"], &[]);
    std::fs::write(door.scratch.join("policy.json"), policy.to_string()).unwrap();
    aws_ok(
        &door,
        a,
        &[
            "kms",
            "put-key-policy",
            "--key-id",
            &key_id,
            "--policy-name",
            "default",
            "--policy",
            "file://policy.json",
        ],
    )
    .await;
    let got = aws_ok(
        &door,
        a,
        &[
            "kms",
            "get-key-policy",
            "--key-id",
            &key_id,
            "--policy-name",
            "default",
        ],
    )
    .await;
    let got_policy: Value = serde_json::from_str(got["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(got_policy, policy);

    // A grant lets user2 encrypt; everything else stays denied to user2.
    let grant = aws_ok(
        &door,
        a,
        &[
            "kms",
            "create-grant",
            "--key-id",
            &key_id,
            "--grantee-principal",
            "arn:aws:iam::111122223333:user/user2",
            "--operations",
            "Encrypt",
            "Decrypt",
        ],
    )
    .await;
    assert_eq!(grant["GrantId"].as_str().unwrap().len(), 64, "{grant}");
    assert!(grant["GrantToken"].is_string());
    let by_grant = aws_ok(
        &door,
        AK_USER2,
        &[
            "kms",
            "encrypt",
            "--key-id",
            &arn,
            "--plaintext",
            "fileb://plain.bin",
        ],
    )
    .await;
    assert_eq!(by_grant["KeyId"], arn.as_str());
    let out = aws(&door, AK_USER2, &["kms", "disable-key", "--key-id", &arn]).await;
    assert_eq!(out.status.code(), Some(255), "a denied call exits 255");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AccessDeniedException"), "{err}");
    assert!(
        err.contains("is not authorized to perform: kms:DisableKey"),
        "{err}"
    );

    let scheduled = aws_ok(
        &door,
        a,
        &[
            "kms",
            "schedule-key-deletion",
            "--key-id",
            &key_id,
            "--pending-window-in-days",
            "7",
        ],
    )
    .await;
    assert_eq!(scheduled["KeyId"], arn.as_str());
    assert_eq!(scheduled["KeyState"], "PendingDeletion");
    assert_eq!(scheduled["PendingWindowInDays"], 7);
    let now = SystemClock.now_ms() / 1000;
    let when = scheduled["DeletionDate"].as_f64().unwrap() as i64;
    assert!(
        (now + 7 * 86_400 - 60..=now + 7 * 86_400 + 60).contains(&when),
        "{scheduled}"
    );
    let cancelled = aws_ok(
        &door,
        a,
        &["kms", "cancel-key-deletion", "--key-id", &key_id],
    )
    .await;
    assert_eq!(cancelled["KeyId"], arn.as_str());
    let after = aws_ok(&door, a, &["kms", "describe-key", "--key-id", &alias]).await;
    assert_eq!(after["KeyMetadata"]["KeyState"], "Disabled");

    door.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_sts_names_the_caller_and_assumes_a_role() {
    let door = start_door("aws-cli-sts").await;
    let me = aws_ok(&door, AK_ADMIN, &["sts", "get-caller-identity"]).await;
    assert_eq!(me["Arn"], ADMIN);
    assert_eq!(me["Account"], ACCOUNT);
    assert!(me["UserId"].is_string());

    let assumed = aws_ok(
        &door,
        "AKIABOB0000000000001",
        &[
            "sts",
            "assume-role",
            "--role-arn",
            "arn:aws:iam::111122223333:role/Engineering",
            "--role-session-name",
            "cli-session",
            "--duration-seconds",
            "900",
        ],
    )
    .await;
    assert_eq!(
        assumed["AssumedRoleUser"]["Arn"],
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/Engineering/cli-session")
    );
    assert!(assumed["Credentials"]["AccessKeyId"]
        .as_str()
        .unwrap()
        .starts_with("ASIA"));

    // user2 may not assume the role: STS's AccessDenied.
    let out = aws(
        &door,
        AK_USER2,
        &[
            "sts",
            "assume-role",
            "--role-arn",
            "arn:aws:iam::111122223333:role/Engineering",
            "--role-session-name",
            "nope",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AccessDenied"));
    door.server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// boto3 and the AWS Encryption SDK

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_key_users_cross_account_and_modelled_errors() {
    admin_python_checks("boto3", "boto3_checks.py").await;
}

/// DryRun through boto3 on each of the 15 operations that take it: DryRunOperationException
/// (HTTP 412), no HSM call and no stored change; failing dry runs get the real error; the
/// audit events say they were dry runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_dry_run_checks_and_changes_nothing() {
    let door = start_door("boto3-dry-run").await;
    python_with(&door, AK_ADMIN, "dry_run_checks.py", &["setup"], &[]).await;
    let before = store_snapshot(&door.server).await;
    let counters = door.server.kms.hsm().counters();
    let total = door.server.kms.hsm().total_ops();
    python_with(&door, AK_ADMIN, "dry_run_checks.py", &["dry-run"], &[]).await;
    assert_eq!(
        door.server.kms.hsm().total_ops(),
        total,
        "a dry run reached the HSM"
    );
    assert_eq!(door.server.kms.hsm().counters(), counters);
    assert_eq!(
        store_snapshot(&door.server).await,
        before,
        "a dry run changed stored state"
    );
    door.server.shutdown().await.unwrap();
    let events = events(&door.dir);
    for op in p11kms::core::DRY_RUN_OPERATIONS {
        assert!(
            events.iter().any(|e| e["eventName"] == *op
                && e["requestParameters"]["dryRun"] == true
                && e["errorCode"] == "DryRunOperationException"),
            "no dry-run audit event for {op}"
        );
    }
    let failed_dry: Vec<&str> = events
        .iter()
        .filter(|e| e["requestParameters"]["dryRun"] == true)
        .filter_map(|e| e["errorCode"].as_str())
        .filter(|c| *c != "DryRunOperationException")
        .collect();
    assert_eq!(failed_dry.len(), 8, "{failed_dry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_get_key_last_usage() {
    admin_python_checks("boto3-last-usage", "key_last_usage_checks.py").await;
}

/// `aws kms get-key-last-usage` names the Encrypt's audit event, and `p11kms
/// get-key-last-usage` (over gRPC) prints exactly what the AWS door answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_and_p11kms_cli_get_key_last_usage() {
    let door = start_door("aws-cli-last-usage").await;
    let a = AK_ADMIN;
    let created = aws_ok(&door, a, &["kms", "create-key"]).await;
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let fresh = aws_ok(
        &door,
        a,
        &["kms", "get-key-last-usage", "--key-id", &key_id],
    )
    .await;
    assert_eq!(fresh["KeyLastUsage"], json!({}), "{fresh}");
    assert_eq!(
        fresh["TrackingStartDate"], fresh["KeyCreationDate"],
        "{fresh}"
    );
    assert_eq!(
        fresh["KeyCreationDate"],
        created["KeyMetadata"]["CreationDate"]
    );

    let plaintext = door.scratch.join("last-usage.txt");
    std::fs::write(&plaintext, b"aws cli last usage").unwrap();
    aws_ok(
        &door,
        a,
        &[
            "kms",
            "encrypt",
            "--key-id",
            &key_id,
            "--plaintext",
            &format!("fileb://{}", plaintext.display()),
        ],
    )
    .await;
    let used = aws_ok(
        &door,
        a,
        &["kms", "get-key-last-usage", "--key-id", &key_id],
    )
    .await;
    let u = &used["KeyLastUsage"];
    assert_eq!(u["Operation"], "Encrypt", "{used}");
    let evs = events(&door.dir);
    let ev = evs
        .iter()
        .find(|e| e["requestID"] == u["KmsRequestId"])
        .unwrap_or_else(|| panic!("no audit event for {used}"));
    assert_eq!(ev["eventName"], "Encrypt");
    assert_eq!(ev["eventID"], u["CloudTrailEventId"]);

    let out = hermetic_command(env!("CARGO_BIN_EXE_p11kms"), &door.scratch)
        .args(["get-key-last-usage", "--key", &key_id])
        .args(cli_connection(door.server.addr.port(), "admin"))
        .output()
        .expect("run p11kms");
    assert_succeeded(&out, "p11kms get-key-last-usage");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(printed, used, "the CLI prints what the AWS door answers");
    door.server.shutdown().await.unwrap();
}

/// AWS managed keys with the AWS CLI and boto3 (issue 12, item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_managed_keys_with_the_aws_cli_and_boto3() {
    let door = start_door("managed-keys").await;
    let m = aws_ok(
        &door,
        AK_ADMIN,
        &[
            "kms",
            "describe-key",
            "--key-id",
            "alias/aws/secretsmanager",
        ],
    )
    .await;
    assert_eq!(m["KeyMetadata"]["KeyManager"], "AWS", "{m}");
    let key = m["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let out = aws(&door, AK_ADMIN, &["kms", "disable-key", "--key-id", &key]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("AccessDeniedException"),
        "{err}"
    );
    python(&door, AK_ADMIN, "managed_keys_checks.py").await;
    door.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_encryption_sdk_round_trips_a_mebibyte() {
    admin_python_checks("esdk", "encryption_sdk_checks.py").await;
}

// ---------------------------------------------------------------------------------------------
// Custom key stores (issue 15)

/// What the daemons of this test binary log once a custom key store test has started
/// (p11kms at TRACE, the rest at INFO, JSON lines as `p11kms serve` writes them): the
/// password scans read it.
fn daemon_log() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,p11kms=trace"))
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        log
    })
    .clone()
}

/// A writer appending to [`daemon_log`].
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The files under `dir` (but not under `skip`) that hold `secret`, and how many files were
/// read. A file removed while being listed (SQLite's `-wal` and `-shm` at close) is passed.
fn files_holding(dir: &Path, skip: Option<&Path>, secret: &str) -> (Vec<PathBuf>, usize) {
    let (mut found, mut read) = (Vec::new(), 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if skip.is_some_and(|s| path.starts_with(s)) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.unwrap(),
            };
            read += 1;
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(path);
            }
        }
    }
    (found, read)
}

/// Asserts that no file of the daemon under `dir` (the metadata store, the audit trail, the
/// config: all but the clients' `scratch` directory) holds any of `secrets`, while `scratch`,
/// where the test wrote them for the clients, does (the scan's control).
fn assert_secrets_nowhere(dir: &Path, scratch: &Path, secrets: &[&str]) {
    for secret in secrets {
        let (found, read) = files_holding(dir, Some(scratch), secret);
        assert!(found.is_empty(), "a key store password is in {found:?}");
        assert!(read >= 3, "too few files under {}", dir.display());
        let (control, _) = files_holding(scratch, None, secret);
        assert!(
            !control.is_empty(),
            "the scan does not find what the test wrote"
        );
        let log = daemon_log();
        let log = log.lock().unwrap();
        assert!(
            !log.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a key store password is in the daemon's log"
        );
        let text = String::from_utf8_lossy(&log);
        assert!(
            text.contains("custom key store created"),
            "no daemon log captured"
        );
    }
    assert!(audit_trail(dir).contains("CreateCustomKeyStore"));
}

/// The DescribeCustomKeyStores entry of store `id`, through the AWS CLI.
async fn cli_store(door: &Door, id: &str) -> Value {
    let d = aws_ok(
        door,
        AK_ADMIN,
        &[
            "kms",
            "describe-custom-key-stores",
            "--custom-key-store-id",
            id,
        ],
    )
    .await;
    let stores = d["CustomKeyStores"].as_array().unwrap();
    assert_eq!(stores.len(), 1, "{d}");
    stores[0].clone()
}

/// Connects store `id` with the AWS CLI and polls (bounded) until it is `CONNECTED`.
async fn cli_connect(door: &Door, id: &str) {
    let connected = aws_ok(
        door,
        AK_ADMIN,
        &[
            "kms",
            "connect-custom-key-store",
            "--custom-key-store-id",
            id,
        ],
    )
    .await;
    assert_eq!(connected, json!({}));
    let mut last = Value::Null;
    let up = wait_for(async || {
        last = cli_store(door, id).await;
        assert_ne!(last["ConnectionState"], "FAILED", "{last}");
        last["ConnectionState"] == "CONNECTED"
    })
    .await;
    assert!(up, "store {id} did not connect: {last}");
}

/// The AWS CLI's exit code and stderr for a call that must fail with `exception`.
async fn cli_refused(door: &Door, args: &[&str], exception: &str) {
    let out = aws(door, AK_ADMIN, args).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{args:?}: {err}");
    assert!(err.contains(exception), "{args:?}: {err}");
}

/// A symmetric encrypt/decrypt/re-encrypt through the AWS CLI of `plain.bin` under `key`;
/// the ciphertext is left in `<name>.bin`.
async fn cli_encrypt(door: &Door, key: &str, name: &str) -> Value {
    let enc = aws_ok(
        door,
        AK_ADMIN,
        &[
            "kms",
            "encrypt",
            "--key-id",
            key,
            "--plaintext",
            "fileb://plain.bin",
        ],
    )
    .await;
    let blob = unb64(enc["CiphertextBlob"].as_str().unwrap());
    std::fs::write(door.scratch.join(format!("{name}.bin")), blob).unwrap();
    enc
}

/// Decrypts `<name>.bin` with the AWS CLI; checks it gives `plain` under key ARN `arn`.
async fn cli_decrypts(door: &Door, name: &str, arn: &str, plain: &[u8]) {
    let blob = format!("fileb://{name}.bin");
    let dec = aws_ok(
        door,
        AK_ADMIN,
        &["kms", "decrypt", "--ciphertext-blob", &blob],
    )
    .await;
    assert_eq!(dec["KeyId"], arn, "{dec}");
    assert_eq!(unb64(dec["Plaintext"].as_str().unwrap()), plain);
}

/// Re-encrypts `<from>.bin` to `key` with the AWS CLI into `<to>.bin`; returns the answer.
async fn cli_reencrypt(door: &Door, from: &str, key: &str, to: &str) -> Value {
    let blob = format!("fileb://{from}.bin");
    let re = aws_ok(
        door,
        AK_ADMIN,
        &[
            "kms",
            "re-encrypt",
            "--ciphertext-blob",
            &blob,
            "--destination-key-id",
            key,
        ],
    )
    .await;
    let out = unb64(re["CiphertextBlob"].as_str().unwrap());
    std::fs::write(door.scratch.join(format!("{to}.bin")), out).unwrap();
    re
}

/// The stock AWS CLI runs a custom key store's life cycle: create (the password in a 0600
/// `--cli-input-json` file, never in argv), describe, connect (polled to CONNECTED), a key
/// in the store, encrypt/decrypt, re-encrypt to a default-store key and back, disconnect
/// (Unavailable, crypto refused, describe works), reconnect (old ciphertext decrypts),
/// schedule the key's deletion, and the delete refusals AWS gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_runs_the_custom_key_store_life_cycle() {
    daemon_log();
    let c = stores::cluster("aws-cli-ks", "cli", &stores::softhsm(), true);
    let door = start_door_with(
        "aws-cli-ks",
        &stores::cluster_sections(std::slice::from_ref(&c)),
    )
    .await;
    let a = AK_ADMIN;
    let input = json!({
        "CustomKeyStoreName": "cli-store",
        "CloudHsmClusterId": c.id,
        "TrustAnchorCertificate": c.anchor_pem,
        "KeyStorePassword": c.password,
    });
    write_secret(&door.scratch.join("create-store.json"), input.to_string());
    let created = aws_ok(
        &door,
        a,
        &[
            "kms",
            "create-custom-key-store",
            "--cli-input-json",
            "file://create-store.json",
        ],
    )
    .await;
    let id = created["CustomKeyStoreId"].as_str().unwrap().to_string();
    assert!(id.starts_with("cks-") && id.len() == 21, "{created}");
    let store = cli_store(&door, &id).await;
    assert_eq!(store["CustomKeyStoreName"], "cli-store", "{store}");
    assert_eq!(store["CloudHsmClusterId"], c.id.as_str());
    assert_eq!(store["TrustAnchorCertificate"], c.anchor_pem.as_str());
    assert_eq!(store["ConnectionState"], "DISCONNECTED");
    assert_eq!(store["CustomKeyStoreType"], "AWS_CLOUDHSM");
    assert!(store["CreationDate"].is_number(), "{store}");
    cli_connect(&door, &id).await;

    let key = aws_ok(
        &door,
        a,
        &[
            "kms",
            "create-key",
            "--origin",
            "AWS_CLOUDHSM",
            "--custom-key-store-id",
            &id,
        ],
    )
    .await;
    let meta = &key["KeyMetadata"];
    assert_eq!(meta["Origin"], "AWS_CLOUDHSM", "{key}");
    assert_eq!(meta["CustomKeyStoreId"], id.as_str());
    assert_eq!(meta["CloudHsmClusterId"], c.id.as_str());
    assert_eq!(meta["KeyState"], "Enabled");
    let arn = meta["Arn"].as_str().unwrap().to_string();
    let default = aws_ok(&door, a, &["kms", "create-key"]).await;
    let default_arn = default["KeyMetadata"]["Arn"].as_str().unwrap().to_string();

    let plain = b"kept on the operator's own HSM";
    std::fs::write(door.scratch.join("plain.bin"), plain).unwrap();
    assert_eq!(
        cli_encrypt(&door, &arn, "store").await["KeyId"],
        arn.as_str()
    );
    cli_decrypts(&door, "store", &arn, plain).await;
    let re = cli_reencrypt(&door, "store", &default_arn, "to-default").await;
    assert_eq!(re["SourceKeyId"], arn.as_str(), "{re}");
    assert_eq!(re["KeyId"], default_arn.as_str(), "{re}");
    cli_decrypts(&door, "to-default", &default_arn, plain).await;
    let back = cli_reencrypt(&door, "to-default", &arn, "back").await;
    assert_eq!(back["KeyId"], arn.as_str(), "{back}");
    cli_decrypts(&door, "back", &arn, plain).await;

    let store_arg = ["--custom-key-store-id", id.as_str()];
    let disconnect = [&["kms", "disconnect-custom-key-store"][..], &store_arg].concat();
    assert_eq!(aws_ok(&door, a, &disconnect).await, json!({}));
    assert_eq!(
        cli_store(&door, &id).await["ConnectionState"],
        "DISCONNECTED"
    );
    let described = aws_ok(&door, a, &["kms", "describe-key", "--key-id", &arn]).await;
    assert_eq!(
        described["KeyMetadata"]["KeyState"], "Unavailable",
        "{described}"
    );
    let encrypt = [
        "kms",
        "encrypt",
        "--key-id",
        &arn,
        "--plaintext",
        "fileb://plain.bin",
    ];
    cli_refused(&door, &encrypt, "KMSInvalidStateException").await;

    cli_connect(&door, &id).await;
    cli_decrypts(&door, "store", &arn, plain).await;
    let scheduled = aws_ok(
        &door,
        a,
        &["kms", "schedule-key-deletion", "--key-id", &arn],
    )
    .await;
    assert_eq!(scheduled["KeyState"], "PendingDeletion", "{scheduled}");
    let delete = [&["kms", "delete-custom-key-store"][..], &store_arg].concat();
    cli_refused(&door, &delete, "CustomKeyStoreInvalidStateException").await;
    aws_ok(&door, a, &disconnect).await;
    let pending = aws_ok(&door, a, &["kms", "describe-key", "--key-id", &arn]).await;
    assert_eq!(
        pending["KeyMetadata"]["KeyState"], "PendingDeletion",
        "{pending}"
    );
    cli_refused(&door, &delete, "CustomKeyStoreHasCMKsException").await;
    assert_eq!(
        cli_store(&door, &id).await["ConnectionState"],
        "DISCONNECTED"
    );
    assert_secrets_nowhere(&door.dir, &door.scratch, &[&c.password]);
    door.server.shutdown().await.unwrap();
    assert_secrets_nowhere(&door.dir, &door.scratch, &[&c.password]);
}

/// The clusters of the boto3 check: `real` (a token, the system library), `copy` (a token
/// reached through a second module path), `absent` (no token), `f1`..`f7` (no token: creating
/// a store does not touch the device), `f1r` (related to `f1`: the same trust anchor) and
/// `extra` (the 11th store's cluster).
fn boto3_clusters() -> Vec<(&'static str, stores::ClusterFixture)> {
    let rig = "boto3-ks";
    let mut all = vec![
        (
            "real",
            stores::cluster(rig, "real", &stores::softhsm(), true),
        ),
        ("copy", stores::copy_cluster()),
        (
            "absent",
            stores::cluster(rig, "absent", &stores::softhsm(), false),
        ),
    ];
    for name in ["f1", "f2", "f3", "f4", "f5", "f6", "f7", "extra"] {
        all.push((name, stores::cluster(rig, name, &stores::softhsm(), false)));
    }
    let f1 = all[3].1.clone();
    let mut related = stores::cluster(rig, "f1r", &stores::softhsm(), false);
    related.anchor_file = f1.anchor_file;
    related.anchor_pem = f1.anchor_pem;
    all.push(("f1r", related));
    all
}

/// boto3 on the AWS door: every error of CreateCustomKeyStore, the other store operations
/// and keys in a store (tests/python/custom_key_store_checks.py), the connection error codes
/// a real cause gives (a wrong password, an absent token), paging, GenerateRandom on a store;
/// then no password is in any file of the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_custom_key_store_errors_and_life_cycle() {
    daemon_log();
    let clusters = boto3_clusters();
    let fixtures: Vec<_> = clusters.iter().map(|(_, c)| c.clone()).collect();
    let door = start_door_with("boto3-ks", &stores::cluster_sections(&fixtures)).await;
    let described: serde_json::Map<String, Value> = clusters
        .iter()
        .map(|(name, c)| {
            let v = json!({"id": c.id, "anchor": c.anchor_pem, "password": c.password});
            (name.to_string(), v)
        })
        .collect();
    let file = door.scratch.join("clusters.json");
    let given = json!({"clusters": described, "wrong_password": WRONG_PASSWORD});
    write_secret(&file, given.to_string());
    python_with(
        &door,
        AK_ADMIN,
        "custom_key_store_checks.py",
        &[],
        &[("P11KMS_CLUSTERS", &file)],
    )
    .await;
    let mut secrets: Vec<&str> = fixtures.iter().map(|c| c.password.as_str()).collect();
    secrets.push(WRONG_PASSWORD);
    // While running (the SQLite WAL is there) and after shutdown.
    assert_secrets_nowhere(&door.dir, &door.scratch, &secrets);
    door.server.shutdown().await.unwrap();
    assert_secrets_nowhere(&door.dir, &door.scratch, &secrets);
    assert_store_audit(&door.dir);
}

/// Every store operation the boto3 check ran, its refusals and the connection failures it
/// caused are in the audit trail.
fn assert_store_audit(dir: &Path) {
    let events = events(dir);
    let has = |name: &str, error: Option<&str>| {
        events
            .iter()
            .any(|e| e["eventName"] == name && e["errorCode"].as_str() == error)
    };
    for op in [
        "CreateCustomKeyStore",
        "ConnectCustomKeyStore",
        "DisconnectCustomKeyStore",
        "UpdateCustomKeyStore",
        "DeleteCustomKeyStore",
        "DescribeCustomKeyStores",
    ] {
        assert!(has(op, None), "no audit event of {op}");
    }
    for (op, error) in [
        ("CreateCustomKeyStore", "LimitExceededException"),
        ("CreateCustomKeyStore", "AccessDeniedException"),
        ("DeleteCustomKeyStore", "CustomKeyStoreHasCMKsException"),
        ("UpdateCustomKeyStore", "CloudHsmClusterNotRelatedException"),
    ] {
        assert!(
            has(op, Some(error)),
            "no audit event of {op} refused with {error}"
        );
    }
    for code in ["INVALID_CREDENTIALS", "CLUSTER_NOT_FOUND"] {
        assert!(
            events
                .iter()
                .any(|e| e["eventName"] == "CustomKeyStoreStateChange"
                    && e["requestParameters"]["connectionState"] == "FAILED"
                    && e["requestParameters"]["connectionErrorCode"] == code),
            "no audit event of a store FAILED with {code}"
        );
    }
}

/// The wrong password custom_key_store_checks.py sets on a store (INVALID_CREDENTIALS).
const WRONG_PASSWORD: &str = "wrong-pw-7713";

// ---------------------------------------------------------------------------------------------
// Bad requests, sent raw

struct RawResponse {
    status: u16,
    headers: String,
    body: String,
}

impl RawResponse {
    /// The `x-amzn-RequestId` header.
    fn request_id(&self) -> String {
        self.headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-amzn-requestid")
                    .then(|| v.trim().to_string())
            })
            .expect("x-amzn-RequestId")
    }

    /// `__type` of a JSON error.
    fn error_type(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["__type"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("(no __type in {:?})", self.body))
    }
}

/// One HTTP/1.1 request over TLS to the door, trusting the test CA.
async fn raw(door: &Door, head: &str, body: &[u8]) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let addr = door.server.aws_json_addr.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(env().pki.join("ca.pem")).unwrap();
    {
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS to the door");
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    tls.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut buf),
    )
    .await
    .expect("the door answers");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawResponse {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

/// A bad request: what it is, its head and body, and the status, error name and operation
/// label it must get.
type Case<'a> = (&'a str, String, Vec<u8>, u16, &'a str, &'a str);

struct Sign<'a> {
    access_key_id: &'a str,
    secret: &'a str,
    service: &'a str,
    /// Seconds to move the signing time (negative: the past).
    skew_secs: i64,
}

/// A request head: `method`, the given headers, signed when `sign` is given.
fn head(
    door: &Door,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    sign: Option<Sign<'_>>,
) -> String {
    let host = format!("127.0.0.1:{}", door.server.aws_json_addr.unwrap().port());
    let mut all: Vec<(String, String)> = vec![("host".into(), host)];
    all.extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())),
    );
    if let Some(s) = sign {
        let now = SystemClock.now_ms() / 1000 + s.skew_secs;
        let amz_date = sigv4::format_amz_date(now);
        all.push(("x-amz-date".into(), amz_date.clone()));
        let names: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
        let hash = sigv4::sha256_hex(body);
        let req = SignableRequest {
            method,
            path: "/",
            query: "",
            headers: &all,
            payload_sha256_hex: &hash,
        };
        let auth = sigv4::authorization_header(
            &req,
            &names,
            &SigningParams {
                access_key_id: s.access_key_id,
                secret_access_key: s.secret,
                region: "us-east-1",
                service: s.service,
                amz_date: &amz_date,
            },
        );
        all.push(("authorization".into(), auth));
    }
    let mut h = format!("{method} / HTTP/1.1\r\n");
    for (k, v) in &all {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    h
}

/// The `(now - 5 min., now)` or `(now + 5 min., now)` pair of a SigV4 expiry message such as
/// `Signature expired: A is now earlier than B (C - 5 min.)`, after checking its shape.
fn skew_message_times(message: &str, amz_date: &str, expired: bool) -> (i64, i64) {
    let (lead, sign) = if expired {
        ("Signature expired: ", " - 5 min.)")
    } else {
        ("Signature not yet current: ", " + 5 min.)")
    };
    let relation = if expired {
        " is now earlier than "
    } else {
        " is still later than "
    };
    let rest = message
        .strip_prefix(&format!("{lead}{amz_date}{relation}"))
        .and_then(|r| r.strip_suffix(sign))
        .unwrap_or_else(|| panic!("not AWS's message: {message:?}"));
    let (edge, now) = rest
        .split_once(" (")
        .unwrap_or_else(|| panic!("not AWS's message: {message:?}"));
    let parse = |s: &str| {
        sigv4::parse_amz_date(s).unwrap_or_else(|| panic!("not an amz date {s:?} in {message:?}"))
    };
    (parse(edge), parse(now))
}

/// SigV4 allows 5 minutes of clock skew, as AWS KMS does: 4 minutes off either way is
/// accepted, 6 minutes off either way is refused with InvalidSignatureException and AWS's
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_allows_five_minutes_of_clock_skew_both_ways() {
    let door = start_door("aws-skew").await;
    let admin = fixture_credentials(AK_ADMIN);
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "TrentService.ListKeys"),
    ];
    let body = b"{}";
    let send = |skew_secs: i64| {
        let h = head(
            &door,
            "POST",
            &headers,
            body,
            Some(Sign {
                access_key_id: AK_ADMIN,
                secret: admin.secret_access_key.as_str(),
                service: "kms",
                skew_secs,
            }),
        );
        let amz_date = h
            .lines()
            .find_map(|l| l.strip_prefix("x-amz-date: "))
            .expect("signed head has x-amz-date")
            .to_string();
        let door = &door;
        async move { (raw(door, &h, body).await, amz_date) }
    };
    for skew in [-240, 240] {
        let (r, _) = send(skew).await;
        assert_eq!(r.status, 200, "{skew} s off: {} {}", r.headers, r.body);
    }
    for (skew, expired) in [(-360, true), (360, false)] {
        let (r, amz_date) = send(skew).await;
        assert_eq!(r.status, 400, "{skew} s off: {} {}", r.headers, r.body);
        assert_eq!(r.error_type(), "InvalidSignatureException", "{}", r.body);
        let message: Value = serde_json::from_str(&r.body).unwrap();
        let message = message["message"].as_str().expect("message").to_string();
        let (edge, now) = skew_message_times(&message, &amz_date, expired);
        let want_edge = if expired { now - 300 } else { now + 300 };
        assert_eq!(edge, want_edge, "{message}");
        let signed_at = sigv4::parse_amz_date(&amz_date).unwrap();
        assert!(
            (now - signed_at + skew).abs() <= 5,
            "the message's now is the door's clock: {message}"
        );
    }
    door.server.shutdown().await.unwrap();
}

fn requests(metrics: &str, operation: &str, outcome: &str) -> f64 {
    sample(
        metrics,
        &format!(
            "p11kms_requests_total{{door=\"aws-json\",operation=\"{operation}\",outcome=\"{outcome}\"}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_aws_errors_and_are_accounted() {
    let door = start_door("aws-bad").await;
    let maddr = door.server.metrics_addr.expect("metrics");
    let admin = fixture_credentials(AK_ADMIN);
    let secret = admin.secret_access_key.as_str();
    let json_headers = |target: &'static str| {
        vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target),
        ]
    };
    let signed = |skew_secs| Sign {
        access_key_id: AK_ADMIN,
        secret,
        service: "kms",
        skew_secs,
    };
    let before = scrape(maddr).await;

    // A well-signed request works (so the failures below are the ones intended).
    let body = b"{}";
    let h = head(
        &door,
        "POST",
        &json_headers("TrentService.ListKeys"),
        body,
        Some(signed(0)),
    );
    let r = raw(&door, &h, body).await;
    assert_eq!(r.status, 200, "{} {}", r.headers, r.body);
    assert!(r.headers.to_ascii_lowercase().contains("x-amzn-requestid:"));
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains("content-type: application/x-amz-json-1.1"));
    // ... and so does one 4 minutes off (AWS allows 5).
    let h = head(
        &door,
        "POST",
        &json_headers("TrentService.ListKeys"),
        body,
        Some(signed(-240)),
    );
    assert_eq!(raw(&door, &h, body).await.status, 200);

    let bad = b"{\"KeyId\": ".to_vec();
    let wrong = b"{\"KeyId\": 42}".to_vec();
    let big = {
        let mut b = b"{\"Plaintext\": \"".to_vec();
        b.extend(std::iter::repeat_n(b'A', 70 * 1024));
        b.extend_from_slice(b"\"}");
        b
    };
    let cases: Vec<Case> = vec![
        // Wrong signature.
        (
            "wrong signature",
            head(
                &door,
                "POST",
                &json_headers("TrentService.ListKeys"),
                body,
                Some(Sign {
                    secret: "not-the-secret-access-key-0000000000000",
                    ..signed(0)
                }),
            ),
            body.to_vec(),
            400,
            "InvalidSignatureException",
            "ListKeys",
        ),
        // Expired timestamp (20 minutes ago).
        (
            "expired timestamp",
            head(
                &door,
                "POST",
                &json_headers("TrentService.ListKeys"),
                body,
                Some(signed(-1200)),
            ),
            body.to_vec(),
            400,
            "InvalidSignatureException",
            "ListKeys",
        ),
        // Unknown access key.
        (
            "unknown access key",
            head(
                &door,
                "POST",
                &json_headers("TrentService.ListKeys"),
                body,
                Some(Sign {
                    access_key_id: "AKIANOBODY0000000000",
                    ..signed(0)
                }),
            ),
            body.to_vec(),
            400,
            "UnrecognizedClientException",
            "ListKeys",
        ),
        // No Authorization at all.
        (
            "unsigned",
            head(
                &door,
                "POST",
                &json_headers("TrentService.ListKeys"),
                body,
                None,
            ),
            body.to_vec(),
            403,
            "MissingAuthenticationTokenException",
            "ListKeys",
        ),
        // Missing X-Amz-Target.
        (
            "missing target",
            head(
                &door,
                "POST",
                &[("content-type", "application/x-amz-json-1.1")],
                body,
                Some(signed(0)),
            ),
            body.to_vec(),
            400,
            "UnknownOperationException",
            "Unknown",
        ),
        // An operation KMS does not have.
        (
            "unknown target",
            head(
                &door,
                "POST",
                &json_headers("TrentService.Frobnicate"),
                body,
                Some(signed(0)),
            ),
            body.to_vec(),
            400,
            "UnknownOperationException",
            "Unknown",
        ),
        // Malformed JSON, and a member of the wrong type.
        (
            "malformed JSON",
            head(
                &door,
                "POST",
                &json_headers("TrentService.DescribeKey"),
                &bad,
                Some(signed(0)),
            ),
            bad,
            400,
            "SerializationException",
            "DescribeKey",
        ),
        (
            "wrong member type",
            head(
                &door,
                "POST",
                &json_headers("TrentService.DescribeKey"),
                &wrong,
                Some(signed(0)),
            ),
            wrong,
            400,
            "SerializationException",
            "DescribeKey",
        ),
        // Over the 64 KiB default limit: refused before it is parsed (or even signed-checked).
        // Only the head is sent: the door answers from the declared length alone, once its
        // bounded wait for the body to drain is over (connection_limits checks a client that
        // sends the whole body).
        (
            "oversized body",
            head(
                &door,
                "POST",
                &json_headers("TrentService.Encrypt"),
                &big,
                Some(signed(0)),
            ),
            Vec::new(),
            413,
            "RequestEntityTooLargeException",
            "Encrypt",
        ),
        // A GET.
        (
            "GET",
            head(&door, "GET", &[], b"", None),
            Vec::new(),
            405,
            "UnknownOperationException",
            "Unknown",
        ),
    ];
    let mut expected: std::collections::BTreeMap<(&str, &str), f64> = Default::default();
    let mut refused_ids = Vec::new();
    for (what, h, body, status, name, operation) in &cases {
        let r = raw(&door, h, body).await;
        assert_eq!(r.status, *status, "{what}: {} {}", r.headers, r.body);
        assert_eq!(r.error_type(), *name, "{what}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            r.body
        );
        refused_ids.push((what.to_string(), r.request_id(), *operation, *name));
        *expected.entry((*operation, *name)).or_default() += 1.0;
    }
    let r = raw(&door, &cases[0].1, &cases[0].2).await;
    assert!(r.body.contains("signature"), "{}", r.body);
    let r = raw(&door, &cases[1].1, &cases[1].2).await;
    assert!(r.body.contains("Signature expired"), "{}", r.body);
    *expected
        .entry(("ListKeys", "InvalidSignatureException"))
        .or_default() += 2.0;

    // STS refusals come back as STS's XML.
    let form = b"Action=GetCallerIdentity&Version=2011-06-15";
    let sts_headers = [(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    )];
    let h = head(
        &door,
        "POST",
        &sts_headers,
        form,
        Some(Sign {
            secret: "not-the-secret-access-key-0000000000000",
            service: "sts",
            ..signed(0)
        }),
    );
    let r = raw(&door, &h, form).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("<Code>SignatureDoesNotMatch</Code>") && r.body.contains("<ErrorResponse"),
        "{}",
        r.body
    );
    let h = head(
        &door,
        "POST",
        &sts_headers,
        form,
        Some(Sign {
            service: "sts",
            ..signed(0)
        }),
    );
    let r = raw(&door, &h, form).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(&format!("<Arn>{ADMIN}</Arn>")),
        "{}",
        r.body
    );

    // The custom admin target.
    let h = head(
        &door,
        "POST",
        &json_headers("TrentService.CreateKey"),
        b"{}",
        Some(signed(0)),
    );
    let created: Value = serde_json::from_str(&raw(&door, &h, b"{}").await.body).unwrap();
    let key_arn = created["KeyMetadata"]["Arn"].as_str().unwrap();
    let explain =
        json!({"Principal": USER1, "Action": "kms:Decrypt", "KeyId": key_arn}).to_string();
    let h = head(
        &door,
        "POST",
        &json_headers("P11kmsAdmin.ExplainAccess"),
        explain.as_bytes(),
        Some(signed(0)),
    );
    let r = raw(&door, &h, explain.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["Decision"], "Deny", "user1 has no rights on the key: {v}");
    assert!(
        v["Message"].as_str().unwrap().contains("kms:Decrypt"),
        "{v}"
    );

    // Every refusal went through the gate: the counters moved by exactly as many.
    let after = scrape(maddr).await;
    for ((operation, name), n) in &expected {
        let moved = requests(&after, operation, name) - requests(&before, operation, name);
        assert_eq!(moved, *n, "{operation}/{name}:\n{after}");
    }
    assert_eq!(
        requests(&after, "ListKeys", "Success") - requests(&before, "ListKeys", "Success"),
        2.0
    );
    assert_eq!(
        requests(&after, "GetCallerIdentity", "SignatureDoesNotMatch"),
        1.0
    );
    door.server.shutdown().await.unwrap();

    // ... and is in the audit trail, by the request id the caller was given, or (a refusal
    // before authentication like an earlier one from the same address) counted in the
    // aggregate record of its operation and error (docs/audit.md, "Refused requests"); no
    // secret is.
    let trail = audit_trail(&door.dir);
    let aggregated = |operation: &str, name: &str| {
        trail.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            v["eventName"] == operation
                && v["errorCode"] == name
                && v["additionalEventData"]["aggregatedCount"].as_u64() > Some(0)
        })
    };
    for (what, id, operation, name) in &refused_ids {
        assert!(
            trail.contains(id.as_str()) || aggregated(operation, name),
            "{what}: request {id} is not audited"
        );
    }
    assert!(
        !trail.contains(secret),
        "the secret access key is in the audit trail"
    );
    assert!(
        !trail.contains("AAAAAAAAAAAAAAAA"),
        "the oversized body is in the audit trail"
    );
}

/// The whole audit trail under a data directory, as text.
fn audit_trail(dir: &Path) -> String {
    let mut trail = String::new();
    for entry in std::fs::read_dir(dir.join("audit")).expect("the audit directory") {
        let path = entry.unwrap().path();
        if path.is_file() {
            trail.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    trail
}

/// A KMS request with a raw JSON body, signed as admin.
async fn kms_raw(door: &Door, operation: &str, body: &str) -> RawResponse {
    let admin = fixture_credentials(AK_ADMIN);
    let target = format!("TrentService.{operation}");
    let h = head(
        door,
        "POST",
        &[
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", &target),
        ],
        body.as_bytes(),
        Some(Sign {
            access_key_id: AK_ADMIN,
            secret: admin.secret_access_key.as_str(),
            service: "kms",
            skew_secs: 0,
        }),
    );
    raw(door, &h, body.as_bytes()).await
}

/// Item 4 of issue 12: a wrong-typed member (a grant token sent as a string instead of a
/// list, a number of bytes as a string) is a SerializationException naming the member and
/// the type; neither the response nor the audit trail carries the value. Nor do a
/// ValidationException or a malformed body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_never_echo_the_value() {
    let door = start_door("aws-echo").await;
    let created = kms_raw(&door, "CreateKey", "{}").await;
    let key: Value = serde_json::from_str(&created.body).unwrap();
    let key = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let grant = json!({"KeyId": key, "GranteePrincipal": USER1, "Operations": ["Encrypt"]});
    let grant = kms_raw(&door, "CreateGrant", &grant.to_string()).await;
    assert_eq!(grant.status, 200, "{}", grant.body);
    let token: Value = serde_json::from_str(&grant.body).unwrap();
    let token = token["GrantToken"].as_str().unwrap().to_string();
    let number = "918273645";
    let cases = [
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": "eA==", "GrantTokens": token}).to_string(),
            "SerializationException",
            "'grantTokens' must be a list",
            token.as_str(),
        ),
        (
            "GenerateRandom",
            json!({"NumberOfBytes": number}).to_string(),
            "SerializationException",
            "'numberOfBytes' must be an integer",
            number,
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": "eA==", "GrantTokens": [format!("{token}{}", "x".repeat(8192))]})
                .to_string(),
            "ValidationException",
            "Value at 'grantTokens' failed to satisfy constraint",
            token.as_str(),
        ),
        (
            "Encrypt",
            format!("{{\"KeyId\": \"{key}\", \"GrantTokens\": [\"{token}\"] x}}"),
            "SerializationException",
            "not valid JSON",
            token.as_str(),
        ),
    ];
    for (op, body, name, says, secret) in &cases {
        let r = kms_raw(&door, op, body).await;
        assert_eq!(r.status, 400, "{op}: {}", r.body);
        assert_eq!(r.error_type(), *name, "{op}: {}", r.body);
        assert!(r.body.contains(says), "{op}: {}", r.body);
        assert!(
            !r.body.contains(secret),
            "{op} echoes the value: {}",
            r.body
        );
    }
    door.server.shutdown().await.unwrap();
    let trail = audit_trail(&door.dir);
    assert!(
        trail.contains("SerializationException"),
        "the refusals are audited"
    );
    assert!(
        !trail.contains(&token),
        "a grant token is in the audit trail"
    );
    assert!(
        !trail.contains(number),
        "the wrong-typed value is in the audit trail"
    );
}

/// Item 3 of issue 12: the checked-in extract of botocore's KMS model is exactly what
/// `scripts/kms-input-constraints.py` prints from the venv's botocore, so the rules the
/// doors enforce cannot drift from the model.
#[test]
fn input_constraints_are_botocores_model() {
    let scratch = data_dir("aws-model-extract");
    let out = hermetic_command(venv().join("bin/python"), &scratch)
        .arg(manifest_dir().join("scripts/kms-input-constraints.py"))
        .output()
        .expect("run the extractor");
    assert_succeeded(&out, "the extractor");
    assert!(
        String::from_utf8_lossy(&out.stdout) == p11kms::api::aws_json::model::CONSTRAINTS_JSON,
        "src/api/aws_json/model/kms-input-constraints.json is not what the model gives: run \
         .venv/bin/python scripts/kms-input-constraints.py --write"
    );
}

/// Item 3 of issue 12, on the wire, from the model (tests/python/model_checks.py): every
/// member of every served operation is read or refused by name; every constraint of every
/// member is a ValidationException; the examples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_validated_against_the_aws_model() {
    use p11kms::api::aws_json::{kms::OPERATIONS, model};
    let door = start_door("aws-model").await;
    let reads: serde_json::Map<String, Value> = OPERATIONS
        .iter()
        .map(|o| {
            let r = model::reads(o.name).unwrap_or_else(|| panic!("{} has no reads list", o.name));
            (o.name.to_string(), json!(r))
        })
        .collect();
    let path = door.scratch.join("door-reads.json");
    std::fs::write(&path, Value::Object(reads).to_string()).unwrap();
    python_with(
        &door,
        AK_ADMIN,
        "model_checks.py",
        &[],
        &[("P11KMS_DOOR_READS", &path)],
    )
    .await;
    door.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_on_loopback() {
    let dir = data_dir("aws-plain");
    let mut text = config_text(&dir);
    text.push_str("\n[aws_json]\nenabled = true\nlisten = \"0.0.0.0:0\"\ntls = false\n");
    let path = dir.join("p11kms.toml");
    std::fs::write(&path, text).unwrap();
    let err = Config::load(&path).expect_err("plain HTTP off loopback is refused");
    assert!(err.to_string().contains("loopback"), "{err}");

    // On loopback it is allowed, and serves the same door.
    let text =
        config_text(&dir) + "\n[aws_json]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls = false\n";
    std::fs::write(&path, text).unwrap();
    let server = server::start(&Config::load(&path).unwrap(), ServerOptions::default())
        .await
        .expect("plain HTTP on loopback starts");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.aws_json_addr.unwrap())
        .await
        .unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("UnknownOperationException"),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The operator console's files, and other origins

/// A GET of `path` on the door, unsigned (the console's files need no credentials).
async fn get(door: &Door, path: &str) -> RawResponse {
    let port = door.server.aws_json_addr.unwrap().port();
    let h = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n");
    raw(door, &h, b"").await
}

/// A header of a raw response, by name.
fn header_of(r: &RawResponse, name: &str) -> Option<String> {
    r.headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_and_other_origins_are_refused() {
    let ui = tempfile::tempdir().unwrap();
    std::fs::write(
        ui.path().join("index.html"),
        "<!doctype html><title>p11kms</title>",
    )
    .unwrap();
    std::fs::create_dir(ui.path().join("assets")).unwrap();
    std::fs::write(ui.path().join("assets/app-0c1d.js"), "export {}").unwrap();
    let section = format!(
        "[console]\nenabled = true\nassets = \"{}\"\n",
        ui.path().display()
    );
    let door = start_door_with("aws-console", &section).await;

    let index = get(&door, "/console/").await;
    assert_eq!(index.status, 200, "{}", index.headers);
    assert!(index.body.contains("<title>p11kms</title>"));
    let csp = header_of(&index, "content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(
        header_of(&index, "cache-control").as_deref(),
        Some("no-store")
    );
    let js = get(&door, "/console/assets/app-0c1d.js").await;
    assert_eq!(js.status, 200);
    assert!(header_of(&js, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(get(&door, "/console").await.status, 308);
    for outside in [
        "/console/../p11kms.toml",
        "/console/%2e%2e/db",
        "/console/none.js",
    ] {
        assert_eq!(get(&door, outside).await.status, 404, "{outside}");
    }
    // Everything else on the door is still POST only.
    assert_eq!(get(&door, "/").await.status, 405);

    // A signed request from the console's own origin runs; from another site's page, it is
    // refused before its signature is even looked at.
    let admin = fixture_credentials(AK_ADMIN);
    let own = format!(
        "https://127.0.0.1:{}",
        door.server.aws_json_addr.unwrap().port()
    );
    let from = |origin: &str| {
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "TrentService.ListKeys"),
            ("origin", origin),
        ];
        let sign = Sign {
            access_key_id: AK_ADMIN,
            secret: admin.secret_access_key.as_str(),
            service: "kms",
            skew_secs: 0,
        };
        head(&door, "POST", &headers, b"{}", Some(sign))
    };
    let r = raw(&door, &from(&own), b"{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header_of(&r, "access-control-allow-origin"), None);
    for foreign in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let r = raw(&door, &from(foreign), b"{}").await;
        assert_eq!(r.status, 403, "{foreign}: {}", r.body);
        assert_eq!(r.error_type(), "AccessDeniedException");
        assert_eq!(header_of(&r, "access-control-allow-origin"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_console_nothing_is_served_under_console() {
    let door = start_door("aws-no-console").await;
    let r = get(&door, "/console/").await;
    assert_eq!(r.status, 405, "{}", r.headers);
    assert_eq!(r.error_type(), "UnknownOperationException");
}
