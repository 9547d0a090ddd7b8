//! Everything PKCS#11. `cryptoki` is imported nowhere else in the crate.
//!
//! # Shape
//!
//! - **One module per process.** The PKCS#11 library is loaded and
//!   initialised once per module path (`CKF_OS_LOCKING_OK`) in a
//!   process-global registry and never finalised, so several [`Hsm`]s (for
//!   example several daemons started by one integration-test binary, possibly
//!   on different tokens of one module) share it.
//! - **Token by label.** The token is found by its label, never its slot
//!   number; a missing or duplicated label is a configuration error.
//! - **Keeper session.** A session that logs the user in and stays open for
//!   the life of the [`Hsm`]: closing an application's last session on a token
//!   logs it out and invalidates every object handle.
//! - **Workers.** `workers` dedicated threads (`hsm-worker-N`), each owning
//!   one R/W session, take jobs from one bounded queue of `queue_depth` jobs.
//!   The async API enqueues a job and awaits its answer; PKCS#11 calls never
//!   run on async runtime threads. A full queue answers
//!   [`HsmErrorKind::Busy`] at once; a job that waited past its deadline
//!   (enqueue time + `acquire_timeout`) answers [`HsmErrorKind::Timeout`]
//!   without touching the device. A job whose caller has gone away (its
//!   future was dropped) is skipped. A job that has started always completes.
//! - **Stalled calls.** A worker inside one job's device work for longer than
//!   `stall_limit` is abandoned by the pool's watchdog: its lock shares are released, a
//!   new worker with a new session replaces it, and the stuck thread closes its session
//!   when the call returns (`stats().stuck_workers`: the device is degraded meanwhile).
//! - **Lost sessions.** A job that creates no token object and commits nothing is submitted
//!   with `submit_retry_safe` ([`pool::Retry::OnLostSession`]): if it fails because its
//!   session died under it, it runs once more on a fresh session.
//! - **Locking.** Each job carries its lock class ([`pool::LockClass`]), named where the
//!   job is submitted. Jobs that create or destroy token objects (`Exclusive`)
//!   run alone; other jobs share. Key-pair generation (`Unlocked`, seconds
//!   for RSA-4096) makes session objects only and takes no lock, so it never
//!   holds up other tenants' traffic; CMK pairs and import wrapping keys are
//!   then copied to the token (`C_CopyObject`, which keeps
//!   `CKA_ALWAYS_SENSITIVE` / `CKA_NEVER_EXTRACTABLE`) in a short exclusive
//!   job. At most `workers - 1` (at least one) generations run at once, so a
//!   worker stays free for other jobs.
//! - **Handle cache.** Key objects are found by `CKA_ID` ([`ObjectId`]) once
//!   and their handles cached; creation caches directly; destroy evicts. A
//!   cached handle that the device reports invalid is evicted and looked up
//!   again once. Searches match token objects only (`CKA_TOKEN = true`).
//! - **Session copies.** With `session_key_copies` (default), a CMK version is
//!   copied once into a session object of the worker's session (`C_CopyObject`
//!   with `CKA_TOKEN = false`; sensitive and non-extractable like the original)
//!   and AES-GCM runs on the copy: SoftHSM2 re-reads a token object's files on
//!   every use, the copy is served about 2-3 times faster. Copies die with
//!   their session (a reset bumps the pool's epoch and stale ones are
//!   forgotten; a lost copy falls back to the token object), are destroyed
//!   with their key and by [`Hsm::drop_session_copies`] (DisableKey,
//!   ScheduleKeyDeletion), and a device that refuses to copy a key is
//!   remembered and served from the token object.
//! - **Wrapped residency** (issue 19, [`wrapped`]): a key version may live outside the
//!   token as a [`WrappedBlob`] (wrapped under a trusted master key, tagged for its
//!   [`ObjectId`] on the device). Key resolution asks the worker's LRU of unwrapped session
//!   objects first, then the installed [`BlobSource`] (verify, unwrap, cache), then the token
//!   path above; so every operation serves wrapped keys unchanged.
//! - **AES-256-GCM** with a 128-bit tag and a 12-byte IV drawn from the HSM's
//!   RNG in the same job. A decrypt failure that may be a tag failure
//!   (SoftHSM2 answers `CKR_GENERAL_ERROR`) is classified by probing the
//!   session and the key in the same job: healthy device ->
//!   [`HsmErrorKind::AuthFailed`], otherwise [`HsmErrorKind::Unavailable`].
//!
//! # Counters
//!
//! Every PKCS#11 call goes through one wrapper ([`call`]: `WorkerCtx::call` on a
//! worker's session, `Counters::call` elsewhere) that counts it, times it under
//! its function name and maps its error. [`Hsm::counters`] counts PKCS#11 calls
//! per function, one per logical call made by this layer (cryptoki's internal
//! size-query pass of `C_Encrypt`, `C_Decrypt` and `C_WrapKey`, and the paging of
//! `C_FindObjects`, are not counted separately). Health probes are counted and
//! timed apart ([`stats::HsmStats::health_probes`]).
//!
//! # Blocking
//!
//! [`Hsm::open`], [`Hsm::mechanisms`], [`Hsm::shutdown`] and the drop of the
//! last `Arc<Hsm>` block (the latter two wait for queued jobs to drain): call
//! them from `spawn_blocking` or outside the async runtime.

pub mod asym;
mod call;
mod der;
mod error;
mod gate;
pub mod mac;
mod module;
mod oaep;
mod objects;
mod ops;
mod pool;
#[cfg(feature = "bench")]
pub mod raw;
pub mod region;
mod region_peer;
#[cfg(test)]
mod region_tests;
mod shared_token;
pub mod signing;
pub mod stats;
mod template;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_asym;
#[cfg(test)]
mod tests_dispatch;
#[cfg(test)]
mod tests_templates;
pub mod unwrap;
#[cfg(test)]
mod unwrap_tests;
pub mod wrapped;
#[cfg(test)]
mod wrapped_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

pub use asym::{Curve, DataKeyPair, PairSpec, PairUsage, ShaAlg, SignScheme};
pub use error::{HsmError, HsmErrorKind, OpenFailure};
pub use mac::MacAlg;
pub use module::{init_token, probe_token, TokenProbe};
pub use oaep::OaepSha256;
pub use objects::ObjectId;
pub use region_peer::{PeerBlob, PeerBlobError};
pub use wrapped::{
    trust_master, BlobFormatError, BlobKind, BlobSource, MasterState, MasterVersion, PairFamily,
    TokenMove, TrustOutcome, WrappedBlob, DEFAULT_WRAPPED_CACHE,
};

use call::{Call, Counters};
use objects::{HandleCache, SessionCopies};
use pool::{Dispatch, Job, Lane, LockClass, Outcome, Pool, Retry, SubmitError, WorkerCtx};

/// Default number of HSM worker threads.
pub const DEFAULT_WORKERS: usize = 2;
/// Default capacity of the HSM job queue.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Default time a job may wait in the queue before it is answered `Timeout`.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a worker may spend in one job's device work before it is abandoned and
/// replaced (well above the slowest normal job, RSA-4096 key-pair generation).
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(30);
/// GCM IV length in bytes.
pub const GCM_IV_LEN: usize = 12;
/// GCM tag length in bytes.
pub const GCM_TAG_LEN: usize = 16;
/// Largest request for random bytes or a data key, in bytes.
pub const MAX_RANDOM_LEN: usize = 4096;

/// Builds the GCM AAD from the IV the HSM generated (the caller's AAD
/// includes the IV, which is only known inside the job). Callable more than once: a job
/// retried on a fresh session draws a new IV.
pub type AadBuilder = Box<dyn Fn(&[u8; 12]) -> Vec<u8> + Send>;

/// The user PIN, zeroized on drop and redacted in `Debug`.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Wrap a PIN.
    pub fn new(pin: impl Into<String>) -> Self {
        Pin(Zeroizing::new(pin.into()))
    }

    /// The PIN itself; do not log or copy it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Pin {
    fn from(s: String) -> Self {
        Pin::new(s)
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// How to reach the HSM.
#[derive(Clone, Debug)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Label of the token (never a slot number).
    pub token_label: String,
    /// The user PIN.
    pub pin: Pin,
    /// Number of worker threads, each with its own session (default 2).
    pub workers: usize,
    /// Capacity of the job queue (default 1024).
    pub queue_depth: usize,
    /// How long a job may wait in the queue (default 2 s).
    pub acquire_timeout: Duration,
    /// How long a worker may be inside one job's device work before the watchdog abandons it
    /// and starts a new worker with a new session (default 30 s).
    pub stall_limit: Duration,
    /// Serve CMK versions from session-object copies of their token keys (default true; see
    /// [`Hsm::drop_session_copies`]).
    pub session_key_copies: bool,
    /// A lock file every process on this token takes around creating or destroying token
    /// objects, for a file-backed token that several daemons share (SoftHSM2; see
    /// `shared_token`). `None`: this process alone decides.
    pub shared_token_lock: Option<PathBuf>,
    /// Wrapped residency: unwrapped keys each worker keeps as session objects (default
    /// [`DEFAULT_WRAPPED_CACHE`]; 0 unwraps on every use).
    pub wrapped_cache: usize,
    /// Who runs the fast shared jobs (default [`JobDispatch::Workers`]).
    pub dispatch: JobDispatch,
}

/// Who runs an HSM job: `[hsm] dispatch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobDispatch {
    /// Every job goes through the queue to a worker thread. Right for network HSMs, whose
    /// calls take milliseconds: the async runtime never waits on the device.
    #[default]
    Workers,
    /// Fast shared jobs (encrypt, decrypt, sign, verify, MAC, data keys) run on the
    /// request's own thread, on one of a few inline sessions, whenever nothing is queued
    /// and one is idle; everything else goes to the workers. Saves two thread hand-offs per
    /// request on devices whose calls take tens of microseconds (SoftHSM2, a local PCIe
    /// HSM); a slow call would hold up a runtime thread.
    Inline,
}

impl JobDispatch {
    /// Inline sessions to keep: one (a job runs inline only while no other HSM job is in
    /// flight, so a second would never be used), none for [`JobDispatch::Workers`].
    fn inline_sessions(self) -> usize {
        match self {
            JobDispatch::Workers => 0,
            JobDispatch::Inline => 1,
        }
    }
}

impl HsmConfig {
    /// A config with default pool settings.
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: Pin) -> Self {
        HsmConfig {
            module: module.into(),
            token_label: token_label.into(),
            pin,
            workers: DEFAULT_WORKERS,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            stall_limit: DEFAULT_STALL_LIMIT,
            session_key_copies: true,
            shared_token_lock: None,
            wrapped_cache: DEFAULT_WRAPPED_CACHE,
            dispatch: JobDispatch::Workers,
        }
    }
}

/// Output of an AES-GCM encryption: the HSM-generated IV and ciphertext || tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcmSealed {
    /// The 12-byte IV, drawn from the HSM's RNG.
    pub iv: [u8; 12],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext_and_tag: Vec<u8>,
}

/// One object on the token, as reconciliation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// `CKA_ID` (20 bytes for p11kms objects; see [`ObjectId::from_bytes`]).
    pub id: Vec<u8>,
    /// `CKA_LABEL`, lossily decoded as UTF-8.
    pub label: String,
    /// `CKA_CLASS` without the `CKO_` prefix: `SECRET_KEY`, `PRIVATE_KEY`, ...
    pub class: String,
    /// `CKA_TOKEN`: false for session objects (key copies, keys being generated).
    pub token: bool,
}

/// Custody-relevant attributes of a key object, read from the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyAttributes {
    /// `CKA_TOKEN`
    pub token: bool,
    /// `CKA_PRIVATE`
    pub private: bool,
    /// `CKA_SENSITIVE`
    pub sensitive: bool,
    /// `CKA_ALWAYS_SENSITIVE`
    pub always_sensitive: bool,
    /// `CKA_EXTRACTABLE`
    pub extractable: bool,
    /// `CKA_NEVER_EXTRACTABLE`
    pub never_extractable: bool,
    /// `CKA_ENCRYPT`
    pub encrypt: bool,
    /// `CKA_DECRYPT`
    pub decrypt: bool,
    /// `CKA_WRAP`
    pub wrap: bool,
    /// `CKA_UNWRAP`
    pub unwrap: bool,
    /// `CKA_SIGN`
    pub sign: bool,
    /// `CKA_VERIFY`
    pub verify: bool,
    /// `CKA_DERIVE`
    pub derive: bool,
    /// `CKA_SIGN_RECOVER` (private keys; the token's default where the template leaves it)
    pub sign_recover: bool,
    /// `CKA_VERIFY_RECOVER` (public keys; the token's default where the template leaves it)
    pub verify_recover: bool,
    /// `CKA_ALLOWED_MECHANISMS` without the `CKM_` prefix: `["AES_GCM"]`.
    pub allowed_mechanisms: Vec<String>,
}

/// Whether the token offers a mechanism p11kms uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MechanismReport {
    /// Mechanism name without the `CKM_` prefix.
    pub name: &'static str,
    /// The token lists it.
    pub present: bool,
    /// p11kms cannot run without it.
    pub required: bool,
}

/// One [`MECHANISMS`] entry: the name `p11kms check` reports, the mechanism (of the same
/// name unless given) and whether p11kms cannot run without it.
macro_rules! mechanisms {
    (@type $name:ident) => { MechanismType::$name };
    (@type $name:ident $ty:ident) => { MechanismType::$ty };
    ($($name:ident $(= $ty:ident)? : $required:literal,)*) => {
        &[$((stringify!($name), mechanisms!(@type $name $($ty)?), $required),)*]
    };
}

/// Mechanisms p11kms uses: (name, type, required).
const MECHANISMS: &[(&str, MechanismType, bool)] = mechanisms! {
    AES_KEY_GEN: true,
    AES_GCM: true,
    RSA_PKCS_KEY_PAIR_GEN: false,
    RSA_PKCS_OAEP: false,
    RSA_PKCS_PSS: false,
    RSA_PKCS: false,
    RSA_X_509: false,
    EC_KEY_PAIR_GEN = ECC_KEY_PAIR_GEN: false,
    ECDH1_DERIVE: false,
    EC_EDWARDS_KEY_PAIR_GEN = ECC_EDWARDS_KEY_PAIR_GEN: false,
    EDDSA: false,
    ECDSA: false,
    GENERIC_SECRET_KEY_GEN: false,
    SHA224_HMAC: false,
    SHA256_HMAC: false,
    SHA384_HMAC: false,
    SHA512_HMAC: false,
    AES_KEY_WRAP_PAD: false,
};

/// State shared by the `Hsm` handle and its workers.
pub(crate) struct Shared {
    pub(crate) token: String,
    pub(crate) slot: Slot,
    pub(crate) pkcs11: Arc<Pkcs11>,
    pub(crate) pin: Pin,
    pub(crate) counters: Counters,
    pub(crate) handles: HandleCache,
    /// Session-object copies of CMK versions (the hot path's keys).
    pub(crate) copies: SessionCopies,
    /// Bumped by any worker that finds its session gone (a device reset closes every
    /// session at once), so idle workers reopen before their next job instead of failing it,
    /// and session objects made in an older epoch are known to be gone.
    pub(crate) reset_epoch: std::sync::atomic::AtomicU64,
    /// Held shared by every running job and exclusively while a worker replaces its session
    /// after a reset (see `pool::worker_loop`).
    pub(crate) session_gate: gate::Gate,
    /// The module instance's token-object gate ([`module::Instance::token_objects`]).
    pub(crate) token_objects: Arc<gate::Gate>,
    /// Whether the device does RSA-OAEP with SHA-256: probed on first need
    /// (`oaep::sha256_support`), then fixed for this instance.
    pub(crate) oaep_sha256: std::sync::OnceLock<OaepSha256>,
    /// [`HsmConfig::shared_token_lock`].
    pub(crate) shared_token_lock: Option<PathBuf>,
    /// Wrapped residency: blob source, master keys, per-worker caches and their counters.
    pub(crate) wrapped: wrapped::WrappedShared,
}

/// A connection to one token: keeper session, worker pool, handle cache.
pub struct Hsm {
    shared: Arc<Shared>,
    pool: Pool,
    /// The token's model as the device reports it (`SoftHSM v2`), for health reports.
    model: String,
    /// The job queue's bound (`queue_depth`).
    queue_capacity: usize,
    keeper: Mutex<Option<Session>>,
    /// Key-pair generations running at once: at most `workers - 1` (at least 1), so slow
    /// RSA generations never occupy every worker.
    keygen: tokio::sync::Semaphore,
}

/// Session objects between the job that generates a key pair and the job that copies it to
/// the token.
#[derive(Default)]
struct PendingSlot {
    handles: Vec<ObjectHandle>,
    /// The request ended (answered, failed or dropped): nobody will copy these any more.
    abandoned: bool,
}

type Pending = Arc<Mutex<PendingSlot>>;

/// Called by a generating job: keep `handles` for the copy, or destroy them at once if the
/// request has already ended.
fn park(ctx: &mut WorkerCtx, pending: &Pending, handles: Vec<ObjectHandle>) {
    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
    if p.abandoned {
        asym::destroy_quietly(ctx, &handles, "session key pair of an abandoned request");
    } else {
        p.handles = handles;
    }
}

/// Called by a copying job: the parked handles (the job then owns and destroys them).
fn take_parked(pending: &Pending) -> Vec<ObjectHandle> {
    std::mem::take(&mut pending.lock().unwrap_or_else(|p| p.into_inner()).handles)
}

/// Ends a request that parks session objects: whatever is still parked when it ends (a
/// failed or expired copy, or the caller giving up) is destroyed by a detached job.
struct PendingGuard<'a> {
    hsm: &'a Hsm,
    pending: Pending,
}

/// A persist job found no session objects where its generation job should have parked them.
fn nothing_parked(ctx: &WorkerCtx, job: &'static str) -> HsmError {
    HsmError::new(
        HsmErrorKind::Other,
        job,
        ctx.token(),
        "no session objects to copy",
    )
}

impl Hsm {
    /// Where a generation job parks the session objects its persist job copies to the token,
    /// with the guard that destroys whatever is left there when the request ends early.
    fn pending_objects(&self) -> (Pending, PendingGuard<'_>) {
        let pending = Pending::default();
        let guard = PendingGuard {
            hsm: self,
            pending: pending.clone(),
        };
        (pending, guard)
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let left = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.abandoned = true;
            std::mem::take(&mut p.handles)
        };
        if !left.is_empty() {
            self.hsm.destroy_detached(left);
        }
    }
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.shared.token)
            .field("workers", &self.pool.workers())
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Load (or reuse) the module, find the token by label, log in with a
    /// keeper session and start the workers. Blocking: call it from
    /// `spawn_blocking` or before the runtime serves.
    pub fn open(cfg: &HsmConfig) -> Result<Arc<Hsm>, HsmError> {
        let token = cfg.token_label.as_str();
        if cfg.workers == 0 || cfg.queue_depth == 0 {
            return Err(HsmError::new(
                HsmErrorKind::Config,
                "open",
                token,
                "workers and queue_depth must be at least 1",
            ));
        }
        let counters = Counters::default();
        let module::Instance {
            pkcs11,
            token_objects,
        } = module::module(&cfg.module, token, &counters)?;
        let slot = module::find_token(&pkcs11, token, &counters)?;
        let keeper = counters.call(Call::OpenSession, token, || pkcs11.open_ro_session(slot))?;
        module::login(&counters, &keeper, &cfg.pin, token)?;
        let model = counters
            .call(Call::GetTokenInfo, token, || pkcs11.get_token_info(slot))
            .map(|i| i.model().trim_end().to_string())
            .unwrap_or_default();

        let shared = Arc::new(Shared {
            token: token.to_owned(),
            slot,
            pkcs11,
            pin: cfg.pin.clone(),
            counters,
            handles: HandleCache::default(),
            copies: SessionCopies::new(cfg.session_key_copies),
            reset_epoch: std::sync::atomic::AtomicU64::new(0),
            session_gate: gate::Gate::new(),
            token_objects,
            oaep_sha256: std::sync::OnceLock::new(),
            shared_token_lock: cfg.shared_token_lock.clone(),
            wrapped: wrapped::WrappedShared::new(cfg.wrapped_cache),
        });
        let pool = Pool::start(
            &shared,
            cfg.workers,
            cfg.queue_depth,
            cfg.acquire_timeout,
            cfg.stall_limit,
            cfg.dispatch.inline_sessions(),
        )?;
        tracing::info!(
            token = %shared.token,
            workers = cfg.workers,
            dispatch = ?cfg.dispatch,
            queue_depth = cfg.queue_depth,
            "HSM token opened"
        );
        Ok(Arc::new(Hsm {
            shared,
            pool,
            model,
            queue_capacity: cfg.queue_depth,
            keeper: Mutex::new(Some(keeper)),
            keygen: tokio::sync::Semaphore::new(cfg.workers.saturating_sub(1).max(1)),
        }))
    }

    /// The label of the token this `Hsm` uses.
    pub fn token_label(&self) -> &str {
        &self.shared.token
    }

    /// A random data key of `n` bytes (1..=[`MAX_RANDOM_LEN`]) from the HSM
    /// RNG, encrypted under `id` in the same job.
    pub async fn generate_data_key(
        &self,
        id: ObjectId,
        n: usize,
        aad: AadBuilder,
    ) -> Result<(Zeroizing<Vec<u8>>, GcmSealed), HsmError> {
        self.check_len("generate_data_key", n)?;
        self.submit_retry_safe(LockClass::Shared, "generate_data_key", move |ctx| {
            ops::generate_data_key(ctx, id, n, &aad)
        })
        .await
    }

    /// Decrypt under `src` and re-encrypt under `dst` in one job; the
    /// plaintext never leaves the worker.
    #[allow(clippy::too_many_arguments)]
    pub async fn reencrypt_gcm(
        &self,
        src: ObjectId,
        iv: [u8; 12],
        ciphertext_and_tag: Vec<u8>,
        src_aad: Vec<u8>,
        dst: ObjectId,
        dst_aad: AadBuilder,
    ) -> Result<GcmSealed, HsmError> {
        self.submit_retry_safe(LockClass::Shared, "reencrypt_gcm", move |ctx| {
            ops::reencrypt_gcm(ctx, src, &iv, &ciphertext_and_tag, &src_aad, dst, &dst_aad)
        })
        .await
    }

    /// `n` bytes (1..=[`MAX_RANDOM_LEN`]) from the HSM's RNG.
    pub async fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.check_len("random", n)?;
        self.submit_retry_safe(LockClass::Shared, "random", move |ctx| ops::random(ctx, n))
            .await
    }

    /// Which of the mechanisms p11kms uses the token offers. Blocking (one
    /// `C_GetMechanismList` on the calling thread).
    pub fn mechanisms(&self) -> Result<Vec<MechanismReport>, HsmError> {
        let s = &self.shared;
        let list = s.counters.call(Call::GetMechanismList, &s.token, || {
            s.pkcs11.get_mechanism_list(s.slot)
        })?;
        Ok(MECHANISMS
            .iter()
            .map(|(name, m, required)| MechanismReport {
                name,
                present: list.contains(m),
                required: *required,
            })
            .collect())
    }

    /// PKCS#11 calls made so far, per function (`"C_Encrypt"` -> count).
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.shared.counters.snapshot()
    }

    /// Total PKCS#11 calls made so far.
    pub fn total_ops(&self) -> u64 {
        self.shared.counters.total()
    }

    /// Statistics for the metrics endpoint: call counts and latencies per PKCS#11 function,
    /// queue waits, queue depth and rejections.
    pub fn stats(&self) -> stats::HsmStats {
        let c = &self.shared.counters;
        stats::HsmStats {
            calls: c.snapshot().into_iter().collect(),
            latency: c.latency(),
            queue_wait: c.queue_wait.snapshot(),
            queue_depth: self.pool.queued(),
            workers: self.pool.workers(),
            rejected_busy: c.busy.load(Ordering::Relaxed),
            rejected_timeout: c.timeouts.load(Ordering::Relaxed),
            retried_lost_session: c.retries.load(Ordering::Relaxed),
            inline_jobs: c.inline.load(Ordering::Relaxed),
            stuck_workers: c.stuck.load(Ordering::SeqCst),
            workers_replaced: c.replaced.load(Ordering::Relaxed),
            health_probes: c.probes.load(Ordering::Relaxed),
            health_probe_latency: c.probe_latency.snapshot(),
            session_key_copies: self.session_copies(),
            wrapped_cache_hits: self.shared.wrapped.hits.load(Ordering::Relaxed),
            wrapped_cache_misses: self.shared.wrapped.misses.load(Ordering::Relaxed),
            wrapped_cache_evictions: self.shared.wrapped.evictions.load(Ordering::Relaxed),
            wrapped_cache_resident: self.shared.wrapped.resident(),
        }
    }

    /// Wrapped residency: install where workers find the blobs of wrapped keys (the core's
    /// key cache). Until then, and for ids it has no blob for, keys are token objects.
    pub fn set_blob_source(&self, source: Arc<dyn BlobSource>) {
        self.shared.wrapped.set_source(source);
    }

    /// Number of jobs waiting in the queue (not yet picked up by a worker).
    pub fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// Whether no job waits and no worker runs one: with inline dispatch, only then does a
    /// fast job run on its caller's thread. A worker counts as busy until just after its job
    /// has answered.
    pub fn pool_idle(&self) -> bool {
        self.pool.idle()
    }

    /// The most jobs the queue holds (`queue_depth`); beyond it requests are throttled.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// The token's model as the device reports it (`C_GetTokenInfo`), e.g. `SoftHSM v2`.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Number of cached object handles.
    pub fn cached_handles(&self) -> usize {
        self.shared.handles.len()
    }

    /// Number of live session-object copies of CMK versions.
    pub fn session_copies(&self) -> usize {
        let epoch = self
            .shared
            .reset_epoch
            .load(std::sync::atomic::Ordering::SeqCst);
        self.shared.copies.live(epoch)
    }

    /// The uncompressed point of an EC `SubjectPublicKeyInfo` on `curve`; `None` if `spki` is
    /// not one (another algorithm or curve, a compressed point, malformed DER).
    pub fn ec_point_from_spki(spki: &[u8], curve: Curve) -> Option<Vec<u8>> {
        der::ec_point_from_spki(spki, curve.oid_der(), curve.field_len())
    }

    /// Stop accepting jobs, let the workers finish what is queued, close
    /// their sessions, then close the keeper session. Idempotent; blocking.
    /// Later calls answer [`HsmErrorKind::Unavailable`].
    pub fn shutdown(&self) {
        self.pool.shutdown();
        let keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(session) = keeper {
            let s = &self.shared;
            if let Err(e) = s
                .counters
                .call(Call::CloseSession, &s.token, || session.close())
            {
                tracing::warn!(token = %s.token, error = %e, "closing the HSM keeper session failed");
            }
            tracing::info!(token = %self.shared.token, "HSM token closed");
        }
    }

    // ---------------------------------------------------------------- rotation and import
    // (issue 7: rotation uses `generate_aes_key`; BYOK import lives in `unwrap.rs`.)

    /// Generate a fresh RSA wrapping key pair of `bits` (2048/3072/4096) for an import: the
    /// private key stays on the token (unwrap only), the public key comes back as DER SPKI.
    /// RSA key generation is slow on SoftHSM2 (up to seconds for 4096 bits): it makes session
    /// objects alongside other jobs; only the copy of the private key to the token runs alone.
    /// `sha256`: the key will unwrap with RSA-OAEP over SHA-256, which not every token
    /// offers (SoftHSM2 2.6 does not): then nothing is kept and the answer says so.
    pub async fn generate_wrapping_key(
        &self,
        id: unwrap::WrappingKeyId,
        bits: u32,
        sha256: bool,
    ) -> Result<unwrap::WrappingKeyOutcome, HsmError> {
        if sha256 && self.shared.oaep_sha256.get() == Some(&OaepSha256::RawRsa) {
            return Ok(unwrap::WrappingKeyOutcome::OaepSha256Unsupported);
        }
        let (pending, _guard) = self.pending_objects();
        let permit = self.keygen_permit("generate_wrapping_key").await?;
        let p = pending.clone();
        let outcome = self
            .submit(LockClass::Unlocked, "generate_wrapping_key", move |ctx| {
                let (outcome, private) = unwrap::generate_wrapping_key(ctx, bits, sha256)?;
                park(ctx, &p, private.into_iter().collect());
                Ok(outcome)
            })
            .await?;
        drop(permit);
        if !matches!(outcome, unwrap::WrappingKeyOutcome::Created(_)) {
            return Ok(outcome);
        }
        self.submit(
            LockClass::Exclusive,
            "persist_wrapping_key",
            move |ctx| match take_parked(&pending)[..] {
                [private] => unwrap::persist_wrapping_key(ctx, id, private),
                _ => Err(nothing_parked(ctx, "persist_wrapping_key")),
            },
        )
        .await?;
        Ok(outcome)
    }

    /// The custody attributes of wrapping private key `id`.
    #[cfg(test)]
    pub(crate) async fn wrapping_key_attributes(
        &self,
        id: unwrap::WrappingKeyId,
    ) -> Result<KeyAttributes, HsmError> {
        self.submit(LockClass::Shared, "wrapping_key_attributes", move |ctx| {
            unwrap::wrapping_key_attributes(ctx, id)
        })
        .await
    }

    /// Run `f` on a worker thread (tests use it to hold a worker busy).
    #[cfg(test)]
    pub(crate) async fn run_on_worker(
        &self,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), HsmError> {
        self.submit(LockClass::Shared, "test_job", move |_ctx| {
            f();
            Ok(())
        })
        .await
    }

    /// Run `f` as a fast shared job, one that inline dispatch may run on the calling thread
    /// (tests use it to see where jobs run and to stand for a stuck device call).
    #[cfg(test)]
    pub(crate) async fn run_fast_job<T: Send + 'static>(
        &self,
        mut f: impl FnMut() -> T + Send + 'static,
    ) -> Result<T, HsmError> {
        self.submit_retry_safe(LockClass::Shared, "fast_test_job", move |_ctx| Ok(f()))
            .await
    }

    // ------------------------------------------------------------------------------------
    // Asymmetric keys, signatures and MACs.

    /// Generate a CMK key pair: private and public token objects sharing `CKA_ID` = `id`.
    /// RSA-4096 takes seconds on SoftHSM2: the pair is generated as session objects alongside
    /// other jobs, then copied to the token (`C_CopyObject`) in a short exclusive job.
    pub async fn generate_key_pair(
        &self,
        id: ObjectId,
        spec: PairSpec,
        usage: PairUsage,
    ) -> Result<(), HsmError> {
        let (pending, _guard) = self.pending_objects();
        let permit = self.keygen_permit("generate_key_pair").await?;
        let p = pending.clone();
        self.submit(LockClass::Unlocked, "generate_key_pair", move |ctx| {
            let pair = asym::generate_session_pair(ctx, id, spec, usage)?;
            park(ctx, &p, vec![pair.public, pair.private]);
            Ok(())
        })
        .await?;
        drop(permit);
        self.submit(
            LockClass::Exclusive,
            "persist_key_pair",
            move |ctx| match take_parked(&pending)[..] {
                [public, private] => {
                    asym::persist_key_pair(ctx, id, asym::SessionPair { public, private })
                }
                _ => Err(nothing_parked(ctx, "persist_key_pair")),
            },
        )
        .await
    }

    /// Wrapped residency: a CMK key pair whose private half is generated on the device,
    /// wrapped under the newest trusted master and tagged for `id`; returns the blob and the
    /// public key as DER SPKI. No token object is made, and the public half is never on the
    /// token: public-key operations of wrapped pairs are the caller's, from the SPKI. The
    /// pair is generated in an unlocked job (RSA takes seconds), wrapped in a short shared one.
    pub async fn generate_wrapped_pair(
        &self,
        id: ObjectId,
        spec: PairSpec,
        usage: PairUsage,
    ) -> Result<(WrappedBlob, Vec<u8>), HsmError> {
        let (pending, _guard) = self.pending_objects();
        let permit = self.keygen_permit("generate_wrapped_pair").await?;
        let p = pending.clone();
        let (spki, kind) = self
            .submit(LockClass::Unlocked, "generate_wrapped_pair", move |ctx| {
                let (private, spki, oaep) = asym::generate_wrapped_pair(ctx, spec, usage)?;
                park(ctx, &p, vec![private]);
                let kind = BlobKind::Private {
                    family: wrapped::PairFamily::of(spec),
                    usage,
                    raw_oaep: oaep == OaepSha256::RawRsa,
                };
                Ok((spki, kind))
            })
            .await?;
        drop(permit);
        let blob = self
            .submit(
                LockClass::Shared,
                "wrap_pair",
                move |ctx| match take_parked(&pending)[..] {
                    [private] => wrapped::wrap_parked(ctx, id, private, kind),
                    _ => Err(nothing_parked(ctx, "wrap_pair")),
                },
            )
            .await?;
        Ok((blob, spki))
    }

    /// A permit to generate a key pair (see `Hsm::keygen`).
    async fn keygen_permit(
        &self,
        op: &'static str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, HsmError> {
        self.keygen.acquire().await.map_err(|_| {
            HsmError::new(
                HsmErrorKind::Unavailable,
                op,
                &self.shared.token,
                "HSM layer is shut down",
            )
        })
    }

    /// Destroy session objects in a job nobody awaits (cleanup of an ended request).
    fn destroy_detached(&self, handles: Vec<ObjectHandle>) {
        let enqueued = Instant::now();
        let job = Job {
            enqueued,
            deadline: enqueued + Duration::from_secs(3600),
            lock: LockClass::Unlocked,
            retry: Retry::Never,
            run: Box::new(move |dispatch: Dispatch<'_>| {
                match dispatch {
                    Dispatch::Run(ctx, _) => {
                        asym::destroy_quietly(ctx, &handles, "session objects of an ended request")
                    }
                    Dispatch::Expired(shared) => tracing::warn!(
                        token = %shared.token,
                        "session objects of an ended request left until the session closes"
                    ),
                }
                Outcome::Done
            }),
        };
        if self.pool.try_submit(job, Lane::Queue).is_err() {
            tracing::warn!(
                token = %self.shared.token,
                "HSM queue full or closed: session objects of an ended request left until the session closes"
            );
        }
    }

    /// The custody attributes of secret key version `id`, and its `CKA_WRAP_WITH_TRUSTED`
    /// (a multi-Region key's material leaves only under trusted keys): what `check` and the
    /// tests read back from the token.
    pub async fn secret_key_custody(
        &self,
        id: ObjectId,
    ) -> Result<(KeyAttributes, bool), HsmError> {
        self.submit(LockClass::Shared, "secret_key_custody", move |ctx| {
            let attrs = ops::key_attributes(ctx, id)?;
            let h = ops::find_part(ctx, &id, objects::Part::Secret)?.ok_or_else(|| {
                HsmError::new(
                    HsmErrorKind::ObjectNotFound,
                    "C_FindObjects",
                    ctx.token(),
                    format!("{id}"),
                )
            })?;
            let pick = |a| match a {
                cryptoki::object::Attribute::WrapWithTrusted(v) => Some(v),
                _ => None,
            };
            let ty = cryptoki::object::AttributeType::WrapWithTrusted;
            let trusted_only = ops::read_attribute(ctx, h, ty, pick, "no CKA_WRAP_WITH_TRUSTED")?;
            Ok((attrs, trusted_only))
        })
        .await
    }

    /// The custody attributes of the private (`private`) or public half of key pair `id`.
    pub async fn key_pair_attributes(
        &self,
        id: ObjectId,
        private: bool,
    ) -> Result<KeyAttributes, HsmError> {
        let part = if private {
            objects::Part::Private
        } else {
            objects::Part::Public
        };
        self.submit(LockClass::Shared, "key_pair_attributes", move |ctx| {
            asym::part_attributes(ctx, id, part)
        })
        .await
    }

    /// A data key pair generated on the device as session objects, returned as PKCS#8 DER,
    /// SPKI DER and the PKCS#8 sealed under the symmetric CMK `cmk`. The session objects are
    /// made, read and destroyed in one unlocked job; the sealing is a second (shared) job.
    pub async fn generate_data_key_pair(
        &self,
        spec: PairSpec,
        cmk: ObjectId,
        aad: AadBuilder,
    ) -> Result<DataKeyPair, HsmError> {
        let permit = self.keygen_permit("generate_data_key_pair").await?;
        let (pkcs8, spki) = self
            .submit_retry_safe(LockClass::Unlocked, "generate_data_key_pair", move |ctx| {
                asym::generate_data_key_pair(ctx, spec)
            })
            .await?;
        drop(permit);
        // Sealing reads the token CMK: a separate job under the shared lock.
        let (pkcs8, sealed) = self
            .submit_retry_safe(LockClass::Shared, "seal_data_key_pair", move |ctx| {
                let sealed = ops::encrypt_gcm(ctx, cmk, &pkcs8, &aad)?;
                Ok((pkcs8.clone(), sealed))
            })
            .await?;
        Ok(DataKeyPair {
            pkcs8,
            spki,
            sealed,
        })
    }

    fn check_len(&self, op: &'static str, n: usize) -> Result<(), HsmError> {
        if n == 0 || n > MAX_RANDOM_LEN {
            return Err(HsmError::new(
                HsmErrorKind::Other,
                op,
                &self.shared.token,
                format!("length must be 1..={MAX_RANDOM_LEN} bytes"),
            ));
        }
        Ok(())
    }

    /// Enqueue `f` for a worker and await its answer. Never retried (see [`Retry::Never`]):
    /// for jobs that may create token objects or commit anything.
    async fn submit<T, F>(&self, lock: LockClass, op: &'static str, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WorkerCtx) -> Result<T, HsmError> + Send + 'static,
    {
        let mut f = Some(f);
        self.enqueue(lock, op, Retry::Never, Lane::Queue, move |ctx| {
            match f.take() {
                Some(f) => f(ctx),
                None => Err(HsmError::new(
                    HsmErrorKind::Other,
                    op,
                    ctx.token(),
                    "a job that may not be retried was run twice",
                )),
            }
        })
        .await
    }

    /// Enqueue `f`, a job that creates no token object and commits nothing, and await its
    /// answer. If it fails because its session died under it, it runs once more on a fresh
    /// session ([`Retry::OnLostSession`]); only a second failure reaches the caller.
    async fn submit_retry_safe<T, F>(
        &self,
        lock: LockClass,
        op: &'static str,
        f: F,
    ) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnMut(&mut WorkerCtx) -> Result<T, HsmError> + Send + 'static,
    {
        self.enqueue(lock, op, Retry::OnLostSession, Lane::Queue, f)
            .await
    }

    /// Enqueue a job taking `lock` in `lane` and await its answer; `op` names it in errors.
    async fn enqueue<T, F>(
        &self,
        lock: LockClass,
        op: &'static str,
        retry: Retry,
        lane: Lane,
        mut f: F,
    ) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnMut(&mut WorkerCtx) -> Result<T, HsmError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, HsmError>>();
        let mut tx = Some(tx);
        let enqueued = Instant::now();
        let job = Job {
            enqueued,
            deadline: enqueued + self.pool.acquire_timeout(),
            lock,
            retry,
            run: Box::new(move |dispatch: Dispatch<'_>| {
                let Some(sender) = tx.take() else {
                    return Outcome::Done;
                };
                // The caller gave up (its future was dropped): skip the work.
                if sender.is_closed() {
                    return Outcome::Done;
                }
                let answer = match dispatch {
                    Dispatch::Run(ctx, may_retry) => {
                        let answer = f(ctx);
                        if answer.is_err() && may_retry && ctx.needs_reopen() {
                            tx = Some(sender);
                            return Outcome::SessionLost;
                        }
                        answer
                    }
                    Dispatch::Expired(shared) => Err(HsmError::new(
                        HsmErrorKind::Timeout,
                        op,
                        &shared.token,
                        "waited in the HSM queue past its deadline",
                    )),
                };
                let _ = sender.send(answer);
                Outcome::Done
            }),
        };
        let token = &self.shared.token;
        self.pool.try_submit(job, lane).map_err(|e| match e {
            SubmitError::Full => {
                self.shared.counters.busy.fetch_add(1, Ordering::Relaxed);
                HsmError::new(HsmErrorKind::Busy, op, token, "HSM job queue is full")
            }
            SubmitError::Closed => HsmError::new(
                HsmErrorKind::Unavailable,
                op,
                token,
                "HSM layer is shut down",
            ),
        })?;
        rx.await.map_err(|_| {
            HsmError::new(
                HsmErrorKind::Unavailable,
                op,
                token,
                "the HSM worker dropped the job",
            )
        })?
    }
}

/// The device's simple jobs, one entry each: the method submits its closure to the worker
/// pool under its lock class ([`LockClass`]), named after itself in metrics, traces and
/// errors. `submit_retry_safe` jobs change nothing on the device and may run again after a
/// lost session; `submit` jobs never run twice (see [`Retry`]). Jobs with more steps than one
/// closure are written out in `impl Hsm` above.
macro_rules! device_jobs {
    ($(
        $(#[$doc:meta])*
        $submit:ident $lock:ident fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $out:ty
            = |$ctx:ident| $body:expr;
    )*) => {
        impl Hsm {$(
            $(#[$doc])*
            pub async fn $name(&self, $($arg: $ty),*) -> Result<$out, HsmError> {
                self.$submit(LockClass::$lock, stringify!($name), move |$ctx| $body).await
            }
        )*}
    };
}

device_jobs! {
    /// Generate a CMK version: an AES-256 token key with the CMK template
    /// and `CKA_ID` = `id`. Costs 10-16 ms on SoftHSM2 (file writes).
    submit Exclusive fn generate_aes_key(id: ObjectId) -> ()
        = |ctx| ops::generate_aes_key(ctx, id, &id.label());

    /// [`Hsm::generate_aes_key`] unless the token already has `id`, checked in the same
    /// exclusive job (and, on a shared token, under its lock file after a refresh of the
    /// token view), so that daemons starting together make one object. Whether it was made.
    submit Exclusive fn ensure_aes_key(id: ObjectId) -> bool
        = |ctx| ops::ensure_aes_key(ctx, id);

    /// [`Hsm::generate_aes_key`] with the label `label` (a custom key store's key is labelled
    /// with its key ARN, as AWS labels the keys it makes in a CloudHSM cluster).
    submit Exclusive fn generate_labelled_aes_key(id: ObjectId, label: String) -> ()
        = |ctx| ops::generate_aes_key(ctx, id, &label);

    /// AES-256-GCM encrypt under `id`. The IV comes from the HSM's RNG in the
    /// same job; `aad` builds the AAD from that IV.
    submit_retry_safe Shared fn encrypt_gcm(
        id: ObjectId, plaintext: Zeroizing<Vec<u8>>, aad: AadBuilder,
    ) -> GcmSealed
        = |ctx| ops::encrypt_gcm(ctx, id, &plaintext, &aad);

    /// [`Hsm::encrypt_gcm`], then the result decrypted in the same job and checked to give
    /// the plaintext back (the XKS door's integrity value is computed only over a ciphertext
    /// known to open): one queue hand-off instead of two.
    submit_retry_safe Shared fn encrypt_gcm_checked(
        id: ObjectId, plaintext: Zeroizing<Vec<u8>>, aad: AadBuilder,
    ) -> GcmSealed
        = |ctx| ops::encrypt_gcm_checked(ctx, id, &plaintext, &aad);

    /// AES-256-GCM decrypt under `id`. A bad tag or wrong AAD on a healthy
    /// device answers [`HsmErrorKind::AuthFailed`].
    submit_retry_safe Shared fn decrypt_gcm(
        id: ObjectId, iv: [u8; 12], ciphertext_and_tag: Vec<u8>, aad: Vec<u8>,
    ) -> Zeroizing<Vec<u8>>
        = |ctx| ops::decrypt_gcm(ctx, id, &iv, &ciphertext_and_tag, &aad);

    /// Destroy the key object `id`; [`HsmErrorKind::ObjectNotFound`] if absent.
    submit Exclusive fn destroy(id: ObjectId) -> ()
        = |ctx| ops::destroy(ctx, id);

    /// Whether the key object `id` exists on the token.
    submit_retry_safe Shared fn exists(id: ObjectId) -> bool
        = |ctx| ops::exists(ctx, id);

    /// The custody attributes of key object `id`, read from the device.
    submit_retry_safe Shared fn key_attributes(id: ObjectId) -> KeyAttributes
        = |ctx| ops::key_attributes(ctx, id);

    /// Try to read `CKA_VALUE` of `id`. For custody tests: it must fail for
    /// p11kms keys (`CKR_ATTRIBUTE_SENSITIVE`).
    submit Shared fn try_read_value(id: ObjectId) -> Zeroizing<Vec<u8>>
        = |ctx| ops::try_read_value(ctx, id);

    /// Generate a session AES wrapping key and try `CKM_AES_KEY_WRAP_PAD` on
    /// `id`. For custody tests: it must fail (`CKR_KEY_UNEXTRACTABLE`). The
    /// wrapping key is destroyed either way.
    submit Exclusive fn try_wrap_with_new_key(id: ObjectId) -> Vec<u8>
        = |ctx| ops::try_wrap_with_new_key(ctx, id);

    /// Every object on the token the logged-in user can see (for
    /// reconciliation). A linear scan: not for the request path.
    submit Shared fn list_objects() -> Vec<ObjectInfo>
        = |ctx| ops::list_objects(ctx);

    /// Health check: `C_GetSessionInfo` through a worker; fails unless the
    /// session is usable and logged in. Counted as a health probe, not in [`Hsm::counters`].
    submit Shared fn ping() -> ()
        = |ctx| ops::ping(ctx);

    /// ECDH between key pair `id` (on `curve`, a KEY_AGREEMENT key) and the peer's uncompressed
    /// `point`: the raw shared secret, derived on the device.
    submit_retry_safe Shared fn derive_shared_secret(
        id: ObjectId, curve: Curve, point: Vec<u8>,
    ) -> Zeroizing<Vec<u8>>
        = |ctx| asym::derive_shared_secret(ctx, id, curve, &point);

    /// Destroy the session-object copies of every version of key `key_id` (UUID bytes). Called
    /// when a key is disabled or scheduled for deletion: its material then exists only in the
    /// token objects until it is used again. A copy is recreated on the next use.
    submit Shared fn drop_session_copies(key_id: [u8; 16]) -> usize
        = |ctx| Ok(ops::drop_session_copies(ctx, &key_id));

    /// Destroy a wrapping private key; [`HsmErrorKind::ObjectNotFound`] if absent.
    submit Exclusive fn destroy_wrapping_key(id: unwrap::WrappingKeyId) -> ()
        = |ctx| unwrap::destroy_wrapping_key(ctx, id);

    /// Unwrap imported key material on the device (see [`unwrap`]): checks the length and
    /// the check value on a session copy before creating the token object.
    submit Exclusive fn import_material(job: unwrap::ImportJob) -> unwrap::ImportOutcome
        = |ctx| unwrap::import_material(ctx, job);

    /// Generate an HMAC CMK version (generic secret token key of the digest length).
    submit Exclusive fn generate_hmac_key(id: ObjectId, alg: MacAlg) -> ()
        = |ctx| mac::generate_hmac_key(ctx, id, alg);

    /// Destroy both halves of key pair `id`; [`HsmErrorKind::ObjectNotFound`] if neither exists.
    submit Exclusive fn destroy_key_pair(id: ObjectId) -> ()
        = |ctx| asym::destroy_key_pair(ctx, id);

    /// Whether the device does RSA-OAEP with SHA-256 (probed on the first call or the first
    /// RSA decryption key, then fixed): it decides whether RSA decryption keys may use raw RSA.
    submit Shared fn oaep_sha256() -> OaepSha256
        = |ctx| oaep::sha256_support(ctx);

    /// DER `SubjectPublicKeyInfo` of key pair `id`, built from the public object.
    submit_retry_safe Shared fn public_key(id: ObjectId, spec: PairSpec) -> Vec<u8>
        = |ctx| asym::public_key(ctx, id, spec);

    /// Sign a digest with the private key `id`.
    submit_retry_safe Shared fn sign(id: ObjectId, scheme: SignScheme, digest: Vec<u8>) -> Vec<u8>
        = |ctx| asym::sign(ctx, id, scheme, &digest);

    /// Verify a signature over a digest with the public key `id` (on the device).
    submit_retry_safe Shared fn verify(
        id: ObjectId, scheme: SignScheme, digest: Vec<u8>, signature: Vec<u8>,
    ) -> bool
        = |ctx| asym::verify(ctx, id, scheme, &digest, &signature);

    /// RSA-OAEP encrypt with the public key `id`.
    submit_retry_safe Shared fn rsa_encrypt(
        id: ObjectId, hash: ShaAlg, plaintext: Zeroizing<Vec<u8>>,
    ) -> Vec<u8>
        = |ctx| asym::rsa_encrypt(ctx, id, hash, &plaintext);

    /// RSA-OAEP decrypt with the private key `id`; a rejected ciphertext is
    /// [`HsmErrorKind::AuthFailed`].
    submit_retry_safe Shared fn rsa_decrypt(
        id: ObjectId, hash: ShaAlg, ciphertext: Vec<u8>,
    ) -> Zeroizing<Vec<u8>>
        = |ctx| asym::rsa_decrypt(ctx, id, hash, &ciphertext);

    /// HMAC of `message` under `id`, on the device.
    submit_retry_safe Shared fn generate_mac(
        id: ObjectId, alg: MacAlg, message: Zeroizing<Vec<u8>>,
    ) -> Vec<u8>
        = |ctx| mac::generate_mac(ctx, id, alg, &message);

    /// Whether `tag` is the HMAC of `message` under `id` (compared on the device).
    submit_retry_safe Shared fn verify_mac(
        id: ObjectId, alg: MacAlg, message: Zeroizing<Vec<u8>>, tag: Vec<u8>,
    ) -> bool
        = |ctx| mac::verify_mac(ctx, id, alg, &message, &tag);
}

device_jobs! {
    /// Wrapped residency: the newest master key on the token and whether it is trusted. Scans
    /// the token (start-up, rotation) and refreshes the masters this `Hsm` wraps under.
    submit_retry_safe Shared fn master_state() -> MasterState
        = |ctx| wrapped::master_state(ctx);

    /// Every master key on the token, oldest first, with `CKA_TRUSTED` as the device reports
    /// it. Refreshes the masters this `Hsm` knows: new keys are wrapped under the newest
    /// trusted one (call it on every node after a trust ceremony).
    submit_retry_safe Shared fn masters() -> Vec<(MasterVersion, bool)>
        = |ctx| wrapped::scan_masters(ctx);

    /// Make master `v` as an untrusted user object, with its bind key (each unless present):
    /// the daemon's first start in wrapped mode. True if the master was made. Nothing is
    /// wrapped under it until the SO's [`trust_master`] ceremony replaces it.
    submit Exclusive fn create_master_untrusted(v: MasterVersion) -> bool
        = |ctx| wrapped::create_master_untrusted(ctx, v);

    /// Destroy master `v` and its bind key (after every blob was rewrapped away from it);
    /// [`HsmErrorKind::ObjectNotFound`] if neither exists.
    submit Exclusive fn destroy_master(v: MasterVersion) -> ()
        = |ctx| wrapped::destroy_master(ctx, v);

    /// A new AES-256 CMK version in wrapped residency: generated as a session object,
    /// wrapped under the newest trusted master and tagged for `id`, in one job; no token
    /// object is made. The key stays in the worker's cache.
    submit_retry_safe Shared fn generate_wrapped_aes(id: ObjectId) -> WrappedBlob
        = |ctx| wrapped::generate_wrapped(ctx, id, BlobKind::Aes256);

    /// [`Hsm::generate_wrapped_aes`] for an HMAC key of `alg`.
    submit_retry_safe Shared fn generate_wrapped_hmac(id: ObjectId, alg: MacAlg) -> WrappedBlob
        = |ctx| wrapped::generate_wrapped(ctx, id, BlobKind::Hmac(alg));

    /// Destroy every worker's unwrapped copy of every version of key `key_id` (disable,
    /// deletion, destroy). Returns how many were cached. The next use unwraps again, if the
    /// blob source still has the blob.
    submit Unlocked fn evict_wrapped(key_id: [u8; 16]) -> usize
        = |ctx| Ok(wrapped::evict_wrapped(ctx, &key_id));

    /// Key import in wrapped residency: [`Hsm::import_material`]'s checks on a session copy,
    /// which is then wrapped under the current trusted master and tagged for `job.target` on
    /// the device (no token object is made). The blob comes with a successful import that
    /// asked for the object (`create_object`).
    submit Shared fn import_material_wrapped(job: unwrap::ImportJob)
        -> (unwrap::ImportOutcome, Option<WrappedBlob>)
        = |ctx| unwrap::import_material_wrapped(ctx, job);

    /// `p11kms check`: whether `blob`'s tag verifies for `id` and the blob unwraps on the
    /// device (into a transient session object, destroyed in the same job).
    submit_retry_safe Shared fn check_wrapped(id: ObjectId, blob: Arc<WrappedBlob>) -> ()
        = |ctx| wrapped::check_blob(ctx, id, &blob);

    /// Residency migration wrapped -> token: unwrap `blob` (tag checked for `id`) into the
    /// token object of `id`, sensitive and extractable only under a trusted key (so that it
    /// can move back), and check on the device that it holds the blob's material. A token
    /// object already there (an interrupted run) is checked, not made again.
    submit Exclusive fn wrapped_to_token(id: ObjectId, blob: Arc<WrappedBlob>) -> ()
        = |ctx| wrapped::wrapped_to_token(ctx, id, &blob);

    /// Residency migration token -> wrapped: the token object of secret key version `id`
    /// wrapped under the newest trusted master and tagged for `id`, checked to unwrap to the
    /// same material; [`TokenMove::NeverExtractable`] for a key born in token residency
    /// (PKCS#11 never makes it extractable). The token object stays (the caller destroys it
    /// once the blob is stored).
    submit_retry_safe Shared fn token_to_wrapped(id: ObjectId) -> TokenMove
        = |ctx| wrapped::token_to_wrapped(ctx, id);

    /// Residency migration to wrapped, after an interrupted run: destroy the token object of
    /// `id` left beside its stored `blob`, once checked to hold the same material. Whether
    /// there was one.
    submit Exclusive fn destroy_token_twin(id: ObjectId, blob: Arc<WrappedBlob>) -> bool
        = |ctx| wrapped::destroy_token_twin(ctx, id, &blob);

    /// Master-key rotation: check `blob`'s tag for `id`, unwrap it under its master and wrap
    /// it under `to` (trusted), in one job. The old blob stays valid until its master goes.
    submit_retry_safe Shared fn rewrap(id: ObjectId, blob: Arc<WrappedBlob>, to: MasterVersion)
        -> WrappedBlob
        = |ctx| wrapped::rewrap(ctx, id, &blob, to);
}

impl Drop for Hsm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
