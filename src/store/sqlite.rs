//! The embedded SQLite metadata store (the default backend).
//!
//! One database file, `p11kms.db`, in the data directory: WAL journal, `synchronous = FULL`,
//! foreign keys on, a small connection pool. Versioned migrations are compiled into the binary
//! and run at start-up; sqlx records each one with its checksum in `_sqlx_migrations`, so an
//! edited migration or a database written by a newer binary is refused instead of misread.
//!
//! Every write that touches more than one row runs in one `BEGIN IMMEDIATE` transaction: it
//! takes the write lock up front, so a transaction never has to upgrade a read lock (which
//! SQLite answers with `SQLITE_BUSY` without waiting).

use super::{
    AliasRecord, GrantRecord, ImportTokenRecord, KeyBundle, KeyLifecycle, KeyRecord, KeyState,
    KeyStoreRecord, KeyUsageRecord, KeyVersion, MetadataStore, OrphanRecord, RotationEntry,
    StoreError, Tag, UsageOperation,
};
use async_trait::async_trait;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "p11kms.db";

const MAX_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded migrations as (version, description, SQL), in version order.
///
/// Append only: never edit or renumber a released entry, sqlx checks the checksums.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "deleted keys",
        include_str!("../../migrations/0002_deleted_keys.sql"),
    ),
    (
        3,
        "grants",
        include_str!("../../migrations/0003_grants.sql"),
    ),
    (
        4,
        "rotation import",
        include_str!("../../migrations/0004_rotation_import.sql"),
    ),
    (
        5,
        "key last usage",
        include_str!("../../migrations/0005_key_last_usage.sql"),
    ),
    (
        6,
        "custom key stores",
        include_str!("../../migrations/0006_custom_key_stores.sql"),
    ),
    (
        7,
        "external key stores",
        include_str!("../../migrations/0007_external_key_stores.sql"),
    ),
];

/// The column list every key query selects, in [`key_from_row`]'s order.
const KEY_COLUMNS: &str = "key_id, account, description, key_spec, key_usage, origin, state, \
     created_at_ms, deletion_date_ms, pending_window_days, current_version, policy, \
     custom_key_store_id, xks_key_id";

/// [`MetadataStore`] on an embedded SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/p11kms.db` and runs pending migrations.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        tokio::fs::create_dir_all(data_dir).await.map_err(|e| {
            StoreError::Database(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE_NAME))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        if let Err(e) = run_migrations(&pool).await {
            pool.close().await;
            return Err(e);
        }
        Ok(SqliteStore { pool })
    }

    /// The underlying connection pool (for later tables and maintenance).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a transaction that holds the write lock from its first statement.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }
}

/// The embedded migrations as a sqlx migration source.
#[derive(Debug)]
struct EmbeddedMigrations;

type ResolveFuture = Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send>>;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> ResolveFuture {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        description.into(),
                        MigrationType::Simple,
                        sql.into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Applies every embedded migration not yet recorded; a no-op on an up-to-date database.
async fn run_migrations(pool: &SqlitePool) -> Result<(), StoreError> {
    let migrator = Migrator::new(EmbeddedMigrations)
        .await
        .map_err(|e| StoreError::Database(format!("migration: {e}")))?;
    migrator
        .run(pool)
        .await
        .map_err(|e| StoreError::Database(format!("migration: {e}")))
}

/// Maps an sqlx error with no special meaning for the caller. sqlx's messages carry the
/// SQLite error text, never bound parameters.
fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// Maps an error of a write: a unique violation becomes `AlreadyExists(exists)`, a foreign-key
/// violation (the referenced key is gone) becomes `NotFound(missing)`.
fn write_err(
    e: sqlx::Error,
    exists: impl FnOnce() -> String,
    missing: impl FnOnce() -> String,
) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            return StoreError::AlreadyExists(exists());
        }
        if d.is_foreign_key_violation() {
            return StoreError::NotFound(missing());
        }
    }
    db_err(e)
}

fn key_missing(key_id: &str) -> String {
    format!("key {key_id}")
}

fn alias_label(account: &str, name: &str) -> String {
    format!("alias {name} in account {account}")
}

/// Reads an INTEGER column as a u32, `Corrupt` if it is out of range.
fn get_u32(row: &SqliteRow, column: &str, key_id: &str) -> Result<u32, StoreError> {
    let raw: i64 = row.try_get(column).map_err(db_err)?;
    u32::try_from(raw).map_err(|_| {
        StoreError::Corrupt(format!("key {key_id}: {column} {raw} is not a valid u32"))
    })
}

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let key_id: String = row.try_get("key_id").map_err(db_err)?;
    let state_text: String = row.try_get("state").map_err(db_err)?;
    let state = KeyState::parse(&state_text).ok_or_else(|| {
        StoreError::Corrupt(format!("key {key_id}: unknown key state {state_text:?}"))
    })?;
    let pending_window_days = match row
        .try_get::<Option<i64>, _>("pending_window_days")
        .map_err(db_err)?
    {
        None => None,
        Some(days) => Some(i32::try_from(days).map_err(|_| {
            StoreError::Corrupt(format!(
                "key {key_id}: pending_window_days {days} is out of range"
            ))
        })?),
    };
    let current_version = get_u32(row, "current_version", &key_id)?;
    Ok(KeyRecord {
        account: row.try_get("account").map_err(db_err)?,
        description: row.try_get("description").map_err(db_err)?,
        key_spec: row.try_get("key_spec").map_err(db_err)?,
        key_usage: row.try_get("key_usage").map_err(db_err)?,
        origin: row.try_get("origin").map_err(db_err)?,
        state,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        deletion_date_ms: row.try_get("deletion_date_ms").map_err(db_err)?,
        pending_window_days,
        current_version,
        policy: row.try_get("policy").map_err(db_err)?,
        custom_key_store_id: row.try_get("custom_key_store_id").map_err(db_err)?,
        xks_key_id: row.try_get("xks_key_id").map_err(db_err)?,
        // Row versions arrive with the store's next migration; until then every row is at 1.
        row_version: 1,
        key_id,
    })
}

fn version_from_row(row: &SqliteRow) -> Result<KeyVersion, StoreError> {
    let key_id: String = row.try_get("key_id").map_err(db_err)?;
    let version = get_u32(row, "version", &key_id)?;
    Ok(KeyVersion {
        version,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        key_id,
    })
}

/// A tag row as (key id, tag).
fn tag_from_row(row: &SqliteRow) -> Result<(String, Tag), StoreError> {
    Ok((
        row.try_get("key_id").map_err(db_err)?,
        Tag {
            key: row.try_get("tag_key").map_err(db_err)?,
            value: row.try_get("tag_value").map_err(db_err)?,
        },
    ))
}

fn alias_from_row(row: &SqliteRow) -> Result<AliasRecord, StoreError> {
    Ok(AliasRecord {
        account: row.try_get("account").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        key_id: row.try_get("key_id").map_err(db_err)?,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(db_err)?,
    })
}

/// Inserts the key row and its tags on `conn` (the caller owns the transaction).
async fn insert_key_on(
    conn: &mut SqliteConnection,
    key: &KeyRecord,
    tags: &[Tag],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO keys (key_id, account, description, key_spec, key_usage, origin, state, \
         created_at_ms, deletion_date_ms, pending_window_days, current_version, policy, \
         custom_key_store_id, xks_key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.key_id)
    .bind(&key.account)
    .bind(&key.description)
    .bind(&key.key_spec)
    .bind(&key.key_usage)
    .bind(&key.origin)
    .bind(key.state.as_str())
    .bind(key.created_at_ms)
    .bind(key.deletion_date_ms)
    .bind(key.pending_window_days)
    .bind(i64::from(key.current_version))
    .bind(&key.policy)
    .bind(&key.custom_key_store_id)
    .bind(&key.xks_key_id)
    .execute(&mut *conn)
    .await
    .map_err(|e| write_err(e, || key_missing(&key.key_id), || key_missing(&key.key_id)))?;
    upsert_tags_on(conn, &key.key_id, tags).await
}

/// Adds or overwrites tags of an existing key on `conn`.
async fn upsert_tags_on(
    conn: &mut SqliteConnection,
    key_id: &str,
    tags: &[Tag],
) -> Result<(), StoreError> {
    for tag in tags {
        sqlx::query(
            "INSERT INTO tags (key_id, tag_key, tag_value) VALUES (?, ?, ?) \
             ON CONFLICT (key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
        )
        .bind(key_id)
        .bind(&tag.key)
        .bind(&tag.value)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            write_err(
                e,
                || format!("tag {} on key {key_id}", tag.key),
                || key_missing(key_id),
            )
        })?;
    }
    Ok(())
}

/// Inserts a key version row on `conn`.
async fn insert_version_on(
    conn: &mut SqliteConnection,
    version: &KeyVersion,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO key_versions (key_id, version, created_at_ms) VALUES (?, ?, ?)")
        .bind(&version.key_id)
        .bind(i64::from(version.version))
        .bind(version.created_at_ms)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            write_err(
                e,
                || format!("version {} of key {}", version.version, version.key_id),
                || key_missing(&version.key_id),
            )
        })?;
    Ok(())
}

/// Overwrites the mutable columns of a key row on `conn`; `NotFound` if it does not exist.
async fn update_key_on(conn: &mut SqliteConnection, key: &KeyRecord) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE keys SET state = ?, description = ?, deletion_date_ms = ?, \
         pending_window_days = ?, current_version = ?, policy = ? WHERE key_id = ?",
    )
    .bind(key.state.as_str())
    .bind(&key.description)
    .bind(key.deletion_date_ms)
    .bind(key.pending_window_days)
    .bind(i64::from(key.current_version))
    .bind(&key.policy)
    .bind(&key.key_id)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(key_missing(&key.key_id)));
    }
    Ok(())
}

/// `NotFound` unless the key row exists.
async fn require_key_on(conn: &mut SqliteConnection, key_id: &str) -> Result<(), StoreError> {
    let found = sqlx::query("SELECT 1 FROM keys WHERE key_id = ?")
        .bind(key_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(key_missing(key_id))),
    }
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn insert_key(&self, key: &KeyRecord, tags: &[Tag]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        insert_key_on(&mut tx, key, tags).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn add_version_and_update(
        &self,
        version: &KeyVersion,
        key: &KeyRecord,
    ) -> Result<(), StoreError> {
        if version.key_id != key.key_id {
            return Err(StoreError::Database(format!(
                "version belongs to key {} but the row to update is key {}",
                version.key_id, key.key_id
            )));
        }
        let mut tx = self.write_tx().await?;
        insert_version_on(&mut tx, version).await?;
        update_key_on(&mut tx, key).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        update_key_on(&mut conn, key).await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyBundle>, StoreError> {
        // One read transaction: the three queries see the same snapshot.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = ?"))
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let key = key_from_row(&row)?;
        let versions = sqlx::query(
            "SELECT key_id, version, created_at_ms FROM key_versions \
             WHERE key_id = ? ORDER BY version",
        )
        .bind(key_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(version_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let tags = sqlx::query(
            "SELECT key_id, tag_key, tag_value FROM tags WHERE key_id = ? ORDER BY tag_key",
        )
        .bind(key_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|row| tag_from_row(row).map(|(_, tag)| tag))
        .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(KeyBundle {
            key,
            versions,
            tags,
        }))
    }

    async fn load_all(&self) -> Result<Vec<KeyBundle>, StoreError> {
        // Three queries in one read transaction, grouped in memory.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let key_rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY key_id"))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let version_rows = sqlx::query(
            "SELECT key_id, version, created_at_ms FROM key_versions ORDER BY key_id, version",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let tag_rows =
            sqlx::query("SELECT key_id, tag_key, tag_value FROM tags ORDER BY key_id, tag_key")
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

        let mut bundles = Vec::with_capacity(key_rows.len());
        let mut index = HashMap::with_capacity(key_rows.len());
        for row in &key_rows {
            let key = key_from_row(row)?;
            index.insert(key.key_id.clone(), bundles.len());
            bundles.push(KeyBundle {
                key,
                versions: Vec::new(),
                tags: Vec::new(),
            });
        }
        // Rows arrive sorted, so each bundle's lists come out sorted. Rows without a key row
        // cannot exist while foreign keys are enforced; they are skipped.
        for row in &version_rows {
            let version = version_from_row(row)?;
            if let Some(&i) = index.get(&version.key_id) {
                bundles[i].versions.push(version);
            }
        }
        for row in &tag_rows {
            let (key_id, tag) = tag_from_row(row)?;
            if let Some(&i) = index.get(&key_id) {
                bundles[i].tags.push(tag);
            }
        }
        Ok(bundles)
    }

    async fn delete_key(&self, key_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        // Explicit child deletes, so the result does not depend on ON DELETE CASCADE alone.
        for sql in [
            "DELETE FROM aliases WHERE key_id = ?",
            "DELETE FROM tags WHERE key_id = ?",
            "DELETE FROM key_versions WHERE key_id = ?",
        ] {
            sqlx::query(sql)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let done = sqlx::query("DELETE FROM keys WHERE key_id = ?")
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            // Dropping the transaction rolls it back.
            return Err(StoreError::NotFound(key_missing(key_id)));
        }
        tx.commit().await.map_err(db_err)
    }

    async fn destroy_key(&self, key_id: &str, deleted_at_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let account: Option<String> =
            sqlx::query_scalar("SELECT account FROM keys WHERE key_id = ?")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(account) = account else {
            return Err(StoreError::NotFound(key_missing(key_id)));
        };
        for sql in [
            "DELETE FROM aliases WHERE key_id = ?",
            "DELETE FROM tags WHERE key_id = ?",
            "DELETE FROM key_versions WHERE key_id = ?",
            "DELETE FROM grants WHERE key_id = ?",
            "DELETE FROM keys WHERE key_id = ?",
        ] {
            sqlx::query(sql)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(
            "INSERT OR REPLACE INTO deleted_keys (key_id, account, deleted_at_ms) VALUES (?, ?, ?)",
        )
        .bind(key_id)
        .bind(&account)
        .bind(deleted_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn insert_grant(&self, g: &GrantRecord) -> Result<(), StoreError> {
        let ops = serde_json::to_string(&g.operations)
            .map_err(|e| StoreError::Database(format!("encoding grant operations: {e}")))?;
        let constraints = if g.constraint_equals.is_none() && g.constraint_subset.is_none() {
            None
        } else {
            Some(
                serde_json::to_string(&serde_json::json!({
                    "EncryptionContextEquals": g.constraint_equals,
                    "EncryptionContextSubset": g.constraint_subset,
                }))
                .map_err(|e| StoreError::Database(format!("encoding grant constraints: {e}")))?,
            )
        };
        let mut tx = self.write_tx().await?;
        require_key_on(&mut tx, &g.key_id).await?;
        sqlx::query(
            "INSERT INTO grants (grant_id, key_id, name, grantee_principal, retiring_principal, \
             operations, constraints, issuing_account, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&g.grant_id)
        .bind(&g.key_id)
        .bind(&g.name)
        .bind(&g.grantee_principal)
        .bind(&g.retiring_principal)
        .bind(ops)
        .bind(constraints)
        .bind(&g.issuing_account)
        .bind(g.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            write_err(
                e,
                || format!("grant {} already exists", g.grant_id),
                || key_missing(&g.key_id),
            )
        })?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete_grant(&self, grant_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM grants WHERE grant_id = ?")
            .bind(grant_id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("grant {grant_id} not found")));
        }
        Ok(())
    }

    async fn list_grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT grant_id, key_id, name, grantee_principal, retiring_principal, operations, \
             constraints, issuing_account, created_at_ms FROM grants \
             ORDER BY key_id, created_at_ms, grant_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn deleted_key_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT key_id FROM deleted_keys ORDER BY key_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn put_tags(&self, key_id: &str, tags: &[Tag]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        require_key_on(&mut tx, key_id).await?;
        upsert_tags_on(&mut tx, key_id, tags).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn remove_tags(&self, key_id: &str, tag_keys: &[String]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        require_key_on(&mut tx, key_id).await?;
        for tag_key in tag_keys {
            sqlx::query("DELETE FROM tags WHERE key_id = ? AND tag_key = ?")
                .bind(key_id)
                .bind(tag_key)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn create_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO aliases (account, name, key_id, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&alias.account)
        .bind(&alias.name)
        .bind(&alias.key_id)
        .bind(alias.created_at_ms)
        .bind(alias.updated_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            write_err(
                e,
                || alias_label(&alias.account, &alias.name),
                || key_missing(&alias.key_id),
            )
        })?;
        Ok(())
    }

    async fn update_alias(
        &self,
        account: &str,
        name: &str,
        key_id: &str,
        updated_at_ms: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE aliases SET key_id = ?, updated_at_ms = ? WHERE account = ? AND name = ?",
        )
        .bind(key_id)
        .bind(updated_at_ms)
        .bind(account)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(|e| write_err(e, || alias_label(account, name), || key_missing(key_id)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(alias_label(account, name)));
        }
        Ok(())
    }

    async fn delete_alias(&self, account: &str, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM aliases WHERE account = ? AND name = ?")
            .bind(account)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(alias_label(account, name)));
        }
        Ok(())
    }

    async fn list_aliases(&self) -> Result<Vec<AliasRecord>, StoreError> {
        sqlx::query(
            "SELECT account, name, key_id, created_at_ms, updated_at_ms FROM aliases \
             ORDER BY account, name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .iter()
        .map(alias_from_row)
        .collect()
    }

    async fn load_lifecycles(&self) -> Result<Vec<KeyLifecycle>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {LIFECYCLE_COLUMNS} FROM key_lifecycle"))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(lifecycle_from_row).collect()
    }

    async fn put_lifecycle(&self, l: &KeyLifecycle) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        put_lifecycle_on(&mut conn, l).await
    }

    async fn list_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, version, rotated_at_ms, rotation_type FROM key_rotations \
             WHERE key_id = ? ORDER BY version",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(RotationEntry {
                    key_id: r.try_get("key_id").map_err(db_err)?,
                    version: get_u32(r, "version", key_id)?,
                    rotated_at_ms: r.try_get("rotated_at_ms").map_err(db_err)?,
                    rotation_type: r.try_get("rotation_type").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn begin_rotation(&self, version: &KeyVersion) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        require_key_on(&mut tx, &version.key_id).await?;
        insert_version_on(&mut tx, version).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn abort_rotation(&self, key_id: &str, version: u32) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM key_versions WHERE key_id = ? AND version = ? AND NOT EXISTS \
             (SELECT 1 FROM key_rotations WHERE key_id = ? AND version = ?)",
        )
        .bind(key_id)
        .bind(i64::from(version))
        .bind(key_id)
        .bind(i64::from(version))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn finish_rotation(
        &self,
        key: &KeyRecord,
        entry: &RotationEntry,
        l: &KeyLifecycle,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        update_key_on(&mut tx, key).await?;
        sqlx::query(
            "INSERT INTO key_rotations (key_id, version, rotated_at_ms, rotation_type) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&entry.key_id)
        .bind(i64::from(entry.version))
        .bind(entry.rotated_at_ms)
        .bind(&entry.rotation_type)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            write_err(
                e,
                || {
                    format!(
                        "rotation to version {} of key {}",
                        entry.version, entry.key_id
                    )
                },
                || key_missing(&entry.key_id),
            )
        })?;
        put_lifecycle_on(&mut tx, l).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn insert_import_token(&self, t: &ImportTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO import_tokens (token_sha256, key_id, wrapping_key_id, \
             wrapping_algorithm, wrapping_key_spec, created_at_ms, expires_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.token_sha256)
        .bind(&t.key_id)
        .bind(&t.wrapping_key_id)
        .bind(&t.wrapping_algorithm)
        .bind(&t.wrapping_key_spec)
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| write_err(e, || "import token".into(), || key_missing(&t.key_id)))?;
        Ok(())
    }

    async fn get_import_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ImportTokenRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM import_tokens WHERE token_sha256 = ?"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn delete_import_token(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM import_tokens WHERE token_sha256 = ?")
            .bind(token_sha256)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn list_import_tokens(&self) -> Result<Vec<ImportTokenRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM import_tokens ORDER BY expires_at_ms"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn finish_import(
        &self,
        key: &KeyRecord,
        version: Option<&KeyVersion>,
        l: &KeyLifecycle,
        token_sha256: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if let Some(v) = version {
            insert_version_on(&mut tx, v).await?;
        }
        update_key_on(&mut tx, key).await?;
        put_lifecycle_on(&mut tx, l).await?;
        sqlx::query("DELETE FROM import_tokens WHERE token_sha256 = ?")
            .bind(token_sha256)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn update_key_and_lifecycle(
        &self,
        key: &KeyRecord,
        l: &KeyLifecycle,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        update_key_on(&mut tx, key).await?;
        put_lifecycle_on(&mut tx, l).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn usage_tracking_start(&self, now_ms: i64) -> Result<i64, StoreError> {
        sqlx::query("INSERT OR IGNORE INTO key_usage_tracking (id, started_at_ms) VALUES (1, ?)")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        sqlx::query_scalar("SELECT started_at_ms FROM key_usage_tracking WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn load_key_usage(&self) -> Result<Vec<KeyUsageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, operation, used_at_ms, event_id, request_id FROM key_last_usage",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(usage_from_row).collect()
    }

    async fn put_key_usage(&self, rows: &[KeyUsageRecord]) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut written = 0;
        for u in rows {
            // Keys destroyed since the use was recorded are skipped, not an error.
            written += sqlx::query(
                "INSERT INTO key_last_usage (key_id, operation, used_at_ms, event_id, request_id) \
                 SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM keys WHERE key_id = ?) \
                 ON CONFLICT (key_id) DO UPDATE SET operation = excluded.operation, \
                 used_at_ms = excluded.used_at_ms, event_id = excluded.event_id, \
                 request_id = excluded.request_id",
            )
            .bind(&u.key_id)
            .bind(u.operation.as_str())
            .bind(u.used_at_ms)
            .bind(&u.event_id)
            .bind(&u.request_id)
            .bind(&u.key_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(written)
    }

    async fn insert_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError> {
        key_stores::insert(&self.pool, store).await
    }

    async fn update_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError> {
        key_stores::update(&self.pool, store).await
    }

    async fn delete_key_store(&self, store_id: &str) -> Result<(), StoreError> {
        key_stores::delete(&self.pool, store_id).await
    }

    async fn list_key_stores(&self) -> Result<Vec<KeyStoreRecord>, StoreError> {
        key_stores::list(&self.pool).await
    }

    async fn record_orphans(&self, orphans: &[OrphanRecord]) -> Result<(), StoreError> {
        key_stores::record_orphans(&self.pool, orphans).await
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError> {
        key_stores::list_orphans(&self.pool).await
    }
}

// Custom key stores (migration 0006).
mod key_stores;

/// Decodes one `key_last_usage` row.
fn usage_from_row(row: &SqliteRow) -> Result<KeyUsageRecord, StoreError> {
    let key_id: String = row.try_get("key_id").map_err(db_err)?;
    let op: String = row.try_get("operation").map_err(db_err)?;
    let operation = UsageOperation::parse(&op).ok_or_else(|| {
        StoreError::Corrupt(format!("key {key_id}: unknown last-usage operation {op:?}"))
    })?;
    Ok(KeyUsageRecord {
        operation,
        used_at_ms: row.try_get("used_at_ms").map_err(db_err)?,
        event_id: row.try_get("event_id").map_err(db_err)?,
        request_id: row.try_get("request_id").map_err(db_err)?,
        key_id,
    })
}

/// Decodes one `grants` row.
const LIFECYCLE_COLUMNS: &str = "key_id, rotation_enabled, rotation_period_days, \
     next_rotation_ms, on_demand_rotations, expiration_model, valid_to_ms, material_check, \
     material_present";

const TOKEN_COLUMNS: &str = "token_sha256, key_id, wrapping_key_id, wrapping_algorithm, \
     wrapping_key_spec, created_at_ms, expires_at_ms";

fn lifecycle_from_row(row: &SqliteRow) -> Result<KeyLifecycle, StoreError> {
    let key_id: String = row.try_get("key_id").map_err(db_err)?;
    Ok(KeyLifecycle {
        rotation_enabled: row.try_get::<i64, _>("rotation_enabled").map_err(db_err)? != 0,
        rotation_period_days: row.try_get("rotation_period_days").map_err(db_err)?,
        next_rotation_ms: row.try_get("next_rotation_ms").map_err(db_err)?,
        on_demand_rotations: get_u32(row, "on_demand_rotations", &key_id)?,
        expiration_model: row.try_get("expiration_model").map_err(db_err)?,
        valid_to_ms: row.try_get("valid_to_ms").map_err(db_err)?,
        material_check: row.try_get("material_check").map_err(db_err)?,
        material_present: row.try_get::<i64, _>("material_present").map_err(db_err)? != 0,
        key_id,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<ImportTokenRecord, StoreError> {
    Ok(ImportTokenRecord {
        token_sha256: row.try_get("token_sha256").map_err(db_err)?,
        key_id: row.try_get("key_id").map_err(db_err)?,
        wrapping_key_id: row.try_get("wrapping_key_id").map_err(db_err)?,
        wrapping_algorithm: row.try_get("wrapping_algorithm").map_err(db_err)?,
        wrapping_key_spec: row.try_get("wrapping_key_spec").map_err(db_err)?,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        expires_at_ms: row.try_get("expires_at_ms").map_err(db_err)?,
    })
}

async fn put_lifecycle_on(conn: &mut SqliteConnection, l: &KeyLifecycle) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT OR REPLACE INTO key_lifecycle ({LIFECYCLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&l.key_id)
    .bind(i64::from(l.rotation_enabled))
    .bind(l.rotation_period_days)
    .bind(l.next_rotation_ms)
    .bind(i64::from(l.on_demand_rotations))
    .bind(&l.expiration_model)
    .bind(l.valid_to_ms)
    .bind(&l.material_check)
    .bind(i64::from(l.material_present))
    .execute(&mut *conn)
    .await
    .map_err(|e| write_err(e, || format!("lifecycle of key {}", l.key_id), || key_missing(&l.key_id)))?;
    Ok(())
}

fn grant_from_row(row: &SqliteRow) -> Result<GrantRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("grant row: {what}"));
    let get_s = |c: &str| -> Result<String, StoreError> {
        row.try_get::<String, _>(c).map_err(|_| corrupt(c))
    };
    let get_o = |c: &str| -> Result<Option<String>, StoreError> {
        row.try_get::<Option<String>, _>(c).map_err(|_| corrupt(c))
    };
    let operations: Vec<String> =
        serde_json::from_str(&get_s("operations")?).map_err(|_| corrupt("operations"))?;
    let (constraint_equals, constraint_subset) = match get_o("constraints")? {
        None => (None, None),
        Some(text) => {
            #[derive(serde::Deserialize)]
            struct C {
                #[serde(rename = "EncryptionContextEquals")]
                equals: Option<BTreeMap<String, String>>,
                #[serde(rename = "EncryptionContextSubset")]
                subset: Option<BTreeMap<String, String>>,
            }
            let c: C = serde_json::from_str(&text).map_err(|_| corrupt("constraints"))?;
            (c.equals, c.subset)
        }
    };
    Ok(GrantRecord {
        grant_id: get_s("grant_id")?,
        key_id: get_s("key_id")?,
        name: get_o("name")?,
        grantee_principal: get_s("grantee_principal")?,
        retiring_principal: get_o("retiring_principal")?,
        operations,
        constraint_equals,
        constraint_subset,
        issuing_account: get_s("issuing_account")?,
        created_at_ms: row
            .try_get::<i64, _>("created_at_ms")
            .map_err(|_| corrupt("created_at_ms"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const ACCOUNT: &str = "111122223333";

    fn key_record(key_id: &str, state: KeyState) -> KeyRecord {
        KeyRecord {
            key_id: key_id.to_owned(),
            account: ACCOUNT.to_owned(),
            description: format!("key {key_id}"),
            key_spec: "SYMMETRIC_DEFAULT".to_owned(),
            key_usage: "ENCRYPT_DECRYPT".to_owned(),
            origin: "AWS_KMS".to_owned(),
            state,
            created_at_ms: 1_700_000_000_000,
            deletion_date_ms: None,
            pending_window_days: None,
            current_version: 1,
            policy: r#"{"Version":"2012-10-17","Statement":[]}"#.to_owned(),
            custom_key_store_id: None,
            xks_key_id: None,
            row_version: 1,
        }
    }

    fn version(key_id: &str, version: u32) -> KeyVersion {
        KeyVersion {
            key_id: key_id.to_owned(),
            version,
            created_at_ms: 1_700_000_000_000 + i64::from(version),
        }
    }

    fn tag(key: &str, value: &str) -> Tag {
        Tag {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    fn alias(account: &str, name: &str, key_id: &str) -> AliasRecord {
        AliasRecord {
            account: account.to_owned(),
            name: name.to_owned(),
            key_id: key_id.to_owned(),
            created_at_ms: 10,
            updated_at_ms: 10,
        }
    }

    async fn open_temp() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        (dir, store)
    }

    /// Inserts an `Enabled` key with version 1, through the two-phase path.
    async fn create_enabled(store: &SqliteStore, key_id: &str, tags: &[Tag]) -> KeyRecord {
        let creating = key_record(key_id, KeyState::Creating);
        store.insert_key(&creating, tags).await.unwrap();
        let enabled = KeyRecord {
            state: KeyState::Enabled,
            ..creating
        };
        store
            .add_version_and_update(&version(key_id, 1), &enabled)
            .await
            .unwrap();
        enabled
    }

    async fn count(store: &SqliteStore, sql: &str) -> i64 {
        sqlx::query(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get::<i64, _>(0)
    }

    #[tokio::test]
    async fn open_creates_nested_directory_and_sets_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("a").join("b");
        let store = SqliteStore::open(&data_dir).await.unwrap();
        assert!(data_dir.join(DB_FILE_NAME).is_file());
        let mut conn = store.pool().acquire().await.unwrap();
        let journal: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(journal.to_lowercase(), "wal");
        let synchronous: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(synchronous, 2, "FULL");
        let foreign_keys: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(foreign_keys, 1);
    }

    #[tokio::test]
    async fn get_key_absent_is_none() {
        let (_dir, store) = open_temp().await;
        assert!(store.get_key("nope").await.unwrap().is_none());
        assert!(store.load_all().await.unwrap().is_empty());
        assert!(store.list_aliases().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn two_phase_create_round_trip() {
        let (_dir, store) = open_temp().await;
        let id = "0b6f0c36-1b1c-4c8e-9f57-3d0a4e0c0001";
        let creating = key_record(id, KeyState::Creating);
        let tags = [tag("team", "payments"), tag("env", "prod")];
        store.insert_key(&creating, &tags).await.unwrap();

        let phase_one = store.get_key(id).await.unwrap().unwrap();
        assert_eq!(phase_one.key, creating);
        assert!(phase_one.versions.is_empty());
        assert_eq!(
            phase_one.tags,
            vec![tag("env", "prod"), tag("team", "payments")]
        );

        let enabled = KeyRecord {
            state: KeyState::Enabled,
            ..creating.clone()
        };
        store
            .add_version_and_update(&version(id, 1), &enabled)
            .await
            .unwrap();
        let phase_two = store.get_key(id).await.unwrap().unwrap();
        assert_eq!(phase_two.key, enabled);
        assert_eq!(phase_two.versions, vec![version(id, 1)]);
        assert_eq!(phase_two.tags, phase_one.tags);
        assert_eq!(store.load_all().await.unwrap(), vec![phase_two]);
    }

    #[tokio::test]
    async fn rotation_adds_versions_in_order() {
        let (_dir, store) = open_temp().await;
        let id = "k1";
        let mut key = create_enabled(&store, id, &[]).await;
        for v in 2..=3 {
            key.current_version = v;
            store
                .add_version_and_update(&version(id, v), &key)
                .await
                .unwrap();
        }
        let bundle = store.get_key(id).await.unwrap().unwrap();
        assert_eq!(bundle.key.current_version, 3);
        assert_eq!(
            bundle.versions,
            vec![version(id, 1), version(id, 2), version(id, 3)]
        );
    }

    #[tokio::test]
    async fn large_u32_version_round_trips() {
        let (_dir, store) = open_temp().await;
        let mut key = create_enabled(&store, "k1", &[]).await;
        key.current_version = u32::MAX;
        store
            .add_version_and_update(&version("k1", u32::MAX), &key)
            .await
            .unwrap();
        let bundle = store.get_key("k1").await.unwrap().unwrap();
        assert_eq!(bundle.key.current_version, u32::MAX);
        assert_eq!(bundle.versions.last().unwrap().version, u32::MAX);
    }

    #[tokio::test]
    async fn update_key_overwrites_mutable_columns_only() {
        let (_dir, store) = open_temp().await;
        let original = create_enabled(&store, "k1", &[]).await;
        let changed = KeyRecord {
            state: KeyState::PendingDeletion,
            description: "retiring".to_owned(),
            deletion_date_ms: Some(1_800_000_000_000),
            pending_window_days: Some(7),
            current_version: 1,
            policy: r#"{"Statement":[{"Effect":"Deny"}]}"#.to_owned(),
            // Immutable columns: ignored by update_key.
            account: "999999999999".to_owned(),
            key_spec: "RSA_2048".to_owned(),
            created_at_ms: 5,
            ..original.clone()
        };
        store.update_key(&changed).await.unwrap();
        let stored = store.get_key("k1").await.unwrap().unwrap().key;
        let expected = KeyRecord {
            account: original.account.clone(),
            key_spec: original.key_spec.clone(),
            created_at_ms: original.created_at_ms,
            ..changed.clone()
        };
        assert_eq!(stored, expected);

        // And back (CancelKeyDeletion clears the dates).
        let cancelled = KeyRecord {
            state: KeyState::Disabled,
            deletion_date_ms: None,
            pending_window_days: None,
            ..expected
        };
        store.update_key(&cancelled).await.unwrap();
        assert_eq!(store.get_key("k1").await.unwrap().unwrap().key, cancelled);
    }

    #[tokio::test]
    async fn every_state_round_trips() {
        let (_dir, store) = open_temp().await;
        let mut key = create_enabled(&store, "k1", &[]).await;
        for state in [
            KeyState::Creating,
            KeyState::Enabled,
            KeyState::Disabled,
            KeyState::PendingDeletion,
            KeyState::PendingImport,
            KeyState::Unavailable,
        ] {
            key.state = state;
            store.update_key(&key).await.unwrap();
            assert_eq!(store.get_key("k1").await.unwrap().unwrap().key.state, state);
        }
    }

    #[tokio::test]
    async fn duplicate_key_id_is_already_exists_and_changes_nothing() {
        let (_dir, store) = open_temp().await;
        let original = create_enabled(&store, "k1", &[tag("a", "1")]).await;
        let dup = KeyRecord {
            description: "other".to_owned(),
            ..key_record("k1", KeyState::Creating)
        };
        let err = store
            .insert_key(&dup, &[tag("a", "2"), tag("b", "2")])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
        let bundle = store.get_key("k1").await.unwrap().unwrap();
        assert_eq!(bundle.key, original);
        assert_eq!(bundle.tags, vec![tag("a", "1")]);
    }

    #[tokio::test]
    async fn duplicate_version_is_already_exists_and_keeps_key_row() {
        let (_dir, store) = open_temp().await;
        let original = create_enabled(&store, "k1", &[]).await;
        let changed = KeyRecord {
            state: KeyState::Disabled,
            ..original.clone()
        };
        let err = store
            .add_version_and_update(&version("k1", 1), &changed)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
        assert_eq!(store.get_key("k1").await.unwrap().unwrap().key, original);
    }

    #[tokio::test]
    async fn mismatched_version_and_key_change_nothing() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[]).await;
        let k2 = create_enabled(&store, "k2", &[]).await;
        let err = store
            .add_version_and_update(
                &version("k1", 2),
                &KeyRecord {
                    current_version: 2,
                    ..k2
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM key_versions").await, 2);
    }

    #[tokio::test]
    async fn missing_rows_are_not_found() {
        let (_dir, store) = open_temp().await;
        let ghost = key_record("ghost", KeyState::Enabled);
        let not_found = |r: Result<(), StoreError>| {
            assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
        };
        not_found(store.update_key(&ghost).await);
        not_found(
            store
                .add_version_and_update(&version("ghost", 1), &ghost)
                .await,
        );
        not_found(store.delete_key("ghost").await);
        not_found(store.put_tags("ghost", &[tag("a", "1")]).await);
        not_found(store.remove_tags("ghost", &["a".to_owned()]).await);
        not_found(
            store
                .create_alias(&alias(ACCOUNT, "alias/x", "ghost"))
                .await,
        );
        not_found(store.update_alias(ACCOUNT, "alias/x", "ghost", 1).await);
        not_found(store.delete_alias(ACCOUNT, "alias/x").await);

        // An existing alias pointed at a missing key.
        create_enabled(&store, "k1", &[]).await;
        store
            .create_alias(&alias(ACCOUNT, "alias/x", "k1"))
            .await
            .unwrap();
        not_found(store.update_alias(ACCOUNT, "alias/x", "ghost", 2).await);
        assert_eq!(store.list_aliases().await.unwrap()[0].key_id, "k1");

        // Nothing was left behind by the failed writes.
        assert_eq!(count(&store, "SELECT COUNT(*) FROM key_versions").await, 1);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM tags").await, 0);
    }

    #[tokio::test]
    async fn alias_round_trip() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[]).await;
        create_enabled(&store, "k2", &[]).await;
        let a = alias(ACCOUNT, "alias/zeta", "k1");
        let b = alias(ACCOUNT, "alias/alpha", "k1");
        let c = alias("000000000001", "alias/zeta", "k2");
        for x in [&a, &b, &c] {
            store.create_alias(x).await.unwrap();
        }
        assert_eq!(
            store.list_aliases().await.unwrap(),
            vec![c.clone(), b.clone(), a.clone()]
        );

        store
            .update_alias(ACCOUNT, "alias/zeta", "k2", 99)
            .await
            .unwrap();
        let updated = AliasRecord {
            key_id: "k2".to_owned(),
            updated_at_ms: 99,
            ..a.clone()
        };
        assert_eq!(
            store.list_aliases().await.unwrap(),
            vec![c.clone(), b.clone(), updated]
        );

        store.delete_alias(ACCOUNT, "alias/zeta").await.unwrap();
        assert_eq!(store.list_aliases().await.unwrap(), vec![c, b]);
    }

    #[tokio::test]
    async fn duplicate_alias_is_already_exists() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[]).await;
        create_enabled(&store, "k2", &[]).await;
        store
            .create_alias(&alias(ACCOUNT, "alias/app", "k1"))
            .await
            .unwrap();
        let err = store
            .create_alias(&alias(ACCOUNT, "alias/app", "k2"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
        let aliases = store.list_aliases().await.unwrap();
        assert_eq!(aliases.len(), 1);
        assert_eq!(aliases[0].key_id, "k1");
    }

    #[tokio::test]
    async fn grants_round_trip_and_go_with_their_key() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[]).await;
        let mut eq = BTreeMap::new();
        eq.insert("a".to_string(), "1".to_string());
        let g = GrantRecord {
            grant_id: "g1".into(),
            key_id: "k1".into(),
            name: Some("n".into()),
            grantee_principal: "arn:aws:iam::111122223333:user/u".into(),
            retiring_principal: None,
            operations: vec!["Decrypt".into(), "Encrypt".into()],
            constraint_equals: None,
            constraint_subset: Some(eq),
            issuing_account: "111122223333".into(),
            created_at_ms: 5,
        };
        store.insert_grant(&g).await.unwrap();
        assert!(matches!(
            store.insert_grant(&g).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let mut orphan = g.clone();
        orphan.grant_id = "g2".into();
        orphan.key_id = "nope".into();
        assert!(matches!(
            store.insert_grant(&orphan).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.list_grants().await.unwrap(), vec![g.clone()]);
        store.destroy_key("k1", 9).await.unwrap();
        assert!(store.list_grants().await.unwrap().is_empty());
        assert_eq!(
            store.deleted_key_ids().await.unwrap(),
            vec!["k1".to_string()]
        );
        assert!(matches!(
            store.delete_grant("g1").await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn delete_key_cascades_to_versions_tags_and_aliases() {
        let (_dir, store) = open_temp().await;
        let mut doomed = create_enabled(&store, "k1", &[tag("a", "1"), tag("b", "2")]).await;
        doomed.current_version = 2;
        store
            .add_version_and_update(&version("k1", 2), &doomed)
            .await
            .unwrap();
        let kept = create_enabled(&store, "k2", &[tag("a", "1")]).await;
        store
            .create_alias(&alias(ACCOUNT, "alias/one", "k1"))
            .await
            .unwrap();
        store
            .create_alias(&alias(ACCOUNT, "alias/two", "k1"))
            .await
            .unwrap();
        store
            .create_alias(&alias(ACCOUNT, "alias/kept", "k2"))
            .await
            .unwrap();

        store.delete_key("k1").await.unwrap();

        assert!(store.get_key("k1").await.unwrap().is_none());
        for table in ["key_versions", "tags", "aliases"] {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE key_id = 'k1'");
            assert_eq!(count(&store, &sql).await, 0, "{table}");
        }
        let all = store.load_all().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].key, kept);
        assert_eq!(all[0].versions, vec![version("k2", 1)]);
        assert_eq!(all[0].tags, vec![tag("a", "1")]);
        assert_eq!(
            store.list_aliases().await.unwrap(),
            vec![alias(ACCOUNT, "alias/kept", "k2")]
        );
        let err = store.delete_key("k1").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn foreign_key_cascade_alone_also_cleans_up() {
        // The schema's ON DELETE CASCADE, independent of delete_key's explicit deletes.
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[tag("a", "1")]).await;
        store
            .create_alias(&alias(ACCOUNT, "alias/one", "k1"))
            .await
            .unwrap();
        sqlx::query("DELETE FROM keys WHERE key_id = 'k1'")
            .execute(store.pool())
            .await
            .unwrap();
        for table in ["key_versions", "tags", "aliases"] {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            assert_eq!(count(&store, &sql).await, 0, "{table}");
        }
    }

    #[tokio::test]
    async fn put_tags_overwrites_same_key_and_adds_new() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[tag("env", "dev"), tag("team", "a")]).await;
        store
            .put_tags("k1", &[tag("env", "prod"), tag("cost", "42")])
            .await
            .unwrap();
        assert_eq!(
            store.get_key("k1").await.unwrap().unwrap().tags,
            vec![tag("cost", "42"), tag("env", "prod"), tag("team", "a")]
        );
        // The same tag key twice in one call: the last one wins.
        store
            .put_tags("k1", &[tag("env", "x"), tag("env", "y")])
            .await
            .unwrap();
        let tags = store.get_key("k1").await.unwrap().unwrap().tags;
        assert_eq!(tags[1], tag("env", "y"));
        assert_eq!(tags.len(), 3);
    }

    #[tokio::test]
    async fn insert_key_with_repeated_tag_key_keeps_last() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[tag("env", "x"), tag("env", "y")]).await;
        assert_eq!(
            store.get_key("k1").await.unwrap().unwrap().tags,
            vec![tag("env", "y")]
        );
    }

    #[tokio::test]
    async fn remove_tags_ignores_absent_keys() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[tag("a", "1"), tag("b", "2"), tag("c", "3")]).await;
        create_enabled(&store, "k2", &[tag("a", "1")]).await;
        store
            .remove_tags("k1", &["a".to_owned(), "zzz".to_owned(), "c".to_owned()])
            .await
            .unwrap();
        store.remove_tags("k1", &[]).await.unwrap();
        store.remove_tags("k1", &["a".to_owned()]).await.unwrap();
        assert_eq!(
            store.get_key("k1").await.unwrap().unwrap().tags,
            vec![tag("b", "2")]
        );
        assert_eq!(
            store.get_key("k2").await.unwrap().unwrap().tags,
            vec![tag("a", "1")]
        );
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let mut key = create_enabled(&store, "k1", &[tag("a", "1")]).await;
        key.current_version = 2;
        store
            .add_version_and_update(&version("k1", 2), &key)
            .await
            .unwrap();
        store
            .insert_key(&key_record("k2", KeyState::Creating), &[])
            .await
            .unwrap();
        store
            .create_alias(&alias(ACCOUNT, "alias/a", "k1"))
            .await
            .unwrap();
        let keys_before = store.load_all().await.unwrap();
        let aliases_before = store.list_aliases().await.unwrap();
        store.pool().close().await;
        drop(store);

        let store = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(store.load_all().await.unwrap(), keys_before);
        assert_eq!(store.list_aliases().await.unwrap(), aliases_before);

        // Running the migrations again changes nothing.
        let recorded = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1";
        assert_eq!(count(&store, recorded).await, MIGRATIONS.len() as i64);
        run_migrations(store.pool()).await.unwrap();
        assert_eq!(count(&store, recorded).await, MIGRATIONS.len() as i64);
        assert_eq!(store.load_all().await.unwrap(), keys_before);
    }

    #[tokio::test]
    async fn edited_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1")
            .execute(store.pool())
            .await
            .unwrap();
        store.pool().close().await;
        let err = SqliteStore::open(dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    }

    #[tokio::test]
    async fn corrupt_state_is_reported_not_panicked() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[]).await;
        sqlx::query("UPDATE keys SET state = 'Melted' WHERE key_id = 'k1'")
            .execute(store.pool())
            .await
            .unwrap();
        let err = store.get_key("k1").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let err = store.load_all().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[tokio::test]
    async fn corrupt_numbers_are_reported_not_panicked() {
        for sql in [
            "UPDATE key_versions SET version = -1 WHERE key_id = 'k1'",
            "UPDATE keys SET current_version = 4294967296 WHERE key_id = 'k1'",
            "UPDATE keys SET pending_window_days = 9999999999 WHERE key_id = 'k1'",
            "UPDATE keys SET created_at_ms = 'yesterday' WHERE key_id = 'k1'",
        ] {
            let (_dir, store) = open_temp().await;
            create_enabled(&store, "k1", &[]).await;
            sqlx::query(sql).execute(store.pool()).await.unwrap();
            let err = store.get_key("k1").await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
            let err = store.load_all().await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_writers_do_not_fail_with_busy() {
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[]).await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let key = format!("t{t}-{i}");
                    store.put_tags("k1", &[tag(&key, "v")]).await?;
                    store.get_key("k1").await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.get_key("k1").await.unwrap().unwrap().tags.len(), 80);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_all_with_2000_keys() {
        const N: u32 = 2000;
        let (_dir, store) = open_temp().await;
        let key_id = |n: u32| format!("{n:08x}-0000-4000-8000-{:012x}", n * 31);

        // Seeded in one transaction (2,000 fsyncs would only test the disk), in scrambled order,
        // versions and tags in reverse order, through the same helpers the store uses.
        let mut expected = Vec::new();
        let mut tx = store.write_tx().await.unwrap();
        for i in 0..N {
            let n = (i * 7919) % N; // 7919 is prime and coprime with N: a permutation.
            let id = key_id(n);
            let mut key = key_record(&id, KeyState::Enabled);
            key.current_version = n % 3 + 1;
            key.description = format!("key number {n}");
            let versions: Vec<KeyVersion> =
                (1..=key.current_version).map(|v| version(&id, v)).collect();
            let tags: Vec<Tag> = (0..n % 4)
                .map(|t| tag(&format!("tag{t}"), &format!("{n}-{t}")))
                .collect();
            let reversed_tags: Vec<Tag> = tags.iter().rev().cloned().collect();
            insert_key_on(&mut tx, &key, &reversed_tags).await.unwrap();
            for v in versions.iter().rev() {
                insert_version_on(&mut tx, v).await.unwrap();
            }
            expected.push(KeyBundle {
                key,
                versions,
                tags,
            });
        }
        tx.commit().await.unwrap();
        expected.sort_by(|a, b| a.key.key_id.cmp(&b.key.key_id));

        let loaded = store.load_all().await.unwrap();
        assert_eq!(loaded.len(), N as usize);
        assert_eq!(loaded, expected);
        for n in [0, 1, 999, N - 1] {
            let one = store.get_key(&key_id(n)).await.unwrap().unwrap();
            assert!(loaded.contains(&one));
        }
    }

    #[tokio::test]
    async fn key_usage_is_replaced_in_batches_and_skips_deleted_keys() {
        let (_dir, store) = open_temp().await;
        let a = "11111111-1111-4111-8111-111111111111";
        let gone = "22222222-2222-4222-8222-222222222222";
        create_enabled(&store, a, &[]).await;
        let use_of = |key_id: &str, op, at| KeyUsageRecord {
            key_id: key_id.to_owned(),
            operation: op,
            used_at_ms: at,
            event_id: format!("event-{at}"),
            request_id: format!("request-{at}"),
        };
        let batch = [
            use_of(a, UsageOperation::Encrypt, 1),
            use_of(gone, UsageOperation::Sign, 2),
        ];
        assert_eq!(store.put_key_usage(&batch).await.unwrap(), 1);
        let later = [use_of(a, UsageOperation::Decrypt, 3)];
        assert_eq!(store.put_key_usage(&later).await.unwrap(), 1);
        assert_eq!(store.load_key_usage().await.unwrap(), later.to_vec());
        store.delete_key(a).await.unwrap();
        assert!(store.load_key_usage().await.unwrap().is_empty());
        // Tracking starts once; later calls return the first time.
        assert_eq!(store.usage_tracking_start(100).await.unwrap(), 100);
        assert_eq!(store.usage_tracking_start(200).await.unwrap(), 100);
    }
}
