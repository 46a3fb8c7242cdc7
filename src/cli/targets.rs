//! `custos targets --policy P [--json]`

use anyhow::Result;
use clap::Args;
use custos::ops::human_bytes;
use std::path::PathBuf;

#[derive(Args)]
pub struct TargetsArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: TargetsArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let state = super::state_dir()?;
    let o = custos::replicate::overview(&policy, Some(&state), 2).await?;
    if a.json {
        println!("{}", serde_json::to_string(&o)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:>9} {:>10} {:>5} {:<22} URL",
        "TARGET", "ROLE", "SNAPSHOTS", "BYTES", "LAG", "LAST VERIFIED"
    );
    for t in &o.targets {
        let role = if t.offsite { "offsite" } else { "primary" };
        if !t.reachable {
            println!(
                "{:<16} {:<8} UNREACHABLE: {}",
                t.name,
                role,
                t.error.as_deref().unwrap_or("")
            );
            continue;
        }
        println!(
            "{:<16} {:<8} {:>9} {:>10} {:>5} {:<22} {}",
            t.name,
            role,
            t.snapshots,
            human_bytes(t.bytes),
            t.lag,
            t.last_verified.as_deref().unwrap_or("never"),
            t.url
        );
    }
    let under: Vec<&str> = o
        .snapshots
        .iter()
        .filter(|s| !s.replicated)
        .map(|s| s.id.as_str())
        .collect();
    if under.is_empty() {
        println!(
            "every snapshot is verified on at least {} target(s)",
            o.min_copies
        );
    } else {
        println!(
            "under-replicated (verified on fewer than {} target(s)): {}",
            o.min_copies,
            under.join(", ")
        );
    }
    Ok(())
}
