//! `--door xks`: the load generator of the XKS door (AWS KMS's external key store proxy API,
//! `docs/xks.md`), speaking to p11kms's XKS door or to any XKS proxy (`--xks-endpoint`).
//!
//! Each concurrent worker owns one keep-alive HTTP/1.1 connection (over TLS for `https://`,
//! ALPN `http/1.1`) made with hyper's client connection and tokio-rustls, and sends back to
//! back POSTs to `{prefix}/kms/xks/v1/keys/{id}/encrypt` or `.../decrypt`, each signed with
//! SigV4 (service `kms-xks-proxy`) by the crate's one signer (`identity::sigv4`). The bodies
//! are the ones AWS KMS sends (the specification's example): `requestMetadata` with the AWS
//! caller, key ARN, operation, request id and `kmsViaService`, AAD, and on Encrypt
//! `ciphertextDataIntegrityValueAlgorithm: SHA_256`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio_rustls::rustls;
use zeroize::Zeroizing;

use p11kms::identity::sigv4::{self, SigningParams};

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

/// Where the load goes and as whom.
pub struct Target {
    addr: SocketAddr,
    /// `host[:port]` as the URL has it: the `Host` header (signed).
    authority: String,
    /// TLS to the endpoint (`https://`), with the server name to verify.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    prefix: String,
    key_id: String,
    cred: Credential,
    region: String,
}

impl Target {
    /// The target at `endpoint` (`https://host:port` or, for loopback tests, `http://`),
    /// trusting the CA certificates of `ca` (required for `https://`).
    pub fn new(
        endpoint: &str,
        prefix: &str,
        key_id: &str,
        cred: Credential,
        ca: Option<&Path>,
        tls_name: Option<&str>,
        region: &str,
    ) -> Result<Target, String> {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("XKS endpoint: {e}"))?;
        let host = uri.host().ok_or("XKS endpoint has no host")?.to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("XKS endpoint must be https://host:port (or http://)".into()),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()
            .map_err(|e| format!("XKS endpoint {host}: {e}"))?
            .next()
            .ok_or("XKS endpoint: no address")?;
        let tls = if https {
            let ca = ca.ok_or("an https:// XKS endpoint needs --xks-ca (its CA certificate)")?;
            let name = tls_name.unwrap_or(host.trim_matches(['[', ']']));
            let name = ServerName::try_from(name.to_string())
                .map_err(|e| format!("XKS endpoint host: {e}"))?;
            Some((connector(ca)?, name))
        } else {
            None
        };
        Ok(Target {
            addr,
            authority: uri.authority().map(|a| a.to_string()).unwrap_or(host),
            tls,
            prefix: prefix.trim_end_matches('/').to_string(),
            key_id: key_id.to_string(),
            cred,
            region: region.to_string(),
        })
    }

    /// Whether the load goes over TLS (`https://`).
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    fn path(&self, op: &str) -> String {
        format!("{}/kms/xks/v1/keys/{}/{op}", self.prefix, self.key_id)
    }
}

/// A TLS connector trusting the certificates of `ca`, offering ALPN `http/1.1` only.
fn connector(ca: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// One prepared request: path, body and the body's SHA-256 (hex), sent over and over.
pub struct Call {
    path: String,
    body: Bytes,
    body_sha256: String,
}

impl Call {
    fn new(path: String, body: &Value) -> Call {
        let body = Bytes::from(body.to_string());
        Call {
            path,
            body_sha256: sigv4::sha256_hex(&body),
            body,
        }
    }
}

/// `requestMetadata` as AWS KMS sends it for `op` (`Encrypt` or `Decrypt`).
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
    Call::new(t.path("encrypt"), &body)
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
    Ok(Call::new(t.path("decrypt"), &body))
}

/// The AAD p11kms's HSM sees for [`encrypt_call`] (the specification's formula with p11kms's
/// `ciphertextMetadata` of key version 1): the raw loop's AAD, so that it matches in size.
pub fn raw_aad() -> Vec<u8> {
    let metadata = p11kms::core::xks::version_metadata(1);
    p11kms::core::xks::hsm_aad(AAD, &metadata).unwrap_or_default()
}

/// One keep-alive HTTP/1.1 connection to the target (reopened when the server closed it).
pub struct Conn {
    send: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn connect(t: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(t.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", t.addr))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let handshake_err = |e: hyper::Error| format!("HTTP/1.1 handshake: {e}");
        match &t.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS to {}: {e}", t.addr))?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(conn);
                Ok(send)
            }
            None => {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(conn);
                Ok(send)
            }
        }
    }

    /// Sends `call`, signed now; the answer's body on 200, else the XKS error name (or
    /// `http:<status>` / a transport error).
    async fn send(&mut self, t: &Target, call: &Call) -> Result<Bytes, String> {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            self.send = Some(Self::connect(t).await?);
        }
        let Some(send) = self.send.as_mut() else {
            return Err("no connection".into());
        };
        let req = signed_request(t, call)?;
        let answer = async {
            send.ready().await?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            Ok::<_, hyper::Error>((status, resp.into_body().collect().await?.to_bytes()))
        }
        .await;
        let (status, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                self.send = None;
                return Err(format!("http:{}", transport_kind(&e)));
            }
        };
        if status == 200 {
            return Ok(body);
        }
        let name = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["errorName"].as_str().map(str::to_owned));
        Err(name.unwrap_or_else(|| format!("http:{status}")))
    }
}

impl Conn {
    /// [`Conn::send`] without the answer: one request of the load.
    pub async fn call(&mut self, t: &Target, call: &Call) -> Result<(), String> {
        self.send(t, call).await.map(drop)
    }
}

/// A short, stable name for a transport failure (the error counts' key).
fn transport_kind(e: &hyper::Error) -> &'static str {
    if e.is_closed() || e.is_incomplete_message() {
        "ConnectionClosed"
    } else if e.is_timeout() {
        "Timeout"
    } else {
        "TransportError"
    }
}

/// `call` as an HTTP request with `host`, `content-type`, `x-amz-date` and the SigV4
/// `authorization` over them, made by the crate's signer.
fn signed_request(t: &Target, call: &Call) -> Result<http::Request<Full<Bytes>>, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let amz_date = sigv4::format_amz_date(now);
    let headers = p11kms::xks_client::signed_headers(
        t.authority.clone(),
        &call.path,
        &call.body_sha256,
        &SigningParams {
            access_key_id: &t.cred.access_key_id,
            secret_access_key: &t.cred.secret,
            region: &t.region,
            service: SERVICE,
            amz_date: &amz_date,
        },
    );
    let mut b = http::Request::post(call.path.as_str());
    for (k, v) in &headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.header("content-length", call.body.len())
        .body(Full::new(call.body.clone()))
        .map_err(|e| e.to_string())
}

/// The workers' connections: one per concurrent worker, kept open across phases.
pub struct Pool {
    target: Target,
    conns: Vec<tokio::sync::Mutex<Conn>>,
}

impl Pool {
    /// Opens `n` connections to `target` (at least one).
    pub async fn open(target: Target, n: usize) -> Result<Pool, String> {
        let mut conns = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            conns.push(tokio::sync::Mutex::new(Conn {
                send: Some(Conn::connect(&target).await?),
            }));
        }
        Ok(Pool { target, conns })
    }

    /// The number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The request of case `op` ("encrypt" or "decrypt") with a `payload`-byte plaintext;
    /// for decrypt, the ciphertext of one Encrypt made first.
    pub async fn call_of(&self, decrypt: bool, payload: usize) -> Result<Call, String> {
        let enc = encrypt_call(&self.target, &vec![0x5au8; payload]);
        if !decrypt {
            return Ok(enc);
        }
        let answer = self.conns[0].lock().await.send(&self.target, &enc).await;
        let answer = answer.map_err(|e| format!("fixture XKS Encrypt: {e}"))?;
        let v: Value =
            serde_json::from_slice(&answer).map_err(|e| format!("fixture XKS Encrypt: {e}"))?;
        decrypt_call(&self.target, &v)
    }

    /// Worker `i`'s connection, held for a phase.
    pub async fn worker(&self, i: usize) -> tokio::sync::MutexGuard<'_, Conn> {
        self.conns[i % self.conns.len()].lock().await
    }
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
        let t = Target::new(
            "http://127.0.0.1:1",
            "/p/",
            "k1",
            random_credential("s".repeat(64)),
            None,
            None,
            "us-east-1",
        )
        .unwrap();
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
        assert!(Target::new(
            "https://127.0.0.1:1",
            "",
            "k",
            random_credential(String::new()),
            None,
            None,
            "r"
        )
        .is_err());
    }
}
