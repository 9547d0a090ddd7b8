//! The audit record schema: [`AuditEvent`] (one per request, CloudTrail field names), the
//! [`Checkpoint`] and [`SegmentStart`] records, and the hash-chain framing shared by all of
//! them.
//!
//! # Record lines
//!
//! Every record is one line of compact JSON ending in `\n`. Its first three members are
//! `recordType` (`"event"`, `"checkpoint"` or `"segment-start"`), `sequence` and
//! `previousHash`; its last member is `hash`:
//!
//! ```text
//! {"recordType":"event","sequence":42,"previousHash":"<64 hex>", ...fields... ,"hash":"<64 hex>"}
//! ```
//!
//! # The hash of a record
//!
//! `hash` is the lowercase hex SHA-256 of the record's *body*: the exact bytes of the line
//! without its trailing `\n` and without its last member, that is with the 74-byte suffix
//! `,"hash":"<64 hex>"` removed (the closing `}` is kept). In other words the body is the
//! record serialized without its `hash` member, and the writer produces the line by inserting
//! `,"hash":"…"` before the body's final `}`. Hashing the bytes as written (not a
//! re-serialization) means every byte of the line is covered, and a verifier in any language
//! needs no JSON canonicalisation: `sha256(line[:-75] + "}")` in Python.
//!
//! `previousHash` is the `hash` of the record with the preceding sequence number
//! ([`GENESIS_HASH`], 64 zeros, for sequence 1). Because a record's `hash` commits to every
//! other byte of its line, this chains every byte of every earlier record.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::encoding::sha256_hex;
use crate::identity::{AuthMethod, Caller};
use crate::policy::{Decision, Effect, PolicyType};
use crate::time::iso8601_ms;

/// `eventVersion` of the events p11kms writes (CloudTrail's current record version).
pub const EVENT_VERSION: &str = "1.08";
/// `eventSource` of every event.
pub const EVENT_SOURCE: &str = "p11kms";
/// `previousHash` of sequence 1: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// `type` of the resources p11kms names.
pub const KMS_KEY_RESOURCE_TYPE: &str = "AWS::KMS::Key";

/// `recordType` of an event record.
pub const RECORD_EVENT: &str = "event";
/// `recordType` of a checkpoint record.
pub const RECORD_CHECKPOINT: &str = "checkpoint";
/// `recordType` of the first record of every segment file.
pub const RECORD_SEGMENT_START: &str = "segment-start";

/// Length of the `,"hash":"<64 hex>"` member that ends every record (before `}`).
pub(crate) const HASH_MEMBER_LEN: usize = 74;

/// Frame a record body (a JSON object serialized compactly) as a line: returns the line
/// including `,"hash":"…"}` and the trailing `\n`, and the hash.
pub(crate) fn seal_line(body: &[u8]) -> (Vec<u8>, String) {
    let hash = sha256_hex(body);
    let mut line = Vec::with_capacity(body.len() + HASH_MEMBER_LEN + 1);
    line.extend_from_slice(&body[..body.len().saturating_sub(1)]);
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Split a line (without `\n`) into its body (`hash` member removed, `}` kept) and the hash
/// it claims. `None` if the line does not end with a well-formed `hash` member.
pub(crate) fn split_line(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    let n = line.len();
    if n < HASH_MEMBER_LEN + 2 || line[n - 1] != b'}' {
        return None;
    }
    let member = &line[n - 1 - HASH_MEMBER_LEN..n - 1];
    let hex = member.strip_prefix(b",\"hash\":\"")?.strip_suffix(b"\"")?;
    if hex.len() != 64
        || !hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let mut body = line[..n - 1 - HASH_MEMBER_LEN].to_vec();
    body.push(b'}');
    Some((body, std::str::from_utf8(hex).ok()?))
}

/// Prefix of a record body: `{"recordType":"…","sequence":N,"previousHash":"…"`, with
/// `"node":"…"` after the record type on a node of a cluster.
pub(crate) fn record_prefix(
    record_type: &str,
    node: Option<&str>,
    sequence: u64,
    previous_hash: &str,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    write_prefix(&mut buf, record_type, node, sequence, previous_hash);
    buf
}

/// Appends [`record_prefix`] to `buf` (the writer's hot path: no intermediate copy). A node
/// id is `[a-z0-9-]` only (`valid_node_id`), so it needs no JSON escaping.
pub(crate) fn write_prefix(
    buf: &mut Vec<u8>,
    record_type: &str,
    node: Option<&str>,
    sequence: u64,
    previous_hash: &str,
) {
    use std::io::Write as _;
    let _ = write!(buf, "{{\"recordType\":\"{record_type}\"");
    if let Some(n) = node {
        let _ = write!(buf, ",\"node\":\"{n}\"");
    }
    let _ = write!(
        buf,
        ",\"sequence\":{sequence},\"previousHash\":\"{previous_hash}\""
    );
}

/// Body of a record: the prefix, then the members of `fields_object` (a serialized JSON
/// object, `{…}`), then `}`.
pub(crate) fn record_body(
    record_type: &str,
    node: Option<&str>,
    sequence: u64,
    previous_hash: &str,
    fields_object: &[u8],
) -> Vec<u8> {
    let mut body = record_prefix(record_type, node, sequence, previous_hash);
    close_record(&mut body, fields_object);
    body
}

/// Ends a record whose prefix is in `buf`: the members of `fields_object` (a serialized JSON
/// object, `{…}`) after a comma when there are any, then `}`.
pub(crate) fn close_record(buf: &mut Vec<u8>, fields_object: &[u8]) {
    let inner = fields_object
        .strip_prefix(b"{")
        .and_then(|s| s.strip_suffix(b"}"))
        .unwrap_or(b"");
    if !inner.is_empty() {
        buf.push(b',');
        buf.extend_from_slice(inner);
    }
    buf.push(b'}');
}

/// Who made the request, as CloudTrail's `userIdentity` (the access key id only, never a
/// secret or session token).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    /// `IAMUser`, `AssumedRole`, `Root`, `Internal`, or `Unknown` (failed authentication).
    #[serde(rename = "type")]
    pub identity_type: String,
    /// `aws:userid`: the UserId, `<RoleId>:<session>` for a role session, the account id for a
    /// root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// The caller ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// The caller's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The access key id that signed the request (SigV4 and session callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// For role sessions: the role and the session's attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_context: Option<SessionContext>,
    /// For actions the daemon takes by itself (`type` `AWSService`): who acted, `p11kms`
    /// (CloudTrail names the AWS service here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
}

/// CloudTrail's `userIdentity.sessionContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    /// The role the session was issued for.
    pub session_issuer: SessionIssuer,
    /// Creation date and MFA flag.
    pub attributes: SessionAttributes,
}

/// CloudTrail's `sessionContext.sessionIssuer`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionIssuer {
    /// `Role`.
    #[serde(rename = "type")]
    pub issuer_type: String,
    /// The role's RoleId (`AROA…`).
    pub principal_id: String,
    /// The role ARN.
    pub arn: String,
    /// The role's account.
    pub account_id: String,
    /// The role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

/// CloudTrail's `sessionContext.attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAttributes {
    /// When the session was issued (ISO 8601).
    pub creation_date: String,
    /// `"true"` or `"false"`, a string as in CloudTrail.
    pub mfa_authenticated: String,
}

impl UserIdentity {
    /// The identity of an unauthenticated request (failed authentication), with the access
    /// key id it presented, if any.
    pub fn unknown(access_key_id: Option<String>) -> UserIdentity {
        UserIdentity {
            identity_type: "Unknown".into(),
            access_key_id,
            ..UserIdentity::default()
        }
    }

    /// The identity of an authenticated caller.
    pub fn from_caller(caller: &Caller) -> UserIdentity {
        use crate::identity::directory::PrincipalType;
        let p = &caller.principal;
        let identity_type = match (caller.method, p.principal_type()) {
            (AuthMethod::Internal, _) => "Internal",
            (_, PrincipalType::User) => "IAMUser",
            (_, PrincipalType::AssumedRole) => "AssumedRole",
            (_, PrincipalType::Account) => "Root",
        };
        let session_context = caller.session.as_ref().map(|s| SessionContext {
            session_issuer: SessionIssuer {
                issuer_type: "Role".into(),
                principal_id: s.role_id.clone(),
                arn: s.role_arn.clone(),
                account_id: s.account.clone(),
                user_name: s.role_arn.rsplit('/').next().map(str::to_owned),
            },
            attributes: SessionAttributes {
                creation_date: iso8601_ms(s.issued_ms),
                mfa_authenticated: "false".into(),
            },
        });
        UserIdentity {
            identity_type: identity_type.into(),
            principal_id: Some(p.userid().into_owned()),
            arn: Some(caller.principal_arn.clone()),
            account_id: Some(caller.account.clone()),
            access_key_id: caller.access_key_id.clone(),
            session_context,
            invoked_by: None,
        }
    }

    /// The identity of an action the daemon took by itself in `account` (CloudTrail's
    /// service identity: `type` `AWSService`, `invokedBy` [`EVENT_SOURCE`]).
    pub fn service(account: impl Into<String>) -> UserIdentity {
        UserIdentity {
            identity_type: "AWSService".into(),
            account_id: Some(account.into()),
            invoked_by: Some(EVENT_SOURCE.into()),
            ..UserIdentity::default()
        }
    }
}

/// One entry of CloudTrail's `resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// The key ARN.
    #[serde(rename = "ARN")]
    pub arn: String,
    /// The key's account.
    #[serde(rename = "accountId")]
    pub account_id: String,
    /// [`KMS_KEY_RESOURCE_TYPE`].
    #[serde(rename = "type")]
    pub resource_type: String,
}

impl Resource {
    /// A KMS key resource.
    pub fn kms_key(arn: impl Into<String>, account_id: impl Into<String>) -> Resource {
        Resource {
            arn: arn.into(),
            account_id: account_id.into(),
            resource_type: KMS_KEY_RESOURCE_TYPE.into(),
        }
    }
}

/// The authorization decision (p11kms addition).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditDecision {
    /// `Allow` or `Deny`.
    pub effect: String,
    /// Why, without policy text: `allowed by key policy 'default' statement 'Enable IAM'`,
    /// `explicit deny in an identity-based policy`, `authentication failed`, …
    pub reason: String,
    /// The statements (or grant) that decided.
    pub deciding_statements: Vec<AuditDecidingStatement>,
}

/// A deciding statement: where it is, never its text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditDecidingStatement {
    /// `KeyPolicy`, `IdentityPolicy`, `Guardrail`, `PermissionBoundary`, `SessionPolicy`,
    /// `Grant` or `CrossAccountScope`.
    pub policy_type: String,
    /// The policy's name (the grant id for grants).
    pub policy_name: String,
    /// The statement's Sid, else `Statement[i]`; the grant id for grants.
    pub statement: String,
}

impl AuditDecision {
    /// From the policy engine's decision.
    pub fn from_policy(d: &Decision) -> AuditDecision {
        AuditDecision {
            effect: match d.effect {
                Effect::Allow => "Allow",
                Effect::Deny => "Deny",
            }
            .into(),
            reason: d.summary(),
            deciding_statements: d
                .deciding
                .iter()
                .map(|s| AuditDecidingStatement {
                    policy_type: policy_type_name(s.policy_type).into(),
                    policy_name: s.policy_name.clone(),
                    statement: s.statement.clone(),
                })
                .collect(),
        }
    }

    /// A decision taken before policy evaluation (failed authentication, validation): Deny
    /// with `reason`.
    pub fn deny(reason: impl Into<String>) -> AuditDecision {
        AuditDecision {
            effect: "Deny".into(),
            reason: reason.into(),
            deciding_statements: Vec::new(),
        }
    }
}

fn policy_type_name(t: PolicyType) -> &'static str {
    match t {
        PolicyType::KeyPolicy => "KeyPolicy",
        PolicyType::IdentityPolicy => "IdentityPolicy",
        PolicyType::Guardrail => "Guardrail",
        PolicyType::PermissionBoundary => "PermissionBoundary",
        PolicyType::SessionPolicy => "SessionPolicy",
        PolicyType::Grant => "Grant",
        PolicyType::CrossAccountScope => "CrossAccountScope",
    }
}

/// One audit event: one per request through any door, whatever its outcome. Field names
/// are CloudTrail's where one exists; `decision`, `keyVersion`, `latencyMicros`, `door` and
/// `authMethod` are p11kms additions. The chain fields (`recordType`, `sequence`,
/// `previousHash`, `hash`) are added by the writer.
///
/// Build one with [`AuditEvent::new`] and fill the public fields. Never put plaintext, data
/// keys, key material, PINs, secrets or session tokens in any field; as a safety net the
/// writer also drops members with such names from `requestParameters` and
/// `responseElements` (see [`scrub_secrets`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// [`EVENT_VERSION`].
    pub event_version: Cow<'static, str>,
    /// Who called.
    pub user_identity: UserIdentity,
    /// When the request arrived, ISO 8601 UTC with milliseconds.
    pub event_time: String,
    /// [`EVENT_SOURCE`].
    pub event_source: Cow<'static, str>,
    /// The operation: `Encrypt`, `CreateKey`, …
    pub event_name: String,
    /// The region the daemon serves (from the config).
    pub aws_region: String,
    /// The caller's address, when the door knows it.
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: Option<String>,
    /// The client's user agent, when sent.
    pub user_agent: Option<String>,
    /// The AWS error code (`AccessDeniedException`, …), absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The error message returned to the caller, absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The request's parameters (key id, encryption context, key spec, …), never plaintext.
    pub request_parameters: Option<Value>,
    /// Selected response fields (key id, key ARN, …), never plaintext or data keys.
    pub response_elements: Option<Value>,
    /// The request id returned to the caller (ties log lines to this event).
    #[serde(rename = "requestID")]
    pub request_id: String,
    /// A fresh UUID for this event.
    #[serde(rename = "eventID")]
    pub event_id: String,
    /// Whether the operation only reads.
    pub read_only: bool,
    /// The keys the request named.
    pub resources: Vec<Resource>,
    /// `AwsApiCall`.
    pub event_type: Cow<'static, str>,
    /// `true`: CloudTrail records KMS calls as management events.
    pub management_event: bool,
    /// The account that owns the key, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_account_id: Option<String>,
    /// `Management`.
    pub event_category: Cow<'static, str>,
    /// p11kms: the authorization decision (absent if the request failed before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<AuditDecision>,
    /// p11kms: the key version used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    /// p11kms: time from the request's arrival to its answer, in microseconds.
    pub latency_micros: u64,
    /// p11kms: the door the request came through (`grpc`, `aws-json`, `internal`).
    pub door: Cow<'static, str>,
    /// p11kms: how the caller authenticated (`mtls`, `sigv4`, `session`, `internal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// p11kms: [`PHASE_INTENT`] for the record a changing request makes durable before its
    /// change is stored (the request's outcome follows in a second event with the same
    /// `requestID`); absent on every other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Cow<'static, str>>,
    /// CloudTrail's `additionalEventData`: for an aggregate of refused requests, the count
    /// and the first and last times (see `docs/audit.md`, "Refused requests"); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_event_data: Option<Value>,
}

/// `phase` of an intent record (see `docs/audit.md`, "No change without a record").
pub const PHASE_INTENT: &str = "intent";

impl AuditEvent {
    /// An event for operation `event_name` with request id `request_id` at `now_unix_ms`;
    /// every other field is empty (`Unknown` identity, `grpc` door, region `local`).
    pub fn new(
        event_name: impl Into<String>,
        request_id: impl Into<String>,
        now_unix_ms: i64,
    ) -> AuditEvent {
        let event_name = event_name.into();
        AuditEvent {
            event_version: Cow::Borrowed(EVENT_VERSION),
            user_identity: UserIdentity::unknown(None),
            event_time: iso8601_ms(now_unix_ms),
            event_source: Cow::Borrowed(EVENT_SOURCE),
            read_only: is_read_only(&event_name),
            event_name,
            aws_region: "local".into(),
            source_ip_address: None,
            user_agent: None,
            error_code: None,
            error_message: None,
            request_parameters: None,
            response_elements: None,
            request_id: request_id.into(),
            event_id: super::ids::uuid_v4().hyphenated().to_string(),
            resources: Vec::new(),
            event_type: Cow::Borrowed("AwsApiCall"),
            management_event: true,
            recipient_account_id: None,
            event_category: Cow::Borrowed("Management"),
            decision: None,
            key_version: None,
            latency_micros: 0,
            door: Cow::Borrowed("grpc"),
            auth_method: None,
            phase: None,
            additional_event_data: None,
        }
    }

    /// Whether this is an intent record (written before a change is stored).
    pub fn is_intent(&self) -> bool {
        self.phase.as_deref() == Some(PHASE_INTENT)
    }

    /// Set the caller: `userIdentity`, `sourceIPAddress` and `authMethod`.
    pub fn with_caller(mut self, caller: &Caller) -> Self {
        self.user_identity = UserIdentity::from_caller(caller);
        if let Some(ip) = caller.source_ip {
            self.source_ip_address = Some(ip.to_string());
        }
        self.auth_method = Some(caller.method.as_str().into());
        self
    }

    /// Set one member of `requestParameters` (creating the object).
    pub fn set_request_parameter(&mut self, name: &str, value: impl Into<Value>) {
        set_member(&mut self.request_parameters, name, value.into());
    }

    /// Set one member of `responseElements` (creating the object).
    pub fn set_response_element(&mut self, name: &str, value: impl Into<Value>) {
        set_member(&mut self.response_elements, name, value.into());
    }

    /// Set `requestParameters.encryptionContext` (as CloudTrail logs it; an empty context is
    /// omitted).
    pub fn set_encryption_context(&mut self, context: &BTreeMap<String, String>) {
        if !context.is_empty() {
            let map: Map<String, Value> = context
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            self.set_request_parameter("encryptionContext", Value::Object(map));
        }
    }

    /// Add a KMS key to `resources` (and set `recipientAccountId`).
    pub fn add_key_resource(&mut self, arn: impl Into<String>, account_id: impl Into<String>) {
        let r = Resource::kms_key(arn, account_id);
        if self.recipient_account_id.is_none() {
            self.recipient_account_id = Some(r.account_id.clone());
        }
        if !self.resources.contains(&r) {
            self.resources.push(r);
        }
    }

    /// Record a failure: `errorCode` (the AWS exception name) and `errorMessage`.
    pub fn set_error(&mut self, code: impl Into<String>, message: impl Into<String>) {
        self.error_code = Some(code.into());
        self.error_message = Some(message.into());
    }

    /// The event as a JSON object (no chain fields), with secrets scrubbed.
    #[cfg(test)]
    pub(crate) fn into_json_object(mut self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        self.write_json_object(&mut out)?;
        Ok(out)
    }

    /// Scrubs secrets from the parameters and appends the event as a JSON object (no chain
    /// fields) to `out`. The writer thread calls this, so a request pays for neither.
    pub(crate) fn write_json_object(&mut self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        if let Some(v) = self.request_parameters.as_mut() {
            scrub_secrets(v);
        }
        if let Some(v) = self.response_elements.as_mut() {
            scrub_secrets(v);
        }
        serde_json::to_writer(out, &*self)
    }
}

fn set_member(slot: &mut Option<Value>, name: &str, value: Value) {
    match slot {
        Some(Value::Object(m)) => {
            m.insert(name.to_owned(), value);
        }
        _ => {
            let mut m = Map::new();
            m.insert(name.to_owned(), value);
            *slot = Some(Value::Object(m));
        }
    }
}

/// Whether KMS operation `name` changes nothing (CloudTrail's `readOnly`: reads and the
/// cryptographic operations, which CloudTrail also records as read-only).
pub fn is_read_only(name: &str) -> bool {
    const CRYPTO: &[&str] = &[
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateRandom",
        "GenerateMac",
        "VerifyMac",
        "Sign",
        "Verify",
        "DeriveSharedSecret",
    ];
    name.starts_with("Describe")
        || name.starts_with("List")
        || name.starts_with("Get")
        || CRYPTO.contains(&name)
}

/// Member names (compared lowercase, without `_`/`-`) that never reach the trail.
const SECRET_NAMES: &[&str] = &[
    "plaintext",
    "plaintextblob",
    "datakey",
    "keymaterial",
    "privatekey",
    "pin",
    "userpin",
    "sopin",
    "password",
    "secret",
    "secretkey",
    "secretaccesskey",
    "sessiontoken",
    "securitytoken",
    "token",
];

/// Remove, at any depth, object members whose name denotes a secret (`Plaintext`,
/// `SecretAccessKey`, `SessionToken`, `pin`, …). A safety net: callers must not add them.
pub fn scrub_secrets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                let norm: String = k
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                !SECRET_NAMES.contains(&norm.as_str())
            });
            for child in m.values_mut() {
                scrub_secrets(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_secrets),
        _ => {}
    }
}

/// The fields of a `segment-start` record (the first record of every segment file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentStart {
    /// When the segment was opened (ISO 8601 UTC, ms).
    pub time: String,
    /// This segment's file name (`audit-000002.jsonl`).
    pub segment: String,
    /// The previous segment's file name; absent for the first segment of a trail.
    pub previous_segment: Option<String>,
    /// The sequence number of the last good record of the previous segment (this record's
    /// `previousHash` is its hash); 0 for a new trail.
    pub previous_sequence: u64,
    /// `new-trail`, `startup`, `rotation-size`, `rotation-time`, `crash-recovery` or
    /// `write-error-recovery`.
    pub reason: String,
    /// Set when the previous segment ended with a torn (incomplete) line: the last good
    /// sequence before it. The torn bytes stay in place and the verifier reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_after_sequence: Option<u64>,
    /// A human-readable note (why the segment was started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Signature algorithm of checkpoints.
pub const CHECKPOINT_ALGORITHM: &str = "ECDSA_P256_SHA256";

/// The fields of a `checkpoint` record: a signature by the HSM-resident audit key over the
/// record itself, which includes `sequence` and `previousHash`, hence the whole chain head.
///
/// The signed message is the checkpoint's body without `signature`: the record's line
/// without `\n`, without the final `,"hash":"…"` member and without the `,"signature":"…"`
/// member that precedes it (`}` kept). The signature is ECDSA P-256 over SHA-256 of those
/// bytes, DER-encoded, base64 (standard alphabet, padded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// When the checkpoint was made (ISO 8601 UTC, ms).
    pub time: String,
    /// The first sequence number this checkpoint covers (the record after the previous
    /// checkpoint, or the first record of the trail this process wrote).
    pub first_sequence: u64,
    /// The last sequence number it covers: the chain head (`sequence - 1`).
    pub head_sequence: u64,
    /// The hash of the head record (equals `previousHash`).
    pub head_hash: String,
    /// Number of records covered (`head_sequence - first_sequence + 1`).
    pub record_count: u64,
    /// Number of event records covered.
    pub event_count: u64,
    /// The sequence number of the previous checkpoint, if any (this process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_checkpoint_sequence: Option<u64>,
    /// [`CHECKPOINT_ALGORITHM`].
    pub algorithm: String,
    /// Lowercase hex SHA-256 of the signing key's DER SubjectPublicKeyInfo.
    pub key_id: String,
}

/// Which key signed: the lowercase hex SHA-256 of its DER SubjectPublicKeyInfo.
pub fn key_id_of(spki_der: &[u8]) -> String {
    sha256_hex(spki_der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_split_round_trip() {
        let body = record_body("event", None, 7, GENESIS_HASH, br#"{"a":1}"#);
        assert_eq!(
            body,
            format!(
                r#"{{"recordType":"event","sequence":7,"previousHash":"{GENESIS_HASH}","a":1}}"#
            )
            .into_bytes()
        );
        let (line, hash) = seal_line(&body);
        assert_eq!(*line.last().unwrap(), b'\n');
        let (b, h) = split_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(b, body);
        assert_eq!(h, hash);
        assert_eq!(sha256_hex(&b), hash);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["hash"], hash);
        assert!(split_line(b"{}").is_none());
        assert!(split_line(&line[..line.len() - 3]).is_none());
    }

    #[test]
    fn secrets_are_scrubbed() {
        let mut e = AuditEvent::new("Encrypt", "r1", 0);
        e.set_request_parameter("keyId", "alias/x");
        e.set_request_parameter("Plaintext", "c2VjcmV0");
        e.set_request_parameter(
            "nested",
            serde_json::json!([{"session_token": "t", "ok": 1}]),
        );
        e.set_response_element("plaintext", "x");
        let v: Value = serde_json::from_slice(&e.clone().into_json_object().unwrap()).unwrap();
        assert_eq!(v["requestParameters"]["keyId"], "alias/x");
        assert!(v["requestParameters"].get("Plaintext").is_none());
        assert_eq!(
            v["requestParameters"]["nested"][0],
            serde_json::json!({"ok": 1})
        );
        assert_eq!(v["responseElements"], serde_json::json!({}));
    }

    #[test]
    fn event_round_trips_through_serde() {
        let mut e = AuditEvent::new("Decrypt", "req-1", 1_700_000_000_000);
        let mut ctx = BTreeMap::new();
        ctx.insert("purpose".to_string(), "test".to_string());
        e.set_encryption_context(&ctx);
        e.add_key_resource("arn:aws:kms:local:111122223333:key/k", "111122223333");
        e.set_error("AccessDeniedException", "denied");
        e.decision = Some(AuditDecision::deny("no resource-based policy allows it"));
        let bytes = e.clone().into_json_object().unwrap();
        let back: AuditEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, e);
        assert!(e.read_only);
        assert!(!AuditEvent::new("CreateKey", "r", 0).read_only);
        assert!(AuditEvent::new("ListKeys", "r", 0).read_only);
    }
}
