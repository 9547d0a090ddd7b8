//! The per-file phases: torn last lines (`truncated`, or a note when a crash-recovery segment
//! start records them) and each file's opening `segment-start` (`segment-link`).

use std::collections::BTreeMap;

use super::load::{Torn, Verifier};
use super::{Problem, ProblemKind, VerifyReport};

impl Verifier {
    /// Reports every torn last line, unless a genuine crash-recovery start seals it.
    pub(super) fn check_torn_lines(
        &self,
        genuine: &[usize],
        last_in_file: &BTreeMap<usize, u64>,
        report: &mut VerifyReport,
    ) {
        for t in &self.torn {
            let name = &self.files[t.file].name;
            let last_good = last_in_file.get(&t.file);
            if let Some(sealed_by) = self.sealing_start(genuine, name, last_good, t.bytes) {
                report.notes.push(format!(
                    "{name}:{} is a record torn by a crash during a write ({} bytes after \
                     sequence {}); the crash-recovery start of {} records it",
                    t.line,
                    t.bytes,
                    last_good.copied().unwrap_or_default(),
                    self.files[self.recs[sealed_by].file].name,
                ));
                continue;
            }
            report.problems.push(torn_problem(t, name, last_good));
        }
    }

    /// The genuine `crash-recovery` segment start that records the torn tail of `file`: it
    /// names `file` as its previous segment, its `truncatedAfterSequence` is the file's last
    /// good sequence, and its note gives the same torn byte count. Such a tail is what a crash
    /// mid-write leaves (the daemon found it at start and sealed it into the signed chain),
    /// not tampering; a tail torn or cut later, or in the newest file, has no such record and
    /// stays a problem.
    fn sealing_start(
        &self,
        genuine: &[usize],
        file: &str,
        last_good: Option<&u64>,
        torn_bytes: usize,
    ) -> Option<usize> {
        let want_note =
            format!("{file} ends with a torn record of {torn_bytes} bytes after sequence ");
        genuine.iter().copied().find(|&i| {
            let r = &self.recs[i];
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

    /// Each file must begin with its `segment-start`; a start that names another file or
    /// another previous segment is a note (renamed or re-ordered files).
    pub(super) fn check_segment_starts(&self, genuine: &[usize], report: &mut VerifyReport) {
        for (fi, f) in self.files.iter().enumerate() {
            let first = genuine
                .iter()
                .map(|&i| &self.recs[i])
                .find(|r| r.file == fi);
            let Some(first) = first else {
                if f.first_seq.is_none() && !self.torn.iter().any(|t| t.file == fi) {
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
                    let before = fi.checked_sub(1).map(|b| self.files[b].name.as_str());
                    if let Some(before) =
                        before.filter(|b| s.previous_segment.as_deref() != Some(b))
                    {
                        report.notes.push(format!(
                            "{} names {} as its previous segment; the file before it here is {}",
                            f.name,
                            s.previous_segment.as_deref().unwrap_or("(none)"),
                            before
                        ));
                    }
                }
                _ => report.problems.push(Problem {
                    sequence: Some(first.seq),
                    kind: ProblemKind::SegmentLink,
                    location: Some(self.loc(first)),
                    detail: format!(
                        "{} does not begin with its segment-start record (its first record \
                         is {})",
                        f.name, first.seq
                    ),
                }),
            }
        }
    }
}

/// `truncated`: file `name` ends with the incomplete line `t`.
fn torn_problem(t: &Torn, name: &str, last_good: Option<&u64>) -> Problem {
    let guess = t.seq.or_else(|| last_good.map(|s| s + 1));
    Problem {
        sequence: guess,
        kind: ProblemKind::Truncated,
        location: Some(format!("{name}:{}", t.line)),
        detail: format!(
            "{name} ends with an incomplete record of {} bytes (a crash during a write, or \
             the file was cut){}",
            t.bytes,
            guess
                .map(|s| format!(": record {s} is lost"))
                .unwrap_or_default()
        ),
    }
}
