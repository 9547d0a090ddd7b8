//! Grants on the gRPC door: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant.
//!
//! A grant's two encryption context constraints are one nested message on the wire.

use std::collections::BTreeMap;

use super::super::convert::{each, from_message, pairs, to_message};
use crate::core::grants::{
    CreateGrantRequest, CreateGrantResponse, ListGrantsRequest, ListGrantsResponse,
    ListRetirableGrantsRequest, RetireGrantRequest, RevokeGrantRequest,
};
use crate::core::operation::Empty;
use crate::pb;
use crate::store::GrantRecord;

from_message!(m: pb::CreateGrantRequest => CreateGrantRequest {
    key_id, grantee_principal, retiring_principal, operations, grant_tokens, name, dry_run,
    constraint_equals = pairs(&m.constraints, |c| &c.encryption_context_equals),
    constraint_subset = pairs(&m.constraints, |c| &c.encryption_context_subset),
});
from_message!(pb::ListGrantsRequest => ListGrantsRequest {
    key_id, grant_id, grantee_principal, page
});
from_message!(pb::ListRetirableGrantsRequest => ListRetirableGrantsRequest {
    retiring_principal, page
});
from_message!(pb::RetireGrantRequest => RetireGrantRequest {
    grant_token, key_id, grant_id, dry_run
});
from_message!(pb::RevokeGrantRequest => RevokeGrantRequest { key_id, grant_id, dry_run });

to_message!(CreateGrantResponse => pb::CreateGrantResponse { grant_token, grant_id });
to_message!(page: ListGrantsResponse => pb::ListGrantsResponse {
    truncated = page.next_marker.is_some(), grants => each, next_marker
});
to_message!(Empty => pb::RetireGrantResponse {});
to_message!(Empty => pb::RevokeGrantResponse {});
to_message!(g: GrantRecord => pb::GrantListEntry {
    constraints = constraints(g.constraint_equals, g.constraint_subset),
    key_id, grant_id, name, creation_date: created_at_ms, grantee_principal, retiring_principal,
    issuing_account, operations
});

/// A grant's constraints, present when it has either.
fn constraints(
    equals: Option<BTreeMap<String, String>>,
    subset: Option<BTreeMap<String, String>>,
) -> Option<pb::GrantConstraints> {
    let constraint = |m: Option<BTreeMap<String, String>>| {
        m.map(|pairs| pb::EncryptionContextConstraint { pairs })
    };
    (equals.is_some() || subset.is_some()).then(|| pb::GrantConstraints {
        encryption_context_subset: constraint(subset),
        encryption_context_equals: constraint(equals),
    })
}
