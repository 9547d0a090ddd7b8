//! Input validation shared by the operation families, with AWS's limits (kms-spec 1.3) and
//! AWS's ValidationException phrasing.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::KmsError;
use crate::store::Tag;

/// Largest accepted encryption context: number of pairs.
pub const MAX_CONTEXT_PAIRS: usize = 64;
/// Largest accepted encryption context: total UTF-8 bytes of keys and values.
pub const MAX_CONTEXT_BYTES: usize = 8192;
/// Tags per key.
pub const MAX_TAGS: usize = 50;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 8192;

pub fn key_ref(key_ref: &str) -> Result<(), KmsError> {
    if key_ref.is_empty() {
        return Err(KmsError::validation("keyId", "Member must not be null"));
    }
    if key_ref.len() > 2048 {
        return Err(KmsError::validation(
            "keyId",
            "Member must have length less than or equal to 2048",
        ));
    }
    Ok(())
}

pub fn encryption_context(member: &str, ctx: &BTreeMap<String, String>) -> Result<(), KmsError> {
    if ctx.len() > MAX_CONTEXT_PAIRS {
        return Err(KmsError::validation(
            member,
            &format!("Member must have at most {MAX_CONTEXT_PAIRS} pairs"),
        ));
    }
    let total: usize = ctx.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_CONTEXT_BYTES {
        return Err(KmsError::validation(
            member,
            &format!("Member must total at most {MAX_CONTEXT_BYTES} bytes"),
        ));
    }
    if ctx.keys().any(|k| k.is_empty()) {
        return Err(KmsError::validation(
            member,
            "Member keys must have length greater than or equal to 1",
        ));
    }
    Ok(())
}

/// A blob's length within `min..=max` (ValidationException otherwise).
pub fn blob_len(member: &str, len: usize, min: usize, max: usize) -> Result<(), KmsError> {
    within(member, "length", len, min, max)
}

/// A number within `min..=max` (ValidationException otherwise).
pub fn int_range(member: &str, v: i32, min: i32, max: i32) -> Result<(), KmsError> {
    within(member, "value", v, min, max)
}

/// `v` within `min..=max`, or ValidationException naming the bound it crosses, in AWS's
/// words (`what` is the member's "length" or "value").
fn within<T: PartialOrd + std::fmt::Display>(
    member: &str,
    what: &str,
    v: T,
    min: T,
    max: T,
) -> Result<(), KmsError> {
    let (side, bound) = if v < min {
        ("greater", min)
    } else if v > max {
        ("less", max)
    } else {
        return Ok(());
    };
    Err(KmsError::validation(
        member,
        &format!("Member must have {what} {side} than or equal to {bound}"),
    ))
}

/// The shape of GrantTokens (count and length); whether each names a grant is checked by
/// the grants family.
pub fn grant_token_shape(tokens: &[String]) -> Result<(), KmsError> {
    if tokens.len() > 10 {
        return Err(KmsError::validation(
            "grantTokens",
            "Member must have length less than or equal to 10",
        ));
    }
    if tokens.iter().any(|t| t.is_empty() || t.len() > 8192) {
        return Err(KmsError::InvalidGrantToken(
            "A grant token is malformed.".into(),
        ));
    }
    Ok(())
}

pub fn description(d: &str) -> Result<(), KmsError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(KmsError::validation(
            "description",
            &format!("Member must have length less than or equal to {MAX_DESCRIPTION}"),
        ));
    }
    Ok(())
}

pub fn tags(tags: &[Tag]) -> Result<(), KmsError> {
    if tags.len() > MAX_TAGS {
        return Err(KmsError::LimitExceeded(format!(
            "A key can have at most {MAX_TAGS} tags."
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tags {
        tag_key(&t.key)?;
        if t.value.chars().count() > 256 {
            return Err(KmsError::Tag(
                "Tag values must be at most 256 characters.".into(),
            ));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(KmsError::Tag(format!("Duplicate tag key '{}'.", t.key)));
        }
    }
    Ok(())
}

pub fn tag_key(k: &str) -> Result<(), KmsError> {
    let n = k.chars().count();
    if n == 0 || n > 128 {
        return Err(KmsError::Tag(
            "Tag keys must be 1 to 128 characters.".into(),
        ));
    }
    if k.starts_with("aws:") {
        return Err(KmsError::Tag(
            "Tag keys beginning with 'aws:' are reserved.".into(),
        ));
    }
    Ok(())
}

/// The page size: 1-1000, default 100.
pub fn limit(limit: Option<i32>) -> Result<usize, KmsError> {
    limit_in(limit, 1000, 100)
}

/// The page size: 1-`max`, `default` when absent.
pub fn limit_in(limit: Option<i32>, max: i32, default: usize) -> Result<usize, KmsError> {
    match limit {
        None => Ok(default),
        Some(l) => {
            int_range("limit", l, 1, max)?;
            Ok(l as usize)
        }
    }
}

/// Encodes the position after which the next page starts.
pub fn encode_marker(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// Decodes a marker made by [`encode_marker`]; anything else is InvalidMarkerException.
pub fn decode_marker(marker: &str) -> Result<Option<String>, KmsError> {
    if marker.is_empty() {
        return Ok(None);
    }
    if marker.len() > 1024 {
        return Err(KmsError::InvalidMarker("The marker is not valid.".into()));
    }
    URL_SAFE_NO_PAD
        .decode(marker.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| KmsError::InvalidMarker("The marker is not valid.".into()))
}

/// One page of items after `after`, with the marker for the next page.
pub fn page<T>(
    items: impl Iterator<Item = (String, T)>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let (out, last) = page_after(items, after, limit);
    (out, last.map(|l| encode_marker(&l)))
}

/// One page of items (in position order) after `after`, with the position of the last item
/// when more follow (for callers that make their own markers of it).
pub fn page_after<T>(
    items: impl Iterator<Item = (String, T)>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    let mut last = None;
    let mut more = false;
    for (pos, item) in items {
        if after.is_some_and(|a| pos.as_str() <= a) {
            continue;
        }
        if out.len() == limit {
            more = true;
            break;
        }
        last = Some(pos);
        out.push(item);
    }
    (out, if more { last } else { None })
}

/// Alias name rules: `alias/` prefix, 1-256 chars of `[a-zA-Z0-9:/_-]`, `alias/aws/` reserved
/// (CreateAlias).
pub fn alias_name(name: &str) -> Result<(), KmsError> {
    alias_name_syntax(name)?;
    if name.starts_with(super::managed::AWS_ALIAS_PREFIX) {
        return Err(KmsError::InvalidAliasName(
            "Alias names beginning with \"alias/aws/\" are reserved for AWS managed keys.".into(),
        ));
    }
    Ok(())
}

/// Alias name syntax: `alias/` prefix, 1-256 chars of `[a-zA-Z0-9:/_-]` (UpdateAlias and
/// DeleteAlias, which may name an AWS managed key's alias and are then refused by its policy).
pub fn alias_name_syntax(name: &str) -> Result<(), KmsError> {
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(KmsError::InvalidAliasName(format!(
            "Alias must start with the prefix \"alias/\": {}",
            printable(name)
        )));
    };
    if rest.is_empty()
        || name.len() > 256
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
    {
        return Err(KmsError::InvalidAliasName(format!(
            "Alias name {} must be 1-256 characters of [a-zA-Z0-9:/_-] after \"alias/\"",
            printable(name)
        )));
    }
    Ok(())
}

fn printable(s: &str) -> String {
    s.chars()
        .take(256)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_rules() {
        assert!(alias_name("alias/app-1:prod/x_y").is_ok());
        for bad in [
            "app",
            "alias/",
            "alias/has space",
            "alias/é",
            &format!("alias/{}", "a".repeat(251)),
        ] {
            assert!(
                matches!(alias_name(bad), Err(KmsError::InvalidAliasName(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            alias_name("alias/aws/s3"),
            Err(KmsError::InvalidAliasName(_))
        ));
    }

    #[test]
    fn markers_and_pages() {
        let items = (0..5).map(|i| (format!("k{i}"), i));
        let (p1, m1) = page(items.clone(), None, 2);
        assert_eq!(p1, vec![0, 1]);
        let after = decode_marker(m1.as_deref().unwrap()).unwrap();
        let (p2, _) = page(items.clone(), after.as_deref(), 2);
        assert_eq!(p2, vec![2, 3]);
        let (p3, m3) = page(items, Some("k3"), 2);
        assert_eq!((p3, m3), (vec![4], None));
        assert!(matches!(
            decode_marker("!!"),
            Err(KmsError::InvalidMarker(_))
        ));
    }

    #[test]
    fn limits() {
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(1001)).is_err());
        assert_eq!(limit(None).unwrap(), 100);
        let mut ctx = BTreeMap::new();
        for i in 0..65 {
            ctx.insert(format!("k{i}"), "v".into());
        }
        assert!(encryption_context("encryptionContext", &ctx).is_err());
        assert!(tags(&[Tag {
            key: "aws:x".into(),
            value: String::new()
        }])
        .is_err());
    }
}
