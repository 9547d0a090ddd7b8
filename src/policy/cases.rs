//! Loader and runner for the policy test-vector format of `tests/fixtures/policy-cases/cases.json`
//! (a copy of `shared/policy-cases/`)
//! (also what `p11kms policy eval FILE` reads): one case object or an array of them.
//!
//! ```text
//! { name, key_account, key_policy, identity_policies: [doc..], grants: [{GrantId?, GranteePrincipal,
//!   Operations, Constraints?}], scps?: [doc..], permission_boundaries?: [doc..], session_policies?: [doc..],
//!   request: { principal_arn, principal_account, action, key_arn, role_arn?, encryption_context, context },
//!   expected?: "Allow" | "Deny", reason? }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::eval::{evaluate, Decision, EvalInput, GrantConstraintsView, GrantView, NamedPolicy};
use super::model::Effect;
use super::{Policy, PolicyError, PolicyKind, RequestContext};

/// One test case.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// Where the expectation comes from.
    #[serde(default)]
    pub source: Option<String>,
    /// Key account (absent for IAM-only operations).
    #[serde(default)]
    pub key_account: Option<String>,
    /// Key policy document (absent/null for IAM-only operations).
    #[serde(default)]
    pub key_policy: Option<Value>,
    /// Identity policy documents.
    #[serde(default)]
    pub identity_policies: Vec<Value>,
    /// Grants on the key.
    #[serde(default)]
    pub grants: Vec<CaseGrant>,
    /// Guardrail documents.
    #[serde(default)]
    pub scps: Vec<Value>,
    /// Permission boundary documents.
    #[serde(default)]
    pub permission_boundaries: Vec<Value>,
    /// Session policy documents.
    #[serde(default)]
    pub session_policies: Vec<Value>,
    /// The request.
    pub request: CaseRequest,
    /// Expected decision, if any.
    #[serde(default)]
    pub expected: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A grant in a case.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaseGrant {
    /// Grant id.
    #[serde(default)]
    pub grant_id: Option<String>,
    /// Grantee.
    pub grantee_principal: String,
    /// Operations (`Decrypt`, ...).
    pub operations: Vec<String>,
    /// Retiring principal (not used by the evaluator).
    #[serde(default)]
    pub retiring_principal: Option<String>,
    /// Constraints.
    #[serde(default)]
    pub constraints: Option<CaseConstraints>,
}

/// Grant constraints in a case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaseConstraints {
    /// EncryptionContextEquals.
    #[serde(default)]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    /// EncryptionContextSubset.
    #[serde(default)]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

/// The request of a case.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseRequest {
    /// Caller ARN.
    pub principal_arn: String,
    /// Caller account.
    pub principal_account: String,
    /// Action (`kms:Decrypt`).
    pub action: String,
    /// Resource (key ARN, alias ARN or `*`); `resource` is accepted as a synonym.
    #[serde(default, alias = "resource")]
    pub key_arn: Option<String>,
    /// Role ARN of an assumed-role caller (default: `aws:PrincipalArn` from the context).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// Encryption context (for grant constraints).
    #[serde(default)]
    pub encryption_context: BTreeMap<String, String>,
    /// Condition keys.
    #[serde(default)]
    pub context: serde_json::Map<String, Value>,
}

/// Errors from loading or running cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseError {
    /// The file is not in the case format.
    #[error("invalid case file: {0}")]
    Format(String),
    /// A policy of a case does not parse.
    #[error("case '{case}': {which}: {error}")]
    Policy {
        /// Case name.
        case: String,
        /// Which policy (`key_policy`, `identity_policies[0]`, ...).
        which: String,
        /// The parse error.
        error: PolicyError,
    },
}

/// Result of running one case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// Case name.
    pub name: String,
    /// Expected effect, if the case states one.
    pub expected: Option<Effect>,
    /// The evaluator's decision.
    pub decision: Decision,
}

impl CaseOutcome {
    /// True when there is no expectation or the decision matches it.
    pub fn passed(&self) -> bool {
        self.expected.is_none_or(|e| e == self.decision.effect)
    }
}

/// Parses a case file: an array of cases or a single case.
pub fn load_cases(text: &str) -> Result<Vec<Case>, CaseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| CaseError::Format(e.to_string()))?;
    let list = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::from_value(c).map_err(|e| CaseError::Format(format!("case [{i}]: {e}")))
        })
        .collect()
}

fn compile_all(
    case: &str,
    what: &str,
    docs: &[Value],
    kind: PolicyKind,
) -> Result<Vec<Policy>, CaseError> {
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            Policy::from_value(d, kind).map_err(|error| CaseError::Policy {
                case: case.to_string(),
                which: format!("{what}[{i}]"),
                error,
            })
        })
        .collect()
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Builds the request context of a case.
pub fn request_context(r: &CaseRequest) -> RequestContext {
    let resource = r.key_arn.clone().unwrap_or_else(|| "*".to_string());
    let mut ctx = RequestContext::new(
        r.principal_arn.clone(),
        r.principal_account.clone(),
        r.action.clone(),
        resource,
    );
    for (k, v) in &r.context {
        match v {
            Value::Array(a) => ctx.set_multi(k, a.iter().filter_map(value_text).collect()),
            Value::Null => {}
            other => {
                if let Some(s) = value_text(other) {
                    ctx.set(k, s);
                }
            }
        }
    }
    ctx
}

/// Runs one case through [`evaluate`].
pub fn run_case(case: &Case) -> Result<CaseOutcome, CaseError> {
    let name = case.name.as_str();
    let key_policy = case_key_policy(case)?;
    let identity = compile_all(
        name,
        "identity_policies",
        &case.identity_policies,
        PolicyKind::Identity,
    )?;
    let scps = compile_all(name, "scps", &case.scps, PolicyKind::Guardrail)?;
    let boundaries = compile_all(
        name,
        "permission_boundaries",
        &case.permission_boundaries,
        PolicyKind::PermissionBoundary,
    )?;
    let sessions = compile_all(
        name,
        "session_policies",
        &case.session_policies,
        PolicyKind::Session,
    )?;
    let expected = expected_effect(case)?;

    let names = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}[{i}]")).collect()
    };
    let id_names = names("identity_policies", identity.len());
    let scp_names = names("scps", scps.len());
    let pb_names = names("permission_boundaries", boundaries.len());
    let sp_names = names("session_policies", sessions.len());
    fn view<'a>(ps: &'a [Policy], ns: &'a [String]) -> Vec<NamedPolicy<'a>> {
        ps.iter()
            .zip(ns)
            .map(|(policy, name)| NamedPolicy { name, policy })
            .collect()
    }
    let identity_v = view(&identity, &id_names);
    let scps_v = view(&scps, &scp_names);
    let pb_v = view(&boundaries, &pb_names);
    let sp_v = view(&sessions, &sp_names);

    let grant_ids: Vec<String> = case
        .grants
        .iter()
        .enumerate()
        .map(|(i, g)| g.grant_id.clone().unwrap_or_else(|| format!("grants[{i}]")))
        .collect();
    let grants = grant_views(case, &grant_ids);
    let req = request_context(&case.request);
    let role_arn = session_role_arn(case, &req);

    let input = EvalInput {
        key_account: case.key_account.as_deref(),
        key_policy: key_policy.as_ref().map(|policy| NamedPolicy {
            name: "default",
            policy,
        }),
        identity_policies: &identity_v,
        guardrails: &scps_v,
        permission_boundaries: &pb_v,
        session_policies: &sp_v,
        grants: &grants,
        encryption_context: &case.request.encryption_context,
        role_arn: role_arn.as_deref(),
        request: &req,
    };
    Ok(CaseOutcome {
        name: case.name.clone(),
        expected,
        decision: evaluate(&input),
    })
}

/// The case's key policy, compiled.
fn case_key_policy(case: &Case) -> Result<Option<Policy>, CaseError> {
    let Some(v) = &case.key_policy else {
        return Ok(None);
    };
    let policy = Policy::from_value(v, PolicyKind::Key).map_err(|error| CaseError::Policy {
        case: case.name.clone(),
        which: "key_policy".to_string(),
        error,
    })?;
    Ok(Some(policy))
}

/// The case's expected decision, when it names one.
fn expected_effect(case: &Case) -> Result<Option<Effect>, CaseError> {
    match case.expected.as_deref() {
        None => Ok(None),
        Some("Allow") => Ok(Some(Effect::Allow)),
        Some("Deny") => Ok(Some(Effect::Deny)),
        Some(other) => Err(CaseError::Format(format!(
            "case '{}': expected must be Allow or Deny, not '{other}'",
            case.name
        ))),
    }
}

/// The case's grants as the evaluator sees them, named by `ids`.
fn grant_views<'a>(case: &'a Case, ids: &'a [String]) -> Vec<GrantView<'a>> {
    case.grants
        .iter()
        .zip(ids)
        .map(|(g, id)| GrantView {
            grant_id: id,
            grantee_principal: &g.grantee_principal,
            operations: &g.operations,
            constraints: g.constraints.as_ref().map(|c| GrantConstraintsView {
                encryption_context_equals: c.encryption_context_equals.as_ref(),
                encryption_context_subset: c.encryption_context_subset.as_ref(),
            }),
        })
        .collect()
}

/// The role of an assumed-role caller: given, or the role ARN of `aws:PrincipalArn`.
fn session_role_arn(case: &Case, req: &RequestContext) -> Option<String> {
    case.request.role_arn.clone().or_else(|| {
        if !case.request.principal_arn.contains(":assumed-role/") {
            return None;
        }
        req.get("aws:PrincipalArn")
            .and_then(|v| v.first())
            .filter(|a| a.contains(":role/"))
            .cloned()
    })
}

/// Loads and runs every case of a file. A case whose policies do not parse is an error.
pub fn run_text(text: &str) -> Result<Vec<CaseOutcome>, CaseError> {
    load_cases(text)?.iter().map(run_case).collect()
}

/// One line per outcome: `PASS|FAIL|----  name  Allow|Deny  summary`.
pub fn format_report(outcomes: &[CaseOutcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let status = match (o.expected, o.passed()) {
            (None, _) => "----",
            (Some(_), true) => "PASS",
            (Some(_), false) => "FAIL",
        };
        out.push_str(&format!(
            "{status}  {}  {}  {}\n",
            o.name,
            o.decision.effect.as_str(),
            o.decision.summary()
        ));
    }
    out
}
