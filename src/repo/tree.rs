//! Tree pages: `trees/<xx>/<tree id>`, the content-addressed nodes under a
//! snapshot (snapshot → table → pages of groups; or snapshot → pages of
//! files).
//!
//! A page is JSON, zstd-compressed, sealed under the metadata key (kind
//! "tree", name = tree id). The tree id is a keyed hash of the plaintext, so
//! an unchanged page keeps its id and is not stored again. Page boundaries are
//! content-defined (from group ids or path hashes), so one changed group
//! rewrites one page, not every page after it.

use super::{compress_meta, decompress_meta, RepoError};
use crate::crypto::{Id, MetaKey};
use crate::store::files::FileEntry;
use crate::target::Target;
use crate::vault::KeyId;
use serde::{Deserialize, Serialize};

pub const PAGE_VERSION: u32 = 1;
/// Boundary when the first two bytes of the id modulo this are zero.
pub const GROUP_PAGE_AVG: u16 = 256;
pub const GROUP_PAGE_MAX: usize = 4096;
pub const FILE_PAGE_AVG: u16 = 256;
pub const FILE_PAGE_MAX: usize = 4096;

/// One shred group's share of a table in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// Group id (derived from the group key; unlinkable without it).
    pub g: Id,
    /// Subject key id, if the group has a subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<KeyId>,
    /// Time key id (period or class-epoch key).
    pub t: KeyId,
    /// The time unit: `period:<class>:<label>` or `epoch:<class>:<label>`.
    pub u: String,
    pub rows: u64,
    pub bytes: u64,
    pub chunks: Vec<Id>,
}

/// One file (or directory or link) of a file-mode snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    #[serde(flatten)]
    pub entry: FileEntry,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Page {
    Groups {
        version: u32,
        table: String,
        groups: Vec<GroupEntry>,
    },
    Files {
        version: u32,
        files: Vec<FileRecord>,
    },
}

pub fn tree_path(id: &Id) -> String {
    let h = id.to_hex();
    format!("trees/{}/{}", &h[..2], h)
}

impl Page {
    /// Seals the page: returns its id and sealed bytes.
    pub fn seal(&self, meta: &MetaKey) -> (Id, Vec<u8>) {
        let json = serde_json::to_vec(self).expect("page serializes");
        let id = meta.keyed_hash("tree", &json);
        let sealed = meta.seal("tree", &id.to_hex(), &compress_meta(&json));
        (id, sealed)
    }

    pub fn open(object: &str, id: &Id, meta: &MetaKey, sealed: &[u8]) -> Result<Page, RepoError> {
        let z = meta
            .open("tree", &id.to_hex(), sealed)
            .map_err(|source| RepoError::Crypto {
                object: object.into(),
                source,
            })?;
        let json = decompress_meta(object, &z)?;
        if meta.keyed_hash("tree", &json) != *id {
            return Err(RepoError::malformed(
                object,
                "content does not match its id",
            ));
        }
        let page: Page = serde_json::from_slice(&json)
            .map_err(|e| RepoError::malformed(object, e.to_string()))?;
        let v = match &page {
            Page::Groups { version, .. } | Page::Files { version, .. } => *version,
        };
        if v != PAGE_VERSION {
            return Err(RepoError::malformed(object, format!("page version {v}")));
        }
        Ok(page)
    }

    pub async fn load(target: &Target, meta: &MetaKey, id: &Id) -> Result<Page, RepoError> {
        let path = tree_path(id);
        let bytes = target.get(&path).await?;
        Page::open(&format!("{}:{}", target.name, path), id, meta, &bytes)
    }
}

/// Cuts a stream of group entries into pages: a page never spans two time
/// units (so the pages of a closed month stay the same snapshot after
/// snapshot), and within a unit pages end at content-defined boundaries.
#[derive(Default)]
pub struct GroupPager {
    cur: Vec<GroupEntry>,
}

impl GroupPager {
    /// Adds an entry; returns the pages completed by it (zero, one or two).
    pub fn push(&mut self, e: GroupEntry) -> Vec<Vec<GroupEntry>> {
        let mut done = Vec::new();
        if self.cur.last().is_some_and(|l| l.u != e.u) {
            done.push(std::mem::take(&mut self.cur));
        }
        let b = u16::from_le_bytes([e.g.0[0], e.g.0[1]]) % GROUP_PAGE_AVG == 0;
        self.cur.push(e);
        if b || self.cur.len() >= GROUP_PAGE_MAX {
            done.push(std::mem::take(&mut self.cur));
        }
        done
    }

    pub fn finish(&mut self) -> Option<Vec<GroupEntry>> {
        if self.cur.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.cur))
        }
    }
}

/// Cuts a stream of file records into pages at content-defined boundaries.
#[derive(Default)]
pub struct FilePager {
    cur: Vec<FileRecord>,
}

impl FilePager {
    pub fn push(&mut self, r: FileRecord) -> Option<Vec<FileRecord>> {
        let h = blake3::hash(r.entry.path.as_bytes());
        let b = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]) % FILE_PAGE_AVG == 0;
        self.cur.push(r);
        if b || self.cur.len() >= FILE_PAGE_MAX {
            Some(std::mem::take(&mut self.cur))
        } else {
            None
        }
    }

    pub fn finish(&mut self) -> Option<Vec<FileRecord>> {
        if self.cur.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.cur))
        }
    }
}
