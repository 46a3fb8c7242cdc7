//! One retention run: what `custos retention` and the daemon's retention job
//! do.
//!
//! 1. On every target (or the one named): forget the snapshots the
//!    `[snapshots] keep_*` rules do not keep, then prune the packs no kept
//!    snapshot needs (`ops::prune`).
//! 2. Find the shred units whose retention has ended in the live store
//!    ([`due_units`](super::due_units)).
//! 3. Schedule each due unit for destruction: a pending shred request with
//!    the policy's `[shred] grace` (`shred::request`); units already pending,
//!    in progress or destroyed are left as they are.
//! 4. Destroy what is past its grace and not held (`shred::run`), which
//!    finishes any destruction an interrupted run journalled first.
//!
//! With `dry_run` nothing is forgotten, deleted, scheduled or destroyed: the
//! report says what would be. A failure on one target does not stop the
//! others or the shred steps; every failure is in the report's `errors`.

use super::{due_units, open_live_store, DueUnit};
use crate::policy::Policy;
use crate::shred::ledger::Pending;
use crate::shred::{self, Request, RunOptions, RunReport, ShredError, Unit, UnitSpec};
use crate::state::StateDir;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::time::Duration;

/// How to run retention.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The run's clock: due units and grace ends are computed against it.
    pub now: DateTime<Utc>,
    /// Report only.
    pub dry_run: bool,
    /// Forget and prune on this target only (default: every target).
    pub target: Option<String>,
    /// How long to wait for a running backup before pruning a target.
    pub lock_wait: Duration,
    /// Who runs it (user name or `job:<policy>/retention`).
    pub actor: String,
    /// The audit role (`operator`, `retention`, `job`).
    pub role: String,
}

/// What one retention run did (or, dry, would do).
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    pub policy: String,
    pub as_of: String,
    pub dry_run: bool,
    /// Forget + prune, per target.
    pub snapshots: Vec<crate::ops::prune::PruneReport>,
    /// Write-once (`worm = true`) targets: nothing is forgotten or pruned
    /// there (their objects stay until the bucket's lock expires).
    pub write_once_skipped: Vec<String>,
    /// Units whose retention has ended (subjects by pseudonym only).
    pub due: Vec<DueUnit>,
    /// Due units newly scheduled for destruction by this run.
    pub scheduled: Vec<Pending>,
    /// Every pending destruction after this run (with its grace end).
    pub pending: Vec<Pending>,
    /// Units whose destruction was journalled but not finished (in progress).
    pub in_progress: Vec<Unit>,
    /// Units under a legal hold.
    pub held: Vec<Unit>,
    /// What the destruction step did (absent on a dry run).
    pub shred: Option<RunReport>,
    /// Everything that failed, each naming what and where.
    pub errors: Vec<String>,
}

impl ApplyReport {
    /// No step failed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.shred.as_ref().is_none_or(|r| r.failed.is_empty())
    }
}

/// Runs retention for `policy` (see the module docs). `Err` only when
/// nothing could be done at all (the vault cannot be opened); partial
/// failures are in the report.
pub async fn apply(
    policy: &Policy,
    state: &StateDir,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ShredError> {
    let mut rep = ApplyReport {
        policy: policy.name.clone(),
        as_of: opts.now.to_rfc3339_opts(SecondsFormat::Secs, true),
        dry_run: opts.dry_run,
        snapshots: Vec::new(),
        write_once_skipped: Vec::new(),
        due: Vec::new(),
        scheduled: Vec::new(),
        pending: Vec::new(),
        in_progress: Vec::new(),
        held: Vec::new(),
        shred: None,
        errors: Vec::new(),
    };

    // 1. Snapshots, target by target.
    // The primary first: replication copies only snapshots the primary
    // still lists, so once it has forgotten one, no replication can bring
    // it back to an off-site target not yet pruned.
    let names: Vec<String> = match &opts.target {
        Some(t) => vec![t.clone()],
        None => {
            let primary = policy.primary().name.clone();
            std::iter::once(primary.clone())
                .chain(
                    policy
                        .targets
                        .iter()
                        .map(|t| t.name.clone())
                        .filter(|n| *n != primary),
                )
                .collect()
        }
    };
    for name in names {
        if policy.target(&name).is_some_and(|t| t.worm) {
            rep.write_once_skipped.push(name);
            continue;
        }
        let po = crate::ops::prune::PruneOptions {
            target: Some(name.clone()),
            dry_run: opts.dry_run,
            lock_wait: opts.lock_wait,
        };
        match crate::ops::prune::forget_and_prune(policy, &po).await {
            Ok(r) => rep.snapshots.push(r),
            Err(e) => rep
                .errors
                .push(format!("target `{name}`: forget and prune failed: {e}")),
        }
    }

    // 2. Due units.
    let vault = crate::ops::open_vault(policy).await?;
    match open_live_store(policy)
        .and_then(|store| due_units(policy, store.as_ref(), &vault, opts.now))
    {
        Ok(d) => rep.due = d,
        Err(e) => rep
            .errors
            .push(format!("finding the units due for destruction failed: {e}")),
    }
    drop(vault);

    // 3. Schedule them.
    if !opts.dry_run {
        let scheduled: Vec<&DueUnit> = rep.due.iter().filter(|u| u.key_present).collect();
        let reqs: Vec<Request> = scheduled
            .iter()
            .map(|u| Request {
                unit: UnitSpec::Unit(Unit {
                    kind: u.kind.key_kind(),
                    name: u.key_name.clone(),
                }),
                reason: Some(format!(
                    "retention ended {} (tables: {})",
                    u.due_since.to_rfc3339_opts(SecondsFormat::Secs, true),
                    if u.tables.is_empty() {
                        "-".to_string()
                    } else {
                        u.tables.join(", ")
                    }
                )),
                request_ref: Some(format!("retention:{}", policy.name)),
                requester: opts.actor.clone(),
                role: opts.role.clone(),
                now: false,
            })
            .collect();
        // All at once: one vault, one ledger save, one walk for the floors.
        match shred::request_many(policy, state, &reqs, opts.now).await {
            Ok(results) => {
                for (u, r) in scheduled.iter().zip(results) {
                    match r {
                        Ok(p) => rep.scheduled.push(p),
                        Err(
                            ShredError::AlreadyPending { .. }
                            | ShredError::AlreadyDestroyed { .. }
                            | ShredError::InProgress { .. },
                        ) => {}
                        Err(e) => rep.errors.push(format!(
                            "scheduling the destruction of {} `{}` failed: {e}",
                            u.kind.key_kind().as_str(),
                            u.label
                        )),
                    }
                }
            }
            Err(e) => rep.errors.push(format!(
                "scheduling the destruction of {} due unit(s) failed: {e}",
                reqs.len()
            )),
        }

        // 4. Destroy what is past its grace.
        let ro = RunOptions {
            now: opts.now,
            performer: opts.actor.clone(),
            role: opts.role.clone(),
            only: None,
        };
        match shred::run(policy, state, &ro).await {
            Ok(r) => rep.shred = Some(r),
            Err(e) => rep.errors.push(format!("the destruction run failed: {e}")),
        }
    }

    match shred::status(policy).await {
        Ok(l) => {
            rep.pending = l.pending;
            rep.in_progress = l.journal.iter().map(|j| j.request.unit.clone()).collect();
            rep.held = l.holds.iter().map(|h| h.unit.clone()).collect();
        }
        Err(e) => rep
            .errors
            .push(format!("reading the shred ledger failed: {e}")),
    }
    Ok(rep)
}
