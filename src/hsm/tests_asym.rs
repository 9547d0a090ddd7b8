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
        assert!(private.sensitive && !private.extractable && private.never_extractable);
        assert!(private.sign && !private.decrypt && private.token && private.private);
        assert_eq!(private.allowed_mechanisms, vec!["ECDSA".to_string()]);
        let public = hsm.key_pair_attributes(id, false).await.unwrap();
        assert!(public.verify && !public.encrypt);
        hsm.destroy_key_pair(id).await.unwrap();
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
