//! Custom key stores on the AWS door: CreateCustomKeyStore, ConnectCustomKeyStore,
//! DisconnectCustomKeyStore, UpdateCustomKeyStore, DeleteCustomKeyStore,
//! DescribeCustomKeyStores.
//!
//! `KeyStorePassword` is read into a zeroizing string and never rendered. The XKS members
//! of the model are not read (stores of type `EXTERNAL_KEY_STORE` are not served yet), so the
//! model check refuses them by name.

use super::members::{from_json, to_json, ts};
use crate::core::keystores::{
    ConnectCustomKeyStoreRequest, CreateCustomKeyStoreRequest, CreateCustomKeyStoreResponse,
    CustomKeyStoresListEntry, DeleteCustomKeyStoreRequest, DescribeCustomKeyStoresRequest,
    DescribeCustomKeyStoresResponse, DisconnectCustomKeyStoreRequest, UpdateCustomKeyStoreRequest,
};

from_json! {
    CreateCustomKeyStoreRequest {
        custom_key_store_name, cloud_hsm_cluster_id, trust_anchor_certificate,
        key_store_password, custom_key_store_type,
    }
    ConnectCustomKeyStoreRequest { custom_key_store_id }
    DisconnectCustomKeyStoreRequest { custom_key_store_id }
    DeleteCustomKeyStoreRequest { custom_key_store_id }
    UpdateCustomKeyStoreRequest {
        custom_key_store_id, new_custom_key_store_name, key_store_password, cloud_hsm_cluster_id,
    }
    DescribeCustomKeyStoresRequest { custom_key_store_id, custom_key_store_name, page }
}

to_json! {
    CreateCustomKeyStoreResponse { custom_key_store_id }
    DescribeCustomKeyStoresResponse {
        custom_key_stores, next_marker; "Truncated" = |r| r.next_marker.is_some()
    }
    CustomKeyStoresListEntry {
        custom_key_store_id, custom_key_store_name, cloud_hsm_cluster_id,
        trust_anchor_certificate, connection_state, connection_error_code,
        creation_date_ms: "CreationDate" => ts, custom_key_store_type,
    }
}
