//! The local job state: one JSON file per policy and job,
//! `<state>/jobs/<policy>.<job>.json`, written atomically (a temporary file
//! in the same folder, then a rename), so a killed daemon leaves either the
//! old or the new state, never a part.
//!
//! Losing it loses history, never data: the lease on the target also
//! records the last tick done, so no tick is run twice.

use super::{JobKind, JobOutcome, ScheduleError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The current version of the state file.
pub const STATE_VERSION: u32 = 1;

/// One run of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The scheduled time the run was for (for `run-once`: when it started).
    pub tick: DateTime<Utc>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_s: f64,
    #[serde(flatten)]
    pub outcome: JobOutcome,
}

/// What the daemon remembers about one job of one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub version: u32,
    pub policy: String,
    pub job: JobKind,
    /// When this job was first scheduled on this machine: missed runs are
    /// counted from here when no tick was handled yet.
    pub since: DateTime<Utc>,
    /// The latest tick handled: run, found done by another agent, or
    /// skipped (overrun, catch-up off). Ticks after it are missed runs.
    pub last_tick: Option<DateTime<Utc>>,
    /// The latest run by this machine.
    pub last_run: Option<RunRecord>,
    /// The next scheduled tick, as of the last write.
    pub next_run: Option<DateTime<Utc>>,
    /// Runs by this machine: finished ok, failed, and ticks skipped.
    pub runs_ok: u64,
    pub runs_failed: u64,
    pub ticks_skipped: u64,
}

impl JobState {
    /// A fresh state: nothing handled yet, scheduled from `now`.
    pub fn new(policy: &str, job: JobKind, now: DateTime<Utc>) -> JobState {
        JobState {
            version: STATE_VERSION,
            policy: policy.to_string(),
            job,
            since: now,
            last_tick: None,
            last_run: None,
            next_run: None,
            runs_ok: 0,
            runs_failed: 0,
            ticks_skipped: 0,
        }
    }

    /// Marks `tick` handled (keeps the latest).
    pub fn handled(&mut self, tick: DateTime<Utc>) {
        if self.last_tick.is_none_or(|t| t < tick) {
            self.last_tick = Some(tick);
        }
    }

    /// Ticks after this are missed runs.
    pub fn anchor(&self) -> DateTime<Utc> {
        self.last_tick.unwrap_or(self.since)
    }
}

/// The job state files of one state directory.
#[derive(Clone, Debug)]
pub struct StateFiles {
    dir: PathBuf,
}

impl StateFiles {
    /// The `jobs/` folder of the state directory (created if missing).
    pub fn open(state: &crate::state::StateDir) -> Result<StateFiles, ScheduleError> {
        Ok(StateFiles {
            dir: state.sub("jobs")?,
        })
    }

    /// Uses `dir` directly.
    pub fn at(dir: impl Into<PathBuf>) -> StateFiles {
        StateFiles { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one policy's job.
    pub fn path(&self, policy: &str, job: JobKind) -> PathBuf {
        self.dir.join(format!("{policy}.{job}.json"))
    }

    /// Reads a job's state; `None` if there is none yet.
    pub fn load(&self, policy: &str, job: JobKind) -> Result<Option<JobState>, ScheduleError> {
        let path = self.path(policy, job);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ScheduleError::State {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let st: JobState = serde_json::from_slice(&bytes).map_err(|e| ScheduleError::State {
            path: path.clone(),
            why: format!(
                "not a job state file ({e}); delete it to start this job's history afresh"
            ),
        })?;
        if st.version != STATE_VERSION {
            return Err(ScheduleError::State {
                path,
                why: format!(
                    "version {} is not known to this custos (knows {STATE_VERSION})",
                    st.version
                ),
            });
        }
        Ok(Some(st))
    }

    /// Writes a job's state atomically (temporary file, fsync, rename).
    pub fn save(&self, st: &JobState) -> Result<(), ScheduleError> {
        use std::io::Write;
        let path = self.path(&st.policy, st.job);
        let err = |why: String| ScheduleError::State {
            path: path.clone(),
            why,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| err(e.to_string()))?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            st.policy,
            st.job,
            std::process::id()
        ));
        let body = serde_json::to_vec_pretty(st).expect("job state serializes");
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        let files = StateFiles::at(d.path());
        assert_eq!(files.load("crm", JobKind::Backup).unwrap(), None);
        let now = Utc::now();
        let mut st = JobState::new("crm", JobKind::Backup, now);
        st.handled(now);
        st.last_run = Some(RunRecord {
            tick: now,
            started: now,
            finished: now,
            duration_s: 0.5,
            outcome: JobOutcome::Failed {
                error: "target unreachable".into(),
            },
        });
        files.save(&st).unwrap();
        files.save(&st).unwrap();
        assert_eq!(files.load("crm", JobKind::Backup).unwrap(), Some(st));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["crm.backup.json"]);
    }

    #[test]
    fn handled_keeps_the_latest_tick() {
        let t0 = Utc::now();
        let mut st = JobState::new("p", JobKind::Drill, t0);
        assert_eq!(st.anchor(), t0);
        let t2 = t0 + chrono::Duration::seconds(2);
        st.handled(t2);
        st.handled(t0);
        assert_eq!(st.anchor(), t2);
    }
}
