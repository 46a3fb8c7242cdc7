//! `custos holds add|remove|list --policy P (--subject ID | --period CLASS:P) --reason TEXT`

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use custos::shred::{self, UnitSpec};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum HoldsCmd {
    /// Place a legal hold: the unit is never destroyed while it lasts.
    Add(HoldArgs),
    /// Lift a legal hold.
    Remove(HoldArgs),
    /// List the holds of a policy.
    List(ListArgs),
}

#[derive(Args)]
pub struct HoldArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long, conflicts_with = "period")]
    subject: Option<String>,
    #[arg(long)]
    period: Option<String>,
    /// Why (required to add).
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    json: bool,
}

fn spec(a: &HoldArgs) -> Result<UnitSpec> {
    match (&a.subject, &a.period) {
        (Some(s), None) => Ok(UnitSpec::Subject(s.clone())),
        (None, Some(p)) => Ok(UnitSpec::Period(p.clone())),
        _ => bail!("name a unit with --subject ID or --period CLASS:YYYY-MM"),
    }
}

pub async fn run(c: HoldsCmd) -> Result<()> {
    let state = super::state_dir()?;
    let actor = custos::audit::cli_actor();
    match c {
        HoldsCmd::Add(a) => {
            let policy = super::load_policy(&a.policy)?;
            let Some(reason) = a.reason.clone() else {
                bail!("a legal hold needs --reason TEXT");
            };
            let h = shred::hold_add(
                &policy,
                &state,
                &spec(&a)?,
                &reason,
                &actor,
                chrono::Utc::now(),
            )
            .await?;
            if a.json {
                println!("{}", serde_json::to_string(&h)?);
            } else {
                println!("{} is under a legal hold ({})", h.unit, h.reason);
            }
        }
        HoldsCmd::Remove(a) => {
            let policy = super::load_policy(&a.policy)?;
            let h = shred::hold_remove(&policy, &state, &spec(&a)?, &actor).await?;
            if a.json {
                println!("{}", serde_json::to_string(&h)?);
            } else {
                println!("lifted the legal hold on {}", h.unit);
            }
        }
        HoldsCmd::List(a) => {
            let policy = super::load_policy(&a.policy)?;
            let l = shred::status(&policy).await?;
            if a.json {
                println!("{}", serde_json::to_string(&l.holds)?);
            } else if l.holds.is_empty() {
                println!("no legal holds");
            } else {
                for h in &l.holds {
                    println!("{}  {} (by {}, since {})", h.unit, h.reason, h.by, h.added);
                }
            }
        }
    }
    Ok(())
}
