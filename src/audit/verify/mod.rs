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
//! | `malformed` | a line that is not an audit record at all (no sequence number), or a line with NUL bytes (preallocated space followed by data, or a damaged record); NUL bytes after a file's last record are unused preallocated space and accepted |
//! | `segment-link` | a file does not begin with a `segment-start` record |
//! | `unreadable` | a file cannot be read |
//! | `wrong-node` | a record names another node than the trail it is in |
//!
//! Files may be given in any order: they are ordered by their first sequence number, then by
//! segment index. Files of several nodes (`audit-<node>-NNNNNN.jsonl`) may be given
//! together: [`verify_trails`] splits them by node and verifies each node's chain on its own.
//! Every node signs its checkpoints with the one shared audit key.

use std::fmt;
use std::path::{Path, PathBuf};

use super::checkpoint::parse_public_key;
use super::event::key_id_of;
use load::Verifier;

mod chain;
mod checkpoints;
mod files;
mod load;
mod records;

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
    /// A record names another node than the trail it was found in.
    WrongNode,
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
            ProblemKind::WrongNode => "wrong-node",
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

/// Verify segment files offline. `public_key_der` is the audit key's DER
/// SubjectPublicKeyInfo; without it checkpoint signatures are not checked (a note says so).
///
/// The phases, in order (each adds problems and notes to the report): read and parse the
/// files, keep one record per sequence number, set stray records aside, check file order,
/// walk the chain by sequence, torn last lines, each file's segment start, checkpoints, and
/// the summary.
pub fn verify_files(paths: &[PathBuf], public_key_der: Option<&[u8]>) -> VerifyReport {
    let mut report = VerifyReport::default();
    let v = Verifier::load(paths, &mut report);
    v.check_nodes(&mut report);
    let mut excluded = v.exclude_duplicates(&mut report);
    v.exclude_strays(&mut excluded, &mut report);
    let genuine: Vec<usize> = (0..v.recs.len())
        .filter(|i| !excluded.contains(i))
        .collect();
    v.check_file_order(&genuine, &mut report);
    let mut chain = genuine.clone();
    chain.sort_by_key(|&i| v.recs[i].seq);
    let last_in_file = v.last_in_file(&genuine);
    v.check_chain(&chain, &last_in_file, &mut report);
    v.check_torn_lines(&genuine, &last_in_file, &mut report);
    v.check_segment_starts(&genuine, &mut report);
    v.check_checkpoints(&chain, public_key_der, &mut report);
    v.summarise(&chain, public_key_der, &mut report);
    report
}

/// The first 16 characters of a key id.
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
    let trails = verify_trails(files, key.as_deref());
    print!("{}", render_trails(&trails, key.as_deref()));
    i32::from(!trails.iter().all(|t| t.report.is_ok()))
}

/// The report of [`verify_trails`]: one node's trail as [`render`] prints it; several, each
/// under a `node <id>:` heading, then one overall result.
pub fn render_trails(trails: &[NodeReport], public_key_der: Option<&[u8]>) -> String {
    if let [one] = trails {
        return render(&one.report, public_key_der);
    }
    let mut out = String::new();
    for t in trails {
        out.push_str(&format!(
            "node {}:\n",
            t.node.as_deref().unwrap_or("(none: a single node's trail)")
        ));
        for line in render(&t.report, public_key_der).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    let failed: Vec<&str> = trails
        .iter()
        .filter(|t| !t.report.is_ok())
        .map(|t| t.node.as_deref().unwrap_or("(none)"))
        .collect();
    match failed.as_slice() {
        [] => out.push_str(&format!("RESULT: OK ({} nodes)\n", trails.len())),
        f => out.push_str(&format!("RESULT: FAILED (nodes {})\n", f.join(", "))),
    }
    out
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

/// One node's trail, verified on its own chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport {
    /// The node (`None`: a single node's trail, whose names and records carry none).
    pub node: Option<String>,
    /// The findings for that node's chain.
    pub report: VerifyReport,
}

/// Verify the trails of one or several nodes: the files are split by the node their name
/// gives (`audit-<node>-NNNNNN.jsonl`; a file named otherwise goes with the node its first
/// record names), then each node's chain is verified with [`verify_files`], in node order.
pub fn verify_trails(paths: &[PathBuf], public_key_der: Option<&[u8]>) -> Vec<NodeReport> {
    let mut groups: std::collections::BTreeMap<Option<String>, Vec<PathBuf>> =
        std::collections::BTreeMap::new();
    for p in paths {
        groups.entry(node_of_file(p)).or_default().push(p.clone());
    }
    groups
        .into_iter()
        .map(|(node, files)| NodeReport {
            node,
            report: verify_files(&files, public_key_der),
        })
        .collect()
}

/// The node a segment file belongs to: by its name, else by its first record's `node`.
fn node_of_file(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_string_lossy();
    if let Some((node, _)) = super::writer::parse_segment_name(&name) {
        return node.map(str::to_owned);
    }
    let data = std::fs::read(p).ok()?;
    let first = data.split(|b| *b == b'\n').next()?;
    let v: serde_json::Value = serde_json::from_slice(first).ok()?;
    v.get("node")?.as_str().map(str::to_owned)
}
