//! An in-process S3 server for tests: s3s-fs over HTTP on `127.0.0.1:0`.
//!
//! ```ignore
//! let s3 = S3Server::start();
//! s3.create_bucket("bkt");
//! let store = custos::target::open_url("s3://bkt/repo", &s3.settings(), false)?;
//! // or, for the binary: Command::new(custos_bin()).envs(s3.env())
//! ```
//!
//! Facts about s3s-fs worth knowing (it stores objects as files):
//! * keys `a` and `a/b` cannot exist side by side (a key is a file, a
//!   "folder" is a directory): the server answers 500;
//! * `PutMode::Create` works for one client, but concurrent creates of one
//!   key may all succeed: test leases / compare-and-swap elsewhere;
//! * conditional GET and object lock are not implemented;
//! * the request signature *is* checked: a wrong secret is refused (403).
//!
//! The server runs on its own thread and tokio runtime, so it works from
//! both `#[test]` and `#[tokio::test]`; it stops when the value drops.

use custos::target::{S3Credentials, S3Settings};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use std::path::Path;
use std::sync::Once;
use std::thread::JoinHandle;

/// The `[s3]` section of a policy for a test server at `endpoint`: plain
/// HTTP and no client-level retries, so failures show at once.
pub fn policy_section(endpoint: &str) -> String {
    format!(
        "\n[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 0\n"
    )
}

/// The fixed access key id every test server accepts.
pub const ACCESS_KEY: &str = "custos-test-access-key";
/// The fixed secret every test server accepts.
pub const SECRET_KEY: &str = "custos-test-secret-key-0123456789";
/// The region the test servers claim.
pub const REGION: &str = "us-east-1";

/// A running s3s-fs server. Stops (and deletes its data) on drop.
pub struct S3Server {
    endpoint: String,
    root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server with an empty root folder.
    ///
    /// The first call in a process also exports the fixed test credentials
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`; the same values for
    /// every server) into this process's environment, so that
    /// `open_url("s3://..", &server.settings(), ..)` works in-process
    /// without passing credentials around.
    pub fn start() -> S3Server {
        Self::start_with(|_| {})
    }

    /// Like [`S3Server::start`], letting the caller configure the service
    /// first (e.g. an access hook that injects faults).
    pub fn start_with(configure: impl FnOnce(&mut s3s::service::S3ServiceBuilder)) -> S3Server {
        static EXPORT: Once = Once::new();
        EXPORT.call_once(|| {
            std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        });

        let root = tempfile::Builder::new()
            .prefix("custos-s3-")
            .tempdir()
            .expect("cannot create the S3 server's root folder");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("listener address");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("cannot open the s3s-fs root");
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(fs);
            b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            configure(&mut b);
            b.build()
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("s3s-fs {addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("cannot build the S3 server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("cannot register the listener");
                    let http = ConnBuilder::new(TokioExecutor::new());
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                let Ok((socket, _)) = accepted else { continue };
                                // Without it a response written in two
                                // segments waits for the client's delayed
                                // ACK: 40 ms a request, most of a test's time.
                                let _ = socket.set_nodelay(true);
                                let conn = http
                                    .serve_connection(TokioIo::new(socket), service.clone())
                                    .into_owned();
                                tokio::spawn(async move {
                                    let _ = conn.await;
                                });
                            }
                        }
                    }
                });
                // Dropping the runtime here cancels open connections.
            })
            .expect("cannot start the S3 server thread");
        S3Server {
            endpoint: format!("http://{addr}"),
            root,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The folder holding the buckets (one sub-folder per bucket, one file
    /// per object), so tests can corrupt or remove stored objects directly.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates a bucket (a folder under [`S3Server::root`]); idempotent.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name))
            .unwrap_or_else(|e| panic!("cannot create bucket {name}: {e}"));
    }

    /// Settings for `custos::target::open_url`: this endpoint, plain HTTP,
    /// region us-east-1, and a single client-level retry so failures are quick.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some(REGION.to_string()),
            allow_http: Some(true),
            max_retries: Some(1),
        }
    }

    /// The credentials this server accepts.
    pub fn credentials(&self) -> S3Credentials {
        S3Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    /// The environment a child process (the `custos` binary) needs to reach
    /// this server: use with `Command::envs`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `s3://BUCKET/PREFIX` (or `s3://BUCKET` for an empty prefix).
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
