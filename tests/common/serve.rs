//! A `p11kms serve` child process, for the tests that run the real binary as an operator does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `serve` child whose stderr goes to a log file; killed (SIGKILL) and reaped when dropped.
pub struct ServeChild {
    pub child: Child,
    log: PathBuf,
}

impl ServeChild {
    /// Spawns `p11kms serve --config <config>` from `p11kms` (a command for the binary, with
    /// its environment and working directory set), its stderr in the file `log`.
    pub fn spawn(mut p11kms: Command, config: &Path, log: PathBuf) -> ServeChild {
        let file = std::fs::File::create(&log).unwrap();
        let child = p11kms
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn p11kms serve");
        ServeChild { child, log }
    }

    /// As [`ServeChild::spawn`], with the daemon's stdout (where its tracing log goes) in the
    /// log file too.
    pub fn spawn_logged(mut p11kms: Command, config: &Path, log: PathBuf) -> ServeChild {
        let file = std::fs::File::create(&log).unwrap();
        let child = p11kms
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn p11kms serve");
        ServeChild { child, log }
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, polling every `poll`, for the child to exit; fails with `late` and the log when
    /// it still runs after `limit`.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration, poll: Duration, late: &str) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < limit, "{late}: {}", self.log());
            std::thread::sleep(poll);
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failing test leaves no
/// daemon behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
