//! The repository: what custos writes on a target (spec: docs/FORMAT.md).
//!
//! One file per stored object kind:
//! * [`marker`]: `custos-repo.json`, the plaintext format marker;
//! * [`pack`]: `data/<xx>/<pack id>`, sealed chunks of one group family;
//! * [`index`]: `index/<pack id>`, where each chunk of a pack lies;
//! * [`tree`]: pages of group entries or file entries, stored as blobs in
//!   metadata packs;
//! * [`cache`]: reading packs back through a small verified cache;
//! * [`snapshot`]: `snapshots/<id>`, the root of one snapshot.
//!
//! Order of writes (what keeps a repository valid at every instant): keys in
//! every vault location → packs → their index objects → tree pages →
//! snapshot. A snapshot object is written last and only when everything it
//! refers to is stored, so a listed snapshot is always restorable.

pub mod cache;
pub mod index;
pub mod marker;
pub mod pack;
pub mod snapshot;
pub mod tree;

use crate::crypto::CryptoError;
use crate::target::TargetError;

/// Errors reading or writing repository objects.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Target(Box<TargetError>),
    #[error("{object}: {source}")]
    Crypto {
        object: String,
        #[source]
        source: CryptoError,
    },
    #[error("{object}: malformed: {why}")]
    Malformed { object: String, why: String },
    #[error("target `{target}` holds no custos repository (no custos-repo.json); run `custos init` first")]
    NoRepository { target: String },
    #[error("target `{target}` holds custos snapshots but its custos-repo.json is missing (deleted or lost): copy it from another target of this policy, or run `custos init`, which writes a new one (with the default chunking parameters) and keeps every snapshot")]
    MarkerLost { target: String },
    #[error("target `{target}` already holds a custos repository; refusing to overwrite it")]
    AlreadyExists { target: String },
    #[error("target `{target}` holds repository format version {found}; this custos reads up to {supported}")]
    UnsupportedVersion {
        target: String,
        found: u32,
        supported: u32,
    },
    #[error("no snapshot matches `{0}`")]
    NoSnapshot(String),
    #[error("snapshot prefix `{0}` is ambiguous")]
    AmbiguousSnapshot(String),
}

impl From<TargetError> for RepoError {
    fn from(e: TargetError) -> Self {
        RepoError::Target(Box::new(e))
    }
}

impl RepoError {
    pub fn malformed(object: impl Into<String>, why: impl Into<String>) -> Self {
        RepoError::Malformed {
            object: object.into(),
            why: why.into(),
        }
    }
}

/// Appends `v` as a LEB128 varint (7 bits a byte, low first; FORMAT 3.4).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint of at most 10 bytes at `*at`, moving past it.
pub(crate) fn take_varint(b: &[u8], at: &mut usize) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&byte) = b.get(*at) else {
            return Err("truncated");
        };
        *at += 1;
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

/// zstd-compresses metadata before sealing.
/// Each thread keeps one zstd context: creating one per tree page costs
/// more than compressing the page.
pub(crate) fn compress_meta(plain: &[u8]) -> Vec<u8> {
    thread_local! {
        static META_ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    META_ZSTD.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.get_or_insert_with(|| {
            zstd::bulk::Compressor::new(3).expect("zstd compression context")
        });
        c.compress(plain)
            .expect("zstd compression of an in-memory buffer")
    })
}

/// Bound for decompressed metadata objects: a hostile object cannot make us
/// allocate more than this.
pub(crate) const MAX_META_BYTES: usize = 1 << 30;

pub(crate) fn decompress_meta(object: &str, data: &[u8]) -> Result<Vec<u8>, RepoError> {
    let size = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .ok_or_else(|| RepoError::malformed(object, "no zstd frame size"))?;
    if size as usize > MAX_META_BYTES {
        return Err(RepoError::malformed(
            object,
            format!("declares {size} bytes decompressed (limit {MAX_META_BYTES})"),
        ));
    }
    thread_local! {
        static META_UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    META_UNZSTD
        .with(|d| {
            let mut d = d.borrow_mut();
            let d = d.get_or_insert_with(|| {
                zstd::bulk::Decompressor::new().expect("zstd decompression context")
            });
            d.decompress(data, size as usize)
        })
        .map_err(|e| RepoError::malformed(object, format!("zstd: {e}")))
}

/// A zstd frame (RFC 8878) of `plain` in raw blocks, without compressing
/// it: any zstd decoder reads it as it reads [`compress_meta`]'s frames.
/// For metadata that is mostly keyed hashes and random key ids (group
/// pages and list pages), which zstd cannot shrink: on the 1 GiB
/// benchmark level 3 took about 8 µs a page to give back 100.1% of the
/// plaintext, most of a first backup's metadata compression time.
pub(crate) fn frame_meta_raw(plain: &[u8]) -> Vec<u8> {
    const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
    const BLOCK_MAX: usize = 128 * 1024;
    let len = plain.len();
    let mut out = Vec::with_capacity(len + 16 + 3 * (len / BLOCK_MAX));
    out.extend_from_slice(&MAGIC);
    // Frame header descriptor: the content size field's width in its top
    // two bits; bit 5 says the window is the content (no window
    // descriptor), which keeps the header as short as zstd's own; no
    // checksum, no dictionary.
    if len < 256 {
        out.extend_from_slice(&[0x20, len as u8]);
    } else if len < 256 + 65536 {
        out.push(0x60);
        out.extend_from_slice(&((len - 256) as u16).to_le_bytes());
    } else {
        // Larger: a window of 128 KiB (exponent 7, mantissa 0), so that no
        // decoder's memory limit is met, and the size in 8 bytes.
        out.extend_from_slice(&[0xC0, 7 << 3]);
        out.extend_from_slice(&(len as u64).to_le_bytes());
    }
    let mut blocks = plain.chunks(BLOCK_MAX).peekable();
    if blocks.peek().is_none() {
        // An empty frame is one empty last block.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(b) = blocks.next() {
        // Block header: last-block bit, type 0 (raw), size.
        let last = u32::from(blocks.peek().is_none());
        out.extend_from_slice(&((b.len() as u32) << 3 | last).to_le_bytes()[..3]);
        out.extend_from_slice(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_are_zstd_frames_of_their_content_at_every_size_class() {
        let data: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for n in [
            0, 1, 255, 256, 65_791, 65_792, 131_071, 131_072, 131_073, 262_144, 400_000,
        ] {
            let plain = &data[..n];
            let frame = frame_meta_raw(plain);
            let size = zstd::zstd_safe::get_frame_content_size(&frame);
            assert_eq!(size.ok().flatten(), Some(n as u64), "{n}");
            assert_eq!(decompress_meta("page", &frame).unwrap(), plain, "{n}");
            // zstd's own streaming decoder agrees, and nothing is left over.
            assert_eq!(zstd::stream::decode_all(&frame[..]).unwrap(), plain, "{n}");
            let blocks = n.div_ceil(128 * 1024).max(1);
            let header = match n {
                0..=255 => 6,
                256..=65_791 => 7,
                _ => 14,
            };
            assert_eq!(frame.len(), header + 3 * blocks + n, "{n}");
        }
        // A frame cut short is refused, not read short.
        let frame = frame_meta_raw(&data[..1000]);
        assert!(decompress_meta("page", &frame[..frame.len() - 1]).is_err());
    }
}
