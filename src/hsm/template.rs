//! The one builder of key-object templates ([`Template`]).
//!
//! A template names its object class and key type, then the usages the object has: every
//! usage attribute of that class (`CKA_ENCRYPT`, `CKA_DECRYPT`, `CKA_SIGN`, `CKA_VERIFY`,
//! `CKA_SIGN_RECOVER`, `CKA_VERIFY_RECOVER`, `CKA_WRAP`, `CKA_UNWRAP`, `CKA_DERIVE`) is
//! written **false** unless the template allows it ([`Template::allow`]). A usage the
//! template leaves to the token's default must say so ([`Template::token_default`]): the
//! objects whose templates have always done that keep exactly the attributes they had.

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, KeyType, ObjectClass};

/// A usage attribute of a key object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// `CKA_ENCRYPT`
    Encrypt,
    /// `CKA_DECRYPT`
    Decrypt,
    /// `CKA_SIGN`
    Sign,
    /// `CKA_VERIFY`
    Verify,
    /// `CKA_SIGN_RECOVER`
    SignRecover,
    /// `CKA_VERIFY_RECOVER`
    VerifyRecover,
    /// `CKA_WRAP`
    Wrap,
    /// `CKA_UNWRAP`
    Unwrap,
    /// `CKA_DERIVE`
    Derive,
}

impl Usage {
    fn attribute(self, on: bool) -> Attribute {
        match self {
            Usage::Encrypt => Attribute::Encrypt(on),
            Usage::Decrypt => Attribute::Decrypt(on),
            Usage::Sign => Attribute::Sign(on),
            Usage::Verify => Attribute::Verify(on),
            Usage::SignRecover => Attribute::SignRecover(on),
            Usage::VerifyRecover => Attribute::VerifyRecover(on),
            Usage::Wrap => Attribute::Wrap(on),
            Usage::Unwrap => Attribute::Unwrap(on),
            Usage::Derive => Attribute::Derive(on),
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The usage attributes an object of `class` has (PKCS#11 2.40, section 4).
    fn of_class(class: ObjectClass) -> &'static [Usage] {
        use Usage::*;
        if class == ObjectClass::PUBLIC_KEY {
            &[Encrypt, Verify, VerifyRecover, Wrap, Derive]
        } else if class == ObjectClass::PRIVATE_KEY {
            &[Decrypt, Sign, SignRecover, Unwrap, Derive]
        } else {
            &[Encrypt, Decrypt, Sign, Verify, Wrap, Unwrap, Derive]
        }
    }
}

/// A key-object template under construction; [`Template::build`] gives the attribute list.
#[derive(Debug)]
pub(crate) struct Template {
    class: ObjectClass,
    attrs: Vec<Attribute>,
    allowed: u16,
    left_to_token: u16,
}

impl Template {
    /// A template for an object of `class` and `key_type`, with every usage false.
    pub(crate) fn new(class: ObjectClass, key_type: KeyType) -> Template {
        Template {
            class,
            attrs: vec![Attribute::Class(class), Attribute::KeyType(key_type)],
            allowed: 0,
            left_to_token: 0,
        }
    }

    /// A secret key (`CKO_SECRET_KEY`).
    pub(crate) fn secret(key_type: KeyType) -> Template {
        Template::new(ObjectClass::SECRET_KEY, key_type)
    }

    /// The public half of a key pair (`CKO_PUBLIC_KEY`).
    pub(crate) fn public(key_type: KeyType) -> Template {
        Template::new(ObjectClass::PUBLIC_KEY, key_type)
    }

    /// The private half of a key pair (`CKO_PRIVATE_KEY`).
    pub(crate) fn private(key_type: KeyType) -> Template {
        Template::new(ObjectClass::PRIVATE_KEY, key_type)
    }

    /// Allow `usage` (written true).
    pub(crate) fn allow(self, usage: Usage) -> Template {
        self.allow_if(usage, true)
    }

    /// Allow `usage` when `on` (else it stays false).
    pub(crate) fn allow_if(mut self, usage: Usage, on: bool) -> Template {
        if on {
            self.allowed |= usage.bit();
        } else {
            self.allowed &= !usage.bit();
        }
        self
    }

    /// Leave `usages` out of the template: the token's default applies. Only for objects
    /// that have always been made that way (kept so that issue 13 changes no object).
    pub(crate) fn token_default(mut self, usages: &[Usage]) -> Template {
        for u in usages {
            self.left_to_token |= u.bit();
        }
        self
    }

    /// Add a non-usage attribute (key size, curve, public exponent, ...).
    pub(crate) fn with(mut self, a: Attribute) -> Template {
        self.attrs.push(a);
        self
    }

    /// `CKA_TOKEN`: a token object (true) or a session object (false).
    pub(crate) fn token(self, on: bool) -> Template {
        self.with(Attribute::Token(on))
    }

    /// `CKA_PRIVATE`.
    pub(crate) fn private_object(self, on: bool) -> Template {
        self.with(Attribute::Private(on))
    }

    /// Private, sensitive and not extractable: the material never leaves the device.
    pub(crate) fn guarded(self) -> Template {
        self.private_object(true)
            .with(Attribute::Sensitive(true))
            .with(Attribute::Extractable(false))
    }

    /// Private, not sensitive and extractable: the material is read back (data key pairs,
    /// derived secrets), in the job that makes the object.
    pub(crate) fn readable(self) -> Template {
        self.private_object(true)
            .with(Attribute::Sensitive(false))
            .with(Attribute::Extractable(true))
    }

    /// A session object of wrapped residency: private, sensitive, and extractable only under
    /// a trusted wrapping key (`CKA_WRAP_WITH_TRUSTED`), so that the master key can wrap it
    /// and nothing else can (see `wrapped`).
    pub(crate) fn wrapped_session(self) -> Template {
        self.token(false)
            .private_object(true)
            .with(Attribute::Sensitive(true))
            .with(Attribute::Extractable(true))
            .with(Attribute::WrapWithTrusted(true))
    }

    /// A token object moved from wrapped residency (residency migration): the custody of
    /// [`Template::wrapped_session`] on the token, so that it can become a blob again.
    pub(crate) fn wrapped_token(self) -> Template {
        self.token(true)
            .private_object(true)
            .with(Attribute::Sensitive(true))
            .with(Attribute::Extractable(true))
            .with(Attribute::WrapWithTrusted(true))
    }

    /// `CKA_VALUE_LEN` in bytes.
    pub(crate) fn value_len(self, n: usize) -> Template {
        self.with(Attribute::ValueLen((n as u64).into()))
    }

    /// `CKA_ALLOWED_MECHANISMS`.
    pub(crate) fn mechanisms(self, m: Vec<MechanismType>) -> Template {
        self.with(Attribute::AllowedMechanisms(m))
    }

    /// `CKA_ID`.
    pub(crate) fn id(self, id: &[u8]) -> Template {
        self.with(Attribute::Id(id.to_vec()))
    }

    /// `CKA_LABEL`.
    pub(crate) fn label(self, label: impl Into<Vec<u8>>) -> Template {
        self.with(Attribute::Label(label.into()))
    }

    /// The attribute list: class, key type, the added attributes, then every usage of the
    /// class not left to the token, true if allowed and false otherwise.
    pub(crate) fn build(self) -> Vec<Attribute> {
        let mut attrs = self.attrs;
        for u in Usage::of_class(self.class) {
            if self.left_to_token & u.bit() == 0 {
                attrs.push(u.attribute(self.allowed & u.bit() != 0));
            }
        }
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usages_default_to_false_and_only_those_of_the_class_are_written() {
        let t = Template::private(KeyType::EC)
            .allow(Usage::Sign)
            .allow(Usage::Encrypt)
            .allow_if(Usage::Derive, false)
            .token_default(&[Usage::SignRecover])
            .build();
        assert_eq!(
            t,
            vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Decrypt(false),
                Attribute::Sign(true),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ],
            "CKA_ENCRYPT is not a private-key attribute; SIGN_RECOVER is left to the token"
        );
        let t = Template::secret(KeyType::AES).build();
        assert_eq!(t.len(), 2 + 7);
        assert!(t[2..].iter().all(|a| matches!(
            a,
            Attribute::Encrypt(false)
                | Attribute::Decrypt(false)
                | Attribute::Sign(false)
                | Attribute::Verify(false)
                | Attribute::Wrap(false)
                | Attribute::Unwrap(false)
                | Attribute::Derive(false)
        )));
    }
}
