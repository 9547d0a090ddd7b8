//! The gRPC client the CLI's client commands use: endpoint and TLS files from flags, the
//! environment, or a client config file (the dev set-up writes one).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pb::key_management_service_client::KeyManagementServiceClient;

/// Where and how to reach a daemon.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `https://host:port`.
    pub endpoint: Option<String>,
    /// PEM CA bundle that the server certificate chains to.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate.
    pub client_cert: Option<PathBuf>,
    /// PEM client private key.
    pub client_key: Option<PathBuf>,
    /// The name to verify in the server certificate (default: the endpoint's host).
    pub tls_domain: Option<String>,
}

/// Why the client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client config: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ClientConfig {
    /// Reads a client config file; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<ClientConfig, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: ClientConfig = toml::from_str(&text)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.ca_cert, &mut cfg.client_cert, &mut cfg.client_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Values set in `other` win over values in `self`.
    pub fn overlay(self, other: ClientConfig) -> ClientConfig {
        ClientConfig {
            endpoint: other.endpoint.or(self.endpoint),
            ca_cert: other.ca_cert.or(self.ca_cert),
            client_cert: other.client_cert.or(self.client_cert),
            client_key: other.client_key.or(self.client_key),
            tls_domain: other.tls_domain.or(self.tls_domain),
        }
    }

    /// Connects with mutual TLS.
    pub async fn connect(&self) -> Result<KeyManagementServiceClient<Channel>, ClientError> {
        let endpoint = self.endpoint.clone().ok_or_else(|| {
            ClientError::Config("no endpoint (--endpoint or P11KMS_ENDPOINT)".into())
        })?;
        let read = |p: &Option<PathBuf>, what: &str| -> Result<Vec<u8>, ClientError> {
            let p = p
                .as_ref()
                .ok_or_else(|| ClientError::Config(format!("no {what} configured")))?;
            std::fs::read(p).map_err(|source| ClientError::Read {
                path: p.clone(),
                source,
            })
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(
            &self.ca_cert,
            "CA certificate",
        )?));
        if self.client_cert.is_some() || self.client_key.is_some() {
            tls = tls.identity(Identity::from_pem(
                read(&self.client_cert, "client certificate")?,
                read(&self.client_key, "client key")?,
            ));
        }
        if let Some(d) = &self.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        let channel = Endpoint::from_shared(endpoint)
            .map_err(|e| ClientError::Config(format!("endpoint: {e}")))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(KeyManagementServiceClient::new(channel))
    }
}
