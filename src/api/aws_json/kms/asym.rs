//! Asymmetric keys, signatures and MACs on the AWS door: Sign, Verify, GetPublicKey,
//! DeriveSharedSecret, GenerateMac, VerifyMac, GenerateDataKeyPair,
//! GenerateDataKeyPairWithoutPlaintext.

use super::members::{from_json, non_empty, to_json};
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, DeriveSharedSecretResponse,
    GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyPairWithoutPlaintextResponse,
    GenerateMacRequest, GenerateMacResponse, GetPublicKeyRequest, GetPublicKeyResponse,
    SignRequest, SignResponse, VerifyMacRequest, VerifyMacResponse, VerifyRequest, VerifyResponse,
};

from_json! {
    SignRequest { key_id, message, message_type, signing_algorithm, grant_tokens, dry_run }
    VerifyRequest {
        key_id, message, message_type, signature, signing_algorithm, grant_tokens, dry_run
    }
    GetPublicKeyRequest { key_id, grant_tokens }
    DeriveSharedSecretRequest {
        key_id, key_agreement_algorithm, public_key, grant_tokens, dry_run
    }
    GenerateMacRequest { key_id, message, mac_algorithm, grant_tokens, dry_run }
    VerifyMacRequest { key_id, message, mac_algorithm, mac, grant_tokens, dry_run }
    DataKeyPairRequest { key_id, encryption_context, key_pair_spec, grant_tokens, dry_run }
}
from_json! {
    GenerateDataKeyPairRequest(DataKeyPairRequest)
    GenerateDataKeyPairWithoutPlaintextRequest(DataKeyPairRequest)
}

// GetPublicKey's algorithm lists are left out when empty, as KeyMetadata's, and AWS still
// sends the deprecated CustomerMasterKeySpec beside KeySpec.
to_json! {
    SignResponse { key_id, signature, signing_algorithm }
    VerifyResponse { key_id, signature_valid, signing_algorithm }
    GetPublicKeyResponse {
        key_id, public_key, key_spec, key_usage, encryption_algorithms => non_empty,
        signing_algorithms => non_empty, key_agreement_algorithms => non_empty;
        "CustomerMasterKeySpec" = |r| r.key_spec.clone(),
    }
    DeriveSharedSecretResponse { key_id, shared_secret, key_agreement_algorithm, key_origin }
    GenerateMacResponse { mac, mac_algorithm, key_id }
    VerifyMacResponse { key_id, mac_valid, mac_algorithm }
    GenerateDataKeyPairResponse {
        private_key_ciphertext_blob, private_key_plaintext, public_key, key_id, key_pair_spec,
        key_material_id => non_empty,
    }
    GenerateDataKeyPairWithoutPlaintextResponse {
        private_key_ciphertext_blob, public_key, key_id, key_pair_spec,
        key_material_id => non_empty,
    }
}
