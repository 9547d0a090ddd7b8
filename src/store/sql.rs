//! The SQL metadata store: one implementation over sqlx's `Any` driver, for SQLite (embedded,
//! the default: one file `p11kms.db` in the data directory) and PostgreSQL (shared by several
//! nodes). One read has a second path: on SQLite, the start-up load of every key goes through
//! a bulk reader of its own ([`bulk`]), which runs the same queries and row decoders
//! ([`Columns`]) a few times faster than sqlx's driver.
//!
//! Every statement is written once, with `$N` placeholders (SQLite accepts them too). The
//! dialects differ only in three places: the migration directories (`migrations/sqlite/` and
//! `migrations/postgres/`, same version numbers and meaning), the statement that begins a
//! write transaction (`BEGIN IMMEDIATE` on SQLite, which takes the write lock up front so a
//! transaction never has to upgrade a read lock; plain `BEGIN` on PostgreSQL), and connection
//! set-up (on SQLite each new connection sets WAL, `synchronous = FULL`, foreign keys and a
//! busy timeout). Integers are read as 64-bit values and flags as 0/1 integers, which both
//! backends decode alike through `Any`.
//!
//! Migrations are compiled into the binary and run at start-up; sqlx records each one with its
//! checksum in `_sqlx_migrations`, so an edited migration or a database written by a newer
//! binary is refused instead of misread. On PostgreSQL sqlx's migrator itself holds
//! `pg_advisory_lock` (keyed on the database name) while it checks and applies migrations
//! (sqlx-postgres `migrate.rs`, `lock`), so nodes starting together on an empty database do
//! not race: the second waits, then finds everything applied.
//!
//! Every write appends one or more rows to `change_log` in its own transaction (see
//! [`super::ChangeKind`]); on PostgreSQL a trigger on that table NOTIFYs `p11kms_changes`,
//! delivered at commit.

use super::{
    AliasRecord, Backend, BlobRow, Change, ChangeKind, Duty, GrantRecord, ImportTokenRecord,
    ImportedVersion, KeyBundle, KeyLifecycle, KeyRecord, KeyShape, KeyStoreRecord, KeyUsageRecord,
    KeyVersion, LeaderGuard, MetadataStore, MultiRegion, OrphanRecord, RotationEntry,
    SessionRecord, StoreError, StoreInfo, StoredBlob, Tag, UsageOperation, VersionShape,
};
use crate::wire_enum::WireEnum;
use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Executor, Row, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;
use zeroize::Zeroizing;

mod bulk;
mod cluster;
mod key_stores;

/// File name of the SQLite database inside the data directory.
pub const DB_FILE_NAME: &str = "p11kms.db";

const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// How long a request waits for a pooled connection before the store answers `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same on PostgreSQL, shorter: while the server cannot be reached the pool retries the
/// connection until then, and a change should be refused (DependencyTimeoutException) soon
/// enough for the caller's own retry, not after its SDK has given up.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(4);

/// Set on every new SQLite connection.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
];

/// One embedded migration: (version, description, SQL).
type Embedded = (i64, &'static str, &'static str);

/// The SQLite migrations, in version order. Append only: never edit or renumber a released
/// entry, sqlx checks the checksums.
const SQLITE_MIGRATIONS: &[Embedded] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "deleted keys",
        include_str!("../../migrations/sqlite/0002_deleted_keys.sql"),
    ),
    (
        3,
        "grants",
        include_str!("../../migrations/sqlite/0003_grants.sql"),
    ),
    (
        4,
        "rotation import",
        include_str!("../../migrations/sqlite/0004_rotation_import.sql"),
    ),
    (
        5,
        "key last usage",
        include_str!("../../migrations/sqlite/0005_key_last_usage.sql"),
    ),
    (
        6,
        "custom key stores",
        include_str!("../../migrations/sqlite/0006_custom_key_stores.sql"),
    ),
    (
        7,
        "external key stores",
        include_str!("../../migrations/sqlite/0007_external_key_stores.sql"),
    ),
    (
        8,
        "cluster",
        include_str!("../../migrations/sqlite/0008_cluster.sql"),
    ),
    (
        9,
        "wrapped keys",
        include_str!("../../migrations/sqlite/0009_wrapped_keys.sql"),
    ),
    (
        10,
        "multi region",
        include_str!("../../migrations/sqlite/0010_multi_region.sql"),
    ),
];

/// The PostgreSQL migrations: the same versions with the same meaning as SQLite's.
const POSTGRES_MIGRATIONS: &[Embedded] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "deleted keys",
        include_str!("../../migrations/postgres/0002_deleted_keys.sql"),
    ),
    (
        3,
        "grants",
        include_str!("../../migrations/postgres/0003_grants.sql"),
    ),
    (
        4,
        "rotation import",
        include_str!("../../migrations/postgres/0004_rotation_import.sql"),
    ),
    (
        5,
        "key last usage",
        include_str!("../../migrations/postgres/0005_key_last_usage.sql"),
    ),
    (
        6,
        "custom key stores",
        include_str!("../../migrations/postgres/0006_custom_key_stores.sql"),
    ),
    (
        7,
        "external key stores",
        include_str!("../../migrations/postgres/0007_external_key_stores.sql"),
    ),
    (
        8,
        "cluster",
        include_str!("../../migrations/postgres/0008_cluster.sql"),
    ),
    (
        9,
        "wrapped keys",
        include_str!("../../migrations/postgres/0009_wrapped_keys.sql"),
    ),
    (
        10,
        "multi region",
        include_str!("../../migrations/postgres/0010_multi_region.sql"),
    ),
];

/// The column list every key version query selects ([`version_from_row`]).
const VERSION_COLUMNS: &str =
    "key_id, version, created_at_ms, wrapped_blob, wrap_master, public_key";

/// The column list every key query selects, in [`key_from_row`]'s order.
const KEY_COLUMNS: &str = "key_id, account, description, key_spec, key_usage, origin, state, \
     created_at_ms, deletion_date_ms, pending_window_days, current_version, policy, \
     custom_key_store_id, xks_key_id, row_version, mr_primary_region, mr_replica_regions";

/// Key-usage rows per upsert statement: a flush after a busy interval on a store of many keys
/// writes one row per key used, and one statement per row made that a burst of round trips
/// (issue 19's 100,000 keys: about 7 µs of store-thread CPU per request). Five parameters a
/// row stay far below SQLite's 32,766 and PostgreSQL's 65,535 bound parameters.
const USAGE_ROWS_PER_STATEMENT: usize = 256;

/// The last of each key's rows, in their order: one upsert may not touch a row twice.
fn last_use_per_key(rows: &[KeyUsageRecord]) -> Vec<&KeyUsageRecord> {
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<_> = rows
        .iter()
        .rev()
        .filter(|u| seen.insert(u.key_id.as_str()))
        .collect();
    last.reverse();
    last
}

/// The upsert of `n` key-usage rows. Rows of keys destroyed since the use was recorded are
/// skipped, not an error. The rows name distinct keys ([`last_use_per_key`]).
fn usage_upsert_sql(n: usize) -> String {
    let values = (0..n)
        .map(|i| {
            let p = 5 * i;
            format!(
                "(${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO key_last_usage (key_id, operation, used_at_ms, event_id, request_id) \
         SELECT v.column1, v.column2, v.column3, v.column4, v.column5 FROM (VALUES {values}) AS v \
         WHERE EXISTS (SELECT 1 FROM keys WHERE keys.key_id = v.column1) \
         ON CONFLICT (key_id) DO UPDATE SET operation = excluded.operation, \
         used_at_ms = excluded.used_at_ms, event_id = excluded.event_id, \
         request_id = excluded.request_id"
    )
}

/// TLS towards PostgreSQL (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP (a loopback or otherwise protected network only).
    Disable,
    /// TLS, server certificate not verified.
    Require,
    /// TLS, certificate verified against `ca_file` and the host name.
    VerifyFull,
}

/// How to reach PostgreSQL. The URL carries no password; it is given apart, held in zeroizing
/// memory, and never printed.
pub struct PgSettings {
    /// `postgres://user@host:port/database` (query parameters allowed, no password).
    pub url: String,
    /// The role's password, if the server asks for one.
    pub password: Option<Zeroizing<String>>,
    /// Connections in the pool.
    pub pool_size: u32,
    /// TLS mode.
    pub tls: PgTls,
    /// CA certificate (PEM) for `verify-full`.
    pub ca_file: Option<PathBuf>,
}

crate::redact::redacted_debug!(PgSettings {
    url,
    pool_size,
    tls,
    ca_file,
    password: redacted,
});

/// [`MetadataStore`] on SQLite or PostgreSQL through sqlx's `Any` driver.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL only: the full connection URL (with the password) for the LISTEN task and
    /// leader connections.
    pg_url: Option<std::sync::Arc<Zeroizing<String>>>,
    /// The change waker, made by the first `subscribe_changes` (PostgreSQL only).
    changes: std::sync::Arc<OnceLock<std::sync::Arc<tokio::sync::watch::Sender<i64>>>>,
    /// SQLite only: the database file, which the bulk reader ([`bulk`]) opens for the
    /// start-up load.
    sqlite_file: Option<PathBuf>,
}

crate::redact::redacted_debug!(SqlStore { backend, .. });

impl SqlStore {
    /// Opens (creating if needed) `data_dir/p11kms.db` and runs pending migrations.
    pub async fn open_sqlite(data_dir: &Path) -> Result<SqlStore, StoreError> {
        tokio::fs::create_dir_all(data_dir).await.map_err(|e| {
            StoreError::Database(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let file = data_dir.join(DB_FILE_NAME);
        let url = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .to_url_lossy();
        let pool = AnyPoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    for pragma in SQLITE_PRAGMAS {
                        conn.execute(*pragma).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(any_options(url.as_str())?)
            .await
            .map_err(db_err)?;
        let mut store = Self::finish_open(pool, Backend::Sqlite, None).await?;
        store.sqlite_file = Some(file);
        Ok(store)
    }

    /// Connects to PostgreSQL and runs pending migrations (under sqlx's advisory lock).
    pub async fn open_postgres(settings: &PgSettings) -> Result<SqlStore, StoreError> {
        let url = pg_url(settings)?;
        let pool = AnyPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(any_options(&url)?)
            .await
            .map_err(db_err)?;
        Self::finish_open(pool, Backend::Postgres, Some(url)).await
    }

    async fn finish_open(
        pool: AnyPool,
        backend: Backend,
        pg_url: Option<Zeroizing<String>>,
    ) -> Result<SqlStore, StoreError> {
        if let Err(e) = run_migrations(&pool, backend).await {
            pool.close().await;
            return Err(e);
        }
        Ok(SqlStore {
            pool,
            backend,
            pg_url: pg_url.map(std::sync::Arc::new),
            changes: std::sync::Arc::default(),
            sqlite_file: None,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying connection pool (tests and maintenance).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool (waits for connections in use to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite (the write lock from the first
    /// statement), a plain `BEGIN` on PostgreSQL (row locks and the CAS do the rest).
    async fn write_tx(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(db_err)
    }
}

/// Test support: applies only the first `upto` PostgreSQL migrations (a database as an older
/// binary left it), then disconnects. Not for production use.
#[doc(hidden)]
pub async fn migrate_postgres_to(settings: &PgSettings, upto: usize) -> Result<(), StoreError> {
    let url = pg_url(settings)?;
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect_with(any_options(&url)?)
        .await
        .map_err(db_err)?;
    let known = &POSTGRES_MIGRATIONS[..upto.min(POSTGRES_MIGRATIONS.len())];
    let result = Migrator::new(EmbeddedMigrations(known))
        .await
        .map_err(|e| StoreError::Database(format!("migration: {e}")))?
        .run(&pool)
        .await
        .map_err(|e| StoreError::Database(format!("migration: {e}")));
    pool.close().await;
    result
}

/// Installs sqlx's drivers (once per process) and parses `url` for the `Any` driver.
fn any_options(url: &str) -> Result<AnyConnectOptions, StoreError> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(sqlx::any::install_default_drivers);
    url.parse::<AnyConnectOptions>()
        .map(|o| o.disable_statement_logging())
        .map_err(|e| StoreError::Database(format!("store URL: {}", redact_url_error(&e))))
}

/// An sqlx error about a URL, without echoing the URL (it may hold the password).
fn redact_url_error(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "invalid connection URL",
        _ => "cannot parse the connection URL",
    }
}

/// The full PostgreSQL URL: the configured one with the password and TLS parameters added.
fn pg_url(s: &PgSettings) -> Result<Zeroizing<String>, StoreError> {
    let bad = |m: &str| StoreError::Database(format!("store.url: {m}"));
    let mut url = url::Url::parse(&s.url).map_err(|_| bad("not a URL"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad("the scheme must be postgres://"));
    }
    if url.password().is_some() {
        return Err(bad(
            "must not carry a password (use password_file or password_env)",
        ));
    }
    if let Some(p) = &s.password {
        url.set_password(Some(p.as_str()))
            .map_err(|_| bad("cannot carry a password (no user name?)"))?;
    }
    let mode = match s.tls {
        PgTls::Disable => "disable",
        PgTls::Require => "require",
        PgTls::VerifyFull => "verify-full",
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("sslmode", mode);
        if let Some(ca) = &s.ca_file {
            q.append_pair("sslrootcert", &ca.to_string_lossy());
        }
    }
    Ok(Zeroizing::new(String::from(url)))
}

/// The embedded migrations of one dialect as a sqlx migration source.
#[derive(Debug)]
struct EmbeddedMigrations(&'static [Embedded]);

type ResolveFuture = Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send>>;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> ResolveFuture {
        Box::pin(async move {
            Ok(self
                .0
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

/// The migrations this binary knows for `backend`.
fn migrations_of(backend: Backend) -> &'static [Embedded] {
    match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    }
}

/// Applies every embedded migration not yet recorded; a no-op on an up-to-date database.
async fn run_migrations(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let migrator = Migrator::new(EmbeddedMigrations(migrations_of(backend)))
        .await
        .map_err(|e| StoreError::Database(format!("migration: {e}")))?;
    migrator.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(inner) => match db_err(inner) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Database(format!("migration: {other}")),
        },
        other => StoreError::Database(format!("migration: {other}")),
    })
}

/// The one mapping from an sqlx error to a [`StoreError`] kind (writes add constraint
/// meanings in [`write_err`]). A lost or refused connection, a pool that timed out or was
/// closed, and PostgreSQL's connection (`08xxx`) and shutdown (`57P01`-`57P03`) SQLSTATEs are
/// `Unavailable`; undecodable values are `Corrupt`; the rest is `Database`. sqlx's messages
/// carry the database's error text, never bound parameters.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) if d.code().as_deref().is_some_and(is_unavailable_code) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}

/// PostgreSQL SQLSTATEs that mean "the server is not there for you right now".
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
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

/// Unix milliseconds now (the change log's time, used only for pruning).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Appends one change to the log on `conn` (the caller's transaction).
async fn log_change(
    conn: &mut AnyConnection,
    kind: ChangeKind,
    id: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO change_log (at_ms, kind, id) VALUES ($1, $2, $3)")
        .bind(now_ms())
        .bind(kind.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The change-log id of an alias.
fn alias_change_id(account: &str, name: &str) -> String {
    format!("{account}/{name}")
}

/// Logs the removal of a key: the key itself and every alias that pointed at it (their rows
/// go with it). Called before the rows are deleted.
async fn log_key_removal(conn: &mut AnyConnection, key_id: &str) -> Result<(), StoreError> {
    let aliases: Vec<(String, String)> = sqlx::query_as(
        "SELECT account, name FROM aliases WHERE key_id = $1 ORDER BY account, name",
    )
    .bind(key_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    log_change(conn, ChangeKind::Key, key_id).await?;
    for (account, name) in aliases {
        log_change(conn, ChangeKind::Alias, &alias_change_id(&account, &name)).await?;
    }
    Ok(())
}

fn key_missing(key_id: &str) -> String {
    format!("key {key_id}")
}

fn alias_label(account: &str, name: &str) -> String {
    format!("alias {name} in account {account}")
}

/// One result row read by column name: sqlx's `AnyRow`, or a row of the SQLite bulk reader
/// ([`bulk`]). The key, version and tag decoders are written once against it.
trait Columns {
    /// The value of `column`; a missing column or a value of another type is an error.
    fn col<T: ColumnValue>(&self, column: &str) -> Result<T, StoreError>;
}

/// A column type both readers decode (text, integers, blobs and their NULLable forms).
trait ColumnValue: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + rusqlite::types::FromSql {}

impl<T> ColumnValue for T where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + rusqlite::types::FromSql
{
}

impl Columns for AnyRow {
    fn col<T: ColumnValue>(&self, column: &str) -> Result<T, StoreError> {
        self.try_get(column).map_err(db_err)
    }
}

/// Reads an INTEGER column as a u32, `Corrupt` if it is out of range.
fn get_u32<R: Columns>(row: &R, column: &str, key_id: &str) -> Result<u32, StoreError> {
    let raw: i64 = row.col(column)?;
    u32::try_from(raw).map_err(|_| {
        StoreError::Corrupt(format!("key {key_id}: {column} {raw} is not a valid u32"))
    })
}

/// Keys loaded per page by `load_all` (small in unit tests, so that their 2,000 keys cross
/// several pages).
const LOAD_PAGE: i64 = if cfg!(test) { 500 } else { 5000 };

/// The keys after `after` (by key id, at most [`LOAD_PAGE`]) with their versions and tags,
/// each list sorted.
async fn load_page(
    tx: &mut Transaction<'static, Any>,
    after: &str,
) -> Result<Vec<KeyBundle>, StoreError> {
    let [keys_sql, versions_sql, tags_sql] = page_queries();
    let key_rows = page_rows(tx, &keys_sql, after).await?;
    let keys: Vec<KeyRecord> = key_rows
        .iter()
        .map(key_from_row)
        .collect::<Result<_, _>>()?;
    drop(key_rows);
    let Some(last) = keys.last().map(|k| k.key_id.clone()) else {
        return Ok(Vec::new());
    };
    let version_rows = range_rows(tx, &versions_sql, after, &last).await?;
    let versions = version_rows
        .iter()
        .map(version_from_row)
        .collect::<Result<_, _>>()?;
    let tag_rows = range_rows(tx, &tags_sql, after, &last).await?;
    let tags = tag_rows
        .iter()
        .map(tag_from_row)
        .collect::<Result<_, _>>()?;
    Ok(assemble(keys, versions, tags))
}

/// The rows of a page's key query `sql`: the keys after `after` (`$1`), at most
/// [`LOAD_PAGE`] (`$2`).
async fn page_rows(
    tx: &mut Transaction<'static, Any>,
    sql: &str,
    after: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    let q = sqlx::query(sql).bind(after).bind(LOAD_PAGE);
    q.fetch_all(&mut **tx).await.map_err(db_err)
}

/// The rows of a page's range query `sql`: key ids after `after` (`$1`), up to and including
/// `last` (`$2`).
async fn range_rows(
    tx: &mut Transaction<'static, Any>,
    sql: &str,
    after: &str,
    last: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    let q = sqlx::query(sql).bind(after).bind(last);
    q.fetch_all(&mut **tx).await.map_err(db_err)
}

/// The three queries of a page of the full load, in order: the keys after `$1` (at most
/// `$2`), then the versions and the tags of the key-id range `> $1`, `<= $2`, each sorted.
/// Both readers run them: sqlx's ([`load_page`]) and SQLite's bulk reader ([`bulk`]).
fn page_queries() -> [String; 3] {
    [
        format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id > $1 ORDER BY key_id LIMIT $2"),
        format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions \
             WHERE key_id > $1 AND key_id <= $2 ORDER BY key_id, version"
        ),
        "SELECT key_id, tag_key, tag_value FROM tags \
         WHERE key_id > $1 AND key_id <= $2 ORDER BY key_id, tag_key"
            .to_owned(),
    ]
}

/// One page's bundles from its key rows and the version and tag rows of the same key-id range
/// (each sorted). Rows without a key row cannot exist while foreign keys are enforced; they
/// are skipped.
fn assemble(
    keys: Vec<KeyRecord>,
    versions: Vec<KeyVersion>,
    tags: Vec<(String, Tag)>,
) -> Vec<KeyBundle> {
    let mut bundles: Vec<KeyBundle> = keys
        .into_iter()
        .map(|key| KeyBundle {
            key,
            versions: Vec::new(),
            tags: Vec::new(),
        })
        .collect();
    let index: HashMap<String, usize> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| (b.key.key_id.clone(), i))
        .collect();
    for version in versions {
        if let Some(&i) = index.get(&version.key_id) {
            bundles[i].versions.push(version);
        }
    }
    for (key_id, tag) in tags {
        if let Some(&i) = index.get(&key_id) {
            bundles[i].tags.push(tag);
        }
    }
    bundles
}

/// What the paged loads read: a key's rows, one page of keys at a time.
trait Paged: Sized + Send {
    fn key_id(&self) -> &str;
    /// The keys after `after` (by key id), at most [`LOAD_PAGE`].
    fn page(
        tx: &mut Transaction<'static, Any>,
        after: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send;
}

impl Paged for KeyBundle {
    fn key_id(&self) -> &str {
        &self.key.key_id
    }
    fn page(
        tx: &mut Transaction<'static, Any>,
        after: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send {
        load_page(tx, after)
    }
}

impl Paged for KeyShape {
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn page(
        tx: &mut Transaction<'static, Any>,
        after: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send {
        load_shape_page(tx, after)
    }
}

/// Every key as `T`, page by page in one read transaction, so that only a page or two of rows
/// is in memory at a time: a node with a million keys does not hold three million rows at
/// once. A reader task fetches and decodes the next page while `each` takes in the last one,
/// so the database and the caller work side by side instead of in turn (start-up time).
async fn load_paged<T: Paged + 'static>(
    pool: &AnyPool,
    each: &mut (dyn FnMut(Vec<T>) + Send),
) -> Result<(), StoreError> {
    // One page waits in the channel while the reader builds the next.
    let (pages, next) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(read_pages::<T>(pool.clone(), pages));
    drain(next, reader, each).await
}

/// Hands each page a reader task sends to `each` as it arrives, then returns the reader's
/// result.
async fn drain<T>(
    mut next: tokio::sync::mpsc::Receiver<Vec<T>>,
    reader: tokio::task::JoinHandle<Result<(), StoreError>>,
    each: &mut (dyn FnMut(Vec<T>) + Send),
) -> Result<(), StoreError> {
    while let Some(page) = next.recv().await {
        each(page);
    }
    match reader.await {
        Ok(done) => done,
        Err(e) => Err(StoreError::Database(format!("the page reader failed: {e}"))),
    }
}

/// [`load_paged`]'s reader: sends every page in key-id order, and stops early when the
/// receiver is gone (the read transaction ends either way).
async fn read_pages<T: Paged>(
    pool: AnyPool,
    pages: tokio::sync::mpsc::Sender<Vec<T>>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let mut after = String::new();
    loop {
        let page = T::page(&mut tx, &after).await?;
        let Some(last) = page.last() else { break };
        after = last.key_id().to_owned();
        let full = page.len() == LOAD_PAGE as usize;
        if pages.send(page).await.is_err() || !full {
            break;
        }
    }
    tx.commit().await.map_err(db_err)
}

/// [`load_page`] for reconciliation: the keys after `after` as [`KeyShape`]s, reading only
/// the columns it compares.
async fn load_shape_page(
    tx: &mut Transaction<'static, Any>,
    after: &str,
) -> Result<Vec<KeyShape>, StoreError> {
    let keys_sql = "SELECT key_id, key_spec, state, created_at_ms, current_version, \
                    custom_key_store_id, xks_key_id FROM keys \
                    WHERE key_id > $1 ORDER BY key_id LIMIT $2";
    let key_rows = page_rows(tx, keys_sql, after).await?;
    let mut shapes = Vec::with_capacity(key_rows.len());
    let mut index = HashMap::with_capacity(key_rows.len());
    for row in &key_rows {
        let key_id: String = row.try_get("key_id").map_err(db_err)?;
        index.insert(key_id.clone(), shapes.len());
        shapes.push(KeyShape {
            key_spec: enum_from_row(row, "key_spec", &key_id)?,
            state: enum_from_row(row, "state", &key_id)?,
            created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
            current_version: get_u32(row, "current_version", &key_id)?,
            custom_key_store_id: row.try_get("custom_key_store_id").map_err(db_err)?,
            xks_key_id: row.try_get("xks_key_id").map_err(db_err)?,
            versions: Vec::new(),
            key_id,
        });
    }
    let Some(last) = shapes.last().map(|k| k.key_id.clone()) else {
        return Ok(shapes);
    };
    let versions_sql = "SELECT key_id, version, created_at_ms, wrap_master FROM key_versions \
                        WHERE key_id > $1 AND key_id <= $2 ORDER BY key_id, version";
    let version_rows = range_rows(tx, versions_sql, after, &last).await?;
    for row in &version_rows {
        let key_id: String = row.try_get("key_id").map_err(db_err)?;
        let Some(&i) = index.get(&key_id) else {
            continue;
        };
        let master: Option<i64> = row.try_get("wrap_master").map_err(db_err)?;
        shapes[i].versions.push(VersionShape {
            version: get_u32(row, "version", &key_id)?,
            created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
            wrapped: master.is_some(),
        });
    }
    Ok(shapes)
}

/// A key row's column that holds an AWS enum's spelling (`state`, `key_spec`, ...).
fn enum_from_row<T: WireEnum, R: Columns>(
    row: &R,
    column: &str,
    key_id: &str,
) -> Result<T, StoreError> {
    let text: String = row.col(column)?;
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("key {key_id}: unknown {column} {text:?}")))
}

fn key_from_row<R: Columns>(row: &R) -> Result<KeyRecord, StoreError> {
    let key_id: String = row.col("key_id")?;
    let state = enum_from_row(row, "state", &key_id)?;
    let pending_window_days = match row.col::<Option<i64>>("pending_window_days")? {
        None => None,
        Some(days) => Some(i32::try_from(days).map_err(|_| {
            StoreError::Corrupt(format!(
                "key {key_id}: pending_window_days {days} is out of range"
            ))
        })?),
    };
    let current_version = get_u32(row, "current_version", &key_id)?;
    Ok(KeyRecord {
        account: row.col("account")?,
        description: row.col("description")?,
        key_spec: enum_from_row(row, "key_spec", &key_id)?,
        key_usage: enum_from_row(row, "key_usage", &key_id)?,
        origin: enum_from_row(row, "origin", &key_id)?,
        state,
        created_at_ms: row.col("created_at_ms")?,
        deletion_date_ms: row.col("deletion_date_ms")?,
        pending_window_days,
        current_version,
        policy: row.col::<String>("policy")?.into(),
        custom_key_store_id: row.col("custom_key_store_id")?,
        xks_key_id: row.col("xks_key_id")?,
        row_version: row.col("row_version")?,
        multi_region: multi_region_from_row(row, &key_id)?,
        key_id,
    })
}

/// The multi-Region columns of a key row: both set or both NULL.
fn multi_region_from_row<R: Columns>(
    row: &R,
    key_id: &str,
) -> Result<Option<MultiRegion>, StoreError> {
    let primary: Option<String> = row.col("mr_primary_region")?;
    let replicas: Option<String> = row.col("mr_replica_regions")?;
    match (primary, replicas) {
        (None, None) => Ok(None),
        (Some(primary_region), Some(list)) => Ok(Some(MultiRegion {
            primary_region,
            replica_regions: list
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
        })),
        _ => Err(StoreError::Corrupt(format!(
            "key {key_id}: only one of the multi-Region columns is set"
        ))),
    }
}

/// The multi-Region columns' values of `key`.
fn multi_region_columns(key: &KeyRecord) -> (Option<&str>, Option<String>) {
    match &key.multi_region {
        None => (None, None),
        Some(m) => (Some(&m.primary_region), Some(m.replica_regions.join(","))),
    }
}

/// A version row with a blob, as a [`BlobRow`] ([`StoreError::Corrupt`] without its blob).
fn blob_row(r: &AnyRow) -> Result<BlobRow, StoreError> {
    let v = version_from_row(r)?;
    let blob = v.wrapped.ok_or_else(|| {
        StoreError::Corrupt(format!("key {}: wrap_master without a blob", v.key_id))
    })?;
    Ok(BlobRow {
        key_id: v.key_id,
        version: v.version,
        blob,
    })
}

fn version_from_row<R: Columns>(row: &R) -> Result<KeyVersion, StoreError> {
    let key_id: String = row.col("key_id")?;
    let version = get_u32(row, "version", &key_id)?;
    Ok(KeyVersion {
        version,
        created_at_ms: row.col("created_at_ms")?,
        wrapped: blob_from_row(row, &key_id)?,
        key_id,
    })
}

/// The wrapped blob of a version row: both columns or neither.
fn blob_from_row<R: Columns>(row: &R, key_id: &str) -> Result<Option<StoredBlob>, StoreError> {
    let bytes: Option<Vec<u8>> = row.col("wrapped_blob")?;
    let master: Option<i64> = row.col("wrap_master")?;
    let public_key: Option<Vec<u8>> = row.col("public_key")?;
    match (bytes, master) {
        (None, None) if public_key.is_some() => Err(StoreError::Corrupt(format!(
            "key {key_id}: a version has a wrapped public key without its blob"
        ))),
        (None, None) => Ok(None),
        (Some(bytes), Some(m)) => Ok(Some(StoredBlob {
            master: u32::try_from(m).map_err(|_| {
                StoreError::Corrupt(format!("key {key_id}: wrap_master {m} is not a valid u32"))
            })?,
            bytes,
            public_key,
        })),
        _ => Err(StoreError::Corrupt(format!(
            "key {key_id}: a version has a wrapped blob without its master, or the reverse"
        ))),
    }
}

/// A tag row as (key id, tag).
fn tag_from_row<R: Columns>(row: &R) -> Result<(String, Tag), StoreError> {
    Ok((
        row.col("key_id")?,
        Tag {
            key: row.col("tag_key")?,
            value: row.col("tag_value")?,
        },
    ))
}

fn alias_from_row(row: &AnyRow) -> Result<AliasRecord, StoreError> {
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
    conn: &mut AnyConnection,
    key: &KeyRecord,
    tags: &[Tag],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO keys (key_id, account, description, key_spec, key_usage, origin, state, \
         created_at_ms, deletion_date_ms, pending_window_days, current_version, policy, \
         custom_key_store_id, xks_key_id, row_version, mr_primary_region, mr_replica_regions) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&key.key_id)
    .bind(&key.account)
    .bind(&key.description)
    .bind(key.key_spec.as_str())
    .bind(key.key_usage.as_str())
    .bind(key.origin.as_str())
    .bind(key.state.as_str())
    .bind(key.created_at_ms)
    .bind(key.deletion_date_ms)
    .bind(key.pending_window_days.map(i64::from))
    .bind(i64::from(key.current_version))
    .bind(&*key.policy)
    .bind(&key.custom_key_store_id)
    .bind(&key.xks_key_id)
    .bind(key.row_version)
    .bind(multi_region_columns(key).0)
    .bind(multi_region_columns(key).1)
    .execute(&mut *conn)
    .await
    .map_err(|e| write_err(e, || key_missing(&key.key_id), || key_missing(&key.key_id)))?;
    upsert_tags_on(conn, &key.key_id, tags).await
}

/// Adds or overwrites tags of an existing key on `conn`.
async fn upsert_tags_on(
    conn: &mut AnyConnection,
    key_id: &str,
    tags: &[Tag],
) -> Result<(), StoreError> {
    for tag in tags {
        sqlx::query(
            "INSERT INTO tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3) \
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
    conn: &mut AnyConnection,
    version: &KeyVersion,
) -> Result<(), StoreError> {
    let blob = version.wrapped.as_ref();
    sqlx::query(
        "INSERT INTO key_versions \
         (key_id, version, created_at_ms, wrapped_blob, wrap_master, public_key) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&version.key_id)
    .bind(i64::from(version.version))
    .bind(version.created_at_ms)
    .bind(blob.map(|b| b.bytes.clone()))
    .bind(blob.map(|b| i64::from(b.master)))
    .bind(blob.and_then(|b| b.public_key.clone()))
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

/// Compare-and-set of the mutable columns of a key row on `conn`: applied only while the
/// stored `row_version` is still `key.row_version`, and raises it by one. `NotFound` if the
/// row is gone, `Conflict` if it changed meanwhile.
async fn update_key_on(conn: &mut AnyConnection, key: &KeyRecord) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE keys SET state = $1, description = $2, deletion_date_ms = $3, \
         pending_window_days = $4, current_version = $5, policy = $6, \
         mr_primary_region = $7, mr_replica_regions = $8, \
         row_version = row_version + 1 WHERE key_id = $9 AND row_version = $10",
    )
    .bind(key.state.as_str())
    .bind(&key.description)
    .bind(key.deletion_date_ms)
    .bind(key.pending_window_days.map(i64::from))
    .bind(i64::from(key.current_version))
    .bind(&*key.policy)
    .bind(multi_region_columns(key).0)
    .bind(multi_region_columns(key).1)
    .bind(&key.key_id)
    .bind(key.row_version)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if done.rows_affected() == 0 {
        require_key_on(conn, &key.key_id).await?;
        return Err(StoreError::Conflict(format!(
            "key {} is no longer at row version {}",
            key.key_id, key.row_version
        )));
    }
    log_change(conn, ChangeKind::Key, &key.key_id).await
}

/// Raises a key's row version (a change to its tags or lifecycle) and logs the change;
/// `NotFound` if the key does not exist.
async fn touch_key_on(conn: &mut AnyConnection, key_id: &str) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE keys SET row_version = row_version + 1 WHERE key_id = $1")
        .bind(key_id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(key_missing(key_id)));
    }
    log_change(conn, ChangeKind::Key, key_id).await
}

/// Locks the key row for the rest of the transaction (PostgreSQL: a row lock by a no-op
/// update that leaves `row_version` alone; SQLite: the write lock is held already);
/// `NotFound` unless it exists.
async fn lock_key_on(conn: &mut AnyConnection, key_id: &str) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE keys SET key_id = key_id WHERE key_id = $1")
        .bind(key_id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(key_missing(key_id)));
    }
    Ok(())
}

/// `LimitExceeded` when the key already has `max` aliases, `except` (an alias being
/// retargeted) not counted.
async fn check_alias_quota(
    conn: &mut AnyConnection,
    key_id: &str,
    except: Option<(&str, &str)>,
    max: usize,
) -> Result<(), StoreError> {
    let (account, name) = except.unwrap_or(("", ""));
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM aliases WHERE key_id = $1 AND NOT (account = $2 AND name = $3)",
    )
    .bind(key_id)
    .bind(account)
    .bind(name)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= max {
        return Err(StoreError::LimitExceeded(format!(
            "A key can have at most {max} aliases."
        )));
    }
    Ok(())
}

/// Writes an imported blob on version row `version` of `key_id`, which must exist and hold
/// no blob (a re-import after the material was deleted); `Conflict` otherwise.
async fn put_imported_blob_on(
    conn: &mut AnyConnection,
    key_id: &str,
    version: u32,
    blob: &StoredBlob,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE key_versions SET wrapped_blob = $1, wrap_master = $2, public_key = $3 \
         WHERE key_id = $4 AND version = $5 AND wrapped_blob IS NULL",
    )
    .bind(blob.bytes.clone())
    .bind(i64::from(blob.master))
    .bind(blob.public_key.clone())
    .bind(key_id)
    .bind(i64::from(version))
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!(
            "version {version} of key {key_id} is gone or already holds a blob"
        )));
    }
    Ok(())
}

/// `NotFound` unless the key row exists.
async fn require_key_on(conn: &mut AnyConnection, key_id: &str) -> Result<(), StoreError> {
    let found = sqlx::query("SELECT 1 FROM keys WHERE key_id = $1")
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
impl MetadataStore for SqlStore {
    async fn insert_key(&self, key: &KeyRecord, tags: &[Tag]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        insert_key_on(&mut tx, key, tags).await?;
        log_change(&mut tx, ChangeKind::Key, &key.key_id).await?;
        tx.commit().await.map_err(db_err)
    }

    #[cfg(feature = "bench")]
    async fn seed_keys(&self, keys: &[(KeyRecord, KeyVersion)]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for (key, version) in keys {
            insert_key_on(&mut tx, key, &[]).await?;
            insert_version_on(&mut tx, version).await?;
            log_change(&mut tx, ChangeKind::Key, &key.key_id).await?;
        }
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

    async fn add_versions_and_update(
        &self,
        versions: &[KeyVersion],
        key: &KeyRecord,
    ) -> Result<(), StoreError> {
        if let Some(v) = versions.iter().find(|v| v.key_id != key.key_id) {
            return Err(StoreError::Database(format!(
                "version belongs to key {} but the row to update is key {}",
                v.key_id, key.key_id
            )));
        }
        let mut tx = self.write_tx().await?;
        for version in versions {
            insert_version_on(&mut tx, version).await?;
        }
        update_key_on(&mut tx, key).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        update_key_on(&mut tx, key).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn set_version_blob(
        &self,
        key: &KeyRecord,
        version: u32,
        expected: Option<&StoredBlob>,
        new: Option<&StoredBlob>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET wrapped_blob = $1, wrap_master = $2, public_key = $3 \
             WHERE key_id = $4 AND version = $5 AND wrapped_blob IS NOT DISTINCT FROM $6",
        )
        .bind(new.map(|b| b.bytes.clone()))
        .bind(new.map(|b| i64::from(b.master)))
        .bind(new.and_then(|b| b.public_key.clone()))
        .bind(&key.key_id)
        .bind(i64::from(version))
        .bind(expected.map(|b| b.bytes.clone()))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "version {version} of key {} is gone or its blob changed meanwhile",
                key.key_id
            )));
        }
        update_key_on(&mut tx, key).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn blobs_under_master_in(
        &self,
        store: Option<&str>,
        master: u32,
        limit: usize,
    ) -> Result<Vec<BlobRow>, StoreError> {
        // Store ids are never empty, so '' stands for the default store (NULL).
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions WHERE wrap_master = $1 \
             AND key_id IN (SELECT key_id FROM keys WHERE COALESCE(custom_key_store_id, '') = $2) \
             ORDER BY key_id, version LIMIT $3"
        ))
        .bind(i64::from(master))
        .bind(store.unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(blob_row).collect()
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyBundle>, StoreError> {
        // One read transaction: the three queries see the same snapshot.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = $1"))
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let key = key_from_row(&row)?;
        let versions = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_id = $1 ORDER BY version"
        ))
        .bind(key_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(version_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let tags = sqlx::query(
            "SELECT key_id, tag_key, tag_value FROM tags WHERE key_id = $1 ORDER BY tag_key",
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
        let mut bundles = Vec::new();
        self.load_pages(&mut |page| bundles.extend(page)).await?;
        Ok(bundles)
    }

    async fn load_pages(
        &self,
        each: &mut (dyn FnMut(Vec<KeyBundle>) + Send),
    ) -> Result<(), StoreError> {
        match &self.sqlite_file {
            Some(file) => bulk::load_pages(file.clone(), each).await,
            None => load_paged(&self.pool, each).await,
        }
    }

    async fn load_shapes(
        &self,
        each: &mut (dyn FnMut(Vec<KeyShape>) + Send),
    ) -> Result<(), StoreError> {
        load_paged(&self.pool, each).await
    }

    async fn delete_key(&self, key_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        log_key_removal(&mut tx, key_id).await?;
        // Explicit child deletes, so the result does not depend on ON DELETE CASCADE alone.
        for sql in [
            "DELETE FROM aliases WHERE key_id = $1",
            "DELETE FROM tags WHERE key_id = $1",
            "DELETE FROM key_versions WHERE key_id = $1",
        ] {
            sqlx::query(sql)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let done = sqlx::query("DELETE FROM keys WHERE key_id = $1")
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
            sqlx::query_scalar("SELECT account FROM keys WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(account) = account else {
            return Err(StoreError::NotFound(key_missing(key_id)));
        };
        log_key_removal(&mut tx, key_id).await?;
        log_change(&mut tx, ChangeKind::Grants, key_id).await?;
        for sql in [
            "DELETE FROM aliases WHERE key_id = $1",
            "DELETE FROM tags WHERE key_id = $1",
            "DELETE FROM key_versions WHERE key_id = $1",
            "DELETE FROM grants WHERE key_id = $1",
            "DELETE FROM keys WHERE key_id = $1",
        ] {
            sqlx::query(sql)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(
            "INSERT INTO deleted_keys (key_id, account, deleted_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO UPDATE SET account = excluded.account, \
             deleted_at_ms = excluded.deleted_at_ms",
        )
        .bind(key_id)
        .bind(&account)
        .bind(deleted_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn insert_grant(&self, g: &GrantRecord, max_grants: usize) -> Result<(), StoreError> {
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
        lock_key_on(&mut tx, &g.key_id).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grants WHERE key_id = $1")
            .bind(&g.key_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if usize::try_from(count).unwrap_or(usize::MAX) >= max_grants {
            return Err(StoreError::LimitExceeded(format!(
                "A key can have at most {max_grants} grants."
            )));
        }
        sqlx::query(
            "INSERT INTO grants (grant_id, key_id, name, grantee_principal, retiring_principal, \
             operations, constraints, issuing_account, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        log_change(&mut tx, ChangeKind::Grants, &g.key_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete_grant(&self, grant_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let key_id: Option<String> =
            sqlx::query_scalar("DELETE FROM grants WHERE grant_id = $1 RETURNING key_id")
                .bind(grant_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(key_id) = key_id else {
            return Err(StoreError::NotFound(format!("grant {grant_id} not found")));
        };
        log_change(&mut tx, ChangeKind::Grants, &key_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn list_grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants ORDER BY key_id, created_at_ms, grant_id"
        ))
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

    async fn was_destroyed(&self, key_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM deleted_keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }

    async fn put_tags(&self, key_id: &str, tags: &[Tag]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        touch_key_on(&mut tx, key_id).await?;
        upsert_tags_on(&mut tx, key_id, tags).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn remove_tags(&self, key_id: &str, tag_keys: &[String]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        touch_key_on(&mut tx, key_id).await?;
        for tag_key in tag_keys {
            sqlx::query("DELETE FROM tags WHERE key_id = $1 AND tag_key = $2")
                .bind(key_id)
                .bind(tag_key)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn create_alias(
        &self,
        alias: &AliasRecord,
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        lock_key_on(&mut tx, &alias.key_id).await?;
        check_alias_quota(&mut tx, &alias.key_id, None, max_per_key).await?;
        sqlx::query(
            "INSERT INTO aliases (account, name, key_id, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&alias.account)
        .bind(&alias.name)
        .bind(&alias.key_id)
        .bind(alias.created_at_ms)
        .bind(alias.updated_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            write_err(
                e,
                || alias_label(&alias.account, &alias.name),
                || key_missing(&alias.key_id),
            )
        })?;
        let id = alias_change_id(&alias.account, &alias.name);
        log_change(&mut tx, ChangeKind::Alias, &id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn update_alias(
        &self,
        account: &str,
        name: &str,
        key_id: &str,
        updated_at_ms: i64,
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        lock_key_on(&mut tx, key_id).await?;
        check_alias_quota(&mut tx, key_id, Some((account, name)), max_per_key).await?;
        let done = sqlx::query(
            "UPDATE aliases SET key_id = $1, updated_at_ms = $2 WHERE account = $3 AND name = $4",
        )
        .bind(key_id)
        .bind(updated_at_ms)
        .bind(account)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_err(e, || alias_label(account, name), || key_missing(key_id)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(alias_label(account, name)));
        }
        log_change(&mut tx, ChangeKind::Alias, &alias_change_id(account, name)).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete_alias(&self, account: &str, name: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM aliases WHERE account = $1 AND name = $2")
            .bind(account)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(alias_label(account, name)));
        }
        log_change(&mut tx, ChangeKind::Alias, &alias_change_id(account, name)).await?;
        tx.commit().await.map_err(db_err)
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
        let mut tx = self.write_tx().await?;
        touch_key_on(&mut tx, &l.key_id).await?;
        put_lifecycle_on(&mut tx, l).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn list_rotations(&self, key_id: &str) -> Result<Vec<RotationEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, version, rotated_at_ms, rotation_type FROM key_rotations \
             WHERE key_id = $1 ORDER BY version",
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
        log_change(&mut tx, ChangeKind::Key, &version.key_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn abort_rotation(&self, key_id: &str, version: u32) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "DELETE FROM key_versions WHERE key_id = $1 AND version = $2 AND NOT EXISTS \
             (SELECT 1 FROM key_rotations WHERE key_id = $3 AND version = $4)",
        )
        .bind(key_id)
        .bind(i64::from(version))
        .bind(key_id)
        .bind(i64::from(version))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() > 0 {
            log_change(&mut tx, ChangeKind::Key, key_id).await?;
        }
        tx.commit().await.map_err(db_err)
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
             VALUES ($1, $2, $3, $4)",
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
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO import_tokens (token_sha256, key_id, wrapping_key_id, \
             wrapping_algorithm, wrapping_key_spec, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.token_sha256)
        .bind(&t.key_id)
        .bind(&t.wrapping_key_id)
        .bind(&t.wrapping_algorithm)
        .bind(&t.wrapping_key_spec)
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_err(e, || "import token".into(), || key_missing(&t.key_id)))?;
        log_change(&mut tx, ChangeKind::Key, &t.key_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_import_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ImportTokenRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM import_tokens WHERE token_sha256 = $1"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn delete_import_token(&self, token_sha256: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let key_id: Option<String> = sqlx::query_scalar(
            "DELETE FROM import_tokens WHERE token_sha256 = $1 RETURNING key_id",
        )
        .bind(token_sha256)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(key_id) = key_id {
            log_change(&mut tx, ChangeKind::Key, &key_id).await?;
        }
        tx.commit().await.map_err(db_err)
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
        version: ImportedVersion<'_>,
        l: &KeyLifecycle,
        token_sha256: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        match version {
            ImportedVersion::New(v) => insert_version_on(&mut tx, v).await?,
            ImportedVersion::Blob { version, blob } => {
                put_imported_blob_on(&mut tx, &key.key_id, version, blob).await?
            }
            ImportedVersion::Unchanged => {}
        }
        update_key_on(&mut tx, key).await?;
        put_lifecycle_on(&mut tx, l).await?;
        sqlx::query("DELETE FROM import_tokens WHERE token_sha256 = $1")
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

    async fn drop_imported_material(
        &self,
        key: &KeyRecord,
        l: &KeyLifecycle,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE key_versions SET wrapped_blob = NULL, wrap_master = NULL, public_key = NULL \
             WHERE key_id = $1",
        )
        .bind(&key.key_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        update_key_on(&mut tx, key).await?;
        put_lifecycle_on(&mut tx, l).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn usage_tracking_start(&self, now_ms: i64) -> Result<i64, StoreError> {
        sqlx::query(
            "INSERT INTO key_usage_tracking (id, started_at_ms) VALUES (1, $1) \
             ON CONFLICT (id) DO NOTHING",
        )
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
        for chunk in last_use_per_key(rows).chunks(USAGE_ROWS_PER_STATEMENT) {
            let sql = usage_upsert_sql(chunk.len());
            // Only the full-chunk text recurs; a last, shorter chunk is not worth a cached
            // prepared statement on every connection.
            let full = chunk.len() == USAGE_ROWS_PER_STATEMENT;
            let mut query = sqlx::query(&sql).persistent(full);
            for u in chunk {
                query = query
                    .bind(&u.key_id)
                    .bind(u.operation.as_str())
                    .bind(u.used_at_ms)
                    .bind(&u.event_id)
                    .bind(&u.request_id);
            }
            written += query
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(written)
    }

    async fn insert_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        key_stores::insert(&mut tx, store).await?;
        log_change(&mut tx, ChangeKind::KeyStore, &store.store_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn update_key_store(&self, store: &KeyStoreRecord) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        key_stores::update(&mut tx, store).await?;
        log_change(&mut tx, ChangeKind::KeyStore, &store.store_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete_key_store(&self, store_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        key_stores::delete(&mut tx, store_id).await?;
        log_change(&mut tx, ChangeKind::KeyStore, store_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn list_key_stores(&self) -> Result<Vec<KeyStoreRecord>, StoreError> {
        key_stores::list(&self.pool, None).await
    }

    async fn get_key_store(&self, store_id: &str) -> Result<Option<KeyStoreRecord>, StoreError> {
        Ok(key_stores::list(&self.pool, Some(store_id)).await?.pop())
    }

    async fn record_orphans(&self, orphans: &[OrphanRecord]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        key_stores::record_orphans(&mut tx, orphans).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError> {
        key_stores::list_orphans(&self.pool).await
    }

    // Several nodes (migration 0008): src/store/sql/cluster.rs.

    async fn changes_since(&self, after_seq: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        cluster::changes_since(&self.pool, after_seq, limit).await
    }

    async fn last_change_seq(&self) -> Result<i64, StoreError> {
        cluster::last_change_seq(&self.pool).await
    }

    async fn prune_changes(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        cluster::prune_changes(&self.pool, older_than_ms).await
    }

    fn subscribe_changes(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        self.subscribe()
    }

    async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        cluster::insert_session(&mut tx, s).await?;
        log_change(&mut tx, ChangeKind::Session, &s.access_key_id).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_session(&self, access_key_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        cluster::get_session(&self.pool, access_key_id).await
    }

    async fn delete_expired_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        cluster::delete_expired_sessions(&self.pool, now_ms).await
    }

    async fn try_lead(&self, duty: Duty) -> Result<Option<LeaderGuard>, StoreError> {
        self.lead(duty).await
    }

    async fn describe(&self) -> Result<StoreInfo, StoreError> {
        cluster::describe(&self.pool, self.backend, migrations_of(self.backend)).await
    }

    async fn get_alias(
        &self,
        account: &str,
        name: &str,
    ) -> Result<Option<AliasRecord>, StoreError> {
        sqlx::query(
            "SELECT account, name, key_id, created_at_ms, updated_at_ms FROM aliases \
             WHERE account = $1 AND name = $2",
        )
        .bind(account)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(alias_from_row)
        .transpose()
    }

    async fn grants_of(&self, key_id: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE key_id = $1 ORDER BY created_at_ms, grant_id"
        ))
        .bind(key_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn get_grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1"
        ))
        .bind(grant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(grant_from_row)
        .transpose()
    }

    async fn get_lifecycle(&self, key_id: &str) -> Result<Option<KeyLifecycle>, StoreError> {
        sqlx::query(&format!(
            "SELECT {LIFECYCLE_COLUMNS} FROM key_lifecycle WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(lifecycle_from_row)
        .transpose()
    }
}

/// Decodes one `key_last_usage` row.
fn usage_from_row(row: &AnyRow) -> Result<KeyUsageRecord, StoreError> {
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

/// The column list every grant query selects.
const GRANT_COLUMNS: &str = "grant_id, key_id, name, grantee_principal, retiring_principal, \
     operations, constraints, issuing_account, created_at_ms";

const LIFECYCLE_COLUMNS: &str = "key_id, rotation_enabled, rotation_period_days, \
     next_rotation_ms, on_demand_rotations, expiration_model, valid_to_ms, material_check, \
     material_present";

const TOKEN_COLUMNS: &str = "token_sha256, key_id, wrapping_key_id, wrapping_algorithm, \
     wrapping_key_spec, created_at_ms, expires_at_ms";

fn lifecycle_from_row(row: &AnyRow) -> Result<KeyLifecycle, StoreError> {
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

fn token_from_row(row: &AnyRow) -> Result<ImportTokenRecord, StoreError> {
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

async fn put_lifecycle_on(conn: &mut AnyConnection, l: &KeyLifecycle) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO key_lifecycle ({LIFECYCLE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (key_id) DO UPDATE SET rotation_enabled = excluded.rotation_enabled, \
         rotation_period_days = excluded.rotation_period_days, \
         next_rotation_ms = excluded.next_rotation_ms, \
         on_demand_rotations = excluded.on_demand_rotations, \
         expiration_model = excluded.expiration_model, valid_to_ms = excluded.valid_to_ms, \
         material_check = excluded.material_check, material_present = excluded.material_present"
    ))
    .bind(&l.key_id)
    .bind(i64::from(l.rotation_enabled))
    .bind(l.rotation_period_days.map(i64::from))
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

fn grant_from_row(row: &AnyRow) -> Result<GrantRecord, StoreError> {
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
    use crate::store::{KeySpec, KeyState, KeyUsage, Origin};
    use tempfile::TempDir;

    const ACCOUNT: &str = "111122223333";

    fn key_record(key_id: &str, state: KeyState) -> KeyRecord {
        KeyRecord {
            key_id: key_id.to_owned(),
            account: ACCOUNT.to_owned(),
            description: format!("key {key_id}"),
            key_spec: KeySpec::SymmetricDefault,
            key_usage: KeyUsage::EncryptDecrypt,
            origin: Origin::AwsKms,
            state,
            created_at_ms: 1_700_000_000_000,
            deletion_date_ms: None,
            pending_window_days: None,
            current_version: 1,
            policy: r#"{"Version":"2012-10-17","Statement":[]}"#.into(),
            custom_key_store_id: None,
            xks_key_id: None,
            row_version: 1,
            multi_region: None,
        }
    }

    fn version(key_id: &str, version: u32) -> KeyVersion {
        KeyVersion {
            key_id: key_id.to_owned(),
            version,
            created_at_ms: 1_700_000_000_000 + i64::from(version),
            wrapped: None,
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

    async fn open_temp() -> (TempDir, SqlStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        (dir, store)
    }

    /// Inserts an `Enabled` key with version 1, through the two-phase path.
    async fn create_enabled(store: &SqlStore, key_id: &str, tags: &[Tag]) -> KeyRecord {
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
        KeyRecord {
            row_version: enabled.row_version + 1,
            ..enabled
        }
    }

    async fn count(store: &SqlStore, sql: &str) -> i64 {
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
        let store = SqlStore::open_sqlite(&data_dir).await.unwrap();
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
    async fn reopen_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
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
            .create_alias(&alias(ACCOUNT, "alias/a", "k1"), 50)
            .await
            .unwrap();
        let keys_before = store.load_all().await.unwrap();
        let aliases_before = store.list_aliases().await.unwrap();
        store.pool().close().await;
        drop(store);

        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        assert_eq!(store.load_all().await.unwrap(), keys_before);
        assert_eq!(store.list_aliases().await.unwrap(), aliases_before);

        // Running the migrations again changes nothing.
        let recorded = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1";
        assert_eq!(
            count(&store, recorded).await,
            SQLITE_MIGRATIONS.len() as i64
        );
        run_migrations(store.pool(), Backend::Sqlite).await.unwrap();
        assert_eq!(
            count(&store, recorded).await,
            SQLITE_MIGRATIONS.len() as i64
        );
        assert_eq!(store.load_all().await.unwrap(), keys_before);
    }

    #[tokio::test]
    async fn edited_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1")
            .execute(store.pool())
            .await
            .unwrap();
        store.pool().close().await;
        let err = SqlStore::open_sqlite(dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    }

    #[tokio::test]
    async fn corrupt_enum_columns_are_reported_not_panicked() {
        for (column, value) in [
            ("state", "Melted"),
            ("key_spec", "AES_1024"),
            ("key_usage", "WRAP_UNWRAP"),
            ("origin", "ELSEWHERE"),
        ] {
            let (_dir, store) = open_temp().await;
            create_enabled(&store, "k1", &[]).await;
            sqlx::query(&format!(
                "UPDATE keys SET {column} = '{value}' WHERE key_id = 'k1'"
            ))
            .execute(store.pool())
            .await
            .unwrap();
            let err = store.get_key("k1").await.unwrap_err();
            let want = format!("key k1: unknown {column} \"{value}\"");
            assert!(
                matches!(&err, StoreError::Corrupt(m) if *m == want),
                "{err:?}"
            );
            let err = store.load_all().await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{column}: {err:?}");
            // Reconciliation reads the state and the spec, not the usage or the origin.
            let shapes = store.load_shapes(&mut |_| {}).await;
            let reads_it = column == "state" || column == "key_spec";
            let corrupt = matches!(shapes, Err(StoreError::Corrupt(_)));
            assert_eq!(corrupt, reads_it, "{column}: {shapes:?}");
        }
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
            // Every column of both readers: NULLs and values, blobs with and without a
            // public key, multi-Region and pending-deletion keys.
            if n.is_multiple_of(5) {
                key.multi_region = Some(MultiRegion {
                    primary_region: "eu-west-1".into(),
                    replica_regions: vec!["us-east-1".into(), "ap-south-1".into()],
                });
            }
            if n.is_multiple_of(7) {
                key.state = KeyState::PendingDeletion;
                key.deletion_date_ms = Some(1_800_000_000_000 + i64::from(n));
                key.pending_window_days = Some(7);
            }
            let versions: Vec<KeyVersion> = (1..=key.current_version)
                .map(|v| KeyVersion {
                    wrapped: n.is_multiple_of(2).then(|| StoredBlob {
                        master: v,
                        bytes: vec![n.to_le_bytes()[0]; 40],
                        public_key: n.is_multiple_of(4).then(|| vec![0x30, 0x59, 1]),
                    }),
                    ..version(&id, v)
                })
                .collect();
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
        // That was SQLite's bulk reader; sqlx's reader (PostgreSQL's) reads the same.
        assert!(store.sqlite_file.is_some());
        let mut via_sqlx = Vec::new();
        load_paged(&store.pool, &mut |page: Vec<KeyBundle>| {
            via_sqlx.extend(page)
        })
        .await
        .unwrap();
        assert_eq!(via_sqlx, expected);
        let mut shapes = Vec::new();
        store
            .load_shapes(&mut |page| shapes.extend(page))
            .await
            .unwrap();
        let expected_shapes: Vec<KeyShape> = expected.iter().map(KeyShape::from).collect();
        assert_eq!(
            shapes, expected_shapes,
            "reconciliation's columns, in key id order"
        );
        for n in [0, 1, 999, N - 1] {
            let one = store.get_key(&key_id(n)).await.unwrap().unwrap();
            assert!(loaded.contains(&one));
        }
    }

    #[tokio::test]
    async fn previous_schema_is_migrated_keeping_data_at_row_version_1() {
        // A database at migration 7 (the binary before issue 17), with a key in it.
        let dir = tempfile::tempdir().unwrap();
        let url = SqliteConnectOptions::new()
            .filename(dir.path().join(DB_FILE_NAME))
            .create_if_missing(true)
            .to_url_lossy();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect_with(any_options(url.as_str()).unwrap())
            .await
            .unwrap();
        Migrator::new(EmbeddedMigrations(&SQLITE_MIGRATIONS[..7]))
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO keys (key_id, account, description, key_spec, key_usage, origin, \
             state, created_at_ms, current_version, policy) \
             VALUES ('k1', '111122223333', 'old', 'SYMMETRIC_DEFAULT', 'ENCRYPT_DECRYPT', \
             'AWS_KMS', 'Enabled', 5, 1, '{}')",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        let key = store.get_key("k1").await.unwrap().unwrap().key;
        assert_eq!((key.description.as_str(), key.row_version), ("old", 1));
        let info = store.describe().await.unwrap();
        assert_eq!(info.applied_migrations, (1..=10).collect::<Vec<i64>>());
        assert_eq!(info.latest_known, 10);
    }

    #[tokio::test]
    async fn foreign_key_cascade_alone_also_cleans_up() {
        // The schema's ON DELETE CASCADE, independent of delete_key's explicit deletes.
        let (_dir, store) = open_temp().await;
        create_enabled(&store, "k1", &[tag("a", "1")]).await;
        store
            .create_alias(&alias(ACCOUNT, "alias/one", "k1"), 50)
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
}
