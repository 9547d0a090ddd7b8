//! The CLI for the key catalogue (issue 7): `p11kms key create --key-spec`, `sign`, `verify`,
//! `get-public-key`, `generate-mac` and the rotation subcommands, run as the real binary against
//! the real daemon and SoftHSM2 token. The signature is checked by the OpenSSL CLI against the
//! PEM public key the CLI printed.

mod common;

use std::path::Path;

use common::*;

struct Cli {
    conn: Vec<String>,
}

impl Cli {
    fn new(port: u16) -> Cli {
        Cli {
            conn: cli_connection(port, "admin"),
        }
    }

    /// Runs `p11kms ARGS... CONN...`: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = p11kms_command()
            .args(args)
            .args(&self.conn)
            .output()
            .expect("run p11kms");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "p11kms {args:?} failed: {stderr}");
        stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn create(&self, spec: &str, usage: &str) -> String {
        let m = self.json(&["key", "create", "--key-spec", spec, "--key-usage", usage]);
        assert_eq!(m["KeyMetadata"]["KeySpec"], spec);
        m["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_signs_verifies_macs_and_rotates() {
    let dir = data_dir("cli-catalogue");
    let server = start(&dir).await;
    let cli = Cli::new(server.addr.port());
    let scratch = tempfile::tempdir().unwrap();
    let msg = scratch.path().join("message.txt");
    std::fs::write(&msg, b"pay 100 to alice").unwrap();
    let tampered = scratch.path().join("tampered.txt");
    std::fs::write(&tampered, b"pay 900 to alice").unwrap();

    // ---- ECDSA P-256: sign with the CLI, verify with OpenSSL and with the CLI.
    let key = cli.create("ECC_NIST_P256", "SIGN_VERIFY");
    let sig = scratch.path().join("sig.der");
    cli.ok(&[
        "sign",
        "--key",
        &key,
        "--in",
        path_str(&msg),
        "--algorithm",
        "ECDSA_SHA_256",
        "--out",
        path_str(&sig),
    ]);
    let pem = cli.ok(&["get-public-key", "--key", &key]);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let pub_pem = scratch.path().join("pub.pem");
    std::fs::write(&pub_pem, &pem).unwrap();
    let openssl = |m: &Path| {
        hermetic_command("openssl", scratch_dir())
            .args([
                "dgst",
                "-sha256",
                "-verify",
                path_str(&pub_pem),
                "-signature",
            ])
            .arg(&sig)
            .arg(m)
            .output()
            .expect("run openssl")
    };
    let o = openssl(&msg);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Verified OK"),
        "openssl did not verify the CLI's signature: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!openssl(&tampered).status.success());
    let verify = |m: &Path| {
        cli.run(&[
            "verify",
            "--key",
            &key,
            "--in",
            path_str(m),
            "--algorithm",
            "ECDSA_SHA_256",
            "--signature-file",
            path_str(&sig),
        ])
    };
    let (ok, stdout, stderr) = verify(&msg);
    assert!(ok, "p11kms verify failed: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["SignatureValid"], true);
    let (ok, _, stderr) = verify(&tampered);
    assert!(!ok);
    assert!(stderr.contains("KMSInvalidSignatureException"), "{stderr}");
    // The DER public key from --out is the PEM's body.
    let der = scratch.path().join("pub.der");
    cli.ok(&["get-public-key", "--key", &key, "--out", path_str(&der)]);
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
        std::fs::read(&der).unwrap()
    );

    // ---- HMAC: a 32-byte MAC, the same every time.
    let hmac = cli.create("HMAC_256", "GENERATE_VERIFY_MAC");
    let mac = |alg: &str| {
        cli.run(&[
            "generate-mac",
            "--key",
            &hmac,
            "--in",
            path_str(&msg),
            "--algorithm",
            alg,
        ])
    };
    let (ok, a, _) = mac("HMAC_SHA_256");
    assert!(ok);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .unwrap()
            .len(),
        32
    );
    assert_eq!(mac("HMAC_SHA_256").1, a);
    let (ok, _, stderr) = mac("HMAC_SHA_512");
    assert!(!ok);
    assert!(stderr.contains("InvalidKeyUsageException"), "{stderr}");

    // ---- ECDH: the CLI's shared secret equals OpenSSL's, from a PEM or a DER peer key.
    let agree = cli.create("ECC_NIST_P256", "KEY_AGREEMENT");
    let ours = scratch.path().join("ours.pem");
    std::fs::write(&ours, cli.ok(&["get-public-key", "--key", &agree])).unwrap();
    let peer = scratch.path().join("peer.pem");
    let peer_pub = scratch.path().join("peer-pub.pem");
    let peer_der = scratch.path().join("peer-pub.der");
    let expected = scratch.path().join("expected.bin");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&peer),
        ],
        vec![
            "pkey",
            "-in",
            path_str(&peer),
            "-pubout",
            "-out",
            path_str(&peer_pub),
        ],
        vec![
            "pkey",
            "-in",
            path_str(&peer),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            path_str(&peer_der),
        ],
        vec![
            "pkeyutl",
            "-derive",
            "-inkey",
            path_str(&peer),
            "-peerkey",
            path_str(&ours),
            "-out",
            path_str(&expected),
        ],
    ] {
        let st = hermetic_command("openssl", scratch_dir())
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    }
    let secret = scratch.path().join("secret.bin");
    cli.ok(&[
        "derive-shared-secret",
        "--key",
        &agree,
        "--peer-public-key",
        path_str(&peer_pub),
        "--out",
        path_str(&secret),
    ]);
    let expected = std::fs::read(&expected).unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), expected);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let b64 = cli.ok(&[
        "derive-shared-secret",
        "--key",
        &agree,
        "--peer-public-key",
        path_str(&peer_der),
    ]);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap(),
        expected
    );
    let (ok, _, stderr) = cli.run(&[
        "derive-shared-secret",
        "--key",
        &key,
        "--peer-public-key",
        path_str(&peer_pub),
    ]);
    assert!(!ok);
    assert!(stderr.contains("InvalidKeyUsageException"), "{stderr}");

    // ---- Rotation of a symmetric key.
    let sym = cli.create("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    cli.ok(&["key", "enable-rotation", &sym, "--period-days", "90"]);
    let st = cli.json(&["key", "rotation-status", &sym]);
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 90);
    cli.ok(&["key", "rotate", &sym]);
    let r = cli.json(&["key", "list-rotations", &sym]);
    let rotations = r["Rotations"].as_array().unwrap();
    assert_eq!(rotations.len(), 1, "{r}");
    assert_eq!(rotations[0]["RotationType"], "ON_DEMAND");
    let (ok, _, stderr) = cli.run(&["key", "enable-rotation", &sym, "--period-days", "30"]);
    assert!(!ok);
    assert!(stderr.contains("ValidationException"), "{stderr}");
    cli.ok(&["key", "disable-rotation", &sym]);
    assert_eq!(
        cli.json(&["key", "rotation-status", &sym])["KeyRotationEnabled"],
        false
    );
    // Rotation is for symmetric keys only.
    let (ok, _, stderr) = cli.run(&["key", "rotate", &key]);
    assert!(!ok);
    assert!(stderr.contains("UnsupportedOperationException"), "{stderr}");

    server.shutdown().await.unwrap();
}
