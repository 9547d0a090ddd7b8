//! The XKS door: p11kms as the external key store proxy of AWS KMS (the "AWS KMS External
//! Key Store Proxy API" v1, `docs/xks.md`).
//!
//! - Routes: `POST {prefix}/kms/xks/v1/health` and `POST {prefix}/kms/xks/v1/keys/
//!   {externalKeyId}/metadata|encrypt|decrypt` ([`ops`]), one logical key store per URI path
//!   prefix (`[[xks.key_store]]`). Any other method is 405; any other path 404
//!   `InvalidUriPathException`.
//! - Authentication: SigV4 with service [`SERVICE`] and the configured region, through the
//!   one verifier ([`Authenticator::from_door_credential`]), ±5 minutes, with either of the
//!   key store's credentials; the request then runs as the key store's principal. Any
//!   failure is 401 `AuthenticationFailedException`.
//! - Bodies are translated in [`wire`], which also maps every error to the specification's
//!   name and status in one place.
//!
//! Every request, refused or run, goes through the [`Gate`] (audit door `xks`, metrics).
//! The door runs on the shared HTTP listener ([`crate::api::http`]).

pub mod ops;
pub mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;

use crate::api::gate::{Gate, RefusedAt, RequestInfo};
use crate::api::http::{
    headers_as_signed, sigv4_input, ClientAuth, ClientCert, ConnInfo, DoorDeps, HttpBinding,
    HttpDoor, RequestCtx, TlsFiles,
};
use crate::config::xks::{XksCredential, XksKeyStoreConfig, XKS_BASE_PATH};
use crate::config::Config;
use crate::identity::auth::{claimed_access_key_id, Authenticator};
use crate::identity::sigv4;
use crate::identity::Caller;
use wire::XksError;

/// The door's name in metrics and audit events.
pub const DOOR: &str = "xks";

/// The SigV4 service name AWS KMS signs XKS requests with.
pub const SERVICE: &str = "kms-xks-proxy";

/// The operation name recorded for requests whose route is unknown.
pub const UNKNOWN_OPERATION: &str = "Unknown";

/// One logical key store: its prefix, principal and credentials (replaced on SIGHUP).
struct KeyStore {
    prefix: String,
    principal: String,
    credentials: std::sync::RwLock<Arc<Vec<XksCredential>>>,
    /// Its config entry, to read the credentials file again.
    config: XksKeyStoreConfig,
}

impl KeyStore {
    /// The credentials now in force.
    fn credentials(&self) -> Arc<Vec<XksCredential>> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the credentials file again: the new credentials replace the old ones when the
    /// file is a private, well-formed one; otherwise the old ones stay and the error is logged.
    fn reload(&self, allow_group_readable: bool) {
        let path = self.config.credentials_path();
        let checked =
            crate::config::check_secret_file("xks credentials_file", path, allow_group_readable)
                .map_err(|e| e.to_string())
                .and_then(|()| self.config.load_credentials());
        match checked {
            Ok(creds) => {
                *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(creds);
                tracing::info!(prefix = %self.prefix, "XKS key store credentials reloaded");
            }
            Err(e) => {
                tracing::error!(prefix = %self.prefix, error = %e, "XKS key store credentials not reloaded; the previous ones stay in force")
            }
        }
    }
}

/// Mutual TLS, when configured: the connection's client certificate must have named one of
/// the expected subjects (the listener verified its chain in the handshake).
fn check_client_cert(cert: ClientCert) -> Result<(), XksError> {
    let refuse = |m: &str| Err(XksError::authentication_message(m));
    match cert {
        ClientCert::NotAsked | ClientCert::Accepted => Ok(()),
        ClientCert::Absent => refuse("A client certificate is required (mutual TLS)."),
        ClientCert::UnexpectedSubject => {
            refuse("The client certificate's subject is not one this proxy accepts.")
        }
    }
}

/// Reads every key store's credentials file again on each SIGHUP, for as long as the door
/// lives, so that AWS-side credential rotation needs no restart.
fn spawn_credential_reload(stores: std::sync::Weak<Vec<KeyStore>>, allow_group_readable: bool) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; XKS credentials reload by signal is off");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(stores) = stores.upgrade() else {
                return;
            };
            for store in stores.iter() {
                store.reload(allow_group_readable);
            }
        }
    });
}

/// The door: the gate, the authenticator, the region and the key stores.
pub struct XksDoor {
    gate: Gate,
    auth: Arc<Authenticator>,
    regions: Vec<String>,
    stores: Arc<Vec<KeyStore>>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for XksDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefixes: Vec<&str> = self.stores.iter().map(|s| s.prefix.as_str()).collect();
        f.debug_struct("XksDoor")
            .field("regions", &self.regions)
            .field("prefixes", &prefixes)
            .finish_non_exhaustive()
    }
}

/// A request refused before the engine ran it.
struct Refused {
    error: XksError,
    at: RefusedAt,
    access_key_id: Option<String>,
}

impl Refused {
    fn anonymous(error: XksError) -> Refused {
        Refused {
            error,
            at: RefusedAt::Authentication,
            access_key_id: None,
        }
    }
}

/// A request ready for the engine.
struct Admitted {
    caller: Caller,
    call: ops::Call,
}

impl HttpDoor for XksDoor {
    const NAME: &'static str = DOOR;

    fn binding(config: &Config) -> Option<HttpBinding> {
        let c = &config.xks;
        c.enabled.then(|| HttpBinding {
            listen: c.listen,
            tls: c.tls.then(|| TlsFiles {
                cert: c.tls_cert.clone().unwrap_or(config.server.tls_cert.clone()),
                key: c.tls_key.clone().unwrap_or(config.server.tls_key.clone()),
                client_auth: c.mtls_client_ca.clone().map(|ca| ClientAuth {
                    ca,
                    subjects: c.client_subjects(&config.kms.region),
                }),
            }),
            section: "xks",
            label: "XKS door ([xks] listen)",
            banner: "XKS door (AWS KMS external key store proxy API v1)",
        })
    }

    fn build(config: &Config, deps: &DoorDeps) -> XksDoor {
        let stores = config
            .xks
            .key_store
            .iter()
            .map(|s| KeyStore {
                prefix: s.uri_path_prefix.clone(),
                principal: s.principal.clone(),
                credentials: std::sync::RwLock::new(Arc::new(s.load_credentials().unwrap_or_else(|e| {
                    tracing::error!(prefix = %s.uri_path_prefix, error = %e, "XKS key store credentials unreadable; its requests are refused");
                    Vec::new()
                }))),
                config: s.clone(),
            })
            .collect();
        let stores = Arc::new(stores);
        spawn_credential_reload(
            Arc::downgrade(&stores),
            config.server.allow_group_readable_secrets,
        );
        XksDoor {
            gate: deps.gate.clone(),
            auth: deps.auth.clone(),
            regions: vec![config.xks.region_or(&config.kms.region).to_string()],
            stores,
            max_body_bytes: config.xks.max_body_bytes,
        }
    }

    /// Serves one request: route, body, authentication, input, then the engine through the
    /// gate; any step may refuse it instead.
    async fn handle(&self, ctx: RequestCtx, req: Request<Body>) -> Response {
        let (parts, body) = req.into_parts();
        let conn = ctx.conn;
        let mut info = RequestInfo::with_request_id(DOOR, UNKNOWN_OPERATION, ctx.request_id);
        info.source_ip = Some(conn.peer.ip());
        info.user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut store = None;
        let admitted = self.admit(conn, &mut info, &mut store, &parts, body).await;
        let operation = info.operation;
        let (response, outcome) = match admitted {
            Ok(Admitted { caller, call }) => {
                match self
                    .gate
                    .run(info, caller, call, |_| serde_json::Value::Null)
                    .await
                {
                    Ok(body) => (wire::json_response(StatusCode::OK, &body), "Success"),
                    Err(e) => {
                        let e = XksError::from_kms(&e);
                        (e.response(), e.name)
                    }
                }
            }
            Err(r) => {
                let e = &r.error;
                self.gate
                    .refused(&info, r.at, e.name, &e.message, r.access_key_id)
                    .await;
                (r.error.response(), e.name)
            }
        };
        if let Some(store) = store {
            let metrics = self.gate.metrics();
            metrics.xks_request(&store.prefix, operation, outcome);
        }
        response
    }
}

impl XksDoor {
    /// The steps before the engine; each names what it learns in `info`.
    async fn admit<'s>(
        &'s self,
        conn: ConnInfo,
        info: &mut RequestInfo,
        store_of: &mut Option<&'s KeyStore>,
        parts: &Parts,
        body: Body,
    ) -> Result<Admitted, Refused> {
        if parts.method != Method::POST {
            return Err(Refused::anonymous(XksError::method_not_allowed(
                parts.method.as_str(),
            )));
        }
        let (store, op, key) = self.route(parts.uri.path()).map_err(Refused::anonymous)?;
        info.operation = op.name;
        *store_of = Some(store);
        check_client_cert(conn.client_cert).map_err(Refused::anonymous)?;
        let bytes = self.read_body(body).await.map_err(Refused::anonymous)?;
        let caller = self.authenticate(conn, parts, &bytes, store)?;
        let akid = caller.access_key_id.clone();
        let prepared = (op.prepare)(self.gate.kms().clone(), caller.clone(), key, &bytes).map_err(
            |error| Refused {
                error,
                at: RefusedAt::Input,
                access_key_id: akid,
            },
        )?;
        info.params = prepared.params;
        Ok(Admitted {
            caller,
            call: prepared.call,
        })
    }

    /// The key store and operation a path names: `{prefix}/kms/xks/v1/{tail}`.
    fn route<'p>(
        &self,
        path: &'p str,
    ) -> Result<(&KeyStore, &'static ops::Operation, Option<&'p str>), XksError> {
        let unknown = || XksError::invalid_path("The request path is not an XKS API path.");
        let at = path.find(XKS_BASE_PATH).ok_or_else(unknown)?;
        let (prefix, rest) = path.split_at(at);
        let store = self
            .stores
            .iter()
            .find(|s| s.prefix == prefix)
            .ok_or_else(unknown)?;
        let tail = rest[XKS_BASE_PATH.len()..]
            .strip_prefix('/')
            .ok_or_else(unknown)?;
        let (op, key) = ops::operation(tail).ok_or_else(|| {
            XksError::invalid_path("The request path names no XKS operation of this key store.")
        })?;
        Ok((store, op, key))
    }

    /// The body, refused when over the limit.
    async fn read_body(&self, body: Body) -> Result<Bytes, XksError> {
        let limit = self.max_body_bytes;
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(XksError::validation(
                format!("The request body is larger than {limit} bytes."),
            )),
            Err(_) => Err(XksError::validation("The request body could not be read.")),
        }
    }

    /// The key store's principal, once the signature holds under one of its credentials.
    fn authenticate(
        &self,
        conn: ConnInfo,
        parts: &Parts,
        bytes: &[u8],
        store: &KeyStore,
    ) -> Result<Caller, Refused> {
        let headers = headers_as_signed(parts);
        let payload_hash = sigv4::sha256_hex(bytes);
        let input = sigv4_input(conn, parts, &headers, &payload_hash, SERVICE);
        let credentials = store.credentials();
        let lookup = |id: &str| {
            credentials
                .iter()
                .find(|c| c.access_key_id == id)
                .map(|c| c.secret_access_key.clone())
        };
        let now_ms = self.gate.kms().now_ms();
        self.auth
            .from_door_credential(&input, &self.regions, &store.principal, lookup, now_ms)
            .map_err(|e| Refused {
                error: XksError::authentication(&e),
                at: RefusedAt::Authentication,
                access_key_id: claimed_access_key_id(&headers),
            })
    }
}
