//! What is read from the catalog, and the schema stored in a snapshot.

use super::{quote_ident, PgConn, PgError};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// One column read by COPY (generated and dropped columns are not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgColumn {
    pub name: String,
    /// `format_type` of the column, e.g. `numeric(12,2)`.
    pub type_name: String,
    /// The base type's name (`int8`, `timestamptz`, ...; a domain's base).
    pub base_type: String,
}

/// One table whose rows are backed up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<PgColumn>,
}

impl PgTable {
    /// The name used in policies, snapshots and reports: `name` in schema
    /// `public`, else `schema.name`.
    pub fn display_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }

    /// Whether a policy's table name means this table (`name` for schema
    /// `public`, or `schema.name`).
    pub fn matches(&self, policy_name: &str) -> bool {
        policy_name == self.display_name()
            || policy_name == format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `"a", "b", ...` of the columns read.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A sequence and its value when the snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSequence {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

impl PgSequence {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// The schema of a PostgreSQL snapshot (stored in the encrypted snapshot
/// object; docs/FORMAT.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSchema {
    /// `SHOW server_version` of the source.
    pub server_version: String,
    /// `pg_dump --version` of the tool that took the dump.
    pub pg_dump_version: String,
    /// `pg_dump --section=pre-data` on the snapshot: types, domains,
    /// tables, defaults, functions, views, comments, owners, grants.
    pub pre_data: String,
    /// `pg_dump --section=post-data`: indexes, constraints, triggers,
    /// rules.
    pub post_data: String,
    /// The tables whose rows are stored, in snapshot order.
    pub tables: Vec<PgTable>,
    /// Sequences with their values.
    pub sequences: Vec<PgSequence>,
}

const USER_SCHEMAS: &str = "n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
     AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[])) \
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// Reads the tables (with columns) and sequences of the connection's
/// schemas, inside the caller's transaction.
pub async fn read(
    client: &Client,
    conn: &PgConn,
) -> Result<(Vec<PgTable>, Vec<PgSequence>), PgError> {
    let schemas = &conn.schemas;
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND {USER_SCHEMAS} ORDER BY n.nspname, c.relname"
            ),
            &[schemas],
        )
        .await
        .map_err(|e| conn.query_err("listing tables", &e))?;
    let mut tables = Vec::with_capacity(rows.len());
    for r in rows {
        let oid: u32 = r.get(0);
        let cols = client
            .query(
                "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                   CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attgenerated = '' ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| conn.query_err("listing columns", &e))?;
        tables.push(PgTable {
            schema: r.get(1),
            name: r.get(2),
            columns: cols
                .into_iter()
                .map(|c| PgColumn {
                    name: c.get(0),
                    type_name: c.get(1),
                    base_type: c.get::<_, String>(2),
                })
                .collect(),
        });
    }
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'S' AND {USER_SCHEMAS} ORDER BY n.nspname, c.relname"
            ),
            &[schemas],
        )
        .await
        .map_err(|e| conn.query_err("listing sequences", &e))?;
    let sequences = rows
        .into_iter()
        .map(|r| PgSequence {
            schema: r.get(0),
            name: r.get(1),
            last_value: 0,
            is_called: false,
        })
        .collect();
    Ok((tables, sequences))
}
