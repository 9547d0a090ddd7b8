//! The reloadable shared directory: the current [`Directory`] behind a lock, swapped
//! atomically on reload (SIGHUP), the old one kept when the new files are bad.

use std::sync::{Arc, RwLock};

use super::load::{DirectoryFiles, IdentityError};
use super::model::Directory;

/// The current directory, swapped atomically on reload.
#[derive(Debug)]
pub struct DirectoryHandle {
    current: RwLock<Arc<Directory>>,
}

impl DirectoryHandle {
    /// Wraps a loaded directory.
    pub fn new(directory: Directory) -> DirectoryHandle {
        DirectoryHandle {
            current: RwLock::new(Arc::new(directory)),
        }
    }

    /// Loads the files and wraps the result.
    pub fn load(files: &DirectoryFiles) -> Result<DirectoryHandle, IdentityError> {
        Ok(DirectoryHandle::new(Directory::load(files)?))
    }

    /// The current directory. Hold the `Arc` for the duration of one request.
    pub fn current(&self) -> Arc<Directory> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the directory.
    pub fn replace(&self, directory: Directory) {
        let new = Arc::new(directory);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Reloads from the files. On error the current directory stays in force and the error
    /// is logged and returned.
    pub fn reload(&self, files: &DirectoryFiles) -> Result<(), IdentityError> {
        match Directory::load(files) {
            Ok(dir) => {
                tracing::info!(
                    accounts = dir.accounts.len(),
                    principals = dir.principals.len(),
                    roles = dir.roles.len(),
                    access_keys = dir.access_keys.len(),
                    cert_bindings = dir.cert_bindings.len(),
                    "identity directory reloaded"
                );
                self.replace(dir);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "identity directory reload failed; keeping the previous directory");
                Err(e)
            }
        }
    }
}
