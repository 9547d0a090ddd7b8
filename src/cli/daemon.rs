//! `p11kms serve`, `check` and `dev-setup`: the daemon, the configuration proof and the dev
//! set-up. Each loads what it needs and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use p11kms::config::Config;
use p11kms::core::blob_check::{BlobScope, DEFAULT_BLOB_SAMPLE};

use super::runtime;

/// `dev-setup`'s options.
#[derive(Args, Debug)]
pub struct DevSetupArgs {
    #[arg(long, default_value = "p11kms-data")]
    data_dir: PathBuf,
    /// The gRPC door's address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// The AWS door's address.
    #[arg(long, default_value = "127.0.0.1:4443")]
    aws_listen: std::net::SocketAddr,
    /// The metrics endpoint's address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: std::net::SocketAddr,
    /// The built operator console (`console/dist` after `scripts/console.sh`) to serve on the
    /// AWS door under `/console/`.
    #[arg(long)]
    console: Option<PathBuf>,
}

/// `serve`: logging as configured, then the daemon until SIGINT or SIGTERM.
pub fn serve(config: &Path) -> Result<ExitCode, String> {
    let config = load_config(config)?;
    init_logging(&config);
    runtime()?
        .block_on(p11kms::server::run(config, shutdown_signal()))
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `check`: the report on standard output; exit code 2 when it found a problem. `all_blobs`:
/// verify every wrapped blob on the device, not a sample.
pub fn check(config: &Path, all_blobs: bool) -> Result<ExitCode, String> {
    let config = load_config(config)?;
    println!("config: ok");
    println!("{}", p11kms::check::render_node(&config));
    let report = runtime()?
        .block_on(p11kms::check::run(&config, blob_scope(all_blobs)))
        .map_err(|e| e.to_string())?;
    print!("{}", report.render());
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Which wrapped blobs `check` verifies.
fn blob_scope(all: bool) -> BlobScope {
    if all {
        BlobScope::All
    } else {
        BlobScope::Sample(DEFAULT_BLOB_SAMPLE)
    }
}

/// The config file; its `hsm.softhsm2_conf` becomes `SOFTHSM2_CONF` unless that is set.
pub(super) fn load_config(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(conf) = &config.hsm.softhsm2_conf {
        if std::env::var_os("SOFTHSM2_CONF").is_none() {
            // Single-threaded here: no runtime has started yet.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
    }
    Ok(config)
}

/// The daemon's log: `RUST_LOG` or the configured level, JSON or text.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `dev-setup`: the files, then the token in the set-up's own SoftHSM2 directory.
pub fn dev_setup(args: DevSetupArgs) -> Result<ExitCode, String> {
    let addrs = p11kms::devsetup::DevListen {
        grpc: args.listen.to_string(),
        aws: args.aws_listen.to_string(),
        metrics: args.metrics_listen.to_string(),
        console: args.console,
    };
    let out = p11kms::devsetup::dev_setup(&args.data_dir, &addrs).map_err(|e| e.to_string())?;
    let conf = &out.softhsm2_conf;
    if std::env::var_os("SOFTHSM2_CONF").is_some_and(|v| Path::new(&v) != conf) {
        eprintln!("note: SOFTHSM2_CONF is set in this shell; `serve` would use it instead of {} (unset it)", conf.display());
    }
    // Single-threaded here: no runtime has started and no module is loaded yet.
    std::env::set_var("SOFTHSM2_CONF", conf);
    let created = p11kms::devsetup::init_dev_token(&out).map_err(|e| e.to_string())?;
    let kept = if out.config_written {
        ""
    } else {
        " (existing, kept: its addresses win over the options)"
    };
    println!("config: {}{kept}", out.config.display());
    println!("client config: {}", out.client_config.display());
    println!(
        "token '{}' in {}: {}",
        p11kms::devsetup::DEV_TOKEN_LABEL,
        conf.display(),
        if created { "initialised" } else { "exists" }
    );
    Ok(ExitCode::SUCCESS)
}
