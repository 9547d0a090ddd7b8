//! Grants (kms-spec 3.5): CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant, and grant tokens.
//!
//! The store is strongly consistent, so a grant is in force as soon as CreateGrant returns;
//! grant tokens are still accepted and validated (unknown or malformed ones are
//! InvalidGrantTokenException), as AWS clients send them.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use zeroize::Zeroizing;

use super::authz::{AuthzRequest, CtxValue};
use super::domain::GrantOperation;
use super::operation::{
    redacted_debug, request_parameters, response_elements, Empty, Page, Params, ResponseElements,
};
use super::validate;
use super::{Kms, KmsError, Resolved};
use crate::identity::arn::account_root_arn;
use crate::identity::Caller;
use crate::policy::PolicyType;
use crate::store::{GrantRecord, KeyState};

/// Most grants one key may carry.
pub const MAX_GRANTS_PER_KEY: usize = 50_000;
/// Most pairs in one constraint map.
pub const MAX_CONSTRAINT_PAIRS: usize = 8;
/// Longest constraint value.
pub const MAX_CONSTRAINT_VALUE: usize = 384;

const TOKEN_PREFIX: &str = "p11kms-gt1.";

type Ctx = BTreeMap<String, String>;

/// CreateGrant input.
#[derive(Debug, Clone, Default)]
pub struct CreateGrantRequest {
    pub key_id: String,
    pub grantee_principal: String,
    pub retiring_principal: Option<String>,
    pub operations: Vec<String>,
    pub constraint_equals: Option<BTreeMap<String, String>>,
    pub constraint_subset: Option<BTreeMap<String, String>>,
    pub grant_tokens: Vec<String>,
    pub name: Option<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

/// CreateGrant output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateGrantResponse {
    pub grant_token: String,
    pub grant_id: String,
}

/// A page of grants: the answer of ListGrants and ListRetirableGrants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListGrantsResponse {
    /// Grants with `key_id` as the key ARN.
    pub grants: Vec<GrantRecord>,
    pub next_marker: Option<String>,
}

/// ListGrants input.
#[derive(Debug, Clone, Default)]
pub struct ListGrantsRequest {
    pub key_id: String,
    /// Only this grant.
    pub grant_id: Option<String>,
    /// Only grants for this grantee.
    pub grantee_principal: Option<String>,
    /// `Limit` and `Marker`.
    pub page: Page,
}

/// ListRetirableGrants input.
#[derive(Debug, Clone, Default)]
pub struct ListRetirableGrantsRequest {
    pub retiring_principal: String,
    /// `Limit` and `Marker`.
    pub page: Page,
}

/// RetireGrant input: a grant token, or a key and a grant id.
#[derive(Clone, Default)]
pub struct RetireGrantRequest {
    /// A capability: never logged, never in `Debug`.
    pub grant_token: Option<Zeroizing<String>>,
    pub key_id: Option<String>,
    pub grant_id: Option<String>,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

redacted_debug!(RetireGrantRequest { grant_token = grant_token_given, key_id, grant_id, dry_run });

/// RevokeGrant input.
#[derive(Debug, Clone, Default)]
pub struct RevokeGrantRequest {
    pub key_id: String,
    pub grant_id: String,
    /// Check everything a real call checks, then answer DryRunOperationException.
    pub dry_run: bool,
}

request_parameters! {
    CreateGrantRequest {
        key_id,
        grantee_principal,
        retiring_principal,
        operations,
        constraints = grant_constraints,
        name,
        grant_tokens,
        dry_run,
    };
    ListGrantsRequest { key_id, grant_id, grantee_principal, page };
    ListRetirableGrantsRequest { retiring_principal, page };
    RetireGrantRequest { key_id, grant_id, grant_token = grant_token_given, dry_run };
    RevokeGrantRequest { key_id, grant_id, dry_run };
}

response_elements!(CreateGrantResponse { grant_id });

/// `{encryptionContextEquals, encryptionContextSubset}` as CloudTrail logs a grant's
/// constraints; left out when it has none.
fn grant_constraints(r: &CreateGrantRequest) -> Option<Value> {
    (r.constraint_equals.is_some() || r.constraint_subset.is_some()).then(|| {
        Params::new()
            .given("encryption_context_equals", &r.constraint_equals)
            .given("encryption_context_subset", &r.constraint_subset)
            .build()
    })
}

/// A grant token is a capability: the trail says that one was given, never which.
fn grant_token_given(r: &RetireGrantRequest) -> Option<&'static str> {
    r.grant_token.as_ref().map(|_| "(given)")
}

impl ResponseElements for ListGrantsResponse {}

/// `IssuingAccount` as AWS shows it: the account's root ARN. Grants stored before that rule
/// hold the bare account id, which is rendered as the ARN too.
fn issuing_account_arn(stored: &str, partition: &str) -> String {
    if stored.starts_with("arn:") {
        stored.to_string()
    } else {
        account_root_arn(partition, stored)
    }
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

/// A fresh grant token naming `grant_id` (tokens differ per call).
fn new_token(grant_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{grant_id}.{}", random_hex(16)))
}

/// The grant id a token names, if it is one of ours.
pub(crate) fn token_grant_id(token: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let rest = text.strip_prefix(TOKEN_PREFIX)?;
    let (id, nonce) = rest.split_once('.')?;
    (is_grant_id(id) && nonce.len() == 32).then(|| id.to_string())
}

fn is_grant_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_grant_id(id: &str) -> Result<(), KmsError> {
    if is_grant_id(id) {
        Ok(())
    } else {
        Err(KmsError::InvalidGrantId(format!(
            "The grant id {:?} is not valid.",
            id.chars().take(128).collect::<String>()
        )))
    }
}

fn check_constraint(member: &str, c: &Option<BTreeMap<String, String>>) -> Result<(), KmsError> {
    if let Some(map) = c {
        if map.len() > MAX_CONSTRAINT_PAIRS {
            return Err(KmsError::validation(
                member,
                &format!("Member must have at most {MAX_CONSTRAINT_PAIRS} pairs"),
            ));
        }
        if map
            .iter()
            .any(|(k, v)| k.is_empty() || v.chars().count() > MAX_CONSTRAINT_VALUE)
        {
            return Err(KmsError::validation(
                member,
                &format!(
                    "Keys must be non-empty and values at most {MAX_CONSTRAINT_VALUE} characters"
                ),
            ));
        }
    }
    Ok(())
}

fn check_principal(member: &str, p: &str) -> Result<(), KmsError> {
    let ok = crate::identity::arn::is_account_id(p)
        || crate::identity::Arn::parse(p)
            .map(|a| matches!(a.service, "iam" | "sts") && !a.account.is_empty())
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(KmsError::InvalidArn(format!(
            "{member} {:?} is not a valid principal ARN.",
            p.chars().take(256).collect::<String>()
        )))
    }
}

/// Does `caller` match `principal` (an account id or root ARN matches every principal of that
/// account; a role ARN matches its sessions)?
pub(crate) fn principal_matches(caller: &Caller, principal: &str) -> bool {
    if principal == caller.principal_arn {
        return true;
    }
    if principal == caller.account || principal == format!("arn:aws:iam::{}:root", caller.account) {
        return true;
    }
    caller.role_arn().is_some_and(|r| r == principal)
}

/// Whether a child grant's constraints are at least as strict as its parent's.
fn constraints_at_least(parent: &GrantRecord, child: &GrantRecord) -> bool {
    if let Some(pe) = &parent.constraint_equals {
        if child.constraint_equals.as_ref() != Some(pe) {
            return false;
        }
    }
    if let Some(ps) = &parent.constraint_subset {
        let child_has_all =
            |m: &BTreeMap<String, String>| ps.iter().all(|(k, v)| m.get(k) == Some(v));
        let ok = child.constraint_subset.as_ref().is_some_and(child_has_all)
            || child.constraint_equals.as_ref().is_some_and(child_has_all);
        if !ok {
            return false;
        }
    }
    true
}

impl Kms {
    /// Validates the grant tokens of a request: each must name a grant that exists.
    pub(crate) async fn check_grant_tokens(&self, tokens: &[String]) -> Result<(), KmsError> {
        validate::grant_token_shape(tokens)?;
        self.learn_grants(tokens).await?;
        for t in tokens {
            let ok = token_grant_id(t).is_some_and(|id| self.grant_by_id(&id).is_some());
            if !ok {
                return Err(KmsError::InvalidGrantToken(
                    "The grant token is not valid.".into(),
                ));
            }
        }
        Ok(())
    }

    /// Puts in the cache every grant the tokens name that this node has not seen yet: a
    /// grant made on another node moments ago may not have reached it, and grant tokens work
    /// at once on any node, as in AWS. Only an unknown grant costs a store read; a grant on
    /// a key this node has not seen yet (made on another node moments ago) brings the key
    /// with it.
    pub(crate) async fn learn_grants(&self, tokens: &[String]) -> Result<(), KmsError> {
        for id in tokens.iter().filter_map(|t| token_grant_id(t)) {
            if self.grant_by_id(&id).is_some() {
                continue;
            }
            let Some(g) = self.store.get_grant(&id).await? else {
                continue;
            };
            let known = crate::core::key_id::parse(&g.key_id)
                .ok()
                .is_some_and(|u| self.key_by_uuid(u.as_bytes()).is_some());
            if !known {
                self.reload_key(&g.key_id).await?;
            }
            self.cache_grant(g);
        }
        Ok(())
    }

    /// Adds a grant read from the store to its key's cached grants (if the key is cached).
    fn cache_grant(&self, g: GrantRecord) {
        let Some(key) = crate::core::key_id::parse(&g.key_id)
            .ok()
            .and_then(|u| self.key_by_uuid(u.as_bytes()))
        else {
            return;
        };
        if key.grants.iter().any(|x| x.grant_id == g.grant_id) {
            return;
        }
        let mut cached = (*key).clone();
        cached.grants.push(g);
        self.cache_write().put_key(std::sync::Arc::new(cached));
    }

    fn grant_by_id(&self, grant_id: &str) -> Option<GrantRecord> {
        self.cache_read().grant(grant_id).cloned()
    }

    /// CreateGrant: checks the input, authorizes (with the grant's operations, grantee and
    /// constraints as conditions), checks the key, then stores the grant, or returns the
    /// existing grant of the same name and properties.
    pub async fn create_grant(
        &self,
        caller: &Caller,
        req: CreateGrantRequest,
    ) -> Result<CreateGrantResponse, KmsError> {
        self.check_grant_tokens(&req.grant_tokens).await?;
        check_create_grant_input(&req)?;
        // Under the key's change lock: the grant count and the same-name check read the
        // key's grants, which another CreateGrant on the key may be changing.
        let first = self.resolve(caller, &req.key_id, false)?;
        let _guard = self.key_locks.key(&first.key.record.key_id).await;
        let resolved = self.resolve(caller, &req.key_id, false)?;
        let mut ops: Vec<String> = req.operations.clone();
        ops.sort();
        ops.dedup();
        let ctx = constraint_context(&req);
        let authz = create_grant_authz(&resolved, &req, &ops, &ctx);
        let decision = self.authorize(caller, authz)?;
        check_grant_key_state(&resolved)?;
        check_grant_operations_usable(&resolved, &ops)?;
        let record = self.new_grant_record(&resolved, &req, ops);
        if let Some(parent) = granting_grant(&decision, &resolved) {
            check_within_parent(caller, &resolved, parent, &record)?;
        }
        if let Some(existing) = same_named_grant(&resolved, &record) {
            super::end_dry_run(req.dry_run)?;
            return Ok(CreateGrantResponse {
                grant_token: new_token(&existing.grant_id),
                grant_id: existing.grant_id.clone(),
            });
        }
        if resolved.key.grants.len() >= MAX_GRANTS_PER_KEY {
            return Err(KmsError::LimitExceeded(format!(
                "A key can have at most {MAX_GRANTS_PER_KEY} grants."
            )));
        }
        super::end_dry_run(req.dry_run)?;
        super::record::before_change().await?;
        self.store.insert_grant(&record, MAX_GRANTS_PER_KEY).await?;
        let mut updated = (*resolved.key).clone();
        updated.grants.push(record.clone());
        self.cache_put(updated);
        Ok(CreateGrantResponse {
            grant_token: new_token(&record.grant_id),
            grant_id: record.grant_id,
        })
    }

    /// The grant CreateGrant would store (operations sorted and deduplicated).
    fn new_grant_record(
        &self,
        resolved: &Resolved,
        req: &CreateGrantRequest,
        operations: Vec<String>,
    ) -> GrantRecord {
        GrantRecord {
            grant_id: random_hex(32),
            key_id: resolved.key.record.key_id.clone(),
            name: req.name.clone(),
            grantee_principal: req.grantee_principal.clone(),
            retiring_principal: req.retiring_principal.clone(),
            operations,
            constraint_equals: req.constraint_equals.clone(),
            constraint_subset: req.constraint_subset.clone(),
            issuing_account: account_root_arn(
                &self.settings.partition,
                &resolved.key.record.account,
            ),
            created_at_ms: self.now_ms(),
        }
    }

    fn grants_page(
        &self,
        grants: Vec<GrantRecord>,
        page: &Page,
    ) -> Result<ListGrantsResponse, KmsError> {
        let (limit, after) = page.start()?;
        let items = grants.into_iter().map(|mut g| {
            let pos = format!("{}/{:020}/{}", g.key_id, g.created_at_ms, g.grant_id);
            g.issuing_account = issuing_account_arn(&g.issuing_account, &self.settings.partition);
            if let Some(k) = crate::core::key_id::parse(&g.key_id)
                .ok()
                .and_then(|u| self.cache_read().keys.get(&u).map(|k| k.arn.clone()))
            {
                g.key_id = k;
            }
            (pos, g)
        });
        let (grants, next_marker) = validate::page(items, after.as_deref(), limit);
        Ok(ListGrantsResponse {
            grants,
            next_marker,
        })
    }

    /// ListGrants: the grants of one key, optionally filtered by grant id or grantee.
    pub async fn list_grants(
        &self,
        caller: &Caller,
        req: ListGrantsRequest,
    ) -> Result<ListGrantsResponse, KmsError> {
        let grant_id = req.grant_id.as_deref();
        let grantee = req.grantee_principal.as_deref();
        if let Some(g) = grant_id {
            check_grant_id(g)?;
        }
        let resolved = self.resolve(caller, &req.key_id, false)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:ListGrants", &resolved)
                .with("kms:GrantIsForAWSResource", CtxValue::one("false")),
        )?;
        let grants: Vec<GrantRecord> = resolved
            .key
            .grants
            .iter()
            .filter(|g| grant_id.is_none_or(|id| g.grant_id == id))
            .filter(|g| grantee.is_none_or(|p| g.grantee_principal == p))
            .cloned()
            .collect();
        self.grants_page(grants, &req.page)
    }

    /// ListRetirableGrants: grants (on keys of any account) that name `retiring_principal`,
    /// which must be in the caller's account.
    pub async fn list_retirable_grants(
        &self,
        caller: &Caller,
        req: ListRetirableGrantsRequest,
    ) -> Result<ListGrantsResponse, KmsError> {
        let retiring_principal = req.retiring_principal.as_str();
        if retiring_principal.is_empty() {
            return Err(KmsError::validation(
                "retiringPrincipal",
                "Member must not be null",
            ));
        }
        check_principal("RetiringPrincipal", retiring_principal)?;
        self.authorize(caller, AuthzRequest::new("kms:ListRetirableGrants", "*"))?;
        let in_account = crate::identity::Arn::parse(retiring_principal)
            .map(|a| a.account == caller.account)
            .unwrap_or(retiring_principal == caller.account);
        if !in_account {
            return Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to list grants retirable by a principal of another account",
                caller.principal_arn
            )));
        }
        let grants: Vec<GrantRecord> = {
            let cache = self.cache_read();
            cache
                .keys
                .values()
                .flat_map(|k| k.grants.iter())
                .filter(|g| g.retiring_principal.as_deref() == Some(retiring_principal))
                .cloned()
                .collect()
        };
        self.grants_page(grants, &req.page)
    }

    fn find_grant(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_id: &str,
    ) -> Result<(Resolved, GrantRecord), KmsError> {
        check_grant_id(grant_id)?;
        let resolved = self.resolve(caller, key_id, false)?;
        let grant = resolved
            .key
            .grants
            .iter()
            .find(|g| g.grant_id == grant_id)
            .cloned()
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Grant {grant_id} does not exist on {}",
                    resolved.key.arn
                ))
            })?;
        Ok((resolved, grant))
    }

    async fn drop_grant(&self, resolved: &Resolved, grant_id: &str) -> Result<(), KmsError> {
        super::record::before_change().await?;
        self.store.delete_grant(grant_id).await?;
        let mut updated = (*resolved.key).clone();
        updated.grants.retain(|g| g.grant_id != grant_id);
        self.cache_put(updated);
        Ok(())
    }

    /// RetireGrant, by token or by key and grant id. Allowed for the retiring principal, the
    /// grantee when the grant includes RetireGrant, and the key's account (its root, or IAM
    /// principals it delegates kms:RetireGrant to). An explicit deny always wins. A
    /// `dry_run` checks all of that and answers DryRunOperationException.
    pub async fn retire_grant(
        &self,
        caller: &Caller,
        req: RetireGrantRequest,
    ) -> Result<Empty, KmsError> {
        let key_id = req.key_id.as_deref();
        if let Some(t) = req.grant_token.as_deref() {
            self.learn_grants(std::slice::from_ref(&t.to_string()))
                .await?;
        }
        let locate = || match (req.grant_token.as_deref(), key_id, req.grant_id.as_deref()) {
            (Some(t), _, _) => self.grant_of_token(caller, t, key_id),
            (None, Some(k), Some(g)) => self.find_grant(caller, k, g),
            _ => Err(KmsError::Validation(
                "Specify a GrantToken, or both KeyId and GrantId.".into(),
            )),
        };
        let (first, _) = locate()?;
        let _guard = self.key_locks.key(&first.key.record.key_id).await;
        // Found again under the lock: the grant may have gone meanwhile.
        let (resolved, grant) = locate()?;
        self.authorize_retire(caller, &resolved, &grant)?;
        super::end_dry_run(req.dry_run)?;
        self.drop_grant(&resolved, &grant.grant_id).await?;
        Ok(Empty)
    }

    /// The grant a token names, and its key (which must be `key_id` when one is given).
    fn grant_of_token(
        &self,
        caller: &Caller,
        token: &str,
        key_id: Option<&str>,
    ) -> Result<(Resolved, GrantRecord), KmsError> {
        validate::grant_token_shape(std::slice::from_ref(&token.to_string()))?;
        let invalid = || KmsError::InvalidGrantToken("The grant token is not valid.".into());
        let id = token_grant_id(token).ok_or_else(invalid)?;
        let grant = self.grant_by_id(&id).ok_or_else(invalid)?;
        let key = crate::core::key_id::parse(&grant.key_id)
            .ok()
            .and_then(|u| self.cache_read().keys.get(&u).cloned())
            .ok_or_else(|| KmsError::NotFound("The grant's key does not exist.".into()))?;
        if let Some(k) = key_id.filter(|k| !k.is_empty()) {
            let named = self.resolve(caller, k, false)?;
            if named.key.uuid != key.uuid {
                return Err(KmsError::InvalidGrantToken(
                    "The grant token does not belong to the given key.".into(),
                ));
            }
        }
        Ok((Resolved { key, alias: None }, grant))
    }

    /// RevokeGrant: key administrators, through policy. A `dry_run` checks that and answers
    /// DryRunOperationException.
    pub async fn revoke_grant(
        &self,
        caller: &Caller,
        req: RevokeGrantRequest,
    ) -> Result<Empty, KmsError> {
        let (first, _) = self.find_grant(caller, &req.key_id, &req.grant_id)?;
        let _guard = self.key_locks.key(&first.key.record.key_id).await;
        let (resolved, grant) = self.find_grant(caller, &req.key_id, &req.grant_id)?;
        self.authorize(
            caller,
            AuthzRequest::on_key("kms:RevokeGrant", &resolved)
                .with("kms:GrantIsForAWSResource", CtxValue::one("false")),
        )?;
        super::end_dry_run(req.dry_run)?;
        self.drop_grant(&resolved, &grant.grant_id).await?;
        Ok(Empty)
    }
}

/// CreateGrant's input checks, before any lookup.
fn check_create_grant_input(req: &CreateGrantRequest) -> Result<(), KmsError> {
    if req.grantee_principal.is_empty() {
        return Err(KmsError::validation(
            "granteePrincipal",
            "Member must not be null",
        ));
    }
    check_principal("GranteePrincipal", &req.grantee_principal)?;
    if let Some(r) = &req.retiring_principal {
        check_principal("RetiringPrincipal", r)?;
    }
    if req.operations.is_empty() {
        return Err(KmsError::validation(
            "operations",
            "Member must not be empty",
        ));
    }
    if req
        .operations
        .iter()
        .any(|op| op.parse::<GrantOperation>().is_err())
    {
        let all: Vec<&str> = GrantOperation::ALL.iter().map(|o| o.as_str()).collect();
        return Err(KmsError::validation(
            "operations",
            &format!("Member must satisfy enum value set: {all:?}"),
        ));
    }
    if let Some(n) = &req.name {
        check_grant_name(n)?;
    }
    check_constraint(
        "constraints.encryptionContextEquals",
        &req.constraint_equals,
    )?;
    check_constraint(
        "constraints.encryptionContextSubset",
        &req.constraint_subset,
    )
}

fn check_grant_name(n: &str) -> Result<(), KmsError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-');
    if n.is_empty() || n.len() > 256 || !n.bytes().all(allowed) {
        return Err(KmsError::validation(
            "name",
            "Member must be 1-256 characters of [a-zA-Z0-9:/_-]",
        ));
    }
    Ok(())
}

/// The constraint pairs: the request's encryption context for `kms:EncryptionContext:*`.
fn constraint_context(req: &CreateGrantRequest) -> Ctx {
    let mut ctx = BTreeMap::new();
    for m in [&req.constraint_subset, &req.constraint_equals]
        .into_iter()
        .flatten()
    {
        ctx.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    ctx
}

/// The authorization request of CreateGrant.
fn create_grant_authz<'a>(
    resolved: &'a Resolved,
    req: &'a CreateGrantRequest,
    ops: &[String],
    ctx: &'a Ctx,
) -> AuthzRequest<'a> {
    let mut constraint_types = Vec::new();
    if req.constraint_equals.is_some() {
        constraint_types.push("EncryptionContextEquals".to_string());
    }
    if req.constraint_subset.is_some() {
        constraint_types.push("EncryptionContextSubset".to_string());
    }
    let mut authz = AuthzRequest::on_key("kms:CreateGrant", resolved)
        .context(ctx)
        .with("kms:GrantOperations", CtxValue::Many(ops.to_vec()))
        .with(
            "kms:GranteePrincipal",
            CtxValue::one(&req.grantee_principal),
        )
        .with("kms:GrantIsForAWSResource", CtxValue::one("false"));
    if let Some(r) = &req.retiring_principal {
        authz = authz.with("kms:RetiringPrincipal", CtxValue::one(r));
    }
    if !constraint_types.is_empty() {
        authz = authz.with("kms:GrantConstraintType", CtxValue::Many(constraint_types));
    }
    authz
}

/// Grants can be made on enabled (or unavailable) keys only.
fn check_grant_key_state(resolved: &Resolved) -> Result<(), KmsError> {
    match resolved.key.record.state {
        KeyState::Enabled | KeyState::Unavailable => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled(format!(
            "{} is disabled.",
            resolved.key.arn
        ))),
        other => Err(KmsError::InvalidState(format!(
            "{} is {}.",
            resolved.key.arn,
            match other {
                KeyState::PendingDeletion => "pending deletion",
                KeyState::PendingImport => "pending import",
                _ => "not in a state that allows grants",
            }
        ))),
    }
}

/// Every operation of the grant must make sense for the key's spec and usage.
fn check_grant_operations_usable(resolved: &Resolved, ops: &[String]) -> Result<(), KmsError> {
    let record = &resolved.key.record;
    let specific = super::specs::grant_operations(record.key_spec, record.key_usage);
    let usable = |op: &String| {
        let Ok(op) = op.parse::<GrantOperation>() else {
            return false;
        };
        specific
            .is_some_and(|s| s.contains(&op) || super::specs::KEY_GRANT_OPERATIONS.contains(&op))
    };
    match ops.iter().find(|o| !usable(o)) {
        Some(bad) => Err(KmsError::Validation(format!(
            "Grant operation {bad} is not valid for a {} key.",
            record.key_spec
        ))),
        None => Ok(()),
    }
}

/// The grant that allowed this CreateGrant, when a grant (not a policy) decided it.
fn granting_grant<'a>(
    decision: &crate::policy::Decision,
    resolved: &'a Resolved,
) -> Option<&'a GrantRecord> {
    let first = decision.deciding.first()?;
    if first.policy_type != PolicyType::Grant {
        return None;
    }
    resolved
        .key
        .grants
        .iter()
        .find(|g| g.grant_id == first.policy_name)
}

/// A grant may only pass on what it has: a subset of its operations, constraints at least as
/// strict.
fn check_within_parent(
    caller: &Caller,
    resolved: &Resolved,
    parent: &GrantRecord,
    record: &GrantRecord,
) -> Result<(), KmsError> {
    let within = record
        .operations
        .iter()
        .all(|o| parent.operations.contains(o))
        && constraints_at_least(parent, record);
    if within {
        return Ok(());
    }
    Err(KmsError::AccessDenied(format!(
        "User: {} is not authorized to perform: kms:CreateGrant on resource: {} because a grant may only create grants with a subset of its operations and constraints at least as strict",
        caller.principal_arn, resolved.key.arn
    )))
}

/// Idempotency: a grant with the same name and properties is returned again.
fn same_named_grant<'a>(resolved: &'a Resolved, record: &GrantRecord) -> Option<&'a GrantRecord> {
    resolved.key.grants.iter().find(|g| {
        g.name.is_some()
            && g.name == record.name
            && g.grantee_principal == record.grantee_principal
            && g.retiring_principal == record.retiring_principal
            && g.operations == record.operations
            && g.constraint_equals == record.constraint_equals
            && g.constraint_subset == record.constraint_subset
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::RequestParameters;

    #[test]
    fn grant_tokens_are_never_in_params() {
        let r = RetireGrantRequest {
            grant_token: Some(Zeroizing::new("CAPABILITY-TOKEN".into())),
            dry_run: true,
            ..Default::default()
        };
        let p = r.request_parameters();
        assert_eq!(
            p,
            serde_json::json!({"grantToken": "(given)", "dryRun": true})
        );
        assert!(!format!("{r:?}").contains("CAPABILITY"));
        let c = CreateGrantRequest {
            key_id: "k".into(),
            operations: vec!["Decrypt".into()],
            constraint_subset: Some([("Dept".to_string(), "IT".to_string())].into()),
            grant_tokens: vec!["CAPABILITY-TOKEN".into()],
            ..Default::default()
        };
        assert_eq!(
            c.request_parameters(),
            serde_json::json!({
                "keyId": "k",
                "operations": ["Decrypt"],
                "constraints": {"encryptionContextSubset": {"Dept": "IT"}},
                "grantTokens": 1,
            })
        );
        let revoke = RevokeGrantRequest::default().request_parameters();
        assert!(revoke.get("dryRun").is_none(), "{revoke}");
    }

    #[test]
    fn an_unknown_operation_is_refused_with_the_models_list() {
        let req = CreateGrantRequest {
            key_id: "k".into(),
            grantee_principal: "arn:aws:iam::111122223333:role/r".into(),
            operations: vec!["Decrypt".into(), "Frobnicate".into()],
            ..Default::default()
        };
        let e = check_create_grant_input(&req).unwrap_err();
        let list = "[\"Decrypt\", \"Encrypt\", \"GenerateDataKey\", \"GenerateDataKeyWithoutPlaintext\", \"ReEncryptFrom\", \"ReEncryptTo\", \"Sign\", \"Verify\", \"GetPublicKey\", \"CreateGrant\", \"RetireGrant\", \"DescribeKey\", \"GenerateDataKeyPair\", \"GenerateDataKeyPairWithoutPlaintext\", \"GenerateMac\", \"VerifyMac\", \"DeriveSharedSecret\", \"Encapsulate\", \"Decapsulate\"]";
        let want = format!("Member must satisfy enum value set: {list}");
        assert_eq!(
            e.message(),
            KmsError::validation("operations", &want).message()
        );
    }

    #[test]
    fn tokens_name_their_grant_and_differ() {
        let id = random_hex(32);
        assert_eq!(id.len(), 64);
        let a = new_token(&id);
        let b = new_token(&id);
        assert_ne!(a, b);
        assert_eq!(token_grant_id(&a).as_deref(), Some(id.as_str()));
        assert_eq!(token_grant_id("garbage"), None);
        assert_eq!(
            token_grant_id(&URL_SAFE_NO_PAD.encode("p11kms-gt1.xyz.abc")),
            None
        );
    }

    fn grant(
        ops: &[&str],
        eq: Option<&[(&str, &str)]>,
        sub: Option<&[(&str, &str)]>,
    ) -> GrantRecord {
        let m = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        GrantRecord {
            grant_id: "g".into(),
            key_id: "k".into(),
            name: None,
            grantee_principal: "111122223333".into(),
            retiring_principal: None,
            operations: ops.iter().map(|s| s.to_string()).collect(),
            constraint_equals: eq.map(m),
            constraint_subset: sub.map(m),
            issuing_account: "111122223333".into(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn issuing_account_renders_as_the_root_arn() {
        assert_eq!(
            issuing_account_arn("111122223333", "aws"),
            "arn:aws:iam::111122223333:root"
        );
        assert_eq!(
            issuing_account_arn("111122223333", "aws-cn"),
            "arn:aws-cn:iam::111122223333:root"
        );
        assert_eq!(
            issuing_account_arn("arn:aws:iam::111122223333:root", "aws"),
            "arn:aws:iam::111122223333:root"
        );
    }

    #[test]
    fn child_constraints_must_be_as_strict() {
        let parent = grant(&["Decrypt"], None, Some(&[("a", "1")]));
        assert!(constraints_at_least(
            &parent,
            &grant(&["Decrypt"], None, Some(&[("a", "1"), ("b", "2")]))
        ));
        assert!(constraints_at_least(
            &parent,
            &grant(&["Decrypt"], Some(&[("a", "1")]), None)
        ));
        assert!(!constraints_at_least(
            &parent,
            &grant(&["Decrypt"], None, None)
        ));
        assert!(!constraints_at_least(
            &parent,
            &grant(&["Decrypt"], None, Some(&[("a", "2")]))
        ));
        let eq = grant(&["Decrypt"], Some(&[("a", "1")]), None);
        assert!(!constraints_at_least(
            &eq,
            &grant(&["Decrypt"], None, Some(&[("a", "1")]))
        ));
    }
}
