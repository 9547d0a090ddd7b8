//! Temporary credentials from AssumeRole, held in memory and, through a [`SessionVault`],
//! in the shared store.
//!
//! [`SessionStore::issue`] mints an `ASIA...` access key id, a secret and a session token for
//! a role session; [`SessionStore::lookup`] finds them again when a request presents the key
//! id and `X-Amz-Security-Token`. Only the token's SHA-256 is kept, compared in constant
//! time. With a vault (the engine's: the secret sealed on the HSM, the row in the metadata
//! store), [`SessionStore::persist`] stores a new session before it is handed out and
//! [`SessionStore::lookup_shared`] loads one another node issued, so a session token works on
//! every node at once. Expired sessions are pruned opportunistically; an expired session is
//! remembered for a grace period so callers get `ExpiredToken` rather than an unknown key.
//!
//! Randomness comes from `uuid::Uuid::new_v4()` (getrandom-backed), using only its random
//! bits.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::directory::RoleEntry;
use crate::policy::Policy;
use crate::redact::redacted_debug;

/// Shortest session AssumeRole grants, in seconds.
pub const MIN_SESSION_SECS: u32 = 900;
/// Prefix of temporary access key ids.
pub const SESSION_KEY_PREFIX: &str = "ASIA";
/// Default cap on live sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// How long an expired session is remembered (to answer `ExpiredToken`), in ms.
const EXPIRED_GRACE_MS: i64 = 15 * 60 * 1000;
/// Minimum interval between opportunistic prunes, in ms.
const PRUNE_INTERVAL_MS: i64 = 60 * 1000;
/// Maximum number of session tags.
const MAX_SESSION_TAGS: usize = 50;

/// Why a session could not be issued or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No session has this access key id.
    #[error("The security token included in the request is invalid.")]
    Unknown,
    /// The session has expired.
    #[error("The security token included in the request is expired")]
    Expired,
    /// The presented session token is not this session's.
    #[error("The security token included in the request is invalid.")]
    TokenMismatch,
    /// A request parameter is out of range (duration, session name, tags).
    #[error("{0}")]
    Validation(String),
    /// Too many live sessions.
    #[error("Too many active sessions; try again later.")]
    LimitExceeded,
}

impl SessionError {
    /// The AWS error code (`__type`) for this error.
    pub fn aws_name(&self) -> &'static str {
        match self {
            SessionError::Unknown | SessionError::TokenMismatch => "UnrecognizedClientException",
            SessionError::Expired => "ExpiredTokenException",
            SessionError::Validation(_) => "ValidationError",
            SessionError::LimitExceeded => "ThrottlingException",
        }
    }
}

/// Credentials handed to the caller of AssumeRole.
#[derive(Clone)]
pub struct IssuedCredentials {
    /// `ASIA` + 16 characters.
    pub access_key_id: String,
    /// 40-character secret.
    pub secret_access_key: Zeroizing<String>,
    /// The session token (`X-Amz-Security-Token`).
    pub session_token: Zeroizing<String>,
    /// Expiry, Unix milliseconds.
    pub expiration_ms: i64,
    /// `arn:<partition>:sts::<account>:assumed-role/<role name>/<session name>`.
    pub assumed_role_arn: String,
    /// `<RoleId>:<session name>`.
    pub assumed_role_id: String,
}

redacted_debug!(IssuedCredentials {
    access_key_id,
    secret_access_key: redacted,
    session_token: redacted,
    expiration_ms,
    assumed_role_arn,
    assumed_role_id
});

/// One live role session.
pub struct SessionEntry {
    /// The temporary access key id.
    pub access_key_id: String,
    /// The secret (for SigV4 verification).
    pub secret_access_key: Zeroizing<String>,
    /// SHA-256 of the session token: the token itself is handed out once and never kept.
    pub token_sha256: [u8; 32],
    /// The assumed role's ARN (`arn:aws:iam::<acct>:role/<path><name>`).
    pub role_arn: String,
    /// The role's RoleId (`AROA...`).
    pub role_id: String,
    /// The session name given to AssumeRole.
    pub session_name: String,
    /// The session principal ARN (`arn:aws:sts::<acct>:assumed-role/<name>/<session>`).
    pub session_arn: String,
    /// The role's account.
    pub account: String,
    /// The session policy passed to AssumeRole, if any.
    pub session_policy: Option<Arc<Policy>>,
    /// Its JSON text as given (kept so another node can compile it again).
    pub session_policy_text: Option<String>,
    /// Session tags (they override role tags of the same key).
    pub tags: Vec<(String, String)>,
    /// Issue time, Unix milliseconds (`aws:TokenIssueTime`).
    pub issued_ms: i64,
    /// Expiry, Unix milliseconds.
    pub expiration_ms: i64,
}

impl SessionEntry {
    /// `<RoleId>:<session name>` (`aws:userid` of the session).
    pub fn assumed_role_id(&self) -> String {
        format!("{}:{}", self.role_id, self.session_name)
    }
}

/// `Debug` shows whether a session policy was given, not the policy.
fn has_session_policy(e: &SessionEntry) -> bool {
    e.session_policy.is_some()
}

redacted_debug!(SessionEntry { access_key_id, secret_access_key: redacted, token_sha256: redacted, role_arn, session_arn, account, session_policy = has_session_policy, tags, issued_ms, expiration_ms });

/// Where sessions live beyond this process, so that a session one node issued works on every
/// node. The engine implements it: the secret sealed on the HSM, the row in the metadata
/// store. Errors are sentences for the log; they never carry the secret.
#[async_trait]
pub trait SessionVault: Send + Sync {
    /// Stores a new session. It must be stored before its credentials are handed out.
    async fn save(&self, entry: &SessionEntry) -> Result<(), String>;
    /// The session with this access key id, if any node issued it.
    async fn load(&self, access_key_id: &str) -> Result<Option<SessionEntry>, String>;
}

/// A session policy as AssumeRole received it: its text and its compiled form.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// The JSON text.
    pub text: String,
    /// The compiled policy.
    pub compiled: Arc<Policy>,
}

/// The in-memory session store. Cheap to share behind an `Arc`.
pub struct SessionStore {
    sessions: RwLock<HashMap<String, Arc<SessionEntry>>>,
    last_prune_ms: AtomicI64,
    max_sessions: usize,
    vault: std::sync::OnceLock<Arc<dyn SessionVault>>,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("sessions", &self.len())
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl Default for SessionStore {
    fn default() -> Self {
        SessionStore::new()
    }
}

impl SessionStore {
    /// An empty store with the default session cap.
    pub fn new() -> Self {
        SessionStore::with_limit(DEFAULT_MAX_SESSIONS)
    }

    /// An empty store holding at most `max_sessions` live sessions.
    pub fn with_limit(max_sessions: usize) -> Self {
        SessionStore {
            sessions: RwLock::new(HashMap::new()),
            last_prune_ms: AtomicI64::new(0),
            max_sessions: max_sessions.max(1),
            vault: std::sync::OnceLock::new(),
        }
    }

    /// Keeps sessions in `vault` from now on (set once, at start-up, by the daemon).
    pub fn set_vault(&self, vault: Arc<dyn SessionVault>) {
        let _ = self.vault.set(vault);
    }

    /// Stores the session just issued under `access_key_id` in the vault, if there is one.
    /// On failure the session is dropped here too, so no credentials that only this node
    /// knows are ever handed out.
    pub async fn persist(&self, access_key_id: &str) -> Result<(), String> {
        let Some(vault) = self.vault.get() else {
            return Ok(());
        };
        let Some(entry) = self.get(access_key_id) else {
            return Err("the session was pruned before it could be stored".into());
        };
        let saved = vault.save(&entry).await;
        if saved.is_err() {
            self.write_map().remove(access_key_id);
        }
        saved
    }

    /// [`SessionStore::lookup`], and on a session this node has not seen, the vault's copy
    /// (issued by another node), kept here from then on.
    pub async fn lookup_shared(
        &self,
        access_key_id: &str,
        session_token: &str,
        now_ms: i64,
    ) -> Result<Arc<SessionEntry>, SessionError> {
        match self.lookup(access_key_id, session_token, now_ms) {
            Err(SessionError::Unknown) => {}
            other => return other,
        }
        let Some(vault) = self.vault.get() else {
            return Err(SessionError::Unknown);
        };
        let loaded = vault.load(access_key_id).await.map_err(|e| {
            tracing::warn!(access_key_id, error = %e, "cannot load a session from the store");
            SessionError::Unknown
        })?;
        let entry = loaded.ok_or(SessionError::Unknown)?;
        if entry.access_key_id != access_key_id {
            return Err(SessionError::Unknown);
        }
        self.write_map()
            .entry(access_key_id.to_string())
            .or_insert_with(|| Arc::new(entry));
        self.lookup(access_key_id, session_token, now_ms)
    }

    fn get(&self, access_key_id: &str) -> Option<Arc<SessionEntry>> {
        let map = self
            .sessions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(access_key_id).cloned()
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<SessionEntry>>> {
        self.sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of sessions held (including recently expired ones).
    pub fn len(&self) -> usize {
        self.sessions.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mints credentials for a session of `role`. `duration_secs` must be within
    /// `900..=role.max_session_duration`; the session name must match `[\w+=,.@-]{2,64}`; at
    /// most 50 tags (key 1..=128, value 0..=256 characters).
    pub fn issue(
        &self,
        role: &RoleEntry,
        session_name: &str,
        duration_secs: u32,
        session_policy: Option<SessionPolicy>,
        tags: Vec<(String, String)>,
        now_ms: i64,
    ) -> Result<IssuedCredentials, SessionError> {
        validate_session_name(session_name)?;
        let max = role.max_session_duration.max(MIN_SESSION_SECS);
        if duration_secs < MIN_SESSION_SECS {
            return Err(SessionError::Validation(format!(
                "1 validation error detected: Value '{duration_secs}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to {MIN_SESSION_SECS}"
            )));
        }
        if duration_secs > max {
            return Err(SessionError::Validation(format!(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role ({max} seconds)."
            )));
        }
        validate_tags(&tags)?;

        let session_arn = format!(
            "arn:{}:sts::{}:assumed-role/{}/{}",
            role.partition, role.account, role.name, session_name
        );
        let assumed_role_id = format!("{}:{}", role.role_id, session_name);
        let expiration_ms = now_ms.saturating_add(i64::from(duration_secs) * 1000);

        let mut map = self.write_map();
        if now_ms.saturating_sub(self.last_prune_ms.load(Ordering::Relaxed)) >= PRUNE_INTERVAL_MS
            || map.len() >= self.max_sessions
        {
            prune(&mut map, now_ms);
            self.last_prune_ms.store(now_ms, Ordering::Relaxed);
        }
        if map.len() >= self.max_sessions {
            return Err(SessionError::LimitExceeded);
        }
        let access_key_id = loop {
            let id = new_access_key_id();
            if !map.contains_key(&id) {
                break id;
            }
        };
        let secret = new_secret();
        let token = new_token();
        let (session_policy, session_policy_text) = match session_policy {
            Some(p) => (Some(p.compiled), Some(p.text)),
            None => (None, None),
        };
        let entry = SessionEntry {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret.clone(),
            token_sha256: token_digest(&token),
            role_arn: role.arn.clone(),
            role_id: role.role_id.clone(),
            session_name: session_name.to_string(),
            session_arn: session_arn.clone(),
            account: role.account.clone(),
            session_policy,
            session_policy_text,
            tags,
            issued_ms: now_ms,
            expiration_ms,
        };
        map.insert(access_key_id.clone(), Arc::new(entry));
        Ok(IssuedCredentials {
            access_key_id,
            secret_access_key: secret,
            session_token: token,
            expiration_ms,
            assumed_role_arn: session_arn,
            assumed_role_id,
        })
    }

    /// Finds a session by access key id and checks the presented token (constant-time) and
    /// the expiry. A wrong token is reported before expiry, so a token holder is needed to
    /// learn that a session expired.
    pub fn lookup(
        &self,
        access_key_id: &str,
        session_token: &str,
        now_ms: i64,
    ) -> Result<Arc<SessionEntry>, SessionError> {
        self.maybe_prune(now_ms);
        let entry = self.get(access_key_id).ok_or(SessionError::Unknown)?;
        let given = token_digest(session_token);
        if !bool::from(entry.token_sha256.ct_eq(&given)) {
            return Err(SessionError::TokenMismatch);
        }
        if now_ms >= entry.expiration_ms {
            return Err(SessionError::Expired);
        }
        Ok(entry)
    }

    /// Drops every session of a role (e.g. when the role disappears on reload).
    pub fn revoke_role(&self, role_arn: &str) -> usize {
        let mut map = self
            .sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = map.len();
        map.retain(|_, s| s.role_arn != role_arn);
        before - map.len()
    }

    fn maybe_prune(&self, now_ms: i64) {
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < PRUNE_INTERVAL_MS {
            return;
        }
        // Never block the request path on a prune.
        if let Ok(mut map) = self.sessions.try_write() {
            prune(&mut map, now_ms);
            self.last_prune_ms.store(now_ms, Ordering::Relaxed);
        }
    }
}

/// SHA-256 of a session token, as sessions keep it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn prune(map: &mut HashMap<String, Arc<SessionEntry>>, now_ms: i64) {
    map.retain(|_, s| s.expiration_ms.saturating_add(EXPIRED_GRACE_MS) > now_ms);
}

fn validate_session_name(name: &str) -> Result<(), SessionError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !(2..=64).contains(&name.len()) || !ok_chars {
        return Err(SessionError::Validation(format!(
            "1 validation error detected: Value '{}' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64 and match pattern [\\w+=,.@-]*",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

fn validate_tags(tags: &[(String, String)]) -> Result<(), SessionError> {
    if tags.len() > MAX_SESSION_TAGS {
        return Err(SessionError::Validation(format!(
            "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to {MAX_SESSION_TAGS}"
        )));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        let kl = k.chars().count();
        if kl == 0 || kl > 128 || v.chars().count() > 256 {
            return Err(SessionError::Validation(format!(
                "1 validation error detected: tags[{i}]: key must have 1 to 128 characters and value at most 256"
            )));
        }
    }
    for (i, (k, _)) in tags.iter().enumerate() {
        if tags
            .iter()
            .skip(i + 1)
            .any(|(k2, _)| k2.eq_ignore_ascii_case(k))
        {
            return Err(SessionError::Validation(format!(
                "Duplicate tag keys found. Please note that Tag keys are case insensitive: '{}'",
                k.chars().take(128).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// `n` random bytes from UUIDv4s, skipping the two bytes that carry version/variant bits.
fn random_bytes(n: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(n + 16));
    while out.len() < n {
        let u = Zeroizing::new(uuid::Uuid::new_v4().into_bytes());
        out.extend(
            u.iter()
                .enumerate()
                .filter(|(i, _)| *i != 6 && *i != 8)
                .map(|(_, b)| *b),
        );
    }
    out.truncate(n);
    out
}

/// `ASIA` + 16 base32 characters (80 random bits).
fn new_access_key_id() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bytes = random_bytes(10);
    let mut bits: u128 = 0;
    for b in bytes.iter() {
        bits = (bits << 8) | u128::from(*b);
    }
    let mut id = String::with_capacity(20);
    id.push_str(SESSION_KEY_PREFIX);
    for i in (0..16).rev() {
        let idx = ((bits >> (i * 5)) & 0x1f) as usize;
        id.push(char::from(ALPHABET.get(idx).copied().unwrap_or(b'A')));
    }
    id
}

/// 40 characters of base64 (240 random bits).
fn new_secret() -> Zeroizing<String> {
    let bytes = random_bytes(30);
    Zeroizing::new(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&*bytes))
}

/// 160 characters of base64 (960 random bits).
fn new_token() -> Zeroizing<String> {
    let bytes = random_bytes(120);
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::directory::RoleEntry;
    use crate::policy::PolicyKind;

    fn role(max: u32) -> RoleEntry {
        RoleEntry::for_tests(
            "arn:aws:iam::111122223333:role/Engineering",
            "Engineering",
            "AROAENGINEERING00001",
            "111122223333",
            max,
        )
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn issue_and_lookup() {
        let store = SessionStore::new();
        let r = role(3600);
        let creds = store
            .issue(
                &r,
                "bob-session",
                900,
                None,
                vec![("team".into(), "red".into())],
                NOW,
            )
            .unwrap();
        assert!(creds.access_key_id.starts_with("ASIA"));
        assert_eq!(creds.access_key_id.len(), 20);
        assert!(creds
            .access_key_id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        assert_eq!(creds.secret_access_key.len(), 40);
        assert!(creds.session_token.len() >= 100);
        assert_eq!(creds.expiration_ms, NOW + 900_000);
        assert_eq!(
            creds.assumed_role_arn,
            "arn:aws:sts::111122223333:assumed-role/Engineering/bob-session"
        );
        assert_eq!(creds.assumed_role_id, "AROAENGINEERING00001:bob-session");

        let e = store
            .lookup(&creds.access_key_id, &creds.session_token, NOW + 1000)
            .unwrap();
        assert_eq!(e.role_arn, "arn:aws:iam::111122223333:role/Engineering");
        assert_eq!(e.session_arn, creds.assumed_role_arn);
        assert_eq!(e.account, "111122223333");
        assert_eq!(e.session_name, "bob-session");
        assert_eq!(e.assumed_role_id(), creds.assumed_role_id);
        assert_eq!(e.tags, vec![("team".to_string(), "red".to_string())]);
        assert_eq!(*e.secret_access_key, *creds.secret_access_key);
        assert!(e.session_policy.is_none());

        // Debug never shows secrets.
        let dbg = format!("{creds:?} {e:?}");
        assert!(!dbg.contains(creds.secret_access_key.as_str()));
        assert!(!dbg.contains(creds.session_token.as_str()));
    }

    #[test]
    fn lookup_errors() {
        let store = SessionStore::new();
        let r = role(3600);
        let c = store.issue(&r, "s1", 900, None, vec![], NOW).unwrap();
        assert_eq!(
            store
                .lookup("ASIAAAAAAAAAAAAAAAAA", &c.session_token, NOW)
                .unwrap_err(),
            SessionError::Unknown
        );
        assert_eq!(
            store.lookup(&c.access_key_id, "wrong", NOW).unwrap_err(),
            SessionError::TokenMismatch
        );
        let mut almost = c.session_token.to_string();
        almost.pop();
        almost.push('#');
        assert_eq!(
            store.lookup(&c.access_key_id, &almost, NOW).unwrap_err(),
            SessionError::TokenMismatch
        );
        assert_eq!(
            store
                .lookup(&c.access_key_id, &c.session_token, c.expiration_ms)
                .unwrap_err(),
            SessionError::Expired
        );
        assert_eq!(SessionError::Expired.aws_name(), "ExpiredTokenException");
        // A wrong token on an expired session is still a mismatch.
        assert_eq!(
            store
                .lookup(&c.access_key_id, "x", c.expiration_ms)
                .unwrap_err(),
            SessionError::TokenMismatch
        );
    }

    #[test]
    fn durations_names_and_tags_are_validated() {
        let store = SessionStore::new();
        let r = role(7200);
        assert!(store.issue(&r, "ok", 899, None, vec![], NOW).is_err());
        assert!(store.issue(&r, "ok", 7200, None, vec![], NOW).is_ok());
        let e = store.issue(&r, "ok", 7201, None, vec![], NOW).unwrap_err();
        assert!(e.to_string().contains("MaxSessionDuration"));
        assert_eq!(e.aws_name(), "ValidationError");
        for bad in ["a", "has space", "slash/no", &"x".repeat(65), "ünï"] {
            assert!(
                store.issue(&r, bad, 900, None, vec![], NOW).is_err(),
                "{bad}"
            );
        }
        assert!(store.issue(&r, "a+=,.@-_9", 900, None, vec![], NOW).is_ok());
        let dup = vec![("Team".into(), "a".into()), ("team".into(), "b".into())];
        assert!(store.issue(&r, "ok", 900, None, dup, NOW).is_err());
        let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(store.issue(&r, "ok", 900, None, many, NOW).is_err());
        assert!(store
            .issue(&r, "ok", 900, None, vec![(String::new(), "v".into())], NOW)
            .is_err());
    }

    #[test]
    fn session_policy_is_carried() {
        let store = SessionStore::new();
        let text = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}"#;
        let p = SessionPolicy {
            compiled: Arc::new(Policy::parse(text, PolicyKind::Session).unwrap()),
            text: text.into(),
        };
        let c = store
            .issue(&role(3600), "s1", 900, Some(p), vec![], NOW)
            .unwrap();
        let e = store
            .lookup(&c.access_key_id, &c.session_token, NOW)
            .unwrap();
        assert_eq!(
            e.session_policy.as_ref().map(|p| p.statement_count()),
            Some(1)
        );
    }

    #[test]
    fn expired_sessions_are_pruned_and_capacity_is_enforced() {
        let store = SessionStore::with_limit(3);
        let r = role(3600);
        for i in 0..3 {
            store
                .issue(&r, &format!("s{i}"), 900, None, vec![], NOW)
                .unwrap();
        }
        assert_eq!(
            store.issue(&r, "s4", 900, None, vec![], NOW).unwrap_err(),
            SessionError::LimitExceeded
        );
        // Past expiry + grace, everything is pruned and there is room again.
        let later = NOW + 900_000 + EXPIRED_GRACE_MS;
        let c = store.issue(&r, "s5", 900, None, vec![], later).unwrap();
        assert_eq!(store.len(), 1);
        // Lookups prune too (at most once a minute).
        let much_later = c.expiration_ms + EXPIRED_GRACE_MS + PRUNE_INTERVAL_MS;
        assert_eq!(
            store
                .lookup(&c.access_key_id, &c.session_token, much_later)
                .unwrap_err(),
            SessionError::Unknown
        );
        assert!(store.is_empty());
    }

    #[test]
    fn revoke_role_drops_its_sessions() {
        let store = SessionStore::new();
        let r = role(3600);
        let c = store.issue(&r, "s1", 900, None, vec![], NOW).unwrap();
        assert_eq!(store.revoke_role(&r.arn), 1);
        assert_eq!(
            store
                .lookup(&c.access_key_id, &c.session_token, NOW)
                .unwrap_err(),
            SessionError::Unknown
        );
    }

    #[test]
    fn ids_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(new_access_key_id()));
        }
        assert_ne!(*new_secret(), *new_secret());
    }
}
