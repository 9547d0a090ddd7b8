//! The last phases: count events and checkpoints, check each checkpoint's head and (with the
//! public key) its signature (`edited`, `forged-signature`), then the summary.

use super::super::checkpoint::verify_signature;
use super::super::event::key_id_of;
use super::load::Verifier;
use super::records::{hex32, CheckpointInfo, Rec, RecType};
use super::{short, ProblemKind, VerifyReport};

impl Verifier {
    /// Counts records by type and checks every checkpoint of the chain.
    pub(super) fn check_checkpoints(
        &self,
        chain: &[usize],
        public_key_der: Option<&[u8]>,
        report: &mut VerifyReport,
    ) {
        let mut unverified = 0u64;
        for &i in chain {
            let r = &self.recs[i];
            match r.rtype {
                Some(RecType::Event) => report.events += 1,
                Some(RecType::Checkpoint) => report.checkpoints += 1,
                _ => {}
            }
            let Some(cp) = &r.checkpoint else { continue };
            self.check_head(r, cp, report);
            match public_key_der {
                None => unverified += 1,
                Some(pk) => self.check_signature(r, cp, pk, report),
            }
        }
        if unverified > 0 {
            report.notes.push(format!(
                "{unverified} checkpoint signature(s) NOT verified: no public key given"
            ));
        }
    }

    /// `edited`: a checkpoint must name the record before it as its head.
    fn check_head(&self, r: &Rec, cp: &CheckpointInfo, report: &mut VerifyReport) {
        if cp.head_sequence != Some(r.seq.wrapping_sub(1))
            || cp.head_hash.as_deref().and_then(hex32) != r.prev
        {
            report.problems.push(self.problem_at(
                r,
                ProblemKind::Edited,
                format!(
                    "checkpoint {} names a head other than the record before it",
                    r.seq
                ),
            ));
        }
    }

    /// A verified signature is counted; anything else is `forged-signature`, with the reason.
    fn check_signature(&self, r: &Rec, cp: &CheckpointInfo, pk: &[u8], report: &mut VerifyReport) {
        let ok = cp
            .signed
            .as_ref()
            .is_some_and(|(msg, sig)| verify_signature(pk, msg, sig));
        if ok {
            report.checkpoints_verified += 1;
            report.last_verified_checkpoint = Some(r.seq);
            return;
        }
        let key_id = key_id_of(pk);
        let why = match (&cp.signed, &cp.key_id) {
            (None, _) => "has no well-formed signature".to_owned(),
            (Some(_), Some(k)) if *k != key_id => format!(
                "is signed by key {} (not the given key {}) and does not verify",
                short(k),
                short(&key_id)
            ),
            _ => "does not verify with the given public key".to_owned(),
        };
        report.problems.push(self.problem_at(
            r,
            ProblemKind::ForgedSignature,
            format!("the signature of checkpoint {} {why}", r.seq),
        ));
    }

    /// The chain's extent and head, the note on records after the last verified checkpoint,
    /// and the problems sorted by sequence with repeats of one kind merged.
    pub(super) fn summarise(
        &self,
        chain: &[usize],
        public_key_der: Option<&[u8]>,
        report: &mut VerifyReport,
    ) {
        report.records = chain.len() as u64;
        report.first_sequence = chain.first().map(|&i| self.recs[i].seq);
        if let Some(&last) = chain.last() {
            report.last_sequence = Some(self.recs[last].seq);
            report.last_hash = self.recs[last].hash.map(hex::encode);
            let unsigned_tail = match report.last_verified_checkpoint {
                Some(c) => self.recs[last].seq.saturating_sub(c),
                None => report.records,
            };
            if public_key_der.is_some() && unsigned_tail > 0 {
                report.notes.push(format!(
                    "{unsigned_tail} record(s) after the last verified checkpoint are protected \
                     by the hash chain only"
                ));
            }
        }
        let problems = &mut report.problems;
        problems.sort_by(|a, b| {
            (a.sequence, a.kind, &a.location).cmp(&(b.sequence, b.kind, &b.location))
        });
        problems
            .dedup_by(|a, b| a.sequence.is_some() && a.sequence == b.sequence && a.kind == b.kind);
    }
}
