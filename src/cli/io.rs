//! The CLI's input and output: `key=value` pairs, input bytes from a file, standard input or
//! base64, output files (private ones mode 0600), and JSON printed as the AWS door renders it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Args;
use zeroize::Zeroizing;

use super::session::Conn;
use p11kms::api::aws_json::kms as door_render;
use p11kms::pb;

/// Where input bytes come from.
#[derive(Args, Debug, Clone)]
pub struct Input {
    /// Read the input from this file ("-" for standard input).
    #[arg(long = "in", conflicts_with = "b64")]
    file: Option<PathBuf>,
    /// The input as base64 on the command line (not for secrets: argv is visible to others).
    #[arg(long)]
    b64: Option<String>,
}

/// `--dry-run`, on every command whose AWS operation has a `DryRun` member.
#[derive(Args, Debug, Clone, Copy)]
pub struct DryRun {
    /// Check the request (authorization, key state, usage) without running it; the
    /// daemon answers DryRunOperationException when it would have succeeded.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the one-key message commands (encrypt, sign, verify, generate-mac) start with: the
/// connection, the key and the message.
#[derive(Args, Debug)]
pub struct KeyMessage {
    #[command(flatten)]
    pub conn: Conn,
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    #[command(flatten)]
    pub input: Input,
}

/// Parses a `key=value` argument (tags, encryption context, grant constraints).
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// `key=value` pairs as an encryption context (or a grant constraint's pairs).
pub fn ctx(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// `key=value` pairs as protobuf tags.
pub fn pb_tags(pairs: Vec<(String, String)>) -> Vec<pb::Tag> {
    pairs
        .into_iter()
        .map(|(k, v)| pb::Tag {
            tag_key: k,
            tag_value: v,
        })
        .collect()
}

/// A text file's contents (a policy document, test cases), or `reading <path>: <error>`.
pub fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// A file's bytes (a signature, a public key), or `reading <path>: <error>`.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The contents of an optional file (a policy document), or "" when none is given.
pub fn read_optional(path: Option<PathBuf>) -> Result<String, String> {
    match path {
        Some(p) => read_text(&p),
        None => Ok(String::new()),
    }
}

/// The input bytes (possibly a secret, so zeroized when dropped).
pub fn read_input(input: &Input) -> Result<Zeroizing<Vec<u8>>, String> {
    match (&input.file, &input.b64) {
        (Some(p), _) if p == Path::new("-") => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading standard input: {e}"))?;
            Ok(buf)
        }
        (Some(p), _) => read_bytes(p).map(Zeroizing::new),
        (None, Some(b)) => B64
            .decode(b.trim())
            .map(Zeroizing::new)
            .map_err(|e| format!("--b64 is not base64: {e}")),
        (None, None) => Err("give the input with --in FILE (or - for stdin) or --b64".into()),
    }
}

/// Writes `bytes` to `path`, created with mode 0600 when `private` (plaintext, secrets).
pub fn write_output(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Raw result bytes into `out`, or as one base64 line on standard output (the base64 text is
/// zeroized too, as the bytes may be a plaintext or a secret).
pub fn emit_bytes(out: Option<PathBuf>, bytes: &[u8], private: bool) -> Result<(), String> {
    match out {
        Some(p) => write_output(&p, bytes, private),
        None => {
            println!("{}", Zeroizing::new(B64.encode(bytes)).as_str());
            Ok(())
        }
    }
}

/// Bytes as base64 for a JSON answer, zeroized when dropped.
pub fn base64_text(bytes: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(B64.encode(bytes))
}

/// Prints as AWS does: null members are left out (the AWS door's `compact`).
pub fn print_json(v: &serde_json::Value) {
    let v = door_render::compact(v.clone());
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}
