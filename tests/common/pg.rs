//! A throw-away PostgreSQL cluster for tests.
//!
//! [`PgCluster::start`] runs `initdb` (as the `postgres` user when the tests
//! run as root: initdb refuses root) in a temporary folder, starts the
//! server on a free port of 127.0.0.1 with password authentication for TCP,
//! and stops it (`pg_ctl stop -m immediate`) when dropped.
//!
//! The server binaries are looked for in `CUSTOS_PG_BINDIR`, then
//! `pg_config --bindir`, then the Debian folder of PostgreSQL 15. When they
//! are absent the test fails with a message saying how to install them
//! (`scripts/test.sh` does), unless `CUSTOS_SKIP_POSTGRES=1` is set: then it
//! prints a loud SKIPPED line and returns early.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser password of test clusters.
pub const PASSWORD: &str = "s3cret-test-pw";

/// A running test cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// Whether TCP clients must use TLS (`hostssl` only).
    tls: bool,
}

/// A server certificate and its private key, PEM; with `client_ca_pem`,
/// the server also takes client certificates signed by that CA, and role
/// [`CERT_USER`] logs in by certificate alone (`cert` authentication).
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

/// The role that logs in with a client certificate (its common name) when
/// the cluster takes them; a superuser, without a password.
pub const CERT_USER: &str = "custos_cert";

fn bindir() -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CUSTOS_PG_BINDIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ));
        }
    }
    dirs.push(PathBuf::from("/usr/lib/postgresql/15/bin"));
    dirs.into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

impl PgCluster {
    /// Starts a cluster, or returns `None` (after a loud SKIPPED line) when
    /// the binaries are missing and `CUSTOS_SKIP_POSTGRES=1`.
    pub fn start() -> Option<PgCluster> {
        PgCluster::start_with(None)
    }

    /// As [`start`](Self::start), with TLS on and required of every TCP
    /// client (`pg_hba.conf` allows `hostssl` only), with this certificate.
    pub fn start_tls(server: &ServerTls) -> Option<PgCluster> {
        PgCluster::start_with(Some(server))
    }

    fn start_with(tls: Option<&ServerTls>) -> Option<PgCluster> {
        let Some(bindir) = bindir() else {
            if std::env::var("CUSTOS_SKIP_POSTGRES").as_deref() == Ok("1") {
                eprintln!(
                    "\n*** SKIPPED: PostgreSQL server binaries (initdb, pg_ctl) not found; \
                     this test did NOT run ***\n"
                );
                return None;
            }
            panic!(
                "PostgreSQL 15 server binaries not found (CUSTOS_PG_BINDIR, pg_config --bindir, \
                 /usr/lib/postgresql/15/bin): install postgresql-15 (scripts/test.sh does), or set \
                 CUSTOS_SKIP_POSTGRES=1 to skip these tests"
            );
        };
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("custos-pg-")
            .tempdir()
            .unwrap();
        // The server user must reach and own its folders.
        let mut c = Command::new("chmod");
        c.arg("a+rwx").arg(dir.path());
        check("chmod", c.output());
        if as_postgres {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(dir.path());
            check("chown", c.output());
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if as_postgres {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&pwfile);
            check("chown", c.output());
        }
        let mut cluster = PgCluster {
            dir,
            bindir,
            port: 0,
            as_postgres,
            tls: tls.is_some(),
        };
        let data = cluster.data_dir();
        let initdb = cluster.server_cmd("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display()));
        });
        check("initdb", initdb);
        let mut server_options = String::new();
        if let Some(t) = tls {
            let (crt, key) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&crt, &t.cert_pem).unwrap();
            std::fs::write(&key, &t.key_pem).unwrap();
            let mut c = Command::new("chmod");
            c.arg("0600").arg(&key);
            check("chmod", c.output());
            if as_postgres {
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(&crt).arg(&key);
                check("chown", c.output());
            }
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).unwrap();
            let mut only_tls: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            server_options =
                " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
            if let Some(ca) = &t.client_ca_pem {
                let root = data.join("client-ca.crt");
                std::fs::write(&root, ca).unwrap();
                if as_postgres {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&root);
                    check("chown", c.output());
                }
                // The first matching line wins: the certificate role by
                // certificate, everyone else as before.
                only_tls = format!(
                    "hostssl all {CERT_USER} 127.0.0.1/32 cert\nhostssl all {CERT_USER} ::1/128 cert\n{only_tls}"
                );
                server_options.push_str(" -c ssl_ca_file=client-ca.crt");
            }
            std::fs::write(&hba, only_tls).unwrap();
        }
        for attempt in 0..5 {
            let port = free_port();
            let log = cluster.dir.path().join("server.log");
            let sock = cluster.dir.path().to_path_buf();
            let out = cluster.server_cmd("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&log)
                    .arg("-w")
                    .arg("-o")
                    .arg(format!(
                        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                         -c synchronous_commit=off -c full_page_writes=off{server_options}",
                        sock.display()
                    ))
                    .arg("start");
            });
            match out {
                Ok(o) if o.status.success() => {
                    cluster.port = port;
                    if tls.is_some_and(|t| t.client_ca_pem.is_some()) {
                        cluster.psql(
                            "postgres",
                            &format!("CREATE ROLE {CERT_USER} LOGIN SUPERUSER"),
                        );
                    }
                    return Some(cluster);
                }
                _ if attempt < 4 => continue,
                other => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("pg_ctl start failed: {other:?}\n{log}");
                }
            }
        }
        unreachable!()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server binary as the server's user.
    fn server_cmd(&self, tool: &str, args: impl FnOnce(&mut Command)) -> std::io::Result<Output> {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bindir.join(tool));
            c
        } else {
            Command::new(self.bindir.join(tool))
        };
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        args(&mut c);
        c.output()
    }

    /// The folder of the server binaries.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB` (no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A client tool command (psql, pg_dump, pgbench, createdb) aimed at the
    /// cluster with the password in the environment.
    pub fn tool(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bindir.join(tool));
        c.env("PGPASSWORD", PASSWORD)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .stdin(Stdio::null());
        if self.tls {
            c.env("PGSSLMODE", "require");
        }
        c
    }

    /// Creates a database.
    pub fn createdb(&self, db: &str) {
        check("createdb", self.tool("createdb").arg(db).output());
    }

    /// Runs SQL with psql (stopping at the first error); returns the
    /// unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = check(
            "psql",
            self.tool("psql")
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    db,
                    "-c",
                    sql,
                ])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs an SQL file with psql (stopping at the first error).
    pub fn psql_file(&self, db: &str, file: &Path) {
        check(
            "psql -f",
            self.tool("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f"])
                .arg(file)
                .output(),
        );
    }

    /// `pgbench -i` at `scale`.
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        check(
            "pgbench -i",
            self.tool("pgbench")
                .args(["-i", "-q", "-s", &scale.to_string(), db])
                .output(),
        );
    }

    /// Everything `pg_dump` writes for `db` (schema and data), as sorted
    /// lines, without the lines that differ between any two dumps
    /// (`\restrict` keys, version comments, blank lines).
    pub fn dump_sorted(&self, db: &str) -> Vec<String> {
        let out = check(
            "pg_dump",
            self.tool("pg_dump").args(["--no-sync", "-d", db]).output(),
        );
        let text = String::from_utf8(out.stdout).expect("a UTF-8 dump");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
                    && !l.starts_with("-- Dumped")
            })
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port != 0 {
            let data = self.data_dir();
            let _ = self.server_cmd("pg_ctl", |c| {
                c.arg("-D").arg(&data).args(["-m", "immediate", "stop"]);
            });
        }
    }
}

/// A telecom schema with every awkward type: enums, domains, numeric,
/// timestamptz, date, interval, bytea, jsonb, arrays, defaults, sequences,
/// a view, a function with a trigger, comments, a second schema; and rows
/// with awkward values (tabs, newlines, backslashes, quotes, NULLs, NaN,
/// infinities, huge numerics, every byte value).
pub const TELECOM_SQL: &str = r#"
CREATE TYPE plan_kind AS ENUM ('prepaid', 'postpaid', 'business');
CREATE DOMAIN msisdn AS text CHECK (VALUE ~ '^\+[0-9]{8,15}$');
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE customers (
  id bigserial PRIMARY KEY,
  name text NOT NULL,
  msisdn msisdn UNIQUE,
  plan plan_kind NOT NULL DEFAULT 'prepaid',
  balance numeric(12,2) DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  closed_at date,
  tags text[],
  profile jsonb,
  photo bytea,
  score double precision,
  ratio real,
  name_upper text GENERATED ALWAYS AS (upper(name)) STORED
);
COMMENT ON TABLE customers IS 'subscribers, one row per customer';
COMMENT ON COLUMN customers.msisdn IS 'E.164 number';
CREATE TABLE cdrs (
  id bigserial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers(id),
  started_at timestamptz NOT NULL,
  duration interval,
  cost numeric,
  cells int[],
  meta jsonb
);
CREATE INDEX cdrs_customer ON cdrs (customer_id, started_at);
CREATE TABLE invoices (
  no integer PRIMARY KEY DEFAULT nextval('invoice_no'),
  customer_id bigint REFERENCES customers(id),
  total numeric(14,4) CHECK (total >= 0),
  issued date NOT NULL,
  lines jsonb
);
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION audit_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (at, what) VALUES ('2026-01-01 00:00:00+00', TG_OP || ' ' || NEW.id);
  RETURN NEW;
END $$;
CREATE TRIGGER customers_audit AFTER INSERT OR UPDATE ON customers
  FOR EACH ROW EXECUTE FUNCTION audit_customer();
CREATE VIEW customer_minutes AS
  SELECT c.id, sum(d.duration) AS minutes FROM customers c JOIN cdrs d ON d.customer_id = c.id GROUP BY c.id;
COMMENT ON VIEW customer_minutes IS 'talk time per customer';
CREATE SCHEMA billing;
CREATE TABLE billing.rates (zone text PRIMARY KEY, per_min double precision, per_kb real, valid tsrange);

INSERT INTO customers (name, msisdn, plan, balance, created_at, closed_at, tags, profile, photo, score, ratio)
SELECT
  CASE i % 5
    WHEN 0 THEN 'Ann ' || i
    WHEN 1 THEN E'tab\there ' || i
    WHEN 2 THEN E'line\nbreak\\back ' || i
    WHEN 3 THEN 'quote''s "double" ' || i
    ELSE 'Zoë 名前 ' || i END,
  CASE WHEN i % 7 = 0 THEN NULL ELSE '+4917' || lpad(i::text, 8, '0') END,
  (ARRAY['prepaid', 'postpaid', 'business'])[1 + i % 3]::plan_kind,
  CASE WHEN i % 11 = 0 THEN NULL ELSE (i * 12.34) % 100000 END,
  timestamptz '2025-01-01 00:00:00+00' + i * interval '7 hours 13 minutes 1.5 seconds',
  CASE WHEN i % 4 = 0 THEN date '2026-01-01' + i ELSE NULL END,
  CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['a', NULL, 'b"c', E'd\\e', ''] ELSE '{}'::text[] END,
  jsonb_build_object('i', i, 'nested', jsonb_build_object('x', ARRAY[i, i + 1]), 's', E'q"\n\t')
    || CASE WHEN i % 2 = 0 THEN '{"big": 1e400}'::jsonb ELSE '{}'::jsonb END,
  CASE WHEN i % 6 = 0 THEN NULL ELSE decode(md5(i::text) || '00ff0a09', 'hex') END,
  CASE i % 5 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity' WHEN 2 THEN -0.0 WHEN 3 THEN 1e-300 ELSE i / 3.0 END,
  (i / 7.0)::real
FROM generate_series(1, 300) AS i;
INSERT INTO customers (name, photo) VALUES ('every byte', (SELECT string_agg(set_byte('\x00'::bytea, 0, b), ''::bytea) FROM generate_series(0, 255) AS b));
INSERT INTO cdrs (customer_id, started_at, duration, cost, cells, meta)
SELECT 1 + i % 300,
  timestamptz '2026-01-01 00:00:00+00' + i * interval '53 minutes 7 seconds',
  CASE WHEN i % 9 = 0 THEN NULL ELSE i * interval '1.25 seconds' END,
  i * 0.000123456789012345678901234567890,
  ARRAY[i, NULL, -i],
  CASE WHEN i % 4 = 0 THEN NULL ELSE jsonb_build_array(i, 'x', NULL, true) END
FROM generate_series(1, 3000) AS i;
INSERT INTO invoices (customer_id, total, issued, lines)
SELECT 1 + i % 300, 123456789.1234 - i, date '2026-01-01' + i % 90, '[{"item": "sms", "n": 3}]'
FROM generate_series(1, 500) AS i;
INSERT INTO billing.rates VALUES
  ('eu', 0.05, 0.001, '[2026-01-01,2027-01-01)'),
  (E'w\\orld\t"', 'NaN', '-Infinity', NULL),
  ('empty', NULL, NULL, 'empty');
SELECT setval('cdrs_id_seq', 5000);
"#;
