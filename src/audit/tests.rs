//! Audit trail tests: real files in a temporary directory, a software checkpoint signer.
//! Tampering is done the way an attacker with write access to the files would do it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::checkpoint::{attach_signature, split_signature, SoftwareSigner};
use super::event::{seal_line, split_line};
use super::*;

fn test_config(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir);
    c.checkpoint_every_events = 5;
    c.checkpoint_interval = None;
    c.max_segment_age = None;
    c.retry_min = Duration::from_millis(10);
    c.retry_max = Duration::from_millis(100);
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn event(i: usize) -> AuditEvent {
    let mut e = AuditEvent::new("Encrypt", format!("req-{i}"), now_ms());
    e.set_request_parameter("keyId", "alias/orders");
    e.set_request_parameter("encryptionAlgorithm", "SYMMETRIC_DEFAULT");
    e.add_key_resource(
        "arn:aws:kms:local:111122223333:key/4f7c0a39-1c1f-4c43-9a3b-1d2e3f405162",
        "111122223333",
    );
    e.latency_micros = 100 + i as u64;
    e
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| super::writer::segment_index(n).is_some())
        })
        .collect();
    v.sort();
    v
}

/// Lines of a file, each with its `\n` (the last one may lack it).
fn lines(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    data.split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

fn json(line: &[u8]) -> Value {
    serde_json::from_slice(line).unwrap()
}

fn seq_of(line: &[u8]) -> u64 {
    json(line)["sequence"].as_u64().unwrap()
}

fn hash_of(line: &[u8]) -> String {
    json(line)["hash"].as_str().unwrap().to_owned()
}

/// Recompute a line's hash after its body was changed (what a careful attacker does).
fn rehash(line: &[u8]) -> Vec<u8> {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let (body, _) = split_line(trimmed).expect("hash member");
    seal_line(&body).0
}

/// Point a line's previousHash at `prev` and recompute its hash.
fn set_prev(line: &[u8], prev: &str) -> Vec<u8> {
    const KEY: &[u8] = b"\"previousHash\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY).unwrap() + KEY.len();
    let mut out = line.to_vec();
    out[at..at + 64].copy_from_slice(prev.as_bytes());
    rehash(&out)
}

/// Rewrite the chain from line `from` on (every later line re-linked, checkpoints' headHash
/// updated, re-hashed): all an attacker without the signing key can do.
fn rechain(lines: &mut [Vec<u8>], from: usize) {
    const HEAD: &[u8] = b"\"headHash\":\"";
    for i in from..lines.len() {
        let prev = hash_of(&lines[i - 1]);
        if let Some(at) = lines[i].windows(HEAD.len()).position(|w| w == HEAD) {
            let at = at + HEAD.len();
            lines[i][at..at + 64].copy_from_slice(prev.as_bytes());
        }
        lines[i] = set_prev(&lines[i], &prev);
    }
}

fn replace(line: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(line.to_vec()).unwrap();
    assert!(s.contains(from), "{from} not in {s}");
    s.replacen(from, to, 1).into_bytes()
}

fn index_of_seq(lines: &[Vec<u8>], seq: u64) -> usize {
    lines.iter().position(|l| seq_of(l) == seq).unwrap()
}

fn problems(r: &VerifyReport) -> Vec<(ProblemKind, Option<u64>)> {
    r.problems.iter().map(|p| (p.kind, p.sequence)).collect()
}

struct Trail {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    signer: Arc<SoftwareSigner>,
}

impl Trail {
    fn key(&self) -> Vec<u8> {
        self.signer.public_key_spki_der().to_vec()
    }

    fn verify(&self) -> VerifyReport {
        verify_files(&segments(&self.dir), Some(&self.key()))
    }

    async fn open(&self) -> AuditLog {
        self.open_with(test_config(&self.dir)).await
    }

    async fn open_with(&self, cfg: AuditConfig) -> AuditLog {
        let signer: Arc<dyn CheckpointSigner> = self.signer.clone();
        AuditLog::open(cfg, Some(signer)).await.unwrap()
    }
}

fn trail() -> Trail {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    Trail {
        _tmp: tmp,
        dir,
        signer: Arc::new(SoftwareSigner::generate()),
    }
}

/// A closed trail of one segment: segment-start, 12 events, checkpoints after every 5 and at
/// shutdown.
async fn written_trail(events: usize) -> Trail {
    let t = trail();
    let log = t.open().await;
    for i in 0..events {
        log.append(event(i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    t
}

/// A closed trail of one segment (see `written_trail`), the path of that segment and its lines.
async fn written_segment(events: usize) -> (Trail, PathBuf, Vec<Vec<u8>>) {
    let t = written_trail(events).await;
    let path = segments(&t.dir)[0].clone();
    let ls = lines(&path);
    (t, path, ls)
}

// ---------------------------------------------------------------- clean trails

#[tokio::test]
async fn clean_trail_verifies_and_restart_continues() {
    let t = written_trail(12).await;
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert_eq!(r.events, 12);
    // 1 segment start + 12 events + checkpoints after events 5 and 10 + one at shutdown.
    assert_eq!(r.checkpoints, 3);
    assert_eq!(r.checkpoints_verified, 3);
    assert_eq!(r.records, 16);
    assert_eq!((r.first_sequence, r.last_sequence), (Some(1), Some(16)));

    // Restart: a new segment linked to the last record, the sequence continues.
    let head = lines(&segments(&t.dir)[0]).last().cloned().unwrap();
    let log = t.open().await;
    let receipt = log.append(event(99)).await.unwrap();
    assert_eq!(receipt.sequence, 18);
    assert!(receipt.durable);
    log.shutdown().await.unwrap();
    let files = segments(&t.dir);
    assert_eq!(files.len(), 2);
    let start = json(&lines(&files[1])[0]);
    assert_eq!(start["recordType"], "segment-start");
    assert_eq!(start["sequence"], 17);
    assert_eq!(start["previousHash"], hash_of(&head));
    assert_eq!(start["previousSegment"], "audit-000001.jsonl");
    assert_eq!(start["segment"], "audit-000002.jsonl");
    assert_eq!(start["reason"], "startup");

    // Files in any order.
    let reversed: Vec<PathBuf> = files.iter().rev().cloned().collect();
    let r = verify_files(&reversed, Some(&t.key()));
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert_eq!(r.last_sequence, Some(19));

    // Without the key: still intact, but the report says the signatures were not checked.
    let r = verify_files(&files, None);
    assert!(r.is_ok());
    assert_eq!(r.checkpoints_verified, 0);
    assert!(r.notes.iter().any(|n| n.contains("NOT verified")));
}

#[tokio::test]
async fn record_lines_hash_as_documented() {
    let t = written_trail(2).await;
    let ls = lines(&segments(&t.dir)[0]);
    let mut prev = super::event::GENESIS_HASH.to_owned();
    for (i, l) in ls.iter().enumerate() {
        assert_eq!(*l.last().unwrap(), b'\n');
        let l = &l[..l.len() - 1];
        // hash = sha256(line without `,"hash":"…"`), documented as line[:-75] + "}".
        let mut body = l[..l.len() - 75].to_vec();
        body.push(b'}');
        let v = json(l);
        assert_eq!(v["hash"], crate::encoding::sha256_hex(&body));
        assert_eq!(v["previousHash"], prev);
        assert_eq!(v["sequence"], i as u64 + 1);
        let text = String::from_utf8(l.to_vec()).unwrap();
        assert!(text.starts_with("{\"recordType\":\""), "{text}");
        prev = v["hash"].as_str().unwrap().to_owned();
    }
}

// ---------------------------------------------------------------- tampering

#[tokio::test]
async fn edited_field_is_detected_by_sequence() {
    let (t, path, orig) = written_segment(12).await;
    let i = index_of_seq(&orig, 4);

    // 1. Edited in place.
    let mut ls = orig.clone();
    ls[i] = replace(
        &ls[i],
        "\"eventName\":\"Encrypt\"",
        "\"eventName\":\"Decrypt\"",
    );
    write_lines(&path, &ls);
    assert_eq!(problems(&t.verify()), vec![(ProblemKind::Edited, Some(4))]);

    // 2. Edited and its own hash recomputed: the next record no longer chains to it.
    ls[i] = rehash(&ls[i]);
    write_lines(&path, &ls);
    assert_eq!(problems(&t.verify()), vec![(ProblemKind::Edited, Some(4))]);

    // 3. Edited and the whole rest of the chain rewritten: only the signed checkpoints
    // after it expose it.
    rechain(&mut ls, i + 1);
    write_lines(&path, &ls);
    let r = t.verify();
    let p = problems(&r);
    assert!(!p.is_empty());
    assert!(
        p.iter().all(|(k, _)| *k == ProblemKind::ForgedSignature),
        "{p:?}"
    );
    assert_eq!(
        p[0].1,
        Some(7),
        "the first checkpoint after the edit: {p:?}"
    );
    assert!(
        verify_files(std::slice::from_ref(&path), None).is_ok(),
        "undetectable without the key"
    );
}

#[tokio::test]
async fn deleted_record_is_detected_by_sequence() {
    let (t, path, mut ls) = written_segment(12).await;
    let i = index_of_seq(&ls, 9);
    ls.remove(i);
    write_lines(&path, &ls);
    assert_eq!(problems(&t.verify()), vec![(ProblemKind::Deleted, Some(9))]);

    // Several in a row.
    ls.remove(i);
    ls.remove(i);
    write_lines(&path, &ls);
    assert_eq!(
        problems(&t.verify()),
        vec![
            (ProblemKind::Deleted, Some(9)),
            (ProblemKind::Deleted, Some(10)),
            (ProblemKind::Deleted, Some(11))
        ]
    );
}

#[tokio::test]
async fn inserted_record_is_detected_by_sequence() {
    let (t, path, orig) = written_segment(12).await;

    // A forged record that claims sequence 5, correctly chained to record 4.
    let mut ls = orig.clone();
    let i4 = index_of_seq(&ls, 4);
    let forged = replace(&ls[i4], "\"sequence\":4,", "\"sequence\":5,");
    let forged = replace(&forged, "req-2", "req-forged");
    let forged = set_prev(&forged, &hash_of(&ls[i4]));
    ls.insert(i4 + 1, forged);
    write_lines(&path, &ls);
    let r = t.verify();
    assert_eq!(problems(&r), vec![(ProblemKind::Inserted, Some(5))]);
    assert!(r.problems[0].location.as_deref() == Some("audit-000001.jsonl:5"));

    // A copy of an earlier record replayed later.
    let mut ls = orig.clone();
    let copy = ls[index_of_seq(&ls, 3)].clone();
    ls.insert(index_of_seq(&ls, 10), copy);
    write_lines(&path, &ls);
    assert_eq!(
        problems(&t.verify()),
        vec![(ProblemKind::Inserted, Some(3))]
    );

    // A stray record with a sequence number of its own.
    let mut ls = orig.clone();
    let stray = replace(
        &ls[index_of_seq(&ls, 3)],
        "\"sequence\":3,",
        "\"sequence\":500,",
    );
    ls.insert(index_of_seq(&ls, 8), rehash(&stray));
    write_lines(&path, &ls);
    assert_eq!(
        problems(&t.verify()),
        vec![(ProblemKind::Inserted, Some(500))]
    );
}

#[tokio::test]
async fn swapped_pair_is_detected_by_sequence() {
    let (t, path, mut ls) = written_segment(12).await;
    let i = index_of_seq(&ls, 9);
    ls.swap(i, i + 1);
    write_lines(&path, &ls);
    let r = t.verify();
    assert_eq!(problems(&r), vec![(ProblemKind::Reordered, Some(9))]);
    assert!(
        r.problems[0].detail.contains("after record 10"),
        "{:?}",
        r.problems
    );
}

#[tokio::test]
async fn truncated_file_is_detected_by_sequence() {
    let t = written_trail(12).await;
    let path = segments(&t.dir)[0].clone();
    let data = std::fs::read(&path).unwrap();
    let ls = lines(&path);
    let i = index_of_seq(&ls, 11);
    let start: usize = ls[..i].iter().map(Vec::len).sum();
    // Cut in the middle of record 11: everything after it is gone too.
    std::fs::write(&path, &data[..start + ls[i].len() / 2]).unwrap();
    let r = t.verify();
    assert_eq!(problems(&r), vec![(ProblemKind::Truncated, Some(11))]);
    assert_eq!(r.last_sequence, Some(10));

    // A segment cut at a line boundary before the next segment starts.
    let t = written_trail(12).await;
    let log = t.open().await;
    log.append(event(1)).await.unwrap();
    log.shutdown().await.unwrap();
    let first = segments(&t.dir)[0].clone();
    let mut ls = lines(&first);
    ls.truncate(ls.len() - 2);
    write_lines(&first, &ls);
    assert_eq!(
        problems(&t.verify()),
        vec![
            (ProblemKind::Truncated, Some(15)),
            (ProblemKind::Truncated, Some(16))
        ]
    );
}

/// Replace the signature of the checkpoint at line `c` by `signer`'s over the same message.
async fn resign(line: &[u8], signer: &SoftwareSigner) -> Vec<u8> {
    let trimmed = line.strip_suffix(b"\n").unwrap().to_vec();
    let (body, _) = split_line(&trimmed).unwrap();
    let (signed, _) = split_signature(&body).unwrap();
    let sig = signer.sign(&signed).await.unwrap();
    seal_line(&attach_signature(&signed, &sig)).0
}

#[tokio::test]
async fn forged_checkpoint_signature_is_detected_by_sequence() {
    let (t, path, orig) = written_segment(12).await;
    let checkpoints: Vec<usize> = orig
        .iter()
        .enumerate()
        .filter(|(_, l)| json(l)["recordType"] == "checkpoint")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(checkpoints.len(), 3);
    let attacker = SoftwareSigner::generate();

    // The last checkpoint re-signed with another key.
    let mut ls = orig.clone();
    let last = *checkpoints.last().unwrap();
    ls[last] = resign(&ls[last], &attacker).await;
    write_lines(&path, &ls);
    let r = t.verify();
    assert_eq!(
        problems(&r),
        vec![(ProblemKind::ForgedSignature, Some(seq_of(&ls[last])))]
    );
    assert_eq!(r.checkpoints_verified, 2);

    // The first one re-signed and the chain after it rewritten: it and every later
    // checkpoint fail, nothing else does.
    let mut ls = orig.clone();
    let first = checkpoints[0];
    ls[first] = resign(&ls[first], &attacker).await;
    rechain(&mut ls, first + 1);
    write_lines(&path, &ls);
    let r = t.verify();
    let expected: Vec<_> = checkpoints
        .iter()
        .map(|&c| (ProblemKind::ForgedSignature, Some(seq_of(&ls[c]))))
        .collect();
    assert_eq!(problems(&r), expected);
    // The attacker's key verifies exactly the one it signed.
    let r = verify_files(&[path], Some(attacker.public_key_spki_der()));
    assert_eq!(r.checkpoints_verified, 1);
}

// ---------------------------------------------------------------- crash recovery

#[tokio::test]
async fn crash_mid_write_is_reported_and_the_trail_continues() {
    let (t, path, ls) = written_segment(12).await;
    let last = ls.last().unwrap().clone();
    let last_seq = seq_of(&last);
    let good = &ls[ls.len() - 2];
    // The crash tore the last record in half.
    let torn: Vec<u8> = ls[..ls.len() - 1]
        .concat()
        .into_iter()
        .chain(last[..last.len() / 2].iter().copied())
        .collect();
    std::fs::write(&path, &torn).unwrap();

    let log = t.open().await;
    let receipt = log.append(event(1)).await.unwrap();
    assert_eq!(receipt.sequence, last_seq + 1);
    log.shutdown().await.unwrap();

    // The torn bytes stay where they were.
    assert_eq!(std::fs::read(&path).unwrap(), torn);
    let files = segments(&t.dir);
    assert_eq!(files.len(), 2);
    let start = json(&lines(&files[1])[0]);
    assert_eq!(start["reason"], "crash-recovery");
    assert_eq!(start["sequence"], last_seq);
    assert_eq!(start["previousHash"], hash_of(good));
    assert_eq!(start["truncatedAfterSequence"], last_seq - 1);
    assert!(start["note"].as_str().unwrap().contains("torn"));

    // The daemon sealed the torn record into the chain: a note, not a problem.
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert!(
        r.notes.iter().any(|n| n.contains("torn by a crash")),
        "{:?}",
        r.notes
    );
    assert!(r.checkpoints_verified >= 3);

    // Torn bytes that differ from what recovery recorded are a problem again.
    let mut longer = torn.clone();
    longer.extend_from_slice(b"x");
    std::fs::write(&path, &longer).unwrap();
    let r = t.verify();
    assert_eq!(problems(&r), vec![(ProblemKind::Truncated, Some(last_seq))]);
    assert!(
        r.problems[0].detail.contains("incomplete"),
        "{:?}",
        r.problems
    );
    std::fs::write(&path, &torn).unwrap();

    // So is a torn line in the newest segment: no recovery recorded it.
    let newest = files[1].clone();
    let mut data = std::fs::read(&newest).unwrap();
    data.truncate(data.len() - 10);
    std::fs::write(&newest, &data).unwrap();
    let r = t.verify();
    assert_eq!(
        problems(&r).first().map(|p| p.0),
        Some(ProblemKind::Truncated),
        "{}",
        verify::render(&r, None)
    );
}

#[tokio::test]
async fn crash_leaving_an_empty_segment_continues_from_the_previous_one() {
    let t = written_trail(3).await;
    let first = segments(&t.dir)[0].clone();
    let head = lines(&first).last().cloned().unwrap();
    std::fs::write(t.dir.join("audit-000002.jsonl"), b"").unwrap();
    let log = t.open().await;
    log.append(event(1)).await.unwrap();
    log.shutdown().await.unwrap();
    let files = segments(&t.dir);
    assert_eq!(files.len(), 3);
    let start = json(&lines(&files[2])[0]);
    assert_eq!(start["previousHash"], hash_of(&head));
    assert_eq!(start["previousSegment"], "audit-000002.jsonl");
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
}

// ---------------------------------------------------------------- durability

// The gate is a std mutex that stops the writer *thread*; holding it across awaits is the
// point.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs_and_acks_after_durable() {
    const N: u64 = 40;
    let t = trail();
    let log = Arc::new(t.open().await);
    let before = log.stats();
    let gate = log.test_gate();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N as usize {
        let log = Arc::clone(&log);
        let dir = t.dir.clone();
        tasks.spawn(async move {
            let receipt = log.append(event(i)).await.unwrap();
            // Durable before the answer: the record is in the file, and an fsync has
            // completed since the test started.
            let data = std::fs::read(dir.join("audit-000001.jsonl")).unwrap();
            let needle = format!("\"sequence\":{},", receipt.sequence);
            assert!(String::from_utf8_lossy(&data).contains(&needle));
            assert!(receipt.durable);
            receipt.sequence
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().queue_depth < N {
        assert!(Instant::now() < deadline, "appends did not queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(log.stats().events_written, 0, "nothing written while held");
    drop(gate);
    let mut seqs = Vec::new();
    while let Some(s) = tasks.join_next().await {
        seqs.push(s.unwrap());
    }
    seqs.sort_unstable();
    // Sequence 1 is the segment start; the checkpoint sits after the events.
    assert_eq!(seqs, (2..N + 2).collect::<Vec<_>>());
    let after = log.stats();
    assert_eq!(after.events_written, N);
    assert_eq!(after.batches - before.batches, 1);
    assert_eq!(after.fsyncs - before.fsyncs, 1, "{N} appends, one fsync");
    assert_eq!(after.checkpoints_written, 1);
    assert_eq!(after.queue_depth, 0);
    assert_eq!(*after.fsync_buckets.last().unwrap(), after.fsyncs);
    log.shutdown().await.unwrap();
    assert!(t.verify().is_ok());
}

#[tokio::test]
async fn relaxed_mode_acknowledges_before_fsync_and_syncs_on_interval() {
    let t = trail();
    let mut cfg = test_config(&t.dir);
    cfg.durability = Durability::Relaxed {
        fsync_interval: Duration::from_millis(50),
    };
    cfg.checkpoint_every_events = 0;
    let log = t.open_with(cfg).await;
    let fsyncs = log.stats().fsyncs;
    let r = log.append(event(1)).await.unwrap();
    assert!(!r.durable);
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.stats().fsyncs == fsyncs {
        assert!(Instant::now() < deadline, "no interval fsync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.append(event(2)).await.unwrap();
    log.flush().await.unwrap();
    log.shutdown().await.unwrap();
    assert!(t.verify().is_ok());
}

#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn full_queue_answers_busy() {
    let t = trail();
    let mut cfg = test_config(&t.dir);
    cfg.queue_capacity = 2;
    let log = Arc::new(t.open_with(cfg).await);
    let gate = log.test_gate();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move { log.append(event(i)).await }));
        // Let each one enqueue (the writer takes the first and blocks on the gate).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = log.append(event(9)).await.unwrap_err();
    assert_eq!(e, AuditError::Busy);
    drop(gate);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(log.stats().rejected >= 1);
    log.shutdown().await.unwrap();
}

/// A flush (or checkpoint, or shutdown) that finds the queue full waits for room off the
/// runtime: on a current-thread runtime, other tasks keep running meanwhile.
#[test]
fn a_control_command_on_a_full_queue_does_not_block_the_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = trail();
        let mut cfg = test_config(&t.dir);
        cfg.queue_capacity = 1;
        let log = Arc::new(t.open_with(cfg).await);
        // Hold the writer for 1.5 s from another thread.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let _gate = log.test_gate();
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(1500));
            })
        };
        held_rx.recv().unwrap();
        // The writer takes the first append and waits at the gate; the second fills the queue.
        let mut appends = Vec::new();
        for i in 0..2 {
            let log = Arc::clone(&log);
            appends.push(tokio::spawn(async move { log.append(event(i)).await }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let flush = tokio::spawn({
            let log = Arc::clone(&log);
            async move { log.flush().await }
        });
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "the runtime stalled for {took:?} while a flush waited for room in the queue"
        );
        for a in appends {
            a.await.unwrap().unwrap();
        }
        flush.await.unwrap().unwrap();
        holder.join().unwrap();
        log.shutdown().await.unwrap();
    });
}

// ---------------------------------------------------------------- fail closed

#[tokio::test]
async fn fail_closed_when_the_directory_goes_and_recovers() {
    let t = trail();
    let log = t.open().await;
    let ok = log.append(event(1)).await.unwrap();
    assert!(log.healthy());

    // The audit directory is replaced by a regular file (works as root, unlike chmod).
    std::fs::remove_dir_all(&t.dir).unwrap();
    std::fs::write(&t.dir, b"not a directory").unwrap();
    let e = log.append(event(2)).await.unwrap_err();
    assert!(matches!(e, AuditError::Unavailable(_)), "{e:?}");
    assert!(!log.healthy());
    let stats = log.stats();
    assert!(!stats.healthy && stats.write_errors >= 1);
    assert!(stats.last_error.is_some());
    // Refused at once while unhealthy.
    let e = log.append(event(3)).await.unwrap_err();
    assert!(matches!(e, AuditError::Unavailable(_)), "{e:?}");
    // Still refused after a few retries.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!log.healthy());

    // Restore: the writer's retry starts a new segment and the log is healthy again.
    std::fs::remove_file(&t.dir).unwrap();
    std::fs::create_dir(&t.dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.healthy() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = log.append(event(4)).await.unwrap();
    log.shutdown().await.unwrap();

    let files = segments(&t.dir);
    assert_eq!(files.len(), 1);
    let start = json(&lines(&files[0])[0]);
    assert_eq!(start["reason"], "write-error-recovery");
    // Chained to the last committed record; the failed append left no trace.
    assert_eq!(start["sequence"], ok.sequence + 1);
    assert_eq!(start["previousHash"], ok.hash);
    assert_eq!(again.sequence, ok.sequence + 2);
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert!(r.notes.iter().any(|n| n.contains("start at sequence")));
}

#[tokio::test]
async fn open_fails_when_the_directory_cannot_be_created() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = AuditLog::open(test_config(&file.join("audit")), None)
        .await
        .unwrap_err();
    assert!(matches!(e, AuditError::Io(_)), "{e:?}");
}

// ---------------------------------------------------------------- rotation, checkpoints

#[tokio::test]
async fn rotation_by_size_links_segments() {
    let t = trail();
    let mut cfg = test_config(&t.dir);
    cfg.max_segment_bytes = 4096;
    let log = t.open_with(cfg).await;
    for i in 0..30 {
        log.append(event(i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    let files = segments(&t.dir);
    assert!(files.len() >= 3, "{files:?}");
    for (k, f) in files.iter().enumerate() {
        let ls = lines(f);
        let start = json(&ls[0]);
        assert_eq!(start["recordType"], "segment-start");
        if k > 0 {
            assert_eq!(start["reason"], "rotation-size");
            let prev_name = files[k - 1].file_name().unwrap().to_str().unwrap();
            assert_eq!(start["previousSegment"], prev_name);
            let prev_last = lines(&files[k - 1]).last().cloned().unwrap();
            assert_eq!(start["previousHash"], hash_of(&prev_last));
            // Each closed segment ends with a checkpoint.
            assert_eq!(json(&prev_last)["recordType"], "checkpoint");
        }
    }
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert_eq!(r.events, 30);

    // Retention: the older segments archived away, the rest still verifies.
    let r = verify_files(&files[1..], Some(&t.key()));
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert!(r.notes.iter().any(|n| n.contains("start at sequence")));
}

#[tokio::test]
async fn rotation_and_checkpoints_by_time() {
    let t = trail();
    let mut cfg = test_config(&t.dir);
    cfg.checkpoint_every_events = 0;
    cfg.checkpoint_interval = Some(Duration::from_millis(100));
    cfg.max_segment_age = Some(Duration::from_millis(300));
    let log = t.open_with(cfg).await;
    log.append(event(1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.stats().checkpoints_written == 0 || segments(&t.dir).len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", log.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An idle trail is not rotated again (the new segment has only its start).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(segments(&t.dir).len(), 2);
    log.shutdown().await.unwrap();
    let start = json(&lines(&segments(&t.dir)[1])[0]);
    assert_eq!(start["reason"], "rotation-time");
    assert!(t.verify().is_ok());
}

// ---------------------------------------------------------------- schema, secrets, CLI

#[tokio::test]
async fn no_secret_reaches_the_trail() {
    let t = trail();
    let log = t.open().await;
    let mut e = event(1);
    e.set_request_parameter("Plaintext", "c3VwZXItc2VjcmV0LXBsYWludGV4dA==");
    e.set_response_element("SessionToken", "FQoGZXIvYXdzEXAMPLE");
    log.append(e).await.unwrap();
    log.shutdown().await.unwrap();
    let all = std::fs::read_to_string(&segments(&t.dir)[0]).unwrap();
    assert!(!all.contains("c3VwZXItc2VjcmV0LXBsYWludGV4dA=="));
    assert!(!all.contains("FQoGZXIvYXdzEXAMPLE"));
}

/// The example event in `docs/audit.md` (`cargo test --lib audit::tests::example -- --nocapture`).
#[tokio::test]
async fn example_event_has_cloudtrail_names() {
    use std::collections::BTreeMap;
    let t = trail();
    let log = t.open().await;
    let mut e = AuditEvent::new(
        "Decrypt",
        "7b0c6e5e-3c55-4b0e-9a43-8c1f1c5b2f0e",
        1_763_894_297_042,
    );
    e.user_identity = UserIdentity {
        identity_type: "AssumedRole".into(),
        principal_id: Some("AROAEXAMPLEROLEID:batch-42".into()),
        arn: Some("arn:aws:sts::111122223333:assumed-role/orders-service/batch-42".into()),
        account_id: Some("111122223333".into()),
        access_key_id: Some("ASIAEXAMPLEKEYID1234".into()),
        session_context: Some(SessionContext {
            session_issuer: SessionIssuer {
                issuer_type: "Role".into(),
                principal_id: "AROAEXAMPLEROLEID".into(),
                arn: "arn:aws:iam::111122223333:role/orders-service".into(),
                account_id: "111122223333".into(),
                user_name: Some("orders-service".into()),
            },
            attributes: SessionAttributes {
                creation_date: "2025-11-23T10:30:00.000Z".into(),
                mfa_authenticated: "false".into(),
            },
        }),
        invoked_by: None,
    };
    e.aws_region = "eu-central-1".into();
    e.source_ip_address = Some("10.20.30.40".into());
    e.user_agent = Some("aws-sdk-go-v2/1.30.0".into());
    e.auth_method = Some("sigv4".into());
    e.door = "aws-json".into();
    e.set_request_parameter("keyId", "alias/orders");
    e.set_request_parameter("encryptionAlgorithm", "SYMMETRIC_DEFAULT");
    let mut ctx = BTreeMap::new();
    ctx.insert("tenant".to_string(), "acme".to_string());
    e.set_encryption_context(&ctx);
    e.add_key_resource(
        "arn:aws:kms:eu-central-1:111122223333:key/4f7c0a39-1c1f-4c43-9a3b-1d2e3f405162",
        "111122223333",
    );
    e.decision = Some(AuditDecision {
        effect: "Allow".into(),
        reason: "allowed by key policy 'default' statement 'AllowOrdersService'".into(),
        deciding_statements: vec![AuditDecidingStatement {
            policy_type: "KeyPolicy".into(),
            policy_name: "default".into(),
            statement: "AllowOrdersService".into(),
        }],
    });
    e.key_version = Some(3);
    e.latency_micros = 412;
    log.append(e).await.unwrap();
    log.shutdown().await.unwrap();
    let ls = lines(&segments(&t.dir)[0]);
    let line = ls
        .iter()
        .find(|l| json(l)["recordType"] == "event")
        .unwrap();
    let v = json(line);
    println!("{}", String::from_utf8_lossy(line));
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
    for l in &ls {
        println!("{}", String::from_utf8_lossy(l).trim_end());
    }
    for k in [
        "eventVersion",
        "userIdentity",
        "eventTime",
        "eventSource",
        "eventName",
        "awsRegion",
        "sourceIPAddress",
        "userAgent",
        "requestParameters",
        "responseElements",
        "requestID",
        "eventID",
        "readOnly",
        "resources",
        "eventType",
        "managementEvent",
        "recipientAccountId",
        "eventCategory",
        "decision",
        "keyVersion",
        "latencyMicros",
        "door",
        "recordType",
        "sequence",
        "previousHash",
        "hash",
    ] {
        assert!(v.get(k).is_some(), "{k} missing");
    }
    assert_eq!(v["eventVersion"], "1.08");
    assert_eq!(v["eventTime"], "2025-11-23T10:38:17.042Z");
    assert_eq!(v["eventCategory"], "Management");
    assert_eq!(v["readOnly"], true);
    assert_eq!(v["resources"][0]["type"], "AWS::KMS::Key");
    assert_eq!(
        v["requestParameters"]["encryptionContext"]["tenant"],
        "acme"
    );
    assert_eq!(
        v["userIdentity"]["sessionContext"]["sessionIssuer"]["type"],
        "Role"
    );
    assert_eq!(
        v["decision"]["decidingStatements"][0]["policyType"],
        "KeyPolicy"
    );
    // The event parses back.
    let back: AuditEvent = serde_json::from_value(v).unwrap();
    assert_eq!(back.key_version, Some(3));
}

#[tokio::test]
async fn verify_cli_exit_codes() {
    let t = written_trail(6).await;
    let key = t._tmp.path().join("audit-public-key.pem");
    export_public_key(t._tmp.path(), &t.key()).unwrap();
    let files = segments(&t.dir);
    assert_eq!(run_verify_cli(Some(&key), &files), 0);
    assert_eq!(run_verify_cli(None, &files), 0);
    assert_eq!(run_verify_cli(Some(&t.dir.join("missing.pem")), &files), 2);
    assert_eq!(run_verify_cli(Some(&key), &[]), 2);
    let mut ls = lines(&files[0]);
    ls.remove(3);
    write_lines(&files[0], &ls);
    assert_eq!(run_verify_cli(Some(&key), &files), 1);
    let out = verify::render(&verify_files(&files, Some(&t.key())), Some(&t.key()));
    println!("{out}");
    assert!(out.contains("PROBLEM deleted sequence 4"), "{out}");
    assert!(out.contains("RESULT: FAILED"), "{out}");
}

// ---------------------------------------------------------------- preallocated segments

/// The length of `data` without its trailing NUL bytes.
fn data_end(data: &[u8]) -> usize {
    data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// Asserts that a closed segment ends with its last record: no NUL byte anywhere.
fn assert_unpadded(path: &Path) {
    let data = std::fs::read(path).unwrap();
    assert!(
        !data.contains(&0),
        "{} keeps NUL bytes after it was closed",
        path.display()
    );
    assert!(data.ends_with(b"\n"), "{}", path.display());
}

#[tokio::test]
async fn a_live_segment_is_padded_and_recovery_after_a_crash_trims_the_padding() {
    let t = trail();
    let log = t.open().await;
    for i in 0..3 {
        log.append(event(i)).await.unwrap();
    }
    let path = segments(&t.dir)[0].clone();
    // What a crash now would leave: the records, then zero-filled preallocated space.
    let live = std::fs::read(&path).unwrap();
    let end = data_end(&live);
    assert_eq!(live.len() as u64, test_config(&t.dir).preallocate_bytes);
    assert_eq!(live[end - 1], b'\n');
    // The verifier accepts the padded tail of a live trail.
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert_eq!(r.events, 3);
    log.shutdown().await.unwrap();
    assert_unpadded(&path);

    // The crash: the segment as it was while live.
    std::fs::write(&path, &live).unwrap();
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    let last_seq = seq_of(lines(&path)[3].as_slice());
    let log = t.open().await;
    let receipt = log.append(event(9)).await.unwrap();
    assert_eq!(receipt.sequence, last_seq + 2);
    log.shutdown().await.unwrap();
    // Recovery trimmed the padding (and nothing else); the padding was no torn record.
    assert_eq!(std::fs::read(&path).unwrap(), &live[..end]);
    let files = segments(&t.dir);
    assert_eq!(files.len(), 2);
    assert_eq!(json(&lines(&files[1])[0])["reason"], "startup");
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert!(r.notes.iter().all(|n| !n.contains("torn")), "{:?}", r.notes);
}

#[tokio::test]
async fn nul_bytes_followed_by_data_or_inside_a_record_are_reported() {
    let (t, path, ls) = written_segment(3).await;
    let malformed_nul = |r: &VerifyReport| {
        r.problems
            .iter()
            .filter(|p| p.kind == ProblemKind::Malformed && p.detail.contains("NUL"))
            .map(|p| p.sequence)
            .collect::<Vec<_>>()
    };
    // Unused space followed by data.
    let mut holed = ls[..2].concat();
    holed.extend_from_slice(&[0u8; 100]);
    holed.extend_from_slice(&ls[2..].concat());
    std::fs::write(&path, &holed).unwrap();
    let r = t.verify();
    assert_eq!(
        malformed_nul(&r),
        vec![Some(seq_of(&ls[2]))],
        "{}",
        verify::render(&r, None)
    );

    // A NUL byte inside a record.
    let mut damaged = ls.clone();
    let mid = damaged[3].len() - 20;
    damaged[3][mid] = 0;
    write_lines(&path, &damaged);
    let r = t.verify();
    assert_eq!(
        malformed_nul(&r),
        vec![Some(seq_of(&ls[3]))],
        "{}",
        verify::render(&r, None)
    );

    // The intact file is clean again (the checks above are about the NULs).
    write_lines(&path, &ls);
    assert!(t.verify().is_ok());
}

#[tokio::test]
async fn a_torn_record_before_padding_is_a_torn_record() {
    let (t, path, ls) = written_segment(12).await;
    let last = ls.last().unwrap().clone();
    let last_seq = seq_of(&last);
    let torn: Vec<u8> = ls[..ls.len() - 1]
        .concat()
        .into_iter()
        .chain(last[..last.len() / 2].iter().copied())
        .collect();
    let mut padded = torn.clone();
    padded.extend_from_slice(&[0u8; 8192]);
    std::fs::write(&path, &padded).unwrap();
    let r = t.verify();
    assert_eq!(problems(&r), vec![(ProblemKind::Truncated, Some(last_seq))]);

    let log = t.open().await;
    log.append(event(1)).await.unwrap();
    log.shutdown().await.unwrap();
    // Recovery cut the padding only: the torn bytes stay, recorded with their own length.
    assert_eq!(std::fs::read(&path).unwrap(), torn);
    let files = segments(&t.dir);
    let start = json(&lines(&files[1])[0]);
    assert_eq!(start["reason"], "crash-recovery");
    assert_eq!(start["truncatedAfterSequence"], last_seq - 1);
    let note = start["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("torn record of {} bytes", last.len() / 2)),
        "{note}"
    );
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert!(r.notes.iter().any(|n| n.contains("torn by a crash")));
}

#[tokio::test]
async fn rotation_and_shutdown_leave_no_padding() {
    let t = trail();
    let mut cfg = test_config(&t.dir);
    cfg.max_segment_bytes = 8192;
    cfg.preallocate_bytes = 2048;
    let log = t.open_with(cfg).await;
    for i in 0..40 {
        log.append(event(i)).await.unwrap();
    }
    let files = segments(&t.dir);
    assert!(files.len() >= 3, "{files:?}");
    // Every rotated segment was trimmed to its last record.
    for f in &files[..files.len() - 1] {
        assert_unpadded(f);
    }
    log.shutdown().await.unwrap();
    for f in &files {
        assert_unpadded(f);
    }
    let r = t.verify();
    assert!(r.is_ok(), "{}", verify::render(&r, None));
    assert_eq!(r.events, 40);
}

#[tokio::test]
async fn preallocation_off_writes_no_padding() {
    let t = trail();
    let mut cfg = test_config(&t.dir);
    cfg.preallocate_bytes = 0;
    let log = t.open_with(cfg).await;
    for i in 0..3 {
        log.append(event(i)).await.unwrap();
    }
    let path = segments(&t.dir)[0].clone();
    assert_unpadded(&path);
    log.shutdown().await.unwrap();
    assert_unpadded(&path);
    assert!(t.verify().is_ok());
}

// ---------------------------------------------------------------- several nodes

/// Two nodes write their trails into one directory with the one shared signing key: each
/// keeps its own chain and names, every record names its node, and `verify_trails` checks
/// them apart. A record moved from one node's trail into the other's is `wrong-node` (and
/// breaks that chain); an edit in one node's trail fails that node only.
#[tokio::test]
async fn node_trails_share_a_directory_and_verify_apart() {
    let t = trail();
    for (node, events) in [("node-a", 3), ("node-b", 7)] {
        let mut cfg = test_config(&t.dir);
        cfg.node = Some(node.into());
        let log = t.open_with(cfg).await;
        for i in 0..events {
            log.append(event(i)).await.unwrap();
        }
        log.shutdown().await.unwrap();
    }
    let files = segments(&t.dir);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["audit-node-a-000001.jsonl", "audit-node-b-000001.jsonl"]
    );
    for (f, node) in files.iter().zip(["node-a", "node-b"]) {
        assert!(lines(f).iter().all(|l| json(l)["node"] == node), "{f:?}");
    }
    let trails = verify_trails(&files, Some(&t.key()));
    let summary: Vec<(Option<&str>, bool, u64)> = trails
        .iter()
        .map(|n| (n.node.as_deref(), n.report.is_ok(), n.report.events))
        .collect();
    assert_eq!(
        summary,
        [(Some("node-a"), true, 3), (Some("node-b"), true, 7)]
    );
    let text = verify::render_trails(&trails, Some(&t.key()));
    assert!(
        text.contains("node node-a:") && text.ends_with("RESULT: OK (2 nodes)\n"),
        "{text}"
    );

    // An event of node A's appended to node B's trail: B fails, A still verifies.
    let stolen = lines(&files[0])[1].clone();
    let mut b = lines(&files[1]);
    b.push(stolen);
    write_lines(&files[1], &b);
    let trails = verify_trails(&files, Some(&t.key()));
    assert!(trails[0].report.is_ok());
    let kinds: Vec<ProblemKind> = trails[1].report.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::WrongNode), "{kinds:?}");
    let text = verify::render_trails(&trails, Some(&t.key()));
    assert!(text.ends_with("RESULT: FAILED (nodes node-b)\n"), "{text}");

    // A node restarts on its own segments only: node A continues its chain at sequence 6
    // (segment start, 3 events, shutdown checkpoint before).
    let mut cfg = test_config(&t.dir);
    cfg.node = Some("node-a".into());
    let log = t.open_with(cfg).await;
    assert_eq!(log.append(event(9)).await.unwrap().sequence, 7);
    log.shutdown().await.unwrap();
    assert!(t.dir.join("audit-node-a-000002.jsonl").exists());
}

#[test]
fn segment_names_carry_the_node() {
    use super::writer::{parse_segment_name, segment_name};
    assert_eq!(segment_name(None, 7), "audit-000007.jsonl");
    assert_eq!(segment_name(Some("dc1-n2"), 7), "audit-dc1-n2-000007.jsonl");
    assert_eq!(parse_segment_name("audit-000007.jsonl"), Some((None, 7)));
    assert_eq!(
        parse_segment_name("audit-dc1-n2-000007.jsonl"),
        Some((Some("dc1-n2"), 7))
    );
    for bad in [
        "audit-Node-000001.jsonl",
        "audit-a-01.jsonl",
        "audit--000001.jsonl",
        "x.jsonl",
    ] {
        assert_eq!(parse_segment_name(bad), None, "{bad}");
    }
}

// ---------------------------------------------------------------- the segment identity check

/// The writer checks its segment's identity before every batch, and that check must not read
/// the file's timestamps. On Linux 6.13 and later (multigrain timestamps) a stat that reads
/// them makes the file's next write take a fine-grained time, which dirties the inode, and
/// the group commit's `fdatasync` then writes the inode block as well: one more disk round
/// trip per sync.
///
/// The probe: after a queried file's write (fine-grained time `T`, which also becomes the
/// kernel's timestamp floor), a write to a second, unqueried file takes the floor, `T`. A
/// second write to the first file after the identity check keeps `T` unless the check
/// queried the times (then it takes a later, fine-grained time). A clock tick in between
/// also moves it, so any of 20 tries may show it. On kernels without multigrain timestamps
/// every write takes the coarse time, and both kinds of check pass.
#[test]
fn the_segment_identity_check_reads_no_timestamps() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (fa, fb) = (
        std::fs::File::create(&a).unwrap(),
        std::fs::File::create(&b).unwrap(),
    );
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let unchanged = (0..20).any(|i| {
        mtime(&a); // queried: a's next write takes a fine-grained time
        fa.write_all_at(b"1", i).unwrap();
        fb.write_all_at(b"1", i).unwrap();
        let id = super::writer::FileId::at(&a).unwrap();
        assert_eq!(id, super::writer::FileId::at(&a).unwrap());
        fa.write_all_at(b"2", i).unwrap();
        mtime(&a) == mtime(&b)
    });
    assert!(
        unchanged,
        "a write after the identity check always took a new fine-grained time"
    );
}
