//! The AWS door's one error mapping: `KmsError`, authentication failures and protocol
//! refusals to the wire.
//!
//! KMS (AWS JSON 1.1): `{"__type": "<ExceptionName>", "message": "..."}` with the HTTP status of
//! kms-spec sections 1.6 and 2.4, and `x-amzn-RequestId`. STS (Query protocol): AWS's
//! `<ErrorResponse>` XML with STS's own codes (`AccessDenied`, `InvalidClientTokenId`,
//! `SignatureDoesNotMatch`, ...).
//!
//! Protocol refusals (decisions, documented in `docs/aws-clients.md`):
//!
//! | Case | Status | `__type` |
//! |---|---|---|
//! | unknown `X-Amz-Target` | 400 | UnknownOperationException |
//! | no `X-Amz-Target` (and not an STS form) | 400 | UnknownOperationException |
//! | a method other than POST | 405 (`Allow: POST`) | UnknownOperationException |
//! | an `Origin` header other than the listener's own (a page of another site) | 403 | AccessDeniedException |
//! | body over `max_body_bytes`, refused before it is read in full or parsed | 413 | RequestEntityTooLargeException |
//! | body not JSON, not an object, or a member of the wrong type (named, never its value) | 400 | SerializationException |
//! | a body outside the AWS model's constraints (`model`) | 400 | ValidationException |

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::core::KmsError;
use crate::identity::auth::AuthError;

/// The AWS JSON 1.1 content type.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The STS XML namespace.
pub const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// A refusal or failure as the wire shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The AWS error name (`__type`, or the STS `Code`).
    pub name: &'static str,
    /// The HTTP status.
    pub status: StatusCode,
    /// The caller-safe message.
    pub message: String,
}

impl WireError {
    fn new(name: &'static str, message: impl Into<String>) -> WireError {
        WireError {
            name,
            status: json_status(name),
            message: message.into(),
        }
    }

    /// An `X-Amz-Target` this door does not serve (or none).
    pub fn unknown_operation(message: impl Into<String>) -> WireError {
        WireError::new("UnknownOperationException", message)
    }

    /// A method other than POST.
    pub fn method_not_allowed(method: &str) -> WireError {
        WireError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            ..WireError::new(
                "UnknownOperationException",
                format!("The HTTP method {method} is not supported; AWS JSON requests are POST /."),
            )
        }
    }

    /// A request from a browser page of another origin: CORS is allowed for the operator
    /// console's own origin only (`api::console`).
    pub fn foreign_origin(xml: bool) -> WireError {
        let name = if xml {
            "AccessDenied"
        } else {
            "AccessDeniedException"
        };
        WireError {
            status: StatusCode::FORBIDDEN,
            ..WireError::new(
                name,
                "Requests from a web page of another origin are not accepted.",
            )
        }
    }

    /// A body that is not the operation's JSON input.
    pub fn serialization(message: impl Into<String>) -> WireError {
        WireError::new("SerializationException", message)
    }

    /// A body larger than the configured limit.
    pub fn too_large(limit: usize) -> WireError {
        WireError::new(
            "RequestEntityTooLargeException",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
    }

    /// An engine error.
    pub fn from_kms(e: &KmsError) -> WireError {
        WireError::new(e.aws_name(), e.message())
    }

    /// An authentication failure (AWS's names: MissingAuthenticationTokenException,
    /// IncompleteSignatureException, InvalidSignatureException, UnrecognizedClientException,
    /// ExpiredTokenException).
    pub fn from_auth(e: &AuthError) -> WireError {
        WireError::new(e.aws_name(), e.to_string())
    }

    /// The STS (Query protocol) form of an engine error.
    pub fn sts_from_kms(e: &KmsError) -> WireError {
        let (name, status) = match e {
            KmsError::AccessDenied(_) => ("AccessDenied", StatusCode::FORBIDDEN),
            KmsError::Validation(_) => ("ValidationError", StatusCode::BAD_REQUEST),
            KmsError::MalformedPolicyDocument(_) => {
                ("MalformedPolicyDocument", StatusCode::BAD_REQUEST)
            }
            KmsError::LimitExceeded(_) => ("PackedPolicyTooLarge", StatusCode::BAD_REQUEST),
            KmsError::Throttling(_) => ("Throttling", StatusCode::BAD_REQUEST),
            KmsError::NotFound(_) => ("NoSuchEntity", StatusCode::NOT_FOUND),
            KmsError::DependencyTimeout(_) => {
                ("ServiceUnavailable", StatusCode::SERVICE_UNAVAILABLE)
            }
            KmsError::Internal(_) | KmsError::KeyUnavailable(_) => {
                ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR)
            }
            _ => (e.aws_name(), json_status(e.aws_name())),
        };
        WireError {
            name,
            status,
            message: e.message(),
        }
    }

    /// The STS form of an authentication failure, with STS's codes.
    pub fn sts_from_auth(e: &AuthError) -> WireError {
        let (name, status) = match e {
            AuthError::MissingAuthenticationToken => {
                ("MissingAuthenticationToken", StatusCode::FORBIDDEN)
            }
            AuthError::UnrecognizedClient(_) => ("InvalidClientTokenId", StatusCode::FORBIDDEN),
            AuthError::IncompleteSignature(_) => ("IncompleteSignature", StatusCode::BAD_REQUEST),
            AuthError::InvalidSignature(_) => ("SignatureDoesNotMatch", StatusCode::FORBIDDEN),
            AuthError::ExpiredToken => ("ExpiredToken", StatusCode::BAD_REQUEST),
        };
        WireError {
            name,
            status,
            message: e.to_string(),
        }
    }

    /// An STS action this door does not serve.
    pub fn sts_invalid_action(action: &str) -> WireError {
        WireError {
            name: "InvalidAction",
            status: StatusCode::BAD_REQUEST,
            message: format!("Could not find operation {action:?} for version 2011-06-15"),
        }
    }
}

/// The HTTP status of an AWS JSON error name (kms-spec 1.6 and 2.4): 400 for every client-side
/// KMS exception, 412 for DryRunOperationException, 500 for the three retryable server-side
/// ones; the protocol refusals keep their own statuses.
pub fn json_status(name: &str) -> StatusCode {
    match name {
        "DryRunOperationException" => StatusCode::PRECONDITION_FAILED,
        "KeyUnavailableException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "InternalFailure" => StatusCode::INTERNAL_SERVER_ERROR,
        "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "MissingAuthenticationTokenException" => StatusCode::FORBIDDEN,
        "RequestEntityTooLargeException" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn request_id_header(request_id: &str) -> HeaderValue {
    HeaderValue::from_str(request_id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A 200 AWS JSON response.
pub fn json_ok(request_id: &str, body: &serde_json::Value) -> Response {
    json_response(request_id, StatusCode::OK, body.to_string())
}

fn json_response(request_id: &str, status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    h.insert("x-amzn-requestid", request_id_header(request_id));
    r
}

/// The AWS JSON error response.
pub fn json_error(request_id: &str, e: &WireError) -> Response {
    let body = json!({"__type": e.name, "message": e.message}).to_string();
    let mut r = json_response(request_id, e.status, body);
    if e.status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    r
}

/// Escapes text for XML element content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A 200 STS XML response.
pub fn xml_ok(request_id: &str, body: String) -> Response {
    xml_response(request_id, StatusCode::OK, body)
}

fn xml_response(request_id: &str, status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    h.insert("x-amzn-requestid", request_id_header(request_id));
    r
}

/// The STS XML error response.
pub fn xml_error(request_id: &str, e: &WireError) -> Response {
    let kind = if e.status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let body = format!(
        "<ErrorResponse xmlns=\"{STS_XMLNS}\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n</ErrorResponse>\n",
        xml_escape(e.name),
        xml_escape(&e.message),
        xml_escape(request_id),
    );
    xml_response(request_id, e.status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_spec() {
        // Every variant (the match below stops compiling when one is added unlisted).
        let all = [
            KmsError::NotFound(String::new()),
            KmsError::AccessDenied(String::new()),
            KmsError::Disabled(String::new()),
            KmsError::InvalidState(String::new()),
            KmsError::KeyUnavailable(String::new()),
            KmsError::AlreadyExists(String::new()),
            KmsError::Validation(String::new()),
            KmsError::InvalidCiphertext(String::new()),
            KmsError::IncorrectKey(String::new()),
            KmsError::InvalidKeyUsage(String::new()),
            KmsError::MalformedPolicyDocument(String::new()),
            KmsError::InvalidGrantToken(String::new()),
            KmsError::InvalidGrantId(String::new()),
            KmsError::InvalidAliasName(String::new()),
            KmsError::InvalidArn(String::new()),
            KmsError::InvalidMarker(String::new()),
            KmsError::LimitExceeded(String::new()),
            KmsError::Tag(String::new()),
            KmsError::UnsupportedOperation(String::new()),
            KmsError::Throttling(String::new()),
            KmsError::DependencyTimeout(String::new()),
            KmsError::Internal(String::new()),
            KmsError::InvalidSignature(String::new()),
            KmsError::InvalidMac(String::new()),
            KmsError::ExpiredImportToken(String::new()),
            KmsError::InvalidImportToken(String::new()),
            KmsError::IncorrectKeyMaterial(String::new()),
            KmsError::Conflict(String::new()),
            KmsError::CustomKeyStoreNotFound(String::new()),
            KmsError::CustomKeyStoreInvalidState(String::new()),
            KmsError::CustomKeyStoreHasCmks(String::new()),
            KmsError::CustomKeyStoreNameInUse(String::new()),
            KmsError::CloudHsmClusterNotFound(String::new()),
            KmsError::CloudHsmClusterInUse(String::new()),
            KmsError::CloudHsmClusterNotRelated(String::new()),
            KmsError::IncorrectTrustAnchor(String::new()),
            KmsError::DryRunOperation(String::new()),
            KmsError::Xks(crate::core::XksException::UriInUse, String::new()),
            KmsError::Xks(crate::core::XksException::KeyNotFound, String::new()),
        ];
        for e in &all {
            // kms-spec 1.6, written out per variant rather than recomputed.
            let spec = match e {
                KmsError::KeyUnavailable(_)
                | KmsError::Internal(_)
                | KmsError::DependencyTimeout(_) => 500,
                KmsError::NotFound(_)
                | KmsError::AccessDenied(_)
                | KmsError::Disabled(_)
                | KmsError::InvalidState(_)
                | KmsError::AlreadyExists(_)
                | KmsError::Validation(_)
                | KmsError::InvalidCiphertext(_)
                | KmsError::IncorrectKey(_)
                | KmsError::InvalidKeyUsage(_)
                | KmsError::MalformedPolicyDocument(_)
                | KmsError::InvalidGrantToken(_)
                | KmsError::InvalidGrantId(_)
                | KmsError::InvalidAliasName(_)
                | KmsError::InvalidArn(_)
                | KmsError::InvalidMarker(_)
                | KmsError::LimitExceeded(_)
                | KmsError::Tag(_)
                | KmsError::UnsupportedOperation(_)
                | KmsError::Throttling(_)
                | KmsError::InvalidSignature(_)
                | KmsError::InvalidMac(_)
                | KmsError::ExpiredImportToken(_)
                | KmsError::InvalidImportToken(_)
                | KmsError::IncorrectKeyMaterial(_)
                | KmsError::Conflict(_)
                | KmsError::CustomKeyStoreNotFound(_)
                | KmsError::CustomKeyStoreInvalidState(_)
                | KmsError::CustomKeyStoreHasCmks(_)
                | KmsError::CustomKeyStoreNameInUse(_)
                | KmsError::CloudHsmClusterNotFound(_)
                | KmsError::CloudHsmClusterInUse(_)
                | KmsError::CloudHsmClusterNotRelated(_)
                | KmsError::IncorrectTrustAnchor(_)
                | KmsError::Xks(..) => 400,
                KmsError::DryRunOperation(_) => 412,
            };
            let w = WireError::from_kms(e);
            assert_eq!(w.status.as_u16(), spec, "{e:?}");
            assert_eq!(w.name, e.aws_name());
        }
        assert_eq!(json_status("DryRunOperationException").as_u16(), 412);
        let auth = [
            (AuthError::MissingAuthenticationToken, 403),
            (AuthError::UnrecognizedClient(String::new()), 400),
            (AuthError::IncompleteSignature(String::new()), 400),
            (AuthError::InvalidSignature(String::new()), 400),
            (AuthError::ExpiredToken, 400),
        ];
        for (e, status) in auth {
            let w = WireError::from_auth(&e);
            assert_eq!(w.status.as_u16(), status, "{e:?}");
            assert_eq!(w.name, e.aws_name());
        }
        assert_eq!(WireError::too_large(10).status.as_u16(), 413);
        assert_eq!(WireError::method_not_allowed("GET").status.as_u16(), 405);
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        let r = xml_error(
            "rid",
            &WireError::sts_from_kms(&KmsError::AccessDenied("User: <x> & y".into())),
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
