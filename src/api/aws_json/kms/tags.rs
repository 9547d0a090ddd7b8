//! Tags on the AWS door: TagResource, UntagResource, ListResourceTags.
//!
//! A tag is the nested `{TagKey, TagValue}` structure, in requests and responses alike.

use serde::Deserialize;
use serde_json::Value;

use super::members::{from_json, to_json, Wire};
use crate::core::tags::{
    ListResourceTagsRequest, ListResourceTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use crate::store::Tag;

from_json! {
    TagResourceRequest { key_id, tags }
    UntagResourceRequest { key_id, tag_keys }
    ListResourceTagsRequest { key_id, page }
}

to_json! {
    ListResourceTagsResponse { tags, next_marker; "Truncated" = |r| r.next_marker.is_some() }
    Tag { key: "TagKey", value: "TagValue" }
}

/// One `{TagKey, TagValue}` of a request.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagIn {
    tag_key: Option<String>,
    tag_value: Option<String>,
}

/// A request's tags (absent members of a tag are empty).
impl Wire for Vec<Tag> {
    fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
        let tags: Vec<TagIn> = serde_json::from_value(value)?;
        Ok(tags
            .into_iter()
            .map(|t| Tag {
                key: t.tag_key.unwrap_or_default(),
                value: t.tag_value.unwrap_or_default(),
            })
            .collect())
    }
}
