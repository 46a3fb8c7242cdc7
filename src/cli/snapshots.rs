//! `custos snapshots --policy P [--target NAME] [--json]`

use anyhow::Result;
use clap::Args;
use custos::ops::human_bytes;
use custos::ops::OpenRepo;
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
}

pub async fn run(a: SnapshotsArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let repo = OpenRepo::open(&policy, a.target.as_deref()).await?;
    let (list, bad) = Snapshot::list(&repo.target, &repo.meta).await?;
    for e in &bad {
        eprintln!("warning: {e}");
    }
    let rows: Vec<Row> = list
        .iter()
        .map(|s| Row {
            id: s.id.clone(),
            time: s.time.clone(),
            store: s.store.kind.clone(),
            items: s.stats.items,
            bytes_read: s.stats.bytes_read,
            new_bytes_stored: s.stats.new_bytes_stored,
            tables: s
                .sqlite
                .as_ref()
                .map(|q| q.tables.iter().map(|t| t.name.clone()).collect())
                .unwrap_or_default(),
            parent: s.parent.clone(),
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
        "{:<18} {:<26} {:<7} {:>12} {:>10} {:>10}",
        "ID", "TIME", "STORE", "ITEMS", "READ", "ADDED"
    );
    for r in &rows {
        println!(
            "{:<18} {:<26} {:<7} {:>12} {:>10} {:>10}",
            r.id,
            r.time,
            r.store,
            r.items,
            human_bytes(r.bytes_read),
            human_bytes(r.new_bytes_stored)
        );
    }
    println!(
        "{} snapshot(s) on target `{}`",
        rows.len(),
        repo.target.name
    );
    Ok(())
}
