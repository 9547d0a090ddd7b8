//! The decision algorithm of spec section 3.2, with a trace of the deciding statements.
//!
//! Gate 0 (operation scope) -> gate 1 (explicit deny anywhere) -> gate 2 (guardrails must
//! allow) -> gate 3 (grants) -> gate 4 (key policy x IAM). Nothing here allocates per statement;
//! the only allocations are the decision's trace vector and its action string.
//!
//! - `matching`: statement matching (principal, action, resource, conditions; grants).
//! - `gates`: one function per gate over one decision in progress, and gate 4's combination.
//! - `decision`: the outcome and its explanation ([`Decision::summary`], the AWS message).

use std::collections::BTreeMap;

use super::context::RequestContext;
use super::{Policy, PolicyError};
use gates::Eval;

mod decision;
mod gates;
mod matching;

pub use decision::{DecidingStatement, Decision, DecisionReason, PolicyType};

/// A compiled policy with the name it is reported under.
#[derive(Debug, Clone, Copy)]
pub struct NamedPolicy<'a> {
    /// Name for traces (`default` for a key policy, the IAM policy name, ...).
    pub name: &'a str,
    /// The policy.
    pub policy: &'a Policy,
}

/// A grant on the key, as the evaluator needs it.
#[derive(Debug, Clone, Copy)]
pub struct GrantView<'a> {
    /// Grant id (reported as the deciding "statement").
    pub grant_id: &'a str,
    /// Grantee: account root / bare account id, user, role or assumed-role ARN.
    pub grantee_principal: &'a str,
    /// Grant operations without the `kms:` prefix (`Decrypt`, ...).
    pub operations: &'a [String],
    /// Encryption-context constraints.
    pub constraints: Option<GrantConstraintsView<'a>>,
}

/// Grant constraints on the request's encryption context.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantConstraintsView<'a> {
    /// The request EC must equal this map exactly.
    pub encryption_context_equals: Option<&'a BTreeMap<String, String>>,
    /// The request EC must contain every pair of this map.
    pub encryption_context_subset: Option<&'a BTreeMap<String, String>>,
}

/// Everything one decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    /// The key's account; `None` for IAM-only operations (CreateKey, ListKeys, ...).
    pub key_account: Option<&'a str>,
    /// The key policy; `None` for IAM-only operations.
    pub key_policy: Option<NamedPolicy<'a>>,
    /// Identity policies of the caller (user policies, group policies, role policies).
    pub identity_policies: &'a [NamedPolicy<'a>],
    /// SCP-like guardrails: every one must allow; any deny denies.
    pub guardrails: &'a [NamedPolicy<'a>],
    /// Permission boundaries of the caller (all must allow).
    pub permission_boundaries: &'a [NamedPolicy<'a>],
    /// Session policies of the caller's session (all must allow).
    pub session_policies: &'a [NamedPolicy<'a>],
    /// Grants on the key.
    pub grants: &'a [GrantView<'a>],
    /// Request encryption context, for grant constraints.
    pub encryption_context: &'a BTreeMap<String, String>,
    /// For an assumed-role caller: the role ARN (role principals match its sessions).
    pub role_arn: Option<&'a str>,
    /// The request.
    pub request: &'a RequestContext,
}

const CROSS_ACCOUNT_OPS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "Sign",
    "Verify",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
    "GetPublicKey",
    "DescribeKey",
    "CreateGrant",
    "ListGrants",
    "RetireGrant",
    "RevokeGrant",
    "GetKeyRotationStatus",
];

const IAM_ONLY_OPS: &[&str] = &[
    "CreateKey",
    "ListKeys",
    "ListAliases",
    "GenerateRandom",
    "ListRetirableGrants",
];

/// The operation name of `action` without its `kms:` prefix.
fn op_name(action: &str) -> &str {
    match action.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("kms:") => action.get(4..).unwrap_or(""),
        _ => action,
    }
}

/// Whether `action` (`kms:Decrypt` or `Decrypt`) may be performed on another account's key.
pub fn is_cross_account_op(action: &str) -> bool {
    // Role trust is evaluated with the same algorithm (trust policy as the resource policy),
    // and assuming a role in another account is the point of cross-account roles.
    if action.eq_ignore_ascii_case("sts:AssumeRole") {
        return true;
    }
    let op = op_name(action);
    CROSS_ACCOUNT_OPS.iter().any(|o| o.eq_ignore_ascii_case(op))
}

/// Whether `action` is authorized by IAM policies alone (no key policy): CreateKey, ListKeys,
/// ListAliases, GenerateRandom, ListRetirableGrants and the custom key store operations.
pub fn is_iam_only_op(action: &str) -> bool {
    let op = op_name(action);
    IAM_ONLY_OPS.iter().any(|o| o.eq_ignore_ascii_case(op))
        || op.to_ascii_lowercase().contains("customkeystore")
}

/// Decides a request (spec 3.2): the first gate that decides wins.
pub fn evaluate(input: &EvalInput<'_>) -> Decision {
    let e = Eval::new(input);
    if let Some(d) = e.scope_gate() {
        return d;
    }
    if let Some(d) = e.explicit_deny_gate() {
        return d;
    }
    if let Some(d) = e.guardrail_gate() {
        return d;
    }
    let caps = e.caps();
    if let Some(d) = e.grant_gate(caps) {
        return d;
    }
    e.key_policy_gate(caps)
}

/// The key-policy lockout safety check (spec 3.3): would the caller still be allowed
/// `kms:PutKeyPolicy` on the key under `new_policy` (with `kms:PolicyName=default` and
/// `kms:BypassPolicyLockoutSafetyCheck=false`)? `base` supplies the caller, its identity
/// policies, guardrails and the key ARN (`base.request.resource`); its key policy and grants
/// are ignored.
pub fn lockout_safety_check(new_policy: &Policy, base: &EvalInput<'_>) -> Result<(), PolicyError> {
    let mut req = base.request.clone();
    req.action = "kms:PutKeyPolicy".to_string();
    req.set("kms:PolicyName", "default");
    req.set("kms:BypassPolicyLockoutSafetyCheck", "false");
    let input = EvalInput {
        key_policy: Some(NamedPolicy {
            name: "default",
            policy: new_policy,
        }),
        grants: &[],
        request: &req,
        ..*base
    };
    if evaluate(&input).is_allow() {
        Ok(())
    } else {
        Err(PolicyError::Malformed(
            "The new key policy will not allow you to update the key policy in the future."
                .to_string(),
        ))
    }
}
