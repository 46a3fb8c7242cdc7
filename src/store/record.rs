//! The canonical, versioned encoding of one table row (record format v1).
//!
//! A backup turns every row into these bytes; they are what gets chunked,
//! deduplicated and encrypted, so the encoding is *canonical*: one row has
//! exactly one encoding, and the decoder refuses every other byte string
//! (over-long varints, unknown flags, trailing bytes). The exact layout is
//! specified in docs/FORMAT.md section 9; in short:
//!
//! ```text
//! row    = varint(len(body)) body
//! body   = header [zigzag-varint(rowid)] varint(ncols) value{ncols}
//! header = 0x10 | (rowid present ? 0x01 : 0x00)      (high nibble: version 1)
//! value  = 0x00                                       NULL
//!        | 0x01 zigzag-varint(i64)                    INTEGER
//!        | 0x02 f64 bits, 8 bytes little-endian       REAL
//!        | 0x03 varint(n) n bytes                     TEXT (raw bytes, any encoding)
//!        | 0x04 varint(n) n bytes                     BLOB
//! ```
//!
//! `varint` is unsigned LEB128 of a `u64`, minimal length (at most 10 bytes);
//! `zigzag` maps `i64` to `u64` as `(n << 1) ^ (n >> 63)`.
//!
//! The decoder treats its input as hostile: it never panics, never reads out
//! of bounds, and never allocates more than the input's own length justifies.

use rusqlite::types::ValueRef;
use std::fmt;

/// Record format version written in the high nibble of every row header.
pub const RECORD_VERSION: u8 = 1;

const HEADER_V1: u8 = RECORD_VERSION << 4;
const FLAG_ROWID: u8 = 0x01;

const TAG_NULL: u8 = 0x00;
const TAG_INTEGER: u8 = 0x01;
const TAG_REAL: u8 = 0x02;
const TAG_TEXT: u8 = 0x03;
const TAG_BLOB: u8 = 0x04;

/// Why a byte string is not a valid encoded row. Offsets count bytes from
/// the start of the buffer given to the decoder. Never carries row content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The buffer ends inside a row.
    #[error(
        "row record truncated at byte {offset}: {needed} more bytes expected; \
         the data was cut short or is corrupt, restore it from another copy"
    )]
    Truncated { offset: usize, needed: u64 },
    /// A varint is longer than 10 bytes, overflows 64 bits or is not minimal.
    #[error(
        "row record has an invalid or non-canonical varint at byte {offset}; \
         the data is corrupt, restore it from another copy"
    )]
    Varint { offset: usize },
    /// The row header names a version or flags this build does not know.
    #[error(
        "row record at byte {offset} has header 0x{header:02x}, not record format v1; \
         it was written by a newer custos or is corrupt: upgrade custos or restore from another copy"
    )]
    Header { offset: usize, header: u8 },
    /// A value starts with an unknown type tag.
    #[error(
        "row record has unknown value tag 0x{tag:02x} at byte {offset}; \
         the data is corrupt, restore it from another copy"
    )]
    Tag { offset: usize, tag: u8 },
    /// The row's declared length does not match what its values use.
    #[error(
        "row record ending at byte {offset} has {extra} unused bytes after its last value; \
         the data is corrupt, restore it from another copy"
    )]
    Trailing { offset: usize, extra: u64 },
}

impl RecordError {
    /// The same error with every offset moved by `base` (for errors found in
    /// a slice of a larger buffer).
    fn shifted(self, base: usize) -> Self {
        match self {
            RecordError::Truncated { offset, needed } => RecordError::Truncated {
                offset: offset.saturating_add(base),
                needed,
            },
            RecordError::Varint { offset } => RecordError::Varint {
                offset: offset.saturating_add(base),
            },
            RecordError::Header { offset, header } => RecordError::Header {
                offset: offset.saturating_add(base),
                header,
            },
            RecordError::Tag { offset, tag } => RecordError::Tag {
                offset: offset.saturating_add(base),
                tag,
            },
            RecordError::Trailing { offset, extra } => RecordError::Trailing {
                offset: offset.saturating_add(base),
                extra,
            },
        }
    }
}

/// One SQLite value with its exact storage class.
///
/// `Text` holds the raw bytes SQLite stores (UTF-8 for a UTF-8 database),
/// exact even when they are not valid UTF-8 or contain NUL bytes.
#[derive(Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Value {
    /// A borrowed view, as rusqlite binds and reads values.
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// An owned copy of a borrowed value.
    pub fn from_value_ref(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

/// Redacted: shows the storage class and size, never the content (values are
/// customer data and must not reach logs).
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Integer(_) => f.write_str("Integer(..)"),
            Value::Real(_) => f.write_str("Real(..)"),
            Value::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Value::Blob(b) => write!(f, "Blob({} bytes)", b.len()),
        }
    }
}

/// One decoded row: its rowid (for rowid tables) and its restorable column
/// values in table order.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub rowid: Option<i64>,
    pub values: Vec<Value>,
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn value_len(v: &ValueRef<'_>) -> usize {
    1 + match v {
        ValueRef::Null => 0,
        ValueRef::Integer(i) => varint_len(zigzag(*i)),
        ValueRef::Real(_) => 8,
        ValueRef::Text(b) | ValueRef::Blob(b) => varint_len(b.len() as u64) + b.len(),
    }
}

/// Appends one encoded row, with values produced by `value(i)` for
/// `i in 0..ncols`. `value` is called twice per column (size, then bytes) and
/// must return the same value both times.
pub(crate) fn encode_row_with<'v, F>(rowid: Option<i64>, ncols: usize, value: F, out: &mut Vec<u8>)
where
    F: Fn(usize) -> ValueRef<'v>,
{
    let mut body = 1 + varint_len(ncols as u64);
    if let Some(r) = rowid {
        body += varint_len(zigzag(r));
    }
    for i in 0..ncols {
        body += value_len(&value(i));
    }
    out.reserve(varint_len(body as u64) + body);
    put_varint(out, body as u64);
    match rowid {
        Some(r) => {
            out.push(HEADER_V1 | FLAG_ROWID);
            put_varint(out, zigzag(r));
        }
        None => out.push(HEADER_V1),
    }
    put_varint(out, ncols as u64);
    for i in 0..ncols {
        match value(i) {
            ValueRef::Null => out.push(TAG_NULL),
            ValueRef::Integer(n) => {
                out.push(TAG_INTEGER);
                put_varint(out, zigzag(n));
            }
            ValueRef::Real(r) => {
                out.push(TAG_REAL);
                out.extend_from_slice(&r.to_bits().to_le_bytes());
            }
            ValueRef::Text(b) => {
                out.push(TAG_TEXT);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            ValueRef::Blob(b) => {
                out.push(TAG_BLOB);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
}

/// Appends the canonical encoding of one row (self-delimiting: it starts with
/// its own length) to `out`.
pub fn encode_row(rowid: Option<i64>, values: &[ValueRef<'_>], out: &mut Vec<u8>) {
    encode_row_with(rowid, values.len(), |i| values[i], out);
}

/// Appends the canonical encoding of an owned row to `out`.
pub fn encode_owned_row(row: &Row, out: &mut Vec<u8>) {
    encode_row_with(
        row.rowid,
        row.values.len(),
        |i| row.values[i].as_value_ref(),
        out,
    );
}

/// A bounds-checked cursor over an input buffer.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, RecordError> {
        match self.buf.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                Ok(*b)
            }
            None => Err(RecordError::Truncated {
                offset: self.pos,
                needed: 1,
            }),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], RecordError> {
        if n > self.remaining() as u64 {
            return Err(RecordError::Truncated {
                offset: self.pos,
                needed: n - self.remaining() as u64,
            });
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Minimal unsigned LEB128, at most 10 bytes, no overflow. Inlined
    /// for a one-byte varint (most of a row's integers and lengths).
    #[inline]
    fn varint(&mut self) -> Result<u64, RecordError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.long_varint(),
        }
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64, RecordError> {
        let start = self.pos;
        let mut n: u64 = 0;
        for i in 0..10u32 {
            let b = self.byte()?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 0x01 {
                return Err(RecordError::Varint { offset: start });
            }
            n |= low << (7 * i);
            if b & 0x80 == 0 {
                // Minimal: a final byte of zero is only allowed as the sole byte.
                if b == 0 && i > 0 {
                    return Err(RecordError::Varint { offset: start });
                }
                return Ok(n);
            }
        }
        Err(RecordError::Varint { offset: start })
    }
}

/// Reads only the frame of the row at the start of `buf`: its rowid and the
/// number of bytes it uses. The values are not checked (the full decode
/// does that when the row is used); this is what ordering rows needs.
pub fn row_span(buf: &[u8]) -> Result<(Option<i64>, usize), RecordError> {
    let f = row_frame(buf)?;
    Ok((f.rowid, f.used))
}

/// A row's frame: its rowid, where its values start and how long it is.
struct Frame<'a> {
    rowid: Option<i64>,
    /// The body after the header and rowid.
    values: Cursor<'a>,
    body_start: usize,
    used: usize,
}

fn row_frame(buf: &[u8]) -> Result<Frame<'_>, RecordError> {
    let mut outer = Cursor { buf, pos: 0 };
    let body_len = outer.varint()?;
    let body_start = outer.pos;
    let body = outer.take(body_len)?;
    let mut c = Cursor { buf: body, pos: 0 };
    let err = |e: RecordError| e.shifted(body_start);
    let header = c.byte().map_err(err)?;
    if header & !FLAG_ROWID != HEADER_V1 {
        return Err(RecordError::Header {
            offset: body_start,
            header,
        });
    }
    let rowid = if header & FLAG_ROWID != 0 {
        Some(unzigzag(c.varint().map_err(err)?))
    } else {
        None
    };
    Ok(Frame {
        rowid,
        values: c,
        body_start,
        used: outer.pos,
    })
}

/// Decodes one row at the start of `buf` without copying text or blobs:
/// `values` is cleared and filled with views into `buf`. Returns the rowid
/// and the number of bytes the row used.
pub fn decode_row_ref<'a>(
    buf: &'a [u8],
    values: &mut Vec<ValueRef<'a>>,
) -> Result<(Option<i64>, usize), RecordError> {
    values.clear();
    let Frame {
        rowid,
        values: mut c,
        body_start,
        used,
    } = row_frame(buf)?;
    let err = |e: RecordError| e.shifted(body_start);
    let ncols = c.varint().map_err(err)?;
    // Every value takes at least one byte: a count above what is left is a
    // lie, and must not drive an allocation.
    if ncols > c.remaining() as u64 {
        return Err(err(RecordError::Truncated {
            offset: c.pos,
            needed: ncols - c.remaining() as u64,
        }));
    }
    values.reserve(ncols as usize);
    for _ in 0..ncols {
        let at = c.pos;
        let v = match c.byte().map_err(err)? {
            TAG_NULL => ValueRef::Null,
            TAG_INTEGER => ValueRef::Integer(unzigzag(c.varint().map_err(err)?)),
            TAG_REAL => {
                let b = c.take(8).map_err(err)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                ValueRef::Real(f64::from_bits(u64::from_le_bytes(a)))
            }
            TAG_TEXT => {
                let n = c.varint().map_err(err)?;
                ValueRef::Text(c.take(n).map_err(err)?)
            }
            TAG_BLOB => {
                let n = c.varint().map_err(err)?;
                ValueRef::Blob(c.take(n).map_err(err)?)
            }
            tag => {
                return Err(RecordError::Tag {
                    offset: body_start + at,
                    tag,
                })
            }
        };
        values.push(v);
    }
    if c.remaining() != 0 {
        return Err(RecordError::Trailing {
            offset: used,
            extra: c.remaining() as u64,
        });
    }
    Ok((rowid, used))
}

/// Decodes one row at the start of `buf`; returns it and the number of bytes
/// it used (the next row, if any, starts there).
pub fn decode_row(buf: &[u8]) -> Result<(Row, usize), RecordError> {
    let mut refs = Vec::new();
    let (rowid, used) = decode_row_ref(buf, &mut refs)?;
    let values = refs.into_iter().map(Value::from_value_ref).collect();
    Ok((Row { rowid, values }, used))
}

/// Iterates over a concatenation of encoded rows. After the first error it
/// yields nothing more (the position of later rows is unknown).
pub struct RowReader<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> RowReader<'a> {
    /// A reader over `buf`, which holds zero or more whole encoded rows.
    pub fn new(buf: &'a [u8]) -> Self {
        RowReader {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Bytes consumed so far (the offset of the next row).
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl Iterator for RowReader<'_> {
    type Item = Result<Row, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match decode_row(&self.buf[self.pos..]) {
            Ok((row, used)) => {
                self.pos += used;
                Some(Ok(row))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e.shifted(self.pos)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn sample_rows() -> Vec<Row> {
        vec![
            Row {
                rowid: Some(1),
                values: vec![
                    Value::Null,
                    Value::Integer(i64::MIN),
                    Value::Integer(i64::MAX),
                    Value::Integer(-1),
                    Value::Real(-0.0),
                    Value::Real(f64::INFINITY),
                    Value::Real(f64::MIN_POSITIVE),
                    Value::Text(b"caf\xc3\xa9\0\xff".to_vec()),
                    Value::Blob(vec![0, 1, 2, 0]),
                    Value::Text(Vec::new()),
                    Value::Blob(Vec::new()),
                ],
            },
            Row {
                rowid: None,
                values: vec![Value::Integer(0)],
            },
            Row {
                rowid: Some(i64::MIN),
                values: vec![],
            },
            Row {
                rowid: Some(300),
                values: vec![Value::Blob(vec![7u8; 1000])],
            },
        ]
    }

    #[test]
    fn row_span_agrees_with_the_full_decode() {
        let mut buf = Vec::new();
        for r in sample_rows() {
            encode_owned_row(&r, &mut buf);
        }
        let mut pos = 0;
        let mut values = Vec::new();
        while pos < buf.len() {
            let span = row_span(&buf[pos..]).unwrap();
            let full = decode_row_ref(&buf[pos..], &mut values).unwrap();
            assert_eq!(span, full);
            pos += span.1;
        }
        // A cut frame is an error, not a short row.
        assert!(row_span(&buf[..3]).is_err());
        assert!(row_span(&[0x05, HEADER_V1 | FLAG_ROWID]).is_err());
    }

    #[test]
    fn exact_bytes_of_a_small_row() {
        let mut out = Vec::new();
        encode_row(
            Some(-1),
            &[
                ValueRef::Null,
                ValueRef::Integer(64),
                ValueRef::Text(b"ab"),
                ValueRef::Blob(&[0]),
                ValueRef::Real(1.0),
            ],
            &mut out,
        );
        let expect: Vec<u8> = vec![
            23, // body length
            0x11, 0x01, // header v1 + rowid, zigzag(-1) = 1
            5,    // ncols
            0x00, // NULL
            0x01, 0x80, 0x01, // INTEGER zigzag(64) = 128
            0x03, 2, b'a', b'b', // TEXT
            0x04, 1, 0, // BLOB
            0x02, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // REAL 1.0
        ];
        assert_eq!(out, expect);
    }

    #[test]
    fn round_trip_and_reader() {
        let rows = sample_rows();
        let mut buf = Vec::new();
        for r in &rows {
            encode_owned_row(r, &mut buf);
        }
        let back: Vec<Row> = RowReader::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(back.len(), rows.len());
        for (a, b) in rows.iter().zip(&back) {
            assert_eq!(a.rowid, b.rowid);
            assert_eq!(a.values.len(), b.values.len());
            for (x, y) in a.values.iter().zip(&b.values) {
                match (x, y) {
                    (Value::Real(p), Value::Real(q)) => assert_eq!(p.to_bits(), q.to_bits()),
                    _ => assert_eq!(x, y),
                }
            }
        }
        // Re-encoding gives the same bytes: the encoding is canonical.
        let mut again = Vec::new();
        for r in &back {
            encode_owned_row(r, &mut again);
        }
        assert_eq!(again, buf);
    }

    #[test]
    fn non_canonical_varints_are_refused() {
        // Body length 0x02 written as two bytes.
        assert_eq!(
            decode_row(&[0x82, 0x00, 0x10, 0x00]).unwrap_err(),
            RecordError::Varint { offset: 0 }
        );
        // 11-byte varint.
        let mut b = vec![0xffu8; 10];
        b.push(0x01);
        assert!(matches!(
            decode_row(&b).unwrap_err(),
            RecordError::Varint { .. }
        ));
        // Overflowing 10th byte.
        let mut b = vec![0xffu8; 9];
        b.push(0x02);
        assert!(matches!(
            decode_row(&b).unwrap_err(),
            RecordError::Varint { .. }
        ));
    }

    /// Every length of varint reads back, at the end of the buffer and
    /// with bytes after it (the one-byte form has a path of its own), and
    /// a non-minimal one is refused either way.
    #[test]
    fn varints_of_every_length_read_back_and_overlong_ones_are_refused() {
        let mut values = vec![0u64, 1, 127, u64::MAX];
        for shift in 7..64 {
            values.extend([(1u64 << shift) - 1, 1 << shift, (1 << shift) + 1]);
        }
        for v in values {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let len = b.len();
            for tail in [0usize, 1, 2, 9] {
                let mut buf = b.clone();
                buf.extend(std::iter::repeat_n(0x55, tail));
                let mut c = Cursor { buf: &buf, pos: 0 };
                assert_eq!(c.varint(), Ok(v), "{v} with {tail} bytes after");
                assert_eq!(c.pos, len);
            }
        }
        // Non-minimal: a zero last byte after continuation bytes.
        for bad in [&[0x80u8, 0x00][..], &[0x81, 0x80, 0x00], &[0xff, 0x00]] {
            for tail in [0usize, 1, 4] {
                let mut buf = bad.to_vec();
                buf.extend(std::iter::repeat_n(0x01, tail));
                let mut c = Cursor { buf: &buf, pos: 0 };
                assert_eq!(
                    c.varint(),
                    Err(RecordError::Varint { offset: 0 }),
                    "{bad:?} with {tail} bytes after"
                );
            }
        }
        // Cut short: continuation bytes and then nothing.
        let mut c = Cursor {
            buf: &[0x80, 0x80],
            pos: 0,
        };
        assert!(matches!(c.varint(), Err(RecordError::Truncated { .. })));
    }

    #[test]
    fn lies_about_sizes_are_refused_without_allocation() {
        // Body claims 2^62 bytes.
        let mut b = Vec::new();
        put_varint(&mut b, 1 << 62);
        b.push(0x10);
        assert!(matches!(
            decode_row(&b).unwrap_err(),
            RecordError::Truncated { .. }
        ));
        // ncols claims 2^40 columns inside a tiny body.
        let mut body = vec![0x10];
        put_varint(&mut body, 1 << 40);
        let mut b = Vec::new();
        put_varint(&mut b, body.len() as u64);
        b.extend_from_slice(&body);
        assert!(matches!(
            decode_row(&b).unwrap_err(),
            RecordError::Truncated { .. }
        ));
        // A text claims 2^50 bytes.
        let mut body = vec![0x10, 1, TAG_TEXT];
        put_varint(&mut body, 1 << 50);
        let mut b = Vec::new();
        put_varint(&mut b, body.len() as u64);
        b.extend_from_slice(&body);
        assert!(matches!(
            decode_row(&b).unwrap_err(),
            RecordError::Truncated { .. }
        ));
    }

    #[test]
    fn bad_header_tag_and_trailing_bytes() {
        assert!(matches!(
            decode_row(&[1, 0x20]).unwrap_err(),
            RecordError::Header { header: 0x20, .. }
        ));
        assert!(matches!(
            decode_row(&[1, 0x12]).unwrap_err(),
            RecordError::Header { header: 0x12, .. }
        ));
        assert_eq!(
            decode_row(&[3, 0x10, 1, 0x09]).unwrap_err(),
            RecordError::Tag { offset: 3, tag: 9 }
        );
        assert!(matches!(
            decode_row(&[4, 0x10, 1, 0x00, 0x00]).unwrap_err(),
            RecordError::Trailing { extra: 1, .. }
        ));
    }

    #[test]
    fn random_and_corrupted_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut valid = Vec::new();
        for r in sample_rows() {
            encode_owned_row(&r, &mut valid);
        }
        let mut decoded_ok = 0u32;
        for round in 0..20_000u32 {
            let input: Vec<u8> = match round % 4 {
                0 => {
                    let n = rng.gen_range(0..64);
                    let mut v = vec![0u8; n];
                    rng.fill_bytes(&mut v);
                    v
                }
                1 => {
                    let mut v = valid.clone();
                    for _ in 0..rng.gen_range(1..4) {
                        let i = rng.gen_range(0..v.len());
                        v[i] ^= 1 << rng.gen_range(0..8);
                    }
                    v
                }
                2 => valid[..rng.gen_range(0..valid.len())].to_vec(),
                _ => {
                    let mut v = valid.clone();
                    let i = rng.gen_range(0..v.len());
                    v.insert(i, rng.gen());
                    v
                }
            };
            let mut total = 0usize;
            for r in RowReader::new(&input) {
                match r {
                    Ok(row) => {
                        decoded_ok += 1;
                        // What decodes re-encodes to the same bytes.
                        let mut again = Vec::new();
                        encode_owned_row(&row, &mut again);
                        assert_eq!(&input[total..total + again.len()], &again[..]);
                        total += again.len();
                    }
                    Err(_) => break,
                }
            }
            assert!(total <= input.len());
        }
        assert!(decoded_ok > 0);
    }
}
