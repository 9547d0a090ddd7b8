//! Custom key stores: CreateCustomKeyStore, ConnectCustomKeyStore, DisconnectCustomKeyStore,
//! UpdateCustomKeyStore, DeleteCustomKeyStore, DescribeCustomKeyStores.
//!
//! A custom key store of type `AWS_CLOUDHSM` is one `[[hsm.cluster]]` PKCS#11 device that a
//! key administrator registers with its password (the token's user PIN). Keys created in it
//! (`Origin: AWS_CLOUDHSM`) live on that device; the connection life cycle is in
//! [`super::connections`]. A store of type `EXTERNAL_KEY_STORE` is an XKS proxy reached with
//! a SigV4 credential; its members, checks and keys' double encryption are in
//! [`super::external`]. Every operation here is authorized by identity policy on `*`, as
//! in AWS, before anything is looked up, sealed or changed.

use std::sync::Arc;

use uuid::Uuid;
use zeroize::Zeroizing;

use super::authz::AuthzRequest;
use super::connections::{Cluster, StoreHandle};
use super::external::{XksMembers, XksProxyConfiguration};
use super::locks::{ChangeGuard, LockName};
use super::operation::{redacted_debug, request_parameters, response_elements, Empty, Page};
use super::{validate, Kms, KmsError};
use crate::identity::Caller;
use crate::store::KeyStoreRecord;
use crate::wire_enum::wire_enum;

/// How often an update is prepared again when its store changed while it was prepared.
const UPDATE_ATTEMPTS: usize = 3;

/// An update of a store, prepared on a snapshot: the record to write and whether the
/// store must reconnect with a new credential.
pub(super) struct UpdatePlan {
    pub(super) record: KeyStoreRecord,
    pub(super) reconnect: bool,
}

/// At most this many custom key stores per account (AWS's default quota).
pub const MAX_KEY_STORES_PER_ACCOUNT: usize = 10;

wire_enum!(
    /// A custom key store's connection state (the model's `ConnectionStateType`).
    ConnectionState {
        Connected = "CONNECTED",
        Connecting = "CONNECTING",
        Failed = "FAILED",
        Disconnected = "DISCONNECTED",
        Disconnecting = "DISCONNECTING",
    }
);

wire_enum!(
    /// Why a custom key store is `FAILED` (the model's `ConnectionErrorCodeType`: the values a
    /// PKCS#11 device or an XKS proxy can cause).
    ConnectionErrorCode {
        InvalidCredentials = "INVALID_CREDENTIALS",
        ClusterNotFound = "CLUSTER_NOT_FOUND",
        NetworkErrors = "NETWORK_ERRORS",
        InternalError = "INTERNAL_ERROR",
        UserLockedOut = "USER_LOCKED_OUT",
        XksProxyAccessDenied = "XKS_PROXY_ACCESS_DENIED",
        XksProxyNotReachable = "XKS_PROXY_NOT_REACHABLE",
        XksProxyInvalidResponse = "XKS_PROXY_INVALID_RESPONSE",
        XksProxyInvalidConfiguration = "XKS_PROXY_INVALID_CONFIGURATION",
        XksProxyTimedOut = "XKS_PROXY_TIMED_OUT",
        XksProxyInvalidTlsConfiguration = "XKS_PROXY_INVALID_TLS_CONFIGURATION",
    }
);

impl ConnectionErrorCode {
    /// Whether the cause may go away by itself (a device or proxy that went away or answered
    /// oddly): such a store is reconnected by the watch, and ConnectCustomKeyStore retries it
    /// without a disconnection first.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ConnectionErrorCode::NetworkErrors
                | ConnectionErrorCode::XksProxyNotReachable
                | ConnectionErrorCode::XksProxyTimedOut
                | ConnectionErrorCode::XksProxyInvalidResponse
        )
    }
}

wire_enum!(
    /// The kind of a custom key store (the model's `CustomKeyStoreType`).
    CustomKeyStoreType {
        AwsCloudhsm = "AWS_CLOUDHSM",
        ExternalKeyStore = "EXTERNAL_KEY_STORE",
    }
);

/// CreateCustomKeyStore input.
#[derive(Clone, Default)]
pub struct CreateCustomKeyStoreRequest {
    pub custom_key_store_name: String,
    pub cloud_hsm_cluster_id: Option<String>,
    pub trust_anchor_certificate: Option<String>,
    pub key_store_password: Option<Zeroizing<String>>,
    pub custom_key_store_type: Option<CustomKeyStoreType>,
    /// The members of an `EXTERNAL_KEY_STORE` store.
    pub xks: XksMembers,
}

/// CreateCustomKeyStore output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateCustomKeyStoreResponse {
    pub custom_key_store_id: String,
}

/// ConnectCustomKeyStore input.
#[derive(Debug, Clone, Default)]
pub struct ConnectCustomKeyStoreRequest {
    pub custom_key_store_id: String,
}

/// DisconnectCustomKeyStore input.
#[derive(Debug, Clone, Default)]
pub struct DisconnectCustomKeyStoreRequest {
    pub custom_key_store_id: String,
}

/// DeleteCustomKeyStore input.
#[derive(Debug, Clone, Default)]
pub struct DeleteCustomKeyStoreRequest {
    pub custom_key_store_id: String,
}

/// UpdateCustomKeyStore input.
#[derive(Clone, Default)]
pub struct UpdateCustomKeyStoreRequest {
    pub custom_key_store_id: String,
    pub new_custom_key_store_name: Option<String>,
    pub key_store_password: Option<Zeroizing<String>>,
    pub cloud_hsm_cluster_id: Option<String>,
    /// The members of an `EXTERNAL_KEY_STORE` store.
    pub xks: XksMembers,
}

/// DescribeCustomKeyStores input: one store by id or by name, or all of them.
#[derive(Debug, Clone, Default)]
pub struct DescribeCustomKeyStoresRequest {
    pub custom_key_store_id: Option<String>,
    pub custom_key_store_name: Option<String>,
    /// `Limit` and `Marker`.
    pub page: Page,
}

/// DescribeCustomKeyStores output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeCustomKeyStoresResponse {
    pub custom_key_stores: Vec<CustomKeyStoresListEntry>,
    pub next_marker: Option<String>,
}

/// One custom key store as DescribeCustomKeyStores lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomKeyStoresListEntry {
    pub custom_key_store_id: String,
    pub custom_key_store_name: String,
    pub cloud_hsm_cluster_id: String,
    pub trust_anchor_certificate: String,
    pub connection_state: ConnectionState,
    pub connection_error_code: Option<ConnectionErrorCode>,
    pub creation_date_ms: i64,
    pub custom_key_store_type: CustomKeyStoreType,
    /// An external store's proxy settings (never its secret).
    pub xks_proxy_configuration: Option<XksProxyConfiguration>,
}

redacted_debug!(
    CreateCustomKeyStoreRequest {
        custom_key_store_name, cloud_hsm_cluster_id, custom_key_store_type, xks,
        key_store_password: redacted, ..
    };
    UpdateCustomKeyStoreRequest {
        custom_key_store_id, new_custom_key_store_name, cloud_hsm_cluster_id, xks,
        key_store_password: redacted
    }
);

// The password is never recorded: its type (`Zeroizing`) has no audit rule.
request_parameters! {
    CreateCustomKeyStoreRequest {
        custom_key_store_name, cloud_hsm_cluster_id, trust_anchor_certificate,
        custom_key_store_type, xks,
    };
    ConnectCustomKeyStoreRequest { custom_key_store_id };
    DisconnectCustomKeyStoreRequest { custom_key_store_id };
    DeleteCustomKeyStoreRequest { custom_key_store_id };
    UpdateCustomKeyStoreRequest {
        custom_key_store_id, new_custom_key_store_name, cloud_hsm_cluster_id, xks,
    };
    DescribeCustomKeyStoresRequest { custom_key_store_id, custom_key_store_name, page };
}

response_elements! {
    CreateCustomKeyStoreResponse { custom_key_store_id };
}

impl crate::core::operation::ResponseElements for DescribeCustomKeyStoresResponse {}

/// A new store id: `cks-` and 17 lowercase hex digits, as AWS's.
pub(super) fn new_store_id() -> String {
    let hex = Uuid::new_v4().simple().to_string();
    format!("cks-{}", &hex[..17])
}

/// The CustomKeyStoreNotFoundException of an id or name the account has no store under.
fn not_found(what: &str) -> KmsError {
    KmsError::CustomKeyStoreNotFound(format!("Custom key store '{what}' does not exist."))
}

/// Checks a password's length (the model's 7-32) without ever echoing it.
fn check_password(password: &Zeroizing<String>) -> Result<(), KmsError> {
    let n = password.chars().count();
    if (7..=32).contains(&n) {
        Ok(())
    } else {
        Err(KmsError::validation(
            "keyStorePassword",
            "Member must have length between 7 and 32",
        ))
    }
}

/// Checks a store name (1-256 characters).
pub(super) fn check_name(member: &str, name: &str) -> Result<(), KmsError> {
    let n = name.chars().count();
    if (1..=256).contains(&n) {
        Ok(())
    } else {
        Err(KmsError::validation(
            member,
            "Member must have length between 1 and 256",
        ))
    }
}

/// Checks a store id's length (the model's 1-64).
fn check_store_id(id: &str) -> Result<(), KmsError> {
    if (1..=64).contains(&id.chars().count()) {
        Ok(())
    } else {
        Err(KmsError::validation(
            "customKeyStoreId",
            "Member must have length between 1 and 64",
        ))
    }
}

/// Checks a cluster id's form (the model's pattern).
fn check_cluster_id(id: &str) -> Result<(), KmsError> {
    if crate::config::ClusterSection::is_cluster_id(id) {
        Ok(())
    } else {
        Err(KmsError::validation(
            "cloudHsmClusterId",
            "Member must satisfy regular expression pattern: cluster-[2-7a-zA-Z]{11,16}",
        ))
    }
}

/// Whether `pem` holds exactly the cluster's trust anchor certificates.
fn trust_anchor_matches(cluster: &Cluster, pem: &str) -> bool {
    use rustls_pki_types::pem::PemObject;
    let given: Result<Vec<_>, _> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    given.is_ok_and(|certs| {
        certs.len() == cluster.trust_anchor.len()
            && certs
                .iter()
                .zip(&cluster.trust_anchor)
                .all(|(a, b)| a.as_ref() == b.as_slice())
    })
}

/// The list entry of a store.
fn entry(handle: &StoreHandle) -> CustomKeyStoresListEntry {
    let r = handle.record();
    let (state, error) = handle.state();
    let xks_proxy_configuration = r.xks.as_ref().map(super::external::configuration);
    let (custom_key_store_type, cloud_hsm_cluster_id) = match &r.xks {
        Some(_) => (CustomKeyStoreType::ExternalKeyStore, String::new()),
        None => (CustomKeyStoreType::AwsCloudhsm, r.cluster_id),
    };
    CustomKeyStoresListEntry {
        custom_key_store_id: r.store_id,
        custom_key_store_name: r.name,
        cloud_hsm_cluster_id,
        trust_anchor_certificate: r.trust_anchor,
        connection_state: state,
        connection_error_code: error,
        creation_date_ms: r.created_at_ms,
        custom_key_store_type,
        xks_proxy_configuration,
    }
}

/// The members CreateCustomKeyStore needs for an `AWS_CLOUDHSM` store, checked.
struct NewStore<'a> {
    cluster_id: &'a str,
    trust_anchor: &'a str,
    password: &'a Zeroizing<String>,
}

impl<'a> NewStore<'a> {
    fn of(req: &'a CreateCustomKeyStoreRequest) -> Result<NewStore<'a>, KmsError> {
        check_name("customKeyStoreName", &req.custom_key_store_name)?;
        if req.xks.any() {
            return Err(KmsError::Validation(
                "The XksProxy* members are valid only for a custom key store of type \
                 EXTERNAL_KEY_STORE."
                    .into(),
            ));
        }
        let missing = |m: &str| {
            KmsError::Validation(format!(
                "{m} is required for a custom key store of type AWS_CLOUDHSM."
            ))
        };
        let cluster_id = req
            .cloud_hsm_cluster_id
            .as_deref()
            .ok_or_else(|| missing("CloudHsmClusterId"))?;
        let trust_anchor = req
            .trust_anchor_certificate
            .as_deref()
            .ok_or_else(|| missing("TrustAnchorCertificate"))?;
        let password = req
            .key_store_password
            .as_ref()
            .ok_or_else(|| missing("KeyStorePassword"))?;
        check_cluster_id(cluster_id)?;
        if trust_anchor.is_empty() || trust_anchor.len() > 5000 {
            return Err(KmsError::validation(
                "trustAnchorCertificate",
                "Member must have length between 1 and 5000",
            ));
        }
        check_password(password)?;
        Ok(NewStore {
            cluster_id,
            trust_anchor,
            password,
        })
    }
}

impl Kms {
    /// The store `id` of the caller's account, or CustomKeyStoreNotFoundException.
    pub(crate) fn own_store(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Arc<StoreHandle>, KmsError> {
        self.key_stores
            .get(id)
            .filter(|h| h.record().account == caller.account)
            .ok_or_else(|| not_found(id))
    }

    /// The start of every operation on one store: its id checked, the caller authorized for
    /// `action` on `*`, the change lock taken, and the store found in the caller's account.
    async fn store_for(
        &self,
        caller: &Caller,
        action: &'static str,
        id: &str,
    ) -> Result<(ChangeGuard<'_>, Arc<StoreHandle>), KmsError> {
        check_store_id(id)?;
        self.authorize(caller, AuthzRequest::new(action, "*"))?;
        let guard = self.lock_stores_of(&caller.account).await;
        Ok((guard, self.own_store(caller, id)?))
    }

    /// Takes the change lock of the account's custom key stores: their names and the
    /// account's quota are checked and changed under it, in this process. Across nodes, and
    /// for clusters (which span accounts), the database's uniqueness answers AlreadyExists.
    pub(super) async fn lock_stores_of(&self, account: &str) -> ChangeGuard<'_> {
        self.key_locks
            .lock(LockName::KeyStoresOf(account.to_string()))
            .await
    }

    /// Refuses a name another store of the account has, and a cluster another store uses.
    pub(super) fn check_unique(
        &self,
        account: &str,
        except: Option<&str>,
        name: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<(), KmsError> {
        for h in self.key_stores.all() {
            let r = h.record();
            if except == Some(r.store_id.as_str()) {
                continue;
            }
            if cluster == Some(r.cluster_id.as_str()) {
                return Err(KmsError::CloudHsmClusterInUse(format!(
                    "Cluster {} is already associated with a custom key store.",
                    r.cluster_id
                )));
            }
            if r.account == account && name == Some(r.name.as_str()) {
                return Err(KmsError::CustomKeyStoreNameInUse(format!(
                    "Custom key store name '{}' is already in use in this account.",
                    r.name
                )));
            }
        }
        Ok(())
    }

    /// CreateCustomKeyStore: registers a configured cluster as a `DISCONNECTED` store, its
    /// password sealed on the default store's HSM.
    pub async fn create_custom_key_store(
        &self,
        caller: &Caller,
        req: CreateCustomKeyStoreRequest,
    ) -> Result<CreateCustomKeyStoreResponse, KmsError> {
        if req.custom_key_store_type == Some(CustomKeyStoreType::ExternalKeyStore) {
            let (_guard, record) = self.new_external_store(caller, &req).await?;
            return self.insert_new_store(record).await;
        }
        let new = NewStore::of(&req)?;
        self.authorize(caller, AuthzRequest::new("kms:CreateCustomKeyStore", "*"))?;
        let cluster = self.key_stores.cluster(new.cluster_id).ok_or_else(|| {
            KmsError::CloudHsmClusterNotFound(format!(
                "Cluster {} is not one of this daemon's [[hsm.cluster]] entries.",
                new.cluster_id
            ))
        })?;
        if !trust_anchor_matches(&cluster, new.trust_anchor) {
            return Err(KmsError::IncorrectTrustAnchor(format!(
                "The trust anchor certificate is not the trust anchor of cluster {}.",
                cluster.id
            )));
        }
        let name = req.custom_key_store_name.as_str();
        // Checked at once for a clear answer, sealed on the HSM without the lock, checked
        // again under it.
        let unique = || -> Result<(), KmsError> {
            self.check_unique(&caller.account, None, Some(name), Some(&cluster.id))?;
            self.check_quota(&caller.account)
        };
        unique()?;
        let store_id = new_store_id();
        let sealed_password = self.key_stores.seal(&store_id, new.password).await?;
        let _guard = self.lock_stores_of(&caller.account).await;
        unique()?;
        let record = KeyStoreRecord {
            sealed_password,
            store_id: store_id.clone(),
            account: caller.account.clone(),
            name: name.to_string(),
            cluster_id: cluster.id,
            trust_anchor: new.trust_anchor.to_string(),
            connect: false,
            created_at_ms: self.now_ms(),
            xks: None,
            row_version: 1,
        };
        self.insert_new_store(record).await
    }

    /// Refuses a new store beyond the account's quota.
    pub(super) fn check_quota(&self, account: &str) -> Result<(), KmsError> {
        let owned = self.key_stores.all();
        if owned
            .iter()
            .filter(|h| h.record().account == account)
            .count()
            >= MAX_KEY_STORES_PER_ACCOUNT
        {
            return Err(KmsError::LimitExceeded(format!(
                "An account can have at most {MAX_KEY_STORES_PER_ACCOUNT} custom key stores."
            )));
        }
        Ok(())
    }

    /// Stores a new store's record (`DISCONNECTED`) and registers it.
    async fn insert_new_store(
        &self,
        record: KeyStoreRecord,
    ) -> Result<CreateCustomKeyStoreResponse, KmsError> {
        let store_id = record.store_id.clone();
        super::record::before_change().await?;
        self.store
            .insert_key_store(&record)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::AlreadyExists(m) => KmsError::CustomKeyStoreNameInUse(m),
                other => other.into(),
            })?;
        self.key_stores.insert(record);
        tracing::info!(store = %store_id, "custom key store created");
        Ok(CreateCustomKeyStoreResponse {
            custom_key_store_id: store_id,
        })
    }

    /// Stores whether the key administrator wants `handle` connected (a restart follows it).
    pub(super) async fn set_connect(
        &self,
        handle: &StoreHandle,
        connect: bool,
    ) -> Result<(), KmsError> {
        let mut record = handle.record();
        if record.connect == connect {
            return Ok(());
        }
        record.connect = connect;
        super::record::before_change().await?;
        self.store.update_key_store(&record).await?;
        record.row_version += 1; // the store raised it (compare-and-set)
        handle.set_record(record);
        Ok(())
    }

    /// ConnectCustomKeyStore: answers at once; the store goes `CONNECTING`, then `CONNECTED`
    /// or `FAILED` (poll DescribeCustomKeyStores). Connected or connecting already: nothing
    /// to do. A store `FAILED` because its device went away is retried now; any other
    /// `FAILED` store must be disconnected first, as in AWS.
    pub async fn connect_custom_key_store(
        &self,
        caller: &Caller,
        req: ConnectCustomKeyStoreRequest,
    ) -> Result<Empty, KmsError> {
        let (_guard, handle) = self
            .store_for(
                caller,
                "kms:ConnectCustomKeyStore",
                &req.custom_key_store_id,
            )
            .await?;
        match handle.state() {
            (ConnectionState::Connected | ConnectionState::Connecting, _) => return Ok(Empty),
            (ConnectionState::Disconnected, _) => {}
            (ConnectionState::Failed, Some(code)) if code.is_transient() => {}
            (state, _) => {
                return Err(KmsError::CustomKeyStoreInvalidState(format!(
                    "Custom key store {} is {state}: disconnect it, then connect it.",
                    req.custom_key_store_id
                )))
            }
        }
        self.set_connect(&handle, true).await?;
        self.key_stores.start_connect(&handle);
        Ok(Empty)
    }

    /// DisconnectCustomKeyStore: `DISCONNECTING` while the store's sessions close, then
    /// `DISCONNECTED`; its keys are `Unavailable` until it is connected again.
    pub async fn disconnect_custom_key_store(
        &self,
        caller: &Caller,
        req: DisconnectCustomKeyStoreRequest,
    ) -> Result<Empty, KmsError> {
        let (guard, handle) = self
            .store_for(
                caller,
                "kms:DisconnectCustomKeyStore",
                &req.custom_key_store_id,
            )
            .await?;
        let (state, _) = handle.state();
        if matches!(
            state,
            ConnectionState::Disconnected | ConnectionState::Disconnecting
        ) {
            return Err(KmsError::CustomKeyStoreInvalidState(format!(
                "Custom key store {} is {state}.",
                req.custom_key_store_id
            )));
        }
        self.set_connect(&handle, false).await?;
        let closing = self.key_stores.start_disconnect(&handle);
        // The change lock is not held while the store's sessions close.
        drop(guard);
        super::connections::disconnected(closing).await;
        Ok(Empty)
    }

    /// UpdateCustomKeyStore: a new name at any time; a new password or a related cluster
    /// (one with the same trust anchor, as clusters sharing a backup history have) only
    /// while the store is `DISCONNECTED`. The HSM and proxy work (sealing, the proxy's
    /// health check) runs on a snapshot of the store before the account's store lock is
    /// taken; under the lock the checks run again and the snapshot must still be current,
    /// otherwise the update is prepared again on the fresh record.
    pub async fn update_custom_key_store(
        &self,
        caller: &Caller,
        req: UpdateCustomKeyStoreRequest,
    ) -> Result<Empty, KmsError> {
        if let Some(name) = &req.new_custom_key_store_name {
            check_name("newCustomKeyStoreName", name)?;
        }
        if let Some(p) = &req.key_store_password {
            check_password(p)?;
        }
        if let Some(c) = &req.cloud_hsm_cluster_id {
            check_cluster_id(c)?;
        }
        check_store_id(&req.custom_key_store_id)?;
        self.authorize(caller, AuthzRequest::new("kms:UpdateCustomKeyStore", "*"))?;
        for _ in 0..UPDATE_ATTEMPTS {
            let handle = self.own_store(caller, &req.custom_key_store_id)?;
            let seen = handle.record().row_version;
            let plan = self.plan_update(caller, &handle, &req).await?;
            let _guard = self.lock_stores_of(&caller.account).await;
            let handle = self.own_store(caller, &req.custom_key_store_id)?;
            if handle.record().row_version != seen {
                continue; // changed meanwhile: prepare again on the fresh record
            }
            self.check_update(caller, &handle, &req)?;
            return self.commit_update(&handle, plan).await;
        }
        Err(KmsError::Conflict(format!(
            "Custom key store {} kept changing during the update; try again.",
            req.custom_key_store_id
        )))
    }

    /// The updated record of either store type, with any new secret sealed and the proxy
    /// checked: the slow part of an update, run without the store lock.
    async fn plan_update(
        &self,
        caller: &Caller,
        handle: &Arc<StoreHandle>,
        req: &UpdateCustomKeyStoreRequest,
    ) -> Result<UpdatePlan, KmsError> {
        self.check_update(caller, handle, req)?;
        if handle.is_external() {
            return self.plan_external_update(handle, req).await;
        }
        let mut record = handle.record();
        self.apply_update(&mut record, req).await?;
        Ok(UpdatePlan {
            record,
            reconnect: false,
        })
    }

    /// The checks of an update that depend on the other stores and the connection state,
    /// made before the slow part and again under the store lock.
    fn check_update(
        &self,
        caller: &Caller,
        handle: &StoreHandle,
        req: &UpdateCustomKeyStoreRequest,
    ) -> Result<(), KmsError> {
        if handle.is_external() {
            return self.check_external_update(caller, handle, req);
        }
        if req.xks.any() {
            return Err(KmsError::Validation(format!(
                "Custom key store {} is of type AWS_CLOUDHSM: the XksProxy* members do not apply.",
                req.custom_key_store_id
            )));
        }
        let record = handle.record();
        let new_cluster = req
            .cloud_hsm_cluster_id
            .as_deref()
            .filter(|c| *c != record.cluster_id);
        let device_change = req.key_store_password.is_some() || new_cluster.is_some();
        if device_change && handle.state().0 != ConnectionState::Disconnected {
            return Err(KmsError::CustomKeyStoreInvalidState(format!(
                "Custom key store {} must be DISCONNECTED to change its password or cluster.",
                record.store_id
            )));
        }
        let name = req.new_custom_key_store_name.as_deref();
        self.check_unique(&caller.account, Some(&record.store_id), name, new_cluster)
    }

    /// Writes a planned update (compare-and-set on the row's version) and takes it into the
    /// cache; an external store whose credential changed while connected reconnects with it.
    async fn commit_update(
        &self,
        handle: &Arc<StoreHandle>,
        mut plan: UpdatePlan,
    ) -> Result<Empty, KmsError> {
        super::record::before_change().await?;
        self.store.update_key_store(&plan.record).await?;
        plan.record.row_version += 1; // the store raised it (compare-and-set)
        handle.set_record(plan.record);
        if plan.reconnect && handle.state().0 == ConnectionState::Connected {
            self.key_stores.start_connect(handle);
        }
        Ok(Empty)
    }

    /// The new name, cluster and sealed password of an update, into `record` (the checks
    /// that depend on other stores are [`Kms::check_update`]'s).
    async fn apply_update(
        &self,
        record: &mut KeyStoreRecord,
        req: &UpdateCustomKeyStoreRequest,
    ) -> Result<(), KmsError> {
        let new_cluster = req
            .cloud_hsm_cluster_id
            .as_deref()
            .filter(|c| *c != record.cluster_id);
        if let Some(id) = new_cluster {
            let cluster = self.key_stores.cluster(id).ok_or_else(|| {
                KmsError::CloudHsmClusterNotFound(format!("Cluster {id} is not configured."))
            })?;
            let current = self.key_stores.cluster(&record.cluster_id);
            if current.is_none_or(|c| c.trust_anchor != cluster.trust_anchor) {
                return Err(KmsError::CloudHsmClusterNotRelated(format!(
                    "Cluster {id} does not share the trust anchor of cluster {}.",
                    record.cluster_id
                )));
            }
            record.cluster_id = cluster.id;
        }
        if let Some(name) = &req.new_custom_key_store_name {
            record.name = name.clone();
        }
        if let Some(p) = &req.key_store_password {
            record.sealed_password = self.key_stores.seal(&record.store_id, p).await?;
        }
        Ok(())
    }

    /// DeleteCustomKeyStore: only `DISCONNECTED`, and only with no keys left in it.
    pub async fn delete_custom_key_store(
        &self,
        caller: &Caller,
        req: DeleteCustomKeyStoreRequest,
    ) -> Result<Empty, KmsError> {
        let (_guard, handle) = self
            .store_for(caller, "kms:DeleteCustomKeyStore", &req.custom_key_store_id)
            .await?;
        let id = req.custom_key_store_id.as_str();
        if handle.state().0 != ConnectionState::Disconnected {
            return Err(KmsError::CustomKeyStoreInvalidState(format!(
                "Custom key store {id} must be DISCONNECTED to be deleted."
            )));
        }
        let has_keys = || {
            KmsError::CustomKeyStoreHasCmks(format!(
                "Custom key store {id} still has KMS keys: schedule their deletion first."
            ))
        };
        if self.keys_in_store(id) > 0 {
            return Err(has_keys());
        }
        super::record::before_change().await?;
        self.store.delete_key_store(id).await.map_err(|e| match e {
            crate::store::StoreError::AlreadyExists(_) => has_keys(),
            other => other.into(),
        })?;
        self.key_stores.remove(id);
        tracing::info!(store = %id, "custom key store deleted");
        Ok(Empty)
    }

    /// How many keys (any state, stranded creations too) name store `id`.
    pub(crate) fn keys_in_store(&self, id: &str) -> usize {
        let in_store = |s: &Option<String>| s.as_deref() == Some(id);
        let cached = self
            .cache_read()
            .keys
            .values()
            .filter(|k| in_store(&k.record.custom_key_store_id))
            .count();
        let stranded = self.stranded.lock().unwrap_or_else(|p| p.into_inner());
        cached
            + stranded
                .values()
                .filter(|r| in_store(&r.custom_key_store_id))
                .count()
    }

    /// DescribeCustomKeyStores: the caller's stores, one by id or name, or all, paged.
    pub async fn describe_custom_key_stores(
        &self,
        caller: &Caller,
        req: DescribeCustomKeyStoresRequest,
    ) -> Result<DescribeCustomKeyStoresResponse, KmsError> {
        if req.custom_key_store_id.is_some() && req.custom_key_store_name.is_some() {
            return Err(KmsError::Validation(
                "Give either CustomKeyStoreId or CustomKeyStoreName, not both.".into(),
            ));
        }
        let (limit, after) = req.page.start()?;
        self.authorize(
            caller,
            AuthzRequest::new("kms:DescribeCustomKeyStores", "*"),
        )?;
        let mut stores: Vec<_> = self
            .key_stores
            .all()
            .into_iter()
            .filter(|h| h.record().account == caller.account)
            .collect();
        if let Some(id) = &req.custom_key_store_id {
            stores.retain(|h| h.record().store_id == *id);
            if stores.is_empty() {
                return Err(not_found(id));
            }
        }
        if let Some(name) = &req.custom_key_store_name {
            stores.retain(|h| h.record().name == *name);
            if stores.is_empty() {
                return Err(not_found(name));
            }
        }
        let items = stores.iter().map(|h| {
            let e = entry(h);
            (
                format!("{:020}/{}", e.creation_date_ms, e.custom_key_store_id),
                e,
            )
        });
        let (custom_key_stores, next_marker) = validate::page(items, after.as_deref(), limit);
        Ok(DescribeCustomKeyStoresResponse {
            custom_key_stores,
            next_marker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::{RequestParameters, ResponseElements};

    const SECRET: &str = "SECRET-PASSWORD-1";

    fn create() -> CreateCustomKeyStoreRequest {
        CreateCustomKeyStoreRequest {
            custom_key_store_name: "store".into(),
            cloud_hsm_cluster_id: Some("cluster-abcdefghijk".into()),
            trust_anchor_certificate: Some("-----BEGIN CERTIFICATE-----".into()),
            key_store_password: Some(Zeroizing::new(SECRET.into())),
            custom_key_store_type: None,
            xks: XksMembers::default(),
        }
    }

    /// The password is in no Debug output and no audit record; the rest is recorded.
    #[test]
    fn the_password_is_never_printed_or_recorded() {
        let update = UpdateCustomKeyStoreRequest {
            custom_key_store_id: "cks-1".into(),
            key_store_password: Some(Zeroizing::new(SECRET.into())),
            ..Default::default()
        };
        for text in [
            format!("{:?}", create()),
            format!("{update:?}"),
            create().request_parameters().to_string(),
            update.request_parameters().to_string(),
        ] {
            assert!(!text.contains(SECRET), "{text}");
        }
        assert_eq!(
            create().request_parameters().to_string(),
            r#"{"cloudHsmClusterId":"cluster-abcdefghijk","customKeyStoreName":"store","trustAnchorCertificate":"-----BEGIN CERTIFICATE-----"}"#
        );
        let created = CreateCustomKeyStoreResponse {
            custom_key_store_id: "cks-1".into(),
        };
        assert_eq!(
            created.response_elements().to_string(),
            r#"{"customKeyStoreId":"cks-1"}"#
        );
    }

    /// Each member's rule, with AWS's messages; a refused password is never echoed.
    #[test]
    fn create_requests_are_checked_member_by_member() {
        assert!(NewStore::of(&create()).is_ok());
        let refused = |r: CreateCustomKeyStoreRequest| match NewStore::of(&r) {
            Err(e) => {
                assert!(!e.message().contains(SECRET) && !e.message().contains("abc"));
                e.aws_name()
            }
            Ok(_) => "accepted",
        };
        let cases = [
            (
                CreateCustomKeyStoreRequest {
                    key_store_password: Some(Zeroizing::new("abc".into())),
                    ..create()
                },
                "ValidationException",
            ),
            (
                CreateCustomKeyStoreRequest {
                    cloud_hsm_cluster_id: Some("cluster-1".into()),
                    ..create()
                },
                "ValidationException",
            ),
            (
                CreateCustomKeyStoreRequest {
                    custom_key_store_name: String::new(),
                    ..create()
                },
                "ValidationException",
            ),
            (
                CreateCustomKeyStoreRequest {
                    trust_anchor_certificate: None,
                    ..create()
                },
                "ValidationException",
            ),
            (
                CreateCustomKeyStoreRequest {
                    xks: XksMembers {
                        xks_proxy_uri_path: Some("/kms/xks/v1".into()),
                        ..XksMembers::default()
                    },
                    ..create()
                },
                "ValidationException",
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(refused(request), expected);
        }
    }

    /// Store ids have AWS's shape: `cks-` and 17 hex digits, each new.
    #[test]
    fn store_ids_look_like_aws_ones() {
        let (a, b) = (new_store_id(), new_store_id());
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 21, "{id}");
            assert!(id
                .strip_prefix("cks-")
                .unwrap()
                .bytes()
                .all(|c| c.is_ascii_hexdigit()));
        }
    }

    /// A trust anchor matches only the cluster's own certificates, whole.
    #[test]
    fn trust_anchors_match_whole() {
        use rustls_pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        crate::devsetup::ensure_ca_and_server(dir.path()).unwrap();
        let pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let other = std::fs::read_to_string(dir.path().join("server.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let cluster = Cluster {
            id: "cluster-abcdefghijk".into(),
            module: "/nonexistent".into(),
            token_label: "t".into(),
            trust_anchor: vec![der.to_vec()],
            residency: Default::default(),
        };
        assert!(trust_anchor_matches(&cluster, &pem));
        assert!(!trust_anchor_matches(&cluster, &other));
        assert!(!trust_anchor_matches(&cluster, &format!("{pem}{other}")));
        assert!(!trust_anchor_matches(&cluster, "not a certificate"));
    }
}
