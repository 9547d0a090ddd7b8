//! [`ServiceAuditSink`]: the audit trail as the engine's [`ServiceEventSink`], so that what
//! the daemon does by itself (key destruction by the deletion sweeper, automatic rotation,
//! expiry of imported key material) is in the trail as CloudTrail logs such actions: an
//! `AwsServiceEvent` whose `userIdentity` is the service (`type` `AWSService`, `invokedBy`
//! `p11kms`), with the key in `resources` and, on failure, `errorCode`/`errorMessage`.

use std::sync::Arc;

use super::{AuditEvent, AuditLog, UserIdentity};
use crate::core::service::{ServiceAction, ServiceEventSink};

/// `eventType` of an action the daemon took by itself.
pub const SERVICE_EVENT_TYPE: &str = "AwsServiceEvent";

/// Writes one audit event per [`ServiceAction`].
pub struct ServiceAuditSink {
    log: Arc<AuditLog>,
    region: String,
}

impl ServiceAuditSink {
    /// A sink writing to `log`; events name `region` as `awsRegion`.
    pub fn new(log: Arc<AuditLog>, region: impl Into<String>) -> ServiceAuditSink {
        ServiceAuditSink {
            log,
            region: region.into(),
        }
    }
}

/// The audit event of a service action (its own request id: nobody asked for it).
pub fn service_event(action: &ServiceAction, region: &str) -> AuditEvent {
    let id = super::ids::uuid_v4().hyphenated().to_string();
    let mut ev = AuditEvent::new(action.event_name.as_str(), id, action.at_ms);
    ev.user_identity = UserIdentity::service(action.account.clone());
    ev.event_type = std::borrow::Cow::Borrowed(SERVICE_EVENT_TYPE);
    ev.read_only = false;
    ev.door = std::borrow::Cow::Borrowed("internal");
    ev.aws_region = region.to_string();
    if let Some(store) = &action.key_store {
        ev.recipient_account_id = Some(action.account.clone());
        ev.set_request_parameter("customKeyStoreId", store.store_id.clone());
        ev.set_request_parameter("connectionState", store.state);
        if let Some(code) = store.error_code {
            ev.set_request_parameter("connectionErrorCode", code);
        }
        if let Some(object) = &store.orphaned_object {
            ev.set_request_parameter("orphanedKeyObject", object.clone());
        }
    }
    if !action.key_arn.is_empty() {
        ev.add_key_resource(action.key_arn.clone(), action.account.clone());
        ev.set_request_parameter("keyId", action.key_id.clone());
    }
    ev.key_version = action.key_version;
    if let Some((code, message)) = &action.error {
        ev.set_error(*code, message.clone());
    }
    ev
}

#[async_trait::async_trait]
impl ServiceEventSink for ServiceAuditSink {
    fn ready(&self) -> bool {
        self.log.healthy()
    }

    async fn intent(&self, action: &ServiceAction) -> Result<(), String> {
        let mut ev = service_event(action, &self.region);
        ev.phase = Some(std::borrow::Cow::Borrowed(super::event::PHASE_INTENT));
        self.log
            .append(ev)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn record(&self, action: &ServiceAction) -> Result<(), String> {
        self.log
            .append(service_event(action, &self.region))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::service::ServiceEventName;

    fn action(error: Option<(&'static str, String)>) -> ServiceAction {
        ServiceAction {
            event_name: ServiceEventName::DeleteKey,
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            key_arn:
                "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                    .into(),
            account: "111122223333".into(),
            key_version: None,
            key_store: None,
            error,
            at_ms: 1_763_894_297_042,
        }
    }

    #[test]
    fn a_service_event_names_the_service_the_key_and_the_outcome() {
        let ok = serde_json::to_value(service_event(&action(None), "eu-central-1")).unwrap();
        assert_eq!(ok["eventName"], "DeleteKey");
        assert_eq!(ok["eventType"], "AwsServiceEvent");
        assert_eq!(ok["userIdentity"]["type"], "AWSService");
        assert_eq!(ok["userIdentity"]["invokedBy"], "p11kms");
        assert_eq!(ok["userIdentity"]["accountId"], "111122223333");
        assert_eq!(
            ok["resources"][0]["ARN"],
            "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        assert_eq!(ok["eventTime"], "2025-11-23T10:38:17.042Z");
        assert_eq!(ok["readOnly"], false);
        assert!(ok.get("errorCode").is_none());
        let failed = action(Some(("KMSInternalException", "the HSM failed".into())));
        let failed = serde_json::to_value(service_event(&failed, "eu-central-1")).unwrap();
        assert_eq!(failed["errorCode"], "KMSInternalException");
        assert_eq!(failed["errorMessage"], "the HSM failed");
    }
}
