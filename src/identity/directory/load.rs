//! Loading: the files that make up the directory, the errors that name what is wrong, policy
//! documents decoded and compiled, and the credentials file (access keys and certificate
//! bindings). One account's authorization details are compiled by `compile`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::super::arn::is_account_id;
use super::super::certs::{CertBinding, CertMatcher};
use super::compile::load_account;
use super::model::{AccessKeyEntry, Directory};
use super::raw::{RawAccessKey, RawAuthDetails, RawCertBinding, RawCredentials};
use super::NamedArcPolicy;
use crate::encoding::percent_decode_strict;
use crate::policy::{Policy, PolicyKind};

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

/// An [`IdentityError::Invalid`] with `msg`.
pub(super) fn invalid(msg: impl Into<String>) -> IdentityError {
    IdentityError::Invalid(msg.into())
}

impl Directory {
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
            let raw = read_authorization_details(&af.authorization_details)?;
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
}

/// An account's `get-account-authorization-details` output; a truncated one is refused.
fn read_authorization_details(path: &Path) -> Result<RawAuthDetails, IdentityError> {
    let text = read_file(path)?;
    let raw: RawAuthDetails = serde_json::from_str(&text).map_err(|e| IdentityError::Format {
        path: path.to_path_buf(),
        message: format!("not valid authorization details JSON: {e}"),
    })?;
    if raw.is_truncated {
        return Err(IdentityError::Format {
            path: path.to_path_buf(),
            message: "IsTruncated is true: the output is incomplete (let the CLI paginate)".into(),
        });
    }
    Ok(raw)
}

/// The text of `path`, or [`IdentityError::Read`].
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

/// Decodes and compiles a policy document of `principal` as `kind`; errors name the
/// account, principal and policy.
pub(super) fn compile(
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

/// The account's guardrail files, each compiled and named by its file stem.
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

/// Reads the credentials file into `dir`: active access keys of known users and roots, and
/// certificate bindings to users, roots or role sessions.
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
        if let Some(entry) = access_key(dir, &mut all_ids, i, k).map_err(ferr)? {
            dir.access_keys.insert(entry.access_key_id.clone(), entry);
        }
    }
    for (i, b) in raw.certificate_bindings.into_iter().enumerate() {
        let binding = cert_binding(dir, i, b).map_err(ferr)?;
        dir.cert_bindings.push(binding);
    }
    Ok(())
}

/// Checks access key `i` of the credentials file (`seen`: the ids so far); `None` when it
/// is inactive. `Err` is the message.
fn access_key(
    dir: &Directory,
    seen: &mut HashSet<String>,
    i: usize,
    k: RawAccessKey,
) -> Result<Option<AccessKeyEntry>, String> {
    let at = format!("AccessKeys[{i}]");
    let id = k.access_key_id.trim();
    if !(16..=128).contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "{at}: AccessKeyId '{id}' must be 16 to 128 uppercase letters or digits"
        ));
    }
    if id.starts_with(super::super::sessions::SESSION_KEY_PREFIX) {
        return Err(format!(
            "{at}: AccessKeyId '{id}': the ASIA prefix is reserved for session credentials"
        ));
    }
    if !seen.insert(id.to_string()) {
        return Err(format!("{at}: AccessKeyId '{id}' is listed more than once"));
    }
    if k.secret_access_key.is_empty() || k.secret_access_key.chars().any(char::is_whitespace) {
        return Err(format!(
            "{at} ({id}): SecretAccessKey must be non-empty without whitespace"
        ));
    }
    let active = match k.status.as_deref() {
        None | Some("Active") => true,
        Some("Inactive") => false,
        Some(other) => {
            return Err(format!(
                "{at} ({id}): Status must be 'Active' or 'Inactive', not '{other}'"
            ))
        }
    };
    let owner = dir.principals.get(&k.user_arn).ok_or_else(|| {
        format!(
            "{at} ({id}): UserArn {} is not a user or account root in the directory",
            k.user_arn
        )
    })?;
    Ok(active.then(|| AccessKeyEntry {
        access_key_id: id.to_string(),
        account: owner.account.clone(),
        secret_access_key: k.secret_access_key,
        principal_arn: k.user_arn,
    }))
}

/// Checks certificate binding `i` of the credentials file. `Err` is the message.
fn cert_binding(dir: &Directory, i: usize, b: RawCertBinding) -> Result<CertBinding, String> {
    let at = format!("CertificateBindings[{i}]");
    let matcher = match (b.subject_cn, b.san_uri) {
        (Some(cn), None) if !cn.is_empty() => CertMatcher::SubjectCn(cn),
        (None, Some(uri)) if !uri.is_empty() => CertMatcher::SanUri(uri),
        _ => {
            return Err(format!(
                "{at}: set exactly one non-empty SubjectCN or SanUri"
            ))
        }
    };
    let arn = b.principal;
    if dir.roles.contains_key(&arn) {
        return Err(format!(
            "{at}: Principal {arn} is a role; bind an assumed-role session ARN (arn:aws:sts::<acct>:assumed-role/<role>/<session>) or a user"
        ));
    }
    if dir.principal(&arn).is_none() {
        return Err(format!(
            "{at}: Principal {arn} is not a user, account root or role session in the directory"
        ));
    }
    if dir.cert_bindings.iter().any(|c| c.matcher == matcher) {
        return Err(format!("{at}: the same certificate matcher is bound twice"));
    }
    Ok(CertBinding {
        matcher,
        principal_arn: arn,
    })
}
