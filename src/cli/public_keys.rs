//! `p11kms get-public-key` and `derive-shared-secret`: an asymmetric key's public half, and
//! ECDH with a peer's public key (its file in PEM or DER).

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Args;
use zeroize::Zeroizing;

use p11kms::encoding::public_key_pem;
use p11kms::pb;

use super::io::{emit_bytes, read_bytes, write_output, DryRun};
use super::session::{Conn, Session};

/// `get-public-key`'s arguments.
#[derive(Args, Debug)]
pub struct GetPublicKeyArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long)]
    key: String,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `derive-shared-secret`'s arguments.
#[derive(Args, Debug)]
pub struct DeriveSharedSecretArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(long)]
    key: String,
    /// The peer's public key: DER SubjectPublicKeyInfo, or PEM (`-----BEGIN PUBLIC KEY-----`).
    #[arg(long)]
    peer_public_key: PathBuf,
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    check: DryRun,
}

/// `get-public-key`: DER SubjectPublicKeyInfo into --out, or PEM on standard output.
pub async fn get_public_key(args: GetPublicKeyArgs) -> Result<(), String> {
    let mut sess = Session::open(&args.conn).await?;
    let request = pb::GetPublicKeyRequest {
        key_id: args.key,
        grant_tokens: vec![],
    };
    let r = sess
        .kms_call("GetPublicKey", request, |mut c, r| async move {
            c.get_public_key(r).await
        })
        .await?;
    match args.out {
        Some(p) => write_output(&p, &r.public_key, false)?,
        None => print!("{}", public_key_pem(&r.public_key)),
    }
    Ok(())
}

/// `derive-shared-secret`: the peer's key file is read before connecting; the secret goes to
/// --out (mode 0600) or, as base64, to standard output.
pub async fn derive_shared_secret(args: DeriveSharedSecretArgs) -> Result<(), String> {
    let path = &args.peer_public_key;
    let der = spki_from_der_or_pem(&read_bytes(path)?)
        .ok_or_else(|| format!("{}: not a PEM PUBLIC KEY", path.display()))?;
    let mut sess = Session::open(&args.conn).await?;
    let request = pb::DeriveSharedSecretRequest {
        key_id: args.key,
        key_agreement_algorithm: "ECDH".into(),
        public_key: der,
        grant_tokens: vec![],
        dry_run: args.check.dry_run,
    };
    let secret = Zeroizing::new(
        sess.kms_call("DeriveSharedSecret", request, |mut c, r| async move {
            c.derive_shared_secret(r).await
        })
        .await?
        .shared_secret,
    );
    emit_bytes(args.out, &secret, true)
}

/// A public key file's DER: the bytes themselves, or the body of a PEM `PUBLIC KEY` block.
fn spki_from_der_or_pem(raw: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let Ok(text) = std::str::from_utf8(raw) else {
        return Some(raw.to_vec());
    };
    let Some(start) = text.find(BEGIN) else {
        return (!text.trim_start().starts_with("-----")).then(|| raw.to_vec());
    };
    let body = &text[start + BEGIN.len()..];
    let body = &body[..body.find(END)?];
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(b64).ok()
}
