//! Criterion benches of the hot pieces of a backup: row encoding, chunking,
//! chunk ids (keyed BLAKE3), sealing (LZ4 under 1 KiB, else zstd; then
//! XChaCha20-Poly1305, its subkeys in SIMD lanes), pack writing and
//! reading a pack's entry table; and of a restore's row path: stored rows
//! decoded and written into a table's pages, with the entries of an index
//! gathered and built; and the period labels a reader puts on each row.
//! Run with `cargo bench --bench hot`; compare runs to spot
//! regressions. Whole-system figures against restic and borg come from
//! `scripts/bench.sh` (docs/PERFORMANCE.md).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use custos::chunk::{ChunkParams, Chunker};
use custos::crypto::{lanes, ChunkKeys, Key32, MetaKey};
use custos::repo::pack::{open_chunk, read_header, seal_chunk, Codec, PackWriter};
use custos::store::bulkload::{PageFile, TableLoad};
use custos::store::indexbuild::{IndexBuild, IndexSpec, KeyColumn};
use custos::store::pages::{ColumnRead, Layout};
use custos::store::record::{decode_row_ref, encode_row};
use custos::store::sqlite::{bucket_label, BucketCache};
use custos::store::Every;
use rusqlite::types::ValueRef;

/// Deterministic, call-record-like bytes (compressible, not trivially).
fn records(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut i = 0u64;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i += 1;
        let line = format!(
            "{i},{},2026-03-{:02}T{:02}:{:02}:00Z,{},voice,+4479{:08},{}\n",
            x % 260_000,
            1 + x % 28,
            x % 24,
            x % 60,
            x % 3600,
            x % 100_000_000,
            x % 9000
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(n);
    out
}

fn bench(c: &mut Criterion) {
    let data = records(8 << 20);

    let mut g = c.benchmark_group("row encoding");
    g.throughput(Throughput::Elements(1));
    let text = b"+447912345678".to_vec();
    g.bench_function("cdr row (10 values)", |b| {
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            let values = [
                ValueRef::Integer(4711),
                ValueRef::Text(b"2026-03-14T10:00:00Z"),
                ValueRef::Integer(184),
                ValueRef::Text(b"voice"),
                ValueRef::Text(&text),
                ValueRef::Integer(30211),
                ValueRef::Integer(0),
                ValueRef::Integer(0),
                ValueRef::Real(0.42),
                ValueRef::Null,
            ];
            encode_row(Some(black_box(123_456)), &values, &mut out);
            black_box(out.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("FastCDC records params, 8 MiB", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let mut ch = Chunker::new(ChunkParams::RECORDS, 7);
            ch.push::<()>(&data, &mut |c| {
                n += c.len();
                Ok(())
            })
            .unwrap();
            ch.finish::<()>(&mut |c| {
                n += c.len();
                Ok(())
            })
            .unwrap();
            black_box(n)
        })
    });
    g.finish();

    let keys = ChunkKeys::new(Key32::from_bytes([7; 32]));
    let chunk = &data[..8192];
    let mut g = c.benchmark_group("per chunk (8 KiB)");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("chunk id (keyed BLAKE3)", |b| {
        b.iter(|| black_box(keys.chunk_id(black_box(chunk))))
    });
    let mut codec = Codec::new(3);
    let id = keys.chunk_id(chunk);
    g.bench_function("seal (zstd -3 + XChaCha20-Poly1305)", |b| {
        b.iter(|| black_box(seal_chunk(&mut codec, &keys, &id, black_box(chunk)).len()))
    });
    g.finish();

    let small = &data[..256];
    let mut g = c.benchmark_group("per group (one 256-byte chunk)");
    g.throughput(Throughput::Elements(1));
    g.bench_function("derive group keys", |b| {
        let s = Key32::from_bytes([1; 32]);
        let t = Key32::from_bytes([2; 32]);
        b.iter(|| {
            let k = custos::crypto::group_key(Some(&s), &t, black_box("cdrs"));
            black_box(ChunkKeys::new(k).group_id)
        })
    });
    let sid = keys.chunk_id(small);
    g.bench_function("seal", |b| {
        b.iter(|| black_box(seal_chunk(&mut codec, &keys, &sid, black_box(small)).len()))
    });
    g.bench_function("XChaCha20-Poly1305 only", |b| {
        b.iter(|| black_box(keys.seal(&sid, black_box(small)).len()))
    });
    let small_sealed = seal_chunk(&mut codec, &keys, &sid, small);
    g.bench_function("open (decrypt, decompress, verify id)", |b| {
        b.iter(|| {
            let plain = open_chunk(&mut codec, &keys, &sid, black_box(&small_sealed), 256);
            black_box(plain.unwrap().len())
        })
    });
    g.finish();

    // Many short messages, each under its own key: one at a time through
    // the blake3 crate, and side by side in SIMD lanes.
    let mut g = c.benchmark_group("BLAKE3, 1024 messages");
    g.throughput(Throughput::Elements(1024));
    let lane_keys: Vec<[u8; 32]> = (0..1024u32)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    for len in [40usize, 250] {
        let jobs: Vec<(&[u8; 32], &[u8])> = lane_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k, &data[i..i + len]))
            .collect();
        let mut out = vec![[0u8; 32]; jobs.len()];
        g.bench_function(format!("{len} bytes, one at a time"), |b| {
            b.iter(|| {
                for (o, (k, m)) in out.iter_mut().zip(&jobs) {
                    *o = *blake3::keyed_hash(k, m).as_bytes();
                }
                black_box(out[0][0])
            })
        });
        g.bench_function(format!("{len} bytes, in lanes"), |b| {
            b.iter(|| {
                lanes::hash_many(lanes::Mode::Keyed, black_box(&jobs), &mut out);
                black_box(out[0][0])
            })
        });
    }
    g.finish();

    // XChaCha20's subkey of every chunk sealed or opened (HChaCha20 of the
    // group's key and the nonce's first 16 bytes): one at a time, and side
    // by side in SIMD lanes.
    let mut g = c.benchmark_group("HChaCha20, 1024 keys");
    g.throughput(Throughput::Elements(1024));
    let inputs: Vec<[u8; 16]> = (0..1024usize)
        .map(|i| data[i..i + 16].try_into().expect("16 bytes"))
        .collect();
    let jobs: Vec<(&[u8; 32], &[u8; 16])> = lane_keys.iter().zip(&inputs).collect();
    let mut out = vec![[0u8; 32]; jobs.len()];
    g.bench_function("one at a time", |b| {
        b.iter(|| {
            for (o, (k, i)) in out.iter_mut().zip(&jobs) {
                *o = lanes::hchacha_one(k, i);
            }
            black_box(out[0][0])
        })
    });
    g.bench_function("in lanes", |b| {
        b.iter(|| {
            lanes::hchacha_many(black_box(&jobs), &mut out);
            black_box(out[0][0])
        })
    });
    g.finish();

    let sealed: Vec<_> = data
        .chunks(8192)
        .map(|c| {
            let id = keys.chunk_id(c);
            (id, seal_chunk(&mut codec, &keys, &id, c), c.len() as u32)
        })
        .collect();
    let meta = MetaKey::new(&Key32::from_bytes([3; 32]));
    let mut g = c.benchmark_group("pack writing");
    g.throughput(Throughput::Bytes(
        sealed.iter().map(|s| s.1.len() as u64).sum(),
    ));
    g.bench_function("1024 sealed chunks into a pack", |b| {
        b.iter(|| {
            let mut w = PackWriter::new();
            for (id, s, raw) in &sealed {
                w.add(*id, s, *raw);
            }
            black_box(w.finish(&meta).0)
        })
    });
    g.finish();

    // A pack of 40,000 small chunks (a full pack of call-record groups):
    // its header's entry table opened and decoded, as `check
    // --repair-index` reads it and as an index object is read.
    let small: Vec<_> = data
        .chunks(200)
        .take(40_000)
        .map(|c| {
            let id = keys.chunk_id(c);
            (id, seal_chunk(&mut codec, &keys, &id, c), c.len() as u32)
        })
        .collect();
    let mut w = PackWriter::new();
    for (id, s, raw) in &small {
        w.add(*id, s, *raw);
    }
    let (_, pack, _) = w.finish(&meta);
    let mut g = c.benchmark_group("index entries");
    g.throughput(Throughput::Elements(small.len() as u64));
    g.bench_function("a header of 40k entries opened and decoded", |b| {
        b.iter(|| black_box(read_header("pack", &pack, &meta).unwrap().len()))
    });
    g.finish();
}

/// Call records as a restore receives them: custos's row encoding, one
/// after another.
fn stored_cdrs(n: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for rowid in 1..=n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let started = format!(
            "2026-{:02}-{:02}T{:02}:{:02}:00Z",
            1 + x % 12,
            1 + x % 28,
            x % 24,
            x % 60
        );
        let peer = format!("+4479{:08}", x % 100_000_000);
        let values = [
            ValueRef::Integer(rowid),
            ValueRef::Integer((x % 260_000) as i64),
            ValueRef::Text(started.as_bytes()),
            ValueRef::Integer((x % 3600) as i64),
            ValueRef::Text(b"voice"),
            ValueRef::Text(peer.as_bytes()),
            ValueRef::Integer((x % 9000) as i64),
        ];
        encode_row(Some(rowid), &values, &mut out);
    }
    out
}

/// A restore's writer: `rows` (custos's encoding) decoded and loaded into
/// the pages of a fresh database's `cdrs` table, with its index on
/// `(customer_id, started_at)` built from the same rows.
fn load_cdrs(dir: &std::path::Path, rows: &[u8]) -> u64 {
    let path = dir.join("restore.db");
    let _ = std::fs::remove_file(&path);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE cdrs (id INTEGER PRIMARY KEY, customer_id INTEGER, started_at TEXT,
             seconds INTEGER, kind TEXT, peer TEXT, cell INTEGER);
         CREATE INDEX cdrs_customer ON cdrs (customer_id, started_at);",
    )
    .unwrap();
    let root = |name: &str| -> u32 {
        c.query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (table, index) = (root("cdrs"), root("cdrs_customer"));
    drop(c);
    let col = |rowid| ColumnRead {
        rowid,
        real: false,
        missing_is_null: true,
    };
    let mut columns = vec![col(true)];
    columns.extend((1..7).map(|_| col(false)));
    let build = IndexBuild::new(
        IndexSpec {
            name: "cdrs_customer".into(),
            root: index,
            columns: vec![KeyColumn::binary(1), KeyColumn::binary(2)],
            unique: false,
            only: None,
            clustered: false,
            without_rowid: false,
        },
        dir,
    );
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut file = PageFile::open(f).unwrap();
    let mut load = TableLoad::new(table, Layout { columns }).with_indexes(vec![build]);
    let mut values = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        let (rowid, used) = decode_row_ref(&rows[at..], &mut values).unwrap();
        load.push(&mut file, rowid.unwrap(), &values).unwrap();
        at += used;
    }
    let n = load.rows();
    load.finish(&mut file).unwrap();
    file.close().unwrap();
    n
}

fn bench_restore(c: &mut Criterion) {
    const ROWS: i64 = 100_000;
    let rows = stored_cdrs(ROWS);
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("restore rows");
    g.sample_size(20);
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("100k call records into pages, with an index", |b| {
        b.iter(|| black_box(load_cdrs(dir.path(), &rows)))
    });
    g.finish();
}

/// 100 k call-record times as ISO 8601 texts, in time order (as a table
/// appended to over time holds them), 20 to 40 s apart.
fn call_times() -> Vec<String> {
    let mut t: i64 = 1_735_689_600;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += 20 + (x % 21) as i64;
            chrono::DateTime::from_timestamp(t, 0)
                .expect("in range")
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        })
        .collect()
}

fn bench_periods(c: &mut Criterion) {
    let times = call_times();
    let mut g = c.benchmark_group("period labels (100k texts, by month)");
    g.throughput(Throughput::Elements(times.len() as u64));
    g.bench_function("as the reader keeps them (span cache)", |b| {
        b.iter(|| {
            let mut cache = BucketCache::default();
            let mut label = None;
            for t in &times {
                cache.update(&mut label, ValueRef::Text(t.as_bytes()), Every::Month);
            }
            black_box(label)
        })
    });
    g.bench_function("each row's own (bucket_label)", |b| {
        b.iter(|| {
            let mut last = None;
            for t in &times {
                last = bucket_label(ValueRef::Text(t.as_bytes()), Every::Month);
            }
            black_box(last)
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_restore, bench_periods);
criterion_main!(benches);
