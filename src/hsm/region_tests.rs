//! Multi-Region keys (issue 20) on real SoftHSM2 2.6.1 tokens: the probes of what the device
//! allows when key material moves from region A's token to region B's, wrapped on A under a
//! public key of B that A's security officer made trusted, and unwrapped on B.
//!
//! The probes drive raw sessions (the SO must log in, which fails beside an open `Hsm` on the
//! same token): the probes' two regions are tokens only the probe test uses, and the jobs'
//! test has two tokens of its own.

use std::path::Path;
use std::sync::Arc;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::call::Counters;
use super::der;
use super::template::{Template, Usage};
use super::tests::{region_tokens, wrapped_tokens, MODULE};
use super::{module, Pin};

/// `CKM_RSA_AES_KEY_WRAP` (PKCS#11 2.40): cryptoki has no typed mechanism for it.
const CKM_RSA_AES_KEY_WRAP: u64 = 0x1054;
/// DER of the P-256 curve's OID (`CKA_EC_PARAMS`).
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One token of a region, opened through the crate's module registry.
struct Region {
    pkcs11: Arc<Pkcs11>,
    slot: Slot,
}

impl Region {
    fn open(label: &str) -> Region {
        let counters = Counters::default();
        let pkcs11 = module::module(Path::new(MODULE), label, &counters)
            .expect("module")
            .pkcs11;
        let slot = module::find_token(&pkcs11, label, &counters).expect("token");
        Region { pkcs11, slot }
    }

    fn session(&self) -> Session {
        self.pkcs11
            .open_rw_session(self.slot)
            .expect("open session")
    }
}

fn login(s: &Session, who: UserType, pin: &Pin) {
    s.login(who, Some(&AuthPin::from(pin.expose())))
        .expect("login");
}

/// The device's return value, if the call failed on the device.
fn rv<T>(r: &Result<T, CkError>) -> Option<RvError> {
    match r {
        Err(CkError::Pkcs11(rv, _)) => Some(*rv),
        _ => None,
    }
}

/// `CKM_RSA_PKCS_OAEP` with SHA-1 and MGF1-SHA-1: the only OAEP SoftHSM2 2.6.1 does.
fn oaep_sha1() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

/// B's transport key pair: RSA-3072, the private half a sensitive, never-extractable token
/// object that only unwraps; the public half a session object read back as DER SPKI.
fn transport_pair(s: &Session) -> (ObjectHandle, Vec<u8>) {
    let public = Template::public(KeyType::RSA)
        .token(false)
        .with(Attribute::ModulusBits(3072.into()))
        .with(Attribute::PublicExponent(vec![1, 0, 1]))
        .build();
    let private = Template::private(KeyType::RSA)
        .token(true)
        .guarded()
        .allow(Usage::Unwrap)
        .label("p11kms/region-transport/v1")
        .build();
    let (pub_h, priv_h) = s
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .expect("transport pair");
    (priv_h, rsa_spki_of(s, pub_h))
}

fn rsa_spki_of(s: &Session, h: ObjectHandle) -> Vec<u8> {
    let attrs = s
        .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .expect("public key");
    let (mut n, mut e) = (Vec::new(), Vec::new());
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    der::rsa_spki(&n, &e)
}

/// A's token object holding B's public key from its SPKI: wrap only, `CKA_TRUSTED` as asked.
fn peer_key_template(spki: &[u8], trusted: bool, token: bool) -> Vec<Attribute> {
    let (n, e) = der::rsa_from_spki(spki).expect("RSA SPKI");
    Template::public(KeyType::RSA)
        .token(token)
        .private_object(false)
        .allow(Usage::Wrap)
        .with(Attribute::Modulus(n))
        .with(Attribute::PublicExponent(e))
        .with(Attribute::Trusted(trusted))
        .label("p11kms/region-peer/probe")
        .build()
}

/// The custody A's multi-Region key objects have, on any class of key.
fn mrk(t: Template) -> Vec<Attribute> {
    t.wrapped_session().build()
}

fn aes_cmk(s: &Session) -> ObjectHandle {
    let t = Template::secret(KeyType::AES)
        .allow(Usage::Encrypt)
        .allow(Usage::Decrypt)
        .value_len(32);
    s.generate_key(&Mechanism::AesKeyGen, &mrk(t))
        .expect("AES-256")
}

fn hmac_512(s: &Session) -> ObjectHandle {
    let t = Template::secret(KeyType::GENERIC_SECRET)
        .allow(Usage::Sign)
        .allow(Usage::Verify)
        .value_len(64);
    s.generate_key(&Mechanism::GenericSecretKeyGen, &mrk(t))
        .expect("HMAC-512 key")
}

/// A key pair whose private half has the multi-Region custody: (public, private).
fn signing_pair(s: &Session, ec: bool) -> (ObjectHandle, ObjectHandle) {
    let (kt, mech, public) = if ec {
        let p = Template::public(KeyType::EC).with(Attribute::EcParams(P256.to_vec()));
        (KeyType::EC, Mechanism::EccKeyPairGen, p)
    } else {
        let p = Template::public(KeyType::RSA)
            .with(Attribute::ModulusBits(2048.into()))
            .with(Attribute::PublicExponent(vec![1, 0, 1]));
        (KeyType::RSA, Mechanism::RsaPkcsKeyPairGen, p)
    };
    let public = public.token(false).allow(Usage::Verify).build();
    let private = mrk(Template::private(kt).allow(Usage::Sign));
    s.generate_key_pair(&mech, &public, &private)
        .expect("key pair")
}

fn gcm(iv: &mut [u8; 12]) -> Mechanism<'_> {
    let params = cryptoki::mechanism::aead::GcmParams::new(iv, b"region", 128.into());
    Mechanism::AesGcm(params.expect("GCM parameters"))
}

fn seal(s: &Session, key: ObjectHandle) -> ([u8; 12], Vec<u8>) {
    let mut iv = [7u8; 12];
    let ct = s
        .encrypt(&gcm(&mut iv), key, b"moved between regions")
        .expect("seal");
    (iv, ct)
}

fn open_sealed(s: &Session, key: ObjectHandle, sealed: &([u8; 12], Vec<u8>)) -> Vec<u8> {
    let mut iv = sealed.0;
    s.decrypt(&gcm(&mut iv), key, &sealed.1).expect("open")
}

/// The custody attributes of an object as the device reports them.
#[derive(Debug, PartialEq, Eq)]
struct Custody {
    sensitive: bool,
    extractable: bool,
    wrap_with_trusted: bool,
    never_extractable: bool,
}

fn custody(s: &Session, h: ObjectHandle) -> Custody {
    let types = [
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::WrapWithTrusted,
        AttributeType::NeverExtractable,
    ];
    let attrs = s.get_attributes(h, &types).expect("custody");
    let on = |want: Attribute| attrs.contains(&want);
    Custody {
        sensitive: on(Attribute::Sensitive(true)),
        extractable: on(Attribute::Extractable(true)),
        wrap_with_trusted: on(Attribute::WrapWithTrusted(true)),
        never_extractable: on(Attribute::NeverExtractable(true)),
    }
}

const MOVED: Custody = Custody {
    sensitive: true,
    extractable: true,
    wrap_with_trusted: true,
    never_extractable: false,
};

fn value_is_sensitive(s: &Session, h: ObjectHandle, t: AttributeType) -> bool {
    let info = s.get_attribute_info(h, &[t]).expect("attribute info");
    matches!(info.first(), Some(AttributeInfo::Sensitive))
}

/// The template B unwraps a secret key into: the custody of A's, as a session object.
fn secret_on_b(kt: KeyType, usages: &[Usage]) -> Vec<Attribute> {
    let t = usages.iter().fold(Template::secret(kt), |t, u| t.allow(*u));
    mrk(t)
}

fn private_on_b(kt: KeyType) -> Vec<Attribute> {
    mrk(Template::private(kt).allow(Usage::Sign))
}

/// Both tokens with a user session each, B's transport pair made and its SPKI exported.
struct Probe {
    region_a: Region,
    a: Session,
    b: Session,
    b_private: ObjectHandle,
    spki: Vec<u8>,
    user_pin: Pin,
    so_pin: Pin,
}

fn set_up() -> Probe {
    let ([ta, tb], _) = region_tokens();
    let pins = wrapped_tokens();
    let region_a = Region::open(&ta);
    let (a, b) = (region_a.session(), Region::open(&tb).session());
    login(&b, UserType::User, &pins.user_pin);
    let (b_private, spki) = transport_pair(&b);
    Probe {
        region_a,
        a,
        b,
        b_private,
        spki,
        user_pin: pins.user_pin,
        so_pin: pins.so_pin,
    }
}

#[test]
fn region_transport_device_probes() {
    let p = set_up();
    probe_transport_pair(&p);
    let (trusted, untrusted, so_aes) = probe_trust_ceremony(&p);
    login(&p.a, UserType::User, &p.user_pin);
    probe_aes_cmk(&p, trusted, untrusted);
    probe_hmac(&p, trusted, untrusted);
    probe_private_keys(&p, trusted, so_aes);
    probe_tampered_blob(&p, trusted);
}

/// B's transport private key: sensitive, never extractable, never made extractable.
fn probe_transport_pair(p: &Probe) {
    let c = custody(&p.b, p.b_private);
    assert!(
        c.sensitive && !c.extractable && c.never_extractable,
        "{c:?}"
    );
    assert!(value_is_sensitive(
        &p.b,
        p.b_private,
        AttributeType::PrivateExponent
    ));
    let r =
        p.b.update_attributes(p.b_private, &[Attribute::Extractable(true)]);
    assert_eq!(rv(&r), Some(RvError::AttributeReadOnly), "{r:?}");
    assert!(der::rsa_from_spki(&p.spki).is_some());
    assert_eq!(p.spki.len(), 422, "RSA-3072 SPKI");
}

/// On A: the user may not set `CKA_TRUSTED`; the SO may, on a public token object. The SO
/// also makes a trusted AES session key (for the two-step probe). Returns (trusted peer key,
/// untrusted peer key, SO's trusted AES key).
fn probe_trust_ceremony(p: &Probe) -> (ObjectHandle, ObjectHandle, ObjectHandle) {
    login(&p.a, UserType::User, &p.user_pin);
    let by_user = p.a.create_object(&peer_key_template(&p.spki, true, true));
    assert_eq!(
        rv(&by_user),
        Some(RvError::AttributeReadOnly),
        "{by_user:?}"
    );
    let untrusted =
        p.a.create_object(&peer_key_template(&p.spki, false, false))
            .expect("untrusted public key");
    let user_aes = p.a.generate_key(&Mechanism::AesKeyGen, &trusted_aes());
    assert_eq!(
        rv(&user_aes),
        Some(RvError::AttributeReadOnly),
        "{user_aes:?}"
    );
    p.a.logout().expect("logout");
    login(&p.a, UserType::So, &p.so_pin);
    let trusted =
        p.a.create_object(&peer_key_template(&p.spki, true, true))
            .expect("the SO creates a trusted public token key");
    let so_aes =
        p.a.generate_key(&Mechanism::AesKeyGen, &trusted_aes())
            .expect("the SO generates a trusted AES session key");
    // The SO cannot make a private object: the region carrier is a public token object.
    let mut private = trusted_aes();
    private.retain(|a| !matches!(a, Attribute::Private(_)));
    private.push(Attribute::Private(true));
    let so_private = p.a.generate_key(&Mechanism::AesKeyGen, &private);
    assert_eq!(
        rv(&so_private),
        Some(RvError::UserNotLoggedIn),
        "{so_private:?}"
    );
    p.a.logout().expect("logout");
    let read = p.a.get_attributes(trusted, &[AttributeType::Trusted]);
    assert_eq!(read.expect("read back"), vec![Attribute::Trusted(true)]);
    (trusted, untrusted, so_aes)
}

/// A trusted AES-256 wrapping key that may itself be wrapped only under trusted keys.
fn trusted_aes() -> Vec<Attribute> {
    Template::secret(KeyType::AES)
        .token(false)
        .private_object(false)
        .with(Attribute::Sensitive(true))
        .with(Attribute::Extractable(true))
        .with(Attribute::WrapWithTrusted(true))
        .with(Attribute::Trusted(true))
        .allow(Usage::Wrap)
        .value_len(32)
        .build()
}

/// AES-256: OAEP-SHA-1 under the trusted key works, under the untrusted one the device
/// refuses; B unwraps it with the same custody and opens A's ciphertext.
fn probe_aes_cmk(p: &Probe, trusted: ObjectHandle, untrusted: ObjectHandle) {
    let key = aes_cmk(&p.a);
    let sealed = seal(&p.a, key);
    let refused = p.a.wrap_key(&oaep_sha1(), untrusted, key);
    assert_eq!(rv(&refused), Some(RvError::KeyNotWrappable), "{refused:?}");
    let blob = p.a.wrap_key(&oaep_sha1(), trusted, key).expect("wrap");
    assert_eq!(blob.len(), 384);
    let t = secret_on_b(KeyType::AES, &[Usage::Encrypt, Usage::Decrypt]);
    let on_b =
        p.b.unwrap_key(&oaep_sha1(), p.b_private, &blob, &t)
            .expect("unwrap");
    assert_eq!(custody(&p.b, on_b), MOVED);
    assert!(value_is_sensitive(&p.b, on_b, AttributeType::Value));
    assert_eq!(open_sealed(&p.b, on_b, &sealed), b"moved between regions");
    let back = seal(&p.b, on_b);
    assert_eq!(open_sealed(&p.a, key, &back), b"moved between regions");
}

/// HMAC with a 64-byte key: the same, and both tokens compute the same MAC.
fn probe_hmac(p: &Probe, trusted: ObjectHandle, untrusted: ObjectHandle) {
    let key = hmac_512(&p.a);
    let refused = p.a.wrap_key(&oaep_sha1(), untrusted, key);
    assert_eq!(rv(&refused), Some(RvError::KeyNotWrappable), "{refused:?}");
    let blob = p.a.wrap_key(&oaep_sha1(), trusted, key).expect("wrap");
    let t = secret_on_b(KeyType::GENERIC_SECRET, &[Usage::Sign, Usage::Verify]);
    let on_b =
        p.b.unwrap_key(&oaep_sha1(), p.b_private, &blob, &t)
            .expect("unwrap");
    assert_eq!(custody(&p.b, on_b), MOVED);
    let mac_a = p.a.sign(&Mechanism::Sha512Hmac, key, b"m").expect("mac");
    let mac_b = p.b.sign(&Mechanism::Sha512Hmac, on_b, b"m").expect("mac");
    assert_eq!((mac_a.len(), &mac_a), (64, &mac_b));
}

/// Private halves: OAEP refuses them, `CKM_RSA_AES_KEY_WRAP` is not offered, a user-made
/// AES key cannot be trusted; only an AES key the SO made trusted carries them (two-step).
fn probe_private_keys(p: &Probe, trusted: ObjectHandle, so_aes: ObjectHandle) {
    for ec in [true, false] {
        let (_, private) = signing_pair(&p.a, ec);
        let r = p.a.wrap_key(&oaep_sha1(), trusted, private);
        assert_eq!(rv(&r), Some(RvError::KeyNotWrappable), "ec {ec}: {r:?}");
    }
    probe_rsa_aes_key_wrap(p);
    probe_untrusted_ephemeral(p);
    probe_trusted_two_step(p, trusted, so_aes);
}

/// `CKM_RSA_AES_KEY_WRAP` is not in the device's mechanism list. (cryptoki 0.12 has no
/// `MechanismType` for it, `try_from` answers `NotSupported`, so `C_WrapKey` cannot even be
/// asked for it without `unsafe`.)
fn probe_rsa_aes_key_wrap(p: &Probe) {
    let a = &p.region_a;
    let list = a.pkcs11.get_mechanism_list(a.slot).expect("mechanisms");
    assert!(
        !list.iter().any(|m| **m == CKM_RSA_AES_KEY_WRAP),
        "SoftHSM2 2.6.1 lists no RSA-AES key wrap"
    );
    assert!(list.contains(&MechanismType::AES_KEY_WRAP_PAD));
    assert!(list.contains(&MechanismType::RSA_PKCS_OAEP));
    assert!(MechanismType::try_from(CKM_RSA_AES_KEY_WRAP).is_err());
}

/// The user's ephemeral AES key is untrusted: the device refuses to wrap a private half
/// under it.
fn probe_untrusted_ephemeral(p: &Probe) {
    let t = Template::secret(KeyType::AES)
        .token(false)
        .with(Attribute::Sensitive(true))
        .with(Attribute::Extractable(true))
        .with(Attribute::WrapWithTrusted(true))
        .allow(Usage::Wrap)
        .value_len(32)
        .build();
    let ephemeral = p.a.generate_key(&Mechanism::AesKeyGen, &t).expect("AES");
    let (_, private) = signing_pair(&p.a, true);
    let r = p.a.wrap_key(&Mechanism::AesKeyWrapPad, ephemeral, private);
    assert_eq!(rv(&r), Some(RvError::KeyNotWrappable), "{r:?}");
}

/// The SO's trusted AES key wraps the private halves (RFC 5649) and is itself wrapped under
/// B's trusted key (OAEP): B unwraps both and signs what A's public halves verify.
fn probe_trusted_two_step(p: &Probe, trusted: ObjectHandle, so_aes: ObjectHandle) {
    let carrier = p.a.wrap_key(&oaep_sha1(), trusted, so_aes).expect("wrap");
    let t = secret_on_b(KeyType::AES, &[Usage::Unwrap]);
    let aes_b =
        p.b.unwrap_key(&oaep_sha1(), p.b_private, &carrier, &t)
            .expect("unwrap the carrier");
    for (ec, kt, mech) in [
        (true, KeyType::EC, Mechanism::Ecdsa),
        (false, KeyType::RSA, Mechanism::Sha256RsaPkcs),
    ] {
        let (public, private) = signing_pair(&p.a, ec);
        let blob =
            p.a.wrap_key(&Mechanism::AesKeyWrapPad, so_aes, private)
                .expect("wrap the private half");
        let on_b =
            p.b.unwrap_key(&Mechanism::AesKeyWrapPad, aes_b, &blob, &private_on_b(kt))
                .expect("unwrap the private half");
        assert_eq!(custody(&p.b, on_b), MOVED);
        let msg = [3u8; 32];
        let sig = p.b.sign(&mech, on_b, &msg).expect("sign on B");
        p.a.verify(&mech, public, &msg, &sig)
            .expect("A's public half verifies B's signature");
    }
}

/// One byte changed anywhere in an OAEP transport blob: B's device refuses it, with
/// `CKR_GENERAL_ERROR` (SoftHSM2 2.6.1 reports a failed OAEP decoding that way).
fn probe_tampered_blob(p: &Probe, trusted: ObjectHandle) {
    let key = aes_cmk(&p.a);
    let blob = p.a.wrap_key(&oaep_sha1(), trusted, key).expect("wrap");
    let t = secret_on_b(KeyType::AES, &[Usage::Encrypt, Usage::Decrypt]);
    for at in [0, 100, blob.len() - 1] {
        let mut bad = blob.clone();
        bad[at] ^= 0x01;
        let r = p.b.unwrap_key(&oaep_sha1(), p.b_private, &bad, &t);
        assert_eq!(rv(&r), Some(RvError::GeneralError), "byte {at}: {r:?}");
    }
}

// ---------------------------------------------------------------- the region jobs

mod jobs {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::super::region::{is_region_object, trust_peer, PeerTrust, RegionName};
    use super::super::tests::{
        aad_bytes, aad_with, cfg, new_id, pt, region_tokens, wrapped_tokens,
    };
    use super::super::wrapped::BlobKind;
    use super::super::*;
    use super::MODULE;

    /// A blob source the tests fill (a region's store of wrapped versions).
    #[derive(Default)]
    struct Blobs(Mutex<HashMap<ObjectId, Stored>>);

    /// A version's blob and, for a key pair, its public key.
    type Stored = (Arc<WrappedBlob>, Option<Arc<Vec<u8>>>);

    impl Blobs {
        fn put(&self, id: ObjectId, blob: WrappedBlob, spki: Option<Vec<u8>>) {
            let entry = (Arc::new(blob), spki.map(Arc::new));
            self.0.lock().unwrap().insert(id, entry);
        }

        fn get(&self, id: ObjectId) -> Arc<WrappedBlob> {
            self.0.lock().unwrap()[&id].0.clone()
        }
    }

    impl BlobSource for Blobs {
        fn blob(&self, id: ObjectId) -> Option<Arc<WrappedBlob>> {
            self.0.lock().unwrap().get(&id).map(|e| e.0.clone())
        }

        fn public_key(&self, id: ObjectId) -> Option<Arc<Vec<u8>>> {
            self.0.lock().unwrap().get(&id).and_then(|e| e.1.clone())
        }
    }

    /// One region: its `Hsm` (token residency for token objects, wrapped residency for the
    /// versions in `blobs`).
    struct Region {
        hsm: Arc<Hsm>,
        blobs: Arc<Blobs>,
    }

    fn open(label: &str) -> Region {
        let hsm = Hsm::open(&cfg(label)).expect("open");
        let blobs = Arc::new(Blobs::default());
        hsm.set_blob_source(blobs.clone());
        Region { hsm, blobs }
    }

    fn eu() -> RegionName {
        RegionName::parse("eu-west-1").expect("region name")
    }

    /// Once per process, before any `Hsm` opens region A (the SO logs in there): both
    /// tokens' masters trusted, B's transport key made, A's SO ceremony for B run twice
    /// (idempotent) and refused for a key that is not one.
    static CEREMONIES: tokio::sync::OnceCell<[String; 2]> = tokio::sync::OnceCell::const_new();

    async fn ceremonies() -> [String; 2] {
        let init = || async {
            let (_, [ta, tb]) = region_tokens();
            let w = wrapped_tokens();
            for t in [&ta, &tb] {
                let v = MasterVersion(1);
                let made = trust_master(Path::new(MODULE), t, &w.so_pin, &w.user_pin, v);
                assert_eq!(made.expect("master ceremony"), TrustOutcome::Created);
            }
            let b = Hsm::open(&cfg(&tb)).expect("open B");
            let spki = b.region_transport_key().await.expect("transport key");
            assert_eq!(b.region_transport_key().await.unwrap(), spki, "kept");
            b.shutdown();
            drop(b);
            let so = &w.so_pin;
            let first = trust_peer(Path::new(MODULE), &ta, so, &eu(), &spki);
            assert_eq!(first.expect("ceremony"), PeerTrust::Created);
            let again = trust_peer(Path::new(MODULE), &ta, so, &eu(), &spki);
            assert_eq!(again.expect("ceremony"), PeerTrust::AlreadyTrusted);
            let other = b"not an spki".to_vec();
            let bad = trust_peer(Path::new(MODULE), &ta, so, &eu(), &other);
            assert_eq!(bad.unwrap_err().kind, HsmErrorKind::Config);
            [ta, tb]
        };
        CEREMONIES.get_or_init(init).await.clone()
    }

    /// Region A (whose SO trusted B) and region B, both open.
    async fn regions() -> (Region, Region) {
        let [ta, tb] = ceremonies().await;
        (open(&ta), open(&tb))
    }

    #[tokio::test]
    async fn secret_keys_move_to_a_trusted_region_only_wrapped() {
        let (a, b) = regions().await;
        aes_moves(&a.hsm, &b.hsm).await;
        hmac_moves(&a.hsm, &b.hsm).await;
        refusals(&a.hsm, &b.hsm).await;
    }

    async fn aes_moves(a: &Hsm, b: &Hsm) {
        let id = new_id();
        a.generate_multi_region_key(id, BlobKind::Aes256)
            .await
            .unwrap();
        let blob = a.export_for_peer(id, BlobKind::Aes256, eu()).await.unwrap();
        assert_eq!(
            (blob.carrier.as_ref(), blob.public_key.as_ref()),
            (None, None)
        );
        let blob = PeerBlob::from_bytes(&blob.to_bytes()).expect("round trip");
        b.import_from_peer(id, BlobKind::Aes256, blob)
            .await
            .unwrap();
        assert_opens_on(a, b, id).await;
        let attrs = b.key_attributes(id).await.unwrap();
        assert!(
            attrs.token && attrs.sensitive && attrs.extractable,
            "{attrs:?}"
        );
        assert!(!attrs.never_extractable, "{attrs:?}");
        assert!(b.try_read_value(id).await.is_err(), "never readable");
        let under_new = b.try_wrap_with_new_key(id).await;
        assert!(under_new.is_err(), "an untrusted key never wraps it");
    }

    /// A ciphertext sealed under `id` on `a` opens on `b`.
    async fn assert_opens_on(a: &Hsm, b: &Hsm, id: ObjectId) {
        let sealed = a.encrypt_gcm(id, pt(b"mrk"), aad_with(b"x")).await.unwrap();
        let aad = aad_bytes(b"x", &sealed.iv);
        let opened = b.decrypt_gcm(id, sealed.iv, sealed.ciphertext_and_tag, aad);
        assert_eq!(opened.await.unwrap().as_slice(), b"mrk");
    }

    async fn assert_same_mac(a: &Hsm, b: &Hsm, id: ObjectId) {
        let mac_a = a.generate_mac(id, MacAlg::Sha512, pt(b"m")).await.unwrap();
        let mac_b = b.generate_mac(id, MacAlg::Sha512, pt(b"m")).await.unwrap();
        assert_eq!((mac_a.len(), &mac_a), (64, &mac_b));
    }

    async fn hmac_moves(a: &Hsm, b: &Hsm) {
        let id = new_id();
        let kind = BlobKind::Hmac(MacAlg::Sha512);
        a.generate_multi_region_key(id, kind).await.unwrap();
        let blob = a.export_for_peer(id, kind, eu()).await.unwrap();
        b.import_from_peer(id, kind, blob).await.unwrap();
        assert_same_mac(a, b, id).await;
    }

    fn pair_kind() -> BlobKind {
        BlobKind::Private {
            family: super::super::wrapped::PairFamily::Ec,
            usage: PairUsage::Sign,
            raw_oaep: false,
        }
    }

    async fn refusals(a: &Hsm, b: &Hsm) {
        let id = new_id();
        a.generate_multi_region_key(id, BlobKind::Aes256)
            .await
            .unwrap();
        let us = RegionName::parse("us-west-2").unwrap();
        let untrusted = a
            .export_for_peer(id, BlobKind::Aes256, us)
            .await
            .unwrap_err();
        assert_eq!(untrusted.kind, HsmErrorKind::Config, "{untrusted}");
        let no_pair = a.export_for_peer(id, pair_kind(), eu()).await.unwrap_err();
        assert_eq!(no_pair.kind, HsmErrorKind::ObjectNotFound, "{no_pair}");
        let ordinary = new_id();
        a.generate_aes_key(ordinary).await.unwrap();
        let never = a
            .export_for_peer(ordinary, BlobKind::Aes256, eu())
            .await
            .unwrap_err();
        assert!(never.rv_is("CKR_KEY_UNEXTRACTABLE"), "{never}");
        let mut blob = a.export_for_peer(id, BlobKind::Aes256, eu()).await.unwrap();
        blob.key[50] ^= 1;
        let bad = b
            .import_from_peer(id, BlobKind::Aes256, blob)
            .await
            .unwrap_err();
        assert_eq!(bad.kind, HsmErrorKind::BlobRejected, "{bad}");
        assert!(!b.exists(id).await.unwrap(), "nothing was made");
        assert_eq!(RegionName::parse("EU west"), None);
    }

    /// The ceremony made one carrier for B, which reconciliation skips like the peer key.
    #[tokio::test]
    async fn the_ceremony_makes_one_carrier_that_check_skips() {
        let (a, _) = regions().await;
        let objects = a.hsm.list_objects().await.unwrap();
        let carriers: Vec<_> = objects
            .iter()
            .filter(|o| o.label == eu().carrier_label())
            .collect();
        assert_eq!(
            carriers.len(),
            1,
            "the second ceremony made no second carrier"
        );
        assert_eq!(
            (carriers[0].class.as_str(), carriers[0].token),
            ("SECRET_KEY", true)
        );
        assert!(is_region_object(&carriers[0].id, &carriers[0].label));
        let peer = objects.iter().find(|o| o.label == eu().peer_label());
        let peer = peer.expect("the trusted peer key");
        assert!(is_region_object(&peer.id, &peer.label));
        assert!(!is_region_object(&new_id().0, "p11kms/key/x"));
        assert!(is_region_object(&[], "p11kms/region-transfer"));
        let (value_sensitive, under_untrusted) = probe_carrier(&a.hsm).await;
        assert!(value_sensitive, "the carrier's CKA_VALUE is never readable");
        let e = under_untrusted.expect_err("the device must refuse");
        assert!(e.rv_is("CKR_KEY_NOT_WRAPPABLE"), "{e}");
    }

    /// On A's carrier: reading `CKA_VALUE`, and wrapping it under a fresh (untrusted) AES key.
    async fn probe_carrier(a: &Hsm) -> (bool, Result<Vec<u8>, HsmError>) {
        a.submit(LockClass::Shared, "test_probe_carrier", |ctx| {
            use cryptoki::mechanism::Mechanism;
            use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
            let search = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(eu().carrier_label().into_bytes()),
            ];
            let found = ctx.call(call::Call::FindObjects, |s| s.find_objects(&search))?;
            let carrier = found[0];
            let info = ctx.call(call::Call::GetAttributeValue, |s| {
                s.get_attribute_info(carrier, &[AttributeType::Value])
            })?;
            let value_sensitive = matches!(info.first(), Some(AttributeInfo::Sensitive));
            let template = objects::session_wrapping_key_template();
            let wrapping = ctx.call(call::Call::GenerateKey, |s| {
                s.generate_key(&Mechanism::AesKeyGen, &template)
            })?;
            let wrapped = ctx.call(call::Call::WrapKey, |s| {
                s.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, carrier)
            });
            ctx.call(call::Call::DestroyObject, |s| s.destroy_object(wrapping))?;
            Ok((value_sensitive, wrapped))
        })
        .await
        .unwrap()
    }

    /// Session objects of region `r` named `label` (the carrier's, mid-import).
    async fn labelled(r: &Hsm, label: &str) -> usize {
        let objects = r.list_objects().await.unwrap();
        objects.iter().filter(|o| o.label == label).count()
    }

    #[tokio::test]
    async fn wrapped_versions_move_between_regions_bound_to_their_version() {
        let (a, b) = regions().await;
        for kind in [BlobKind::Aes256, BlobKind::Hmac(MacAlg::Sha512)] {
            let id = new_id();
            let blob = match kind {
                BlobKind::Aes256 => a.hsm.generate_wrapped_aes(id).await,
                _ => a.hsm.generate_wrapped_hmac(id, MacAlg::Sha512).await,
            };
            a.blobs.put(id, blob.unwrap(), None);
            let peer = a.hsm.export_blob_for_peer(id, a.blobs.get(id), None, eu());
            let peer = peer.await.unwrap();
            assert_eq!(peer.carrier, None);
            let on_b = b.hsm.import_from_peer_wrapped(id, kind, peer.clone()).await;
            let on_b = on_b.unwrap();
            assert_eq!((on_b.master(), on_b.kind()), (MasterVersion(1), kind));
            b.blobs.put(id, on_b.clone(), None);
            match kind {
                BlobKind::Aes256 => {
                    assert_opens_on(&a.hsm, &b.hsm, id).await;
                    assert_opens_on(&b.hsm, &a.hsm, id).await;
                }
                _ => assert_same_mac(&a.hsm, &b.hsm, id).await,
            }
            assert!(!b.hsm.exists(id).await.unwrap(), "no token object on B");
            wrapped_refusals(&a, &b, id, kind, on_b, peer).await;
        }
    }

    /// B's blob of `id` is refused for version 2; A refuses to send `id`'s blob as version 2;
    /// a transport blob changed by one bit is refused by B's device, and nothing is made.
    async fn wrapped_refusals(
        a: &Region,
        b: &Region,
        id: ObjectId,
        kind: BlobKind,
        on_b: WrappedBlob,
        peer: PeerBlob,
    ) {
        let v2 = ObjectId::new(id.key_id(), 2);
        let other = b.hsm.check_wrapped(v2, Arc::new(on_b)).await.unwrap_err();
        assert_eq!(other.kind, HsmErrorKind::BlobRejected, "{other}");
        let sent = a.hsm.export_blob_for_peer(v2, a.blobs.get(id), None, eu());
        let sent = sent.await.unwrap_err();
        assert_eq!(sent.kind, HsmErrorKind::BlobRejected, "{sent}");
        let mut bad = peer;
        bad.key[7] ^= 1;
        let bad = b
            .hsm
            .import_from_peer_wrapped(v2, kind, bad)
            .await
            .unwrap_err();
        assert_eq!(bad.kind, HsmErrorKind::BlobRejected, "{bad}");
        assert!(!b.hsm.exists(v2).await.unwrap());
    }

    #[tokio::test]
    async fn token_and_wrapped_residencies_mix_between_regions() {
        let (a, b) = regions().await;
        // A token-residency sender, a wrapped-residency receiver.
        let id = new_id();
        let kind = BlobKind::Aes256;
        a.hsm.generate_multi_region_key(id, kind).await.unwrap();
        let peer = a.hsm.export_for_peer(id, kind, eu()).await.unwrap();
        let on_b = b
            .hsm
            .import_from_peer_wrapped(id, kind, peer)
            .await
            .unwrap();
        b.blobs.put(id, on_b, None);
        assert_opens_on(&a.hsm, &b.hsm, id).await;
        assert!(!b.hsm.exists(id).await.unwrap());
        // A wrapped-residency sender, a token-residency receiver.
        let id = new_id();
        let kind = BlobKind::Hmac(MacAlg::Sha512);
        let blob = a
            .hsm
            .generate_wrapped_hmac(id, MacAlg::Sha512)
            .await
            .unwrap();
        a.blobs.put(id, blob, None);
        let peer = a.hsm.export_blob_for_peer(id, a.blobs.get(id), None, eu());
        b.hsm
            .import_from_peer(id, kind, peer.await.unwrap())
            .await
            .unwrap();
        assert!(b.hsm.exists(id).await.unwrap(), "a token object on B");
        let attrs = b.hsm.key_attributes(id).await.unwrap();
        assert!(
            attrs.token && attrs.sensitive && attrs.extractable,
            "{attrs:?}"
        );
        assert_same_mac(&a.hsm, &b.hsm, id).await;
    }

    const DIGEST: [u8; 32] = [9; 32];

    /// `id` signs on `from` and the signature verifies on `to`.
    async fn signs_across(from: &Hsm, to: &Hsm, id: ObjectId, scheme: SignScheme) {
        let sig = from.sign(id, scheme, DIGEST.to_vec()).await.unwrap();
        let ok = to.verify(id, scheme, DIGEST.to_vec(), sig).await.unwrap();
        assert!(ok, "{scheme:?}");
    }

    /// Held by the tests that move key pairs: they count the carriers mid-import on B.
    static CARRIERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn key_pairs_move_through_the_carrier() {
        let _carriers = CARRIERS.lock().await;
        let (a, b) = regions().await;
        let p256 = PairSpec::Ec(Curve::P256);
        for (spec, scheme) in [
            (PairSpec::Rsa(2048), SignScheme::RsaPkcs1),
            (p256, SignScheme::Ecdsa(Curve::P256)),
        ] {
            let id = new_id();
            let kind = a.hsm.generate_multi_region_pair(id, spec, PairUsage::Sign);
            let kind = kind.await.unwrap();
            let attrs = a.hsm.key_pair_attributes(id, true).await.unwrap();
            assert!(
                attrs.token && attrs.sensitive && attrs.extractable,
                "{attrs:?}"
            );
            let peer = a.hsm.export_for_peer(id, kind, eu()).await.unwrap();
            let spki = a.hsm.public_key(id, spec).await.unwrap();
            assert_eq!(peer.public_key.as_ref(), Some(&spki));
            assert!(peer.carrier.is_some());
            pair_refusals(&a, &b, id, kind, (spec, PairUsage::Sign), &peer).await;
            let peer = PeerBlob::from_bytes(&peer.to_bytes()).expect("round trip");
            b.hsm.import_from_peer(id, kind, peer).await.unwrap();
            signs_across(&a.hsm, &b.hsm, id, scheme).await;
            signs_across(&b.hsm, &a.hsm, id, scheme).await;
            assert_eq!(b.hsm.public_key(id, spec).await.unwrap(), spki);
            let on_b = b.hsm.key_pair_attributes(id, true).await.unwrap();
            assert!(on_b.token && on_b.sensitive && on_b.extractable, "{on_b:?}");
            assert!(
                !on_b.never_extractable && on_b.sign && !on_b.decrypt,
                "{on_b:?}"
            );
        }
        wrapped_pair_moves(&a, &b).await;
        decryption_pair_moves(&a, &b).await;
    }

    /// An RSA decryption pair: A's public half encrypts, B's moved private half decrypts.
    async fn decryption_pair_moves(a: &Region, b: &Region) {
        let id = new_id();
        let spec = PairSpec::Rsa(2048);
        let kind = a
            .hsm
            .generate_multi_region_pair(id, spec, PairUsage::Decrypt);
        let kind = kind.await.unwrap();
        let peer = a.hsm.export_for_peer(id, kind, eu()).await.unwrap();
        b.hsm.import_from_peer(id, kind, peer).await.unwrap();
        let sealed = a.hsm.rsa_encrypt(id, ShaAlg::Sha256, pt(b"to B")).await;
        let opened = b.hsm.rsa_decrypt(id, ShaAlg::Sha256, sealed.unwrap()).await;
        assert_eq!(opened.unwrap().as_slice(), b"to B");
        let on_b = b.hsm.key_pair_attributes(id, true).await.unwrap();
        assert!(on_b.decrypt && !on_b.sign && on_b.extractable, "{on_b:?}");
    }

    /// B refuses a changed carrier, a changed key and another pair's public key, and keeps
    /// nothing (no object of `id`, no session carrier).
    async fn pair_refusals(
        a: &Region,
        b: &Region,
        id: ObjectId,
        kind: BlobKind,
        (spec, usage): (PairSpec, PairUsage),
        peer: &PeerBlob,
    ) {
        let stranger = new_id();
        a.hsm
            .generate_key_pair(stranger, spec, usage)
            .await
            .unwrap();
        let mut swapped = peer.clone();
        swapped.public_key = Some(a.hsm.public_key(stranger, spec).await.unwrap());
        let mut carrier = peer.clone();
        if let Some(c) = carrier.carrier.as_mut() {
            c[3] ^= 1;
        }
        let mut key = peer.clone();
        key.key[9] ^= 1;
        for bad in [carrier, key, swapped] {
            let e = b
                .hsm
                .import_from_peer(id, kind, bad.clone())
                .await
                .unwrap_err();
            assert_eq!(e.kind, HsmErrorKind::BlobRejected, "{e}");
            let e = b
                .hsm
                .import_from_peer_wrapped(id, kind, bad)
                .await
                .unwrap_err();
            assert_eq!(e.kind, HsmErrorKind::BlobRejected, "{e}");
            let none = b.hsm.key_pair_attributes(id, true).await.unwrap_err();
            assert_eq!(none.kind, HsmErrorKind::ObjectNotFound, "{none}");
        }
        assert_eq!(
            labelled(&b.hsm, super::super::region_peer::TRANSFER_LABEL).await,
            0
        );
        let mut no_carrier = peer.clone();
        no_carrier.carrier = None;
        let e = b
            .hsm
            .import_from_peer(id, kind, no_carrier)
            .await
            .unwrap_err();
        assert_eq!(e.kind, HsmErrorKind::BlobRejected, "{e}");
    }

    /// A wrapped-residency pair on A moves to B's wrapped residency; B signs, A verifies.
    async fn wrapped_pair_moves(a: &Region, b: &Region) {
        let id = new_id();
        let spec = PairSpec::Ec(Curve::P256);
        let (blob, spki) = a
            .hsm
            .generate_wrapped_pair(id, spec, PairUsage::Sign)
            .await
            .unwrap();
        let kind = blob.kind();
        a.blobs.put(id, blob, Some(spki.clone()));
        let none = a.hsm.export_blob_for_peer(id, a.blobs.get(id), None, eu());
        assert!(none.await.is_err(), "a pair's public key travels with it");
        let peer = a
            .hsm
            .export_blob_for_peer(id, a.blobs.get(id), Some(spki.clone()), eu());
        let on_b = b
            .hsm
            .import_from_peer_wrapped(id, kind, peer.await.unwrap())
            .await;
        b.blobs.put(id, on_b.unwrap(), Some(spki));
        let scheme = SignScheme::Ecdsa(Curve::P256);
        signs_across(&b.hsm, &a.hsm, id, scheme).await;
        signs_across(&a.hsm, &b.hsm, id, scheme).await;
    }

    #[test]
    fn peer_blob_bytes_round_trip_and_never_panic() {
        let full = PeerBlob {
            carrier: Some(vec![1; 384]),
            key: vec![2; 40],
            public_key: Some(vec![3; 91]),
        };
        let secret = PeerBlob {
            carrier: None,
            key: vec![4; 384],
            public_key: None,
        };
        for pb in [&full, &secret] {
            assert_eq!(&PeerBlob::from_bytes(&pb.to_bytes()).unwrap(), pb);
        }
        assert_eq!(
            format!("{full:?}"),
            "PeerBlob(key 40 bytes, carrier 384 bytes, public key 91 bytes)"
        );
        let bytes = full.to_bytes();
        for n in 0..bytes.len() {
            assert!(PeerBlob::from_bytes(&bytes[..n]).is_err(), "prefix of {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            PeerBlob::from_bytes(&longer),
            Err(PeerBlobError::Trailing(1))
        );
        assert_eq!(
            PeerBlob::from_bytes(&[2, 0]),
            Err(PeerBlobError::UnknownFormat(2))
        );
        assert_eq!(
            PeerBlob::from_bytes(&[1, 4]),
            Err(PeerBlobError::UnknownFlags(4))
        );
        let huge = [&[1u8, 0][..], &u32::MAX.to_be_bytes()].concat();
        assert_eq!(
            PeerBlob::from_bytes(&huge),
            Err(PeerBlobError::BadLength(u32::MAX as usize))
        );
        let empty = [&[1u8, 0][..], &[0, 0, 0, 0]].concat();
        assert_eq!(
            PeerBlob::from_bytes(&empty),
            Err(PeerBlobError::BadLength(0))
        );
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (rng % 64) as usize;
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let _ = PeerBlob::from_bytes(&junk);
        }
    }

    #[tokio::test]
    async fn key_agreement_pairs_move_on_every_curve_and_ed25519_cannot() {
        let _carriers = CARRIERS.lock().await;
        let (a, b) = regions().await;
        for curve in [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1] {
            let spec = PairSpec::Ec(curve);
            let usage = PairUsage::KeyAgreement;
            let id = new_id();
            let kind = a.hsm.generate_multi_region_pair(id, spec, usage).await;
            let kind = kind.unwrap();
            let peer = a.hsm.export_for_peer(id, kind, eu()).await.unwrap();
            pair_refusals(&a, &b, id, kind, (spec, usage), &peer).await;
            b.hsm.import_from_peer(id, kind, peer).await.unwrap();
            let other = new_id();
            a.hsm.generate_key_pair(other, spec, usage).await.unwrap();
            let spki = a.hsm.public_key(other, spec).await.unwrap();
            let point = Hsm::ec_point_from_spki(&spki, curve).expect("point");
            let on_a = a.hsm.derive_shared_secret(id, curve, point.clone()).await;
            let on_b = b.hsm.derive_shared_secret(id, curve, point).await;
            assert_eq!(on_a.unwrap(), on_b.unwrap(), "{curve:?}");
        }
        // Probe: SoftHSM2 2.6.1 wraps no EdDSA private key (as in wrapped residency), so an
        // Ed25519 pair cannot leave its token, not even under the trusted carrier.
        let id = new_id();
        let spec = PairSpec::Ed25519;
        let kind = a.hsm.generate_multi_region_pair(id, spec, PairUsage::Sign);
        let kind = kind.await.unwrap();
        let refused = a.hsm.export_for_peer(id, kind, eu()).await.unwrap_err();
        assert!(refused.rv_is("CKR_KEY_NOT_WRAPPABLE"), "{refused}");
    }
}
