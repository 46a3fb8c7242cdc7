//! File mode: a directory tree walked for backup and rebuilt on restore.
//!
//! The engine walks a tree with [`walk`], reads file contents with
//! [`open_entry`] (chunking and encryption happen elsewhere), stores the
//! [`FileEntry`] list in the manifest, and on restore feeds the entries and
//! contents back through a [`FilesRestorer`].
//!
//! # Manifest paths
//! A [`FileEntry::path`] is relative to the store root, components joined by
//! `/`. Names are stored as UTF-8 text with one exact, reversible escape (see
//! [`escape_name`]): `%` is written `%25`, and every byte that is not part of
//! valid UTF-8 is written `%XX` (two uppercase hex digits). Nothing else is
//! escaped. Only the canonical form is accepted back ([`unescape`]), so one
//! file name has exactly one manifest spelling. Symlink targets use the same
//! escape.
//!
//! # Safety of restore
//! Manifests may be hostile. Every path goes through [`safe_relative`]
//! (relative, no `..`, `.` or empty components, no NUL, canonical escapes),
//! and the restorer never writes through a symlink: each parent component is
//! checked with `lstat` to be a real directory, new files are created with
//! `O_CREAT|O_EXCL` (which refuses an existing name, symlink or not), and
//! directories are re-identified by device and inode before their mode and
//! mtime are set. A root the restorer creates is made with mode 0700.
//! Concurrent hostile writers inside the restore root (or inside the source
//! tree during backup) are outside this model: without `openat` a parent
//! swapped between the check and the open is not detected.
//!
//! # Metadata kept
//! Permission bits (`mode & 0o7777`), modification time in nanoseconds, size
//! of regular files, and symlink targets verbatim. Not kept: owners, access
//! times, extended attributes, ACLs, hard-link identity (each link is a
//! separate file). Symlink mtimes are recorded but not restored (the standard
//! library cannot set the time of a link itself). Setuid and setgid bits are
//! dropped on restore unless [`FilesRestorer::keep_setid`] is set.

use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors of file mode. Paths are given in manifest form (escaped, relative
/// to the root) or as the operator-supplied root; never file contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// An operating-system call failed on a path.
    #[error("cannot {op} {path:?}: {source}; check that it exists and that custos may access it")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A manifest path or link target is not acceptable.
    #[error("unsafe or malformed manifest path {path:?}: {reason}; the manifest is corrupt or hostile, refusing it")]
    UnsafePath { path: String, reason: &'static str },
    /// A socket, fifo or device was found during a walk.
    #[error("{path:?} is a {kind}, which file mode cannot back up; remove it or enable skipping special files")]
    Special { path: String, kind: &'static str },
    /// The root given is not a directory.
    #[error("store root {path:?} is not a directory; point the policy at a directory")]
    RootNotDirectory { path: String },
    /// The restore root exists and has contents.
    #[error(
        "restore root {path:?} is not empty; restore into a new or empty directory, or force it"
    )]
    RootNotEmpty { path: String },
    /// A component on the way to an entry is a symlink; writing or reading
    /// through it could leave the root.
    #[error("{component:?} on the way to {path:?} is a symlink; refusing to go through it")]
    SymlinkInPath { path: String, component: String },
    /// A component on the way to an entry is not a directory.
    #[error(
        "{component:?} on the way to {path:?} is not a directory; the manifest is inconsistent"
    )]
    NotADirectory { path: String, component: String },
    /// The restore target already exists (duplicate entry, or a non-empty root without force).
    #[error(
        "{path:?} already exists in the restore root; duplicate manifest entry or a non-empty root"
    )]
    Exists { path: String },
    /// The bytes written for a file differ from the size in its entry.
    #[error("{path:?}: {written} bytes written, the manifest says {expected}; the backup is incomplete or corrupt (partial file removed)")]
    SizeMismatch {
        path: String,
        expected: u64,
        written: u64,
    },
    /// An entry was passed to the wrong method, or lacks a required field.
    #[error("entry {path:?}: {reason}")]
    BadEntry { path: String, reason: &'static str },
    /// The restorer was called out of order.
    #[error("restorer misuse: {0}")]
    State(&'static str),
    /// A path changed between being recorded and being opened.
    #[error("{path:?} changed while being read ({what}); run the backup again")]
    Changed { path: String, what: &'static str },
    /// A time cannot be represented.
    #[error("{path:?}: modification time out of the representable range")]
    TimeOutOfRange { path: String },
}

fn io_err(op: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> FilesError {
    let path = path.into();
    move |source| FilesError::Io { op, path, source }
}

fn unsafe_path(path: &str, reason: &'static str) -> FilesError {
    FilesError::UnsafePath {
        path: path.to_string(),
        reason,
    }
}

/// What a [`FileEntry`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

/// One directory, regular file or symlink of a file-mode store, as stored in
/// the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated path in escaped form (see [`escape_name`]).
    pub path: String,
    /// Directory, regular file or symlink.
    pub kind: FileKind,
    /// Permission bits, `st_mode & 0o7777`.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch (may be negative).
    pub mtime_ns: i64,
    /// Content length of a regular file; 0 for directories and symlinks.
    pub size: u64,
    /// Symlink target, verbatim in escaped form; `None` for other kinds.
    pub link: Option<String>,
}

/// The result of [`walk`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Every directory, file and symlink under the root (not the root
    /// itself), sorted by the bytes of `path`.
    pub entries: Vec<FileEntry>,
    /// Escaped paths of special files left out (only with `skip_special`), sorted.
    pub skipped: Vec<String>,
}

/// Escapes a file name (or any byte string) into manifest text: valid UTF-8
/// is kept except `%`, which becomes `%25`; each byte of an invalid UTF-8
/// sequence becomes `%XX` with uppercase hex digits.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape_name`]. Only the canonical spelling is accepted: a `%`
/// not followed by two uppercase hex digits, or an escape of a byte that
/// [`escape_name`] would have left alone (like `%41` or `%2F`), is an error.
pub fn unescape(s: &str) -> Result<Vec<u8>, FilesError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            let hi = b.get(i + 1).copied().and_then(hex);
            let lo = b.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(unsafe_path(s, "bad %-escape (expected %XX, uppercase hex)")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if escape_name(&out) != s {
        return Err(unsafe_path(s, "escape is not in canonical form"));
    }
    Ok(out)
}

/// Validates a manifest path: relative, non-empty, no `..`, no empty or `.`
/// components, no NUL, not absolute, canonical escapes whose decoded bytes
/// contain no `/` or NUL. Returns the components as written in the manifest
/// (still escaped: decode each with [`unescape`] to get the file name).
pub fn safe_relative(path: &str) -> Result<Vec<String>, FilesError> {
    Ok(decode_path(path)?.0)
}

/// [`safe_relative`] plus the decoded file-system names.
fn decode_path(path: &str) -> Result<(Vec<String>, Vec<OsString>), FilesError> {
    if path.is_empty() {
        return Err(unsafe_path(path, "empty path"));
    }
    if path.contains('\0') {
        return Err(unsafe_path(path, "contains NUL"));
    }
    if path.starts_with('/') {
        return Err(unsafe_path(path, "absolute path"));
    }
    let mut comps = Vec::new();
    let mut names = Vec::new();
    for c in path.split('/') {
        match c {
            "" => return Err(unsafe_path(path, "empty component")),
            "." => return Err(unsafe_path(path, "'.' component")),
            ".." => return Err(unsafe_path(path, "'..' component")),
            _ => {}
        }
        let raw = unescape(c).map_err(|_| unsafe_path(path, "bad escape in a component"))?;
        if raw.contains(&b'/') || raw.contains(&0) || raw == b"." || raw == b".." {
            return Err(unsafe_path(path, "escaped separator, NUL or dot name"));
        }
        comps.push(c.to_string());
        names.push(OsString::from_vec(raw));
    }
    Ok((comps, names))
}

/// Nanoseconds since the epoch of a metadata's mtime.
fn mtime_of(m: &fs::Metadata) -> Option<i64> {
    m.mtime()
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(m.mtime_nsec()))
}

fn system_time(ns: i64) -> Option<SystemTime> {
    if ns >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_nanos(ns as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_nanos(ns.unsigned_abs()))
    }
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "file of unknown type"
    }
}

/// Walks `root` (not following symlinks below it), in a deterministic order:
/// sorted by the bytes of the escaped path, so a directory comes before its
/// contents (its path is a prefix of theirs). A subtree is not necessarily
/// contiguous (`a-b` sorts between `a` and `a/x`).
///
/// Unreadable directories, and entries that vanish or cannot be inspected
/// during the walk, are errors naming the path; nothing is skipped silently.
/// Unreadable regular files are reported by [`open_entry`]. Sockets, fifos and
/// devices are an error unless `skip_special`, in which case they are listed
/// in [`Walk::skipped`]. The root itself may be a symlink to a directory; it
/// is not part of the entries. Mount points are crossed.
pub fn walk(root: &Path, skip_special: bool) -> Result<Walk, FilesError> {
    let root_name = root.display().to_string();
    let meta = fs::metadata(root).map_err(io_err("read the store root", &root_name))?;
    if !meta.is_dir() {
        return Err(FilesError::RootNotDirectory { path: root_name });
    }
    let mut out = Walk::default();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let shown = if rel.is_empty() { "." } else { rel.as_str() };
        let rd = fs::read_dir(&dir).map_err(io_err("list directory", shown))?;
        for de in rd {
            let de = de.map_err(io_err("list directory", shown))?;
            let name = de.file_name();
            let esc = escape_name(name.as_bytes());
            let child_rel = if rel.is_empty() {
                esc
            } else {
                format!("{rel}/{esc}")
            };
            let child = dir.join(&name);
            let m = fs::symlink_metadata(&child).map_err(io_err("inspect", &child_rel))?;
            let ft = m.file_type();
            let mtime_ns = mtime_of(&m).ok_or_else(|| FilesError::TimeOutOfRange {
                path: child_rel.clone(),
            })?;
            let mut entry = FileEntry {
                path: child_rel.clone(),
                kind: FileKind::File,
                mode: m.mode() & 0o7777,
                mtime_ns,
                size: 0,
                link: None,
            };
            if ft.is_dir() {
                entry.kind = FileKind::Dir;
                stack.push((child, child_rel));
            } else if ft.is_file() {
                entry.size = m.len();
            } else if ft.is_symlink() {
                let target = fs::read_link(&child).map_err(io_err("read symlink", &child_rel))?;
                entry.kind = FileKind::Symlink;
                entry.link = Some(escape_name(target.as_os_str().as_bytes()));
            } else if skip_special {
                out.skipped.push(child_rel);
                continue;
            } else {
                return Err(FilesError::Special {
                    path: child_rel,
                    kind: special_kind(&ft),
                });
            }
            out.entries.push(entry);
        }
    }
    out.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    out.skipped.sort_unstable();
    Ok(out)
}

/// Joins a validated manifest path to `root`, checking (with `lstat`) that
/// every parent component is a real directory, not a symlink. The last
/// component is not inspected.
fn checked_path(root: &Path, path: &str) -> Result<PathBuf, FilesError> {
    let (comps, names) = decode_path(path)?;
    let mut cur = root.to_path_buf();
    for (i, name) in names.iter().enumerate() {
        cur.push(name);
        if i + 1 == names.len() {
            break;
        }
        let m = fs::symlink_metadata(&cur).map_err(io_err("inspect", comps[..=i].join("/")))?;
        check_parent(&m, path, &comps[..=i])?;
    }
    Ok(cur)
}

fn check_parent(m: &fs::Metadata, path: &str, prefix: &[String]) -> Result<(), FilesError> {
    let ft = m.file_type();
    if ft.is_symlink() {
        return Err(FilesError::SymlinkInPath {
            path: path.to_string(),
            component: prefix.join("/"),
        });
    }
    if !ft.is_dir() {
        return Err(FilesError::NotADirectory {
            path: path.to_string(),
            component: prefix.join("/"),
        });
    }
    Ok(())
}

/// Opens a regular file of a walk for reading its contents. Refuses entries
/// that are not files, paths through symlinks, and a path that is no longer
/// the regular file it was (checked by device and inode after opening).
pub fn open_entry(root: &Path, entry: &FileEntry) -> Result<File, FilesError> {
    if entry.kind != FileKind::File {
        return Err(FilesError::BadEntry {
            path: entry.path.clone(),
            reason: "only regular files have contents to open",
        });
    }
    let abs = checked_path(root, &entry.path)?;
    let before = fs::symlink_metadata(&abs).map_err(io_err("inspect", &entry.path))?;
    if !before.file_type().is_file() {
        return Err(FilesError::Changed {
            path: entry.path.clone(),
            what: "no longer a regular file",
        });
    }
    let f = File::open(&abs).map_err(io_err("open for reading", &entry.path))?;
    let after = f.metadata().map_err(io_err("inspect", &entry.path))?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) || !after.is_file() {
        return Err(FilesError::Changed {
            path: entry.path.clone(),
            what: "replaced while opening",
        });
    }
    Ok(f)
}

/// True if the path at `root/entry.path` is still the same kind and has the
/// size (regular files), target (symlinks) and mtime recorded. Any error
/// (missing, unsafe path, unreadable) counts as changed.
pub fn unchanged(root: &Path, entry: &FileEntry) -> bool {
    let Ok(abs) = checked_path(root, &entry.path) else {
        return false;
    };
    let Ok(m) = fs::symlink_metadata(&abs) else {
        return false;
    };
    let ft = m.file_type();
    let same_kind = match entry.kind {
        FileKind::File => ft.is_file() && m.len() == entry.size,
        FileKind::Dir => ft.is_dir(),
        FileKind::Symlink => {
            ft.is_symlink()
                && fs::read_link(&abs)
                    .ok()
                    .map(|t| escape_name(t.as_os_str().as_bytes()))
                    == entry.link
        }
    };
    same_kind && mtime_of(&m) == Some(entry.mtime_ns)
}

/// A regular file being written by the restorer.
struct OpenFile {
    file: File,
    abs: PathBuf,
    path: String,
    expected: u64,
    written: u64,
    mode: u32,
    mtime_ns: i64,
}

/// A directory whose mode and mtime are applied by [`FilesRestorer::finish`].
struct DirFixup {
    abs: PathBuf,
    path: String,
    depth: usize,
    mode: u32,
    mtime_ns: i64,
    dev: u64,
    ino: u64,
}

/// Rebuilds a tree from manifest entries, refusing anything that would
/// leave the root. Call in manifest order: [`dir`](Self::dir) for
/// directories, [`begin_file`](Self::begin_file) / [`write`](Self::write) /
/// [`end_file`](Self::end_file) for files, [`symlink`](Self::symlink) for
/// links, then [`finish`](Self::finish).
///
/// Missing parent directories are created with mode 0700 (and keep it unless
/// their own entry follows). Directories stay 0700 until `finish`, so
/// read-only directories can be filled. Restored data is not fsynced. After
/// an error the root holds a partial restore; discard it.
pub struct FilesRestorer {
    root: PathBuf,
    force: bool,
    keep_setid: bool,
    open: Option<OpenFile>,
    dirs: Vec<DirFixup>,
}

impl std::fmt::Debug for FilesRestorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesRestorer")
            .field("root", &self.root)
            .field("force", &self.force)
            .field("open", &self.open.as_ref().map(|o| &o.path))
            .field("dirs", &self.dirs.len())
            .finish()
    }
}

impl FilesRestorer {
    /// Prepares a restore into `root`, which must not exist (it is created
    /// with mode 0700, parents included) or be an empty directory. With
    /// `force` a non-empty directory is accepted: existing files and symlinks
    /// at entry paths are replaced (unlinked, never followed), existing
    /// directories reused; symlinked parents are still refused.
    pub fn create(root: &Path, force: bool) -> Result<Self, FilesError> {
        let shown = root.display().to_string();
        match fs::symlink_metadata(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(io_err("create the restore root", &shown))?,
            Err(e) => return Err(io_err("inspect the restore root", &shown)(e)),
            Ok(_) => {
                let m = fs::metadata(root).map_err(io_err("inspect the restore root", &shown))?;
                if !m.is_dir() {
                    return Err(FilesError::RootNotDirectory { path: shown });
                }
                let mut rd = fs::read_dir(root).map_err(io_err("list the restore root", &shown))?;
                if !force && rd.next().is_some() {
                    return Err(FilesError::RootNotEmpty { path: shown });
                }
            }
        }
        let root = fs::canonicalize(root).map_err(io_err("resolve the restore root", &shown))?;
        Ok(FilesRestorer {
            root,
            force,
            keep_setid: false,
            open: None,
            dirs: Vec::new(),
        })
    }

    /// Whether setuid and setgid bits are restored (default: dropped, so a
    /// hostile manifest restored by root cannot plant a setuid program).
    pub fn keep_setid(mut self, keep: bool) -> Self {
        self.keep_setid = keep;
        self
    }

    fn mode_bits(&self, mode: u32) -> u32 {
        if self.keep_setid {
            mode & 0o7777
        } else {
            mode & 0o1777
        }
    }

    fn idle(&self) -> Result<(), FilesError> {
        if self.open.is_some() {
            return Err(FilesError::State(
                "a file is still open; call end_file first",
            ));
        }
        Ok(())
    }

    fn expect_kind(e: &FileEntry, kind: FileKind) -> Result<(), FilesError> {
        if e.kind != kind {
            return Err(FilesError::BadEntry {
                path: e.path.clone(),
                reason: "entry kind does not match the restorer call",
            });
        }
        Ok(())
    }

    /// Resolves `path` under the root: validates it, creates missing parents,
    /// refuses symlinked or non-directory parents, and clears the last
    /// component. Returns the absolute path and whether an existing directory
    /// is there (only possible when `want_dir`).
    fn prepare(&self, path: &str, want_dir: bool) -> Result<(PathBuf, bool), FilesError> {
        let (comps, names) = decode_path(path)?;
        let mut cur = self.root.clone();
        let last = names.len() - 1;
        for (i, name) in names.iter().enumerate() {
            cur.push(name);
            let prefix = comps[..=i].join("/");
            let m = match fs::symlink_metadata(&cur) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if i == last {
                        return Ok((cur, false));
                    }
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&cur)
                        .map_err(io_err("create directory", &prefix))?;
                    fs::symlink_metadata(&cur).map_err(io_err("inspect", &prefix))?
                }
                Err(e) => return Err(io_err("inspect", &prefix)(e)),
            };
            if i < last {
                check_parent(&m, path, &comps[..=i])?;
                continue;
            }
            // The last component exists already.
            let ft = m.file_type();
            if ft.is_dir() {
                if want_dir {
                    return Ok((cur, true));
                }
                return Err(FilesError::Exists { path: prefix });
            }
            if !self.force {
                return Err(FilesError::Exists { path: prefix });
            }
            // Unlinks a file or the symlink itself, never its target.
            fs::remove_file(&cur).map_err(io_err("replace", &prefix))?;
        }
        Ok((cur, false))
    }

    /// Creates a directory (or reuses an existing real directory); its mode
    /// and mtime are applied by [`finish`](Self::finish).
    pub fn dir(&mut self, e: &FileEntry) -> Result<(), FilesError> {
        self.idle()?;
        Self::expect_kind(e, FileKind::Dir)?;
        system_time(e.mtime_ns).ok_or_else(|| FilesError::TimeOutOfRange {
            path: e.path.clone(),
        })?;
        let (abs, existed) = self.prepare(&e.path, true)?;
        if !existed {
            DirBuilder::new()
                .mode(0o700)
                .create(&abs)
                .map_err(io_err("create directory", &e.path))?;
        }
        let m = fs::symlink_metadata(&abs).map_err(io_err("inspect", &e.path))?;
        if !m.file_type().is_dir() {
            return Err(FilesError::Changed {
                path: e.path.clone(),
                what: "not a directory right after creation",
            });
        }
        self.dirs.push(DirFixup {
            abs,
            path: e.path.clone(),
            depth: e.path.split('/').count(),
            mode: self.mode_bits(e.mode),
            mtime_ns: e.mtime_ns,
            dev: m.dev(),
            ino: m.ino(),
        });
        Ok(())
    }

    /// Starts a regular file: creates it new (`O_EXCL`, never through a
    /// symlink). Contents follow through [`write`](Self::write).
    pub fn begin_file(&mut self, e: &FileEntry) -> Result<(), FilesError> {
        self.idle()?;
        Self::expect_kind(e, FileKind::File)?;
        system_time(e.mtime_ns).ok_or_else(|| FilesError::TimeOutOfRange {
            path: e.path.clone(),
        })?;
        let (abs, _) = self.prepare(&e.path, false)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&abs)
            .map_err(io_err("create file", &e.path))?;
        self.open = Some(OpenFile {
            file,
            abs,
            path: e.path.clone(),
            expected: e.size,
            written: 0,
            mode: self.mode_bits(e.mode),
            mtime_ns: e.mtime_ns,
        });
        Ok(())
    }

    /// Appends contents to the file begun last. Writing past the size in the
    /// entry is an error.
    pub fn write(&mut self, data: &[u8]) -> Result<(), FilesError> {
        let o = self
            .open
            .as_mut()
            .ok_or(FilesError::State("write without begin_file"))?;
        let total = o.written.saturating_add(data.len() as u64);
        if total > o.expected {
            let (path, expected) = (o.path.clone(), o.expected);
            let o = self.open.take().expect("checked above");
            let _ = fs::remove_file(&o.abs);
            return Err(FilesError::SizeMismatch {
                path,
                expected,
                written: total,
            });
        }
        o.file
            .write_all(data)
            .map_err(io_err("write", o.path.clone()))?;
        o.written = total;
        Ok(())
    }

    /// Ends the current file: checks the byte count against the entry's size
    /// (removing the partial file on a mismatch), then sets mode and mtime.
    pub fn end_file(&mut self) -> Result<(), FilesError> {
        let o = self
            .open
            .take()
            .ok_or(FilesError::State("end_file without begin_file"))?;
        if o.written != o.expected {
            let _ = fs::remove_file(&o.abs);
            return Err(FilesError::SizeMismatch {
                path: o.path,
                expected: o.expected,
                written: o.written,
            });
        }
        let t = system_time(o.mtime_ns).ok_or_else(|| FilesError::TimeOutOfRange {
            path: o.path.clone(),
        })?;
        o.file
            .set_permissions(Permissions::from_mode(o.mode))
            .map_err(io_err("set the mode of", o.path.clone()))?;
        o.file
            .set_times(FileTimes::new().set_modified(t))
            .map_err(io_err("set the mtime of", o.path.clone()))?;
        Ok(())
    }

    /// Creates a symlink with the entry's target, verbatim (absolute and `..`
    /// targets are kept; the restorer itself never follows a link). The
    /// link's own mode and mtime are not restored.
    pub fn symlink(&mut self, e: &FileEntry) -> Result<(), FilesError> {
        self.idle()?;
        Self::expect_kind(e, FileKind::Symlink)?;
        let link = e.link.as_deref().ok_or_else(|| FilesError::BadEntry {
            path: e.path.clone(),
            reason: "symlink entry without a target",
        })?;
        let target = unescape(link)?;
        if target.is_empty() || target.contains(&0) {
            return Err(unsafe_path(link, "empty symlink target or NUL in it"));
        }
        let (abs, _) = self.prepare(&e.path, false)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
            .map_err(io_err("create symlink", &e.path))?;
        Ok(())
    }

    /// Applies directory modes and mtimes, deepest first (so a read-only
    /// directory is locked only after its contents are in place), checking
    /// each is still the directory created.
    pub fn finish(mut self) -> Result<(), FilesError> {
        self.idle()?;
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &self.dirs {
            let f = File::open(&d.abs).map_err(io_err("open directory", &d.path))?;
            let m = f.metadata().map_err(io_err("inspect", &d.path))?;
            if (m.dev(), m.ino()) != (d.dev, d.ino) || !m.is_dir() {
                return Err(FilesError::Changed {
                    path: d.path.clone(),
                    what: "directory replaced during the restore",
                });
            }
            let t = system_time(d.mtime_ns).ok_or_else(|| FilesError::TimeOutOfRange {
                path: d.path.clone(),
            })?;
            f.set_permissions(Permissions::from_mode(d.mode))
                .map_err(io_err("set the mode of", &d.path))?;
            f.set_times(FileTimes::new().set_modified(t))
                .map_err(io_err("set the mtime of", &d.path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_and_is_canonical() {
        let cases: &[&[u8]] = &[
            b"plain",
            b"100%",
            b"caf\xc3\xa9",
            b"bad\xff\xfe",
            b"%25",
            b"\xe9t\xe9",
        ];
        for c in cases {
            let e = escape_name(c);
            assert_eq!(unescape(&e).unwrap(), c.to_vec(), "{e}");
        }
        assert_eq!(escape_name(b"100%"), "100%25");
        assert_eq!(escape_name(b"bad\xff"), "bad%FF");
        for bad in ["%41", "%2F", "%00", "%ff", "%F", "%", "a%zz"] {
            assert!(unescape(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn negative_and_positive_times_convert() {
        let t = system_time(-1_500_000_000).unwrap();
        assert_eq!(
            UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::from_millis(1500)
        );
        let t = system_time(1_700_000_000_123_456_789).unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_nanos(),
            1_700_000_000_123_456_789
        );
    }
}
