//! The typed domain of keys: key spec, key usage, origin and key state, parsed once at the
//! edge (the doors read the wire strings into these, the store its columns) and spelled the
//! AWS way again by `as_str()` (the store keeps that spelling, so its rows are unchanged);
//! and the grant operations, which the engine checks a grant's operation names against
//! (requests, grants and the store keep the names). The key record holds the four key enums,
//! so they are declared with it in [`crate::store`] and named here.
//!
//! Each enum lists every value of the AWS service model, including values this build does not
//! create (`ML_KEM_512`, `ENCAPSULATE_DECAPSULATE`, `AWS_CLOUDHSM`...): the model check admits
//! them, and the engine refuses them with the same messages as before the values were typed.

pub(crate) use crate::wire_enum::wire_enum;
pub use crate::wire_enum::{UnknownValue, WireEnum};

impl KeySpec {
    /// An HMAC key spec (`HMAC_224` ... `HMAC_512`).
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512
        )
    }

    /// The KeyPairSpecs of GenerateDataKeyPair (the AWS model's DataKeyPairSpec, in its
    /// order): the key pair specs but ML-DSA's. This build generates some of them
    /// ([`super::specs::data_key_pair_spec`]).
    pub fn data_key_pair_specs() -> Vec<KeySpec> {
        let not_pair = |s: &KeySpec| {
            s.is_hmac()
                || matches!(
                    s,
                    KeySpec::SymmetricDefault
                        | KeySpec::MlDsa44
                        | KeySpec::MlDsa65
                        | KeySpec::MlDsa87
                )
        };
        KeySpec::ALL
            .iter()
            .copied()
            .filter(|s| !not_pair(s))
            .collect()
    }
}

wire_enum!(
    /// An operation a grant allows (CreateGrant's Operations), in the AWS model's order.
    GrantOperation {
        Decrypt,
        Encrypt,
        GenerateDataKey,
        GenerateDataKeyWithoutPlaintext,
        ReEncryptFrom,
        ReEncryptTo,
        Sign,
        Verify,
        GetPublicKey,
        CreateGrant,
        RetireGrant,
        DescribeKey,
        GenerateDataKeyPair,
        GenerateDataKeyPairWithoutPlaintext,
        GenerateMac,
        VerifyMac,
        DeriveSharedSecret,
        Encapsulate,
        Decapsulate,
    }
);

/// A key's spec, usage, origin and state. The store's enums are the one types (rows keep their
/// AWS spelling); they are named here with the other key enums.
pub use crate::store::{KeySpec, KeyState, KeyUsage, Origin};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_unknowns_are_refused() {
        for s in KeySpec::ALL {
            assert_eq!(s.as_str().parse::<KeySpec>(), Ok(*s));
        }
        for u in KeyUsage::ALL {
            assert_eq!(KeyUsage::parse(u.as_str()), Some(*u));
        }
        for o in Origin::ALL {
            assert_eq!(o.to_string().parse::<Origin>(), Ok(*o));
        }
        assert_eq!(KeySpec::ALL.len(), 20);
        assert_eq!("Enabled".parse::<KeyState>(), Ok(KeyState::Enabled));
        assert_eq!(
            "symmetric_default".parse::<KeySpec>(),
            Err(UnknownValue { what: "KeySpec" })
        );
        assert!("".parse::<KeyUsage>().is_err());
        assert!("Gone".parse::<KeyState>().is_err());
        assert!(KeySpec::Hmac384.is_hmac() && !KeySpec::SymmetricDefault.is_hmac());
    }

    /// The enums hold exactly the AWS model's values (the model check admits no others).
    #[test]
    fn the_enums_are_the_models_enums() {
        let model: serde_json::Value =
            serde_json::from_str(crate::api::aws_json::model::CONSTRAINTS_JSON).unwrap();
        let values = |shape: &str| -> Vec<String> {
            model["shapes"][shape]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{shape} has no enum"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let spelled = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let specs: Vec<&str> = KeySpec::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(values("KeySpec"), spelled(&specs));
        let usages: Vec<&str> = KeyUsage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(values("KeyUsageType"), spelled(&usages));
        let origins: Vec<&str> = Origin::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(values("OriginType"), spelled(&origins));
        for s in values("CustomerMasterKeySpec") {
            assert!(KeySpec::parse(&s).is_some(), "{s}");
        }
    }
}
