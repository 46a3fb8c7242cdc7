//! The audit trail: an append-only, hash-chained log of every operation.
//!
//! The log is one file, `<state>/audit/audit.jsonl`, one entry per line,
//! each entry a JSON object in compact canonical form (sorted keys):
//!
//! | field | meaning |
//! |---|---|
//! | `seq` | 1, 2, 3, ... without gaps |
//! | `time` | RFC 3339 UTC time of the entry |
//! | `actor` | who: a user name or `job:<policy>/<job>` |
//! | `role` | the actor's role (`operator`, `auditor`, `retention`, `admin`, `job`) |
//! | `policy` | the policy, or null |
//! | `op` | the operation (`backup`, `restore`, `drill`, `shred`, ...) |
//! | `objects` | ids the operation concerns (snapshot, report, certificate ids, pseudonyms; never a subject id) |
//! | `outcome` | `ok`, `failed` or `denied` |
//! | `detail` | a short text without customer values, or null |
//! | `flags` | anomaly flags (e.g. `restore-outside-drill`), possibly empty |
//! | `prev` | `hash` of the previous entry (64 zeros for the first) |
//! | `hash` | BLAKE3 of the compact canonical JSON of the entry without `hash`, hex |
//!
//! A checkpoint entry (`op` = `audit.checkpoint`) carries in `detail` an
//! ed25519 signature (hex) by the service key over
//! `"custos-audit-head-v1\n" || seq || "\n" || prev`, which signs the whole
//! chain up to it. [`AuditLog::verify`] recomputes every hash and link,
//! checks every checkpoint with the public key, and names the first entry
//! where the chain breaks.
//!
//! Writers take an exclusive lock on the file while appending, so the
//! daemon and command-line invocations can share one log.
//!
//! ## Anomaly flags
//! [`AuditLog::append`] adds flags to the entry it writes when the recent
//! tail of the log (see [`AnomalyRules`]) shows abnormal activity:
//!
//! | flag | when |
//! |---|---|
//! | `restore-outside-drill` | set by the caller on a restore that is not part of a drill |
//! | `burst-restore` | the entry is a restore and at least `burst` restores fell in the window |
//! | `burst-shred` | the same for `shred` operations (any `shred*` op) |
//! | `repeated-denied` | the entry is denied and the same actor was denied at least `denied` times in the window |
//!
//! ## Measurements
//! `detail` may carry `key=number` measurements separated by spaces (e.g.
//! `duration_s=1.2 bytes=1024`), added with [`Event::measure`]; the
//! console's metrics read them.
//!
//! ## Replication
//! [`replicate`] copies the log to a target as append-only segment objects
//! `audit/<first seq>-<last seq>.jsonl` (both 12 digits, zero-padded), each
//! holding the exact lines of those entries; a later run uploads only the
//! entries after the highest segment.

use crate::signed::compact;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the log inside the audit directory.
pub const LOG_FILE: &str = "audit.jsonl";
/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The `op` of a signed checkpoint.
pub const CHECKPOINT_OP: &str = "audit.checkpoint";
const HEAD_DOMAIN: &str = "custos-audit-head-v1\n";

/// Errors of the audit log.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path}, line {line}: {why}")]
    Malformed {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Denied,
}

/// What is to be recorded: an operation, before it is chained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub actor: String,
    pub role: String,
    pub policy: Option<String>,
    pub op: String,
    pub objects: Vec<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub flags: Vec<String>,
}

impl Event {
    /// An event by the current command-line user (see [`cli_actor`]) in
    /// `role`, with outcome `ok` and no objects.
    pub fn new(op: &str, role: &str) -> Event {
        Event {
            actor: cli_actor(),
            role: role.to_string(),
            policy: None,
            op: op.to_string(),
            objects: Vec::new(),
            outcome: Outcome::Ok,
            detail: None,
            flags: Vec::new(),
        }
    }

    pub fn policy(mut self, p: &str) -> Event {
        self.policy = Some(p.to_string());
        self
    }

    pub fn object(mut self, o: impl Into<String>) -> Event {
        self.objects.push(o.into());
        self
    }

    pub fn outcome(mut self, o: Outcome) -> Event {
        self.outcome = o;
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = Some(d.into());
        self
    }

    pub fn flag(mut self, f: impl Into<String>) -> Event {
        self.flags.push(f.into());
        self
    }

    pub fn actor(mut self, a: impl Into<String>) -> Event {
        self.actor = a.into();
        self
    }

    /// Adds a `name=value` measurement to `detail` (see the module docs).
    pub fn measure(mut self, name: &str, value: f64) -> Event {
        let m = format!("{name}={value}");
        self.detail = Some(match self.detail.take() {
            Some(d) if !d.is_empty() => format!("{d} {m}"),
            _ => m,
        });
        self
    }
}

/// Thresholds of the anomaly flags written by [`AuditLog::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnomalyRules {
    /// The look-back window.
    pub window: chrono::Duration,
    /// Restores (or shreds) in the window, this one included, that make a burst.
    pub burst: usize,
    /// Denied requests by one actor in the window, this one included, that
    /// are flagged.
    pub denied: usize,
}

impl Default for AnomalyRules {
    fn default() -> Self {
        AnomalyRules {
            window: chrono::Duration::minutes(10),
            burst: 5,
            denied: 3,
        }
    }
}

/// Flag: a restore that is not part of a drill (set by the caller).
pub const FLAG_RESTORE_OUTSIDE_DRILL: &str = "restore-outside-drill";
/// Flag: a burst of restores.
pub const FLAG_BURST_RESTORE: &str = "burst-restore";
/// Flag: a burst of shreds.
pub const FLAG_BURST_SHRED: &str = "burst-shred";
/// Flag: repeated denied requests by one actor.
pub const FLAG_REPEATED_DENIED: &str = "repeated-denied";

fn is_shred(op: &str) -> bool {
    op == "shred" || op.starts_with("shred.")
}

/// The anomaly flags `ev` earns at `now` given the recent entries `tail`.
pub fn anomaly_flags(
    rules: &AnomalyRules,
    ev: &Event,
    tail: &[Entry],
    now: DateTime<Utc>,
) -> Vec<String> {
    let recent: Vec<&Entry> = tail
        .iter()
        .filter(|e| {
            DateTime::parse_from_rfc3339(&e.time)
                .map(|t| now.signed_duration_since(t.with_timezone(&Utc)) <= rules.window)
                .unwrap_or(false)
        })
        .collect();
    let mut flags = Vec::new();
    if ev.op == "restore" {
        let n = recent.iter().filter(|e| e.op == "restore").count() + 1;
        if n >= rules.burst {
            flags.push(FLAG_BURST_RESTORE.to_string());
        }
    }
    if is_shred(&ev.op) {
        let n = recent.iter().filter(|e| is_shred(&e.op)).count() + 1;
        if n >= rules.burst {
            flags.push(FLAG_BURST_SHRED.to_string());
        }
    }
    if ev.outcome == Outcome::Denied {
        let n = recent
            .iter()
            .filter(|e| e.outcome == Outcome::Denied && e.actor == ev.actor)
            .count()
            + 1;
        if n >= rules.denied {
            flags.push(FLAG_REPEATED_DENIED.to_string());
        }
    }
    flags
}

/// Which entries `audit show` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries by this actor (exact).
    pub actor: Option<String>,
    /// Only this operation: exact, or a prefix before a dot (`users`
    /// matches `users.add`).
    pub op: Option<String>,
}

impl Filter {
    /// Whether `e` passes the filter.
    pub fn matches(&self, e: &Entry) -> bool {
        if let Some(since) = self.since {
            match DateTime::parse_from_rfc3339(&e.time) {
                Ok(t) if t.with_timezone(&Utc) >= since => {}
                _ => return false,
            }
        }
        if let Some(a) = &self.actor {
            if &e.actor != a {
                return false;
            }
        }
        if let Some(op) = &self.op {
            let dotted =
                e.op.strip_prefix(op.as_str())
                    .is_some_and(|r| r.starts_with('.'));
            if &e.op != op && !dotted {
                return false;
            }
        }
        true
    }
}

/// Parses a `--since` value: an RFC 3339 time, a date (`2026-03-01`, UTC
/// midnight) or an age like `90m`, `24h`, `7d` (before `now`).
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    match crate::policy::parse_duration(s) {
        Ok(d) => Ok(now - chrono::Duration::from_std(d).map_err(|e| e.to_string())?),
        Err(_) => Err(format!(
            "`{s}` is not a time: give an RFC 3339 time (2026-03-01T12:00:00Z), a date (2026-03-01) or an age (90m, 24h, 7d)"
        )),
    }
}

/// The actor of a command-line invocation: `CUSTOS_ACTOR`, else the OS
/// user (`USER`), else `unknown`.
pub fn cli_actor() -> String {
    for var in ["CUSTOS_ACTOR", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return v;
            }
        }
    }
    "unknown".to_string()
}

/// One chained entry, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub actor: String,
    pub role: String,
    pub policy: Option<String>,
    pub op: String,
    pub objects: Vec<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub flags: Vec<String>,
    pub prev: String,
    pub hash: String,
}

impl Entry {
    /// The hash this entry should have, from its other fields.
    pub fn computed_hash(&self) -> String {
        let mut v = serde_json::to_value(self).expect("an entry serializes");
        if let Some(m) = v.as_object_mut() {
            m.remove("hash");
        }
        blake3::hash(&compact(&v)).to_hex().to_string()
    }

    fn line(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("an entry serializes");
        let mut l = compact(&v);
        l.push(b'\n');
        l
    }
}

/// Where the chain breaks, found by [`AuditLog::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Break {
    /// 1-based line number in the log file.
    pub line: usize,
    /// The entry's `seq` as written, if it could be read.
    pub seq: Option<u64>,
    pub why: String,
}

/// The result of verifying the whole chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub entries: u64,
    /// Hash of the last entry (the head), or the genesis value.
    pub head: String,
    /// Checkpoints whose signature was checked and is valid.
    pub checkpoints_verified: u64,
    /// Entries after the last valid checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
    /// The first break, if any; `None` means the chain is intact.
    pub first_break: Option<Break>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_break.is_none()
    }
}

/// The audit log of one state directory.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
    rules: AnomalyRules,
}

/// How much of the log's end [`AuditLog::append`] reads to find anomalies.
const TAIL_BYTES: u64 = 256 * 1024;

impl AuditLog {
    /// The log in directory `dir` (usually `StateDir::sub("audit")`),
    /// created empty if missing.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(LOG_FILE);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(AuditLog {
            path,
            rules: AnomalyRules::default(),
        })
    }

    /// The same log with other anomaly thresholds.
    pub fn with_rules(mut self, rules: AnomalyRules) -> AuditLog {
        self.rules = rules;
        self
    }

    /// The entries that pass `filter`, in order.
    pub fn show(&self, filter: &Filter) -> Result<Vec<Entry>, AuditError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| filter.matches(e))
            .collect())
    }

    /// Appends a checkpoint if the chain has entries not yet covered by one
    /// and either `max_entries` of them are waiting or the last checkpoint
    /// (or the first uncovered entry) is older than `max_age`. Returns the
    /// checkpoint written, if any.
    pub fn checkpoint_if_due(
        &self,
        key: &SigningKey,
        actor: &str,
        max_entries: u64,
        max_age: chrono::Duration,
    ) -> Result<Option<Entry>, AuditError> {
        let es = self.entries()?;
        let since = es
            .iter()
            .rposition(|e| e.op == CHECKPOINT_OP)
            .map(|i| i + 1)
            .unwrap_or(0);
        let waiting = &es[since..];
        let Some(first) = waiting.first() else {
            return Ok(None);
        };
        let oldest = DateTime::parse_from_rfc3339(&first.time)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        if waiting.len() as u64 >= max_entries || Utc::now() - oldest >= max_age {
            return self.checkpoint(key, actor).map(Some);
        }
        Ok(None)
    }

    fn tail_entries(&self, f: &mut File, max: u64) -> Result<Vec<Entry>, AuditError> {
        let len = f.metadata().map_err(|e| self.io(e))?.len();
        let start = len.saturating_sub(max);
        f.seek(SeekFrom::Start(start)).map_err(|e| self.io(e))?;
        let mut buf = Vec::new();
        Read::by_ref(f)
            .take(len - start)
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        let mut lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        if start > 0 && !lines.is_empty() {
            lines.remove(0); // a partial first line
        }
        Ok(lines
            .into_iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect())
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `ev` to the chain and returns the stored entry. The file is
    /// locked while the last entry is read and the new one written, and
    /// synced before returning.
    pub fn append(&self, ev: &Event) -> Result<Entry, AuditError> {
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        let (seq, prev) = match self.last_entry(&mut f)? {
            Some(e) => (e.seq + 1, e.hash),
            None => (1, GENESIS.to_string()),
        };
        let now = Utc::now();
        let mut flags = ev.flags.clone();
        let watched = ev.op == "restore" || is_shred(&ev.op) || ev.outcome == Outcome::Denied;
        if watched {
            let tail = self.tail_entries(&mut f, TAIL_BYTES)?;
            for fl in anomaly_flags(&self.rules, ev, &tail, now) {
                if !flags.contains(&fl) {
                    flags.push(fl);
                }
            }
        }
        let mut entry = Entry {
            seq,
            time: now.to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: ev.actor.clone(),
            role: ev.role.clone(),
            policy: ev.policy.clone(),
            op: ev.op.clone(),
            objects: ev.objects.clone(),
            outcome: ev.outcome,
            detail: ev.detail.clone(),
            flags,
            prev,
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        f.write_all(&entry.line()).map_err(|e| self.io(e))?;
        f.sync_data().map_err(|e| self.io(e))?;
        // The lock is released when `f` is dropped.
        Ok(entry)
    }

    /// Appends a checkpoint signing the chain up to the current head.
    pub fn checkpoint(&self, key: &SigningKey, actor: &str) -> Result<Entry, AuditError> {
        // The signature covers the head the checkpoint links to; the lock
        // keeps any other entry from slipping in between.
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        let (seq, prev) = match self.last_entry(&mut f)? {
            Some(e) => (e.seq + 1, e.hash),
            None => (1, GENESIS.to_string()),
        };
        let sig = key.sign(head_message(seq, &prev).as_bytes());
        let mut entry = Entry {
            seq,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: actor.to_string(),
            role: "job".to_string(),
            policy: None,
            op: CHECKPOINT_OP.to_string(),
            objects: vec![crate::signed::key_id(&key.verifying_key())],
            outcome: Outcome::Ok,
            detail: Some(hex::encode(sig.to_bytes())),
            flags: Vec::new(),
            prev,
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        f.write_all(&entry.line()).map_err(|e| self.io(e))?;
        f.sync_data().map_err(|e| self.io(e))?;
        Ok(entry)
    }

    fn last_entry(&self, f: &mut File) -> Result<Option<Entry>, AuditError> {
        let len = f.metadata().map_err(|e| self.io(e))?.len();
        if len == 0 {
            return Ok(None);
        }
        // Read back far enough to hold the last whole line.
        let mut back = 4096u64;
        loop {
            let start = len.saturating_sub(back);
            f.seek(SeekFrom::Start(start)).map_err(|e| self.io(e))?;
            let mut buf = Vec::with_capacity((len - start) as usize);
            Read::by_ref(f)
                .take(len - start)
                .read_to_end(&mut buf)
                .map_err(|e| self.io(e))?;
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if let Some(pos) = body.iter().rposition(|&b| b == b'\n') {
                return self.parse_line(&body[pos + 1..], 0).map(Some);
            }
            if start == 0 {
                return self.parse_line(body, 1).map(Some);
            }
            back *= 4;
        }
    }

    fn parse_line(&self, line: &[u8], lineno: usize) -> Result<Entry, AuditError> {
        serde_json::from_slice(line).map_err(|e| AuditError::Malformed {
            path: self.path.clone(),
            line: lineno,
            why: format!("the last entry is not readable ({e}); run `custos audit verify`"),
        })
    }

    /// Every entry, in order. Lines that cannot be read are an error naming
    /// the line (use [`verify`](Self::verify) to find breaks).
    pub fn entries(&self) -> Result<Vec<Entry>, AuditError> {
        let f = File::open(&self.path).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| self.io(e))?;
            if line.is_empty() {
                continue;
            }
            out.push(
                serde_json::from_slice(&line).map_err(|e| AuditError::Malformed {
                    path: self.path.clone(),
                    line: i + 1,
                    why: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Checks the whole chain: every line parses, `seq` runs without gaps,
    /// every `prev` is the previous `hash`, every `hash` is right, every
    /// line is in canonical form, and (with `key`) every checkpoint's
    /// signature is valid. Stops at the first break and names it.
    pub fn verify(&self, key: Option<&VerifyingKey>) -> Result<Verification, AuditError> {
        let f = File::open(&self.path).map_err(|e| self.io(e))?;
        let mut v = Verification {
            entries: 0,
            head: GENESIS.to_string(),
            checkpoints_verified: 0,
            unsigned_tail: 0,
            first_break: None,
        };
        for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| self.io(e))?;
            let lineno = i + 1;
            let brk = |seq: Option<u64>, why: String| Break {
                line: lineno,
                seq,
                why,
            };
            let e: Entry = match serde_json::from_slice(&line) {
                Ok(e) => e,
                Err(err) => {
                    v.first_break = Some(brk(None, format!("not a readable entry: {err}")));
                    return Ok(v);
                }
            };
            let found = match check_entry(&e, &line, v.entries + 1, &v.head, key) {
                Ok(signed) => signed,
                Err(why) => {
                    v.first_break = Some(brk(Some(e.seq), why));
                    return Ok(v);
                }
            };
            if found {
                v.checkpoints_verified += 1;
                v.unsigned_tail = 0;
            } else {
                v.unsigned_tail += 1;
            }
            v.entries += 1;
            v.head = e.hash.clone();
        }
        Ok(v)
    }
}

/// Checks one entry against its position; returns whether it is a
/// checkpoint whose signature was verified.
fn check_entry(
    e: &Entry,
    line: &[u8],
    expect_seq: u64,
    prev: &str,
    key: Option<&VerifyingKey>,
) -> Result<bool, String> {
    if e.seq != expect_seq {
        return Err(format!("seq is {}, expected {expect_seq}", e.seq));
    }
    if e.prev != prev {
        return Err("prev does not match the previous entry's hash (an entry was removed, inserted or changed before it)".into());
    }
    if e.computed_hash() != e.hash {
        return Err("hash does not match the entry's content (the entry was edited)".into());
    }
    let mut canon = e.line();
    canon.pop();
    if canon != line {
        return Err("the line is not in canonical form (the entry was edited)".into());
    }
    if e.op != CHECKPOINT_OP {
        return Ok(false);
    }
    let Some(key) = key else { return Ok(false) };
    let sig = e
        .detail
        .as_deref()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or("checkpoint has no readable signature")?;
    if e.objects.first().map(String::as_str) != Some(crate::signed::key_id(key).as_str()) {
        return Err("checkpoint is signed by another key".into());
    }
    key.verify(
        head_message(e.seq, &e.prev).as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| "checkpoint signature is not valid".to_string())?;
    Ok(true)
}

fn head_message(seq: u64, prev: &str) -> String {
    format!("{HEAD_DOMAIN}{seq}\n{prev}")
}

/// The prefix of the audit segments on a target.
pub const TARGET_PREFIX: &str = "audit/";

/// What [`replicate`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Replicated {
    pub target: String,
    /// The segment written, if there were new entries.
    pub segment: Option<String>,
    /// Entries uploaded by this run.
    pub entries: u64,
    /// The highest `seq` on the target after this run.
    pub last_seq: u64,
}

/// Errors of [`replicate`].
#[derive(Debug, Error)]
pub enum ReplicateError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error("the target's audit segments go up to seq {remote} but the local log has only {local} entries: the local log was replaced or truncated; keep it and compare it with the target's audit/ objects")]
    Ahead { remote: u64, local: u64 },
}

/// The `(first, last)` seq of a segment object name, if it is one.
pub fn segment_range(path: &str) -> Option<(u64, u64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".jsonl")?;
    let (a, b) = name.split_once('-')?;
    if a.len() != 12 || b.len() != 12 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Copies the entries of `log` that `target` does not hold yet as one new
/// segment object (see the module docs). The segment is written with
/// create-only semantics, so an existing object is never replaced.
pub async fn replicate(
    log: &AuditLog,
    target: &crate::target::Target,
) -> Result<Replicated, ReplicateError> {
    let remote = target
        .list(TARGET_PREFIX)
        .await?
        .iter()
        .filter_map(|(p, _)| segment_range(p))
        .map(|(_, last)| last)
        .max()
        .unwrap_or(0);
    let entries = log.entries()?;
    let local = entries.last().map(|e| e.seq).unwrap_or(0);
    if remote > local {
        return Err(ReplicateError::Ahead { remote, local });
    }
    let new: Vec<&Entry> = entries.iter().filter(|e| e.seq > remote).collect();
    let (Some(first), Some(last)) = (new.first(), new.last()) else {
        return Ok(Replicated {
            target: target.name.clone(),
            segment: None,
            entries: 0,
            last_seq: remote,
        });
    };
    let name = format!("{TARGET_PREFIX}{:012}-{:012}.jsonl", first.seq, last.seq);
    let mut body = Vec::new();
    for e in &new {
        body.extend_from_slice(&e.line());
    }
    target.put_new(&name, bytes::Bytes::from(body)).await?;
    Ok(Replicated {
        target: target.name.clone(),
        segment: Some(name),
        entries: new.len() as u64,
        last_seq: last.seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, AuditLog) {
        let d = tempfile::tempdir().unwrap();
        let l = AuditLog::open(&d.path().join("audit")).unwrap();
        (d, l)
    }

    #[test]
    fn chain_appends_and_verifies() {
        let (_d, l) = log();
        let k = SigningKey::generate(&mut rand::rngs::OsRng);
        for i in 0..5 {
            l.append(
                &Event::new("backup", "operator")
                    .policy("crm")
                    .object(format!("s{i}")),
            )
            .unwrap();
        }
        l.checkpoint(&k, "test").unwrap();
        l.append(&Event::new("restore", "operator").flag("restore-outside-drill"))
            .unwrap();
        let v = l.verify(Some(&k.verifying_key())).unwrap();
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.entries, 7);
        assert_eq!(v.checkpoints_verified, 1);
        assert_eq!(v.unsigned_tail, 1);
        let es = l.entries().unwrap();
        assert_eq!(es.len(), 7);
        assert_eq!(es[0].prev, GENESIS);
        assert_eq!(es[1].prev, es[0].hash);
        assert_eq!(v.head, es[6].hash);
    }

    #[test]
    fn one_byte_edit_is_named() {
        let (_d, l) = log();
        for op in ["backup", "restore", "drill"] {
            l.append(&Event::new(op, "operator")).unwrap();
        }
        let text = std::fs::read_to_string(l.path()).unwrap();
        let edited = text.replacen("\"restore\"", "\"restorf\"", 1);
        std::fs::write(l.path(), edited).unwrap();
        let v = l.verify(None).unwrap();
        let b = v.first_break.unwrap();
        assert_eq!(b.line, 2);
        assert_eq!(b.seq, Some(2));
        assert!(b.why.contains("edited"), "{}", b.why);
    }

    #[test]
    fn removed_entry_and_forged_checkpoint_are_named() {
        let (_d, l) = log();
        let k = SigningKey::generate(&mut rand::rngs::OsRng);
        for _ in 0..3 {
            l.append(&Event::new("backup", "job")).unwrap();
        }
        let text = std::fs::read_to_string(l.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(l.path(), format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let b = l.verify(None).unwrap().first_break.unwrap();
        assert_eq!(b.line, 2);

        let (_d2, l2) = log();
        l2.append(&Event::new("backup", "job")).unwrap();
        let other = SigningKey::generate(&mut rand::rngs::OsRng);
        l2.checkpoint(&other, "x").unwrap();
        let b = l2
            .verify(Some(&k.verifying_key()))
            .unwrap()
            .first_break
            .unwrap();
        assert_eq!(b.line, 2);
        assert!(b.why.contains("another key"));
    }

    #[test]
    fn concurrent_appenders_keep_one_chain() {
        let (_d, l) = log();
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        l.append(&Event::new("backup", "job").object(format!("{t}-{i}")))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let v = l.verify(None).unwrap();
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.entries, 100);
    }

    #[test]
    fn filters_select_by_time_actor_and_op() {
        let (_d, l) = log();
        l.append(&Event::new("users.add", "admin").actor("ann"))
            .unwrap();
        l.append(&Event::new("backup", "operator").actor("bob"))
            .unwrap();
        l.append(&Event::new("users", "admin").actor("bob"))
            .unwrap();
        let f = Filter {
            op: Some("users".into()),
            ..Default::default()
        };
        assert_eq!(l.show(&f).unwrap().len(), 2);
        let f = Filter {
            actor: Some("bob".into()),
            op: Some("backup".into()),
            ..Default::default()
        };
        assert_eq!(l.show(&f).unwrap().len(), 1);
        let f = Filter {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        };
        assert!(l.show(&f).unwrap().is_empty());
        let now = Utc::now();
        assert_eq!(
            parse_since("2h", now).unwrap(),
            now - chrono::Duration::hours(2)
        );
        assert!(parse_since("2026-03-01", now).is_ok());
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn bursts_and_repeated_denials_are_flagged() {
        let (_d, l) = log();
        let l = l.with_rules(AnomalyRules {
            window: chrono::Duration::minutes(10),
            burst: 3,
            denied: 2,
        });
        let r1 = l.append(&Event::new("restore", "operator")).unwrap();
        let r2 = l.append(&Event::new("restore", "operator")).unwrap();
        let r3 = l.append(&Event::new("restore", "operator")).unwrap();
        assert!(r1.flags.is_empty() && r2.flags.is_empty());
        assert_eq!(r3.flags, vec![FLAG_BURST_RESTORE.to_string()]);
        let d1 = l
            .append(
                &Event::new("shred", "auditor")
                    .actor("eve")
                    .outcome(Outcome::Denied),
            )
            .unwrap();
        let other = l
            .append(
                &Event::new("shred", "auditor")
                    .actor("ann")
                    .outcome(Outcome::Denied),
            )
            .unwrap();
        let d2 = l
            .append(
                &Event::new("shred", "auditor")
                    .actor("eve")
                    .outcome(Outcome::Denied),
            )
            .unwrap();
        assert!(d1.flags.is_empty() && other.flags.is_empty());
        assert!(d2.flags.contains(&FLAG_REPEATED_DENIED.to_string()));
        // Three shred ops in the window: a shred burst too.
        assert!(d2.flags.contains(&FLAG_BURST_SHRED.to_string()));
        assert!(l.verify(None).unwrap().ok());
    }

    #[test]
    fn checkpoint_when_due() {
        let (_d, l) = log();
        let k = SigningKey::generate(&mut rand::rngs::OsRng);
        let day = chrono::Duration::days(1);
        assert!(l.checkpoint_if_due(&k, "t", 3, day).unwrap().is_none());
        l.append(&Event::new("backup", "job")).unwrap();
        assert!(l.checkpoint_if_due(&k, "t", 3, day).unwrap().is_none());
        assert!(l
            .checkpoint_if_due(&k, "t", 3, chrono::Duration::zero())
            .unwrap()
            .is_some());
        assert!(l.checkpoint_if_due(&k, "t", 1, day).unwrap().is_none());
        let v = l.verify(Some(&k.verifying_key())).unwrap();
        assert_eq!((v.checkpoints_verified, v.unsigned_tail), (1, 0));
    }

    #[test]
    fn measurements_go_into_detail() {
        let e = Event::new("backup", "job")
            .detail("snapshot taken")
            .measure("bytes", 10.0);
        assert_eq!(e.detail.as_deref(), Some("snapshot taken bytes=10"));
        assert_eq!(
            segment_range("audit/000000000001-000000000042.jsonl"),
            Some((1, 42))
        );
        assert_eq!(segment_range("audit/x.jsonl"), None);
    }
}
