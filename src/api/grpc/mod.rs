//! The gRPC door: `p11kms.v1.KeyManagementService` over TLS with client certificates.
//!
//! Each method authenticates the caller from its verified client certificate, converts the
//! message to the engine's types, calls the engine, and converts back. Errors go through
//! [`status::to_status`], the door's one mapping.

pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::core::aliases::AliasListEntry;
use crate::core::crypto::{
    DecryptRequest, EncryptRequest, GenerateDataKeyRequest, ReEncryptRequest,
};
use crate::core::keys::{CreateKeyRequest, KeyMetadata};
use crate::core::Kms;
use crate::identity::{AuthMethod, Caller, CertificateDirectory};
use crate::pb;
use crate::pb::key_management_service_server::KeyManagementService;
use crate::store::Tag;
use status::{to_status, unauthenticated};

/// The gRPC service over the engine.
#[derive(Debug, Clone)]
pub struct GrpcService {
    kms: Arc<Kms>,
    certs: Arc<CertificateDirectory>,
}

impl GrpcService {
    /// A service over an engine, authenticating callers with certificate bindings.
    pub fn new(kms: Arc<Kms>, certs: Arc<CertificateDirectory>) -> Self {
        GrpcService { kms, certs }
    }

    /// The caller behind a request: its verified client certificate mapped to a principal.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| unauthenticated("A client certificate is required."))?;
        let leaf = certs
            .first()
            .ok_or_else(|| unauthenticated("A client certificate is required."))?;
        let principal = self.certs.principal_for(leaf.as_ref()).ok_or_else(|| {
            unauthenticated("The client certificate is not bound to any principal.")
        })?;
        Caller::from_principal(
            &principal,
            AuthMethod::MutualTls,
            req.remote_addr().map(|a| a.ip()),
            true,
        )
        .map_err(|_| unauthenticated("The client certificate maps to an invalid principal."))
    }
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn ctx(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn tags_in(tags: Vec<pb::Tag>) -> Vec<Tag> {
    tags.into_iter()
        .map(|t| Tag {
            key: t.tag_key,
            value: t.tag_value,
        })
        .collect()
}

fn metadata(m: KeyMetadata) -> pb::KeyMetadata {
    pb::KeyMetadata {
        aws_account_id: m.aws_account_id,
        key_id: m.key_id,
        arn: m.arn,
        creation_date: Some(ts(m.creation_date_ms)),
        enabled: m.enabled,
        description: m.description,
        key_usage: m.key_usage,
        key_state: m.key_state,
        deletion_date: m.deletion_date_ms.map(ts),
        valid_to: None,
        origin: m.origin,
        key_manager: m.key_manager,
        customer_master_key_spec: m.key_spec.clone(),
        key_spec: m.key_spec,
        encryption_algorithms: m.encryption_algorithms,
        signing_algorithms: Vec::new(),
        mac_algorithms: Vec::new(),
        multi_region: m.multi_region,
        pending_deletion_window_in_days: m.pending_deletion_window_in_days,
        current_key_material_id: m.current_key_material_id,
    }
}

fn alias_entry(a: AliasListEntry) -> pb::AliasListEntry {
    pb::AliasListEntry {
        alias_name: a.alias_name,
        alias_arn: a.alias_arn,
        target_key_id: a.target_key_id,
        creation_date: Some(ts(a.creation_date_ms)),
        last_updated_date: Some(ts(a.last_updated_date_ms)),
    }
}

/// Moves a plaintext out of a zeroizing buffer into the response message. The response
/// buffer belongs to the transport from here on.
fn expose(p: Zeroizing<Vec<u8>>) -> Vec<u8> {
    p.to_vec()
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl KeyManagementService for GrpcService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Reply<pb::CreateKeyResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let m = self
            .kms
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
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateKeyResponse {
            key_metadata: Some(metadata(m)),
        }))
    }

    async fn describe_key(
        &self,
        request: Request<pb::DescribeKeyRequest>,
    ) -> Reply<pb::DescribeKeyResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let m = self
            .kms
            .describe_key(&caller, &r.key_id, &r.grant_tokens)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DescribeKeyResponse {
            key_metadata: Some(metadata(m)),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Reply<pb::ListKeysResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let page = self
            .kms
            .list_keys(&caller, r.limit, &r.marker)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListKeysResponse {
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
        }))
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Reply<pb::EnableKeyResponse> {
        let caller = self.caller(&request)?;
        self.kms
            .enable_key(&caller, &request.into_inner().key_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::EnableKeyResponse {}))
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Reply<pb::DisableKeyResponse> {
        let caller = self.caller(&request)?;
        self.kms
            .disable_key(&caller, &request.into_inner().key_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DisableKeyResponse {}))
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Reply<pb::ScheduleKeyDeletionResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let out = self
            .kms
            .schedule_key_deletion(&caller, &r.key_id, r.pending_window_in_days)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ScheduleKeyDeletionResponse {
            key_id: out.key_id,
            deletion_date: Some(ts(out.deletion_date_ms)),
            key_state: out.key_state,
            pending_window_in_days: out.pending_window_in_days,
        }))
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Reply<pb::CancelKeyDeletionResponse> {
        let caller = self.caller(&request)?;
        let key_id = self
            .kms
            .cancel_key_deletion(&caller, &request.into_inner().key_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CancelKeyDeletionResponse { key_id }))
    }

    async fn update_key_description(
        &self,
        request: Request<pb::UpdateKeyDescriptionRequest>,
    ) -> Reply<pb::UpdateKeyDescriptionResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        self.kms
            .update_key_description(&caller, &r.key_id, &r.description)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UpdateKeyDescriptionResponse {}))
    }

    async fn tag_resource(
        &self,
        request: Request<pb::TagResourceRequest>,
    ) -> Reply<pb::TagResourceResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        self.kms
            .tag_resource(&caller, &r.key_id, tags_in(r.tags))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TagResourceResponse {}))
    }

    async fn untag_resource(
        &self,
        request: Request<pb::UntagResourceRequest>,
    ) -> Reply<pb::UntagResourceResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        self.kms
            .untag_resource(&caller, &r.key_id, r.tag_keys)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UntagResourceResponse {}))
    }

    async fn list_resource_tags(
        &self,
        request: Request<pb::ListResourceTagsRequest>,
    ) -> Reply<pb::ListResourceTagsResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let page = self
            .kms
            .list_resource_tags(&caller, &r.key_id, r.limit, &r.marker)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListResourceTagsResponse {
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
        }))
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Reply<pb::CreateAliasResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        self.kms
            .create_alias(&caller, &r.alias_name, &r.target_key_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateAliasResponse {}))
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Reply<pb::UpdateAliasResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        self.kms
            .update_alias(&caller, &r.alias_name, &r.target_key_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UpdateAliasResponse {}))
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Reply<pb::DeleteAliasResponse> {
        let caller = self.caller(&request)?;
        self.kms
            .delete_alias(&caller, &request.into_inner().alias_name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteAliasResponse {}))
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Reply<pb::ListAliasesResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let page = self
            .kms
            .list_aliases(&caller, opt(r.key_id).as_deref(), r.limit, &r.marker)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: page.aliases.into_iter().map(alias_entry).collect(),
            truncated: page.next_marker.is_some(),
            next_marker: page.next_marker.unwrap_or_default(),
        }))
    }

    async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Reply<pb::EncryptResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let out = self
            .kms
            .encrypt(
                &caller,
                EncryptRequest {
                    key_id: r.key_id,
                    plaintext: Zeroizing::new(r.plaintext),
                    encryption_context: ctx(r.encryption_context),
                    grant_tokens: r.grant_tokens,
                    encryption_algorithm: opt(r.encryption_algorithm),
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::EncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id,
            encryption_algorithm: out.encryption_algorithm,
        }))
    }

    async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Reply<pb::DecryptResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let out = self
            .kms
            .decrypt(
                &caller,
                DecryptRequest {
                    ciphertext_blob: r.ciphertext_blob,
                    encryption_context: ctx(r.encryption_context),
                    grant_tokens: r.grant_tokens,
                    key_id: opt(r.key_id),
                    encryption_algorithm: opt(r.encryption_algorithm),
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DecryptResponse {
            key_id: out.key_id,
            plaintext: expose(out.plaintext),
            encryption_algorithm: out.encryption_algorithm,
            key_material_id: out.key_material_id,
        }))
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Reply<pb::ReEncryptResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let out = self
            .kms
            .re_encrypt(
                &caller,
                ReEncryptRequest {
                    ciphertext_blob: r.ciphertext_blob,
                    source_encryption_context: ctx(r.source_encryption_context),
                    source_key_id: opt(r.source_key_id),
                    destination_key_id: r.destination_key_id,
                    destination_encryption_context: ctx(r.destination_encryption_context),
                    source_encryption_algorithm: opt(r.source_encryption_algorithm),
                    destination_encryption_algorithm: opt(r.destination_encryption_algorithm),
                    grant_tokens: r.grant_tokens,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ReEncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            source_key_id: out.source_key_id,
            key_id: out.key_id,
            source_encryption_algorithm: out.source_encryption_algorithm,
            destination_encryption_algorithm: out.destination_encryption_algorithm,
            source_key_material_id: out.source_key_material_id,
            destination_key_material_id: out.destination_key_material_id,
        }))
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Reply<pb::GenerateDataKeyResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let out = self
            .kms
            .generate_data_key(
                &caller,
                GenerateDataKeyRequest {
                    key_id: r.key_id,
                    encryption_context: ctx(r.encryption_context),
                    number_of_bytes: r.number_of_bytes,
                    key_spec: opt(r.key_spec),
                    grant_tokens: r.grant_tokens,
                },
                true,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GenerateDataKeyResponse {
            ciphertext_blob: out.ciphertext_blob,
            plaintext: out.plaintext.map(expose).unwrap_or_default(),
            key_id: out.key_id,
            key_material_id: out.key_material_id,
        }))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Reply<pb::GenerateDataKeyWithoutPlaintextResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let out = self
            .kms
            .generate_data_key(
                &caller,
                GenerateDataKeyRequest {
                    key_id: r.key_id,
                    encryption_context: ctx(r.encryption_context),
                    number_of_bytes: r.number_of_bytes,
                    key_spec: opt(r.key_spec),
                    grant_tokens: r.grant_tokens,
                },
                false,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id,
            key_material_id: out.key_material_id,
        }))
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Reply<pb::GenerateRandomResponse> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let bytes = self
            .kms
            .generate_random(
                &caller,
                r.number_of_bytes,
                Some(r.custom_key_store_id.as_str()),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GenerateRandomResponse {
            plaintext: expose(bytes),
        }))
    }
}
