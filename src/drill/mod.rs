//! Restore drills: prove that a policy's backups restore, and say so in a
//! signed report an auditor can check without seeing customer data.
//!
//! A drill ([`run`]) picks a snapshot (`latest`, `random` = a random older
//! one, or an id) on one target (the primary unless named), restores it with
//! the ordinary restore into scratch space under `<state>/scratch/` (see
//! [`scratch`]; never the live store), and verifies it:
//!
//! * every chunk decrypts and authenticates (the restore refuses anything
//!   else; a damaged object is then looked up with a full data check so the
//!   report names every damaged object);
//! * per table, the row count and the order-independent keyed checksum of
//!   the restored rows equal what the snapshot recorded at backup time
//!   (rows of shredded groups are counted and listed by group pseudonym,
//!   not reported as lost; the checksum is then not comparable);
//! * `PRAGMA integrity_check` and `PRAGMA foreign_key_check` pass;
//! * every `[[drill.assert]]` query returns its `expect`;
//! * the recovery time (drill start to a complete restored store) is within
//!   the policy's `drill.rto`.
//!
//! The report ([`report::DrillReport`]) is signed with the service key and
//! stored locally (`<state>/reports/<policy>/<id>.json`) and on the primary
//! target (`reports/<id>.json`), and the drill is appended to the audit log.

pub mod pg;
pub mod render;
pub mod report;
pub mod scratch;
pub mod verify;

use crate::audit::{AuditError, AuditLog, Event, Outcome};
use crate::keys::KeysError;
use crate::ops::restore::{group_keys, GroupKeyProblem, RestoreOptions, RestoreReport};
use crate::ops::{OpenRepo, OpsError};
use crate::policy::Policy;
use crate::progress::{NoProgress, Progress};
use crate::repo::cache::PackCache;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree;
use crate::repo::RepoError;
use crate::signed::SignedError;
use crate::state::{StateDir, StateError};
use chrono::{SecondsFormat, Utc};
use report::{
    DrillReport, FailureKind, Restored, Rto, ShreddedGroup, ShreddedTable, SnapshotRef, TableCheck,
    TargetRef, Verdict, MAX_LISTED, REPORT_VERSION,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Errors that keep a drill from producing a report at all. Everything that
/// goes wrong once the drill has started (a target that cannot be reached,
/// damaged data, a failed check) is a FAIL in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("drill scratch space {path}: {source} (check the state directory's permissions and free space)")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the report signing key: {0} (run `custos keys init` or fix [keys] identity)")]
    Keys(#[from] KeysError),
    #[error("signing the drill report: {0}")]
    Sign(#[from] SignedError),
    #[error("saving the drill report to {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("appending the drill to the audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("no target named `{name}` in the policy (targets: {known})")]
    UnknownTarget { name: String, known: String },
    #[error("bad --snapshot `{0}`: use latest, random or a snapshot id")]
    BadSnapshot(String),
}

/// Which snapshot a drill restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotChoice {
    /// The newest snapshot.
    Latest,
    /// A random snapshot older than the newest (the newest if it is the only one).
    Random,
    /// A snapshot id or unique id prefix.
    Id(String),
}

impl std::str::FromStr for SnapshotChoice {
    type Err = DrillError;
    fn from_str(s: &str) -> Result<Self, DrillError> {
        match s {
            "latest" => Ok(SnapshotChoice::Latest),
            "random" => Ok(SnapshotChoice::Random),
            "" => Err(DrillError::BadSnapshot(s.into())),
            id => Ok(SnapshotChoice::Id(id.into())),
        }
    }
}

/// How to run a drill.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    pub snapshot: SnapshotChoice,
    /// The target to restore from (default: the primary).
    pub target: Option<String>,
    /// Set when this drill re-runs a failed one after its damaged objects
    /// were repaired: the failed drill's id, recorded in the report.
    pub redrill_of: Option<String>,
}

impl DrillOptions {
    /// The drill to run again after every damaged object `failed` found
    /// was repaired: the same snapshot (by id) from the same target, or
    /// this drill's own choice when the damage kept it from choosing one
    /// (a snapshot's page lists in a damaged pack).
    pub fn again_after_repair(&self, failed: &DrillReport) -> DrillOptions {
        DrillOptions {
            snapshot: match &failed.snapshot {
                Some(s) => SnapshotChoice::Id(s.id.clone()),
                None => self.snapshot.clone(),
            },
            target: Some(failed.target.name.clone()),
            redrill_of: Some(failed.id.clone()),
        }
    }
}

/// A finished drill: the report, its signed text and where it was stored.
#[derive(Debug)]
pub struct DrillOutcome {
    pub report: DrillReport,
    /// The signed document, exactly as stored.
    pub signed: String,
    /// The local copy.
    pub local_path: PathBuf,
    /// The object on the primary target (`target:reports/<id>.json`), or
    /// why it could not be written there.
    pub uploaded: Result<String, String>,
    /// Every damaged object was repaired from a good copy: re-drill.
    pub repaired: bool,
}

/// What a drill does about the damaged objects it found: each one is
/// repaired on every target from a good copy (see
/// [`crate::replicate::repair_object`]; packs are checked against their
/// content hash, other objects by majority of the copies). Returns the note
/// recorded in the report's `repair` field and whether every object was
/// repaired (then the caller re-drills, recorded as a separate report).
pub async fn on_corrupt_objects(
    policy: &Policy,
    target: &str,
    objects: &[String],
) -> (String, bool) {
    for o in objects {
        tracing::error!(policy = %policy.name, target, object = %o, "drill found a damaged object");
    }
    if policy.targets.len() < 2 {
        return (
            format!(
                "not attempted: {} damaged object(s) on target `{target}`; the policy has no other target to repair from",
                objects.len()
            ),
            false,
        );
    }
    let mut repaired = 0usize;
    let mut unrepaired = Vec::new();
    for o in objects {
        let key = o.split_once(':').map(|(_, k)| k).unwrap_or(o);
        match crate::replicate::repair_object(policy, key, None).await {
            Ok((actions, problems)) => {
                let n = actions.iter().filter(|a| a.ok && a.repair).count();
                repaired += n;
                for a in actions.iter().filter(|a| a.ok && a.repair) {
                    tracing::warn!(policy = %policy.name, target = %a.target, object = %a.object, from = %a.from, "repaired a damaged object from a good copy");
                }
                if !problems.is_empty() || n == 0 {
                    unrepaired.push(o.clone());
                }
            }
            Err(e) => {
                tracing::error!(policy = %policy.name, object = %o, "repair failed: {e}");
                unrepaired.push(o.clone());
            }
        }
    }
    if unrepaired.is_empty() {
        (
            format!(
                "repaired {repaired} damaged cop{} of {} object(s) from good copies on other targets; re-drill follows",
                if repaired == 1 { "y" } else { "ies" },
                objects.len()
            ),
            true,
        )
    } else {
        (
            format!(
                "repaired {repaired} cop{}; could not repair {}: {}",
                if repaired == 1 { "y" } else { "ies" },
                unrepaired.len(),
                unrepaired.join(", ")
            ),
            false,
        )
    }
}

/// Runs one drill of `policy` (see the module docs). Returns the report,
/// PASS or FAIL; an `Err` means no report could be made.
pub async fn run(
    policy: &Policy,
    state: &StateDir,
    opts: &DrillOptions,
    progress: Arc<dyn Progress>,
) -> Result<DrillOutcome, DrillError> {
    let t0 = Instant::now();
    let started = Utc::now();
    let tcfg = match &opts.target {
        Some(n) => policy.target(n).ok_or_else(|| DrillError::UnknownTarget {
            name: n.clone(),
            known: policy
                .targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?,
        None => policy.primary(),
    };
    let signing =
        crate::keys::load_signing_key(&crate::keys::signing_key_path_for(&policy.keys.identity))?;
    let audit = AuditLog::open(&state.sub("audit")?)?;
    let scratch_root = state.sub("scratch")?;
    match scratch::sweep(&scratch_root) {
        Ok(gone) => {
            for d in gone {
                tracing::warn!(
                    "removed the scratch space of an interrupted drill: {}",
                    d.display()
                );
            }
        }
        Err(e) => tracing::warn!("cannot sweep {}: {e}", scratch_root.display()),
    }
    let id = report::new_id(started);
    let scratch =
        scratch::Scratch::create(&scratch_root, &id).map_err(|source| DrillError::Scratch {
            path: scratch_root.join(&id),
            source,
        })?;
    tracing::info!(policy = %policy.name, drill = %id, target = %tcfg.name, "drill started");

    let mut rep = DrillReport {
        version: REPORT_VERSION,
        id: id.clone(),
        policy: policy.name.clone(),
        created: String::new(),
        custos_version: crate::VERSION.to_string(),
        verdict: Verdict::Pass,
        failure: None,
        reasons: Vec::new(),
        store: policy.store.kind.as_str().to_string(),
        snapshot: None,
        target: TargetRef {
            name: tcfg.name.clone(),
            url: crate::target::redact_url(&tcfg.url),
            offsite: tcfg.offsite,
        },
        started: rfc3339(started),
        finished: String::new(),
        rto: Rto {
            target_ms: policy.drill.rto.map(|d| d.as_millis() as u64),
            ..Default::default()
        },
        restored: Restored::default(),
        tables: Vec::new(),
        integrity_check: None,
        foreign_key_check: None,
        assertions: Vec::new(),
        shredded: Vec::new(),
        corrupt_objects: Vec::new(),
        repair: None,
        redrill_of: None,
    };
    execute(policy, opts, scratch.dir(), &mut rep, progress, t0).await;
    if let Err(e) = scratch.remove() {
        fail(
            &mut rep,
            FailureKind::Other,
            format!("the scratch space could not be removed: {e}"),
        );
    }
    let mut repaired = false;
    if !rep.corrupt_objects.is_empty() {
        let (note, all) = on_corrupt_objects(policy, &rep.target.name, &rep.corrupt_objects).await;
        rep.repair = Some(note);
        repaired = all;
    }
    rep.redrill_of = opts.redrill_of.clone();
    let finished = Utc::now();
    rep.finished = rfc3339(finished);
    rep.created = rep.finished.clone();
    rep.verdict = if rep.reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };

    let signed = rep.sign(&signing)?;
    let local_path = report::local_path(&state.sub("reports")?, &policy.name, &id);
    let save = |p: &PathBuf| -> std::io::Result<()> {
        std::fs::create_dir_all(p.parent().expect("a report path has a parent"))?;
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, signed.as_bytes())?;
        std::fs::rename(&tmp, p)
    };
    save(&local_path).map_err(|source| DrillError::Save {
        path: local_path.clone(),
        source,
    })?;
    let uploaded = upload(policy, &id, &signed).await;
    if let Err(e) = &uploaded {
        tracing::error!("drill report {id} kept locally only: {e}");
    }
    let mut ev = Event::new("drill", "operator")
        .policy(&policy.name)
        .object(id.clone())
        .outcome(match rep.verdict {
            Verdict::Pass => Outcome::Ok,
            Verdict::Fail => Outcome::Failed,
        })
        .detail(format!(
            "{} target={} snapshot={} rto_ms={}",
            rep.verdict.as_str(),
            rep.target.name,
            rep.snapshot.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
            rep.rto
                .measured_ms
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into())
        ));
    if let Some(s) = &rep.snapshot {
        ev = ev.object(s.id.clone());
    }
    if !rep.corrupt_objects.is_empty() {
        ev = ev.flag("corrupt-objects");
    }
    audit.append(&ev)?;
    match rep.verdict {
        Verdict::Pass => tracing::info!(policy = %policy.name, drill = %id, "drill PASS"),
        Verdict::Fail => {
            tracing::error!(policy = %policy.name, drill = %id, reasons = ?rep.reasons, "drill FAIL")
        }
    }
    Ok(DrillOutcome {
        report: rep,
        signed,
        local_path,
        uploaded,
        repaired,
    })
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Records a reason for FAIL; integrity outranks other failures.
fn fail(rep: &mut DrillReport, kind: FailureKind, reason: String) {
    rep.reasons.push(reason);
    rep.failure = match (rep.failure, kind) {
        (Some(FailureKind::Integrity), _) | (_, FailureKind::Integrity) => {
            Some(FailureKind::Integrity)
        }
        _ => Some(FailureKind::Other),
    };
}

/// Whether an operation error means damaged or unauthentic data.
fn is_integrity(e: &OpsError) -> bool {
    let repo = |r: &RepoError| matches!(r, RepoError::Crypto { .. } | RepoError::Malformed { .. });
    match e {
        OpsError::Integrity(_) => true,
        OpsError::Repo(r) => repo(r),
        _ => false,
    }
}

fn fail_ops(rep: &mut DrillReport, doing: &str, e: &OpsError) {
    let kind = if is_integrity(e) {
        FailureKind::Integrity
    } else {
        FailureKind::Other
    };
    fail(rep, kind, format!("{doing}: {e}"));
}

/// Stores the signed report on the policy's primary target.
async fn upload(policy: &Policy, id: &str, signed: &str) -> Result<String, String> {
    let t = crate::ops::select_target(policy, None).map_err(|e| e.to_string())?;
    let path = format!("{}{id}.json", report::TARGET_PREFIX);
    t.put(&path, bytes::Bytes::from(signed.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{}:{path}", t.name))
}

/// The drill proper: select, restore, verify. Every problem becomes a
/// reason in `rep`.
async fn execute(
    policy: &Policy,
    opts: &DrillOptions,
    scratch: &std::path::Path,
    rep: &mut DrillReport,
    progress: Arc<dyn Progress>,
    t0: Instant,
) {
    let target_name = rep.target.name.clone();
    let repo = match OpenRepo::open(policy, Some(&target_name)).await {
        Ok(r) => r,
        Err(e) => return fail_ops(rep, "opening the repository", &e),
    };
    let (snap, selection) = match select(&repo, &opts.snapshot).await {
        Ok(s) => s,
        Err(e) => {
            let e = OpsError::from(e);
            fail_ops(rep, "choosing the snapshot", &e);
            // A snapshot that cannot be read (its object, or a page list
            // in a damaged pack): name what is damaged, as for a restore.
            if is_integrity(&e) {
                find_damage(policy, &target_name, rep).await;
            }
            return;
        }
    };
    rep.snapshot = Some(SnapshotRef {
        id: snap.id.clone(),
        time: snap.time.clone(),
        selection: selection.into(),
    });
    rep.store = snap.store.kind.clone();
    if snap.postgres.is_some() {
        let Some(db) = pg_scratch(policy, rep).await else {
            return;
        };
        let to = PathBuf::from(db.conn().url());
        let conn = db.conn().clone();
        restore_and_verify(
            policy,
            repo,
            snap,
            RestoreTo::Postgres(&to, &conn),
            rep,
            progress,
            t0,
        )
        .await;
        let name = db.name().to_string();
        if let Err(e) = db.drop_now().await {
            fail(
                rep,
                FailureKind::Other,
                format!("the scratch database {name} could not be dropped: {e}; the next drill drops it"),
            );
        }
        return;
    }
    let to = if snap.sqlite.is_some() {
        scratch.join("restored.db")
    } else {
        scratch.join("restored")
    };
    restore_and_verify(policy, repo, snap, RestoreTo::Path(&to), rep, progress, t0).await;
}

/// Where a drill restores to.
enum RestoreTo<'a> {
    /// A SQLite file or a folder.
    Path(&'a std::path::Path),
    /// The URL of the scratch database (as `--to`) and how to connect to it.
    Postgres(&'a std::path::Path, &'a crate::store::postgres::PgConn),
}

/// Sweeps abandoned scratch databases off the scratch server and creates
/// this drill's; `None` (with a reason in `rep`) if it cannot.
async fn pg_scratch(policy: &Policy, rep: &mut DrillReport) -> Option<pg::ScratchDb> {
    let server = match pg::scratch_server(policy) {
        Ok(s) => s,
        Err(e) => {
            fail(
                rep,
                FailureKind::Other,
                format!("the server for the scratch database: {e}"),
            );
            return None;
        }
    };
    match pg::sweep(&server, Utc::now()).await {
        Ok(gone) => {
            for n in gone {
                tracing::warn!("dropped the scratch database of an interrupted drill: {n}");
            }
        }
        Err(e) => tracing::warn!("cannot sweep abandoned scratch databases: {e}"),
    }
    match pg::ScratchDb::create(&server, &pg::db_name(&rep.id)).await {
        Ok(db) => Some(db),
        Err(e) => {
            fail(
                rep,
                FailureKind::Other,
                format!("creating the scratch database: {e}"),
            );
            None
        }
    }
}

/// Restores `snap` to `to` and verifies what was restored.
async fn restore_and_verify(
    policy: &Policy,
    repo: OpenRepo,
    snap: Snapshot,
    to: RestoreTo<'_>,
    rep: &mut DrillReport,
    progress: Arc<dyn Progress>,
    t0: Instant,
) {
    let target_name = rep.target.name.clone();
    let to_path = match to {
        RestoreTo::Path(p) | RestoreTo::Postgres(p, _) => p.to_path_buf(),
    };
    let ropts = RestoreOptions {
        target: Some(target_name.clone()),
        snapshot: snap.id.clone(),
        to: to_path.clone(),
        force: false,
        only: Default::default(),
    };
    // The restore opens the vault itself: this one is let go first, so
    // that one vault, not two, is in memory while it runs (about 110
    // bytes a customer). The metadata key checks the restored rows.
    let meta = crate::crypto::MetaKey::new(repo.vault.meta_key());
    drop(repo);
    let restored = crate::ops::restore::restore(policy, &ropts, progress).await;
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            fail_ops(rep, "restoring", &e);
            if is_integrity(&e) {
                find_damage(policy, &target_name, rep).await;
            }
            return;
        }
    };
    let rto_ms = t0.elapsed().as_millis() as u64;
    rep.rto.measured_ms = Some(rto_ms);
    if let Some(target) = rep.rto.target_ms {
        let met = rto_ms <= target;
        rep.rto.met = Some(met);
        if !met {
            fail(
                rep,
                FailureKind::Other,
                format!("recovery took {rto_ms} ms, over the objective of {target} ms (drill.rto)"),
            );
        }
    }
    rep.restored = restored_stats(&restored, rto_ms);

    if snap.sqlite.is_some() || snap.postgres.is_some() {
        let tables: Vec<TableCheck> = snap
            .record_tables()
            .iter()
            .map(|t| {
                let r = restored.tables.iter().find(|r| r.name == t.name);
                TableCheck {
                    name: t.name.clone(),
                    class: t.class.clone(),
                    rows_expected: t.rows,
                    rows_restored: r.map(|r| r.rows_restored).unwrap_or(0),
                    rows_shredded: r.map(|r| r.rows_shredded).unwrap_or(0),
                    groups_shredded: r.map(|r| r.groups_shredded).unwrap_or(0),
                    checksum_expected: t.checksum.clone(),
                    ..Default::default()
                }
            })
            .collect();
        let any_shredded = tables.iter().any(|t| t.rows_shredded > 0);
        let asserts = policy.drill.assert.clone();
        let findings = match (to, &snap.postgres, &snap.sqlite) {
            (RestoreTo::Postgres(_, conn), Some(ps), _) => {
                let f = pg::verify_postgres(conn, ps, &meta, tables, &asserts).await;
                Ok(verify::SqliteFindings {
                    tables: f.tables,
                    assertions: f.assertions,
                    errors: f.errors,
                    // PostgreSQL checks every constraint and builds every
                    // index in the restore's post-data step: a violation
                    // fails the restore itself.
                    integrity_check: None,
                    foreign_key_check: None,
                })
            }
            (_, _, Some(sq)) => {
                let sq2 = sq.clone();
                let db = to_path.clone();
                tokio::task::spawn_blocking(move || {
                    verify::verify_sqlite(&db, &sq2, &meta, tables, &asserts)
                })
                .await
            }
            _ => {
                return fail(
                    rep,
                    FailureKind::Other,
                    "a PostgreSQL snapshot restored outside a database".into(),
                )
            }
        };
        let findings = match findings {
            Ok(f) => f,
            Err(e) => {
                return fail(
                    rep,
                    FailureKind::Other,
                    format!("verification stopped: {e}"),
                )
            }
        };
        for e in &findings.errors {
            fail(rep, FailureKind::Integrity, e.clone());
        }
        for t in &findings.tables {
            if !t.count_ok {
                fail(
                    rep,
                    FailureKind::Integrity,
                    format!(
                        "table {}: {} rows restored + {} shredded, the snapshot recorded {}",
                        t.name, t.rows_restored, t.rows_shredded, t.rows_expected
                    ),
                );
            }
            if t.checksum_ok == Some(false) {
                fail(
                    rep,
                    FailureKind::Integrity,
                    format!(
                        "table {}: the checksum of the restored rows differs from the snapshot's",
                        t.name
                    ),
                );
            }
        }
        for (what, c) in [
            ("integrity_check", &findings.integrity_check),
            ("foreign_key_check", &findings.foreign_key_check),
        ] {
            if let Some(c) = c {
                if !c.ok {
                    fail(
                        rep,
                        FailureKind::Integrity,
                        format!(
                            "PRAGMA {what}: {} problem(s): {}",
                            c.problems,
                            c.details.join("; ")
                        ),
                    );
                }
            }
        }
        for (i, a) in findings.assertions.iter().enumerate() {
            if !a.passed {
                let shown = match (&a.expected, &a.actual) {
                    (Some(e), Some(v)) => format!(": expected {e}, got {v}"),
                    _ => a
                        .note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default(),
                };
                fail(
                    rep,
                    FailureKind::Other,
                    format!("drill.assert[{i}] `{}` does not hold{shown}", a.sql),
                );
            }
        }
        rep.tables = findings.tables;
        rep.integrity_check = findings.integrity_check;
        rep.foreign_key_check = findings.foreign_key_check;
        rep.assertions = findings.assertions;
        if any_shredded {
            // The vault again, for the keys destroyed: opened after the
            // restore, it knows at least what the restore's did.
            let listed = match OpenRepo::open(policy, Some(&target_name)).await {
                Ok(repo) => list_shredded(repo, &snap).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(s) => rep.shredded = s,
                Err(e) => fail_ops(rep, "listing the shredded groups", &e),
            }
        }
    } else if let Some(fs) = &snap.files {
        if restored.items != snap.stats.items || restored.bytes != fs.bytes {
            fail(
                rep,
                FailureKind::Integrity,
                format!(
                    "restored {} entries and {} bytes; the snapshot recorded {} entries and {} bytes",
                    restored.items, restored.bytes, snap.stats.items, fs.bytes
                ),
            );
        }
        if !policy.drill.assert.is_empty() {
            fail(
                rep,
                FailureKind::Other,
                "[[drill.assert]] queries need a database; this policy backs up files".into(),
            );
        }
    }
}

fn restored_stats(r: &RestoreReport, rto_ms: u64) -> Restored {
    let per_s = |n: u64| {
        if rto_ms == 0 {
            n.saturating_mul(1000)
        } else {
            ((n as u128) * 1000 / rto_ms as u128) as u64
        }
    };
    Restored {
        items: r.items,
        bytes: r.bytes,
        bytes_fetched: r.bytes_fetched,
        bytes_per_s: per_s(r.bytes),
        items_per_s: per_s(r.items),
    }
}

/// Picks the snapshot to drill.
async fn select(
    repo: &OpenRepo,
    choice: &SnapshotChoice,
) -> Result<(Snapshot, &'static str), RepoError> {
    match choice {
        SnapshotChoice::Latest => Ok((
            Snapshot::find(&repo.target, &repo.meta, "latest").await?,
            "latest",
        )),
        SnapshotChoice::Id(id) => Ok((Snapshot::find(&repo.target, &repo.meta, id).await?, "id")),
        SnapshotChoice::Random => {
            // Chosen among the heads, then only that one is read (with its
            // page lists): a damaged one fails the drill, as it should.
            let (heads, _bad) = Snapshot::heads_with_ids(&repo.target, &repo.meta).await?;
            if heads.is_empty() {
                return Err(RepoError::NoSnapshot("random".into()));
            }
            let pick = if heads.len() == 1 {
                0
            } else {
                rand::Rng::gen_range(&mut rand::thread_rng(), 0..heads.len() - 1)
            };
            let s = Snapshot::load(&repo.target, &repo.meta, &heads[pick].id).await?;
            Ok((s, "random"))
        }
    }
}

/// The objects `target:data/..`/`target:index/..` a check message names.
fn damaged_objects_named(target: &str, message: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["data/", "index/"] {
        let needle = format!("{target}:{kind}");
        let mut rest = message;
        while let Some(i) = rest.find(&needle) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric()
                        || c == '/'
                        || c == ':'
                        || c == '-'
                        || c == '_'
                        || c == '.')
                })
                .unwrap_or(tail.len());
            let o = tail[..end].trim_end_matches([':', '.']).to_string();
            if !out.contains(&o) {
                out.push(o);
            }
            rest = &tail[end..];
        }
    }
    out
}

/// After a restore (or reading the snapshot) hit damaged data: a full data
/// check of the target names every damaged object.
async fn find_damage(policy: &Policy, target: &str, rep: &mut DrillReport) {
    match crate::ops::check::check(policy, Some(target), true, Arc::new(NoProgress)).await {
        Ok(c) => {
            // A snapshot whose tree page sits in a damaged pack is reported
            // against the snapshot, naming the pack: the pack is what is
            // damaged (and what repair must replace).
            let mut by_object: std::collections::BTreeMap<String, (String, usize)> =
                std::collections::BTreeMap::new();
            for f in c
                .findings
                .iter()
                .filter(|f| f.level == crate::ops::check::Level::Error)
            {
                let named = damaged_objects_named(target, &f.message);
                let objs = if named.is_empty() {
                    vec![f.object.clone()]
                } else {
                    named
                };
                for o in objs {
                    by_object
                        .entry(o)
                        .and_modify(|(_, n)| *n += 1)
                        .or_insert_with(|| (f.message.clone(), 1));
                }
            }
            for (o, (msg, n)) in &by_object {
                rep.reasons.push(if *n > 1 {
                    format!(
                        "damaged object {o}: {msg} (and {} more finding(s) about it)",
                        n - 1
                    )
                } else {
                    format!("damaged object {o}: {msg}")
                });
            }
            let objects: Vec<String> = by_object.into_keys().collect();
            rep.corrupt_objects = objects;
        }
        Err(e) => rep.reasons.push(format!(
            "the data check that would name every damaged object failed: {e}"
        )),
    }
}

/// Lists the groups left out of the restore because their keys are gone.
async fn list_shredded(repo: OpenRepo, snap: &Snapshot) -> Result<Vec<ShreddedTable>, OpsError> {
    let tables = snap.record_tables();
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let OpenRepo {
        target,
        vault,
        meta,
        ..
    } = repo;
    // Through the index objects of the packs each window lists, not the
    // target's whole index (see `tree::WindowIndex`).
    let target = Arc::new(target);
    let mut locate = tree::WindowIndex::new(target.clone(), Arc::new(meta));
    let mut cache = PackCache::new(target, 4);
    let mut out = Vec::new();
    for t in tables {
        let mut st = ShreddedTable {
            table: t.name.clone(),
            ..Default::default()
        };
        // Window by window: a group an overlay superseded is counted once.
        for w in t.page_windows() {
            let listed = w.mark.and_then(|i| t.windows[i].packs.as_deref());
            let (groups, _) = locate
                .load_window(&mut cache, listed, &t.pages[w.range], &w.overlays)
                .await?;
            for g in &groups {
                if matches!(
                    group_keys(&vault, g, &t.name),
                    Err(GroupKeyProblem::Shredded)
                ) {
                    st.rows = st.rows.saturating_add(g.rows);
                    st.groups += 1;
                    if st.listed.len() < MAX_LISTED {
                        st.listed.push(ShreddedGroup {
                            group: hex::encode(g.g),
                            unit: g.u.to_string(),
                            rows: g.rows,
                        });
                    }
                }
            }
        }
        if st.groups > 0 {
            out.push(st);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn damage_is_attributed_to_the_named_pack() {
        let m = "primary:data/67/67cb (tree page 9b5b): malformed: primary:data/67/67cb: content does not hash";
        assert_eq!(
            super::damaged_objects_named("primary", m),
            ["primary:data/67/67cb"]
        );
        assert!(super::damaged_objects_named("primary", "no pack here").is_empty());
        assert_eq!(
            super::damaged_objects_named("dr", "dr:index/ab12 missing; dr:data/cd/cd34."),
            ["dr:data/cd/cd34", "dr:index/ab12"]
        );
    }
}
