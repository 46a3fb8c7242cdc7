//! The scheduler: cron schedules, job state, leases and the daemon loop.
//!
//! * [`jobs`]: the jobs a policy schedules ([`JobKind`]) and the one
//!   function that runs them ([`jobs::run_job`]).
//! * [`state`]: the local job state (last tick, outcome, next run), one
//!   small JSON file per policy and job under `<state>/jobs/`.
//! * [`lease`]: the claim on a tick, an object on the policy's primary
//!   target written by conditional put, so that several agents sharing the
//!   same policies run each tick exactly once.
//! * [`daemon`]: `custos run` (every policy, on its cron) and
//!   [`daemon::run_once`] (one job now, for an external scheduler).
//!
//! The daemon's behaviour is documented in `docs/DAEMON.md`, the lease
//! object in `docs/FORMAT.md`.

pub mod daemon;
pub mod jobs;
pub mod lease;
pub mod state;

pub use jobs::{JobKind, JobOutcome};

use chrono::{DateTime, Utc};
use std::path::PathBuf;
use thiserror::Error;

/// Errors of the scheduler. Job failures are not errors of the scheduler:
/// they are [`JobOutcome::Failed`], logged, and the daemon keeps running.
#[derive(Debug, Error)]
pub enum ScheduleError {
    /// The policies could not be loaded; nothing was started.
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// A policy folder with problems (each printed on its own line).
    #[error("the policies in {dir} have {count} problem(s); fix them (run `custos policy check {dir}`):\n{list}")]
    Policies {
        dir: String,
        count: usize,
        list: String,
    },
    /// A cron expression that does not parse (policies are checked first,
    /// so this means a policy was built by hand).
    #[error("policy `{policy}`: schedule.{job}: {why}")]
    Cron {
        policy: String,
        job: &'static str,
        why: String,
    },
    /// The job state directory or a state file.
    #[error(
        "job state {path}: {why}; check the state directory (--state-dir) and its permissions"
    )]
    State { path: PathBuf, why: String },
    /// The local state directory.
    #[error(transparent)]
    StateDir(#[from] crate::state::StateError),
    /// The primary target (opening it, or reading and writing a lease).
    #[error("policy `{policy}`: lease {path}: {why}")]
    Lease {
        policy: String,
        path: String,
        why: String,
    },
    /// Opening the policy's primary target.
    #[error(transparent)]
    Ops(#[from] Box<crate::ops::OpsError>),
    /// `run-once` for a policy whose job has no tick free: it is held by
    /// another agent.
    #[error("policy `{policy}`: job {job} is being run by {holder} (tick {tick}); try again later or wait for its lease to expire at {expires}")]
    Held {
        policy: String,
        job: &'static str,
        holder: String,
        tick: String,
        expires: String,
    },
    /// The local replication record of a policy (for `status`).
    #[error(transparent)]
    Replication(#[from] Box<crate::replicate::ReplicateError>),
    /// `run-once` of a job whose outcome was a failure.
    #[error("policy `{policy}`: job {job} failed after {secs:.1} s: {error}")]
    JobFailed {
        policy: String,
        job: &'static str,
        secs: f64,
        error: String,
    },
}

/// A parsed cron schedule of one job.
#[derive(Clone, Debug)]
pub struct Cron {
    /// The expression as written in the policy.
    pub expr: String,
    schedule: cron::Schedule,
}

impl Cron {
    /// Parses an expression (see [`crate::policy::parse_cron`]).
    pub fn parse(expr: &str) -> Result<Cron, String> {
        Ok(Cron {
            expr: expr.to_string(),
            schedule: crate::policy::parse_cron(expr)?,
        })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&t).next()
    }

    /// The next `n` ticks strictly after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.schedule.after(&t).take(n).collect()
    }

    /// The last tick in `(after, until]`, if any: the run to catch up when
    /// the daemon was down between `after` and `until`.
    pub fn last_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let first = self.next_after(after)?;
        if first > until {
            return None;
        }
        // Walk back from `until`: the iterator in reverse gives ticks before it.
        let last = self.schedule.after(&until).next_back();
        match last {
            Some(t) if t > after && t <= until => Some(t),
            _ => Some(first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_two_seconds() {
        let c = Cron::parse("*/2 * * * * *").unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
        let up = c.upcoming(t, 3);
        assert_eq!(up[0], Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 2).unwrap());
        assert_eq!(up[2], Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 6).unwrap());
    }

    #[test]
    fn last_missed_tick_is_the_latest_in_the_window() {
        let c = Cron::parse("0 0 * * * *").unwrap(); // hourly
        let a = Utc.with_ymd_and_hms(2026, 1, 1, 0, 30, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 1, 1, 3, 10, 0).unwrap();
        assert_eq!(
            c.last_between(a, b),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap())
        );
        let b2 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 50, 0).unwrap();
        assert_eq!(c.last_between(a, b2), None);
    }
}
