//! The AWS JSON door's field rules, written once per field type, and the two declarations
//! that apply them to every operation: [`from_json!`] (a core request read from its body) and
//! [`to_json!`] (a core response rendered as its body).
//!
//! A field's member is its name in PascalCase (`key_id` is `KeyId`,
//! [`crate::encoding::is_pascal_of`] to find it, [`crate::encoding::wire_case`] to write it).
//! Reading ([`Member`]): an absent or `null` member is the type's default (`""`, `false`, an
//! empty list or map) or `None`; blobs are base64; AWS enums are read through their
//! `Deserialize` (a spelling that is not a value is refused); a value of the wrong JSON type
//! is an error, which the door answers as a SerializationException. Members the declaration
//! does not name are ignored. Rendering ([`Render`]): blobs as base64, enums as their AWS
//! names, `None` as `null` (which [`super::compact`] drops, as AWS omits absent members).
//! Where AWS's name or rule for a field differs (epoch-second timestamps, members left out
//! when empty, nested structures), the declaration says so for that field.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::Error as _;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::core::algorithms::{
    EncryptionAlgorithm, KeyAgreementAlgorithm, MacAlgorithm, SigningAlgorithm,
};
use crate::core::domain::{KeySpec, KeyUsage, Origin};
use crate::core::keystores::{ConnectionErrorCode, ConnectionState, CustomKeyStoreType};
use crate::core::operation::Page;
use crate::encoding::{is_pascal_of, wire_case};
use crate::store::{KeyState, Tag, UsageOperation};
use crate::wire_enum::WireEnum;

/// The members of a request body, taken out one field at a time: a member's value moves out
/// of the body, so a plaintext's base64 text is not left behind there (it is wiped with the
/// zeroizing buffer it is decoded from).
pub struct Members(Map<String, Value>);

impl Members {
    /// The members of a body; a body that is not a JSON object has none to read.
    pub fn new(body: Value) -> Result<Members, serde_json::Error> {
        match body {
            Value::Object(map) => Ok(Members(map)),
            _ => Err(serde_json::Error::custom(
                "the request body is not a JSON object",
            )),
        }
    }

    /// Reads the field `field` from its PascalCase member.
    pub fn read<T: Member>(&mut self, field: &str) -> Result<T, serde_json::Error> {
        T::read(self.take(|wire| is_pascal_of(wire, field)))
    }

    /// Reads a member by its AWS name (for a field whose member is named otherwise).
    pub fn read_member<T: Member>(&mut self, name: &str) -> Result<T, serde_json::Error> {
        T::read(self.take(|wire| wire == name))
    }

    /// A member by its AWS name, left in place (`None`: absent or `null`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// The member `is` picks, taken out (`None`: absent or `null`).
    fn take(&mut self, is: impl Fn(&str) -> bool) -> Option<Value> {
        let (_, value) = self.0.iter_mut().find(|(wire, _)| is(wire))?;
        Some(value.take()).filter(|v| !v.is_null())
    }
}

/// A request field's type: how its member is read (`None`: absent or `null`).
pub trait Member: Sized {
    /// The field's value.
    fn read(member: Option<Value>) -> Result<Self, serde_json::Error>;
}

/// The value of a member that is present and not `null`, of one type.
pub trait Wire: Sized {
    /// Reads the value; a wrong JSON type is an error.
    fn from_wire(value: Value) -> Result<Self, serde_json::Error>;
}

/// An optional field is `None` when its member is absent or `null`.
impl<T: Wire> Member for Option<T> {
    fn read(member: Option<Value>) -> Result<Self, serde_json::Error> {
        member.map(T::from_wire).transpose()
    }
}

/// Fields whose absent or `null` member is the type's default.
macro_rules! absent_is_default {
    ($($t:ty),* $(,)?) => {$(
        impl Member for $t {
            fn read(member: Option<Value>) -> Result<Self, serde_json::Error> {
                Ok(member.map(Wire::from_wire).transpose()?.unwrap_or_default())
            }
        }
    )*};
}

absent_is_default!(
    String,
    bool,
    i32,
    Vec<String>,
    BTreeMap<String, String>,
    Vec<u8>,
    Zeroizing<Vec<u8>>,
    Vec<Tag>,
);

/// Values read as serde reads them: strings, numbers, booleans, string lists and maps.
macro_rules! wire_by_serde {
    ($($t:ty),* $(,)?) => {$(
        impl Wire for $t {
            fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
                serde_json::from_value(value)
            }
        }
    )*};
}

wire_by_serde!(String, bool, i32, f64, Vec<String>, BTreeMap<String, String>);

/// Every AWS enum of the engine, read by its AWS spelling (its `Deserialize` refuses any
/// other).
impl<E: WireEnum> Wire for E {
    fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(value)
    }
}

/// A blob: base64 text (held in a zeroizing buffer while it is decoded).
impl Wire for Vec<u8> {
    fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
        let text = Zeroizing::new(String::from_wire(value)?);
        B64.decode(text.as_bytes())
            .map_err(|_| serde_json::Error::custom("a blob member is not valid base64"))
    }
}

/// A secret blob (plaintext, a message): decoded straight into its zeroizing buffer.
impl Wire for Zeroizing<Vec<u8>> {
    fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
        Vec::from_wire(value).map(Zeroizing::new)
    }
}

/// A secret string (a grant token).
impl Wire for Zeroizing<String> {
    fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
        String::from_wire(value).map(Zeroizing::new)
    }
}

/// A core type rendered as AWS JSON: a response body, one of its structures, or a field
/// value (`null` is an absent member, dropped by [`super::compact`]).
pub trait Render {
    /// The JSON value.
    fn render(self) -> Value;
}

/// Values JSON has as they are: strings, numbers, booleans, JSON itself.
macro_rules! render_as_json {
    ($($t:ty),* $(,)?) => {$(
        impl Render for $t {
            fn render(self) -> Value {
                Value::from(self)
            }
        }
    )*};
}

render_as_json!(String, &'static str, bool, i32, Value);

/// The AWS enums, by their AWS names.
macro_rules! render_as_str {
    ($($t:ty),* $(,)?) => {$(
        impl Render for $t {
            fn render(self) -> Value {
                Value::from(self.as_str())
            }
        }
    )*};
}

render_as_str!(
    crate::core::regions::MultiRegionKeyType,
    EncryptionAlgorithm,
    SigningAlgorithm,
    MacAlgorithm,
    KeyAgreementAlgorithm,
    KeyUsage,
    KeySpec,
    Origin,
    KeyState,
    UsageOperation,
    ConnectionState,
    ConnectionErrorCode,
    CustomKeyStoreType,
    crate::core::external::XksProxyConnectivity,
);

/// A blob, as base64.
impl Render for Vec<u8> {
    fn render(self) -> Value {
        Value::from(B64.encode(&self))
    }
}

/// A secret blob, as base64 (the only copy outside its zeroizing buffer is the body's).
impl Render for Zeroizing<Vec<u8>> {
    fn render(self) -> Value {
        Value::from(B64.encode(&*self))
    }
}

/// An absent member is `null`.
impl<T: Render> Render for Option<T> {
    fn render(self) -> Value {
        self.map_or(Value::Null, Render::render)
    }
}

/// A list.
impl<T: Render> Render for Vec<T> {
    fn render(self) -> Value {
        Value::Array(self.into_iter().map(Render::render).collect())
    }
}

/// A fixed list (a key spec's algorithms).
impl<T: Render + Copy> Render for &'static [T] {
    fn render(self) -> Value {
        Value::Array(self.iter().map(|v| v.render()).collect())
    }
}

/// A time (Unix milliseconds) as AWS renders it: epoch seconds, fractional when the time
/// has milliseconds; `None` is absent.
pub fn ts(ms: impl Into<Option<i64>>) -> Value {
    match ms.into() {
        Some(ms) if ms % 1000 == 0 => Value::from(ms / 1000),
        Some(ms) => Value::from(ms as f64 / 1000.0),
        None => Value::Null,
    }
}

/// A member AWS leaves out when it is empty (a string or a list).
pub fn non_empty(v: impl Render) -> Value {
    match v.render() {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::Array(a) if a.is_empty() => Value::Null,
        v => v,
    }
}

/// A structure AWS renders as `{}` when it is absent.
pub fn or_empty(v: Option<impl Render>) -> Value {
    v.map_or_else(|| Value::Object(Map::new()), Render::render)
}

/// A list request's paging field ([`Page`]): its members `Limit` and `Marker`, in that order.
pub fn page(members: &mut Members) -> Result<Page, serde_json::Error> {
    Ok(Page {
        limit: members.read("limit")?,
        marker: members.read("marker")?,
    })
}

/// A member's name: `wire` when the declaration names it, else `field` in PascalCase.
pub fn member_name(field: &str, wire: Option<&str>) -> String {
    wire.map_or_else(|| wire_case(field, true), str::to_string)
}

/// Declares how core requests are read from their AWS JSON bodies: a table with one
/// `Request { field, ... }` per operation, one entry per field:
///
/// - `field`: read from the member `field` names in PascalCase, by the field type's
///   [`Member`] rule;
/// - `field => reader`: read by `reader(&mut Members)`, for a field whose member is named
///   otherwise or read by another rule;
/// - `page`: a list request's [`Page`], from the members `Limit` and `Marker` ([`page`]).
///
/// A table of `Outer(Inner)` declares requests that wrap another's fields (GenerateDataKey
/// and GenerateDataKeyWithoutPlaintext share theirs).
macro_rules! from_json {
    ($($ty:ident { $($field:ident $(=> $reader:path)?),* $(,)? })+) => {$(
        impl $crate::api::aws_json::kms::FromJson for $ty {
            fn from_json(body: serde_json::Value) -> Result<Self, serde_json::Error> {
                let mut members = $crate::api::aws_json::kms::members::Members::new(body)?;
                Ok($ty {
                    $($field: $crate::api::aws_json::kms::members::from_json!(
                        @read members, $field $(, $reader)?
                    )?,)*
                })
            }
        }
    )+};
    ($($outer:ident($inner:ident))+) => {$(
        impl $crate::api::aws_json::kms::FromJson for $outer {
            fn from_json(body: serde_json::Value) -> Result<Self, serde_json::Error> {
                <$inner as $crate::api::aws_json::kms::FromJson>::from_json(body).map($outer)
            }
        }
    )+};
    (@read $members:ident, page) => {
        $crate::api::aws_json::kms::members::page(&mut $members)
    };
    (@read $members:ident, $field:ident) => {
        $members.read(stringify!($field))
    };
    (@read $members:ident, $field:ident, $reader:path) => {
        $reader(&mut $members)
    };
}
pub(crate) use from_json;

/// Declares how core responses (and their structures) are rendered: a table with one
/// `Response { field, ... }` per type, one entry per field (fields not named are not
/// rendered):
///
/// - `field`: the member `field` names in PascalCase, rendered by the field type's
///   [`Render`] rule;
/// - `field: "Name"`: a member AWS names otherwise;
/// - `field => render` (or `field: "Name" => render`): rendered by `render(value)` (e.g.
///   [`ts`], [`non_empty`]).
///
/// After a `;`, `"Name" = f` adds a member computed by `f(&response)` (a copy of a field, or
/// a member no field holds, such as `Truncated`).
macro_rules! to_json {
    ($($ty:ident {
        $($field:ident $(: $wire:literal)? $(=> $render:path)?),* $(,)?
        $(; $($extra:literal = $value:expr),* $(,)?)?
    })+) => {$(
        impl $crate::api::aws_json::kms::members::Render for $ty {
            fn render(self) -> serde_json::Value {
                use $crate::api::aws_json::kms::members::{member_name, Render};
                let mut out = serde_json::Map::new();
                $($(
                    let computed: fn(&$ty) -> _ = $value;
                    out.insert($extra.to_string(), Render::render(computed(&self)));
                )*)?
                let $ty { $($field,)* .. } = self;
                $(
                    let name = member_name(stringify!($field), None $(.or(Some($wire)))?);
                    out.insert(name, $crate::api::aws_json::kms::members::to_json!(
                        @render $field $(, $render)?
                    ));
                )*
                serde_json::Value::Object(out)
            }
        }
    )+};
    (@render $field:ident) => {
        Render::render($field)
    };
    (@render $field:ident, $render:path) => {
        $render($field)
    };
}
pub(crate) use to_json;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn members(body: Value) -> Members {
        Members::new(body).unwrap()
    }

    #[test]
    fn reading_follows_aws_json() {
        // Absent and null are the default or None; PascalCase names the member.
        let mut m = members(json!({"KeyId": "k", "GrantTokens": null, "DryRun": true}));
        assert_eq!(m.read::<String>("key_id").unwrap(), "k");
        assert_eq!(
            m.read::<Vec<String>>("grant_tokens").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(m.read::<Option<String>>("description").unwrap(), None);
        assert!(m.read::<bool>("dry_run").unwrap());
        assert!(!m.read::<bool>("multi_region").unwrap());
        // Only the PascalCase spelling is the member.
        let mut m = members(json!({"keyId": "k", "key_id": "k"}));
        assert_eq!(m.read::<String>("key_id").unwrap(), "");
        // Blobs are base64, into the zeroizing buffer for secrets.
        let mut m = members(json!({"Plaintext": "aGVsbG8=", "Bad": "***"}));
        let p: Zeroizing<Vec<u8>> = m.read("plaintext").unwrap();
        assert_eq!(p.as_slice(), b"hello");
        assert!(m.read_member::<Vec<u8>>("Bad").is_err());
        // Enums are read once, and a spelling that is not a value is refused.
        let mut m = members(json!({"EncryptionAlgorithm": "RSAES_OAEP_SHA_256", "KeySpec": "X"}));
        assert_eq!(
            m.read::<Option<EncryptionAlgorithm>>("encryption_algorithm")
                .unwrap(),
            Some(EncryptionAlgorithm::RsaesOaepSha256)
        );
        assert!(m.read::<Option<KeySpec>>("key_spec").is_err());
        // A wrong JSON type is an error, for a default field and an optional one alike.
        let mut m = members(json!({"KeyId": 5, "Limit": "1", "DryRun": "yes"}));
        assert!(m.read::<String>("key_id").is_err());
        assert!(m.read::<Option<i32>>("limit").is_err());
        assert!(m.read::<bool>("dry_run").is_err());
        assert!(Members::new(json!([1])).is_err());
    }

    #[test]
    fn rendering_follows_aws_json() {
        assert_eq!(ts(1_700_000_000_000), json!(1_700_000_000));
        assert_eq!(ts(1_700_000_000_500), json!(1_700_000_000.5));
        assert_eq!(ts(None), Value::Null);
        assert_eq!(vec![1u8, 2].render(), json!("AQI="));
        assert_eq!(
            Zeroizing::new(b"hello".to_vec()).render(),
            json!("aGVsbG8=")
        );
        assert_eq!(KeyState::PendingDeletion.render(), json!("PendingDeletion"));
        assert_eq!(Some(3).render(), json!(3));
        assert_eq!(None::<String>.render(), Value::Null);
        assert_eq!(non_empty(String::new()), Value::Null);
        assert_eq!(non_empty(Vec::<String>::new()), Value::Null);
        assert_eq!(non_empty(vec!["a".to_string()]), json!(["a"]));
        assert_eq!(or_empty(None::<String>), json!({}));
        assert_eq!(member_name("key_id", None), "KeyId");
        assert_eq!(
            member_name("aws_account_id", Some("AWSAccountId")),
            "AWSAccountId"
        );
    }
}
