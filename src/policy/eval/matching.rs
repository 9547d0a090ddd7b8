//! Statement matching: the caller parsed once per decision, how a statement's principal,
//! action, resource and conditions cover a request, and whether a grant applies.

use super::{EvalInput, GrantView, NamedPolicy};
use crate::policy::compile::{
    arn_parts, classify_ref, glob_match, CPrincipal, CStatement, Pattern, PrinRef,
};
use crate::policy::conditions::eval_condition;
use crate::policy::context::RequestContext;
use crate::policy::model::Effect;
use crate::policy::Policy;

/// The caller, parsed once per decision (borrowed, no allocation).
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller<'a> {
    arn: &'a str,
    account: &'a str,
    role_arn: Option<&'a str>,
    /// Role name taken from an `assumed-role/ROLE/SESSION` ARN.
    session_role: Option<&'a str>,
    pub(super) is_root: bool,
    /// The caller has a permissions boundary attached (a `NotPrincipal` Deny always applies).
    has_boundary: bool,
}

impl<'a> Caller<'a> {
    /// Parses the caller of `req` (`has_boundary`: a permissions boundary is attached).
    pub(super) fn new(
        req: &'a RequestContext,
        role_arn: Option<&'a str>,
        has_boundary: bool,
    ) -> Caller<'a> {
        let arn = req.principal_arn.as_str();
        let (svc, acct, res) = arn_parts(arn).unwrap_or(("", "", ""));
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
pub(super) enum PMatch {
    None,
    /// The caller's account root: delegates to IAM.
    Account,
    /// Names the caller in a way that is capped by boundaries / session policies (role ARN, `*`).
    DirectCapped,
    /// Names the caller's own ARN (user or session): not capped.
    DirectUncapped,
}

/// How principal block `p` of a statement with `effect` covers the caller.
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
pub(super) fn statement_match(st: &CStatement, req: &RequestContext, c: &Caller<'_>) -> PMatch {
    // `Action`/`Resource` hit unless negated (`NotAction`/`NotResource`).
    let listed = |pats: &[Pattern], value: &str, is_action, negated| {
        pats.iter().any(|p| glob_match(p, value, is_action, req)) != negated
    };
    if !listed(&st.actions, &req.action, true, st.actions_negated)
        || !listed(&st.resources, &req.resource, false, st.resources_negated)
    {
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
pub(super) fn first_allow(p: &Policy, req: &RequestContext, c: &Caller<'_>) -> Option<usize> {
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
pub(super) fn all_allow(
    list: &[NamedPolicy<'_>],
    req: &RequestContext,
    c: &Caller<'_>,
) -> Result<(), usize> {
    match list
        .iter()
        .position(|np| first_allow(np.policy, req, c).is_none())
    {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

/// Whether grant `g` allows operation `op` (no `kms:` prefix) to the caller, with its
/// encryption-context constraints met (not checked for DescribeKey and RetireGrant).
pub(super) fn grant_applies(
    g: &GrantView<'_>,
    op: &str,
    input: &EvalInput<'_>,
    c: &Caller<'_>,
) -> bool {
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
