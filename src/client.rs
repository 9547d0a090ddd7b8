//! The gRPC client the CLI's client commands use: endpoint and TLS files from flags, the
//! environment, or a client config file (the dev set-up writes one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::identity::sigv4::{self, SignableRequest, SigningParams};
use crate::pb::key_management_service_client::KeyManagementServiceClient;
use crate::redact::redacted_debug;

/// Access-key credentials for SigV4: long-term keys, or AssumeRole credentials with their
/// session token. `Debug` never prints the secret or the token.
#[derive(Clone)]
pub struct AccessKeyCredentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

redacted_debug!(AccessKeyCredentials { access_key_id, .. });

/// Signs gRPC requests with AWS Signature V4 as the daemon verifies it: method POST, the
/// gRPC method path, headers `host` (the `:authority`) and `x-amz-date` (plus
/// `x-amz-security-token` for sessions), and the SHA-256 of the encoded request message.
#[derive(Debug, Clone)]
pub struct Signer {
    pub credentials: AccessKeyCredentials,
    /// The region the signature is scoped to.
    pub region: String,
    /// `host:port` exactly as the channel sends it in `:authority`.
    pub authority: String,
}

impl Signer {
    /// Signs `msg` for `path` (e.g. `/p11kms.v1.KeyManagementService/Encrypt`) now.
    pub fn sign<T: prost::Message>(&self, msg: T, path: &str) -> tonic::Request<T> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.sign_at(msg, path, now)
    }

    /// Signs `msg` for `path` as if at `unix_secs` (tests of clock skew use it).
    pub fn sign_at<T: prost::Message>(
        &self,
        msg: T,
        path: &str,
        unix_secs: i64,
    ) -> tonic::Request<T> {
        let service = if path.starts_with("/p11kms.v1.SecurityTokenService/") {
            "sts"
        } else {
            "kms"
        };
        let amz_date = sigv4::format_amz_date(unix_secs);
        let payload = sigv4::sha256_hex(&msg.encode_to_vec());
        let mut headers = vec![
            ("host".to_string(), self.authority.clone()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(t) = &self.credentials.session_token {
            headers.push(("x-amz-security-token".to_string(), t.to_string()));
        }
        let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let authorization = sigv4::authorization_header(
            &SignableRequest {
                method: "POST",
                path,
                query: "",
                headers: &headers,
                payload_sha256_hex: &payload,
            },
            &signed,
            &SigningParams {
                access_key_id: &self.credentials.access_key_id,
                secret_access_key: &self.credentials.secret_access_key,
                region: &self.region,
                service,
                amz_date: &amz_date,
            },
        );
        let mut req = tonic::Request::new(msg);
        let md = req.metadata_mut();
        for (k, v) in headers
            .iter()
            .skip(1)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("authorization", authorization.as_str())])
        {
            if let Ok(v) = MetadataValue::try_from(v) {
                if let Ok(k) = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()) {
                    md.insert(k, v);
                }
            }
        }
        req
    }
}

/// A named set of connection settings in a client config file (`[profiles.NAME]`).
pub type Profiles = BTreeMap<String, ClientConfig>;

/// Where and how to reach a daemon, and who to be.
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
    /// SigV4 access key id (instead of, or besides, a client certificate).
    pub access_key_id: Option<String>,
    /// File holding the secret access key (never the key itself in the config).
    pub secret_access_key_file: Option<PathBuf>,
    /// File holding a session token from AssumeRole.
    pub session_token_file: Option<PathBuf>,
    /// Region for SigV4 (default us-east-1).
    pub region: Option<String>,
    /// Named profiles; `--profile NAME` overlays one on the top-level settings.
    #[serde(default)]
    pub profiles: Profiles,
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
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        cfg.resolve(&base);
        for p in cfg.profiles.values_mut() {
            p.resolve(&base);
        }
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.ca_cert,
            &mut self.client_cert,
            &mut self.client_key,
            &mut self.secret_access_key_file,
            &mut self.session_token_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The settings with profile `name` overlaid; an unknown profile is an error.
    pub fn with_profile(self, name: &str) -> Result<ClientConfig, ClientError> {
        let p = self
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| ClientError::Config(format!("no profile named {name:?}")))?;
        Ok(self.overlay(p))
    }

    /// Access-key credentials, if configured: from the config's files, else from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    pub fn credentials(&self) -> Result<Option<AccessKeyCredentials>, ClientError> {
        let read = |p: &PathBuf| -> Result<Zeroizing<String>, ClientError> {
            let text =
                Zeroizing::new(
                    std::fs::read_to_string(p).map_err(|source| ClientError::Read {
                        path: p.clone(),
                        source,
                    })?,
                );
            Ok(Zeroizing::new(text.trim().to_string()))
        };
        if let Some(id) = &self.access_key_id {
            let secret = self.secret_access_key_file.as_ref().ok_or_else(|| {
                ClientError::Config("access_key_id needs secret_access_key_file".into())
            })?;
            return Ok(Some(AccessKeyCredentials {
                access_key_id: id.clone(),
                secret_access_key: read(secret)?,
                session_token: self.session_token_file.as_ref().map(read).transpose()?,
            }));
        }
        match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(secret)) if !id.is_empty() => Ok(Some(AccessKeyCredentials {
                access_key_id: id,
                secret_access_key: Zeroizing::new(secret),
                session_token: std::env::var("AWS_SESSION_TOKEN").ok().map(Zeroizing::new),
            })),
            _ => Ok(None),
        }
    }

    /// A signer for SigV4 callers (`None` when the config uses certificates only).
    pub fn signer(&self) -> Result<Option<Signer>, ClientError> {
        let Some(credentials) = self.credentials()? else {
            return Ok(None);
        };
        let endpoint = self
            .endpoint
            .as_deref()
            .ok_or_else(|| ClientError::Config("no endpoint".into()))?;
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| ClientError::Config(format!("endpoint: {e}")))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| ClientError::Config("endpoint has no host".into()))?;
        Ok(Some(Signer {
            credentials,
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            authority,
        }))
    }

    /// Values set in `other` win over values in `self`.
    pub fn overlay(self, other: ClientConfig) -> ClientConfig {
        ClientConfig {
            endpoint: other.endpoint.or(self.endpoint),
            ca_cert: other.ca_cert.or(self.ca_cert),
            client_cert: other.client_cert.or(self.client_cert),
            client_key: other.client_key.or(self.client_key),
            tls_domain: other.tls_domain.or(self.tls_domain),
            access_key_id: other.access_key_id.or(self.access_key_id),
            secret_access_key_file: other.secret_access_key_file.or(self.secret_access_key_file),
            session_token_file: other.session_token_file.or(self.session_token_file),
            region: other.region.or(self.region),
            profiles: self.profiles,
        }
    }

    /// Connects and returns the channel (for any of the daemon's services).
    pub async fn channel(&self) -> Result<Channel, ClientError> {
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
        Ok(Endpoint::from_shared(endpoint)
            .map_err(|e| ClientError::Config(format!("endpoint: {e}")))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }

    /// Connects to the KMS service.
    pub async fn connect(&self) -> Result<KeyManagementServiceClient<Channel>, ClientError> {
        Ok(KeyManagementServiceClient::new(self.channel().await?))
    }
}
