//! `p11kms alias ...`: create, list and delete aliases.

use clap::Subcommand;
use serde_json::json;

use p11kms::api::aws_json::kms as door_render;
use p11kms::api::grpc::decode;
use p11kms::pb;

use super::io::print_json;
use super::session::{answer, Conn, Session};

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
    let sess = Session::open(&conn).await?;
    let mut c = sess.kms();
    match command {
        AliasCommand::Create { name, key } => {
            let request = pb::CreateAliasRequest {
                alias_name: name,
                target_key_id: key,
            };
            answer(c.create_alias(sess.k("CreateAlias", request)).await)?;
        }
        AliasCommand::List { key } => {
            let request = pb::ListAliasesRequest {
                key_id: key.unwrap_or_default(),
                limit: Some(1000),
                marker: String::new(),
            };
            let r = answer(c.list_aliases(sess.k("ListAliases", request)).await)?;
            let aliases: Vec<_> = r
                .aliases
                .into_iter()
                .map(|a| door_render::alias_entry(decode::alias_entry(a)))
                .collect();
            print_json(&json!({ "Aliases": aliases }));
        }
        AliasCommand::Delete { name } => {
            let request = pb::DeleteAliasRequest { alias_name: name };
            answer(c.delete_alias(sess.k("DeleteAlias", request)).await)?;
        }
    }
    Ok(())
}
