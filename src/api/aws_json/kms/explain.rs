//! `P11kmsAdmin.ExplainAccess` on the AWS door.

use serde_json::{json, Value};

use super::{parse, Context, FromJson, ToJson};
use crate::core::explain::{policy_type_name, ExplainRequest, ExplainResponse};

input!(ExplainIn {
    principal: Option<String>,
    action: Option<String>,
    key_id: Option<String>,
    encryption_context: Context,
    source_ip: Option<String>,
});

impl FromJson for ExplainRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: ExplainIn = parse(body)?;
        Ok(ExplainRequest {
            principal: r.principal.unwrap_or_default(),
            action: r.action.unwrap_or_default(),
            key_id: r.key_id.unwrap_or_default(),
            encryption_context: r.encryption_context.unwrap_or_default(),
            source_ip: r.source_ip,
        })
    }
}

impl ToJson for ExplainResponse {
    fn to_json(self) -> Value {
        let statements: Vec<Value> = self
            .decision
            .deciding
            .iter()
            .map(|s| {
                json!({
                    "PolicyType": policy_type_name(s),
                    "PolicyName": s.policy_name,
                    "Statement": s.statement,
                })
            })
            .collect();
        json!({
            "Decision": self.decision_name(),
            "Reason": self.reason_name(),
            "DecidingStatements": statements,
            "Message": self.message,
            "Resource": self.resource,
        })
    }
}
