//! [`AuditLog`]: the append-only, hash-chained, group-committed audit trail writer.
//!
//! # Shape
//!
//! - **One writer thread** (`audit-writer`) owns the files. Callers hand it serialized events
//!   through a bounded queue; it assigns sequence numbers and hashes (so queue order is chain
//!   order), writes a batch, fsyncs once and then answers every waiter of the batch.
//! - **Segments.** Files `audit-000001.jsonl`, `audit-000002.jsonl`, … in the audit
//!   directory. A new segment is started at every open (a restart never appends to an old
//!   file), when the current one reaches `max_segment_bytes`, and when it is older than
//!   `max_segment_age` (and has events). The first record of every segment is a
//!   `segment-start` naming the previous segment and chaining to its last good record.
//! - **Preallocated segments.** A segment is written with positional writes (no
//!   `O_APPEND`) at its write position into space that was zero-filled (real zeros, not
//!   `fallocate`'s unwritten extents, whose first write still changes metadata) and synced
//!   ahead of time, [`AuditConfig::preallocate_bytes`] at a time (bounded by
//!   `max_segment_bytes`; one `fdatasync` per extension). A group-commit sync is then a
//!   data-only `fdatasync`: no size, no block allocation, no journal commit. Rotation and
//!   shutdown cut the unused space (`set_len` to the logical length, synced), so a closed
//!   segment ends with its last record; only a live or crashed newest segment ends with NUL
//!   bytes. A record never contains a NUL byte (JSON escapes it), so trailing NULs are
//!   unused space; `0` turns preallocation off (the writes then extend the file).
//! - **Durability.** [`Durability::GroupCommit`] (default): `append` returns once its record
//!   is written and fsynced; appends that arrive while the writer is busy share the next
//!   fsync. [`Durability::Relaxed`]: `append` returns once the record is written to the
//!   file (page cache); the writer fsyncs every `fsync_interval`.
//! - **Checkpoints.** With a signer, after a batch that brings the events since the last
//!   checkpoint to `checkpoint_every_events`, every `checkpoint_interval` while there are new
//!   records, before a rotation and at shutdown, the writer appends a signed checkpoint. A
//!   signing failure is logged and counted, retried later, and never fails appends.
//! - **Fail closed.** Any write, fsync or file-identity failure (the segment file was
//!   removed or replaced, the directory is gone) fails the batch with
//!   [`AuditError::Unavailable`], rolls the file back to its last durable length (best
//!   effort: the write position stays and the file is cut there, which also drops what the
//!   failed batch wrote and the preallocated space), marks the log unhealthy (appends are
//!   then refused at once) and retries from `retry_min` doubling to `retry_max` by opening a
//!   new segment linked to the last durable record. When that works the log is healthy
//!   again.
//! - **Crash recovery** ([`AuditLog::open`]): the newest segment is read; trailing NUL bytes
//!   are preallocated space a crash left unused, not a torn record: recovery cuts them (the
//!   only change it makes to an old file; nothing but zeros is removed, so a crashed segment
//!   at rest looks like a closed one). Then its last complete, well-formed record is the chain
//!   head. A torn last line (non-NUL bytes without a trailing newline, possibly followed by
//!   the NULs) is left in place, and the new segment's `segment-start` records
//!   `truncatedAfterSequence`; the verifier reports the torn line as a truncation. The
//!   verifier accepts a NUL-padded tail (a live or crashed segment) and reports NUL bytes
//!   followed by data, or inside a record, as `malformed`.
//! - **No pipelined sync.** The writer does not encode and write batch N+1 while batch N's
//!   `fdatasync` runs. At c=1 there is nothing to overlap (the next event arrives after the
//!   answer); at higher concurrency the next batch is taken the moment the sync returns, so a
//!   new sync starts after one encode-and-write of the waiting events. Overlapping that would
//!   need a second thread to own the sync and the answers, and the fail-closed rollback
//!   (a failed sync must fail batch N+1 too, already chained to N, and cut both) and the
//!   rotation (trim after the last sync) to be coordinated across the two threads. That has
//!   not been built or measured yet (issue 18 item 1 leaves it open): at c=32 the writer
//!   thread used 13-19 µs of CPU per event (fsync's kernel time included) with 6-11 events
//!   per sync, so the overlap could hide up to ~100-200 µs per batch, the same order as one
//!   data-only fdatasync on an idle disk.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{statx, AtFlags, Statx, StatxFlags, CWD};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::checkpoint::{attach_signature, unsigned_body, CheckpointSigner};
use super::event::{
    key_id_of, record_body, seal_line, split_line, AuditEvent, Checkpoint, SegmentStart,
    CHECKPOINT_ALGORITHM, GENESIS_HASH, RECORD_EVENT, RECORD_SEGMENT_START,
};
use super::AuditError;
use crate::time::iso8601_ms;

/// Upper bounds (seconds) of the fsync latency histogram buckets; a last `+Inf` bucket
/// follows.
pub const FSYNC_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const FSYNC_BUCKETS_MICROS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// When an appended record counts as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns after the record is fsynced; concurrent appends share one fsync.
    GroupCommit,
    /// `append` returns after the record is written (not yet fsynced); the writer fsyncs
    /// every `fsync_interval`. A crash may lose the records of the last interval.
    Relaxed {
        /// How often the writer fsyncs written records.
        fsync_interval: Duration,
    },
}

/// Audit trail settings.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The directory of the segment files (created if missing, mode 0750).
    pub dir: PathBuf,
    /// Group commit (default) or relaxed.
    pub durability: Durability,
    /// Start a new segment once the current one has this many bytes (default 64 MiB).
    pub max_segment_bytes: u64,
    /// Start a new segment once the current one is this old and has events (default 24 h;
    /// `None`: never by age).
    pub max_segment_age: Option<Duration>,
    /// Write a checkpoint after this many events (default 1000; 0: not by count).
    pub checkpoint_every_events: u64,
    /// Write a checkpoint this often while there are new records (default 60 s; `None`:
    /// not by time).
    pub checkpoint_interval: Option<Duration>,
    /// Capacity of the writer's queue (default 65536); a full queue answers
    /// [`AuditError::Busy`].
    pub queue_capacity: usize,
    /// Most records written per batch (default 4096).
    pub max_batch: usize,
    /// First retry delay after a write failure (default 50 ms).
    pub retry_min: Duration,
    /// Longest retry delay (default 5 s).
    pub retry_max: Duration,
    /// Zero-filled, synced space kept ahead of the write position (default 4 MiB, bounded by
    /// `max_segment_bytes`; 0 = off): a group-commit fsync then only flushes data, with no
    /// size or block-allocation change. See the module docs.
    pub preallocate_bytes: u64,
    /// This node's id (`[node] id`) when several nodes share one store: it goes into every
    /// record (`"node"`) and into the segment names (`audit-<node>-000001.jsonl`), so that
    /// each node keeps its own chain and `audit verify` tells the trails apart. `None`: one
    /// node, names and records as before.
    pub node: Option<String>,
}

impl AuditConfig {
    /// Defaults for the trail in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            dir: dir.into(),
            durability: Durability::GroupCommit,
            max_segment_bytes: 64 << 20,
            max_segment_age: Some(Duration::from_secs(24 * 3600)),
            checkpoint_every_events: 1000,
            checkpoint_interval: Some(Duration::from_secs(60)),
            queue_capacity: 65_536,
            max_batch: 4096,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            preallocate_bytes: 4 << 20,
            node: None,
        }
    }

    fn validate(&self) -> Result<(), AuditError> {
        let bad = |m: &str| Err(AuditError::Config(m.into()));
        if self.max_segment_bytes < 4096 {
            return bad("max_segment_bytes must be at least 4096");
        }
        if let Some(n) = &self.node {
            if !super::valid_node_id(n) {
                return bad(super::NODE_ID_RULE);
            }
        }
        if self.queue_capacity == 0 || self.max_batch == 0 {
            return bad("queue_capacity and max_batch must be at least 1");
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return bad("retry_min must be > 0 and retry_max >= retry_min");
        }
        if let Durability::Relaxed { fsync_interval } = self.durability {
            if fsync_interval.is_zero() {
                return bad("the relaxed fsync interval must be > 0");
            }
        }
        if self.max_segment_age.is_some_and(|d| d.is_zero())
            || self.checkpoint_interval.is_some_and(|d| d.is_zero())
        {
            return bad("max_segment_age and checkpoint_interval must be > 0");
        }
        Ok(())
    }
}

/// What `append` answers: where the record sits in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The record's sequence number.
    pub sequence: u64,
    /// The record's hash.
    pub hash: String,
    /// Whether the record was fsynced before the answer (group commit).
    pub durable: bool,
}

/// Counters and gauges for the metrics endpoint and health.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditStats {
    /// Whether the trail can be written (health: SERVING).
    pub healthy: bool,
    /// Appends waiting for the writer.
    pub queue_depth: u64,
    /// Event records written.
    pub events_written: u64,
    /// All records written (events, checkpoints, segment starts).
    pub records_written: u64,
    /// Checkpoints written.
    pub checkpoints_written: u64,
    /// Segments started by this process.
    pub segments_started: u64,
    /// Write batches.
    pub batches: u64,
    /// fsyncs of segment files.
    pub fsyncs: u64,
    /// Latency of the last fsync, seconds.
    pub last_fsync_seconds: f64,
    /// Cumulative fsync counts per bucket of [`FSYNC_BUCKETS_SECONDS`], then `+Inf`
    /// (Prometheus `le` semantics).
    pub fsync_buckets: Vec<u64>,
    /// Sum of fsync latencies, seconds.
    pub fsync_seconds_sum: f64,
    /// Failed writes, fsyncs and recovery attempts.
    pub write_errors: u64,
    /// Failed checkpoint signatures.
    pub checkpoint_errors: u64,
    /// Appends refused (unhealthy, queue full, stopped).
    pub rejected: u64,
    /// The chain head's sequence number.
    pub head_sequence: u64,
    /// The current segment's file name.
    pub segment: String,
    /// The last write error, if unhealthy.
    pub last_error: Option<String>,
}

/// State shared by [`AuditLog`] and its writer thread.
struct Shared {
    healthy: AtomicBool,
    queued: AtomicU64,
    events_written: AtomicU64,
    records_written: AtomicU64,
    checkpoints_written: AtomicU64,
    segments_started: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
    last_fsync_micros: AtomicU64,
    fsync_sum_micros: AtomicU64,
    fsync_buckets: Vec<AtomicU64>,
    write_errors: AtomicU64,
    checkpoint_errors: AtomicU64,
    rejected: AtomicU64,
    head_sequence: AtomicU64,
    segment: Mutex<String>,
    last_error: Mutex<Option<String>>,
    /// Fault injection ([`AuditLog::fail_after_authorization`]): the next batch of events
    /// fails as a write error would.
    fail_next: AtomicBool,
    /// Tests hold it to stop the writer between taking the first command of a batch and
    /// draining the queue.
    #[cfg(test)]
    gate: Mutex<()>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            fail_next: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            events_written: AtomicU64::new(0),
            records_written: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            segments_started: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            last_fsync_micros: AtomicU64::new(0),
            fsync_sum_micros: AtomicU64::new(0),
            fsync_buckets: (0..=FSYNC_BUCKETS_MICROS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            write_errors: AtomicU64::new(0),
            checkpoint_errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            head_sequence: AtomicU64::new(0),
            segment: Mutex::new(String::new()),
            last_error: Mutex::new(None),
            #[cfg(test)]
            gate: Mutex::new(()),
        }
    }
}

impl Shared {
    fn record_fsync(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.last_fsync_micros.store(us, Ordering::Relaxed);
        self.fsync_sum_micros.fetch_add(us, Ordering::Relaxed);
        let i = FSYNC_BUCKETS_MICROS
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(FSYNC_BUCKETS_MICROS.len());
        self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// A command for the writer thread.
enum Cmd {
    /// The event travels unserialized: the writer thread scrubs and serializes it straight
    /// into the batch buffer, once.
    Append {
        event: Box<AuditEvent>,
        ack: oneshot::Sender<Result<AppendReceipt, AuditError>>,
    },
    Flush(oneshot::Sender<Result<(), AuditError>>),
    Checkpoint(oneshot::Sender<Result<Option<u64>, AuditError>>),
    Shutdown(oneshot::Sender<Result<(), AuditError>>),
}

/// The audit trail. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct AuditLog {
    tx: SyncSender<Cmd>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open the trail in `cfg.dir`: recover the chain head from the newest segment (see the
    /// module docs on crash recovery), start a new segment and the writer thread. Without a
    /// signer no checkpoints are written (the daemon always passes the HSM signer). Fails if
    /// the directory cannot be created or written, or the existing trail cannot be read.
    /// Must be called inside a Tokio runtime.
    pub async fn open(
        cfg: AuditConfig,
        signer: Option<Arc<dyn CheckpointSigner>>,
    ) -> Result<AuditLog, AuditError> {
        cfg.validate()?;
        let rt = tokio::runtime::Handle::current();
        let shared = Arc::new(Shared::default());
        let dir = cfg.dir.clone();
        let capacity = cfg.queue_capacity;
        let sh = Arc::clone(&shared);
        let writer = tokio::task::spawn_blocking(move || Writer::recover(cfg, signer, sh, rt))
            .await
            .map_err(|e| AuditError::Io(format!("audit recovery task failed: {e}")))??;
        let (tx, rx) = sync_channel(capacity);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| AuditError::Io(format!("cannot start the audit writer thread: {e}")))?;
        Ok(AuditLog {
            tx,
            shared,
            thread: Mutex::new(Some(thread)),
            dir,
        })
    }

    /// Append one event. With group commit this returns after the record is fsynced; with
    /// relaxed durability after it is written. [`AuditError::Unavailable`] when the trail
    /// cannot be written (fail closed), [`AuditError::Busy`] when the queue is full,
    /// [`AuditError::Invalid`] if the event cannot be serialized. Either way nothing was
    /// recorded and the request must fail. The caller's thread only queues the event: the
    /// writer thread scrubs, serializes and hashes it.
    pub async fn append(&self, event: AuditEvent) -> Result<AppendReceipt, AuditError> {
        if !self.shared.healthy.load(Ordering::SeqCst) {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(AuditError::Unavailable(
                self.shared
                    .last_error()
                    .unwrap_or_else(|| "the audit trail is not writable".into()),
            ));
        }
        let (ack, rx) = oneshot::channel();
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let event = Box::new(event);
        if let Err(e) = self.tx.try_send(Cmd::Append { event, ack }) {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(match e {
                TrySendError::Full(_) => AuditError::Busy,
                TrySendError::Disconnected(_) => stopped(),
            });
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Whether the trail can be written. False from a write failure until the writer has
    /// started a new segment successfully.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters for the metrics endpoint.
    pub fn stats(&self) -> AuditStats {
        let s = &self.shared;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let fsync_buckets = s
            .fsync_buckets
            .iter()
            .map(|b| {
                cumulative += ld(b);
                cumulative
            })
            .collect();
        let healthy = self.healthy();
        AuditStats {
            healthy,
            queue_depth: s.queued.load(Ordering::SeqCst),
            events_written: ld(&s.events_written),
            records_written: ld(&s.records_written),
            checkpoints_written: ld(&s.checkpoints_written),
            segments_started: ld(&s.segments_started),
            batches: ld(&s.batches),
            fsyncs: ld(&s.fsyncs),
            last_fsync_seconds: ld(&s.last_fsync_micros) as f64 / 1e6,
            fsync_buckets,
            fsync_seconds_sum: ld(&s.fsync_sum_micros) as f64 / 1e6,
            write_errors: ld(&s.write_errors),
            checkpoint_errors: ld(&s.checkpoint_errors),
            rejected: ld(&s.rejected),
            head_sequence: ld(&s.head_sequence),
            segment: s.segment.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            last_error: if healthy { None } else { s.last_error() },
        }
    }

    /// Fsync whatever is written (relaxed mode); a no-op with group commit.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.send_cmd(Cmd::Flush(ack)).await?;
        rx.await.map_err(|_| stopped())?
    }

    /// Write a signed checkpoint now if there are records since the last one. Answers the
    /// sequence of the latest checkpoint (`None` without a signer or before any).
    pub async fn checkpoint_now(&self) -> Result<Option<u64>, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.send_cmd(Cmd::Checkpoint(ack)).await?;
        rx.await.map_err(|_| stopped())?
    }

    /// Write what is queued, a final checkpoint, fsync, and stop the writer. Later appends
    /// answer [`AuditError::Unavailable`]. Idempotent.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        let answer = match self.send_cmd(Cmd::Shutdown(ack)).await {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        self.shared.healthy.store(false, Ordering::SeqCst);
        self.shared
            .set_last_error(Some("the audit trail is shut down".into()));
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        answer
    }

    /// Test hook (fault injection; inert unless called): breaks the trail between a
    /// request's authorization and its commit. The next batch of events fails as a write
    /// error would (the trail is unhealthy, then recovers in a new segment). Armed before a
    /// changing request, the first record that request writes fails: its intent record, so
    /// the request must fail with nothing changed.
    pub fn fail_after_authorization(&self) {
        self.shared.fail_next.store(true, Ordering::SeqCst);
    }

    /// Queues a control command without blocking the async thread: at once when the queue
    /// has room, else from a blocking thread that waits for room (a full queue drains as
    /// fast as the writer writes).
    async fn send_cmd(&self, cmd: Cmd) -> Result<(), AuditError> {
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
            Err(TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(cmd))
                    .await
                    .map_err(|_| stopped())?
                    .map_err(|_| stopped())
            }
        }
    }

    /// Hold the writer before it drains its queue (tests: make a batch deterministic).
    #[cfg(test)]
    pub(crate) fn test_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared.gate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stopped() -> AuditError {
    AuditError::Unavailable("the audit writer has stopped".into())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Largest batch buffer the writer keeps between batches (bytes); a larger one, left by a
/// burst, is freed.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// Appends the sealed `event` record line for `fields` (a serialized JSON object) at
/// `sequence` after `previous_hash` to `buf`, without intermediate copies; returns its hash.
/// The bytes are exactly those of `seal_line(&record_body(RECORD_EVENT, ...))`.
fn append_event_line(
    buf: &mut Vec<u8>,
    node: Option<&str>,
    sequence: u64,
    previous_hash: &str,
    fields: &[u8],
) -> String {
    let start = buf.len();
    super::event::write_prefix(buf, RECORD_EVENT, node, sequence, previous_hash);
    super::event::close_record(buf, fields);
    let digest = Sha256::digest(&buf[start..]);
    let mut hex_hash = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(digest, &mut hex_hash);
    buf.pop();
    buf.extend_from_slice(b",\"hash\":\"");
    buf.extend_from_slice(&hex_hash);
    buf.extend_from_slice(b"\"}\n");
    String::from_utf8_lossy(&hex_hash).into_owned()
}

/// `audit-000042.jsonl`, or `audit-<node>-000042.jsonl` on a node of a cluster.
pub(crate) fn segment_name(node: Option<&str>, index: u64) -> String {
    match node {
        Some(n) => format!("audit-{n}-{index:06}.jsonl"),
        None => format!("audit-{index:06}.jsonl"),
    }
}

/// The node and index of a segment file name: `audit-<digits>.jsonl` (no node) or
/// `audit-<node>-<digits>.jsonl`, at least 6 digits.
pub(crate) fn parse_segment_name(name: &str) -> Option<(Option<&str>, u64)> {
    let stem = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (node, digits) = match stem.rsplit_once('-') {
        Some((n, d)) if super::valid_node_id(n) => (Some(n), d),
        Some(_) => return None,
        None => (None, stem),
    };
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((node, digits.parse().ok()?))
}

/// The index of a segment file name of any node (see [`parse_segment_name`]).
pub(crate) fn segment_index(name: &str) -> Option<u64> {
    parse_segment_name(name).map(|(_, i)| i)
}

/// The segment files of `node` in `dir`, by index (another node's files are not ours).
pub(crate) fn list_segments(dir: &Path, node: Option<&str>) -> std::io::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = parse_segment_name(&name).and_then(|(n, i)| (n == node).then_some(i));
        if let Some(i) = ours {
            if e.file_type()?.is_file() {
                out.push((i, name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The chain head found at the end of a segment's bytes.
struct Tail {
    /// (sequence, hash) of the last complete record that parses.
    last_good: Option<(u64, String)>,
    /// Bytes after the last newline, up to the last non-NUL byte (a torn record).
    torn_bytes: usize,
    /// Trailing NUL bytes: preallocated space the writer had not used yet.
    padding: usize,
}

/// The length of `data` without its trailing NUL bytes (preallocated space). A record
/// never contains a NUL byte (JSON escapes it), so NULs after the last record are unused
/// space, not data.
pub(crate) fn unpadded_len(data: &[u8]) -> usize {
    data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn scan_tail(data: &[u8]) -> Tail {
    let end = unpadded_len(data);
    let padding = data.len() - end;
    let data = &data[..end];
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn_bytes = data.len() - complete;
    let mut last_good = None;
    for line in data[..complete].split(|b| *b == b'\n').rev() {
        if line.is_empty() {
            continue;
        }
        let Some((_, hash)) = split_line(line) else {
            continue;
        };
        let seq = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("sequence").and_then(serde_json::Value::as_u64));
        if let Some(seq) = seq {
            last_good = Some((seq, hash.to_owned()));
            break;
        }
    }
    Tail {
        last_good,
        torn_bytes,
        padding,
    }
}

/// Cuts `padding` trailing NUL bytes (preallocated space left by a crash) off the segment at
/// `path`, which is `len` bytes long, and syncs it; nothing else in the file changes.
fn trim_padding(path: &Path, len: usize, padding: usize) -> Result<(), AuditError> {
    let cut = OpenOptions::new().write(true).open(path).and_then(|f| {
        f.set_len((len - padding) as u64)
            .and_then(|()| f.sync_data())
    });
    cut.map_err(|e| {
        AuditError::Io(format!(
            "cannot trim the preallocated space of {}: {e}",
            path.display()
        ))
    })?;
    tracing::info!(segment = %path.display(), bytes = padding, "audit segment: unused preallocated space trimmed");
    Ok(())
}

struct Segment {
    file: File,
    path: PathBuf,
    /// Bytes durably written (group commit) or written (relaxed): the write position and
    /// the segment's logical length.
    bytes: u64,
    /// The file's length: `bytes` plus the zero-filled, synced space after it.
    allocated: u64,
    opened: Instant,
    /// Records in this segment (the segment start included).
    records: u64,
    /// Event records in this segment.
    events: u64,
    /// The file's identity as opened.
    id: FileId,
}

/// A file's identity: its device and inode numbers, read with `statx` asking for the
/// inode number alone.
///
/// Asking for no timestamp matters. On Linux 6.13 and later a stat that reads ctime or
/// mtime makes the file's next write stamp a fine-grained time, which dirties the inode;
/// the next `fdatasync` then writes the inode block after the data, a second disk round
/// trip per group commit. The writer checks the identity before every batch, so a full
/// `stat` there cost every sync that round trip (docs/benchmarks.md, "The audit segment's
/// identity check wrote the inode at every group commit").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev_major: u32,
    dev_minor: u32,
    ino: u64,
}

impl FileId {
    /// The identity of the file now at `path` (symbolic links followed).
    pub(crate) fn at(path: &Path) -> std::io::Result<FileId> {
        let x = statx(CWD, path, AtFlags::empty(), StatxFlags::INO)?;
        Ok(FileId::from_statx(&x))
    }

    /// The identity of the open `file`.
    fn of(file: &File) -> std::io::Result<FileId> {
        let x = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::INO)?;
        Ok(FileId::from_statx(&x))
    }

    fn from_statx(x: &Statx) -> FileId {
        FileId {
            dev_major: x.stx_dev_major,
            dev_minor: x.stx_dev_minor,
            ino: x.stx_ino,
        }
    }
}

impl Segment {
    /// Makes sure `len` bytes fit after the write position in preallocated space: if not,
    /// zero-fills the file up to `len` plus `cfg.preallocate_bytes` past the write position
    /// (at most `cfg.max_segment_bytes`, at least what the write needs) and syncs it once.
    /// Answers how long that sync took, `None` when there was room (or preallocation is
    /// off: the write then extends the file itself).
    fn make_room(&mut self, len: u64, cfg: &AuditConfig) -> std::io::Result<Option<Duration>> {
        let need = self.bytes + len;
        if need <= self.allocated || cfg.preallocate_bytes == 0 {
            return Ok(None);
        }
        let target = need.max((need + cfg.preallocate_bytes).min(cfg.max_segment_bytes));
        write_zeros(&self.file, self.allocated, target)?;
        let t = Instant::now();
        self.file.sync_data()?;
        self.allocated = target;
        Ok(Some(t.elapsed()))
    }

    /// Cuts the unused preallocated space (rotation, shutdown, failure) so that a closed
    /// segment ends with its last record, and syncs the new length.
    fn trim(&mut self) -> std::io::Result<()> {
        if self.allocated > self.bytes {
            self.file.set_len(self.bytes)?;
            self.file.sync_data()?;
        }
        self.allocated = self.bytes;
        Ok(())
    }
}

/// Writes zero bytes over `[from, to)` of `file` (real zeros, not a hole or an unwritten
/// extent: a later overwrite then changes no file-system metadata).
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 256 << 10;
    let zeros = vec![0u8; usize::try_from(CHUNK.min(to.saturating_sub(from))).unwrap_or(0)];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(CHUNK)).unwrap_or(zeros.len());
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Checkpoint bookkeeping.
struct CpState {
    /// First sequence not covered by a checkpoint of this process.
    first_seq: u64,
    /// Records and events since the last checkpoint.
    records: u64,
    events: u64,
    last_seq: Option<u64>,
    last_time: Instant,
    /// After a signing failure: no attempt before this.
    retry_at: Option<Instant>,
    backoff: Duration,
}

struct Writer {
    cfg: AuditConfig,
    signer: Option<Arc<dyn CheckpointSigner>>,
    key_id: String,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    seg: Option<Segment>,
    next_index: u64,
    last_segment_name: Option<String>,
    head_seq: u64,
    head_hash: String,
    cp: CpState,
    /// Relaxed mode: records written since the last fsync.
    dirty: bool,
    last_fsync: Instant,
    /// Set after a write failure: the note for the recovery segment.
    broken: Option<String>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Reused buffers: the lines of a batch, and one event's serialized fields.
    buf: Vec<u8>,
    fields: Vec<u8>,
}

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

/// A torn record at the end of the newest segment: (segment name, torn bytes).
type TornTail = (String, usize);

/// Events waiting to be written, each with the waiter for its receipt.
type Batch = Vec<(Box<AuditEvent>, Ack<AppendReceipt>)>;

/// A batch encoded into record lines: the last sequence used, and the waiters of the
/// events encoded with their receipts (sequence, hash), in order.
struct EncodedBatch {
    seq: u64,
    acks: Vec<Ack<AppendReceipt>>,
    receipts: Vec<(u64, String)>,
}

/// Answers every waiter with `AuditError::Unavailable(e)`.
fn fail_all(acks: Vec<Ack<AppendReceipt>>, e: &str) {
    for ack in acks {
        let _ = ack.send(Err(AuditError::Unavailable(e.to_owned())));
    }
}

/// The waiters of a batch.
fn acks_of(batch: Batch) -> Vec<Ack<AppendReceipt>> {
    batch.into_iter().map(|(_, ack)| ack).collect()
}

/// The chain head (sequence, hash) at the end of the newest segment with a good record
/// (genesis when none), and the newest segment's torn tail (name, bytes) if it has one.
fn find_head(
    dir: &Path,
    segments: &[(u64, String)],
) -> Result<((u64, String), Option<TornTail>), AuditError> {
    let mut head = (0u64, GENESIS_HASH.to_owned());
    let mut torn = None;
    for (n, (_, name)) in segments.iter().rev().enumerate() {
        let path = dir.join(name);
        let data = fs::read(&path).map_err(|e| {
            AuditError::Io(format!("cannot read audit segment {}: {e}", path.display()))
        })?;
        let tail = scan_tail(&data);
        if tail.padding > 0 {
            trim_padding(&path, data.len(), tail.padding)?;
        }
        if n == 0 && tail.torn_bytes > 0 {
            torn = Some((name.clone(), tail.torn_bytes));
        }
        if let Some(good) = tail.last_good {
            head = good;
            break;
        }
    }
    Ok((head, torn))
}

/// Logs every problem `audit verify` finds in the newest segment.
fn report_newest_segment(dir: &Path, segments: &[(u64, String)]) {
    if let Some((_, last)) = segments.last() {
        let report = super::verify::verify_files(&[dir.join(last)], None);
        for p in &report.problems {
            tracing::error!(
                segment = %last,
                sequence = ?p.sequence,
                kind = %p.kind,
                detail = %p.detail,
                "the newest audit segment does not verify; run `p11kms audit verify`"
            );
        }
    }
}

impl Writer {
    /// Read the existing trail and start a new segment.
    fn recover(
        cfg: AuditConfig,
        signer: Option<Arc<dyn CheckpointSigner>>,
        shared: Arc<Shared>,
        rt: tokio::runtime::Handle,
    ) -> Result<Writer, AuditError> {
        let dir = cfg.dir.clone();
        let io = |e: std::io::Error, what: &str| {
            AuditError::Io(format!("{what} {}: {e}", dir.display()))
        };
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| io(e, "cannot create the audit directory"))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o750))
                .map_err(|e| io(e, "cannot set permissions on"))?;
        }
        let segments =
            list_segments(&dir, cfg.node.as_deref()).map_err(|e| io(e, "cannot list"))?;
        let (head, torn) = find_head(&dir, &segments)?;
        report_newest_segment(&dir, &segments);
        let mut w = Writer::new(cfg, signer, shared, rt, &segments, head);
        let (reason, truncated, note) = w.start_reason(torn, segments.is_empty());
        w.open_segment(reason, truncated, note)
            .map_err(AuditError::Io)?;
        w.shared.healthy.store(true, Ordering::SeqCst);
        tracing::info!(
            dir = %w.cfg.dir.display(),
            segment = %w.last_segment_name.as_deref().unwrap_or(""),
            head_sequence = w.head_seq,
            "audit trail opened"
        );
        Ok(w)
    }

    /// A writer whose chain continues from `head` (sequence, hash), with no segment open.
    fn new(
        cfg: AuditConfig,
        signer: Option<Arc<dyn CheckpointSigner>>,
        shared: Arc<Shared>,
        rt: tokio::runtime::Handle,
        segments: &[(u64, String)],
        head: (u64, String),
    ) -> Writer {
        let key_id = signer
            .as_ref()
            .map(|s| key_id_of(s.public_key_spki_der()))
            .unwrap_or_default();
        let now = Instant::now();
        Writer {
            signer,
            key_id,
            shared,
            rt,
            seg: None,
            next_index: segments.last().map_or(1, |(i, _)| i + 1),
            last_segment_name: segments.last().map(|(_, n)| n.clone()),
            head_seq: head.0,
            head_hash: head.1,
            cp: CpState {
                first_seq: head.0 + 1,
                records: 0,
                events: 0,
                last_seq: None,
                last_time: now,
                retry_at: None,
                backoff: Duration::from_secs(1),
            },
            dirty: false,
            last_fsync: now,
            broken: None,
            retry_at: None,
            backoff: cfg.retry_min,
            buf: Vec::new(),
            fields: Vec::new(),
            cfg,
        }
    }

    /// The reason, truncation point and note of the segment opened at startup: crash
    /// recovery after a torn record (logged), a new trail, or a plain restart.
    fn start_reason(
        &self,
        torn: Option<TornTail>,
        no_segments: bool,
    ) -> (&'static str, Option<u64>, Option<String>) {
        match (&torn, no_segments) {
            (Some((name, bytes)), _) => {
                tracing::warn!(
                    segment = %name,
                    torn_bytes = bytes,
                    after_sequence = self.head_seq,
                    "the audit trail ends with a torn record (crash during a write); \
                     it is left in place and the trail continues in a new segment"
                );
                (
                    "crash-recovery",
                    Some(self.head_seq),
                    Some(format!(
                        "{name} ends with a torn record of {bytes} bytes after sequence {}; left in place",
                        self.head_seq
                    )),
                )
            }
            (None, true) => ("new-trail", None, None),
            (None, false) => ("startup", None, None),
        }
    }

    fn run(mut self, rx: &Receiver<Cmd>) {
        loop {
            let now = Instant::now();
            self.on_timers(now);
            let wait = self.next_deadline().map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let first = match rx.recv_timeout(wait) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            };
            #[cfg(test)]
            let shared = Arc::clone(&self.shared);
            #[cfg(test)]
            let gate = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
            let mut cmds = vec![first];
            while cmds.len() < self.cfg.max_batch {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            drop(gate);
            let appends = cmds
                .iter()
                .filter(|c| matches!(c, Cmd::Append { .. }))
                .count() as u64;
            self.shared.queued.fetch_sub(appends, Ordering::SeqCst);
            if self.process(cmds) {
                return;
            }
        }
    }

    /// Handle a batch of commands in order; true once shut down.
    fn process(&mut self, cmds: Vec<Cmd>) -> bool {
        let mut pending: Vec<(Box<AuditEvent>, Ack<AppendReceipt>)> = Vec::new();
        for cmd in cmds {
            match cmd {
                Cmd::Append { event, ack } => pending.push((event, ack)),
                Cmd::Flush(ack) => {
                    self.write_events(std::mem::take(&mut pending));
                    let r = self.sync_if_dirty();
                    let _ = ack.send(r);
                }
                Cmd::Checkpoint(ack) => {
                    self.write_events(std::mem::take(&mut pending));
                    let r = self.checkpoint();
                    let _ = ack.send(r);
                }
                Cmd::Shutdown(ack) => {
                    self.write_events(std::mem::take(&mut pending));
                    self.close();
                    let _ = ack.send(Ok(()));
                    return true;
                }
            }
        }
        self.write_events(pending);
        false
    }

    fn relaxed(&self) -> Option<Duration> {
        match self.cfg.durability {
            Durability::GroupCommit => None,
            Durability::Relaxed { fsync_interval } => Some(fsync_interval),
        }
    }

    fn may_checkpoint(&self, now: Instant) -> bool {
        self.signer.is_some() && self.cp.retry_at.is_none_or(|t| now >= t)
    }

    /// Time-driven work: recovery, relaxed fsync, timed checkpoints and rotation.
    fn on_timers(&mut self, now: Instant) {
        if self.broken.is_some() {
            if self.retry_at.is_none_or(|t| now >= t) {
                self.try_recover(now);
            }
            return;
        }
        if let Some(interval) = self.relaxed() {
            if self.dirty && now >= self.last_fsync + interval {
                let _ = self.sync_if_dirty();
            }
        }
        if let Some(interval) = self.cfg.checkpoint_interval {
            if self.cp.records > 0
                && now >= self.cp.last_time + interval
                && self.may_checkpoint(now)
            {
                let _ = self.checkpoint();
            }
        }
        if let (Some(age), Some(seg)) = (self.cfg.max_segment_age, &self.seg) {
            if seg.events > 0 && now >= seg.opened + age {
                if let Err(e) = self.rotate("rotation-time") {
                    self.fail(e, None);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.broken.is_some() {
            return self.retry_at;
        }
        let mut d: Option<Instant> = None;
        let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        if let Some(interval) = self.relaxed() {
            if self.dirty {
                consider(self.last_fsync + interval);
            }
        }
        if let Some(interval) = self.cfg.checkpoint_interval {
            if self.signer.is_some() && self.cp.records > 0 {
                let t = self.cp.last_time + interval;
                consider(self.cp.retry_at.map_or(t, |r| r.max(t)));
            }
        }
        if let (Some(age), Some(seg)) = (self.cfg.max_segment_age, &self.seg) {
            if seg.events > 0 {
                consider(seg.opened + age);
            }
        }
        d
    }

    /// Write a batch of events (and a checkpoint if one is due), fsync per the durability
    /// mode, then answer every waiter.
    fn write_events(&mut self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let Some(batch) = self.refuse_if_unwritable(batch) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut enc = self.encode_events(&mut buf, batch);
        let Some(mut hash) = enc.receipts.last().map(|(_, h)| h.clone()) else {
            self.buf = buf;
            return;
        };
        let checkpoint = self.append_due_checkpoint(&mut buf, &mut enc, &mut hash);
        self.write_and_answer(buf, enc, hash, checkpoint);
    }

    /// Answers every waiter with an error and returns `None` when the trail cannot take the
    /// batch (an injected fault, a broken trail, a failed size rotation); else the batch.
    fn refuse_if_unwritable(&mut self, batch: Batch) -> Option<Batch> {
        if self.shared.fail_next.swap(false, Ordering::SeqCst) {
            let e = "injected fault: the trail broke between authorization and commit".to_owned();
            self.fail(e.clone(), None);
            fail_all(acks_of(batch), &e);
            return None;
        }
        if self.broken.is_some() || self.seg.is_none() {
            self.shared
                .rejected
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let e = self
                .shared
                .last_error()
                .unwrap_or_else(|| "the audit trail is not writable".into());
            fail_all(acks_of(batch), &e);
            return None;
        }
        if self
            .seg
            .as_ref()
            .is_some_and(|s| s.bytes >= self.cfg.max_segment_bytes)
        {
            if let Err(e) = self.rotate("rotation-size") {
                self.fail(e.clone(), None);
                fail_all(acks_of(batch), &e);
                return None;
            }
        }
        Some(batch)
    }

    /// Appends one chained record line per event to `buf`; an event that cannot be
    /// serialized is answered with an error and skipped.
    fn encode_events(&mut self, buf: &mut Vec<u8>, batch: Batch) -> EncodedBatch {
        let mut fields = std::mem::take(&mut self.fields);
        let mut seq = self.head_seq;
        let mut acks = Vec::with_capacity(batch.len());
        let mut receipts: Vec<(u64, String)> = Vec::with_capacity(batch.len());
        for (mut event, ack) in batch {
            fields.clear();
            if let Err(e) = event.write_json_object(&mut fields) {
                let _ = ack.send(Err(AuditError::Invalid(format!(
                    "audit event cannot be serialized: {e}"
                ))));
                continue;
            }
            seq += 1;
            // Each record chains to the one before it: the previous receipt's hash, or the
            // head for the first record of the batch (borrowed, not cloned per event).
            let previous = receipts
                .last()
                .map_or(self.head_hash.as_str(), |(_, h)| h.as_str());
            let hash = append_event_line(buf, self.cfg.node.as_deref(), seq, previous, &fields);
            receipts.push((seq, hash));
            acks.push(ack);
        }
        self.fields = fields;
        EncodedBatch {
            seq,
            acks,
            receipts,
        }
    }

    /// Appends a checkpoint record when the event count calls for one (advancing the
    /// batch's last sequence and `hash`); returns its sequence.
    fn append_due_checkpoint(
        &mut self,
        buf: &mut Vec<u8>,
        enc: &mut EncodedBatch,
        hash: &mut String,
    ) -> Option<u64> {
        let events = enc.acks.len() as u64;
        let now = Instant::now();
        if self.cfg.checkpoint_every_events > 0
            && self.cp.events + events >= self.cfg.checkpoint_every_events
            && self.may_checkpoint(now)
        {
            if let Some((line, h)) = self.checkpoint_line(enc.seq + 1, hash, events, events) {
                buf.extend_from_slice(&line);
                enc.seq += 1;
                *hash = h;
                return Some(enc.seq);
            }
        }
        None
    }

    /// Writes the batch (fsync unless relaxed), commits it and answers every waiter with
    /// its receipt; on a write failure, rolls back, breaks the trail and answers errors.
    fn write_and_answer(
        &mut self,
        buf: Vec<u8>,
        enc: EncodedBatch,
        hash: String,
        checkpoint: Option<u64>,
    ) {
        let EncodedBatch {
            seq,
            acks,
            receipts,
        } = enc;
        let events = acks.len() as u64;
        let durable = self.relaxed().is_none();
        match self.write(&buf, durable) {
            Ok(()) => {
                let records = seq - self.head_seq;
                self.commit(seq, hash, buf.len() as u64, records, events);
                if let Some(cp_seq) = checkpoint {
                    self.checkpoint_committed(cp_seq);
                }
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                // Keep the buffer for the next batch unless a burst made it large.
                if buf.capacity() <= MAX_KEPT_BUFFER {
                    self.buf = buf;
                }
                for (ack, (sequence, hash)) in acks.into_iter().zip(receipts) {
                    let _ = ack.send(Ok(AppendReceipt {
                        sequence,
                        hash,
                        durable,
                    }));
                }
            }
            Err(e) => {
                let rollback = self.seg.as_ref().map(|s| s.bytes);
                self.fail(e.clone(), rollback);
                fail_all(acks, &e);
            }
        }
    }

    /// Account for records just written.
    fn commit(&mut self, seq: u64, hash: String, bytes: u64, records: u64, events: u64) {
        self.head_seq = seq;
        self.head_hash = hash;
        if let Some(seg) = self.seg.as_mut() {
            seg.bytes += bytes;
            seg.records += records;
            seg.events += events;
        }
        self.cp.records += records;
        self.cp.events += events;
        let s = &self.shared;
        s.records_written.fetch_add(records, Ordering::Relaxed);
        s.events_written.fetch_add(events, Ordering::Relaxed);
        s.head_sequence.store(seq, Ordering::Relaxed);
    }

    fn checkpoint_committed(&mut self, cp_seq: u64) {
        self.cp.first_seq = cp_seq + 1;
        self.cp.records = 0;
        self.cp.events = 0;
        self.cp.last_seq = Some(cp_seq);
        self.cp.last_time = Instant::now();
        self.shared
            .checkpoints_written
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A signed checkpoint line at `seq` over the head `prev_hash`. `pending_records` and
    /// `pending_events` are the uncommitted records before it. `None` (logged, counted,
    /// retried later) if signing fails.
    fn checkpoint_line(
        &mut self,
        seq: u64,
        prev_hash: &str,
        pending_records: u64,
        pending_events: u64,
    ) -> Option<(Vec<u8>, String)> {
        let signer = Arc::clone(self.signer.as_ref()?);
        let cp = Checkpoint {
            time: iso8601_ms(now_ms()),
            first_sequence: self.cp.first_seq,
            head_sequence: seq - 1,
            head_hash: prev_hash.to_owned(),
            record_count: self.cp.records + pending_records,
            event_count: self.cp.events + pending_events,
            previous_checkpoint_sequence: self.cp.last_seq,
            algorithm: CHECKPOINT_ALGORITHM.into(),
            key_id: self.key_id.clone(),
        };
        let unsigned = unsigned_body(self.cfg.node.as_deref(), seq, prev_hash, &cp);
        match self.rt.block_on(signer.sign(&unsigned)) {
            Ok(sig) => {
                self.cp.retry_at = None;
                self.cp.backoff = Duration::from_secs(1);
                Some(seal_line(&attach_signature(&unsigned, &sig)))
            }
            Err(e) => {
                self.shared
                    .checkpoint_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.cp.retry_at = Some(Instant::now() + self.cp.backoff);
                self.cp.backoff = (self.cp.backoff * 2).min(Duration::from_secs(60));
                tracing::warn!(error = %e, sequence = seq, "audit checkpoint not signed; will retry");
                None
            }
        }
    }

    /// Write a checkpoint now if there are records since the last one.
    fn checkpoint(&mut self) -> Result<Option<u64>, AuditError> {
        if self.signer.is_none() {
            return Ok(None);
        }
        if self.broken.is_some() || self.seg.is_none() {
            return Err(AuditError::Unavailable(
                self.shared
                    .last_error()
                    .unwrap_or_else(|| "the audit trail is not writable".into()),
            ));
        }
        if self.cp.records == 0 {
            return Ok(self.cp.last_seq);
        }
        let seq = self.head_seq + 1;
        let prev = self.head_hash.clone();
        let Some((line, hash)) = self.checkpoint_line(seq, &prev, 0, 0) else {
            return Err(AuditError::Signer(
                "the checkpoint could not be signed".into(),
            ));
        };
        match self.write(&line, true) {
            Ok(()) => {
                self.commit(seq, hash, line.len() as u64, 1, 0);
                self.checkpoint_committed(seq);
                Ok(Some(seq))
            }
            Err(e) => {
                let rollback = self.seg.as_ref().map(|s| s.bytes);
                self.fail(e.clone(), rollback);
                Err(AuditError::Unavailable(e))
            }
        }
    }

    /// Write `buf` to the current segment, fsyncing if `sync` (always done when the file is
    /// still the one at its path).
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), String> {
        let seg = self.seg.as_mut().ok_or("no open audit segment")?;
        let on_disk = FileId::at(&seg.path)
            .map_err(|e| format!("audit segment {}: {e}", seg.path.display()))?;
        if on_disk != seg.id {
            return Err(format!(
                "audit segment {} was removed or replaced",
                seg.path.display()
            ));
        }
        let grown = seg
            .make_room(buf.len() as u64, &self.cfg)
            .map_err(|e| format!("preallocating {}: {e}", seg.path.display()))?;
        if let Some(took) = grown {
            self.shared.record_fsync(took);
        }
        seg.file
            .write_all_at(buf, seg.bytes)
            .map_err(|e| format!("writing {}: {e}", seg.path.display()))?;
        if sync {
            let t = Instant::now();
            seg.file
                .sync_data()
                .map_err(|e| format!("fsync of {}: {e}", seg.path.display()))?;
            self.shared.record_fsync(t.elapsed());
            self.last_fsync = Instant::now();
            self.dirty = false;
        } else {
            self.dirty = true;
        }
        Ok(())
    }

    fn sync_if_dirty(&mut self) -> Result<(), AuditError> {
        if !self.dirty {
            return Ok(());
        }
        let r = match self.seg.as_mut() {
            None => Err("no open audit segment".to_owned()),
            Some(seg) => {
                let t = Instant::now();
                match seg.file.sync_data() {
                    Ok(()) => {
                        self.shared.record_fsync(t.elapsed());
                        Ok(())
                    }
                    Err(e) => Err(format!("fsync of {}: {e}", seg.path.display())),
                }
            }
        };
        self.last_fsync = Instant::now();
        match r {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                // Relaxed mode: the written records were already acknowledged; nothing
                // to roll back.
                self.fail(e.clone(), None);
                Err(AuditError::Unavailable(e))
            }
        }
    }

    /// Seal the current segment (a checkpoint, an fsync) and start the next one.
    fn rotate(&mut self, reason: &'static str) -> Result<(), String> {
        if self.cp.records > 0 && self.may_checkpoint(Instant::now()) {
            // A signing failure is counted and logged inside; the rotation goes on.
            if let Err(AuditError::Unavailable(e)) = self.checkpoint() {
                return Err(e);
            }
        }
        if self.dirty {
            self.sync_if_dirty().map_err(|e| e.to_string())?;
        }
        self.trim_segment()?;
        self.open_segment(reason, None, None)
    }

    /// Cuts the current segment's unused preallocated space (before a rotation or a
    /// shutdown): a closed segment ends with its last record.
    fn trim_segment(&mut self) -> Result<(), String> {
        match self.seg.as_mut() {
            Some(seg) => seg
                .trim()
                .map_err(|e| format!("trimming {}: {e}", seg.path.display())),
            None => Ok(()),
        }
    }

    /// Create the next segment file and write its `segment-start` (fsynced, with the
    /// directory). On failure the half-made file is removed.
    fn open_segment(
        &mut self,
        reason: &'static str,
        truncated_after_sequence: Option<u64>,
        note: Option<String>,
    ) -> Result<(), String> {
        let index = self.next_index;
        let name = segment_name(self.cfg.node.as_deref(), index);
        let path = self.cfg.dir.join(&name);
        let start = SegmentStart {
            time: iso8601_ms(now_ms()),
            segment: name.clone(),
            previous_segment: self.last_segment_name.clone(),
            previous_sequence: self.head_seq,
            reason: reason.into(),
            truncated_after_sequence,
            note,
        };
        let fields = serde_json::to_vec(&start).map_err(|e| e.to_string())?;
        let seq = self.head_seq + 1;
        let (line, hash) = seal_line(&record_body(
            RECORD_SEGMENT_START,
            self.cfg.node.as_deref(),
            seq,
            &self.head_hash,
            &fields,
        ));
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path);
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    // Never overwrite: the next attempt takes the next index.
                    self.next_index += 1;
                }
                return Err(format!("creating {}: {e}", path.display()));
            }
        };
        let allocated =
            (line.len() as u64).max(self.cfg.preallocate_bytes.min(self.cfg.max_segment_bytes));
        let t = Instant::now();
        let written = file
            .write_all_at(&line, 0)
            .and_then(|()| write_zeros(&file, line.len() as u64, allocated))
            .and_then(|()| file.sync_data())
            .and_then(|()| FileId::of(&file))
            .map_err(|e| format!("writing {}: {e}", path.display()));
        let id = match written {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        self.shared.record_fsync(t.elapsed());
        if let Err(e) = File::open(&self.cfg.dir).and_then(|d| d.sync_all()) {
            let _ = fs::remove_file(&path);
            return Err(format!("fsync of {}: {e}", self.cfg.dir.display()));
        }
        self.next_index = index + 1;
        self.seg = Some(Segment {
            file,
            path,
            bytes: line.len() as u64,
            allocated,
            opened: Instant::now(),
            records: 0,
            events: 0,
            id,
        });
        self.last_segment_name = Some(name.clone());
        self.dirty = false;
        self.commit(seq, hash, 0, 1, 0);
        self.shared.segments_started.fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .segment
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = name.clone();
        tracing::info!(segment = %name, reason, sequence = seq, "audit segment started");
        Ok(())
    }

    /// A write failed: refuse appends, roll the file back to `rollback` bytes (best effort),
    /// drop the segment and schedule a recovery.
    fn fail(&mut self, error: String, rollback: Option<u64>) {
        let was_healthy = self.shared.healthy.swap(false, Ordering::SeqCst);
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.set_last_error(Some(error.clone()));
        if let Some(seg) = self.seg.take() {
            // With positional writes the rollback is the write position staying where it
            // was; cutting the file there also drops what the failed batch wrote and the
            // preallocated space (best effort: the file may be gone).
            let _ = seg
                .file
                .set_len(rollback.unwrap_or(seg.bytes).min(seg.bytes));
        }
        self.dirty = false;
        if was_healthy {
            tracing::error!(
                error = %error,
                "the audit trail cannot be written: requests fail closed until it can"
            );
        }
        self.broken = Some(error);
        self.backoff = self.cfg.retry_min;
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// Try to continue the trail in a new segment after a failure.
    fn try_recover(&mut self, now: Instant) {
        let note = self.broken.clone().unwrap_or_default();
        match self.open_segment(
            "write-error-recovery",
            None,
            Some(format!("continued after a write failure: {note}")),
        ) {
            Ok(()) => {
                self.broken = None;
                self.retry_at = None;
                self.backoff = self.cfg.retry_min;
                self.shared.set_last_error(None);
                self.shared.healthy.store(true, Ordering::SeqCst);
                tracing::info!(
                    head_sequence = self.head_seq,
                    "the audit trail is writable again"
                );
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?self.backoff, "audit trail still not writable");
                self.shared.set_last_error(Some(e));
                self.backoff = (self.backoff * 2).min(self.cfg.retry_max);
                self.retry_at = Some(now + self.backoff);
            }
        }
    }

    /// Final checkpoint and fsync.
    fn close(&mut self) {
        if self.broken.is_none() && self.seg.is_some() {
            if self.cp.records > 0 && self.may_checkpoint(Instant::now()) {
                let _ = self.checkpoint();
            }
            let _ = self.sync_if_dirty();
            if let Err(e) = self.trim_segment() {
                tracing::warn!(error = %e, "the last audit segment keeps its preallocated space");
            }
        }
        self.shared.healthy.store(false, Ordering::SeqCst);
        self.shared
            .set_last_error(Some("the audit trail is shut down".into()));
        tracing::info!(head_sequence = self.head_seq, "audit trail closed");
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn event_lines_are_byte_identical_to_seal_of_record_body() {
        for fields in [&br#"{"a":1,"b":"x"}"#[..], b"{}"] {
            let mut buf = b"previous line\n".to_vec();
            let hash = append_event_line(&mut buf, None, 42, GENESIS_HASH, fields);
            let (line, expected) =
                seal_line(&record_body(RECORD_EVENT, None, 42, GENESIS_HASH, fields));
            assert_eq!(&buf[14..], &line[..]);
            assert_eq!(hash, expected);
        }
    }
}
