//! The fuzz harnesses: one function per target, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the regression test (`tests/fuzz_regressions.rs`), so that a
//! saved crash input goes through exactly the code that found it.
//!
//! Each function feeds its input to a parser of the public library API the way the daemon
//! does, checks the properties that must hold on any input (round trips, a re-signed request
//! verifies), and returns a one-line summary of the outcome (`rejected: ...`, `accepted: ...`)
//! that the regression test compares with the expected one. A panic anywhere is a finding.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use p11kms::api::aws_json::{self, kms, sts};
use p11kms::api::xks::{ops as xks_ops, wire as xks_wire};
use p11kms::audit::verify::render;
use p11kms::audit::verify_files;
use p11kms::ciphertext;
use p11kms::identity::directory::{AccountFiles, IdentityError};
use p11kms::identity::sigv4::{self, SignableRequest, SigningParams};
use p11kms::identity::{Directory, DirectoryFiles};
use p11kms::policy::{
    evaluate, lockout_safety_check, EvalInput, GrantConstraintsView, GrantView, NamedPolicy,
    Policy, PolicyKind, RequestContext,
};

/// The fuzz targets, by name (the `fuzz/fuzz_targets/<name>.rs` files and the
/// `tests/fixtures/fuzz-regressions/<name>/` directories).
pub const TARGETS: &[&str] = &[
    "ciphertext",
    "policy",
    "aws_json",
    "sigv4",
    "sts_query",
    "identity_directory",
    "audit_verify",
    "xks",
];

/// Runs the harness of `target` on `data`; `scratch` is a directory the file-based loaders
/// may write into. `None` for an unknown target.
pub fn run(target: &str, data: &[u8], scratch: &Path) -> Option<String> {
    Some(match target {
        "ciphertext" => ciphertext(data),
        "policy" => policy(data),
        "aws_json" => aws_json(data),
        "sigv4" => sigv4(data),
        "sts_query" => sts_query(data),
        "identity_directory" => identity_directory(data, scratch),
        "audit_verify" => audit_verify(data, scratch),
        "xks" => xks(data),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Ciphertext codec

/// `ciphertext::parse`, then the header and blob round trip; the input as an encryption
/// context (`key=value` lines) through the canonical encoding and the AAD.
pub fn ciphertext(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let ctx: BTreeMap<String, String> = text
        .lines()
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(canonical) = ciphertext::canonical_context(&ctx) {
        let expected: usize = ctx.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
        assert_eq!(canonical.len(), expected, "canonical context length");
    }
    match ciphertext::parse(data) {
        Err(e) => format!("rejected: {e:?}"),
        Ok(p) => {
            let header = ciphertext::header(&p.key_id, p.key_version, &p.iv);
            assert_eq!(&header, p.header, "header round trip");
            let blob = ciphertext::assemble(&header, p.ciphertext_and_tag);
            assert_eq!(blob, data, "blob round trip");
            let aad = ciphertext::aad(p.header, b"");
            assert_eq!(
                aad.len(),
                ciphertext::AAD_DOMAIN.len() + ciphertext::HEADER_LEN
            );
            format!("accepted: version {}", p.key_version)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Policy parser and evaluator

const ACCOUNT: &str = "111122223333";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const ALLOW_ROOT: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#;
const ALLOW_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;

/// The fixed request the policies are evaluated against: a user of the key's account, with
/// condition keys of every type (string, multi-valued, IP, date, number, bool, ARN).
fn request(action: &str) -> RequestContext {
    const USER: &str = "arn:aws:iam::111122223333:user/Alice";
    const KEYS: &[(&str, &str)] = &[
        ("aws:PrincipalArn", USER),
        ("aws:PrincipalAccount", ACCOUNT),
        ("kms:CallerAccount", ACCOUNT),
        ("aws:username", "Alice"),
        ("aws:userid", "AIDAEXAMPLE"),
        ("aws:PrincipalType", "User"),
        ("aws:PrincipalTag/Project", "Alpha"),
        ("aws:ResourceTag/Project", "Alpha"),
        ("aws:SourceIp", "10.1.2.3"),
        ("aws:SecureTransport", "true"),
        ("aws:ViaAWSService", "false"),
        ("aws:CurrentTime", "2025-06-01T12:00:00Z"),
        ("aws:EpochTime", "1748779200"),
        ("kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT"),
        ("kms:EncryptionContext:App", "app3-x"),
        ("kms:EncryptionContext:Stage", "prod"),
        ("kms:KeySpec", "SYMMETRIC_DEFAULT"),
        ("kms:RequestAlias", "alias/app"),
        ("kms:ValidTo", "1748779200"),
    ];
    let mut req = RequestContext::new(USER, ACCOUNT, action, KEY_ARN);
    for (key, value) in KEYS {
        req.set(key, *value);
    }
    let ec_keys = vec!["App".to_string(), "Stage".to_string()];
    req.set_multi("kms:EncryptionContextKeys", ec_keys);
    req
}

fn kind_of(selector: u8) -> PolicyKind {
    match selector % 5 {
        0 => PolicyKind::Key,
        1 => PolicyKind::Identity,
        2 => PolicyKind::Guardrail,
        3 => PolicyKind::PermissionBoundary,
        _ => PolicyKind::Session,
    }
}

/// The first byte picks where the policy is attached; the rest is the policy text. A policy
/// that parses is evaluated in that place for three actions (and the key-policy lockout check).
pub fn policy(data: &[u8]) -> String {
    let Some((&selector, rest)) = data.split_first() else {
        return "rejected: empty input".into();
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return "rejected: not UTF-8".into();
    };
    let kind = kind_of(selector);
    let fuzzed = match Policy::parse(text, kind) {
        Ok(p) => p,
        Err(e) => return format!("rejected: {}", policy_error_name(&e)),
    };
    let root = Policy::parse(ALLOW_ROOT, PolicyKind::Key).expect("fixed key policy");
    let all = Policy::parse(ALLOW_ALL, PolicyKind::Identity).expect("fixed identity policy");
    let named = |policy| NamedPolicy {
        name: "fuzzed",
        policy,
    };
    let key_policy = if kind == PolicyKind::Key {
        &fuzzed
    } else {
        &root
    };
    let identity = [named(if kind == PolicyKind::Identity {
        &fuzzed
    } else {
        &all
    })];
    let only = |k: PolicyKind| -> Vec<NamedPolicy<'_>> {
        if kind == k {
            vec![named(&fuzzed)]
        } else {
            Vec::new()
        }
    };
    let (guardrails, boundaries, sessions) = (
        only(PolicyKind::Guardrail),
        only(PolicyKind::PermissionBoundary),
        only(PolicyKind::Session),
    );
    let ops = ["Decrypt".to_string()];
    let subset: BTreeMap<String, String> = [("App".to_string(), "app3-x".to_string())].into();
    let grants = [GrantView {
        grant_id: "g-1",
        grantee_principal: "arn:aws:iam::111122223333:role/Batch",
        operations: &ops,
        constraints: Some(GrantConstraintsView {
            encryption_context_equals: None,
            encryption_context_subset: Some(&subset),
        }),
    }];
    let ec: BTreeMap<String, String> = [
        ("App".to_string(), "app3-x".to_string()),
        ("Stage".to_string(), "prod".to_string()),
    ]
    .into();
    let mut outcomes = Vec::new();
    for action in ["kms:Decrypt", "kms:CreateKey", "kms:PutKeyPolicy"] {
        let req = request(action);
        let input = EvalInput {
            key_account: Some(ACCOUNT),
            key_policy: Some(NamedPolicy {
                name: "default",
                policy: key_policy,
            }),
            identity_policies: &identity,
            guardrails: &guardrails,
            permission_boundaries: &boundaries,
            session_policies: &sessions,
            grants: &grants,
            encryption_context: &ec,
            role_arn: None,
            request: &req,
        };
        let decision = evaluate(&input);
        let _ = decision.summary();
        let _ = decision.aws_message(&req.principal_arn, action, KEY_ARN);
        if kind == PolicyKind::Key && action == "kms:PutKeyPolicy" {
            let _ = lockout_safety_check(&fuzzed, &input);
        }
        outcomes.push(if decision.is_allow() { "allow" } else { "deny" });
    }
    format!(
        "accepted: {} statements, {}",
        fuzzed.statement_count(),
        outcomes.join("/")
    )
}

fn policy_error_name(e: &p11kms::policy::PolicyError) -> &'static str {
    match e {
        p11kms::policy::PolicyError::Malformed(_) => "MalformedPolicyDocumentException",
        p11kms::policy::PolicyError::TooLarge { .. } => "LimitExceededException",
    }
}

// ---------------------------------------------------------------------------------------
// AWS JSON door: body decoding and model validation

/// The first byte picks the operation (every `TrentService` operation, then every
/// `P11kmsAdmin` one: ExplainAccess and the console's); the rest is the request body, decoded
/// and checked as the door does after authentication: JSON object, the audit parameters
/// (mistyped members dropped), the model check.
pub fn aws_json(data: &[u8]) -> String {
    let Some((&selector, body)) = data.split_first() else {
        return "rejected: empty input".into();
    };
    let count = kms::OPERATIONS.len() + kms::P11KMS_ADMIN.len();
    let at = usize::from(selector) % count;
    let (op, service) = match kms::OPERATIONS.get(at) {
        Some(op) => (op, "TrentService"),
        None => (
            &kms::P11KMS_ADMIN[at - kms::OPERATIONS.len()],
            "P11kmsAdmin",
        ),
    };
    let target = format!("{service}.{}", op.name);
    assert_eq!(kms::operation(&target).map(|o| o.name), Some(op.name));
    let value = match aws_json::decode_kms_body(body) {
        Ok(v) => v,
        Err(e) => return format!("{}: rejected: {}", op.name, e.name),
    };
    // The body read as the operation's core request: its audit parameters are an object.
    if let Ok(logged) = (op.parameters)(value.clone()) {
        assert!(logged.is_object(), "request parameters of an object");
    }
    match aws_json::model_check(op.name, &value) {
        Ok(()) => format!("{}: accepted", op.name),
        Err(e) => format!("{}: rejected: {}", op.name, e.name),
    }
}

// ---------------------------------------------------------------------------------------
// XKS door

/// The first line is the path after `{prefix}/kms/xks/v1/` (`health`, `keys/<id>/encrypt`,
/// ...), the rest the body. The route goes through the door's table; the body through the
/// operation's reader, as the door reads it after authentication. Errors must be the
/// specification's (a name and status of its table, a printable-ASCII message under 512
/// characters that never quotes the body); accepted requests give audit parameters that are
/// an object and a `Debug` that never shows the plaintext, and a Decrypt's AAD for the HSM is
/// the specification's formula.
pub fn xks(data: &[u8]) -> String {
    use p11kms::core::operation::RequestParameters as _;
    let text = String::from_utf8_lossy(data);
    let (tail, _) = text.split_once('\n').unwrap_or((&text, ""));
    let body = &data[data.len().min(tail.len() + 1)..];
    let Some((op, key)) = xks_ops::operation(tail) else {
        return "rejected: InvalidUriPathException".into();
    };
    let key = key.unwrap_or("");
    let outcome = match op.segment {
        "health" => xks_wire::health_request(body).map(|r| r.request_parameters()),
        "metadata" => xks_wire::metadata_request(key, body).map(|r| r.request_parameters()),
        "encrypt" => xks_wire::encrypt_request(key, body).map(|r| {
            let shown = format!("{r:?}");
            if r.plaintext.len() >= 16 {
                let hex: String = r.plaintext.iter().map(|b| format!("{b:02x}")).collect();
                assert!(!shown.contains(&hex), "Debug shows the plaintext");
            }
            r.request_parameters()
        }),
        _ => xks_wire::decrypt_request(key, body).map(|r| {
            let aad = r.additional_authenticated_data.as_deref().unwrap_or(&[]);
            let md = r.ciphertext_metadata.as_deref().unwrap_or(&[]);
            if let Ok(hsm_aad) = p11kms::core::xks::hsm_aad(aad, md) {
                assert_eq!(hsm_aad.len(), 3 + aad.len() + md.len(), "the spec's AAD");
            }
            r.request_parameters()
        }),
    };
    match outcome {
        Ok(params) => {
            assert!(params.is_object(), "request parameters of an object");
            format!("{}: accepted", op.name)
        }
        Err(e) => {
            let m = &e.message;
            assert!(m.len() < 512 && m.chars().all(|c| c == ' ' || c.is_ascii_graphic()));
            let read_again = |b: &[u8]| xks_error_message(op.segment, key, b);
            assert!(
                !quotes_body(body, m, read_again),
                "the message quotes the body"
            );
            format!("{}: rejected: {}", op.name, e.name)
        }
    }
}

/// The error message the XKS door's reader for `segment` gives `body`, if it refuses it.
fn xks_error_message(segment: &str, key: &str, body: &[u8]) -> Option<String> {
    let refused = match segment {
        "health" => xks_wire::health_request(body).err(),
        "metadata" => xks_wire::metadata_request(key, body).err(),
        "encrypt" => xks_wire::encrypt_request(key, body).err(),
        _ => xks_wire::decrypt_request(key, body).err(),
    };
    refused.map(|e| e.message)
}

/// Whether `message` (the error `read` gave for `body`) quotes a body of 24 bytes or more.
/// A body that is itself a piece of the door's fixed wording ("The request body is not
/// valid JSON") appears in its message by coincidence; a quoted body follows the body, so
/// the same body with its letters rotated (ROT13) then appears in that body's message too.
pub fn quotes_body(body: &[u8], message: &str, read: impl Fn(&[u8]) -> Option<String>) -> bool {
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if body.len() < 24 || !message.contains(&shown(body)) {
        return false;
    }
    let rotated: Vec<u8> = body.iter().map(|&b| rot13(b)).collect();
    read(&rotated).is_some_and(|m| m.contains(&shown(&rotated)))
}

fn rot13(b: u8) -> u8 {
    match b {
        b'a'..=b'z' => (b - b'a' + 13) % 26 + b'a',
        b'A'..=b'Z' => (b - b'A' + 13) % 26 + b'A',
        _ => b,
    }
}

// ---------------------------------------------------------------------------------------
// SigV4

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Lines of the input: method, path, query (each may be empty), then `name:value` headers up
/// to the first empty line; the body is everything after it. The `Authorization` header goes through
/// `parse_authorization`, the query through `canonical_query`, the request through
/// `canonical_request` and `verify` (the clock at the request's own date); then the request is
/// signed with a known key and must verify.
pub fn sigv4(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let method = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("");
    let query = lines.next().unwrap_or("");
    let rest = lines.next().unwrap_or("");
    let (head, body) = rest.split_once("\n\n").unwrap_or((rest, ""));
    let headers: Vec<(String, String)> = head
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once(':').unwrap_or((l, "")))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let payload = sigv4::sha256_hex(body.as_bytes());
    let req = SignableRequest {
        method,
        path,
        query,
        headers: &headers,
        payload_sha256_hex: &payload,
    };
    let _ = sigv4::canonical_query(query);
    let date = sigv4::header_value(&headers, "x-amz-date").map(str::trim);
    let now = date.and_then(sigv4::parse_amz_date);
    if let Some(secs) = now {
        // Leap seconds (:60) roll over; every other valid date formats back to itself.
        if date.is_some_and(|d| !d.ends_with("60Z")) {
            assert_eq!(Some(sigv4::format_amz_date(secs).as_str()), date);
        }
    }
    if let Some(a) = sigv4::header_value(&headers, "authorization") {
        if let Ok(auth) = sigv4::parse_authorization(a) {
            let _ = sigv4::canonical_request(&req, &auth.signed_headers);
        }
    }
    let regions = ["us-east-1".to_string()];
    let lookup = |_: &str| Some(zeroize::Zeroizing::new(SECRET.to_string()));
    let outcome = match sigv4::verify(&req, "kms", &regions, now.unwrap_or(0), 300, lookup) {
        Ok(_) => "verified".to_string(),
        Err(e) => format!("rejected: {}", e.aws_name()),
    };
    resign_and_verify(&req, date, now);
    outcome
}

/// With one parseable `X-Amz-Date` and a `Host`, the request signed by our own signer (any
/// Authorization header replaced) verifies.
fn resign_and_verify(req: &SignableRequest<'_>, date: Option<&str>, now: Option<i64>) {
    let count = |n: &str| {
        req.headers
            .iter()
            .filter(|(h, _)| h.eq_ignore_ascii_case(n))
            .count()
    };
    let (Some(date), Some(now)) = (date, now) else {
        return;
    };
    if count("x-amz-date") != 1 || count("host") == 0 {
        return;
    }
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(h, _)| !h.eq_ignore_ascii_case("authorization"))
        .cloned()
        .collect();
    let unsigned = SignableRequest {
        headers: &headers,
        ..*req
    };
    let signed = ["host".to_string(), "x-amz-date".to_string()];
    let params = SigningParams {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: SECRET,
        region: "us-east-1",
        service: "kms",
        amz_date: date,
    };
    let auth = sigv4::authorization_header(&unsigned, &signed, &params);
    headers.push(("Authorization".into(), auth));
    let resigned = SignableRequest {
        headers: &headers,
        ..*req
    };
    let regions = ["us-east-1".to_string()];
    let lookup = |_: &str| Some(zeroize::Zeroizing::new(SECRET.to_string()));
    if let Err(e) = sigv4::verify(&resigned, "kms", &regions, now, 300, lookup) {
        panic!("a request signed by our own signer does not verify: {e:?}");
    }
}

// ---------------------------------------------------------------------------------------
// STS Query

/// The input is the form body: the action found as the door finds it, the audit parameters,
/// the AssumeRole input and its session policy.
pub fn sts_query(data: &[u8]) -> String {
    let form: Vec<(String, String)> = form_urlencoded::parse(data).into_owned().collect();
    let Some(action) = sts::action(&form).1 else {
        return "rejected: InvalidAction".into();
    };
    let _ = sts::request_parameters(action, &form);
    if action != "AssumeRole" {
        return format!("{action}: accepted");
    }
    let req = match sts::assume_role_request(&form) {
        Ok(r) => r,
        Err(e) => return format!("{action}: rejected: {}", e.aws_name()),
    };
    match req
        .policy
        .as_deref()
        .map(|p| Policy::parse(p, PolicyKind::Session))
    {
        Some(Err(e)) => format!("{action}: rejected: policy {}", policy_error_name(&e)),
        _ => format!("{action}: accepted: {} tags", req.tags.len()),
    }
}

// ---------------------------------------------------------------------------------------
// Identity directory

/// The input split at NUL bytes: authorization details, credentials file, guardrail
/// (the last two optional), written to `scratch` and loaded with `Directory::load`; a loaded
/// directory is then queried.
pub fn identity_directory(data: &[u8], scratch: &Path) -> String {
    let mut parts = data.splitn(3, |b| *b == 0);
    let details = parts.next().unwrap_or(&[]);
    let credentials = parts.next();
    let guardrail = parts.next();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = scratch.join(name);
        std::fs::write(&path, bytes).expect("write to the scratch directory");
        path
    };
    let files = DirectoryFiles {
        accounts: vec![AccountFiles {
            account_id: ACCOUNT.into(),
            authorization_details: write("details.json", details),
            guardrails: guardrail
                .map(|g| vec![write("guardrail.json", g)])
                .unwrap_or_default(),
        }],
        credentials: credentials.map(|c| write("credentials.json", c)),
    };
    let dir = match Directory::load(&files) {
        Ok(d) => d,
        Err(e) => return format!("rejected: {}", identity_error_name(&e)),
    };
    let mut found = 0;
    for arn in [
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::111122223333:user/admin",
        "arn:aws:sts::111122223333:assumed-role/Engineering/s",
    ] {
        if let Some(p) = dir.principal(arn) {
            found += 1;
            let mut ctx = request("kms:Decrypt");
            p.add_context_keys(&mut ctx, &[]);
        }
    }
    let _ = dir.role("arn:aws:iam::111122223333:role/Engineering");
    let keys = dir.secret_for("AKIAADMIN00000000001").is_some();
    format!(
        "accepted: {found} principals, {} bindings, admin key {keys}",
        dir.cert_bindings().len()
    )
}

fn identity_error_name(e: &IdentityError) -> &'static str {
    match e {
        IdentityError::Read { .. } => "Read",
        IdentityError::Format { .. } => "Format",
        IdentityError::Policy { .. } => "Policy",
        IdentityError::Invalid(_) => "Invalid",
    }
}

// ---------------------------------------------------------------------------------------
// Audit verifier

/// The audit public key (DER SubjectPublicKeyInfo, ECDSA P-256) of the trail the seeds come
/// from (a test run of the daemon), so that their checkpoint signatures verify.
const AUDIT_KEY_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200047e0a4f69d7d5c971ca410ec3ad6af30ad6ee279f653bc8a8d7092ffe2ed582f57d6eaa18a0faf528915bca3cdf599ec9e5091c01e50a5a7bb252de95ccb39a6b";

/// The first byte: bit 0 gives the verifier a public key. The rest is split at the first
/// form feed into two segment files (`audit-000001.jsonl`, `audit-000002.jsonl`) that go
/// through `verify_files` and `render`.
pub fn audit_verify(data: &[u8], scratch: &Path) -> String {
    let Some((&flags, rest)) = data.split_first() else {
        return "rejected: empty input".into();
    };
    let mut paths = Vec::new();
    for (i, segment) in rest.splitn(2, |b| *b == 0x0c).enumerate() {
        let path = scratch.join(format!("audit-{:06}.jsonl", i + 1));
        std::fs::write(&path, segment).expect("write to the scratch directory");
        paths.push(path);
    }
    let key = hex_decode(AUDIT_KEY_HEX);
    let key = (flags & 1 == 1).then_some(key.as_slice());
    let report = verify_files(&paths, key);
    let _ = render(&report, key);
    let mut kinds: Vec<String> = report.problems.iter().map(|p| p.kind.to_string()).collect();
    kinds.sort();
    kinds.dedup();
    format!(
        "{} records, {} problems [{}]",
        report.records,
        report.problems.len(),
        kinds.join(",")
    )
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}
