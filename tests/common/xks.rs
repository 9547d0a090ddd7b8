//! The XKS door as a test client sees it: a daemon config section with one logical key store
//! (two credentials), SigV4-signed HTTPS requests from the library's signer (service
//! `kms-xks-proxy`), and the bodies AWS KMS sends.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p11kms::server::RunningServer;
use serde_json::{json, Value};

use super::{tls_exchange, write_secret, HttpAnswer, ACCOUNT, USER1};

pub const PREFIX: &str = "/xks-test";
pub const ID1: &str = "AKIAXKSTESTAAAAAAAA2";
pub const ID2: &str = "AKIAXKSTESTBBBBBBBB3";
pub const SECRET1: &str = "xks-secret-one-0123456789abcdefghijklmnopqrstu";
pub const SECRET2: &str = "xks-secret-two-0123456789abcdefghijklmnopqrstu";
pub const SERVICE: &str = "kms-xks-proxy";

/// A key policy: the account keeps everything; user1, the XKS key store's principal, may
/// use the key only when AWS KMS's caller (`xks:AwsPrincipalArn`) is `aws_caller`.
pub fn xks_key_policy(aws_caller: &str) -> String {
    json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Account", "Effect": "Allow",
         "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Xks", "Effect": "Allow", "Principal": {"AWS": USER1},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*",
         "Condition": {"StringEquals": {"xks:AwsPrincipalArn": aws_caller}}}
    ]})
    .to_string()
}

/// The config text enabling the XKS door on an ephemeral loopback port with `xks_lines`, one
/// key store at [`PREFIX`] run as user1 with both credentials (their file written into
/// `dir`), then `tail`.
pub fn xks_section(dir: &Path, xks_lines: &str, tail: &str) -> String {
    let creds = dir.join("xks-creds.json");
    let pairs = json!([
        {"access_key_id": ID1, "secret_access_key": SECRET1},
        {"access_key_id": ID2, "secret_access_key": SECRET2},
    ]);
    write_secret(&creds, pairs.to_string());
    format!(
        "\n[xks]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{xks_lines}\n[[xks.key_store]]\n\
         uri_path_prefix = \"{PREFIX}\"\nprincipal = \"{USER1}\"\ncredentials_file = \"{}\"\n{tail}",
        creds.display()
    )
}

/// How a test request is signed.
#[derive(Clone, Copy)]
pub struct Signing<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    pub service: &'a str,
    /// Seconds added to the daemon's clock.
    pub skew: i64,
}

pub const GOOD: Signing<'static> = Signing {
    id: ID1,
    secret: SECRET1,
    service: SERVICE,
    skew: 0,
};

/// One request to the XKS door over TLS (HTTP/1.1), SigV4-signed as `signing` says.
pub async fn xks(
    server: &RunningServer,
    addr: SocketAddr,
    method: &str,
    path: &str,
    signing: Signing<'_>,
    body: &Value,
) -> (u16, Value) {
    let body = body.to_string().into_bytes();
    xks_raw(server, addr, method, path, signing, &body).await
}

/// The whole HTTP/1.1 request, SigV4-signed as `signing` says.
pub fn request_bytes(
    server: &RunningServer,
    addr: SocketAddr,
    method: &str,
    path: &str,
    signing: Signing<'_>,
    body: &[u8],
) -> Vec<u8> {
    use p11kms::identity::sigv4::{self, SigningParams};
    let amz_date = sigv4::format_amz_date(server.kms.now_ms() / 1000 + signing.skew);
    let headers = p11kms::xks_client::signed_headers(
        format!("127.0.0.1:{}", addr.port()),
        path,
        &sigv4::sha256_hex(body),
        &SigningParams {
            access_key_id: signing.id,
            secret_access_key: signing.secret,
            region: "us-east-1",
            service: signing.service,
            amz_date: &amz_date,
        },
    );
    super::http_request_bytes(method, path, &headers, body, true)
}

/// [`xks`] with a body of any bytes.
pub async fn xks_raw(
    server: &RunningServer,
    addr: SocketAddr,
    method: &str,
    path: &str,
    signing: Signing<'_>,
    body: &[u8],
) -> (u16, Value) {
    let bytes = request_bytes(server, addr, method, path, signing, body);
    answer(tls_exchange(addr, &bytes).await)
}

/// Status and JSON body (`null` when not JSON).
pub fn answer(a: HttpAnswer) -> (u16, Value) {
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Value::Null),
    )
}

/// The XKS door of a test daemon, with requests signed by the first credential.
pub struct Door<'a> {
    pub server: &'a RunningServer,
    pub addr: SocketAddr,
}

impl Door<'_> {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        xks(self.server, self.addr, "POST", path, GOOD, body).await
    }

    /// The answer of a request that must succeed.
    pub async fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// Asserts that a request is refused with `status` and the error `name`.
    pub async fn refused(&self, path: &str, body: &Value, status: u16, name: &str) {
        let (got, e) = self.post(path, body).await;
        assert_eq!(
            (got, e["errorName"].as_str()),
            (status, Some(name)),
            "{path}: {e}"
        );
        let m = e["errorMessage"].as_str().unwrap_or_default();
        assert!(
            m.len() < 512 && m.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
            "{m}"
        );
    }
}

pub fn path(tail: &str) -> String {
    format!("{PREFIX}/kms/xks/v1/{tail}")
}

pub fn metadata(op: &str, principal: &str) -> Value {
    json!({
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsOperation": op,
        "awsPrincipalArn": principal,
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/a0b1c2d3-0000-4000-8000-000000000000",
    })
}

pub fn encrypt_body(pt: &[u8], aad: &[u8], principal: &str) -> Value {
    json!({
        "requestMetadata": metadata("Encrypt", principal),
        "plaintext": B64.encode(pt),
        "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": B64.encode(aad),
        "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
    })
}

pub fn decrypt_body(enc: &Value, aad: &[u8], principal: &str) -> Value {
    json!({
        "requestMetadata": metadata("Decrypt", principal),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertext": enc["ciphertext"],
        "initializationVector": enc["initializationVector"],
        "authenticationTag": enc["authenticationTag"],
        "ciphertextMetadata": enc["ciphertextMetadata"],
        "additionalAuthenticatedData": B64.encode(aad),
    })
}
