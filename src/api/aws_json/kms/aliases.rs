//! Aliases on the AWS door: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

use serde_json::{json, Value};

use super::{alias_entry, parse, FromJson, ToJson};
use crate::core::aliases::{
    CreateAliasRequest, DeleteAliasRequest, ListAliasesRequest, ListAliasesResponse,
    UpdateAliasRequest,
};

input!(AliasIn {
    alias_name: Option<String>,
    target_key_id: Option<String>,
});

input!(AliasPageIn {
    key_id: Option<String>,
    limit: Option<i32>,
    marker: Option<String>,
});

impl FromJson for CreateAliasRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: AliasIn = parse(body)?;
        Ok(CreateAliasRequest {
            alias_name: r.alias_name.unwrap_or_default(),
            target_key_id: r.target_key_id.unwrap_or_default(),
        })
    }
}

impl FromJson for UpdateAliasRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: AliasIn = parse(body)?;
        Ok(UpdateAliasRequest {
            alias_name: r.alias_name.unwrap_or_default(),
            target_key_id: r.target_key_id.unwrap_or_default(),
        })
    }
}

impl FromJson for DeleteAliasRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: AliasIn = parse(body)?;
        Ok(DeleteAliasRequest {
            alias_name: r.alias_name.unwrap_or_default(),
        })
    }
}

impl FromJson for ListAliasesRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: AliasPageIn = parse(body)?;
        Ok(ListAliasesRequest {
            key_id: r.key_id,
            limit: r.limit,
            marker: r.marker,
        })
    }
}

impl ToJson for ListAliasesResponse {
    fn to_json(self) -> Value {
        json!({
            "Aliases": self.aliases.into_iter().map(alias_entry).collect::<Vec<_>>(),
            "Truncated": self.next_marker.is_some(),
            "NextMarker": self.next_marker,
        })
    }
}
