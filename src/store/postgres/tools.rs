//! The PostgreSQL client tools custos runs: `pg_dump` (schema capture) and
//! `psql` (schema restore).
//!
//! Where they are looked for, first hit wins:
//! 1. the folder in `CUSTOS_PG_BINDIR`;
//! 2. `pg_config --bindir`;
//! 3. the folders of `PATH`;
//! 4. the usual install folders of the server's major version, as a
//!    fallback: `/usr/lib/postgresql/N/bin` (Debian, Ubuntu),
//!    `/usr/pgsql-N/bin` (RHEL), `/opt/homebrew/opt/postgresql@N/bin` and
//!    `/usr/local/opt/postgresql@N/bin` (Homebrew).
//!
//! A `pg_dump` older than the server cannot dump it, so a candidate whose
//! major version is below the server's is skipped.

use super::PgError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs a prepared command off the async threads.
async fn run(mut cmd: Command, stdin: Option<Vec<u8>>) -> std::io::Result<Output> {
    tokio::task::spawn_blocking(move || {
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let writer = match (stdin, child.stdin.take()) {
            (Some(body), Some(mut pipe)) => Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&body);
            })),
            _ => None,
        };
        let out = child.wait_with_output();
        if let Some(w) = writer {
            let _ = w.join();
        }
        out
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The located `pg_dump` and `psql`.
#[derive(Clone, Debug)]
pub struct PgTools {
    pub pg_dump: PathBuf,
    pub psql: PathBuf,
    dump_version: String,
}

fn major_of(version: &str) -> Option<u32> {
    // "pg_dump (PostgreSQL) 15.18 (Debian ...)" or "15.18" or "15devel".
    let v = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

async fn version_of(tool: &Path) -> Option<String> {
    let mut cmd = Command::new(tool);
    cmd.arg("--version").stdin(Stdio::null());
    let out = run(cmd, None).await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl PgTools {
    /// Finds `pg_dump` and `psql` able to work with a server of version
    /// `server_version` (`SHOW server_version`).
    pub async fn locate(server_version: &str) -> Result<Self, PgError> {
        let major = major_of(server_version).unwrap_or(0);
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os("CUSTOS_PG_BINDIR") {
            dirs.push(PathBuf::from(d));
        }
        let mut cmd = Command::new("pg_config");
        cmd.arg("--bindir").stdin(Stdio::null());
        if let Ok(out) = run(cmd, None).await {
            if out.status.success() {
                dirs.push(PathBuf::from(
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                ));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        for pattern in [
            "/usr/lib/postgresql/{}/bin",
            "/usr/pgsql-{}/bin",
            "/opt/homebrew/opt/postgresql@{}/bin",
            "/usr/local/opt/postgresql@{}/bin",
        ] {
            dirs.push(PathBuf::from(pattern.replace("{}", &major.to_string())));
        }
        let mut seen = Vec::new();
        for d in dirs {
            let dump = d.join("pg_dump");
            let psql = d.join("psql");
            if seen.contains(&dump) || !dump.is_file() || !psql.is_file() {
                continue;
            }
            seen.push(dump.clone());
            let Some(v) = version_of(&dump).await else {
                continue;
            };
            if major_of(&v).unwrap_or(0) >= major {
                return Ok(PgTools {
                    pg_dump: dump,
                    psql,
                    dump_version: v,
                });
            }
        }
        Err(PgError::Tool(format!(
            "no pg_dump and psql of PostgreSQL {major} or newer found (looked in CUSTOS_PG_BINDIR, \
             pg_config --bindir, PATH and the usual install folders); install the PostgreSQL \
             {major} client tools or set CUSTOS_PG_BINDIR to their folder"
        )))
    }

    /// `pg_dump --version` of the located tool.
    pub fn dump_version(&self) -> &str {
        &self.dump_version
    }

    /// Runs `pg_dump` for one section of the schema and returns its SQL.
    pub(super) async fn pg_dump(
        &self,
        url: &str,
        section: &str,
        extra: &[String],
        env: &[(String, String)],
    ) -> Result<String, PgError> {
        let mut cmd = Command::new(&self.pg_dump);
        cmd.arg("--no-password")
            .arg(format!("--section={section}"))
            .args(extra)
            .arg(format!("--dbname={url}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let out = run(cmd, None)
            .await
            .map_err(|e| PgError::Tool(format!("running {}: {e}", self.pg_dump.display())))?;
        if !out.status.success() {
            return Err(PgError::Tool(format!(
                "{} --section={section} failed ({}): {}",
                self.pg_dump.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout).map_err(|_| {
            PgError::Tool(format!(
                "{} wrote a schema that is not UTF-8",
                self.pg_dump.display()
            ))
        })
    }

    /// Runs `sql` with `psql` (stopping at the first error, in one
    /// transaction).
    pub(super) async fn psql(
        &self,
        url: &str,
        what: &str,
        sql: &str,
        env: &[(String, String)],
    ) -> Result<(), PgError> {
        let mut cmd = Command::new(&self.psql);
        cmd.args([
            "--no-psqlrc",
            "--quiet",
            "--no-password",
            "--single-transaction",
            "--set=ON_ERROR_STOP=1",
            "--file=-",
        ])
        .arg(format!("--dbname={url}"))
        .envs(env.iter().map(|(k, v)| (k, v)));
        let out = run(cmd, Some(sql.as_bytes().to_vec()))
            .await
            .map_err(|e| PgError::Tool(format!("running {}: {e}", self.psql.display())))?;
        if !out.status.success() {
            // DETAIL lines can quote row values (a duplicate key, say).
            let stderr = String::from_utf8_lossy(&out.stderr);
            let kept: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.trim_start().starts_with("DETAIL:"))
                .collect();
            return Err(PgError::Tool(format!(
                "restoring the {what} with {} failed ({}): {}",
                self.psql.display(),
                out.status,
                kept.join("\n").trim()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::major_of;

    #[test]
    fn majors() {
        assert_eq!(
            major_of("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(major_of("16devel"), Some(16));
        assert_eq!(major_of("9.6.24"), Some(9));
        assert_eq!(major_of("x"), None);
    }
}
