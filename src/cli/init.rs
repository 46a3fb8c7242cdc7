//! `custos init --policy P`

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct InitArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: InitArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let r = custos::ops::init::init(&policy).await;
    super::audit::record(super::audit::outcome_event(
        custos::audit::Event::new("init", "admin").policy(&policy.name),
        &r,
    ));
    let r = r?;
    for v in &r.vault_keeps_versions {
        eprintln!(
            "warning: {}; {}",
            v.risk(),
            custos::ops::VERSIONED_VAULT_HINT
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        if r.resumed {
            println!("completed an interrupted init of policy `{}`", r.policy);
        } else {
            println!("initialised policy `{}`", r.policy);
        }
        for t in &r.targets {
            println!("  repository created on target `{t}`");
        }
        for v in &r.vault {
            println!("  key vault at {v}");
        }
    }
    Ok(())
}
