//! The request as the evaluator sees it (spec section 3.1).

use std::borrow::Cow;

/// What the request is: who, what, on which resource, and its condition keys.
///
/// Condition-key names are stored lowercased (lowercased once, when set); values keep their
/// case. A single-valued key is a one-element list; a multi-valued key (ArrayOfString) may have
/// any number of elements. Absent keys are simply not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// Caller ARN (user, assumed-role session, or account root).
    pub principal_arn: String,
    /// Caller account id.
    pub principal_account: String,
    /// Action, e.g. `kms:Decrypt`.
    pub action: String,
    /// Key ARN, alias ARN, or `*`.
    pub resource: String,
    /// Sorted by lowercased key name.
    keys: Vec<(Box<str>, Vec<String>)>,
}

/// Lowercases a condition-key name (borrowing when it already is).
pub(crate) fn lower(key: &str) -> Cow<'_, str> {
    if key.chars().any(char::is_uppercase) {
        Cow::Owned(key.to_lowercase())
    } else {
        Cow::Borrowed(key)
    }
}

impl RequestContext {
    /// New context without condition keys.
    pub fn new(
        principal_arn: impl Into<String>,
        principal_account: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        RequestContext {
            principal_arn: principal_arn.into(),
            principal_account: principal_account.into(),
            action: action.into(),
            resource: resource.into(),
            keys: Vec::new(),
        }
    }

    /// Sets a single-valued key (replacing any previous value).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.set_multi(key, vec![value.into()]);
    }

    /// Sets a multi-valued key (replacing any previous value). An empty list is a present,
    /// empty set: `ForAllValues` is true and `ForAnyValue` false on it, as for an absent key.
    pub fn set_multi(&mut self, key: &str, values: Vec<String>) {
        let k = lower(key);
        match self.keys.binary_search_by(|(n, _)| (**n).cmp(&*k)) {
            Ok(i) => {
                if let Some(slot) = self.keys.get_mut(i) {
                    slot.1 = values;
                }
            }
            Err(i) => self
                .keys
                .insert(i, (k.into_owned().into_boxed_str(), values)),
        }
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &str) {
        let k = lower(key);
        if let Ok(i) = self.keys.binary_search_by(|(n, _)| (**n).cmp(&*k)) {
            self.keys.remove(i);
        }
    }

    /// Values of a key (case-insensitive name), `None` when absent.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.get_lc(&lower(key))
    }

    /// Lookup with an already-lowercased name (no allocation).
    pub(crate) fn get_lc(&self, key_lc: &str) -> Option<&[String]> {
        self.keys
            .binary_search_by(|(n, _)| (**n).cmp(key_lc))
            .ok()
            .and_then(|i| self.keys.get(i))
            .map(|(_, v)| v.as_slice())
    }

    /// All keys (lowercased names) and values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.keys.iter().map(|(k, v)| (&**k, v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_values_are_not() {
        let mut c = RequestContext::new("arn:aws:iam::1:user/a", "1", "kms:Decrypt", "*");
        c.set("kms:EncryptionContext:AppName", "Value");
        assert_eq!(
            c.get("KMS:encryptioncontext:APPNAME"),
            Some(&["Value".to_string()][..])
        );
        c.set("kms:encryptioncontext:appname", "Other");
        assert_eq!(c.iter().count(), 1);
        assert_eq!(c.get("kms:EncryptionContext:AppName").unwrap()[0], "Other");
        c.set_multi("kms:EncryptionContextKeys", vec![]);
        assert_eq!(c.get("kms:encryptioncontextkeys"), Some(&[][..]));
        c.remove("KMS:EncryptionContextKeys");
        assert_eq!(c.get("kms:encryptioncontextkeys"), None);
        assert_eq!(c.get("missing"), None);
    }
}
