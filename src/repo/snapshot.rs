//! Snapshots: `snapshots/<id>`, the root object of one snapshot.
//!
//! JSON, zstd-compressed, sealed under the metadata key (kind "snapshot",
//! name = snapshot id). Written last in a backup: a snapshot that is listed
//! refers only to stored objects.

use super::{compress_meta, decompress_meta, RepoError};
use crate::crypto::{Id, MetaKey};
use crate::store::postgres::PgSchema;
use crate::store::sqlite::SqliteSchema;
use crate::target::Target;
use crate::vault::KeyId;
use serde::{Deserialize, Serialize};

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub id: String,
    pub policy: String,
    /// RFC 3339 UTC time the store was read.
    pub time: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub custos_version: String,
    pub store: StoreInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSnapshot>,
    /// A PostgreSQL store's schema and tables (absent for other stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSnapshot>,
    pub stats: SnapshotStats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreInfo {
    /// `sqlite`, `postgres` or `files`.
    pub kind: String,
    /// The store's path as given in the policy.
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSnapshot {
    pub schema: SqliteSchema,
    pub tables: Vec<TableEntry>,
}

/// The content of a PostgreSQL snapshot: the schema (pg_dump sections,
/// columns, sequence values) and the tables' rows, as for SQLite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSnapshot {
    pub schema: PgSchema,
    pub tables: Vec<TableEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    pub name: String,
    pub class: String,
    pub rows: u64,
    /// Bytes of canonical row encoding.
    pub bytes: u64,
    /// Order-independent keyed checksum of the rows (hex, 16 bytes): the
    /// wrapping sum of `keyed_hash("row", encoded row)[..16]` as u128 LE.
    pub checksum: String,
    pub groups: u64,
    pub pages: Vec<Id>,
    /// The table's read windows in order (FORMAT 3.3a), so the next backup
    /// can reuse the pages of a window whose content did not change. Empty
    /// in snapshots written before windows were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowMark>,
}

/// One read window of a table: what a later backup needs to recognise the
/// same content and reuse the window's tree pages whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowMark {
    /// Keyed digest (hex, 32 bytes; metadata key, domain `window`) of the
    /// window's rows in read order with their group coordinates, the
    /// table, its class and the class epoch label.
    pub digest: String,
    pub rows: u64,
    pub bytes: u64,
    /// Group runs written for the window.
    pub groups: u64,
    /// The window's share of the table checksum (hex, u128 LE).
    pub checksum: String,
    /// How many consecutive ids of the table's `pages` hold its groups.
    pub pages: u64,
    /// Rowid table: the window holds the table's rows with rowid in
    /// `[from, to)` (absent: unbounded). Absent for WITHOUT ROWID tables
    /// and in snapshots written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Keyed digest (hex; metadata key, domain `stretch-v1`) of the b-tree
    /// leaves holding rowids `[from, to)` when the window was read
    /// (FORMAT 4, "Unread stretches"): a later backup whose leaves give the
    /// same digest reuses the window without reading its rows. Absent when
    /// the pages could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stretch: Option<String>,
    /// The packs holding the window's tree pages and every chunk they name
    /// (FORMAT 3.5), so a restore reads the index objects of these packs
    /// alone instead of the whole index. Absent in snapshots written before
    /// it existed; a reader then uses the whole index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<Vec<Id>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSnapshot {
    pub class: String,
    /// The class-epoch key all file contents of this snapshot are under.
    pub key: KeyId,
    pub unit: String,
    pub files: u64,
    pub bytes: u64,
    pub pages: Vec<Id>,
    #[serde(default)]
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotStats {
    pub items: u64,
    pub bytes_read: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_bytes_stored: u64,
    pub packs_written: u64,
    pub duration_ms: u64,
}

pub fn snapshot_path(id: &str) -> String {
    format!("snapshots/{id}")
}

impl Snapshot {
    /// The tables of a record-mode snapshot (SQLite or PostgreSQL); empty
    /// for file mode. Everything that walks a snapshot's table pages
    /// (prune, check, shredding proofs) goes through this, so no kind of
    /// record store is forgotten.
    pub fn record_tables(&self) -> &[TableEntry] {
        if let Some(sq) = &self.sqlite {
            &sq.tables
        } else if let Some(pg) = &self.postgres {
            &pg.tables
        } else {
            &[]
        }
    }

    /// As [`record_tables`](Self::record_tables), to change them (a backup
    /// takes its parent's page lists instead of copying them).
    pub fn record_tables_mut(&mut self) -> &mut [TableEntry] {
        if let Some(sq) = &mut self.sqlite {
            &mut sq.tables
        } else if let Some(pg) = &mut self.postgres {
            &mut pg.tables
        } else {
            &mut []
        }
    }

    pub fn new_id() -> String {
        use rand::RngCore;
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    }

    /// Writes the snapshot object; returns its size in bytes.
    pub async fn store(&self, target: &Target, meta: &MetaKey) -> Result<u64, RepoError> {
        let json = serde_json::to_vec(self).expect("snapshot serializes");
        let sealed = meta.seal("snapshot", &self.id, &compress_meta(&json));
        let bytes = sealed.len() as u64;
        target.put(&snapshot_path(&self.id), sealed.into()).await?;
        Ok(bytes)
    }

    pub fn open(
        object: &str,
        id: &str,
        meta: &MetaKey,
        sealed: &[u8],
    ) -> Result<Snapshot, RepoError> {
        open_as(object, id, meta, sealed)
    }

    pub async fn load(target: &Target, meta: &MetaKey, id: &str) -> Result<Snapshot, RepoError> {
        load_as(target, meta, id).await
    }

    /// Every snapshot on a target, oldest first. Unreadable snapshot objects
    /// are returned as errors beside the good ones.
    pub async fn list(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<Snapshot>, Vec<RepoError>), RepoError> {
        let (good, bad) = Self::list_with_ids(target, meta).await?;
        Ok((good, bad.into_iter().map(|(_, e)| e).collect()))
    }

    /// Like [`list`](Self::list), with the id of each unreadable object.
    pub async fn list_with_ids(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<Snapshot>, Vec<(String, RepoError)>), RepoError> {
        read_all(target, meta).await
    }

    /// The head ([`SnapshotHead`]) of every snapshot on a target, oldest
    /// first, with the id of each unreadable object. Choosing among many
    /// snapshots reads these, then loads only the one chosen.
    pub async fn heads_with_ids(
        target: &Target,
        meta: &MetaKey,
    ) -> Result<(Vec<SnapshotHead>, Vec<(String, RepoError)>), RepoError> {
        read_all(target, meta).await
    }

    /// Finds a snapshot on a target by `latest`, an id or a unique id prefix,
    /// refusing to guess when a snapshot object is unreadable: `latest`
    /// could silently be an older snapshot, and an id may name the damaged
    /// object itself (then its own error is returned).
    pub async fn find(target: &Target, meta: &MetaKey, which: &str) -> Result<Snapshot, RepoError> {
        let (good, mut bad) = Self::heads_with_ids(target, meta).await?;
        if which == "latest" {
            if !bad.is_empty() {
                let names: Vec<String> = bad.iter().map(|(_, e)| e.to_string()).collect();
                return Err(RepoError::malformed(
                    format!("{}:snapshots/", target.name),
                    format!(
                        "cannot tell which snapshot is the latest, {} snapshot object(s) are unreadable: {}; \
                         name a snapshot id (custos snapshots lists the readable ones)",
                        bad.len(),
                        names.join("; ")
                    ),
                ));
            }
        } else if let Some(pos) = bad.iter().position(|(id, _)| id.starts_with(which)) {
            if !good.iter().any(|s| s.id.starts_with(which)) {
                return Err(bad.swap_remove(pos).1);
            }
            return Err(RepoError::AmbiguousSnapshot(which.into()));
        }
        let id = &select_by(&good, which, |h| &h.id)?.id;
        Self::load(target, meta, id).await
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix.
    pub fn select<'a>(list: &'a [Snapshot], which: &str) -> Result<&'a Snapshot, RepoError> {
        select_by(list, which, |s| &s.id)
    }
}

/// The fields of a snapshot object that say which snapshot it is, read
/// without decoding the rest: a snapshot at 1 GiB lists some 67 k tree
/// pages, and a target holds many snapshots.
#[derive(Clone, Debug, Deserialize)]
pub struct SnapshotHead {
    pub version: u32,
    pub id: String,
    pub policy: String,
    /// RFC 3339 UTC time the store was read.
    pub time: String,
}

/// What both a [`Snapshot`] and its [`SnapshotHead`] say of themselves:
/// (format version, id, time).
trait Named: serde::de::DeserializeOwned {
    fn named(&self) -> (u32, &str, &str);
}

impl Named for Snapshot {
    fn named(&self) -> (u32, &str, &str) {
        (self.version, &self.id, &self.time)
    }
}

impl Named for SnapshotHead {
    fn named(&self) -> (u32, &str, &str) {
        (self.version, &self.id, &self.time)
    }
}

/// Every snapshot object on a target read as `T`, oldest first, and the
/// id of each unreadable one with why.
async fn read_all<T: Named>(
    target: &Target,
    meta: &MetaKey,
) -> Result<(Vec<T>, Vec<(String, RepoError)>), RepoError> {
    let mut good: Vec<T> = Vec::new();
    let mut bad = Vec::new();
    for (path, _) in target.list("snapshots/").await? {
        let id = path.rsplit('/').next().unwrap_or("").to_string();
        match load_as(target, meta, &id).await {
            Ok(s) => good.push(s),
            Err(e) => bad.push((id, e)),
        }
    }
    good.sort_by(|a, b| {
        let ((_, ia, ta), (_, ib, tb)) = (a.named(), b.named());
        ta.cmp(tb).then(ia.cmp(ib))
    });
    Ok((good, bad))
}

/// Reads the snapshot object `id` as `T`.
async fn load_as<T: Named>(target: &Target, meta: &MetaKey, id: &str) -> Result<T, RepoError> {
    let path = snapshot_path(id);
    let bytes = target.get(&path).await?;
    open_as(&format!("{}:{}", target.name, path), id, meta, &bytes)
}

/// Opens a sealed snapshot object as `T`; it must be of this format's
/// version and name itself.
fn open_as<T: Named>(
    object: &str,
    id: &str,
    meta: &MetaKey,
    sealed: &[u8],
) -> Result<T, RepoError> {
    let t: T = open_json(object, id, meta, sealed)?;
    let (version, named, _) = t.named();
    if version != SNAPSHOT_VERSION {
        return Err(RepoError::malformed(
            object,
            format!("snapshot version {version}"),
        ));
    }
    if named != id {
        return Err(RepoError::malformed(object, "names another snapshot"));
    }
    Ok(t)
}

/// Opens a sealed snapshot object into `T` (all of it, or its head).
fn open_json<T: serde::de::DeserializeOwned>(
    object: &str,
    id: &str,
    meta: &MetaKey,
    sealed: &[u8],
) -> Result<T, RepoError> {
    let z = meta
        .open("snapshot", id, sealed)
        .map_err(|source| RepoError::Crypto {
            object: object.into(),
            source,
        })?;
    let json = decompress_meta(object, &z)?;
    serde_json::from_slice(&json).map_err(|e| RepoError::malformed(object, e.to_string()))
}

/// The entry of `list` (oldest first) named by `latest`, a full id or a
/// unique id prefix.
fn select_by<'a, T>(
    list: &'a [T],
    which: &str,
    id: impl Fn(&T) -> &str,
) -> Result<&'a T, RepoError> {
    if which == "latest" {
        return list
            .last()
            .ok_or_else(|| RepoError::NoSnapshot(which.into()));
    }
    let m: Vec<_> = list.iter().filter(|s| id(s).starts_with(which)).collect();
    match m.len() {
        0 => Err(RepoError::NoSnapshot(which.into())),
        1 => Ok(m[0]),
        _ => Err(RepoError::AmbiguousSnapshot(which.into())),
    }
}
