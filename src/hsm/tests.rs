//! Tests against a real SoftHSM2 (no mocks).
//!
//! All tests of the binary share one process-global PKCS#11 context, and
//! SoftHSM2 reads its config (and its token list) when first initialised, so
//! every token is created once, serially, before the first `Hsm::open`.
//!
//! Other unit tests of the crate that need a token must use
//! [`test_config`] (they run in the same process, so they must share this
//! set-up): `Hsm::open(&crate::hsm::tests::test_config())`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::*;

pub(super) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const INIT_TOKEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-config/init-token.sh");

/// The token directory lives in a static, which is never dropped; stale
/// ones from earlier runs are swept at set-up instead.
const TEST_DIR_PREFIX: &str = "p11kms-hsm-test-";

fn sweep_stale_test_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if stale && e.file_name().to_string_lossy().starts_with(TEST_DIR_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    pin: String,
    /// Main token: most tests use it.
    a: String,
    /// Second token: multi-token tests.
    b: String,
    /// Third token, never logged in by other tests: wrong-PIN test.
    c: String,
    /// Label carried by two tokens.
    dup: String,
    /// A token used only through a second module instance (a copy of the library).
    other: String,
    /// The SO PIN of every test token (wrapped residency's trust ceremony needs it).
    so_pin: String,
    /// Wrapped residency (issue 19): a token with a trusted master, shared by its tests.
    wrapped: String,
    /// Wrapped residency: the token of the master-key ceremony probes (one test).
    ceremony: String,
    /// Wrapped residency: the token of the master-rotation test.
    rotation: String,
    /// Multi-Region keys (issue 20): two regions' tokens for the device probes.
    region_probe: [String; 2],
    /// Multi-Region keys: two regions' tokens for the region jobs' tests.
    region_jobs: [String; 2],
    /// Tokens each used by one test through a module instance of its own
    /// ([`own_instance`]).
    own: [String; OWN_TOKENS],
}

/// How many tests may have a module instance and a token of their own.
const OWN_TOKENS: usize = 4;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        sweep_stale_test_dirs();
        let dir = tempfile::Builder::new()
            .prefix(TEST_DIR_PREFIX)
            .tempdir()
            .expect("tempdir");
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let pin = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let so_pin = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let [a, b, c, dup, other, wrapped, ceremony, rotation, rpa, rpb, rja, rjb] = [
            "a", "b", "c", "dup", "other", "w", "wc", "wr", "rpa", "rpb", "rja", "rjb",
        ]
        .map(|n| format!("p11kms-test-{n}-{tag}"));
        let own: [String; OWN_TOKENS] =
            std::array::from_fn(|i| format!("p11kms-test-own{i}-{tag}"));
        let mut conf = None;
        for label in [
            &a, &b, &c, &dup, &other, &wrapped, &ceremony, &rotation, &rpa, &rpb, &rja, &rjb,
        ]
        .into_iter()
        .chain(&own)
        {
            let out = Command::new("bash")
                .arg(INIT_TOKEN)
                .arg(dir.path())
                .arg(label)
                .env("P11KMS_SO_PIN", &so_pin)
                .env("P11KMS_USER_PIN", &pin)
                .output()
                .expect("run init-token.sh");
            assert!(
                out.status.success(),
                "init-token.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let printed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            conf = Some(PathBuf::from(printed));
        }
        let conf = conf.unwrap();
        assert!(conf.is_file());
        // A second token with the `dup` label (init-token.sh is idempotent by
        // label, so call softhsm2-util directly).
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &dup,
                "--so-pin",
                &so_pin,
            ])
            .args(["--pin", &pin])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util");
        assert!(out.status.success());
        // Idempotence: running it again for an existing label changes nothing.
        let again = Command::new("bash")
            .arg(INIT_TOKEN)
            .arg(dir.path())
            .arg(&a)
            .env("P11KMS_SO_PIN", &so_pin)
            .env("P11KMS_USER_PIN", &pin)
            .output()
            .unwrap();
        assert!(again.status.success());
        // Before any Pkcs11 exists in this process (edition 2021: safe).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Env {
            _dir: dir,
            pin,
            a,
            b,
            c,
            dup,
            other,
            so_pin,
            wrapped,
            ceremony,
            rotation,
            region_probe: [rpa, rpb],
            region_jobs: [rja, rjb],
            own,
        }
    })
}

/// Wrapped residency's test tokens and PINs (see [`Env`]), for `wrapped_tests`.
pub(super) struct WrappedTokens {
    pub(super) so_pin: Pin,
    pub(super) user_pin: Pin,
    pub(super) shared: String,
    pub(super) ceremony: String,
    pub(super) rotation: String,
}

pub(super) fn wrapped_tokens() -> WrappedTokens {
    let e = env();
    WrappedTokens {
        so_pin: Pin::new(e.so_pin.clone()),
        user_pin: Pin::new(e.pin.clone()),
        shared: e.wrapped.clone(),
        ceremony: e.ceremony.clone(),
        rotation: e.rotation.clone(),
    }
}

/// Multi-Region keys' test tokens (see [`Env`]), for `region_tests`: the probes' two
/// regions and the jobs' two regions.
pub(super) fn region_tokens() -> ([String; 2], [String; 2]) {
    let e = env();
    (e.region_probe.clone(), e.region_jobs.clone())
}

/// A config for the shared test token (created on first use); other unit
/// tests of the crate use this.
pub(crate) fn test_config() -> HsmConfig {
    cfg(&env().a)
}

pub(super) fn cfg(label: &str) -> HsmConfig {
    HsmConfig::new(MODULE, label, Pin::new(env().pin.clone()))
}

fn open(label: &str) -> Arc<Hsm> {
    Hsm::open(&cfg(label)).expect("open Hsm")
}

/// An `Hsm` on the `other` token through a second, independent instance of the module: a copy
/// of the library at another path (as a store on another device has its own library).
fn open_other_instance() -> Arc<Hsm> {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    let copy = COPY.get_or_init(|| module_copy("second-instance"));
    let cfg = HsmConfig::new(copy, &env().other, Pin::new(env().pin.clone()));
    Hsm::open(&cfg).expect("open the second module instance")
}

/// A config for a test that needs a module instance of its own (`test`: its name): a copy of
/// the module ([`module_copy`]) and a token that no other instance uses. SoftHSM2 guards its
/// token files with `fcntl` locks, which do not exclude one another within a process, so two
/// instances in one process must never share a token: one may read a file while the other
/// rewrites it, and then take the token for invalid (seen in CI on 2026-12-07).
pub(super) fn own_instance(test: &str) -> HsmConfig {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let label = env().own.get(n).unwrap_or_else(|| {
        panic!("{test}: more than {OWN_TOKENS} tests want a token of their own")
    });
    HsmConfig::new(module_copy(test), label, Pin::new(env().pin.clone()))
}

/// A copy of the module at a path of its own, `name`d: opened from there it is a module
/// instance of its own, with its own token-object gate that other tests' jobs never take.
pub(super) fn module_copy(name: &str) -> PathBuf {
    let path = env()._dir.path().join(format!("libsofthsm2-{name}.so"));
    std::fs::copy(MODULE, &path).expect("copy the module");
    path
}

pub(super) fn new_id() -> ObjectId {
    ObjectId::new(*uuid::Uuid::new_v4().as_bytes(), 1)
}

/// The AAD closure the engine will pass: a prefix followed by the IV.
pub(super) fn aad_with(prefix: &'static [u8]) -> AadBuilder {
    Box::new(move |iv| {
        let mut v = prefix.to_vec();
        v.extend_from_slice(iv);
        v
    })
}

pub(super) fn aad_bytes(prefix: &[u8], iv: &[u8; 12]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(iv);
    v
}

pub(super) fn pt(b: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(b.to_vec())
}

/// The checked encrypt decrypts its own result in the same job: one C_Encrypt and one
/// C_Decrypt, and a ciphertext the plain decrypt opens.
#[tokio::test]
async fn checked_encrypt_decrypts_its_result_in_the_same_job() {
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    let before = hsm.counters();
    let s = hsm
        .encrypt_gcm_checked(id, pt(b"checked"), aad_with(b"ctx"))
        .await
        .unwrap();
    let after = hsm.counters();
    for f in ["C_Encrypt", "C_Decrypt"] {
        assert_eq!(after[f] - before.get(f).copied().unwrap_or(0), 1, "{f}");
    }
    let out = hsm
        .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, aad_bytes(b"ctx", &s.iv))
        .await
        .unwrap();
    assert_eq!(&out[..], b"checked");
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_with_aad() {
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    assert!(hsm.exists(id).await.unwrap());

    let s1 = hsm
        .encrypt_gcm(id, pt(b"hello world"), aad_with(b"ctx"))
        .await
        .unwrap();
    let s2 = hsm
        .encrypt_gcm(id, pt(b"hello world"), aad_with(b"ctx"))
        .await
        .unwrap();
    assert_eq!(s1.ciphertext_and_tag.len(), 11 + GCM_TAG_LEN);
    assert_ne!(s1.iv, s2.iv, "IVs come fresh from the HSM RNG");
    assert_ne!(s1.ciphertext_and_tag, s2.ciphertext_and_tag);

    let finds = hsm.counters()["C_FindObjects"];
    for s in [&s1, &s2] {
        let out = hsm
            .decrypt_gcm(
                id,
                s.iv,
                s.ciphertext_and_tag.clone(),
                aad_bytes(b"ctx", &s.iv),
            )
            .await
            .unwrap();
        assert_eq!(&out[..], b"hello world");
    }
    // Created keys are cached: no lookup per request.
    assert_eq!(hsm.counters()["C_FindObjects"], finds);

    // Empty plaintext and a 4 KiB one.
    let empty = hsm.encrypt_gcm(id, pt(b""), aad_with(b"")).await.unwrap();
    assert_eq!(empty.ciphertext_and_tag.len(), GCM_TAG_LEN);
    let out = hsm
        .decrypt_gcm(id, empty.iv, empty.ciphertext_and_tag, empty.iv.to_vec())
        .await
        .unwrap();
    assert!(out.is_empty());
    let big = vec![0xa5u8; 4096];
    let s = hsm
        .encrypt_gcm(id, pt(&big), aad_with(b"big"))
        .await
        .unwrap();
    let out = hsm
        .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, aad_bytes(b"big", &s.iv))
        .await
        .unwrap();
    assert_eq!(&out[..], &big[..]);
    hsm.destroy(id).await.unwrap();
}

#[tokio::test]
async fn tampering_is_auth_failed() {
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    let s = hsm
        .encrypt_gcm(id, pt(b"secret"), aad_with(b"right"))
        .await
        .unwrap();

    // Wrong AAD.
    let e = hsm
        .decrypt_gcm(
            id,
            s.iv,
            s.ciphertext_and_tag.clone(),
            aad_bytes(b"wrong", &s.iv),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");
    assert_eq!(e.function, "C_Decrypt");
    assert!(
        e.to_string().starts_with(&format!(
            "C_Decrypt failed on token '{}': CKR_GENERAL_ERROR (0x5)",
            env().a
        )),
        "{e}"
    );
    assert_eq!(e.rv_code(), Some(0x5));

    // Flipped tag bit.
    let mut ct = s.ciphertext_and_tag.clone();
    *ct.last_mut().unwrap() ^= 1;
    let e = hsm
        .decrypt_gcm(id, s.iv, ct, aad_bytes(b"right", &s.iv))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");

    // Flipped ciphertext bit and wrong IV.
    let mut ct = s.ciphertext_and_tag.clone();
    ct[0] ^= 0x80;
    let e = hsm
        .decrypt_gcm(id, s.iv, ct, aad_bytes(b"right", &s.iv))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");
    let mut iv = s.iv;
    iv[3] ^= 1;
    let e = hsm
        .decrypt_gcm(
            id,
            iv,
            s.ciphertext_and_tag.clone(),
            aad_bytes(b"right", &s.iv),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");

    // Truncated below the tag length.
    let e = hsm
        .decrypt_gcm(id, s.iv, vec![1, 2, 3], aad_bytes(b"right", &s.iv))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");

    // The session is still healthy afterwards.
    let out = hsm
        .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, aad_bytes(b"right", &s.iv))
        .await
        .unwrap();
    assert_eq!(&out[..], b"secret");
    hsm.ping().await.unwrap();
    hsm.destroy(id).await.unwrap();
}

#[tokio::test]
async fn custody_attributes_and_refusals() {
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();

    let a = hsm.key_attributes(id).await.unwrap();
    assert!(a.token && a.private);
    assert!(a.sensitive && a.always_sensitive);
    assert!(!a.extractable && a.never_extractable);
    assert!(a.encrypt && a.decrypt);
    assert!(!a.wrap && !a.unwrap && !a.sign && !a.verify && !a.derive);
    assert_eq!(a.allowed_mechanisms, vec!["AES_GCM".to_string()]);

    let e = hsm.try_read_value(id).await.unwrap_err();
    assert!(e.rv_is("CKR_ATTRIBUTE_SENSITIVE"), "{e}");

    let e = hsm.try_wrap_with_new_key(id).await.unwrap_err();
    assert!(e.rv_is("CKR_KEY_UNEXTRACTABLE"), "{e}");
    assert_eq!(e.function, "C_WrapKey");

    // The listing shows the object, with its id, label and class.
    let objects = hsm.list_objects().await.unwrap();
    let o = objects.iter().find(|o| o.id == id.0).expect("key listed");
    assert_eq!(o.label, id.label());
    assert_eq!(o.class, "SECRET_KEY");
    assert_eq!(ObjectId::from_bytes(&o.id), Some(id));
    // The custody-probe wrapping key was a session object and is gone.
    assert!(!objects.iter().any(|o| o.label.contains("custody-probe")));
    hsm.destroy(id).await.unwrap();
}

#[tokio::test]
async fn destroy_then_use_is_not_found() {
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    let s = hsm.encrypt_gcm(id, pt(b"x"), aad_with(b"")).await.unwrap();
    hsm.destroy(id).await.unwrap();
    assert!(!hsm.exists(id).await.unwrap());

    let e = hsm
        .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, s.iv.to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::ObjectNotFound, "{e}");
    let e = hsm.destroy(id).await.unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::ObjectNotFound, "{e}");
    let e = hsm
        .encrypt_gcm(new_id(), pt(b"x"), aad_with(b""))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::ObjectNotFound, "{e}");
}

#[tokio::test]
async fn stale_cached_handle_is_evicted_and_found_again() {
    // Two Hsm instances on one token: each has its own handle cache. Session copies are off:
    // a copy would outlive a token object destroyed behind its instance's back (see
    // `session_copies_serve_the_same_key_and_go_with_it`).
    let no_copies = || {
        let mut c = cfg(&env().a);
        c.session_key_copies = false;
        Hsm::open(&c).expect("open Hsm")
    };
    let h1 = no_copies();
    let h2 = no_copies();
    let id = new_id();
    h1.generate_aes_key(id).await.unwrap();

    // h2 resolves by C_FindObjects on first use, then uses the cache.
    let f0 = h2.counters()["C_FindObjects"];
    let s = h2.encrypt_gcm(id, pt(b"y"), aad_with(b"")).await.unwrap();
    assert_eq!(h2.counters()["C_FindObjects"], f0 + 1);
    h2.encrypt_gcm(id, pt(b"y"), aad_with(b"")).await.unwrap();
    assert_eq!(h2.counters()["C_FindObjects"], f0 + 1);

    // Destroyed through h1: h2's cached handle is now invalid.
    h1.destroy(id).await.unwrap();
    let e = h2
        .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, s.iv.to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::ObjectNotFound, "{e}");
    assert!(!h2.exists(id).await.unwrap());
}

/// The custody attributes of the session copy of (`id`, `part`), read from the device.
pub(super) async fn copy_attributes(hsm: &Hsm, id: ObjectId, part: objects::Part) -> KeyAttributes {
    hsm.submit(LockClass::Shared, "test_copy_attributes", move |ctx| {
        let Some(objects::CopyState::Live { handle, .. }) =
            ctx.shared.copies.get(&id, part, ctx.current_epoch())
        else {
            panic!("no live copy of {id} {part:?}");
        };
        let attrs = ops::custody_attributes(ctx, handle)?;
        Ok(ops::key_attributes_from(attrs))
    })
    .await
    .unwrap()
}

/// (token objects, session objects) carrying `id`.
async fn objects_of(hsm: &Hsm, id: ObjectId) -> (usize, usize) {
    let objects = hsm.list_objects().await.unwrap();
    let mine = objects.iter().filter(|o| o.id == id.0);
    let token = mine.clone().filter(|o| o.token).count();
    (token, mine.count() - token)
}

#[tokio::test]
async fn session_copies_serve_the_same_key_and_go_with_it() {
    let hsm = open(&env().a);
    let mut plain_cfg = cfg(&env().a);
    plain_cfg.session_key_copies = false;
    let plain = Hsm::open(&plain_cfg).unwrap();
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    assert_eq!(objects_of(&hsm, id).await, (1, 0));

    // The first use copies the token key into a session object, once.
    let copies0 = hsm.counters()["C_CopyObject"];
    let mut sealed = Vec::new();
    for _ in 0..3 {
        sealed.push(
            hsm.encrypt_gcm(id, pt(b"copy"), aad_with(b"c"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(hsm.counters()["C_CopyObject"], copies0 + 1);
    assert_eq!(hsm.session_copies(), 1);
    assert_eq!(objects_of(&hsm, id).await, (1, 1));

    // The copy is as guarded as the token key, and not a token object.
    let a = copy_attributes(&hsm, id, objects::Part::Secret).await;
    assert!(!a.token && a.private, "{a:?}");
    assert!(a.sensitive && a.always_sensitive, "{a:?}");
    assert!(!a.extractable && a.never_extractable, "{a:?}");
    assert!(a.encrypt && a.decrypt, "{a:?}");
    assert!(!a.wrap && !a.unwrap && !a.sign && !a.verify && !a.derive);
    assert_eq!(a.allowed_mechanisms, vec!["AES_GCM".to_string()]);

    // Same key: what the copy sealed opens with the token object (an instance without
    // copies), and the other way round.
    for s in &sealed {
        let out = plain
            .decrypt_gcm(
                id,
                s.iv,
                s.ciphertext_and_tag.clone(),
                aad_bytes(b"c", &s.iv),
            )
            .await
            .unwrap();
        assert_eq!(&out[..], b"copy");
    }
    assert_eq!(plain.counters()["C_CopyObject"], 0);
    let t = plain
        .encrypt_gcm(id, pt(b"token"), aad_with(b"t"))
        .await
        .unwrap();
    let out = hsm
        .decrypt_gcm(id, t.iv, t.ciphertext_and_tag, aad_bytes(b"t", &t.iv))
        .await
        .unwrap();
    assert_eq!(&out[..], b"token");
    // A forged tag is still an authentication failure on the copy.
    let mut bad = sealed[0].ciphertext_and_tag.clone();
    bad[0] ^= 1;
    let e = hsm
        .decrypt_gcm(id, sealed[0].iv, bad, aad_bytes(b"c", &sealed[0].iv))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");
    assert_eq!(hsm.counters()["C_CopyObject"], copies0 + 1);

    // Dropping the key's copies (DisableKey) destroys the session object; the next use
    // makes a new one.
    assert_eq!(hsm.drop_session_copies(id.key_id()).await.unwrap(), 1);
    assert_eq!(hsm.session_copies(), 0);
    assert_eq!(objects_of(&hsm, id).await, (1, 0));
    hsm.encrypt_gcm(id, pt(b"again"), aad_with(b""))
        .await
        .unwrap();
    assert_eq!(hsm.counters()["C_CopyObject"], copies0 + 2);
    assert_eq!(objects_of(&hsm, id).await, (1, 1));

    // A copy lost behind the cache's back (as after a session reset) costs no request: the
    // token object serves it, and the following use copies again.
    hsm.submit(LockClass::Shared, "test_lose_copy", move |ctx| {
        if let Some(objects::CopyState::Live { handle, .. }) =
            ctx.shared
                .copies
                .get(&id, objects::Part::Secret, ctx.current_epoch())
        {
            ctx.call(Call::DestroyObject, |s| s.destroy_object(handle))
                .unwrap();
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(objects_of(&hsm, id).await, (1, 0));
    let s = hsm
        .encrypt_gcm(id, pt(b"lost"), aad_with(b""))
        .await
        .unwrap();
    assert_eq!(hsm.session_copies(), 0, "the dead copy was forgotten");
    hsm.encrypt_gcm(id, pt(b"lost"), aad_with(b""))
        .await
        .unwrap();
    assert_eq!(hsm.session_copies(), 1);
    assert_eq!(hsm.counters()["C_CopyObject"], copies0 + 3);

    // Destroying the key destroys its copy too: nothing of it is left, and nothing opens.
    hsm.destroy(id).await.unwrap();
    assert_eq!(objects_of(&hsm, id).await, (0, 0));
    assert_eq!(hsm.session_copies(), 0);
    let e = hsm
        .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, s.iv.to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::ObjectNotFound, "{e}");
}

/// SoftHSM2's `C_CopyObject` shows a token object twice for an instant (the copy carries
/// the original's `CKA_TOKEN` until its template is applied): lookups by `CKA_ID` made
/// while another thread of the process copies the key still find it once, never a clash.
#[tokio::test]
async fn lookups_while_the_key_is_copied_find_it_once() {
    use cryptoki::object::Attribute;
    use std::sync::atomic::{AtomicBool, Ordering};
    const LOOKUPS: usize = 3000;
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let copier = {
        let done = done.clone();
        let c = call::Counters::default();
        let pkcs11 = module::module(std::path::Path::new(MODULE), &env().a, &c)
            .unwrap()
            .pkcs11;
        let slot = module::find_token(&pkcs11, &env().a, &c).unwrap();
        let s = pkcs11.open_rw_session(slot).unwrap();
        let h = s.find_objects(&[Attribute::Token(true), Attribute::Id(id.0.to_vec())]);
        let h = h.unwrap()[0];
        std::thread::spawn(move || {
            let mut copies = 0u64;
            while !done.load(Ordering::SeqCst) {
                let copy = s.copy_object(h, &[Attribute::Token(false)]).unwrap();
                s.destroy_object(copy).unwrap();
                copies += 1;
            }
            copies
        })
    };
    let found = hsm
        .submit(LockClass::Shared, "test_lookups", move |ctx| {
            let mut found = 0;
            for _ in 0..LOOKUPS {
                found += usize::from(ops::find_part(ctx, &id, objects::Part::Secret)?.is_some());
            }
            Ok(found)
        })
        .await;
    done.store(true, Ordering::SeqCst);
    let copies = copier.join().unwrap();
    assert!(copies > 0, "the copier ran");
    assert_eq!(found.unwrap(), LOOKUPS, "every lookup found the key once");
}

#[tokio::test]
async fn a_key_the_device_will_not_copy_is_used_from_the_token() {
    let hsm = open(&env().a);
    let id = new_id();
    // A CMK-kind token key with CKA_COPYABLE = false (as a device policy may impose).
    hsm.submit(LockClass::Exclusive, "generate_aes_key", move |ctx| {
        let mut template = objects::cmk_aes_template(&id, &id.label());
        template.push(cryptoki::object::Attribute::Copyable(false));
        let h = ctx.call(Call::GenerateKey, |s| {
            s.generate_key(&cryptoki::mechanism::Mechanism::AesKeyGen, &template)
        })?;
        ctx.shared.handles.insert(id, h);
        Ok(())
    })
    .await
    .unwrap();
    let copies0 = hsm.counters()["C_CopyObject"];
    for _ in 0..3 {
        let s = hsm
            .encrypt_gcm(id, pt(b"stay"), aad_with(b""))
            .await
            .unwrap();
        let out = hsm
            .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, s.iv.to_vec())
            .await
            .unwrap();
        assert_eq!(&out[..], b"stay");
    }
    // Tried once, refused, remembered.
    assert_eq!(hsm.counters()["C_CopyObject"], copies0 + 1);
    assert_eq!(objects_of(&hsm, id).await, (1, 0));
    hsm.destroy(id).await.unwrap();
}

#[tokio::test]
async fn reencrypt_between_two_keys() {
    let hsm = open(&env().a);
    let (k1, k2) = (new_id(), new_id());
    hsm.generate_aes_key(k1).await.unwrap();
    hsm.generate_aes_key(k2).await.unwrap();
    let s = hsm
        .encrypt_gcm(k1, pt(b"move me"), aad_with(b"one"))
        .await
        .unwrap();
    let r = hsm
        .reencrypt_gcm(
            k1,
            s.iv,
            s.ciphertext_and_tag.clone(),
            aad_bytes(b"one", &s.iv),
            k2,
            aad_with(b"two"),
        )
        .await
        .unwrap();
    let out = hsm
        .decrypt_gcm(
            k2,
            r.iv,
            r.ciphertext_and_tag.clone(),
            aad_bytes(b"two", &r.iv),
        )
        .await
        .unwrap();
    assert_eq!(&out[..], b"move me");
    // Not openable under the source key.
    let e = hsm
        .decrypt_gcm(k1, r.iv, r.ciphertext_and_tag, aad_bytes(b"two", &r.iv))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");
    // A bad source ciphertext fails as AuthFailed too.
    let e = hsm
        .reencrypt_gcm(
            k1,
            s.iv,
            s.ciphertext_and_tag,
            aad_bytes(b"nope", &s.iv),
            k2,
            aad_with(b"two"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");
    hsm.destroy(k1).await.unwrap();
    hsm.destroy(k2).await.unwrap();
}

#[tokio::test]
async fn data_keys_and_random() {
    let hsm = open(&env().a);
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    let (key, sealed) = hsm
        .generate_data_key(id, 32, aad_with(b"dk"))
        .await
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(sealed.ciphertext_and_tag.len(), 32 + GCM_TAG_LEN);
    let out = hsm
        .decrypt_gcm(
            id,
            sealed.iv,
            sealed.ciphertext_and_tag,
            aad_bytes(b"dk", &sealed.iv),
        )
        .await
        .unwrap();
    assert_eq!(&out[..], &key[..]);

    let r1 = hsm.random(64).await.unwrap();
    let r2 = hsm.random(64).await.unwrap();
    assert_eq!(r1.len(), 64);
    assert_ne!(&r1[..], &r2[..]);
    assert_eq!(hsm.random(0).await.unwrap_err().kind, HsmErrorKind::Other);
    assert_eq!(
        hsm.random(MAX_RANDOM_LEN + 1).await.unwrap_err().kind,
        HsmErrorKind::Other
    );
    hsm.destroy(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_busy_and_late_job_is_timeout() {
    let mut c = cfg(&env().a);
    c.workers = 1;
    c.queue_depth = 1;
    c.acquire_timeout = Duration::from_millis(50);
    let hsm = Hsm::open(&c).unwrap();

    // Hold the only worker for 300 ms.
    let (started_tx, started_rx) = mpsc::channel();
    let blocker = {
        let hsm = Arc::clone(&hsm);
        tokio::spawn(async move {
            hsm.run_on_worker(move || {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            })
            .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();

    // One job fits in the queue ...
    let randoms_before = hsm.counters()["C_GenerateRandom"];
    let queued = {
        let hsm = Arc::clone(&hsm);
        tokio::spawn(async move { hsm.random(16).await })
    };
    let t0 = Instant::now();
    while hsm.queued() < 1 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ... the next ones are refused at once.
    for _ in 0..20 {
        let t = Instant::now();
        let e = hsm.random(16).await.unwrap_err();
        assert_eq!(e.kind, HsmErrorKind::Busy, "{e}");
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    // The queued job was picked up after its 50 ms deadline: Timeout, and
    // the device was not touched.
    let e = queued.await.unwrap().unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::Timeout, "{e}");
    assert_eq!(e.function, "random");
    blocker.await.unwrap().unwrap();
    assert_eq!(hsm.counters()["C_GenerateRandom"], randoms_before);

    // Afterwards the pool works normally.
    assert_eq!(hsm.random(16).await.unwrap().len(), 16);
    assert_eq!(hsm.counters()["C_GenerateRandom"], randoms_before + 1);
}

/// A [`Lane::First`] job (the audit checkpoint signature) runs before the jobs already
/// queued, and an idle pool is woken for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_lane_job_goes_ahead_of_the_queue() {
    let mut c = cfg(&env().a);
    c.workers = 1;
    let hsm = Hsm::open(&c).unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let job = |name: String| {
        let order = Arc::clone(&order);
        move |_: &mut WorkerCtx| {
            order.lock().unwrap().push(name.clone());
            Ok(())
        }
    };
    // An idle pool: the first-lane job alone is woken for and runs.
    let idle = job("idle".into());
    hsm.enqueue(
        LockClass::Unlocked,
        "test_first",
        Retry::Never,
        Lane::First,
        idle,
    )
    .await
    .unwrap();

    // Hold the only worker until released.
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocker = {
        let hsm = Arc::clone(&hsm);
        tokio::spawn(async move {
            hsm.run_on_worker(move || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
            .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (h, f) = (Arc::clone(&hsm), job(format!("queue-{i}")));
        waiting.push(tokio::spawn(async move {
            h.submit(LockClass::Unlocked, "test_queue", f).await
        }));
        let t0 = Instant::now();
        while hsm.queued() < i + 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "job {i} never queued"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (h, f) = (Arc::clone(&hsm), job("first".into()));
    let first = tokio::spawn(async move {
        h.enqueue(
            LockClass::Unlocked,
            "test_first",
            Retry::Never,
            Lane::First,
            f,
        )
        .await
    });
    let t0 = Instant::now();
    while hsm.queued() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "first-lane job never queued"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release_tx.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    first.await.unwrap().unwrap();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["idle", "first", "queue-0", "queue-1", "queue-2"]
    );
    assert_eq!(hsm.queued(), 0);
}

/// A worker stuck in one job past `stall_limit` is abandoned and replaced by a new worker
/// with a new session: other jobs keep flowing, a token-object creation does not wait for
/// the stuck job's lock, the stuck job still gets its answer, and its thread closes its
/// session when it returns (issue 14 item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_worker_is_replaced_and_holds_up_nothing_else() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut c = cfg(&env().a);
    c.workers = 1;
    c.acquire_timeout = Duration::from_millis(1000);
    c.stall_limit = Duration::from_millis(200);
    let hsm = Hsm::open(&c).unwrap();
    let before = hsm.counters();

    let released = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = mpsc::channel();
    let blocker = {
        let (hsm, released) = (Arc::clone(&hsm), Arc::clone(&released));
        tokio::spawn(async move {
            hsm.run_on_worker(move || {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(3));
                released.store(true, Ordering::SeqCst);
            })
            .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();

    // The only worker is stuck: these are served by its replacement, within their deadline.
    for _ in 0..5 {
        assert_eq!(hsm.random(16).await.expect("random").len(), 16);
    }
    // Token-object creation runs alone; it does not wait for the stuck job's shared lock.
    let id = new_id();
    hsm.generate_aes_key(id)
        .await
        .expect("generate beside a stuck job");
    hsm.destroy(id).await.unwrap();
    assert!(
        !released.load(Ordering::SeqCst),
        "the other jobs waited for the stuck one"
    );
    let s = hsm.stats();
    assert_eq!((s.workers_replaced, s.stuck_workers), (1, 1));
    assert_eq!(
        hsm.counters()["C_OpenSession"],
        before["C_OpenSession"] + 1,
        "the replacement has a new session"
    );

    blocker
        .await
        .unwrap()
        .expect("the stuck job still gets its answer");
    let t0 = Instant::now();
    while hsm.stats().stuck_workers > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the stuck thread never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hsm.counters()["C_CloseSession"] > before["C_CloseSession"]);
    assert_eq!(hsm.random(16).await.unwrap().len(), 16);
    assert_eq!(hsm.stats().workers_replaced, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_parallel_requests() {
    let mut c = cfg(&env().a);
    c.workers = 2;
    c.queue_depth = 4096;
    let hsm = Hsm::open(&c).unwrap();
    let id = new_id();
    hsm.generate_aes_key(id).await.unwrap();
    let before = hsm.counters();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let hsm = Arc::clone(&hsm);
        tasks.spawn(async move {
            let msg = i.to_be_bytes().to_vec();
            let s = hsm
                .encrypt_gcm(id, Zeroizing::new(msg.clone()), aad_with(b"f"))
                .await?;
            let out = hsm
                .decrypt_gcm(id, s.iv, s.ciphertext_and_tag, aad_bytes(b"f", &s.iv))
                .await?;
            assert_eq!(&out[..], &msg[..]);
            Ok::<_, HsmError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let after = hsm.counters();
    assert_eq!(after["C_Encrypt"] - before["C_Encrypt"], 200);
    assert_eq!(after["C_Decrypt"] - before["C_Decrypt"], 200);
    assert_eq!(after["C_GenerateRandom"] - before["C_GenerateRandom"], 200);
    assert_eq!(after["C_FindObjects"], before["C_FindObjects"]);
    assert!(hsm.total_ops() >= before.values().sum::<u64>() + 800);
    hsm.destroy(id).await.unwrap();
}

#[tokio::test]
async fn counters_move_only_with_calls() {
    let hsm = open(&env().a);
    let total = hsm.total_ops();
    assert!(total > 0, "open made calls");
    assert_eq!(hsm.total_ops(), total);
    // Health probes are counted apart: request-driven counters stay put.
    hsm.ping().await.unwrap();
    assert_eq!(hsm.total_ops(), total);
    assert_eq!(hsm.counters()["C_GetSessionInfo"], 0);
    assert_eq!(hsm.stats().health_probes, 1);
    hsm.random(8).await.unwrap();
    assert_eq!(hsm.total_ops(), total + 1);
    // Refused before the queue: no device call.
    hsm.random(0).await.unwrap_err();
    assert_eq!(hsm.total_ops(), total + 1);
}

#[tokio::test]
async fn two_tokens_in_one_process_and_drop_isolation() {
    let a = open(&env().a);
    let b = open(&env().b);
    assert_eq!(a.token_label(), env().a);
    assert_eq!(b.token_label(), env().b);
    let (ka, kb) = (new_id(), new_id());
    a.generate_aes_key(ka).await.unwrap();
    b.generate_aes_key(kb).await.unwrap();

    // Keys are per token.
    assert!(!b.exists(ka).await.unwrap());
    assert!(!a.exists(kb).await.unwrap());
    let sa = a.encrypt_gcm(ka, pt(b"on a"), aad_with(b"")).await.unwrap();
    let e = b
        .decrypt_gcm(ka, sa.iv, sa.ciphertext_and_tag.clone(), sa.iv.to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::ObjectNotFound);

    // Dropping the Hsm on b does not disturb a ...
    drop(b);
    let out = a
        .decrypt_gcm(ka, sa.iv, sa.ciphertext_and_tag.clone(), sa.iv.to_vec())
        .await
        .unwrap();
    assert_eq!(&out[..], b"on a");

    // ... nor does dropping a second Hsm on the same token.
    let a2 = open(&env().a);
    a2.ping().await.unwrap();
    assert!(a2.exists(ka).await.unwrap());
    drop(a2);
    a.ping().await.unwrap();
    let out = a
        .decrypt_gcm(ka, sa.iv, sa.ciphertext_and_tag, sa.iv.to_vec())
        .await
        .unwrap();
    assert_eq!(&out[..], b"on a");

    // b can be opened again, and its key is still there.
    let b = open(&env().b);
    assert!(b.exists(kb).await.unwrap());
    b.destroy(kb).await.unwrap();
    a.destroy(ka).await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_pool() {
    let hsm = open(&env().a);
    hsm.ping().await.unwrap();
    let h2 = Arc::clone(&hsm);
    tokio::task::spawn_blocking(move || h2.shutdown())
        .await
        .unwrap();
    let e = hsm.ping().await.unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::Unavailable);
    hsm.shutdown(); // idempotent
}

#[test]
fn mechanisms_report() {
    let hsm = open(&env().a);
    let m = hsm.mechanisms().unwrap();
    for name in ["AES_KEY_GEN", "AES_GCM"] {
        let r = m.iter().find(|r| r.name == name).unwrap();
        assert!(r.present && r.required, "{r:?}");
    }
    let wrap = m.iter().find(|r| r.name == "AES_KEY_WRAP_PAD").unwrap();
    assert!(wrap.present && !wrap.required);
    // Every mechanism the key catalogue uses is reported, and SoftHSM2 2.6.1 has them all.
    for r in &m {
        assert!(r.present, "{r:?}");
    }
    assert_eq!(m.len(), 18);
    assert!(m.iter().any(|r| r.name == "ECDH1_DERIVE" && !r.required));
}

#[test]
fn config_errors() {
    let e = Hsm::open(&cfg("p11kms-no-such-token")).unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::Config, "{e}");

    let e = Hsm::open(&cfg(&env().dup)).unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::Config, "{e}");
    assert!(e.to_string().contains("2 tokens"), "{e}");

    let mut c = cfg(&env().c);
    c.pin = Pin::new("not-the-pin");
    let e = Hsm::open(&c).unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::Config, "{e}");
    assert_eq!(e.function, "C_Login");
    assert!(e.rv_is("CKR_PIN_INCORRECT"), "{e}");
    assert!(!e.to_string().contains("not-the-pin"));

    let mut c = cfg(&env().a);
    c.workers = 0;
    assert_eq!(Hsm::open(&c).unwrap_err().kind, HsmErrorKind::Config);

    let mut c = cfg(&env().a);
    c.module = "/nonexistent/libpkcs11.so".into();
    assert_eq!(Hsm::open(&c).unwrap_err().kind, HsmErrorKind::Config);

    // The right PIN on the same token works.
    let hsm = open(&env().c);
    drop(hsm);
}

#[test]
fn secrets_are_redacted() {
    let c = test_config();
    let dbg = format!("{c:?}");
    assert!(dbg.contains("Pin(<redacted>)"));
    assert!(!dbg.contains(&env().pin));
    let hsm = open(&env().a);
    assert!(!format!("{hsm:?}").contains(&env().pin));
    assert_eq!(c.workers, DEFAULT_WORKERS);
    assert_eq!(c.queue_depth, DEFAULT_QUEUE_DEPTH);
    assert_eq!(c.acquire_timeout, DEFAULT_ACQUIRE_TIMEOUT);
}

#[test]
fn worker_threads_are_named() {
    let hsm = open(&env().a);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    rt.block_on(hsm.run_on_worker(move || {
        tx.send(std::thread::current().name().map(str::to_owned))
            .unwrap();
    }))
    .unwrap();
    let name = rx.recv().unwrap().unwrap();
    assert!(name.starts_with("hsm-worker-"), "{name}");
}

/// The raw baseline of `p11kms-bench` runs every operation it offers against a real token,
/// sign and verify included (an error or zero operations fails the test).
#[cfg(feature = "bench")]
#[test]
fn raw_baseline_runs_every_operation() {
    use super::raw::{RawBench, RawOp};
    // Any `Hsm` on the module shares its instance, so its token-object gate (the main token:
    // `c` is left to the wrong-PIN test but for the raw bench's own session).
    let hsm = open(&env().a);
    let _alone = super::gate::token_objects_exclusive(&hsm);
    let mut bench = RawBench::open(
        std::path::Path::new(MODULE),
        &env().c,
        &Pin::new(env().pin.clone()),
    )
    .expect("open the raw bench");
    for op in [
        RawOp::Encrypt,
        RawOp::Decrypt,
        RawOp::GenerateDataKey,
        RawOp::ReEncrypt,
        RawOp::CreateKey,
        RawOp::Sign,
        RawOp::Verify,
    ] {
        let r = bench
            .run(op, 32, b"aad", Duration::from_millis(30))
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        assert!(r.ops > 0, "{op:?} did no work");
    }
    for op in [
        RawOp::Encrypt,
        RawOp::Decrypt,
        RawOp::GenerateDataKey,
        RawOp::ReEncrypt,
        RawOp::Sign,
        RawOp::Verify,
    ] {
        let r = bench
            .run_on(
                super::raw::RawKey::SessionCopy,
                op,
                32,
                b"aad",
                Duration::from_millis(30),
            )
            .unwrap_or_else(|e| panic!("{op:?} on the session copy: {e}"));
        assert!(r.ops > 0, "{op:?} on the session copy did no work");
    }
    // Sign and verify with every signing kind the benchmark offers.
    for signing in [
        super::raw::RawSigning::EcdsaP256,
        super::raw::RawSigning::RsaPss2048,
        super::raw::RawSigning::Ed25519,
    ] {
        bench = bench.with_signing(signing);
        for op in [RawOp::Sign, RawOp::Verify] {
            let r = bench
                .run(op, 32, b"aad", Duration::from_millis(30))
                .unwrap_or_else(|e| panic!("{signing:?} {op:?}: {e}"));
            assert!(r.ops > 0, "{signing:?} {op:?} did no work");
        }
    }
}

/// A device's token-object gate is its own module instance's: while a creation holds it on one
/// device (the test holds it here, as a stuck `C_GenerateKey` would), a store on another
/// library creates, uses and destroys keys unhindered; the held device's own jobs resume once
/// it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_devices_token_object_lock_never_holds_up_another_device() {
    let held = open(&env().a);
    let other = open_other_instance();
    let id = new_id();
    let on_held = {
        let _creating = super::gate::token_objects_exclusive(&held);
        let work = async {
            other.generate_aes_key(id).await?;
            let sealed = other
                .encrypt_gcm(id, pt(b"isolated"), aad_with(b"x"))
                .await?;
            other.destroy(id).await?;
            Ok::<_, HsmError>(sealed)
        };
        let done = tokio::time::timeout(Duration::from_secs(20), work).await;
        let sealed = done.expect("the other device waited for this one's lock");
        assert!(!sealed.unwrap().ciphertext_and_tag.is_empty());
        tokio::spawn({
            let held = Arc::clone(&held);
            async move { held.exists(id).await }
        })
    };
    let exists = tokio::time::timeout(Duration::from_secs(20), on_held).await;
    assert!(!exists.expect("the held device resumed").unwrap().unwrap());
    other.shutdown();
}
