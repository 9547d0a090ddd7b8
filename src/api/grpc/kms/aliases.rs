//! Aliases on the gRPC door: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

use super::super::convert::{each, from_message, to_message};
use crate::core::aliases::{
    AliasListEntry, CreateAliasRequest, DeleteAliasRequest, ListAliasesRequest,
    ListAliasesResponse, UpdateAliasRequest,
};
use crate::core::operation::Empty;
use crate::pb;

from_message!(pb::CreateAliasRequest => CreateAliasRequest { alias_name, target_key_id });
from_message!(pb::UpdateAliasRequest => UpdateAliasRequest { alias_name, target_key_id });
from_message!(pb::DeleteAliasRequest => DeleteAliasRequest { alias_name });
from_message!(pb::ListAliasesRequest => ListAliasesRequest { key_id, page });

to_message!(Empty => pb::CreateAliasResponse {});
to_message!(Empty => pb::UpdateAliasResponse {});
to_message!(Empty => pb::DeleteAliasResponse {});
to_message!(page: ListAliasesResponse => pb::ListAliasesResponse {
    truncated = page.next_marker.is_some(), aliases => each, next_marker
});
to_message!(AliasListEntry => pb::AliasListEntry {
    alias_name, alias_arn, target_key_id,
    creation_date: creation_date_ms, last_updated_date: last_updated_date_ms
});
