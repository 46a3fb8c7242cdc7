//! Content-defined chunking (FastCDC, 2020 variant) of a group's byte stream.
//!
//! A [`Chunker`] takes the bytes of one shred group (encoded rows, or a
//! file's contents) in pieces of any size and yields chunks whose boundaries
//! depend only on the content, so that an edit in the middle of a group
//! changes only the chunks around it. The gear table is seeded from the
//! repository (see FORMAT "Chunking"), so boundaries do not reveal content to
//! someone who knows the public FastCDC table.

use fastcdc::v2020::{FastCDC, Normalization};
use serde::{Deserialize, Serialize};

/// Chunk size parameters, recorded in the repository marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkParams {
    /// Record mode: groups are often a few KiB (one customer's month of call
    /// records), so chunks are small enough that one changed row rewrites
    /// only a few KiB.
    pub const RECORDS: ChunkParams = ChunkParams {
        min: 2 * 1024,
        avg: 8 * 1024,
        max: 64 * 1024,
    };
    /// File mode.
    pub const FILES: ChunkParams = ChunkParams {
        min: 256 * 1024,
        avg: 1024 * 1024,
        max: 4 * 1024 * 1024,
    };

    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::*;
        if self.min < MINIMUM_MIN
            || self.min > MINIMUM_MAX
            || self.avg < AVERAGE_MIN
            || self.avg > AVERAGE_MAX
            || self.max < MAXIMUM_MIN
            || self.max > MAXIMUM_MAX
            || !(self.min <= self.avg && self.avg <= self.max)
        {
            return Err(format!(
                "chunk sizes out of range: min {} avg {} max {}",
                self.min, self.avg, self.max
            ));
        }
        Ok(())
    }
}

/// Streaming chunker for one group. Feed bytes with [`Chunker::push`], take
/// finished chunks with the callback; [`Chunker::finish`] emits the rest.
pub struct Chunker {
    params: ChunkParams,
    seed: u64,
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new(params: ChunkParams, seed: u64) -> Self {
        Chunker {
            params,
            seed,
            buf: Vec::new(),
        }
    }

    fn cdc(&self) -> FastCDC<'_> {
        FastCDC::with_level_and_seed(
            &self.buf,
            self.params.min,
            self.params.avg,
            self.params.max,
            Normalization::Level1,
            self.seed,
        )
    }

    /// Bytes buffered and not yet emitted.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes; emits every chunk whose end is certain (a chunk can
    /// only be cut once `max` bytes follow its start or the stream ends).
    pub fn push<E>(
        &mut self,
        data: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(data);
        if self.buf.len() < 2 * self.params.max as usize {
            return Ok(());
        }
        // Cut while at least `max` bytes remain after the cursor, so every
        // cut found is the one a one-shot chunking of the whole stream finds.
        let cdc = self.cdc();
        let mut start = 0usize;
        let max = self.params.max as usize;
        while self.buf.len() - start >= max {
            let (_, end) = cdc.cut(start, self.buf.len() - start);
            emit(&self.buf[start..end])?;
            start = end;
        }
        self.buf.drain(..start);
        Ok(())
    }

    /// Chunks a whole stream given at once (the chunker must be empty):
    /// the same chunks as [`Chunker::push`] then [`Chunker::finish`], but a
    /// stream no longer than `min` (most record groups) is emitted as one
    /// chunk without copying it or building the gear tables.
    pub fn chunk_all<E>(
        &mut self,
        data: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.buf.is_empty() && data.len() <= self.params.min as usize {
            if data.is_empty() {
                return Ok(());
            }
            return emit(data);
        }
        self.push(data, emit)?;
        self.finish(emit)
    }

    /// Emits the remaining bytes as the group's last chunks.
    pub fn finish<E>(&mut self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if !self.buf.is_empty() && self.buf.len() <= self.params.min as usize {
            // FastCDC never cuts a stream of `min` bytes or fewer.
            emit(&self.buf)?;
        } else if !self.buf.is_empty() {
            let cdc = self.cdc();
            let mut start = 0usize;
            while start < self.buf.len() {
                let (_, end) = cdc.cut(start, self.buf.len() - start);
                emit(&self.buf[start..end])?;
                start = end;
            }
        }
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut c = Chunker::new(ChunkParams::RECORDS, 42);
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            c.push::<()>(p, &mut |b| {
                out.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        }
        c.finish::<()>(&mut |b| {
            out.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn boundaries_do_not_depend_on_push_sizes() {
        let d = data(1_000_000);
        let a = chunks(&d, 1_000_000);
        let b = chunks(&d, 97);
        let c = chunks(&d, 65_536);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.concat(), d);
        assert!(a.len() > 20, "expected many chunks, got {}", a.len());
        assert!(a.iter().all(|c| c.len() <= 64 * 1024));
    }

    #[test]
    fn an_edit_changes_few_chunks() {
        let d = data(1_000_000);
        let mut e = d.clone();
        e[500_000] ^= 0xff;
        let a = chunks(&d, 4096);
        let b = chunks(&e, 4096);
        let set: std::collections::HashSet<_> = a.iter().collect();
        let new = b.iter().filter(|c| !set.contains(c)).count();
        assert!(new <= 3, "{new} chunks changed");
    }

    #[test]
    fn chunk_all_cuts_as_push_and_finish_do() {
        let d = data(300_000);
        for n in [0, 1, 2047, 2048, 2049, 10_000, 131_072, 300_000] {
            let mut c = Chunker::new(ChunkParams::RECORDS, 42);
            let mut got = Vec::new();
            c.chunk_all::<()>(&d[..n], &mut |b| {
                got.push(b.to_vec());
                Ok(())
            })
            .unwrap();
            assert_eq!(got, chunks(&d[..n], 4096), "{n} bytes");
            assert_eq!(c.pending(), 0);
        }
    }

    #[test]
    fn small_input_is_one_chunk() {
        let a = chunks(b"hello", 2);
        assert_eq!(a, vec![b"hello".to_vec()]);
        assert!(chunks(b"", 1).is_empty());
    }
}
