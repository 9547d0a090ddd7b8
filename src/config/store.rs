//! `[store]`: where key metadata lives. `backend = "sqlite"` (the default: an embedded file in
//! `data_dir`, one node) or `"postgres"` (a server shared by several nodes).
//!
//! For PostgreSQL, `url` names the server, role and database and must not carry a password:
//! the password comes from `password_file` (a secret file, refused when others may read it)
//! or from the environment variable `password_env` names, is read once when the store opens,
//! held in zeroizing memory and never printed.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::ConfigError;

/// `[store]`: metadata persistence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the embedded SQLite database (and the default audit directory's parent,
    /// whatever the backend).
    pub data_dir: PathBuf,
    /// Which database holds the metadata.
    #[serde(default)]
    pub backend: StoreBackend,
    /// PostgreSQL: `postgres://user@host:port/database`, without a password.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: a file holding the role's password (one line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: the name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PostgreSQL: connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// PostgreSQL: TLS towards the server.
    #[serde(default)]
    pub tls: StoreTls,
    /// PostgreSQL: CA certificate (PEM) for `tls = "verify-full"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: how often a node reads the change log even without a notification, in
    /// milliseconds: the bound on how stale its cache can be when notifications are lost.
    #[serde(default = "default_follow_interval_ms")]
    pub follow_interval_ms: u64,
}

fn default_follow_interval_ms() -> u64 {
    1000
}

fn default_pool_size() -> u32 {
    8
}

/// `[store] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded SQLite in `data_dir`.
    #[default]
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// `[store] tls` (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreTls {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS without certificate verification.
    Require,
    /// TLS, the certificate verified against `ca_file` and the host name.
    VerifyFull,
}

impl StoreConfig {
    /// Resolves relative paths against the config file's directory.
    pub(super) fn resolve_paths(&mut self, fix: impl Fn(&mut PathBuf)) {
        fix(&mut self.data_dir);
        if let Some(p) = self.password_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.ca_file.as_mut() {
            fix(p);
        }
    }

    /// Checks `[store]` without connecting anywhere.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("store.{m}")));
        if self.backend == StoreBackend::Sqlite {
            let pg_only = self.url.is_some()
                || self.password_file.is_some()
                || self.password_env.is_some()
                || self.ca_file.is_some()
                || self.tls != StoreTls::Disable;
            if pg_only {
                return invalid(
                    "url, password_file, password_env, tls and ca_file apply only to backend = \"postgres\"",
                );
            }
            return Ok(());
        }
        let Some(url) = &self.url else {
            return invalid("url is required with backend = \"postgres\"");
        };
        check_url(url)?;
        if self.password_file.is_some() && self.password_env.is_some() {
            return invalid("give password_file or password_env, not both");
        }
        if self.pool_size == 0 {
            return invalid("pool_size must be at least 1");
        }
        if !(10..=60_000).contains(&self.follow_interval_ms) {
            return invalid("follow_interval_ms must be between 10 and 60000");
        }
        match (&self.tls, &self.ca_file) {
            (StoreTls::VerifyFull, None) => invalid("tls = \"verify-full\" needs ca_file"),
            (_, Some(ca)) if !ca.is_file() => {
                invalid(&format!("ca_file: {} is not a readable file", ca.display()))
            }
            _ => Ok(()),
        }
    }

    /// The secret file `[store]` names, for the start-up permission check.
    pub(super) fn secret_file(&self) -> Option<(&'static str, PathBuf)> {
        self.password_file
            .clone()
            .map(|p| ("store.password_file", p))
    }

    /// Reads the PostgreSQL password once (file: its first line; env: the variable's value).
    /// `None` when neither source is configured (the server authenticates otherwise).
    pub fn postgres_password(&self) -> Result<Option<Zeroizing<String>>, ConfigError> {
        let text = match (&self.password_file, &self.password_env) {
            (Some(path), _) => read_password_file(path)?,
            (None, Some(var)) => Zeroizing::new(std::env::var(var).map_err(|_| {
                ConfigError::Invalid(format!(
                    "store.password_env: the environment variable {var} is not set"
                ))
            })?),
            (None, None) => return Ok(None),
        };
        let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
        if line.is_empty() {
            return Err(ConfigError::Invalid("store: the password is empty".into()));
        }
        Ok(Some(line))
    }
}

fn read_password_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| ConfigError::Invalid(format!("store.password_file {}: {e}", path.display())))
}

/// A PostgreSQL URL without a password (the message never repeats the URL: it might hold one).
fn check_url(text: &str) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(format!("store.url: {m}")));
    let Ok(url) = url::Url::parse(text) else {
        return invalid("not a URL");
    };
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return invalid("the scheme must be postgres://");
    }
    if url.password().is_some() {
        return invalid(
            "must not carry a password: put it in password_file or the variable password_env names",
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return invalid("names no host");
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        return invalid("must not carry a password parameter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreConfig, String> {
        let c: StoreConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn sqlite_is_the_default() {
        let c = parse("data_dir = \"d\"").unwrap();
        assert_eq!(c.backend, StoreBackend::Sqlite);
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.tls, StoreTls::Disable);
    }

    #[test]
    fn postgres_needs_a_url_without_password() {
        let base = "data_dir = \"d\"\nbackend = \"postgres\"\n";
        let err = parse(base).unwrap_err();
        assert!(err.contains("url is required"), "{err}");
        let err = parse(&format!("{base}url = \"postgres://kms:s3cret@db/kms\"")).unwrap_err();
        assert!(err.contains("must not carry a password"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = parse(&format!(
            "{base}url = \"postgres://kms@db/kms?password=s3cret\""
        ))
        .unwrap_err();
        assert!(
            err.contains("password parameter") && !err.contains("s3cret"),
            "{err}"
        );
        let err = parse(&format!("{base}url = \"mysql://kms@db/kms\"")).unwrap_err();
        assert!(err.contains("scheme"), "{err}");
        let c = parse(&format!(
            "{base}url = \"postgres://kms@db:5432/kms\"\npool_size = 3"
        ))
        .unwrap();
        assert_eq!((c.backend, c.pool_size), (StoreBackend::Postgres, 3));
    }

    #[test]
    fn postgres_options_are_checked() {
        let base = "data_dir = \"d\"\nbackend = \"postgres\"\nurl = \"postgres://kms@db/kms\"\n";
        let both = format!("{base}password_file = \"p\"\npassword_env = \"PGPW_TEST\"");
        assert!(parse(&both).unwrap_err().contains("not both"));
        assert!(parse(&format!("{base}pool_size = 0"))
            .unwrap_err()
            .contains("pool_size"));
        let vf = parse(&format!("{base}tls = \"verify-full\"")).unwrap_err();
        assert!(vf.contains("needs ca_file"), "{vf}");
        assert!(parse(&format!("{base}tls = \"sometimes\"")).is_err());
        assert!(parse(&format!("{base}bogus = 1")).is_err());
        assert!(parse(&format!("{base}tls = \"require\"")).is_ok());
    }

    #[test]
    fn postgres_keys_are_refused_with_sqlite() {
        let err = parse("data_dir = \"d\"\nurl = \"postgres://kms@db/kms\"").unwrap_err();
        assert!(err.contains("apply only to backend"), "{err}");
    }

    #[test]
    fn password_comes_from_its_file_once_and_is_not_printed() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pg-password");
        std::fs::write(&file, "hunter2-long\n").unwrap();
        let mut c = parse(
            "data_dir = \"d\"\nbackend = \"postgres\"\nurl = \"postgres://kms@db/kms\"\npassword_file = \"pg-password\"",
        )
        .unwrap();
        c.resolve_paths(|p| *p = d.path().join(&*p));
        assert_eq!(
            c.postgres_password().unwrap().unwrap().as_str(),
            "hunter2-long"
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        std::fs::write(&file, "\n").unwrap();
        assert!(c
            .postgres_password()
            .unwrap_err()
            .to_string()
            .contains("empty"));
        c.password_file = Some(d.path().join("absent"));
        assert!(c.postgres_password().is_err());
        c.password_file = None;
        assert!(c.postgres_password().unwrap().is_none());
    }
}
