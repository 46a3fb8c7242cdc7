//! `custos policy check DIR` and `custos policy show P`.

use anyhow::Result;
use clap::{Args, Subcommand};
use custos::policy::{check_dir, Policy};
use custos::schedule::{Cron, JobKind};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Check every policy file of a folder; print each problem with file,
    /// line, column, key and why. Exit code 2 if any.
    Check(CheckArgs),
    /// Print a policy with defaults filled in and its next 5 runs per job.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The folder of policy files (`*.toml`).
    dir: PathBuf,
    /// Do not open the stores to check that tables and columns exist.
    #[arg(long)]
    no_store: bool,
    /// One JSON object on stdout: `ok`, the files, the policies' names and
    /// every problem (file, line, column, key, message). The exit code is
    /// the same (2 if any problem).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The policy file.
    policy: PathBuf,
    /// One JSON object on stdout (durations in seconds; URLs without
    /// credentials, as the text shows them).
    #[arg(long)]
    json: bool,
}

/// Problems found by `policy check` (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found")]
pub struct Problems(pub usize);

pub fn run(c: PolicyCmd) -> Result<()> {
    match c {
        PolicyCmd::Check(a) => check(a),
        PolicyCmd::Show(a) => show(a),
    }
}

fn check(a: CheckArgs) -> Result<()> {
    let r = check_dir(&a.dir, !a.no_store)?;
    if a.json {
        let problems: Vec<_> = r
            .problems
            .iter()
            .map(|p| {
                json!({
                    "file": p.file,
                    // 0 when the problem has no place in the file.
                    "line": p.line,
                    "column": p.column,
                    "key": p.key,
                    "message": p.message,
                })
            })
            .collect();
        let out = json!({
            "ok": r.is_ok(),
            "files": r.files,
            "policies": r.policies.iter().map(|p| &p.name).collect::<Vec<_>>(),
            "problems": problems,
        });
        println!("{out}");
        if !r.is_ok() {
            return Err(Problems(r.problems.len()).into());
        }
        return Ok(());
    }
    for p in &r.problems {
        println!("{p}");
    }
    if !r.is_ok() {
        return Err(Problems(r.problems.len()).into());
    }
    println!(
        "{} policies in {} files: no problems",
        r.policies.len(),
        r.files.len()
    );
    Ok(())
}

fn show(a: ShowArgs) -> Result<()> {
    let p = Policy::load(&a.policy)?;
    if a.json {
        println!("{}", show_json(&p, chrono::Utc::now()));
        return Ok(());
    }
    let d = |x: &std::time::Duration| humanize(x.as_secs());
    println!("policy {}  ({})", p.name, p.file.display());
    println!("[store]");
    println!("  kind = {}", p.store.kind.as_str());
    if let Some(x) = &p.store.path {
        println!("  path = {}", x.display());
    }
    if let Some(x) = &p.store.url {
        println!("  url = {}", custos::target::redact_url(x));
    }
    if let Some(x) = &p.store.root {
        println!("  root = {}", x.display());
        println!("  class = {}", p.store.class);
    } else {
        println!("  default_class = {}", p.store.default_class);
    }
    println!("  epoch = {}", p.store.epoch.as_str());
    for t in &p.store.tables {
        let mut s = format!("  table {} class={}", t.name, t.class);
        if let Some(x) = &t.subject {
            s += &format!(" subject={x}");
        }
        if let Some(x) = &t.period {
            s += &format!(
                " period={} every {}",
                x.column,
                format!("{:?}", x.every).to_lowercase()
            );
        }
        if let Some(x) = &t.retain {
            s += &format!(" retain={} after {}", d(&x.for_), x.after);
        }
        println!("{s}");
    }
    println!("[keys]");
    println!("  identity = {}", p.keys.identity.display());
    println!("  recipients = {}", p.keys.recipients.len());
    for v in &p.keys.vault {
        println!("  vault = {}", custos::target::redact_url(v));
    }
    println!("[targets]  (primary: {})", p.primary().name);
    for t in &p.targets {
        println!(
            "  {} = {}{}",
            t.name,
            custos::target::redact_url(&t.url),
            if t.offsite { "  (off-site)" } else { "" }
        );
    }
    println!("[schedule]  catch_up = {}", p.schedule.catch_up);
    let now = chrono::Utc::now();
    for job in JobKind::ALL {
        match job.cron(&p) {
            None => println!("  {job}: not scheduled"),
            Some(expr) => {
                println!("  {job} = \"{expr}\"; next runs (UTC):");
                if let Ok(c) = Cron::parse(expr) {
                    for t in c.upcoming(now, 5) {
                        println!("    {}", t.format("%Y-%m-%d %H:%M:%S %a"));
                    }
                }
            }
        }
    }
    let s = &p.snapshots;
    let k = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
    println!("[snapshots]");
    println!(
        "  keep_last={} hourly={} daily={} weekly={} monthly={} yearly={}",
        k(s.keep_last),
        k(s.keep_hourly),
        k(s.keep_daily),
        k(s.keep_weekly),
        k(s.keep_monthly),
        k(s.keep_yearly)
    );
    println!("[drill]");
    println!("  rto = {}", p.drill.rto.as_ref().map_or("none".into(), d));
    println!("  asserts = {}", p.drill.assert.len());
    println!("[shred]");
    println!("  grace = {}", d(&p.shred.grace));
    println!("[replication]");
    println!(
        "  min_copies = {}",
        p.replication
            .min_copies
            .map_or("not set".to_string(), |n| n.to_string())
    );
    let r = &p.resources;
    println!("[resources]");
    println!(
        "  threads = {}",
        r.threads
            .map_or(format!("{} (one per core)", r.threads()), |n| n.to_string())
    );
    println!(
        "  buffer_memory = {}",
        custos::ops::human_bytes(r.buffer_memory)
    );
    Ok(())
}

/// What `policy show` prints, as JSON: durations in seconds, the next
/// five runs of each scheduled job as RFC 3339 UTC times.
fn show_json(p: &Policy, now: chrono::DateTime<chrono::Utc>) -> Value {
    let secs = |x: &std::time::Duration| x.as_secs();
    let tables: Vec<Value> = p
        .store
        .tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "class": t.class.to_string(),
                "subject": t.subject,
                "period": t.period.as_ref().map(|x| json!({
                    "column": x.column,
                    "every": format!("{:?}", x.every).to_lowercase(),
                })),
                "retain": t.retain.as_ref().map(|x| json!({
                    "for_s": secs(&x.for_),
                    "after": x.after,
                })),
            })
        })
        .collect();
    let files = p.store.root.is_some();
    let jobs: Vec<Value> = JobKind::ALL
        .iter()
        .map(|job| {
            let cron = job.cron(p);
            let next: Vec<String> = cron
                .and_then(|e| Cron::parse(e).ok())
                .map(|c| {
                    c.upcoming(now, 5)
                        .into_iter()
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .collect()
                })
                .unwrap_or_default();
            json!({"job": job.to_string(), "cron": cron, "next_runs": next})
        })
        .collect();
    let s = &p.snapshots;
    json!({
        "name": p.name,
        "file": p.file,
        "store": {
            "kind": p.store.kind.as_str(),
            "path": p.store.path,
            "url": p.store.url.as_deref().map(custos::target::redact_url),
            "root": p.store.root,
            "class": files.then(|| p.store.class.to_string()),
            "default_class": (!files).then(|| p.store.default_class.to_string()),
            "epoch": p.store.epoch.as_str(),
            "tables": tables,
        },
        "keys": {
            "identity": p.keys.identity,
            "recipients": p.keys.recipients.len(),
            "vault": p.keys.vault.iter().map(|v| custos::target::redact_url(v)).collect::<Vec<_>>(),
        },
        "targets": p.targets.iter().map(|t| json!({
            "name": t.name,
            "url": custos::target::redact_url(&t.url),
            "offsite": t.offsite,
            "primary": t.name == p.primary().name,
        })).collect::<Vec<_>>(),
        "schedule": {"catch_up": p.schedule.catch_up, "jobs": jobs},
        "snapshots": {
            "keep_last": s.keep_last,
            "keep_hourly": s.keep_hourly,
            "keep_daily": s.keep_daily,
            "keep_weekly": s.keep_weekly,
            "keep_monthly": s.keep_monthly,
            "keep_yearly": s.keep_yearly,
        },
        "drill": {
            "rto_s": p.drill.rto.as_ref().map(secs),
            "asserts": p.drill.assert.len(),
        },
        "shred": {"grace_s": secs(&p.shred.grace)},
        "replication": {"min_copies": p.replication.min_copies},
        "resources": {
            "threads": p.resources.threads(),
            "threads_set": p.resources.threads.is_some(),
            "buffer_memory": p.resources.buffer_memory,
        },
    })
}

/// A duration in the largest unit that divides it (`3y`, `180d`, `30m`).
fn humanize(secs: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (365 * 86400, "y"),
        (7 * 86400, "w"),
        (86400, "d"),
        (3600, "h"),
        (60, "m"),
        (1, "s"),
    ];
    for (n, u) in UNITS {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{u}", secs / n);
        }
    }
    format!("{secs}s")
}
