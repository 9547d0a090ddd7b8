//! The chain phases: keep one record per sequence number (`inserted`, or `truncated` when a
//! recovery abandoned it), set aside stray records, check file order (`reordered`), then walk
//! the chain by sequence (`edited`, `deleted`, `truncated`).

use std::collections::{BTreeMap, BTreeSet};

use super::super::event::GENESIS_HASH;
use super::load::Verifier;
use super::records::{hex32, Rec, RecType};
use super::{Problem, ProblemKind, VerifyReport, MAX_LISTED_PER_GAP};

impl Verifier {
    /// Whether record `i` chains to a record with the previous sequence (or to genesis).
    fn linked_back(&self, i: usize) -> bool {
        let r = &self.recs[i];
        if r.seq == 1 {
            return r.prev.is_some() && r.prev == hex32(GENESIS_HASH);
        }
        r.prev.is_some()
            && self
                .by_seq
                .get(&(r.seq - 1))
                .is_some_and(|c| c.iter().any(|j| self.recs[*j].hash == r.prev))
    }

    /// Whether a record with the next sequence chains to record `i`.
    fn linked_fwd(&self, i: usize) -> bool {
        let r = &self.recs[i];
        r.hash.is_some()
            && self
                .by_seq
                .get(&(r.seq + 1))
                .is_some_and(|c| c.iter().any(|j| self.recs[*j].prev == r.hash))
    }

    /// Keeps the best-linked record of each repeated sequence number; returns the others,
    /// each reported as abandoned by a recovery (`truncated`) or `inserted`.
    pub(super) fn exclude_duplicates(&self, report: &mut VerifyReport) -> BTreeSet<usize> {
        let recovery_starts: Vec<usize> = self
            .recs
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.start.as_ref().is_some_and(|s| {
                    s.reason == "crash-recovery" || s.reason == "write-error-recovery"
                })
            })
            .map(|(i, _)| i)
            .collect();
        let mut excluded = BTreeSet::new();
        for (seq, cands) in &self.by_seq {
            if cands.len() < 2 {
                continue;
            }
            let score = |i: usize| {
                u8::from(self.recs[i].hash_ok) * 4
                    + u8::from(self.linked_fwd(i)) * 2
                    + u8::from(self.linked_back(i))
            };
            // Best score; on a tie the first in file order.
            let best = *cands
                .iter()
                .max_by(|a, b| score(**a).cmp(&score(**b)).then(b.cmp(a)))
                .unwrap_or(&cands[0]);
            for &o in cands.iter().filter(|o| **o != best) {
                excluded.insert(o);
                report
                    .problems
                    .push(self.duplicate_problem(*seq, o, best, &recovery_starts));
            }
        }
        excluded
    }

    /// The problem for record `o`, a second record with sequence `seq` beside `best`.
    fn duplicate_problem(&self, seq: u64, o: usize, best: usize, recovery: &[usize]) -> Problem {
        let r = &self.recs[o];
        // Written before a crash or write failure, then superseded by a recovery
        // segment: abandoned, reported as a truncation.
        let abandoned = recovery.iter().find(|&&s| {
            let s = &self.recs[s];
            s.file > r.file && s.seq <= seq
        });
        match abandoned {
            Some(&s) => Problem {
                sequence: Some(seq),
                kind: ProblemKind::Truncated,
                location: Some(self.loc(r)),
                detail: format!(
                    "record {seq} was written but not committed before a {}; the trail \
                     continued at sequence {} in {}",
                    self.recs[s]
                        .start
                        .as_ref()
                        .map_or("failure", |x| x.reason.trim_end_matches("-recovery")),
                    self.recs[s].seq,
                    self.files[self.recs[s].file].name
                ),
            },
            None => Problem {
                sequence: Some(seq),
                kind: ProblemKind::Inserted,
                location: Some(self.loc(r)),
                detail: format!(
                    "a second record with sequence {seq} (the chain runs through {})",
                    self.loc(&self.recs[best])
                ),
            },
        }
    }

    /// Sets aside stray records: linked to no neighbour and out of place in file order.
    pub(super) fn exclude_strays(&self, excluded: &mut BTreeSet<usize>, report: &mut VerifyReport) {
        let in_file_order: Vec<usize> = (0..self.recs.len())
            .filter(|i| !excluded.contains(i))
            .collect();
        for (k, &i) in in_file_order.iter().enumerate() {
            let r = &self.recs[i];
            if self.linked_back(i) || self.linked_fwd(i) || r.malformed.is_some() {
                continue;
            }
            let before = k.checked_sub(1).map(|j| self.recs[in_file_order[j]].seq);
            let after = in_file_order.get(k + 1).map(|&j| self.recs[j].seq);
            let out_of_place =
                before.is_some_and(|b| b >= r.seq) || after.is_some_and(|a| a <= r.seq);
            if out_of_place && in_file_order.len() > 1 {
                excluded.insert(i);
                report.problems.push(self.problem_at(
                    r,
                    ProblemKind::Inserted,
                    format!(
                        "record {} is linked to no neighbour and sits out of sequence",
                        r.seq
                    ),
                ));
            }
        }
    }

    /// `reordered`: a genuine record after one with a higher sequence, in file order.
    pub(super) fn check_file_order(&self, genuine: &[usize], report: &mut VerifyReport) {
        let mut max_seen: Option<(u64, usize)> = None;
        for &i in genuine {
            let r = &self.recs[i];
            match max_seen {
                Some((m, mi)) if r.seq < m => report.problems.push(self.problem_at(
                    r,
                    ProblemKind::Reordered,
                    format!(
                        "record {} appears after record {m} ({})",
                        r.seq,
                        self.loc(&self.recs[mi])
                    ),
                )),
                _ => max_seen = Some((r.seq, i)),
            }
        }
    }

    /// The highest genuine sequence number of each file.
    pub(super) fn last_in_file(&self, genuine: &[usize]) -> BTreeMap<usize, u64> {
        genuine.iter().fold(BTreeMap::new(), |mut m, &i| {
            let e = m.entry(self.recs[i].file).or_insert(0);
            *e = (*e).max(self.recs[i].seq);
            m
        })
    }

    /// Walks the chain by sequence: damaged records, the start of the chain, and each link.
    pub(super) fn check_chain(
        &self,
        chain: &[usize],
        last_in_file: &BTreeMap<usize, u64>,
        report: &mut VerifyReport,
    ) {
        let mut prev: Option<&Rec> = None;
        for &i in chain {
            let r = &self.recs[i];
            self.check_damage(r, report);
            match prev {
                None => self.check_chain_start(r, report),
                Some(pr) => self.check_link(pr, r, last_in_file, report),
            }
            prev = Some(r);
        }
    }

    /// `edited`: a record that is malformed or does not match its hash.
    fn check_damage(&self, r: &Rec, report: &mut VerifyReport) {
        let detail = if let Some(why) = &r.malformed {
            format!("record {} is damaged: {why}", r.seq)
        } else if !r.hash_ok {
            format!("record {} does not match its hash", r.seq)
        } else {
            return;
        };
        report
            .problems
            .push(self.problem_at(r, ProblemKind::Edited, detail));
    }

    /// The first record of the chain: genesis, a segment start of a later segment (a note),
    /// or records deleted before it.
    fn check_chain_start(&self, r: &Rec, report: &mut VerifyReport) {
        if r.seq == 1 {
            if r.prev.is_some() && r.prev != hex32(GENESIS_HASH) {
                report.problems.push(Problem {
                    sequence: Some(1),
                    kind: ProblemKind::Edited,
                    location: Some(self.loc(r)),
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
            report.problems.push(Problem {
                sequence: Some(r.seq - 1),
                kind: ProblemKind::Deleted,
                location: Some(self.loc(r)),
                detail: format!(
                    "the first file does not begin with its segment-start: records \
                     before sequence {} were removed",
                    r.seq
                ),
            });
        }
    }

    /// The link from `pr` to the next record of the chain `r`: a changed record, or a gap.
    fn check_link(
        &self,
        pr: &Rec,
        r: &Rec,
        last_in_file: &BTreeMap<usize, u64>,
        report: &mut VerifyReport,
    ) {
        if r.seq == pr.seq + 1 {
            if pr.hash.is_some() && r.prev.is_some() && pr.hash != r.prev {
                report.problems.push(Problem {
                    sequence: Some(pr.seq),
                    kind: ProblemKind::Edited,
                    location: Some(self.loc(pr)),
                    detail: format!(
                        "record {} does not have the hash record {} chains to: it was \
                         changed (and its hash recomputed)",
                        pr.seq, r.seq
                    ),
                });
            }
        } else if r.seq > pr.seq + 1 {
            let at_file_end = r.file != pr.file
                && last_in_file.get(&pr.file) == Some(&pr.seq)
                && r.rtype == Some(RecType::SegmentStart);
            self.report_gap(pr, r, at_file_end, report);
        }
    }

    /// The missing records between `pr` and `r`: `truncated` at the end of a file followed by
    /// the next segment, `deleted` otherwise; a torn line reports its own record.
    fn report_gap(&self, pr: &Rec, r: &Rec, at_file_end: bool, report: &mut VerifyReport) {
        let (from, to) = (pr.seq + 1, r.seq - 1);
        let torn_here = self.torn.iter().any(|t| t.file == pr.file);
        let kind = if at_file_end {
            ProblemKind::Truncated
        } else {
            ProblemKind::Deleted
        };
        for s in (from..=to).take(MAX_LISTED_PER_GAP as usize) {
            if torn_here && self.torn.iter().any(|t| t.seq == Some(s)) {
                continue; // reported as a torn line
            }
            report.problems.push(Problem {
                sequence: Some(s),
                kind,
                location: None,
                detail: if at_file_end {
                    format!(
                        "record {s} is missing from the end of {} (the next segment \
                         starts at {})",
                        self.files[pr.file].name, r.seq
                    )
                } else {
                    format!("record {s} is missing (between {} and {})", pr.seq, r.seq)
                },
            });
        }
        if to - from + 1 > MAX_LISTED_PER_GAP {
            report.problems.push(Problem {
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
