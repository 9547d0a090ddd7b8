//! Tags on the AWS door: TagResource, UntagResource, ListResourceTags.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, FromJson, ToJson};
use crate::core::tags::{
    ListResourceTagsRequest, ListResourceTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use crate::store::Tag;

/// One `{TagKey, TagValue}` of a request.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TagIn {
    tag_key: Option<String>,
    tag_value: Option<String>,
}

/// A request's tags (absent members are empty).
pub(super) fn tags_in(t: Option<Vec<TagIn>>) -> Vec<Tag> {
    t.unwrap_or_default()
        .into_iter()
        .map(|t| Tag {
            key: t.tag_key.unwrap_or_default(),
            value: t.tag_value.unwrap_or_default(),
        })
        .collect()
}

input!(TagsIn {
    key_id: Option<String>,
    tags: Option<Vec<TagIn>>,
    tag_keys: Option<Vec<String>>,
});

input!(TagsPageIn {
    key_id: Option<String>,
    limit: Option<i32>,
    marker: Option<String>,
});

impl FromJson for TagResourceRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: TagsIn = parse(body)?;
        Ok(TagResourceRequest {
            key_id: r.key_id.unwrap_or_default(),
            tags: tags_in(r.tags),
        })
    }
}

impl FromJson for UntagResourceRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: TagsIn = parse(body)?;
        Ok(UntagResourceRequest {
            key_id: r.key_id.unwrap_or_default(),
            tag_keys: r.tag_keys.unwrap_or_default(),
        })
    }
}

impl FromJson for ListResourceTagsRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: TagsPageIn = parse(body)?;
        Ok(ListResourceTagsRequest {
            key_id: r.key_id.unwrap_or_default(),
            limit: r.limit,
            marker: r.marker,
        })
    }
}

impl ToJson for ListResourceTagsResponse {
    fn to_json(self) -> Value {
        json!({
            "Tags": self.tags.into_iter().map(|t| json!({"TagKey": t.key, "TagValue": t.value})).collect::<Vec<_>>(),
            "Truncated": self.next_marker.is_some(),
            "NextMarker": self.next_marker,
        })
    }
}
