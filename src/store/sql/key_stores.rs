//! Custom key stores (migrations 0006 and 0007, external stores; 0008, row versions): the rows behind
//! `MetadataStore::{insert,update,delete,list}_key_store`.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::{db_err, write_err};
use crate::store::{KeyStoreRecord, OrphanRecord, StoreError, XksProxyRecord};

fn taken(store: &KeyStoreRecord) -> String {
    format!(
        "custom key store name {} or cluster {}",
        store.name, store.cluster_id
    )
}

fn missing(store_id: &str) -> String {
    format!("custom key store {store_id}")
}

fn from_row(row: &AnyRow) -> Result<KeyStoreRecord, StoreError> {
    Ok(KeyStoreRecord {
        store_id: row.try_get("store_id").map_err(db_err)?,
        account: row.try_get("account").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        cluster_id: row.try_get("cluster_id").map_err(db_err)?,
        trust_anchor: row.try_get("trust_anchor").map_err(db_err)?,
        sealed_password: row.try_get("sealed_password").map_err(db_err)?,
        connect: row.try_get::<i64, _>("connect").map_err(db_err)? != 0,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        xks: xks_from_row(row)?,
        row_version: row.try_get("row_version").map_err(db_err)?,
    })
}

/// The proxy columns of an `EXTERNAL_KEY_STORE` row (`None` for an `AWS_CLOUDHSM` one).
fn xks_from_row(row: &AnyRow) -> Result<Option<XksProxyRecord>, StoreError> {
    let store_type: String = row.try_get("store_type").map_err(db_err)?;
    if store_type != EXTERNAL {
        return Ok(None);
    }
    let text = |c: &str| -> Result<String, StoreError> {
        let v: Option<String> = row.try_get(c).map_err(db_err)?;
        v.ok_or_else(|| StoreError::Corrupt(format!("external key store without {c}")))
    };
    let sealed: Option<Vec<u8>> = row.try_get("xks_sealed_secret").map_err(db_err)?;
    Ok(Some(XksProxyRecord {
        endpoint: text("xks_endpoint")?,
        uri_path: text("xks_uri_path")?,
        connectivity: text("xks_connectivity")?,
        access_key_id: text("xks_access_key_id")?,
        sealed_secret: sealed
            .ok_or_else(|| StoreError::Corrupt("external key store without a secret".into()))?,
    }))
}

/// `store_type` of an external store (the column's default is `AWS_CLOUDHSM`).
const EXTERNAL: &str = "EXTERNAL_KEY_STORE";
/// `store_type` of a store on an `[[hsm.cluster]]` device.
const CLOUDHSM: &str = "AWS_CLOUDHSM";

/// The proxy columns of a row (all `None` for an `AWS_CLOUDHSM` store).
#[derive(Default)]
struct XksColumns<'a> {
    store_type: &'static str,
    endpoint: Option<&'a str>,
    path: Option<&'a str>,
    connectivity: Option<&'a str>,
    access_key_id: Option<&'a str>,
    sealed: Option<&'a [u8]>,
}

/// The proxy columns of `s`.
fn xks_columns(s: &KeyStoreRecord) -> XksColumns<'_> {
    match &s.xks {
        None => XksColumns {
            store_type: CLOUDHSM,
            ..XksColumns::default()
        },
        Some(x) => XksColumns {
            store_type: EXTERNAL,
            endpoint: Some(&x.endpoint),
            path: Some(&x.uri_path),
            connectivity: Some(&x.connectivity),
            access_key_id: Some(&x.access_key_id),
            sealed: Some(&x.sealed_secret),
        },
    }
}

pub(super) async fn insert(conn: &mut AnyConnection, s: &KeyStoreRecord) -> Result<(), StoreError> {
    let x = xks_columns(s);
    sqlx::query(
        "INSERT INTO custom_key_stores (store_id, account, name, cluster_id, trust_anchor, \
         sealed_password, connect, created_at_ms, store_type, xks_endpoint, xks_uri_path, \
         xks_connectivity, xks_access_key_id, xks_sealed_secret, row_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&s.store_id)
    .bind(&s.account)
    .bind(&s.name)
    .bind(&s.cluster_id)
    .bind(&s.trust_anchor)
    .bind(&s.sealed_password)
    .bind(i64::from(s.connect))
    .bind(s.created_at_ms)
    .bind(x.store_type)
    .bind(x.endpoint)
    .bind(x.path)
    .bind(x.connectivity)
    .bind(x.access_key_id)
    .bind(x.sealed)
    .bind(s.row_version)
    .execute(&mut *conn)
    .await
    .map_err(|e| write_err(e, || taken(s), || missing(&s.store_id)))?;
    Ok(())
}

/// Compare-and-set on `s.row_version` (raised by one on success): `NotFound` if the store
/// is gone, `Conflict` if it changed meanwhile, `AlreadyExists` if the new name or cluster is
/// taken.
pub(super) async fn update(conn: &mut AnyConnection, s: &KeyStoreRecord) -> Result<(), StoreError> {
    let x = xks_columns(s);
    let done = sqlx::query(
        "UPDATE custom_key_stores SET name = $1, cluster_id = $2, trust_anchor = $3, \
         sealed_password = $4, connect = $5, xks_endpoint = $6, xks_uri_path = $7, \
         xks_connectivity = $8, xks_access_key_id = $9, xks_sealed_secret = $10, \
         row_version = row_version + 1 WHERE store_id = $11 AND row_version = $12",
    )
    .bind(&s.name)
    .bind(&s.cluster_id)
    .bind(&s.trust_anchor)
    .bind(&s.sealed_password)
    .bind(i64::from(s.connect))
    .bind(x.endpoint)
    .bind(x.path)
    .bind(x.connectivity)
    .bind(x.access_key_id)
    .bind(x.sealed)
    .bind(&s.store_id)
    .bind(s.row_version)
    .execute(&mut *conn)
    .await
    .map_err(|e| write_err(e, || taken(s), || missing(&s.store_id)))?;
    if done.rows_affected() > 0 {
        return Ok(());
    }
    let exists = sqlx::query("SELECT store_id FROM custom_key_stores WHERE store_id = $1")
        .bind(&s.store_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    Err(match exists {
        None => StoreError::NotFound(missing(&s.store_id)),
        Some(_) => StoreError::Conflict(format!(
            "custom key store {} is no longer at row version {}",
            s.store_id, s.row_version
        )),
    })
}

pub(super) async fn delete(conn: &mut AnyConnection, store_id: &str) -> Result<(), StoreError> {
    let in_use = || format!("custom key store {store_id} still has keys");
    let done = sqlx::query("DELETE FROM custom_key_stores WHERE store_id = $1")
        .bind(store_id)
        .execute(&mut *conn)
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

/// Every store ordered by (account, creation time, id), or only `only`.
pub(super) async fn list(
    pool: &AnyPool,
    only: Option<&str>,
) -> Result<Vec<KeyStoreRecord>, StoreError> {
    let filter = if only.is_some() {
        "WHERE store_id = $1"
    } else {
        ""
    };
    let sql = format!(
        "SELECT store_id, account, name, cluster_id, trust_anchor, sealed_password, connect, \
         created_at_ms, store_type, xks_endpoint, xks_uri_path, xks_connectivity, \
         xks_access_key_id, xks_sealed_secret, row_version FROM custom_key_stores {filter} \
         ORDER BY account, created_at_ms, store_id"
    );
    let query = sqlx::query(&sql);
    let query = match only {
        Some(id) => query.bind(id),
        None => query,
    };
    query
        .fetch_all(pool)
        .await
        .map_err(db_err)?
        .iter()
        .map(from_row)
        .collect()
}

pub(super) async fn record_orphans(
    conn: &mut AnyConnection,
    orphans: &[OrphanRecord],
) -> Result<(), StoreError> {
    for o in orphans {
        sqlx::query(
            "INSERT INTO orphaned_key_objects (store_id, key_id, version, orphaned_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (store_id, key_id, version) DO NOTHING",
        )
        .bind(&o.store_id)
        .bind(&o.key_id)
        .bind(i64::from(o.version))
        .bind(o.orphaned_at_ms)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

pub(super) async fn list_orphans(pool: &AnyPool) -> Result<Vec<OrphanRecord>, StoreError> {
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
