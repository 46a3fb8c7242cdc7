//! `custos check --policy P [--target NAME] [--read-data] [--repair-index] [--json]`

use super::{wrap, Failure};
use clap::Args;
use custos::ops::check::{CheckReport, Level};
use custos::ops::human_bytes;
use std::path::PathBuf;

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    resources: super::resources::ResourceArgs,
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    target: Option<String>,
    /// Download every pack and decrypt every chunk snapshots refer to.
    #[arg(long)]
    read_data: bool,
    /// First make the index match the packs that are whole: rebuild index
    /// objects that are missing or unreadable from their packs' headers,
    /// drop those of missing or damaged packs (under the backup lock; no
    /// pack is deleted).
    #[arg(long)]
    repair_index: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: CheckArgs) -> Result<(), Failure> {
    let policy = a
        .resources
        .apply(super::load_policy(&a.policy).map_err(wrap)?);
    let repair = if a.repair_index {
        let r = custos::ops::repair::repair_index(&policy, a.target.as_deref()).await;
        let ev = custos::audit::Event::new("repair-index", "operator").policy(&policy.name);
        let ev = match &r {
            Ok(rep) => ev.detail(format!(
                "{} index object(s) rebuilt, {} dropped, {} pack(s) unrepairable",
                rep.rebuilt.len(),
                rep.dropped.len(),
                rep.unrepairable.len()
            )),
            Err(_) => super::audit::outcome_event(ev, &r),
        };
        super::audit::record(ev);
        let rep = r.map_err(|e| wrap(e.into()))?;
        if !a.json {
            for o in &rep.rebuilt {
                println!(
                    "repaired: {}:{o}: rebuilt from its pack's header",
                    rep.target
                );
            }
            for d in &rep.dropped {
                println!(
                    "repaired: {}:{}: dropped, {}; the next backup stores its rows again",
                    rep.target, d.object, d.why
                );
            }
            for u in &rep.unrepairable {
                println!("not repaired: {}: {}", u.object, u.why);
            }
        }
        Some(rep)
    } else {
        None
    };
    let r = custos::ops::check::check(
        &policy,
        a.target.as_deref(),
        a.read_data,
        super::progress::for_terminal(a.json),
    )
    .await;
    let ev = custos::audit::Event::new("check", "operator").policy(&policy.name);
    let ev = match &r {
        Ok(c) if !c.ok => ev
            .outcome(custos::audit::Outcome::Failed)
            .detail("check found errors"),
        _ => super::audit::outcome_event(ev, &r),
    };
    super::audit::record(ev);
    let r = r.map_err(|e| wrap(e.into()))?;
    if a.json {
        let out = match &repair {
            // With --repair-index: {"repair": {...}, "check": {...}}.
            Some(rep) => serde_json::to_string(&serde_json::json!({ "repair": rep, "check": &r })),
            None => serde_json::to_string(&r),
        };
        println!("{}", out.map_err(|e| wrap(e.into()))?);
    } else {
        print_report(&r);
    }
    if r.ok {
        Ok(())
    } else {
        let n = r
            .findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count();
        Err(Failure {
            code: 3,
            error: anyhow::anyhow!("check found {n} error(s) on target `{}`", r.target),
        })
    }
}

pub fn print_report(r: &CheckReport) {
    for f in &r.findings {
        let l = match f.level {
            Level::Error => "ERROR",
            Level::Warning => "warning",
            Level::Info => "info",
        };
        match &f.hint {
            Some(h) => println!("{l}: {}: {} ({h})", f.object, f.message),
            None => println!("{l}: {}: {}", f.object, f.message),
        }
    }
    println!(
        "checked target `{}`: {} snapshot(s), {} pack(s){}: {}",
        r.target,
        r.snapshots,
        r.packs,
        if r.read_data {
            format!(
                ", {} chunks decrypted, {} read",
                r.chunks_checked,
                human_bytes(r.bytes_read)
            )
        } else {
            String::new()
        },
        if r.ok { "no errors" } else { "ERRORS FOUND" }
    );
    if r.whole_index {
        println!("  chunk index: whole (snapshots of files, or read windows listing no packs)");
    } else {
        println!(
            "  chunk index: the read windows' packs ({} index objects read)",
            r.index_objects_read
        );
    }
}
