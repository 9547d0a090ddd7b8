//! External key stores (issue 16, Part B) with both parts together: daemon X serves the XKS
//! proxy API (its XKS door, plain HTTP on loopback), daemon Y's AWS door holds an
//! `EXTERNAL_KEY_STORE` custom key store backed by X. Real daemons, real SoftHSM2 tokens, real
//! clients: boto3 (tests/python/external_key_store_checks.py, in phases between the steps this
//! test takes on X) and the AWS CLI. X's key policy allows one AWS principal of Y and denies
//! another; disabling the key on X, stopping X, restarting it on the same port and restarting
//! it with another credential each show on Y as AWS shows them. A ciphertext of Y given to X's
//! XKS decrypt yields only the inner ciphertext, never the plaintext; the proxy secret is in no
//! file either daemon wrote.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::xks::xks_key_policy;
use common::*;
use p11kms::core::SystemClock;
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerOptions};
use serde_json::{json, Value};

const PREFIX: &str = "/xks-y";
const ACCESS_KEY_ID: &str = "AKIAXKSYSTOREAAAAAAA2";
const SECRET: &str = "XksSecretForStoreY0123456789abcdefghijklmnopqrst";
const OTHER_ID: &str = "AKIAXKSOTHERBBBBBBBB3";
const OTHER_SECRET: &str = "XksOtherSecret0123456789abcdefghijklmnopqrstuvw";

/// Daemon X: the XKS door on `port` (0: any) over plain HTTP, one key store at [`PREFIX`]
/// run as user1, accepting `creds`.
async fn start_x(dir: &Path, port: u16, creds: &[(&str, &str)]) -> (RunningServer, SocketAddr) {
    let file = dir.join("xks-creds.json");
    let pairs: Vec<Value> = creds
        .iter()
        .map(|(id, s)| json!({"access_key_id": id, "secret_access_key": s}))
        .collect();
    write_secret(&file, Value::from(pairs).to_string());
    let section = format!(
        "\n[xks]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls = false\n\n\
         [[xks.key_store]]\nuri_path_prefix = \"{PREFIX}\"\nprincipal = \"{USER1}\"\n\
         credentials_file = \"{}\"\n",
        file.display()
    );
    let server = server::start(&config_with(dir, &section), ServerOptions::default())
        .await
        .expect("daemon X starts");
    let addr = server
        .http_door_addr(p11kms::api::xks::DOOR)
        .expect("the XKS door is enabled");
    (server, addr)
}

/// Daemon Y: the AWS door, on the system clock (the proxy checks request dates).
async fn start_y(dir: &Path) -> (RunningServer, String) {
    start_aws_door(
        dir,
        ServerOptions {
            clock: Arc::new(SystemClock),
            sweep_interval: None,
        },
    )
    .await
}

/// A key on X under [`xks_key_policy`] (`spec` empty: SYMMETRIC_DEFAULT).
async fn x_key(c: &mut Client, spec: &str) -> String {
    let usage = if spec.is_empty() { "" } else { "SIGN_VERIFY" };
    c.create_key(pb::CreateKeyRequest {
        policy: xks_key_policy(ADMIN),
        key_spec: spec.into(),
        key_usage: usage.into(),
        ..Default::default()
    })
    .await
    .expect("create a key on X")
    .into_inner()
    .key_metadata
    .expect("metadata")
    .key_id
}

/// The venv with the AWS clients; fails the test (never skips it) when missing.
fn venv() -> PathBuf {
    let v = manifest_dir().join(".venv");
    assert!(
        v.join("bin/aws").is_file() && v.join("bin/python").is_file(),
        "the Python venv with awscli and boto3 is missing at {}",
        v.display()
    );
    v
}

/// Y's AWS clients, with the files the checks read.
struct Clients {
    endpoint: String,
    scratch: PathBuf,
    given: PathBuf,
    state: PathBuf,
}

impl Clients {
    fn command(&self, program: &str, access_key_id: &str) -> Command {
        let mut c = aws_client_command(
            venv().join("bin").join(program),
            &self.scratch,
            access_key_id,
            &self.endpoint,
        );
        c.env("AWS_REGION", "us-east-1")
            .env("AWS_PAGER", "")
            .env(
                "P11KMS_FIXTURE_CREDENTIALS",
                fixtures_dir().join("credentials.json"),
            )
            .env("P11KMS_XKS", &self.given)
            .env("P11KMS_XKS_STATE", &self.state);
        c
    }

    /// Runs one phase of external_key_store_checks.py.
    async fn phase(&self, phase: &str) {
        let mut c = self.command("python", "AKIAADMIN00000000001");
        c.arg(manifest_dir().join("tests/python/external_key_store_checks.py"))
            .arg(phase);
        let out = run(c).await;
        assert!(
            out.status.success(),
            "phase {phase} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A successful `aws kms ...` call's JSON answer, as the admin.
    async fn aws(&self, args: &[&str]) -> Value {
        let mut c = self.command("aws", "AKIAADMIN00000000001");
        c.arg("kms").args(args).args(["--output", "json"]);
        let out = run(c).await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "aws kms {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(SECRET),
            "aws kms {args:?} printed the secret"
        );
        serde_json::from_str(&text).unwrap_or(json!({}))
    }

    /// Writes the blob of a base64 answer member to `name` in the scratch directory.
    fn write_blob(&self, name: &str, b64: &Value) -> Vec<u8> {
        let bytes = B64.decode(b64.as_str().expect("a blob member")).unwrap();
        std::fs::write(self.scratch.join(name), &bytes).unwrap();
        bytes
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }
}

async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("run a client"))
        .await
        .unwrap()
}

/// The AWS CLI on the store the boto3 phase made: a key with `--xks-key-id`, Encrypt,
/// Decrypt, ReEncrypt, GenerateDataKey.
async fn aws_cli_crypto(clients: &Clients, store: &str, xks_key: &str) {
    let stores = clients
        .aws(&["describe-custom-key-stores", "--custom-key-store-id", store])
        .await;
    let s = &stores["CustomKeyStores"][0];
    assert_eq!(s["ConnectionState"], "CONNECTED", "{s}");
    assert_eq!(
        s["XksProxyConfiguration"]["AccessKeyId"], ACCESS_KEY_ID,
        "{s}"
    );
    let created = clients
        .aws(&[
            "create-key",
            "--origin",
            "EXTERNAL_KEY_STORE",
            "--custom-key-store-id",
            store,
            "--xks-key-id",
            xks_key,
        ])
        .await;
    let key = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["KeyMetadata"]["XksKeyConfiguration"]["Id"], xks_key);
    let plain = b"through the AWS CLI";
    std::fs::write(clients.scratch.join("plain.bin"), plain).unwrap();
    let enc = clients
        .aws(&[
            "encrypt",
            "--key-id",
            &key,
            "--plaintext",
            "fileb://plain.bin",
        ])
        .await;
    let blob = clients.write_blob("blob.bin", &enc["CiphertextBlob"]);
    let re = clients
        .aws(&[
            "re-encrypt",
            "--ciphertext-blob",
            "fileb://blob.bin",
            "--destination-key-id",
            &key,
        ])
        .await;
    let blob2 = clients.write_blob("blob2.bin", &re["CiphertextBlob"]);
    assert_ne!(blob2, blob);
    let dec = clients
        .aws(&["decrypt", "--ciphertext-blob", "fileb://blob2.bin"])
        .await;
    assert_eq!(dec["Plaintext"], B64.encode(plain));
    let dk = clients
        .aws(&[
            "generate-data-key",
            "--key-id",
            &key,
            "--key-spec",
            "AES_256",
        ])
        .await;
    clients.write_blob("dk.bin", &dk["CiphertextBlob"]);
    let dec = clients
        .aws(&["decrypt", "--ciphertext-blob", "fileb://dk.bin"])
        .await;
    assert_eq!(dec["Plaintext"], dk["Plaintext"]);
}

/// `p11kms` as Y's admin, the XKS secret in an environment variable (never argv).
fn p11kms_cli(y: &RunningServer, args: &[&str]) -> (i32, String) {
    let out = p11kms_command()
        .args(args)
        .args(cli_connection(y.addr.port(), "admin"))
        .env("XKS_SECRET", SECRET)
        .output()
        .expect("run p11kms");
    let (code, text) = code_and_output(&out);
    assert!(!text.contains(SECRET), "p11kms {args:?} printed the secret");
    (code, text)
}

/// The p11kms CLI: `key-store create --type external` reaches the door with every member (the
/// same proxy URI as the boto3 store: XksProxyUriInUseException), `key create --xks-key-id`
/// makes a key in the store.
fn p11kms_cli_on_the_store(y: &RunningServer, port: u16, store: &str, xks_key: &str) {
    let endpoint = format!("http://127.0.0.1:{port}");
    let path = format!("{PREFIX}/kms/xks/v1");
    let (code, text) = p11kms_cli(
        y,
        &[
            "key-store",
            "create",
            "--type",
            "external",
            "--name",
            "cli-store",
            "--xks-endpoint",
            &endpoint,
            "--xks-path",
            &path,
            "--xks-access-key-id",
            ACCESS_KEY_ID,
            "--xks-secret-env",
            "XKS_SECRET",
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("XksProxyUriInUseException"), "{text}");
    let (code, text) = p11kms_cli(
        y,
        &[
            "key",
            "create",
            "--custom-key-store-id",
            store,
            "--xks-key-id",
            xks_key,
        ],
    );
    assert_eq!(code, 0, "{text}");
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["KeyMetadata"]["Origin"], "EXTERNAL_KEY_STORE", "{v}");
    assert_eq!(
        v["KeyMetadata"]["XksKeyConfiguration"]["Id"], xks_key,
        "{v}"
    );
}

/// Neither side alone decrypts: the outer layer of Y's ciphertext, given to X's XKS decrypt
/// directly (with the right AAD and credential, through the library's XKS client), yields the
/// inner ciphertext and tag, not the plaintext.
/// A client of X's XKS door with Y's credential, and the `requestMetadata` of `operation`
/// by Y's admin.
fn x_client(
    x: SocketAddr,
    operation: &str,
) -> (
    p11kms::xks_client::XksProxyClient,
    p11kms::xks_client::ProxyRequestMetadata,
) {
    use p11kms::xks_client::{
        tls_config, ProxyRequestMetadata, ProxyTarget, XksCredential, XksProxyClient,
    };
    let client = XksProxyClient::new(
        ProxyTarget {
            endpoint: format!("http://127.0.0.1:{}", x.port()),
            uri_path: format!("{PREFIX}/kms/xks/v1"),
            region: "us-east-1".into(),
        },
        XksCredential {
            access_key_id: ACCESS_KEY_ID.into(),
            secret: zeroize::Zeroizing::new(SECRET.into()),
        },
        tls_config(None).unwrap(),
    )
    .unwrap();
    let meta = ProxyRequestMetadata {
        kms_request_id: "r".into(),
        kms_operation: operation.into(),
        aws_principal_arn: Some(ADMIN.into()),
        kms_key_arn: Some("arn:k".into()),
    };
    (client, meta)
}

async fn x_alone_does_not_decrypt(x: SocketAddr, state: &Value, xks_key: &str) {
    let blob = B64.decode(state["blob"].as_str().unwrap()).unwrap();
    let plaintext = B64.decode(state["plaintext"].as_str().unwrap()).unwrap();
    let parsed = p11kms::ciphertext::parse(&blob).expect("a v1 blob");
    let outer = p11kms::core::external::parse_outer(parsed.ciphertext_and_tag).expect("outer");
    let ctx: std::collections::BTreeMap<String, String> =
        serde_json::from_value(state["context"].clone()).unwrap();
    let aad = p11kms::ciphertext::aad(
        parsed.header,
        &p11kms::ciphertext::canonical_context(&ctx).unwrap(),
    );
    let (client, meta) = x_client(x, "Decrypt");
    let inner = client
        .decrypt(xks_key, &meta, &outer, &aad)
        .await
        .expect("X opens its own layer");
    assert_eq!(
        inner.len(),
        plaintext.len() + 16,
        "the inner ciphertext and tag"
    );
    assert!(
        !inner
            .windows(16)
            .any(|w| plaintext.windows(16).any(|p| p == w)),
        "X's answer holds plaintext"
    );
}

/// A key in an external key store is not an XKS key of the daemon holding it: served by its
/// XKS door it would be one layer (the inner one), so the door refuses it with
/// InvalidKeyUsageException. X makes an external store on its own XKS door to show it.
async fn an_external_key_is_not_served_by_an_xks_door(
    x: &RunningServer,
    door: SocketAddr,
    xks_key: &str,
) {
    use p11kms::xks_client::{ProxyErrorName, XksProxyError};
    let mut c = admin(x.addr).await;
    let store = c
        .create_custom_key_store(pb::CreateCustomKeyStoreRequest {
            custom_key_store_name: "x-on-itself".into(),
            custom_key_store_type: "EXTERNAL_KEY_STORE".into(),
            xks_proxy_uri_endpoint: format!("http://127.0.0.1:{}", door.port()),
            xks_proxy_uri_path: format!("{PREFIX}/kms/xks/v1"),
            xks_proxy_authentication_credential: Some(pb::XksProxyAuthenticationCredential {
                access_key_id: ACCESS_KEY_ID.into(),
                raw_secret_access_key: SECRET.into(),
            }),
            xks_proxy_connectivity: "PUBLIC_ENDPOINT".into(),
            ..Default::default()
        })
        .await
        .expect("an external store on X's own door")
        .into_inner()
        .custom_key_store_id;
    c.connect_custom_key_store(pb::ConnectCustomKeyStoreRequest {
        custom_key_store_id: store.clone(),
    })
    .await
    .expect("connect");
    let connected = wait_for(async || {
        x.kms
            .key_stores()
            .get(&store)
            .is_some_and(|h| h.state().0.as_str() == "CONNECTED")
    })
    .await;
    assert!(connected, "X's store on itself connects");
    let key = create_key_from(
        &mut c,
        pb::CreateKeyRequest {
            origin: "EXTERNAL_KEY_STORE".into(),
            custom_key_store_id: store,
            xks_key_id: xks_key.into(),
            policy: xks_key_policy(ADMIN),
            ..Default::default()
        },
    )
    .await;
    let (client, meta) = x_client(door, "Encrypt");
    let refused = client.encrypt(&key, &meta, b"one layer?", b"").await;
    assert!(
        matches!(
            refused,
            Err(XksProxyError::Proxy {
                status: 400,
                name: ProxyErrorName::InvalidKeyUsage
            })
        ),
        "{refused:?}"
    );
}

/// Every file under `dir` (audit segments, database, logs) but `except` is free of the
/// proxy secret.
fn assert_secret_in_no_file(dir: &Path, except: &str) {
    let mut seen = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if entry.file_name() != except {
                let bytes = std::fs::read(&p).unwrap_or_default();
                seen += 1;
                let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
                assert!(!found, "{} holds the proxy secret", p.display());
            }
        }
    }
    assert!(seen > 3, "only {seen} files under {}", dir.display());
}

/// Y's audit events of requests that called the proxy record its answer class (never data):
/// `ok` for the admin's Encrypt, the proxy's refusal for user1's.
fn assert_proxy_answers_audited(y_dir: &Path) {
    let answers: Vec<(String, String, String)> = events(y_dir)
        .iter()
        .filter_map(|e| {
            let answer = e["additionalEventData"]["xksProxyAnswer"].as_str()?;
            Some((
                e["eventName"].as_str().unwrap_or_default().to_string(),
                e["userIdentity"]["arn"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                answer.to_string(),
            ))
        })
        .collect();
    let has = |op: &str, who: &str, answer: &str| {
        answers
            .iter()
            .any(|(o, w, a)| o == op && w == who && a == answer)
    };
    assert!(has("Encrypt", ADMIN, "ok"), "{answers:?}");
    assert!(has("CreateKey", ADMIN, "ok"), "{answers:?}");
    assert!(
        has("Encrypt", USER1, "AccessDeniedException"),
        "{answers:?}"
    );
    assert!(
        has("Encrypt", ADMIN, "InvalidStateException"),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_uses_the_first_as_its_external_key_store() {
    let (x_dir, y_dir) = (data_dir("xks-x"), data_dir("xks-y"));
    let both = [(ACCESS_KEY_ID, SECRET), (OTHER_ID, OTHER_SECRET)];
    let (x, x_addr) = start_x(&x_dir, 0, &both).await;
    let port = x_addr.port();
    let mut xc = admin(x.addr).await;
    let (k1, k2, k3) = (
        x_key(&mut xc, "").await,
        x_key(&mut xc, "").await,
        x_key(&mut xc, "").await,
    );
    let k4 = x_key(&mut xc, "").await;
    let rsa = x_key(&mut xc, "RSA_2048").await;
    let (y, endpoint) = start_y(&y_dir).await;
    let scratch = y_dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let clients = Clients {
        endpoint,
        given: scratch.join("xks.json"),
        state: scratch.join("state.json"),
        scratch,
    };
    let given = json!({
        "endpoint": format!("http://127.0.0.1:{port}"),
        "closed_endpoint": format!("http://127.0.0.1:{closed_port}"),
        "path": format!("{PREFIX}/kms/xks/v1"),
        "access_key_id": ACCESS_KEY_ID, "secret": SECRET,
        "xks_key": k1, "xks_key_to_disable": k2, "rsa_key": rsa,
    });
    write_secret(&clients.given, given.to_string());

    clients.phase("create").await;
    let state = clients.state();
    let store = state["store"].as_str().unwrap().to_string();
    aws_cli_crypto(&clients, &store, &k3).await;
    x_alone_does_not_decrypt(x_addr, &state, &k1).await;
    an_external_key_is_not_served_by_an_xks_door(&x, x_addr, &k1).await;

    xc.disable_key(pb::DisableKeyRequest { key_id: k2.clone() })
        .await
        .expect("disable the key on X");
    clients.phase("disabled").await;

    x.shutdown().await.expect("X stops");
    clients.phase("failed").await;

    let (x, _) = start_x(&x_dir, port, &both).await;
    clients.phase("recovered").await;
    p11kms_cli_on_the_store(&y, port, &store, &k4);

    x.shutdown().await.expect("X stops");
    let (x, _) = start_x(&x_dir, port, &[(OTHER_ID, OTHER_SECRET)]).await;
    clients.phase("denied").await;

    y.shutdown().await.expect("Y stops");
    x.shutdown().await.expect("X stops");
    assert_secret_in_no_file(&y_dir, "xks.json");
    assert_proxy_answers_audited(&y_dir);
    // X's own credentials file holds the secret by design; nothing else of X's may.
    assert_secret_in_no_file(&x_dir, "xks-creds.json");
}
