//! HMAC CMKs on the device: generation (`CKM_GENERIC_SECRET_KEY_GEN`), GenerateMac
//! (`C_Sign` with `CKM_SHAxxx_HMAC`) and VerifyMac (`C_Verify`, so the comparison happens on
//! the device).
//!
//! The key object's template is shared with key import (see the issue-7 contract):
//! `CKO_SECRET_KEY`, `CKK_GENERIC_SECRET`, `CKA_VALUE_LEN` = digest length, token, private,
//! sensitive, not extractable, only `CKA_SIGN` and `CKA_VERIFY`, `CKA_ALLOWED_MECHANISMS` = the
//! spec's HMAC mechanism. Found by (`CKO_SECRET_KEY`, `CKA_ID`) like AES CMK versions.

use std::time::Instant;

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};

use super::asym::verdict;
use super::error::{HsmError, HsmErrorKind};
use super::objects::{ObjectId, Part};
use super::ops::with_copy;
use super::pool::WorkerCtx;

/// An HMAC algorithm (and key spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacAlg {
    /// HMAC-SHA-224 (HMAC_224)
    Sha224,
    /// HMAC-SHA-256 (HMAC_256)
    Sha256,
    /// HMAC-SHA-384 (HMAC_384)
    Sha384,
    /// HMAC-SHA-512 (HMAC_512)
    Sha512,
}

impl MacAlg {
    /// Key and MAC length in bytes (the digest length).
    pub fn mac_len(self) -> usize {
        match self {
            MacAlg::Sha224 => 28,
            MacAlg::Sha256 => 32,
            MacAlg::Sha384 => 48,
            MacAlg::Sha512 => 64,
        }
    }

    fn mechanism_type(self) -> MechanismType {
        match self {
            MacAlg::Sha224 => MechanismType::SHA224_HMAC,
            MacAlg::Sha256 => MechanismType::SHA256_HMAC,
            MacAlg::Sha384 => MechanismType::SHA384_HMAC,
            MacAlg::Sha512 => MechanismType::SHA512_HMAC,
        }
    }

    fn mechanism(self) -> Mechanism<'static> {
        match self {
            MacAlg::Sha224 => Mechanism::Sha224Hmac,
            MacAlg::Sha256 => Mechanism::Sha256Hmac,
            MacAlg::Sha384 => Mechanism::Sha384Hmac,
            MacAlg::Sha512 => Mechanism::Sha512Hmac,
        }
    }
}

/// The HMAC CMK template (shared with key import, minus `CKA_VALUE_LEN` there).
pub(crate) fn hmac_template(id: &ObjectId, alg: MacAlg) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen((alg.mac_len() as u64).into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![alg.mechanism_type()]),
        Attribute::Id(id.0.to_vec()),
        Attribute::Label(id.label().into_bytes()),
    ]
}

/// Generate an HMAC CMK version and cache its handle.
pub(crate) fn generate_hmac_key(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    alg: MacAlg,
) -> Result<(), HsmError> {
    if ctx.shared.handles.get(&id).is_some() {
        return Err(HsmError::new(
            HsmErrorKind::Other,
            "C_GenerateKey",
            ctx.token(),
            format!("a key object with the CKA_ID of {id} already exists"),
        ));
    }
    ctx.count("C_GenerateKey");
    let t = Instant::now();
    let r = ctx
        .session
        .generate_key(&Mechanism::GenericSecretKeyGen, &hmac_template(&id, alg));
    ctx.observe("C_GenerateKey", t);
    let h = r.map_err(|e| ctx.fail("C_GenerateKey", &e))?;
    ctx.shared.handles.insert(id, h);
    tracing::debug!(token = %ctx.token(), object = %id, ?alg, "HSM HMAC key generated");
    Ok(())
}

/// HMAC of `message` under `id`, on the device.
pub(crate) fn generate_mac(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    alg: MacAlg,
    message: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let mech = alg.mechanism();
    with_copy(ctx, &id, Part::Secret, |ctx, h| {
        ctx.count("C_SignInit");
        ctx.count("C_Sign");
        let t = Instant::now();
        let r = ctx.session.sign(&mech, h, message);
        ctx.observe("C_Sign", t);
        r.map_err(|e| ctx.fail("C_Sign", &e))
    })
}

/// Whether `mac` is the HMAC of `message` under `id`; the device compares (`C_Verify`).
pub(crate) fn verify_mac(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    alg: MacAlg,
    message: &[u8],
    mac: &[u8],
) -> Result<bool, HsmError> {
    if mac.len() != alg.mac_len() {
        return Ok(false);
    }
    let mech = alg.mechanism();
    with_copy(ctx, &id, Part::Secret, |ctx, h| {
        ctx.count("C_VerifyInit");
        ctx.count("C_Verify");
        let t = Instant::now();
        let r = ctx.session.verify(&mech, h, message, mac);
        ctx.observe("C_Verify", t);
        verdict(ctx, r)
    })
}
