//! `p11kms.v1.AdminService`: operator tools (ExplainAccess).

use tonic::{Request, Response, Status};

use super::Door;
use crate::core::explain::{policy_type_name, ExplainRequest};
use crate::core::KmsError;
use crate::pb;
use crate::pb::admin_service_server::AdminService;

const SERVICE: &str = "kms";

#[tonic::async_trait]
impl AdminService for Door {
    async fn explain_access(
        &self,
        request: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        self.serve(
            "ExplainAccess",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let source_ip = match r.source_ip.as_str() {
                    "" => None,
                    ip => Some(ip.parse().map_err(|_| {
                        KmsError::validation("sourceIp", "Member must be an IP address")
                    })?),
                };
                let out = kms
                    .explain(
                        &caller,
                        ExplainRequest {
                            principal: r.principal,
                            action: r.action,
                            key_id: r.key_id,
                            encryption_context: r.encryption_context,
                            source_ip,
                        },
                    )
                    .await?;
                let d = &out.decision;
                Ok(pb::ExplainAccessResponse {
                    decision: if d.is_allow() { "Allow" } else { "Deny" }.to_string(),
                    reason: format!("{:?}", d.reason),
                    deciding_statements: d
                        .deciding
                        .iter()
                        .map(|s| pb::DecidingStatement {
                            policy_type: policy_type_name(s),
                            policy_name: s.policy_name.clone(),
                            statement: s.statement.clone(),
                        })
                        .collect(),
                    message: out.message,
                    resource: out.resource,
                })
            },
        )
        .await
    }
}
