//! `custos restore --policy P --snapshot ID|latest [--target NAME] --to PATH [--force]
//! [--table NAME]... [--subject ID]`

use anyhow::Result;
use clap::Args;
use custos::ops::human_bytes;
use custos::ops::restore::{RestoreOptions, RestoreReport};
use std::path::PathBuf;

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    resources: super::resources::ResourceArgs,
    #[arg(long)]
    policy: PathBuf,
    /// Snapshot id (or unique prefix), or `latest`.
    #[arg(long, default_value = "latest")]
    snapshot: String,
    /// Target to restore from (default: the primary).
    #[arg(long)]
    target: Option<String>,
    /// Where to rebuild the store: a new SQLite file, or a new directory.
    #[arg(long)]
    to: PathBuf,
    /// Replace an existing file or non-empty directory.
    #[arg(long)]
    force: bool,
    /// Restore only this table (repeat for more; SQLite and PostgreSQL
    /// snapshots). The other tables are created empty.
    #[arg(long = "table", value_name = "NAME")]
    tables: Vec<String>,
    /// Restore only the rows of this customer (subject id, as for `custos
    /// shred --subject`; SQLite and PostgreSQL snapshots). Tables without a
    /// subject are created empty. A partial PostgreSQL restore creates no
    /// foreign keys (the report lists them).
    #[arg(long, value_name = "ID")]
    subject: Option<String>,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: RestoreArgs) -> Result<()> {
    let policy = a.resources.apply(super::load_policy(&a.policy)?);
    let opts = RestoreOptions {
        target: a.target,
        snapshot: a.snapshot,
        to: a.to,
        force: a.force,
        only: custos::ops::restore::Selection {
            tables: a.tables,
            subject: a.subject,
        },
    };
    let r =
        custos::ops::restore::restore(&policy, &opts, super::progress::for_terminal(a.json)).await;
    let mut ev = custos::audit::Event::new("restore", "operator")
        .policy(&policy.name)
        .flag(custos::audit::FLAG_RESTORE_OUTSIDE_DRILL);
    if let Ok(r) = &r {
        ev = ev.object(r.snapshot.clone());
        if let Some(d) = r.partial_detail() {
            ev = ev.detail(d);
        }
        ev = ev.measure("duration_s", r.duration_s);
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

pub fn print_report(r: &RestoreReport) {
    println!(
        "restored snapshot {} ({}) from target `{}` to {}",
        r.snapshot, r.snapshot_time, r.target, r.to
    );
    if r.partial {
        println!("  partial: only the tables and rows selected; the other tables are empty");
    }
    if !r.foreign_keys_left_out.is_empty() {
        println!(
            "  foreign keys not created (they may point at rows left out): {}",
            r.foreign_keys_left_out.join(", ")
        );
    }
    for t in &r.tables {
        if t.rows_shredded > 0 {
            println!(
                "  {:<24} {:>10} rows ({} rows in {} shredded groups omitted)",
                t.name, t.rows_restored, t.rows_shredded, t.groups_shredded
            );
        } else {
            println!("  {:<24} {:>10} rows", t.name, t.rows_restored);
        }
    }
    println!(
        "  {} items, {} of data, {} fetched in {} reads, {:.2} s",
        r.items,
        human_bytes(r.bytes),
        human_bytes(r.bytes_fetched),
        r.pack_reads,
        r.duration_s
    );
    if r.whole_index {
        println!("  chunk index: whole (the snapshot's read windows list no packs)");
    } else {
        println!(
            "  chunk index: the read windows' packs ({} index objects read)",
            r.index_objects_read
        );
    }
}
