//! What one request did, as the door's audit event and metrics need it: the authorization
//! decisions with their deciding statements, the key and the key version used.
//!
//! The door opens a scope per request ([`scope`]); the engine records into it as it goes, so
//! no operation signature has to carry audit plumbing. Outside a scope, recording is a no-op.
//!
//! # The pre-commit barrier
//!
//! No stored change may exist without a durable audit record. The gate writes a request's
//! event after the engine call returns, which is too late for a change: if that write fails,
//! the change is stored and unaudited. So a scope may carry a [`CommitBarrier`]
//! ([`scope_with_barrier`]), and every engine operation that changes the store (or creates or
//! destroys key material on the device) calls [`before_change`] after it has authorized the
//! request and just before its first change. The first call of a request runs the barrier
//! (the gate appends an *intent* record and waits until it is durable); later calls of the same
//! request pass at once. If the barrier fails, `before_change` returns its error and the
//! operation returns it without changing anything: the request fails closed. Operations that
//! change nothing (the cryptographic ones, reads) never call it, so they pay nothing. Outside
//! a scope, or in a scope without a barrier (sweeps, unit tests), it is a no-op.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::KmsError;
use crate::policy::{Decision, DecisionReason, Effect};

/// What must happen before a request's first change is stored (the gate: a durable intent
/// record). See the module docs.
#[async_trait::async_trait]
pub trait CommitBarrier: Send + Sync {
    /// Makes a record of the change about to be stored durable; `so_far` is what the
    /// request has recorded (its decisions and key). An error refuses the change.
    async fn before_change(&self, so_far: &RequestRecord) -> Result<(), KmsError>;
}

/// One authorization decision taken while serving a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The IAM action (`kms:Decrypt`).
    pub action: String,
    /// The resource ARN.
    pub resource: String,
    /// `Allow` or `Deny`.
    pub effect: &'static str,
    /// `Allowed`, `ExplicitDeny` or `ImplicitDeny`.
    pub reason: &'static str,
    /// Why, in AWS's words, without policy text.
    pub summary: String,
    /// (policy type, policy name, Sid / Statement[i] / grant id).
    pub deciding: Vec<(String, String, String)>,
}

/// Everything the engine recorded about one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRecord {
    /// Decisions in the order they were taken.
    pub decisions: Vec<DecisionRecord>,
    /// The key the request acted on (ARN), when there was one.
    pub key_arn: Option<String>,
    /// The key's account.
    pub key_account: Option<String>,
    /// The backing-key version used by a cryptographic operation.
    pub key_version: Option<u32>,
    /// AWS managed keys this request created on first use (each gets its own audit event).
    pub managed_keys_created: Vec<ManagedKeyCreated>,
    /// The class of an external key store proxy's last answer (`ok`, `timeout`, an error
    /// name...), never data.
    pub xks_proxy_answer: Option<&'static str>,
}

/// An AWS managed key created on first use while serving a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedKeyCreated {
    /// The key ARN.
    pub key_arn: String,
    /// The key's account.
    pub account: String,
    /// Its predefined alias (`alias/aws/s3`).
    pub alias_name: String,
}

impl RequestRecord {
    /// The keys (ARNs, each once) that the request used cryptographically, if it succeeded:
    /// every key an allow decision let it encrypt, decrypt, sign, ... with (ReEncrypt: both).
    pub fn keys_used(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for d in &self.decisions {
            if d.effect == "Allow"
                && super::usage::is_use_action(&d.action)
                && !keys.contains(&d.resource)
            {
                keys.push(d.resource.clone());
            }
        }
        keys
    }
}

/// One request's scope: its record and, for requests that may change something, the
/// barrier to pass before the first change.
struct Scope {
    record: Mutex<RequestRecord>,
    barrier: Option<Arc<dyn CommitBarrier>>,
    /// Whether the barrier has been passed (once per request).
    passed: AtomicBool,
}

tokio::task_local! {
    static CURRENT: Arc<Scope>;
}

/// Runs `fut` with a fresh record and returns its output with what was recorded.
pub async fn scope<F: Future>(fut: F) -> (F::Output, RequestRecord) {
    scope_with_barrier(None, fut).await
}

/// Like [`scope`], with `barrier` to pass before the request's first change.
pub async fn scope_with_barrier<F: Future>(
    barrier: Option<Arc<dyn CommitBarrier>>,
    fut: F,
) -> (F::Output, RequestRecord) {
    let cell = Arc::new(Scope {
        record: Mutex::new(RequestRecord::default()),
        barrier,
        passed: AtomicBool::new(false),
    });
    let out = CURRENT.scope(cell.clone(), fut).await;
    let record = cell
        .record
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    (out, record)
}

/// Called by engine operations after authorization, right before their first change (store
/// write, key material created or destroyed): passes the scope's barrier once per request.
/// An error means nothing may be changed; return it.
pub(crate) async fn before_change() -> Result<(), KmsError> {
    let pending = CURRENT
        .try_with(|s| {
            if s.passed.load(Ordering::SeqCst) {
                return None;
            }
            let barrier = s.barrier.clone()?;
            let so_far = s.record.lock().map(|r| r.clone()).unwrap_or_default();
            Some((s.clone(), barrier, so_far))
        })
        .ok()
        .flatten();
    if let Some((scope, barrier, so_far)) = pending {
        barrier.before_change(&so_far).await?;
        scope.passed.store(true, Ordering::SeqCst);
    }
    Ok(())
}

fn with(f: impl FnOnce(&mut RequestRecord)) {
    let _ = CURRENT.try_with(|cell| {
        if let Ok(mut r) = cell.record.lock() {
            f(&mut r);
        }
    });
}

/// Records a decision.
pub(crate) fn decision(d: &Decision, resource: &str) {
    with(|r| {
        r.decisions.push(DecisionRecord {
            action: d.action.clone(),
            resource: resource.to_string(),
            effect: if d.effect == Effect::Allow {
                "Allow"
            } else {
                "Deny"
            },
            reason: match d.reason {
                DecisionReason::Allowed => "Allowed",
                DecisionReason::ExplicitDeny => "ExplicitDeny",
                DecisionReason::ImplicitDeny => "ImplicitDeny",
            },
            summary: d.summary(),
            deciding: d
                .deciding
                .iter()
                .map(|s| {
                    (
                        format!("{:?}", s.policy_type),
                        s.policy_name.clone(),
                        s.statement.clone(),
                    )
                })
                .collect(),
        })
    });
}

/// How many decisions the request has recorded so far (a mark for
/// [`forget_decisions_after`]); 0 outside a scope.
pub(crate) fn decision_count() -> usize {
    CURRENT
        .try_with(|cell| cell.record.lock().map(|r| r.decisions.len()).unwrap_or(0))
        .unwrap_or(0)
}

/// Drops the decisions recorded after `mark`: a change retried on fresh state is authorized
/// again, and its record keeps only the decisions of the attempt that answered.
pub(crate) fn forget_decisions_after(mark: usize) {
    with(|r| r.decisions.truncate(mark));
}

/// Records the key a request acts on (the first one recorded wins: ReEncrypt's source).
pub(crate) fn key(arn: &str, account: &str) {
    with(|r| {
        if r.key_arn.is_none() {
            r.key_arn = Some(arn.to_string());
            r.key_account = Some(account.to_string());
        }
    });
}

/// Records the creation of an AWS managed key on first use.
pub(crate) fn managed_key_created(arn: &str, account: &str, alias_name: &str) {
    with(|r| {
        r.managed_keys_created.push(ManagedKeyCreated {
            key_arn: arn.to_string(),
            account: account.to_string(),
            alias_name: alias_name.to_string(),
        })
    });
}

/// Records the class of an external key store proxy's answer (the last one wins).
pub(crate) fn xks_proxy_answer(class: &'static str) {
    with(|r| r.xks_proxy_answer = Some(class));
}

/// Records the backing-key version a cryptographic operation used.
pub(crate) fn key_version(v: u32) {
    with(|r| r.key_version = Some(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_inside_a_scope_only() {
        key("arn:k", "111122223333");
        let ((), rec) = scope(async {
            key("arn:a", "111122223333");
            key("arn:b", "111122223333");
            key_version(3);
        })
        .await;
        assert_eq!(rec.key_arn.as_deref(), Some("arn:a"));
        assert_eq!(rec.key_version, Some(3));
        let ((), empty) = scope(async {}).await;
        assert_eq!(empty, RequestRecord::default());
    }

    #[test]
    fn keys_used_are_the_allowed_cryptographic_uses() {
        let d = |action: &str, resource: &str, effect| DecisionRecord {
            action: action.into(),
            resource: resource.into(),
            effect,
            reason: "Allowed",
            summary: String::new(),
            deciding: Vec::new(),
        };
        let rec = RequestRecord {
            decisions: vec![
                d("kms:ReEncryptFrom", "arn:src", "Allow"),
                d("kms:ReEncryptTo", "arn:dst", "Allow"),
                d("kms:ReEncryptTo", "arn:src", "Allow"),
                d("kms:DescribeKey", "arn:other", "Allow"),
                d("kms:Decrypt", "arn:denied", "Deny"),
            ],
            ..Default::default()
        };
        assert_eq!(rec.keys_used(), vec!["arn:src", "arn:dst"]);
    }

    struct Counting {
        calls: std::sync::atomic::AtomicUsize,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl CommitBarrier for Counting {
        async fn before_change(&self, so_far: &RequestRecord) -> Result<(), KmsError> {
            assert_eq!(so_far.key_arn.as_deref(), Some("arn:a"));
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                Err(KmsError::DependencyTimeout("trail down".into()))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn the_barrier_runs_once_per_request_and_its_error_refuses_the_change() {
        // Outside a scope, and in a scope without a barrier: nothing to pass.
        before_change().await.unwrap();
        let (r, _) = scope(before_change()).await;
        r.unwrap();
        for fail in [false, true] {
            let b = Arc::new(Counting {
                calls: Default::default(),
                fail,
            });
            let (r, _) = scope_with_barrier(Some(b.clone()), async {
                key("arn:a", "111122223333");
                before_change().await?;
                before_change().await
            })
            .await;
            assert_eq!(r.is_err(), fail);
            assert_eq!(b.calls.load(Ordering::SeqCst), 1);
        }
    }
}
