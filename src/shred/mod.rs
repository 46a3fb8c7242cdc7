//! Crypto-shredding: data is destroyed by destroying the key of its shred
//! unit (a subject key or a (class, period) key) in every vault location,
//! then proving it and signing a certificate. See `docs/SHREDDING.md`.
//!
//! The life of a destruction:
//!
//! 1. [`request`] puts the unit in the ledger as *pending*, due after the
//!    policy's `[shred] grace` (or at once with `now`, recorded as such).
//!    [`cancel`] removes it while it is pending.
//! 2. [`run`] (the retention job, or `custos shred --run`) takes every
//!    pending unit that is due and not under a legal hold ([`hold_add`]),
//!    writes a *journal* entry (key ids and commitments, never keys) to
//!    every vault location, which also *fences* the unit (no job may read
//!    or create its key), then deletes the key from every location
//!    ([`crate::vault::Vault::destroy`]), purges stale vault objects, and
//!    proves the result ([`destroy`]): no object at any vault location holds
//!    the key, a freshly opened vault does not have it, and on every target
//!    the unit's groups in every snapshot no longer resolve to a key.
//! 3. A signed certificate ([`certificate`]) is stored locally and on the
//!    targets, an audit entry is appended, and the journal entry becomes
//!    history. A run killed after the journal was written is finished by
//!    the next run.
//!
//! Subject ids never leave this module in clear: a subject unit is named by
//! its keyed pseudonym ([`crate::crypto::subject_pseudonym`]).

pub mod certificate;
pub mod destroy;
pub mod floor;
pub mod ledger;

use crate::audit::{AuditError, AuditLog, Event, Outcome};
use crate::ops::OpsError;
use crate::policy::{DataClass, Policy};
use crate::state::{StateDir, StateError};
use crate::vault::{KeyKind, Vault, VaultError};
use chrono::{DateTime, SecondsFormat, Utc};
use ledger::{Hold, JournalEntry, Ledger, Pending};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Environment variable of a test hook: `journal` makes a run abort the
/// process right after the journal was written (before any key is
/// deleted), to test that the next run finishes the destruction. Only
/// debug builds (the test suite's) have the hook; a release build ignores
/// the variable.
pub const CRASH_HOOK_ENV: &str = "CUSTOS_TEST_CRASH_AFTER";

/// Errors of shredding. They name units by pseudonym or period, never a
/// subject id or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    #[error(transparent)]
    Vault(Box<VaultError>),
    #[error(transparent)]
    Ops(Box<OpsError>),
    #[error("signing key: {0}")]
    Keys(Box<crate::keys::KeysError>),
    #[error(transparent)]
    Audit(Box<AuditError>),
    #[error(transparent)]
    State(Box<StateError>),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid unit `{input}`: {why}")]
    InvalidUnit { input: String, why: String },
    #[error("no key of {unit} is in the vault: nothing was ever stored under it (or it was destroyed outside custos); nothing to shred")]
    UnknownUnit { unit: String },
    #[error("{unit} was already destroyed (certificate {certificate})")]
    AlreadyDestroyed { unit: String, certificate: String },
    #[error(
        "{unit} is already pending destruction (due {due}); cancel it first to change the request"
    )]
    AlreadyPending { unit: String, due: String },
    #[error("{unit} is not pending destruction: nothing to cancel")]
    NotPending { unit: String },
    #[error("{unit} is being destroyed (the journal holds it): it can no longer be cancelled; the next `shred --run` completes it")]
    InProgress { unit: String },
    #[error("{unit} is already under a legal hold ({reason})")]
    AlreadyHeld { unit: String, reason: String },
    #[error("{unit} is under no legal hold")]
    NotHeld { unit: String },
    #[error(
        "the shred ledger at {url} is unreadable: {reason}; restore it from another vault location"
    )]
    LedgerCorrupt { url: String, reason: String },
    #[error("the destruction of {unit} is NOT complete: {why}; run `custos shred --run` again")]
    Incomplete { unit: String, why: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("{unit} may not be destroyed before {earliest}: {why}; the minimum retention recorded in the shred ledger cannot be lowered by editing the policy, so request it again after that time")]
    BelowFloor {
        unit: String,
        earliest: String,
        why: String,
    },
    #[error("cannot check the minimum retention of {unit}: {why}; nothing was scheduled; repair the primary target and try again")]
    FloorUnverifiable { unit: String, why: String },
}

macro_rules! boxed_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for ShredError {
            fn from(e: $t) -> Self {
                ShredError::$v(Box::new(e))
            }
        }
    )*};
}
boxed_from!(VaultError => Vault, OpsError => Ops, AuditError => Audit, StateError => State,
    crate::keys::KeysError => Keys);

impl From<crate::target::TargetError> for ShredError {
    fn from(e: crate::target::TargetError) -> Self {
        ShredError::Ops(Box::new(e.into()))
    }
}

/// A shred unit: the kind of its key and the key's name in the vault (a
/// subject pseudonym, `class:period` or `class:epoch`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    pub kind: KeyKind,
    pub name: String,
}

impl Unit {
    /// The data class of a period or epoch unit (`None` for subjects, whose
    /// key covers every class).
    pub fn class(&self) -> Option<&str> {
        match self.kind {
            KeyKind::Subject => None,
            _ => self.name.split(':').next(),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// How an operator or job names a unit.
#[derive(Clone, PartialEq, Eq)]
pub enum UnitSpec {
    /// A subject id in clear (turned into its pseudonym at once).
    Subject(String),
    /// `CLASS:LABEL`, e.g. `consumption:2026-03`.
    Period(String),
    /// A unit already named as in the vault (the retention job's list).
    Unit(Unit),
}

impl fmt::Debug for UnitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitSpec::Subject(_) => f.write_str("Subject(<redacted>)"),
            UnitSpec::Period(p) => write!(f, "Period({p})"),
            UnitSpec::Unit(u) => write!(f, "Unit({u})"),
        }
    }
}

impl UnitSpec {
    /// The unit, with a subject id replaced by its pseudonym.
    pub fn resolve(&self, vault: &Vault) -> Result<Unit, ShredError> {
        match self {
            UnitSpec::Subject(id) => {
                if id.is_empty() {
                    return Err(ShredError::InvalidUnit {
                        input: String::new(),
                        why: "the subject id is empty".into(),
                    });
                }
                Ok(Unit {
                    kind: KeyKind::Subject,
                    name: crate::crypto::subject_pseudonym(vault.pseudonym_key(), id),
                })
            }
            UnitSpec::Period(p) => parse_period(p),
            UnitSpec::Unit(u) => Ok(u.clone()),
        }
    }
}

/// Parses `CLASS:YYYY`, `CLASS:YYYY-MM` or `CLASS:YYYY-MM-DD`.
pub fn parse_period(s: &str) -> Result<Unit, ShredError> {
    let bad = |why: &str| ShredError::InvalidUnit {
        input: s.to_string(),
        why: why.to_string(),
    };
    let (class, label) = s
        .split_once(':')
        .ok_or_else(|| bad("expected CLASS:PERIOD, e.g. consumption:2026-03"))?;
    if !DataClass::ALL.iter().any(|c| c.as_str() == class) {
        return Err(bad(
            "the class must be identity, business, service or consumption",
        ));
    }
    let shape_ok = match label.len() {
        4 => label.bytes().all(|c| c.is_ascii_digit()),
        7 | 10 => label.bytes().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == b'-'
            } else {
                c.is_ascii_digit()
            }
        }),
        _ => false,
    };
    if !shape_ok {
        return Err(bad(
            "the period must be YYYY, YYYY-MM or YYYY-MM-DD as the policy's `every` buckets it",
        ));
    }
    Ok(Unit {
        kind: KeyKind::Period,
        name: s.to_string(),
    })
}

/// RFC 3339 UTC with seconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A shred request.
#[derive(Clone, Debug)]
pub struct Request {
    pub unit: UnitSpec,
    pub reason: Option<String>,
    pub request_ref: Option<String>,
    /// Who asks (user name or `job:<policy>/retention`).
    pub requester: String,
    /// The requester's audit role (`operator`, `retention`, `admin`, `job`).
    pub role: String,
    /// Skip the grace period (an explicit erasure request).
    pub now: bool,
}

fn audit(state: &StateDir, ev: Event) -> Result<(), ShredError> {
    AuditLog::open(&state.sub("audit")?)?.append(&ev)?;
    Ok(())
}

/// Appends a failure entry for `op`, keeping the original error.
/// Appends the audit entry of a failed shred operation by `actor`.
fn audit_failure(
    state: &StateDir,
    policy: &Policy,
    op: &str,
    (role, actor): (&str, &str),
    e: &ShredError,
) {
    let ev = Event::new(op, role)
        .actor(actor.to_string())
        .policy(&policy.name)
        .outcome(Outcome::Failed)
        .detail(e.to_string());
    if let Err(ae) = audit(state, ev) {
        tracing::error!(error = %ae, "cannot append to the audit log");
    }
}

/// Appends the audit entry of a ledger operation (cancel, hold add/remove)
/// by `actor` on `unit`, or of its failure.
fn audit_ledger_op(
    state: &StateDir,
    policy: &Policy,
    op: &str,
    actor: &str,
    r: Result<&Unit, &ShredError>,
) -> Result<(), ShredError> {
    match r {
        Ok(unit) => audit(
            state,
            Event::new(op, "operator")
                .actor(actor.to_string())
                .policy(&policy.name)
                .object(unit.to_string()),
        ),
        Err(e) => {
            audit_failure(state, policy, op, ("operator", actor), e);
            Ok(())
        }
    }
}

/// Records a destruction request as pending (due after the grace, or at
/// once with `now`). Refuses a unit that has no key, is already pending,
/// in progress or destroyed. Appends an audit entry (also on failure).
pub async fn request(
    policy: &Policy,
    state: &StateDir,
    req: &Request,
    at: DateTime<Utc>,
) -> Result<Pending, ShredError> {
    let mut r = request_many(policy, state, std::slice::from_ref(req), at).await?;
    r.pop().expect("one result per request")
}

/// Records several destruction requests (the retention job's, which may
/// be thousands of customers at once): each as [`request`] would, in
/// order, with the vault opened, the ledger loaded and saved, and the
/// subjects' minimum retention found in one walk of the primary target,
/// once for all of them (none of it for no request). One result per request; each gets its audit
/// entry. The error is a failure of what they share (nothing is
/// recorded then, and each request is audited as failed).
pub async fn request_many(
    policy: &Policy,
    state: &StateDir,
    reqs: &[Request],
    at: DateTime<Utc>,
) -> Result<Vec<Result<Pending, ShredError>>, ShredError> {
    let r = request_many_inner(policy, reqs, at).await;
    match &r {
        Ok(results) => {
            for (req, r) in reqs.iter().zip(results) {
                match r {
                    Ok(p) => {
                        let mut ev = Event::new("shred.request", &req.role)
                            .actor(req.requester.clone())
                            .policy(&policy.name)
                            .object(p.unit.to_string())
                            .detail(format!("due {}", p.due));
                        if p.now {
                            ev = ev.flag("grace-skipped");
                        }
                        audit(state, ev)?;
                    }
                    Err(e) => audit_failure(
                        state,
                        policy,
                        "shred.request",
                        (&req.role, &req.requester),
                        e,
                    ),
                }
            }
        }
        Err(e) => {
            for req in reqs {
                audit_failure(
                    state,
                    policy,
                    "shred.request",
                    (&req.role, &req.requester),
                    e,
                );
            }
        }
    }
    r
}

async fn request_many_inner(
    policy: &Policy,
    reqs: &[Request],
    at: DateTime<Utc>,
) -> Result<Vec<Result<Pending, ShredError>>, ShredError> {
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    let vault = crate::ops::open_vault(policy).await?;
    let mut ledger = Ledger::load(&vault).await?;
    let mut changed = floor::sync(&mut ledger, policy, &reqs[0].requester, at);
    // Each request's unit, if it may be scheduled (but for its floor).
    let mut results: Vec<Result<Unit, ShredError>> = Vec::with_capacity(reqs.len());
    for req in reqs {
        let r = req.unit.resolve(&vault).and_then(|unit| {
            if let Some(d) = ledger.done_of(&unit) {
                return Err(ShredError::AlreadyDestroyed {
                    unit: unit.to_string(),
                    certificate: d.certificate.clone(),
                });
            }
            if ledger.journal_of(&unit).is_some() {
                return Err(ShredError::InProgress {
                    unit: unit.to_string(),
                });
            }
            if !vault.holds(unit.kind, &unit.name) {
                return Err(ShredError::UnknownUnit {
                    unit: unit.to_string(),
                });
            }
            Ok(unit)
        });
        results.push(r);
    }
    let subjects = if ledger.floors.is_empty() {
        floor::SubjectFloors::default()
    } else {
        let units: Vec<&Unit> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let primary = crate::ops::open_target(policy, policy.primary(), false)?;
        floor::subject_floors(&primary, &vault, &ledger, &units).await?
    };
    let mut out = Vec::with_capacity(reqs.len());
    for (req, r) in reqs.iter().zip(results) {
        let r = r.and_then(|unit| {
            // Also a request earlier in this batch.
            if let Some(p) = ledger.pending_of(&unit) {
                return Err(ShredError::AlreadyPending {
                    unit: unit.to_string(),
                    due: p.due.clone(),
                });
            }
            let grace = if req.now {
                chrono::Duration::zero()
            } else {
                chrono::Duration::from_std(policy.shred.grace).unwrap_or(chrono::Duration::MAX)
            };
            let due = at
                .checked_add_signed(grace)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            floor::check_with(&ledger, &unit, due, &subjects)?;
            let p = Pending {
                unit,
                requested: rfc3339(at),
                due: rfc3339(due),
                now: req.now,
                requester: req.requester.clone(),
                reason: req.reason.clone(),
                request_ref: req.request_ref.clone(),
            };
            ledger.pending.push(p.clone());
            changed = true;
            Ok(p)
        });
        out.push(r);
    }
    if changed {
        ledger.save(&vault).await?;
    }
    Ok(out)
}

/// Cancels a pending destruction (within its grace period: once a run has
/// journalled it, it can no longer be cancelled).
pub async fn cancel(
    policy: &Policy,
    state: &StateDir,
    unit: &UnitSpec,
    actor: &str,
) -> Result<Pending, ShredError> {
    let r = async {
        let vault = crate::ops::open_vault(policy).await?;
        let unit = unit.resolve(&vault)?;
        let mut ledger = Ledger::load(&vault).await?;
        if ledger.journal_of(&unit).is_some() {
            return Err(ShredError::InProgress {
                unit: unit.to_string(),
            });
        }
        let Some(pos) = ledger.pending.iter().position(|p| p.unit == unit) else {
            return Err(ShredError::NotPending {
                unit: unit.to_string(),
            });
        };
        let p = ledger.pending.remove(pos);
        ledger.save(&vault).await?;
        Ok(p)
    }
    .await;
    audit_ledger_op(
        state,
        policy,
        "shred.cancel",
        actor,
        r.as_ref().map(|p| &p.unit),
    )?;
    r
}

/// Places a legal hold on a unit.
pub async fn hold_add(
    policy: &Policy,
    state: &StateDir,
    unit: &UnitSpec,
    reason: &str,
    actor: &str,
    at: DateTime<Utc>,
) -> Result<Hold, ShredError> {
    let r = async {
        let vault = crate::ops::open_vault(policy).await?;
        let unit = unit.resolve(&vault)?;
        let mut ledger = Ledger::load(&vault).await?;
        if let Some(h) = ledger.hold_of(&unit) {
            return Err(ShredError::AlreadyHeld {
                unit: unit.to_string(),
                reason: h.reason.clone(),
            });
        }
        let h = Hold {
            unit,
            reason: reason.to_string(),
            added: rfc3339(at),
            by: actor.to_string(),
        };
        ledger.holds.push(h.clone());
        ledger.save(&vault).await?;
        Ok(h)
    }
    .await;
    audit_ledger_op(
        state,
        policy,
        "hold.add",
        actor,
        r.as_ref().map(|h| &h.unit),
    )?;
    r
}

/// Lifts a legal hold.
pub async fn hold_remove(
    policy: &Policy,
    state: &StateDir,
    unit: &UnitSpec,
    actor: &str,
) -> Result<Hold, ShredError> {
    let r = async {
        let vault = crate::ops::open_vault(policy).await?;
        let unit = unit.resolve(&vault)?;
        let mut ledger = Ledger::load(&vault).await?;
        let Some(pos) = ledger.holds.iter().position(|h| h.unit == unit) else {
            return Err(ShredError::NotHeld {
                unit: unit.to_string(),
            });
        };
        let h = ledger.holds.remove(pos);
        ledger.save(&vault).await?;
        Ok(h)
    }
    .await;
    audit_ledger_op(
        state,
        policy,
        "hold.remove",
        actor,
        r.as_ref().map(|h| &h.unit),
    )?;
    r
}

/// The ledger as it stands (pending, holds, in progress, history).
pub async fn status(policy: &Policy) -> Result<Ledger, ShredError> {
    let vault = crate::ops::open_vault(policy).await?;
    Ledger::load(&vault).await
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run's "now": pending units due at or before it are destroyed.
    pub now: DateTime<Utc>,
    /// Who performs the run (user name or `job:<policy>/retention`).
    pub performer: String,
    /// The audit role (`operator`, `retention`).
    pub role: String,
    /// Only this unit (and any journalled destruction, which is always
    /// finished first).
    pub only: Option<Unit>,
}

/// One destruction done by a run.
#[derive(Clone, Debug, Serialize)]
pub struct Destroyed {
    pub unit: Unit,
    pub certificate: String,
    /// It was started by an earlier, interrupted run.
    pub resumed: bool,
    pub groups_unreadable: u64,
    pub rows_unreadable: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub destroyed: Vec<Destroyed>,
    /// Due but under a legal hold: kept pending.
    pub held: Vec<Unit>,
    /// Still within their grace period.
    pub waiting: Vec<Pending>,
    /// Failures: (unit, why). They stay pending or journalled.
    pub failed: Vec<(Unit, String)>,
    /// Due, but their records are younger than the minimum retention
    /// recorded in the ledger: kept pending, (unit, why).
    pub below_floor: Vec<(Unit, String)>,
}

/// Destroys every journalled unit (finishing interrupted runs) and every
/// pending unit whose grace has ended and that is not held. Holds the
/// backup lock of every target meanwhile, so no backup writes the vault
/// concurrently. Each destruction yields a certificate and an audit entry.
pub async fn run(
    policy: &Policy,
    state: &StateDir,
    opts: &RunOptions,
) -> Result<RunReport, ShredError> {
    let r = run_inner(policy, state, opts).await;
    if let Err(e) = &r {
        audit_failure(state, policy, "shred.run", (&opts.role, &opts.performer), e);
    }
    r
}

async fn run_inner(
    policy: &Policy,
    state: &StateDir,
    opts: &RunOptions,
) -> Result<RunReport, ShredError> {
    let locks = crate::ops::lock::AllLocks::acquire(policy).await?;
    let r = run_locked(policy, state, opts, &locks.targets()).await;
    locks.release().await;
    r
}

/// Records a unit whose destruction failed in this run (it stays
/// journalled for the next).
fn failed_unit(
    state: &StateDir,
    policy: &Policy,
    opts: &RunOptions,
    report: &mut RunReport,
    unit: &Unit,
    e: &ShredError,
) -> Result<(), ShredError> {
    let ev = Event::new("shred", &opts.role)
        .actor(opts.performer.clone())
        .policy(&policy.name)
        .object(unit.to_string())
        .outcome(Outcome::Failed)
        .detail(e.to_string());
    audit(state, ev)?;
    report.failed.push((unit.clone(), e.to_string()));
    Ok(())
}

/// `targets`: the policy's targets, opened, in its order.
async fn run_locked(
    policy: &Policy,
    state: &StateDir,
    opts: &RunOptions,
    targets: &[crate::target::Target],
) -> Result<RunReport, ShredError> {
    let primary = policy
        .targets
        .iter()
        .position(|t| !t.offsite)
        .and_then(|i| targets.get(i))
        .ok_or_else(|| ShredError::Certificate("the policy has no primary target".into()))?;
    let mut vault = crate::ops::open_vault(policy).await?;
    let mut ledger = Ledger::load(&vault).await?;
    let mut report = RunReport::default();
    floor::sync(&mut ledger, policy, &opts.performer, opts.now);

    // 1. Journal every due, unheld pending unit (one save for all). The
    // subjects' minimum retention is found in one walk of the primary
    // target for all of them, their keys in one pass over the vault.
    let mut sorted = Vec::new();
    for p in std::mem::take(&mut ledger.pending) {
        let due = if opts.only.as_ref().is_some_and(|u| *u != p.unit) {
            false
        } else if parse_time(&p.due) > opts.now {
            report.waiting.push(p.clone());
            false
        } else if ledger.hold_of(&p.unit).is_some() {
            report.held.push(p.unit.clone());
            false
        } else {
            true
        };
        sorted.push((p, due));
    }
    let due: Vec<&Unit> = sorted
        .iter()
        .filter(|(_, d)| *d)
        .map(|(p, _)| &p.unit)
        .collect();
    let (floors, walk_failed) = match floor::subject_floors(primary, &vault, &ledger, &due).await {
        Ok(f) => (f, None),
        Err(e) => (floor::SubjectFloors::default(), Some(e.to_string())),
    };
    let unit_keys = vault.key_ids_of(due.iter().map(|u| (u.kind, u.name.as_str())));
    let mut keep = Vec::new();
    for (p, due) in sorted {
        if !due {
            keep.push(p);
            continue;
        }
        let floor = match &walk_failed {
            Some(e) if p.unit.kind == KeyKind::Subject => Err(e.clone()),
            _ => floor::check_with(&ledger, &p.unit, opts.now, &floors).map_err(|e| e.to_string()),
        };
        if let Err(e) = floor {
            report.below_floor.push((p.unit.clone(), e));
            keep.push(p);
            continue;
        }
        let mut key_ids = Vec::new();
        let mut commitments = Vec::new();
        for id in unit_keys
            .get(&(p.unit.kind, p.unit.name.clone()))
            .into_iter()
            .flatten()
        {
            if let Some(k) = vault.key(id) {
                key_ids.push(*id);
                commitments.push(hex::encode(k.commitment()));
            }
        }
        if key_ids.is_empty() {
            report
                .failed
                .push((p.unit.clone(), "no key of this unit is in the vault".into()));
            keep.push(p);
            continue;
        }
        ledger.journal.push(JournalEntry {
            request: p,
            key_ids,
            commitments,
            started: rfc3339(Utc::now()),
            performer: opts.performer.clone(),
        });
    }
    ledger.pending = keep;
    ledger.save(&vault).await?;
    if cfg!(debug_assertions)
        && std::env::var(CRASH_HOOK_ENV).as_deref() == Ok("journal")
        && !ledger.journal.is_empty()
    {
        eprintln!("{CRASH_HOOK_ENV}=journal: aborting after the journal was written (test hook)");
        std::process::abort();
    }

    // 2. Destroy, prove, certify each journalled unit.
    let journal = ledger.journal.clone();
    let fenced_before: Vec<Unit> = vault
        .fences()
        .into_iter()
        .map(|f| Unit {
            kind: f.kind,
            name: f.name,
        })
        .collect();
    // The keys of every unit first, one unit after the other (each is
    // persisted at every vault location), then one search of the vault for
    // all of them; then the proof of all of them together, one walk of
    // each target for every unit.
    let entries: Vec<&JournalEntry> = journal.iter().collect();
    let mut gone = Vec::new();
    for (j, r) in entries
        .iter()
        .zip(destroy::destroy_keys(&mut vault, &entries).await)
    {
        match r {
            Ok(g) => gone.push((*j, g)),
            Err(e) => failed_unit(state, policy, opts, &mut report, &j.request.unit, &e)?,
        }
    }
    let proved: Vec<&JournalEntry> = gone.iter().map(|(j, _)| *j).collect();
    // The proof opens the vault afresh from every location, and the run
    // goes on with that one: this run's is let go first, so that two
    // vaults of every customer's key are not held at once.
    drop(vault);
    let (outcomes, vault) = destroy::prove(policy, targets, gone).await;
    for (j, r) in proved.into_iter().zip(outcomes) {
        let unit = j.request.unit.clone();
        let resumed = fenced_before.contains(&unit);
        match r {
            Ok(outcome) => {
                let cert =
                    certificate::issue(policy, state, targets, j, &outcome, opts.now).await?;
                let mut ev = Event::new("shred", &opts.role)
                    .actor(opts.performer.clone())
                    .policy(&policy.name)
                    .object(cert.id.clone())
                    .object(unit.to_string())
                    .detail(format!(
                        "cryptographic erase: {} key(s) destroyed at {} vault location(s); {} group(s), {} row(s) unreadable",
                        j.key_ids.len(),
                        outcome.vault.locations.len(),
                        outcome.groups_unreadable(),
                        outcome.rows_unreadable()
                    ));
                if j.request.now {
                    ev = ev.flag("grace-skipped");
                }
                if resumed {
                    ev = ev.flag("resumed");
                }
                audit(state, ev)?;
                ledger.journal.retain(|x| x.request.unit != unit);
                ledger.history.push(ledger::Done {
                    unit: unit.clone(),
                    certificate: cert.id.clone(),
                    destroyed: cert.created.clone(),
                });
                let vault = vault.as_ref().ok_or_else(|| {
                    ShredError::Certificate("the vault opened for the proof is gone".into())
                })?;
                ledger.save(vault).await?;
                report.destroyed.push(Destroyed {
                    unit,
                    certificate: cert.id,
                    resumed,
                    groups_unreadable: outcome.groups_unreadable(),
                    rows_unreadable: outcome.rows_unreadable(),
                });
            }
            Err(e) => failed_unit(state, policy, opts, &mut report, &unit, &e)?,
        }
    }
    Ok(report)
}
