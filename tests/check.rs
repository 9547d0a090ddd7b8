//! `p11kms check` against a real token: a clean store passes; an interrupted two-phase
//! creation is reported (with and without its HSM object) and nothing is deleted. This binary
//! has a token of its own, so no other test's objects appear as drift.

mod common;

use common::*;
use p11kms::core::InterruptCreate;
use p11kms::hsm::ObjectId;
use p11kms::pb;

fn run_check(config: &std::path::Path) -> (i32, String) {
    let out = p11kms_command()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run p11kms check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_interrupted_creation_and_deletes_nothing() {
    let dir = data_dir("check");
    let config_path = write_config(&dir);
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    let healthy = create_key(&mut c).await;
    drop(c);
    server.shutdown().await.unwrap();

    let cfg = config_path.clone();
    let (code, out) = tokio::task::spawn_blocking(move || run_check(&cfg))
        .await
        .unwrap();
    assert_eq!(code, 0, "clean check failed:\n{out}");
    assert!(
        out.contains("mechanism AES_GCM") && out.contains("check passed"),
        "{out}"
    );

    // Interrupt two creations, one at each point between the phases.
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::AfterHsmObject);
    let r = c.create_key(pb::CreateKeyRequest::default()).await;
    assert_eq!(reason(r), "KMSInternalException");
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::AfterMetadataRow);
    let r = c.create_key(pb::CreateKeyRequest::default()).await;
    assert_eq!(reason(r), "KMSInternalException");
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::Never);
    let objects_before = server.kms.hsm().list_objects().await.unwrap().len();
    drop(c);
    server.shutdown().await.unwrap();

    let cfg = config_path.clone();
    let (code, out) = tokio::task::spawn_blocking(move || run_check(&cfg))
        .await
        .unwrap();
    assert_eq!(code, 2, "check must fail on drift:\n{out}");
    assert_eq!(
        out.matches("DRIFT interrupted creation").count(),
        2,
        "{out}"
    );
    assert!(out.contains("HSM object present"), "{out}");
    assert!(out.contains("HSM object absent"), "{out}");
    assert!(out.contains("nothing was changed or deleted"), "{out}");

    // Nothing was deleted: the rows are still there in Creating, the object still on the token,
    // and such keys refuse use with the documented state error.
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    assert_eq!(
        server.kms.hsm().list_objects().await.unwrap().len(),
        objects_before
    );
    let keys = c
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 3);
    let mut creating = 0;
    for k in keys.iter().filter(|k| k.key_id != healthy) {
        let m = c
            .describe_key(pb::DescribeKeyRequest {
                key_id: k.key_id.clone(),
                grant_tokens: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap();
        assert_eq!(m.key_state, "Creating");
        creating += 1;
        let r = c
            .encrypt(pb::EncryptRequest {
                key_id: k.key_id.clone(),
                plaintext: b"x".to_vec(),
                ..Default::default()
            })
            .await;
        assert_eq!(reason(r), "KMSInvalidStateException");
    }
    assert_eq!(creating, 2);
    let healthy_obj = ObjectId::new(*uuid::Uuid::parse_str(&healthy).unwrap().as_bytes(), 1);
    assert!(server.kms.hsm().exists(healthy_obj).await.unwrap());
    server.shutdown().await.unwrap();

    // A config problem is reported and exits non-zero.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"nope\"\n").unwrap();
    let (code, out) = tokio::task::spawn_blocking(move || run_check(&bad))
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(out.contains("invalid config"), "{out}");
}
