//! Wrapped-key residency (issue 19) against the real daemon, a real SoftHSM2 token, the real
//! SQLite store and the gRPC client: the master key made at first start and trusted by the
//! security officer's ceremony (`p11kms hsm trust-master`, a separate process); keys whose
//! material lives in the store as blobs while the token's object count stays constant; a
//! denied request unwraps nothing; rotation; a restart with a cold cache; a blob edited or
//! moved to another key's row is refused by the device; key pairs (private half a blob,
//! public half the stored SPKI) in every asymmetric operation; `p11kms check` verifying
//! blobs on the device; imported key material wrapped, deleted, expired and re-imported
//! (also as another node follows the deletion); 10,000 keys with a constant object count.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use p11kms::core::{Clock, ManualClock};
use p11kms::pb;
use p11kms::server::RunningServer;
use p11kms::store::{Change, ChangeKind, KeyState, MetadataStore, SqlStore, StoredBlob};
use ring::rand::SecureRandom;

/// The tests that count the shared token's objects, make token objects (import wrapping
/// keys) or run `p11kms check` (which reports unknown token objects) run one at a time.
static TOKEN_COUNT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The token objects (not session objects) on the daemon's token.
async fn token_objects(server: &RunningServer) -> usize {
    let all = server.kms.hsm().list_objects().await.unwrap();
    all.iter().filter(|o| o.token).count()
}

fn misses(server: &RunningServer) -> u64 {
    server.kms.hsm().stats().wrapped_cache_misses
}

/// The unwrapped copies the daemon's workers hold now (session objects without a `CKA_ID`,
/// so [`key_objects`] does not see them).
fn resident(server: &RunningServer) -> usize {
    server.kms.hsm().stats().wrapped_cache_resident
}

/// The security officer's ceremony, as an operator runs it: its own process, the SO PIN from
/// the environment.
fn trust_master(config: &Path, so_pin: &str) -> std::process::Output {
    p11kms_command()
        .args(["hsm", "trust-master", "--config"])
        .arg(config)
        .env("P11KMS_SO_PIN", so_pin)
        .output()
        .unwrap()
}

async fn encrypt(c: &mut Client, key: &str, pt: &[u8]) -> Vec<u8> {
    encrypt_with(c, key, pt, &[("app", "wrapped")])
        .await
        .expect("encrypt")
}

async fn decrypt(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    decrypt_with(c, blob, &[("app", "wrapped")]).await
}

/// The token's master key, trusted once per test binary: every test fn of this binary shares
/// one token, so the first to get here runs the first start and the ceremony (checking the
/// untrusted state on the way) on a daemon of its own, and the others wait for it.
async fn trusted_token() {
    static TRUSTED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    TRUSTED.get_or_init(first_start_and_ceremony).await;
}

async fn first_start_and_ceremony() {
    let config = wrapped_config(&data_dir("wrapped-ceremony"));
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;

    // First start: an untrusted master; no key can be made until the ceremony.
    let r = c.create_key(pb::CreateKeyRequest::default()).await;
    assert_refused(
        r,
        "no trusted master",
        "KMSInternalException",
        "trust ceremony",
    );
    let listed = c.list_keys(pb::ListKeysRequest::default()).await.reply();
    assert!(listed.keys.is_empty(), "a refused CreateKey left a key");
    let wrong = trust_master(&config, "not-the-so-pin");
    assert!(!wrong.status.success(), "a wrong SO PIN was accepted");
    let (_, text) = code_and_output(&wrong);
    assert!(
        !text.contains("not-the-so-pin"),
        "the SO PIN was echoed: {text}"
    );
    let done = trust_master(&config, SO_PIN);
    assert_succeeded(&done, "trust-master");
    let (_, text) = code_and_output(&done);
    assert!(
        text.contains("p11kms/master/v1: replaced by a trusted one"),
        "{text}"
    );
    let again = trust_master(&config, SO_PIN);
    assert!(code_and_output(&again).1.contains("already trusted"));
    // The running daemon makes keys once the master is trusted.
    create_key(&mut c).await;
    drop(c);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_keys_live_in_the_store_and_the_token_holds_only_master_keys() {
    trusted_token().await;
    let _one = TOKEN_COUNT.lock().await;
    let dir = data_dir("wrapped");
    let config = wrapped_config(&dir);
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;

    // Keys: material in the store, the token's object count unchanged.
    let objects = token_objects(&server).await;
    let mut keys = Vec::new();
    let mut blobs = Vec::new();
    for i in 0..20u8 {
        let key = create_key(&mut c).await;
        blobs.push(encrypt(&mut c, &key, &[i; 32]).await);
        keys.push(key);
    }
    let hmac = create_key_from(&mut c, key_request("HMAC_256", "GENERATE_VERIFY_MAC")).await;
    let mac = hmac_sha256(&mut c, &hmac, b"m").await;
    assert_eq!(mac.len(), 32);
    assert_eq!(
        token_objects(&server).await,
        objects,
        "a wrapped key made a token object"
    );
    for key in keys.iter().chain([&hmac]) {
        let on_token = key_objects(&server, key).await;
        assert!(
            on_token.iter().all(|(_, token)| !token),
            "{key}: {on_token:?}"
        );
    }
    let store = server.kms.store();
    let stored = store.get_key(&keys[0]).await.unwrap().unwrap();
    let blob = stored.versions[0].wrapped.clone().expect("a stored blob");
    assert_eq!(blob.master, 1);
    for (i, b) in blobs.iter().enumerate() {
        assert_eq!(decrypt(&mut c, b).await.unwrap(), vec![i as u8; 32]);
    }

    // A denied request unwraps nothing.
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let before = misses(&server);
    let r = user2
        .decrypt(decrypt_request(&blobs[3], &[("app", "wrapped")]))
        .await;
    assert_eq!(reason(r), "AccessDeniedException");
    assert_eq!(
        misses(&server),
        before,
        "a denied request reached the device"
    );

    // Rotation makes version 2 as a blob; both versions decrypt.
    c.rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
        key_id: keys[0].clone(),
    })
    .await
    .reply();
    let v2 = encrypt(&mut c, &keys[0], b"after rotation").await;
    let stored = store.get_key(&keys[0]).await.unwrap().unwrap();
    assert!(
        stored.versions.iter().all(|v| v.wrapped.is_some()),
        "{stored:?}"
    );
    assert_eq!(token_objects(&server).await, objects);
    drop((c, user2));
    server.shutdown().await.unwrap();

    // Edit one blob and move another into a third key's row, with the daemon stopped.
    let store = SqlStore::open_sqlite(&dir).await.unwrap();
    let edited = store.get_key(&keys[1]).await.unwrap().unwrap();
    let old = edited.versions[0].wrapped.clone().unwrap();
    let mut bad = old.clone();
    bad.bytes[12] ^= 0x01;
    store
        .set_version_blob(&edited.key, 1, Some(&old), Some(&bad))
        .await
        .unwrap();
    let donor = store.get_key(&keys[2]).await.unwrap().unwrap();
    let victim = store.get_key(&keys[3]).await.unwrap().unwrap();
    let victim_blob = victim.versions[0].wrapped.clone().unwrap();
    store
        .set_version_blob(
            &victim.key,
            1,
            Some(&victim_blob),
            donor.versions[0].wrapped.as_ref(),
        )
        .await
        .unwrap();
    drop(store);

    // A cold start: every untouched blob is unwrapped again on first use.
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    let cold = misses(&server);
    assert_eq!(decrypt(&mut c, &v2).await.unwrap(), b"after rotation");
    assert_eq!(decrypt(&mut c, &blobs[0]).await.unwrap(), vec![0u8; 32]);
    assert!(misses(&server) >= cold + 2, "the cold cache did not unwrap");
    for (i, b) in blobs.iter().enumerate().skip(4) {
        assert_eq!(decrypt(&mut c, b).await.unwrap(), vec![i as u8; 32]);
    }
    assert_eq!(
        decrypt(&mut c, &blobs[2]).await.unwrap(),
        vec![2u8; 32],
        "the donor"
    );
    let edited = decrypt(&mut c, &blobs[1]).await;
    assert_refused(edited, "an edited blob", "KMSInternalException", "altered");
    let moved = decrypt(&mut c, &blobs[3]).await;
    assert_refused(
        moved,
        "a moved blob",
        "KMSInternalException",
        "belongs to another key",
    );
    let r = encrypt_with(&mut c, &keys[3], b"x", &[]).await;
    assert_refused(
        r,
        "encrypt under a moved blob",
        "KMSInternalException",
        "altered",
    );
    drop(c);
    server.shutdown().await.unwrap();
}

fn sign_request(key: &str, message: &[u8], alg: &str) -> pb::SignRequest {
    pb::SignRequest {
        key_id: key.into(),
        message: message.to_vec(),
        message_type: "RAW".into(),
        signing_algorithm: alg.into(),
        grant_tokens: vec![],
        dry_run: false,
    }
}

fn verify_request(key: &str, message: &[u8], sig: &[u8], alg: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        key_id: key.into(),
        message: message.to_vec(),
        message_type: "RAW".into(),
        signature: sig.to_vec(),
        signing_algorithm: alg.into(),
        grant_tokens: vec![],
        dry_run: false,
    }
}

fn derive_request(key: &str, peer_spki: &[u8]) -> pb::DeriveSharedSecretRequest {
    pb::DeriveSharedSecretRequest {
        key_id: key.into(),
        key_agreement_algorithm: "ECDH".into(),
        public_key: peer_spki.to_vec(),
        grant_tokens: vec![],
        dry_run: false,
    }
}

/// The asymmetric keys of the pairs test: (signing, RSA encryption, two key agreement).
struct Pairs {
    sign: String,
    rsa: String,
    ecdh: [String; 2],
}

async fn create_pairs(c: &mut Client) -> Pairs {
    let ecdh = key_request("ECC_NIST_P256", "KEY_AGREEMENT");
    Pairs {
        sign: create_key_from(c, key_request("ECC_NIST_P256", "SIGN_VERIFY")).await,
        rsa: create_key_from(c, key_request("RSA_2048", "ENCRYPT_DECRYPT")).await,
        ecdh: [
            create_key_from(c, ecdh.clone()).await,
            create_key_from(c, ecdh).await,
        ],
    }
}

/// Sign and verify, RSA-OAEP (encrypted by OpenSSL under the public key GetPublicKey
/// answers, decrypted by the daemon, and the reverse within the daemon) and ECDH both ways:
/// each public-key answer must match the wrapped private half.
async fn use_pairs(c: &mut Client, p: &Pairs) {
    let sig = c
        .sign(sign_request(&p.sign, b"signed", "ECDSA_SHA_256"))
        .await
        .reply()
        .signature;
    let ok = c
        .verify(verify_request(&p.sign, b"signed", &sig, "ECDSA_SHA_256"))
        .await
        .reply();
    assert!(ok.signature_valid);
    let forged = c
        .verify(verify_request(&p.sign, b"other", &sig, "ECDSA_SHA_256"))
        .await;
    assert_eq!(reason(forged), "KMSInvalidSignatureException");
    let spki = public_key(c, &p.rsa).await;
    let outside = openssl_oaep_encrypt(&spki, "sha256", b"from openssl");
    let r = c
        .decrypt(decrypt_request_alg(&outside, &p.rsa, "RSAES_OAEP_SHA_256"))
        .await
        .reply();
    assert_eq!(r.plaintext, b"from openssl");
    let inside = c
        .encrypt(encrypt_request_alg(&p.rsa, b"from kms", "RSAES_OAEP_SHA_1"))
        .await
        .reply()
        .ciphertext_blob;
    let r = c
        .decrypt(decrypt_request_alg(&inside, &p.rsa, "RSAES_OAEP_SHA_1"))
        .await
        .reply();
    assert_eq!(r.plaintext, b"from kms");
    let [a, b] = &p.ecdh;
    let (pa, pb_) = (public_key(c, a).await, public_key(c, b).await);
    let ab = c
        .derive_shared_secret(derive_request(a, &pb_))
        .await
        .reply();
    let ba = c.derive_shared_secret(derive_request(b, &pa)).await.reply();
    assert_eq!(ab.shared_secret.len(), 32);
    assert_eq!(ab.shared_secret, ba.shared_secret, "ECDH both ways");
}

/// Key pairs in wrapped residency: the private half is a blob, the public half the stored
/// SPKI (no token object for either); every public- and private-key operation works, before
/// and after a restart with a cold cache; GenerateDataKeyPair under a wrapped CMK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_key_pairs_serve_every_asymmetric_operation() {
    trusted_token().await;
    let _one = TOKEN_COUNT.lock().await;
    let dir = data_dir("wrapped-pairs");
    let config = wrapped_config(&dir);
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    let objects = token_objects(&server).await;
    let pairs = create_pairs(&mut c).await;
    assert_eq!(
        token_objects(&server).await,
        objects,
        "a wrapped pair made a token object"
    );
    let store = server.kms.store();
    for key in [&pairs.sign, &pairs.rsa, &pairs.ecdh[0], &pairs.ecdh[1]] {
        let stored = store.get_key(key).await.unwrap().unwrap();
        let blob = stored.versions[0].wrapped.clone().expect("a stored blob");
        assert_eq!(
            blob.public_key.as_deref(),
            Some(public_key(&mut c, key).await.as_slice()),
            "{key}: GetPublicKey answers the stored public key"
        );
    }
    use_pairs(&mut c, &pairs).await;

    // GenerateDataKeyPair under a wrapped symmetric CMK: the private key decrypts back.
    let cmk = create_key(&mut c).await;
    let dkp = c
        .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
            key_id: cmk.clone(),
            key_pair_spec: "ECC_NIST_P256".into(),
            ..Default::default()
        })
        .await
        .reply();
    let back = c
        .decrypt(decrypt_request(&dkp.private_key_ciphertext_blob, &[]))
        .await
        .reply();
    assert_eq!(back.plaintext, dkp.private_key_plaintext);
    drop(c);
    server.shutdown().await.unwrap();

    // A cold start: the blobs and public keys come back from the store.
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    let cold = misses(&server);
    use_pairs(&mut c, &pairs).await;
    assert!(misses(&server) > cold, "the cold cache did not unwrap");
    assert_eq!(token_objects(&server).await, objects);
    drop(c);
    server.shutdown().await.unwrap();
}

/// `p11kms check` as the operator runs it, with `--all-blobs` or not.
fn check(config: &Path, all_blobs: bool) -> (i32, String) {
    let mut command = p11kms_command();
    command.args(["check", "--config"]).arg(config);
    if all_blobs {
        command.arg("--all-blobs");
    }
    code_and_output(&command.output().unwrap())
}

/// `p11kms check` in wrapped residency: residency, masters and versions reported; a sample
/// of 100 blobs verified on the device by default, every blob with `--all-blobs`; an edited
/// blob and a blob moved to another key's row each reported, and the check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verifies_wrapped_blobs_on_the_device() {
    trusted_token().await;
    // `check` reports token objects no store row names: none may be in the making meanwhile.
    let _one = TOKEN_COUNT.lock().await;
    let dir = data_dir("wrapped-check");
    let config = wrapped_config(&dir);
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    let mut keys = Vec::new();
    for _ in 0..101 {
        keys.push(create_key(&mut c).await);
    }
    let pair = create_key_from(&mut c, key_request("ECC_NIST_P256", "SIGN_VERIFY")).await;
    drop(c);
    server.shutdown().await.unwrap();

    let (code, out) = check(&config, false);
    assert_eq!(code, 0, "{out}");
    for line in [
        "residency: wrapped",
        "master key v1: trusted; 102 wrapped versions",
        "wrapped versions: 102; 100 verified on the device",
        "check passed",
    ] {
        assert!(out.contains(line), "no '{line}' in:\n{out}");
    }
    let (code, out) = check(&config, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("wrapped versions: 102; 102 verified"), "{out}");

    // Edit the pair's blob and move one key's blob into another key's row.
    let store = SqlStore::open_sqlite(&dir).await.unwrap();
    let edited = store.get_key(&pair).await.unwrap().unwrap();
    let old = edited.versions[0].wrapped.clone().unwrap();
    let mut bad = old.clone();
    bad.bytes[20] ^= 0x01;
    store
        .set_version_blob(&edited.key, 1, Some(&old), Some(&bad))
        .await
        .unwrap();
    let donor = store.get_key(&keys[0]).await.unwrap().unwrap();
    let victim = store.get_key(&keys[1]).await.unwrap().unwrap();
    store
        .set_version_blob(
            &victim.key,
            1,
            victim.versions[0].wrapped.as_ref(),
            donor.versions[0].wrapped.as_ref(),
        )
        .await
        .unwrap();
    drop(store);

    let (code, out) = check(&config, true);
    assert_ne!(code, 0, "tampered blobs passed the check:\n{out}");
    let rejected: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("DRIFT wrapped blob rejected"))
        .collect();
    assert_eq!(rejected.len(), 2, "{out}");
    for key in [&pair, &keys[1]] {
        let line = format!("DRIFT wrapped blob rejected: key {key} version 1");
        assert!(rejected.iter().any(|l| l.starts_with(&line)), "{out}");
    }
    assert!(out.contains("check FAILED"), "{out}");
}

// ------------------------------------------------------------------------ imported material

const DAY_MS: i64 = 86_400_000;

/// 32 random bytes of key material, made on the client.
fn random_material() -> Vec<u8> {
    let mut m = vec![0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut m).unwrap();
    m
}

/// CreateKey with origin EXTERNAL of `spec` and `usage`; its id.
async fn create_external(c: &mut Client, spec: &str, usage: &str) -> String {
    let req = pb::CreateKeyRequest {
        origin: "EXTERNAL".into(),
        ..key_request(spec, usage)
    };
    create_key_from(c, req).await
}

/// GetParametersForImport (RSAES_OAEP_SHA_1, RSA_2048), `material` wrapped by OpenSSL under
/// the wrapping public key, ImportKeyMaterial (expiring at `valid_to_ms` if given).
/// SoftHSM2 2.6 offers RSA-OAEP with SHA-1 only, so RSAES_OAEP_SHA_256 is refused up front
/// (tests/byok_import.rs shows it).
async fn import(
    c: &mut Client,
    key: &str,
    material: &[u8],
    valid_to_ms: Option<i64>,
) -> Result<pb::ImportKeyMaterialResponse, tonic::Status> {
    let p = c
        .get_parameters_for_import(pb::GetParametersForImportRequest {
            key_id: key.into(),
            wrapping_algorithm: "RSAES_OAEP_SHA_1".into(),
            wrapping_key_spec: "RSA_2048".into(),
        })
        .await
        .reply();
    let model = match valid_to_ms {
        Some(_) => "KEY_MATERIAL_EXPIRES",
        None => "KEY_MATERIAL_DOES_NOT_EXPIRE",
    };
    c.import_key_material(pb::ImportKeyMaterialRequest {
        key_id: key.into(),
        import_token: p.import_token,
        encrypted_key_material: openssl_oaep_encrypt(&p.public_key, "sha1", material),
        valid_to: valid_to_ms.map(|ms| prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: 0,
        }),
        expiration_model: model.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The blob stored with version 1 of `key`, if any.
async fn stored_blob(server: &RunningServer, key: &str) -> Option<StoredBlob> {
    let bundle = server.kms.store().get_key(key).await.unwrap().unwrap();
    assert_eq!(bundle.versions.len(), 1, "{bundle:?}");
    bundle.versions[0].wrapped.clone()
}

async fn delete_material(c: &mut Client, key: &str) {
    c.delete_imported_key_material(pb::DeleteImportedKeyMaterialRequest {
        key_id: key.into(),
        ..Default::default()
    })
    .await
    .reply();
}

/// Imported material held as a wrapped key is: a blob in the store, never a token object.
async fn assert_held_wrapped(server: &RunningServer, key: &str) {
    assert!(stored_blob(server, key).await.is_some(), "{key}: no blob");
    let objects = key_objects(server, key).await;
    assert!(
        objects.iter().all(|(_, token)| !token),
        "{key}: a token object: {objects:?}"
    );
}

/// The material of `key`, the only key `server` has used, exists nowhere: no blob in its row,
/// no object of it on the token, no unwrapped copy in any worker; the key is PendingImport,
/// and Encrypt and the decryption of `ciphertext` are refused.
async fn assert_material_gone(
    server: &RunningServer,
    c: &mut Client,
    key: &str,
    ciphertext: &[u8],
) {
    assert_eq!(
        stored_blob(server, key).await,
        None,
        "the blob is still stored"
    );
    assert_eq!(key_objects(server, key).await, vec![], "an object is left");
    assert_eq!(resident(server), 0, "an unwrapped copy is left");
    assert_eq!(describe_key(c, key).await.key_state, "PendingImport");
    let r = encrypt_with(c, key, b"x", &[]).await;
    assert_eq!(reason(r), "KMSInvalidStateException");
    assert_eq!(
        reason(decrypt(c, ciphertext).await),
        "KMSInvalidStateException"
    );
}

/// Encrypt under `key`, checked by opening the ciphertext locally with the known material:
/// the device serves exactly the imported key.
async fn encrypt_known(c: &mut Client, key: &str, material: &[u8], pt: &[u8]) -> Vec<u8> {
    let ct = encrypt(c, key, pt).await;
    let ec = [("app", "wrapped")];
    assert_eq!(open_locally(material, &ct, &ec).as_deref(), Some(pt));
    ct
}

/// ImportKeyMaterial in wrapped residency: the material is rewrapped under the master key on
/// the device and stored as a blob (no token object), serves at once and after a restart
/// with a cold cache; DeleteImportedKeyMaterial removes the blob and every unwrapped copy;
/// different material is refused and stores nothing; the same material brings old
/// ciphertexts back; material past its ValidTo is removed by the expiry sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_material_is_wrapped_deleted_expired_and_reimported() {
    trusted_token().await;
    let _one = TOKEN_COUNT.lock().await;
    let dir = data_dir("wrapped-import");
    let config = wrapped_config(&dir);
    let clock = Arc::new(ManualClock::default());
    let server = start_config_swept_by_hand(&config, clock.clone()).await;
    let mut c = admin(server.addr).await;
    let objects = token_objects(&server).await;
    let key = create_external(&mut c, "SYMMETRIC_DEFAULT", "").await;
    let material = random_material();
    import(&mut c, &key, &material, None).await.unwrap();
    assert_eq!(describe_key(&mut c, &key).await.key_state, "Enabled");
    assert_held_wrapped(&server, &key).await;
    assert_eq!(stored_blob(&server, &key).await.unwrap().master, 1);
    assert_eq!(token_objects(&server).await, objects, "wrapping key left");
    let ct = encrypt_known(&mut c, &key, &material, b"imported").await;
    assert_eq!(decrypt(&mut c, &ct).await.unwrap(), b"imported");
    drop(c);
    server.shutdown().await.unwrap();

    // A cold start unwraps the stored blob again.
    let server = start_config_swept_by_hand(&config, clock.clone()).await;
    let mut c = admin(server.addr).await;
    let cold = misses(&server);
    assert_eq!(decrypt(&mut c, &ct).await.unwrap(), b"imported");
    assert!(misses(&server) > cold, "the cold cache did not unwrap");
    assert!(resident(&server) > 0, "no unwrapped copy");

    // Deleted: the blob leaves the row, the copies leave the device.
    delete_material(&mut c, &key).await;
    assert_material_gone(&server, &mut c, &key, &ct).await;

    // Different material: IncorrectKeyMaterialException, nothing stored or left.
    let r = import(&mut c, &key, &random_material(), None).await;
    assert_eq!(reason(r), "IncorrectKeyMaterialException");
    assert_material_gone(&server, &mut c, &key, &ct).await;

    // The same material again: the blob is back and old ciphertexts decrypt.
    let valid_to = clock.now_ms() + 2 * DAY_MS;
    import(&mut c, &key, &material, Some(valid_to))
        .await
        .unwrap();
    assert_eq!(describe_key(&mut c, &key).await.key_state, "Enabled");
    assert_held_wrapped(&server, &key).await;
    assert_eq!(decrypt(&mut c, &ct).await.unwrap(), b"imported");
    encrypt_known(&mut c, &key, &material, b"again").await;

    // Past ValidTo, the expiry sweep removes the blob and the copies.
    clock.advance_ms(DAY_MS);
    assert!(server.kms.sweep_imports().await.unwrap().is_empty());
    assert_held_wrapped(&server, &key).await;
    clock.advance_ms(2 * DAY_MS);
    let done = server.kms.sweep_imports().await.unwrap();
    assert!(done.len() == 1 && done[0].succeeded(), "{done:?}");
    assert_material_gone(&server, &mut c, &key, &ct).await;
    assert_eq!(token_objects(&server).await, objects);
    drop(c);
    server.shutdown().await.unwrap();
}

/// Imported HMAC material in wrapped residency: a blob, no token object, and the MACs of the
/// known key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_hmac_material_is_wrapped() {
    trusted_token().await;
    let _one = TOKEN_COUNT.lock().await;
    let config = wrapped_config(&data_dir("wrapped-import-hmac"));
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    let key = create_external(&mut c, "HMAC_256", "GENERATE_VERIFY_MAC").await;
    let material = random_material();
    import(&mut c, &key, &material, None).await.unwrap();
    assert_held_wrapped(&server, &key).await;
    let local = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &material),
        b"message",
    );
    assert_eq!(
        hmac_sha256(&mut c, &key, b"message").await,
        local.as_ref(),
        "the device's MAC is not the imported key's"
    );
    drop(c);
    server.shutdown().await.unwrap();
}

/// Another node deletes imported material: this node, following the change log, forgets the
/// blob and destroys its unwrapped copies, and refuses the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_followed_from_another_node_drops_the_unwrapped_copies() {
    trusted_token().await;
    let _one = TOKEN_COUNT.lock().await;
    let config = wrapped_config(&data_dir("wrapped-import-follow"));
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    let key = create_external(&mut c, "SYMMETRIC_DEFAULT", "").await;
    import(&mut c, &key, &random_material(), None)
        .await
        .unwrap();
    let ct = encrypt(&mut c, &key, b"followed").await;
    assert!(resident(&server) > 0, "no unwrapped copy");

    // The other node's write, as DeleteImportedKeyMaterial makes it there.
    let store = server.kms.store();
    let mut record = store.get_key(&key).await.unwrap().unwrap().key;
    let mut l = store.get_lifecycle(&key).await.unwrap().unwrap();
    record.state = KeyState::PendingImport;
    (l.material_present, l.valid_to_ms, l.expiration_model) = (false, None, None);
    store.drop_imported_material(&record, &l).await.unwrap();
    let change = Change {
        seq: 0,
        at_ms: 0,
        kind: ChangeKind::Key,
        id: key.clone(),
    };
    server.kms.apply_change(&change).await.unwrap();
    assert_material_gone(&server, &mut c, &key, &ct).await;
    drop(c);
    server.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------ scale

/// Issue 19: "the token's object count stays constant while 10,000 keys are created", 16
/// creators at a time over one gRPC connection; a sample of the keys encrypts and decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_wrapped_keys_leave_the_token_object_count_constant() {
    const KEYS: usize = 10_000;
    trusted_token().await;
    let _one = TOKEN_COUNT.lock().await;
    let config = wrapped_config(&data_dir("wrapped-10k"));
    let server = start_from(&config).await;
    let c = admin(server.addr).await;
    let objects = token_objects(&server).await;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (mut c, next) = (c.clone(), next.clone());
        creators.spawn(async move {
            let mut made = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < KEYS {
                made.push(create_key(&mut c).await);
            }
            made
        });
    }
    let mut keys = std::collections::BTreeSet::new();
    while let Some(made) = creators.join_next().await {
        keys.extend(made.unwrap());
    }
    eprintln!("{KEYS} wrapped keys created in {:?}", started.elapsed());
    assert_eq!(keys.len(), KEYS, "distinct keys");
    assert_eq!(
        token_objects(&server).await,
        objects,
        "creating keys changed the token's object count"
    );
    let mut c = c;
    for (i, key) in keys.iter().enumerate().step_by(KEYS / 20) {
        let pt = format!("key {i}");
        let ct = encrypt(&mut c, key, pt.as_bytes()).await;
        assert_eq!(decrypt(&mut c, &ct).await.unwrap(), pt.as_bytes());
        assert!(stored_blob(&server, key).await.is_some(), "{key}: no blob");
    }
    drop(c);
    server.shutdown().await.unwrap();
}
