//! The locks HSM jobs take around device work, and the workers' record of what they hold.
//!
//! A [`Gate`] is a readers-writer lock (writers first, so an exclusive job is not starved by
//! a stream of shared ones) whose shares are recorded per worker ([`WorkerSlot`]). When the
//! watchdog abandons a worker stuck in a PKCS#11 call it gives that worker's shares back
//! ([`WorkerSlot::forgive`]): a stuck call then holds up its own request only, never a token
//! object creation or a session reopen (and, behind those, every other job).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::Shared;

/// A readers-writer lock whose shares can be released on behalf of an abandoned holder.
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    readers: usize,
    writer: bool,
    writers_waiting: usize,
    /// Threads asleep on `changed`: a release wakes them only if there are any, since a
    /// `notify_all` is a system call even when nobody waits (two per job, one per gate).
    sleepers: usize,
}

impl Gate {
    /// An unlocked gate.
    pub(crate) const fn new() -> Gate {
        Gate {
            state: Mutex::new(GateState {
                readers: 0,
                writer: false,
                writers_waiting: 0,
                sleepers: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, mut g: MutexGuard<'a, GateState>) -> MutexGuard<'a, GateState> {
        g.sleepers += 1;
        let mut g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        g.sleepers -= 1;
        g
    }

    /// Block until a share (`write`: the only one) is granted.
    fn acquire(&self, write: bool) {
        let mut s = self.lock();
        if write {
            s.writers_waiting += 1;
            while s.writer || s.readers > 0 {
                s = self.wait(s);
            }
            s.writers_waiting -= 1;
            s.writer = true;
        } else {
            while s.writer || s.writers_waiting > 0 {
                s = self.wait(s);
            }
            s.readers += 1;
        }
    }

    /// Whether a shared share would be granted now without waiting (no writer holds or
    /// awaits the gate). A hint: it may change the moment it is read.
    fn open_to_readers(&self) -> bool {
        let s = self.lock();
        !s.writer && s.writers_waiting == 0
    }

    fn release(&self, write: bool) {
        let mut s = self.lock();
        if write {
            s.writer = false;
        } else {
            s.readers = s.readers.saturating_sub(1);
        }
        let sleepers = s.sleepers > 0;
        drop(s);
        if sleepers {
            self.changed.notify_all();
        }
    }
}

/// Which gate a share is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateId {
    /// The module instance's token-object lock (see `module::Instance::token_objects`).
    TokenObjects,
    /// The pool's session gate (see `Shared::session_gate`).
    Session,
}

/// Whether a shared job could take both gates now without waiting: inline dispatch never
/// makes a calling thread wait behind an exclusive job.
pub(crate) fn readers_may_enter(shared: &Shared) -> bool {
    shared.session_gate.open_to_readers() && shared.token_objects.open_to_readers()
}

fn gate(id: GateId, shared: &Shared) -> &Gate {
    match id {
        GateId::TokenObjects => &shared.token_objects,
        GateId::Session => &shared.session_gate,
    }
}

/// One worker thread as the watchdog sees it.
pub(crate) struct WorkerSlot {
    /// The worker's number (its thread is `hsm-worker-<n>`).
    pub(crate) n: usize,
    /// When the current device work began (milliseconds since the pool started, plus one);
    /// 0 while the worker is idle or waiting for a lock.
    busy_since: AtomicU64,
    /// Set by the watchdog: the thread finishes its job, closes its session and exits.
    abandoned: AtomicBool,
    /// Gate shares the worker holds now.
    held: Mutex<Vec<(GateId, bool)>>,
}

impl WorkerSlot {
    /// A slot for worker `n`.
    pub(crate) fn new(n: usize) -> WorkerSlot {
        WorkerSlot {
            n,
            busy_since: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
        }
    }

    fn held(&self) -> MutexGuard<'_, Vec<(GateId, bool)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a share of gate `id` (blocking) and record it.
    pub(crate) fn share<'a>(&'a self, shared: &'a Shared, id: GateId, write: bool) -> Share<'a> {
        let gate = gate(id, shared);
        gate.acquire(write);
        self.held().push((id, write));
        Share {
            slot: Some(self),
            gate,
            id,
            write,
        }
    }

    /// Mark the start (`Some(now_ms)`) or end (`None`) of device work.
    pub(crate) fn set_busy(&self, since_ms: Option<u64>) {
        let v = since_ms.map_or(0, |ms| ms.saturating_add(1));
        self.busy_since.store(v, Ordering::SeqCst);
    }

    /// For how long (ms) the worker has been in device work at `now_ms`, if it is.
    pub(crate) fn busy_for(&self, now_ms: u64) -> Option<u64> {
        match self.busy_since.load(Ordering::SeqCst) {
            0 => None,
            v => Some(now_ms.saturating_sub(v - 1)),
        }
    }

    /// Whether the watchdog has given up on this worker.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Give up on this worker: mark it abandoned and release every gate share it holds, so
    /// other workers' jobs and session reopens no longer wait for its stuck call.
    pub(crate) fn forgive(&self, shared: &Shared) {
        self.abandoned.store(true, Ordering::SeqCst);
        let shares = std::mem::take(&mut *self.held());
        for (id, write) in shares {
            gate(id, shared).release(write);
        }
    }
}

/// A held share of a gate; released on drop unless the watchdog has released it already.
pub(crate) struct Share<'a> {
    slot: Option<&'a WorkerSlot>,
    gate: &'a Gate,
    id: GateId,
    write: bool,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mine = match self.slot {
            None => true,
            Some(slot) => {
                let mut held = slot.held();
                match held.iter().position(|h| *h == (self.id, self.write)) {
                    Some(i) => {
                        held.remove(i);
                        true
                    }
                    None => false,
                }
            }
        };
        if mine {
            self.gate.release(self.write);
        }
    }
}

/// An exclusive share of the token-object gate of `hsm`'s module instance, held outside any
/// worker (tests that create objects on their own session, or stand for a stuck creation).
#[cfg(test)]
pub(crate) fn token_objects_exclusive(hsm: &super::Hsm) -> Share<'_> {
    let gate = &*hsm.shared.token_objects;
    gate.acquire(true);
    Share {
        slot: None,
        gate,
        id: GateId::TokenObjects,
        write: true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use super::Gate;

    /// Spawns a thread that takes a share of `gate`, reports it, and gives it back.
    fn taker(
        gate: &Arc<Gate>,
        write: bool,
        got: &mpsc::Sender<bool>,
    ) -> std::thread::JoinHandle<()> {
        let (gate, got) = (Arc::clone(gate), got.clone());
        std::thread::spawn(move || {
            gate.acquire(write);
            got.send(write).unwrap();
            gate.release(write);
        })
    }

    /// Waits until `n` threads sleep on `gate`; fails after 10 s (a share granted that should
    /// not have been would leave the thread awake for ever).
    fn await_sleepers(gate: &Gate, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gate.lock().sleepers < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} sleepers never came"
            );
            std::thread::yield_now();
        }
    }

    /// Releases wake exactly when someone sleeps on the gate: a writer asleep behind a
    /// reader, and two readers asleep behind a writer, are let in by the release that frees
    /// the gate (a lost wake-up would leave them asleep and fail the receive).
    #[test]
    fn a_release_wakes_the_sleepers_it_lets_in() {
        let gate = Arc::new(Gate::new());
        let (got, rx) = mpsc::channel();
        for _ in 0..100 {
            gate.acquire(false);
            let writer = taker(&gate, true, &got);
            await_sleepers(&gate, 1);
            assert!(rx.try_recv().is_err(), "a writer got in beside a reader");
            gate.release(false);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
            writer.join().unwrap();

            gate.acquire(true);
            let readers = [taker(&gate, false, &got), taker(&gate, false, &got)];
            await_sleepers(&gate, 2);
            assert!(rx.try_recv().is_err(), "a reader got in beside a writer");
            gate.release(true);
            for _ in 0..2 {
                assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(false));
            }
            for r in readers {
                r.join().unwrap();
            }
            assert_eq!(gate.lock().sleepers, 0);
        }
    }
}
