//! Key policies on the AWS door: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies.

use super::members::{from_json, to_json};
use crate::core::policies::{
    GetKeyPolicyRequest, GetKeyPolicyResponse, ListKeyPoliciesRequest, ListKeyPoliciesResponse,
    PutKeyPolicyRequest,
};

from_json! {
    GetKeyPolicyRequest { key_id, policy_name }
    PutKeyPolicyRequest { key_id, policy_name, policy, bypass_policy_lockout_safety_check }
    ListKeyPoliciesRequest { key_id, page }
}

// A key has one policy, so its list is never truncated.
to_json! {
    GetKeyPolicyResponse { policy, policy_name }
    ListKeyPoliciesResponse { policy_names; "Truncated" = |_| false }
}
