//! The verifier's first phase: read the files, put them in chain order and parse every line
//! into a [`Verifier`] that the later phases only read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::super::writer::{parse_segment_name, segment_index, unpadded_len};
use super::records::{parse_line, sniff_sequence, Rec};
use super::{Problem, ProblemKind, VerifyReport};

/// One input file, in chain order.
pub(super) struct FileData {
    pub(super) name: String,
    /// The first sequence number found in the file (ordering).
    pub(super) first_seq: Option<u64>,
}

/// An incomplete last line (no newline) of a file.
pub(super) struct Torn {
    pub(super) file: usize,
    pub(super) line: usize,
    /// The sequence number the torn bytes name, if they still do.
    pub(super) seq: Option<u64>,
    pub(super) bytes: usize,
}

/// Everything read from the files: the later phases check it and write their findings into
/// a [`VerifyReport`].
pub(super) struct Verifier {
    pub(super) files: Vec<FileData>,
    /// Every record line, in file order.
    pub(super) recs: Vec<Rec>,
    pub(super) torn: Vec<Torn>,
    /// Indexes into `recs` by sequence number (more than one when a sequence repeats).
    pub(super) by_seq: BTreeMap<u64, Vec<usize>>,
}

/// A file's bytes before parsing.
struct Loaded {
    name: String,
    index: Option<u64>,
    data: Vec<u8>,
}

impl Verifier {
    /// Reads, orders and parses `paths`; unreadable files and lines that are no record at
    /// all go straight into `report`.
    pub(super) fn load(paths: &[PathBuf], report: &mut VerifyReport) -> Verifier {
        let ordered = order(read_files(paths, report));
        report.files = ordered.len();
        let mut v = Verifier {
            files: Vec::new(),
            recs: Vec::new(),
            torn: Vec::new(),
            by_seq: BTreeMap::new(),
        };
        for (fi, (first, l)) in ordered.into_iter().enumerate() {
            v.files.push(FileData {
                name: l.name.clone(),
                first_seq: first,
            });
            v.parse_file(fi, &l, report);
        }
        for (i, r) in v.recs.iter().enumerate() {
            v.by_seq.entry(r.seq).or_default().push(i);
        }
        v
    }

    /// Parses the lines of file `fi`; a last piece without a newline is a torn line.
    /// Trailing NUL bytes are preallocated space the writer has not used (a live segment,
    /// or one a crash left before a restart trimmed it) and are skipped; a NUL byte inside
    /// a line (space followed by data, or a damaged record) is reported as `malformed`.
    fn parse_file(&mut self, fi: usize, l: &Loaded, report: &mut VerifyReport) {
        let data = &l.data[..unpadded_len(&l.data)];
        let mut pieces: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        // `split` yields a last piece after the final newline: empty for a complete file,
        // the torn bytes otherwise.
        let tail = pieces.pop().unwrap_or(&[]);
        for (i, line) in pieces.iter().enumerate() {
            let line_no = i + 1;
            if line.contains(&0) {
                report.problems.push(Problem {
                    sequence: sniff_sequence(line),
                    kind: ProblemKind::Malformed,
                    location: Some(format!("{}:{line_no}", l.name)),
                    detail: "NUL bytes inside a record (unused preallocated space followed \
                             by data, or a damaged record)"
                        .into(),
                });
                continue;
            }
            match parse_line(fi, line_no, line) {
                Ok(r) => self.recs.push(r),
                Err(why) => report.problems.push(Problem {
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
            self.torn.push(Torn {
                file: fi,
                line: pieces.len() + 1,
                seq: sniff_sequence(tail),
                bytes: tail.len(),
            });
        }
    }

    /// `wrong-node`: one chain is one node's. The trail's node is the one its file names
    /// give (else its first record's); a record naming another node, or none on a node's
    /// trail, does not belong to it.
    pub(super) fn check_nodes(&self, report: &mut VerifyReport) {
        let named = self
            .files
            .first()
            .and_then(|f| parse_segment_name(&f.name))
            .map(|(n, _)| n.map(str::to_owned));
        let Some(expected) = named.or_else(|| self.recs.first().map(|r| r.node.clone())) else {
            return;
        };
        for r in self.recs.iter().filter(|r| r.node != expected) {
            let detail = format!(
                "the record names node {}, but the trail is node {}'s",
                r.node.as_deref().unwrap_or("(none)"),
                expected.as_deref().unwrap_or("(none)")
            );
            report
                .problems
                .push(self.problem_at(r, ProblemKind::WrongNode, detail));
        }
    }

    /// `file:line` of a record.
    pub(super) fn loc(&self, r: &Rec) -> String {
        format!("{}:{}", self.files[r.file].name, r.line)
    }

    /// A problem found at record `r`, located at its `file:line`.
    pub(super) fn problem_at(&self, r: &Rec, kind: ProblemKind, detail: String) -> Problem {
        Problem {
            sequence: Some(r.seq),
            kind,
            location: Some(self.loc(r)),
            detail,
        }
    }
}

/// The readable files with their names and segment indexes; the others are `unreadable`.
fn read_files(paths: &[PathBuf], report: &mut VerifyReport) -> Vec<Loaded> {
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
            Err(e) => report.problems.push(Problem {
                sequence: None,
                kind: ProblemKind::Unreadable,
                location: Some(p.display().to_string()),
                detail: format!("cannot read {}: {e}", p.display()),
            }),
        }
    }
    loaded
}

/// Chain order: first sequence number, then segment index, then name.
fn order(loaded: Vec<Loaded>) -> Vec<(Option<u64>, Loaded)> {
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
    keyed
}
