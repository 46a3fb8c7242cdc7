//! Command-line interface: one file per command. Errors are mapped to a
//! message (what, where, what to do) and a stable exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (target, store, internal) |
//! | 2 | bad input: usage, policy, keys, arguments |
//! | 3 | integrity: `check` found errors, or data failed authentication |
//! | 130 | interrupted (`drill` on Ctrl-C or SIGTERM) |

mod audit;
mod backup;
mod certificates;
mod check;
mod demo;
mod drill;
mod holds;
mod init;
mod keys;
mod policy;
mod progress;
mod replicate;
mod reports;
mod resources;
mod restore;
mod retention;
mod run;
mod serve;
mod shred;
mod snapshots;
mod status;
mod targets;
mod users;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "custos",
    version,
    about = "Encrypted, deduplicated, crypto-shreddable backups of customer record stores"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `custos=debug`.
    /// Default: `warn`, or `info` for `run` and `run-once`.
    #[arg(long, global = true, env = "CUSTOS_LOG")]
    log: Option<String>,
    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Local state directory (audit log, job state, report copies).
    /// Default: `$XDG_STATE_HOME/custos` or `~/.local/state/custos`.
    #[arg(long, global = true, env = "CUSTOS_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Service keys: an age identity (vault wrapping) and an ed25519 signing key.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Create the repository on every target and the key vault at every location.
    Init(init::InitArgs),
    /// Take one snapshot of the policy's store.
    Backup(backup::BackupArgs),
    /// List the snapshots on a target.
    Snapshots(snapshots::SnapshotsArgs),
    /// Rebuild a store from a snapshot.
    Restore(restore::RestoreArgs),
    /// Verify a repository (with --read-data: every byte).
    Check(check::CheckArgs),
    /// Restore a snapshot into scratch space, verify it, and sign a report.
    Drill(drill::DrillArgs),
    /// List, show and verify signed drill reports.
    #[command(subcommand)]
    Reports(reports::ReportsCmd),
    /// Copy, verify and repair the repository on every target.
    Replicate(replicate::ReplicateArgs),
    /// Per target: snapshots held, bytes, lag, last verification.
    Targets(targets::TargetsArgs),
    /// Forget and prune expired snapshots; list shred units due for destruction.
    Retention(retention::RetentionArgs),
    /// Crypto-shred a subject or a period (request, cancel, run, list).
    Shred(shred::ShredArgs),
    /// Legal holds: units that are never shredded while held.
    #[command(subcommand)]
    Holds(holds::HoldsCmd),
    /// Destruction certificates: list, show, verify.
    #[command(subcommand)]
    Certificates(certificates::CertificatesCmd),
    /// Run the whole story on generated demo data.
    Demo(demo::DemoArgs),
    /// Generate or change the telecom demo database (for benchmarks).
    #[command(subcommand, name = "demo-data")]
    DemoData(demo::DemoDataCmd),
    /// Check policy files, or show one with its defaults and next runs.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// The daemon: run every policy's jobs on their schedules.
    Run(run::RunArgs),
    /// Run one job of one policy now (for cron, Kubernetes CronJobs).
    #[command(name = "run-once")]
    RunOnce(run::RunOnceArgs),
    /// Per policy and job: last run, outcome, next run.
    Status(status::StatusArgs),
    /// The audit trail: verify the chain, show entries, checkpoint, replicate.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Users, roles and API tokens of the console.
    Users(users::UsersArgs),
    /// Serve the auditor console, JSON API and metrics.
    Serve(serve::ServeArgs),
}

/// An error with its exit code.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    use custos::ops::OpsError;
    use custos::repo::RepoError;
    use custos::store::sqlite::SqliteError;
    use custos::vault::VaultError;
    if e.downcast_ref::<custos::policy::PolicyError>().is_some()
        || e.downcast_ref::<policy::Problems>().is_some()
    {
        return 2;
    }
    if let Some(s) = e.downcast_ref::<custos::shred::ShredError>() {
        use custos::shred::ShredError as S;
        return match s {
            S::InvalidUnit { .. }
            | S::UnknownUnit { .. }
            | S::AlreadyDestroyed { .. }
            | S::AlreadyPending { .. }
            | S::NotPending { .. }
            | S::InProgress { .. }
            | S::AlreadyHeld { .. }
            | S::NotHeld { .. }
            | S::BelowFloor { .. }
            | S::Keys(_) => 2,
            S::LedgerCorrupt { .. } | S::Incomplete { .. } => 3,
            _ => 1,
        };
    }
    if let Some(u) = e.downcast_ref::<custos::users::UsersError>() {
        return match u {
            custos::users::UsersError::Io { .. } => 1,
            _ => 2,
        };
    }
    if let Some(s) = e.downcast_ref::<custos::schedule::ScheduleError>() {
        use custos::schedule::ScheduleError as S;
        return match s {
            S::Policy(_) | S::Policies { .. } | S::Cron { .. } => 2,
            _ => 1,
        };
    }
    let repo_code = |r: &RepoError| match r {
        RepoError::Crypto { .. } | RepoError::Malformed { .. } | RepoError::MarkerLost { .. } => 3,
        RepoError::NoSnapshot(_) | RepoError::AmbiguousSnapshot(_) => 2,
        _ => 1,
    };
    if let Some(r) = e.downcast_ref::<RepoError>() {
        return repo_code(r);
    }
    // A vault object that does not decode, or locations that disagree on
    // a key, is stored data altered: the integrity code, as for a pack.
    let vault_code = |v: &VaultError| match v {
        VaultError::NotRecipient { .. } | VaultError::NoVault { .. } | VaultError::ReadOnly => 2,
        VaultError::Unsigned { .. }
        | VaultError::BadSignature { .. }
        | VaultError::UnsignedInSignedVault { .. }
        | VaultError::Corrupt { .. }
        | VaultError::Conflict { .. } => 3,
        _ => 1,
    };
    if let Some(v) = e.downcast_ref::<VaultError>() {
        return vault_code(v);
    }
    if let Some(o) = e.downcast_ref::<OpsError>() {
        return match o {
            OpsError::Keys(_) | OpsError::UnknownTarget(_) | OpsError::Invalid(_) => 2,
            OpsError::Integrity(_) => 3,
            OpsError::Repo(r) => repo_code(r),
            OpsError::Vault(v) => vault_code(v),
            OpsError::Sqlite(s) => match **s {
                SqliteError::NotFound { .. }
                | SqliteError::AlreadyExists { .. }
                | SqliteError::NoSuchTable { .. }
                | SqliteError::NoSuchColumn { .. }
                | SqliteError::Unsupported { .. } => 2,
                _ => 1,
            },
            _ => 1,
        };
    }
    1
}

static STATE_DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// The local state directory chosen by `--state-dir`, the environment or the
/// default (created if missing).
#[allow(dead_code)]
pub fn state_dir() -> Result<custos::state::StateDir> {
    let explicit = STATE_DIR.get().and_then(|p| p.as_deref());
    Ok(custos::state::StateDir::resolve(explicit)?)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = STATE_DIR.set(cli.state_dir.clone());
    let default_log = match cli.command {
        Command::Run(_) | Command::RunOnce(_) => "info",
        _ => "warn",
    };
    let log = cli.log.as_deref().unwrap_or(default_log);
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r: Result<(), Failure> = rt.block_on(async {
        match cli.command {
            Command::Keys(c) => keys::run(c).await.map_err(wrap),
            Command::Init(a) => init::run(a).await.map_err(wrap),
            Command::Backup(a) => backup::run(a).await.map_err(wrap),
            Command::Snapshots(a) => snapshots::run(a).await.map_err(wrap),
            Command::Restore(a) => restore::run(a).await.map_err(wrap),
            Command::Check(a) => check::run(a).await,
            Command::Drill(a) => drill::run(a).await,
            Command::Reports(c) => reports::run(c),
            Command::Replicate(a) => replicate::run(a).await,
            Command::Targets(a) => targets::run(a).await.map_err(wrap),
            Command::Retention(a) => retention::run(a).await.map_err(wrap),
            Command::Shred(a) => shred::run(a).await.map_err(wrap),
            Command::Holds(c) => holds::run(c).await.map_err(wrap),
            Command::Certificates(c) => certificates::run(c),
            Command::Demo(a) => demo::run(a).await,
            Command::DemoData(c) => demo::run_data(c).map_err(wrap),
            Command::Policy(c) => policy::run(c).map_err(wrap),
            Command::Run(a) => run::run(a).await.map_err(wrap),
            Command::RunOnce(a) => run::run_once(a).await.map_err(wrap),
            Command::Status(a) => status::run(a).map_err(wrap),
            Command::Audit(c) => audit::run(c).await,
            Command::Users(a) => users::run(a).map_err(wrap),
            Command::Serve(a) => serve::run(a).await.map_err(wrap),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

pub fn wrap(e: anyhow::Error) -> Failure {
    Failure {
        code: exit_code_for(&e),
        error: e,
    }
}

/// Loads a policy; its error already names file, line, key and why.
pub fn load_policy(path: &std::path::Path) -> Result<custos::policy::Policy> {
    Ok(custos::policy::Policy::load(path)?)
}
