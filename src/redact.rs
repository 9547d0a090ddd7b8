//! Secrets never printed: `redacted_debug!` declares a type's `Debug` from a list of its
//! fields, writing a secret one as `"<redacted>"`. Every type that holds a key, a plaintext,
//! a password, a secret access key or a session token declares its `Debug` this way (or
//! derives none), so a log line or a panic message cannot carry one.

/// Declares a `Debug` that never prints a secret: `redacted_debug!(DecryptResponse { key_id,
/// plaintext: redacted, .. });` prints the fields listed, in order, a `redacted` one as
/// `"<redacted>"`, and `field = function` as `function(&self)`; a trailing `..` marks fields
/// left out.
macro_rules! redacted_debug {
    (@fields $d:ident, $s:ident;) => { $d.finish() };
    (@fields $d:ident, $s:ident; ..) => { $d.finish_non_exhaustive() };
    (@fields $d:ident, $s:ident; $f:ident: redacted $(, $($rest:tt)*)?) => {{
        $d.field(stringify!($f), &"<redacted>");
        $crate::redact::redacted_debug!(@fields $d, $s; $($($rest)*)?)
    }};
    (@fields $d:ident, $s:ident; $f:ident = $rule:path $(, $($rest:tt)*)?) => {{
        $d.field(stringify!($f), &$rule($s));
        $crate::redact::redacted_debug!(@fields $d, $s; $($($rest)*)?)
    }};
    (@fields $d:ident, $s:ident; $f:ident $(, $($rest:tt)*)?) => {{
        $d.field(stringify!($f), &$s.$f);
        $crate::redact::redacted_debug!(@fields $d, $s; $($($rest)*)?)
    }};
    ($($ty:ident $(<$lt:lifetime>)? { $($fields:tt)* });* $(;)?) => {$(
        impl std::fmt::Debug for $ty $(<$lt>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut d = f.debug_struct(stringify!($ty));
                $crate::redact::redacted_debug!(@fields d, self; $($fields)*)
            }
        }
    )*};
}
pub(crate) use redacted_debug;

/// Deserializes a secret string straight into zeroizing memory
/// (`#[serde(deserialize_with = "crate::redact::zeroizing_string")]`).
pub(crate) fn zeroizing_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<zeroize::Zeroizing<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(zeroize::Zeroizing::new)
}
