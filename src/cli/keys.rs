//! `custos keys init --out DIR`, `custos keys sign-vault --policy P`

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create the service age identity (0600) and ed25519 signing key; prints the recipient.
    Init(KeysInitArgs),
    /// Sign a key vault written before custos signed its objects, as it
    /// stands (once, after upgrading; see docs/SHREDDING.md).
    SignVault(SignVaultArgs),
}

#[derive(Args)]
pub struct SignVaultArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KeysInitArgs {
    /// Directory to write service.age, signing.key and signing.pub into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub async fn run(c: KeysCmd) -> Result<()> {
    match c {
        KeysCmd::SignVault(a) => sign_vault(a).await,
        KeysCmd::Init(a) => {
            let k = custos::keys::init_keys(&a.out);
            super::audit::record(super::audit::outcome_event(
                custos::audit::Event::new("keys.init", "admin"),
                &k,
            ));
            let k = k?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "identity": k.identity_path,
                        "signing_key": k.signing_key_path,
                        "public_key": k.public_key_path,
                        "recipient": k.recipient,
                    })
                );
            } else {
                println!(
                    "service identity: {} (keep it secret, mode 0600)",
                    k.identity_path.display()
                );
                println!(
                    "signing key:      {} (mode 0600)",
                    k.signing_key_path.display()
                );
                println!(
                    "public key:       {} (give it to auditors)",
                    k.public_key_path.display()
                );
                println!("recipient:        {}", k.recipient);
            }
            Ok(())
        }
    }
}

async fn sign_vault(a: SignVaultArgs) -> Result<()> {
    let policy = super::load_policy(&a.policy)?;
    let r = custos::ops::sign_vault(&policy).await;
    let ev = custos::audit::Event::new("keys.sign-vault", "admin").policy(&policy.name);
    let ev = match &r {
        Ok(r) => ev.detail(format!("{} unsigned objects signed", r.signed.len())),
        Err(_) => ev,
    };
    super::audit::record(super::audit::outcome_event(ev, &r));
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if r.signed.is_empty() {
        println!("the key vault is signed already: nothing to do");
    } else {
        println!(
            "signed {} vault objects that were unsigned:",
            r.signed.len()
        );
        for o in &r.signed {
            println!("  {o}");
        }
    }
    println!(
        "the vault holds {} subject, {} period and {} epoch keys and {} tombstones, at:",
        r.subject_keys, r.period_keys, r.epoch_keys, r.tombstones
    );
    for l in &r.locations {
        println!("  {l}");
    }
    Ok(())
}
