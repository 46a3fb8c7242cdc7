//! The policy file: one TOML file that says what to back up, where, under
//! which keys, how often, how long to keep it and how to prove it restores.
//!
//! [`Policy::load`] reads, parses and validates a policy before anything
//! runs. Every problem is reported with the file, line, column and key path
//! (`store.tables[1].subject`, `targets[0].url`) and what to do about it; a
//! misspelt key is an error, never silently ignored. The format is
//! documented in `docs/POLICY.md`.
//!
//! Parsing happens in two layers: private `Raw*` types mirror the file with
//! [`toml::Spanned`] on every value that is checked beyond its type, and
//! [`Policy`] and its parts are the validated result, with relative paths
//! resolved against the policy file's folder.

use crate::store::{Every, TablePlan};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

// ---------------------------------------------------------------------------
// Public vocabulary types
// ---------------------------------------------------------------------------

/// The regulation's four classes of customer data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Who the customer is: names, identity documents, addresses.
    Identity,
    /// Contracts, subscriptions, invoices, payments.
    Business,
    /// Service records: tickets, provisioning, device data.
    Service,
    /// Usage: call detail records, data sessions, messages.
    Consumption,
}

impl DataClass {
    /// Every class, in a stable order.
    pub const ALL: [DataClass; 4] = [
        DataClass::Identity,
        DataClass::Business,
        DataClass::Service,
        DataClass::Consumption,
    ];

    /// The class's name as written in policies (`identity`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Identity => "identity",
            DataClass::Business => "business",
            DataClass::Service => "service",
            DataClass::Consumption => "consumption",
        }
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DataClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!("unknown data class `{s}`: use identity, business, service or consumption")
            })
    }
}

/// The length of the time unit that tables without subject and period (and
/// file stores) are keyed by: one shred unit per (class, epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Epoch {
    Month,
    Quarter,
    Year,
}

impl Epoch {
    /// The label of the epoch containing `t`: `2026-11` (month),
    /// `2026-Q4` (quarter) or `2026` (year).
    pub fn label(self, t: DateTime<Utc>) -> String {
        match self {
            Epoch::Month => format!("{:04}-{:02}", t.year(), t.month()),
            Epoch::Quarter => format!("{:04}-Q{}", t.year(), (t.month() - 1) / 3 + 1),
            Epoch::Year => format!("{:04}", t.year()),
        }
    }

    /// The epoch's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Epoch::Month => "month",
            Epoch::Quarter => "quarter",
            Epoch::Year => "year",
        }
    }
}

/// What kind of record store a policy backs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
    Files,
}

impl StoreKind {
    /// The kind's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
            StoreKind::Files => "files",
        }
    }
}

// ---------------------------------------------------------------------------
// The validated policy
// ---------------------------------------------------------------------------

/// A validated policy. Build it with [`Policy::load`] or [`Policy::from_str`].
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The file it was loaded from (as given to `load`).
    pub file: PathBuf,
    /// `[policy] name`: `[a-z0-9][a-z0-9_-]*`, used in object paths.
    pub name: String,
    /// `[store]`: the record store.
    pub store: StoreConfig,
    /// `[keys]`: the service identity, recovery recipients and vault locations.
    pub keys: KeysConfig,
    /// `[[targets]]`: at least one, unique names; the first one without
    /// `offsite = true` is the primary.
    pub targets: Vec<TargetConfig>,
    /// `[s3]`: defaults for every `s3://` URL of the policy.
    pub s3: S3Config,
    /// `[schedule]`: cron expressions (already checked to parse).
    pub schedule: ScheduleConfig,
    /// `[snapshots]`: which snapshots are kept.
    pub snapshots: SnapshotsConfig,
    /// `[drill]`: restore drills.
    pub drill: DrillConfig,
    /// `[shred]`: crypto-shredding.
    pub shred: ShredConfig,
    /// `[replication]`: copies across targets.
    pub replication: ReplicationConfig,
    /// `[resources]`: the threads and buffer memory of a job.
    pub resources: ResourcesConfig,
}

/// `[store]`: where the records live.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// `sqlite`, `postgres` or `files`.
    pub kind: StoreKind,
    /// The database file (sqlite), resolved against the policy's folder.
    pub path: Option<PathBuf>,
    /// The connection URL (postgres), without a password.
    pub url: Option<String>,
    /// A file whose first line is the database password (postgres),
    /// resolved against the policy's folder.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the database password (postgres).
    pub password_env: Option<String>,
    /// The schemas to back up (postgres; default: every non-system schema).
    pub schemas: Vec<String>,
    /// The root folder (files), resolved against the policy's folder.
    pub root: Option<PathBuf>,
    /// `[[store.tables]]`: tables with a class, subject, period or retention.
    pub tables: Vec<TableConfig>,
    /// The class of tables not listed (default `business`).
    pub default_class: DataClass,
    /// The epoch of units keyed by (class, epoch) (default `quarter`).
    pub epoch: Epoch,
    /// The class of all files in file mode (default `business`).
    pub class: DataClass,
    /// What a postgres backup does when the database holds large objects.
    pub large_objects: NotBackedUp,
    /// What a postgres backup does with the rows of extension
    /// configuration tables (`pg_extension_config_dump`).
    pub extension_config: ExtensionConfig,
}

/// `[store] extension_config`: the rows of a PostgreSQL extension's
/// configuration tables (pg_cron's jobs, pg_partman's settings), which
/// `pg_dump` keeps with the data, not the schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtensionConfig {
    /// Backed up like a table and restored after the extension is
    /// created (the default). Only when every schema is read: a dump of
    /// chosen schemas leaves extensions out, so a backup with `schemas`
    /// whose configuration tables hold rows is refused.
    #[default]
    Include,
    /// The backup goes on without them and reports how many it left out.
    Skip,
    /// The backup stops, before any data moves, if they hold rows.
    Refuse,
}

/// `[store] large_objects`: data of a PostgreSQL database that custos
/// does not back up, so a database that holds any is refused unless the
/// policy says to back up without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotBackedUp {
    /// The backup stops, before any data moves (the default).
    #[default]
    Refuse,
    /// The backup goes on without them and reports how many it left out.
    Skip,
}

/// `[[store.tables]]`: one table of a record store.
#[derive(Clone, Debug, PartialEq)]
pub struct TableConfig {
    /// The table's name in the store.
    pub name: String,
    /// Its data class.
    pub class: DataClass,
    /// The column holding the customer id, if rows belong to a customer.
    pub subject: Option<String>,
    /// The time column and bucket length, if rows are keyed by period.
    pub period: Option<PeriodConfig>,
    /// How long rows are kept, if they are shredded on a schedule.
    pub retain: Option<RetainConfig>,
}

/// `period = { column = "...", every = "day|month|year" }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodConfig {
    /// The column holding the row's time.
    pub column: String,
    /// The bucket length.
    pub every: Every,
}

/// `retain = { after = "column", for = "180d" }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainConfig {
    /// The column whose time starts the retention clock.
    pub after: String,
    /// How long after that time the rows are kept (key `for`).
    pub for_: Duration,
}

/// `[keys]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysConfig {
    /// The service's age identity file, resolved against the policy's folder.
    pub identity: PathBuf,
    /// Offline recovery recipients (`age1...`), checked to parse.
    pub recipients: Vec<String>,
    /// Vault location URLs (at least one; two or more recommended).
    pub vault: Vec<String>,
}

/// `[[targets]]`: one object-store location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    /// A unique name, `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// The location: `file:///...`, `memory://`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix`.
    pub url: String,
    /// An off-site copy (not eligible as primary).
    pub offsite: bool,
    /// A write-once target (S3 Object Lock, WORM storage): custos never
    /// deletes from it when shredding; the destroyed unit's ciphertext stays
    /// there, unreadable, until the lock expires.
    pub worm: bool,
    /// S3 endpoint override (s3:// targets only).
    pub endpoint: Option<String>,
    /// S3 region override (s3:// targets only).
    pub region: Option<String>,
    /// S3 plain-HTTP override (s3:// targets only).
    pub allow_http: Option<bool>,
}

/// `[s3]`: defaults for every `s3://` URL of the policy (the target
/// module's settings; credentials never come from a policy).
pub use crate::target::S3Settings as S3Config;

/// `[schedule]`: cron expressions (6 or 7 fields, seconds first), each
/// checked to parse with the `cron` crate. `None`: the job is not scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    pub backup: Option<String>,
    pub replicate: Option<String>,
    pub drill: Option<String>,
    pub retention: Option<String>,
    /// Whether the daemon, on start, runs once a job whose run was missed
    /// while it was down (default `true`); `false` skips missed runs.
    pub catch_up: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            backup: None,
            replicate: None,
            drill: None,
            retention: None,
            catch_up: true,
        }
    }
}

/// `[snapshots]`: how many snapshots each retention rule keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsConfig {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

/// `[drill]`: restore drills.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrillConfig {
    /// The recovery time objective: a drill slower than this fails.
    pub rto: Option<Duration>,
    /// `[[drill.assert]]`: queries run on the restored store.
    pub assert: Vec<DrillAssert>,
    /// PostgreSQL stores: the server drills make their scratch database
    /// on (default: the store's own server). No password in it.
    pub scratch_url: Option<String>,
}

/// One `[[drill.assert]]`: a query whose single value must equal `expect`.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillAssert {
    pub sql: String,
    pub expect: toml::Value,
}

/// `[shred]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredConfig {
    /// Time between a shred request and the key's destruction (default 7d);
    /// the request can be cancelled meanwhile.
    pub grace: Duration,
    /// `min_retention = { consumption = "180d", ... }`: the minimum time a
    /// class's records are kept after their period ends (a legal floor).
    /// The shredding ledger records the highest value ever configured and
    /// enforces that, so a later edit cannot lower it (see
    /// `docs/SHREDDING.md`).
    pub min_retention: BTreeMap<DataClass, Duration>,
}

impl Default for ShredConfig {
    fn default() -> Self {
        ShredConfig {
            grace: DEFAULT_GRACE,
            min_retention: BTreeMap::new(),
        }
    }
}

/// The default `[shred] grace`: seven days.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * DAY);

/// `[replication]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// How many targets must hold a snapshot for it to count as safe
    /// (at most the number of targets).
    pub min_copies: Option<u32>,
    /// Copies in flight at once on each target (default
    /// [`DEFAULT_REPLICATION_CONCURRENCY`], 1 to 64).
    pub concurrency: Option<u32>,
    /// A cap on the bytes written to targets per second by one replication
    /// run, all targets together (default: no cap).
    pub max_bytes_per_sec: Option<u64>,
}

/// The default `[replication] concurrency`.
pub const DEFAULT_REPLICATION_CONCURRENCY: u32 = 4;

/// `[resources]`: what one job of the policy (a backup, restore, check or
/// drill) may use of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourcesConfig {
    /// Threads for a job's parallel stages (grouping rows, sealing and
    /// opening chunks); `None`: one per core the process may run on (its
    /// CPU affinity and cgroup quota counted).
    pub threads: Option<u32>,
    /// Bytes of buffers a job fills: read windows of rows, packs being
    /// filled and in flight, chunks being opened, index sort runs
    /// ([`DEFAULT_BUFFER_MEMORY`]; from [`MIN_BUFFER_MEMORY`] to
    /// [`MAX_BUFFER_MEMORY`]). What grows with the store (the key vault,
    /// the chunk index) comes on top.
    pub buffer_memory: u64,
}

/// The default `[resources] buffer_memory`: 256 MiB.
pub const DEFAULT_BUFFER_MEMORY: u64 = 256 << 20;
/// The least `[resources] buffer_memory`: 32 MiB.
pub const MIN_BUFFER_MEMORY: u64 = 32 << 20;
/// The most `[resources] buffer_memory`: 16 GiB.
pub const MAX_BUFFER_MEMORY: u64 = 16 << 30;
/// The most `[resources] threads`.
pub const MAX_THREADS: u32 = 256;

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            threads: None,
            buffer_memory: DEFAULT_BUFFER_MEMORY,
        }
    }
}

impl ResourcesConfig {
    /// The threads a job's parallel stages use: `threads`, or one per core
    /// the process may run on.
    pub fn threads(&self) -> usize {
        match self.threads {
            Some(n) => n.max(1) as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// An eighth of the buffer memory (32 MiB by default): the share of a
    /// backup's read window of rows (two are filled at once), of its open
    /// packs, and of a check's wave of packs (two at once).
    pub fn eighth(&self) -> usize {
        usize::try_from(self.buffer_memory / 8).unwrap_or(usize::MAX)
    }

    /// Packs a restore holds at once to open a part of a window (8 by
    /// default, at least 2): a quarter of the buffer memory in packs of
    /// about 8 MiB.
    pub fn restore_packs(&self) -> usize {
        usize::try_from(self.buffer_memory / (32 << 20))
            .unwrap_or(usize::MAX)
            .max(2)
    }

    /// Chunks a check queues while walking the trees before it opens them
    /// (128 k by default, at least 4 k): the queue is sorted by pack, so
    /// each pack of a batch is fetched once; about 100 bytes a chunk (its
    /// id, location and a share of its group's keys), so a twentieth of the
    /// buffer memory.
    pub fn check_batch_chunks(&self) -> usize {
        usize::try_from(self.buffer_memory / 2048)
            .unwrap_or(usize::MAX)
            .max(1 << 12)
    }

    /// Bytes of index entries a restore sorts in one run (16 MiB by
    /// default): a sixteenth of the buffer memory.
    pub fn sort_run_bytes(&self) -> usize {
        usize::try_from(self.buffer_memory / 16).unwrap_or(usize::MAX)
    }

    /// SQLite's page cache while a restore's rows go in through SQL, in
    /// KiB (64 MiB by default): a quarter of the buffer memory.
    pub fn restore_cache_kib(&self) -> u32 {
        u32::try_from(self.buffer_memory / 4 / 1024).unwrap_or(u32::MAX)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A policy that cannot be used, with where and why.
///
/// `line` and `column` are 1-based; both are 0 when the problem has no place
/// in the file (it cannot be read). `key` is the key path
/// (`store.tables[1].subject`), empty when none applies. When several
/// problems were found, the first is in the fields and the rest in `more`;
/// `Display` prints one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    /// Further problems found in the same file (each with an empty `more`).
    pub more: Vec<PolicyError>,
}

impl PolicyError {
    /// All problems: this one, then the others.
    pub fn problems(&self) -> impl Iterator<Item = &PolicyError> {
        std::iter::once(self).chain(self.more.iter())
    }

    fn write_one(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if self.line == 0 {
            write!(f, "{file}: ")?;
        } else {
            write!(f, "{file}:{}:{}: ", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_one(f)?;
        for e in &self.more {
            f.write_str("\n")?;
            e.write_one(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Parses a policy duration: a positive integer and a unit, no spaces:
/// `30s`, `30m`, `12h`, `180d`, `2w`, `6mo` (30 days each), `3y` (365 days
/// each). The error says what is wrong, for the caller to place.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "write a whole number and a unit without spaces: 30s, 30m, 12h, 180d, 2w, 6mo (30 days), 3y (365 days)";
    const UNITS: [(&str, u64); 7] = [
        ("s", 1),
        ("m", MINUTE),
        ("h", HOUR),
        ("d", DAY),
        ("w", 7 * DAY),
        ("mo", 30 * DAY),
        ("y", 365 * DAY),
    ];
    amount(s, "duration", &UNITS, HINT).map(Duration::from_secs)
}

/// Parses a policy size: a positive whole number and a binary unit, no
/// spaces: `512KiB`, `256MiB`, `2GiB` (`B` for bytes). The error says what
/// is wrong, for the caller to place.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HINT: &str =
        "write a whole number and a unit without spaces: 64MiB, 256MiB, 2GiB (KiB, MiB, GiB: powers of 1024)";
    const UNITS: [(&str, u64); 5] = [
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ];
    amount(s, "size", &UNITS, HINT)
}

/// A positive whole number followed, without spaces, by one of `units`
/// (its name and what one of it counts), as the count; `what` (`duration`,
/// `size`) and `hint` go into the error.
fn amount(s: &str, what: &str, units: &[(&str, u64)], hint: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    if num.is_empty() {
        return Err(format!("`{s}` is not a {what}: {hint}"));
    }
    let per = match units.iter().find(|(name, _)| *name == unit) {
        Some((_, per)) => *per,
        None if unit.is_empty() => return Err(format!("`{s}` has no unit: {hint}")),
        None => return Err(format!("`{s}` has an unknown unit `{unit}`: {hint}")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is too large for a {what}"))?;
    if n == 0 {
        return Err(format!("`{s}` is zero: a {what} must be positive"));
    }
    n.checked_mul(per)
        .ok_or_else(|| format!("`{s}` is too large for a {what}"))
}

/// Checks `[resources] threads` (or a command's `--threads`).
pub fn check_threads(n: u32) -> Result<u32, String> {
    if (1..=MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be from 1 to {MAX_THREADS} (leave it out for one thread per core)"
        ))
    }
}

/// Reads `[resources] buffer_memory` (or a command's `--buffer-memory`):
/// a size from [`MIN_BUFFER_MEMORY`] to [`MAX_BUFFER_MEMORY`].
pub fn parse_buffer_memory(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if (MIN_BUFFER_MEMORY..=MAX_BUFFER_MEMORY).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "`{s}` is out of range: from {}MiB to {}GiB (the default is {}MiB)",
            MIN_BUFFER_MEMORY >> 20,
            MAX_BUFFER_MEMORY >> 30,
            DEFAULT_BUFFER_MEMORY >> 20
        ))
    }
}

/// Checks a cron expression the way the scheduler will read it (the `cron`
/// crate: 6 or 7 fields, seconds first, or `@daily` and friends).
pub fn parse_cron(s: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(s).map_err(|e| {
        let fields = s.split_whitespace().count();
        if fields == 5 && !s.trim_start().starts_with('@') {
            format!(
                "`{s}` has 5 fields, but custos's cron needs 6 or 7 (seconds first): did you mean `0 {s}`?"
            )
        } else {
            // The crate's message repeats the expression with a caret; keep
            // only its last line, the reason.
            let e = e.to_string();
            let why = e.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
            format!("`{s}` is not a valid cron expression ({why}); write 6 or 7 fields: sec min hour day-of-month month day-of-week [year]")
        }
    })
}

// ---------------------------------------------------------------------------
// The raw file
// ---------------------------------------------------------------------------

type S = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    policy: Spanned<RawHead>,
    store: Spanned<RawStore>,
    keys: Spanned<RawKeys>,
    targets: Spanned<Vec<Spanned<RawTarget>>>,
    s3: Option<RawS3>,
    schedule: Option<RawSchedule>,
    snapshots: Option<SnapshotsConfig>,
    drill: Option<RawDrill>,
    shred: Option<RawShred>,
    replication: Option<RawReplication>,
    resources: Option<RawResources>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    name: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Spanned<StoreKind>,
    path: Option<S>,
    url: Option<S>,
    password_file: Option<S>,
    password_env: Option<S>,
    schemas: Option<Vec<S>>,
    root: Option<S>,
    tables: Option<Vec<Spanned<RawTable>>>,
    default_class: Option<Spanned<DataClass>>,
    epoch: Option<Epoch>,
    class: Option<Spanned<DataClass>>,
    large_objects: Option<Spanned<NotBackedUp>>,
    extension_config: Option<Spanned<ExtensionConfig>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: S,
    class: DataClass,
    subject: Option<S>,
    period: Option<RawPeriod>,
    retain: Option<RawRetain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeriod {
    column: S,
    every: Every,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetain {
    after: S,
    #[serde(rename = "for")]
    for_: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    identity: S,
    #[serde(default)]
    recipients: Vec<S>,
    vault: Spanned<Vec<S>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: S,
    url: S,
    #[serde(default)]
    offsite: bool,
    #[serde(default)]
    worm: bool,
    endpoint: Option<S>,
    region: Option<S>,
    allow_http: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<S>,
    region: Option<S>,
    allow_http: Option<Spanned<bool>>,
    max_retries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    backup: Option<S>,
    replicate: Option<S>,
    drill: Option<S>,
    retention: Option<S>,
    catch_up: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    rto: Option<S>,
    scratch_url: Option<S>,
    #[serde(default)]
    assert: Vec<RawAssert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssert {
    sql: S,
    expect: toml::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShred {
    grace: Option<S>,
    min_retention: Option<BTreeMap<String, S>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    threads: Option<Spanned<u32>>,
    buffer_memory: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    min_copies: Option<Spanned<u32>>,
    concurrency: Option<Spanned<u32>>,
    max_bytes_per_sec: Option<Spanned<u64>>,
}

// ---------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------

/// URL schemes a target or vault location may use.
pub const SUPPORTED_SCHEMES: [&str; 5] = ["file", "memory", "s3", "gs", "az"];

impl Policy {
    /// Reads, parses and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!(
                "cannot read the policy file ({e}); check the path and its permissions"
            ),
            more: Vec::new(),
        })?;
        Policy::from_str(&text, path)
    }

    /// Parses and validates policy text; `file` names it in errors and is the
    /// base for relative paths (its folder).
    pub fn from_str(text: &str, file: &Path) -> Result<Policy, PolicyError> {
        let mut ck = Checker {
            text,
            file,
            problems: Vec::new(),
        };
        let raw: RawFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => return Err(ck.placed_toml_error(&e)),
        };
        let policy = ck.validate(raw);
        match ck.problems.is_empty() {
            true => Ok(policy),
            false => {
                let mut all = ck.problems;
                let mut first = all.remove(0);
                first.more = all;
                Err(first)
            }
        }
    }

    /// The primary target: the first one without `offsite = true`.
    pub fn primary(&self) -> &TargetConfig {
        self.targets
            .iter()
            .find(|t| !t.offsite)
            .expect("a validated policy has a primary target")
    }

    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The `[[store.tables]]` entry named `name`.
    pub fn table(&self, name: &str) -> Option<&TableConfig> {
        self.store.tables.iter().find(|t| t.name == name)
    }

    /// The S3 settings for target `t`: its own endpoint, region and
    /// allow_http where set, else the `[s3]` defaults.
    pub fn s3_for(&self, t: &TargetConfig) -> S3Config {
        S3Config {
            endpoint: t.endpoint.clone().or_else(|| self.s3.endpoint.clone()),
            region: t.region.clone().or_else(|| self.s3.region.clone()),
            allow_http: t.allow_http.or(self.s3.allow_http),
            max_retries: self.s3.max_retries,
        }
    }

    /// How to read table `table`: a listed table with its subject and
    /// period; any other with neither.
    pub fn plan(&self, table: &str) -> TablePlan {
        match self.table(table) {
            Some(t) => TablePlan {
                name: t.name.clone(),
                subject: t.subject.clone(),
                period: t.period.as_ref().map(|p| (p.column.clone(), p.every)),
            },
            None => TablePlan {
                name: table.to_string(),
                subject: None,
                period: None,
            },
        }
    }

    /// The data class of table `table`: its own if listed, else
    /// `store.default_class`.
    pub fn class_of(&self, table: &str) -> DataClass {
        self.table(table)
            .map(|t| t.class)
            .unwrap_or(self.store.default_class)
    }
}

/// Collects problems with their places while validating.
struct Checker<'a> {
    text: &'a str,
    file: &'a Path,
    problems: Vec<PolicyError>,
}

impl Checker<'_> {
    fn error_at(&self, span: Range<usize>, key: &str, message: String) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
            more: Vec::new(),
        }
    }

    fn err(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let e = self.error_at(span, key, message.into());
        self.problems.push(e);
    }

    /// Turns a syntax, unknown-key, type or missing-key error into a placed one.
    fn placed_toml_error(&self, e: &toml::de::Error) -> PolicyError {
        let span = e.span().unwrap_or(0..0);
        let raw = e.message().trim();
        let mut key = if span.is_empty() {
            String::new()
        } else {
            key_path_at(self.text, span.start)
        };
        let mut message = raw
            .replace('\n', ": ")
            .replace("expected u32", "expected a whole number, 0 or more")
            .replace("expected usize", "expected a whole number, 0 or more");
        if let Some(field) = backticked_after(raw, "missing field ") {
            key = join_key(&key, field);
            message = format!("`{field}` is required here but missing; add it");
        } else if let Some(field) = backticked_after(raw, "unknown field ") {
            let rest = raw.split_once(", expected ").map(|(_, r)| r);
            message = match rest {
                Some(r) => format!("unknown key `{field}` (a typo?); expected {r}"),
                None => format!("unknown key `{field}` (a typo?); this table takes no keys"),
            };
        } else if let Some(variant) = backticked_after(raw, "unknown variant ") {
            let rest = raw.split_once(", expected ").map(|(_, r)| r).unwrap_or("");
            message = format!("`{variant}` is not allowed here; expected {rest}");
        }
        self.error_at(span, &key, message)
    }

    fn validate(&mut self, raw: RawFile) -> Policy {
        let base = self.file.parent().unwrap_or(Path::new("")).to_path_buf();

        // [policy]
        let name = raw.policy.get_ref().name.clone();
        if let Err(why) = check_name(name.get_ref()) {
            self.err(name.span(), "policy.name", why);
        }

        let vault_spans = raw.keys.get_ref().vault.get_ref().clone();
        let store = self.store(raw.store, &base);
        let keys = self.keys(raw.keys, &base);

        // [s3]
        let s3 = match &raw.s3 {
            Some(r) => {
                if let Some(ep) = &r.endpoint {
                    self.endpoint(
                        ep,
                        "s3.endpoint",
                        r.allow_http.as_ref().map(|a| *a.get_ref()),
                    );
                }
                if let Some(rg) = &r.region {
                    if rg.get_ref().trim().is_empty() {
                        self.err(
                            rg.span(),
                            "s3.region",
                            "the region is empty; remove it or name a region",
                        );
                    }
                }
                S3Config {
                    endpoint: r.endpoint.as_ref().map(|s| s.get_ref().clone()),
                    region: r.region.as_ref().map(|s| s.get_ref().clone()),
                    allow_http: r.allow_http.as_ref().map(|a| *a.get_ref()),
                    max_retries: r.max_retries,
                }
            }
            None => S3Config::default(),
        };

        let targets = self.targets(&raw.targets);

        // Keys must never live on a backup target.
        for (vi, v) in vault_spans.iter().enumerate() {
            for (ti, t) in raw.targets.get_ref().iter().enumerate() {
                let t_url = t.get_ref().url.get_ref();
                if let (Some(a), Some(b)) = (Location::parse(v.get_ref()), Location::parse(t_url)) {
                    if a.overlaps(&b) {
                        self.err(
                            v.span(),
                            &format!("keys.vault[{vi}]"),
                            format!(
                                "is on backup target `{}` (targets[{ti}]): the same location, or one inside the other; keys must never be kept on a backup target, use a separate bucket or folder",
                                t.get_ref().name.get_ref()
                            ),
                        );
                    }
                }
            }
        }

        // [schedule]
        let mut schedule = ScheduleConfig::default();
        let mut replicate_span = None;
        if let Some(r) = raw.schedule {
            replicate_span = r.replicate.as_ref().map(|v| v.span());
            let mut cron = |v: Option<S>, key: &str| -> Option<String> {
                let v = v?;
                if let Err(why) = parse_cron(v.get_ref()) {
                    self.err(v.span(), key, why);
                }
                Some(v.into_inner())
            };
            schedule.backup = cron(r.backup, "schedule.backup");
            schedule.replicate = cron(r.replicate, "schedule.replicate");
            schedule.drill = cron(r.drill, "schedule.drill");
            schedule.retention = cron(r.retention, "schedule.retention");
            schedule.catch_up = r.catch_up.unwrap_or(true);
        }

        // A policy that copies off-site needs an off-site target.
        let has_offsite = raw.targets.get_ref().iter().any(|t| t.get_ref().offsite);
        if !has_offsite && !raw.targets.get_ref().is_empty() {
            if let (Some(rep), Some(span)) = (&schedule.replicate, replicate_span) {
                self.err(
                    span,
                    "schedule.replicate",
                    format!("replication is scheduled (`{rep}`) but no target has `offsite = true`; add an off-site [[targets]] entry or remove the schedule"),
                );
            }
        }

        // [drill]
        let mut drill = DrillConfig::default();
        if let Some(r) = raw.drill {
            drill.rto = r.rto.and_then(|v| self.duration(&v, "drill.rto"));
            if let Some(u) = r.scratch_url {
                if url::Url::parse(u.get_ref()).is_ok_and(|x| x.password().is_some()) {
                    self.err(
                        u.span(),
                        "drill.scratch_url",
                        "holds a password; a policy never holds secrets: the store's password_file / password_env is used",
                    );
                }
                drill.scratch_url = Some(u.into_inner());
            }
            for (i, a) in r.assert.into_iter().enumerate() {
                if a.sql.get_ref().trim().is_empty() {
                    self.err(
                        a.sql.span(),
                        &format!("drill.assert[{i}].sql"),
                        "the query is empty; write a SELECT that returns one value",
                    );
                }
                drill.assert.push(DrillAssert {
                    sql: a.sql.into_inner(),
                    expect: a.expect,
                });
            }
        }

        // [shred]
        let mut shred = ShredConfig::default();
        let (grace, min_retention) = raw
            .shred
            .map(|r| (r.grace, r.min_retention))
            .unwrap_or_default();
        if let Some(g) = grace {
            if let Some(d) = self.duration(&g, "shred.grace") {
                shred.grace = d;
            }
        }
        for (class, v) in min_retention.unwrap_or_default() {
            let key = format!("shred.min_retention.{class}");
            let Some(c) = DataClass::ALL.iter().find(|c| c.as_str() == class) else {
                self.err(
                    v.span(),
                    &key,
                    format!("`{class}` is not a data class; use identity, business, service or consumption"),
                );
                continue;
            };
            let Some(d) = self.duration(&v, &key) else {
                continue;
            };
            for (i, t) in store.tables.iter().enumerate() {
                if t.class != *c {
                    continue;
                }
                if let Some(rt) = t.retain.as_ref().filter(|rt| rt.for_ < d) {
                    self.err(
                        v.span(),
                        &key,
                        format!(
                            "is longer than store.tables[{i}].retain.for ({}s, table `{}`): the retention job would schedule those rows before the minimum retention ends; raise `retain.for` to at least `{}`",
                            rt.for_.as_secs(),
                            t.name,
                            v.get_ref()
                        ),
                    );
                }
            }
            shred.min_retention.insert(*c, d);
        }

        // [replication]
        let mut replication = ReplicationConfig::default();
        let raw_replication = raw.replication.unwrap_or(RawReplication {
            min_copies: None,
            concurrency: None,
            max_bytes_per_sec: None,
        });
        if let Some(c) = raw_replication.concurrency {
            let n = *c.get_ref();
            if !(1..=64).contains(&n) {
                self.err(
                    c.span(),
                    "replication.concurrency",
                    "must be from 1 to 64 (copies in flight per target)",
                );
            }
            replication.concurrency = Some(n);
        }
        if let Some(b) = raw_replication.max_bytes_per_sec {
            if *b.get_ref() == 0 {
                self.err(
                    b.span(),
                    "replication.max_bytes_per_sec",
                    "must be at least 1 (remove it for no cap)",
                );
            }
            replication.max_bytes_per_sec = Some(*b.get_ref());
        }
        if let Some(m) = raw_replication.min_copies {
            let n = *m.get_ref();
            let have = raw.targets.get_ref().len();
            if n >= 2 && !has_offsite && n as usize <= have {
                self.err(
                    m.span(),
                    "replication.min_copies",
                    format!("asks for {n} copies but no target has `offsite = true`: copies in one place are not off-site; mark the copy's target `offsite = true`"),
                );
            }
            if n == 0 {
                self.err(m.span(), "replication.min_copies", "must be at least 1");
            } else if n as usize > have {
                self.err(
                    m.span(),
                    "replication.min_copies",
                    format!("asks for {n} copies but the policy has only {have} target(s); add targets or lower it"),
                );
            }
            replication.min_copies = Some(n);
        }

        // [resources]
        let mut resources = ResourcesConfig::default();
        if let Some(r) = raw.resources {
            if let Some(t) = r.threads {
                match check_threads(*t.get_ref()) {
                    Ok(n) => resources.threads = Some(n),
                    Err(why) => self.err(t.span(), "resources.threads", why),
                }
            }
            if let Some(m) = r.buffer_memory {
                match parse_buffer_memory(m.get_ref()) {
                    Ok(n) => resources.buffer_memory = n,
                    Err(why) => self.err(m.span(), "resources.buffer_memory", why),
                }
            }
        }

        Policy {
            file: self.file.to_path_buf(),
            name: name.into_inner(),
            store,
            keys,
            targets,
            s3,
            schedule,
            snapshots: raw.snapshots.unwrap_or_default(),
            drill,
            shred,
            replication,
            resources,
        }
    }

    fn duration(&mut self, v: &S, key: &str) -> Option<Duration> {
        match parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(why) => {
                self.err(v.span(), key, why);
                None
            }
        }
    }

    fn store(&mut self, raw: Spanned<RawStore>, base: &Path) -> StoreConfig {
        let r = raw.into_inner();
        let kind = *r.kind.get_ref();
        let kind_span = r.kind.span();
        let k = kind.as_str();
        // Which location key this kind needs, and which it must not have.
        let (needed, what) = match kind {
            StoreKind::Sqlite => ("path", "the database file"),
            StoreKind::Postgres => ("url", "the connection URL, postgres://..."),
            StoreKind::Files => ("root", "the folder to back up"),
        };
        for (key, val) in [("path", &r.path), ("url", &r.url), ("root", &r.root)] {
            match val {
                Some(v) if key != needed => self.err(
                    v.span(),
                    &format!("store.{key}"),
                    format!("a `{k}` store takes `{needed}` ({what}), not `{key}`"),
                ),
                Some(v) if v.get_ref().trim().is_empty() => self.err(
                    v.span(),
                    &format!("store.{key}"),
                    format!("is empty; give {what}"),
                ),
                None if key == needed => self.err(
                    kind_span.clone(),
                    &format!("store.{key}"),
                    format!("a `{k}` store needs `{key}` ({what}); add it to [store]"),
                ),
                _ => {}
            }
        }
        if let (StoreKind::Postgres, Some(u)) = (kind, &r.url) {
            let s = u.get_ref();
            if !(s.is_empty() || s.starts_with("postgres://") || s.starts_with("postgresql://")) {
                self.err(
                    u.span(),
                    "store.url",
                    "must start with postgres:// or postgresql://",
                );
            } else if url::Url::parse(s).is_ok_and(|u| u.password().is_some()) {
                self.err(
                    u.span(),
                    "store.url",
                    "holds a password; a policy never holds secrets: remove it from the URL and set `password_file` or `password_env`",
                );
            }
        }
        if kind != StoreKind::Postgres {
            for (key, v) in [
                ("password_file", &r.password_file),
                ("password_env", &r.password_env),
            ] {
                if let Some(v) = v {
                    self.err(
                        v.span(),
                        &format!("store.{key}"),
                        format!("only a `postgres` store takes `{key}`"),
                    );
                }
            }
            if let Some(v) = r.schemas.as_ref().and_then(|s| s.first()) {
                self.err(
                    v.span(),
                    "store.schemas",
                    "only a `postgres` store takes `schemas`",
                );
            }
            if let Some(v) = &r.large_objects {
                self.err(
                    v.span(),
                    "store.large_objects",
                    "only a `postgres` store takes `large_objects`",
                );
            }
            if let Some(v) = &r.extension_config {
                self.err(
                    v.span(),
                    "store.extension_config",
                    "only a `postgres` store takes `extension_config`",
                );
            }
        }
        if let (Some(_), Some(b)) = (&r.password_file, &r.password_env) {
            self.err(
                b.span(),
                "store.password_env",
                "give either `password_file` or `password_env`, not both",
            );
        }
        for (i, v) in r.schemas.iter().flatten().enumerate() {
            if v.get_ref().trim().is_empty() {
                self.err(
                    v.span(),
                    &format!("store.schemas[{i}]"),
                    "the schema name is empty",
                );
            }
        }
        let record = kind != StoreKind::Files;
        if let (false, Some(tables)) = (record, &r.tables) {
            if let Some(t) = tables.first() {
                self.err(
                    t.span(),
                    "store.tables",
                    "a `files` store has no tables; set its class with `class` instead",
                );
            }
        }
        if let (false, Some(dc)) = (record, &r.default_class) {
            self.err(
                dc.span(),
                "store.default_class",
                "a `files` store has no tables; set its class with `class` instead",
            );
        }
        if let (true, Some(c)) = (record, &r.class) {
            self.err(
                c.span(),
                "store.class",
                format!("`class` is for `files` stores; a `{k}` store sets `default_class` and each table's `class`"),
            );
        }

        let mut tables = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, t) in r.tables.unwrap_or_default().into_iter().enumerate() {
            let t = t.into_inner();
            let at = |f: &str| format!("store.tables[{i}].{f}");
            let tname = t.name.get_ref().clone();
            if tname.trim().is_empty() {
                self.err(t.name.span(), &at("name"), "the table name is empty");
            } else if let Some(first) = seen.insert(tname.clone(), i) {
                self.err(
                    t.name.span(),
                    &at("name"),
                    format!("table `{tname}` is already listed as store.tables[{first}]; list each table once"),
                );
            }
            let mut nonempty = |v: &S, key: String| {
                if v.get_ref().trim().is_empty() {
                    self.err(v.span(), &key, "the column name is empty");
                }
            };
            if let Some(s) = &t.subject {
                nonempty(s, at("subject"));
            }
            if let Some(p) = &t.period {
                nonempty(&p.column, at("period.column"));
            }
            if let Some(rt) = &t.retain {
                nonempty(&rt.after, at("retain.after"));
            }
            let retain = t.retain.and_then(|rt| {
                let d = self.duration(&rt.for_, &at("retain.for"))?;
                Some(RetainConfig {
                    after: rt.after.into_inner(),
                    for_: d,
                })
            });
            tables.push(TableConfig {
                name: tname,
                class: t.class,
                subject: t.subject.map(Spanned::into_inner),
                period: t.period.map(|p| PeriodConfig {
                    column: p.column.into_inner(),
                    every: p.every,
                }),
                retain,
            });
        }

        StoreConfig {
            kind,
            path: r.path.map(|p| resolve(base, p.get_ref())),
            url: r.url.map(Spanned::into_inner),
            password_file: r.password_file.map(|p| resolve(base, p.get_ref())),
            password_env: r.password_env.map(Spanned::into_inner),
            schemas: r
                .schemas
                .unwrap_or_default()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            root: r.root.map(|p| resolve(base, p.get_ref())),
            tables,
            default_class: r
                .default_class
                .map(Spanned::into_inner)
                .unwrap_or(DataClass::Business),
            epoch: r.epoch.unwrap_or(Epoch::Quarter),
            class: r
                .class
                .map(Spanned::into_inner)
                .unwrap_or(DataClass::Business),
            large_objects: r.large_objects.map(Spanned::into_inner).unwrap_or_default(),
            extension_config: r
                .extension_config
                .map(Spanned::into_inner)
                .unwrap_or_default(),
        }
    }

    fn keys(&mut self, raw: Spanned<RawKeys>, base: &Path) -> KeysConfig {
        let r = raw.into_inner();
        if r.identity.get_ref().trim().is_empty() {
            self.err(
                r.identity.span(),
                "keys.identity",
                "is empty; give the path of the service's age identity file",
            );
        }
        for (i, rc) in r.recipients.iter().enumerate() {
            if let Err(why) = age::x25519::Recipient::from_str(rc.get_ref()) {
                self.err(
                    rc.span(),
                    &format!("keys.recipients[{i}]"),
                    format!("is not an age X25519 recipient ({why}); recipients look like `age1` followed by 58 characters, as printed by `age-keygen -y`"),
                );
            }
        }
        if r.vault.get_ref().is_empty() {
            self.err(
                r.vault.span(),
                "keys.vault",
                "lists no vault location; give at least one URL (two in different places are recommended)",
            );
        }
        let mut seen = HashSet::new();
        for (i, v) in r.vault.get_ref().iter().enumerate() {
            let key = format!("keys.vault[{i}]");
            if let Err(why) = check_url(v.get_ref()) {
                self.err(v.span(), &key, why);
            } else if !seen.insert(Location::parse(v.get_ref())) {
                self.err(
                    v.span(),
                    &key,
                    "is listed twice; a second copy of the vault must be in another location",
                );
            }
        }
        KeysConfig {
            identity: resolve(base, r.identity.get_ref()),
            recipients: r.recipients.into_iter().map(Spanned::into_inner).collect(),
            vault: r
                .vault
                .into_inner()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        }
    }

    fn targets(&mut self, raw: &Spanned<Vec<Spanned<RawTarget>>>) -> Vec<TargetConfig> {
        let list = raw.get_ref();
        if list.is_empty() {
            self.err(
                raw.span(),
                "targets",
                "no target; add a [[targets]] table with a name and url",
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut urls: HashMap<Option<Location>, usize> = HashMap::new();
        for (i, t) in list.iter().enumerate() {
            let t = t.get_ref();
            let at = |f: &str| format!("targets[{i}].{f}");
            let n = t.name.get_ref();
            if let Err(why) = check_name(n) {
                self.err(t.name.span(), &at("name"), why);
            } else if let Some(first) = names.insert(n, i) {
                self.err(
                    t.name.span(),
                    &at("name"),
                    format!("target `{n}` is already defined as targets[{first}]; target names must be unique"),
                );
            }
            let url = t.url.get_ref();
            match check_url(url) {
                Err(why) => self.err(t.url.span(), &at("url"), why),
                Ok(()) => {
                    if let Some(first) = urls.insert(Location::parse(url), i) {
                        self.err(
                            t.url.span(),
                            &at("url"),
                            format!("is the same location as targets[{first}]; a copy must be somewhere else"),
                        );
                    }
                }
            }
            let is_s3 = url.starts_with("s3://");
            for (key, span) in [
                ("endpoint", t.endpoint.as_ref().map(|s| s.span())),
                ("region", t.region.as_ref().map(|s| s.span())),
                ("allow_http", t.allow_http.as_ref().map(|s| s.span())),
            ] {
                if let (false, Some(span)) = (is_s3, span) {
                    self.err(
                        span,
                        &at(key),
                        format!("`{key}` applies to s3:// targets only; remove it"),
                    );
                }
            }
            if let (true, Some(ep)) = (is_s3, &t.endpoint) {
                let allow = t.allow_http.as_ref().map(|a| *a.get_ref());
                self.endpoint(ep, &at("endpoint"), allow);
            }
            out.push(TargetConfig {
                name: n.clone(),
                url: url.clone(),
                offsite: t.offsite,
                worm: t.worm,
                endpoint: t.endpoint.as_ref().map(|s| s.get_ref().clone()),
                region: t.region.as_ref().map(|s| s.get_ref().clone()),
                allow_http: t.allow_http.as_ref().map(|a| *a.get_ref()),
            });
        }
        if out.iter().all(|t| t.offsite) {
            self.err(
                list[0].span(),
                "targets",
                "every target is `offsite = true`, so there is no primary; set `offsite = false` (or remove it) on the target backups are written to first",
            );
        }
        out
    }

    /// An S3 endpoint: an http(s) URL; plain http only if not forbidden.
    fn endpoint(&mut self, ep: &S, key: &str, allow_http: Option<bool>) {
        match url::Url::parse(ep.get_ref()) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" => {
                if allow_http == Some(false) {
                    self.err(
                        ep.span(),
                        key,
                        "is plain http:// but allow_http = false; use https:// or set allow_http = true",
                    );
                }
            }
            Ok(_) | Err(_) => self.err(
                ep.span(),
                key,
                "is not an http:// or https:// URL, e.g. https://s3.eu-west-1.amazonaws.com",
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Checking a folder of policies
// ---------------------------------------------------------------------------

/// The result of checking every policy file (`*.toml`) of a folder: what
/// `custos policy check DIR` prints and what the daemon loads.
#[derive(Clone, Debug, Default)]
pub struct DirCheck {
    /// The files found, sorted.
    pub files: Vec<PathBuf>,
    /// The policies that parsed and validated on their own (a cross-file
    /// problem such as a duplicate name is in `problems` but its policy is
    /// still listed here).
    pub policies: Vec<Policy>,
    /// Every problem, in file order; each has an empty `more`.
    pub problems: Vec<PolicyError>,
}

impl DirCheck {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every `*.toml` file of `dir` (not recursive): each file on its
/// own (see [`Policy::load`]), then across files (duplicate policy names,
/// two policies sharing a target location), then, when `probe_stores` is
/// set, each reachable SQLite store (listed tables and the columns named by
/// `subject`, `period.column` and `retain.after` exist). A store that cannot
/// be opened is not a problem here: it may live on another machine.
///
/// Returns an error only when the folder itself cannot be read.
pub fn check_dir(dir: &Path, probe_stores: bool) -> Result<DirCheck, PolicyError> {
    let unreadable = |why: String| PolicyError {
        file: dir.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: why,
        more: Vec::new(),
    };
    let rd = std::fs::read_dir(dir).map_err(|e| {
        unreadable(format!(
            "cannot read the policy folder ({e}); check the path and its permissions"
        ))
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = DirCheck {
        files: files.clone(),
        ..DirCheck::default()
    };
    if files.is_empty() {
        out.problems.push(unreadable(
            "no policy files (*.toml) in this folder; add one (see docs/POLICY.md)".into(),
        ));
        return Ok(out);
    }
    let mut texts: HashMap<PathBuf, String> = HashMap::new();
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                out.problems.push(PolicyError {
                    file: f.clone(),
                    line: 0,
                    column: 0,
                    key: String::new(),
                    message: format!("cannot read the policy file ({e}); check its permissions"),
                    more: Vec::new(),
                });
                continue;
            }
        };
        match Policy::from_str(&text, f) {
            Ok(p) => {
                if probe_stores {
                    out.problems.extend(probe_store(&p, &text));
                }
                out.policies.push(p);
            }
            Err(e) => out.problems.extend(e.problems().map(|p| PolicyError {
                more: Vec::new(),
                ..p.clone()
            })),
        }
        texts.insert(f.clone(), text);
    }

    // Across files: names and target locations must not be shared.
    let placed = |p: &Policy, key: &str, message: String| {
        let text = texts.get(&p.file).map(String::as_str).unwrap_or("");
        let (line, column) = locate_key(text, key).unwrap_or((0, 0));
        PolicyError {
            file: p.file.clone(),
            line,
            column,
            key: key.to_string(),
            message,
            more: Vec::new(),
        }
    };
    let mut names: HashMap<&str, &Policy> = HashMap::new();
    let mut locations: HashMap<Location, (&Policy, usize)> = HashMap::new();
    let mut cross = Vec::new();
    for p in &out.policies {
        if let Some(first) = names.get(p.name.as_str()) {
            cross.push(placed(
                p,
                "policy.name",
                format!(
                    "policy `{}` is already defined in {}; policy names must be unique (they name job state and leases): rename one",
                    p.name,
                    first.file.display()
                ),
            ));
        } else {
            names.insert(&p.name, p);
        }
        for (i, t) in p.targets.iter().enumerate() {
            let Some(loc) = Location::parse(&t.url) else {
                continue;
            };
            if let Some((q, j)) = locations
                .iter()
                .find(|(l, _)| l.overlaps(&loc))
                .map(|(_, v)| *v)
            {
                cross.push(placed(
                    p,
                    &format!("targets[{i}].url"),
                    format!(
                        "is the same location as (or inside) target `{}` of policy `{}` in {} (targets[{j}]); each policy needs its own repository",
                        q.targets[j].name,
                        q.name,
                        q.file.display()
                    ),
                ));
            } else {
                locations.insert(loc, (p, i));
            }
        }
    }
    out.problems.extend(cross);
    out.problems
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Ok(out)
}

/// Checks a reachable SQLite store against the policy: every listed table
/// exists and has the columns the policy names. Nothing is reported when
/// the store is not a SQLite file on this machine.
fn probe_store(p: &Policy, text: &str) -> Vec<PolicyError> {
    let mut out = Vec::new();
    let (StoreKind::Sqlite, Some(path)) = (p.store.kind, &p.store.path) else {
        return out;
    };
    if !path.is_file() {
        return out;
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = rusqlite::Connection::open_with_flags(path, flags) else {
        return out;
    };
    let mut problem = |key: String, message: String| {
        let (line, column) = locate_key(text, &key).unwrap_or((0, 0));
        out.push(PolicyError {
            file: p.file.clone(),
            line,
            column,
            key,
            message,
            more: Vec::new(),
        });
    };
    for (i, t) in p.store.tables.iter().enumerate() {
        let cols: Vec<String> = match conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .and_then(|mut st| {
                st.query_map([&t.name], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            }) {
            Ok(c) => c,
            Err(_) => continue,
        };
        if cols.is_empty() {
            problem(
                format!("store.tables[{i}].name"),
                format!(
                    "table `{}` does not exist in the store {}; fix the name or remove the entry",
                    t.name,
                    path.display()
                ),
            );
            continue;
        }
        let named = [
            ("subject", t.subject.as_deref()),
            (
                "period.column",
                t.period.as_ref().map(|x| x.column.as_str()),
            ),
            ("retain.after", t.retain.as_ref().map(|x| x.after.as_str())),
        ];
        for (key, col) in named {
            if let Some(c) = col {
                if !cols.iter().any(|x| x == c) {
                    problem(
                        format!("store.tables[{i}].{key}"),
                        format!(
                            "column `{c}` does not exist in table `{}` of the store {}; it has: {}",
                            t.name,
                            path.display(),
                            cols.join(", ")
                        ),
                    );
                }
            }
        }
    }
    out
}

/// The 1-based line and column of key path `key` (`policy.name`,
/// `store.tables[1].subject`) in policy text: where the key or its table
/// header is written.
pub fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut fallback = None;
    for i in 0..b.len() {
        let starts_token = i == 0 || matches!(b[i - 1], b'\n' | b' ' | b'\t' | b'{' | b',' | b'[');
        if !starts_token || b[i].is_ascii_whitespace() || b[i] == b'#' {
            continue;
        }
        let at = key_path_at(text, i);
        if at == key {
            return Some(line_col(text, i));
        }
        if fallback.is_none() && at.starts_with(key) {
            fallback = Some(line_col(text, i));
        }
    }
    fallback
}

/// Where an object-store URL points: scheme, host and path segments, for
/// comparing locations regardless of trailing slashes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Location {
    scheme: String,
    host: String,
    segments: Vec<String>,
}

impl Location {
    fn parse(s: &str) -> Option<Location> {
        let u = url::Url::parse(s).ok()?;
        Some(Location {
            scheme: u.scheme().to_string(),
            host: u.host_str().unwrap_or("").to_string(),
            segments: u
                .path()
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// Same place, or one inside the other.
    fn overlaps(&self, other: &Location) -> bool {
        let n = self.segments.len().min(other.segments.len());
        self.scheme == other.scheme
            && self.host == other.host
            && self.segments[..n] == other.segments[..n]
    }
}

/// Checks a target or vault URL: it parses, has a supported scheme, a
/// bucket where one is needed, and `file://` URLs are absolute.
fn check_url(s: &str) -> Result<(), String> {
    let u = url::Url::parse(s).map_err(|e| {
        format!("`{s}` is not a URL ({e}); write e.g. file:///srv/backup/crm or s3://bucket/prefix")
    })?;
    let scheme = u.scheme();
    if !SUPPORTED_SCHEMES.contains(&scheme) {
        return Err(format!(
            "scheme `{scheme}` is not supported; use one of file, memory, s3, gs, az"
        ));
    }
    match scheme {
        "file" if !s.starts_with("file:///") => Err(format!(
            "`{s}` is not an absolute file URL; write three slashes and an absolute path, e.g. file:///srv/backup/crm"
        )),
        "s3" | "gs" | "az" if u.host_str().unwrap_or("").is_empty() => Err(format!(
            "`{s}` names no bucket; write {scheme}://bucket/prefix"
        )),
        _ => Ok(()),
    }
}

/// `[a-z0-9][a-z0-9_-]*`: names that appear in object paths.
fn check_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name: use lowercase letters, digits, `_` and `-`, starting with a letter or digit"
        ))
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, text[line_start..offset].chars().count() + 1)
}

/// The text between the first pair of backticks after `prefix`, when the
/// message starts with `prefix`.
fn backticked_after<'m>(msg: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = msg.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(f, _)| f)
}

fn join_key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

// ---------------------------------------------------------------------------
// Key paths of byte offsets
// ---------------------------------------------------------------------------

/// The key path (`store.tables[1].retain.for`, `keys.vault[0]`) of whatever
/// sits at byte `offset` of a TOML document: a table header, a key or a
/// value. Best effort on documents with syntax errors.
fn key_path_at(text: &str, offset: usize) -> String {
    let mut s = PathScanner {
        b: text.as_bytes(),
        i: 0,
        end: offset,
    };
    s.document()
}

struct PathScanner<'a> {
    b: &'a [u8],
    i: usize,
    end: usize,
}

impl PathScanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips spaces, tabs and comments; newlines too if `lines`.
    fn skip_blank(&mut self, lines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.i += 1,
                b'\n' if lines => self.i += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn passed(&self, start: usize) -> bool {
        start <= self.end && self.end < self.i
    }

    fn document(&mut self) -> String {
        let mut header: Vec<String> = Vec::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        loop {
            self.skip_blank(true);
            if self.i > self.end || self.peek().is_none() {
                return header.join(".");
            }
            let start = self.i;
            if self.peek() == Some(b'[') {
                let array = self.b.get(self.i + 1) == Some(&b'[');
                self.i += if array { 2 } else { 1 };
                let segs = self.key(b']');
                while matches!(self.peek(), Some(b']')) {
                    self.i += 1;
                }
                let name = segs.join(".");
                // Resolve the header against arrays of tables seen so far.
                let mut resolved = Vec::new();
                for k in 0..segs.len() {
                    let prefix = segs[..=k].join(".");
                    let last = k + 1 == segs.len();
                    if array && last {
                        let n = counts.entry(name.clone()).or_insert(0);
                        *n += 1;
                        resolved.push(format!("{}[{}]", segs[k], *n - 1));
                    } else if let Some(n) = counts.get(&prefix) {
                        resolved.push(format!("{}[{}]", segs[k], n - 1));
                    } else {
                        resolved.push(segs[k].clone());
                    }
                }
                header = resolved;
                if self.passed(start) {
                    return header.join(".");
                }
                continue;
            }
            // key = value
            let key_start = self.i;
            let segs = self.key(b'=');
            let mut path = header.clone();
            path.extend(segs);
            if self.passed(key_start) {
                return path.join(".");
            }
            if self.peek() == Some(b'=') {
                self.i += 1;
            }
            if let Some(found) = self.value(&mut path) {
                return found;
            }
            // Rest of the line.
            self.skip_blank(false);
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.i += 1;
            }
            if self.passed(key_start) {
                return path.join(".");
            }
        }
    }

    /// Reads a dotted key up to `stop` (not consumed) or a line end.
    fn key(&mut self, stop: u8) -> Vec<String> {
        let mut segs = Vec::new();
        let mut cur = String::new();
        self.skip_blank(false);
        while let Some(c) = self.peek() {
            if c == stop || c == b'\n' || c == b'=' || c == b'}' || c == b',' {
                break;
            }
            match c {
                b'"' | b'\'' => {
                    let s = self.i + 1;
                    self.i += 1;
                    while !matches!(self.peek(), None | Some(b'\n')) && self.peek() != Some(c) {
                        self.i += 1;
                    }
                    cur.push_str(&String::from_utf8_lossy(&self.b[s..self.i]));
                    if self.peek() == Some(c) {
                        self.i += 1;
                    }
                }
                b'.' => {
                    segs.push(std::mem::take(&mut cur));
                    self.i += 1;
                }
                b' ' | b'\t' => self.i += 1,
                _ => {
                    cur.push(c as char);
                    self.i += 1;
                }
            }
        }
        segs.push(cur);
        segs
    }

    /// Skips one value; returns the path if `end` falls inside it.
    fn value(&mut self, path: &mut Vec<String>) -> Option<String> {
        self.skip_blank(false);
        let start = self.i;
        let here = |p: &Vec<String>| Some(p.join("."));
        match self.peek()? {
            q @ (b'"' | b'\'') => {
                let triple = self.b[self.i..].starts_with(&[q, q, q]);
                if triple {
                    self.i += 3;
                    while self.i < self.b.len() && !self.b[self.i..].starts_with(&[q, q, q]) {
                        self.i += 1;
                    }
                    self.i = (self.i + 3).min(self.b.len());
                } else {
                    self.i += 1;
                    while let Some(c) = self.peek() {
                        self.i += 1;
                        if c == b'\\' && q == b'"' {
                            self.i += 1;
                        } else if c == q || c == b'\n' {
                            break;
                        }
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut idx = 0;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        None => break,
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => {
                            self.i += 1;
                            idx += 1;
                        }
                        Some(_) => {
                            let before = self.i;
                            let last = path.pop().unwrap_or_default();
                            path.push(format!("{last}[{idx}]"));
                            let r = self.value(path);
                            path.pop();
                            path.push(last);
                            if r.is_some() {
                                return r;
                            }
                            if self.i == before {
                                self.i += 1; // malformed: make progress
                            }
                        }
                    }
                }
            }
            b'{' => {
                self.i += 1;
                loop {
                    self.skip_blank(false);
                    match self.peek() {
                        None | Some(b'\n') => break,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => self.i += 1,
                        Some(_) => {
                            let key_start = self.i;
                            let segs = self.key(b'=');
                            let n = segs.len();
                            path.extend(segs);
                            if self.passed(key_start) {
                                return here(path);
                            }
                            if self.peek() == Some(b'=') {
                                self.i += 1;
                            }
                            if let Some(found) = self.value(path) {
                                return Some(found);
                            }
                            path.truncate(path.len() - n);
                        }
                    }
                }
            }
            _ => {
                while !matches!(self.peek(), None | Some(b',' | b']' | b'}' | b'\n' | b'#')) {
                    self.i += 1;
                }
            }
        }
        if self.passed(start) {
            return here(path);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(text: &str, needle: &str) -> String {
        key_path_at(text, text.find(needle).expect("needle in text"))
    }

    #[test]
    fn sizes_are_whole_numbers_with_a_binary_unit() {
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096B"), Ok(4096));
        for (bad, says) in [
            ("", "not a size"),
            ("MiB", "not a size"),
            ("64", "no unit"),
            ("64MB", "unknown unit `MB`"),
            ("64mib", "unknown unit `mib`"),
            ("1.5GiB", "unknown unit `.5GiB`"),
            ("64 MiB", "unknown unit ` MiB`"),
            ("0MiB", "zero"),
            ("99999999999999999999MiB", "too large"),
            ("17179869184GiB", "too large"),
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn key_paths_of_headers_keys_and_values() {
        let t = "# c\n[policy]\nname = \"x\"\n\n[[store.tables]]\nname = \"a\"\n[[store.tables]]\nname = \"b\"\nretain = { after = \"t\", for = \"1d\" }\n\n[keys]\nvault = [\n  \"file:///v\",  # first\n  \"s3://b/k\",\n]\n\"quoted key\" = 1\n";
        assert_eq!(path_of(t, "[policy]"), "policy");
        assert_eq!(path_of(t, "\"x\""), "policy.name");
        assert_eq!(path_of(t, "name = \"b\""), "store.tables[1].name");
        assert_eq!(path_of(t, "for ="), "store.tables[1].retain.for");
        assert_eq!(path_of(t, "\"1d\""), "store.tables[1].retain.for");
        assert_eq!(path_of(t, "\"s3://b/k\""), "keys.vault[1]");
        assert_eq!(path_of(t, "\"file:///v\""), "keys.vault[0]");
        assert_eq!(path_of(t, "\"quoted key\""), "keys.quoted key");
        assert_eq!(key_path_at(t, 0), "");
    }

    #[test]
    fn line_and_column_count_characters() {
        let t = "a = 1\nb = \"é\"x\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, t.find('x').unwrap()), (2, 8));
        assert_eq!(line_col(t, t.len() + 10), (3, 1));
    }

    #[test]
    fn locations_overlap_by_whole_segments() {
        let a = Location::parse("file:///srv/backup").unwrap();
        assert!(a.overlaps(&Location::parse("file:///srv/backup/crm/").unwrap()));
        assert!(!a.overlaps(&Location::parse("file:///srv/backup2").unwrap()));
        assert!(!a.overlaps(&Location::parse("s3://srv/backup").unwrap()));
    }
}
