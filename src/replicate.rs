//! Replication: bring every target of a policy up to date, verify what each
//! holds, and repair it from a good copy (spec: docs/REPLICATION.md).
//!
//! Replication works on stored objects, never on their contents: it lists
//! every target, copies the objects a target lacks, and never needs a key.
//! The objects are content-addressed or written once, so a copy is
//! idempotent and a run can be repeated or resumed at any point.
//!
//! # Order of writes
//! On every target, in phases: the marker (if missing), then packs
//! (`data/`), then index objects (`index/`), then snapshot objects
//! (`snapshots/`), then the public documents: signed drill reports
//! (`reports/`), destruction certificates (`certificates/`) and audit log
//! segments (`audit/`). A phase starts when the previous one has finished on
//! every target, and snapshots are copied to a target only if every pack and
//! index object of the earlier phases reached it. Each target is listed
//! snapshots first, packs after: a snapshot found in a listing was written
//! after its packs, so its packs are in the later listing. Together this
//! keeps every target valid at every instant: it never lists a snapshot it
//! cannot restore. `locks/` are never copied, and the key vault is not a
//! target (its locations are kept by the vault itself).
//!
//! # Snapshots and retention
//! Retention forgets snapshots target by target, primary first. So that a
//! run in between never copies a forgotten snapshot back, the primary's
//! listing decides which snapshots are replicated: one it does not list is
//! neither copied nor checked (reported in
//! [`ReplicationReport::offsite_only`]), and a snapshot copied off-site is
//! deleted again if the primary no longer holds it once the copy is
//! written. [`ReplicateOptions::restore_primary`] lifts this for the
//! recovery of a primary that lost snapshots.
//!
//! # What is checked
//! * A pack is good when its bytes hash (plain BLAKE3) to its name.
//! * An index or snapshot object is good when it opens under the metadata
//!   key (if [`ReplicateOptions::meta`] is given); without the key, copies
//!   are compared by their bytes and the majority wins (ties: the primary).
//!   Reports, certificates and audit segments are always compared so (they
//!   are signed, but replication does not hold the public key).
//! * Without `verify`, only copies whose listed size differs from the
//!   others are read and checked; with `verify`, every copy on every target
//!   is read.
//!
//! A copy read from a source is checked before it is written anywhere, so
//! a corrupt object is never propagated.
//!
//! # The replication record
//! Which snapshots are complete and verified on which target is kept in the
//! local state directory (`replication/<policy>.json`, [`ReplicationRecord`]),
//! not on the targets: replication writes nothing unencrypted to a target
//! but copies of its marker and of the public documents the other
//! commands wrote.

use crate::crypto::{Id, MetaKey};
use crate::ops::{open_target, OpsError};
use crate::policy::{Policy, DEFAULT_REPLICATION_CONCURRENCY};
use crate::repo::marker::{RepoMarker, MARKER_PATH};
use crate::state::{StateDir, StateError};
use crate::target::{redact_url, Target, TargetError};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors that stop a replication run before it starts, or that concern
/// the local replication record. Failures of one target are not errors:
/// they are reported in [`ReplicationReport`] while the other targets are
/// served.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error(transparent)]
    Ops(Box<OpsError>),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("replication record {path}: {why}; move it aside (it only holds status, never data) and run `custos replicate --verify`")]
    Record { path: PathBuf, why: String },
    #[error("`{0}` is not a replicated object (expected custos-repo.json, data/<xx>/<pack id>, index/<pack id> or snapshots/<id>)")]
    NotAnObject(String),
    #[error("no target named `{0}` in the policy")]
    UnknownTarget(String),
}

impl From<OpsError> for ReplicateError {
    fn from(e: OpsError) -> Self {
        ReplicateError::Ops(Box::new(e))
    }
}

/// How a run behaves.
#[derive(Default)]
pub struct ReplicateOptions {
    /// Read back and check every copy on every target (not only those whose
    /// size differs).
    pub verify: bool,
    /// The repository metadata key: index and snapshot objects are then
    /// authenticated instead of compared by bytes.
    pub meta: Option<Arc<MetaKey>>,
    /// Where the replication record is read and updated (none: not kept).
    pub state: Option<StateDir>,
    /// How many times a target that does not answer is tried before it is
    /// reported unreachable (default 3; each try already retries transient
    /// errors, see `target`).
    pub attempts: Option<u32>,
    /// The pause before the second try; it doubles each time (default 1 s).
    pub backoff: Option<Duration>,
    /// Overrides `[replication] concurrency`.
    pub concurrency: Option<u32>,
    /// Overrides `[replication] max_bytes_per_sec`.
    pub max_bytes_per_sec: Option<u64>,
    /// Copy snapshots the primary does not list to it too (disaster
    /// recovery of a primary that lost them). Off by default: the primary's
    /// snapshot listing decides which snapshots are replicated, so that a
    /// snapshot forgotten there is never copied back (see the module docs).
    pub restore_primary: bool,
    /// Skip, without trying, a target that earlier runs found unreachable
    /// until its `retry_after` in the record has passed; after each run
    /// that cannot reach it, wait `base × 2^(failures-1)` (at most 64 ×
    /// `base`). The daemon sets it; `custos replicate` tries every target.
    pub retry_backoff: Option<Duration>,
}

/// Why an object was written to a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The target did not hold the object.
    Missing,
    /// The listed size differs from the good copy's.
    SizeMismatch,
    /// A pack whose bytes do not hash to its name.
    HashMismatch,
    /// An index or snapshot object that does not open under the metadata key.
    Unauthentic,
    /// An index or snapshot object whose bytes differ from most copies
    /// (checked without the metadata key).
    Differs,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::SizeMismatch => "size mismatch",
            Reason::HashMismatch => "hash mismatch",
            Reason::Unauthentic => "fails authentication",
            Reason::Differs => "differs from the other copies",
        }
    }
}

/// One object written to one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Action {
    pub target: String,
    pub object: String,
    pub reason: Reason,
    /// The target the good copy came from.
    pub from: String,
    pub bytes: u64,
    /// A repair (a damaged copy, or an object the primary lost), as opposed
    /// to an ordinary copy of something new.
    pub repair: bool,
    /// Whether the write succeeded.
    pub ok: bool,
}

/// An object that could not be made good on a target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Problem {
    pub target: String,
    pub object: String,
    pub message: String,
}

/// One target after a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    pub offsite: bool,
    /// Whether the target answered throughout the run.
    pub reachable: bool,
    /// Why it did not, or what failed on it.
    pub error: Option<String>,
    /// Snapshots listed on it after the run.
    pub snapshots: Vec<String>,
    /// Objects and bytes it holds after the run (as listed).
    pub objects: u64,
    pub bytes: u64,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_repaired: u64,
    /// Copies read back and checked on it (with `verify`: all of them).
    pub objects_checked: u64,
    /// Snapshots of the primary it does not hold.
    pub lag: u64,
    /// New snapshots were held back from it because an earlier object
    /// failed to reach it.
    pub snapshots_held_back: bool,
    /// Not tried in this run: earlier runs found it unreachable and its
    /// retry time has not come (see [`ReplicateOptions::retry_backoff`]).
    #[serde(default)]
    pub skipped: bool,
}

impl TargetReport {
    /// A target about which nothing has been listed, copied or checked yet:
    /// reachable, no error, every count zero.
    pub fn empty(name: impl Into<String>, url: impl Into<String>, offsite: bool) -> TargetReport {
        TargetReport {
            name: name.into(),
            url: url.into(),
            offsite,
            reachable: true,
            error: None,
            snapshots: Vec::new(),
            objects: 0,
            bytes: 0,
            objects_copied: 0,
            bytes_copied: 0,
            objects_repaired: 0,
            objects_checked: 0,
            lag: 0,
            snapshots_held_back: false,
            skipped: false,
        }
    }
}

/// Whether one snapshot is safe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub id: String,
    /// Targets that list it.
    pub on: Vec<String>,
    /// Targets where it is complete and verified (per the record).
    pub verified_on: Vec<String>,
    pub min_copies: u32,
    /// Complete and verified on at least `min_copies` targets.
    pub replicated: bool,
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub policy: String,
    pub verify: bool,
    /// Index and snapshot objects were authenticated with the metadata key.
    pub authenticated: bool,
    pub min_copies: u32,
    pub targets: Vec<TargetReport>,
    /// Every object written, copies and repairs.
    pub actions: Vec<Action>,
    pub problems: Vec<Problem>,
    pub snapshots: Vec<SnapshotStatus>,
    /// Snapshots an off-site target lists but the primary does not
    /// (forgotten there and not yet pruned off-site, or lost on the
    /// primary): neither copied nor checked, see
    /// [`ReplicateOptions::restore_primary`].
    #[serde(default)]
    pub offsite_only: Vec<String>,
    /// Every target reachable and every object good everywhere.
    pub ok: bool,
    pub duration_s: f64,
}

impl ReplicationReport {
    /// The targets that were unreachable or still hold a problem.
    pub fn failed_targets(&self) -> Vec<&str> {
        self.targets
            .iter()
            .filter(|t| !t.reachable || t.error.is_some())
            .map(|t| t.name.as_str())
            .collect()
    }

    /// The actions that were repairs.
    pub fn repairs(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.repair)
    }
}

// ---------------------------------------------------------------------------
// Object kinds and checks

/// The replication phase of an object, in write order; `None` for objects
/// that are not replicated (locks, unknown).
fn phase_of(key: &str) -> Option<usize> {
    if key == MARKER_PATH {
        return Some(0);
    }
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["data", xx, id] if Id::from_hex(id).is_some() && id.starts_with(xx) && xx.len() == 2 => {
            Some(1)
        }
        ["index", id] if Id::from_hex(id).is_some() => Some(2),
        ["snapshots", id] if !id.is_empty() => Some(SNAPSHOT_PHASE),
        ["reports" | "certificates", f] if f.ends_with(".json") && f.len() > 5 => Some(DOC_PHASE),
        ["audit", f] if f.ends_with(".jsonl") && f.len() > 6 => Some(DOC_PHASE),
        _ => None,
    }
}

/// The phase of snapshot objects: written last of the repository's own
/// objects, held back on a target that missed an earlier object.
const SNAPSHOT_PHASE: usize = 3;
/// Public signed documents (drill reports, certificates) and audit log
/// segments: plaintext, write-once, needed by no snapshot.
const DOC_PHASE: usize = 4;
const PHASES: usize = 5;

/// What a check of one copy found.
enum Verdict {
    Good,
    Bad(Reason),
    /// Nothing in the bytes alone says (index or snapshot without a key).
    Unknown,
}

fn check_copy(key: &str, bytes: &[u8], meta: Option<&MetaKey>) -> Verdict {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["data", _, id] => match Id::from_hex(id) {
            Some(want) if Id::hash(bytes) == want => Verdict::Good,
            _ => Verdict::Bad(Reason::HashMismatch),
        },
        ["index", id] => match meta {
            Some(m) => match m.open("index", id, bytes) {
                Ok(_) => Verdict::Good,
                Err(_) => Verdict::Bad(Reason::Unauthentic),
            },
            None => Verdict::Unknown,
        },
        ["snapshots", id] => match meta {
            Some(m) => match m.open("snapshot", id, bytes) {
                Ok(_) => Verdict::Good,
                Err(_) => Verdict::Bad(Reason::Unauthentic),
            },
            None => Verdict::Unknown,
        },
        ["reports" | "certificates" | "audit", _] => {
            // Signed documents and audit segments: their signatures need
            // the public key, which replication does not hold; copies are
            // compared by bytes (the majority wins, ties go to the primary).
            Verdict::Unknown
        }
        _ => {
            // The marker: plaintext JSON. Each target has its own (a target
            // initialised later may carry another repo id), so only its
            // shape is checked.
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(v) if v.get("format").and_then(|f| f.as_str()) == Some("custos-repo") => {
                    Verdict::Good
                }
                _ => Verdict::Bad(Reason::Differs),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bandwidth cap

/// Paces writes so that the bytes written per second stay under a cap:
/// each transfer reserves its share of time and starts when its slot comes.
struct RateLimit {
    rate: Option<u64>,
    next: Mutex<Instant>,
}

impl RateLimit {
    fn new(rate: Option<u64>) -> Self {
        RateLimit {
            rate,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self, n: u64) {
        let Some(rate) = self.rate else { return };
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

// ---------------------------------------------------------------------------
// The run

/// One target during a run.
struct Node {
    target: Target,
    /// Path → size, as listed (then updated by writes).
    listing: Mutex<BTreeMap<String, u64>>,
    /// Copies in flight on this target.
    slots: tokio::sync::Semaphore,
    down: AtomicBool,
    /// An object of an earlier phase failed to reach it.
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    copied: AtomicU64,
    bytes_copied: AtomicU64,
    repaired: AtomicU64,
    checked: AtomicU64,
}

impl Node {
    fn set_error(&self, e: String) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    fn note_target_error(&self, e: &TargetError) {
        if e.is_transient() {
            self.down.store(true, Ordering::SeqCst);
        }
        self.set_error(e.to_string());
    }

    fn is_up(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("semaphore is never closed");
        let r = self.target.get(key).await;
        if r.is_ok() {
            self.checked.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

struct Run<'a> {
    nodes: Vec<Node>,
    /// Index of the primary in `nodes`.
    primary: usize,
    meta: Option<&'a MetaKey>,
    verify: bool,
    /// See [`ReplicateOptions::restore_primary`].
    restore_primary: bool,
    rate: RateLimit,
    actions: Mutex<Vec<Action>>,
    problems: Mutex<Vec<Problem>>,
}

impl Run<'_> {
    fn problem(&self, node: usize, object: &str, message: String) {
        let n = &self.nodes[node];
        n.failed.store(true, Ordering::SeqCst);
        n.set_error(format!("{object}: {message}"));
        tracing::error!(target: "custos::replicate", target_name = %n.target.name, object, "{message}");
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Problem {
                target: n.target.name.clone(),
                object: object.to_string(),
                message,
            });
    }

    /// Raises each reachable target's marker to the newest repository
    /// format any of them names (FORMAT 3.1), once the markers are in
    /// place and before packs and index objects are copied: copies are
    /// byte for byte, so a target that receives newer objects must say
    /// that it holds them.
    async fn raise_markers(&self) {
        let mut markers = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            // A target whose marker could not be put in place was reported
            // then; it holds none to raise.
            if !n.is_up() || n.failed.load(Ordering::SeqCst) {
                continue;
            }
            match RepoMarker::load(&n.target).await {
                Ok(m) => markers.push((i, m)),
                Err(e) => self.problem(i, MARKER_PATH, format!("cannot read it: {e}")),
            }
        }
        let Some(newest) = markers.iter().map(|(_, m)| m.version).max() else {
            return;
        };
        for (i, mut m) in markers {
            if let Err(e) = m.raise(&self.nodes[i].target, newest).await {
                self.problem(
                    i,
                    MARKER_PATH,
                    format!("cannot raise its format version to {newest}: {e}"),
                );
            }
        }
    }

    /// Whether the primary listed `key` when the run started (false when
    /// the primary is not reachable).
    fn primary_holds(&self, key: &str) -> bool {
        self.nodes.get(self.primary).is_some_and(|n| {
            n.is_up()
                && n.listing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(key)
        })
    }

    /// After a snapshot object was copied to off-site target `node`: if
    /// the primary no longer holds it (a prune forgot it meanwhile), the
    /// copy is deleted again, so that no target gains a snapshot the
    /// primary has forgotten. Returns whether the copy stays.
    async fn keep_snapshot_copy(&self, node: usize, key: &str) -> bool {
        let Some(p) = self.nodes.get(self.primary) else {
            return false;
        };
        let why = match p.target.head(key).await {
            Ok(Some(_)) => return true,
            Ok(None) => "the primary forgot it while it was being copied".to_string(),
            Err(e) => format!("the primary cannot confirm it still holds it ({e})"),
        };
        let n = &self.nodes[node];
        tracing::info!(target: "custos::replicate", target_name = %n.target.name, object = key, "copy withdrawn: {why}");
        match n.target.delete(key).await {
            Ok(()) => {
                n.listing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
            }
            Err(e) => {
                n.note_target_error(&e);
                self.problem(
                    node,
                    key,
                    format!("{why}, and the copy cannot be deleted again: {e}; run `custos retention --target {}`", n.target.name),
                );
            }
        }
        false
    }

    /// Brings one object to a good state on every reachable target.
    async fn sync_key(&self, key: &str, phase: usize) {
        // The primary decides which snapshots exist: one it does not list
        // was forgotten there (or lost: `restore_primary`) and is neither
        // copied nor checked anywhere.
        if phase == SNAPSHOT_PHASE && !self.restore_primary && !self.primary_holds(key) {
            return;
        }
        // Who holds it, and at what size.
        let mut holders: Vec<(usize, u64)> = Vec::new();
        let mut wanting: Vec<(usize, Reason)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.is_up() {
                continue;
            }
            let size = n
                .listing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .copied();
            match size {
                Some(s) => holders.push((i, s)),
                None => {
                    if phase == SNAPSHOT_PHASE && n.failed.load(Ordering::SeqCst) {
                        continue; // held back: earlier objects are missing there
                    }
                    wanting.push((i, Reason::Missing));
                }
            }
        }
        if holders.is_empty() {
            return;
        }
        // The reference size: the most common; ties go to the primary's.
        let mut by_size: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &(i, s) in &holders {
            by_size.entry(s).or_default().push(i);
        }
        let ref_size = by_size
            .iter()
            .max_by_key(|(_, v)| (v.len(), v.contains(&self.primary)))
            .map(|(s, _)| *s)
            .expect("holders is not empty");

        // Copies read so far: node → bytes, and the verdicts. When listed
        // sizes disagree, every copy of this object is read (as in verify).
        let read_all = self.verify || by_size.len() > 1;
        let mut good: Option<(usize, Bytes)> = None;
        let mut unknown: Vec<(usize, Bytes)> = Vec::new();
        let mut to_read: Vec<usize> = if read_all {
            holders.iter().map(|(i, _)| *i).collect()
        } else {
            Vec::new()
        };
        // Primary first, so that without a key ties lean on it.
        to_read.sort_by_key(|&i| (i != self.primary, i));
        for i in to_read {
            let n = &self.nodes[i];
            match n.get(key).await {
                Ok(b) => match check_copy(key, &b, self.meta) {
                    Verdict::Good => {
                        if good.is_none() {
                            good = Some((i, b));
                        }
                    }
                    Verdict::Bad(r) => wanting.push((i, r)),
                    Verdict::Unknown => unknown.push((i, b)),
                },
                Err(e) if e.is_not_found() => wanting.push((i, Reason::Missing)),
                Err(e) => {
                    n.note_target_error(&e);
                    self.problem(i, key, format!("cannot read it: {e}"));
                }
            }
        }
        // Without a key, copies of index and snapshot objects are compared:
        // the most common bytes win; a tie goes to the primary's copy (read
        // first), else to the first read.
        if !unknown.is_empty() {
            let mut groups: Vec<(blake3::Hash, Vec<usize>)> = Vec::new();
            for (i, b) in &unknown {
                let h = blake3::hash(b);
                match groups.iter_mut().find(|(g, _)| *g == h) {
                    Some((_, v)) => v.push(*i),
                    None => groups.push((h, vec![*i])),
                }
            }
            let most = groups.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
            let winner = groups
                .iter()
                .find(|(_, v)| v.len() == most)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let win_len = unknown
                .iter()
                .find(|(i, _)| winner.contains(i))
                .map(|(_, b)| b.len());
            for (i, b) in unknown {
                if winner.contains(&i) {
                    if good.is_none() {
                        good = Some((i, b));
                    }
                } else if Some(b.len()) != win_len {
                    wanting.push((i, Reason::SizeMismatch));
                } else {
                    wanting.push((i, Reason::Differs));
                }
            }
        }
        if wanting.is_empty() {
            return;
        }
        // A good copy to write from: one read already, else the unread
        // holders of the reference size (checked as they are read).
        if good.is_none() {
            let mut candidates: Vec<usize> = holders
                .iter()
                .filter(|(i, s)| *s == ref_size && !wanting.iter().any(|(w, _)| w == i))
                .map(|(i, _)| *i)
                .collect();
            candidates.sort_by_key(|&i| (i != self.primary, i));
            for i in candidates {
                let n = &self.nodes[i];
                match n.get(key).await {
                    Ok(b) => match check_copy(key, &b, self.meta) {
                        Verdict::Good | Verdict::Unknown => {
                            good = Some((i, b));
                            break;
                        }
                        Verdict::Bad(r) => wanting.push((i, r)),
                    },
                    Err(e) if e.is_not_found() => wanting.push((i, Reason::Missing)),
                    Err(e) => {
                        n.note_target_error(&e);
                        self.problem(i, key, format!("cannot read it: {e}"));
                    }
                }
            }
        }
        let Some((from, bytes)) = good else {
            for (i, r) in wanting {
                self.problem(
                    i,
                    key,
                    format!(
                        "{}, and no target holds a good copy to repair it from",
                        r.text()
                    ),
                );
            }
            return;
        };
        let writes = wanting.into_iter().map(|(i, reason)| {
            let bytes = bytes.clone();
            async move {
                let n = &self.nodes[i];
                if !n.is_up() {
                    return;
                }
                let len = bytes.len() as u64;
                self.rate.acquire(len).await;
                let r = {
                    let _slot = n.slots.acquire().await.expect("semaphore is never closed");
                    n.target.put(key, bytes).await
                };
                let repair = reason != Reason::Missing || i == self.primary;
                let ok = r.is_ok();
                if ok
                    && phase == SNAPSHOT_PHASE
                    && i != self.primary
                    && !self.restore_primary
                    && !self.keep_snapshot_copy(i, key).await
                {
                    return;
                }
                match r {
                    Ok(()) => {
                        n.listing
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key.to_string(), len);
                        n.copied.fetch_add(1, Ordering::Relaxed);
                        n.bytes_copied.fetch_add(len, Ordering::Relaxed);
                        if repair {
                            n.repaired.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target: "custos::replicate", target_name = %n.target.name, object = key, from = %self.nodes[from].target.name, "repaired: {}", reason.text());
                        } else {
                            tracing::info!(target: "custos::replicate", target_name = %n.target.name, object = key, "copied");
                        }
                    }
                    Err(e) => {
                        n.note_target_error(&e);
                        self.problem(i, key, format!("cannot write it: {e}"));
                    }
                }
                self.actions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Action {
                        target: n.target.name.clone(),
                        object: key.to_string(),
                        reason,
                        from: self.nodes[from].target.name.clone(),
                        bytes: len,
                        repair,
                        ok,
                    });
            }
        });
        futures::future::join_all(writes).await;
    }
}

/// Lists one target: snapshots first, then everything else (see the module
/// docs for why the order matters), tried `attempts` times with backoff.
async fn list_target(
    t: &Target,
    attempts: u32,
    backoff: Duration,
) -> Result<BTreeMap<String, u64>, TargetError> {
    let mut pause = backoff;
    let mut attempt = 1;
    loop {
        let r = async {
            let mut all: BTreeMap<String, u64> = BTreeMap::new();
            for prefix in [
                "snapshots/",
                "data/",
                "index/",
                "reports/",
                "certificates/",
                "audit/",
            ] {
                all.extend(t.list(prefix).await?);
            }
            if let Some(size) = t.head(MARKER_PATH).await? {
                all.insert(MARKER_PATH.to_string(), size);
            }
            Ok::<_, TargetError>(all)
        }
        .await;
        match r {
            Ok(all) => return Ok(all),
            Err(e) if e.is_transient() && attempt < attempts => {
                tracing::warn!(target: "custos::replicate", target_name = %t.name, attempt, "target not answering, trying again: {e}");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens every target of the policy; a target that cannot be opened is
/// returned as an error string beside the others.
fn open_all(policy: &Policy) -> Vec<(crate::policy::TargetConfig, Result<Target, String>)> {
    policy
        .targets
        .iter()
        .map(|t| {
            (
                t.clone(),
                open_target(policy, t, true).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

/// Brings every target of `policy` up to date with the others, in the
/// order that keeps each valid (see the module docs), checking what it
/// reads and repairing damaged or missing copies from a good one.
///
/// Returns an error only when the run cannot start or its record cannot be
/// kept; an unreachable target or an unrepairable object is reported in
/// the [`ReplicationReport`] (`ok = false`) while the others are served.
pub async fn replicate(
    policy: &Policy,
    opts: &ReplicateOptions,
) -> Result<ReplicationReport, ReplicateError> {
    let started = Instant::now();
    let attempts = opts.attempts.unwrap_or(3).max(1);
    let backoff = opts.backoff.unwrap_or(Duration::from_secs(1));
    let concurrency = opts
        .concurrency
        .or(policy.replication.concurrency)
        .unwrap_or(DEFAULT_REPLICATION_CONCURRENCY)
        .max(1) as usize;
    let primary_name = policy.primary().name.clone();

    let mut nodes = Vec::new();
    let mut unreachable: Vec<TargetReport> = Vec::new();
    // Targets whose retry time has not come are not tried (daemon only).
    let now = chrono::Utc::now();
    let waiting: BTreeMap<String, String> = match (&opts.retry_backoff, &opts.state) {
        (Some(_), Some(s)) => ReplicationRecord::load(s, &policy.name)?
            .targets
            .into_iter()
            .filter_map(|(name, r)| {
                let until = r.retry_after.as_deref()?;
                let t = chrono::DateTime::parse_from_rfc3339(until).ok()?;
                (t > now).then(|| {
                    (
                        name,
                        format!(
                            "not tried: unreachable since {} ({} failed run(s)); next try after {until}",
                            r.unreachable_since.as_deref().unwrap_or("?"),
                            r.failures
                        ),
                    )
                })
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let opened = open_all(policy);
    let waiting_ref = &waiting;
    let listings = futures::future::join_all(opened.into_iter().map(|(cfg, t)| async move {
        if let Some(why) = waiting_ref.get(&cfg.name) {
            return (cfg, true, Err(why.clone()), Err(String::new()));
        }
        match t {
            Ok(t) => {
                let l = list_target(&t, attempts, backoff).await;
                (cfg, false, Ok(t), l.map_err(|e| e.to_string()))
            }
            Err(e) => (cfg, false, Err(e), Err(String::new())),
        }
    }))
    .await;
    for (cfg, skipped, t, l) in listings {
        match (t, l) {
            (Ok(target), Ok(listing)) => nodes.push(Node {
                target,
                listing: Mutex::new(listing),
                slots: tokio::sync::Semaphore::new(concurrency),
                down: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                error: Mutex::new(None),
                copied: AtomicU64::new(0),
                bytes_copied: AtomicU64::new(0),
                repaired: AtomicU64::new(0),
                checked: AtomicU64::new(0),
            }),
            (t, l) => {
                let error = match (t, l) {
                    (Err(e), _) => e,
                    (_, Err(e)) => e,
                    _ => unreachable!(),
                };
                if skipped {
                    tracing::warn!(target: "custos::replicate", target_name = %cfg.name, "target {error}");
                } else {
                    tracing::error!(target: "custos::replicate", target_name = %cfg.name, "target unreachable: {error}");
                }
                unreachable.push(TargetReport {
                    reachable: false,
                    error: Some(error),
                    skipped,
                    ..TargetReport::empty(cfg.name.clone(), redact_url(&cfg.url), cfg.offsite)
                });
            }
        }
    }
    let primary = nodes
        .iter()
        .position(|n| n.target.name == primary_name)
        .unwrap_or(usize::MAX);
    let run = Run {
        nodes,
        primary,
        meta: opts.meta.as_deref(),
        verify: opts.verify,
        restore_primary: opts.restore_primary,
        rate: RateLimit::new(
            opts.max_bytes_per_sec
                .or(policy.replication.max_bytes_per_sec),
        ),
        actions: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    };

    // Every object any target holds, by phase.
    let mut by_phase: Vec<BTreeSet<String>> = vec![BTreeSet::new(); PHASES];
    for n in &run.nodes {
        for k in n.listing.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            if let Some(p) = phase_of(k) {
                by_phase[p].insert(k.clone());
            }
        }
    }
    let width = concurrency * run.nodes.len().max(1);
    let run_ref = &run;
    for (phase, keys) in by_phase.iter().enumerate() {
        if phase == 1 {
            run.raise_markers().await;
        }
        // Owned keys: a closure over borrowed ones makes the future
        // non-`Send` for the daemon's spawned jobs.
        futures::stream::iter(keys.iter().cloned())
            .map(move |k: String| async move { run_ref.sync_key(&k, phase).await })
            .buffer_unordered(width)
            .collect::<Vec<()>>()
            .await;
    }

    // Report.
    let primary_snaps: BTreeSet<String> = if primary < run.nodes.len() {
        snapshot_ids(
            &run.nodes[primary]
                .listing
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    } else {
        BTreeSet::new()
    };
    let mut targets = Vec::new();
    for n in &run.nodes {
        let listing = n.listing.lock().unwrap_or_else(|p| p.into_inner());
        let snaps = snapshot_ids(&listing);
        let failed = n.failed.load(Ordering::SeqCst);
        targets.push(TargetReport {
            name: n.target.name.clone(),
            url: redact_url(&n.target.url),
            offsite: n.target.offsite,
            reachable: n.is_up(),
            error: n.error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            lag: primary_snaps.difference(&snaps).count() as u64,
            snapshots: snaps.into_iter().collect(),
            objects: listing.keys().filter(|k| phase_of(k).is_some()).count() as u64,
            bytes: listing
                .iter()
                .filter(|(k, _)| phase_of(k).is_some())
                .map(|(_, s)| *s)
                .sum(),
            objects_copied: n.copied.load(Ordering::Relaxed),
            bytes_copied: n.bytes_copied.load(Ordering::Relaxed),
            objects_repaired: n.repaired.load(Ordering::Relaxed),
            objects_checked: n.checked.load(Ordering::Relaxed),
            snapshots_held_back: failed,
            skipped: false,
        });
    }
    targets.extend(unreachable);
    // Keep the policy's order.
    targets.sort_by_key(|t| {
        policy
            .targets
            .iter()
            .position(|c| c.name == t.name)
            .unwrap_or(usize::MAX)
    });

    let mut record = match &opts.state {
        Some(s) => ReplicationRecord::load(s, &policy.name)?,
        None => ReplicationRecord::new(&policy.name),
    };
    record.update(&targets, opts.verify);
    record.note_reachability(
        &targets,
        opts.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF),
        chrono::Utc::now(),
    );
    if let Some(s) = &opts.state {
        record.save(s)?;
    }
    let min_copies = min_copies(policy);
    let snapshots = record.statuses(&targets, min_copies);
    let mut actions = run.actions.into_inner().unwrap_or_else(|p| p.into_inner());
    actions.sort_by(|a, b| (&a.object, &a.target).cmp(&(&b.object, &b.target)));
    let problems = run.problems.into_inner().unwrap_or_else(|p| p.into_inner());
    let ok = targets.iter().all(|t| t.reachable && t.error.is_none()) && problems.is_empty();
    let offsite_only: Vec<String> = match targets.iter().find(|t| t.name == primary_name) {
        Some(p) if p.reachable && !opts.restore_primary => {
            let on_primary: BTreeSet<&String> = p.snapshots.iter().collect();
            let mut ids: BTreeSet<String> = BTreeSet::new();
            for t in targets.iter().filter(|t| t.name != primary_name) {
                ids.extend(
                    t.snapshots
                        .iter()
                        .filter(|s| !on_primary.contains(s))
                        .cloned(),
                );
            }
            ids.into_iter().collect()
        }
        _ => Vec::new(),
    };
    Ok(ReplicationReport {
        policy: policy.name.clone(),
        verify: opts.verify,
        authenticated: opts.meta.is_some(),
        min_copies,
        targets,
        actions,
        problems,
        snapshots,
        offsite_only,
        ok,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// Checks one object on every target and repairs every copy that is
/// missing or damaged from a good one (what a drill calls when it finds a
/// bad object). Returns what was written.
pub async fn repair_object(
    policy: &Policy,
    key: &str,
    meta: Option<Arc<MetaKey>>,
) -> Result<(Vec<Action>, Vec<Problem>), ReplicateError> {
    let phase = phase_of(key).ok_or_else(|| ReplicateError::NotAnObject(key.to_string()))?;
    let mut nodes = Vec::new();
    let mut problems = Vec::new();
    for (cfg, t) in open_all(policy) {
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem {
                    target: cfg.name.clone(),
                    object: key.to_string(),
                    message: e,
                });
                continue;
            }
        };
        let mut listing = BTreeMap::new();
        match t.head(key).await {
            Ok(Some(size)) => {
                listing.insert(key.to_string(), size);
            }
            Ok(None) => {}
            Err(e) => {
                problems.push(Problem {
                    target: cfg.name.clone(),
                    object: key.to_string(),
                    message: e.to_string(),
                });
                continue;
            }
        }
        nodes.push(Node {
            target: t,
            listing: Mutex::new(listing),
            slots: tokio::sync::Semaphore::new(1),
            down: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            copied: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            checked: AtomicU64::new(0),
        });
    }
    let primary_name = &policy.primary().name;
    let run = Run {
        primary: nodes
            .iter()
            .position(|n| &n.target.name == primary_name)
            .unwrap_or(usize::MAX),
        nodes,
        meta: meta.as_deref(),
        verify: true,
        restore_primary: false,
        rate: RateLimit::new(policy.replication.max_bytes_per_sec),
        actions: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    };
    run.sync_key(key, phase.min(SNAPSHOT_PHASE - 1)).await;
    problems.extend(run.problems.into_inner().unwrap_or_else(|p| p.into_inner()));
    Ok((
        run.actions.into_inner().unwrap_or_else(|p| p.into_inner()),
        problems,
    ))
}

fn snapshot_ids(listing: &BTreeMap<String, u64>) -> BTreeSet<String> {
    listing
        .keys()
        .filter_map(|k| k.strip_prefix("snapshots/"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_string)
        .collect()
}

/// `[replication] min_copies`, or every target.
pub fn min_copies(policy: &Policy) -> u32 {
    policy
        .replication
        .min_copies
        .unwrap_or(policy.targets.len() as u32)
}

// ---------------------------------------------------------------------------
// The replication record (local state)

/// The record format version.
pub const RECORD_VERSION: u32 = 1;

/// The daemon's first pause before trying an unreachable target again
/// (doubled per failed run, at most 64 times).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(60);

/// What is known of one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRecord {
    /// When a run last reached it (RFC 3339 UTC).
    pub last_run: Option<String>,
    /// When a run last finished on it without a problem.
    pub last_ok: Option<String>,
    /// When a `--verify` run last read and checked (or repaired) every
    /// object on it without a problem.
    pub last_verified: Option<String>,
    /// The last error seen on it (cleared by a run without one).
    pub last_error: Option<String>,
    /// Snapshots listed on it after the last run without a problem.
    pub complete: Vec<String>,
    /// Snapshots listed on it after the last `--verify` run without a
    /// problem (and still listed since).
    pub verified: Vec<String>,
    /// Runs in a row that could not reach it (0 once one does).
    #[serde(default)]
    pub failures: u32,
    /// The first of those runs.
    #[serde(default)]
    pub unreachable_since: Option<String>,
    /// Until when the daemon's replication does not try it again (backoff
    /// doubling per failed run, see [`ReplicateOptions::retry_backoff`]).
    #[serde(default)]
    pub retry_after: Option<String>,
}

/// `<state>/replication/<policy>.json`: per target, which snapshots are
/// complete and verified there. Status only: losing it loses no data (the
/// next `replicate --verify` rebuilds it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRecord {
    pub version: u32,
    pub policy: String,
    pub targets: BTreeMap<String, TargetRecord>,
}

impl ReplicationRecord {
    fn new(policy: &str) -> Self {
        ReplicationRecord {
            version: RECORD_VERSION,
            policy: policy.to_string(),
            targets: BTreeMap::new(),
        }
    }

    /// The record's file for `policy`.
    pub fn path(state: &StateDir, policy: &str) -> Result<PathBuf, ReplicateError> {
        Ok(state.sub("replication")?.join(format!("{policy}.json")))
    }

    /// Reads the record of `policy` (empty if there is none yet).
    pub fn load(state: &StateDir, policy: &str) -> Result<ReplicationRecord, ReplicateError> {
        let path = Self::path(state, policy)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new(policy)),
            Err(e) => {
                return Err(ReplicateError::Record {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let r: ReplicationRecord =
            serde_json::from_slice(&text).map_err(|e| ReplicateError::Record {
                path: path.clone(),
                why: e.to_string(),
            })?;
        if r.version != RECORD_VERSION {
            return Err(ReplicateError::Record {
                path,
                why: format!("version {} (this custos reads {RECORD_VERSION})", r.version),
            });
        }
        Ok(r)
    }

    /// Writes the record (a temporary file renamed over the old one).
    pub fn save(&self, state: &StateDir) -> Result<(), ReplicateError> {
        let path = Self::path(state, &self.policy)?;
        let tmp = path.with_extension("json.tmp");
        let err = |e: std::io::Error| ReplicateError::Record {
            path: path.clone(),
            why: e.to_string(),
        };
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).expect("the record serializes"),
        )
        .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    fn update(&mut self, targets: &[TargetReport], verified_run: bool) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for t in targets {
            if t.skipped {
                continue;
            }
            let r = self.targets.entry(t.name.clone()).or_default();
            if !t.reachable {
                r.last_error = t.error.clone();
                continue;
            }
            r.last_run = Some(now.clone());
            let listed: BTreeSet<&String> = t.snapshots.iter().collect();
            if t.error.is_none() {
                r.last_ok = Some(now.clone());
                r.last_error = None;
                r.complete = t.snapshots.clone();
                if verified_run {
                    r.last_verified = Some(now.clone());
                    r.verified = t.snapshots.clone();
                } else {
                    r.verified.retain(|s| listed.contains(s));
                }
            } else {
                // Something on it is missing or damaged beyond repair: none
                // of its snapshots counts as verified until a clean run.
                r.last_error = t.error.clone();
                r.complete.retain(|s| listed.contains(s));
                r.verified.clear();
            }
        }
    }

    /// Counts the runs in a row that could not reach each target and sets
    /// when the daemon tries it next; a target reached resets both. A
    /// target skipped by its backoff is left as it was.
    fn note_reachability(
        &mut self,
        targets: &[TargetReport],
        base: Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let fmt =
            |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for t in targets.iter().filter(|t| !t.skipped) {
            let r = self.targets.entry(t.name.clone()).or_default();
            if t.reachable {
                r.failures = 0;
                r.unreachable_since = None;
                r.retry_after = None;
                continue;
            }
            r.failures = r.failures.saturating_add(1);
            r.unreachable_since.get_or_insert_with(|| fmt(now));
            let factor = 1u32 << (r.failures - 1).min(6);
            let wait = chrono::Duration::from_std(base * factor)
                .unwrap_or_else(|_| chrono::Duration::hours(1));
            r.retry_after = Some(fmt(now + wait));
        }
    }

    /// Per snapshot (those listed on any reachable target, and those in the
    /// record), where it is and whether it is replicated.
    pub fn statuses(&self, targets: &[TargetReport], min_copies: u32) -> Vec<SnapshotStatus> {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for t in targets {
            ids.extend(t.snapshots.iter().cloned());
        }
        ids.into_iter()
            .map(|id| {
                let on: Vec<String> = targets
                    .iter()
                    .filter(|t| t.snapshots.contains(&id))
                    .map(|t| t.name.clone())
                    .collect();
                self.status_of(&id, on, min_copies)
            })
            .collect()
    }

    /// The status of snapshot `id`, listed on targets `on`.
    pub fn status_of(&self, id: &str, on: Vec<String>, min_copies: u32) -> SnapshotStatus {
        let verified_on: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, r)| r.verified.iter().any(|s| s == id))
            .map(|(n, _)| n.clone())
            .collect();
        SnapshotStatus {
            id: id.to_string(),
            replicated: verified_on.len() as u32 >= min_copies,
            on,
            verified_on,
            min_copies,
        }
    }
}

// ---------------------------------------------------------------------------
// Per-target overview (`custos targets`)

/// One target as `custos targets` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetOverview {
    pub name: String,
    pub url: String,
    pub offsite: bool,
    pub reachable: bool,
    pub error: Option<String>,
    pub snapshots: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Snapshots of the primary it lacks.
    pub lag: u64,
    pub last_verified: Option<String>,
    pub last_ok: Option<String>,
}

/// What `custos targets` shows: every target, listed now, and every
/// snapshot's replication status from the record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetsOverview {
    pub policy: String,
    pub min_copies: u32,
    pub targets: Vec<TargetOverview>,
    pub snapshots: Vec<SnapshotStatus>,
}

/// Lists every target (no writes) and joins the replication record.
pub async fn overview(
    policy: &Policy,
    state: Option<&StateDir>,
    attempts: u32,
) -> Result<TargetsOverview, ReplicateError> {
    let record = match state {
        Some(s) => ReplicationRecord::load(s, &policy.name)?,
        None => ReplicationRecord::new(&policy.name),
    };
    let backoff = Duration::from_millis(500);
    let listed =
        futures::future::join_all(open_all(policy).into_iter().map(|(cfg, t)| async move {
            let l = match &t {
                Ok(t) => list_target(t, attempts.max(1), backoff)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            (cfg, l)
        }))
        .await;
    let primary_name = &policy.primary().name;
    let primary_snaps: BTreeSet<String> = listed
        .iter()
        .find(|(c, _)| &c.name == primary_name)
        .and_then(|(_, l)| l.as_ref().ok())
        .map(snapshot_ids)
        .unwrap_or_default();
    let mut reports = Vec::new();
    let mut targets = Vec::new();
    for (cfg, l) in listed {
        let r = record.targets.get(&cfg.name).cloned().unwrap_or_default();
        let (reachable, error, listing) = match l {
            Ok(l) => (true, None, l),
            Err(e) => (false, Some(e), BTreeMap::new()),
        };
        let snaps = snapshot_ids(&listing);
        targets.push(TargetOverview {
            name: cfg.name.clone(),
            url: redact_url(&cfg.url),
            offsite: cfg.offsite,
            reachable,
            error: error.clone(),
            snapshots: snaps.len() as u64,
            objects: listing.keys().filter(|k| phase_of(k).is_some()).count() as u64,
            bytes: listing
                .iter()
                .filter(|(k, _)| phase_of(k).is_some())
                .map(|(_, s)| *s)
                .sum(),
            lag: primary_snaps.difference(&snaps).count() as u64,
            last_verified: r.last_verified,
            last_ok: r.last_ok,
        });
        reports.push(TargetReport {
            reachable,
            error,
            snapshots: snaps.into_iter().collect(),
            ..TargetReport::empty(cfg.name, String::new(), cfg.offsite)
        });
    }
    let min_copies = min_copies(policy);
    Ok(TargetsOverview {
        policy: policy.name.clone(),
        min_copies,
        snapshots: record.statuses(&reports, min_copies),
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_write_order_and_skip_locks() {
        let id = "ab".to_string() + &"0".repeat(62);
        assert_eq!(phase_of("custos-repo.json"), Some(0));
        assert_eq!(phase_of(&format!("data/ab/{id}")), Some(1));
        assert_eq!(phase_of(&format!("data/cd/{id}")), None);
        assert_eq!(phase_of(&format!("index/{id}")), Some(2));
        assert_eq!(phase_of("snapshots/0123456789abcdef"), Some(3));
        assert_eq!(phase_of("locks/backup.json"), None);
        assert_eq!(phase_of("reports/drill-x.json"), Some(DOC_PHASE));
        assert_eq!(phase_of("certificates/cert-x.json"), Some(DOC_PHASE));
        assert_eq!(
            phase_of("audit/000000000001-000000000009.jsonl"),
            Some(DOC_PHASE)
        );
        assert_eq!(phase_of("reports/"), None);
        assert_eq!(phase_of("index/zz"), None);
    }

    #[test]
    fn packs_are_checked_by_their_hash() {
        let body = b"some pack bytes".to_vec();
        let id = Id::hash(&body).to_hex();
        let key = format!("data/{}/{id}", &id[..2]);
        assert!(matches!(check_copy(&key, &body, None), Verdict::Good));
        let mut bad = body.clone();
        bad[3] ^= 1;
        assert!(matches!(
            check_copy(&key, &bad, None),
            Verdict::Bad(Reason::HashMismatch)
        ));
        assert!(matches!(
            check_copy(&key, &body[..5], None),
            Verdict::Bad(Reason::HashMismatch)
        ));
    }

    #[test]
    fn metadata_objects_are_authenticated_with_the_key() {
        let m = MetaKey::new(&crate::crypto::Key32::random());
        let id = "0123456789abcdef";
        let sealed = m.seal("snapshot", id, b"x");
        let key = format!("snapshots/{id}");
        assert!(matches!(check_copy(&key, &sealed, Some(&m)), Verdict::Good));
        assert!(matches!(check_copy(&key, &sealed, None), Verdict::Unknown));
        let other = format!("snapshots/{}", "f".repeat(16));
        assert!(matches!(
            check_copy(&other, &sealed, Some(&m)),
            Verdict::Bad(Reason::Unauthentic)
        ));
    }

    #[test]
    fn an_unreachable_target_backs_off_doubling_and_a_reach_resets_it() {
        let mut r = ReplicationRecord::new("p");
        let t = |reachable: bool, skipped: bool| TargetReport {
            reachable,
            error: (!reachable).then(|| "down".to_string()),
            skipped,
            ..TargetReport::empty("dr", String::new(), true)
        };
        use chrono::SubsecRound;
        let now = chrono::Utc::now().trunc_subsecs(0);
        let base = Duration::from_secs(10);
        let after = |r: &ReplicationRecord| {
            let s = r.targets["dr"].retry_after.clone().unwrap();
            (chrono::DateTime::parse_from_rfc3339(&s)
                .unwrap()
                .with_timezone(&chrono::Utc)
                - now)
                .num_seconds()
        };
        r.note_reachability(&[t(false, false)], base, now);
        assert_eq!((r.targets["dr"].failures, after(&r)), (1, 10));
        r.note_reachability(&[t(false, false)], base, now);
        assert_eq!((r.targets["dr"].failures, after(&r)), (2, 20));
        // A run that skipped it changes nothing.
        r.note_reachability(&[t(false, true)], base, now);
        assert_eq!(r.targets["dr"].failures, 2);
        for _ in 0..10 {
            r.note_reachability(&[t(false, false)], base, now);
        }
        assert_eq!(after(&r), 640, "at most 64 times the base");
        r.note_reachability(&[t(true, false)], base, now);
        let d = &r.targets["dr"];
        assert_eq!(
            (d.failures, &d.unreachable_since, &d.retry_after),
            (0, &None, &None)
        );
        // An older record without these fields still reads.
        let old = r#"{"version":1,"policy":"p","targets":{"dr":{"last_run":null,"last_ok":null,"last_verified":null,"last_error":null,"complete":[],"verified":[]}}}"#;
        let r: ReplicationRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.targets["dr"].failures, 0);
    }

    #[test]
    fn a_snapshot_is_replicated_once_verified_on_min_copies() {
        let mut r = ReplicationRecord::new("p");
        let t = |name: &str, snaps: &[&str], err: Option<&str>| TargetReport {
            error: err.map(str::to_string),
            snapshots: snaps.iter().map(|s| s.to_string()).collect(),
            ..TargetReport::empty(name, String::new(), false)
        };
        let ts = vec![t("a", &["s1"], None), t("b", &["s1"], None)];
        r.update(&ts, false);
        assert!(!r.statuses(&ts, 2)[0].replicated, "not verified yet");
        r.update(&ts, true);
        assert!(r.statuses(&ts, 2)[0].replicated);
        let ts2 = vec![t("a", &["s1"], None), t("b", &["s1"], Some("bad pack"))];
        r.update(&ts2, true);
        let s = &r.statuses(&ts2, 2)[0];
        assert!(!s.replicated);
        assert_eq!(s.verified_on, vec!["a".to_string()]);
        assert!(r.statuses(&ts2, 1)[0].replicated);
    }
}
