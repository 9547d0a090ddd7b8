//! `--startup-seed direct`: the startup suite's keys written straight into the world's store,
//! for key counts that CreateKey would take an hour to make (a million).
//!
//! Each key is a copy of one key the daemon made through CreateKey (its account, policy,
//! spec, usage and origin) with a fresh key id and, in wrapped residency, its own blob: the
//! HSM layer generates the key on the device, wraps it under the trusted master and tags it
//! for the new key's version 1 (the same job CreateKey runs). The daemon is stopped meanwhile;
//! the rows are inserted a batch per transaction ([`MetadataStore::seed_keys`]). Token
//! residency is refused: a million token objects is what wrapped residency exists to avoid.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p11kms::hsm::{Hsm, HsmConfig, ObjectId, Pin};
use p11kms::store::{KeyBundle, KeyVersion, MetadataStore, StoredBlob};

/// Keys per store transaction.
const BATCH: usize = 1_000;
/// Concurrent HSM generation jobs.
const TASKS: usize = 8;

/// What one seeding run needs: the token, the store, and the key to copy.
pub struct SeedTarget<'a> {
    pub module: &'a std::path::Path,
    pub token_label: &'a str,
    pub pin: &'a Pin,
    pub config: &'a std::path::Path,
    pub template_key: &'a str,
}

/// Writes `n` keys like `template_key` into the store; answers how many were written.
pub async fn seed(t: &SeedTarget<'_>, n: usize, timeout: Duration) -> Result<usize, String> {
    let config = p11kms::config::Config::load(t.config).map_err(|e| e.to_string())?;
    let store = p11kms::store::open(&config.store)
        .await
        .map_err(|e| format!("open the store: {e}"))?;
    let template = store
        .get_key(t.template_key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the template key is not in the store")?;
    if template
        .versions
        .first()
        .and_then(|v| v.wrapped.as_ref())
        .is_none()
    {
        return Err("--startup-seed direct needs --wrapped (the template key has no blob)".into());
    }
    let mut cfg = HsmConfig::new(t.module, t.token_label, t.pin.clone());
    cfg.wrapped_cache = 16;
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&cfg))
        .await
        .map_err(|e| e.to_string())?
        .map(Arc::new)
        .map_err(|e| format!("open the token: {e}"))?;
    let made = run(&hsm, store.as_ref(), &template, n, timeout).await;
    p11kms::server::close_hsm(&hsm).await;
    made
}

async fn run(
    hsm: &Arc<Hsm>,
    store: &dyn MetadataStore,
    template: &KeyBundle,
    n: usize,
    timeout: Duration,
) -> Result<usize, String> {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<KeyBundle>(4 * BATCH);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (hsm, next, tx, template) = (hsm.clone(), next.clone(), tx.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n && start.elapsed() < timeout {
                let key = one_key(&hsm, &template).await?;
                if tx.send(key).await.is_err() {
                    break;
                }
            }
            Ok::<(), String>(())
        }));
    }
    drop(tx);
    let mut written = 0usize;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(k) = rx.recv().await {
        batch.push((k.key, k.versions.into_iter().next().expect("one version")));
        if batch.len() == BATCH {
            written += flush(store, &mut batch).await?;
            if written.is_multiple_of(50_000) {
                eprintln!(
                    "p11kms-bench: seeded {written} keys directly ({:.0} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    written += flush(store, &mut batch).await?;
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(written)
}

/// A copy of `template` with a fresh key id and its own blob made on the device.
async fn one_key(hsm: &Hsm, template: &KeyBundle) -> Result<KeyBundle, String> {
    let uuid = uuid::Uuid::new_v4();
    let blob = hsm
        .generate_wrapped_aes(ObjectId::new(*uuid.as_bytes(), 1))
        .await
        .map_err(|e| format!("generate a wrapped key: {e}"))?;
    let mut key = template.key.clone();
    key.key_id = uuid.hyphenated().to_string();
    let version = KeyVersion {
        key_id: key.key_id.clone(),
        version: 1,
        created_at_ms: key.created_at_ms,
        wrapped: Some(StoredBlob {
            master: blob.master().0,
            bytes: blob.to_bytes(),
            public_key: None,
        }),
    };
    Ok(KeyBundle {
        key,
        versions: vec![version],
        tags: Vec::new(),
    })
}

async fn flush(
    store: &dyn MetadataStore,
    batch: &mut Vec<(p11kms::store::KeyRecord, KeyVersion)>,
) -> Result<usize, String> {
    if batch.is_empty() {
        return Ok(0);
    }
    store
        .seed_keys(batch)
        .await
        .map_err(|e| format!("store the seeded keys: {e}"))?;
    let n = batch.len();
    batch.clear();
    Ok(n)
}
