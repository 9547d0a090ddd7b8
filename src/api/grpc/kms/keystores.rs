//! Custom key stores on the gRPC door: CreateCustomKeyStore, ConnectCustomKeyStore,
//! DisconnectCustomKeyStore, UpdateCustomKeyStore, DeleteCustomKeyStore,
//! DescribeCustomKeyStores.
//!
//! `key_store_password` moves into a zeroizing string; no response carries it.

use super::super::convert::{each, from_message, to_message};
use crate::core::keystores::{
    ConnectCustomKeyStoreRequest, CreateCustomKeyStoreRequest, CreateCustomKeyStoreResponse,
    CustomKeyStoresListEntry, DeleteCustomKeyStoreRequest, DescribeCustomKeyStoresRequest,
    DescribeCustomKeyStoresResponse, DisconnectCustomKeyStoreRequest, UpdateCustomKeyStoreRequest,
};
use crate::core::operation::Empty;
use crate::pb;

from_message!(pb::CreateCustomKeyStoreRequest => CreateCustomKeyStoreRequest {
    custom_key_store_name, cloud_hsm_cluster_id, trust_anchor_certificate, key_store_password,
    custom_key_store_type, xks = Default::default()
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
from_message!(pb::UpdateCustomKeyStoreRequest => UpdateCustomKeyStoreRequest {
    custom_key_store_id, new_custom_key_store_name, key_store_password, cloud_hsm_cluster_id,
    xks = Default::default()
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
    custom_key_store_type
});
