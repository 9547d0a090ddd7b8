//! The `openssl` CLI as an independent RSA-OAEP implementation. Shared by the integration
//! tests (through `common`) and the HSM layer's unit tests (`src/hsm/unwrap_tests.rs`, by path),
//! so that both wrap import material exactly the same way.

use std::path::Path;
use std::process::Command;

/// `openssl pkeyutl -encrypt -pubin` with OAEP (`md` for OAEP and MGF1) of `data` under the
/// public key in the file `key` (`keyform` PEM or DER), run as `openssl` (a command for the
/// `openssl` program, with whatever environment the caller gives it).
pub fn pkeyutl_oaep(
    mut openssl: Command,
    key: &Path,
    keyform: &str,
    md: &str,
    data: &[u8],
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let out = dir.path().join("out.bin");
    std::fs::write(&input, data).unwrap();
    let st = openssl
        .args([
            "pkeyutl", "-encrypt", "-pubin", "-keyform", keyform, "-inkey",
        ])
        .arg(key)
        .args(["-pkeyopt", "rsa_padding_mode:oaep"])
        .args(["-pkeyopt", &format!("rsa_oaep_md:{md}")])
        .args(["-pkeyopt", &format!("rsa_mgf1_md:{md}")])
        .arg("-in")
        .arg(&input)
        .arg("-out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "openssl pkeyutl -encrypt failed");
    std::fs::read(out).unwrap()
}
