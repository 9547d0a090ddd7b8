//! `p11kms hsm`: the security officer's ceremonies on the daemon's token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use p11kms::hsm::{MasterVersion, Pin, TrustOutcome};

/// The environment variable the SO PIN is read from when no file is named.
const SO_PIN_ENV: &str = "P11KMS_SO_PIN";

/// `p11kms hsm ...`
#[derive(Subcommand, Debug)]
pub enum HsmCommand {
    /// Make the token's master key of wrapped residency trusted (`CKA_TRUSTED`, which only
    /// the security officer can set), so that key material is wrapped by it and by nothing
    /// else. Run once per master version, on one machine, before keys are created with
    /// `[hsm] residency = "wrapped"`; running it again changes nothing. The SO PIN comes from
    /// --so-pin-file or P11KMS_SO_PIN, never the command line, and is not kept.
    ///
    /// With --cluster, the ceremony runs on that `[[hsm.cluster]]`'s token instead (a
    /// cluster with `residency = "wrapped"` has masters of its own): the user PIN is then the
    /// key store password, from --password-file or --password-env.
    TrustMaster {
        /// The daemon's TOML config file (its `[hsm]` names the module, token and user PIN).
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
        /// File holding the security officer's PIN (a trailing newline is ignored).
        #[arg(long)]
        so_pin_file: Option<PathBuf>,
        /// The master key version to trust (`p11kms/master/v<N>`).
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// Run the ceremony on this `[[hsm.cluster]]`'s token (its id) instead of `[hsm]`'s.
        #[arg(long)]
        cluster: Option<String>,
        /// With --cluster: the key store password (the cluster token's user PIN).
        #[command(flatten)]
        password: super::keystores::PasswordSource,
    },
    /// Destroy a retired master key of wrapped residency (and its bind key): one older than
    /// the newest trusted master under which no stored blob is wrapped any more, as
    /// `p11kms check` reports it. Refused otherwise; nothing is destroyed then. Run it with
    /// the daemon's config (its user PIN), after every node has finished the rewrap duty.
    ///
    /// With --cluster, the master of that `[[hsm.cluster]]`'s token, counting only the blobs
    /// of the key store made on it; the user PIN is then the key store password.
    DestroyMaster {
        /// The daemon's TOML config file.
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
        /// The retired master key version (`p11kms/master/v<N>`).
        #[arg(long)]
        version: u32,
        /// Destroy it on this `[[hsm.cluster]]`'s token (its id) instead of `[hsm]`'s.
        #[arg(long)]
        cluster: Option<String>,
        /// With --cluster: the key store password (the cluster token's user PIN).
        #[command(flatten)]
        password: super::keystores::PasswordSource,
    },
}

/// Runs an `hsm` command.
pub fn run(command: HsmCommand) -> Result<ExitCode, String> {
    match command {
        HsmCommand::TrustMaster {
            config,
            so_pin_file,
            version,
            cluster,
            password,
        } => {
            let device = Ceremony {
                cluster: cluster.as_deref(),
                password: &password,
            };
            trust_master(
                &config,
                so_pin_file.as_deref(),
                device,
                MasterVersion(version),
            )
        }
        HsmCommand::DestroyMaster {
            config,
            version,
            cluster,
            password,
        } => {
            let device = Ceremony {
                cluster: cluster.as_deref(),
                password: &password,
            };
            destroy_master(&config, device, MasterVersion(version))
        }
    }
}

fn destroy_master(
    config: &Path,
    device: Ceremony<'_>,
    version: MasterVersion,
) -> Result<ExitCode, String> {
    let config = super::daemon::load_config(config)?;
    let hsm = config.hsm_config().map_err(|e| e.to_string())?;
    let token = device.token(&config, &hsm)?;
    super::runtime()?.block_on(async {
        let clock = std::sync::Arc::new(p11kms::core::SystemClock);
        let kms = p11kms::server::open_engine(&config, clock)
            .await
            .map_err(|e| e.to_string())?;
        let done = match device.cluster {
            None => kms.destroy_retired_master(version).await,
            Some(id) => destroy_cluster_master(&kms, id, token.device_config(), version).await,
        };
        p11kms::server::close_hsm(kms.hsm()).await;
        done.map_err(|e| e.to_string())
    })?;
    println!("master key {}{}: destroyed", version.label(), token.named);
    Ok(ExitCode::SUCCESS)
}

/// A retired master of cluster `id`'s token: the key store made on the cluster names whose
/// blobs count; its device is opened with the store password for this one job.
async fn destroy_cluster_master(
    kms: &p11kms::core::Kms,
    id: &str,
    cfg: p11kms::hsm::HsmConfig,
    version: MasterVersion,
) -> Result<(), p11kms::core::KmsError> {
    let store = kms
        .key_stores()
        .all()
        .into_iter()
        .map(|s| s.record())
        .find(|r| r.cluster_id == id && r.xks.is_none())
        .ok_or_else(|| {
            p11kms::core::KmsError::NotFound(format!("no custom key store is made on {id}"))
        })?;
    let opened = tokio::task::spawn_blocking(move || p11kms::hsm::Hsm::open(&cfg))
        .await
        .map_err(|e| p11kms::core::KmsError::Internal(e.to_string()))?;
    let device = opened?;
    let done = kms
        .destroy_retired_master_on(Some(&store.store_id), &device, version)
        .await;
    p11kms::server::close_hsm(&device).await;
    done
}

/// Which token `trust-master` runs on: `[hsm]`'s, or a cluster's with its store password.
struct Ceremony<'a> {
    cluster: Option<&'a str>,
    password: &'a super::keystores::PasswordSource,
}

/// The token of a ceremony: module, label, user PIN, and how its outcome is named.
struct CeremonyToken {
    module: PathBuf,
    token_label: String,
    user_pin: Pin,
    named: String,
}

impl CeremonyToken {
    /// A one-job device config for this token (one worker).
    fn device_config(&self) -> p11kms::hsm::HsmConfig {
        let mut cfg =
            p11kms::hsm::HsmConfig::new(&self.module, &self.token_label, self.user_pin.clone());
        cfg.workers = 1;
        cfg
    }
}

impl Ceremony<'_> {
    /// The token the ceremony runs on: `[hsm]`'s with its PIN, or cluster `id`'s with the
    /// key store password (required then, refused otherwise: it would not be used).
    fn token(
        &self,
        config: &p11kms::config::Config,
        hsm: &p11kms::hsm::HsmConfig,
    ) -> Result<CeremonyToken, String> {
        let password = super::keystores::read_password(self.password)?;
        let Some(id) = self.cluster else {
            if password.is_some() {
                return Err("--password-file and --password-env go with --cluster".into());
            }
            return Ok(CeremonyToken {
                module: hsm.module.clone(),
                token_label: hsm.token_label.clone(),
                user_pin: hsm.pin.clone(),
                named: String::new(),
            });
        };
        let Some(cluster) = config.hsm.cluster.iter().find(|c| c.id == id) else {
            return Err(format!("--cluster {id}: no [[hsm.cluster]] has this id"));
        };
        let Some(password) = password else {
            return Err(format!(
                "--cluster {id}: name the key store password with --password-file or --password-env"
            ));
        };
        Ok(CeremonyToken {
            module: cluster.module.clone(),
            token_label: cluster.token_label.clone(),
            user_pin: Pin::new(password.as_str()),
            named: format!(" of cluster {id}"),
        })
    }
}

fn trust_master(
    config: &Path,
    so_pin_file: Option<&Path>,
    device: Ceremony<'_>,
    version: MasterVersion,
) -> Result<ExitCode, String> {
    let config = super::daemon::load_config(config)?;
    let hsm = config.hsm_config().map_err(|e| e.to_string())?;
    let token = device.token(&config, &hsm)?;
    let so_pin = read_so_pin(so_pin_file)?;
    // The ceremony creates and destroys token objects: on a SoftHSM2 token directory that
    // daemons share (a cluster's device takes the same lock as `[hsm]`'s), it takes their
    // lock file as they do (see `hsm::shared_token`).
    let _shared = match &hsm.shared_token_lock {
        Some(path) => Some(lock_file(path)?),
        None => None,
    };
    let outcome = p11kms::hsm::trust_master(
        &token.module,
        &token.token_label,
        &so_pin,
        &token.user_pin,
        version,
    )
    .map_err(|e| e.to_string())?;
    let what = match outcome {
        TrustOutcome::Created => "made, trusted",
        TrustOutcome::Replaced => "replaced by a trusted one (the untrusted key wrapped nothing)",
        TrustOutcome::AlreadyTrusted => "already trusted; nothing changed",
    };
    println!("master key {}{}: {what}", version.label(), token.named);
    Ok(ExitCode::SUCCESS)
}

/// Takes the shared token's lock file (blocking until the daemons' token-object jobs end);
/// released when the file is dropped.
pub(super) fn lock_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("shared token lock {}: {e}", path.display()))
}

/// The SO PIN from the file, else from `P11KMS_SO_PIN`.
pub(super) fn read_so_pin(file: Option<&Path>) -> Result<Pin, String> {
    let raw = match file {
        Some(path) => zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--so-pin-file {}: {e}", path.display()))?,
        ),
        None => zeroize::Zeroizing::new(
            std::env::var(SO_PIN_ENV)
                .map_err(|_| format!("no SO PIN: name --so-pin-file or set {SO_PIN_ENV}"))?,
        ),
    };
    let pin = raw.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err("the SO PIN is empty".into());
    }
    Ok(Pin::new(pin))
}
