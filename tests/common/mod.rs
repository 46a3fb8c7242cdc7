//! Helpers shared by the integration tests.
//!
//! Use from a test file with `mod common;` and then:
//!
//! * [`S3Server`]: a real S3 server (s3s-fs) over HTTP on 127.0.0.1, with
//!   fixed credentials; `settings()` / `credentials()` for in-process use,
//!   `env()` for a child process.
//! * [`FaultStore`]: an `ObjectStore` wrapper that fails puts, counts
//!   operations and corrupts reads, to test retries and verification.
//! * [`custos_bin`], [`tempdir`], [`run`], [`run_fail`]: drive the binary.
//! * [`bytes_under`]: what a folder holds, to compare a target's growth.
//!
//! Every test binary compiles this module and uses a part of it, hence the
//! `allow`s below.
#![allow(dead_code, unused_imports)]

pub mod fault;
pub mod s3;

pub use fault::{FaultStore, OpCounts};
pub use s3::S3Server;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use std::borrow::BorrowMut;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of the `custos` binary built for these tests.
pub fn custos_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_custos"))
}

/// A `Command` for the `custos` binary. Its state directory (audit log,
/// job state) defaults to one folder per test process, so that no test
/// writes into the home directory; tests that look at the state pass
/// `--state-dir` themselves. The folder is under cargo's target scratch
/// directory and is removed when the process exits: a `TempDir` held in a
/// static is never dropped, so each test process used to leave one behind
/// in the system's temporary directory. One per process, not per binary,
/// so that processes of one binary run side by side (one test a process,
/// as some runners do) never empty each other's.
pub fn custos() -> Command {
    let mut c = Command::new(custos_bin());
    c.env("CUSTOS_STATE_DIR", test_state_dir());
    c
}

static TEST_STATE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();

/// The test process's default state folder (see [`custos`]), made on first
/// use.
fn test_state_dir() -> &'static Path {
    extern "C" fn remove_test_state() {
        if let Some(dir) = TEST_STATE.get() {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
    TEST_STATE
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("custos-test-state-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("a test state directory");
            // SAFETY: registers a function without arguments to run at
            // the process's normal exit; it only reads a static set here.
            unsafe { libc::atexit(remove_test_state) };
            dir
        })
        .path()
}

/// A fresh temporary directory, removed when the returned value drops.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("custos-test-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

/// The bytes of every file under `dir`, at any depth (what a `file://`
/// target or vault location holds).
pub fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
}

/// Decrypts an age file with `identity`.
pub fn age_decrypt(identity: &age::x25519::Identity, bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let d = age::Decryptor::new_buffered(bytes).unwrap();
    let mut r = d
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// Every row of a SQLite table (rowid order where there is one), `filter`
/// an SQL condition.
pub fn rows(db: &std::path::Path, table: &str, filter: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare(&format!(
            "SELECT * FROM \"{table}\" WHERE {filter} ORDER BY rowid"
        ))
        .unwrap();
    let n = st.column_count();
    st.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Copies a folder tree.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A `file://` URL for a local path.
pub fn file_url(path: &std::path::Path) -> String {
    url::Url::from_directory_path(path)
        .or_else(|()| url::Url::from_file_path(path))
        .expect("an absolute path")
        .to_string()
}

fn describe(cmd: &Command, out: &Output) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!(
        "command: {} {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cmd.get_program().to_string_lossy(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command to completion and returns its output; panics with the
/// command line, exit status, stdout and stderr if it did not succeed.
pub fn run(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    if !out.status.success() {
        panic!("command failed\n{}", describe(cmd, &out));
    }
    out
}

/// Runs a command that is expected to fail; panics (showing its output) if
/// it succeeds. Returns the output so the test can check the message.
pub fn run_fail(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    if out.status.success() {
        panic!(
            "command succeeded but was expected to fail\n{}",
            describe(cmd, &out)
        );
    }
    out
}

/// The stdout of an output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of an output as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// moto
// ---------------------------------------------------------------------------

/// A moto S3 server on 127.0.0.1 (its conditional puts have exactly one
/// winner; it keeps bucket versioning), with a bucket `bkt`; killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server: `CUSTOS_MOTO_SERVER`, the venv `scripts/test.sh` makes
/// under the target folder, or `moto_server` on the PATH.
pub fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CUSTOS_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let venv = target.join("moto-venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    let on_path = Command::new("moto_server").arg("--help").output();
    on_path
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("moto_server"))
}

/// Starts moto, or `None` when it is not installed (the caller skips
/// loudly).
pub fn start_moto() -> Option<Moto> {
    let bin = moto_binary()?;
    let mut child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(i) = line.find("Running on http://127.0.0.1:") {
                    let _ = tx.send(line[i + "Running on ".len()..].trim().to_string());
                }
            }
        });
    }
    let endpoint = rx.recv_timeout(Duration::from_secs(60)).ok()?;
    let st = Command::new("curl")
        .args(["-s", "-f", "-X", "PUT", &format!("{endpoint}/bkt")])
        .status()
        .ok()?;
    assert!(st.success(), "cannot create a bucket on moto");
    Some(Moto { child, endpoint })
}

/// The repository marker (`custos-repo.json`) in a `file://` target's
/// folder, as JSON.
pub fn repo_marker(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("custos-repo.json")).unwrap()).unwrap()
}
