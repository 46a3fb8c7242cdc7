//! The auditor console: a read-only web console, a JSON API behind it,
//! role-checked actions, Prometheus metrics and health endpoints, served
//! with axum by `custos serve`.
//!
//! Every request but `/healthz`, `/readyz`, `/metrics` and the login page
//! needs an API token of a user (see [`crate::users`]): `Authorization:
//! Bearer <token>`, or for the HTML pages the `custos_token` cookie that
//! the login page sets. Actions (`POST`/`PUT`) take the header only, so a
//! page cannot be tricked into sending them. A request whose role does not
//! allow it gets 403 and an audit entry with outcome `denied`; an unknown
//! token gets 401 and an audit entry too.
//!
//! The API is documented in `docs/API.md`.

// Handlers return early with an axum `Response` (or a refused user) as
// the error; these are built once per request, so their size is no cost.
#![allow(clippy::result_large_err)]

mod api;
pub mod data;
mod html;
mod metrics;
pub mod tls;

use crate::audit::{AuditLog, Event, Outcome};
use crate::state::StateDir;
use crate::users::{Action, User, Users};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Name of the cookie the login page stores the token in.
pub const TOKEN_COOKIE: &str = "custos_token";

/// Errors starting the console.
#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("cannot listen on {addr}: {source}; pick a free port or address")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("console server: {0}")]
    Serve(#[source] std::io::Error),
    #[error("TLS: {path}: {why}")]
    Tls { path: PathBuf, why: String },
    #[error("policy directory {0} is not a readable directory; pass --policies with the folder of the policy files")]
    NoPolicies(PathBuf),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// How the console runs.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// The folder of the policy files (`*.toml`).
    pub policies: PathBuf,
    /// The local state directory (audit log, reports, certificates).
    pub state: StateDir,
    /// The users file.
    pub users_file: PathBuf,
    /// Public key that verifies the audit log's checkpoints.
    pub audit_public_key: Option<VerifyingKey>,
    /// Key that signs periodic checkpoints of the audit log.
    pub audit_signing_key: Option<Arc<SigningKey>>,
    /// How often the background task runs (checkpoint when due, replicate
    /// the audit log, refresh the snapshot listing for metrics). `None`:
    /// never (tests).
    pub background_every: Option<Duration>,
    /// Copy the audit log to each policy's primary target in the background.
    pub replicate_audit: bool,
}

/// The running console's shared state.
pub struct App {
    pub(crate) cfg: ConsoleConfig,
    pub(crate) users: Users,
    pub(crate) audit: AuditLog,
    /// The last snapshot listing per policy (for metrics).
    pub(crate) targets: Mutex<BTreeMap<String, Vec<data::TargetState>>>,
    /// Pending destructions per policy, from the shred ledger at the last
    /// background refresh (for metrics and the API).
    pub(crate) pending_shreds: Mutex<BTreeMap<String, usize>>,
}

impl App {
    /// Opens the users and the audit log of `cfg`.
    pub fn new(cfg: ConsoleConfig) -> Result<Arc<App>, ConsoleError> {
        if !cfg.policies.is_dir() {
            return Err(ConsoleError::NoPolicies(cfg.policies.clone()));
        }
        let audit = AuditLog::open(&cfg.state.sub("audit")?)?;
        let users = Users::at(cfg.users_file.clone(), cfg.state.root());
        Ok(Arc::new(App {
            cfg,
            users,
            audit,
            targets: Mutex::new(BTreeMap::new()),
            pending_shreds: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Appends an audit entry; a failure to write it is logged (the
    /// request itself has already been decided).
    pub(crate) fn record(&self, ev: Event) {
        if let Err(e) = self.audit.append(&ev) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    pub(crate) fn policy(&self, name: &str) -> Option<crate::policy::Policy> {
        data::load_policies(&self.cfg.policies)
            .into_iter()
            .find(|p| p.name == name)
            .and_then(|p| p.policy.ok())
    }
}

/// The router: pages, API, metrics and health.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/login", get(html::login))
        .route("/logout", get(html::logout))
        .route("/", get(html::index))
        .route("/policies/{name}", get(html::policy))
        .route("/policies/{name}/reports/{id}", get(html::report))
        .route("/policies/{name}/certificates/{id}", get(html::certificate))
        .route("/audit", get(html::audit))
        .route("/access-review", get(html::access_review))
        .route("/api/v1/login", post(api::login))
        .route("/api/v1/whoami", get(api::whoami))
        .route("/api/v1/policies", get(api::policies))
        .route(
            "/api/v1/policies/{name}",
            get(api::policy).put(api::change_policy),
        )
        .route("/api/v1/policies/{name}/snapshots", get(api::snapshots))
        .route("/api/v1/policies/{name}/reports", get(api::reports))
        .route("/api/v1/policies/{name}/reports/{id}", get(api::report))
        .route(
            "/api/v1/policies/{name}/reports/{id}/download",
            get(api::report_download),
        )
        .route(
            "/api/v1/policies/{name}/certificates",
            get(api::certificates),
        )
        .route(
            "/api/v1/policies/{name}/certificates/{id}",
            get(api::certificate),
        )
        .route(
            "/api/v1/policies/{name}/certificates/{id}/download",
            get(api::certificate_download),
        )
        .route("/api/v1/policies/{name}/jobs/{job}", post(api::run_job))
        .route("/api/v1/policies/{name}/restore", post(api::restore))
        .route("/api/v1/policies/{name}/shred", post(api::shred))
        .route("/api/v1/audit", get(api::audit))
        .route("/api/v1/audit/verify", get(api::audit_verify))
        .route("/api/v1/access-review", get(api::access_review))
        .with_state(app)
}

/// Serves the console on `listener` until `shutdown` completes, with the
/// background task (see [`ConsoleConfig::background_every`]).
pub async fn serve(
    cfg: ConsoleConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    use axum::serve::ListenerExt;
    // A response is often written in two segments (head, then body):
    // without TCP_NODELAY the second waits for the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    serve_on(cfg, listener, shutdown).await
}

/// [`serve`] over TLS: every connection accepted on `listener` is a TLS
/// connection with `tls` (see [`tls::load_server_config`]).
pub async fn serve_tls(
    cfg: ConsoleConfig,
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let l = tls::TlsListener::new(listener, tls).map_err(ConsoleError::Serve)?;
    serve_on(cfg, l, shutdown).await
}

async fn serve_on<L>(
    cfg: ConsoleConfig,
    listener: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = App::new(cfg)?;
    let bg = app
        .cfg
        .background_every
        .map(|every| tokio::spawn(background(app.clone(), every)));
    let r = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ConsoleError::Serve);
    if let Some(bg) = bg {
        bg.abort();
    }
    r
}

/// Periodic work: sign the audit head when due, copy the log to every
/// policy's primary target, refresh the snapshot listing.
async fn background(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        run_background_once(&app).await;
    }
}

/// One round of the background task (public for `serve --once` style use
/// and tests).
pub async fn run_background_once(app: &App) {
    if let Some(k) = &app.cfg.audit_signing_key {
        if let Err(e) = app.audit.checkpoint_if_due(
            k,
            "job:console/checkpoint",
            100,
            chrono::Duration::hours(1),
        ) {
            tracing::error!("audit checkpoint: {e}");
        }
    }
    for p in data::load_policies(&app.cfg.policies) {
        let Ok(policy) = p.policy else { continue };
        if app.cfg.replicate_audit {
            let r = async {
                let t = crate::ops::open_target(&policy, policy.primary(), false)
                    .map_err(|e| e.to_string())?;
                crate::audit::replicate(&app.audit, &t)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = r {
                tracing::warn!("audit replication to policy `{}`: {e}", policy.name);
            }
        }
        match crate::shred::status(&policy).await {
            Ok(l) => {
                app.pending_shreds
                    .lock()
                    .expect("pending lock")
                    .insert(policy.name.clone(), l.pending.len());
            }
            Err(e) => tracing::warn!("shred ledger of policy `{}`: {e}", policy.name),
        }
        let states = data::target_states(&policy).await;
        app.targets
            .lock()
            .expect("targets lock")
            .insert(policy.name.clone(), states);
    }
}

async fn readyz(axum::extract::State(app): axum::extract::State<Arc<App>>) -> Response {
    let policies = app.cfg.policies.is_dir();
    let audit = app.audit.entries().is_ok();
    let users = app.users.list().is_ok();
    let body = serde_json::json!({"policies": policies, "audit_log": audit, "users": users});
    let code = if policies && audit && users {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Where a token came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Header only (actions).
    Header,
    /// Header or cookie (reads, pages).
    HeaderOrCookie,
}

fn token_from(headers: &HeaderMap, via: Via) -> Option<String> {
    if let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = h.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    if via == Via::HeaderOrCookie {
        for c in headers.get_all(header::COOKIE) {
            let Ok(c) = c.to_str() else { continue };
            for part in c.split(';') {
                if let Some(v) = part.trim().strip_prefix(&format!("{TOKEN_COOKIE}=")) {
                    if !v.is_empty() {
                        return Some(v.to_string());
                    }
                }
            }
        }
    }
    None
}

/// Why a request was refused before it ran.
pub(crate) enum Refused {
    /// No token, or a token no user holds (401).
    Unauthenticated,
    /// The role does not allow the action (403).
    Forbidden(User),
    /// The users file cannot be read (500).
    Broken(String),
}

impl App {
    /// Authenticates the request and checks that the user may do `action`.
    /// Unknown tokens and forbidden actions are audited here (`op` names
    /// the operation, `policy` its policy).
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        via: Via,
        action: Action,
        op: &str,
        policy: Option<&str>,
    ) -> Result<User, Refused> {
        let Some(token) = token_from(headers, via) else {
            return Err(Refused::Unauthenticated);
        };
        let user = match self.users.authenticate(&token) {
            Ok(Some(u)) => u,
            Ok(None) => {
                let mut ev = Event::new(op, "none")
                    .actor("unknown-token")
                    .outcome(Outcome::Denied)
                    .detail("unknown or revoked token");
                if let Some(p) = policy {
                    ev = ev.policy(p);
                }
                self.record(ev);
                return Err(Refused::Unauthenticated);
            }
            Err(e) => return Err(Refused::Broken(e.to_string())),
        };
        if let Err(e) = self.users.record_use(&user.name) {
            tracing::warn!("cannot record the last use of a token: {e}");
        }
        if !user.role.allows(action) {
            let mut ev = Event::new(op, user.role.as_str())
                .actor(user.name.clone())
                .outcome(Outcome::Denied)
                .detail(format!("role {} may not {action:?}", user.role));
            if let Some(p) = policy {
                ev = ev.policy(p);
            }
            self.record(ev);
            return Err(Refused::Forbidden(user));
        }
        Ok(user)
    }
}
