//! Rotation (issue 7, item 4) against the real daemon, a real SoftHSM2 token and the gRPC
//! client: on-demand and automatic rotation (ManualClock), every version still decrypts, new
//! ciphertexts name the newest version, one non-extractable object per version, ReEncrypt to
//! the newest version, limits, and recovery of an interrupted rotation.

mod common;

use common::*;
use p11kms::core::{Clock, InterruptCreate};
use p11kms::hsm::ObjectId;
use p11kms::pb;
use p11kms::server::RunningServer;

/// The key version a v1 blob names (u32 BE at offset 17).
fn blob_version(blob: &[u8]) -> u32 {
    u32::from_be_bytes(blob[17..21].try_into().unwrap())
}

fn key_uuid(key: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(key).unwrap().as_bytes()
}

async fn encrypt(c: &mut Client, key: &str, pt: &[u8]) -> Vec<u8> {
    encrypt_with(c, key, pt, &[("app", "rotation")])
        .await
        .expect("encrypt")
}

async fn decrypt(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    decrypt_with(c, blob, &[("app", "rotation")]).await
}

async fn status(c: &mut Client, key: &str) -> pb::GetKeyRotationStatusResponse {
    c.get_key_rotation_status(pb::GetKeyRotationStatusRequest { key_id: key.into() })
        .await
        .reply()
}

/// Versions of `key` that have a token object (not the session copies using a version makes).
async fn objects_of(server: &p11kms::server::RunningServer, key: &str) -> Vec<u32> {
    let mut v: Vec<u32> = key_objects(server, key)
        .await
        .into_iter()
        .filter(|(_, token)| *token)
        .map(|(version, _)| version)
        .collect();
    v.sort_unstable();
    v
}

/// No interrupted rotation and no missing object (other tests of this binary share the token,
/// so their objects show up as orphans here and `is_clean` is not the right question).
async fn assert_settled(server: &p11kms::server::RunningServer) {
    let drift = server.kms.reconcile().await.unwrap();
    assert!(drift.interrupted_rotations.is_empty(), "{drift:?}");
    assert!(drift.missing_objects.is_empty(), "{drift:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_and_automatic_rotation_keep_every_version_decrypting() {
    let (dir, clock, server, mut c) = start_admin_clocked("rotation", start_swept_by_hand).await;
    let key = create_key(&mut c).await;
    let hsm = server.kms.hsm().clone();

    let mut blobs = vec![encrypt(&mut c, &key, b"version one").await];
    assert_eq!(blob_version(&blobs[0]), 1);

    // Two on-demand rotations.
    for v in 2..=3u32 {
        let arn = rotate_on_demand(&mut c, &key).await.unwrap();
        assert!(arn.ends_with(&key));
        let b = encrypt(&mut c, &key, format!("version {v}").as_bytes()).await;
        assert_eq!(
            blob_version(&b),
            v,
            "new ciphertexts name the newest version"
        );
        blobs.push(b);
    }
    let st = status(&mut c, &key).await;
    assert!(!st.key_rotation_enabled);
    assert!(st.next_rotation_date.is_none());

    // Automatic rotation: enable with 90 days; nothing happens before the date.
    try_enable_rotation(&mut c, &key, Some(90)).await.unwrap();
    let st = status(&mut c, &key).await;
    assert!(st.key_rotation_enabled);
    assert_eq!(st.rotation_period_in_days, Some(90));
    let next = st.next_rotation_date.unwrap();
    assert_eq!(
        next.seconds,
        (clock.now_ms() + 90 * 86_400_000).div_euclid(1000)
    );
    clock.advance_days(89);
    let done = server.kms.sweep_rotations().await.unwrap();
    assert!(done.is_empty(), "rotated before the date: {done:?}");
    assert_eq!(objects_of(&server, &key).await, vec![1, 2, 3]);
    assert!(service_events(&dir, "RotateKey", &key).is_empty());

    // Past the date: the sweep rotates to version 4, and the schedule moves on.
    clock.advance_days(2);
    let done = server.kms.sweep_rotations().await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].succeeded() && done[0].key_id == key, "{done:?}");
    assert_eq!(done[0].key_version, Some(4));
    assert_eq!(objects_of(&server, &key).await, vec![1, 2, 3, 4]);
    assert_eq!(
        blob_version(&encrypt(&mut c, &key, b"after automatic").await),
        4
    );
    // The automatic rotation is in the audit trail as a service event.
    let events = service_events(&dir, "RotateKey", &key);
    assert_eq!(events.len(), 1, "one RotateKey service event: {events:?}");
    assert_service_success(&events[0]);
    assert_eq!(events[0]["keyVersion"], 4);
    blobs.push(encrypt(&mut c, &key, b"version 4").await);
    let st = status(&mut c, &key).await;
    assert_eq!(
        st.next_rotation_date.unwrap().seconds,
        next.seconds + 90 * 86_400
    );

    // An on-demand rotation does not move the automatic schedule.
    rotate_on_demand(&mut c, &key).await.unwrap();
    blobs.push(encrypt(&mut c, &key, b"version 5").await);
    assert_eq!(
        status(&mut c, &key)
            .await
            .next_rotation_date
            .unwrap()
            .seconds,
        next.seconds + 90 * 86_400
    );

    // Every version still decrypts.
    for (i, b) in blobs.iter().enumerate() {
        let pt = decrypt(&mut c, b).await.unwrap();
        let expected_version = (i + 1) as u32;
        assert_eq!(blob_version(b), expected_version);
        assert_eq!(
            pt,
            format!("version {}", i + 1)
                .replace("version 1", "version one")
                .as_bytes()
        );
    }

    // One object per version, each sensitive and never extractable.
    assert_eq!(objects_of(&server, &key).await, vec![1, 2, 3, 4, 5]);
    for v in 1..=5 {
        let a = hsm
            .key_attributes(ObjectId::new(key_uuid(&key), v))
            .await
            .unwrap();
        assert!(
            a.token && a.private && a.sensitive && !a.extractable,
            "v{v}: {a:?}"
        );
        assert!(
            a.encrypt && a.decrypt && !a.wrap && !a.unwrap,
            "v{v}: {a:?}"
        );
        assert_eq!(a.allowed_mechanisms, vec!["AES_GCM".to_string()]);
    }

    // ListKeyRotations: four rotations, in order, with their type; paging with Limit/Marker.
    let list = list_rotations_of(&mut c, &key).await;
    let types: Vec<&str> = list.iter().map(|r| r.rotation_type.as_str()).collect();
    assert_eq!(types, ["ON_DEMAND", "ON_DEMAND", "AUTOMATIC", "ON_DEMAND"]);
    assert!(list.iter().all(|r| r.key_material_id.len() == 64));
    let page1 = c
        .list_key_rotations(pb::ListKeyRotationsRequest {
            key_id: key.clone(),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .reply();
    assert_eq!(page1.rotations.len(), 3);
    assert!(page1.truncated);
    let page2 = c
        .list_key_rotations(pb::ListKeyRotationsRequest {
            key_id: key.clone(),
            limit: Some(3),
            marker: page1.next_marker.clone(),
            ..Default::default()
        })
        .await
        .reply();
    assert_eq!(page2.rotations.len(), 1);
    assert!(!page2.truncated);
    assert_eq!(page2.rotations[0].key_material_id, list[3].key_material_id);
    // Only the newest material is CURRENT; nothing is imported.
    let states: Vec<&str> = list.iter().map(|r| r.key_material_state.as_str()).collect();
    assert_eq!(
        states,
        ["NON_CURRENT", "NON_CURRENT", "NON_CURRENT", "CURRENT"]
    );
    assert!(list
        .iter()
        .all(|r| r.import_state.is_empty() && r.rotation_date.is_some()));
    // ALL_KEY_MATERIAL adds the original material first (no rotation date or type), and pages
    // by version.
    let all = |limit: Option<i32>, marker: String| pb::ListKeyRotationsRequest {
        key_id: key.clone(),
        limit,
        marker,
        include_key_material: "ALL_KEY_MATERIAL".into(),
    };
    let every = c
        .list_key_rotations(all(None, String::new()))
        .await
        .reply()
        .rotations;
    assert_eq!(every.len(), 5);
    assert!(every[0].rotation_date.is_none() && every[0].rotation_type.is_empty());
    assert_eq!(every[0].key_material_state, "NON_CURRENT");
    assert_eq!(every[1..], list[..]);
    let first = c
        .list_key_rotations(all(Some(2), String::new()))
        .await
        .reply();
    let rest = c
        .list_key_rotations(all(Some(10), first.next_marker.clone()))
        .await
        .reply();
    assert_eq!([first.rotations, rest.rotations].concat(), every);
    assert_eq!(
        reason(
            c.list_key_rotations(pb::ListKeyRotationsRequest {
                key_id: key.clone(),
                include_key_material: "EVERYTHING".into(),
                ..Default::default()
            })
            .await
        ),
        "ValidationException"
    );

    // ReEncrypt moves a version-1 blob to the newest version.
    let moved = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blobs[0].clone(),
            source_encryption_context: ctx(&[("app", "rotation")]),
            destination_key_id: key.clone(),
            destination_encryption_context: ctx(&[("app", "rotation")]),
            ..Default::default()
        })
        .await
        .reply()
        .ciphertext_blob;
    assert_eq!(blob_version(&moved), 5);
    assert_eq!(decrypt(&mut c, &moved).await.unwrap(), b"version one");

    // The versions survive a restart (the store knows them, the token holds them).
    drop(c);
    server.shutdown().await.unwrap();
    let server = start_swept_by_hand(&dir, clock.clone()).await;
    let mut c = admin(server.addr).await;
    for b in &blobs {
        decrypt(&mut c, b).await.unwrap();
    }
    assert_eq!(blob_version(&encrypt(&mut c, &key, b"x").await), 5);

    // DisableKeyRotation stops the schedule; the status says so.
    c.disable_key_rotation(pb::DisableKeyRotationRequest {
        key_id: key.clone(),
    })
    .await
    .unwrap();
    let st = status(&mut c, &key).await;
    assert!(!st.key_rotation_enabled && st.next_rotation_date.is_none());
    clock.advance_days(400);
    let done = server.kms.sweep_rotations().await.unwrap();
    assert!(done.is_empty(), "rotated with rotation disabled: {done:?}");
    assert_eq!(objects_of(&server, &key).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(service_events(&dir, "RotateKey", &key).len(), 1);

    // Deleting the key destroys every version on the token.
    schedule_deletion(&mut c, &key, 7).await;
    // GetKeyRotationStatus still answers in PendingDeletion.
    assert!(!status(&mut c, &key).await.key_rotation_enabled);
    clock.advance_days(8);
    let done = server.kms.sweep_deletions().await.unwrap();
    assert!(done.len() == 1 && done[0].succeeded(), "{done:?}");
    assert!(
        objects_of(&server, &key).await.is_empty(),
        "the sweeper left versions of a deleted key on the token"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_bad_inputs() {
    let (_dir, clock, server, mut c) = start_admin_clocked("rotation-limits", start_with).await;
    let key = create_key(&mut c).await;

    // Bad periods: ValidationException, nothing changes.
    for days in [89, 2561, 0, -1] {
        let r = try_enable_rotation(&mut c, &key, Some(days)).await;
        assert_eq!(reason(r), "ValidationException", "{days}");
    }
    assert!(!status(&mut c, &key).await.key_rotation_enabled);

    // Default period 365; a new period moves the next date from the same anchor.
    try_enable_rotation(&mut c, &key, None).await.unwrap();
    let st = status(&mut c, &key).await;
    assert_eq!(st.rotation_period_in_days, Some(365));
    let first = st.next_rotation_date.unwrap().seconds;
    try_enable_rotation(&mut c, &key, Some(2560)).await.unwrap();
    let st = status(&mut c, &key).await;
    assert_eq!(st.rotation_period_in_days, Some(2560));
    assert_eq!(
        st.next_rotation_date.unwrap().seconds,
        first + (2560 - 365) * 86_400
    );

    // 25 on-demand rotations, then LimitExceededException with no new version.
    for _ in 0..25 {
        rotate_on_demand(&mut c, &key).await.unwrap();
    }
    assert_eq!(
        reason(rotate_on_demand(&mut c, &key).await),
        "LimitExceededException"
    );
    assert_eq!(objects_of(&server, &key).await.len(), 26);
    assert_eq!(blob_version(&encrypt(&mut c, &key, b"x").await), 26);
    assert_eq!(list_rotations_of(&mut c, &key).await.len(), 25);

    // An automatic rotation due within 20 minutes: ConflictException, nothing created.
    let soon = create_key(&mut c).await;
    try_enable_rotation(&mut c, &soon, Some(90)).await.unwrap();
    clock.advance_ms(90 * 86_400_000 - 10 * 60_000);
    assert_eq!(
        reason(rotate_on_demand(&mut c, &soon).await),
        "ConflictException"
    );
    assert_eq!(objects_of(&server, &soon).await, vec![1]);

    // Disabled key: DisabledException (GetKeyRotationStatus still answers).
    let other = create_key(&mut c).await;
    disable_key(&mut c, &other).await;
    assert_eq!(
        reason(rotate_on_demand(&mut c, &other).await),
        "DisabledException"
    );
    let r = try_enable_rotation(&mut c, &other, None).await;
    assert_eq!(reason(r), "DisabledException");
    assert!(!status(&mut c, &other).await.key_rotation_enabled);

    // A key with imported material: UnsupportedOperationException.
    let external = create_external_key(&mut c).await;
    let r = c
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: external.clone(),
        })
        .await;
    assert_eq!(reason(r), "KMSInvalidStateException"); // PendingImport
                                                       // Unknown key, and an alias where a key id is required: NotFoundException.
    assert_eq!(
        reason(rotate_on_demand(&mut c, "00000000-0000-0000-0000-000000000000").await),
        "NotFoundException"
    );

    // A caller without kms:RotateKeyOnDemand is denied before any HSM call.
    let mut user = client_as(server.addr, Some("user1")).await;
    let before = server.kms.hsm().counters().get("C_GenerateKey").copied();
    assert_eq!(
        reason(rotate_on_demand(&mut user, &key).await),
        "AccessDeniedException"
    );
    assert_eq!(
        server.kms.hsm().counters().get("C_GenerateKey").copied(),
        before
    );
    server.shutdown().await.unwrap();
}

/// A rotation of `key` interrupted at `at` fails with KMSInternalException; later ones run
/// uninterrupted again.
async fn rotate_interrupted(
    server: &RunningServer,
    c: &mut Client,
    key: &str,
    at: InterruptCreate,
) {
    server.kms.hooks().set_interrupt_rotation(at);
    let r = rotate_on_demand(c, key).await;
    server
        .kms
        .hooks()
        .set_interrupt_rotation(InterruptCreate::Never);
    assert_eq!(reason(r), "KMSInternalException");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_rotation_is_reported_and_completed_by_the_next_one() {
    let (_dir, server, mut c) = start_admin("rotation-crash").await;
    let key = create_key(&mut c).await;
    let old = encrypt(&mut c, &key, b"before the crash").await;

    // Stop after the version row: the key still encrypts under v1; check reports it.
    rotate_interrupted(&server, &mut c, &key, InterruptCreate::AfterMetadataRow).await;
    assert_eq!(blob_version(&encrypt(&mut c, &key, b"x").await), 1);
    let drift = server.kms.reconcile().await.unwrap();
    assert_eq!(drift.interrupted_rotations, vec![(key.clone(), 2, false)]);
    assert!(!drift.is_clean());
    assert!(drift.missing_objects.is_empty(), "{drift:?}");

    // The next rotation completes version 2 (creates the missing object).
    rotate_on_demand(&mut c, &key).await.unwrap();
    assert_eq!(blob_version(&encrypt(&mut c, &key, b"x").await), 2);
    assert_settled(&server).await;

    // Stop after the HSM object: reported with the object present; completed without a
    // second object.
    rotate_interrupted(&server, &mut c, &key, InterruptCreate::AfterHsmObject).await;
    let drift = server.kms.reconcile().await.unwrap();
    assert_eq!(drift.interrupted_rotations, vec![(key.clone(), 3, true)]);
    rotate_on_demand(&mut c, &key).await.unwrap();
    assert_eq!(objects_of(&server, &key).await, vec![1, 2, 3]);
    assert_eq!(blob_version(&encrypt(&mut c, &key, b"x").await), 3);
    assert_settled(&server).await;
    assert_eq!(decrypt(&mut c, &old).await.unwrap(), b"before the crash");
    server.shutdown().await.unwrap();
}
