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

use crate::signed::compact;
use chrono::{SecondsFormat, Utc};
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
}

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
        Ok(AuditLog { path })
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
        let mut entry = Entry {
            seq,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: ev.actor.clone(),
            role: ev.role.clone(),
            policy: ev.policy.clone(),
            op: ev.op.clone(),
            objects: ev.objects.clone(),
            outcome: ev.outcome,
            detail: ev.detail.clone(),
            flags: ev.flags.clone(),
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
}
