//! The drill report: its body (what an auditor reads), how it is signed,
//! stored and found again.
//!
//! The body holds counts, checksums, times, ids, pseudonyms and the SQL text
//! of assertions, never a customer value: assertion results carry their
//! expected and actual values only when the expectation is a number or a
//! boolean (a count or a yes/no), otherwise only whether they held.

use crate::signed::{self, SignedError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `kind` of a signed drill report.
pub const REPORT_KIND: &str = "custos.drill-report";
/// The version of the report body.
pub const REPORT_VERSION: u32 = 1;
/// The prefix of report objects on the primary target.
pub const TARGET_PREFIX: &str = "reports/";

/// The outcome of a drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    }
}

/// What kind of failure a FAIL is (decides the exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// Stored or restored data is missing, altered or unauthentic, or the
    /// restored store does not match what the snapshot recorded.
    Integrity,
    /// Anything else: an assertion, the RTO, a target that cannot be reached.
    Other,
}

/// The snapshot a drill restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    pub id: String,
    /// When the store was read (RFC 3339 UTC).
    pub time: String,
    /// How it was chosen: `latest`, `random` or `id`.
    pub selection: String,
}

/// The target a drill restored from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    pub name: String,
    /// The URL with any credentials removed.
    pub url: String,
    pub offsite: bool,
}

/// Recovery time: measured against the policy's objective.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rto {
    /// Wall time from the drill's start to a complete, usable restored store
    /// (milliseconds); absent when the restore did not complete.
    pub measured_ms: Option<u64>,
    /// The policy's `drill.rto` (milliseconds), if set.
    pub target_ms: Option<u64>,
    /// Whether the measured time is within the objective (absent when
    /// either is missing).
    pub met: Option<bool>,
}

/// What was restored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restored {
    /// Rows (record mode) or entries (file mode) restored.
    pub items: u64,
    /// Bytes of restored content (canonical rows or file contents).
    pub bytes: u64,
    /// Bytes downloaded from the target.
    pub bytes_fetched: u64,
    /// `bytes` per second of the measured recovery time.
    pub bytes_per_s: u64,
    /// `items` per second of the measured recovery time.
    pub items_per_s: u64,
}

/// One table: what the snapshot recorded against what was restored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableCheck {
    pub name: String,
    pub class: String,
    pub rows_expected: u64,
    pub rows_restored: u64,
    /// Rows left out because their groups were shredded (not a loss).
    pub rows_shredded: u64,
    pub groups_shredded: u64,
    /// The snapshot's keyed order-independent checksum (hex).
    pub checksum_expected: String,
    /// The same checksum over the restored rows (absent if not computed).
    pub checksum_restored: Option<String>,
    /// `rows_restored + rows_shredded == rows_expected`.
    pub count_ok: bool,
    /// Checksums equal; absent when they cannot be compared (rows were
    /// shredded, so the restored set is a subset by design).
    pub checksum_ok: Option<bool>,
}

/// A SQLite check (`PRAGMA integrity_check`, `PRAGMA foreign_key_check`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PragmaCheck {
    pub ok: bool,
    /// Problems found.
    pub problems: u64,
    /// Up to ten problem descriptions (table and index names, never values).
    pub details: Vec<String>,
}

/// One `[[drill.assert]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionResult {
    pub sql: String,
    pub passed: bool,
    /// The expected value, when it is a number or a boolean.
    pub expected: Option<serde_json::Value>,
    /// The value the query returned, when the expectation is a number or a
    /// boolean and the result is one too.
    pub actual: Option<serde_json::Value>,
    /// Why the values are not shown, or why the query failed.
    pub note: Option<String>,
}

/// Groups of one table left out because their keys were destroyed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShreddedTable {
    pub table: String,
    pub rows: u64,
    pub groups: u64,
    /// The groups (pseudonym and time unit), at most [`MAX_LISTED`].
    pub listed: Vec<ShreddedGroup>,
}

/// At most this many shredded groups are listed per table.
pub const MAX_LISTED: usize = 1000;

/// One shredded group: its pseudonym (the manifest's 8-byte group id, hex,
/// unlinkable to a subject without the destroyed key) and time unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShreddedGroup {
    pub group: String,
    pub unit: String,
    pub rows: u64,
}

/// The body of a signed drill report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillReport {
    pub version: u32,
    /// `drill-YYYYMMDDTHHMMSSZ-<8 hex>`.
    pub id: String,
    pub policy: String,
    /// When the report was made (RFC 3339 UTC).
    pub created: String,
    pub custos_version: String,
    pub verdict: Verdict,
    /// Set on FAIL.
    pub failure: Option<FailureKind>,
    /// Every reason for a FAIL (empty on PASS).
    pub reasons: Vec<String>,
    /// The store kind (`sqlite`, `files`).
    pub store: String,
    pub snapshot: Option<SnapshotRef>,
    pub target: TargetRef,
    pub started: String,
    pub finished: String,
    pub rto: Rto,
    pub restored: Restored,
    pub tables: Vec<TableCheck>,
    pub integrity_check: Option<PragmaCheck>,
    pub foreign_key_check: Option<PragmaCheck>,
    pub assertions: Vec<AssertionResult>,
    pub shredded: Vec<ShreddedTable>,
    /// Objects found damaged (`target:path`).
    pub corrupt_objects: Vec<String>,
    /// What was done about them.
    pub repair: Option<String>,
    /// For a re-drill after a repair: the id of the failed drill it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrill_of: Option<String>,
}

impl DrillReport {
    /// Signs the report; returns the canonical text to store.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Result<String, SignedError> {
        signed::sign(key, REPORT_KIND, self)
    }

    /// Reads a report body from a signed document WITHOUT checking the
    /// signature (for listing and display).
    pub fn peek(text: &str) -> Result<DrillReport, SignedError> {
        let (kind, body) = signed::peek(text)?;
        if kind != REPORT_KIND {
            return Err(SignedError::WrongKind {
                found: kind,
                expected: REPORT_KIND.into(),
            });
        }
        serde_json::from_value(body).map_err(|e| SignedError::Json(e.to_string()))
    }

    /// Checks a signed report with `key` and returns its body.
    pub fn verify(
        text: &str,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<DrillReport, SignedError> {
        let v = signed::verify(text, key, Some(REPORT_KIND))?;
        serde_json::from_value(v.body).map_err(|e| SignedError::Json(e.to_string()))
    }
}

/// A new report id: `drill-YYYYMMDDTHHMMSSZ-<8 hex random>`.
pub fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "drill-{}-{:08x}",
        now.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    )
}

/// Whether `s` looks like a report id (so it can be used in a path).
pub fn is_report_id(s: &str) -> bool {
    s.starts_with("drill-")
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where the local copy of a report lives: `<state>/reports/<policy>/<id>.json`.
pub fn local_path(reports_dir: &Path, policy: &str, id: &str) -> PathBuf {
    reports_dir.join(policy).join(format!("{id}.json"))
}

/// One locally stored report.
#[derive(Clone, Debug)]
pub struct StoredReport {
    pub path: PathBuf,
    pub policy: String,
    pub text: String,
}

/// Every report stored under `reports_dir` (for `policy` only if given),
/// oldest first. Unreadable files are skipped with a warning.
pub fn list_local(reports_dir: &Path, policy: Option<&str>) -> std::io::Result<Vec<StoredReport>> {
    let mut out = Vec::new();
    let policies: Vec<String> = match policy {
        Some(p) => vec![p.to_string()],
        None => match std::fs::read_dir(reports_dir) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        },
    };
    for p in policies {
        let dir = reports_dir.join(&p);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("drill-") || !name.ends_with(".json") {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => out.push(StoredReport {
                    path,
                    policy: p.clone(),
                    text,
                }),
                Err(err) => tracing::warn!("skipping report {}: {err}", path.display()),
            }
        }
    }
    // Ids start with the UTC time, so the name orders them.
    out.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
    Ok(out)
}

/// Finds a locally stored report by id (or unique id prefix).
pub fn find_local(reports_dir: &Path, id: &str) -> std::io::Result<Vec<StoredReport>> {
    Ok(list_local(reports_dir, None)?
        .into_iter()
        .filter(|r| {
            r.path
                .file_stem()
                .map(|s| s.to_string_lossy().starts_with(id))
                .unwrap_or(false)
        })
        .collect())
}
