//! Restart durability, the deletion sweeper on an injected clock, and the CLI tour — all
//! against the real daemon, a real SoftHSM2 token and real SQLite.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use p11kms::hsm::ObjectId;
use p11kms::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_aliases_and_ciphertexts_survive_a_restart() {
    let (dir, server, mut c) = start_admin("restart").await;
    let key = create_key(&mut c).await;
    create_alias(&mut c, "alias/durable", &key).await;
    tag_key(&mut c, &key, "k", "v").await;
    let blob = c
        .encrypt(encrypt_request_ctx(
            "alias/durable",
            b"kept across restarts",
            &[("app", "x")],
        ))
        .await
        .reply()
        .ciphertext_blob;
    let dk = c.generate_data_key(data_key_request(&key)).await.reply();
    drop(c);
    server.shutdown().await.unwrap();

    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    let m = c
        .describe_key(pb::DescribeKeyRequest {
            key_id: "alias/durable".into(),
            grant_tokens: vec![],
        })
        .await
        .reply()
        .key_metadata
        .unwrap();
    assert_eq!(m.key_id, key);
    assert_eq!(m.key_state, "Enabled");
    let d = c
        .decrypt(decrypt_request(&blob, &[("app", "x")]))
        .await
        .reply();
    assert_eq!(d.plaintext, b"kept across restarts");
    let d = c
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: dk.ciphertext_blob,
            ..Default::default()
        })
        .await
        .reply();
    assert_eq!(d.plaintext, dk.plaintext);
    let tags = list_tags(&mut c, &key).await;
    assert_eq!(tags.len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_destroys_the_hsm_object_after_the_window() {
    let (dir, clock, server, mut c) = start_admin_clocked("sweeper", start_swept_by_hand).await;
    let key = create_key(&mut c).await;
    let survivor = create_key(&mut c).await;
    create_alias(&mut c, "alias/doomed", &key).await;
    let blob = c
        .encrypt(encrypt_request(&key, b"soon unreadable"))
        .await
        .reply()
        .ciphertext_blob;
    let object = ObjectId::new(*uuid::Uuid::parse_str(&key).unwrap().as_bytes(), 1);
    let hsm = server.kms.hsm().clone();
    schedule_deletion(&mut c, &key, 7).await;

    // Six days on: a sweep leaves it alone.
    clock.advance_days(6);
    let done = server.kms.sweep_deletions().await.unwrap();
    assert!(
        done.is_empty(),
        "destroyed before the window ended: {done:?}"
    );
    assert!(
        hsm.exists(object).await.unwrap(),
        "destroyed before the window ended"
    );
    assert!(service_events(&dir, "DeleteKey", &key).is_empty());
    let m = describe_key(&mut c, &key).await;
    assert_eq!(m.key_state, "PendingDeletion");

    // Past the window: HSM object destroyed, metadata and aliases gone.
    clock.advance_days(2);
    // The trail breaks before the destruction is recorded: nothing is destroyed.
    server.audit.fail_after_authorization();
    let done = server.kms.sweep_deletions().await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        done[0].error.as_ref().map(|e| e.0),
        Some("DependencyTimeoutException"),
        "{done:?}"
    );
    assert!(hsm.exists(object).await.unwrap(), "destroyed unaudited");
    assert!(wait_for(async || server.audit.healthy()).await);
    // Then the next sweep does it, after a durable intent record.
    let done = server.kms.sweep_deletions().await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].key_id, key);
    assert!(done[0].succeeded(), "{done:?}");
    // The destruction is in the audit trail, as CloudTrail logs it: a service event.
    let events = service_events(&dir, "DeleteKey", &key);
    assert_eq!(events.len(), 1, "one DeleteKey service event: {events:?}");
    assert_service_success(&events[0]);
    let intent = common::events(&dir)
        .into_iter()
        .find(|e| e["eventName"] == "DeleteKey" && e["phase"] == "intent")
        .expect("an intent record before the destruction");
    assert!(intent["sequence"].as_u64() < events[0]["sequence"].as_u64());
    let r = try_describe(&mut c, &key).await;
    assert_eq!(reason(r), "NotFoundException");
    assert!(
        !hsm.exists(object).await.unwrap(),
        "HSM object still on the token"
    );
    let r = c.decrypt(decrypt_request(&blob, &[])).await;
    assert_eq!(reason(r), "NotFoundException");
    let aliases = list_alias_entries(&mut c, None).await;
    // Only the predefined alias/aws/<service> names remain, with no key (AWS lists them).
    assert!(
        aliases.iter().all(|a| a.target_key_id.is_empty()),
        "{aliases:?}"
    );
    // The other key is untouched.
    c.encrypt(encrypt_request(&survivor, b"x")).await.unwrap();
    drop(c);
    server.shutdown().await.unwrap();

    // The answer is the same after a restart (tombstones are persisted).
    let server = start_with(&dir, clock).await;
    let mut c = admin(server.addr).await;
    let r = c.decrypt(decrypt_request(&blob, &[])).await;
    assert_eq!(reason(r), "NotFoundException");
    server.shutdown().await.unwrap();
}

fn cli(args: &[&str], conn: &[String], stdin: Option<&Path>) -> (bool, String, String) {
    let mut cmd = p11kms_command();
    cmd.args(args).args(conn);
    if let Some(p) = stdin {
        cmd.stdin(std::fs::File::open(p).unwrap());
    }
    let out = cmd.output().expect("run p11kms");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tour_create_encrypt_decrypt_data_key() {
    let dir = data_dir("cli");
    let server = start(&dir).await;
    let conn = cli_connection(server.addr.port(), "admin");
    let work = dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (ok, out, err) = cli(&["key", "create", "--description", "cli key"], &conn, None);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        assert_eq!(v["KeyMetadata"]["KeyState"], "Enabled");

        let (ok, _, err) = cli(&["alias", "create", "alias/cli", &key], &conn, None);
        assert!(ok, "{err}");
        let plain = work.join("plain.txt");
        std::fs::write(&plain, b"hello from the CLI").unwrap();
        let sealed = work.join("sealed.bin");
        let (ok, _, err) = cli(
            &[
                "encrypt",
                "--key",
                "alias/cli",
                "--in",
                plain.to_str().unwrap(),
                "--context",
                "app=cli",
                "--out",
                sealed.to_str().unwrap(),
            ],
            &conn,
            None,
        );
        assert!(ok, "{err}");
        let opened = work.join("opened.txt");
        let (ok, _, err) = cli(
            &[
                "decrypt",
                "--in",
                "-",
                "--context",
                "app=cli",
                "--out",
                opened.to_str().unwrap(),
            ],
            &conn,
            Some(&sealed),
        );
        assert!(ok, "{err}");
        assert_eq!(std::fs::read(&opened).unwrap(), b"hello from the CLI");
        // A wrong context fails with the AWS error name and a non-zero exit.
        let (ok, _, err) = cli(
            &[
                "decrypt",
                "--in",
                sealed.to_str().unwrap(),
                "--context",
                "app=other",
            ],
            &conn,
            None,
        );
        assert!(!ok);
        assert!(err.contains("InvalidCiphertextException"), "{err}");

        let (ok, out, err) = cli(&["generate-data-key", "--key", &key], &conn, None);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let pt = b64.decode(v["Plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(pt.len(), 32);
        let (ok, out, err) = cli(
            &["decrypt", "--b64", v["CiphertextBlob"].as_str().unwrap()],
            &conn,
            None,
        );
        assert!(ok, "{err}");
        assert_eq!(b64.decode(out.trim()).unwrap(), pt);

        let (ok, out, _) = cli(&["key", "list"], &conn, None);
        assert!(ok && out.contains(&key));
        let (ok, out, _) = cli(&["alias", "list"], &conn, None);
        assert!(ok && out.contains("alias/cli"));
        let (ok, _, err) = cli(&["key", "disable", &key], &conn, None);
        assert!(ok, "{err}");
        let (ok, out, _) = cli(&["key", "describe", &key], &conn, None);
        assert!(ok && out.contains("\"Disabled\""), "{out}");
        let (ok, out, err) = cli(
            &["key", "schedule-deletion", &key, "--days", "7"],
            &conn,
            None,
        );
        assert!(ok && out.contains("PendingDeletion"), "{err}");
        let (ok, _, err) = cli(&["key", "cancel-deletion", &key], &conn, None);
        assert!(ok, "{err}");
        let (ok, _, err) = cli(&["key", "enable", &key], &conn, None);
        assert!(ok, "{err}");
        // Without a client certificate the CLI is refused.
        let no_cert: Vec<String> = conn[..2].to_vec();
        let (ok, _, err) = cli(&["key", "list"], &no_cert, None);
        assert!(!ok);
        assert!(err.contains("MissingAuthenticationTokenException"), "{err}");
    })
    .await;
    server.shutdown().await.unwrap();
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sigv4_profiles_and_sts() {
    let dir = data_dir("cli-sigv4");
    let server = start(&dir).await;
    let pki = env().pki.clone();
    // A client config with two access-key profiles; secrets live in files, never on argv.
    let bob = fixture_credentials("AKIABOB0000000000001");
    let admin = fixture_credentials("AKIAADMIN00000000001");
    std::fs::write(dir.join("bob-secret"), bob.secret_access_key.as_bytes()).unwrap();
    std::fs::write(dir.join("admin-secret"), admin.secret_access_key.as_bytes()).unwrap();
    let client_toml = dir.join("client.toml");
    std::fs::write(
        &client_toml,
        format!(
            "endpoint = \"https://127.0.0.1:{port}\"\nca_cert = \"{ca}\"\ntls_domain = \"localhost\"\n\n[profiles.admin]\naccess_key_id = \"AKIAADMIN00000000001\"\nsecret_access_key_file = \"admin-secret\"\n\n[profiles.bob]\naccess_key_id = \"AKIABOB0000000000001\"\nsecret_access_key_file = \"bob-secret\"\n",
            port = server.addr.port(),
            ca = pki.join("ca.pem").display()
        ),
    )
    .unwrap();
    let conn = vec![format!("--client-config={}", client_toml.display())];
    let result = tokio::task::spawn_blocking(move || {
        let with = |p: &str| {
            let mut v = conn.clone();
            v.push(format!("--profile={p}"));
            v
        };
        let (ok, out, err) = cli(&["sts", "get-caller-identity"], &with("admin"), None);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Arn"], format!("arn:aws:iam::{ACCOUNT}:user/admin"));
        // The admin (kms:* by identity policy, default key policy) can create and use a key.
        let (ok, out, err) = cli(&["key", "create"], &with("admin"), None);
        assert!(ok, "{err}");
        let key: serde_json::Value = serde_json::from_str(&out).unwrap();
        let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        // bob has no KMS permissions: AccessDeniedException, with a non-zero exit.
        let (ok, _, err) = cli(&["key", "describe", &key_id], &with("bob"), None);
        assert!(!ok);
        assert!(err.contains("AccessDeniedException"), "{err}");
        // bob may assume Engineering; the printed credentials work as the session.
        let (ok, out, err) = cli(
            &[
                "sts",
                "assume-role",
                "--role-arn",
                &format!("arn:aws:iam::{ACCOUNT}:role/Engineering"),
                "--role-session-name",
                "cli-test",
            ],
            &with("bob"),
            None,
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let c = &v["Credentials"];
        assert!(c["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
        assert_eq!(
            v["AssumedRoleUser"]["Arn"],
            format!("arn:aws:sts::{ACCOUNT}:assumed-role/Engineering/cli-test")
        );
        let out = p11kms_command()
            .args(["sts", "get-caller-identity"])
            .args(&conn)
            .env("AWS_ACCESS_KEY_ID", c["AccessKeyId"].as_str().unwrap())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                c["SecretAccessKey"].as_str().unwrap(),
            )
            .env("AWS_SESSION_TOKEN", c["SessionToken"].as_str().unwrap())
            .output()
            .unwrap();
        assert_succeeded(&out, "p11kms sts get-caller-identity");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["Arn"],
            format!("arn:aws:sts::{ACCOUNT}:assumed-role/Engineering/cli-test")
        );
        // An unknown profile is a clear error.
        let (ok, _, err) = cli(&["sts", "get-caller-identity"], &with("nobody"), None);
        assert!(!ok && err.contains("no profile named"), "{err}");
    })
    .await;
    server.shutdown().await.unwrap();
    result.unwrap();
}

/// Closing the HSM waits for the device work in flight (the workers are joined). That wait
/// runs on a blocking thread: on a current-thread runtime, other tasks keep running meanwhile.
#[test]
fn closing_the_hsm_does_not_stall_the_runtime() {
    use p11kms::hsm::{PairSpec, PairUsage};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = data_dir("close-hsm");
        let server = start(&dir).await;
        let hsm = server.kms.hsm().clone();
        // Slow device work in flight: RSA-4096 key pairs (seconds on SoftHSM2).
        let mut jobs = Vec::new();
        for i in 0..3u8 {
            let hsm = hsm.clone();
            let id = ObjectId::new([0xc0 + i; 16], 1);
            jobs.push(tokio::spawn(async move {
                hsm.generate_key_pair(id, PairSpec::Rsa(4096), PairUsage::Decrypt)
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A task that ticks every 10 ms.
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = ticks.load(Ordering::SeqCst);
        let started = Instant::now();
        p11kms::server::close_hsm(&hsm).await;
        let took = started.elapsed();
        let during = ticks.load(Ordering::SeqCst) - before;
        ticker.abort();
        for j in jobs {
            let _ = j.await;
        }
        assert!(
            took >= Duration::from_millis(100),
            "the device work ended before the HSM was closed ({took:?}): nothing was shown"
        );
        assert!(
            during > 0,
            "no other task ran during the {took:?} the HSM took to close"
        );
        server.shutdown().await.ok();
    });
}
