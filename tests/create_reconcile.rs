//! A crash during CreateKey leaves no permanent drift (issue 14 item 3): a key left in
//! `Creating` is never listed or usable, and once older than `[kms] creating_grace_secs`
//! the daemon's reconciliation finishes it (HSM object present) or removes it (absent), with an
//! audit event either way; `p11kms check` fails until then and is clean after. Real daemon,
//! SoftHSM2 token, SQLite and `p11kms check` binary. This binary has a token of its own (check
//! would report other tests' objects as orphans), so it holds one test that runs in phases.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use p11kms::core::{InterruptCreate, ManualClock};
use p11kms::pb;
use p11kms::server::RunningServer;

/// The default `[kms] creating_grace_secs` (300 s), in milliseconds.
const GRACE_MS: i64 = 300_000;

/// A CreateKey (tagged) stopped at `at`, as a crash there would: the client gets no key id.
/// Returns the id of the key it left in `Creating`.
async fn interrupted_create(server: &RunningServer, c: &mut Client, at: InterruptCreate) -> String {
    let before = creating_ids(server).await;
    server.kms.hooks().set_interrupt_create(at);
    let r = c
        .create_key(pb::CreateKeyRequest {
            tags: vec![tag("team", "crash")],
            ..Default::default()
        })
        .await;
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::Never);
    assert_eq!(reason(r), "KMSInternalException");
    let mut left: Vec<String> = creating_ids(server)
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(left.len(), 1, "one key left in Creating: {left:?}");
    left.remove(0)
}

async fn listed(c: &mut Client) -> BTreeSet<String> {
    list_key_ids(c, None).await.into_iter().collect()
}

async fn encrypt(c: &mut Client, key_id: &str) -> Result<Vec<u8>, tonic::Status> {
    c.encrypt(encrypt_request(key_id, b"after the crash"))
        .await
        .map(|r| r.into_inner().ciphertext_blob)
}

/// The one intent record of service action `name` on `key_id`, written before its outcome.
fn assert_intent_first(
    dir: &std::path::Path,
    name: &str,
    key_id: &str,
    outcome: &serde_json::Value,
) {
    let intents: Vec<serde_json::Value> = events(dir)
        .into_iter()
        .filter(|e| {
            e["eventName"] == name
                && e["phase"] == "intent"
                && e["requestParameters"]["keyId"] == key_id
        })
        .collect();
    assert_eq!(
        intents.len(),
        1,
        "one {name} intent for {key_id}: {intents:?}"
    );
    assert!(intents[0]["sequence"].as_u64() < outcome["sequence"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_creations_are_finished_or_removed_after_the_grace_period() {
    let dir = data_dir("create-reconcile");
    let config_path = write_config(&dir);
    // The crash happened two grace periods ago (check runs on the system clock).
    let clock = Arc::new(ManualClock::default());
    clock.advance_ms(-2 * GRACE_MS);
    let server = start_swept_by_hand(&dir, clock.clone()).await;
    let mut c = admin(server.addr).await;
    let healthy = create_key(&mut c).await;
    let with_object = interrupted_create(&server, &mut c, InterruptCreate::AfterHsmObject).await;
    let without = interrupted_create(&server, &mut c, InterruptCreate::AfterMetadataRow).await;
    assert_eq!(listed(&mut c).await, BTreeSet::from([healthy.clone()]));
    drop(c);
    server.shutdown().await.unwrap();

    // Past the grace period, check fails and says what reconciliation will do.
    let (code, out) = run_check(&config_path).await;
    assert_eq!(code, 2, "check must fail on overdue creations:\n{out}");
    assert!(
        out.lines().any(|l| l.contains(&with_object)
            && l.contains("HSM object present")
            && l.contains("will finish it")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains(&without)
            && l.contains("HSM object absent")
            && l.contains("will remove it")),
        "{out}"
    );

    // Restarted (still before the grace period by the daemon's clock): the Creating keys are
    // not listed and cannot be used or even described.
    let server = start_swept_by_hand(&dir, clock.clone()).await;
    let mut c = admin(server.addr).await;
    assert_eq!(listed(&mut c).await, BTreeSet::from([healthy.clone()]));
    for k in [&with_object, &without] {
        assert_eq!(reason(try_describe(&mut c, k).await), "NotFoundException");
        assert_eq!(reason(encrypt(&mut c, k).await), "NotFoundException");
    }
    assert_eq!(creating_ids(&server).await.len(), 2, "resolved too early");

    // Past the grace period, one reconciliation resolves both.
    clock.advance_ms(2 * GRACE_MS);
    let done = server.kms.sweep_once().await;
    let names: BTreeSet<(String, &str)> = done
        .iter()
        .filter(|a| a.succeeded())
        .map(|a| (a.key_id.clone(), a.event_name.as_str()))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            (with_object.clone(), "CompleteCreateKey"),
            (without.clone(), "DeleteIncompleteKey"),
        ]),
        "{done:?}"
    );
    assert!(creating_ids(&server).await.is_empty());
    // The key with an HSM object is Enabled, listed, tagged and usable.
    let m = try_describe(&mut c, &with_object).await.unwrap();
    assert_eq!(m.key_state, "Enabled");
    let blob = encrypt(&mut c, &with_object).await.unwrap();
    let plain = c
        .decrypt(decrypt_request(&blob, &[]))
        .await
        .reply()
        .plaintext;
    assert_eq!(plain, b"after the crash");
    let tags = list_tags(&mut c, &with_object).await;
    assert_eq!(tags.len(), 1, "{tags:?}");
    // The key without one is gone: row, tags and all.
    assert_eq!(
        reason(try_describe(&mut c, &without).await),
        "NotFoundException"
    );
    assert!(server
        .kms
        .store()
        .get_key(&without)
        .await
        .unwrap()
        .is_none());
    assert!(key_objects(&server, &without).await.is_empty());
    assert_eq!(
        listed(&mut c).await,
        BTreeSet::from([healthy.clone(), with_object.clone()])
    );
    // Each repair is audited as a service event, after its intent record.
    for (name, key) in [
        ("CompleteCreateKey", &with_object),
        ("DeleteIncompleteKey", &without),
    ] {
        let ev = service_events(&dir, name, key);
        assert_eq!(ev.len(), 1, "one {name} event for {key}: {ev:?}");
        assert_service_success(&ev[0]);
        assert_intent_first(&dir, name, key, &ev[0]);
    }
    // Done once: the next sweep has nothing to do.
    assert!(server.kms.sweep_once().await.is_empty());
    drop(c);
    server.shutdown().await.unwrap();

    let (code, out) = run_check(&config_path).await;
    assert_eq!(code, 0, "check after reconciliation:\n{out}");
    assert!(
        out.contains("check passed") && !out.contains("DRIFT"),
        "{out}"
    );

    // At start-up too: a creation interrupted after its HSM object, and a restart past the
    // grace period, is finished by the sweep the daemon runs as it starts.
    let server = start_swept_by_hand(&dir, clock.clone()).await;
    let mut c = admin(server.addr).await;
    let late = interrupted_create(&server, &mut c, InterruptCreate::AfterHsmObject).await;
    drop(c);
    server.shutdown().await.unwrap();
    clock.advance_ms(2 * GRACE_MS);
    let server = start_swept_by_hand(&dir, clock.clone()).await;
    let mut c = admin(server.addr).await;
    assert!(
        wait_for(async || try_describe(&mut c, &late)
            .await
            .is_ok_and(|m| m.key_state == "Enabled"))
        .await,
        "not finished at start-up"
    );
    assert_eq!(service_events(&dir, "CompleteCreateKey", &late).len(), 1);
    encrypt(&mut c, &late).await.unwrap();
    drop(c);
    server.shutdown().await.unwrap();
}
