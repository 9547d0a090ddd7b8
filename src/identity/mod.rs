//! Who is calling: ARNs, principals, the [`Caller`] that authentication yields, and the
//! bindings from client certificates to principals.
//!
//! [`directory`] holds accounts with their users, groups, roles and policies (loaded from
//! `aws iam get-account-authorization-details` JSON) and credentials; [`sessions`] holds
//! AssumeRole temporary credentials; [`sigv4`] verifies and makes AWS Signature V4.

pub mod arn;
pub mod auth;
pub mod certs;
pub mod directory;
pub mod sessions;
pub mod sigv4;

use std::net::IpAddr;
use std::sync::Arc;

pub use arn::{Arn, ArnError};
pub use certs::{CertBinding, CertMatcher, CertificateDirectory};
pub use directory::{Directory, DirectoryFiles, DirectoryHandle, ResolvedPrincipal};
pub use sessions::{SessionEntry, SessionPolicy, SessionStore, SessionVault};

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

/// An authenticated caller, as the engine sees it. Doors build one per request after
/// authentication; the principal is resolved against the identity directory.
#[derive(Debug, Clone)]
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
    /// The access key id used to sign, for SigV4 and session callers (never the secret).
    pub access_key_id: Option<String>,
    /// The principal as the directory knows it: policies, tags, type.
    pub principal: ResolvedPrincipal,
    /// The AssumeRole session, for temporary credentials.
    pub session: Option<Arc<SessionEntry>>,
}

impl Caller {
    /// A caller for a resolved principal.
    pub fn new(
        principal: ResolvedPrincipal,
        method: AuthMethod,
        source_ip: Option<IpAddr>,
        secure_transport: bool,
    ) -> Caller {
        Caller {
            principal_arn: principal.principal_arn().to_string(),
            account: principal.account().to_string(),
            method,
            source_ip,
            secure_transport,
            access_key_id: None,
            principal,
            session: None,
        }
    }

    /// For an assumed-role session: the role's ARN.
    pub fn role_arn(&self) -> Option<&str> {
        self.principal.role_arn()
    }

    /// Session tags (empty unless the caller uses AssumeRole credentials with tags).
    pub fn session_tags(&self) -> &[(String, String)] {
        self.session
            .as_ref()
            .map(|s| s.tags.as_slice())
            .unwrap_or(&[])
    }
}
