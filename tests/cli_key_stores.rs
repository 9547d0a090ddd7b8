//! The `p11kms key-store` CLI (issue 15, item 3): the real binary, in a clean environment,
//! against the real daemon with one `[[hsm.cluster]]` SoftHSM2 token. The whole life cycle
//! (create, describe, connect, a key in the store, encrypt and decrypt, rename, disconnect),
//! AWS's errors by exception name, and the password: read from a 0600 file or a variable,
//! refused as a flag, and found in no output and no file of the daemon's data directory.

mod common;

use std::cell::RefCell;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use p11kms::api::aws_json::kms::operation;
use p11kms::identity::{AuthMethod, Caller};
use p11kms::server::{RunningServer, ServerOptions};
use serde_json::Value;

/// The CLI as the admin certificate; every output kept, to scan for the password.
struct Cli {
    conn: Vec<String>,
    outputs: RefCell<Vec<String>>,
}

impl Cli {
    /// Runs `p11kms ARGS... CONN...` with the extra environment `env`: (exit code, stdout,
    /// stderr).
    fn run_env<S: AsRef<str>>(&self, args: &[S], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = p11kms_command()
            .args(args.iter().map(AsRef::as_ref))
            .args(&self.conn)
            .envs(env.iter().copied())
            .output()
            .expect("run p11kms");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.outputs.borrow_mut().push(format!("{stdout}{stderr}"));
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let (code, stdout, stderr) = self.run_env(args, &[]);
        assert_eq!(code, 0, "p11kms {} failed: {stderr}", shown(args));
        stdout
    }

    /// A command AWS answers with nothing: it prints nothing.
    fn silent(&self, args: &[&str]) {
        let stdout = self.ok(args);
        assert_eq!(stdout, "", "p11kms {args:?} printed something");
    }

    fn json<S: AsRef<str>>(&self, args: &[S]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// The command fails with `exception` (printed as `error: <exception>: ...`); its stderr.
    fn refused<S: AsRef<str>>(&self, args: &[S], exception: &str) -> String {
        let (code, stdout, stderr) = self.run_env(args, &[]);
        assert_eq!(code, 1, "p11kms {}: {stdout}{stderr}", shown(args));
        assert!(
            stderr.starts_with(&format!("error: {exception}: ")),
            "p11kms {}: want {exception}, got {stderr}",
            shown(args)
        );
        stderr
    }

    /// The one store `describe --id` shows.
    fn store(&self, id: &str) -> Value {
        let all = self.json(&["key-store", "describe", "--id", id]);
        let stores = all["CustomKeyStores"].as_array().unwrap();
        assert_eq!(stores.len(), 1, "{all:#}");
        stores[0].clone()
    }

    fn state(&self, id: &str) -> String {
        self.store(id)["ConnectionState"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The AWS door's DescribeCustomKeyStores answer for store `id`, as the admin: what the AWS
/// CLI would print.
async fn door_describe(server: &RunningServer, id: &str) -> Value {
    let principal = server.kms.directory().current().principal(ADMIN).unwrap();
    let caller = Caller::new(principal, AuthMethod::Internal, None, true);
    let op = operation("TrentService.DescribeCustomKeyStores").unwrap();
    let input = serde_json::json!({ "CustomKeyStoreId": id });
    let call = (op.prepare)(server.kms.clone(), caller, input).unwrap();
    call.call.await.unwrap().body
}

/// A command line for a failure message.
fn shown<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}

/// Whether any file under `dir` (the store, the audit trail, everything) contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store_cli_life_cycle_errors_and_the_password() {
    let dir = data_dir("cli-key-stores");
    let cluster = stores::cluster("cli-ks", "one", &stores::softhsm(), true);
    let config = config_with(
        &dir,
        &stores::cluster_sections(std::slice::from_ref(&cluster)),
    );
    let server = p11kms::server::start(&config, ServerOptions::default())
        .await
        .expect("daemon starts");
    let cli = Cli {
        conn: cli_connection(server.addr.port(), "admin"),
        outputs: RefCell::new(Vec::new()),
    };
    let secrets = tempfile::tempdir().unwrap();
    let pw_file = secrets.path().join("key-store-password");
    write_secret(&pw_file, format!("{}\n", cluster.password));
    let short_pw = "Q7z";
    let short_file = secrets.path().join("short-password");
    write_secret(&short_file, short_pw);
    let anchor = path_str(&cluster.anchor_file);
    let create = |name: &str, anchor: &str, pw: &Path| -> Vec<String> {
        let (id, pw) = (cluster.id.as_str(), path_str(pw));
        ["key-store", "create", "--name", name, "--cluster-id", id]
            .into_iter()
            .chain(["--trust-anchor-file", anchor, "--password-file", pw])
            .map(String::from)
            .collect()
    };

    // Bad input first: nothing is created.
    let wrong_anchor = env().pki.join("ca.pem");
    let args = create("store-a", path_str(&wrong_anchor), &pw_file);
    cli.refused(&args, "IncorrectTrustAnchorException");
    let args = create("store-a", anchor, &short_file);
    let e = cli.refused(&args, "ValidationException");
    assert!(!e.contains(short_pw), "the short password was echoed: {e}");
    let (code, _, stderr) = cli.run_env(
        &[
            "key-store",
            "create",
            "--name",
            "x",
            "--cluster-id",
            &cluster.id,
        ]
        .into_iter()
        .chain([
            "--trust-anchor-file",
            anchor,
            "--password",
            &cluster.password,
        ])
        .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code, 2, "a --password flag must be a usage error: {stderr}");
    assert!(
        stderr.contains("unexpected argument '--password'"),
        "{stderr}"
    );
    let none = cli.json(&["key-store", "describe"]);
    assert_eq!(none["CustomKeyStores"], serde_json::json!([]), "{none:#}");

    // Create: the id, and every member AWS shows, DISCONNECTED.
    let args = create("store-a", anchor, &pw_file);
    let created = cli.json(&args);
    let id = created["CustomKeyStoreId"].as_str().unwrap().to_string();
    assert!(id.starts_with("cks-") && id.len() == 21, "{created:#}");
    let store = cli.store(&id);
    assert_eq!(store["CustomKeyStoreId"], id.as_str());
    assert_eq!(store["CustomKeyStoreName"], "store-a");
    assert_eq!(store["CloudHsmClusterId"], cluster.id.as_str());
    assert_eq!(store["TrustAnchorCertificate"], cluster.anchor_pem.as_str());
    assert_eq!(store["ConnectionState"], "DISCONNECTED");
    assert_eq!(store["CustomKeyStoreType"], "AWS_CLOUDHSM");
    assert!(store["CreationDate"].as_f64().unwrap() > 1.7e9, "{store:#}");
    assert!(store.get("ConnectionErrorCode").is_none(), "{store:#}");
    let door = door_describe(&server, &id).await;
    assert_eq!(door["CustomKeyStores"], serde_json::json!([store.clone()]));
    let by_name = cli.json(&["key-store", "describe", "--name", "store-a"]);
    assert_eq!(by_name["CustomKeyStores"][0], store);
    cli.refused(&args, "CloudHsmClusterInUseException");

    // Connect: answers at once, then CONNECTED.
    cli.silent(&["key-store", "connect", &id]);
    assert!(
        wait_for(async || cli.state(&id) == "CONNECTED").await,
        "the store never connected: {:#}",
        cli.store(&id)
    );

    // A key in the store, and a round trip through it.
    let made = cli.json(&["key", "create", "--custom-key-store-id", &id]);
    let m = &made["KeyMetadata"];
    assert_eq!(m["CustomKeyStoreId"], id.as_str(), "{made:#}");
    assert_eq!(m["CloudHsmClusterId"], cluster.id.as_str(), "{made:#}");
    assert_eq!(m["Origin"], "AWS_CLOUDHSM", "{made:#}");
    let key = m["KeyId"].as_str().unwrap().to_string();
    let message = B64.encode(b"kept on the operator's other HSM");
    let blob = cli.ok(&["encrypt", "--key", &key, "--b64", &message]);
    let plain = cli.ok(&["decrypt", "--b64", blob.trim()]);
    assert_eq!(plain.trim(), message);

    // Rename at any time; a new password only while disconnected.
    cli.silent(&["key-store", "update", &id, "--new-name", "store-b"]);
    assert_eq!(cli.store(&id)["CustomKeyStoreName"], "store-b");
    let pw = path_str(&pw_file);
    cli.refused(
        &["key-store", "update", &id, "--password-file", pw],
        "CustomKeyStoreInvalidStateException",
    );

    // Disconnect: the key is Unavailable and refuses cryptography; the store cannot go
    // while it holds the key.
    cli.silent(&["key-store", "disconnect", &id]);
    assert_eq!(cli.state(&id), "DISCONNECTED");
    let described = cli.json(&["key", "describe", &key]);
    assert_eq!(described["KeyMetadata"]["KeyState"], "Unavailable");
    cli.refused(
        &["encrypt", "--key", &key, "--b64", &message],
        "KMSInvalidStateException",
    );
    let (code, _, stderr) = cli.run_env(
        &["key-store", "update", &id, "--password-env", "KS_PASSWORD"],
        &[("KS_PASSWORD", &cluster.password)],
    );
    assert_eq!(code, 0, "update --password-env: {stderr}");
    cli.refused(
        &["key-store", "delete", &id],
        "CustomKeyStoreHasCMKsException",
    );
    cli.refused(
        &["key-store", "describe", "--id", "cks-00000000000000000"],
        "CustomKeyStoreNotFoundException",
    );
    assert_eq!(cli.store(&id)["CustomKeyStoreName"], "store-b");

    // The password: in no output, no file of the data directory (audit trail included).
    server.shutdown().await.unwrap();
    for out in cli.outputs.borrow().iter() {
        assert!(!out.contains(&cluster.password), "echoed: {out}");
    }
    let hits = files_containing(&dir, cluster.password.as_bytes());
    let recorded = files_containing(&dir, id.as_bytes());
    assert!(!recorded.is_empty(), "the scan found not even the store id");
    assert!(hits.is_empty(), "the password is in {hits:?}");
    assert!(
        !segments(&dir).is_empty(),
        "no audit segment was scanned under {}",
        dir.display()
    );
}
