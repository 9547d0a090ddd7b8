//! `p11kms policy ...`: offline evaluation of policy test vectors (`eval`, no daemon), and
//! asking the daemon how it would decide a request (`explain`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use p11kms::pb;
use p11kms::pb::admin_service_client::AdminServiceClient;

use super::io::{ctx, parse_pair, print_json, read_text};
use super::session::{Conn, Session};

/// The `policy` subcommands.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Evaluate a JSON array of cases (the format of tests/fixtures/policy-cases/cases.json) offline
    /// and print `<name> Allow|Deny` per case.
    Eval {
        file: PathBuf,
        /// Compare with each case's `expected`; exit non-zero on any mismatch.
        #[arg(long)]
        check: bool,
    },
    /// Ask the daemon how it would decide a request (needs p11kms:ExplainAccess).
    Explain(Box<ExplainArgs>),
}

/// `policy explain`'s arguments.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    conn: Conn,
    /// The principal ARN to evaluate for.
    #[arg(long)]
    principal: String,
    /// The action, e.g. kms:Decrypt.
    #[arg(long)]
    action: String,
    /// Key id, key ARN, alias name or alias ARN (left out for the custom key store actions,
    /// which apply to no key).
    #[arg(long)]
    key: Option<String>,
    /// Encryption context pair, repeatable.
    #[arg(long = "context", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Evaluate as if the request came from this address (aws:SourceIp).
    #[arg(long)]
    source_ip: Option<String>,
    /// Evaluate as the XKS door does: the request's requestMetadata as JSON (as its audit
    /// event records it), e.g. '{"awsPrincipalArn": "arn:aws:iam::111122223333:role/App",
    /// "kmsViaService": "s3"}'. --principal is then the XKS key store's principal and --key
    /// may be an external key id (alias.<name>).
    #[arg(long, value_name = "JSON")]
    xks_request_metadata: Option<String>,
}

/// Runs a `policy` subcommand: `eval` without a runtime, `explain` as a client command.
pub fn run(command: PolicyCommand) -> Result<ExitCode, String> {
    match command {
        PolicyCommand::Eval { file, check } => eval(&file, check),
        PolicyCommand::Explain(args) => super::online(explain(*args)),
    }
}

/// `policy eval`: one `<name> Allow|Deny` line per case; with `check`, each mismatch and a
/// summary on standard error, and exit code 1 when any case mismatches.
fn eval(file: &std::path::Path, check: bool) -> Result<ExitCode, String> {
    let text = read_text(file)?;
    let outcomes = p11kms::policy::cases::run_text(&text).map_err(|e| e.to_string())?;
    let mut failed = 0usize;
    for o in &outcomes {
        println!("{} {}", o.name, o.decision.effect.as_str());
        if check && !o.passed() {
            failed += 1;
            eprintln!(
                "MISMATCH {}: expected {}, got {} ({})",
                o.name,
                o.expected.map(|e| e.as_str()).unwrap_or("-"),
                o.decision.effect.as_str(),
                o.decision.summary()
            );
        }
    }
    if check {
        eprintln!(
            "{} cases match, {} mismatch",
            outcomes.len() - failed,
            failed
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The members of `--xks-request-metadata`: a JSON object of strings.
fn xks_members(json: Option<&str>) -> Result<std::collections::BTreeMap<String, String>, String> {
    let Some(text) = json else {
        return Ok(Default::default());
    };
    serde_json::from_str(text)
        .map_err(|e| format!("--xks-request-metadata is not a JSON object of strings: {e}"))
}

/// `policy explain`: the daemon's decision, reason and deciding statements as JSON.
async fn explain(args: ExplainArgs) -> Result<(), String> {
    let mut sess = Session::open(&args.conn).await?;
    let request = pb::ExplainAccessRequest {
        principal: args.principal,
        action: args.action,
        key_id: args.key.unwrap_or_default(),
        encryption_context: ctx(args.context),
        source_ip: args.source_ip.unwrap_or_default(),
        xks_request_metadata: xks_members(args.xks_request_metadata.as_deref())?,
    };
    let call = |ch, r| async move { AdminServiceClient::new(ch).explain_access(r).await };
    let r = sess
        .call("AdminService", "ExplainAccess", request, call)
        .await?;
    let statements: Vec<_> = r
        .deciding_statements
        .iter()
        .map(|d| json!({"PolicyType": d.policy_type, "PolicyName": d.policy_name, "Statement": d.statement}))
        .collect();
    print_json(&json!({
        "Decision": r.decision,
        "Reason": r.reason,
        "Resource": r.resource,
        "DecidingStatements": statements,
        "Message": r.message,
    }));
    Ok(())
}
