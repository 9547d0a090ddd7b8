//! Decision cost: a 20-statement key policy with conditions, 5 identity policies, 1 grant.
//! Plain std timing (harness = false). Prints one JSON line.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use p11kms::policy::{
    evaluate, EvalInput, GrantConstraintsView, GrantView, NamedPolicy, Policy, PolicyKind,
    RequestContext,
};

const ACCT: &str = "111122223333";
const KEY: &str = "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn key_policy() -> String {
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

fn identity_policies() -> Vec<String> {
    (0..5)
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

fn main() {
    let kp = Policy::parse(&key_policy(), PolicyKind::Key).expect("key policy");
    assert_eq!(kp.statement_count(), 20);
    let ids: Vec<Policy> = identity_policies()
        .iter()
        .map(|t| Policy::parse(t, PolicyKind::Identity).expect("identity policy"))
        .collect();
    let named: Vec<NamedPolicy<'_>> = ids
        .iter()
        .map(|p| NamedPolicy {
            name: "team",
            policy: p,
        })
        .collect();

    let ops = vec!["Decrypt".to_string(), "Encrypt".to_string()];
    let constraint: BTreeMap<String, String> =
        [("Department".to_string(), "IT".to_string())].into();
    let grants = [GrantView {
        grant_id: "g-1",
        grantee_principal: "arn:aws:iam::111122223333:role/Batch",
        operations: &ops,
        constraints: Some(GrantConstraintsView {
            encryption_context_equals: None,
            encryption_context_subset: Some(&constraint),
        }),
    }];

    let ec: BTreeMap<String, String> = [
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

    let input = EvalInput {
        key_account: Some(ACCT),
        key_policy: Some(NamedPolicy {
            name: "default",
            policy: &kp,
        }),
        identity_policies: &named,
        guardrails: &[],
        permission_boundaries: &[],
        session_policies: &[],
        grants: &grants,
        encryption_context: &ec,
        role_arn: None,
        request: &req,
    };
    let first = evaluate(&input);
    assert!(
        first.is_allow(),
        "bench request must be allowed: {}",
        first.summary()
    );

    // Warm up, then run up to 1,000,000 decisions or 10 s, whichever comes first.
    for _ in 0..10_000 {
        black_box(evaluate(black_box(&input)));
    }
    let budget = Duration::from_secs(10);
    let target = 1_000_000u64;
    let start = Instant::now();
    let mut n = 0u64;
    while n < target {
        for _ in 0..1_000 {
            black_box(evaluate(black_box(&input)));
        }
        n += 1_000;
        if start.elapsed() > budget {
            break;
        }
    }
    let elapsed = start.elapsed();
    let ns = elapsed.as_nanos() as f64 / n as f64;
    println!(
        "{{\"bench\":\"policy_eval\",\"key_policy_statements\":20,\"identity_policies\":5,\"grants\":1,\"decisions\":{n},\"elapsed_ms\":{:.1},\"ns_per_decision\":{ns:.1},\"decisions_per_sec\":{:.0}}}",
        elapsed.as_secs_f64() * 1e3,
        1e9 / ns
    );
}
