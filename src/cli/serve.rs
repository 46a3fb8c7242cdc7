//! `custos serve --policies DIR --listen 127.0.0.1:PORT`

use anyhow::{Context, Result};
use clap::Args;
use custos::console::{data, ConsoleConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct ServeArgs {
    /// Folder of the policy files (*.toml).
    #[arg(long)]
    policies: PathBuf,
    /// Address to listen on (plain HTTP unless --tls-cert and --tls-key
    /// are given).
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: String,
    /// PEM certificate chain (leaf first): serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Users file (default: <policies>/users.json if present, else <state>/users.json).
    #[arg(long)]
    users: Option<PathBuf>,
    /// Public key that checks the audit log's checkpoints (default: the
    /// signing.pub of the first policy, by name, that has one).
    #[arg(long)]
    audit_public_key: Option<PathBuf>,
    /// Signing key for periodic audit checkpoints (default: the signing.key
    /// beside that public key, when readable).
    #[arg(long)]
    audit_signing_key: Option<PathBuf>,
    /// Seconds between background rounds (checkpoint when due, audit
    /// replication, snapshot listing for metrics); 0 turns them off.
    #[arg(long, default_value_t = 300)]
    background_secs: u64,
    /// Do not copy the audit log to the policies' primary targets.
    #[arg(long)]
    no_audit_replication: bool,
}

pub async fn run(a: ServeArgs) -> Result<()> {
    let state = super::state_dir()?;
    let users_file = a
        .users
        .clone()
        .unwrap_or_else(|| custos::users::default_path(Some(&a.policies), state.root()));
    let key_dir = data::load_policies(&a.policies)
        .into_iter()
        .filter_map(|p| p.policy.ok())
        .filter_map(|p| p.keys.identity.parent().map(|d| d.to_path_buf()))
        .find(|d| d.join(custos::keys::PUBLIC_KEY_FILE).exists());
    let pubkey_path = a.audit_public_key.clone().or_else(|| {
        key_dir
            .as_ref()
            .map(|d| d.join(custos::keys::PUBLIC_KEY_FILE))
    });
    let audit_public_key = match &pubkey_path {
        Some(p) => Some(custos::keys::load_public_key(p)?),
        None => None,
    };
    let signing = match (&a.audit_signing_key, &key_dir) {
        (Some(p), _) => Some(Arc::new(custos::keys::load_signing_key(p)?)),
        (None, Some(d)) => custos::keys::load_signing_key(&d.join(custos::keys::SIGNING_KEY_FILE))
            .ok()
            .map(Arc::new),
        _ => None,
    };
    let cfg = ConsoleConfig {
        policies: a.policies.clone(),
        state,
        users_file: users_file.clone(),
        audit_public_key,
        audit_signing_key: signing,
        background_every: (a.background_secs > 0)
            .then(|| std::time::Duration::from_secs(a.background_secs)),
        replicate_audit: !a.no_audit_replication,
    };
    // Read the certificate before listening: a bad file fails at once.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(custos::console::tls::load_server_config(c, k)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    // The first line tells scripts and tests where to connect.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("custos console listening on {scheme}://{addr}/");
    println!("users file: {}", users_file.display());
    if pubkey_path.is_none() {
        println!("warning: no public key found; audit checkpoints will not be checked");
    }
    super::audit::record(
        custos::audit::Event::new("serve", "admin")
            .detail(format!("listening on {scheme}://{addr}")),
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tls {
        Some(tls) => custos::console::serve_tls(cfg, listener, tls, shutdown).await?,
        None => custos::console::serve(cfg, listener, shutdown).await?,
    }
    Ok(())
}
