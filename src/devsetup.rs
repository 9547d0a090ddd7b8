//! The dev set-up: a dev CA, a server certificate, an admin client certificate for the dev
//! account, random PINs, a daemon config and a client config, all under one data directory.
//! Idempotent: what exists is kept. [`init_dev_token`] then initialises the SoftHSM2 token in
//! the data directory's own token directory (`p11kms dev-setup` does both).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The dev account.
pub const DEV_ACCOUNT: &str = "111122223333";
/// The dev token's label.
pub const DEV_TOKEN_LABEL: &str = "p11kms-dev";
/// The principal the dev admin certificate authenticates as.
pub const DEV_ADMIN_PRINCIPAL: &str = "arn:aws:iam::111122223333:user/admin";
/// The dev admin's access key id (its secret is generated per data directory).
pub const DEV_ADMIN_ACCESS_KEY_ID: &str = "AKIAP11KMSDEVADMIN01";
const CA_NAME: &str = "p11kms dev CA";

/// Why the dev set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum DevSetupError {
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error(
        "initialising the SoftHSM2 token: {0} (is SoftHSM2 installed? `apt-get install softhsm2`)"
    )]
    Token(#[from] crate::hsm::HsmError),
    #[error("reading the PIN file {0}: it is empty")]
    EmptyPin(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevSetupError + '_ {
    move |source| DevSetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable only by its owner (private keys, PINs).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevSetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), DevSetupError> {
    fs::write(path, contents).map_err(io(path))
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn load_issuer(pki: &Path) -> Result<Issuer<'static, KeyPair>, DevSetupError> {
    let key_path = pki.join("ca-key.pem");
    let pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
    Ok(Issuer::new(ca_params()?, KeyPair::from_pem(&pem)?))
}

/// Creates `ca.pem`/`ca-key.pem` and `server.pem`/`server-key.pem` (SANs localhost,
/// 127.0.0.1, ::1) in `pki`, unless `ca.pem` already exists.
pub fn ensure_ca_and_server(pki: &Path) -> Result<(), DevSetupError> {
    fs::create_dir_all(pki).map_err(io(pki))?;
    if pki.join("ca.pem").exists() {
        return Ok(());
    }
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    write_private(&pki.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())?;
    write_public(&pki.join("ca.pem"), ca_cert.pem().as_bytes())?;

    let issuer = load_issuer(pki)?;
    let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
    p.subject_alt_names.push(SanType::IpAddress(
        "127.0.0.1"
            .parse()
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?,
    ));
    p.subject_alt_names.push(SanType::IpAddress(
        "::1"
            .parse()
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?,
    ));
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write_private(&pki.join("server-key.pem"), key.serialize_pem().as_bytes())?;
    write_public(&pki.join("server.pem"), cert.pem().as_bytes())?;
    Ok(())
}

/// Issues a client certificate with subject CN `name` (and an optional URI SAN) signed by the
/// dev CA in `pki`: `<name>.pem` and `<name>-key.pem`. Overwrites existing files.
pub fn issue_client_cert(
    pki: &Path,
    name: &str,
    san_uri: Option<&str>,
) -> Result<(), DevSetupError> {
    let issuer = load_issuer(pki)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    if let Some(uri) = san_uri {
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write_private(
        &pki.join(format!("{name}-key.pem")),
        key.serialize_pem().as_bytes(),
    )?;
    write_public(&pki.join(format!("{name}.pem")), cert.pem().as_bytes())?;
    Ok(())
}

/// The first SoftHSM2 module found in the usual Debian/Ubuntu places.
pub fn find_softhsm_module() -> Option<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn random_pin() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A 40-character secret access key from the OS RNG (via UUID v4).
fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut s = base64::engine::general_purpose::STANDARD.encode(&bytes);
    s.truncate(40);
    s
}

/// The dev account's IAM configuration, in `aws iam get-account-authorization-details`
/// format: user `admin` with the managed policy `KmsAdmin` (kms:*, p11kms:*, sts:*).
fn dev_authorization_details() -> String {
    let acct = DEV_ACCOUNT;
    serde_json::to_string_pretty(&serde_json::json!({
        "UserDetailList": [{
            "Path": "/",
            "UserName": "admin",
            "UserId": "AIDADEVADMIN00000001",
            "Arn": format!("arn:aws:iam::{acct}:user/admin"),
            "CreateDate": "2026-01-01T00:00:00Z",
            "GroupList": [],
            "AttachedManagedPolicies": [{
                "PolicyName": "KmsAdmin",
                "PolicyArn": format!("arn:aws:iam::{acct}:policy/KmsAdmin")
            }],
            "UserPolicyList": [],
            "Tags": []
        }],
        "GroupDetailList": [],
        "RoleDetailList": [],
        "Policies": [{
            "PolicyName": "KmsAdmin",
            "PolicyId": "ANPADEVKMSADMIN00001",
            "Arn": format!("arn:aws:iam::{acct}:policy/KmsAdmin"),
            "Path": "/",
            "DefaultVersionId": "v1",
            "PolicyVersionList": [{
                "VersionId": "v1",
                "IsDefaultVersion": true,
                "Document": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Sid": "DevAdministrator",
                        "Effect": "Allow",
                        "Action": ["kms:*", "p11kms:*", "sts:*"],
                        "Resource": "*"
                    }]
                }
            }]
        }]
    }))
    .unwrap_or_default()
}

/// The addresses a dev daemon listens on, and what it serves there. A second dev instance on
/// one machine needs three addresses of its own (and a data directory of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevListen {
    /// The gRPC door (`[server] listen`).
    pub grpc: String,
    /// The AWS door (`[aws_json] listen`).
    pub aws: String,
    /// The Prometheus endpoint (`[metrics] listen`).
    pub metrics: String,
    /// The built operator console to serve on the AWS door (`[console] assets`), if any.
    pub console: Option<PathBuf>,
}

impl Default for DevListen {
    fn default() -> Self {
        DevListen {
            grpc: "127.0.0.1:8443".into(),
            aws: "127.0.0.1:4443".into(),
            metrics: "127.0.0.1:9464".into(),
            console: None,
        }
    }
}

/// What the dev set-up produced.
#[derive(Debug, Clone)]
pub struct DevSetup {
    /// The daemon config.
    pub config: PathBuf,
    /// False when an existing daemon config was kept (its addresses win over the options).
    pub config_written: bool,
    /// The client config the CLI picks up by default.
    pub client_config: PathBuf,
    /// The SoftHSM2 config of the dev token (its token directory is next to it).
    pub softhsm2_conf: PathBuf,
    /// The PKCS#11 module the daemon config names.
    pub module: PathBuf,
    data_dir: PathBuf,
}

/// The SoftHSM2 config template (`softhsm-config/softhsm2.conf.template`).
const SOFTHSM2_CONF_TEMPLATE: &str = include_str!("../softhsm-config/softhsm2.conf.template");

/// Writes `<data_dir>/softhsm/softhsm2.conf` with its own token directory, unless it exists.
fn ensure_softhsm_conf(data_dir: &Path) -> Result<PathBuf, DevSetupError> {
    let dir = data_dir.join("softhsm");
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens).map_err(io(&tokens))?;
    let conf = dir.join("softhsm2.conf");
    if !conf.exists() {
        let tokens = fs::canonicalize(&tokens).map_err(io(&tokens))?;
        let text = SOFTHSM2_CONF_TEMPLATE.replace("@TOKENDIR@", &tokens.display().to_string());
        write_public(&conf, text.as_bytes())?;
    }
    Ok(conf)
}

fn read_pin(path: &Path) -> Result<crate::hsm::Pin, DevSetupError> {
    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io(path))?);
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(DevSetupError::EmptyPin(path.to_path_buf()));
    }
    Ok(crate::hsm::Pin::new(pin))
}

/// Initialises the dev token (label [`DEV_TOKEN_LABEL`], the data directory's SO and user
/// PINs) in the set-up's SoftHSM2 token directory, unless it exists. Returns whether it
/// created it. Blocking. The caller must have exported `SOFTHSM2_CONF` as
/// [`DevSetup::softhsm2_conf`] before any PKCS#11 module was loaded in this process.
pub fn init_dev_token(setup: &DevSetup) -> Result<bool, DevSetupError> {
    let so = read_pin(&setup.data_dir.join("so-pin"))?;
    let user = read_pin(&setup.data_dir.join("user-pin"))?;
    Ok(crate::hsm::init_token(
        &setup.module,
        DEV_TOKEN_LABEL,
        &so,
        &user,
    )?)
}

/// Creates (or keeps) everything the dev daemon needs under `data_dir`, except the token
/// itself (see [`init_dev_token`]).
pub fn dev_setup(data_dir: &Path, listen: &DevListen) -> Result<DevSetup, DevSetupError> {
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let pki = data_dir.join("pki");
    ensure_ca_and_server(&pki)?;
    if !pki.join("admin.pem").exists() {
        issue_client_cert(&pki, "admin", None)?;
    }
    ensure_pins_and_identity(data_dir)?;
    let module =
        find_softhsm_module().unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    let softhsm2_conf = ensure_softhsm_conf(data_dir)?;
    let config = data_dir.join("p11kms.toml");
    let config_written = !config.exists();
    if config_written {
        write_public(&config, dev_config_text(&module, listen).as_bytes())?;
    }
    let client_config = ensure_client_config(data_dir, listen)?;
    Ok(DevSetup {
        config,
        config_written,
        client_config,
        softhsm2_conf,
        module,
        data_dir: data_dir.to_path_buf(),
    })
}

/// The dev PINs (random, user and SO), the dev account's IAM details, the admin's secret
/// access key (random) and the credentials file naming it, each written once.
fn ensure_pins_and_identity(data_dir: &Path) -> Result<(), DevSetupError> {
    for pin in ["user-pin", "so-pin"] {
        let p = data_dir.join(pin);
        if !p.exists() {
            write_private(&p, random_pin().as_bytes())?;
        }
    }
    let identity = data_dir.join("identity");
    fs::create_dir_all(&identity).map_err(io(&identity))?;
    let details = identity.join(format!("{DEV_ACCOUNT}.json"));
    if !details.exists() {
        write_public(&details, dev_authorization_details().as_bytes())?;
    }
    let secret_file = data_dir.join("admin-secret-access-key");
    if !secret_file.exists() {
        write_private(&secret_file, random_secret().as_bytes())?;
    }
    let credentials = identity.join("credentials.json");
    if !credentials.exists() {
        let secret = fs::read_to_string(&secret_file).map_err(io(&secret_file))?;
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "AccessKeys": [{
                "AccessKeyId": DEV_ADMIN_ACCESS_KEY_ID,
                "SecretAccessKey": secret.trim(),
                "UserArn": DEV_ADMIN_PRINCIPAL,
                "Status": "Active"
            }],
            "CertificateBindings": [{"SubjectCN": "admin", "Principal": DEV_ADMIN_PRINCIPAL}]
        }))
        .unwrap_or_default();
        write_private(&credentials, text.as_bytes())?;
    }
    Ok(())
}

/// The dev daemon's config file text.
fn dev_config_text(module: &Path, listen: &DevListen) -> String {
    format!(
        r#"# p11kms dev configuration, written by `p11kms dev-setup`. See p11kms.example.toml
# in the source tree for every option with its meaning.

[server]
listen = "{grpc}"
tls_cert = "pki/server.pem"
tls_key = "pki/server-key.pem"
client_ca = "pki/ca.pem"

[kms]
partition = "aws"
region = "us-east-1"

[hsm]
module = "{module}"
token_label = "{DEV_TOKEN_LABEL}"
pin_file = "user-pin"
softhsm2_conf = "softhsm/softhsm2.conf"

[store]
data_dir = "db"

# The AWS door: the AWS CLI, boto3 and the AWS SDKs (AWS_ENDPOINT_URL_KMS=https://localhost:{aws_port},
# AWS_CA_BUNDLE=pki/ca.pem). HTTPS with the [server] certificate.
[aws_json]
enabled = true
listen = "{aws}"
tls = true

# Prometheus metrics at http://{metrics}/metrics.
[metrics]
listen = "{metrics}"
{console}
# Who is who: the dev account's users and policies (aws iam get-account-authorization-details
# format), and credentials (access keys, certificate bindings). Reloaded on SIGHUP.
[identity]
credentials = "identity/credentials.json"

[[identity.account]]
account_id = "{DEV_ACCOUNT}"
authorization_details = "identity/{DEV_ACCOUNT}.json"
"#,
        module = module.display(),
        grpc = listen.grpc,
        aws = listen.aws,
        metrics = listen.metrics,
        aws_port = listen.aws.rsplit(':').next().unwrap_or("4443"),
        console = console_section(listen),
    )
}

/// The `[console]` section: the operator console at `https://localhost:<aws port>/console/`
/// when a built console was named, else a comment saying how to get one.
fn console_section(listen: &DevListen) -> String {
    let port = listen.aws.rsplit(':').next().unwrap_or("4443");
    match &listen.console {
        Some(dir) => format!(
            "\n# The operator console: https://localhost:{port}/console/ (docs/console.md).\n[console]\nenabled = true\nassets = \"{}\"\n",
            dir.display()
        ),
        None => "\n# The operator console (docs/console.md): build it with scripts/console.sh, then\n# [console] enabled = true, assets = \"<source tree>/console/dist\".\n".into(),
    }
}

/// The CLI's config for the dev daemon (`client.toml`), written once.
fn ensure_client_config(data_dir: &Path, listen: &DevListen) -> Result<PathBuf, DevSetupError> {
    let client_config = data_dir.join("client.toml");
    if !client_config.exists() {
        let text = format!(
            "# Written by `p11kms dev-setup`: how the CLI reaches the dev daemon.\n# Default: the admin client certificate. `--profile admin-sigv4` signs with the admin\n# access key instead.\nendpoint = \"https://{}\"\nca_cert = \"pki/ca.pem\"\nclient_cert = \"pki/admin.pem\"\nclient_key = \"pki/admin-key.pem\"\ntls_domain = \"localhost\"\n\n[profiles.admin-sigv4]\naccess_key_id = \"{DEV_ADMIN_ACCESS_KEY_ID}\"\nsecret_access_key_file = \"admin-secret-access-key\"\nregion = \"us-east-1\"\n",
            listen.grpc.replace("0.0.0.0", "127.0.0.1")
        );
        write_public(&client_config, text.as_bytes())?;
    }
    Ok(client_config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn der_of(path: &Path) -> Vec<u8> {
        let pem = fs::read_to_string(path).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn leaves_are_not_cas_and_server_has_sans() {
        let d = tempfile::tempdir().unwrap();
        let out = dev_setup(d.path(), &DevListen::default()).unwrap();
        assert!(out.config.exists() && out.client_config.exists());
        let pki = d.path().join("pki");
        let ca_der = der_of(&pki.join("ca.pem"));
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        for leaf in ["server.pem", "admin.pem"] {
            let der = der_of(&pki.join(leaf));
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            assert!(!c.is_ca(), "{leaf} must not be a CA");
            assert_eq!(c.issuer(), ca.subject());
        }
        let der = der_of(&pki.join("server.pem"));
        let (_, server) = X509Certificate::from_der(&der).unwrap();
        let san = server.subject_alternative_name().unwrap().unwrap();
        let names = format!("{:?}", san.value.general_names);
        assert!(
            names.contains("localhost") && names.contains("[127, 0, 0, 1]"),
            "{names}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(pki.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        // Idempotent: a second run keeps the CA.
        let before = fs::read(pki.join("ca.pem")).unwrap();
        dev_setup(d.path(), &DevListen::default()).unwrap();
        assert_eq!(before, fs::read(pki.join("ca.pem")).unwrap());
    }

    #[test]
    fn a_named_console_is_served_by_the_dev_config() {
        let d = tempfile::tempdir().unwrap();
        let ui = d.path().join("ui");
        fs::create_dir(&ui).unwrap();
        fs::write(ui.join("index.html"), "<!doctype html>").unwrap();
        let listen = DevListen {
            console: Some(ui.clone()),
            ..DevListen::default()
        };
        let data = d.path().join("data");
        let out = dev_setup(&data, &listen).unwrap();
        let config = crate::config::Config::load(&out.config).unwrap();
        assert!(config.console.enabled);
        assert_eq!(config.console.assets, ui);
        let plain = dev_setup(&d.path().join("other"), &DevListen::default()).unwrap();
        let config = crate::config::Config::load(&plain.config).unwrap();
        assert!(!config.console.enabled);
    }
}
