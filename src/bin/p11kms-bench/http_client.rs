//! The HTTP/1.1 client of the bench's HTTP doors (`--door xks`, `--door aws`, `--peer-xks`).
//!
//! Each concurrent worker owns one keep-alive HTTP/1.1 connection (TCP_NODELAY; over TLS for
//! `https://`, ALPN `http/1.1`, trusting a given CA) made with hyper's client connection and
//! tokio-rustls, and sends prepared [`Call`]s back to back, each signed anew (SigV4) by the
//! door's [`Signs`] at the moment it is sent.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::rustls;

use p11kms::identity::sigv4;

/// Where a door listens: its address, the `Host` header, and TLS (with the name to verify).
pub struct Endpoint {
    addr: SocketAddr,
    /// `host[:port]` as the URL has it: the `Host` header (signed).
    authority: String,
    /// TLS to the endpoint (`https://`), with the server name to verify.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    /// The endpoint at `url` (`https://host:port`, or `http://` for a loopback door),
    /// trusting the CA certificates of `ca` (required for `https://`), verifying `tls_name`
    /// (default: the URL's host). `what` names the option in errors.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        tls_name: Option<&str>,
        what: &str,
    ) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{what}: {e}"))?;
        let host = uri.host().ok_or(format!("{what} has no host"))?.to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{what} must be https://host:port (or http://)")),
        };
        let bare = host.trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = (bare, port)
            .to_socket_addrs()
            .map_err(|e| format!("{what} {host}: {e}"))?
            .next()
            .ok_or(format!("{what}: no address"))?;
        let tls = if https {
            let ca = ca.ok_or(format!("an https:// {what} needs its CA certificate"))?;
            let name = ServerName::try_from(tls_name.unwrap_or(bare).to_string())
                .map_err(|e| format!("{what} host: {e}"))?;
            Some((connector(ca)?, name))
        } else {
            None
        };
        Ok(Endpoint {
            addr,
            authority: uri.authority().map(|a| a.to_string()).unwrap_or(host),
            tls,
        })
    }

    /// Whether the load goes over TLS (`https://`).
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `host[:port]`: the `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// A new keep-alive HTTP/1.1 connection (TCP_NODELAY, TLS if `https://`).
    async fn connect(&self) -> Result<Sender, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let handshake_err = |e: hyper::Error| format!("HTTP/1.1 handshake: {e}");
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS to {}: {e}", self.addr))?;
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

/// One prepared request, sent over and over: path, the door's own headers (content type,
/// `x-amz-target`; signed with the rest), body and the body's SHA-256 (hex).
pub struct Call {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub body_sha256: String,
}

impl Call {
    /// A `POST path` of `body` with the door's `headers`.
    pub fn new(path: String, headers: Vec<(String, String)>, body: Bytes) -> Call {
        Call {
            path,
            headers,
            body_sha256: sigv4::sha256_hex(&body),
            body,
        }
    }
}

/// What makes a door's requests and reads its errors.
pub trait Signs: Send + Sync + 'static {
    /// Every header of `call` sent to `authority` at `amz_date`, the SigV4 `authorization`
    /// among them.
    fn signed_headers(&self, authority: &str, call: &Call, amz_date: &str)
        -> Vec<(String, String)>;

    /// The AWS error name of a non-200 answer, if its body names one.
    fn error_name(&self, body: &[u8]) -> Option<String>;
}

/// A connection ready to send one request.
type Sender = SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection (reopened when the server closed it).
pub struct Conn {
    send: Option<Sender>,
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

/// The current time as SigV4's `yyyymmddThhmmssZ`.
fn amz_date_now() -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    Ok(sigv4::format_amz_date(now))
}

/// The workers' connections to one door (one per concurrent worker, kept open across
/// phases) and the door's signer.
pub struct Pool<S> {
    endpoint: Endpoint,
    door: S,
    conns: Vec<tokio::sync::Mutex<Conn>>,
}

impl<S: Signs> Pool<S> {
    /// Opens `n` connections to `endpoint` (at least one).
    pub async fn open(endpoint: Endpoint, door: S, n: usize) -> Result<Pool<S>, String> {
        let mut conns = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            conns.push(tokio::sync::Mutex::new(Conn {
                send: Some(endpoint.connect().await?),
            }));
        }
        Ok(Pool {
            endpoint,
            door,
            conns,
        })
    }

    /// The number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the connections are TLS.
    pub fn tls(&self) -> bool {
        self.endpoint.tls()
    }

    /// The door's signer.
    pub fn door(&self) -> &S {
        &self.door
    }

    /// Worker `i`'s connection, held for a phase.
    pub async fn worker(&self, i: usize) -> tokio::sync::MutexGuard<'_, Conn> {
        self.conns[i % self.conns.len()].lock().await
    }

    /// `call` on the first connection (fixtures): the answer's body.
    pub async fn send_first(&self, call: &Call) -> Result<Bytes, String> {
        self.send(&mut *self.conns[0].lock().await, call).await
    }

    /// [`Pool::send`] without the answer: one request of the load.
    pub async fn call(&self, conn: &mut Conn, call: &Call) -> Result<(), String> {
        self.send(conn, call).await.map(drop)
    }

    /// Sends `call` on `conn`, signed now; the answer's body on 200, else the door's error
    /// name (or `http:<status>` / a transport error).
    pub async fn send(&self, conn: &mut Conn, call: &Call) -> Result<Bytes, String> {
        if conn.send.as_ref().is_none_or(|s| s.is_closed()) {
            conn.send = Some(self.endpoint.connect().await?);
        }
        let Some(send) = conn.send.as_mut() else {
            return Err("no connection".into());
        };
        let req = self.request(call)?;
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
                conn.send = None;
                return Err(format!("http:{}", transport_kind(&e)));
            }
        };
        if status == 200 {
            return Ok(body);
        }
        Err(self
            .door
            .error_name(&body)
            .unwrap_or_else(|| format!("http:{status}")))
    }

    /// `call` as an HTTP request with the door's signed headers and `content-length`.
    fn request(&self, call: &Call) -> Result<http::Request<Full<Bytes>>, String> {
        let amz_date = amz_date_now()?;
        let headers = self
            .door
            .signed_headers(self.endpoint.authority(), call, &amz_date);
        let mut b = http::Request::post(call.path.as_str());
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.header("content-length", call.body.len())
            .body(Full::new(call.body.clone()))
            .map_err(|e| e.to_string())
    }
}
