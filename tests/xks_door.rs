//! The XKS door (issue 16, Part A) against the real daemon and a real SoftHSM2 token, with
//! SigV4-signed HTTPS requests from the library's signer (service `kms-xks-proxy`): every
//! route, the transport and authentication refusals, secondary authorization by key policy
//! with the `xks:` condition keys, key states and tampering, and the interoperability of
//! the ciphertext with Python's `cryptography` AES-GCM using the specification's AAD formula.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::xks::*;
use common::*;
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerOptions};
use serde_json::{json, Value};

const ALLOWED: &str = "arn:aws:iam::123456789012:role/Allowed";

/// A daemon with the XKS door on one key store (`PREFIX`, run as user1, two credentials).
async fn start_xks(name: &str) -> (RunningServer, SocketAddr, std::path::PathBuf) {
    start_xks_with(name, "").await
}

/// [`start_xks`] with more `[xks]` lines.
async fn start_xks_with(
    name: &str,
    xks_lines: &str,
) -> (RunningServer, SocketAddr, std::path::PathBuf) {
    start_xks_on(name, xks_lines, "", ServerOptions::default()).await
}

/// [`start_xks`] with more `[xks]` lines, more top-level sections (`tail`) and `options`.
async fn start_xks_on(
    name: &str,
    xks_lines: &str,
    tail: &str,
    options: ServerOptions,
) -> (RunningServer, SocketAddr, std::path::PathBuf) {
    let dir = data_dir(name);
    let section = xks_section(&dir, xks_lines, tail);
    let config = config_with(&dir, &section);
    let server = server::start(&config, options)
        .await
        .expect("daemon starts");
    let addr = server
        .http_door_addr(p11kms::api::xks::DOOR)
        .expect("the XKS door is enabled");
    (server, addr, dir)
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

/// A SYMMETRIC_DEFAULT key under [`xks_key_policy`]; with `material`, an EXTERNAL key holding it.
async fn xks_key(c: &mut Client, material: Option<&[u8]>) -> String {
    let req = pb::CreateKeyRequest {
        policy: xks_key_policy(ALLOWED),
        origin: if material.is_some() { "EXTERNAL" } else { "" }.into(),
        ..Default::default()
    };
    let key = c
        .create_key(req)
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    if let Some(material) = material {
        let p = c
            .get_parameters_for_import(pb::GetParametersForImportRequest {
                key_id: key.clone(),
                wrapping_algorithm: "RSAES_OAEP_SHA_1".into(),
                wrapping_key_spec: "RSA_2048".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let wrapped = openssl_oaep_encrypt(&p.public_key, "sha1", material);
        c.import_key_material(pb::ImportKeyMaterialRequest {
            key_id: key.clone(),
            import_token: p.import_token,
            encrypted_key_material: wrapped,
            expiration_model: "KEY_MATERIAL_DOES_NOT_EXPIRE".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_specified() {
    let (server, addr, dir) = start_xks("xks-routes").await;
    let door = Door {
        server: &server,
        addr,
    };
    let mut c = admin(server.addr).await;
    let key = xks_key(&mut c, None).await;

    let health =
        json!({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}});
    let h = door.ok(&path("health"), &health).await;
    assert_eq!(h["ekmFleetDetails"][0]["healthStatus"], "ACTIVE", "{h}");

    let md = json!({"requestMetadata": metadata("DescribeKey", ALLOWED)});
    let m = door.ok(&path(&format!("keys/{key}/metadata")), &md).await;
    assert_eq!(
        m,
        json!({"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"})
    );

    let pt = vec![7u8; 4300];
    let aad = vec![9u8; 8192];
    let enc_path = path(&format!("keys/{key}/encrypt"));
    let enc = door.ok(&enc_path, &encrypt_body(&pt, &aad, ALLOWED)).await;
    assert_eq!(b64(&enc["initializationVector"]).len(), 12);
    assert_eq!(b64(&enc["authenticationTag"]).len(), 16);
    assert_eq!(b64(&enc["ciphertext"]).len(), pt.len());
    assert_eq!(
        b64(&enc["ciphertextMetadata"]),
        vec![1, 0, 0, 0, 1],
        "key version 1"
    );
    // CDIV = SHA-256(AAD || ciphertextMetadata || IV || ciphertext || tag), computed here.
    let mut cdiv_input = aad.clone();
    for member in [
        "ciphertextMetadata",
        "initializationVector",
        "ciphertext",
        "authenticationTag",
    ] {
        cdiv_input.extend(b64(&enc[member]));
    }
    let cdiv: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&cdiv_input).into();
    assert_eq!(b64(&enc["ciphertextDataIntegrityValue"]), cdiv);

    let dec_path = path(&format!("keys/{key}/decrypt"));
    let dec = door.ok(&dec_path, &decrypt_body(&enc, &aad, ALLOWED)).await;
    assert_eq!(b64(&dec["plaintext"]), pt);

    // The second credential is accepted as well.
    let second = Signing {
        id: ID2,
        secret: SECRET2,
        ..GOOD
    };
    let (status, _) = xks(
        &server,
        addr,
        "POST",
        &dec_path,
        second,
        &decrypt_body(&enc, &aad, ALLOWED),
    )
    .await;
    assert_eq!(status, 200);

    // Tampered ciphertext, wrong AAD: InvalidCiphertextException.
    let mut tampered = enc.clone();
    let mut ct = b64(&enc["ciphertext"]);
    ct[0] ^= 1;
    tampered["ciphertext"] = Value::from(B64.encode(&ct));
    for body in [
        decrypt_body(&tampered, &aad, ALLOWED),
        decrypt_body(&enc, b"other", ALLOWED),
    ] {
        door.refused(&dec_path, &body, 400, "InvalidCiphertextException")
            .await;
    }

    // An unknown key: KeyNotFoundException.
    door.refused(
        &path("keys/no-such-key/metadata"),
        &md,
        404,
        "KeyNotFoundException",
    )
    .await;
    server.shutdown().await.unwrap();

    // One audit event per request, door `xks`, with requestMetadata and the key version,
    // and never the plaintext, ciphertext or AAD.
    let evs: Vec<Value> = events(&dir)
        .into_iter()
        .filter(|e| e["door"] == "xks")
        .collect();
    let encrypts: Vec<&Value> = evs.iter().filter(|e| e["eventName"] == "Encrypt").collect();
    assert_eq!(encrypts.len(), 1, "{evs:?}");
    let params = &encrypts[0]["requestParameters"];
    assert_eq!(params["externalKeyId"], key.as_str());
    assert_eq!(params["requestMetadata"]["awsPrincipalArn"], ALLOWED);
    assert_eq!(
        params["requestMetadata"]["kmsRequestId"],
        "4112f4d6-db54-4af4-ae30-c55a22a8dfae"
    );
    assert_eq!(encrypts[0]["keyVersion"], 1, "{}", encrypts[0]);
    let names: Vec<&str> = evs.iter().filter_map(|e| e["eventName"].as_str()).collect();
    for op in ["GetHealthStatus", "GetKeyMetadata", "Decrypt"] {
        assert!(names.contains(&op), "{names:?}");
    }
    let trail = evs.iter().map(Value::to_string).collect::<String>();
    for secret in [
        B64.encode(&pt),
        B64.encode(&aad),
        enc["ciphertext"].as_str().unwrap().to_string(),
    ] {
        assert!(
            !trail.contains(&secret[..40]),
            "the trail holds request data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_and_authentication_refusals() {
    let (server, addr, dir) = start_xks("xks-refusals").await;
    let door = Door {
        server: &server,
        addr,
    };
    let health =
        json!({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}});
    let h = path("health");

    let (status, e) = xks(&server, addr, "GET", &h, GOOD, &health).await;
    assert_eq!(status, 405, "{e}");
    for bad in [
        path("keys/k/sign"),
        path("nothing"),
        "/other-prefix/kms/xks/v1/health".into(),
        format!("{PREFIX}/kms/xks/v2/health"),
    ] {
        door.refused(&bad, &health, 404, "InvalidUriPathException")
            .await;
    }
    let cases = [
        (
            Signing {
                service: "kms",
                ..GOOD
            },
            "wrong service",
        ),
        (Signing { skew: -301, ..GOOD }, "stale date"),
        (Signing { skew: 301, ..GOOD }, "future date"),
        (
            Signing {
                secret: SECRET2,
                ..GOOD
            },
            "wrong secret",
        ),
        (
            Signing {
                id: "AKIAXKSTESTCCCCCCCC4",
                ..GOOD
            },
            "unknown key",
        ),
    ];
    for (signing, what) in cases {
        let (status, e) = xks(&server, addr, "POST", &h, signing, &health).await;
        assert_eq!(
            (status, e["errorName"].as_str()),
            (401, Some("AuthenticationFailedException")),
            "{what}: {e}"
        );
        let m = e["errorMessage"].as_str().unwrap();
        assert!(
            m.len() < 512 && m.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
            "{m}"
        );
        assert!(!m.contains(SECRET1) && !m.contains(SECRET2), "{m}");
    }
    // Within the skew, accepted.
    let (status, _) = xks(
        &server,
        addr,
        "POST",
        &h,
        Signing { skew: -290, ..GOOD },
        &health,
    )
    .await;
    assert_eq!(status, 200);
    // A body that is not the operation's input, not JSON, or over the limit.
    let oversized = vec![b'{'; 70_000];
    let bodies: [(&[u8], &str); 3] = [
        (br#"{"x": 1}"#, "not the input"),
        (b"not json {", "not JSON"),
        (&oversized, "oversized"),
    ];
    for (body, what) in bodies {
        let (status, e) = xks_raw(&server, addr, "POST", &h, GOOD, body).await;
        assert_eq!(
            (status, e["errorName"].as_str()),
            (400, Some("ValidationException")),
            "{what}: {e}"
        );
    }
    server.shutdown().await.unwrap();
    // Every refusal left an audit event (the trail aggregates repeats of one kind).
    let evs = events(&dir);
    for name in [
        "InvalidUriPathException",
        "AuthenticationFailedException",
        "ValidationException",
    ] {
        assert!(
            evs.iter()
                .any(|e| e["door"] == "xks" && e["errorCode"] == name),
            "no audit event for {name}"
        );
    }
}

/// ExplainAccess (`policy explain --xks-request-metadata`) decides as the door did: with the
/// requestMetadata members the `xks:` condition keys are filled, so the key store principal
/// is allowed for `ALLOWED` by statement `Xks` and denied for another AWS caller; without
/// them the condition cannot hold; a member the door does not know, or an action it does not
/// authorize, is a ValidationException.
async fn explain_as_the_door_decides(addr: SocketAddr, key: &str) {
    let admin = signed_as(addr, "AKIAADMIN00000000001").await;
    let explain = |caller: Option<&str>, action: &str| pb::ExplainAccessRequest {
        principal: USER1.into(),
        action: action.into(),
        key_id: key.into(),
        xks_request_metadata: caller
            .map(|arn| {
                [
                    ("awsPrincipalArn".to_string(), arn.to_string()),
                    ("kmsOperation".into(), "Encrypt".into()),
                ]
                .into()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    let ask = async |req: pb::ExplainAccessRequest| {
        admin
            .admin
            .clone()
            .explain_access(admin.admin_req(req, "ExplainAccess"))
            .await
    };
    let allowed = ask(explain(Some(ALLOWED), "kms:Encrypt"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision, "Allow", "{allowed:?}");
    assert!(
        allowed
            .deciding_statements
            .iter()
            .any(|d| d.statement == "Xks"),
        "{allowed:?}"
    );
    for (caller, what) in [
        (
            Some("arn:aws:iam::123456789012:role/Other"),
            "another caller",
        ),
        (None, "no metadata"),
    ] {
        let denied = ask(explain(caller, "kms:Encrypt"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denied.decision, "Deny", "{what}: {denied:?}");
    }
    let mut unknown = explain(Some(ALLOWED), "kms:Encrypt");
    unknown
        .xks_request_metadata
        .insert("awsPrincipal".into(), "x".into());
    let not_xks = explain(Some(ALLOWED), "kms:GenerateDataKey");
    for req in [unknown, not_xks] {
        let e = ask(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_policy_and_key_state_decide() {
    let (server, addr, _) = start_xks("xks-policy").await;
    let door = Door {
        server: &server,
        addr,
    };
    let mut c = admin(server.addr).await;
    let key = xks_key(&mut c, None).await;
    let enc_path = path(&format!("keys/{key}/encrypt"));
    let other = "arn:aws:iam::123456789012:role/Other";

    // The key policy allows user1 only for the AWS caller ALLOWED (xks:AwsPrincipalArn); a
    // denied request never reaches the HSM.
    let ops = server.kms.hsm().total_ops();
    door.refused(
        &enc_path,
        &encrypt_body(b"x", b"", other),
        403,
        "AccessDeniedException",
    )
    .await;
    assert_eq!(
        server.kms.hsm().total_ops(),
        ops,
        "a denied request reached the HSM"
    );
    let enc = door.ok(&enc_path, &encrypt_body(b"x", b"", ALLOWED)).await;
    explain_as_the_door_decides(server.addr, &key).await;
    // An unknown kmsOperation is accepted.
    let mut future = encrypt_body(b"x", b"", ALLOWED);
    future["requestMetadata"]["kmsOperation"] = json!("SomeFutureOperation");
    let answer = door.ok(&enc_path, &future).await;
    assert_eq!(b64(&answer["ciphertextMetadata"]), vec![1, 0, 0, 0, 1]);

    // The default key policy gives user1 nothing: denied.
    let plain = create_key(&mut c).await;
    let md = json!({"requestMetadata": metadata("DescribeKey", ALLOWED)});
    door.refused(
        &path(&format!("keys/{plain}/metadata")),
        &md,
        403,
        "AccessDeniedException",
    )
    .await;

    // Disabled: metadata says DISABLED, Encrypt and Decrypt are InvalidStateException.
    c.disable_key(pb::DisableKeyRequest {
        key_id: key.clone(),
    })
    .await
    .unwrap();
    let m = door.ok(&path(&format!("keys/{key}/metadata")), &md).await;
    assert_eq!(m["keyStatus"], "DISABLED", "{m}");
    door.refused(
        &enc_path,
        &encrypt_body(b"x", b"", ALLOWED),
        400,
        "InvalidStateException",
    )
    .await;
    let dec_path = path(&format!("keys/{key}/decrypt"));
    door.refused(
        &dec_path,
        &decrypt_body(&enc, b"", ALLOWED),
        400,
        "InvalidStateException",
    )
    .await;
    server.shutdown().await.unwrap();
}

/// The AAD of the specification, decrypted by Python's `cryptography` (an independent
/// AES-GCM) with the known key material imported into the key.
fn python_open(material: &[u8], enc: &Value, aad: &[u8], scratch: &Path) -> Vec<u8> {
    let script = r#"
import sys, base64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, ct, iv, tag, md, aad = sys.argv[1:7]
key = bytes.fromhex(key); aad = bytes.fromhex(aad)
ct, iv, tag, md = (base64.b64decode(x) for x in (ct, iv, tag, md))
full = len(aad).to_bytes(2, "big") + aad + len(md).to_bytes(1, "big") + md
sys.stdout.write(AESGCM(key).decrypt(iv, ct + tag, full).hex())
"#;
    let s = |k: &str| enc[k].as_str().unwrap().to_string();
    let out = hermetic_command(manifest_dir().join(".venv/bin/python"), scratch)
        .arg("-c")
        .arg(script)
        .args([
            hex::encode(material),
            s("ciphertext"),
            s("initializationVector"),
        ])
        .args([
            s("authenticationTag"),
            s("ciphertextMetadata"),
            hex::encode(aad),
        ])
        .output()
        .expect("run the venv's python (scripts/python-venv.sh)");
    assert_succeeded(&out, "Python AES-GCM could not open the XKS ciphertext");
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

/// The reverse of [`python_open`]: Python's AES-GCM seals `pt` under `material` with the
/// specification's AAD formula over `aad` and `md`, a fresh 12-byte IV; the answer is a
/// Decrypt body's members (base64).
fn python_seal(material: &[u8], pt: &[u8], aad: &[u8], md: &[u8], scratch: &Path) -> Value {
    let script = r#"
import sys, os, base64, json
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, pt, aad, md = (bytes.fromhex(x) for x in sys.argv[1:5])
full = len(aad).to_bytes(2, "big") + aad + len(md).to_bytes(1, "big") + md
iv = os.urandom(12)
out = AESGCM(key).encrypt(iv, pt, full)
b = lambda x: base64.b64encode(x).decode()
sys.stdout.write(json.dumps({"ciphertext": b(out[:-16]), "authenticationTag": b(out[-16:]),
                             "initializationVector": b(iv), "ciphertextMetadata": b(md)}))
"#;
    let out = hermetic_command(manifest_dir().join(".venv/bin/python"), scratch)
        .arg("-c")
        .arg(script)
        .args([material, pt, aad, md].map(hex::encode))
        .output()
        .expect("run the venv's python (scripts/python-venv.sh)");
    assert_succeeded(&out, "Python AES-GCM could not seal");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertexts_open_with_python_aes_gcm_and_the_spec_aad() {
    let (server, addr, _) = start_xks("xks-interop").await;
    let door = Door {
        server: &server,
        addr,
    };
    let mut c = admin(server.addr).await;
    let material: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(29).wrapping_add(3))
        .collect();
    let key = xks_key(&mut c, Some(&material)).await;
    let pt = b"XKS interoperability proof".to_vec();
    for aad in [b"aws-kms-xks-aad".to_vec(), Vec::new()] {
        let enc = door
            .ok(
                &path(&format!("keys/{key}/encrypt")),
                &encrypt_body(&pt, &aad, ALLOWED),
            )
            .await;
        assert_eq!(python_open(&material, &enc, &aad, scratch_dir()), pt);
        // The reverse: what Python sealed with the spec's AAD (and our key-version
        // metadata) the door opens.
        let sealed = python_seal(&material, &pt, &aad, &[1, 0, 0, 0, 1], scratch_dir());
        let opened = door
            .ok(
                &path(&format!("keys/{key}/decrypt")),
                &decrypt_body(&sealed, &aad, ALLOWED),
            )
            .await;
        assert_eq!(b64(&opened["plaintext"]), pt);
    }
    server.shutdown().await.unwrap();
}

/// Several logical key stores on one door, one per URI path prefix: each accepts only its
/// own credentials and runs as its own principal (here user2, whom the key policy does not
/// allow), and a path under neither prefix is InvalidUriPathException.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_prefix_is_its_own_key_store() {
    const ID7: &str = "AKIAXKSSECONDSTORE77";
    const SECRET9: &str = "xks-secret-second-store-0123456789abcdefghijk";
    let dir = data_dir("xks-two-stores");
    let creds = dir.join("second-creds.json");
    write_secret(
        &creds,
        json!([{"access_key_id": ID7, "secret_access_key": SECRET9}]).to_string(),
    );
    let second = format!(
        "\n[[xks.key_store]]\nuri_path_prefix = \"/second\"\nprincipal = \"{USER2}\"\n\
         credentials_file = \"{}\"\n",
        creds.display()
    );
    let (server, addr, _) =
        start_xks_on("xks-two-stores", "", &second, ServerOptions::default()).await;
    let mut c = admin(server.addr).await;
    let key = xks_key(&mut c, None).await;
    let md = json!({"requestMetadata": metadata("DescribeKey", ALLOWED)});
    let second_path = format!("/second/kms/xks/v1/keys/{key}/metadata");
    let own = Signing {
        id: ID7,
        secret: SECRET9,
        ..GOOD
    };
    let (status, e) = xks(&server, addr, "POST", &second_path, GOOD, &md).await;
    assert_eq!(
        (status, e["errorName"].as_str()),
        (401, Some("AuthenticationFailedException")),
        "{e}"
    );
    let (status, e) = xks(
        &server,
        addr,
        "POST",
        &path(&format!("keys/{key}/metadata")),
        own,
        &md,
    )
    .await;
    assert_eq!(
        (status, e["errorName"].as_str()),
        (401, Some("AuthenticationFailedException")),
        "{e}"
    );
    let (status, e) = xks(&server, addr, "POST", &second_path, own, &md).await;
    assert_eq!(
        (status, e["errorName"].as_str()),
        (403, Some("AccessDeniedException")),
        "user2: {e}"
    );
    let (status, m) = xks(
        &server,
        addr,
        "POST",
        &path(&format!("keys/{key}/metadata")),
        GOOD,
        &md,
    )
    .await;
    assert_eq!(
        (status, m["keyStatus"].as_str()),
        (200, Some("ENABLED")),
        "user1: {m}"
    );
    let (status, e) = xks(&server, addr, "POST", "/third/kms/xks/v1/health", own, &md).await;
    assert_eq!(
        (status, e["errorName"].as_str()),
        (404, Some("InvalidUriPathException")),
        "{e}"
    );
    server.shutdown().await.unwrap();
}

/// SIGHUP reloads each key store's credentials file, so that the credential AWS signs with can
/// be rotated without a restart: a credential written to the file is refused before the
/// signal and accepted after it, and the ones it replaced are refused from then on. (SIGHUP
/// reaches this whole test process: the other tests' daemons read their unchanged files
/// again, which changes nothing for them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reload_on_sighup() {
    const ID3: &str = "AKIAXKSTESTCCCCCCCC4";
    const SECRET3: &str = "xks-secret-three-0123456789abcdefghijklmnopq";
    let (server, addr, dir) = start_xks("xks-sighup").await;
    let health = json!({"requestMetadata": metadata("KmsHealthCheck", ALLOWED)});
    let third = Signing {
        id: ID3,
        secret: SECRET3,
        ..GOOD
    };
    let status = |signing: Signing<'static>| {
        let (server, health) = (&server, &health);
        async move {
            xks(server, addr, "POST", &path("health"), signing, health)
                .await
                .0
        }
    };
    assert_eq!(status(GOOD).await, 200);
    let rotated = json!([{"access_key_id": ID3, "secret_access_key": SECRET3}]);
    write_secret(&dir.join("xks-creds.json"), rotated.to_string());
    assert_eq!(status(third).await, 401, "not before the signal");

    let pid = std::process::id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    assert!(
        wait_for(async || status(third).await == 200).await,
        "the new credential is accepted"
    );
    assert_eq!(
        status(GOOD).await,
        401,
        "the replaced credential is refused"
    );
    server.shutdown().await.unwrap();
}

/// Optional mutual TLS: with `mtls_client_ca` set, only a client certificate from that CA
/// naming AWS KMS's subject for the region (`cks.kms.us-east-1.amazonaws.com` by default) is
/// served; none, or another subject, is 401 `AuthenticationFailedException`, audited. Without
/// it (every other test here), no certificate is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_checks_the_client_subject() {
    let pki = &env().pki;
    for cn in [
        "cks.kms.us-east-1.amazonaws.com",
        "cks.kms.eu-west-1.amazonaws.com",
    ] {
        if !pki.join(format!("{cn}.pem")).exists() {
            p11kms::devsetup::issue_client_cert(pki, cn, None).unwrap();
        }
    }
    let ca = format!("mtls_client_ca = \"{}\"\n", pki.join("ca.pem").display());
    let (server, addr, dir) = start_xks_with("xks-mtls", &ca).await;
    let health =
        json!({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}});
    let bytes = request_bytes(
        &server,
        addr,
        "POST",
        &path("health"),
        GOOD,
        health.to_string().as_bytes(),
    );
    let as_client = |cert| tls_exchange_with(test_ca_connector_as(b"http/1.1", cert), addr, &bytes);
    let (status, ok) = answer(as_client(Some("cks.kms.us-east-1.amazonaws.com")).await);
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["xksProxyVendor"], "p11kms");
    for (cert, what) in [
        (None, "no certificate"),
        (
            Some("cks.kms.eu-west-1.amazonaws.com"),
            "another region's subject",
        ),
        (Some("user1"), "a user's certificate"),
    ] {
        let (status, e) = answer(as_client(cert).await);
        assert_eq!(
            (status, e["errorName"].as_str()),
            (401, Some("AuthenticationFailedException")),
            "{what}: {e}"
        );
    }
    server.shutdown().await.unwrap();
    let refused = events(&dir)
        .into_iter()
        .filter(|e| e["door"] == "xks" && e["errorCode"] == "AuthenticationFailedException")
        .count();
    assert!(refused >= 1, "the refusals are audited");

    // Without mutual TLS a certificate-less client is served.
    let (server, addr) = {
        let (s, a, _) = start_xks("xks-no-mtls").await;
        (s, a)
    };
    let (status, e) = xks(&server, addr, "POST", &path("health"), GOOD, &health).await;
    assert_eq!(status, 200, "{e}");
    server.shutdown().await.unwrap();
}

/// GetHealthStatus is a deep check of every backing HSM: the default token, and each custom
/// key store while it is to be connected (here one on a cluster token), with the device's
/// model; a check is reused while younger than `health_cache_ms` on the daemon's clock, so
/// a store connected or disconnected shows once the cached answer has aged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_every_backing_hsm_and_reuses_a_fresh_check() {
    use common::stores::{cluster, cluster_sections, softhsm};
    let c = cluster("xks", "health", &softhsm(), true);
    let clock = std::sync::Arc::new(p11kms::core::clock::ManualClock::default());
    let options = ServerOptions {
        clock: clock.clone(),
        ..ServerOptions::default()
    };
    let tail = cluster_sections(std::slice::from_ref(&c));
    let (server, addr, _) =
        start_xks_on("xks-health", "health_cache_ms = 10000\n", &tail, options).await;
    let door = Door {
        server: &server,
        addr,
    };
    let fleet = async || {
        let body =
            json!({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}});
        let h = door.ok(&path("health"), &body).await;
        let details = h["ekmFleetDetails"].as_array().unwrap().clone();
        let entries: Vec<(String, String, String)> = details
            .iter()
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap().to_string();
                (s("id"), s("model"), s("healthStatus"))
            })
            .collect();
        entries
    };
    let default_token = (
        TOKEN_LABEL.to_string(),
        "SoftHSM v2".to_string(),
        "ACTIVE".to_string(),
    );
    assert_eq!(fleet().await, std::slice::from_ref(&default_token));

    let mut admin = admin(server.addr).await;
    let store = admin
        .create_custom_key_store(pb::CreateCustomKeyStoreRequest {
            custom_key_store_name: "xks-health".into(),
            cloud_hsm_cluster_id: c.id.clone(),
            trust_anchor_certificate: c.anchor_pem.clone(),
            key_store_password: c.password.clone(),
            ..Default::default()
        })
        .await
        .expect("create the store")
        .into_inner()
        .custom_key_store_id;
    admin
        .connect_custom_key_store(pb::ConnectCustomKeyStoreRequest {
            custom_key_store_id: store.clone(),
        })
        .await
        .expect("connect");
    let connected = wait_for(async || {
        server
            .kms
            .key_stores()
            .get(&store)
            .is_some_and(|h| h.connected_hsm().is_some())
    })
    .await;
    assert!(connected, "the store connects");
    assert_eq!(
        fleet().await,
        std::slice::from_ref(&default_token),
        "the fresh check is reused"
    );
    clock.advance_ms(10_000);
    let with_store = (
        store.clone(),
        "SoftHSM v2".to_string(),
        "ACTIVE".to_string(),
    );
    assert_eq!(fleet().await, [default_token.clone(), with_store.clone()]);

    admin
        .disconnect_custom_key_store(pb::DisconnectCustomKeyStoreRequest {
            custom_key_store_id: store.clone(),
        })
        .await
        .expect("disconnect");
    assert_eq!(
        fleet().await,
        [default_token.clone(), with_store],
        "still fresh"
    );
    clock.advance_ms(10_000);
    assert_eq!(
        fleet().await,
        [default_token],
        "a disconnected store is not listed"
    );

    // The metrics show the last check and count the door's requests per key store.
    let metrics = scrape(server.metrics_addr.unwrap()).await;
    for line in [
        format!("p11kms_xks_ekm_health{{ekm=\"{TOKEN_LABEL}\",status=\"ACTIVE\"}} 1"),
        format!("p11kms_xks_ekm_health{{ekm=\"{TOKEN_LABEL}\",status=\"UNAVAILABLE\"}} 0"),
        format!(
            "p11kms_xks_key_store_requests_total{{key_store=\"{PREFIX}\",operation=\"GetHealthStatus\",outcome=\"Success\"}} 5"
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in\n{metrics}");
    }
    assert!(!metrics.contains(&format!("ekm=\"{store}\"")), "{metrics}");
    server.shutdown().await.unwrap();
}
