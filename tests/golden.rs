//! Golden wire output of both doors (issue 13: "prove nothing changed"). A fixed script of
//! requests runs against the real daemon (fresh SoftHSM2 token objects and SQLite store):
//! every operation of the AWS JSON door (the 52 TrentService operations,
//! `P11kmsAdmin.ExplainAccess`, STS AssumeRole and GetCallerIdentity) as raw SigV4-signed HTTP,
//! and every method of the gRPC door's KeyManagementService, SecurityTokenService and
//! AdminService, each with a happy path and errors. The answers, normalised (see
//! `golden/normalise.rs`: random and clock-dependent values become numbered placeholders),
//! must equal `tests/golden/aws-json.txt` and `tests/golden/grpc.txt` byte for byte.
//!
//! After an intended change of the wire output, `cargo test --test golden -- --ignored
//! bless_golden_files` rewrites both files (it runs each script twice on fresh daemons and
//! refuses to write if the two runs differ); review the diff before committing it.

#[path = "golden/aws_script.rs"]
mod aws_script;
mod common;
#[path = "golden/grpc_script.rs"]
mod grpc_script;
#[path = "golden/normalise.rs"]
mod normalise;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use p11kms::core::{Clock, ManualClock};
use p11kms::server::{self, RunningServer, ServerOptions};

/// A key id no key has.
pub const MISSING_KEY: &str = "0b0b0b0b-1111-4222-8333-444455556666";
/// A grant id no grant has.
pub const MISSING_GRANT: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The transcript of one script: one block per request, normalised.
pub struct Transcript {
    n: normalise::Normaliser,
    out: String,
    count: usize,
}

impl Transcript {
    pub fn new(n: normalise::Normaliser) -> Transcript {
        Transcript {
            n,
            out: String::new(),
            count: 0,
        }
    }

    /// Appends one block: its title, the request summary and the answer (normalised).
    pub fn record(&mut self, title: &str, request: &str, response: &str) {
        self.count += 1;
        let request = self.n.text(request, true);
        let response = self.n.text(response, false);
        self.out
            .push_str(&format!("=== {:03} {title}\n", self.count));
        for line in request.split('\n') {
            self.out.push_str(&format!("> {line}\n"));
        }
        for line in response.split('\n') {
            self.out.push_str(&format!("< {line}\n"));
        }
    }

    /// See [`normalise::Normaliser::random_blob`].
    pub fn random_blob(&mut self, bytes: &[u8]) {
        self.n.random_blob(bytes);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A daemon with both doors (the AWS door over TLS on 127.0.0.1:0), its clock held still (so
/// that one run's times relate the same way every run) and its sweeper held back.
async fn start_daemon(name: &str) -> (RunningServer, Arc<ManualClock>) {
    let config = config_with(&data_dir(name), AWS_DOOR_SECTION);
    // Still on millisecond 123 of a second: fractions of seconds are the same every run,
    // so that the transcripts keep them (and the shape of every time) exact.
    let clock = Arc::new(ManualClock::default());
    clock.advance_ms((123 - clock.now_ms()).rem_euclid(1000));
    let server = server::start(
        &config,
        ServerOptions {
            clock: clock.clone(),
            sweep_interval: Some(std::time::Duration::from_secs(365 * 86_400)),
        },
    )
    .await
    .expect("daemon starts");
    (server, clock)
}

/// The AWS door's transcript, on a fresh daemon.
async fn aws_json_transcript() -> String {
    let (server, clock) = start_daemon("golden-aws").await;
    let addr = server.aws_json_addr.expect("the AWS door is enabled");
    let out = aws_script::run(addr, clock).await;
    server.shutdown().await.expect("shutdown");
    out
}

/// The gRPC door's transcript, on a fresh daemon.
async fn grpc_transcript() -> String {
    let (server, _clock) = start_daemon("golden-grpc").await;
    let out = grpc_script::run(server.addr).await;
    server.shutdown().await.expect("shutdown");
    out
}

fn golden_path(name: &str) -> PathBuf {
    manifest_dir().join("tests/golden").join(name)
}

/// The blocks of a transcript (each starting with its `=== ` line).
fn blocks(text: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = text.match_indices("=== ").map(|(i, _)| i).collect();
    starts.retain(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n');
    starts.push(text.len());
    starts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// A readable account of how `actual` differs from `expected`: per differing block, its title
/// and its first differing lines.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a) = (blocks(expected), blocks(actual));
    let mut out = String::new();
    if e.len() != a.len() {
        out.push_str(&format!(
            "{} blocks expected, {} recorded\n",
            e.len(),
            a.len()
        ));
    }
    let mut shown = 0;
    for i in 0..e.len().max(a.len()) {
        let (eb, ab) = (
            e.get(i).copied().unwrap_or(""),
            a.get(i).copied().unwrap_or(""),
        );
        if eb == ab {
            continue;
        }
        shown += 1;
        if shown > 12 {
            out.push_str("... more blocks differ\n");
            break;
        }
        let title = eb.lines().next().or(ab.lines().next()).unwrap_or("");
        out.push_str(&format!("--- block {}: {title}\n", i + 1));
        let (el, al): (Vec<&str>, Vec<&str>) = (eb.lines().collect(), ab.lines().collect());
        let differing = (0..el.len().max(al.len())).filter(|&j| el.get(j) != al.get(j));
        for j in differing.take(3) {
            out.push_str(&format!("  expected: {}\n", el.get(j).unwrap_or(&"<none>")));
            out.push_str(&format!("  actual:   {}\n", al.get(j).unwrap_or(&"<none>")));
        }
    }
    out
}

/// Fails with a readable diff when `actual` is not the golden file `name`.
fn compare(name: &str, actual: &str) {
    let path = golden_path(name);
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        expected == actual,
        "the wire output differs from {}:\n{}\n(if the change is intended: cargo test --test \
         golden -- --ignored bless_golden_files, and review the diff)",
        path.display(),
        diff(&expected, actual)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_json_door_answers_as_recorded() {
    compare("aws-json.txt", &aws_json_transcript().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_door_answers_as_recorded() {
    compare("grpc.txt", &grpc_transcript().await);
}

#[test]
fn the_diff_names_the_block_and_its_first_differing_line() {
    let expected = "=== 001 A\n< x\n=== 002 B\n< 1\n< 2\n";
    let actual = "=== 001 A\n< x\n=== 002 B\n< 1\n< 3\n";
    let d = diff(expected, actual);
    assert!(d.contains("block 2: === 002 B"), "{d}");
    assert!(d.contains("expected: < 2\n  actual:   < 3"), "{d}");
    assert!(!d.contains("block 1"), "{d}");
}

/// Rewrites the golden files from two runs of each script on fresh daemons, which must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites tests/golden/*.txt; run by hand after an intended change of the wire output"]
async fn bless_golden_files() {
    for (name, first, second) in [
        (
            "aws-json.txt",
            aws_json_transcript().await,
            aws_json_transcript().await,
        ),
        ("grpc.txt", grpc_transcript().await, grpc_transcript().await),
    ] {
        assert!(
            first == second,
            "two runs of the {name} script differ (normalise what varies):\n{}",
            diff(&first, &second)
        );
        std::fs::write(golden_path(name), first).unwrap();
    }
}
