//! `custos snapshots --policy P [--target NAME] [--json]`: each snapshot with
//! its replication status (from the local replication record).

use anyhow::Result;
use clap::Args;
use custos::ops::human_bytes;
use custos::ops::MetaRepo;
use custos::repo::snapshot::Snapshot;
use std::path::PathBuf;

#[derive(Args)]
pub struct SnapshotsArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    id: String,
    time: String,
    store: String,
    items: u64,
    bytes_read: u64,
    new_bytes_stored: u64,
    tables: Vec<String>,
    parent: Option<String>,
    /// Complete and verified on at least `[replication] min_copies`
    /// targets (per the local replication record).
    replicated: bool,
    /// Targets where it is verified (per the local replication record).
    verified_on: Vec<String>,
}

pub async fn run(a: SnapshotsArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let repo = MetaRepo::open(&policy, a.target.as_deref()).await?;
    let (list, bad) = Snapshot::summaries_with_ids(&repo.target, &repo.meta).await?;
    for (_, e) in &bad {
        eprintln!("warning: {e}");
    }
    let record = custos::replicate::ReplicationRecord::load(&super::state_dir()?, &policy.name)?;
    let min_copies = custos::replicate::min_copies(&policy);
    let rows: Vec<Row> = list
        .iter()
        .map(|s| Row {
            id: s.head.id.clone(),
            time: s.head.time.clone(),
            store: s.store.kind.clone(),
            items: s.stats.items,
            bytes_read: s.stats.bytes_read,
            new_bytes_stored: s.stats.new_bytes_stored,
            tables: s.table_names().map(str::to_string).collect(),
            parent: s.parent.clone(),
            replicated: false,
            verified_on: Vec::new(),
        })
        .map(|mut r| {
            let st = record.status_of(&r.id, Vec::new(), min_copies);
            r.replicated = st.replicated;
            r.verified_on = st.verified_on;
            r
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no snapshots on target `{}`", repo.target.name);
        return Ok(());
    }
    println!(
        "{:<18} {:<26} {:<7} {:>12} {:>10} {:>10}  REPLICATION",
        "ID", "TIME", "STORE", "ITEMS", "READ", "ADDED"
    );
    for r in &rows {
        println!(
            "{:<18} {:<26} {:<7} {:>12} {:>10} {:>10}  {}",
            r.id,
            r.time,
            r.store,
            r.items,
            human_bytes(r.bytes_read),
            human_bytes(r.new_bytes_stored),
            if r.replicated {
                "replicated".to_string()
            } else {
                format!(
                    "under-replicated ({}/{min_copies} verified)",
                    r.verified_on.len()
                )
            }
        );
    }
    println!(
        "{} snapshot(s) on target `{}`",
        rows.len(),
        repo.target.name
    );
    Ok(())
}
