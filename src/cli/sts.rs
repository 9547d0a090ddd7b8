//! `p11kms sts ...`: temporary credentials (AssumeRole) and the caller's identity, printed
//! like `aws sts`.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;
use zeroize::Zeroizing;

use p11kms::pb;
use p11kms::pb::security_token_service_client::SecurityTokenServiceClient as StsClient;

use super::io::{parse_pair, pb_tags, print_json, read_optional};
use super::session::{Conn, Session};

/// The STS service's name in the gRPC method path.
const STS: &str = "SecurityTokenService";

/// The `sts` subcommands.
#[derive(Subcommand, Debug)]
pub enum StsCommand {
    /// Assume a role; prints temporary credentials as JSON, like `aws sts assume-role`.
    AssumeRole {
        #[arg(long)]
        role_arn: String,
        #[arg(long)]
        role_session_name: String,
        #[arg(long)]
        duration_seconds: Option<i32>,
        /// Optional session policy document file.
        #[arg(long)]
        policy_file: Option<PathBuf>,
        /// Session tag pair, repeatable.
        #[arg(long = "tag", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
    },
    /// Print who you are.
    GetCallerIdentity,
}

/// Runs an `sts` subcommand: the session first, then the one call.
pub async fn run(conn: Conn, command: StsCommand) -> Result<(), String> {
    let mut sess = Session::open(&conn).await?;
    match command {
        StsCommand::AssumeRole {
            role_arn,
            role_session_name,
            duration_seconds,
            policy_file,
            tags,
        } => {
            let request = pb::AssumeRoleRequest {
                role_arn,
                role_session_name,
                duration_seconds,
                policy: read_optional(policy_file)?,
                tags: pb_tags(tags),
            };
            assume_role(&mut sess, request).await
        }
        StsCommand::GetCallerIdentity => {
            let request = pb::GetCallerIdentityRequest {};
            let call = |ch, r| async move { StsClient::new(ch).get_caller_identity(r).await };
            let r = sess.call(STS, "GetCallerIdentity", request, call).await?;
            print_json(&json!({"UserId": r.user_id, "Account": r.account, "Arn": r.arn}));
            Ok(())
        }
    }
}

/// AssumeRole; the secret and the session token are zeroized once printed.
async fn assume_role(sess: &mut Session, request: pb::AssumeRoleRequest) -> Result<(), String> {
    // Through the failover helper, which never sends AssumeRole again (a second session).
    let call = |ch, r| async move { StsClient::new(ch).assume_role(r).await };
    let r = sess.call(STS, "AssumeRole", request, call).await?;
    let creds = r.credentials.unwrap_or_default();
    let user = r.assumed_role_user.unwrap_or_default();
    let secret = Zeroizing::new(creds.secret_access_key);
    let token = Zeroizing::new(creds.session_token);
    print_json(&json!({
        "Credentials": {
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": secret.as_str(),
            "SessionToken": token.as_str(),
            "Expiration": ts(&creds.expiration),
        },
        "AssumedRoleUser": {"AssumedRoleId": user.assumed_role_id, "Arn": user.arn},
    }));
    Ok(())
}

/// A timestamp as fractional Unix seconds, as `aws sts` prints it (null when absent).
fn ts(t: &Option<prost_types::Timestamp>) -> serde_json::Value {
    t.as_ref()
        .map(|t| json!(t.seconds as f64 + f64::from(t.nanos) / 1e9))
        .unwrap_or(serde_json::Value::Null)
}
