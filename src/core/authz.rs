//! The authorization seam. Every operation calls [`Authorizer::authorize`] after resolving
//! the key and before touching the HSM or the store; only an allow proceeds.

use std::collections::BTreeMap;

use crate::identity::Caller;
use crate::store::KeyRecord;

/// What is being asked, in IAM terms.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The IAM action, `kms:Encrypt` and so on.
    pub action: &'static str,
    /// The resource ARN: the key ARN, an alias ARN, or `*` for account-level actions.
    pub resource: &'a str,
    /// The key the request acts on, when there is one.
    pub key: Option<&'a KeyRecord>,
    /// The request's encryption context, for the context condition keys.
    pub encryption_context: Option<&'a BTreeMap<String, String>>,
    /// The alias named in the request, when the key was given by alias (`kms:RequestAlias`).
    pub request_alias: Option<&'a str>,
}

/// An authorizer's answer, with the reason an operator (and the audit trail) sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The AWS-style phrase that completes "... because <reason>" on a denial, or a short
    /// description of what allowed it. Never contains policy text.
    pub reason: String,
}

/// Decides whether a caller may perform an action on a resource.
pub trait Authorizer: Send + Sync + 'static {
    /// Decides one request. Must be pure and fast: no I/O.
    fn authorize(&self, caller: &Caller, req: &AuthzRequest<'_>) -> AuthzDecision;
}

/// The foundation's authorizer: principals may act on keys of their own account only, and
/// account-level actions (CreateKey, ListKeys, ...) act in the caller's own account.
#[derive(Debug, Default, Clone, Copy)]
pub struct SameAccountAuthorizer;

impl Authorizer for SameAccountAuthorizer {
    fn authorize(&self, caller: &Caller, req: &AuthzRequest<'_>) -> AuthzDecision {
        match req.key {
            Some(key) if key.account != caller.account => AuthzDecision {
                allowed: false,
                reason: format!("no resource-based policy allows the {} action", req.action),
            },
            Some(_) => AuthzDecision {
                allowed: true,
                reason: "principal is in the key's account".into(),
            },
            None => AuthzDecision {
                allowed: true,
                reason: "account-level action in the caller's own account".into(),
            },
        }
    }
}
