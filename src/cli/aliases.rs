//! `p11kms alias ...`: create, list and delete aliases.

use clap::Subcommand;
use serde_json::json;

use p11kms::api::aws_json::kms as door_render;
use p11kms::api::grpc::decode;
use p11kms::pb;

use super::io::print_json;
use super::session::{Conn, Session};

/// The `alias` subcommands.
#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Create an alias (`alias/...`) for a key.
    Create { name: String, key: String },
    /// List aliases.
    List {
        #[arg(long)]
        key: Option<String>,
    },
    /// Delete an alias.
    Delete { name: String },
}

/// Runs an `alias` subcommand: the session first, then the one call.
pub async fn run(conn: Conn, command: AliasCommand) -> Result<(), String> {
    let mut sess = Session::open(&conn).await?;
    match command {
        AliasCommand::Create { name, key } => {
            let request = pb::CreateAliasRequest {
                alias_name: name,
                target_key_id: key,
            };
            sess.kms_call("CreateAlias", request, |mut c, r| async move {
                c.create_alias(r).await
            })
            .await?;
        }
        AliasCommand::List { key } => {
            let request = pb::ListAliasesRequest {
                key_id: key.unwrap_or_default(),
                limit: Some(1000),
                marker: String::new(),
            };
            let r = sess
                .kms_call("ListAliases", request, |mut c, r| async move {
                    c.list_aliases(r).await
                })
                .await?;
            let aliases: Vec<_> = r
                .aliases
                .into_iter()
                .map(|a| door_render::alias_entry(decode::alias_entry(a)))
                .collect();
            print_json(&json!({ "Aliases": aliases }));
        }
        AliasCommand::Delete { name } => {
            let request = pb::DeleteAliasRequest { alias_name: name };
            sess.kms_call("DeleteAlias", request, |mut c, r| async move {
                c.delete_alias(r).await
            })
            .await?;
        }
    }
    Ok(())
}
