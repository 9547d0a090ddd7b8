//! The gates of spec 3.2, one function each, over one decision in progress ([`Eval`]), and
//! the combination of gate 4 (key policy x IAM x caps) into an allow with its trace or an
//! implicit deny naming the side that did not allow.

use super::decision::{deny, label};
use super::matching::{all_allow, first_allow, grant_applies, statement_match, Caller, PMatch};
use super::{is_cross_account_op, is_iam_only_op, op_name, EvalInput, NamedPolicy};
use super::{DecidingStatement, Decision, DecisionReason, PolicyType};
use crate::policy::context::RequestContext;
use crate::policy::model::Effect;

/// One decision in progress: the input and what every gate needs from it, computed once.
pub(super) struct Eval<'i, 'a> {
    input: &'i EvalInput<'a>,
    req: &'a RequestContext,
    c: Caller<'a>,
    /// Authorized by IAM alone (no key policy, or an IAM-only operation).
    iam_only: bool,
    /// The key policy as a list of zero or one (empty when `iam_only`).
    key_policy: &'i [NamedPolicy<'a>],
    /// The caller is in the key's account (or there is no key).
    same_account: bool,
}

/// Whether the permission boundaries and session policies allow (true for the root user).
#[derive(Clone, Copy)]
pub(super) struct Caps {
    boundary_ok: bool,
    session_ok: bool,
}

impl Caps {
    fn ok(self) -> bool {
        self.boundary_ok && self.session_ok
    }
}

/// The first Allow statement of the key policy for each way its principal can match.
#[derive(Default)]
struct KeyPolicyAllows {
    uncapped: Option<usize>,
    capped: Option<usize>,
    account: Option<usize>,
}

impl KeyPolicyAllows {
    fn any(&self) -> Option<usize> {
        self.uncapped.or(self.capped).or(self.account)
    }
}

/// How gate 4 allows: the key-policy statement, and whether the identity policies and the
/// caps took part (and so belong in the trace).
struct AllowPath {
    key_statement: Option<usize>,
    needs_iam: bool,
    needs_caps: bool,
}

impl<'i, 'a> Eval<'i, 'a> {
    /// Parses the caller and classifies the request.
    pub(super) fn new(input: &'i EvalInput<'a>) -> Self {
        let req = input.request;
        let iam_only = input.key_policy.is_none() || is_iam_only_op(&req.action);
        let key_policy: &'i [NamedPolicy<'a>] = match (&input.key_policy, iam_only) {
            (Some(kp), false) => std::slice::from_ref(kp),
            _ => &[],
        };
        Eval {
            input,
            req,
            c: Caller::new(req, input.role_arn, !input.permission_boundaries.is_empty()),
            iam_only,
            key_policy,
            same_account: input
                .key_account
                .is_none_or(|ka| ka == req.principal_account),
        }
    }

    /// Gate 0: an operation that cannot be performed on another account's key.
    pub(super) fn scope_gate(&self) -> Option<Decision> {
        (!self.same_account && !is_cross_account_op(&self.req.action)).then(|| {
            deny(
                DecisionReason::ImplicitDeny,
                PolicyType::CrossAccountScope,
                Vec::new(),
                self.req,
            )
        })
    }

    /// Gate 1: an explicit deny anywhere wins; every matching Deny is in the trace.
    pub(super) fn explicit_deny_gate(&self) -> Option<Decision> {
        let input = self.input;
        let sets: [(PolicyType, &[NamedPolicy<'_>]); 5] = [
            (PolicyType::Guardrail, input.guardrails),
            (PolicyType::KeyPolicy, self.key_policy),
            (PolicyType::IdentityPolicy, input.identity_policies),
            (PolicyType::PermissionBoundary, input.permission_boundaries),
            (PolicyType::SessionPolicy, input.session_policies),
        ];
        let mut denies: Vec<DecidingStatement> = Vec::new();
        for (t, list) in sets {
            for np in list.iter().filter(|np| np.policy.compiled.has_deny) {
                for (i, st) in np.policy.compiled.statements.iter().enumerate() {
                    if st.effect == Effect::Deny
                        && statement_match(st, self.req, &self.c) != PMatch::None
                    {
                        denies.push(label(t, np, i));
                    }
                }
            }
        }
        let t = denies.first()?.policy_type;
        Some(deny(DecisionReason::ExplicitDeny, t, denies, self.req))
    }

    /// Gate 2: every guardrail must allow.
    pub(super) fn guardrail_gate(&self) -> Option<Decision> {
        let guardrails = self.input.guardrails;
        let i = all_allow(guardrails, self.req, &self.c).err()?;
        let name = guardrails.get(i).map(|g| g.name).unwrap_or("");
        Some(deny(
            DecisionReason::ImplicitDeny,
            PolicyType::Guardrail,
            vec![DecidingStatement {
                policy_type: PolicyType::Guardrail,
                policy_name: name.to_string(),
                statement: "(no matching Allow)".to_string(),
            }],
            self.req,
        ))
    }

    /// Boundaries and session policies cap everything except direct, uncapped key-policy
    /// grants. The root user has neither.
    pub(super) fn caps(&self) -> Caps {
        let (input, req, c) = (self.input, self.req, &self.c);
        Caps {
            boundary_ok: c.is_root || all_allow(input.permission_boundaries, req, c).is_ok(),
            session_ok: c.is_root || all_allow(input.session_policies, req, c).is_ok(),
        }
    }

    /// Gate 3: a grant that applies allows (within the caps).
    pub(super) fn grant_gate(&self, caps: Caps) -> Option<Decision> {
        if self.iam_only || !caps.ok() {
            return None;
        }
        let op = op_name(&self.req.action);
        let g = self
            .input
            .grants
            .iter()
            .find(|g| grant_applies(g, op, self.input, &self.c))?;
        let mut deciding = vec![DecidingStatement {
            policy_type: PolicyType::Grant,
            policy_name: g.grant_id.to_string(),
            statement: g.grant_id.to_string(),
        }];
        self.caps_trace(&mut deciding);
        Some(self.allow(deciding))
    }

    /// Gate 4: the key policy and IAM combined; an allow with its trace, or an implicit deny.
    pub(super) fn key_policy_gate(&self, caps: Caps) -> Decision {
        let kp = self.key_policy_allows();
        let identity_allow = self.identity_allow();
        let identity_ok = self.c.is_root || identity_allow.is_some();
        match self.allow_path(&kp, identity_ok, caps) {
            Some(path) => self.allow(self.allow_trace(&path, identity_allow)),
            None => {
                let t = self.implicit_deny_side(&kp, identity_ok, caps);
                deny(DecisionReason::ImplicitDeny, t, Vec::new(), self.req)
            }
        }
    }

    /// The first key-policy Allow per principal match (stops early on an uncapped match in
    /// the key's account).
    fn key_policy_allows(&self) -> KeyPolicyAllows {
        let mut best = KeyPolicyAllows::default();
        let Some(kp) = self.key_policy.first() else {
            return best;
        };
        if !kp.policy.compiled.has_allow {
            return best;
        }
        for (i, st) in kp.policy.compiled.statements.iter().enumerate() {
            if st.effect != Effect::Allow {
                continue;
            }
            let slot = match statement_match(st, self.req, &self.c) {
                PMatch::None => continue,
                PMatch::Account => &mut best.account,
                PMatch::DirectCapped => &mut best.capped,
                PMatch::DirectUncapped => &mut best.uncapped,
            };
            if slot.is_none() {
                *slot = Some(i);
            }
            if best.uncapped.is_some() && self.same_account {
                break;
            }
        }
        best
    }

    /// The first identity policy Allow: (policy index, statement index). Never for root.
    fn identity_allow(&self) -> Option<(usize, usize)> {
        if self.c.is_root {
            return None;
        }
        self.input
            .identity_policies
            .iter()
            .enumerate()
            .find_map(|(pi, np)| first_allow(np.policy, self.req, &self.c).map(|si| (pi, si)))
    }

    /// Which combination allows, if any: IAM alone for IAM-only operations; in the key's
    /// account an uncapped key-policy statement, a capped one within the caps, or account
    /// delegation with IAM; across accounts both the key policy and IAM.
    fn allow_path(&self, kp: &KeyPolicyAllows, identity_ok: bool, caps: Caps) -> Option<AllowPath> {
        let iam_ok = identity_ok && caps.ok();
        let path = |key_statement, needs_iam, needs_caps| AllowPath {
            key_statement,
            needs_iam,
            needs_caps,
        };
        if self.iam_only {
            iam_ok.then(|| path(None, true, true))
        } else if self.same_account {
            if kp.uncapped.is_some() {
                Some(path(kp.uncapped, false, false))
            } else if kp.capped.is_some() && caps.ok() {
                Some(path(kp.capped, false, true))
            } else if kp.account.is_some() && iam_ok {
                Some(path(kp.account, true, true))
            } else {
                None
            }
        } else if kp.any().is_some() && iam_ok {
            Some(path(kp.any(), true, true))
        } else {
            None
        }
    }

    /// The deciding statements of an allow: the key-policy statement, the identity policy
    /// statement and the caps that took part.
    fn allow_trace(
        &self,
        path: &AllowPath,
        identity_allow: Option<(usize, usize)>,
    ) -> Vec<DecidingStatement> {
        let mut deciding = Vec::with_capacity(4);
        if let (Some(i), Some(kp)) = (path.key_statement, self.key_policy.first()) {
            deciding.push(label(PolicyType::KeyPolicy, kp, i));
        }
        if path.needs_iam {
            if let Some((pi, si)) = identity_allow {
                if let Some(np) = self.input.identity_policies.get(pi) {
                    deciding.push(label(PolicyType::IdentityPolicy, np, si));
                }
            }
        }
        if path.needs_caps {
            self.caps_trace(&mut deciding);
        }
        deciding
    }

    /// Implicit deny: the side that did not allow.
    fn implicit_deny_side(
        &self,
        kp: &KeyPolicyAllows,
        identity_ok: bool,
        caps: Caps,
    ) -> PolicyType {
        if !self.key_policy.is_empty() && kp.any().is_none() {
            PolicyType::KeyPolicy
        } else if !(identity_ok || (self.same_account && kp.capped.is_some())) {
            PolicyType::IdentityPolicy
        } else if !caps.boundary_ok {
            PolicyType::PermissionBoundary
        } else if !caps.session_ok {
            PolicyType::SessionPolicy
        } else {
            PolicyType::IdentityPolicy
        }
    }

    /// Adds the boundary / session statements that allowed (only called on the allow path).
    fn caps_trace(&self, deciding: &mut Vec<DecidingStatement>) {
        if self.c.is_root {
            return;
        }
        for (t, list) in [
            (
                PolicyType::PermissionBoundary,
                self.input.permission_boundaries,
            ),
            (PolicyType::SessionPolicy, self.input.session_policies),
        ] {
            for np in list {
                if let Some(i) = first_allow(np.policy, self.req, &self.c) {
                    deciding.push(label(t, np, i));
                }
            }
        }
    }

    /// An allow decision with trace `deciding`.
    fn allow(&self, deciding: Vec<DecidingStatement>) -> Decision {
        Decision {
            effect: Effect::Allow,
            reason: DecisionReason::Allowed,
            deciding,
            denying_policy_type: None,
            action: self.req.action.clone(),
        }
    }
}
