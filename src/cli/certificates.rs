//! `custos certificates list [--policy P] [--json]`,
//! `custos certificates show ID [--format text|json|html]`,
//! `custos certificates verify FILE|ID [--public-key FILE] [--policy P]`

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use custos::shred::certificate;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CertificatesCmd {
    /// List the destruction certificates stored locally.
    List(ListArgs),
    /// Show one certificate.
    Show(ShowArgs),
    /// Verify a certificate's signature (exit code 3 if it fails).
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this policy's certificates.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Html,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A certificate id or file.
    id: String,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// A certificate file, or an id stored locally.
    what: String,
    /// The service's public key (`signing.pub`).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Take the public key beside the policy's identity instead.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(c: CertificatesCmd) -> Result<(), super::Failure> {
    let state = super::state_dir().map_err(super::wrap)?;
    match c {
        CertificatesCmd::List(a) => {
            let name = match &a.policy {
                Some(p) => Some(super::load_policy(p).map_err(super::wrap)?.name),
                None => None,
            };
            let l =
                certificate::list(&state, name.as_deref()).map_err(|e| super::wrap(e.into()))?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string(&l).map_err(|e| super::wrap(e.into()))?
                );
            } else if l.is_empty() {
                println!("no certificates");
            } else {
                for c in &l {
                    println!("{}  {}  {}  {}", c.id, c.created, c.policy, c.unit);
                }
            }
            Ok(())
        }
        CertificatesCmd::Show(a) => {
            let (_, text) = certificate::load(&state, &a.id).map_err(|e| super::wrap(e.into()))?;
            match a.format {
                Format::Json => print!("{text}"),
                f => {
                    let (_, body) =
                        custos::signed::peek(&text).map_err(|e| super::wrap(e.into()))?;
                    match f {
                        Format::Html => print!("{}", certificate::render_html(&body)),
                        _ => print!("{}", certificate::render_text(&body)),
                    }
                }
            }
            Ok(())
        }
        CertificatesCmd::Verify(a) => {
            let key_path = match (&a.public_key, &a.policy) {
                (Some(k), _) => k.clone(),
                (None, Some(p)) => {
                    let policy = super::load_policy(p).map_err(super::wrap)?;
                    custos::keys::signing_key_path_for(&policy.keys.identity)
                        .with_file_name(custos::keys::PUBLIC_KEY_FILE)
                }
                (None, None) => {
                    return Err(super::Failure {
                        code: 2,
                        error: anyhow::anyhow!(
                            "give the service's public key with --public-key FILE (or --policy P)"
                        ),
                    })
                }
            };
            let key = custos::keys::load_public_key(&key_path).map_err(|e| super::Failure {
                code: 2,
                error: e.into(),
            })?;
            let (path, text) =
                certificate::load(&state, &a.what).map_err(|e| super::wrap(e.into()))?;
            match certificate::verify(&text, &key) {
                Ok(body) => {
                    if a.json {
                        println!(
                            "{}",
                            serde_json::json!({"file": path, "valid": true, "id": body.get("id")})
                        );
                    } else {
                        println!(
                            "certificate {} ({}): signature valid",
                            body.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
                            path.display()
                        );
                    }
                    Ok(())
                }
                Err(e) => Err(super::Failure {
                    code: 3,
                    error: anyhow::anyhow!("{}: {e}", path.display()),
                }),
            }
        }
    }
}
