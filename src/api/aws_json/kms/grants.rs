//! Grants on the AWS door: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant.

use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{grant_entry, parse, Context, FromJson, ToJson};
use crate::core::grants::{
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListRetirableGrantsRequest, RetireGrantRequest, RevokeGrantRequest,
};

/// `Constraints`: two optional encryption-context maps.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ConstraintsIn {
    #[serde(default)]
    encryption_context_subset: Context,
    #[serde(default)]
    encryption_context_equals: Context,
}

input!(CreateGrantIn {
    key_id: Option<String>,
    grantee_principal: Option<String>,
    retiring_principal: Option<String>,
    operations: Option<Vec<String>>,
    constraints: Option<ConstraintsIn>,
    grant_tokens: Option<Vec<String>>,
    name: Option<String>,
    dry_run: Option<bool>,
});

input!(GrantsIn {
    key_id: Option<String>,
    grant_id: Option<String>,
    grantee_principal: Option<String>,
    retiring_principal: Option<String>,
    grant_token: Option<String>,
    limit: Option<i32>,
    marker: Option<String>,
    dry_run: Option<bool>,
});

impl FromJson for CreateGrantRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: CreateGrantIn = parse(body)?;
        let c = r.constraints.unwrap_or_default();
        Ok(CreateGrantRequest {
            key_id: r.key_id.unwrap_or_default(),
            grantee_principal: r.grantee_principal.unwrap_or_default(),
            retiring_principal: r.retiring_principal,
            operations: r.operations.unwrap_or_default(),
            constraint_equals: c.encryption_context_equals,
            constraint_subset: c.encryption_context_subset,
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            name: r.name,
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl ToJson for CreateGrantResponse {
    fn to_json(self) -> Value {
        json!({"GrantToken": self.grant_token, "GrantId": self.grant_id})
    }
}

impl FromJson for ListGrantsRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: GrantsIn = parse(body)?;
        Ok(ListGrantsRequest {
            key_id: r.key_id.unwrap_or_default(),
            grant_id: r.grant_id,
            grantee_principal: r.grantee_principal,
            limit: r.limit,
            marker: r.marker,
        })
    }
}

impl FromJson for ListRetirableGrantsRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: GrantsIn = parse(body)?;
        Ok(ListRetirableGrantsRequest {
            retiring_principal: r.retiring_principal.unwrap_or_default(),
            limit: r.limit,
            marker: r.marker,
        })
    }
}

impl ToJson for ListGrantsResponse {
    fn to_json(self) -> Value {
        json!({
            "Grants": self.grants.into_iter().map(grant_entry).collect::<Vec<_>>(),
            "Truncated": self.next_marker.is_some(),
            "NextMarker": self.next_marker,
        })
    }
}

impl FromJson for RetireGrantRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: GrantsIn = parse(body)?;
        Ok(RetireGrantRequest {
            grant_token: r.grant_token.map(Zeroizing::new),
            key_id: r.key_id,
            grant_id: r.grant_id,
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for RevokeGrantRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: GrantsIn = parse(body)?;
        Ok(RevokeGrantRequest {
            key_id: r.key_id.unwrap_or_default(),
            grant_id: r.grant_id.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}
