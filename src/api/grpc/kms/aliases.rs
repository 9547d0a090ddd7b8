//! Aliases on the gRPC door: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

use super::super::{alias_entry, opt, FromMessage};
use crate::core::aliases::{
    CreateAliasRequest, DeleteAliasRequest, ListAliasesRequest, ListAliasesResponse,
    UpdateAliasRequest,
};
use crate::core::operation::Empty;
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::CreateAliasRequest> for CreateAliasRequest {
    fn from_message(m: pb::CreateAliasRequest) -> Result<Self, KmsError> {
        Ok(CreateAliasRequest {
            alias_name: m.alias_name,
            target_key_id: m.target_key_id,
        })
    }
}

impl FromMessage<pb::UpdateAliasRequest> for UpdateAliasRequest {
    fn from_message(m: pb::UpdateAliasRequest) -> Result<Self, KmsError> {
        Ok(UpdateAliasRequest {
            alias_name: m.alias_name,
            target_key_id: m.target_key_id,
        })
    }
}

impl FromMessage<pb::DeleteAliasRequest> for DeleteAliasRequest {
    fn from_message(m: pb::DeleteAliasRequest) -> Result<Self, KmsError> {
        Ok(DeleteAliasRequest {
            alias_name: m.alias_name,
        })
    }
}

impl FromMessage<pb::ListAliasesRequest> for ListAliasesRequest {
    fn from_message(m: pb::ListAliasesRequest) -> Result<Self, KmsError> {
        Ok(ListAliasesRequest {
            key_id: opt(m.key_id),
            limit: m.limit,
            marker: opt(m.marker),
        })
    }
}

impl From<Empty> for pb::CreateAliasResponse {
    fn from(_: Empty) -> Self {
        pb::CreateAliasResponse {}
    }
}

impl From<Empty> for pb::UpdateAliasResponse {
    fn from(_: Empty) -> Self {
        pb::UpdateAliasResponse {}
    }
}

impl From<Empty> for pb::DeleteAliasResponse {
    fn from(_: Empty) -> Self {
        pb::DeleteAliasResponse {}
    }
}

impl From<ListAliasesResponse> for pb::ListAliasesResponse {
    fn from(page: ListAliasesResponse) -> Self {
        pb::ListAliasesResponse {
            aliases: page.aliases.into_iter().map(alias_entry).collect(),
            truncated: page.next_marker.is_some(),
            next_marker: page.next_marker.unwrap_or_default(),
        }
    }
}
