//! The store side of several nodes (migration 0008): the change log and its PostgreSQL
//! waker, stored AssumeRole sessions, leadership of background duties, and `describe`.

use super::{any_options, db_err, write_err, Embedded, SqlStore};
use crate::store::{
    Backend, Change, ChangeKind, Duty, LeaderGuard, SessionRecord, StoreError, StoreInfo,
};
use sqlx::any::AnyRow;
use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// The NOTIFY channel the `change_log` trigger (postgres/0008) signals.
const CHANNEL: &str = "p11kms_changes";
/// How long the listener waits before retrying after an error it could not recover from.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

pub(super) async fn changes_since(
    pool: &AnyPool,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<Change>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, kind, id FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after_seq)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter().map(change_from_row).collect()
}

fn change_from_row(row: &AnyRow) -> Result<Change, StoreError> {
    let kind: String = row.try_get("kind").map_err(db_err)?;
    Ok(Change {
        seq: row.try_get("seq").map_err(db_err)?,
        at_ms: row.try_get("at_ms").map_err(db_err)?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind {kind:?}")))?,
        id: row.try_get("id").map_err(db_err)?,
    })
}

pub(super) async fn last_change_seq(pool: &AnyPool) -> Result<i64, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM change_log")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    Ok(seq.unwrap_or(0))
}

pub(super) async fn prune_changes(pool: &AnyPool, older_than_ms: i64) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM change_log WHERE at_ms < $1")
        .bind(older_than_ms)
        .execute(pool)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected())
}

pub(super) async fn insert_session(
    conn: &mut AnyConnection,
    s: &SessionRecord,
) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&s.tags)
        .map_err(|e| StoreError::Database(format!("encoding session tags: {e}")))?;
    sqlx::query(
        "INSERT INTO sessions (access_key_id, token_sha256, sealed_secret, role_arn, role_id, \
         session_name, session_arn, account, session_policy, tags, created_at_ms, \
         expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&s.access_key_id)
    .bind(&s.token_sha256)
    .bind(&s.sealed_secret)
    .bind(&s.role_arn)
    .bind(&s.role_id)
    .bind(&s.session_name)
    .bind(&s.session_arn)
    .bind(&s.account)
    .bind(&s.session_policy)
    .bind(tags)
    .bind(s.created_at_ms)
    .bind(s.expires_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        write_err(
            e,
            || format!("session {}", s.access_key_id),
            || format!("session {}", s.access_key_id),
        )
    })?;
    Ok(())
}

pub(super) async fn get_session(
    pool: &AnyPool,
    access_key_id: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    sqlx::query(
        "SELECT access_key_id, token_sha256, sealed_secret, role_arn, role_id, session_name, \
         session_arn, account, session_policy, tags, created_at_ms, expires_at_ms \
         FROM sessions WHERE access_key_id = $1",
    )
    .bind(access_key_id)
    .fetch_optional(pool)
    .await
    .map_err(db_err)?
    .as_ref()
    .map(session_from_row)
    .transpose()
}

fn session_from_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(db_err);
    let tags: Vec<(String, String)> = serde_json::from_str(&get("tags")?)
        .map_err(|_| StoreError::Corrupt("session row: tags".into()))?;
    Ok(SessionRecord {
        access_key_id: get("access_key_id")?,
        token_sha256: get("token_sha256")?,
        sealed_secret: row.try_get("sealed_secret").map_err(db_err)?,
        role_arn: get("role_arn")?,
        role_id: get("role_id")?,
        session_name: get("session_name")?,
        session_arn: get("session_arn")?,
        account: get("account")?,
        session_policy: row.try_get("session_policy").map_err(db_err)?,
        tags,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        expires_at_ms: row.try_get("expires_at_ms").map_err(db_err)?,
    })
}

pub(super) async fn delete_expired_sessions(
    pool: &AnyPool,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM sessions WHERE expires_at_ms <= $1")
        .bind(now_ms)
        .execute(pool)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected())
}

pub(super) async fn describe(
    pool: &AnyPool,
    backend: Backend,
    known: &[Embedded],
) -> Result<StoreInfo, StoreError> {
    let version_sql = match backend {
        Backend::Sqlite => "SELECT sqlite_version()",
        Backend::Postgres => "SELECT current_setting('server_version')",
    };
    let server_version: String = sqlx::query_scalar(version_sql)
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
    Ok(StoreInfo {
        backend,
        server_version,
        applied_migrations: applied,
        latest_known: known.last().map(|m| m.0).unwrap_or(0),
    })
}

impl SqlStore {
    /// [`crate::store::MetadataStore::subscribe_changes`]: one listener task per store, made
    /// on the first call (PostgreSQL only, and only inside a Tokio runtime).
    pub(super) fn subscribe(&self) -> Option<watch::Receiver<i64>> {
        let url = self.pg_url.clone()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let sender = self.changes.get_or_init(|| {
            let (tx, _) = watch::channel(0);
            let tx = Arc::new(tx);
            runtime.spawn(listen(url, Arc::downgrade(&tx)));
            tx
        });
        Some(sender.subscribe())
    }

    /// [`crate::store::MetadataStore::try_lead`].
    pub(super) async fn lead(&self, duty: Duty) -> Result<Option<LeaderGuard>, StoreError> {
        let Some(url) = &self.pg_url else {
            return Ok(Some(LeaderGuard { duty, conn: None }));
        };
        let mut conn = AnyConnection::connect_with(&any_options(url)?)
            .await
            .map_err(db_err)?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(duty.lock_key())
            .fetch_one(&mut conn)
            .await
            .map_err(db_err)?;
        if !locked {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(LeaderGuard {
            duty,
            conn: Some(conn),
        }))
    }
}

/// The LISTEN loop: feeds `sender` with each notified seq until the store is dropped.
/// `PgListener` reconnects by itself; a reconnect wakes the receivers too, since
/// notifications sent meanwhile are lost.
async fn listen(url: Arc<zeroize::Zeroizing<String>>, sender: Weak<watch::Sender<i64>>) {
    loop {
        let mut listener = match PgListener::connect(url.as_str()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %db_err(e), "change listener: cannot connect; retrying");
                tokio::time::sleep(LISTEN_RETRY).await;
                if sender.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %db_err(e), "change listener: LISTEN failed; retrying");
            tokio::time::sleep(LISTEN_RETRY).await;
            continue;
        }
        wake(&sender, None);
        loop {
            if sender.strong_count() == 0 {
                return;
            }
            match listener.try_recv().await {
                Ok(Some(n)) => wake(&sender, n.payload().parse().ok()),
                // The connection was lost; the next try_recv reconnects.
                Ok(None) => wake(&sender, None),
                Err(e) => {
                    tracing::warn!(error = %db_err(e), "change listener failed; reconnecting");
                    tokio::time::sleep(LISTEN_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Wakes every receiver: with a newer seq when one was notified, else unchanged.
fn wake(sender: &Weak<watch::Sender<i64>>, seq: Option<i64>) {
    if let Some(s) = sender.upgrade() {
        s.send_modify(|v| {
            if let Some(seq) = seq {
                *v = (*v).max(seq);
            }
        });
    }
}

impl LeaderGuard {
    /// The duty led.
    pub fn duty(&self) -> Duty {
        self.duty
    }

    /// Whether the lock is still held: on PostgreSQL, the dedicated connection answers and
    /// the server still lists its advisory lock (false once the connection was lost: the
    /// server released the lock then, and another node may lead). Always true on SQLite.
    pub async fn still_held(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        let held: Result<i64, _> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted",
        )
        .fetch_one(conn)
        .await;
        matches!(held, Ok(n) if n > 0)
    }

    /// Gives up the duty now (unlock, then close the connection); dropping the guard does
    /// the same in the background.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
                .bind(self.duty.lock_key())
                .fetch_one(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the session releases its advisory locks on the server.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = conn.close().await;
                });
            }
        }
    }
}
