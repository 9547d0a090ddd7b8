//! HSM worker threads, the bounded job queue, deadlines and lock classes (call counters: `call`).
//!
//! `workers` threads named `hsm-worker-N` each own one R/W session and take
//! jobs from one shared bounded queue (a `flume` MPMC channel: an arriving job wakes one
//! idle worker, and the others stay asleep).
//! - A job submitted with [`Lane::First`] (the audit trail's checkpoint signature, which the
//!   audit writer waits for with every batch behind it) goes ahead of the queued jobs: the
//!   next worker to finish a job takes it, and an idle worker is woken for it.
//! - Enqueueing never blocks: a full queue is refused at once
//!   ([`SubmitError::Full`] -> `Busy`).
//! - Each job carries a deadline (enqueue time + `acquire_timeout`). A worker
//!   that picks a job up after its deadline answers `Timeout` without doing
//!   it; a job that has started runs to completion.
//! - A watchdog thread (`hsm-watchdog`) abandons a worker that has been inside one job's
//!   device work for longer than `stall_limit`: its gate shares are released (see
//!   [`super::gate`]), a new worker with a new session takes its place, and the stuck thread
//!   finishes its job, closes its session and exits when the call returns. At most `workers`
//!   abandoned threads exist at once. While any exists the device is *degraded*.
//! - Shutdown drops the sending side: workers drain what is queued, close
//!   their sessions and exit; `shutdown` joins them (abandoned ones are left to finish).
//! - With inline dispatch (`hsm.dispatch = "inline"`, for devices whose calls take tens of
//!   microseconds) the pool also keeps an *inline session*. A fast shared job (encrypt,
//!   decrypt, sign, data keys: [`LockClass::Shared`] and [`Retry::OnLostSession`]) submitted
//!   under light load (fast jobs on average 150 µs or more apart), while the workers are idle
//!   (nothing queued, none running a job), no exclusive job holds or awaits a gate and the
//!   inline session is idle runs at once on the submitting thread: no wake-up of a sleeping
//!   worker and back. Anything else goes to the queue as above. The
//!   watchdog watches inline sessions as it watches workers: a stuck inline call is abandoned
//!   and its session replaced, though the calling thread stays in the call until it returns
//!   (which is why network HSMs keep the default, `workers`).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cryptoki::error::Error as CkError;
use cryptoki::session::Session;
use flume::{Receiver, Sender, TrySendError};

use super::call::Call;
use super::error::{from_cryptoki, is_session_broken, HsmError};
use super::gate::{self, GateId, WorkerSlot};
use super::module;
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

/// Which lock a job takes around its device work: a typed property of each job, chosen where
/// the job is made (every `Hsm` method names its class when it submits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockClass {
    /// Uses token objects without creating or destroying any (encrypt, sign, lookups): shares
    /// the module instance's token-object gate with every other such job.
    Shared,
    /// Creates or destroys token objects: holds the module instance's token-object gate alone.
    Exclusive,
    /// Touches session objects only (slow key-pair generation): takes no lock, so it neither
    /// waits for nor holds up exclusive jobs. Such a job must not read, create or destroy a
    /// token object. Measured safe beside reads and token object creation
    /// (`tests_asym::key_pair_generation_runs_alongside_reads_without_errors`).
    Unlocked,
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
    /// The lock the job takes around its device work.
    pub(crate) lock: LockClass,
    /// Whether a failure on a lost session is retried once on a fresh session.
    pub(crate) retry: Retry,
    /// The work; it sends its own answer. Runs once, or twice when it returns
    /// [`Outcome::SessionLost`].
    pub(crate) run: Box<dyn FnMut(Dispatch<'_>) -> Outcome + Send>,
}

/// Where a job waits for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Behind every job already queued (first come, first served).
    Queue,
    /// Ahead of the queued jobs: for the few jobs that other work waits on as a whole (the
    /// audit checkpoint signature holds up every answer of its batch).
    First,
}

/// What travels through the queue: a job, or a wake-up for an idle worker when a
/// [`Lane::First`] job was put ahead of the queue.
enum Task {
    Run(Job),
    Wake,
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
    /// This worker's cache of unwrapped wrapped-residency keys (session objects of its
    /// session; see `wrapped`).
    pub(crate) wrapped: super::wrapped::WorkerCache,
}

impl WorkerCtx {
    /// One PKCS#11 call on this worker's session, through [`super::call::Counters::run`]:
    /// counted, timed, and a failure mapped to an [`HsmError`] (noting a broken session).
    pub(crate) fn call<T>(
        &mut self,
        call: Call,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.call_raw(call, f).map_err(|e| self.fail(call, &e))
    }

    /// [`WorkerCtx::call`] that hands the cryptoki error back: for callers that classify some
    /// return values themselves and map the rest with [`WorkerCtx::fail`].
    pub(crate) fn call_raw<T>(
        &mut self,
        call: Call,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        let session = &self.session;
        self.shared.counters.run(call, || f(session))
    }

    /// Map the cryptoki error of a `call`, noting whether the session is broken.
    pub(crate) fn fail(&mut self, call: Call, e: &CkError) -> HsmError {
        if is_session_broken(e) {
            self.broken = true;
            self.shared.reset_epoch.fetch_add(1, Ordering::SeqCst);
        }
        from_cryptoki(call.name(), &self.shared.token, e)
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
        let shared = Arc::clone(&self.shared);
        let opened = shared.counters.call(Call::OpenSession, &shared.token, || {
            shared.pkcs11.open_rw_session(shared.slot)
        });
        let session = match opened {
            Ok(session) => session,
            Err(err) => {
                tracing::warn!(token = %shared.token, error = %err, "HSM worker could not reopen its session");
                return;
            }
        };
        if let Err(e) = module::login(&shared.counters, &session, &shared.pin, &shared.token) {
            tracing::warn!(token = %shared.token, error = %e, "HSM worker re-login failed");
            return;
        }
        // Closing the old session fails when it is already gone on the device: ignored.
        let old = std::mem::replace(&mut self.session, session);
        let _ = shared.counters.run(Call::CloseSession, || old.close());
        // Handles resolved before the reset may name other objects now (devices
        // reuse handles): every worker is between jobs (the session gate), so the
        // caches can be emptied safely; keys are looked up again on next use.
        shared.handles.clear();
        shared.copies.clear();
        shared.wrapped.forget_copies();
        super::wrapped::reset_worker_cache(&self.wrapped, epoch);
        self.broken = false;
        self.opened_in = epoch;
        tracing::info!(token = %shared.token, "HSM worker session reopened");
    }
}

/// A worker thread and its slot.
type Worker = (Arc<WorkerSlot>, JoinHandle<()>);

/// A session that submitting threads run jobs on themselves, with the slot the watchdog
/// watches it by.
type InlineSession = (WorkerCtx, Arc<WorkerSlot>);

/// Below this mean gap between fast jobs (about 6,700 jobs a second) the workers are kept
/// awake by the load itself, and handing jobs to them is cheaper than running device work on
/// the runtime's threads between requests. Measured on SoftHSM2 (`docs/benchmarks.md`,
/// "Inline dispatch"): a lone caller's jobs come 250-450 µs apart and gain from inline runs,
/// four or more callers' come 60-100 µs apart and lose.
const INLINE_MIN_GAP_US: u64 = 150;

/// The inline sessions of a pool with inline dispatch.
struct InlineSessions {
    /// Sessions no thread is using now.
    idle: Mutex<Vec<InlineSession>>,
    /// The slot of every live inline session, idle or in use (for the watchdog).
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
    /// Sessions to keep.
    count: usize,
    /// When the last fast job was submitted (µs since the pool started).
    last_fast_job_us: AtomicU64,
    /// Moving mean of the gap between fast jobs, µs (weight 1/16 per job).
    mean_gap_us: AtomicU64,
}

impl InlineSessions {
    /// `count` sessions to keep (opened by the caller). A new pool has seen no load: its mean
    /// gap starts as after a pause.
    fn new(count: usize) -> Self {
        InlineSessions {
            idle: Mutex::new(Vec::new()),
            slots: Mutex::new(Vec::new()),
            count,
            last_fast_job_us: AtomicU64::new(0),
            mean_gap_us: AtomicU64::new(4 * INLINE_MIN_GAP_US),
        }
    }

    /// Note a fast job submitted at `now_us`; whether the load is light enough to run it
    /// inline (the mean gap between fast jobs is at least [`INLINE_MIN_GAP_US`]). The two
    /// atomics may race with another submitter: the mean is a hint either way.
    fn light_load(&self, now_us: u64) -> bool {
        let gap = now_us.saturating_sub(self.last_fast_job_us.swap(now_us, Ordering::Relaxed));
        let mean = self.mean_gap_us.load(Ordering::Relaxed);
        // A pause counts as a few lone jobs' gap, so that load arriving after it is seen as
        // load within a few dozen jobs.
        let mean = (mean * 15 + gap.min(4 * INLINE_MIN_GAP_US)) / 16;
        self.mean_gap_us.store(mean, Ordering::Relaxed);
        mean >= INLINE_MIN_GAP_US
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<InlineSession>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Arc<WorkerSlot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// State the pool shares with its watchdog: what it takes to start a worker, and the workers.
struct Supervisor {
    shared: Arc<Shared>,
    rx: Receiver<Task>,
    /// [`Lane::First`] jobs, taken before the queue's.
    first: Mutex<VecDeque<Job>>,
    queued: Arc<AtomicUsize>,
    /// Worker threads running a job now (inline jobs not counted).
    working: AtomicUsize,
    /// Time origin of [`WorkerSlot`] timestamps.
    started: Instant,
    /// Device work longer than this abandons the worker.
    stall_limit: Duration,
    /// Workers to keep serving.
    workers: usize,
    slots: Mutex<Vec<Worker>>,
    next_worker: AtomicUsize,
    stop: Mutex<bool>,
    stopping: Condvar,
    /// Whether "too many stuck workers" was logged (once per episode).
    cap_logged: AtomicBool,
    /// Inline sessions (`None` unless inline dispatch is on).
    inline: Option<InlineSessions>,
}

impl Supervisor {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The oldest [`Lane::First`] job, if any (counted out of the queue).
    fn take_first(&self) -> Option<Job> {
        let job = self
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()?;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open a new R/W session for a worker (counted).
    fn open_session(&self) -> Result<Session, HsmError> {
        let s = &self.shared;
        s.counters.call(Call::OpenSession, &s.token, || {
            s.pkcs11.open_rw_session(s.slot)
        })
    }

    /// A worker context on `session`, with a new slot.
    fn new_ctx(&self, session: Session) -> (WorkerCtx, Arc<WorkerSlot>) {
        let n = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let opened_in = self.shared.reset_epoch.load(Ordering::SeqCst);
        let ctx = WorkerCtx {
            session,
            shared: Arc::clone(&self.shared),
            broken: false,
            opened_in,
            wrapped: self.shared.wrapped.new_worker_cache(opened_in),
        };
        (ctx, Arc::new(WorkerSlot::new(n)))
    }

    /// Add an idle inline session on `session`.
    fn add_inline(&self, inline: &InlineSessions, session: Session) {
        let (ctx, slot) = self.new_ctx(session);
        inline.slots().push(Arc::clone(&slot));
        inline.idle().push((ctx, slot));
    }

    /// Start a worker thread on `session`.
    fn spawn(self: &Arc<Self>, session: Session) -> Result<(), HsmError> {
        let (ctx, slot) = self.new_ctx(session);
        let n = slot.n;
        let sup = Arc::clone(self);
        let mine = Arc::clone(&slot);
        let handle = thread::Builder::new()
            .name(format!("hsm-worker-{n}"))
            .spawn(move || worker_loop(ctx, &mine, &sup))
            .map_err(|e| {
                HsmError::new(
                    super::HsmErrorKind::Unavailable,
                    "open",
                    &self.shared.token,
                    format!("cannot start HSM worker thread: {e}"),
                )
            })?;
        self.slots().push((slot, handle));
        Ok(())
    }

    /// Abandon every worker whose device work has lasted longer than the stall limit (while
    /// fewer than `workers` abandoned threads exist).
    fn abandon_stuck(&self) {
        let now = self.now_ms();
        let limit = u64::try_from(self.stall_limit.as_millis()).unwrap_or(u64::MAX);
        let counters = &self.shared.counters;
        let mut watched: Vec<Arc<WorkerSlot>> =
            self.slots().iter().map(|(s, _)| Arc::clone(s)).collect();
        if let Some(inline) = &self.inline {
            watched.extend(inline.slots().iter().cloned());
        }
        for slot in &watched {
            let Some(busy) = slot.busy_for(now) else {
                continue;
            };
            if busy <= limit || slot.is_abandoned() {
                continue;
            }
            if counters.stuck.load(Ordering::SeqCst) >= self.workers {
                if !self.cap_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!(token = %self.shared.token, stuck = self.workers,
                        "HSM degraded: too many workers stuck in PKCS#11 calls; not replacing more until one returns");
                }
                return;
            }
            slot.forgive(&self.shared);
            counters.stuck.fetch_add(1, Ordering::SeqCst);
            counters.replaced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(token = %self.shared.token, worker = slot.n, stuck_ms = busy,
                "HSM degraded: a worker is stuck in a PKCS#11 call past hsm.stall_limit_ms; a new worker with a new session replaces it");
        }
    }

    /// Start workers until `workers` non-abandoned ones exist; forget finished threads.
    fn replace_missing(self: &Arc<Self>) {
        let live = {
            let mut slots = self.slots();
            slots.retain(|(slot, h)| !(slot.is_abandoned() && h.is_finished()));
            slots.iter().filter(|(s, _)| !s.is_abandoned()).count()
        };
        for _ in live..self.workers {
            let started = self.open_session().and_then(|s| self.spawn(s));
            if let Err(e) = started {
                tracing::warn!(token = %self.shared.token, error = %e, "could not start a replacement HSM worker; will try again");
                return;
            }
        }
        self.replace_missing_inline();
    }

    /// Open inline sessions until `count` non-abandoned ones exist (an abandoned one closes
    /// itself when its call returns).
    fn replace_missing_inline(&self) {
        let Some(inline) = &self.inline else { return };
        let live = {
            let mut slots = inline.slots();
            slots.retain(|s| !s.is_abandoned());
            slots.len()
        };
        for _ in live..inline.count {
            match self.open_session() {
                Ok(session) => self.add_inline(inline, session),
                Err(e) => {
                    tracing::warn!(token = %self.shared.token, error = %e, "could not open a replacement inline HSM session; will try again");
                    return;
                }
            }
        }
    }

    /// Whether the pool is shutting down.
    fn stopping(&self) -> bool {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleep `tick` unless stopped; true once the pool is stopping.
    fn wait_stop(&self, tick: Duration) -> bool {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if *stop {
            return true;
        }
        let (stop, _) = self
            .stopping
            .wait_timeout(stop, tick)
            .unwrap_or_else(|p| p.into_inner());
        *stop
    }
}

fn watchdog(sup: &Arc<Supervisor>) {
    let tick = (sup.stall_limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    while !sup.wait_stop(tick) {
        sup.abandon_stuck();
        sup.replace_missing();
        if sup.shared.counters.stuck.load(Ordering::SeqCst) == 0 {
            sup.cap_logged.store(false, Ordering::Relaxed);
        }
    }
}

/// The worker pool of one `Hsm`.
pub(crate) struct Pool {
    tx: RwLock<Option<Sender<Task>>>,
    sup: Arc<Supervisor>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
    workers: usize,
    acquire_timeout: Duration,
}

impl Pool {
    /// Open one R/W session per worker and per inline session (on the calling thread, so
    /// failures surface from `Hsm::open`) and start the workers and the watchdog.
    /// `inline_sessions` 0 leaves inline dispatch off.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        workers: usize,
        queue_depth: usize,
        acquire_timeout: Duration,
        stall_limit: Duration,
        inline_sessions: usize,
    ) -> Result<Pool, HsmError> {
        let (tx, rx) = flume::bounded::<Task>(queue_depth);
        let sup = Arc::new(Supervisor {
            shared: Arc::clone(shared),
            rx,
            first: Mutex::new(VecDeque::new()),
            queued: Arc::new(AtomicUsize::new(0)),
            working: AtomicUsize::new(0),
            started: Instant::now(),
            stall_limit,
            workers,
            slots: Mutex::new(Vec::new()),
            next_worker: AtomicUsize::new(0),
            stop: Mutex::new(false),
            stopping: Condvar::new(),
            cap_logged: AtomicBool::new(false),
            inline: (inline_sessions > 0).then(|| InlineSessions::new(inline_sessions)),
        });
        if let Some(inline) = &sup.inline {
            for _ in 0..inline_sessions {
                sup.add_inline(inline, sup.open_session()?);
            }
        }
        let mut sessions = Vec::with_capacity(workers);
        for _ in 0..workers {
            sessions.push(sup.open_session()?);
        }
        let pool = Pool {
            tx: RwLock::new(Some(tx)),
            sup: Arc::clone(&sup),
            watchdog: Mutex::new(None),
            workers,
            acquire_timeout,
        };
        for session in sessions {
            // On failure, dropping `pool` stops the workers already started.
            sup.spawn(session)?;
        }
        let dog = Arc::clone(&sup);
        let handle = thread::Builder::new()
            .name("hsm-watchdog".into())
            .spawn(move || watchdog(&dog))
            .map_err(|e| {
                HsmError::new(
                    super::HsmErrorKind::Unavailable,
                    "open",
                    &shared.token,
                    format!("cannot start the HSM watchdog thread: {e}"),
                )
            })?;
        *pool.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(pool)
    }

    /// Run a job on the calling thread when inline dispatch takes it (see the module
    /// header), else enqueue it without blocking, in `lane`.
    pub(crate) fn try_submit(&self, job: Job, lane: Lane) -> Result<(), SubmitError> {
        let guard = self.tx.read().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(SubmitError::Closed)?;
        let Err(job) = self.run_inline(job, lane) else {
            return Ok(());
        };
        // Count before sending so that a worker never decrements first.
        self.sup.queued.fetch_add(1, Ordering::Relaxed);
        if lane == Lane::First {
            self.sup
                .first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(job);
            // Wakes a worker idle in recv; with a full queue every worker is busy and takes
            // the job when its current one ends.
            let _ = tx.try_send(Task::Wake);
            return Ok(());
        }
        match tx.try_send(Task::Run(job)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.sup.queued.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(SubmitError::Full),
                    TrySendError::Disconnected(_) => Err(SubmitError::Closed),
                }
            }
        }
    }

    /// Run `job` at once on this thread if it is a fast shared job, the load is light (fast
    /// jobs come on average at least [`INLINE_MIN_GAP_US`] apart), the workers are idle
    /// (nothing queued, none running a job), no exclusive job holds or awaits a gate, and the
    /// inline session is idle; otherwise hand it back for the queue. Under load the workers
    /// are awake and take queued jobs back to back, so a hand-off costs little and keeps
    /// device work off the runtime threads; when they sleep, waking one and being woken back
    /// is most of a lone request's HSM cost.
    fn run_inline(&self, job: Job, lane: Lane) -> Result<(), Job> {
        let Some(inline) = &self.sup.inline else {
            return Err(job);
        };
        let fast_shared = lane == Lane::Queue
            && job.lock == LockClass::Shared
            && job.retry == Retry::OnLostSession;
        if !fast_shared {
            return Err(job);
        }
        let now_us = u64::try_from(self.sup.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if !inline.light_load(now_us)
            || self.sup.queued.load(Ordering::Relaxed) > 0
            || self.sup.working.load(Ordering::Relaxed) > 0
            || !gate::readers_may_enter(&self.sup.shared)
        {
            return Err(job);
        }
        let Some((mut ctx, slot)) = inline.idle().pop() else {
            return Err(job);
        };
        self.sup
            .shared
            .counters
            .inline
            .fetch_add(1, Ordering::Relaxed);
        run_job(&mut ctx, &slot, &self.sup, job);
        if slot.is_abandoned() || self.sup.stopping() {
            inline.slots().retain(|s| !Arc::ptr_eq(s, &slot));
            retire(ctx, &slot);
        } else {
            inline.idle().push((ctx, slot));
        }
        Ok(())
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
        self.sup.queued.load(Ordering::Relaxed)
    }

    /// Whether no job waits and no worker runs one. A worker counts as running its job until
    /// just after the job has sent its answer, so a caller may see the pool busy for a moment
    /// after its answer came: tests that expect an inline run wait for this first.
    pub(crate) fn idle(&self) -> bool {
        self.queued() == 0 && self.sup.working.load(Ordering::Relaxed) == 0
    }

    /// Stop the watchdog, close the queue, let the workers drain it and join them (abandoned
    /// workers are left to finish their stuck call). Idempotent.
    pub(crate) fn shutdown(&self) {
        *self.sup.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.sup.stopping.notify_all();
        let dog = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(dog) = dog {
            if dog.join().is_err() {
                tracing::error!("the HSM watchdog thread panicked");
            }
        }
        let tx = self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(tx);
        if let Some(inline) = &self.sup.inline {
            let idle = std::mem::take(&mut *inline.idle());
            for (ctx, slot) in idle {
                inline.slots().retain(|s| !Arc::ptr_eq(s, &slot));
                retire(ctx, &slot);
            }
        }
        let slots = std::mem::take(&mut *self.sup.slots());
        let me = thread::current().id();
        for (slot, t) in slots {
            if slot.is_abandoned() || t.thread().id() == me {
                // Left to finish on its own (a stuck call, or dropped from inside a job).
                continue;
            }
            if t.join().is_err() {
                tracing::error!("an HSM worker thread panicked");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_loop(mut ctx: WorkerCtx, slot: &WorkerSlot, sup: &Supervisor) {
    while !slot.is_abandoned() {
        let Some(job) = next_job(sup) else { break };
        sup.working.fetch_add(1, Ordering::Relaxed);
        run_job(&mut ctx, slot, sup, job);
        sup.working.fetch_sub(1, Ordering::Relaxed);
    }
    retire(ctx, slot);
}

/// Close a worker's or inline session's session for good. An abandoned one's call has just
/// returned: it is closed with no job running and every session copy forgotten first.
fn retire(ctx: WorkerCtx, slot: &WorkerSlot) {
    let shared = Arc::clone(&ctx.shared);
    // An abandoned worker's session copies die with its session, and other workers may be
    // using them (the copy cache is shared): close it with no job running (the session gate,
    // as a session reset does), and forget every copy (they are made again on next use).
    let _quiet = slot
        .is_abandoned()
        .then(|| slot.share(&shared, GateId::Session, true));
    if _quiet.is_some() {
        ctx.shared.copies.clear();
        ctx.shared.wrapped.forget_copies();
        // Its unwrapped keys die with its session too: never destroy them by handle later
        // (a device may reuse the handles).
        super::wrapped::reset_worker_cache(&ctx.wrapped, u64::MAX);
        ctx.shared.counters.stuck.fetch_sub(1, Ordering::SeqCst);
        tracing::info!(token = %ctx.shared.token, worker = slot.n,
            "an abandoned HSM worker's call returned; its session is closed");
    }
    let WorkerCtx {
        session, shared, ..
    } = ctx;
    if let Err(err) = shared
        .counters
        .call(Call::CloseSession, &shared.token, || session.close())
    {
        tracing::warn!(token = %shared.token, error = %err, "closing an HSM worker session failed");
    }
}

/// The next job for a worker: a [`Lane::First`] job if one waits, else the queue's next
/// (blocking); `None` once the queue is closed and drained.
fn next_job(sup: &Supervisor) -> Option<Job> {
    loop {
        if let Some(job) = sup.take_first() {
            return Some(job);
        }
        let next = sup.rx.recv();
        match next {
            Ok(Task::Run(job)) => {
                sup.queued.fetch_sub(1, Ordering::Relaxed);
                return Some(job);
            }
            Ok(Task::Wake) => continue,
            Err(_) => return sup.take_first(),
        }
    }
}

/// Run one job taken from the queue: answer `Timeout` if it waited past its deadline,
/// otherwise run it, and run it once more on a fresh session if it failed on a lost one and
/// may be retried.
fn run_job(ctx: &mut WorkerCtx, slot: &WorkerSlot, sup: &Supervisor, mut job: Job) {
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
        ensure_session(ctx, slot, sup);
        if run_once(ctx, slot, sup, &mut job, may_retry) == Outcome::Done
            || !may_retry
            || slot.is_abandoned()
        {
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
fn ensure_session(ctx: &mut WorkerCtx, slot: &WorkerSlot, sup: &Supervisor) {
    if ctx.needs_reopen() {
        let shared = Arc::clone(&ctx.shared);
        let _quiet = slot.share(&shared, GateId::Session, true);
        slot.set_busy(Some(sup.now_ms()));
        ctx.reopen();
        slot.set_busy(None);
    }
}

/// One run of `job` under the session gate and the token-object gate it needs, marked busy
/// for the watchdog while it runs.
fn run_once(
    ctx: &mut WorkerCtx,
    slot: &WorkerSlot,
    sup: &Supervisor,
    job: &mut Job,
    may_retry: bool,
) -> Outcome {
    let shared = Arc::clone(&ctx.shared);
    let _in_epoch = slot.share(&shared, GateId::Session, false);
    let _objects = match job.lock {
        LockClass::Unlocked => None,
        LockClass::Shared => Some(slot.share(&shared, GateId::TokenObjects, false)),
        LockClass::Exclusive => Some(slot.share(&shared, GateId::TokenObjects, true)),
    };
    // Other processes on a file-backed token: their lock too, and their objects seen first.
    let _processes = match (&job.lock, &shared.shared_token_lock) {
        (LockClass::Exclusive, Some(path)) => super::shared_token::enter(ctx, path),
        _ => None,
    };
    slot.set_busy(Some(sup.now_ms()));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        (job.run)(Dispatch::Run(ctx, may_retry))
    }));
    slot.set_busy(None);
    match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!(token = %shared.token, "an HSM job panicked");
            Outcome::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds jobs `gap` µs apart from `*now`; what `light_load` said for the last one.
    fn jobs(s: &InlineSessions, now: &mut u64, gap: u64, n: usize) -> bool {
        let mut light = false;
        for _ in 0..n {
            *now += gap;
            light = s.light_load(*now);
        }
        light
    }

    #[test]
    fn inline_runs_follow_the_rate_of_fast_jobs() {
        let s = InlineSessions::new(1);
        let mut now = 0;
        assert!(
            jobs(&s, &mut now, 10, 1),
            "a new pool's first job, however soon"
        );
        assert!(jobs(&s, &mut now, 400, 1), "a lone caller's next job");
        assert!(jobs(&s, &mut now, 250, 50), "a lone caller, relaxed audit");
        assert!(!jobs(&s, &mut now, 90, 50), "four callers");
        assert!(!jobs(&s, &mut now, 60, 50), "thirty-two callers");
        // A pause does not flip a busy pool to inline by itself; a lone caller after it soon
        // runs inline, and a burst after a pause is seen as load within a few dozen jobs.
        assert!(!jobs(&s, &mut now, 1_000_000, 1));
        assert!(jobs(&s, &mut now, 400, 10));
        assert!(!jobs(&s, &mut now, 60, 30));
        // An earlier time than the last (two racing submitters) counts as no gap.
        now -= 50_000;
        s.light_load(now);
        assert!(s.mean_gap_us.load(Ordering::Relaxed) < 4 * INLINE_MIN_GAP_US);
    }
}
