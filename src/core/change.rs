//! The one path of every change to a key's row: resolve, take the key's change lock,
//! re-resolve, then run the change (authorize, check the state, write compare-and-set). A
//! write that finds the row changed by someone else ([`StoreError::Conflict`]: another node,
//! since this process serialises its own changes to a key) is retried on fresh state: the key
//! is reloaded from the store, resolved, authorized and checked again. After
//! [`CHANGE_ATTEMPTS`] lost races the caller gets ConflictException. A retried request is one
//! request: the audit record keeps the decisions of its last attempt only, and its intent
//! record is written once.

use super::{Kms, KmsError, Resolved};
use crate::identity::Caller;
use crate::store::StoreError;

/// How many times a key change is tried before ConflictException: enough that a writer on
/// one node is not starved by a stream of writes to the same key on another (three were
/// not: tests/cluster.rs saw UpdateKeyDescription answer ConflictException with four writers
/// per node), with a random pause ([`backoff`]) after each lost attempt.
pub(crate) const CHANGE_ATTEMPTS: usize = 10;

/// The pause after lost attempt `attempt` (1-based), taken without the key's change lock: a
/// random time up to 2^attempt ms (at most 64 ms), so that writers on two nodes that keep
/// colliding fall out of step.
fn backoff(attempt: usize) -> std::time::Duration {
    let cap_us = 1000u64 << attempt.min(6);
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    std::time::Duration::from_micros(random % cap_us)
}

/// Why one attempt at a change ended without a result.
#[derive(Debug)]
pub(crate) enum Retry {
    /// The change failed for good: answer this.
    Failed(KmsError),
    /// A compare-and-set write found the row changed: try again on fresh state.
    Stale,
}

impl From<KmsError> for Retry {
    fn from(e: KmsError) -> Self {
        Retry::Failed(e)
    }
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Retry::Stale,
            other => Retry::Failed(other.into()),
        }
    }
}

impl Retry {
    /// The error a caller outside a retry loop answers.
    pub(crate) fn into_error(self) -> KmsError {
        match self {
            Retry::Failed(e) => e,
            Retry::Stale => StoreError::Conflict("row changed".into()).into(),
        }
    }
}

impl Kms {
    /// Runs `change` on the key `key_ref` names (key id or ARN) under the key's change lock,
    /// retrying it on fresh state when its compare-and-set write loses (see the module docs).
    /// `change` is `move |resolved| async move { ... }` over references and copies, so that
    /// each attempt's future is `Send` and owns nothing the next attempt needs.
    pub(crate) async fn change_key<T, F>(
        &self,
        caller: &Caller,
        key_ref: &str,
        mut change: impl FnMut(Resolved) -> F,
    ) -> Result<T, KmsError>
    where
        F: std::future::Future<Output = Result<T, Retry>>,
    {
        let mark = super::record::decision_count();
        for attempt in 1..=CHANGE_ATTEMPTS {
            let first = self.resolve(caller, key_ref, false)?;
            let key_id = first.key.record.key_id.clone();
            let guard = self.key_locks.key(&key_id).await;
            // Resolved again under the lock: another task may have changed the key meanwhile.
            let resolved = self.resolve(caller, key_ref, false)?;
            match change(resolved).await {
                Ok(v) => return Ok(v),
                Err(Retry::Failed(e)) => return Err(e),
                Err(Retry::Stale) => {
                    tracing::info!(key_id, attempt, "key changed concurrently; retrying");
                    super::record::forget_decisions_after(mark);
                    self.refresh_key(&key_id).await?;
                }
            }
            drop(guard);
            if attempt < CHANGE_ATTEMPTS {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        Err(Retry::Stale.into_error())
    }
}
