//! The AWS door: the AWS CLI, boto3, the AWS SDKs and the AWS Encryption SDK talk to p11kms
//! unchanged, pointed at it with `--endpoint-url` or `AWS_ENDPOINT_URL_KMS`.
//!
//! - KMS over the AWS JSON 1.1 protocol: `POST /`, `X-Amz-Target: TrentService.<Operation>`,
//!   `Content-Type: application/x-amz-json-1.1` ([`kms`]). Every operation of the gRPC
//!   `KeyManagementService` is served, plus `P11kmsAdmin.ExplainAccess` (the AdminService).
//! - STS over the Query protocol on the same listener: a form-encoded body with `Action=...`
//!   ([`sts`]).
//! - SigV4 (`kms` or `sts`, the configured region, up to 5 minutes of clock skew, session tokens
//!   from AssumeRole) is verified by the same verifier as the gRPC door
//!   ([`crate::identity::sigv4`], tested against AWS's published vectors).
//! - Every KMS body is checked against AWS's KMS service model before the operation parses it
//!   ([`model`]): types, constraints, and members the door does not read.
//! - Errors are mapped in one place ([`error`]).
//!
//! Every request, refused or run, goes through the [`Gate`]: refusals with
//! [`Gate::refused`], authenticated requests with [`Gate::run`].
//!
//! The listener is HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with `[server] tls_cert`/`tls_key`, or
//! plain HTTP when configured on a loopback address.

pub mod error;
pub mod kms;
pub mod model;
pub mod params;
pub mod sts;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::Response;
use http::{header, Method, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::gate::{Gate, RequestInfo};
use crate::api::listener::{self, ConnLookup, Limits, Registry, Tracked, TrackedIo};
use crate::identity::auth::{Authenticator, SigV4Input};
use crate::identity::sigv4::{self, SignableRequest};
use error::{json_error, json_ok, xml_error, xml_ok, WireError};

/// The door's name in metrics and audit events.
pub const DOOR: &str = "aws-json";

/// Allowed clock skew for SigV4 on this door, seconds: the one constant of every door
/// (5 minutes, as AWS KMS allows).
pub use crate::identity::sigv4::MAX_SKEW_SECS;

/// The operation name recorded for requests whose operation is unknown.
pub const UNKNOWN_OPERATION: &str = "Unknown";

/// How long open connections may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The door: the engine's gate, the authenticator, and the body limit.
#[derive(Debug)]
pub struct AwsJsonDoor {
    gate: Gate,
    auth: Arc<Authenticator>,
    max_body_bytes: usize,
}

/// What the listener knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub secure: bool,
}

enum Route {
    Kms(&'static kms::Operation),
    Sts,
}

impl AwsJsonDoor {
    /// A door over the gate.
    pub fn new(auth: Arc<Authenticator>, gate: Gate, max_body_bytes: usize) -> AwsJsonDoor {
        AwsJsonDoor {
            gate,
            auth,
            max_body_bytes,
        }
    }

    /// The axum router: every request goes to [`AwsJsonDoor::handle`].
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }

    /// Serves one HTTP request.
    pub async fn handle(&self, conn: ConnInfo, req: Request<Body>) -> Response {
        let (parts, body) = req.into_parts();
        let headers = &parts.headers;
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut info = RequestInfo::new(DOOR, UNKNOWN_OPERATION);
        info.source_ip = Some(conn.peer.ip());
        info.user_agent = text(header::USER_AGENT);
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(str::to_string);
        let is_form = text(header::CONTENT_TYPE)
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));

        if parts.method != Method::POST {
            let e = WireError::method_not_allowed(parts.method.as_str());
            return self.refuse(&info, &e, false).await;
        }
        let route = match (&target, is_form) {
            (Some(t), _) => match kms::operation(t) {
                Some(op) => Route::Kms(op),
                None => {
                    let e = WireError::unknown_operation(format!(
                        "The operation {t:?} is not served by this endpoint."
                    ));
                    return self.refuse(&info, &e, false).await;
                }
            },
            (None, true) => Route::Sts,
            (None, false) => {
                let e = WireError::unknown_operation(
                    "The request has no X-Amz-Target header naming the operation.",
                );
                return self.refuse(&info, &e, false).await;
            }
        };
        let xml = matches!(route, Route::Sts);
        if let Route::Kms(op) = route {
            info.operation = op.name;
        }

        // The body, refused before it is read in full (let alone parsed) when over the limit.
        let limit = self.max_body_bytes;
        let declared = text(header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
        if declared.is_some_and(|l| l > limit as u64) {
            return self.refuse(&info, &WireError::too_large(limit), xml).await;
        }
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return self.refuse(&info, &WireError::too_large(limit), xml).await;
            }
            Err(_) => {
                let e = WireError::serialization("The request body could not be read.");
                return self.refuse(&info, &e, xml).await;
            }
        };

        // STS: the action is in the form.
        let form: Vec<(String, String)> = if xml {
            form_urlencoded::parse(&bytes).into_owned().collect()
        } else {
            Vec::new()
        };
        let (service, sts_action) = match route {
            Route::Kms(op) => (op.service, None),
            Route::Sts => match sts::action(&form) {
                (_, Some(a)) => {
                    info.operation = a;
                    (sts::SERVICE, Some(a))
                }
                (action, None) => {
                    let e = WireError::sts_invalid_action(action);
                    return self.refuse(&info, &e, true).await;
                }
            },
        };
        if let Some(action) = sts_action {
            info.params = params::sts_parameters(action, &form);
        }

        // SigV4, over the headers exactly as received.
        let mut signed_headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if !headers.contains_key(header::HOST) {
            // HTTP/2 carries the host as :authority.
            if let Some(a) = parts.uri.authority() {
                signed_headers.push(("host".into(), a.as_str().to_string()));
            }
        }
        let payload_hash = sigv4::sha256_hex(&bytes);
        let input = SigV4Input {
            request: SignableRequest {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                headers: &signed_headers,
                payload_sha256_hex: &payload_hash,
            },
            service,
            max_skew_secs: MAX_SKEW_SECS,
            source_ip: Some(conn.peer.ip()),
            secure_transport: conn.secure,
        };
        let kms_engine = self.gate.kms().clone();
        let caller = match self.auth.from_sigv4(&input, kms_engine.now_ms()) {
            Ok(c) => c,
            Err(e) => {
                let wire = if xml {
                    WireError::sts_from_auth(&e)
                } else {
                    WireError::from_auth(&e)
                };
                let akid = sigv4::header_value(&signed_headers, "authorization")
                    .and_then(|a| sigv4::parse_authorization(a).ok())
                    .map(|a| a.access_key_id);
                return self.refuse_as(&info, &wire, xml, akid).await;
            }
        };
        let akid = caller.access_key_id.clone();

        // The operation's input, then the engine through the gate.
        let call = match route {
            Route::Sts => sts::prepare(
                kms_engine,
                caller.clone(),
                sts_action.unwrap_or("GetCallerIdentity"),
                form,
                info.request_id.clone(),
            ),
            Route::Kms(op) => {
                let value = match decode_kms_body(&bytes) {
                    Ok(v) => v,
                    Err(e) => return self.refuse_authenticated(&info, &e, akid).await,
                };
                // Wrong-typed members are not logged: their value may be anything.
                let mistyped = model::mistyped_members(op.name, &value);
                info.params = if mistyped.is_empty() {
                    params::request_parameters(op.name, &value)
                } else {
                    let mut logged = value.clone();
                    if let serde_json::Value::Object(m) = &mut logged {
                        for name in &mistyped {
                            m.remove(name);
                        }
                    }
                    params::request_parameters(op.name, &logged)
                };
                if let Err(e) = model_check(op.name, &value) {
                    return self.refuse_authenticated(&info, &e, akid).await;
                }
                match (op.prepare)(kms_engine, caller.clone(), value) {
                    Ok(call) => call,
                    Err(_) => {
                        let e = WireError::serialization(format!(
                            "The request body does not match the input of {}.",
                            op.name
                        ));
                        return self.refuse_authenticated(&info, &e, akid).await;
                    }
                }
            }
        };
        let request_id = info.request_id.clone();
        match self
            .gate
            .run(info, caller, call, |r: &kms::Reply| r.elements.clone())
            .await
        {
            Ok(reply) if xml => match reply.body {
                serde_json::Value::String(s) => xml_ok(&request_id, s),
                other => xml_ok(&request_id, other.to_string()),
            },
            Ok(reply) => json_ok(&request_id, &reply.body),
            Err(e) if xml => xml_error(&request_id, &WireError::sts_from_kms(&e)),
            Err(e) => json_error(&request_id, &WireError::from_kms(&e)),
        }
    }

    /// Accounts for a refused request through the gate and renders the error.
    async fn refuse(&self, info: &RequestInfo, e: &WireError, xml: bool) -> Response {
        self.refuse_as(info, e, xml, None).await
    }

    /// Accounts for a signed request whose input was refused (an authenticated request: it
    /// keeps a record of its own) and renders the error (KMS, JSON).
    async fn refuse_authenticated(
        &self,
        info: &RequestInfo,
        e: &WireError,
        access_key_id: Option<String>,
    ) -> Response {
        self.gate
            .refused_authenticated(info, e.name, &e.message, access_key_id)
            .await;
        json_error(&info.request_id, e)
    }

    /// [`Self::refuse`], naming the access key the request was signed with, if known.
    async fn refuse_as(
        &self,
        info: &RequestInfo,
        e: &WireError,
        xml: bool,
        access_key_id: Option<String>,
    ) -> Response {
        self.gate
            .refused(info, e.name, &e.message, access_key_id)
            .await;
        if xml {
            xml_error(&info.request_id, e)
        } else {
            json_error(&info.request_id, e)
        }
    }
}

/// Decodes a KMS request body as the door does before the model check: empty (or blank) is
/// `{}`, anything else must be one JSON object. Public so that the fuzz targets feed it the
/// same bytes the door sees.
pub fn decode_kms_body(bytes: &[u8]) -> Result<serde_json::Value, WireError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_slice(bytes) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(WireError::serialization(
            "The request body must be a JSON object.",
        )),
        // Where, never what: serde's text can quote the body.
        Err(err) => Err(WireError::serialization(format!(
            "The request body is not valid JSON (line {}, column {}).",
            err.line(),
            err.column()
        ))),
    }
}

/// The model check of a KMS body ([`model`]): types, constraints, then members the door
/// does not read. Public for the fuzz targets.
pub fn model_check(operation: &str, body: &serde_json::Value) -> Result<(), WireError> {
    match model::check(operation, body) {
        Err(model::Refusal::Serialization(m)) => return Err(WireError::serialization(m)),
        Err(model::Refusal::Kms(e)) => return Err(WireError::from_kms(&e)),
        Ok(()) => {}
    }
    model::check_unread(operation, body).map_err(|e| WireError::from_kms(&e))
}

async fn handle(
    State(door): State<Arc<AwsJsonDoor>>,
    Extension(conn): Extension<ConnInfo>,
    req: Request<Body>,
) -> Response {
    door.handle(conn, req).await
}

/// A TLS acceptor for the door from PEM files (ALPN `h2` and `http/1.1`).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    listener::tls_acceptor(cert, key, None, &[b"h2", b"http/1.1"])
}

/// The running AWS door.
#[derive(Debug)]
pub struct AwsJsonServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsJsonServer {
    /// Starts serving on a bound listener (`tls: None` is plain HTTP; the caller checks that
    /// this is allowed), with the connection limits and deadlines of `limits`.
    pub fn spawn(
        door: Arc<AwsJsonDoor>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        limits: Limits,
    ) -> std::io::Result<AwsJsonServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let router = door.router();
        let registry = Registry::new(DOOR, limits);
        let task = tokio::spawn(accept_loop(router, listener, tls, registry, stopped));
        Ok(AwsJsonServer { addr, stop, task })
    }

    /// Stops accepting, lets open connections finish (bounded), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    router: axum::Router,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    registry: Arc<Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    let stop = stopped.clone();
    listener::accept_loop(&listener, &registry, &mut stopped, |stream, guard| {
        while conns.try_join_next().is_some() {}
        let conn = ConnInfo {
            peer: guard.conn().peer(),
            secure: tls.is_some(),
        };
        let body_timeout = registry.limits().request_body_timeout;
        let svc = Tracked::new(
            router.clone().layer(Extension(conn)),
            ConnLookup::Fixed(guard.conn().clone()),
            body_timeout,
        );
        let svc = TowerToHyperService::new(svc);
        let tls = tls.clone();
        let stop = stop.clone();
        let limits = *registry.limits();
        conns.spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Some(s) = listener::handshake(&acceptor, stream, &guard).await {
                        serve_connection(TrackedIo::new(s, guard), svc, &limits, stop).await
                    }
                }
                None => serve_connection(TrackedIo::new(stream, guard), svc, &limits, stop).await,
            }
        });
    })
    .await;
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
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

async fn serve_connection<I, S>(io: I, svc: S, limits: &Limits, mut stop: watch::Receiver<bool>)
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
    let builder = http_builder(limits);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "aws-json: connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Starts the door as `[aws_json]` configures it (`None` when disabled). Refuses plain HTTP
/// on an address that is not loopback.
pub async fn start(
    config: &crate::config::Config,
    auth: Arc<Authenticator>,
    gate: Gate,
) -> std::io::Result<Option<AwsJsonServer>> {
    let c = &config.aws_json;
    if !c.enabled {
        return Ok(None);
    }
    let tls = if c.tls {
        Some(
            tls_acceptor(&config.server.tls_cert, &config.server.tls_key)
                .map_err(|e| std::io::Error::other(format!("aws_json TLS: {e}")))?,
        )
    } else if c.listen.ip().is_loopback() {
        None
    } else {
        return Err(std::io::Error::other(format!(
            "aws_json: plain HTTP is allowed only on loopback, not {}",
            c.listen
        )));
    };
    let listener = TcpListener::bind(c.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {} for the {}: {e}",
                c.listen,
                crate::server::Listener::AwsDoor
            ),
        )
    })?;
    let door = Arc::new(AwsJsonDoor::new(auth, gate, c.max_body_bytes));
    let limits = Limits::from_config(&config.server);
    let server = AwsJsonServer::spawn(door, listener, tls, limits)?;
    let scheme = if c.tls { "https" } else { "http" };
    tracing::info!(addr = %server.addr, "AWS door (KMS JSON 1.1, STS Query) on {scheme}://{}", server.addr);
    Ok(Some(server))
}
