//! The key catalogue (kms-spec 1.2): which key specs this build creates, the usages each
//! allows, the algorithms KeyMetadata lists, and how an algorithm maps onto the HSM layer.

use sha2::{Digest, Sha256, Sha384, Sha512};

use super::KmsError;
use crate::hsm::{Curve, MacAlg, PairSpec, PairUsage, ShaAlg, SignScheme};

/// The usage of symmetric keys (and RSA encryption keys).
pub const ENCRYPT_DECRYPT: &str = "ENCRYPT_DECRYPT";
/// The usage of signing keys.
pub const SIGN_VERIFY: &str = "SIGN_VERIFY";
/// The usage of HMAC keys.
pub const GENERATE_VERIFY_MAC: &str = "GENERATE_VERIFY_MAC";
/// KeyUsage of ECC keys that derive shared secrets (DeriveSharedSecret, ECDH).
pub const KEY_AGREEMENT: &str = "KEY_AGREEMENT";

/// Every SigningAlgorithm value of the API (for enum validation).
pub const KNOWN_SIGNING_ALGORITHMS: &[&str] = &[
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256",
    "ECDSA_SHA_384",
    "ECDSA_SHA_512",
    "SM2DSA",
    "ED25519_SHA_512",
    "ED25519_PH_SHA_512",
    "ML_DSA_SHAKE_256",
];

/// Every MacAlgorithm value of the API.
pub const KNOWN_MAC_ALGORITHMS: &[&str] = &[
    "HMAC_SHA_224",
    "HMAC_SHA_256",
    "HMAC_SHA_384",
    "HMAC_SHA_512",
];

/// Every MessageType value of the API.
pub const KNOWN_MESSAGE_TYPES: &[&str] = &["RAW", "DIGEST", "EXTERNAL_MU"];

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
pub fn kind(spec: &str) -> Option<SpecKind> {
    Some(match spec {
        "SYMMETRIC_DEFAULT" => SpecKind::Symmetric,
        "RSA_2048" => SpecKind::Pair(PairSpec::Rsa(2048)),
        "RSA_3072" => SpecKind::Pair(PairSpec::Rsa(3072)),
        "RSA_4096" => SpecKind::Pair(PairSpec::Rsa(4096)),
        "ECC_NIST_P256" => SpecKind::Pair(PairSpec::Ec(Curve::P256)),
        "ECC_NIST_P384" => SpecKind::Pair(PairSpec::Ec(Curve::P384)),
        "ECC_NIST_P521" => SpecKind::Pair(PairSpec::Ec(Curve::P521)),
        "ECC_SECG_P256K1" => SpecKind::Pair(PairSpec::Ec(Curve::Secp256k1)),
        "ECC_NIST_EDWARDS25519" => SpecKind::Pair(PairSpec::Ed25519),
        "HMAC_224" => SpecKind::Hmac(MacAlg::Sha224),
        "HMAC_256" => SpecKind::Hmac(MacAlg::Sha256),
        "HMAC_384" => SpecKind::Hmac(MacAlg::Sha384),
        "HMAC_512" => SpecKind::Hmac(MacAlg::Sha512),
        _ => return None,
    })
}

/// Whether a key is backed by a key pair.
pub fn is_pair(spec: &str) -> bool {
    matches!(kind(spec), Some(SpecKind::Pair(_)))
}

/// The usages a supported spec allows.
pub fn usages(spec: &str) -> &'static [&'static str] {
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
pub fn pair_usage(usage: &str) -> PairUsage {
    match usage {
        SIGN_VERIFY => PairUsage::Sign,
        KEY_AGREEMENT => PairUsage::KeyAgreement,
        _ => PairUsage::Decrypt,
    }
}

/// KeyMetadata's KeyAgreementAlgorithms.
pub fn key_agreement_algorithms(spec: &str, usage: &str) -> Vec<String> {
    match kind(spec) {
        Some(SpecKind::Pair(PairSpec::Ec(_))) if usage == KEY_AGREEMENT => vec!["ECDH".into()],
        _ => Vec::new(),
    }
}

/// KeyMetadata's EncryptionAlgorithms.
pub fn encryption_algorithms(spec: &str, usage: &str) -> Vec<String> {
    match kind(spec) {
        Some(SpecKind::Symmetric) => vec!["SYMMETRIC_DEFAULT".into()],
        Some(SpecKind::Pair(PairSpec::Rsa(_))) if usage == ENCRYPT_DECRYPT => {
            vec!["RSAES_OAEP_SHA_1".into(), "RSAES_OAEP_SHA_256".into()]
        }
        _ => Vec::new(),
    }
}

/// KeyMetadata's SigningAlgorithms.
pub fn signing_algorithms(spec: &str, usage: &str) -> Vec<String> {
    if usage != SIGN_VERIFY {
        return Vec::new();
    }
    let list: &[&str] = match kind(spec) {
        Some(SpecKind::Pair(PairSpec::Rsa(_))) => &KNOWN_SIGNING_ALGORITHMS[..6],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::P256 | Curve::Secp256k1))) => &["ECDSA_SHA_256"],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::P384))) => &["ECDSA_SHA_384"],
        Some(SpecKind::Pair(PairSpec::Ec(Curve::P521))) => &["ECDSA_SHA_512"],
        // Pure Ed25519 only: SoftHSM2 2.6.1's CKM_EDDSA accepts Ed25519ph parameters but
        // ignores them (measured: same signature as pure), so Ed25519ph is not offered.
        Some(SpecKind::Pair(PairSpec::Ed25519)) => &["ED25519_SHA_512"],
        _ => &[],
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// KeyMetadata's MacAlgorithms.
pub fn mac_algorithms(spec: &str) -> Vec<String> {
    match kind(spec) {
        Some(SpecKind::Hmac(a)) => vec![mac_algorithm_name(a).into()],
        _ => Vec::new(),
    }
}

/// The MacAlgorithm name of an HMAC algorithm.
pub fn mac_algorithm_name(a: MacAlg) -> &'static str {
    match a {
        MacAlg::Sha224 => "HMAC_SHA_224",
        MacAlg::Sha256 => "HMAC_SHA_256",
        MacAlg::Sha384 => "HMAC_SHA_384",
        MacAlg::Sha512 => "HMAC_SHA_512",
    }
}

/// The hash of a signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256
    Sha256,
    /// SHA-384
    Sha384,
    /// SHA-512
    Sha512,
}

impl Hash {
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The digest of `m`.
    pub fn digest(self, m: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(m).to_vec(),
            Hash::Sha384 => Sha384::digest(m).to_vec(),
            Hash::Sha512 => Sha512::digest(m).to_vec(),
        }
    }

    fn sha(self) -> ShaAlg {
        match self {
            Hash::Sha256 => ShaAlg::Sha256,
            Hash::Sha384 => ShaAlg::Sha384,
            Hash::Sha512 => ShaAlg::Sha512,
        }
    }
}

/// The signature scheme and hash of `algorithm` on a key of `spec`/`usage`:
/// ValidationException for an unknown algorithm name, InvalidKeyUsageException for one the
/// key cannot use.
pub fn signing_scheme(
    spec: &str,
    usage: &str,
    algorithm: &str,
) -> Result<(SignScheme, Hash), KmsError> {
    if !KNOWN_SIGNING_ALGORITHMS.contains(&algorithm) {
        return Err(KmsError::validation(
            "signingAlgorithm",
            &format!("Member must satisfy enum value set: {KNOWN_SIGNING_ALGORITHMS:?}"),
        ));
    }
    if !signing_algorithms(spec, usage)
        .iter()
        .any(|a| a == algorithm)
    {
        return Err(KmsError::InvalidKeyUsage(format!(
            "The signing algorithm {algorithm} is not valid for a {spec} key with usage {usage}."
        )));
    }
    let hash = match &algorithm[algorithm.len() - 3..] {
        "384" => Hash::Sha384,
        "512" => Hash::Sha512,
        _ => Hash::Sha256,
    };
    let scheme = match kind(spec) {
        Some(SpecKind::Pair(PairSpec::Ec(c))) => SignScheme::Ecdsa(c),
        Some(SpecKind::Pair(PairSpec::Ed25519)) => SignScheme::Ed25519,
        _ if algorithm.starts_with("RSASSA_PSS") => SignScheme::RsaPss(hash.sha()),
        _ => SignScheme::RsaPkcs1,
    };
    Ok((scheme, hash))
}

/// The OAEP hash of an RSAES algorithm, if it is one.
pub fn oaep_hash(algorithm: &str) -> Option<ShaAlg> {
    match algorithm {
        "RSAES_OAEP_SHA_1" => Some(ShaAlg::Sha1),
        "RSAES_OAEP_SHA_256" => Some(ShaAlg::Sha256),
        _ => None,
    }
}

/// The largest RSA-OAEP plaintext (kms-spec 1.3).
pub fn oaep_max_plaintext(bits: u32, hash: ShaAlg) -> usize {
    let k = (bits / 8) as usize;
    let h = if hash == ShaAlg::Sha1 { 20 } else { 32 };
    k - 2 * h - 2
}

/// The MAC algorithm of an HMAC key, checking the requested one.
pub fn mac_algorithm(spec: &str, usage: &str, algorithm: &str) -> Result<MacAlg, KmsError> {
    if !KNOWN_MAC_ALGORITHMS.contains(&algorithm) {
        return Err(KmsError::validation(
            "macAlgorithm",
            &format!("Member must satisfy enum value set: {KNOWN_MAC_ALGORITHMS:?}"),
        ));
    }
    match kind(spec) {
        Some(SpecKind::Hmac(a))
            if usage == GENERATE_VERIFY_MAC && mac_algorithm_name(a) == algorithm =>
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
    const KNOWN: &[&str] = &[
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "SM2",
        "ECC_NIST_EDWARDS25519",
        "ML_KEM_512",
        "ML_KEM_768",
        "ML_KEM_1024",
    ];
    match kind(spec) {
        Some(SpecKind::Pair(p)) => Ok(p),
        _ if KNOWN.contains(&spec) => Err(KmsError::UnsupportedOperation(format!(
            "KeyPairSpec {spec} is not supported by this p11kms build."
        ))),
        _ => Err(KmsError::validation(
            "keyPairSpec",
            &format!("Member must satisfy enum value set: {KNOWN:?}"),
        )),
    }
}

/// Grant operations that make sense for a key of `spec`/`usage` (kms-spec 1.5 CreateGrant).
pub fn grant_operations(spec: &str, usage: &str) -> &'static [&'static str] {
    match kind(spec) {
        Some(SpecKind::Pair(_)) if usage == KEY_AGREEMENT => &[
            "DeriveSharedSecret",
            "GetPublicKey",
            "CreateGrant",
            "RetireGrant",
            "DescribeKey",
        ],
        Some(SpecKind::Pair(_)) if usage == SIGN_VERIFY => &[
            "Sign",
            "Verify",
            "GetPublicKey",
            "CreateGrant",
            "RetireGrant",
            "DescribeKey",
        ],
        Some(SpecKind::Pair(_)) => &[
            "Encrypt",
            "Decrypt",
            "ReEncryptFrom",
            "ReEncryptTo",
            "GetPublicKey",
            "CreateGrant",
            "RetireGrant",
            "DescribeKey",
        ],
        Some(SpecKind::Hmac(_)) => &[
            "GenerateMac",
            "VerifyMac",
            "CreateGrant",
            "RetireGrant",
            "DescribeKey",
        ],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue() {
        assert_eq!(signing_algorithms("RSA_2048", SIGN_VERIFY).len(), 6);
        assert!(signing_algorithms("RSA_2048", ENCRYPT_DECRYPT).is_empty());
        assert_eq!(
            signing_algorithms("ECC_SECG_P256K1", SIGN_VERIFY),
            vec!["ECDSA_SHA_256"]
        );
        assert_eq!(encryption_algorithms("RSA_4096", ENCRYPT_DECRYPT).len(), 2);
        assert_eq!(mac_algorithms("HMAC_384"), vec!["HMAC_SHA_384"]);
        assert_eq!(oaep_max_plaintext(2048, ShaAlg::Sha1), 214);
        assert_eq!(oaep_max_plaintext(2048, ShaAlg::Sha256), 190);
        assert_eq!(oaep_max_plaintext(3072, ShaAlg::Sha1), 342);
        assert_eq!(oaep_max_plaintext(4096, ShaAlg::Sha256), 446);
        assert!(matches!(
            signing_scheme("ECC_NIST_P256", SIGN_VERIFY, "ECDSA_SHA_384"),
            Err(KmsError::InvalidKeyUsage(_))
        ));
        assert!(matches!(
            signing_scheme("ECC_NIST_P256", SIGN_VERIFY, "NOPE"),
            Err(KmsError::Validation(_))
        ));
        assert_eq!(
            signing_scheme("RSA_3072", SIGN_VERIFY, "RSASSA_PSS_SHA_384").unwrap(),
            (SignScheme::RsaPss(ShaAlg::Sha384), Hash::Sha384)
        );
        assert_eq!(
            signing_scheme("ECC_NIST_P521", SIGN_VERIFY, "ECDSA_SHA_512").unwrap(),
            (SignScheme::Ecdsa(Curve::P521), Hash::Sha512)
        );
        assert!(matches!(
            mac_algorithm("HMAC_256", GENERATE_VERIFY_MAC, "HMAC_SHA_512"),
            Err(KmsError::InvalidKeyUsage(_))
        ));
    }
}
