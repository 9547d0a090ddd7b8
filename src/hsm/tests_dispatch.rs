//! Inline dispatch (`hsm.dispatch = "inline"`) against a real SoftHSM2 token: which jobs the
//! calling thread runs itself, which still go to the workers, and a stuck inline call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::tests::{aad_bytes, aad_with, new_id, test_config};
use super::*;

/// An `Hsm` with inline dispatch through a module instance and on a token of the test's own
/// (`test`: its name): no other test's exclusive job ever holds its gate (which would send
/// fast jobs to the queue).
fn open_inline(test: &str, tune: impl FnOnce(&mut HsmConfig)) -> Arc<Hsm> {
    let mut c = super::tests::own_instance(test);
    c.dispatch = JobDispatch::Inline;
    tune(&mut c);
    Hsm::open(&c).expect("open Hsm")
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

#[tokio::test]
async fn fast_jobs_run_on_the_calling_thread_and_the_rest_on_workers() {
    let hsm = open_inline("inline-fast-jobs", |_| {});
    let caller = thread_name();
    assert_eq!(hsm.run_fast_job(thread_name).await.unwrap(), caller);
    assert_eq!(hsm.stats().inline_jobs, 1);

    // A key made by a worker (exclusive job), used inline by encrypt and decrypt.
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    assert_eq!(
        hsm.stats().inline_jobs,
        1,
        "an exclusive job is never inline"
    );
    // The worker counts as busy until just after its answer; an inline run needs it idle.
    wait_for(|| hsm.pool_idle()).await;
    let sealed = hsm
        .encrypt_gcm(id, Zeroizing::new(b"inline".to_vec()), aad_with(b"d"))
        .await
        .unwrap();
    let opened = hsm
        .decrypt_gcm(
            id,
            sealed.iv,
            sealed.ciphertext_and_tag,
            aad_bytes(b"d", &sealed.iv),
        )
        .await
        .unwrap();
    assert_eq!(&opened[..], b"inline");
    assert_eq!(hsm.stats().inline_jobs, 3);

    // A job that may not run twice goes to a worker.
    let (tx, rx) = mpsc::channel();
    hsm.run_on_worker(move || tx.send(thread_name()).unwrap())
        .await
        .unwrap();
    assert!(rx.recv().unwrap().starts_with("hsm-worker-"));
    assert_eq!(hsm.stats().inline_jobs, 3);
    hsm.destroy(id).await.unwrap();
}

#[tokio::test]
async fn without_inline_dispatch_every_job_goes_to_a_worker() {
    let hsm = Hsm::open(&test_config()).unwrap();
    assert!(hsm
        .run_fast_job(thread_name)
        .await
        .unwrap()
        .starts_with("hsm-worker-"));
    assert_eq!(hsm.stats().inline_jobs, 0);
}

/// A calling thread never waits behind an exclusive job: while one holds the token-object
/// gate, a fast job is queued for a worker instead of blocking the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_job_goes_to_the_queue_while_an_exclusive_one_holds_the_gate() {
    let hsm = open_inline("inline-exclusive", |c| c.workers = 1);
    let exclusive = gate::token_objects_exclusive(&hsm);
    // The only worker takes a job and waits for the gate with it.
    let taken = hsm.stats().queue_wait.count;
    let blocker = {
        let hsm = Arc::clone(&hsm);
        tokio::spawn(async move { hsm.run_on_worker(|| ()).await })
    };
    wait_for(|| hsm.stats().queue_wait.count > taken).await;
    let job = {
        let hsm = Arc::clone(&hsm);
        tokio::spawn(async move { hsm.run_fast_job(thread_name).await })
    };
    wait_for(|| hsm.queued() == 1).await;
    assert!(!job.is_finished());
    drop(exclusive);
    blocker.await.unwrap().unwrap();
    let ran_on = job.await.unwrap().unwrap();
    assert!(ran_on.starts_with("hsm-worker-"), "{ran_on}");
    assert_eq!(hsm.stats().inline_jobs, 0);
}

/// Waits (at most 5 s) until `done` holds.
async fn wait_for(done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(5), "timed out");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The watchdog abandons an inline session stuck in a call as it abandons a stuck worker: a
/// new session takes its place, other requests go on, and the stuck caller still gets its
/// answer, after which its session is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_inline_call_is_abandoned_and_its_session_replaced() {
    let hsm = open_inline("inline-stuck", |c| {
        c.stall_limit = Duration::from_millis(200)
    });
    let before = hsm.counters();
    let released = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let stuck = {
        let (hsm, released) = (Arc::clone(&hsm), Arc::clone(&released));
        tokio::spawn(async move {
            hsm.run_fast_job(move || {
                let _ = started_tx.send(thread_name());
                std::thread::sleep(Duration::from_millis(1500));
                released.store(true, Ordering::SeqCst);
            })
            .await
        })
    };
    let stuck_on = tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    assert!(!stuck_on.starts_with("hsm-worker-"), "{stuck_on}");

    // workers_replaced only grows: a poll that wakes late cannot miss it, as it could miss
    // stuck_workers, which falls back to 0 when the call returns.
    wait_for(|| hsm.stats().workers_replaced == 1).await;
    assert_eq!(hsm.random(16).await.unwrap().len(), 16);
    assert!(
        !released.load(Ordering::SeqCst),
        "waited for the stuck call"
    );
    let s = hsm.stats();
    assert_eq!((s.workers_replaced, s.stuck_workers), (1, 1));
    wait_for(|| hsm.counters()["C_OpenSession"] > before["C_OpenSession"]).await;

    stuck
        .await
        .unwrap()
        .expect("the stuck call still gets its answer");
    assert_eq!(hsm.stats().stuck_workers, 0);
    assert!(hsm.counters()["C_CloseSession"] > before["C_CloseSession"]);
    assert_eq!(hsm.random(16).await.unwrap().len(), 16);
}

#[tokio::test]
async fn shutdown_closes_the_inline_sessions() {
    let hsm = open_inline("inline-shutdown", |_| {});
    hsm.run_fast_job(|| ()).await.unwrap();
    let before = hsm.counters()["C_CloseSession"];
    hsm.shutdown();
    let closed = hsm.counters()["C_CloseSession"] - before;
    // The keeper session, the default two workers' sessions and the inline one.
    assert_eq!(closed, 4, "closed {closed} sessions");
    assert!(hsm.run_fast_job(|| ()).await.is_err());
}
