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
    /// Set when the table is an extension's configuration table
    /// (`pg_extension_config_dump`): the extension creates it, and only
    /// the rows its condition selects are the user's. Read from the
    /// catalog, not stored: a restore fills such a table like any other,
    /// after the pre-data section has created the extension.
    #[serde(skip)]
    pub config: Option<ConfigTable>,
}

/// What makes a table an extension's configuration table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigTable {
    /// The extension's name.
    pub extension: String,
    /// The extension's `WHERE` clause for the user's rows (`""`: all).
    pub condition: String,
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
    /// The extension whose configuration this sequence is, if any (read
    /// from the catalog, not stored).
    #[serde(skip)]
    pub extension: Option<String>,
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

/// Schemas read: not the system's, and the policy's if it names some.
const SCHEMAS: &str = "n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
     AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))";

/// Not a member of an extension (the extension's script creates those).
const NOT_MEMBER: &str = "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// Relations marked as an extension's configuration (`pg_extension.
/// extconfig`), with the extension's name and its condition for each.
const CONFIG: &str = "SELECT c.oid, n.nspname, c.relname, e.extname, \
       coalesce(e.extcondition[cfg.i], '') \
     FROM pg_catalog.pg_extension e \
     CROSS JOIN LATERAL generate_subscripts(e.extconfig, 1) AS cfg(i) \
     JOIN pg_catalog.pg_class c ON c.oid = e.extconfig[cfg.i] \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// Reads the tables (with columns) and sequences of the connection's
/// schemas, inside the caller's transaction: ordinary tables and
/// partitions that belong to no extension, in (schema, name) order, then
/// the extensions' configuration tables (marked [`PgTable::config`]) in
/// an order that loads a table before those whose foreign keys point at
/// it; sequences likewise, configuration sequences marked.
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
                 WHERE c.relkind = 'r' AND {SCHEMAS} AND {NOT_MEMBER} ORDER BY n.nspname, c.relname"
            ),
            &[schemas],
        )
        .await
        .map_err(|e| conn.query_err("listing tables", &e))?;
    let mut tables = Vec::with_capacity(rows.len());
    for r in rows {
        tables.push(PgTable {
            schema: r.get(1),
            name: r.get(2),
            columns: columns(client, conn, r.get(0)).await?,
            config: None,
        });
    }
    let rows = client
        .query(
            &format!("{CONFIG} WHERE c.relkind = 'r' AND {SCHEMAS} ORDER BY n.nspname, c.relname"),
            &[schemas],
        )
        .await
        .map_err(|e| conn.query_err("listing extension configuration tables", &e))?;
    let mut config = Vec::with_capacity(rows.len());
    for r in rows {
        let oid: u32 = r.get(0);
        config.push((
            oid,
            PgTable {
                schema: r.get(1),
                name: r.get(2),
                columns: columns(client, conn, oid).await?,
                config: Some(ConfigTable {
                    extension: r.get(3),
                    condition: r.get(4),
                }),
            },
        ));
    }
    let oids: Vec<u32> = config.iter().map(|(o, _)| *o).collect();
    let refs = client
        .query(
            "SELECT conrelid, confrelid FROM pg_catalog.pg_constraint \
             WHERE contype = 'f' AND conrelid = ANY($1) AND confrelid = ANY($1) \
               AND conrelid <> confrelid",
            &[&oids],
        )
        .await
        .map_err(|e| conn.query_err("listing foreign keys of configuration tables", &e))?;
    let refs: Vec<(u32, u32)> = refs.iter().map(|r| (r.get(0), r.get(1))).collect();
    tables.extend(referenced_first(config, &refs));

    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, NULL::name FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'S' AND {SCHEMAS} AND {NOT_MEMBER} \
                 UNION ALL \
                 SELECT n.nspname, c.relname, e.extname FROM pg_catalog.pg_extension e \
                 CROSS JOIN LATERAL unnest(e.extconfig) AS cfg(oid) \
                 JOIN pg_catalog.pg_class c ON c.oid = cfg.oid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'S' AND {SCHEMAS} \
                 ORDER BY 1, 2"
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
            extension: r.get(2),
        })
        .collect();
    Ok((tables, sequences))
}

/// The columns COPY reads of table `oid`.
async fn columns(client: &Client, conn: &PgConn, oid: u32) -> Result<Vec<PgColumn>, PgError> {
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
    Ok(cols
        .into_iter()
        .map(|c| PgColumn {
            name: c.get(0),
            type_name: c.get(1),
            base_type: c.get::<_, String>(2),
        })
        .collect())
}

/// `tables` (given in name order) reordered so that a table comes after
/// every table its foreign keys (`refs`: referencing, referenced) point
/// at, ties in the given order. The extension creates these constraints
/// with the tables, so a restore must load them in that order. Tables in
/// a cycle keep the given order after the rest (their load fails as
/// `pg_dump`'s would).
fn referenced_first<T>(tables: Vec<(u32, T)>, refs: &[(u32, u32)]) -> Vec<T> {
    let mut left: Vec<Option<(u32, T)>> = tables.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(left.len());
    // A table is ready when no table its keys point at is still left
    // (placed already, or not among these).
    let waits = |left: &[Option<(u32, T)>], oid: u32| {
        refs.iter()
            .filter(|(from, _)| *from == oid)
            .any(|(_, to)| left.iter().flatten().any(|(o, _)| o == to))
    };
    while let Some(i) = left
        .iter()
        .position(|t| t.as_ref().is_some_and(|(oid, _)| !waits(&left, *oid)))
    {
        let (_, t) = left[i].take().expect("a table left");
        out.push(t);
    }
    out.extend(left.into_iter().flatten().map(|(_, t)| t));
    out
}

#[cfg(test)]
mod tests {
    use super::referenced_first;

    #[test]
    fn referenced_tables_come_first() {
        let t = |names: &[(u32, &'static str)]| names.to_vec();
        // consumer(1), queue(2), retry(3) -> queue, subscription(4) ->
        // queue, consumer; tick(5) -> queue.
        let tables = t(&[
            (4, "subscription"),
            (3, "retry"),
            (1, "consumer"),
            (5, "tick"),
            (2, "queue"),
        ]);
        let refs = [(3, 2), (4, 2), (4, 1), (5, 2)];
        assert_eq!(
            referenced_first(tables, &refs),
            ["consumer", "queue", "subscription", "retry", "tick"]
        );
        // A cycle keeps its given order after the rest.
        let tables = t(&[(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!(referenced_first(tables, &[(1, 2), (2, 1)]), ["c", "a", "b"]);
        // A key to a table not read (another schema) does not hold it back.
        assert_eq!(referenced_first(t(&[(1, "a")]), &[(1, 9)]), ["a"]);
    }
}
