//! Per-name change locks: changes to one key (or one alias name, one key store) are
//! serialised in this process, changes to different ones run in parallel.
//!
//! The table maps a [`LockName`] to a shared `tokio` mutex. An entry lives while a guard or a
//! waiter holds it, and is removed when the last one lets go, so the table never grows beyond
//! the names being changed right now.
//!
//! The locks are per process only: with several nodes on one database the compare-and-set
//! writes of the store (`row_version`) and its uniqueness constraints are what keeps changes
//! correct; the locks only spare this process needless conflicts. Rules for holders:
//! - never hold a lock across an HSM job or an outbound XKS proxy call (read under the lock,
//!   release, do the job, re-take, re-read, compare-and-set);
//! - take name locks (aliases, key stores) before key locks, and at most one key lock at a
//!   time, so no two holders can wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// What a change lock protects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LockName {
    /// One key's row and everything hanging off it (tags, grants, lifecycle, versions).
    Key(String),
    /// One alias name in one account: (account, `alias/...`).
    Alias(String, String),
    /// The custom key stores of one account (their names and the account's quota).
    KeyStoresOf(String),
}

/// The lock table. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    table: Mutex<HashMap<LockName, Weak<tokio::sync::Mutex<()>>>>,
}

/// A held change lock; dropping it releases the lock and, if nobody else wants it, its
/// table entry.
#[derive(Debug)]
pub(crate) struct ChangeGuard<'a> {
    locks: &'a KeyLocks,
    name: LockName,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Waits for and takes the lock on `name`.
    pub(crate) async fn lock(&self, name: LockName) -> ChangeGuard<'_> {
        let mutex = self.entry(&name);
        let guard = mutex.lock_owned().await;
        ChangeGuard {
            locks: self,
            name,
            guard: Some(guard),
        }
    }

    /// Takes the lock on key `key_id`.
    pub(crate) async fn key(&self, key_id: &str) -> ChangeGuard<'_> {
        self.lock(LockName::Key(key_id.to_string())).await
    }

    /// The mutex of `name`, made if nobody holds or waits for it.
    fn entry(&self, name: &LockName) -> Arc<tokio::sync::Mutex<()>> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = table.get(name).and_then(Weak::upgrade) {
            return live;
        }
        let fresh = Arc::new(tokio::sync::Mutex::new(()));
        table.insert(name.clone(), Arc::downgrade(&fresh));
        fresh
    }

    /// Whether `name` is held or awaited by anyone (tests).
    #[cfg(test)]
    fn is_live(&self, name: &LockName) -> bool {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.get(name).is_some_and(|w| w.strong_count() > 0)
    }

    /// Number of table entries (tests: no unbounded growth).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        // Release first (this drops our reference to the mutex), then remove the entry if
        // no other guard or waiter still refers to it.
        drop(self.guard.take());
        let mut table = self.locks.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.get(&self.name).is_some_and(|w| w.strong_count() == 0) {
            table.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> LockName {
        LockName::Key(id.to_string())
    }

    /// A held lock on one key does not stop a change to another key.
    #[tokio::test]
    async fn different_names_do_not_wait_for_each_other() {
        let locks = KeyLocks::default();
        let _a = locks.lock(key("a")).await;
        let b = locks.lock(key("b")).await;
        assert!(locks.is_live(&key("b")));
        drop(b);
        assert!(locks.is_live(&key("a")));
    }

    /// The same name is exclusive: a second taker waits until the first lets go.
    #[tokio::test]
    async fn one_name_is_exclusive() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock(key("a")).await;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(key("a")).await;
            tx.send(()).ok();
        });
        // The waiter cannot have the lock while `first` is held: the channel is still empty
        // (checked without waiting, not by sleeping).
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err());
        drop(first);
        waiter.await.unwrap();
        assert!(rx.try_recv().is_ok());
    }

    /// Entries are removed when unused: locking many names leaves an empty table.
    #[tokio::test]
    async fn unused_entries_are_removed() {
        let locks = KeyLocks::default();
        for i in 0..1000 {
            let _g = locks.lock(key(&i.to_string())).await;
        }
        let _s = locks
            .lock(LockName::KeyStoresOf("111122223333".into()))
            .await;
        assert_eq!(locks.len(), 1);
        drop(_s);
        assert_eq!(locks.len(), 0);
    }

    /// An entry with a waiter stays while the holder lets go, and goes after the waiter.
    #[tokio::test]
    async fn entry_survives_while_awaited() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock(key("a")).await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let g = l2.lock(key("a")).await;
            drop(g);
        });
        tokio::task::yield_now().await;
        drop(first);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
