//! `p11kms encrypt`, `decrypt` and `generate-data-key`: symmetric encryption and envelope
//! data keys. Plaintexts and data keys are zeroized, and written mode 0600 when sent to a
//! file.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use zeroize::Zeroizing;

use p11kms::pb;

use super::io::{
    base64_text, ctx, emit_bytes, parse_pair, print_json, read_input, write_output, DryRun, Input,
    KeyMessage,
};
use super::session::{Conn, Session};

/// `encrypt`'s arguments.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    #[command(flatten)]
    target: KeyMessage,
    /// Encryption context pair, repeatable.
    #[arg(long = "context", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Write the raw ciphertext here instead of printing base64.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    check: DryRun,
}

/// `decrypt`'s arguments.
#[derive(Args, Debug)]
pub struct DecryptArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    input: Input,
    #[arg(long = "context", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Optional: the key the ciphertext must be under.
    #[arg(long)]
    key: Option<String>,
    /// Write the raw plaintext here instead of printing base64.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    check: DryRun,
}

/// `generate-data-key`'s arguments.
#[derive(Args, Debug)]
pub struct GenerateDataKeyArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long)]
    key: String,
    /// AES_256 or AES_128 (default AES_256 unless --bytes is given).
    #[arg(long)]
    key_spec: Option<String>,
    /// Number of bytes, 1-1024, instead of --key-spec.
    #[arg(long)]
    bytes: Option<i32>,
    #[arg(long = "context", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Write the raw plaintext data key here (mode 0600) instead of printing it.
    #[arg(long)]
    plaintext_out: Option<PathBuf>,
    /// Write the raw ciphertext blob here instead of printing it.
    #[arg(long)]
    ciphertext_out: Option<PathBuf>,
    #[command(flatten)]
    check: DryRun,
}

/// `encrypt`: the input is read before connecting; the ciphertext goes to --out or, as
/// base64, to standard output.
pub async fn encrypt(args: EncryptArgs) -> Result<(), String> {
    let plaintext = read_input(&args.target.input)?;
    let mut sess = Session::open(&args.target.conn).await?;
    let request = pb::EncryptRequest {
        key_id: args.target.key,
        plaintext: plaintext.to_vec(),
        encryption_context: ctx(args.context),
        dry_run: args.check.dry_run,
        ..Default::default()
    };
    let r = sess
        .kms_call(
            "Encrypt",
            request,
            |mut c, r| async move { c.encrypt(r).await },
        )
        .await?;
    emit_bytes(args.out, &r.ciphertext_blob, false)
}

/// `decrypt`: the plaintext goes to --out (mode 0600) or, as base64, to standard output.
pub async fn decrypt(args: DecryptArgs) -> Result<(), String> {
    let blob = read_input(&args.input)?;
    let mut sess = Session::open(&args.conn).await?;
    let request = pb::DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        encryption_context: ctx(args.context),
        key_id: args.key.unwrap_or_default(),
        dry_run: args.check.dry_run,
        ..Default::default()
    };
    let r = sess
        .kms_call(
            "Decrypt",
            request,
            |mut c, r| async move { c.decrypt(r).await },
        )
        .await?;
    let plaintext = Zeroizing::new(r.plaintext);
    emit_bytes(args.out, &plaintext, true)
}

/// `generate-data-key`: each half into its file when asked, the rest printed as JSON.
pub async fn generate_data_key(args: GenerateDataKeyArgs) -> Result<(), String> {
    let key_spec = match (&args.key_spec, args.bytes) {
        (None, None) => "AES_256".to_string(),
        (Some(s), _) => s.clone(),
        (None, Some(_)) => String::new(),
    };
    let mut sess = Session::open(&args.conn).await?;
    let request = pb::GenerateDataKeyRequest {
        key_id: args.key,
        encryption_context: ctx(args.context),
        number_of_bytes: args.bytes,
        key_spec,
        grant_tokens: vec![],
        dry_run: args.check.dry_run,
    };
    let r = sess
        .kms_call("GenerateDataKey", request, |mut c, r| async move {
            c.generate_data_key(r).await
        })
        .await?;
    let plaintext = Zeroizing::new(r.plaintext);
    if let Some(p) = &args.plaintext_out {
        write_output(p, &plaintext, true)?;
    }
    if let Some(p) = &args.ciphertext_out {
        write_output(p, &r.ciphertext_blob, false)?;
    }
    let mut v = json!({ "KeyId": r.key_id, "KeyMaterialId": r.key_material_id });
    if args.plaintext_out.is_none() {
        v["Plaintext"] = json!(base64_text(&plaintext).as_str());
    }
    if args.ciphertext_out.is_none() {
        v["CiphertextBlob"] = json!(base64_text(&r.ciphertext_blob).as_str());
    }
    print_json(&v);
    Ok(())
}
