//! Custom key stores' connections: the `[[hsm.cluster]]` devices an operator offers, the
//! stores key administrators made on them, and each store's connection life cycle (AWS's
//! `ConnectionState`): connect, disconnect, the watch that notices a device going away, and
//! the automatic reconnect with backoff.
//!
//! Each connected store has its own [`Hsm`] (module instance, token, keeper session, worker
//! pool, handle cache, fault state, counters), so a dead or disconnected store never touches
//! another's requests. The store's password (`KeyStorePassword`, its token's user PIN) is kept
//! only sealed: AES-GCM under a dedicated non-extractable key on the default store's HSM
//! ([`SEALING_KEY`]), with the store id as AAD, so a sealed password moved to another store's
//! row does not open.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroizing;

use super::keystores::{ConnectionErrorCode, ConnectionState};
use super::residency::{self, Blobs, Residency};
use super::service::{KeyStoreChange, ServiceAction, ServiceEventName, ServiceEventSink};
use super::{Clock, KmsError};
use crate::hsm::{Hsm, HsmConfig, HsmError, ObjectId, OpenFailure, Pin};
use crate::store::KeyStoreRecord;
use crate::xks_client::XksProxyClient;

/// The sealing key of store passwords on the default store's token: an AES-256 key with the
/// CMK template (sensitive, never extractable, encrypt and decrypt only). Its key-id bytes
/// spell `p11kms/sealing/1`; reconciliation counts it as accounted for.
pub const SEALING_KEY: ObjectId = ObjectId::new(*b"p11kms/sealing/1", 1);

/// The first wait before retrying a store whose device went away; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two automatic reconnects.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long DisconnectCustomKeyStore waits for the store's sessions to close before it
/// answers (the store stays `DISCONNECTING` until they have).
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);

/// One `[[hsm.cluster]]`: a PKCS#11 device a custom key store can be made on.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `cluster-` plus 11-16 characters.
    pub id: String,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token label.
    pub token_label: String,
    /// The trust anchor's certificates (DER): CreateCustomKeyStore's must be the same.
    pub trust_anchor: Vec<Vec<u8>>,
    /// Where new key material of its stores lives (`[[hsm.cluster]] residency`).
    pub residency: Residency,
}

/// The clusters and the worker-pool settings every store's [`Hsm`] gets (those of `[hsm]`).
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    /// The configured clusters.
    pub clusters: Vec<Cluster>,
    /// The pool settings (its module, token and PIN are replaced per store).
    pub pool: HsmConfig,
    /// How external key stores reach their proxies (`[xks_client]`).
    pub xks: XksClientSetup,
}

/// `[xks_client]` made ready: the TLS trust for proxies and the SigV4 region.
#[derive(Clone)]
pub struct XksClientSetup {
    /// The operator's CA certificates (`ca_file`), the only roots proxies are checked
    /// against.
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// The region requests are signed for (`[kms] region`).
    pub region: String,
}

impl std::fmt::Debug for XksClientSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XksClientSetup")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A store's connection: its state, the error of a failed one, its device while connected.
struct Connection {
    state: ConnectionState,
    error: Option<ConnectionErrorCode>,
    hsm: Option<Arc<Hsm>>,
    /// An external store's proxy client while connected.
    proxy: Option<Arc<XksProxyClient>>,
    /// Bumped by every connect and disconnect: a connection attempt that finds it changed
    /// was overtaken, and closes what it opened.
    attempt: u64,
    /// When the watch retries a store whose device went away, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

/// One custom key store: its record and its connection.
pub struct StoreHandle {
    record: RwLock<KeyStoreRecord>,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (state, error) = self.state();
        f.debug_struct("StoreHandle")
            .field("store_id", &self.record().store_id)
            .field("state", &state)
            .field("error", &error)
            .finish()
    }
}

impl StoreHandle {
    fn new(record: KeyStoreRecord) -> StoreHandle {
        StoreHandle {
            record: RwLock::new(record),
            conn: Mutex::new(Connection {
                state: ConnectionState::Disconnected,
                error: None,
                hsm: None,
                proxy: None,
                attempt: 0,
                retry: None,
            }),
        }
    }

    /// The stored record (a copy).
    pub fn record(&self) -> KeyStoreRecord {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_record(&self, record: KeyStoreRecord) {
        *self.record.write().unwrap_or_else(|p| p.into_inner()) = record;
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection state and, when `FAILED`, its error code.
    pub fn state(&self) -> (ConnectionState, Option<ConnectionErrorCode>) {
        let c = self.conn();
        (c.state, c.error)
    }

    /// Whether this is an `EXTERNAL_KEY_STORE` store.
    pub fn is_external(&self) -> bool {
        self.record
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .xks
            .is_some()
    }

    /// An external store's proxy client while it is `CONNECTED`.
    pub fn connected_proxy(&self) -> Option<Arc<XksProxyClient>> {
        let c = self.conn();
        (c.state == ConnectionState::Connected)
            .then(|| c.proxy.clone())
            .flatten()
    }

    /// The store's device while it is `CONNECTED`.
    pub fn connected_hsm(&self) -> Option<Arc<Hsm>> {
        let c = self.conn();
        (c.state == ConnectionState::Connected)
            .then(|| c.hsm.clone())
            .flatten()
    }
}

/// The registry of custom key stores and their connections.
pub struct KeyStores {
    default_hsm: Arc<Hsm>,
    /// The engine's one blob registry: every store's device reads its blobs from it
    /// (ObjectIds are unique across stores).
    blobs: Arc<Blobs>,
    clock: Arc<dyn Clock>,
    sink: OnceLock<Arc<dyn ServiceEventSink>>,
    setup: OnceLock<ClusterSetup>,
    stores: RwLock<BTreeMap<String, Arc<StoreHandle>>>,
    /// Set once the sealing key is known to be on the token.
    sealing: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for KeyStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStores")
            .field("stores", &self.all().len())
            .finish_non_exhaustive()
    }
}

impl KeyStores {
    pub(crate) fn new(
        default_hsm: Arc<Hsm>,
        blobs: Arc<Blobs>,
        clock: Arc<dyn Clock>,
    ) -> Arc<KeyStores> {
        Arc::new(KeyStores {
            default_hsm,
            blobs,
            clock,
            sink: OnceLock::new(),
            setup: OnceLock::new(),
            stores: RwLock::new(BTreeMap::new()),
            sealing: tokio::sync::OnceCell::new(),
        })
    }

    /// Wires the sink that audits connection state changes (once).
    pub(crate) fn set_sink(&self, sink: Arc<dyn ServiceEventSink>) {
        let _ = self.sink.set(sink);
    }

    /// Declares the configured clusters (once; without it no cluster exists).
    pub(crate) fn configure(&self, setup: ClusterSetup) {
        let _ = self.setup.set(setup);
    }

    /// How external stores reach their proxies (`None` until configured).
    pub(crate) fn xks_setup(&self) -> Option<XksClientSetup> {
        self.setup.get().map(|s| s.xks.clone())
    }

    /// The configured cluster `id`.
    pub fn cluster(&self, id: &str) -> Option<Cluster> {
        let setup = self.setup.get()?;
        setup.clusters.iter().find(|c| c.id == id).cloned()
    }

    /// The residency of store `id`'s cluster: `Token` for an external store, a store that
    /// does not exist, or one whose cluster is no longer configured.
    pub(crate) fn store_residency(&self, id: &str) -> Residency {
        let Some(store) = self.get(id) else {
            return Residency::Token;
        };
        if store.is_external() {
            return Residency::Token;
        }
        self.cluster(&store.record().cluster_id)
            .map_or(Residency::Token, |c| c.residency)
    }

    /// Loads the stored stores (at start-up), all `DISCONNECTED`.
    pub(crate) fn load(&self, records: Vec<KeyStoreRecord>) {
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        for r in records {
            stores.insert(r.store_id.clone(), Arc::new(StoreHandle::new(r)));
        }
    }

    /// Every store, ordered by (account, creation time, id).
    pub fn all(&self) -> Vec<Arc<StoreHandle>> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = stores.values().cloned().collect();
        all.sort_by_key(|h| {
            let r = h.record();
            (r.account, r.created_at_ms, r.store_id)
        });
        all
    }

    /// The store `id`, in any account.
    pub fn get(&self, id: &str) -> Option<Arc<StoreHandle>> {
        let stores = self.stores.read().unwrap_or_else(|p| p.into_inner());
        stores.get(id).cloned()
    }

    pub(crate) fn insert(&self, record: KeyStoreRecord) -> Arc<StoreHandle> {
        let handle = Arc::new(StoreHandle::new(record.clone()));
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        stores.insert(record.store_id, handle.clone());
        handle
    }

    pub(crate) fn remove(&self, id: &str) {
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        stores.remove(id);
    }

    /// Every store's (id, connection state), for metrics and health.
    pub fn states(&self) -> Vec<(String, ConnectionState)> {
        self.all()
            .iter()
            .map(|h| (h.record().store_id, h.state().0))
            .collect()
    }

    /// Closes every store's device (daemon shutdown). Blocking.
    pub fn shutdown(&self) {
        for h in self.all() {
            let hsm = h.conn().hsm.take();
            if let Some(hsm) = hsm {
                hsm.shutdown();
            }
        }
    }

    // ------------------------------------------------------------------ the sealed password

    /// Seals `password` for store `store_id` on the default HSM: IV || ciphertext || tag.
    pub(crate) async fn seal(
        &self,
        store_id: &str,
        password: &Zeroizing<String>,
    ) -> Result<Vec<u8>, KmsError> {
        self.ensure_sealing_key().await?;
        let aad = store_id.as_bytes().to_vec();
        let plaintext = Zeroizing::new(password.as_bytes().to_vec());
        let sealed = self
            .default_hsm
            .encrypt_gcm(SEALING_KEY, plaintext, Box::new(move |_| aad.clone()))
            .await?;
        let mut blob = sealed.iv.to_vec();
        blob.extend_from_slice(&sealed.ciphertext_and_tag);
        Ok(blob)
    }

    /// Opens a sealed password (or proxy secret) of store `store_id`.
    pub(crate) async fn unseal(&self, store_id: &str, blob: &[u8]) -> Result<Pin, KmsError> {
        let (iv, ct) = blob.split_at_checked(12).ok_or_else(|| {
            KmsError::Internal(format!("the sealed password of {store_id} is malformed"))
        })?;
        let iv: [u8; 12] = iv.try_into().unwrap_or_default();
        let plain = self
            .default_hsm
            .decrypt_gcm(SEALING_KEY, iv, ct.to_vec(), store_id.as_bytes().to_vec())
            .await?;
        let text = std::str::from_utf8(&plain).map_err(|_| {
            KmsError::Internal(format!("the sealed password of {store_id} is not text"))
        })?;
        Ok(Pin::new(text))
    }

    /// Makes the sealing key once per process; the search and the creation are one exclusive
    /// HSM job ([`Hsm::ensure_aes_key`]), so nodes sharing the token make one key.
    async fn ensure_sealing_key(&self) -> Result<(), KmsError> {
        self.sealing
            .get_or_try_init(|| async {
                if self.default_hsm.ensure_aes_key(SEALING_KEY).await? {
                    tracing::info!("created the sealing key of custom key store passwords");
                }
                Ok::<(), KmsError>(())
            })
            .await
            .map(|_| ())
    }

    // ------------------------------------------------------------------ connect, disconnect

    /// Starts connecting `handle` (ConnectCustomKeyStore, a restart, the watch's retry):
    /// `CONNECTING` now, then `CONNECTED` or `FAILED` when the attempt ends, in a task.
    pub(crate) fn start_connect(self: &Arc<Self>, handle: &Arc<StoreHandle>) {
        let attempt = {
            let mut c = handle.conn();
            c.attempt += 1;
            c.state = ConnectionState::Connecting;
            c.error = None;
            c.attempt
        };
        let (me, handle) = (self.clone(), handle.clone());
        tokio::spawn(async move {
            let opened = match handle.is_external() {
                true => me.open_proxy(&handle).await.map(Opened::Proxy),
                false => me.open_store(&handle).await.map(Opened::Device),
            };
            me.finish_connect(&handle, attempt, opened).await;
        });
    }

    /// Opens the store's device and logs in with its unsealed password.
    async fn open_store(&self, handle: &StoreHandle) -> Result<Arc<Hsm>, ConnectionErrorCode> {
        let record = handle.record();
        let Some(cluster) = self.cluster(&record.cluster_id) else {
            return Err(ConnectionErrorCode::ClusterNotFound);
        };
        let pin = self
            .unseal(&record.store_id, &record.sealed_password)
            .await
            .map_err(|e| {
                tracing::error!(store = %record.store_id, error = %e, "cannot unseal the store password");
                ConnectionErrorCode::InternalError
            })?;
        let mut cfg = self
            .setup
            .get()
            .map(|s| s.pool.clone())
            .ok_or(ConnectionErrorCode::ClusterNotFound)?;
        cfg.module = cluster.module.clone();
        cfg.token_label = cluster.token_label.clone();
        cfg.pin = pin;
        let opened = tokio::task::spawn_blocking(move || Hsm::open(&cfg)).await;
        let hsm = match opened {
            Ok(Ok(hsm)) => hsm,
            Ok(Err(e)) => return Err(error_code(&record.store_id, &e)),
            Err(_) => return Err(ConnectionErrorCode::InternalError),
        };
        match self.ready_device(&hsm, &cluster, &record.store_id).await {
            Ok(()) => Ok(hsm),
            Err(code) => {
                close(hsm).await;
                Err(code)
            }
        }
    }

    /// Readies a store's opened device for its cluster's residency: it reads blobs from the
    /// engine's registry (whatever the residency, so keys wrapped before a switch keep
    /// working), and on a `wrapped` cluster its master key is readied
    /// ([`residency::start_wrapped`]: an untrusted `v1` on first connect). An untrusted
    /// master connects the store; only its CreateKey fails until the ceremony has run.
    async fn ready_device(
        &self,
        hsm: &Hsm,
        cluster: &Cluster,
        store_id: &str,
    ) -> Result<(), ConnectionErrorCode> {
        hsm.set_blob_source(self.blobs.clone());
        if cluster.residency != Residency::Wrapped {
            return Ok(());
        }
        match residency::start_wrapped(hsm).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(store = %store_id, cluster = %cluster.id, error = %e, "cannot ready the master key of a wrapped-residency cluster");
                Err(ConnectionErrorCode::InternalError)
            }
        }
    }

    /// An external store's proxy client, its health checked as AWS checks it on connect.
    async fn open_proxy(
        &self,
        handle: &StoreHandle,
    ) -> Result<Arc<XksProxyClient>, ConnectionErrorCode> {
        let record = handle.record();
        let client = self.proxy_client(&record).await.map_err(|e| {
            tracing::error!(store = %record.store_id, error = %e, "cannot make the store's proxy client");
            ConnectionErrorCode::InternalError
        })?;
        let client = Arc::new(client);
        let meta = super::external::health_metadata("ConnectCustomKeyStore");
        match client.health(&meta).await {
            Ok(()) => Ok(client),
            Err(e) => Err(super::external::connection_code(&record.store_id, &e)),
        }
    }

    /// The proxy client of an external store's record: its credential unsealed.
    pub(crate) async fn proxy_client(
        &self,
        record: &KeyStoreRecord,
    ) -> Result<XksProxyClient, KmsError> {
        let (Some(xks), Some(setup)) = (&record.xks, self.setup.get()) else {
            return Err(KmsError::Internal(format!(
                "{} is not an external key store, or [xks_client] is not set up",
                record.store_id
            )));
        };
        let secret = self.unseal(&record.store_id, &xks.sealed_secret).await?;
        super::external::client_for(xks, secret, &setup.xks)
    }

    async fn finish_connect(
        &self,
        handle: &StoreHandle,
        attempt: u64,
        opened: Result<Opened, ConnectionErrorCode>,
    ) {
        let stale = {
            let mut c = handle.conn();
            if c.attempt != attempt {
                opened.ok()
            } else {
                match opened {
                    Ok(Opened::Device(hsm)) => {
                        c.state = ConnectionState::Connected;
                        c.hsm = Some(hsm);
                        c.retry = None;
                    }
                    Ok(Opened::Proxy(proxy)) => {
                        c.state = ConnectionState::Connected;
                        c.proxy = Some(proxy);
                        c.retry = None;
                    }
                    Err(code) => {
                        c.state = ConnectionState::Failed;
                        c.error = Some(code);
                        c.retry = retry_after(code, c.retry);
                    }
                }
                None
            }
        };
        match stale {
            // A disconnect overtook this attempt: close what it opened.
            Some(Opened::Device(hsm)) => close(hsm).await,
            Some(Opened::Proxy(_)) => {}
            None => self.report(handle).await,
        }
    }

    /// Starts disconnecting `handle` (DisconnectCustomKeyStore): `DISCONNECTING` now, then
    /// `DISCONNECTED` once its sessions are closed, in a task; [`disconnected`] waits for it.
    pub(crate) fn start_disconnect(
        self: &Arc<Self>,
        handle: &Arc<StoreHandle>,
    ) -> tokio::task::JoinHandle<()> {
        let (attempt, hsm) = {
            let mut c = handle.conn();
            c.attempt += 1;
            c.state = ConnectionState::Disconnecting;
            c.error = None;
            c.retry = None;
            c.proxy = None;
            (c.attempt, c.hsm.take())
        };
        let (me, h) = (self.clone(), handle.clone());
        tokio::spawn(async move {
            if let Some(hsm) = hsm {
                close(hsm).await;
            }
            let done = {
                let mut c = h.conn();
                let done = c.attempt == attempt;
                if done {
                    c.state = ConnectionState::Disconnected;
                }
                done
            };
            if done {
                me.report(&h).await;
            }
        })
    }

    /// One round of the watch: a connected store whose device stopped answering goes
    /// `FAILED` with `NETWORK_ERRORS`; a store failed so is reconnected when its wait is over.
    pub async fn watch_once(self: &Arc<Self>) {
        for handle in self.all() {
            let (state, hsm, proxy, due) = {
                let c = handle.conn();
                let due = c.retry.is_some_and(|(at, _)| at <= Instant::now());
                (c.state, c.hsm.clone(), c.proxy.clone(), due)
            };
            match (state, hsm) {
                (ConnectionState::Connected, Some(hsm)) => self.probe(&handle, hsm).await,
                (ConnectionState::Connected, None) if proxy.is_some() => {
                    self.probe_proxy(&handle, proxy).await
                }
                (ConnectionState::Failed, _) if due && handle.record().connect => {
                    tracing::info!(store = %handle.record().store_id, "reconnecting custom key store");
                    self.start_connect(&handle);
                }
                _ => {}
            }
        }
    }

    /// The watch's health check of a connected external store: a failed one makes the store
    /// `FAILED` with the failure's code (retried by itself when the proxy may come back).
    async fn probe_proxy(&self, handle: &StoreHandle, proxy: Option<Arc<XksProxyClient>>) {
        let Some(proxy) = proxy else {
            return;
        };
        let meta = super::external::health_metadata("KmsHealthCheck");
        let Err(e) = proxy.health(&meta).await else {
            return;
        };
        proxy.forget_connections();
        let code = super::external::connection_code(&handle.record().store_id, &e);
        let failed = {
            let mut c = handle.conn();
            let same = c.proxy.as_ref().is_some_and(|p| Arc::ptr_eq(p, &proxy));
            if same && c.state == ConnectionState::Connected {
                c.state = ConnectionState::Failed;
                c.error = Some(code);
                c.retry = retry_after(code, None);
                c.proxy = None;
            }
            same
        };
        if failed {
            self.report(handle).await;
        }
    }

    async fn probe(&self, handle: &StoreHandle, hsm: Arc<Hsm>) {
        let Err(e) = hsm.ping().await else {
            return;
        };
        tracing::warn!(store = %handle.record().store_id, error = %e, "custom key store device does not answer");
        let gone = {
            let mut c = handle.conn();
            let same = c.hsm.as_ref().is_some_and(|h| Arc::ptr_eq(h, &hsm));
            if same && c.state == ConnectionState::Connected {
                c.state = ConnectionState::Failed;
                c.error = Some(ConnectionErrorCode::NetworkErrors);
                c.retry = retry_after(ConnectionErrorCode::NetworkErrors, None);
                c.hsm.take()
            } else {
                None
            }
        };
        if let Some(old) = gone {
            close(old).await;
            self.report(handle).await;
        }
    }

    /// Audits the store's current connection state.
    async fn report(&self, handle: &StoreHandle) {
        let (state, error) = handle.state();
        let record = handle.record();
        tracing::info!(store = %record.store_id, state = state.as_str(), error = error.map(|e| e.as_str()), "custom key store connection state");
        let Some(sink) = self.sink.get() else {
            return;
        };
        let action = store_action(&record, state, error, None, self.clock.now_ms());
        if let Err(e) = sink.record(&action).await {
            tracing::error!(store = %record.store_id, error = %e, "could not audit a custom key store state change");
        }
    }

    /// Audits that a key's object was left on a store's device (the sweeper deleted the key
    /// while the store was not connected).
    pub(crate) async fn report_orphan(&self, handle: &StoreHandle, object: ObjectId) {
        let (state, error) = handle.state();
        let record = handle.record();
        let action = store_action(
            &record,
            state,
            error,
            Some(object.to_string()),
            self.clock.now_ms(),
        );
        tracing::warn!(store = %record.store_id, object = %object, "key object left on a custom key store device");
        if let Some(sink) = self.sink.get() {
            if let Err(e) = sink.record(&action).await {
                tracing::error!(store = %record.store_id, error = %e, "could not audit an orphaned key object");
            }
        }
    }
}

/// The service action of a store's state (or of an object left on it).
fn store_action(
    record: &KeyStoreRecord,
    state: ConnectionState,
    error: Option<ConnectionErrorCode>,
    orphaned_object: Option<String>,
    at_ms: i64,
) -> ServiceAction {
    ServiceAction {
        event_name: ServiceEventName::CustomKeyStoreStateChange,
        key_id: String::new(),
        key_arn: String::new(),
        account: record.account.clone(),
        key_version: None,
        error: None,
        at_ms,
        key_store: Some(KeyStoreChange {
            store_id: record.store_id.clone(),
            state: state.as_str(),
            error_code: error.map(|e| e.as_str()),
            orphaned_object,
        }),
    }
}

/// The next automatic retry of a store failed with `code`: only a device or proxy that went
/// away (or answered oddly) is retried by itself (a wrong or locked password, a refused
/// credential or a bad configuration needs the key administrator).
fn retry_after(
    code: ConnectionErrorCode,
    previous: Option<(Instant, Duration)>,
) -> Option<(Instant, Duration)> {
    if !code.is_transient() {
        return None;
    }
    let wait = previous.map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
    Some((Instant::now() + wait, wait))
}

/// The `ConnectionErrorCode` of a failed open or login.
fn error_code(store_id: &str, e: &HsmError) -> ConnectionErrorCode {
    tracing::warn!(store = %store_id, error = %e, "custom key store connection failed");
    match e.open_failure() {
        OpenFailure::BadPin => ConnectionErrorCode::InvalidCredentials,
        OpenFailure::PinLocked => ConnectionErrorCode::UserLockedOut,
        OpenFailure::TokenAbsent => ConnectionErrorCode::ClusterNotFound,
        OpenFailure::DeviceGone => ConnectionErrorCode::NetworkErrors,
        OpenFailure::Other => ConnectionErrorCode::InternalError,
    }
}

/// What a connection attempt opened: a device, or an external store's proxy client.
enum Opened {
    Device(Arc<Hsm>),
    Proxy(Arc<XksProxyClient>),
}

/// Waits for a disconnection ([`KeyStores::start_disconnect`]) to finish, at most
/// [`DISCONNECT_WAIT`] (the store stays `DISCONNECTING` until its sessions are closed).
pub(crate) async fn disconnected(task: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(DISCONNECT_WAIT, task).await;
}

/// Closes a store's device off the async threads (joining its workers waits for their calls).
async fn close(hsm: Arc<Hsm>) {
    if let Err(e) = tokio::task::spawn_blocking(move || hsm.shutdown()).await {
        tracing::error!(error = %e, "closing a custom key store device failed");
    }
}
