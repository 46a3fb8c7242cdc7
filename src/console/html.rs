//! The read-only HTML pages. Every value shown is escaped; nothing on a
//! page changes state.

use super::api::{find_doc, AuditQuery};
use super::data::{self, Doc, VerifyState};
use super::{App, Refused, Via};
use crate::users::{Action, User};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::Value;
use std::fmt::Write;
use std::sync::Arc;

type S = State<Arc<App>>;

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}.valid,.PASS,.ok{color:#070}\
.invalid,.FAIL,.failed,.denied,.broken{color:#b00}.unverified{color:#a60}pre{background:#f4f4f4;padding:1em;overflow:auto}\
nav a{margin-right:1em}";

fn page(title: &str, user: Option<&User>, body: &str) -> Response {
    let who = match user {
        Some(u) => format!(
            "<span id=\"whoami\">{} ({})</span> <a href=\"/logout\">log out</a>",
            esc(&u.name),
            u.role
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} · custos</title>\
         <style>{STYLE}</style></head><body><nav><a href=\"/\">policies</a><a href=\"/audit\">audit log</a>\
         <a href=\"/access-review\">access review</a>{who}</nav><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
    .into_response()
}

fn gate(app: &App, h: &HeaderMap, action: Action, op: &str) -> Result<User, Response> {
    app.authorize(h, Via::HeaderOrCookie, action, op, None)
        .map_err(|r| match r {
            Refused::Unauthenticated => Redirect::to("/login").into_response(),
            Refused::Forbidden(u) => {
                let mut r = page(
                    "Forbidden",
                    Some(&u),
                    "<p class=\"denied\">Your role does not allow this page; the request was recorded.</p>",
                );
                *r.status_mut() = StatusCode::FORBIDDEN;
                r
            }
            Refused::Broken(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        })
}

const LOGIN: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>Log in · custos</title></head>
<body><h1>custos console</h1>
<form id="login-form"><label>API token <input id="token" type="password" autocomplete="off" size="72"></label>
<button id="login" type="submit">Log in</button></form><p id="login-error" style="color:#b00"></p>
<script>
document.getElementById('login-form').addEventListener('submit', async function (ev) {
  ev.preventDefault();
  var t = document.getElementById('token').value.trim();
  var r = await fetch('/api/v1/login', {method: 'POST', headers: {'Authorization': 'Bearer ' + t}});
  if (r.ok) {
    document.cookie = 'custos_token=' + encodeURIComponent(t) + '; path=/; SameSite=Strict';
    location.href = '/';
  } else {
    document.getElementById('login-error').textContent = 'This token is not valid.';
  }
});
</script></body></html>"#;

pub(crate) async fn login() -> Html<&'static str> {
    Html(LOGIN)
}

pub(crate) async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/; Max-Age=0; SameSite=Strict",
                super::TOKEN_COOKIE
            ),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

fn verify_cell(v: &VerifyState) -> String {
    let why = match v {
        VerifyState::Valid { key_id } => format!("signed by key {key_id}"),
        VerifyState::Invalid { why } | VerifyState::Unverified { why } => why.clone(),
    };
    format!(
        "<span class=\"{l}\" title=\"{w}\">{l}</span>",
        l = v.label(),
        w = esc(&why)
    )
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "–".into(),
        Some(Value::String(s)) => esc(s),
        Some(other) => esc(&other.to_string()),
    }
}

pub(crate) async fn index(State(app): S, h: HeaderMap) -> Response {
    let u = match gate(&app, &h, Action::Read, "read") {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut b = String::from(
        "<table id=\"policies\"><tr><th>policy</th><th>store</th><th>targets</th><th>latest drill</th><th>certificates</th></tr>",
    );
    for p in data::load_policies(&app.cfg.policies) {
        match &p.policy {
            Ok(pol) => {
                let d = data::policy_docs(app.cfg.state.root(), pol);
                let latest = d
                    .reports
                    .first()
                    .map(|r| {
                        let v = r.field("verdict").unwrap_or("?");
                        format!(
                            "<span class=\"{0}\">{0}</span> ({1})",
                            esc(v),
                            r.created.as_deref().map(esc).unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "none".into());
                let _ = write!(
                    b,
                    "<tr><td><a href=\"/policies/{}\">{}</a></td><td>{}</td><td>{}</td><td>{latest}</td><td>{}</td></tr>",
                    seg(&pol.name),
                    esc(&pol.name),
                    pol.store.kind.as_str(),
                    esc(&pol.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")),
                    d.certificates.len()
                );
            }
            Err(e) => {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td colspan=\"4\" class=\"broken\">policy not loadable: {}</td></tr>",
                    esc(&p.name),
                    esc(e)
                );
            }
        }
    }
    b.push_str("</table>");
    page("Policies", Some(&u), &b)
}

pub(crate) async fn policy(State(app): S, h: HeaderMap, Path(name): Path<String>) -> Response {
    let u = match gate(&app, &h, Action::Read, "read") {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(p) = app.policy(&name) else {
        return (StatusCode::NOT_FOUND, page("No such policy", Some(&u), "")).into_response();
    };
    let docs = data::policy_docs(app.cfg.state.root(), &p);
    let mut b = String::new();
    b.push_str("<h2>Drill reports</h2><table id=\"reports\"><tr><th>report</th><th>created</th><th>verdict</th><th>RTO (s)</th><th>RTO target (s)</th><th>signature</th></tr>");
    for r in &docs.reports {
        let _ = write!(
            b,
            "<tr><td><a class=\"report-link\" href=\"/policies/{}/reports/{}\">{}</a></td><td>{}</td><td><span class=\"{v}\">{v}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            seg(&name), seg(&r.id), esc(&r.id),
            r.created.as_deref().map(esc).unwrap_or_default(),
            show(r.body.get("rto_seconds")), show(r.body.get("rto_target_seconds")),
            verify_cell(&r.verification),
            v = esc(r.field("verdict").unwrap_or("?")),
        );
    }
    b.push_str("</table><h2>Destruction certificates</h2><table id=\"certificates\"><tr><th>certificate</th><th>created</th><th>unit</th><th>class</th><th>method</th><th>signature</th></tr>");
    for c in &docs.certificates {
        let _ = write!(
            b,
            "<tr><td><a class=\"certificate-link\" href=\"/policies/{}/certificates/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            seg(&name), seg(&c.id), esc(&c.id),
            c.created.as_deref().map(esc).unwrap_or_default(),
            show(c.body.get("unit")), show(c.body.get("class")), show(c.body.get("method")),
            verify_cell(&c.verification),
        );
    }
    b.push_str("</table><h2>Targets and snapshots</h2>");
    let states = data::target_states(&p).await;
    for t in &states {
        let _ = write!(
            b,
            "<h3>{}{}</h3>",
            esc(&t.target),
            if t.offsite { " (off-site)" } else { "" }
        );
        if let Some(e) = &t.error {
            let _ = write!(b, "<p class=\"broken\">cannot list: {}</p>", esc(e));
            continue;
        }
        let _ = write!(
            b,
            "<p>{} snapshot(s); latest {}; replication lag {}</p><table class=\"snapshots\"><tr><th>snapshot</th><th>time</th><th>items</th><th>bytes read</th><th>new bytes</th></tr>",
            t.snapshots.len(),
            t.latest.as_deref().map(esc).unwrap_or_else(|| "none".into()),
            t.lag_seconds.map(|s| format!("{s} s")).unwrap_or_else(|| "unknown".into())
        );
        for s in t.snapshots.iter().rev() {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.id),
                esc(&s.time),
                s.items,
                s.bytes_read,
                s.new_bytes_stored
            );
        }
        b.push_str("</table>");
    }
    app.targets
        .lock()
        .expect("targets lock")
        .insert(name.clone(), states);
    page(&format!("Policy {name}"), Some(&u), &b)
}

fn doc_page(app: &App, h: &HeaderMap, name: &str, id: &str, certs: bool) -> Response {
    let u = match gate(app, h, Action::Read, "read") {
        Ok(u) => u,
        Err(r) => return r,
    };
    let d: Doc = match find_doc(app, name, id, certs) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>Signature: <strong id=\"verification\">{}</strong></p>",
        verify_cell(&d.verification)
    );
    if !certs {
        let v = d.field("verdict").unwrap_or("?");
        let _ = write!(
            b,
            "<p>Verdict: <strong id=\"verdict\" class=\"{0}\">{0}</strong></p><p>RTO: <span id=\"rto\">{1}</span> s (target {2} s)</p>",
            esc(v),
            show(d.body.get("rto_seconds")),
            show(d.body.get("rto_target_seconds"))
        );
        if let Some(Value::Array(ts)) = d.body.get("tables") {
            b.push_str("<table id=\"tables\"><tr><th>table</th><th>expected rows</th><th>restored rows</th><th>ok</th></tr>");
            for t in ts {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    show(t.get("name")),
                    show(t.get("expected_rows")),
                    show(t.get("restored_rows")),
                    show(t.get("ok"))
                );
            }
            b.push_str("</table>");
        }
    } else {
        let _ = write!(
            b,
            "<p>Verification result: <strong id=\"result\">{}</strong></p>",
            show(d.body.get("verification").and_then(|v| v.get("result")))
        );
    }
    b.push_str("<h2>All fields</h2><table id=\"fields\">");
    if let Value::Object(m) = &d.body {
        for (k, v) in m {
            let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), show(Some(v)));
        }
    }
    let kind = if certs { "certificates" } else { "reports" };
    let _ = write!(
        b,
        "</table><p><a id=\"download\" href=\"/api/v1/policies/{}/{kind}/{}/download\" download>download the signed document</a></p><h2>Signed document</h2><pre id=\"document\">{}</pre>",
        seg(name),
        seg(&d.id),
        esc(&d.text)
    );
    let title = if certs {
        format!("Certificate {}", d.id)
    } else {
        format!("Drill report {}", d.id)
    };
    page(&title, Some(&u), &b)
}

pub(crate) async fn report(
    State(app): S,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    doc_page(&app, &h, &name, &id, false)
}

pub(crate) async fn certificate(
    State(app): S,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    doc_page(&app, &h, &name, &id, true)
}

pub(crate) async fn audit(State(app): S, h: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    let u = match gate(&app, &h, Action::Read, "read") {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut b = String::new();
    match data::audit_state(&app.audit, app.cfg.audit_public_key.as_ref()) {
        Ok(v) => {
            let state = if v.ok() { "intact" } else { "broken" };
            let _ = write!(
                b,
                "<p>Chain: <strong id=\"audit-verification\" class=\"{}\">{state}</strong>; {} entries, {} signed checkpoint(s) verified{}, {} entries after the last checkpoint.</p>",
                if v.ok() { "ok" } else { "broken" },
                v.entries,
                v.checkpoints_verified,
                if app.cfg.audit_public_key.is_none() { " (no public key configured: signatures not checked)" } else { "" },
                v.unsigned_tail
            );
            if let Some(br) = &v.first_break {
                let _ = write!(
                    b,
                    "<p class=\"broken\">First break at line {} (seq {}): {}</p>",
                    br.line,
                    br.seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    esc(&br.why)
                );
            }
        }
        Err(e) => {
            let _ = write!(
                b,
                "<p class=\"broken\">cannot read the audit log: {}</p>",
                esc(&e)
            );
        }
    }
    let _ = write!(
        b,
        "<form method=\"get\">since <input name=\"since\" value=\"{}\"> actor <input name=\"actor\" value=\"{}\"> op <input name=\"op\" value=\"{}\"> <button>filter</button></form>",
        esc(q.since.as_deref().unwrap_or("")),
        esc(q.actor.as_deref().unwrap_or("")),
        esc(q.op.as_deref().unwrap_or(""))
    );
    let entries = match q.filter() {
        Ok(f) => app.audit.show(&f).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match entries {
        Ok(es) => {
            b.push_str("<table id=\"audit\"><tr><th>seq</th><th>time</th><th>actor</th><th>role</th><th>policy</th><th>op</th><th>objects</th><th>outcome</th><th>flags</th><th>detail</th></tr>");
            for e in es.iter().rev() {
                let outcome = serde_json::to_value(e.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td></tr>",
                    e.seq,
                    esc(&e.time),
                    esc(&e.actor),
                    esc(&e.role),
                    esc(e.policy.as_deref().unwrap_or("")),
                    esc(&e.op),
                    esc(&e.objects.join(" ")),
                    esc(&e.flags.join(" ")),
                    esc(e.detail.as_deref().unwrap_or("")),
                    o = esc(&outcome),
                );
            }
            b.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(b, "<p class=\"broken\">{}</p>", esc(&e));
        }
    }
    page("Audit log", Some(&u), &b)
}

pub(crate) async fn access_review(State(app): S, h: HeaderMap) -> Response {
    let u = match gate(&app, &h, Action::AccessReview, "access-review") {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut b = String::from(
        "<table id=\"review\"><tr><th>user</th><th>role</th><th>created</th><th>token issued</th><th>last use</th></tr>",
    );
    match app.users.review() {
        Ok(lines) => {
            for l in lines {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&l.name),
                    l.role,
                    esc(&l.created),
                    esc(l.token_issued.as_deref().unwrap_or("")),
                    esc(l.last_used.as_deref().unwrap_or("never"))
                );
            }
        }
        Err(e) => {
            let _ = write!(
                b,
                "<tr><td colspan=\"5\" class=\"broken\">{}</td></tr>",
                esc(&e.to_string())
            );
        }
    }
    b.push_str("</table>");
    page("Access review", Some(&u), &b)
}
