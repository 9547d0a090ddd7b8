//! `p11kms.v1.AdminService`: operator tools (ExplainAccess).

use super::FromMessage;
use crate::core::explain::{policy_type_name, ExplainRequest, ExplainResponse};
use crate::core::KmsError;
use crate::pb;
use crate::pb::admin_service_server::AdminService;

service_table! {
impl AdminService as TABLE, signed as "kms";
operations {
    explain_access(ExplainAccessRequest) -> ExplainAccessResponse = ExplainRequest;
}
}

impl FromMessage<pb::ExplainAccessRequest> for ExplainRequest {
    fn from_message(m: pb::ExplainAccessRequest) -> Result<Self, KmsError> {
        Ok(ExplainRequest {
            principal: m.principal,
            action: m.action,
            key_id: m.key_id,
            encryption_context: m.encryption_context,
            source_ip: (!m.source_ip.is_empty()).then_some(m.source_ip),
        })
    }
}

impl From<ExplainResponse> for pb::ExplainAccessResponse {
    fn from(out: ExplainResponse) -> Self {
        let d = &out.decision;
        pb::ExplainAccessResponse {
            decision: out.decision_name().to_string(),
            reason: out.reason_name(),
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
        }
    }
}
