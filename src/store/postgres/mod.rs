//! PostgreSQL in record mode: a consistent, streaming read of every table
//! and a rebuild of the database (or a plain SQL script) from its rows.
//!
//! * [`PgSource`] opens one REPEATABLE READ, READ ONLY transaction, exports
//!   its snapshot (`pg_export_snapshot()`, as `pg_dump` does) and takes
//!   ACCESS SHARE locks on the tables it reads, so every table is read at
//!   the same point in time while the database takes writes. Extra
//!   connections join the same snapshot (`SET TRANSACTION SNAPSHOT`) and
//!   stream tables with `COPY ... TO STDOUT` in parallel, a large table as
//!   several `ctid` ranges; rows reach the caller in physical order through
//!   small bounded channels, so memory stays bounded whatever the table
//!   size. The schema is captured by the
//!   matching `pg_dump` on the same snapshot ([`schema`](PgSource::schema)).
//! * [`PgRestorer`] rebuilds into an empty database: the dump's pre-data
//!   section (types, tables, functions, views), then rows with `COPY ...
//!   FROM STDIN`, then sequence values, then the post-data section
//!   (indexes, constraints, triggers). [`SqlScript`] writes the same as one
//!   plain SQL script for `psql`.
//!
//! Rows are stored in the canonical record encoding ([`super::record`]):
//! one TEXT value per column holding PostgreSQL's text output of the value
//! (session settings fixed: `DateStyle = ISO, YMD`, `TimeZone = UTC`,
//! `IntervalStyle = postgres`, `extra_float_digits = 3`, `bytea_output =
//! hex`), NULL as NULL, no rowid. Text output is what `COPY` reads back, so
//! a value round-trips exactly. Subject and period coordinates follow the
//! same rules as SQLite (docs/FORMAT.md section 9), see [`coords`].
//!
//! Errors name the server, tables and columns, never row values or
//! passwords.

mod catalog;
mod copy;
mod restore;
pub mod tls;
mod tools;

pub use catalog::read as read_catalog;
pub use catalog::{PgColumn, PgSchema, PgSequence, PgTable};
pub use copy::{decode_copy_field, decode_copy_field_into, encode_copy_field};
pub use restore::{restore_conn, PgOutput, PgRestorer, SqlScript};
pub use tools::PgTools;

use crate::policy::StoreConfig;
use crate::store::record::encode_row;
use crate::store::sqlite::{bucket_label, subject_text, BucketCache};
use crate::store::{GroupCoords, TablePlan};
use futures::StreamExt;
use rusqlite::types::ValueRef;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls};
use zeroize::Zeroizing;

/// What went wrong with a PostgreSQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL cannot be parsed.
    #[error("store url `{url}`: {why}; write it as postgres://USER@HOST:PORT/DATABASE")]
    BadUrl { url: String, why: String },
    /// The password file or variable cannot be read.
    #[error("{what}: {why}")]
    Password { what: String, why: String },
    /// The server refused the credentials.
    #[error("{server}: authentication failed for user `{user}`: check the password (password_file / password_env) and the server's pg_hba.conf")]
    Auth { server: String, user: String },
    /// The server cannot be reached.
    #[error("{server}: cannot connect: {why}; check that the server runs and the host and port are right")]
    Unreachable { server: String, why: String },
    /// TLS could not be set up or the server's certificate was refused.
    #[error("{server}: TLS: {why}; check the store url's sslmode and sslrootcert (docs/POSTGRES.md, \"TLS\")")]
    Tls { server: String, why: String },
    /// A query or statement failed.
    #[error("{server}: {what}: {why}")]
    Query {
        server: String,
        what: String,
        why: String,
    },
    /// A table named in the policy is not in the database.
    #[error("{server}: table `{table}` (store.tables) does not exist in the schemas read ({schemas}); fix the name or `schemas`")]
    MissingTable {
        server: String,
        table: String,
        schemas: String,
    },
    /// A column named in the policy is not in its table.
    #[error("{server}: table `{table}` has no column `{column}` (its {role} column in the policy); fix store.tables")]
    MissingColumn {
        server: String,
        table: String,
        column: String,
        role: &'static str,
    },
    /// The period column's type cannot be read as a time.
    #[error("{server}: table `{table}` column `{column}` has type {ty}, which is not a time; a period column must be date, timestamp, timestamptz, an integer (unix seconds) or text (ISO 8601)")]
    PeriodType {
        server: String,
        table: String,
        column: String,
        ty: String,
    },
    /// The database holds large objects, which are not backed up, and the
    /// policy does not say to go on without them.
    #[error("{server}: the database holds {count} large objects (pg_largeobject), which custos does not back up: a restore would not have their contents. Move their contents into a bytea column of a table, or set `large_objects = \"skip\"` in [store] to back up without them")]
    LargeObjects { server: String, count: i64 },
    /// Extension configuration tables hold rows that this backup would
    /// not keep (`why`), and the policy does not say to go on without
    /// them.
    #[error("{server}: extension configuration tables hold rows ({tables}) that this backup cannot keep: {why}. Set `extension_config = \"skip\"` in [store] to back up without them")]
    ExtensionConfig {
        server: String,
        tables: String,
        why: String,
    },
    /// A PostgreSQL client tool (`pg_dump`, `psql`) is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// The restore target is not empty.
    #[error("{target}: the database is not empty ({objects} objects in user schemas); restore into an empty database, or pass --force to drop its user schemas first")]
    NotEmpty { target: String, objects: i64 },
    /// A restore file exists.
    #[error("{0}: exists; choose a new file or pass --force to replace it")]
    FileExists(PathBuf),
    /// A file could not be written.
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    /// Stored rows do not fit the table they are restored into.
    #[error("table {table}: {why}")]
    Rows { table: String, why: String },
}

/// How to reach one database: the URL (without a password), the password
/// kept apart (zeroized on drop, never printed) and the schemas to read.
#[derive(Clone)]
pub struct PgConn {
    url: String,
    config: Config,
    /// TLS as the URL's `sslmode` asks (`None`: `disable`).
    tls: Option<tls::PgTls>,
    /// `sslmode=allow`: connect without TLS, and with it only if the
    /// server refuses the connection without.
    allow: bool,
    password: Option<Arc<Zeroizing<String>>>,
    /// Schemas to read (empty: every non-system schema).
    pub schemas: Vec<String>,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("server", &self.server())
            .field("schemas", &self.schemas)
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Parses `url` (`postgres://USER@HOST:PORT/DB`). A password in the URL
    /// is taken but never shown; prefer [`with_password`](Self::with_password).
    pub fn parse(url: &str) -> Result<Self, PgError> {
        let bad = |why: String| PgError::BadUrl {
            url: redact_url(url),
            why,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        // tokio-postgres knows neither `sslrootcert` nor the verify modes:
        // it gets the URL without them, and TLS is set up here.
        let split = tls::split_url(&parsed).map_err(bad)?;
        let ssl = split.mode;
        let mut config: Config = split
            .driver
            .as_str()
            .parse()
            .map_err(|e| bad(format!("{e}")))?;
        config.ssl_mode(ssl.driver_mode());
        let password = config
            .get_password()
            .map(|p| Arc::new(Zeroizing::new(String::from_utf8_lossy(p).into_owned())));
        let mut clean = parsed;
        let _ = clean.set_password(None);
        let tls = match ssl {
            tls::SslMode::Disable => None,
            _ => Some(
                tls::PgTls::new(ssl, split.root.as_deref(), split.client.as_ref()).map_err(
                    |e| PgError::Tls {
                        server: format!("store url `{}`", redact_url(url)),
                        why: e.0,
                    },
                )?,
            ),
        };
        Ok(PgConn {
            url: clean.to_string(),
            config,
            tls,
            allow: ssl == tls::SslMode::Allow,
            password,
            schemas: Vec::new(),
        })
    }

    /// The connection of a policy's `[store]`: its URL, password from
    /// `password_file` (first line) or `password_env`, and `schemas`.
    pub fn from_store(store: &StoreConfig) -> Result<Self, PgError> {
        let url = store.url.as_deref().ok_or_else(|| PgError::BadUrl {
            url: String::new(),
            why: "[store] has no `url`".into(),
        })?;
        let mut c = PgConn::parse(url)?;
        if let Some(path) = &store.password_file {
            let text =
                Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| PgError::Password {
                        what: format!("password_file {}", path.display()),
                        why: format!("{e}; create it (mode 0600) or fix the path"),
                    })?,
                );
            let line = text.lines().next().unwrap_or("").to_string();
            c = c.with_password(Zeroizing::new(line));
        } else if let Some(var) = &store.password_env {
            let v = std::env::var(var).map_err(|_| PgError::Password {
                what: format!("password_env {var}"),
                why: "the environment variable is not set (or not UTF-8); set it for custos".into(),
            })?;
            c = c.with_password(Zeroizing::new(v));
        }
        c.schemas = store.schemas.clone();
        Ok(c)
    }

    /// The same connection with this password.
    pub fn with_password(mut self, password: Zeroizing<String>) -> Self {
        self.config.password(password.as_bytes());
        self.password = Some(Arc::new(password));
        self
    }

    /// The same server, role, password and schemas, connected to database
    /// `db` instead (drills use it for their scratch database).
    pub fn with_database(&self, db: &str) -> Result<PgConn, PgError> {
        let mut u = url::Url::parse(&self.url).map_err(|e| PgError::BadUrl {
            url: redact_url(&self.url),
            why: e.to_string(),
        })?;
        u.set_path(&format!("/{db}"));
        let mut c = self.clone();
        c.url = u.to_string();
        c.config.dbname(db);
        Ok(c)
    }

    /// Runs a statement that names objects only (no row values), such as
    /// `CREATE DATABASE`, mapping a failure to [`PgError::Query`].
    pub async fn execute_ddl(&self, client: &Client, what: &str, sql: &str) -> Result<(), PgError> {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| self.query_err(what, &e))
    }

    /// Whether a password is set.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The URL without a password (safe to show and to hand to libpq tools,
    /// with the password in `PGPASSWORD`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port/db` for messages.
    pub fn server(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres");
        format!("postgresql {host}:{port}/{db}")
    }

    fn user(&self) -> String {
        self.config.get_user().unwrap_or("(default)").to_string()
    }

    /// Environment for a libpq tool run against this connection.
    fn tool_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD".to_string(), p.as_str().to_string()));
        }
        env
    }

    /// Opens one connection (driven on the current runtime) with the
    /// session settings that fix the text output of values.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let mapped = |e: tokio_postgres::Error| {
            let code = e.code().map(|c| c.code().to_string());
            let why = error_text(&e);
            match code.as_deref() {
                _ if refused_without_tls(&e) => PgError::Tls {
                    server: self.server(),
                    why: "the server takes this connection only over TLS (pg_hba.conf), and sslmode=disable".into(),
                },
                // `cert` authentication, or `clientcert=` on the line.
                Some("28000") if why.contains("certificate") => PgError::Tls {
                    server: self.server(),
                    why: format!(
                        "the server wants a client certificate it accepts (pg_hba.conf), for user `{}`: set sslcert and sslkey in the URL ({why})",
                        self.user()
                    ),
                },
                Some("28P01") | Some("28000") => PgError::Auth {
                    server: self.server(),
                    user: self.user(),
                },
                _ if why.contains("channel binding") => PgError::Tls {
                    server: self.server(),
                    why: format!(
                        "the password exchange was not bound to the TLS session, which channel_binding=require asks ({why})"
                    ),
                },
                // Under TLS 1.3 the server judges a client certificate
                // after the client's side of the handshake is done: its
                // refusal arrives as an alert on the first read.
                _ if why.contains("received fatal alert") => PgError::Tls {
                    server: self.server(),
                    why: format!(
                        "the server ended the TLS session ({why}); if it asks for client certificates, it does not accept the one given (sslcert)"
                    ),
                },
                _ if why.contains(tls::HANDSHAKE_FAILED)
                    || why.contains("server does not support TLS") =>
                {
                    PgError::Tls {
                        server: self.server(),
                        why,
                    }
                }
                _ => PgError::Unreachable {
                    server: self.server(),
                    why,
                },
            }
        };
        let client = match &self.tls {
            None => driven(&self.config, NoTls).await,
            Some(t) if !self.allow => driven(&self.config, t.clone()).await,
            // `allow`, as libpq: without TLS first, and again with it if
            // the server takes this client only over TLS.
            Some(t) => match driven(&self.config, NoTls).await {
                Err(e) if refused_without_tls(&e) => {
                    let mut config = self.config.clone();
                    config.ssl_mode(tokio_postgres::config::SslMode::Require);
                    driven(&config, t.clone()).await
                }
                r => r,
            },
        }
        .map_err(mapped)?;
        client
            .batch_execute(
                "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; \
                 SET extra_float_digits = 3; SET bytea_output = 'hex'; \
                 SET statement_timeout = 0; SET lock_timeout = 0; \
                 SET idle_in_transaction_session_timeout = 0",
            )
            .await
            .map_err(|e| self.query_err("setting up the session", &e))?;
        Ok(client)
    }

    /// An error of a statement that moves rows: the server's message can
    /// quote a row value, so only its code and the names it gives
    /// (table, column, constraint) are kept.
    pub(crate) fn data_err(&self, what: &str, e: &tokio_postgres::Error) -> PgError {
        let why = match e.as_db_error() {
            Some(db) => {
                let mut s = format!("server error {}", db.code().code());
                for (k, v) in [
                    ("table", db.table()),
                    ("column", db.column()),
                    ("constraint", db.constraint()),
                ] {
                    if let Some(v) = v {
                        s.push_str(&format!(", {k} {v}"));
                    }
                }
                s.push_str(" (the server's message is not shown: it may quote row values; see the server log)");
                s
            }
            None => error_text(e),
        };
        PgError::Query {
            server: self.server(),
            what: what.to_string(),
            why,
        }
    }

    pub(crate) fn query_err(&self, what: &str, e: &tokio_postgres::Error) -> PgError {
        PgError::Query {
            server: self.server(),
            what: what.to_string(),
            why: error_text(e),
        }
    }
}

/// A URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable url)".into(),
    }
}

/// The message of a driver error, with the server's own message when it
/// sent one (those name objects, not row values, for the statements used).
/// Connects with `tls` and drives the connection on the current runtime
/// (the two `tls` kinds give two connection types, hence generic).
async fn driven<T>(config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, conn) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Whether the server refused a connection for want of TLS (pg_hba.conf
/// has only `hostssl` lines for this client).
fn refused_without_tls(e: &tokio_postgres::Error) -> bool {
    e.code().map(|c| c.code()) == Some("28000") && error_text(e).contains("no encryption")
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How the subject or period value of a column is turned into group
/// coordinates, by the column's (base) type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    /// int2/int4/int8/oid: decimal text, as SQLite's INTEGER.
    Integer,
    /// float4/float8: as SQLite's REAL.
    Real,
    /// bytea: bytes, as SQLite's BLOB.
    Bytes,
    /// Everything else: the text output, as SQLite's TEXT.
    Text,
}

impl ValueKind {
    fn of(base_type: &str) -> Self {
        match base_type {
            "int2" | "int4" | "int8" | "oid" => ValueKind::Integer,
            "float4" | "float8" => ValueKind::Real,
            "bytea" => ValueKind::Bytes,
            _ => ValueKind::Text,
        }
    }
}

/// Parses a bytea hex text output (`\x0a0b`).
fn bytea_bytes(text: &[u8]) -> Option<Vec<u8>> {
    hex::decode(text.strip_prefix(b"\\x")?).ok()
}

/// The group coordinates of one row from the text of its subject and
/// period values (`None` for NULL), with the same canonical forms as
/// SQLite: integers in decimal, reals in shortest round-trip decimal, bytea
/// as `hex:` + hex, anything else as its text; periods from date,
/// timestamp and timestamptz (text output in ISO style, UTC), integers
/// (unix seconds) or ISO 8601 text.
fn coords(
    subject: Option<(&[u8], ValueKind)>,
    period: Option<(&[u8], ValueKind, crate::store::Every)>,
) -> GroupCoords {
    let subject = subject.and_then(|(t, k)| match k {
        ValueKind::Integer => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map(|i| i.to_string())
            .or_else(|| subject_text(ValueRef::Text(t))),
        ValueKind::Real => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(|r| subject_text(ValueRef::Real(r))),
        ValueKind::Bytes => match bytea_bytes(t) {
            Some(b) => subject_text(ValueRef::Blob(&b)),
            None => subject_text(ValueRef::Text(t)),
        },
        ValueKind::Text => subject_text(ValueRef::Text(t)),
    });
    let bucket = period.and_then(|(t, k, every)| match k {
        ValueKind::Integer => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|i| bucket_label(ValueRef::Integer(i), every)),
        ValueKind::Real => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(|r| bucket_label(ValueRef::Real(r), every)),
        ValueKind::Bytes => None,
        ValueKind::Text => bucket_label(ValueRef::Text(t), every),
    });
    GroupCoords { subject, bucket }
}

/// [`coords`] of the rows of one stream: the period's label is kept while
/// the rows' times stay in its span, as the SQLite reader keeps it.
#[derive(Default)]
struct RowCoords {
    bucket: BucketCache,
    /// The label the cache last set.
    label: Option<String>,
}

impl RowCoords {
    fn of(
        &mut self,
        subject: Option<(&[u8], ValueKind)>,
        period: Option<(&[u8], ValueKind, crate::store::Every)>,
    ) -> GroupCoords {
        let mut c = coords(subject, None);
        c.bucket = period.and_then(|(t, k, every)| {
            let v = match k {
                ValueKind::Integer => std::str::from_utf8(t)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(ValueRef::Integer)?,
                ValueKind::Real => std::str::from_utf8(t)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .map(ValueRef::Real)?,
                ValueKind::Bytes => return None,
                ValueKind::Text => ValueRef::Text(t),
            };
            self.bucket.update(&mut self.label, v, every);
            self.label.clone()
        });
        c
    }
}

/// The canonical subject text of a value (its text output) of a column of
/// base type `base_type`, as the backup groups it; `None` for none.
pub fn subject_of(text: &[u8], base_type: &str) -> Option<String> {
    coords(Some((text, ValueKind::of(base_type))), None).subject
}

/// The period label of a value (its text output) of a column of base type
/// `base_type` for buckets of `every`, as the backup groups it.
pub fn period_label_of(text: &[u8], base_type: &str, every: crate::store::Every) -> Option<String> {
    coords(None, Some((text, ValueKind::of(base_type), every))).bucket
}

/// The time (UTC) of a value (its text output) of a column of base type
/// `base_type`, read as the SQLite store reads a time: integers and reals
/// as unix seconds, anything else as ISO 8601 text.
pub fn time_of(text: &[u8], base_type: &str) -> Option<chrono::NaiveDateTime> {
    use crate::store::sqlite::time_value;
    match ValueKind::of(base_type) {
        ValueKind::Integer => time_value(ValueRef::Integer(
            std::str::from_utf8(text).ok()?.parse().ok()?,
        )),
        ValueKind::Real => time_value(ValueRef::Real(
            std::str::from_utf8(text).ok()?.parse().ok()?,
        )),
        ValueKind::Bytes => None,
        ValueKind::Text => time_value(ValueRef::Text(text)),
    }
}

/// One table as it will be read: which columns, and where the subject and
/// period columns are.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    /// The table (with its columns).
    pub table: PgTable,
    subject: Option<(usize, ValueKind)>,
    period: Option<(usize, ValueKind, crate::store::Every)>,
}

/// A batch of rows of one table: each row's group coordinates and its
/// canonical encoding.
pub type RowBatch = Vec<(GroupCoords, Vec<u8>)>;

/// Blocks (8 KiB by default) above which a table is read in parts over
/// several connections: 64 MiB.
pub const PART_BLOCKS: u64 = 8192;

/// A part of a table: its first block and the block it stops before
/// (`None`: the end of the table).
type BlockRange = (u64, Option<u64>);

/// The rows of one table, arriving from one or more parts read in
/// parallel; yields batches in physical order, then `None`.
#[derive(Debug)]
pub struct TableRows {
    parts: std::collections::VecDeque<mpsc::Receiver<Result<RowBatch, PgError>>>,
}

impl TableRows {
    /// How many parts the table is read in.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The next batch, waiting for it (from a thread outside the runtime).
    pub fn blocking_next(&mut self) -> Option<Result<RowBatch, PgError>> {
        loop {
            let rx = self.parts.front_mut()?;
            match rx.blocking_recv() {
                Some(b) => return Some(b),
                None => {
                    self.parts.pop_front();
                }
            }
        }
    }

    /// The next batch, waiting for it.
    pub async fn next(&mut self) -> Option<Result<RowBatch, PgError>> {
        loop {
            let rx = self.parts.front_mut()?;
            match rx.recv().await {
                Some(b) => return Some(b),
                None => {
                    self.parts.pop_front();
                }
            }
        }
    }
}

/// Bytes of encoded rows per batch sent from a COPY reader.
const BATCH_BYTES: usize = 256 << 10;
/// Batches buffered per table (so at most `parallel * 8 * 256 KiB` of rows
/// wait in memory).
const BATCH_QUEUE: usize = 8;

/// A consistent read of one database: an open REPEATABLE READ transaction
/// whose snapshot is exported for the other connections and `pg_dump`.
pub struct PgSource {
    conn: PgConn,
    client: Client,
    snapshot: String,
    tables: Vec<PgTable>,
    sequences: Vec<PgSequence>,
    server_version: String,
}

impl fmt::Debug for PgSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSource")
            .field("server", &self.conn.server())
            .field("tables", &self.tables.len())
            .finish_non_exhaustive()
    }
}

impl PgSource {
    /// Connects, opens the snapshot transaction, exports the snapshot and
    /// reads the catalog (tables with their columns, sequences). Fails
    /// before any data moves on bad credentials or an unreachable server.
    pub async fn open(conn: &PgConn) -> Result<Self, PgError> {
        let client = conn.connect().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| conn.query_err("starting the snapshot transaction", &e))?;
        let snapshot: String = client
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await
            .map_err(|e| conn.query_err("exporting the snapshot", &e))?
            .get(0);
        let server_version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| conn.query_err("reading the server version", &e))?
            .get(0);
        let (tables, sequences) = catalog::read(&client, conn).await?;
        Ok(PgSource {
            conn: conn.clone(),
            client,
            snapshot,
            tables,
            sequences,
            server_version,
        })
    }

    /// The tables read: ordinary tables and partitions of the schemas that
    /// belong to no extension, in (schema, name) order, then the
    /// extensions' configuration tables (see [`catalog::read`]).
    pub fn tables(&self) -> &[PgTable] {
        &self.tables
    }

    /// `SHOW server_version` of the source.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The exported snapshot id.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot
    }

    /// Checks a policy's table plan against the catalog: the table exists
    /// and has the subject and period columns, of a usable type.
    pub fn check_plan(&self, plan: &TablePlan) -> Result<ReadPlan, PgError> {
        let server = self.conn.server();
        let table = self
            .tables
            .iter()
            .find(|t| t.matches(&plan.name))
            .ok_or_else(|| PgError::MissingTable {
                server: server.clone(),
                table: plan.name.clone(),
                schemas: if self.conn.schemas.is_empty() {
                    "all user schemas".into()
                } else {
                    self.conn.schemas.join(", ")
                },
            })?;
        let find = |col: &str, role: &'static str| {
            table
                .columns
                .iter()
                .position(|c| c.name == col)
                .ok_or_else(|| PgError::MissingColumn {
                    server: server.clone(),
                    table: table.display_name(),
                    column: col.to_string(),
                    role,
                })
        };
        let subject = match &plan.subject {
            Some(s) => {
                let i = find(s, "subject")?;
                Some((i, ValueKind::of(&table.columns[i].base_type)))
            }
            None => None,
        };
        let period = match &plan.period {
            Some((col, every)) => {
                let i = find(col, "period")?;
                let c = &table.columns[i];
                let kind = ValueKind::of(&c.base_type);
                let timeish = matches!(
                    c.base_type.as_str(),
                    "date" | "timestamp" | "timestamptz" | "text" | "varchar" | "bpchar"
                ) || kind == ValueKind::Integer
                    || kind == ValueKind::Real;
                if !timeish {
                    return Err(PgError::PeriodType {
                        server: server.clone(),
                        table: table.display_name(),
                        column: col.clone(),
                        ty: c.type_name.clone(),
                    });
                }
                Some((i, kind, *every))
            }
            None => None,
        };
        Ok(ReadPlan {
            table: table.clone(),
            subject,
            period,
        })
    }

    /// How many large objects the database holds (they belong to the
    /// database, not to a schema), as of the snapshot.
    pub async fn large_objects(&self) -> Result<i64, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
                &[],
            )
            .await
            .map_err(|e| self.conn.query_err("counting the large objects", &e))?;
        Ok(row.get(0))
    }

    /// The extension configuration tables read (`pg_extension.extconfig`,
    /// marked by `pg_extension_config_dump`) that hold rows `pg_dump`
    /// would dump (those the extension's condition selects), as of the
    /// snapshot: `(extension, schema.table, rows)`.
    pub async fn extension_config(&self) -> Result<Vec<(String, String, i64)>, PgError> {
        let mut out = Vec::new();
        for t in &self.tables {
            let Some(cfg) = &t.config else { continue };
            // The condition is the extension's own WHERE clause, applied
            // as pg_dump applies it.
            let n: i64 = self
                .client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM ONLY {} {}",
                        t.qualified(),
                        cfg.condition
                    ),
                    &[],
                )
                .await
                .map_err(|e| {
                    self.conn
                        .query_err("counting extension configuration rows", &e)
                })?
                .get(0);
            if n > 0 {
                out.push((cfg.extension.clone(), format!("{}.{}", t.schema, t.name), n));
            }
        }
        Ok(out)
    }

    /// Leaves the extensions' configuration tables and sequences out of
    /// what is read and of the snapshot's schema.
    pub fn leave_out_extension_config(&mut self) {
        self.tables.retain(|t| t.config.is_none());
        self.sequences.retain(|s| s.extension.is_none());
    }

    /// Takes ACCESS SHARE locks on the tables (as `pg_dump` does), so no
    /// table read can be dropped or rewritten until the read ends.
    pub async fn lock(&self) -> Result<(), PgError> {
        if self.tables.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self.tables.iter().map(|t| t.qualified()).collect();
        let sql = format!("LOCK TABLE {} IN ACCESS SHARE MODE", list.join(", "));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.conn.query_err("locking the tables", &e))
    }

    /// The schema of this snapshot: `pg_dump`'s pre-data and post-data
    /// sections taken on the exported snapshot, the tables with their
    /// columns, and the sequences with their current values.
    pub async fn schema(&self, tools: &PgTools) -> Result<PgSchema, PgError> {
        let env = self.conn.tool_env();
        // Large objects' contents are never backed up, so their definitions
        // (`lo_create`, owners, grants) are left out too: a restore must not
        // create them empty.
        let mut args = vec![
            format!("--snapshot={}", self.snapshot),
            "--no-blobs".to_string(),
        ];
        for s in &self.conn.schemas {
            args.push(format!("--schema={s}"));
        }
        let pre = tools
            .pg_dump(self.conn.url(), "pre-data", &args, &env)
            .await?;
        let post = tools
            .pg_dump(self.conn.url(), "post-data", &args, &env)
            .await?;
        let mut sequences = self.sequences.clone();
        for s in &mut sequences {
            let row = self
                .client
                .query_one(
                    &format!("SELECT last_value, is_called FROM {}", s.qualified()),
                    &[],
                )
                .await
                .map_err(|e| {
                    self.conn
                        .query_err(&format!("reading sequence {}", s.qualified()), &e)
                })?;
            s.last_value = row.get(0);
            s.is_called = row.get(1);
        }
        Ok(PgSchema {
            server_version: self.server_version.clone(),
            pg_dump_version: tools.dump_version().to_string(),
            pre_data: pre,
            post_data: post,
            tables: self.tables.clone(),
            sequences,
        })
    }

    /// Streams the rows of `plans`' tables over `parallel` connections that
    /// share this snapshot, tables larger than [`PART_BLOCKS`] split into
    /// block ranges read in parallel. See [`stream_with`](Self::stream_with).
    pub async fn stream(
        &self,
        plans: Vec<ReadPlan>,
        parallel: usize,
    ) -> Result<Vec<TableRows>, PgError> {
        self.stream_with(plans, parallel, PART_BLOCKS).await
    }

    /// Streams the rows of `plans`' tables over `parallel` connections that
    /// share this snapshot. A table of more than `part_blocks` blocks is
    /// read as ranges of `part_blocks` blocks (`ctid` ranges), each by the
    /// next free connection. Returns one [`TableRows`] per plan, in order;
    /// its rows come in physical order, as one scan would give them. Parts
    /// are started in order, so consuming the tables in order never waits
    /// on a part that no connection is reading; memory is bounded by
    /// `parallel` queues of a few batches.
    pub async fn stream_with(
        &self,
        plans: Vec<ReadPlan>,
        parallel: usize,
        part_blocks: u64,
    ) -> Result<Vec<TableRows>, PgError> {
        let part_blocks = part_blocks.max(1);
        let mut work: Vec<(usize, Option<BlockRange>)> = Vec::new();
        let mut tables = Vec::with_capacity(plans.len());
        let mut senders = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let blocks: i64 = self
                .client
                .query_one(
                    "SELECT pg_catalog.pg_relation_size($1::text::regclass) \
                     / pg_catalog.current_setting('block_size')::int8",
                    &[&plan.table.qualified()],
                )
                .await
                .map_err(|e| self.conn.query_err("measuring tables", &e))?
                .get(0);
            let blocks = blocks.max(0) as u64;
            let mut parts = std::collections::VecDeque::new();
            let mut push = |range| {
                let (tx, rx) = mpsc::channel(BATCH_QUEUE);
                senders.push(Mutex::new(Some(tx)));
                work.push((i, range));
                parts.push_back(rx);
            };
            if blocks <= part_blocks || plan.table.config.is_some() {
                push(None);
            } else {
                let mut start = 0;
                while start < blocks {
                    let end = start + part_blocks;
                    // The last range is open: it ends where the table does.
                    push(Some((start, (end < blocks).then_some(end))));
                    start = end;
                }
            }
            tables.push(TableRows { parts });
        }
        let shared = Arc::new((plans, work, senders, AtomicUsize::new(0)));
        let n = parallel.max(1).min(shared.1.len().max(1));
        // Join the snapshot on every connection before returning, so the
        // exporting transaction may end any time after.
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let c = self.conn.connect().await?;
            c.batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&self.snapshot)
            ))
            .await
            .map_err(|e| self.conn.query_err("joining the exported snapshot", &e))?;
            clients.push(c);
        }
        for client in clients {
            let shared = shared.clone();
            let conn = self.conn.clone();
            tokio::spawn(async move {
                let (plans, work, senders, next) = &*shared;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= work.len() {
                        break;
                    }
                    let Some(tx) = senders[i].lock().unwrap().take() else {
                        continue;
                    };
                    let (p, range) = work[i];
                    if let Err(e) = copy_table(&client, &conn, &plans[p], range, &tx).await {
                        let _ = tx.send(Err(e)).await;
                    }
                }
                let _ = client.batch_execute("COMMIT").await;
            });
        }
        Ok(tables)
    }

    /// Ends the snapshot transaction.
    pub async fn close(self) -> Result<(), PgError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.conn.query_err("ending the snapshot transaction", &e))
    }
}

/// Reads one table with COPY TO STDOUT (text format) and sends its rows in
/// batches. Stops quietly when the receiver is gone.
async fn copy_table(
    client: &Client,
    conn: &PgConn,
    plan: &ReadPlan,
    range: Option<BlockRange>,
    tx: &mpsc::Sender<Result<RowBatch, PgError>>,
) -> Result<(), PgError> {
    let t = &plan.table;
    let sql = match (range, &t.config) {
        // An extension's configuration table: the rows its condition
        // selects, as pg_dump reads them (never split: such tables are
        // settings, and a range would not combine with the condition).
        (_, Some(cfg)) => format!(
            "COPY (SELECT {} FROM ONLY {} {}) TO STDOUT",
            t.column_list(),
            t.qualified(),
            cfg.condition
        ),
        (None, None) => format!("COPY {} ({}) TO STDOUT", t.qualified(), t.column_list()),
        (Some((start, end)), None) => {
            let mut q = format!(
                "COPY (SELECT {} FROM ONLY {} WHERE ctid >= '({start},0)'::tid",
                t.column_list(),
                t.qualified()
            );
            if let Some(end) = end {
                q.push_str(&format!(" AND ctid < '({end},0)'::tid"));
            }
            q.push_str(") TO STDOUT");
            q
        }
    };
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| conn.data_err(&format!("reading table {}", t.display_name()), &e))?;
    futures::pin_mut!(stream);
    let ncols = t.columns.len();
    let mut pending: Vec<u8> = Vec::new();
    let mut batch: RowBatch = Vec::new();
    let mut batch_bytes = 0usize;
    // Each column's value of the current row, its buffer reused from row
    // to row, and whether it is NULL.
    let mut fields: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), false); ncols];
    let mut row_coords = RowCoords::default();
    let bad = |why: &str| PgError::Rows {
        table: t.display_name(),
        why: why.to_string(),
    };
    let mut handle_line =
        |line: &[u8], batch: &mut RowBatch, batch_bytes: &mut usize| -> Result<(), PgError> {
            let mut n = 0;
            for f in line.split(|b| *b == b'\t') {
                let Some((buf, present)) = fields.get_mut(n) else {
                    return Err(bad("COPY returned a row with the wrong number of columns"));
                };
                *present = decode_copy_field_into(f, buf).map_err(&bad)?;
                n += 1;
            }
            if n != ncols {
                return Err(bad("COPY returned a row with the wrong number of columns"));
            }
            let field = |i: usize| {
                let (buf, present) = &fields[i];
                present.then_some(buf.as_slice())
            };
            let row: Vec<ValueRef<'_>> = (0..ncols)
                .map(|i| field(i).map_or(ValueRef::Null, ValueRef::Text))
                .collect();
            let mut out = Vec::with_capacity(line.len() + 2 * ncols + 4);
            encode_row(None, &row, &mut out);
            let c = row_coords.of(
                plan.subject.and_then(|(i, k)| field(i).map(|v| (v, k))),
                plan.period
                    .and_then(|(i, k, e)| field(i).map(|v| (v, k, e))),
            );
            *batch_bytes += out.len();
            batch.push((c, out));
            Ok(())
        };
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| conn.data_err(&format!("reading table {}", t.display_name()), &e))?;
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(pos) = memchr::memchr(b'\n', &pending[start..]) {
            handle_line(&pending[start..start + pos], &mut batch, &mut batch_bytes)?;
            start += pos + 1;
        }
        pending.drain(..start);
        if batch_bytes >= BATCH_BYTES {
            if tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                return Ok(());
            }
            batch_bytes = 0;
        }
    }
    if !pending.is_empty() {
        return Err(bad("COPY output ended inside a row"));
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch)).await;
    }
    Ok(())
}

/// Where `--to` points for a PostgreSQL snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgRestoreTo {
    /// A database URL (`postgres://` or `postgresql://`).
    Database(String),
    /// A plain SQL script to write.
    Script(PathBuf),
}

impl PgRestoreTo {
    /// `postgres://...` is a database; anything else a file path.
    pub fn parse(to: &Path) -> Self {
        let s = to.to_string_lossy();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            PgRestoreTo::Database(s.into_owned())
        } else {
            PgRestoreTo::Script(to.to_path_buf())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Every;

    #[test]
    fn coords_match_sqlite_rules() {
        let c = coords(
            Some((b"0042", ValueKind::Integer)),
            Some((b"2026-03-14 10:00:00+00", ValueKind::Text, Every::Month)),
        );
        assert_eq!(c.subject.as_deref(), Some("42"));
        assert_eq!(c.bucket.as_deref(), Some("2026-03"));
        let c = coords(
            Some((b"1", ValueKind::Real)),
            Some((b"2026-03-31 23:30:00-02", ValueKind::Text, Every::Day)),
        );
        assert_eq!(c.subject.as_deref(), Some("1.0"));
        assert_eq!(c.bucket.as_deref(), Some("2026-04-01"));
        let c = coords(
            Some((b"\\x0aff", ValueKind::Bytes)),
            Some((b"0044-03-15 BC", ValueKind::Text, Every::Year)),
        );
        assert_eq!(c.subject.as_deref(), Some("hex:0aff"));
        assert_eq!(c.bucket, None);
        let c = coords(
            Some((b"MSISDN 1", ValueKind::Text)),
            Some((b"1773446400", ValueKind::Integer, Every::Day)),
        );
        assert_eq!(c.subject.as_deref(), Some("MSISDN 1"));
        assert_eq!(c.bucket.as_deref(), Some("2026-03-14"));
        assert_eq!(coords(None, None), GroupCoords::default());
    }

    #[test]
    fn a_streams_coords_are_each_rows_own() {
        // Times of every kind a column can have, in and out of one span,
        // with offsets that move the UTC day, NULLs and unreadable values
        // between them.
        let rows: &[(Option<&[u8]>, ValueKind)] = &[
            (Some(b"2026-03-31 10:00:00+00"), ValueKind::Text),
            (Some(b"2026-03-31 23:59:59.5+00"), ValueKind::Text),
            (Some(b"2026-03-31 22:30:00-02"), ValueKind::Text),
            (None, ValueKind::Text),
            (Some(b"2026-03-31 12:00:00+00"), ValueKind::Text),
            (Some(b"1774915199"), ValueKind::Integer),
            (Some(b"1774915200"), ValueKind::Integer),
            (Some(b"not a number"), ValueKind::Integer),
            (Some(b"2026-04-01"), ValueKind::Text),
            (Some(b"1774915199.75"), ValueKind::Real),
            (Some(b"\\x00"), ValueKind::Bytes),
            (Some(b"2026-03-31"), ValueKind::Text),
            (Some(b"0044-03-15 BC"), ValueKind::Text),
            (Some(b"2026-03-31 01:00:00+00"), ValueKind::Text),
        ];
        for every in [Every::Day, Every::Month, Every::Year] {
            let mut stream = RowCoords::default();
            for (i, (v, k)) in rows.iter().enumerate() {
                let subject = v.map(|v| (v, ValueKind::Text));
                let period = v.map(|v| (v, *k, every));
                assert_eq!(
                    stream.of(subject, period),
                    coords(subject, period),
                    "row {i} {every:?}"
                );
            }
        }
    }

    #[test]
    fn url_password_is_kept_apart() {
        let c = PgConn::parse("postgres://u:secret@127.0.0.1:5999/db").unwrap();
        assert!(c.has_password());
        assert!(!c.url().contains("secret"));
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(c.server(), "postgresql 127.0.0.1:5999/db");
        assert!(redact_url("postgres://u:secret@h/db").contains("***"));
    }

    #[test]
    fn restore_to_is_parsed() {
        assert_eq!(
            PgRestoreTo::parse(Path::new("postgres://h/db")),
            PgRestoreTo::Database("postgres://h/db".into())
        );
        assert_eq!(
            PgRestoreTo::parse(Path::new("out.sql")),
            PgRestoreTo::Script("out.sql".into())
        );
    }
}
