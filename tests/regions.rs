//! Multi-Region keys between two p11kms Regions (issue 20): two real daemons, `us-east-1` (token
//! residency: key versions are token objects) and `eu-west-1` (wrapped residency: blobs under
//! its trusted master key), each with its own SoftHSM2 token and its own store, after the
//! security officers' trust ceremonies (`p11kms region transport-key` / `region trust`, run as an
//! operator runs them, before the daemons start). Each daemon reaches the other through
//! `[region.peers]` as the fixtures' admin (mutual TLS).
//!
//! The device-level facts (only the SO sets `CKA_TRUSTED`; a wrap-with-trusted key is refused
//! under an untrusted key and wrapped under a trusted one) are probed in
//! `src/hsm/region_tests.rs`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::stores::{cluster, softhsm, ClusterFixture};
use common::*;
use p11kms::core::{InterruptCreate, ManualClock};
use p11kms::pb;
use p11kms::pb::region_service_client::RegionServiceClient;
use p11kms::server::{self, RunningServer, ServerOptions};
use std::sync::Arc;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
/// A peer Region in both configs whose transport key no security officer trusted.
const UNTRUSTED: &str = "ap-south-1";

/// One Region of the rig: its token, data directory, config and ports.
struct Region {
    name: &'static str,
    token: ClusterFixture,
    dir: PathBuf,
    config: PathBuf,
    grpc_port: u16,
}

/// A free 127.0.0.1 port (bound, read, released): the peers' configs name each other's
/// gRPC port before either daemon starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Region {
    fn new(name: &'static str) -> Region {
        let dir = data_dir(&format!("region-{name}"));
        Region {
            name,
            token: cluster("regions", name, &softhsm(), true),
            config: dir.join("p11kms.toml"),
            dir,
            grpc_port: free_port(),
        }
    }

    /// This Region's config: its own token and PIN, its Region name and residency, the AWS
    /// door, and `peer` as its peer Region reached as the fixtures' admin.
    fn write_config(&self, peer: &Region, residency: &str) {
        let pin = self.dir.join("token-pin");
        write_secret(&pin, &self.token.password);
        let pki = &env().pki;
        let text = config_text(&self.dir)
            .replace(
                "127.0.0.1:0\"\ntls_cert",
                &format!("127.0.0.1:{}\"\ntls_cert", self.grpc_port),
            )
            .replace(
                &format!("token_label = \"{TOKEN_LABEL}\""),
                &format!("token_label = \"{}\"", self.token.token),
            )
            .replace(
                &format!("{}/user-pin", env().dir.display()),
                &pin.display().to_string(),
            )
            .replace("[hsm]\n", &format!("[hsm]\nresidency = \"{residency}\"\n"));
        let peer_section = |name: &str| {
            format!(
                "[region.peers.{name}]\nendpoint = \"https://127.0.0.1:{port}\"\n\
                 ca_cert = \"{pki}/ca.pem\"\nclient_cert = \"{pki}/admin.pem\"\n\
                 client_key = \"{pki}/admin-key.pem\"\ntls_domain = \"localhost\"\n",
                port = peer.grpc_port,
                pki = pki.display(),
            )
        };
        // A third peer, configured but never trusted by this token's SO: no key can go there.
        // Who each peer's daemon is here: the real peer calls as the admin; the untrusted
        // one would be user2, so the admin cannot speak for it.
        let principals = format!(
            "[region.peer_principals]\n\"{}\" = \"{ADMIN}\"\n\"{UNTRUSTED}\" = \"{USER2}\"\n",
            peer.name
        );
        let text = format!(
            "{text}\n[kms]\nregion = \"{name}\"\n{AWS_DOOR_SECTION}\n{}\n{}\n{principals}",
            peer_section(peer.name),
            peer_section(UNTRUSTED),
            name = self.name,
        );
        assert!(
            text.contains(&self.token.token) && text.contains("token-pin"),
            "{text}"
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts this Region's daemon on `clock`, its sweeper every 50 ms.
    async fn start(&self, clock: &Arc<ManualClock>) -> RunningServer {
        let cfg = p11kms::config::Config::load(&self.config).expect("config");
        let options = ServerOptions {
            clock: clock.clone(),
            sweep_interval: Some(std::time::Duration::from_millis(50)),
        };
        let server = server::start(&cfg, options).await.expect("daemon starts");
        assert_eq!(server.addr.port(), self.grpc_port);
        server
    }
}

fn region_command(args: &[&str], config: &Path) -> Command {
    let mut c = p11kms_command();
    c.arg("region").args(args).arg("--config").arg(config);
    c
}

/// The SO ceremony: `trusting` imports `peer`'s transport public key as trusted.
fn ceremony(trusting: &Region, peer: &Region) {
    let out = region_command(&["transport-key"], &peer.config)
        .output()
        .unwrap();
    assert_succeeded(&out, "region transport-key");
    let pem = trusting.dir.join(format!("{}-transport.pem", peer.name));
    std::fs::write(&pem, &out.stdout).unwrap();
    let out = region_command(
        &[
            "trust",
            "--region",
            peer.name,
            "--public-key",
            pem.to_str().unwrap(),
        ],
        &trusting.config,
    )
    .env("P11KMS_SO_PIN", SO_PIN)
    .output()
    .unwrap();
    assert_succeeded(&out, "region trust");
}

fn metadata<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}")).into_inner()
}

async fn describe(c: &mut Client, key_id: &str) -> pb::KeyMetadata {
    let req = pb::DescribeKeyRequest {
        key_id: key_id.into(),
        ..Default::default()
    };
    metadata(c.describe_key(req).await, "describe")
        .key_metadata
        .unwrap()
}

fn regions_of(m: &pb::KeyMetadata) -> (String, String, Vec<String>) {
    let c = m
        .multi_region_configuration
        .clone()
        .expect("a configuration");
    let replicas = c.replica_keys.iter().map(|k| k.region.clone()).collect();
    (
        c.multi_region_key_type,
        c.primary_key.unwrap().region,
        replicas,
    )
}

async fn encrypt(c: &mut Client, key_id: &str, text: &[u8]) -> Vec<u8> {
    let req = pb::EncryptRequest {
        key_id: key_id.into(),
        plaintext: text.to_vec(),
        ..Default::default()
    };
    metadata(c.encrypt(req).await, "encrypt").ciphertext_blob
}

async fn decrypt(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        ..Default::default()
    };
    c.decrypt(req).await.map(|r| r.into_inner().plaintext)
}

async fn replicate(
    c: &mut Client,
    key_id: &str,
    to: &str,
) -> Result<pb::ReplicateKeyResponse, tonic::Status> {
    let req = pb::ReplicateKeyRequest {
        key_id: key_id.into(),
        replica_region: to.into(),
        description: "replica".into(),
        ..Default::default()
    };
    c.replicate_key(req).await.map(|r| r.into_inner())
}

async fn create_multi_region(c: &mut Client) -> String {
    let req = pb::CreateKeyRequest {
        multi_region: true,
        ..Default::default()
    };
    metadata(c.create_key(req).await, "create")
        .key_metadata
        .unwrap()
        .key_id
}

/// The multi-Region key's version objects on `server`'s token: sensitive, never readable,
/// extractable only under trusted keys.
async fn assert_multi_region_custody(server: &RunningServer, key_id: &str, version: u32) {
    let uuid = p11kms::core::key_id::parse(key_id).unwrap();
    let id = p11kms::hsm::ObjectId::new(*uuid.as_bytes(), version);
    let (attrs, trusted_only) = server.kms.hsm().secret_key_custody(id).await.unwrap();
    assert!(attrs.token && attrs.sensitive && attrs.private, "{attrs:?}");
    assert!(
        attrs.extractable && trusted_only,
        "{attrs:?}, wrap-with-trusted {trusted_only}"
    );
}

/// A signature made in either Region verifies in the other, and both Regions answer the
/// same public key.
async fn assert_signatures_cross(a: &mut Client, b: &mut Client, id: &str) {
    let sign = |c: &mut Client| {
        let req = pb::SignRequest {
            key_id: id.into(),
            message: b"signed across".to_vec(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        };
        let mut c = c.clone();
        async move { metadata(c.sign(req).await, "sign").signature }
    };
    let verify = |c: &mut Client, signature: Vec<u8>| {
        let req = pb::VerifyRequest {
            key_id: id.into(),
            message: b"signed across".to_vec(),
            signature,
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        };
        let mut c = c.clone();
        async move { metadata(c.verify(req).await, "verify").signature_valid }
    };
    let from_a = sign(a).await;
    assert!(
        verify(b, from_a).await,
        "a signature of us-east-1 did not verify in eu-west-1"
    );
    let from_b = sign(b).await;
    assert!(
        verify(a, from_b).await,
        "a signature of eu-west-1 did not verify in us-east-1"
    );
    let public = |c: &mut Client| {
        let req = pb::GetPublicKeyRequest {
            key_id: id.into(),
            ..Default::default()
        };
        let mut c = c.clone();
        async move { metadata(c.get_public_key(req).await, "public key").public_key }
    };
    assert_eq!(public(a).await, public(b).await);
}

/// A MAC made in either Region verifies in the other.
async fn assert_macs_cross(a: &mut Client, b: &mut Client, id: &str) {
    for (here, there) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        let (mut here, mut there) = (here, there);
        let req = pb::GenerateMacRequest {
            key_id: id.into(),
            message: b"mac across".to_vec(),
            mac_algorithm: "HMAC_SHA_256".into(),
            ..Default::default()
        };
        let mac = metadata(here.generate_mac(req).await, "mac").mac;
        let req = pb::VerifyMacRequest {
            key_id: id.into(),
            message: b"mac across".to_vec(),
            mac,
            mac_algorithm: "HMAC_SHA_256".into(),
            ..Default::default()
        };
        assert!(metadata(there.verify_mac(req).await, "verify mac").mac_valid);
    }
}

/// `key_id` does not exist in the Region of `c`.
async fn assert_absent(c: &mut Client, key_id: &str) {
    let req = pb::DescribeKeyRequest {
        key_id: key_id.into(),
        ..Default::default()
    };
    assert_eq!(
        reason(c.describe_key(req).await),
        "NotFoundException",
        "{key_id}"
    );
}

/// In wrapped residency the replica's versions are blobs under the Region's master: no token
/// object of the key exists, and the engine holds a blob for `version`.
async fn assert_blob_only(server: &RunningServer, key_id: &str, version: u32) {
    let tokens: Vec<_> = key_objects(server, key_id)
        .await
        .into_iter()
        .filter(|(_, token)| *token)
        .collect();
    assert!(
        tokens.is_empty(),
        "token objects of a wrapped replica: {tokens:?}"
    );
    let stored = server.kms.store().get_key(key_id).await.unwrap().unwrap();
    let v = stored.versions.iter().find(|v| v.version == version);
    assert!(
        v.is_some_and(|v| v.wrapped.is_some()),
        "no blob for version {version}: {v:?}"
    );
}

/// A RegionService client of `addr` as the fixture certificate `cn`.
async fn region_client(
    addr: SocketAddr,
    cn: &str,
) -> RegionServiceClient<tonic::transport::Channel> {
    let pki = &env().pki;
    let channel = p11kms::client::ClientConfig {
        ca_cert: Some(pki.join("ca.pem")),
        client_cert: Some(pki.join(format!("{cn}.pem"))),
        client_key: Some(pki.join(format!("{cn}-key.pem"))),
        tls_domain: Some("localhost".into()),
        ..Default::default()
    }
    .channel_to(&format!("https://127.0.0.1:{}", addr.port()))
    .await
    .unwrap();
    RegionServiceClient::new(channel)
}

/// `tests/python/multi_region_checks.py` with the venv's boto3, both Regions' AWS doors in
/// its environment.
async fn boto3_checks(us: &RunningServer, eu: &RunningServer, scratch: &Path) {
    let venv = manifest_dir().join(".venv");
    assert!(
        venv.join("bin/python").is_file(),
        "the Python venv is missing: run scripts/python-venv.sh"
    );
    let door = |s: &RunningServer| format!("https://127.0.0.1:{}", s.aws_json_addr.unwrap().port());
    let mut c = aws_client_command(
        venv.join("bin/python"),
        scratch,
        "AKIAADMIN00000000001",
        &door(us),
    );
    c.arg(manifest_dir().join("tests/python/multi_region_checks.py"))
        .env("P11KMS_ENDPOINT_US_EAST_1", door(us))
        .env("P11KMS_ENDPOINT_EU_WEST_1", door(eu))
        .env(
            "P11KMS_FIXTURE_CREDENTIALS",
            fixtures_dir().join("credentials.json"),
        );
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_succeeded(&out, "multi_region_checks.py");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("multi-Region checks passed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_region_keys_replicate_rotate_and_change_primary() {
    let (us, eu) = (Region::new(US), Region::new(EU));
    us.write_config(&eu, "token");
    eu.write_config(&us, "wrapped");
    ceremony(&us, &eu);
    ceremony(&eu, &us);
    let master = p11kms_command()
        .args(["hsm", "trust-master", "--config"])
        .arg(&eu.config)
        .env("P11KMS_SO_PIN", SO_PIN)
        .output()
        .unwrap();
    assert_succeeded(&master, "hsm trust-master (eu-west-1)");
    let (us_clock, eu_clock) = (
        Arc::new(ManualClock::default()),
        Arc::new(ManualClock::default()),
    );
    let us_server = us.start(&us_clock).await;
    let eu_server = eu.start(&eu_clock).await;
    let mut a = admin(us_server.addr).await;
    let mut b = admin(eu_server.addr).await;

    // A primary: an mrk- id, its material extractable only under trusted keys.
    let key_id = create_multi_region(&mut a).await;
    assert!(key_id.starts_with("mrk-") && key_id.len() == 36, "{key_id}");
    assert_eq!(
        regions_of(&describe(&mut a, &key_id).await),
        ("PRIMARY".into(), US.into(), vec![])
    );
    assert_multi_region_custody(&us_server, &key_id, 1).await;
    // Ordinary keys stay single-Region and never extractable.
    let plain = create_key(&mut a).await;
    assert!(describe(&mut a, &plain)
        .await
        .multi_region_configuration
        .is_none());
    assert_refused(
        replicate(&mut a, &plain, EU).await,
        "a single-Region key",
        "UnsupportedOperationException",
        "not a multi-Region key",
    );

    // Replicate: same id, the replica's own ARN, the same configuration in both Regions.
    let before = encrypt(&mut a, &key_id, b"made before the replica").await;
    let answer = replicate(&mut a, &key_id, EU).await.expect("replicate");
    let replica = answer.replica_key_metadata.unwrap();
    assert_eq!(replica.key_id, key_id);
    assert_eq!(
        replica.arn,
        format!("arn:aws:kms:{EU}:{ACCOUNT}:key/{key_id}")
    );
    assert_eq!(replica.description, "replica");
    assert_eq!(
        regions_of(&describe(&mut a, &key_id).await),
        ("PRIMARY".into(), US.into(), vec![EU.into()])
    );
    assert_eq!(
        regions_of(&describe(&mut b, &key_id).await),
        ("REPLICA".into(), US.into(), vec![EU.into()])
    );
    assert_blob_only(&eu_server, &key_id, 1).await;
    assert_refused(
        replicate(&mut a, &key_id, EU).await,
        "a second replica",
        "AlreadyExistsException",
        EU,
    );
    assert_refused(
        replicate(&mut b, &key_id, US).await,
        "replicating a replica",
        "UnsupportedOperationException",
        "not a multi-Region primary",
    );
    assert_refused(
        replicate(&mut a, &key_id, "sa-east-1").await,
        "no such peer",
        "UnsupportedOperationException",
        "not a peer Region",
    );
    // Without the ceremony for a Region, the device refuses to wrap for it: nothing leaves.
    assert_refused(
        replicate(&mut a, &key_id, UNTRUSTED).await,
        "a peer the SO never trusted",
        "UnsupportedOperationException",
        "p11kms region trust --region ap-south-1",
    );

    // Ciphertexts open in the other Region, both ways.
    assert_eq!(
        decrypt(&mut b, &before).await.unwrap(),
        b"made before the replica"
    );
    let from_eu = encrypt(&mut b, &key_id, b"made in eu-west-1").await;
    assert_eq!(
        decrypt(&mut a, &from_eu).await.unwrap(),
        b"made in eu-west-1"
    );

    // Rotation of the primary reaches the replica before anything encrypts under it.
    let rotate = pb::RotateKeyOnDemandRequest {
        key_id: key_id.clone(),
    };
    metadata(a.rotate_key_on_demand(rotate.clone()).await, "rotate");
    assert_refused(
        b.rotate_key_on_demand(rotate).await,
        "rotating a replica",
        "UnsupportedOperationException",
        "managed by its primary",
    );
    let v2 = encrypt(&mut a, &key_id, b"version two").await;
    assert_eq!(decrypt(&mut b, &v2).await.unwrap(), b"version two");
    let v2_eu = encrypt(&mut b, &key_id, b"version two from eu").await;
    assert_eq!(
        v2_eu[17..21],
        2u32.to_be_bytes(),
        "the replica encrypts under the new version"
    );
    assert_eq!(
        decrypt(&mut a, &v2_eu).await.unwrap(),
        b"version two from eu"
    );
    assert_blob_only(&eu_server, &key_id, 2).await;

    // UpdatePrimaryRegion: eu-west-1 becomes the primary, us-east-1 a replica.
    let swap = pb::UpdatePrimaryRegionRequest {
        key_id: key_id.clone(),
        primary_region: EU.into(),
    };
    metadata(a.update_primary_region(swap).await, "update primary");
    assert_eq!(
        regions_of(&describe(&mut a, &key_id).await),
        ("REPLICA".into(), EU.into(), vec![US.into()])
    );
    assert_eq!(
        regions_of(&describe(&mut b, &key_id).await),
        ("PRIMARY".into(), EU.into(), vec![US.into()])
    );
    let rotate = pb::RotateKeyOnDemandRequest {
        key_id: key_id.clone(),
    };
    metadata(
        b.rotate_key_on_demand(rotate).await,
        "rotate at the new primary",
    );
    let v3 = encrypt(&mut b, &key_id, b"version three").await;
    assert_eq!(decrypt(&mut a, &v3).await.unwrap(), b"version three");
    // us-east-1 is now a replica in token residency: the version it received is a token
    // object with the multi-Region custody, read back from its token.
    assert_multi_region_custody(&us_server, &key_id, 3).await;
    assert_eq!(
        decrypt(&mut a, &before).await.unwrap(),
        b"made before the replica"
    );

    // Key pairs and HMAC keys: their private material moves too (a key pair's under the
    // carrier), into the wrapped Region's blobs; signatures and MACs verify across.
    for (spec, usage) in [
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
    ] {
        let req = pb::CreateKeyRequest {
            multi_region: true,
            key_spec: spec.into(),
            key_usage: usage.into(),
            ..Default::default()
        };
        let id = metadata(a.create_key(req).await, spec)
            .key_metadata
            .unwrap()
            .key_id;
        replicate(&mut a, &id, EU)
            .await
            .unwrap_or_else(|e| panic!("replicate {spec}: {e:?}"));
        assert_blob_only(&eu_server, &id, 1).await;
        if usage == "SIGN_VERIFY" {
            assert_signatures_cross(&mut a, &mut b, &id).await;
        } else {
            assert_macs_cross(&mut a, &mut b, &id).await;
        }
    }

    // The same through boto3, against both Regions' AWS doors.
    boto3_checks(&us_server, &eu_server, &us.dir).await;

    // The peer side refuses: a principal without p11kms:AcceptReplica, and material the
    // receiving HSM cannot unwrap (altered in transit), which leaves nothing behind.
    let fresh = create_multi_region(&mut a).await;
    let order = pb::AcceptReplicaRequest {
        source_region: US.into(),
        principal_arn: ADMIN.into(),
        key_id: fresh.clone(),
        account: ACCOUNT.into(),
        key_spec: "SYMMETRIC_DEFAULT".into(),
        key_usage: "ENCRYPT_DECRYPT".into(),
        current_version: 1,
        primary_region: US.into(),
        replica_regions: vec![EU.into()],
        versions: vec![pb::ReplicaVersion {
            version: 1,
            created_at: None,
            material: vec![0x5a; 384],
        }],
        ..Default::default()
    };
    let as_user1 = region_client(eu_server.addr, "user1")
        .await
        .accept_replica(order.clone())
        .await;
    assert_refused(
        as_user1,
        "a peer without p11kms:AcceptReplica",
        "AccessDeniedException",
        "p11kms:AcceptReplica",
    );
    let impostor = pb::AcceptReplicaRequest {
        source_region: UNTRUSTED.into(),
        primary_region: UNTRUSTED.into(),
        ..order.clone()
    };
    let as_other = region_client(eu_server.addr, "admin")
        .await
        .accept_replica(impostor)
        .await;
    assert_refused(
        as_other,
        "the admin speaking for another Region",
        "AccessDeniedException",
        "is not the daemon of ap-south-1",
    );
    let tampered = region_client(eu_server.addr, "admin")
        .await
        .accept_replica(order)
        .await;
    assert_refused(
        tampered,
        "altered key material",
        "KMSInternalException",
        "refused the key material",
    );
    assert_absent(&mut b, &fresh).await;
    assert!(
        key_objects(&eu_server, &fresh).await.is_empty(),
        "the refused replica left objects"
    );

    // A peer that is down: ReplicateKey fails cleanly and nothing is half-made.
    eu_server.shutdown().await.unwrap();
    assert_refused(
        replicate(&mut a, &fresh, EU).await,
        "the peer is down",
        "KeyUnavailableException",
        EU,
    );
    assert_eq!(
        regions_of(&describe(&mut a, &fresh).await).2,
        Vec::<String>::new()
    );
    let eu_server = eu.start(&eu_clock).await;
    let mut b = admin(eu_server.addr).await;
    assert_absent(&mut b, &fresh).await;
    // ... and once it is back, the same key replicates.
    replicate(&mut a, &fresh, EU)
        .await
        .expect("replicate after the peer is back");
    let blob = encrypt(&mut b, &fresh, b"back").await;
    assert_eq!(decrypt(&mut a, &blob).await.unwrap(), b"back");

    // A primary with replicas cannot be scheduled for deletion; once its replica is deleted
    // (the replica's Region tells the primary's), it can.
    let schedule = |key_id: &str| pb::ScheduleKeyDeletionRequest {
        key_id: key_id.into(),
        pending_window_in_days: Some(7),
    };
    assert_refused(
        a.schedule_key_deletion(schedule(&fresh)).await,
        "a primary with replicas",
        "UnsupportedOperationException",
        "Delete its replicas first",
    );
    metadata(
        b.schedule_key_deletion(schedule(&fresh)).await,
        "schedule the replica's deletion",
    );
    eu_clock.advance_days(8);
    let mut probe = a.clone();
    let dropped =
        wait_for(async || regions_of(&describe(&mut probe, &fresh).await).2.is_empty()).await;
    assert!(dropped, "the primary still lists the deleted replica");
    assert!(
        key_objects(&eu_server, &fresh).await.is_empty(),
        "the deleted replica left objects"
    );
    // ... and a Region whose replica was deleted can get one again.
    replicate(&mut a, &fresh, EU)
        .await
        .expect("replicate again after the replica's deletion");
    let blob = encrypt(&mut b, &fresh, b"again").await;
    assert_eq!(decrypt(&mut a, &blob).await.unwrap(), b"again");

    // Automatic rotation is shared: set on the primary, shown by the replica, refused there.
    let enable = pb::EnableKeyRotationRequest {
        key_id: fresh.clone(),
        rotation_period_in_days: Some(180),
    };
    metadata(
        a.enable_key_rotation(enable.clone()).await,
        "enable rotation",
    );
    let status = |c: &mut Client| {
        let req = pb::GetKeyRotationStatusRequest {
            key_id: fresh.clone(),
        };
        let mut c = c.clone();
        async move { metadata(c.get_key_rotation_status(req).await, "rotation status") }
    };
    let shown = status(&mut b).await;
    assert!(shown.key_rotation_enabled, "{shown:?}");
    assert_eq!(shown.rotation_period_in_days, Some(180));
    assert_refused(
        b.enable_key_rotation(enable).await,
        "rotation set on a replica",
        "UnsupportedOperationException",
        "managed by its primary",
    );

    // A deletion report the primary never got (it was down): the next ReplicateKey finds the
    // replica gone in its Region and makes it again instead of answering AlreadyExists.
    metadata(
        b.schedule_key_deletion(schedule(&fresh)).await,
        "schedule the replica's deletion",
    );
    us_server.shutdown().await.unwrap();
    eu_clock.advance_days(8);
    let mut probe = b.clone();
    let req = pb::DescribeKeyRequest {
        key_id: fresh.clone(),
        ..Default::default()
    };
    let gone = wait_for(async || {
        let answer = probe.describe_key(req.clone()).await;
        answer.is_err_and(|s| s.code() == tonic::Code::NotFound)
    })
    .await;
    assert!(gone, "the replica was not deleted");
    let us_server = us.start(&us_clock).await;
    let mut a = admin(us_server.addr).await;
    assert_eq!(
        regions_of(&describe(&mut a, &fresh).await).2,
        vec![EU.to_string()]
    );
    replicate(&mut a, &fresh, EU)
        .await
        .expect("replicate over a lost deletion report");
    let blob = encrypt(&mut a, &fresh, b"once more").await;
    assert_eq!(decrypt(&mut b, &blob).await.unwrap(), b"once more");

    // A change the replica missed (it was down) reaches it once it is back: the primary's
    // sweeps retry it.
    eu_server.shutdown().await.unwrap();
    let enable = pb::EnableKeyRotationRequest {
        key_id: fresh.clone(),
        rotation_period_in_days: Some(200),
    };
    metadata(
        a.enable_key_rotation(enable).await,
        "enable rotation with the replica down",
    );
    let eu_server = eu.start(&eu_clock).await;
    let b = admin(eu_server.addr).await;
    let mut probe = b.clone();
    let req = pb::GetKeyRotationStatusRequest {
        key_id: fresh.clone(),
    };
    let caught_up = wait_for(async || {
        let shown = probe.get_key_rotation_status(req.clone()).await;
        shown.is_ok_and(|r| r.into_inner().rotation_period_in_days == Some(200))
    })
    .await;
    assert!(caught_up, "the replica never took the schedule it missed");

    // An AcceptReplica cut off after the replica's row (its daemon stopped there): the row
    // stays in Creating, is never used, and reconciliation removes it once the grace has
    // passed; the primary never listed it.
    let cut = create_multi_region(&mut a).await;
    eu_server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::AfterMetadataRow);
    assert!(
        replicate(&mut a, &cut, EU).await.is_err(),
        "an interrupted replica answered"
    );
    eu_server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::Never);
    assert!(creating_ids(&eu_server).await.contains(&cut));
    assert_eq!(
        regions_of(&describe(&mut a, &cut).await).2,
        Vec::<String>::new()
    );
    eu_clock.advance_days(1);
    let removed = wait_for(async || !creating_ids(&eu_server).await.contains(&cut)).await;
    assert!(removed, "the interrupted replica's row was not reconciled");
    assert!(key_objects(&eu_server, &cut).await.is_empty());
    replicate(&mut a, &cut, EU)
        .await
        .expect("replicate after the interrupted attempt was reconciled");

    // Every replication step is in both Regions' trails.
    for (dir, name) in [
        (&us.dir, "ReplicateKey"),
        (&eu.dir, "AcceptReplica"),
        (&eu.dir, "UpdateMultiRegionKey"),
    ] {
        let found = events(dir).iter().any(|e| e["eventName"] == name);
        assert!(found, "no {name} event in {}", dir.display());
    }
    us_server.shutdown().await.unwrap();
    eu_server.shutdown().await.unwrap();

    // After every refusal, failure, withdrawal and reconciliation above, `p11kms check` finds
    // nothing half-made in either Region: no orphan object, no row without its material.
    for region in [&us, &eu] {
        let (code, text) = run_check(&region.config).await;
        assert!(!text.contains("DRIFT"), "{}: {text}", region.name);
        assert_eq!(code, 0, "{}: {text}", region.name);
    }
}
