//! `p11kms dev-setup` and `serve` as an operator runs them: the real binary in a temporary
//! directory, with a clean environment (no ambient `SOFTHSM2_CONF`, `P11KMS_*` or `AWS_*`).
//! dev-setup does the whole job (the token included); two instances with their own addresses
//! serve side by side; a listener that cannot bind is named with its address; a missing token
//! is reported with the command that fixes it.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::ServeChild;

fn p11kms(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p11kms"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir);
    c
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Addrs {
    grpc: SocketAddr,
    aws: SocketAddr,
    metrics: SocketAddr,
}

impl Addrs {
    fn free() -> Addrs {
        Addrs {
            grpc: free_addr(),
            aws: free_addr(),
            metrics: free_addr(),
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn dev_setup(dir: &Path, name: &str, a: &Addrs) -> PathBuf {
    let out = p11kms(dir)
        .args(["dev-setup", "--data-dir", name])
        .args(["--listen", &a.grpc.to_string()])
        .args(["--aws-listen", &a.aws.to_string()])
        .args(["--metrics-listen", &a.metrics.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "dev-setup failed: {}", text(&out));
    assert!(text(&out).contains("token 'p11kms-dev'"), "{}", text(&out));
    dir.join(name).join("p11kms.toml")
}

/// A `serve` child, killed when dropped; its output goes to a file.
struct Daemon(ServeChild);

impl Daemon {
    fn spawn(dir: &Path, config: &Path, log_name: &str) -> Daemon {
        Daemon(ServeChild::spawn(p11kms(dir), config, dir.join(log_name)))
    }

    /// Waits (bounded) until every address accepts connections, failing if the daemon exits.
    fn wait_listening(&mut self, addrs: &[SocketAddr]) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", self.0.log());
            }
            if addrs.iter().all(|a| TcpStream::connect(a).is_ok()) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "not listening on {addrs:?} after 60 s: {}",
                self.0.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) for the daemon to exit by itself; returns its exit status and log.
    fn wait_exit(mut self) -> (bool, String) {
        let status = self.0.wait_exit(
            Duration::from_secs(60),
            Duration::from_millis(100),
            "serve still running after 60 s",
        );
        (status.success(), self.0.log())
    }
}

#[test]
fn dev_setup_does_the_whole_job_and_a_second_instance_serves_beside_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (Addrs::free(), Addrs::free());
    let config_a = dev_setup(tmp.path(), "one", &a);
    let config_b = dev_setup(tmp.path(), "two", &b);
    for (config, addrs) in [(&config_a, &a), (&config_b, &b)] {
        let text = std::fs::read_to_string(config).unwrap();
        for addr in [addrs.grpc, addrs.aws, addrs.metrics] {
            assert!(text.contains(&format!("listen = \"{addr}\"")), "{text}");
        }
    }
    let mut one = Daemon::spawn(tmp.path(), &config_a, "one.log");
    let mut two = Daemon::spawn(tmp.path(), &config_b, "two.log");
    one.wait_listening(&[a.grpc, a.aws, a.metrics]);
    two.wait_listening(&[b.grpc, b.aws, b.metrics]);
    // Both still up: neither lost a listener to the other.
    assert!(one.0.child.try_wait().unwrap().is_none(), "{}", one.0.log());
    assert!(two.0.child.try_wait().unwrap().is_none(), "{}", two.0.log());
}

#[test]
fn a_listener_that_cannot_bind_is_named_with_its_address() {
    let tmp = tempfile::tempdir().unwrap();
    let taken: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let at = |i: usize| taken[i].local_addr().unwrap();
    let addrs = Addrs {
        grpc: at(0),
        aws: at(1),
        metrics: at(2),
    };
    let config = dev_setup(tmp.path(), "busy", &addrs);
    let mut taken: Vec<Option<TcpListener>> = taken.into_iter().map(Some).collect();
    // In the daemon's bind order: every port is bound before any door accepts.
    for (i, name) in [
        (0, "gRPC door ([server] listen)"),
        (2, "metrics endpoint ([metrics] listen)"),
        (1, "AWS door ([aws_json] listen)"),
    ] {
        let (ok, log) = Daemon::spawn(tmp.path(), &config, &format!("busy{i}.log")).wait_exit();
        assert!(
            !ok,
            "serve must fail while {} is taken: {log}",
            at_of(&addrs, i)
        );
        let want = format!("cannot listen on {} for the {name}", at_of(&addrs, i));
        assert!(log.contains(&want), "want {want:?} in:\n{log}");
        taken[i] = None; // free this one: the next listener is the one that fails
    }
}

fn at_of(a: &Addrs, i: usize) -> SocketAddr {
    [a.grpc, a.aws, a.metrics][i]
}

/// `p11kms check --config <config>` run in `dir`.
fn check(dir: &Path, config: &Path) -> Output {
    p11kms(dir)
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_missing_token_is_reported_with_the_command_that_fixes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = dev_setup(tmp.path(), "lost", &Addrs::free());
    let tokens = tmp.path().join("lost/softhsm/tokens");
    std::fs::remove_dir_all(&tokens).unwrap();
    std::fs::create_dir_all(&tokens).unwrap();
    let out = check(tmp.path(), &config);
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    for want in [
        "token label: 'p11kms-dev'",
        "module: ",
        "softhsm/softhsm2.conf ([hsm] softhsm2_conf)",
        &format!(
            "token directory: {}",
            tokens.canonicalize().unwrap().display()
        ),
        "fix: ",
        "p11kms dev-setup --data-dir ",
        "softhsm2-util --init-token",
    ] {
        assert!(msg.contains(want), "want {want:?} in:\n{msg}");
    }
    // The fix works: dev-setup again initialises the token, and check passes.
    dev_setup(tmp.path(), "lost", &Addrs::free());
    let out = check(tmp.path(), &config);
    assert!(out.status.success(), "{}", text(&out));
}
