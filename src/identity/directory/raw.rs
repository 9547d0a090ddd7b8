//! The raw IAM shapes: serde mirrors of `aws iam get-account-authorization-details` output
//! and of the credentials file, exactly as read, before any checking.

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

/// `get-account-authorization-details` output of one account.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawAuthDetails {
    #[serde(default)]
    pub(super) user_detail_list: Vec<RawUser>,
    #[serde(default)]
    pub(super) group_detail_list: Vec<RawGroup>,
    #[serde(default)]
    pub(super) role_detail_list: Vec<RawRole>,
    #[serde(default)]
    pub(super) policies: Vec<RawManagedPolicy>,
    #[serde(default)]
    pub(super) is_truncated: bool,
}

/// An entry of `UserDetailList`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawUser {
    #[serde(default = "root_path")]
    pub(super) path: String,
    pub(super) user_name: String,
    pub(super) user_id: String,
    pub(super) arn: String,
    #[serde(default)]
    pub(super) group_list: Vec<String>,
    #[serde(default)]
    pub(super) attached_managed_policies: Vec<RawAttached>,
    #[serde(default)]
    pub(super) user_policy_list: Vec<RawInline>,
    #[serde(default)]
    pub(super) permissions_boundary: Option<RawBoundary>,
    #[serde(default)]
    pub(super) tags: Vec<RawTag>,
}

/// An entry of `GroupDetailList`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawGroup {
    #[serde(default = "root_path")]
    pub(super) path: String,
    pub(super) group_name: String,
    pub(super) arn: String,
    #[serde(default)]
    pub(super) group_policy_list: Vec<RawInline>,
    #[serde(default)]
    pub(super) attached_managed_policies: Vec<RawAttached>,
}

/// An entry of `RoleDetailList`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawRole {
    #[serde(default = "root_path")]
    pub(super) path: String,
    pub(super) role_name: String,
    pub(super) role_id: String,
    pub(super) arn: String,
    pub(super) assume_role_policy_document: Value,
    #[serde(default)]
    pub(super) role_policy_list: Vec<RawInline>,
    #[serde(default)]
    pub(super) attached_managed_policies: Vec<RawAttached>,
    #[serde(default)]
    pub(super) permissions_boundary: Option<RawBoundary>,
    #[serde(default)]
    pub(super) tags: Vec<RawTag>,
    #[serde(default)]
    pub(super) max_session_duration: Option<u32>,
}

/// An attached managed policy (by ARN).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawAttached {
    pub(super) policy_arn: String,
}

/// An inline policy.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawInline {
    pub(super) policy_name: String,
    pub(super) policy_document: Value,
}

/// A permissions boundary.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawBoundary {
    #[serde(default)]
    pub(super) permissions_boundary_type: Option<String>,
    pub(super) permissions_boundary_arn: String,
}

/// A user or role tag.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawTag {
    pub(super) key: String,
    pub(super) value: String,
}

/// An entry of `Policies`: a managed policy with its versions.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawManagedPolicy {
    pub(super) policy_name: String,
    pub(super) arn: String,
    #[serde(default)]
    pub(super) default_version_id: Option<String>,
    #[serde(default)]
    pub(super) policy_version_list: Vec<RawPolicyVersion>,
}

/// One version of a managed policy.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawPolicyVersion {
    pub(super) document: Value,
    pub(super) version_id: String,
    #[serde(default)]
    pub(super) is_default_version: bool,
}

/// The credentials file.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct RawCredentials {
    #[serde(default)]
    pub(super) access_keys: Vec<RawAccessKey>,
    #[serde(default)]
    pub(super) certificate_bindings: Vec<RawCertBinding>,
}

/// An entry of `AccessKeys`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawAccessKey {
    pub(super) access_key_id: String,
    #[serde(deserialize_with = "crate::redact::zeroizing_string")]
    pub(super) secret_access_key: Zeroizing<String>,
    pub(super) user_arn: String,
    #[serde(default)]
    pub(super) status: Option<String>,
}

/// An entry of `CertificateBindings`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertBinding {
    #[serde(rename = "SubjectCN", default)]
    pub(super) subject_cn: Option<String>,
    #[serde(rename = "SanUri", default)]
    pub(super) san_uri: Option<String>,
    #[serde(rename = "Principal")]
    pub(super) principal: String,
}

/// The default IAM path.
fn root_path() -> String {
    "/".into()
}
