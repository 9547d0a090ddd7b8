//! AssumeRole sessions in the shared store, so that a session token one node issued works on
//! every node at once.
//!
//! The session's secret access key is sealed on the default HSM (AES-GCM under the sealing
//! key that custom key store passwords use, with `sts-session/<access key id>` as the
//! additional data, so a blob moved to another session's row does not open). The session
//! token is stored only as its SHA-256. The store never holds a plaintext secret.

use std::sync::Arc;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::connections::KeyStores;
use crate::identity::{SessionEntry, SessionVault};
use crate::policy::{Policy, PolicyKind};
use crate::store::{MetadataStore, SessionRecord};

/// The engine's [`SessionVault`]: the metadata store plus the HSM's sealing key.
pub struct StoredSessions {
    store: Arc<dyn MetadataStore>,
    key_stores: Arc<KeyStores>,
}

impl StoredSessions {
    /// A vault over the engine's store and sealing key.
    pub(crate) fn new(store: Arc<dyn MetadataStore>, key_stores: Arc<KeyStores>) -> Self {
        StoredSessions { store, key_stores }
    }
}

/// The additional data a session's sealed secret is bound to.
fn seal_label(access_key_id: &str) -> String {
    format!("sts-session/{access_key_id}")
}

#[async_trait]
impl SessionVault for StoredSessions {
    async fn save(&self, e: &SessionEntry) -> Result<(), String> {
        let label = seal_label(&e.access_key_id);
        let sealed = self
            .key_stores
            .seal(&label, &e.secret_access_key)
            .await
            .map_err(|err| format!("cannot seal the session secret: {err}"))?;
        let record = SessionRecord {
            access_key_id: e.access_key_id.clone(),
            token_sha256: hex::encode(e.token_sha256),
            sealed_secret: sealed,
            role_arn: e.role_arn.clone(),
            role_id: e.role_id.clone(),
            session_name: e.session_name.clone(),
            session_arn: e.session_arn.clone(),
            account: e.account.clone(),
            session_policy: e.session_policy_text.clone(),
            tags: e.tags.clone(),
            created_at_ms: e.issued_ms,
            expires_at_ms: e.expiration_ms,
        };
        self.store
            .insert_session(&record)
            .await
            .map_err(|err| err.to_string())
    }

    async fn load(&self, access_key_id: &str) -> Result<Option<SessionEntry>, String> {
        let Some(r) = self
            .store
            .get_session(access_key_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let secret = self
            .key_stores
            .unseal(&seal_label(&r.access_key_id), &r.sealed_secret)
            .await
            .map_err(|e| format!("cannot open the session secret: {e}"))?;
        let token_sha256 = decode_digest(&r.token_sha256)?;
        let session_policy = match &r.session_policy {
            Some(text) => Some(Arc::new(
                Policy::parse(text, PolicyKind::Session).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        Ok(Some(SessionEntry {
            access_key_id: r.access_key_id,
            secret_access_key: Zeroizing::new(secret.expose().to_string()),
            token_sha256,
            role_arn: r.role_arn,
            role_id: r.role_id,
            session_name: r.session_name,
            session_arn: r.session_arn,
            account: r.account,
            session_policy,
            session_policy_text: r.session_policy,
            tags: r.tags,
            issued_ms: r.created_at_ms,
            expiration_ms: r.expires_at_ms,
        }))
    }
}

/// A stored token digest (64 hex digits).
fn decode_digest(hex_text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| "a stored session token digest is malformed".to_string())?;
    Ok(out)
}
