//! `custos reports list [--policy P] [--json]`,
//! `custos reports show ID [--format text|json|html]`,
//! `custos reports verify FILE|ID [--public-key FILE | --policy P]`.
//!
//! Reports are read from the local state directory
//! (`<state>/reports/<policy>/<id>.json`). `verify` exits 0 when the
//! signature holds, 3 when the document was altered or signed by another
//! key, 2 on bad input.

use super::{wrap, Failure};
use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use custos::drill::report::{self, DrillReport, StoredReport};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ReportsCmd {
    /// List the drill reports kept locally, oldest first.
    List(ListArgs),
    /// Print one report (text summary, the signed JSON, or an HTML page).
    Show(ShowArgs),
    /// Check a report's signature.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// A policy file or policy name.
    #[arg(long)]
    policy: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Html,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A report id (or unique prefix).
    id: String,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// A report file, or the id of a locally kept report.
    report: String,
    /// The service's public key (`signing.pub`).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A policy file: use the `signing.pub` beside its `[keys] identity`.
    #[arg(long, conflicts_with = "public_key")]
    policy: Option<PathBuf>,
}

fn bad(e: anyhow::Error) -> Failure {
    Failure { code: 2, error: e }
}

fn reports_dir() -> Result<PathBuf, Failure> {
    let state = super::state_dir().map_err(wrap)?;
    Ok(state.root().join("reports"))
}

fn policy_name(p: &str) -> Result<String, Failure> {
    if Path::new(p).is_file() {
        Ok(super::load_policy(Path::new(p)).map_err(wrap)?.name)
    } else {
        Ok(p.to_string())
    }
}

fn find_one(id: &str) -> Result<StoredReport, Failure> {
    let dir = reports_dir()?;
    let mut found = report::find_local(&dir, id).map_err(|e| wrap(e.into()))?;
    match found.len() {
        0 => Err(bad(anyhow!(
            "no drill report `{id}` under {} (`custos reports list` shows them)",
            dir.display()
        ))),
        1 => Ok(found.remove(0)),
        n => Err(bad(anyhow!(
            "`{id}` matches {n} reports; give more of the id"
        ))),
    }
}

pub fn run(c: ReportsCmd) -> Result<(), Failure> {
    match c {
        ReportsCmd::List(a) => list(a),
        ReportsCmd::Show(a) => show(a),
        ReportsCmd::Verify(a) => verify(a),
    }
}

fn list(a: ListArgs) -> Result<(), Failure> {
    let policy = a.policy.as_deref().map(policy_name).transpose()?;
    let dir = reports_dir()?;
    let all = report::list_local(&dir, policy.as_deref()).map_err(|e| wrap(e.into()))?;
    let mut rows = Vec::new();
    for s in &all {
        match DrillReport::peek(&s.text) {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("warning: {}: {e}", s.path.display()),
        }
    }
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "policy": r.policy,
                    "created": r.created,
                    "verdict": r.verdict,
                    "snapshot": r.snapshot.as_ref().map(|s| s.id.clone()),
                    "target": r.target.name,
                    "rto_ms": r.rto.measured_ms,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&v).map_err(|e| wrap(e.into()))?);
    } else {
        for r in &rows {
            println!(
                "{}  {:<4}  {:<12} {:<10} {}",
                r.id,
                r.verdict.as_str(),
                r.policy,
                r.target.name,
                r.snapshot.as_ref().map(|s| s.id.as_str()).unwrap_or("-")
            );
        }
        if rows.is_empty() {
            println!("no drill reports under {}", dir.display());
        }
    }
    Ok(())
}

fn show(a: ShowArgs) -> Result<(), Failure> {
    let s = find_one(&a.id)?;
    match a.format {
        Format::Json => print!("{}", s.text),
        Format::Text | Format::Html => {
            let r = DrillReport::peek(&s.text).map_err(|e| Failure {
                code: 3,
                error: anyhow!("{}: {e}", s.path.display()),
            })?;
            match a.format {
                Format::Html => print!("{}", custos::drill::render::html(&r)),
                _ => {
                    print!("{}", custos::drill::render::text(&r));
                    println!(
                        "  (signature not checked here: `custos reports verify {}`)",
                        r.id
                    );
                }
            }
        }
    }
    Ok(())
}

fn verify(a: VerifyArgs) -> Result<(), Failure> {
    let key_path = match (&a.public_key, &a.policy) {
        (Some(k), _) => k.clone(),
        (None, Some(p)) => {
            let policy = super::load_policy(p).map_err(wrap)?;
            custos::keys::signing_key_path_for(&policy.keys.identity)
                .with_file_name(custos::keys::PUBLIC_KEY_FILE)
        }
        (None, None) => {
            return Err(bad(anyhow!(
                "give the service's public key with --public-key FILE (signing.pub), or --policy P"
            )))
        }
    };
    let key = custos::keys::load_public_key(&key_path).map_err(|e| bad(e.into()))?;
    let (text, name) = if Path::new(&a.report).is_file() {
        let t = std::fs::read_to_string(&a.report).map_err(|e| Failure {
            code: 3,
            error: anyhow!("{}: {e}", a.report),
        })?;
        (t, a.report.clone())
    } else {
        let s = find_one(&a.report)?;
        (s.text, s.path.display().to_string())
    };
    match DrillReport::verify(&text, &key) {
        Ok(r) => {
            println!(
                "{name}: signature OK (key {}): drill {} of policy {}: {}",
                custos::signed::key_id(&key),
                r.id,
                r.policy,
                r.verdict.as_str()
            );
            Ok(())
        }
        Err(e) => Err(Failure {
            code: 3,
            error: anyhow!("{name}: NOT VERIFIED: {e}"),
        }),
    }
}
