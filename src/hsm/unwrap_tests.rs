//! Import unwrap against a real SoftHSM2 token, material wrapped by the `openssl` CLI.

use std::process::Command;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::unwrap::*;
use super::*;

/// These tests count import objects on the shared token: one at a time.
pub(super) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Objects on the token that belong to imports (wrapping keys, check copies, ephemeral keys)
/// or to the given targets (their token objects: using a key makes a session copy of it).
async fn import_objects(h: &Hsm, targets: &[ObjectId]) -> usize {
    h.list_objects()
        .await
        .unwrap()
        .iter()
        .filter(|o| {
            o.label.starts_with("p11kms/import")
                || (o.token && targets.iter().any(|t| t.as_bytes().as_slice() == o.id))
        })
        .count()
}

fn hsm() -> Arc<Hsm> {
    Hsm::open(&tests::test_config()).expect("open test token")
}

#[path = "../../tests/common/openssl.rs"]
pub(super) mod openssl;

/// RSA-OAEP-wraps `material` under the DER SPKI with openssl (`md` = sha1 | sha256).
fn openssl_oaep(spki: &[u8], md: &str, material: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("wrapping.der");
    std::fs::write(&key, spki).unwrap();
    openssl::pkeyutl_oaep(Command::new("openssl"), &key, "DER", md, material)
}

/// RFC 5649 wrap of `material` under `kek` with openssl.
fn openssl_kwp(kek: &[u8], material: &[u8]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K"])
        .arg(hex::encode(kek))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(material)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn created(o: WrappingKeyOutcome) -> Vec<u8> {
    match o {
        WrappingKeyOutcome::Created(spki) => spki,
        other => panic!("{other:?}"),
    }
}

fn new_target() -> ObjectId {
    ObjectId::new(*uuid::Uuid::new_v4().as_bytes(), 1)
}

fn wrapping_id() -> WrappingKeyId {
    WrappingKeyId(*uuid::Uuid::new_v4().as_bytes())
}

/// Encrypts under `id` on the device and opens the result locally with `material`.
async fn proves_material(h: &Hsm, id: ObjectId, material: &[u8]) -> bool {
    let sealed = h
        .encrypt_gcm(
            id,
            Zeroizing::new(b"byok proof".to_vec()),
            Box::new(|_iv: &[u8; 12]| b"aad".to_vec()),
        )
        .await
        .unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).unwrap());
    let mut buf = sealed.ciphertext_and_tag.clone();
    key.open_in_place(
        Nonce::assume_unique_for_key(sealed.iv),
        Aad::from(b"aad"),
        &mut buf,
    )
    .map(|pt| pt == b"byok proof")
    .unwrap_or(false)
}

fn job(
    w: WrappingKeyId,
    algorithm: WrappingAlgorithm,
    wrapped: Vec<u8>,
    target: ObjectId,
    kind: MaterialKind,
    expected: Option<MaterialCheck>,
) -> ImportJob {
    ImportJob {
        wrapping_key: w,
        algorithm,
        wrapped,
        target,
        kind,
        expected,
        create_object: true,
    }
}

#[tokio::test]
async fn oaep_sha1_and_sha256_and_rsa_aes_import_the_right_aes_key() {
    let _one = SERIAL.lock().await;
    let h = hsm();
    let material = [0x5au8; 32];
    for (alg, md) in [
        (WrappingAlgorithm::RsaesOaepSha1, "sha1"),
        (WrappingAlgorithm::RsaesOaepSha256, "sha256"),
        (WrappingAlgorithm::RsaAesKeyWrapSha1, "sha1"),
        (WrappingAlgorithm::RsaAesKeyWrapSha256, "sha256"),
    ] {
        let w = wrapping_id();
        let before = import_objects(&h, &[]).await;
        let spki = match h
            .generate_wrapping_key(w, 2048, md == "sha256")
            .await
            .unwrap()
        {
            WrappingKeyOutcome::Created(spki) => spki,
            WrappingKeyOutcome::OaepSha256Unsupported => {
                // SoftHSM2 2.6: only SHA-1 OAEP. Refused with nothing left behind.
                assert_eq!(md, "sha256");
                assert_eq!(import_objects(&h, &[]).await, before);
                continue;
            }
        };
        let wrapped = if matches!(
            alg,
            WrappingAlgorithm::RsaesOaepSha1 | WrappingAlgorithm::RsaesOaepSha256
        ) {
            openssl_oaep(&spki, md, &material)
        } else {
            let kek = [0x11u8; 32];
            let mut w = openssl_oaep(&spki, md, &kek);
            w.extend(openssl_kwp(&kek, &material));
            w
        };
        let target = new_target();
        let out = h
            .import_material(job(w, alg, wrapped, target, MaterialKind::Aes256, None))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert!(
            matches!(out, ImportOutcome::Imported(_)),
            "{alg:?}: {out:?}"
        );
        assert!(proves_material(&h, target, &material).await, "{alg:?}");
        let attrs = h.key_attributes(target).await.unwrap();
        assert!(attrs.token && attrs.private && attrs.sensitive);
        assert!(!attrs.extractable && attrs.encrypt && attrs.decrypt);
        assert!(!attrs.wrap && !attrs.unwrap && !attrs.sign && !attrs.derive);
        assert_eq!(attrs.allowed_mechanisms, vec!["AES_GCM".to_string()]);
        h.destroy(target).await.unwrap();
        h.destroy_wrapping_key(w).await.unwrap();
    }
}

#[tokio::test]
async fn bad_inputs_leave_nothing_behind() {
    let _one = SERIAL.lock().await;
    let h = hsm();
    let before = import_objects(&h, &[]).await;
    let w = wrapping_id();
    let spki = created(h.generate_wrapping_key(w, 2048, false).await.unwrap());
    let material = [7u8; 32];
    let good = openssl_oaep(&spki, "sha1", &material);
    let first = new_target();
    let ImportOutcome::Imported(check) = h
        .import_material(job(
            w,
            WrappingAlgorithm::RsaesOaepSha1,
            good.clone(),
            first,
            MaterialKind::Aes256,
            None,
        ))
        .await
        .unwrap()
    else {
        panic!("first import")
    };
    let mut targets = vec![first];
    let with_first = import_objects(&h, &targets).await;

    // Garbled blob: AuthFailed (InvalidCiphertext), nothing created.
    let mut garbled = good.clone();
    garbled[10] ^= 0x40;
    let t = new_target();
    targets.push(t);
    let e = h
        .import_material(job(
            w,
            WrappingAlgorithm::RsaesOaepSha1,
            garbled,
            t,
            MaterialKind::Aes256,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, HsmErrorKind::AuthFailed, "{e}");

    // Wrong length for AES-256 (RSA_AES_KEY_WRAP: the RFC 5649 part gives the length away;
    // SoftHSM2 reports no CKA_VALUE_LEN for unwrapped keys, see unwrap.rs).
    let kek = [3u8; 32];
    let mut short = openssl_oaep(&spki, "sha1", &kek);
    short.extend(openssl_kwp(&kek, &[1u8; 16]));
    let out = h
        .import_material(job(
            w,
            WrappingAlgorithm::RsaAesKeyWrapSha1,
            short,
            new_target(),
            MaterialKind::Aes256,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(out, ImportOutcome::WrongLength(16));

    // Different material against the stored check value.
    let other = openssl_oaep(&spki, "sha1", &[8u8; 32]);
    let out = h
        .import_material(job(
            w,
            WrappingAlgorithm::RsaesOaepSha1,
            other,
            new_target(),
            MaterialKind::Aes256,
            Some(check.clone()),
        ))
        .await
        .unwrap();
    assert_eq!(out, ImportOutcome::Mismatch);

    // The same material again matches.
    let again = new_target();
    let out = h
        .import_material(job(
            w,
            WrappingAlgorithm::RsaesOaepSha1,
            good,
            again,
            MaterialKind::Aes256,
            Some(check.clone()),
        ))
        .await
        .unwrap();
    assert_eq!(out, ImportOutcome::Imported(check));
    assert!(proves_material(&h, again, &material).await);
    assert_eq!(import_objects(&h, &targets).await, with_first);
    targets.push(again);
    assert_eq!(import_objects(&h, &targets).await, with_first + 1);

    h.destroy(first).await.unwrap();
    h.destroy(again).await.unwrap();
    h.destroy_wrapping_key(w).await.unwrap();
    assert_eq!(import_objects(&h, &targets).await, before);
}

#[tokio::test]
async fn hmac_material_gets_the_contract_template() {
    let _one = SERIAL.lock().await;
    let h = hsm();
    let w = wrapping_id();
    let spki = created(h.generate_wrapping_key(w, 3072, false).await.unwrap());
    let material = [0x42u8; 32];
    let target = new_target();
    let kek = [0x24u8; 32];
    let mut wrapped = openssl_oaep(&spki, "sha1", &kek);
    wrapped.extend(openssl_kwp(&kek, &material));
    let out = h
        .import_material(job(
            w,
            WrappingAlgorithm::RsaAesKeyWrapSha1,
            wrapped,
            target,
            MaterialKind::Hmac(HmacSpec::Hmac256),
            None,
        ))
        .await
        .unwrap();
    let ImportOutcome::Imported(check) = out else {
        panic!("{out:?}")
    };
    // The check value is HMAC-SHA256(material, message): the right key arrived.
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&material).unwrap();
    mac.update(&check.message);
    assert_eq!(mac.finalize().into_bytes().to_vec(), check.value);
    let a = h.key_attributes(target).await.unwrap();
    assert!(a.token && a.private && a.sensitive && !a.extractable);
    assert!(a.sign && a.verify);
    assert!(!a.encrypt && !a.decrypt && !a.wrap && !a.unwrap && !a.derive);
    assert_eq!(a.allowed_mechanisms, vec!["SHA256_HMAC".to_string()]);
    h.destroy(target).await.unwrap();
    h.destroy_wrapping_key(w).await.unwrap();
    assert_eq!(
        h.destroy_wrapping_key(w).await.unwrap_err().kind,
        HsmErrorKind::ObjectNotFound
    );
}
