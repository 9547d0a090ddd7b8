//! Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.
//!
//! Alias operations need the action on the alias ARN and on the key (kms-spec 3.2); an alias
//! always lives in the account of the key it points at.

use super::authz::AuthzRequest;
use super::locks::{ChangeGuard, LockName};
use super::operation::{request_parameters, Empty, Page, ResponseElements};
use super::validate;
use super::{check_state, Kms, KmsError, Resolved, StateClass};
use crate::identity::Caller;
use crate::store::AliasRecord;

/// Most aliases one key may have.
pub const MAX_ALIASES_PER_KEY: usize = 50;

/// One ListAliases entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasListEntry {
    pub alias_name: String,
    pub alias_arn: String,
    /// Empty for a predefined `alias/aws/<service>` whose AWS managed key does not exist yet.
    pub target_key_id: String,
    /// `None` for a predefined alias without a key.
    pub creation_date_ms: Option<i64>,
    pub last_updated_date_ms: Option<i64>,
}

/// One page of ListAliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListAliasesResponse {
    pub aliases: Vec<AliasListEntry>,
    pub next_marker: Option<String>,
}

impl ResponseElements for ListAliasesResponse {}

/// CreateAlias input.
#[derive(Debug, Clone, Default)]
pub struct CreateAliasRequest {
    pub alias_name: String,
    pub target_key_id: String,
}

/// UpdateAlias input.
#[derive(Debug, Clone, Default)]
pub struct UpdateAliasRequest {
    pub alias_name: String,
    pub target_key_id: String,
}

/// DeleteAlias input.
#[derive(Debug, Clone, Default)]
pub struct DeleteAliasRequest {
    pub alias_name: String,
}

/// ListAliases input.
#[derive(Debug, Clone, Default)]
pub struct ListAliasesRequest {
    /// Only the aliases of this key.
    pub key_id: Option<String>,
    /// `Limit` and `Marker`.
    pub page: Page,
}

request_parameters! {
    CreateAliasRequest { alias_name, target_key_id };
    UpdateAliasRequest { alias_name, target_key_id };
    DeleteAliasRequest { alias_name };
    ListAliasesRequest { key_id, page };
}

impl Kms {
    fn authorize_alias(
        &self,
        caller: &Caller,
        action: &'static str,
        alias_name: &str,
    ) -> Result<(), KmsError> {
        let alias_arn = self.alias_arn(&caller.account, alias_name);
        self.authorize(caller, AuthzRequest::new(action, &alias_arn))
            .map(|_| ())
    }

    fn alias_target_in_own_account(
        &self,
        caller: &Caller,
        target_key_id: &str,
    ) -> Result<Resolved, KmsError> {
        let target = self.resolve(caller, target_key_id, false)?;
        if target.key.record.account != caller.account {
            return Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to point an alias at a key in another account",
                caller.principal_arn
            )));
        }
        Ok(target)
    }

    /// An alias of the caller's account, or NotFoundException.
    fn existing_alias(&self, caller: &Caller, alias_name: &str) -> Result<AliasRecord, KmsError> {
        self.cache_read()
            .aliases
            .get(&(caller.account.clone(), alias_name.to_string()))
            .cloned()
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Alias {} is not found.",
                    self.alias_arn(&caller.account, alias_name)
                ))
            })
    }

    /// Takes the change lock of the caller's alias `alias_name` (always before any key lock).
    async fn lock_alias(&self, caller: &Caller, alias_name: &str) -> ChangeGuard<'_> {
        let name = LockName::Alias(caller.account.clone(), alias_name.to_string());
        self.key_locks.lock(name).await
    }

    fn alias_count(&self, key_id: &str) -> usize {
        self.cache_read()
            .aliases
            .values()
            .filter(|a| a.key_id == key_id)
            .count()
    }

    /// CreateAlias.
    pub async fn create_alias(
        &self,
        caller: &Caller,
        req: CreateAliasRequest,
    ) -> Result<Empty, KmsError> {
        let (alias_name, target_key_id) = (req.alias_name.as_str(), req.target_key_id.as_str());
        validate::alias_name(alias_name)?;
        // The alias name's lock, then the target key's (its alias count and state). Across
        // nodes, the database's uniqueness of (account, name) answers AlreadyExists.
        let _name = self.lock_alias(caller, alias_name).await;
        let first = self.alias_target_in_own_account(caller, target_key_id)?;
        let _key = self.key_locks.key(&first.key.record.key_id).await;
        let target = self.alias_target_in_own_account(caller, target_key_id)?;
        self.authorize_alias(caller, "kms:CreateAlias", alias_name)?;
        self.authorize_key(caller, "kms:CreateAlias", &target, None)?;
        check_state(&target.key, StateClass::NotPendingDeletion)?;
        let exists = self
            .cache_read()
            .aliases
            .contains_key(&(caller.account.clone(), alias_name.to_string()));
        if exists {
            return Err(KmsError::AlreadyExists(format!(
                "An alias with the name {} already exists",
                self.alias_arn(&caller.account, alias_name)
            )));
        }
        if self.alias_count(&target.key.record.key_id) >= MAX_ALIASES_PER_KEY {
            return Err(KmsError::LimitExceeded(format!(
                "A key can have at most {MAX_ALIASES_PER_KEY} aliases."
            )));
        }
        let now = self.now_ms();
        let record = AliasRecord {
            account: caller.account.clone(),
            name: alias_name.to_string(),
            key_id: target.key.record.key_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        super::record::before_change().await?;
        self.store
            .create_alias(&record, MAX_ALIASES_PER_KEY)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::AlreadyExists(_) => KmsError::AlreadyExists(format!(
                    "An alias with the name {} already exists",
                    self.alias_arn(&caller.account, alias_name)
                )),
                other => other.into(),
            })?;
        self.cache_write().put_alias(record);
        Ok(Empty)
    }

    /// UpdateAlias: points an alias at another key of the same account.
    pub async fn update_alias(
        &self,
        caller: &Caller,
        req: UpdateAliasRequest,
    ) -> Result<Empty, KmsError> {
        let (alias_name, target_key_id) = (req.alias_name.as_str(), req.target_key_id.as_str());
        validate::alias_name_syntax(alias_name)?;
        let _name = self.lock_alias(caller, alias_name).await;
        let first = self.alias_target_in_own_account(caller, target_key_id)?;
        let _key = self.key_locks.key(&first.key.record.key_id).await;
        let current = self.existing_alias(caller, alias_name)?;
        let old = self.resolve(caller, &current.key_id, false)?;
        let new = self.alias_target_in_own_account(caller, target_key_id)?;
        self.authorize_alias(caller, "kms:UpdateAlias", alias_name)?;
        self.authorize_key(caller, "kms:UpdateAlias", &old, None)?;
        self.authorize_key(caller, "kms:UpdateAlias", &new, None)?;
        check_state(&new.key, StateClass::NotPendingDeletion)?;
        if new.key.record.key_usage != old.key.record.key_usage
            || new.key.record.key_spec != old.key.record.key_spec
        {
            return Err(KmsError::Validation(
                "The new target key must have the same key spec and key usage as the current one."
                    .into(),
            ));
        }
        if self.alias_count(&new.key.record.key_id) >= MAX_ALIASES_PER_KEY {
            return Err(KmsError::LimitExceeded(format!(
                "A key can have at most {MAX_ALIASES_PER_KEY} aliases."
            )));
        }
        let now = self.now_ms();
        super::record::before_change().await?;
        self.store
            .update_alias(
                &caller.account,
                alias_name,
                &new.key.record.key_id,
                now,
                MAX_ALIASES_PER_KEY,
            )
            .await?;
        let mut updated = current;
        updated.key_id = new.key.record.key_id.clone();
        updated.updated_at_ms = now;
        self.cache_write().put_alias(updated);
        Ok(Empty)
    }

    /// DeleteAlias.
    pub async fn delete_alias(
        &self,
        caller: &Caller,
        req: DeleteAliasRequest,
    ) -> Result<Empty, KmsError> {
        let alias_name = req.alias_name.as_str();
        validate::alias_name_syntax(alias_name)?;
        let _name = self.lock_alias(caller, alias_name).await;
        let key_ref = (caller.account.clone(), alias_name.to_string());
        let current = self.existing_alias(caller, alias_name)?;
        let target = self.resolve(caller, &current.key_id, false)?;
        self.authorize_alias(caller, "kms:DeleteAlias", alias_name)?;
        self.authorize_key(caller, "kms:DeleteAlias", &target, None)?;
        super::record::before_change().await?;
        self.store.delete_alias(&caller.account, alias_name).await?;
        self.cache_write().remove_alias(&key_ref);
        Ok(Empty)
    }

    /// ListAliases: the caller's account's aliases, optionally only those of one key.
    pub async fn list_aliases(
        &self,
        caller: &Caller,
        req: ListAliasesRequest,
    ) -> Result<ListAliasesResponse, KmsError> {
        let (limit, after) = req.page.start()?;
        let only_key = match req.key_id.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => Some(self.resolve(caller, k, false)?.key.record.key_id.clone()),
            None => None,
        };
        self.authorize(caller, AuthzRequest::new("kms:ListAliases", "*"))?;
        let predefined = if only_key.is_none() {
            self.unused_predefined_aliases(&caller.account)
        } else {
            Vec::new()
        };
        let cache = self.cache_read();
        let mut items: Vec<(String, AliasListEntry)> = cache
            .aliases
            .values()
            .filter(|a| a.account == caller.account)
            .filter(|a| only_key.as_ref().is_none_or(|k| &a.key_id == k))
            .map(|a| {
                (
                    a.name.clone(),
                    AliasListEntry {
                        alias_name: a.name.clone(),
                        alias_arn: self.alias_arn(&a.account, &a.name),
                        target_key_id: a.key_id.clone(),
                        creation_date_ms: Some(a.created_at_ms),
                        last_updated_date_ms: Some(a.updated_at_ms),
                    },
                )
            })
            .collect();
        drop(cache);
        // Predefined aliases without a key yet, as AWS lists them: name and ARN only.
        items.extend(predefined.into_iter().map(|name| {
            let entry = AliasListEntry {
                alias_arn: self.alias_arn(&caller.account, &name),
                alias_name: name.clone(),
                target_key_id: String::new(),
                creation_date_ms: None,
                last_updated_date_ms: None,
            };
            (name, entry)
        }));
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let items = items.into_iter();
        let (aliases, next_marker) = validate::page(items, after.as_deref(), limit);
        Ok(ListAliasesResponse {
            aliases,
            next_marker,
        })
    }
}
