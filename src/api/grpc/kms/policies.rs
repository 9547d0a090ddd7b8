//! Key policies on the gRPC door: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies.

use super::super::{opt, FromMessage};
use crate::core::operation::Empty;
use crate::core::policies::{
    GetKeyPolicyRequest, GetKeyPolicyResponse, ListKeyPoliciesRequest, ListKeyPoliciesResponse,
    PutKeyPolicyRequest,
};
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::GetKeyPolicyRequest> for GetKeyPolicyRequest {
    fn from_message(m: pb::GetKeyPolicyRequest) -> Result<Self, KmsError> {
        Ok(GetKeyPolicyRequest {
            key_id: m.key_id,
            policy_name: m.policy_name,
        })
    }
}

impl FromMessage<pb::PutKeyPolicyRequest> for PutKeyPolicyRequest {
    fn from_message(m: pb::PutKeyPolicyRequest) -> Result<Self, KmsError> {
        Ok(PutKeyPolicyRequest {
            key_id: m.key_id,
            policy_name: m.policy_name,
            policy: m.policy,
            bypass_policy_lockout_safety_check: m.bypass_policy_lockout_safety_check,
        })
    }
}

impl FromMessage<pb::ListKeyPoliciesRequest> for ListKeyPoliciesRequest {
    fn from_message(m: pb::ListKeyPoliciesRequest) -> Result<Self, KmsError> {
        Ok(ListKeyPoliciesRequest {
            key_id: m.key_id,
            limit: m.limit,
            marker: opt(m.marker),
        })
    }
}

impl From<GetKeyPolicyResponse> for pb::GetKeyPolicyResponse {
    fn from(r: GetKeyPolicyResponse) -> Self {
        pb::GetKeyPolicyResponse {
            policy: r.policy,
            policy_name: r.policy_name,
        }
    }
}

impl From<Empty> for pb::PutKeyPolicyResponse {
    fn from(_: Empty) -> Self {
        pb::PutKeyPolicyResponse {}
    }
}

impl From<ListKeyPoliciesResponse> for pb::ListKeyPoliciesResponse {
    fn from(r: ListKeyPoliciesResponse) -> Self {
        pb::ListKeyPoliciesResponse {
            policy_names: r.policy_names,
            next_marker: String::new(),
            truncated: false,
        }
    }
}
