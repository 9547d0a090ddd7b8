//! Authorization: every operation builds an [`AuthzRequest`] after resolving its key and
//! before touching the HSM or the store. This file turns it into the policy engine's request
//! context (every condition key of kms-spec 3.1 the request implies), gathers the policies
//! that apply (key policy, identity policies, guardrails, boundary, session policy, grants),
//! and asks [`crate::policy::evaluate`]. Only an allow proceeds.
//!
//! Nothing here parses policy text: key policies are compiled when a key is loaded or its
//! policy changes, identity policies when the directory loads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{CachedKey, Kms, KmsError, Resolved};
use crate::identity::directory::named_policies;
use crate::identity::Caller;
use crate::policy::{
    evaluate, lockout_safety_check, Decision, DecisionReason, EvalInput, GrantConstraintsView,
    GrantView, NamedPolicy, Policy, RequestContext,
};
use crate::store::GrantRecord;
/// Where the doors found the ISO 8601 formatter; it lives in [`crate::time`].
pub use crate::time::iso8601;

/// A condition-key value: single- or multi-valued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtxValue {
    One(String),
    Many(Vec<String>),
}

impl CtxValue {
    /// A single value.
    pub fn one(v: impl Into<String>) -> CtxValue {
        CtxValue::One(v.into())
    }
}

/// What is being asked, in IAM terms.
#[derive(Debug, Clone)]
pub struct AuthzRequest<'a> {
    /// The IAM action, `kms:Encrypt` and so on.
    pub action: &'static str,
    /// The resource ARN: the key ARN, an alias ARN, or `*` for account-level actions.
    pub resource: &'a str,
    /// The key the request acts on, when there is one (its policy and grants apply).
    pub key: Option<&'a CachedKey>,
    /// The request's encryption context (condition keys and grant constraints).
    pub encryption_context: Option<&'a BTreeMap<String, String>>,
    /// The alias named in the request, when the key was given by alias (`kms:RequestAlias`).
    pub request_alias: Option<&'a str>,
    /// Operation-specific condition keys.
    pub extra: Vec<(Cow<'static, str>, CtxValue)>,
    /// Evaluate with identity policies only, ignoring the key policy and grants (alias ARNs,
    /// IAM-delegated RetireGrant).
    pub identity_only: bool,
}

impl<'a> AuthzRequest<'a> {
    /// An account-level request (`*` or an alias ARN), with no key.
    pub fn new(action: &'static str, resource: &'a str) -> Self {
        AuthzRequest {
            action,
            resource,
            key: None,
            encryption_context: None,
            request_alias: None,
            extra: Vec::new(),
            identity_only: false,
        }
    }

    /// A request on a resolved key; the alias the caller used, if any, is carried along.
    pub fn on_key(action: &'static str, resolved: &'a Resolved) -> Self {
        AuthzRequest {
            action,
            resource: &resolved.key.arn,
            key: Some(&resolved.key),
            encryption_context: None,
            request_alias: resolved.alias.as_deref(),
            extra: op_extras(action),
            identity_only: false,
        }
    }

    /// Adds the encryption context.
    pub fn context(mut self, ctx: &'a BTreeMap<String, String>) -> Self {
        self.encryption_context = Some(ctx);
        self
    }

    /// Adds one condition key.
    pub fn with(mut self, key: impl Into<Cow<'static, str>>, value: CtxValue) -> Self {
        self.extra.push((key.into(), value));
        self
    }
}

/// Condition keys an action always implies (kms-spec 3.1), shared by live requests and
/// `ExplainAccess` so both evaluate the same request.
pub fn op_extras(action: &str) -> Vec<(Cow<'static, str>, CtxValue)> {
    match action {
        "kms:Encrypt"
        | "kms:Decrypt"
        | "kms:ReEncryptFrom"
        | "kms:ReEncryptTo"
        | "kms:GenerateDataKey"
        | "kms:GenerateDataKeyWithoutPlaintext" => {
            vec![(
                Cow::Borrowed("kms:EncryptionAlgorithm"),
                CtxValue::one("SYMMETRIC_DEFAULT"),
            )]
        }
        _ => Vec::new(),
    }
}

/// The service a caller acts for (`kms:ViaService`): the `p11kms:ViaService` tag of the
/// user or role in the identity directory, an endpoint prefix such as `s3` or `ec2`. Only the
/// directory's tags count, never session tags, so a caller cannot claim a service by passing a
/// tag to AssumeRole; a value that is not a lowercase endpoint prefix is ignored.
fn via_service_prefix(caller: &Caller) -> Option<&str> {
    caller
        .principal
        .tags()
        .iter()
        .find(|(k, _)| k == super::managed::VIA_SERVICE_TAG)
        .map(|(_, v)| v.as_str())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The policies that apply to a caller (besides the resource's), borrowed for one evaluation.
pub(crate) struct CallerPolicies<'a> {
    pub identity: Vec<NamedPolicy<'a>>,
    pub guardrails: Vec<NamedPolicy<'a>>,
    pub boundary: Vec<NamedPolicy<'a>>,
    pub session: Vec<NamedPolicy<'a>>,
}

impl<'a> CallerPolicies<'a> {
    /// Identity policies, account guardrails, permission boundary and session policy.
    pub(crate) fn of(caller: &'a Caller) -> CallerPolicies<'a> {
        let p = &caller.principal;
        CallerPolicies {
            identity: named_policies(p.identity_policies()),
            guardrails: named_policies(p.guardrails()),
            boundary: p
                .permission_boundary()
                .map(|(n, pol)| NamedPolicy {
                    name: n,
                    policy: pol,
                })
                .into_iter()
                .collect(),
            session: caller
                .session
                .as_ref()
                .and_then(|s| s.session_policy.as_ref())
                .map(|pol| NamedPolicy {
                    name: "session-policy",
                    policy: pol,
                })
                .into_iter()
                .collect(),
        }
    }

    /// The caller's side of an evaluation of `request`: these policies and the caller's
    /// role. The resource's side (account, policy, grants, encryption context) is empty, for
    /// the caller of this to fill in.
    pub(crate) fn input<'b>(
        &'b self,
        caller: &'b Caller,
        request: &'b RequestContext,
    ) -> EvalInput<'b> {
        EvalInput {
            key_account: None,
            key_policy: None,
            identity_policies: &self.identity,
            guardrails: &self.guardrails,
            permission_boundaries: &self.boundary,
            session_policies: &self.session,
            grants: &[],
            encryption_context: &NO_CONTEXT,
            role_arn: caller.role_arn(),
            request,
        }
    }
}

/// The encryption context of an evaluation without one.
static NO_CONTEXT: BTreeMap<String, String> = BTreeMap::new();

fn grant_views(grants: &[GrantRecord]) -> Vec<GrantView<'_>> {
    grants
        .iter()
        .map(|g| GrantView {
            grant_id: &g.grant_id,
            grantee_principal: &g.grantee_principal,
            operations: &g.operations,
            constraints: (g.constraint_equals.is_some() || g.constraint_subset.is_some())
                .then_some(GrantConstraintsView {
                    encryption_context_equals: g.constraint_equals.as_ref(),
                    encryption_context_subset: g.constraint_subset.as_ref(),
                }),
        })
        .collect()
}

impl Kms {
    /// The request context for a caller and request: principal, network, time, key and
    /// operation condition keys.
    pub(crate) fn request_context(
        &self,
        caller: &Caller,
        req: &AuthzRequest<'_>,
    ) -> RequestContext {
        let mut ctx = RequestContext::new(
            caller.principal_arn.as_str(),
            caller.account.as_str(),
            req.action,
            req.resource,
        );
        caller
            .principal
            .add_context_keys(&mut ctx, caller.session_tags());
        if let Some(prefix) = via_service_prefix(caller) {
            ctx.set(
                "kms:viaservice",
                super::managed::via_service(prefix, &self.settings.region),
            );
        }
        // Literal keys are written lowercase, as the context stores them, so that `set` does
        // not lowercase them again for every request.
        let now = self.now_ms();
        ctx.set("aws:currenttime", iso8601(now));
        ctx.set("aws:epochtime", (now.div_euclid(1000)).to_string());
        ctx.set(
            "aws:securetransport",
            if caller.secure_transport {
                "true"
            } else {
                "false"
            },
        );
        ctx.set("aws:requestedregion", self.settings.region.as_str());
        if let Some(ip) = caller.source_ip {
            ctx.set("aws:sourceip", ip.to_string());
        }
        if let Some(s) = &caller.session {
            ctx.set("aws:tokenissuetime", iso8601(s.issued_ms));
        }
        if let Some(key) = req.key {
            let r = &key.record;
            ctx.set("kms:keyspec", r.key_spec.as_str());
            ctx.set("kms:keyusage", r.key_usage.as_str());
            ctx.set("kms:keyorigin", r.origin.as_str());
            match &r.multi_region {
                None => ctx.set("kms:multiregion", "false"),
                Some(m) => {
                    ctx.set("kms:multiregion", "true");
                    let kind = super::regions::key_type(m, &self.settings.region);
                    ctx.set("kms:multiregionkeytype", kind.as_str());
                }
            }
            for t in &key.tags {
                ctx.set(&format!("aws:ResourceTag/{}", t.key), t.value.as_str());
            }
            ctx.set_multi("kms:resourcealiases", self.aliases_of(&key.record.key_id));
        }
        if let Some(ec) = req.encryption_context {
            for (k, v) in ec {
                ctx.set(&format!("kms:EncryptionContext:{k}"), v.as_str());
            }
            if !ec.is_empty() {
                ctx.set_multi("kms:encryptioncontextkeys", ec.keys().cloned().collect());
            }
        }
        if let Some(alias) = req.request_alias {
            ctx.set("kms:requestalias", alias);
        }
        for (k, v) in &req.extra {
            match v {
                CtxValue::One(s) => ctx.set(k, s.as_str()),
                CtxValue::Many(list) => ctx.set_multi(k, list.clone()),
            }
        }
        ctx
    }

    /// Evaluates a request for a caller, with every policy that applies. Pure: no I/O.
    pub(crate) fn decide(&self, caller: &Caller, req: &AuthzRequest<'_>) -> Decision {
        let ctx = self.request_context(caller, req);
        self.decide_with(caller, req, &ctx, None)
    }

    fn decide_with(
        &self,
        caller: &Caller,
        req: &AuthzRequest<'_>,
        ctx: &RequestContext,
        lockout_policy: Option<&Policy>,
    ) -> Decision {
        let policies = CallerPolicies::of(caller);
        let key = if req.identity_only { None } else { req.key };
        let grants = key.map(|k| grant_views(&k.grants)).unwrap_or_default();
        let key_policy = key
            .and_then(|k| k.policy.as_deref())
            .map(|pol| NamedPolicy {
                name: "default",
                policy: pol,
            });
        let input = EvalInput {
            key_account: req.key.map(|k| k.record.account.as_str()),
            key_policy,
            grants: &grants,
            encryption_context: req.encryption_context.unwrap_or(&NO_CONTEXT),
            ..policies.input(caller, ctx)
        };
        if let Some(new_policy) = lockout_policy {
            return match lockout_safety_check(new_policy, &input) {
                Ok(()) => Decision {
                    effect: crate::policy::Effect::Allow,
                    reason: DecisionReason::Allowed,
                    deciding: Vec::new(),
                    denying_policy_type: None,
                    action: "kms:PutKeyPolicy".into(),
                },
                Err(_) => Decision {
                    effect: crate::policy::Effect::Deny,
                    reason: DecisionReason::ImplicitDeny,
                    deciding: Vec::new(),
                    denying_policy_type: None,
                    action: "kms:PutKeyPolicy".into(),
                },
            };
        }
        evaluate(&input)
    }

    /// Authorizes a request: the allow decision, or AccessDeniedException naming the policy
    /// type that decided, as AWS does, without policy text.
    pub(crate) fn authorize(
        &self,
        caller: &Caller,
        req: AuthzRequest<'_>,
    ) -> Result<Decision, KmsError> {
        let decision = self.decide(caller, &req);
        super::record::decision(&decision, req.resource);
        if let Some(k) = req.key {
            super::record::key(&k.arn, &k.record.account);
        }
        self.decision_counts.count(&decision);
        if decision.is_allow() {
            return Ok(decision);
        }
        tracing::info!(
            principal = %caller.principal_arn,
            action = req.action,
            resource = req.resource,
            reason = %decision.summary(),
            "access denied"
        );
        Err(KmsError::AccessDenied(decision.aws_message(
            &caller.principal_arn,
            req.action,
            req.resource,
        )))
    }

    /// Authorizes an action on a resolved key.
    pub(crate) fn authorize_key(
        &self,
        caller: &Caller,
        action: &'static str,
        resolved: &Resolved,
        ctx: Option<&BTreeMap<String, String>>,
    ) -> Result<Decision, KmsError> {
        let mut req = AuthzRequest::on_key(action, resolved);
        req.encryption_context = ctx;
        self.authorize(caller, req)
    }

    /// The key-policy lockout safety check (kms-spec 3.3): would the caller still be allowed
    /// kms:PutKeyPolicy under `new_policy`?
    pub(crate) fn lockout_check(
        &self,
        caller: &Caller,
        key: &CachedKey,
        new_policy: &Policy,
    ) -> Result<(), KmsError> {
        let req = AuthzRequest {
            action: "kms:PutKeyPolicy",
            resource: &key.arn,
            key: Some(key),
            encryption_context: None,
            request_alias: None,
            extra: Vec::new(),
            identity_only: false,
        };
        let ctx = self.request_context(caller, &req);
        let d = self.decide_with(caller, &req, &ctx, Some(new_policy));
        if d.is_allow() {
            Ok(())
        } else {
            Err(KmsError::MalformedPolicyDocument(
                "The new key policy will not allow you to update the key policy in the future."
                    .into(),
            ))
        }
    }

    /// RetireGrant's rules (kms-spec 3.5): an explicit deny wins; then the retiring principal,
    /// a grantee whose grant includes RetireGrant, the key account's root, or a principal of
    /// the key account whose identity policies allow kms:RetireGrant. The key policy plays no
    /// part.
    pub(crate) fn authorize_retire(
        &self,
        caller: &Caller,
        resolved: &Resolved,
        grant: &GrantRecord,
    ) -> Result<(), KmsError> {
        let full = self.decide(caller, &AuthzRequest::on_key("kms:RetireGrant", resolved));
        let denied = |why: &str| {
            KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: kms:RetireGrant on resource: {} because {why}",
                caller.principal_arn, resolved.key.arn
            ))
        };
        if full.reason == DecisionReason::ExplicitDeny {
            return Err(denied(&full.summary()));
        }
        use super::grants::principal_matches;
        if grant
            .retiring_principal
            .as_deref()
            .is_some_and(|r| principal_matches(caller, r))
        {
            return Ok(());
        }
        if grant.operations.iter().any(|o| o == "RetireGrant")
            && principal_matches(caller, &grant.grantee_principal)
        {
            return Ok(());
        }
        if caller.account == resolved.key.record.account {
            let mut req = AuthzRequest::on_key("kms:RetireGrant", resolved);
            req.identity_only = true;
            if self.decide(caller, &req).is_allow() {
                return Ok(());
            }
        }
        Err(denied(
            "the caller is neither the grant's retiring principal, nor a grantee allowed to retire it, nor allowed kms:RetireGrant by the key's account",
        ))
    }
}
