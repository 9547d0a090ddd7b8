//! ExplainAccess: the decision a live request would get, with its deciding statements.
//!
//! The target principal is resolved from the directory exactly as authentication resolves it,
//! the key is resolved as that principal would resolve it, and the request context and the
//! policies come from the same code as a live request ([`super::authz`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::authz::AuthzRequest;
use super::operation::{request_parameters, response_elements};
use super::xks::{key_ref, RequestMetadata, XKS_ACTIONS};
use super::{Kms, KmsError};
use crate::identity::{AuthMethod, Caller};
use crate::policy::{DecidingStatement, Decision};

/// ExplainAccess input.
#[derive(Debug, Clone, Default)]
pub struct ExplainRequest {
    /// The principal ARN to evaluate for.
    pub principal: String,
    /// The action, e.g. `kms:Decrypt`.
    pub action: String,
    /// Key id, key ARN, alias name or alias ARN.
    pub key_id: String,
    /// The encryption context to evaluate with.
    pub encryption_context: BTreeMap<String, String>,
    /// The source address to evaluate with (`aws:SourceIp`), if any: an IP address.
    pub source_ip: Option<String>,
    /// When given, the request is evaluated as the XKS door evaluates one: these are its
    /// `requestMetadata` members by their XKS names (`awsPrincipalArn`, `kmsViaService`,
    /// ...), filling the `xks:` condition keys; `key_id` may then be an external key id
    /// (`alias.<name>`), and the principal is the XKS key store's.
    pub xks_request_metadata: BTreeMap<String, String>,
}

request_parameters! {
    ExplainRequest { principal, action, key_id, encryption_context, source_ip, xks_request_metadata };
}

/// ExplainAccess output.
#[derive(Debug, Clone)]
pub struct ExplainResponse {
    /// The decision, with its deciding statements.
    pub decision: Decision,
    /// The resource ARN evaluated.
    pub resource: String,
    /// What a live request would be told (the AccessDenied message), or a summary.
    pub message: String,
}

impl ExplainResponse {
    /// `Allow` or `Deny`.
    pub fn decision_name(&self) -> &'static str {
        if self.decision.is_allow() {
            "Allow"
        } else {
            "Deny"
        }
    }

    /// Why, as a name (`ExplicitDeny`, `ImplicitDeny`, ...).
    pub fn reason_name(&self) -> String {
        format!("{:?}", self.decision.reason)
    }
}

response_elements!(ExplainResponse { decision = Self::decision_name, reason = Self::reason_name });

/// The actions ExplainAccess knows how to evaluate on a key.
const KEY_ACTIONS: &[&str] = &[
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:UpdateKeyDescription",
    "kms:GetKeyLastUsage",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ListResourceTags",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:ListKeyPolicies",
    "kms:CreateGrant",
    "kms:ListGrants",
    "kms:RevokeGrant",
    "kms:RetireGrant",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    // Asymmetric keys, signatures and MACs.
    "kms:Sign",
    "kms:Verify",
    "kms:GetPublicKey",
    "kms:GenerateMac",
    "kms:VerifyMac",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:GetKeyRotationStatus",
    "kms:RotateKeyOnDemand",
    "kms:ListKeyRotations",
    "kms:GetParametersForImport",
    "kms:ImportKeyMaterial",
    "kms:DeleteImportedKeyMaterial",
    // Multi-Region keys.
    "kms:ReplicateKey",
    "kms:UpdatePrimaryRegion",
];

/// The actions ExplainAccess evaluates on `*`, without a key (the custom key store
/// operations: identity policies decide them, as in AWS). `key_id` must then be empty.
const ACCOUNT_ACTIONS: &[&str] = &[
    "kms:CreateCustomKeyStore",
    "kms:ConnectCustomKeyStore",
    "kms:DisconnectCustomKeyStore",
    "kms:UpdateCustomKeyStore",
    "kms:DeleteCustomKeyStore",
    "kms:DescribeCustomKeyStores",
    // Creating a key (a replica's Region authorizes ReplicateKey's caller for it).
    "kms:CreateKey",
];

/// The action of an ExplainAccess request, in its canonical spelling, and whether it is one
/// of the [`ACCOUNT_ACTIONS`].
fn known_action(action: &str) -> Result<(&'static str, bool), KmsError> {
    let find = |list: &[&'static str]| {
        list.iter()
            .find(|a| a.eq_ignore_ascii_case(action))
            .copied()
    };
    match (find(KEY_ACTIONS), find(ACCOUNT_ACTIONS)) {
        (Some(a), _) => Ok((a, false)),
        (None, Some(a)) => Ok((a, true)),
        (None, None) => Err(KmsError::validation(
            "action",
            &format!(
                "Member must be one of {:?}",
                [KEY_ACTIONS, ACCOUNT_ACTIONS].concat()
            ),
        )),
    }
}

impl Kms {
    /// Explains whether `req.principal` may perform `req.action` on `req.key_id` (or, for a
    /// custom key store action, on `*`). The caller needs `p11kms:ExplainAccess`.
    pub async fn explain_access(
        &self,
        caller: &Caller,
        req: ExplainRequest,
    ) -> Result<ExplainResponse, KmsError> {
        let source_ip: Option<IpAddr> =
            match req.source_ip.as_deref() {
                None | Some("") => None,
                Some(ip) => Some(ip.parse().map_err(|_| {
                    KmsError::validation("sourceIp", "Member must be an IP address")
                })?),
            };
        let (action, on_account) = known_action(&req.action)?;
        let xks = xks_metadata(&req, action, on_account)?;
        if on_account && !req.key_id.is_empty() {
            return Err(KmsError::Validation(format!(
                "{action} applies to no key: leave the key out."
            )));
        }
        self.authorize(caller, AuthzRequest::new("p11kms:ExplainAccess", "*"))?;
        let principal = self
            .directory
            .current()
            .principal(&req.principal)
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Principal {} is not in the identity directory.",
                    req.principal.chars().take(256).collect::<String>()
                ))
            })?;
        let target = Caller::new(principal, AuthMethod::Internal, source_ip, true);
        if on_account {
            return Ok(self.explain_on_account(&target, action));
        }
        let key_id = match &xks {
            Some(_) => key_ref(&req.key_id),
            None => req.key_id.clone(),
        };
        let resolved = self.resolve(&target, &key_id, true)?;
        let authz = AuthzRequest::on_key(action, &resolved).context(&req.encryption_context);
        let authz = xks
            .iter()
            .flat_map(|m| m.conditions())
            .fold(authz, |a, (k, v)| a.with(k, v));
        let decision = self.decide(&target, &authz);
        let message = if decision.is_allow() {
            format!("Allowed: {}", decision.summary())
        } else {
            decision.aws_message(&target.principal_arn, action, &resolved.key.arn)
        };
        Ok(ExplainResponse {
            resource: resolved.key.arn.clone(),
            decision,
            message,
        })
    }
}

impl Kms {
    /// The decision on an action on `*` (identity policies only).
    fn explain_on_account(&self, target: &Caller, action: &'static str) -> ExplainResponse {
        let decision = self.decide(target, &AuthzRequest::new(action, "*"));
        let message = if decision.is_allow() {
            format!("Allowed: {}", decision.summary())
        } else {
            decision.aws_message(&target.principal_arn, action, "*")
        };
        ExplainResponse {
            resource: "*".into(),
            decision,
            message,
        }
    }
}

/// The XKS `requestMetadata` to evaluate with, when given: only for the actions the XKS door
/// authorizes.
fn xks_metadata(
    req: &ExplainRequest,
    action: &str,
    on_account: bool,
) -> Result<Option<RequestMetadata>, KmsError> {
    if req.xks_request_metadata.is_empty() {
        return Ok(None);
    }
    if on_account || !XKS_ACTIONS.contains(&action) {
        return Err(KmsError::Validation(format!(
            "xksRequestMetadata applies to {} only, not {action}.",
            XKS_ACTIONS.join(", ")
        )));
    }
    RequestMetadata::from_members(&req.xks_request_metadata).map(Some)
}

/// The wire name of a deciding statement's policy type.
pub fn policy_type_name(d: &DecidingStatement) -> String {
    format!("{:?}", d.policy_type)
}
