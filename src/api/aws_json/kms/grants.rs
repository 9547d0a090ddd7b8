//! Grants on the AWS door: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant.
//!
//! A grant's two encryption-context constraints travel in one nested `Constraints`
//! structure, read and rendered here.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::members::{from_json, to_json, ts, Members};
use crate::core::grants::{
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListRetirableGrantsRequest, RetireGrantRequest, RevokeGrantRequest,
};
use crate::store::GrantRecord;

from_json! {
    CreateGrantRequest {
        key_id, grantee_principal, retiring_principal, operations,
        constraint_equals => constraint_equals, constraint_subset => constraint_subset,
        grant_tokens, name, dry_run,
    }
    ListGrantsRequest { key_id, grant_id, grantee_principal, page }
    ListRetirableGrantsRequest { retiring_principal, page }
    RetireGrantRequest { grant_token, key_id, grant_id, dry_run }
    RevokeGrantRequest { key_id, grant_id, dry_run }
}

to_json! {
    CreateGrantResponse { grant_token, grant_id }
    ListGrantsResponse { grants, next_marker; "Truncated" = |r| r.next_marker.is_some() }
    GrantRecord {
        key_id, grant_id, name, created_at_ms: "CreationDate" => ts, grantee_principal,
        retiring_principal, issuing_account, operations;
        "Constraints" = constraints,
    }
}

/// `Constraints`: two optional encryption-context maps.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConstraintsIn {
    #[serde(default)]
    encryption_context_subset: Option<BTreeMap<String, String>>,
    #[serde(default)]
    encryption_context_equals: Option<BTreeMap<String, String>>,
}

/// A request's `Constraints` (absent or `null`: none).
fn constraints_in(m: &Members) -> Result<ConstraintsIn, serde_json::Error> {
    m.get("Constraints")
        .map(ConstraintsIn::deserialize)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// `Constraints.EncryptionContextEquals`.
fn constraint_equals(
    m: &mut Members,
) -> Result<Option<BTreeMap<String, String>>, serde_json::Error> {
    constraints_in(m).map(|c| c.encryption_context_equals)
}

/// `Constraints.EncryptionContextSubset`.
fn constraint_subset(
    m: &mut Members,
) -> Result<Option<BTreeMap<String, String>>, serde_json::Error> {
    constraints_in(m).map(|c| c.encryption_context_subset)
}

/// A grant's `Constraints`, left out when it has none.
fn constraints(g: &GrantRecord) -> Option<Value> {
    (g.constraint_equals.is_some() || g.constraint_subset.is_some()).then(|| {
        json!({
            "EncryptionContextSubset": g.constraint_subset,
            "EncryptionContextEquals": g.constraint_equals,
        })
    })
}
