//! The one HTTP listener every HTTP-based door runs on (the AWS door today; the AWS external
//! key store proxy door next). A door implements [`HttpDoor`]: its name, where the config
//! says it listens, how it is built, and how it answers one request. It is listed once in
//! [`crate::api::HTTP_DOORS`], and [`crate::server`] starts every listed door the config
//! enables. Everything else is here, the same for every door:
//!
//! - TLS (HTTP/1.1 and HTTP/2 by ALPN) from the door's certificate files, or plain HTTP on a
//!   loopback address only;
//! - the connection caps, deadlines and accept back-off of [`crate::api::listener`]
//!   (`[server]` in the config);
//! - a request id per request ([`RequestCtx::request_id`]), handed to the door (which writes
//!   it into its audit event and its body where the wire wants it) and returned as
//!   `x-amzn-RequestId` when the door's response does not carry it already;
//! - graceful drain at shutdown: when the daemon's cancellation signal fires the listener
//!   stops accepting, open connections finish the requests in flight and close, and after
//!   [`DRAIN_TIMEOUT`] the connections still open are closed.
//!
//! Requests are dispatched without a per-request allocation of the listener's own: the door
//! type is a generic parameter, not a trait object.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::Response;
use http::{HeaderValue, Request};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::gate::Gate;
use crate::api::listener::{self, ConnGuard, ConnLookup, Limits, Registry, Tracked, TrackedIo};
use crate::config::Config;
use crate::identity::auth::{Authenticator, SigV4Input};
use crate::identity::sigv4::SignableRequest;

/// How long open connections may take to finish their requests at shutdown; the ones still
/// open then are closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The response header carrying the request id (as AWS returns `x-amzn-RequestId`).
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// What the listener knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub secure: bool,
    /// The client certificate, when the binding asks for one ([`ClientAuth`]).
    pub client_cert: ClientCert,
}

/// What a connection's client certificate showed, against its binding's [`ClientAuth`].
/// The listener verifies the chain in the handshake; the door decides what a missing or
/// unexpected certificate means (the XKS door refuses the request, and audits it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// The binding does not ask for a client certificate.
    NotAsked,
    /// None was presented.
    Absent,
    /// One chaining to the CA, with one of the expected subject names.
    Accepted,
    /// One chaining to the CA, with none of the expected subject names.
    UnexpectedSubject,
}

/// Mutual TLS for a binding: client certificates must chain to `ca` and name one of
/// `subjects` (subject CN or a DNS subject alternative name).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The CA bundle client certificates must chain to (PEM).
    pub ca: PathBuf,
    /// The accepted subject names, exactly.
    pub subjects: Vec<String>,
}

/// What the listener hands a door with each request.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The request's connection.
    pub conn: ConnInfo,
    /// A fresh request id (UUID): the door writes it into its audit event, and the listener
    /// returns it in [`REQUEST_ID_HEADER`].
    pub request_id: String,
}

/// The certificate and key a door serves TLS with (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// Mutual TLS, when the door asks for it.
    pub client_auth: Option<ClientAuth>,
}

/// Where and how a door listens, as its config section says.
#[derive(Debug, Clone)]
pub struct HttpBinding {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// TLS, or `None` for plain HTTP (refused unless `listen` is a loopback address).
    pub tls: Option<TlsFiles>,
    /// The config section (`aws_json`), named in start-up errors.
    pub section: &'static str,
    /// The listener as bind errors name it (`AWS door ([aws_json] listen)`).
    pub label: &'static str,
    /// What the start-up log line says is served (`AWS door (KMS JSON 1.1, STS Query)`).
    pub banner: &'static str,
}

/// What the daemon gives a door to build it: the authenticator and the gate onto the engine.
#[derive(Debug, Clone)]
pub struct DoorDeps {
    /// Turns what a request presents into a caller.
    pub auth: Arc<Authenticator>,
    /// The accounting every request goes through, and the engine behind it.
    pub gate: Gate,
}

/// A door served over HTTP by this listener. Adding a door: implement this, and add one line
/// to [`crate::api::HTTP_DOORS`].
pub trait HttpDoor: Send + Sync + Sized + 'static {
    /// The door's name in logs, metrics and audit events (`aws-json`).
    const NAME: &'static str;

    /// Where the config says the door listens; `None` when the door is disabled.
    fn binding(config: &Config) -> Option<HttpBinding>;

    /// The door, built from the config and what the daemon gives it.
    fn build(config: &Config, deps: &DoorDeps) -> Self;

    /// Answers one request. Every request gets an answer: refusals are responses too.
    fn handle(&self, ctx: RequestCtx, req: Request<Body>) -> impl Future<Output = Response> + Send;
}

/// Why an HTTP door could not start.
#[derive(Debug, thiserror::Error)]
pub enum DoorStartError {
    /// The certificate or key could not be loaded.
    #[error("{section} TLS: {message}")]
    Tls {
        section: &'static str,
        message: String,
    },
    /// Plain HTTP was configured on an address that is not loopback.
    #[error("{section}: plain HTTP is allowed only on loopback, not {addr}")]
    PlainHttp {
        section: &'static str,
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the {label}: {source}")]
    Bind {
        label: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running HTTP door. It stops when the cancellation token it was started with is
/// cancelled; [`RunningDoor::drained`] waits for the end of its drain.
#[derive(Debug)]
pub struct RunningDoor {
    /// The door's name ([`HttpDoor::NAME`]).
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RunningDoor {
    /// Resolves once the door has stopped accepting and its connections are closed (at most
    /// [`DRAIN_TIMEOUT`] after the cancellation).
    pub async fn drained(self) {
        if let Err(e) = self.task.await {
            tracing::error!(door = self.name, error = %e, "the door's listener task failed");
        }
    }
}

type StartFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<RunningDoor>, DoorStartError>> + Send + 'a>>;

/// One line of the door registry: a door type, type-erased into its start function.
#[derive(Debug, Clone, Copy)]
pub struct HttpDoorEntry {
    /// The door's name ([`HttpDoor::NAME`]).
    pub name: &'static str,
    /// Starts the door if the config enables it; it stops when the token is cancelled.
    pub start: for<'a> fn(&'a Config, &'a DoorDeps, CancellationToken) -> StartFuture<'a>,
}

impl HttpDoorEntry {
    /// The registry line of door `D`.
    pub const fn of<D: HttpDoor>() -> HttpDoorEntry {
        HttpDoorEntry {
            name: D::NAME,
            start: start_boxed::<D>,
        }
    }
}

fn start_boxed<'a, D: HttpDoor>(
    config: &'a Config,
    deps: &'a DoorDeps,
    cancel: CancellationToken,
) -> StartFuture<'a> {
    Box::pin(start::<D>(config, deps, cancel))
}

/// Starts door `D` as the config says (`None` when disabled): TLS, bind, then the accept
/// loop under `[server]`'s connection limits, until `cancel` is cancelled.
pub async fn start<D: HttpDoor>(
    config: &Config,
    deps: &DoorDeps,
    cancel: CancellationToken,
) -> Result<Option<RunningDoor>, DoorStartError> {
    let Some(binding) = D::binding(config) else {
        return Ok(None);
    };
    let tls = tls_for(&binding)?.map(Arc::new);
    let bind_error = |source| DoorStartError::Bind {
        label: binding.label,
        addr: binding.listen,
        source,
    };
    let tcp = TcpListener::bind(binding.listen)
        .await
        .map_err(bind_error)?;
    let addr = tcp.local_addr().map_err(bind_error)?;
    let door = Arc::new(D::build(config, deps));
    let limits = Limits::from_config(&config.server);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = tokio::spawn(serve(door, tcp, tls, limits, cancel));
    tracing::info!(addr = %addr, "{} on {scheme}://{}", binding.banner, addr);
    Ok(Some(RunningDoor {
        name: D::NAME,
        addr,
        task,
    }))
}

/// A door's TLS: the acceptor, and the client subject names mutual TLS expects.
struct DoorTls {
    acceptor: TlsAcceptor,
    client_subjects: Option<Vec<String>>,
}

impl DoorTls {
    /// What the client certificate of an accepted connection shows.
    fn client_cert(&self, conn: &tokio_rustls::rustls::ServerConnection) -> ClientCert {
        let Some(expected) = &self.client_subjects else {
            return ClientCert::NotAsked;
        };
        match conn.peer_certificates().and_then(|c| c.first()) {
            None => ClientCert::Absent,
            Some(leaf) => {
                let names = crate::identity::certs::subject_names(leaf);
                if names.iter().any(|n| expected.contains(n)) {
                    ClientCert::Accepted
                } else {
                    ClientCert::UnexpectedSubject
                }
            }
        }
    }
}

/// The TLS of a binding (ALPN `h2` and `http/1.1`, client certificates when it asks for
/// them); `None` for plain HTTP, which only a loopback address may serve.
fn tls_for(binding: &HttpBinding) -> Result<Option<DoorTls>, DoorStartError> {
    let section = binding.section;
    match &binding.tls {
        Some(files) => {
            let ca = files.client_auth.as_ref().map(|a| a.ca.as_path());
            let acceptor =
                listener::tls_acceptor(&files.cert, &files.key, ca, &[b"h2", b"http/1.1"])
                    .map_err(|message| DoorStartError::Tls { section, message })?;
            Ok(Some(DoorTls {
                acceptor,
                client_subjects: files.client_auth.as_ref().map(|a| a.subjects.clone()),
            }))
        }
        None if binding.listen.ip().is_loopback() => Ok(None),
        None => Err(DoorStartError::PlainHttp {
            section,
            addr: binding.listen,
        }),
    }
}

/// A request's headers as SigV4 signs them: as received (names lowercase), plus `host` from
/// HTTP/2's `:authority` when there is no `host` header. Both doors authenticate over these.
pub fn headers_as_signed(parts: &http::request::Parts) -> Vec<(String, String)> {
    let mut signed: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if !parts.headers.contains_key(http::header::HOST) {
        if let Some(a) = parts.uri.authority() {
            signed.push(("host".into(), a.as_str().to_string()));
        }
    }
    signed
}

/// What the SigV4 verifier checks of a request to an HTTP door: the request as signed
/// (`headers` from [`headers_as_signed`], `payload_hash` the body's SHA-256 hex), the door's
/// signing `service`, the clock skew every door allows, and the connection's peer and TLS.
pub fn sigv4_input<'a>(
    conn: ConnInfo,
    parts: &'a http::request::Parts,
    headers: &'a [(String, String)],
    payload_hash: &'a str,
    service: &'a str,
) -> SigV4Input<'a> {
    SigV4Input {
        request: SignableRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers,
            payload_sha256_hex: payload_hash,
        },
        service,
        max_skew_secs: crate::identity::sigv4::MAX_SKEW_SECS,
        source_ip: Some(conn.peer.ip()),
        secure_transport: conn.secure,
    }
}

/// Stamps the request id on every request's response, then hands the request to the door.
async fn dispatch<D: HttpDoor>(
    State(door): State<Arc<D>>,
    Extension(conn): Extension<ConnInfo>,
    req: Request<Body>,
) -> Response {
    let request_id = crate::audit::ids::uuid_v4().to_string();
    let header = HeaderValue::from_str(&request_id).ok();
    let mut response = door.handle(RequestCtx { conn, request_id }, req).await;
    if let Some(id) = header {
        response
            .headers_mut()
            .entry(REQUEST_ID_HEADER)
            .or_insert(id);
    }
    response
}

/// What every connection of one listener shares.
#[derive(Clone)]
struct Shared {
    door: &'static str,
    router: axum::Router,
    tls: Option<Arc<DoorTls>>,
    limits: Limits,
    /// The daemon's shutdown signal: finish the requests in flight, then close.
    drain: CancellationToken,
}

/// Accepts until `cancel` is cancelled, then drains.
async fn serve<D: HttpDoor>(
    door: Arc<D>,
    tcp: TcpListener,
    tls: Option<Arc<DoorTls>>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let registry = Registry::new(D::NAME, limits);
    let shared = Shared {
        door: D::NAME,
        router: axum::Router::new().fallback(dispatch::<D>).with_state(door),
        tls,
        limits,
        drain: cancel.clone(),
    };
    // Past the drain deadline: the connections still open are closed.
    let close = CancellationToken::new();
    let mut conns = JoinSet::new();
    listener::accept_loop(&tcp, &registry, &cancel, |stream, guard| {
        while conns.try_join_next().is_some() {}
        let (shared, close) = (shared.clone(), close.clone());
        conns.spawn(async move {
            tokio::select! {
                _ = connection(shared, stream, guard) => {}
                _ = close.cancelled() => {}
            }
        });
    })
    .await;
    drop(tcp);
    drain(conns, close).await;
}

/// Waits up to [`DRAIN_TIMEOUT`] for the connections to finish, then closes the rest.
async fn drain(mut conns: JoinSet<()>, close: CancellationToken) {
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = conns.len(),
            "drain deadline reached: closing the connections still open"
        );
        close.cancel();
        while conns.join_next().await.is_some() {}
    }
}

/// Serves one admitted connection: the TLS handshake (if any) within its deadline, then
/// HTTP, each request counted in flight and its body under the body deadline.
async fn connection(shared: Shared, stream: TcpStream, guard: ConnGuard) {
    let mut info = ConnInfo {
        peer: guard.conn().peer(),
        secure: shared.tls.is_some(),
        client_cert: ClientCert::NotAsked,
    };
    let service = |info: ConnInfo, guard: &ConnGuard| {
        TowerToHyperService::new(Tracked::new(
            shared.router.clone().layer(Extension(info)),
            ConnLookup::Fixed(guard.conn().clone()),
            shared.limits.request_body_timeout,
        ))
    };
    match &shared.tls {
        Some(tls) => {
            if let Some(s) = listener::handshake(&tls.acceptor, stream, &guard).await {
                info.client_cert = tls.client_cert(s.get_ref().1);
                let svc = service(info, &guard);
                serve_connection(TrackedIo::new(s, guard), svc, &shared).await
            }
        }
        None => {
            let svc = service(info, &guard);
            serve_connection(TrackedIo::new(stream, guard), svc, &shared).await
        }
    }
}

/// The hyper connection builder for `limits`: the HTTP/1.1 request head deadline and the
/// HTTP/2 keep-alive PINGs.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    builder
}

/// Serves HTTP on `io` until the peer closes, or until the drain signal, after which the
/// requests in flight finish and the connection closes.
async fn serve_connection<I, S>(io: I, svc: S, shared: &Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = http_builder(&shared.limits);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(door = shared.door, error = %e, "connection ended with an error");
            }
        }
        _ = shared.drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    /// A door that echoes its request id (`/`), keeps its own (`/own-id`), answers once
    /// released (`/wait`), or never (`/hang`).
    #[derive(Default)]
    struct Toy {
        release: Notify,
    }

    impl HttpDoor for Toy {
        const NAME: &'static str = "toy";

        fn binding(_: &Config) -> Option<HttpBinding> {
            None
        }

        fn build(_: &Config, _: &DoorDeps) -> Toy {
            Toy::default()
        }

        async fn handle(&self, ctx: RequestCtx, req: Request<Body>) -> Response {
            match req.uri().path() {
                "/own-id" => {
                    let mut r = Response::new(Body::from("own"));
                    let id = HeaderValue::from_static("mine");
                    r.headers_mut().insert(REQUEST_ID_HEADER, id);
                    return r;
                }
                "/wait" => self.release.notified().await,
                "/hang" => std::future::pending::<()>().await,
                _ => {}
            }
            Response::new(Body::from(ctx.request_id))
        }
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            max_connections_per_source: 10,
            ..crate::api::listener::tests::limits()
        }
    }

    /// A toy door on plain HTTP: its address, the door, its signal and its task.
    async fn toy() -> (
        SocketAddr,
        Arc<Toy>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let door = Arc::new(Toy::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(door.clone(), tcp, None, limits(), cancel.clone()));
        (addr, door, cancel, task)
    }

    /// Sends `GET path` on a new connection (with `Connection: close`).
    async fn send(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }

    async fn response(mut s: TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The value of `name` in an HTTP/1.1 response head.
    fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
        resp.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    #[tokio::test]
    async fn every_response_carries_the_request_id_the_door_was_given() {
        let (addr, _door, cancel, task) = toy().await;
        let a = response(send(addr, "/").await).await;
        let b = response(send(addr, "/").await).await;
        let id = header(&a, REQUEST_ID_HEADER).expect("request id header");
        assert_eq!(id.len(), 36, "a UUID: {a}");
        assert!(a.ends_with(id), "the door saw the same id: {a}");
        assert_ne!(
            header(&b, REQUEST_ID_HEADER),
            Some(id),
            "one id per request"
        );
        let own = response(send(addr, "/own-id").await).await;
        assert_eq!(header(&own, REQUEST_ID_HEADER), Some("mine"), "{own}");
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn at_the_signal_accepting_stops_and_requests_in_flight_finish() {
        let (addr, door, cancel, task) = toy().await;
        let in_flight = send(addr, "/wait").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !task.is_finished(),
            "the listener waits for the request in flight"
        );
        let refused = TcpStream::connect(addr).await;
        assert!(refused.is_err(), "no longer accepting");
        door.release.notify_waiters();
        let r = response(in_flight).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("drained once the request ended")
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_that_never_ends_is_closed_at_the_drain_deadline() {
        let (addr, _door, cancel, task) = toy().await;
        let hung = send(addr, "/hang").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        cancel.cancel();
        tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(3), task)
            .await
            .expect("drain is bounded")
            .unwrap();
        assert!(t.elapsed() >= DRAIN_TIMEOUT - Duration::from_millis(100));
        let r = tokio::time::timeout(Duration::from_secs(2), response(hung))
            .await
            .expect("the connection is closed");
        assert_eq!(r, "", "closed without a response");
    }
}
