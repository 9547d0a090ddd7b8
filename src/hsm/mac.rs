//! HMAC CMKs on the device: generation (`CKM_GENERIC_SECRET_KEY_GEN`), GenerateMac
//! (`C_Sign` with `CKM_SHAxxx_HMAC`) and VerifyMac (`C_Verify`, so the comparison happens on
//! the device).
//!
//! The key object's template is shared with key import (see the issue-7 contract):
//! `CKO_SECRET_KEY`, `CKK_GENERIC_SECRET`, `CKA_VALUE_LEN` = digest length, token, private,
//! sensitive, not extractable, only `CKA_SIGN` and `CKA_VERIFY`, `CKA_ALLOWED_MECHANISMS` = the
//! spec's HMAC mechanism. Found by (`CKO_SECRET_KEY`, `CKA_ID`) like AES CMK versions.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType};

use super::asym::verdict;
use super::call::Call;
use super::error::HsmError;
use super::objects::{ObjectId, Part};
use super::ops::with_copy;
use super::pool::WorkerCtx;
use super::template::{Template, Usage};

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

    /// `CKM_SHAxxx_HMAC`, the key's one allowed mechanism.
    pub(crate) fn mechanism_type(self) -> MechanismType {
        match self {
            MacAlg::Sha224 => MechanismType::SHA224_HMAC,
            MacAlg::Sha256 => MechanismType::SHA256_HMAC,
            MacAlg::Sha384 => MechanismType::SHA384_HMAC,
            MacAlg::Sha512 => MechanismType::SHA512_HMAC,
        }
    }

    /// The signing and verifying mechanism.
    pub(crate) fn mechanism(self) -> Mechanism<'static> {
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
    Template::secret(KeyType::GENERIC_SECRET)
        .value_len(alg.mac_len())
        .token(true)
        .guarded()
        .allow(Usage::Sign)
        .allow(Usage::Verify)
        .mechanisms(vec![alg.mechanism_type()])
        .id(&id.0)
        .label(id.label())
        .build()
}

/// Generate an HMAC CMK version and cache its handle.
pub(crate) fn generate_hmac_key(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    alg: MacAlg,
) -> Result<(), HsmError> {
    super::ops::refuse_known_id(ctx, &id, "C_GenerateKey")?;
    let template = hmac_template(&id, alg);
    let h = ctx.call(Call::GenerateKey, |s| {
        s.generate_key(&Mechanism::GenericSecretKeyGen, &template)
    })?;
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
        ctx.call(Call::Sign, |s| s.sign(&mech, h, message))
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
        let r = ctx.call_raw(Call::Verify, |s| s.verify(&mech, h, message, mac));
        verdict(ctx, r)
    })
}
