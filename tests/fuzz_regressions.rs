//! The fuzz targets' inputs in the normal suite (docs/security.md, "Fuzzing").
//!
//! - Every input a fuzz target ever failed on is kept in
//!   `tests/fixtures/fuzz-regressions/<target>/`, listed in that directory's `expected.txt`
//!   (`<file>\t<outcome>`), and goes through the very harness that found it
//!   (`fuzz/harness.rs`): it must return, without panicking, the outcome listed.
//! - Every committed seed (`fuzz/seeds/<target>/`) goes through its harness too, so a change
//!   that breaks a harness property (a round trip, a re-signed request that must verify) on a
//!   real input fails here and not only under `scripts/fuzz.sh`.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The regular files of `dir` except `expected.txt`, by name.
fn inputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.expect("directory entry"))
        .filter(|e| e.file_type().expect("file type").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| name != "expected.txt")
        .map(|(name, path)| (name, std::fs::read(path).expect("read input")))
        .collect()
}

fn expected(dir: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("expected.txt")) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, outcome) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("expected.txt line without a tab: {l:?}"));
            (file.to_string(), outcome.to_string())
        })
        .collect()
}

#[test]
fn every_target_has_a_fuzz_target_and_seeds() {
    for target in harness::TARGETS {
        let source = root().join(format!("fuzz/fuzz_targets/{target}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
        let seeds = inputs(&root().join("fuzz/seeds").join(target));
        assert!(!seeds.is_empty(), "no seeds for {target}");
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    assert_eq!(harness::run("no-such-target", b"", scratch.path()), None);
}

#[test]
fn every_crash_input_gives_its_expected_outcome() {
    let mut checked = 0;
    for target in harness::TARGETS {
        let dir = root().join("tests/fixtures/fuzz-regressions").join(target);
        let files = inputs(&dir);
        let want = expected(&dir);
        let listed: Vec<&String> = want.keys().collect();
        let present: Vec<&String> = files.keys().collect();
        assert_eq!(
            listed,
            present,
            "{}: expected.txt and the files differ",
            dir.display()
        );
        for (name, data) in &files {
            let scratch = tempfile::tempdir().expect("tempdir");
            let got = harness::run(target, data, scratch.path()).expect("known target");
            assert_eq!(&got, &want[name], "{target}/{name}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no regression inputs found");
}

#[test]
fn every_seed_goes_through_its_harness() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut outcomes = BTreeMap::new();
    for target in harness::TARGETS {
        for (name, data) in inputs(&root().join("fuzz/seeds").join(target)) {
            let got = harness::run(target, &data, scratch.path()).expect("known target");
            outcomes.insert(format!("{target}/{name}"), got);
        }
    }
    // The seeds are real inputs: the ones below are accepted as such, so the harnesses reach
    // past the first check.
    for (seed, want) in [
        ("ciphertext/v1-32", "accepted: version 1"),
        ("ciphertext/too-short", "rejected: TooShort"),
        ("sigv4/kms-encrypt", "verified"),
        ("sigv4/sts-query", "rejected: InvalidSignatureException"),
        ("sts_query/assume-role", "AssumeRole: accepted: 2 tags"),
        ("aws_json/Encrypt", "Encrypt: accepted"),
        (
            "identity_directory/account-credentials-guardrail",
            "accepted: 3 principals, 4 bindings, admin key true",
        ),
        ("audit_verify/segments-1-2-key", "4 records, 0 problems []"),
    ] {
        assert_eq!(outcomes.get(seed).map(String::as_str), Some(want), "{seed}");
    }
}

/// The XKS harness's "never quotes the body" check tells a quoted body from a body that is
/// a piece of the door's fixed wording.
#[test]
fn the_xks_quote_check_tells_an_echo_from_a_coincidence() {
    let body = br#""a secret the caller sent, quoted back""#;
    let echo = |b: &[u8]| Some(format!("bad input: {}", String::from_utf8_lossy(b)));
    assert!(harness::quotes_body(body, &echo(body).unwrap(), echo));
    let fixed = |_: &[u8]| Some(String::from("The request body is not valid JSON (line 1)."));
    let wording = b"The request body is not valid JSON";
    assert!(!harness::quotes_body(
        wording,
        &fixed(wording).unwrap(),
        fixed
    ));
    assert!(!harness::quotes_body(b"short", "short", echo));
}
