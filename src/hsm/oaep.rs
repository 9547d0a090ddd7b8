//! RSA-OAEP with SHA-256: whether the device does it ([`sha256_support`], probed once per
//! [`super::Hsm`]), and EME-OAEP encoding and decoding (RFC 8017 section 7.1) with SHA-256 and
//! MGF1-SHA-256 for devices that do not.
//!
//! SoftHSM2 2.6.1 accepts `CKM_RSA_PKCS_OAEP` only with SHA-1 (`CKR_ARGUMENTS_BAD` otherwise),
//! and its `C_GetMechanismInfo` cannot tell (it lists `CKM_RSA_PKCS_OAEP` without naming the
//! hashes), so the probe makes a throwaway session key pair and runs one OAEP-SHA-256 round
//! trip. Where it fails, RSA decryption keys are also allowed `CKM_RSA_X_509`: the RSA
//! operation itself runs on the device (the private key never leaves it) and the padding is
//! applied or removed here, in the same worker job. Where it succeeds, keys carry
//! `CKM_RSA_PKCS_OAEP` only and the device does all of it. Decoding checks every condition
//! without early exits on secret data and reports one undifferentiated failure.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectHandle};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use super::asym::{self, ShaAlg};
use super::call::Call;
use super::error::HsmError;
use super::pool::WorkerCtx;
use super::template::{Template, Usage};

/// How RSA-OAEP with SHA-256 (and MGF1-SHA-256) runs on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OaepSha256 {
    /// The device does it: `CKM_RSA_PKCS_OAEP` with SHA-256 parameters, and RSA decryption
    /// keys are allowed that mechanism only.
    Device,
    /// The device does OAEP with SHA-1 only (SoftHSM2 2.6): RSA decryption keys are also
    /// allowed `CKM_RSA_X_509`, which runs the RSA operation on the device while the daemon
    /// pads.
    RawRsa,
}

/// The label of the probe's throwaway session key pair.
const PROBE_LABEL: &str = "p11kms/oaep-sha256-probe";
const PROBE_MESSAGE: &[u8] = b"p11kms oaep-sha256 probe";

/// Whether the device does RSA-OAEP with SHA-256, probed on the first call for this
/// [`super::Hsm`] (one RSA-2048 session key pair, generated, used and destroyed) and
/// remembered. A device error is returned, not remembered.
pub(crate) fn sha256_support(ctx: &mut WorkerCtx) -> Result<OaepSha256, HsmError> {
    if let Some(known) = ctx.shared.oaep_sha256.get() {
        return Ok(*known);
    }
    let found = probe(ctx)?;
    let known = *ctx.shared.oaep_sha256.get_or_init(|| found);
    match known {
        OaepSha256::Device => tracing::info!(
            token = %ctx.token(),
            "the device does RSA-OAEP with SHA-256: RSA decryption keys allow CKM_RSA_PKCS_OAEP only"
        ),
        OaepSha256::RawRsa => tracing::info!(
            token = %ctx.token(),
            "the device does RSA-OAEP with SHA-1 only: RSA decryption keys also allow \
             CKM_RSA_X_509 and the daemon applies the SHA-256 padding"
        ),
    }
    Ok(known)
}

fn probe(ctx: &mut WorkerCtx) -> Result<OaepSha256, HsmError> {
    let (public_t, private_t) = (probe_template(true), probe_template(false));
    let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_t, &private_t)
    })?;
    let r = round_trip(ctx, public, private);
    asym::destroy_quietly(ctx, &[public, private], "OAEP probe key pair");
    r
}

/// A session RSA-2048 half allowed `CKM_RSA_PKCS_OAEP` only: encrypt for the public half,
/// decrypt for the sensitive private half.
pub(crate) fn probe_template(public: bool) -> Vec<Attribute> {
    let t = if public {
        Template::public(KeyType::RSA)
            .allow(Usage::Encrypt)
            .token_default(&[Usage::VerifyRecover, Usage::Derive])
            .with(Attribute::ModulusBits(2048u64.into()))
            .with(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]))
    } else {
        Template::private(KeyType::RSA)
            .guarded()
            .allow(Usage::Decrypt)
            .token_default(&[Usage::SignRecover])
    };
    t.token(false)
        .label(PROBE_LABEL)
        .mechanisms(vec![MechanismType::RSA_PKCS_OAEP])
        .build()
}

/// An OAEP-SHA-256 encryption and decryption of a known message: `Device` only if the
/// message comes back.
fn round_trip(
    ctx: &mut WorkerCtx,
    public: ObjectHandle,
    private: ObjectHandle,
) -> Result<OaepSha256, HsmError> {
    let mech = asym::oaep(ShaAlg::Sha256);
    let sealed = match ctx.call_raw(Call::Encrypt, |s| s.encrypt(&mech, public, PROBE_MESSAGE)) {
        Ok(c) => c,
        Err(e) if refused(&e) => return Ok(OaepSha256::RawRsa),
        Err(e) => return Err(ctx.fail(Call::Encrypt, &e)),
    };
    match ctx.call_raw(Call::Decrypt, |s| s.decrypt(&mech, private, &sealed)) {
        Ok(p) if p == PROBE_MESSAGE && sealed.len() == 256 => Ok(OaepSha256::Device),
        Ok(_) => Ok(OaepSha256::RawRsa),
        Err(e) if refused(&e) => Ok(OaepSha256::RawRsa),
        Err(e) => Err(ctx.fail(Call::Decrypt, &e)),
    }
}

/// How a device says it does not take these OAEP parameters.
fn refused(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::ArgumentsBad | RvError::MechanismParamInvalid | RvError::MechanismInvalid,
            _
        )
    )
}

const H_LEN: usize = 32;

fn mgf1(seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + H_LEN));
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The largest message for a modulus of `k` bytes.
pub(crate) fn max_message(k: usize) -> usize {
    k.saturating_sub(2 * H_LEN + 2)
}

/// `EM` of `k` bytes for `message`, with `seed` (32 random bytes from the device).
pub(crate) fn encode(message: &[u8], k: usize, seed: &[u8; H_LEN]) -> Option<Zeroizing<Vec<u8>>> {
    if message.len() > max_message(k) {
        return None;
    }
    let db_len = k - H_LEN - 1;
    let mut db = Zeroizing::new(vec![0u8; db_len]);
    db[..H_LEN].copy_from_slice(&Sha256::digest(b""));
    db[db_len - message.len() - 1] = 0x01;
    db[db_len - message.len()..].copy_from_slice(message);
    let mask = mgf1(seed, db_len);
    for (d, m) in db.iter_mut().zip(mask.iter()) {
        *d ^= m;
    }
    let seed_mask = mgf1(&db, H_LEN);
    let mut em = Zeroizing::new(vec![0u8; k]);
    for i in 0..H_LEN {
        em[1 + i] = seed[i] ^ seed_mask[i];
    }
    em[1 + H_LEN..].copy_from_slice(&db);
    Some(em)
}

/// The message inside `em` (`k` bytes), or `None` for any decoding error.
pub(crate) fn decode(em: &[u8], k: usize) -> Option<Zeroizing<Vec<u8>>> {
    if k < 2 * H_LEN + 2 || em.len() > k {
        return None;
    }
    // The device may drop leading zero bytes.
    let mut padded = Zeroizing::new(vec![0u8; k]);
    padded[k - em.len()..].copy_from_slice(em);
    let y = padded[0];
    let masked_seed = &padded[1..1 + H_LEN];
    let masked_db = &padded[1 + H_LEN..];
    let seed_mask = mgf1(masked_db, H_LEN);
    let mut seed = Zeroizing::new([0u8; H_LEN]);
    for i in 0..H_LEN {
        seed[i] = masked_seed[i] ^ seed_mask[i];
    }
    let db_mask = mgf1(&seed[..], masked_db.len());
    let mut db = Zeroizing::new(vec![0u8; masked_db.len()]);
    for i in 0..db.len() {
        db[i] = masked_db[i] ^ db_mask[i];
    }
    let mut good = y.ct_eq(&0) & db[..H_LEN].ct_eq(&Sha256::digest(b"")[..]);
    // Find the 0x01 separator after the zero padding, in constant time.
    let mut found = subtle::Choice::from(0);
    let mut index: u32 = 0;
    for (i, b) in db[H_LEN..].iter().enumerate() {
        let is_one = b.ct_eq(&1);
        let is_zero = b.ct_eq(&0);
        let first_one = is_one & !found;
        index.conditional_assign(&(i as u32), first_one);
        // A non-zero, non-one byte before the separator is an error.
        good &= found | is_one | is_zero;
        found |= is_one;
    }
    good &= found;
    if !bool::from(good) {
        return None;
    }
    let start = H_LEN + index as usize + 1;
    Some(Zeroizing::new(db[start..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = 256;
        let seed = [7u8; 32];
        for msg in [&b""[..], b"x", &[0u8; 190][..]] {
            let em = encode(msg, k, &seed).unwrap();
            assert_eq!(&decode(&em, k).unwrap()[..], msg);
            let mut bad = em.clone();
            bad[100] ^= 1;
            assert!(decode(&bad, k).is_none());
        }
        assert!(encode(&[0u8; 191], k, &seed).is_none());
        assert_eq!(max_message(256), 190);
        assert_eq!(max_message(512), 446);
    }
}
