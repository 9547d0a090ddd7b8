//! Key policies on the gRPC door: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies.

use super::super::convert::{from_message, to_message};
use crate::core::operation::Empty;
use crate::core::policies::{
    GetKeyPolicyRequest, GetKeyPolicyResponse, ListKeyPoliciesRequest, ListKeyPoliciesResponse,
    PutKeyPolicyRequest,
};
use crate::pb;

from_message!(pb::GetKeyPolicyRequest => GetKeyPolicyRequest { key_id, policy_name });
from_message!(pb::PutKeyPolicyRequest => PutKeyPolicyRequest {
    key_id, policy_name, policy, bypass_policy_lockout_safety_check
});
from_message!(pb::ListKeyPoliciesRequest => ListKeyPoliciesRequest { key_id, page });

to_message!(GetKeyPolicyResponse => pb::GetKeyPolicyResponse { policy, policy_name });
to_message!(Empty => pb::PutKeyPolicyResponse {});
// Every key has the one policy `default`: a single page.
to_message!(ListKeyPoliciesResponse => pb::ListKeyPoliciesResponse {
    policy_names, next_marker = String::new(), truncated = false
});
