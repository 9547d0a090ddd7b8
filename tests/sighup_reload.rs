//! SIGHUP reloads the identity directory (issue 3): its own test binary, because it signals
//! its own process. The daemon runs in-process with a copy of the identity fixtures; the test
//! changes the files, sends SIGHUP to this process with `kill -HUP <pid>`, and polls (bounded)
//! until the change is in force.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const AK_NOPOLICY: &str = "AKIANOPOLICY00000001";
const DEADLINE: Duration = Duration::from_secs(5);

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The message names the file and the fix.
fn assert_refused(message: &str, file: &Path) {
    assert!(
        message.contains(&format!("chmod 600 {}", file.display())),
        "{message}"
    );
}

const NOPOLICY_MAY_ENCRYPT: &str = "ViaSighup";

fn grant_nopolicy_encrypt(account_file: &Path) {
    write_nopolicy_policy(
        account_file,
        json!([{
            "PolicyName": NOPOLICY_MAY_ENCRYPT,
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}
        }]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_credentials_are_refused_at_start_and_on_reload() {
    let dir = data_dir("secret-perms");
    let fixtures = copy_fixtures(&dir);
    let creds = fixtures.join("credentials.json");
    let account_file = fixtures.join(format!("{ACCOUNT}.json"));

    chmod(&creds, 0o644);
    let refused = try_start_with_fixtures(&dir, &fixtures, "")
        .await
        .err()
        .expect("refused");
    assert_refused(&refused.to_string(), &creds);
    assert!(refused.to_string().contains("others"), "{refused}");

    chmod(&creds, 0o600);
    let server = try_start_with_fixtures(&dir, &fixtures, "")
        .await
        .expect("0600 starts");
    let mut admin = admin(server.addr).await;
    let key = create_key(&mut admin).await;
    let mut nopolicy = signed_as(server.addr, AK_NOPOLICY).await;
    let denied = Err("AccessDeniedException".to_string());
    assert_eq!(nopolicy_encrypt(&mut nopolicy, &key).await, denied);

    // The reload (SIGHUP's code path) refuses a group-readable credentials file and keeps
    // the previous directory: the new grant is not in force.
    // (Group-readable first: a SIGHUP from the other test in this binary then changes nothing.)
    chmod(&creds, 0o640);
    grant_nopolicy_encrypt(&account_file);
    let e = server.reload_identity().expect_err("reload refused");
    assert_refused(&e.to_string(), &creds);
    assert_eq!(nopolicy_encrypt(&mut nopolicy, &key).await, denied);
    chmod(&creds, 0o600);
    server.reload_identity().expect("0600 reloads");
    assert_eq!(nopolicy_encrypt(&mut nopolicy, &key).await, Ok(()));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_switch_accepts_group_readable_secrets_only() {
    let dir = data_dir("secret-relaxed");
    let fixtures = copy_fixtures(&dir);
    let creds = fixtures.join("credentials.json");
    let relax = "allow_group_readable_secrets = true";
    chmod(&creds, 0o640);
    let server = try_start_with_fixtures(&dir, &fixtures, relax)
        .await
        .expect("group-readable credentials accepted with the switch");
    server.reload_identity().expect("and on reload");
    chmod(&creds, 0o644);
    let e = server
        .reload_identity()
        .expect_err("world-readable refused");
    assert_refused(&e.to_string(), &creds);
    server.shutdown().await.unwrap();
    let e = try_start_with_fixtures(&dir, &fixtures, relax)
        .await
        .err()
        .expect("refused");
    assert_refused(&e.to_string(), &creds);
}

fn send_sighup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Whether nopolicy may encrypt under `key` (Ok), or why not (the AWS exception name).
async fn nopolicy_encrypt(s: &mut Signed, key: &str) -> Result<(), String> {
    let req = s.kms_req(encrypt_request(key, b"hup"), "Encrypt");
    match s.kms.encrypt(req).await {
        Ok(_) => Ok(()),
        Err(e) => Err(reason::<()>(Err(e))),
    }
}

/// Sends SIGHUP (again every 250 ms, in case the daemon's handler was not yet listening) until
/// `nopolicy_encrypt` gives `want`, or the deadline passes.
async fn hup_until(s: &mut Signed, key: &str, want: &Result<(), String>) -> Result<(), String> {
    let start = Instant::now();
    loop {
        send_sighup();
        let polled_since = Instant::now();
        while polled_since.elapsed() < Duration::from_millis(250) {
            let got = nopolicy_encrypt(s, key).await;
            if &got == want {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if start.elapsed() > DEADLINE {
            return nopolicy_encrypt(s, key).await;
        }
    }
}

fn write_nopolicy_policy(account_file: &Path, policies: serde_json::Value) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(account_file).unwrap()).unwrap();
    let user = user_mut(&mut v, "nopolicy");
    user["UserPolicyList"] = policies;
    std::fs::write(account_file, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_identity_directory() {
    // A SIGHUP listener of our own first: with a tokio handler installed the signal can never
    // take the default action (terminating this process), whatever the daemon's reloader task
    // is doing yet. It also tells us the signal was delivered.
    let mut ours = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("listen for SIGHUP");

    let dir = data_dir("sighup");
    let fixtures = copy_fixtures(&dir);
    let account_file = fixtures.join(format!("{ACCOUNT}.json"));
    let server = start_with_fixtures(&dir, &fixtures).await;
    let mut admin = admin(server.addr).await;
    let key = create_key(&mut admin).await;
    let mut nopolicy = signed_as(server.addr, AK_NOPOLICY).await;
    let denied = Err("AccessDeniedException".to_string());
    assert_eq!(nopolicy_encrypt(&mut nopolicy, &key).await, denied);

    // Grant nopolicy kms:Encrypt in the file, then SIGHUP.
    write_nopolicy_policy(
        &account_file,
        json!([{
            "PolicyName": "ViaSighup",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}
        }]),
    );
    assert_eq!(
        hup_until(&mut nopolicy, &key, &Ok(())).await,
        Ok(()),
        "the change did not take effect within {DEADLINE:?} of SIGHUP"
    );
    tokio::time::timeout(DEADLINE, ours.recv())
        .await
        .expect("our own listener saw the SIGHUP");

    // A malformed file and SIGHUP: the previous directory stays in force.
    std::fs::write(&account_file, "{ this is not JSON").unwrap();
    send_sighup();
    tokio::time::timeout(DEADLINE, ours.recv())
        .await
        .expect("SIGHUP delivered");
    // Bounded observation: for one second after delivery, nopolicy stays allowed.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(1) {
        assert_eq!(nopolicy_encrypt(&mut nopolicy, &key).await, Ok(()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A good file again (without the policy): the next SIGHUP takes it.
    std::fs::copy(
        fixtures_dir().join(format!("{ACCOUNT}.json")),
        &account_file,
    )
    .unwrap();
    assert_eq!(
        hup_until(&mut nopolicy, &key, &denied).await,
        denied,
        "the restored file did not take effect within {DEADLINE:?} of SIGHUP"
    );
    server.shutdown().await.unwrap();
}
