//! `custos replicate --policy P [--verify] [--json]`

use super::{wrap, Failure};
use clap::Args;
use custos::ops::human_bytes;
use custos::replicate::{ReplicateOptions, ReplicationReport};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct ReplicateArgs {
    #[arg(long)]
    policy: PathBuf,
    /// Also read back and check every object on every target, and repair
    /// what is missing or damaged.
    #[arg(long)]
    verify: bool,
    /// Compare index and snapshot objects by bytes instead of
    /// authenticating them (no vault access needed).
    #[arg(long)]
    no_keys: bool,
    /// Disaster recovery: also copy to the primary the snapshots only
    /// off-site targets list (by default the primary's listing decides
    /// which snapshots are replicated, so a forgotten one never comes back).
    #[arg(long)]
    restore_primary: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: ReplicateArgs) -> Result<(), Failure> {
    let policy = super::load_policy(&a.policy).map_err(wrap)?;
    let meta = if a.no_keys {
        None
    } else {
        match custos::ops::open_repository_keys(&policy).await {
            Ok(v) => Some(Arc::new(custos::crypto::MetaKey::new(v.meta_key()))),
            Err(e) => {
                eprintln!(
                    "warning: the vault cannot be opened ({e}); index and snapshot objects are compared by bytes instead of authenticated"
                );
                None
            }
        }
    };
    let opts = ReplicateOptions {
        verify: a.verify,
        meta,
        state: Some(super::state_dir().map_err(wrap)?),
        restore_primary: a.restore_primary,
        ..Default::default()
    };
    let r = custos::replicate::replicate(&policy, &opts)
        .await
        .map_err(|e| wrap(e.into()))?;
    if a.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| wrap(e.into()))?);
    } else {
        print_report(&r);
    }
    if r.ok {
        return Ok(());
    }
    let failed = r.failed_targets();
    let unreachable = r.targets.iter().any(|t| !t.reachable);
    Err(Failure {
        code: if unreachable { 1 } else { 3 },
        error: anyhow::anyhow!(
            "replication of policy `{}` is incomplete on target(s) {}: {}",
            r.policy,
            failed
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", "),
            r.targets
                .iter()
                .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.name)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

pub fn print_report(r: &ReplicationReport) {
    for a in r.repairs() {
        println!(
            "repaired {} on `{}` ({}) from `{}`{}",
            a.object,
            a.target,
            match a.reason {
                custos::replicate::Reason::Missing => "missing",
                custos::replicate::Reason::SizeMismatch => "size mismatch",
                custos::replicate::Reason::HashMismatch => "hash mismatch",
                custos::replicate::Reason::Unauthentic => "fails authentication",
                custos::replicate::Reason::Differs => "differs from the other copies",
            },
            a.from,
            if a.ok { "" } else { ": FAILED" }
        );
    }
    for p in &r.problems {
        println!("ERROR: {}: {}: {}", p.target, p.object, p.message);
    }
    for t in &r.targets {
        if !t.reachable {
            println!(
                "{:<16} UNREACHABLE: {}",
                t.name,
                t.error.as_deref().unwrap_or("")
            );
            continue;
        }
        println!(
            "{:<16} {} snapshot(s), {} object(s), {}; copied {} ({}), repaired {}, checked {}{}",
            t.name,
            t.snapshots.len(),
            t.objects,
            human_bytes(t.bytes),
            t.objects_copied,
            human_bytes(t.bytes_copied),
            t.objects_repaired,
            t.objects_checked,
            if t.lag > 0 {
                format!(", {} snapshot(s) behind the primary", t.lag)
            } else {
                String::new()
            }
        );
    }
    if !r.offsite_only.is_empty() {
        println!(
            "{} snapshot(s) listed off-site but not on the primary (forgotten there; the next retention run removes them off-site), not copied: {}; if the primary lost them, run `custos replicate --restore-primary`",
            r.offsite_only.len(),
            r.offsite_only.join(", ")
        );
    }
    let under = r.snapshots.iter().filter(|s| !s.replicated).count();
    println!(
        "{} snapshot(s), {} replicated on at least {} target(s){}, {:.2} s",
        r.snapshots.len(),
        r.snapshots.len() - under,
        r.min_copies,
        if r.verify { " (verified)" } else { "" },
        r.duration_s
    );
}
