//! The policy CLI (issue 3): `p11kms policy eval FILE [--check]` over the shared test vectors,
//! and `p11kms policy explain` against a live daemon.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

fn cases_path() -> PathBuf {
    manifest_dir().join("tests/fixtures/policy-cases/cases.json")
}

fn p11kms(args: &[&str]) -> (Option<i32>, String, String) {
    let out = p11kms_command().args(args).output().expect("run p11kms");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn load_cases(path: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `(name, expected)` for every case of a file.
fn expectations(path: &Path) -> Vec<(String, String)> {
    load_cases(path)
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["expected"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn printed(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|l| {
            let (name, decision) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not '<name> Allow|Deny': {l:?}"));
            assert!(
                decision == "Allow" || decision == "Deny",
                "not '<name> Allow|Deny': {l:?}"
            );
            (name.to_string(), decision.to_string())
        })
        .collect()
}

#[test]
fn policy_eval_check_passes_every_shared_case() {
    let path = cases_path();
    let want = expectations(&path);
    assert_eq!(want.len(), 43, "the policy vectors hold 43 cases");
    let (code, stdout, stderr) = p11kms(&["policy", "eval", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(printed(&stdout), want);
    // Both decisions occur, so the output cannot be a constant.
    assert!(want.iter().any(|(_, d)| d == "Allow"));
    assert!(want.iter().any(|(_, d)| d == "Deny"));
}

#[test]
fn policy_eval_check_fails_on_a_flipped_expectation() {
    let mut cases = load_cases(&cases_path());
    let flipped = cases[7]["name"].as_str().unwrap().to_string();
    let actual = cases[7]["expected"].as_str().unwrap().to_string();
    let other = if actual == "Allow" { "Deny" } else { "Allow" };
    cases[7]["expected"] = json!(other);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cases).unwrap()).unwrap();

    let (code, stdout, stderr) = p11kms(&["policy", "eval", path.to_str().unwrap(), "--check"]);
    assert!(
        matches!(code, Some(c) if c != 0),
        "a mismatch must exit non-zero: {code:?}\n{stdout}\n{stderr}"
    );
    // It still prints every decision, and the flipped case shows what the evaluator decided.
    let lines = printed(&stdout);
    assert_eq!(lines.len(), cases.len());
    assert!(lines.contains(&(flipped.clone(), actual)), "{stdout}");
    assert!(stderr.contains(&flipped), "the mismatch is named: {stderr}");

    // Without --check nothing is compared.
    let (code, stdout, _) = p11kms(&["policy", "eval", path.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert_eq!(printed(&stdout).len(), cases.len());
}

#[test]
fn policy_eval_rejects_a_file_that_is_not_cases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, "{\"not\": \"an array\"}").unwrap();
    let (code, _, _) = p11kms(&["policy", "eval", path.to_str().unwrap(), "--check"]);
    assert!(matches!(code, Some(c) if c != 0), "{code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_explain_reports_the_live_decision() {
    let (_dir, server, mut admin) = start_admin("cli-explain").await;
    let deny_hr = json!({"Sid": "DenyHR", "Effect": "Deny", "Principal": "*",
        "Action": "kms:Decrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:dept": "hr"}}});
    let users = ["kms:Encrypt", "kms:Decrypt"];
    let policy = admin_and_user_policy(ADMIN, USER1, &users, &[deny_hr]).to_string();
    let key = create_key_with_policy(&mut admin, policy).await;
    let as_admin = cli_connection(server.addr.port(), "admin");
    let as_user2 = cli_connection(server.addr.port(), "user2");
    let result = tokio::task::spawn_blocking(move || {
        let run = |conn: &[String], principal: &str, ctx: &[&str]| {
            let mut args = vec![
                "policy".to_string(),
                "explain".into(),
                "--principal".into(),
                principal.into(),
                "--action".into(),
                "kms:Decrypt".into(),
                "--key".into(),
                key.clone(),
            ];
            for c in ctx {
                args.push("--context".into());
                args.push(c.to_string());
            }
            args.extend(conn.iter().cloned());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            p11kms(&refs)
        };

        let (code, out, err) = run(&as_admin, USER1, &["dept=finance"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v["Decision"], "Allow", "{v}");
        let statements = v["DecidingStatements"].as_array().unwrap();
        assert!(
            statements
                .iter()
                .any(|s| s.to_string().contains("KeyUsers")),
            "{v}"
        );

        let (code, out, err) = run(&as_admin, USER1, &["dept=hr"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v["Decision"], "Deny", "{v}");
        assert!(
            v["DecidingStatements"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.to_string().contains("DenyHR")),
            "{v}"
        );

        let (code, out, err) = run(&as_admin, USER2, &[]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v["Decision"], "Deny", "{v}");

        // user2 has no p11kms:ExplainAccess.
        let (code, out, err) = run(&as_user2, USER1, &[]);
        assert!(matches!(code, Some(c) if c != 0), "{out}\n{err}");
        assert!(err.contains("AccessDenied"), "{err}");
    })
    .await;
    server.shutdown().await.unwrap();
    result.unwrap();
}
