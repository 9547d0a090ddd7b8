//! The SQLite bulk reader: the start-up load of every key ([`SqlStore::load_pages`]) on a
//! SQLite store.
//!
//! sqlx's SQLite driver steps a query on its own worker thread and hands every row to the
//! async side through a 50-row channel, duplicating each value on the way and converting it
//! again into an `AnyRow`. For a load of a million keys that costs about 10 µs per key, most
//! of the start-up time (docs/benchmarks.md, "Start-up: the SQLite bulk reader"). This reader
//! runs the same three queries as [`super::load_page`] in one blocking thread, with a
//! read-only connection of its own, and decodes each value once, from SQLite's buffer, with
//! the same decoders ([`super::Columns`]). It only reads: every write, and every other query,
//! still goes through sqlx. rusqlite links the libsqlite3-sys that sqlx links, so the process
//! holds one SQLite.
//!
//! [`SqlStore::load_pages`]: super::SqlStore

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Row, Statement};

use super::{
    assemble, drain, key_from_row, page_queries, tag_from_row, version_from_row, ColumnValue,
    Columns, LOAD_PAGE,
};
use crate::store::{KeyBundle, StoreError};

/// A row with its statement's column names, read once per query: rusqlite finds a column by
/// name through SQLite's C strings, case-insensitively, on every read (a tenth of the load's
/// time when measured).
struct Named<'r, 's> {
    row: &'r Row<'s>,
    names: &'r [String],
}

impl Columns for Named<'_, '_> {
    fn col<T: ColumnValue>(&self, column: &str) -> Result<T, StoreError> {
        let Some(i) = self.names.iter().position(|n| n == column) else {
            return Err(StoreError::Database(format!(
                "no column {column} in the result"
            )));
        };
        self.row.get(i).map_err(sqlite_err)
    }
}

/// A rusqlite error as the store's: a value of the wrong type or range is corruption, a busy
/// or unreadable database is unavailability, as [`super::db_err`] maps sqlx's.
fn sqlite_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &e {
        E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..)
        | E::FromSqlConversionFailure(..) => StoreError::Corrupt(e.to_string()),
        E::SqliteFailure(f, _)
            if matches!(
                f.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::CannotOpen
                    | ErrorCode::SystemIoFailure
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}

/// Every key of the SQLite database `file`, page by page as [`super::load_paged`] gives them:
/// a blocking thread reads and decodes the next page while `each` takes in the last one.
pub(super) async fn load_pages(
    file: PathBuf,
    each: &mut (dyn FnMut(Vec<KeyBundle>) + Send),
) -> Result<(), StoreError> {
    let (pages, next) = tokio::sync::mpsc::channel(1);
    let reader = tokio::task::spawn_blocking(move || {
        read_pages(&file, &mut |page| pages.blocking_send(page).is_ok())
    });
    drain(next, reader, each).await
}

/// The three statements of a page ([`page_queries`]).
struct PageStatements<'c> {
    keys: Statement<'c>,
    versions: Statement<'c>,
    tags: Statement<'c>,
}

/// Reads every page in key-id order in one read transaction (one snapshot of the database),
/// handing each to `send` until it returns false.
fn read_pages(file: &Path, send: &mut dyn FnMut(Vec<KeyBundle>) -> bool) -> Result<(), StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(file, flags).map_err(sqlite_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err)?;
    // Dropped at the end, which rolls the (read-only) transaction back.
    let tx = conn.transaction().map_err(sqlite_err)?;
    let prepare = |sql: &str| tx.prepare(sql).map_err(sqlite_err);
    let [keys, versions, tags] = page_queries();
    let mut statements = PageStatements {
        keys: prepare(&keys)?,
        versions: prepare(&versions)?,
        tags: prepare(&tags)?,
    };
    let mut after = String::new();
    loop {
        let page = read_page(&mut statements, &after)?;
        let Some(last) = page.last() else { break };
        after = last.key.key_id.clone();
        let full = page.len() == LOAD_PAGE as usize;
        if !send(page) || !full {
            break;
        }
    }
    Ok(())
}

/// The keys after `after` (at most [`LOAD_PAGE`]) with their versions and tags.
fn read_page(s: &mut PageStatements<'_>, after: &str) -> Result<Vec<KeyBundle>, StoreError> {
    let keys = rows(&mut s.keys, (after, LOAD_PAGE), |r| key_from_row(r))?;
    let Some(last) = keys.last().map(|k| k.key_id.clone()) else {
        return Ok(Vec::new());
    };
    let versions = rows(&mut s.versions, (after, last.as_str()), |r| {
        version_from_row(r)
    })?;
    let tags = rows(&mut s.tags, (after, last.as_str()), |r| tag_from_row(r))?;
    Ok(assemble(keys, versions, tags))
}

/// Every row of `statement` with `params`, decoded by `decode`.
fn rows<T>(
    statement: &mut Statement<'_>,
    params: impl rusqlite::Params,
    decode: impl Fn(&Named<'_, '_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let names: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.query(params).map_err(sqlite_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_err)? {
        out.push(decode(&Named { row, names: &names })?);
    }
    Ok(out)
}
