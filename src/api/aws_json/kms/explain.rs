//! `P11kmsAdmin.ExplainAccess` on the AWS door.

use super::members::{from_json, to_json};
use crate::core::explain::{policy_type_name, ExplainRequest, ExplainResponse};
use crate::policy::DecidingStatement;

from_json! {
    ExplainRequest { principal, action, key_id, encryption_context, source_ip, xks_request_metadata }
}

// The decision is rendered by its names and its deciding statements.
to_json! {
    ExplainResponse {
        message, resource;
        "Decision" = |r| r.decision_name(),
        "Reason" = |r| r.reason_name(),
        "DecidingStatements" = |r| r.decision.deciding.clone(),
    }
    DecidingStatement { policy_name, statement; "PolicyType" = policy_type_name }
}
