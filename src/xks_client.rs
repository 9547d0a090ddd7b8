//! The outbound XKS proxy client: p11kms calling an external key store proxy (any
//! implementation of AWS's "External Key Store Proxy API", p11kms's own XKS door included)
//! for its `EXTERNAL_KEY_STORE` custom key stores (`docs/custom-key-stores.md`, "External key
//! stores").
//!
//! Every call is a `POST {endpoint}{uriPath}/health` or `/keys/{id}/metadata|encrypt|decrypt`
//! with a JSON body, signed with SigV4 (service `kms-xks-proxy`) by the one signer
//! ([`crate::identity::sigv4::authorization_header`]), over HTTPS trusting the operator's
//! `[xks_client] ca_file`, or plain HTTP to a loopback address only. A call, connection
//! included, gets [`CALL_TIMEOUT`] (AWS gives a proxy 250 ms). Connections are kept alive in a
//! small pool per store. Failures are typed ([`XksProxyError`]); the engine maps them to AWS
//! exceptions and connection error codes in one place (`core::external`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::identity::sigv4::{self, SignableRequest, SigningParams};
use crate::redact::redacted_debug;
use crate::wire_enum::wire_enum;

/// How long one proxy call may take, connecting included (AWS KMS's limit).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// The SigV4 service name of the XKS proxy API.
pub const SERVICE: &str = "kms-xks-proxy";
/// Idle connections kept per store.
const POOL_MAX: usize = 8;
/// Largest proxy answer read (the specification's bodies are a few KiB).
const MAX_ANSWER: usize = 64 * 1024;

wire_enum!(
    /// The error names of the XKS proxy API specification.
    ProxyErrorName {
        Validation = "ValidationException",
        InvalidState = "InvalidStateException",
        InvalidCiphertext = "InvalidCiphertextException",
        InvalidKeyUsage = "InvalidKeyUsageException",
        AuthenticationFailed = "AuthenticationFailedException",
        AccessDenied = "AccessDeniedException",
        KeyNotFound = "KeyNotFoundException",
        InvalidUriPath = "InvalidUriPathException",
        Throttling = "ThrottlingException",
        UnsupportedOperation = "UnsupportedOperationException",
        DependencyTimeout = "DependencyTimeoutException",
        Internal = "InternalException",
    }
);

/// Why a proxy call failed. Never carries a secret or a plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XksProxyError {
    /// No answer within [`CALL_TIMEOUT`].
    #[error("the XKS proxy did not answer within {} ms", CALL_TIMEOUT.as_millis())]
    Timeout,
    /// The endpoint could not be reached (no such host, connection refused or reset).
    #[error("the XKS proxy is not reachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed (untrusted or mismatched certificate, no CA configured).
    #[error("the TLS connection to the XKS proxy failed: {0}")]
    Tls(String),
    /// The proxy answered with one of the specification's errors (401 and 403 included).
    #[error("the XKS proxy answered {status} {name}")]
    Proxy {
        /// The HTTP status.
        status: u16,
        /// The specification's error name.
        name: ProxyErrorName,
    },
    /// The answer is not what the specification says (status, body, member).
    #[error("the XKS proxy's answer is invalid: {0}")]
    InvalidResponse(String),
    /// The store's settings cannot make a request (an endpoint p11kms does not call).
    #[error("the XKS proxy configuration is invalid: {0}")]
    InvalidConfiguration(String),
}

impl XksProxyError {
    /// Whether the proxy refused the credential (401) or the caller (403).
    pub fn is_auth_denied(&self) -> bool {
        matches!(
            self,
            XksProxyError::Proxy {
                name: ProxyErrorName::AuthenticationFailed | ProxyErrorName::AccessDenied,
                ..
            }
        )
    }

    /// The answer class recorded in audit events and logs (never data).
    pub fn class(&self) -> &'static str {
        match self {
            XksProxyError::Timeout => "timeout",
            XksProxyError::Unreachable(_) => "unreachable",
            XksProxyError::Tls(_) => "tls",
            XksProxyError::Proxy { name, .. } => name.as_str(),
            XksProxyError::InvalidResponse(_) => "invalid-response",
            XksProxyError::InvalidConfiguration(_) => "invalid-configuration",
        }
    }
}

/// The SigV4 credential a store signs its proxy requests with. `Debug` never prints the
/// secret.
#[derive(Clone)]
pub struct XksCredential {
    /// `AccessKeyId` (20-30 of `[A-Z2-7]`).
    pub access_key_id: String,
    /// `RawSecretAccessKey` (43-64 characters).
    pub secret: Zeroizing<String>,
}

redacted_debug!(XksCredential {
    access_key_id,
    secret: redacted
});

/// Where a store's proxy is and how it is reached.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// `XksProxyUriEndpoint`: `https://host[:port]`, or `http://` to a loopback address.
    pub endpoint: String,
    /// `XksProxyUriPath`: `[/prefix]/kms/xks/v1`.
    pub uri_path: String,
    /// The SigV4 region (`[kms] region`).
    pub region: String,
}

/// The host, port and scheme of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

/// Reads an endpoint: `https://host[:port]`, or `http://host:port` with a loopback host.
fn parse_endpoint(endpoint: &str) -> Result<Endpoint, XksProxyError> {
    let bad = |why: &str| XksProxyError::InvalidConfiguration(format!("endpoint: {why}"));
    let (tls, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = endpoint.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("not https:// or http://"));
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => (h, p.parse().map_err(|_| bad("bad port"))?),
        _ => (rest, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(bad("bad host"));
    }
    if !tls && !is_loopback(host) {
        return Err(bad("plain http is allowed only to a loopback address"));
    }
    Ok(Endpoint {
        tls,
        host: host.to_string(),
        port,
    })
}

/// Whether `host` is `localhost` or a loopback IP address.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The headers of an XKS proxy request `POST path` whose body hashes to `body_sha256_hex`:
/// `host`, `content-type`, `x-amz-date` (`params.amz_date`) and the SigV4 `authorization`
/// over them, made by the crate's one signer. The bench and the tests sign with it too.
pub fn signed_headers(
    host: String,
    path: &str,
    body_sha256_hex: &str,
    params: &SigningParams<'_>,
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("host".to_string(), host),
        ("content-type".to_string(), "application/json".to_string()),
        ("x-amz-date".to_string(), params.amz_date.to_string()),
    ];
    let names: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
    let auth = sigv4::authorization_header(
        &SignableRequest {
            method: "POST",
            path,
            query: "",
            headers: &headers,
            payload_sha256_hex: body_sha256_hex,
        },
        &names,
        params,
    );
    headers.push(("authorization".to_string(), auth));
    headers
}

/// Whether `endpoint` is one p11kms can call (https, or http to loopback).
pub fn endpoint_is_callable(endpoint: &str) -> bool {
    parse_endpoint(endpoint).is_ok()
}

/// A connection ready to send one request.
type Sender = SendRequest<Full<Bytes>>;

/// One store's proxy client: its target, credential, TLS trust and pooled connections.
pub struct XksProxyClient {
    target: ProxyTarget,
    endpoint: Endpoint,
    credential: XksCredential,
    tls: Option<tokio_rustls::TlsConnector>,
    pool: Mutex<Vec<Sender>>,
    now_secs: fn() -> i64,
}

impl std::fmt::Debug for XksProxyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XksProxyClient")
            .field("target", &self.target)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// The operator's TLS trust for proxies: the certificates of `[xks_client] ca_file`.
pub fn tls_config(
    ca_pem: Option<&[u8]>,
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("ca_file: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca_file: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The unix time now, seconds.
fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// GetKeyMetadata's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalKeyMetadata {
    /// `keySpec` (`AES_256` for a usable key).
    pub key_spec: String,
    /// `keyUsage` (`ENCRYPT` and `DECRYPT` for a usable key).
    pub key_usage: Vec<String>,
    /// `keyStatus`: `ENABLED` or `DISABLED`.
    pub enabled: bool,
}

/// Encrypt's answer: what Decrypt needs back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySealed {
    pub ciphertext: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    /// `ciphertextMetadata` (at most 20 bytes; empty when absent).
    pub metadata: Vec<u8>,
}

/// The `requestMetadata` every call carries.
#[derive(Debug, Clone, Default)]
pub struct ProxyRequestMetadata {
    pub kms_request_id: String,
    pub kms_operation: String,
    pub aws_principal_arn: Option<String>,
    pub kms_key_arn: Option<String>,
}

impl ProxyRequestMetadata {
    fn to_json(&self) -> Value {
        let mut m = json!({
            "kmsRequestId": self.kms_request_id,
            "kmsOperation": self.kms_operation,
        });
        if let Some(p) = &self.aws_principal_arn {
            m["awsPrincipalArn"] = json!(p);
        }
        if let Some(k) = &self.kms_key_arn {
            m["kmsKeyArn"] = json!(k);
        }
        m
    }
}

impl XksProxyClient {
    /// A client for one store; no connection is made until the first call.
    pub fn new(
        target: ProxyTarget,
        credential: XksCredential,
        tls: Arc<tokio_rustls::rustls::ClientConfig>,
    ) -> Result<XksProxyClient, XksProxyError> {
        let endpoint = parse_endpoint(&target.endpoint)?;
        Ok(XksProxyClient {
            tls: endpoint.tls.then(|| tokio_rustls::TlsConnector::from(tls)),
            endpoint,
            target,
            credential,
            pool: Mutex::new(Vec::new()),
            now_secs: system_now,
        })
    }

    /// GetHealthStatus (`kms_operation` says why: KmsHealthCheck, ConnectCustomKeyStore...).
    /// An answer whose every `ekmFleetDetails` is `UNAVAILABLE` is
    /// [`XksProxyError::Unreachable`], as AWS treats it.
    pub async fn health(&self, meta: &ProxyRequestMetadata) -> Result<(), XksProxyError> {
        let body = json!({ "requestMetadata": meta.to_json() });
        let v = self.call("health", &body).await?;
        let fleet = v["ekmFleetDetails"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid("health: no ekmFleetDetails"))?;
        let up = fleet
            .iter()
            .any(|e| matches!(e["healthStatus"].as_str(), Some("ACTIVE" | "DEGRADED")));
        if up {
            Ok(())
        } else {
            Err(XksProxyError::Unreachable(
                "every external key manager instance is UNAVAILABLE".into(),
            ))
        }
    }

    /// GetKeyMetadata of external key `key_id`.
    pub async fn key_metadata(
        &self,
        key_id: &str,
        meta: &ProxyRequestMetadata,
    ) -> Result<ExternalKeyMetadata, XksProxyError> {
        let body = json!({ "requestMetadata": meta.to_json() });
        let v = self.call(&key_path(key_id, "metadata")?, &body).await?;
        let status = v["keyStatus"].as_str().unwrap_or_default();
        let key_spec = v["keySpec"].as_str().map(str::to_string);
        let key_usage = v["keyUsage"].as_array().map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
        match (key_spec, key_usage, status) {
            (Some(key_spec), Some(key_usage), "ENABLED" | "DISABLED") => Ok(ExternalKeyMetadata {
                key_spec,
                key_usage,
                enabled: status == "ENABLED",
            }),
            _ => Err(invalid("metadata: keySpec, keyUsage or keyStatus missing")),
        }
    }

    /// Encrypt `plaintext` under external key `key_id` with `aad`.
    pub async fn encrypt(
        &self,
        key_id: &str,
        meta: &ProxyRequestMetadata,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<ProxySealed, XksProxyError> {
        let body = json!({
            "requestMetadata": meta.to_json(),
            "plaintext": B64.encode(plaintext),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": B64.encode(aad),
        });
        let v = self.call(&key_path(key_id, "encrypt")?, &body).await?;
        let sealed = ProxySealed {
            ciphertext: b64_member(&v, "ciphertext")?,
            iv: b64_member(&v, "initializationVector")?,
            tag: b64_member(&v, "authenticationTag")?,
            metadata: match v.get("ciphertextMetadata").filter(|m| !m.is_null()) {
                Some(_) => b64_member(&v, "ciphertextMetadata")?,
                None => Vec::new(),
            },
        };
        let sizes_ok = sealed.ciphertext.len() == plaintext.len()
            && matches!(sealed.iv.len(), 12 | 16)
            && sealed.tag.len() == 16
            && sealed.metadata.len() <= 20;
        if sizes_ok {
            Ok(sealed)
        } else {
            Err(invalid("encrypt: a member has the wrong size"))
        }
    }

    /// Decrypt `sealed` under external key `key_id` with `aad`.
    pub async fn decrypt(
        &self,
        key_id: &str,
        meta: &ProxyRequestMetadata,
        sealed: &ProxySealed,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, XksProxyError> {
        let mut body = json!({
            "requestMetadata": meta.to_json(),
            "encryptionAlgorithm": "AES_GCM",
            "ciphertext": B64.encode(&sealed.ciphertext),
            "initializationVector": B64.encode(&sealed.iv),
            "authenticationTag": B64.encode(&sealed.tag),
            "additionalAuthenticatedData": B64.encode(aad),
        });
        if !sealed.metadata.is_empty() {
            body["ciphertextMetadata"] = json!(B64.encode(&sealed.metadata));
        }
        let v = self.call(&key_path(key_id, "decrypt")?, &body).await?;
        let plaintext = Zeroizing::new(b64_member(&v, "plaintext")?);
        if plaintext.len() == sealed.ciphertext.len() {
            Ok(plaintext)
        } else {
            Err(invalid("decrypt: the plaintext has the wrong size"))
        }
    }

    /// One signed POST of `body` to `{uriPath}/{tail}`, in [`CALL_TIMEOUT`]; the JSON answer
    /// of a 200, or the typed error.
    async fn call(&self, tail: &str, body: &Value) -> Result<Value, XksProxyError> {
        let path = format!("{}/{tail}", self.target.uri_path);
        let bytes = Zeroizing::new(body.to_string().into_bytes());
        let request = self.signed(&path, &bytes)?;
        let (status, answer) = tokio::time::timeout(CALL_TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| XksProxyError::Timeout)??;
        let answer = Zeroizing::new(answer);
        interpret(status, &answer)
    }

    /// The signed HTTP request.
    fn signed(&self, path: &str, body: &[u8]) -> Result<http::Request<Full<Bytes>>, XksProxyError> {
        let ep = &self.endpoint;
        let default_port = if ep.tls { 443 } else { 80 };
        let host = if ep.port == default_port {
            ep.host.clone()
        } else if ep.host.contains(':') {
            format!("[{}]:{}", ep.host, ep.port)
        } else {
            format!("{}:{}", ep.host, ep.port)
        };
        let amz_date = crate::time::format_amz_date((self.now_secs)());
        let headers = signed_headers(
            host,
            path,
            &sigv4::sha256_hex(body),
            &SigningParams {
                access_key_id: &self.credential.access_key_id,
                secret_access_key: &self.credential.secret,
                region: &self.target.region,
                service: SERVICE,
                amz_date: &amz_date,
            },
        );
        let mut builder = http::Request::post(path);
        for (k, v) in &headers {
            builder = builder.header(k, v);
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| XksProxyError::InvalidConfiguration(format!("request: {e}")))
    }

    /// Sends `request` on a pooled connection (or a new one) and reads the whole answer.
    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Vec<u8>), XksProxyError> {
        let mut sender = match self.pooled() {
            Some(s) => s,
            None => self.connect().await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| XksProxyError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| invalid("the answer could not be read"))?
            .to_bytes()
            .to_vec();
        self.give_back(sender);
        Ok((status, body))
    }

    fn pooled(&self) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = pool.pop() {
            if !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, sender: Sender) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if !sender.is_closed() && pool.len() < POOL_MAX {
            pool.push(sender);
        }
    }

    /// Drops every pooled connection (the proxy went away, or the store disconnects).
    pub fn forget_connections(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A new connection: TCP, TLS when https, then the HTTP/1.1 handshake.
    async fn connect(&self) -> Result<Sender, XksProxyError> {
        let ep = &self.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| XksProxyError::Unreachable(e.kind().to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(ep.host.clone())
                    .map_err(|_| XksProxyError::InvalidConfiguration("bad host name".into()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| XksProxyError::Tls(e.to_string()))?;
                handshake(stream).await
            }
        }
    }
}

/// The HTTP/1.1 handshake on `io`; the connection is driven by a task until it closes.
async fn handshake<T>(io: T) -> Result<Sender, XksProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| XksProxyError::Unreachable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn invalid(why: &str) -> XksProxyError {
    XksProxyError::InvalidResponse(why.to_string())
}

/// `keys/{id}/{op}`, with the key id checked against the specification's form.
fn key_path(key_id: &str, op: &str) -> Result<String, XksProxyError> {
    let ok = (1..=128).contains(&key_id.len())
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(format!("keys/{key_id}/{op}"))
    } else {
        Err(XksProxyError::InvalidConfiguration(
            "the external key id is not 1-128 of [A-Za-z0-9._-]".into(),
        ))
    }
}

fn b64_member(v: &Value, name: &str) -> Result<Vec<u8>, XksProxyError> {
    v[name]
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| XksProxyError::InvalidResponse(format!("{name} missing or not base64")))
}

/// The typed outcome of a proxy answer: the JSON of a 200; the specification's error for an
/// error status whose body names one with its status; anything else is an invalid response.
pub fn interpret(status: u16, body: &[u8]) -> Result<Value, XksProxyError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if status == 200 {
        return parsed
            .filter(Value::is_object)
            .ok_or_else(|| invalid("the body of a 200 answer is not a JSON object"));
    }
    let name = parsed
        .as_ref()
        .and_then(|v| v["errorName"].as_str())
        .and_then(ProxyErrorName::parse);
    match name {
        Some(name) if spec_status(name) == status => Err(XksProxyError::Proxy { status, name }),
        // An authentication failure is one whatever the body says.
        _ if status == 401 => Err(XksProxyError::Proxy {
            status,
            name: ProxyErrorName::AuthenticationFailed,
        }),
        _ => Err(XksProxyError::InvalidResponse(format!(
            "status {status} without a matching error name"
        ))),
    }
}

/// The HTTP status the specification gives each error.
fn spec_status(name: ProxyErrorName) -> u16 {
    use ProxyErrorName as N;
    match name {
        N::Validation | N::InvalidState | N::InvalidCiphertext | N::InvalidKeyUsage => 400,
        N::AuthenticationFailed => 401,
        N::AccessDenied => 403,
        N::KeyNotFound | N::InvalidUriPath => 404,
        N::Throttling => 429,
        N::UnsupportedOperation => 501,
        N::DependencyTimeout => 503,
        N::Internal => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        let ep = parse_endpoint("https://xks.example.com").unwrap();
        assert_eq!(
            (ep.tls, ep.host.as_str(), ep.port),
            (true, "xks.example.com", 443)
        );
        let ep = parse_endpoint("http://127.0.0.1:4444").unwrap();
        assert_eq!(
            (ep.tls, ep.host.as_str(), ep.port),
            (false, "127.0.0.1", 4444)
        );
        assert!(parse_endpoint("http://[::1]:80").is_ok());
        for bad in [
            "http://xks.example.com",
            "http://10.0.0.1:80",
            "ftp://127.0.0.1",
            "https://",
            "https://a:notaport",
            "https://a/b",
        ] {
            assert!(
                matches!(
                    parse_endpoint(bad),
                    Err(XksProxyError::InvalidConfiguration(_))
                ),
                "{bad}"
            );
        }
    }

    /// Every answer maps to one typed outcome: a 200 JSON object, a specification error at
    /// its own status, 401 whatever its body, and anything else an invalid response.
    #[test]
    fn answers_map_to_typed_errors() {
        assert!(interpret(200, br#"{"a":1}"#).is_ok());
        let err = |s, b: &str| interpret(s, b.as_bytes()).unwrap_err();
        assert_eq!(
            err(200, "[1]"),
            invalid("the body of a 200 answer is not a JSON object")
        );
        assert!(matches!(
            err(200, "not json"),
            XksProxyError::InvalidResponse(_)
        ));
        for (status, name, want) in [
            (403, "AccessDeniedException", ProxyErrorName::AccessDenied),
            (400, "InvalidStateException", ProxyErrorName::InvalidState),
            (404, "KeyNotFoundException", ProxyErrorName::KeyNotFound),
            (
                503,
                "DependencyTimeoutException",
                ProxyErrorName::DependencyTimeout,
            ),
            (
                401,
                "AuthenticationFailedException",
                ProxyErrorName::AuthenticationFailed,
            ),
        ] {
            let body = format!(r#"{{"errorName":"{name}","errorMessage":"m"}}"#);
            assert_eq!(
                err(status, &body),
                XksProxyError::Proxy { status, name: want }
            );
        }
        // 401 with any body is an authentication failure; auth failures are "denied".
        assert!(err(401, "").is_auth_denied());
        assert!(err(403, r#"{"errorName":"AccessDeniedException"}"#).is_auth_denied());
        // A name at the wrong status, an unknown name, or a bare status: invalid.
        for (s, b) in [
            (500, r#"{"errorName":"KeyNotFoundException"}"#),
            (400, r#"{"errorName":"NoSuchException"}"#),
            (502, "<html>"),
        ] {
            assert!(
                matches!(err(s, b), XksProxyError::InvalidResponse(_)),
                "{s} {b}"
            );
        }
    }

    #[test]
    fn key_ids_are_checked_before_they_reach_a_path() {
        assert_eq!(
            key_path("k-1.a_b", "encrypt").unwrap(),
            "keys/k-1.a_b/encrypt"
        );
        for bad in ["", "a/b", "../x", &"k".repeat(129)] {
            assert!(key_path(bad, "metadata").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_secret_is_never_printed() {
        let c = XksCredential {
            access_key_id: "AKIAXKSTESTAAAAAAAA2".into(),
            secret: Zeroizing::new("SECRET-0123456789abcdefghijklmnopqrstuvwxyzAB".into()),
        };
        let text = format!("{c:?}");
        assert!(
            text.contains("AKIAXKSTESTAAAAAAAA2") && !text.contains("SECRET"),
            "{text}"
        );
    }

    /// A refused connection is unreachable, and a silent listener a timeout, within the
    /// call's budget.
    #[tokio::test]
    async fn unreachable_and_silent_proxies_fail_fast() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let client = |port: u16| {
            XksProxyClient::new(
                ProxyTarget {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    uri_path: "/kms/xks/v1".into(),
                    region: "us-east-1".into(),
                },
                XksCredential {
                    access_key_id: "AKIAXKSTESTAAAAAAAA2".into(),
                    secret: Zeroizing::new("s".repeat(43)),
                },
                tls_config(None).unwrap(),
            )
            .unwrap()
        };
        let meta = ProxyRequestMetadata::default();
        let started = std::time::Instant::now();
        let e = client(closed_port).health(&meta).await.unwrap_err();
        assert!(matches!(e, XksProxyError::Unreachable(_)), "{e:?}");
        let e = client(silent.local_addr().unwrap().port())
            .health(&meta)
            .await
            .unwrap_err();
        assert_eq!(e, XksProxyError::Timeout);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
