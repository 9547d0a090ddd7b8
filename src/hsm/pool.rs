//! HSM worker threads, the bounded job queue, deadlines and call counters.
//!
//! `workers` threads named `hsm-worker-N` each own one R/W session and take
//! jobs from one shared bounded queue (`std::sync::mpsc::sync_channel`).
//! - Enqueueing never blocks: a full queue is refused at once
//!   ([`SubmitError::Full`] -> `Busy`).
//! - Each job carries a deadline (enqueue time + `acquire_timeout`). A worker
//!   that picks a job up after its deadline answers `Timeout` without doing
//!   it; a job that has started runs to completion.
//! - Shutdown drops the sending side: workers drain what is queued, close
//!   their sessions and exit; `shutdown` joins them.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cryptoki::error::Error as CkError;
use cryptoki::session::Session;

use super::error::{from_cryptoki, is_session_broken, HsmError};
use super::module;
use super::stats::{HistogramSnapshot, LatencyHistogram};
use super::Shared;

/// What a worker hands a job.
pub(crate) enum Dispatch<'a> {
    /// Do the work with this worker's session. With `may_retry`, a failure on a session that
    /// died under the job is not answered: the job returns [`Outcome::SessionLost`] and runs
    /// once more on a fresh session.
    Run(&'a mut WorkerCtx, bool),
    /// The job's deadline passed while it was queued: answer `Timeout`.
    Expired(&'a Shared),
}

/// Whether a job may run a second time after its session died under it. A typed property of
/// each job, chosen where the job is made ([`super::Hsm`]'s `submit` / `submit_retry_safe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The job may have created a token object or committed something: a failure goes to
    /// the caller as it is.
    Never,
    /// The job creates no token object and commits nothing (encrypt, decrypt, sign, verify,
    /// MAC, random, data keys into session objects): after a failure on a lost session it
    /// runs once more on a fresh session, and only a second failure reaches the caller.
    OnLostSession,
}

/// How one run of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered (or skipped): the job is done.
    Done,
    /// It failed because its session died and was allowed to retry: run it again.
    SessionLost,
}

/// One unit of work: runs once on a worker thread.
pub(crate) struct Job {
    /// When the job was queued.
    pub(crate) enqueued: Instant,
    /// Latest time at which a worker may start the job.
    pub(crate) deadline: Instant,
    /// Whether the job creates or destroys objects (runs alone, see [`TOKEN_OBJECTS`]).
    pub(crate) exclusive: bool,
    /// Whether the job touches session objects only (slow key-pair generation): it takes
    /// no lock, so it neither waits for nor holds up exclusive jobs.
    pub(crate) unlocked: bool,
    /// Whether a failure on a lost session is retried once on a fresh session.
    pub(crate) retry: Retry,
    /// The work; it sends its own answer. Runs once, or twice when it returns
    /// [`Outcome::SessionLost`].
    pub(crate) run: Box<dyn FnMut(Dispatch<'_>) -> Outcome + Send>,
}

/// Why a job was not enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubmitError {
    /// The queue is full.
    Full,
    /// The pool has been shut down.
    Closed,
}

/// A worker's view: its own session plus the shared state.
pub(crate) struct WorkerCtx {
    pub(crate) session: Session,
    pub(crate) shared: Arc<Shared>,
    /// Set when a call reported that the session is gone; the worker reopens
    /// it before the next job.
    broken: bool,
    /// The reset epoch (`Shared::reset_epoch`) this worker's session was opened in.
    opened_in: u64,
}

impl WorkerCtx {
    /// Count one call of PKCS#11 function `f`.
    pub(crate) fn count(&self, f: &'static str) {
        self.shared.counters.inc(f);
    }

    /// Record the latency of one call of `f` that started at `started`.
    pub(crate) fn observe(&self, f: &'static str, started: Instant) {
        self.shared.counters.observe(f, started.elapsed());
    }

    /// Convert a cryptoki error, noting whether the session is broken.
    pub(crate) fn fail(&mut self, function: &'static str, e: &CkError) -> HsmError {
        if is_session_broken(e) {
            self.broken = true;
            self.shared.reset_epoch.fetch_add(1, Ordering::SeqCst);
        }
        from_cryptoki(function, &self.shared.token, e)
    }

    /// The token label (for errors).
    pub(crate) fn token(&self) -> &str {
        &self.shared.token
    }

    /// The reset epoch this worker's session was opened in: session objects it creates live
    /// while the pool's epoch still equals it.
    pub(crate) fn session_epoch(&self) -> u64 {
        self.opened_in
    }

    /// The pool's current reset epoch.
    pub(crate) fn current_epoch(&self) -> u64 {
        self.shared.reset_epoch.load(Ordering::SeqCst)
    }

    /// Whether this worker's session is gone (a call reported it, or another worker saw the
    /// device reset): the session must be replaced before the next job.
    pub(crate) fn needs_reopen(&self) -> bool {
        self.broken || self.current_epoch() != self.opened_in
    }

    /// Replace a broken session with a fresh, logged-in one.
    fn reopen(&mut self) {
        let epoch = self.current_epoch();
        self.count("C_OpenSession");
        match self.shared.pkcs11.open_rw_session(self.shared.slot) {
            Ok(session) => {
                self.count("C_Login");
                if let Err(e) = module::login(&session, &self.shared.pin, &self.shared.token) {
                    tracing::warn!(token = %self.shared.token, error = %e, "HSM worker re-login failed");
                    return;
                }
                // Dropping the old session closes it (errors are ignored: it
                // is already gone on the device).
                self.count("C_CloseSession");
                let old = std::mem::replace(&mut self.session, session);
                drop(old);
                // Handles resolved before the reset may name other objects now (devices
                // reuse handles): every worker is between jobs (the session gate), so the
                // caches can be emptied safely; keys are looked up again on next use.
                self.shared.handles.clear();
                self.shared.copies.clear();
                self.broken = false;
                self.opened_in = epoch;
                tracing::info!(token = %self.shared.token, "HSM worker session reopened");
            }
            Err(e) => {
                let err = from_cryptoki("C_OpenSession", &self.shared.token, &e);
                tracing::warn!(token = %self.shared.token, error = %err, "HSM worker could not reopen its session");
            }
        }
    }
}

/// The worker pool of one `Hsm`.
pub(crate) struct Pool {
    tx: RwLock<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    queued: Arc<AtomicUsize>,
    workers: usize,
    acquire_timeout: Duration,
}

impl Pool {
    /// Open one R/W session per worker (on the calling thread, so failures
    /// surface from `Hsm::open`) and start the workers.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        workers: usize,
        queue_depth: usize,
        acquire_timeout: Duration,
    ) -> Result<Pool, HsmError> {
        let mut sessions = Vec::with_capacity(workers);
        for _ in 0..workers {
            shared.counters.inc("C_OpenSession");
            let s = shared
                .pkcs11
                .open_rw_session(shared.slot)
                .map_err(|e| from_cryptoki("C_OpenSession", &shared.token, &e))?;
            sessions.push(s);
        }
        let (tx, rx) = sync_channel::<Job>(queue_depth);
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::with_capacity(workers);
        for (n, session) in sessions.into_iter().enumerate() {
            let ctx = WorkerCtx {
                session,
                shared: Arc::clone(shared),
                broken: false,
                opened_in: shared.reset_epoch.load(Ordering::SeqCst),
            };
            let rx = Arc::clone(&rx);
            let queued = Arc::clone(&queued);
            let handle = thread::Builder::new()
                .name(format!("hsm-worker-{n}"))
                .spawn(move || worker_loop(ctx, &rx, &queued))
                .map_err(|e| {
                    HsmError::new(
                        super::HsmErrorKind::Unavailable,
                        "open",
                        &shared.token,
                        format!("cannot start HSM worker thread: {e}"),
                    )
                });
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => {
                    // Stop the workers already started before failing.
                    drop(tx);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            tx: RwLock::new(Some(tx)),
            threads: Mutex::new(threads),
            queued,
            workers,
            acquire_timeout,
        })
    }

    /// Enqueue a job without blocking.
    pub(crate) fn try_submit(&self, job: Job) -> Result<(), SubmitError> {
        let guard = self.tx.read().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(SubmitError::Closed)?;
        // Count before sending so that a worker never decrements first.
        self.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::Full),
                    TrySendError::Disconnected(_) => Err(SubmitError::Closed),
                }
            }
        }
    }

    /// The queue wait limit.
    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Number of worker threads.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Jobs waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Close the queue, let the workers drain it and join them. Idempotent.
    pub(crate) fn shutdown(&self) {
        let tx = self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(tx);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let me = thread::current().id();
        for t in threads {
            if t.thread().id() == me {
                // Dropped from inside a job (cannot happen with this crate's
                // jobs): the thread exits on its own once the queue is empty.
                continue;
            }
            if t.join().is_err() {
                tracing::error!("an HSM worker thread panicked");
            }
        }
    }
}

/// Object creation and destruction run alone; every other job shares. SoftHSM2 answers
/// CKR_GENERAL_ERROR or garbled attributes now and then when one session creates token
/// objects while another reads or creates (seen in this crate's tests, about one run in
/// three). Creation is bound by token file writes and rare, so readers barely ever wait.
/// Process-global: several `Hsm`s may share one token.
static TOKEN_OBJECTS: RwLock<()> = RwLock::new(());

fn worker_loop(mut ctx: WorkerCtx, rx: &Mutex<Receiver<Job>>, queued: &AtomicUsize) {
    loop {
        // Only one worker waits in recv at a time; the others wait for the
        // lock. Either way the lock is released before the job runs.
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = next else { break };
        queued.fetch_sub(1, Ordering::Relaxed);
        run_job(&mut ctx, job);
    }
    ctx.count("C_CloseSession");
    let token = ctx.shared.token.clone();
    if let Err(e) = ctx.session.close() {
        let err = from_cryptoki("C_CloseSession", &token, &e);
        tracing::warn!(token = %token, error = %err, "closing an HSM worker session failed");
    }
}

/// Run one job taken from the queue: answer `Timeout` if it waited past its deadline,
/// otherwise run it, and run it once more on a fresh session if it failed on a lost one and
/// may be retried.
fn run_job(ctx: &mut WorkerCtx, mut job: Job) {
    let now = Instant::now();
    ctx.shared
        .counters
        .queue_wait
        .observe(now.saturating_duration_since(job.enqueued));
    if now > job.deadline {
        ctx.shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        (job.run)(Dispatch::Expired(&ctx.shared));
        return;
    }
    let mut may_retry = job.retry == Retry::OnLostSession;
    loop {
        ensure_session(ctx);
        if run_once(ctx, &mut job, may_retry) == Outcome::Done || !may_retry {
            return;
        }
        ctx.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(token = %ctx.shared.token, "HSM job failed on a lost session; retrying once on a fresh session");
        may_retry = false;
    }
}

/// Replace this worker's session if it is gone. No job of this pool runs while a session is
/// replaced: the device reuses session handles, so a job still on a dead session could
/// otherwise reach the new one with handles of the old epoch.
fn ensure_session(ctx: &mut WorkerCtx) {
    if ctx.needs_reopen() {
        let shared = Arc::clone(&ctx.shared);
        let _quiet = shared
            .session_gate
            .write()
            .unwrap_or_else(|p| p.into_inner());
        ctx.reopen();
    }
}

/// One run of `job` under the session gate and the token-object lock it needs.
fn run_once(ctx: &mut WorkerCtx, job: &mut Job, may_retry: bool) -> Outcome {
    let shared = Arc::clone(&ctx.shared);
    let _in_epoch = shared
        .session_gate
        .read()
        .unwrap_or_else(|p| p.into_inner());
    let (_shared, _alone) = if job.unlocked {
        (None, None)
    } else if job.exclusive {
        (
            None,
            Some(TOKEN_OBJECTS.write().unwrap_or_else(|p| p.into_inner())),
        )
    } else {
        (
            Some(TOKEN_OBJECTS.read().unwrap_or_else(|p| p.into_inner())),
            None,
        )
    };
    match catch_unwind(AssertUnwindSafe(|| {
        (job.run)(Dispatch::Run(ctx, may_retry))
    })) {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!(token = %shared.token, "an HSM job panicked");
            Outcome::Done
        }
    }
}

/// PKCS#11 functions this layer counts.
const FUNCTIONS: &[&str] = &[
    "C_CloseSession",
    "C_CopyObject",
    "C_Decrypt",
    "C_DecryptInit",
    "C_DestroyObject",
    "C_Encrypt",
    "C_EncryptInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_FindObjectsInit",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_GenerateRandom",
    "C_GetAttributeValue",
    "C_GetMechanismList",
    "C_GetSessionInfo",
    "C_GetSlotList",
    "C_GetTokenInfo",
    "C_Login",
    "C_OpenSession",
    "C_Sign",
    "C_SignInit",
    "C_WrapKey",
    // Asymmetric keys, signatures and MACs.
    "C_Verify",
    "C_VerifyInit",
    // Rotation and import of key material.
    "C_UnwrapKey",
    // Key agreement (DeriveSharedSecret).
    "C_DeriveKey",
];

/// Per-function PKCS#11 call counters and latencies, queue waits and rejections.
pub(crate) struct Counters {
    map: BTreeMap<&'static str, AtomicU64>,
    other: AtomicU64,
    latency: BTreeMap<&'static str, LatencyHistogram>,
    pub(crate) queue_wait: LatencyHistogram,
    pub(crate) busy: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Jobs run a second time because their session died under them ([`Retry`]).
    pub(crate) retries: AtomicU64,
    /// Health probes (`C_GetSessionInfo` from [`super::Hsm::ping`]), kept out of `map`.
    pub(crate) probes: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            map: FUNCTIONS.iter().map(|f| (*f, AtomicU64::new(0))).collect(),
            other: AtomicU64::new(0),
            latency: FUNCTIONS
                .iter()
                .map(|f| (*f, LatencyHistogram::default()))
                .collect(),
            queue_wait: LatencyHistogram::default(),
            busy: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Count one call of `f`.
    pub(crate) fn inc(&self, f: &'static str) {
        match self.map.get(f) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => {
                debug_assert!(false, "uncounted PKCS#11 function {f}");
                self.other.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Current values (every counted function, zeros included).
    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let mut m: BTreeMap<&'static str, u64> = self
            .map
            .iter()
            .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
            .collect();
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            m.insert("other", other);
        }
        m
    }

    /// Records how long one call of `f` took.
    pub(crate) fn observe(&self, f: &'static str, d: Duration) {
        if let Some(h) = self.latency.get(f) {
            h.observe(d);
        }
    }

    /// Latency snapshots of the functions that have been called.
    pub(crate) fn latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        self.latency
            .iter()
            .map(|(f, h)| (*f, h.snapshot()))
            .filter(|(_, s)| s.count > 0)
            .collect()
    }

    /// Sum of all counters.
    pub(crate) fn total(&self) -> u64 {
        self.map
            .values()
            .map(|v| v.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.other.load(Ordering::Relaxed)
    }
}

/// Holds the token-object lock exclusively, for tests that create objects outside a worker
/// (the raw benchmark's own session).
#[cfg(test)]
pub(crate) fn token_objects_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    TOKEN_OBJECTS.write().unwrap_or_else(|p| p.into_inner())
}
