//! The AWS enums' one declaration: `wire_enum!` gives each enum (key spec, usage, origin,
//! state, the algorithms, ...) its AWS spelling, parsing and [`WireEnum`], the one bound
//! through which the audit trail and both doors read and write every such enum. Below the
//! store and the engine, so both declare their enums with it.

use std::fmt;
use std::str::FromStr;

/// What every AWS enum of the engine is: a closed set of values with an AWS spelling. The
/// doors read and write every such enum through this one bound, so no door keeps its own list
/// of enum types (declare the enum with `wire_enum!` and every door knows it).
pub trait WireEnum:
    Copy + fmt::Display + FromStr<Err = UnknownValue> + serde::de::DeserializeOwned + 'static
{
    /// The AWS spelling.
    fn wire_name(self) -> &'static str;
}

/// Declares a wire enum: its variants with their AWS spelling, `as_str`, `parse`, `ALL`,
/// `Display`, `FromStr` (an unknown spelling is `UnknownValue`), serde's `Deserialize`,
/// and [`WireEnum`] (which gives it the audit trail's rule and both doors' readers and
/// writers). The one declaration of every AWS enum of p11kms. A variant's spelling is its
/// name unless given (`SymmetricDefault = "SYMMETRIC_DEFAULT"`).
macro_rules! wire_enum {
    (@spelling $variant:ident $wire:literal) => { $wire };
    (@spelling $variant:ident) => { stringify!($variant) };
    ($(#[$doc:meta])* $name:ident {
        $($(#[$vdoc:meta])* $variant:ident $(= $wire:literal)?,)*
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in the AWS model's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The AWS spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $crate::wire_enum::wire_enum!(@spelling $variant $($wire)?),)*
                }
            }

            /// Parses the AWS spelling; `None` for anything else.
            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::wire_enum::UnknownValue;

            fn from_str(s: &str) -> Result<$name, $crate::wire_enum::UnknownValue> {
                $name::parse(s).ok_or($crate::wire_enum::UnknownValue {
                    what: stringify!($name),
                })
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> &'static str {
                v.as_str()
            }
        }

        impl $crate::wire_enum::WireEnum for $name {
            fn wire_name(self) -> &'static str {
                self.as_str()
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use wire_enum;

/// A spelling that is not a value of the enum (the value itself is not kept: it is the
/// caller's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue {
    /// The enum's name (`KeySpec`).
    pub what: &'static str,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid {} value", self.what)
    }
}

impl std::error::Error for UnknownValue {}
