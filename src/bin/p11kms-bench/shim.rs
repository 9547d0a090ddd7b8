//! `--hsm-delay-ms`: a network HSM's latency, made with the PKCS#11 fault shim
//! (`tests/fault-shim/shim.c`, as `tests/hsm_faults.rs` builds it). The shim is compiled into
//! the work dir, the own daemon's `hsm.module` points at it, and the daemon's environment
//! names the real module (`P11KMS_SHIM_TARGET`) and a control directory
//! (`P11KMS_SHIM_CONTROL`) holding one `delay_<C_Function>` file per delayed call with the
//! milliseconds to sleep before each call of it.
//!
//! cryptoki 0.12's single-part `encrypt`, `decrypt` and `sign` call the function twice: a
//! length query (NULL output buffer) and then the call that produces the output. The shim
//! delays both unless `delay_skips_length_queries` is in the control directory
//! (`--hsm-delay-skips-length-queries`: a device whose client library answers length queries
//! itself); the shim honours that file for C_Encrypt and C_Decrypt.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shim's source in this checkout.
pub const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fault-shim/shim.c");

/// The built shim and how the daemon reaches the real module through it.
pub struct Shim {
    /// The shim library: the daemon's `hsm.module`.
    pub lib: PathBuf,
    /// The control directory (`P11KMS_SHIM_CONTROL`).
    pub control: PathBuf,
    /// The real module (`P11KMS_SHIM_TARGET`).
    pub target: PathBuf,
}

/// Whether `name` is a PKCS#11 function name (`C_` and letters): the only control file names
/// written.
fn is_function_name(name: &str) -> bool {
    name.len() > 2 && name.starts_with("C_") && name[2..].bytes().all(|b| b.is_ascii_alphabetic())
}

/// The control file that spares length queries of C_Encrypt and C_Decrypt the delay.
pub const SKIP_LENGTH_QUERIES: &str = "delay_skips_length_queries";

/// Compiles the shim into `work` (`cc`, or `$CC`) and writes its control directory: a
/// `delay_<call>` file holding `delay_ms` for each of `calls`, and [`SKIP_LENGTH_QUERIES`]
/// when `skip_length_queries`. Forwards to `target`.
pub fn build(
    work: &Path,
    target: &Path,
    delay_ms: u64,
    calls: &[String],
    skip_length_queries: bool,
) -> Result<Shim, String> {
    if let Some(bad) = calls.iter().find(|c| !is_function_name(c)) {
        return Err(format!(
            "--hsm-delay-calls: {bad:?} is not a PKCS#11 function name"
        ));
    }
    let lib = work.join("libp11kms-shim.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(SOURCE)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("--hsm-delay-ms needs a C compiler ({cc}): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the fault shim does not compile:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let control = work.join("shim-control");
    std::fs::create_dir_all(&control).map_err(|e| format!("{}: {e}", control.display()))?;
    for call in calls {
        let f = control.join(format!("delay_{call}"));
        std::fs::write(&f, delay_ms.to_string()).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    if skip_length_queries {
        let f = control.join(SKIP_LENGTH_QUERIES);
        std::fs::write(&f, "").map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(Shim {
        lib,
        control,
        target: target.to_path_buf(),
    })
}

/// How many delays one request waits: each of the PKCS#11 calls in `hsm_calls` (the JSON's
/// `hsm_calls_per_op`, e.g. `C_GenerateRandom(12)+C_EncryptInit+C_Encrypt`) that is among
/// `delayed` counts once, or twice for the calls cryptoki makes in two passes (a length query
/// first: C_Encrypt, C_Decrypt, C_Sign) unless the shim spares their length queries.
pub fn delayed_calls_per_op(
    hsm_calls: &str,
    delayed: &[String],
    skip_length_queries: bool,
) -> usize {
    hsm_calls
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| delayed.iter().any(|d| d == word))
        .map(|word| match word {
            "C_Encrypt" | "C_Decrypt" if skip_length_queries => 1,
            "C_Encrypt" | "C_Decrypt" | "C_Sign" => 2,
            _ => 1,
        })
        .sum()
}

/// The throughput ceiling of `workers` HSM workers each waiting `delay_ms` ms `per_op` times
/// per request: `workers x 1000 / (delay_ms x per_op)` (none without a delay per request).
pub fn ceiling_ops_per_sec(workers: usize, delay_ms: u64, per_op: usize) -> Option<f64> {
    (delay_ms > 0 && per_op > 0)
        .then(|| workers as f64 * 1000.0 / (delay_ms as f64 * per_op as f64))
}
