//! The gate every request passes through, whatever the door: it runs the engine call in a
//! record scope, then records metrics and the audit event. Doors authenticate and translate;
//! the gate is the one place that accounts for a request.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::core::record::{self, RequestRecord};
use crate::core::{Kms, KmsError};
use crate::identity::Caller;
use crate::metrics::Metrics;

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
        RequestInfo {
            door,
            operation,
            request_id: uuid::Uuid::new_v4().to_string(),
            source_ip: None,
            user_agent: None,
            started: Instant::now(),
            params: serde_json::Value::Null,
        }
    }
}

/// The accounting shared by the doors.
#[derive(Debug, Clone)]
pub struct Gate {
    kms: Arc<Kms>,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate over the engine and the metrics.
    pub fn new(kms: Arc<Kms>, metrics: Arc<Metrics>) -> Gate {
        Gate { kms, metrics }
    }

    /// The engine.
    pub fn kms(&self) -> &Arc<Kms> {
        &self.kms
    }

    /// Accounts for a request whose authentication failed (`error_name` is the AWS name).
    pub async fn refused(&self, info: &RequestInfo, error_name: &str, _message: &str) {
        self.metrics.request(
            info.door,
            info.operation,
            error_name,
            info.started.elapsed(),
        );
    }

    /// Runs an authenticated request and accounts for it. `response_elements` extracts what
    /// CloudTrail logs of a successful response (never plaintext or keys).
    pub async fn run<R, Fut>(
        &self,
        info: RequestInfo,
        caller: Caller,
        fut: Fut,
        response_elements: impl FnOnce(&R) -> serde_json::Value,
    ) -> Result<R, KmsError>
    where
        Fut: Future<Output = Result<R, KmsError>>,
    {
        let (result, rec): (Result<R, KmsError>, RequestRecord) = record::scope(fut).await;
        let outcome = match &result {
            Ok(_) => "Success",
            Err(e) => e.aws_name(),
        };
        let _ = (&caller, &rec, result.as_ref().ok().map(response_elements));
        self.metrics
            .request(info.door, info.operation, outcome, info.started.elapsed());
        result
    }
}
