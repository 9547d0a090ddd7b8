//! Compiling one account's `get-account-authorization-details` into the model: entity ARNs
//! checked, managed policies compiled once per kind, groups folded into their users, roles
//! with their trust policies, and the account root.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::super::arn::Arn;
use super::load::{compile, invalid, IdentityError};
use super::model::{AccountData, Directory, EntryKind, PrincipalEntry, RoleEntry};
use super::raw::{
    RawAttached, RawAuthDetails, RawBoundary, RawGroup, RawInline, RawManagedPolicy, RawRole,
    RawTag, RawUser,
};
use super::{NamedArcPolicy, DEFAULT_MAX_SESSION_DURATION, MAX_MAX_SESSION_DURATION};
use crate::policy::{Policy, PolicyKind};

/// What every entity of one account shares.
struct AccountCtx<'a> {
    account: &'a str,
    /// The authorization-details file (for messages).
    file: &'a Path,
    partition: String,
    guardrails: Arc<[NamedArcPolicy]>,
}

/// A group's inline policies, and its managed policies keyed by ARN.
type GroupPolicies = (Vec<NamedArcPolicy>, Vec<(String, NamedArcPolicy)>);

/// Compiles one account's authorization details (`raw`, read from `file`) into `dir`.
pub(super) fn load_account(
    dir: &mut Directory,
    account: &str,
    file: &Path,
    raw: &RawAuthDetails,
    guardrails: Arc<[NamedArcPolicy]>,
) -> Result<(), IdentityError> {
    let mut managed = ManagedPolicies::new(account, file, &raw.policies)?;
    let ctx = AccountCtx {
        account,
        file,
        partition: account_partition(file, account, raw)?,
        guardrails,
    };
    let groups = load_groups(&ctx, &mut managed, &raw.group_detail_list)?;
    let mut users = Vec::with_capacity(raw.user_detail_list.len());
    for u in &raw.user_detail_list {
        users.push(load_user(&ctx, &mut managed, &groups, u)?);
    }
    let mut roles = Vec::with_capacity(raw.role_detail_list.len());
    for r in &raw.role_detail_list {
        roles.push(load_role(&ctx, &mut managed, r)?);
    }
    insert_account(dir, ctx, users, roles)
}

/// First pass: every entity ARN is in this account and all agree on the partition (`aws`
/// when there are none).
fn account_partition(
    file: &Path,
    account: &str,
    raw: &RawAuthDetails,
) -> Result<String, IdentityError> {
    let mut partitions = Vec::new();
    for g in &raw.group_detail_list {
        partitions.push(check_entity_arn(
            file,
            account,
            &g.arn,
            "group",
            &g.path,
            &g.group_name,
        )?);
    }
    for u in &raw.user_detail_list {
        partitions.push(check_entity_arn(
            file,
            account,
            &u.arn,
            "user",
            &u.path,
            &u.user_name,
        )?);
    }
    for r in &raw.role_detail_list {
        partitions.push(check_entity_arn(
            file,
            account,
            &r.arn,
            "role",
            &r.path,
            &r.role_name,
        )?);
    }
    let partition = partitions.first().cloned().unwrap_or_else(|| "aws".into());
    if let Some(other) = partitions.iter().find(|p| **p != partition) {
        return Err(IdentityError::Format {
            path: file.to_path_buf(),
            message: format!("mixed ARN partitions '{partition}' and '{other}'"),
        });
    }
    Ok(partition)
}

/// The inline identity policy `p` of principal `who`, compiled.
fn compile_inline(
    ctx: &AccountCtx<'_>,
    who: &str,
    p: &RawInline,
) -> Result<Arc<Policy>, IdentityError> {
    let (name, doc) = (&p.policy_name, &p.policy_document);
    compile(ctx.account, who, name, doc, PolicyKind::Identity)
}

/// Groups: their compiled policies, by name.
fn load_groups<'r>(
    ctx: &AccountCtx<'_>,
    managed: &mut ManagedPolicies<'_>,
    raw: &'r [RawGroup],
) -> Result<HashMap<&'r str, GroupPolicies>, IdentityError> {
    let mut groups = HashMap::new();
    for g in raw {
        let who = &g.arn;
        let mut inline = Vec::new();
        for p in &g.group_policy_list {
            let policy = compile_inline(ctx, who, p)?;
            inline.push((format!("{}/{}", g.group_name, p.policy_name), policy));
        }
        let mut attached = Vec::new();
        for a in &g.attached_managed_policies {
            attached.push((
                a.policy_arn.clone(),
                managed.get(&a.policy_arn, PolicyKind::Identity, who)?,
            ));
        }
        if groups
            .insert(g.group_name.as_str(), (inline, attached))
            .is_some()
        {
            return Err(IdentityError::Format {
                path: ctx.file.to_path_buf(),
                message: format!("group {} is listed more than once", g.group_name),
            });
        }
    }
    Ok(groups)
}

/// A user: inline, then managed, then its groups' policies (managed ones once), and its
/// boundary.
fn load_user(
    ctx: &AccountCtx<'_>,
    managed: &mut ManagedPolicies<'_>,
    groups: &HashMap<&str, GroupPolicies>,
    u: &RawUser,
) -> Result<Arc<PrincipalEntry>, IdentityError> {
    let (account, who) = (ctx.account, &u.arn);
    let (mut policies, mut seen) = own_policies(
        ctx,
        managed,
        who,
        &u.user_policy_list,
        &u.attached_managed_policies,
    )?;
    for gname in &u.group_list {
        let Some((inline, attached)) = groups.get(gname.as_str()) else {
            return Err(invalid(format!(
                "account {account}: {who}: group '{gname}' is not in GroupDetailList"
            )));
        };
        policies.extend(inline.iter().cloned());
        for (arn, p) in attached {
            push_unique(&mut policies, &mut seen, arn, p.clone());
        }
    }
    let permission_boundary = boundary(managed, u.permissions_boundary.as_ref(), who)?;
    Ok(Arc::new(PrincipalEntry {
        arn: u.arn.clone(),
        account: account.into(),
        partition: ctx.partition.clone(),
        kind: EntryKind::User,
        name: u.user_name.clone(),
        id: u.user_id.clone(),
        path: u.path.clone(),
        tags: tags_of(&u.tags),
        identity_policies: policies,
        permission_boundary,
        guardrails: Arc::clone(&ctx.guardrails),
    }))
}

/// A user's or role's own identity policies: inline, then attached managed ones (each ARN
/// once); also the managed ARNs taken, so a user's groups do not add them again.
fn own_policies(
    ctx: &AccountCtx<'_>,
    managed: &mut ManagedPolicies<'_>,
    who: &str,
    inline: &[RawInline],
    attached: &[RawAttached],
) -> Result<(Vec<NamedArcPolicy>, HashSet<String>), IdentityError> {
    let mut policies = Vec::new();
    let mut seen = HashSet::new();
    for p in inline {
        let policy = compile_inline(ctx, who, p)?;
        policies.push((p.policy_name.clone(), policy));
    }
    for a in attached {
        let p = managed.get(&a.policy_arn, PolicyKind::Identity, who)?;
        push_unique(&mut policies, &mut seen, &a.policy_arn, p);
    }
    Ok((policies, seen))
}

/// A role: its trust policy (key-policy semantics), inline then managed policies, boundary
/// and session duration limit.
fn load_role(
    ctx: &AccountCtx<'_>,
    managed: &mut ManagedPolicies<'_>,
    r: &RawRole,
) -> Result<Arc<RoleEntry>, IdentityError> {
    let (account, who) = (ctx.account, &r.arn);
    let trust_policy = compile(
        account,
        who,
        "AssumeRolePolicyDocument",
        &r.assume_role_policy_document,
        PolicyKind::Key,
    )?;
    let (policies, _) = own_policies(
        ctx,
        managed,
        who,
        &r.role_policy_list,
        &r.attached_managed_policies,
    )?;
    let permission_boundary = boundary(managed, r.permissions_boundary.as_ref(), who)?;
    let max_session_duration = r
        .max_session_duration
        .unwrap_or(DEFAULT_MAX_SESSION_DURATION);
    if !(DEFAULT_MAX_SESSION_DURATION..=MAX_MAX_SESSION_DURATION).contains(&max_session_duration) {
        return Err(invalid(format!(
            "account {account}: {who}: MaxSessionDuration {max_session_duration} is outside 3600..=43200"
        )));
    }
    let principal = Arc::new(PrincipalEntry {
        arn: r.arn.clone(),
        account: account.into(),
        partition: ctx.partition.clone(),
        kind: EntryKind::Role,
        name: r.role_name.clone(),
        id: r.role_id.clone(),
        path: r.path.clone(),
        tags: tags_of(&r.tags),
        identity_policies: policies,
        permission_boundary,
        guardrails: Arc::clone(&ctx.guardrails),
    });
    Ok(Arc::new(RoleEntry {
        arn: r.arn.clone(),
        name: r.role_name.clone(),
        role_id: r.role_id.clone(),
        account: account.into(),
        partition: ctx.partition.clone(),
        trust_policy,
        max_session_duration,
        principal,
    }))
}

/// Adds the account root, the users and the roles to `dir`; a user or role listed twice
/// fails.
fn insert_account(
    dir: &mut Directory,
    ctx: AccountCtx<'_>,
    users: Vec<Arc<PrincipalEntry>>,
    roles: Vec<Arc<RoleEntry>>,
) -> Result<(), IdentityError> {
    let (account, partition) = (ctx.account, ctx.partition);
    let root_arn = format!("arn:{partition}:iam::{account}:root");
    let root = Arc::new(PrincipalEntry {
        arn: root_arn.clone(),
        account: account.into(),
        partition: partition.clone(),
        kind: EntryKind::AccountRoot,
        name: account.into(),
        id: account.into(),
        path: "/".into(),
        tags: Vec::new(),
        identity_policies: Vec::new(),
        permission_boundary: None,
        guardrails: ctx.guardrails,
    });
    dir.principals.insert(root_arn, Arc::clone(&root));
    let listed_twice = |what: &str, name: &str| IdentityError::Format {
        path: ctx.file.to_path_buf(),
        message: format!("{what} {name} is listed more than once"),
    };
    for u in users {
        if dir
            .principals
            .insert(u.arn.clone(), Arc::clone(&u))
            .is_some()
        {
            return Err(listed_twice("user", &u.arn));
        }
    }
    let mut roles_by_name = HashMap::new();
    for r in roles {
        if roles_by_name
            .insert(r.name.clone(), Arc::clone(&r))
            .is_some()
            || dir.roles.insert(r.arn.clone(), Arc::clone(&r)).is_some()
        {
            return Err(listed_twice("role", &r.name));
        }
    }
    dir.accounts.insert(
        account.to_string(),
        AccountData {
            partition,
            root,
            roles_by_name,
        },
    );
    Ok(())
}

/// Managed policies of one file, compiled on first reference per kind.
struct ManagedPolicies<'a> {
    account: &'a str,
    by_arn: HashMap<&'a str, &'a RawManagedPolicy>,
    compiled: HashMap<(&'a str, PolicyKind), Arc<Policy>>,
}

impl<'a> ManagedPolicies<'a> {
    fn new(
        account: &'a str,
        path: &Path,
        raw: &'a [RawManagedPolicy],
    ) -> Result<Self, IdentityError> {
        let mut by_arn = HashMap::new();
        for p in raw {
            if by_arn.insert(p.arn.as_str(), p).is_some() {
                return Err(IdentityError::Format {
                    path: path.to_path_buf(),
                    message: format!("managed policy {} is listed more than once", p.arn),
                });
            }
        }
        Ok(ManagedPolicies {
            account,
            by_arn,
            compiled: HashMap::new(),
        })
    }

    /// The managed policy `arn`, compiled as `kind`, named by its PolicyName.
    fn get(
        &mut self,
        arn: &str,
        kind: PolicyKind,
        principal: &str,
    ) -> Result<NamedArcPolicy, IdentityError> {
        let Some(&raw) = self.by_arn.get(arn) else {
            return Err(invalid(format!(
                "account {}: {principal}: managed policy {arn} is not in the file's Policies list (AWS-managed policies must be included too)",
                self.account
            )));
        };
        let name = raw.policy_name.clone();
        if let Some(p) = self.compiled.get(&(raw.arn.as_str(), kind)) {
            return Ok((name, Arc::clone(p)));
        }
        let version = raw
            .policy_version_list
            .iter()
            .find(|v| raw.default_version_id.as_deref() == Some(v.version_id.as_str()))
            .or_else(|| {
                raw.policy_version_list
                    .iter()
                    .find(|v| v.is_default_version)
            })
            .ok_or_else(|| IdentityError::Policy {
                account: self.account.into(),
                principal: principal.into(),
                policy: format!("{} ({arn})", raw.policy_name),
                message: "no default version in PolicyVersionList".into(),
            })?;
        let policy = compile(
            self.account,
            principal,
            &format!("{} ({arn})", raw.policy_name),
            &version.document,
            kind,
        )?;
        self.compiled
            .insert((raw.arn.as_str(), kind), Arc::clone(&policy));
        Ok((name, policy))
    }
}

/// Checks an entity ARN: IAM, this account, `<type>/<path><name>`.
fn check_entity_arn(
    file: &Path,
    account: &str,
    arn: &str,
    kind: &str,
    path: &str,
    name: &str,
) -> Result<String, IdentityError> {
    let ferr = |message: String| IdentityError::Format {
        path: file.to_path_buf(),
        message,
    };
    let parsed = Arn::parse(arn).map_err(|e| ferr(format!("{kind} {name}: {e}")))?;
    if parsed.service != "iam" || !parsed.region.is_empty() {
        return Err(ferr(format!("{kind} {name}: {arn} is not an IAM ARN")));
    }
    if parsed.account != account {
        return Err(ferr(format!(
            "{kind} {name}: {arn} is not in account {account}"
        )));
    }
    let expected = format!("{kind}{path}{name}");
    if parsed.resource != expected {
        return Err(ferr(format!(
            "{kind} {name}: ARN {arn} does not match Path '{path}' and name '{name}'"
        )));
    }
    Ok(parsed.partition.to_string())
}

/// A raw tag list as key/value pairs.
fn tags_of(raw: &[RawTag]) -> Vec<(String, String)> {
    raw.iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect()
}

/// Appends `p` unless a policy with ARN `arn` is already in the list.
fn push_unique(
    list: &mut Vec<NamedArcPolicy>,
    seen: &mut HashSet<String>,
    arn: &str,
    p: NamedArcPolicy,
) {
    if seen.insert(arn.to_string()) {
        list.push(p);
    }
}

/// The permission boundary named by `raw`, compiled.
fn boundary(
    managed: &mut ManagedPolicies<'_>,
    raw: Option<&RawBoundary>,
    principal: &str,
) -> Result<Option<NamedArcPolicy>, IdentityError> {
    let Some(b) = raw else { return Ok(None) };
    if let Some(t) = &b.permissions_boundary_type {
        if t != "Policy" && t != "PermissionsBoundaryPolicy" {
            return Err(invalid(format!(
                "account {}: {principal}: unsupported PermissionsBoundaryType '{t}'",
                managed.account
            )));
        }
    }
    managed
        .get(
            &b.permissions_boundary_arn,
            PolicyKind::PermissionBoundary,
            principal,
        )
        .map(Some)
}
