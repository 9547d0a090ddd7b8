//! One node at a time runs the background duties (deletion sweeper, automatic rotation,
//! import expiry, reconciliation of interrupted creations, master-key rotation of wrapped
//! residency ([`super::rewrap`]), and pruning of the change log and
//! of expired sessions): the one holding the store's lead (a PostgreSQL advisory lock on a
//! connection of its own; on SQLite, one node by definition, always this one).
//!
//! Each round, the holder checks that its connection still holds the lock before it acts. A
//! node that dies (or loses that connection) loses the lock with it, and another node takes
//! it at its next round: the duties move within one sweep interval (plus the time PostgreSQL
//! takes to see the connection gone). Every duty is idempotent and works from the shared
//! store's state through compare-and-set writes, so a duty cut halfway by a crash is finished
//! by the next leader, never done twice.

use crate::store::{Duty, LeaderGuard};

use super::follow::RETENTION_MS;
use super::Kms;

/// This node's hold on the lead, kept between rounds.
#[derive(Debug, Default)]
pub struct Lead {
    guard: Option<LeaderGuard>,
}

impl Kms {
    /// Runs the background duties once if this node holds the lead or can take it now;
    /// returns whether it did.
    pub async fn lead_once(&self, lead: &mut Lead) -> bool {
        if !self.hold_lead(lead).await {
            return false;
        }
        self.sweep_once().await;
        self.prune_shared_state().await;
        true
    }

    /// Keeps the lead (its lock still held) or tries to take it.
    async fn hold_lead(&self, lead: &mut Lead) -> bool {
        if let Some(g) = lead.guard.as_mut() {
            if g.still_held().await {
                return true;
            }
            tracing::warn!(
                "this node lost the lead of the background duties (its store connection is gone)"
            );
            lead.guard = None;
        }
        match self.store.try_lead(Duty::Sweeper).await {
            Ok(Some(g)) => {
                tracing::info!("this node runs the background duties now");
                lead.guard = Some(g);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the store for the lead of the background duties");
                false
            }
        }
    }

    /// Removes change-log rows older than [`RETENTION_MS`] and sessions past their expiry.
    async fn prune_shared_state(&self) {
        let now = self.now_ms();
        if let Err(e) = self.store.prune_changes(now - RETENTION_MS).await {
            tracing::warn!(error = %e, "cannot prune the change log; will retry");
        }
        if let Err(e) = self.store.delete_expired_sessions(now).await {
            tracing::warn!(error = %e, "cannot remove expired sessions; will retry");
        }
    }
}
