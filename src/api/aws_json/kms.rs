//! The KMS operations of the AWS door (`X-Amz-Target: TrentService.<Operation>`), and the
//! door's custom operations (`X-Amz-Target: P11kmsAdmin.<Operation>`, [`P11KMS_ADMIN`]):
//! ExplainAccess, and the console's ListPrincipals, SearchAuditTrail, VerifyAuditTrail and
//! GetHealth (`kms/admin.rs`).
//!
//! Each operation parses its JSON input (PascalCase AWS member names, base64 blobs, members
//! outside the AWS model ignored, `null` the same as absent; [`super::model`] has validated
//! the body and refused the model's members this door does not read) into the engine's
//! request, calls the engine, and renders the output (epoch-second timestamps, base64 blobs,
//! null members omitted). Parsing happens before the engine runs, so a body of the wrong shape
//! is a SerializationException and never reaches the engine.
//!
//! How each request is read and each response rendered is declared once per type, as the
//! list of its fields, in the family files under `kms/` (`from_json!` and `to_json!` tables);
//! the rules per field type (absent members, blobs, enums, timestamps) are in `kms/members.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::core::admin::{GetHealthRequest, ListPrincipalsRequest};
use crate::core::aliases::{
    AliasListEntry, CreateAliasRequest, DeleteAliasRequest, ListAliasesRequest, UpdateAliasRequest,
};
use crate::core::asym::{
    DeriveSharedSecretRequest, GenerateDataKeyPairRequest,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateMacRequest, GetPublicKeyRequest,
    SignRequest, VerifyMacRequest, VerifyRequest,
};
use crate::core::audit_trail::{SearchAuditTrailRequest, VerifyAuditTrailRequest};
use crate::core::crypto::{
    DecryptRequest, EncryptRequest, GenerateDataKeyRequest, GenerateDataKeyWithoutPlaintextRequest,
    GenerateRandomRequest, ReEncryptRequest,
};
use crate::core::explain::ExplainRequest;
use crate::core::grants::{
    CreateGrantRequest, ListGrantsRequest, ListRetirableGrantsRequest, RetireGrantRequest,
    RevokeGrantRequest,
};
use crate::core::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest, ImportKeyMaterialRequest,
};
use crate::core::keys::{
    CancelKeyDeletionRequest, CreateKeyRequest, DescribeKeyRequest, DisableKeyRequest,
    EnableKeyRequest, KeyMetadata, ListKeysRequest, ScheduleKeyDeletionRequest,
    ScheduleKeyDeletionResponse, UpdateKeyDescriptionRequest,
};
use crate::core::keystores::{
    ConnectCustomKeyStoreRequest, CreateCustomKeyStoreRequest, CustomKeyStoresListEntry,
    DeleteCustomKeyStoreRequest, DescribeCustomKeyStoresRequest, DisconnectCustomKeyStoreRequest,
    UpdateCustomKeyStoreRequest,
};
use crate::core::operation::{self, Empty, ResponseElements};
use crate::core::policies::{GetKeyPolicyRequest, ListKeyPoliciesRequest, PutKeyPolicyRequest};
use crate::core::regions::{ReplicateKeyRequest, UpdatePrimaryRegionRequest};
use crate::core::rotation::{
    DisableKeyRotationRequest, EnableKeyRotationRequest, GetKeyRotationStatusRequest,
    KeyRotationStatus, ListKeyRotationsRequest, RotateKeyOnDemandRequest, RotationsListEntry,
};
use crate::core::tags::{ListResourceTagsRequest, TagResourceRequest, UntagResourceRequest};
use crate::core::usage::{GetKeyLastUsageRequest, KeyLastUsageOutput};
use crate::core::{Kms, KmsError};
use crate::identity::Caller;
use crate::store::GrantRecord;
use members::Render;

/// A successful operation: the JSON body, and what the audit trail logs of it
/// (CloudTrail `responseElements`; never plaintext, keys or tokens).
#[derive(Debug)]
pub struct Reply {
    /// The response body.
    pub body: Value,
    /// The audit `responseElements` (`Null` for most operations).
    pub elements: Value,
}

/// A core request read from its AWS JSON body (PascalCase members, base64 blobs, `null` the
/// same as absent). One `from_json!` declaration per operation, in the operation family's
/// file under `kms/`.
pub trait FromJson: Sized {
    /// Reads the request; a body of the wrong shape is a SerializationException.
    fn from_json(body: Value) -> Result<Self, serde_json::Error>;
}

/// The body of operations that answer nothing but success: `{}`.
impl Render for Empty {
    fn render(self) -> Value {
        json!({})
    }
}

/// The one engine call of every table entry: reads the request, runs the operation, renders
/// the answer and its audit elements.
fn run<O>(kms: Arc<Kms>, caller: Caller, body: Value) -> Result<Prepared, serde_json::Error>
where
    O: operation::Operation + FromJson,
    O::Response: Render,
{
    let request = O::from_json(body)?;
    Ok(prepared(request, kms, caller, compact))
}

/// A read request's audit parameters and engine call, whose answer is rendered then shaped
/// by `shape` (AWS's operations leave absent members out).
fn prepared<O>(request: O, kms: Arc<Kms>, caller: Caller, shape: fn(Value) -> Value) -> Prepared
where
    O: operation::Operation,
    O::Response: Render,
{
    let params = request.request_parameters();
    let call: Call = Box::pin(async move {
        let response = request.run(kms, caller).await?;
        let elements = response.response_elements();
        Ok(Reply {
            body: shape(response.render()),
            elements,
        })
    });
    Prepared { params, call }
}

/// The audit parameters of a request body read as the core request `O`.
fn parameters<O: operation::Operation + FromJson>(body: Value) -> Result<Value, serde_json::Error> {
    O::from_json(body).map(|r| r.request_parameters())
}

/// The engine call of a parsed request.
pub type Call = Pin<Box<dyn Future<Output = Result<Reply, KmsError>> + Send>>;

/// A request read for the engine: what the audit trail records of it, and its engine call.
pub struct Prepared {
    /// CloudTrail `requestParameters`, from the core request.
    pub params: Value,
    /// The engine call.
    pub call: Call,
}

/// Reads a request body into its core request and returns the engine call, or the parse
/// error.
pub type Prepare = fn(Arc<Kms>, Caller, Value) -> Result<Prepared, serde_json::Error>;

/// One operation of the door.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The AWS operation name (`Encrypt`).
    pub name: &'static str,
    /// Its SigV4 signing service.
    pub service: &'static str,
    /// Parses the input and builds the engine call.
    pub prepare: Prepare,
    /// Reads the input into the core request without running it, and answers its audit
    /// parameters (for the fuzz targets and tests).
    pub parameters: fn(Value) -> Result<Value, serde_json::Error>,
}

const KMS: &str = "kms";

/// Every `TrentService` operation the door serves: the same set as the gRPC
/// `KeyManagementService` (a unit test compares them), each a core operation (`op`).
pub const OPERATIONS: &[Operation] = &[
    op::<CreateKeyRequest>(),
    op::<DescribeKeyRequest>(),
    op::<ListKeysRequest>(),
    op::<EnableKeyRequest>(),
    op::<DisableKeyRequest>(),
    op::<ScheduleKeyDeletionRequest>(),
    op::<CancelKeyDeletionRequest>(),
    op::<UpdateKeyDescriptionRequest>(),
    op::<GetKeyLastUsageRequest>(),
    op::<TagResourceRequest>(),
    op::<UntagResourceRequest>(),
    op::<ListResourceTagsRequest>(),
    op::<CreateAliasRequest>(),
    op::<UpdateAliasRequest>(),
    op::<DeleteAliasRequest>(),
    op::<ListAliasesRequest>(),
    op::<EncryptRequest>(),
    op::<DecryptRequest>(),
    op::<ReEncryptRequest>(),
    op::<GenerateDataKeyRequest>(),
    op::<GenerateDataKeyWithoutPlaintextRequest>(),
    op::<GenerateRandomRequest>(),
    op::<SignRequest>(),
    op::<VerifyRequest>(),
    op::<GetPublicKeyRequest>(),
    op::<DeriveSharedSecretRequest>(),
    op::<GenerateMacRequest>(),
    op::<VerifyMacRequest>(),
    op::<GenerateDataKeyPairRequest>(),
    op::<GenerateDataKeyPairWithoutPlaintextRequest>(),
    op::<GetKeyPolicyRequest>(),
    op::<PutKeyPolicyRequest>(),
    op::<ListKeyPoliciesRequest>(),
    op::<CreateGrantRequest>(),
    op::<ListGrantsRequest>(),
    op::<ListRetirableGrantsRequest>(),
    op::<RetireGrantRequest>(),
    op::<RevokeGrantRequest>(),
    op::<EnableKeyRotationRequest>(),
    op::<DisableKeyRotationRequest>(),
    op::<GetKeyRotationStatusRequest>(),
    op::<RotateKeyOnDemandRequest>(),
    op::<ListKeyRotationsRequest>(),
    op::<GetParametersForImportRequest>(),
    op::<ImportKeyMaterialRequest>(),
    op::<DeleteImportedKeyMaterialRequest>(),
    op::<CreateCustomKeyStoreRequest>(),
    op::<ConnectCustomKeyStoreRequest>(),
    op::<DisconnectCustomKeyStoreRequest>(),
    op::<UpdateCustomKeyStoreRequest>(),
    op::<DeleteCustomKeyStoreRequest>(),
    op::<DescribeCustomKeyStoresRequest>(),
    op::<ReplicateKeyRequest>(),
    op::<UpdatePrimaryRegionRequest>(),
];

/// A table entry for a core operation: its AWS name and its one engine call.
const fn op<O>() -> Operation
where
    O: operation::Operation + FromJson,
    O::Response: Render,
{
    entry::<O>(run::<O>)
}

/// The table entry of `O`, read and run by `prepare`.
const fn entry<O: operation::Operation + FromJson>(prepare: Prepare) -> Operation {
    Operation {
        name: O::NAME,
        service: KMS,
        prepare,
        parameters: parameters::<O>,
    }
}

/// `P11kmsAdmin.ExplainAccess`: the gRPC AdminService's ExplainAccess on this door.
pub const EXPLAIN_ACCESS: Operation = op::<ExplainRequest>();

/// The `P11kmsAdmin.<Operation>` operations: gRPC AdminService operations the console (a
/// client of this door only) needs. AWS's model has none of them, so the model check passes
/// their bodies to their own readers.
pub const P11KMS_ADMIN: &[Operation] = &[
    EXPLAIN_ACCESS,
    admin_op::<ListPrincipalsRequest>(),
    admin_op::<SearchAuditTrailRequest>(),
    admin_op::<VerifyAuditTrailRequest>(),
    admin_op::<GetHealthRequest>(),
];

/// A table entry for a console operation: as [`op`], except that a body its reader refuses
/// is answered ValidationException (the console's contract) rather than
/// SerializationException, and that its answer is not compacted (the audit events it returns
/// are the records exactly as stored; its renderer leaves out absent members itself).
const fn admin_op<O>() -> Operation
where
    O: operation::Operation + FromJson,
    O::Response: Render,
{
    entry::<O>(run_admin::<O>)
}

/// [`run`] for a console operation (see [`admin_op`]).
fn run_admin<O>(kms: Arc<Kms>, caller: Caller, body: Value) -> Result<Prepared, serde_json::Error>
where
    O: operation::Operation + FromJson,
    O::Response: Render,
{
    let request = match O::from_json(body) {
        Ok(r) => r,
        Err(e) => {
            // The readers' messages name the member and its type, never the value.
            let message = e.to_string();
            let call: Call = Box::pin(async move { Err(KmsError::Validation(message)) });
            return Ok(Prepared {
                params: json!({}),
                call,
            });
        }
    };
    Ok(prepared(request, kms, caller, |v| v))
}

/// The operation an `X-Amz-Target` names, if this door serves it.
pub fn operation(target: &str) -> Option<&'static Operation> {
    if let Some(op) = target.strip_prefix("TrentService.") {
        return OPERATIONS.iter().find(|o| o.name == op);
    }
    let op = target.strip_prefix("P11kmsAdmin.")?;
    P11KMS_ADMIN.iter().find(|o| o.name == op)
}

// ---------------------------------------------------------------------------------------------
// Rendering shared with the CLI, so that both print one shape

/// Drops null members, recursively (AWS omits absent members). The CLI prints through it too.
pub fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(compact).collect()),
        other => other,
    }
}

/// A `KeyMetadata` as AWS renders it (run the result through [`compact`]).
pub fn metadata(m: &KeyMetadata) -> Value {
    m.clone().render()
}

/// One `AliasListEntry` as AWS renders it.
pub fn alias_entry(a: AliasListEntry) -> Value {
    a.render()
}

/// One `CustomKeyStoresListEntry` as AWS renders it (DescribeCustomKeyStores' members).
pub fn key_store_entry(e: CustomKeyStoresListEntry) -> Value {
    e.render()
}

/// One `GrantListEntry` as AWS renders it.
pub fn grant_entry(g: GrantRecord) -> Value {
    g.render()
}

/// One `RotationsListEntry` as AWS renders it.
pub fn rotation_entry(e: RotationsListEntry) -> Value {
    e.render()
}

/// The GetKeyRotationStatus output as AWS renders it.
pub fn rotation_status(s: &KeyRotationStatus) -> Value {
    s.clone().render()
}

/// The ScheduleKeyDeletion output as AWS renders it.
pub fn scheduled_deletion(out: &ScheduleKeyDeletionResponse) -> Value {
    out.clone().render()
}

/// GetKeyLastUsage's response body (`KeyLastUsage` is `{}` when the key has not been used
/// since tracking began).
pub fn key_last_usage_body(out: &KeyLastUsageOutput) -> Value {
    out.clone().render()
}

// ---------------------------------------------------------------------------------------------
// Operations

// The rules per field type, and the declarations `from_json!` and `to_json!`.
mod members;

// One file per operation family: each reads its requests and renders its responses.
mod admin;
mod aliases;
mod asym;
mod crypto;
mod explain;
mod grants;
mod import;
mod keys;
mod keystores;
mod policies;
mod regions;
mod rotation;
mod tags;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Every core operation is in every door's table, so a new operation cannot be forgotten
    /// by a door. (The AWS door serves STS's AssumeRole and GetCallerIdentity through its
    /// Query table, `sts::ACTIONS`.)
    #[test]
    fn every_core_operation_is_in_every_door_table() {
        use crate::core::operation::OPERATIONS as CORE;
        let aws: Vec<&str> = OPERATIONS
            .iter()
            .chain(P11KMS_ADMIN)
            .map(|o| o.name)
            .chain(super::super::sts::ACTIONS.iter().copied())
            .collect();
        let grpc = crate::api::grpc::TABLES.concat();
        for op in CORE {
            assert!(
                aws.contains(op),
                "{op} is missing from the AWS door's table"
            );
            assert!(
                grpc.contains(op),
                "{op} is missing from the gRPC door's tables"
            );
        }
        assert!(CORE.contains(&"ListAliases"), "the core list is read");
    }

    /// Every rpc of the gRPC KeyManagementService is a TrentService operation here (and the
    /// other way round), so an operation added to one door cannot be missing from the other.
    #[test]
    fn serves_every_grpc_operation() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let grpc: std::collections::BTreeSet<String> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == "KeyManagementService")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
            .collect();
        assert!(grpc.len() >= 29, "{grpc:?}");
        let here: std::collections::BTreeSet<String> =
            OPERATIONS.iter().map(|o| o.name.to_string()).collect();
        assert_eq!(grpc, here);
        assert!(operation("TrentService.Encrypt").is_some());
        assert!(operation("TrentService.Nope").is_none());
        assert!(operation("Encrypt").is_none());
        for name in [
            "ExplainAccess",
            "ListPrincipals",
            "SearchAuditTrail",
            "VerifyAuditTrail",
            "GetHealth",
        ] {
            let target = format!("P11kmsAdmin.{name}");
            assert_eq!(operation(&target).map(|o| o.name), Some(name));
            assert!(
                super::super::model::reads(name).is_none(),
                "{name} is not AWS's"
            );
        }
        assert!(operation("P11kmsAdmin.Encrypt").is_none());
        assert!(operation("TrentService.GetHealth").is_none());
    }

    /// GetKeyLastUsage is served by both doors, and its audit parameters name the key only.
    #[test]
    fn get_key_last_usage_is_on_both_doors() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        assert!(set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == "KeyManagementService")
            .any(|s| s.method.iter().any(|m| m.name() == "GetKeyLastUsage")));
        assert!(operation("TrentService.GetKeyLastUsage").is_some());
        let request = crate::core::usage::GetKeyLastUsageRequest::from_json(
            json!({"KeyId": "k", "Other": "x"}),
        )
        .unwrap();
        use crate::core::operation::RequestParameters as _;
        assert_eq!(request.request_parameters(), json!({"keyId": "k"}));
    }

    #[test]
    fn outputs_omit_nulls() {
        let body = compact(json!({"A": null, "B": {"C": null, "D": 1}, "E": [{"F": null}]}));
        assert_eq!(body, json!({"B": {"D": 1}, "E": [{}]}));
    }

    /// The door's reads list (`model::reads`) claims only members the operation's
    /// declaration actually reads: a value of the wrong type for each of them is refused
    /// (a member that is not read would be ignored). No value is of the wrong type for every
    /// member, so each is tried with an object and with a fractional number.
    #[test]
    fn reads_lists_match_the_declarations() {
        let wrong = [json!({}), json!(1.5)];
        let body = |member: &str, v: &Value| match member.split_once('.') {
            Some((outer, inner)) => json!({ outer: { inner: v } }),
            None => json!({ member: v }),
        };
        let mut checked = 0;
        for op in OPERATIONS {
            assert!((op.parameters)(json!({})).is_ok(), "{}", op.name);
            for member in super::super::model::reads(op.name).unwrap() {
                let refused = wrong
                    .iter()
                    .any(|v| (op.parameters)(body(member, v)).is_err());
                assert!(
                    refused,
                    "{}: the reads list has {member}, which its declaration does not read",
                    op.name
                );
                checked += 1;
            }
        }
        assert!(checked > 150, "{checked}");
        // A member outside the model is ignored, whatever its type.
        assert!((OPERATIONS[0].parameters)(json!({"SomethingNew": {}})).is_ok());
    }
}
