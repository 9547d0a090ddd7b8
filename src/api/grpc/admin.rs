//! `p11kms.v1.AdminService`: operator tools (ExplainAccess, MigrateResidency).

use super::convert::{from_message, to_message};
use crate::core::explain::{policy_type_name, ExplainRequest, ExplainResponse};
use crate::core::migrate::{
    MigrateResidencyRequest, MigrateResidencyResponse, SkipReason, SkippedKey,
};
use crate::core::residency::Residency;
use crate::core::KmsError;
use crate::pb;
use crate::pb::admin_service_server::AdminService;

service_table! {
impl AdminService as TABLE, signed as "kms";
operations {
    explain_access(ExplainAccessRequest) -> ExplainAccessResponse = ExplainRequest;
    migrate_residency(MigrateResidencyRequest) -> MigrateResidencyResponse = MigrateResidencyRequest;
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

impl super::FromMessage<pb::MigrateResidencyRequest> for MigrateResidencyRequest {
    fn from_message(m: pb::MigrateResidencyRequest) -> Result<Self, KmsError> {
        let to = match pb::Residency::try_from(m.to) {
            Ok(pb::Residency::Token) => Some(Residency::Token),
            Ok(pb::Residency::Wrapped) => Some(Residency::Wrapped),
            Ok(pb::Residency::Unspecified) => None,
            Err(_) => {
                let rule = "Member must be RESIDENCY_TOKEN or RESIDENCY_WRAPPED";
                return Err(KmsError::validation("to", rule));
            }
        };
        Ok(MigrateResidencyRequest {
            to,
            limit: m.limit,
            after: Some(m.after).filter(|a| !a.is_empty()),
            custom_key_store_id: Some(m.custom_key_store_id).filter(|s| !s.is_empty()),
        })
    }
}

impl From<MigrateResidencyResponse> for pb::MigrateResidencyResponse {
    fn from(r: MigrateResidencyResponse) -> Self {
        pb::MigrateResidencyResponse {
            moved_key_ids: r.moved,
            remaining: r.remaining,
            skipped: r.skipped.into_iter().map(skipped_key).collect(),
            next_after: r.next_after.unwrap_or_default(),
            leftovers_destroyed: r.leftovers_destroyed,
        }
    }
}

/// A skipped key on the wire.
fn skipped_key(s: SkippedKey) -> pb::SkippedKey {
    let reason = match s.reason {
        SkipReason::NeverExtractable => pb::MigrationSkipReason::MigrationSkipNeverExtractable,
        SkipReason::KeyPair => pb::MigrationSkipReason::MigrationSkipKeyPair,
        SkipReason::Changed => pb::MigrationSkipReason::MigrationSkipChanged,
    };
    pb::SkippedKey {
        key_id: s.key_id,
        reason: reason as i32,
        detail: s.detail,
    }
}
