//! Several endpoints on the client commands (issue 17, item 10): the real `p11kms` binary in a
//! clean environment against real daemons. An endpoint that refuses connections is a port
//! bound on 127.0.0.1 and closed again; nothing listens on it any more.

mod common;

use common::*;
use p11kms::server::RunningServer;
use std::process::Output;

/// A loopback port that refuses connections: bound, then released.
fn refusing_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}")
}

fn live_endpoint(server: &RunningServer) -> String {
    format!("https://127.0.0.1:{}", server.addr.port())
}

/// `p11kms ARGS` as the admin certificate with the given `--endpoint`s (none: the endpoints
/// come from `env_endpoints` in `P11KMS_ENDPOINT`).
fn run(args: &[&str], endpoints: &[String], env_endpoints: Option<&str>) -> Output {
    let pki = &env().pki;
    let mut c = p11kms_command();
    c.args(args)
        .arg(format!("--ca-cert={}", pki.join("ca.pem").display()))
        .arg(format!("--client-cert={}", pki.join("admin.pem").display()))
        .arg(format!(
            "--client-key={}",
            pki.join("admin-key.pem").display()
        ));
    for e in endpoints {
        c.arg(format!("--endpoint={e}"));
    }
    if let Some(e) = env_endpoints {
        c.env("P11KMS_ENDPOINT", e);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn key_id(o: &Output) -> String {
    let v: serde_json::Value = serde_json::from_str(&stdout(o)).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_endpoint_is_skipped_and_reported_on_stderr() {
    let server = start(&data_dir("cli-failover")).await;
    let (dead, live) = (refusing_endpoint(), live_endpoint(&server));
    let endpoints = [dead.clone(), live.clone()];

    // One endpoint, as today: no failover message.
    let created = run(&["key", "create"], std::slice::from_ref(&live), None);
    assert_succeeded(&created, "key create on one endpoint");
    assert!(
        !stderr(&created).contains("failed over"),
        "{}",
        stderr(&created)
    );
    let key = key_id(&created);

    // --endpoint twice: the refusing one first.
    let described = run(&["key", "describe", &key], &endpoints, None);
    assert_succeeded(&described, "key describe with failover");
    assert_eq!(key_id(&described), key);
    let err = stderr(&described);
    assert!(err.contains(&format!("endpoint {dead} failed")), "{err}");
    assert!(err.contains(&format!("failed over to {live}")), "{err}");
    assert!(!stdout(&described).contains("failed over"));

    // A comma-separated P11KMS_ENDPOINT, on a crypto call.
    let list = format!("{dead},{live}");
    let encrypted = run(
        &["encrypt", "--key", &key, "--b64", "aGk="],
        &[],
        Some(&list),
    );
    assert_succeeded(&encrypted, "encrypt with failover from P11KMS_ENDPOINT");
    assert!(
        stderr(&encrypted).contains("failed over"),
        "{}",
        stderr(&encrypted)
    );
    assert!(!stdout(&encrypted).trim().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_down_is_a_clear_error_naming_each() {
    let (a, b) = (refusing_endpoint(), refusing_endpoint());
    let out = run(&["key", "list"], &[a.clone(), b.clone()], None);
    let (code, text) = code_and_output(&out);
    assert_ne!(code, 0, "{text}");
    assert!(stdout(&out).is_empty(), "{text}");
    let err = stderr(&out);
    assert!(err.contains("no endpoint could be reached"), "{err}");
    assert!(err.contains(&a) && err.contains(&b), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_error_is_the_answer_not_a_failover() {
    // Two independent daemons (each its own data directory): the key exists only on the
    // second, so the first answers NotFoundException, which must not fail over.
    let first = start(&data_dir("cli-failover-first")).await;
    let second = start(&data_dir("cli-failover-second")).await;
    let (e1, e2) = (live_endpoint(&first), live_endpoint(&second));
    let created = run(&["key", "create"], std::slice::from_ref(&e2), None);
    assert_succeeded(&created, "key create on the second daemon");
    let key = key_id(&created);

    let out = run(&["key", "describe", &key], &[e1, e2], None);
    let (code, text) = code_and_output(&out);
    assert_ne!(code, 0, "{text}");
    assert!(stderr(&out).contains("NotFoundException"), "{text}");
    assert!(!text.contains("failed over"), "{text}");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signs_for_the_endpoint_it_failed_over_to() {
    // The signature covers `host:port`: after failing over from 127.0.0.1:<dead> the request
    // must be signed for localhost:<live>, or the daemon refuses it.
    let server = start(&data_dir("cli-failover-sigv4")).await;
    let dead = refusing_endpoint();
    let live = format!("https://localhost:{}", server.addr.port());
    let creds = fixture_credentials("AKIAADMIN00000000001");
    let out = p11kms_command()
        .args(["sts", "get-caller-identity"])
        .arg(format!("--ca-cert={}", env().pki.join("ca.pem").display()))
        .arg(format!("--endpoint={dead},{live}"))
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", creds.secret_access_key.as_str())
        .output()
        .unwrap();
    assert_succeeded(&out, "sts get-caller-identity with failover, SigV4");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        v["Arn"].as_str().is_some_and(|a| a.contains(":user/")),
        "{v}"
    );
    assert!(
        stderr(&out).contains(&format!("failed over to {live}")),
        "{}",
        stderr(&out)
    );
    server.shutdown().await.unwrap();
}
