//! `p11kms.v1.KeyManagementService`: the KMS operations.

use tonic::Request;
use zeroize::Zeroizing;

use super::{expose, metadata, opt, tags_in, ts, Reply};
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, MacRequest, SignRequest, VerifyRequest,
};
use crate::core::crypto::{
    DecryptRequest, EncryptRequest, GenerateDataKeyRequest, ReEncryptRequest,
};
use crate::core::keys::CreateKeyRequest;
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;

// One file per operation family: each reads its requests and builds its responses.
mod aliases;
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
