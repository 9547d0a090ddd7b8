//! Request validation against the AWS KMS service model, before anything else runs.
//!
//! The rules are botocore's KMS model (`service-2.json`), extracted by
//! `scripts/kms-input-constraints.py` into `model/kms-input-constraints.json` and embedded here;
//! a test checks that the file is exactly what the script extracts from the venv's botocore.
//! For each operation the input's members are checked as AWS checks them:
//!
//! 1. types (JSON object/array/string/number/boolean, base64 blobs): a wrong type is a
//!    `SerializationException` naming the member and the expected type;
//! 2. constraints (required, min/max length or value, pattern, enum, list sizes, map keys and
//!    values): `ValidationException` in AWS's format, `N validation error(s) detected: Value at
//!    '<camelCase path>' failed to satisfy constraint: <rule>; ...`;
//! 3. on the AWS door, members of the model that p11kms does not read (see [`reads`]) are
//!    refused with a named error instead of being ignored.
//!
//! No message carries the caller's value: only the member's path, the expected type and the
//! rule. The gRPC door runs step 2 on an AWS-shaped view of its request (`api::grpc::view`).

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::core::KmsError;
use crate::core::DRY_RUN_OPERATIONS;

/// The checked-in extract of botocore's KMS model.
pub const CONSTRAINTS_JSON: &str = include_str!("model/kms-input-constraints.json");

/// A refusal found by the model check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A member of the wrong type (`SerializationException`).
    Serialization(String),
    /// A constraint violated, or a member p11kms does not honour.
    Kms(KmsError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    String,
    Blob,
    Integer,
    Boolean,
    Timestamp,
    List,
    Map,
    Structure,
}

#[derive(Debug, Deserialize)]
struct Shape {
    #[serde(rename = "type")]
    kind: Kind,
    min: Option<i64>,
    max: Option<i64>,
    pattern: Option<String>,
    #[serde(rename = "enum")]
    values: Option<Vec<String>>,
    member: Option<String>,
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    members: Vec<(String, String)>,
    #[serde(default)]
    required: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Extract {
    operations: HashMap<String, String>,
    shapes: HashMap<String, Shape>,
}

/// The model, with every pattern compiled once.
struct Model {
    operations: HashMap<String, String>,
    shapes: HashMap<String, Shape>,
    patterns: HashMap<String, Regex>,
}

static MODEL: LazyLock<Model> = LazyLock::new(|| {
    Model::load(CONSTRAINTS_JSON).expect("the embedded KMS model extract is valid")
});

impl Model {
    fn load(text: &str) -> Result<Model, String> {
        let e: Extract = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut patterns = HashMap::new();
        for s in e.shapes.values() {
            if let Some(p) = &s.pattern {
                let re = Regex::new(&format!("^(?:{})$", java_pattern(p)))
                    .map_err(|err| format!("pattern {p}: {err}"))?;
                patterns.insert(p.clone(), re);
            }
        }
        Ok(Model {
            operations: e.operations,
            shapes: e.shapes,
            patterns,
        })
    }
}

/// A Java regular expression (AWS's models use Java's syntax) in the `regex` crate's: `\w`,
/// `\d` and `\s` are ASCII-only in Java, so they become the ASCII classes, and a `-` that Java
/// reads as a literal inside a class (`[0-9-_]`) is escaped.
fn java_pattern(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 16);
    let mut in_class = false;
    // In a class: whether the last atom was a single character that a '-' may extend into a
    // range, and whether a range's '-' has just been written.
    let (mut can_range, mut in_range) = (false, false);
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        let single = match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    out.push_str("\\\\");
                    break;
                };
                let class = match n {
                    'w' => Some("word"),
                    'd' => Some("digit"),
                    's' => Some("space"),
                    _ => None,
                };
                match class {
                    Some(k) if in_class => out.push_str(&format!("[:{k}:]")),
                    Some(k) => out.push_str(&format!("[[:{k}:]]")),
                    None => {
                        out.push('\\');
                        out.push(n);
                    }
                }
                class.is_none()
            }
            '[' if !in_class => {
                in_class = true;
                (can_range, in_range) = (false, false);
                out.push(c);
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                continue;
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
                continue;
            }
            '-' if in_class => {
                if can_range && chars.peek().is_some_and(|n| *n != ']') {
                    out.push('-');
                    (can_range, in_range) = (false, true);
                } else {
                    out.push_str("\\-");
                    (can_range, in_range) = (false, false);
                }
                continue;
            }
            _ => {
                out.push(c);
                true
            }
        };
        if in_class {
            can_range = single && !in_range;
            in_range = false;
        }
    }
    out
}

/// `KeyId` -> `keyId`, as AWS prints member paths.
fn camel(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        camel(member)
    } else {
        format!("{path}.{}", camel(member))
    }
}

fn type_error(path: &str, expected: &str) -> String {
    format!("The value at '{path}' must be {expected}.")
}

/// One walk over a request: the constraint failures found so far.
struct Walk<'m> {
    model: &'m Model,
    errors: Vec<String>,
}

impl Walk<'_> {
    fn fail(&mut self, path: &str, rule: &str) {
        self.errors.push(format!(
            "Value at '{path}' failed to satisfy constraint: {rule}"
        ));
    }

    fn value(&mut self, shape_name: &str, v: &Value, path: &str) -> Result<(), String> {
        let model = self.model;
        let Some(shape) = model.shapes.get(shape_name) else {
            return Ok(());
        };
        match shape.kind {
            Kind::Structure => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| type_error(path, "a structure (JSON object)"))?;
                self.structure(shape, obj, path)
            }
            Kind::List => {
                let items = v
                    .as_array()
                    .ok_or_else(|| type_error(path, "a list (JSON array)"))?;
                for rule in lengths(shape, items.len()) {
                    self.fail(path, &rule);
                }
                let member = shape.member.as_deref().unwrap_or_default();
                let nested = model
                    .shapes
                    .get(member)
                    .is_some_and(|s| matches!(s.kind, Kind::Structure | Kind::List | Kind::Map));
                let mut rules = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}.{}.member", i + 1);
                    if nested {
                        self.value(member, item, &at)?;
                    } else {
                        rules.extend(self.scalar(member, item, &at)?);
                    }
                }
                self.grouped(path, "Member must satisfy constraint", rules);
                Ok(())
            }
            Kind::Map => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| type_error(path, "a map (JSON object)"))?;
                for rule in lengths(shape, obj.len()) {
                    self.fail(path, &rule);
                }
                let (key, value) = (
                    shape.key.as_deref().unwrap_or_default(),
                    shape.value.as_deref().unwrap_or_default(),
                );
                let (mut key_rules, mut value_rules) = (Vec::new(), Vec::new());
                for (k, x) in obj {
                    key_rules.extend(self.scalar(key, &Value::String(k.clone()), path)?);
                    value_rules.extend(self.scalar(value, x, &format!("{path}.value"))?);
                }
                self.grouped(path, "Map keys must satisfy constraint", key_rules);
                self.grouped(path, "Map value must satisfy constraint", value_rules);
                Ok(())
            }
            _ => {
                for rule in self.scalar(shape_name, v, path)? {
                    self.fail(path, &rule);
                }
                Ok(())
            }
        }
    }

    fn structure(
        &mut self,
        shape: &Shape,
        obj: &Map<String, Value>,
        path: &str,
    ) -> Result<(), String> {
        for name in &shape.required {
            if obj.get(name).is_none_or(Value::is_null) {
                self.fail(&join(path, name), "Member must not be null");
            }
        }
        for (name, member) in &shape.members {
            if let Some(x) = obj.get(name).filter(|x| !x.is_null()) {
                self.value(member, x, &join(path, name))?;
            }
        }
        Ok(())
    }

    /// AWS's form for the elements of a list of scalars, and for map keys and values.
    fn grouped(&mut self, path: &str, what: &str, mut rules: Vec<String>) {
        if rules.is_empty() {
            return;
        }
        rules.sort();
        rules.dedup();
        self.fail(path, &format!("{what}: [{}]", rules.join(", ")));
    }

    /// Type-checks a scalar, then returns the rules it breaks.
    fn scalar(&self, shape_name: &str, v: &Value, path: &str) -> Result<Vec<String>, String> {
        let Some(shape) = self.model.shapes.get(shape_name) else {
            return Ok(Vec::new());
        };
        let mut rules = Vec::new();
        match shape.kind {
            Kind::String => {
                let s = v.as_str().ok_or_else(|| type_error(path, "a string"))?;
                rules.extend(lengths(shape, s.encode_utf16().count()));
                if let Some(p) = shape
                    .pattern
                    .as_ref()
                    .filter(|_| !loopback_xks_proxy(shape_name, s))
                {
                    if self.model.patterns.get(p).is_some_and(|re| !re.is_match(s)) {
                        rules.push(format!(
                            "Member must satisfy regular expression pattern: {p}"
                        ));
                    }
                }
                if let Some(values) = &shape.values {
                    if !values.iter().any(|e| e == s) {
                        rules.push(format!(
                            "Member must satisfy enum value set: [{}]",
                            values.join(", ")
                        ));
                    }
                }
            }
            Kind::Blob => {
                let s = v
                    .as_str()
                    .ok_or_else(|| type_error(path, "a base64-encoded blob (JSON string)"))?;
                let bytes = Zeroizing::new(
                    B64.decode(s.as_bytes())
                        .map_err(|_| type_error(path, "a base64-encoded blob"))?,
                );
                rules.extend(lengths(shape, bytes.len()));
            }
            Kind::Integer => {
                let n = v
                    .as_i64()
                    .filter(|n| i32::try_from(*n).is_ok())
                    .ok_or_else(|| type_error(path, "an integer (32-bit JSON number)"))?;
                rules.extend(bounds(shape, n, "value"));
            }
            Kind::Boolean => {
                v.as_bool().ok_or_else(|| type_error(path, "a boolean"))?;
            }
            Kind::Timestamp => {
                v.as_f64()
                    .ok_or_else(|| type_error(path, "a timestamp (epoch seconds, JSON number)"))?;
            }
            Kind::List | Kind::Map | Kind::Structure => {
                return Err(type_error(path, "a scalar"));
            }
        }
        Ok(rules)
    }
}

/// The length rules a string, blob, list or map of `len` breaks.
fn lengths(shape: &Shape, len: usize) -> Vec<String> {
    bounds(shape, i64::try_from(len).unwrap_or(i64::MAX), "length")
}

/// The model's `min`/`max` rules that `n` breaks, as AWS words them: `what` is `value` for
/// an integer and `length` for a string, blob, list or map.
fn bounds(shape: &Shape, n: i64, what: &str) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(min) = shape.min.filter(|m| n < *m) {
        rules.push(format!(
            "Member must have {what} greater than or equal to {min}"
        ));
    }
    if let Some(max) = shape.max.filter(|m| n > *m) {
        rules.push(format!(
            "Member must have {what} less than or equal to {max}"
        ));
    }
    rules
}

/// AWS's ValidationException message for a list of failures.
fn validation_message(errors: &[String]) -> String {
    let n = errors.len();
    let noun = if n == 1 { "error" } else { "errors" };
    format!("{n} validation {noun} detected: {}", errors.join("; "))
}

/// Checks a request body (the operation's input as AWS JSON) against the model: types, then
/// constraints. Operations the model does not have (p11kms's own) pass.
pub fn check(operation: &str, body: &Value) -> Result<(), Refusal> {
    let model = &*MODEL;
    let Some(input) = model.operations.get(operation) else {
        return Ok(());
    };
    let mut walk = Walk {
        model,
        errors: Vec::new(),
    };
    walk.value(input, body, "")
        .map_err(Refusal::Serialization)?;
    if walk.errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Kms(KmsError::Validation(validation_message(
            &walk.errors,
        ))))
    }
}

/// The members of an operation's input that are wrongly typed, by name (they are left out of
/// the audit record, so a wrong-typed value is never logged).
pub fn mistyped_members(operation: &str, body: &Value) -> Vec<String> {
    let model = &*MODEL;
    let (Some(input), Some(obj)) = (
        model
            .operations
            .get(operation)
            .and_then(|i| model.shapes.get(i)),
        body.as_object(),
    ) else {
        return Vec::new();
    };
    input
        .members
        .iter()
        .filter(|(name, shape)| {
            obj.get(name).filter(|v| !v.is_null()).is_some_and(|v| {
                let mut walk = Walk {
                    model,
                    errors: Vec::new(),
                };
                walk.value(shape, v, name).is_err()
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The model's input members of an operation (nested structure members as `Outer.Inner`),
/// in model order; `None` when the model has no such operation.
pub fn input_members(operation: &str) -> Option<Vec<String>> {
    let model = &*MODEL;
    let input = model.shapes.get(model.operations.get(operation)?)?;
    let mut out = Vec::new();
    for (name, shape) in &input.members {
        out.push(name.clone());
        if let Some(s) = model
            .shapes
            .get(shape)
            .filter(|s| s.kind == Kind::Structure)
        {
            out.extend(s.members.iter().map(|(m, _)| format!("{name}.{m}")));
        }
    }
    Some(out)
}

/// The input members the AWS door reads, per operation (nested structure members as
/// `Outer.Inner`; a structure member is read when listed, its members only as listed).
/// Every other member of the model is refused when set ([`unread_refusal`]), never ignored.
/// `DryRun` is read by the operations of [`DRY_RUN_OPERATIONS`] in addition to these.
fn base_reads(operation: &str) -> Option<&'static [&'static str]> {
    key_admin_reads(operation)
        .or_else(|| crypto_reads(operation))
        .or_else(|| key_store_reads(operation))
}

/// [`base_reads`] of the custom key store operations (`XksProxyVpcEndpointServiceOwner` is
/// refused: p11kms has no VPC).
fn key_store_reads(operation: &str) -> Option<&'static [&'static str]> {
    const STORE: &[&str] = &["CustomKeyStoreId"];
    Some(match operation {
        "CreateCustomKeyStore" => &[
            "CustomKeyStoreName",
            "CloudHsmClusterId",
            "TrustAnchorCertificate",
            "KeyStorePassword",
            "CustomKeyStoreType",
        ],
        "ConnectCustomKeyStore" | "DisconnectCustomKeyStore" | "DeleteCustomKeyStore" => STORE,
        "UpdateCustomKeyStore" => &[
            "CustomKeyStoreId",
            "NewCustomKeyStoreName",
            "KeyStorePassword",
            "CloudHsmClusterId",
        ],
        "DescribeCustomKeyStores" => &["CustomKeyStoreId", "CustomKeyStoreName", "Limit", "Marker"],
        _ => return None,
    })
}

/// [`base_reads`] of the key, alias, policy, grant, rotation and import operations.
fn key_admin_reads(operation: &str) -> Option<&'static [&'static str]> {
    const KEY: &[&str] = &["KeyId"];
    const KEY_TOKENS: &[&str] = &["KeyId", "GrantTokens"];
    const PAGE: &[&str] = &["KeyId", "Limit", "Marker"];
    Some(match operation {
        "CreateKey" => &[
            "Policy",
            "Description",
            "KeyUsage",
            "CustomerMasterKeySpec",
            "KeySpec",
            "Origin",
            "BypassPolicyLockoutSafetyCheck",
            "Tags",
            "MultiRegion",
            "CustomKeyStoreId",
            "XksKeyId",
        ],
        "DescribeKey" | "GetPublicKey" => KEY_TOKENS,
        "ListKeys" => &["Limit", "Marker"],
        "ReplicateKey" => &[
            "KeyId",
            "ReplicaRegion",
            "Policy",
            "BypassPolicyLockoutSafetyCheck",
            "Description",
            "Tags",
        ],
        "UpdatePrimaryRegion" => &["KeyId", "PrimaryRegion"],
        "EnableKey"
        | "DisableKey"
        | "CancelKeyDeletion"
        | "DisableKeyRotation"
        | "GetKeyRotationStatus"
        | "RotateKeyOnDemand"
        | "GetKeyLastUsage" => KEY,
        "ScheduleKeyDeletion" => &["KeyId", "PendingWindowInDays"],
        "UpdateKeyDescription" => &["KeyId", "Description"],
        "TagResource" => &["KeyId", "Tags"],
        "UntagResource" => &["KeyId", "TagKeys"],
        "ListResourceTags" | "ListAliases" | "ListKeyPolicies" => PAGE,
        "CreateAlias" | "UpdateAlias" => &["AliasName", "TargetKeyId"],
        "DeleteAlias" => &["AliasName"],
        "GetKeyPolicy" => &["KeyId", "PolicyName"],
        "PutKeyPolicy" => &[
            "KeyId",
            "PolicyName",
            "Policy",
            "BypassPolicyLockoutSafetyCheck",
        ],
        "CreateGrant" => &[
            "KeyId",
            "GranteePrincipal",
            "RetiringPrincipal",
            "Operations",
            "Constraints",
            "Constraints.EncryptionContextSubset",
            "Constraints.EncryptionContextEquals",
            "GrantTokens",
            "Name",
        ],
        "ListGrants" => &["Limit", "Marker", "KeyId", "GrantId", "GranteePrincipal"],
        "ListRetirableGrants" => &["Limit", "Marker", "RetiringPrincipal"],
        "RetireGrant" => &["GrantToken", "KeyId", "GrantId"],
        "RevokeGrant" => &["KeyId", "GrantId"],
        "EnableKeyRotation" => &["KeyId", "RotationPeriodInDays"],
        "ListKeyRotations" => &["KeyId", "IncludeKeyMaterial", "Limit", "Marker"],
        "GetParametersForImport" => &["KeyId", "WrappingAlgorithm", "WrappingKeySpec"],
        "ImportKeyMaterial" => &[
            "KeyId",
            "ImportToken",
            "EncryptedKeyMaterial",
            "ValidTo",
            "ExpirationModel",
            "ImportType",
            "KeyMaterialDescription",
            "KeyMaterialId",
        ],
        "DeleteImportedKeyMaterial" => &["KeyId", "KeyMaterialId"],
        _ => return None,
    })
}

/// [`base_reads`] of the cryptographic operations (data, data keys, signatures, MACs,
/// random bytes, shared secrets).
fn crypto_reads(operation: &str) -> Option<&'static [&'static str]> {
    Some(match operation {
        "Encrypt" => &[
            "KeyId",
            "Plaintext",
            "EncryptionContext",
            "GrantTokens",
            "EncryptionAlgorithm",
        ],
        "Decrypt" => &[
            "CiphertextBlob",
            "EncryptionContext",
            "GrantTokens",
            "KeyId",
            "EncryptionAlgorithm",
        ],
        "ReEncrypt" => &[
            "CiphertextBlob",
            "SourceEncryptionContext",
            "SourceKeyId",
            "DestinationKeyId",
            "DestinationEncryptionContext",
            "SourceEncryptionAlgorithm",
            "DestinationEncryptionAlgorithm",
            "GrantTokens",
        ],
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => &[
            "KeyId",
            "EncryptionContext",
            "NumberOfBytes",
            "KeySpec",
            "GrantTokens",
        ],
        "GenerateRandom" => &["NumberOfBytes", "CustomKeyStoreId"],
        "Sign" => &[
            "KeyId",
            "Message",
            "MessageType",
            "GrantTokens",
            "SigningAlgorithm",
        ],
        "Verify" => &[
            "KeyId",
            "Message",
            "MessageType",
            "Signature",
            "SigningAlgorithm",
            "GrantTokens",
        ],
        "DeriveSharedSecret" => &["KeyId", "KeyAgreementAlgorithm", "PublicKey", "GrantTokens"],
        "GenerateMac" => &["Message", "KeyId", "MacAlgorithm", "GrantTokens"],
        "VerifyMac" => &["Message", "KeyId", "MacAlgorithm", "Mac", "GrantTokens"],
        "GenerateDataKeyPair" | "GenerateDataKeyPairWithoutPlaintext" => {
            &["EncryptionContext", "KeyId", "KeyPairSpec", "GrantTokens"]
        }
        _ => return None,
    })
}

/// The input members the AWS door reads for an operation (`None`: an operation it does not
/// serve). Tests compare this with the model: every other member is refused when set.
pub fn reads(operation: &str) -> Option<Vec<&'static str>> {
    let mut out = base_reads(operation)?.to_vec();
    if DRY_RUN_OPERATIONS.contains(&operation) {
        out.push("DryRun");
    }
    if matches!(operation, "CreateCustomKeyStore" | "UpdateCustomKeyStore") {
        out.extend_from_slice(XKS_STORE_MEMBERS);
    }
    Some(out)
}

/// The `EXTERNAL_KEY_STORE` members CreateCustomKeyStore and UpdateCustomKeyStore read.
const XKS_STORE_MEMBERS: &[&str] = &[
    "XksProxyUriEndpoint",
    "XksProxyUriPath",
    "XksProxyVpcEndpointServiceName",
    "XksProxyAuthenticationCredential",
    "XksProxyAuthenticationCredential.AccessKeyId",
    "XksProxyAuthenticationCredential.RawSecretAccessKey",
    "XksProxyConnectivity",
];

/// p11kms's one extension of a pattern: an `XksProxyUriEndpoint` of plain `http://` to a
/// loopback address with a port (a proxy on the same host), which AWS's `https://` pattern
/// does not allow.
fn loopback_xks_proxy(shape_name: &str, value: &str) -> bool {
    shape_name == "XksProxyUriEndpointType"
        && crate::core::external::is_loopback_http_endpoint(value)
}

/// The refusal of a member the door does not honour: `UnsupportedOperationException`.
fn unread_refusal(operation: &str, member: &str) -> KmsError {
    KmsError::UnsupportedOperation(format!(
        "p11kms does not support the member '{member}' of {operation}; send the request without it."
    ))
}

/// Refuses a request that sets (non-null) a member of the model the door does not read.
pub fn check_unread(operation: &str, body: &Value) -> Result<(), KmsError> {
    let (Some(members), Some(reads)) = (input_members(operation), reads(operation)) else {
        return Ok(());
    };
    for member in members.iter().filter(|m| !reads.contains(&m.as_str())) {
        let mut v = Some(body);
        for part in member.split('.') {
            v = v.and_then(|v| v.get(part));
        }
        if v.is_some_and(|v| !v.is_null()) {
            return Err(unread_refusal(operation, member));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validation(op: &str, body: Value) -> String {
        match check(op, &body) {
            Err(Refusal::Kms(KmsError::Validation(m))) => m,
            other => panic!("{op} {body}: {other:?}"),
        }
    }

    #[test]
    fn every_pattern_compiles_and_means_what_java_means() {
        let m = Model::load(CONSTRAINTS_JSON).unwrap();
        assert!(m.patterns.len() >= 10, "{}", m.patterns.len());
        let re = |p: &str| &m.patterns[p];
        assert!(re("^[\\w+=,.@:/-]+$").is_match("arn:aws:iam::1:user/a+b=c,d.e@f-g"));
        assert!(!re("^[\\w+=,.@:/-]+$").is_match("é"));
        assert!(re("[\\w]+").is_match("default"));
        assert!(!re("[\\w]+").is_match("de fault"));
        assert!(re("^[a-zA-Z0-9-_.]+$").is_match("a-b_c.d"));
        assert!(!re("^[a-zA-Z0-9-_.]+$").is_match("a,b"));
        let policy = re("[\\u0009\\u000A\\u000D\\u0020-\\u00FF]+");
        assert!(policy.is_match("{\"a\":\t\"é\"}\r\n"));
        assert!(!policy.is_match("{\"a\": \"\u{0100}\"}"));
        assert!(!policy.is_match("a\u{0001}"));
    }

    #[test]
    fn messages_follow_aws_and_never_carry_values() {
        let m = validation(
            "CreateAlias",
            json!({"AliasName": "no prefix", "TargetKeyId": "k"}),
        );
        assert_eq!(
            m,
            "1 validation error detected: Value at 'aliasName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9:/_-]+$"
        );
        assert!(!m.contains("no prefix"));
        let m = validation(
            "TagResource",
            json!({"KeyId": "k", "Tags": [{"TagKey": "a"}, {"TagKey": "x".repeat(129), "TagValue": "v"}]}),
        );
        assert_eq!(
            m,
            "2 validation errors detected: Value at 'tags.1.member.tagValue' failed to satisfy \
             constraint: Member must not be null; Value at 'tags.2.member.tagKey' failed to \
             satisfy constraint: Member must have length less than or equal to 128"
        );
        let m = validation(
            "Encrypt",
            json!({"KeyId": "k", "Plaintext": "eA==", "EncryptionAlgorithm": ""}),
        );
        assert!(
            m.contains("'encryptionAlgorithm'") && m.contains("enum value set: [SYMMETRIC_DEFAULT"),
            "{m}"
        );
        let m = validation(
            "Decrypt",
            json!({"CiphertextBlob": "eA==", "GrantTokens": ["x".repeat(8193)]}),
        );
        assert_eq!(
            m,
            "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: \
             Member must satisfy constraint: [Member must have length less than or equal to 8192]"
        );
        let m = validation("GenerateRandom", json!({"NumberOfBytes": 0}));
        assert!(
            m.ends_with("Member must have value greater than or equal to 1"),
            "{m}"
        );
        let m = validation("CreateKey", json!({"Policy": "{\u{0100}}"}));
        assert!(m.contains("'policy'") && !m.contains('\u{0100}'), "{m}");
        let m = validation("GetKeyPolicy", json!({"KeyId": "k", "PolicyName": ""}));
        assert!(m.starts_with("2 validation errors detected"), "{m}");
        let m = validation("Encrypt", json!({}));
        assert!(
            m.contains("'keyId' failed to satisfy constraint: Member must not be null"),
            "{m}"
        );
        assert_eq!(
            check(
                "Encrypt",
                &json!({"KeyId": "k", "Plaintext": "eA==", "GrantTokens": null})
            ),
            Ok(())
        );
        assert_eq!(check("ExplainAccess", &json!({"Anything": 1})), Ok(()));
    }

    #[test]
    fn wrong_types_name_the_member_not_the_value() {
        let secret = "CAPABILITY-grant-token-value";
        for (op, body, path) in [
            (
                "Encrypt",
                json!({"KeyId": "k", "GrantTokens": secret}),
                "grantTokens",
            ),
            (
                "GenerateRandom",
                json!({"NumberOfBytes": "1234567"}),
                "numberOfBytes",
            ),
            (
                "Encrypt",
                json!({"KeyId": "k", "Plaintext": "***"}),
                "plaintext",
            ),
            (
                "TagResource",
                json!({"KeyId": "k", "Tags": [{"TagKey": 5}]}),
                "tags.1.member.tagKey",
            ),
            (
                "Decrypt",
                json!({"GrantTokens": [secret, 7]}),
                "grantTokens.2.member",
            ),
            ("ListKeys", json!({"Limit": 1.5}), "limit"),
            ("ListKeys", json!({"Limit": 5_000_000_000_i64}), "limit"),
        ] {
            match check(op, &body) {
                Err(Refusal::Serialization(m)) => {
                    assert!(m.contains(&format!("'{path}'")), "{m}");
                    assert!(
                        !m.contains(secret) && !m.contains("1234567") && !m.contains("***"),
                        "{m}"
                    );
                }
                other => panic!("{op} {body}: {other:?}"),
            }
        }
        assert_eq!(
            mistyped_members(
                "GenerateRandom",
                &json!({"NumberOfBytes": "9", "CustomKeyStoreId": "c"})
            ),
            vec!["NumberOfBytes".to_string()]
        );
    }

    #[test]
    fn every_served_operation_has_a_reads_list_within_the_model() {
        for op in super::super::kms::OPERATIONS {
            let reads = reads(op.name).unwrap_or_else(|| panic!("{} has no reads list", op.name));
            let members =
                input_members(op.name).unwrap_or_else(|| panic!("{} not in the model", op.name));
            for r in reads {
                assert!(
                    members.iter().any(|m| m == r),
                    "{}: {r} is not a model member",
                    op.name
                );
            }
        }
        for op in DRY_RUN_OPERATIONS {
            assert!(
                input_members(op).unwrap().contains(&"DryRun".to_string()),
                "{op}"
            );
        }
    }

    #[test]
    fn unread_members_are_refused_by_name() {
        assert!(matches!(
            check_unread("CreateCustomKeyStore", &json!({"XksProxyVpcEndpointServiceOwner": "123456789012"})),
            Err(KmsError::UnsupportedOperation(m)) if m.contains("'XksProxyVpcEndpointServiceOwner'")
        ));
        assert!(matches!(
            check_unread("Decrypt", &json!({"Recipient": {}})),
            Err(KmsError::UnsupportedOperation(m)) if m.contains("'Recipient'")
        ));
        assert!(matches!(
            check_unread("CreateGrant", &json!({"Constraints": {"SourceArn": "arn:aws:s3:::b"}})),
            Err(KmsError::UnsupportedOperation(m)) if m.contains("'Constraints.SourceArn'")
        ));
        assert_eq!(
            check_unread("CreateKey", &json!({"XksKeyId": null, "Tags": []})),
            Ok(())
        );
        assert_eq!(check_unread("Encrypt", &json!({"DryRun": false})), Ok(()));
    }
}
