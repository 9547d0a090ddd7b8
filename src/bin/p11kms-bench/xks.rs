//! `--door xks`: the load generator of the XKS door (AWS KMS's external key store proxy API,
//! `docs/xks.md`), speaking to p11kms's XKS door or to any XKS proxy (`--xks-endpoint`).
//!
//! Each concurrent worker owns one keep-alive HTTP/1.1 connection ([`crate::http_client`],
//! shared with `--door aws`) and sends back to back POSTs to
//! `{prefix}/kms/xks/v1/keys/{id}/encrypt`, `.../decrypt` or `.../metadata` (the
//! caller-identity floor case: GetKeyMetadata reads the key's state and policy, no HSM call),
//! each signed with SigV4 (service `kms-xks-proxy`) by the crate's one XKS header signer
//! (`xks_client::signed_headers`). The bodies
//! are the ones AWS KMS sends (the specification's example): `requestMetadata` with the AWS
//! caller, key ARN, operation, request id and `kmsViaService`, AAD, and on Encrypt
//! `ciphertextDataIntegrityValueAlgorithm: SHA_256`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::http_client::{self, Call, Signs};
use p11kms::identity::sigv4::SigningParams;

/// The SigV4 service name of the XKS proxy API.
pub const SERVICE: &str = "kms-xks-proxy";
/// The AAD AWS KMS sends in the specification's example (`project=nile,department=marketing`).
const AAD: &[u8] = b"project=nile,department=marketing";

/// One SigV4 credential of an XKS key store (the `XksProxyAuthenticationCredential`).
#[derive(Clone)]
pub struct Credential {
    /// 20-30 characters of `[A-Z2-7]`.
    pub access_key_id: String,
    /// The secret; never printed.
    pub secret: Zeroizing<String>,
}

/// The first credential of a credentials file in the XKS door's format (`docs/xks.md`: a JSON
/// array of `{"access_key_id", "secret_access_key"}` objects).
pub fn read_credential(path: &Path) -> Result<Credential, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = v.get(0).unwrap_or(&v);
    match (
        first["access_key_id"].as_str(),
        first["secret_access_key"].as_str(),
    ) {
        (Some(id), Some(secret)) => Ok(Credential {
            access_key_id: id.to_string(),
            secret: Zeroizing::new(secret.to_string()),
        }),
        _ => Err(format!(
            "{}: expected [{{\"access_key_id\": ..., \"secret_access_key\": ...}}]",
            path.display()
        )),
    }
}

/// A credential with a random access key id (20 of `[A-Z2-7]`) and a random 64-character
/// secret, for the bench's own key store.
pub fn random_credential(secret: String) -> Credential {
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bytes = uuid::Uuid::new_v4();
    let id: String = bytes.as_bytes()[..16]
        .iter()
        .chain(&bytes.as_bytes()[..4])
        .map(|b| B32[(*b as usize) % 32] as char)
        .collect();
    Credential {
        access_key_id: id,
        secret: Zeroizing::new(secret),
    }
}

/// The credentials file text of `cred`, in the XKS door's format.
pub fn credentials_file_text(cred: &Credential) -> Zeroizing<String> {
    Zeroizing::new(
        json!([{"access_key_id": cred.access_key_id, "secret_access_key": cred.secret.as_str()}])
            .to_string(),
    )
}

/// The XKS key store the load speaks to, and as whom: the door's [`Signs`].
pub struct Target {
    prefix: String,
    key_id: String,
    cred: Credential,
    region: String,
}

/// The workers' connections to an XKS proxy.
pub type Pool = http_client::Pool<Target>;

impl Target {
    /// The key store at URI path `prefix` (before `/kms/xks/v1`), key `key_id`, signed with
    /// `cred` in `region`.
    pub fn new(prefix: &str, key_id: &str, cred: Credential, region: &str) -> Target {
        Target {
            prefix: prefix.trim_end_matches('/').to_string(),
            key_id: key_id.to_string(),
            cred,
            region: region.to_string(),
        }
    }

    fn path(&self, op: &str) -> String {
        format!("{}/kms/xks/v1/keys/{}/{op}", self.prefix, self.key_id)
    }

    fn call(&self, op: &str, body: &Value) -> Call {
        Call::new(self.path(op), Vec::new(), Bytes::from(body.to_string()))
    }
}

impl Signs for Target {
    fn signed_headers(
        &self,
        authority: &str,
        call: &Call,
        amz_date: &str,
    ) -> Vec<(String, String)> {
        p11kms::xks_client::signed_headers(
            authority.to_string(),
            &call.path,
            &call.body_sha256,
            &SigningParams {
                access_key_id: &self.cred.access_key_id,
                secret_access_key: &self.cred.secret,
                region: &self.region,
                service: SERVICE,
                amz_date,
            },
        )
    }

    fn error_name(&self, body: &[u8]) -> Option<String> {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["errorName"].as_str().map(str::to_owned))
    }
}

/// `requestMetadata` as AWS KMS sends it for `op` (`Encrypt`, `Decrypt`, `DescribeKey`).
fn request_metadata(op: &str) -> Value {
    json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": op,
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsViaService": "ebs",
    })
}

/// The Encrypt request of `plaintext`, as AWS KMS sends it.
pub fn encrypt_call(t: &Target, plaintext: &[u8]) -> Call {
    let body = json!({
        "requestMetadata": request_metadata("Encrypt"),
        "additionalAuthenticatedData": B64.encode(AAD),
        "plaintext": B64.encode(plaintext),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
    });
    t.call("encrypt", &body)
}

/// The GetKeyMetadata request, as AWS KMS sends it (for DescribeKey): the door's floor.
pub fn metadata_call(t: &Target) -> Call {
    t.call(
        "metadata",
        &json!({"requestMetadata": request_metadata("DescribeKey")}),
    )
}

/// The Decrypt request of an Encrypt answer, as AWS KMS sends it.
pub fn decrypt_call(t: &Target, encrypted: &Value) -> Result<Call, String> {
    let mut body = json!({
        "requestMetadata": request_metadata("Decrypt"),
        "additionalAuthenticatedData": B64.encode(AAD),
        "encryptionAlgorithm": "AES_GCM",
    });
    for field in ["ciphertext", "initializationVector", "authenticationTag"] {
        let v = encrypted
            .get(field)
            .filter(|v| v.is_string())
            .ok_or_else(|| format!("the Encrypt answer has no {field}: {encrypted}"))?;
        body[field] = v.clone();
    }
    if let Some(m) = encrypted
        .get("ciphertextMetadata")
        .filter(|v| v.is_string())
    {
        body["ciphertextMetadata"] = m.clone();
    }
    Ok(t.call("decrypt", &body))
}

/// The AAD p11kms's HSM sees for [`encrypt_call`] (the specification's formula with p11kms's
/// `ciphertextMetadata` of key version 1): the raw loop's AAD, so that it matches in size.
pub fn raw_aad() -> Vec<u8> {
    let metadata = p11kms::core::xks::version_metadata(1);
    p11kms::core::xks::hsm_aad(AAD, &metadata).unwrap_or_default()
}

/// The XKS cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Encrypt,
    Decrypt,
    /// GetKeyMetadata: the floor.
    Metadata,
}

/// The request of `case` with a `payload`-byte plaintext; for decrypt, of the ciphertext of
/// one Encrypt made first.
pub async fn call_of(pool: &Pool, case: Case, payload: usize) -> Result<Call, String> {
    let t = pool.door();
    let enc = encrypt_call(t, &vec![0x5au8; payload]);
    match case {
        Case::Encrypt => return Ok(enc),
        Case::Metadata => return Ok(metadata_call(t)),
        Case::Decrypt => {}
    }
    let answer = pool.send_first(&enc).await;
    let answer = answer.map_err(|e| format!("fixture XKS Encrypt: {e}"))?;
    let v: Value =
        serde_json::from_slice(&answer).map_err(|e| format!("fixture XKS Encrypt: {e}"))?;
    decrypt_call(t, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_credentials_have_the_specifications_shape() {
        let c = random_credential("s".repeat(64));
        assert_eq!(c.access_key_id.len(), 20);
        assert!(c
            .access_key_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        let text = credentials_file_text(&c);
        let dir = std::env::temp_dir().join(format!("xks-cred-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.json");
        std::fs::write(&p, text.as_bytes()).unwrap();
        let back = read_credential(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.access_key_id, c.access_key_id);
        assert_eq!(back.secret.as_str(), c.secret.as_str());
    }

    #[test]
    fn decrypt_requests_carry_the_encrypt_answer_and_the_aad() {
        let t = Target::new("/p/", "k1", random_credential("s".repeat(64)), "us-east-1");
        let enc = encrypt_call(&t, b"x");
        assert_eq!(enc.path, "/p/kms/xks/v1/keys/k1/encrypt");
        let answer = json!({"ciphertext": "YQ==", "initializationVector": "aXY=",
            "authenticationTag": "dGFn", "ciphertextMetadata": "AQ=="});
        let dec = decrypt_call(&t, &answer).unwrap();
        let body: Value = serde_json::from_slice(&dec.body).unwrap();
        assert_eq!(dec.path, "/p/kms/xks/v1/keys/k1/decrypt");
        assert_eq!(body["ciphertextMetadata"], "AQ==");
        assert_eq!(body["additionalAuthenticatedData"], B64.encode(AAD));
        assert_eq!(body["requestMetadata"]["kmsOperation"], "Decrypt");
        assert!(decrypt_call(&t, &json!({"ciphertext": "YQ=="})).is_err());
        let md = metadata_call(&t);
        assert_eq!(md.path, "/p/kms/xks/v1/keys/k1/metadata");
        let body: Value = serde_json::from_slice(&md.body).unwrap();
        assert_eq!(body["requestMetadata"]["kmsOperation"], "DescribeKey");
        assert!(
            http_client::Endpoint::new("https://127.0.0.1:1", None, None, "XKS endpoint").is_err(),
            "https needs a CA"
        );
    }
}
