//! `FaultStore`: an `ObjectStore` wrapper for fault injection.
//!
//! It delegates every operation to an inner store and can
//! * fail the Nth put ([`FaultStore::fail_nth_put`]) or every put after the
//!   first N ([`FaultStore::fail_puts_after`]) with an error that custos
//!   classifies as transient (a connection reset);
//! * corrupt the bytes returned by reads ([`FaultStore::corrupt_gets`]);
//! * count operations ([`FaultStore::counts`]).
//!
//! A `FaultStore` is a cheap handle: clones share the same counters and
//! fault settings, so a test keeps one clone and hands another (via
//! [`FaultStore::store`]) to the code under test.
//!
//! Puts are counted (from 1) over `put_opts` and `put_multipart_opts`; a
//! head is a `get_opts` with `head` set and is counted apart from gets.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Operation counts of a [`FaultStore`] (attempts, failed ones included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub puts: u64,
    pub failed_puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub lists: u64,
    pub deletes: u64,
    pub copies: u64,
    pub renames: u64,
}

#[derive(Default)]
struct Faults {
    fail_nth_put: Option<u64>,
    fail_puts_after: Option<u64>,
    fail_gets_of: Option<String>,
}

#[derive(Default)]
struct State {
    faults: Mutex<Faults>,
    corrupt: AtomicBool,
    puts: AtomicU64,
    failed_puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    copies: AtomicU64,
    renames: AtomicU64,
}

/// An `ObjectStore` that delegates to another and injects faults.
#[derive(Clone)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl FaultStore {
    /// Wraps `inner`, with no faults set.
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultStore {
        FaultStore {
            inner,
            state: Arc::new(State::default()),
        }
    }

    /// This wrapper as a shared store (sharing counters and faults with `self`).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(self.clone())
    }

    /// The wrapped store, for checking what really landed.
    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner)
    }

    /// The `n`th put (counting from 1, over the life of this store) fails once.
    pub fn fail_nth_put(&self, n: u64) -> &Self {
        self.state.faults.lock().unwrap().fail_nth_put = Some(n);
        self
    }

    /// Every put after the first `n` fails (`n = 0`: every put fails).
    pub fn fail_puts_after(&self, n: u64) -> &Self {
        self.state.faults.lock().unwrap().fail_puts_after = Some(n);
        self
    }

    /// Every get (not head) of the object named `name` fails.
    pub fn fail_gets_of(&self, name: &str) -> &Self {
        self.state.faults.lock().unwrap().fail_gets_of = Some(name.to_string());
        self
    }

    /// Turns corruption of read bytes on or off: when on, every get returns
    /// its bytes with one bit flipped in the middle.
    pub fn corrupt_gets(&self, on: bool) -> &Self {
        self.state.corrupt.store(on, Ordering::SeqCst);
        self
    }

    /// Removes every fault (counters are kept).
    pub fn clear_faults(&self) -> &Self {
        *self.state.faults.lock().unwrap() = Faults::default();
        self.state.corrupt.store(false, Ordering::SeqCst);
        self
    }

    /// The operation counts so far.
    pub fn counts(&self) -> OpCounts {
        let s = &self.state;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        OpCounts {
            puts: l(&s.puts),
            failed_puts: l(&s.failed_puts),
            gets: l(&s.gets),
            heads: l(&s.heads),
            lists: l(&s.lists),
            deletes: l(&s.deletes),
            copies: l(&s.copies),
            renames: l(&s.renames),
        }
    }

    /// Counts a put and decides whether it fails.
    fn check_put(&self, location: &Path) -> Result<()> {
        let n = self.state.puts.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = {
            let f = self.state.faults.lock().unwrap();
            f.fail_nth_put == Some(n) || f.fail_puts_after.is_some_and(|after| n > after)
        };
        if fail {
            self.state.failed_puts.fetch_add(1, Ordering::SeqCst);
            return Err(injected(&format!("put #{n} of {location}")));
        }
        Ok(())
    }

    fn corrupting(&self) -> bool {
        self.state.corrupt.load(Ordering::SeqCst)
    }
}

/// The error of an injected fault: a connection reset, which custos treats
/// as transient.
pub fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultStore",
        source: Box::new(HttpError::new(
            HttpErrorKind::Connect,
            std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("injected fault: {what}"),
            ),
        )),
    }
}

/// Flips one bit in the middle of `b` (empty stays empty).
pub fn corrupt(b: Bytes) -> Bytes {
    if b.is_empty() {
        return b;
    }
    let mut v = b.to_vec();
    let mid = v.len() / 2;
    v[mid] ^= 0x01;
    Bytes::from(v)
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

impl fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStore")
            .field("inner", &self.inner)
            .field("counts", &self.counts())
            .finish()
    }
}

// `ObjectStore` is declared with `#[async_trait]`; these are the same
// signatures written out (the crate does not depend on async-trait).
impl ObjectStore for FaultStore {
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
            self.check_put(location)?;
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
        Box::pin(async move {
            self.check_put(location)?;
            self.inner.put_multipart_opts(location, opts).await
        })
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
            if head {
                self.state.heads.fetch_add(1, Ordering::SeqCst);
            } else {
                self.state.gets.fetch_add(1, Ordering::SeqCst);
                let fail = self.state.faults.lock().unwrap().fail_gets_of.as_deref()
                    == Some(location.as_ref());
                if fail {
                    return Err(injected(&format!("get of {location}")));
                }
            }
            let res = self.inner.get_opts(location, options).await?;
            if head || !self.corrupting() {
                return Ok(res);
            }
            let GetResult {
                meta,
                range,
                attributes,
                extensions,
                payload,
            } = res;
            let data = GetResult {
                meta: meta.clone(),
                range: range.clone(),
                attributes: attributes.clone(),
                extensions: extensions.clone(),
                payload,
            }
            .bytes()
            .await?;
            let data = corrupt(data);
            Ok(GetResult {
                payload: GetResultPayload::Stream(
                    futures::stream::once(async move { Ok(data) }).boxed(),
                ),
                meta,
                range,
                attributes,
                extensions,
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
        Box::pin(async move {
            self.state.gets.fetch_add(1, Ordering::SeqCst);
            let parts = self.inner.get_ranges(location, ranges).await?;
            if self.corrupting() {
                Ok(parts.into_iter().map(corrupt).collect())
            } else {
                Ok(parts)
            }
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let state = Arc::clone(&self.state);
        let counted = locations
            .inspect_ok(move |_| {
                state.deletes.fetch_add(1, Ordering::SeqCst);
            })
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.state.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.state.lists.fetch_add(1, Ordering::SeqCst);
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
        Box::pin(async move {
            self.state.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list_with_delimiter(prefix).await
        })
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
        Box::pin(async move {
            self.state.copies.fetch_add(1, Ordering::SeqCst);
            self.inner.copy_opts(from, to, options).await
        })
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
        Box::pin(async move {
            self.state.renames.fetch_add(1, Ordering::SeqCst);
            self.inner.rename_opts(from, to, options).await
        })
    }
}
