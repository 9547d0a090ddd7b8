//! The console's operator operations on the AWS door (`X-Amz-Target:
//! P11kmsAdmin.<Operation>`): ListPrincipals, SearchAuditTrail, VerifyAuditTrail, GetHealth.
//!
//! AWS's model does not have them, so no model check reads their bodies first: each member is
//! read here, and a member of the wrong type is a ValidationException naming the member and
//! the type it must have, never the value (the console's contract; [`super::admin_op`] turns
//! a read error into that answer). Times are epoch seconds as JSON numbers, as AWS writes
//! `CreationDate`.

use serde::de::Error as _;
use serde_json::{json, Map, Value};

use super::members::{Member, Members, Render};
use super::FromJson;
use crate::audit::NodeReport;
use crate::core::admin::{
    DirectoryPrincipal, DirectoryPrincipalType, GetHealthRequest, GetHealthResponse,
    ListPrincipalsRequest, ListPrincipalsResponse, RequestPoint,
};
use crate::core::audit_trail::{
    problem_place, AuditOutcome, SearchAuditTrailRequest, SearchAuditTrailResponse,
    VerifyAuditTrailRequest, VerifyAuditTrailResponse,
};
use crate::core::operation::Page;
use crate::encoding::wire_case;

/// Reads the field `field`; a wrong type is refused in AWS's words, naming the member and
/// what it must be (`expected`).
fn read<T: Member>(m: &mut Members, field: &str, expected: &str) -> Result<T, serde_json::Error> {
    m.read(field).map_err(|_| {
        serde_json::Error::custom(format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member \
             must be {expected}",
            wire_case(field, false)
        ))
    })
}

/// The members of a body (an object: the door decoded it so).
fn members(body: Value) -> Result<Members, serde_json::Error> {
    Members::new(body)
        .map_err(|_| serde_json::Error::custom("The request body must be a JSON object."))
}

/// `Limit` and `Marker`.
fn page(m: &mut Members) -> Result<Page, serde_json::Error> {
    Ok(Page {
        limit: read(m, "limit", "an integer")?,
        marker: read(m, "marker", "a string")?,
    })
}

/// A time member: epoch seconds (a JSON number), as Unix milliseconds.
fn time(m: &mut Members, field: &str) -> Result<Option<i64>, serde_json::Error> {
    let secs: Option<f64> = read(m, field, "a number (epoch seconds)")?;
    Ok(secs.map(|s| (s * 1000.0).round() as i64))
}

impl FromJson for ListPrincipalsRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let mut m = members(body)?;
        Ok(ListPrincipalsRequest {
            page: page(&mut m)?,
        })
    }
}

impl FromJson for SearchAuditTrailRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let mut m = members(body)?;
        let outcome = "one of: [Success, Failure]";
        Ok(SearchAuditTrailRequest {
            key_id: read(&mut m, "key_id", "a string")?,
            principal: read(&mut m, "principal", "a string")?,
            operation: read(&mut m, "operation", "a string")?,
            outcome: read::<Option<AuditOutcome>>(&mut m, "outcome", outcome)?,
            start_time: time(&mut m, "start_time")?,
            end_time: time(&mut m, "end_time")?,
            page: page(&mut m)?,
        })
    }
}

impl FromJson for VerifyAuditTrailRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        members(body).map(|_| VerifyAuditTrailRequest)
    }
}

impl FromJson for GetHealthRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        members(body).map(|_| GetHealthRequest)
    }
}

impl Render for DirectoryPrincipalType {
    fn render(self) -> Value {
        Value::from(self.as_str())
    }
}

impl Render for DirectoryPrincipal {
    fn render(self) -> Value {
        json!({"Arn": self.arn, "Type": self.principal_type.render(), "Name": self.name})
    }
}

/// A page's `Truncated` and, when there is a next page, `NextMarker`.
fn paged(mut out: Map<String, Value>, next_marker: Option<String>) -> Value {
    out.insert("Truncated".into(), Value::Bool(next_marker.is_some()));
    if let Some(m) = next_marker {
        out.insert("NextMarker".into(), Value::String(m));
    }
    Value::Object(out)
}

impl Render for ListPrincipalsResponse {
    fn render(self) -> Value {
        let mut out = Map::new();
        out.insert("Principals".into(), self.principals.render());
        paged(out, self.next_marker)
    }
}

/// The events exactly as the trail stores them (their `null` members included).
impl Render for SearchAuditTrailResponse {
    fn render(self) -> Value {
        let mut out = Map::new();
        out.insert("Events".into(), Value::Array(self.events));
        paged(out, self.next_marker)
    }
}

/// One node's report: its counts and its problems, each at its file and line when known.
fn node_report(r: NodeReport, this_node: Option<&str>) -> Value {
    let problems: Vec<Value> = r
        .report
        .problems
        .iter()
        .map(|p| {
            let (file, line) = problem_place(p);
            // File and Line are left out when the problem sits on no line.
            super::compact(
                json!({"Kind": p.kind.to_string(), "File": file, "Line": line, "Detail": p.detail}),
            )
        })
        .collect();
    json!({
        "Node": r.node.as_deref().or(this_node).unwrap_or_default(),
        "Records": r.report.records,
        "Checkpoints": r.report.checkpoints,
        "Problems": problems,
    })
}

impl Render for VerifyAuditTrailResponse {
    fn render(self) -> Value {
        let node = self.node.as_deref();
        let nodes: Vec<Value> = self
            .nodes
            .into_iter()
            .map(|r| node_report(r, node))
            .collect();
        json!({"Verified": self.verified, "Nodes": nodes})
    }
}

/// One point of the request series (`Time` in epoch seconds).
fn point(p: &RequestPoint) -> Value {
    json!({
        "Time": p.time_s,
        "Requests": p.requests,
        "Errors": p.errors,
        "LatencyMeanMs": p.latency_mean_ms,
        "LatencyMaxMs": p.latency_max_ms,
    })
}

impl Render for GetHealthResponse {
    fn render(self) -> Value {
        json!({
            "Hsm": {"Healthy": self.hsm.healthy, "Detail": self.hsm.detail},
            "Audit": {"Healthy": self.audit.healthy, "Detail": self.audit.detail},
            "Requests": {
                "IntervalSeconds": self.interval_seconds,
                "Points": self.points.iter().map(point).collect::<Vec<_>>(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T: FromJson + std::fmt::Debug>(body: Value) -> String {
        T::from_json(body).unwrap_err().to_string()
    }

    #[test]
    fn wrong_types_name_the_member_never_the_value() {
        let m = refused::<SearchAuditTrailRequest>(json!({"Outcome": "SECRET-ish"}));
        assert!(m.contains("'outcome'") && m.contains("Success"), "{m}");
        assert!(!m.contains("SECRET"), "{m}");
        let m = refused::<SearchAuditTrailRequest>(json!({"StartTime": "yesterday"}));
        assert!(m.contains("'startTime'") && m.contains("number"), "{m}");
        let m = refused::<ListPrincipalsRequest>(json!({"Limit": "10"}));
        assert!(m.contains("'limit'") && m.contains("integer"), "{m}");
        let m = refused::<ListPrincipalsRequest>(json!({"Marker": 5}));
        assert!(m.contains("'marker'"), "{m}");
        let r = SearchAuditTrailRequest::from_json(json!({
            "KeyId": "k", "Outcome": "Failure", "StartTime": 1.5, "EndTime": 2, "Limit": 3
        }))
        .unwrap();
        assert_eq!(r.outcome, Some(AuditOutcome::Failure));
        assert_eq!(
            (r.start_time, r.end_time, r.page.limit),
            (Some(1500), Some(2000), Some(3))
        );
    }

    #[test]
    fn answers_follow_the_contract() {
        let body = ListPrincipalsResponse {
            principals: vec![DirectoryPrincipal {
                arn: "arn:aws:iam::111122223333:role/r".into(),
                principal_type: DirectoryPrincipalType::Role,
                name: "r".into(),
            }],
            next_marker: None,
        }
        .render();
        assert_eq!(
            body,
            json!({"Principals": [{"Arn": "arn:aws:iam::111122223333:role/r", "Type": "Role",
                   "Name": "r"}], "Truncated": false})
        );
        let events = vec![json!({"eventName": "Encrypt", "sourceIPAddress": null})];
        let body = SearchAuditTrailResponse {
            events: events.clone(),
            next_marker: Some("m".into()),
        }
        .render();
        assert_eq!(
            body,
            json!({"Events": events, "Truncated": true, "NextMarker": "m"})
        );
    }

    #[test]
    fn a_verification_names_file_and_line_when_it_has_them() {
        use crate::audit::{Problem, ProblemKind, VerifyReport};
        let problem = |kind, location: Option<&str>| Problem {
            sequence: Some(7),
            kind,
            location: location.map(str::to_string),
            detail: "d".into(),
        };
        let report = VerifyReport {
            records: 9,
            checkpoints: 2,
            problems: vec![
                problem(ProblemKind::Edited, Some("audit-000001.jsonl:7")),
                problem(ProblemKind::Deleted, None),
            ],
            ..Default::default()
        };
        let body = VerifyAuditTrailResponse {
            verified: false,
            nodes: vec![NodeReport { node: None, report }],
            node: Some("n1".into()),
        }
        .render();
        assert_eq!(
            body,
            json!({"Verified": false, "Nodes": [{"Node": "n1", "Records": 9, "Checkpoints": 2,
            "Problems": [
                {"Kind": "edited", "File": "audit-000001.jsonl", "Line": 7, "Detail": "d"},
                {"Kind": "deleted", "Detail": "d"},
            ]}]})
        );
    }
}
