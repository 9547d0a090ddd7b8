//! The one mapping from `KmsError` to gRPC: a `google.rpc.Status` whose code follows the
//! architecture's table and whose `ErrorInfo.reason` is the AWS exception name.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::KmsError;

/// The `ErrorInfo.domain` of every p11kms error.
pub const ERROR_DOMAIN: &str = "p11kms.v1";

/// The gRPC code for an AWS exception.
pub fn code_for(e: &KmsError) -> Code {
    match e {
        KmsError::NotFound(_)
        | KmsError::CustomKeyStoreNotFound(_)
        | KmsError::CloudHsmClusterNotFound(_) => Code::NotFound,
        KmsError::CustomKeyStoreInvalidState(_) | KmsError::CustomKeyStoreHasCmks(_) => {
            Code::FailedPrecondition
        }
        KmsError::CustomKeyStoreNameInUse(_) | KmsError::CloudHsmClusterInUse(_) => {
            Code::AlreadyExists
        }
        KmsError::CloudHsmClusterNotRelated(_) | KmsError::IncorrectTrustAnchor(_) => {
            Code::InvalidArgument
        }
        KmsError::Xks(e, _) => xks_code(*e),
        KmsError::AccessDenied(_) => Code::PermissionDenied,
        KmsError::Disabled(_) | KmsError::InvalidState(_) => Code::FailedPrecondition,
        KmsError::KeyUnavailable(_) | KmsError::DependencyTimeout(_) => Code::Unavailable,
        KmsError::AlreadyExists(_) => Code::AlreadyExists,
        KmsError::LimitExceeded(_) | KmsError::Throttling(_) => Code::ResourceExhausted,
        KmsError::Internal(_) => Code::Internal,
        KmsError::Validation(_)
        | KmsError::InvalidCiphertext(_)
        | KmsError::IncorrectKey(_)
        | KmsError::InvalidKeyUsage(_)
        | KmsError::MalformedPolicyDocument(_)
        | KmsError::InvalidGrantToken(_)
        | KmsError::InvalidGrantId(_)
        | KmsError::InvalidAliasName(_)
        | KmsError::InvalidArn(_)
        | KmsError::InvalidMarker(_)
        | KmsError::Tag(_)
        | KmsError::UnsupportedOperation(_) => Code::InvalidArgument,
        KmsError::InvalidSignature(_) | KmsError::InvalidMac(_) => Code::InvalidArgument,
        KmsError::ExpiredImportToken(_)
        | KmsError::InvalidImportToken(_)
        | KmsError::IncorrectKeyMaterial(_) => Code::InvalidArgument,
        KmsError::Conflict(_) => Code::Aborted,
        KmsError::DryRunOperation(_) => Code::FailedPrecondition,
    }
}

/// The gRPC code of an external key store exception.
fn xks_code(e: crate::core::XksException) -> Code {
    use crate::core::XksException as X;
    match e {
        X::UriInUse | X::UriEndpointInUse | X::KeyAlreadyInUse => Code::AlreadyExists,
        X::UriUnreachable => Code::Unavailable,
        X::KeyNotFound | X::VpcEndpointServiceNotFound => Code::NotFound,
        X::IncorrectAuthenticationCredential
        | X::InvalidResponse
        | X::InvalidConfiguration
        | X::KeyInvalidConfiguration => Code::FailedPrecondition,
    }
}

/// Builds a gRPC status with an `ErrorInfo` naming an AWS exception.
pub fn with_reason(code: Code, reason: &str, message: String) -> Status {
    let details =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
    Status::with_error_details(code, message, details)
}

/// Converts an engine error to the gRPC status the caller sees.
pub fn to_status(e: KmsError) -> Status {
    with_reason(code_for(&e), e.aws_name(), e.message())
}

/// UNAUTHENTICATED, with AWS's name for an unknown caller.
pub fn unauthenticated(message: &str) -> Status {
    with_reason(
        Code::Unauthenticated,
        "UnrecognizedClientException",
        message.to_string(),
    )
}

/// The AWS exception name carried by a status, if any (clients and tests use it).
pub fn aws_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips_through_status() {
        let s = to_status(KmsError::InvalidCiphertext("x".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            aws_reason(&s).as_deref(),
            Some("InvalidCiphertextException")
        );
        let s = to_status(KmsError::AccessDenied("no".into()));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(aws_reason(&s).as_deref(), Some("AccessDeniedException"));
        assert_eq!(
            code_for(&KmsError::Disabled(String::new())),
            Code::FailedPrecondition
        );
        assert_eq!(
            code_for(&KmsError::CustomKeyStoreNotFound(String::new())),
            Code::NotFound
        );
        assert_eq!(
            code_for(&KmsError::Throttling(String::new())),
            Code::ResourceExhausted
        );
        let s = to_status(KmsError::dry_run());
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(aws_reason(&s).as_deref(), Some("DryRunOperationException"));
    }
}
