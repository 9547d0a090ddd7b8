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
//! - sign: SHA-256 of the message in-process + `C_SignInit` + `C_Sign` (`CKM_ECDSA`) with an
//!   ECC_NIST_P256 token key pair made with the CMK pair templates, and the DER encoding of the
//!   signature, as the daemon's Sign with ECDSA_SHA_256 and MessageType RAW;
//! - verify: SHA-256 + DER decoding + `C_VerifyInit` + `C_Verify` with the public half.
//!
//! The symmetric operations run either on the token key or on a session-object copy of it
//! ([`RawKey`]): the daemon uses such copies by default (`hsm.session_key_copies`), and
//! SoftHSM2 serves them faster, so the benchmark reports both ceilings.
//!
//! cryptoki's `encrypt`/`decrypt` make the same two-pass (size, then data) calls in both the
//! daemon and here, so the comparison is like for like.

use std::path::Path;
use std::time::{Duration, Instant};

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

use super::asym::{cmk_pair_generation, Curve, PairSpec, PairUsage};
use super::error::{from_cryptoki, HsmError, HsmErrorKind};
use super::objects::{cmk_aes_template, ObjectId};
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

/// An open session and a token key of the CMK kind (plus its session copy), ready for timed
/// runs.
pub struct RawBench {
    session: Session,
    key: ObjectHandle,
    copy: ObjectHandle,
    token: String,
}

impl std::fmt::Debug for RawBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBench")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn fail<'a>(
    token: &'a str,
    function: &'static str,
) -> impl Fn(cryptoki::error::Error) -> HsmError + 'a {
    move |e| from_cryptoki(function, token, &e)
}

/// A fresh random object id (UUID v4 bytes, version 0).
fn fresh_id() -> ObjectId {
    ObjectId::new(*uuid::Uuid::new_v4().as_bytes(), 0)
}

/// The CMK template with a label that says the object belongs to the benchmark.
fn bench_template(id: &ObjectId) -> Vec<Attribute> {
    let mut t = cmk_aes_template(id);
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
        let pkcs11 = module::module(module_path, token_label)?;
        let slot = module::find_token(&pkcs11, token_label, &|_| {})?;
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(fail(token_label, "C_OpenSession"))?;
        module::login(&session, pin, token_label)?;
        let key = session
            .generate_key(&Mechanism::AesKeyGen, &bench_template(&fresh_id()))
            .map_err(fail(token_label, "C_GenerateKey"))?;
        let copy = match session.copy_object(key, &[Attribute::Token(false)]) {
            Ok(copy) => copy,
            Err(e) => {
                let _ = session.destroy_object(key);
                return Err(from_cryptoki("C_CopyObject", token_label, &e));
            }
        };
        Ok(RawBench {
            session,
            key,
            copy,
            token: token_label.to_owned(),
        })
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.session
            .generate_random_slice(out)
            .map_err(fail(&self.token, "C_GenerateRandom"))
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
        let ct = self
            .session
            .encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(fail(&self.token, "C_Encrypt"))?;
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
        self.session
            .decrypt(&Mechanism::AesGcm(params), key, ct)
            .map_err(fail(&self.token, "C_Decrypt"))
    }

    /// A P-256 signing key pair of the CMK pair kind (token objects), for sign and verify.
    fn ec_pair(&self) -> Result<(ObjectHandle, ObjectHandle), HsmError> {
        let (mech, mut public, mut private) =
            cmk_pair_generation(&fresh_id(), PairSpec::Ec(Curve::P256), PairUsage::Sign);
        for t in [&mut public, &mut private] {
            for a in t.iter_mut() {
                if let Attribute::Label(l) = a {
                    *l = b"p11kms-bench/raw/ecdsa".to_vec();
                }
            }
        }
        self.session
            .generate_key_pair(&mech, &public, &private)
            .map_err(fail(&self.token, "C_GenerateKeyPair"))
    }

    /// SHA-256 + `C_Sign(CKM_ECDSA)` + DER, as the daemon's Sign (ECDSA_SHA_256, RAW).
    fn ecdsa_sign(&self, private: ObjectHandle, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(message);
        let raw = self
            .session
            .sign(&Mechanism::Ecdsa, private, &digest)
            .map_err(fail(&self.token, "C_Sign"))?;
        super::signing::ecdsa_raw_to_der(&raw).ok_or_else(|| {
            HsmError::new(
                HsmErrorKind::Other,
                "C_Sign",
                &self.token,
                "malformed ECDSA signature",
            )
        })
    }

    /// SHA-256 + DER decoding + `C_Verify(CKM_ECDSA)`, as the daemon's Verify.
    fn ecdsa_verify(
        &self,
        public: ObjectHandle,
        message: &[u8],
        der: &[u8],
    ) -> Result<(), HsmError> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(message);
        let raw = super::der::ecdsa_der_to_raw(der, Curve::P256.field_len()).ok_or_else(|| {
            HsmError::new(
                HsmErrorKind::Other,
                "C_Verify",
                &self.token,
                "malformed ECDSA signature",
            )
        })?;
        self.session
            .verify(&Mechanism::Ecdsa, public, &digest, &raw)
            .map_err(fail(&self.token, "C_Verify"))
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
                let (mut public, mut private) = self.ec_pair()?;
                created.extend([public, private]);
                if kind == RawKey::SessionCopy {
                    for h in [&mut public, &mut private] {
                        *h = self
                            .session
                            .copy_object(*h, &[Attribute::Token(false)])
                            .map_err(fail(&self.token, "C_CopyObject"))?;
                        created.push(*h);
                    }
                }
                Some((public, private, self.ecdsa_sign(private, &plaintext)?))
            }
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
                RawOp::CreateKey => self
                    .session
                    .generate_key(&Mechanism::AesKeyGen, &bench_template(&fresh_id()))
                    .map(|h| created.push(h))
                    .map_err(fail(&self.token, "C_GenerateKey")),
                RawOp::Sign | RawOp::Verify => {
                    let (public, private, sig) = pair.as_ref().expect("made above");
                    if op == RawOp::Sign {
                        self.ecdsa_sign(*private, &plaintext).map(drop)
                    } else {
                        self.ecdsa_verify(*public, &plaintext, sig)
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
            if let Err(e) = self.session.destroy_object(h) {
                tracing::warn!(error = %from_cryptoki("C_DestroyObject", &self.token, &e), "raw bench: could not destroy a key it created");
            }
        }
        result.map(|()| RawResult { ops, elapsed })
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
            if let Err(e) = self.session.destroy_object(h) {
                tracing::warn!(error = %from_cryptoki("C_DestroyObject", &self.token, &e), "raw bench: could not destroy its key");
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
