//! `custos keys init --out DIR`

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create the service age identity (0600) and ed25519 signing key; prints the recipient.
    Init(KeysInitArgs),
}

#[derive(Args)]
pub struct KeysInitArgs {
    /// Directory to write service.age, signing.key and signing.pub into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(c: KeysCmd) -> Result<()> {
    match c {
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
