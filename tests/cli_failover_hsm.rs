//! Failover after a call answered UNAVAILABLE (issue 17, item 10), with a real daemon whose
//! device fails on command: the daemon loads the PKCS#11 fault shim (`tests/fault-shim`) in
//! front of SoftHSM2, and the real `p11kms` binary is given the same daemon twice, as
//! `https://127.0.0.1:<port>` then `https://localhost:<port>` (two endpoints to the client;
//! one node, because two daemons may not share this process's one PKCS#11 instance). A burst
//! of lost sessions makes the first attempt answer UNAVAILABLE (KeyUnavailableException) and
//! the second succeed. Without a C compiler the tests print `SKIPPED: ...` and return.

mod common;

use common::shim::{faults_on, Faults, Shim};
use common::*;
use p11kms::config::Config;
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerOptions};
use std::process::Output;

/// CKR_SESSION_HANDLE_INVALID: a lost session, retried once by the daemon itself.
const SESSION_HANDLE_INVALID: u64 = 0xb3;

async fn faults() -> Option<Faults> {
    let target = p11kms::devsetup::find_softhsm_module().expect("SoftHSM2 module not found");
    faults_on(&target).await
}

/// The harness config with `hsm.module` = the shim.
fn shim_config(shim: &Shim, name: &str) -> Config {
    let dir = data_dir(name);
    let softhsm = p11kms::devsetup::find_softhsm_module().unwrap();
    let from = format!("module = \"{}\"", softhsm.display());
    let text = config_text(&dir);
    assert!(text.contains(&from), "no `{from}` line:\n{text}");
    let text = text.replace(&from, &format!("module = \"{}\"", shim.lib.display()));
    let config = load_config_text(&dir.join("p11kms.toml"), text);
    assert_eq!(config.hsm.module, shim.lib, "the daemon must use the shim");
    config
}

/// `p11kms ARGS` as the admin certificate against the daemon, listed twice.
fn run_twice_listed(server: &RunningServer, args: &[&str]) -> Output {
    let port = server.addr.port();
    let mut flags = cli_connection(port, "admin");
    flags.push(format!("--endpoint=https://localhost:{port}"));
    let mut c = p11kms_command();
    c.args(args).args(flags).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_fails_over_only_for_calls_safe_to_repeat() {
    let Some(f) = faults().await else { return };
    let server = server::start(
        &shim_config(&f, "cli-failover-hsm"),
        ServerOptions::default(),
    )
    .await
    .expect("daemon starts");
    let port = server.addr.port();
    let mut c = admin(server.addr).await;
    let key = create_key(&mut c).await;
    let keys = |list: pb::ListKeysResponse| list.keys.len();
    let before = keys(
        c.list_keys(pb::ListKeysRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );

    // Encrypt: the attempt and the daemon's own retry lose their sessions (UNAVAILABLE);
    // the client sends it again to the next endpoint, where it succeeds.
    f.burst("C_Encrypt", SESSION_HANDLE_INVALID, 2);
    let out = run_twice_listed(&server, &["encrypt", "--key", &key, "--b64", "aGk="]);
    assert_succeeded(&out, "encrypt after UNAVAILABLE");
    assert_eq!(f.injected(), 2, "both faults fired");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "endpoint https://127.0.0.1:{port} failed (KeyUnavailableException"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("failed over to https://localhost:{port}")),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // Both endpoints answer UNAVAILABLE (the attempt and the daemon's retry, twice): the
    // error names each endpoint with its answer.
    f.burst("C_Encrypt", SESSION_HANDLE_INVALID, 4);
    let out = run_twice_listed(&server, &["encrypt", "--key", &key, "--b64", "aGk="]);
    let (code, text) = code_and_output(&out);
    assert_ne!(code, 0, "{text}");
    assert_eq!(f.injected(), 6, "{text}");
    let err = stderr(&out);
    assert!(err.contains("no endpoint could be reached"), "{err}");
    for e in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        assert!(
            err.contains(&format!("https://{e} (KeyUnavailableException")),
            "{e}: {err}"
        );
    }

    // One endpoint: the answer as before several existed.
    f.burst("C_Encrypt", SESSION_HANDLE_INVALID, 2);
    let out = p11kms_command()
        .args(["encrypt", "--key", &key, "--b64", "aGk="])
        .args(cli_connection(port, "admin"))
        .output()
        .unwrap();
    let (code, text) = code_and_output(&out);
    assert_ne!(code, 0, "{text}");
    assert!(
        stderr(&out).starts_with("error: KeyUnavailableException: "),
        "{text}"
    );
    assert_eq!(f.injected(), 8, "{text}");

    // CreateKey: UNAVAILABLE is the answer; never sent again (it would make a second key).
    f.burst("C_GenerateKey", SESSION_HANDLE_INVALID, 1);
    let out = run_twice_listed(&server, &["key", "create"]);
    let (code, text) = code_and_output(&out);
    assert_ne!(code, 0, "{text}");
    assert!(stderr(&out).contains("KeyUnavailableException"), "{text}");
    assert!(!text.contains("failed over"), "{text}");
    assert_eq!(f.injected(), 9, "one CreateKey attempt");
    let after = keys(
        c.list_keys(pb::ListKeysRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(after, before, "no key was made");
    drop(c);
    server.shutdown().await.unwrap();
}
