//! Tags: TagResource, UntagResource, ListResourceTags.

use super::authz::{AuthzRequest, CtxValue};
use super::validate;
use super::{check_state, Kms, KmsError, StateClass};
use crate::identity::Caller;
use crate::store::Tag;

/// One page of ListResourceTags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResourceTagsResponse {
    pub tags: Vec<Tag>,
    pub next_marker: Option<String>,
}

impl Kms {
    /// TagResource: adds tags or overwrites the values of existing tag keys.
    pub async fn tag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tags: Vec<Tag>,
    ) -> Result<(), KmsError> {
        if tags.is_empty() {
            return Err(KmsError::validation("tags", "Member must not be null"));
        }
        validate::tags(&tags)?;
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        let mut authz = AuthzRequest::on_key("kms:TagResource", &resolved).with(
            "aws:TagKeys",
            CtxValue::Many(tags.iter().map(|t| t.key.clone()).collect()),
        );
        for t in &tags {
            authz = authz.with(
                format!("aws:RequestTag/{}", t.key),
                CtxValue::one(t.value.as_str()),
            );
        }
        self.authorize(caller, authz)?;
        check_state(&resolved.key, StateClass::NotPendingDeletion)?;
        let existing = &resolved.key.tags;
        let added = tags
            .iter()
            .filter(|t| !existing.iter().any(|e| e.key == t.key))
            .count();
        if existing.len() + added > validate::MAX_TAGS {
            return Err(KmsError::LimitExceeded(format!(
                "A key can have at most {} tags.",
                validate::MAX_TAGS
            )));
        }
        super::record::before_change().await?;
        self.store
            .put_tags(&resolved.key.record.key_id, &tags)
            .await?;
        self.refresh_key(&resolved.key.record.key_id).await?;
        Ok(())
    }

    /// UntagResource: removes tag keys; absent keys are ignored.
    pub async fn untag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tag_keys: Vec<String>,
    ) -> Result<(), KmsError> {
        if tag_keys.is_empty() {
            return Err(KmsError::validation("tagKeys", "Member must not be null"));
        }
        for k in &tag_keys {
            validate::tag_key(k)?;
        }
        let _guard = self.mutate.lock().await;
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:UntagResource", &resolved)
                .with("aws:TagKeys", CtxValue::Many(tag_keys.clone())),
        )?;
        check_state(&resolved.key, StateClass::NotPendingDeletion)?;
        super::record::before_change().await?;
        self.store
            .remove_tags(&resolved.key.record.key_id, &tag_keys)
            .await?;
        self.refresh_key(&resolved.key.record.key_id).await?;
        Ok(())
    }

    /// ListResourceTags, ordered by tag key, paginated.
    pub async fn list_resource_tags(
        &self,
        caller: &Caller,
        key_id: &str,
        limit: Option<i32>,
        marker: &str,
    ) -> Result<ListResourceTagsResponse, KmsError> {
        let limit = validate::limit(limit)?;
        let after = validate::decode_marker(marker)?;
        let resolved = self.resolve(caller, key_id, false)?;
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
