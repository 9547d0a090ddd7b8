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
//!
//! # Shape
//!
//! - `raw`: the serde shapes of the files, as read.
//! - `load`: the file list ([`DirectoryFiles`]), [`IdentityError`], [`Directory::load`],
//!   policy documents, the credentials file; `compile` turns one account into the model.
//! - `model`: [`PrincipalEntry`], [`RoleEntry`], [`AccessKeyEntry`], [`ResolvedPrincipal`]
//!   and the [`Directory`] lookups.
//! - `handle`: [`DirectoryHandle`], the reloadable shared directory.

use std::sync::Arc;

use crate::policy::Policy;

mod compile;
mod handle;
mod load;
mod model;
mod raw;
#[cfg(test)]
mod tests;

pub use handle::DirectoryHandle;
pub use load::{AccountFiles, DirectoryFiles, IdentityError};
pub use model::{
    named_policies, AccessKeyEntry, Directory, EntryKind, PrincipalEntry, PrincipalType,
    ResolvedPrincipal, RoleEntry,
};

/// Default `MaxSessionDuration` of a role, in seconds.
pub const DEFAULT_MAX_SESSION_DURATION: u32 = 3600;
/// Largest `MaxSessionDuration` IAM allows, in seconds.
pub const MAX_MAX_SESSION_DURATION: u32 = 43_200;

/// A policy with the name it is reported under.
pub type NamedArcPolicy = (String, Arc<Policy>);
