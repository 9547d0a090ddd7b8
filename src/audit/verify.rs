//! The offline verifier: `p11kms audit verify [--public-key FILE] FILES...`.
//!
//! It needs no HSM and no daemon: it reads segment files, checks every record's `hash`, the
//! `previousHash` chain, sequence continuity, the `segment-start` links between files, and
//! (with the public key) every checkpoint's signature. Problems are named by sequence number:
//!
//! | kind | meaning |
//! |---|---|
//! | `edited` | a record's hash does not match its bytes, or the next record does not chain to it |
//! | `deleted` | a sequence number is missing inside a file, or at the top of the first file |
//! | `inserted` | a record that does not belong in the chain (a second record with one sequence number that nothing chains to, or a stray record with no links) |
//! | `reordered` | a record appears after a record with a higher sequence number |
//! | `truncated` | a file ends with an incomplete line (torn by a crash, or cut) that no crash-recovery segment start records (one that does is a note), records are missing at the end of a file before the next segment, or records were abandoned at a crash/write-error recovery |
//! | `forged-signature` | a checkpoint's signature does not verify with the public key |
//! | `malformed` | a line that is not an audit record at all (no sequence number) |
//! | `segment-link` | a file does not begin with a `segment-start` record |
//! | `unreadable` | a file cannot be read |
//!
//! Files may be given in any order: they are ordered by their first sequence number, then by
//! segment index.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::checkpoint::{parse_public_key, split_signature, verify_signature};
use super::event::{
    key_id_of, sha256_hex, split_line, GENESIS_HASH, RECORD_CHECKPOINT, RECORD_EVENT,
    RECORD_SEGMENT_START,
};
use super::writer::segment_index;

/// Most individual `deleted`/`truncated` problems listed for one gap; the rest is summarised.
const MAX_LISTED_PER_GAP: u64 = 100;

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// A record was changed.
    Edited,
    /// A record is missing.
    Deleted,
    /// A record was added.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// A file ends early or with a torn line.
    Truncated,
    /// A checkpoint signature does not verify.
    ForgedSignature,
    /// A line is not an audit record.
    Malformed,
    /// A file does not begin with its segment-start record.
    SegmentLink,
    /// A file cannot be read.
    Unreadable,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::ForgedSignature => "forged-signature",
            ProblemKind::Malformed => "malformed",
            ProblemKind::SegmentLink => "segment-link",
            ProblemKind::Unreadable => "unreadable",
        })
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The sequence number concerned, when known.
    pub sequence: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
    /// `file:line`, when the problem sits on a line.
    pub location: Option<String>,
    /// A sentence for the operator.
    pub detail: String,
}

/// The verifier's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files read.
    pub files: usize,
    /// Records in the chain (events, checkpoints, segment starts).
    pub records: u64,
    /// Event records.
    pub events: u64,
    /// Checkpoint records.
    pub checkpoints: u64,
    /// Checkpoints whose signature verified with the public key.
    pub checkpoints_verified: u64,
    /// The lowest and highest sequence numbers seen.
    pub first_sequence: Option<u64>,
    /// The highest sequence number in the chain.
    pub last_sequence: Option<u64>,
    /// The hash of the last record in the chain (the head).
    pub last_hash: Option<String>,
    /// The sequence of the last checkpoint whose signature verified.
    pub last_verified_checkpoint: Option<u64>,
    /// Findings; empty when the trail is intact.
    pub problems: Vec<Problem>,
    /// Information that is not a problem (the trail starts after sequence 1, checkpoints not
    /// verified for lack of a key, renamed files, …).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecType {
    Event,
    Checkpoint,
    SegmentStart,
}

/// A record line (possibly malformed but with a sequence number).
struct Rec {
    file: usize,
    line: usize,
    seq: u64,
    rtype: Option<RecType>,
    prev: Option<[u8; 32]>,
    hash: Option<[u8; 32]>,
    hash_ok: bool,
    /// Why the record is not well formed, if it is not.
    malformed: Option<String>,
    /// Checkpoint: (signed message, signature, head sequence, head hash, key id).
    checkpoint: Option<CheckpointInfo>,
    /// Segment start: (segment name, previous segment, reason, previous sequence).
    start: Option<StartInfo>,
}

struct CheckpointInfo {
    signed: Option<(Vec<u8>, Vec<u8>)>,
    head_sequence: Option<u64>,
    head_hash: Option<String>,
    key_id: Option<String>,
}

struct StartInfo {
    segment: Option<String>,
    previous_segment: Option<String>,
    reason: String,
    /// Crash recovery: the last good sequence before a torn line, and the writer's note.
    truncated_after: Option<u64>,
    note: Option<String>,
}

struct FileData {
    name: String,
    /// The first sequence number found in the file (ordering).
    first_seq: Option<u64>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
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
fn sniff_sequence(line: &[u8]) -> Option<u64> {
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
fn parse_line(file: usize, line_no: usize, line: &[u8]) -> Result<Rec, String> {
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
    })
}

/// Verify segment files offline. `public_key_der` is the audit key's DER
/// SubjectPublicKeyInfo; without it checkpoint signatures are not checked (a note says so).
pub fn verify_files(paths: &[PathBuf], public_key_der: Option<&[u8]>) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut problems: Vec<Problem> = Vec::new();

    // ------------------------------------------------------------ read and parse
    struct Loaded {
        name: String,
        index: Option<u64>,
        data: Vec<u8>,
    }
    let mut loaded = Vec::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string());
        match std::fs::read(p) {
            Ok(data) => loaded.push(Loaded {
                index: segment_index(&name),
                name,
                data,
            }),
            Err(e) => problems.push(Problem {
                sequence: None,
                kind: ProblemKind::Unreadable,
                location: Some(p.display().to_string()),
                detail: format!("cannot read {}: {e}", p.display()),
            }),
        }
    }
    // Order: first sequence number, then segment index, then name.
    let first_seq = |d: &[u8]| {
        d.split(|b| *b == b'\n').take(16).find_map(|l| {
            serde_json::from_slice::<Value>(l)
                .ok()
                .and_then(|v| v.get("sequence").and_then(Value::as_u64))
                .or_else(|| sniff_sequence(l))
        })
    };
    let mut keyed: Vec<(Option<u64>, Loaded)> = loaded
        .into_iter()
        .map(|l| (first_seq(&l.data), l))
        .collect();
    keyed.sort_by(|(a, la), (b, lb)| {
        (
            a.unwrap_or(u64::MAX),
            la.index.unwrap_or(u64::MAX),
            &la.name,
        )
            .cmp(&(
                b.unwrap_or(u64::MAX),
                lb.index.unwrap_or(u64::MAX),
                &lb.name,
            ))
    });
    report.files = keyed.len();

    let mut files: Vec<FileData> = Vec::new();
    let mut recs: Vec<Rec> = Vec::new();
    // (file, line, sequence guess, bytes)
    let mut torn: Vec<(usize, usize, Option<u64>, usize)> = Vec::new();
    for (fi, (first, l)) in keyed.into_iter().enumerate() {
        files.push(FileData {
            name: l.name.clone(),
            first_seq: first,
        });
        let mut pieces: Vec<&[u8]> = l.data.split(|b| *b == b'\n').collect();
        // `split` yields a last piece after the final newline: empty for a complete file,
        // the torn bytes otherwise.
        let tail = pieces.pop().unwrap_or(&[]);
        for (i, line) in pieces.iter().enumerate() {
            let line_no = i + 1;
            match parse_line(fi, line_no, line) {
                Ok(r) => recs.push(r),
                Err(why) => problems.push(Problem {
                    sequence: None,
                    kind: ProblemKind::Malformed,
                    location: Some(format!("{}:{line_no}", l.name)),
                    detail: if line.is_empty() {
                        "an empty line".into()
                    } else {
                        why
                    },
                }),
            }
        }
        if !tail.is_empty() {
            torn.push((fi, pieces.len() + 1, sniff_sequence(tail), tail.len()));
        }
    }
    let loc = |files: &[FileData], r: &Rec| format!("{}:{}", files[r.file].name, r.line);

    // ------------------------------------------------------------ one record per sequence
    let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in recs.iter().enumerate() {
        by_seq.entry(r.seq).or_default().push(i);
    }
    let genesis = hex32(GENESIS_HASH);
    let linked_back = |i: usize| -> bool {
        let r = &recs[i];
        if r.seq == 1 {
            return r.prev.is_some() && r.prev == genesis;
        }
        r.prev.is_some()
            && by_seq
                .get(&(r.seq - 1))
                .is_some_and(|c| c.iter().any(|j| recs[*j].hash == r.prev))
    };
    let linked_fwd = |i: usize| -> bool {
        let r = &recs[i];
        r.hash.is_some()
            && by_seq
                .get(&(r.seq + 1))
                .is_some_and(|c| c.iter().any(|j| recs[*j].prev == r.hash))
    };
    let recovery_starts: Vec<usize> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.start
                .as_ref()
                .is_some_and(|s| s.reason == "crash-recovery" || s.reason == "write-error-recovery")
        })
        .map(|(i, _)| i)
        .collect();
    let mut excluded: BTreeSet<usize> = BTreeSet::new();
    for (seq, cands) in &by_seq {
        if cands.len() < 2 {
            continue;
        }
        let score = |i: usize| {
            u8::from(recs[i].hash_ok) * 4 + u8::from(linked_fwd(i)) * 2 + u8::from(linked_back(i))
        };
        // Best score; on a tie the first in file order.
        let best = *cands
            .iter()
            .max_by(|a, b| score(**a).cmp(&score(**b)).then(b.cmp(a)))
            .unwrap_or(&cands[0]);
        for &o in cands.iter().filter(|o| **o != best) {
            excluded.insert(o);
            let r = &recs[o];
            // Written before a crash or write failure, then superseded by a recovery
            // segment: abandoned, reported as a truncation.
            let abandoned = recovery_starts.iter().find(|&&s| {
                let s = &recs[s];
                s.file > r.file && s.seq <= *seq
            });
            match abandoned {
                Some(&s) => problems.push(Problem {
                    sequence: Some(*seq),
                    kind: ProblemKind::Truncated,
                    location: Some(loc(&files, r)),
                    detail: format!(
                        "record {seq} was written but not committed before a {}; the trail \
                         continued at sequence {} in {}",
                        recs[s]
                            .start
                            .as_ref()
                            .map_or("failure", |x| x.reason.trim_end_matches("-recovery")),
                        recs[s].seq,
                        files[recs[s].file].name
                    ),
                }),
                None => problems.push(Problem {
                    sequence: Some(*seq),
                    kind: ProblemKind::Inserted,
                    location: Some(loc(&files, r)),
                    detail: format!(
                        "a second record with sequence {seq} (the chain runs through {})",
                        loc(&files, &recs[best])
                    ),
                }),
            }
        }
    }

    // Stray records: no link either way, and out of place in file order.
    let in_file_order: Vec<usize> = (0..recs.len()).filter(|i| !excluded.contains(i)).collect();
    for (k, &i) in in_file_order.iter().enumerate() {
        let r = &recs[i];
        if linked_back(i) || linked_fwd(i) || r.malformed.is_some() {
            continue;
        }
        let before = k.checked_sub(1).map(|j| recs[in_file_order[j]].seq);
        let after = in_file_order.get(k + 1).map(|&j| recs[j].seq);
        let out_of_place = before.is_some_and(|b| b >= r.seq) || after.is_some_and(|a| a <= r.seq);
        if out_of_place && in_file_order.len() > 1 {
            excluded.insert(i);
            problems.push(Problem {
                sequence: Some(r.seq),
                kind: ProblemKind::Inserted,
                location: Some(loc(&files, r)),
                detail: format!(
                    "record {} is linked to no neighbour and sits out of sequence",
                    r.seq
                ),
            });
        }
    }
    let genuine: Vec<usize> = (0..recs.len()).filter(|i| !excluded.contains(i)).collect();

    // ------------------------------------------------------------ file order
    let mut max_seen: Option<(u64, usize)> = None;
    for &i in &genuine {
        let r = &recs[i];
        match max_seen {
            Some((m, mi)) if r.seq < m => problems.push(Problem {
                sequence: Some(r.seq),
                kind: ProblemKind::Reordered,
                location: Some(loc(&files, r)),
                detail: format!(
                    "record {} appears after record {m} ({})",
                    r.seq,
                    loc(&files, &recs[mi])
                ),
            }),
            _ => max_seen = Some((r.seq, i)),
        }
    }

    // ------------------------------------------------------------ the chain, by sequence
    let mut chain = genuine.clone();
    chain.sort_by_key(|&i| recs[i].seq);
    let last_in_file: BTreeMap<usize, u64> = genuine.iter().fold(BTreeMap::new(), |mut m, &i| {
        let e = m.entry(recs[i].file).or_insert(0);
        *e = (*e).max(recs[i].seq);
        m
    });
    let mut prev: Option<usize> = None;
    for &i in &chain {
        let r = &recs[i];
        if let Some(why) = &r.malformed {
            problems.push(Problem {
                sequence: Some(r.seq),
                kind: ProblemKind::Edited,
                location: Some(loc(&files, r)),
                detail: format!("record {} is damaged: {why}", r.seq),
            });
        } else if !r.hash_ok {
            problems.push(Problem {
                sequence: Some(r.seq),
                kind: ProblemKind::Edited,
                location: Some(loc(&files, r)),
                detail: format!("record {} does not match its hash", r.seq),
            });
        }
        match prev {
            None => {
                if r.seq == 1 {
                    if r.prev.is_some() && r.prev != genesis {
                        problems.push(Problem {
                            sequence: Some(1),
                            kind: ProblemKind::Edited,
                            location: Some(loc(&files, r)),
                            detail: "record 1 does not chain to the genesis hash".into(),
                        });
                    }
                } else if r.rtype == Some(RecType::SegmentStart) {
                    report.notes.push(format!(
                        "the files start at sequence {} (earlier segments not given); its \
                         previousHash {} must match the last record of the archived segment {}",
                        r.seq,
                        r.prev.map(hex::encode).unwrap_or_default(),
                        r.start
                            .as_ref()
                            .and_then(|s| s.previous_segment.clone())
                            .unwrap_or_else(|| "(unnamed)".into())
                    ));
                } else {
                    problems.push(Problem {
                        sequence: Some(r.seq - 1),
                        kind: ProblemKind::Deleted,
                        location: Some(loc(&files, r)),
                        detail: format!(
                            "the first file does not begin with its segment-start: records \
                             before sequence {} were removed",
                            r.seq
                        ),
                    });
                }
            }
            Some(p) => {
                let pr = &recs[p];
                if r.seq == pr.seq + 1 {
                    if pr.hash.is_some() && r.prev.is_some() && pr.hash != r.prev {
                        problems.push(Problem {
                            sequence: Some(pr.seq),
                            kind: ProblemKind::Edited,
                            location: Some(loc(&files, pr)),
                            detail: format!(
                                "record {} does not have the hash record {} chains to: it was \
                                 changed (and its hash recomputed)",
                                pr.seq, r.seq
                            ),
                        });
                    }
                } else if r.seq > pr.seq + 1 {
                    let (from, to) = (pr.seq + 1, r.seq - 1);
                    let at_file_end = r.file != pr.file
                        && last_in_file.get(&pr.file) == Some(&pr.seq)
                        && r.rtype == Some(RecType::SegmentStart);
                    let torn_here = torn.iter().any(|t| t.0 == pr.file);
                    let kind = if at_file_end {
                        ProblemKind::Truncated
                    } else {
                        ProblemKind::Deleted
                    };
                    for s in (from..=to).take(MAX_LISTED_PER_GAP as usize) {
                        if torn_here && torn.iter().any(|t| t.2 == Some(s)) {
                            continue; // reported as a torn line below
                        }
                        problems.push(Problem {
                            sequence: Some(s),
                            kind,
                            location: None,
                            detail: if at_file_end {
                                format!(
                                    "record {s} is missing from the end of {} (the next segment \
                                     starts at {})",
                                    files[pr.file].name, r.seq
                                )
                            } else {
                                format!("record {s} is missing (between {} and {})", pr.seq, r.seq)
                            },
                        });
                    }
                    if to - from + 1 > MAX_LISTED_PER_GAP {
                        problems.push(Problem {
                            sequence: Some(from + MAX_LISTED_PER_GAP),
                            kind,
                            location: None,
                            detail: format!(
                                "and records {}..={to} are missing too",
                                from + MAX_LISTED_PER_GAP
                            ),
                        });
                    }
                }
            }
        }
        prev = Some(i);
    }

    // ------------------------------------------------------------ torn lines
    for &(fi, line, seq, bytes) in &torn {
        let guess = seq.or_else(|| last_in_file.get(&fi).map(|s| s + 1));
        if let Some(sealed_by) = sealing_start(
            &recs,
            &genuine,
            &files[fi].name,
            last_in_file.get(&fi),
            bytes,
        ) {
            report.notes.push(format!(
                "{}:{line} is a record torn by a crash during a write ({bytes} bytes after \
                 sequence {}); the crash-recovery start of {} records it",
                files[fi].name,
                last_in_file.get(&fi).copied().unwrap_or_default(),
                files[recs[sealed_by].file].name,
            ));
            continue;
        }
        problems.push(Problem {
            sequence: guess,
            kind: ProblemKind::Truncated,
            location: Some(format!("{}:{line}", files[fi].name)),
            detail: format!(
                "{} ends with an incomplete record of {bytes} bytes (a crash during a write, or \
                 the file was cut){}",
                files[fi].name,
                guess
                    .map(|s| format!(": record {s} is lost"))
                    .unwrap_or_default()
            ),
        });
    }

    // ------------------------------------------------------------ segment starts
    for (fi, f) in files.iter().enumerate() {
        let first = genuine.iter().map(|&i| &recs[i]).find(|r| r.file == fi);
        let Some(first) = first else {
            if f.first_seq.is_none() && !torn.iter().any(|t| t.0 == fi) {
                report.notes.push(format!("{} holds no records", f.name));
            }
            continue;
        };
        match &first.start {
            Some(s) if first.line == 1 => {
                if s.segment.as_deref() != Some(f.name.as_str()) {
                    report.notes.push(format!(
                        "{} was written as {}",
                        f.name,
                        s.segment.as_deref().unwrap_or("(unnamed)")
                    ));
                }
                if fi > 0 && s.previous_segment.as_deref() != Some(files[fi - 1].name.as_str()) {
                    report.notes.push(format!(
                        "{} names {} as its previous segment; the file before it here is {}",
                        f.name,
                        s.previous_segment.as_deref().unwrap_or("(none)"),
                        files[fi - 1].name
                    ));
                }
            }
            _ => problems.push(Problem {
                sequence: Some(first.seq),
                kind: ProblemKind::SegmentLink,
                location: Some(loc(&files, first)),
                detail: format!(
                    "{} does not begin with its segment-start record (its first record is {})",
                    f.name, first.seq
                ),
            }),
        }
    }

    // ------------------------------------------------------------ checkpoints
    let key_id = public_key_der.map(key_id_of);
    let mut unverified = 0u64;
    for &i in &chain {
        let r = &recs[i];
        match r.rtype {
            Some(RecType::Event) => report.events += 1,
            Some(RecType::Checkpoint) => report.checkpoints += 1,
            _ => {}
        }
        let Some(cp) = &r.checkpoint else { continue };
        if cp.head_sequence != Some(r.seq.wrapping_sub(1))
            || cp.head_hash.as_deref().and_then(hex32) != r.prev
        {
            problems.push(Problem {
                sequence: Some(r.seq),
                kind: ProblemKind::Edited,
                location: Some(loc(&files, r)),
                detail: format!(
                    "checkpoint {} names a head other than the record before it",
                    r.seq
                ),
            });
        }
        let Some(pk) = public_key_der else {
            unverified += 1;
            continue;
        };
        let ok = cp
            .signed
            .as_ref()
            .is_some_and(|(msg, sig)| verify_signature(pk, msg, sig));
        if ok {
            report.checkpoints_verified += 1;
            report.last_verified_checkpoint = Some(r.seq);
        } else {
            let why = match (&cp.signed, &cp.key_id) {
                (None, _) => "has no well-formed signature".to_owned(),
                (Some(_), Some(k)) if Some(k) != key_id.as_ref() => format!(
                    "is signed by key {} (not the given key {}) and does not verify",
                    short(k),
                    short(key_id.as_deref().unwrap_or(""))
                ),
                _ => "does not verify with the given public key".to_owned(),
            };
            problems.push(Problem {
                sequence: Some(r.seq),
                kind: ProblemKind::ForgedSignature,
                location: Some(loc(&files, r)),
                detail: format!("the signature of checkpoint {} {why}", r.seq),
            });
        }
    }
    if unverified > 0 {
        report.notes.push(format!(
            "{unverified} checkpoint signature(s) NOT verified: no public key given"
        ));
    }

    // ------------------------------------------------------------ summary
    report.records = chain.len() as u64;
    report.first_sequence = chain.first().map(|&i| recs[i].seq);
    if let Some(&last) = chain.last() {
        report.last_sequence = Some(recs[last].seq);
        report.last_hash = recs[last].hash.map(hex::encode);
        let unsigned_tail = match report.last_verified_checkpoint {
            Some(c) => recs[last].seq.saturating_sub(c),
            None => report.records,
        };
        if public_key_der.is_some() && unsigned_tail > 0 {
            report.notes.push(format!(
                "{unsigned_tail} record(s) after the last verified checkpoint are protected by \
                 the hash chain only"
            ));
        }
    }
    problems
        .sort_by(|a, b| (a.sequence, a.kind, &a.location).cmp(&(b.sequence, b.kind, &b.location)));
    problems.dedup_by(|a, b| a.sequence.is_some() && a.sequence == b.sequence && a.kind == b.kind);
    report.problems = problems;
    report
}

/// The genuine `crash-recovery` segment start that records the torn tail of `file`: it names
/// `file` as its previous segment, its `truncatedAfterSequence` is the file's last good
/// sequence, and its note gives the same torn byte count. Such a tail is what a crash mid-write
/// leaves (the daemon found it at start and sealed it into the signed chain), not tampering;
/// a tail torn or cut later, or in the newest file, has no such record and stays a problem.
fn sealing_start(
    recs: &[Rec],
    genuine: &[usize],
    file: &str,
    last_good: Option<&u64>,
    torn_bytes: usize,
) -> Option<usize> {
    let want_note = format!("{file} ends with a torn record of {torn_bytes} bytes after sequence ");
    genuine.iter().copied().find(|&i| {
        let r = &recs[i];
        r.hash_ok
            && r.malformed.is_none()
            && r.start.as_ref().is_some_and(|s| {
                s.reason == "crash-recovery"
                    && s.previous_segment.as_deref() == Some(file)
                    && s.truncated_after.is_some()
                    && s.truncated_after == last_good.copied()
                    && s.note.as_deref().is_some_and(|n| n.starts_with(&want_note))
            })
    })
}

fn short(s: &str) -> &str {
    s.get(..16).unwrap_or(s)
}

/// `p11kms audit verify [--public-key FILE] FILES...`: verify, print the report on stdout and
/// return the exit code: 0 intact, 1 problems found, 2 the command could not run (no files,
/// unreadable or invalid key).
pub fn run_verify_cli(public_key: Option<&Path>, files: &[PathBuf]) -> i32 {
    if files.is_empty() {
        eprintln!("p11kms audit verify: no files given");
        return 2;
    }
    let key = match public_key {
        None => None,
        Some(p) => match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| parse_public_key(&b).map_err(|e| e.to_string()))
        {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("p11kms audit verify: public key {}: {e}", p.display());
                return 2;
            }
        },
    };
    let report = verify_files(files, key.as_deref());
    print!("{}", render(&report, key.as_deref()));
    i32::from(!report.is_ok())
}

/// The human-readable report `run_verify_cli` prints.
pub fn render(report: &VerifyReport, public_key_der: Option<&[u8]>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let range = match (report.first_sequence, report.last_sequence) {
        (Some(a), Some(b)) => format!(", sequences {a}..{b}"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "audit verify: {} file(s), {} record(s) ({} events, {} checkpoints){range}",
        report.files, report.records, report.events, report.checkpoints
    );
    if let (Some(s), Some(h)) = (report.last_sequence, &report.last_hash) {
        let _ = writeln!(out, "  head: sequence {s}, hash {h}");
    }
    if let Some(k) = public_key_der {
        let _ = writeln!(
            out,
            "  checkpoints: {} of {} signature(s) verified with key {}{}",
            report.checkpoints_verified,
            report.checkpoints,
            short(&key_id_of(k)),
            report
                .last_verified_checkpoint
                .map(|c| format!(", last at sequence {c}"))
                .unwrap_or_default()
        );
    }
    for n in &report.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    for p in &report.problems {
        let seq = p
            .sequence
            .map(|s| format!(" sequence {s}"))
            .unwrap_or_default();
        let at = p
            .location
            .as_ref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let _ = writeln!(out, "PROBLEM {}{seq}: {}{at}", p.kind, p.detail);
    }
    if report.is_ok() {
        let _ = writeln!(out, "RESULT: OK");
    } else {
        let _ = writeln!(out, "RESULT: FAILED ({} problem(s))", report.problems.len());
    }
    out
}
