//! The CLI prints what the AWS door prints (issue 12, item 17): no `null` members, no empty
//! strings for members AWS leaves out, and the same members as the door. The real binary runs
//! against the real daemon, in a clean environment; the door's answer comes from the door's own
//! operations, called for the same caller.

mod common;

use common::*;
use p11kms::api::aws_json::kms::operation;
use p11kms::identity::{AuthMethod, Caller};
use p11kms::server::RunningServer;
use serde_json::{json, Value};

/// `p11kms ARGS` as the admin certificate, without the ambient environment: its stdout.
fn run(server: &RunningServer, args: &[&str]) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let out = hermetic_command(env!("CARGO_BIN_EXE_p11kms"), scratch.path())
        .args(args)
        .args(cli_connection(server.addr.port(), "admin"))
        .output()
        .unwrap();
    assert_succeeded(&out, format_args!("p11kms {args:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON a CLI command prints.
fn cli(server: &RunningServer, args: &[&str]) -> Value {
    let stdout = run(server, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The AWS door's response body for `target` with `input`, as the admin.
async fn door(server: &RunningServer, target: &str, input: Value) -> Value {
    let principal = server.kms.directory().current().principal(ADMIN).unwrap();
    let caller = Caller::new(principal, AuthMethod::Internal, None, true);
    let op = operation(&format!("TrentService.{target}")).unwrap();
    let call = (op.prepare)(server.kms.clone(), caller, input).unwrap();
    call.call.await.unwrap().body
}

/// Every `null` member or empty-string value, by path.
fn nulls_and_empties(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => out.push(path.to_string()),
        Value::String(s) if s.is_empty() && !path.ends_with("Description") => {
            out.push(path.to_string())
        }
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| nulls_and_empties(v, &format!("{path}.{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| nulls_and_empties(v, &format!("{path}[{i}]"), out)),
        _ => {}
    }
}

fn assert_aws_shape(what: &str, cli: &Value, door: &Value) {
    let mut bad = Vec::new();
    nulls_and_empties(cli, what, &mut bad);
    assert!(
        bad.is_empty(),
        "{what}: null or empty members {bad:?} in {cli:#}"
    );
    assert_eq!(cli, door, "{what}: the CLI and the AWS door differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_has_the_aws_doors_shape() {
    let dir = data_dir("cli-output");
    let server = start(&dir).await;
    let s = &server;
    let key = cli(s, &["key", "create"])["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();

    let described = cli(s, &["key", "describe", &key]);
    let want = door(s, "DescribeKey", json!({"KeyId": key})).await;
    assert_aws_shape("describe", &described, &want);
    assert_eq!(described["KeyMetadata"]["Description"], "", "AWS prints it");

    run(s, &["alias", "create", "alias/cli-output", &key]);
    let aliases = cli(s, &["alias", "list", "--key", &key]);
    let want = door(s, "ListAliases", json!({"KeyId": key})).await;
    assert_aws_shape("aliases", &aliases["Aliases"], &want["Aliases"]);

    cli(
        s,
        &[
            "grant",
            "create",
            "--key",
            &key,
            "--grantee",
            "arn:aws:iam::111122223333:user/bob",
            "--operations",
            "Decrypt",
        ],
    );
    let grants = cli(s, &["grant", "list", "--key", &key]);
    let want = door(s, "ListGrants", json!({"KeyId": key})).await;
    assert_aws_shape("grants", &grants["Grants"], &want["Grants"]);

    let status = cli(s, &["key", "rotation-status", &key]);
    let want = door(s, "GetKeyRotationStatus", json!({"KeyId": key})).await;
    assert_aws_shape("rotation status", &status, &want);
    cli(s, &["key", "rotate", &key]);
    let rotations = cli(s, &["key", "list-rotations", &key]);
    let want = door(s, "ListKeyRotations", json!({"KeyId": key})).await;
    assert_aws_shape("rotations", &rotations["Rotations"], &want["Rotations"]);

    let deleted = cli(s, &["key", "schedule-deletion", &key, "--days", "7"]);
    assert!(deleted["DeletionDate"].is_number(), "{deleted}");
    let described = cli(s, &["key", "describe", &key]);
    let want = door(s, "DescribeKey", json!({"KeyId": key})).await;
    assert_aws_shape("pending deletion", &described, &want);
    assert_eq!(described["KeyMetadata"]["PendingDeletionWindowInDays"], 7);
    server.shutdown().await.unwrap();
}
