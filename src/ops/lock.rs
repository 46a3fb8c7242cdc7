//! The backup lock: `locks/backup.json` on the primary target.
//!
//! Two backups of one policy at once would both create keys and write vault
//! shards, and the last writer would drop the other's new keys. A backup
//! therefore takes this lock with a create-only put. A lock left by a killed
//! process is taken over when its holder is provably gone (same host, process
//! not running) or when it is older than [`STALE_AFTER`]. The daemon's leases
//! (a later issue) build on the same object.

use super::OpsError;
use crate::target::Target;
use serde::{Deserialize, Serialize};

pub const LOCK_PATH: &str = "locks/backup.json";
/// A lock older than this is considered abandoned.
pub const STALE_AFTER: chrono::Duration = chrono::Duration::hours(6);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    pub started: String,
    pub token: String,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A held lock; release it with [`BackupLock::release`].
pub struct BackupLock {
    info: LockInfo,
}

impl BackupLock {
    pub async fn acquire(target: &Target) -> Result<BackupLock, OpsError> {
        let info = LockInfo {
            host: host(),
            pid: std::process::id(),
            started: chrono::Utc::now().to_rfc3339(),
            token: crate::repo::snapshot::Snapshot::new_id(),
        };
        let body = serde_json::to_vec(&info).expect("lock serializes");
        for _ in 0..2 {
            if target.put_new(LOCK_PATH, body.clone().into()).await? {
                return Ok(BackupLock { info });
            }
            let Some(old) = target.get_opt(LOCK_PATH).await? else {
                continue; // released in between
            };
            let held: Option<LockInfo> = serde_json::from_slice(&old).ok();
            let stale = match &held {
                None => true,
                Some(h) => {
                    let age = chrono::DateTime::parse_from_rfc3339(&h.started)
                        .map(|t| chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                        .unwrap_or(STALE_AFTER);
                    (h.host == info.host && !alive(h.pid)) || age >= STALE_AFTER
                }
            };
            if !stale {
                let h = held.unwrap();
                return Err(OpsError::Invalid(format!(
                    "target `{}`: another backup of this policy is running (host {}, pid {}, since {}); \
                     if it is gone, delete {LOCK_PATH} on the target",
                    target.name, h.host, h.pid, h.started
                )));
            }
            tracing::warn!(target = %target.name, "taking over an abandoned backup lock");
            target.delete(LOCK_PATH).await?;
        }
        Err(OpsError::Invalid(format!(
            "target `{}`: could not take the backup lock {LOCK_PATH}",
            target.name
        )))
    }

    /// What the lock object holds while it is ours.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Whether the lock object on the target is still this lock (not taken
    /// over as stale by another process).
    pub async fn held(&self, target: &Target) -> Result<bool, OpsError> {
        let cur = target.get_opt(LOCK_PATH).await?;
        Ok(
            cur.and_then(|c| serde_json::from_slice::<LockInfo>(&c).ok())
                == Some(self.info.clone()),
        )
    }

    /// Releases the lock if it is still ours.
    pub async fn release(self, target: &Target) -> Result<(), OpsError> {
        if let Some(cur) = target.get_opt(LOCK_PATH).await? {
            if serde_json::from_slice::<LockInfo>(&cur).ok().as_ref() == Some(&self.info) {
                target.delete(LOCK_PATH).await?;
            }
        }
        Ok(())
    }
}

/// The backup lock of every target of a policy, held together: what a job
/// that writes the vault outside a backup (a shred run, signing the vault)
/// takes, so that no backup writes it meanwhile.
pub struct AllLocks {
    held: Vec<(Target, BackupLock)>,
}

impl AllLocks {
    /// Takes the lock of every target of `policy`, in its order; on a
    /// failure, releases those taken and returns the error.
    pub async fn acquire(policy: &crate::policy::Policy) -> Result<AllLocks, OpsError> {
        let mut all = AllLocks { held: Vec::new() };
        for t in &policy.targets {
            let r = async {
                let target = super::open_target(policy, t, false)?;
                let lock = BackupLock::acquire(&target).await?;
                Ok::<_, OpsError>((target, lock))
            }
            .await;
            match r {
                Ok(l) => all.held.push(l),
                Err(e) => {
                    all.release().await;
                    return Err(e);
                }
            }
        }
        Ok(all)
    }

    /// The targets, opened, in the policy's order.
    pub fn targets(&self) -> Vec<Target> {
        self.held.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Releases every lock; a failure is logged, not returned.
    pub async fn release(self) {
        for (t, l) in self.held {
            if let Err(e) = l.release(&t).await {
                tracing::warn!(target = %t.name, error = %e, "cannot release the backup lock");
            }
        }
    }
}
