//! Custom key stores on SQLite (migration 0006): the rows behind
//! `MetadataStore::{insert,update,delete,list}_key_store`.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use super::{db_err, write_err};
use crate::store::{KeyStoreRecord, OrphanRecord, StoreError};

fn taken(store: &KeyStoreRecord) -> String {
    format!(
        "custom key store name {} or cluster {}",
        store.name, store.cluster_id
    )
}

fn missing(store_id: &str) -> String {
    format!("custom key store {store_id}")
}

fn from_row(row: &SqliteRow) -> Result<KeyStoreRecord, StoreError> {
    Ok(KeyStoreRecord {
        store_id: row.try_get("store_id").map_err(db_err)?,
        account: row.try_get("account").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        cluster_id: row.try_get("cluster_id").map_err(db_err)?,
        trust_anchor: row.try_get("trust_anchor").map_err(db_err)?,
        sealed_password: row.try_get("sealed_password").map_err(db_err)?,
        connect: row.try_get::<i64, _>("connect").map_err(db_err)? != 0,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
    })
}

pub(super) async fn insert(pool: &SqlitePool, s: &KeyStoreRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO custom_key_stores (store_id, account, name, cluster_id, trust_anchor, \
         sealed_password, connect, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&s.store_id)
    .bind(&s.account)
    .bind(&s.name)
    .bind(&s.cluster_id)
    .bind(&s.trust_anchor)
    .bind(&s.sealed_password)
    .bind(i64::from(s.connect))
    .bind(s.created_at_ms)
    .execute(pool)
    .await
    .map_err(|e| write_err(e, || taken(s), || missing(&s.store_id)))?;
    Ok(())
}

pub(super) async fn update(pool: &SqlitePool, s: &KeyStoreRecord) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE custom_key_stores SET name = ?, cluster_id = ?, trust_anchor = ?, \
         sealed_password = ?, connect = ? WHERE store_id = ?",
    )
    .bind(&s.name)
    .bind(&s.cluster_id)
    .bind(&s.trust_anchor)
    .bind(&s.sealed_password)
    .bind(i64::from(s.connect))
    .bind(&s.store_id)
    .execute(pool)
    .await
    .map_err(|e| write_err(e, || taken(s), || missing(&s.store_id)))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(missing(&s.store_id)));
    }
    Ok(())
}

pub(super) async fn delete(pool: &SqlitePool, store_id: &str) -> Result<(), StoreError> {
    let in_use = || format!("custom key store {store_id} still has keys");
    let done = sqlx::query("DELETE FROM custom_key_stores WHERE store_id = ?")
        .bind(store_id)
        .execute(pool)
        .await
        .map_err(|e| match write_err(e, in_use, in_use) {
            // A key still naming the store fails the foreign key: the store has keys.
            StoreError::NotFound(m) => StoreError::AlreadyExists(m),
            other => other,
        })?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(missing(store_id)));
    }
    Ok(())
}

pub(super) async fn list(pool: &SqlitePool) -> Result<Vec<KeyStoreRecord>, StoreError> {
    sqlx::query(
        "SELECT store_id, account, name, cluster_id, trust_anchor, sealed_password, connect, \
         created_at_ms FROM custom_key_stores ORDER BY account, created_at_ms, store_id",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?
    .iter()
    .map(from_row)
    .collect()
}

pub(super) async fn record_orphans(
    pool: &SqlitePool,
    orphans: &[OrphanRecord],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    for o in orphans {
        sqlx::query(
            "INSERT OR IGNORE INTO orphaned_key_objects (store_id, key_id, version, \
             orphaned_at_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(&o.store_id)
        .bind(&o.key_id)
        .bind(i64::from(o.version))
        .bind(o.orphaned_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

pub(super) async fn list_orphans(pool: &SqlitePool) -> Result<Vec<OrphanRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT store_id, key_id, version, orphaned_at_ms FROM orphaned_key_objects \
         ORDER BY store_id, key_id, version",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            let version: i64 = row.try_get("version").map_err(db_err)?;
            Ok(OrphanRecord {
                store_id: row.try_get("store_id").map_err(db_err)?,
                key_id: row.try_get("key_id").map_err(db_err)?,
                version: u32::try_from(version)
                    .map_err(|_| StoreError::Corrupt(format!("orphan version {version}")))?,
                orphaned_at_ms: row.try_get("orphaned_at_ms").map_err(db_err)?,
            })
        })
        .collect()
}
