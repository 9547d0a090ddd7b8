//! Pure policy engine: AWS IAM / KMS policy documents, grants and the KMS authorization
//! algorithm (reference spec, section 3).
//!
//! * [`model`]: parsed document types; [`parse`]: JSON -> model with validation;
//! * [`compile`]: matcher-ready form, built once per policy version;
//! * [`conditions`]: condition operators; [`context`]: the request ([`RequestContext`]);
//! * [`eval`]: the decision algorithm ([`evaluate`]) with a trace of deciding statements;
//! * [`cases`]: loader / runner for the shared test-vector format (`p11kms policy eval FILE`).
//!
//! No I/O, no async, no dependency on the rest of the crate. A [`Policy`] is immutable,
//! `Send + Sync`, and meant to be shared behind an `Arc`.

#[cfg(feature = "bench")]
pub mod bench_scenario;
pub mod cases;
pub(crate) mod compile;
pub mod conditions;
pub mod context;
pub mod eval;
pub mod model;
pub mod parse;

#[cfg(test)]
mod tests;

pub use context::RequestContext;
pub use eval::{
    evaluate, is_cross_account_op, is_iam_only_op, lockout_safety_check, DecidingStatement,
    Decision, DecisionReason, EvalInput, GrantConstraintsView, GrantView, NamedPolicy, PolicyType,
};
pub use model::{Effect, PolicyDocument};

/// Where a policy is attached; decides whether `Principal` is required or forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Key policy (resource-based): every statement needs `Principal` / `NotPrincipal`.
    Key,
    /// Identity policy (user, group, role).
    Identity,
    /// Account guardrail (SCP-like).
    Guardrail,
    /// Permission boundary.
    PermissionBoundary,
    /// Session policy.
    Session,
}

impl PolicyKind {
    /// Human name used in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            PolicyKind::Key => "key",
            PolicyKind::Identity => "identity",
            PolicyKind::Guardrail => "guardrail",
            PolicyKind::PermissionBoundary => "permission boundary",
            PolicyKind::Session => "session",
        }
    }
}

/// Maximum key policy size in bytes.
pub const KEY_POLICY_SIZE_LIMIT: usize = 32_768;

/// Policy errors. `Display` is the message to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// MalformedPolicyDocumentException; the message names the faulty element.
    #[error("{0}")]
    Malformed(String),
    /// LimitExceededException: the key policy is too large.
    #[error("The key policy is {size} bytes; the limit is {limit} bytes.")]
    TooLarge {
        /// Size of the document in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// Checks the 32 KB key-policy size limit.
pub fn check_key_policy_size(text: &str) -> Result<(), PolicyError> {
    if text.len() > KEY_POLICY_SIZE_LIMIT {
        Err(PolicyError::TooLarge {
            size: text.len(),
            limit: KEY_POLICY_SIZE_LIMIT,
        })
    } else {
        Ok(())
    }
}

/// The default key policy attached by CreateKey without `Policy` (spec 3.3), as compact JSON.
/// Arguments in ARN order: partition, then account.
pub fn default_key_policy(partition: &str, account: &str) -> String {
    format!(
        concat!(
            r#"{{"Version":"2012-10-17","Id":"key-default-1","Statement":[{{"Sid":"Enable IAM User Permissions","#,
            r#""Effect":"Allow","Principal":{{"AWS":"arn:{}:iam::{}:root"}},"Action":"kms:*","Resource":"*"}}]}}"#
        ),
        partition, account
    )
}

/// A parsed, validated and compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    kind: PolicyKind,
    document: PolicyDocument,
    pub(crate) compiled: compile::Compiled,
}

impl Policy {
    /// Parses and compiles policy text. For [`PolicyKind::Key`] the size limit is checked too.
    pub fn parse(text: &str, kind: PolicyKind) -> Result<Policy, PolicyError> {
        if kind == PolicyKind::Key {
            check_key_policy_size(text)?;
        }
        let document = parse::parse_text(text, kind)?;
        Self::from_document(document, kind)
    }

    /// Parses and compiles an already-decoded JSON value (no size check).
    pub fn from_value(v: &serde_json::Value, kind: PolicyKind) -> Result<Policy, PolicyError> {
        let document = parse::parse_value(v, kind)?;
        Self::from_document(document, kind)
    }

    fn from_document(document: PolicyDocument, kind: PolicyKind) -> Result<Policy, PolicyError> {
        let compiled = compile::compile(&document)?;
        Ok(Policy {
            kind,
            document,
            compiled,
        })
    }

    /// Where the policy is attached.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The parsed document.
    pub fn document(&self) -> &PolicyDocument {
        &self.document
    }

    /// Number of statements.
    pub fn statement_count(&self) -> usize {
        self.compiled.statements.len()
    }
}

#[cfg(test)]
mod static_checks {
    use super::Policy;
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn policy_is_send_sync() {
        assert_send_sync::<Policy>();
    }
}
