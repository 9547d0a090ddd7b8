//! The model: compiled users, roles, account roots and access keys with everything
//! authorization needs, the [`Directory`] that holds them, and its request-path lookups.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::super::arn::{is_account_id, Arn};
use super::super::certs::{CertBinding, CertificateDirectory};
use super::NamedArcPolicy;
use crate::policy::{NamedPolicy, Policy, RequestContext};
use crate::redact::redacted_debug;

/// What kind of directory entry a [`PrincipalEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An IAM user.
    User,
    /// An IAM role (callers are its sessions).
    Role,
    /// An account root (`arn:aws:iam::<acct>:root`).
    AccountRoot,
}

/// `aws:PrincipalType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalType {
    /// An IAM user.
    User,
    /// A role session.
    AssumedRole,
    /// An account root.
    Account,
}

impl PrincipalType {
    /// The `aws:PrincipalType` value: `User`, `AssumedRole` or `Account`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "User",
            PrincipalType::AssumedRole => "AssumedRole",
            PrincipalType::Account => "Account",
        }
    }
}

/// A user, role or account root with everything authorization needs, computed at load.
pub struct PrincipalEntry {
    /// User ARN, role ARN or account-root ARN.
    pub arn: String,
    /// The account id.
    pub account: String,
    /// The ARN partition (`aws`).
    pub partition: String,
    /// User, role or account root.
    pub kind: EntryKind,
    /// UserName, RoleName, or the account id for a root.
    pub name: String,
    /// UserId (`AIDA...`), RoleId (`AROA...`), or the account id for a root.
    pub id: String,
    /// IAM path (`/`).
    pub path: String,
    /// User or role tags.
    pub tags: Vec<(String, String)>,
    /// Identity policies in evaluation order: user inline, user managed, then per group
    /// (`<GroupName>/<PolicyName>` for group inline, the policy name for managed); for a role
    /// its inline then managed policies. Managed policies attached twice appear once.
    pub identity_policies: Vec<NamedArcPolicy>,
    /// The permission boundary, named by its policy name.
    pub permission_boundary: Option<NamedArcPolicy>,
    /// The account's guardrails, named by file stem.
    pub guardrails: Arc<[NamedArcPolicy]>,
}

impl fmt::Debug for PrincipalEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalEntry")
            .field("arn", &self.arn)
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("tags", &self.tags)
            .field("identity_policies", &policy_names(&self.identity_policies))
            .field(
                "permission_boundary",
                &self.permission_boundary.as_ref().map(|(n, _)| n),
            )
            .field("guardrails", &policy_names(&self.guardrails))
            .finish()
    }
}

/// The names of a policy list (for `Debug`).
pub(super) fn policy_names(list: &[NamedArcPolicy]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

/// Borrows a list of named policies as the evaluator's [`NamedPolicy`] values.
pub fn named_policies(list: &[NamedArcPolicy]) -> Vec<NamedPolicy<'_>> {
    list.iter()
        .map(|(name, policy)| NamedPolicy {
            name,
            policy: policy.as_ref(),
        })
        .collect()
}

/// A role, as AssumeRole needs it.
pub struct RoleEntry {
    /// Role ARN (with path).
    pub arn: String,
    /// RoleName.
    pub name: String,
    /// RoleId (`AROA...`).
    pub role_id: String,
    /// The account id.
    pub account: String,
    /// The ARN partition.
    pub partition: String,
    /// The trust policy (`AssumeRolePolicyDocument`), compiled with key-policy semantics.
    pub trust_policy: Arc<Policy>,
    /// Longest session AssumeRole may grant, in seconds.
    pub max_session_duration: u32,
    /// The identity view of the role's sessions.
    pub principal: Arc<PrincipalEntry>,
}

redacted_debug!(RoleEntry {
    arn,
    role_id,
    max_session_duration,
    principal
});

impl RoleEntry {
    /// The trust policy as an evaluator input (reported as `trust-policy`).
    pub fn trust_named(&self) -> NamedPolicy<'_> {
        NamedPolicy {
            name: "trust-policy",
            policy: &self.trust_policy,
        }
    }

    /// A minimal role for unit tests elsewhere in the crate.
    #[cfg(test)]
    pub(crate) fn for_tests(
        arn: &str,
        name: &str,
        role_id: &str,
        account: &str,
        max_session_duration: u32,
    ) -> RoleEntry {
        let trust = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole","Resource":"*"}]}"#,
            crate::policy::PolicyKind::Key,
        )
        .expect("static trust policy");
        RoleEntry {
            arn: arn.into(),
            name: name.into(),
            role_id: role_id.into(),
            account: account.into(),
            partition: "aws".into(),
            trust_policy: Arc::new(trust),
            max_session_duration,
            principal: Arc::new(PrincipalEntry {
                arn: arn.into(),
                account: account.into(),
                partition: "aws".into(),
                kind: EntryKind::Role,
                name: name.into(),
                id: role_id.into(),
                path: "/".into(),
                tags: Vec::new(),
                identity_policies: Vec::new(),
                permission_boundary: None,
                guardrails: Arc::from(Vec::new()),
            }),
        }
    }
}

/// A long-term access key.
pub struct AccessKeyEntry {
    /// The access key id (`AKIA...`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// The owning principal (a user, or an account root).
    pub principal_arn: String,
    /// The owning account.
    pub account: String,
}

redacted_debug!(AccessKeyEntry {
    access_key_id,
    secret_access_key: redacted,
    principal_arn
});

/// A caller ARN resolved against the directory: a user, an account root, or a role session.
///
/// Cheap: an `Arc` to the precomputed entry, plus the session ARN for role sessions.
#[derive(Clone)]
pub struct ResolvedPrincipal {
    entry: Arc<PrincipalEntry>,
    session_arn: Option<Box<str>>,
}

impl fmt::Debug for ResolvedPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedPrincipal")
            .field("principal_arn", &self.principal_arn())
            .field("principal_type", &self.principal_type())
            .finish()
    }
}

impl ResolvedPrincipal {
    /// The caller ARN: user ARN, account-root ARN, or the assumed-role session ARN.
    pub fn principal_arn(&self) -> &str {
        self.session_arn.as_deref().unwrap_or(&self.entry.arn)
    }

    /// `aws:PrincipalArn`: the caller ARN, except for a session, where it is the role ARN.
    pub fn context_principal_arn(&self) -> &str {
        &self.entry.arn
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.entry.account
    }

    /// `aws:PrincipalType`.
    pub fn principal_type(&self) -> PrincipalType {
        match self.entry.kind {
            EntryKind::User => PrincipalType::User,
            EntryKind::Role => PrincipalType::AssumedRole,
            EntryKind::AccountRoot => PrincipalType::Account,
        }
    }

    /// `aws:username` (IAM users only).
    pub fn username(&self) -> Option<&str> {
        (self.entry.kind == EntryKind::User).then_some(self.entry.name.as_str())
    }

    /// `aws:userid`: the UserId, `<RoleId>:<session>` for a session, the account id for a
    /// root.
    pub fn userid(&self) -> Cow<'_, str> {
        match self.session_name() {
            Some(s) => Cow::Owned(format!("{}:{s}", self.entry.id)),
            None => Cow::Borrowed(&self.entry.id),
        }
    }

    /// For a session: the role ARN (what role principals in policies match).
    pub fn role_arn(&self) -> Option<&str> {
        self.session_arn.as_ref().map(|_| self.entry.arn.as_str())
    }

    /// For a session: the session name.
    pub fn session_name(&self) -> Option<&str> {
        self.session_arn
            .as_deref()
            .and_then(|a| a.rsplit_once('/'))
            .map(|(_, s)| s)
    }

    /// User or role tags (session tags are layered on by the caller).
    pub fn tags(&self) -> &[(String, String)] {
        &self.entry.tags
    }

    /// Identity policies (user + groups, or the role's).
    pub fn identity_policies(&self) -> &[NamedArcPolicy] {
        &self.entry.identity_policies
    }

    /// The permission boundary, if any.
    pub fn permission_boundary(&self) -> Option<&NamedArcPolicy> {
        self.entry.permission_boundary.as_ref()
    }

    /// The account's guardrails.
    pub fn guardrails(&self) -> &[NamedArcPolicy] {
        &self.entry.guardrails
    }

    /// The precomputed entry (user, role or account root).
    pub fn entry(&self) -> &Arc<PrincipalEntry> {
        &self.entry
    }

    /// Sets the principal condition keys of spec 3.1: `aws:PrincipalArn`,
    /// `aws:PrincipalAccount`, `kms:CallerAccount`, `aws:PrincipalType`, `aws:userid`,
    /// `aws:username` (users) and `aws:PrincipalTag/<k>` (entry tags, then `session_tags`,
    /// which win on a key clash).
    pub fn add_context_keys(&self, ctx: &mut RequestContext, session_tags: &[(String, String)]) {
        ctx.set("aws:PrincipalArn", self.context_principal_arn());
        ctx.set("aws:PrincipalAccount", self.account());
        ctx.set("kms:CallerAccount", self.account());
        ctx.set("aws:PrincipalType", self.principal_type().as_str());
        ctx.set("aws:userid", self.userid().into_owned());
        if let Some(u) = self.username() {
            ctx.set("aws:username", u);
        }
        for (k, v) in self.tags().iter().chain(session_tags) {
            ctx.set(&format!("aws:PrincipalTag/{k}"), v.as_str());
        }
    }
}

/// One account: its partition, root and roles by name (for session ARNs).
pub(super) struct AccountData {
    pub(super) partition: String,
    pub(super) root: Arc<PrincipalEntry>,
    pub(super) roles_by_name: HashMap<String, Arc<RoleEntry>>,
}

/// The loaded directory. Immutable; replaced wholesale on reload.
#[derive(Default)]
pub struct Directory {
    pub(super) accounts: HashMap<String, AccountData>,
    /// User ARNs and account-root ARNs.
    pub(super) principals: HashMap<String, Arc<PrincipalEntry>>,
    pub(super) roles: HashMap<String, Arc<RoleEntry>>,
    pub(super) access_keys: HashMap<String, AccessKeyEntry>,
    pub(super) cert_bindings: Vec<CertBinding>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("accounts", &self.accounts.len())
            .field("principals", &self.principals.len())
            .field("roles", &self.roles.len())
            .field("access_keys", &self.access_keys.len())
            .field("cert_bindings", &self.cert_bindings.len())
            .finish()
    }
}

impl Directory {
    /// A directory with no accounts.
    pub fn empty() -> Directory {
        Directory::default()
    }

    /// Resolves a caller ARN: an IAM user, an account root, or an assumed-role session
    /// (`arn:aws:sts::<acct>:assumed-role/<role>/<session>`, resolved to its role). A bare
    /// role ARN is not a caller and resolves to `None`.
    pub fn principal(&self, arn: &str) -> Option<ResolvedPrincipal> {
        if let Some(entry) = self.principals.get(arn) {
            return Some(ResolvedPrincipal {
                entry: Arc::clone(entry),
                session_arn: None,
            });
        }
        let role = self.session_role(arn)?;
        Some(ResolvedPrincipal {
            entry: Arc::clone(&role.principal),
            session_arn: Some(Box::from(arn)),
        })
    }

    /// The role an assumed-role session ARN belongs to.
    fn session_role(&self, arn: &str) -> Option<&Arc<RoleEntry>> {
        let parsed = Arn::parse(arn).ok()?;
        if parsed.service != "sts" || !parsed.region.is_empty() {
            return None;
        }
        let rest = parsed.resource.strip_prefix("assumed-role/")?;
        let (role_name, session) = rest.split_once('/')?;
        if role_name.is_empty() || session.is_empty() || session.contains('/') {
            return None;
        }
        let account = self.accounts.get(parsed.account)?;
        if account.partition != parsed.partition {
            return None;
        }
        account.roles_by_name.get(role_name)
    }

    /// A role by ARN (for AssumeRole).
    pub fn role(&self, arn: &str) -> Option<&RoleEntry> {
        self.roles.get(arn).map(|r| r.as_ref())
    }

    /// An active access key by id.
    pub fn access_key(&self, access_key_id: &str) -> Option<&AccessKeyEntry> {
        self.access_keys.get(access_key_id)
    }

    /// The secret of an active access key, for [`crate::identity::sigv4::verify`].
    pub fn secret_for(&self, access_key_id: &str) -> Option<Zeroizing<String>> {
        self.access_key(access_key_id)
            .map(|k| k.secret_access_key.clone())
    }

    /// Whether the account is in the directory.
    pub fn account_exists(&self, account_id: &str) -> bool {
        self.accounts.contains_key(account_id)
    }

    /// Whether a principal named in a policy exists: a user, a role, an account root (or a
    /// bare account id) of a known account, or a session of an existing role.
    pub fn principal_exists(&self, arn: &str) -> bool {
        if is_account_id(arn) {
            return self.account_exists(arn);
        }
        self.principals.contains_key(arn)
            || self.roles.contains_key(arn)
            || self.session_role(arn).is_some()
    }

    /// Certificate bindings from the credentials file.
    pub fn cert_bindings(&self) -> &[CertBinding] {
        &self.cert_bindings
    }

    /// A certificate directory over the bindings.
    pub fn certificate_directory(&self) -> CertificateDirectory {
        CertificateDirectory::new(self.cert_bindings.clone())
    }

    /// Account ids, in no particular order.
    pub fn account_ids(&self) -> impl Iterator<Item = &str> {
        self.accounts.keys().map(String::as_str)
    }

    /// Every user and role of every account (not the account roots), in no particular
    /// order: the principals an operator picks from (the console's key administrators and
    /// key users).
    pub fn users_and_roles(&self) -> impl Iterator<Item = &PrincipalEntry> {
        let users = self
            .principals
            .values()
            .filter(|e| e.kind == EntryKind::User);
        let roles = self.roles.values().map(|r| &r.principal);
        users.chain(roles).map(|e| e.as_ref())
    }

    /// The account's root ARN, if the account is known.
    pub fn account_root(&self, account_id: &str) -> Option<&str> {
        self.accounts.get(account_id).map(|a| a.root.arn.as_str())
    }
}
