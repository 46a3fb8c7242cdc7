//! Destruction certificates: the signed record of one crypto-shred,
//! modelled on NIST SP 800-88's certificate of sanitization.
//!
//! A certificate is a signed document ([`crate::signed`]) of kind
//! [`KIND`], stored as its exact signed text locally at
//! `<state>/certificates/<policy>/<id>.json` and on every target of the
//! policy as `certificates/<id>.json` (the primary must succeed). It is a
//! public document: it names the unit by pseudonym or period, never by a
//! subject id, and holds key ids and commitments, never keys. Field by
//! field in `docs/SHREDDING.md`.

use super::destroy::{Outcome, TargetCoverage};
use super::ledger::JournalEntry;
use super::{rfc3339, ShredError, Unit};
use crate::policy::Policy;
use crate::state::StateDir;
use crate::vault::KeyKind;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The signed-document kind of certificates.
pub const KIND: &str = "custos.certificate";
/// The method named in every certificate.
pub const METHOD: &str = "cryptographic erase (purge)";

/// How the verification was done (written into every certificate).
const VERIFICATION_METHOD: &str = "after deletion: (1) every object at every vault location listed, every key shard unwrapped with the service identity and searched for the key ids and for any key with the recorded commitment; objects that are not part of the vault purged first; (2) the vault reopened from every location and checked to lack the keys; (3) every snapshot on every target walked: each group sealed under the unit's keys must fail to resolve to a key, and a sample of its chunks is fetched to confirm what ciphertext remains";

/// The body of a certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateBody {
    pub id: String,
    pub policy: String,
    pub created: String,
    pub custos_version: String,
    pub tool: String,
    pub standard: String,
    pub method: String,
    pub unit: Unit,
    /// `subject:<pseudonym>`, `period:<class>:<label>`.
    pub unit_label: String,
    /// The data class (`all` for a subject: its key covers every class).
    pub data_class: String,
    pub requester: String,
    pub requested: String,
    pub request_reason: Option<String>,
    pub request_ref: Option<String>,
    pub grace_skipped: bool,
    pub performer: String,
    pub started: String,
    pub key_ids: Vec<String>,
    pub key_commitments: Vec<String>,
    pub commitment_scheme: String,
    pub vault_locations: Vec<String>,
    pub targets: Vec<TargetCoverage>,
    pub snapshots_affected: u64,
    pub groups_unreadable: u64,
    pub rows_unreadable: u64,
    pub verification: Verification,
    pub residual_ciphertext: String,
}

/// What was verified, and the result.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub method: String,
    pub vault_objects_read: u64,
    pub vault_payloads_searched: u64,
    pub key_holders_found: u64,
    pub stale_objects_purged: Vec<String>,
    pub reopened_vault_without_keys: bool,
    pub targets_unverified: Vec<String>,
    pub result: String,
    /// Each vault location and whether its store keeps earlier versions
    /// of objects (S3 bucket versioning), asked when the certificate is
    /// made: the search above covers the objects a location lists, not
    /// such versions.
    pub vault_versioning: Vec<crate::ops::VaultVersioning>,
    /// What that means for copies of the key, in words.
    pub key_residual: String,
}

/// The certificate's statement on copies of the key that the search of
/// the vault cannot see: earlier object versions kept by a location.
fn key_residual(asked: &[crate::ops::VaultVersioning]) -> String {
    let keeping: Vec<&str> = asked
        .iter()
        .filter(|v| v.versioning.keeps_versions())
        .map(|v| v.location.as_str())
        .collect();
    if !keeping.is_empty() {
        return format!(
            "Earlier versions of vault objects may still hold the key: {} keep(s) object versions (S3 bucket versioning), which custos can neither list nor delete; they go only when the store's lifecycle rule expires noncurrent versions.",
            keeping.join(", ")
        );
    }
    let unknown: Vec<String> = asked
        .iter()
        .filter(|v| matches!(v.versioning, crate::target::Versioning::Unknown(_)))
        .map(|v| format!("{} ({})", v.location, v.versioning.describe()))
        .collect();
    if !unknown.is_empty() {
        return format!(
            "Whether these vault locations keep object versions could not be asked: {}; no other S3 location keeps them.",
            unknown.join(", ")
        );
    }
    "No S3 vault location keeps object versions (snapshots of a folder location's file system cannot be seen from custos).".into()
}

/// The certificate's overall residual statement, built from the per-target
/// ones (`targets[].residual`).
fn residual_summary(targets: &[TargetCoverage], sampled: u64) -> String {
    let remaining: Vec<&str> = targets
        .iter()
        .filter(|t| t.residual.remains)
        .map(|t| t.name.as_str())
        .collect();
    let deleted: u64 = targets.iter().map(|t| t.packs_deleted).sum();
    let mut s = format!(
        "{sampled} sampled chunk(s) of the unit were fetched before any deletion; {deleted} pack(s) holding only the unit's ciphertext were deleted. "
    );
    if remaining.is_empty() {
        s.push_str("No ciphertext of the unit remains on any target listed.");
    } else {
        s.push_str(&format!(
            "Unreadable ciphertext of the unit remains on: {} (see each target's `residual` for why); without the destroyed key it can be neither decrypted nor identified.",
            remaining.join(", ")
        ));
    }
    s
}

/// A stored certificate.
#[derive(Clone, Debug, Serialize)]
pub struct Issued {
    pub id: String,
    pub created: String,
    pub local: PathBuf,
}

/// A new certificate id: `cert-YYYYMMDDTHHMMSSZ-<8 hex>`.
pub fn new_id(t: DateTime<Utc>) -> String {
    let mut r = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!("cert-{}-{}", t.format("%Y%m%dT%H%M%SZ"), hex::encode(r))
}

/// The local directory of a policy's certificates.
pub fn local_dir(state: &StateDir, policy: &str) -> Result<PathBuf, ShredError> {
    let d = state.sub("certificates")?.join(policy);
    std::fs::create_dir_all(&d).map_err(|source| ShredError::Io {
        path: d.clone(),
        source,
    })?;
    Ok(d)
}

/// Builds, signs and stores the certificate of one destruction.
pub async fn issue(
    policy: &Policy,
    state: &StateDir,
    targets: &[crate::target::Target],
    j: &JournalEntry,
    o: &Outcome,
    _run_now: DateTime<Utc>,
) -> Result<Issued, ShredError> {
    let versioning = crate::ops::vault_versioning(policy).await;
    for v in versioning.iter().filter(|v| v.versioning.keeps_versions()) {
        tracing::warn!(
            "{}; the certificate says earlier versions may still hold the destroyed key",
            v.risk()
        );
    }
    let created_t = Utc::now();
    let id = new_id(created_t);
    let unit = j.request.unit.clone();
    let data_class = match unit.kind {
        KeyKind::Subject => "all (subject key)".to_string(),
        _ => unit.class().unwrap_or("").to_string(),
    };
    let snapshots_affected = o
        .targets
        .iter()
        .map(|t| t.snapshots_affected.len() as u64)
        .sum();
    let unverified: Vec<String> = o
        .targets
        .iter()
        .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.name)))
        .collect();
    let sampled: u64 = o.targets.iter().map(|t| t.sampled_chunks).sum();
    let body = CertificateBody {
        id: id.clone(),
        policy: policy.name.clone(),
        created: rfc3339(created_t),
        custos_version: crate::VERSION.to_string(),
        tool: format!("custos {}", crate::VERSION),
        standard: "NIST SP 800-88 Rev. 1 certificate of sanitization, adapted to cryptographic erase of backup data".into(),
        method: METHOD.into(),
        unit_label: unit.to_string(),
        unit,
        data_class,
        requester: j.request.requester.clone(),
        requested: j.request.requested.clone(),
        request_reason: j.request.reason.clone(),
        request_ref: j.request.request_ref.clone(),
        grace_skipped: j.request.now,
        performer: j.performer.clone(),
        started: j.started.clone(),
        key_ids: j.key_ids.iter().map(|k| k.to_string()).collect(),
        key_commitments: j.commitments.clone(),
        commitment_scheme: "BLAKE3 derive_key(context \"custos 2026 key commitment v1\", key): binds the key without revealing it".into(),
        vault_locations: o.vault.locations.iter().map(|u| crate::target::redact_url(u)).collect(),
        targets: o.targets.clone(),
        snapshots_affected,
        groups_unreadable: o.groups_unreadable(),
        rows_unreadable: o.rows_unreadable(),
        verification: Verification {
            method: VERIFICATION_METHOD.into(),
            vault_objects_read: o.vault.objects_read,
            vault_payloads_searched: o.vault.payloads_searched,
            key_holders_found: o.vault.holders.len() as u64,
            stale_objects_purged: o.purged.iter().map(|u| crate::target::redact_url(u)).collect(),
            reopened_vault_without_keys: o.reopened_without_keys,
            targets_unverified: unverified,
            result: "passed: no vault object holds the key; no group of the unit resolves to a key".into(),
            key_residual: key_residual(&versioning),
            vault_versioning: versioning,
        },
        residual_ciphertext: residual_summary(&o.targets, sampled),
    };
    let signing =
        crate::keys::load_signing_key(&crate::keys::signing_key_path_for(&policy.keys.identity))?;
    let text = crate::signed::sign(&signing, KIND, &body)
        .map_err(|e| ShredError::Certificate(e.to_string()))?;
    let dir = local_dir(state, &policy.name)?;
    let local = dir.join(format!("{id}.json"));
    std::fs::write(&local, &text).map_err(|source| ShredError::Io {
        path: local.clone(),
        source,
    })?;
    let object = format!("certificates/{id}.json");
    for (t, target) in policy.targets.iter().zip(targets) {
        let r = async {
            target
                .put(&object, bytes::Bytes::from(text.clone().into_bytes()))
                .await?;
            Ok::<(), ShredError>(())
        }
        .await;
        if let Err(e) = r {
            if !t.offsite {
                return Err(e);
            }
            tracing::warn!(target = %t.name, error = %e, "cannot store the certificate on an off-site target");
        }
    }
    Ok(Issued {
        id,
        created: body.created,
        local,
    })
}

/// One certificate found locally.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub policy: String,
    pub created: String,
    pub unit: String,
    pub path: PathBuf,
}

/// The certificates stored locally, for one policy or all, oldest first.
pub fn list(state: &StateDir, policy: Option<&str>) -> Result<Vec<Listed>, ShredError> {
    let root = state.sub("certificates")?;
    let mut out = Vec::new();
    let dirs: Vec<PathBuf> = match policy {
        Some(p) => vec![root.join(p)],
        None => read_dir(&root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect(),
    };
    for d in dirs {
        if !d.exists() {
            continue;
        }
        for f in read_dir(&d)? {
            if f.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = read(&f)?;
            let Ok((kind, body)) = crate::signed::peek(&text) else {
                continue;
            };
            if kind != KIND {
                continue;
            }
            let s = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            out.push(Listed {
                id: s("id"),
                policy: s("policy"),
                created: s("created"),
                unit: s("unit_label"),
                path: f,
            });
        }
    }
    out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    Ok(out)
}

fn read_dir(d: &Path) -> Result<Vec<PathBuf>, ShredError> {
    let rd = std::fs::read_dir(d).map_err(|source| ShredError::Io {
        path: d.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

fn read(p: &Path) -> Result<String, ShredError> {
    std::fs::read_to_string(p).map_err(|source| ShredError::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// Finds a certificate's text: `what` is a file path, or an id stored
/// locally (under any policy).
pub fn load(state: &StateDir, what: &str) -> Result<(PathBuf, String), ShredError> {
    let p = Path::new(what);
    if p.is_file() {
        return Ok((p.to_path_buf(), read(p)?));
    }
    for l in list(state, None)? {
        if l.id == what {
            let t = read(&l.path)?;
            return Ok((l.path, t));
        }
    }
    Err(ShredError::Certificate(format!(
        "no certificate `{what}`: give a file, or an id listed by `custos certificates list`"
    )))
}

/// Verifies a certificate's text with a public key; returns its body.
pub fn verify(text: &str, key: &ed25519_dalek::VerifyingKey) -> Result<Value, ShredError> {
    crate::signed::verify(text, key, Some(KIND))
        .map(|v| v.body)
        .map_err(|e| ShredError::Certificate(format!("verification FAILED: {e}")))
}

fn field(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(field).collect::<Vec<_>>().join(", "),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// The rows shown by the text and HTML forms: (label, value).
fn rows(body: &Value) -> Vec<(String, String)> {
    let g = |k: &str| field(body.get(k).unwrap_or(&Value::Null));
    let ver = body.get("verification").cloned().unwrap_or(Value::Null);
    let vg = |k: &str| field(ver.get(k).unwrap_or(&Value::Null));
    let mut out = vec![
        ("Certificate".into(), g("id")),
        ("Policy".into(), g("policy")),
        ("Created".into(), g("created")),
        ("Tool".into(), g("tool")),
        ("Standard".into(), g("standard")),
        ("Method".into(), g("method")),
        ("Unit".into(), g("unit_label")),
        ("Data class".into(), g("data_class")),
        ("Requested by".into(), g("requester")),
        ("Requested at".into(), g("requested")),
        ("Reason".into(), g("request_reason")),
        ("Request reference".into(), g("request_ref")),
        ("Grace period skipped".into(), g("grace_skipped")),
        ("Performed by".into(), g("performer")),
        ("Started".into(), g("started")),
        ("Key ids".into(), g("key_ids")),
        ("Key commitments".into(), g("key_commitments")),
        ("Commitment scheme".into(), g("commitment_scheme")),
        ("Vault locations".into(), g("vault_locations")),
        ("Snapshots affected".into(), g("snapshots_affected")),
        ("Groups unreadable".into(), g("groups_unreadable")),
        ("Rows unreadable".into(), g("rows_unreadable")),
    ];
    if let Some(Value::Array(ts)) = body.get("targets") {
        for t in ts {
            let tg = |k: &str| field(t.get(k).unwrap_or(&Value::Null));
            out.push((
                format!("Target {}", tg("name")),
                format!(
                    "{} ({}{}): {} snapshot(s) scanned, {} affected, {} group(s) / {} row(s), {} unreadable, {} chunk(s) sampled; {} pack(s) deleted; residual ciphertext: {}{}",
                    tg("url"),
                    if t.get("offsite") == Some(&Value::Bool(true)) { "off-site" } else { "primary" },
                    if t.get("worm") == Some(&Value::Bool(true)) { ", write-once" } else { "" },
                    tg("snapshots_scanned"),
                    t.get("snapshots_affected").and_then(Value::as_array).map_or(0, |a| a.len()),
                    tg("groups"),
                    tg("rows"),
                    tg("groups_unreadable"),
                    tg("sampled_chunks"),
                    field(t.get("packs_deleted").unwrap_or(&Value::Null)),
                    match t.get("residual") {
                        Some(r) => format!(
                            "{} ({})",
                            if r.get("remains") == Some(&Value::Bool(true)) { "remains" } else { "none" },
                            field(r.get("why").unwrap_or(&Value::Null))
                        ),
                        None => "-".into(),
                    },
                    match t.get("error") {
                        Some(Value::String(e)) => format!("; NOT VERIFIED: {e}"),
                        _ => String::new(),
                    }
                ),
            ));
        }
    }
    out.extend([
        ("Verification method".into(), vg("method")),
        ("Vault objects read".into(), vg("vault_objects_read")),
        ("Key holders found".into(), vg("key_holders_found")),
        ("Stale objects purged".into(), vg("stale_objects_purged")),
        (
            "Reopened vault lacks keys".into(),
            vg("reopened_vault_without_keys"),
        ),
        ("Verification result".into(), vg("result")),
        (
            "Vault object versions".into(),
            match ver.get("vault_versioning").and_then(Value::as_array) {
                Some(a) => a
                    .iter()
                    .map(|l| format!("{}: {}", field(&l["location"]), field(&l["versioning"])))
                    .collect::<Vec<_>>()
                    .join("; "),
                None => "-".into(),
            },
        ),
        ("Residual key copies".into(), vg("key_residual")),
        ("Residual ciphertext".into(), g("residual_ciphertext")),
    ]);
    out
}

/// The certificate as plain text.
pub fn render_text(body: &Value) -> String {
    let mut s = String::from("CERTIFICATE OF CRYPTOGRAPHIC ERASURE (custos)\n\n");
    for (k, v) in rows(body) {
        s.push_str(&format!("{k:<26} {v}\n"));
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The certificate as a standalone HTML page.
pub fn render_html(body: &Value) -> String {
    let id = esc(&field(body.get("id").unwrap_or(&Value::Null)));
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Certificate {id}</title>\n<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;vertical-align:top;padding-right:1em}}td{{word-break:break-all}}</style></head>\n<body><h1>Certificate of cryptographic erasure</h1>\n<table>\n"
    );
    for (k, v) in rows(body) {
        s.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            esc(&k),
            esc(&v)
        ));
    }
    s.push_str("</table>\n<p>Verify the signed JSON form with <code>custos certificates verify</code> and the service's public key.</p>\n</body></html>\n");
    s
}
