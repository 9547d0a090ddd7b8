//! The operator console (issue 21) end to end: the real daemon serves the built console on the
//! AWS door's listener (HTTPS on 127.0.0.1:0); Debian's headless Chromium, driven by
//! playwright-core (`console/e2e/console.mjs`), signs in and uses it; boto3
//! (`tests/python/console_checks.py`) checks what the console did through the AWS API.
//!
//! The run, in three browser phases with checks in between:
//! 1. `create`: a signed-out browser sees only the sign-in page; the admin signs in; the
//!    wizard creates a key whose policy names the chosen administrator (admin) and user
//!    (alice); a broken policy is pointed at by line.
//! 2. boto3: DescribeKey and GetKeyPolicy show exactly the wizard's policy (the one AWS's
//!    console generates); alice encrypts; bob is denied.
//! 3. `inspect`: the keys list; the explain page names the deciding statement for alice and
//!    none for bob (implicit deny); a policy edit that would lock the admin out is refused with
//!    AWS's exception and message; the audit page lists the console's requests and shows the
//!    trail verified; the key page's actions (tags, rotation, a grant, disable/enable,
//!    schedule/cancel deletion) each take effect; the health page draws its charts; signing
//!    out leaves the sign-in page.
//! 4. The test edits one byte of a record on disk; `tampered`: the audit page shows the trail
//!    failing at that file and line; bob signs in by assuming a role; a fresh signed-out page
//!    calls no API.
//!
//! Every phase checks that no secret reached a requested URL, web storage or a cookie.
//! Screenshots of each page are kept in `target/console-screenshots/`.
//!
//! Needs `scripts/console.sh` (console/dist and console/node_modules), `/usr/bin/chromium`
//! and the Python venv (`scripts/python-venv.sh`); without them the test fails and says so.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use p11kms::core::SystemClock;
use p11kms::server::{RunningServer, ServerOptions};
use serde_json::{json, Value};
use zeroize::Zeroizing;

const ROLE: &str = "arn:aws:iam::111122223333:role/Engineering";
/// Keys made besides the wizard's, so that the keys list has a second page.
const PAGING_KEYS: usize = 20;

/// A user of the test's identity directory: name, access key id, and a fresh secret.
struct User {
    name: &'static str,
    access_key_id: &'static str,
    secret: Zeroizing<String>,
}

impl User {
    fn new(name: &'static str, access_key_id: &'static str) -> User {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )[..40]
            .to_string()
            .into();
        User {
            name,
            access_key_id,
            secret,
        }
    }

    fn arn(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:user/{}", self.name)
    }
}

/// The admin, the key user alice and the other user bob.
struct Users {
    admin: User,
    alice: User,
    bob: User,
}

fn users() -> Users {
    Users {
        admin: User::new("admin", "AKIACONSOLEADMIN0001"),
        alice: User::new("alice", "AKIACONSOLEALICE0001"),
        bob: User::new("bob", "AKIACONSOLEBOB000001"),
    }
}

/// The console's built files and its e2e driver; fails the test (never skips it) when missing.
fn console_dir() -> PathBuf {
    let dir = manifest_dir().join("console");
    assert!(
        dir.join("dist/index.html").is_file()
            && dir
                .join("node_modules/playwright-core/package.json")
                .is_file(),
        "the console is not built at {}: run scripts/console.sh",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: install Debian's chromium package (scripts/install-deps.sh)"
    );
    dir
}

fn venv_python() -> PathBuf {
    let p = manifest_dir().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "the Python venv with boto3 is missing at {}: run scripts/python-venv.sh",
        p.display()
    );
    p
}

/// An IAM user of the authorization details file.
fn iam_user(name: &str, id: &str, policies: Value) -> Value {
    json!({
        "Path": "/", "UserName": name, "UserId": id,
        "Arn": format!("arn:aws:iam::{ACCOUNT}:user/{name}"),
        "CreateDate": "2024-03-01T09:00:00+00:00", "GroupList": [],
        "AttachedManagedPolicies": [], "UserPolicyList": policies, "Tags": []
    })
}

fn inline(name: &str, statements: Value) -> Value {
    json!({"PolicyName": name, "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}})
}

/// The role bob may assume: it may list and describe keys, nothing more.
fn engineering_role() -> Value {
    json!({
        "Path": "/", "RoleName": "Engineering", "RoleId": "AROACONSOLEENGINEER1", "Arn": ROLE,
        "CreateDate": "2024-03-01T09:00:00+00:00",
        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/bob")},
            "Action": "sts:AssumeRole"}]},
        "InstanceProfileList": [], "AttachedManagedPolicies": [], "Tags": [],
        "RolePolicyList": [inline("ReadKeys", json!([{"Effect": "Allow",
            "Action": ["kms:ListKeys", "kms:ListAliases", "kms:DescribeKey"], "Resource": "*"}]))],
        "RoleLastUsed": {}, "MaxSessionDuration": 3600
    })
}

/// The account's directory: admin (kms:* and p11kms:*), alice (nothing of her own), bob (may
/// assume the role), and the role.
fn account_details() -> Value {
    let admin = inline(
        "ConsoleAdmin",
        json!([{"Effect": "Allow", "Action": ["kms:*", "p11kms:*"], "Resource": "*"}]),
    );
    let assume = inline(
        "AssumeEngineering",
        json!([{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": ROLE}]),
    );
    json!({
        "UserDetailList": [
            iam_user("admin", "AIDACONSOLEADMIN0001", json!([admin])),
            iam_user("alice", "AIDACONSOLEALICE0001", json!([])),
            iam_user("bob", "AIDACONSOLEBOB000001", json!([assume])),
        ],
        "GroupDetailList": [], "RoleDetailList": [engineering_role()], "Policies": [],
        "IsTruncated": false
    })
}

/// Writes the identity directory (credentials 0600) under `dir`; returns its path.
fn write_identity(dir: &Path, u: &Users) -> PathBuf {
    let ident = dir.join("identity");
    std::fs::create_dir_all(&ident).unwrap();
    let keys: Vec<Value> = [&u.admin, &u.alice, &u.bob]
        .iter()
        .map(|x| {
            json!({"AccessKeyId": x.access_key_id, "SecretAccessKey": x.secret.as_str(),
                   "UserArn": x.arn(), "Status": "Active"})
        })
        .collect();
    // The admin's gRPC certificate (tests/common's `admin`), to make keys for the list's paging.
    let bindings = json!([{"SubjectCN": "admin", "Principal": u.admin.arn()}]);
    let creds = json!({"AccessKeys": keys, "CertificateBindings": bindings});
    write_secret(&ident.join("credentials.json"), creds.to_string());
    write_secret(
        &ident.join(format!("{ACCOUNT}.json")),
        account_details().to_string(),
    );
    let other = format!("{OTHER_ACCOUNT}.json");
    write_secret(
        &ident.join(&other),
        std::fs::read(fixtures_dir().join(&other)).unwrap(),
    );
    ident
}

/// The daemon with the AWS door (TLS) and the console, on the identity directory `ident`.
async fn start_console(data: &Path, ident: &Path, console: &Path) -> (RunningServer, String) {
    let text = config_text(data).replace(
        &fixtures_dir().display().to_string(),
        &ident.display().to_string(),
    ) + AWS_DOOR_SECTION
        + &format!(
            "\n[console]\nenabled = true\nassets = \"{}\"\n\
             [audit]\ncheckpoint_every_events = 25\n",
            console.join("dist").display()
        );
    let config = load_config_text(&data.join("p11kms.toml"), text);
    let options = ServerOptions {
        clock: Arc::new(SystemClock),
        sweep_interval: None,
    };
    serve_aws_door(&config, options).await
}

/// One run's fixed inputs for the browser phases.
struct Run {
    endpoint: String,
    users: Users,
    console: PathBuf,
    scratch: PathBuf,
    screenshots: PathBuf,
}

impl Run {
    fn user_json(u: &User) -> Value {
        json!({"accessKeyId": u.access_key_id, "secretAccessKey": u.secret.as_str(), "arn": u.arn()})
    }

    /// Runs phase `phase` of console.mjs with `extra` inputs; returns its results.
    async fn browser(&self, phase: &str, extra: Value) -> Value {
        let results = self.scratch.join(format!("results-{phase}.json"));
        let mut input = json!({
            "phase": phase, "endpoint": self.endpoint,
            "serverCert": env().pki.join("server.pem"),
            "users": {"admin": Self::user_json(&self.users.admin),
                      "alice": Self::user_json(&self.users.alice),
                      "bob": Self::user_json(&self.users.bob)},
            "roleArn": ROLE, "screenshots": self.screenshots, "results": results,
        });
        input
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let input_path = self.scratch.join(format!("input-{phase}.json"));
        write_secret(&input_path, input.to_string());
        let mut c = hermetic_command("node", &self.scratch);
        c.arg(self.console.join("e2e/console.mjs")).arg(&input_path);
        run_ok(c, &format!("console.mjs {phase}")).await;
        let out = std::fs::read_to_string(&results).expect("the phase's results");
        serde_json::from_str(&out).unwrap()
    }

    /// Runs tests/python/console_checks.py on the created key and the wizard's policy.
    async fn boto3_checks(&self, created: &Value) {
        let policy = self.scratch.join("wizard-policy.json");
        std::fs::write(&policy, created["policy"].as_str().unwrap()).unwrap();
        let mut c = hermetic_command(venv_python(), &self.scratch);
        c.arg(manifest_dir().join("tests/python/console_checks.py"))
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_KMS", &self.endpoint)
            .env("AWS_ENDPOINT_URL_STS", &self.endpoint)
            .env("AWS_CA_BUNDLE", env().pki.join("ca.pem"))
            .env("AWS_MAX_ATTEMPTS", "1")
            .env(
                "P11KMS_FIXTURE_CREDENTIALS",
                self.scratch.join("identity/credentials.json"),
            )
            .env("CONSOLE_KEY_ID", created["keyId"].as_str().unwrap())
            .env("CONSOLE_WIZARD_POLICY", &policy);
        run_ok(c, "console_checks.py").await;
    }
}

/// Edits one byte of the trail's CreateKey record of `key` in place (the daemon keeps
/// appending to the file); returns the segment's file name and the record's 1-based line.
fn edit_create_key_record(data: &Path, key: &str) -> (String, usize) {
    const PATTERN: &str = "\"eventName\":\"CreateKey\"";
    for entry in std::fs::read_dir(data.join("audit")).expect("the audit directory") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut offset = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if let Some(found) = line.find(PATTERN).filter(|_| line.contains(key)) {
                // The last letter of the operation's name: "CreateKey" becomes "CreateKez".
                let at = offset + found + PATTERN.len() - 2;
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_at(b"z", at as u64).unwrap();
                return (name, i + 1);
            }
            offset += line.len();
        }
    }
    panic!("no CreateKey record of {key} in the trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_creates_explains_audits_and_keeps_its_secrets() {
    let console = console_dir();
    let data = data_dir("console");
    let scratch = data.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let users = users();
    let ident = write_identity(&scratch, &users);
    let (server, endpoint) = start_console(&data, &ident, &console).await;
    let screenshots = manifest_dir().join("target/console-screenshots");
    // This run's screenshots only (a failure's from an earlier run would mislead).
    let _ = std::fs::remove_dir_all(&screenshots);
    let run = Run {
        endpoint,
        users,
        console,
        scratch,
        screenshots,
    };

    let created = run.browser("create", json!({})).await;
    let key = created["keyId"].as_str().expect("the created key id");
    run.boto3_checks(&created).await;

    // More keys than the keys list shows on a page (20), made over gRPC.
    let mut grpc = admin(server.addr).await;
    for _ in 0..PAGING_KEYS {
        create_key(&mut grpc).await;
    }

    let wizard = json!({"keyId": key, "policy": created["policy"],
                        "createKeyRequestId": created["createKeyRequestId"],
                        "totalKeys": PAGING_KEYS + 1});
    run.browser("inspect", wizard.clone()).await;

    let (file, line) = edit_create_key_record(&data, key);
    let mut tampered = wizard;
    tampered["tampered"] = json!({"file": file, "line": line});
    run.browser("tampered", tampered).await;

    server.shutdown().await.unwrap();
}
