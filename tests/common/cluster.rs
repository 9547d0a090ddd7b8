//! Several real `p11kms serve` nodes sharing one PostgreSQL database and one SoftHSM2 token
//! (the test environment's: every node's config names the same `softhsm2.conf` and token
//! label), each with its own data directory (audit trail), `[node] id` and fixed free
//! loopback port. The database comes from a [`PgServer`] the test binary started.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use p11kms::store::{PgSettings, PgTls, SqlStore};
use zeroize::Zeroizing;

use super::postgres::PgServer;
use super::*;

/// How long a node may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The change log's fallback read interval of every node (ms): short, so that a missed
/// notification does not slow a test down.
pub const FOLLOW_INTERVAL_MS: u64 = 200;

/// One node: its config and, while it runs, its `serve` child (killed when dropped).
pub struct Node {
    /// `[node] id`.
    pub id: String,
    /// Its data directory (audit segments, logs).
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its gRPC door (127.0.0.1, fixed).
    pub addr: SocketAddr,
    child: Option<ServeChild>,
    starts: usize,
}

impl Node {
    /// Configures node `id` on `db` of `pg`, with `extra` appended to its config (e.g. a
    /// `[kms]` section); does not start it.
    pub fn configure(pg: &PgServer, db: &str, id: &str, extra: &str) -> Node {
        let dir = data_dir(&format!("node-{id}"));
        let password = dir.join("pg-password");
        write_secret(&password, std::fs::read(pg.password_file()).unwrap());
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let store = format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npassword_file = \"{pw}\"\n\
             pool_size = 4\nfollow_interval_ms = {FOLLOW_INTERVAL_MS}\n",
            url = pg.url(db),
            pw = password.display(),
        );
        let text = config_text(&dir)
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{addr}\""),
                1,
            )
            .replacen("[store]\n", &store, 1)
            + &format!("\n[node]\nid = \"{id}\"\n{extra}\n");
        let config = dir.join("p11kms.toml");
        std::fs::write(&config, text).unwrap();
        Node {
            id: id.to_string(),
            dir,
            config,
            addr,
            child: None,
            starts: 0,
        }
    }

    /// Starts `p11kms serve` and waits (bounded) until it accepts connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already runs", self.id);
        let log = self.dir.join(format!("serve-{}.log", self.starts));
        self.starts += 1;
        let mut child = ServeChild::spawn_logged(p11kms_command(), &self.config, log);
        let start = Instant::now();
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = child.child.try_wait().unwrap() {
                panic!("node {} exited with {status}: {}", self.id, child.log());
            }
            assert!(
                start.elapsed() < START_LIMIT,
                "node {} not listening on {} after {START_LIMIT:?}: {}",
                self.id,
                self.addr,
                child.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }

    /// SIGKILL (through `Child::kill`, by this child's PID), then reaps it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("the node runs");
        c.child.kill().expect("SIGKILL the node");
        c.child.wait().unwrap();
    }

    /// SIGTERM (a graceful stop), then waits (bounded) for a clean exit.
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("the node runs");
        let st = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(c.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let status = c.wait_exit(
            Duration::from_secs(30),
            Duration::from_millis(50),
            "the node did not stop",
        );
        assert!(
            status.success(),
            "node {} exited with {status}: {}",
            self.id,
            c.log()
        );
    }

    /// What this node logged in its current (or last) run.
    pub fn log(&self) -> String {
        let n = self.starts.saturating_sub(1);
        std::fs::read_to_string(self.dir.join(format!("serve-{n}.log"))).unwrap_or_default()
    }

    /// An admin client (mutual TLS, the dev PKI's `admin` certificate).
    pub async fn admin(&self) -> Client {
        admin(self.addr).await
    }

    /// A client with the dev PKI's certificate `cn`.
    pub async fn client(&self, cn: &str) -> Client {
        client_as(self.addr, Some(cn)).await
    }

    /// SigV4 clients with the given credentials.
    pub async fn signed(&self, credentials: p11kms::client::AccessKeyCredentials) -> Signed {
        signed_with(self.addr, credentials).await
    }
}

/// Configures and starts nodes `ids` on `db`, one after the other (the first takes the lead
/// of the background duties), each with `extra` in its config.
pub async fn start_nodes(pg: &PgServer, db: &str, ids: &[&str], extra: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in ids {
        let mut n = Node::configure(pg, db, id, extra);
        n.start().await;
        nodes.push(n);
    }
    nodes
}

/// A store on `db` opened by the test itself, to read what the database holds.
pub async fn open_db(pg: &PgServer, db: &str) -> SqlStore {
    let password = std::fs::read_to_string(pg.password_file()).unwrap();
    let settings = PgSettings {
        url: pg.url(db),
        password: Some(Zeroizing::new(password.trim().to_owned())),
        pool_size: 2,
        tls: PgTls::Disable,
        ca_file: None,
    };
    SqlStore::open_postgres(&settings)
        .await
        .expect("open the test database")
}

/// Polls `f` every 50 ms for up to 10 s; whether it became true (propagation between nodes).
pub async fn within_10s(mut f: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}

/// `p11kms audit verify` with `public_key` over every segment of the data directories
/// `dirs`: its exit code and output.
pub fn audit_verify_all(public_key: &Path, dirs: &[&Path]) -> (i32, String) {
    let mut c = p11kms_command();
    c.args(["audit", "verify", "--public-key"]).arg(public_key);
    for d in dirs {
        c.args(segments(d));
    }
    code_and_output(&c.output().expect("run audit verify"))
}

/// A free 127.0.0.1 port (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
