//! Wrapped residency (issue 19) on real SoftHSM2 tokens: the probes of the custody claims
//! the design rests on, and the use of wrapped keys through the worker caches.
//!
//! A trust ceremony logs the SO in, which fails while this process has an `Hsm` open on that
//! token: each token here has one owner (the shared token's ceremony runs once, before any
//! `Hsm` opens it; the ceremony and rotation tokens each belong to one test).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::call::Counters;
use super::tests::{aad_bytes, aad_with, cfg, new_id, pt, wrapped_tokens, MODULE};
use super::wrapped::{resolved_handle, BlobKind};
use super::*;

/// Held by the tests that make or count token objects on the shared token, one at a time.
static TOKEN_OBJECTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A blob source the tests fill and edit.
#[derive(Default)]
struct MapSource(
    Mutex<HashMap<ObjectId, Arc<WrappedBlob>>>,
    Mutex<HashMap<ObjectId, Arc<Vec<u8>>>>,
);

impl MapSource {
    fn put(&self, id: ObjectId, blob: WrappedBlob) {
        self.0.lock().unwrap().insert(id, Arc::new(blob));
    }

    fn put_pair(&self, id: ObjectId, blob: WrappedBlob, spki: Vec<u8>) {
        self.put(id, blob);
        self.1.lock().unwrap().insert(id, Arc::new(spki));
    }
}

impl BlobSource for MapSource {
    fn blob(&self, id: ObjectId) -> Option<Arc<WrappedBlob>> {
        self.0.lock().unwrap().get(&id).cloned()
    }

    fn public_key(&self, id: ObjectId) -> Option<Arc<Vec<u8>>> {
        self.1.lock().unwrap().get(&id).cloned()
    }
}

/// The shared wrapped token, its trusted master v1 made by the ceremony on first use.
fn shared_token() -> &'static str {
    static READY: OnceLock<String> = OnceLock::new();
    READY.get_or_init(|| {
        let t = wrapped_tokens();
        let outcome = trust_master(
            Path::new(MODULE),
            &t.shared,
            &t.so_pin,
            &t.user_pin,
            MasterVersion(1),
        )
        .expect("trust ceremony");
        assert_eq!(outcome, TrustOutcome::Created);
        t.shared
    })
}

fn open_with(label: &str, source: &Arc<MapSource>, tune: impl FnOnce(&mut HsmConfig)) -> Arc<Hsm> {
    let mut c = cfg(label);
    tune(&mut c);
    let hsm = Hsm::open(&c).expect("open");
    hsm.set_blob_source(source.clone());
    hsm
}

fn calls(hsm: &Hsm, f: &str) -> u64 {
    hsm.counters().get(f).copied().unwrap_or(0)
}

/// What the device says about the unwrapped session object of `id` in a worker's cache.
#[derive(Debug)]
struct CachedProbe {
    attrs: KeyAttributes,
    wrap_with_trusted: bool,
    value_sensitive: bool,
    wrap_under_untrusted: Result<Vec<u8>, HsmError>,
}

/// Object `h`'s custody attributes, whether `CKA_WRAP_WITH_TRUSTED` is true, and whether
/// `CKA_VALUE` is sensitive, as the device reads them back.
fn read_custody(
    ctx: &mut WorkerCtx,
    h: ObjectHandle,
) -> Result<(KeyAttributes, bool, bool), HsmError> {
    let attrs = ops::key_attributes_from(ops::custody_attributes(ctx, h)?);
    let wwt = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(h, &[AttributeType::WrapWithTrusted])
    })?;
    let info = ctx.call(Call::GetAttributeValue, |s| {
        s.get_attribute_info(h, &[AttributeType::Value])
    })?;
    let sensitive = matches!(info.first(), Some(AttributeInfo::Sensitive));
    Ok((
        attrs,
        wwt.contains(&Attribute::WrapWithTrusted(true)),
        sensitive,
    ))
}

async fn probe_cached(hsm: &Hsm, id: ObjectId) -> CachedProbe {
    hsm.submit(LockClass::Shared, "test_probe_cached", move |ctx| {
        let h = resolved_handle(ctx, &id)?;
        let (attrs, wrap_with_trusted, value_sensitive) = read_custody(ctx, h)?;
        let template = objects::session_wrapping_key_template();
        let wrapping = ctx.call(Call::GenerateKey, |s| {
            s.generate_key(&Mechanism::AesKeyGen, &template)
        })?;
        let wrap_under_untrusted = ctx.call(Call::WrapKey, |s| {
            s.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, h)
        });
        ctx.call(Call::DestroyObject, |s| s.destroy_object(wrapping))?;
        Ok(CachedProbe {
            attrs,
            wrap_with_trusted,
            value_sensitive,
            wrap_under_untrusted,
        })
    })
    .await
    .unwrap()
}

/// Decrypts what `encrypt_gcm(id, _, aad_with(b""))` sealed.
async fn open_empty_aad(hsm: &Hsm, id: ObjectId, sealed: &GcmSealed) -> Zeroizing<Vec<u8>> {
    let aad = aad_bytes(b"", &sealed.iv);
    hsm.decrypt_gcm(id, sealed.iv, sealed.ciphertext_and_tag.clone(), aad)
        .await
        .unwrap()
}

/// The token objects among `objects`, each (id, class) counted once: another test's
/// `C_CopyObject` in progress shows the original's `CKA_TOKEN` for an instant (see
/// `ops::find_unique`), and would otherwise count twice.
fn token_objects(objects: &[ObjectInfo]) -> usize {
    let token = objects.iter().filter(|o| o.token);
    token
        .map(|o| (&o.id, &o.class))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[tokio::test]
async fn unwrapped_copies_are_sensitive_and_wrap_only_under_trusted_keys() {
    let source = Arc::new(MapSource::default());
    // One worker: the probe sees the very object the generation cached.
    let hsm = open_with(shared_token(), &source, |c| c.workers = 1);
    assert_eq!(
        hsm.master_state().await.unwrap(),
        MasterState::Trusted(MasterVersion(1))
    );
    let id = new_id();
    let blob = hsm.generate_wrapped_aes(id).await.unwrap();
    assert_eq!(blob.master(), MasterVersion(1));
    assert_eq!(blob.kind(), BlobKind::Aes256);
    source.put(id, blob);
    let p = probe_cached(&hsm, id).await;
    assert!(!p.attrs.token, "a session object");
    assert!(p.attrs.private && p.attrs.sensitive && p.attrs.always_sensitive);
    assert!(p.attrs.extractable && p.wrap_with_trusted);
    assert!(p.attrs.encrypt && p.attrs.decrypt);
    assert!(!(p.attrs.wrap || p.attrs.unwrap || p.attrs.sign || p.attrs.derive));
    assert_eq!(p.attrs.allowed_mechanisms, vec!["AES_GCM".to_string()]);
    assert!(p.value_sensitive, "CKA_VALUE must not be readable");
    let e = p.wrap_under_untrusted.expect_err("the device must refuse");
    assert!(e.rv_is("CKR_KEY_NOT_WRAPPABLE"), "{e}");
    // The same probe on a copy unwrapped from the blob by a cold worker cache.
    let cold = open_with(shared_token(), &source, |_| {});
    let p = probe_cached(&cold, id).await;
    assert_eq!(cold.stats().wrapped_cache_misses, 1);
    assert!(!p.attrs.token && p.attrs.private && p.attrs.sensitive && p.wrap_with_trusted);
    assert!(p.attrs.encrypt && p.attrs.decrypt && !p.attrs.wrap);
    // Unwrapped material was once outside this object (PKCS#11: never "always sensitive").
    assert!(!p.attrs.always_sensitive && !p.attrs.never_extractable);
    assert!(p.value_sensitive);
    assert!(p
        .wrap_under_untrusted
        .unwrap_err()
        .rv_is("CKR_KEY_NOT_WRAPPABLE"));
}

/// A cached copy evicted and destroyed by another job while in use is a miss whatever the
/// failed call said (a half-destroyed object fails in any way: SoftHSM2 answered
/// CKR_KEY_FUNCTION_NOT_PERMITTED in a rotation under load), so the use is made again on a
/// fresh copy; a failure with no eviction is the answer, with no second try. And a copy made
/// while its key is being evicted is not kept.
#[tokio::test]
async fn a_copy_evicted_while_in_use_is_made_again() {
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let a = new_id();
    source.put(a, hsm.generate_wrapped_aes(a).await.unwrap());
    let probe = hsm.submit(LockClass::Shared, "test_evicted_in_use", move |ctx| {
        let first = resolved_handle(ctx, &a)?;
        let (mut calls, mut evicted) = (0, 0);
        let answer = wrapped::with_wrapped(ctx, &a, objects::Part::Secret, &mut |ctx, h| {
            calls += 1;
            if calls == 1 {
                evicted = wrapped::evict_wrapped(ctx, &a.key_id());
                return Err(HsmError::new(
                    HsmErrorKind::Other,
                    "C_EncryptInit",
                    "t",
                    "gone",
                ));
            }
            Ok(h)
        });
        let again = answer.expect("a wrapped key")?;
        let mut failures = 0;
        let failed = wrapped::with_wrapped(ctx, &a, objects::Part::Secret, &mut |_, _| {
            failures += 1;
            Err::<(), _>(HsmError::new(
                HsmErrorKind::Other,
                "C_EncryptInit",
                "t",
                "no",
            ))
        });
        let failed = failed.map(|r| r.map_err(|e| e.kind));
        // A copy made from a blob read before an eviction of its key began is not kept.
        wrapped::evict_wrapped(ctx, &a.key_id());
        let during = wrapped::with_wrapped(ctx, &a, objects::Part::Secret, &mut |ctx, _| {
            Ok(wrapped::evict_wrapped(ctx, &a.key_id()))
        });
        let during = during.map(|r| r.map_err(|e| e.kind));
        Ok((first, [calls, evicted], again, failures, failed, during))
    });
    let (first, [calls, evicted], again, failures, failed, during) = probe.await.unwrap();
    // This worker's copy, and the generating worker's if another worker generated it.
    assert!(
        (1..=2).contains(&evicted),
        "the cached copy was evicted: {evicted}"
    );
    assert_eq!(calls, 2, "the use is made again after the eviction");
    assert_ne!(again, first, "on a fresh copy");
    assert_eq!(failures, 1, "no eviction: no second try");
    assert_eq!(failed, Some(Err(HsmErrorKind::Other)));
    assert_eq!(
        during,
        Some(Ok(0)),
        "a miss: nothing of the key was cached then"
    );
    let resident = hsm.stats().wrapped_cache_resident;
    assert_eq!(resident, 0, "the copy made during an eviction was not kept");
}

#[tokio::test]
async fn a_cold_cache_decrypts_from_the_blob_alone() {
    let source = Arc::new(MapSource::default());
    let first = open_with(shared_token(), &source, |c| c.workers = 1);
    let id = new_id();
    source.put(id, first.generate_wrapped_aes(id).await.unwrap());
    let sealed = first
        .encrypt_gcm(id, pt(b"wrapped secret"), aad_with(b"ctx"))
        .await
        .unwrap();
    assert_eq!(
        first.stats().wrapped_cache_hits,
        1,
        "generation cached the key"
    );
    assert_eq!(first.stats().wrapped_cache_misses, 0);
    drop(first);
    // One worker: the caches are per worker.
    let second = open_with(shared_token(), &source, |c| c.workers = 1);
    let aad = aad_bytes(b"ctx", &sealed.iv);
    let unwraps = calls(&second, "C_UnwrapKey");
    let out = second
        .decrypt_gcm(
            id,
            sealed.iv,
            sealed.ciphertext_and_tag.clone(),
            aad.clone(),
        )
        .await
        .unwrap();
    assert_eq!(out.as_slice(), b"wrapped secret");
    assert_eq!(calls(&second, "C_UnwrapKey"), unwraps + 1);
    let again = second
        .decrypt_gcm(id, sealed.iv, sealed.ciphertext_and_tag, aad)
        .await
        .unwrap();
    assert_eq!(again.as_slice(), b"wrapped secret");
    let s = second.stats();
    assert_eq!((s.wrapped_cache_misses, s.wrapped_cache_hits), (1, 1));
    assert_eq!(s.wrapped_cache_resident, 1);
    assert_eq!(
        calls(&second, "C_UnwrapKey"),
        unwraps + 1,
        "the hit unwraps nothing"
    );
    // Eviction destroys the copy; the next use unwraps again.
    assert_eq!(second.evict_wrapped(id.key_id()).await.unwrap(), 1);
    assert_eq!(second.stats().wrapped_cache_resident, 0);
    second
        .encrypt_gcm(id, pt(b"x"), aad_with(b"ctx"))
        .await
        .unwrap();
    assert_eq!(second.stats().wrapped_cache_misses, 2);
}

#[tokio::test]
async fn edited_or_moved_blobs_are_refused_and_never_unwrapped() {
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let (a, b) = (new_id(), new_id());
    let blob_a = hsm.generate_wrapped_aes(a).await.unwrap();
    source.put(b, hsm.generate_wrapped_aes(b).await.unwrap());
    hsm.evict_wrapped(b.key_id()).await.unwrap();
    let unwraps = calls(&hsm, "C_UnwrapKey");
    // Moved: a's blob in b's row.
    source.put(b, blob_a.clone());
    let e = hsm
        .encrypt_gcm(b, pt(b"x"), aad_with(b""))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::BlobRejected, "{e}");
    assert!(
        e.rv_is("CKR_SIGNATURE_INVALID"),
        "as the device reports it: {e}"
    );
    // Edited: every single flipped byte.
    let bytes = blob_a.to_bytes();
    for i in 0..bytes.len() {
        let mut edited = bytes.clone();
        edited[i] ^= 0x01;
        let Ok(blob) = WrappedBlob::from_bytes(&edited) else {
            continue; // refused by its structure already
        };
        source.put(a, blob);
        hsm.evict_wrapped(a.key_id()).await.unwrap();
        let e = hsm
            .encrypt_gcm(a, pt(b"x"), aad_with(b""))
            .await
            .unwrap_err();
        assert_eq!(e.kind, HsmErrorKind::BlobRejected, "byte {i}: {e}");
    }
    assert_eq!(calls(&hsm, "C_UnwrapKey"), unwraps, "nothing was unwrapped");
    // The genuine blob still works.
    source.put(a, blob_a);
    hsm.encrypt_gcm(a, pt(b"x"), aad_with(b"")).await.unwrap();
    assert_eq!(calls(&hsm, "C_UnwrapKey"), unwraps + 1);
}

#[tokio::test]
async fn wrapped_hmac_keys_sign_and_verify_after_a_cold_start() {
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let id = new_id();
    let blob = hsm.generate_wrapped_hmac(id, MacAlg::Sha384).await.unwrap();
    assert_eq!(blob.kind(), BlobKind::Hmac(MacAlg::Sha384));
    source.put(id, blob);
    let mac = hsm
        .generate_mac(id, MacAlg::Sha384, pt(b"msg"))
        .await
        .unwrap();
    assert_eq!(mac.len(), 48);
    drop(hsm);
    let cold = open_with(shared_token(), &source, |c| c.workers = 1);
    assert!(cold
        .verify_mac(id, MacAlg::Sha384, pt(b"msg"), mac.clone())
        .await
        .unwrap());
    assert!(!cold
        .verify_mac(id, MacAlg::Sha384, pt(b"other"), mac)
        .await
        .unwrap());
    assert_eq!(cold.stats().wrapped_cache_misses, 1);
}

#[tokio::test]
async fn a_thousand_wrapped_keys_add_no_token_object() {
    let _serial = TOKEN_OBJECTS.lock().await;
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let before = token_objects(&hsm.list_objects().await.unwrap());
    let ids: Vec<ObjectId> = (0..1000).map(|_| new_id()).collect();
    for chunk in ids.chunks(50) {
        let mut jobs = tokio::task::JoinSet::new();
        for id in chunk.iter().copied() {
            let hsm = hsm.clone();
            jobs.spawn(async move { (id, hsm.generate_wrapped_aes(id).await) });
        }
        while let Some(done) = jobs.join_next().await {
            let (id, blob) = done.unwrap();
            source.put(id, blob.unwrap());
        }
    }
    assert_eq!(token_objects(&hsm.list_objects().await.unwrap()), before);
    // Every one of them serves.
    for id in ids.iter().step_by(97) {
        hsm.encrypt_gcm(*id, pt(b"x"), aad_with(b"")).await.unwrap();
    }
}

#[tokio::test]
async fn a_full_cache_evicts_the_oldest_and_still_serves_it() {
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |c| {
        c.workers = 1;
        c.wrapped_cache = 2;
    });
    let ids = [new_id(), new_id(), new_id()];
    let mut sealed = Vec::new();
    for id in ids {
        source.put(id, hsm.generate_wrapped_aes(id).await.unwrap());
        sealed.push(
            hsm.encrypt_gcm(id, pt(b"lru"), aad_with(b""))
                .await
                .unwrap(),
        );
    }
    let s = hsm.stats();
    assert_eq!(
        (s.wrapped_cache_evictions, s.wrapped_cache_resident),
        (1, 2)
    );
    assert_eq!(s.wrapped_cache_misses, 0);
    // The first key was pushed out: it is unwrapped again, and pushes out the second.
    let out = open_empty_aad(&hsm, ids[0], &sealed[0]).await;
    assert_eq!(out.as_slice(), b"lru");
    let s = hsm.stats();
    assert_eq!((s.wrapped_cache_misses, s.wrapped_cache_evictions), (1, 2));
    assert_eq!(s.wrapped_cache_resident, 2);
}

#[tokio::test]
async fn a_cache_of_zero_unwraps_on_every_use_and_keeps_nothing() {
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |c| c.wrapped_cache = 0);
    let id = new_id();
    source.put(id, hsm.generate_wrapped_aes(id).await.unwrap());
    for _ in 0..2 {
        hsm.encrypt_gcm(id, pt(b"x"), aad_with(b"")).await.unwrap();
    }
    let s = hsm.stats();
    assert_eq!((s.wrapped_cache_misses, s.wrapped_cache_hits), (2, 0));
    assert_eq!(
        (s.wrapped_cache_resident, s.wrapped_cache_evictions),
        (0, 3)
    );
}

// ---------------------------------------------------------------- ceremony probes

/// A raw R/W session on `label` (the probes below act as the SO or the user directly).
fn raw_session(label: &str) -> Session {
    let c = Counters::default();
    let pkcs11 = module::module(Path::new(MODULE), label, &c).unwrap().pkcs11;
    let slot = module::find_token(&pkcs11, label, &c).unwrap();
    pkcs11.open_rw_session(slot).unwrap()
}

fn find(s: &Session, id: &[u8]) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::Token(true), Attribute::Id(id.to_vec())])
        .unwrap()
}

async fn master_attributes(hsm: &Hsm, v: MasterVersion) -> (KeyAttributes, bool, String) {
    hsm.submit(LockClass::Shared, "test_master_attributes", move |ctx| {
        let h = wrapped::find_one(ctx, &v.cka_id())?.expect("master present");
        let attrs = ops::key_attributes_from(ops::custody_attributes(ctx, h)?);
        let more = ctx.call(Call::GetAttributeValue, |s| {
            s.get_attributes(h, &[AttributeType::Trusted, AttributeType::Label])
        })?;
        let trusted = more.contains(&Attribute::Trusted(true));
        let label = more
            .iter()
            .find_map(|a| match a {
                Attribute::Label(l) => Some(String::from_utf8_lossy(l).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        Ok((attrs, trusted, label))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_ceremony_makes_a_private_trusted_master_the_so_cannot_see() {
    let t = wrapped_tokens();
    let token = t.ceremony.as_str();
    let v1 = MasterVersion(1);
    let source = Arc::new(MapSource::default());
    let hsm = open_with(token, &source, |_| {});
    assert_eq!(hsm.master_state().await.unwrap(), MasterState::Absent);
    assert!(hsm.create_master_untrusted(v1).await.unwrap());
    assert!(
        !hsm.create_master_untrusted(v1).await.unwrap(),
        "idempotent"
    );
    assert_eq!(
        hsm.master_state().await.unwrap(),
        MasterState::Untrusted(v1)
    );
    let (attrs, trusted, _) = master_attributes(&hsm, v1).await;
    assert!(!trusted && attrs.token && attrs.private);
    // p11kms never wraps under an untrusted master.
    let e = hsm.generate_wrapped_aes(new_id()).await.unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::Config, "{e}");
    assert_eq!(calls(&hsm, "C_WrapKey"), 0);
    drop(hsm);

    // The user cannot make a trusted key, nor mark the master trusted.
    let s = raw_session(token);
    s.login(UserType::User, Some(&AuthPin::from(t.user_pin.expose())))
        .unwrap();
    let trusted_key = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Trusted(true),
    ];
    let e = s
        .generate_key(&Mechanism::AesKeyGen, &trusted_key)
        .unwrap_err();
    assert!(
        matches!(e, CkError::Pkcs11(RvError::AttributeReadOnly, _)),
        "{e}"
    );
    let master = find(&s, &v1.cka_id());
    assert_eq!(master.len(), 1);
    let e = s
        .update_attributes(master[0], &[Attribute::Trusted(true)])
        .unwrap_err();
    assert!(
        matches!(e, CkError::Pkcs11(RvError::AttributeReadOnly, _)),
        "{e}"
    );
    s.logout().unwrap();
    s.close().unwrap();

    let cer = |v| trust_master(Path::new(MODULE), token, &t.so_pin, &t.user_pin, v);
    assert_eq!(cer(v1).unwrap(), TrustOutcome::Replaced);
    assert_eq!(cer(v1).unwrap(), TrustOutcome::AlreadyTrusted);

    // The SO cannot see the private master (nor its bind key).
    let s = raw_session(token);
    s.login(UserType::So, Some(&AuthPin::from(t.so_pin.expose())))
        .unwrap();
    assert!(find(&s, &v1.cka_id()).is_empty());
    assert!(find(&s, &v1.bind_cka_id()).is_empty());
    s.logout().unwrap();
    s.close().unwrap();

    let hsm = open_with(token, &source, |_| {});
    assert_eq!(hsm.master_state().await.unwrap(), MasterState::Trusted(v1));
    assert_eq!(hsm.masters().await.unwrap(), vec![(v1, true)]);
    let (attrs, trusted, label) = master_attributes(&hsm, v1).await;
    assert!(trusted, "CKA_TRUSTED reads true");
    assert_eq!(label, "p11kms/master/v1");
    assert!(attrs.token && attrs.private && attrs.sensitive && attrs.always_sensitive);
    assert!(!attrs.extractable && attrs.never_extractable);
    assert!(attrs.wrap && attrs.unwrap);
    assert!(!(attrs.encrypt || attrs.decrypt || attrs.sign || attrs.verify || attrs.derive));
    assert_eq!(
        attrs.allowed_mechanisms,
        vec!["AES_KEY_WRAP_PAD".to_string()]
    );
    // One master and one bind key on the token; the ceremony's session object is gone.
    let objects = hsm.list_objects().await.unwrap();
    assert_eq!(objects.len(), 2, "{objects:?}");
    let id = new_id();
    source.put(id, hsm.generate_wrapped_aes(id).await.unwrap());
    hsm.encrypt_gcm(id, pt(b"x"), aad_with(b"")).await.unwrap();
}

#[tokio::test]
async fn rotation_under_load_rewraps_to_v2_and_old_ciphertexts_still_decrypt() {
    let t = wrapped_tokens();
    let token = t.rotation.as_str();
    let cer = |v| trust_master(Path::new(MODULE), token, &t.so_pin, &t.user_pin, v);
    let (v1, v2) = (MasterVersion(1), MasterVersion(2));
    assert_eq!(cer(v1).unwrap(), TrustOutcome::Created);
    let source = Arc::new(MapSource::default());
    let hsm = open_with(token, &source, |_| {});
    let (a, m) = (new_id(), new_id());
    let blob_a = Arc::new(hsm.generate_wrapped_aes(a).await.unwrap());
    let blob_m = Arc::new(hsm.generate_wrapped_hmac(m, MacAlg::Sha256).await.unwrap());
    source.put(a, (*blob_a).clone());
    source.put(m, (*blob_m).clone());
    let sealed = hsm
        .encrypt_gcm(a, pt(b"before rotation"), aad_with(b""))
        .await
        .unwrap();
    let mac = hsm.generate_mac(m, MacAlg::Sha256, pt(b"m")).await.unwrap();
    // Rewrapping needs a trusted v2: the SO's ceremony makes it (no Hsm open meanwhile).
    drop(hsm);
    assert_eq!(cer(v2).unwrap(), TrustOutcome::Created);
    let hsm = open_with(token, &source, |_| {});
    assert_eq!(hsm.masters().await.unwrap(), vec![(v1, true), (v2, true)]);
    // Load on `a` through the whole rotation: every request must succeed.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (hsm, done) = (hsm.clone(), done.clone());
        load.spawn(async move {
            let mut served = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || served == 0 {
                hsm.encrypt_gcm(a, pt(b"load"), aad_with(b"")).await?;
                served += 1;
            }
            Ok::<u32, HsmError>(served)
        });
    }
    let new_a = hsm.rewrap(a, blob_a.clone(), v2).await.unwrap();
    let new_m = hsm.rewrap(m, blob_m, v2).await.unwrap();
    assert_eq!((new_a.master(), new_m.master()), (v2, v2));
    // A blob is rewrapped only for its own id.
    let e = hsm.rewrap(m, blob_a, v2).await.unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::BlobRejected);
    // New keys go under v2.
    assert_eq!(
        hsm.generate_wrapped_aes(new_id()).await.unwrap().master(),
        v2
    );
    // Swap the blobs, drop the copies unwrapped under v1 (the load unwraps v2's), retire v1.
    source.put(a, new_a);
    source.put(m, new_m);
    hsm.evict_wrapped(a.key_id()).await.unwrap();
    hsm.destroy_master(v1).await.unwrap();
    assert_eq!(hsm.masters().await.unwrap(), vec![(v2, true)]);
    hsm.evict_wrapped(a.key_id()).await.unwrap();
    hsm.encrypt_gcm(a, pt(b"x"), aad_with(b"")).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(task) = load.join_next().await {
        assert!(task.unwrap().expect("no failed request during rotation") > 0);
    }
    drop(hsm);
    let cold = open_with(token, &source, |_| {});
    let out = open_empty_aad(&cold, a, &sealed).await;
    assert_eq!(out.as_slice(), b"before rotation");
    assert!(cold
        .verify_mac(m, MacAlg::Sha256, pt(b"m"), mac)
        .await
        .unwrap());
    // A blob still under the retired master is refused, not unwrapped.
    let id = new_id();
    let mut old = new_id_blob_under(&cold, id).await;
    old[1..5].copy_from_slice(&1u32.to_be_bytes());
    source.put(id, WrappedBlob::from_bytes(&old).unwrap());
    let e = cold
        .encrypt_gcm(id, pt(b"x"), aad_with(b""))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::BlobRejected, "{e}");
}

use super::unwrap_tests::openssl;

/// What the device says of the token object of `id`: its custody attributes, whether
/// `CKA_WRAP_WITH_TRUSTED` is true, and whether `CKA_VALUE` is sensitive.
async fn token_custody(hsm: &Hsm, id: ObjectId) -> (KeyAttributes, bool, bool) {
    hsm.submit(LockClass::Shared, "test_token_custody", move |ctx| {
        let h = ops::find_part(ctx, &id, objects::Part::Secret)?.expect("token object");
        read_custody(ctx, h)
    })
    .await
    .unwrap()
}

/// `p11kms check` and residency migration: a blob is checked on the device; a wrapped key
/// (AES and HMAC) moves to a token object with the custody of its wrapped copies, checked
/// against the blob; a second run finds the object and makes no other; the token object then
/// moves back to a blob (checked to unwrap to the same key) and old answers still verify
/// through each residency.
#[tokio::test]
async fn blobs_move_to_the_token_and_back() {
    let _serial = TOKEN_OBJECTS.lock().await;
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let (a, b, m) = (new_id(), new_id(), new_id());
    let blob = Arc::new(hsm.generate_wrapped_aes(a).await.unwrap());
    source.put(a, (*blob).clone());
    source.put(
        m,
        hsm.generate_wrapped_hmac(m, MacAlg::Sha256).await.unwrap(),
    );
    hsm.check_wrapped(a, blob.clone()).await.unwrap();
    let e = hsm.check_wrapped(b, blob.clone()).await.unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::BlobRejected);
    let sealed = hsm
        .encrypt_gcm(a, pt(b"migrate"), aad_with(b""))
        .await
        .unwrap();
    let mac = hsm.generate_mac(m, MacAlg::Sha256, pt(b"m")).await.unwrap();
    let before = token_objects(&hsm.list_objects().await.unwrap());

    // Wrapped -> token, twice: the second run checks the object the first one made.
    for id in [a, m] {
        let blob = source.blob(id).unwrap();
        hsm.wrapped_to_token(id, blob.clone()).await.unwrap();
        hsm.wrapped_to_token(id, blob).await.unwrap();
        let (attrs, wwt, value_sensitive) = token_custody(&hsm, id).await;
        assert!(attrs.token && attrs.private && attrs.sensitive, "{attrs:?}");
        assert!(
            attrs.extractable && wwt,
            "it must be able to move back: {attrs:?}"
        );
        assert!(value_sensitive, "CKA_VALUE must not be readable");
        let e = hsm.try_wrap_with_new_key(id).await.unwrap_err();
        assert!(e.rv_is("CKR_KEY_NOT_WRAPPABLE"), "{e}");
        source.0.lock().unwrap().remove(&id);
        hsm.evict_wrapped(id.key_id()).await.unwrap();
    }
    let objects = hsm.list_objects().await.unwrap();
    assert_eq!(
        token_objects(&objects),
        before + 2,
        "one token object per key"
    );
    assert_eq!(
        open_empty_aad(&hsm, a, &sealed).await.as_slice(),
        b"migrate"
    );
    let mac_ok = hsm.verify_mac(m, MacAlg::Sha256, pt(b"m"), mac.clone());
    assert!(
        mac_ok.await.unwrap(),
        "the token object verifies the old MAC"
    );

    // Token -> wrapped: a blob checked on the device, then the token object goes.
    for id in [a, m] {
        let TokenMove::Wrapped(back) = hsm.token_to_wrapped(id).await.unwrap() else {
            panic!("a key that came from a blob is extractable under the master");
        };
        hsm.check_wrapped(id, Arc::new(back.clone())).await.unwrap();
        source.put(id, back);
        hsm.destroy(id).await.unwrap();
        assert!(!hsm.exists(id).await.unwrap());
    }
    assert_eq!(
        open_empty_aad(&hsm, a, &sealed).await.as_slice(),
        b"migrate"
    );
    let mac_ok = hsm.verify_mac(m, MacAlg::Sha256, pt(b"m"), mac);
    assert!(mac_ok.await.unwrap(), "the new blob verifies the old MAC");
    let objects = hsm.list_objects().await.unwrap();
    assert_eq!(token_objects(&objects), before);
    // A key pair's blob has no token form here.
    let e = hsm.wrapped_to_token(b, blob_of_pair(&hsm, b).await).await;
    assert_eq!(e.unwrap_err().kind, HsmErrorKind::Config);
}

/// A blob of a wrapped key pair (its private half) for `id`.
async fn blob_of_pair(hsm: &Hsm, id: ObjectId) -> Arc<WrappedBlob> {
    let (blob, _) = hsm
        .generate_wrapped_pair(id, PairSpec::Ec(Curve::P256), PairUsage::Sign)
        .await
        .unwrap();
    Arc::new(blob)
}

/// Why token -> wrapped skips keys born in token residency: the device refuses to wrap a
/// never-extractable token key even under the trusted master (`CKR_KEY_UNEXTRACTABLE`), and
/// refuses to make it extractable, by `C_SetAttributeValue` or by `C_CopyObject`.
#[tokio::test]
async fn token_born_keys_never_become_blobs() {
    let _serial = TOKEN_OBJECTS.lock().await;
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let a = new_id();
    hsm.generate_aes_key(a).await.unwrap();
    assert!(matches!(
        hsm.token_to_wrapped(a).await.unwrap(),
        TokenMove::NeverExtractable
    ));
    let probe = hsm.submit(LockClass::Shared, "test_extractable", move |ctx| {
        let h = ops::find_part(ctx, &a, objects::Part::Secret)?.expect("token object");
        let wrap = wrapped::try_wrap_under_master(ctx, MasterVersion(1), h);
        // Counted as C_GetAttributeValue: the counters have no C_SetAttributeValue.
        let set = ctx.call(Call::GetAttributeValue, |s| {
            s.update_attributes(h, &[Attribute::Extractable(true)])
        });
        let copy = ctx.call(Call::CopyObject, |s| {
            s.copy_object(h, &[Attribute::Token(false), Attribute::Extractable(true)])
        });
        Ok((wrap, set, copy))
    });
    let (wrap, set, copy) = probe.await.unwrap();
    let e = wrap.expect_err("the device must refuse to wrap it");
    assert!(e.rv_is("CKR_KEY_UNEXTRACTABLE"), "{e}");
    let e = set.expect_err("setting CKA_EXTRACTABLE true must fail");
    assert!(e.rv_is("CKR_ATTRIBUTE_READ_ONLY"), "{e}");
    assert!(copy.is_err(), "a copy with CKA_EXTRACTABLE true must fail");
    let attrs = hsm.key_attributes(a).await.unwrap();
    assert!(!attrs.extractable && attrs.never_extractable, "{attrs:?}");
    hsm.destroy(a).await.unwrap();
}

/// Imported material (BYOK) in wrapped residency: checked on a session copy, wrapped under the
/// master on the device, no token object for the key; the blob alone serves it afterwards,
/// and a re-import with other material is refused.
#[tokio::test]
async fn imported_material_is_rewrapped_under_the_master() {
    let _serial = TOKEN_OBJECTS.lock().await;
    use super::unwrap::{ImportJob, ImportOutcome, MaterialKind, WrappingAlgorithm};
    use super::unwrap::{WrappingKeyId, WrappingKeyOutcome};
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |c| c.workers = 1);
    let w = WrappingKeyId(*uuid::Uuid::new_v4().as_bytes());
    let WrappingKeyOutcome::Created(spki) =
        hsm.generate_wrapping_key(w, 2048, false).await.unwrap()
    else {
        panic!("no wrapping key");
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("wrapping.der");
    std::fs::write(&key, &spki).unwrap();
    let oaep = |m: &[u8]| {
        openssl::pkeyutl_oaep(
            std::process::Command::new("openssl"),
            &key,
            "DER",
            "sha1",
            m,
        )
    };
    let material = [0x5au8; 32];
    let target = new_id();
    let job = |wrapped, expected| ImportJob {
        wrapping_key: w,
        algorithm: WrappingAlgorithm::RsaesOaepSha1,
        wrapped,
        target,
        kind: MaterialKind::Aes256,
        expected,
        create_object: true,
    };
    let before = token_objects(&hsm.list_objects().await.unwrap());
    let (outcome, blob) = hsm
        .import_material_wrapped(job(oaep(&material), None))
        .await
        .unwrap();
    let ImportOutcome::Imported(check) = outcome else {
        panic!("{outcome:?}")
    };
    let blob = blob.expect("a blob");
    assert_eq!(blob.master(), MasterVersion(1));
    assert_eq!(token_objects(&hsm.list_objects().await.unwrap()), before);
    // Other material for the same key is refused, and no blob comes back.
    let (outcome, none) = hsm
        .import_material_wrapped(job(oaep(&[0x11u8; 32]), Some(check)))
        .await
        .unwrap();
    assert_eq!((outcome, none), (ImportOutcome::Mismatch, None));
    source.put(target, blob);
    drop(hsm);
    // A cold cache opens with the blob: the device encrypts under the imported material.
    let cold = open_with(shared_token(), &source, |_| {});
    let sealed = cold
        .encrypt_gcm(target, pt(b"byok"), aad_with(b""))
        .await
        .unwrap();
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &material).unwrap());
    let mut buf = sealed.ciphertext_and_tag.clone();
    let aad = aad_bytes(b"", &sealed.iv);
    let opened = k
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.iv),
            Aad::from(&aad),
            &mut buf,
        )
        .expect("the imported material encrypted it");
    assert_eq!(opened, b"byok");
    cold.destroy_wrapping_key(w).await.unwrap();
}

/// The bytes of a fresh blob for `id` (the key itself is evicted again).
async fn new_id_blob_under(hsm: &Hsm, id: ObjectId) -> Vec<u8> {
    let blob = hsm.generate_wrapped_aes(id).await.unwrap();
    hsm.evict_wrapped(id.key_id()).await.unwrap();
    blob.to_bytes()
}

/// Key pairs in wrapped residency: the private half wrapped, the public half only as SPKI.
/// An EC signature verifies (in software) under the SPKI; RSA-OAEP ciphertexts made with the
/// SPKI (openssl) decrypt on a cold cache, SHA-1 on the device and SHA-256 with the padding
/// done here (the modulus read from the unwrapped private half). No token object is made.
#[tokio::test]
async fn wrapped_key_pairs_sign_and_decrypt_from_their_blobs() {
    use sha2::Digest as _;
    let source = Arc::new(MapSource::default());
    let hsm = open_with(shared_token(), &source, |_| {});
    let (ec, rsa) = (new_id(), new_id());
    let (blob, ec_spki) = hsm
        .generate_wrapped_pair(ec, PairSpec::Ec(Curve::P256), PairUsage::Sign)
        .await
        .unwrap();
    assert!(matches!(blob.kind(), BlobKind::Private { .. }));
    source.put_pair(ec, blob, ec_spki.clone());
    let (blob, rsa_spki) = hsm
        .generate_wrapped_pair(rsa, PairSpec::Rsa(2048), PairUsage::Decrypt)
        .await
        .unwrap();
    source.put_pair(rsa, blob, rsa_spki.clone());
    // No token object of either pair: counted by their own ids, since a test of another
    // module may add or remove token objects of its own meanwhile.
    let objects = hsm.list_objects().await.unwrap();
    let ours = objects
        .iter()
        .filter(|o| o.token)
        .filter_map(|o| ObjectId::from_bytes(&o.id));
    let ours: Vec<_> = ours
        .filter(|id| [ec.key_id(), rsa.key_id()].contains(&id.key_id()))
        .collect();
    assert!(ours.is_empty(), "token objects of wrapped pairs: {ours:?}");
    drop(hsm);

    let cold = open_with(shared_token(), &source, |_| {});
    let digest = sha2::Sha256::digest(b"signed message").to_vec();
    let scheme = SignScheme::Ecdsa(Curve::P256);
    let sig = cold.sign(ec, scheme, digest.clone()).await.unwrap();
    // The public half: a session object made from the SPKI verifies on the device.
    assert!(cold
        .verify(ec, scheme, digest.clone(), sig.clone())
        .await
        .unwrap());
    let mut forged = sig.clone();
    *forged.last_mut().unwrap() ^= 1;
    assert!(!cold.verify(ec, scheme, digest, forged).await.unwrap());
    let point = Hsm::ec_point_from_spki(&ec_spki, Curve::P256).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(b"signed message", &sig)
        .expect("the signature verifies under the SPKI");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.der");
    std::fs::write(&key, &rsa_spki).unwrap();
    for (md, hash) in [("sha1", ShaAlg::Sha1), ("sha256", ShaAlg::Sha256)] {
        let cmd = std::process::Command::new("openssl");
        let ct = openssl::pkeyutl_oaep(cmd, &key, "DER", md, b"pair secret");
        let out = cold.rsa_decrypt(rsa, hash, ct).await.unwrap();
        assert_eq!(out.as_slice(), b"pair secret", "{md}");
        let ct = cold
            .rsa_encrypt(rsa, hash, pt(b"device encrypt"))
            .await
            .unwrap();
        let out = cold.rsa_decrypt(rsa, hash, ct).await.unwrap();
        assert_eq!(out.as_slice(), b"device encrypt", "{md}");
    }
    // Public objects are cached like private ones: each of the four objects is resident on
    // at least one worker.
    assert!(cold.stats().wrapped_cache_resident >= 4);
    assert!(cold.stats().wrapped_cache_misses >= 2);
    // Probe: SoftHSM2 2.6 does not wrap EdDSA private keys, so an Ed25519 key cannot be
    // wrapped: refused by the device, and nothing is left behind.
    let e = cold
        .generate_wrapped_pair(new_id(), PairSpec::Ed25519, PairUsage::Sign)
        .await
        .unwrap_err();
    assert!(e.rv_is("CKR_KEY_NOT_WRAPPABLE"), "{e}");
    let pending = cold.list_objects().await.unwrap();
    assert!(!pending
        .iter()
        .any(|o| o.label.starts_with(asym::PENDING_LABEL_PREFIX) && !o.token));
}
