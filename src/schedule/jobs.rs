//! The jobs a policy schedules and the one function that runs them.
//!
//! `backup` is built; `replicate`, `drill` and `retention` are being built
//! elsewhere and return [`JobOutcome::NotBuilt`], which is logged and is not
//! a daemon failure. Wire a new job into [`run_job`] and nothing else.

use crate::ops::backup::BackupOptions;
use crate::policy::Policy;
use crate::progress::NoProgress;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A scheduled job of a policy, named as in `[schedule]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Replicate,
    Drill,
    Retention,
}

impl JobKind {
    /// Every job, in the order they run in a day.
    pub const ALL: [JobKind; 4] = [
        JobKind::Backup,
        JobKind::Replicate,
        JobKind::Drill,
        JobKind::Retention,
    ];

    /// The job's name (`backup`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Replicate => "replicate",
            JobKind::Drill => "drill",
            JobKind::Retention => "retention",
        }
    }

    /// The job's cron expression in the policy, if it is scheduled.
    pub fn cron(self, policy: &Policy) -> Option<&str> {
        let s = &policy.schedule;
        match self {
            JobKind::Backup => s.backup.as_deref(),
            JobKind::Replicate => s.replicate.as_deref(),
            JobKind::Drill => s.drill.as_deref(),
            JobKind::Retention => s.retention.as_deref(),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown job `{s}`: use backup, replicate, drill or retention"))
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum JobOutcome {
    /// It did its work; `detail` says what (e.g. the snapshot id).
    Ok { detail: String },
    /// It failed; the error names what and where.
    Failed { error: String },
    /// The job is not built in this version; nothing was done.
    NotBuilt,
    /// It was stopped by a shutdown before it finished (a backup so stopped
    /// leaves the repository valid; the next run reuses what was uploaded).
    Aborted,
}

impl JobOutcome {
    /// A short word: `ok`, `failed`, `not-built`, `aborted`.
    pub fn word(&self) -> &'static str {
        match self {
            JobOutcome::Ok { .. } => "ok",
            JobOutcome::Failed { .. } => "failed",
            JobOutcome::NotBuilt => "not-built",
            JobOutcome::Aborted => "aborted",
        }
    }
}

/// What jobs share: tunables from the command line.
#[derive(Clone, Debug, Default)]
pub struct JobContext {
    /// Options of backups (target: always the primary here).
    pub backup: BackupOptions,
}

/// Runs one job of `policy` now and says how it ended. Never panics on a
/// job failure: the failure is the outcome.
pub async fn run_job(ctx: &JobContext, policy: &Policy, kind: JobKind) -> JobOutcome {
    match kind {
        JobKind::Backup => {
            let opts = BackupOptions {
                target: None,
                ..ctx.backup.clone()
            };
            match crate::ops::backup::backup(policy, &opts, Arc::new(NoProgress)).await {
                Ok(r) => JobOutcome::Ok {
                    detail: format!("snapshot {} ({} items)", r.snapshot, r.items),
                },
                Err(e) => JobOutcome::Failed {
                    error: e.to_string(),
                },
            }
        }
        JobKind::Replicate | JobKind::Drill | JobKind::Retention => JobOutcome::NotBuilt,
    }
}
