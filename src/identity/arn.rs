//! Amazon Resource Names, parsed without allocation.

/// A malformed ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    /// The text is not `arn:partition:service:region:account:resource`.
    #[error("malformed ARN: {0}")]
    Malformed(String),
}

/// The six colon-separated segments of an ARN, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// Everything after the fifth colon (`key/<id>`, `alias/<name>`, `user/alice`).
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    /// Splits an ARN into its segments. The resource may itself contain colons.
    pub fn parse(text: &'a str) -> Result<Arn<'a>, ArnError> {
        let mut parts = text.splitn(6, ':');
        let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(res)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ArnError::Malformed(truncate(text)));
        };
        if partition.is_empty() || service.is_empty() || res.is_empty() {
            return Err(ArnError::Malformed(truncate(text)));
        }
        if !account.is_empty() && !is_account_id(account) {
            return Err(ArnError::Malformed(truncate(text)));
        }
        Ok(Arn {
            partition,
            service,
            region,
            account,
            resource: res,
        })
    }
}

/// True for a 12-digit account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:<partition>:kms:<region>:<account>:key/<key-id>`.
pub fn key_arn(partition: &str, region: &str, account: &str, key_id: &str) -> String {
    format!("arn:{partition}:kms:{region}:{account}:key/{key_id}")
}

/// `arn:<partition>:kms:<region>:<account>:<alias-name>` (the name includes `alias/`).
pub fn alias_arn(partition: &str, region: &str, account: &str, alias_name: &str) -> String {
    format!("arn:{partition}:kms:{region}:{account}:{alias_name}")
}

/// `arn:<partition>:iam::<account>:root`.
pub fn account_root_arn(partition: &str, account: &str) -> String {
    format!("arn:{partition}:iam::{account}:root")
}

fn truncate(s: &str) -> String {
    s.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_and_user_arns() {
        let a = Arn::parse("arn:aws:kms:us-east-1:111122223333:key/abc").unwrap();
        assert_eq!(
            (a.partition, a.service, a.region, a.account, a.resource),
            ("aws", "kms", "us-east-1", "111122223333", "key/abc")
        );
        let u = Arn::parse("arn:aws:iam::111122223333:user/alice").unwrap();
        assert_eq!(u.region, "");
        let s = Arn::parse("arn:aws:sts::111122223333:assumed-role/R/s:x").unwrap();
        assert_eq!(s.resource, "assumed-role/R/s:x");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "arn",
            "arn:aws:kms:us-east-1:111122223333",
            "arn:aws:kms:us-east-1:1111:key/x",
            "urn:aws:kms:us-east-1:111122223333:key/x",
            "arn::kms:r:111122223333:key/x",
            "arn:aws:kms:r:111122223333:",
        ] {
            assert!(Arn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builders() {
        assert_eq!(
            key_arn("aws", "eu-west-1", "111122223333", "k"),
            "arn:aws:kms:eu-west-1:111122223333:key/k"
        );
        assert_eq!(
            alias_arn("aws", "eu-west-1", "111122223333", "alias/x"),
            "arn:aws:kms:eu-west-1:111122223333:alias/x"
        );
        assert_eq!(
            account_root_arn("aws", "111122223333"),
            "arn:aws:iam::111122223333:root"
        );
    }
}
