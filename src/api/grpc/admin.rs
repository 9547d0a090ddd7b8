//! `p11kms.v1.AdminService`: operator tools (ExplainAccess).

use super::convert::{from_message, to_message};
use crate::core::explain::{policy_type_name, ExplainRequest, ExplainResponse};
use crate::pb;
use crate::pb::admin_service_server::AdminService;

service_table! {
impl AdminService as TABLE, signed as "kms";
operations {
    explain_access(ExplainAccessRequest) -> ExplainAccessResponse = ExplainRequest;
}
}

from_message!(pb::ExplainAccessRequest => ExplainRequest {
    principal, action, key_id, encryption_context, source_ip, xks_request_metadata
});
to_message!(out: ExplainResponse => pb::ExplainAccessResponse {
    decision = out.decision_name().to_string(), reason = out.reason_name(),
    deciding_statements = deciding_statements(&out), message, resource
});

/// The statements that decided, by policy type and name.
fn deciding_statements(out: &ExplainResponse) -> Vec<pb::DecidingStatement> {
    out.decision
        .deciding
        .iter()
        .map(|s| pb::DecidingStatement {
            policy_type: policy_type_name(s),
            policy_name: s.policy_name.clone(),
            statement: s.statement.clone(),
        })
        .collect()
}
