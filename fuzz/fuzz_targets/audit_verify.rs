//! Fuzz target `audit_verify`: see `fuzz/harness.rs`. The loader reads files: each input is
//! written to a scratch directory of this process under `$TMPDIR` (`scripts/fuzz.sh` points
//! it at a RAM-backed directory it removes afterwards).
#![no_main]

#[path = "../harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("p11kms-fuzz-audit_verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::audit_verify(data, scratch());
});
