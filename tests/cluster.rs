//! Several nodes (issue 17): real `p11kms serve` processes on one PostgreSQL database and one
//! SoftHSM2 token (tests/common/cluster.rs). A key made on one node works on the other; a
//! change on one node reaches the other (cache following), grant tokens and AssumeRole
//! sessions work on the other node at once (store lookups); concurrent changes of one key on
//! both nodes lose nothing; a node killed under load loses nothing and its duties move; a
//! restarted or stopped PostgreSQL; both nodes' audit trails verify together.
//!
//! A custom harness (`harness = false`): the one PostgreSQL server of this binary must be
//! stopped when it ends, which a `static` never is. Cases run one after the other (one
//! database each); arguments are substring filters on the case names.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::cluster::{audit_verify_all, open_db, start_nodes, within_10s, Node};
use common::postgres::PgServer;
use common::*;
use p11kms::pb;
use p11kms::store::{KeyState, MetadataStore};

type CaseFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
type Case = for<'a> fn(&'a mut PgServer) -> CaseFuture<'a>;

/// The `[kms]` section of every node unless a case needs another: background duties every
/// second (so that they are seen to move within a test).
const KMS_FAST: &str = "[kms]\ndeletion_sweep_interval_secs = 1\n";

/// The AWS exception name of a failed call, or "ok".
fn outcome<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => p11kms::api::grpc::status::aws_reason(&s)
            .unwrap_or_else(|| format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Encrypt of a fixed plaintext under `key` on `c`: its outcome.
async fn try_encrypt(c: &mut Client, key: &str, grant_tokens: &[String]) -> String {
    let r = c
        .encrypt(pb::EncryptRequest {
            grant_tokens: grant_tokens.to_vec(),
            ..encrypt_request(key, b"cluster")
        })
        .await;
    outcome(r)
}

/// Waits (bounded) until `c` (a client of a node) answers `key`'s Encrypt with `expected`
/// ("ok" or an exception name); fails with the last answer.
async fn until_encrypt_is(c: &mut Client, key: &str, expected: &str, what: &str) {
    let mut last = String::new();
    let ok = within_10s(async || {
        last = try_encrypt(c, key, &[]).await;
        last == expected
    })
    .await;
    assert!(ok, "{what}: Encrypt is still {last}, expected {expected}");
}

/// Waits (bounded) until `node` knows `key` (DescribeKey answers): it has followed its
/// creation on another node.
async fn until_known(node: &Node, key: &str) {
    let mut c = node.admin().await;
    let known = within_10s(async || try_describe(&mut c, key).await.is_ok()).await;
    assert!(known, "node {} never learned of key {key}", node.id);
}

// ---------------------------------------------------------------------------------------
// 1. A key made on one node works on the other.

fn a_key_made_on_one_node_works_on_the_other(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        let (mut a, mut b) = (nodes[0].admin().await, nodes[1].admin().await);
        let on_a = create_key(&mut a).await;
        let on_b = create_key(&mut b).await;
        until_known(&nodes[1], &on_a).await;
        until_known(&nodes[0], &on_b).await;
        for key in [&on_a, &on_b] {
            // Encrypt on one node, Decrypt on the other, both ways: each node finds the
            // other's key version on the token by CKA_ID.
            let blob = encrypt_with(&mut a, key, b"from a", &[]).await.unwrap();
            let plain = decrypt_with(&mut b, &blob, &[]).await;
            assert_eq!(
                plain.unwrap(),
                b"from a",
                "B decrypts A's ciphertext under {key}"
            );
            let blob = encrypt_with(&mut b, key, b"from b", &[]).await.unwrap();
            let plain = decrypt_with(&mut a, &blob, &[]).await;
            assert_eq!(
                plain.unwrap(),
                b"from b",
                "A decrypts B's ciphertext under {key}"
            );
        }
        // A rotation on A: B finds the new version too.
        rotate_on_demand(&mut a, &on_a).await.expect("rotate on A");
        let mut c = nodes[1].admin().await;
        let rotated = within_10s(async || list_rotations_of(&mut c, &on_a).await.len() == 1).await;
        assert!(rotated, "B never saw the rotation of {on_a}");
        let blob = encrypt_with(&mut b, &on_a, b"v2", &[]).await.unwrap();
        assert_eq!(decrypt_with(&mut a, &blob, &[]).await.unwrap(), b"v2");
    })
}

// ---------------------------------------------------------------------------------------
// 2. Changes on one node reach the other.

fn disable_and_policy_on_a_reach_b(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        let (mut a, mut b) = (nodes[0].admin().await, nodes[1].admin().await);
        let key = create_key(&mut a).await;
        until_known(&nodes[1], &key).await;
        assert_eq!(try_encrypt(&mut b, &key, &[]).await, "ok");

        disable_key(&mut a, &key).await;
        until_encrypt_is(&mut b, &key, "DisabledException", "DisableKey on A").await;
        try_enable_key(&mut a, &key).await.expect("enable on A");
        until_encrypt_is(&mut b, &key, "ok", "EnableKey on A").await;

        // A key policy that denies the admin Encrypt (and keeps everything else).
        let mut policy: serde_json::Value =
            serde_json::from_str(&key_policy(&mut a, &key).await).unwrap();
        policy["Statement"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "Sid": "NoEncryptForAdmin",
                "Effect": "Deny",
                "Principal": {"AWS": ADMIN},
                "Action": "kms:Encrypt",
                "Resource": "*"
            }));
        a.put_key_policy(pb::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy: policy.to_string(),
            ..Default::default()
        })
        .await
        .expect("PutKeyPolicy on A");
        until_encrypt_is(&mut b, &key, "AccessDeniedException", "PutKeyPolicy on A").await;
    })
}

fn grants_on_a_work_and_stop_on_b(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        let mut a = nodes[0].admin().await;
        let mut user1_b = nodes[1].client("user1").await;
        let key = create_key(&mut a).await;
        until_known(&nodes[1], &key).await;
        // user1 has no KMS permission of its own.
        assert_eq!(
            try_encrypt(&mut user1_b, &key, &[]).await,
            "AccessDeniedException"
        );

        let grant = a
            .create_grant(pb::CreateGrantRequest {
                key_id: key.clone(),
                grantee_principal: USER1.into(),
                operations: vec!["Encrypt".into(), "Decrypt".into()],
                ..Default::default()
            })
            .await
            .expect("CreateGrant on A")
            .into_inner();
        // The grant token works on B at once: B reads the unknown grant from the store.
        let token = std::slice::from_ref(&grant.grant_token);
        assert_eq!(try_encrypt(&mut user1_b, &key, token).await, "ok");

        a.revoke_grant(pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: grant.grant_id.clone(),
            ..Default::default()
        })
        .await
        .expect("RevokeGrant on A");
        until_encrypt_is(
            &mut user1_b,
            &key,
            "AccessDeniedException",
            "RevokeGrant on A",
        )
        .await;
        // Nor does the revoked grant's token open it again (it names no grant any more).
        assert_eq!(
            try_encrypt(&mut user1_b, &key, token).await,
            "InvalidGrantTokenException"
        );
    })
}

fn deletion_and_alias_changes_on_a_reach_b(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        let (mut a, mut b) = (nodes[0].admin().await, nodes[1].admin().await);
        let key = create_key(&mut a).await;
        create_alias(&mut a, "alias/cluster-one", &key).await;
        let resolved =
            within_10s(async || try_encrypt(&mut b, "alias/cluster-one", &[]).await == "ok").await;
        assert!(resolved, "B never resolved the alias made on A");

        a.delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/cluster-one".into(),
        })
        .await
        .expect("DeleteAlias on A");
        until_encrypt_is(
            &mut b,
            "alias/cluster-one",
            "NotFoundException",
            "DeleteAlias on A",
        )
        .await;

        schedule_deletion(&mut a, &key, 7).await;
        until_encrypt_is(
            &mut b,
            &key,
            "KMSInvalidStateException",
            "ScheduleKeyDeletion",
        )
        .await;
        let meta = describe_key(&mut b, &key).await;
        assert_eq!(meta.key_state, "PendingDeletion");
    })
}

// ---------------------------------------------------------------------------------------
// 3. An AssumeRole session from A works on B at once.

fn a_session_issued_by_a_works_on_b_at_once(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        let mut bob = nodes[0]
            .signed(fixture_credentials("AKIABOB0000000000001"))
            .await;
        let out = bob
            .sts
            .assume_role(bob.sts_req(
                pb::AssumeRoleRequest {
                    role_arn: "arn:aws:iam::111122223333:role/Engineering".into(),
                    role_session_name: "across-nodes".into(),
                    ..Default::default()
                },
                "AssumeRole",
            ))
            .await
            .unwrap_or_else(|e| panic!("bob assumes Engineering on A: {e}\n{}", nodes[0].log()))
            .into_inner();
        let c = out.credentials.expect("credentials");
        let creds = |token: &str| p11kms::client::AccessKeyCredentials {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: zeroize::Zeroizing::new(c.secret_access_key.clone()),
            session_token: Some(zeroize::Zeroizing::new(token.to_string())),
        };
        // On B, at once: B reads the session from the store.
        let mut on_b = nodes[1].signed(creds(&c.session_token)).await;
        let who = on_b
            .sts
            .get_caller_identity(on_b.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity"))
            .await
            .expect("the session authenticates on B")
            .into_inner();
        assert_eq!(
            who.arn,
            "arn:aws:sts::111122223333:assumed-role/Engineering/across-nodes"
        );
        // A wrong session token for the same access key is refused on B.
        let mut forged = nodes[1].signed(creds("not-the-token")).await;
        let r = forged
            .sts
            .get_caller_identity(
                forged.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity"),
            )
            .await;
        assert_ne!(outcome(r), "ok", "a forged session token must be refused");
    })
}

// ---------------------------------------------------------------------------------------
// 4. Both nodes change one key at once: no update lost.

/// Tasks per node and rounds per task of the concurrent changes.
const TASKS: usize = 4;
const ROUNDS: usize = 3;

/// One task's changes of `key` on `node`: a tag, a description, a policy and a rotation
/// switch per round, each of which must succeed; returns the descriptions and policies
/// written.
async fn change_key(node: &Node, key: String, task: usize) -> (Vec<String>, Vec<String>) {
    let mut c = node.admin().await;
    let base: serde_json::Value = serde_json::from_str(&key_policy(&mut c, &key).await).unwrap();
    let (mut descriptions, mut policies) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let name = format!("{}-{task}-{round}", node.id);
        tag_key(&mut c, &key, &name, "v").await;
        c.update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: key.clone(),
            description: name.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("UpdateKeyDescription {name}: {s:?}"));
        descriptions.push(name.clone());
        let mut policy = base.clone();
        policy["Statement"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "Sid": name.replace('-', ""),
                "Effect": "Allow",
                "Principal": {"AWS": USER1},
                "Action": "kms:DescribeKey",
                "Resource": "*"
            }));
        c.put_key_policy(pb::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy: policy.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("PutKeyPolicy {name}: {s:?}"));
        policies.push(policy.to_string());
        let r = match (task + round) % 2 {
            0 => outcome(try_enable_rotation(&mut c, &key, None).await),
            _ => outcome(try_disable_rotation(&mut c, &key).await),
        };
        assert_eq!(r, "ok", "rotation switch {name}");
    }
    (descriptions, policies)
}

/// What `node` says of `key`: its tag keys, description, policy and rotation switch.
async fn view(node: &Node, key: &str) -> (BTreeSet<String>, String, String, bool) {
    let mut c = node.admin().await;
    let tags = list_tags(&mut c, key).await;
    let rotation = c
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest { key_id: key.into() })
        .await
        .expect("rotation status")
        .into_inner()
        .key_rotation_enabled;
    (
        tags.into_iter().map(|t| t.tag_key).collect(),
        describe_key(&mut c, key).await.description,
        key_policy(&mut c, key).await,
        rotation,
    )
}

fn concurrent_changes_on_both_nodes_lose_nothing(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = Arc::new(start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await);
        let key = create_key(&mut nodes[0].admin().await).await;
        until_known(&nodes[1], &key).await;
        let mut tasks = Vec::new();
        for n in 0..2 {
            for task in 0..TASKS {
                let (nodes, key) = (nodes.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    change_key(&nodes[n], key, task).await
                }));
            }
        }
        let (mut descriptions, mut policies) = (BTreeSet::new(), BTreeSet::new());
        for t in tasks {
            let (d, p) = t.await.expect("a change task failed");
            descriptions.extend(d);
            policies.extend(p);
        }
        let all_tags: BTreeSet<String> = nodes
            .iter()
            .flat_map(|n| (0..TASKS).flat_map(move |t| (0..ROUNDS).map(move |r| (t, r, n))))
            .map(|(t, r, n)| format!("{}-{t}-{r}", n.id))
            .collect();

        // The database's final state.
        let store = open_db(pg, &db).await;
        let row = store.get_key(&key).await.unwrap().expect("the key row");
        let rotation = store
            .get_lifecycle(&key)
            .await
            .unwrap()
            .is_some_and(|l| l.rotation_enabled);
        let stored_tags: BTreeSet<String> = row.tags.iter().map(|t| t.key.clone()).collect();
        assert_eq!(stored_tags, all_tags, "tags in the database");
        assert!(
            descriptions.contains(&row.key.description),
            "{}",
            row.key.description
        );
        let stored_policy: serde_json::Value = serde_json::from_str(&row.key.policy).unwrap();
        assert!(
            policies
                .iter()
                .any(|p| serde_json::from_str::<serde_json::Value>(p).unwrap() == stored_policy),
            "the stored policy is none of those written: {}",
            row.key.policy
        );
        // Both nodes converge on it.
        for node in nodes.iter() {
            let mut last = None;
            let same = within_10s(async || {
                let v = view(node, &key).await;
                let policy: serde_json::Value = serde_json::from_str(&v.2).unwrap();
                let ok = v.0 == all_tags
                    && v.1 == row.key.description
                    && policy == stored_policy
                    && v.3 == rotation;
                last = Some(v);
                ok
            })
            .await;
            assert!(same, "node {} differs from the database: {last:?}", node.id);
        }
    })
}

// ---------------------------------------------------------------------------------------
// 5. kill -9 of node A under load on both nodes.

/// Client tasks per node of the load.
const LOAD_CLIENTS: usize = 3;

/// What clients received an answer for.
#[derive(Default)]
struct Received {
    /// (key id, plaintext, ciphertext blob)
    ciphertexts: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Key ids that CreateKey returned.
    keys: Vec<String>,
}

impl Received {
    fn answers(&self) -> usize {
        self.ciphertexts.len() + self.keys.len()
    }
}

/// One client task on the node at `addr`: Encrypt under `key` twice, then a CreateKey, until
/// the node stops answering or `stop` is set; records every answer.
async fn load(
    addr: std::net::SocketAddr,
    key: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    got: Arc<Mutex<Received>>,
) {
    let mut c = admin(addr).await;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        if n.is_multiple_of(3) {
            let Ok(r) = c.create_key(pb::CreateKeyRequest::default()).await else {
                return;
            };
            let id = r.into_inner().key_metadata.expect("metadata").key_id;
            got.lock().unwrap().keys.push(id);
        } else {
            let plaintext = uuid::Uuid::new_v4().as_bytes().to_vec();
            let Ok(r) = c.encrypt(encrypt_request(&key, &plaintext)).await else {
                return;
            };
            let blob = r.into_inner().ciphertext_blob;
            got.lock()
                .unwrap()
                .ciphertexts
                .push((key.clone(), plaintext, blob));
        }
    }
}

/// Starts [`LOAD_CLIENTS`] load tasks on `node`, recording into `got`.
fn start_load(
    node: &Node,
    key: &str,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    got: &Arc<Mutex<Received>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..LOAD_CLIENTS)
        .map(|_| tokio::spawn(load(node.addr, key.to_string(), stop.clone(), got.clone())))
        .collect()
}

/// Waits (bounded) until `got` holds at least `n` answers.
async fn until_answers(got: &Arc<Mutex<Received>>, n: usize, what: &str) {
    let ok = within_10s(async || got.lock().unwrap().answers() >= n).await;
    assert!(ok, "{what}: fewer than {n} answers");
}

/// The message that says a node took the lead of the background duties (core::lead).
const LEADS: &str = "this node runs the background duties now";

/// The ids of the keys the database holds in `Creating`.
async fn creating_in_db(store: &p11kms::store::SqlStore) -> BTreeSet<String> {
    store
        .load_all()
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.key.state == KeyState::Creating)
        .map(|b| b.key.key_id)
        .collect()
}

/// Every ciphertext in `got` decrypts on `node` and every key is Enabled and works there.
async fn check_received_on(node: &Node, got: &Received) {
    let mut c = node.admin().await;
    for (key, plaintext, blob) in &got.ciphertexts {
        let plain = decrypt_with(&mut c, blob, &[])
            .await
            .unwrap_or_else(|e| panic!("a received ciphertext under {key} does not decrypt: {e}"));
        assert_eq!(&plain, plaintext);
    }
    for key in &got.keys {
        let mut state = String::new();
        let enabled = within_10s(async || {
            state = try_describe(&mut c, key)
                .await
                .map_or_else(|e| outcome::<()>(Err(e)), |m| m.key_state);
            state == "Enabled"
        })
        .await;
        assert!(enabled, "received key {key} is {state} on node {}", node.id);
        assert_eq!(
            try_encrypt(&mut c, key, &[]).await,
            "ok",
            "received key {key}"
        );
    }
}

fn kill_9_of_a_node_under_load_loses_nothing(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let extra = "[kms]\ndeletion_sweep_interval_secs = 1\ncreating_grace_secs = 3\n";
        let mut nodes = start_nodes(pg, &db, &["node-a", "node-b"], extra).await;
        let leads = within_10s(async || nodes[0].log().contains(LEADS)).await;
        assert!(
            leads,
            "A (started first) never took the lead: {}",
            nodes[0].log()
        );
        assert!(!nodes[1].log().contains(LEADS), "both nodes lead");
        let key = create_key(&mut nodes[0].admin().await).await;
        until_known(&nodes[1], &key).await;

        let (stop_a, stop_b) = (Arc::default(), Arc::default());
        let (got_a, got_b) = (Arc::default(), Arc::default());
        let tasks_a = start_load(&nodes[0], &key, &stop_a, &got_a);
        let tasks_b = start_load(&nodes[1], &key, &stop_b, &got_b);
        until_answers(&got_a, 3 * LOAD_CLIENTS, "load on A").await;
        until_answers(&got_b, 3 * LOAD_CLIENTS, "load on B").await;
        nodes[0].kill9();
        for t in tasks_a {
            t.await.unwrap();
        }
        // B keeps serving after A died.
        let after_kill = got_b.lock().unwrap().answers();
        until_answers(
            &got_b,
            after_kill + 3 * LOAD_CLIENTS,
            "load on B after the kill",
        )
        .await;
        stop_b.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks_b {
            t.await.unwrap();
        }
        let take = |g: &Arc<Mutex<Received>>| std::mem::take(&mut *g.lock().unwrap());
        let (got_a, got_b) = (take(&got_a), take(&got_b));
        eprintln!(
            "A answered {} ciphertexts and {} keys, B {} and {}",
            got_a.ciphertexts.len(),
            got_a.keys.len(),
            got_b.ciphertexts.len(),
            got_b.keys.len()
        );
        // The duties moved to B, and B's reconciliation resolves what the kill left Creating.
        let moved = within_10s(async || nodes[1].log().contains(LEADS)).await;
        assert!(moved, "B never took the lead: {}", nodes[1].log());
        let store = open_db(pg, &db).await;
        let mut left = BTreeSet::new();
        let resolved = within_10s(async || {
            left = creating_in_db(&store).await;
            left.is_empty()
        })
        .await;
        assert!(resolved, "keys still Creating: {left:?}");
        assert_reconciled_keys_reported(&nodes[1], &got_a, &store).await;

        check_received_on(&nodes[1], &got_a).await;
        check_received_on(&nodes[1], &got_b).await;
    })
}

/// Every key that B's reconciliation finished or removed is in B's audit trail, and no key
/// a client received was removed.
async fn assert_reconciled_keys_reported(
    b: &Node,
    got_a: &Received,
    store: &p11kms::store::SqlStore,
) {
    let reconciled: Vec<(String, String)> = events(&b.dir)
        .iter()
        .filter(|e| {
            matches!(
                e["eventName"].as_str(),
                Some("CompleteCreateKey" | "DeleteIncompleteKey")
            )
        })
        .map(|e| (e["eventName"].as_str().unwrap().to_string(), e.to_string()))
        .collect();
    eprintln!("B reconciled {} key(s)", reconciled.len());
    for (name, event) in &reconciled {
        if name == "DeleteIncompleteKey" {
            for key in &got_a.keys {
                assert!(
                    !event.contains(key.as_str()),
                    "removed a received key: {event}"
                );
            }
        }
    }
    for key in &got_a.keys {
        let row = store.get_key(key).await.unwrap();
        assert!(row.is_some(), "received key {key} is not in the database");
    }
}

// ---------------------------------------------------------------------------------------
// 6. PostgreSQL restarted under load, then stopped.

/// Tags `key` on `c` with a fresh tag: the outcome.
async fn try_tag(c: &mut Client, key: &str) -> String {
    let r = c
        .tag_resource(pb::TagResourceRequest {
            key_id: key.into(),
            tags: vec![tag(format!("t-{}", uuid::Uuid::new_v4().simple()), "v")],
        })
        .await;
    outcome(r)
}

/// Encrypts under `key` on `c` and decrypts the result: both must work.
async fn round_trip(c: &mut Client, key: &str, what: &str) {
    let blob = encrypt_with(c, key, b"no database", &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: Encrypt: {e:?}"));
    let plain = decrypt_with(c, &blob, &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: Decrypt: {e:?}"));
    assert_eq!(plain, b"no database");
}

/// Waits (bounded) until a change (TagResource, then CreateKey) works again on `node`.
async fn until_changes_work(node: &Node, key: &str, what: &str) {
    let mut c = node.admin().await;
    let mut last = String::new();
    let ok = within_10s(async || {
        last = try_tag(&mut c, key).await;
        last == "ok"
    })
    .await;
    assert!(ok, "{what}: TagResource on {} is still {last}", node.id);
    let created = c.create_key(pb::CreateKeyRequest::default()).await;
    assert_eq!(outcome(created), "ok", "{what}: CreateKey on {}", node.id);
}

fn postgres_restarted_or_stopped(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        let key = create_key(&mut nodes[0].admin().await).await;
        until_known(&nodes[1], &key).await;

        // Restarted under an Encrypt load on both nodes: the load is answered throughout.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for node in &nodes {
            let (addr, key, stop, failures) =
                (node.addr, key.clone(), stop.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = admin(addr).await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = try_encrypt(&mut c, &key, &[]).await;
                    if r != "ok" {
                        failures.lock().unwrap().push(r);
                    }
                }
            }));
        }
        pg.restart();
        for node in &nodes {
            until_changes_work(node, &key, "after the restart").await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *failures.lock().unwrap(),
            Vec::<String>::new(),
            "Encrypt failed"
        );
        // Following works again: a tag made on A reaches B.
        tag_key(&mut nodes[0].admin().await, &key, "after-restart", "v").await;
        let mut b = nodes[1].admin().await;
        let followed = within_10s(async || {
            list_tags(&mut b, &key)
                .await
                .iter()
                .any(|t| t.tag_key == "after-restart")
        })
        .await;
        assert!(
            followed,
            "B no longer follows A's changes after the restart"
        );

        // Stopped: crypto from the cache, changes refused with a clear error.
        pg.stop();
        for node in &nodes {
            let mut c = node.admin().await;
            round_trip(&mut c, &key, "PostgreSQL stopped").await;
            let refused = Instant::now();
            let created = c.create_key(pb::CreateKeyRequest::default()).await;
            assert_eq!(outcome(created), "DependencyTimeoutException", "CreateKey");
            assert_eq!(try_tag(&mut c, &key).await, "DependencyTimeoutException");
            eprintln!(
                "{}: two refused changes took {:.1?}",
                node.id,
                refused.elapsed()
            );
            round_trip(&mut c, &key, "after refused changes").await;
        }
        pg.start_again();
        for node in &nodes {
            until_changes_work(node, &key, "after the start").await;
        }
    })
}

// ---------------------------------------------------------------------------------------
// 7. Both nodes' audit trails verify together.

fn audit_trails_of_both_nodes_verify_together(pg: &mut PgServer) -> CaseFuture<'_> {
    Box::pin(async move {
        let db = pg.create_database();
        let mut nodes = start_nodes(pg, &db, &["node-a", "node-b"], KMS_FAST).await;
        for node in &nodes {
            let mut c = node.admin().await;
            let key = create_key(&mut c).await;
            round_trip(&mut c, &key, "audited").await;
        }
        for node in nodes.iter_mut() {
            node.stop();
        }
        for node in &nodes {
            let segs = segments(&node.dir);
            let prefix = format!("audit-{}-", node.id);
            assert!(!segs.is_empty(), "node {} wrote no segment", node.id);
            for s in &segs {
                let name = s.file_name().unwrap().to_string_lossy().to_string();
                assert!(
                    name.starts_with(&prefix),
                    "segment {name} of node {}",
                    node.id
                );
            }
            let ids: BTreeSet<String> = records(&node.dir)
                .iter()
                .map(|r| r["node"].as_str().unwrap_or("none").to_string())
                .collect();
            assert_eq!(
                ids,
                BTreeSet::from([node.id.clone()]),
                "node ids in records"
            );
        }
        let key_a = std::fs::read(nodes[0].dir.join("audit-public-key.pem")).unwrap();
        let key_b = std::fs::read(nodes[1].dir.join("audit-public-key.pem")).unwrap();
        assert_eq!(key_a, key_b, "the nodes share the audit key");
        let public_key = nodes[0].dir.join("audit-public-key.pem");
        let (code, out) = audit_verify_all(&public_key, &[&nodes[0].dir, &nodes[1].dir]);
        assert_eq!(code, 0, "audit verify of both trails:\n{out}");
        assert!(
            out.contains("node node-a:") && out.contains("node node-b:"),
            "{out}"
        );
        assert!(out.contains("RESULT: OK (2 nodes)"), "{out}");
    })
}

// ---------------------------------------------------------------------------------------
// Harness.

/// Every case, in order (the PostgreSQL stop and restart cases last).
fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "a_key_made_on_one_node_works_on_the_other",
            a_key_made_on_one_node_works_on_the_other,
        ),
        (
            "disable_and_policy_on_a_reach_b",
            disable_and_policy_on_a_reach_b,
        ),
        (
            "grants_on_a_work_and_stop_on_b",
            grants_on_a_work_and_stop_on_b,
        ),
        (
            "deletion_and_alias_changes_on_a_reach_b",
            deletion_and_alias_changes_on_a_reach_b,
        ),
        (
            "a_session_issued_by_a_works_on_b_at_once",
            a_session_issued_by_a_works_on_b_at_once,
        ),
        (
            "concurrent_changes_on_both_nodes_lose_nothing",
            concurrent_changes_on_both_nodes_lose_nothing,
        ),
        (
            "audit_trails_of_both_nodes_verify_together",
            audit_trails_of_both_nodes_verify_together,
        ),
        (
            "kill_9_of_a_node_under_load_loses_nothing",
            kill_9_of_a_node_under_load_loses_nothing,
        ),
        (
            "postgres_restarted_or_stopped",
            postgres_restarted_or_stopped,
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in cases() {
            println!("{name}: test");
        }
        return;
    }
    let wanted: Vec<(&str, Case)> = cases()
        .into_iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    if wanted.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut pg = PgServer::start();
    let mut failed = Vec::new();
    for (name, case) in &wanted {
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(case(&mut pg))
        }));
        match result {
            Ok(()) => println!("test {name} ... ok ({:.1?})", started.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    drop(runtime);
    drop(pg);
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        wanted.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}
