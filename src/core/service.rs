//! What the daemon does by itself (the deletion sweeper, automatic rotation, the expiry of
//! imported key material), as [`ServiceAction`]s handed to a [`ServiceEventSink`].
//!
//! Why a sink and not the request record ([`super::record`]): a request's record is read by
//! the gate after the engine call returns, but a sweep has no gate around it and acts on many
//! keys, each of which needs its own event with its own outcome. The engine knows neither the
//! audit format nor the writer: it describes the action in its own terms and the server wires a
//! sink that turns it into an audit event (`crate::audit::ServiceAuditSink`). Without a sink
//! (unit tests, `p11kms check`) actions are only logged.
//!
//! Fail closed, as requests do: a sweep does not start an action while the sink says it cannot
//! record ([`ServiceEventSink::ready`]), and each action first makes an intent record durable
//! ([`ServiceEventSink::intent`]); if that fails, the action does not start and is retried by
//! the next sweep. So no change of the daemon's own is stored without a durable record.

use std::sync::Arc;

use super::{CachedKey, Kms, KmsError};

/// The CloudTrail event name of an action the daemon takes by itself (CloudTrail logs these
/// for KMS as `AwsServiceEvent`s under the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceEventName {
    /// The pending window of a key scheduled for deletion ended and the key was destroyed.
    DeleteKey,
    /// Automatic rotation created a new backing-key version.
    RotateKey,
    /// Imported key material reached its `ValidTo` and was deleted.
    DeleteExpiredKeyMaterial,
    /// Reconciliation finished a CreateKey interrupted after its HSM object existed: the key
    /// is now `Enabled` (no CloudTrail counterpart: AWS has no interrupted creations).
    CompleteCreateKey,
    /// Reconciliation removed a key whose CreateKey was interrupted before its HSM object
    /// existed: its row, tags and aliases (no tombstone: no client ever had the key).
    DeleteIncompleteKey,
    /// A custom key store's connection reached a new state by itself: a connection attempt
    /// ended (`CONNECTED` or `FAILED`), a disconnection finished, the device went away, or the
    /// automatic reconnect brought it back (no CloudTrail counterpart).
    CustomKeyStoreStateChange,
    /// Master-key rotation rewrapped a key version's blob under the newest trusted master
    /// key (wrapped residency; no CloudTrail counterpart: AWS does not expose it).
    RewrapKeyMaterial,
}

impl ServiceEventName {
    /// The CloudTrail `eventName`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceEventName::DeleteKey => "DeleteKey",
            ServiceEventName::RotateKey => "RotateKey",
            ServiceEventName::DeleteExpiredKeyMaterial => "DeleteExpiredKeyMaterial",
            ServiceEventName::CompleteCreateKey => "CompleteCreateKey",
            ServiceEventName::DeleteIncompleteKey => "DeleteIncompleteKey",
            ServiceEventName::CustomKeyStoreStateChange => "CustomKeyStoreStateChange",
            ServiceEventName::RewrapKeyMaterial => "RewrapKeyMaterial",
        }
    }
}

/// One action the daemon took by itself on one key, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAction {
    /// What was done.
    pub event_name: ServiceEventName,
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
    /// The key's account.
    pub account: String,
    /// The backing-key version created (RotateKey), when there is one.
    pub key_version: Option<u32>,
    /// The AWS error name and message when the action failed; `None` on success.
    pub error: Option<(&'static str, String)>,
    /// When it ended, by the engine's clock (Unix milliseconds).
    pub at_ms: i64,
    /// A custom key store's new connection state, for
    /// [`ServiceEventName::CustomKeyStoreStateChange`] (then the key fields are empty).
    pub key_store: Option<KeyStoreChange>,
}

/// A custom key store's connection state as one audit event records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStoreChange {
    /// The store id (`cks-...`).
    pub store_id: String,
    /// The new `ConnectionState`.
    pub state: &'static str,
    /// The `ConnectionErrorCode` of a `FAILED` store.
    pub error_code: Option<&'static str>,
    /// An orphaned key object left on the store's device (the sweeper deleted a key while
    /// the store was not connected), as `<key id>/v<version>`.
    pub orphaned_object: Option<String>,
}

impl ServiceAction {
    /// The action `event_name` on `key` with the outcome `result`, ended at `at_ms`.
    pub(crate) fn on<T>(
        event_name: ServiceEventName,
        key: &CachedKey,
        result: &Result<T, KmsError>,
        at_ms: i64,
    ) -> ServiceAction {
        ServiceAction {
            event_name,
            key_id: key.record.key_id.clone(),
            key_arn: key.arn.clone(),
            account: key.record.account.clone(),
            key_version: None,
            error: result.as_ref().err().map(|e| (e.aws_name(), e.message())),
            at_ms,
            key_store: None,
        }
    }

    /// Whether the action succeeded.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Where the engine reports its own actions (the server wires the audit trail here).
#[async_trait::async_trait]
pub trait ServiceEventSink: Send + Sync {
    /// Whether an event can be recorded now; a sweep starts no action while it cannot.
    fn ready(&self) -> bool;
    /// Records durably that `action` is about to change something (its intent); an error
    /// means the action must not start.
    async fn intent(&self, action: &ServiceAction) -> Result<(), String>;
    /// Records one action and its outcome durably.
    async fn record(&self, action: &ServiceAction) -> Result<(), String>;
}

impl Kms {
    /// Wires the sink of the engine's own actions (once; later calls are ignored).
    pub fn set_service_sink(&self, sink: Arc<dyn ServiceEventSink>) {
        self.key_stores.set_sink(sink.clone());
        let _ = self.service_sink.set(sink);
    }

    /// Connects again every custom key store the key administrators left connected (at
    /// start-up, once the audit trail is wired).
    pub fn resume_key_stores(&self) {
        for handle in self.key_stores.all() {
            if handle.record().connect {
                self.key_stores.start_connect(&handle);
            }
        }
    }

    /// Whether a sweep may act now: no sink, or a sink that can record.
    pub(crate) fn service_ready(&self) -> bool {
        self.service_sink.get().is_none_or(|s| s.ready())
    }

    /// Makes the intent record of `event_name` on `key` durable before the action changes
    /// anything (as requests do, see [`super::record`]); an error means it must not start.
    pub(crate) async fn service_intent(
        &self,
        event_name: ServiceEventName,
        key: &CachedKey,
    ) -> Result<(), KmsError> {
        let Some(sink) = self.service_sink.get() else {
            return Ok(());
        };
        let action = ServiceAction::on(event_name, key, &Ok::<(), KmsError>(()), self.now_ms());
        sink.intent(&action).await.map_err(|e| {
            KmsError::DependencyTimeout(format!(
                "The audit trail cannot be written, so the action was not started: {e}"
            ))
        })
    }

    /// Hands `action` to the sink (a failure to record is logged: the action is done).
    pub(crate) async fn report_service(&self, action: &ServiceAction) {
        let Some(sink) = self.service_sink.get() else {
            return;
        };
        if let Err(e) = sink.record(action).await {
            tracing::error!(
                key_id = %action.key_id,
                event = action.event_name.as_str(),
                error = %e,
                "could not audit an action of the daemon"
            );
        }
    }
}
