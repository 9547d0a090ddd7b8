//! The STS operations the daemon serves: AssumeRole and GetCallerIdentity.
//!
//! AssumeRole is decided by the same algorithm as KMS requests, with the role's trust policy
//! in the place of the key policy: the trust policy must allow the caller, and across
//! accounts the caller's identity policies must allow `sts:AssumeRole` on the role too.

use std::sync::Arc;

use serde_json::{json, Value};

use super::authz::{AuthzRequest, CallerPolicies, CtxValue};
use super::operation::{redacted_debug, request_parameters, ResponseElements};
use super::{Kms, KmsError};
use crate::identity::sessions::{SessionError, SessionPolicy};
use crate::identity::Caller;
use crate::policy::{evaluate, EvalInput, Policy, PolicyKind};
use crate::time::iso8601;

/// AssumeRole input.
#[derive(Debug, Clone, Default)]
pub struct AssumeRoleRequest {
    pub role_arn: String,
    pub role_session_name: String,
    pub duration_seconds: Option<i32>,
    pub policy: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// AssumeRole output. `Debug` never prints the secret or the token.
pub struct AssumeRoleResponse {
    pub access_key_id: String,
    pub secret_access_key: zeroize::Zeroizing<String>,
    pub session_token: zeroize::Zeroizing<String>,
    pub expiration_ms: i64,
    pub assumed_role_id: String,
    pub assumed_role_arn: String,
}

redacted_debug! {
    AssumeRoleResponse { access_key_id, assumed_role_arn, .. };
}

request_parameters!(AssumeRoleRequest {
    role_arn,
    role_session_name,
    duration_seconds,
    policy,
    tags = session_tags,
});

/// AssumeRole's session tags as CloudTrail records them: `[{key, value}]`.
fn session_tags(r: &AssumeRoleRequest) -> Vec<Value> {
    let tag = |(k, v): &(String, String)| json!({"key": k, "value": v});
    r.tags.iter().map(tag).collect()
}

/// The access key id and expiry only; never the secret or the session token.
impl ResponseElements for AssumeRoleResponse {
    fn response_elements(&self) -> Value {
        json!({
            "credentials": {
                "accessKeyId": self.access_key_id,
                "expiration": iso8601(self.expiration_ms),
            },
            "assumedRoleUser": {
                "assumedRoleId": self.assumed_role_id,
                "arn": self.assumed_role_arn,
            },
        })
    }
}

/// GetCallerIdentity input: nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetCallerIdentityRequest;

request_parameters!(GetCallerIdentityRequest {});

impl ResponseElements for CallerIdentity {}

/// GetCallerIdentity output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub user_id: String,
    pub account: String,
    pub arn: String,
}

fn session_error(e: SessionError) -> KmsError {
    match e {
        SessionError::Validation(m) => KmsError::Validation(m),
        other => KmsError::LimitExceeded(other.to_string()),
    }
}

impl Kms {
    /// AssumeRole: temporary credentials for a session of a role.
    pub async fn assume_role(
        &self,
        caller: &Caller,
        req: AssumeRoleRequest,
    ) -> Result<AssumeRoleResponse, KmsError> {
        if req.role_arn.is_empty() {
            return Err(KmsError::validation("roleArn", "Member must not be null"));
        }
        let session_policy = match req.policy.as_deref().filter(|p| !p.is_empty()) {
            Some(text) => Some(SessionPolicy {
                compiled: Arc::new(
                    Policy::parse(text, PolicyKind::Session)
                        .map_err(|e| KmsError::MalformedPolicyDocument(e.to_string()))?,
                ),
                text: text.to_string(),
            }),
            None => None,
        };
        let directory = self.directory.current();
        let denied = || {
            KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {}",
                caller.principal_arn,
                req.role_arn.chars().take(256).collect::<String>()
            ))
        };
        let role = directory.role(&req.role_arn).ok_or_else(denied)?;
        let mut authz = AuthzRequest::new("sts:AssumeRole", &role.arn).with(
            "sts:RoleSessionName",
            CtxValue::one(req.role_session_name.as_str()),
        );
        if !req.tags.is_empty() {
            authz = authz.with(
                "aws:TagKeys",
                CtxValue::Many(req.tags.iter().map(|(k, _)| k.clone()).collect()),
            );
            for (k, v) in &req.tags {
                authz = authz.with(format!("aws:RequestTag/{k}"), CtxValue::one(v.as_str()));
            }
        }
        let ctx = self.request_context(caller, &authz);
        let policies = CallerPolicies::of(caller);
        let decision = evaluate(&EvalInput {
            key_account: Some(&role.account),
            key_policy: Some(role.trust_named()),
            ..policies.input(caller, &ctx)
        });
        if !decision.is_allow() {
            tracing::info!(principal = %caller.principal_arn, role = %role.arn, reason = %decision.summary(), "AssumeRole denied");
            return Err(KmsError::AccessDenied(decision.aws_message(
                &caller.principal_arn,
                "sts:AssumeRole",
                &role.arn,
            )));
        }
        let duration = match req.duration_seconds {
            None => 3600.min(role.max_session_duration).max(900),
            Some(d) if d < 0 => {
                return Err(KmsError::validation(
                    "durationSeconds",
                    "Member must have value greater than or equal to 900",
                ))
            }
            Some(d) => d as u32,
        };
        let issued = self
            .sessions
            .issue(
                role,
                &req.role_session_name,
                duration,
                session_policy,
                req.tags,
                self.now_ms(),
            )
            .map_err(session_error)?;
        // Stored (secret sealed on the HSM) before it is handed out, so the token works on
        // every node at once; a session that cannot be stored is not handed out at all.
        if let Err(e) = self.sessions.persist(&issued.access_key_id).await {
            tracing::error!(error = %e, "cannot store a role session");
            return Err(KmsError::DependencyTimeout(
                "The session could not be stored; no credentials were issued. You can retry \
                 the request."
                    .into(),
            ));
        }
        tracing::info!(principal = %caller.principal_arn, session = %issued.assumed_role_arn, expires = %iso8601(issued.expiration_ms), "role assumed");
        Ok(AssumeRoleResponse {
            access_key_id: issued.access_key_id,
            secret_access_key: issued.secret_access_key,
            session_token: issued.session_token,
            expiration_ms: issued.expiration_ms,
            assumed_role_id: issued.assumed_role_id,
            assumed_role_arn: issued.assumed_role_arn,
        })
    }

    /// GetCallerIdentity: who the caller is. Needs no permission, as in AWS.
    pub async fn get_caller_identity(
        &self,
        caller: &Caller,
        _req: GetCallerIdentityRequest,
    ) -> Result<CallerIdentity, KmsError> {
        Ok(CallerIdentity {
            user_id: caller.principal.userid().into_owned(),
            account: caller.account.clone(),
            arn: caller.principal_arn.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::RequestParameters;

    #[test]
    fn credentials_are_never_in_elements() {
        let a = AssumeRoleResponse {
            access_key_id: "ASIAX".into(),
            secret_access_key: zeroize::Zeroizing::new("SECRET-KEY-VALUE".into()),
            session_token: zeroize::Zeroizing::new("SESSION-TOKEN-VALUE".into()),
            expiration_ms: 0,
            assumed_role_id: "AROA:s".into(),
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/R/s".into(),
        };
        let s = a.response_elements().to_string();
        assert!(s.contains("ASIAX") && !s.contains("SECRET-KEY") && !s.contains("SESSION-TOKEN"));
        assert!(!format!("{a:?}").contains("SECRET-KEY"));
        let r = AssumeRoleRequest {
            role_arn: "arn:aws:iam::111122223333:role/R".into(),
            role_session_name: "s".into(),
            duration_seconds: Some(900),
            policy: None,
            tags: vec![("team".into(), "blue".into())],
        };
        assert_eq!(
            r.request_parameters(),
            json!({
                "roleArn": "arn:aws:iam::111122223333:role/R",
                "roleSessionName": "s",
                "durationSeconds": 900,
                "tags": [{"key": "team", "value": "blue"}],
            })
        );
    }
}
