//! Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies, and the checks CreateKey shares
//! (parse, principals that exist, the lockout safety check).

use std::sync::Arc;

use super::authz::{AuthzRequest, CtxValue};
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
        key_id: &str,
        name: &str,
    ) -> Result<(String, String), KmsError> {
        let name = policy_name(name)?;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:GetKeyPolicy", &resolved)
                .with("kms:PolicyName", CtxValue::one(name)),
        )?;
        check_state(&resolved.key, StateClass::Any)?;
        Ok((resolved.key.record.policy.clone(), name.to_string()))
    }

    /// ListKeyPolicies: always `["default"]`.
    pub async fn list_key_policies(
        &self,
        caller: &Caller,
        key_id: &str,
        limit: Option<i32>,
        marker: &str,
    ) -> Result<Vec<String>, KmsError> {
        super::validate::limit(limit)?;
        super::validate::decode_marker(marker)?;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:ListKeyPolicies", &resolved),
        )?;
        Ok(vec![DEFAULT_POLICY_NAME.to_string()])
    }

    /// PutKeyPolicy: validated, principals checked, lockout check unless bypassed.
    pub async fn put_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        name: &str,
        policy_text: &str,
        bypass_lockout_check: bool,
    ) -> Result<(), KmsError> {
        let name = match name {
            "" | DEFAULT_POLICY_NAME => DEFAULT_POLICY_NAME,
            other => {
                return Err(KmsError::Validation(format!(
                    "PolicyName {other:?} is not valid; the only key policy name is \"default\"."
                )))
            }
        };
        let compiled = compile_key_policy(policy_text)?;
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:PutKeyPolicy", &resolved)
                .with("kms:PolicyName", CtxValue::one(name))
                .with(
                    "kms:BypassPolicyLockoutSafetyCheck",
                    CtxValue::one(if bypass_lockout_check {
                        "true"
                    } else {
                        "false"
                    }),
                ),
        )?;
        self.check_policy_principals(&compiled)?;
        if !bypass_lockout_check {
            self.lockout_check(caller, &resolved.key, &compiled)?;
        }
        let text = policy_text.to_string();
        self.update_record(&resolved.key, |r| r.policy = text)
            .await?;
        Ok(())
    }
}
