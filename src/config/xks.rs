//! `[xks]` and `[[xks.key_store]]`: the XKS door (p11kms serving the AWS external key store
//! proxy API, `docs/xks.md`) and its logical key stores, one per URI path prefix.
//!
//! Each key store runs its requests as a principal of the identity directory and accepts one
//! or two SigV4 credentials, read from a file (never from the config text or argv) so that
//! AWS-side rotation needs no downtime. The file is a secret file: refused when others may
//! read it, as the PIN file is ([`super::check_secret_file`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::ConfigError;
use crate::identity::arn::Arn;
use crate::redact::redacted_debug;

/// The base path every XKS route has after its key store's prefix.
pub const XKS_BASE_PATH: &str = "/kms/xks/v1";

/// Longest URI path prefix (the specification's limit).
pub const MAX_PREFIX_LEN: usize = 128;

/// Most credentials one key store accepts at once (the current one and the next).
pub const MAX_CREDENTIALS: usize = 2;

/// `[xks]`: the XKS door. Off unless enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XksConfig {
    /// Serve the door.
    pub enabled: bool,
    /// Where to listen, e.g. `127.0.0.1:4444`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTPS with `tls_cert`/`tls_key` (by default `[server]`'s). Plain HTTP (`false`) is
    /// allowed only on a loopback address.
    pub tls: bool,
    /// The certificate chain served, when not `[server] tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// The private key served, when not `[server] tls_key`.
    pub tls_key: Option<PathBuf>,
    /// The region of the SigV4 credential scope AWS KMS signs with; `[kms] region` when
    /// absent.
    pub region: Option<String>,
    /// Mutual TLS: a CA bundle (PEM) that client certificates must chain to. When set, a
    /// request without such a certificate, or with one naming none of
    /// `mtls_client_subjects`, is refused (401 `AuthenticationFailedException`, audited).
    pub mtls_client_ca: Option<PathBuf>,
    /// The client certificate subject names accepted (subject CN or DNS alternative name);
    /// `cks.kms.<region>.amazonaws.com`, AWS KMS's, when empty.
    pub mtls_client_subjects: Vec<String>,
    /// How long a GetHealthStatus result is reused, in milliseconds (at most 60,000, the
    /// specification's bound; 0 checks the HSMs on every call).
    pub health_cache_ms: u64,
    /// Largest request body accepted; larger ones are refused before they are parsed.
    pub max_body_bytes: usize,
    /// The logical key stores, one per URI path prefix.
    pub key_store: Vec<XksKeyStoreConfig>,
}

impl Default for XksConfig {
    fn default() -> Self {
        XksConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 4444)),
            tls: true,
            tls_cert: None,
            tls_key: None,
            region: None,
            mtls_client_ca: None,
            mtls_client_subjects: Vec::new(),
            health_cache_ms: 10_000,
            max_body_bytes: 64 * 1024,
            key_store: Vec::new(),
        }
    }
}

/// `[[xks.key_store]]`: one logical external key store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XksKeyStoreConfig {
    /// The URI path prefix before `/kms/xks/v1` (`""` or `/` followed by up to 127 of
    /// `[A-Za-z0-9/_-]`, no trailing or doubled `/`), as AWS's `XksProxyUriPath` has it.
    pub uri_path_prefix: String,
    /// The identity-directory principal ARN every request of this store runs as.
    pub principal: String,
    /// A JSON file holding one or two `{"access_key_id": ..., "secret_access_key": ...}`
    /// objects in an array: the SigV4 credentials AWS KMS signs with.
    pub credentials_file: PathBuf,
}

/// One SigV4 credential of a key store. `Debug` never prints the secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XksCredential {
    /// 20-30 characters of `[A-Z2-7]`.
    pub access_key_id: String,
    /// 43-64 characters.
    #[serde(deserialize_with = "crate::redact::zeroizing_string")]
    pub secret_access_key: Zeroizing<String>,
}

redacted_debug!(XksCredential {
    access_key_id,
    secret_access_key: redacted
});

impl XksConfig {
    /// The SigV4 region: `region`, else `[kms] region`.
    pub fn region_or<'a>(&'a self, kms_region: &'a str) -> &'a str {
        self.region.as_deref().unwrap_or(kms_region)
    }

    /// The client certificate subjects mutual TLS accepts: the configured ones, else AWS
    /// KMS's for the region.
    pub fn client_subjects(&self, kms_region: &str) -> Vec<String> {
        if self.mtls_client_subjects.is_empty() {
            vec![format!(
                "cks.kms.{}.amazonaws.com",
                self.region_or(kms_region)
            )]
        } else {
            self.mtls_client_subjects.clone()
        }
    }

    /// Resolves relative paths against the config file's directory.
    pub(super) fn resolve_paths(&mut self, fix: impl Fn(&mut PathBuf)) {
        for p in [
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.mtls_client_ca,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for s in &mut self.key_store {
            fix(&mut s.credentials_file);
        }
    }

    /// Checks the section: plain HTTP only on loopback, the body limit, the TLS files, and
    /// every key store (prefix shape, unique prefixes, principal ARN, credentials file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.enabled && !self.tls && !self.listen.ip().is_loopback() {
            return invalid(format!(
                "xks.tls = false is allowed only on a loopback address, not {}",
                self.listen
            ));
        }
        if self.max_body_bytes < 32 * 1024 || self.max_body_bytes > 16 * 1024 * 1024 {
            return invalid("xks.max_body_bytes must be 32768 to 16777216".into());
        }
        if self.mtls_client_ca.is_some() && !self.tls {
            return invalid("xks.mtls_client_ca needs xks.tls = true".into());
        }
        if self.health_cache_ms > 60_000 {
            return invalid("xks.health_cache_ms must be at most 60000 (one minute)".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("xks.tls_cert and xks.tls_key are given together or not at all".into());
        }
        if let Some(r) = &self.region {
            if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return invalid(format!("xks.region {r:?} is not a region name"));
            }
        }
        if self.enabled && self.key_store.is_empty() {
            return invalid("xks.enabled = true needs at least one [[xks.key_store]]".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.key_store.iter().enumerate() {
            s.validate()
                .map_err(|m| ConfigError::Invalid(format!("xks.key_store[{i}].{m}")))?;
            if !seen.insert(s.uri_path_prefix.as_str()) {
                return invalid(format!(
                    "xks.key_store[{i}]: the uri_path_prefix {:?} is used twice",
                    s.uri_path_prefix
                ));
            }
        }
        Ok(())
    }
}

impl XksKeyStoreConfig {
    /// The store's own checks; the error names the field (`uri_path_prefix ...`).
    fn validate(&self) -> Result<(), String> {
        check_prefix(&self.uri_path_prefix).map_err(|m| format!("uri_path_prefix {m}"))?;
        let principal_ok = Arn::parse(&self.principal)
            .map(|a| a.service == "iam" || a.service == "sts")
            .unwrap_or(false);
        if !principal_ok {
            return Err(format!(
                "principal {:?} is not an IAM principal ARN (arn:aws:iam::<account>:user/<name>)",
                self.principal
            ));
        }
        self.load_credentials()
            .map(|_| ())
            .map_err(|m| format!("credentials_file {}: {m}", self.credentials_file.display()))
    }

    /// Reads and checks the credentials file: a JSON array of one or two credentials, each
    /// access key id 20-30 of `[A-Z2-7]` and each secret 43-64 printable characters, the ids
    /// distinct. The message never quotes a secret.
    pub fn load_credentials(&self) -> Result<Vec<XksCredential>, String> {
        let text = Zeroizing::new(
            std::fs::read(&self.credentials_file).map_err(|e| format!("cannot be read: {e}"))?,
        );
        let creds: Vec<XksCredential> = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "is not a JSON array of {{access_key_id, secret_access_key}} (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if creds.is_empty() || creds.len() > MAX_CREDENTIALS {
            return Err(format!(
                "must hold 1 to {MAX_CREDENTIALS} credentials, not {}",
                creds.len()
            ));
        }
        for c in &creds {
            check_credential(c)?;
        }
        if creds.len() == 2 && creds[0].access_key_id == creds[1].access_key_id {
            return Err("lists the same access key id twice".into());
        }
        Ok(creds)
    }

    /// The config key of the credentials file, for the secret-file permission check.
    pub fn credentials_path(&self) -> &Path {
        &self.credentials_file
    }
}

/// A URI path prefix as the specification allows it: `""`, or `/` and up to 127 of
/// `[A-Za-z0-9/_-]`, no trailing or doubled `/`, and not containing the XKS base path.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Ok(());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-');
    if p.len() > MAX_PREFIX_LEN || !p.starts_with('/') || !p.chars().all(allowed) {
        return Err(format!(
            "{p:?} must be empty or / followed by at most {} of [A-Za-z0-9/_-]",
            MAX_PREFIX_LEN - 1
        ));
    }
    if p.ends_with('/') || p.contains("//") || p.contains(XKS_BASE_PATH) {
        return Err(format!(
            "{p:?} must not end in /, contain //, or contain {XKS_BASE_PATH}"
        ));
    }
    Ok(())
}

/// One credential's shape (the specification's limits).
fn check_credential(c: &XksCredential) -> Result<(), String> {
    let id = &c.access_key_id;
    let id_ok = (20..=30).contains(&id.len())
        && id
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ('2'..='7').contains(&ch));
    if !id_ok {
        return Err(format!(
            "access_key_id {:?} must be 20-30 characters of [A-Z2-7]",
            id.chars().take(40).collect::<String>()
        ));
    }
    let s = &c.secret_access_key;
    if !(43..=64).contains(&s.len()) || !s.chars().all(|ch| ch.is_ascii_graphic()) {
        return Err(format!(
            "the secret of {id} must be 43-64 printable characters without spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, prefix: &str, principal: &str, creds: &str) -> XksKeyStoreConfig {
        let file = dir.join(format!("creds-{}.json", prefix.replace('/', "_")));
        std::fs::write(&file, creds).unwrap();
        XksKeyStoreConfig {
            uri_path_prefix: prefix.into(),
            principal: principal.into(),
            credentials_file: file,
        }
    }

    const USER: &str = "arn:aws:iam::111122223333:user/xks";
    const ID1: &str = "AKIAXKSTESTAAAAAAAA2";
    const ID2: &str = "AKIAXKSTESTBBBBBBBB3";
    const SECRET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn creds(ids: &[&str]) -> String {
        let v: Vec<_> = ids
            .iter()
            .map(|i| serde_json::json!({"access_key_id": i, "secret_access_key": SECRET}))
            .collect();
        serde_json::Value::Array(v).to_string()
    }

    #[test]
    fn prefixes_follow_the_specification() {
        for ok in ["", "/a", "/example-prefix", "/a/b_c/D-9"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        let long = format!("/{}", "a".repeat(MAX_PREFIX_LEN));
        for bad in [
            "a",
            "/",
            "/a/",
            "/a//b",
            "/a.b",
            "/a b",
            "/x/kms/xks/v1",
            long.as_str(),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_stores_are_checked_at_load() {
        let d = tempfile::tempdir().unwrap();
        let good = store(d.path(), "/a", USER, &creds(&[ID1, ID2]));
        let loaded = good.load_credentials().unwrap();
        assert_eq!(loaded.len(), 2);
        assert!(
            !format!("{loaded:?}").contains(SECRET),
            "Debug redacts the secret"
        );
        let cases = [
            (
                store(d.path(), "/b", "not-an-arn", &creds(&[ID1])),
                "principal",
            ),
            (
                store(
                    d.path(),
                    "/c",
                    "arn:aws:kms:us-east-1:111122223333:key/x",
                    &creds(&[ID1]),
                ),
                "principal",
            ),
            (store(d.path(), "/d", USER, &creds(&[])), "1 to 2"),
            (
                store(
                    d.path(),
                    "/e",
                    USER,
                    &creds(&[ID1, ID2, "AKIAXKSTESTCCCCCCCC4"]),
                ),
                "1 to 2",
            ),
            (store(d.path(), "/f", USER, &creds(&[ID1, ID1])), "twice"),
            (
                store(d.path(), "/g", USER, &creds(&["akia-lower-case-id-xx"])),
                "[A-Z2-7]",
            ),
            (
                store(
                    d.path(),
                    "/h",
                    USER,
                    r#"[{"access_key_id":"AKIAXKSTESTAAAAAAAA2","secret_access_key":"short"}]"#,
                ),
                "43-64",
            ),
            (store(d.path(), "/i", USER, "{not json"), "JSON array"),
            (
                store(d.path(), "x", USER, &creds(&[ID1])),
                "uri_path_prefix",
            ),
        ];
        for (s, want) in cases {
            let e = s.validate().unwrap_err();
            assert!(e.contains(want), "{e} (want {want})");
            assert!(!e.contains("short") && !e.contains(SECRET), "{e}");
        }
        let twice = XksConfig {
            key_store: vec![good.clone(), good],
            ..XksConfig::default()
        };
        let e = twice.validate().unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
        let empty = XksConfig {
            enabled: true,
            ..XksConfig::default()
        };
        assert!(empty.validate().is_err());
    }
}
