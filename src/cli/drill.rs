//! `custos drill --policy P [--snapshot ID|latest|random] [--target NAME] [--json]`
//!
//! Exit codes: 0 PASS; 3 FAIL for integrity (damaged or unauthentic data, a
//! restored table that does not match the snapshot, a failed SQLite check);
//! 1 any other FAIL (an assertion, the RTO, a target that cannot be reached);
//! 2 bad input; 130 interrupted (Ctrl-C or SIGTERM; scratch space removed).

use super::{wrap, Failure};
use clap::Args;
use custos::drill::report::{FailureKind, Verdict};
use custos::drill::{DrillOptions, SnapshotChoice};
use std::path::PathBuf;

#[derive(Args)]
pub struct DrillArgs {
    #[command(flatten)]
    resources: super::resources::ResourceArgs,
    #[arg(long)]
    policy: PathBuf,
    /// `latest`, `random` (a random older snapshot) or a snapshot id.
    #[arg(long, default_value = "latest")]
    snapshot: String,
    /// Target to restore from (default: the primary).
    #[arg(long)]
    target: Option<String>,
    /// Print the report body as one JSON object.
    #[arg(long)]
    json: bool,
}

fn bad_input(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

pub async fn run(a: DrillArgs) -> Result<(), Failure> {
    let policy = a
        .resources
        .apply(super::load_policy(&a.policy).map_err(wrap)?);
    let state = super::state_dir().map_err(wrap)?;
    let snapshot: SnapshotChoice = a.snapshot.parse().map_err(bad_input)?;
    let opts = DrillOptions {
        snapshot,
        target: a.target,
        redrill_of: None,
    };
    let progress = super::progress::for_terminal(a.json);
    let signalled = interrupted()?;
    let drill = custos::drill::run(&policy, &state, &opts, progress);
    let out = tokio::select! {
        r = drill => r,
        sig = signalled => {
            // Dropping the drill removed its scratch space.
            let _ = custos::audit::AuditLog::open(&state.root().join("audit")).and_then(|l| {
                l.append(
                    &custos::audit::Event::new("drill", "operator")
                        .policy(&policy.name)
                        .outcome(custos::audit::Outcome::Failed)
                        .detail(format!("interrupted by {sig}")),
                )
            });
            return Err(Failure {
                code: 130,
                error: anyhow::anyhow!("drill interrupted by {sig}; its scratch space was removed"),
            });
        }
    };
    let out = out.map_err(|e| {
        use custos::drill::DrillError as D;
        let code = match &e {
            D::Keys(_) | D::UnknownTarget { .. } | D::BadSnapshot(_) => 2,
            _ => 1,
        };
        Failure {
            code,
            error: e.into(),
        }
    })?;
    let r = &out.report;
    show(&out, a.json)?;
    if r.verdict == Verdict::Fail && out.repaired {
        // Every damaged object was repaired from a good copy: drill the same
        // snapshot again, recorded as its own report. The failure stays on
        // record and still decides the exit code.
        let again = opts.again_after_repair(r);
        let progress = super::progress::for_terminal(a.json);
        match custos::drill::run(&policy, &state, &again, progress).await {
            Ok(o2) => {
                if !a.json {
                    println!("re-drill after repair:");
                }
                show(&o2, a.json)?;
            }
            Err(e) => eprintln!("warning: the re-drill after repair could not run: {e:#}"),
        }
    }
    match r.verdict {
        Verdict::Pass => Ok(()),
        Verdict::Fail => Err(Failure {
            code: if r.failure == Some(FailureKind::Integrity) {
                3
            } else {
                1
            },
            error: anyhow::anyhow!(
                "drill {} FAILED: {}",
                r.id,
                r.reasons
                    .first()
                    .map(String::as_str)
                    .unwrap_or("see the report")
            ),
        }),
    }
}

fn show(out: &custos::drill::DrillOutcome, json: bool) -> Result<(), Failure> {
    let r = &out.report;
    if json {
        println!("{}", serde_json::to_string(r).map_err(|e| wrap(e.into()))?);
    } else {
        print!("{}", custos::drill::render::text(r));
        println!("  report     {}", out.local_path.display());
        match &out.uploaded {
            Ok(o) => println!("  stored     {o}"),
            Err(e) => println!("  stored     locally only ({e})"),
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, naming the signal. The handlers
/// are installed when this is called, before the drill starts, so no signal
/// can arrive while scratch space exists and nothing is listening.
fn interrupted() -> Result<impl std::future::Future<Output = &'static str>, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |k| {
        signal(k).map_err(|e| Failure {
            code: 1,
            error: anyhow::anyhow!("cannot install the signal handlers: {e}"),
        })
    };
    let mut int = install(SignalKind::interrupt())?;
    let mut term = install(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}
