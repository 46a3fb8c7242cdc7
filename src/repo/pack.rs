//! Packs: `data/<first two hex digits>/<pack id>`.
//!
//! A pack holds the sealed chunks of one group family (one period or epoch
//! key), so that destroying a period key makes whole packs unreadable and
//! deletable. Layout (FORMAT "Packs"):
//!
//! ```text
//! "CUSTOSPK" | version u8 (2; 1 read) | blob* | sealed header | header_len u32 LE | "CUSTOSPE"
//! blob   = XChaCha20-Poly1305(group chunk key, nonce = f(chunk id), aad = chunk id ‖ group id)
//!          of (codec u8 ‖ data), codec 0 = stored, 1 = zstd, 2 = LZ4 block
//! header = MetaKey-sealed (kind "pack-header", name "") entry table of the
//!          pack's version (see `index`)
//! ```
//! The pack id is the plain BLAKE3 hash of the whole pack, so anyone can
//! check a pack's integrity without keys (replication does).

use super::index::{IndexEntry, IndexFile, ENTRIES_VERSION};
use super::RepoError;
use crate::crypto::{ChunkKeys, ChunkNonce, CryptoError, Id, MetaKey};

pub const MAGIC: &[u8; 8] = b"CUSTOSPK";
pub const END_MAGIC: &[u8; 8] = b"CUSTOSPE";
/// The version this build writes: its header's entry table is of the same
/// version ([`ENTRIES_VERSION`]). Packs of version 1 are read.
pub const VERSION: u8 = ENTRIES_VERSION;
pub const HEADER_OFFSET: usize = 9;

pub const CODEC_STORED: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
/// An LZ4 block (the block format alone, no frame): its plaintext length
/// is the entry's raw length. Repository format 3 (FORMAT 3.2).
pub const CODEC_LZ4: u8 = 2;

/// Largest chunk body a blob may declare when read back (hostile input bound).
pub const MAX_RAW_CHUNK: u32 = 64 * 1024 * 1024;

/// The object path of a pack.
pub fn pack_path(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

/// Reusable zstd contexts: creating one per chunk costs more than
/// compressing a small chunk, so each thread keeps one.
pub struct Codec {
    c: zstd::bulk::Compressor<'static>,
    d: zstd::bulk::Decompressor<'static>,
    /// Compressed output, reused from chunk to chunk.
    scratch: Vec<u8>,
    /// LZ4's output, reused likewise (its bytes initialised once).
    lz4_out: Vec<u8>,
}

/// Chunks shorter than this are compressed as an LZ4 block, longer ones
/// with zstd. On a few hundred bytes zstd's fixed cost dominates: each
/// frame builds its sequence coding tables again (even at level -1,
/// which custos used here before, and which leaves literals unencoded
/// anyway), and its frame and block headers take about ten bytes. An LZ4
/// block has no header and no entropy stage: on a sample of the 1 GiB
/// benchmark's chunks it took about half the time, and, since more
/// chunks then save the 8 bytes a compressed chunk must save, stored 2%
/// fewer bytes (see PERFORMANCE, "Backup: small chunks as LZ4 blocks").
pub const SMALL_CHUNK: usize = 1024;

/// Chunks shorter than this are stored without trying to compress them.
/// A compressed chunk must save more than eight bytes, which almost no
/// chunk under 128 bytes (a single row, about half the chunks) does: on
/// the 1 GiB benchmark's call records none did as a zstd frame (about
/// ten bytes of its own), and one of 44 k sampled chunks as an LZ4 block,
/// yet each cost a few hundred nanoseconds to try.
pub const MIN_COMPRESSED: usize = 128;

impl Codec {
    pub fn new(level: i32) -> Self {
        Codec {
            c: zstd::bulk::Compressor::new(level).expect("zstd compression context"),
            d: zstd::bulk::Decompressor::new().expect("zstd decompression context"),
            scratch: Vec::new(),
            lz4_out: Vec::new(),
        }
    }
}

/// Compresses (when it helps) and seals one chunk.
pub fn seal_chunk(codec: &mut Codec, keys: &ChunkKeys, id: &Id, plain: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(plain.len() + 1 + 16);
    seal_chunk_into(codec, keys, id, plain, &mut body);
    body
}

/// As [`seal_chunk`], appending the sealed chunk to `out` (what `out`
/// held before stays as it was), so that many chunks can share one buffer.
pub fn seal_chunk_into(
    codec: &mut Codec,
    keys: &ChunkKeys,
    id: &Id,
    plain: &[u8],
    out: &mut Vec<u8>,
) {
    let start = frame_chunk(codec, plain, out);
    keys.seal_tail(id, out, start);
}

/// As [`seal_chunk_into`] for many chunks, appended to `out` in order,
/// each one's sealed length pushed to `lens`. The keys' derivations and
/// the nonces are computed side by side ([`ChunkKeys::prepare`],
/// [`ChunkKeys::nonces`]); the bytes are those of one call a chunk.
pub fn seal_chunks_into(
    codec: &mut Codec,
    chunks: &[(&ChunkKeys, &Id, &[u8])],
    out: &mut Vec<u8>,
    lens: &mut Vec<u32>,
) {
    let nonces = nonces_of(chunks.iter().map(|c| (c.0, c.1)));
    for ((keys, id, plain), nonce) in chunks.iter().zip(&nonces) {
        let before = out.len();
        let start = frame_chunk(codec, plain, out);
        keys.seal_tail_with(id, nonce, out, start);
        lens.push((out.len() - before) as u32);
    }
}

/// The nonces of these chunks (group keys, chunk id), their groups' keys
/// derived first, all side by side (a group's chunks come together, so a
/// repeat of the previous group is passed over when preparing its keys).
fn nonces_of<'a>(chunks: impl Iterator<Item = (&'a ChunkKeys, &'a Id)>) -> Vec<ChunkNonce> {
    let pairs: Vec<(&ChunkKeys, &Id)> = chunks.collect();
    let mut groups: Vec<&ChunkKeys> = Vec::new();
    for (k, _) in &pairs {
        if groups.last().is_none_or(|last| !std::ptr::eq(*last, *k)) {
            groups.push(k);
        }
    }
    ChunkKeys::prepare(&groups);
    let mut nonces = Vec::with_capacity(pairs.len());
    ChunkKeys::nonces(&pairs, &mut nonces);
    nonces
}

/// Appends the codec byte and the chunk's data (compressed when it
/// helps) to `out`, and returns where they start.
fn frame_chunk(codec: &mut Codec, plain: &[u8], out: &mut Vec<u8>) -> usize {
    // Compressed output is kept only if it saves more than 8 bytes.
    let (codec_byte, data) = if plain.len() < MIN_COMPRESSED {
        (CODEC_STORED, plain)
    } else if plain.len() < SMALL_CHUNK {
        // LZ4 wants room for its worst case, whatever it writes.
        let room = lz4_flex::block::get_maximum_output_size(plain.len());
        if codec.lz4_out.len() < room {
            codec.lz4_out.resize(room, 0);
        }
        match lz4_flex::block::compress_into(plain, &mut codec.lz4_out) {
            Ok(n) if n + 8 < plain.len() => (CODEC_LZ4, &codec.lz4_out[..n]),
            _ => (CODEC_STORED, plain),
        }
    } else {
        // A buffer of `plain.len() - 9` bytes is enough: zstd fails early
        // when its output would not fit, and the chunk is stored as is.
        codec.scratch.clear();
        codec.scratch.reserve(plain.len() - 9);
        match codec.c.compress_to_buffer(plain, &mut codec.scratch) {
            Ok(n) if n + 8 < plain.len() => (CODEC_ZSTD, &codec.scratch[..]),
            _ => (CODEC_STORED, plain),
        }
    };
    let start = out.len();
    out.reserve(data.len() + 1 + 16);
    out.push(codec_byte);
    out.extend_from_slice(data);
    start
}

/// Why a chunk could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("length {got} differs from the indexed {want}")]
    Length { got: usize, want: usize },
    #[error("content does not hash to its id")]
    Hash,
}

/// Opens, decompresses and verifies one chunk against its id.
pub fn open_chunk(
    codec: &mut Codec,
    keys: &ChunkKeys,
    id: &Id,
    sealed: &[u8],
    raw_len: u32,
) -> Result<Vec<u8>, ChunkError> {
    let mut out = Vec::with_capacity(raw_len.min(MAX_RAW_CHUNK) as usize);
    open_chunk_into(codec, keys, id, sealed, raw_len, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// As [`open_chunk`], appending the plaintext to `out` (left as it was if
/// the chunk does not open); `body` is scratch space for the decrypted
/// body, kept between calls so that a chunk costs no new buffer.
pub fn open_chunk_into(
    codec: &mut Codec,
    keys: &ChunkKeys,
    id: &Id,
    sealed: &[u8],
    raw_len: u32,
    body: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), ChunkError> {
    let start = out.len();
    check_raw_len(raw_len)?;
    keys.open_into(id, sealed, body)?;
    decode_body(codec, body, raw_len, out)?;
    if !keys.is_chunk(&out[start..], id) {
        out.truncate(start);
        return Err(ChunkError::Hash);
    }
    Ok(())
}

/// A chunk to open: its group's keys, its id, its sealed bytes and its
/// indexed plaintext length.
pub type ToOpen<'a> = (&'a ChunkKeys, &'a Id, &'a [u8], u32);

/// As [`open_chunk_into`] for many chunks: each plaintext is appended to
/// `out` in order, and `opened[i]` is chunk `i`'s range in `out`, or why
/// it did not open (the plaintext of a chunk whose content did not hash
/// to its id stays in `out`, named by no range). The keys'
/// derivations, the nonces and the chunk ids are computed side by side;
/// the checks are those of one call a chunk.
pub fn open_chunks_into(
    codec: &mut Codec,
    chunks: &[ToOpen<'_>],
    body: &mut Vec<u8>,
    out: &mut Vec<u8>,
    opened: &mut Vec<Result<std::ops::Range<usize>, ChunkError>>,
) {
    opened.clear();
    let nonces = nonces_of(chunks.iter().map(|c| (c.0, c.1)));
    for ((keys, id, sealed, raw_len), nonce) in chunks.iter().zip(&nonces) {
        let start = out.len();
        let r = check_raw_len(*raw_len)
            .and_then(|_| Ok(keys.open_into_with(id, nonce, sealed, body)?))
            .and_then(|_| decode_body(codec, body, *raw_len, out));
        opened.push(r.map(|_| start..out.len()));
    }
    // The chunk ids of the chunks that opened, side by side.
    let done: Vec<usize> = (0..chunks.len()).filter(|&i| opened[i].is_ok()).collect();
    let plains: Vec<(&ChunkKeys, &[u8])> = done
        .iter()
        .map(|&i| {
            let range = opened[i].as_ref().expect("opened").clone();
            (chunks[i].0, &out[range])
        })
        .collect();
    let hashes = ChunkKeys::chunk_hashes(&plains);
    drop(plains);
    for (&i, hash) in done.iter().zip(&hashes) {
        if !chunks[i].1.names_chunk_hash(hash) {
            opened[i] = Err(ChunkError::Hash);
        }
    }
}

/// FORMAT 3.3: a reader refuses a chunk of more than 64 MiB, stored or
/// compressed (no writer makes one: chunks end at 16 MiB).
fn check_raw_len(raw_len: u32) -> Result<(), ChunkError> {
    if raw_len > MAX_RAW_CHUNK {
        return Err(ChunkError::Length {
            got: raw_len as usize,
            want: MAX_RAW_CHUNK as usize,
        });
    }
    Ok(())
}

/// Appends the plaintext of a decrypted body (codec byte, data) to `out`,
/// which is left as it was if the body does not decode to `raw_len` bytes.
fn decode_body(
    codec: &mut Codec,
    body: &[u8],
    raw_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), ChunkError> {
    let start = out.len();
    match body.first() {
        Some(&CODEC_STORED) => out.extend_from_slice(&body[1..]),
        Some(&CODEC_ZSTD) => {
            // Into `out`'s spare room, not zeroed first: a cursor at its
            // end appends what zstd writes (at most the room there is, so
            // a chunk that inflates past `raw_len` fails the length check
            // below or runs out of room).
            out.reserve(raw_len as usize);
            let mut tail = std::io::Cursor::new(&mut *out);
            tail.set_position(start as u64);
            match codec.d.decompress_to_buffer(&body[1..], &mut tail) {
                Ok(n) => out.truncate(start + n),
                Err(e) => {
                    out.truncate(start);
                    return Err(ChunkError::Decompress(e.to_string()));
                }
            }
        }
        Some(&CODEC_LZ4) => {
            // The block's length is not in the block: it decodes into
            // exactly `raw_len` bytes or fails (a block that would write
            // more fails here, one that writes fewer at the check below).
            out.resize(start + raw_len as usize, 0);
            match lz4_flex::block::decompress_into(&body[1..], &mut out[start..]) {
                Ok(n) => out.truncate(start + n),
                Err(e) => {
                    out.truncate(start);
                    return Err(ChunkError::Decompress(e.to_string()));
                }
            }
        }
        Some(&c) => return Err(ChunkError::Codec(c)),
        None => return Err(ChunkError::Codec(255)),
    };
    let got = out.len() - start;
    if got != raw_len as usize {
        out.truncate(start);
        return Err(ChunkError::Length {
            got,
            want: raw_len as usize,
        });
    }
    Ok(())
}

/// Builds one pack in memory.
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
}

impl Default for PackWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PackWriter {
    pub fn new() -> Self {
        Self::with_capacity(1 << 20)
    }

    /// A writer whose buffer is reserved for a pack of about `pack_size`
    /// bytes: the chunks, the largest chunk that can overshoot and the
    /// header (about 21 bytes a chunk, 44 in version 1 packs).
    /// Growing an 8 MiB pack from a small buffer copied it several times
    /// and faulted in fresh pages at every step; reserved pages are only
    /// touched as the pack fills.
    pub fn for_pack(pack_size: usize) -> Self {
        Self::with_capacity(pack_size + pack_size / 4 + (4 << 20))
    }

    fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        PackWriter {
            buf,
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of sealed chunks added so far.
    pub fn data_len(&self) -> usize {
        self.buf.len() - HEADER_OFFSET
    }

    pub fn add(&mut self, id: Id, sealed: &[u8], raw_len: u32) {
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(sealed);
        self.entries
            .push(IndexEntry::new(&id, offset, sealed.len() as u32, raw_len));
    }

    /// Finishes the pack: returns its id, bytes and index.
    pub fn finish(mut self, meta: &MetaKey) -> (Id, Vec<u8>, IndexFile) {
        // The header is encoded and sealed in place at the pack's end.
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; MetaKey::NONCE_ROOM]);
        IndexFile::encode_entries_into(&self.entries, &mut self.buf);
        meta.seal_tail("pack-header", "", &mut self.buf, start);
        let sealed_len = self.buf.len() - start;
        self.buf
            .extend_from_slice(&(sealed_len as u32).to_le_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        let id = Id::hash(&self.buf);
        let index = IndexFile {
            pack: id,
            pack_size: self.buf.len() as u64,
            entries: self.entries,
        };
        (id, self.buf, index)
    }
}

/// Reads the header of a whole pack: checked as [`check_header`] checks
/// it, then its entries (for tools and tests that read a pack's contents;
/// `check` needs only [`check_header`]).
pub fn read_header(
    object: &str,
    pack: &[u8],
    meta: &MetaKey,
) -> Result<Vec<IndexEntry>, RepoError> {
    let mut body = Vec::new();
    let mut out = Vec::new();
    check_entries(object, pack, meta, &mut body, |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// Checks the header of a whole pack as [`read_header`] does, its
/// plaintext opened into `body` (kept by the caller from pack to pack: a
/// header lists every chunk of the pack, some megabytes for a full one)
/// and its entries checked where they lie. Returns how many it lists.
pub fn check_header(
    object: &str,
    pack: &[u8],
    meta: &MetaKey,
    body: &mut Vec<u8>,
) -> Result<usize, RepoError> {
    check_entries(object, pack, meta, body, |_| Ok(()))
}

fn check_entries(
    object: &str,
    pack: &[u8],
    meta: &MetaKey,
    body: &mut Vec<u8>,
    mut each: impl FnMut(IndexEntry) -> Result<(), RepoError>,
) -> Result<usize, RepoError> {
    let data_end = open_header(object, pack, meta, body)?;
    IndexFile::for_each_entry(object, pack[8], body, |e| {
        entry_in_pack(object, &e, data_end)?;
        each(e)
    })
}

/// Opens a pack's sealed header into `body`; returns where the pack's
/// chunks end (the header starts there).
fn open_header(
    object: &str,
    pack: &[u8],
    meta: &MetaKey,
    body: &mut Vec<u8>,
) -> Result<u64, RepoError> {
    let n = pack.len();
    if n < HEADER_OFFSET + 12 || &pack[..8] != MAGIC || &pack[n - 8..] != END_MAGIC {
        return Err(RepoError::malformed(
            object,
            "not a custos pack (bad magic or truncated)",
        ));
    }
    if !(1..=VERSION).contains(&pack[8]) {
        return Err(RepoError::malformed(
            object,
            format!("pack version {}", pack[8]),
        ));
    }
    let hlen = u32::from_le_bytes(pack[n - 12..n - 8].try_into().unwrap()) as usize;
    if hlen > n - 12 - HEADER_OFFSET {
        return Err(RepoError::malformed(
            object,
            "header length beyond the pack",
        ));
    }
    let sealed = &pack[n - 12 - hlen..n - 12];
    meta.open_into("pack-header", "", sealed, body)
        .map_err(|source| RepoError::Crypto {
            object: object.into(),
            source,
        })?;
    Ok((n - 12 - hlen) as u64)
}

/// A header entry's chunk must lie between the pack's prefix and its header.
fn entry_in_pack(object: &str, e: &IndexEntry, data_end: u64) -> Result<(), RepoError> {
    if (e.offset as u64) < HEADER_OFFSET as u64 || e.offset as u64 + e.len as u64 > data_end {
        return Err(RepoError::malformed(
            object,
            "header entry outside the pack",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key32;

    fn codec_of(keys: &ChunkKeys, id: &Id, sealed: &[u8]) -> u8 {
        keys.open(id, sealed).unwrap()[0]
    }

    /// `len` bytes of xorshift noise from `seed` (incompressible).
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_of_every_size_round_trip_and_compress_only_when_it_pays() {
        let keys = ChunkKeys::new(Key32::random());
        let mut codec = Codec::new(3);
        let noise = noise(70_000, 0x2545F4914F6CDD1D);
        let text: Vec<u8> = b"2026-03-14T10:00:00Z|+4915112345678|voice|60;"
            .iter()
            .copied()
            .cycle()
            .take(70_000)
            .collect();
        let sizes = [
            0,
            1,
            9,
            10,
            100,
            MIN_COMPRESSED - 1,
            MIN_COMPRESSED,
            SMALL_CHUNK - 1,
            SMALL_CHUNK,
            5000,
            70_000,
        ];
        let (mut all, mut body) = (Vec::new(), Vec::new());
        // Sealed end to end in one buffer after a prefix, as a backup's
        // batches are: each the same bytes as sealed alone.
        let mut batch = b"sealed before".to_vec();
        for n in sizes {
            for (what, data) in [("noise", &noise[..n]), ("text", &text[..n])] {
                let id = keys.chunk_id(data);
                let sealed = seal_chunk(&mut codec, &keys, &id, data);
                let at = batch.len();
                seal_chunk_into(&mut codec, &keys, &id, data, &mut batch);
                assert_eq!(&batch[at..], &sealed[..], "{what} {n}");
                assert!(batch.starts_with(b"sealed before"));
                let back = open_chunk(&mut codec, &keys, &id, &sealed, n as u32).unwrap();
                assert_eq!(back, data, "{what} {n}");
                // Appended to one buffer, through one scratch body.
                let at = all.len();
                open_chunk_into(
                    &mut codec, &keys, &id, &sealed, n as u32, &mut body, &mut all,
                )
                .unwrap();
                assert_eq!(&all[at..], data, "{what} {n}");
                let c = codec_of(&keys, &id, &sealed);
                if what == "noise" || n < MIN_COMPRESSED {
                    // Too short to try (even the repetitive text).
                    assert_eq!(c, CODEC_STORED, "{what} {n}");
                } else {
                    let want = if n < SMALL_CHUNK {
                        CODEC_LZ4
                    } else {
                        CODEC_ZSTD
                    };
                    assert_eq!(c, want, "{what} {n}");
                    assert!(
                        sealed.len() < n,
                        "{what} {n}: {} bytes sealed",
                        sealed.len()
                    );
                }
            }
        }
    }

    /// A chunk sealed under `keys` whose body is `body` as given (codec
    /// byte and data), as only a holder of the keys could make it.
    fn sealed_body(keys: &ChunkKeys, id: &Id, body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        keys.seal_tail(id, &mut out, 0);
        out
    }

    #[test]
    fn an_lz4_chunk_that_does_not_decode_to_its_length_is_refused_as_is() {
        let keys = ChunkKeys::new(Key32::random());
        let mut codec = Codec::new(3);
        let plain: Vec<u8> = b"+4915112345678|voice|".repeat(20);
        let id = keys.chunk_id(&plain);
        let sealed = seal_chunk(&mut codec, &keys, &id, &plain);
        let body = keys.open(&id, &sealed).unwrap();
        assert_eq!(body[0], CODEC_LZ4);
        let n = plain.len() as u32;
        let refused = |sealed: &[u8], raw_len: u32, codec: &mut Codec| {
            let mut out = b"kept".to_vec();
            let e = open_chunk_into(
                codec,
                &keys,
                &id,
                sealed,
                raw_len,
                &mut Vec::new(),
                &mut out,
            )
            .unwrap_err();
            assert_eq!(out, b"kept", "{e}");
            e
        };
        // The right block under the wrong length, either way.
        for raw_len in [n - 1, n + 1] {
            let e = refused(&sealed, raw_len, &mut codec);
            assert!(
                matches!(e, ChunkError::Decompress(_) | ChunkError::Length { .. }),
                "{raw_len}: {e}"
            );
        }
        // A block cut short, and one whose match reaches before its start.
        let mut cut = body.clone();
        cut.truncate(cut.len() - 3);
        let e = refused(&sealed_body(&keys, &id, &cut), n, &mut codec);
        assert!(matches!(e, ChunkError::Decompress(_)), "{e}");
        // Token: 1 literal, a match of 4 + 15; offset 9 from 1 byte back.
        let bad = [CODEC_LZ4, 0x1F, b'x', 9, 0, 0];
        let e = refused(&sealed_body(&keys, &id, &bad), n, &mut codec);
        assert!(matches!(e, ChunkError::Decompress(_)), "{e}");
        // An unknown codec is named.
        let e = refused(&sealed_body(&keys, &id, &[7, 1, 2, 3]), n, &mut codec);
        assert!(matches!(e, ChunkError::Codec(7)), "{e}");
        // And the chunk itself still opens.
        assert_eq!(
            open_chunk(&mut codec, &keys, &id, &sealed, n).unwrap(),
            plain
        );
    }

    #[test]
    fn a_stored_chunk_over_64_mib_is_refused_as_a_compressed_one_is() {
        let keys = ChunkKeys::new(Key32::random());
        let mut codec = Codec::new(3);
        // Noise, so it is stored: only a compressed chunk's size was checked.
        let big = noise(MAX_RAW_CHUNK as usize + 1, 0x9E37_79B9_7F4A_7C15);
        let id = keys.chunk_id(&big);
        let sealed = seal_chunk(&mut codec, &keys, &id, &big);
        assert_eq!(codec_of(&keys, &id, &sealed), CODEC_STORED);
        let e = open_chunk(&mut codec, &keys, &id, &sealed, big.len() as u32).unwrap_err();
        assert!(
            matches!(e, ChunkError::Length { got, want } if got == big.len() && want == MAX_RAW_CHUNK as usize),
            "{e}"
        );
    }

    #[test]
    fn a_chunk_that_does_not_open_leaves_the_buffer_as_it_was() {
        let keys = ChunkKeys::new(Key32::random());
        let other = ChunkKeys::new(Key32::random());
        let mut codec = Codec::new(3);
        let text: Vec<u8> = b"2026-03-14T10:00:00Z|+4915112345678|voice|60;"
            .iter()
            .copied()
            .cycle()
            .take(3000)
            .collect();
        let mut out = b"rows before".to_vec();
        let mut body = Vec::new();
        for data in [&text[..50], &text[..]] {
            let id = keys.chunk_id(data);
            let sealed = seal_chunk(&mut codec, &keys, &id, data);
            let n = data.len() as u32;
            let mut flipped = sealed.clone();
            flipped[3] ^= 1;
            let wrong_id = keys.chunk_id(b"another chunk");
            let wrong_id_sealed = seal_chunk(&mut codec, &keys, &wrong_id, data);
            let failures: [(&ChunkKeys, &Id, &[u8], u32, &str); 5] = [
                (&keys, &id, &flipped, n, "authentication"),
                (&other, &id, &sealed, n, "authentication"),
                (&keys, &id, &sealed, n + 1, "length"),
                (&keys, &id, &sealed, n - 1, "length|decompression"),
                (&keys, &wrong_id, &wrong_id_sealed, n, "hash"),
            ];
            for (k, id, sealed, raw, why) in failures {
                let e = open_chunk_into(&mut codec, k, id, sealed, raw, &mut body, &mut out)
                    .unwrap_err()
                    .to_string();
                assert!(why.split('|').any(|w| e.contains(w)), "{e}");
                assert_eq!(out, b"rows before");
            }
            // In a batch, each failure is its own chunk's, between good
            // chunks whose plaintext is where their ranges say.
            let mut batch: Vec<ToOpen<'_>> = vec![(&keys, &id, &sealed, n)];
            for (bad_keys, bad_id, bad_sealed, bad_raw, _) in failures {
                batch.push((bad_keys, bad_id, bad_sealed, bad_raw));
                batch.push((&keys, &id, &sealed, n));
            }
            let mut opened = Vec::new();
            open_chunks_into(&mut codec, &batch, &mut body, &mut out, &mut opened);
            assert_eq!(opened.len(), batch.len());
            assert_eq!(&out[..11], b"rows before");
            for (i, r) in opened.iter().enumerate() {
                match (i % 2, r) {
                    (0, Ok(range)) => assert_eq!(&out[range.clone()], data, "chunk {i}"),
                    (1, Err(e)) => {
                        let why = failures[i / 2].4;
                        assert!(why.split('|').any(|w| e.to_string().contains(w)), "{e}");
                    }
                    (_, r) => panic!("chunk {i}: {r:?}"),
                }
            }
            out.truncate(b"rows before".len());
        }
    }

    #[test]
    fn chunks_sealed_together_are_the_chunks_sealed_one_at_a_time() {
        let groups: Vec<ChunkKeys> = (0..5).map(|_| ChunkKeys::new(Key32::random())).collect();
        let data: Vec<Vec<u8>> = (0..40usize)
            .map(|i| {
                b"2026-03-14T10:00:00Z|+4915112345678|voice|60;"
                    .iter()
                    .copied()
                    .cycle()
                    .take(20 + 97 * i)
                    .collect()
            })
            .collect();
        let ids: Vec<Id> = data
            .iter()
            .enumerate()
            .map(|(i, d)| groups[i / 8].chunk_id(d))
            .collect();
        let chunks: Vec<(&ChunkKeys, &Id, &[u8])> = data
            .iter()
            .enumerate()
            .map(|(i, d)| (&groups[i / 8], &ids[i], &d[..]))
            .collect();
        let mut codec = Codec::new(3);
        let (mut together, mut lens) = (b"head".to_vec(), Vec::new());
        seal_chunks_into(&mut codec, &chunks, &mut together, &mut lens);
        let mut one_by_one = b"head".to_vec();
        for (k, id, d) in &chunks {
            seal_chunk_into(&mut codec, k, id, d, &mut one_by_one);
        }
        assert_eq!(together, one_by_one);
        assert_eq!(
            lens.iter().map(|&l| l as usize).sum::<usize>(),
            together.len() - 4
        );
    }

    /// A pack of `n` chunks of noise, the `i`-th `base + i * step` bytes
    /// long: its bytes, index and chunk ids.
    fn pack_of(
        meta: &MetaKey,
        n: u32,
        base: usize,
        step: usize,
        seed: u64,
    ) -> (Vec<u8>, IndexFile, Vec<Id>) {
        let keys = ChunkKeys::new(Key32::from_bytes([4; 32]));
        let mut codec = Codec::new(3);
        let mut w = PackWriter::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let plain = noise(base + i as usize * step, u64::from(i) + seed);
            let id = keys.chunk_id(&plain);
            let sealed = seal_chunk(&mut codec, &keys, &id, &plain);
            w.add(id, &sealed, plain.len() as u32);
            ids.push(id);
        }
        let (_, bytes, index) = w.finish(meta);
        (bytes, index, ids)
    }

    /// A version 1 pack (a header of 44-byte entries with whole chunk ids,
    /// as earlier builds wrote) reads as the version 2 pack of the same
    /// chunks does, and the version 2 header is about half as large.
    #[test]
    fn version_1_packs_are_read_and_version_2_headers_are_smaller() {
        let meta = MetaKey::new(&Key32::from_bytes([3; 32]));
        let (v2, index, ids) = pack_of(&meta, 40, 150, 5, 9);
        assert_eq!(v2[8], 2);
        let entries = read_header("p", &v2, &meta).unwrap();
        assert_eq!(entries, index.entries);
        assert!(entries.iter().zip(&ids).all(|(e, id)| e.names(id)));
        // The same chunks under a version 1 header.
        let data_end = entries.last().map(|e| (e.offset + e.len) as usize).unwrap();
        let mut v1 = v2[..data_end].to_vec();
        v1[8] = 1;
        let rows: Vec<_> = entries
            .iter()
            .zip(&ids)
            .map(|(e, id)| (*id, e.offset, e.len, e.raw_len))
            .collect();
        let table = IndexFile::v1_table(&rows);
        let sealed = meta.seal("pack-header", "", &table);
        v1.extend_from_slice(&sealed);
        v1.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        v1.extend_from_slice(END_MAGIC);
        assert_eq!(read_header("p", &v1, &meta).unwrap(), entries);
        let mut body = Vec::new();
        assert_eq!(check_header("p", &v1, &meta, &mut body).unwrap(), 40);
        let header = |p: &[u8]| p.len() - data_end;
        assert!(
            header(&v2) * 2 < header(&v1),
            "{} against {}",
            header(&v2),
            header(&v1)
        );
        // A version this build does not know is refused by name.
        let mut v3 = v2.clone();
        v3[8] = 3;
        let e = read_header("p", &v3, &meta).unwrap_err().to_string();
        assert!(e.contains("pack version 3"), "{e}");
    }

    /// `check_header` finds what `read_header` finds, without the entries:
    /// the same count for a good pack, the same error for a damaged or
    /// hostile one, with its buffer reused from pack to pack.
    #[test]
    fn a_header_checked_in_place_agrees_with_the_header_read() {
        let meta = MetaKey::new(&Key32::from_bytes([3; 32]));
        let (good, _, _) = pack_of(&meta, 50, 100, 7, 1);
        // A header whose one entry runs past the chunks, sealed as a
        // writer holding the metadata key would.
        let hostile = {
            let mut p = good[..HEADER_OFFSET + 10].to_vec();
            let entry = IndexEntry::new(&Id([7; 32]), HEADER_OFFSET as u32, 11, 11);
            let mut plain = Vec::new();
            IndexFile::encode_entries_into(&[entry], &mut plain);
            let sealed = meta.seal("pack-header", "", &plain);
            p.extend_from_slice(&sealed);
            p.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            p.extend_from_slice(END_MAGIC);
            p
        };
        let mut flipped = good.clone();
        let at = good.len() - 30;
        flipped[at] ^= 1;
        let mut long = good.clone();
        let n = long.len();
        long[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut body = Vec::new();
        assert_eq!(
            check_header("p", &good, &meta, &mut body).unwrap(),
            read_header("p", &good, &meta).unwrap().len()
        );
        let cases: [(&[u8], &str); 5] = [
            (&good[..good.len() - 1], "bad magic"),
            (&good[..20], "bad magic"),
            (&long, "header length beyond the pack"),
            (&flipped, "authentication failed"),
            (&hostile, "header entry outside the pack"),
        ];
        for (pack, want) in cases {
            let got = check_header("p", pack, &meta, &mut body)
                .unwrap_err()
                .to_string();
            let read = read_header("p", pack, &meta).unwrap_err().to_string();
            assert!(got.contains(want), "{want}: {got}");
            assert_eq!(got, read);
        }
        assert_eq!(
            check_header("p", &good, &meta, &mut body).unwrap(),
            50,
            "the buffer serves the next pack"
        );
    }
}
