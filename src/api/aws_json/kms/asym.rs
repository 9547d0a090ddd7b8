//! Asymmetric keys, signatures and MACs on the AWS door: Sign, Verify, GetPublicKey,
//! DeriveSharedSecret, GenerateMac, VerifyMac, GenerateDataKeyPair,
//! GenerateDataKeyPairWithoutPlaintext.

use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{b64, blob, non_empty, parse, Blob, Context, FromJson, ToJson};
use crate::core::algorithms::{KeyAgreementAlgorithm, MacAlgorithm, MessageType, SigningAlgorithm};
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, DeriveSharedSecretResponse,
    GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyPairWithoutPlaintextResponse,
    GenerateMacRequest, GenerateMacResponse, GetPublicKeyRequest, GetPublicKeyResponse,
    SignRequest, SignResponse, VerifyMacRequest, VerifyMacResponse, VerifyRequest, VerifyResponse,
};

input!(SignIn {
    key_id: Option<String>,
    message: Option<Blob>,
    message_type: Option<MessageType>,
    signature: Option<Blob>,
    signing_algorithm: Option<SigningAlgorithm>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
});

input!(PublicKeyIn {
    key_id: Option<String>,
    grant_tokens: Option<Vec<String>>,
});

input!(DeriveIn {
    key_id: Option<String>,
    key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
    public_key: Option<Blob>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
});

input!(MacIn {
    key_id: Option<String>,
    message: Option<Blob>,
    mac_algorithm: Option<MacAlgorithm>,
    mac: Option<Blob>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
});

input!(DataKeyPairIn {
    key_id: Option<String>,
    encryption_context: Context,
    key_pair_spec: Option<String>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
});

impl FromJson for SignRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: SignIn = parse(body)?;
        Ok(SignRequest {
            key_id: r.key_id.unwrap_or_default(),
            message: Zeroizing::new(blob(r.message)),
            message_type: r.message_type,
            signing_algorithm: r.signing_algorithm,
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for VerifyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: SignIn = parse(body)?;
        Ok(VerifyRequest {
            key_id: r.key_id.unwrap_or_default(),
            message: Zeroizing::new(blob(r.message)),
            message_type: r.message_type,
            signature: blob(r.signature),
            signing_algorithm: r.signing_algorithm,
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for GetPublicKeyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: PublicKeyIn = parse(body)?;
        Ok(GetPublicKeyRequest {
            key_id: r.key_id.unwrap_or_default(),
            grant_tokens: r.grant_tokens.unwrap_or_default(),
        })
    }
}

impl FromJson for DeriveSharedSecretRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: DeriveIn = parse(body)?;
        Ok(DeriveSharedSecretRequest {
            key_id: r.key_id.unwrap_or_default(),
            key_agreement_algorithm: r.key_agreement_algorithm,
            public_key: blob(r.public_key),
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for GenerateMacRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: MacIn = parse(body)?;
        Ok(GenerateMacRequest {
            key_id: r.key_id.unwrap_or_default(),
            message: Zeroizing::new(blob(r.message)),
            mac_algorithm: r.mac_algorithm,
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for VerifyMacRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: MacIn = parse(body)?;
        Ok(VerifyMacRequest {
            key_id: r.key_id.unwrap_or_default(),
            message: Zeroizing::new(blob(r.message)),
            mac_algorithm: r.mac_algorithm,
            mac: blob(r.mac),
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

fn data_key_pair_request(body: Value) -> Result<DataKeyPairRequest, serde_json::Error> {
    let r: DataKeyPairIn = parse(body)?;
    Ok(DataKeyPairRequest {
        key_id: r.key_id.unwrap_or_default(),
        encryption_context: r.encryption_context.unwrap_or_default(),
        key_pair_spec: r.key_pair_spec,
        grant_tokens: r.grant_tokens.unwrap_or_default(),
        dry_run: r.dry_run.unwrap_or(false),
    })
}

impl FromJson for GenerateDataKeyPairRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        data_key_pair_request(body).map(GenerateDataKeyPairRequest)
    }
}

impl FromJson for GenerateDataKeyPairWithoutPlaintextRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        data_key_pair_request(body).map(GenerateDataKeyPairWithoutPlaintextRequest)
    }
}

impl ToJson for SignResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "Signature": b64(&self.signature),
            "SigningAlgorithm": self.signing_algorithm.as_str(),
        })
    }
}

impl ToJson for VerifyResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "SignatureValid": self.signature_valid,
            "SigningAlgorithm": self.signing_algorithm.as_str(),
        })
    }
}

/// A list of algorithm names, left out when empty (as KeyMetadata's lists).
fn names<T: Copy + Into<&'static str>>(list: &[T]) -> Option<Vec<&'static str>> {
    (!list.is_empty()).then(|| list.iter().map(|a| (*a).into()).collect())
}

impl ToJson for GetPublicKeyResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "PublicKey": b64(&self.public_key),
            "CustomerMasterKeySpec": self.key_spec,
            "KeySpec": self.key_spec,
            "KeyUsage": self.key_usage,
            "EncryptionAlgorithms": names(self.encryption_algorithms),
            "SigningAlgorithms": names(self.signing_algorithms),
            "KeyAgreementAlgorithms": names(self.key_agreement_algorithms),
        })
    }
}

impl ToJson for DeriveSharedSecretResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "SharedSecret": b64(&self.shared_secret),
            "KeyAgreementAlgorithm": self.key_agreement_algorithm.as_str(),
            "KeyOrigin": self.key_origin,
        })
    }
}

impl ToJson for GenerateMacResponse {
    fn to_json(self) -> Value {
        json!({
            "Mac": b64(&self.mac),
            "MacAlgorithm": self.mac_algorithm.as_str(),
            "KeyId": self.key_id,
        })
    }
}

impl ToJson for VerifyMacResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "MacValid": self.mac_valid,
            "MacAlgorithm": self.mac_algorithm.as_str(),
        })
    }
}

impl ToJson for GenerateDataKeyPairResponse {
    fn to_json(self) -> Value {
        json!({
            "PrivateKeyCiphertextBlob": b64(&self.private_key_ciphertext_blob),
            "PrivateKeyPlaintext": b64(&self.private_key_plaintext),
            "PublicKey": b64(&self.public_key),
            "KeyId": self.key_id,
            "KeyPairSpec": self.key_pair_spec,
            "KeyMaterialId": non_empty(self.key_material_id),
        })
    }
}

impl ToJson for GenerateDataKeyPairWithoutPlaintextResponse {
    fn to_json(self) -> Value {
        json!({
            "PrivateKeyCiphertextBlob": b64(&self.private_key_ciphertext_blob),
            "PublicKey": b64(&self.public_key),
            "KeyId": self.key_id,
            "KeyPairSpec": self.key_pair_spec,
            "KeyMaterialId": non_empty(self.key_material_id),
        })
    }
}
