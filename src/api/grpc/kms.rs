//! `p11kms.v1.KeyManagementService`: the KMS operations.

use tonic::Request;

use super::{metadata, opt, tags_in, ts, Reply};
use crate::core::keys::CreateKeyRequest;
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;

// One file per operation family: each reads its requests and builds its responses.
mod aliases;
mod asym;
mod crypto;
mod grants;
mod import;
mod rotation;

/// The SigV4 service name of the legacy methods.
const SERVICE: &str = "kms";

service_table! {
impl KeyManagementService as TABLE, signed as "kms";
operations {
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
legacy {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Reply<pb::CreateKeyResponse> {
        self.serve("CreateKey", SERVICE, request, |kms, caller, r| async move {
            let m = kms
                .create_key(
                    &caller,
                    CreateKeyRequest {
                        policy: opt(r.policy),
                        description: r.description,
                        key_usage: opt(r.key_usage),
                        key_spec: opt(r.key_spec),
                        customer_master_key_spec: opt(r.customer_master_key_spec),
                        origin: opt(r.origin),
                        bypass_policy_lockout_safety_check: r.bypass_policy_lockout_safety_check,
                        tags: tags_in(r.tags),
                        multi_region: r.multi_region,
                    },
                )
                .await?;
            Ok(pb::CreateKeyResponse {
                key_metadata: Some(metadata(m)),
            })
        })
        .await
    }

    async fn describe_key(
        &self,
        request: Request<pb::DescribeKeyRequest>,
    ) -> Reply<pb::DescribeKeyResponse> {
        self.serve(
            "DescribeKey",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let m = kms
                    .describe_key(&caller, &r.key_id, &r.grant_tokens)
                    .await?;
                Ok(pb::DescribeKeyResponse {
                    key_metadata: Some(metadata(m)),
                })
            },
        )
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Reply<pb::ListKeysResponse> {
        self.serve("ListKeys", SERVICE, request, |kms, caller, r| async move {
            let page = kms.list_keys(&caller, r.limit, &r.marker).await?;
            Ok(pb::ListKeysResponse {
                keys: page
                    .keys
                    .into_iter()
                    .map(|k| pb::KeyListEntry {
                        key_id: k.key_id,
                        key_arn: k.key_arn,
                    })
                    .collect(),
                truncated: page.next_marker.is_some(),
                next_marker: page.next_marker.unwrap_or_default(),
            })
        })
        .await
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Reply<pb::EnableKeyResponse> {
        self.serve("EnableKey", SERVICE, request, |kms, caller, r| async move {
            kms.enable_key(&caller, &r.key_id).await?;
            Ok(pb::EnableKeyResponse {})
        })
        .await
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Reply<pb::DisableKeyResponse> {
        self.serve(
            "DisableKey",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.disable_key(&caller, &r.key_id).await?;
                Ok(pb::DisableKeyResponse {})
            },
        )
        .await
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Reply<pb::ScheduleKeyDeletionResponse> {
        self.serve(
            "ScheduleKeyDeletion",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .schedule_key_deletion(&caller, &r.key_id, r.pending_window_in_days)
                    .await?;
                Ok(pb::ScheduleKeyDeletionResponse {
                    key_id: out.key_id,
                    deletion_date: Some(ts(out.deletion_date_ms)),
                    key_state: out.key_state,
                    pending_window_in_days: out.pending_window_in_days,
                })
            },
        )
        .await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Reply<pb::CancelKeyDeletionResponse> {
        self.serve(
            "CancelKeyDeletion",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let key_id = kms.cancel_key_deletion(&caller, &r.key_id).await?;
                Ok(pb::CancelKeyDeletionResponse { key_id })
            },
        )
        .await
    }

    async fn update_key_description(
        &self,
        request: Request<pb::UpdateKeyDescriptionRequest>,
    ) -> Reply<pb::UpdateKeyDescriptionResponse> {
        self.serve(
            "UpdateKeyDescription",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.update_key_description(&caller, &r.key_id, &r.description)
                    .await?;
                Ok(pb::UpdateKeyDescriptionResponse {})
            },
        )
        .await
    }

    async fn get_key_last_usage(
        &self,
        request: Request<pb::GetKeyLastUsageRequest>,
    ) -> Reply<pb::GetKeyLastUsageResponse> {
        self.serve(
            "GetKeyLastUsage",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms.get_key_last_usage(&caller, &r.key_id).await?;
                let last = out.last_usage.map(|u| pb::KeyLastUsage {
                    operation: u.operation.as_str().to_string(),
                    timestamp: Some(ts(u.used_at_ms)),
                    cloud_trail_event_id: u.event_id,
                    kms_request_id: u.request_id,
                });
                Ok(pb::GetKeyLastUsageResponse {
                    key_id: out.key_id,
                    key_last_usage: Some(last.unwrap_or_default()),
                    tracking_start_date: Some(ts(out.tracking_start_date_ms)),
                    key_creation_date: Some(ts(out.key_creation_date_ms)),
                })
            },
        )
        .await
    }

    async fn tag_resource(
        &self,
        request: Request<pb::TagResourceRequest>,
    ) -> Reply<pb::TagResourceResponse> {
        self.serve(
            "TagResource",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.tag_resource(&caller, &r.key_id, tags_in(r.tags))
                    .await?;
                Ok(pb::TagResourceResponse {})
            },
        )
        .await
    }

    async fn untag_resource(
        &self,
        request: Request<pb::UntagResourceRequest>,
    ) -> Reply<pb::UntagResourceResponse> {
        self.serve(
            "UntagResource",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.untag_resource(&caller, &r.key_id, r.tag_keys).await?;
                Ok(pb::UntagResourceResponse {})
            },
        )
        .await
    }

    async fn list_resource_tags(
        &self,
        request: Request<pb::ListResourceTagsRequest>,
    ) -> Reply<pb::ListResourceTagsResponse> {
        self.serve(
            "ListResourceTags",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let page = kms
                    .list_resource_tags(&caller, &r.key_id, r.limit, &r.marker)
                    .await?;
                Ok(pb::ListResourceTagsResponse {
                    tags: page
                        .tags
                        .into_iter()
                        .map(|t| pb::Tag {
                            tag_key: t.key,
                            tag_value: t.value,
                        })
                        .collect(),
                    truncated: page.next_marker.is_some(),
                    next_marker: page.next_marker.unwrap_or_default(),
                })
            },
        )
        .await
    }

    async fn get_key_policy(
        &self,
        request: Request<pb::GetKeyPolicyRequest>,
    ) -> Reply<pb::GetKeyPolicyResponse> {
        self.serve(
            "GetKeyPolicy",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let (policy, policy_name) = kms
                    .get_key_policy(&caller, &r.key_id, &r.policy_name)
                    .await?;
                Ok(pb::GetKeyPolicyResponse {
                    policy,
                    policy_name,
                })
            },
        )
        .await
    }

    async fn put_key_policy(
        &self,
        request: Request<pb::PutKeyPolicyRequest>,
    ) -> Reply<pb::PutKeyPolicyResponse> {
        self.serve(
            "PutKeyPolicy",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.put_key_policy(
                    &caller,
                    &r.key_id,
                    &r.policy_name,
                    &r.policy,
                    r.bypass_policy_lockout_safety_check,
                )
                .await?;
                Ok(pb::PutKeyPolicyResponse {})
            },
        )
        .await
    }

    async fn list_key_policies(
        &self,
        request: Request<pb::ListKeyPoliciesRequest>,
    ) -> Reply<pb::ListKeyPoliciesResponse> {
        self.serve(
            "ListKeyPolicies",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let policy_names = kms
                    .list_key_policies(&caller, &r.key_id, r.limit, &r.marker)
                    .await?;
                Ok(pb::ListKeyPoliciesResponse {
                    policy_names,
                    next_marker: String::new(),
                    truncated: false,
                })
            },
        )
        .await
    }

    // Rotation.


}

}
