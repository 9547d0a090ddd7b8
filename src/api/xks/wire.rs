//! The XKS door's wire: the JSON bodies of the four routes (camelCase, binary members in
//! base64), their translation to and from the engine's XKS types ([`crate::core::xks`]),
//! and the one mapping of errors to the specification's `{"errorName", "errorMessage"}` and
//! HTTP statuses ([`XksError`]).

use axum::body::Body;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::{header, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::core::xks::{
    RequestMetadata, XksDecryptRequest, XksDecryptResponse, XksEncryptRequest, XksEncryptResponse,
    XksHealthRequest, XksHealthResponse, XksKeyMetadataRequest, XksKeyMetadataResponse,
};
use crate::core::KmsError;
use crate::identity::auth::AuthError;

/// The one encryption algorithm of the API.
pub const AES_GCM: &str = "AES_GCM";
/// The one integrity-value algorithm of the API.
pub const SHA_256: &str = "SHA_256";
/// Longest error message (the specification: under 512 printable ASCII characters).
pub const MAX_MESSAGE: usize = 511;

/// An error as the XKS API answers it: the specification's name and HTTP status, and a
/// printable-ASCII message under 512 characters (never a secret or a stack trace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksError {
    pub status: StatusCode,
    pub name: &'static str,
    pub message: String,
}

impl XksError {
    /// An error with its message made printable ASCII and cut under 512 characters.
    pub fn new(status: StatusCode, name: &'static str, message: impl AsRef<str>) -> XksError {
        let message = message
            .as_ref()
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .take(MAX_MESSAGE)
            .collect();
        XksError {
            status,
            name,
            message,
        }
    }

    /// 400 ValidationException.
    pub fn validation(message: impl AsRef<str>) -> XksError {
        XksError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    /// 404 InvalidUriPathException.
    pub fn invalid_path(message: impl AsRef<str>) -> XksError {
        XksError::new(StatusCode::NOT_FOUND, "InvalidUriPathException", message)
    }

    /// 405 for any method but POST (the specification names no error for it; the body says
    /// ValidationException and the `Allow` header says POST).
    pub fn method_not_allowed(method: &str) -> XksError {
        XksError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "ValidationException",
            format!("The method {method} is not allowed; every XKS operation is a POST."),
        )
    }

    /// 401 AuthenticationFailedException, whatever failed in the signature check.
    pub fn authentication(e: &AuthError) -> XksError {
        XksError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailedException",
            format!("{}: {e}", e.aws_name()),
        )
    }

    /// 401 for a transport-level refusal (mutual TLS), with `message`.
    pub fn authentication_message(message: &str) -> XksError {
        XksError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailedException",
            message,
        )
    }

    /// An engine error as the specification names it.
    pub fn from_kms(e: &KmsError) -> XksError {
        use KmsError as K;
        let (status, name) = match e {
            K::Disabled(_) | K::InvalidState(_) => (400, "InvalidStateException"),
            K::InvalidCiphertext(_) | K::IncorrectKey(_) => (400, "InvalidCiphertextException"),
            K::InvalidKeyUsage(_) => (400, "InvalidKeyUsageException"),
            K::Validation(_) | K::InvalidArn(_) | K::InvalidAliasName(_) => {
                (400, "ValidationException")
            }
            K::AccessDenied(_) => (403, "AccessDeniedException"),
            K::NotFound(_) => (404, "KeyNotFoundException"),
            K::Throttling(_) | K::LimitExceeded(_) => (429, "ThrottlingException"),
            K::UnsupportedOperation(_) => (501, "UnsupportedOperationException"),
            K::DependencyTimeout(_) | K::KeyUnavailable(_) => (503, "DependencyTimeoutException"),
            _ => {
                tracing::error!(error = %e, "XKS request failed inside the proxy");
                return XksError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalException",
                    "The proxy failed to process the request; its log has the details.",
                );
            }
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        XksError::new(status, name, e.message())
    }

    /// The error's response.
    pub fn response(&self) -> Response {
        let body = json!({"errorName": self.name, "errorMessage": self.message});
        let mut r = json_response(self.status, &body);
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        r
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    // Straight into bytes: `to_string` would go through the `Display` machinery.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `requestMetadata` as sent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMetadata {
    kms_request_id: String,
    kms_operation: String,
    aws_principal_arn: Option<String>,
    kms_key_arn: Option<String>,
    kms_via_service: Option<String>,
    aws_source_vpc: Option<String>,
    aws_source_vpce: Option<String>,
}

impl From<WireMetadata> for RequestMetadata {
    fn from(m: WireMetadata) -> RequestMetadata {
        RequestMetadata {
            kms_request_id: m.kms_request_id,
            kms_operation: m.kms_operation,
            aws_principal_arn: m.aws_principal_arn,
            kms_key_arn: m.kms_key_arn,
            kms_via_service: m.kms_via_service,
            aws_source_vpc: m.aws_source_vpc,
            aws_source_vpce: m.aws_source_vpce,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    request_metadata: WireMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptBody {
    request_metadata: WireMetadata,
    #[serde(deserialize_with = "crate::redact::zeroizing_string")]
    plaintext: Zeroizing<String>,
    encryption_algorithm: String,
    additional_authenticated_data: Option<String>,
    ciphertext_data_integrity_value_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecryptBody {
    request_metadata: WireMetadata,
    encryption_algorithm: String,
    ciphertext: String,
    initialization_vector: String,
    authentication_tag: String,
    ciphertext_metadata: Option<String>,
    additional_authenticated_data: Option<String>,
}

/// A body read as `T`: one JSON object with the members the operation needs. The message
/// says where, never what (serde's text can quote the body).
fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, XksError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            "does not match the operation's input (a required member is missing or of the wrong type)"
        } else {
            "is not valid JSON"
        };
        XksError::validation(format!(
            "The request body {what} (line {}, column {}).",
            e.line(),
            e.column()
        ))
    })
}

/// A base64 member's bytes.
fn bytes_of(member: &str, text: &str) -> Result<Vec<u8>, XksError> {
    B64.decode(text)
        .map_err(|_| XksError::validation(format!("{member} is not valid base64.")))
}

fn check_algorithm(alg: &str) -> Result<(), XksError> {
    if alg == AES_GCM {
        Ok(())
    } else {
        Err(XksError::validation(format!(
            "encryptionAlgorithm must be {AES_GCM}."
        )))
    }
}

/// GetHealthStatus's input.
pub fn health_request(bytes: &[u8]) -> Result<XksHealthRequest, XksError> {
    let b: HealthBody = parse(bytes)?;
    Ok(XksHealthRequest {
        request_metadata: b.request_metadata.into(),
    })
}

/// GetKeyMetadata's input.
pub fn metadata_request(key: &str, bytes: &[u8]) -> Result<XksKeyMetadataRequest, XksError> {
    let b: HealthBody = parse(bytes)?;
    Ok(XksKeyMetadataRequest {
        external_key_id: key.to_string(),
        request_metadata: b.request_metadata.into(),
    })
}

/// Encrypt's input.
pub fn encrypt_request(key: &str, bytes: &[u8]) -> Result<XksEncryptRequest, XksError> {
    let b: EncryptBody = parse(bytes)?;
    check_algorithm(&b.encryption_algorithm)?;
    let integrity_value = match b.ciphertext_data_integrity_value_algorithm.as_deref() {
        None => false,
        Some(SHA_256) => true,
        Some(_) => {
            return Err(XksError::validation(format!(
                "ciphertextDataIntegrityValueAlgorithm must be {SHA_256}."
            )))
        }
    };
    let aad = b.additional_authenticated_data.as_deref();
    Ok(XksEncryptRequest {
        external_key_id: key.to_string(),
        request_metadata: b.request_metadata.into(),
        plaintext: Zeroizing::new(bytes_of("plaintext", &b.plaintext)?),
        additional_authenticated_data: aad
            .map(|a| bytes_of("additionalAuthenticatedData", a))
            .transpose()?,
        integrity_value,
    })
}

/// Decrypt's input.
pub fn decrypt_request(key: &str, bytes: &[u8]) -> Result<XksDecryptRequest, XksError> {
    let b: DecryptBody = parse(bytes)?;
    check_algorithm(&b.encryption_algorithm)?;
    let optional = |member: &str, v: Option<&str>| v.map(|t| bytes_of(member, t)).transpose();
    Ok(XksDecryptRequest {
        external_key_id: key.to_string(),
        request_metadata: b.request_metadata.into(),
        ciphertext: bytes_of("ciphertext", &b.ciphertext)?,
        initialization_vector: bytes_of("initializationVector", &b.initialization_vector)?,
        authentication_tag: bytes_of("authenticationTag", &b.authentication_tag)?,
        ciphertext_metadata: optional("ciphertextMetadata", b.ciphertext_metadata.as_deref())?,
        additional_authenticated_data: optional(
            "additionalAuthenticatedData",
            b.additional_authenticated_data.as_deref(),
        )?,
    })
}

/// GetHealthStatus's answer (one proxy; one fleet entry per backing HSM).
pub fn health_body(r: XksHealthResponse) -> Value {
    let details: Vec<Value> = r
        .ekm_fleet_details
        .iter()
        .map(|d| json!({"id": d.id, "model": d.model, "healthStatus": d.health.as_str()}))
        .collect();
    json!({
        "xksProxyFleetSize": 1,
        "xksProxyVendor": "p11kms",
        "xksProxyModel": concat!("p11kms ", env!("CARGO_PKG_VERSION")),
        "ekmVendor": "PKCS#11",
        "ekmFleetDetails": details,
    })
}

/// GetKeyMetadata's answer.
pub fn metadata_body(r: XksKeyMetadataResponse) -> Value {
    json!({
        "keySpec": XksKeyMetadataResponse::KEY_SPEC,
        "keyUsage": XksKeyMetadataResponse::KEY_USAGE,
        "keyStatus": r.key_status.as_str(),
    })
}

/// Encrypt's answer.
pub fn encrypt_body(r: XksEncryptResponse) -> Value {
    let mut v = json!({
        "ciphertext": B64.encode(&r.ciphertext),
        "initializationVector": B64.encode(r.initialization_vector),
        "authenticationTag": B64.encode(r.authentication_tag),
        "ciphertextMetadata": B64.encode(&r.ciphertext_metadata),
    });
    if let Some(cdiv) = r.ciphertext_data_integrity_value {
        v["ciphertextDataIntegrityValue"] = Value::from(B64.encode(cdiv));
    }
    v
}

/// Decrypt's answer.
pub fn decrypt_body(r: XksDecryptResponse) -> Value {
    json!({"plaintext": B64.encode(&*r.plaintext)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_short_printable_ascii() {
        let e = XksError::validation(format!("bad\u{7}\n\u{e9}{}", "x".repeat(900)));
        assert_eq!(e.message.len(), MAX_MESSAGE);
        assert!(e.message.chars().all(|c| c == ' ' || c.is_ascii_graphic()));
        assert!(e.message.starts_with("bad???"));
    }

    #[test]
    fn engine_errors_have_the_specifications_names() {
        let cases = [
            (KmsError::Disabled("d".into()), 400, "InvalidStateException"),
            (
                KmsError::InvalidCiphertext("c".into()),
                400,
                "InvalidCiphertextException",
            ),
            (
                KmsError::InvalidKeyUsage("u".into()),
                400,
                "InvalidKeyUsageException",
            ),
            (
                KmsError::AccessDenied("a".into()),
                403,
                "AccessDeniedException",
            ),
            (KmsError::NotFound("n".into()), 404, "KeyNotFoundException"),
            (KmsError::Throttling("t".into()), 429, "ThrottlingException"),
            (
                KmsError::DependencyTimeout("t".into()),
                503,
                "DependencyTimeoutException",
            ),
            (
                KmsError::Internal("secret detail".into()),
                500,
                "InternalException",
            ),
        ];
        for (e, status, name) in cases {
            let w = XksError::from_kms(&e);
            assert_eq!((w.status.as_u16(), w.name), (status, name), "{e:?}");
        }
        let internal = XksError::from_kms(&KmsError::Internal("secret detail".into()));
        assert!(!internal.message.contains("secret"));
    }

    #[test]
    fn bodies_are_read_as_the_specification_writes_them() {
        let md = r#"{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"arn:p"}"#;
        let body = format!(
            r#"{{"requestMetadata":{md},"plaintext":"AAE=","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"Ag==","ciphertextDataIntegrityValueAlgorithm":"SHA_256"}}"#
        );
        let r = encrypt_request("k", body.as_bytes()).unwrap();
        assert_eq!(&*r.plaintext, &[0, 1]);
        assert_eq!(r.additional_authenticated_data, Some(vec![2]));
        assert!(r.integrity_value);
        assert_eq!(
            r.request_metadata.aws_principal_arn.as_deref(),
            Some("arn:p")
        );
        let bad_alg = body.replace("AES_GCM", "AES_CBC");
        assert_eq!(
            encrypt_request("k", bad_alg.as_bytes()).unwrap_err().name,
            "ValidationException"
        );
        let bad_b64 = body.replace("AAE=", "***");
        assert!(encrypt_request("k", bad_b64.as_bytes())
            .unwrap_err()
            .message
            .contains("plaintext"));
        let e = encrypt_request("k", b"{\"plaintext\":\"SECRET\"").unwrap_err();
        assert!(!e.message.contains("SECRET"));
        assert!(health_request(b"{}").is_err());
    }
}
