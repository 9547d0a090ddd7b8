//! Tags on the gRPC door: TagResource, UntagResource, ListResourceTags.

use super::super::convert::{each, from_message, to_message};
use crate::core::operation::Empty;
use crate::core::tags::{
    ListResourceTagsRequest, ListResourceTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use crate::pb;
use crate::store::Tag;

from_message!(pb::TagResourceRequest => TagResourceRequest { key_id, tags });
from_message!(pb::UntagResourceRequest => UntagResourceRequest { key_id, tag_keys });
from_message!(pb::ListResourceTagsRequest => ListResourceTagsRequest { key_id, page });

to_message!(Empty => pb::TagResourceResponse {});
to_message!(Empty => pb::UntagResourceResponse {});
to_message!(page: ListResourceTagsResponse => pb::ListResourceTagsResponse {
    truncated = page.next_marker.is_some(), tags => each, next_marker
});
to_message!(Tag => pb::Tag { tag_key: key, tag_value: value });
