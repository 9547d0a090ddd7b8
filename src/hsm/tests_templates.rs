//! The attributes of every kind of object p11kms creates: each template, attribute by
//! attribute, against what it has been since before the template builder (issue 13), and
//! the usage flags of each kind of token object read back from a real SoftHSM2 token. A
//! flipped flag fails here.

use cryptoki::object::Attribute;

use super::oaep::OaepSha256;
use super::objects::{class_name, mechanism_name};
use super::unwrap::{HmacSpec, MaterialKind, WrappingKeyId};
use super::*;

/// One template as sorted words: `+encrypt` / `-encrypt` for booleans, `name=value` else.
fn summary(t: &[Attribute]) -> String {
    let flag = |name: &str, on: &bool| format!("{}{name}", if *on { '+' } else { '-' });
    let mut words: Vec<String> = t
        .iter()
        .map(|a| match a {
            Attribute::Class(c) => format!("class={}", class_name(*c)),
            Attribute::KeyType(k) => format!("type={}", k.to_string().trim_start_matches("CKK_")),
            Attribute::ValueLen(n) => format!("len={}", u64::from(*n)),
            Attribute::ModulusBits(n) => format!("bits={}", u64::from(*n)),
            Attribute::PublicExponent(e) => format!("e={}", hex::encode(e)),
            Attribute::EcParams(p) => format!("ec={}", hex::encode(p)),
            Attribute::Id(id) => format!("id={}B", id.len()),
            Attribute::Label(l) => format!("label={}", String::from_utf8_lossy(l)),
            Attribute::AllowedMechanisms(m) => format!(
                "mechs={}",
                m.iter()
                    .map(|m| mechanism_name(*m))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Attribute::Token(v) => flag("token", v),
            Attribute::Private(v) => flag("private", v),
            Attribute::Sensitive(v) => flag("sensitive", v),
            Attribute::Extractable(v) => flag("extractable", v),
            Attribute::Encrypt(v) => flag("encrypt", v),
            Attribute::Decrypt(v) => flag("decrypt", v),
            Attribute::Sign(v) => flag("sign", v),
            Attribute::Verify(v) => flag("verify", v),
            Attribute::SignRecover(v) => flag("signrecover", v),
            Attribute::VerifyRecover(v) => flag("verifyrecover", v),
            Attribute::Wrap(v) => flag("wrap", v),
            Attribute::Unwrap(v) => flag("unwrap", v),
            Attribute::Derive(v) => flag("derive", v),
            other => panic!("unexpected attribute in a template: {other:?}"),
        })
        .collect();
    words.sort();
    let n = words.len();
    words.dedup();
    assert_eq!(n, words.len(), "an attribute is written twice: {t:?}");
    words.join(" ")
}

fn sorted(s: &str) -> String {
    let mut w: Vec<&str> = s.split_whitespace().collect();
    w.sort();
    w.join(" ")
}

const P256: &str = "06082a8648ce3d030107";
const P384: &str = "06052b81040022";

/// Every template, against the attributes it had before issue 13. The wrapping-key and OAEP
/// probe templates gained `CKA_CLASS` and `CKA_KEY_TYPE`, which `C_GenerateKeyPair` with an
/// RSA mechanism gives those halves anyway: the objects are the same.
#[test]
fn every_template_has_the_attributes_it_always_had() {
    let id = ObjectId::new([0x11; 16], 1);
    let l = "label=p11kms/11111111-1111-1111-1111-111111111111/v1";
    let guarded = "+private +sensitive -extractable";
    let pair = |spec, usage, oaep| {
        let (_, public, private) = asym::cmk_pair_generation(&id, spec, usage, oaep);
        (summary(&public), summary(&private))
    };
    let (data_public, data_private) = asym::data_key_pair_templates(PairSpec::Ec(Curve::P384));
    let cases: Vec<(&str, String, String)> = vec![
        ("CMK AES", summary(&objects::cmk_aes_template(&id, &id.label())), format!(
            "class=SECRET_KEY type=AES len=32 +token {guarded} +encrypt +decrypt -wrap -unwrap -sign -verify -derive mechs=AES_GCM id=20B {l}")),
        ("custody probe wrapping key", summary(&objects::session_wrapping_key_template()), format!(
            "class=SECRET_KEY type=AES len=32 -token {guarded} -encrypt -decrypt +wrap -unwrap -sign -verify -derive label=p11kms/custody-probe-wrapping-key")),
        ("CMK HMAC", summary(&mac::hmac_template(&id, MacAlg::Sha384)), format!(
            "class=SECRET_KEY type=GENERIC_SECRET len=48 +token {guarded} -encrypt -decrypt -wrap -unwrap +sign +verify -derive mechs=SHA384_HMAC id=20B {l}")),
        ("imported AES", summary(&unwrap::material_template(MaterialKind::Aes256, &id, true)), format!(
            "class=SECRET_KEY type=AES +token {guarded} +encrypt +decrypt -wrap -unwrap -sign -verify -derive mechs=AES_GCM id=20B {l}")),
        ("import check copy HMAC", summary(&unwrap::material_template(MaterialKind::Hmac(HmacSpec::Hmac256), &id, false)), format!(
            "class=SECRET_KEY type=GENERIC_SECRET -token {guarded} -encrypt -decrypt -wrap -unwrap +sign +verify -derive mechs=SHA256_HMAC label=p11kms/import-check")),
        ("import ephemeral AES", summary(&unwrap::ephemeral_aes_template()), format!(
            "class=SECRET_KEY type=AES -token {guarded} -encrypt -decrypt -wrap +unwrap -sign -verify -derive mechs=AES_KEY_WRAP_PAD label=p11kms/import-ephemeral")),
        ("wrapping private key", summary(&unwrap::wrapping_private_template()), format!(
            "class=PRIVATE_KEY type=RSA -token {guarded} -decrypt -sign -signrecover +unwrap -derive mechs=RSA_PKCS_OAEP label=p11kms/keygen-pending-wrapping")),
        ("wrapping public key", summary(&unwrap::wrapping_public_template(3072)),
            "class=PUBLIC_KEY type=RSA -token -private +encrypt -wrap -verify bits=3072 e=010001".into()),
        ("audit public key", summary(&signing::public_template("p11kms/audit/v1")), format!(
            "class=PUBLIC_KEY type=EC +token -private +verify -encrypt -wrap -derive ec={P256} id=15B label=p11kms/audit/v1")),
        ("audit private key", summary(&signing::private_template("p11kms/audit/v1")), format!(
            "class=PRIVATE_KEY type=EC +token {guarded} +sign -decrypt -unwrap -derive mechs=ECDSA id=15B label=p11kms/audit/v1")),
        ("OAEP probe public", summary(&oaep::probe_template(true)),
            "class=PUBLIC_KEY type=RSA -token label=p11kms/oaep-sha256-probe mechs=RSA_PKCS_OAEP +encrypt -verify -wrap bits=2048 e=010001".into()),
        ("OAEP probe private", summary(&oaep::probe_template(false)), format!(
            "class=PRIVATE_KEY type=RSA -token label=p11kms/oaep-sha256-probe mechs=RSA_PKCS_OAEP {guarded} +decrypt -sign -unwrap -derive")),
        ("data key pair public", summary(&data_public), format!(
            "class=PUBLIC_KEY type=EC -token -private +verify label=p11kms/data-key-pair ec={P384}")),
        ("data key pair private", summary(&data_private),
            "class=PRIVATE_KEY type=EC -token +private -sensitive +extractable +sign label=p11kms/data-key-pair".into()),
        ("ECDH shared secret", summary(&asym::shared_secret_template(Curve::P256)),
            "class=SECRET_KEY type=GENERIC_SECRET -token +private -sensitive +extractable len=32 label=p11kms/shared-secret".into()),
    ];
    let pairs = [
        ("RSA sign pair", pair(PairSpec::Rsa(2048), PairUsage::Sign, OaepSha256::Device),
            "class=PUBLIC_KEY type=RSA +token -private +verify -encrypt -wrap -derive mechs=RSA_PKCS_PSS,RSA_PKCS bits=2048 e=010001 id=20B".to_string(),
            format!("class=PRIVATE_KEY type=RSA +token {guarded} +sign -decrypt -unwrap -derive mechs=RSA_PKCS_PSS,RSA_PKCS id=20B")),
        ("RSA decrypt pair, raw RSA", pair(PairSpec::Rsa(3072), PairUsage::Decrypt, OaepSha256::RawRsa),
            "class=PUBLIC_KEY type=RSA +token -private -verify +encrypt -wrap -derive mechs=RSA_PKCS_OAEP,RSA_X_509 bits=3072 e=010001 id=20B".to_string(),
            format!("class=PRIVATE_KEY type=RSA +token {guarded} -sign +decrypt -unwrap -derive mechs=RSA_PKCS_OAEP,RSA_X_509 id=20B")),
        ("RSA decrypt pair, device OAEP", pair(PairSpec::Rsa(2048), PairUsage::Decrypt, OaepSha256::Device),
            "class=PUBLIC_KEY type=RSA +token -private -verify +encrypt -wrap -derive mechs=RSA_PKCS_OAEP bits=2048 e=010001 id=20B".to_string(),
            format!("class=PRIVATE_KEY type=RSA +token {guarded} -sign +decrypt -unwrap -derive mechs=RSA_PKCS_OAEP id=20B")),
        ("EC sign pair", pair(PairSpec::Ec(Curve::P256), PairUsage::Sign, OaepSha256::Device),
            format!("class=PUBLIC_KEY type=EC +token -private +verify -encrypt -wrap -derive mechs=ECDSA ec={P256} id=20B"),
            format!("class=PRIVATE_KEY type=EC +token {guarded} +sign -decrypt -unwrap -derive mechs=ECDSA id=20B")),
        ("EC key agreement pair", pair(PairSpec::Ec(Curve::P384), PairUsage::KeyAgreement, OaepSha256::Device),
            format!("class=PUBLIC_KEY type=EC +token -private -verify -encrypt -wrap -derive mechs=ECDH1_DERIVE ec={P384} id=20B"),
            format!("class=PRIVATE_KEY type=EC +token {guarded} -sign -decrypt -unwrap +derive mechs=ECDH1_DERIVE id=20B")),
        ("Ed25519 pair", pair(PairSpec::Ed25519, PairUsage::Sign, OaepSha256::Device),
            "class=PUBLIC_KEY type=EC_EDWARDS +token -private +verify -encrypt -wrap -derive mechs=EDDSA ec=06032b6570 id=20B".to_string(),
            format!("class=PRIVATE_KEY type=EC_EDWARDS +token {guarded} +sign -decrypt -unwrap -derive mechs=EDDSA id=20B")),
    ];
    for (what, (public, private), want_public, want_private) in pairs {
        assert_eq!(
            public,
            sorted(&format!("{want_public} {l}")),
            "{what}, public half"
        );
        assert_eq!(
            private,
            sorted(&format!("{want_private} {l}")),
            "{what}, private half"
        );
    }
    for (what, got, want) in cases {
        assert_eq!(got, sorted(&want), "{what}");
    }
}

fn flags(a: &KeyAttributes) -> String {
    let all = [
        ("token", a.token),
        ("private", a.private),
        ("sensitive", a.sensitive),
        ("always_sensitive", a.always_sensitive),
        ("extractable", a.extractable),
        ("never_extractable", a.never_extractable),
        ("encrypt", a.encrypt),
        ("decrypt", a.decrypt),
        ("sign", a.sign),
        ("verify", a.verify),
        ("sign_recover", a.sign_recover),
        ("verify_recover", a.verify_recover),
        ("wrap", a.wrap),
        ("unwrap", a.unwrap),
        ("derive", a.derive),
    ];
    let on: Vec<&str> = all.iter().filter(|(_, v)| *v).map(|(n, _)| *n).collect();
    let mut mechs = a.allowed_mechanisms.clone();
    mechs.sort();
    format!("{} mechs={}", on.join(" "), mechs.join(","))
}

/// The usage and custody flags of each kind of token object, read back from the device:
/// only the listed flags are true (allowed mechanisms sorted). `sign_recover` / `verify_recover` are left to the token
/// by the pair templates (SoftHSM2 makes them true); the flags of every other usage are
/// written by the templates.
#[tokio::test]
async fn every_kind_of_token_object_reads_back_its_flags() {
    // The import tests count wrapping keys on the shared token: not while this makes one.
    let _one = super::unwrap_tests::SERIAL.lock().await;
    let hsm = Hsm::open(&super::tests::test_config()).expect("open Hsm");
    let new_id = || ObjectId::new(*uuid::Uuid::new_v4().as_bytes(), 1);
    let secret = "token private sensitive always_sensitive never_extractable";
    let public = "token";

    for (what, hmac, want) in [
        ("CMK AES", None, "encrypt decrypt mechs=AES_GCM"),
        (
            "CMK HMAC",
            Some(MacAlg::Sha256),
            "sign verify mechs=SHA256_HMAC",
        ),
    ] {
        let id = new_id();
        match hmac {
            None => hsm.generate_aes_key(id).await.unwrap(),
            Some(alg) => hsm.generate_hmac_key(id, alg).await.unwrap(),
        }
        let got = flags(&hsm.key_attributes(id).await.unwrap());
        assert_eq!(got, format!("{secret} {want}"), "{what}");
        hsm.destroy(id).await.unwrap();
    }

    let oaep = hsm.oaep_sha256().await.unwrap();
    let rsa_decrypt = match oaep {
        OaepSha256::Device => "RSA_PKCS_OAEP",
        OaepSha256::RawRsa => "RSA_PKCS_OAEP,RSA_X_509",
    };
    for (what, spec, usage, want_private, want_public) in [
        (
            "RSA sign",
            PairSpec::Rsa(2048),
            PairUsage::Sign,
            "sign sign_recover mechs=RSA_PKCS,RSA_PKCS_PSS",
            "verify verify_recover mechs=RSA_PKCS,RSA_PKCS_PSS".to_string(),
        ),
        (
            "RSA decrypt",
            PairSpec::Rsa(2048),
            PairUsage::Decrypt,
            "decrypt sign_recover mechs=",
            "encrypt verify_recover mechs=".to_string(),
        ),
        (
            "EC sign",
            PairSpec::Ec(Curve::P256),
            PairUsage::Sign,
            "sign sign_recover mechs=ECDSA",
            "verify verify_recover mechs=ECDSA".to_string(),
        ),
        (
            "EC key agreement",
            PairSpec::Ec(Curve::P256),
            PairUsage::KeyAgreement,
            "sign_recover derive mechs=ECDH1_DERIVE",
            "verify_recover mechs=ECDH1_DERIVE".to_string(),
        ),
        (
            "Ed25519",
            PairSpec::Ed25519,
            PairUsage::Sign,
            "sign sign_recover mechs=EDDSA",
            "verify verify_recover mechs=EDDSA".to_string(),
        ),
    ] {
        let id = new_id();
        hsm.generate_key_pair(id, spec, usage)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mechs = |w: &str| {
            w.replace(
                "mechs=",
                &format!(
                    "mechs={}",
                    if usage == PairUsage::Decrypt {
                        rsa_decrypt
                    } else {
                        ""
                    }
                ),
            )
        };
        let got = flags(&hsm.key_pair_attributes(id, true).await.unwrap());
        assert_eq!(
            got,
            mechs(&format!("{secret} {want_private}")),
            "{what}, private half"
        );
        let got = flags(&hsm.key_pair_attributes(id, false).await.unwrap());
        assert_eq!(
            got,
            mechs(&format!("{public} {want_public}")),
            "{what}, public half"
        );
        hsm.destroy_key_pair(id).await.unwrap();
    }

    let label = format!(
        "{}flags-{}",
        signing::AUDIT_KEY_LABEL_PREFIX,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    hsm.ensure_audit_key(&label).await.unwrap();
    let got = flags(&hsm.audit_key_attributes(&label).await.unwrap());
    assert_eq!(
        got,
        format!("{secret} sign sign_recover mechs=ECDSA"),
        "audit private key"
    );

    let w = WrappingKeyId(*uuid::Uuid::new_v4().as_bytes());
    hsm.generate_wrapping_key(w, 2048, false).await.unwrap();
    let got = flags(&hsm.wrapping_key_attributes(w).await.unwrap());
    assert_eq!(
        got,
        format!("{secret} unwrap mechs=RSA_PKCS_OAEP"),
        "import wrapping key"
    );
    hsm.destroy_wrapping_key(w).await.unwrap();
}
