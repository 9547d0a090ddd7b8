//! `p11kms region transport-key` and `p11kms region trust` (issue 20's ceremony), as an
//! operator runs them: separate processes on the test binary's real SoftHSM2 token, the SO
//! PIN from the environment. The device-level facts (a trusted peer key lets a
//! wrap-with-trusted key leave, an untrusted one does not) are probed in
//! `src/hsm/region_tests.rs`; this checks the commands, their refusals, and that `check` does
//! not take the ceremony's objects for orphans.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn region(args: &[&str], config: &Path, so_pin: Option<&str>) -> Output {
    let mut command = p11kms_command();
    command.arg("region").args(args).arg("--config").arg(config);
    if let Some(pin) = so_pin {
        command.env("P11KMS_SO_PIN", pin);
    }
    command.output().unwrap()
}

fn transport_key(config: &Path) -> String {
    let out = region(&["transport-key"], config, None);
    assert_succeeded(&out, "region transport-key");
    String::from_utf8(out.stdout).unwrap()
}

fn trust(config: &Path, peer: &str, key: &Path, so_pin: &str) -> (i32, String) {
    let out = region(
        &[
            "trust",
            "--region",
            peer,
            "--public-key",
            key.to_str().unwrap(),
        ],
        config,
        Some(so_pin),
    );
    code_and_output(&out)
}

/// A fresh RSA-3072 public key (PEM) made by OpenSSL: another region's transport key.
fn other_public_key(dir: &Path) -> std::path::PathBuf {
    let private = dir.join("other.pem");
    let public = dir.join("other-pub.pem");
    let made = hermetic_command("openssl", dir)
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
            "-out",
        ])
        .arg(&private)
        .output()
        .unwrap();
    assert_succeeded(&made, "openssl genpkey");
    let out = hermetic_command("openssl", dir)
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert_succeeded(&out, "openssl pkey -pubout");
    public
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_ceremony_imports_a_trusted_peer_key_once() {
    let dir = data_dir("region-trust");
    let config = write_config(&dir);

    // The transport key is made once and answered again.
    let pem = transport_key(&config);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(
        transport_key(&config),
        pem,
        "a second transport key was made"
    );
    let ours = dir.join("ours.pem");
    std::fs::write(&ours, &pem).unwrap();

    // Refusals before the token is touched, and a wrong SO PIN never echoed.
    let (code, text) = trust(&config, "EU_WEST", &ours, SO_PIN);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("not a region name"), "{text}");
    let (code, text) = trust(&config, "eu-west-1", &dir.join("missing.pem"), SO_PIN);
    assert_ne!(code, 0, "{text}");
    let (code, text) = trust(&config, "eu-west-1", &ours, "not-the-so-pin");
    assert_ne!(code, 0, "a wrong SO PIN was accepted: {text}");
    assert!(
        !text.contains("not-the-so-pin"),
        "the SO PIN was echoed: {text}"
    );

    // The ceremony, then again with the same key: nothing changes.
    let (code, text) = trust(&config, "eu-west-1", &ours, SO_PIN);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("p11kms/region-peer/eu-west-1: imported, trusted"),
        "{text}"
    );
    let (code, text) = trust(&config, "eu-west-1", &ours, SO_PIN);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("already trusted"), "{text}");

    // Another key for a region already trusted is refused.
    let other = other_public_key(&dir);
    let (code, text) = trust(&config, "eu-west-1", &other, SO_PIN);
    assert_ne!(code, 0, "a second key replaced a trusted peer key: {text}");

    // `check` accounts for the transport pair and the peer key: no orphan.
    let (code, text) = run_check(&config).await;
    assert!(!text.contains("DRIFT orphan"), "{text}");
    assert_eq!(code, 0, "{text}");
}
