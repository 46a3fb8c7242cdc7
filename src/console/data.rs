//! What the console shows, read from the policy directory, the state
//! directory and the targets; shared by the HTML pages, the JSON API and
//! the metrics.

use crate::audit::{AuditLog, Verification};
use crate::policy::Policy;
use crate::signed;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Document kind of drill reports.
pub const REPORT_KIND: &str = "custos.drill-report";
/// Document kind of destruction certificates.
pub const CERTIFICATE_KIND: &str = "custos.certificate";

/// A policy file of the policy directory, loaded or refused.
#[derive(Clone, Debug)]
pub struct PolicyEntry {
    /// The policy's name (the file stem when it could not be loaded).
    pub name: String,
    pub file: PathBuf,
    pub policy: Result<Policy, String>,
}

/// Every `*.toml` in `dir`, sorted by name.
pub fn load_policies(dir: &Path) -> Vec<PolicyEntry> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out: Vec<PolicyEntry> = files
        .into_iter()
        .map(|file| match Policy::load(&file) {
            Ok(p) => PolicyEntry {
                name: p.name.clone(),
                file,
                policy: Ok(p),
            },
            Err(e) => PolicyEntry {
                name: file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                file,
                policy: Err(e.to_string()),
            },
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The public key that verifies a policy's documents: `signing.pub`
/// beside the policy's identity file.
pub fn public_key_for(policy: &Policy) -> Result<VerifyingKey, String> {
    let p = policy
        .keys
        .identity
        .parent()
        .map(|d| d.join(crate::keys::PUBLIC_KEY_FILE))
        .unwrap_or_else(|| PathBuf::from(crate::keys::PUBLIC_KEY_FILE));
    crate::keys::load_public_key(&p).map_err(|e| e.to_string())
}

/// Whether a document's signature checked out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum VerifyState {
    /// The signature is valid under the policy's public key.
    Valid { key_id: String },
    /// The document was altered, is signed by another key, or is malformed.
    Invalid { why: String },
    /// No public key to check with.
    Unverified { why: String },
}

impl VerifyState {
    /// `valid`, `invalid` or `unverified`.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyState::Valid { .. } => "valid",
            VerifyState::Invalid { .. } => "invalid",
            VerifyState::Unverified { .. } => "unverified",
        }
    }
}

/// One signed document (report or certificate) as read from the state
/// directory.
#[derive(Clone, Debug, Serialize)]
pub struct Doc {
    pub id: String,
    pub kind: String,
    pub created: Option<String>,
    pub verification: VerifyState,
    /// The body (read without trusting it when the verification failed).
    pub body: Value,
    /// The exact signed text.
    #[serde(skip)]
    pub text: String,
}

impl Doc {
    /// A string field of the body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// Whether `id` is safe as a file name (no separators, no dot-dot).
pub fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn read_doc(path: &Path, kind: &str, key: Option<&VerifyingKey>, key_err: &str) -> Option<Doc> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = path.file_stem()?.to_string_lossy().into_owned();
    let Ok((found_kind, body)) = signed::peek(&text) else {
        return Some(Doc {
            id,
            kind: String::new(),
            created: None,
            verification: VerifyState::Invalid {
                why: "not a signed custos document".into(),
            },
            body: Value::Null,
            text,
        });
    };
    let verification = match key {
        Some(k) => match signed::verify(&text, k, Some(kind)) {
            Ok(v) => VerifyState::Valid { key_id: v.key_id },
            Err(e) => VerifyState::Invalid { why: e.to_string() },
        },
        None => VerifyState::Unverified {
            why: key_err.to_string(),
        },
    };
    Some(Doc {
        id,
        kind: found_kind,
        created: body
            .get("created")
            .and_then(Value::as_str)
            .map(String::from),
        verification,
        body,
        text,
    })
}

/// The signed documents of `kind` for `policy` under `<state>/<sub>/<policy>/`,
/// newest first, each verified with `key`.
pub fn docs(
    state: &Path,
    sub: &str,
    policy: &str,
    kind: &str,
    key: Result<&VerifyingKey, &str>,
) -> Vec<Doc> {
    let dir = state.join(sub).join(policy);
    let mut out: Vec<Doc> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter_map(|p| match key {
                    Ok(k) => read_doc(&p, kind, Some(k), ""),
                    Err(why) => read_doc(&p, kind, None, why),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    out
}

/// Reports and certificates of one policy.
pub struct PolicyDocs {
    pub reports: Vec<Doc>,
    pub certificates: Vec<Doc>,
}

/// Loads the reports and certificates of `policy`.
pub fn policy_docs(state: &Path, policy: &Policy) -> PolicyDocs {
    let key = public_key_for(policy);
    let k = key.as_ref().map_err(String::as_str);
    PolicyDocs {
        reports: docs(state, "reports", &policy.name, REPORT_KIND, k),
        certificates: docs(state, "certificates", &policy.name, CERTIFICATE_KIND, k),
    }
}

/// One snapshot, as listed to auditors (no customer values).
#[derive(Clone, Debug, Serialize)]
pub struct SnapRow {
    pub id: String,
    pub time: String,
    pub items: u64,
    pub bytes_read: u64,
    pub new_bytes_stored: u64,
    pub duration_ms: u64,
}

/// The snapshots on one target and its replication state.
#[derive(Clone, Debug, Serialize)]
pub struct TargetState {
    pub target: String,
    pub offsite: bool,
    pub snapshots: Vec<SnapRow>,
    pub latest: Option<String>,
    /// Seconds the target's latest snapshot is behind the primary's (0 for
    /// the primary itself; `None` when unknown).
    pub lag_seconds: Option<i64>,
    pub error: Option<String>,
}

/// Lists the snapshots of every target of `policy` (reads the vault's
/// repository keys, not its unit keys, to open the encrypted manifests).
pub async fn target_states(policy: &Policy) -> Vec<TargetState> {
    let mut out = Vec::new();
    // Read once for every target.
    let keys = crate::ops::open_repository_keys(policy)
        .await
        .map_err(|e| e.to_string());
    for t in &policy.targets {
        let r = async {
            let keys = keys.as_ref().map_err(Clone::clone)?;
            let repo = crate::ops::MetaRepo::with_keys(policy, Some(&t.name), keys)
                .await
                .map_err(|e| e.to_string())?;
            let (list, _bad) =
                crate::repo::snapshot::Snapshot::summaries_with_ids(&repo.target, &repo.meta)
                    .await
                    .map_err(|e| e.to_string())?;
            Ok::<_, String>(list)
        }
        .await;
        let (snapshots, error) = match r {
            Ok(list) => (
                list.into_iter()
                    .map(|s| SnapRow {
                        id: s.head.id,
                        time: s.head.time,
                        items: s.stats.items,
                        bytes_read: s.stats.bytes_read,
                        new_bytes_stored: s.stats.new_bytes_stored,
                        duration_ms: s.stats.duration_ms,
                    })
                    .collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        out.push(TargetState {
            target: t.name.clone(),
            offsite: t.offsite,
            latest: snapshots.last().map(|s| s.time.clone()),
            snapshots,
            lag_seconds: None,
            error,
        });
    }
    let primary = policy.primary().name.clone();
    let ptime = out
        .iter()
        .find(|s| s.target == primary)
        .and_then(|s| s.latest.as_deref())
        .and_then(parse_time);
    for s in &mut out {
        s.lag_seconds = if s.target == primary {
            s.error.is_none().then_some(0)
        } else {
            match (ptime, s.latest.as_deref().and_then(parse_time)) {
                (Some(p), Some(t)) => Some((p - t).num_seconds().max(0)),
                _ => None,
            }
        };
    }
    out
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The audit log's verification, or the error reading it.
pub fn audit_state(log: &AuditLog, key: Option<&VerifyingKey>) -> Result<Verification, String> {
    log.verify(key).map_err(|e| e.to_string())
}

/// Pending destructions of `policy` as of the last background refresh
/// (0 before the first).
pub fn pending_shreds(app: &super::App, policy: &str) -> usize {
    app.pending_shreds
        .lock()
        .expect("pending lock")
        .get(policy)
        .copied()
        .unwrap_or(0)
}
