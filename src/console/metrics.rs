//! `/metrics`: Prometheus text exposition format (version 0.0.4).
//!
//! Job figures come from the audit log (an entry per job run, with
//! `duration_s` and `bytes` measurements); replication lag from the last
//! snapshot listing of each policy (refreshed by the background task or a
//! page/API view); drill verdicts and certificates from the signed
//! documents in the state directory.

use super::data;
use super::App;
use crate::audit::{Entry, Outcome};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// The operations reported as jobs.
const JOBS: [&str; 7] = [
    "backup",
    "restore",
    "drill",
    "replicate",
    "check",
    "shred",
    "retention",
];

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let ls: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let l = if ls.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", ls.join(","))
        };
        let _ = writeln!(self.0, "{name}{l} {v}");
    }
}

fn measure(e: &Entry, name: &str) -> Option<f64> {
    e.detail
        .as_deref()?
        .split_whitespace()
        .find_map(|t| t.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn ts(s: &str) -> Option<f64> {
    data::parse_time(s).map(|t| t.timestamp_micros() as f64 / 1e6)
}

#[derive(Default)]
struct JobStat {
    last_ok: Option<f64>,
    duration: Option<f64>,
    bytes: Option<f64>,
    failures: u64,
    runs: u64,
}

/// Renders every metric.
pub(crate) fn render(app: &App) -> String {
    let mut o = Out(String::new());
    let policies = data::load_policies(&app.cfg.policies);
    let entries = app.audit.entries().unwrap_or_default();

    let mut jobs: BTreeMap<(String, String), JobStat> = BTreeMap::new();
    let mut anomalies: BTreeMap<String, u64> = BTreeMap::new();
    let mut denied = 0u64;
    for e in &entries {
        for f in &e.flags {
            *anomalies.entry(f.clone()).or_default() += 1;
        }
        if e.outcome == Outcome::Denied {
            denied += 1;
            continue;
        }
        let job = if e.op.starts_with("shred") {
            "shred"
        } else {
            e.op.as_str()
        };
        let (Some(p), true) = (&e.policy, JOBS.contains(&job)) else {
            continue;
        };
        let s = jobs.entry((p.clone(), job.to_string())).or_default();
        s.runs += 1;
        match e.outcome {
            Outcome::Ok => {
                s.last_ok = ts(&e.time);
                s.duration = measure(e, "duration_s");
                s.bytes = measure(e, "bytes");
            }
            Outcome::Failed => s.failures += 1,
            Outcome::Denied => {}
        }
    }

    o.family(
        "custos_policies",
        "gauge",
        "Policy files in the policy directory, by whether they load.",
    );
    let ok = policies.iter().filter(|p| p.policy.is_ok()).count();
    o.sample("custos_policies", &[("state", "loaded")], ok as f64);
    o.sample(
        "custos_policies",
        &[("state", "invalid")],
        (policies.len() - ok) as f64,
    );

    o.family(
        "custos_job_runs_total",
        "counter",
        "Job runs recorded in the audit log (ok or failed).",
    );
    for ((p, j), s) in &jobs {
        o.sample(
            "custos_job_runs_total",
            &[("policy", p), ("job", j)],
            s.runs as f64,
        );
    }
    o.family(
        "custos_job_failures_total",
        "counter",
        "Failed job runs recorded in the audit log.",
    );
    for ((p, j), s) in &jobs {
        o.sample(
            "custos_job_failures_total",
            &[("policy", p), ("job", j)],
            s.failures as f64,
        );
    }
    o.family(
        "custos_job_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful run.",
    );
    for ((p, j), s) in &jobs {
        if let Some(t) = s.last_ok {
            o.sample(
                "custos_job_last_success_timestamp_seconds",
                &[("policy", p), ("job", j)],
                t,
            );
        }
    }
    o.family(
        "custos_job_last_duration_seconds",
        "gauge",
        "Duration of the last successful run.",
    );
    for ((p, j), s) in &jobs {
        if let Some(d) = s.duration {
            o.sample(
                "custos_job_last_duration_seconds",
                &[("policy", p), ("job", j)],
                d,
            );
        }
    }
    o.family(
        "custos_job_last_bytes",
        "gauge",
        "Bytes read by the last successful run.",
    );
    for ((p, j), s) in &jobs {
        if let Some(b) = s.bytes {
            o.sample("custos_job_last_bytes", &[("policy", p), ("job", j)], b);
        }
    }

    let cache = app.targets.lock().expect("targets lock").clone();
    o.family(
        "custos_target_snapshots",
        "gauge",
        "Snapshots on each target at the last listing.",
    );
    for (p, states) in &cache {
        for t in states.iter().filter(|t| t.error.is_none()) {
            o.sample(
                "custos_target_snapshots",
                &[("policy", p), ("target", &t.target)],
                t.snapshots.len() as f64,
            );
        }
    }
    o.family(
        "custos_replication_lag_seconds",
        "gauge",
        "How far each target's latest snapshot is behind the primary's (when known).",
    );
    for (p, states) in &cache {
        for t in states {
            if let Some(l) = t.lag_seconds {
                o.sample(
                    "custos_replication_lag_seconds",
                    &[("policy", p), ("target", &t.target)],
                    l as f64,
                );
            }
        }
    }
    o.family(
        "custos_target_up",
        "gauge",
        "Whether the target could be listed at the last listing.",
    );
    for (p, states) in &cache {
        for t in states {
            o.sample(
                "custos_target_up",
                &[("policy", p), ("target", &t.target)],
                if t.error.is_none() { 1.0 } else { 0.0 },
            );
        }
    }

    let mut drill = Vec::new();
    let mut docs = Vec::new();
    let mut pending = Vec::new();
    for p in policies.iter().filter_map(|p| p.policy.as_ref().ok()) {
        let d = data::policy_docs(app.cfg.state.root(), p);
        if let Some(r) = d.reports.first() {
            drill.push((p.name.clone(), r.clone()));
        }
        for (kind, list) in [
            ("drill-report", &d.reports),
            ("certificate", &d.certificates),
        ] {
            let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
            for x in list.iter() {
                *by.entry(x.verification.label()).or_default() += 1;
            }
            for (state, n) in by {
                docs.push((p.name.clone(), kind, state, n));
            }
        }
        pending.push((p.name.clone(), data::pending_shreds(app, &p.name)));
    }
    o.family(
        "custos_drill_last_verdict",
        "gauge",
        "1 for the verdict of the latest drill report of each policy.",
    );
    for (p, r) in &drill {
        let v = r.field("verdict").unwrap_or("unknown");
        o.sample(
            "custos_drill_last_verdict",
            &[
                ("policy", p),
                ("verdict", v),
                ("signature", r.verification.label()),
            ],
            1.0,
        );
    }
    o.family(
        "custos_drill_last_timestamp_seconds",
        "gauge",
        "Unix time of the latest drill report.",
    );
    for (p, r) in &drill {
        if let Some(t) = r.created.as_deref().and_then(ts) {
            o.sample("custos_drill_last_timestamp_seconds", &[("policy", p)], t);
        }
    }
    o.family(
        "custos_drill_last_rto_seconds",
        "gauge",
        "Measured restore time of the latest drill.",
    );
    for (p, r) in &drill {
        if let Some(x) = r.body.get("rto_seconds").and_then(|v| v.as_f64()) {
            o.sample("custos_drill_last_rto_seconds", &[("policy", p)], x);
        }
    }
    o.family(
        "custos_documents",
        "gauge",
        "Signed documents in the state directory, by kind and signature state.",
    );
    for (p, kind, state, n) in &docs {
        o.sample(
            "custos_documents",
            &[("policy", p), ("kind", kind), ("signature", state)],
            *n as f64,
        );
    }
    o.family(
        "custos_shred_requests_pending",
        "gauge",
        "Shred requests queued through the console and not yet taken.",
    );
    for (p, n) in &pending {
        o.sample("custos_shred_requests_pending", &[("policy", p)], *n as f64);
    }

    let v = data::audit_state(&app.audit, app.cfg.audit_public_key.as_ref());
    o.family(
        "custos_audit_chain_ok",
        "gauge",
        "1 when the audit chain verifies end to end.",
    );
    o.sample(
        "custos_audit_chain_ok",
        &[],
        if v.as_ref().is_ok_and(|v| v.ok()) {
            1.0
        } else {
            0.0
        },
    );
    if let Ok(v) = &v {
        o.family(
            "custos_audit_entries",
            "gauge",
            "Entries in the audit log (up to the first break).",
        );
        o.sample("custos_audit_entries", &[], v.entries as f64);
        o.family(
            "custos_audit_checkpoints_verified",
            "gauge",
            "Signed checkpoints verified.",
        );
        o.sample(
            "custos_audit_checkpoints_verified",
            &[],
            v.checkpoints_verified as f64,
        );
        o.family(
            "custos_audit_unsigned_entries",
            "gauge",
            "Entries after the last verified checkpoint.",
        );
        o.sample("custos_audit_unsigned_entries", &[], v.unsigned_tail as f64);
    }
    o.family(
        "custos_audit_denied_total",
        "counter",
        "Denied requests recorded in the audit log.",
    );
    o.sample("custos_audit_denied_total", &[], denied as f64);
    o.family(
        "custos_audit_anomalies_total",
        "counter",
        "Audit entries carrying each anomaly flag.",
    );
    for flag in [
        crate::audit::FLAG_RESTORE_OUTSIDE_DRILL,
        crate::audit::FLAG_BURST_RESTORE,
        crate::audit::FLAG_BURST_SHRED,
        crate::audit::FLAG_REPEATED_DENIED,
    ] {
        let n = anomalies.get(flag).copied().unwrap_or(0);
        o.sample("custos_audit_anomalies_total", &[("flag", flag)], n as f64);
    }
    o.0
}

pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&app),
    )
        .into_response()
}
