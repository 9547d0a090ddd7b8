//! `p11kms grant ...`: create, list, retire and revoke grants.

use clap::{Args, Subcommand};
use serde_json::json;

use p11kms::api::aws_json::kms as door_render;
use p11kms::api::grpc::decode;
use p11kms::pb;

use super::io::{ctx, parse_pair, print_json};
use super::session::{Conn, Session};

/// The `grant` subcommands.
#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Create a grant.
    Create(CreateArgs),
    /// List a key's grants.
    List {
        #[arg(long)]
        key: String,
    },
    /// Retire a grant by token, or by key and grant id.
    Retire {
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        grant_id: Option<String>,
        /// Check the request without running it (DryRunOperationException when it would
        /// have succeeded).
        #[arg(long)]
        dry_run: bool,
    },
    /// Revoke a grant.
    Revoke {
        #[arg(long)]
        key: String,
        #[arg(long)]
        grant_id: String,
        /// Check the request without running it (DryRunOperationException when it would
        /// have succeeded).
        #[arg(long)]
        dry_run: bool,
    },
}

/// `grant create`'s options.
#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    key: String,
    #[arg(long)]
    grantee: String,
    /// Comma-separated operations, e.g. Decrypt,Encrypt.
    #[arg(long, value_delimiter = ',')]
    operations: Vec<String>,
    #[arg(long)]
    retiring: Option<String>,
    /// EncryptionContextSubset pair, repeatable.
    #[arg(long = "subset", value_parser = parse_pair)]
    subset: Vec<(String, String)>,
    /// EncryptionContextEquals pair, repeatable.
    #[arg(long = "equals", value_parser = parse_pair)]
    equals: Vec<(String, String)>,
    #[arg(long)]
    name: Option<String>,
    /// Check the request without running it (DryRunOperationException when it would
    /// have succeeded).
    #[arg(long)]
    dry_run: bool,
}

/// Runs a `grant` subcommand: the session first, then the one call.
pub async fn run(conn: Conn, command: GrantCommand) -> Result<(), String> {
    let mut sess = Session::open(&conn).await?;
    match command {
        GrantCommand::Create(args) => {
            let request = create_request(args);
            let r = sess
                .kms_call("CreateGrant", request, |mut c, r| async move {
                    c.create_grant(r).await
                })
                .await?;
            print_json(&json!({"GrantId": r.grant_id, "GrantToken": r.grant_token}));
        }
        GrantCommand::List { key } => {
            let request = pb::ListGrantsRequest {
                key_id: key,
                limit: Some(1000),
                ..Default::default()
            };
            let r = sess
                .kms_call("ListGrants", request, |mut c, r| async move {
                    c.list_grants(r).await
                })
                .await?;
            let grants: Vec<_> = r
                .grants
                .into_iter()
                .map(|g| door_render::grant_entry(decode::grant_entry(g)))
                .collect();
            print_json(&json!({ "Grants": grants }));
        }
        GrantCommand::Retire {
            token,
            key,
            grant_id,
            dry_run,
        } => {
            let request = pb::RetireGrantRequest {
                grant_token: token.unwrap_or_default(),
                key_id: key.unwrap_or_default(),
                grant_id: grant_id.unwrap_or_default(),
                dry_run,
            };
            sess.kms_call("RetireGrant", request, |mut c, r| async move {
                c.retire_grant(r).await
            })
            .await?;
        }
        GrantCommand::Revoke {
            key,
            grant_id,
            dry_run,
        } => {
            let request = pb::RevokeGrantRequest {
                key_id: key,
                grant_id,
                dry_run,
            };
            sess.kms_call("RevokeGrant", request, |mut c, r| async move {
                c.revoke_grant(r).await
            })
            .await?;
        }
    }
    Ok(())
}

/// The CreateGrant request; constraints only for the kinds given, none when neither is.
fn create_request(args: CreateArgs) -> pb::CreateGrantRequest {
    let constraint = |pairs: Vec<(String, String)>| {
        (!pairs.is_empty()).then(|| pb::EncryptionContextConstraint { pairs: ctx(pairs) })
    };
    let subset = constraint(args.subset);
    let equals = constraint(args.equals);
    let constraints = (subset.is_some() || equals.is_some()).then_some(pb::GrantConstraints {
        encryption_context_subset: subset,
        encryption_context_equals: equals,
    });
    pb::CreateGrantRequest {
        key_id: args.key,
        grantee_principal: args.grantee,
        retiring_principal: args.retiring.unwrap_or_default(),
        operations: args.operations,
        constraints,
        grant_tokens: vec![],
        name: args.name.unwrap_or_default(),
        dry_run: args.dry_run,
    }
}
