//! Every engine operation in one shape: `Kms::<op>(&Caller, <Op>Request) -> Result<<Op>Response,
//! KmsError>`.
//!
//! An operation is its request type. The request names the operation ([`Operation::NAME`],
//! the AWS spelling), says what the audit trail may record of it ([`RequestParameters`]), and
//! runs on the engine ([`Operation::run`]); its response says what the trail records of the
//! answer ([`ResponseElements`]). Doors only translate: each door has one table that maps its
//! wire names to these types (`api::aws_json::kms`, `api::grpc::kms`), and a unit test checks
//! that every operation listed in [`OPERATIONS`] appears in every door's table.
//!
//! Adding an operation: a request and a response type with their audit impls, one `Kms`
//! method, one line in [`operations!`] below, and one line per door.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Kms, KmsError};
use crate::identity::Caller;

/// What the audit trail records of a request: CloudTrail's `requestParameters`, with
/// CloudTrail's member names (camelCase). Never plaintext, keys, ciphertext blobs, signatures,
/// MACs, grant tokens, import tokens or secrets: each request lists what is safe.
pub trait RequestParameters {
    /// The safe parameters of this request (an object; members without a value are left out).
    fn request_parameters(&self) -> Value;
}

/// What the audit trail records of a response: CloudTrail's `responseElements` (`null` for
/// most operations), never secrets.
pub trait ResponseElements {
    /// The safe elements of this response.
    fn response_elements(&self) -> Value {
        Value::Null
    }
}

/// One engine operation, named by its request type.
pub trait Operation: RequestParameters + Send + Sized + 'static {
    /// The AWS operation name (`Encrypt`): the audit event's `eventName` and the metrics label.
    const NAME: &'static str;
    /// The operation's answer.
    type Response: ResponseElements + Send + 'static;
    /// Runs the operation for `caller`.
    fn run(
        self,
        kms: Arc<Kms>,
        caller: Caller,
    ) -> impl Future<Output = Result<Self::Response, KmsError>> + Send;
}

/// Declares the operations: `Name: Request => Response = kms_method;`, one line each.
macro_rules! operations {
    ($($name:ident: $req:ty => $resp:ty = $method:ident;)*) => {
        $(
            impl Operation for $req {
                const NAME: &'static str = stringify!($name);
                type Response = $resp;
                fn run(
                    self,
                    kms: Arc<Kms>,
                    caller: Caller,
                ) -> impl Future<Output = Result<$resp, KmsError>> + Send {
                    async move { kms.$method(&caller, self).await }
                }
            }
        )*
        /// Every engine operation by AWS name: what each door's table must cover.
        pub const OPERATIONS: &[&str] = &[$(stringify!($name)),*];
    };
}

use super::aliases::{
    CreateAliasRequest, DeleteAliasRequest, ListAliasesRequest, ListAliasesResponse,
    UpdateAliasRequest,
};
use super::asym::{
    DeriveSharedSecretRequest, DeriveSharedSecretResponse, GenerateDataKeyPairRequest,
    GenerateDataKeyPairResponse, GenerateDataKeyPairWithoutPlaintextRequest,
    GenerateDataKeyPairWithoutPlaintextResponse, GenerateMacRequest, GenerateMacResponse,
    GetPublicKeyRequest, GetPublicKeyResponse, SignRequest, SignResponse, VerifyMacRequest,
    VerifyMacResponse, VerifyRequest, VerifyResponse,
};
use super::crypto::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, GenerateDataKeyRequest,
    GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    ReEncryptRequest, ReEncryptResponse,
};

use super::keys::{
    CancelKeyDeletionRequest, CancelKeyDeletionResponse, CreateKeyRequest, CreateKeyResponse,
    DescribeKeyRequest, DescribeKeyResponse, DisableKeyRequest, EnableKeyRequest, ListKeysRequest,
    ListKeysResponse, ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse,
    UpdateKeyDescriptionRequest,
};
use super::policies::{
    GetKeyPolicyRequest, GetKeyPolicyResponse, ListKeyPoliciesRequest, ListKeyPoliciesResponse,
    PutKeyPolicyRequest,
};
use super::tags::{
    ListResourceTagsRequest, ListResourceTagsResponse, TagResourceRequest, UntagResourceRequest,
};
use super::usage::{GetKeyLastUsageRequest, KeyLastUsageOutput};

// Each family imports its types just above its block; keep the blocks in this order.

use super::explain::{ExplainRequest, ExplainResponse};
use super::grants::{
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListRetirableGrantsRequest, RetireGrantRequest, RevokeGrantRequest,
};
use super::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMaterialResponse,
};
use super::rotation::{
    DisableKeyRotationRequest, EnableKeyRotationRequest, GetKeyRotationStatusRequest,
    KeyRotationStatus, ListKeyRotationsRequest, ListKeyRotationsResponse, RotateKeyOnDemandRequest,
    RotateKeyOnDemandResponse,
};
use super::sts::{AssumeRoleRequest, AssumeRoleResponse, CallerIdentity, GetCallerIdentityRequest};

operations! {
    // Keys (keys.rs, usage.rs), tags (tags.rs), key policies (policies.rs).
    CreateKey: CreateKeyRequest => CreateKeyResponse = create_key;
    DescribeKey: DescribeKeyRequest => DescribeKeyResponse = describe_key;
    ListKeys: ListKeysRequest => ListKeysResponse = list_keys;
    EnableKey: EnableKeyRequest => Empty = enable_key;
    DisableKey: DisableKeyRequest => Empty = disable_key;
    ScheduleKeyDeletion: ScheduleKeyDeletionRequest => ScheduleKeyDeletionResponse = schedule_key_deletion;
    CancelKeyDeletion: CancelKeyDeletionRequest => CancelKeyDeletionResponse = cancel_key_deletion;
    UpdateKeyDescription: UpdateKeyDescriptionRequest => Empty = update_key_description;
    GetKeyLastUsage: GetKeyLastUsageRequest => KeyLastUsageOutput = get_key_last_usage;
    TagResource: TagResourceRequest => Empty = tag_resource;
    UntagResource: UntagResourceRequest => Empty = untag_resource;
    ListResourceTags: ListResourceTagsRequest => ListResourceTagsResponse = list_resource_tags;
    GetKeyPolicy: GetKeyPolicyRequest => GetKeyPolicyResponse = get_key_policy;
    PutKeyPolicy: PutKeyPolicyRequest => Empty = put_key_policy;
    ListKeyPolicies: ListKeyPoliciesRequest => ListKeyPoliciesResponse = list_key_policies;

    // Symmetric cryptography (crypto.rs), asymmetric keys, signatures and MACs (asym.rs).
    Encrypt: EncryptRequest => EncryptResponse = encrypt;
    Decrypt: DecryptRequest => DecryptResponse = decrypt;
    ReEncrypt: ReEncryptRequest => ReEncryptResponse = re_encrypt;
    GenerateDataKey: GenerateDataKeyRequest => GenerateDataKeyResponse = generate_data_key;
    GenerateDataKeyWithoutPlaintext: GenerateDataKeyWithoutPlaintextRequest
        => GenerateDataKeyWithoutPlaintextResponse = generate_data_key_without_plaintext;
    GenerateRandom: GenerateRandomRequest => GenerateRandomResponse = generate_random;
    Sign: SignRequest => SignResponse = sign;
    Verify: VerifyRequest => VerifyResponse = verify;
    GetPublicKey: GetPublicKeyRequest => GetPublicKeyResponse = get_public_key;
    DeriveSharedSecret: DeriveSharedSecretRequest => DeriveSharedSecretResponse
        = derive_shared_secret;
    GenerateMac: GenerateMacRequest => GenerateMacResponse = generate_mac;
    VerifyMac: VerifyMacRequest => VerifyMacResponse = verify_mac;
    GenerateDataKeyPair: GenerateDataKeyPairRequest => GenerateDataKeyPairResponse
        = generate_data_key_pair;
    GenerateDataKeyPairWithoutPlaintext: GenerateDataKeyPairWithoutPlaintextRequest
        => GenerateDataKeyPairWithoutPlaintextResponse = generate_data_key_pair_without_plaintext;

    // Grants (grants.rs), rotation (rotation.rs), imported key material (import.rs),
    // ExplainAccess (explain.rs), STS (sts.rs).
    CreateGrant: CreateGrantRequest => CreateGrantResponse = create_grant;
    ListGrants: ListGrantsRequest => ListGrantsResponse = list_grants;
    ListRetirableGrants: ListRetirableGrantsRequest => ListGrantsResponse = list_retirable_grants;
    RetireGrant: RetireGrantRequest => Empty = retire_grant;
    RevokeGrant: RevokeGrantRequest => Empty = revoke_grant;
    EnableKeyRotation: EnableKeyRotationRequest => Empty = enable_key_rotation;
    DisableKeyRotation: DisableKeyRotationRequest => Empty = disable_key_rotation;
    GetKeyRotationStatus: GetKeyRotationStatusRequest => KeyRotationStatus = get_key_rotation_status;
    RotateKeyOnDemand: RotateKeyOnDemandRequest => RotateKeyOnDemandResponse = rotate_key_on_demand;
    ListKeyRotations: ListKeyRotationsRequest => ListKeyRotationsResponse = list_key_rotations;
    GetParametersForImport: GetParametersForImportRequest => GetParametersForImportResponse = get_parameters_for_import;
    ImportKeyMaterial: ImportKeyMaterialRequest => KeyMaterialResponse = import_key_material;
    DeleteImportedKeyMaterial: DeleteImportedKeyMaterialRequest => KeyMaterialResponse = delete_imported_key_material;
    ExplainAccess: ExplainRequest => ExplainResponse = explain_access;
    AssumeRole: AssumeRoleRequest => AssumeRoleResponse = assume_role;
    GetCallerIdentity: GetCallerIdentityRequest => CallerIdentity = get_caller_identity;

    // Aliases (aliases.rs).
    CreateAlias: CreateAliasRequest => Empty = create_alias;
    UpdateAlias: UpdateAliasRequest => Empty = update_alias;
    DeleteAlias: DeleteAliasRequest => Empty = delete_alias;
    ListAliases: ListAliasesRequest => ListAliasesResponse = list_aliases;
}

/// The answer of operations that return nothing but success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

impl ResponseElements for Empty {}

/// Builds `requestParameters`/`responseElements` objects: members without a value (`None`,
/// an empty string, list or map) are left out, as CloudTrail leaves out what was not sent.
#[derive(Debug, Default)]
pub struct Params(Map<String, Value>);

impl Params {
    /// An empty object.
    pub fn new() -> Params {
        Params::default()
    }

    /// A string member, left out when empty.
    pub fn str(mut self, name: &str, v: &str) -> Params {
        if !v.is_empty() {
            self.0.insert(name.into(), Value::from(v));
        }
        self
    }

    /// An optional member, left out when `None`.
    pub fn opt<T: Into<Value>>(mut self, name: &str, v: Option<T>) -> Params {
        if let Some(v) = v {
            self.0.insert(name.into(), v.into());
        }
        self
    }

    /// A member that is always present.
    pub fn value(mut self, name: &str, v: impl Into<Value>) -> Params {
        self.0.insert(name.into(), v.into());
        self
    }

    /// A list of strings, left out when empty.
    pub fn list(mut self, name: &str, v: &[String]) -> Params {
        if !v.is_empty() {
            self.0.insert(name.into(), Value::from(v.to_vec()));
        }
        self
    }

    /// A string map (an encryption context), left out when empty. Contexts are not secret.
    pub fn map(mut self, name: &str, v: &BTreeMap<String, String>) -> Params {
        if !v.is_empty() {
            let m = v.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str())));
            self.0.insert(name.into(), Value::Object(m.collect()));
        }
        self
    }

    /// Grant tokens are capabilities: the trail records how many were given, never them.
    pub fn grant_tokens(mut self, tokens: &[String]) -> Params {
        if !tokens.is_empty() {
            self.0
                .insert("grantTokens".into(), Value::from(tokens.len()));
        }
        self
    }

    /// `dryRun`, recorded when set.
    pub fn dry_run(mut self, dry_run: bool) -> Params {
        if dry_run {
            self.0.insert("dryRun".into(), Value::Bool(true));
        }
        self
    }

    /// The object.
    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}
