//! The identity directory: accounts, users, groups, roles, their policies, access keys and
//! certificate bindings, loaded from files and compiled once.
//!
//! Per account the input is the JSON that `aws iam get-account-authorization-details` prints
//! (`UserDetailList`, `GroupDetailList`, `RoleDetailList`, `Policies`), plus optional guardrail
//! (SCP-like) policy files. Credentials come from a separate JSON file:
//!
//! ```json
//! {"AccessKeys": [{"AccessKeyId": "AKIA...", "SecretAccessKey": "...",
//!                  "UserArn": "arn:aws:iam::111122223333:user/alice", "Status": "Active"}],
//!  "CertificateBindings": [{"SubjectCN": "admin", "Principal": "arn:aws:iam::111122223333:user/admin"},
//!                          {"SanUri": "spiffe://corp/app", "Principal": "arn:..."}]}
//! ```
//!
//! Every policy is parsed and compiled at load; a malformed one fails the whole load with an
//! error naming the account, the principal and the policy. Each user, role and account root
//! gets a precomputed [`PrincipalEntry`] (identity policies, boundary, guardrails, tags), so a
//! request-path lookup is one hash-map hit and an `Arc` clone.
//!
//! [`DirectoryHandle`] holds the current directory and swaps it atomically on reload
//! (SIGHUP), keeping the old one when the new files are bad.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::arn::{is_account_id, Arn};
use super::certs::{CertBinding, CertMatcher, CertificateDirectory};
use crate::encoding::percent_decode_strict;
use crate::policy::{NamedPolicy, Policy, PolicyKind, RequestContext};

/// Default `MaxSessionDuration` of a role, in seconds.
pub const DEFAULT_MAX_SESSION_DURATION: u32 = 3600;
/// Largest `MaxSessionDuration` IAM allows, in seconds.
pub const MAX_MAX_SESSION_DURATION: u32 = 43_200;

/// A policy with the name it is reported under.
pub type NamedArcPolicy = (String, Arc<Policy>);

// ---------------------------------------------------------------------------------------
// Configuration input and errors
// ---------------------------------------------------------------------------------------

/// Which files make up the directory (the config's `[identity]` section points here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFiles {
    /// One entry per account.
    #[serde(default)]
    pub accounts: Vec<AccountFiles>,
    /// The credentials file (access keys and certificate bindings), if any.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
}

/// The files of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFiles {
    /// The 12-digit account id.
    pub account_id: String,
    /// `aws iam get-account-authorization-details` output for the account.
    pub authorization_details: PathBuf,
    /// Guardrail (SCP-like) policy documents, one per file; every one must allow.
    #[serde(default)]
    pub guardrails: Vec<PathBuf>,
}

/// Why the directory could not be loaded. Messages name the file, account, principal and
/// policy at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A file is not valid JSON or does not have the expected shape.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A policy document is malformed.
    #[error("account {account}: {principal}: policy '{policy}': {message}")]
    Policy {
        /// The account.
        account: String,
        /// The principal (or group, or `guardrail`) the policy belongs to.
        principal: String,
        /// The policy name (or ARN, or file).
        policy: String,
        /// The parser's message.
        message: String,
    },
    /// Anything else inconsistent (unknown group, missing managed policy, unknown principal
    /// in the credentials, duplicates, ...).
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> IdentityError {
    IdentityError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------
// Resolved entries
// ---------------------------------------------------------------------------------------

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

fn policy_names(list: &[NamedArcPolicy]) -> Vec<&str> {
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

impl fmt::Debug for RoleEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleEntry")
            .field("arn", &self.arn)
            .field("role_id", &self.role_id)
            .field("max_session_duration", &self.max_session_duration)
            .field("principal", &self.principal)
            .finish()
    }
}

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
            PolicyKind::Key,
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

impl fmt::Debug for AccessKeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeyEntry")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("principal_arn", &self.principal_arn)
            .finish()
    }
}

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

// ---------------------------------------------------------------------------------------
// The directory
// ---------------------------------------------------------------------------------------

struct AccountData {
    partition: String,
    root: Arc<PrincipalEntry>,
    roles_by_name: HashMap<String, Arc<RoleEntry>>,
}

/// The loaded directory. Immutable; replaced wholesale on reload.
#[derive(Default)]
pub struct Directory {
    accounts: HashMap<String, AccountData>,
    /// User ARNs and account-root ARNs.
    principals: HashMap<String, Arc<PrincipalEntry>>,
    roles: HashMap<String, Arc<RoleEntry>>,
    access_keys: HashMap<String, AccessKeyEntry>,
    cert_bindings: Vec<CertBinding>,
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

    /// Reads and compiles every file. Blocking I/O.
    pub fn load(files: &DirectoryFiles) -> Result<Directory, IdentityError> {
        let mut dir = Directory::empty();
        for af in &files.accounts {
            if !is_account_id(&af.account_id) {
                return Err(invalid(format!(
                    "account id '{}' is not a 12-digit account id",
                    af.account_id
                )));
            }
            if dir.accounts.contains_key(&af.account_id) {
                return Err(invalid(format!(
                    "account {} is listed more than once",
                    af.account_id
                )));
            }
            let text = read_file(&af.authorization_details)?;
            let raw: RawAuthDetails =
                serde_json::from_str(&text).map_err(|e| IdentityError::Format {
                    path: af.authorization_details.clone(),
                    message: format!("not valid authorization details JSON: {e}"),
                })?;
            if raw.is_truncated {
                return Err(IdentityError::Format {
                    path: af.authorization_details.clone(),
                    message: "IsTruncated is true: the output is incomplete (let the CLI paginate)"
                        .into(),
                });
            }
            let guardrails = load_guardrails(&af.account_id, &af.guardrails)?;
            load_account(
                &mut dir,
                &af.account_id,
                &af.authorization_details,
                &raw,
                guardrails,
            )?;
        }
        if let Some(path) = &files.credentials {
            load_credentials(&mut dir, path)?;
        }
        Ok(dir)
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

    /// The secret of an active access key, for [`super::sigv4::verify`].
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

    /// The account's root ARN, if the account is known.
    pub fn account_root(&self, account_id: &str) -> Option<&str> {
        self.accounts.get(account_id).map(|a| a.root.arn.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// Reload holder
// ---------------------------------------------------------------------------------------

/// The current directory, swapped atomically on reload.
#[derive(Debug)]
pub struct DirectoryHandle {
    current: RwLock<Arc<Directory>>,
}

impl DirectoryHandle {
    /// Wraps a loaded directory.
    pub fn new(directory: Directory) -> DirectoryHandle {
        DirectoryHandle {
            current: RwLock::new(Arc::new(directory)),
        }
    }

    /// Loads the files and wraps the result.
    pub fn load(files: &DirectoryFiles) -> Result<DirectoryHandle, IdentityError> {
        Ok(DirectoryHandle::new(Directory::load(files)?))
    }

    /// The current directory. Hold the `Arc` for the duration of one request.
    pub fn current(&self) -> Arc<Directory> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the directory.
    pub fn replace(&self, directory: Directory) {
        let new = Arc::new(directory);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Reloads from the files. On error the current directory stays in force and the error
    /// is logged and returned.
    pub fn reload(&self, files: &DirectoryFiles) -> Result<(), IdentityError> {
        match Directory::load(files) {
            Ok(dir) => {
                tracing::info!(
                    accounts = dir.accounts.len(),
                    principals = dir.principals.len(),
                    roles = dir.roles.len(),
                    access_keys = dir.access_keys.len(),
                    cert_bindings = dir.cert_bindings.len(),
                    "identity directory reloaded"
                );
                self.replace(dir);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "identity directory reload failed; keeping the previous directory");
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw file formats
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAuthDetails {
    #[serde(default)]
    user_detail_list: Vec<RawUser>,
    #[serde(default)]
    group_detail_list: Vec<RawGroup>,
    #[serde(default)]
    role_detail_list: Vec<RawRole>,
    #[serde(default)]
    policies: Vec<RawManagedPolicy>,
    #[serde(default)]
    is_truncated: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawUser {
    #[serde(default = "root_path")]
    path: String,
    user_name: String,
    user_id: String,
    arn: String,
    #[serde(default)]
    group_list: Vec<String>,
    #[serde(default)]
    attached_managed_policies: Vec<RawAttached>,
    #[serde(default)]
    user_policy_list: Vec<RawInline>,
    #[serde(default)]
    permissions_boundary: Option<RawBoundary>,
    #[serde(default)]
    tags: Vec<RawTag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawGroup {
    #[serde(default = "root_path")]
    path: String,
    group_name: String,
    arn: String,
    #[serde(default)]
    group_policy_list: Vec<RawInline>,
    #[serde(default)]
    attached_managed_policies: Vec<RawAttached>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRole {
    #[serde(default = "root_path")]
    path: String,
    role_name: String,
    role_id: String,
    arn: String,
    assume_role_policy_document: Value,
    #[serde(default)]
    role_policy_list: Vec<RawInline>,
    #[serde(default)]
    attached_managed_policies: Vec<RawAttached>,
    #[serde(default)]
    permissions_boundary: Option<RawBoundary>,
    #[serde(default)]
    tags: Vec<RawTag>,
    #[serde(default)]
    max_session_duration: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAttached {
    policy_arn: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawInline {
    policy_name: String,
    policy_document: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawBoundary {
    #[serde(default)]
    permissions_boundary_type: Option<String>,
    permissions_boundary_arn: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTag {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawManagedPolicy {
    policy_name: String,
    arn: String,
    #[serde(default)]
    default_version_id: Option<String>,
    #[serde(default)]
    policy_version_list: Vec<RawPolicyVersion>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPolicyVersion {
    document: Value,
    version_id: String,
    #[serde(default)]
    is_default_version: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawCredentials {
    #[serde(default)]
    access_keys: Vec<RawAccessKey>,
    #[serde(default)]
    certificate_bindings: Vec<RawCertBinding>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAccessKey {
    access_key_id: String,
    #[serde(deserialize_with = "zeroizing_string")]
    secret_access_key: Zeroizing<String>,
    user_arn: String,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertBinding {
    #[serde(rename = "SubjectCN", default)]
    subject_cn: Option<String>,
    #[serde(rename = "SanUri", default)]
    san_uri: Option<String>,
    #[serde(rename = "Principal")]
    principal: String,
}

fn zeroizing_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

fn root_path() -> String {
    "/".into()
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

fn read_file(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A policy document as found in the file: a JSON object, or a (URL-encoded) JSON string.
fn decode_document(v: &Value) -> Result<Cow<'_, Value>, String> {
    match v {
        Value::Object(_) => Ok(Cow::Borrowed(v)),
        Value::String(s) => {
            let text = if s.trim_start().starts_with('{') {
                s.clone()
            } else {
                percent_decode_strict(s)?
            };
            let parsed: Value = serde_json::from_str(&text)
                .map_err(|e| format!("policy document is not valid JSON: {e}"))?;
            if !parsed.is_object() {
                return Err("policy document must be a JSON object".into());
            }
            Ok(Cow::Owned(parsed))
        }
        _ => Err("policy document must be a JSON object or a URL-encoded JSON string".into()),
    }
}

/// Trust policies carry no `Resource`; the policy engine requires one, so `"Resource": "*"`
/// is added to statements that have neither `Resource` nor `NotResource`.
fn with_implicit_resource(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let add = |st: &mut Value| {
        if let Value::Object(m) = st {
            if !m.contains_key("Resource") && !m.contains_key("NotResource") {
                m.insert("Resource".into(), Value::String("*".into()));
            }
        }
    };
    if let Some(Value::Object(m)) = Some(&mut doc) {
        match m.get_mut("Statement") {
            Some(Value::Array(list)) => list.iter_mut().for_each(add),
            Some(st @ Value::Object(_)) => add(st),
            _ => {}
        }
    }
    doc
}

fn compile(
    account: &str,
    principal: &str,
    policy_name: &str,
    doc: &Value,
    kind: PolicyKind,
) -> Result<Arc<Policy>, IdentityError> {
    let perr = |message: String| IdentityError::Policy {
        account: account.into(),
        principal: principal.into(),
        policy: policy_name.into(),
        message,
    };
    let decoded = decode_document(doc).map_err(perr)?;
    let value = if kind == PolicyKind::Key {
        Cow::Owned(with_implicit_resource(&decoded))
    } else {
        decoded
    };
    Policy::from_value(&value, kind)
        .map(Arc::new)
        .map_err(|e| perr(e.to_string()))
}

fn load_guardrails(
    account: &str,
    files: &[PathBuf],
) -> Result<Arc<[NamedArcPolicy]>, IdentityError> {
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let text = read_file(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let policy =
            Policy::parse(&text, PolicyKind::Guardrail).map_err(|e| IdentityError::Policy {
                account: account.into(),
                principal: "guardrail".into(),
                policy: path.display().to_string(),
                message: e.to_string(),
            })?;
        out.push((name, Arc::new(policy)));
    }
    Ok(Arc::from(out))
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

fn tags_of(raw: &[RawTag]) -> Vec<(String, String)> {
    raw.iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect()
}

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

/// A group's inline policies, and its managed policies keyed by ARN.
type GroupPolicies = (Vec<NamedArcPolicy>, Vec<(String, NamedArcPolicy)>);

fn load_account(
    dir: &mut Directory,
    account: &str,
    file: &Path,
    raw: &RawAuthDetails,
    guardrails: Arc<[NamedArcPolicy]>,
) -> Result<(), IdentityError> {
    let mut managed = ManagedPolicies::new(account, file, &raw.policies)?;

    // First pass: every entity ARN is in this account and agrees on the partition.
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

    // Groups: their compiled policies, by name.
    let mut groups: HashMap<&str, GroupPolicies> = HashMap::new();
    for g in &raw.group_detail_list {
        let who = &g.arn;
        let mut inline = Vec::new();
        for p in &g.group_policy_list {
            let policy = compile(
                account,
                who,
                &p.policy_name,
                &p.policy_document,
                PolicyKind::Identity,
            )?;
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
                path: file.to_path_buf(),
                message: format!("group {} is listed more than once", g.group_name),
            });
        }
    }

    let mut users: Vec<Arc<PrincipalEntry>> = Vec::new();
    for u in &raw.user_detail_list {
        let who = &u.arn;
        let mut policies = Vec::new();
        let mut seen = HashSet::new();
        for p in &u.user_policy_list {
            let policy = compile(
                account,
                who,
                &p.policy_name,
                &p.policy_document,
                PolicyKind::Identity,
            )?;
            policies.push((p.policy_name.clone(), policy));
        }
        for a in &u.attached_managed_policies {
            let p = managed.get(&a.policy_arn, PolicyKind::Identity, who)?;
            push_unique(&mut policies, &mut seen, &a.policy_arn, p);
        }
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
        let permission_boundary = boundary(&mut managed, u.permissions_boundary.as_ref(), who)?;
        users.push(Arc::new(PrincipalEntry {
            arn: u.arn.clone(),
            account: account.into(),
            partition: partition.clone(),
            kind: EntryKind::User,
            name: u.user_name.clone(),
            id: u.user_id.clone(),
            path: u.path.clone(),
            tags: tags_of(&u.tags),
            identity_policies: policies,
            permission_boundary,
            guardrails: Arc::clone(&guardrails),
        }));
    }

    let mut roles: Vec<Arc<RoleEntry>> = Vec::new();
    for r in &raw.role_detail_list {
        let who = &r.arn;
        let trust_policy = compile(
            account,
            who,
            "AssumeRolePolicyDocument",
            &r.assume_role_policy_document,
            PolicyKind::Key,
        )?;
        let mut policies = Vec::new();
        let mut seen = HashSet::new();
        for p in &r.role_policy_list {
            let policy = compile(
                account,
                who,
                &p.policy_name,
                &p.policy_document,
                PolicyKind::Identity,
            )?;
            policies.push((p.policy_name.clone(), policy));
        }
        for a in &r.attached_managed_policies {
            let p = managed.get(&a.policy_arn, PolicyKind::Identity, who)?;
            push_unique(&mut policies, &mut seen, &a.policy_arn, p);
        }
        let permission_boundary = boundary(&mut managed, r.permissions_boundary.as_ref(), who)?;
        let max_session_duration = r
            .max_session_duration
            .unwrap_or(DEFAULT_MAX_SESSION_DURATION);
        if !(DEFAULT_MAX_SESSION_DURATION..=MAX_MAX_SESSION_DURATION)
            .contains(&max_session_duration)
        {
            return Err(invalid(format!(
                "account {account}: {who}: MaxSessionDuration {max_session_duration} is outside 3600..=43200"
            )));
        }
        let principal = Arc::new(PrincipalEntry {
            arn: r.arn.clone(),
            account: account.into(),
            partition: partition.clone(),
            kind: EntryKind::Role,
            name: r.role_name.clone(),
            id: r.role_id.clone(),
            path: r.path.clone(),
            tags: tags_of(&r.tags),
            identity_policies: policies,
            permission_boundary,
            guardrails: Arc::clone(&guardrails),
        });
        roles.push(Arc::new(RoleEntry {
            arn: r.arn.clone(),
            name: r.role_name.clone(),
            role_id: r.role_id.clone(),
            account: account.into(),
            partition: partition.clone(),
            trust_policy,
            max_session_duration,
            principal,
        }));
    }

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
        guardrails: Arc::clone(&guardrails),
    });
    dir.principals.insert(root_arn, Arc::clone(&root));

    for u in users {
        if dir
            .principals
            .insert(u.arn.clone(), Arc::clone(&u))
            .is_some()
        {
            return Err(IdentityError::Format {
                path: file.to_path_buf(),
                message: format!("user {} is listed more than once", u.arn),
            });
        }
    }
    let mut roles_by_name = HashMap::new();
    for r in roles {
        if roles_by_name
            .insert(r.name.clone(), Arc::clone(&r))
            .is_some()
            || dir.roles.insert(r.arn.clone(), Arc::clone(&r)).is_some()
        {
            return Err(IdentityError::Format {
                path: file.to_path_buf(),
                message: format!("role {} is listed more than once", r.name),
            });
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

fn load_credentials(dir: &mut Directory, path: &Path) -> Result<(), IdentityError> {
    let text = Zeroizing::new(read_file(path)?);
    let raw: RawCredentials = serde_json::from_str(&text).map_err(|e| IdentityError::Format {
        path: path.to_path_buf(),
        message: format!("not a valid credentials file: {e}"),
    })?;
    let ferr = |message: String| IdentityError::Format {
        path: path.to_path_buf(),
        message,
    };

    let mut all_ids = HashSet::new();
    for (i, k) in raw.access_keys.into_iter().enumerate() {
        let at = format!("AccessKeys[{i}]");
        let id = k.access_key_id.trim();
        if !(16..=128).contains(&id.len())
            || !id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(ferr(format!(
                "{at}: AccessKeyId '{id}' must be 16 to 128 uppercase letters or digits"
            )));
        }
        if id.starts_with(super::sessions::SESSION_KEY_PREFIX) {
            return Err(ferr(format!(
                "{at}: AccessKeyId '{id}': the ASIA prefix is reserved for session credentials"
            )));
        }
        if !all_ids.insert(id.to_string()) {
            return Err(ferr(format!(
                "{at}: AccessKeyId '{id}' is listed more than once"
            )));
        }
        if k.secret_access_key.is_empty() || k.secret_access_key.chars().any(char::is_whitespace) {
            return Err(ferr(format!(
                "{at} ({id}): SecretAccessKey must be non-empty without whitespace"
            )));
        }
        let active = match k.status.as_deref() {
            None | Some("Active") => true,
            Some("Inactive") => false,
            Some(other) => {
                return Err(ferr(format!(
                    "{at} ({id}): Status must be 'Active' or 'Inactive', not '{other}'"
                )))
            }
        };
        let owner = dir.principals.get(&k.user_arn).ok_or_else(|| {
            ferr(format!(
                "{at} ({id}): UserArn {} is not a user or account root in the directory",
                k.user_arn
            ))
        })?;
        let account = owner.account.clone();
        if active {
            dir.access_keys.insert(
                id.to_string(),
                AccessKeyEntry {
                    access_key_id: id.to_string(),
                    secret_access_key: k.secret_access_key,
                    principal_arn: k.user_arn,
                    account,
                },
            );
        }
    }

    for (i, b) in raw.certificate_bindings.into_iter().enumerate() {
        let at = format!("CertificateBindings[{i}]");
        let matcher = match (b.subject_cn, b.san_uri) {
            (Some(cn), None) if !cn.is_empty() => CertMatcher::SubjectCn(cn),
            (None, Some(uri)) if !uri.is_empty() => CertMatcher::SanUri(uri),
            _ => {
                return Err(ferr(format!(
                    "{at}: set exactly one non-empty SubjectCN or SanUri"
                )))
            }
        };
        let arn = b.principal;
        if dir.roles.contains_key(&arn) {
            return Err(ferr(format!(
                "{at}: Principal {arn} is a role; bind an assumed-role session ARN (arn:aws:sts::<acct>:assumed-role/<role>/<session>) or a user"
            )));
        }
        if dir.principal(&arn).is_none() {
            return Err(ferr(format!(
                "{at}: Principal {arn} is not a user, account root or role session in the directory"
            )));
        }
        if dir.cert_bindings.iter().any(|c| c.matcher == matcher) {
            return Err(ferr(format!(
                "{at}: the same certificate matcher is bound twice"
            )));
        }
        dir.cert_bindings.push(CertBinding {
            matcher,
            principal_arn: arn,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity")
    }

    fn fixture_files() -> DirectoryFiles {
        let f = fixtures();
        DirectoryFiles {
            accounts: vec![
                AccountFiles {
                    account_id: "111122223333".into(),
                    authorization_details: f.join("111122223333.json"),
                    guardrails: vec![f.join("guardrail-allow-all.json")],
                },
                AccountFiles {
                    account_id: "444455556666".into(),
                    authorization_details: f.join("444455556666.json"),
                    guardrails: vec![],
                },
            ],
            credentials: Some(f.join("credentials.json")),
        }
    }

    fn load() -> Directory {
        Directory::load(&fixture_files()).unwrap()
    }

    fn names(list: &[NamedArcPolicy]) -> Vec<&str> {
        policy_names(list)
    }

    #[test]
    fn loads_fixtures_and_resolves_users() {
        let d = load();
        let admin = d.principal("arn:aws:iam::111122223333:user/admin").unwrap();
        assert_eq!(
            admin.principal_arn(),
            "arn:aws:iam::111122223333:user/admin"
        );
        assert_eq!(admin.context_principal_arn(), admin.principal_arn());
        assert_eq!(admin.account(), "111122223333");
        assert_eq!(admin.principal_type(), PrincipalType::User);
        assert_eq!(admin.principal_type().as_str(), "User");
        assert_eq!(admin.username(), Some("admin"));
        assert_eq!(admin.userid(), "AIDAADMIN000000000001");
        assert_eq!(admin.role_arn(), None);
        assert_eq!(names(admin.identity_policies()), vec!["KmsAdmin"]);
        assert!(admin.permission_boundary().is_none());
        assert_eq!(names(admin.guardrails()), vec!["guardrail-allow-all"]);

        let user1 = d.principal("arn:aws:iam::111122223333:user/user1").unwrap();
        assert!(user1.identity_policies().is_empty());
        let user2 = d.principal("arn:aws:iam::111122223333:user/user2").unwrap();
        assert_eq!(names(user2.identity_policies()), vec!["S3ReadOnly"]);
        let bob = d.principal("arn:aws:iam::111122223333:user/bob").unwrap();
        assert_eq!(names(bob.identity_policies()), vec!["AssumeEngineering"]);
        let nopolicy = d
            .principal("arn:aws:iam::111122223333:user/nopolicy")
            .unwrap();
        assert!(nopolicy.identity_policies().is_empty());

        let keyadmin = d
            .principal("arn:aws:iam::444455556666:user/keyadmin")
            .unwrap();
        assert_eq!(keyadmin.account(), "444455556666");
        assert_eq!(names(keyadmin.identity_policies()), vec!["KmsAdmin"]);
        assert!(keyadmin.guardrails().is_empty());

        assert!(d
            .principal("arn:aws:iam::111122223333:user/nobody")
            .is_none());
        assert!(d
            .principal("arn:aws:iam::999999999999:user/admin")
            .is_none());
        assert!(d.principal("not an arn").is_none());
    }

    #[test]
    fn group_policies_and_tags_are_collected() {
        let d = load();
        let carol = d.principal("arn:aws:iam::111122223333:user/carol").unwrap();
        assert_eq!(
            names(carol.identity_policies()),
            vec!["Developers/DevelopersEncrypt"]
        );
        assert_eq!(carol.tags(), &[("team".to_string(), "blue".to_string())]);
        let named = named_policies(carol.identity_policies());
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].name, "Developers/DevelopersEncrypt");
        assert_eq!(named[0].policy.kind(), PolicyKind::Identity);

        let mut ctx =
            RequestContext::new(carol.principal_arn(), carol.account(), "kms:Encrypt", "*");
        carol.add_context_keys(&mut ctx, &[]);
        assert_eq!(
            ctx.get("aws:PrincipalTag/team"),
            Some(&["blue".to_string()][..])
        );
        assert_eq!(ctx.get("aws:username"), Some(&["carol".to_string()][..]));
        assert_eq!(
            ctx.get("aws:PrincipalType"),
            Some(&["User".to_string()][..])
        );
        assert_eq!(
            ctx.get("kms:CallerAccount"),
            Some(&["111122223333".to_string()][..])
        );
    }

    #[test]
    fn account_roots_resolve() {
        let d = load();
        let root = d.principal("arn:aws:iam::111122223333:root").unwrap();
        assert_eq!(root.principal_type(), PrincipalType::Account);
        assert_eq!(root.userid(), "111122223333");
        assert_eq!(root.username(), None);
        assert!(root.identity_policies().is_empty());
        assert_eq!(root.guardrails().len(), 1);
        assert!(d.principal("arn:aws:iam::999999999999:root").is_none());
        assert!(d.principal("arn:aws-cn:iam::111122223333:root").is_none());
        assert_eq!(
            d.account_root("444455556666"),
            Some("arn:aws:iam::444455556666:root")
        );
        let mut ids: Vec<&str> = d.account_ids().collect();
        ids.sort();
        assert_eq!(ids, vec!["111122223333", "444455556666"]);
    }

    #[test]
    fn sessions_resolve_to_their_role() {
        let d = load();
        let s = d
            .principal("arn:aws:sts::111122223333:assumed-role/Engineering/bob-session")
            .unwrap();
        assert_eq!(
            s.principal_arn(),
            "arn:aws:sts::111122223333:assumed-role/Engineering/bob-session"
        );
        assert_eq!(s.principal_type(), PrincipalType::AssumedRole);
        assert_eq!(
            s.role_arn(),
            Some("arn:aws:iam::111122223333:role/Engineering")
        );
        assert_eq!(
            s.context_principal_arn(),
            "arn:aws:iam::111122223333:role/Engineering"
        );
        assert_eq!(s.session_name(), Some("bob-session"));
        assert_eq!(s.userid(), "AROAENGINEERING000001:bob-session");
        assert_eq!(s.username(), None);
        assert_eq!(names(s.identity_policies()), vec!["EngineeringKms"]);
        assert_eq!(
            s.tags(),
            &[("department".to_string(), "engineering".to_string())]
        );

        let mut ctx = RequestContext::new(s.principal_arn(), s.account(), "kms:Encrypt", "*");
        s.add_context_keys(&mut ctx, &[("department".into(), "override".into())]);
        assert_eq!(
            ctx.get("aws:PrincipalArn"),
            Some(&["arn:aws:iam::111122223333:role/Engineering".to_string()][..])
        );
        assert_eq!(
            ctx.get("aws:PrincipalTag/department"),
            Some(&["override".to_string()][..])
        );
        assert_eq!(ctx.get("aws:username"), None);

        for bad in [
            "arn:aws:sts::111122223333:assumed-role/Nope/s",
            "arn:aws:sts::111122223333:assumed-role/Engineering/",
            "arn:aws:sts::111122223333:assumed-role/Engineering",
            "arn:aws:sts::111122223333:assumed-role/Engineering/a/b",
            "arn:aws:sts::444455556666:assumed-role/Engineering/s",
            "arn:aws:iam::111122223333:role/Engineering",
        ] {
            assert!(d.principal(bad).is_none(), "{bad}");
        }

        let role = d
            .role("arn:aws:iam::111122223333:role/Engineering")
            .unwrap();
        assert_eq!(role.max_session_duration, 3600);
        assert_eq!(role.role_id, "AROAENGINEERING000001");
        assert_eq!(role.trust_policy.kind(), PolicyKind::Key);
        assert_eq!(role.trust_named().name, "trust-policy");
        assert!(d.role("arn:aws:iam::111122223333:role/Nope").is_none());
    }

    /// The fixtures drive the policy engine as the lead's authorizer will: bob may assume
    /// Engineering (trust policy x bob's identity policy), nopolicy may not; the session's
    /// role policy allows Encrypt on 444455556666 keys; carol's group policy allows Encrypt.
    #[test]
    fn fixtures_evaluate_as_intended() {
        use crate::policy::{evaluate, EvalInput};
        use std::collections::BTreeMap;
        let d = load();
        let ec = BTreeMap::new();
        let role = d
            .role("arn:aws:iam::111122223333:role/Engineering")
            .unwrap();
        let assume = |caller: &str| {
            let p = d.principal(caller).unwrap();
            let mut ctx =
                RequestContext::new(p.principal_arn(), p.account(), "sts:AssumeRole", &role.arn);
            p.add_context_keys(&mut ctx, &[]);
            let ids = named_policies(p.identity_policies());
            let guards = named_policies(p.guardrails());
            evaluate(&EvalInput {
                key_account: Some(&role.account),
                key_policy: Some(role.trust_named()),
                identity_policies: &ids,
                guardrails: &guards,
                permission_boundaries: &[],
                session_policies: &[],
                grants: &[],
                encryption_context: &ec,
                role_arn: p.role_arn(),
                request: &ctx,
            })
            .effect
        };
        assert_eq!(
            assume("arn:aws:iam::111122223333:user/bob"),
            crate::policy::Effect::Allow
        );
        assert_eq!(
            assume("arn:aws:iam::111122223333:user/nopolicy"),
            crate::policy::Effect::Deny
        );
        assert_eq!(
            assume("arn:aws:iam::111122223333:user/admin"),
            crate::policy::Effect::Deny
        );

        let iam_only = |caller: &str, action: &str, resource: &str| {
            let p = d.principal(caller).unwrap();
            let mut ctx = RequestContext::new(p.principal_arn(), p.account(), action, resource);
            p.add_context_keys(&mut ctx, &[]);
            let ids = named_policies(p.identity_policies());
            let guards = named_policies(p.guardrails());
            evaluate(&EvalInput {
                key_account: None,
                key_policy: None,
                identity_policies: &ids,
                guardrails: &guards,
                permission_boundaries: &[],
                session_policies: &[],
                grants: &[],
                encryption_context: &ec,
                role_arn: p.role_arn(),
                request: &ctx,
            })
            .effect
        };
        let allow = crate::policy::Effect::Allow;
        let deny = crate::policy::Effect::Deny;
        assert_eq!(
            iam_only("arn:aws:iam::111122223333:user/admin", "kms:CreateKey", "*"),
            allow
        );
        assert_eq!(
            iam_only("arn:aws:iam::111122223333:user/user1", "kms:CreateKey", "*"),
            deny
        );
        assert_eq!(
            iam_only("arn:aws:iam::111122223333:user/user2", "kms:CreateKey", "*"),
            deny
        );
        assert_eq!(
            iam_only(
                "arn:aws:iam::444455556666:user/keyadmin",
                "kms:CreateKey",
                "*"
            ),
            allow
        );
        let key = "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let session = "arn:aws:sts::111122223333:assumed-role/Engineering/bob";
        assert_eq!(iam_only(session, "kms:Encrypt", key), allow);
        assert_eq!(
            iam_only(session, "kms:GenerateDataKeyWithoutPlaintext", key),
            allow
        );
        assert_eq!(iam_only(session, "kms:DisableKey", key), deny);
        assert_eq!(
            iam_only("arn:aws:iam::111122223333:user/carol", "kms:Encrypt", key),
            allow
        );
        assert_eq!(
            iam_only("arn:aws:iam::111122223333:user/carol", "kms:Decrypt", key),
            deny
        );
    }

    #[test]
    fn access_keys_and_bindings() {
        let d = load();
        let k = d.access_key("AKIAADMIN00000000001").unwrap();
        assert_eq!(k.principal_arn, "arn:aws:iam::111122223333:user/admin");
        assert_eq!(k.account, "111122223333");
        assert_eq!(k.secret_access_key.len(), 40);
        assert!(!format!("{k:?}").contains(k.secret_access_key.as_str()));
        assert_eq!(
            d.secret_for("AKIAADMIN00000000001").as_deref(),
            Some(&*k.secret_access_key)
        );
        let ka = d.access_key("AKIAKEYADMIN00000001").unwrap();
        assert_eq!(ka.account, "444455556666");
        for id in [
            "AKIAUSER100000000001",
            "AKIAUSER200000000001",
            "AKIABOB0000000000001",
            "AKIANOPOLICY00000001",
            "AKIACAROL00000000001",
        ] {
            assert!(d.access_key(id).is_some(), "{id}");
        }
        // Inactive keys are refused.
        assert!(d.access_key("AKIAUSER100000000002").is_none());
        assert!(d.access_key("AKIAUNKNOWN000000000").is_none());

        let b = d.cert_bindings();
        assert!(b.contains(&CertBinding {
            matcher: CertMatcher::SubjectCn("keyadmin".into()),
            principal_arn: "arn:aws:iam::444455556666:user/keyadmin".into(),
        }));
        assert_eq!(
            b.iter()
                .filter(|c| matches!(c.matcher, CertMatcher::SubjectCn(_)))
                .count(),
            5
        );
        let _ = d.certificate_directory();
    }

    #[test]
    fn existence_checks() {
        let d = load();
        assert!(d.account_exists("111122223333"));
        assert!(!d.account_exists("999999999999"));
        for yes in [
            "arn:aws:iam::111122223333:user/bob",
            "arn:aws:iam::111122223333:role/Engineering",
            "arn:aws:iam::111122223333:root",
            "arn:aws:iam::444455556666:root",
            "arn:aws:sts::111122223333:assumed-role/Engineering/x",
            "111122223333",
        ] {
            assert!(d.principal_exists(yes), "{yes}");
        }
        for no in [
            "arn:aws:iam::111122223333:user/ghost",
            "arn:aws:iam::111122223333:role/Ghost",
            "arn:aws:iam::999999999999:root",
            "arn:aws:iam::111122223333:group/Developers",
            "999999999999",
            "*",
        ] {
            assert!(!d.principal_exists(no), "{no}");
        }
    }

    // --- Error cases, with files written to a temp dir ---

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn one_account(details: PathBuf, credentials: Option<PathBuf>) -> DirectoryFiles {
        DirectoryFiles {
            accounts: vec![AccountFiles {
                account_id: "111122223333".into(),
                authorization_details: details,
                guardrails: vec![],
            }],
            credentials,
        }
    }

    const ALLOW_ENCRYPT: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}]}"#;

    fn user_with_inline(doc: &Value) -> String {
        serde_json::json!({
            "UserDetailList": [{
                "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
                "Arn": "arn:aws:iam::111122223333:user/alice",
                "CreateDate": "2024-01-01T00:00:00Z",
                "GroupList": [], "AttachedManagedPolicies": [],
                "UserPolicyList": [{"PolicyName": "AliceInline", "PolicyDocument": doc}],
                "Tags": []
            }],
            "GroupDetailList": [], "RoleDetailList": [], "Policies": []
        })
        .to_string()
    }

    fn url_encode(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[test]
    fn url_encoded_and_string_documents_are_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        for doc in [
            Value::String(url_encode(ALLOW_ENCRYPT)),
            Value::String(ALLOW_ENCRYPT.into()),
            serde_json::from_str(ALLOW_ENCRYPT).unwrap(),
        ] {
            let f = write(tmp.path(), "a.json", &user_with_inline(&doc));
            let d = Directory::load(&one_account(f, None)).unwrap();
            let alice = d.principal("arn:aws:iam::111122223333:user/alice").unwrap();
            assert_eq!(names(alice.identity_policies()), vec!["AliceInline"]);
            assert_eq!(alice.identity_policies()[0].1.statement_count(), 1);
        }
        assert_eq!(
            percent_decode_strict("%7B%22a%22%3A1%7D").unwrap(),
            r#"{"a":1}"#
        );
        assert!(percent_decode_strict("%7").is_err());
        assert!(percent_decode_strict("%FF").is_err());
    }

    #[test]
    fn malformed_policy_names_account_principal_and_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*","Principal":"*"}]});
        let f = write(tmp.path(), "a.json", &user_with_inline(&bad));
        let e = Directory::load(&one_account(f, None)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, IdentityError::Policy { .. }), "{msg}");
        assert!(msg.contains("111122223333"), "{msg}");
        assert!(msg.contains("user/alice"), "{msg}");
        assert!(msg.contains("AliceInline"), "{msg}");
        assert!(msg.contains("Principal"), "{msg}");

        let f = write(
            tmp.path(),
            "b.json",
            &user_with_inline(&Value::String("%ZZ".into())),
        );
        let msg = Directory::load(&one_account(f, None))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("AliceInline") && msg.contains("percent"),
            "{msg}"
        );
    }

    #[test]
    fn missing_managed_policy_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let text = serde_json::json!({
            "UserDetailList": [{
                "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
                "Arn": "arn:aws:iam::111122223333:user/alice",
                "GroupList": [],
                "AttachedManagedPolicies": [{"PolicyName": "AdministratorAccess", "PolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}],
                "UserPolicyList": [], "Tags": []
            }],
            "GroupDetailList": [], "RoleDetailList": [], "Policies": []
        });
        let f = write(tmp.path(), "a.json", &text.to_string());
        let msg = Directory::load(&one_account(f, None))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("arn:aws:iam::aws:policy/AdministratorAccess"),
            "{msg}"
        );
        assert!(msg.contains("user/alice"), "{msg}");

        // Listed in the same file, an AWS-managed policy is fine.
        let mut with = text.clone();
        with["Policies"] = serde_json::json!([{
            "PolicyName": "AdministratorAccess", "PolicyId": "ANPAIWMBCKSKIEE64ZLYK",
            "Arn": "arn:aws:iam::aws:policy/AdministratorAccess", "Path": "/",
            "DefaultVersionId": "v1", "AttachmentCount": 1, "IsAttachable": true,
            "PolicyVersionList": [
                {"Document": {"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}, "VersionId": "v2", "IsDefaultVersion": false},
                {"Document": url_encode(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#), "VersionId": "v1", "IsDefaultVersion": true}
            ]
        }]);
        let f = write(tmp.path(), "b.json", &with.to_string());
        let d = Directory::load(&one_account(f, None)).unwrap();
        let alice = d.principal("arn:aws:iam::111122223333:user/alice").unwrap();
        let (name, p) = &alice.identity_policies()[0];
        assert_eq!(name, "AdministratorAccess");
        // The default version (v1, Allow) was used, not v2.
        assert_eq!(
            p.document().statements[0].effect,
            crate::policy::Effect::Allow
        );
    }

    #[test]
    fn unknown_group_and_bad_arns_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let text = serde_json::json!({
            "UserDetailList": [{
                "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
                "Arn": "arn:aws:iam::111122223333:user/alice", "GroupList": ["Ghosts"]
            }]
        });
        let f = write(tmp.path(), "a.json", &text.to_string());
        let msg = Directory::load(&one_account(f, None))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("Ghosts"), "{msg}");

        let text = serde_json::json!({
            "UserDetailList": [{
                "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
                "Arn": "arn:aws:iam::444455556666:user/alice"
            }]
        });
        let f = write(tmp.path(), "b.json", &text.to_string());
        let msg = Directory::load(&one_account(f, None))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not in account 111122223333"), "{msg}");

        let f = write(tmp.path(), "c.json", "{ not json");
        assert!(matches!(
            Directory::load(&one_account(f, None)).unwrap_err(),
            IdentityError::Format { .. }
        ));
        let e = Directory::load(&one_account(tmp.path().join("missing.json"), None)).unwrap_err();
        assert!(matches!(e, IdentityError::Read { .. }));
        let f = write(
            tmp.path(),
            "d.json",
            r#"{"UserDetailList": [], "IsTruncated": true}"#,
        );
        assert!(Directory::load(&one_account(f, None))
            .unwrap_err()
            .to_string()
            .contains("IsTruncated"));
    }

    #[test]
    fn trust_policy_without_resource_compiles_and_bad_trust_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let role = |trust: Value| {
            serde_json::json!({
                "RoleDetailList": [{
                    "Path": "/service/", "RoleName": "App", "RoleId": "AROAAPP0000000000000",
                    "Arn": "arn:aws:iam::111122223333:role/service/App",
                    "AssumeRolePolicyDocument": trust,
                    "InstanceProfileList": [], "RolePolicyList": [], "AttachedManagedPolicies": [],
                    "Tags": [], "RoleLastUsed": {}, "MaxSessionDuration": 7200
                }]
            })
            .to_string()
        };
        let good = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]});
        let f = write(
            tmp.path(),
            "a.json",
            &role(Value::String(url_encode(&good.to_string()))),
        );
        let d = Directory::load(&one_account(f, None)).unwrap();
        let r = d
            .role("arn:aws:iam::111122223333:role/service/App")
            .unwrap();
        assert_eq!(r.max_session_duration, 7200);
        // Sessions name the role without its path.
        let s = d
            .principal("arn:aws:sts::111122223333:assumed-role/App/i-123")
            .unwrap();
        assert_eq!(
            s.role_arn(),
            Some("arn:aws:iam::111122223333:role/service/App")
        );

        let bad = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRole"}]});
        let f = write(tmp.path(), "b.json", &role(bad));
        let msg = Directory::load(&one_account(f, None))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("role/service/App") && msg.contains("AssumeRolePolicyDocument"),
            "{msg}"
        );
    }

    #[test]
    fn credentials_errors_name_the_fault() {
        let tmp = tempfile::tempdir().unwrap();
        let details = write(
            tmp.path(),
            "a.json",
            &user_with_inline(&serde_json::from_str(ALLOW_ENCRYPT).unwrap()),
        );
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let cases = [
            (
                format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAGHOST00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/ghost","Status":"Active"}}]}}"#),
                "user/ghost",
            ),
            (
                format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAROOT999900000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::999999999999:root"}}]}}"#),
                "999999999999",
            ),
            (
                format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice","Status":"Disabled"}}]}}"#),
                "Disabled",
            ),
            (
                format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice"}},{{"AccessKeyId":"AKIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice"}}]}}"#),
                "more than once",
            ),
            (
                format!(r#"{{"AccessKeys":[{{"AccessKeyId":"ASIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice"}}]}}"#),
                "reserved",
            ),
            (
                r#"{"CertificateBindings":[{"SubjectCN":"ghost","Principal":"arn:aws:iam::111122223333:user/ghost"}]}"#.to_string(),
                "user/ghost",
            ),
            (
                r#"{"CertificateBindings":[{"SubjectCN":"x","SanUri":"spiffe://x","Principal":"arn:aws:iam::111122223333:user/alice"}]}"#.to_string(),
                "exactly one",
            ),
            (r#"{"AccessKey":[]}"#.to_string(), "unknown field"),
        ];
        for (text, needle) in cases {
            let c = write(tmp.path(), "credentials.json", &text);
            let msg = Directory::load(&one_account(details.clone(), Some(c)))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert!(!msg.contains(secret), "{msg}");
        }
        // Roots and role sessions of known accounts may be bound; the root may own keys.
        let ok = format!(
            r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAROOT000000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:root"}}],
                "CertificateBindings":[{{"SanUri":"spiffe://corp/root","Principal":"arn:aws:iam::111122223333:root"}}]}}"#
        );
        let c = write(tmp.path(), "credentials.json", &ok);
        let d = Directory::load(&one_account(details, Some(c))).unwrap();
        assert_eq!(
            d.access_key("AKIAROOT000000000001")
                .map(|k| k.principal_arn.as_str()),
            Some("arn:aws:iam::111122223333:root")
        );
        assert_eq!(
            d.cert_bindings()[0].matcher,
            CertMatcher::SanUri("spiffe://corp/root".into())
        );
    }

    #[test]
    fn bad_guardrail_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let details = write(tmp.path(), "a.json", "{}");
        let g = write(
            tmp.path(),
            "scp.json",
            r#"{"Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}"#,
        );
        let mut files = one_account(details, None);
        files.accounts[0].guardrails.push(g);
        let msg = Directory::load(&files).unwrap_err().to_string();
        assert!(
            msg.contains("guardrail") && msg.contains("scp.json") && msg.contains("Effect"),
            "{msg}"
        );
    }

    #[test]
    fn reload_keeps_old_directory_on_error() {
        let tmp = tempfile::tempdir().unwrap();
        let details = write(
            tmp.path(),
            "a.json",
            &user_with_inline(&serde_json::from_str(ALLOW_ENCRYPT).unwrap()),
        );
        let files = one_account(details.clone(), None);
        let handle = DirectoryHandle::load(&files).unwrap();
        let before = handle.current();
        assert!(before
            .principal("arn:aws:iam::111122223333:user/alice")
            .is_some());

        write(tmp.path(), "a.json", "{ broken");
        assert!(handle.reload(&files).is_err());
        let after = handle.current();
        assert!(Arc::ptr_eq(&before, &after));
        assert!(after
            .principal("arn:aws:iam::111122223333:user/alice")
            .is_some());

        // A good reload swaps atomically; holders of the old Arc keep their view.
        write(tmp.path(), "a.json", r#"{"UserDetailList":[]}"#);
        handle.reload(&files).unwrap();
        assert!(handle
            .current()
            .principal("arn:aws:iam::111122223333:user/alice")
            .is_none());
        assert!(before
            .principal("arn:aws:iam::111122223333:user/alice")
            .is_some());
    }

    #[test]
    fn fixture_files_parse_as_directory_files_toml() {
        let t: DirectoryFiles = toml::from_str(
            r#"
credentials = "credentials.json"
[[accounts]]
account_id = "111122223333"
authorization_details = "111122223333.json"
guardrails = ["scp.json"]
"#,
        )
        .unwrap();
        assert_eq!(t.accounts[0].guardrails.len(), 1);
        assert!(Directory::load(&DirectoryFiles::default())
            .unwrap()
            .principal("x")
            .is_none());
    }
}
