//! The daemon loop (`custos run --policies DIR`) and [`run_once`].
//!
//! One tokio task schedules: it sleeps until the earliest next tick of any
//! (policy, job), then starts that tick's run as its own task. Runs wait for
//! one of `max_jobs` permits (a limit across policies). A job whose previous
//! run is still going when its next tick comes is not stacked: the tick is
//! skipped and logged. Each run claims the tick's lease on the policy's
//! primary target first (see [`super::lease`]), renews it while it runs and
//! records the tick as done when it ends.
//!
//! On start, a job whose tick passed while the daemon was down is run once
//! (the latest missed tick) when `[schedule] catch_up` is true (default),
//! else the missed ticks are recorded as skipped. SIGHUP reloads the
//! policies (a folder with problems is refused and the old policies kept);
//! SIGTERM or Ctrl-C stops scheduling, lets running jobs finish for up to
//! `stop_timeout`, then aborts them (a backup stopped mid-way leaves the
//! repository valid) and returns.

use super::jobs::{run_job, JobContext};
use super::lease::{Claim, Lease};
use super::state::{JobState, RunRecord, StateFiles};
use super::{Cron, JobKind, JobOutcome, ScheduleError};
use crate::policy::{check_dir, Policy};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The daemon's tunables.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The folder of policy files (`*.toml`).
    pub policies: PathBuf,
    /// Jobs running at once, across policies (at least 1).
    pub max_jobs: usize,
    /// How long a claim on a tick lasts unless renewed (renewed every third).
    pub lease_ttl: Duration,
    /// On SIGTERM, how long running jobs may take before they are aborted.
    pub stop_timeout: Duration,
    /// What jobs share.
    pub ctx: JobContext,
}

/// How long a claim on a tick lasts unless renewed, by default (the
/// daemon's, `run-once`'s and the console's).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

impl DaemonOptions {
    /// Defaults: 2 jobs at once, [`DEFAULT_LEASE_TTL`] leases, 60 s to stop.
    pub fn new(policies: impl Into<PathBuf>) -> DaemonOptions {
        DaemonOptions {
            policies: policies.into(),
            max_jobs: 2,
            lease_ttl: DEFAULT_LEASE_TTL,
            stop_timeout: Duration::from_secs(60),
            ctx: JobContext::default(),
        }
    }
}

/// Loads every policy of a folder; any problem refuses them all.
pub fn load_policies(dir: &Path) -> Result<Vec<Policy>, ScheduleError> {
    let c = check_dir(dir, false)?;
    if !c.is_ok() {
        let list: Vec<String> = c.problems.iter().map(|p| p.to_string()).collect();
        return Err(ScheduleError::Policies {
            dir: dir.display().to_string(),
            count: list.len(),
            list: list.join("\n"),
        });
    }
    Ok(c.policies)
}

/// The job state files, with one lock so that the scheduler and the runs
/// never interleave a read-modify-write of one file.
#[derive(Clone)]
struct States {
    files: StateFiles,
    lock: Arc<Mutex<()>>,
}

impl States {
    fn update(
        &self,
        policy: &str,
        job: JobKind,
        f: impl FnOnce(&mut JobState),
    ) -> Result<JobState, ScheduleError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self
            .files
            .load(policy, job)?
            .unwrap_or_else(|| JobState::new(policy, job, Utc::now()));
        f(&mut st);
        self.files.save(&st)?;
        Ok(st)
    }

    /// Logs instead of failing: the daemon keeps running without history.
    fn update_logged(&self, policy: &str, job: JobKind, f: impl FnOnce(&mut JobState)) {
        if let Err(e) = self.update(policy, job, f) {
            tracing::error!(policy, job = %job, error = %e, "cannot write the job state");
        }
    }
}

/// One scheduled job of one policy.
struct Slot {
    policy: Arc<Policy>,
    job: JobKind,
    cron: Cron,
    next: Option<DateTime<Utc>>,
    running: Arc<AtomicBool>,
}

type Key = (String, JobKind);

fn slots_of(policies: &[Policy]) -> Result<BTreeMap<Key, Slot>, ScheduleError> {
    let mut out = BTreeMap::new();
    for p in policies {
        let p = Arc::new(p.clone());
        for job in JobKind::ALL {
            let Some(expr) = job.cron(&p) else { continue };
            let cron = Cron::parse(expr).map_err(|why| ScheduleError::Cron {
                policy: p.name.clone(),
                job: job.as_str(),
                why,
            })?;
            out.insert(
                (p.name.clone(), job),
                Slot {
                    policy: p.clone(),
                    job,
                    cron,
                    next: None,
                    running: Arc::new(AtomicBool::new(false)),
                },
            );
        }
    }
    Ok(out)
}

/// Everything a run task needs.
#[derive(Clone)]
struct Runner {
    states: States,
    ctx: Arc<JobContext>,
    permits: Arc<Semaphore>,
    ttl: Duration,
    cancel: watch::Receiver<bool>,
}

/// Runs the daemon until SIGTERM or Ctrl-C. Fails only if the policies
/// cannot be loaded at start or the state directory is unusable.
pub async fn run(opts: DaemonOptions, files: StateFiles) -> Result<(), ScheduleError> {
    use tokio::signal::unix::{signal, SignalKind};
    let policies = load_policies(&opts.policies)?;
    let mut slots = slots_of(&policies)?;
    let states = States {
        files,
        lock: Arc::new(Mutex::new(())),
    };
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let runner = Runner {
        states: states.clone(),
        ctx: Arc::new(opts.ctx.clone()),
        permits: Arc::new(Semaphore::new(opts.max_jobs.max(1))),
        ttl: opts.lease_ttl,
        cancel: cancel_rx,
    };
    let mut tasks: JoinSet<()> = JoinSet::new();
    let sig = |k: SignalKind| {
        signal(k).map_err(|e| ScheduleError::State {
            path: opts.policies.clone(),
            why: format!("cannot listen for signals: {e}"),
        })
    };
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;

    tracing::info!(
        policies = policies.len(),
        jobs = slots.len(),
        max_jobs = opts.max_jobs,
        dir = %opts.policies.display(),
        "daemon started"
    );
    let now = Utc::now();
    for slot in slots.values_mut() {
        start_slot(slot, now, &runner, &mut tasks)?;
    }

    loop {
        let now = Utc::now();
        let wake = slots.values().filter_map(|s| s.next).min();
        let wait = match wake {
            Some(w) => (w - now).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(3600),
        }
        .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let now = Utc::now();
                for slot in slots.values_mut() {
                    let Some(tick) = slot.next.filter(|t| *t <= now) else { continue };
                    fire(slot, tick, &runner, &mut tasks);
                    // Ticks that passed while we were not woken (suspend) are skipped.
                    let mut next = slot.cron.next_after(tick);
                    while let Some(n) = next.filter(|n| *n <= now) {
                        tracing::warn!(policy = %slot.policy.name, job = %slot.job, tick = %n,
                            "tick passed while the scheduler was not running (suspend?); skipped");
                        next = slot.cron.next_after(n);
                    }
                    slot.next = next;
                    let (p, j, n) = (slot.policy.name.clone(), slot.job, slot.next);
                    runner.states.update_logged(&p, j, |st| st.next_run = n);
                }
            }
            _ = hup.recv() => {
                match load_policies(&opts.policies).and_then(|p| slots_of(&p).map(|s| (p.len(), s))) {
                    Err(e) => tracing::error!(error = %e, "reload refused: the policies have problems; the old policies are kept"),
                    Ok((n, fresh)) => {
                        let now = Utc::now();
                        let mut merged = BTreeMap::new();
                        for (key, mut slot) in fresh {
                            if let Some(old) = slots.remove(&key) {
                                slot.running = old.running;
                                if old.cron.expr == slot.cron.expr {
                                    slot.next = old.next;
                                }
                            }
                            if slot.next.is_none() {
                                slot.next = slot.cron.next_after(now);
                            }
                            merged.insert(key, slot);
                        }
                        for (p, j) in slots.keys() {
                            tracing::info!(policy = %p, job = %j, "job no longer scheduled (a running run finishes)");
                        }
                        slots = merged;
                        tracing::info!(policies = n, jobs = slots.len(), "policies reloaded");
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }

    tracing::info!(
        running = tasks.len(),
        "stopping: no new runs; waiting for running jobs"
    );
    let drain = async { while tasks.join_next().await.is_some() {} };
    let stopped = tokio::select! {
        _ = tokio::time::timeout(opts.stop_timeout, drain) => true,
        _ = term.recv() => false,
        _ = int.recv() => false,
    };
    if !tasks.is_empty() || !stopped {
        tracing::warn!(running = tasks.len(), "aborting running jobs");
        let _ = cancel_tx.send(true);
        while tasks.join_next().await.is_some() {}
    }
    tracing::info!("daemon stopped");
    Ok(())
}

/// First scheduling of a slot: catch up a missed tick (or record it
/// skipped) and set the next tick.
fn start_slot(
    slot: &mut Slot,
    now: DateTime<Utc>,
    runner: &Runner,
    tasks: &mut JoinSet<()>,
) -> Result<(), ScheduleError> {
    let (name, job) = (slot.policy.name.clone(), slot.job);
    let st = runner.states.update(&name, job, |_| {})?;
    if let Some(missed) = slot.cron.last_between(st.anchor(), now) {
        if slot.policy.schedule.catch_up {
            tracing::info!(policy = %name, job = %job, tick = %missed, "catching up a run missed while the daemon was down");
            fire(slot, missed, runner, tasks);
        } else {
            tracing::info!(policy = %name, job = %job, tick = %missed, "run missed while the daemon was down; skipped (catch_up = false)");
            runner.states.update_logged(&name, job, |st| {
                st.handled(missed);
                st.ticks_skipped += 1;
            });
        }
    }
    slot.next = slot.cron.next_after(now);
    let n = slot.next;
    runner
        .states
        .update_logged(&name, job, |st| st.next_run = n);
    Ok(())
}

/// Starts the run of `tick`, unless the previous run is still going.
fn fire(slot: &Slot, tick: DateTime<Utc>, runner: &Runner, tasks: &mut JoinSet<()>) {
    let (name, job) = (slot.policy.name.clone(), slot.job);
    if slot.running.swap(true, Ordering::SeqCst) {
        tracing::warn!(policy = %name, job = %job, tick = %tick,
            "overrun: the previous run is still going; this tick is skipped, not stacked");
        runner.states.update_logged(&name, job, |st| {
            st.handled(tick);
            st.ticks_skipped += 1;
        });
        return;
    }
    let running = slot.running.clone();
    let policy = slot.policy.clone();
    let runner = runner.clone();
    tasks.spawn(async move {
        let permit = runner.permits.clone().acquire_owned().await;
        let _ = run_tick(&runner, &policy, job, tick).await;
        drop(permit);
        running.store(false, Ordering::SeqCst);
    });
}

/// Claims and runs one tick; records the outcome locally and on the lease.
async fn run_tick(
    runner: &Runner,
    policy: &Policy,
    job: JobKind,
    tick: DateTime<Utc>,
) -> Result<Option<RunRecord>, ScheduleError> {
    let name = policy.name.as_str();
    let target = match crate::ops::open_target(policy, policy.primary(), false) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(policy = name, job = %job, tick = %tick, error = %e, "cannot open the primary target; tick not run");
            let rec = record(
                tick,
                Utc::now(),
                JobOutcome::Failed {
                    error: e.to_string(),
                },
            );
            save_run(&runner.states, name, job, &rec);
            return Ok(Some(rec));
        }
    };
    let lease = match Lease::claim(&target, name, job, tick, runner.ttl).await {
        Ok(Claim::Claimed(l)) => *l,
        Ok(Claim::Done { last_tick }) => {
            tracing::info!(policy = name, job = %job, tick = %tick, done = %last_tick, "tick already run by another agent");
            runner
                .states
                .update_logged(name, job, |st| st.handled(tick));
            return Ok(None);
        }
        Ok(Claim::Held {
            holder,
            tick: t,
            expires,
        }) => {
            tracing::info!(policy = name, job = %job, tick = %tick, holder = %holder, held_tick = %t, expires = %expires,
                "another agent is running this job; tick skipped");
            runner.states.update_logged(name, job, |st| {
                st.handled(tick);
                st.ticks_skipped += 1;
            });
            return Ok(None);
        }
        Err(e) => {
            tracing::error!(policy = name, job = %job, tick = %tick, error = %e, "cannot claim the tick's lease; tick not run");
            let rec = record(
                tick,
                Utc::now(),
                JobOutcome::Failed {
                    error: e.to_string(),
                },
            );
            save_run(&runner.states, name, job, &rec);
            return Ok(Some(rec));
        }
    };
    let rec = run_leased(&runner.ctx, policy, job, lease, runner.cancel.clone()).await;
    save_run(&runner.states, name, job, &rec);
    Ok(Some(rec))
}

/// Runs the job under a held lease: renews it, stops on cancel or when the
/// lease is lost, and finishes the lease.
async fn run_leased(
    ctx: &JobContext,
    policy: &Policy,
    job: JobKind,
    mut lease: Lease,
    mut cancel: watch::Receiver<bool>,
) -> RunRecord {
    let name = policy.name.as_str();
    let tick = lease.tick();
    let started = Utc::now();
    tracing::info!(policy = name, job = %job, tick = %tick, "job started");
    let mut renew = tokio::time::interval(lease.renew_every());
    renew.tick().await; // the first tick is immediate
    let work = run_job(ctx, policy, job);
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = renew.tick() => {
                if let Err(e) = lease.renew().await {
                    tracing::error!(policy = name, job = %job, tick = %tick, error = %e, "lease lost; stopping the job");
                    break JobOutcome::Aborted;
                }
            }
            r = cancel.changed() => {
                if r.is_err() || *cancel.borrow() {
                    break JobOutcome::Aborted;
                }
            }
        }
    };
    let rec = record(tick, started, outcome);
    let done = !matches!(rec.outcome, JobOutcome::Aborted);
    if let Err(e) = lease.finish(done, rec.outcome.word()).await {
        tracing::error!(policy = name, job = %job, tick = %tick, error = %e, "cannot release the lease");
    }
    match &rec.outcome {
        JobOutcome::Ok { detail } => tracing::info!(policy = name, job = %job, tick = %tick,
            duration_s = rec.duration_s, outcome = "ok", detail = %detail, "job finished"),
        JobOutcome::Failed { error } => tracing::error!(policy = name, job = %job, tick = %tick,
            duration_s = rec.duration_s, outcome = "failed", error = %error, "job failed"),
        JobOutcome::Aborted => tracing::warn!(policy = name, job = %job, tick = %tick,
            duration_s = rec.duration_s, outcome = "aborted", "job aborted"),
    }
    rec
}

fn record(tick: DateTime<Utc>, started: DateTime<Utc>, outcome: JobOutcome) -> RunRecord {
    let finished = Utc::now();
    RunRecord {
        tick,
        started,
        finished,
        duration_s: (finished - started).num_milliseconds() as f64 / 1000.0,
        outcome,
    }
}

fn save_run(states: &States, policy: &str, job: JobKind, rec: &RunRecord) {
    states.update_logged(policy, job, |st| {
        // An aborted run did not happen: its tick stays missed.
        if !matches!(rec.outcome, JobOutcome::Aborted) {
            st.handled(rec.tick);
        }
        match rec.outcome {
            JobOutcome::Ok { .. } => st.runs_ok += 1,
            JobOutcome::Failed { .. } => st.runs_failed += 1,
            _ => {}
        }
        st.last_run = Some(rec.clone());
    });
}

/// Runs one job of one policy now, under the same lease as the daemon (the
/// tick is the current second). For external schedulers.
pub async fn run_once(
    policy: &Policy,
    job: JobKind,
    ctx: &JobContext,
    files: StateFiles,
    ttl: Duration,
) -> Result<RunRecord, ScheduleError> {
    let states = States {
        files,
        lock: Arc::new(Mutex::new(())),
    };
    let tick = Utc::now().trunc_subsecs(0);
    let target = crate::ops::open_target(policy, policy.primary(), false).map_err(Box::new)?;
    let lease = match Lease::claim(&target, &policy.name, job, tick, ttl).await? {
        Claim::Claimed(l) => *l,
        Claim::Held {
            holder,
            tick,
            expires,
        } => {
            return Err(ScheduleError::Held {
                policy: policy.name.clone(),
                job: job.as_str(),
                holder: holder.to_string(),
                tick: tick.to_rfc3339(),
                expires: expires.to_rfc3339(),
            })
        }
        Claim::Done { last_tick } => {
            return Err(ScheduleError::Held {
                policy: policy.name.clone(),
                job: job.as_str(),
                holder: "another agent (already done)".into(),
                tick: last_tick.to_rfc3339(),
                expires: last_tick.to_rfc3339(),
            })
        }
    };
    let (_tx, rx) = watch::channel(false);
    let rec = run_leased(ctx, policy, job, lease, rx).await;
    save_run(&states, &policy.name, job, &rec);
    if let JobOutcome::Failed { error } = &rec.outcome {
        return Err(ScheduleError::JobFailed {
            policy: policy.name.clone(),
            job: job.as_str(),
            secs: rec.duration_s,
            error: error.clone(),
        });
    }
    Ok(rec)
}

/// One line of `custos status`.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub policy: String,
    pub job: JobKind,
    /// The cron expression, if the job is scheduled.
    pub schedule: Option<String>,
    pub last_tick: Option<DateTime<Utc>>,
    pub last_run: Option<RunRecord>,
    /// The next tick from now (computed, not read from the state).
    pub next_run: Option<DateTime<Utc>>,
    pub runs_ok: u64,
    pub runs_failed: u64,
    pub ticks_skipped: u64,
}

/// The status of every scheduled (or once run) job of the policies in `dir`.
pub fn status(dir: &Path, files: &StateFiles) -> Result<Vec<JobStatus>, ScheduleError> {
    let policies = load_policies(dir)?;
    let now = Utc::now();
    let mut out = Vec::new();
    for p in &policies {
        for job in JobKind::ALL {
            let expr = job.cron(p).map(str::to_string);
            let st = files.load(&p.name, job)?;
            if expr.is_none() && st.is_none() {
                continue;
            }
            let next = expr
                .as_deref()
                .and_then(|e| Cron::parse(e).ok())
                .and_then(|c| c.next_after(now));
            out.push(JobStatus {
                policy: p.name.clone(),
                job,
                schedule: expr,
                last_tick: st.as_ref().and_then(|s| s.last_tick),
                last_run: st.as_ref().and_then(|s| s.last_run.clone()),
                next_run: next,
                runs_ok: st.as_ref().map_or(0, |s| s.runs_ok),
                runs_failed: st.as_ref().map_or(0, |s| s.runs_failed),
                ticks_skipped: st.as_ref().map_or(0, |s| s.ticks_skipped),
            });
        }
    }
    Ok(out)
}

/// One target of a policy as `custos status` shows it, from the local
/// replication record (nothing is read from the target).
#[derive(Clone, Debug, Serialize)]
pub struct TargetReplication {
    pub name: String,
    pub offsite: bool,
    /// When a replication last reached it, finished on it without a
    /// problem, and read back and checked everything on it.
    pub last_run: Option<String>,
    pub last_ok: Option<String>,
    pub last_verified: Option<String>,
    pub last_error: Option<String>,
    /// Snapshots complete and verified there as of the last run.
    pub snapshots_complete: u64,
    pub snapshots_verified: u64,
    /// Replication runs in a row that could not reach it, since when, and
    /// when the daemon tries it next.
    pub failures: u32,
    pub unreachable_since: Option<String>,
    pub retry_after: Option<String>,
}

/// The replication state of one policy, as of its last replication run.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyReplication {
    pub policy: String,
    pub min_copies: u32,
    /// Snapshots the record knows (complete or verified on some target).
    pub snapshots: u64,
    /// Those verified on fewer than `min_copies` targets.
    pub under_replicated: Vec<crate::replicate::SnapshotStatus>,
    pub targets: Vec<TargetReplication>,
}

/// What `custos status` shows: every job, and per policy its replication.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub jobs: Vec<JobStatus>,
    pub replication: Vec<PolicyReplication>,
}

/// The replication state of one policy from the record in `state`.
pub fn replication_status(
    policy: &Policy,
    state: &crate::state::StateDir,
) -> Result<PolicyReplication, ScheduleError> {
    use crate::replicate::ReplicationRecord;
    let record = ReplicationRecord::load(state, &policy.name).map_err(Box::new)?;
    let min_copies = crate::replicate::min_copies(policy);
    let mut ids: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
    for r in record.targets.values() {
        ids.extend(r.complete.iter().chain(r.verified.iter()));
    }
    let under_replicated = ids
        .iter()
        .map(|id| {
            let on = record
                .targets
                .iter()
                .filter(|(_, r)| r.complete.contains(id))
                .map(|(n, _)| n.clone())
                .collect();
            record.status_of(id, on, min_copies)
        })
        .filter(|s| !s.replicated)
        .collect();
    let targets = policy
        .targets
        .iter()
        .map(|t| {
            let r = record.targets.get(&t.name).cloned().unwrap_or_default();
            TargetReplication {
                name: t.name.clone(),
                offsite: t.offsite,
                snapshots_complete: r.complete.len() as u64,
                snapshots_verified: r.verified.len() as u64,
                last_run: r.last_run,
                last_ok: r.last_ok,
                last_verified: r.last_verified,
                last_error: r.last_error,
                failures: r.failures,
                unreachable_since: r.unreachable_since,
                retry_after: r.retry_after,
            }
        })
        .collect();
    Ok(PolicyReplication {
        policy: policy.name.clone(),
        min_copies,
        snapshots: ids.len() as u64,
        under_replicated,
        targets,
    })
}

/// Everything `custos status --policies DIR` shows: [`status`] and, per
/// policy, [`replication_status`].
pub fn full_status(
    dir: &Path,
    files: &StateFiles,
    state: &crate::state::StateDir,
) -> Result<Status, ScheduleError> {
    let jobs = status(dir, files)?;
    let replication = load_policies(dir)?
        .iter()
        .map(|p| replication_status(p, state))
        .collect::<Result<_, _>>()?;
    Ok(Status { jobs, replication })
}
