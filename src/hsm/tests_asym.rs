//! Key pairs, signatures, RSA-OAEP and HMAC against a real SoftHSM2 token.

use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

use super::*;

fn new_id() -> ObjectId {
    ObjectId::new(*uuid::Uuid::new_v4().as_bytes(), 1)
}

fn open() -> Arc<Hsm> {
    Hsm::open(&super::tests::test_config()).expect("open Hsm")
}

#[tokio::test]
async fn ec_key_pairs_sign_and_verify_on_every_curve() {
    let hsm = open();
    for (curve, digest) in [
        (Curve::P256, Sha256::digest(b"m").to_vec()),
        (Curve::P384, Sha384::digest(b"m").to_vec()),
        (Curve::Secp256k1, Sha256::digest(b"m").to_vec()),
    ] {
        let id = new_id();
        hsm.generate_key_pair(id, PairSpec::Ec(curve), PairUsage::Sign)
            .await
            .unwrap_or_else(|e| panic!("{curve:?}: {e}"));
        let sig = hsm
            .sign(id, SignScheme::Ecdsa(curve), digest.clone())
            .await
            .unwrap();
        assert_eq!(sig[0], 0x30);
        assert!(hsm
            .verify(id, SignScheme::Ecdsa(curve), digest.clone(), sig.clone())
            .await
            .unwrap());
        let mut other = digest.clone();
        other[0] ^= 1;
        assert!(!hsm
            .verify(id, SignScheme::Ecdsa(curve), other, sig)
            .await
            .unwrap());
        let spki = hsm.public_key(id, PairSpec::Ec(curve)).await.unwrap();
        assert_eq!(spki[0], 0x30);
        let private = hsm.key_pair_attributes(id, true).await.unwrap();
        // Generated as session objects and copied to the token: the copy keeps the custody.
        assert!(private.sensitive && private.always_sensitive);
        assert!(!private.extractable && private.never_extractable);
        assert!(private.sign && !private.decrypt && private.token && private.private);
        assert_eq!(private.allowed_mechanisms, vec!["ECDSA".to_string()]);
        let public = hsm.key_pair_attributes(id, false).await.unwrap();
        assert!(public.verify && !public.encrypt && public.token);
        // Signing and verifying ran on session copies of the halves, as guarded as the token
        // objects.
        let copy = tests::copy_attributes(&hsm, id, objects::Part::Private).await;
        assert!(
            !copy.token && copy.private && copy.sign && !copy.decrypt,
            "{copy:?}"
        );
        assert!(copy.sensitive && copy.always_sensitive, "{copy:?}");
        assert!(!copy.extractable && copy.never_extractable, "{copy:?}");
        assert_eq!(copy.allowed_mechanisms, vec!["ECDSA".to_string()]);
        let session_objects = || async {
            hsm.list_objects()
                .await
                .unwrap()
                .iter()
                .filter(|o| o.id == id.0 && !o.token)
                .count()
        };
        assert_eq!(session_objects().await, 2, "one copy per half");
        hsm.destroy_key_pair(id).await.unwrap();
        assert_eq!(session_objects().await, 0, "the copies went with the pair");
        assert_eq!(
            hsm.destroy_key_pair(id).await.unwrap_err().kind,
            HsmErrorKind::ObjectNotFound
        );
    }
}

#[tokio::test]
async fn rsa_oaep_and_pss() {
    let hsm = open();
    let enc = new_id();
    hsm.generate_key_pair(enc, PairSpec::Rsa(2048), PairUsage::Decrypt)
        .await
        .unwrap();
    for h in [ShaAlg::Sha1, ShaAlg::Sha256] {
        let ct = hsm
            .rsa_encrypt(enc, h, Zeroizing::new(b"hello".to_vec()))
            .await
            .unwrap();
        assert_eq!(ct.len(), 256);
        let pt = hsm.rsa_decrypt(enc, h, ct.clone()).await.unwrap();
        assert_eq!(&pt[..], b"hello");
        let mut bad = ct;
        bad[10] ^= 1;
        assert_eq!(
            hsm.rsa_decrypt(enc, h, bad).await.unwrap_err().kind,
            HsmErrorKind::AuthFailed
        );
    }
    let sign = new_id();
    hsm.generate_key_pair(sign, PairSpec::Rsa(2048), PairUsage::Sign)
        .await
        .unwrap();
    let d = Sha256::digest(b"m").to_vec();
    for scheme in [SignScheme::RsaPss(ShaAlg::Sha256), SignScheme::RsaPkcs1] {
        let sig = hsm.sign(sign, scheme, d.clone()).await.unwrap();
        assert!(hsm
            .verify(sign, scheme, d.clone(), sig.clone())
            .await
            .unwrap());
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!hsm.verify(sign, scheme, d.clone(), bad).await.unwrap());
    }
    // Usage is enforced by the device: the signing key cannot decrypt.
    assert!(hsm
        .rsa_decrypt(sign, ShaAlg::Sha256, vec![0; 256])
        .await
        .is_err());
    hsm.destroy_key_pair(enc).await.unwrap();
    hsm.destroy_key_pair(sign).await.unwrap();
}

/// SoftHSM2 2.6 does RSA-OAEP with SHA-1 only: the probe says so, RSA decryption keys carry
/// `CKM_RSA_X_509` for it, and RSA signing keys never do.
#[tokio::test]
async fn softhsm_lacks_oaep_sha256_so_rsa_decryption_keys_allow_raw_rsa() {
    let hsm = open();
    assert_eq!(hsm.oaep_sha256().await.unwrap(), OaepSha256::RawRsa);
    let (enc, sign) = (new_id(), new_id());
    hsm.generate_key_pair(enc, PairSpec::Rsa(2048), PairUsage::Decrypt)
        .await
        .unwrap();
    hsm.generate_key_pair(sign, PairSpec::Rsa(2048), PairUsage::Sign)
        .await
        .unwrap();
    for private in [true, false] {
        let mut got = hsm
            .key_pair_attributes(enc, private)
            .await
            .unwrap()
            .allowed_mechanisms;
        got.sort();
        assert_eq!(got, ["RSA_PKCS_OAEP", "RSA_X_509"]);
        let got = hsm
            .key_pair_attributes(sign, private)
            .await
            .unwrap()
            .allowed_mechanisms;
        assert!(!got.contains(&"RSA_X_509".to_string()), "{got:?}");
    }
    hsm.destroy_key_pair(enc).await.unwrap();
    hsm.destroy_key_pair(sign).await.unwrap();
}

#[tokio::test]
async fn hmac_keys_and_data_key_pairs() {
    let hsm = open();
    let id = new_id();
    hsm.generate_hmac_key(id, MacAlg::Sha384).await.unwrap();
    let mac = hsm
        .generate_mac(id, MacAlg::Sha384, Zeroizing::new(b"msg".to_vec()))
        .await
        .unwrap();
    assert_eq!(mac.len(), 48);
    assert!(hsm
        .verify_mac(
            id,
            MacAlg::Sha384,
            Zeroizing::new(b"msg".to_vec()),
            mac.clone()
        )
        .await
        .unwrap());
    let mut bad = mac;
    bad[3] ^= 1;
    assert!(!hsm
        .verify_mac(id, MacAlg::Sha384, Zeroizing::new(b"msg".to_vec()), bad)
        .await
        .unwrap());
    let a = hsm.key_attributes(id).await.unwrap();
    assert!(a.sensitive && !a.extractable && a.never_extractable && a.sign && a.verify);
    assert!(!a.encrypt && !a.decrypt && !a.wrap && !a.unwrap && !a.derive);
    hsm.destroy(id).await.unwrap();

    let cmk = new_id();
    hsm.generate_aes_key(cmk).await.unwrap();
    for spec in [PairSpec::Ec(Curve::P521), PairSpec::Rsa(2048)] {
        let DataKeyPair {
            pkcs8,
            spki,
            sealed,
        } = hsm
            .generate_data_key_pair(spec, cmk, Box::new(|iv| iv.to_vec()))
            .await
            .unwrap();
        assert_eq!(pkcs8[0], 0x30);
        assert_eq!(spki[0], 0x30);
        let opened = hsm
            .decrypt_gcm(
                cmk,
                sealed.iv,
                sealed.ciphertext_and_tag,
                sealed.iv.to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(&opened[..], &pkcs8[..]);
        // The session objects are gone.
        assert!(!hsm
            .list_objects()
            .await
            .unwrap()
            .iter()
            .any(|o| o.label == "p11kms/data-key-pair"));
    }
    hsm.destroy(cmk).await.unwrap();
}

/// Key pairs are generated as session objects without the token-object lock (CMK pairs and
/// import wrapping keys are then copied to the token alone; data key pairs never touch it).
/// Prove that this is safe on SoftHSM2: encrypts, decrypts and attribute reads run on the
/// other workers while pairs are generated, copied and destroyed, and token AES keys are
/// created, read back and destroyed (exclusive jobs, overlapping the generations); not one
/// call may fail or answer garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_pair_generation_runs_alongside_reads_without_errors() {
    // The import tests count wrapping keys on the shared token: not while this makes some.
    let _one = super::unwrap_tests::SERIAL.lock().await;
    let mut cfg = super::tests::test_config();
    cfg.workers = 4;
    cfg.acquire_timeout = std::time::Duration::from_secs(60);
    let hsm = Hsm::open(&cfg).expect("open Hsm");
    let cmk = new_id();
    hsm.generate_aes_key(cmk).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let read_rounds = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let keys_made = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut readers = Vec::new();
    for r in 0..3u8 {
        let (hsm, stop, read_rounds) = (hsm.clone(), stop.clone(), read_rounds.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0u32;
            let mut errors = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = vec![r; 64];
                let aad = |iv: &[u8; 12]| [b"stress".as_slice(), iv].concat();
                let sealed = match hsm
                    .encrypt_gcm(cmk, Zeroizing::new(msg.clone()), Box::new(aad))
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(format!("encrypt: {e}"));
                        continue;
                    }
                };
                let aad = aad(&sealed.iv);
                match hsm
                    .decrypt_gcm(cmk, sealed.iv, sealed.ciphertext_and_tag, aad)
                    .await
                {
                    Ok(pt) if pt[..] == msg[..] => {}
                    Ok(_) => errors.push("decrypt: wrong plaintext".into()),
                    Err(e) => errors.push(format!("decrypt: {e}")),
                }
                match hsm.key_attributes(cmk).await {
                    Ok(a) if a.token && a.sensitive && a.never_extractable => {}
                    Ok(a) => errors.push(format!("attributes garbled: {a:?}")),
                    Err(e) => errors.push(format!("attributes: {e}")),
                }
                n += 1;
                read_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (n, errors)
        }));
    }
    // Token objects are created and destroyed (exclusive jobs) while pairs are generated.
    let writer_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (hsm, stop, keys_made) = (hsm.clone(), writer_stop.clone(), keys_made.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = new_id();
                hsm.generate_aes_key(id).await.unwrap();
                let a = hsm.key_attributes(id).await.unwrap();
                assert!(a.token && a.sensitive && a.always_sensitive && a.never_extractable);
                assert!(a.encrypt && a.decrypt && !a.extractable && !a.sign, "{a:?}");
                hsm.destroy(id).await.unwrap();
                n += 1;
                keys_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            n
        })
    };
    let mut generated = 0;
    // Reader rounds and writer keys completed while generations were in flight.
    let (mut reads_during, mut writes_during) = (0, 0);
    for round in 0..5 {
        let (reads_before, writes_before) = (
            read_rounds.load(std::sync::atomic::Ordering::Relaxed),
            keys_made.load(std::sync::atomic::Ordering::Relaxed),
        );
        let a = new_id();
        let b = new_id();
        let wrapping = unwrap::WrappingKeyId(*uuid::Uuid::new_v4().as_bytes());
        // Two generations at once (3 of 4 workers may generate).
        let (ra, rb, rw, rd) = tokio::join!(
            hsm.generate_key_pair(a, PairSpec::Rsa(2048), PairUsage::Sign),
            hsm.generate_key_pair(b, PairSpec::Ec(Curve::P256), PairUsage::Sign),
            hsm.generate_wrapping_key(wrapping, 2048, false),
            hsm.generate_data_key_pair(PairSpec::Rsa(2048), cmk, aad_of(b"dkp")),
        );
        reads_during += read_rounds.load(std::sync::atomic::Ordering::Relaxed) - reads_before;
        writes_during += keys_made.load(std::sync::atomic::Ordering::Relaxed) - writes_before;
        ra.unwrap_or_else(|e| panic!("round {round}: RSA pair: {e}"));
        rb.unwrap_or_else(|e| panic!("round {round}: EC pair: {e}"));
        assert!(matches!(
            rw.unwrap_or_else(|e| panic!("round {round}: wrapping key: {e}")),
            unwrap::WrappingKeyOutcome::Created(_)
        ));
        let pair = rd.unwrap_or_else(|e| panic!("round {round}: data key pair: {e}"));
        assert!(!pair.pkcs8.is_empty() && !pair.spki.is_empty());
        for id in [a, b] {
            let p = hsm.key_pair_attributes(id, true).await.unwrap();
            assert!(p.token && p.private && p.sensitive && p.always_sensitive);
            assert!(!p.extractable && p.never_extractable && p.sign);
            let digest = Sha256::digest(b"m").to_vec();
            let scheme = if id == a {
                SignScheme::RsaPss(ShaAlg::Sha256)
            } else {
                SignScheme::Ecdsa(Curve::P256)
            };
            let sig = hsm.sign(id, scheme, digest.clone()).await.unwrap();
            assert!(hsm.verify(id, scheme, digest, sig).await.unwrap());
            hsm.destroy_key_pair(id).await.unwrap();
        }
        let w = hsm.wrapping_key_attributes(wrapping).await.unwrap();
        assert!(w.token && w.private && w.sensitive && w.always_sensitive);
        assert!(!w.extractable && w.never_extractable && w.unwrap && !w.decrypt);
        hsm.destroy_wrapping_key(wrapping).await.unwrap();
        generated += 4;
    }
    // Each round copied two key pairs (two halves each) and one wrapping private key to the
    // token, and each pair's halves into session objects when it signed and verified (4 per
    // round); the CMK the readers and data key pairs use was copied into a session object on
    // its first use. Workers that met that first use at the same moment each made a copy and
    // all but one destroyed theirs (at most workers - 1 extra). Destroying the pairs destroyed
    // their session copies: the CMK's is left, alone.
    let copies = hsm.counters()["C_CopyObject"];
    assert!(
        (25 + 4 * 5 + 1..=25 + 4 * 5 + 4).contains(&copies),
        "{copies} copies"
    );
    assert_eq!(hsm.session_copies(), 1);
    let cmk_session_objects = hsm
        .list_objects()
        .await
        .unwrap()
        .iter()
        .filter(|o| o.id == cmk.0 && !o.token)
        .count();
    assert_eq!(cmk_session_objects, 1, "the losing copies were destroyed");
    writer_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let created = writer.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        let (n, errors) = r.await.unwrap();
        assert!(errors.is_empty(), "{} errors: {:?}", errors.len(), errors);
        total += n;
    }
    eprintln!(
        "{generated} key pairs generated alongside {total} encrypt+decrypt+read rounds and \
         {created} token AES keys created and destroyed"
    );
    // Overlap, not speed: how many rounds fit depends on the machine, but some reads and
    // some token writes must have finished while key pairs were being generated.
    assert!(
        reads_during > 0,
        "no read finished during a generation ({total} in all)"
    );
    assert!(
        writes_during > 0,
        "no token key made during a generation ({created} in all)"
    );
    // No session object of these generations is left behind.
    assert_eq!(
        pending_session_objects(&hsm).await,
        0,
        "session key pairs left behind"
    );
    hsm.destroy(cmk).await.unwrap();
}

fn aad_of(prefix: &'static [u8]) -> AadBuilder {
    Box::new(move |iv| [prefix, iv.as_slice()].concat())
}

/// The number of key-pair session objects not yet copied or destroyed, once other tests of
/// this process have finished theirs (polls up to 10 s).
async fn pending_session_objects(hsm: &Hsm) -> usize {
    let mut pending = usize::MAX;
    for _ in 0..100 {
        pending = hsm
            .list_objects()
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.label.starts_with(asym::PENDING_LABEL_PREFIX))
            .count();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    pending
}

/// A caller that gives up while its key pair is generated: the generating job destroys the
/// session objects itself, nothing reaches the token, and the id stays free.
#[tokio::test]
async fn an_abandoned_generation_leaves_nothing_behind() {
    let hsm = open();
    let id = new_id();
    let before = hsm.counters()["C_GenerateKeyPair"];
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        hsm.generate_key_pair(id, PairSpec::Rsa(3072), PairUsage::Sign),
    )
    .await;
    assert!(r.is_err(), "RSA-3072 generation takes longer than 100 ms");
    assert_eq!(pending_session_objects(&hsm).await, 0);
    assert_eq!(
        hsm.counters()["C_GenerateKeyPair"],
        before + 1,
        "the job ran"
    );
    assert_eq!(hsm.counters()["C_CopyObject"], 0, "nothing was copied");
    assert_eq!(
        hsm.key_pair_attributes(id, true).await.unwrap_err().kind,
        HsmErrorKind::ObjectNotFound
    );
    // The same id can still be generated, and then the pair is whole.
    hsm.generate_key_pair(id, PairSpec::Ec(Curve::P256), PairUsage::Sign)
        .await
        .unwrap();
    assert!(hsm.key_pair_attributes(id, false).await.unwrap().token);
    assert_eq!(hsm.counters()["C_CopyObject"], 2);
    hsm.destroy_key_pair(id).await.unwrap();
}
