//! Unit tests of the identity directory: loading the fixture files, every refusal, lookups
//! and reload.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::super::certs::{CertBinding, CertMatcher};
use super::model::policy_names;
use super::*;
use crate::encoding::percent_decode_strict;
use crate::policy::{NamedPolicy, PolicyKind, RequestContext};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity")
}

fn fixture_files() -> DirectoryFiles {
    let f = fixtures();
    DirectoryFiles {
        accounts: vec![
            AccountFiles {
                account_id: "111122223333".into(),
                authorization_details: f.join("111122223333.json"),
                guardrails: vec![f.join("guardrail-allow-all.json")],
            },
            AccountFiles {
                account_id: "444455556666".into(),
                authorization_details: f.join("444455556666.json"),
                guardrails: vec![],
            },
        ],
        credentials: Some(f.join("credentials.json")),
    }
}

fn load() -> Directory {
    Directory::load(&fixture_files()).unwrap()
}

fn names(list: &[NamedArcPolicy]) -> Vec<&str> {
    policy_names(list)
}

#[test]
fn loads_fixtures_and_resolves_users() {
    let d = load();
    let admin = d.principal("arn:aws:iam::111122223333:user/admin").unwrap();
    assert_eq!(
        admin.principal_arn(),
        "arn:aws:iam::111122223333:user/admin"
    );
    assert_eq!(admin.context_principal_arn(), admin.principal_arn());
    assert_eq!(admin.account(), "111122223333");
    assert_eq!(admin.principal_type(), PrincipalType::User);
    assert_eq!(admin.principal_type().as_str(), "User");
    assert_eq!(admin.username(), Some("admin"));
    assert_eq!(admin.userid(), "AIDAADMIN000000000001");
    assert_eq!(admin.role_arn(), None);
    assert_eq!(names(admin.identity_policies()), vec!["KmsAdmin"]);
    assert!(admin.permission_boundary().is_none());
    assert_eq!(names(admin.guardrails()), vec!["guardrail-allow-all"]);

    let user1 = d.principal("arn:aws:iam::111122223333:user/user1").unwrap();
    assert!(user1.identity_policies().is_empty());
    let user2 = d.principal("arn:aws:iam::111122223333:user/user2").unwrap();
    assert_eq!(names(user2.identity_policies()), vec!["S3ReadOnly"]);
    let bob = d.principal("arn:aws:iam::111122223333:user/bob").unwrap();
    assert_eq!(names(bob.identity_policies()), vec!["AssumeEngineering"]);
    let nopolicy = d
        .principal("arn:aws:iam::111122223333:user/nopolicy")
        .unwrap();
    assert!(nopolicy.identity_policies().is_empty());

    let keyadmin = d
        .principal("arn:aws:iam::444455556666:user/keyadmin")
        .unwrap();
    assert_eq!(keyadmin.account(), "444455556666");
    assert_eq!(names(keyadmin.identity_policies()), vec!["KmsAdmin"]);
    assert!(keyadmin.guardrails().is_empty());

    assert!(d
        .principal("arn:aws:iam::111122223333:user/nobody")
        .is_none());
    assert!(d
        .principal("arn:aws:iam::999999999999:user/admin")
        .is_none());
    assert!(d.principal("not an arn").is_none());
}

#[test]
fn group_policies_and_tags_are_collected() {
    let d = load();
    let carol = d.principal("arn:aws:iam::111122223333:user/carol").unwrap();
    assert_eq!(
        names(carol.identity_policies()),
        vec!["Developers/DevelopersEncrypt"]
    );
    assert_eq!(carol.tags(), &[("team".to_string(), "blue".to_string())]);
    let named = named_policies(carol.identity_policies());
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].name, "Developers/DevelopersEncrypt");
    assert_eq!(named[0].policy.kind(), PolicyKind::Identity);

    let mut ctx = RequestContext::new(carol.principal_arn(), carol.account(), "kms:Encrypt", "*");
    carol.add_context_keys(&mut ctx, &[]);
    assert_context(
        &ctx,
        &[
            ("aws:PrincipalTag/team", Some("blue")),
            ("aws:username", Some("carol")),
            ("aws:PrincipalType", Some("User")),
            ("kms:CallerAccount", Some("111122223333")),
        ],
    );
}

#[test]
fn account_roots_resolve() {
    let d = load();
    let root = d.principal("arn:aws:iam::111122223333:root").unwrap();
    assert_eq!(root.principal_type(), PrincipalType::Account);
    assert_eq!(root.userid(), "111122223333");
    assert_eq!(root.username(), None);
    assert!(root.identity_policies().is_empty());
    assert_eq!(root.guardrails().len(), 1);
    assert!(d.principal("arn:aws:iam::999999999999:root").is_none());
    assert!(d.principal("arn:aws-cn:iam::111122223333:root").is_none());
    assert_eq!(
        d.account_root("444455556666"),
        Some("arn:aws:iam::444455556666:root")
    );
    let mut ids: Vec<&str> = d.account_ids().collect();
    ids.sort();
    assert_eq!(ids, vec!["111122223333", "444455556666"]);
}

#[test]
fn sessions_resolve_to_their_role() {
    let d = load();
    let s = d
        .principal("arn:aws:sts::111122223333:assumed-role/Engineering/bob-session")
        .unwrap();
    assert_eq!(
        s.principal_arn(),
        "arn:aws:sts::111122223333:assumed-role/Engineering/bob-session"
    );
    assert_eq!(s.principal_type(), PrincipalType::AssumedRole);
    assert_eq!(
        s.role_arn(),
        Some("arn:aws:iam::111122223333:role/Engineering")
    );
    assert_eq!(
        s.context_principal_arn(),
        "arn:aws:iam::111122223333:role/Engineering"
    );
    assert_eq!(s.session_name(), Some("bob-session"));
    assert_eq!(s.userid(), "AROAENGINEERING000001:bob-session");
    assert_eq!(s.username(), None);
    assert_eq!(names(s.identity_policies()), vec!["EngineeringKms"]);
    assert_eq!(
        s.tags(),
        &[("department".to_string(), "engineering".to_string())]
    );

    let mut ctx = RequestContext::new(s.principal_arn(), s.account(), "kms:Encrypt", "*");
    s.add_context_keys(&mut ctx, &[("department".into(), "override".into())]);
    assert_context(
        &ctx,
        &[
            (
                "aws:PrincipalArn",
                Some("arn:aws:iam::111122223333:role/Engineering"),
            ),
            ("aws:PrincipalTag/department", Some("override")),
            ("aws:username", None),
        ],
    );

    for bad in [
        "arn:aws:sts::111122223333:assumed-role/Nope/s",
        "arn:aws:sts::111122223333:assumed-role/Engineering/",
        "arn:aws:sts::111122223333:assumed-role/Engineering",
        "arn:aws:sts::111122223333:assumed-role/Engineering/a/b",
        "arn:aws:sts::444455556666:assumed-role/Engineering/s",
        "arn:aws:iam::111122223333:role/Engineering",
    ] {
        assert!(d.principal(bad).is_none(), "{bad}");
    }

    let role = d
        .role("arn:aws:iam::111122223333:role/Engineering")
        .unwrap();
    assert_eq!(role.max_session_duration, 3600);
    assert_eq!(role.role_id, "AROAENGINEERING000001");
    assert_eq!(role.trust_policy.kind(), PolicyKind::Key);
    assert_eq!(role.trust_named().name, "trust-policy");
    assert!(d.role("arn:aws:iam::111122223333:role/Nope").is_none());
}

/// The fixtures drive the policy engine as the lead's authorizer will: bob may assume
/// Engineering (trust policy x bob's identity policy), nopolicy may not; the session's
/// role policy allows Encrypt on 444455556666 keys; carol's group policy allows Encrypt.
#[test]
fn fixtures_evaluate_as_intended() {
    use crate::policy::{evaluate, EvalInput};
    use std::collections::BTreeMap;
    let d = load();
    let ec = BTreeMap::new();
    let role = d
        .role("arn:aws:iam::111122223333:role/Engineering")
        .unwrap();
    // The decision for `caller` doing `action` on `resource`, with the resource's account and
    // resource policy when it has one (a role's trust policy), else on IAM alone.
    let decide = |caller: &str, action: &str, resource: &str, on: Option<(&str, NamedPolicy)>| {
        let p = d.principal(caller).unwrap();
        let mut ctx = RequestContext::new(p.principal_arn(), p.account(), action, resource);
        p.add_context_keys(&mut ctx, &[]);
        let ids = named_policies(p.identity_policies());
        let guards = named_policies(p.guardrails());
        evaluate(&EvalInput {
            key_account: on.as_ref().map(|(account, _)| *account),
            key_policy: on.map(|(_, policy)| policy),
            identity_policies: &ids,
            guardrails: &guards,
            permission_boundaries: &[],
            session_policies: &[],
            grants: &[],
            encryption_context: &ec,
            role_arn: p.role_arn(),
            request: &ctx,
        })
        .effect
    };
    let assume = |caller: &str| {
        let trust = Some((role.account.as_str(), role.trust_named()));
        decide(caller, "sts:AssumeRole", &role.arn, trust)
    };
    assert_eq!(
        assume("arn:aws:iam::111122223333:user/bob"),
        crate::policy::Effect::Allow
    );
    assert_eq!(
        assume("arn:aws:iam::111122223333:user/nopolicy"),
        crate::policy::Effect::Deny
    );
    assert_eq!(
        assume("arn:aws:iam::111122223333:user/admin"),
        crate::policy::Effect::Deny
    );

    let iam_only =
        |caller: &str, action: &str, resource: &str| decide(caller, action, resource, None);
    let allow = crate::policy::Effect::Allow;
    let deny = crate::policy::Effect::Deny;
    assert_eq!(
        iam_only("arn:aws:iam::111122223333:user/admin", "kms:CreateKey", "*"),
        allow
    );
    assert_eq!(
        iam_only("arn:aws:iam::111122223333:user/user1", "kms:CreateKey", "*"),
        deny
    );
    assert_eq!(
        iam_only("arn:aws:iam::111122223333:user/user2", "kms:CreateKey", "*"),
        deny
    );
    assert_eq!(
        iam_only(
            "arn:aws:iam::444455556666:user/keyadmin",
            "kms:CreateKey",
            "*"
        ),
        allow
    );
    let key = "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let session = "arn:aws:sts::111122223333:assumed-role/Engineering/bob";
    assert_eq!(iam_only(session, "kms:Encrypt", key), allow);
    assert_eq!(
        iam_only(session, "kms:GenerateDataKeyWithoutPlaintext", key),
        allow
    );
    assert_eq!(iam_only(session, "kms:DisableKey", key), deny);
    assert_eq!(
        iam_only("arn:aws:iam::111122223333:user/carol", "kms:Encrypt", key),
        allow
    );
    assert_eq!(
        iam_only("arn:aws:iam::111122223333:user/carol", "kms:Decrypt", key),
        deny
    );
}

#[test]
fn access_keys_and_bindings() {
    let d = load();
    let k = d.access_key("AKIAADMIN00000000001").unwrap();
    assert_eq!(k.principal_arn, "arn:aws:iam::111122223333:user/admin");
    assert_eq!(k.account, "111122223333");
    assert_eq!(k.secret_access_key.len(), 40);
    assert!(!format!("{k:?}").contains(k.secret_access_key.as_str()));
    assert_eq!(
        d.secret_for("AKIAADMIN00000000001").as_deref(),
        Some(&*k.secret_access_key)
    );
    let ka = d.access_key("AKIAKEYADMIN00000001").unwrap();
    assert_eq!(ka.account, "444455556666");
    for id in [
        "AKIAUSER100000000001",
        "AKIAUSER200000000001",
        "AKIABOB0000000000001",
        "AKIANOPOLICY00000001",
        "AKIACAROL00000000001",
    ] {
        assert!(d.access_key(id).is_some(), "{id}");
    }
    // Inactive keys are refused.
    assert!(d.access_key("AKIAUSER100000000002").is_none());
    assert!(d.access_key("AKIAUNKNOWN000000000").is_none());

    let b = d.cert_bindings();
    assert!(b.contains(&CertBinding {
        matcher: CertMatcher::SubjectCn("keyadmin".into()),
        principal_arn: "arn:aws:iam::444455556666:user/keyadmin".into(),
    }));
    assert_eq!(
        b.iter()
            .filter(|c| matches!(c.matcher, CertMatcher::SubjectCn(_)))
            .count(),
        5
    );
    let _ = d.certificate_directory();
}

#[test]
fn existence_checks() {
    let d = load();
    assert!(d.account_exists("111122223333"));
    assert!(!d.account_exists("999999999999"));
    for yes in [
        "arn:aws:iam::111122223333:user/bob",
        "arn:aws:iam::111122223333:role/Engineering",
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::444455556666:root",
        "arn:aws:sts::111122223333:assumed-role/Engineering/x",
        "111122223333",
    ] {
        assert!(d.principal_exists(yes), "{yes}");
    }
    for no in [
        "arn:aws:iam::111122223333:user/ghost",
        "arn:aws:iam::111122223333:role/Ghost",
        "arn:aws:iam::999999999999:root",
        "arn:aws:iam::111122223333:group/Developers",
        "999999999999",
        "*",
    ] {
        assert!(!d.principal_exists(no), "{no}");
    }
}

// --- Error cases, with files written to a temp dir ---

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Checks the one value `ctx` holds for each key (`None`: the key is absent).
fn assert_context(ctx: &RequestContext, expected: &[(&str, Option<&str>)]) {
    for &(key, value) in expected {
        let want = value.map(|v| vec![v.to_string()]);
        assert_eq!(ctx.get(key), want.as_deref(), "{key}");
    }
}

/// The message of the error loading `details` as the one account's file.
fn load_error(details: PathBuf) -> String {
    Directory::load(&one_account(details, None))
        .unwrap_err()
        .to_string()
}

/// Writes `text` as `dir/name` and checks that loading it as the one account's file fails
/// with a message that names each of `names`.
fn assert_load_error_names(dir: &Path, name: &str, text: &str, names: &[&str]) {
    let msg = load_error(write(dir, name, text));
    for n in names {
        assert!(msg.contains(n), "{n:?} is not named: {msg}");
    }
}

fn one_account(details: PathBuf, credentials: Option<PathBuf>) -> DirectoryFiles {
    DirectoryFiles {
        accounts: vec![AccountFiles {
            account_id: "111122223333".into(),
            authorization_details: details,
            guardrails: vec![],
        }],
        credentials,
    }
}

const ALLOW_ENCRYPT: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}]}"#;

/// Writes `dir/a.json`: alice, whose inline policy allows kms:Encrypt ([`ALLOW_ENCRYPT`]).
fn write_alice_allowed_encrypt(dir: &Path) -> PathBuf {
    let doc = serde_json::from_str(ALLOW_ENCRYPT).unwrap();
    write(dir, "a.json", &user_with_inline(&doc))
}

fn user_with_inline(doc: &Value) -> String {
    serde_json::json!({
        "UserDetailList": [{
            "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
            "Arn": "arn:aws:iam::111122223333:user/alice",
            "CreateDate": "2024-01-01T00:00:00Z",
            "GroupList": [], "AttachedManagedPolicies": [],
            "UserPolicyList": [{"PolicyName": "AliceInline", "PolicyDocument": doc}],
            "Tags": []
        }],
        "GroupDetailList": [], "RoleDetailList": [], "Policies": []
    })
    .to_string()
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn url_encoded_and_string_documents_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    for doc in [
        Value::String(url_encode(ALLOW_ENCRYPT)),
        Value::String(ALLOW_ENCRYPT.into()),
        serde_json::from_str(ALLOW_ENCRYPT).unwrap(),
    ] {
        let f = write(tmp.path(), "a.json", &user_with_inline(&doc));
        let d = Directory::load(&one_account(f, None)).unwrap();
        let alice = d.principal("arn:aws:iam::111122223333:user/alice").unwrap();
        assert_eq!(names(alice.identity_policies()), vec!["AliceInline"]);
        assert_eq!(alice.identity_policies()[0].1.statement_count(), 1);
    }
    assert_eq!(
        percent_decode_strict("%7B%22a%22%3A1%7D").unwrap(),
        r#"{"a":1}"#
    );
    assert!(percent_decode_strict("%7").is_err());
    assert!(percent_decode_strict("%FF").is_err());
}

#[test]
fn malformed_policy_names_account_principal_and_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*","Principal":"*"}]});
    let f = write(tmp.path(), "a.json", &user_with_inline(&bad));
    let e = Directory::load(&one_account(f, None)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IdentityError::Policy { .. }), "{msg}");
    assert!(msg.contains("111122223333"), "{msg}");
    assert!(msg.contains("user/alice"), "{msg}");
    assert!(msg.contains("AliceInline"), "{msg}");
    assert!(msg.contains("Principal"), "{msg}");

    let not_percent_encoded = user_with_inline(&Value::String("%ZZ".into()));
    assert_load_error_names(
        tmp.path(),
        "b.json",
        &not_percent_encoded,
        &["AliceInline", "percent"],
    );
}

#[test]
fn missing_managed_policy_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let text = serde_json::json!({
        "UserDetailList": [{
            "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
            "Arn": "arn:aws:iam::111122223333:user/alice",
            "GroupList": [],
            "AttachedManagedPolicies": [{"PolicyName": "AdministratorAccess", "PolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}],
            "UserPolicyList": [], "Tags": []
        }],
        "GroupDetailList": [], "RoleDetailList": [], "Policies": []
    });
    assert_load_error_names(
        tmp.path(),
        "a.json",
        &text.to_string(),
        &["arn:aws:iam::aws:policy/AdministratorAccess", "user/alice"],
    );

    // Listed in the same file, an AWS-managed policy is fine.
    let mut with = text.clone();
    with["Policies"] = serde_json::json!([{
        "PolicyName": "AdministratorAccess", "PolicyId": "ANPAIWMBCKSKIEE64ZLYK",
        "Arn": "arn:aws:iam::aws:policy/AdministratorAccess", "Path": "/",
        "DefaultVersionId": "v1", "AttachmentCount": 1, "IsAttachable": true,
        "PolicyVersionList": [
            {"Document": {"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}, "VersionId": "v2", "IsDefaultVersion": false},
            {"Document": url_encode(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#), "VersionId": "v1", "IsDefaultVersion": true}
        ]
    }]);
    let f = write(tmp.path(), "b.json", &with.to_string());
    let d = Directory::load(&one_account(f, None)).unwrap();
    let alice = d.principal("arn:aws:iam::111122223333:user/alice").unwrap();
    let (name, p) = &alice.identity_policies()[0];
    assert_eq!(name, "AdministratorAccess");
    // The default version (v1, Allow) was used, not v2.
    assert_eq!(
        p.document().statements[0].effect,
        crate::policy::Effect::Allow
    );
}

#[test]
fn unknown_group_and_bad_arns_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let text = serde_json::json!({
        "UserDetailList": [{
            "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
            "Arn": "arn:aws:iam::111122223333:user/alice", "GroupList": ["Ghosts"]
        }]
    });
    assert_load_error_names(tmp.path(), "a.json", &text.to_string(), &["Ghosts"]);

    let text = serde_json::json!({
        "UserDetailList": [{
            "Path": "/", "UserName": "alice", "UserId": "AIDAALICE00000000000",
            "Arn": "arn:aws:iam::444455556666:user/alice"
        }]
    });
    assert_load_error_names(
        tmp.path(),
        "b.json",
        &text.to_string(),
        &["not in account 111122223333"],
    );

    let f = write(tmp.path(), "c.json", "{ not json");
    assert!(matches!(
        Directory::load(&one_account(f, None)).unwrap_err(),
        IdentityError::Format { .. }
    ));
    let e = Directory::load(&one_account(tmp.path().join("missing.json"), None)).unwrap_err();
    assert!(matches!(e, IdentityError::Read { .. }));
    let f = write(
        tmp.path(),
        "d.json",
        r#"{"UserDetailList": [], "IsTruncated": true}"#,
    );
    assert!(load_error(f).contains("IsTruncated"));
}

#[test]
fn trust_policy_without_resource_compiles_and_bad_trust_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let role = |trust: Value| {
        serde_json::json!({
            "RoleDetailList": [{
                "Path": "/service/", "RoleName": "App", "RoleId": "AROAAPP0000000000000",
                "Arn": "arn:aws:iam::111122223333:role/service/App",
                "AssumeRolePolicyDocument": trust,
                "InstanceProfileList": [], "RolePolicyList": [], "AttachedManagedPolicies": [],
                "Tags": [], "RoleLastUsed": {}, "MaxSessionDuration": 7200
            }]
        })
        .to_string()
    };
    let good = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]});
    let f = write(
        tmp.path(),
        "a.json",
        &role(Value::String(url_encode(&good.to_string()))),
    );
    let d = Directory::load(&one_account(f, None)).unwrap();
    let r = d
        .role("arn:aws:iam::111122223333:role/service/App")
        .unwrap();
    assert_eq!(r.max_session_duration, 7200);
    // Sessions name the role without its path.
    let s = d
        .principal("arn:aws:sts::111122223333:assumed-role/App/i-123")
        .unwrap();
    assert_eq!(
        s.role_arn(),
        Some("arn:aws:iam::111122223333:role/service/App")
    );

    let bad = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRole"}]});
    assert_load_error_names(
        tmp.path(),
        "b.json",
        &role(bad),
        &["role/service/App", "AssumeRolePolicyDocument"],
    );
}

#[test]
fn credentials_errors_name_the_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let details = write_alice_allowed_encrypt(tmp.path());
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let cases = [
        (
            format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAGHOST00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/ghost","Status":"Active"}}]}}"#),
            "user/ghost",
        ),
        (
            format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAROOT999900000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::999999999999:root"}}]}}"#),
            "999999999999",
        ),
        (
            format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice","Status":"Disabled"}}]}}"#),
            "Disabled",
        ),
        (
            format!(r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice"}},{{"AccessKeyId":"AKIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice"}}]}}"#),
            "more than once",
        ),
        (
            format!(r#"{{"AccessKeys":[{{"AccessKeyId":"ASIAALICE00000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:user/alice"}}]}}"#),
            "reserved",
        ),
        (
            r#"{"CertificateBindings":[{"SubjectCN":"ghost","Principal":"arn:aws:iam::111122223333:user/ghost"}]}"#.to_string(),
            "user/ghost",
        ),
        (
            r#"{"CertificateBindings":[{"SubjectCN":"x","SanUri":"spiffe://x","Principal":"arn:aws:iam::111122223333:user/alice"}]}"#.to_string(),
            "exactly one",
        ),
        (r#"{"AccessKey":[]}"#.to_string(), "unknown field"),
    ];
    for (text, needle) in cases {
        let c = write(tmp.path(), "credentials.json", &text);
        let msg = Directory::load(&one_account(details.clone(), Some(c)))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
        assert!(!msg.contains(secret), "{msg}");
    }
    // Roots and role sessions of known accounts may be bound; the root may own keys.
    let ok = format!(
        r#"{{"AccessKeys":[{{"AccessKeyId":"AKIAROOT000000000001","SecretAccessKey":"{secret}","UserArn":"arn:aws:iam::111122223333:root"}}],
            "CertificateBindings":[{{"SanUri":"spiffe://corp/root","Principal":"arn:aws:iam::111122223333:root"}}]}}"#
    );
    let c = write(tmp.path(), "credentials.json", &ok);
    let d = Directory::load(&one_account(details, Some(c))).unwrap();
    assert_eq!(
        d.access_key("AKIAROOT000000000001")
            .map(|k| k.principal_arn.as_str()),
        Some("arn:aws:iam::111122223333:root")
    );
    assert_eq!(
        d.cert_bindings()[0].matcher,
        CertMatcher::SanUri("spiffe://corp/root".into())
    );
}

#[test]
fn bad_guardrail_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let details = write(tmp.path(), "a.json", "{}");
    let g = write(
        tmp.path(),
        "scp.json",
        r#"{"Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}"#,
    );
    let mut files = one_account(details, None);
    files.accounts[0].guardrails.push(g);
    let msg = Directory::load(&files).unwrap_err().to_string();
    assert!(
        msg.contains("guardrail") && msg.contains("scp.json") && msg.contains("Effect"),
        "{msg}"
    );
}

#[test]
fn reload_keeps_old_directory_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let details = write_alice_allowed_encrypt(tmp.path());
    let files = one_account(details.clone(), None);
    let handle = DirectoryHandle::load(&files).unwrap();
    let before = handle.current();
    assert!(before
        .principal("arn:aws:iam::111122223333:user/alice")
        .is_some());

    write(tmp.path(), "a.json", "{ broken");
    assert!(handle.reload(&files).is_err());
    let after = handle.current();
    assert!(Arc::ptr_eq(&before, &after));
    assert!(after
        .principal("arn:aws:iam::111122223333:user/alice")
        .is_some());

    // A good reload swaps atomically; holders of the old Arc keep their view.
    write(tmp.path(), "a.json", r#"{"UserDetailList":[]}"#);
    handle.reload(&files).unwrap();
    assert!(handle
        .current()
        .principal("arn:aws:iam::111122223333:user/alice")
        .is_none());
    assert!(before
        .principal("arn:aws:iam::111122223333:user/alice")
        .is_some());
}

#[test]
fn fixture_files_parse_as_directory_files_toml() {
    let t: DirectoryFiles = toml::from_str(
        r#"
credentials = "credentials.json"
[[accounts]]
account_id = "111122223333"
authorization_details = "111122223333.json"
guardrails = ["scp.json"]
"#,
    )
    .unwrap();
    assert_eq!(t.accounts[0].guardrails.len(), 1);
    assert!(Directory::load(&DirectoryFiles::default())
        .unwrap()
        .principal("x")
        .is_none());
}
