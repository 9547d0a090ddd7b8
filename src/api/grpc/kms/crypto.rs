//! Symmetric cryptography on the gRPC door: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.
//!
//! Plaintext moves into a `Zeroizing` buffer without a copy, and out of it into the response
//! message only at the end (the rules of [`super::super::convert`]).

use super::super::convert::{from_message, to_message};
use crate::core::crypto::{
    DataKeyRequest, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    ReEncryptRequest, ReEncryptResponse,
};
use crate::pb;

from_message!(pb::EncryptRequest => EncryptRequest {
    key_id, plaintext, encryption_context, grant_tokens, encryption_algorithm, dry_run
});
from_message!(pb::DecryptRequest => DecryptRequest {
    ciphertext_blob, encryption_context, grant_tokens, key_id, encryption_algorithm, dry_run
});
from_message!(pb::ReEncryptRequest => ReEncryptRequest {
    ciphertext_blob, source_encryption_context, source_key_id, destination_key_id,
    destination_encryption_context, source_encryption_algorithm,
    destination_encryption_algorithm, grant_tokens, dry_run
});
from_message!(pb::GenerateDataKeyRequest => GenerateDataKeyRequest(DataKeyRequest {
    key_id, encryption_context, number_of_bytes, key_spec, grant_tokens, dry_run
}));
from_message!(
    pb::GenerateDataKeyWithoutPlaintextRequest => GenerateDataKeyWithoutPlaintextRequest(
        DataKeyRequest {
            key_id, encryption_context, number_of_bytes, key_spec, grant_tokens, dry_run
        }
    )
);
from_message!(pb::GenerateRandomRequest => GenerateRandomRequest {
    number_of_bytes, custom_key_store_id
});

to_message!(EncryptResponse => pb::EncryptResponse {
    ciphertext_blob, key_id, encryption_algorithm
});
to_message!(DecryptResponse => pb::DecryptResponse {
    key_id, plaintext, encryption_algorithm, key_material_id
});
to_message!(ReEncryptResponse => pb::ReEncryptResponse {
    ciphertext_blob, source_key_id, key_id, source_encryption_algorithm,
    destination_encryption_algorithm, source_key_material_id, destination_key_material_id
});
to_message!(GenerateDataKeyResponse => pb::GenerateDataKeyResponse {
    ciphertext_blob, plaintext, key_id, key_material_id
});
to_message!(GenerateDataKeyWithoutPlaintextResponse => pb::GenerateDataKeyWithoutPlaintextResponse {
    ciphertext_blob, key_id, key_material_id
});
to_message!(GenerateRandomResponse => pb::GenerateRandomResponse { plaintext });
