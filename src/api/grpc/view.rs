//! The gRPC door's requests seen as AWS JSON, so the AWS service model's constraints
//! ([`crate::api::aws_json::model`]) hold on this door too.
//!
//! A request message is encoded and read back field by field with the contract's own
//! descriptors (`pb::FILE_DESCRIPTOR_SET`): `key_id` becomes `KeyId`, bytes become base64
//! blobs of zeros of the same length (only lengths are checked; no plaintext is copied), maps become objects, a `google.protobuf.Timestamp` becomes epoch seconds, and a
//! message whose only field is a map (the grant constraints' `EncryptionContextConstraint`)
//! stands for that map. proto3 scalars have no presence: an empty string, zero or false is
//! not on the wire, so it reads as absent (AWS's "not set"); `optional` fields are present
//! when set, even to zero.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::api::aws_json::model::{self, Refusal};
use crate::core::KmsError;

/// The contract's messages by full name (`.p11kms.v1.EncryptRequest`), and the input type of
/// each KeyManagementService method.
struct Contract {
    messages: HashMap<String, DescriptorProto>,
    inputs: HashMap<String, String>,
}

static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    let set = FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
    let mut messages = HashMap::new();
    let mut inputs = HashMap::new();
    for file in &set.file {
        let package = file.package();
        for m in &file.message_type {
            index(&format!(".{package}"), m, &mut messages);
        }
        for s in file
            .service
            .iter()
            .filter(|s| s.name() == "KeyManagementService")
        {
            for method in &s.method {
                inputs.insert(method.name().to_string(), method.input_type().to_string());
            }
        }
    }
    Contract { messages, inputs }
});

fn index(prefix: &str, m: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{prefix}.{}", m.name());
    for nested in &m.nested_type {
        index(&name, nested, out);
    }
    out.insert(name, m.clone());
}

/// `key_id` -> `KeyId`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// A minimal protobuf wire reader.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&[u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.buf.len() {
            return None;
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(b)
    }

    fn skip(&mut self, wire_type: u64) -> Option<()> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => None,
        }
    }

    fn advance(&mut self, n: usize) -> Option<()> {
        self.buf = self.buf.get(n..)?;
        Some(())
    }
}

/// One decoded field value, as AWS JSON.
fn scalar(field: &FieldDescriptorProto, r: &mut Reader<'_>, wire_type: u64) -> Option<Value> {
    Some(match (field.r#type(), wire_type) {
        (Type::String, 2) => Value::String(String::from_utf8_lossy(r.bytes()?).into_owned()),
        // Only a blob's length is checked: zeros of that length, never the bytes (plaintext).
        (Type::Bytes, 2) => Value::String(B64.encode(vec![0u8; r.bytes()?.len()])),
        (Type::Bool, 0) => Value::Bool(r.varint()? != 0),
        (Type::Int32 | Type::Enum, 0) => Value::from(r.varint()? as i64 as i32),
        (Type::Int64, 0) => Value::from(r.varint()? as i64),
        (Type::Uint32 | Type::Uint64, 0) => Value::from(r.varint()?),
        (Type::Message, 2) => message(field.type_name(), r.bytes()?, false)?,
        _ => {
            r.skip(wire_type)?;
            return Some(Value::Null);
        }
    })
}

/// A message's fields as an AWS JSON object (or a map, a timestamp, as the type says). In a
/// nested message (a `Tag`), an unset string is the empty string: there the member is a
/// value, not an option (an empty `TagValue` is a tag's value).
fn message(type_name: &str, buf: &[u8], top: bool) -> Option<Value> {
    let contract = &*CONTRACT;
    if type_name == ".google.protobuf.Timestamp" {
        let t = prost_types::Timestamp::decode(buf).ok()?;
        return Some(Value::from(t.seconds as f64 + f64::from(t.nanos) / 1e9));
    }
    let desc = contract.messages.get(type_name)?;
    let is_entry = desc.options.as_ref().is_some_and(|o| o.map_entry());
    let mut out = Map::new();
    let mut r = Reader { buf };
    while !r.buf.is_empty() {
        let key = r.varint()?;
        let (number, wire_type) = (key >> 3, key & 7);
        let Some(field) = desc
            .field
            .iter()
            .find(|f| i64::from(f.number()) == number as i64)
        else {
            r.skip(wire_type)?;
            continue;
        };
        let v = scalar(field, &mut r, wire_type)?;
        let name = if is_entry {
            field.name().to_string()
        } else {
            pascal(field.name())
        };
        if field.label() == Label::Repeated {
            append(&mut out, name, v, contract, field);
        } else {
            out.insert(name, v);
        }
    }
    if is_entry {
        return Some(Value::Object(out));
    }
    if !top {
        for f in desc.field.iter().filter(|f| {
            f.r#type() == Type::String && f.label() != Label::Repeated && !f.proto3_optional()
        }) {
            out.entry(pascal(f.name()))
                .or_insert_with(|| Value::String(String::new()));
        }
    }
    // A message whose only field is a map stands for the map.
    if let [only] = desc.field.as_slice() {
        if is_map(contract, only) {
            return Some(
                out.remove(&pascal(only.name()))
                    .unwrap_or(Value::Object(Map::new())),
            );
        }
    }
    Some(Value::Object(out))
}

fn is_map(contract: &Contract, field: &FieldDescriptorProto) -> bool {
    field.label() == Label::Repeated
        && contract
            .messages
            .get(field.type_name())
            .and_then(|m| m.options.as_ref())
            .is_some_and(|o| o.map_entry())
}

/// Adds one element of a repeated field: a map entry to an object, else to a list.
fn append(
    out: &mut Map<String, Value>,
    name: String,
    v: Value,
    contract: &Contract,
    field: &FieldDescriptorProto,
) {
    if is_map(contract, field) {
        let entry = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
        if let (Value::Object(m), Value::Object(kv)) = (entry, v) {
            let key = kv.get("key").and_then(Value::as_str).unwrap_or_default();
            let value = kv
                .get("value")
                .cloned()
                .unwrap_or(Value::String(String::new()));
            m.insert(key.to_string(), value);
        }
        return;
    }
    let entry = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = entry {
        a.push(v);
    }
}

/// A KeyManagementService request as the AWS JSON input of `operation` (`None` for a method
/// the contract does not have).
pub fn aws_view<T: prost::Message>(operation: &str, msg: &T) -> Option<Value> {
    let input = CONTRACT.inputs.get(operation)?;
    message(input, &Zeroizing::new(msg.encode_to_vec()), true)
}

/// Checks a gRPC request against the AWS model's constraints, as the AWS door does.
pub fn check<T: prost::Message>(operation: &str, msg: &T) -> Result<(), KmsError> {
    let Some(view) = aws_view(operation, msg) else {
        return Ok(());
    };
    match model::check(operation, &view) {
        Ok(()) => Ok(()),
        Err(Refusal::Kms(e)) => Err(e),
        // Not reachable with the contract's types; refused rather than let through.
        Err(Refusal::Serialization(m)) => Err(KmsError::Validation(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use serde_json::json;

    #[test]
    fn requests_read_as_aws_json() {
        let r = pb::CreateGrantRequest {
            key_id: "k".into(),
            grantee_principal: "arn:aws:iam::111122223333:user/u".into(),
            operations: vec!["Encrypt".into(), "Decrypt".into()],
            constraints: Some(pb::GrantConstraints {
                encryption_context_subset: Some(pb::EncryptionContextConstraint {
                    pairs: [("a".to_string(), "b".to_string())].into(),
                }),
                encryption_context_equals: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            aws_view("CreateGrant", &r).unwrap(),
            json!({
                "KeyId": "k",
                "GranteePrincipal": "arn:aws:iam::111122223333:user/u",
                "Operations": ["Encrypt", "Decrypt"],
                "Constraints": {"EncryptionContextSubset": {"a": "b"}},
            })
        );
        let r = pb::EncryptRequest {
            key_id: "k".into(),
            plaintext: b"hi".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            aws_view("Encrypt", &r).unwrap(),
            json!({"KeyId": "k", "Plaintext": "AAA="})
        );
        let r = pb::ListKeysRequest {
            limit: Some(0),
            marker: String::new(),
        };
        assert_eq!(aws_view("ListKeys", &r).unwrap(), json!({"Limit": 0}));
        let r = pb::ImportKeyMaterialRequest {
            valid_to: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        assert_eq!(
            aws_view("ImportKeyMaterial", &r).unwrap(),
            json!({"ValidTo": 10.5})
        );
    }

    #[test]
    fn constraints_hold_on_grpc() {
        let tag = |k: &str, v: &str| pb::Tag {
            tag_key: k.into(),
            tag_value: v.into(),
        };
        let bad = [
            check(
                "TagResource",
                &pb::TagResourceRequest {
                    key_id: "k".into(),
                    tags: vec![tag("", "v")],
                },
            ),
            check(
                "CreateAlias",
                &pb::CreateAliasRequest {
                    alias_name: "alias/has space".into(),
                    target_key_id: "k".into(),
                },
            ),
            check(
                "TagResource",
                &pb::TagResourceRequest {
                    key_id: "k".into(),
                    tags: vec![tag(&"t".repeat(129), "v")],
                },
            ),
            check(
                "Encrypt",
                &pb::EncryptRequest {
                    key_id: "k".into(),
                    plaintext: b"x".to_vec(),
                    encryption_algorithm: "NOPE".into(),
                    ..Default::default()
                },
            ),
            check(
                "ListKeys",
                &pb::ListKeysRequest {
                    limit: Some(0),
                    marker: String::new(),
                },
            ),
        ];
        for r in bad {
            assert!(matches!(r, Err(KmsError::Validation(_))), "{r:?}");
        }
        // Empty strings are proto3's "not set": the engine's own defaults apply.
        assert_eq!(
            check(
                "Encrypt",
                &pb::EncryptRequest {
                    key_id: "k".into(),
                    plaintext: b"x".to_vec(),
                    ..Default::default()
                },
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "TagResource",
                &pb::TagResourceRequest {
                    key_id: "k".into(),
                    tags: vec![tag("a", "")],
                },
            ),
            Ok(()),
            "an empty TagValue is a value of length 0 on gRPC"
        );
    }
}
