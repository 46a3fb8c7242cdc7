//! Rebuilding a PostgreSQL database, or writing a plain SQL script, from a
//! [`PgSchema`] and stored rows.

use super::copy::encode_copy_field;
use super::{quote_literal, PgConn, PgError, PgSchema, PgTable, PgTools};
use crate::store::record::{RowReader, Value};
use bytes::Bytes;
use futures::SinkExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio_postgres::{Client, CopyInSink};
use zeroize::Zeroizing;

/// Turns encoded rows (record format, one TEXT or NULL value per column)
/// into COPY text lines appended to `out`; returns how many rows.
fn copy_lines(table: &PgTable, encoded: &[u8], out: &mut Vec<u8>) -> Result<u64, PgError> {
    let bad = |why: String| PgError::Rows {
        table: table.display_name(),
        why,
    };
    let mut n = 0;
    for row in RowReader::new(encoded) {
        let row = row.map_err(|e| bad(format!("stored row unreadable: {e}")))?;
        if row.values.len() != table.columns.len() {
            return Err(bad(format!(
                "a stored row has {} values for {} columns",
                row.values.len(),
                table.columns.len()
            )));
        }
        for (i, v) in row.values.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match v {
                Value::Null => encode_copy_field(None, out),
                Value::Text(t) | Value::Blob(t) => encode_copy_field(Some(t), out),
                Value::Integer(x) => encode_copy_field(Some(x.to_string().as_bytes()), out),
                Value::Real(x) => encode_copy_field(Some(format!("{x:?}").as_bytes()), out),
            }
        }
        out.push(b'\n');
        n += 1;
    }
    Ok(n)
}

/// `SELECT pg_catalog.setval(...)` for every sequence.
fn setval_sql(schema: &PgSchema) -> String {
    let mut s = String::new();
    for q in &schema.sequences {
        s.push_str(&format!(
            "SELECT pg_catalog.setval({}, {}, {});\n",
            quote_literal(&q.qualified()),
            q.last_value,
            q.is_called
        ));
    }
    s
}

/// Rebuilds a snapshot into an empty database: [`create`](Self::create)
/// runs the pre-data section, tables are filled one at a time with COPY,
/// [`finish`](Self::finish) sets sequences and runs the post-data section.
pub struct PgRestorer {
    conn: PgConn,
    client: Client,
    tools: PgTools,
    schema: PgSchema,
    current: Option<(PgTable, Pin<Box<CopyInSink<Bytes>>>)>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PgRestorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRestorer")
            .field("server", &self.conn.server())
            .finish_non_exhaustive()
    }
}

const USER_OBJECTS: &str = "SELECT \
  (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') \
+ (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') \
+ (SELECT count(*) FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' AND t.typtype IN ('e','d','c','r','m') \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid)) \
+ (SELECT count(*) FROM pg_catalog.pg_namespace n \
     WHERE n.nspname NOT IN ('public', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%')";

impl PgRestorer {
    /// Connects to the target database, checks it is empty (with `force`,
    /// drops its user schemas and recreates `public` instead), and runs the
    /// schema's pre-data section with `psql`.
    pub async fn create(conn: PgConn, schema: &PgSchema, force: bool) -> Result<Self, PgError> {
        let client = conn.connect().await?;
        // The tools first: nothing is dropped if the restore cannot run.
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| conn.query_err("reading the server version", &e))?
            .get(0);
        let tools = PgTools::locate(&version).await?;
        let objects: i64 = client
            .query_one(USER_OBJECTS, &[])
            .await
            .map_err(|e| conn.query_err("checking that the database is empty", &e))?
            .get(0);
        if objects > 0 {
            if !force {
                return Err(PgError::NotEmpty {
                    target: conn.server(),
                    objects,
                });
            }
            let names: Vec<String> = client
                .query(
                    "SELECT nspname::text FROM pg_catalog.pg_namespace \
                     WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%'",
                    &[],
                )
                .await
                .map_err(|e| conn.query_err("listing schemas", &e))?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let mut sql = String::from("BEGIN;");
            for n in names {
                sql.push_str(&format!("DROP SCHEMA {} CASCADE;", super::quote_ident(&n)));
            }
            sql.push_str(
                "CREATE SCHEMA public AUTHORIZATION pg_database_owner; \
                 GRANT USAGE ON SCHEMA public TO PUBLIC; \
                 COMMENT ON SCHEMA public IS 'standard public schema'; COMMIT;",
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| conn.query_err("emptying the database (--force)", &e))?;
        }
        tools
            .psql(
                conn.url(),
                "schema (pre-data)",
                &schema.pre_data,
                &conn.tool_env(),
            )
            .await?;
        Ok(PgRestorer {
            conn,
            client,
            tools,
            schema: schema.clone(),
            current: None,
            buf: Vec::new(),
        })
    }

    /// Starts filling `table` (ending the previous table).
    pub async fn begin_table(&mut self, table: &PgTable) -> Result<(), PgError> {
        self.end_table().await?;
        let sql = format!(
            "COPY {} ({}) FROM STDIN",
            table.qualified(),
            table.column_list()
        );
        let sink = self.client.copy_in::<_, Bytes>(&sql).await.map_err(|e| {
            self.conn
                .data_err(&format!("loading table {}", table.display_name()), &e)
        })?;
        self.current = Some((table.clone(), Box::pin(sink)));
        Ok(())
    }

    /// Loads encoded rows into the current table; returns how many.
    pub async fn insert_rows(&mut self, encoded: &[u8]) -> Result<u64, PgError> {
        let Some((table, sink)) = self.current.as_mut() else {
            return Err(PgError::Tool("rows given before a table was begun".into()));
        };
        self.buf.clear();
        let n = copy_lines(table, encoded, &mut self.buf)?;
        let data = Bytes::from(std::mem::take(&mut self.buf));
        sink.send(data).await.map_err(|e| {
            self.conn
                .data_err(&format!("loading table {}", table.display_name()), &e)
        })?;
        Ok(n)
    }

    /// Ends the current table's COPY.
    pub async fn end_table(&mut self) -> Result<(), PgError> {
        if let Some((table, mut sink)) = self.current.take() {
            sink.as_mut().finish().await.map_err(|e| {
                self.conn
                    .data_err(&format!("loading table {}", table.display_name()), &e)
            })?;
        }
        Ok(())
    }

    /// Sets the sequences and runs the post-data section (indexes,
    /// constraints, triggers).
    pub async fn finish(mut self) -> Result<(), PgError> {
        self.end_table().await?;
        let setval = setval_sql(&self.schema);
        if !setval.is_empty() {
            self.client
                .batch_execute(&setval)
                .await
                .map_err(|e| self.conn.query_err("setting sequence values", &e))?;
        }
        self.tools
            .psql(
                self.conn.url(),
                "indexes, constraints and triggers (post-data)",
                &self.schema.post_data,
                &self.conn.tool_env(),
            )
            .await?;
        Ok(())
    }
}

/// Writes a snapshot as one plain SQL script for `psql`: the pre-data
/// section, a `COPY ... FROM stdin` block per table, sequence values, then
/// the post-data section. Written to a temporary file beside the target
/// and renamed into place by [`finish`](Self::finish).
#[derive(Debug)]
pub struct SqlScript {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    schema: PgSchema,
    in_table: Option<PgTable>,
    buf: Vec<u8>,
}

impl SqlScript {
    /// Creates the script (refusing an existing file unless `force`) and
    /// writes the pre-data section.
    pub fn create(path: &Path, schema: &PgSchema, force: bool) -> Result<Self, PgError> {
        if path.exists() && !force {
            return Err(PgError::FileExists(path.to_path_buf()));
        }
        let io = |e: std::io::Error| PgError::Io {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".custos-tmp");
        let tmp = path.with_file_name(name);
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut s = SqlScript {
            path: path.to_path_buf(),
            tmp,
            out: Some(std::io::BufWriter::new(file)),
            schema: schema.clone(),
            in_table: None,
            buf: Vec::new(),
        };
        let head = format!(
            "-- PostgreSQL database restored by custos {} (source server {}, schema by {})\n\n",
            crate::VERSION,
            schema.server_version,
            schema.pg_dump_version
        );
        s.write(head.as_bytes())?;
        s.write(schema.pre_data.as_bytes())?;
        Ok(s)
    }

    fn write(&mut self, b: &[u8]) -> Result<(), PgError> {
        let out = self.out.as_mut().expect("open until finished");
        out.write_all(b).map_err(|e| PgError::Io {
            path: self.tmp.clone(),
            why: e.to_string(),
        })
    }

    /// Starts the COPY block of `table` (ending the previous one).
    pub fn begin_table(&mut self, table: &PgTable) -> Result<(), PgError> {
        self.end_table()?;
        let head = format!(
            "\n-- Data of table {}\nCOPY {} ({}) FROM stdin;\n",
            table.display_name().replace('\n', " "),
            table.qualified(),
            table.column_list()
        );
        self.write(head.as_bytes())?;
        self.in_table = Some(table.clone());
        Ok(())
    }

    /// Writes encoded rows of the current table; returns how many.
    pub fn insert_rows(&mut self, encoded: &[u8]) -> Result<u64, PgError> {
        let Some(table) = &self.in_table else {
            return Err(PgError::Tool("rows given before a table was begun".into()));
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let n = copy_lines(table, encoded, &mut buf)?;
        let r = self.write(&buf);
        self.buf = buf;
        r.map(|_| n)
    }

    /// Ends the current COPY block.
    pub fn end_table(&mut self) -> Result<(), PgError> {
        if self.in_table.take().is_some() {
            self.write(b"\\.\n")?;
        }
        Ok(())
    }

    /// Writes sequence values and the post-data section, and moves the
    /// script into place.
    pub fn finish(mut self) -> Result<(), PgError> {
        self.end_table()?;
        let setval = setval_sql(&self.schema);
        if !setval.is_empty() {
            self.write(b"\n-- Sequence values\n")?;
            self.write(setval.as_bytes())?;
        }
        let post = std::mem::take(&mut self.schema.post_data);
        self.write(b"\n")?;
        self.write(post.as_bytes())?;
        let out = self.out.take().expect("open until finished");
        let io = |e: std::io::Error| PgError::Io {
            path: self.path.clone(),
            why: e.to_string(),
        };
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        Ok(())
    }
}

impl Drop for SqlScript {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Where the rows of a PostgreSQL restore go.
#[derive(Debug)]
pub enum PgOutput {
    Database(Box<PgRestorer>),
    Script(Box<SqlScript>),
}

impl PgOutput {
    /// Starts filling `table`.
    pub async fn begin_table(&mut self, table: &PgTable) -> Result<(), PgError> {
        match self {
            PgOutput::Database(r) => r.begin_table(table).await,
            PgOutput::Script(s) => s.begin_table(table),
        }
    }

    /// Loads encoded rows into the current table; returns how many.
    pub async fn insert_rows(&mut self, encoded: &[u8]) -> Result<u64, PgError> {
        match self {
            PgOutput::Database(r) => r.insert_rows(encoded).await,
            PgOutput::Script(s) => s.insert_rows(encoded),
        }
    }

    /// Sequences, then indexes, constraints and triggers.
    pub async fn finish(self) -> Result<(), PgError> {
        match self {
            PgOutput::Database(r) => r.finish().await,
            PgOutput::Script(s) => (*s).finish(),
        }
    }
}

/// The password for a restore into `url` when the URL has none: the
/// `PGPASSWORD` variable, else the source policy's password.
pub fn restore_conn(url: &str, policy_conn: Option<&PgConn>) -> Result<PgConn, PgError> {
    let c = PgConn::parse(url)?;
    if c.has_password() {
        return Ok(c);
    }
    if let Ok(p) = std::env::var("PGPASSWORD") {
        return Ok(c.with_password(Zeroizing::new(p)));
    }
    match policy_conn.and_then(|p| p.password.clone()) {
        Some(p) => Ok(c.with_password(Zeroizing::new(p.as_str().to_string()))),
        None => Ok(c),
    }
}
