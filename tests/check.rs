//! `p11kms check` against a real token: a clean store passes; an interrupted two-phase
//! creation within its grace period is reported (with and without its HSM object), does not
//! fail check, and nothing is deleted. This binary
//! has a token of its own, so no other test's objects appear as drift.

mod common;

use common::*;
use p11kms::core::InterruptCreate;
use p11kms::hsm::ObjectId;
use p11kms::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_interrupted_creation_and_deletes_nothing() {
    let dir = data_dir("check");
    let config_path = write_config(&dir);
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    let healthy = create_key(&mut c).await;
    drop(c);
    server.shutdown().await.unwrap();

    let (code, out) = run_check(&config_path).await;
    assert_eq!(code, 0, "clean check failed:\n{out}");
    assert!(
        out.contains("mechanism AES_GCM") && out.contains("check passed"),
        "{out}"
    );
    assert!(
        out.contains("store backend sqlite (server 3.")
            && out.contains("schema at migration 10, up to date"),
        "{out}"
    );

    // Interrupt two creations, one at each point between the phases.
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    for at in [
        InterruptCreate::AfterHsmObject,
        InterruptCreate::AfterMetadataRow,
    ] {
        server.kms.hooks().set_interrupt_create(at);
        let r = c.create_key(pb::CreateKeyRequest::default()).await;
        assert_eq!(reason(r), "KMSInternalException");
    }
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::Never);
    let objects_before = server.kms.hsm().list_objects().await.unwrap().len();
    drop(c);
    server.shutdown().await.unwrap();

    let (code, out) = run_check(&config_path).await;
    // Seconds old, within the grace period: reported, not drift (they may be in flight).
    assert_eq!(
        code, 0,
        "a creation within its grace period failed check:\n{out}"
    );
    assert_eq!(
        out.matches("within [kms] creating_grace_secs").count(),
        2,
        "{out}"
    );
    assert!(!out.contains("DRIFT"), "{out}");
    assert!(out.contains("HSM object present"), "{out}");
    assert!(out.contains("HSM object absent"), "{out}");

    // Nothing was deleted: the rows are still there in Creating and the object still on the
    // token; such keys are not listed and every request naming them gets NotFound.
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    assert_eq!(
        server.kms.hsm().list_objects().await.unwrap().len(),
        objects_before
    );
    let creating = creating_ids(&server).await;
    assert_eq!(creating.len(), 2);
    assert_eq!(
        list_key_ids(&mut c, None).await,
        std::slice::from_ref(&healthy)
    );
    for k in &creating {
        let r = try_describe(&mut c, k).await;
        assert_eq!(reason(r), "NotFoundException");
        let r = c.encrypt(encrypt_request(k, b"x")).await;
        assert_eq!(reason(r), "NotFoundException");
    }
    let healthy_obj = ObjectId::new(*uuid::Uuid::parse_str(&healthy).unwrap().as_bytes(), 1);
    assert!(server.kms.hsm().exists(healthy_obj).await.unwrap());
    server.shutdown().await.unwrap();

    // A config problem is reported and exits non-zero.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"nope\"\n").unwrap();
    let (code, out) = run_check(&bad).await;
    assert_ne!(code, 0);
    assert!(out.contains("invalid config"), "{out}");
}

/// `[[hsm.cluster]]` entries are probed without logging in: a cluster whose token is there
/// passes and is named with the device's identity; one whose token label is absent, or whose
/// module does not load, fails the check with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_each_cluster_without_logging_in() {
    let dir = data_dir("check-clusters");
    let config_path = write_config(&dir);
    let module = p11kms::devsetup::find_softhsm_module().unwrap();
    let store = common::stores::cluster("check", "cks", &module, true);
    let store_token = store.token.as_str();
    let anchor = env().pki.join("ca.pem");
    let cluster = |id: &str, module: &std::path::Path, token: &str| {
        format!(
            "\n[[hsm.cluster]]\nid = \"{id}\"\nmodule = \"{}\"\ntoken_label = \"{token}\"\ntrust_anchor_file = \"{}\"\n",
            module.display(),
            anchor.display()
        )
    };
    let base = std::fs::read_to_string(&config_path).unwrap();
    let write = |entries: &[String]| {
        std::fs::write(&config_path, format!("{base}{}", entries.concat())).unwrap();
    };

    write(&[cluster("cluster-storeabcdef", &module, store_token)]);
    let (code, out) = run_check(&config_path).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "cluster cluster-storeabcdef: token '{store_token}' found (SoftHSM"
        )) && out.contains("not logged in")
            && out.contains("check passed"),
        "{out}"
    );

    let missing_module = dir.join("no-such-module.so");
    write(&[
        cluster("cluster-storeabcdef", &module, store_token),
        cluster("cluster-absentabcde", &module, "p11kms-no-such-token"),
        cluster("cluster-nomoduleabc", &missing_module, "p11kms-any"),
    ]);
    let (code, out) = run_check(&config_path).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cluster cluster-storeabcdef: token"), "{out}");
    assert!(
        out.contains("cluster cluster-absentabcde: token 'p11kms-no-such-token' FAILED")
            && out.contains("no token with this label"),
        "{out}"
    );
    assert!(
        out.contains("cluster cluster-nomoduleabc: token 'p11kms-any' FAILED")
            && out.contains("no-such-module.so"),
        "{out}"
    );
    assert!(out.contains("check FAILED"), "{out}");
}
