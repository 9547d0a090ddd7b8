//! The raw HSM baseline for `p11kms-bench`: the same PKCS#11 calls a daemon worker makes per
//! request, in-process, on one thread, with no network, no policy and no queue.
//!
//! A [`RawBench`] shares the process-global module registry of the HSM layer
//! ([`super::module`]), opens its own R/W session on the token (found by label), logs in, and
//! creates its own AES-256 token key with the CMK template (the same object kind the daemon
//! uses). Dropping it destroys that key and closes the session.
//!
//! Per operation, the calls are those of `ops.rs`:
//! - encrypt: `C_GenerateRandom(12)` + `C_EncryptInit` + `C_Encrypt`;
//! - decrypt: `C_DecryptInit` + `C_Decrypt`;
//! - generate-data-key: `C_GenerateRandom(n)` + the encrypt above of those `n` bytes;
//! - re-encrypt: the decrypt above + the encrypt above;
//! - create-key: `C_GenerateKey` of an AES-256 token key (the keys made are destroyed after the
//!   timed loop, outside the measurement);
//! - sign: the daemon's Sign with MessageType RAW on a token key pair made with the CMK pair
//!   templates ([`RawSigning`]): SHA-256 of the message in-process + `C_SignInit` + `C_Sign`
//!   with `CKM_ECDSA` (P-256, DER-encoded result) or `CKM_RSA_PKCS_PSS` (RSA-2048), or
//!   `C_Sign` with `CKM_EDDSA` over the message itself (Ed25519);
//! - verify: the same input (and DER decoding for ECDSA) + `C_VerifyInit` + `C_Verify` with the
//!   public half.
//!
//! - unwrap-encrypt (wrapped residency, every use a cache miss): what a daemon worker does
//!   for an Encrypt on a wrapped key it holds no copy of: `C_Verify` of the blob's HMAC tag
//!   under the master's bind key + `C_UnwrapKey` (`CKM_AES_KEY_WRAP_PAD` under the master)
//!   into a session object + the encrypt above + `C_DestroyObject` of the copy. The blob is
//!   made once, before the clock starts, like a CMK version's (a session AES key generated
//!   with the wrapped template, wrapped under the token's trusted master `p11kms/master/v1`
//!   and tagged on the device), so the token needs the security officer's ceremony first.
//!
//! The symmetric operations run either on the token key or on a session-object copy of it
//! ([`RawKey`]): the daemon uses such copies by default (`hsm.session_key_copies`), and
//! SoftHSM2 serves them faster, so the benchmark reports both ceilings.
//!
//! cryptoki's `encrypt`/`decrypt` make the same two-pass (size, then data) calls in both the
//! daemon and here, and every call goes through the same counting and timing wrapper
//! ([`super::call::Counters`], the bench's own), so the comparison is like for like.
//!
//! Built only with the `bench` feature (the `p11kms-bench` binary requires it).

use std::path::Path;
use std::time::{Duration, Instant};

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

use super::asym::{
    cmk_pair_generation, sign_input, sign_mechanism, Curve, PairSpec, PairUsage, ShaAlg, SignScheme,
};
use super::call::{Call, Counters};
use super::error::{HsmError, HsmErrorKind};
use super::oaep::OaepSha256;
use super::objects::{cmk_aes_template, ObjectId};
use super::wrapped::{BlobKind, MasterVersion, WrappedBlob};
use super::{module, Pin, GCM_IV_LEN, GCM_TAG_LEN, MAX_RANDOM_LEN};

/// Most operations one [`RawBench::run`] call performs, whatever its duration.
pub const MAX_OPS_PER_RUN: u64 = 50_000_000;
/// Most keys one create-key run makes (each is a token file; they are destroyed afterwards).
pub const MAX_KEYS_PER_RUN: u64 = 5_000;

/// Which request's HSM work to repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawOp {
    /// Encrypt `payload` bytes.
    Encrypt,
    /// Decrypt a ciphertext of `payload` bytes.
    Decrypt,
    /// Draw `payload` random bytes and encrypt them (GenerateDataKey and
    /// GenerateDataKeyWithoutPlaintext make the same calls).
    GenerateDataKey,
    /// Decrypt a ciphertext of `payload` bytes and encrypt the plaintext again.
    ReEncrypt,
    /// Generate an AES-256 token key.
    CreateKey,
    /// ECDSA P-256 signature over the SHA-256 of `payload` bytes (DER-encoded).
    Sign,
    /// Verify such a signature.
    Verify,
    /// Encrypt `payload` bytes under a wrapped key unwrapped for this one use (tag check,
    /// unwrap, encrypt, destroy): the wrapped-residency cache miss.
    UnwrapEncrypt,
}

/// What one timed run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawResult {
    /// Operations completed.
    pub ops: u64,
    /// Wall time of the loop.
    pub elapsed: Duration,
}

impl RawResult {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }
}

/// Which object of the benchmark's key the symmetric operations use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKey {
    /// The AES-256 token key (the object kind a CMK version is stored as).
    Token,
    /// A session-object copy of it (`C_CopyObject`, `CKA_TOKEN = false`): the object kind the
    /// daemon's workers use when `hsm.session_key_copies` is on. For sign and verify, session
    /// copies of both halves of the P-256 pair.
    SessionCopy,
}

/// The key kind and scheme of the sign and verify runs, as the daemon's Sign with MessageType
/// RAW does them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RawSigning {
    /// ECC_NIST_P256, ECDSA_SHA_256: SHA-256 in-process, `CKM_ECDSA`, DER signature.
    #[default]
    EcdsaP256,
    /// RSA_2048, RSASSA_PSS_SHA_256: SHA-256 in-process, `CKM_RSA_PKCS_PSS`.
    RsaPss2048,
    /// ECC_NIST_EDWARDS25519, ED25519_SHA_512: `CKM_EDDSA` over the message.
    Ed25519,
}

impl RawSigning {
    fn spec(self) -> PairSpec {
        match self {
            RawSigning::EcdsaP256 => PairSpec::Ec(Curve::P256),
            RawSigning::RsaPss2048 => PairSpec::Rsa(2048),
            RawSigning::Ed25519 => PairSpec::Ed25519,
        }
    }

    fn scheme(self) -> SignScheme {
        match self {
            RawSigning::EcdsaP256 => SignScheme::Ecdsa(Curve::P256),
            RawSigning::RsaPss2048 => SignScheme::RsaPss(ShaAlg::Sha256),
            RawSigning::Ed25519 => SignScheme::Ed25519,
        }
    }

    /// What the daemon's device call signs: the SHA-256 digest, or the message (Ed25519).
    fn signed_input(self, message: &[u8]) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        match self {
            RawSigning::Ed25519 => message.to_vec(),
            _ => Sha256::digest(message).to_vec(),
        }
    }
}

/// An open session and a token key of the CMK kind (plus its session copy), ready for timed
/// runs.
pub struct RawBench {
    counters: Counters,
    session: Session,
    key: ObjectHandle,
    copy: ObjectHandle,
    token: String,
    signing: RawSigning,
}

impl std::fmt::Debug for RawBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBench")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A fresh random object id (UUID v4 bytes, version 0).
fn fresh_id() -> ObjectId {
    ObjectId::new(*uuid::Uuid::new_v4().as_bytes(), 0)
}

/// The CMK template with a label that says the object belongs to the benchmark.
fn bench_template(id: &ObjectId) -> Vec<Attribute> {
    let mut t = cmk_aes_template(id, &id.label());
    for a in t.iter_mut() {
        if let Attribute::Label(l) = a {
            *l = format!("p11kms-bench/raw/{id}").into_bytes();
        }
    }
    t
}

impl RawBench {
    /// Load (or reuse) the module, find the token by label, open a R/W session, log in and
    /// create the benchmark's token key. Blocking.
    pub fn open(module_path: &Path, token_label: &str, pin: &Pin) -> Result<RawBench, HsmError> {
        let c = Counters::default();
        let pkcs11 = module::module(module_path, token_label, &c)?.pkcs11;
        let slot = module::find_token(&pkcs11, token_label, &c)?;
        let session = c.call(Call::OpenSession, token_label, || {
            pkcs11.open_rw_session(slot)
        })?;
        module::login(&c, &session, pin, token_label)?;
        let template = bench_template(&fresh_id());
        let key = c.call(Call::GenerateKey, token_label, || {
            session.generate_key(&Mechanism::AesKeyGen, &template)
        })?;
        let copied = c.call(Call::CopyObject, token_label, || {
            session.copy_object(key, &[Attribute::Token(false)])
        });
        let copy = match copied {
            Ok(copy) => copy,
            Err(e) => {
                let _ = c.run(Call::DestroyObject, || session.destroy_object(key));
                return Err(e);
            }
        };
        Ok(RawBench {
            counters: c,
            session,
            key,
            copy,
            token: token_label.to_owned(),
            signing: RawSigning::default(),
        })
    }

    /// One PKCS#11 call on the bench's session, through the HSM layer's wrapper.
    fn call<T>(
        &self,
        call: Call,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.counters.call(call, &self.token, || f(&self.session))
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.call(Call::GenerateRandom, |s| s.generate_random_slice(out))
    }

    /// `C_GenerateRandom(12)` + `C_EncryptInit` + `C_Encrypt`, as the daemon's `seal`.
    fn seal(
        &self,
        key: ObjectHandle,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<([u8; GCM_IV_LEN], Vec<u8>), HsmError> {
        let mut iv = [0u8; GCM_IV_LEN];
        self.random(&mut iv)?;
        let mut iv_buf = iv;
        let params = gcm(&self.token, &mut iv_buf, aad)?;
        let ct = self.call(Call::Encrypt, |s| {
            s.encrypt(&Mechanism::AesGcm(params), key, plaintext)
        })?;
        Ok((iv, ct))
    }

    /// `C_DecryptInit` + `C_Decrypt`, as the daemon's `open`.
    fn open_ct(
        &self,
        key: ObjectHandle,
        iv: &[u8; GCM_IV_LEN],
        ct: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let mut iv_buf = *iv;
        let params = gcm(&self.token, &mut iv_buf, aad)?;
        self.call(Call::Decrypt, |s| {
            s.decrypt(&Mechanism::AesGcm(params), key, ct)
        })
    }

    /// The key kind and scheme of later sign and verify runs.
    pub fn with_signing(mut self, signing: RawSigning) -> Self {
        self.signing = signing;
        self
    }

    /// A signing key pair of the CMK pair kind (token objects) for sign and verify.
    fn signing_pair(&self) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
        let (mech, mut public, mut private) = cmk_pair_generation(
            &fresh_id(),
            self.signing.spec(),
            PairUsage::Sign,
            // A signing pair: no OAEP.
            OaepSha256::Device,
        );
        for t in [&mut public, &mut private] {
            for a in t.iter_mut() {
                if let Attribute::Label(l) = a {
                    *l = b"p11kms-bench/raw/signing".to_vec();
                }
            }
        }
        self.call(Call::GenerateKeyPair, |s| {
            s.generate_key_pair(&mech, &public, &private)
        })
    }

    /// The daemon's Sign (MessageType RAW) with [`RawSigning`]: the digest or message, the
    /// same mechanism and input, and DER for ECDSA.
    fn sign_message(&self, private: ObjectHandle, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let scheme = self.signing.scheme();
        let digest = self.signing.signed_input(message);
        let bad = |what: &str| HsmError::new(HsmErrorKind::Other, "C_Sign", &self.token, what);
        let input = sign_input(scheme, &digest).ok_or_else(|| bad("unsupported digest"))?;
        let mech = sign_mechanism(scheme, digest.len());
        let raw = self.call(Call::Sign, |s| s.sign(&mech, private, &input))?;
        match scheme {
            SignScheme::Ecdsa(_) => super::signing::ecdsa_raw_to_der(&raw)
                .ok_or_else(|| bad("malformed ECDSA signature")),
            _ => Ok(raw),
        }
    }

    /// The daemon's Verify (MessageType RAW) with [`RawSigning`].
    fn verify_message(
        &self,
        public: ObjectHandle,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), HsmError> {
        let scheme = self.signing.scheme();
        let digest = self.signing.signed_input(message);
        let bad = |what: &str| HsmError::new(HsmErrorKind::Other, "C_Verify", &self.token, what);
        let input = sign_input(scheme, &digest).ok_or_else(|| bad("unsupported digest"))?;
        let signature = match scheme {
            SignScheme::Ecdsa(c) => super::der::ecdsa_der_to_raw(signature, c.field_len())
                .ok_or_else(|| bad("malformed ECDSA signature"))?,
            _ => signature.to_vec(),
        };
        let mech = sign_mechanism(scheme, digest.len());
        self.call(Call::Verify, |s| {
            s.verify(&mech, public, &input, &signature)
        })
    }

    /// Repeat `op` back to back for `duration` (at most [`MAX_OPS_PER_RUN`] operations, and
    /// [`MAX_KEYS_PER_RUN`] for create-key). `payload` is the plaintext or data-key size
    /// (1..=4096 bytes); `aad` is the GCM AAD (the daemon's is the ciphertext header).
    /// Symmetric operations use the token key.
    pub fn run(
        &self,
        op: RawOp,
        payload: usize,
        aad: &[u8],
        duration: Duration,
    ) -> Result<RawResult, HsmError> {
        self.run_on(RawKey::Token, op, payload, aad, duration)
    }

    /// [`RawBench::run`] with the symmetric operations on the object `kind` names.
    pub fn run_on(
        &self,
        kind: RawKey,
        op: RawOp,
        payload: usize,
        aad: &[u8],
        duration: Duration,
    ) -> Result<RawResult, HsmError> {
        let key = match kind {
            RawKey::Token => self.key,
            RawKey::SessionCopy => self.copy,
        };
        if payload == 0 || payload > MAX_RANDOM_LEN {
            return Err(HsmError::new(
                HsmErrorKind::Other,
                "raw_bench",
                &self.token,
                format!("payload must be 1..={MAX_RANDOM_LEN} bytes"),
            ));
        }
        let plaintext = vec![0x5au8; payload];
        // A ciphertext for the decrypt-based operations (made before the clock starts).
        let (iv, ct) = self.seal(key, &plaintext, aad)?;
        debug_assert_eq!(ct.len(), payload + GCM_TAG_LEN);
        let mut scratch = vec![0u8; payload];
        let mut created: Vec<ObjectHandle> = Vec::new();
        // The signing pair for sign/verify (made before the clock starts, destroyed after).
        let pair = match op {
            RawOp::Sign | RawOp::Verify => {
                let (mut public, mut private) = self.signing_pair()?;
                created.extend([public, private]);
                if kind == RawKey::SessionCopy {
                    for h in [&mut public, &mut private] {
                        let original = *h;
                        *h = self.call(Call::CopyObject, |s| {
                            s.copy_object(original, &[Attribute::Token(false)])
                        })?;
                        created.push(*h);
                    }
                }
                Some((public, private, self.sign_message(private, &plaintext)?))
            }
            _ => None,
        };
        let wrapped = match op {
            RawOp::UnwrapEncrypt => Some(self.wrapped_fixture()?),
            _ => None,
        };
        let limit = if op == RawOp::CreateKey {
            MAX_KEYS_PER_RUN
        } else {
            MAX_OPS_PER_RUN
        };
        let start = Instant::now();
        let mut ops = 0u64;
        let mut result = Ok(());
        while ops < limit && start.elapsed() < duration {
            let r = match op {
                RawOp::Encrypt => self.seal(key, &plaintext, aad).map(drop),
                RawOp::Decrypt => self.open_ct(key, &iv, &ct, aad).map(drop),
                RawOp::GenerateDataKey => self
                    .random(&mut scratch)
                    .and_then(|()| self.seal(key, &scratch, aad).map(drop)),
                RawOp::ReEncrypt => self
                    .open_ct(key, &iv, &ct, aad)
                    .and_then(|pt| self.seal(key, &pt, aad).map(drop)),
                RawOp::CreateKey => {
                    let template = bench_template(&fresh_id());
                    self.call(Call::GenerateKey, |s| {
                        s.generate_key(&Mechanism::AesKeyGen, &template)
                    })
                    .map(|h| created.push(h))
                }
                RawOp::UnwrapEncrypt => {
                    let w = wrapped.as_ref().expect("made above");
                    self.unwrap_encrypt(w, &plaintext, aad)
                }
                RawOp::Sign | RawOp::Verify => {
                    let (public, private, sig) = pair.as_ref().expect("made above");
                    if op == RawOp::Sign {
                        self.sign_message(*private, &plaintext).map(drop)
                    } else {
                        self.verify_message(*public, &plaintext, sig)
                    }
                }
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            ops += 1;
        }
        let elapsed = start.elapsed();
        for h in created {
            if let Err(e) = self.call(Call::DestroyObject, |s| s.destroy_object(h)) {
                tracing::warn!(error = %e, "raw bench: could not destroy a key it created");
            }
        }
        result.map(|()| RawResult { ops, elapsed })
    }
}

/// The wrapped-residency baseline's fixture: the master and bind key of
/// `p11kms/master/v1` and a blob made for a fresh object id.
struct RawWrapped {
    master: ObjectHandle,
    bind: ObjectHandle,
    id: ObjectId,
    blob: WrappedBlob,
}

impl RawBench {
    /// The token object whose `CKA_ID` is `id` (a master or bind key).
    fn find_secret(&self, id: [u8; 20]) -> Result<ObjectHandle, HsmError> {
        let search = [
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
        ];
        let found = self.call(Call::FindObjects, |s| s.find_objects(&search))?;
        found.first().copied().ok_or_else(|| {
            HsmError::not_found(
                &self.token,
                "no p11kms/master/v1 (or its bind key) on the token: start the daemon in \
                 wrapped residency and run the trust ceremony first",
            )
        })
    }

    /// Generates an AES-256 session key as a wrapped CMK version is made, wraps it under the
    /// trusted master v1 and tags it on the device; the key itself is destroyed.
    fn wrapped_fixture(&self) -> Result<RawWrapped, HsmError> {
        let v = MasterVersion(1);
        let master = self.find_secret(v.cka_id())?;
        let bind = self.find_secret(v.bind_cka_id())?;
        let kind = BlobKind::Aes256;
        let template = kind.template(true);
        let key = self.call(Call::GenerateKey, |s| {
            s.generate_key(&kind.generation(), &template)
        })?;
        let wrapped = self.call(Call::WrapKey, |s| {
            s.wrap_key(&Mechanism::AesKeyWrapPad, master, key)
        });
        let _ = self.call(Call::DestroyObject, |s| s.destroy_object(key));
        let id = fresh_id();
        let unsigned = WrappedBlob::unsigned(v, kind, &wrapped?, &self.token)?;
        let message = WrappedBlob::tagged_message(&unsigned, &id);
        let tag = self.call(Call::Sign, |s| {
            s.sign(&Mechanism::Sha256Hmac, bind, &message)
        })?;
        Ok(RawWrapped {
            master,
            bind,
            id,
            blob: WrappedBlob::with_tag(unsigned, &tag),
        })
    }

    /// One wrapped-residency miss: verify the tag, unwrap, encrypt, destroy the copy.
    fn unwrap_encrypt(&self, w: &RawWrapped, plaintext: &[u8], aad: &[u8]) -> Result<(), HsmError> {
        let message = w.blob.tag_message(&w.id);
        self.call(Call::Verify, |s| {
            s.verify(&Mechanism::Sha256Hmac, w.bind, &message, w.blob.tag())
        })?;
        let template = w.blob.kind().template(false);
        let copy = self.call(Call::UnwrapKey, |s| {
            s.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                w.master,
                w.blob.wrapped(),
                &template,
            )
        })?;
        let sealed = self.seal(copy, plaintext, aad).map(drop);
        let destroyed = self.call(Call::DestroyObject, |s| s.destroy_object(copy));
        sealed.and(destroyed)
    }
}

fn gcm<'a>(
    token: &str,
    iv: &'a mut [u8; GCM_IV_LEN],
    aad: &'a [u8],
) -> Result<GcmParams<'a>, HsmError> {
    GcmParams::new(iv, aad, ((GCM_TAG_LEN * 8) as u64).into()).map_err(|e| {
        HsmError::new(
            HsmErrorKind::Other,
            "C_EncryptInit",
            token,
            format!("bad GCM parameters: {e}"),
        )
    })
}

impl Drop for RawBench {
    fn drop(&mut self) {
        for h in [self.copy, self.key] {
            if let Err(e) = self.call(Call::DestroyObject, |s| s.destroy_object(h)) {
                tracing::warn!(error = %e, "raw bench: could not destroy its key");
            }
        }
    }
}

/// One timed run on a fresh session and key (created before and destroyed after the loop).
pub fn raw_bench(
    module_path: &Path,
    token_label: &str,
    pin: &Pin,
    op: RawOp,
    payload: usize,
    aad: &[u8],
    duration: Duration,
) -> Result<RawResult, HsmError> {
    RawBench::open(module_path, token_label, pin)?.run(op, payload, aad, duration)
}
