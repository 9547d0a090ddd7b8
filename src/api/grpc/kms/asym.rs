//! Asymmetric keys, signatures and MACs on the gRPC door: Sign, Verify, GetPublicKey,
//! DeriveSharedSecret, GenerateMac, VerifyMac, GenerateDataKeyPair,
//! GenerateDataKeyPairWithoutPlaintext.

use super::super::convert::{from_message, to_message};
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, DeriveSharedSecretResponse,
    GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyPairWithoutPlaintextResponse,
    GenerateMacRequest, GenerateMacResponse, GetPublicKeyRequest, GetPublicKeyResponse,
    SignRequest, SignResponse, VerifyMacRequest, VerifyMacResponse, VerifyRequest, VerifyResponse,
};
use crate::pb;

from_message!(pb::SignRequest => SignRequest {
    key_id, message, message_type, signing_algorithm, grant_tokens, dry_run
});
from_message!(pb::VerifyRequest => VerifyRequest {
    key_id, message, message_type, signature, signing_algorithm, grant_tokens, dry_run
});
from_message!(pb::GetPublicKeyRequest => GetPublicKeyRequest { key_id, grant_tokens });
from_message!(pb::DeriveSharedSecretRequest => DeriveSharedSecretRequest {
    key_id, key_agreement_algorithm, public_key, grant_tokens, dry_run
});
from_message!(pb::GenerateMacRequest => GenerateMacRequest {
    key_id, message, mac_algorithm, grant_tokens, dry_run
});
from_message!(pb::VerifyMacRequest => VerifyMacRequest {
    key_id, message, mac_algorithm, mac, grant_tokens, dry_run
});
from_message!(pb::GenerateDataKeyPairRequest => GenerateDataKeyPairRequest(DataKeyPairRequest {
    key_id, encryption_context, key_pair_spec, grant_tokens, dry_run
}));
from_message!(
    pb::GenerateDataKeyPairWithoutPlaintextRequest => GenerateDataKeyPairWithoutPlaintextRequest(
        DataKeyPairRequest { key_id, encryption_context, key_pair_spec, grant_tokens, dry_run }
    )
);

to_message!(SignResponse => pb::SignResponse { key_id, signature, signing_algorithm });
to_message!(VerifyResponse => pb::VerifyResponse { key_id, signature_valid, signing_algorithm });
// CustomerMasterKeySpec is the deprecated spelling of KeySpec: the same value.
to_message!(out: GetPublicKeyResponse => pb::GetPublicKeyResponse {
    customer_master_key_spec = out.key_spec.clone(), key_id, public_key, key_spec, key_usage,
    encryption_algorithms, signing_algorithms, key_agreement_algorithms
});
to_message!(DeriveSharedSecretResponse => pb::DeriveSharedSecretResponse {
    key_id, shared_secret, key_agreement_algorithm, key_origin
});
to_message!(GenerateMacResponse => pb::GenerateMacResponse { mac, mac_algorithm, key_id });
to_message!(VerifyMacResponse => pb::VerifyMacResponse { key_id, mac_valid, mac_algorithm });
to_message!(GenerateDataKeyPairResponse => pb::GenerateDataKeyPairResponse {
    private_key_ciphertext_blob, private_key_plaintext, public_key, key_id, key_pair_spec,
    key_material_id
});
to_message!(
    GenerateDataKeyPairWithoutPlaintextResponse => pb::GenerateDataKeyPairWithoutPlaintextResponse {
        private_key_ciphertext_blob, public_key, key_id, key_pair_spec, key_material_id
    }
);
