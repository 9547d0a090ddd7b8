//! The algorithm names of the KMS API as enums: encryption, signing, MAC and key-agreement
//! algorithms, message types and data key specs.
//!
//! Each enum has exactly the values of the AWS service model; `as_str()` is the AWS spelling
//! (what the wire and the audit trail carry) and `FromStr` reads it back. Doors parse a
//! request's names once, at the edge, after the model check has refused unknown values; the
//! engine then chooses by variant, never by looking inside a name.

use std::str::FromStr;

use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::hsm::{MacAlg, ShaAlg};

use super::domain::wire_enum;
pub use super::domain::UnknownValue;

wire_enum!(
    /// EncryptionAlgorithmSpec.
    EncryptionAlgorithm {
        /// AES-256-GCM under a symmetric key.
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        /// RSA-OAEP with SHA-1.
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        /// RSA-OAEP with SHA-256.
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        /// SM2 public key encryption (not offered by this build).
        Sm2Pke = "SM2PKE",
    }
);

impl EncryptionAlgorithm {
    /// The OAEP hash of an RSAES algorithm; `None` for the others.
    pub fn oaep_hash(self) -> Option<ShaAlg> {
        match self {
            EncryptionAlgorithm::RsaesOaepSha1 => Some(ShaAlg::Sha1),
            EncryptionAlgorithm::RsaesOaepSha256 => Some(ShaAlg::Sha256),
            EncryptionAlgorithm::SymmetricDefault | EncryptionAlgorithm::Sm2Pke => None,
        }
    }
}

wire_enum!(
    /// SigningAlgorithmSpec.
    SigningAlgorithm {
        /// RSASSA-PSS with SHA-256.
        RsassaPssSha256 = "RSASSA_PSS_SHA_256",
        /// RSASSA-PSS with SHA-384.
        RsassaPssSha384 = "RSASSA_PSS_SHA_384",
        /// RSASSA-PSS with SHA-512.
        RsassaPssSha512 = "RSASSA_PSS_SHA_512",
        /// RSASSA-PKCS1-v1_5 with SHA-256.
        RsassaPkcs1V15Sha256 = "RSASSA_PKCS1_V1_5_SHA_256",
        /// RSASSA-PKCS1-v1_5 with SHA-384.
        RsassaPkcs1V15Sha384 = "RSASSA_PKCS1_V1_5_SHA_384",
        /// RSASSA-PKCS1-v1_5 with SHA-512.
        RsassaPkcs1V15Sha512 = "RSASSA_PKCS1_V1_5_SHA_512",
        /// ECDSA with SHA-256.
        EcdsaSha256 = "ECDSA_SHA_256",
        /// ECDSA with SHA-384.
        EcdsaSha384 = "ECDSA_SHA_384",
        /// ECDSA with SHA-512.
        EcdsaSha512 = "ECDSA_SHA_512",
        /// SM2 signatures (not offered by this build).
        Sm2Dsa = "SM2DSA",
        /// ML-DSA (not offered by this build).
        MlDsaShake256 = "ML_DSA_SHAKE_256",
        /// Pure Ed25519.
        Ed25519Sha512 = "ED25519_SHA_512",
        /// Ed25519ph (not offered: see `specs::signing_algorithms`).
        Ed25519PhSha512 = "ED25519_PH_SHA_512",
    }
);

/// The hash of a signing algorithm: what a DIGEST message's length must match.
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

    /// The HSM layer's name of the hash (RSASSA-PSS's MGF hash).
    pub fn sha(self) -> ShaAlg {
        match self {
            Hash::Sha256 => ShaAlg::Sha256,
            Hash::Sha384 => ShaAlg::Sha384,
            Hash::Sha512 => ShaAlg::Sha512,
        }
    }
}

impl SigningAlgorithm {
    /// The message hash of the algorithm (SHA-512 for Ed25519, which hashes internally;
    /// SHA-256 for the SM2 and ML-DSA names, which this build never signs with).
    pub fn hash(self) -> Hash {
        use SigningAlgorithm::*;
        match self {
            RsassaPssSha384 | RsassaPkcs1V15Sha384 | EcdsaSha384 => Hash::Sha384,
            RsassaPssSha512 | RsassaPkcs1V15Sha512 | EcdsaSha512 | Ed25519Sha512
            | Ed25519PhSha512 => Hash::Sha512,
            RsassaPssSha256 | RsassaPkcs1V15Sha256 | EcdsaSha256 | Sm2Dsa | MlDsaShake256 => {
                Hash::Sha256
            }
        }
    }

    /// Whether the algorithm is RSASSA-PSS.
    pub fn is_pss(self) -> bool {
        use SigningAlgorithm::*;
        matches!(self, RsassaPssSha256 | RsassaPssSha384 | RsassaPssSha512)
    }
}

wire_enum!(
    /// MacAlgorithmSpec.
    MacAlgorithm {
        /// HMAC with SHA-224.
        HmacSha224 = "HMAC_SHA_224",
        /// HMAC with SHA-256.
        HmacSha256 = "HMAC_SHA_256",
        /// HMAC with SHA-384.
        HmacSha384 = "HMAC_SHA_384",
        /// HMAC with SHA-512.
        HmacSha512 = "HMAC_SHA_512",
    }
);

impl From<MacAlg> for MacAlgorithm {
    fn from(a: MacAlg) -> Self {
        match a {
            MacAlg::Sha224 => MacAlgorithm::HmacSha224,
            MacAlg::Sha256 => MacAlgorithm::HmacSha256,
            MacAlg::Sha384 => MacAlgorithm::HmacSha384,
            MacAlg::Sha512 => MacAlgorithm::HmacSha512,
        }
    }
}

wire_enum!(
    /// KeyAgreementAlgorithmSpec.
    KeyAgreementAlgorithm {
        /// Elliptic-curve Diffie-Hellman.
        Ecdh = "ECDH",
    }
);

wire_enum!(
    /// MessageType of Sign and Verify.
    MessageType {
        /// The message itself; the daemon hashes it.
        Raw = "RAW",
        /// A digest the caller computed.
        Digest = "DIGEST",
        /// ML-DSA's external mu (not offered by this build).
        ExternalMu = "EXTERNAL_MU",
    }
);

wire_enum!(
    /// DataKeySpec of GenerateDataKey(WithoutPlaintext).
    DataKeySpec {
        /// 32 bytes.
        Aes256 = "AES_256",
        /// 16 bytes.
        Aes128 = "AES_128",
    }
);

impl DataKeySpec {
    /// The data key's length in bytes.
    pub fn bytes(self) -> usize {
        match self {
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Aes128 => 16,
        }
    }
}

/// Parses an optional AWS name at a door (proto3's empty string is "not set"); the model
/// check has already refused a value outside the enum, so an error here is unreachable.
pub fn parse_opt<T: FromStr<Err = UnknownValue>>(s: &str) -> Result<Option<T>, UnknownValue> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::domain::{GrantOperation, KeySpec};
    use crate::wire_enum::WireEnum;

    #[test]
    fn names_round_trip() {
        for a in EncryptionAlgorithm::ALL {
            assert_eq!(a.as_str().parse::<EncryptionAlgorithm>().unwrap(), *a);
        }
        for a in SigningAlgorithm::ALL {
            assert_eq!(a.as_str().parse::<SigningAlgorithm>().unwrap(), *a);
        }
        for a in MacAlgorithm::ALL {
            assert_eq!(a.to_string().parse::<MacAlgorithm>().unwrap(), *a);
        }
        assert!("NOPE".parse::<SigningAlgorithm>().is_err());
        assert_eq!(parse_opt::<MessageType>("").unwrap(), None);
        assert_eq!(
            parse_opt::<MessageType>("DIGEST").unwrap(),
            Some(MessageType::Digest)
        );
        let a: KeyAgreementAlgorithm = serde_json::from_value(serde_json::json!("ECDH")).unwrap();
        assert_eq!(a, KeyAgreementAlgorithm::Ecdh);
    }

    #[test]
    fn the_enums_are_the_service_models() {
        let model: serde_json::Value =
            serde_json::from_str(crate::api::aws_json::model::CONSTRAINTS_JSON).unwrap();
        let values = |shape: &str| -> Vec<String> {
            let mut v: Vec<String> =
                serde_json::from_value(model["shapes"][shape]["enum"].clone()).unwrap();
            v.sort();
            v
        };
        fn sorted(all: &[impl WireEnum]) -> Vec<String> {
            let mut v: Vec<String> = all.iter().map(|a| a.wire_name().to_string()).collect();
            v.sort();
            v
        }
        let cases = [
            (sorted(EncryptionAlgorithm::ALL), "EncryptionAlgorithmSpec"),
            (sorted(SigningAlgorithm::ALL), "SigningAlgorithmSpec"),
            (sorted(MacAlgorithm::ALL), "MacAlgorithmSpec"),
            (
                sorted(KeyAgreementAlgorithm::ALL),
                "KeyAgreementAlgorithmSpec",
            ),
            (sorted(MessageType::ALL), "MessageType"),
            (sorted(DataKeySpec::ALL), "DataKeySpec"),
            (sorted(&KeySpec::data_key_pair_specs()), "DataKeyPairSpec"),
            (sorted(GrantOperation::ALL), "GrantOperation"),
        ];
        for (ours, shape) in cases {
            assert_eq!(ours, values(shape), "{shape}");
        }
    }

    #[test]
    fn hashes_follow_the_names() {
        assert_eq!(SigningAlgorithm::RsassaPssSha384.hash(), Hash::Sha384);
        assert_eq!(SigningAlgorithm::EcdsaSha512.hash(), Hash::Sha512);
        assert_eq!(SigningAlgorithm::Ed25519Sha512.hash(), Hash::Sha512);
        assert!(SigningAlgorithm::RsassaPssSha256.is_pss());
        assert!(!SigningAlgorithm::RsassaPkcs1V15Sha256.is_pss());
        assert_eq!(
            EncryptionAlgorithm::RsaesOaepSha256.oaep_hash(),
            Some(ShaAlg::Sha256)
        );
        assert_eq!(EncryptionAlgorithm::SymmetricDefault.oaep_hash(), None);
    }
}
