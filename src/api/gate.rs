//! The gate every request passes through, whatever the door: it runs the engine call in a
//! record scope, then records metrics and the audit event. Doors authenticate and translate;
//! the gate is the one place that accounts for a request. For a request that may change
//! something, the scope carries a pre-commit barrier (`IntentBarrier`): the engine's first
//! change waits until an intent record is durable, so no change is stored without a record
//! (`docs/audit.md`, "No change without a record").

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::event::{is_read_only, PHASE_INTENT};
use crate::audit::{
    AuditDecidingStatement, AuditDecision, AuditEvent, AuditLog, RefusalAuditor, UserIdentity,
};
use crate::core::record::{self, CommitBarrier, RequestRecord};
use crate::core::{Kms, KmsError};
use crate::identity::Caller;
use crate::metrics::Metrics;

/// How far a refused request got, which decides its audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedAt {
    /// Before or at authentication: audited by aggregation, so that strangers cannot fill the
    /// trail (the first of its source address, operation and error in full, the rest
    /// counted; nothing below the free-space floor).
    Authentication,
    /// Its signature was verified but its input was refused before the engine ran: an
    /// authenticated request, so it keeps a record of its own.
    Input,
}

/// What a door knows about a request before the engine runs it.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// `grpc`, `aws-json`.
    pub door: &'static str,
    /// The operation (`Encrypt`, `AssumeRole`, ...).
    pub operation: &'static str,
    /// A fresh request id (UUID), returned to the caller and written in the audit event.
    pub request_id: String,
    /// The peer address.
    pub source_ip: Option<IpAddr>,
    /// The client's User-Agent, if it sent one.
    pub user_agent: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// The request parameters as CloudTrail logs them (AWS member names; never plaintext,
    /// data keys, secrets or tokens).
    pub params: serde_json::Value,
}

impl RequestInfo {
    /// A request that has just arrived.
    pub fn new(door: &'static str, operation: &'static str) -> RequestInfo {
        RequestInfo::with_request_id(door, operation, crate::audit::ids::uuid_v4().to_string())
    }

    /// A request that has just arrived, under the id its listener gave it
    /// ([`crate::api::http::RequestCtx`]).
    pub fn with_request_id(
        door: &'static str,
        operation: &'static str,
        request_id: String,
    ) -> RequestInfo {
        RequestInfo {
            door,
            operation,
            request_id,
            source_ip: None,
            user_agent: None,
            started: Instant::now(),
            params: serde_json::Value::Null,
        }
    }
}

/// Whether the request parameters name an `alias/aws/...` key (by name or alias ARN), whose
/// AWS managed key the engine creates on first use.
fn names_predefined_alias(params: &serde_json::Value) -> bool {
    ["keyId", "destinationKeyId"].iter().any(|m| {
        params
            .get(m)
            .and_then(|v| v.as_str())
            .is_some_and(|k| k.contains("alias/aws/"))
    })
}

/// The accounting shared by the doors.
#[derive(Clone)]
pub struct Gate {
    kms: Arc<Kms>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    refusals: Arc<RefusalAuditor>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// The refusal when the audit trail cannot be written: the daemon fails closed.
fn audit_unavailable() -> KmsError {
    KmsError::DependencyTimeout(
        "The audit trail cannot be written, so the request was refused. Retry later.".into(),
    )
}

/// The decision that explains a request: the first denial, else the last allow (moved out
/// of the record, not copied).
fn deciding(rec: &mut RequestRecord) -> Option<AuditDecision> {
    let i = rec
        .decisions
        .iter()
        .position(|d| d.effect == "Deny")
        .or_else(|| rec.decisions.len().checked_sub(1))?;
    let d = rec.decisions.swap_remove(i);
    Some(AuditDecision {
        effect: d.effect.to_string(),
        reason: format!("{} ({}: {})", d.reason, d.action, d.summary),
        deciding_statements: d
            .deciding
            .into_iter()
            .map(|(t, n, s)| AuditDecidingStatement {
                policy_type: t,
                policy_name: n,
                statement: s,
            })
            .collect(),
    })
}

/// The pre-commit barrier of a changing request: before its first change is stored, append
/// an intent record (the request's event so far: caller, parameters, decision, key, with
/// `phase: intent`) and wait until it is durable. If that fails the change is refused: the
/// trail is what says a change was made, so nothing is changed that it could not say.
struct IntentBarrier {
    audit: Arc<AuditLog>,
    kms: Arc<Kms>,
    /// The request's event, filled but for the outcome; taken by the first (only) call.
    template: std::sync::Mutex<Option<AuditEvent>>,
    started: Instant,
}

#[async_trait::async_trait]
impl CommitBarrier for IntentBarrier {
    async fn before_change(&self, so_far: &RequestRecord) -> Result<(), KmsError> {
        let Some(mut ev) = self
            .template
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let mut so_far = so_far.clone();
        ev.event_time = crate::audit::iso8601_ms(self.kms.now_ms());
        ev.decision = deciding(&mut so_far);
        if let (Some(arn), Some(account)) = (so_far.key_arn, so_far.key_account) {
            ev.add_key_resource(arn, account);
        }
        ev.phase = Some(std::borrow::Cow::Borrowed(PHASE_INTENT));
        ev.latency_micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match self.audit.append(ev).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "intent record not written; the change is refused");
                Err(audit_unavailable())
            }
        }
    }
}

impl Gate {
    /// A gate over the engine, the metrics and the audit trail; refused requests are
    /// audited through `refusals` (aggregated, see [`RefusalAuditor`]).
    pub fn new(
        kms: Arc<Kms>,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        refusals: Arc<RefusalAuditor>,
    ) -> Gate {
        Gate {
            kms,
            metrics,
            audit,
            refusals,
        }
    }

    /// The metrics the gate records into (a door adds its own series there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The event for a request; `params` are its request parameters (moved, not copied).
    fn event(&self, info: &RequestInfo, params: serde_json::Value) -> AuditEvent {
        let mut ev = AuditEvent::new(info.operation, info.request_id.clone(), self.kms.now_ms());
        ev.door = std::borrow::Cow::Borrowed(info.door);
        ev.aws_region = self.kms.settings().region.clone();
        ev.source_ip_address = info.source_ip.map(|ip| ip.to_string());
        ev.user_agent = info.user_agent.clone();
        if !params.is_null() {
            ev.request_parameters = Some(params);
        }
        ev.latency_micros = u64::try_from(info.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        ev
    }

    /// The pre-commit barrier for a request that may change something; none for the
    /// read-only operations (reads and cryptographic operations pay nothing).
    fn intent_barrier(
        &self,
        info: &RequestInfo,
        caller: &Caller,
    ) -> Option<Arc<dyn CommitBarrier>> {
        // CloudTrail calls GetParametersForImport read-only, but it stores an import token;
        // a read-only operation that names a predefined alias may create its AWS managed key.
        if is_read_only(info.operation)
            && info.operation != "GetParametersForImport"
            && !names_predefined_alias(&info.params)
        {
            return None;
        }
        let template = self.event(info, info.params.clone()).with_caller(caller);
        Some(Arc::new(IntentBarrier {
            audit: self.audit.clone(),
            kms: self.kms.clone(),
            template: std::sync::Mutex::new(Some(template)),
            started: info.started,
        }))
    }

    /// The engine.
    pub fn kms(&self) -> &Arc<Kms> {
        &self.kms
    }

    /// Accounts for a request refused before the engine ran (`error_name` is the AWS name),
    /// audited as `at` says. The caller's answer is the error whether or not anything was
    /// written.
    pub async fn refused(
        &self,
        info: &RequestInfo,
        at: RefusedAt,
        error_name: &str,
        message: &str,
        access_key_id: Option<String>,
    ) {
        let ev = self.refusal_event(info, error_name, message, access_key_id);
        match at {
            RefusedAt::Authentication => {
                let now = self.kms.now_ms();
                self.refusals
                    .refused(info.door, info.operation, ev, now)
                    .await;
            }
            RefusedAt::Input => {
                if let Err(e) = self.audit.append(ev).await {
                    tracing::error!(request_id = %info.request_id, error = %e, "could not audit a refused request");
                }
            }
        }
        self.count_refusal(info, error_name);
    }

    fn refusal_event(
        &self,
        info: &RequestInfo,
        error_name: &str,
        message: &str,
        access_key_id: Option<String>,
    ) -> AuditEvent {
        let mut ev = self.event(info, info.params.clone());
        ev.user_identity = UserIdentity::unknown(access_key_id);
        ev.set_error(error_name, message);
        ev.decision = Some(AuditDecision::deny(format!(
            "authentication failed: {error_name}"
        )));
        ev
    }

    fn count_refusal(&self, info: &RequestInfo, error_name: &str) {
        self.metrics.request(
            info.door,
            info.operation,
            std::borrow::Cow::Owned(error_name.to_owned()),
            info.started.elapsed(),
        );
    }

    /// Whether the audit trail is writable (health).
    pub fn audit_healthy(&self) -> bool {
        self.audit.healthy()
    }

    /// Writes one `CreateKey` event per AWS managed key the request created on first use: by
    /// the caller whose request triggered it, with the request's id, the key ARN and
    /// `keyManager` `AWS`. False if one could not be written.
    async fn audit_managed_keys_created(
        &self,
        info: &RequestInfo,
        caller: &Caller,
        rec: &mut RequestRecord,
    ) -> bool {
        let mut ok = true;
        for m in std::mem::take(&mut rec.managed_keys_created) {
            let params = serde_json::json!({
                "aliasName": m.alias_name,
                "keyManager": "AWS",
                "keySpec": "SYMMETRIC_DEFAULT",
                "keyUsage": "ENCRYPT_DECRYPT",
                "origin": "AWS_KMS",
                "createdOnFirstUseBy": info.operation,
            });
            let mut ev = self.event(info, params).with_caller(caller);
            ev.event_name = "CreateKey".into();
            ev.read_only = false;
            ev.response_elements = Some(serde_json::json!({
                "keyMetadata": {"arn": m.key_arn, "keyManager": "AWS"}
            }));
            ev.add_key_resource(m.key_arn, m.account);
            if let Err(e) = self.audit.append(ev).await {
                tracing::error!(request_id = %info.request_id, error = %e, "could not audit the creation of an AWS managed key");
                ok = false;
            }
        }
        ok
    }

    /// Runs an authenticated request and accounts for it. `response_elements` extracts what
    /// CloudTrail logs of a successful response (never plaintext or keys).
    pub async fn run<R, Fut>(
        &self,
        mut info: RequestInfo,
        caller: Caller,
        fut: Fut,
        response_elements: impl FnOnce(&R) -> serde_json::Value,
    ) -> Result<R, KmsError>
    where
        Fut: Future<Output = Result<R, KmsError>>,
    {
        // Every log line of the request carries the request id of its audit event.
        let span = tracing::info_span!(
            "request",
            request_id = %info.request_id,
            door = info.door,
            op = info.operation,
            principal = %caller.principal_arn
        );
        // Fail closed: nothing runs that could not be recorded.
        let (result, mut rec): (Result<R, KmsError>, RequestRecord) = if self.audit.healthy() {
            let barrier = self.intent_barrier(&info, &caller);
            record::scope_with_barrier(barrier, tracing::Instrument::instrument(fut, span)).await
        } else {
            (Err(audit_unavailable()), RequestRecord::default())
        };
        let created_ok = self
            .audit_managed_keys_created(&info, &caller, &mut rec)
            .await;
        let params = std::mem::take(&mut info.params);
        // GetKeyLastUsage: the keys a successful request used, at the event's time.
        let used = match &result {
            Ok(_) => rec.keys_used(),
            Err(_) => Vec::new(),
        };
        let used_at = self.kms.now_ms();
        let mut ev = self.event(&info, params).with_caller(&caller);
        let event_id = ev.event_id.clone();
        ev.decision = deciding(&mut rec);
        if let (Some(arn), Some(account)) = (rec.key_arn, rec.key_account) {
            ev.add_key_resource(arn, account);
        }
        ev.key_version = rec.key_version;
        if let Some(answer) = rec.xks_proxy_answer {
            ev.additional_event_data = Some(serde_json::json!({ "xksProxyAnswer": answer }));
        }
        match &result {
            Ok(r) => {
                let v = response_elements(r);
                if !v.is_null() {
                    ev.response_elements = Some(v);
                }
            }
            Err(e) => ev.set_error(e.aws_name(), e.message()),
        }
        let result = match self.audit.append(ev).await {
            Ok(_) if !created_ok => Err(audit_unavailable()),
            Ok(_) => result,
            Err(e) => {
                tracing::error!(request_id = %info.request_id, error = %e, "audit trail unavailable; request refused");
                Err(audit_unavailable())
            }
        };
        if result.is_ok() && !used.is_empty() {
            // Memory only; stored in batches (no store write per request).
            self.kms
                .note_key_use(info.operation, &used, &event_id, &info.request_id, used_at);
        }
        let outcome = match &result {
            Ok(_) => "Success",
            Err(e) => e.aws_name(),
        };
        self.metrics.request(
            info.door,
            info.operation,
            std::borrow::Cow::Borrowed(outcome),
            info.started.elapsed(),
        );
        result
    }
}
