//! The outcome of a decision and its explanation: which statements decided, which policy
//! type denied, and the sentences (`summary`, the AWS AccessDenied message) built from them.

use std::fmt;

use super::NamedPolicy;
use crate::policy::context::RequestContext;
use crate::policy::model::Effect;

/// Why the decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// A Deny statement matched.
    ExplicitDeny,
    /// Nothing allowed (or a required side did not allow).
    ImplicitDeny,
    /// Allowed.
    Allowed,
}

/// The kind of policy a deciding statement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    /// The key policy (resource-based).
    KeyPolicy,
    /// An identity-based policy.
    IdentityPolicy,
    /// Account guardrail ("service control policy").
    Guardrail,
    /// Permission boundary.
    PermissionBoundary,
    /// Session policy.
    SessionPolicy,
    /// A grant.
    Grant,
    /// Gate 0: the operation cannot be performed on another account's key.
    CrossAccountScope,
}

impl PolicyType {
    /// The AWS phrase for this policy type ("resource-based policy", ...).
    pub fn aws_phrase(self) -> &'static str {
        match self {
            PolicyType::KeyPolicy | PolicyType::CrossAccountScope | PolicyType::Grant => {
                "resource-based policy"
            }
            PolicyType::IdentityPolicy => "identity-based policy",
            PolicyType::Guardrail => "service control policy",
            PolicyType::PermissionBoundary => "permissions boundary",
            PolicyType::SessionPolicy => "session policy",
        }
    }
}

/// `a` or `an` before `phrase`.
fn article(phrase: &str) -> &'static str {
    if phrase.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl fmt::Display for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyType::KeyPolicy => "key policy",
            PolicyType::IdentityPolicy => "identity policy",
            PolicyType::Guardrail => "guardrail",
            PolicyType::PermissionBoundary => "permission boundary",
            PolicyType::SessionPolicy => "session policy",
            PolicyType::Grant => "grant",
            PolicyType::CrossAccountScope => "cross-account scope",
        })
    }
}

/// A statement (or grant) that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidingStatement {
    /// Where it came from.
    pub policy_type: PolicyType,
    /// The policy's name (grant id for grants).
    pub policy_name: String,
    /// Sid, else `Statement[i]`; the grant id for grants.
    pub statement: String,
}

/// Outcome of [`evaluate`](super::evaluate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or Deny.
    pub effect: Effect,
    /// Explicit / implicit deny, or allowed.
    pub reason: DecisionReason,
    /// Deciding statements: the matching Deny statements, or the Allow statements (and grant)
    /// that together allowed. Empty for most implicit denies.
    pub deciding: Vec<DecidingStatement>,
    /// For a deny: the policy type that denied (explicitly) or failed to allow.
    pub denying_policy_type: Option<PolicyType>,
    /// The evaluated action (for messages).
    pub action: String,
}

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allow(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// Short reason without policy text, e.g. `no resource-based policy allows the kms:Decrypt
    /// action` or `explicit deny in an identity-based policy`.
    pub fn summary(&self) -> String {
        match (self.reason, self.denying_policy_type) {
            (DecisionReason::Allowed, _) => {
                let parts: Vec<String> = self
                    .deciding
                    .iter()
                    .map(|d| {
                        format!(
                            "{} '{}' statement '{}'",
                            d.policy_type, d.policy_name, d.statement
                        )
                    })
                    .collect();
                format!("allowed by {}", parts.join(" and "))
            }
            (DecisionReason::ExplicitDeny, t) => {
                let p = t.unwrap_or(PolicyType::KeyPolicy).aws_phrase();
                format!("explicit deny in {} {p}", article(p))
            }
            (DecisionReason::ImplicitDeny, t) => format!(
                "no {} allows the {} action",
                t.unwrap_or(PolicyType::KeyPolicy).aws_phrase(),
                self.action
            ),
        }
    }

    /// The AWS AccessDenied message: `User: <arn> is not authorized to perform: <action> on
    /// resource: <res> because no identity-based policy allows the <action> action`, or
    /// `... with an explicit deny in a resource-based policy`.
    pub fn aws_message(&self, principal_arn: &str, action: &str, resource: &str) -> String {
        let head = format!(
            "User: {principal_arn} is not authorized to perform: {action} on resource: {resource}"
        );
        let t = self.denying_policy_type.unwrap_or(PolicyType::KeyPolicy);
        match self.reason {
            DecisionReason::ExplicitDeny => {
                let p = t.aws_phrase();
                format!("{head} with an explicit deny in {} {p}", article(p))
            }
            DecisionReason::ImplicitDeny => format!(
                "{head} because no {} allows the {action} action",
                t.aws_phrase()
            ),
            DecisionReason::Allowed => self.summary(),
        }
    }
}

/// The deciding-statement entry for statement `idx` of `np`.
pub(super) fn label(
    policy_type: PolicyType,
    np: &NamedPolicy<'_>,
    idx: usize,
) -> DecidingStatement {
    DecidingStatement {
        policy_type,
        policy_name: np.name.to_string(),
        statement: np
            .policy
            .compiled
            .statements
            .get(idx)
            .map(|s| s.label.to_string())
            .unwrap_or_default(),
    }
}

/// A deny decision for `req` blamed on policy type `t`.
pub(super) fn deny(
    reason: DecisionReason,
    t: PolicyType,
    deciding: Vec<DecidingStatement>,
    req: &RequestContext,
) -> Decision {
    Decision {
        effect: Effect::Deny,
        reason,
        deciding,
        denying_policy_type: Some(t),
        action: req.action.clone(),
    }
}
