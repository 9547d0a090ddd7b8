//! The client commands' connection: options from flags, the environment or the client config
//! file, a gRPC channel with, for access-key callers, a SigV4 signer, failover over several
//! endpoints (reported on standard error), and gRPC errors as the CLI prints them
//! (`<AWS exception name>: <message>`).

use std::future::Future;
use std::path::PathBuf;

use clap::Args;

use p11kms::api::grpc::status::aws_reason;
use p11kms::client::{is_unavailable, retry_safe, ClientConfig, Connected, Failover};
use p11kms::pb::key_management_service_client::KeyManagementServiceClient;

/// Connection options; each falls back to the environment, then the client config file.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Daemon endpoint, e.g. https://127.0.0.1:8443. Repeat it (or separate with commas) to
    /// name several nodes: they are tried in order, failing over when one cannot be reached.
    #[arg(long, env = "P11KMS_ENDPOINT", global = true, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// CA certificate (PEM) the server certificate chains to.
    #[arg(long, env = "P11KMS_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "P11KMS_CLIENT_CERT", global = true)]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "P11KMS_CLIENT_KEY", global = true)]
    client_key: Option<PathBuf>,
    /// Client config file (default: p11kms-data/client.toml when it exists).
    #[arg(long, env = "P11KMS_CLIENT_CONFIG", global = true)]
    client_config: Option<PathBuf>,
    /// A `[profiles.NAME]` section of the client config to use.
    #[arg(long, env = "P11KMS_PROFILE", global = true)]
    profile: Option<String>,
}

/// The client config: the file (or the profile in it), overlaid with the flags and variables.
fn client_config(conn: &Conn) -> Result<ClientConfig, String> {
    let file = conn.client_config.clone().or_else(|| {
        let default = PathBuf::from("p11kms-data/client.toml");
        default.exists().then_some(default)
    });
    let mut base = match file {
        Some(f) => ClientConfig::load(&f).map_err(|e| e.to_string())?,
        None => ClientConfig::default(),
    };
    if let Some(p) = &conn.profile {
        base = base.with_profile(p).map_err(|e| e.to_string())?;
    }
    Ok(base.overlay(ClientConfig {
        endpoint: (!conn.endpoint.is_empty()).then(|| conn.endpoint.join(",")),
        ca_cert: conn.ca_cert.clone(),
        client_cert: conn.client_cert.clone(),
        client_key: conn.client_key.clone(),
        ..Default::default()
    }))
}

/// A connection to one of the endpoints plus, for access-key callers, a SigV4 signer for
/// it, and the endpoints still left to fail over to.
pub struct Session {
    current: Connected,
    failover: Failover,
}

impl Session {
    /// Connects to the first of the endpoints the options name that accepts a connection;
    /// each one skipped is reported on standard error.
    pub async fn open(conn: &Conn) -> Result<Session, String> {
        let mut failover = Failover::new(client_config(conn)?).map_err(|e| e.to_string())?;
        let current = failover.next_connected().await.map_err(|e| e.to_string())?;
        for f in failover.failures() {
            report_failover(f, &current.endpoint);
        }
        Ok(Session { current, failover })
    }

    /// Calls `/p11kms.v1.<service>/<method>` with `msg` (signed when using access keys)
    /// through `call` on the current channel; when the node answers `UNAVAILABLE` (or the
    /// connection is lost) and `method` is safe to send again ([`retry_safe`]: reads,
    /// cryptographic calls, idempotent changes), fails over to the next endpoint and calls
    /// again there; when none is left, the error names each endpoint and why. Any other error
    /// is the answer, and so is every error with one endpoint (as before several existed).
    /// The message is copied only while another attempt is possible (it may hold a
    /// plaintext, which prost types cannot zeroize).
    pub async fn call<T, R, F, Fut>(
        &mut self,
        service: &str,
        method: &str,
        msg: T,
        call: F,
    ) -> Result<R, String>
    where
        T: prost::Message + Clone,
        F: Fn(tonic::transport::Channel, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let fails_over = retry_safe(method) && self.failover.endpoint_count() > 1;
        let mut msg = Some(msg);
        loop {
            let once_more = fails_over && self.failover.has_more();
            let this = match once_more {
                true => msg.clone(),
                false => msg.take(),
            };
            let Some(this) = this else {
                return Err(format!("{method}: nothing left to send"));
            };
            let request = self.req(service, method, this);
            match call(self.current.channel.clone(), request).await {
                Err(s) if is_unavailable(&s) && fails_over => {
                    self.fail_over(status_error(s)).await?
                }
                other => return answer(other),
            }
        }
    }

    /// [`Session::call`] on the KeyManagementService.
    pub async fn kms_call<T, R, F, Fut>(
        &mut self,
        method: &str,
        msg: T,
        call: F,
    ) -> Result<R, String>
    where
        T: prost::Message + Clone,
        F: Fn(KeyManagementServiceClient<tonic::transport::Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let kms = |ch, r| call(KeyManagementServiceClient::new(ch), r);
        self.call("KeyManagementService", method, msg, kms).await
    }

    /// Moves to the next endpoint after the current one failed a call with `reason`.
    async fn fail_over(&mut self, reason: String) -> Result<(), String> {
        let failed = self.current.endpoint.clone();
        self.failover.record(&failed, reason);
        let seen = self.failover.failures().len();
        self.current = self
            .failover
            .next_connected()
            .await
            .map_err(|e| e.to_string())?;
        for f in &self.failover.failures()[seen - 1..] {
            report_failover(f, &self.current.endpoint);
        }
        Ok(())
    }

    /// A KeyManagementService client on this session's channel.
    pub fn kms(&self) -> KeyManagementServiceClient<tonic::transport::Channel> {
        KeyManagementServiceClient::new(self.current.channel.clone())
    }

    /// A request for `/p11kms.v1.<service>/<method>`, signed when using access keys.
    pub fn req<T: prost::Message>(&self, service: &str, method: &str, msg: T) -> tonic::Request<T> {
        match &self.current.signer {
            Some(s) => s.sign(msg, &format!("/p11kms.v1.{service}/{method}")),
            None => tonic::Request::new(msg),
        }
    }

    /// A KeyManagementService request for `method`.
    pub fn k<T: prost::Message>(&self, method: &str, msg: T) -> tonic::Request<T> {
        self.req("KeyManagementService", method, msg)
    }
}

/// Tells the operator (on standard error, so that standard output stays the answer) that
/// an endpoint was skipped.
fn report_failover(failure: &p11kms::client::EndpointFailure, next: &str) {
    eprintln!(
        "p11kms: endpoint {} failed ({}); failed over to {next}",
        failure.endpoint, failure.reason
    );
}

/// A gRPC answer's message, or its error as the CLI prints it.
pub fn answer<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, String> {
    r.map(tonic::Response::into_inner).map_err(status_error)
}

/// `<AWS exception name>: <message>`, or the gRPC code when the status carries no AWS name.
fn status_error(s: tonic::Status) -> String {
    match aws_reason(&s) {
        Some(reason) => format!("{reason}: {}", s.message()),
        None => format!("{:?}: {}", s.code(), s.message()),
    }
}
