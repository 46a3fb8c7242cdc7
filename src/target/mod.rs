//! Targets: the object stores custos writes repositories to.
//!
//! A target is named by a URL and opened with [`open_url`]:
//!
//! | URL | store |
//! |---|---|
//! | `file:///abs/path` | a local directory (`LocalFileSystem` rooted there; objects of 1 MiB or more written around the page cache, see the `local` module) |
//! | `memory://NAME[/prefix]` | a process-wide in-memory store shared by every opener of `NAME` |
//! | `s3://bucket[/prefix]` | S3 or an S3-compatible service (path-style requests) |
//!
//! `gs://` and `az://` are recognised and refused with "not supported yet".
//!
//! [`Target`] wraps an opened store with the handful of operations the rest
//! of custos needs ([`Target::get`], [`Target::put_new`], [`Target::list`], ...).
//! Every error it returns names the target, the object path and the
//! operation ([`TargetError`]).
//!
//! # Error policy
//! Errors are either *transient* (connection failures, timeouts, HTTP 5xx,
//! throttling) or *permanent* (not found, already exists, precondition
//! failed, access denied, invalid path, unsupported operation). The
//! [`Target`] helpers retry transient errors with capped exponential backoff
//! ([`RETRY_ATTEMPTS`] attempts in all), on top of `object_store`'s own
//! per-request retries for HTTP stores; permanent errors are returned at
//! once. A target that stays unreachable yields one
//! [`TargetError::Unreachable`] naming the target, its URL and what was tried.
//!
//! # Credentials
//! S3 credentials come from the standard `AWS_*` environment (or
//! [`S3Credentials`] given to [`open_url_with`]); they are never part of a
//! URL custos prints, of an error, or of a log line. Error texts coming from
//! the object store are scrubbed of every secret this process handed to an
//! S3 client, and URLs are shown without user info or query.

mod local;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use zeroize::Zeroizing;

/// How many times the [`Target`] helpers try an operation that fails with a
/// transient error (the first try included).
pub const RETRY_ATTEMPTS: u32 = 4;
/// The pause before the first retry of a transient failure; it doubles on
/// each further retry, up to [`RETRY_MAX_BACKOFF`].
pub const RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two tries.
pub const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// object_store's own per-request retries for S3 when
/// [`S3Settings::max_retries`] is not set.
pub const DEFAULT_S3_MAX_RETRIES: usize = 3;

/// S3 settings; each field overrides the AWS_* environment
/// (AWS_ENDPOINT_URL, AWS_REGION/AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ALLOW_HTTP).
///
/// Credentials are deliberately not part of this type (it is read from
/// policy files and may be printed); they come from the environment or from
/// [`S3Credentials`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The service endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://127.0.0.1:9000` (overrides `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The region (overrides `AWS_REGION` / `AWS_DEFAULT_REGION`; default `us-east-1`).
    pub region: Option<String>,
    /// Permit plain HTTP endpoints (overrides `AWS_ALLOW_HTTP`).
    pub allow_http: Option<bool>,
    /// object_store's per-request retries (default [`DEFAULT_S3_MAX_RETRIES`]).
    pub max_retries: Option<usize>,
}

/// Explicit S3 credentials, used instead of the environment's. `Debug` is
/// redacted and the secret parts are zeroized on drop.
#[derive(Clone)]
pub struct S3Credentials {
    /// The access key id (not secret, but not printed either).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// An optional session token.
    pub session_token: Option<Zeroizing<String>>,
}

impl S3Credentials {
    /// Credentials from an access key id and a secret.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: None,
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials(<redacted>)")
    }
}

/// Errors of targets. Messages say what failed, where (target, URL or
/// object path, operation) and what to do; they never contain credentials,
/// key bytes or object contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The target URL cannot be parsed or lacks a part.
    #[error("target URL '{url}' is not valid: {reason}; expected file:///abs/path, s3://bucket/prefix or memory://name")]
    InvalidUrl { url: String, reason: String },
    /// A scheme custos recognises but does not implement yet.
    #[error("target URL '{url}': the {scheme}:// scheme is not supported yet; use file://, s3:// or memory://")]
    UnsupportedScheme { url: String, scheme: String },
    /// A `file://` target whose directory does not exist (and `create` was not asked).
    #[error("target directory '{path}' does not exist; create it or initialise the target first")]
    MissingDirectory { path: String },
    /// A `file://` target directory that cannot be created or used.
    #[error("target directory '{path}' cannot be used: {reason}")]
    Directory { path: String, reason: String },
    /// The object store client could not be configured.
    #[error("target URL '{url}' cannot be opened: {reason}")]
    Config { url: String, reason: String },
    /// An object path that the store cannot represent.
    #[error("target '{target}': {op} of '{path}': invalid object path: {reason}")]
    InvalidPath {
        target: String,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// The object does not exist.
    #[error("target '{target}': {op} of '{path}': object not found")]
    NotFound {
        target: String,
        op: &'static str,
        path: String,
    },
    /// The object exists already (a create-only write lost).
    #[error("target '{target}': {op} of '{path}': object already exists")]
    AlreadyExists {
        target: String,
        op: &'static str,
        path: String,
    },
    /// A conditional operation's precondition failed (the object changed).
    #[error("target '{target}': {op} of '{path}': precondition failed (the object changed concurrently); re-read it and try again")]
    Precondition {
        target: String,
        op: &'static str,
        path: String,
    },
    /// The store refused the credentials or the permission.
    #[error("target '{target}': {op} of '{path}' was refused ({detail}); check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's permissions")]
    Denied {
        target: String,
        op: &'static str,
        path: String,
        detail: String,
    },
    /// The store does not implement an operation.
    #[error("target '{target}': {op} of '{path}' is not supported by this store: {detail}")]
    NotSupported {
        target: String,
        op: &'static str,
        path: String,
        detail: String,
    },
    /// A failure that may go away when retried (network, timeout, 5xx).
    #[error("target '{target}': {op} of '{path}' failed with a transient error: {detail}")]
    Transient {
        target: String,
        op: &'static str,
        path: String,
        detail: String,
    },
    /// Any other permanent failure.
    #[error("target '{target}': {op} of '{path}' failed: {detail}")]
    Other {
        target: String,
        op: &'static str,
        path: String,
        detail: String,
    },
    /// Transient failures persisted through every retry.
    #[error("target '{target}' ({url}) is unreachable: {op} of '{path}' failed {attempts} times with transient errors (exponential backoff from {initial_backoff_ms} ms, on top of the client's own retries); last error: {detail}. Check the endpoint, the network and that the service is up")]
    Unreachable {
        target: String,
        url: String,
        op: &'static str,
        path: String,
        attempts: u32,
        initial_backoff_ms: u64,
        detail: String,
    },
}

impl TargetError {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TargetError::Transient { .. } | TargetError::Unreachable { .. }
        )
    }

    /// Whether the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TargetError::NotFound { .. })
    }
}

/// Opens an object store from a URL with settings from `s3` and the
/// environment; see [`open_url_with`].
pub fn open_url(
    url: &str,
    s3: &S3Settings,
    create: bool,
) -> Result<Arc<dyn ObjectStore>, TargetError> {
    open_url_with(url, s3, None, create)
}

/// Opens an object store from a URL:
///
/// * `file:///abs/path`: a `LocalFileSystem` rooted at that directory;
///   `create` makes the directory (and its parents), otherwise a missing
///   directory is an error naming it.
/// * `memory://NAME[/prefix]`: a process-wide registry: the same `NAME`
///   gives the same in-memory store, so tests and the parts of one process
///   can share it.
/// * `s3://bucket[/prefix]`: S3 with path-style requests, the `AWS_*`
///   environment overridden by `s3` (and `credentials` if given),
///   conditional put by ETag, a bounded retry configuration, and the prefix
///   applied with a `PrefixStore`. No request is made here (the bucket is
///   never created; `create` has no effect).
/// * `gs://`, `az://` (and their aliases): "not supported yet".
pub fn open_url_with(
    url: &str,
    s3: &S3Settings,
    credentials: Option<&S3Credentials>,
    create: bool,
) -> Result<Arc<dyn ObjectStore>, TargetError> {
    let shown = redact_url(url);
    let parsed = url::Url::parse(url).map_err(|e| TargetError::InvalidUrl {
        url: shown.clone(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "file" => open_file(&parsed, &shown, create),
        "memory" => open_memory(&parsed, &shown),
        "s3" | "s3a" => open_s3(&parsed, &shown, s3, credentials),
        scheme @ ("gs" | "gcs" | "az" | "azure" | "abfs" | "abfss" | "adl") => {
            Err(TargetError::UnsupportedScheme {
                url: shown,
                scheme: scheme.to_string(),
            })
        }
        other => Err(TargetError::InvalidUrl {
            url: shown,
            reason: format!("unknown scheme '{other}'"),
        }),
    }
}

fn open_file(
    parsed: &url::Url,
    shown: &str,
    create: bool,
) -> Result<Arc<dyn ObjectStore>, TargetError> {
    if parsed
        .host_str()
        .is_some_and(|h| !h.is_empty() && h != "localhost")
    {
        return Err(TargetError::InvalidUrl {
            url: shown.to_string(),
            reason: "a file:// URL must name an absolute local path (file:///abs/path)".into(),
        });
    }
    let dir = parsed
        .to_file_path()
        .map_err(|()| TargetError::InvalidUrl {
            url: shown.to_string(),
            reason: "a file:// URL must name an absolute local path (file:///abs/path)".into(),
        })?;
    let display = dir.display().to_string();
    if !dir.exists() {
        if !create {
            return Err(TargetError::MissingDirectory { path: display });
        }
        std::fs::create_dir_all(&dir).map_err(|e| TargetError::Directory {
            path: display.clone(),
            reason: e.to_string(),
        })?;
    }
    if !dir.is_dir() {
        return Err(TargetError::Directory {
            path: display,
            reason: "it is not a directory".into(),
        });
    }
    let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| TargetError::Directory {
        path: display,
        reason: e.to_string(),
    })?;
    Ok(Arc::new(local::LocalStore::new(fs)))
}

fn memory_registry() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Puts `store` in the process-wide `memory://` registry under `name`, so
/// that `memory://NAME` URLs open it. This is how tests put a wrapper (for
/// fault injection) in front of a store; it replaces any store of that name.
pub fn register_memory(name: &str, store: Arc<dyn ObjectStore>) {
    memory_registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(name.to_string(), store);
}

fn open_memory(parsed: &url::Url, shown: &str) -> Result<Arc<dyn ObjectStore>, TargetError> {
    let name = parsed.host_str().unwrap_or("").to_string();
    if name.is_empty() {
        return Err(TargetError::InvalidUrl {
            url: shown.to_string(),
            reason: "a memory:// URL needs a name (memory://NAME)".into(),
        });
    }
    let store = {
        let mut reg = memory_registry()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            reg.entry(name)
                .or_insert_with(|| Arc::new(InMemory::new()) as Arc<dyn ObjectStore>),
        )
    };
    with_prefix(Arc::new(store), parsed.path(), shown)
}

fn with_prefix<T: ObjectStore>(
    store: Arc<T>,
    url_path: &str,
    shown: &str,
) -> Result<Arc<dyn ObjectStore>, TargetError> {
    let trimmed = url_path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(store);
    }
    let decoded = percent_decode(trimmed);
    let prefix = Path::parse(&decoded).map_err(|e| TargetError::InvalidUrl {
        url: shown.to_string(),
        reason: format!("invalid prefix: {e}"),
    })?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = [bytes[i + 1], bytes[i + 2]];
            let hex = std::str::from_utf8(&hex).unwrap_or("00");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn open_s3(
    parsed: &url::Url,
    shown: &str,
    s3: &S3Settings,
    credentials: Option<&S3Credentials>,
) -> Result<Arc<dyn ObjectStore>, TargetError> {
    let builder = s3_builder(parsed, shown, s3, credentials)?;
    let store = builder.build().map_err(|e| TargetError::Config {
        url: shown.to_string(),
        reason: scrub(&e.to_string()),
    })?;
    with_prefix(Arc::new(store), parsed.path(), shown)
}

/// The S3 client settings of an `s3://` URL (see [`open_url_with`]).
fn s3_builder(
    parsed: &url::Url,
    shown: &str,
    s3: &S3Settings,
    credentials: Option<&S3Credentials>,
) -> Result<AmazonS3Builder, TargetError> {
    let bucket = parsed.host_str().unwrap_or("").to_string();
    if bucket.is_empty() {
        return Err(TargetError::InvalidUrl {
            url: shown.to_string(),
            reason: "an s3:// URL needs a bucket (s3://bucket/prefix)".into(),
        });
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(allow) = s3.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(c) = credentials {
        builder = builder
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(c.secret_access_key.as_str());
        if let Some(t) = &c.session_token {
            builder = builder.with_token(t.as_str());
        }
        remember_secret(&c.secret_access_key);
        if let Some(t) = &c.session_token {
            remember_secret(t);
        }
    }
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN"] {
        if let Ok(v) = std::env::var(var) {
            remember_secret(&v);
        }
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: s3.max_retries.unwrap_or(DEFAULT_S3_MAX_RETRIES),
        retry_timeout: Duration::from_secs(60),
    };
    Ok(builder
        .with_virtual_hosted_style_request(false)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry))
}

/// Whether a location's store keeps earlier versions of the objects
/// written over or deleted in it. A key destroyed at a location that does
/// outlives the destruction in those versions, which the object store
/// interface can neither list nor delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Versioning {
    /// Not an S3 bucket (a folder, memory): there is nothing to ask
    /// (file system snapshots cannot be seen from here either).
    NotAsked,
    /// S3 versioning never enabled: an object written over or deleted is gone.
    Off,
    /// S3 versioning enabled: earlier versions are kept.
    Enabled,
    /// S3 versioning suspended: versions kept while it was enabled remain.
    Suspended,
    /// The bucket could not be asked (why).
    Unknown(String),
}

impl Versioning {
    /// Whether earlier versions of objects are (or may still be) kept.
    pub fn keeps_versions(&self) -> bool {
        matches!(self, Versioning::Enabled | Versioning::Suspended)
    }

    /// One word or phrase for reports: `off`, `enabled`, `suspended`,
    /// `not asked (not an S3 bucket)`, `unknown: why`.
    pub fn describe(&self) -> String {
        match self {
            Versioning::NotAsked => "not asked (not an S3 bucket)".into(),
            Versioning::Off => "off".into(),
            Versioning::Enabled => "enabled".into(),
            Versioning::Suspended => "suspended".into(),
            Versioning::Unknown(why) => format!("unknown: {why}"),
        }
    }
}

/// In reports and certificates, as [`Versioning::describe`] says it.
impl Serialize for Versioning {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.describe())
    }
}

/// Asks the bucket of an `s3://` URL whether it keeps object versions
/// (`GetBucketVersioning`, signed with the credentials the store would
/// use); any other URL is [`Versioning::NotAsked`]. Never fails: what
/// could not be found out is [`Versioning::Unknown`], its reason without
/// secrets.
pub async fn bucket_versioning(url: &str, s3: &S3Settings) -> Versioning {
    use object_store::aws::{AmazonS3ConfigKey, AwsAuthorizer};
    use object_store::client::{HttpConnector, HttpRequestBody, ReqwestConnector};
    use object_store::{ClientConfigKey, ClientOptions};
    let shown = redact_url(url);
    let Ok(parsed) = url::Url::parse(url) else {
        return Versioning::NotAsked;
    };
    if !matches!(parsed.scheme(), "s3" | "s3a") {
        return Versioning::NotAsked;
    }
    let unknown = |why: String| Versioning::Unknown(scrub(&why));
    let builder = match s3_builder(&parsed, &shown, s3, None) {
        Ok(b) => b,
        Err(e) => return unknown(e.to_string()),
    };
    let get = |k: AmazonS3ConfigKey| builder.get_config_value(&k);
    let bucket = get(AmazonS3ConfigKey::Bucket).unwrap_or_default();
    let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
    let endpoint = get(AmazonS3ConfigKey::Endpoint)
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let allow_http = get(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let store = match builder.build() {
        Ok(s) => s,
        Err(e) => return unknown(e.to_string()),
    };
    let credential = match store.credentials().get_credential().await {
        Ok(c) => c,
        Err(e) => return unknown(format!("no credentials: {e}")),
    };
    let uri = format!("{}/{bucket}?versioning", endpoint.trim_end_matches('/'));
    let mut request = match http::Request::builder()
        .method(http::Method::GET)
        .uri(&uri)
        .body(HttpRequestBody::from(bytes::Bytes::new()))
    {
        Ok(r) => r,
        Err(e) => return unknown(e.to_string()),
    };
    if let Err(e) = AwsAuthorizer::new(&credential, "s3", &region).try_authorize(&mut request, None)
    {
        return unknown(e.to_string());
    }
    let options = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(Duration::from_secs(30));
    let client = match ReqwestConnector::default().connect(&options) {
        Ok(c) => c,
        Err(e) => return unknown(e.to_string()),
    };
    let response = match client.execute(request).await {
        Ok(r) => r,
        Err(e) => return unknown(e.to_string()),
    };
    let status = response.status();
    let body = match response.into_body().bytes().await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return unknown(e.to_string()),
    };
    if !status.is_success() {
        // S3's error document names its code (`AccessDenied`, `NoSuchBucket`).
        let code = xml_text(&body, "Code").unwrap_or_default();
        return unknown(
            format!("GetBucketVersioning answered {status} {code}")
                .trim_end()
                .into(),
        );
    }
    match xml_text(&body, "Status").as_deref() {
        Some("Enabled") => Versioning::Enabled,
        Some("Suspended") => Versioning::Suspended,
        // No status: versioning was never enabled on the bucket.
        None => Versioning::Off,
        Some(other) => unknown(format!("unexpected versioning status {other:?}")),
    }
}

/// The text of the first `<tag>…</tag>` of a small XML document.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

/// Secrets handed to S3 clients by this process, scrubbed from error texts.
fn secrets() -> &'static Mutex<Vec<Zeroizing<String>>> {
    static SECRETS: OnceLock<Mutex<Vec<Zeroizing<String>>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

fn remember_secret(secret: &str) {
    // Very short values would scrub ordinary words; real secrets are long.
    if secret.len() < 8 {
        return;
    }
    let mut list = secrets().lock().unwrap_or_else(|p| p.into_inner());
    if !list.iter().any(|s| s.as_str() == secret) {
        list.push(Zeroizing::new(secret.to_string()));
    }
}

/// Removes every known secret from a text meant for an error or a log.
fn scrub(text: &str) -> String {
    let list = secrets().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in list.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    out
}

/// A URL as custos shows it: without user info, query or fragment.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let had_user = !u.username().is_empty() || u.password().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let s = u.to_string();
            if had_user && u.cannot_be_a_base() {
                "<unparseable URL>".to_string()
            } else {
                s
            }
        }
        Err(_) => {
            // Keep the scheme only when the text cannot be parsed: it might
            // carry a secret in a shape we do not understand.
            match url.split_once("://") {
                Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                    format!("{scheme}://<unparseable>")
                }
                _ => "<unparseable URL>".to_string(),
            }
        }
    }
}

/// Classification of an object_store error.
enum Kind {
    NotFound,
    AlreadyExists,
    Precondition,
    Denied,
    NotSupported,
    InvalidPath,
    Transient,
    Other,
}

fn classify(e: &object_store::Error) -> Kind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Kind::NotFound,
        E::AlreadyExists { .. } => Kind::AlreadyExists,
        E::Precondition { .. } | E::NotModified { .. } => Kind::Precondition,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Kind::Denied,
        E::NotSupported { .. } | E::NotImplemented { .. } => Kind::NotSupported,
        E::InvalidPath { .. } => Kind::InvalidPath,
        E::UnknownConfigurationKey { .. } => Kind::Other,
        _ => classify_chain(e),
    }
}

/// Looks through an error's sources for a transport failure, an I/O error
/// that may pass, or an HTTP status that says "try again" (5xx, 429,
/// throttling) or "denied" (401, 403).
fn classify_chain(e: &(dyn std::error::Error + 'static)) -> Kind {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return match h.kind() {
                HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted
                | HttpErrorKind::Decode => Kind::Transient,
                _ => Kind::Other,
            };
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::TimedOut
                | K::Interrupted
                | K::WouldBlock
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::ConnectionRefused
                | K::NotConnected
                | K::BrokenPipe
                | K::UnexpectedEof => Kind::Transient,
                K::PermissionDenied => Kind::Denied,
                K::NotFound => Kind::NotFound,
                _ => Kind::Other,
            };
        }
        let text = err.to_string();
        if let Some(code) = status_code_in(&text) {
            return match code {
                501 => Kind::NotSupported,
                500..=599 | 429 | 408 => Kind::Transient,
                401 | 403 => Kind::Denied,
                404 => Kind::NotFound,
                409 => Kind::AlreadyExists,
                412 => Kind::Precondition,
                _ => Kind::Other,
            };
        }
        if text.contains("SlowDown") || text.contains("InternalError") {
            return Kind::Transient;
        }
        cur = err.source();
    }
    Kind::Other
}

/// Finds the status in object_store's "status code: NNN" message.
fn status_code_in(text: &str) -> Option<u16> {
    let idx = text.find("status code: ")?;
    let rest = &text[idx + "status code: ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.len() == 3 {
        digits.parse().ok()
    } else {
        None
    }
}

/// The text of an error and its sources, one line, scrubbed of secrets.
fn detail(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let t = err.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = err.source();
    }
    let joined = parts.join(": ").replace('\n', " ");
    let mut out = scrub(&joined);
    const MAX: usize = 600;
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" ...");
    }
    out
}

/// Maps an object_store error to a TargetError that names the target, the
/// object path and the operation, and says whether it is transient
/// ([`TargetError::is_transient`]).
pub fn map_err(target: &str, op: &'static str, path: &str, e: object_store::Error) -> TargetError {
    let target = target.to_string();
    let path = path.to_string();
    match classify(&e) {
        Kind::NotFound => TargetError::NotFound { target, op, path },
        Kind::AlreadyExists => TargetError::AlreadyExists { target, op, path },
        Kind::Precondition => TargetError::Precondition { target, op, path },
        Kind::Denied => TargetError::Denied {
            target,
            op,
            path,
            detail: detail(&e),
        },
        Kind::NotSupported => TargetError::NotSupported {
            target,
            op,
            path,
            detail: detail(&e),
        },
        Kind::InvalidPath => TargetError::InvalidPath {
            target,
            op,
            path,
            reason: detail(&e),
        },
        Kind::Transient => TargetError::Transient {
            target,
            op,
            path,
            detail: detail(&e),
        },
        Kind::Other => TargetError::Other {
            target,
            op,
            path,
            detail: detail(&e),
        },
    }
}

/// One configured target: a name (from the policy), its URL, whether it is
/// an off-site copy, and the opened store.
#[derive(Clone)]
pub struct Target {
    /// The target's name in the policy (e.g. `primary`, `dr-east`).
    pub name: String,
    /// The URL it was opened from (shown without credentials).
    pub url: String,
    /// Whether this target is an off-site copy.
    pub offsite: bool,
    /// The opened store.
    pub store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("offsite", &self.offsite)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Opens a target from its URL (see [`open_url`]).
    pub fn open(
        name: impl Into<String>,
        url: &str,
        offsite: bool,
        s3: &S3Settings,
        create: bool,
    ) -> Result<Target, TargetError> {
        Ok(Target {
            name: name.into(),
            url: url.to_string(),
            offsite,
            store: open_url(url, s3, create)?,
        })
    }

    fn path(&self, op: &'static str, path: &str) -> Result<Path, TargetError> {
        Path::parse(path).map_err(|e| TargetError::InvalidPath {
            target: self.name.clone(),
            op,
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// Runs `f` until it succeeds, fails permanently, or fails transiently
    /// [`RETRY_ATTEMPTS`] times (then [`TargetError::Unreachable`]).
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        path: &str,
        mut f: F,
    ) -> Result<T, TargetError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, object_store::Error>>,
    {
        let mut backoff = RETRY_INITIAL_BACKOFF;
        let mut attempt = 1;
        loop {
            match f(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = map_err(&self.name, op, path, e);
                    if !err.is_transient() {
                        return Err(err);
                    }
                    if attempt >= RETRY_ATTEMPTS {
                        let detail = match err {
                            TargetError::Transient { detail, .. } => detail,
                            other => other.to_string(),
                        };
                        return Err(TargetError::Unreachable {
                            target: self.name.clone(),
                            url: redact_url(&self.url),
                            op,
                            path: path.to_string(),
                            attempts: attempt,
                            initial_backoff_ms: RETRY_INITIAL_BACKOFF.as_millis() as u64,
                            detail,
                        });
                    }
                    tracing::warn!(
                        target: "custos::target",
                        store = %self.name,
                        op,
                        path,
                        attempt,
                        "transient target error, retrying: {err}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }

    /// Reads a whole object. A missing object is [`TargetError::NotFound`].
    pub async fn get(&self, path: &str) -> Result<Bytes, TargetError> {
        let p = self.path("get", path)?;
        self.retry("get", path, |_| async {
            self.store.get(&p).await?.bytes().await
        })
        .await
    }

    /// Reads bytes `range` of an object. A missing object is
    /// [`TargetError::NotFound`]; a range past its end is an error (or, on
    /// some servers, fewer bytes: callers compare the length).
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        let p = self.path("get", path)?;
        self.retry("get", path, |_| {
            let (p, range) = (&p, range.clone());
            async move { self.store.get_range(p, range).await }
        })
        .await
    }

    /// Reads a whole object, or `None` if it does not exist.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Bytes>, TargetError> {
        match self.get(path).await {
            Ok(b) => Ok(Some(b)),
            Err(TargetError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes an object, replacing any object at that path. Atomic: readers
    /// see the old or the new object, never a part.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), TargetError> {
        let p = self.path("put", path)?;
        self.retry("put", path, |_| {
            let payload = PutPayload::from_bytes(data.clone());
            let p = &p;
            async move { self.store.put(p, payload).await.map(|_| ()) }
        })
        .await
    }

    /// Writes an object only if none exists at that path: `Ok(true)` if this
    /// call created it, `Ok(false)` if an object was already there (it is
    /// left unchanged).
    ///
    /// Uses the store's create-only put (`PutMode::Create`: an S3
    /// `If-None-Match: *`, an exclusive create on a local directory). On a
    /// store without conditional put support it falls back to `head` then
    /// `put`, which is not atomic: two writers racing may both see "created".
    ///
    /// If an attempt fails transiently and a retry then finds the object,
    /// the first attempt may have landed: the stored bytes are compared and
    /// the call reports `true` when they are exactly `data`.
    pub async fn put_new(&self, path: &str, data: Bytes) -> Result<bool, TargetError> {
        let p = self.path("put_new", path)?;
        let res = self
            .retry("put_new", path, |attempt| {
                let payload = PutPayload::from_bytes(data.clone());
                let opts = PutOptions::from(PutMode::Create);
                let p = &p;
                let data = &data;
                async move {
                    match self.store.put_opts(p, payload, opts).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::AlreadyExists { .. }) => {
                            if attempt > 1 {
                                // An earlier attempt may have written it.
                                let existing = self.store.get(p).await?.bytes().await?;
                                Ok(existing == *data)
                            } else {
                                Ok(false)
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await;
        match res {
            Err(TargetError::NotSupported { .. }) => {
                tracing::debug!(
                    target: "custos::target",
                    store = %self.name,
                    path,
                    "store has no create-only put; using head + put"
                );
                if self.head(path).await?.is_some() {
                    return Ok(false);
                }
                self.put(path, data).await?;
                Ok(true)
            }
            other => other,
        }
    }

    /// The size of an object, or `None` if it does not exist.
    pub async fn head(&self, path: &str) -> Result<Option<u64>, TargetError> {
        let p = self.path("head", path)?;
        let res = self
            .retry("head", path, |_| async { self.store.head(&p).await })
            .await;
        match res {
            Ok(meta) => Ok(Some(meta.size)),
            Err(TargetError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix` (recursively, prefix matched on whole
    /// path segments; `""` lists everything), as (path, size) with paths
    /// relative to the store root, sorted by path.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, TargetError> {
        use futures::TryStreamExt;
        let trimmed = prefix.trim_matches('/');
        let p = if trimmed.is_empty() {
            None
        } else {
            Some(self.path("list", trimmed)?)
        };
        let mut out = self
            .retry("list", prefix, |_| async {
                self.store
                    .list(p.as_ref())
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?;
        out.sort();
        Ok(out)
    }

    /// Deletes an object; deleting a missing object succeeds.
    pub async fn delete(&self, path: &str) -> Result<(), TargetError> {
        let p = self.path("delete", path)?;
        match self
            .retry("delete", path, |_| async { self.store.delete(&p).await })
            .await
        {
            Ok(()) | Err(TargetError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioning_answer_is_read_from_its_status_and_an_error_from_its_code() {
        let enabled = r#"<?xml version="1.0"?><VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
        assert_eq!(xml_text(enabled, "Status").as_deref(), Some("Enabled"));
        // A bucket never versioned answers with no status at all.
        let never = r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>"#;
        assert_eq!(xml_text(never, "Status"), None);
        let denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        assert_eq!(xml_text(denied, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_text("<Status>cut short", "Status"), None);
        assert!(Versioning::Enabled.keeps_versions() && Versioning::Suspended.keeps_versions());
        assert!(!Versioning::Off.keeps_versions());
        assert!(!Versioning::Unknown("x".into()).keeps_versions());
        assert!(!Versioning::NotAsked.keeps_versions());
    }

    #[tokio::test]
    async fn only_s3_urls_are_asked_about_versioning() {
        let s3 = S3Settings::default();
        for url in ["file:///tmp/vault", "memory://v", "not a url"] {
            assert_eq!(
                bucket_versioning(url, &s3).await,
                Versioning::NotAsked,
                "{url}"
            );
        }
    }

    #[test]
    fn redact_url_drops_user_info_and_query() {
        let shown =
            redact_url("https://AKIAEXAMPLE:supersecretvalue@s3.example.com/b?X-Amz-Signature=abc");
        assert!(!shown.contains("supersecretvalue"), "{shown}");
        assert!(!shown.contains("AKIAEXAMPLE"), "{shown}");
        assert!(!shown.contains("X-Amz-Signature"), "{shown}");
        assert!(shown.contains("s3.example.com"), "{shown}");
    }

    #[test]
    fn scrub_removes_remembered_secrets() {
        remember_secret("a-long-secret-value-1234");
        let t = scrub("failed with a-long-secret-value-1234 inside");
        assert_eq!(t, "failed with <redacted> inside");
    }

    #[test]
    fn status_codes_are_found_and_classified() {
        assert_eq!(
            status_code_in("Server returned non-2xx status code: 503 Service Unavailable: "),
            Some(503)
        );
        assert_eq!(status_code_in("nothing here"), None);
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 500 Internal Server Error: x".into(),
        };
        assert!(map_err("t", "get", "p", e).is_transient());
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 501 Not Implemented: x".into(),
        };
        assert!(matches!(
            map_err("t", "put_new", "p", e),
            TargetError::NotSupported { .. }
        ));
        let e = object_store::Error::NotFound {
            path: "p".into(),
            source: "gone".into(),
        };
        assert!(map_err("t", "get", "p", e).is_not_found());
    }

    #[test]
    fn http_connect_errors_are_transient() {
        use object_store::client::{HttpError, HttpErrorKind};
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Connect,
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
            )),
        };
        let err = map_err("dr", "put", "a/b", e);
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("'dr'") && text.contains("a/b") && text.contains("put"),
            "{text}"
        );
    }

    #[test]
    fn schemes_and_urls_are_checked() {
        let s = S3Settings::default();
        let e = open_url("gs://bucket/x", &s, false).expect_err("refused");
        assert!(matches!(e, TargetError::UnsupportedScheme { .. }), "{e}");
        assert!(e.to_string().contains("not supported yet"), "{e}");
        let e = open_url("az://c/x", &s, false).expect_err("refused");
        assert!(matches!(e, TargetError::UnsupportedScheme { .. }), "{e}");
        assert!(matches!(
            open_url("ftp://h/x", &s, false).expect_err("refused"),
            TargetError::InvalidUrl { .. }
        ));
        assert!(matches!(
            open_url("memory://", &s, false).expect_err("refused"),
            TargetError::InvalidUrl { .. }
        ));
        assert!(matches!(
            open_url("not a url", &s, false).expect_err("refused"),
            TargetError::InvalidUrl { .. }
        ));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b/c"), "a b/c");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("x%4"), "x%4");
    }
}
