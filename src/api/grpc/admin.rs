//! `p11kms.v1.AdminService`: operator tools (ExplainAccess).

use tonic::{Request, Response, Status};

use super::status::to_status;
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
        let caller = self.caller(&request, SERVICE)?;
        let r = request.into_inner();
        let source_ip = match r.source_ip.as_str() {
            "" => None,
            ip => Some(ip.parse().map_err(|_| {
                to_status(KmsError::validation(
                    "sourceIp",
                    "Member must be an IP address",
                ))
            })?),
        };
        let out = self
            .kms
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
            .await
            .map_err(to_status)?;
        let d = &out.decision;
        Ok(Response::new(pb::ExplainAccessResponse {
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
        }))
    }
}
