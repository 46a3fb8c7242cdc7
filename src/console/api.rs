//! The JSON API (`/api/v1/...`), documented in `docs/API.md`.

use super::data::{self, Doc};
use super::{App, Refused, Via};
use crate::audit::{Event, Filter, Outcome, FLAG_RESTORE_OUTSIDE_DRILL};
use crate::users::{Action, User};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type S = State<Arc<App>>;

pub(crate) fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

pub(crate) fn refused(r: Refused) -> Response {
    match r {
        Refused::Unauthenticated => error(
            StatusCode::UNAUTHORIZED,
            "no valid API token: send `Authorization: Bearer <token>` (custos users add issues one)",
        ),
        Refused::Forbidden(u) => error(
            StatusCode::FORBIDDEN,
            format!(
                "user `{}` has role {}, which does not allow this; the request was recorded in the audit log",
                u.name, u.role
            ),
        ),
        Refused::Broken(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn read(app: &App, h: &HeaderMap, policy: Option<&str>) -> Result<User, Response> {
    app.authorize(h, Via::HeaderOrCookie, Action::Read, "read", policy)
        .map_err(refused)
}

fn no_policy(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no loadable policy `{name}` in the policy directory"),
    )
}

pub(crate) async fn login(State(app): S, h: HeaderMap) -> Response {
    match app.authorize(&h, Via::Header, Action::Read, "login", None) {
        Ok(u) => {
            app.record(Event::new("login", u.role.as_str()).actor(u.name.clone()));
            Json(json!({"name": u.name, "role": u.role})).into_response()
        }
        Err(r) => refused(r),
    }
}

pub(crate) async fn whoami(State(app): S, h: HeaderMap) -> Response {
    match read(&app, &h, None) {
        Ok(u) => Json(json!({"name": u.name, "role": u.role})).into_response(),
        Err(r) => r,
    }
}

/// A policy as listed: name, file, store kind, targets (URLs redacted).
pub(crate) fn policy_json(p: &data::PolicyEntry) -> Value {
    match &p.policy {
        Ok(pol) => json!({
            "name": pol.name,
            "file": p.file.file_name().map(|f| f.to_string_lossy().into_owned()),
            "store": pol.store.kind.as_str(),
            "targets": pol.targets.iter().map(|t| json!({
                "name": t.name,
                "url": crate::target::redact_url(&t.url),
                "offsite": t.offsite,
                "primary": t.name == pol.primary().name,
            })).collect::<Vec<_>>(),
            "schedule": {
                "backup": pol.schedule.backup, "replicate": pol.schedule.replicate,
                "drill": pol.schedule.drill, "retention": pol.schedule.retention,
            },
            "drill_rto_seconds": pol.drill.rto.map(|d| d.as_secs()),
            "error": null,
        }),
        Err(e) => {
            json!({"name": p.name, "file": p.file.file_name().map(|f| f.to_string_lossy().into_owned()), "error": e})
        }
    }
}

pub(crate) async fn policies(State(app): S, h: HeaderMap) -> Response {
    if let Err(r) = read(&app, &h, None) {
        return r;
    }
    let ps = data::load_policies(&app.cfg.policies);
    Json(ps.iter().map(policy_json).collect::<Vec<_>>()).into_response()
}

/// A document in a listing: its summary fields and verification.
pub(crate) fn doc_summary(d: &Doc) -> Value {
    let mut v = json!({
        "id": d.id, "kind": d.kind, "created": d.created, "verification": d.verification,
    });
    for f in [
        "verdict",
        "rto_seconds",
        "rto_target_seconds",
        "unit",
        "class",
        "method",
    ] {
        if let Some(x) = d.body.get(f) {
            v[f] = x.clone();
        }
    }
    v
}

pub(crate) async fn policy(State(app): S, h: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = read(&app, &h, Some(&name)) {
        return r;
    }
    let Some(entry) = data::load_policies(&app.cfg.policies)
        .into_iter()
        .find(|p| p.name == name)
    else {
        return no_policy(&name);
    };
    let mut v = policy_json(&entry);
    if let Ok(p) = &entry.policy {
        let docs = data::policy_docs(app.cfg.state.root(), p);
        v["reports"] = docs.reports.iter().map(doc_summary).collect();
        v["certificates"] = docs.certificates.iter().map(doc_summary).collect();
        v["pending_shred_requests"] = data::pending_shreds(&app, &name).into();
    }
    Json(v).into_response()
}

pub(crate) async fn snapshots(State(app): S, h: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = read(&app, &h, Some(&name)) {
        return r;
    }
    let Some(p) = app.policy(&name) else {
        return no_policy(&name);
    };
    let states = data::target_states(&p).await;
    app.targets
        .lock()
        .expect("targets lock")
        .insert(name, states.clone());
    Json(states).into_response()
}

fn docs_of(app: &App, name: &str, certificates: bool) -> Option<Vec<Doc>> {
    let p = app.policy(name)?;
    let d = data::policy_docs(app.cfg.state.root(), &p);
    Some(if certificates {
        d.certificates
    } else {
        d.reports
    })
}

fn list_docs(app: &App, h: &HeaderMap, name: &str, certs: bool) -> Response {
    if let Err(r) = read(app, h, Some(name)) {
        return r;
    }
    match docs_of(app, name, certs) {
        Some(ds) => Json(ds.iter().map(doc_summary).collect::<Vec<_>>()).into_response(),
        None => no_policy(name),
    }
}

/// The document `id` of policy `name`, or the response to send instead.
pub(crate) fn find_doc(app: &App, name: &str, id: &str, certs: bool) -> Result<Doc, Response> {
    if !data::safe_id(id) {
        return Err(error(StatusCode::BAD_REQUEST, "not a document id"));
    }
    let ds = docs_of(app, name, certs).ok_or_else(|| no_policy(name))?;
    ds.into_iter().find(|d| d.id == id).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no document `{id}` for policy `{name}`"),
        )
    })
}

fn one_doc(app: &App, h: &HeaderMap, name: &str, id: &str, certs: bool) -> Response {
    if let Err(r) = read(app, h, Some(name)) {
        return r;
    }
    match find_doc(app, name, id, certs) {
        Ok(d) => Json(json!({
            "id": d.id, "kind": d.kind, "created": d.created,
            "verification": d.verification, "body": d.body, "document": d.text,
        }))
        .into_response(),
        Err(r) => r,
    }
}

fn download(app: &App, h: &HeaderMap, name: &str, id: &str, certs: bool) -> Response {
    if let Err(r) = read(app, h, Some(name)) {
        return r;
    }
    match find_doc(app, name, id, certs) {
        Ok(d) => (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}.json\"", d.id),
                ),
            ],
            d.text,
        )
            .into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn reports(State(app): S, h: HeaderMap, Path(name): Path<String>) -> Response {
    list_docs(&app, &h, &name, false)
}
pub(crate) async fn certificates(
    State(app): S,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    list_docs(&app, &h, &name, true)
}
pub(crate) async fn report(
    State(app): S,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    one_doc(&app, &h, &name, &id, false)
}
pub(crate) async fn certificate(
    State(app): S,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    one_doc(&app, &h, &name, &id, true)
}
pub(crate) async fn report_download(
    State(app): S,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    download(&app, &h, &name, &id, false)
}
pub(crate) async fn certificate_download(
    State(app): S,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    download(&app, &h, &name, &id, true)
}

/// Query of `/api/v1/audit` and `/audit`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    pub since: Option<String>,
    pub actor: Option<String>,
    pub op: Option<String>,
}

impl AuditQuery {
    pub(crate) fn filter(&self) -> Result<Filter, String> {
        let nonempty = |s: &Option<String>| s.clone().filter(|x| !x.is_empty());
        Ok(Filter {
            since: match nonempty(&self.since) {
                Some(s) => Some(crate::audit::parse_since(&s, chrono::Utc::now())?),
                None => None,
            },
            actor: nonempty(&self.actor),
            op: nonempty(&self.op),
        })
    }
}

pub(crate) async fn audit(State(app): S, h: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    if let Err(r) = read(&app, &h, None) {
        return r;
    }
    let f = match q.filter() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let v = data::audit_state(&app.audit, app.cfg.audit_public_key.as_ref());
    let entries = app.audit.show(&f);
    match (v, entries) {
        (Ok(v), Ok(es)) => {
            Json(json!({"verification": v, "ok": v.ok(), "entries": es})).into_response()
        }
        (Ok(v), Err(e)) => {
            Json(json!({"verification": v, "ok": false, "entries": [], "error": e.to_string()}))
                .into_response()
        }
        (Err(e), _) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(crate) async fn audit_verify(State(app): S, h: HeaderMap) -> Response {
    if let Err(r) = read(&app, &h, None) {
        return r;
    }
    match data::audit_state(&app.audit, app.cfg.audit_public_key.as_ref()) {
        Ok(v) => Json(json!({"ok": v.ok(), "signatures_checked": app.cfg.audit_public_key.is_some(), "verification": v})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(crate) async fn access_review(State(app): S, h: HeaderMap) -> Response {
    if let Err(r) = app
        .authorize(
            &h,
            Via::HeaderOrCookie,
            Action::AccessReview,
            "access-review",
            None,
        )
        .map_err(refused)
    {
        return r;
    }
    match app.users.review() {
        Ok(r) => {
            Json(json!({"generated": chrono::Utc::now().to_rfc3339(), "users": r})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

fn act(app: &App, h: &HeaderMap, action: Action, op: &str, policy: &str) -> Result<User, Response> {
    app.authorize(h, Via::Header, action, op, Some(policy))
        .map_err(refused)
}

/// What an action did: objects, detail, flags; or why it failed.
type Done<'a> = Result<(Vec<String>, Option<String>, Vec<&'a str>), String>;

fn done(app: &App, u: &User, op: &str, policy: &str, r: Done<'_>) -> Result<(), String> {
    let mut ev = Event::new(op, u.role.as_str())
        .actor(u.name.clone())
        .policy(policy);
    match r {
        Ok((objects, detail, flags)) => {
            for o in objects {
                ev = ev.object(o);
            }
            if let Some(d) = detail {
                ev = ev.detail(d);
            }
            for f in flags {
                ev = ev.flag(f);
            }
            app.record(ev);
            Ok(())
        }
        Err(e) => {
            app.record(ev.outcome(Outcome::Failed).detail(truncate(&e)));
            Err(e)
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

pub(crate) async fn run_job(
    State(app): S,
    h: HeaderMap,
    Path((name, job)): Path<(String, String)>,
) -> Response {
    let op = job.clone();
    let u = match act(&app, &h, Action::RunJob, &op, &name) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(p) = app.policy(&name) else {
        return no_policy(&name);
    };
    let kind: crate::schedule::JobKind = match job.parse() {
        Ok(k) => k,
        Err(e) => {
            let _ = done(&app, &u, &op, &name, Err(e.clone()));
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    // The same job the daemon runs (it audits itself as
    // `job:<policy>/<job>`), under the same lease as `custos run-once`, so
    // it never runs beside the daemon's run of the job on any agent; the
    // requesting user is audited here too.
    let ctx = crate::schedule::jobs::JobContext {
        state: Some(app.cfg.state.clone()),
        ..Default::default()
    };
    let files = match crate::schedule::state::StateFiles::open(&app.cfg.state) {
        Ok(f) => f,
        Err(e) => {
            let e = e.to_string();
            let _ = done(&app, &u, &op, &name, Err(e.clone()));
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    };
    let r = crate::schedule::daemon::run_once(
        &p,
        kind,
        &ctx,
        files,
        crate::schedule::daemon::DEFAULT_LEASE_TTL,
    )
    .await;
    match r {
        Ok(rec) => match &rec.outcome {
            crate::schedule::JobOutcome::Ok { detail } => {
                let _ = done(
                    &app,
                    &u,
                    &op,
                    &name,
                    Ok((vec![], Some(truncate(detail)), vec![])),
                );
                Json(serde_json::to_value(&rec).unwrap_or(Value::Null)).into_response()
            }
            // Stopped before it finished: its lease was lost (run-once
            // returns failures as errors, below).
            _ => {
                let e = "the job was aborted: its lease was lost (taken over by another agent, or the target became unreachable)";
                let _ = done(&app, &u, &op, &name, Err(e.into()));
                error(StatusCode::INTERNAL_SERVER_ERROR, e)
            }
        },
        Err(e) => {
            let status = match &e {
                crate::schedule::ScheduleError::Held { .. } => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            // A failed job's own error, not the run-once wrapper's.
            let msg = match &e {
                crate::schedule::ScheduleError::JobFailed { error, .. } => error.clone(),
                other => other.to_string(),
            };
            let _ = done(&app, &u, &op, &name, Err(msg.clone()));
            error(status, msg)
        }
    }
}

/// Body of `POST /api/v1/policies/{name}/restore`. (No `Debug`: it may
/// hold a subject id, a customer value.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreBody {
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    target: Option<String>,
    to: String,
    #[serde(default)]
    force: bool,
    /// Only these tables (SQLite and PostgreSQL snapshots).
    #[serde(default)]
    tables: Vec<String>,
    /// Only this customer's rows (SQLite and PostgreSQL snapshots).
    #[serde(default)]
    subject: Option<String>,
}

pub(crate) async fn restore(
    State(app): S,
    h: HeaderMap,
    Path(name): Path<String>,
    body: String,
) -> Response {
    let u = match act(&app, &h, Action::Restore, "restore", &name) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let b: RestoreBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("restore body: {e}")),
    };
    let Some(p) = app.policy(&name) else {
        return no_policy(&name);
    };
    let opts = crate::ops::restore::RestoreOptions {
        target: b.target,
        snapshot: b.snapshot.unwrap_or_else(|| "latest".into()),
        to: b.to.into(),
        force: b.force,
        only: crate::ops::restore::Selection {
            tables: b.tables,
            subject: b.subject,
        },
    };
    let r = crate::ops::restore::restore(&p, &opts, Arc::new(crate::progress::NoProgress)).await;
    match r {
        Ok(rep) => {
            let _ = done(
                &app,
                &u,
                "restore",
                &name,
                Ok((
                    vec![rep.snapshot.clone()],
                    rep.partial_detail(),
                    vec![FLAG_RESTORE_OUTSIDE_DRILL],
                )),
            );
            Json(serde_json::to_value(&rep).unwrap_or(Value::Null)).into_response()
        }
        Err(e) => {
            app.record(
                Event::new("restore", u.role.as_str())
                    .actor(u.name.clone())
                    .policy(&name)
                    .outcome(Outcome::Failed)
                    .detail(truncate(&e.to_string()))
                    .flag(FLAG_RESTORE_OUTSIDE_DRILL),
            );
            // What the request asked for is wrong (no such table, target
            // or snapshot, a customer without a key, a file in the way):
            // the caller's to fix. Anything else is the server's side.
            use crate::ops::OpsError as E;
            let status = match &e {
                E::Invalid(_) | E::UnknownTarget(_) | E::Unsupported(_) => StatusCode::BAD_REQUEST,
                E::Sqlite(s)
                    if matches!(**s, crate::store::sqlite::SqliteError::AlreadyExists { .. }) =>
                {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

/// Body of `POST /api/v1/policies/{name}/shred`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShredBody {
    /// The shred unit (a class and period, or a pseudonym; never a subject id).
    unit: String,
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn shred(
    State(app): S,
    h: HeaderMap,
    Path(name): Path<String>,
    body: String,
) -> Response {
    let u = match act(&app, &h, Action::Shred, "shred.request", &name) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let b: ShredBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("shred body: {e}")),
    };
    let Some(p) = app.policy(&name) else {
        return no_policy(&name);
    };
    // `CLASS:PERIOD` names a period or epoch key; anything else is taken as
    // a subject pseudonym (the console never takes a subject id in clear).
    let unit = if b.unit.contains(':') {
        crate::shred::UnitSpec::Period(b.unit.clone())
    } else {
        crate::shred::UnitSpec::Unit(crate::shred::Unit {
            kind: crate::vault::KeyKind::Subject,
            name: b.unit.clone(),
        })
    };
    let req = crate::shred::Request {
        unit,
        reason: b.reason.clone(),
        request_ref: Some(format!("console:{}", u.name)),
        requester: u.name.clone(),
        role: u.role.as_str().to_string(),
        now: false,
    };
    // The shred module appends the audit entry (actor, role, outcome).
    match crate::shred::request(&p, &app.cfg.state, &req, chrono::Utc::now()).await {
        Ok(pending) => (
            StatusCode::ACCEPTED,
            Json(serde_json::to_value(&pending).unwrap_or(Value::Null)),
        )
            .into_response(),
        Err(e) => {
            use crate::shred::ShredError as E;
            let code = match &e {
                E::InvalidUnit { .. } => StatusCode::BAD_REQUEST,
                E::UnknownUnit { .. } => StatusCode::NOT_FOUND,
                E::AlreadyDestroyed { .. }
                | E::AlreadyPending { .. }
                | E::InProgress { .. }
                | E::BelowFloor { .. } => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(code, e.to_string())
        }
    }
}

pub(crate) async fn change_policy(
    State(app): S,
    h: HeaderMap,
    Path(name): Path<String>,
    body: String,
) -> Response {
    let u = match act(&app, &h, Action::PolicyChange, "policy.change", &name) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(entry) = data::load_policies(&app.cfg.policies)
        .into_iter()
        .find(|p| p.name == name)
    else {
        return no_policy(&name);
    };
    let new = match crate::policy::Policy::from_str(&body, &entry.file) {
        Ok(p) => p,
        Err(e) => {
            let _ = done(
                &app,
                &u,
                "policy.change",
                &name,
                Err(format!("refused: {e}")),
            );
            return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
    };
    if new.name != name {
        let msg = format!("the new text names policy `{}`, not `{name}`", new.name);
        let _ = done(&app, &u, "policy.change", &name, Err(msg.clone()));
        return error(StatusCode::UNPROCESSABLE_ENTITY, msg);
    }
    let hash = blake3::hash(body.as_bytes()).to_hex().to_string();
    let r = (|| {
        let prev = entry.file.with_extension("toml.prev");
        std::fs::copy(&entry.file, &prev).map_err(|e| e.to_string())?;
        let tmp = entry.file.with_extension("toml.new");
        std::fs::write(&tmp, &body).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &entry.file).map_err(|e| e.to_string())
    })();
    match done(
        &app,
        &u,
        "policy.change",
        &name,
        r.map(|()| (vec![format!("blake3:{hash}")], None, vec![])),
    ) {
        Ok(()) => Json(json!({"policy": name, "blake3": hash})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
