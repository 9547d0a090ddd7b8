//! Aliases on the AWS door: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

use super::members::{from_json, non_empty, to_json, ts};
use crate::core::aliases::{
    AliasListEntry, CreateAliasRequest, DeleteAliasRequest, ListAliasesRequest,
    ListAliasesResponse, UpdateAliasRequest,
};

from_json! {
    CreateAliasRequest { alias_name, target_key_id }
    UpdateAliasRequest { alias_name, target_key_id }
    DeleteAliasRequest { alias_name }
    ListAliasesRequest { key_id, page }
}

to_json! {
    ListAliasesResponse { aliases, next_marker; "Truncated" = |r| r.next_marker.is_some() }
    AliasListEntry {
        alias_name, alias_arn, target_key_id => non_empty,
        creation_date_ms: "CreationDate" => ts, last_updated_date_ms: "LastUpdatedDate" => ts,
    }
}
