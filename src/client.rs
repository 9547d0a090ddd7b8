//! The gRPC client the CLI's client commands use: endpoints and TLS files from flags, the
//! environment, or a client config file (the dev set-up writes one).
//!
//! Several endpoints (the nodes of one cluster, `docs/operations.md`, "Several nodes") are
//! tried in order by [`Failover`]: an ordered failover over one channel per endpoint rather
//! than tonic's `Channel::balance_list`, because a balanced channel hides which node a call
//! went to (SigV4 signs the `:authority`, so the signer must know it), spreads calls that
//! should stay on one node, and retries nothing itself; the ordered list keeps the first
//! node preferred, names every endpoint when all fail, and leaves the decision whether a
//! call may be sent again to [`retry_safe`].

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
    /// `https://host:port`, or several separated by commas (tried in order, see
    /// [`Failover`]).
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
    #[error("connection: {}", transport_detail(.0))]
    Transport(#[from] tonic::transport::Error),
    /// Every endpoint was tried and none could be used; each with why.
    #[error("no endpoint could be reached: {}", list_failures(.0))]
    AllEndpointsFailed(Vec<EndpointFailure>),
}

/// One endpoint that could not be used, and why (for the failover report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    /// The endpoint as configured.
    pub endpoint: String,
    /// The connection error or the gRPC status, as printed.
    pub reason: String,
}

impl std::fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.endpoint, self.reason)
    }
}

fn list_failures(failures: &[EndpointFailure]) -> String {
    let parts: Vec<String> = failures.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// A transport error with its causes (tonic's own text is only "transport error").
pub fn transport_detail(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
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

    /// The endpoints in the order they are tried: `endpoint` split at commas, blanks and
    /// surrounding spaces dropped. One endpoint is a list of one.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoint
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The first endpoint (the one a single-endpoint config names).
    fn first_endpoint(&self) -> Result<String, ClientError> {
        self.endpoints().into_iter().next().ok_or_else(|| {
            ClientError::Config("no endpoint (--endpoint or P11KMS_ENDPOINT)".into())
        })
    }

    /// A signer for SigV4 callers of the first endpoint (`None` when the config uses
    /// certificates only).
    pub fn signer(&self) -> Result<Option<Signer>, ClientError> {
        self.signer_for(&self.first_endpoint()?)
    }

    /// A signer for SigV4 callers of `endpoint`: the signature covers its `host:port`.
    pub fn signer_for(&self, endpoint: &str) -> Result<Option<Signer>, ClientError> {
        let Some(credentials) = self.credentials()? else {
            return Ok(None);
        };
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

    /// Connects to the first endpoint that answers and returns the channel (for any of the
    /// daemon's services).
    pub async fn channel(&self) -> Result<Channel, ClientError> {
        Ok(Failover::new(self.clone())?.next_connected().await?.channel)
    }

    /// Connects to `endpoint` (TCP and TLS handshake done before this returns).
    pub async fn channel_to(&self, endpoint: &str) -> Result<Channel, ClientError> {
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
        Ok(Endpoint::from_shared(endpoint.to_string())
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

/// One endpoint connected: its channel and, for access-key callers, the signer for it.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The endpoint as configured.
    pub endpoint: String,
    /// The channel to it.
    pub channel: Channel,
    /// Signs for this endpoint's `host:port` (`None` for certificate callers).
    pub signer: Option<Signer>,
}

/// Ordered failover over the configured endpoints: [`Failover::next_connected`] connects to
/// the next endpoint that accepts a connection and remembers why each earlier one failed,
/// so that the error when none is left names every endpoint.
///
/// Moving on after a failed *connection* is always safe: nothing was sent. Moving on after
/// a call failed with `UNAVAILABLE` or a transport error (the request may have reached the
/// node) is the caller's decision, made by [`retry_safe`]; an application error (NOT_FOUND,
/// PERMISSION_DENIED, ...) is an answer and never fails over.
#[derive(Debug)]
pub struct Failover {
    cfg: ClientConfig,
    endpoints: Vec<String>,
    next: usize,
    failures: Vec<EndpointFailure>,
}

impl Failover {
    /// The endpoints of `cfg`, none tried yet; no endpoint configured is an error.
    pub fn new(cfg: ClientConfig) -> Result<Failover, ClientError> {
        cfg.first_endpoint()?;
        Ok(Failover {
            endpoints: cfg.endpoints(),
            cfg,
            next: 0,
            failures: Vec::new(),
        })
    }

    /// Connects to the next endpoint that accepts, recording each one that does not. A
    /// config problem (an unreadable CA file, a malformed endpoint) is returned at once:
    /// it is not the node's fault and the next node would fail the same way.
    pub async fn next_connected(&mut self) -> Result<Connected, ClientError> {
        while let Some(endpoint) = self.endpoints.get(self.next).cloned() {
            self.next += 1;
            let signer = self.cfg.signer_for(&endpoint)?;
            match self.cfg.channel_to(&endpoint).await {
                Ok(channel) => {
                    return Ok(Connected {
                        endpoint,
                        channel,
                        signer,
                    })
                }
                Err(ClientError::Transport(e)) => self.failures.push(EndpointFailure {
                    endpoint,
                    reason: transport_detail(&e),
                }),
                Err(other) => return Err(other),
            }
        }
        Err(ClientError::AllEndpointsFailed(self.failures.clone()))
    }

    /// Records that a call on `endpoint` failed with `reason` (before trying the next).
    pub fn record(&mut self, endpoint: &str, reason: String) {
        self.failures.push(EndpointFailure {
            endpoint: endpoint.to_string(),
            reason,
        });
    }

    /// How many endpoints are configured.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether an endpoint is left to fail over to.
    pub fn has_more(&self) -> bool {
        self.next < self.endpoints.len()
    }

    /// The endpoints that failed so far, in order.
    pub fn failures(&self) -> &[EndpointFailure] {
        &self.failures
    }
}

/// Whether a failed call's status means "this node could not be used" (failover) rather
/// than an answer: `UNAVAILABLE` (a transport error, a connection lost, or the node's HSM
/// not answering).
pub fn is_unavailable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// The calls the client sends again to the next endpoint after `UNAVAILABLE`, when the
/// request may already have been applied on the node that failed:
///
/// - reads (`Describe*`, `List*`, `Get*`, `ExplainAccess`): no effect at all;
/// - cryptographic calls (`Encrypt`, `Decrypt`, `ReEncrypt`, `GenerateDataKey*`,
///   `GenerateRandom`, `Sign`, `Verify`, `GenerateMac`, `VerifyMac`, `DeriveSharedSecret`):
///   no change of state; a second answer is as valid as the first (only the audit trail
///   may hold both);
/// - changes whose second application leaves the same state and the same answer
///   (`EnableKey`, `DisableKey`, `Enable/DisableKeyRotation`, `PutKeyPolicy`,
///   `TagResource`, `UntagResource`, `UpdateKeyDescription`).
///
/// Everything else is not retried after it may have been sent: `CreateKey` and
/// `CreateGrant` would make a second key or grant, `CreateAlias`, `DeleteAlias`,
/// `ScheduleKeyDeletion`, `CancelKeyDeletion`, `RetireGrant`, `RevokeGrant`,
/// `RotateKeyOnDemand`, the import and key store calls would answer an error (or act
/// twice) for a change that did happen, and `AssumeRole` would issue a second session.
pub fn retry_safe(method: &str) -> bool {
    RETRY_SAFE.contains(&method)
}

/// The method names [`retry_safe`] accepts.
const RETRY_SAFE: &[&str] = &[
    "DescribeKey",
    "ListKeys",
    "GetKeyLastUsage",
    "ListResourceTags",
    "ListAliases",
    "GetPublicKey",
    "GetKeyPolicy",
    "ListKeyPolicies",
    "ListGrants",
    "ListRetirableGrants",
    "GetKeyRotationStatus",
    "ListKeyRotations",
    "DescribeCustomKeyStores",
    "GetCallerIdentity",
    "ExplainAccess",
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateRandom",
    "Sign",
    "Verify",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "EnableKey",
    "DisableKey",
    "EnableKeyRotation",
    "DisableKeyRotation",
    "PutKeyPolicy",
    "TagResource",
    "UntagResource",
    "UpdateKeyDescription",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_at_commas_and_one_stays_one() {
        let cfg = |e: &str| ClientConfig {
            endpoint: Some(e.into()),
            ..Default::default()
        };
        assert_eq!(
            cfg("https://a:1").endpoints(),
            vec!["https://a:1".to_string()]
        );
        assert_eq!(
            cfg(" https://a:1 ,, https://b:2,").endpoints(),
            vec!["https://a:1".to_string(), "https://b:2".to_string()]
        );
        assert!(ClientConfig::default().endpoints().is_empty());
        assert!(matches!(
            Failover::new(cfg(" , ")),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn only_calls_safe_to_repeat_are_retried() {
        for m in [
            "Encrypt",
            "Decrypt",
            "DescribeKey",
            "DisableKey",
            "TagResource",
        ] {
            assert!(retry_safe(m), "{m}");
        }
        for m in [
            "CreateKey",
            "CreateGrant",
            "CreateAlias",
            "ScheduleKeyDeletion",
            "RotateKeyOnDemand",
            "AssumeRole",
        ] {
            assert!(!retry_safe(m), "{m}");
        }
    }

    #[test]
    fn the_error_when_all_fail_names_every_endpoint() {
        let e = ClientError::AllEndpointsFailed(vec![
            EndpointFailure {
                endpoint: "https://127.0.0.1:1".into(),
                reason: "connection refused".into(),
            },
            EndpointFailure {
                endpoint: "https://127.0.0.1:2".into(),
                reason: "UNAVAILABLE".into(),
            },
        ]);
        let text = e.to_string();
        assert!(
            text.contains("https://127.0.0.1:1 (connection refused)"),
            "{text}"
        );
        assert!(text.contains("https://127.0.0.1:2 (UNAVAILABLE)"), "{text}");
    }
}
