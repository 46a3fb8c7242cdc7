//! Helpers of the fault tests: a fault-injecting S3 server, policy texts,
//! an inventory of the objects under a folder, and byte surgery on files.
//! Each test file uses a part of them.
#![allow(dead_code)]

use crate::common::S3Server;
use s3s::access::{S3Access, S3AccessContext};
use s3s::S3Result;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Object-creating S3 operations (a put, or the start of a multipart put).
const PUT_OPS: [&str; 2] = ["PutObject", "CreateMultipartUpload"];

/// Shared counters of a [`FaultyS3`]: puts seen, and the put count after
/// which every further put is refused with 503 Service Unavailable.
#[derive(Default)]
struct PutFaults {
    puts: AtomicU64,
    refused: AtomicU64,
    fail_after: AtomicU64,
    /// Milliseconds every put waits before it is served (a slow link).
    put_delay_ms: AtomicU64,
}

/// An access hook that refuses puts after a threshold (the store itself is
/// untouched: a refused put writes nothing, like a crash before it).
struct FaultAccess(Arc<PutFaults>);

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `S3Access` is declared with `#[async_trait]`; this is the same signature
// written out.
impl S3Access for FaultAccess {
    fn check<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        cx: &'life1 mut S3AccessContext<'life2>,
    ) -> BoxFut<'async_trait, S3Result<()>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if cx.credentials().is_none() {
                return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
            }
            if PUT_OPS.contains(&cx.s3_op().name()) {
                let delay = self.0.put_delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                let n = self.0.puts.fetch_add(1, Ordering::SeqCst) + 1;
                if n > self.0.fail_after.load(Ordering::SeqCst) {
                    self.0.refused.fetch_add(1, Ordering::SeqCst);
                    return Err(s3s::s3_error!(ServiceUnavailable, "injected fault"));
                }
            }
            Ok(())
        })
    }
}

/// An s3s-fs server over HTTP on 127.0.0.1 (the shared test server) whose
/// puts can be made to fail after a given count (from then on, every put
/// fails with 503). Stops on drop.
pub struct FaultyS3 {
    server: S3Server,
    faults: Arc<PutFaults>,
}

impl FaultyS3 {
    /// Starts a server with no faults set and one bucket, `bkt`.
    pub fn start() -> FaultyS3 {
        let faults = Arc::new(PutFaults {
            fail_after: AtomicU64::new(u64::MAX),
            ..Default::default()
        });
        let hook = FaultAccess(faults.clone());
        let server = S3Server::start_with(move |b| b.set_access(hook));
        server.create_bucket("bkt");
        FaultyS3 { server, faults }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The folder of bucket `bkt` (one file per object).
    pub fn bucket_dir(&self) -> PathBuf {
        self.server.root().join("bkt")
    }

    /// From now on, the next `n` puts succeed and every later one fails.
    pub fn fail_puts_after(&self, n: u64) {
        let seen = self.faults.puts.load(Ordering::SeqCst);
        self.faults.fail_after.store(seen + n, Ordering::SeqCst);
    }

    /// Every put from now on waits `ms` milliseconds before it is served,
    /// so that an upload takes a while however fast the machine is.
    pub fn delay_puts(&self, ms: u64) {
        self.faults.put_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The environment a `custos` child process needs to reach this server
    /// (credentials), as [`S3Server::env`].
    pub fn env(&self) -> Vec<(String, String)> {
        self.server.env()
    }

    /// Removes the faults.
    pub fn clear(&self) {
        self.faults.put_delay_ms.store(0, Ordering::SeqCst);
        self.faults.fail_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// Puts seen so far (refused ones included).
    pub fn puts(&self) -> u64 {
        self.faults.puts.load(Ordering::SeqCst)
    }

    /// Puts refused so far.
    pub fn refused(&self) -> u64 {
        self.faults.refused.load(Ordering::SeqCst)
    }
}

/// A record-mode policy for a SQLite database at `db`: the demo's tables
/// with subjects and a monthly period, one vault location, one target.
/// `extra` is appended verbatim (e.g. an `[s3]` section).
pub fn sqlite_policy(db: &Path, identity: &Path, vault: &str, target: &str, extra: &str) -> String {
    format!(
        r#"[policy]
name = "faults"

[store]
kind = "sqlite"
path = "{db}"

[[store.tables]]
name = "customers"
class = "identity"
subject = "id"

[[store.tables]]
name = "cdrs"
class = "consumption"
subject = "customer_id"
period = {{ column = "started_at", every = "month" }}

[keys]
identity = "{id}"
recipients = []
vault = ["{vault}"]

[[targets]]
name = "primary"
url = "{target}"
{extra}
"#,
        db = db.display(),
        id = identity.display(),
    )
}

/// The relative paths of the files under `dir` (sorted), leaving out the
/// staging files of an upload in progress (`name#N`). Tolerates files that
/// vanish while it looks (a writer may be renaming them).
pub fn list_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(base, &p, out),
                Ok(_) => {
                    let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                    if !rel.contains('#') {
                        out.push(rel);
                    }
                }
                Err(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every file under `dir` (relative path → BLAKE3 of its content); empty
/// if `dir` does not exist. For folders nobody is writing to.
pub fn inventory(dir: &Path) -> BTreeMap<String, String> {
    list_files(dir)
        .into_iter()
        .map(|rel| {
            let h = blake3::hash(&std::fs::read(dir.join(&rel)).unwrap());
            (rel, h.to_hex().to_string())
        })
        .collect()
}

/// The relative paths of the objects under `dir/sub` (e.g. `data`), sorted.
pub fn objects_under(dir: &Path, sub: &str) -> Vec<String> {
    list_files(dir)
        .into_iter()
        .filter(|k| k.starts_with(&format!("{sub}/")))
        .collect()
}

/// The pack objects (`data/<xx>/<id>`) holding the page lists of snapshot
/// `snapshot` (an id or `latest`) on the policy's primary target, sorted:
/// a reader loads them by place, without their index objects.
pub async fn page_list_packs(policy: &custos::policy::Policy, snapshot: &str) -> Vec<String> {
    let repo = custos::ops::MetaRepo::open(policy, None).await.unwrap();
    let snap = custos::repo::snapshot::Snapshot::find(&repo.target, &repo.meta, snapshot)
        .await
        .unwrap();
    let mut packs: Vec<String> = snap
        .page_lists()
        .map(|l| {
            let id = l.pack.to_string();
            format!("data/{}/{id}", &id[..2])
        })
        .collect();
    packs.sort();
    packs.dedup();
    packs
}

/// Flips one bit of the byte at `at` in a file.
pub fn flip_bit(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// Cuts a file to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(len: usize, mut s: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
