//! `p11kms key-store ...`: create, connect, disconnect, update, delete and describe custom key
//! stores (CloudHSM-type stores on the operator's `[[hsm.cluster]]` devices, and external key
//! stores reached through an XKS proxy), printed as the AWS CLI prints the same operations:
//! JSON for create and describe, nothing otherwise.
//!
//! The key store password (the token's user PIN) and the XKS proxy's secret access key never
//! come from argv, where other users can read them: they are read from a file or a named
//! environment variable into a zeroizing string.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use p11kms::api::aws_json::kms as door_render;
use p11kms::api::grpc::decode;
use p11kms::pb;
use p11kms::pb::admin_service_client::AdminServiceClient;

use super::io::{print_json, read_text};
use super::session::{answer, Conn, Session};

/// The `key-store` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeyStoreCommand {
    /// Create a custom key store on a configured HSM cluster; prints its id. The store
    /// starts DISCONNECTED.
    Create(CreateArgs),
    /// Connect a store: answers at once; the store goes CONNECTING, then CONNECTED or
    /// FAILED (watch it with `describe`).
    Connect { id: String },
    /// Disconnect a store: its keys become Unavailable until it is connected again.
    Disconnect { id: String },
    /// Rename a store, or (while disconnected) change its password or cluster.
    Update(UpdateArgs),
    /// Delete a disconnected store that holds no keys.
    Delete { id: String },
    /// Describe one store (by id or name) or all of them.
    Describe {
        #[arg(long, conflicts_with = "name")]
        id: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Move the default store's existing keys to token objects or wrapped blobs (the
    /// daemon's configured `[hsm] residency`), online, a batch of keys per call until none
    /// remains; lists the keys left where they are (exit code 1 if any).
    MigrateResidency(MigrateArgs),
}

/// Where `key-store migrate-residency` moves key material.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Token objects.
    Token,
    /// Blobs wrapped under the token's master key.
    Wrapped,
}

/// `key-store migrate-residency`'s options.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The residency to move to: the daemon's configured `[hsm] residency`.
    #[arg(long, value_enum)]
    to: Target,
    /// Keys the daemon looks at per call (1-1000).
    #[arg(long, default_value_t = 16)]
    batch: i32,
}

/// Where the key store password comes from: never argv.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// A file holding the key store password (the token's user PIN; one trailing newline is
    /// ignored). Update changes the password only when one is given (and only while
    /// disconnected).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[arg(long)]
    password_env: Option<String>,
}

/// The kind of store `key-store create` makes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreType {
    /// `AWS_CLOUDHSM`: a `[[hsm.cluster]]` device.
    #[default]
    Cloudhsm,
    /// `EXTERNAL_KEY_STORE`: an XKS proxy.
    External,
}

/// An external store's proxy settings (`--type external`, and `update`).
#[derive(Args, Debug)]
pub struct XksArgs {
    /// The proxy's `XksProxyUriEndpoint` (`https://host`, or `http://` to a loopback address).
    #[arg(long)]
    xks_endpoint: Option<String>,
    /// The proxy's `XksProxyUriPath` (`[/prefix]/kms/xks/v1`).
    #[arg(long)]
    xks_path: Option<String>,
    /// The access key id of the proxy credential.
    #[arg(long)]
    xks_access_key_id: Option<String>,
    /// A file holding the proxy credential's secret access key.
    #[arg(long, conflicts_with = "xks_secret_env")]
    xks_secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the secret access key.
    #[arg(long)]
    xks_secret_env: Option<String>,
}

/// `key-store create`'s options.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The store's name (unique in the account).
    #[arg(long)]
    name: String,
    /// The kind of store.
    #[arg(long = "type", value_enum, default_value_t)]
    store_type: StoreType,
    /// The `[[hsm.cluster]]` id (`cluster-` plus 11 characters; `--type cloudhsm`).
    #[arg(long)]
    cluster_id: Option<String>,
    /// The cluster's trust anchor certificate (PEM file; `--type cloudhsm`).
    #[arg(long)]
    trust_anchor_file: Option<PathBuf>,
    #[command(flatten)]
    password: PasswordSource,
    #[command(flatten)]
    xks: XksArgs,
}

/// `key-store update`'s options.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    id: String,
    #[arg(long)]
    new_name: Option<String>,
    /// Another cluster holding the same token (only while disconnected).
    #[arg(long)]
    cluster_id: Option<String>,
    #[command(flatten)]
    password: PasswordSource,
    #[command(flatten)]
    xks: XksArgs,
}

/// Runs a `key-store` subcommand: the session first, then the call.
pub async fn run(conn: Conn, command: KeyStoreCommand) -> Result<(), String> {
    let mut sess = Session::open(&conn).await?;
    let mut c = sess.kms();
    match command {
        KeyStoreCommand::Create(args) => create(&sess, args).await?,
        KeyStoreCommand::Connect { id } => {
            let request = pb::ConnectCustomKeyStoreRequest {
                custom_key_store_id: id,
            };
            let call = c.connect_custom_key_store(sess.k("ConnectCustomKeyStore", request));
            answer(call.await)?;
        }
        KeyStoreCommand::Disconnect { id } => {
            let request = pb::DisconnectCustomKeyStoreRequest {
                custom_key_store_id: id,
            };
            let call = c.disconnect_custom_key_store(sess.k("DisconnectCustomKeyStore", request));
            answer(call.await)?;
        }
        KeyStoreCommand::Update(args) => update(&sess, args).await?,
        KeyStoreCommand::Delete { id } => {
            let request = pb::DeleteCustomKeyStoreRequest {
                custom_key_store_id: id,
            };
            let call = c.delete_custom_key_store(sess.k("DeleteCustomKeyStore", request));
            answer(call.await)?;
        }
        KeyStoreCommand::Describe { id, name } => describe(&mut sess, id, name).await?,
        KeyStoreCommand::MigrateResidency(args) => migrate(&mut sess, args).await?,
    }
    Ok(())
}

/// `key-store migrate-residency`: calls MigrateResidency until nothing remains (or a call
/// looks at no key), printing progress, then the skipped keys; an error if any was skipped.
async fn migrate(sess: &mut Session, args: MigrateArgs) -> Result<(), String> {
    let to = match args.to {
        Target::Token => pb::Residency::Token,
        Target::Wrapped => pb::Residency::Wrapped,
    };
    let (mut moved, mut skipped, mut after) = (0usize, Vec::new(), String::new());
    loop {
        let request = pb::MigrateResidencyRequest {
            to: to as i32,
            limit: Some(args.batch),
            after: after.clone(),
            custom_key_store_id: String::new(),
        };
        let call = |ch, r| async move { AdminServiceClient::new(ch).migrate_residency(r).await };
        let r = sess
            .call("AdminService", "MigrateResidency", request, call)
            .await?;
        moved += r.moved_key_ids.len();
        if r.leftovers_destroyed > 0 {
            println!(
                "destroyed {} token object(s) an interrupted run left beside their blobs",
                r.leftovers_destroyed
            );
        }
        println!(
            "moved {} key(s) this call ({moved} in all), skipped {}, {} remaining",
            r.moved_key_ids.len(),
            r.skipped.len(),
            r.remaining
        );
        skipped.extend(r.skipped);
        if r.remaining == 0 || r.next_after.is_empty() {
            break;
        }
        after = r.next_after;
    }
    for s in &skipped {
        println!(
            "skipped {}: {}: {}",
            s.key_id,
            skip_name(s.reason),
            s.detail
        );
    }
    match skipped.len() {
        0 => Ok(()),
        n => Err(format!("{n} key(s) left where they are (listed above)")),
    }
}

/// A skip reason's name as the CLI prints it.
fn skip_name(reason: i32) -> &'static str {
    match pb::MigrationSkipReason::try_from(reason) {
        Ok(pb::MigrationSkipReason::MigrationSkipNeverExtractable) => "NEVER_EXTRACTABLE",
        Ok(pb::MigrationSkipReason::MigrationSkipKeyPair) => "KEY_PAIR",
        Ok(pb::MigrationSkipReason::MigrationSkipChanged) => "CHANGED",
        _ => "UNKNOWN",
    }
}

/// `key-store create`: `{"CustomKeyStoreId": ...}`.
async fn create(sess: &Session, args: CreateArgs) -> Result<(), String> {
    let request = match args.store_type {
        StoreType::External => external_create(args)?,
        StoreType::Cloudhsm => {
            let password = read_password(&args.password)?.ok_or(
                "give the key store password with --password-file FILE or --password-env VAR",
            )?;
            let (Some(cluster_id), Some(anchor)) = (args.cluster_id, args.trust_anchor_file) else {
                return Err("give --cluster-id and --trust-anchor-file".into());
            };
            pb::CreateCustomKeyStoreRequest {
                custom_key_store_name: args.name,
                cloud_hsm_cluster_id: cluster_id,
                trust_anchor_certificate: read_text(&anchor)?,
                key_store_password: password.to_string(),
                ..Default::default()
            }
        }
    };
    let mut c = sess.kms();
    let call = c.create_custom_key_store(sess.k("CreateCustomKeyStore", request));
    let r = answer(call.await)?;
    print_json(&json!({ "CustomKeyStoreId": r.custom_key_store_id }));
    Ok(())
}

/// `key-store update`: only the members given are sent.
async fn update(sess: &Session, args: UpdateArgs) -> Result<(), String> {
    let password = read_password(&args.password)?.unwrap_or_default();
    let xks = xks_fields(&args.xks)?;
    let request = pb::UpdateCustomKeyStoreRequest {
        custom_key_store_id: args.id,
        new_custom_key_store_name: args.new_name.unwrap_or_default(),
        key_store_password: password.to_string(),
        cloud_hsm_cluster_id: args.cluster_id.unwrap_or_default(),
        xks_proxy_uri_endpoint: xks.0,
        xks_proxy_uri_path: xks.1,
        xks_proxy_authentication_credential: xks.2,
        ..Default::default()
    };
    let mut c = sess.kms();
    let call = c.update_custom_key_store(sess.k("UpdateCustomKeyStore", request));
    answer(call.await).map(drop)
}

/// `key-store describe`: every page, as `{"CustomKeyStores": [...]}`. (Only this call goes
/// through the failover helper: the others change a store, are never sent again, and some
/// carry the store's password, which the helper would not copy but need not see.)
async fn describe(
    sess: &mut Session,
    id: Option<String>,
    name: Option<String>,
) -> Result<(), String> {
    let mut marker = String::new();
    let mut stores = Vec::new();
    loop {
        let request = pb::DescribeCustomKeyStoresRequest {
            custom_key_store_id: id.clone().unwrap_or_default(),
            custom_key_store_name: name.clone().unwrap_or_default(),
            limit: None,
            marker,
        };
        let r = sess
            .kms_call("DescribeCustomKeyStores", request, |mut c, r| async move {
                c.describe_custom_key_stores(r).await
            })
            .await?;
        for entry in r.custom_key_stores {
            let entry = decode::key_store_entry(entry)?;
            stores.push(door_render::key_store_entry(entry));
        }
        if !r.truncated {
            break;
        }
        marker = r.next_marker;
    }
    print_json(&json!({ "CustomKeyStores": stores }));
    Ok(())
}

/// `key-store create --type external`: the proxy settings, the secret from its file or
/// variable, connectivity `PUBLIC_ENDPOINT`.
fn external_create(args: CreateArgs) -> Result<pb::CreateCustomKeyStoreRequest, String> {
    if args.cluster_id.is_some() || args.trust_anchor_file.is_some() {
        return Err("--cluster-id and --trust-anchor-file are for --type cloudhsm".into());
    }
    let (endpoint, path, credential) = xks_fields(&args.xks)?;
    if endpoint.is_empty() || path.is_empty() || credential.is_none() {
        return Err("give --xks-endpoint, --xks-path, --xks-access-key-id and \
                    --xks-secret-file FILE or --xks-secret-env VAR"
            .into());
    }
    Ok(pb::CreateCustomKeyStoreRequest {
        custom_key_store_name: args.name,
        custom_key_store_type: "EXTERNAL_KEY_STORE".into(),
        xks_proxy_uri_endpoint: endpoint,
        xks_proxy_uri_path: path,
        xks_proxy_authentication_credential: credential,
        xks_proxy_connectivity: "PUBLIC_ENDPOINT".into(),
        ..Default::default()
    })
}

/// The endpoint, path and credential given (empty and `None` when not); a credential needs
/// both its access key id and its secret.
fn xks_fields(
    a: &XksArgs,
) -> Result<(String, String, Option<pb::XksProxyAuthenticationCredential>), String> {
    let secret = read_secret(a.xks_secret_file.as_deref(), a.xks_secret_env.as_deref())?;
    let credential = match (&a.xks_access_key_id, secret) {
        (Some(id), Some(secret)) => Some(pb::XksProxyAuthenticationCredential {
            access_key_id: id.clone(),
            raw_secret_access_key: secret.to_string(),
        }),
        (None, None) => None,
        _ => {
            return Err(
                "give --xks-access-key-id together with --xks-secret-file or --xks-secret-env"
                    .into(),
            )
        }
    };
    Ok((
        a.xks_endpoint.clone().unwrap_or_default(),
        a.xks_path.clone().unwrap_or_default(),
        credential,
    ))
}

/// The password from its file (one trailing newline dropped) or its environment variable;
/// `None` when neither is given.
pub(super) fn read_password(source: &PasswordSource) -> Result<Option<Zeroizing<String>>, String> {
    read_secret(
        source.password_file.as_deref(),
        source.password_env.as_deref(),
    )
}

/// A secret from its file (one trailing newline dropped) or its environment variable; `None`
/// when neither is given.
fn read_secret(
    file: Option<&std::path::Path>,
    var: Option<&str>,
) -> Result<Option<Zeroizing<String>>, String> {
    if let Some(path) = file {
        let mut text = Zeroizing::new(read_text(path)?);
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return Ok(Some(text));
    }
    match var {
        Some(var) => std::env::var(var)
            .map(|v| Some(Zeroizing::new(v)))
            .map_err(|_| format!("the environment variable {var} is not set (or not UTF-8)")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(file: Option<PathBuf>, env: Option<&str>) -> PasswordSource {
        PasswordSource {
            password_file: file,
            password_env: env.map(str::to_string),
        }
    }

    #[test]
    fn the_password_comes_from_a_file_without_its_newline_or_from_a_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-pin\r\n").unwrap();
        let got = read_password(&source(Some(file.clone()), None)).unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("s3cret-pin"));
        std::fs::write(&file, "two\nlines\n\n").unwrap();
        let got = read_password(&source(Some(file), None)).unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("two\nlines\n"));
        let missing = "P11KMS_TEST_UNSET_KEY_STORE_PASSWORD_VARIABLE";
        let e = read_password(&source(None, Some(missing))).unwrap_err();
        assert!(e.contains(missing), "{e}");
        assert!(read_password(&source(None, None)).unwrap().is_none());
    }
}
