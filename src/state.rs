//! The local state directory: what custos keeps on the machine it runs on,
//! beside the policies and outside the repositories.
//!
//! ```text
//! <state>/
//!   audit/          the audit log (hash chain), see `audit`
//!   jobs/           the daemon's job state (last run, outcome, next run)
//!   reports/        local copies of signed drill reports
//!   certificates/   local copies of signed destruction certificates
//!   scratch/        drill scratch space (removed after each drill)
//!   replication/    per policy: which snapshots are complete and verified where
//!   users/          console users' last use (the users file itself sits in
//!                   the policy folder, or here as users.json)
//! ```
//!
//! It is chosen, first match wins, by the global `--state-dir` flag, the
//! `CUSTOS_STATE_DIR` environment variable, `$XDG_STATE_HOME/custos`, then
//! `$HOME/.local/state/custos`. Nothing in it is needed to restore: losing
//! it loses local history, never data. (Reports and certificates are also
//! kept on the primary target.)

use std::path::{Path, PathBuf};
use thiserror::Error;

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "CUSTOS_STATE_DIR";

/// Errors of the state directory.
#[derive(Debug, Error)]
pub enum StateError {
    #[error(
        "no state directory: pass --state-dir or set {STATE_DIR_ENV} (neither XDG_STATE_HOME nor HOME is set)"
    )]
    NoDefault,
    #[error("cannot create state directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The resolved local state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Resolves the state directory (see the module docs for the order) and
    /// creates it if missing.
    pub fn resolve(explicit: Option<&Path>) -> Result<StateDir, StateError> {
        let root = match explicit {
            Some(p) => p.to_path_buf(),
            None => default_root()?,
        };
        StateDir::at(root)
    }

    /// Uses `root` as the state directory, creating it if missing.
    pub fn at(root: impl Into<PathBuf>) -> Result<StateDir, StateError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StateError::Create {
            path: root.clone(),
            source,
        })?;
        Ok(StateDir { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory (`audit`, `jobs`, `reports`, `certificates`,
    /// `scratch`), created if missing.
    pub fn sub(&self, name: &str) -> Result<PathBuf, StateError> {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).map_err(|source| StateError::Create {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }
}

fn default_root() -> Result<PathBuf, StateError> {
    if let Some(p) = std::env::var_os(STATE_DIR_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p).join("custos"));
    }
    if let Some(p) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p).join(".local/state/custos"));
    }
    Err(StateError::NoDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_is_created_with_subdirs() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::resolve(Some(&t.path().join("st"))).unwrap();
        assert_eq!(s.root(), t.path().join("st"));
        let a = s.sub("audit").unwrap();
        assert!(a.is_dir());
        assert_eq!(a, t.path().join("st/audit"));
    }
}
