//! Custom key stores on the AWS door: CreateCustomKeyStore, ConnectCustomKeyStore,
//! DisconnectCustomKeyStore, UpdateCustomKeyStore, DeleteCustomKeyStore,
//! DescribeCustomKeyStores.
//!
//! `KeyStorePassword` and the XKS proxy's `RawSecretAccessKey` are read into zeroizing strings
//! and never rendered. `XksProxyVpcEndpointServiceOwner` is not read, so the model check
//! refuses it by name.

use serde::de::Error as _;
use serde_json::Value;
use zeroize::Zeroizing;

use super::members::{from_json, non_empty, to_json, ts, Members, Wire};
use crate::core::external::{XksMembers, XksProxyAuthenticationCredential, XksProxyConfiguration};
use crate::core::keystores::{
    ConnectCustomKeyStoreRequest, CreateCustomKeyStoreRequest, CreateCustomKeyStoreResponse,
    CustomKeyStoresListEntry, DeleteCustomKeyStoreRequest, DescribeCustomKeyStoresRequest,
    DescribeCustomKeyStoresResponse, DisconnectCustomKeyStoreRequest, UpdateCustomKeyStoreRequest,
};

from_json! {
    CreateCustomKeyStoreRequest {
        custom_key_store_name, cloud_hsm_cluster_id, trust_anchor_certificate,
        key_store_password, custom_key_store_type, xks => xks_members,
    }
    ConnectCustomKeyStoreRequest { custom_key_store_id }
    DisconnectCustomKeyStoreRequest { custom_key_store_id }
    DeleteCustomKeyStoreRequest { custom_key_store_id }
    UpdateCustomKeyStoreRequest {
        custom_key_store_id, new_custom_key_store_name, key_store_password, cloud_hsm_cluster_id,
        xks => xks_members,
    }
    DescribeCustomKeyStoresRequest { custom_key_store_id, custom_key_store_name, page }
}

to_json! {
    CreateCustomKeyStoreResponse { custom_key_store_id }
    DescribeCustomKeyStoresResponse {
        custom_key_stores, next_marker; "Truncated" = |r| r.next_marker.is_some()
    }
    CustomKeyStoresListEntry {
        custom_key_store_id, custom_key_store_name, cloud_hsm_cluster_id => non_empty,
        trust_anchor_certificate => non_empty, connection_state, connection_error_code,
        creation_date_ms: "CreationDate" => ts, custom_key_store_type, xks_proxy_configuration,
    }
    XksProxyConfiguration {
        connectivity, access_key_id, uri_endpoint, uri_path,
    }
}

/// The XKS members of CreateCustomKeyStore and UpdateCustomKeyStore.
fn xks_members(m: &mut Members) -> Result<XksMembers, serde_json::Error> {
    Ok(XksMembers {
        xks_proxy_uri_endpoint: m.read("xks_proxy_uri_endpoint")?,
        xks_proxy_uri_path: m.read("xks_proxy_uri_path")?,
        xks_proxy_vpc_endpoint_service_name: m.read("xks_proxy_vpc_endpoint_service_name")?,
        xks_proxy_authentication_credential: m.read("xks_proxy_authentication_credential")?,
        xks_proxy_connectivity: m.read("xks_proxy_connectivity")?,
    })
}

/// `XksProxyAuthenticationCredential`: `{AccessKeyId, RawSecretAccessKey}`, the secret
/// straight into zeroizing memory.
impl Wire for XksProxyAuthenticationCredential {
    fn from_wire(value: Value) -> Result<Self, serde_json::Error> {
        let Value::Object(mut o) = value else {
            return Err(serde_json::Error::custom(
                "XksProxyAuthenticationCredential is not a structure",
            ));
        };
        let mut text = |name: &str| match o.remove(name) {
            Some(Value::String(s)) => Ok(Zeroizing::new(s)),
            _ => Err(serde_json::Error::custom(format!(
                "XksProxyAuthenticationCredential.{name} is required"
            ))),
        };
        let access_key_id = text("AccessKeyId")?.to_string();
        let raw_secret_access_key = text("RawSecretAccessKey")?;
        Ok(XksProxyAuthenticationCredential {
            access_key_id,
            raw_secret_access_key,
        })
    }
}
