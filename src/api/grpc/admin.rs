//! `p11kms.v1.AdminService`: operator tools (ExplainAccess, MigrateResidency) and the
//! console's operations (ListPrincipals, SearchAuditTrail, VerifyAuditTrail, GetHealth).

use super::convert::{from_message, to_message, ts};
use crate::audit::NodeReport;
use crate::core::admin::{
    ComponentHealth, DirectoryPrincipal, GetHealthRequest, GetHealthResponse,
    ListPrincipalsRequest, ListPrincipalsResponse, RequestPoint,
};
use crate::core::audit_trail::{
    problem_place, SearchAuditTrailRequest, SearchAuditTrailResponse, VerifyAuditTrailRequest,
    VerifyAuditTrailResponse,
};
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
    list_principals(ListPrincipalsRequest) -> ListPrincipalsResponse = ListPrincipalsRequest;
    search_audit_trail(SearchAuditTrailRequest) -> SearchAuditTrailResponse = SearchAuditTrailRequest;
    verify_audit_trail(VerifyAuditTrailRequest) -> VerifyAuditTrailResponse = VerifyAuditTrailRequest;
    get_health(GetHealthRequest) -> GetHealthResponse = GetHealthRequest;
}
}

from_message!(pb::ListPrincipalsRequest => ListPrincipalsRequest { page });
from_message!(pb::SearchAuditTrailRequest => SearchAuditTrailRequest {
    key_id, principal, operation, outcome, start_time, end_time, page
});
from_message!(pb::VerifyAuditTrailRequest => VerifyAuditTrailRequest {});
from_message!(pb::GetHealthRequest => GetHealthRequest {});

to_message!(page: ListPrincipalsResponse => pb::ListPrincipalsResponse {
    truncated = page.next_marker.is_some(),
    principals = page.principals.into_iter().map(principal).collect(),
    next_marker
});

/// One user or role on the wire.
fn principal(p: DirectoryPrincipal) -> pb::DirectoryPrincipal {
    pb::DirectoryPrincipal {
        arn: p.arn,
        r#type: p.principal_type.as_str().to_string(),
        name: p.name,
    }
}

// Each event is its stored record, as one JSON object.
to_message!(page: SearchAuditTrailResponse => pb::SearchAuditTrailResponse {
    truncated = page.next_marker.is_some(),
    events_json = page.events.iter().map(ToString::to_string).collect(),
    next_marker
});

impl From<VerifyAuditTrailResponse> for pb::VerifyAuditTrailResponse {
    fn from(r: VerifyAuditTrailResponse) -> Self {
        let node = r.node.as_deref();
        pb::VerifyAuditTrailResponse {
            verified: r.verified,
            nodes: r.nodes.into_iter().map(|n| trail_node(n, node)).collect(),
        }
    }
}

/// One node's report on the wire, each problem at its file and line when known.
fn trail_node(n: NodeReport, this_node: Option<&str>) -> pb::AuditTrailNode {
    let problems = n.report.problems.iter().map(|p| {
        let (file, line) = problem_place(p);
        pb::AuditTrailProblem {
            kind: p.kind.to_string(),
            file: file.unwrap_or_default(),
            line: line.unwrap_or_default(),
            detail: p.detail.clone(),
        }
    });
    pb::AuditTrailNode {
        node: n
            .node
            .as_deref()
            .or(this_node)
            .unwrap_or_default()
            .to_string(),
        records: n.report.records,
        checkpoints: n.report.checkpoints,
        problems: problems.collect(),
    }
}

impl From<GetHealthResponse> for pb::GetHealthResponse {
    fn from(r: GetHealthResponse) -> Self {
        let health = |h: ComponentHealth| pb::ComponentHealth {
            healthy: h.healthy,
            detail: h.detail,
        };
        pb::GetHealthResponse {
            hsm: Some(health(r.hsm)),
            audit: Some(health(r.audit)),
            interval_seconds: u32::try_from(r.interval_seconds).unwrap_or_default(),
            points: r.points.iter().map(request_point).collect(),
        }
    }
}

/// One point of the request series on the wire.
fn request_point(p: &RequestPoint) -> pb::RequestPoint {
    pb::RequestPoint {
        time: Some(ts(p.time_s * 1000)),
        requests: p.requests,
        errors: p.errors,
        latency_mean_ms: p.latency_mean_ms,
        latency_max_ms: p.latency_max_ms,
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
