//! Custom key store rigs: SoftHSM2 tokens offered as `[[hsm.cluster]]` devices, each with its
//! own trust anchor (a CA made for it) and password, and the config entries naming them.
//!
//! SoftHSM2 reads one configuration per process, so every cluster token lives in the test
//! binary's token directory with a label of its own. A cluster may be reached through another
//! module path ([`softhsm_copy`]): a copy of the library loaded from elsewhere is a second,
//! independent module instance, as another vendor's library would be.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{env, SO_PIN};

/// One cluster of a rig.
#[derive(Debug, Clone)]
pub struct ClusterFixture {
    /// `cluster-` plus 11 letters.
    pub id: String,
    /// The module the cluster is reached through.
    pub module: PathBuf,
    /// The token's label (made unique per rig).
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

/// The one cluster of this process reached through [`softhsm_copy`]. SoftHSM2 reads its
/// token directory when a module instance starts, so a token made after the copy was first
/// loaded is not seen through it: every test of a binary shares this cluster, made before
/// the copy is ever loaded (each test's daemon makes its own store on it).
pub fn copy_cluster() -> ClusterFixture {
    static ONE: OnceLock<ClusterFixture> = OnceLock::new();
    ONE.get_or_init(|| cluster("copy", "c", &softhsm_copy(), true))
        .clone()
}

/// A cluster named `name` reached through `module`: its token initialised (through the
/// system library: same token directory) with password `password`, its own CA as trust
/// anchor. `init` false leaves the token absent (CLUSTER_NOT_FOUND).
pub fn cluster(rig: &str, name: &str, module: &Path, init: bool) -> ClusterFixture {
    let tag = letters(&format!("{rig}/{name}/{}", env().dir.display()));
    let token = format!("cks-{}-{name}", &tag[..6]);
    let password = format!("pw-{name}-{}", &tag[6..]);
    // One token initialisation at a time in this process (the library is shared).
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if init {
        let _one = INIT.lock().unwrap_or_else(|p| p.into_inner());
        p11kms::hsm::init_token(
            &softhsm(),
            &token,
            &p11kms::hsm::Pin::new(SO_PIN),
            &p11kms::hsm::Pin::new(password.clone()),
        )
        .expect("init a cluster token");
    }
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
