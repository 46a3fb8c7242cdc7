//! `custos audit verify|show|checkpoint|replicate`, and [`record`], the
//! one call other commands make to append their audit entry.

use super::{wrap, Failure};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use custos::audit::{AuditLog, Entry, Event, Filter};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the whole chain and the checkpoint signatures; name the first break.
    Verify(VerifyArgs),
    /// Print entries, optionally filtered.
    Show(ShowArgs),
    /// Sign the chain head now with the policy's signing key.
    Checkpoint(PolicyArg),
    /// Copy new entries to the policy's primary target (objects under audit/).
    Replicate(PolicyArg),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Public key (signing.pub) that checks the checkpoints.
    #[arg(long, conflicts_with = "policy")]
    public_key: Option<PathBuf>,
    /// Take the public key beside this policy's identity.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// RFC 3339 time, date (2026-03-01) or age (24h, 7d).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    actor: Option<String>,
    /// Operation (exact, or the part before a dot: `users` matches `users.add`).
    #[arg(long)]
    op: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PolicyArg {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    json: bool,
}

fn open_log() -> Result<AuditLog> {
    Ok(AuditLog::open(&super::state_dir()?.sub("audit")?)?)
}

/// Appends `ev` to the local audit log. A failure to write the log is
/// reported on stderr but does not change the command's outcome.
pub fn record(ev: Event) {
    if let Err(e) = open_log().and_then(|l| Ok(l.append(&ev)?)) {
        eprintln!("warning: cannot write the audit log: {e:#}");
    }
}

/// `ev` with outcome `failed` and the error as detail when `r` is an error.
pub fn outcome_event<T, E: std::fmt::Display>(ev: Event, r: &Result<T, E>) -> Event {
    match r {
        Ok(_) => ev,
        Err(e) => {
            let d: String = e.to_string().chars().take(300).collect();
            ev.outcome(custos::audit::Outcome::Failed).detail(d)
        }
    }
}

fn public_key_of_policy(p: &std::path::Path) -> Result<ed25519_dalek::VerifyingKey> {
    let policy = super::load_policy(p)?;
    let path = custos::keys::signing_key_path_for(&policy.keys.identity)
        .with_file_name(custos::keys::PUBLIC_KEY_FILE);
    Ok(custos::keys::load_public_key(&path)?)
}

pub async fn run(c: AuditCmd) -> Result<(), Failure> {
    match c {
        AuditCmd::Verify(a) => verify(a),
        AuditCmd::Show(a) => show(a).map_err(wrap),
        AuditCmd::Checkpoint(a) => checkpoint(a).map_err(wrap),
        AuditCmd::Replicate(a) => replicate(a).await.map_err(wrap),
    }
}

fn verify(a: VerifyArgs) -> Result<(), Failure> {
    let key = match (&a.public_key, &a.policy) {
        (Some(p), _) => Some(custos::keys::load_public_key(p).map_err(|e| wrap(e.into()))?),
        (None, Some(p)) => Some(public_key_of_policy(p).map_err(wrap)?),
        _ => None,
    };
    let log = open_log().map_err(wrap)?;
    let v = log.verify(key.as_ref()).map_err(|e| wrap(e.into()))?;
    if a.json {
        let j = serde_json::json!({"ok": v.ok(), "signatures_checked": key.is_some(), "log": log.path(), "verification": v});
        println!("{j}");
    } else {
        println!(
            "audit log {}: {} entries, {} checkpoint(s) verified{}, {} entries after the last checkpoint",
            log.path().display(),
            v.entries,
            v.checkpoints_verified,
            if key.is_none() {
                " (signatures not checked: pass --public-key or --policy)"
            } else {
                ""
            },
            v.unsigned_tail
        );
    }
    match &v.first_break {
        None => {
            if !a.json {
                println!("chain intact; head {}", v.head);
            }
            Ok(())
        }
        Some(b) => Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "the audit chain breaks at line {}{}: {}",
                b.line,
                b.seq
                    .map(|s| format!(" (entry seq {s})"))
                    .unwrap_or_default(),
                b.why
            ),
        }),
    }
}

fn print_entry(e: &Entry) {
    let outcome = serde_json::to_value(e.outcome)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let mut line = format!(
        "{:>6} {} {}/{} {} {}",
        e.seq, e.time, e.actor, e.role, e.op, outcome
    );
    if let Some(p) = &e.policy {
        line.push_str(&format!(" policy={p}"));
    }
    if !e.objects.is_empty() {
        line.push_str(&format!(" objects={}", e.objects.join(",")));
    }
    if !e.flags.is_empty() {
        line.push_str(&format!(" FLAGS={}", e.flags.join(",")));
    }
    if let Some(d) = &e.detail {
        line.push_str(&format!(" -- {d}"));
    }
    println!("{line}");
}

fn show(a: ShowArgs) -> Result<()> {
    let f = Filter {
        since: a
            .since
            .as_deref()
            .map(|s| custos::audit::parse_since(s, chrono::Utc::now()))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        actor: a.actor,
        op: a.op,
    };
    let es = open_log()?.show(&f)?;
    if a.json {
        println!("{}", serde_json::to_string(&es)?);
    } else {
        for e in &es {
            print_entry(e);
        }
    }
    Ok(())
}

fn checkpoint(a: PolicyArg) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let key =
        custos::keys::load_signing_key(&custos::keys::signing_key_path_for(&policy.keys.identity))?;
    let e = open_log()?.checkpoint(&key, &custos::audit::cli_actor())?;
    if a.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        println!("checkpoint seq {} signs the chain up to {}", e.seq, e.prev);
    }
    Ok(())
}

async fn replicate(a: PolicyArg) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let t = custos::ops::open_target(&policy, policy.primary(), false)?;
    let r = custos::audit::replicate(&open_log()?, &t)
        .await
        .context("audit replication")?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        match &r.segment {
            Some(s) => println!(
                "copied {} entries to target `{}` as {s}",
                r.entries, r.target
            ),
            None => println!(
                "target `{}` already holds the log up to seq {}",
                r.target, r.last_seq
            ),
        }
    }
    Ok(())
}
