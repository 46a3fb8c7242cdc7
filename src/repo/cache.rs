//! Reading chunks back: a small cache of whole packs, each verified against
//! its name (BLAKE3 of the pack) the first time it is fetched.

use crate::crypto::Id;
use crate::repo::index::{ChunkLoc, Index};
use crate::repo::pack::pack_path;
use crate::target::Target;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

/// Why a pack could not be used.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PackProblem {
    #[error("{object}: missing")]
    Missing { object: String },
    #[error("{object}: size {got} differs from the indexed {want} (truncated or replaced)")]
    Size { object: String, got: u64, want: u64 },
    #[error("{object}: content does not hash to its name (corrupted or swapped)")]
    Hash { object: String },
    #[error("{object}: {why}")]
    Read { object: String, why: String },
}

pub struct PackCache {
    target: Arc<Target>,
    capacity: usize,
    order: VecDeque<Id>,
    packs: HashMap<Id, Bytes>,
    bad: HashMap<Id, PackProblem>,
    /// Packs fetched whole and verified (then read in spans when not
    /// cached).
    verified: HashSet<Id>,
    /// Bytes fetched from the target.
    pub fetched: u64,
    /// Reads of pack objects (whole or a span), successful or not.
    pub reads: u64,
    /// Whether a pack fetched whole is hashed against its name (see
    /// [`PackCache::without_pack_hashes`]).
    hash_packs: bool,
    /// Whether a few blobs read through the cache are copied out of their
    /// pack (see [`PackCache::copying_out`]).
    copy_out: bool,
}

impl PackCache {
    pub fn new(target: Arc<Target>, capacity: usize) -> Self {
        PackCache {
            target,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            packs: HashMap::new(),
            bad: HashMap::new(),
            verified: HashSet::new(),
            fetched: 0,
            reads: 0,
            hash_packs: true,
            copy_out: false,
        }
    }

    /// A cache whose [`blobs_at`](Self::blobs_at) gives a copy of bytes
    /// shorter than half their pack, not a slice of the pack held whole:
    /// for a reader that keeps what it read longer than the cache keeps
    /// the pack (a backup keeps the parent's pages of a window while it
    /// stores the window, its caches hold one or two packs). A slice keeps
    /// the whole pack, a mapping of a local pack read in whole: at 4 GiB,
    /// six or so packs of 8 MiB at the incremental's peak.
    pub fn copying_out(mut self) -> Self {
        self.copy_out = true;
        self
    }

    /// A cache whose whole packs are checked for their size but not hashed
    /// against their names: for a reader that authenticates every blob it
    /// opens (a restore opens each chunk and tree page with its key, which
    /// fails for any byte changed), so that the hash would prove nothing
    /// more about what it uses. Damage elsewhere in such a pack does not
    /// stop it; `check` finds it.
    pub fn without_pack_hashes(mut self) -> Self {
        self.hash_packs = false;
        self
    }

    pub fn object_name(&self, pack: &Id) -> String {
        format!("{}:{}", self.target.name, pack_path(pack))
    }

    /// Fetches (or returns the cached) pack, verified against its id/size.
    pub async fn pack(&mut self, pack: Id, size: u64) -> Result<Bytes, PackProblem> {
        if let Some(p) = self.packs.get(&pack) {
            return Ok(p.clone());
        }
        if let Some(b) = self.bad.get(&pack) {
            return Err(b.clone());
        }
        let p = self.fetch_verified(pack, size).await?;
        self.verified.insert(pack);
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.packs.remove(&old);
            }
        }
        self.order.push_back(pack);
        self.packs.insert(pack, p.clone());
        Ok(p)
    }

    /// For a reader that comes back to a pack for more of its chunks
    /// (check), without keeping it: the first time, the whole pack,
    /// verified against its id and size as with [`PackCache::pack`]; after
    /// that only the bytes `span` of it, as [`PackCache::span`] reads them
    /// (each chunk in them is authenticated on its own). Returns the bytes
    /// and the offset in the pack of the first. A pack found bad is
    /// remembered as with `pack`.
    pub async fn fetch_span(
        &mut self,
        pack: Id,
        size: u64,
        span: Range<u64>,
    ) -> Result<(Bytes, u64), PackProblem> {
        if self.verified.contains(&pack) {
            return self.span(pack, size, span).await;
        }
        if let Some(b) = self.bad.get(&pack) {
            return Err(b.clone());
        }
        let b = self.fetch_verified(pack, size).await?;
        self.verified.insert(pack);
        Ok((b, 0))
    }

    /// The bytes `span` of a pack alone, never the whole pack: for a reader
    /// that needs a few of a pack's chunks (the restore of one customer).
    /// The pack is not verified against its name, so each chunk in the
    /// span must be authenticated on its own when it is opened (chunks
    /// always are). From the pack when it is cached whole.
    pub async fn span(
        &mut self,
        pack: Id,
        size: u64,
        span: Range<u64>,
    ) -> Result<(Bytes, u64), PackProblem> {
        if let Some(b) = self.bad.get(&pack) {
            return Err(b.clone());
        }
        if span.end > size {
            return Err(PackProblem::Size {
                object: self.object_name(&pack),
                got: size,
                want: span.end,
            });
        }
        if let Some(p) = self.packs.get(&pack) {
            return Ok((p.slice(span.start as usize..span.end as usize), span.start));
        }
        self.range(pack, size, span).await
    }

    /// Fetches the bytes `span` of a pack of `size` bytes.
    async fn range(
        &mut self,
        pack: Id,
        size: u64,
        span: Range<u64>,
    ) -> Result<(Bytes, u64), PackProblem> {
        let want = span.end.saturating_sub(span.start);
        if want == 0 {
            return Ok((Bytes::new(), span.start));
        }
        let object = self.object_name(&pack);
        self.reads += 1;
        let r = match self.target.get_range(&pack_path(&pack), span.clone()).await {
            Ok(b) => {
                self.fetched += b.len() as u64;
                if b.len() as u64 == want {
                    Ok((b, span.start))
                } else {
                    Err(PackProblem::Size {
                        object,
                        got: span.start + b.len() as u64,
                        want: size,
                    })
                }
            }
            Err(e) if e.is_not_found() => Err(PackProblem::Missing { object }),
            Err(e) => Err(PackProblem::Read {
                object,
                why: e.to_string(),
            }),
        };
        self.remember(pack, r)
    }

    async fn fetch_verified(&mut self, pack: Id, size: u64) -> Result<Bytes, PackProblem> {
        let object = self.object_name(&pack);
        self.reads += 1;
        let r = match self.target.get_opt(&pack_path(&pack)).await {
            Ok(Some(b)) => {
                self.fetched += b.len() as u64;
                if b.len() as u64 != size {
                    Err(PackProblem::Size {
                        object,
                        got: b.len() as u64,
                        want: size,
                    })
                } else if self.hash_packs && Id::hash(&b) != pack {
                    Err(PackProblem::Hash { object })
                } else {
                    Ok(b)
                }
            }
            Ok(None) => Err(PackProblem::Missing { object }),
            Err(e) => Err(PackProblem::Read {
                object,
                why: e.to_string(),
            }),
        };
        self.remember(pack, r)
    }

    /// Remembers a pack found bad; transient read errors are not.
    fn remember<T>(&mut self, pack: Id, r: Result<T, PackProblem>) -> Result<T, PackProblem> {
        if let Err(e) = &r {
            if !matches!(e, PackProblem::Read { .. }) {
                self.bad.insert(pack, e.clone());
            }
        }
        r
    }

    /// The sealed bytes of one chunk (or tree page).
    pub async fn blob(&mut self, index: &Index, loc: &ChunkLoc) -> Result<Vec<u8>, PackProblem> {
        let (id, size) = index.pack_of(loc);
        self.blob_at(
            id,
            size,
            u64::from(loc.offset)..u64::from(loc.offset) + u64::from(loc.len),
        )
        .await
    }

    /// The bytes `span` of a pack: from the pack cached whole, or, for a
    /// pack not cached, the whole pack (verified against its name and
    /// cached) the first time and only the span after that, so a reader
    /// that comes back to more packs than the cache holds (the pages of a
    /// window spread over the packs of many backups) reads each pack once
    /// and then its blobs, not the pack again for every blob. Every blob
    /// is authenticated on its own when it is opened.
    pub async fn blob_at(
        &mut self,
        id: Id,
        size: u64,
        span: Range<u64>,
    ) -> Result<Vec<u8>, PackProblem> {
        let (b, _) = self.blobs_at(id, size, span).await?;
        Ok(b.to_vec())
    }

    /// The bytes `span` of a pack of `size` bytes (several blobs that lie
    /// together, read at once), with the offset in the pack they start
    /// at: from the cached pack; or, for a pack verified whole before, the
    /// span alone (each blob in it is authenticated when opened); or else
    /// the whole pack, fetched, verified against its name and cached (a
    /// short span of it copied out, if the cache is
    /// [`copying_out`](Self::copying_out)).
    pub async fn blobs_at(
        &mut self,
        id: Id,
        size: u64,
        span: Range<u64>,
    ) -> Result<(Bytes, u64), PackProblem> {
        if span.end > size || span.start > span.end {
            return Err(PackProblem::Size {
                object: self.object_name(&id),
                got: size,
                want: span.end,
            });
        }
        if !self.packs.contains_key(&id) && self.verified.contains(&id) {
            return self.span(id, size, span).await;
        }
        // Of `size` bytes: a pack of another size is refused when fetched.
        let p = self.pack(id, size).await?;
        let run = p.slice(span.start as usize..span.end as usize);
        if self.copy_out && (run.len() as u64) < size / 2 {
            return Ok((Bytes::copy_from_slice(&run), span.start));
        }
        Ok((run, span.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::S3Settings;

    fn target(name: &str) -> Arc<Target> {
        let url = format!("memory://{name}");
        Arc::new(Target::open("t", &url, false, &S3Settings::default(), true).unwrap())
    }

    #[tokio::test]
    async fn a_span_is_read_after_the_whole_pack_was_verified() {
        let t = target("cache-span");
        let good = Bytes::from_static(b"a pack's bytes");
        let good_id = Id::hash(&good);
        t.put(&pack_path(&good_id), good.clone()).await.unwrap();
        // Stored under a name its bytes do not hash to.
        let wrong_id = Id::hash(b"other bytes");
        t.put(&pack_path(&wrong_id), good.clone()).await.unwrap();
        let size = good.len() as u64;

        let mut cache = PackCache::new(t.clone(), 1);
        // First: the whole pack, hashed against its name.
        assert_eq!(
            cache.fetch_span(good_id, size, 2..6).await.unwrap(),
            (good.clone(), 0)
        );
        for _ in 0..2 {
            assert!(matches!(
                cache.fetch_span(wrong_id, size, 2..6).await,
                Err(PackProblem::Hash { .. })
            ));
        }
        // Then the span only.
        assert_eq!(
            cache.fetch_span(good_id, size, 2..6).await.unwrap(),
            (good.slice(2..6), 2)
        );
        // An empty span reads nothing.
        assert_eq!(
            cache.fetch_span(good_id, size, size..size).await.unwrap(),
            (Bytes::new(), size)
        );
        // A pack cut short since is refused, and remembered as bad: asked
        // again, it is not read again.
        t.put(&pack_path(&good_id), good.slice(..8)).await.unwrap();
        let e = cache.fetch_span(good_id, size, 4..12).await.unwrap_err();
        assert!(matches!(e, PackProblem::Size { got: 8, .. }), "{e}");
        let read = cache.fetched;
        assert_eq!(read, 2 * size + 4 + 4, "two whole packs, two spans");
        assert!(matches!(
            cache.fetch_span(good_id, size, 2..6).await,
            Err(PackProblem::Size { .. })
        ));
        assert_eq!(cache.fetched, read);
        // A pack deleted since it was verified is missing.
        let other = Bytes::from_static(b"another pack");
        let other_id = Id::hash(&other);
        let other_size = other.len() as u64;
        t.put(&pack_path(&other_id), other.clone()).await.unwrap();
        assert_eq!(
            cache.fetch_span(other_id, other_size, 0..4).await.unwrap(),
            (other, 0)
        );
        t.delete(&pack_path(&other_id)).await.unwrap();
        assert!(matches!(
            cache.fetch_span(other_id, other_size, 2..6).await,
            Err(PackProblem::Missing { .. })
        ));
    }

    #[tokio::test]
    async fn a_span_alone_is_read_without_the_whole_pack() {
        let t = target("cache-span-alone");
        let pack = Bytes::from_static(b"the bytes of a pack of chunks");
        let id = Id::hash(&pack);
        let size = pack.len() as u64;
        t.put(&pack_path(&id), pack.clone()).await.unwrap();

        let mut cache = PackCache::new(t.clone(), 2);
        assert_eq!(
            cache.span(id, size, 4..9).await.unwrap(),
            (pack.slice(4..9), 4)
        );
        assert_eq!(cache.fetched, 5, "the span alone was read");
        // Past the pack's indexed size: refused without a read.
        assert!(matches!(
            cache.span(id, size, 20..size + 1).await,
            Err(PackProblem::Size { .. })
        ));
        assert_eq!(cache.fetched, 5);
        // A pack cached whole is sliced, not read again.
        cache.pack(id, size).await.unwrap();
        let read = cache.fetched;
        assert_eq!(
            cache.span(id, size, 10..14).await.unwrap(),
            (pack.slice(10..14), 10)
        );
        assert_eq!(cache.fetched, read);
        // A pack gone is missing, and remembered so.
        let gone = Id::hash(b"a pack deleted");
        t.put(&pack_path(&gone), Bytes::from_static(b"a pack deleted"))
            .await
            .unwrap();
        t.delete(&pack_path(&gone)).await.unwrap();
        for _ in 0..2 {
            assert!(matches!(
                cache.span(gone, 14, 0..4).await,
                Err(PackProblem::Missing { .. })
            ));
        }
    }

    #[tokio::test]
    async fn blobs_of_a_pack_no_longer_cached_are_read_alone() {
        let t = target("cache-blobs");
        let packs: Vec<Bytes> = ["first pack of blobs", "second pack of blobs"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        for p in &packs {
            t.put(&pack_path(&Id::hash(p)), p.clone()).await.unwrap();
        }
        let at = |i: usize| (Id::hash(&packs[i]), packs[i].len() as u64);
        // One pack cached at a time, the reader going back and forth.
        let mut cache = PackCache::new(t.clone(), 1);
        for round in 0..3 {
            for (i, p) in packs.iter().enumerate() {
                let (id, size) = at(i);
                let b = cache.blob_at(id, size, 6..10).await.unwrap();
                assert_eq!(b, &p[6..10], "round {round}, pack {i}");
            }
        }
        // Each pack whole once; then the first, no longer cached, in
        // four-byte spans (rounds 1 and 2), the second from the cache (a
        // span read does not evict it).
        let whole: u64 = packs.iter().map(|p| p.len() as u64).sum();
        assert_eq!(cache.fetched, whole + 2 * 4);
        // The cached one still serves from memory; past the end is refused.
        let (id, size) = at(1);
        let read = cache.fetched;
        assert_eq!(cache.blob_at(id, size, 0..5).await.unwrap(), &packs[1][..5]);
        assert_eq!(cache.fetched, read);
        assert!(matches!(
            cache.blob_at(id, size, 4..size + 1).await,
            Err(PackProblem::Size { .. })
        ));
    }
}
