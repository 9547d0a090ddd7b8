//! Authentication: turns what a door saw (a verified client certificate, or a SigV4-signed
//! request) into a [`Caller`] whose principal is resolved against the identity directory.
//!
//! Doors call [`Authenticator`]; they never look at credentials themselves.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use super::sigv4::{self, SigV4Error, SignableRequest};
use super::{AuthMethod, Caller, CertBinding, CertificateDirectory, DirectoryHandle, SessionStore};
use crate::identity::sessions::SessionError;
use zeroize::Zeroizing;

/// Why a request could not be authenticated, named as AWS names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// Unknown access key, unknown or mismatched session token, unbound certificate.
    #[error("{0}")]
    UnrecognizedClient(String),
    /// The Authorization header is malformed.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The signature does not match, or the request is outside the allowed clock skew.
    #[error("{0}")]
    InvalidSignature(String),
    /// The session's temporary credentials have expired.
    #[error("The security token included in the request is expired")]
    ExpiredToken,
}

impl AuthError {
    /// The AWS exception name.
    pub fn aws_name(&self) -> &'static str {
        match self {
            AuthError::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            AuthError::UnrecognizedClient(_) => "UnrecognizedClientException",
            AuthError::IncompleteSignature(_) => "IncompleteSignatureException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
            AuthError::ExpiredToken => "ExpiredTokenException",
        }
    }
}

impl From<SigV4Error> for AuthError {
    fn from(e: SigV4Error) -> Self {
        match e {
            SigV4Error::MissingAuthenticationToken => AuthError::MissingAuthenticationToken,
            SigV4Error::IncompleteSignature(m) => AuthError::IncompleteSignature(m),
            SigV4Error::InvalidSignature(m) | SigV4Error::SignatureExpired(m) => {
                AuthError::InvalidSignature(m)
            }
            SigV4Error::UnrecognizedClient => AuthError::UnrecognizedClient(
                "The security token included in the request is invalid.".into(),
            ),
        }
    }
}

/// The access key id a request claims to be signed with (from its SigV4 `Authorization`
/// header), whether or not the signature holds: a refused request names it in its audit
/// record, so that doors never parse the header themselves.
pub fn claimed_access_key_id(headers: &[(String, String)]) -> Option<String> {
    let auth = sigv4::header_value(headers, "authorization")?;
    sigv4::parse_authorization(auth)
        .ok()
        .map(|a| a.access_key_id)
}

/// Where a SigV4 request came from and what it signed.
#[derive(Debug, Clone, Copy)]
pub struct SigV4Input<'a> {
    /// The request as signed.
    pub request: SignableRequest<'a>,
    /// The signing service expected (`kms`, `sts`).
    pub service: &'a str,
    /// Allowed clock skew, seconds.
    pub max_skew_secs: i64,
    /// Peer address.
    pub source_ip: Option<IpAddr>,
    /// Whether the request came over TLS.
    pub secure_transport: bool,
}

/// Authenticates requests against the directory, the session store and the certificate
/// bindings (from config and from the credentials file).
pub struct Authenticator {
    directory: Arc<DirectoryHandle>,
    sessions: Arc<SessionStore>,
    config_bindings: Vec<CertBinding>,
    certs: RwLock<Arc<CertificateDirectory>>,
    regions: Vec<String>,
    /// Signing keys derived for earlier requests (per access key, date, region, service).
    keys: sigv4::SigningKeyCache,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over a directory and session store. `config_bindings` are the
    /// `[[identity.certificate]]` entries of the config file; `region` is the only region a
    /// signature may be scoped to.
    pub fn new(
        directory: Arc<DirectoryHandle>,
        sessions: Arc<SessionStore>,
        config_bindings: Vec<CertBinding>,
        region: &str,
    ) -> Authenticator {
        let a = Authenticator {
            directory,
            sessions,
            config_bindings,
            certs: RwLock::new(Arc::new(CertificateDirectory::default())),
            regions: vec![region.to_string()],
            keys: sigv4::SigningKeyCache::new(),
        };
        a.refresh_certificates();
        a
    }

    /// Rebuilds the certificate bindings after the directory was reloaded.
    pub fn refresh_certificates(&self) {
        let dir = self.directory.current();
        let mut bindings = self.config_bindings.clone();
        bindings.extend(dir.cert_bindings().iter().cloned());
        let fresh = Arc::new(CertificateDirectory::new(bindings));
        *self.certs.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    fn resolve(
        &self,
        principal_arn: &str,
        method: AuthMethod,
        source_ip: Option<IpAddr>,
        secure: bool,
    ) -> Result<Caller, AuthError> {
        let principal = self
            .directory
            .current()
            .principal(principal_arn)
            .ok_or_else(|| {
                tracing::warn!(
                    principal = principal_arn,
                    "credentials map to a principal the directory does not know"
                );
                AuthError::UnrecognizedClient(
                    "The credentials map to a principal that is not in the identity directory."
                        .into(),
                )
            })?;
        Ok(Caller::new(principal, method, source_ip, secure))
    }

    /// What a request to `input`'s service is verified against, with the key cache.
    fn policy<'a>(
        &'a self,
        input: &SigV4Input<'a>,
        regions: &'a [String],
        now_ms: i64,
    ) -> sigv4::VerifyPolicy<'a> {
        sigv4::VerifyPolicy {
            expected_service: input.service,
            allowed_regions: regions,
            now_unix_secs: now_ms.div_euclid(1000),
            max_skew_secs: input.max_skew_secs,
            keys: Some(&self.keys),
        }
    }

    /// A caller from a verified client certificate (leaf, DER).
    pub fn from_certificate(
        &self,
        leaf_der: &[u8],
        source_ip: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner()).clone();
        let principal = certs.principal_for(leaf_der).ok_or_else(|| {
            AuthError::UnrecognizedClient(
                "The client certificate is not bound to any principal.".into(),
            )
        })?;
        self.resolve(&principal, AuthMethod::MutualTls, source_ip, true)
    }

    /// A caller from a request signed with a credential its door holds itself (an XKS key
    /// store's, from `lookup_secret`), verified by the one SigV4 verifier for `regions`, and
    /// run as `principal_arn` of the directory.
    pub fn from_door_credential(
        &self,
        input: &SigV4Input<'_>,
        regions: &[String],
        principal_arn: &str,
        lookup_secret: impl FnOnce(&str) -> Option<Zeroizing<String>>,
        now_ms: i64,
    ) -> Result<Caller, AuthError> {
        let verified = sigv4::verify_with(
            &input.request,
            &self.policy(input, regions, now_ms),
            lookup_secret,
        )?;
        let mut caller = self.resolve(
            principal_arn,
            AuthMethod::SigV4,
            input.source_ip,
            input.secure_transport,
        )?;
        caller.access_key_id = Some(verified.access_key_id);
        Ok(caller)
    }

    /// A caller from a SigV4-signed request: a long-term access key, or AssumeRole
    /// credentials with their session token.
    pub async fn from_sigv4(
        &self,
        input: &SigV4Input<'_>,
        now_ms: i64,
    ) -> Result<Caller, AuthError> {
        let headers = input.request.headers;
        let auth = sigv4::header_value(headers, "authorization")
            .ok_or(AuthError::MissingAuthenticationToken)?;
        let parsed = sigv4::parse_authorization(auth)?;
        let token = sigv4::header_value(headers, "x-amz-security-token");
        let (secret, principal_arn, method, session) = match token {
            Some(token) => {
                let s = self
                    .sessions
                    .lookup_shared(&parsed.access_key_id, token, now_ms)
                    .await
                    .map_err(|e| match e {
                        SessionError::Expired => AuthError::ExpiredToken,
                        _ => AuthError::UnrecognizedClient(
                            "The security token included in the request is invalid.".into(),
                        ),
                    })?;
                (
                    s.secret_access_key.clone(),
                    s.session_arn.clone(),
                    AuthMethod::SessionToken,
                    Some(s),
                )
            }
            None => {
                let dir = self.directory.current();
                let key = dir.access_key(&parsed.access_key_id).ok_or_else(|| {
                    AuthError::UnrecognizedClient(
                        "The security token included in the request is invalid.".into(),
                    )
                })?;
                (
                    key.secret_access_key.clone(),
                    key.principal_arn.clone(),
                    AuthMethod::SigV4,
                    None,
                )
            }
        };
        let verified = sigv4::verify_parsed(
            &input.request,
            parsed,
            &self.policy(input, &self.regions, now_ms),
            |_| Some(secret),
        )?;
        let mut caller = self.resolve(
            &principal_arn,
            method,
            input.source_ip,
            input.secure_transport,
        )?;
        caller.access_key_id = Some(verified.access_key_id);
        caller.session = session;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> Vec<(String, String)> {
        vec![
            ("host".into(), "kms.example".into()),
            ("Authorization".into(), authorization.into()),
        ]
    }

    #[test]
    fn the_claimed_access_key_id_is_read_from_a_well_formed_header_only() {
        let signature = "ab".repeat(32);
        let good = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={signature}"
        );
        assert_eq!(
            claimed_access_key_id(&headers(&good)).as_deref(),
            Some("AKIDEXAMPLE")
        );
        assert_eq!(claimed_access_key_id(&headers("Bearer abc")), None);
        // A claimed key with a malformed signature names no key: the header is not SigV4.
        let short = good.replace(&signature, "abcd");
        assert_eq!(claimed_access_key_id(&headers(&short)), None);
        assert_eq!(
            claimed_access_key_id(&[("host".into(), "kms.example".into())]),
            None
        );
    }
}
