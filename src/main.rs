//! The `p11kms` command: the daemon (`serve`), the configuration proof (`check`), the dev
//! set-up, and client commands for people. Argument handling only; the work is in the library.

#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use p11kms::api::grpc::status::aws_reason;
use p11kms::client::ClientConfig;
use p11kms::config::Config;
use p11kms::pb;

/// p11kms: an on-premises key management daemon with keys held in a PKCS#11 HSM.
#[derive(Parser, Debug)]
#[command(name = "p11kms", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The daemon's TOML config file.
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config, open the token, check mechanisms, reconcile store and token.
    /// Exits non-zero on any problem; never changes anything.
    Check {
        #[arg(long, env = "P11KMS_CONFIG")]
        config: PathBuf,
    },
    /// Create the dev CA, server and admin certificates, PIN files and configs (idempotent).
    DevSetup {
        #[arg(long, default_value = "p11kms-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
    },
    /// Manage keys.
    Key {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage aliases.
    Alias {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: AliasCommand,
    },
    /// Encrypt up to 4096 bytes under a key.
    Encrypt {
        #[command(flatten)]
        conn: Conn,
        /// Key id, key ARN, alias name or alias ARN.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        input: Input,
        /// Encryption context pair, repeatable.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Write the raw ciphertext here instead of printing base64.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decrypt a ciphertext blob.
    Decrypt {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        input: Input,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Optional: the key the ciphertext must be under.
        #[arg(long)]
        key: Option<String>,
        /// Write the raw plaintext here instead of printing base64.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate a data key: plaintext and ciphertext.
    GenerateDataKey {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        key: String,
        /// AES_256 or AES_128 (default AES_256 unless --bytes is given).
        #[arg(long)]
        key_spec: Option<String>,
        /// Number of bytes, 1-1024, instead of --key-spec.
        #[arg(long)]
        bytes: Option<i32>,
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Write the raw plaintext data key here (mode 0600) instead of printing it.
        #[arg(long)]
        plaintext_out: Option<PathBuf>,
        /// Write the raw ciphertext blob here instead of printing it.
        #[arg(long)]
        ciphertext_out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a symmetric key.
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// Tag pair, repeatable.
        #[arg(long = "tag", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        /// A key policy document file.
        #[arg(long)]
        policy_file: Option<PathBuf>,
    },
    /// List keys.
    List {
        #[arg(long)]
        limit: Option<i32>,
    },
    /// Describe a key.
    Describe { key: String },
    /// Enable a key.
    Enable { key: String },
    /// Disable a key.
    Disable { key: String },
    /// Schedule deletion after 7-30 days.
    ScheduleDeletion {
        key: String,
        #[arg(long)]
        days: Option<i32>,
    },
    /// Cancel a scheduled deletion (the key is left Disabled).
    CancelDeletion { key: String },
}

#[derive(Subcommand, Debug)]
enum AliasCommand {
    /// Create an alias (`alias/...`) for a key.
    Create { name: String, key: String },
    /// List aliases.
    List {
        #[arg(long)]
        key: Option<String>,
    },
    /// Delete an alias.
    Delete { name: String },
}

/// Connection options; each falls back to the environment, then the client config file.
#[derive(Args, Debug, Clone)]
struct Conn {
    /// Daemon endpoint, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "P11KMS_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// CA certificate (PEM) the server certificate chains to.
    #[arg(long, env = "P11KMS_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "P11KMS_CLIENT_CERT", global = true)]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "P11KMS_CLIENT_KEY", global = true)]
    client_key: Option<PathBuf>,
    /// Client config file (default: p11kms-data/client.toml when it exists).
    #[arg(long, env = "P11KMS_CLIENT_CONFIG", global = true)]
    client_config: Option<PathBuf>,
}

/// Where input bytes come from.
#[derive(Args, Debug, Clone)]
struct Input {
    /// Read the input from this file ("-" for standard input).
    #[arg(long = "in", conflicts_with = "b64")]
    file: Option<PathBuf>,
    /// The input as base64 on the command line (not for secrets: argv is visible to others).
    #[arg(long)]
    b64: Option<String>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn read_input(input: &Input) -> Result<Zeroizing<Vec<u8>>, String> {
    match (&input.file, &input.b64) {
        (Some(p), _) if p == Path::new("-") => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading standard input: {e}"))?;
            Ok(buf)
        }
        (Some(p), _) => std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|e| format!("reading {}: {e}", p.display())),
        (None, Some(b)) => B64
            .decode(b.trim())
            .map(Zeroizing::new)
            .map_err(|e| format!("--b64 is not base64: {e}")),
        (None, None) => Err("give the input with --in FILE (or - for stdin) or --b64".into()),
    }
}

fn write_output(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn client_config(conn: &Conn) -> Result<ClientConfig, String> {
    let file = conn.client_config.clone().or_else(|| {
        let default = PathBuf::from("p11kms-data/client.toml");
        default.exists().then_some(default)
    });
    let base = match file {
        Some(f) => ClientConfig::load(&f).map_err(|e| e.to_string())?,
        None => ClientConfig::default(),
    };
    Ok(base.overlay(ClientConfig {
        endpoint: conn.endpoint.clone(),
        ca_cert: conn.ca_cert.clone(),
        client_cert: conn.client_cert.clone(),
        client_key: conn.client_key.clone(),
        ..Default::default()
    }))
}

fn status_error(s: tonic::Status) -> String {
    match aws_reason(&s) {
        Some(reason) => format!("{reason}: {}", s.message()),
        None => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn ctx(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

fn ts(t: &Option<prost_types::Timestamp>) -> serde_json::Value {
    t.as_ref()
        .map(|t| json!(t.seconds as f64 + f64::from(t.nanos) / 1e9))
        .unwrap_or(serde_json::Value::Null)
}

fn metadata_json(m: &pb::KeyMetadata) -> serde_json::Value {
    json!({
        "AWSAccountId": m.aws_account_id,
        "KeyId": m.key_id,
        "Arn": m.arn,
        "CreationDate": ts(&m.creation_date),
        "Enabled": m.enabled,
        "Description": m.description,
        "KeyUsage": m.key_usage,
        "KeyState": m.key_state,
        "DeletionDate": ts(&m.deletion_date),
        "Origin": m.origin,
        "KeyManager": m.key_manager,
        "KeySpec": m.key_spec,
        "EncryptionAlgorithms": m.encryption_algorithms,
        "PendingDeletionWindowInDays": m.pending_deletion_window_in_days,
        "CurrentKeyMaterialId": m.current_key_material_id,
    })
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(conf) = &config.hsm.softhsm2_conf {
        if std::env::var_os("SOFTHSM2_CONF").is_none() {
            // Single-threaded here: no runtime has started yet.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

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

async fn client_command(command: Command) -> Result<(), String> {
    match command {
        Command::Key { conn, command } => {
            let mut c = client_config(&conn)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            match command {
                KeyCommand::Create {
                    description,
                    tags,
                    policy_file,
                } => {
                    let policy = match policy_file {
                        Some(p) => std::fs::read_to_string(&p)
                            .map_err(|e| format!("reading {}: {e}", p.display()))?,
                        None => String::new(),
                    };
                    let r = c
                        .create_key(pb::CreateKeyRequest {
                            description,
                            policy,
                            tags: tags
                                .into_iter()
                                .map(|(k, v)| pb::Tag {
                                    tag_key: k,
                                    tag_value: v,
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if let Some(m) = r.key_metadata {
                        print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
                    }
                }
                KeyCommand::List { limit } => {
                    let mut marker = String::new();
                    let mut keys = Vec::new();
                    loop {
                        let r = c
                            .list_keys(pb::ListKeysRequest {
                                limit,
                                marker: marker.clone(),
                            })
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        keys.extend(
                            r.keys
                                .iter()
                                .map(|k| json!({"KeyId": k.key_id, "KeyArn": k.key_arn})),
                        );
                        if !r.truncated || limit.is_some() {
                            break;
                        }
                        marker = r.next_marker;
                    }
                    print_json(&json!({ "Keys": keys }));
                }
                KeyCommand::Describe { key } => {
                    let r = c
                        .describe_key(pb::DescribeKeyRequest {
                            key_id: key,
                            grant_tokens: vec![],
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if let Some(m) = r.key_metadata {
                        print_json(&json!({ "KeyMetadata": metadata_json(&m) }));
                    }
                }
                KeyCommand::Enable { key } => {
                    c.enable_key(pb::EnableKeyRequest { key_id: key })
                        .await
                        .map_err(status_error)?;
                }
                KeyCommand::Disable { key } => {
                    c.disable_key(pb::DisableKeyRequest { key_id: key })
                        .await
                        .map_err(status_error)?;
                }
                KeyCommand::ScheduleDeletion { key, days } => {
                    let r = c
                        .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                            key_id: key,
                            pending_window_in_days: days,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&json!({
                        "KeyId": r.key_id,
                        "DeletionDate": ts(&r.deletion_date),
                        "KeyState": r.key_state,
                        "PendingWindowInDays": r.pending_window_in_days,
                    }));
                }
                KeyCommand::CancelDeletion { key } => {
                    let r = c
                        .cancel_key_deletion(pb::CancelKeyDeletionRequest { key_id: key })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_json(&json!({ "KeyId": r.key_id }));
                }
            }
        }
        Command::Alias { conn, command } => {
            let mut c = client_config(&conn)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            match command {
                AliasCommand::Create { name, key } => {
                    c.create_alias(pb::CreateAliasRequest {
                        alias_name: name,
                        target_key_id: key,
                    })
                    .await
                    .map_err(status_error)?;
                }
                AliasCommand::List { key } => {
                    let r = c
                        .list_aliases(pb::ListAliasesRequest {
                            key_id: key.unwrap_or_default(),
                            limit: Some(1000),
                            marker: String::new(),
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    let aliases: Vec<_> = r
                        .aliases
                        .iter()
                        .map(|a| {
                            json!({"AliasName": a.alias_name, "AliasArn": a.alias_arn, "TargetKeyId": a.target_key_id})
                        })
                        .collect();
                    print_json(&json!({ "Aliases": aliases }));
                }
                AliasCommand::Delete { name } => {
                    c.delete_alias(pb::DeleteAliasRequest { alias_name: name })
                        .await
                        .map_err(status_error)?;
                }
            }
        }
        Command::Encrypt {
            conn,
            key,
            input,
            context,
            out,
        } => {
            let plaintext = read_input(&input)?;
            let mut c = client_config(&conn)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let r = c
                .encrypt(pb::EncryptRequest {
                    key_id: key,
                    plaintext: plaintext.to_vec(),
                    encryption_context: ctx(context),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match out {
                Some(p) => write_output(&p, &r.ciphertext_blob, false)?,
                None => println!("{}", B64.encode(&r.ciphertext_blob)),
            }
        }
        Command::Decrypt {
            conn,
            input,
            context,
            key,
            out,
        } => {
            let blob = read_input(&input)?;
            let mut c = client_config(&conn)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let r = c
                .decrypt(pb::DecryptRequest {
                    ciphertext_blob: blob.to_vec(),
                    encryption_context: ctx(context),
                    key_id: key.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let plaintext = Zeroizing::new(r.plaintext);
            match out {
                Some(p) => write_output(&p, &plaintext, true)?,
                None => println!("{}", Zeroizing::new(B64.encode(&*plaintext)).as_str()),
            }
        }
        Command::GenerateDataKey {
            conn,
            key,
            key_spec,
            bytes,
            context,
            plaintext_out,
            ciphertext_out,
        } => {
            let key_spec = match (&key_spec, bytes) {
                (None, None) => "AES_256".to_string(),
                (Some(s), _) => s.clone(),
                (None, Some(_)) => String::new(),
            };
            let mut c = client_config(&conn)?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let r = c
                .generate_data_key(pb::GenerateDataKeyRequest {
                    key_id: key,
                    encryption_context: ctx(context),
                    number_of_bytes: bytes,
                    key_spec,
                    grant_tokens: vec![],
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let plaintext = Zeroizing::new(r.plaintext);
            if let Some(p) = &plaintext_out {
                write_output(p, &plaintext, true)?;
            }
            if let Some(p) = &ciphertext_out {
                write_output(p, &r.ciphertext_blob, false)?;
            }
            let mut v = json!({ "KeyId": r.key_id, "KeyMaterialId": r.key_material_id });
            if plaintext_out.is_none() {
                v["Plaintext"] = json!(Zeroizing::new(B64.encode(&*plaintext)).as_str());
            }
            if ciphertext_out.is_none() {
                v["CiphertextBlob"] = json!(B64.encode(&r.ciphertext_blob));
            }
            print_json(&v);
        }
        Command::Serve { .. } | Command::Check { .. } | Command::DevSetup { .. } => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<ExitCode, String> = (|| match cli.command {
        Command::Serve { config } => {
            let config = load_config(&config)?;
            init_logging(&config);
            runtime()?
                .block_on(p11kms::server::run(config, shutdown_signal()))
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = load_config(&config)?;
            println!("config: ok");
            let report = runtime()?
                .block_on(p11kms::check::run(&config))
                .map_err(|e| e.to_string())?;
            print!("{}", report.render());
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::DevSetup { data_dir, listen } => {
            let out = p11kms::devsetup::dev_setup(&data_dir, &listen).map_err(|e| e.to_string())?;
            println!("config: {}", out.config.display());
            println!("client config: {}", out.client_config.display());
            Ok(ExitCode::SUCCESS)
        }
        other => {
            runtime()?.block_on(client_command(other))?;
            Ok(ExitCode::SUCCESS)
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
