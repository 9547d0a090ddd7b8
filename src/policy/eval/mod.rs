//! The decision algorithm of spec section 3.2, with a trace of the deciding statements.
//!
//! Gate 0 (operation scope) -> gate 1 (explicit deny anywhere) -> gate 2 (guardrails must
//! allow) -> gate 3 (grants) -> gate 4 (key policy x IAM). Nothing here allocates per statement;
//! the only allocations are the decision's trace vector and its action string.

use std::collections::BTreeMap;
use std::fmt;

use super::compile::{classify_ref, glob_match, CPrincipal, CStatement, PrinRef};
use super::conditions::eval_condition;
use super::context::RequestContext;
use super::model::Effect;
use super::{Policy, PolicyError};

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

/// Outcome of [`evaluate`].
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

/// The caller, parsed once per decision (borrowed, no allocation).
#[derive(Debug, Clone, Copy)]
struct Caller<'a> {
    arn: &'a str,
    account: &'a str,
    role_arn: Option<&'a str>,
    /// Role name taken from an `assumed-role/ROLE/SESSION` ARN.
    session_role: Option<&'a str>,
    is_root: bool,
    /// The caller has a permissions boundary attached (a `NotPrincipal` Deny always applies).
    has_boundary: bool,
}

impl<'a> Caller<'a> {
    fn new(req: &'a RequestContext, role_arn: Option<&'a str>, has_boundary: bool) -> Caller<'a> {
        let arn = req.principal_arn.as_str();
        let mut it = arn.splitn(6, ':');
        let (svc, acct, res) = match (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        ) {
            (Some(_), Some(_), Some(svc), Some(_), Some(acct), Some(res)) => (svc, acct, res),
            _ => ("", "", ""),
        };
        let session_role = if svc == "sts" {
            res.strip_prefix("assumed-role/")
                .and_then(|r| r.split('/').next())
        } else {
            None
        };
        let is_root = svc == "iam" && res == "root" && acct == req.principal_account;
        Caller {
            arn,
            account: req.principal_account.as_str(),
            role_arn: role_arn.filter(|r| !r.is_empty()),
            session_role,
            is_root,
            has_boundary: has_boundary && !is_root,
        }
    }

    fn is_session(&self) -> bool {
        self.session_role.is_some()
    }

    /// Does a role principal cover this caller (the role itself or one of its sessions)?
    fn is_role(&self, arn: &str, account: &str, name: &str) -> bool {
        if self.arn == arn {
            return true;
        }
        match self.role_arn {
            Some(r) => r == arn,
            None => self.session_role == Some(name) && self.account == account,
        }
    }

    /// Grantee / principal string match in the sense of grants (account root = whole account).
    fn matches_grantee(&self, grantee: &str) -> bool {
        match classify_ref(grantee) {
            PrinRef::Any => false,
            PrinRef::Account(a) => a == self.account,
            PrinRef::Role { arn, account, name } => self.is_role(arn, account, name),
            PrinRef::Exact(s) => s == self.arn,
        }
    }
}

/// How a key-policy statement's principal covers the caller (ordered weakest to strongest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PMatch {
    None,
    /// The caller's account root: delegates to IAM.
    Account,
    /// Names the caller in a way that is capped by boundaries / session policies (role ARN, `*`).
    DirectCapped,
    /// Names the caller's own ARN (user or session): not capped.
    DirectUncapped,
}

fn principal_match(p: &CPrincipal, effect: Effect, c: &Caller<'_>) -> PMatch {
    if p.negated {
        let excluded = match effect {
            Effect::Allow => not_principal_names(p, c),
            Effect::Deny => !c.has_boundary && not_principal_exempt(p, c),
        };
        return if excluded {
            PMatch::None
        } else {
            PMatch::DirectCapped
        };
    }
    if p.any {
        return PMatch::DirectCapped;
    }
    let mut best = PMatch::None;
    for a in p.aws.iter() {
        let m = match a.as_ref() {
            PrinRef::Any => PMatch::DirectCapped,
            PrinRef::Account(acct) if acct == c.account => PMatch::Account,
            PrinRef::Account(_) => PMatch::None,
            PrinRef::Role { arn, account, name } if c.is_role(arn, account, name) => {
                PMatch::DirectCapped
            }
            PrinRef::Role { .. } => PMatch::None,
            PrinRef::Exact(s) if s == c.arn => PMatch::DirectUncapped,
            PrinRef::Exact(_) => PMatch::None,
        };
        best = best.max(m);
    }
    if best == PMatch::None && p.others.iter().any(|o| **o == *c.arn) {
        best = PMatch::DirectCapped;
    }
    best
}

/// NotPrincipal in an Allow: the statement applies to every principal except the ones named, so
/// the caller is left out when any entity of its chain is listed (its own ARN, its role for a
/// session, or its account).
fn not_principal_names(p: &CPrincipal, c: &Caller<'_>) -> bool {
    p.any
        || p.others.iter().any(|o| **o == *c.arn)
        || p.aws.iter().any(|a| match a.as_ref() {
            PrinRef::Any => true,
            PrinRef::Exact(s) => s == c.arn || c.role_arn == Some(s),
            PrinRef::Account(acct) => acct == c.account,
            PrinRef::Role { arn, account, name } => c.is_role(arn, account, name),
        })
}

/// NotPrincipal in a Deny: the caller is exempt only if every entity of its chain is listed
/// (the caller ARN, the role ARN for a session, and the account). A caller with a permissions
/// boundary is never exempt (checked by the caller of this function).
fn not_principal_exempt(p: &CPrincipal, c: &Caller<'_>) -> bool {
    if p.any {
        return true;
    }
    let refs = || p.aws.iter().map(|a| a.as_ref());
    let arn_listed = refs().any(|r| match r {
        PrinRef::Any => true,
        PrinRef::Exact(s) => s == c.arn,
        PrinRef::Account(a) => c.is_root && a == c.account,
        PrinRef::Role { arn, .. } => arn == c.arn,
    }) || p.others.iter().any(|o| **o == *c.arn);
    if !arn_listed {
        return false;
    }
    if c.is_session() {
        let role_listed = refs().any(|r| match r {
            PrinRef::Any => true,
            PrinRef::Role { arn, account, name } => c.is_role(arn, account, name),
            PrinRef::Exact(s) => c.role_arn == Some(s),
            PrinRef::Account(_) => false,
        });
        if !role_listed {
            return false;
        }
    }
    c.is_root
        || refs().any(|r| match r {
            PrinRef::Any => true,
            PrinRef::Account(a) => a == c.account,
            _ => false,
        })
}

/// Principal / action / resource / conditions. Returns how the principal matched
/// (`DirectUncapped` for statements without a principal).
#[inline]
fn statement_match(st: &CStatement, req: &RequestContext, c: &Caller<'_>) -> PMatch {
    let action_hit = st
        .actions
        .iter()
        .any(|p| glob_match(p, &req.action, true, req));
    if action_hit == st.actions_negated {
        return PMatch::None;
    }
    let res_hit = st
        .resources
        .iter()
        .any(|p| glob_match(p, &req.resource, false, req));
    if res_hit == st.resources_negated {
        return PMatch::None;
    }
    let pm = match &st.principal {
        None => PMatch::DirectUncapped,
        Some(p) => principal_match(p, st.effect, c),
    };
    if pm == PMatch::None {
        return PMatch::None;
    }
    if st.conditions.iter().all(|cond| eval_condition(cond, req)) {
        pm
    } else {
        PMatch::None
    }
}

/// Index of the first matching Allow statement.
fn first_allow(p: &Policy, req: &RequestContext, c: &Caller<'_>) -> Option<usize> {
    if !p.compiled.has_allow {
        return None;
    }
    p.compiled
        .statements
        .iter()
        .position(|st| st.effect == Effect::Allow && statement_match(st, req, c) != PMatch::None)
}

/// Every policy of the list has a matching Allow (true for an empty list). On failure, the
/// index of the first policy that does not allow.
fn all_allow(list: &[NamedPolicy<'_>], req: &RequestContext, c: &Caller<'_>) -> Result<(), usize> {
    match list
        .iter()
        .position(|np| first_allow(np.policy, req, c).is_none())
    {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

fn label(policy_type: PolicyType, np: &NamedPolicy<'_>, idx: usize) -> DecidingStatement {
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

fn grant_applies(g: &GrantView<'_>, op: &str, input: &EvalInput<'_>, c: &Caller<'_>) -> bool {
    if !g.operations.iter().any(|o| o.eq_ignore_ascii_case(op)) {
        return false;
    }
    if !c.matches_grantee(g.grantee_principal) {
        return false;
    }
    let ec_exempt =
        op.eq_ignore_ascii_case("DescribeKey") || op.eq_ignore_ascii_case("RetireGrant");
    if let (Some(cons), false) = (&g.constraints, ec_exempt) {
        if let Some(eq) = cons.encryption_context_equals {
            if eq != input.encryption_context {
                return false;
            }
        }
        if let Some(sub) = cons.encryption_context_subset {
            if !sub
                .iter()
                .all(|(k, v)| input.encryption_context.get(k) == Some(v))
            {
                return false;
            }
        }
    }
    true
}

fn deny(
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

/// Decides a request (spec 3.2).
pub fn evaluate(input: &EvalInput<'_>) -> Decision {
    let req = input.request;
    let c = Caller::new(req, input.role_arn, !input.permission_boundaries.is_empty());
    let iam_only = input.key_policy.is_none() || is_iam_only_op(&req.action);
    let key_policy: &[NamedPolicy<'_>] = match (&input.key_policy, iam_only) {
        (Some(kp), false) => std::slice::from_ref(kp),
        _ => &[],
    };
    let same_account = input
        .key_account
        .is_none_or(|ka| ka == req.principal_account);

    // Gate 0: operation scope.
    if !same_account && !is_cross_account_op(&req.action) {
        return deny(
            DecisionReason::ImplicitDeny,
            PolicyType::CrossAccountScope,
            Vec::new(),
            req,
        );
    }

    // Gate 1: explicit deny anywhere wins.
    let sets: [(PolicyType, &[NamedPolicy<'_>]); 5] = [
        (PolicyType::Guardrail, input.guardrails),
        (PolicyType::KeyPolicy, key_policy),
        (PolicyType::IdentityPolicy, input.identity_policies),
        (PolicyType::PermissionBoundary, input.permission_boundaries),
        (PolicyType::SessionPolicy, input.session_policies),
    ];
    let mut denies: Vec<DecidingStatement> = Vec::new();
    for (t, list) in sets {
        for np in list {
            if !np.policy.compiled.has_deny {
                continue;
            }
            for (i, st) in np.policy.compiled.statements.iter().enumerate() {
                if st.effect == Effect::Deny && statement_match(st, req, &c) != PMatch::None {
                    denies.push(label(t, np, i));
                }
            }
        }
    }
    if let Some(first) = denies.first() {
        let t = first.policy_type;
        return deny(DecisionReason::ExplicitDeny, t, denies, req);
    }

    // Gate 2: guardrails must allow.
    if let Err(i) = all_allow(input.guardrails, req, &c) {
        let name = input.guardrails.get(i).map(|g| g.name).unwrap_or("");
        return deny(
            DecisionReason::ImplicitDeny,
            PolicyType::Guardrail,
            vec![DecidingStatement {
                policy_type: PolicyType::Guardrail,
                policy_name: name.to_string(),
                statement: "(no matching Allow)".to_string(),
            }],
            req,
        );
    }

    // Boundaries and session policies cap everything except direct, uncapped key-policy grants.
    // The root user has neither.
    let boundary_ok = c.is_root || all_allow(input.permission_boundaries, req, &c).is_ok();
    let session_ok = c.is_root || all_allow(input.session_policies, req, &c).is_ok();
    let caps_ok = boundary_ok && session_ok;

    // Gate 3: grants.
    if !iam_only && caps_ok {
        let op = op_name(&req.action);
        if let Some(g) = input
            .grants
            .iter()
            .find(|g| grant_applies(g, op, input, &c))
        {
            let mut deciding = vec![DecidingStatement {
                policy_type: PolicyType::Grant,
                policy_name: g.grant_id.to_string(),
                statement: g.grant_id.to_string(),
            }];
            caps_trace(input, req, &c, &mut deciding);
            return Decision {
                effect: Effect::Allow,
                reason: DecisionReason::Allowed,
                deciding,
                denying_policy_type: None,
                action: req.action.clone(),
            };
        }
    }

    // Gate 4: key policy x IAM.
    let mut best_uncapped = None;
    let mut best_capped = None;
    let mut best_acct = None;
    if let Some(kp) = key_policy.first() {
        if kp.policy.compiled.has_allow {
            for (i, st) in kp.policy.compiled.statements.iter().enumerate() {
                if st.effect != Effect::Allow {
                    continue;
                }
                let slot = match statement_match(st, req, &c) {
                    PMatch::None => continue,
                    PMatch::Account => &mut best_acct,
                    PMatch::DirectCapped => &mut best_capped,
                    PMatch::DirectUncapped => &mut best_uncapped,
                };
                if slot.is_none() {
                    *slot = Some(i);
                }
                if best_uncapped.is_some() && same_account {
                    break;
                }
            }
        }
    }
    let identity_allow: Option<(usize, usize)> = if c.is_root {
        None
    } else {
        input
            .identity_policies
            .iter()
            .enumerate()
            .find_map(|(pi, np)| first_allow(np.policy, req, &c).map(|si| (pi, si)))
    };
    let identity_ok = c.is_root || identity_allow.is_some();
    let iam_ok = identity_ok && caps_ok;

    let kp_any = best_uncapped.or(best_capped).or(best_acct);
    // (key-policy statement, identity policies needed, caps needed)
    let path: Option<(Option<usize>, bool, bool)> = if iam_only {
        iam_ok.then_some((None, true, true))
    } else if same_account {
        if best_uncapped.is_some() {
            Some((best_uncapped, false, false))
        } else if best_capped.is_some() && caps_ok {
            Some((best_capped, false, true))
        } else if best_acct.is_some() && iam_ok {
            Some((best_acct, true, true))
        } else {
            None
        }
    } else if kp_any.is_some() && iam_ok {
        Some((kp_any, true, true))
    } else {
        None
    };

    if let Some((kp_stmt, needs_iam, needs_caps)) = path {
        let mut deciding = Vec::with_capacity(4);
        if let (Some(i), Some(kp)) = (kp_stmt, key_policy.first()) {
            deciding.push(label(PolicyType::KeyPolicy, kp, i));
        }
        if needs_iam {
            if let Some((pi, si)) = identity_allow {
                if let Some(np) = input.identity_policies.get(pi) {
                    deciding.push(label(PolicyType::IdentityPolicy, np, si));
                }
            }
        }
        if needs_caps {
            caps_trace(input, req, &c, &mut deciding);
        }
        return Decision {
            effect: Effect::Allow,
            reason: DecisionReason::Allowed,
            deciding,
            denying_policy_type: None,
            action: req.action.clone(),
        };
    }

    // Implicit deny: name the side that did not allow.
    let t = if !key_policy.is_empty() && kp_any.is_none() {
        PolicyType::KeyPolicy
    } else if !(identity_ok || (same_account && best_capped.is_some())) {
        PolicyType::IdentityPolicy
    } else if !boundary_ok {
        PolicyType::PermissionBoundary
    } else if !session_ok {
        PolicyType::SessionPolicy
    } else {
        PolicyType::IdentityPolicy
    };
    deny(DecisionReason::ImplicitDeny, t, Vec::new(), req)
}

/// Adds the boundary / session statements that allowed (only called on the allow path).
fn caps_trace(
    input: &EvalInput<'_>,
    req: &RequestContext,
    c: &Caller<'_>,
    deciding: &mut Vec<DecidingStatement>,
) {
    if c.is_root {
        return;
    }
    for (t, list) in [
        (PolicyType::PermissionBoundary, input.permission_boundaries),
        (PolicyType::SessionPolicy, input.session_policies),
    ] {
        for np in list {
            if let Some(i) = first_allow(np.policy, req, c) {
                deciding.push(label(t, np, i));
            }
        }
    }
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
