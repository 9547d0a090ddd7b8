//! Grants on the gRPC door: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant.

use zeroize::Zeroizing;

use super::super::{grant_entry, opt, FromMessage};
use crate::core::grants::{
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListRetirableGrantsRequest, RetireGrantRequest, RevokeGrantRequest,
};
use crate::core::operation::Empty;
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::CreateGrantRequest> for CreateGrantRequest {
    fn from_message(m: pb::CreateGrantRequest) -> Result<Self, KmsError> {
        let c = m.constraints.unwrap_or_default();
        Ok(CreateGrantRequest {
            key_id: m.key_id,
            grantee_principal: m.grantee_principal,
            retiring_principal: opt(m.retiring_principal),
            operations: m.operations,
            constraint_equals: c.encryption_context_equals.map(|m| m.pairs),
            constraint_subset: c.encryption_context_subset.map(|m| m.pairs),
            grant_tokens: m.grant_tokens,
            name: opt(m.name),
            dry_run: m.dry_run,
        })
    }
}

impl From<CreateGrantResponse> for pb::CreateGrantResponse {
    fn from(r: CreateGrantResponse) -> Self {
        pb::CreateGrantResponse {
            grant_token: r.grant_token,
            grant_id: r.grant_id,
        }
    }
}

impl FromMessage<pb::ListGrantsRequest> for ListGrantsRequest {
    fn from_message(m: pb::ListGrantsRequest) -> Result<Self, KmsError> {
        Ok(ListGrantsRequest {
            key_id: m.key_id,
            grant_id: opt(m.grant_id),
            grantee_principal: opt(m.grantee_principal),
            limit: m.limit,
            marker: opt(m.marker),
        })
    }
}

impl FromMessage<pb::ListRetirableGrantsRequest> for ListRetirableGrantsRequest {
    fn from_message(m: pb::ListRetirableGrantsRequest) -> Result<Self, KmsError> {
        Ok(ListRetirableGrantsRequest {
            retiring_principal: m.retiring_principal,
            limit: m.limit,
            marker: opt(m.marker),
        })
    }
}

impl From<ListGrantsResponse> for pb::ListGrantsResponse {
    fn from(page: ListGrantsResponse) -> Self {
        pb::ListGrantsResponse {
            grants: page.grants.into_iter().map(grant_entry).collect(),
            truncated: page.next_marker.is_some(),
            next_marker: page.next_marker.unwrap_or_default(),
        }
    }
}

impl FromMessage<pb::RetireGrantRequest> for RetireGrantRequest {
    fn from_message(m: pb::RetireGrantRequest) -> Result<Self, KmsError> {
        Ok(RetireGrantRequest {
            grant_token: opt(m.grant_token).map(Zeroizing::new),
            key_id: opt(m.key_id),
            grant_id: opt(m.grant_id),
            dry_run: m.dry_run,
        })
    }
}

impl From<Empty> for pb::RetireGrantResponse {
    fn from(_: Empty) -> Self {
        pb::RetireGrantResponse {}
    }
}

impl FromMessage<pb::RevokeGrantRequest> for RevokeGrantRequest {
    fn from_message(m: pb::RevokeGrantRequest) -> Result<Self, KmsError> {
        Ok(RevokeGrantRequest {
            key_id: m.key_id,
            grant_id: m.grant_id,
            dry_run: m.dry_run,
        })
    }
}

impl From<Empty> for pb::RevokeGrantResponse {
    fn from(_: Empty) -> Self {
        pb::RevokeGrantResponse {}
    }
}
