//! `custos backup --policy P [--target NAME] [--json]`

use anyhow::Result;
use clap::Args;
use custos::ops::backup::{BackupOptions, BackupReport};
use custos::ops::human_bytes;
use std::path::PathBuf;

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    resources: super::resources::ResourceArgs,
    #[arg(long)]
    policy: PathBuf,
    /// Target to write to (default: the primary).
    #[arg(long)]
    target: Option<String>,
    /// zstd level (1-19) of chunks of 1 KiB or more (smaller ones use LZ4).
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: BackupArgs) -> Result<()> {
    let policy = a.resources.apply(super::load_policy(&a.policy)?);
    let opts = BackupOptions {
        target: a.target,
        zstd_level: a.zstd_level.clamp(1, 19),
        ..BackupOptions::for_policy(&policy)
    };
    let r =
        custos::ops::backup::backup(&policy, &opts, super::progress::for_terminal(a.json)).await;
    let mut ev = custos::audit::Event::new("backup", "operator").policy(&policy.name);
    if let Ok(r) = &r {
        ev = ev
            .object(r.snapshot.clone())
            .measure("duration_s", r.duration_s)
            .measure("bytes", r.bytes_read as f64)
            .measure("new_bytes", r.new_bytes_stored as f64);
    }
    super::audit::record(super::audit::outcome_event(ev, &r));
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

pub fn print_report(r: &BackupReport) {
    let what = if r.store_kind == "files" {
        "entries"
    } else {
        "rows"
    };
    println!(
        "snapshot {} of policy `{}` on target `{}`",
        r.snapshot, r.policy, r.target
    );
    println!("  {:<18}{}", format!("{what}:"), r.items);
    if r.rows_reused > 0 {
        println!(
            "  reused:           {} rows in windows unchanged since the parent ({} of them not read)",
            r.rows_reused, r.rows_unread
        );
    }
    if r.windows_overlaid > 0 {
        println!(
            "  overlaid:         {} windows read again stored as their changed groups only",
            r.windows_overlaid
        );
    }
    if !r.parents_unreadable.is_empty() {
        println!(
            "  warning:          newer snapshots unreadable, not used as parent: {} (run `custos check`)",
            r.parents_unreadable.join(", ")
        );
    }
    if r.large_objects_skipped > 0 {
        println!(
            "  warning:          {} large objects of the database left out (large_objects = \"skip\")",
            r.large_objects_skipped
        );
    }
    if r.extension_config_skipped > 0 {
        println!(
            "  warning:          {} rows of extension configuration tables left out (extension_config = \"skip\")",
            r.extension_config_skipped
        );
    }
    println!("  bytes:            {}", human_bytes(r.bytes_read));
    println!(
        "  new bytes stored: {} ({} of {} chunks new)",
        human_bytes(r.new_bytes_stored),
        r.new_chunks,
        r.chunks
    );
    if r.dedup_ratio.is_finite() {
        println!("  dedup ratio:      {:.1}x", r.dedup_ratio);
    } else {
        println!("  dedup ratio:      nothing new stored");
    }
    println!(
        "  chunk index:      {}",
        if r.whole_index {
            "whole"
        } else {
            "the parent's read windows' packs"
        }
    );
    println!("  duration:         {:.2} s", r.duration_s);
}
