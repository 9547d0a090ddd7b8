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
//! The XKS door's operations are a family with a list of their own, [`XKS_OPERATIONS`] (the
//! XKS proxy API is not KMS's API, so the other doors do not serve them).
//!
//! Adding an operation: a request and a response type with their audit declarations (one
//! line each in [`request_parameters!`] and, when the trail records its answer,
//! [`response_elements!`]), one `Kms` method, one line in [`operations!`] below, and one line
//! per door.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Kms, KmsError};
use crate::encoding::wire_case;
use crate::identity::Caller;
use crate::wire_enum::WireEnum;

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
    // A family with a list of its own (`const XKS_OPERATIONS;`), which the doors' shared
    // check does not read: the XKS door's table covers it.
    (const $list:ident; $($name:ident: $req:ty => $resp:ty = $method:ident;)*) => {
        $crate::core::operation::operation_impls!($($name: $req => $resp = $method;)*);
        /// The operations of this family by name: what its door's table must cover.
        pub const $list: &[&str] = &[$(stringify!($name)),*];
    };
    ($($name:ident: $req:ty => $resp:ty = $method:ident;)*) => {
        $crate::core::operation::operation_impls!($($name: $req => $resp = $method;)*);
        /// Every engine operation by AWS name: what each door's table must cover.
        pub const OPERATIONS: &[&str] = &[$(stringify!($name)),*];
    };
}

/// The [`Operation`] impls of [`operations!`]'s lines.
macro_rules! operation_impls {
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
    };
}
pub(crate) use operation_impls;

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

use super::admin::{
    GetHealthRequest, GetHealthResponse, ListPrincipalsRequest, ListPrincipalsResponse,
};
use super::audit_trail::{
    SearchAuditTrailRequest, SearchAuditTrailResponse, VerifyAuditTrailRequest,
    VerifyAuditTrailResponse,
};
use super::explain::{ExplainRequest, ExplainResponse};
use super::grants::{
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListRetirableGrantsRequest, RetireGrantRequest, RevokeGrantRequest,
};
use super::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMaterialResponse,
};
use super::keystores::{
    ConnectCustomKeyStoreRequest, CreateCustomKeyStoreRequest, CreateCustomKeyStoreResponse,
    DeleteCustomKeyStoreRequest, DescribeCustomKeyStoresRequest, DescribeCustomKeyStoresResponse,
    DisconnectCustomKeyStoreRequest, UpdateCustomKeyStoreRequest,
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
    // ExplainAccess (explain.rs), the console's operator operations (admin.rs,
    // audit_trail.rs), STS (sts.rs).
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
    ListPrincipals: ListPrincipalsRequest => ListPrincipalsResponse = list_principals;
    SearchAuditTrail: SearchAuditTrailRequest => SearchAuditTrailResponse = search_audit_trail;
    VerifyAuditTrail: VerifyAuditTrailRequest => VerifyAuditTrailResponse = verify_audit_trail;
    GetHealth: GetHealthRequest => GetHealthResponse = get_health;
    AssumeRole: AssumeRoleRequest => AssumeRoleResponse = assume_role;
    GetCallerIdentity: GetCallerIdentityRequest => CallerIdentity = get_caller_identity;

    // Custom key stores (keystores.rs).
    CreateCustomKeyStore: CreateCustomKeyStoreRequest => CreateCustomKeyStoreResponse
        = create_custom_key_store;
    ConnectCustomKeyStore: ConnectCustomKeyStoreRequest => Empty = connect_custom_key_store;
    DisconnectCustomKeyStore: DisconnectCustomKeyStoreRequest => Empty
        = disconnect_custom_key_store;
    UpdateCustomKeyStore: UpdateCustomKeyStoreRequest => Empty = update_custom_key_store;
    DeleteCustomKeyStore: DeleteCustomKeyStoreRequest => Empty = delete_custom_key_store;
    DescribeCustomKeyStores: DescribeCustomKeyStoresRequest => DescribeCustomKeyStoresResponse
        = describe_custom_key_stores;

    // Multi-Region keys (regions.rs).
    ReplicateKey: ReplicateKeyRequest => ReplicateKeyResponse = replicate_key;
    UpdatePrimaryRegion: UpdatePrimaryRegionRequest => Empty = update_primary_region;

    // Aliases (aliases.rs).
    CreateAlias: CreateAliasRequest => Empty = create_alias;
    UpdateAlias: UpdateAliasRequest => Empty = update_alias;
    DeleteAlias: DeleteAliasRequest => Empty = delete_alias;
    ListAliases: ListAliasesRequest => ListAliasesResponse = list_aliases;
}

use super::migrate::{MigrateResidencyRequest, MigrateResidencyResponse};
use super::regions::{
    AcceptReplicaRequest, AcceptReplicaResponse, ReplicateKeyRequest, ReplicateKeyResponse,
    UpdateMultiRegionKeyRequest, UpdatePrimaryRegionRequest,
};

operations! {
    // p11kms's own gRPC-only operator operations (migrate.rs), served by the AdminService:
    // the AWS door does not serve them.
    const ADMIN_OPERATIONS;
    MigrateResidency: MigrateResidencyRequest => MigrateResidencyResponse = migrate_residency;
}

operations! {
    // What a peer Region's daemon asks of this one (region_peer.rs), served by the gRPC
    // RegionService only.
    const REGION_OPERATIONS;
    AcceptReplica: AcceptReplicaRequest => AcceptReplicaResponse = accept_replica;
    UpdateMultiRegionKey: UpdateMultiRegionKeyRequest => Empty = update_multi_region_key;
}

use super::xks::{
    XksDecryptRequest, XksDecryptResponse, XksEncryptRequest, XksEncryptResponse, XksHealthRequest,
    XksHealthResponse, XksKeyMetadataRequest, XksKeyMetadataResponse,
};

operations! {
    // The XKS door's operations (xks.rs), named as the XKS proxy API names them; the door is
    // the audit event's `door` (`xks`).
    const XKS_OPERATIONS;
    GetKeyMetadata: XksKeyMetadataRequest => XksKeyMetadataResponse = xks_get_key_metadata;
    Encrypt: XksEncryptRequest => XksEncryptResponse = xks_encrypt;
    Decrypt: XksDecryptRequest => XksDecryptResponse = xks_decrypt;
    GetHealthStatus: XksHealthRequest => XksHealthResponse = xks_get_health_status;
}

/// The answer of operations that return nothing but success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

impl ResponseElements for Empty {}

/// The paging members every list request has (`Limit`, `Marker`), as one field `page`: the
/// doors read it from the two members and the trail records the two members (the rules for
/// `page` in [`request_parameters!`] and in both doors' request declarations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The page size asked for (1-1000; 100 when absent).
    pub limit: Option<i32>,
    /// Where the page starts: a previous answer's `NextMarker`.
    pub marker: Option<String>,
}

impl Page {
    /// The page size and the position after which the page starts, both checked.
    pub(crate) fn start(&self) -> Result<(usize, Option<String>), KmsError> {
        let limit = super::validate::limit(self.limit)?;
        Ok((
            limit,
            super::validate::decode_marker(self.marker.as_deref().unwrap_or(""))?,
        ))
    }
}

/// How a field of a request or response is written in the audit trail, by its type: the one
/// rule per type behind [`request_parameters!`] and [`response_elements!`]. Bytes (plaintext,
/// keys, ciphertext blobs, signatures, MACs, import tokens) and `Zeroizing` secrets have no
/// rule, so a declaration that lists one does not compile; a secret in a plain `String` (a
/// grant token) stays out by not being listed, or by its member's own rule.
pub trait Recorded {
    /// The value as the trail writes it.
    fn recorded(&self) -> Value;

    /// Whether a request gave this field: a request's member is left out when it was not
    /// (an empty string, list or map, `None`, `false`), as CloudTrail leaves out what was not
    /// sent. A response's elements are always written.
    fn given(&self) -> bool {
        true
    }
}

/// A string: itself, given when not empty.
impl Recorded for str {
    fn recorded(&self) -> Value {
        Value::from(self)
    }
    fn given(&self) -> bool {
        !self.is_empty()
    }
}

impl Recorded for &str {
    fn recorded(&self) -> Value {
        (**self).recorded()
    }
    fn given(&self) -> bool {
        (**self).given()
    }
}

impl Recorded for String {
    fn recorded(&self) -> Value {
        self.as_str().recorded()
    }
    fn given(&self) -> bool {
        self.as_str().given()
    }
}

/// An optional field: its value, given when `Some` (even `Some("")`: the caller sent it).
impl<T: Recorded> Recorded for Option<T> {
    fn recorded(&self) -> Value {
        self.as_ref().map_or(Value::Null, Recorded::recorded)
    }
    fn given(&self) -> bool {
        self.is_some()
    }
}

/// A list: an array, given when not empty.
impl<T: Recorded> Recorded for Vec<T> {
    fn recorded(&self) -> Value {
        Value::Array(self.iter().map(Recorded::recorded).collect())
    }
    fn given(&self) -> bool {
        !self.is_empty()
    }
}

/// A string map (an encryption context): an object, given when not empty. Contexts are not
/// secret.
impl Recorded for BTreeMap<String, String> {
    fn recorded(&self) -> Value {
        let m = self
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())));
        Value::Object(m.collect())
    }
    fn given(&self) -> bool {
        !self.is_empty()
    }
}

/// A flag (`dryRun`, `bypassPolicyLockoutSafetyCheck`): recorded when set.
impl Recorded for bool {
    fn recorded(&self) -> Value {
        Value::Bool(*self)
    }
    fn given(&self) -> bool {
        *self
    }
}

impl Recorded for i32 {
    fn recorded(&self) -> Value {
        Value::from(*self)
    }
}

/// A key material version (a multi-Region key's current version).
impl Recorded for u32 {
    fn recorded(&self) -> Value {
        Value::from(*self)
    }
}

/// A value built by a member's own rule (`member = function` in a declaration).
impl Recorded for Value {
    fn recorded(&self) -> Value {
        self.clone()
    }
}

/// Every AWS enum (`wire_enum!`): its AWS spelling.
impl<E: WireEnum> Recorded for E {
    fn recorded(&self) -> Value {
        Value::from(self.wire_name())
    }
}

/// Grant tokens are capabilities: the trail records how many were given, never them. Every
/// declaration that lists `grant_tokens` records them this way.
pub struct GrantTokenCount<'a>(pub &'a [String]);

impl Recorded for GrantTokenCount<'_> {
    fn recorded(&self) -> Value {
        Value::from(self.0.len())
    }
    fn given(&self) -> bool {
        !self.0.is_empty()
    }
}

/// Declares what the audit trail records of a request: `request_parameters!(EncryptRequest {
/// key_id, encryption_context, encryption_algorithm, grant_tokens, dry_run });` lists the
/// fields recorded, each under the camelCase of its name, by its type's [`Recorded`] rule,
/// and left out when not given. `member = function` records `function(&request)` instead
/// (a renamed, derived or redacted member); `grant_tokens` is always their count, and `page`
/// ([`Page`]) its two members `limit` and `marker`.
macro_rules! request_parameters {
    ($($decl:tt)*) => {
        $crate::core::operation::audit_impls!(RequestParameters, request_parameters, given; $($decl)*);
    };
}
pub(crate) use request_parameters;

/// Declares what the audit trail records of a response, as [`request_parameters!`] does of
/// a request, except that every element listed is written.
macro_rules! response_elements {
    ($($decl:tt)*) => {
        $crate::core::operation::audit_impls!(ResponseElements, response_elements, element; $($decl)*);
    };
}
pub(crate) use response_elements;

/// The impls of [`request_parameters!`] and [`response_elements!`]: `$trait::$method` builds
/// the object with [`Params`]`::$how` (`given` or `element`) per member.
macro_rules! audit_impls {
    ($trait:ident, $method:ident, $how:ident;
     $($ty:ty { $($member:ident $(= $rule:path)?),* $(,)? });* $(;)?) => {$(
        impl $crate::core::operation::$trait for $ty {
            fn $method(&self) -> serde_json::Value {
                let p = $crate::core::operation::Params::new();
                $(let p = $crate::core::operation::audit_member!(
                    $how, p, self, $member $(= $rule)?
                );)*
                p.build()
            }
        }
    )*};
}
pub(crate) use audit_impls;

/// One member of a declaration (`how` is `given` or `element`).
macro_rules! audit_member {
    ($how:ident, $p:ident, $s:ident, page) => {
        $p.$how("limit", &$s.page.limit)
            .$how("marker", &$s.page.marker)
    };
    ($how:ident, $p:ident, $s:ident, grant_tokens) => {
        $p.$how(
            "grant_tokens",
            &$crate::core::operation::GrantTokenCount(&$s.grant_tokens),
        )
    };
    ($how:ident, $p:ident, $s:ident, $member:ident) => {
        $p.$how(stringify!($member), &$s.$member)
    };
    ($how:ident, $p:ident, $s:ident, $member:ident = $rule:path) => {
        $p.$how(stringify!($member), &$rule($s))
    };
}
pub(crate) use audit_member;

pub(crate) use crate::redact::redacted_debug;

/// Builds `requestParameters`/`responseElements` objects, naming each member by the
/// camelCase of its field name (`key_id` is `keyId`).
#[derive(Debug, Default)]
pub struct Params(Map<String, Value>);

impl Params {
    /// An empty object.
    pub fn new() -> Params {
        Params::default()
    }

    /// A request's member, left out when not given ([`Recorded::given`]).
    pub fn given(self, field: &str, v: &(impl Recorded + ?Sized)) -> Params {
        if v.given() {
            self.element(field, v)
        } else {
            self
        }
    }

    /// A response's member, always written.
    pub fn element(mut self, field: &str, v: &(impl Recorded + ?Sized)) -> Params {
        self.0.insert(wire_case(field, false), v.recorded());
        self
    }

    /// The object.
    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;
    use crate::core::algorithms::EncryptionAlgorithm;
    use crate::core::crypto::EncryptRequest;
    use crate::core::grants::{CreateGrantRequest, RetireGrantRequest};
    use crate::core::keys::{ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse};
    use crate::store::KeyState;

    /// What the trail records of a few operations, to the byte: each field type's rule, the
    /// grant-token count, RetireGrant's redacted token, CreateGrant's constraints and a
    /// response's date. No secret of the requests reaches the record.
    #[test]
    fn audit_records_per_operation() {
        let tokens = || vec!["SECRET-TOKEN-1".to_string(), "SECRET-TOKEN-2".into()];
        let encrypt = EncryptRequest {
            key_id: "alias/a".into(),
            plaintext: Zeroizing::new(b"SECRET-PLAINTEXT".to_vec()),
            encryption_context: [("dept".to_string(), "it".to_string())].into(),
            grant_tokens: tokens(),
            encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            dry_run: true,
        };
        let retire = RetireGrantRequest {
            grant_token: Some(Zeroizing::new("SECRET-GRANT-TOKEN".into())),
            key_id: Some(String::new()),
            grant_id: None,
            dry_run: false,
        };
        let grant = CreateGrantRequest {
            key_id: "k".into(),
            grantee_principal: "arn:aws:iam::111122223333:role/r".into(),
            operations: vec!["Decrypt".into(), "Encrypt".into()],
            constraint_equals: Some(BTreeMap::new()),
            grant_tokens: tokens(),
            name: Some("n".into()),
            ..Default::default()
        };
        let schedule = ScheduleKeyDeletionRequest {
            key_id: "k".into(),
            pending_window_in_days: Some(7),
        };
        let scheduled = ScheduleKeyDeletionResponse {
            key_id: "arn:k".into(),
            deletion_date_ms: 1_700_000_000_000,
            key_state: KeyState::PendingDeletion,
            pending_window_in_days: 7,
        };
        let cases = [
            (
                encrypt.request_parameters(),
                r#"{"dryRun":true,"encryptionAlgorithm":"SYMMETRIC_DEFAULT","encryptionContext":{"dept":"it"},"grantTokens":2,"keyId":"alias/a"}"#,
            ),
            (EncryptRequest::default().request_parameters(), "{}"),
            (
                retire.request_parameters(),
                r#"{"grantToken":"(given)","keyId":""}"#,
            ),
            (
                grant.request_parameters(),
                r#"{"constraints":{"encryptionContextEquals":{}},"grantTokens":2,"granteePrincipal":"arn:aws:iam::111122223333:role/r","keyId":"k","name":"n","operations":["Decrypt","Encrypt"]}"#,
            ),
            (
                schedule.request_parameters(),
                r#"{"keyId":"k","pendingWindowInDays":7}"#,
            ),
            (
                scheduled.response_elements(),
                r#"{"deletionDate":"2023-11-14T22:13:20Z","keyId":"arn:k","keyState":"PendingDeletion","pendingWindowInDays":7}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.to_string(), want);
            assert!(!want.contains("SECRET"));
        }
    }
}
