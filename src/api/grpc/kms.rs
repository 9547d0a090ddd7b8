//! `p11kms.v1.KeyManagementService`: the KMS operations.

use crate::pb::key_management_service_server::KeyManagementService;

// One file per operation family: each reads its requests and builds its responses.
mod aliases;
mod asym;
mod crypto;
mod grants;
mod import;
mod keys;
mod keystores;
mod policies;
pub(crate) mod regions;
mod rotation;
mod tags;

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
    create_custom_key_store(CreateCustomKeyStoreRequest) -> CreateCustomKeyStoreResponse = crate::core::keystores::CreateCustomKeyStoreRequest;
    connect_custom_key_store(ConnectCustomKeyStoreRequest) -> ConnectCustomKeyStoreResponse = crate::core::keystores::ConnectCustomKeyStoreRequest;
    disconnect_custom_key_store(DisconnectCustomKeyStoreRequest) -> DisconnectCustomKeyStoreResponse = crate::core::keystores::DisconnectCustomKeyStoreRequest;
    update_custom_key_store(UpdateCustomKeyStoreRequest) -> UpdateCustomKeyStoreResponse = crate::core::keystores::UpdateCustomKeyStoreRequest;
    delete_custom_key_store(DeleteCustomKeyStoreRequest) -> DeleteCustomKeyStoreResponse = crate::core::keystores::DeleteCustomKeyStoreRequest;
    describe_custom_key_stores(DescribeCustomKeyStoresRequest) -> DescribeCustomKeyStoresResponse = crate::core::keystores::DescribeCustomKeyStoresRequest;
    replicate_key(ReplicateKeyRequest) -> ReplicateKeyResponse = crate::core::regions::ReplicateKeyRequest;
    update_primary_region(UpdatePrimaryRegionRequest) -> UpdatePrimaryRegionResponse = crate::core::regions::UpdatePrimaryRegionRequest;
    encrypt(EncryptRequest) -> EncryptResponse = crate::core::crypto::EncryptRequest;
    decrypt(DecryptRequest) -> DecryptResponse = crate::core::crypto::DecryptRequest;
    re_encrypt(ReEncryptRequest) -> ReEncryptResponse = crate::core::crypto::ReEncryptRequest;
    generate_data_key(GenerateDataKeyRequest) -> GenerateDataKeyResponse = crate::core::crypto::GenerateDataKeyRequest;
    generate_data_key_without_plaintext(GenerateDataKeyWithoutPlaintextRequest) -> GenerateDataKeyWithoutPlaintextResponse = crate::core::crypto::GenerateDataKeyWithoutPlaintextRequest;
    generate_random(GenerateRandomRequest) -> GenerateRandomResponse = crate::core::crypto::GenerateRandomRequest;
    sign(SignRequest) -> SignResponse = crate::core::asym::SignRequest;
    verify(VerifyRequest) -> VerifyResponse = crate::core::asym::VerifyRequest;
    get_public_key(GetPublicKeyRequest) -> GetPublicKeyResponse = crate::core::asym::GetPublicKeyRequest;
    derive_shared_secret(DeriveSharedSecretRequest) -> DeriveSharedSecretResponse = crate::core::asym::DeriveSharedSecretRequest;
    generate_mac(GenerateMacRequest) -> GenerateMacResponse = crate::core::asym::GenerateMacRequest;
    verify_mac(VerifyMacRequest) -> VerifyMacResponse = crate::core::asym::VerifyMacRequest;
    generate_data_key_pair(GenerateDataKeyPairRequest) -> GenerateDataKeyPairResponse = crate::core::asym::GenerateDataKeyPairRequest;
    generate_data_key_pair_without_plaintext(GenerateDataKeyPairWithoutPlaintextRequest) -> GenerateDataKeyPairWithoutPlaintextResponse = crate::core::asym::GenerateDataKeyPairWithoutPlaintextRequest;
}
}
