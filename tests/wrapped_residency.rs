//! Wrapped-key residency (issue 19) against the real daemon, a real SoftHSM2 token, the real
//! SQLite store and the gRPC client: the master key made at first start and trusted by the
//! security officer's ceremony (`p11kms hsm trust-master`, a separate process); keys whose
//! material lives in the store as blobs while the token's object count stays constant; a
//! denied request unwraps nothing; rotation; a restart with a cold cache; a blob edited or
//! moved to another key's row is refused by the device; key pairs (private half a blob,
//! public half the stored SPKI) in every asymmetric operation; `p11kms check` verifying
//! blobs on the device.

mod common;

use std::path::Path;

use common::*;
use p11kms::pb;
use p11kms::server::RunningServer;
use p11kms::store::{MetadataStore, SqlStore};

/// The token objects (not session objects) on the daemon's token.
async fn token_objects(server: &RunningServer) -> usize {
    let all = server.kms.hsm().list_objects().await.unwrap();
    all.iter().filter(|o| o.token).count()
}

fn misses(server: &RunningServer) -> u64 {
    server.kms.hsm().stats().wrapped_cache_misses
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
