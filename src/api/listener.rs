//! Connection hygiene shared by both ports (the gRPC door and the AWS door), so that idle or
//! slow connections cannot lock clients out:
//!
//! - every connection is registered in a [`Registry`] capped in total and per source address;
//!   when a cap is reached the idle connection with the oldest last activity is shed (a
//!   connection still in its TLS handshake counts as idle; one with a request in flight is
//!   never shed), and when none is idle the new connection is closed;
//! - a TLS handshake deadline ([`handshake`]), an idle deadline (no request in flight since
//!   the last one ended, enforced by the registry's reaper), and a request body deadline
//!   ([`TimedBody`], applied by [`Tracked`]); the request head deadline and the HTTP/2
//!   keep-alive pings are hyper's and tonic's settings, configured from the same [`Limits`];
//! - an accept loop ([`accept_loop`]) that backs off exponentially on errors (`EMFILE`,
//!   `ENFILE`, ...) and logs them at a bounded rate ([`RateLimitedLog`]), and stops when the
//!   daemon's shutdown signal (a [`CancellationToken`]) is cancelled.
//!
//! The HTTP doors are served on top of this by [`crate::api::http`]; the gRPC door by tonic,
//! fed by [`tls_incoming`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// How often at most the accept loop logs a failure (the others are counted).
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The first pause after a failed accept; it doubles up to [`Limits::accept_backoff_max`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The connection limits and deadlines of a listener (`[server]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long the head of a request (HTTP/1.1 request line and headers) may take.
    pub request_head_timeout: Duration,
    /// How long the body of a request may take, from the end of its head.
    pub request_body_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 PING checks an HTTP/2 connection's peer.
    pub http2_keepalive_interval: Duration,
    /// How long the peer has to answer that PING before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// Open connections on this listener, at most.
    pub max_connections: usize,
    /// Open connections from one source address on this listener, at most.
    pub max_connections_per_source: usize,
    /// The longest pause of the accept loop's back-off.
    pub accept_backoff_max: Duration,
}

impl Limits {
    /// The limits `[server]` configures.
    pub fn from_config(c: &crate::config::ServerConfig) -> Limits {
        let ms = Duration::from_millis;
        Limits {
            handshake_timeout: ms(c.handshake_timeout_ms),
            request_head_timeout: ms(c.request_head_timeout_ms),
            request_body_timeout: ms(c.request_body_timeout_ms),
            idle_timeout: ms(c.idle_timeout_ms),
            http2_keepalive_interval: ms(c.http2_keepalive_interval_ms),
            http2_keepalive_timeout: ms(c.http2_keepalive_timeout_ms),
            max_connections: c.max_connections,
            max_connections_per_source: c.max_connections_per_source,
            accept_backoff_max: ms(c.accept_backoff_max_ms),
        }
    }

    /// How often the reaper looks for connections past their deadline.
    fn reap_interval(&self) -> Duration {
        let shortest = self.idle_timeout.min(self.handshake_timeout);
        (shortest / 8).clamp(Duration::from_millis(20), Duration::from_millis(500))
    }
}

/// One connection as the registry sees it.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    peer: SocketAddr,
    /// Requests being served.
    in_flight: AtomicUsize,
    /// Milliseconds since the registry's epoch: accept, handshake end, request start or end.
    last_activity_ms: AtomicU64,
    /// The TLS handshake (if any) is over.
    open: AtomicBool,
    closed: AtomicBool,
    closed_notify: Notify,
    /// The tasks waiting to read and to write, woken when the connection is closed.
    wakers: Mutex<[Option<Waker>; 2]>,
    epoch: Instant,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether no request is in flight.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Closes the connection: its I/O fails from now on and its tasks are woken.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closed_notify.notify_waiters();
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Whether the connection was closed (shed, or past a deadline).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the end of the TLS handshake.
    pub fn mark_open(&self) {
        self.open.store(true, Ordering::Release);
        self.touch();
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestGuard { conn: self.clone() }
    }

    fn register_waker(&self, slot: usize, cx: &Context<'_>) {
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        match &w[slot] {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => w[slot] = Some(cx.waker().clone()),
        }
    }
}

/// A request in flight on a connection (the connection is not idle while it lives).
#[derive(Debug)]
pub struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.touch();
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open and none is idle.
    Total,
    /// `max_connections_per_source` are open from this address and none is idle.
    PerSource,
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Registry {
    name: &'static str,
    limits: Limits,
    epoch: Instant,
    inner: Mutex<Inner>,
    refusals: Mutex<RateLimitedLog>,
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<SocketAddr, Arc<Conn>>,
    next_id: u64,
}

impl Registry {
    /// A registry for the listener `name` (in logs), with its reaper task.
    pub fn new(name: &'static str, limits: Limits) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            name,
            limits,
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
            refusals: Mutex::new(RateLimitedLog::new(ACCEPT_LOG_INTERVAL)),
        });
        spawn_reaper(Arc::downgrade(&registry), limits.reap_interval());
        registry
    }

    /// The limits of this listener.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection from `peer`, shedding the oldest idle connection (of that
    /// source, then of all) when a cap is reached; refuses it when none is idle.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<ConnGuard, Refusal> {
        let mut inner = self.lock();
        let from_source = inner
            .conns
            .values()
            .filter(|c| c.peer.ip() == peer.ip())
            .count();
        if from_source >= self.limits.max_connections_per_source {
            let victim = oldest_idle(&inner, |c| c.peer.ip() == peer.ip());
            self.shed(
                &mut inner,
                victim.ok_or(Refusal::PerSource)?,
                "per-source cap",
            );
        }
        if inner.conns.len() >= self.limits.max_connections {
            let victim = oldest_idle(&inner, |_| true);
            self.shed(&mut inner, victim.ok_or(Refusal::Total)?, "connection cap");
        }
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            id: inner.next_id,
            peer,
            in_flight: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            open: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            wakers: Mutex::new([None, None]),
            epoch: self.epoch,
        });
        inner.conns.insert(peer, conn.clone());
        Ok(ConnGuard {
            registry: self.clone(),
            conn,
        })
    }

    fn shed(&self, inner: &mut Inner, victim: Arc<Conn>, why: &'static str) {
        tracing::debug!(listener = self.name, peer = %victim.peer, why, "closing an idle connection");
        inner.conns.remove(&victim.peer);
        victim.close();
    }

    /// Logs a refused connection (at a bounded rate).
    pub fn note_refused(&self, peer: SocketAddr, why: Refusal) {
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.note(Instant::now()) {
            tracing::warn!(
                listener = self.name,
                %peer,
                ?why,
                suppressed,
                "connection refused: the connection cap is reached and no connection is idle"
            );
        }
    }

    /// Closes every open connection (their I/O fails from now on): the end of a bounded
    /// drain at shutdown.
    pub fn close_all(&self) {
        let conns: Vec<Arc<Conn>> = self.lock().conns.drain().map(|(_, c)| c).collect();
        for c in conns {
            c.close();
        }
    }

    /// The connection from `peer`, if open.
    pub fn get(&self, peer: &SocketAddr) -> Option<Arc<Conn>> {
        self.lock().conns.get(peer).cloned()
    }

    fn remove(&self, conn: &Conn) {
        let mut inner = self.lock();
        if inner.conns.get(&conn.peer).is_some_and(|c| c.id == conn.id) {
            inner.conns.remove(&conn.peer);
        }
    }

    /// Closes the connections past their handshake or idle deadline.
    fn reap(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut inner = self.lock();
        let expired: Vec<Arc<Conn>> = inner
            .conns
            .values()
            .filter(|c| {
                let limit = if c.open.load(Ordering::Acquire) {
                    self.limits.idle_timeout
                } else {
                    self.limits.handshake_timeout
                };
                let idle_for = now.saturating_sub(c.last_activity_ms.load(Ordering::Relaxed));
                c.is_idle() && idle_for >= limit.as_millis() as u64
            })
            .cloned()
            .collect();
        for c in expired {
            self.shed(&mut inner, c, "deadline");
        }
    }
}

fn oldest_idle(inner: &Inner, pick: impl Fn(&Conn) -> bool) -> Option<Arc<Conn>> {
    inner
        .conns
        .values()
        .filter(|c| pick(c) && c.is_idle())
        .min_by_key(|c| c.last_activity_ms.load(Ordering::Relaxed))
        .cloned()
}

fn spawn_reaper(registry: Weak<Registry>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match registry.upgrade() {
                Some(r) => r.reap(),
                None => return,
            }
        }
    });
}

/// A registered connection; dropping it unregisters the connection.
#[derive(Debug)]
pub struct ConnGuard {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl ConnGuard {
    /// The connection.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conn.close();
        self.registry.remove(&self.conn);
    }
}

/// A TLS acceptor from PEM files offering `alpn`; with `client_ca`, client certificates are
/// verified against it when presented (optional: other authentication methods share the
/// port).
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let err = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(cert, &e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| err(ca, &e))? {
                roots
                    .add(c.map_err(|e| err(ca, &e))?)
                    .map_err(|e| err(ca, &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| err(ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the TLS handshake of `stream` within the handshake deadline; `None` when it failed,
/// timed out, or the connection was shed meanwhile.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    guard: &ConnGuard,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = guard.conn.peer;
    let deadline = guard.registry.limits.handshake_timeout;
    let name = guard.registry.name;
    tokio::select! {
        r = tokio::time::timeout(deadline, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => {
                guard.conn.mark_open();
                Some(s)
            }
            Ok(Err(e)) => {
                tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                None
            }
        },
        _ = guard.conn.closed() => None,
    }
}

/// A connection's I/O: fails once the registry closes the connection (shed or past a
/// deadline), which ends the HTTP connection that reads from it.
#[derive(Debug)]
pub struct TrackedIo<T> {
    inner: T,
    guard: ConnGuard,
}

impl<T> TrackedIo<T> {
    /// Wraps the I/O of a registered connection (whose handshake, if any, is over).
    pub fn new(inner: T, guard: ConnGuard) -> TrackedIo<T> {
        guard.conn.mark_open();
        TrackedIo { inner, guard }
    }

    fn check(&self, slot: usize, cx: &Context<'_>) -> std::io::Result<()> {
        let conn = &self.guard.conn;
        conn.register_waker(slot, cx);
        if conn.is_closed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection closed by the listener (idle or over the cap)",
            ));
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(0, cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(1, cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(1, cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(1, cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for TrackedIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Where [`Tracked`] finds a request's connection.
#[derive(Debug, Clone)]
pub enum ConnLookup {
    /// The service serves one connection (the HTTP doors build one per connection).
    Fixed(Arc<Conn>),
    /// By the peer address tonic puts in the request's extensions (the gRPC door).
    ByPeer(Arc<Registry>),
}

/// A service wrapper that counts each request as in flight on its connection (so that it is
/// not idle) and puts the body deadline on its body.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    lookup: ConnLookup,
    body_timeout: Duration,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, lookup: ConnLookup, body_timeout: Duration) -> Tracked<S> {
        Tracked {
            inner,
            lookup,
            body_timeout,
        }
    }

    fn conn<B>(&self, req: &Request<B>) -> Option<Arc<Conn>> {
        match &self.lookup {
            ConnLookup::Fixed(c) => Some(c.clone()),
            ConnLookup::ByPeer(registry) => {
                let ext = req.extensions();
                let peer = ext
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr())
                    .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))?;
                registry.get(&peer)
            }
        }
    }
}

impl<S, B> tower_service::Service<Request<B>> for Tracked<S>
where
    S: tower_service::Service<Request<TimedBody<B>>>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.conn(&req).map(|c| c.begin_request());
        let timeout = self.body_timeout;
        let fut = self.inner.call(req.map(|b| TimedBody::new(b, timeout)));
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// A tower layer of [`Tracked`] by peer address, for tonic's `Server::layer`.
#[derive(Debug, Clone)]
pub struct TrackedLayer {
    registry: Arc<Registry>,
}

impl TrackedLayer {
    /// Tracks the requests of the connections in `registry`.
    pub fn new(registry: Arc<Registry>) -> TrackedLayer {
        TrackedLayer { registry }
    }
}

impl<S> tower_layer::Layer<S> for TrackedLayer {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        let timeout = self.registry.limits.request_body_timeout;
        Tracked::new(inner, ConnLookup::ByPeer(self.registry.clone()), timeout)
    }
}

/// A request body that fails when it has not been received in full by its deadline.
#[derive(Debug)]
pub struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> TimedBody<B> {
    /// `inner`, due within `timeout` from now.
    pub fn new(inner: B, timeout: Duration) -> TimedBody<B> {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The error of a body past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within its deadline")]
pub struct BodyTimeout;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(f.map(|r| r.map_err(Into::into))),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Exponential back-off: [`ACCEPT_BACKOFF_MIN`] doubling up to a maximum, reset by a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A back-off of at most `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: ACCEPT_BACKOFF_MIN.min(max),
            max,
        }
    }

    /// The pause after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN.min(self.max);
    }
}

/// Lets one log line through per interval and counts the ones it holds back.
#[derive(Debug, Clone)]
pub struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> RateLimitedLog {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// An event at `now`: `Some(n)` when it is to be logged, `n` being the events held back
    /// since the last line; `None` when it is held back.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Whether an accept error means the process or the system is out of descriptors or memory.
pub fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 (Linux).
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// The gRPC door's incoming connections for tonic's `serve_with_incoming`: accepted by
/// [`accept_loop`] under the registry's caps, TLS handshakes run concurrently within the
/// deadline. Accepting stops when `cancel` is cancelled or tonic drops the stream.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) -> impl tonic::codegen::tokio_stream::Stream<
    Item = Result<TrackedIo<tokio_rustls::server::TlsStream<TcpStream>>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let closed = tx.clone();
    tokio::spawn(async move {
        let accepting = accept_loop(&listener, &registry, &cancel, |stream, guard| {
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                if let Some(s) = handshake(&acceptor, stream, &guard).await {
                    let _ = tx.send(Ok(TrackedIo::new(s, guard))).await;
                }
            });
        });
        tokio::select! {
            _ = accepting => {}
            _ = closed.closed() => {}
        }
    });
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Accepts connections until `cancel` is cancelled: each admitted connection goes to `on_conn`
/// with its registration (with `TCP_NODELAY` set); refused ones are closed at once. Accept
/// errors pause the loop with an exponential back-off and are logged at a bounded rate.
pub async fn accept_loop<F>(
    listener: &TcpListener,
    registry: &Arc<Registry>,
    cancel: &CancellationToken,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, ConnGuard),
{
    let mut backoff = Backoff::new(registry.limits.accept_backoff_max);
    let mut errors = RateLimitedLog::new(ACCEPT_LOG_INTERVAL);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                match registry.admit(peer) {
                    Ok(guard) => {
                        let _ = stream.set_nodelay(true);
                        on_conn(stream, guard);
                    }
                    Err(why) => registry.note_refused(peer, why),
                }
            }
            Err(e) => {
                let pause = backoff.next_delay();
                if let Some(suppressed) = errors.note(Instant::now()) {
                    tracing::warn!(
                        listener = registry.name,
                        error = %e,
                        out_of_descriptors = is_resource_exhaustion(&e),
                        suppressed,
                        pause_ms = pause.as_millis() as u64,
                        "accept failed (further failures within {}s are counted, not logged)",
                        ACCEPT_LOG_INTERVAL.as_secs()
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Limits for tests: generous deadlines, small caps.
    pub(crate) fn limits() -> Limits {
        let s = Duration::from_secs;
        Limits {
            handshake_timeout: s(10),
            request_head_timeout: s(10),
            request_body_timeout: s(10),
            idle_timeout: s(60),
            http2_keepalive_interval: s(30),
            http2_keepalive_timeout: s(10),
            max_connections: 3,
            max_connections_per_source: 2,
            accept_backoff_max: Duration::from_secs(1),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn backoff_doubles_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let ms: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn rate_limited_log_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut log = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(0));
        // 18 failures a second for 10 s: held back.
        let held = (1..180)
            .filter(|i| log.note(t0 + Duration::from_millis(i * 55)).is_none())
            .count();
        assert_eq!(held, 179);
        assert_eq!(log.note(t0 + Duration::from_secs(10)), Some(179));
        assert_eq!(log.note(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn exhaustion_errors_are_recognised() {
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            24
        )));
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            23
        )));
        assert!(!is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            103
        )));
    }

    /// A body that never sends anything.
    struct Stalled;

    impl Body for Stalled {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_at_its_deadline() {
        use http_body_util::BodyExt;
        let t = Instant::now();
        let r = TimedBody::new(Stalled, Duration::from_millis(100))
            .collect()
            .await;
        let e = r.expect_err("a stalled body fails");
        assert!(e.is::<BodyTimeout>(), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// An inner service that reports whether its connection counts a request in flight.
    #[derive(Clone)]
    struct Probe(Arc<Conn>);

    impl<B> tower_service::Service<Request<B>> for Probe {
        type Response = bool;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<bool, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<B>) -> Self::Future {
            std::future::ready(Ok(!self.0.is_idle()))
        }
    }

    #[tokio::test]
    async fn a_request_found_by_its_peer_address_keeps_its_connection_busy() {
        use tower_layer::Layer;
        use tower_service::Service;
        let r = Registry::new("test", limits());
        let peer = addr("10.0.0.9:7");
        let g = r.admit(peer).unwrap();
        let mut svc = TrackedLayer::new(r.clone()).layer(Probe(g.conn().clone()));
        let mut req = Request::new(Stalled);
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer),
        });
        assert!(svc.call(req).await.unwrap(), "busy while the request runs");
        assert!(g.conn().is_idle(), "idle again once it has ended");
    }

    #[tokio::test]
    async fn close_all_closes_every_connection_busy_or_not() {
        let r = Registry::new("test", limits());
        let idle = r.admit(addr("10.0.0.1:1")).unwrap();
        let busy = r.admit(addr("10.0.0.2:1")).unwrap();
        let _request = busy.conn().begin_request();
        r.close_all();
        assert!(idle.conn().is_closed() && busy.conn().is_closed());
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn caps_shed_the_oldest_idle_connection_and_never_a_busy_one() {
        let r = Registry::new("test", limits());
        let a1 = r.admit(addr("10.0.0.1:1")).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let a2 = r.admit(addr("10.0.0.1:2")).unwrap();
        // Per source: the third from 10.0.0.1 sheds the oldest idle one of that source.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let a3 = r.admit(addr("10.0.0.1:3")).unwrap();
        assert!(a1.conn().is_closed());
        assert!(!a2.conn().is_closed());
        // Both of 10.0.0.1 busy: a fourth from it is refused.
        let _b2 = a2.conn().begin_request();
        let _b3 = a3.conn().begin_request();
        assert_eq!(r.admit(addr("10.0.0.1:4")).unwrap_err(), Refusal::PerSource);
        // Total: 3 with 10.0.0.2; the next sheds the only idle one.
        let c1 = r.admit(addr("10.0.0.2:1")).unwrap();
        assert_eq!(r.len(), 3);
        let c2 = r.admit(addr("10.0.0.3:1")).unwrap();
        assert!(c1.conn().is_closed());
        assert!(!a2.conn().is_closed() && !a3.conn().is_closed());
        // All busy: refused.
        let _b4 = c2.conn().begin_request();
        assert_eq!(r.admit(addr("10.0.0.4:1")).unwrap_err(), Refusal::Total);
        drop(c2);
        assert_eq!(r.len(), 2);
    }
}
