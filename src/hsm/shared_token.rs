//! Several processes on one file-backed token (SoftHSM2): a lock file around every job that
//! creates or destroys token objects, and the module's view of the token refreshed first.
//!
//! SoftHSM2's file object store re-reads a token directory only when the token's generation
//! number on disk differs from the one the process remembers. But when a process creates or
//! destroys an object it writes the number on disk plus one and remembers that, taking in
//! silently any change another process made since its last read: the objects that process
//! created stay invisible to this one until some third change. (SoftHSM2 2.6,
//! `Generation::commit`.) So every daemon on such a token takes this file lock around its
//! token-object jobs and searches the token first (`C_FindObjectsInit` re-reads the
//! directory when the generation moved); creations and destructions then never absorb
//! another process's change. Within one process the token-object gate already serialises
//! those jobs. Hardware HSMs keep their objects on the device and need none of this.

use std::fs::{File, OpenOptions};
use std::path::Path;

use cryptoki::object::Attribute;

use super::call::Call;
use super::pool::WorkerCtx;

/// The `CKA_LABEL` searched for to make the module re-read the token: no object has it.
const REFRESH_PROBE_LABEL: &str = "p11kms/refresh-probe";

/// Takes the lock file `path` (blocking; released when the returned file is dropped) and
/// makes the module re-read the token. A lock file that cannot be opened or locked is logged
/// and the job runs without it: a single daemon on the token loses nothing.
pub(crate) fn enter(ctx: &mut WorkerCtx, path: &Path) -> Option<File> {
    let locked = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.lock().map(|()| f));
    let file = match locked {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot take the shared token lock; creating or destroying token objects without it");
            None
        }
    };
    let probe = [Attribute::Label(REFRESH_PROBE_LABEL.as_bytes().to_vec())];
    if let Err(e) = ctx.call(Call::FindObjects, |s| s.find_objects(&probe)) {
        tracing::warn!(error = %e, "could not refresh the token view before a token-object job");
    }
    file
}
