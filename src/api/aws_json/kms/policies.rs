//! Key policies on the AWS door: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies.

use serde_json::{json, Value};

use super::{parse, FromJson, ToJson};
use crate::core::policies::{
    GetKeyPolicyRequest, GetKeyPolicyResponse, ListKeyPoliciesRequest, ListKeyPoliciesResponse,
    PutKeyPolicyRequest,
};

input!(PolicyIn {
    key_id: Option<String>,
    policy_name: Option<String>,
    policy: Option<String>,
    bypass_policy_lockout_safety_check: Option<bool>,
    limit: Option<i32>,
    marker: Option<String>,
});

impl FromJson for GetKeyPolicyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: PolicyIn = parse(body)?;
        Ok(GetKeyPolicyRequest {
            key_id: r.key_id.unwrap_or_default(),
            policy_name: r.policy_name.unwrap_or_default(),
        })
    }
}

impl FromJson for PutKeyPolicyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: PolicyIn = parse(body)?;
        Ok(PutKeyPolicyRequest {
            key_id: r.key_id.unwrap_or_default(),
            policy_name: r.policy_name.unwrap_or_default(),
            policy: r.policy.unwrap_or_default(),
            bypass_policy_lockout_safety_check: r
                .bypass_policy_lockout_safety_check
                .unwrap_or(false),
        })
    }
}

impl FromJson for ListKeyPoliciesRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: PolicyIn = parse(body)?;
        Ok(ListKeyPoliciesRequest {
            key_id: r.key_id.unwrap_or_default(),
            limit: r.limit,
            marker: r.marker,
        })
    }
}

impl ToJson for GetKeyPolicyResponse {
    fn to_json(self) -> Value {
        json!({"Policy": self.policy, "PolicyName": self.policy_name})
    }
}

impl ToJson for ListKeyPoliciesResponse {
    fn to_json(self) -> Value {
        json!({"PolicyNames": self.policy_names, "Truncated": false})
    }
}
