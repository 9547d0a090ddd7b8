//! The `p11kms` command line: the top-level clap definitions and the dispatch to one module
//! per command family. Argument handling and printing only: the work is in the library
//! (the daemon, `check`, the dev set-up, the offline verifiers) or in the daemon, reached
//! through the gRPC client ([`p11kms::client`]).
//!
//! | module | commands |
//! |---|---|
//! | [`daemon`] | `serve`, `check`, `dev-setup` |
//! | [`keys`] | `key ...` (lifecycle, deletion, rotation, key policy), `get-key-last-usage` |
//! | [`aliases`] | `alias ...` |
//! | [`grants`] | `grant ...` |
//! | [`keystores`] | `key-store ...` (custom key stores) |
//! | [`hsm`] | `hsm trust-master` (the security officer's ceremony of wrapped residency) |
//! | [`crypto`] | `encrypt`, `decrypt`, `generate-data-key` |
//! | [`signing`] | `sign`, `verify`, `generate-mac` |
//! | [`public_keys`] | `get-public-key`, `derive-shared-secret` |
//! | [`policy`] | `policy eval` (offline), `policy explain` |
//! | [`audit`] | `audit verify` (offline) |
//! | [`sts`] | `sts assume-role`, `sts get-caller-identity` |
//! | [`session`] | connection options, the client config, the (signed) gRPC session, gRPC errors as printed |
//! | [`io`] | input bytes, output files, JSON printed as the AWS door renders it |

mod aliases;
mod audit;
mod crypto;
mod daemon;
mod grants;
mod hsm;
mod io;
mod keys;
mod keystores;
mod policy;
mod public_keys;
mod region;
mod session;
mod signing;
mod sts;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use session::Conn;

/// p11kms: an on-premises key management daemon with keys held in a PKCS#11 HSM.
#[derive(Parser, Debug)]
#[command(name = "p11kms", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands, in the order `--help` lists them.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// The daemon's TOML config file.
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config, open the token, check mechanisms, reconcile store and token,
    /// verify wrapped blobs on the device. Exits non-zero on any problem; never changes
    /// anything.
    Check {
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
        /// Wrapped residency: verify every blob on the device, not a random sample of 100.
        #[arg(long)]
        all_blobs: bool,
    },
    /// Create the dev CA, server and admin certificates, PIN files, configs and the SoftHSM2
    /// token (idempotent). A second instance needs its own data directory and addresses.
    DevSetup(daemon::DevSetupArgs),
    /// The security officer's ceremonies on the daemon's token (wrapped residency's master
    /// key).
    Hsm {
        #[command(subcommand)]
        command: hsm::HsmCommand,
    },
    /// Trust between regions (multi-Region keys): this token's transport public key, and the
    /// security officer's import of a peer region's.
    Region {
        #[command(subcommand)]
        command: region::RegionCommand,
    },
    /// Manage keys.
    Key {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: keys::KeyCommand,
    },
    /// Manage aliases.
    Alias {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: aliases::AliasCommand,
    },
    /// Manage custom key stores (keys on the operator's other HSMs, `[[hsm.cluster]]`).
    KeyStore {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: keystores::KeyStoreCommand,
    },
    /// Encrypt up to 4096 bytes under a key.
    Encrypt(crypto::EncryptArgs),
    /// Decrypt a ciphertext blob.
    Decrypt(crypto::DecryptArgs),
    /// Sign a message (or, with --message-type DIGEST, its digest) with a SIGN_VERIFY key.
    Sign(signing::SignArgs),
    /// Verify a signature on the device; exits non-zero with KMSInvalidSignatureException when
    /// it does not match.
    Verify(signing::VerifyArgs),
    /// An asymmetric key's public key: PEM on standard output, or DER SubjectPublicKeyInfo
    /// into --out.
    GetPublicKey(public_keys::GetPublicKeyArgs),
    /// The last successful cryptographic operation on a key (key id or key ARN), printed as
    /// the AWS door answers GetKeyLastUsage.
    GetKeyLastUsage(keys::GetKeyLastUsageArgs),
    /// ECDH on the device with a KEY_AGREEMENT key and a peer's public key (DER or PEM
    /// SubjectPublicKeyInfo file); the raw shared secret goes to --out (mode 0600) or, as
    /// base64, to standard output.
    DeriveSharedSecret(public_keys::DeriveSharedSecretArgs),
    /// Compute an HMAC on the device with a GENERATE_VERIFY_MAC key.
    GenerateMac(signing::GenerateMacArgs),
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Policy tools: offline evaluation of test vectors, and explaining a live decision.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Temporary credentials (AssumeRole) and identity.
    Sts {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: sts::StsCommand,
    },
    /// Manage grants.
    Grant {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: grants::GrantCommand,
    },
    /// Generate a data key: plaintext and ciphertext.
    GenerateDataKey(crypto::GenerateDataKeyArgs),
}

/// Runs one command to its exit code. The daemon-side and offline commands run directly;
/// the client commands run on an async runtime and exit 0 when they succeed. An error is
/// printed by `main` as `error: <message>` (exit code 1).
pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Serve { config } => daemon::serve(&config),
        Command::Check { config, all_blobs } => daemon::check(&config, all_blobs),
        Command::DevSetup(args) => daemon::dev_setup(args),
        Command::Audit { command } => Ok(audit::run(command)),
        Command::Hsm { command } => hsm::run(command),
        Command::Region { command } => region::run(command),
        Command::Policy { command } => policy::run(command),
        Command::Key { conn, command } => online(keys::run(conn, command)),
        Command::Alias { conn, command } => online(aliases::run(conn, command)),
        Command::Grant { conn, command } => online(grants::run(conn, command)),
        Command::KeyStore { conn, command } => online(keystores::run(conn, command)),
        Command::Sts { conn, command } => online(sts::run(conn, command)),
        Command::Encrypt(args) => online(crypto::encrypt(args)),
        Command::Decrypt(args) => online(crypto::decrypt(args)),
        Command::GenerateDataKey(args) => online(crypto::generate_data_key(args)),
        Command::Sign(args) => online(signing::sign(args)),
        Command::Verify(args) => online(signing::verify(args)),
        Command::GenerateMac(args) => online(signing::generate_mac(args)),
        Command::GetPublicKey(args) => online(public_keys::get_public_key(args)),
        Command::DeriveSharedSecret(args) => online(public_keys::derive_shared_secret(args)),
        Command::GetKeyLastUsage(args) => online(keys::get_key_last_usage(args)),
    }
}

/// Runs a client command on a new runtime; it exits 0 when it succeeds.
fn online(command: impl Future<Output = Result<(), String>>) -> Result<ExitCode, String> {
    runtime()?.block_on(command)?;
    Ok(ExitCode::SUCCESS)
}

/// The multi-threaded async runtime the daemon and the client commands run on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
