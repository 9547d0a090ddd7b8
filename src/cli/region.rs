//! `p11kms region`: the two halves of the trust ceremony between regions (multi-Region keys,
//! issue 20). Each region's token has a transport key pair whose private half never leaves
//! it; a peer's security officer imports its public half as a trusted object, without which
//! that peer's device wraps no key material for this region.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use p11kms::hsm::region::{trust_peer, PeerTrust, RegionName};

/// `p11kms region ...`
#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// Print this token's region transport public key (PEM SubjectPublicKeyInfo), making the
    /// key pair on the first call (RSA-3072, `p11kms/region-transport/v1`; the private half is
    /// sensitive, never extractable, unwrap only). Give it to each peer region's security
    /// officer for `p11kms region trust`.
    TransportKey {
        /// The daemon's TOML config file (its `[hsm]` names the module, token and user PIN).
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
    },
    /// The security officer's ceremony: import peer region `--region`'s transport public key
    /// into this token as a trusted, wrap-only object (`p11kms/region-peer/<region>`,
    /// `CKA_TRUSTED`, which only the SO can set). Running it again with the same key changes
    /// nothing; another key for a region already trusted is refused. The SO PIN comes from
    /// --so-pin-file or P11KMS_SO_PIN, never the command line, and is not kept.
    Trust {
        /// The daemon's TOML config file.
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
        /// The peer region's name (`eu-west-1`: lowercase letters, digits and `-`).
        #[arg(long)]
        region: String,
        /// The peer's transport public key as `p11kms region transport-key` printed it (PEM),
        /// or DER.
        #[arg(long)]
        public_key: PathBuf,
        /// File holding the security officer's PIN (a trailing newline is ignored).
        #[arg(long)]
        so_pin_file: Option<PathBuf>,
    },
}

/// Runs a `region` command.
pub fn run(command: RegionCommand) -> Result<ExitCode, String> {
    match command {
        RegionCommand::TransportKey { config } => transport_key(&config),
        RegionCommand::Trust {
            config,
            region,
            public_key,
            so_pin_file,
        } => trust(&config, &region, &public_key, so_pin_file.as_deref()),
    }
}

fn transport_key(config: &Path) -> Result<ExitCode, String> {
    let config = super::daemon::load_config(config)?;
    let spki = super::runtime()?.block_on(async {
        let hsm = p11kms::server::open_hsm(&config)
            .await
            .map_err(|e| e.to_string())?;
        let spki = hsm.region_transport_key().await;
        p11kms::server::close_hsm(&hsm).await;
        spki.map_err(|e| e.to_string())
    })?;
    print!("{}", p11kms::encoding::public_key_pem(&spki));
    Ok(ExitCode::SUCCESS)
}

fn trust(
    config: &Path,
    region: &str,
    public_key: &Path,
    so_pin_file: Option<&Path>,
) -> Result<ExitCode, String> {
    let peer = RegionName::parse(region).ok_or_else(|| {
        format!("--region {region}: not a region name (1-32 lowercase letters, digits, '-')")
    })?;
    let spki = read_spki(public_key)?;
    let config = super::daemon::load_config(config)?;
    let hsm = config.hsm_config().map_err(|e| e.to_string())?;
    let so_pin = super::hsm::read_so_pin(so_pin_file)?;
    // The ceremony creates a token object: on a SoftHSM2 token directory daemons share, under
    // their lock file, as `hsm trust-master`.
    let _shared = match &hsm.shared_token_lock {
        Some(path) => Some(super::hsm::lock_file(path)?),
        None => None,
    };
    let outcome = trust_peer(&hsm.module, &hsm.token_label, &so_pin, &peer, &spki)
        .map_err(|e| e.to_string())?;
    let what = match outcome {
        PeerTrust::Created => "imported, trusted",
        PeerTrust::AlreadyTrusted => "already trusted; nothing changed",
    };
    println!("{}: {what}", peer.peer_label());
    Ok(ExitCode::SUCCESS)
}

/// The DER SubjectPublicKeyInfo in `path`: PEM (`PUBLIC KEY`) or DER as is.
fn read_spki(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--public-key {}: {e}", path.display()))?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(bytes);
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| format!("--public-key {}: not PEM: {e}", path.display()))?;
    if pem.label != "PUBLIC KEY" {
        return Err(format!(
            "--public-key {}: a PEM '{}', not a 'PUBLIC KEY'",
            path.display(),
            pem.label
        ));
    }
    Ok(pem.contents)
}
