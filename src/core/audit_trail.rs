//! SearchAuditTrail and VerifyAuditTrail (issue 21): this node's audit trail, read from its
//! segment files in the audit directory the server wired ([`super::admin::AdminWiring`]).
//!
//! Search reads the files newest first, line by line from the end, and stops as soon as the
//! page is full and one more match proves there is a next page: the work is bounded by the
//! files and the page, never by anything the caller names. Only `event` records are events
//! (checkpoints and segment starts are skipped); an event is answered exactly as stored
//! (records are scrubbed of secrets when written). Its marker is the (segment, sequence) of
//! the last event answered, sealed by [`super::admin::Markers`].
//!
//! Verify runs the verifier of `p11kms audit verify` ([`crate::audit::verify_trails`]) on
//! this node's files with the daemon's audit public key.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::authz::AuthzRequest;
use super::operation::{request_parameters, Page, ResponseElements};
use super::{Kms, KmsError};
use crate::audit::{NodeReport, Problem, ProblemKind};
use crate::identity::Caller;
use crate::wire_enum::wire_enum;

wire_enum!(
    /// Which outcome SearchAuditTrail matches.
    AuditOutcome {
        /// The request succeeded (no `errorCode`; an intent record is not an outcome).
        Success,
        /// The request failed with any error.
        Failure,
    }
);

/// SearchAuditTrail input: every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct SearchAuditTrailRequest {
    /// A key id or key ARN that the event's `resources` name.
    pub key_id: Option<String>,
    /// The caller ARN (`userIdentity.arn`).
    pub principal: Option<String>,
    /// The operation (`eventName`).
    pub operation: Option<String>,
    /// Success or failure.
    pub outcome: Option<AuditOutcome>,
    /// Events at or after this time, Unix milliseconds.
    pub start_time: Option<i64>,
    /// Events at or before this time, Unix milliseconds.
    pub end_time: Option<i64>,
    /// `Limit` (1-500, default 50) and `Marker`.
    pub page: Page,
}

/// A time filter as the trail writes times.
fn iso(t: &Option<i64>) -> Option<String> {
    t.map(crate::time::iso8601_ms)
}

fn start_time(r: &SearchAuditTrailRequest) -> Option<String> {
    iso(&r.start_time)
}

fn end_time(r: &SearchAuditTrailRequest) -> Option<String> {
    iso(&r.end_time)
}

request_parameters!(SearchAuditTrailRequest {
    key_id, principal, operation, outcome, start_time = start_time, end_time = end_time, page
});

/// SearchAuditTrail output: newest first.
#[derive(Debug, Clone, Default)]
pub struct SearchAuditTrailResponse {
    /// The event records, exactly as stored.
    pub events: Vec<Value>,
    /// Where the next page starts, when there is one.
    pub next_marker: Option<String>,
}

// The events are not recorded again: the trail already holds them.
impl ResponseElements for SearchAuditTrailResponse {}

/// VerifyAuditTrail input: nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyAuditTrailRequest;

request_parameters!(VerifyAuditTrailRequest {});

/// VerifyAuditTrail output.
#[derive(Debug, Clone)]
pub struct VerifyAuditTrailResponse {
    /// Whether every node's chain and every checkpoint verified.
    pub verified: bool,
    /// The verifier's report per node (this node's only).
    pub nodes: Vec<NodeReport>,
    /// This node's id, for a report whose node is `None` (a single node).
    pub node: Option<String>,
}

impl ResponseElements for VerifyAuditTrailResponse {}

/// The operation name SearchAuditTrail seals its markers for.
const SEARCH: &str = "SearchAuditTrail";

/// The longest filter string accepted.
const MAX_FILTER_LEN: usize = 2048;

/// Where a page stops: the last event answered, by segment index and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    segment: u64,
    sequence: u64,
}

impl Position {
    fn encode(self) -> String {
        format!("{}:{}", self.segment, self.sequence)
    }

    /// Only positions this module sealed reach here; anything else is refused all the same.
    fn decode(s: &str) -> Result<Position, KmsError> {
        let bad = || KmsError::validation("marker", "Member must be a NextMarker");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        Ok(Position {
            segment: a.parse().map_err(|_| bad())?,
            sequence: b.parse().map_err(|_| bad())?,
        })
    }
}

/// A checked SearchAuditTrail filter.
#[derive(Debug, Clone, Default)]
struct Filter {
    key_id: Option<String>,
    principal: Option<String>,
    operation: Option<String>,
    outcome: Option<AuditOutcome>,
    start: Option<String>,
    end: Option<String>,
}

/// A filter string: empty is absent; longer than [`MAX_FILTER_LEN`] is refused.
fn filter_text(member: &str, v: &Option<String>) -> Result<Option<String>, KmsError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.chars().count() > MAX_FILTER_LEN => Err(KmsError::validation(
            member,
            &format!("Member must have length less than or equal to {MAX_FILTER_LEN}"),
        )),
        Some(s) => Ok(Some(s.to_string())),
    }
}

impl Filter {
    fn new(req: &SearchAuditTrailRequest) -> Result<Filter, KmsError> {
        if let (Some(s), Some(e)) = (req.start_time, req.end_time) {
            if s > e {
                return Err(KmsError::Validation(
                    "StartTime must not be after EndTime.".into(),
                ));
            }
        }
        Ok(Filter {
            key_id: filter_text("keyId", &req.key_id)?,
            principal: filter_text("principal", &req.principal)?,
            operation: filter_text("operation", &req.operation)?,
            outcome: req.outcome,
            start: iso(&req.start_time),
            end: iso(&req.end_time),
        })
    }

    /// Whether an event record matches every filter given.
    fn matches(&self, ev: &Value) -> bool {
        let time = ev["eventTime"].as_str().unwrap_or_default();
        self.operation
            .as_ref()
            .is_none_or(|o| ev["eventName"] == o.as_str())
            && self
                .principal
                .as_ref()
                .is_none_or(|p| ev["userIdentity"]["arn"] == p.as_str())
            && self.key_id.as_ref().is_none_or(|k| names_key(ev, k))
            && self.outcome.is_none_or(|o| outcome_is(ev, o))
            && self.start.as_ref().is_none_or(|s| time >= s.as_str())
            && self.end.as_ref().is_none_or(|e| time <= e.as_str())
    }
}

/// Whether the event's `resources` name the key (by ARN, or by id at the end of an ARN).
fn names_key(ev: &Value, key: &str) -> bool {
    let Some(resources) = ev["resources"].as_array() else {
        return false;
    };
    resources
        .iter()
        .filter_map(|r| r["ARN"].as_str())
        .any(|arn| {
            if key.starts_with("arn:") {
                arn == key
            } else {
                arn.strip_suffix(key)
                    .is_some_and(|head| head.ends_with(":key/"))
            }
        })
}

/// Whether the event ended as `outcome`.
fn outcome_is(ev: &Value, outcome: AuditOutcome) -> bool {
    let failed = ev.get("errorCode").is_some_and(|c| !c.is_null());
    match outcome {
        AuditOutcome::Failure => failed,
        AuditOutcome::Success => !failed && ev.get("phase").is_none_or(Value::is_null),
    }
}

/// One page of matching events, newest first, after `after`; and the position of the last
/// event answered when more follow.
fn search(
    dir: &Path,
    node: Option<&str>,
    filter: &Filter,
    after: Option<Position>,
    limit: usize,
) -> std::io::Result<(Vec<Value>, Option<Position>)> {
    let mut files = crate::audit::writer::list_segments(dir, node)?;
    files.reverse();
    let mut out = Vec::new();
    let mut last = None;
    for (segment, name) in files {
        if after.is_some_and(|a| segment > a.segment) {
            continue;
        }
        let mut lines = LinesBackwards::open(&dir.join(&name), BLOCK)?;
        while let Some(line) = lines.next_line()? {
            let Some((sequence, ev)) = event_of(&line) else {
                continue;
            };
            let here = Position { segment, sequence };
            if after.is_some_and(|a| segment == a.segment && sequence >= a.sequence) {
                continue;
            }
            if !filter.matches(&ev) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, last));
            }
            last = Some(here);
            out.push(ev);
        }
    }
    Ok((out, None))
}

/// How much of a segment file a search reads at a time, from its end.
const BLOCK: u64 = 256 * 1024;

/// The lines of a file from its last to its first, read in blocks from the end: a search
/// that fills its page early reads only the tail of a segment (up to 64 MiB by default).
/// Runs of NUL bytes alone (preallocated space, never part of a record) read as empty.
struct LinesBackwards {
    file: std::fs::File,
    /// Where the bytes not yet read end.
    pos: u64,
    block: u64,
    /// The bytes before the first newline of what was read: a line whose start is not read
    /// yet.
    carry: Vec<u8>,
    /// Complete lines read, in file order (the next one is the last).
    lines: Vec<Vec<u8>>,
}

impl LinesBackwards {
    fn open(path: &Path, block: u64) -> std::io::Result<LinesBackwards> {
        let file = std::fs::File::open(path)?;
        let pos = file.metadata()?.len();
        Ok(LinesBackwards {
            file,
            pos,
            block,
            carry: Vec::new(),
            lines: Vec::new(),
        })
    }

    /// The line before the last one returned (without its newline), or `None` at the start.
    fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::{Read, Seek, SeekFrom};
        loop {
            if let Some(line) = self.lines.pop() {
                return Ok(Some(line));
            }
            if self.pos == 0 {
                let rest = std::mem::take(&mut self.carry);
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let n = self.block.min(self.pos);
            self.pos -= n;
            let mut bytes = vec![0u8; n as usize];
            self.file.seek(SeekFrom::Start(self.pos))?;
            self.file.read_exact(&mut bytes)?;
            bytes.extend_from_slice(&self.carry);
            // A piece of nothing but NULs is unused space (a record never holds a NUL).
            let piece = |p: &[u8]| {
                if p.iter().all(|b| *b == 0) {
                    Vec::new()
                } else {
                    p.to_vec()
                }
            };
            let mut pieces = bytes.split(|b| *b == b'\n');
            self.carry = piece(pieces.next().unwrap_or_default());
            self.lines = pieces.map(piece).collect();
        }
    }
}

/// An event record line: its sequence and the record (other records and lines that are not
/// records are not events).
fn event_of(line: &[u8]) -> Option<(u64, Value)> {
    if line.is_empty() {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    if v["recordType"] != crate::audit::event::RECORD_EVENT {
        return None;
    }
    Some((v["sequence"].as_u64()?, v))
}

/// A blocking read of the trail off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, KmsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KmsError::Internal(format!("the audit trail read stopped: {e}")))?
        .map_err(|e| KmsError::Internal(format!("the audit trail cannot be read: {e}")))
}

/// How long VerifyAuditTrail waits before it looks again at a trail that did not verify.
const SECOND_LOOK: std::time::Duration = std::time::Duration::from_millis(100);

impl Kms {
    /// This node's audit events matching the filters, newest first, one page at a time.
    /// Needs `p11kms:SearchAuditTrail`.
    pub async fn search_audit_trail(
        &self,
        caller: &Caller,
        req: SearchAuditTrailRequest,
    ) -> Result<SearchAuditTrailResponse, KmsError> {
        let filter = Filter::new(&req)?;
        let (limit, after) = self.markers.start(SEARCH, &req.page, 500, 50)?;
        let after = after.as_deref().map(Position::decode).transpose()?;
        self.authorize(caller, AuthzRequest::new("p11kms:SearchAuditTrail", "*"))?;
        let wiring = self.admin_wiring()?;
        let (dir, node) = (wiring.audit_dir.clone(), wiring.node.clone());
        let (events, last) =
            blocking(move || search(&dir, node.as_deref(), &filter, after, limit)).await?;
        Ok(SearchAuditTrailResponse {
            events,
            next_marker: last.map(|p| self.markers.seal(SEARCH, &p.encode())),
        })
    }

    /// Verifies this node's audit trail: the chain of every segment file and every
    /// checkpoint's signature with the daemon's audit key. Needs `p11kms:VerifyAuditTrail`.
    pub async fn verify_audit_trail(
        &self,
        caller: &Caller,
        _req: VerifyAuditTrailRequest,
    ) -> Result<VerifyAuditTrailResponse, KmsError> {
        self.authorize(caller, AuthzRequest::new("p11kms:VerifyAuditTrail", "*"))?;
        let wiring = self.admin_wiring()?;
        let (dir, node) = (wiring.audit_dir.clone(), wiring.node.clone());
        let key = wiring.audit_public_key.clone();
        let nodes = blocking(move || {
            let verify = || -> std::io::Result<Vec<NodeReport>> {
                let files: Vec<PathBuf> =
                    crate::audit::writer::list_segments(&dir, node.as_deref())?
                        .into_iter()
                        .map(|(_, name)| dir.join(name))
                        .collect();
                Ok(crate::audit::verify_trails(&files, Some(&key)))
            };
            // The live segment is being written: a line read half-written looks torn. A
            // torn line is reported when a second look, a moment later, still finds one.
            let first = verify()?;
            let torn = |n: &NodeReport| {
                (n.report.problems.iter()).any(|p| p.kind == ProblemKind::Truncated)
            };
            if !first.iter().any(torn) {
                return Ok(first);
            }
            std::thread::sleep(SECOND_LOOK);
            verify()
        })
        .await?;
        Ok(VerifyAuditTrailResponse {
            verified: nodes.iter().all(|n| n.report.is_ok()),
            nodes,
            node: wiring.node.clone(),
        })
    }
}

/// Where a problem sits: its file and line, when the verifier names them (`file:line`).
pub fn problem_place(p: &Problem) -> (Option<String>, Option<u64>) {
    let Some(location) = p.location.as_deref() else {
        return (None, None);
    };
    match location.rsplit_once(':') {
        Some((file, line)) if line.parse::<u64>().is_ok() => {
            (Some(file.to_string()), line.parse().ok())
        }
        _ => (Some(location.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64, name: &str, arn: &str, key: &str, error: Option<&str>) -> Value {
        let mut v = json!({
            "recordType": "event", "sequence": seq, "eventName": name,
            "eventTime": format!("2026-01-01T00:00:{:02}.000Z", seq % 60),
            "userIdentity": {"arn": arn},
            "resources": [{"ARN": format!("arn:aws:kms:us-east-1:111122223333:key/{key}")}],
        });
        if let Some(e) = error {
            v["errorCode"] = json!(e);
        }
        v
    }

    /// Two segments of events (with a segment start and a checkpoint that are not events),
    /// searched in pages of two: newest first, every event once, and the filters.
    #[test]
    fn pages_walk_the_trail_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, lines: Vec<Value>| {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut bytes = text.into_bytes();
            bytes.extend_from_slice(&[0u8; 64]); // preallocated space
            std::fs::write(dir.path().join(name), bytes).unwrap();
        };
        let a = "arn:aws:iam::111122223333:user/a";
        let b = "arn:aws:iam::111122223333:user/b";
        write(
            "audit-000001.jsonl",
            vec![
                json!({"recordType": "segment-start", "sequence": 1}),
                event(2, "Encrypt", a, "k1", None),
                event(3, "Decrypt", b, "k2", Some("AccessDeniedException")),
                json!({"recordType": "checkpoint", "sequence": 4}),
            ],
        );
        write(
            "audit-000002.jsonl",
            vec![
                json!({"recordType": "segment-start", "sequence": 5}),
                event(6, "Encrypt", b, "k1", None),
                event(7, "Encrypt", a, "k2", None),
            ],
        );
        std::fs::write(dir.path().join("other.txt"), "not a segment").unwrap();
        let all = Filter::default();
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (page, next) = search(dir.path(), None, &all, after, 2).unwrap();
            seen.extend(page.iter().map(|e| e["sequence"].as_u64().unwrap()));
            match next {
                Some(p) => after = Some(Position::decode(&p.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, [7, 6, 3, 2]);
        let find = |f: Filter| {
            let (page, next) = search(dir.path(), None, &f, None, 10).unwrap();
            assert!(next.is_none());
            page.iter()
                .map(|e| e["sequence"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        let by = |f: fn(&mut Filter)| {
            let mut filter = Filter::default();
            f(&mut filter);
            find(filter)
        };
        assert_eq!(by(|f| f.key_id = Some("k1".into())), [6, 2]);
        assert_eq!(
            by(|f| f.key_id = Some("arn:aws:kms:us-east-1:111122223333:key/k2".into())),
            [7, 3]
        );
        assert_eq!(by(|f| f.key_id = Some("1".into())), Vec::<u64>::new());
        assert_eq!(
            by(|f| f.principal = Some("arn:aws:iam::111122223333:user/a".into())),
            [7, 2]
        );
        assert_eq!(by(|f| f.operation = Some("Decrypt".into())), [3]);
        assert_eq!(by(|f| f.outcome = Some(AuditOutcome::Failure)), [3]);
        assert_eq!(by(|f| f.outcome = Some(AuditOutcome::Success)), [7, 6, 2]);
        assert_eq!(
            by(|f| f.start = Some("2026-01-01T00:00:06.000Z".into())),
            [7, 6]
        );
        assert_eq!(
            by(|f| f.end = Some("2026-01-01T00:00:03.000Z".into())),
            [3, 2]
        );
    }

    /// Read backwards in blocks of any size, a file gives its lines last to first, NUL
    /// padding dropped.
    #[test]
    fn lines_come_back_last_first_whatever_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = b"one\ntwo\n\nthree-is-longer\nfour\n".to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        std::fs::write(&path, &bytes).unwrap();
        for block in [1, 2, 3, 5, 7, 64, 1024] {
            let mut lines = LinesBackwards::open(&path, block).unwrap();
            let mut got = Vec::new();
            while let Some(l) = lines.next_line().unwrap() {
                got.push(String::from_utf8(l).unwrap());
            }
            let want = ["", "four", "three-is-longer", "", "two", "one"];
            let got: Vec<&str> = got.iter().map(String::as_str).collect();
            // The NUL padding after the last newline reads as one empty (or no) line.
            let got = got.strip_prefix(&[""]).unwrap_or(&got);
            assert_eq!(got, &want[1..], "block {block}");
        }
    }

    #[test]
    fn filters_are_checked() {
        let req = SearchAuditTrailRequest {
            start_time: Some(2000),
            end_time: Some(1000),
            ..Default::default()
        };
        assert!(matches!(Filter::new(&req), Err(KmsError::Validation(_))));
        let req = SearchAuditTrailRequest {
            operation: Some("x".repeat(MAX_FILTER_LEN + 1)),
            ..Default::default()
        };
        assert!(matches!(Filter::new(&req), Err(KmsError::Validation(_))));
        let req = SearchAuditTrailRequest {
            key_id: Some(String::new()),
            ..Default::default()
        };
        assert!(Filter::new(&req).unwrap().key_id.is_none());
    }

    #[test]
    fn problems_name_their_file_and_line() {
        let p = |location: Option<&str>| Problem {
            sequence: None,
            kind: crate::audit::ProblemKind::Edited,
            location: location.map(str::to_string),
            detail: String::new(),
        };
        assert_eq!(
            problem_place(&p(Some("audit-000001.jsonl:12"))),
            (Some("audit-000001.jsonl".into()), Some(12))
        );
        assert_eq!(problem_place(&p(None)), (None, None));
    }
}
