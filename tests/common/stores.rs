//! Custom key store rigs: SoftHSM2 tokens offered as `[[hsm.cluster]]` devices, each with its
//! own trust anchor (a CA made for it) and password, and the config entries naming them.
//!
//! SoftHSM2 reads one configuration per process, so every cluster token lives in the test
//! binary's token directory with a label of its own. A cluster may be reached through another
//! module path ([`softhsm_copy`]): a copy of the library loaded from elsewhere is a second,
//! independent module instance, as another vendor's library would be.
//!
//! The cluster tokens are a pool made by `softhsm-config/init-token.sh` (another process) when
//! the binary's test environment is made ([`make_pool`], from `env()`), before this process
//! loads any PKCS#11 module: SoftHSM2 reads its token directory when an instance starts, and a
//! token initialised in-process while another test's daemon works on the same library can
//! disturb that daemon's token. Only the binaries listed in [`POOL_BINARIES`] get a pool.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::{assert_succeeded, env, hermetic_command, manifest_dir, SO_PIN};

/// The test binaries that make custom key stores (their names, before cargo's hash).
pub const POOL_BINARIES: &[&str] = &[
    "custom_key_stores",
    "aws_clients",
    "cli_key_stores",
    "check",
    "xks_door",
    "cluster_residency",
    "regions",
];
/// Cluster tokens in a binary's pool.
pub const POOL_SIZE: usize = 12;

/// The label and user PIN (the store password) of pool token `i`.
fn pool_token(i: usize) -> (String, String) {
    (format!("cks-pool-{i:02}"), format!("pool-password-{i:02}"))
}

/// Makes this binary's pool of cluster tokens in `softhsm_dir` (out of process), when the
/// binary is one of [`POOL_BINARIES`]. Called by `env()` before any module is loaded.
pub fn make_pool(softhsm_dir: &Path, scratch: &Path) {
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let wanted = POOL_BINARIES.iter().any(|b| {
        name.strip_prefix(b)
            .is_some_and(|rest| rest.starts_with('-'))
    });
    if !wanted {
        return;
    }
    for i in 0..POOL_SIZE {
        let (label, password) = pool_token(i);
        let out = hermetic_command("bash", scratch)
            .arg(manifest_dir().join("softhsm-config/init-token.sh"))
            .arg(softhsm_dir)
            .arg(&label)
            .env("P11KMS_SO_PIN", SO_PIN)
            .env("P11KMS_USER_PIN", &password)
            .output()
            .expect("run init-token.sh");
        assert_succeeded(&out, "init-token.sh (a cluster token) failed");
    }
}

/// One cluster of a rig.
#[derive(Debug, Clone)]
pub struct ClusterFixture {
    /// `cluster-` plus 11 letters.
    pub id: String,
    /// The module the cluster is reached through.
    pub module: PathBuf,
    /// The token's label (a token of the binary's pool, or one no token has).
    pub token: String,
    /// The token's user PIN: the store's `KeyStorePassword`.
    pub password: String,
    /// The trust anchor certificate (PEM text), which CreateCustomKeyStore must be given.
    pub anchor_pem: String,
    /// Where the trust anchor is (the config's `trust_anchor_file`).
    pub anchor_file: PathBuf,
}

/// 11 letters from `seed`, for a cluster id (the model allows letters and the digits 2-7).
fn letters(seed: &str) -> String {
    let digest = p11kms::encoding::sha256_hex(seed.as_bytes());
    digest
        .bytes()
        .take(11)
        .map(|b| (b'a' + (b % 26)) as char)
        .collect()
}

/// The SoftHSM2 module of the system.
pub fn softhsm() -> PathBuf {
    p11kms::devsetup::find_softhsm_module().expect("SoftHSM2 module not found")
}

/// A copy of the SoftHSM2 library at another path (made once per test binary): loading it
/// gives a second module instance, independent of the default store's.
pub fn softhsm_copy() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let to = env().dir.join("libsofthsm2-copy.so");
        std::fs::copy(softhsm(), &to).expect("copy libsofthsm2.so");
        to
    })
    .clone()
}

/// The one cluster of this process reached through [`softhsm_copy`]: every test of a binary
/// shares it (each test's daemon makes its own store on it), so that one token is reached
/// through the copy.
pub fn copy_cluster() -> ClusterFixture {
    static ONE: OnceLock<ClusterFixture> = OnceLock::new();
    ONE.get_or_init(|| cluster("copy", "c", &softhsm_copy(), true))
        .clone()
}

/// A cluster named `name` reached through `module`: with `token`, the next token of the
/// binary's pool (its user PIN is the store password); without, a label no token has
/// (CLUSTER_NOT_FOUND). Its own CA is its trust anchor.
pub fn cluster(rig: &str, name: &str, module: &Path, token: bool) -> ClusterFixture {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let tag = letters(&format!("{rig}/{name}/{}", env().dir.display()));
    let (token, password) = if token {
        let i = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(
            i < POOL_SIZE,
            "the binary's pool of {POOL_SIZE} cluster tokens is used up"
        );
        pool_token(i)
    } else {
        (
            format!("cks-absent-{}", &tag[..6]),
            format!("pw-{}", &tag[6..]),
        )
    };
    let pki = env().dir.join(format!("cluster-pki-{tag}"));
    p11kms::devsetup::ensure_ca_and_server(&pki).expect("a cluster CA");
    let anchor_file = pki.join("ca.pem");
    ClusterFixture {
        id: format!("cluster-{tag}"),
        module: module.to_path_buf(),
        token,
        password,
        anchor_pem: std::fs::read_to_string(&anchor_file).unwrap(),
        anchor_file,
    }
}

/// The `[[hsm.cluster]]` entries of `clusters`.
pub fn cluster_sections(clusters: &[ClusterFixture]) -> String {
    clusters
        .iter()
        .map(|c| {
            format!(
                "\n[[hsm.cluster]]\nid = \"{}\"\nmodule = \"{}\"\ntoken_label = \"{}\"\ntrust_anchor_file = \"{}\"\n",
                c.id,
                c.module.display(),
                c.token,
                c.anchor_file.display()
            )
        })
        .collect()
}
