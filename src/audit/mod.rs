//! The tamper-evident audit trail: one [`AuditEvent`] per request, written as hash-chained
//! JSON lines, periodically sealed by checkpoints signed with an HSM-resident ECDSA P-256 key,
//! and verifiable offline (`p11kms audit verify`). `docs/audit.md` is the operator's page.
//!
//! # Shape
//!
//! - [`event`]: the record schema ([`AuditEvent`], [`Checkpoint`], [`SegmentStart`]) and the
//!   hash framing of a record line.
//! - [`writer`]: [`AuditLog`], the single writer thread. Segment files `audit-NNNNNN.jsonl`
//!   (`audit-<node>-NNNNNN.jsonl` on a node of a cluster: each node keeps its own chain, and
//!   every record names its node) in one directory, rotated by size and age; group commit (default: `append` returns
//!   after the record is fsynced, concurrent appends share one fsync) or relaxed
//!   (acknowledged after the write, fsynced on an interval). Fails closed: while the trail
//!   cannot be written, `append` answers [`AuditError::Unavailable`] and
//!   [`AuditLog::healthy`] is false; the writer retries with a bounded backoff.
//! - [`checkpoint`]: the [`CheckpointSigner`] seam and [`HsmCheckpointSigner`].
//! - [`verify`]: the offline verifier ([`verify_files`], [`run_verify_cli`]).
//!
//! # Wiring (daemon)
//!
//! At start: `HsmCheckpointSigner::new(hsm, AUDIT_KEY_LABEL)`, then
//! [`export_public_key`]`(data_dir, signer.public_key_spki_der())`, then
//! [`AuditLog::open`]`(config, Some(Arc::new(signer)))`. A changing request first appends an
//! intent record (`phase: intent`, see `api::gate`) before its change is stored. Per request: build an
//! [`AuditEvent`] and `append(event).await` before the response is released; an error fails
//! the request. Health: [`AuditLog::healthy`]. Metrics: [`AuditLog::stats`].

pub mod checkpoint;
pub mod event;
pub mod ids;
pub mod refusals;
pub mod service;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

pub use checkpoint::{
    export_public_key, parse_public_key, verify_signature, CheckpointSigner, HsmCheckpointSigner,
    PUBLIC_KEY_FILE,
};
pub use event::{
    scrub_secrets, AuditDecidingStatement, AuditDecision, AuditEvent, Checkpoint, Resource,
    SegmentStart, SessionAttributes, SessionContext, SessionIssuer, UserIdentity,
};
pub use refusals::{RefusalAuditor, RefusalConfig, RefusalStats, SpaceState};
pub use service::{ServiceAuditSink, SERVICE_EVENT_TYPE};
pub use verify::{
    run_verify_cli, verify_files, verify_trails, NodeReport, Problem, ProblemKind, VerifyReport,
};
pub use writer::{
    AppendReceipt, AuditConfig, AuditLog, AuditStats, Durability, FSYNC_BUCKETS_SECONDS,
};

pub use crate::hsm::signing::AUDIT_KEY_LABEL;
/// The audit trail's time format (re-exported for the doors' audit events).
pub use crate::time::iso8601_ms;

/// What a node id may be: what [`valid_node_id`] accepts, as a sentence for errors.
pub const NODE_ID_RULE: &str =
    "a node id is 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit";

/// Whether `id` can name a node: it appears unescaped in audit records and segment names,
/// so it is kept to `[a-z0-9][a-z0-9-]{0,31}`.
pub fn valid_node_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=32).contains(&b.len())
        && b[0] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Why the audit trail refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The trail cannot be written (I/O error, directory gone, writer stopped). Requests must
    /// fail closed; the writer keeps retrying and [`AuditLog::healthy`] says when it works
    /// again.
    #[error("the audit trail cannot be written: {0}")]
    Unavailable(String),
    /// The writer's queue is full; nothing was written. Retry later.
    #[error("the audit trail queue is full")]
    Busy,
    /// Bad configuration or an unusable existing trail at open.
    #[error("audit configuration: {0}")]
    Config(String),
    /// An I/O error outside the write path (opening, exporting the key).
    #[error("audit I/O: {0}")]
    Io(String),
    /// The checkpoint signer failed.
    #[error("audit checkpoint signing failed: {0}")]
    Signer(String),
    /// Invalid input (a key file, an event that cannot be serialized).
    #[error("{0}")]
    Invalid(String),
}
