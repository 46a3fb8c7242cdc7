//! `custos shred --policy P (--subject ID | --period CLASS:YYYY-MM) [--reason TEXT] [--request-ref REF] [--now]`,
//! `custos shred --policy P --cancel (--subject ID | --period ...)`,
//! `custos shred --policy P --run`, `custos shred --policy P --list`.

use anyhow::{bail, Result};
use clap::Args;
use custos::shred::{self, Request, RunOptions, RunReport, UnitSpec};
use std::path::PathBuf;

#[derive(Args)]
pub struct ShredArgs {
    #[arg(long)]
    policy: PathBuf,
    /// A customer (subject) id: erased by destroying its subject key.
    #[arg(long, conflicts_with = "period")]
    subject: Option<String>,
    /// A period unit `CLASS:YYYY-MM` (or `CLASS:YYYY`, `CLASS:YYYY-MM-DD`).
    #[arg(long)]
    period: Option<String>,
    /// Why (kept in the ledger and the certificate; no customer values).
    #[arg(long)]
    reason: Option<String>,
    /// The request's reference, e.g. a ticket number.
    #[arg(long)]
    request_ref: Option<String>,
    /// Skip the grace period and destroy at once (recorded as such).
    #[arg(long)]
    now: bool,
    /// Cancel a pending request instead.
    #[arg(long, conflicts_with_all = ["run", "list", "now"])]
    cancel: bool,
    /// Destroy everything whose grace period has ended (the retention job).
    #[arg(long, conflicts_with_all = ["subject", "period", "list"])]
    run: bool,
    /// Show pending, held, in-progress and completed destructions.
    #[arg(long, conflicts_with_all = ["subject", "period"])]
    list: bool,
    #[arg(long)]
    json: bool,
}

fn spec(a: &ShredArgs) -> Option<UnitSpec> {
    if let Some(s) = &a.subject {
        return Some(UnitSpec::Subject(s.clone()));
    }
    a.period.as_ref().map(|p| UnitSpec::Period(p.clone()))
}

pub async fn run(a: ShredArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let state = super::state_dir()?;
    let actor = custos::audit::cli_actor();
    let now = chrono::Utc::now();
    if a.list {
        let l = shred::status(&policy).await?;
        if a.json {
            println!("{}", serde_json::to_string(&l)?);
            return Ok(());
        }
        println!("policy `{}`", policy.name);
        for j in &l.journal {
            println!(
                "  IN PROGRESS  {} (started {}; the next `shred --run` completes it)",
                j.request.unit, j.started
            );
        }
        for p in &l.pending {
            let held = if l.hold_of(&p.unit).is_some() {
                "  [HELD]"
            } else {
                ""
            };
            println!("  pending      {} due {}{held}", p.unit, p.due);
        }
        for h in &l.holds {
            println!(
                "  hold         {} ({}, since {})",
                h.unit, h.reason, h.added
            );
        }
        for d in &l.history {
            println!(
                "  destroyed    {} at {} ({})",
                d.unit, d.destroyed, d.certificate
            );
        }
        return Ok(());
    }
    if a.run {
        let opts = RunOptions {
            now,
            performer: actor,
            role: "operator".into(),
            only: None,
        };
        let r = shred::run(&policy, &state, &opts).await?;
        return print_run(&r, a.json);
    }
    let Some(unit) = spec(&a) else {
        bail!("name a unit with --subject ID or --period CLASS:YYYY-MM, or use --run or --list");
    };
    if a.cancel {
        let p = shred::cancel(&policy, &state, &unit, &actor).await?;
        if a.json {
            println!("{}", serde_json::to_string(&p)?);
        } else {
            println!("cancelled the pending destruction of {}", p.unit);
        }
        return Ok(());
    }
    let req = Request {
        unit,
        reason: a.reason.clone(),
        request_ref: a.request_ref.clone(),
        requester: actor.clone(),
        role: "operator".into(),
        now: a.now,
    };
    let p = shred::request(&policy, &state, &req, now).await?;
    if !a.now {
        if a.json {
            println!("{}", serde_json::to_string(&p)?);
        } else {
            println!(
                "{} is pending destruction, due {} (cancel with --cancel before then)",
                p.unit, p.due
            );
        }
        return Ok(());
    }
    let opts = RunOptions {
        now,
        performer: actor,
        role: "operator".into(),
        only: Some(p.unit.clone()),
    };
    let r = shred::run(&policy, &state, &opts).await?;
    print_run(&r, a.json)
}

fn print_run(r: &RunReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        for d in &r.destroyed {
            println!(
                "destroyed {}{}: {} group(s), {} row(s) now unreadable; certificate {}",
                d.unit,
                if d.resumed {
                    " (finishing an interrupted run)"
                } else {
                    ""
                },
                d.groups_unreadable,
                d.rows_unreadable,
                d.certificate
            );
        }
        for u in &r.held {
            println!("held      {u}: under a legal hold, not destroyed");
        }
        for p in &r.waiting {
            println!("waiting   {} until {}", p.unit, p.due);
        }
        for (u, why) in &r.failed {
            println!("FAILED    {u}: {why}");
        }
        for (_, why) in &r.below_floor {
            println!("too young {why}");
        }
        if r.destroyed.is_empty()
            && r.held.is_empty()
            && r.failed.is_empty()
            && r.below_floor.is_empty()
        {
            println!("nothing due");
        }
    }
    if !r.failed.is_empty() {
        bail!(
            "{} destruction(s) failed; they stay journalled or pending: run `custos shred --run` again",
            r.failed.len()
        );
    }
    Ok(())
}
