//! `[console]`: the operator console (`docs/console.md`), the browser app the daemon serves
//! under `/console/` on the AWS door's listener. Off unless enabled.
//!
//! The console is a client of the AWS door like any other: it signs every request with the
//! user's own credentials, so serving it grants nothing. Its files are built once (`npm run
//! build` in `console/`, by `scripts/console.sh`) and read from `assets` when the daemon
//! starts; nothing is fetched at run time.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The file every console directory must hold: the page `/console/` answers with.
pub const CONSOLE_INDEX: &str = "index.html";

/// `[console]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console (needs `[aws_json] enabled`: the console talks to that door).
    pub enabled: bool,
    /// The built console (`console/dist` of the source tree after `scripts/console.sh`),
    /// relative to the config file's directory unless absolute.
    pub assets: PathBuf,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            assets: PathBuf::from("console/dist"),
        }
    }
}

impl ConsoleConfig {
    /// Resolves `assets` against the config file's directory.
    pub fn resolve_paths(&mut self, fix: impl Fn(&mut PathBuf)) {
        fix(&mut self.assets);
    }

    /// When enabled: the AWS door is on, and `assets` holds a built console.
    pub fn validate(&self, aws_door_enabled: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if !aws_door_enabled {
            return Err(ConfigError::Invalid(
                "[console] enabled needs [aws_json] enabled: the console is served on the AWS door's listener".into(),
            ));
        }
        if !index_of(&self.assets).is_file() {
            return Err(ConfigError::Invalid(format!(
                "[console] assets: {} has no {CONSOLE_INDEX}; build the console with scripts/console.sh",
                self.assets.display()
            )));
        }
        Ok(())
    }
}

fn index_of(dir: &Path) -> PathBuf {
    dir.join(CONSOLE_INDEX)
}
