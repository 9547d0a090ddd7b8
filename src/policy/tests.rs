//! Cross-cutting tests: the shared test vectors, evaluator edges, malformed documents,
//! and property tests (no panics on any input).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::cases::{load_cases, run_case};
use super::*;

/// The repository's copy of the shared test vectors (`tests/fixtures/policy-cases/`).
const CASES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/policy-cases/cases.json"
));

/// The repository's copy of the test vectors must equal `../shared/policy-cases/` byte for
/// byte when that folder exists (a checkout without it has only the copy, and passes).
#[test]
fn policy_cases_fixture_matches_shared_copy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/policy-cases");
    if !shared.is_dir() {
        eprintln!(
            "{} does not exist: nothing to compare with",
            shared.display()
        );
        return;
    }
    let fixture = root.join("tests/fixtures/policy-cases");
    let names = |dir: &std::path::Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&shared),
        names(&fixture),
        "tests/fixtures/policy-cases/ and ../shared/policy-cases/ hold different files"
    );
    for name in names(&shared) {
        let a = std::fs::read(shared.join(&name)).expect("read shared file");
        let b = std::fs::read(fixture.join(&name)).expect("read fixture file");
        assert!(
            a == b,
            "tests/fixtures/policy-cases/{} differs from ../shared/policy-cases/: copy it again",
            name.to_string_lossy()
        );
    }
}

#[test]
fn shared_policy_cases_all_pass() {
    let cases = load_cases(CASES).expect("cases.json loads");
    assert_eq!(
        cases.len(),
        43,
        "expected the 43 cases, got {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        match run_case(case) {
            Ok(o) if o.passed() => {}
            Ok(o) => failures.push(format!(
                "{}: expected {:?}, got {:?} ({})",
                o.name,
                o.expected,
                o.decision.effect,
                o.decision.summary()
            )),
            Err(e) => failures.push(format!("{}: error {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Evaluator edges
// ---------------------------------------------------------------------------------------------

const ACCT: &str = "111122223333";
const OTHER: &str = "444455556666";
const KEY: &str = "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn key_policy(statements: Value) -> Policy {
    Policy::from_value(
        &json!({"Version": "2012-10-17", "Statement": statements}),
        PolicyKind::Key,
    )
    .expect("key policy")
}

fn iam(statements: Value) -> Policy {
    Policy::from_value(
        &json!({"Version": "2012-10-17", "Statement": statements}),
        PolicyKind::Identity,
    )
    .expect("identity policy")
}

fn root_delegation(acct: &str) -> Value {
    json!({"Sid": "Enable IAM policies", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{acct}:root")}, "Action": "kms:*", "Resource": "*"})
}

fn req(principal: &str, account: &str, action: &str) -> RequestContext {
    RequestContext::new(principal, account, action, KEY)
}

type Ec = BTreeMap<String, String>;
/// (EncryptionContextEquals, EncryptionContextSubset)
type Constraints = (Option<Ec>, Option<Ec>);

struct Setup {
    key_account: Option<&'static str>,
    kp: Option<Policy>,
    ids: Vec<Policy>,
    scps: Vec<Policy>,
    pbs: Vec<Policy>,
    sps: Vec<Policy>,
    grants: Vec<(String, Vec<String>, Option<Constraints>)>,
    ec: BTreeMap<String, String>,
    role_arn: Option<&'static str>,
}

impl Setup {
    fn new(kp: Option<Policy>) -> Self {
        Setup {
            key_account: Some(ACCT),
            kp,
            ids: vec![],
            scps: vec![],
            pbs: vec![],
            sps: vec![],
            grants: vec![],
            ec: BTreeMap::new(),
            role_arn: None,
        }
    }

    /// Checks, for each `(action, resource, allowed)` case, whether `r` is allowed when the
    /// caller's only identity policy is one statement allowing `action` on `resource`.
    fn check_allow_statements(&mut self, r: &RequestContext, cases: &[(&str, &str, bool)]) {
        for &(action, resource, allowed) in cases {
            let statement = json!({"Effect": "Allow", "Action": action, "Resource": resource});
            self.ids = vec![iam(statement.clone())];
            assert_eq!(self.run(r).is_allow(), allowed, "{statement}");
        }
    }

    fn run(&self, r: &RequestContext) -> Decision {
        fn named(ps: &[Policy]) -> Vec<NamedPolicy<'_>> {
            ps.iter()
                .map(|p| NamedPolicy {
                    name: "p",
                    policy: p,
                })
                .collect()
        }
        let (ids, scps, pbs, sps) = (
            named(&self.ids),
            named(&self.scps),
            named(&self.pbs),
            named(&self.sps),
        );
        let grants: Vec<GrantView<'_>> = self
            .grants
            .iter()
            .map(|(g, ops, c)| GrantView {
                grant_id: "g1",
                grantee_principal: g,
                operations: ops,
                constraints: c.as_ref().map(|(eq, sub)| GrantConstraintsView {
                    encryption_context_equals: eq.as_ref(),
                    encryption_context_subset: sub.as_ref(),
                }),
            })
            .collect();
        evaluate(&EvalInput {
            key_account: self.key_account,
            key_policy: self.kp.as_ref().map(|policy| NamedPolicy {
                name: "default",
                policy,
            }),
            identity_policies: &ids,
            guardrails: &scps,
            permission_boundaries: &pbs,
            session_policies: &sps,
            grants: &grants,
            encryption_context: &self.ec,
            role_arn: self.role_arn,
            request: r,
        })
    }
}

const ALICE: &str = "arn:aws:iam::111122223333:user/Alice";
const SESSION: &str = "arn:aws:sts::111122223333:assumed-role/App/i-1";
const ROLE: &str = "arn:aws:iam::111122223333:role/App";

#[test]
fn messages_name_the_deciding_policy_type() {
    let mut s = Setup::new(Some(key_policy(json!([root_delegation(ACCT)]))));
    let r = req(ALICE, ACCT, "kms:Decrypt");
    let d = s.run(&r);
    assert!(!d.is_allow());
    assert_eq!(d.reason, DecisionReason::ImplicitDeny);
    assert_eq!(d.denying_policy_type, Some(PolicyType::IdentityPolicy));
    assert_eq!(
        d.aws_message(ALICE, "kms:Decrypt", KEY),
        format!("User: {ALICE} is not authorized to perform: kms:Decrypt on resource: {KEY} because no identity-based policy allows the kms:Decrypt action")
    );
    assert_eq!(
        d.summary(),
        "no identity-based policy allows the kms:Decrypt action"
    );

    s.kp = Some(key_policy(
        json!([{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/Bob"}, "Action": "kms:*", "Resource": "*"}]),
    ));
    let d = s.run(&r);
    assert_eq!(d.denying_policy_type, Some(PolicyType::KeyPolicy));
    assert!(d
        .aws_message(ALICE, "kms:Decrypt", KEY)
        .ends_with("because no resource-based policy allows the kms:Decrypt action"));

    s.kp = Some(key_policy(
        json!([root_delegation(ACCT), {"Sid": "NoDecrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}]),
    ));
    let d = s.run(&r);
    assert_eq!(d.reason, DecisionReason::ExplicitDeny);
    assert_eq!(
        d.deciding,
        vec![DecidingStatement {
            policy_type: PolicyType::KeyPolicy,
            policy_name: "default".into(),
            statement: "NoDecrypt".into()
        }]
    );
    assert!(d
        .aws_message(ALICE, "kms:Decrypt", KEY)
        .ends_with(" with an explicit deny in a resource-based policy"));

    s.kp = Some(key_policy(json!([root_delegation(ACCT)])));
    s.ids = vec![iam(
        json!([{"Effect": "Deny", "Action": "kms:*", "Resource": "*"}]),
    )];
    let d = s.run(&r);
    assert_eq!(d.deciding[0].statement, "Statement[0]");
    assert!(d
        .aws_message(ALICE, "kms:Decrypt", KEY)
        .ends_with(" with an explicit deny in an identity-based policy"));

    s.ids = vec![iam(
        json!([{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]),
    )];
    s.scps = vec![Policy::from_value(&json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}), PolicyKind::Guardrail).unwrap()];
    let d = s.run(&r);
    assert_eq!(d.denying_policy_type, Some(PolicyType::Guardrail));
    assert!(d
        .aws_message(ALICE, "kms:Decrypt", KEY)
        .ends_with("because no service control policy allows the kms:Decrypt action"));
    assert!(s.run(&req(ALICE, ACCT, "kms:Encrypt")).is_allow());
}

#[test]
fn allow_trace_lists_key_and_identity_statements() {
    let mut s = Setup::new(Some(key_policy(json!([root_delegation(ACCT)]))));
    s.ids = vec![iam(
        json!([{"Sid": "UseKey", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY}]),
    )];
    let d = s.run(&req(ALICE, ACCT, "kms:Decrypt"));
    assert!(d.is_allow());
    let labels: Vec<(PolicyType, &str)> = d
        .deciding
        .iter()
        .map(|x| (x.policy_type, x.statement.as_str()))
        .collect();
    assert_eq!(
        labels,
        vec![
            (PolicyType::KeyPolicy, "Enable IAM policies"),
            (PolicyType::IdentityPolicy, "UseKey")
        ]
    );
    assert!(d
        .summary()
        .starts_with("allowed by key policy 'default' statement 'Enable IAM policies'"));
}

#[test]
fn principal_forms() {
    let allow = |p: Value| {
        key_policy(
            json!([{"Effect": "Allow", "Principal": p, "Action": "kms:Decrypt", "Resource": "*"}]),
        )
    };
    let r_alice = req(ALICE, ACCT, "kms:Decrypt");
    let mut r_sess = req(SESSION, ACCT, "kms:Decrypt");
    r_sess.set("aws:PrincipalArn", ROLE);
    // "*" and {"AWS": "*"}
    assert!(Setup::new(Some(allow(json!("*")))).run(&r_alice).is_allow());
    assert!(Setup::new(Some(allow(json!({"AWS": "*"}))))
        .run(&r_alice)
        .is_allow());
    // user ARN, list form
    assert!(Setup::new(Some(allow(
        json!({"AWS": ["arn:aws:iam::111122223333:user/Bob", ALICE]})
    )))
    .run(&r_alice)
    .is_allow());
    // bare account id == root: delegation only, needs IAM
    let mut s = Setup::new(Some(allow(json!({"AWS": ACCT}))));
    assert!(!s.run(&r_alice).is_allow());
    s.ids = vec![iam(
        json!({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}),
    )];
    assert!(s.run(&r_alice).is_allow());
    // the root user itself is allowed by an account principal
    let r_root = req("arn:aws:iam::111122223333:root", ACCT, "kms:Decrypt");
    assert!(Setup::new(Some(allow(json!({"AWS": ACCT}))))
        .run(&r_root)
        .is_allow());
    // role ARN matches its sessions (with and without the explicit role ARN)
    let mut s = Setup::new(Some(allow(json!({"AWS": ROLE}))));
    assert!(s.run(&r_sess).is_allow());
    s.role_arn = Some(ROLE);
    assert!(s.run(&r_sess).is_allow());
    s.role_arn = Some("arn:aws:iam::111122223333:role/Other");
    assert!(!s.run(&r_sess).is_allow());
    // session ARN
    assert!(Setup::new(Some(allow(json!({"AWS": SESSION}))))
        .run(&r_sess)
        .is_allow());
    // other role does not match
    assert!(!Setup::new(Some(allow(
        json!({"AWS": "arn:aws:iam::111122223333:role/Other"})
    )))
    .run(&r_sess)
    .is_allow());
    // Service principal does not match an IAM user
    assert!(
        !Setup::new(Some(allow(json!({"Service": "ec2.amazonaws.com"}))))
            .run(&r_alice)
            .is_allow()
    );
    // role-named allow is capped by a permission boundary; user-named is not (case j3)
    let mut s = Setup::new(Some(allow(json!({"AWS": ROLE}))));
    s.pbs = vec![Policy::from_value(&json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}}), PolicyKind::PermissionBoundary).unwrap()];
    let d = s.run(&r_sess);
    assert!(!d.is_allow());
    assert_eq!(d.denying_policy_type, Some(PolicyType::PermissionBoundary));
    let mut s = Setup::new(Some(allow(json!({"AWS": SESSION}))));
    s.sps = vec![Policy::from_value(&json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}}), PolicyKind::Session).unwrap()];
    assert!(
        s.run(&r_sess).is_allow(),
        "a statement naming the session ARN is not capped"
    );
}

#[test]
fn not_principal_deny() {
    let kp = |listed: Value| {
        key_policy(
            json!([root_delegation(ACCT), {"Effect": "Deny", "NotPrincipal": {"AWS": listed}, "Action": "kms:*", "Resource": "*"}]),
        )
    };
    let mut s = Setup::new(Some(kp(json!([ALICE, ACCT]))));
    s.ids = vec![iam(
        json!({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
    )];
    assert!(s.run(&req(ALICE, ACCT, "kms:Decrypt")).is_allow());
    // another user of the listed account is not exempt
    let d = s.run(&req(
        "arn:aws:iam::111122223333:user/Mallory",
        ACCT,
        "kms:Decrypt",
    ));
    assert_eq!(d.reason, DecisionReason::ExplicitDeny);
    // listing only the user (not the account) does not exempt it
    s.kp = Some(kp(json!([ALICE])));
    assert!(!s.run(&req(ALICE, ACCT, "kms:Decrypt")).is_allow());
    // a session is exempt only with session, role and account listed
    let mut r = req(SESSION, ACCT, "kms:Decrypt");
    r.set("aws:PrincipalArn", ROLE);
    s.role_arn = Some(ROLE);
    s.kp = Some(kp(json!([SESSION, ACCT])));
    assert!(!s.run(&r).is_allow());
    s.kp = Some(kp(json!([SESSION, ROLE, ACCT])));
    assert!(s.run(&r).is_allow());
    // listing the account root exempts the root user
    s.kp = Some(kp(json!([ACCT])));
    assert!(s
        .run(&req("arn:aws:iam::111122223333:root", ACCT, "kms:Decrypt"))
        .is_allow());
}

#[test]
fn not_principal_deny_always_applies_to_a_caller_with_a_boundary() {
    let kp = key_policy(
        json!([root_delegation(ACCT), {"Effect": "Deny", "NotPrincipal": {"AWS": [ALICE, SESSION, ROLE, ACCT]}, "Action": "kms:*", "Resource": "*"}]),
    );
    let mut s = Setup::new(Some(kp));
    s.ids = vec![iam(
        json!({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
    )];
    assert!(s.run(&req(ALICE, ACCT, "kms:Decrypt")).is_allow());
    // The same caller with a boundary that allows everything: denied by the NotPrincipal Deny.
    s.pbs = vec![Policy::from_value(&json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}}), PolicyKind::PermissionBoundary).unwrap()];
    let d = s.run(&req(ALICE, ACCT, "kms:Decrypt"));
    assert_eq!(d.reason, DecisionReason::ExplicitDeny);
    assert_eq!(d.denying_policy_type, Some(PolicyType::KeyPolicy));
    let mut r = req(SESSION, ACCT, "kms:Decrypt");
    r.set("aws:PrincipalArn", ROLE);
    s.role_arn = Some(ROLE);
    assert_eq!(s.run(&r).reason, DecisionReason::ExplicitDeny);
    // The account root has no boundary: still exempt.
    assert!(s
        .run(&req("arn:aws:iam::111122223333:root", ACCT, "kms:Decrypt"))
        .is_allow());
}

#[test]
fn not_principal_allow_excludes_the_named_principals() {
    let kp = |listed: Value| {
        key_policy(
            json!([{"Effect": "Allow", "NotPrincipal": {"AWS": listed}, "Action": "kms:Decrypt", "Resource": "*"}]),
        )
    };
    let mallory = "arn:aws:iam::111122223333:user/Mallory";
    let mut s = Setup::new(Some(kp(json!(ALICE))));
    assert!(!s.run(&req(ALICE, ACCT, "kms:Decrypt")).is_allow());
    assert!(s.run(&req(mallory, ACCT, "kms:Decrypt")).is_allow());
    // Naming the account leaves out every principal of the account.
    s.kp = Some(kp(json!([ACCT])));
    assert!(!s.run(&req(mallory, ACCT, "kms:Decrypt")).is_allow());
    // Naming the role leaves out its sessions; naming a session leaves out that session.
    let mut r = req(SESSION, ACCT, "kms:Decrypt");
    r.set("aws:PrincipalArn", ROLE);
    s.role_arn = Some(ROLE);
    s.kp = Some(kp(json!([ROLE])));
    assert!(!s.run(&r).is_allow());
    s.kp = Some(kp(json!([SESSION])));
    assert!(!s.run(&r).is_allow());
    s.kp = Some(kp(json!([mallory])));
    assert!(s.run(&r).is_allow());
}

#[test]
fn cross_account_and_iam_only() {
    let kp = key_policy(
        json!([root_delegation(OTHER), {"Effect": "Allow", "Principal": {"AWS": ACCT}, "Action": "kms:*", "Resource": "*"}]),
    );
    let key = "arn:aws:kms:us-west-2:444455556666:key/k";
    let mut s = Setup::new(Some(kp));
    s.key_account = Some(OTHER);
    s.ids = vec![iam(
        json!({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
    )];
    let r = RequestContext::new(ALICE, ACCT, "kms:Decrypt", key);
    assert!(s.run(&r).is_allow());
    let r = RequestContext::new(ALICE, ACCT, "kms:DisableKey", key);
    let d = s.run(&r);
    assert_eq!(d.denying_policy_type, Some(PolicyType::CrossAccountScope));
    assert!(d
        .aws_message(ALICE, "kms:DisableKey", key)
        .contains("because no resource-based policy allows"));

    // IAM-only: CreateKey on "*"
    let mut s = Setup::new(None);
    s.key_account = None;
    let r = RequestContext::new(ALICE, ACCT, "kms:CreateKey", "*");
    assert_eq!(
        s.run(&r).denying_policy_type,
        Some(PolicyType::IdentityPolicy)
    );
    s.check_allow_statements(
        &r,
        &[
            ("kms:Create*", "*", true),
            ("kms:CreateKey", "arn:aws:kms:*:111122223333:key/*", false),
        ],
    );

    assert!(is_cross_account_op(
        "kms:GenerateDataKeyPairWithoutPlaintext"
    ));
    assert!(is_cross_account_op("Decrypt"));
    assert!(!is_cross_account_op("kms:ScheduleKeyDeletion"));
    assert!(!is_cross_account_op("kms:PutKeyPolicy"));
    assert!(is_iam_only_op("kms:CreateKey"));
    assert!(is_iam_only_op("kms:DescribeCustomKeyStores"));
    assert!(!is_iam_only_op("kms:Decrypt"));
}

#[test]
fn grants() {
    let mut s = Setup::new(Some(key_policy(json!([root_delegation(ACCT)]))));
    let ec = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let r = req(ALICE, ACCT, "kms:Decrypt");
    // account-root grantee covers any principal of the account
    s.grants = vec![(ACCT.to_string(), vec!["Decrypt".into()], None)];
    let d = s.run(&r);
    assert!(d.is_allow());
    assert_eq!(d.deciding[0].policy_type, PolicyType::Grant);
    // op not in the grant
    assert!(!s.run(&req(ALICE, ACCT, "kms:Encrypt")).is_allow());
    // Equals constraint
    s.grants = vec![(
        ALICE.to_string(),
        vec!["Decrypt".into(), "DescribeKey".into()],
        Some((Some(ec(&[("a", "1")])), None)),
    )];
    s.ec = ec(&[("a", "1")]);
    assert!(s.run(&r).is_allow());
    s.ec = ec(&[("a", "1"), ("b", "2")]);
    assert!(!s.run(&r).is_allow());
    // constraints are ignored for DescribeKey
    assert!(s.run(&req(ALICE, ACCT, "kms:DescribeKey")).is_allow());
    // Subset constraint, case-sensitive values
    s.grants = vec![(
        ALICE.to_string(),
        vec!["Decrypt".into()],
        Some((None, Some(ec(&[("a", "1")])))),
    )];
    assert!(s.run(&r).is_allow());
    s.ec = ec(&[("a", "X")]);
    assert!(!s.run(&r).is_allow());
    // a permission boundary still caps grant use
    s.ec = ec(&[("a", "1")]);
    s.pbs = vec![Policy::from_value(&json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}}), PolicyKind::PermissionBoundary).unwrap()];
    assert!(!s.run(&r).is_allow());
}

#[test]
fn action_and_resource_matching() {
    let mut s = Setup::new(Some(key_policy(json!([root_delegation(ACCT)]))));
    let r = req(ALICE, ACCT, "kms:GenerateDataKeyWithoutPlaintext");
    s.check_allow_statements(
        &r,
        &[
            (
                "KMS:generateDATAkey*",
                "arn:aws:kms:us-west-2:111122223333:key/*",
                true,
            ),
            ("kms:GenerateDataKey?", "*", false),
            // resource is case-sensitive
            ("kms:*", "arn:aws:kms:US-WEST-2:111122223333:key/*", false),
        ],
    );
    // NotResource / NotAction in Deny
    s.ids = vec![
        iam(json!({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})),
        iam(
            json!({"Effect": "Deny", "NotAction": "kms:Describe*", "NotResource": "arn:aws:kms:*:111122223333:key/allowed"}),
        ),
    ];
    assert_eq!(s.run(&r).reason, DecisionReason::ExplicitDeny);
    assert!(s.run(&req(ALICE, ACCT, "kms:DescribeKey")).is_allow());
    // resource with a policy variable
    s.ids = vec![iam(
        json!({"Effect": "Allow", "Action": "kms:*", "Resource": "arn:aws:kms:us-west-2:${aws:PrincipalAccount}:key/*"}),
    )];
    let mut r = req(ALICE, ACCT, "kms:Decrypt");
    assert!(!s.run(&r).is_allow());
    r.set("aws:PrincipalAccount", ACCT);
    assert!(s.run(&r).is_allow());
}

#[test]
fn lockout_check() {
    let ids = [iam(
        json!({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
    )];
    let named: Vec<NamedPolicy<'_>> = ids
        .iter()
        .map(|p| NamedPolicy {
            name: "admin",
            policy: p,
        })
        .collect();
    let ec = BTreeMap::new();
    let r = req(ALICE, ACCT, "kms:CreateKey");
    let base = EvalInput {
        key_account: Some(ACCT),
        key_policy: None,
        identity_policies: &named,
        guardrails: &[],
        permission_boundaries: &[],
        session_policies: &[],
        grants: &[],
        encryption_context: &ec,
        role_arn: None,
        request: &r,
    };
    let good = Policy::parse(&default_key_policy("aws", ACCT), PolicyKind::Key).unwrap();
    assert!(lockout_safety_check(&good, &base).is_ok());
    let bad = key_policy(
        json!([{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/Bob"}, "Action": "kms:*", "Resource": "*"}]),
    );
    let err = lockout_safety_check(&bad, &base).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The new key policy will not allow you to update the key policy in the future."
    );
}

#[test]
fn default_key_policy_is_exact() {
    let text = default_key_policy("aws", ACCT);
    assert_eq!(
        text,
        r#"{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#
    );
    let p = Policy::parse(&text, PolicyKind::Key).unwrap();
    assert_eq!(p.statement_count(), 1);
    assert!(default_key_policy("aws-cn", ACCT).contains("arn:aws-cn:iam::111122223333:root"));
}

// ---------------------------------------------------------------------------------------------
// Malformed documents
// ---------------------------------------------------------------------------------------------

fn malformed(kind: PolicyKind, v: Value) -> String {
    match Policy::from_value(&v, kind) {
        Err(PolicyError::Malformed(m)) => m,
        other => panic!("expected Malformed for {v}, got {other:?}"),
    }
}

#[test]
fn malformed_documents_name_the_fault() {
    let k = PolicyKind::Key;
    let i = PolicyKind::Identity;
    let st = |extra: Value| {
        let mut base = json!({"Effect": "Allow", "Action": "kms:*", "Resource": "*"});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}, {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}, base]})
    };
    let cases: Vec<(PolicyKind, Value, &str)> = vec![
        (i, st(json!({"Condition": {"StringEqualz": {"a": "b"}}})), "Statement[2].Condition: unknown operator 'StringEqualz'"),
        (i, st(json!({"Condition": {"NullIfExists": {"a": "true"}}})), "unknown operator 'NullIfExists'"),
        (i, st(json!({"Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContext:Dept": "x"}}})), "Statement[2].Condition.ForAllValues:StringEquals.kms:EncryptionContext:Dept: ForAllValues cannot be used"),
        (i, st(json!({"Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/40"}}})), "Statement[2].Condition.IpAddress.aws:SourceIp: invalid IP address or CIDR '10.0.0.0/40'"),
        (i, st(json!({"Condition": {"NumericLessThan": {"x": "ten"}}})), "invalid number 'ten'"),
        (i, st(json!({"Condition": {"DateLessThan": {"x": "soon"}}})), "invalid date 'soon'"),
        (i, st(json!({"Condition": {"Bool": {"x": "yes"}}})), "invalid boolean"),
        (i, st(json!({"Condition": {"BinaryEquals": {"x": "!!"}}})), "invalid base64"),
        (i, st(json!({"Condition": {"ArnLike": {"x": "arn:aws:iam"}}})), "invalid ARN"),
        (i, st(json!({"Condition": {"StringEquals": {"x": []}}})), "empty value list"),
        (i, st(json!({"Condition": {"StringEquals": {"x": {"y": 1}}}})), "condition values must be strings"),
        (i, st(json!({"Condition": {"StringEquals": {"kms:EncryptionContext:${aws:username}": "x"}}})), "policy variables are not allowed"),
        (i, st(json!({"Principal": "*"})), "Statement[2].Principal: not allowed in identity policies"),
        (PolicyKind::Guardrail, st(json!({"NotPrincipal": {"AWS": ACCT}})), "Statement[2].NotPrincipal: not allowed in guardrail policies"),
        (k, st(json!({})), "Statement[0]: a key policy statement must have a Principal or NotPrincipal"),
        (i, st(json!({"Effect": "allow"})), "Statement[2].Effect: must be 'Allow' or 'Deny', not 'allow'"),
        (i, st(json!({"NotAction": "kms:Decrypt"})), "Statement[2]: Action and NotAction are mutually exclusive"),
        (i, st(json!({"Action": "Decrypt"})), "Statement[2].Action[0]: invalid action 'Decrypt'"),
        (i, st(json!({"Action": []})), "Statement[2].Action: must not be empty"),
        (i, st(json!({"Resource": 5})), "Statement[2].Resource: must be a string or an array of strings"),
        (i, st(json!({"Foo": 1})), "Statement[2]: unknown element 'Foo'"),
        (i, json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Resource": "*"}}), "Statement[0]: missing Action or NotAction"),
        (i, json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "kms:*"}}), "Statement[0]: missing Resource or NotResource"),
        (i, json!({"Version": "2012-10-17", "Statement": {"Action": "kms:*", "Resource": "*"}}), "Statement[0]: missing Effect"),
        (i, json!({"Version": "2013-01-01", "Statement": []}), "Version: unsupported policy version '2013-01-01'"),
        (i, json!({"Version": "2012-10-17"}), "Statement: missing"),
        (i, json!({"Version": "2012-10-17", "Statement": []}), "Statement: must contain at least one statement"),
        (i, json!({"Version": "2012-10-17", "Statement": "x"}), "Statement: must be an object or an array"),
        (i, json!([1]), "policy document must be a JSON object"),
        (k, json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::*:root"}, "Action": "kms:*", "Resource": "*"}}), "Statement[0].Principal.AWS[0]: wildcards are not allowed"),
        (k, json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "kms:*", "Resource": "*"}}), "Statement[0].Principal.AWS[0]: invalid principal 'bob'"),
        (k, json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Principal": {"Group": "x"}, "Action": "kms:*", "Resource": "*"}}), "unknown principal type 'Group'"),
        (k, json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Principal": "bob", "Action": "kms:*", "Resource": "*"}}), "Statement[0].Principal: 'bob' must be"),
    ];
    let mut failures = Vec::new();
    for (kind, doc, want) in cases {
        let msg = malformed(kind, doc);
        if !msg.contains(want) {
            failures.push(format!("want '{want}', got '{msg}'"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    match Policy::parse("{\"Version\": ", PolicyKind::Key) {
        Err(PolicyError::Malformed(m)) => assert!(m.starts_with("policy is not valid JSON"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_policy_size_limit() {
    let pad = " ".repeat(KEY_POLICY_SIZE_LIMIT);
    let text = format!("{}{pad}", default_key_policy("aws", ACCT));
    let err = Policy::parse(&text, PolicyKind::Key).unwrap_err();
    assert!(
        matches!(err, PolicyError::TooLarge { limit: 32_768, .. }),
        "{err:?}"
    );
    assert!(check_key_policy_size(&text).is_err());
    assert!(check_key_policy_size(&" ".repeat(KEY_POLICY_SIZE_LIMIT)).is_ok());
    // identity policies are not subject to the key-policy limit here
    assert!(Policy::parse(
        &text.replace(
            "\"Principal\":{\"AWS\":\"arn:aws:iam::111122223333:root\"},",
            ""
        ),
        PolicyKind::Identity
    )
    .is_ok());
}

#[test]
fn version_2008_and_absent_treat_variables_literally() {
    for version in [json!("2008-10-17"), Value::Null] {
        let mut doc = json!({"Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "arn:aws:kms:*:*:key/${aws:username}"}});
        if !version.is_null() {
            doc["Version"] = version.clone();
        }
        let p = Policy::from_value(&doc, PolicyKind::Identity).unwrap();
        let mut s = Setup::new(Some(key_policy(json!([root_delegation(ACCT)]))));
        s.ids = vec![p];
        let mut r = RequestContext::new(
            ALICE,
            ACCT,
            "kms:Decrypt",
            "arn:aws:kms:us-west-2:111122223333:key/Alice",
        );
        r.set("aws:username", "Alice");
        assert!(!s.run(&r).is_allow());
        r.resource = "arn:aws:kms:us-west-2:111122223333:key/${aws:username}".into();
        assert!(s.run(&r).is_allow());
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests: no panics on any input
// ---------------------------------------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "Allow",
                "Deny",
                "*",
                "kms:*",
                "kms:Decrypt",
                "2012-10-17",
                "2008-10-17",
                "111122223333",
                "arn:aws:iam::111122223333:root",
                "${aws:username}",
                "${",
                "a${*}b",
                "10.0.0.0/8",
                "true",
            ])
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop::sample::select(vec![
                "Version",
                "Statement",
                "Effect",
                "Action",
                "NotAction",
                "Resource",
                "NotResource",
                "Principal",
                "NotPrincipal",
                "Condition",
                "AWS",
                "Service",
                "Sid",
                "StringEquals",
                "ForAllValues:StringLike",
                "NumericLessThanIfExists",
                "IpAddress",
                "Null",
                "ArnLike",
                "DateLessThan",
                "Bool",
                "BinaryEquals",
                "kms:EncryptionContext:k",
                "aws:SourceIp",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..5).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    fn arb_pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z:/*?${}',. -]{0,16}",
            prop::sample::select(vec![
                "*",
                "kms:*",
                "kms:Decrypt",
                "arn:aws:kms:*:111122223333:key/*",
                "${aws:username, 'x'}",
                "${aws:PrincipalTag/t}*",
                "${*}${?}${$}"
            ])
            .prop_map(str::to_string),
        ]
    }

    fn arb_condition() -> impl Strategy<Value = (String, String, Vec<String>)> {
        let ops = prop::sample::select(vec![
            "StringEquals",
            "StringNotEquals",
            "StringEqualsIgnoreCase",
            "StringLike",
            "StringNotLikeIfExists",
            "ForAnyValue:StringEquals",
            "ForAllValues:StringNotLike",
            "ArnLike",
            "ArnNotEquals",
            "Bool",
            "Null",
        ]);
        let keys = prop::sample::select(vec![
            "aws:username",
            "kms:EncryptionContext:k",
            "kms:EncryptionContextKeys",
            "aws:SourceArn",
            "x",
        ]);
        (ops, keys, prop::collection::vec(arb_pattern(), 1..3))
            .prop_map(|(o, k, v)| (o.to_string(), k.to_string(), v))
    }

    fn arb_statement(key: bool) -> impl Strategy<Value = Value> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(arb_pattern(), 1..3),
            prop::collection::vec(arb_pattern(), 1..3),
            prop::sample::select(vec![
                "*",
                "111122223333",
                "arn:aws:iam::111122223333:root",
                "arn:aws:iam::111122223333:user/Alice",
                "arn:aws:iam::111122223333:role/App",
                "arn:aws:sts::111122223333:assumed-role/App/s",
            ]),
            any::<bool>(),
            prop::collection::vec(arb_condition(), 0..3),
        )
            .prop_map(
                move |(allow, not_action, actions, resources, principal, not_principal, conds)| {
                    let mut st = serde_json::Map::new();
                    st.insert("Effect".into(), json!(if allow { "Allow" } else { "Deny" }));
                    let actions: Vec<String> = actions
                        .into_iter()
                        .map(|a| {
                            if a.contains(':') || a == "*" {
                                a
                            } else {
                                format!("kms:{a}")
                            }
                        })
                        .collect();
                    st.insert(
                        if not_action { "NotAction" } else { "Action" }.into(),
                        json!(actions),
                    );
                    st.insert("Resource".into(), json!(resources));
                    if key {
                        st.insert(
                            if not_principal {
                                "NotPrincipal"
                            } else {
                                "Principal"
                            }
                            .into(),
                            json!({"AWS": principal}),
                        );
                    }
                    let mut c = serde_json::Map::new();
                    for (op, k, vals) in conds {
                        let entry = c.entry(op).or_insert_with(|| json!({}));
                        if let Some(o) = entry.as_object_mut() {
                            o.insert(k, json!(vals));
                        }
                    }
                    if !c.is_empty() {
                        st.insert("Condition".into(), Value::Object(c));
                    }
                    Value::Object(st)
                },
            )
    }

    fn arb_context() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "aws:username",
                    "kms:EncryptionContext:K",
                    "kms:EncryptionContextKeys",
                    "aws:SourceArn",
                    "X",
                    "aws:PrincipalTag/t",
                ]),
                prop::collection::vec(arb_pattern(), 0..3),
            )
                .prop_map(|(k, v)| (k.to_string(), v)),
            0..5,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

        #[test]
        fn parse_never_panics_on_arbitrary_json(v in arb_json()) {
            for kind in [PolicyKind::Key, PolicyKind::Identity, PolicyKind::Guardrail] {
                let _ = Policy::from_value(&v, kind);
                let _ = Policy::parse(&v.to_string(), kind);
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_text(s in ".{0,200}") {
            let _ = Policy::parse(&s, PolicyKind::Key);
            let _ = Policy::parse(&format!("{{\"Version\":\"2012-10-17\",\"Statement\":{s}}}"), PolicyKind::Identity);
        }

        #[test]
        fn evaluation_never_panics(
            kst in prop::collection::vec(arb_statement(true), 1..5),
            ist in prop::collection::vec(arb_statement(false), 1..5),
            ctx in arb_context(),
            principal in prop::sample::select(vec!["arn:aws:iam::111122223333:user/Alice", "arn:aws:sts::111122223333:assumed-role/App/s", "arn:aws:iam::111122223333:root", "garbage", ""]),
            account in prop::sample::select(vec!["111122223333", "444455556666", ""]),
            action in arb_pattern(),
            resource in arb_pattern(),
            version in prop::sample::select(vec!["2012-10-17", "2008-10-17"]),
        ) {
            let kp = Policy::from_value(&json!({"Version": version, "Statement": kst}), PolicyKind::Key);
            let ip = Policy::from_value(&json!({"Version": version, "Statement": ist}), PolicyKind::Identity);
            let mut r = RequestContext::new(principal, account, action, resource);
            for (k, v) in ctx {
                r.set_multi(&k, v);
            }
            let ids: Vec<NamedPolicy<'_>> = ip.iter().map(|p| NamedPolicy { name: "i", policy: p }).collect();
            let ops = vec!["Decrypt".to_string()];
            let grants = [GrantView { grant_id: "g", grantee_principal: principal, operations: &ops, constraints: None }];
            let ec = BTreeMap::new();
            let d = evaluate(&EvalInput {
                key_account: Some("111122223333"),
                key_policy: kp.as_ref().ok().map(|policy| NamedPolicy { name: "default", policy }),
                identity_policies: &ids,
                guardrails: &ids,
                permission_boundaries: &[],
                session_policies: &ids,
                grants: &grants,
                encryption_context: &ec,
                role_arn: Some("arn:aws:iam::111122223333:role/App"),
                request: &r,
            });
            let _ = d.summary();
            let _ = d.aws_message(principal, "kms:Decrypt", "*");
        }
    }
}
