//! `p11kms.v1.KeyManagementService`: the KMS operations.

use tonic::Request;

use super::{grant_entry, metadata, opt, tags_in, ts, Door, Reply};
use crate::core::grants::{CreateGrantRequest, ListGrantsResponse};
use crate::core::import::ImportKeyMaterialRequest;
use crate::core::keys::CreateKeyRequest;
use crate::core::operation::Operation;
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;

// One file per operation family: each reads its requests and builds its responses.
mod aliases;
mod asym;
mod crypto;

const SERVICE: &str = "kms";

/// The door's table: each `KeyManagementService` method and the core operation it serves.
/// Methods not yet in the table are written out under `legacy`.
macro_rules! table {
    (
        operations { $($method:ident($req:ident) -> $resp:ident = $op:ty;)* }
        legacy { $($legacy:tt)* }
    ) => {
        #[tonic::async_trait]
        impl KeyManagementService for Door {
            $(
                async fn $method(&self, request: Request<pb::$req>) -> Reply<pb::$resp> {
                    self.call::<$op, _, _>(SERVICE, request).await
                }
            )*
            $($legacy)*
        }

        /// The core operations the table serves, by AWS name.
        pub const TABLE: &[&str] = &[$(<$op as Operation>::NAME),*];
    };
}

table! {
operations {
    create_alias(CreateAliasRequest) -> CreateAliasResponse = crate::core::aliases::CreateAliasRequest;
    update_alias(UpdateAliasRequest) -> UpdateAliasResponse = crate::core::aliases::UpdateAliasRequest;
    delete_alias(DeleteAliasRequest) -> DeleteAliasResponse = crate::core::aliases::DeleteAliasRequest;
    list_aliases(ListAliasesRequest) -> ListAliasesResponse = crate::core::aliases::ListAliasesRequest;
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

    async fn create_grant(
        &self,
        request: Request<pb::CreateGrantRequest>,
    ) -> Reply<pb::CreateGrantResponse> {
        self.serve(
            "CreateGrant",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let c = r.constraints.unwrap_or_default();
                let out = kms
                    .create_grant(
                        &caller,
                        CreateGrantRequest {
                            key_id: r.key_id,
                            grantee_principal: r.grantee_principal,
                            retiring_principal: opt(r.retiring_principal),
                            operations: r.operations,
                            constraint_equals: c.encryption_context_equals.map(|m| m.pairs),
                            constraint_subset: c.encryption_context_subset.map(|m| m.pairs),
                            grant_tokens: r.grant_tokens,
                            name: opt(r.name),
                            dry_run: r.dry_run,
                        },
                    )
                    .await?;
                Ok(pb::CreateGrantResponse {
                    grant_token: out.grant_token,
                    grant_id: out.grant_id,
                })
            },
        )
        .await
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Reply<pb::ListGrantsResponse> {
        self.serve(
            "ListGrants",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let page = kms
                    .list_grants(
                        &caller,
                        &r.key_id,
                        opt(r.grant_id).as_deref(),
                        opt(r.grantee_principal).as_deref(),
                        r.limit,
                        &r.marker,
                    )
                    .await?;
                Ok(grants_page(page))
            },
        )
        .await
    }

    async fn list_retirable_grants(
        &self,
        request: Request<pb::ListRetirableGrantsRequest>,
    ) -> Reply<pb::ListGrantsResponse> {
        self.serve(
            "ListRetirableGrants",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let page = kms
                    .list_retirable_grants(&caller, &r.retiring_principal, r.limit, &r.marker)
                    .await?;
                Ok(grants_page(page))
            },
        )
        .await
    }

    async fn retire_grant(
        &self,
        request: Request<pb::RetireGrantRequest>,
    ) -> Reply<pb::RetireGrantResponse> {
        self.serve(
            "RetireGrant",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.retire_grant(
                    &caller,
                    opt(r.grant_token).as_deref(),
                    opt(r.key_id).as_deref(),
                    opt(r.grant_id).as_deref(),
                    r.dry_run,
                )
                .await?;
                Ok(pb::RetireGrantResponse {})
            },
        )
        .await
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Reply<pb::RevokeGrantResponse> {
        self.serve(
            "RevokeGrant",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.revoke_grant(&caller, &r.key_id, &r.grant_id, r.dry_run)
                    .await?;
                Ok(pb::RevokeGrantResponse {})
            },
        )
        .await
    }

    // Rotation.

    async fn enable_key_rotation(
        &self,
        request: Request<pb::EnableKeyRotationRequest>,
    ) -> Reply<pb::EnableKeyRotationResponse> {
        self.serve(
            "EnableKeyRotation",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.enable_key_rotation(&caller, &r.key_id, r.rotation_period_in_days)
                    .await?;
                Ok(pb::EnableKeyRotationResponse {})
            },
        )
        .await
    }

    async fn disable_key_rotation(
        &self,
        request: Request<pb::DisableKeyRotationRequest>,
    ) -> Reply<pb::DisableKeyRotationResponse> {
        self.serve(
            "DisableKeyRotation",
            SERVICE,
            request,
            |kms, caller, r| async move {
                kms.disable_key_rotation(&caller, &r.key_id).await?;
                Ok(pb::DisableKeyRotationResponse {})
            },
        )
        .await
    }

    async fn get_key_rotation_status(
        &self,
        request: Request<pb::GetKeyRotationStatusRequest>,
    ) -> Reply<pb::GetKeyRotationStatusResponse> {
        self.serve(
            "GetKeyRotationStatus",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let s = kms.get_key_rotation_status(&caller, &r.key_id).await?;
                Ok(pb::GetKeyRotationStatusResponse {
                    key_rotation_enabled: s.key_rotation_enabled,
                    key_id: s.key_id,
                    rotation_period_in_days: s.rotation_period_in_days,
                    next_rotation_date: s.next_rotation_date_ms.map(ts),
                    on_demand_rotation_start_date: s.on_demand_rotation_start_date_ms.map(ts),
                })
            },
        )
        .await
    }

    async fn rotate_key_on_demand(
        &self,
        request: Request<pb::RotateKeyOnDemandRequest>,
    ) -> Reply<pb::RotateKeyOnDemandResponse> {
        self.serve(
            "RotateKeyOnDemand",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let key_id = kms.rotate_key_on_demand(&caller, &r.key_id).await?;
                Ok(pb::RotateKeyOnDemandResponse { key_id })
            },
        )
        .await
    }

    async fn list_key_rotations(
        &self,
        request: Request<pb::ListKeyRotationsRequest>,
    ) -> Reply<pb::ListKeyRotationsResponse> {
        self.serve(
            "ListKeyRotations",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let page = kms
                    .list_key_rotations(
                        &caller,
                        &r.key_id,
                        r.limit,
                        &r.marker,
                        Some(r.include_key_material.as_str()),
                    )
                    .await?;
                Ok(pb::ListKeyRotationsResponse {
                    rotations: page
                        .rotations
                        .into_iter()
                        .map(|e| pb::RotationsListEntry {
                            key_id: e.key_id,
                            key_material_id: e.key_material_id,
                            rotation_date: e.rotation_date_ms.map(ts),
                            rotation_type: e.rotation_type.unwrap_or_default(),
                            key_material_state: e.key_material_state,
                            import_state: e.import_state.unwrap_or_default(),
                            expiration_model: e.expiration_model.unwrap_or_default(),
                            valid_to: e.valid_to_ms.map(ts),
                        })
                        .collect(),
                    truncated: page.next_marker.is_some(),
                    next_marker: page.next_marker.unwrap_or_default(),
                })
            },
        )
        .await
    }

    // Import of key material.

    async fn get_parameters_for_import(
        &self,
        request: Request<pb::GetParametersForImportRequest>,
    ) -> Reply<pb::GetParametersForImportResponse> {
        self.serve(
            "GetParametersForImport",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let p = kms
                    .get_parameters_for_import(
                        &caller,
                        &r.key_id,
                        &r.wrapping_algorithm,
                        &r.wrapping_key_spec,
                    )
                    .await?;
                Ok(pb::GetParametersForImportResponse {
                    key_id: p.key_id,
                    import_token: p.import_token,
                    public_key: p.public_key,
                    parameters_valid_to: Some(ts(p.parameters_valid_to_ms)),
                })
            },
        )
        .await
    }

    async fn import_key_material(
        &self,
        request: Request<pb::ImportKeyMaterialRequest>,
    ) -> Reply<pb::ImportKeyMaterialResponse> {
        self.serve(
            "ImportKeyMaterial",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let out = kms
                    .import_key_material(
                        &caller,
                        ImportKeyMaterialRequest {
                            key_id: r.key_id,
                            import_token: r.import_token,
                            encrypted_key_material: r.encrypted_key_material,
                            valid_to_ms: r
                                .valid_to
                                .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000)),
                            expiration_model: opt(r.expiration_model),
                            import_type: opt(r.import_type),
                            key_material_description: opt(r.key_material_description),
                            key_material_id: opt(r.key_material_id),
                        },
                    )
                    .await?;
                Ok(pb::ImportKeyMaterialResponse {
                    key_id: out.key_id,
                    key_material_id: out.key_material_id,
                })
            },
        )
        .await
    }

    async fn delete_imported_key_material(
        &self,
        request: Request<pb::DeleteImportedKeyMaterialRequest>,
    ) -> Reply<pb::DeleteImportedKeyMaterialResponse> {
        self.serve(
            "DeleteImportedKeyMaterial",
            SERVICE,
            request,
            |kms, caller, r| async move {
                let material = opt(r.key_material_id);
                let out = kms
                    .delete_imported_key_material(&caller, &r.key_id, material.as_deref())
                    .await?;
                Ok(pb::DeleteImportedKeyMaterialResponse {
                    key_id: out.key_id,
                    key_material_id: out.key_material_id,
                })
            },
        )
        .await
    }
}

}

fn grants_page(page: ListGrantsResponse) -> pb::ListGrantsResponse {
    pb::ListGrantsResponse {
        grants: page.grants.into_iter().map(grant_entry).collect(),
        truncated: page.next_marker.is_some(),
        next_marker: page.next_marker.unwrap_or_default(),
    }
}
