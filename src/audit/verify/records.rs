//! One record line of a segment file, parsed for the verifier: its sequence, links, hash
//! check and (for checkpoints and segment starts) what it claims.

use serde_json::Value;

use super::super::checkpoint::split_signature;
use super::super::event::{split_line, RECORD_CHECKPOINT, RECORD_EVENT, RECORD_SEGMENT_START};
use crate::encoding::sha256_hex;

/// The `recordType` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RecType {
    Event,
    Checkpoint,
    SegmentStart,
}

/// A record line (possibly malformed but with a sequence number).
pub(super) struct Rec {
    pub(super) file: usize,
    pub(super) line: usize,
    pub(super) seq: u64,
    pub(super) rtype: Option<RecType>,
    pub(super) prev: Option<[u8; 32]>,
    pub(super) hash: Option<[u8; 32]>,
    pub(super) hash_ok: bool,
    /// Why the record is not well formed, if it is not.
    pub(super) malformed: Option<String>,
    /// Checkpoint: signed message and signature, head sequence, head hash, key id.
    pub(super) checkpoint: Option<CheckpointInfo>,
    /// Segment start: segment name, previous segment, reason, crash-recovery details.
    pub(super) start: Option<StartInfo>,
    /// The node the record names (`"node"`; none on a single node's trail).
    pub(super) node: Option<String>,
}

/// What a checkpoint record claims.
pub(super) struct CheckpointInfo {
    pub(super) signed: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) head_sequence: Option<u64>,
    pub(super) head_hash: Option<String>,
    pub(super) key_id: Option<String>,
}

/// What a segment-start record claims.
pub(super) struct StartInfo {
    pub(super) segment: Option<String>,
    pub(super) previous_segment: Option<String>,
    pub(super) reason: String,
    /// Crash recovery: the last good sequence before a torn line, and the writer's note.
    pub(super) truncated_after: Option<u64>,
    pub(super) note: Option<String>,
}

/// 64 hex digits as 32 bytes.
pub(super) fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The highest sequence number the verifier accepts. The writer counts from 1 and never
/// comes near it; a line claiming 0 or more is not a record, so that the chain arithmetic
/// (`seq - 1`, `seq + 1`) cannot overflow (found by the `audit_verify` fuzz target).
const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// `seq` if it is a sequence number a record can have.
fn valid_sequence(seq: u64) -> Option<u64> {
    (1..=MAX_SEQUENCE).contains(&seq).then_some(seq)
}

/// The number after `"sequence":` in a line that does not parse.
pub(super) fn sniff_sequence(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence\":";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = line[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    valid_sequence(std::str::from_utf8(&digits).ok()?.parse().ok()?)
}

/// Parse one newline-terminated line. `Err` carries a reason (the line is not a record).
pub(super) fn parse_line(file: usize, line_no: usize, line: &[u8]) -> Result<Rec, String> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            let seq = sniff_sequence(line).ok_or(format!("not an audit record ({e})"))?;
            return Ok(Rec {
                file,
                line: line_no,
                seq,
                rtype: None,
                prev: None,
                hash: None,
                hash_ok: false,
                malformed: Some(format!("not valid JSON ({e})")),
                checkpoint: None,
                start: None,
                node: None,
            });
        }
    };
    let seq = v
        .get("sequence")
        .and_then(Value::as_u64)
        .ok_or("not an audit record (no sequence number)")?;
    let seq = valid_sequence(seq).ok_or("not an audit record (sequence number out of range)")?;
    let rtype = match v.get("recordType").and_then(Value::as_str) {
        Some(RECORD_EVENT) => Some(RecType::Event),
        Some(RECORD_CHECKPOINT) => Some(RecType::Checkpoint),
        Some(RECORD_SEGMENT_START) => Some(RecType::SegmentStart),
        _ => None,
    };
    let prev = v
        .get("previousHash")
        .and_then(Value::as_str)
        .and_then(hex32);
    let (hash, hash_ok, body) = match split_line(line) {
        Some((body, h)) => {
            let ok = sha256_hex(&body) == h;
            (hex32(h), ok, Some(body))
        }
        None => (
            v.get("hash").and_then(Value::as_str).and_then(hex32),
            false,
            None,
        ),
    };
    let mut malformed = None;
    if rtype.is_none() {
        malformed = Some("unknown recordType".to_owned());
    } else if prev.is_none() {
        malformed = Some("no valid previousHash".to_owned());
    } else if body.is_none() {
        malformed = Some("the line does not end with its hash member".to_owned());
    }
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let checkpoint = (rtype == Some(RecType::Checkpoint)).then(|| CheckpointInfo {
        signed: body.as_deref().and_then(split_signature),
        head_sequence: v.get("headSequence").and_then(Value::as_u64),
        head_hash: str_of("headHash"),
        key_id: str_of("keyId"),
    });
    let start = (rtype == Some(RecType::SegmentStart)).then(|| StartInfo {
        segment: str_of("segment"),
        previous_segment: str_of("previousSegment"),
        reason: str_of("reason").unwrap_or_default(),
        truncated_after: v.get("truncatedAfterSequence").and_then(Value::as_u64),
        note: str_of("note"),
    });
    Ok(Rec {
        file,
        line: line_no,
        seq,
        rtype,
        prev,
        hash,
        hash_ok: hash_ok && malformed.is_none(),
        malformed,
        checkpoint,
        start,
        node: str_of("node"),
    })
}
