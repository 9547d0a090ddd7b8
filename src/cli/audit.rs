//! `p11kms audit ...`: the offline audit trail verifier (no HSM, no daemon).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// The `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check audit segments offline (no HSM, no daemon): hashes, chain, sequence numbers,
    /// segment links and checkpoint signatures. Exits non-zero on any problem.
    Verify {
        /// The audit public key (PEM or DER), `audit-public-key.pem` in the data directory.
        /// Without it, checkpoint signatures are not checked.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Segment files (`audit-*.jsonl`), in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs an `audit` subcommand; the verifier prints its own report and chooses the exit code.
pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { public_key, files } => {
            let code = p11kms::audit::run_verify_cli(public_key.as_deref(), &files);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}
