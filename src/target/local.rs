//! `file://` targets: `object_store`'s local file system, with large
//! objects (packs) written around the page cache and large reads mapped.
//!
//! A backup writes its packs once and does not read them back; through the
//! page cache each written byte is first copied into a cache page the
//! kernel must find (evicting something else: the database being backed
//! up, say) and then written back. Objects of [`DIRECT_MIN`] bytes or more
//! are instead written with `O_DIRECT` from a reused, aligned buffer: the
//! device reads them straight from it. Everything else (small objects,
//! create-only and conditional puts, reads, listings) is the local file
//! system's own code, and the on-disk layout is the same: a staging file
//! `<object>#<digits>` (which listings skip) renamed over the object, so a
//! reader sees the old object or the new one, never a part.
//!
//! A file system that refuses `O_DIRECT` (at open, or with `EINVAL` at the
//! first write: older tmpfs, some network and FUSE mounts, blocks larger
//! than 4 KiB) is written through the page cache as before, from the first
//! refusal on.
//!
//! A restore or a check reads packs whole or in large spans. Read into a
//! buffer, each span costs a fresh zeroed allocation (page faults, the
//! kernel clearing each page, the allocator zeroing it again) and a copy
//! out of the page cache; freed at once (see `main`), the next span pays
//! again. Reads of [`MAP_MIN`] bytes or more instead map the file's range
//! and hand out the page cache's own pages (`map_range`). At 1 GiB this
//! took a check's system time from about 3.2 to 2.1 s and its wall time
//! down by 13%, a restore's system time from about 4.3 to 3.4 s, with the
//! same peak memory (docs/PERFORMANCE.md). Every page of a mapping is
//! read in before the read returns, and one that cannot be (a read error
//! of the device, a file cut short) fails the read with an error naming
//! the file (`map_pages`), as a buffered read would. custos never
//! truncates or rewrites a pack in place (a put renames a new file over
//! the old), which a mapping needs: a file cut short by another program
//! while its bytes are in use would still fault.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Objects at least this large are written around the page cache.
pub const DIRECT_MIN: usize = 1 << 20;
/// The alignment `O_DIRECT` asks of buffers, lengths and file offsets
/// (the largest logical block size in common use).
const ALIGN: usize = 4096;
/// Reads of at least this many bytes map the file instead of copying it
/// into a buffer (see [`map_range`]).
pub const MAP_MIN: usize = 256 << 10;
/// Aligned buffers kept between puts (one per upload in flight; a backup
/// has a few).
const KEPT_BUFFERS: usize = 4;

/// The local file system with large puts written around the page cache.
pub struct LocalStore {
    inner: LocalFileSystem,
    /// False once the file system refused `O_DIRECT`.
    direct: AtomicBool,
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl LocalStore {
    pub fn new(inner: LocalFileSystem) -> LocalStore {
        LocalStore {
            inner,
            direct: AtomicBool::new(true),
            buffers: Mutex::new(Vec::new()),
        }
    }

    fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut kept = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_BUFFERS {
            kept.push(buf);
        }
    }

    /// Writes `payload` to `location` around the page cache; `Ok(None)` if
    /// the file system refuses `O_DIRECT` (nothing was written).
    async fn put_direct(&self, location: &Path, payload: PutPayload) -> Result<Option<PutResult>> {
        let dest = self.inner.path_to_filesystem(location)?;
        let mut buf = self.take_buffer();
        let (written, buf) = tokio::task::spawn_blocking(move || {
            let r = write_direct(&dest, &payload, &mut buf);
            (r, buf)
        })
        .await
        .map_err(|e| generic(io::Error::other(format!("the writing task failed: {e}"))))?;
        self.give_back(buf);
        match written {
            Ok(true) => {
                // The entity tag the local file system gives this file, so
                // that a later head or get agrees with what the put said.
                let meta = self.inner.head(location).await?;
                Ok(Some(PutResult {
                    e_tag: meta.e_tag,
                    version: None,
                    extensions: Default::default(),
                }))
            }
            Ok(false) => {
                self.direct.store(false, Ordering::Relaxed);
                tracing::debug!(
                    store = %self.inner,
                    "the file system refuses O_DIRECT; large objects go through the page cache"
                );
                Ok(None)
            }
            Err(e) => Err(generic(e)),
        }
    }
}

/// A read of `range` of `file` as a mapping of the file, its pages
/// read in before it returns ([`map_pages`]). The bytes are the page
/// cache's own: no buffer is zeroed and none copied into. The mapping goes
/// when the last `Bytes` made from it drops. A file shorter than `range`
/// is an error, never a mapping past its end.
fn map_range(file: &std::fs::File, range: Range<u64>) -> io::Result<Bytes> {
    let size = file.metadata()?.len();
    if range.end > size || range.start >= range.end {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("bytes {range:?} of a file of {size} bytes"),
        ));
    }
    let page = page_size() as u64;
    let start = range.start - range.start % page;
    let len = usize::try_from(range.end - start).map_err(io::Error::other)?;
    let mapped = map_pages(file, start, len)?;
    let skip = (range.start - start) as usize;
    Ok(Bytes::from_owner(mapped).slice(skip..))
}

/// The size of a memory page (what a mapping's offset is a multiple of).
fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(4096)
}

/// Maps `len` bytes of `file` from `start` (a multiple of the page size)
/// and reads every page in, or fails. `MAP_POPULATE` alone reads them in
/// but ignores a page it cannot read (a read error of the device, or a
/// page past the end of a file cut short since its size was read): the
/// first touch of that page would then kill the process with `SIGBUS`
/// instead of failing the read. `MADV_POPULATE_READ` (Linux 5.14) fails
/// there instead (`EFAULT`), and on pages already read in costs a walk of
/// the page table. A kernel without it (`EINVAL`) keeps `MAP_POPULATE`'s
/// behaviour. What this cannot cover: a file cut short by another program
/// while its bytes are in use, whose lost pages fault when touched.
fn map_pages(file: &std::fs::File, start: u64, len: usize) -> io::Result<Mapped> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(start).map_err(io::Error::other)?;
    // SAFETY: a new private read-only mapping of an open file, at an
    // address the kernel chooses; nothing else refers to that memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            file.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Unmapped on drop, should the pages not read in.
    let mapped = Mapped { ptr, len };
    // SAFETY: `ptr..ptr + len` is the mapping just made.
    if unsafe { libc::madvise(ptr, len, libc::MADV_POPULATE_READ) } != 0 {
        let e = io::Error::last_os_error();
        // EFAULT is the kernel's way of saying a page would fault; its
        // text ("Bad address") would only mislead. Not retried (a kind the
        // target layer takes for permanent): the pack is reported as it is.
        let why = match e.raw_os_error() {
            Some(libc::EINVAL) => return Ok(mapped),
            Some(libc::EFAULT) => String::new(),
            _ => format!(" ({e})"),
        };
        return Err(io::Error::other(format!(
            "bytes {start}..{} could not be read in{why}: a read error of the device, or the file was cut short",
            start + len as u64
        )));
    }
    Ok(mapped)
}

/// A read-only mapping of a file, unmapped on drop.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; reading
// it from any thread is as safe as reading any immutable memory.
unsafe impl Send for Mapped {}
// SAFETY: as above: nothing writes to it.
unsafe impl Sync for Mapped {}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until
        // drop. Pack files are never truncated or written in place (a put
        // renames a new file over the old), so no page of it goes away.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map_pages`, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn read_error(e: io::Error, path: &std::path::Path) -> object_store::Error {
    generic(io::Error::new(
        e.kind(),
        format!("reading {}: {e}", path.display()),
    ))
}

fn generic(e: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    }
}

/// Writes `payload` to a staging file next to `dest` with `O_DIRECT`, from
/// `buf` (grown to fit and aligned within), cuts the padding of the last
/// block off and renames the file over `dest`. `Ok(false)`: the file
/// system refuses `O_DIRECT`, and nothing is left behind.
fn write_direct(
    dest: &std::path::Path,
    payload: &PutPayload,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    let len = payload.content_length();
    let padded = len.div_ceil(ALIGN) * ALIGN;
    if buf.len() < padded + ALIGN {
        // Rounded up, so that a buffer fits the next pack too.
        let want = (padded + ALIGN).next_multiple_of(1 << 20);
        buf.clear();
        buf.resize(want, 0);
    }
    let off = buf.as_ptr().align_offset(ALIGN);
    let aligned = &mut buf[off..off + padded];
    let mut at = 0;
    for part in payload.iter() {
        aligned[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    aligned[len..].fill(0);

    let (mut file, staging) = match open_staging(dest)? {
        Some(f) => f,
        None => return Ok(false),
    };
    if let Err(e) = file.write_all(aligned) {
        let _ = std::fs::remove_file(&staging);
        // Taken at open, refused at the write (a block size above ALIGN,
        // some FUSE file systems): as a refusal at open.
        return match e.raw_os_error() {
            Some(libc::EINVAL) => Ok(false),
            _ => Err(e),
        };
    }
    let written = file.set_len(len as u64).and_then(|()| {
        drop(file);
        std::fs::rename(&staging, dest)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(true)
}

/// Creates a staging file `<dest>#<digits>` opened for `O_DIRECT` writes,
/// creating the parent folders if needed; `None` if the file system
/// refuses `O_DIRECT`.
fn open_staging(dest: &std::path::Path) -> io::Result<Option<(std::fs::File, std::path::PathBuf)>> {
    let mut n: u32 = 1;
    loop {
        let mut staging = dest.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = std::path::PathBuf::from(staging);
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&staging);
        match opened {
            Ok(f) => return Ok(Some((f, staging))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = dest.parent().ok_or(e)?;
                std::fs::create_dir_all(parent)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Created, then refused: the flag is checked at open on
                // some file systems, after creation.
                let _ = std::fs::remove_file(&staging);
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("inner", &self.inner)
            .field("direct", &self.direct.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `ObjectStore` is declared with `#[async_trait]`; these are the same
// signatures written out. Everything but a large overwrite goes to the
// local file system as it is.
impl ObjectStore for LocalStore {
    fn put_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> BoxFut<'async_trait, Result<PutResult>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if matches!(opts.mode, PutMode::Overwrite)
                && opts.attributes.is_empty()
                && payload.content_length() >= DIRECT_MIN
                && self.direct.load(Ordering::Relaxed)
            {
                if let Some(r) = self.put_direct(location, payload.clone()).await? {
                    return Ok(r);
                }
            }
            self.inner.put_opts(location, payload, opts).await
        })
    }

    fn put_multipart_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        opts: PutMultipartOptions,
    ) -> BoxFut<'async_trait, Result<Box<dyn MultipartUpload>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        options: GetOptions,
    ) -> BoxFut<'async_trait, Result<GetResult>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let head = options.head;
            let got = self.inner.get_opts(location, options).await?;
            if head || got.range.end - got.range.start < MAP_MIN as u64 {
                return Ok(got);
            }
            let GetResultPayload::File(file, path) = got.payload else {
                return Ok(got);
            };
            let range = got.range.clone();
            let read = move || map_range(&file, range).map_err(|e| read_error(e, &path));
            let bytes = match tokio::runtime::Handle::try_current() {
                Ok(h) => h.spawn_blocking(read).await.map_err(|e| {
                    generic(io::Error::other(format!("the reading task failed: {e}")))
                })??,
                Err(_) => read()?,
            };
            Ok(GetResult {
                payload: GetResultPayload::Stream(
                    futures::stream::once(async { Ok(bytes) }).boxed(),
                ),
                ..got
            })
        })
    }

    fn get_ranges<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        ranges: &'life2 [Range<u64>],
    ) -> BoxFut<'async_trait, Result<Vec<Bytes>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.get_ranges(location, ranges)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    fn list_with_delimiter<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: Option<&'life1 Path>,
    ) -> BoxFut<'async_trait, Result<ListResult>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        from: &'life1 Path,
        to: &'life2 Path,
        options: CopyOptions,
    ) -> BoxFut<'async_trait, Result<()>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.copy_opts(from, to, options)
    }

    fn rename_opts<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        from: &'life1 Path,
        to: &'life2 Path,
        options: RenameOptions,
    ) -> BoxFut<'async_trait, Result<()>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.rename_opts(from, to, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn store(dir: &std::path::Path) -> LocalStore {
        LocalStore::new(LocalFileSystem::new_with_prefix(dir).unwrap())
    }

    /// Every file under `dir`, relative, sorted.
    fn files(dir: &std::path::Path) -> Vec<String> {
        fn walk(base: &std::path::Path, d: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn bytes(n: usize, seed: u8) -> Bytes {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    #[tokio::test]
    async fn a_large_object_written_around_the_cache_reads_back_and_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let path = Path::from("data/ab/pack");
        // Not a multiple of the block size, in two parts.
        let (a, b) = (bytes(3 << 20, 1), bytes(17, 2));
        let payload = PutPayload::from_iter([a.clone(), b.clone()]);
        let r = s.put(&path, payload).await.unwrap();
        let want: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let got = s.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the object read back differs");
        // The put's entity tag is the one the store gives the object.
        let head = s.head(&path).await.unwrap();
        assert_eq!(r.e_tag, head.e_tag);
        assert_eq!(head.size, want.len() as u64);
        // No staging file is left, and (where the file system takes
        // O_DIRECT) the buffer was kept for the next put.
        assert_eq!(files(tmp.path()), vec!["data/ab/pack".to_string()]);
        if s.direct.load(Ordering::Relaxed) {
            assert_eq!(s.buffers.lock().unwrap().len(), 1);
        } else {
            eprintln!(
                "the temporary folder's file system refuses O_DIRECT: written through the cache"
            );
        }

        // An overwrite replaces it whole, even when shorter.
        let c = bytes((1 << 20) + 5, 3);
        s.put(&path, c.clone().into()).await.unwrap();
        assert_eq!(s.get(&path).await.unwrap().bytes().await.unwrap(), c);
        assert_eq!(files(tmp.path()), vec!["data/ab/pack".to_string()]);
    }

    #[tokio::test]
    async fn large_reads_are_mapped_and_equal_the_file_at_any_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let path = Path::from("data/ef/pack");
        let want = bytes(3 * MAP_MIN + 4099, 5);
        std::fs::create_dir_all(tmp.path().join("data/ef")).unwrap();
        std::fs::write(tmp.path().join("data/ef/pack"), &want).unwrap();
        // Whole, from unaligned offsets to the end and short of it, and
        // just under the size that maps (read into a buffer instead).
        let n = want.len() as u64;
        let ranges = [
            0..n,
            1..n,
            4097..n - 3,
            n - MAP_MIN as u64 - 1..n,
            5..5 + MAP_MIN as u64 - 1,
        ];
        let mut kept = Vec::new();
        for r in ranges {
            let got = s.get_range(&path, r.clone()).await.unwrap();
            assert!(got == want[r.start as usize..r.end as usize], "{r:?}");
            kept.push((r, got));
        }
        let whole = s.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(whole == want);
        // They are mappings of the file while their bytes live.
        let file = tmp.path().join("data/ef/pack").display().to_string();
        let mapped = || {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines().filter(|l| l.contains(&file)).count()
        };
        assert!(mapped() >= 4, "the reads are not mappings of the file");
        drop(whole);
        // A range past the end gives what the file has (the local file
        // system's way; callers compare lengths), never a mapping of pages
        // the file lacks.
        let from = n - MAP_MIN as u64 - 10;
        let got = s.get_range(&path, from..n + 5).await.unwrap();
        assert!(got == want[from as usize..], "a range past the end");
        drop(got);
        assert!(map_range(
            &std::fs::File::open(tmp.path().join("data/ef/pack")).unwrap(),
            0..n + 1
        )
        .is_err());
        // Pages past the end of a file cut short after its size was read
        // are an error, never a mapping whose first touch raises SIGBUS.
        // (A kernel before 5.14 cannot tell: it maps them, as before.)
        let cut = std::fs::File::open(tmp.path().join("data/ef/pack")).unwrap();
        let page = page_size();
        let one = map_pages(&cut, 0, page).unwrap();
        // SAFETY: `one` is a live mapping of `page` bytes.
        let can_tell = unsafe { libc::madvise(one.ptr, page, libc::MADV_POPULATE_READ) } == 0;
        drop(one);
        let past = map_pages(&cut, 0, (n as usize).div_ceil(page) * page + 2 * page);
        if can_tell {
            let e = past.err().expect("pages past the end mapped");
            assert!(e.to_string().contains("cut short"), "{e}");
            assert!(!e.to_string().contains("Bad address"), "{e}");
        } else {
            eprintln!("this kernel has no MADV_POPULATE_READ: pages past the end not checked");
        }
        // A mapping outlives the object's deletion and its replacement.
        s.delete(&path).await.unwrap();
        s.put(&path, bytes(MAP_MIN, 6).into()).await.unwrap();
        for (r, got) in &kept {
            assert!(got == &want[r.start as usize..r.end as usize], "{r:?}");
        }
        drop(kept);
        assert_eq!(mapped(), 0, "a mapping outlived its bytes");
    }

    #[tokio::test]
    async fn a_staging_file_left_by_a_crash_is_not_listed_and_does_not_block_a_put() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        std::fs::create_dir_all(tmp.path().join("data/cd")).unwrap();
        std::fs::write(tmp.path().join("data/cd/pack#1"), b"torn").unwrap();
        let listed: Vec<ObjectMeta> = s.list(None).try_collect().await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        let path = Path::from("data/cd/pack");
        let data = bytes(2 << 20, 4);
        s.put(&path, data.clone().into()).await.unwrap();
        assert_eq!(s.get(&path).await.unwrap().bytes().await.unwrap(), data);
        let listed: Vec<ObjectMeta> = s.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, path);
        // The torn file is left as it was: it is not this put's.
        assert_eq!(
            std::fs::read(tmp.path().join("data/cd/pack#1")).unwrap(),
            b"torn"
        );
    }

    #[tokio::test]
    async fn small_objects_and_refusing_file_systems_go_through_the_page_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let small = bytes(4000, 5);
        s.put(&Path::from("index/x"), small.clone().into())
            .await
            .unwrap();
        assert!(
            s.buffers.lock().unwrap().is_empty(),
            "a small put took a buffer"
        );
        // As after a refusal of O_DIRECT: large objects are written by the
        // local file system itself, and still read back.
        s.direct.store(false, Ordering::Relaxed);
        let large = bytes(2 << 20, 6);
        s.put(&Path::from("data/ef/pack"), large.clone().into())
            .await
            .unwrap();
        assert!(s.buffers.lock().unwrap().is_empty());
        assert_eq!(
            s.get(&Path::from("data/ef/pack"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            large
        );
        assert_eq!(
            s.get(&Path::from("index/x"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            small
        );
    }
}
