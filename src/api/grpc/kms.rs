//! `p11kms.v1.KeyManagementService`: the KMS operations.

use tonic::Request;
use zeroize::Zeroizing;

use super::{expose, grant_entry, opt, ts, Door, Reply};
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, MacRequest, SignRequest, VerifyRequest,
};
use crate::core::crypto::{
    DecryptRequest, EncryptRequest, GenerateDataKeyRequest, ReEncryptRequest,
};
use crate::core::grants::{CreateGrantRequest, ListGrantsResponse};
use crate::core::import::ImportKeyMaterialRequest;
use crate::core::operation::Operation;
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;

// One file per operation family: each reads its requests and builds its responses.
mod aliases;
mod keys;
mod policies;
mod tags;

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
