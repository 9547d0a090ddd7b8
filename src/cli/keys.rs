//! `p11kms key ...` (lifecycle, deletion, rotation, key policy) and
//! `p11kms get-key-last-usage`, printed as the AWS door renders the same answers.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use p11kms::api::aws_json::kms as door_render;
use p11kms::api::grpc::decode;
use p11kms::pb;

use super::io::{parse_pair, pb_tags, print_json, read_optional, read_text};
use super::session::{Conn, Session};

/// The `key` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key (symmetric by default; see docs/key-types.md for the other specs).
    Create(CreateArgs),
    /// List keys.
    List {
        #[arg(long)]
        limit: Option<i32>,
    },
    /// Describe a key.
    Describe { key: String },
    /// Enable a key.
    Enable { key: String },
    /// Disable a key.
    Disable { key: String },
    /// Schedule deletion after 7-30 days.
    ScheduleDeletion {
        key: String,
        #[arg(long)]
        days: Option<i32>,
    },
    /// Cancel a scheduled deletion (the key is left Disabled).
    CancelDeletion { key: String },
    /// Turn on automatic rotation (every 90-2560 days; 365 by default).
    EnableRotation {
        key: String,
        #[arg(long)]
        period_days: Option<i32>,
    },
    /// Turn off automatic rotation.
    DisableRotation { key: String },
    /// Show whether automatic rotation is on and when the next one is due.
    RotationStatus { key: String },
    /// Rotate now: a new key version on the HSM; older versions keep decrypting.
    Rotate { key: String },
    /// List a key's rotations (its key material versions).
    ListRotations { key: String },
    /// Print a key's policy document.
    GetPolicy { key: String },
    /// Replace a key's policy document.
    PutPolicy(PutPolicyArgs),
}

/// `key create`'s options.
#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long, default_value = "")]
    description: String,
    /// SYMMETRIC_DEFAULT (default), RSA_2048/3072/4096, ECC_NIST_P256/P384/P521,
    /// ECC_SECG_P256K1, HMAC_224/256/384/512.
    #[arg(long)]
    key_spec: Option<String>,
    /// ENCRYPT_DECRYPT (default), SIGN_VERIFY or GENERATE_VERIFY_MAC.
    #[arg(long)]
    key_usage: Option<String>,
    /// AWS_KMS (default), EXTERNAL (bring your own key material), AWS_CLOUDHSM (the default
    /// with --custom-key-store-id) or EXTERNAL_KEY_STORE (the default with --xks-key-id).
    #[arg(long)]
    origin: Option<String>,
    /// Create the key in this custom key store (which must be CONNECTED).
    #[arg(long)]
    custom_key_store_id: Option<String>,
    /// The external key (its id on the XKS proxy) backing a key in an external key store.
    #[arg(long, requires = "custom_key_store_id")]
    xks_key_id: Option<String>,
    /// Tag pair, repeatable.
    #[arg(long = "tag", value_parser = parse_pair)]
    tags: Vec<(String, String)>,
    /// A key policy document file.
    #[arg(long)]
    policy_file: Option<PathBuf>,
}

/// `key put-policy`'s arguments.
#[derive(Args, Debug)]
pub struct PutPolicyArgs {
    key: String,
    #[arg(long)]
    policy_file: PathBuf,
    /// Skip the check that you can still change the policy afterwards (dangerous).
    #[arg(long)]
    bypass_policy_lockout_safety_check: bool,
}

/// `get-key-last-usage`'s arguments.
#[derive(Args, Debug)]
pub struct GetKeyLastUsageArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long)]
    key: String,
}

/// Runs a `key` subcommand: the session first, then the one call.
pub async fn run(conn: Conn, command: KeyCommand) -> Result<(), String> {
    let mut sess = Session::open(&conn).await?;
    match command {
        KeyCommand::Create(args) => create(&mut sess, args).await,
        KeyCommand::List { limit } => list(&mut sess, limit).await,
        KeyCommand::Describe { key } => describe(&mut sess, key).await,
        KeyCommand::Enable { key } => {
            let request = pb::EnableKeyRequest { key_id: key };
            sess.kms_call("EnableKey", request, |mut c, r| async move {
                c.enable_key(r).await
            })
            .await
            .map(drop)
        }
        KeyCommand::Disable { key } => {
            let request = pb::DisableKeyRequest { key_id: key };
            sess.kms_call("DisableKey", request, |mut c, r| async move {
                c.disable_key(r).await
            })
            .await
            .map(drop)
        }
        KeyCommand::ScheduleDeletion { key, days } => schedule_deletion(&mut sess, key, days).await,
        KeyCommand::CancelDeletion { key } => cancel_deletion(&mut sess, key).await,
        KeyCommand::GetPolicy { key } => get_policy(&mut sess, key).await,
        KeyCommand::PutPolicy(args) => put_policy(&mut sess, args).await,
        KeyCommand::EnableRotation { key, period_days } => {
            enable_rotation(&mut sess, key, period_days).await
        }
        KeyCommand::DisableRotation { key } => {
            let request = pb::DisableKeyRotationRequest { key_id: key };
            sess.kms_call("DisableKeyRotation", request, |mut c, r| async move {
                c.disable_key_rotation(r).await
            })
            .await
            .map(drop)
        }
        KeyCommand::RotationStatus { key } => rotation_status(&mut sess, key).await,
        KeyCommand::Rotate { key } => rotate(&mut sess, key).await,
        KeyCommand::ListRotations { key } => list_rotations(&mut sess, key).await,
    }
}

/// `key create`: the policy file is read after the session is open.
async fn create(sess: &mut Session, args: CreateArgs) -> Result<(), String> {
    let request = pb::CreateKeyRequest {
        description: args.description,
        policy: read_optional(args.policy_file)?,
        key_spec: args.key_spec.unwrap_or_default(),
        key_usage: args.key_usage.unwrap_or_default(),
        origin: origin(
            args.origin,
            args.custom_key_store_id.is_some(),
            args.xks_key_id.is_some(),
        ),
        custom_key_store_id: args.custom_key_store_id.unwrap_or_default(),
        xks_key_id: args.xks_key_id.unwrap_or_default(),
        tags: pb_tags(args.tags),
        ..Default::default()
    };
    // Through the failover helper, which never sends CreateKey again (a second key).
    let r = sess
        .kms_call("CreateKey", request, |mut c, r| async move {
            c.create_key(r).await
        })
        .await?;
    print_metadata(r.key_metadata)
}

/// The origin sent: the one given, else EXTERNAL_KEY_STORE for a key with an external key,
/// AWS_CLOUDHSM for another key in a custom key store, else none (the daemon's default,
/// AWS_KMS).
fn origin(given: Option<String>, in_key_store: bool, external: bool) -> String {
    match given {
        Some(o) => o,
        None if external => "EXTERNAL_KEY_STORE".into(),
        None if in_key_store => "AWS_CLOUDHSM".into(),
        None => String::new(),
    }
}

/// `key list`: every page, or only the first `limit` keys when a limit is given.
async fn list(sess: &mut Session, limit: Option<i32>) -> Result<(), String> {
    let mut marker = String::new();
    let mut keys = Vec::new();
    loop {
        let request = pb::ListKeysRequest {
            limit,
            marker: marker.clone(),
        };
        let r = sess
            .kms_call("ListKeys", request, |mut c, r| async move {
                c.list_keys(r).await
            })
            .await?;
        keys.extend(
            r.keys
                .iter()
                .map(|k| json!({"KeyId": k.key_id, "KeyArn": k.key_arn})),
        );
        if !r.truncated || limit.is_some() {
            break;
        }
        marker = r.next_marker;
    }
    print_json(&json!({ "Keys": keys }));
    Ok(())
}

async fn describe(sess: &mut Session, key: String) -> Result<(), String> {
    let request = pb::DescribeKeyRequest {
        key_id: key,
        grant_tokens: vec![],
    };
    let r = sess
        .kms_call("DescribeKey", request, |mut c, r| async move {
            c.describe_key(r).await
        })
        .await?;
    print_metadata(r.key_metadata)
}

/// `{"KeyMetadata": ...}` as the AWS door renders it (one renderer for both), when present.
fn print_metadata(m: Option<pb::KeyMetadata>) -> Result<(), String> {
    if let Some(m) = m {
        let metadata = door_render::metadata(&decode::key_metadata(m)?);
        print_json(&json!({ "KeyMetadata": metadata }));
    }
    Ok(())
}

async fn schedule_deletion(
    sess: &mut Session,
    key: String,
    days: Option<i32>,
) -> Result<(), String> {
    let request = pb::ScheduleKeyDeletionRequest {
        key_id: key,
        pending_window_in_days: days,
    };
    let r = sess
        .kms_call("ScheduleKeyDeletion", request, |mut c, r| async move {
            c.schedule_key_deletion(r).await
        })
        .await?;
    print_json(&door_render::scheduled_deletion(
        &decode::scheduled_deletion(r)?,
    ));
    Ok(())
}

async fn cancel_deletion(sess: &mut Session, key: String) -> Result<(), String> {
    let request = pb::CancelKeyDeletionRequest { key_id: key };
    let r = sess
        .kms_call("CancelKeyDeletion", request, |mut c, r| async move {
            c.cancel_key_deletion(r).await
        })
        .await?;
    print_json(&json!({ "KeyId": r.key_id }));
    Ok(())
}

/// `key get-policy`: the document as stored, not re-formatted.
async fn get_policy(sess: &mut Session, key: String) -> Result<(), String> {
    let request = pb::GetKeyPolicyRequest {
        key_id: key,
        policy_name: String::new(),
    };
    let r = sess
        .kms_call("GetKeyPolicy", request, |mut c, r| async move {
            c.get_key_policy(r).await
        })
        .await?;
    println!("{}", r.policy);
    Ok(())
}

/// `key put-policy`: the policy file is read after the session is open.
async fn put_policy(sess: &mut Session, args: PutPolicyArgs) -> Result<(), String> {
    let request = pb::PutKeyPolicyRequest {
        key_id: args.key,
        policy_name: String::new(),
        policy: read_text(&args.policy_file)?,
        bypass_policy_lockout_safety_check: args.bypass_policy_lockout_safety_check,
    };
    sess.kms_call("PutKeyPolicy", request, |mut c, r| async move {
        c.put_key_policy(r).await
    })
    .await
    .map(drop)
}

async fn enable_rotation(sess: &mut Session, key: String, days: Option<i32>) -> Result<(), String> {
    let request = pb::EnableKeyRotationRequest {
        key_id: key,
        rotation_period_in_days: days,
    };
    sess.kms_call("EnableKeyRotation", request, |mut c, r| async move {
        c.enable_key_rotation(r).await
    })
    .await
    .map(drop)
}

async fn rotation_status(sess: &mut Session, key: String) -> Result<(), String> {
    let request = pb::GetKeyRotationStatusRequest { key_id: key };
    let r = sess
        .kms_call("GetKeyRotationStatus", request, |mut c, r| async move {
            c.get_key_rotation_status(r).await
        })
        .await?;
    print_json(&door_render::rotation_status(&decode::rotation_status(r)));
    Ok(())
}

async fn rotate(sess: &mut Session, key: String) -> Result<(), String> {
    let request = pb::RotateKeyOnDemandRequest { key_id: key };
    let r = sess
        .kms_call("RotateKeyOnDemand", request, |mut c, r| async move {
            c.rotate_key_on_demand(r).await
        })
        .await?;
    print_json(&json!({ "KeyId": r.key_id }));
    Ok(())
}

/// `key list-rotations`: every page.
async fn list_rotations(sess: &mut Session, key: String) -> Result<(), String> {
    let mut marker = String::new();
    let mut rotations = Vec::new();
    loop {
        let request = pb::ListKeyRotationsRequest {
            key_id: key.clone(),
            limit: None,
            marker: marker.clone(),
            include_key_material: String::new(),
        };
        let r = sess
            .kms_call("ListKeyRotations", request, |mut c, r| async move {
                c.list_key_rotations(r).await
            })
            .await?;
        rotations.extend(
            r.rotations
                .into_iter()
                .map(|e| door_render::rotation_entry(decode::rotation_entry(e))),
        );
        if !r.truncated {
            break;
        }
        marker = r.next_marker;
    }
    print_json(&json!({ "Rotations": rotations }));
    Ok(())
}

/// `get-key-last-usage`: printed exactly as the AWS door answers GetKeyLastUsage.
pub async fn get_key_last_usage(args: GetKeyLastUsageArgs) -> Result<(), String> {
    let mut sess = Session::open(&args.conn).await?;
    let request = pb::GetKeyLastUsageRequest { key_id: args.key };
    let r = sess
        .kms_call("GetKeyLastUsage", request, |mut c, r| async move {
            c.get_key_last_usage(r).await
        })
        .await?;
    print_json(&door_render::key_last_usage_body(&last_usage_output(r)));
    Ok(())
}

/// The gRPC answer of GetKeyLastUsage as the engine's output, so the CLI prints exactly what
/// the AWS door answers.
fn last_usage_output(r: pb::GetKeyLastUsageResponse) -> p11kms::core::usage::KeyLastUsageOutput {
    let last = r.key_last_usage.and_then(|u| {
        Some(p11kms::store::KeyUsageRecord {
            key_id: String::new(),
            operation: p11kms::store::UsageOperation::parse(&u.operation)?,
            used_at_ms: ts_ms(&u.timestamp),
            event_id: u.cloud_trail_event_id,
            request_id: u.kms_request_id,
        })
    });
    p11kms::core::usage::KeyLastUsageOutput {
        key_id: r.key_id,
        last_usage: last,
        tracking_start_date_ms: ts_ms(&r.tracking_start_date),
        key_creation_date_ms: ts_ms(&r.key_creation_date),
    }
}

/// A timestamp in Unix milliseconds (0 when absent).
fn ts_ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
        .unwrap_or(0)
}
