//! `KmsError`: one variant per AWS exception name. Doors map it to their wire in one place
//! each (`api::grpc::status`); nothing else in the crate invents wire errors.

use crate::hsm::{HsmError, HsmErrorKind};
use crate::store::StoreError;

/// An operation's failure, named as AWS KMS names it. The message is safe to show the caller:
/// it never carries plaintext, key material, PINs or policy text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Disabled(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    KeyUnavailable(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    InvalidCiphertext(String),
    #[error("{0}")]
    IncorrectKey(String),
    #[error("{0}")]
    InvalidKeyUsage(String),
    #[error("{0}")]
    MalformedPolicyDocument(String),
    #[error("{0}")]
    InvalidGrantToken(String),
    #[error("{0}")]
    InvalidGrantId(String),
    #[error("{0}")]
    InvalidAliasName(String),
    #[error("{0}")]
    InvalidArn(String),
    #[error("{0}")]
    InvalidMarker(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    UnsupportedOperation(String),
    #[error("{0}")]
    Throttling(String),
    #[error("{0}")]
    DependencyTimeout(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    InvalidMac(String),
    #[error("{0}")]
    ExpiredImportToken(String),
    #[error("{0}")]
    InvalidImportToken(String),
    #[error("{0}")]
    IncorrectKeyMaterial(String),
    #[error("{0}")]
    Conflict(String),
    /// A dry run that passed every check a real call makes (see [`KmsError::dry_run`]).
    #[error("{0}")]
    DryRunOperation(String),
    /// A `CustomKeyStoreId` (or name) that names no custom key store of the caller's account.
    #[error("{0}")]
    CustomKeyStoreNotFound(String),
    /// The custom key store's connection state does not allow the operation.
    #[error("{0}")]
    CustomKeyStoreInvalidState(String),
    /// DeleteCustomKeyStore on a store that still has keys.
    #[error("{0}")]
    CustomKeyStoreHasCmks(String),
    /// Another custom key store of the account has this name.
    #[error("{0}")]
    CustomKeyStoreNameInUse(String),
    /// No `[[hsm.cluster]]` has this id.
    #[error("{0}")]
    CloudHsmClusterNotFound(String),
    /// The cluster already backs another custom key store.
    #[error("{0}")]
    CloudHsmClusterInUse(String),
    /// UpdateCustomKeyStore named a cluster that is not the store's own (p11kms's clusters
    /// are distinct devices, so no other cluster is related).
    #[error("{0}")]
    CloudHsmClusterNotRelated(String),
    /// The trust anchor certificate is not the configured cluster's.
    #[error("{0}")]
    IncorrectTrustAnchor(String),
    /// One of the exceptions of external key stores and their keys (`XksProxy*`, `XksKey*`).
    #[error("{1}")]
    Xks(XksException, String),
}

crate::wire_enum::wire_enum!(
    /// The exceptions AWS defines for external key stores (CreateCustomKeyStore,
    /// UpdateCustomKeyStore) and the keys in them (CreateKey).
    XksException {
        UriInUse = "XksProxyUriInUseException",
        UriEndpointInUse = "XksProxyUriEndpointInUseException",
        UriUnreachable = "XksProxyUriUnreachableException",
        IncorrectAuthenticationCredential = "XksProxyIncorrectAuthenticationCredentialException",
        InvalidResponse = "XksProxyInvalidResponseException",
        InvalidConfiguration = "XksProxyInvalidConfigurationException",
        VpcEndpointServiceNotFound = "XksProxyVpcEndpointServiceNotFoundException",
        KeyNotFound = "XksKeyNotFoundException",
        KeyInvalidConfiguration = "XksKeyInvalidConfigurationException",
        KeyAlreadyInUse = "XksKeyAlreadyInUseException",
    }
);

impl KmsError {
    /// The AWS exception name, as it appears in `__type` and in gRPC `ErrorInfo.reason`.
    pub fn aws_name(&self) -> &'static str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::KeyUnavailable(_) => "KeyUnavailableException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::InvalidCiphertext(_) => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            KmsError::MalformedPolicyDocument(_) => "MalformedPolicyDocumentException",
            KmsError::InvalidGrantToken(_) => "InvalidGrantTokenException",
            KmsError::InvalidGrantId(_) => "InvalidGrantIdException",
            KmsError::InvalidAliasName(_) => "InvalidAliasNameException",
            KmsError::InvalidArn(_) => "InvalidArnException",
            KmsError::InvalidMarker(_) => "InvalidMarkerException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::Tag(_) => "TagException",
            KmsError::UnsupportedOperation(_) => "UnsupportedOperationException",
            KmsError::Throttling(_) => "ThrottlingException",
            KmsError::DependencyTimeout(_) => "DependencyTimeoutException",
            KmsError::Internal(_) => "KMSInternalException",
            KmsError::InvalidSignature(_) => "KMSInvalidSignatureException",
            KmsError::InvalidMac(_) => "KMSInvalidMacException",
            KmsError::ExpiredImportToken(_) => "ExpiredImportTokenException",
            KmsError::InvalidImportToken(_) => "InvalidImportTokenException",
            KmsError::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            KmsError::Conflict(_) => "ConflictException",
            KmsError::DryRunOperation(_) => "DryRunOperationException",
            KmsError::CustomKeyStoreNotFound(_) => "CustomKeyStoreNotFoundException",
            KmsError::CustomKeyStoreInvalidState(_) => "CustomKeyStoreInvalidStateException",
            KmsError::CustomKeyStoreHasCmks(_) => "CustomKeyStoreHasCMKsException",
            KmsError::CustomKeyStoreNameInUse(_) => "CustomKeyStoreNameInUseException",
            KmsError::CloudHsmClusterNotFound(_) => "CloudHsmClusterNotFoundException",
            KmsError::CloudHsmClusterInUse(_) => "CloudHsmClusterInUseException",
            KmsError::CloudHsmClusterNotRelated(_) => "CloudHsmClusterNotRelatedException",
            KmsError::IncorrectTrustAnchor(_) => "IncorrectTrustAnchorException",
            KmsError::Xks(e, _) => e.as_str(),
        }
    }

    /// The error another p11kms answered with, from its AWS exception name (a peer Region's
    /// gRPC `ErrorInfo.reason`): the exceptions a peer's region operations answer keep their
    /// name; any other is KMSInternalException with the name in the message.
    pub fn from_aws_name(name: &str, message: String) -> KmsError {
        let make: fn(String) -> KmsError = match name {
            "NotFoundException" => KmsError::NotFound,
            "AccessDeniedException" => KmsError::AccessDenied,
            "DisabledException" => KmsError::Disabled,
            "KMSInvalidStateException" => KmsError::InvalidState,
            "KeyUnavailableException" => KmsError::KeyUnavailable,
            "AlreadyExistsException" => KmsError::AlreadyExists,
            "ValidationException" => KmsError::Validation,
            "MalformedPolicyDocumentException" => KmsError::MalformedPolicyDocument,
            "LimitExceededException" => KmsError::LimitExceeded,
            "TagException" => KmsError::Tag,
            "UnsupportedOperationException" => KmsError::UnsupportedOperation,
            "ConflictException" => KmsError::Conflict,
            "DependencyTimeoutException" => KmsError::DependencyTimeout,
            _ => return KmsError::Internal(format!("{name}: {message}")),
        };
        make(message)
    }

    /// The caller-safe message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The answer to a dry run that would have succeeded (AWS's wording).
    pub fn dry_run() -> KmsError {
        KmsError::DryRunOperation(
            "The request would have succeeded, but the DryRun option is set.".into(),
        )
    }

    /// A ValidationException in AWS's phrasing for one member.
    pub fn validation(member: &str, constraint: &str) -> KmsError {
        KmsError::Validation(format!(
            "1 validation error detected: Value at '{member}' failed to satisfy constraint: {constraint}"
        ))
    }
}

impl From<StoreError> for KmsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(m) => KmsError::AlreadyExists(m),
            StoreError::NotFound(m) => KmsError::NotFound(m),
            StoreError::LimitExceeded(m) => KmsError::LimitExceeded(m),
            // The engine retries a conflict on fresh state; one that reaches here lost every
            // retry to other writers.
            StoreError::Conflict(_) => KmsError::Conflict(
                "The key was changed by another request at the same time; retry the request."
                    .into(),
            ),
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "metadata store unavailable");
                KmsError::DependencyTimeout(
                    "The metadata store cannot be reached; the change was not applied. You can \
                     retry the request."
                        .into(),
                )
            }
            StoreError::Corrupt(_) | StoreError::Database(_) => {
                tracing::error!(error = %e, "metadata store failure");
                KmsError::Internal("The metadata store failed; the request was not applied.".into())
            }
        }
    }
}

impl From<HsmError> for KmsError {
    fn from(e: HsmError) -> Self {
        match e.kind {
            HsmErrorKind::AuthFailed => {
                KmsError::InvalidCiphertext("The ciphertext is invalid.".into())
            }
            HsmErrorKind::Busy => {
                KmsError::Throttling("The HSM request queue is full; retry with backoff.".into())
            }
            HsmErrorKind::Timeout => {
                tracing::warn!(error = %e, "no HSM session became free in time");
                KmsError::DependencyTimeout(
                    "No HSM session became available in time; retry the request.".into(),
                )
            }
            HsmErrorKind::Unavailable | HsmErrorKind::ObjectNotFound => {
                tracing::error!(error = %e, "HSM unavailable");
                KmsError::KeyUnavailable(format!("The HSM is unavailable: {e}"))
            }
            HsmErrorKind::BlobRejected => {
                tracing::error!(error = %e, "a wrapped key blob failed the device's check");
                KmsError::Internal(
                    "The HSM refused this key version's wrapped key material: its stored blob \
                     was altered or belongs to another key."
                        .into(),
                )
            }
            _ => {
                tracing::error!(error = %e, "HSM failure");
                KmsError::Internal(format!("HSM failure: {e}"))
            }
        }
    }
}
