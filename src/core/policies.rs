//! Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies, and the checks CreateKey shares
//! (parse, principals that exist, the lockout safety check).

use std::sync::Arc;

use super::authz::{AuthzRequest, CtxValue};
use super::operation::{request_parameters, Empty, Page, ResponseElements};
use super::{check_state, Kms, KmsError, StateClass};
use crate::identity::Caller;
use crate::policy::model::PrincipalSpec;
use crate::policy::{Policy, PolicyError, PolicyKind};

/// The only key policy name KMS supports.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// Maps a policy parse failure to its AWS exception.
pub(crate) fn policy_error(e: PolicyError) -> KmsError {
    match e {
        PolicyError::TooLarge { .. } => KmsError::LimitExceeded(e.to_string()),
        PolicyError::Malformed(m) => KmsError::MalformedPolicyDocument(m),
    }
}

/// Compiles a key policy document (size limit, grammar).
pub(crate) fn compile_key_policy(text: &str) -> Result<Arc<Policy>, KmsError> {
    if text.is_empty() {
        return Err(KmsError::validation(
            "policy",
            "Member must have length greater than or equal to 1",
        ));
    }
    Policy::parse(text, PolicyKind::Key)
        .map(Arc::new)
        .map_err(policy_error)
}

/// GetKeyPolicy input.
#[derive(Debug, Clone, Default)]
pub struct GetKeyPolicyRequest {
    pub key_id: String,
    /// `default` when empty.
    pub policy_name: String,
}

/// GetKeyPolicy output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetKeyPolicyResponse {
    pub policy: String,
    pub policy_name: String,
}

/// PutKeyPolicy input.
#[derive(Debug, Clone, Default)]
pub struct PutKeyPolicyRequest {
    pub key_id: String,
    /// `default` when empty.
    pub policy_name: String,
    pub policy: String,
    pub bypass_policy_lockout_safety_check: bool,
}

/// ListKeyPolicies input.
#[derive(Debug, Clone, Default)]
pub struct ListKeyPoliciesRequest {
    pub key_id: String,
    /// `Limit` and `Marker`.
    pub page: Page,
}

/// ListKeyPolicies output: always `["default"]`, never truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKeyPoliciesResponse {
    pub policy_names: Vec<String>,
}

// A key policy is not a secret: the trail records the document.
request_parameters! {
    GetKeyPolicyRequest { key_id, policy_name };
    PutKeyPolicyRequest { key_id, policy_name, policy, bypass_policy_lockout_safety_check };
    ListKeyPoliciesRequest { key_id };
}

impl ResponseElements for GetKeyPolicyResponse {}
impl ResponseElements for ListKeyPoliciesResponse {}

fn policy_name(name: &str) -> Result<&'static str, KmsError> {
    match name {
        "" | DEFAULT_POLICY_NAME => Ok(DEFAULT_POLICY_NAME),
        other => Err(KmsError::NotFound(format!(
            "Policy {other:?} does not exist; the only key policy name is \"default\"."
        ))),
    }
}

impl Kms {
    /// Every AWS principal a key policy names must exist: an account we know, or a user, role
    /// or session of one (kms-spec 3.3). `*` is always allowed.
    pub(crate) fn check_policy_principals(&self, policy: &Policy) -> Result<(), KmsError> {
        let directory = self.directory.current();
        for (i, st) in policy.document().statements.iter().enumerate() {
            let Some((PrincipalSpec::Map { aws, .. }, _)) = &st.principal else {
                continue;
            };
            for p in aws {
                if p == "*" || directory.principal_exists(p) {
                    continue;
                }
                return Err(KmsError::MalformedPolicyDocument(format!(
                    "Statement[{i}]: the policy contains a principal that does not exist: {p}"
                )));
            }
        }
        Ok(())
    }

    /// GetKeyPolicy.
    pub async fn get_key_policy(
        &self,
        caller: &Caller,
        req: GetKeyPolicyRequest,
    ) -> Result<GetKeyPolicyResponse, KmsError> {
        let name = policy_name(&req.policy_name)?;
        let resolved = self.resolve(caller, &req.key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:GetKeyPolicy", &resolved)
                .with("kms:PolicyName", CtxValue::one(name)),
        )?;
        check_state(&resolved.key, StateClass::Any)?;
        Ok(GetKeyPolicyResponse {
            policy: resolved.key.record.policy.to_string(),
            policy_name: name.to_string(),
        })
    }

    /// ListKeyPolicies: always `["default"]`.
    pub async fn list_key_policies(
        &self,
        caller: &Caller,
        req: ListKeyPoliciesRequest,
    ) -> Result<ListKeyPoliciesResponse, KmsError> {
        req.page.start()?;
        let resolved = self.resolve(caller, &req.key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:ListKeyPolicies", &resolved),
        )?;
        Ok(ListKeyPoliciesResponse {
            policy_names: vec![DEFAULT_POLICY_NAME.to_string()],
        })
    }

    /// PutKeyPolicy: validated, principals checked, lockout check unless bypassed.
    pub async fn put_key_policy(
        &self,
        caller: &Caller,
        req: PutKeyPolicyRequest,
    ) -> Result<Empty, KmsError> {
        let bypass_lockout_check = req.bypass_policy_lockout_safety_check;
        let name = match req.policy_name.as_str() {
            "" | DEFAULT_POLICY_NAME => DEFAULT_POLICY_NAME,
            other => {
                return Err(KmsError::Validation(format!(
                    "PolicyName {other:?} is not valid; the only key policy name is \"default\"."
                )))
            }
        };
        let compiled = compile_key_policy(&req.policy)?;
        let bypass = if bypass_lockout_check {
            "true"
        } else {
            "false"
        };
        let (compiled, policy) = (&compiled, &req.policy);
        self.change_key(caller, &req.key_id, move |resolved| async move {
            self.authorize(
                caller,
                AuthzRequest::on_key("kms:PutKeyPolicy", &resolved)
                    .with("kms:PolicyName", CtxValue::one(name))
                    .with("kms:BypassPolicyLockoutSafetyCheck", CtxValue::one(bypass)),
            )?;
            self.check_policy_principals(compiled)?;
            if !bypass_lockout_check {
                self.lockout_check(caller, &resolved.key, compiled)?;
            }
            let policy = policy.clone();
            self.update_record(&resolved.key, |r| r.policy = policy.into())
                .await
        })
        .await?;
        Ok(Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::RequestParameters;
    use serde_json::json;

    #[test]
    fn policy_parameters_are_the_members_sent() {
        let put = PutKeyPolicyRequest {
            key_id: "k".into(),
            policy_name: String::new(),
            policy: "{}".into(),
            bypass_policy_lockout_safety_check: false,
        };
        assert_eq!(
            put.request_parameters(),
            json!({"keyId": "k", "policy": "{}"})
        );
        let get = GetKeyPolicyRequest {
            key_id: "k".into(),
            policy_name: "default".into(),
        };
        assert_eq!(
            get.request_parameters(),
            json!({"keyId": "k", "policyName": "default"})
        );
        let list = ListKeyPoliciesRequest {
            key_id: "k".into(),
            page: Page {
                limit: Some(1),
                marker: Some("m".into()),
            },
        };
        assert_eq!(list.request_parameters(), json!({"keyId": "k"}));
    }
}
