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
//! The door runs on the shared HTTP listener ([`crate::api::http`], listed in
//! [`crate::api::HTTP_DOORS`]): HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with `[server]
//! tls_cert`/`tls_key`, or plain HTTP when configured on a loopback address.
//!
//! [`AwsJsonDoor::handle`] reads as its steps: route the request, read the body, find the STS
//! action, authenticate (SigV4), parse and check the KMS input (and its audit parameters),
//! run it through the gate, render the reply; any step may refuse the request instead.

pub mod error;
pub mod kms;
pub mod model;
pub mod sts;

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Method, Request};
use http_body_util::BodyExt;

use crate::api::console::{self, ConsoleAssets};
use crate::api::gate::{Gate, RefusedAt, RequestInfo};
use crate::api::http::{
    headers_as_signed, sigv4_input, ConnInfo, DoorDeps, HttpBinding, HttpDoor, RequestCtx, TlsFiles,
};
use crate::config::Config;
use crate::core::KmsError;
use crate::identity::auth::{claimed_access_key_id, Authenticator};
use crate::identity::sigv4;
use crate::identity::Caller;
use error::{json_error, json_ok, xml_error, xml_ok, WireError};

/// The door's name in metrics and audit events.
pub const DOOR: &str = "aws-json";

/// Allowed clock skew for SigV4 on this door, seconds: the one constant of every door
/// (5 minutes, as AWS KMS allows).
pub use crate::identity::sigv4::MAX_SKEW_SECS;

/// The operation name recorded for requests whose operation is unknown.
pub const UNKNOWN_OPERATION: &str = "Unknown";

/// The door: the engine's gate, the authenticator, the body limit, and the operator
/// console's files when `[console]` is enabled.
#[derive(Debug)]
pub struct AwsJsonDoor {
    gate: Gate,
    auth: Arc<Authenticator>,
    max_body_bytes: usize,
    console: Option<Arc<ConsoleAssets>>,
}

/// Where a request goes: a KMS operation (AWS JSON) or STS (Query protocol, XML).
#[derive(Clone, Copy)]
enum Route {
    Kms(&'static kms::Operation),
    Sts,
}

/// A request refused before the engine ran it, and how the gate accounts for it.
struct Refused {
    error: WireError,
    /// Rendered as STS XML rather than AWS JSON.
    xml: bool,
    /// The access key the request was signed with, if known.
    access_key_id: Option<String>,
    /// The caller was authenticated: the refusal keeps an audit record of its own.
    authenticated: bool,
}

impl Refused {
    /// A refusal before authentication.
    fn anonymous(error: WireError, xml: bool) -> Refused {
        Refused {
            error,
            xml,
            access_key_id: None,
            authenticated: false,
        }
    }

    /// A KMS request whose input was refused after its caller was authenticated.
    fn authenticated(error: WireError, access_key_id: Option<String>) -> Refused {
        Refused {
            error,
            xml: false,
            access_key_id,
            authenticated: true,
        }
    }
}

/// A request ready for the engine.
struct Admitted {
    caller: Caller,
    call: kms::Call,
    xml: bool,
}

impl HttpDoor for AwsJsonDoor {
    const NAME: &'static str = DOOR;

    fn binding(config: &Config) -> Option<HttpBinding> {
        let c = &config.aws_json;
        c.enabled.then(|| HttpBinding {
            listen: c.listen,
            tls: c.tls.then(|| TlsFiles {
                cert: config.server.tls_cert.clone(),
                key: config.server.tls_key.clone(),
                client_auth: None,
            }),
            section: "aws_json",
            label: "AWS door ([aws_json] listen)",
            banner: "AWS door (KMS JSON 1.1, STS Query)",
        })
    }

    fn build(config: &Config, deps: &DoorDeps) -> AwsJsonDoor {
        let door = AwsJsonDoor::new(
            deps.auth.clone(),
            deps.gate.clone(),
            config.aws_json.max_body_bytes,
        );
        match config
            .console
            .enabled
            .then(|| ConsoleAssets::load(&config.console.assets))
        {
            Some(Ok(assets)) => door.with_console(assets),
            Some(Err(e)) => {
                tracing::error!(error = %e, "[console] assets could not be read: the console is not served");
                door
            }
            None => door,
        }
    }

    /// Serves one HTTP request: a console file, or a request admitted (or refused) step by
    /// step, then run through the gate.
    async fn handle(&self, ctx: RequestCtx, req: Request<Body>) -> Response {
        let (parts, body) = req.into_parts();
        if let Some(console) = &self.console {
            if console::is_console_path(parts.uri.path()) {
                return console.serve(&parts);
            }
        }
        let conn = ctx.conn;
        let mut info = request_info(ctx, &parts.headers);
        match self.admit(conn, &mut info, &parts, body).await {
            Ok(admitted) => self.run(info, admitted).await,
            Err(refused) => self.refuse(&info, refused).await,
        }
    }
}

impl AwsJsonDoor {
    /// A door over the gate.
    pub fn new(auth: Arc<Authenticator>, gate: Gate, max_body_bytes: usize) -> AwsJsonDoor {
        AwsJsonDoor {
            gate,
            auth,
            max_body_bytes,
            console: None,
        }
    }

    /// The door serving the operator console's files under `/console/` too.
    pub fn with_console(self, assets: ConsoleAssets) -> AwsJsonDoor {
        AwsJsonDoor {
            console: Some(Arc::new(assets)),
            ..self
        }
    }

    /// The steps before the engine: route, read the body, (STS) the action, authenticate,
    /// then the operation's input. Each names the operation and its audit parameters in
    /// `info` as soon as they are known.
    async fn admit(
        &self,
        conn: ConnInfo,
        info: &mut RequestInfo,
        parts: &Parts,
        body: Body,
    ) -> Result<Admitted, Refused> {
        let route = route(parts).map_err(|e| Refused::anonymous(e, false))?;
        let xml = matches!(route, Route::Sts);
        if console::is_foreign_origin(parts, conn.secure) {
            return Err(Refused::anonymous(WireError::foreign_origin(xml), xml));
        }
        if let Route::Kms(op) = route {
            info.operation = op.name;
        }
        let bytes = self
            .read_body(&parts.headers, body)
            .await
            .map_err(|e| Refused::anonymous(e, xml))?;
        let (caller, call) = match route {
            Route::Kms(op) => {
                let caller = self
                    .authenticate(conn, parts, &bytes, op.service, xml)
                    .await?;
                let call = self.kms_call(op, &bytes, caller.clone(), info)?;
                (caller, call)
            }
            Route::Sts => {
                let form: Vec<(String, String)> =
                    form_urlencoded::parse(&bytes).into_owned().collect();
                let action = sts_action(&form).map_err(|e| Refused::anonymous(e, xml))?;
                info.operation = action;
                info.params = sts::request_parameters(action, &form);
                let caller = self
                    .authenticate(conn, parts, &bytes, sts::SERVICE, xml)
                    .await?;
                let kms = self.gate.kms().clone();
                let id = info.request_id.clone();
                (caller.clone(), sts::prepare(kms, caller, action, form, id))
            }
        };
        Ok(Admitted { caller, call, xml })
    }

    /// The body, refused (never parsed, never kept) when over the limit.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, WireError> {
        let limit = self.max_body_bytes;
        let declared =
            header_text(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
        if let Some(declared) = declared.filter(|l| *l > limit as u64) {
            let expects_continue = header_text(headers, header::EXPECT)
                .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
            if declared <= DRAIN_MAX_BYTES && !expects_continue {
                let _ = tokio::time::timeout(DRAIN_FOR, discard(body)).await;
            }
            return Err(WireError::too_large(limit));
        }
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(WireError::too_large(limit))
            }
            Err(_) => Err(WireError::serialization(
                "The request body could not be read.",
            )),
        }
    }

    /// The caller, from the SigV4 signature over the headers exactly as received. A refusal
    /// names the access key the request claims, for the audit trail.
    async fn authenticate(
        &self,
        conn: ConnInfo,
        parts: &Parts,
        bytes: &[u8],
        service: &'static str,
        xml: bool,
    ) -> Result<Caller, Refused> {
        let headers = headers_as_signed(parts);
        let payload_hash = sigv4::sha256_hex(bytes);
        let input = sigv4_input(conn, parts, &headers, &payload_hash, service);
        let now_ms = self.gate.kms().now_ms();
        self.auth
            .from_sigv4(&input, now_ms)
            .await
            .map_err(|e| Refused {
                error: if xml {
                    WireError::sts_from_auth(&e)
                } else {
                    WireError::from_auth(&e)
                },
                xml,
                access_key_id: claimed_access_key_id(&headers),
                authenticated: false,
            })
    }

    /// The engine call of a KMS operation: the JSON body parsed, its audit parameters
    /// recorded, the model check passed, then the operation's input.
    fn kms_call(
        &self,
        op: &'static kms::Operation,
        bytes: &[u8],
        caller: Caller,
        info: &mut RequestInfo,
    ) -> Result<kms::Call, Refused> {
        let akid = caller.access_key_id.clone();
        let refused = |e| Refused::authenticated(e, akid.clone());
        let value = decode_kms_body(bytes).map_err(refused)?;
        let checked = model_check(op.name, &value);
        // The trail records what the core request says is safe (nothing when the body does
        // not read as the operation's input).
        match (op.prepare)(self.gate.kms().clone(), caller, value) {
            Ok(prepared) => {
                info.params = prepared.params;
                checked.map_err(refused)?;
                Ok(prepared.call)
            }
            Err(_) => {
                checked.map_err(refused)?;
                Err(refused(WireError::serialization(format!(
                    "The request body does not match the input of {}.",
                    op.name
                ))))
            }
        }
    }

    /// Runs an admitted request through the gate and renders the reply.
    async fn run(&self, info: RequestInfo, admitted: Admitted) -> Response {
        let Admitted { caller, call, xml } = admitted;
        let request_id = info.request_id.clone();
        let result = self
            .gate
            .run(info, caller, call, |r: &kms::Reply| r.elements.clone())
            .await;
        render(&request_id, result, xml)
    }

    /// Accounts for a refused request through the gate and renders the error.
    async fn refuse(&self, info: &RequestInfo, r: Refused) -> Response {
        let (name, message) = (r.error.name, r.error.message.as_str());
        let at = if r.authenticated {
            RefusedAt::Input
        } else {
            RefusedAt::Authentication
        };
        self.gate
            .refused(info, at, name, message, r.access_key_id)
            .await;
        if r.xml {
            xml_error(&info.request_id, &r.error)
        } else {
            json_error(&info.request_id, &r.error)
        }
    }
}

/// What the gate knows of a request as it arrives: its id, peer and User-Agent.
fn request_info(ctx: RequestCtx, headers: &HeaderMap) -> RequestInfo {
    let mut info = RequestInfo::with_request_id(DOOR, UNKNOWN_OPERATION, ctx.request_id);
    info.source_ip = Some(ctx.conn.peer.ip());
    info.user_agent = header_text(headers, header::USER_AGENT).map(str::to_string);
    info
}

/// A header's value, when it is text.
fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The route of a request: `POST` only; `X-Amz-Target` names a KMS operation, else a form
/// body is STS.
fn route(parts: &Parts) -> Result<Route, WireError> {
    if parts.method != Method::POST {
        return Err(WireError::method_not_allowed(parts.method.as_str()));
    }
    let target = header_text(&parts.headers, "x-amz-target").map(str::trim);
    let is_form = header_text(&parts.headers, header::CONTENT_TYPE)
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    match (target, is_form) {
        (Some(t), _) => kms::operation(t).map(Route::Kms).ok_or_else(|| {
            WireError::unknown_operation(format!(
                "The operation {t:?} is not served by this endpoint."
            ))
        }),
        (None, true) => Ok(Route::Sts),
        (None, false) => Err(WireError::unknown_operation(
            "The request has no X-Amz-Target header naming the operation.",
        )),
    }
}

/// The STS action a form names (the last `Action`, if repeated).
fn sts_action(form: &[(String, String)]) -> Result<&'static str, WireError> {
    match sts::action(form) {
        (_, Some(action)) => Ok(action),
        (action, None) => Err(WireError::sts_invalid_action(action)),
    }
}

/// Decodes a KMS request body as the door does before the model check: empty (or blank) is
/// `{}`, anything else must be one JSON object.
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

/// The response of a request the engine ran: AWS JSON, or STS XML (whose body the STS
/// call already rendered).
fn render(request_id: &str, result: Result<kms::Reply, KmsError>, xml: bool) -> Response {
    match result {
        Ok(reply) if xml => match reply.body {
            serde_json::Value::String(s) => xml_ok(request_id, s),
            other => xml_ok(request_id, other.to_string()),
        },
        Ok(reply) => json_ok(request_id, &reply.body),
        Err(e) if xml => xml_error(request_id, &WireError::sts_from_kms(&e)),
        Err(e) => json_error(request_id, &WireError::from_kms(&e)),
    }
}

/// The model check of a KMS body ([`model`]): types, constraints, then members the door
/// does not read.
pub fn model_check(operation: &str, body: &serde_json::Value) -> Result<(), WireError> {
    match model::check(operation, body) {
        Err(model::Refusal::Serialization(m)) => return Err(WireError::serialization(m)),
        Err(model::Refusal::Kms(e)) => return Err(WireError::from_kms(&e)),
        Ok(()) => {}
    }
    model::check_unread(operation, body).map_err(|e| WireError::from_kms(&e))
}

/// A body declared over `max_body_bytes` but no longer than this is read and dropped (for at
/// most [`DRAIN_FOR`]) before the 413 goes out, so that a client still writing it reads the
/// answer instead of meeting a connection reset, and its connection stays usable. A longer
/// one, or one whose client waits for `100 Continue`, is answered at once (the body is never
/// asked for) and its connection closed.
const DRAIN_MAX_BYTES: u64 = 1024 * 1024;

/// How long a refused body is read at most (a client that declared a body and sends none is
/// answered after this).
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a refused body to its end (or its first error) and drops it.
async fn discard(mut body: Body) {
    while let Some(Ok(_)) = body.frame().await {}
}
