//! `p11kms.v1.SecurityTokenService`: AssumeRole and GetCallerIdentity. Requests are signed
//! with SigV4 service name `sts` (or come with a client certificate).

use tonic::{Request, Response, Status};

use super::{opt, ts, Door};
use crate::core::sts::AssumeRoleRequest;
use crate::pb;
use crate::pb::security_token_service_server::SecurityTokenService;

const SERVICE: &str = "sts";

#[tonic::async_trait]
impl SecurityTokenService for Door {
    async fn assume_role(
        &self,
        request: Request<pb::AssumeRoleRequest>,
    ) -> Result<Response<pb::AssumeRoleResponse>, Status> {
        self.serve(
            "AssumeRole",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .assume_role(
                        &caller,
                        AssumeRoleRequest {
                            role_arn: r.role_arn,
                            role_session_name: r.role_session_name,
                            duration_seconds: r.duration_seconds,
                            policy: opt(r.policy),
                            tags: r
                                .tags
                                .into_iter()
                                .map(|t| (t.tag_key, t.tag_value))
                                .collect(),
                        },
                    )
                    .await?;
                Ok(pb::AssumeRoleResponse {
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
                })
            },
        )
        .await
    }

    async fn get_caller_identity(
        &self,
        request: Request<pb::GetCallerIdentityRequest>,
    ) -> Result<Response<pb::GetCallerIdentityResponse>, Status> {
        self.serve(
            "GetCallerIdentity",
            SERVICE,
            request,
            |kms, caller, _r| async move {
                let id = kms.get_caller_identity(&caller);
                Ok(pb::GetCallerIdentityResponse {
                    user_id: id.user_id,
                    account: id.account,
                    arn: id.arn,
                })
            },
        )
        .await
    }
}
