//! `p11kms.v1.SecurityTokenService`: AssumeRole and GetCallerIdentity. Requests are signed
//! with SigV4 service name `sts` (or come with a client certificate).

use super::{opt, ts, FromMessage};
use crate::core::sts::{
    AssumeRoleRequest, AssumeRoleResponse, CallerIdentity, GetCallerIdentityRequest,
};
use crate::core::KmsError;
use crate::pb;
use crate::pb::security_token_service_server::SecurityTokenService;

service_table! {
impl SecurityTokenService as TABLE, signed as "sts";
operations {
    assume_role(AssumeRoleRequest) -> AssumeRoleResponse = AssumeRoleRequest;
    get_caller_identity(GetCallerIdentityRequest) -> GetCallerIdentityResponse = GetCallerIdentityRequest;
}
}

impl FromMessage<pb::AssumeRoleRequest> for AssumeRoleRequest {
    fn from_message(m: pb::AssumeRoleRequest) -> Result<Self, KmsError> {
        Ok(AssumeRoleRequest {
            role_arn: m.role_arn,
            role_session_name: m.role_session_name,
            duration_seconds: m.duration_seconds,
            policy: opt(m.policy),
            tags: m
                .tags
                .into_iter()
                .map(|t| (t.tag_key, t.tag_value))
                .collect(),
        })
    }
}

/// The secret and the session token leave their zeroizing buffers here, into the message.
impl From<AssumeRoleResponse> for pb::AssumeRoleResponse {
    fn from(out: AssumeRoleResponse) -> Self {
        pb::AssumeRoleResponse {
            credentials: Some(pb::Credentials {
                access_key_id: out.access_key_id,
                secret_access_key: out.secret_access_key.to_string(),
                session_token: out.session_token.to_string(),
                expiration: Some(ts(out.expiration_ms)),
            }),
            assumed_role_user: Some(pb::AssumedRoleUser {
                assumed_role_id: out.assumed_role_id,
                arn: out.assumed_role_arn,
            }),
        }
    }
}

impl FromMessage<pb::GetCallerIdentityRequest> for GetCallerIdentityRequest {
    fn from_message(_: pb::GetCallerIdentityRequest) -> Result<Self, KmsError> {
        Ok(GetCallerIdentityRequest)
    }
}

impl From<CallerIdentity> for pb::GetCallerIdentityResponse {
    fn from(id: CallerIdentity) -> Self {
        pb::GetCallerIdentityResponse {
            user_id: id.user_id,
            account: id.account,
            arn: id.arn,
        }
    }
}
