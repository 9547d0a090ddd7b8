//! The policy-decision benchmark scenario shared by `benches/policy_eval.rs` and
//! `p11kms-bench --suite policy`: a 20-statement key policy with conditions, 5 identity
//! policies and 1 grant, and a `kms:Decrypt` request that the key policy allows.

use std::collections::BTreeMap;

use super::{
    EvalInput, GrantConstraintsView, GrantView, NamedPolicy, Policy, PolicyKind, RequestContext,
};

const ACCT: &str = "111122223333";
const KEY: &str = "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// Statements in the scenario's key policy.
pub const KEY_POLICY_STATEMENTS: usize = 20;
/// Identity policies in the scenario.
pub const IDENTITY_POLICIES: usize = 5;
/// Grants in the scenario.
pub const GRANTS: usize = 1;

/// The key policy text (20 statements).
pub fn key_policy() -> String {
    let mut st = vec![
        r#"{"Sid":"Enable IAM policies","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}"#.to_string(),
        r#"{"Sid":"DenyOutsideNet","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NotIpAddress":{"aws:SourceIp":["10.0.0.0/8","192.0.2.0/24","2001:db8::/32"]},"Bool":{"aws:ViaAWSService":"false"}}}"#.to_string(),
        r#"{"Sid":"DenyFinance","Effect":"Deny","Principal":{"AWS":"*"},"Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:Department":"Finance"}}}"#.to_string(),
        r#"{"Sid":"RequireTLS","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"false"}}}"#.to_string(),
        r#"{"Sid":"Admins","Effect":"Allow","Principal":{"AWS":["arn:aws:iam::111122223333:user/KMSKeyAdmin","arn:aws:iam::111122223333:role/Admin"]},"Action":["kms:Create*","kms:Describe*","kms:Enable*","kms:List*","kms:Put*","kms:Update*","kms:Revoke*","kms:Disable*","kms:Get*","kms:Delete*","kms:TagResource","kms:UntagResource","kms:ScheduleKeyDeletion","kms:CancelKeyDeletion"],"Resource":"*"}"#.to_string(),
        r#"{"Sid":"ViaEBS","Effect":"Allow","Principal":{"AWS":"*"},"Action":["kms:Encrypt","kms:Decrypt","kms:ReEncrypt*","kms:GenerateDataKey*","kms:CreateGrant","kms:DescribeKey"],"Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"111122223333","kms:ViaService":"ec2.us-west-2.amazonaws.com"}}}"#.to_string(),
        r#"{"Sid":"Attach","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/EncryptionApp"},"Action":["kms:ListGrants","kms:CreateGrant","kms:RevokeGrant"],"Resource":"*","Condition":{"Bool":{"kms:GrantIsForAWSResource":"true"}}}"#.to_string(),
    ];
    for i in 0..13 {
        st.push(format!(
            r#"{{"Sid":"App{i}","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::111122223333:role/App{i}"}},"Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*","Condition":{{"StringLike":{{"kms:EncryptionContext:App":"app{i}-*"}},"ForAllValues:StringEquals":{{"kms:EncryptionContextKeys":["App","Stage"]}},"DateLessThan":{{"aws:CurrentTime":"2030-01-01T00:00:00Z"}}}}}}"#
        ));
    }
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
        st.join(",")
    )
}

/// The identity policy texts (5).
pub fn identity_policies() -> Vec<String> {
    (0..IDENTITY_POLICIES)
        .map(|i| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[
                {{"Sid":"Other{i}","Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"arn:aws:s3:::bucket{i}/${{aws:username}}/*"}},
                {{"Sid":"Tagged{i}","Effect":"Allow","Action":"kms:Decrypt","Resource":"arn:aws:kms:*:111122223333:key/*","Condition":{{"StringEquals":{{"aws:ResourceTag/Project":"${{aws:PrincipalTag/Project}}"}}}}}},
                {{"Sid":"NoDelete{i}","Effect":"Deny","Action":"kms:ScheduleKeyDeletion","Resource":"*"}}]}}"#
            )
        })
        .collect()
}

/// The parsed policies, the grant and the request of the scenario. Build it once, then call
/// [`Scenario::with_input`] to evaluate.
pub struct Scenario {
    key_policy: Policy,
    identity: Vec<Policy>,
    grant_ops: Vec<String>,
    grant_constraint: BTreeMap<String, String>,
    encryption_context: BTreeMap<String, String>,
    request: RequestContext,
}

impl Scenario {
    /// Parses the policies and builds the request. Panics only if the fixed texts stop
    /// parsing (a bug in the policy parser or in this file).
    pub fn build() -> Scenario {
        let key_policy = Policy::parse(&key_policy(), PolicyKind::Key).expect("key policy");
        assert_eq!(key_policy.statement_count(), KEY_POLICY_STATEMENTS);
        let identity = identity_policies()
            .iter()
            .map(|t| Policy::parse(t, PolicyKind::Identity).expect("identity policy"))
            .collect();
        let encryption_context: BTreeMap<String, String> = [
            ("App".to_string(), "app3-x".to_string()),
            ("Stage".to_string(), "prod".to_string()),
        ]
        .into();
        let mut req = RequestContext::new(
            "arn:aws:iam::111122223333:user/Alice",
            ACCT,
            "kms:Decrypt",
            KEY,
        );
        req.set("aws:PrincipalArn", "arn:aws:iam::111122223333:user/Alice");
        req.set("aws:PrincipalAccount", ACCT);
        req.set("kms:CallerAccount", ACCT);
        req.set("aws:username", "Alice");
        req.set("aws:PrincipalTag/Project", "Alpha");
        req.set("aws:ResourceTag/Project", "Alpha");
        req.set("aws:SourceIp", "10.1.2.3");
        req.set("aws:SecureTransport", "true");
        req.set("aws:ViaAWSService", "false");
        req.set("aws:CurrentTime", "2025-06-01T12:00:00Z");
        req.set("kms:EncryptionContext:App", "app3-x");
        req.set("kms:EncryptionContext:Stage", "prod");
        req.set_multi(
            "kms:EncryptionContextKeys",
            vec!["App".into(), "Stage".into()],
        );
        req.set("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT");
        Scenario {
            key_policy,
            identity,
            grant_ops: vec!["Decrypt".to_string(), "Encrypt".to_string()],
            grant_constraint: [("Department".to_string(), "IT".to_string())].into(),
            encryption_context,
            request: req,
        }
    }

    /// Calls `f` with the scenario's evaluation input (borrowing the parsed policies).
    pub fn with_input<R>(&self, f: impl FnOnce(&EvalInput<'_>) -> R) -> R {
        let named: Vec<NamedPolicy<'_>> = self
            .identity
            .iter()
            .map(|p| NamedPolicy {
                name: "team",
                policy: p,
            })
            .collect();
        let grants = [GrantView {
            grant_id: "g-1",
            grantee_principal: "arn:aws:iam::111122223333:role/Batch",
            operations: &self.grant_ops,
            constraints: Some(GrantConstraintsView {
                encryption_context_equals: None,
                encryption_context_subset: Some(&self.grant_constraint),
            }),
        }];
        let input = EvalInput {
            key_account: Some(ACCT),
            key_policy: Some(NamedPolicy {
                name: "default",
                policy: &self.key_policy,
            }),
            identity_policies: &named,
            guardrails: &[],
            permission_boundaries: &[],
            session_policies: &[],
            grants: &grants,
            encryption_context: &self.encryption_context,
            role_arn: None,
            request: &self.request,
        };
        f(&input)
    }
}
