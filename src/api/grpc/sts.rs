//! `p11kms.v1.SecurityTokenService`: AssumeRole and GetCallerIdentity. Requests are signed
//! with SigV4 service name `sts` (or come with a client certificate).

use super::convert::{from_message, to_message, ts};
use crate::core::sts::{
    AssumeRoleRequest, AssumeRoleResponse, CallerIdentity, GetCallerIdentityRequest,
};
use crate::pb;
use crate::pb::security_token_service_server::SecurityTokenService;

service_table! {
impl SecurityTokenService as TABLE, signed as "sts";
operations {
    assume_role(AssumeRoleRequest) -> AssumeRoleResponse = AssumeRoleRequest;
    get_caller_identity(GetCallerIdentityRequest) -> GetCallerIdentityResponse = GetCallerIdentityRequest;
}
}

from_message!(pb::AssumeRoleRequest => AssumeRoleRequest {
    role_arn, role_session_name, duration_seconds, policy, tags
});
from_message!(pb::GetCallerIdentityRequest => GetCallerIdentityRequest {});
to_message!(CallerIdentity => pb::GetCallerIdentityResponse { user_id, account, arn });

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
