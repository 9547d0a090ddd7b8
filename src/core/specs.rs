//! The key catalogue (kms-spec 1.2): which key specs this build creates, the usages each
//! allows, the algorithms KeyMetadata lists, and how an algorithm maps onto the HSM layer.

use super::algorithms::{
    EncryptionAlgorithm, Hash, KeyAgreementAlgorithm, MacAlgorithm, SigningAlgorithm,
};
use super::domain::{GrantOperation, KeySpec, KeyUsage};
use super::KmsError;
use crate::hsm::{Curve, MacAlg, PairSpec, PairUsage, ShaAlg, SignScheme};

/// The usage of symmetric keys (and RSA encryption keys).
pub const ENCRYPT_DECRYPT: KeyUsage = KeyUsage::EncryptDecrypt;
/// The usage of signing keys.
pub const SIGN_VERIFY: KeyUsage = KeyUsage::SignVerify;
/// The usage of HMAC keys.
pub const GENERATE_VERIFY_MAC: KeyUsage = KeyUsage::GenerateVerifyMac;
/// KeyUsage of ECC keys that derive shared secrets (DeriveSharedSecret, ECDH).
pub const KEY_AGREEMENT: KeyUsage = KeyUsage::KeyAgreement;

/// What kind of HSM object(s) back a key spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecKind {
    /// One AES-256 secret key per version.
    Symmetric,
    /// A private/public key pair.
    Pair(PairSpec),
    /// One generic secret (HMAC) key per version.
    Hmac(MacAlg),
}

/// The kind of a key spec this build supports; `None` for specs it does not create.
pub fn kind(spec: KeySpec) -> Option<SpecKind> {
    Some(match spec {
        KeySpec::SymmetricDefault => SpecKind::Symmetric,
        KeySpec::Rsa2048 => SpecKind::Pair(PairSpec::Rsa(2048)),
        KeySpec::Rsa3072 => SpecKind::Pair(PairSpec::Rsa(3072)),
        KeySpec::Rsa4096 => SpecKind::Pair(PairSpec::Rsa(4096)),
        KeySpec::EccNistP256 => SpecKind::Pair(PairSpec::Ec(Curve::P256)),
        KeySpec::EccNistP384 => SpecKind::Pair(PairSpec::Ec(Curve::P384)),
        KeySpec::EccNistP521 => SpecKind::Pair(PairSpec::Ec(Curve::P521)),
        KeySpec::EccSecgP256k1 => SpecKind::Pair(PairSpec::Ec(Curve::Secp256k1)),
        KeySpec::EccNistEdwards25519 => SpecKind::Pair(PairSpec::Ed25519),
        KeySpec::Hmac224 => SpecKind::Hmac(MacAlg::Sha224),
        KeySpec::Hmac256 => SpecKind::Hmac(MacAlg::Sha256),
        KeySpec::Hmac384 => SpecKind::Hmac(MacAlg::Sha384),
        KeySpec::Hmac512 => SpecKind::Hmac(MacAlg::Sha512),
        KeySpec::Sm2
        | KeySpec::MlDsa44
        | KeySpec::MlDsa65
        | KeySpec::MlDsa87
        | KeySpec::MlKem512
        | KeySpec::MlKem768
        | KeySpec::MlKem1024 => return None,
    })
}

/// Whether a key is backed by a key pair.
pub fn is_pair(spec: KeySpec) -> bool {
    matches!(kind(spec), Some(SpecKind::Pair(_)))
}

/// The usages a supported spec allows.
pub fn usages(spec: KeySpec) -> &'static [KeyUsage] {
    match kind(spec) {
        Some(SpecKind::Symmetric) => &[ENCRYPT_DECRYPT],
        Some(SpecKind::Pair(PairSpec::Rsa(_))) => &[ENCRYPT_DECRYPT, SIGN_VERIFY],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::Secp256k1) | PairSpec::Ed25519)) => &[SIGN_VERIFY],
        Some(SpecKind::Pair(PairSpec::Ec(_))) => &[SIGN_VERIFY, KEY_AGREEMENT],
        Some(SpecKind::Hmac(_)) => &[GENERATE_VERIFY_MAC],
        None => &[],
    }
}

/// The HSM usage of a key pair's private half.
pub fn pair_usage(usage: KeyUsage) -> PairUsage {
    match usage {
        SIGN_VERIFY => PairUsage::Sign,
        KEY_AGREEMENT => PairUsage::KeyAgreement,
        _ => PairUsage::Decrypt,
    }
}

/// The key agreement algorithms of a key of `spec`/`usage`.
pub fn key_agreement_algorithms_of(
    spec: KeySpec,
    usage: KeyUsage,
) -> &'static [KeyAgreementAlgorithm] {
    match kind(spec) {
        Some(SpecKind::Pair(PairSpec::Ec(_))) if usage == KEY_AGREEMENT => {
            &[KeyAgreementAlgorithm::Ecdh]
        }
        _ => &[],
    }
}

/// The encryption algorithms of a key of `spec`/`usage`.
pub fn encryption_algorithms_of(spec: KeySpec, usage: KeyUsage) -> &'static [EncryptionAlgorithm] {
    match kind(spec) {
        Some(SpecKind::Symmetric) => &[EncryptionAlgorithm::SymmetricDefault],
        Some(SpecKind::Pair(PairSpec::Rsa(_))) if usage == ENCRYPT_DECRYPT => &[
            EncryptionAlgorithm::RsaesOaepSha1,
            EncryptionAlgorithm::RsaesOaepSha256,
        ],
        _ => &[],
    }
}

/// The signing algorithms of a key of `spec`/`usage`.
pub fn signing_algorithms_of(spec: KeySpec, usage: KeyUsage) -> &'static [SigningAlgorithm] {
    use SigningAlgorithm::*;
    if usage != SIGN_VERIFY {
        return &[];
    }
    match kind(spec) {
        Some(SpecKind::Pair(PairSpec::Rsa(_))) => &[
            RsassaPssSha256,
            RsassaPssSha384,
            RsassaPssSha512,
            RsassaPkcs1V15Sha256,
            RsassaPkcs1V15Sha384,
            RsassaPkcs1V15Sha512,
        ],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::P256 | Curve::Secp256k1))) => &[EcdsaSha256],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::P384))) => &[EcdsaSha384],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::P521))) => &[EcdsaSha512],
        // Pure Ed25519 only: SoftHSM2 2.6.1's CKM_EDDSA accepts Ed25519ph parameters but
        // ignores them (measured: same signature as pure), so Ed25519ph is not offered.
        Some(SpecKind::Pair(PairSpec::Ed25519)) => &[Ed25519Sha512],
        _ => &[],
    }
}

fn names<T: Copy>(list: &[T], name: fn(T) -> &'static str) -> Vec<String> {
    list.iter().map(|a| name(*a).to_string()).collect()
}

/// KeyMetadata's KeyAgreementAlgorithms.
pub fn key_agreement_algorithms(spec: KeySpec, usage: KeyUsage) -> Vec<String> {
    names(
        key_agreement_algorithms_of(spec, usage),
        KeyAgreementAlgorithm::as_str,
    )
}

/// KeyMetadata's EncryptionAlgorithms.
pub fn encryption_algorithms(spec: KeySpec, usage: KeyUsage) -> Vec<String> {
    names(
        encryption_algorithms_of(spec, usage),
        EncryptionAlgorithm::as_str,
    )
}

/// KeyMetadata's SigningAlgorithms.
pub fn signing_algorithms(spec: KeySpec, usage: KeyUsage) -> Vec<String> {
    names(signing_algorithms_of(spec, usage), SigningAlgorithm::as_str)
}

/// KeyMetadata's MacAlgorithms.
pub fn mac_algorithms(spec: KeySpec) -> Vec<String> {
    match kind(spec) {
        Some(SpecKind::Hmac(a)) => vec![MacAlgorithm::from(a).as_str().into()],
        _ => Vec::new(),
    }
}

/// The signature scheme and hash of `algorithm` on a key of `spec`/`usage`:
/// InvalidKeyUsageException for an algorithm the key cannot use.
pub fn signing_scheme(
    spec: KeySpec,
    usage: KeyUsage,
    algorithm: SigningAlgorithm,
) -> Result<(SignScheme, Hash), KmsError> {
    if !signing_algorithms_of(spec, usage).contains(&algorithm) {
        return Err(KmsError::InvalidKeyUsage(format!(
            "The signing algorithm {algorithm} is not valid for a {spec} key with usage {usage}."
        )));
    }
    let hash = algorithm.hash();
    let scheme = match kind(spec) {
        Some(SpecKind::Pair(PairSpec::Ec(c))) => SignScheme::Ecdsa(c),
        Some(SpecKind::Pair(PairSpec::Ed25519)) => SignScheme::Ed25519,
        _ if algorithm.is_pss() => SignScheme::RsaPss(hash.sha()),
        _ => SignScheme::RsaPkcs1,
    };
    Ok((scheme, hash))
}

/// The largest RSA-OAEP plaintext (kms-spec 1.3).
pub fn oaep_max_plaintext(bits: u32, hash: ShaAlg) -> usize {
    let k = (bits / 8) as usize;
    let h = if hash == ShaAlg::Sha1 { 20 } else { 32 };
    k - 2 * h - 2
}

/// The MAC algorithm of an HMAC key, checking the requested one.
pub fn mac_algorithm(
    spec: KeySpec,
    usage: KeyUsage,
    algorithm: MacAlgorithm,
) -> Result<MacAlg, KmsError> {
    match kind(spec) {
        Some(SpecKind::Hmac(a))
            if usage == GENERATE_VERIFY_MAC && MacAlgorithm::from(a) == algorithm =>
        {
            Ok(a)
        }
        _ => Err(KmsError::InvalidKeyUsage(format!(
            "The MAC algorithm {algorithm} is not valid for a {spec} key with usage {usage}."
        ))),
    }
}

/// The data key pair specs this build generates.
pub fn data_key_pair_spec(spec: &str) -> Result<PairSpec, KmsError> {
    match KeySpec::parse(spec).and_then(kind) {
        Some(SpecKind::Pair(p)) => Ok(p),
        _ => {
            let known: Vec<&str> = KeySpec::data_key_pair_specs()
                .into_iter()
                .map(KeySpec::as_str)
                .collect();
            if known.contains(&spec) {
                return Err(KmsError::UnsupportedOperation(format!(
                    "KeyPairSpec {spec} is not supported by this p11kms build."
                )));
            }
            Err(KmsError::validation(
                "keyPairSpec",
                &format!("Member must satisfy enum value set: {known:?}"),
            ))
        }
    }
}

/// Grant operations every key a grant can be created on allows, whatever its spec and usage:
/// the grant's own operations and DescribeKey.
pub const KEY_GRANT_OPERATIONS: &[GrantOperation] = &[
    GrantOperation::CreateGrant,
    GrantOperation::RetireGrant,
    GrantOperation::DescribeKey,
];

/// Grant operations that make sense for a key of `spec`/`usage` (kms-spec 1.5 CreateGrant):
/// [`KEY_GRANT_OPERATIONS`] and, per kind of key, the cryptographic ones listed here; `None`
/// for a spec this build does not create (no operation makes sense on it).
pub fn grant_operations(spec: KeySpec, usage: KeyUsage) -> Option<&'static [GrantOperation]> {
    use GrantOperation::*;
    Some(match kind(spec)? {
        SpecKind::Symmetric => &[
            Decrypt,
            Encrypt,
            GenerateDataKey,
            GenerateDataKeyWithoutPlaintext,
            ReEncryptFrom,
            ReEncryptTo,
            GenerateDataKeyPair,
            GenerateDataKeyPairWithoutPlaintext,
        ],
        SpecKind::Pair(_) if usage == KEY_AGREEMENT => &[DeriveSharedSecret, GetPublicKey],
        SpecKind::Pair(_) if usage == SIGN_VERIFY => &[Sign, Verify, GetPublicKey],
        SpecKind::Pair(_) => &[Encrypt, Decrypt, ReEncryptFrom, ReEncryptTo, GetPublicKey],
        SpecKind::Hmac(_) => &[GenerateMac, VerifyMac],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> KeySpec {
        KeySpec::parse(name).unwrap()
    }

    #[test]
    fn grant_operations_follow_the_kind_of_key() {
        use GrantOperation::*;
        let hmac = grant_operations(spec("HMAC_256"), GENERATE_VERIFY_MAC).unwrap();
        assert!(hmac.contains(&VerifyMac) && !hmac.contains(&GetPublicKey));
        let agreement = grant_operations(spec("ECC_NIST_P256"), KEY_AGREEMENT).unwrap();
        assert_eq!(agreement, [DeriveSharedSecret, GetPublicKey]);
        let symmetric = grant_operations(spec("SYMMETRIC_DEFAULT"), ENCRYPT_DECRYPT).unwrap();
        assert!(symmetric.contains(&GenerateDataKeyPair) && !symmetric.contains(&Sign));
        assert_eq!(grant_operations(spec("SM2"), SIGN_VERIFY), None);
    }

    #[test]
    fn data_key_pair_specs_are_the_models() {
        assert_eq!(data_key_pair_spec("RSA_3072").unwrap(), PairSpec::Rsa(3072));
        let e = data_key_pair_spec("ML_KEM_512").unwrap_err();
        assert_eq!(e.aws_name(), "UnsupportedOperationException");
        let e = data_key_pair_spec("RSA_1024").unwrap_err();
        assert_eq!(
            e.message(),
            KmsError::validation(
                "keyPairSpec",
                "Member must satisfy enum value set: [\"RSA_2048\", \"RSA_3072\", \"RSA_4096\", \"ECC_NIST_P256\", \"ECC_NIST_P384\", \"ECC_NIST_P521\", \"ECC_SECG_P256K1\", \"SM2\", \"ECC_NIST_EDWARDS25519\", \"ML_KEM_512\", \"ML_KEM_768\", \"ML_KEM_1024\"]"
            )
            .message()
        );
    }

    #[test]
    fn catalogue() {
        assert_eq!(signing_algorithms(spec("RSA_2048"), SIGN_VERIFY).len(), 6);
        assert!(signing_algorithms(spec("RSA_2048"), ENCRYPT_DECRYPT).is_empty());
        assert_eq!(
            signing_algorithms(spec("ECC_SECG_P256K1"), SIGN_VERIFY),
            vec!["ECDSA_SHA_256"]
        );
        assert_eq!(
            encryption_algorithms(spec("RSA_4096"), ENCRYPT_DECRYPT).len(),
            2
        );
        assert_eq!(mac_algorithms(spec("HMAC_384")), vec!["HMAC_SHA_384"]);
        assert_eq!(oaep_max_plaintext(2048, ShaAlg::Sha1), 214);
        assert_eq!(oaep_max_plaintext(2048, ShaAlg::Sha256), 190);
        assert_eq!(oaep_max_plaintext(3072, ShaAlg::Sha1), 342);
        assert_eq!(oaep_max_plaintext(4096, ShaAlg::Sha256), 446);
        assert!(matches!(
            signing_scheme(
                spec("ECC_NIST_P256"),
                SIGN_VERIFY,
                SigningAlgorithm::EcdsaSha384
            ),
            Err(KmsError::InvalidKeyUsage(_))
        ));
        use SigningAlgorithm::{EcdsaSha512, Ed25519Sha512, RsassaPkcs1V15Sha512, RsassaPssSha384};
        #[rustfmt::skip]
        let schemes = [
            ("RSA_3072", RsassaPssSha384, SignScheme::RsaPss(ShaAlg::Sha384), Hash::Sha384),
            ("RSA_2048", RsassaPkcs1V15Sha512, SignScheme::RsaPkcs1, Hash::Sha512),
            ("ECC_NIST_P521", EcdsaSha512, SignScheme::Ecdsa(Curve::P521), Hash::Sha512),
            ("ECC_NIST_EDWARDS25519", Ed25519Sha512, SignScheme::Ed25519, Hash::Sha512),
        ];
        for (spec, algorithm, scheme, hash) in schemes {
            let got = signing_scheme(super::KeySpec::parse(spec).unwrap(), SIGN_VERIFY, algorithm)
                .unwrap();
            assert_eq!(got, (scheme, hash), "{spec} {algorithm}");
        }
        assert!(matches!(
            mac_algorithm(
                spec("HMAC_256"),
                GENERATE_VERIFY_MAC,
                MacAlgorithm::HmacSha512
            ),
            Err(KmsError::InvalidKeyUsage(_))
        ));
        assert_eq!(
            mac_algorithm(
                spec("HMAC_256"),
                GENERATE_VERIFY_MAC,
                MacAlgorithm::HmacSha256
            )
            .unwrap(),
            MacAlg::Sha256
        );
    }
}
