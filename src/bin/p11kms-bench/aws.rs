//! `--door aws`: the load generator of the AWS door (`src/api/aws_json`): KMS over the AWS
//! JSON 1.1 protocol (`POST /`, `X-Amz-Target: TrentService.<Op>`, `Content-Type:
//! application/x-amz-json-1.1`, SigV4 service `kms`) and, for the caller-identity floor case,
//! STS `GetCallerIdentity` over the Query protocol on the same listener (a form body
//! `Action=GetCallerIdentity&Version=2011-06-15`, SigV4 service `sts`), both in the region the
//! daemon is configured with. The connections are [`crate::http_client`]'s (one keep-alive
//! HTTP/1.1 connection per worker, plain HTTP on loopback or HTTPS), the signature the crate's
//! one SigV4 signer (`identity::sigv4`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::http_client::{self, Call, Signs};
use crate::Op;
use p11kms::client::AccessKeyCredentials;
use p11kms::identity::sigv4::{self, SignableRequest, SigningParams};

/// The `X-Amz-Target` prefix of KMS operations.
const TARGET_PREFIX: &str = "TrentService.";
/// The content type of KMS requests.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The content type of STS (Query protocol) requests.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// The STS GetCallerIdentity form body.
pub const CALLER_IDENTITY_FORM: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The AWS door's signer: the access key and the daemon's region.
pub struct Target {
    cred: AccessKeyCredentials,
    region: String,
}

/// The workers' connections to an AWS door.
pub type Pool = http_client::Pool<Target>;

impl Target {
    /// Requests signed with `cred` in `region`.
    pub fn new(cred: AccessKeyCredentials, region: &str) -> Target {
        Target {
            cred,
            region: region.to_string(),
        }
    }
}

/// The SigV4 service of `call`: `kms` when it names a KMS operation, else `sts`.
fn service_of(call: &Call) -> &'static str {
    if call.headers.iter().any(|(k, _)| k == "x-amz-target") {
        "kms"
    } else {
        "sts"
    }
}

impl Signs for Target {
    fn signed_headers(
        &self,
        authority: &str,
        call: &Call,
        amz_date: &str,
    ) -> Vec<(String, String)> {
        let mut headers = vec![
            ("host".to_string(), authority.to_string()),
            ("x-amz-date".to_string(), amz_date.to_string()),
        ];
        if let Some(token) = &self.cred.session_token {
            headers.push(("x-amz-security-token".to_string(), token.to_string()));
        }
        headers.extend(call.headers.iter().cloned());
        let names: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let auth = sigv4::authorization_header(
            &SignableRequest {
                method: "POST",
                path: &call.path,
                query: "",
                headers: &headers,
                payload_sha256_hex: &call.body_sha256,
            },
            &names,
            &SigningParams {
                access_key_id: &self.cred.access_key_id,
                secret_access_key: &self.cred.secret_access_key,
                region: &self.region,
                service: service_of(call),
                amz_date,
            },
        );
        headers.push(("authorization".to_string(), auth));
        headers
    }

    fn error_name(&self, body: &[u8]) -> Option<String> {
        error_name(body)
    }
}

/// The error name of an AWS door answer: the JSON `__type` (KMS), or the XML `<Code>` (STS).
fn error_name(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v["__type"].as_str().map(str::to_owned);
    }
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].to_string())
}

/// The KMS request `operation` with JSON `body`.
pub fn kms_call(operation: &str, body: &Value) -> Call {
    Call::new(
        "/".into(),
        vec![
            ("content-type".into(), JSON_CONTENT_TYPE.into()),
            ("x-amz-target".into(), format!("{TARGET_PREFIX}{operation}")),
        ],
        Bytes::from(body.to_string()),
    )
}

/// STS GetCallerIdentity (Query protocol): the door's floor.
pub fn caller_identity_call() -> Call {
    Call::new(
        "/".into(),
        vec![("content-type".into(), FORM_CONTENT_TYPE.into())],
        Bytes::from_static(CALLER_IDENTITY_FORM.as_bytes()),
    )
}

/// Whether the AWS door's load has a request for `op`.
pub fn serves(op: Op) -> bool {
    matches!(
        op,
        Op::CallerIdentity
            | Op::Encrypt
            | Op::Decrypt
            | Op::GenerateDataKey
            | Op::GenerateDataKeyWithoutPlaintext
            | Op::ReEncrypt
    )
}

/// Encrypt of `payload` bytes under `key_id`.
pub fn encrypt_call(key_id: &str, payload: usize) -> Call {
    kms_call(
        "Encrypt",
        &json!({"KeyId": key_id, "Plaintext": B64.encode(vec![0x5au8; payload])}),
    )
}

/// The request of case `op` under `key_id` with a `payload`-byte plaintext (data keys:
/// `data_key_len` bytes); for decrypt and re-encrypt, of the ciphertext of one Encrypt made
/// first.
pub async fn call_of(
    pool: &Pool,
    op: Op,
    key_id: &str,
    payload: usize,
    data_key_len: usize,
) -> Result<Call, String> {
    let encrypt = encrypt_call(key_id, payload);
    let data_key = json!({"KeyId": key_id, "NumberOfBytes": data_key_len});
    match op {
        Op::CallerIdentity => return Ok(caller_identity_call()),
        Op::Encrypt => return Ok(encrypt),
        Op::GenerateDataKey => return Ok(kms_call("GenerateDataKey", &data_key)),
        Op::GenerateDataKeyWithoutPlaintext => {
            return Ok(kms_call("GenerateDataKeyWithoutPlaintext", &data_key))
        }
        Op::Decrypt | Op::ReEncrypt => {}
        _ => return Err(format!("--door aws has no {} case", op.name())),
    }
    let answer = pool
        .send_first(&encrypt)
        .await
        .map_err(|e| format!("fixture AWS Encrypt: {e}"))?;
    let v: Value =
        serde_json::from_slice(&answer).map_err(|e| format!("fixture AWS Encrypt: {e}"))?;
    let blob = v["CiphertextBlob"]
        .as_str()
        .ok_or("fixture AWS Encrypt: no CiphertextBlob")?;
    Ok(match op {
        Op::Decrypt => kms_call("Decrypt", &json!({"CiphertextBlob": blob})),
        _ => kms_call(
            "ReEncrypt",
            &json!({"CiphertextBlob": blob, "DestinationKeyId": key_id}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn target() -> Target {
        Target::new(
            AccessKeyCredentials {
                access_key_id: "AKIAEXAMPLE000000001".into(),
                secret_access_key: Zeroizing::new("s".repeat(40)),
                session_token: None,
            },
            "eu-west-3",
        )
    }

    #[test]
    fn kms_requests_are_json_1_1_with_the_target_signed_for_kms() {
        let call = kms_call("Encrypt", &json!({"KeyId": "k"}));
        let h = target().signed_headers("127.0.0.1:1", &call, "20261206T150000Z");
        let get = |n: &str| sigv4::header_value(&h, n).map(str::to_owned);
        assert_eq!(get("x-amz-target").as_deref(), Some("TrentService.Encrypt"));
        assert_eq!(get("content-type").as_deref(), Some(JSON_CONTENT_TYPE));
        let auth = get("authorization").expect("signed");
        let parsed = sigv4::parse_authorization(&auth).expect("a SigV4 header");
        assert_eq!(parsed.service, "kms");
        assert_eq!(parsed.region, "eu-west-3");
        for name in ["host", "x-amz-date", "content-type", "x-amz-target"] {
            assert!(parsed.signed_headers.iter().any(|s| s == name), "{name}");
        }
        assert!(!auth.contains(&"s".repeat(40)));
    }

    #[test]
    fn caller_identity_is_an_sts_query_form_signed_for_sts() {
        let call = caller_identity_call();
        assert_eq!(&call.body[..], CALLER_IDENTITY_FORM.as_bytes());
        let h = target().signed_headers("127.0.0.1:1", &call, "20261206T150000Z");
        assert!(sigv4::header_value(&h, "x-amz-target").is_none());
        let auth = sigv4::header_value(&h, "authorization").expect("signed");
        assert_eq!(sigv4::parse_authorization(auth).unwrap().service, "sts");
        let form: Vec<(String, String)> = form_urlencoded::parse(&call.body).into_owned().collect();
        assert!(form.contains(&("Action".into(), "GetCallerIdentity".into())));
    }

    #[test]
    fn error_names_come_from_json_type_or_sts_code() {
        assert_eq!(
            error_name(br#"{"__type":"NotFoundException","message":"m"}"#).as_deref(),
            Some("NotFoundException")
        );
        let xml = b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code></Error></ErrorResponse>";
        assert_eq!(error_name(xml).as_deref(), Some("AccessDenied"));
        assert_eq!(error_name(b"garbage"), None);
        assert!(serves(Op::ReEncrypt) && serves(Op::CallerIdentity));
        assert!(!serves(Op::Sign) && !serves(Op::CreateKey) && !serves(Op::Verify));
    }
}
