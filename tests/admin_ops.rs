//! Issue 21, the console's operator operations on the real daemon (real SoftHSM2 token, real
//! SQLite, real audit trail): `P11kmsAdmin.ListPrincipals`, `SearchAuditTrail`,
//! `VerifyAuditTrail` and `GetHealth` through the AWS door with SigV4, and the same four on
//! the gRPC AdminService.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use p11kms::core::{Clock, SystemClock};
use p11kms::pb;
use p11kms::server::ServerOptions;
use serde_json::{json, Value};

const AK_ADMIN: &str = "AKIAADMIN00000000001";
const AK_USER2: &str = "AKIAUSER200000000001";
const ENGINEERING: &str = "arn:aws:iam::111122223333:role/Engineering";

/// The AWS door requests [`post`] sent, and how many of them failed.
static SENT: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// A SigV4-signed AWS door request (`X-Amz-Target: target`) as the fixture access key `ak`:
/// the HTTP status and the JSON body.
async fn post(addr: SocketAddr, ak: &str, target: &str, body: &Value) -> (u16, Value) {
    let extra = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", target),
    ];
    let now = SystemClock.now_ms() / 1000;
    let bytes = body.to_string();
    let answer = aws_door_post(
        addr,
        &fixture_credentials(ak),
        "kms",
        now,
        &extra,
        bytes.as_bytes(),
    )
    .await;
    SENT.fetch_add(1, Ordering::SeqCst);
    if answer.status != 200 {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    let v = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status, v)
}

/// A console operation as the admin, which must succeed.
async fn admin_op(addr: SocketAddr, op: &str, body: Value) -> Value {
    let (status, v) = post(addr, AK_ADMIN, &format!("P11kmsAdmin.{op}"), &body).await;
    assert_eq!(status, 200, "{op} {body}: {v}");
    v
}

/// A KMS operation as `ak`: status and body.
async fn kms(addr: SocketAddr, ak: &str, op: &str, body: Value) -> (u16, Value) {
    post(addr, ak, &format!("TrentService.{op}"), &body).await
}

/// The request ids of a page of events, in order.
fn request_ids(page: &Value) -> Vec<String> {
    page["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requestID"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every page of a search, following NextMarker: the events' request ids in order.
async fn search_all(addr: SocketAddr, mut filter: Value, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    filter["Limit"] = json!(limit);
    loop {
        let page = admin_op(addr, "SearchAuditTrail", filter.clone()).await;
        let n = page["Events"].as_array().unwrap().len();
        assert!(n <= limit as usize, "{page}");
        out.extend(request_ids(&page));
        match page["NextMarker"].as_str() {
            Some(m) => {
                assert_eq!(page["Truncated"], true);
                filter["Marker"] = json!(m);
            }
            None => {
                assert_eq!(page["Truncated"], false);
                return out;
            }
        }
    }
}

/// The total requests and errors of GetHealth's series.
fn totals(health: &Value) -> (u64, u64) {
    let points = health["Requests"]["Points"].as_array().unwrap();
    points.iter().fold((0, 0), |(r, e), p| {
        (
            r + p["Requests"].as_u64().unwrap(),
            e + p["Errors"].as_u64().unwrap(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_operations_on_the_aws_door() {
    let dir = data_dir("admin-ops-aws");
    let (server, _) = start_aws_door(&dir, ServerOptions::default()).await;
    let addr = server.aws_json_addr.unwrap();

    // GetHealth first: its series counts every request from here on (this one included,
    // once answered). Only this test sends through `post` in this binary.
    let (sent0, failed0) = (SENT.load(Ordering::SeqCst), FAILED.load(Ordering::SeqCst));
    let before = admin_op(addr, "GetHealth", json!({})).await;
    assert_eq!(before["Hsm"]["Healthy"], true, "{before}");
    assert_eq!(before["Audit"]["Healthy"], true, "{before}");
    assert_eq!(before["Requests"]["IntervalSeconds"], 10);
    let points = before["Requests"]["Points"].as_array().unwrap();
    assert_eq!(points.len(), 90);
    let times: Vec<i64> = points.iter().map(|p| p["Time"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] == 10), "{times:?}");
    let now = SystemClock.now_ms() / 1000;
    assert!(
        (now - 10..=now).contains(&times[89]),
        "{} vs {now}",
        times[89]
    );

    // A key, an Encrypt that succeeds (admin) and one that is denied (user2).
    let (status, created) = kms(addr, AK_ADMIN, "CreateKey", json!({})).await;
    assert_eq!(status, 200, "{created}");
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let key_arn = created["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let encrypt = json!({"KeyId": key_id, "Plaintext": "aGVsbG8="});
    let (status, v) = kms(addr, AK_ADMIN, "Encrypt", encrypt.clone()).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = kms(addr, AK_USER2, "Encrypt", encrypt.clone()).await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );

    list_principals(addr).await;
    search(addr, &key_id, &key_arn).await;
    bad_input(addr).await;
    not_allowed(addr).await;

    // The series counted every request since the first GetHealth, that one included, and
    // every failure among the errors: exactly the requests sent (nothing else calls the
    // daemon's doors).
    let sent = SENT.load(Ordering::SeqCst) - sent0;
    let failed = FAILED.load(Ordering::SeqCst) - failed0;
    let after = admin_op(addr, "GetHealth", json!({})).await;
    let ((r0, e0), (r1, e1)) = (totals(&before), totals(&after));
    assert!(sent > 30 && failed > 15, "{sent} {failed}");
    assert_eq!(r1 - r0, sent, "{before}\n{after}");
    assert_eq!(e1 - e0, failed, "{before}\n{after}");
    let latest = &after["Requests"]["Points"][89];
    assert!(latest["Requests"].as_u64().unwrap() >= 1, "{latest}");

    verify(addr, &dir).await;
    server.shutdown().await.unwrap();
}

/// ListPrincipals: users and roles, sorted, no roots; pages of 2 give the same list.
async fn list_principals(addr: SocketAddr) {
    let all = admin_op(addr, "ListPrincipals", json!({})).await;
    assert_eq!(all["Truncated"], false, "{all}");
    assert!(all.get("NextMarker").is_none(), "{all}");
    let principals = all["Principals"].as_array().unwrap();
    let arns: Vec<&str> = principals
        .iter()
        .map(|p| p["Arn"].as_str().unwrap())
        .collect();
    let mut sorted = arns.clone();
    sorted.sort();
    assert_eq!(arns, sorted);
    for (arn, kind, name) in [
        (ADMIN, "User", "admin"),
        (USER1, "User", "user1"),
        (ENGINEERING, "Role", "Engineering"),
    ] {
        assert!(
            principals.contains(&json!({"Arn": arn, "Type": kind, "Name": name})),
            "{arn} is missing: {all}"
        );
    }
    assert!(!arns.iter().any(|a| a.ends_with(":root")), "{arns:?}");
    let mut paged = Vec::new();
    let mut body = json!({"Limit": 2});
    loop {
        let page = admin_op(addr, "ListPrincipals", body.clone()).await;
        let list = page["Principals"].as_array().unwrap();
        assert!(list.len() <= 2);
        paged.extend(list.iter().map(|p| p["Arn"].as_str().unwrap().to_string()));
        match page["NextMarker"].as_str() {
            Some(m) => body["Marker"] = json!(m),
            None => break,
        }
    }
    assert_eq!(paged, arns);
}

/// SearchAuditTrail finds the test's requests by key, operation, principal and outcome.
async fn search(addr: SocketAddr, key_id: &str, key_arn: &str) {
    let by_key = admin_op(addr, "SearchAuditTrail", json!({"KeyId": key_id})).await;
    let events = by_key["Events"].as_array().unwrap();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["eventName"].as_str().unwrap())
        .collect();
    // The trail names the key in `resources` of the requests on it, its CreateKey included
    // (the event, then its intent record, newest first).
    assert_eq!(names, ["Encrypt", "Encrypt", "CreateKey", "CreateKey"]);
    assert_eq!(events[3]["phase"], "intent", "{}", events[3]);
    // Newest first: the denied Encrypt was the last request on the key.
    assert_eq!(events[0]["eventName"], "Encrypt");
    assert_eq!(
        events[0]["errorCode"], "AccessDeniedException",
        "{}",
        events[0]
    );
    assert_eq!(events[0]["recordType"], "event");
    assert!(events[0]["hash"].is_string(), "the record as stored");
    assert!(
        events.iter().all(|e| e["resources"][0]["ARN"] == key_arn),
        "{by_key}"
    );
    let by_arn = admin_op(addr, "SearchAuditTrail", json!({"KeyId": key_arn})).await;
    assert_eq!(request_ids(&by_arn), request_ids(&by_key));

    let encrypts = json!({"Operation": "Encrypt", "KeyId": key_id});
    let found = admin_op(addr, "SearchAuditTrail", encrypts.clone()).await;
    assert_eq!(found["Events"].as_array().unwrap().len(), 2, "{found}");
    let mine = json!({"Principal": ADMIN, "Operation": "Encrypt", "Outcome": "Success"});
    let found = admin_op(addr, "SearchAuditTrail", mine).await;
    let events = found["Events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{found}");
    assert_eq!(events[0]["userIdentity"]["arn"], ADMIN);
    let failed = json!({"Principal": USER2, "Outcome": "Failure"});
    let found = admin_op(addr, "SearchAuditTrail", failed).await;
    let events = found["Events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{found}");
    assert_eq!(events[0]["eventName"], "Encrypt");
    assert_eq!(events[0]["errorCode"], "AccessDeniedException");
    let nothing = json!({"Principal": USER2, "Outcome": "Success"});
    let found = admin_op(addr, "SearchAuditTrail", nothing).await;
    assert_eq!(found["Events"], json!([]), "{found}");
    assert_eq!(found["Truncated"], false);

    // Times: everything so far is before now; nothing is after it.
    let now = SystemClock.now_ms() as f64 / 1000.0 + 1.0;
    let before_now = json!({"KeyId": key_id, "EndTime": now});
    let found = admin_op(addr, "SearchAuditTrail", before_now).await;
    assert_eq!(request_ids(&found), request_ids(&by_key));
    let after_now = json!({"KeyId": key_id, "StartTime": now});
    let found = admin_op(addr, "SearchAuditTrail", after_now).await;
    assert_eq!(found["Events"], json!([]));

    // Pages of one walk the same events, each once.
    let everything = search_all(addr, json!({"KeyId": key_id}), 1).await;
    assert_eq!(everything, request_ids(&by_key));
}

/// Bad input: ValidationException, naming what is wrong.
async fn bad_input(addr: SocketAddr) {
    let cases = [
        ("ListPrincipals", json!({"Limit": 0}), "limit"),
        ("ListPrincipals", json!({"Limit": 100000}), "limit"),
        ("ListPrincipals", json!({"Limit": "ten"}), "limit"),
        (
            "ListPrincipals",
            json!({"Marker": "bm90LWEtbWFya2Vy"}),
            "marker",
        ),
        ("SearchAuditTrail", json!({"Limit": 501}), "limit"),
        ("SearchAuditTrail", json!({"Limit": 0}), "limit"),
        ("SearchAuditTrail", json!({"Marker": "x.y"}), "marker"),
        ("SearchAuditTrail", json!({"Outcome": "Maybe"}), "outcome"),
        (
            "SearchAuditTrail",
            json!({"StartTime": 20, "EndTime": 10}),
            "StartTime",
        ),
        (
            "SearchAuditTrail",
            json!({"StartTime": "today"}),
            "startTime",
        ),
        ("SearchAuditTrail", json!({"KeyId": 5}), "keyId"),
        ("SearchAuditTrail", json!({"Principal": ["a"]}), "principal"),
    ];
    for (op, body, says) in cases {
        let (status, v) = post(addr, AK_ADMIN, &format!("P11kmsAdmin.{op}"), &body).await;
        assert_eq!(
            (status, v["__type"].as_str()),
            (400, Some("ValidationException")),
            "{op} {body}: {v}"
        );
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(says), "{op} {body}: {message}");
        assert!(
            !message.contains("ten") && !message.contains("Maybe"),
            "{message}"
        );
    }
    // A marker of one operation is not a marker of the other.
    let page = admin_op(addr, "ListPrincipals", json!({"Limit": 1})).await;
    let marker = page["NextMarker"].as_str().unwrap();
    let (status, v) = post(
        addr,
        AK_ADMIN,
        "P11kmsAdmin.SearchAuditTrail",
        &json!({"Marker": marker}),
    )
    .await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("ValidationException")),
        "{v}"
    );
}

/// A caller without the `p11kms:` action is denied each operation.
async fn not_allowed(addr: SocketAddr) {
    for op in [
        "ListPrincipals",
        "SearchAuditTrail",
        "VerifyAuditTrail",
        "GetHealth",
    ] {
        let (status, v) = post(addr, AK_USER2, &format!("P11kmsAdmin.{op}"), &json!({})).await;
        assert_eq!(
            (status, v["__type"].as_str()),
            (400, Some("AccessDeniedException")),
            "{op}: {v}"
        );
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(&format!("p11kms:{op}")), "{op}: {message}");
    }
}

/// VerifyAuditTrail: verified; then, after one byte of a record is changed on disk, not
/// verified, with the problem at that record's file and line.
async fn verify(addr: SocketAddr, dir: &Path) {
    let v = admin_op(addr, "VerifyAuditTrail", json!({})).await;
    assert_eq!(v["Verified"], true, "{v}");
    let nodes = v["Nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert!(nodes[0]["Records"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(nodes[0]["Problems"], json!([]));
    assert!(nodes[0]["Checkpoints"].is_u64());

    let (file, line) = edit_one_byte(dir, "\"eventName\":\"CreateKey\"");
    let v = admin_op(addr, "VerifyAuditTrail", json!({})).await;
    assert_eq!(v["Verified"], false, "{v}");
    let problems = v["Nodes"][0]["Problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["Kind"] == "edited"
            && p["File"] == file.as_str()
            && p["Line"] == line
            && p["Detail"].is_string()),
        "no edited problem at {file}:{line}: {v}"
    );
}

/// Changes one byte of the first record line holding `needle`, in place (the writer keeps
/// appending to the file); returns the file name and the line number.
fn edit_one_byte(dir: &Path, needle: &str) -> (String, u64) {
    for path in segments(dir) {
        let text = std::fs::read(&path).unwrap();
        let Some(at) = find(&text, needle.as_bytes()) else {
            continue;
        };
        let line = text[..at].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        let offset = (at + needle.len() - 2) as u64; // the 'y' of CreateKey
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(b"Y").unwrap();
        f.sync_all().unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        return (name, line);
    }
    panic!("no record holds {needle}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The four operations on the gRPC AdminService: the same answers, and AccessDenied for a
/// caller without the actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_operations_on_grpc() {
    let dir = data_dir("admin-ops-grpc");
    let server = start(&dir).await;
    let mut admin = signed_as(server.addr, AK_ADMIN).await;
    let mut c = common::admin(server.addr).await;
    let key = create_key(&mut c).await;

    let page = admin
        .admin
        .list_principals(admin.admin_req(
            pb::ListPrincipalsRequest {
                limit: Some(1000),
                marker: String::new(),
            },
            "ListPrincipals",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.truncated);
    assert!(page
        .principals
        .iter()
        .any(|p| p.arn == ENGINEERING && p.r#type == "Role" && p.name == "Engineering"));

    let search = |outcome: &str| pb::SearchAuditTrailRequest {
        principal: ADMIN.into(),
        operation: "CreateKey".into(),
        outcome: outcome.into(),
        ..Default::default()
    };
    let found = admin
        .admin
        .search_audit_trail(admin.admin_req(search("Success"), "SearchAuditTrail"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.events_json.len(), 1, "{found:?}");
    let event: Value = serde_json::from_str(&found.events_json[0]).unwrap();
    assert_eq!(event["eventName"], "CreateKey");
    assert_eq!(event["userIdentity"]["arn"], ADMIN);
    assert_eq!(
        event["responseElements"]["keyMetadata"]["keyId"],
        key.as_str()
    );
    let refused = admin
        .admin
        .search_audit_trail(admin.admin_req(search("Sometimes"), "SearchAuditTrail"))
        .await;
    assert_eq!(reason(refused), "ValidationException");

    let verified = admin
        .admin
        .verify_audit_trail(admin.admin_req(pb::VerifyAuditTrailRequest {}, "VerifyAuditTrail"))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.verified, "{verified:?}");
    assert_eq!(verified.nodes.len(), 1);

    let health = admin
        .admin
        .get_health(admin.admin_req(pb::GetHealthRequest {}, "GetHealth"))
        .await
        .unwrap()
        .into_inner();
    assert!(health.hsm.unwrap().healthy && health.audit.unwrap().healthy);
    assert_eq!((health.interval_seconds, health.points.len()), (10, 90));
    let served: u64 = health.points.iter().map(|p| p.requests).sum();
    assert!(
        served >= 4,
        "CreateKey, ListPrincipals, two searches, VerifyAuditTrail"
    );

    let mut user2 = signed_as(server.addr, AK_USER2).await;
    let denied = user2
        .admin
        .get_health(user2.admin_req(pb::GetHealthRequest {}, "GetHealth"))
        .await;
    assert_eq!(reason(denied), "AccessDeniedException");
    let denied = user2
        .admin
        .list_principals(user2.admin_req(pb::ListPrincipalsRequest::default(), "ListPrincipals"))
        .await;
    assert_eq!(reason(denied), "AccessDeniedException");
    server.shutdown().await.unwrap();
}
