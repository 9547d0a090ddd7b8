//! External key stores (custom key stores of type `EXTERNAL_KEY_STORE`): their members and
//! checks, the proxy's failures mapped to AWS exceptions and connection error codes (the one
//! place this is decided), and the double encryption of their keys.
//!
//! A key in an external store has two layers, as in AWS: the plaintext is sealed first under
//! the key's own AES-256 object on the default HSM (made with the key, never extractable),
//! exactly as a default-store key seals it, and that ciphertext and tag are then encrypted by
//! the external key through the store's XKS proxy, with the same AAD (the v1 header and the
//! canonical encryption context). Neither p11kms's HSM nor the proxy alone can decrypt. The
//! blob stays a v1 blob (`ciphertext`): its header names the key and carries the inner IV;
//! its body is the outer layer ([`outer_layout`]).
use uuid::Uuid;
use zeroize::Zeroizing;

use super::authz::AuthzRequest;
use super::connections::{StoreHandle, XksClientSetup};
use super::keystores::{ConnectionErrorCode, ConnectionState};
use super::{CachedKey, Kms, KmsError, XksException};
use crate::hsm::{GcmSealed, Pin};
use crate::identity::Caller;
use crate::redact::redacted_debug;
use crate::store::{KeyStoreRecord, XksProxyRecord};
use crate::wire_enum::wire_enum;
use crate::xks_client::{
    ProxyErrorName, ProxyRequestMetadata, ProxySealed, ProxyTarget, XksCredential, XksProxyClient,
    XksProxyError,
};

wire_enum!(
    /// How AWS reaches an external key store's proxy (the model's `XksProxyConnectivityType`).
    /// p11kms reaches proxies over the network only: `VPC_ENDPOINT_SERVICE` is refused.
    XksProxyConnectivity {
        PublicEndpoint = "PUBLIC_ENDPOINT",
        VpcEndpointService = "VPC_ENDPOINT_SERVICE",
    }
);

/// `XksProxyAuthenticationCredential`: the SigV4 credential requests to the proxy are signed
/// with. The secret is never printed, recorded or returned.
#[derive(Clone, Default)]
pub struct XksProxyAuthenticationCredential {
    pub access_key_id: String,
    pub raw_secret_access_key: Zeroizing<String>,
}

redacted_debug!(XksProxyAuthenticationCredential {
    access_key_id,
    raw_secret_access_key: redacted
});

/// `XksProxyConfiguration` as DescribeCustomKeyStores shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksProxyConfiguration {
    pub connectivity: XksProxyConnectivity,
    pub access_key_id: String,
    pub uri_endpoint: String,
    pub uri_path: String,
}

/// `XksKeyConfiguration` of a key in an external store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksKeyConfiguration {
    pub id: String,
}

/// The XKS members of a CreateCustomKeyStore or UpdateCustomKeyStore request.
#[derive(Debug, Clone, Default)]
pub struct XksMembers {
    pub xks_proxy_uri_endpoint: Option<String>,
    pub xks_proxy_uri_path: Option<String>,
    pub xks_proxy_vpc_endpoint_service_name: Option<String>,
    pub xks_proxy_authentication_credential: Option<XksProxyAuthenticationCredential>,
    pub xks_proxy_connectivity: Option<XksProxyConnectivity>,
}

impl XksMembers {
    /// Whether any XKS member is set.
    pub fn any(&self) -> bool {
        self.xks_proxy_uri_endpoint.is_some()
            || self.xks_proxy_uri_path.is_some()
            || self.xks_proxy_vpc_endpoint_service_name.is_some()
            || self.xks_proxy_authentication_credential.is_some()
            || self.xks_proxy_connectivity.is_some()
    }
}

/// The audit trail records the XKS members given, as one `xks` object, with the credential's
/// access key id and never its secret.
impl super::operation::Recorded for XksMembers {
    fn recorded(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                m.insert(k.to_string(), serde_json::Value::from(v));
            }
        };
        put(
            "xksProxyUriEndpoint",
            self.xks_proxy_uri_endpoint.as_deref(),
        );
        put("xksProxyUriPath", self.xks_proxy_uri_path.as_deref());
        put(
            "xksProxyVpcEndpointServiceName",
            self.xks_proxy_vpc_endpoint_service_name.as_deref(),
        );
        put(
            "xksProxyConnectivity",
            self.xks_proxy_connectivity.map(|c| c.as_str()),
        );
        put(
            "xksProxyAccessKeyId",
            self.xks_proxy_authentication_credential
                .as_ref()
                .map(|c| c.access_key_id.as_str()),
        );
        serde_json::Value::Object(m)
    }
    fn given(&self) -> bool {
        self.any()
    }
}

fn xks_error(kind: XksException, message: impl Into<String>) -> KmsError {
    KmsError::Xks(kind, message.into())
}

/// Whether `endpoint` is the p11kms extension of `XksProxyUriEndpoint`: plain `http://` to a
/// loopback address with a port (a proxy on the same host; tests).
pub fn is_loopback_http_endpoint(endpoint: &str) -> bool {
    endpoint.starts_with("http://") && crate::xks_client::endpoint_is_callable(endpoint)
}

/// Checks `XksProxyUriEndpoint`: AWS's `https://` + host (10-128 characters), or the
/// loopback extension.
fn check_endpoint(member: &str, e: &str) -> Result<(), KmsError> {
    let host = e.strip_prefix("https://").unwrap_or_default();
    let aws = (10..=128).contains(&e.len())
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if aws || is_loopback_http_endpoint(e) {
        return Ok(());
    }
    Err(KmsError::validation(
        member,
        "Member must satisfy regular expression pattern: ^https://[a-zA-Z0-9.-]+$",
    ))
}

/// Checks `XksProxyUriPath`: `[/prefix]/kms/xks/v<1-2 digits>`, 10-128 characters.
fn check_path(member: &str, p: &str) -> Result<(), KmsError> {
    let ok = (10..=128).contains(&p.len())
        && p.rsplit_once("/kms/xks/v").is_some_and(|(prefix, v)| {
            (1..=2).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_digit())
                && (prefix.is_empty()
                    || (prefix.starts_with('/')
                        && prefix.len() > 1
                        && prefix
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))))
        });
    if ok {
        return Ok(());
    }
    Err(KmsError::validation(
        member,
        "Member must satisfy regular expression pattern: \
         ^(/[a-zA-Z0-9\\/_-]+/kms/xks/v\\d{1,2})$|^(/kms/xks/v\\d{1,2})$",
    ))
}

/// Checks a credential's two parts against the model without echoing either.
fn check_credential(c: &XksProxyAuthenticationCredential) -> Result<(), KmsError> {
    let id = &c.access_key_id;
    if !(20..=30).contains(&id.len()) || !id.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7'))
    {
        return Err(KmsError::validation(
            "xksProxyAuthenticationCredential.accessKeyId",
            "Member must have length between 20 and 30 and satisfy pattern ^[A-Z2-7]+$",
        ));
    }
    let s = &c.raw_secret_access_key;
    if !(43..=64).contains(&s.len())
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+=".contains(&b))
    {
        return Err(KmsError::validation(
            "xksProxyAuthenticationCredential.rawSecretAccessKey",
            "Member must have length between 43 and 64 and satisfy pattern ^[a-zA-Z0-9\\/+=]+$",
        ));
    }
    Ok(())
}

/// Refuses the VPC connectivity as AWS refuses a VPC endpoint service it cannot find (p11kms
/// has no VPC), and a service name without it.
fn check_connectivity(m: &XksMembers) -> Result<(), KmsError> {
    match (
        m.xks_proxy_connectivity,
        &m.xks_proxy_vpc_endpoint_service_name,
    ) {
        (Some(XksProxyConnectivity::VpcEndpointService), Some(name)) => Err(xks_error(
            XksException::VpcEndpointServiceNotFound,
            format!(
                "The VPC endpoint service {name} was not found: p11kms reaches XKS proxies \
                 over PUBLIC_ENDPOINT connectivity only."
            ),
        )),
        (Some(XksProxyConnectivity::VpcEndpointService), None) => Err(KmsError::Validation(
            "XksProxyVpcEndpointServiceName is required for VPC_ENDPOINT_SERVICE connectivity."
                .into(),
        )),
        (_, Some(_)) => Err(KmsError::Validation(
            "XksProxyVpcEndpointServiceName is valid only with VPC_ENDPOINT_SERVICE connectivity."
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Checks every XKS member present (Create and Update alike).
pub(super) fn check_members(m: &XksMembers) -> Result<(), KmsError> {
    if let Some(e) = &m.xks_proxy_uri_endpoint {
        check_endpoint("xksProxyUriEndpoint", e)?;
    }
    if let Some(p) = &m.xks_proxy_uri_path {
        check_path("xksProxyUriPath", p)?;
    }
    if let Some(c) = &m.xks_proxy_authentication_credential {
        check_credential(c)?;
    }
    check_connectivity(m)
}

/// The proxy settings of a new external store, every required member present and checked.
pub(super) fn new_proxy_settings(
    m: &XksMembers,
) -> Result<(String, String, &XksProxyAuthenticationCredential), KmsError> {
    let missing = |name: &str| {
        KmsError::Validation(format!(
            "{name} is required for a custom key store of type EXTERNAL_KEY_STORE."
        ))
    };
    let endpoint = m
        .xks_proxy_uri_endpoint
        .clone()
        .ok_or_else(|| missing("XksProxyUriEndpoint"))?;
    let path = m
        .xks_proxy_uri_path
        .clone()
        .ok_or_else(|| missing("XksProxyUriPath"))?;
    let credential = m
        .xks_proxy_authentication_credential
        .as_ref()
        .ok_or_else(|| missing("XksProxyAuthenticationCredential"))?;
    if m.xks_proxy_connectivity.is_none() {
        return Err(missing("XksProxyConnectivity"));
    }
    check_members(m)?;
    Ok((endpoint, path, credential))
}

/// The DescribeCustomKeyStores view of a store's proxy settings.
pub(super) fn configuration(x: &XksProxyRecord) -> XksProxyConfiguration {
    XksProxyConfiguration {
        connectivity: XksProxyConnectivity::parse(&x.connectivity)
            .unwrap_or(XksProxyConnectivity::PublicEndpoint),
        access_key_id: x.access_key_id.clone(),
        uri_endpoint: x.endpoint.clone(),
        uri_path: x.uri_path.clone(),
    }
}

/// The client of a store's proxy settings and unsealed secret.
pub(super) fn client_for(
    x: &XksProxyRecord,
    secret: Pin,
    setup: &XksClientSetup,
) -> Result<XksProxyClient, KmsError> {
    let target = ProxyTarget {
        endpoint: x.endpoint.clone(),
        uri_path: x.uri_path.clone(),
        region: setup.region.clone(),
    };
    let credential = XksCredential {
        access_key_id: x.access_key_id.clone(),
        secret: Zeroizing::new(secret.expose().to_string()),
    };
    XksProxyClient::new(target, credential, setup.tls.clone()).map_err(|e| management_error(&e))
}

/// The `requestMetadata` of a health check made for `operation`.
pub(super) fn health_metadata(operation: &str) -> ProxyRequestMetadata {
    ProxyRequestMetadata {
        kms_request_id: Uuid::new_v4().hyphenated().to_string(),
        kms_operation: operation.to_string(),
        ..Default::default()
    }
}

/// The `requestMetadata` of a key operation: the caller and the key, as AWS sends them.
fn key_metadata_for(
    caller: &Caller,
    operation: &str,
    key_arn: Option<&str>,
) -> ProxyRequestMetadata {
    ProxyRequestMetadata {
        kms_request_id: Uuid::new_v4().hyphenated().to_string(),
        kms_operation: operation.to_string(),
        aws_principal_arn: Some(caller.principal_arn.clone()),
        kms_key_arn: key_arn.map(str::to_string),
    }
}

// ---------------------------------------------------------------------- the one error mapping

/// A proxy failure during CreateCustomKeyStore or UpdateCustomKeyStore (AWS's `XksProxy*`
/// exceptions).
pub(super) fn management_error(e: &XksProxyError) -> KmsError {
    use XksException as X;
    let (kind, what) = match e {
        XksProxyError::Timeout | XksProxyError::Unreachable(_) => (
            X::UriUnreachable,
            "KMS cannot reach the XKS proxy at its XksProxyUriEndpoint",
        ),
        XksProxyError::Tls(_) => (
            X::InvalidConfiguration,
            "the TLS connection to the XKS proxy failed",
        ),
        XksProxyError::Proxy {
            name: ProxyErrorName::AuthenticationFailed | ProxyErrorName::AccessDenied,
            ..
        } => (
            X::IncorrectAuthenticationCredential,
            "the XKS proxy rejected the XksProxyAuthenticationCredential",
        ),
        XksProxyError::Proxy {
            name: ProxyErrorName::InvalidUriPath,
            ..
        } => (
            X::InvalidConfiguration,
            "the XKS proxy does not serve this XksProxyUriPath",
        ),
        XksProxyError::Proxy { .. } | XksProxyError::InvalidResponse(_) => (
            X::InvalidResponse,
            "KMS cannot interpret the XKS proxy's answer",
        ),
        XksProxyError::InvalidConfiguration(_) => (
            X::InvalidConfiguration,
            "the XKS proxy settings cannot be used",
        ),
    };
    xks_error(kind, format!("{what} ({}).", e.class()))
}

/// The `ConnectionErrorCode` of a failed health check (connect, and the watch).
pub(super) fn connection_code(store_id: &str, e: &XksProxyError) -> ConnectionErrorCode {
    use ConnectionErrorCode as C;
    tracing::warn!(store = %store_id, answer = e.class(), "external key store proxy health check failed");
    match e {
        XksProxyError::Timeout => C::XksProxyTimedOut,
        XksProxyError::Unreachable(_) => C::XksProxyNotReachable,
        XksProxyError::Tls(_) => C::XksProxyInvalidTlsConfiguration,
        e if e.is_auth_denied() => C::XksProxyAccessDenied,
        XksProxyError::Proxy {
            name: ProxyErrorName::InvalidUriPath,
            ..
        }
        | XksProxyError::InvalidConfiguration(_) => C::XksProxyInvalidConfiguration,
        XksProxyError::Proxy { .. } | XksProxyError::InvalidResponse(_) => {
            C::XksProxyInvalidResponse
        }
    }
}

/// A proxy failure of CreateKey's GetKeyMetadata.
fn create_key_error(xks_key_id: &str, e: &XksProxyError) -> KmsError {
    match e {
        XksProxyError::Proxy {
            name: ProxyErrorName::KeyNotFound,
            ..
        } => xks_error(
            XksException::KeyNotFound,
            format!("The external key store proxy has no external key {xks_key_id}."),
        ),
        XksProxyError::Proxy {
            name: ProxyErrorName::InvalidKeyUsage,
            ..
        } => invalid_key_configuration(xks_key_id),
        XksProxyError::Timeout => KmsError::DependencyTimeout(
            "The external key store proxy did not answer in time.".into(),
        ),
        other => KmsError::CustomKeyStoreInvalidState(format!(
            "The external key store proxy could not describe external key {xks_key_id} ({}).",
            other.class()
        )),
    }
}

fn invalid_key_configuration(xks_key_id: &str) -> KmsError {
    xks_error(
        XksException::KeyInvalidConfiguration,
        format!(
            "External key {xks_key_id} must be an enabled AES_256 key whose usage includes \
             ENCRYPT and DECRYPT."
        ),
    )
}

/// A proxy failure of a cryptographic operation. AWS answers `KMSInvalidStateException` for
/// every failure of the external key store's configuration or connection (a disabled or
/// missing external key, a refusal by the proxy's own authorization included);
/// `InvalidCiphertextException` when the outer layer does not open; a timeout is
/// `DependencyTimeoutException` and the proxy's throttling `ThrottlingException`.
pub(super) fn crypto_error(key_arn: &str, e: &XksProxyError) -> KmsError {
    let because = match e {
        XksProxyError::Timeout => {
            return KmsError::DependencyTimeout(format!(
                "The external key store proxy of {key_arn} did not answer in time."
            ))
        }
        XksProxyError::Proxy { name, .. } => match name {
            ProxyErrorName::InvalidCiphertext => {
                return KmsError::InvalidCiphertext("The ciphertext is invalid.".into())
            }
            ProxyErrorName::Throttling => {
                return KmsError::Throttling(format!(
                    "The external key store proxy of {key_arn} is throttling requests."
                ))
            }
            ProxyErrorName::InvalidState => "the external key is disabled",
            ProxyErrorName::KeyNotFound => "the external key was not found",
            ProxyErrorName::AccessDenied => "the external key store proxy denied the request",
            ProxyErrorName::AuthenticationFailed => {
                "the external key store proxy rejected the proxy authentication credential"
            }
            _ => "the external key store proxy failed the request",
        },
        XksProxyError::Unreachable(_) | XksProxyError::Tls(_) => {
            "the external key store proxy is not reachable"
        }
        XksProxyError::InvalidResponse(_) | XksProxyError::InvalidConfiguration(_) => {
            "the external key store proxy's answer is invalid"
        }
    };
    KmsError::InvalidState(format!("{key_arn} is unusable: {because} ({}).", e.class()))
}

// ---------------------------------------------------------------------- the blob's outer layer

/// The body of a v1 blob of a key in an external store (after the 33-byte header, which holds
/// the inner IV):
///
/// ```text
/// size   field
/// 1      outer IV length (12 or 16)
/// 12|16  outer IV (the proxy's)
/// 1      ciphertextMetadata length m (0-20)
/// m      ciphertextMetadata (the proxy's, e.g. its key version)
/// n+16   outer ciphertext: the inner ciphertext and tag (n+16 bytes), encrypted by the proxy
/// 16     outer tag (the proxy's)
/// ```
pub fn outer_layout(sealed: &ProxySealed) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        2 + sealed.iv.len() + sealed.metadata.len() + sealed.ciphertext.len() + 16,
    );
    out.push(sealed.iv.len() as u8);
    out.extend_from_slice(&sealed.iv);
    out.push(sealed.metadata.len() as u8);
    out.extend_from_slice(&sealed.metadata);
    out.extend_from_slice(&sealed.ciphertext);
    out.extend_from_slice(&sealed.tag);
    out
}

/// Reads [`outer_layout`]; `None` for any body that is not one (never panics).
pub fn parse_outer(body: &[u8]) -> Option<ProxySealed> {
    let (&iv_len, rest) = body.split_first()?;
    if !matches!(iv_len, 12 | 16) {
        return None;
    }
    let (iv, rest) = rest.split_at_checked(usize::from(iv_len))?;
    let (&m_len, rest) = rest.split_first()?;
    if m_len > 20 {
        return None;
    }
    let (metadata, rest) = rest.split_at_checked(usize::from(m_len))?;
    // The outer plaintext is an inner ciphertext and tag: at least 17 bytes.
    let ct_len = rest.len().checked_sub(16).filter(|n| *n >= 17)?;
    let (ciphertext, tag) = rest.split_at(ct_len);
    Some(ProxySealed {
        ciphertext: ciphertext.to_vec(),
        iv: iv.to_vec(),
        tag: tag.to_vec(),
        metadata: metadata.to_vec(),
    })
}

/// Refuses a key in an external store on a ReEncrypt whose other side is an RSA key (that
/// path decrypts and encrypts on the default HSM in one step, with no outer layer).
pub(super) fn not_with_rsa(key: &CachedKey) -> Result<(), KmsError> {
    match key.store.as_ref().is_some_and(|s| s.is_external()) {
        true => Err(KmsError::UnsupportedOperation(format!(
            "{} is in an external key store: ReEncrypt between it and an RSA key is not \
             supported by this p11kms build.",
            key.arn
        ))),
        false => Ok(()),
    }
}

/// Records the proxy's answer class in the request's audit event.
fn record_answer(class: &'static str) {
    super::record::xks_proxy_answer(class);
}

impl Kms {
    /// The proxy of the external store `key` lives in, connected; `None` for a key of any
    /// other store.
    fn proxy_of(
        &self,
        key: &CachedKey,
    ) -> Result<Option<std::sync::Arc<XksProxyClient>>, KmsError> {
        let Some(store) = key.store.as_ref().filter(|s| s.is_external()) else {
            return Ok(None);
        };
        store.connected_proxy().map(Some).ok_or_else(|| {
            KmsError::InvalidState(format!(
                "{} is unavailable: its external key store is {}.",
                key.arn,
                store.state().0
            ))
        })
    }

    /// The blob of a new ciphertext: `sealed` (the inner layer) as a v1 blob, its body
    /// encrypted again by the external key when `key` is in an external store. `action` is
    /// the IAM action (`kms:Encrypt`); the proxy is told the operation (`Encrypt`).
    pub(super) async fn finish_blob(
        &self,
        caller: &Caller,
        key: &CachedKey,
        action: &str,
        object: crate::hsm::ObjectId,
        canonical_ctx: &[u8],
        sealed: GcmSealed,
    ) -> Result<Vec<u8>, KmsError> {
        let Some(proxy) = self.proxy_of(key)? else {
            return Ok(super::crypto::blob_from(object, &sealed));
        };
        let operation = action.trim_start_matches("kms:");
        let header = crate::ciphertext::header(&object.key_id(), object.version(), &sealed.iv);
        let aad = crate::ciphertext::aad(&header, canonical_ctx);
        let xks_key_id = key.record.xks_key_id.as_deref().unwrap_or_default();
        let meta = key_metadata_for(caller, operation, Some(&key.arn));
        let outer = proxy
            .encrypt(xks_key_id, &meta, &sealed.ciphertext_and_tag, &aad)
            .await;
        record_answer(outer.as_ref().map_or_else(XksProxyError::class, |_| "ok"));
        let outer = outer.map_err(|e| crypto_error(&key.arn, &e))?;
        Ok(crate::ciphertext::assemble(&header, &outer_layout(&outer)))
    }

    /// Opens the outer layer of a blob of a key in an external store, in place (its body
    /// becomes the inner ciphertext and tag); nothing for a key of any other store.
    pub(super) async fn open_outer(
        &self,
        caller: &Caller,
        opened: &mut super::crypto::OpenedBlob,
        operation: &str,
    ) -> Result<(), KmsError> {
        let key = &opened.resolved.key;
        let Some(proxy) = self.proxy_of(key)? else {
            return Ok(());
        };
        let outer = parse_outer(&opened.ciphertext_and_tag)
            .ok_or_else(|| KmsError::InvalidCiphertext("The ciphertext is invalid.".into()))?;
        let xks_key_id = key.record.xks_key_id.as_deref().unwrap_or_default();
        let meta = key_metadata_for(caller, operation, Some(&key.arn));
        let inner = proxy.decrypt(xks_key_id, &meta, &outer, &opened.aad).await;
        record_answer(inner.as_ref().map_or_else(XksProxyError::class, |_| "ok"));
        let inner = inner.map_err(|e| crypto_error(&key.arn, &e))?;
        opened.ciphertext_and_tag = inner.to_vec();
        Ok(())
    }

    /// CreateKey's check of the external key of a key in external store `store_id`: the
    /// proxy describes it as an enabled AES_256 key for ENCRYPT and DECRYPT, and no key of
    /// the store uses it yet.
    pub(super) async fn check_external_key(
        &self,
        caller: &Caller,
        store_id: &str,
        xks_key_id: &str,
    ) -> Result<(), KmsError> {
        let store = self.own_store(caller, store_id)?;
        let proxy = store.connected_proxy().ok_or_else(|| {
            KmsError::CustomKeyStoreInvalidState(format!(
                "Custom key store {store_id} is {}: it must be CONNECTED.",
                store.state().0
            ))
        })?;
        let in_use = self.cache_read().keys.values().any(|k| {
            k.record.custom_key_store_id.as_deref() == Some(store_id)
                && k.record.xks_key_id.as_deref() == Some(xks_key_id)
        });
        if in_use {
            return Err(xks_error(
                XksException::KeyAlreadyInUse,
                format!("External key {xks_key_id} already backs a KMS key in {store_id}."),
            ));
        }
        let meta = key_metadata_for(caller, "CreateKey", None);
        let described = proxy.key_metadata(xks_key_id, &meta).await;
        record_answer(
            described
                .as_ref()
                .map_or_else(XksProxyError::class, |_| "ok"),
        );
        let m = described.map_err(|e| create_key_error(xks_key_id, &e))?;
        let usable = m.enabled
            && m.key_spec == "AES_256"
            && ["ENCRYPT", "DECRYPT"]
                .iter()
                .all(|u| m.key_usage.iter().any(|k| k == u));
        if usable {
            Ok(())
        } else {
            Err(invalid_key_configuration(xks_key_id))
        }
    }

    /// Refuses a proxy URI (endpoint and path) another store already uses: in the account,
    /// `XksProxyUriInUseException`; in another account, `XksProxyUriEndpointInUseException`.
    fn check_uri_unique(
        &self,
        account: &str,
        except: Option<&str>,
        endpoint: &str,
        path: &str,
    ) -> Result<(), KmsError> {
        for h in self.key_stores.all() {
            let r = h.record();
            let Some(x) = r
                .xks
                .as_ref()
                .filter(|_| except != Some(r.store_id.as_str()))
            else {
                continue;
            };
            if x.endpoint == endpoint && x.uri_path == path {
                let (kind, whose) = match r.account == account {
                    true => (
                        XksException::UriInUse,
                        "another external key store of this account",
                    ),
                    false => (
                        XksException::UriEndpointInUse,
                        "an external key store of another account",
                    ),
                };
                return Err(xks_error(
                    kind,
                    format!("The proxy URI {endpoint}{path} is already used by {whose}."),
                ));
            }
        }
        Ok(())
    }

    /// CreateCustomKeyStore of an `EXTERNAL_KEY_STORE` store: members checked, caller
    /// authorized, name and URI unique, quota, the proxy's health checked with the
    /// credential, the secret sealed (both without the change lock). Returns the change lock,
    /// taken after them and held until the record is stored.
    pub(super) async fn new_external_store(
        &self,
        caller: &Caller,
        req: &super::keystores::CreateCustomKeyStoreRequest,
    ) -> Result<(super::locks::ChangeGuard<'_>, KeyStoreRecord), KmsError> {
        super::keystores::check_name("customKeyStoreName", &req.custom_key_store_name)?;
        let hsm_member = req.cloud_hsm_cluster_id.is_some()
            || req.trust_anchor_certificate.is_some()
            || req.key_store_password.is_some();
        if hsm_member {
            return Err(KmsError::Validation(
                "CloudHsmClusterId, TrustAnchorCertificate and KeyStorePassword are valid only \
                 for a custom key store of type AWS_CLOUDHSM."
                    .into(),
            ));
        }
        let (endpoint, path, credential) = new_proxy_settings(&req.xks)?;
        self.authorize(caller, AuthzRequest::new("kms:CreateCustomKeyStore", "*"))?;
        let name = req.custom_key_store_name.as_str();
        // Checked before the proxy call (a clear answer at once), and again under the lock:
        // the proxy's health check and the sealing run without it.
        let unique = |endpoint: &str, path: &str| -> Result<(), KmsError> {
            self.check_unique(&caller.account, None, Some(name), None)?;
            self.check_uri_unique(&caller.account, None, endpoint, path)?;
            self.check_quota(&caller.account)
        };
        unique(&endpoint, &path)?;
        let store_id = super::keystores::new_store_id();
        let mut xks = XksProxyRecord {
            endpoint,
            uri_path: path,
            connectivity: XksProxyConnectivity::PublicEndpoint.as_str().to_string(),
            access_key_id: credential.access_key_id.clone(),
            sealed_secret: Vec::new(),
        };
        let secret = &credential.raw_secret_access_key;
        self.check_proxy(&xks, secret, "CreateCustomKeyStore")
            .await?;
        xks.sealed_secret = self.key_stores.seal(&store_id, secret).await?;
        let guard = self.lock_stores_of(&caller.account).await;
        unique(&xks.endpoint, &xks.uri_path)?;
        let record = KeyStoreRecord {
            cluster_id: store_id.clone(),
            store_id,
            account: caller.account.clone(),
            name: name.to_string(),
            trust_anchor: String::new(),
            sealed_password: Vec::new(),
            connect: false,
            created_at_ms: self.now_ms(),
            xks: Some(xks),
            row_version: 1,
        };
        Ok((guard, record))
    }

    /// The checks of an external store's update that depend on the other stores and the
    /// connection state (made before the proxy is checked and again under the store lock).
    pub(super) fn check_external_update(
        &self,
        caller: &Caller,
        handle: &StoreHandle,
        req: &super::keystores::UpdateCustomKeyStoreRequest,
    ) -> Result<(), KmsError> {
        if req.key_store_password.is_some() || req.cloud_hsm_cluster_id.is_some() {
            return Err(KmsError::Validation(format!(
                "Custom key store {} is of type EXTERNAL_KEY_STORE: KeyStorePassword and \
                 CloudHsmClusterId do not apply.",
                req.custom_key_store_id
            )));
        }
        check_members(&req.xks)?;
        let record = handle.record();
        let old = proxy_of(&record)?;
        let xks = moved_proxy(old, &req.xks);
        let moved = xks.endpoint != old.endpoint || xks.uri_path != old.uri_path;
        if moved && handle.state().0 != ConnectionState::Disconnected {
            return Err(KmsError::CustomKeyStoreInvalidState(format!(
                "Custom key store {} must be DISCONNECTED to change its proxy URI.",
                record.store_id
            )));
        }
        let name = req.new_custom_key_store_name.as_deref();
        self.check_unique(&caller.account, Some(&record.store_id), name, None)?;
        self.check_uri_unique(
            &caller.account,
            Some(&record.store_id),
            &xks.endpoint,
            &xks.uri_path,
        )
    }

    /// An external store's updated record: a new or moved proxy is checked (health, as AWS
    /// does) with the credential it will use, and a new secret sealed. Runs without the
    /// store lock (see [`Kms::update_custom_key_store`]).
    pub(super) async fn plan_external_update(
        &self,
        handle: &StoreHandle,
        req: &super::keystores::UpdateCustomKeyStoreRequest,
    ) -> Result<super::keystores::UpdatePlan, KmsError> {
        let mut record = handle.record();
        let old = proxy_of(&record)?.clone();
        let mut xks = moved_proxy(&old, &req.xks);
        let moved = xks.endpoint != old.endpoint || xks.uri_path != old.uri_path;
        let new_secret = req.xks.xks_proxy_authentication_credential.as_ref();
        if moved || new_secret.is_some() {
            let secret = match new_secret {
                Some(c) => c.raw_secret_access_key.clone(),
                None => Zeroizing::new(
                    self.key_stores
                        .unseal(&record.store_id, &old.sealed_secret)
                        .await?
                        .expose()
                        .to_string(),
                ),
            };
            if let Some(c) = new_secret {
                xks.access_key_id = c.access_key_id.clone();
                xks.sealed_secret = self.key_stores.seal(&record.store_id, &secret).await?;
            }
            self.check_proxy(&xks, &secret, "UpdateCustomKeyStore")
                .await?;
        }
        if let Some(name) = &req.new_custom_key_store_name {
            record.name = name.clone();
        }
        record.xks = Some(xks);
        Ok(super::keystores::UpdatePlan {
            record,
            reconnect: new_secret.is_some(),
        })
    }

    /// Checks a new or changed external store's proxy as AWS does before saving it: a health
    /// check signed with the credential (CreateCustomKeyStore, UpdateCustomKeyStore).
    pub(super) async fn check_proxy(
        &self,
        x: &XksProxyRecord,
        secret: &Zeroizing<String>,
        operation: &str,
    ) -> Result<(), KmsError> {
        let setup = self.key_stores.xks_setup().ok_or_else(|| {
            KmsError::Internal("[xks_client] is not set up in this daemon".into())
        })?;
        let client = client_for(x, Pin::new(secret.as_str()), &setup)?;
        client
            .health(&health_metadata(operation))
            .await
            .map_err(|e| management_error(&e))
    }
}

/// The proxy of an external store's record.
fn proxy_of(record: &KeyStoreRecord) -> Result<&XksProxyRecord, KmsError> {
    record
        .xks
        .as_ref()
        .ok_or_else(|| KmsError::Internal("not an external key store".into()))
}

/// An external store's proxy with an update's new endpoint and path applied.
fn moved_proxy(old: &XksProxyRecord, m: &XksMembers) -> XksProxyRecord {
    let mut xks = old.clone();
    if let Some(e) = &m.xks_proxy_uri_endpoint {
        xks.endpoint = e.clone();
    }
    if let Some(p) = &m.xks_proxy_uri_path {
        xks.uri_path = p.clone();
    }
    xks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(iv: usize, meta: usize, ct: usize) -> ProxySealed {
        ProxySealed {
            ciphertext: vec![7; ct],
            iv: vec![1; iv],
            tag: vec![9; 16],
            metadata: vec![3; meta],
        }
    }

    /// The outer layout reads back exactly, and nothing else parses.
    #[test]
    fn the_outer_layout_round_trips_and_refuses_the_rest() {
        for s in [sealed(12, 0, 17), sealed(16, 20, 4316), sealed(12, 4, 64)] {
            let body = outer_layout(&s);
            assert_eq!(
                body.len(),
                2 + s.iv.len() + s.metadata.len() + s.ciphertext.len() + 16
            );
            assert_eq!(parse_outer(&body), Some(s));
        }
        let good = outer_layout(&sealed(12, 4, 40));
        let mut bad_iv = good.clone();
        bad_iv[0] = 13;
        let mut bad_meta = good.clone();
        bad_meta[13] = 21;
        for body in [
            &[][..],
            &good[..10],
            &good[..good.len() - 40],
            &bad_iv[..],
            &bad_meta[..],
        ] {
            assert_eq!(parse_outer(body), None, "{body:?}");
        }
    }

    /// A v1 blob of an external key still names its key and version.
    #[test]
    fn blobs_of_external_keys_stay_v1() {
        let header = crate::ciphertext::header(&[5; 16], 1, &[2; 12]);
        let blob = crate::ciphertext::assemble(&header, &outer_layout(&sealed(12, 1, 48)));
        let p = crate::ciphertext::parse(&blob).unwrap();
        assert_eq!((p.key_id, p.key_version, p.iv), ([5; 16], 1, [2; 12]));
        assert_eq!(parse_outer(p.ciphertext_and_tag), Some(sealed(12, 1, 48)));
    }

    /// Each proxy failure has one AWS answer per use.
    #[test]
    fn proxy_failures_map_to_aws_answers() {
        let proxy = |name| XksProxyError::Proxy { status: 400, name };
        let cases = [
            (
                XksProxyError::Timeout,
                "XKS_PROXY_TIMED_OUT",
                "XksProxyUriUnreachableException",
                "DependencyTimeoutException",
            ),
            (
                XksProxyError::Unreachable("refused".into()),
                "XKS_PROXY_NOT_REACHABLE",
                "XksProxyUriUnreachableException",
                "KMSInvalidStateException",
            ),
            (
                XksProxyError::Tls("bad".into()),
                "XKS_PROXY_INVALID_TLS_CONFIGURATION",
                "XksProxyInvalidConfigurationException",
                "KMSInvalidStateException",
            ),
            (
                proxy(ProxyErrorName::AuthenticationFailed),
                "XKS_PROXY_ACCESS_DENIED",
                "XksProxyIncorrectAuthenticationCredentialException",
                "KMSInvalidStateException",
            ),
            (
                proxy(ProxyErrorName::AccessDenied),
                "XKS_PROXY_ACCESS_DENIED",
                "XksProxyIncorrectAuthenticationCredentialException",
                "KMSInvalidStateException",
            ),
            (
                proxy(ProxyErrorName::InvalidUriPath),
                "XKS_PROXY_INVALID_CONFIGURATION",
                "XksProxyInvalidConfigurationException",
                "KMSInvalidStateException",
            ),
            (
                proxy(ProxyErrorName::InvalidState),
                "XKS_PROXY_INVALID_RESPONSE",
                "XksProxyInvalidResponseException",
                "KMSInvalidStateException",
            ),
            (
                proxy(ProxyErrorName::InvalidCiphertext),
                "XKS_PROXY_INVALID_RESPONSE",
                "XksProxyInvalidResponseException",
                "InvalidCiphertextException",
            ),
            (
                XksProxyError::InvalidResponse("x".into()),
                "XKS_PROXY_INVALID_RESPONSE",
                "XksProxyInvalidResponseException",
                "KMSInvalidStateException",
            ),
        ];
        for (e, code, manage, crypto) in cases {
            assert_eq!(connection_code("cks-1", &e).as_str(), code, "{e:?}");
            assert_eq!(management_error(&e).aws_name(), manage, "{e:?}");
            assert_eq!(crypto_error("arn:k", &e).aws_name(), crypto, "{e:?}");
        }
        assert_eq!(
            create_key_error("k", &proxy(ProxyErrorName::KeyNotFound)).aws_name(),
            "XksKeyNotFoundException"
        );
        assert_eq!(
            create_key_error("k", &proxy(ProxyErrorName::InvalidKeyUsage)).aws_name(),
            "XksKeyInvalidConfigurationException"
        );
    }

    /// The members' rules; a refused secret is never echoed.
    #[test]
    fn members_are_checked_without_echoing_the_secret() {
        const SECRET: &str = "SECRETabcdefghijklmnopqrstuvwxyz0123456789+/=";
        let good = XksMembers {
            xks_proxy_uri_endpoint: Some("https://xks.example.com".into()),
            xks_proxy_uri_path: Some("/store-1/kms/xks/v1".into()),
            xks_proxy_vpc_endpoint_service_name: None,
            xks_proxy_authentication_credential: Some(XksProxyAuthenticationCredential {
                access_key_id: "AKIAXKSTESTAAAAAAAA2".into(),
                raw_secret_access_key: Zeroizing::new(SECRET.into()),
            }),
            xks_proxy_connectivity: Some(XksProxyConnectivity::PublicEndpoint),
        };
        assert!(new_proxy_settings(&good).is_ok());
        let recorded = super::super::operation::Recorded::recorded(&good).to_string();
        assert!(!recorded.contains(SECRET), "{recorded}");
        assert!(
            recorded.contains("AKIAXKSTESTAAAAAAAA2") && recorded.contains("/store-1/kms/xks/v1")
        );
        assert!(check_members(&XksMembers {
            xks_proxy_uri_endpoint: Some("http://127.0.0.1:4444".into()),
            xks_proxy_uri_path: Some("/kms/xks/v1".into()),
            ..good.clone()
        })
        .is_ok());
        let refused = |m: XksMembers| {
            let e = new_proxy_settings(&m).unwrap_err();
            assert!(
                !e.message().contains(SECRET) && !e.message().contains("bad!"),
                "{e}"
            );
            e.aws_name()
        };
        let cred = |id: &str, secret: &str| {
            Some(XksProxyAuthenticationCredential {
                access_key_id: id.into(),
                raw_secret_access_key: Zeroizing::new(secret.into()),
            })
        };
        let cases = [
            (
                XksMembers {
                    xks_proxy_uri_endpoint: Some("http://xks.example.com".into()),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_uri_endpoint: Some("https://a/b".into()),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_uri_path: Some("/kms/xks/v123".into()),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_uri_path: Some("x/kms/xks/v1".into()),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_authentication_credential: cred("short", SECRET),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_authentication_credential: cred("AKIAXKSTESTAAAAAAAA2", "bad!"),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_authentication_credential: None,
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_connectivity: None,
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_connectivity: Some(XksProxyConnectivity::VpcEndpointService),
                    ..good.clone()
                },
                "ValidationException",
            ),
            (
                XksMembers {
                    xks_proxy_connectivity: Some(XksProxyConnectivity::VpcEndpointService),
                    xks_proxy_vpc_endpoint_service_name: Some(
                        "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789".into(),
                    ),
                    ..good.clone()
                },
                "XksProxyVpcEndpointServiceNotFoundException",
            ),
        ];
        for (m, want) in cases {
            assert_eq!(refused(m), want);
        }
    }
}
