//! Metrics, health and reflection against the real daemon.

mod common;

use common::*;
use p11kms::pb;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_requests() {
    let dir = data_dir("metrics");
    let server = start(&dir).await;
    let maddr = server.metrics_addr.expect("metrics enabled");
    assert!(maddr.ip().is_loopback());
    let mut c = admin(server.addr).await;
    let key = create_key(&mut c).await;

    let before = scrape(maddr).await;
    let ok = "p11kms_requests_total{door=\"grpc\",operation=\"Encrypt\",outcome=\"Success\"}";
    let denied =
        "p11kms_requests_total{door=\"grpc\",operation=\"Encrypt\",outcome=\"AccessDeniedException\"}";
    for _ in 0..3 {
        c.encrypt(encrypt_request(&key, b"m")).await.unwrap();
    }
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let r = user2.encrypt(encrypt_request(&key, b"m")).await;
    assert_eq!(reason(r), "AccessDeniedException");
    let mut anon = client_as(server.addr, None).await;
    let _ = anon.list_keys(pb::ListKeysRequest::default()).await;

    let after = scrape(maddr).await;
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{after}");
    assert_eq!(sample(&after, denied) - sample(&before, denied), 1.0);
    let unauth = "p11kms_requests_total{door=\"grpc\",operation=\"ListKeys\",outcome=\"MissingAuthenticationTokenException\"}";
    assert_eq!(sample(&after, unauth), 1.0, "{after}");
    let calls = "p11kms_hsm_calls_total{function=\"C_Encrypt\"}";
    assert!(sample(&after, calls) - sample(&before, calls) >= 3.0);
    assert!(
        sample(
            &after,
            "p11kms_hsm_call_duration_seconds_count{function=\"C_Encrypt\"}"
        ) >= 3.0
    );
    // The key was used: it is served from a session copy now.
    assert!(
        sample(&after, "p11kms_hsm_session_key_copies") >= 1.0,
        "{after}"
    );
    let deny = "p11kms_policy_decisions_total{effect=\"Deny\",reason=\"ImplicitDeny\"}";
    assert!(sample(&after, deny) - sample(&before, deny) >= 1.0);
    let allow = "p11kms_policy_decisions_total{effect=\"Allow\",reason=\"Allowed\"}";
    assert!(sample(&after, allow) - sample(&before, allow) >= 3.0);
    for family in [
        "p11kms_request_duration_seconds_bucket{",
        "p11kms_hsm_queue_wait_seconds_count",
        "p11kms_hsm_queue_depth",
        "p11kms_hsm_rejections_total{reason=\"busy\"}",
    ] {
        assert!(after.contains(family), "missing {family}");
    }
    // No secret material in metrics; no node id configured, so no node info.
    assert!(!after.contains(USER_PIN));
    assert!(!after.contains("p11kms_node_info"), "{after}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_the_api() {
    let dir = data_dir("health");
    let server = start(&dir).await;
    let channel = p11kms::client::ClientConfig {
        endpoint: Some(format!("https://127.0.0.1:{}", server.addr.port())),
        ca_cert: Some(env().pki.join("ca.pem")),
        tls_domain: Some("localhost".into()),
        ..Default::default()
    }
    .channel()
    .await
    .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let (status, node) = serving(&mut health).await;
    assert_eq!(status, 1, "health must be SERVING");
    assert_eq!(node, None, "no [node] id: no node in the health answer");

    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .reply();
    let resp = stream
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "p11kms.v1.KeyManagementService",
        "p11kms.v1.SecurityTokenService",
        "p11kms.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} not in {names:?}");
    }
    server.shutdown().await.unwrap();
}

/// The health status of the KMS service once SERVING (or the last status seen, after the
/// attempts), and the node id in the answer's `p11kms-node` metadata.
async fn serving(health: &mut HealthClient<tonic::transport::Channel>) -> (i32, Option<String>) {
    let mut last = (0, None);
    for _ in 0..50 {
        let answer = health
            .check(HealthCheckRequest {
                service: "p11kms.v1.KeyManagementService".into(),
            })
            .await;
        if let Ok(r) = answer {
            let node = r
                .metadata()
                .get(p11kms::api::grpc::health::NODE_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            last = (r.into_inner().status, node);
            if last.0 == 1 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_id_is_in_check_health_and_metrics() {
    let dir = data_dir("node-id");
    let config = config_with(&dir, "\n[node]\nid = \"node-a1\"\n");
    // check first: it opens the store, which the daemon then holds. The token is shared
    // with this binary's other tests, whose key objects check reports as drift (exit 2);
    // what matters here is that the config was accepted (not 1) and the node line.
    let (code, out) = run_check(&dir.join("p11kms.toml")).await;
    assert!(code == 0 || code == 2, "{out}");
    assert!(out.contains("token 'p11kms-test': opened"), "{out}");
    assert!(out.lines().any(|l| l == "node: node-a1"), "{out}");

    let server = p11kms::server::start(&config, p11kms::server::ServerOptions::default())
        .await
        .expect("daemon starts");
    let text = scrape(server.metrics_addr.expect("metrics enabled")).await;
    assert_eq!(
        sample(&text, "p11kms_node_info{node=\"node-a1\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(text.matches("p11kms_node_info{").count(), 1, "{text}");

    let mut health = health_client(server.addr).await;
    let (status, node) = serving(&mut health).await;
    assert_eq!(status, 1, "health must be SERVING");
    assert_eq!(node.as_deref(), Some("node-a1"));
    server.shutdown().await.unwrap();
}
