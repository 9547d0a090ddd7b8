//! `p11kms sign`, `verify` and `generate-mac`: signatures and MACs computed and checked on
//! the device.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use p11kms::pb;

use super::io::{emit_bytes, print_json, read_bytes, read_input, DryRun, KeyMessage};
use super::session::Session;

/// What `sign` and `verify` both take: the key and message, the signing algorithm, the
/// message type, and `--dry-run`.
#[derive(Args, Debug)]
pub struct Signing {
    #[command(flatten)]
    target: KeyMessage,
    /// RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256, ECDSA_SHA_256, ...
    #[arg(long)]
    algorithm: String,
    /// RAW (the daemon hashes the message) or DIGEST (the input is the digest).
    #[arg(long, default_value = "RAW")]
    message_type: String,
    #[command(flatten)]
    check: DryRun,
}

/// `sign`'s arguments.
#[derive(Args, Debug)]
pub struct SignArgs {
    #[command(flatten)]
    signing: Signing,
    /// Write the raw signature (ECDSA: DER) here instead of printing base64.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `verify`'s arguments.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    signing: Signing,
    /// File holding the raw signature.
    #[arg(long)]
    signature_file: PathBuf,
}

/// `generate-mac`'s arguments.
#[derive(Args, Debug)]
pub struct GenerateMacArgs {
    #[command(flatten)]
    target: KeyMessage,
    /// HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512.
    #[arg(long)]
    algorithm: String,
    /// Write the raw MAC here instead of printing base64.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    check: DryRun,
}

/// `sign`: the signature goes to --out or, as base64, to standard output.
pub async fn sign(args: SignArgs) -> Result<(), String> {
    let a = args.signing;
    let message = read_input(&a.target.input)?;
    let mut sess = Session::open(&a.target.conn).await?;
    let request = pb::SignRequest {
        key_id: a.target.key,
        message: message.to_vec(),
        message_type: a.message_type,
        signing_algorithm: a.algorithm,
        grant_tokens: vec![],
        dry_run: a.check.dry_run,
    };
    let r = sess
        .kms_call("Sign", request, |mut c, r| async move { c.sign(r).await })
        .await?;
    emit_bytes(args.out, &r.signature, false)
}

/// `verify`: a signature that does not match is the daemon's
/// KMSInvalidSignatureException, so the command fails.
pub async fn verify(args: VerifyArgs) -> Result<(), String> {
    let a = args.signing;
    let message = read_input(&a.target.input)?;
    let signature = read_bytes(&args.signature_file)?;
    let mut sess = Session::open(&a.target.conn).await?;
    let request = pb::VerifyRequest {
        key_id: a.target.key,
        message: message.to_vec(),
        message_type: a.message_type,
        signature,
        signing_algorithm: a.algorithm,
        grant_tokens: vec![],
        dry_run: a.check.dry_run,
    };
    let r = sess
        .kms_call(
            "Verify",
            request,
            |mut c, r| async move { c.verify(r).await },
        )
        .await?;
    print_json(&json!({
        "KeyId": r.key_id,
        "SignatureValid": r.signature_valid,
        "SigningAlgorithm": r.signing_algorithm,
    }));
    Ok(())
}

/// `generate-mac`: the MAC goes to --out or, as base64, to standard output.
pub async fn generate_mac(args: GenerateMacArgs) -> Result<(), String> {
    let message = read_input(&args.target.input)?;
    let mut sess = Session::open(&args.target.conn).await?;
    let request = pb::GenerateMacRequest {
        message: message.to_vec(),
        key_id: args.target.key,
        mac_algorithm: args.algorithm,
        grant_tokens: vec![],
        dry_run: args.check.dry_run,
    };
    let r = sess
        .kms_call("GenerateMac", request, |mut c, r| async move {
            c.generate_mac(r).await
        })
        .await?;
    emit_bytes(args.out, &r.mac, false)
}
