//! The gRPC door's conversions between messages and the engine's types, declared once per
//! operation: [`from_message!`] reads a request message into its core request and
//! [`to_message!`] builds a response message from its core response, each from a list of
//! field names. Each field converts by the rule of its pair of types ([`ReadField`] on the
//! way in, [`IntoWire`] on the way out): proto3 has no presence, so an empty string is
//! "not set" (`None`), a plaintext moves into a `Zeroizing` buffer without a copy and out
//! of it only into the response message, an AWS enum is its AWS name, a time is Unix
//! milliseconds in the engine and a `Timestamp` on the wire. The CLI reads replies back by
//! the same rules ([`FromWire`], in [`super::decode`]).
//!
//! A field whose rule really differs says so in its declaration (see [`from_message!`]).

use std::collections::BTreeMap;

use prost_types::Timestamp;
use zeroize::Zeroizing;

use crate::core::algorithms::parse_opt;
use crate::core::KmsError;
use crate::encoding::wire_case;
use crate::pb;
use crate::store::Tag;
use crate::wire_enum::WireEnum;

/// Reads a core request from its request message: implements [`super::FromMessage`] from a
/// list of the core request's fields, each one of
///
/// - `field`: the message's field of the same name, by its [`ReadField`] rule;
/// - `field: wire_field`: the message's field of another name, by its rule;
/// - `field = expr`: an expression (over the message, bound by a leading `m:`);
/// - `page`: a list request's [`Page`](crate::core::operation::Page), from the message's
///   `limit` and `marker`.
///
/// Fields are read in the order written: an expression that borrows the message comes
/// before a plain field of the same value would move it.
///
/// `pb::X => Op(Shared { .. })` reads a request that wraps the members two operations share.
///
/// ```ignore
/// from_message!(pb::EncryptRequest => EncryptRequest { key_id, plaintext, dry_run });
/// ```
macro_rules! from_message {
    ($m:ident: $wire:path => $core:ident { $($fields:tt)* }) => {
        impl $crate::api::grpc::FromMessage<$wire> for $core {
            #[allow(unused_variables)]
            fn from_message($m: $wire) -> Result<Self, $crate::core::KmsError> {
                Ok($crate::api::grpc::convert::fields!(read $m, $core { $($fields)* }))
            }
        }
    };
    ($wire:path => $op:ident ( $core:ident { $($fields:tt)* } )) => {
        impl $crate::api::grpc::FromMessage<$wire> for $op {
            fn from_message(m: $wire) -> Result<Self, $crate::core::KmsError> {
                Ok($op($crate::api::grpc::convert::fields!(read m, $core { $($fields)* })))
            }
        }
    };
    ($wire:path => $core:ident { $($fields:tt)* }) => {
        $crate::api::grpc::convert::from_message!(m: $wire => $core { $($fields)* });
    };
}
pub(super) use from_message;

/// Builds a response message from its core response: implements `From<Core>` for the
/// message from a list of the message's fields, spelled as in [`from_message!`] (`field`,
/// `field: core_field`, `field = expr` over the response bound by a leading `r:`), plus
/// `field => function`: a function of the core field of the same name (a nested message).
///
/// ```ignore
/// to_message!(SignResponse => pb::SignResponse { key_id, signature, signing_algorithm });
/// ```
macro_rules! to_message {
    ($r:ident: $core:ty => $($wire:ident)::+ { $($fields:tt)* }) => {
        impl From<$core> for $($wire)::+ {
            #[allow(unused_variables)]
            fn from($r: $core) -> Self {
                $crate::api::grpc::convert::fields!(write $r, $($wire)::+ { $($fields)* })
            }
        }
    };
    ($core:ty => $($wire:ident)::+ { $($fields:tt)* }) => {
        $crate::api::grpc::convert::to_message!(r: $core => $($wire)::+ { $($fields)* });
    };
}
pub(super) use to_message;

/// The struct literal of a declaration: each field by its spelling (see [`from_message!`]),
/// `read` for a request ([`ReadField`]), `write` for a response ([`IntoWire`]), `reply` for
/// a reply the CLI reads back ([`FromWire`]).
macro_rules! fields {
    ($dir:ident $m:ident, $($target:ident)::+ {
        $($f:ident $(: $src:ident)? $(=> $func:path)? $(= $e:expr)?),* $(,)?
    }) => {
        $($target)::+ {
            $($f: $crate::api::grpc::convert::fields!(
                @$dir $m, $f $(: $src)? $(=> $func)? $(= $e)?
            ),)*
        }
    };
    (@read $m:ident, page) => {
        $crate::core::operation::Page {
            limit: $crate::api::grpc::convert::ReadField::read_field($m.limit, "limit")?,
            marker: $crate::api::grpc::convert::ReadField::read_field($m.marker, "marker")?,
        }
    };
    (@read $m:ident, $f:ident) => {
        $crate::api::grpc::convert::ReadField::read_field($m.$f, stringify!($f))?
    };
    (@read $m:ident, $f:ident : $src:ident) => {
        $crate::api::grpc::convert::ReadField::read_field($m.$src, stringify!($src))?
    };
    (@reply $m:ident, $f:ident) => {
        $crate::api::grpc::convert::FromWire::from_wire($m.$f)
    };
    (@reply $m:ident, $f:ident : $src:ident) => {
        $crate::api::grpc::convert::FromWire::from_wire($m.$src)
    };
    (@write $m:ident, $f:ident) => {
        $crate::api::grpc::convert::IntoWire::into_wire($m.$f)
    };
    (@write $m:ident, $f:ident : $src:ident) => {
        $crate::api::grpc::convert::IntoWire::into_wire($m.$src)
    };
    (@write $m:ident, $f:ident => $func:path) => {
        $func($m.$f)
    };
    (@$dir:ident $m:ident, $f:ident = $e:expr) => {
        $e
    };
}
pub(super) use fields;

/// An engine field from its message field: the rules both the door's requests and the
/// CLI's replies ([`super::decode`]) read by.
pub(super) trait FromWire<W> {
    /// Converts the field.
    fn from_wire(wire: W) -> Self;
}

/// A core request field read from its message field: every [`FromWire`] rule, and AWS enums,
/// which a value outside the enum fails. `field` is the field's name, spelled in the error as
/// the AWS model's member (`encryptionAlgorithm`).
pub(super) trait ReadField<W>: Sized {
    /// Reads the field.
    fn read_field(wire: W, field: &'static str) -> Result<Self, KmsError>;
}

/// The same type on both sides: moved as it is.
impl<T> ReadField<T> for T {
    fn read_field(wire: T, _: &'static str) -> Result<T, KmsError> {
        Ok(wire)
    }
}

/// Request fields read by a [`FromWire`] rule, which never fails (one generic impl over
/// `FromWire` would overlap the enums' impl as far as the compiler can tell).
macro_rules! read_by_rule {
    ($($wire:ty => $core:ty),* $(,)?) => {$(
        impl ReadField<$wire> for $core {
            fn read_field(wire: $wire, _: &'static str) -> Result<Self, KmsError> {
                Ok(FromWire::from_wire(wire))
            }
        }
    )*};
}

read_by_rule!(
    String => Option<String>,
    String => Option<Zeroizing<String>>,
    Vec<u8> => Zeroizing<Vec<u8>>,
    Option<Timestamp> => Option<i64>,
    Vec<pb::Tag> => Vec<Tag>,
    Vec<pb::Tag> => Vec<(String, String)>,
);

/// A response message field from its core response field.
pub(super) trait IntoWire<W> {
    /// Converts the field.
    fn into_wire(self) -> W;
}

/// The same type on both sides: moved as it is.
impl<T> FromWire<T> for T {
    fn from_wire(wire: T) -> T {
        wire
    }
}

/// Empty (proto3's "not set" for strings) is `None`.
impl FromWire<String> for Option<String> {
    fn from_wire(wire: String) -> Self {
        (!wire.is_empty()).then_some(wire)
    }
}

/// A secret string (a grant token) moves into a zeroizing buffer; empty is `None`.
impl FromWire<String> for Option<Zeroizing<String>> {
    fn from_wire(wire: String) -> Self {
        (!wire.is_empty()).then(|| Zeroizing::new(wire))
    }
}

/// A plaintext moves into a zeroizing buffer, without a copy.
impl FromWire<Vec<u8>> for Zeroizing<Vec<u8>> {
    fn from_wire(wire: Vec<u8>) -> Self {
        Zeroizing::new(wire)
    }
}

/// An AWS enum: empty is "not set". A value outside the enum was refused by the model check
/// already; it is refused here too, never guessed.
impl<E: WireEnum> ReadField<String> for Option<E> {
    fn read_field(wire: String, field: &'static str) -> Result<Self, KmsError> {
        parse_opt(&wire).map_err(|_| {
            KmsError::validation(
                &wire_case(field, false),
                "Member must satisfy enum value set",
            )
        })
    }
}

/// A time that may be unset: Unix milliseconds.
impl FromWire<Option<Timestamp>> for Option<i64> {
    fn from_wire(wire: Option<Timestamp>) -> Self {
        wire.as_ref().map(ms)
    }
}

/// A time that is always set (unset reads as the epoch).
impl FromWire<Option<Timestamp>> for i64 {
    fn from_wire(wire: Option<Timestamp>) -> Self {
        wire.as_ref().map(ms).unwrap_or_default()
    }
}

/// Tags as the store keeps them.
impl FromWire<Vec<pb::Tag>> for Vec<Tag> {
    fn from_wire(wire: Vec<pb::Tag>) -> Self {
        wire.into_iter()
            .map(|t| Tag {
                key: t.tag_key,
                value: t.tag_value,
            })
            .collect()
    }
}

/// Session tags as (key, value) pairs.
impl FromWire<Vec<pb::Tag>> for Vec<(String, String)> {
    fn from_wire(wire: Vec<pb::Tag>) -> Self {
        wire.into_iter().map(|t| (t.tag_key, t.tag_value)).collect()
    }
}

/// The same type on both sides: moved as it is.
impl<T> IntoWire<T> for T {
    fn into_wire(self) -> T {
        self
    }
}

/// A plaintext leaves its zeroizing buffer into the response message. The response buffer
/// belongs to the transport from here on.
impl IntoWire<Vec<u8>> for Zeroizing<Vec<u8>> {
    fn into_wire(self) -> Vec<u8> {
        self.to_vec()
    }
}

/// An AWS enum as its AWS name.
impl<E: WireEnum> IntoWire<String> for E {
    fn into_wire(self) -> String {
        self.wire_name().to_string()
    }
}

/// An optional AWS enum as its AWS name, empty when not set (proto3).
impl<E: WireEnum> IntoWire<String> for Option<E> {
    fn into_wire(self) -> String {
        self.map(|e| e.wire_name().to_string()).unwrap_or_default()
    }
}

/// A list of AWS enums as their names.
impl<E: WireEnum> IntoWire<Vec<String>> for &'static [E] {
    fn into_wire(self) -> Vec<String> {
        self.iter().map(|e| e.wire_name().to_string()).collect()
    }
}

/// Not set is empty (proto3).
impl IntoWire<String> for Option<String> {
    fn into_wire(self) -> String {
        self.unwrap_or_default()
    }
}

/// A time that is always set.
impl IntoWire<Option<Timestamp>> for i64 {
    fn into_wire(self) -> Option<Timestamp> {
        Some(ts(self))
    }
}

/// A time that may be unset.
impl IntoWire<Option<Timestamp>> for Option<i64> {
    fn into_wire(self) -> Option<Timestamp> {
        self.map(ts)
    }
}

/// A `Timestamp` as Unix milliseconds.
fn ms(t: &Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Unix milliseconds as a `Timestamp`.
pub(super) fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Each entry of a list as its message (`aliases => each`).
pub(super) fn each<T, U: From<T>>(list: Vec<T>) -> Vec<U> {
    list.into_iter().map(U::from).collect()
}

/// A nested message that is always present (`key_metadata => some`).
pub(super) fn some<T, U: From<T>>(value: T) -> Option<U> {
    Some(U::from(value))
}

/// An encryption context constraint of a grant's constraints, as the store keeps it.
pub(super) fn pairs(
    constraints: &Option<pb::GrantConstraints>,
    pick: fn(&pb::GrantConstraints) -> &Option<pb::EncryptionContextConstraint>,
) -> Option<BTreeMap<String, String>> {
    constraints
        .as_ref()
        .and_then(|c| pick(c).as_ref())
        .map(|c| c.pairs.clone())
}

#[cfg(test)]
mod tests {
    use super::super::{view, FromMessage};
    use super::*;
    use crate::core::algorithms::EncryptionAlgorithm;
    use crate::core::crypto::{EncryptRequest, EncryptResponse};
    use crate::core::domain::KeySpec;
    use crate::core::grants::CreateGrantRequest;
    use crate::core::keys::CreateKeyRequest;

    fn encrypt(algorithm: &str) -> pb::EncryptRequest {
        pb::EncryptRequest {
            key_id: "k".into(),
            plaintext: b"hi".to_vec(),
            encryption_algorithm: algorithm.into(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_read_by_their_field_rules() {
        let r = EncryptRequest::from_message(encrypt("RSAES_OAEP_SHA_256")).unwrap();
        assert_eq!(r.plaintext.as_slice(), b"hi");
        assert_eq!(
            r.encryption_algorithm,
            Some(EncryptionAlgorithm::RsaesOaepSha256)
        );
        let m = pb::CreateKeyRequest {
            key_spec: "ECC_NIST_P256".into(),
            tags: vec![pb::Tag {
                tag_key: "a".into(),
                tag_value: "b".into(),
            }],
            ..Default::default()
        };
        let r = CreateKeyRequest::from_message(m).unwrap();
        assert_eq!(r.key_spec, Some(KeySpec::EccNistP256));
        assert_eq!((r.policy, r.key_usage, r.origin), (None, None, None));
        assert_eq!(r.tags[0].key, "a");
        let m = pb::CreateGrantRequest {
            constraints: Some(pb::GrantConstraints {
                encryption_context_equals: Some(pb::EncryptionContextConstraint {
                    pairs: [("a".to_string(), "b".to_string())].into(),
                }),
                encryption_context_subset: None,
            }),
            ..Default::default()
        };
        let r = CreateGrantRequest::from_message(m).unwrap();
        assert_eq!(r.constraint_equals.unwrap()["a"], "b");
        assert_eq!(r.constraint_subset, None);
    }

    #[test]
    fn an_unknown_enum_value_is_refused_naming_the_member_after_the_model_check() {
        let m = encrypt("ROT13");
        // The model check refuses it first, with the AWS model's list of values.
        let model = view::check("Encrypt", &m).unwrap_err().message();
        assert!(model.contains("'encryptionAlgorithm'"), "{model}");
        let e = EncryptRequest::from_message(m).unwrap_err();
        assert_eq!(e.aws_name(), "ValidationException");
        assert!(e.message().contains("'encryptionAlgorithm'"), "{e:?}");
        let m = pb::CreateKeyRequest {
            customer_master_key_spec: "AES_512".into(),
            ..Default::default()
        };
        assert!(view::check("CreateKey", &m).is_err());
        let e = CreateKeyRequest::from_message(m).unwrap_err();
        assert!(e.message().contains("'customerMasterKeySpec'"), "{e:?}");
    }

    #[test]
    fn responses_carry_aws_names_plaintext_and_times() {
        let m = pb::EncryptResponse::from(EncryptResponse {
            ciphertext_blob: vec![1, 2],
            key_id: "k".into(),
            encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
        });
        assert_eq!(m.encryption_algorithm, "SYMMETRIC_DEFAULT");
        assert_eq!(m.ciphertext_blob, vec![1, 2]);
        let secret: Vec<u8> = Zeroizing::new(vec![7u8; 3]).into_wire();
        assert_eq!(secret, vec![7, 7, 7]);
        let t: Option<Timestamp> = (-1_500i64).into_wire();
        let back = <Option<i64>>::from_wire(t);
        assert_eq!(back, Some(-1_500));
        let none: Option<Timestamp> = None::<i64>.into_wire();
        assert_eq!(none, None);
        assert_eq!(IntoWire::<String>::into_wire(None::<String>), "");
    }
}
