//! `p11kms.v1.KeyManagementService`: the KMS operations.

use tonic::Request;
use zeroize::Zeroizing;

use super::{expose, opt, Reply};
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, MacRequest, SignRequest, VerifyRequest,
};
use crate::core::crypto::{
    DecryptRequest, EncryptRequest, GenerateDataKeyRequest, ReEncryptRequest,
};
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;

// One file per operation family: each reads its requests and builds its responses.
mod aliases;
mod grants;
mod import;
mod keys;
mod policies;
mod rotation;
mod tags;

/// The SigV4 service name of the legacy methods.
const SERVICE: &str = "kms";

service_table! {
impl KeyManagementService as TABLE, signed as "kms";
operations {
    create_key(CreateKeyRequest) -> CreateKeyResponse = crate::core::keys::CreateKeyRequest;
    describe_key(DescribeKeyRequest) -> DescribeKeyResponse = crate::core::keys::DescribeKeyRequest;
    list_keys(ListKeysRequest) -> ListKeysResponse = crate::core::keys::ListKeysRequest;
    enable_key(EnableKeyRequest) -> EnableKeyResponse = crate::core::keys::EnableKeyRequest;
    disable_key(DisableKeyRequest) -> DisableKeyResponse = crate::core::keys::DisableKeyRequest;
    schedule_key_deletion(ScheduleKeyDeletionRequest) -> ScheduleKeyDeletionResponse = crate::core::keys::ScheduleKeyDeletionRequest;
    cancel_key_deletion(CancelKeyDeletionRequest) -> CancelKeyDeletionResponse = crate::core::keys::CancelKeyDeletionRequest;
    update_key_description(UpdateKeyDescriptionRequest) -> UpdateKeyDescriptionResponse = crate::core::keys::UpdateKeyDescriptionRequest;
    get_key_last_usage(GetKeyLastUsageRequest) -> GetKeyLastUsageResponse = crate::core::usage::GetKeyLastUsageRequest;
    tag_resource(TagResourceRequest) -> TagResourceResponse = crate::core::tags::TagResourceRequest;
    untag_resource(UntagResourceRequest) -> UntagResourceResponse = crate::core::tags::UntagResourceRequest;
    list_resource_tags(ListResourceTagsRequest) -> ListResourceTagsResponse = crate::core::tags::ListResourceTagsRequest;
    get_key_policy(GetKeyPolicyRequest) -> GetKeyPolicyResponse = crate::core::policies::GetKeyPolicyRequest;
    put_key_policy(PutKeyPolicyRequest) -> PutKeyPolicyResponse = crate::core::policies::PutKeyPolicyRequest;
    list_key_policies(ListKeyPoliciesRequest) -> ListKeyPoliciesResponse = crate::core::policies::ListKeyPoliciesRequest;
    create_alias(CreateAliasRequest) -> CreateAliasResponse = crate::core::aliases::CreateAliasRequest;
    update_alias(UpdateAliasRequest) -> UpdateAliasResponse = crate::core::aliases::UpdateAliasRequest;
    delete_alias(DeleteAliasRequest) -> DeleteAliasResponse = crate::core::aliases::DeleteAliasRequest;
    list_aliases(ListAliasesRequest) -> ListAliasesResponse = crate::core::aliases::ListAliasesRequest;
    create_grant(CreateGrantRequest) -> CreateGrantResponse = crate::core::grants::CreateGrantRequest;
    list_grants(ListGrantsRequest) -> ListGrantsResponse = crate::core::grants::ListGrantsRequest;
    list_retirable_grants(ListRetirableGrantsRequest) -> ListGrantsResponse = crate::core::grants::ListRetirableGrantsRequest;
    retire_grant(RetireGrantRequest) -> RetireGrantResponse = crate::core::grants::RetireGrantRequest;
    revoke_grant(RevokeGrantRequest) -> RevokeGrantResponse = crate::core::grants::RevokeGrantRequest;
    enable_key_rotation(EnableKeyRotationRequest) -> EnableKeyRotationResponse = crate::core::rotation::EnableKeyRotationRequest;
    disable_key_rotation(DisableKeyRotationRequest) -> DisableKeyRotationResponse = crate::core::rotation::DisableKeyRotationRequest;
    get_key_rotation_status(GetKeyRotationStatusRequest) -> GetKeyRotationStatusResponse = crate::core::rotation::GetKeyRotationStatusRequest;
    rotate_key_on_demand(RotateKeyOnDemandRequest) -> RotateKeyOnDemandResponse = crate::core::rotation::RotateKeyOnDemandRequest;
    list_key_rotations(ListKeyRotationsRequest) -> ListKeyRotationsResponse = crate::core::rotation::ListKeyRotationsRequest;
    get_parameters_for_import(GetParametersForImportRequest) -> GetParametersForImportResponse = crate::core::import::GetParametersForImportRequest;
    import_key_material(ImportKeyMaterialRequest) -> ImportKeyMaterialResponse = crate::core::import::ImportKeyMaterialRequest;
    delete_imported_key_material(DeleteImportedKeyMaterialRequest) -> DeleteImportedKeyMaterialResponse = crate::core::import::DeleteImportedKeyMaterialRequest;
}
legacy {
    async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Reply<pb::EncryptResponse> {
        self.serve("Encrypt", SERVICE, request, |kms, caller, r| async move {
            let out = kms
                .encrypt(
                    &caller,
                    EncryptRequest {
                        key_id: r.key_id,
                        plaintext: Zeroizing::new(r.plaintext),
                        encryption_context: r.encryption_context,
                        grant_tokens: r.grant_tokens,
                        encryption_algorithm: opt(r.encryption_algorithm),
                        dry_run: r.dry_run,
                    },
                )
                .await?;
            Ok(pb::EncryptResponse {
                ciphertext_blob: out.ciphertext_blob,
                key_id: out.key_id,
                encryption_algorithm: out.encryption_algorithm,
            })
        })
        .await
    }

    async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Reply<pb::DecryptResponse> {
        self.serve("Decrypt", SERVICE, request, |kms, caller, r| async move {
            let out = kms
                .decrypt(
                    &caller,
                    DecryptRequest {
                        ciphertext_blob: r.ciphertext_blob,
                        encryption_context: r.encryption_context,
                        grant_tokens: r.grant_tokens,
                        key_id: opt(r.key_id),
                        encryption_algorithm: opt(r.encryption_algorithm),
                        dry_run: r.dry_run,
                    },
                )
                .await?;
            Ok(pb::DecryptResponse {
                key_id: out.key_id,
                plaintext: expose(out.plaintext),
                encryption_algorithm: out.encryption_algorithm,
                key_material_id: out.key_material_id,
            })
        })
        .await
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Reply<pb::ReEncryptResponse> {
        self.serve("ReEncrypt", SERVICE, request, |kms, caller, r| async move {
            let out = kms
                .re_encrypt(
                    &caller,
                    ReEncryptRequest {
                        ciphertext_blob: r.ciphertext_blob,
                        source_encryption_context: r.source_encryption_context,
                        source_key_id: opt(r.source_key_id),
                        destination_key_id: r.destination_key_id,
                        destination_encryption_context: r.destination_encryption_context,
                        source_encryption_algorithm: opt(r.source_encryption_algorithm),
                        destination_encryption_algorithm: opt(r.destination_encryption_algorithm),
                        grant_tokens: r.grant_tokens,
                        dry_run: r.dry_run,
                    },
                )
                .await?;
            Ok(pb::ReEncryptResponse {
                ciphertext_blob: out.ciphertext_blob,
                source_key_id: out.source_key_id,
                key_id: out.key_id,
                source_encryption_algorithm: out.source_encryption_algorithm,
                destination_encryption_algorithm: out.destination_encryption_algorithm,
                source_key_material_id: out.source_key_material_id,
                destination_key_material_id: out.destination_key_material_id,
            })
        })
        .await
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Reply<pb::GenerateDataKeyResponse> {
        self.serve(
            "GenerateDataKey",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .generate_data_key(
                        &caller,
                        GenerateDataKeyRequest {
                            key_id: r.key_id,
                            encryption_context: r.encryption_context,
                            number_of_bytes: r.number_of_bytes,
                            key_spec: opt(r.key_spec),
                            grant_tokens: r.grant_tokens,
                            dry_run: r.dry_run,
                        },
                        true,
                    )
                    .await?;
                Ok(pb::GenerateDataKeyResponse {
                    ciphertext_blob: out.ciphertext_blob,
                    plaintext: out.plaintext.map(expose).unwrap_or_default(),
                    key_id: out.key_id,
                    key_material_id: out.key_material_id,
                })
            },
        )
        .await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Reply<pb::GenerateDataKeyWithoutPlaintextResponse> {
        self.serve(
            "GenerateDataKeyWithoutPlaintext",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .generate_data_key(
                        &caller,
                        GenerateDataKeyRequest {
                            key_id: r.key_id,
                            encryption_context: r.encryption_context,
                            number_of_bytes: r.number_of_bytes,
                            key_spec: opt(r.key_spec),
                            grant_tokens: r.grant_tokens,
                            dry_run: r.dry_run,
                        },
                        false,
                    )
                    .await?;
                Ok(pb::GenerateDataKeyWithoutPlaintextResponse {
                    ciphertext_blob: out.ciphertext_blob,
                    key_id: out.key_id,
                    key_material_id: out.key_material_id,
                })
            },
        )
        .await
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Reply<pb::GenerateRandomResponse> {
        self.serve(
            "GenerateRandom",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let bytes = kms
                    .generate_random(
                        &caller,
                        r.number_of_bytes,
                        Some(r.custom_key_store_id.as_str()),
                    )
                    .await?;
                Ok(pb::GenerateRandomResponse {
                    plaintext: expose(bytes),
                })
            },
        )
        .await
    }

    // Asymmetric keys, signatures and MACs.

    async fn sign(&self, request: Request<pb::SignRequest>) -> Reply<pb::SignResponse> {
        self.serve("Sign", SERVICE, request, |kms, caller, r| async move {
            let out = kms
                .sign(
                    &caller,
                    SignRequest {
                        key_id: r.key_id,
                        message: Zeroizing::new(r.message),
                        message_type: opt(r.message_type),
                        signing_algorithm: opt(r.signing_algorithm),
                        grant_tokens: r.grant_tokens,
                        dry_run: r.dry_run,
                    },
                )
                .await?;
            Ok(pb::SignResponse {
                key_id: out.key_id,
                signature: out.signature,
                signing_algorithm: out.signing_algorithm,
            })
        })
        .await
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Reply<pb::VerifyResponse> {
        self.serve("Verify", SERVICE, request, |kms, caller, r| async move {
            let out = kms
                .verify(
                    &caller,
                    VerifyRequest {
                        key_id: r.key_id,
                        message: Zeroizing::new(r.message),
                        message_type: opt(r.message_type),
                        signature: r.signature,
                        signing_algorithm: opt(r.signing_algorithm),
                        grant_tokens: r.grant_tokens,
                        dry_run: r.dry_run,
                    },
                )
                .await?;
            Ok(pb::VerifyResponse {
                key_id: out.key_id,
                signature_valid: out.signature_valid,
                signing_algorithm: out.signing_algorithm,
            })
        })
        .await
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Reply<pb::GetPublicKeyResponse> {
        self.serve(
            "GetPublicKey",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .get_public_key(&caller, &r.key_id, &r.grant_tokens)
                    .await?;
                Ok(pb::GetPublicKeyResponse {
                    key_id: out.key_id,
                    public_key: out.public_key,
                    customer_master_key_spec: out.key_spec.clone(),
                    key_spec: out.key_spec,
                    key_usage: out.key_usage,
                    encryption_algorithms: out.encryption_algorithms,
                    signing_algorithms: out.signing_algorithms,
                    key_agreement_algorithms: out.key_agreement_algorithms,
                })
            },
        )
        .await
    }

    async fn derive_shared_secret(
        &self,
        request: Request<pb::DeriveSharedSecretRequest>,
    ) -> Reply<pb::DeriveSharedSecretResponse> {
        self.serve(
            "DeriveSharedSecret",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .derive_shared_secret(
                        &caller,
                        DeriveSharedSecretRequest {
                            key_id: r.key_id,
                            key_agreement_algorithm: opt(r.key_agreement_algorithm),
                            public_key: r.public_key,
                            grant_tokens: r.grant_tokens,
                            dry_run: r.dry_run,
                        },
                    )
                    .await?;
                Ok(pb::DeriveSharedSecretResponse {
                    key_id: out.key_id,
                    shared_secret: expose(out.shared_secret),
                    key_agreement_algorithm: out.key_agreement_algorithm,
                    key_origin: out.key_origin,
                })
            },
        )
        .await
    }

    async fn generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Reply<pb::GenerateMacResponse> {
        self.serve(
            "GenerateMac",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .mac(
                        &caller,
                        MacRequest {
                            key_id: r.key_id,
                            message: Zeroizing::new(r.message),
                            mac_algorithm: opt(r.mac_algorithm),
                            mac: Vec::new(),
                            grant_tokens: r.grant_tokens,
                            dry_run: r.dry_run,
                        },
                        false,
                    )
                    .await?;
                Ok(pb::GenerateMacResponse {
                    mac: out.mac,
                    mac_algorithm: out.mac_algorithm,
                    key_id: out.key_id,
                })
            },
        )
        .await
    }

    async fn verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Reply<pb::VerifyMacResponse> {
        self.serve("VerifyMac", SERVICE, request, |kms, caller, r| async move {
            let out = kms
                .mac(
                    &caller,
                    MacRequest {
                        key_id: r.key_id,
                        message: Zeroizing::new(r.message),
                        mac_algorithm: opt(r.mac_algorithm),
                        mac: r.mac,
                        grant_tokens: r.grant_tokens,
                        dry_run: r.dry_run,
                    },
                    true,
                )
                .await?;
            Ok(pb::VerifyMacResponse {
                key_id: out.key_id,
                mac_valid: out.mac_valid,
                mac_algorithm: out.mac_algorithm,
            })
        })
        .await
    }

    async fn generate_data_key_pair(
        &self,
        request: Request<pb::GenerateDataKeyPairRequest>,
    ) -> Reply<pb::GenerateDataKeyPairResponse> {
        self.serve(
            "GenerateDataKeyPair",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .generate_data_key_pair(
                        &caller,
                        DataKeyPairRequest {
                            key_id: r.key_id,
                            encryption_context: r.encryption_context,
                            key_pair_spec: opt(r.key_pair_spec),
                            grant_tokens: r.grant_tokens,
                            dry_run: r.dry_run,
                        },
                        true,
                    )
                    .await?;
                Ok(pb::GenerateDataKeyPairResponse {
                    private_key_ciphertext_blob: out.private_key_ciphertext_blob,
                    private_key_plaintext: out
                        .private_key_plaintext
                        .map(expose)
                        .unwrap_or_default(),
                    public_key: out.public_key,
                    key_id: out.key_id,
                    key_pair_spec: out.key_pair_spec,
                    key_material_id: out.key_material_id,
                })
            },
        )
        .await
    }

    async fn generate_data_key_pair_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyPairWithoutPlaintextRequest>,
    ) -> Reply<pb::GenerateDataKeyPairWithoutPlaintextResponse> {
        self.serve(
            "GenerateDataKeyPairWithoutPlaintext",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .generate_data_key_pair(
                        &caller,
                        DataKeyPairRequest {
                            key_id: r.key_id,
                            encryption_context: r.encryption_context,
                            key_pair_spec: opt(r.key_pair_spec),
                            grant_tokens: r.grant_tokens,
                            dry_run: r.dry_run,
                        },
                        false,
                    )
                    .await?;
                Ok(pb::GenerateDataKeyPairWithoutPlaintextResponse {
                    private_key_ciphertext_blob: out.private_key_ciphertext_blob,
                    public_key: out.public_key,
                    key_id: out.key_id,
                    key_pair_spec: out.key_pair_spec,
                    key_material_id: out.key_material_id,
                })
            },
        )
        .await
    }

    // Rotation.


}

}
