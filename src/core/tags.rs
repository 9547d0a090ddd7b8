//! Tags: TagResource, UntagResource, ListResourceTags.

use serde_json::{json, Value};

use super::authz::{AuthzRequest, CtxValue};
use super::operation::{request_parameters, Empty, Page, Recorded, ResponseElements};
use super::validate;
use super::{check_state, CachedKey, Kms, KmsError, Resolved, StateClass};
use crate::identity::Caller;
use crate::store::Tag;

/// TagResource input.
#[derive(Debug, Clone, Default)]
pub struct TagResourceRequest {
    pub key_id: String,
    pub tags: Vec<Tag>,
}

/// UntagResource input.
#[derive(Debug, Clone, Default)]
pub struct UntagResourceRequest {
    pub key_id: String,
    pub tag_keys: Vec<String>,
}

/// ListResourceTags input.
#[derive(Debug, Clone, Default)]
pub struct ListResourceTagsRequest {
    pub key_id: String,
    /// `Limit` and `Marker`.
    pub page: Page,
}

/// One page of ListResourceTags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResourceTagsResponse {
    pub tags: Vec<Tag>,
    pub next_marker: Option<String>,
}

/// A tag as the audit trail records it: `{tagKey, tagValue}`.
impl Recorded for Tag {
    fn recorded(&self) -> Value {
        json!({"tagKey": self.key, "tagValue": self.value})
    }
}

/// Adds the tags a request sets to its authorization context: `aws:TagKeys` and one
/// `aws:RequestTag/<key>` each (nothing when there are none).
pub(crate) fn with_request_tags<'a>(mut authz: AuthzRequest<'a>, tags: &[Tag]) -> AuthzRequest<'a> {
    if tags.is_empty() {
        return authz;
    }
    authz = authz.with(
        "aws:TagKeys",
        CtxValue::Many(tags.iter().map(|t| t.key.clone()).collect()),
    );
    for t in tags {
        authz = authz.with(
            format!("aws:RequestTag/{}", t.key),
            CtxValue::one(t.value.as_str()),
        );
    }
    authz
}

request_parameters! {
    TagResourceRequest { key_id, tags };
    UntagResourceRequest { key_id, tag_keys };
    ListResourceTagsRequest { key_id, page };
}

impl ResponseElements for ListResourceTagsResponse {}

/// What TagResource or UntagResource changes on a key.
#[derive(Clone, Copy)]
enum TagChange<'a> {
    /// Tags added, or whose values are overwritten.
    Put(&'a [Tag]),
    /// Tag keys removed.
    Remove(&'a [String]),
}

impl TagChange<'_> {
    /// The change's authorization on `resolved`: its action with the tag condition keys.
    fn authz<'r>(&self, resolved: &'r Resolved) -> AuthzRequest<'r> {
        match *self {
            TagChange::Put(tags) => {
                with_request_tags(AuthzRequest::on_key("kms:TagResource", resolved), tags)
            }
            TagChange::Remove(tag_keys) => AuthzRequest::on_key("kms:UntagResource", resolved)
                .with("aws:TagKeys", CtxValue::Many(tag_keys.to_vec())),
        }
    }

    /// `key`'s cache entry with the change applied, as the store now holds it: tags ordered
    /// by tag key, the row one version on.
    fn applied_to(&self, key: &CachedKey) -> CachedKey {
        let mut next = key.clone();
        match *self {
            TagChange::Put(tags) => {
                for t in tags {
                    next.tags.retain(|e| e.key != t.key);
                    next.tags.push(t.clone());
                }
            }
            TagChange::Remove(tag_keys) => next.tags.retain(|e| !tag_keys.contains(&e.key)),
        }
        next.tags.sort_by(|a, b| a.key.cmp(&b.key));
        next.record.row_version += 1;
        next
    }
}

impl Kms {
    /// TagResource: adds tags or overwrites the values of existing tag keys.
    pub async fn tag_resource(
        &self,
        caller: &Caller,
        req: TagResourceRequest,
    ) -> Result<Empty, KmsError> {
        let tags = req.tags;
        if tags.is_empty() {
            return Err(KmsError::validation("tags", "Member must not be null"));
        }
        validate::tags(&tags)?;
        self.change_tags(caller, &req.key_id, TagChange::Put(&tags))
            .await
    }

    /// UntagResource: removes tag keys; absent keys are ignored.
    pub async fn untag_resource(
        &self,
        caller: &Caller,
        req: UntagResourceRequest,
    ) -> Result<Empty, KmsError> {
        let tag_keys = req.tag_keys;
        if tag_keys.is_empty() {
            return Err(KmsError::validation("tagKeys", "Member must not be null"));
        }
        for k in &tag_keys {
            validate::tag_key(k)?;
        }
        self.change_tags(caller, &req.key_id, TagChange::Remove(&tag_keys))
            .await
    }

    /// TagResource and UntagResource once their input is checked: under the key's change
    /// lock ([`Kms::change_key`]), the key (by id or ARN) is resolved, the change authorized
    /// with its tag condition keys and allowed by the key's state (and, for new tags, the tag
    /// limit); then the trail's before-change point, the store, and the key's cache entry.
    async fn change_tags(
        &self,
        caller: &Caller,
        key_id: &str,
        change: TagChange<'_>,
    ) -> Result<Empty, KmsError> {
        self.change_key(caller, key_id, move |resolved| async move {
            self.authorize(caller, change.authz(&resolved))?;
            let key = &resolved.key;
            check_state(key, StateClass::NotPendingDeletion)?;
            if let TagChange::Put(tags) = change {
                let added = tags
                    .iter()
                    .filter(|t| !key.tags.iter().any(|e| e.key == t.key))
                    .count();
                if key.tags.len() + added > validate::MAX_TAGS {
                    return Err(KmsError::LimitExceeded(format!(
                        "A key can have at most {} tags.",
                        validate::MAX_TAGS
                    ))
                    .into());
                }
            }
            super::record::before_change().await?;
            let key_id = &key.record.key_id;
            match change {
                TagChange::Put(tags) => self.store.put_tags(key_id, tags).await?,
                TagChange::Remove(tag_keys) => self.store.remove_tags(key_id, tag_keys).await?,
            }
            // The store raised the row's version; the cache follows without a reload (a
            // reload here could not tell our change from another node's).
            self.cache_put(change.applied_to(key));
            Ok(())
        })
        .await?;
        Ok(Empty)
    }

    /// ListResourceTags, ordered by tag key, paginated.
    pub async fn list_resource_tags(
        &self,
        caller: &Caller,
        req: ListResourceTagsRequest,
    ) -> Result<ListResourceTagsResponse, KmsError> {
        let (limit, after) = req.page.start()?;
        let resolved = self.resolve(caller, &req.key_id, false)?;
        self.authorize_key(caller, "kms:ListResourceTags", &resolved, None)?;
        check_state(&resolved.key, StateClass::Any)?;
        let mut tags = resolved.key.tags.clone();
        tags.sort_by(|a, b| a.key.cmp(&b.key));
        let (tags, next_marker) = validate::page(
            tags.into_iter().map(|t| (t.key.clone(), t)),
            after.as_deref(),
            limit,
        );
        Ok(ListResourceTagsResponse { tags, next_marker })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::RequestParameters;

    #[test]
    fn tag_parameters_are_camel_cased_and_empty_lists_left_out() {
        let req = TagResourceRequest {
            key_id: "k".into(),
            tags: vec![Tag {
                key: "team".into(),
                value: "blue".into(),
            }],
        };
        assert_eq!(
            req.request_parameters(),
            json!({"keyId": "k", "tags": [{"tagKey": "team", "tagValue": "blue"}]})
        );
        let untag = UntagResourceRequest {
            key_id: "k".into(),
            tag_keys: vec!["team".into()],
        };
        assert_eq!(
            untag.request_parameters(),
            json!({"keyId": "k", "tagKeys": ["team"]})
        );
        let list = ListResourceTagsRequest {
            key_id: "k".into(),
            page: Page {
                limit: Some(5),
                marker: None,
            },
        };
        assert_eq!(list.request_parameters(), json!({"keyId": "k", "limit": 5}));
        let none = TagResourceRequest::default().request_parameters();
        assert_eq!(none, json!({}));
    }
}
