//! The gRPC door: `p11kms.v1.KeyManagementService`, `SecurityTokenService` and
//! `AdminService` over TLS.
//!
//! A caller authenticates with a client certificate (mutual TLS) or with AWS Signature V4
//! (access keys, or AssumeRole credentials plus `x-amz-security-token`) over the gRPC method
//! path, its headers and the SHA-256 of the request message (see `docs/grpc-api.md`). Each
//! method converts the message to the engine's types, calls the engine, and converts back
//! (each conversion one declaration of field names over [`convert`]'s per-type rules).
//! Errors go through [`status::to_status`], the door's one mapping.

/// A gRPC service of the door generated from its table: each method and the core operation
/// it serves (`Door::call` reads, runs and converts), and `$table`, the core operations by AWS
/// name (a test checks every core operation is in some table).
macro_rules! service_table {
    (
        impl $service:ident as $table:ident, signed as $signing:literal;
        operations { $($method:ident($req:ident) -> $resp:ident = $op:ty;)* }
    ) => {
        #[tonic::async_trait]
        impl $service for $crate::api::grpc::Door {
            $(
                async fn $method(
                    &self,
                    request: tonic::Request<$crate::pb::$req>,
                ) -> $crate::api::grpc::Reply<$crate::pb::$resp> {
                    self.call::<$op, _, _>($signing, request).await
                }
            )*
        }

        /// The core operations this service serves, by AWS name.
        pub const $table: &[&str] =
            &[$(<$op as $crate::core::operation::Operation>::NAME),*];
    };
}

pub mod admin;
pub mod capture;
mod convert;
pub mod decode;
pub mod health;
pub mod kms;
pub mod region;
pub mod status;
pub mod sts;
pub mod view;

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::gate::{Gate, RefusedAt, RequestInfo};
use crate::core::operation::{Operation, RequestParameters, ResponseElements};
use crate::core::{Kms, KmsError};
use crate::identity::auth::{claimed_access_key_id, AuthError, Authenticator, SigV4Input};
use crate::identity::sigv4::SignableRequest;
use crate::identity::Caller;
use capture::SignedRequestInfo;
use status::with_reason;

/// The door's tables: the core operations each gRPC service serves, by AWS name.
pub const TABLES: &[&[&str]] = &[kms::TABLE, admin::TABLE, sts::TABLE, region::TABLE];

/// The door's name in metrics and audit events.
pub const DOOR: &str = "grpc";

/// Response metadata carrying the request id of the audit event.
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// Allowed clock skew for SigV4 on the gRPC door, seconds: the one constant of every door.
pub use crate::identity::sigv4::MAX_SKEW_SECS;

/// What every gRPC service of the door shares: the engine, the authenticator and the gate.
#[derive(Debug, Clone)]
pub struct Door {
    kms: Arc<Kms>,
    auth: Arc<Authenticator>,
    gate: Gate,
}

impl Door {
    /// A door over an engine.
    pub fn new(auth: Arc<Authenticator>, gate: Gate) -> Self {
        Door {
            kms: gate.kms().clone(),
            auth,
            gate,
        }
    }

    /// Serves one core operation: reads the message into its request (after the AWS model's
    /// checks), runs it, and converts the answer to the response message.
    async fn call<O, T, R>(&self, service: &'static str, request: Request<T>) -> Reply<R>
    where
        T: prost::Message,
        O: Operation + FromMessage<T>,
        R: From<O::Response>,
    {
        let read = |msg: T| {
            let checked = view::check(O::NAME, &msg);
            let input = O::from_message(msg);
            let params = input
                .as_ref()
                .map(RequestParameters::request_parameters)
                .unwrap_or_default();
            Read {
                params,
                checked,
                input,
            }
        };
        let run =
            |kms, caller, input: Result<O, KmsError>| async move { input?.run(kms, caller).await };
        self.serve_with(O::NAME, service, request, read, run, |r: &O::Response| {
            r.response_elements()
        })
        .await
    }

    /// Serves one request: reads the message, authenticates the caller, runs `f` with the
    /// engine in a record scope, records metrics, and maps the engine's error to the wire in
    /// one place.
    async fn serve_with<T, X, C, R, F, Fut>(
        &self,
        op: &'static str,
        service: &'static str,
        request: Request<T>,
        read: impl FnOnce(T) -> Read<X>,
        f: F,
        elements: impl FnOnce(&C) -> serde_json::Value,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Arc<Kms>, Caller, X) -> Fut,
        Fut: Future<Output = Result<C, KmsError>>,
        R: From<C>,
    {
        let (metadata, extensions, msg) = request.into_parts();
        let head = Request::from_parts(metadata, extensions, ());
        let mut info = RequestInfo::new(DOOR, op);
        info.source_ip = head.remote_addr().map(|a| a.ip());
        info.user_agent = head
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The AWS model's constraints first, as on the AWS door; the engine runs only after.
        let Read {
            params,
            checked,
            input,
        } = read(msg);
        info.params = params;
        let caller = match self.caller(&head, service).await {
            Ok(c) => c,
            Err(status) => return Err(self.refused(&info, &head, status).await),
        };
        // Boxed once here: the engine's future is large, and every layer above (the gate,
        // its record scope and span, tonic's boxed method future) would otherwise move it
        // by value (a memcpy of kilobytes per layer per request, seen in the profile).
        let call = Box::pin(f(self.kms.clone(), caller.clone(), input));
        let fut = async move {
            checked?;
            call.await
        };
        let request_id = info.request_id.clone();
        // Boxed for the same reason: the gate's accounting future is not small either.
        let result = Box::pin(self.gate.run(info, caller, fut, elements)).await;
        // The request id of the audit event, as AWS returns x-amzn-RequestId.
        let id = tonic::metadata::MetadataValue::try_from(request_id.as_str()).ok();
        match result {
            Ok(r) => {
                let mut resp = Response::new(R::from(r));
                if let Some(id) = id {
                    resp.metadata_mut().insert(REQUEST_ID_HEADER, id);
                }
                Ok(resp)
            }
            Err(e) => {
                let mut status = status::to_status(e);
                if let Some(id) = id {
                    status.metadata_mut().insert(REQUEST_ID_HEADER, id);
                }
                Err(status)
            }
        }
    }

    /// Accounts for a request refused before authentication and returns its status.
    async fn refused(&self, info: &RequestInfo, head: &Request<()>, status: Status) -> Status {
        let outcome = status::aws_reason(&status).unwrap_or_else(|| "Unauthenticated".into());
        let akid = head
            .extensions()
            .get::<SignedRequestInfo>()
            .and_then(|i| claimed_access_key_id(&i.headers));
        self.gate
            .refused(
                info,
                RefusedAt::Authentication,
                &outcome,
                status.message(),
                akid,
            )
            .await;
        status
    }

    /// The caller behind a request: a SigV4 signature when the request has an
    /// `Authorization` header, else its verified client certificate.
    async fn caller<T>(&self, req: &Request<T>, service: &str) -> Result<Caller, Status> {
        let source_ip = req.remote_addr().map(|a| a.ip());
        if let Some(info) = req.extensions().get::<SignedRequestInfo>() {
            let Some(hash) = info.payload_sha256_hex.as_deref() else {
                return Err(auth_status(AuthError::InvalidSignature(
                    "The request body could not be read for signature verification.".into(),
                )));
            };
            let input = SigV4Input {
                request: SignableRequest {
                    method: "POST",
                    path: &info.path,
                    query: "",
                    headers: &info.headers,
                    payload_sha256_hex: hash,
                },
                service,
                max_skew_secs: MAX_SKEW_SECS,
                source_ip,
                secure_transport: true,
            };
            return self
                .auth
                .from_sigv4(&input, self.kms.now_ms())
                .await
                .map_err(auth_status);
        }
        let certs = req
            .peer_certs()
            .ok_or_else(|| auth_status(AuthError::MissingAuthenticationToken))?;
        let leaf = certs
            .first()
            .ok_or_else(|| auth_status(AuthError::MissingAuthenticationToken))?;
        self.auth
            .from_certificate(leaf.as_ref(), source_ip)
            .map_err(auth_status)
    }
}

/// A request message read for the engine: what the trail records of it, the AWS model's
/// verdict on it, and the engine's input.
struct Read<X> {
    params: serde_json::Value,
    checked: Result<(), KmsError>,
    input: X,
}

/// A core request read from its gRPC message (proto3: an empty string or zero is "not set").
/// One declaration per operation ([`convert`]'s `from_message!`), in the operation family's
/// file under `kms/`; responses are `From` the core response, declared by `to_message!`.
pub trait FromMessage<T>: Sized {
    /// Reads the request.
    fn from_message(message: T) -> Result<Self, KmsError>;
}

/// The result of a gRPC method.
pub type Reply<T> = Result<Response<T>, Status>;

/// UNAUTHENTICATED with the AWS exception name of an authentication failure.
pub fn auth_status(e: AuthError) -> Status {
    with_reason(tonic::Code::Unauthenticated, e.aws_name(), e.to_string())
}
