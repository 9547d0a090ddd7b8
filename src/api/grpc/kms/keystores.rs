//! Custom key stores on the gRPC door: CreateCustomKeyStore, ConnectCustomKeyStore,
//! DisconnectCustomKeyStore, UpdateCustomKeyStore, DeleteCustomKeyStore,
//! DescribeCustomKeyStores.
//!
//! `key_store_password` and the proxy's `raw_secret_access_key` move into zeroizing strings;
//! no response carries them.

use super::super::convert::{each, from_message, to_message};
use crate::core::external::{
    XksMembers, XksProxyAuthenticationCredential, XksProxyConfiguration, XksProxyConnectivity,
};
use crate::core::keystores::{
    ConnectCustomKeyStoreRequest, CreateCustomKeyStoreRequest, CreateCustomKeyStoreResponse,
    CustomKeyStoresListEntry, DeleteCustomKeyStoreRequest, DescribeCustomKeyStoresRequest,
    DescribeCustomKeyStoresResponse, DisconnectCustomKeyStoreRequest, UpdateCustomKeyStoreRequest,
};
use crate::core::operation::Empty;
use crate::core::KmsError;
use crate::pb;
use zeroize::Zeroizing;

/// The XKS members of a Create or Update request (empty strings are absent members).
fn xks_members(
    endpoint: &str,
    path: &str,
    vpc_service: &str,
    connectivity: &str,
    credential: Option<&pb::XksProxyAuthenticationCredential>,
) -> Result<XksMembers, KmsError> {
    let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let connectivity = match connectivity {
        "" => None,
        c => Some(XksProxyConnectivity::parse(c).ok_or_else(|| {
            KmsError::validation(
                "xksProxyConnectivity",
                "Member must satisfy enum value set: [PUBLIC_ENDPOINT, VPC_ENDPOINT_SERVICE]",
            )
        })?),
    };
    Ok(XksMembers {
        xks_proxy_uri_endpoint: given(endpoint),
        xks_proxy_uri_path: given(path),
        xks_proxy_vpc_endpoint_service_name: given(vpc_service),
        xks_proxy_authentication_credential: credential.map(|c| XksProxyAuthenticationCredential {
            access_key_id: c.access_key_id.clone(),
            raw_secret_access_key: Zeroizing::new(c.raw_secret_access_key.clone()),
        }),
        xks_proxy_connectivity: connectivity,
    })
}

/// The message of an external store's proxy settings.
fn xks_configuration(c: Option<XksProxyConfiguration>) -> Option<pb::XksProxyConfiguration> {
    c.map(|c| pb::XksProxyConfiguration {
        connectivity: c.connectivity.as_str().to_string(),
        access_key_id: c.access_key_id,
        uri_endpoint: c.uri_endpoint,
        uri_path: c.uri_path,
    })
}

from_message!(m: pb::CreateCustomKeyStoreRequest => CreateCustomKeyStoreRequest {
    xks = xks_members(
        &m.xks_proxy_uri_endpoint, &m.xks_proxy_uri_path, &m.xks_proxy_vpc_endpoint_service_name,
        &m.xks_proxy_connectivity, m.xks_proxy_authentication_credential.as_ref(),
    )?,
    custom_key_store_name, cloud_hsm_cluster_id, trust_anchor_certificate, key_store_password,
    custom_key_store_type
});
from_message!(pb::ConnectCustomKeyStoreRequest => ConnectCustomKeyStoreRequest {
    custom_key_store_id
});
from_message!(pb::DisconnectCustomKeyStoreRequest => DisconnectCustomKeyStoreRequest {
    custom_key_store_id
});
from_message!(pb::DeleteCustomKeyStoreRequest => DeleteCustomKeyStoreRequest {
    custom_key_store_id
});
from_message!(m: pb::UpdateCustomKeyStoreRequest => UpdateCustomKeyStoreRequest {
    xks = xks_members(
        &m.xks_proxy_uri_endpoint, &m.xks_proxy_uri_path, &m.xks_proxy_vpc_endpoint_service_name,
        &m.xks_proxy_connectivity, m.xks_proxy_authentication_credential.as_ref(),
    )?,
    custom_key_store_id, new_custom_key_store_name, key_store_password, cloud_hsm_cluster_id
});
from_message!(pb::DescribeCustomKeyStoresRequest => DescribeCustomKeyStoresRequest {
    custom_key_store_id, custom_key_store_name, page
});

to_message!(CreateCustomKeyStoreResponse => pb::CreateCustomKeyStoreResponse {
    custom_key_store_id
});
to_message!(Empty => pb::ConnectCustomKeyStoreResponse {});
to_message!(Empty => pb::DisconnectCustomKeyStoreResponse {});
to_message!(Empty => pb::UpdateCustomKeyStoreResponse {});
to_message!(Empty => pb::DeleteCustomKeyStoreResponse {});
to_message!(page: DescribeCustomKeyStoresResponse => pb::DescribeCustomKeyStoresResponse {
    truncated = page.next_marker.is_some(), custom_key_stores => each, next_marker
});
to_message!(CustomKeyStoresListEntry => pb::CustomKeyStoresListEntry {
    custom_key_store_id, custom_key_store_name, cloud_hsm_cluster_id, trust_anchor_certificate,
    connection_state, connection_error_code, creation_date: creation_date_ms,
    custom_key_store_type, xks_proxy_configuration => xks_configuration
});
