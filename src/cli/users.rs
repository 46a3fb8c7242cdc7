//! `custos users [--policies DIR] add|remove|list|rotate-token|review`

use anyhow::Result;
use clap::{Args, Subcommand};
use custos::audit::Event;
use custos::users::{Role, Users};
use std::path::PathBuf;

#[derive(Args)]
pub struct UsersArgs {
    /// Policy directory: its users.json is used when present.
    #[arg(long, global = true)]
    policies: Option<PathBuf>,
    /// The users file (overrides --policies and the state directory).
    #[arg(long, global = true)]
    file: Option<PathBuf>,
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: UsersCmd,
}

#[derive(Subcommand)]
pub enum UsersCmd {
    /// Add a user; prints its API token once.
    Add {
        name: String,
        /// operator, auditor, retention or admin.
        #[arg(long)]
        role: String,
    },
    /// Remove a user (its token stops working).
    Remove { name: String },
    /// List users and roles.
    List,
    /// Issue a new token for a user; prints it once.
    RotateToken { name: String },
    /// The access review: every user, role and last use.
    Review,
}

pub fn run(a: UsersArgs) -> Result<()> {
    let state = super::state_dir()?;
    let path = match &a.file {
        Some(f) => f.clone(),
        None => custos::users::default_path(a.policies.as_deref(), state.root()),
    };
    let us = Users::at(path, state.root());
    let audit = |op: &str, name: &str, r: &Result<(), String>| {
        let mut ev = Event::new(op, "admin").object(format!("user:{name}"));
        if let Err(e) = r {
            ev = ev.outcome(custos::audit::Outcome::Failed).detail(e.clone());
        }
        super::audit::record(ev);
    };
    match a.cmd {
        UsersCmd::Add { name, role } => {
            let r = role
                .parse::<Role>()
                .and_then(|role| us.add(&name, role).map(|t| (t, role)));
            audit(
                "users.add",
                &name,
                &r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            );
            let (t, role) = r?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "role": role, "token": t.0, "file": us.path()})
                );
            } else {
                println!(
                    "added user `{name}` with role {role} to {}",
                    us.path().display()
                );
                println!("token (shown once, store it now): {}", t.0);
            }
        }
        UsersCmd::Remove { name } => {
            let r = us.remove(&name);
            audit(
                "users.remove",
                &name,
                &r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            );
            r?;
            if !a.json {
                println!("removed user `{name}`");
            }
        }
        UsersCmd::RotateToken { name } => {
            let r = us.rotate_token(&name);
            audit(
                "users.rotate-token",
                &name,
                &r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            );
            let t = r?;
            if a.json {
                println!("{}", serde_json::json!({"name": name, "token": t.0}));
            } else {
                println!(
                    "new token for `{name}` (shown once; the old one no longer works): {}",
                    t.0
                );
            }
        }
        UsersCmd::List => {
            let list = us.list()?;
            if a.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "role": u.role, "created": u.created, "token_issued": u.token_issued}))
                    .collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                for u in &list {
                    println!("{:<24} {:<10} created {}", u.name, u.role, u.created);
                }
            }
        }
        UsersCmd::Review => {
            let r = us.review()?;
            super::audit::record(Event::new("users.review", "auditor"));
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"generated": chrono::Utc::now().to_rfc3339(), "users": r})
                );
            } else {
                println!("access review, {}", chrono::Utc::now().to_rfc3339());
                for l in &r {
                    println!(
                        "{:<24} {:<10} created {}  token issued {}  last use {}",
                        l.name,
                        l.role,
                        l.created,
                        l.token_issued.as_deref().unwrap_or("?"),
                        l.last_used.as_deref().unwrap_or("never")
                    );
                }
            }
        }
    }
    Ok(())
}
