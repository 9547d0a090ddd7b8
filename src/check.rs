//! `p11kms check`: proves a configuration end to end without serving. It validates the
//! config, opens the token by label and logs in, reports the mechanisms the daemon needs, and
//! reconciles the store with the token; each `[[hsm.cluster]]` is probed (module loads, token
//! found) without logging in. Drift is reported, never repaired here: a key left in
//! `Creating` past `[kms] creating_grace_secs` is reported with what the daemon's own
//! reconciliation will do to it, and one within the grace period does not fail the check.
//! In wrapped residency (or with wrapped versions in the store) it reports the master keys
//! and verifies blobs on the device ([`crate::core::blob_check`]): a sample, or all.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{ClusterSection, Config};
use crate::core::blob_check::{BlobScope, WrappedReport};
use crate::core::reconcile::{DriftReport, InterruptedCreate};
use crate::core::residency::Residency;
use crate::core::SystemClock;
use crate::hsm::{probe_token, MechanismReport, TokenProbe};
use crate::server::{close_hsm, open_engine, ServerError};
use crate::store::{KeyStoreRecord, OrphanRecord, StoreInfo};

/// Everything `check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// The token label that was opened.
    pub token: String,
    /// Mechanism availability.
    pub mechanisms: Vec<MechanismReport>,
    /// The metadata store: backend, server version, migration state.
    pub store: StoreInfo,
    /// Store/token drift.
    pub drift: DriftReport,
    /// Each `[[hsm.cluster]]`, probed without logging in.
    pub clusters: Vec<ClusterReport>,
    /// The custom key stores made on the clusters.
    pub key_stores: Vec<KeyStoreRecord>,
    /// Key objects the deletion sweeper left on a custom key store's device (the store was
    /// not connected): reported for the operator, as AWS leaves them; they do not fail the
    /// check.
    pub orphans: Vec<OrphanRecord>,
    /// Wrapped residency: masters and blobs (`None` in token residency with no blob).
    pub wrapped: Option<WrappedReport>,
}

/// What `check` found of one `[[hsm.cluster]]`.
#[derive(Debug)]
pub struct ClusterReport {
    /// The cluster id.
    pub id: String,
    /// The token label looked for.
    pub token: String,
    /// The token found, or why not (the module did not load, no such token, ...).
    pub probe: Result<TokenProbe, String>,
}

impl CheckReport {
    /// True when nothing needs an operator's attention.
    pub fn is_ok(&self) -> bool {
        self.drift.is_clean()
            && self.store.latest_applied() == self.store.latest_known
            && self.mechanisms.iter().all(|m| m.present || !m.required)
            && self.clusters.iter().all(|c| c.probe.is_ok())
            && self.wrapped.as_ref().is_none_or(WrappedReport::is_ok)
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "token '{}': opened and logged in", self.token);
        for m in &self.mechanisms {
            let status = match (m.present, m.required) {
                (true, _) => "ok",
                (false, true) => "MISSING (required)",
                (false, false) => "missing (optional)",
            };
            let _ = writeln!(out, "mechanism {:<28} {status}", m.name);
        }
        for c in &self.clusters {
            let _ = match &c.probe {
                Ok(t) => writeln!(
                    out,
                    "cluster {}: token '{}' found ({} {}, serial {}); not logged in",
                    c.id, c.token, t.manufacturer, t.model, t.serial_number
                ),
                Err(e) => writeln!(out, "cluster {}: token '{}' FAILED: {e}", c.id, c.token),
            };
        }
        render_store(&mut out, &self.store);
        self.render_key_stores(&mut out);
        let d = &self.drift;
        let _ = writeln!(
            out,
            "store: {} keys; token: {} objects",
            d.keys_checked, d.objects_on_token
        );
        for i in &d.interrupted {
            render_interrupted(&mut out, i);
        }
        for (k, v, present) in &d.interrupted_rotations {
            let _ = writeln!(
                out,
                "DRIFT interrupted rotation: key {k} version {v} is not current yet; HSM object {} (the key's next rotation completes it)",
                if *present { "present" } else { "absent" }
            );
        }
        for (k, v) in &d.missing_objects {
            let _ = writeln!(out, "DRIFT missing HSM object: key {k} version {v}");
        }
        for o in &d.orphan_objects {
            let _ = writeln!(
                out,
                "DRIFT orphan token object: label '{}' class {} (no stored key version)",
                o.label, o.class
            );
        }
        if let Some(w) = &self.wrapped {
            render_wrapped(&mut out, w);
        }
        let _ = writeln!(
            out,
            "{}",
            if self.is_ok() {
                "check passed"
            } else {
                "check FAILED (nothing was changed or deleted)"
            }
        );
        out
    }
}

impl CheckReport {
    /// The custom key stores and the objects left on their devices.
    fn render_key_stores(&self, out: &mut String) {
        for k in &self.key_stores {
            let place = match &k.xks {
                Some(x) => format!("external, proxy {}{}", x.endpoint, x.uri_path),
                None => format!("on cluster {}", k.cluster_id),
            };
            let _ = writeln!(
                out,
                "custom key store {} ('{}') {}: {}",
                k.store_id,
                k.name,
                place,
                if k.connect {
                    "connected by the key administrators (the daemon reconnects it)"
                } else {
                    "disconnected"
                }
            );
        }
        for o in &self.orphans {
            let _ = writeln!(
                out,
                "orphaned key object on custom key store {}: key {} version {} (deleted while the store was not connected; its object stays on the device for the operator to destroy)",
                o.store_id, o.key_id, o.version
            );
        }
    }
}

/// The store line: backend, version, and the schema against what this binary knows.
fn render_store(out: &mut String, s: &StoreInfo) {
    let (applied, known) = (s.latest_applied(), s.latest_known);
    let state = match applied.cmp(&known) {
        std::cmp::Ordering::Equal => "up to date".to_string(),
        std::cmp::Ordering::Less => format!("BEHIND this binary (knows {known})"),
        std::cmp::Ordering::Greater => {
            format!("AHEAD of this binary (knows {known}): written by a newer p11kms")
        }
    };
    let _ = writeln!(
        out,
        "store backend {} (server {}): schema at migration {applied}, {state}",
        s.backend.as_str(),
        s.server_version
    );
}

/// One key in `Creating`: past the grace period, what the daemon's reconciliation will do
/// (check itself changes nothing); within it, a note (it may be a creation in flight).
fn render_interrupted(out: &mut String, i: &InterruptedCreate) {
    let age = i.age_ms / 1000;
    let _ = match (i.overdue, i.hsm_object_present) {
        (true, true) => writeln!(
            out,
            "DRIFT interrupted creation: key {} is still Creating ({age} s old); HSM object present: the daemon's reconciliation will finish it (Enabled, audited as CompleteCreateKey)",
            i.key_id
        ),
        (true, false) => writeln!(
            out,
            "DRIFT interrupted creation: key {} is still Creating ({age} s old); HSM object absent: the daemon's reconciliation will remove it (audited as DeleteIncompleteKey)",
            i.key_id
        ),
        (false, present) => writeln!(
            out,
            "creating: key {} is Creating ({age} s old, within [kms] creating_grace_secs); HSM object {}; left alone for now",
            i.key_id,
            if present { "present" } else { "absent" }
        ),
    };
}

/// The wrapped-residency lines: residency, masters, versions, and each refused blob.
fn render_wrapped(out: &mut String, w: &WrappedReport) {
    let residency = match w.residency {
        Residency::Token => "token",
        Residency::Wrapped => "wrapped",
    };
    let _ = writeln!(out, "residency: {residency}");
    for m in &w.masters {
        let state = match (m.trusted, m.retired) {
            (_, true) => "trusted, retired (wraps no blob; the operator may destroy it)",
            (true, false) => "trusted",
            (false, false) => "NOT trusted (run `p11kms hsm trust-master`)",
        };
        let _ = writeln!(
            out,
            "master key {}: {state}; {} wrapped versions",
            m.version, m.blobs
        );
    }
    let _ = writeln!(
        out,
        "wrapped versions: {}; {} verified on the device",
        w.versions, w.checked
    );
    for (k, v, reason) in &w.rejected {
        let _ = writeln!(
            out,
            "DRIFT wrapped blob rejected: key {k} version {v} ({reason})"
        );
    }
}

/// Runs every check for a loaded config, verifying `blobs` of wrapped residency.
pub async fn run(config: &Config, blobs: BlobScope) -> Result<CheckReport, ServerError> {
    let kms = open_engine(config, Arc::new(SystemClock)).await?;
    // C_GetMechanismList is a blocking PKCS#11 call: off the async threads.
    let hsm = kms.hsm().clone();
    let mechanisms = tokio::task::spawn_blocking(move || hsm.mechanisms())
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))??;
    let store = kms.store().describe().await?;
    let drift = kms.reconcile().await?;
    let wrapped = kms.check_wrapped(blobs).await?;
    let wrapped =
        (wrapped.residency == Residency::Wrapped || wrapped.versions > 0).then_some(wrapped);
    let mut clusters = Vec::new();
    for c in &config.hsm.cluster {
        clusters.push(probe_cluster(c).await);
    }
    let report = CheckReport {
        token: kms.hsm().token_label().to_string(),
        mechanisms,
        store,
        drift,
        clusters,
        key_stores: kms.store().list_key_stores().await?,
        orphans: kms.store().list_orphans().await?,
        wrapped,
    };
    close_hsm(kms.hsm()).await;
    Ok(report)
}

/// Probes one cluster's module and token (blocking PKCS#11 calls: off the async threads).
async fn probe_cluster(c: &ClusterSection) -> ClusterReport {
    let (module, label) = (c.module.clone(), c.token_label.clone());
    let probe = tokio::task::spawn_blocking(move || probe_token(&module, &label))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    ClusterReport {
        id: c.id.clone(),
        token: c.token_label.clone(),
        probe,
    }
}

/// The node line of `p11kms check`: which node of a cluster this config makes (`[node] id`,
/// the id in its audit trail, health answers and metrics), or that it names none.
pub fn render_node(config: &Config) -> String {
    match &config.node.id {
        Some(id) => format!("node: {id}"),
        None => "node: none ([node] id not set: a single node)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Backend;

    fn line(applied: Vec<i64>, known: i64) -> String {
        let mut out = String::new();
        render_store(
            &mut out,
            &StoreInfo {
                backend: Backend::Postgres,
                server_version: "15.4".into(),
                applied_migrations: applied,
                latest_known: known,
            },
        );
        out
    }

    #[test]
    fn store_line_tells_behind_from_ahead() {
        let ok = line(vec![1, 2, 3], 3);
        assert!(ok.contains("store backend postgres (server 15.4)"), "{ok}");
        assert!(ok.contains("schema at migration 3, up to date"), "{ok}");
        assert!(line(vec![1, 2], 3).contains("BEHIND this binary (knows 3)"));
        assert!(line(vec![1, 2, 3, 4], 3).contains("AHEAD of this binary"));
        assert!(line(vec![], 3).contains("schema at migration 0, BEHIND"));
    }
}
