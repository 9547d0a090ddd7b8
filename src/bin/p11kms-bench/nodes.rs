//! The gRPC load over several endpoints (`--endpoint` repeated or comma-separated: the
//! nodes of one cluster). One [`Conn`] per endpoint that could be reached (the others are
//! skipped, said on stderr and in the JSON); worker `i` starts on node `i % n` (round robin
//! per worker) and moves to the next node still up when its node answers UNAVAILABLE (that
//! request counts as an error, it is not sent again); per-endpoint counts for the JSON.
//! With one endpoint the workers run exactly as before (no shared counters on the path).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{one_request, reason, Client, Conn, Fixture, Target};

/// One endpoint's counters, shared by the workers.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    down: AtomicBool,
}

/// One reachable endpoint.
#[derive(Clone)]
struct Node {
    endpoint: String,
    conn: Conn,
    tally: Arc<Tally>,
}

/// The reachable endpoints of the load, and the ones skipped when opening.
#[derive(Clone)]
pub struct Nodes {
    nodes: Vec<Node>,
    /// Endpoints that could not be reached: (endpoint, why).
    skipped: Vec<(String, String)>,
}

/// Per-endpoint (successes, errors) at one moment, to take differences of.
pub type Counts = Vec<(u64, u64)>;

/// One worker's place: its node and a client on each node.
pub struct Worker {
    at: usize,
    clients: Vec<Client>,
}

impl Nodes {
    /// The load of one connection (the own daemon).
    pub fn single(endpoint: String, conn: Conn) -> Nodes {
        Nodes {
            nodes: vec![Node {
                endpoint,
                conn,
                tally: Arc::default(),
            }],
            skipped: Vec::new(),
        }
    }

    /// Opens `channels` channels to each of `target`'s endpoints; an endpoint that cannot
    /// be reached is skipped (said on stderr); none reachable is an error naming each.
    pub async fn open(target: &Target, channels: usize) -> Result<Nodes, String> {
        let mut nodes = Vec::new();
        let mut skipped = Vec::new();
        for t in std::iter::once(target).chain(target.more.iter()) {
            match Conn::open(t, channels).await {
                Ok(conn) => nodes.push(Node {
                    endpoint: t.endpoint.clone(),
                    conn,
                    tally: Arc::default(),
                }),
                Err(e) => {
                    eprintln!("p11kms-bench: endpoint {} skipped: {e}", t.endpoint);
                    skipped.push((t.endpoint.clone(), e));
                }
            }
        }
        if nodes.is_empty() {
            let each: Vec<String> = skipped
                .iter()
                .map(|(e, why)| format!("{e} ({why})"))
                .collect();
            return Err(format!("no endpoint could be reached: {}", each.join("; ")));
        }
        Ok(Nodes { nodes, skipped })
    }

    /// The first reachable node's connection (fixtures, set-up calls).
    pub fn first(&self) -> &Conn {
        &self.nodes[0].conn
    }

    /// Whether the load is one endpoint (the workers' plain path).
    pub fn is_single(&self) -> bool {
        self.nodes.len() == 1 && self.skipped.is_empty()
    }

    /// gRPC channels over all nodes.
    pub fn connections(&self) -> usize {
        self.nodes.iter().map(|n| n.conn.clients.len()).sum()
    }

    /// Worker `i`: on node `i % n`, or the next one up.
    pub fn worker(&self, i: usize) -> Worker {
        let n = self.nodes.len();
        Worker {
            at: self.up_from(i % n),
            clients: self.nodes.iter().map(|node| node.conn.client(i)).collect(),
        }
    }

    /// The first node from `start` on (wrapping) not marked down; `start` when all are.
    fn up_from(&self, start: usize) -> usize {
        let n = self.nodes.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&j| !self.nodes[j].tally.down.load(Ordering::Relaxed))
            .unwrap_or(start)
    }

    /// One request of `f` on the worker's node, counted there; UNAVAILABLE marks the node
    /// down and moves the worker on.
    pub async fn call(&self, w: &mut Worker, f: &Fixture) -> Result<(), String> {
        let node = &self.nodes[w.at];
        match one_request(&node.conn, &mut w.clients[w.at], f).await {
            Ok(()) => {
                node.tally.ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(s) => {
                node.tally.errors.fetch_add(1, Ordering::Relaxed);
                if s.code() == tonic::Code::Unavailable {
                    node.tally.down.store(true, Ordering::Relaxed);
                    w.at = self.up_from((w.at + 1) % self.nodes.len());
                }
                Err(reason(&s))
            }
        }
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        let get = |t: &Tally| {
            (
                t.ok.load(Ordering::Relaxed),
                t.errors.load(Ordering::Relaxed),
            )
        };
        self.nodes.iter().map(|n| get(&n.tally)).collect()
    }

    /// The JSON `endpoints` member: each endpoint's successes and errors since `before`
    /// (with one endpoint, `single` gives them: the plain path keeps no counters), whether
    /// it was marked down, and the skipped ones with why.
    pub fn json(&self, before: &Counts, single: (u64, u64)) -> Value {
        let now = self.counts();
        let mut out: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (ok, errors) = match self.is_single() {
                    true => single,
                    false => (
                        now[i].0.saturating_sub(before[i].0),
                        now[i].1.saturating_sub(before[i].1),
                    ),
                };
                json!({
                    "endpoint": n.endpoint,
                    "ops": ok,
                    "errors": errors,
                    "down": n.tally.down.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.extend(
            self.skipped
                .iter()
                .map(|(e, why)| json!({"endpoint": e, "skipped": why})),
        );
        Value::Array(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Op, Signing};
    use clap::Parser;
    use p11kms::pb::key_management_service_client::KeyManagementServiceClient;
    use p11kms::pb::security_token_service_client::SecurityTokenServiceClient;

    /// A loopback endpoint that refuses connections: bound, then released.
    fn refusing() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    }

    /// A node whose channel connects on first use (to an endpoint that refuses).
    fn lazy_node(endpoint: String) -> Node {
        let ch = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect_lazy();
        Node {
            endpoint,
            conn: Conn {
                clients: vec![KeyManagementServiceClient::new(ch.clone())],
                sts: vec![SecurityTokenServiceClient::new(ch)],
                signer: None,
            },
            tally: Arc::default(),
        }
    }

    fn fixture() -> Fixture {
        Fixture {
            op: Op::Encrypt,
            signing: Signing::Ecdsa,
            key_id: "k".into(),
            store: None,
            plaintext: vec![1],
            ciphertext: Vec::new(),
            signature: Vec::new(),
            data_key_len: 32,
            http: None,
            spread: None,
        }
    }

    #[test]
    fn endpoints_repeat_or_split_at_commas_in_order() {
        let cli = Cli::try_parse_from([
            "p11kms-bench",
            "--endpoint",
            "https://127.0.0.1:1",
            "--endpoint",
            "https://127.0.0.1:2,https://127.0.0.1:3",
        ])
        .expect("arguments");
        let t = Target::existing(&cli, &cli.endpoint).unwrap();
        let all: Vec<(&str, &str)> = std::iter::once(&t)
            .chain(t.more.iter())
            .map(|t| (t.endpoint.as_str(), t.authority.as_str()))
            .collect();
        assert_eq!(
            all,
            [
                ("https://127.0.0.1:1", "127.0.0.1:1"),
                ("https://127.0.0.1:2", "127.0.0.1:2"),
                ("https://127.0.0.1:3", "127.0.0.1:3"),
            ]
        );
    }

    #[test]
    fn no_reachable_endpoint_is_an_error_naming_each() {
        let dir = tempfile::tempdir().unwrap();
        p11kms::devsetup::ensure_ca_and_server(dir.path()).unwrap();
        let (a, b) = (refusing(), refusing());
        let (a, b) = (a.replace("http:", "https:"), b.replace("http:", "https:"));
        let ca = dir.path().join("ca.pem");
        let cli = Cli::try_parse_from([
            "p11kms-bench",
            "--endpoint",
            &format!("{a},{b}"),
            "--ca-cert",
            ca.to_str().unwrap(),
        ])
        .expect("arguments");
        let t = Target::existing(&cli, &cli.endpoint).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let Err(e) = rt.block_on(Nodes::open(&t, 1)) else {
            panic!("no endpoint answers");
        };
        assert!(e.contains("no endpoint could be reached"), "{e}");
        assert!(e.contains(&a) && e.contains(&b), "{e}");
    }

    #[test]
    fn workers_go_round_robin_and_leave_a_node_that_is_unavailable() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _g = rt.enter();
        let nodes = Nodes {
            nodes: (0..3).map(|_| lazy_node(refusing())).collect(),
            skipped: vec![("https://127.0.0.1:9".into(), "refused".into())],
        };
        assert!(!nodes.is_single());
        let at: Vec<usize> = (0..6).map(|i| nodes.worker(i).at).collect();
        assert_eq!(at, [0, 1, 2, 0, 1, 2]);

        let before = nodes.counts();
        let mut w = nodes.worker(1);
        let r = rt.block_on(nodes.call(&mut w, &fixture()));
        assert!(r.is_err());
        // Node 1 refused: it is down, counted, and the worker moved on to node 2.
        assert_eq!(w.at, 2);
        assert_eq!(
            nodes.worker(1).at,
            2,
            "a new worker skips the node that is down"
        );
        let v = nodes.json(&before, (0, 0));
        assert_eq!(v[1]["errors"], 1, "{v}");
        assert_eq!(v[1]["down"], true, "{v}");
        assert_eq!(v[0]["errors"], 0, "{v}");
        assert_eq!(v[3]["skipped"], "refused", "{v}");
    }
}
