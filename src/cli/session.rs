//! The client commands' connection: options from flags, the environment or the client config
//! file, a gRPC channel with, for access-key callers, a SigV4 signer, and gRPC errors as the
//! CLI prints them (`<AWS exception name>: <message>`).

use std::path::PathBuf;

use clap::Args;

use p11kms::api::grpc::status::aws_reason;
use p11kms::client::{ClientConfig, Signer};
use p11kms::pb::admin_service_client::AdminServiceClient;
use p11kms::pb::key_management_service_client::KeyManagementServiceClient;
use p11kms::pb::security_token_service_client::SecurityTokenServiceClient;

/// Connection options; each falls back to the environment, then the client config file.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Daemon endpoint, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "P11KMS_ENDPOINT", global = true)]
    endpoint: Option<String>,
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
        endpoint: conn.endpoint.clone(),
        ca_cert: conn.ca_cert.clone(),
        client_cert: conn.client_cert.clone(),
        client_key: conn.client_key.clone(),
        ..Default::default()
    }))
}

/// A connection plus, for access-key callers, a SigV4 signer.
pub struct Session {
    channel: tonic::transport::Channel,
    signer: Option<Signer>,
}

impl Session {
    /// Opens the channel the options describe.
    pub async fn open(conn: &Conn) -> Result<Session, String> {
        let cfg = client_config(conn)?;
        let signer = cfg.signer().map_err(|e| e.to_string())?;
        let channel = cfg.channel().await.map_err(|e| e.to_string())?;
        Ok(Session { channel, signer })
    }

    /// A KeyManagementService client on this session's channel.
    pub fn kms(&self) -> KeyManagementServiceClient<tonic::transport::Channel> {
        KeyManagementServiceClient::new(self.channel.clone())
    }

    /// An AdminService client on this session's channel.
    pub fn admin(&self) -> AdminServiceClient<tonic::transport::Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// A SecurityTokenService client on this session's channel.
    pub fn sts(&self) -> SecurityTokenServiceClient<tonic::transport::Channel> {
        SecurityTokenServiceClient::new(self.channel.clone())
    }

    /// A request for `/p11kms.v1.<service>/<method>`, signed when using access keys.
    pub fn req<T: prost::Message>(&self, service: &str, method: &str, msg: T) -> tonic::Request<T> {
        match &self.signer {
            Some(s) => s.sign(msg, &format!("/p11kms.v1.{service}/{method}")),
            None => tonic::Request::new(msg),
        }
    }

    /// A KeyManagementService request for `method`.
    pub fn k<T: prost::Message>(&self, method: &str, msg: T) -> tonic::Request<T> {
        self.req("KeyManagementService", method, msg)
    }
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
