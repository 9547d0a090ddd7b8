//! Who is calling: ARNs, principals, the [`Caller`] that authentication yields, and the
//! bindings from client certificates to principals.
//!
//! The identity directory (users, groups, roles, policies, access keys, AssumeRole sessions)
//! grows here; today a principal comes from an mTLS client certificate mapped in config.

pub mod arn;
pub mod certs;

use std::net::IpAddr;

pub use arn::{Arn, ArnError};
pub use certs::{CertBinding, CertMatcher, CertificateDirectory};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A client certificate on the TLS connection.
    MutualTls,
    /// A long-term access key with a SigV4 signature.
    SigV4,
    /// Temporary credentials from AssumeRole.
    SessionToken,
    /// In-process calls made by the daemon itself (sweepers, `check`).
    Internal,
}

impl AuthMethod {
    /// A short stable name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::MutualTls => "mtls",
            AuthMethod::SigV4 => "sigv4",
            AuthMethod::SessionToken => "session",
            AuthMethod::Internal => "internal",
        }
    }
}

/// An authenticated caller, as the engine sees it. Doors build one per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal ARN (`arn:aws:iam::111122223333:user/alice`, an assumed-role session ARN,
    /// or an account root).
    pub principal_arn: String,
    /// The principal's 12-digit account id.
    pub account: String,
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// The peer address, when the door knows it.
    pub source_ip: Option<IpAddr>,
    /// Whether the request arrived over TLS.
    pub secure_transport: bool,
}

impl Caller {
    /// Builds a caller from a principal ARN; the account is taken from the ARN.
    pub fn from_principal(
        principal_arn: &str,
        method: AuthMethod,
        source_ip: Option<IpAddr>,
        secure_transport: bool,
    ) -> Result<Caller, ArnError> {
        let arn = Arn::parse(principal_arn)?;
        if arn.account.is_empty() {
            return Err(ArnError::Malformed("principal ARN has no account".into()));
        }
        Ok(Caller {
            principal_arn: principal_arn.to_string(),
            account: arn.account.to_string(),
            method,
            source_ip,
            secure_transport,
        })
    }
}
