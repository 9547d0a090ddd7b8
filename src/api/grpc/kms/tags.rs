//! Tags on the gRPC door: TagResource, UntagResource, ListResourceTags.

use super::super::{opt, tags_in, FromMessage};
use crate::core::operation::Empty;
use crate::core::tags::{
    ListResourceTagsRequest, ListResourceTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::TagResourceRequest> for TagResourceRequest {
    fn from_message(m: pb::TagResourceRequest) -> Result<Self, KmsError> {
        Ok(TagResourceRequest {
            key_id: m.key_id,
            tags: tags_in(m.tags),
        })
    }
}

impl FromMessage<pb::UntagResourceRequest> for UntagResourceRequest {
    fn from_message(m: pb::UntagResourceRequest) -> Result<Self, KmsError> {
        Ok(UntagResourceRequest {
            key_id: m.key_id,
            tag_keys: m.tag_keys,
        })
    }
}

impl FromMessage<pb::ListResourceTagsRequest> for ListResourceTagsRequest {
    fn from_message(m: pb::ListResourceTagsRequest) -> Result<Self, KmsError> {
        Ok(ListResourceTagsRequest {
            key_id: m.key_id,
            limit: m.limit,
            marker: opt(m.marker),
        })
    }
}

impl From<Empty> for pb::TagResourceResponse {
    fn from(_: Empty) -> Self {
        pb::TagResourceResponse {}
    }
}

impl From<Empty> for pb::UntagResourceResponse {
    fn from(_: Empty) -> Self {
        pb::UntagResourceResponse {}
    }
}

impl From<ListResourceTagsResponse> for pb::ListResourceTagsResponse {
    fn from(page: ListResourceTagsResponse) -> Self {
        pb::ListResourceTagsResponse {
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
        }
    }
}
