//! Links whose target is a PostgreSQL database (SPEC G9): the link's task on the source
//! node reads the database's log as a logical link does, runs each transaction through
//! the link's stages, the last of which is a row-mapping stage (the row contract: each
//! output record's data is a row document, see `plugins/json-columns` and
//! docs/PLUGINS.md), and applies the rows with `tokio-postgres`.
//!
//! **Exactly once.** The link's position (link id, source stream, last source serial
//! applied) lives in the target database's `doppel_positions` table and is written in
//! the same PostgreSQL transaction as the rows it covers. A session starts by reading
//! it and resumes after it, so a kill -9 of the source node (the process that applies
//! into PostgreSQL), a lost connection or a PostgreSQL restart at any moment leaves
//! either the whole transaction with its position or neither. A position row also
//! says the source log's epoch at its serial and a hash of the link's stages, so a
//! link a failover re-points (`resync`) takes over the old link's position where the
//! promoted database's history names the same epoch there ([`Target::take_over`]).
//! A group of whole source
//! transactions (up to [`GROUP_BYTES`] of log) is one PostgreSQL transaction; a
//! cancelled source transaction carries no records, so nothing of it reaches
//! PostgreSQL, but its serials are covered by the position.
//!
//! **Rows.** Inserts and updates are upserts on the key (`INSERT … SELECT … FROM
//! unnest($1, $2, …) ON CONFLICT (key) DO UPDATE`, one statement per table and column
//! set in a group, after collapsing the group to the last operation of each key), deletes
//! are deletes (`DELETE … USING unnest(…)`). Missing tables are created when the link
//! says `create_tables`; missing columns are always added; a column whose type differs
//! from the mapping's is a type clash that names the column; nothing is dropped or
//! retyped.
//!
//! **Speed.** A link whose only stage is the built-in `json-columns` maps records on
//! the host with the plugin's own code ([`Native`]: no wasm call, no row document
//! written and read again, no record copied out of the log, no map of a record's
//! fields). A group that is a bulk load of new keys is planned without collapsing it by
//! key ([`Plan::of_group`]), and the row buffers go round between groups. Rows of keys inserted at the source (new in PostgreSQL
//! too, since the position makes the link exactly once) go by a binary `COPY` into the
//! table when there are at least [`COPY_MIN_ROWS`] of one shape; should one of them
//! exist after all (rows written before the link, a failover's replay), a savepoint
//! takes the `COPY` back and the upsert writes them.
//!
//! **Bad rows do not stop the line.** When PostgreSQL refuses a group (a constraint, a
//! type, a clash), the group is retried row by row, each under a savepoint; a refused
//! row goes to the link's dead letters with PostgreSQL's own text (`on_error:
//! quarantine`) and the rest lands, or stops the link (`stop`). Dead letters re-drive
//! into PostgreSQL through the stages, without moving the position.
//!
//! **Bootstrap.** A link whose position is missing while the source's log no longer
//! reaches serial 1 (or behind its position) starts from a frozen copy of the source's
//! records, applied in one PostgreSQL transaction together with the copy's serial as
//! the position, then streams from there: no gap and no duplicate at the seam.
//!
//! **Interrelation.** A link with interrelation rules holds a transaction that depends
//! on another database of the tenant until that database's PostgreSQL link (same
//! connection and schema) has applied the serial the dependency names.
//!
//! The connection string's password is kept in the link's secret part only
//! ([`super::links::LinkDef::postgres_url`]); errors are `tokio-postgres`'s, which never
//! carry it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Transaction};

use doppel_plugin_json_columns as json_columns;
use doppel_sdk::abi::{BatchBuilder, Op as RecordOp, OwnedRecord, Record};

use super::links::{Apply, LinkDef, LinkSpec, LinkState, Mode, OnError};
use super::redrive::RedriveError;
use super::sender::{self, AbortOnDrop, Rejected};
use super::{history, interrelation, logical, LinkHandle, Replication};
use crate::log::durable::RawTxn;
use crate::log::{LogKind, Outcome};
use crate::node::{Database, Durability, Error};
use crate::txn::clock::wall_us;

/// The table that holds each link's position, in the target's schema.
pub const POSITIONS_TABLE: &str = "doppel_positions";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Log bytes applied as one PostgreSQL transaction while catching up.
const GROUP_BYTES: usize = 8 << 20;
/// Records staged at a time during a bootstrap.
const SNAPSHOT_RECORDS: usize = 5_000;
/// The fewest new rows of one table and shape written by `COPY` rather than an upsert.
const COPY_MIN_ROWS: usize = 64;
/// How often a transaction held for another link's progress looks again.
const DEPENDENCY_POLL: Duration = Duration::from_millis(5);

/// Check a link request whose target is PostgreSQL: only `postgres` and `schema` in
/// the target, a logical async link with stages, and a connection string that parses.
pub fn check_spec(spec: &LinkSpec) -> crate::node::Result<()> {
    let bad = |m: &str| Err(Error::Invalid(m.to_string()));
    let t = &spec.target;
    if !t.url.is_empty() || !t.database.is_empty() || t.token.is_some() || t.replication.is_some() {
        return bad(
            "a PostgreSQL target takes \"postgres\" (the connection string), \"schema\" and \
             \"resync\" only, not url, database, token or replication",
        );
    }
    if spec.options.apply != Apply::Logical {
        return bad("a PostgreSQL target applies rows: give \"apply\": \"logical\"");
    }
    if spec.options.mode != Mode::Async {
        return bad("a PostgreSQL target is asynchronous: give \"mode\": \"async\"");
    }
    if spec.options.conflicts.is_some() {
        return bad("a PostgreSQL target cannot be mutual (\"conflicts\")");
    }
    if spec.options.stages.is_empty() {
        return bad(
            "a PostgreSQL target needs a row-mapping stage (e.g. {\"plugin\": \
             \"json-columns@…\", \"config\": {\"files\": …}}) to turn records into rows",
        );
    }
    let conn = t.postgres.as_deref().unwrap_or_default();
    if let Err(e) = conn.parse::<tokio_postgres::Config>() {
        return Err(Error::Invalid(format!(
            "target.postgres is not a PostgreSQL connection string: {e}"
        )));
    }
    if let Some(schema) = &t.schema {
        check_ident("target.schema", schema).map_err(Error::Malformed)?;
    }
    Ok(())
}

/// Names the target quotes plainly: a-z, 0-9 and `_`, not starting with a digit.
fn check_ident(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what}: '{name}' is not a PostgreSQL name this link uses (a-z, 0-9 and _, not \
             starting with a digit, at most 63 characters)"
        ))
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The row contract's column types (`json-columns` holds the one list of them).
use doppel_plugin_json_columns::ColumnType as PgType;

/// How PostgreSQL spells a row contract's type.
trait Sql {
    /// The type in DDL and casts.
    fn sql(self) -> &'static str;
    /// The type as `information_schema.columns.data_type` names it.
    fn catalog(self) -> &'static str;
    /// The array a column of this type travels in (timestamptz as text, cast by the
    /// statement).
    fn param(self) -> &'static str;
    /// The type a binary `COPY` sends (None: not sent by COPY).
    fn copied(self) -> Option<Type>;
}

impl Sql for PgType {
    fn sql(self) -> &'static str {
        match self {
            PgType::Text => "text",
            PgType::Bigint => "bigint",
            PgType::Double => "double precision",
            PgType::Boolean => "boolean",
            PgType::Jsonb => "jsonb",
            PgType::Timestamptz => "timestamptz",
            PgType::Bytea => "bytea",
        }
    }

    fn catalog(self) -> &'static str {
        match self {
            PgType::Timestamptz => "timestamp with time zone",
            other => other.sql(),
        }
    }

    fn param(self) -> &'static str {
        match self {
            PgType::Text | PgType::Jsonb | PgType::Timestamptz => "text[]",
            PgType::Bigint => "int8[]",
            PgType::Double => "float8[]",
            PgType::Boolean => "bool[]",
            PgType::Bytea => "bytea[]",
        }
    }

    fn copied(self) -> Option<Type> {
        Some(match self {
            PgType::Text => Type::TEXT,
            PgType::Bigint => Type::INT8,
            PgType::Double => Type::FLOAT8,
            PgType::Boolean => Type::BOOL,
            PgType::Jsonb => Type::JSONB,
            PgType::Bytea => Type::BYTEA,
            PgType::Timestamptz => return None,
        })
    }
}

/// A jsonb value as its JSON text: sent as text in a statement's `text[]` parameter, and
/// in jsonb's binary form (a version byte, then the text) by a binary `COPY`.
#[derive(Debug)]
struct JsonText(String);

impl ToSql for JsonText {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSONB | Type::TEXT)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A row document as it arrives (the row contract).
#[derive(serde::Deserialize)]
struct RowDoc<'a> {
    row: u32,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(borrow)]
    key: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    columns: Vec<(Cow<'a, str>, Cow<'a, str>, Value)>,
}

/// What one statement writes: upserts or deletes of a table's rows with these columns.
/// Rows of one shape share it (one allocation per file and operation, not per row).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Shape {
    delete: bool,
    table: String,
    key: Vec<String>,
    /// Where each key column is in `columns`.
    key_at: Vec<usize>,
    columns: Vec<(String, PgType)>,
}

impl Shape {
    /// None when a key column is not among the columns.
    fn new(
        delete: bool,
        table: String,
        key: Vec<String>,
        columns: Vec<(String, PgType)>,
    ) -> Option<Shape> {
        let key_at = key
            .iter()
            .map(|k| columns.iter().position(|(n, _)| n == k))
            .collect::<Option<Vec<usize>>>()?;
        Some(Shape {
            delete,
            table,
            key,
            key_at,
            columns,
        })
    }

    /// Whether a binary `COPY` can send rows of this shape (every column's type).
    fn copied(&self) -> Option<Vec<Type>> {
        self.columns.iter().map(|(_, t)| t.copied()).collect()
    }
}

/// One row operation: what the row-mapping stage made of one source record.
#[derive(Debug, Clone)]
struct Row {
    shape: Arc<Shape>,
    /// The source record was an insert: its key was new at the source.
    insert: bool,
    /// One value per column of the shape.
    values: Vec<Value>,
    /// The source record's serial (its dead letter finds the source record by it).
    serial: u64,
}

impl Row {
    /// A staged record as a row: its data must be a row document.
    fn from_record(r: &Record<'_>) -> Result<Row, String> {
        let not_row = |why: &str| {
            format!(
                "record '{}' of '{}' is not a row ({why}): the link's last stage must be a \
                 row mapping such as json-columns",
                r.key, r.file
            )
        };
        let doc: RowDoc<'_> =
            serde_json::from_slice(r.data).map_err(|e| not_row(&e.to_string()))?;
        if doc.row != 1 {
            return Err(not_row("not \"row\": 1"));
        }
        check_ident("table", &doc.table)?;
        if doc.key.is_empty() {
            return Err(not_row("no key columns"));
        }
        let key: Vec<String> = doc.key.into_iter().map(Cow::into_owned).collect();
        let delete = r.op == RecordOp::Delete;
        let mut columns = Vec::with_capacity(doc.columns.len());
        let mut values = Vec::with_capacity(doc.columns.len());
        for (name, ty, v) in doc.columns {
            check_ident("column", &name)?;
            let ty = PgType::parse(&ty)
                .ok_or_else(|| format!("column '{name}': unknown type '{ty}'"))?;
            if delete && !key.iter().any(|k| *k == name) {
                continue;
            }
            columns.push((name.into_owned(), ty));
            values.push(v);
        }
        for k in &key {
            let present = columns
                .iter()
                .zip(&values)
                .any(|((n, _), v)| n == k && !v.is_null());
            if !present {
                return Err(not_row(&format!("key column '{k}' has no value")));
            }
        }
        let shape = Shape::new(delete, doc.table.into_owned(), key, columns)
            .expect("every key column was found above");
        Ok(Row {
            shape: Arc::new(shape),
            insert: r.op == RecordOp::Insert,
            values,
            serial: r.serial,
        })
    }

    /// The table and key values: rows with the same identity are the same PostgreSQL
    /// row. A single text key is borrowed, not copied.
    fn identity(&self) -> (&str, Cow<'_, str>) {
        let key = match self.shape.key_at.as_slice() {
            [at] => match &self.values[*at] {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                v => Cow::Owned(v.to_string()),
            },
            many => {
                let mut id = String::new();
                for at in many {
                    id.push('\0');
                    id.push_str(&self.values[*at].to_string());
                }
                Cow::Owned(id)
            }
        };
        (&self.shape.table, key)
    }

    /// The column names, types and values.
    fn columns(&self) -> impl Iterator<Item = (&str, PgType, &Value)> {
        self.shape
            .columns
            .iter()
            .zip(&self.values)
            .map(|((n, t), v)| (n.as_str(), *t, v))
    }
}

/// A value that does not fit its column: the row's error, naming the column.
fn clash(name: &str, ty: PgType, v: &Value) -> String {
    format!("column '{name}': {v} is not a {}", ty.sql())
}

/// One column's values for a statement, as the array parameter of its type; text is
/// borrowed from the rows.
enum Values<'a> {
    Text(Vec<Option<&'a str>>),
    Jsonb(Vec<Option<JsonText>>),
    Bigint(Vec<Option<i64>>),
    Double(Vec<Option<f64>>),
    Boolean(Vec<Option<bool>>),
    Bytea(Vec<Option<Vec<u8>>>),
}

impl<'a> Values<'a> {
    /// Empty, with room for `n` values.
    fn new(ty: PgType, n: usize) -> Values<'a> {
        match ty {
            PgType::Text | PgType::Timestamptz => Values::Text(Vec::with_capacity(n)),
            PgType::Jsonb => Values::Jsonb(Vec::with_capacity(n)),
            PgType::Bigint => Values::Bigint(Vec::with_capacity(n)),
            PgType::Double => Values::Double(Vec::with_capacity(n)),
            PgType::Boolean => Values::Boolean(Vec::with_capacity(n)),
            PgType::Bytea => Values::Bytea(Vec::with_capacity(n)),
        }
    }

    /// Add one value; a value that does not fit is the row's error, naming the column.
    fn push(&mut self, name: &str, ty: PgType, v: &'a Value) -> Result<(), String> {
        match self {
            Values::Text(out) => out.push(match v {
                Value::Null => None,
                Value::String(s) => Some(s.as_str()),
                _ => return Err(clash(name, ty, v)),
            }),
            Values::Jsonb(out) => out.push(match v {
                Value::Null => None,
                v => Some(JsonText(v.to_string())),
            }),
            Values::Bigint(out) => out.push(match v {
                Value::Null => None,
                v => Some(v.as_i64().ok_or_else(|| clash(name, ty, v))?),
            }),
            Values::Double(out) => out.push(match v {
                Value::Null => None,
                v => Some(v.as_f64().ok_or_else(|| clash(name, ty, v))?),
            }),
            Values::Boolean(out) => out.push(match v {
                Value::Null => None,
                v => Some(v.as_bool().ok_or_else(|| clash(name, ty, v))?),
            }),
            Values::Bytea(out) => out.push(match v {
                Value::Null => None,
                Value::String(s) => Some(bytea(name, s)?),
                _ => return Err(clash(name, ty, v)),
            }),
        }
        Ok(())
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Text(v) => v,
            Values::Jsonb(v) => v,
            Values::Bigint(v) => v,
            Values::Double(v) => v,
            Values::Boolean(v) => v,
            Values::Bytea(v) => v,
        }
    }
}

/// A bytea value: it travels as base64.
fn bytea(name: &str, s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| format!("column '{name}': bytea travels as base64"))
}

/// How big the pieces of a binary `COPY`'s data are (each is one message to PostgreSQL,
/// which starts on the first while the next is sent). Small enough that the allocator
/// serves each piece from memory it reuses: 256 KiB pieces were mimalloc's large
/// objects, fresh pages every time (a quarter of the node's samples zeroing them).
const COPY_CHUNK: usize = 64 << 10;

/// Rows `members` of one shape as the data of a binary `COPY` (header, a tuple per row,
/// trailer), in pieces of about [`COPY_CHUNK`]; Err naming the column when a value
/// does not fit. Written straight from the rows' values: no column arrays, no
/// per-value calls through `ToSql`.
fn copy_data(rows: &[Row], members: &[usize]) -> Result<Vec<Bytes>, String> {
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + (COPY_CHUNK >> 2));
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
    for &i in members {
        let row = &rows[i];
        buf.put_i16(row.values.len() as i16);
        for (name, ty, v) in row.columns() {
            put_value(&mut buf, name, ty, v)?;
        }
        if buf.len() >= COPY_CHUNK {
            chunks.push(buf.split().freeze());
            buf.reserve(COPY_CHUNK + (COPY_CHUNK >> 2));
        }
    }
    buf.put_i16(-1);
    chunks.push(buf.freeze());
    Ok(chunks)
}

/// One field of a binary `COPY` tuple: its length (-1 for null), then the value in the
/// type's binary form.
fn put_value(buf: &mut BytesMut, name: &str, ty: PgType, v: &Value) -> Result<(), String> {
    if v.is_null() {
        buf.put_i32(-1);
        return Ok(());
    }
    let fixed = |buf: &mut BytesMut, len: i32| buf.put_i32(len);
    match ty {
        PgType::Text => {
            let Value::String(s) = v else {
                return Err(clash(name, ty, v));
            };
            put_len(buf, s.len())?;
            buf.put_slice(s.as_bytes());
        }
        PgType::Bigint => {
            let n = v.as_i64().ok_or_else(|| clash(name, ty, v))?;
            fixed(buf, 8);
            buf.put_i64(n);
        }
        PgType::Double => {
            let n = v.as_f64().ok_or_else(|| clash(name, ty, v))?;
            fixed(buf, 8);
            buf.put_f64(n);
        }
        PgType::Boolean => {
            let b = v.as_bool().ok_or_else(|| clash(name, ty, v))?;
            fixed(buf, 1);
            buf.put_u8(b as u8);
        }
        PgType::Jsonb => {
            // jsonb's binary form: a version byte, then the text.
            let at = buf.len();
            buf.put_i32(0);
            buf.put_u8(1);
            serde_json::to_writer((&mut *buf).writer(), v).map_err(|e| e.to_string())?;
            let len = i32::try_from(buf.len() - at - 4).map_err(|_| too_big(name))?;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        PgType::Bytea => {
            let Value::String(s) = v else {
                return Err(clash(name, ty, v));
            };
            let bytes = bytea(name, s)?;
            put_len(buf, bytes.len())?;
            buf.put_slice(&bytes);
        }
        PgType::Timestamptz => {
            return Err(format!(
                "column '{name}': timestamptz is not sent by COPY (its text is cast)"
            ))
        }
    }
    Ok(())
}

fn put_len(buf: &mut BytesMut, len: usize) -> Result<(), String> {
    buf.put_i32(i32::try_from(len).map_err(|_| "a value over 2 GiB".to_string())?);
    Ok(())
}

fn too_big(name: &str) -> String {
    format!("column '{name}': a value over 2 GiB")
}

/// The statements a set of rows becomes: the last operation of each key, grouped by
/// shape in the order each shape first appears. Pure computation, so a group's plan
/// (and its `COPY` data) is made while the previous group commits.
struct Plan {
    statements: Vec<Planned>,
}

struct Planned {
    shape: Arc<Shape>,
    /// The rows it writes (indexes into the rows).
    members: Vec<usize>,
    /// For keys inserted at the source (new in PostgreSQL too, by exactly once), at
    /// least [`COPY_MIN_ROWS`] of a shape a `COPY` can send: the `COPY`'s data, or why
    /// a value does not fit.
    copy: Option<Result<Vec<Bytes>, String>>,
}

impl Plan {
    /// A catching-up group's plan. When `distinct` (no two files map to the same table)
    /// and the rows are all inserts of one shape with a single text key (a bulk load),
    /// the keys are distinct: a key inserted twice at the source was deleted in between,
    /// and there is no delete here. So the plan is that one statement, without working
    /// out the last operation of each key. Should a key repeat after all, PostgreSQL
    /// refuses the `COPY`, then the upsert, and the group is written row by row.
    fn of_group(rows: &[Row], distinct: bool) -> Plan {
        let Some(first) = rows.first().filter(|_| distinct) else {
            return Plan::of(rows);
        };
        let text_key = matches!(first.shape.key_at.as_slice(),
            [at] if first.shape.columns[*at].1 == PgType::Text);
        if !text_key
            || !rows
                .iter()
                .all(|r| r.insert && Arc::ptr_eq(&r.shape, &first.shape))
        {
            return Plan::of(rows);
        }
        let p = Planned::new(first.shape.clone(), (0..rows.len()).collect(), true, rows);
        Plan {
            statements: vec![p],
        }
    }

    fn of(rows: &[Row]) -> Plan {
        // The last operation of each key, and whether its first one here inserted it.
        let mut last: HashMap<(&str, Cow<'_, str>), (usize, bool)> =
            HashMap::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            last.entry(r.identity())
                .and_modify(|(at, _)| *at = i)
                .or_insert((i, r.insert));
        }
        let mut keep: Vec<Option<bool>> = vec![None; rows.len()];
        for (at, inserted) in last.into_values() {
            keep[at] = Some(inserted);
        }
        // Consecutive rows mostly share a shape, which is checked without hashing it.
        let mut statements: Vec<(Planned, bool)> = Vec::new();
        let mut index: HashMap<Arc<Shape>, usize> = HashMap::new();
        let mut current: Option<usize> = None;
        for (i, r) in rows.iter().enumerate() {
            let Some(inserted) = keep[i] else {
                continue;
            };
            let same = |g: &usize| {
                let s = &statements[*g].0.shape;
                Arc::ptr_eq(s, &r.shape) || **s == *r.shape
            };
            let at = match current.filter(same) {
                Some(g) => g,
                None => *index.entry(r.shape.clone()).or_insert_with(|| {
                    statements.push((
                        Planned {
                            shape: r.shape.clone(),
                            members: Vec::new(),
                            copy: None,
                        },
                        true,
                    ));
                    statements.len() - 1
                }),
            };
            current = Some(at);
            statements[at].0.members.push(i);
            statements[at].1 &= inserted;
        }
        let statements = statements
            .into_iter()
            .map(|(p, fresh)| Planned::new(p.shape, p.members, fresh, rows))
            .collect();
        Plan { statements }
    }
}

impl Planned {
    /// The statement writing `members` of `rows`: a `COPY` when they are `fresh` (every
    /// key inserted at the source), enough of them, and of a shape `COPY` can send.
    fn new(shape: Arc<Shape>, members: Vec<usize>, fresh: bool, rows: &[Row]) -> Planned {
        let copy =
            (fresh && !shape.delete && members.len() >= COPY_MIN_ROWS && shape.copied().is_some())
                .then(|| copy_data(rows, &members));
        Planned {
            shape,
            members,
            copy,
        }
    }
}

/// Why rows did not apply.
enum Fault {
    /// PostgreSQL (or the target's schema) refuses these rows: a row-level problem,
    /// PostgreSQL's own text.
    Refused(String),
    /// The connection or the server failed: the session ends and retries.
    Broken(String),
}

/// What a PostgreSQL error means here: a refusal of the rows (data, constraint,
/// schema, a trigger's exception) or a failure of the connection or the server.
fn fault(e: tokio_postgres::Error) -> Fault {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let mut text = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                let _ = write!(text, " ({detail})");
            }
            if ["22", "23", "42", "44", "P0", "2B"]
                .iter()
                .any(|class| code.starts_with(class))
            {
                Fault::Refused(text)
            } else {
                Fault::Broken(format!("PostgreSQL: {text} [{code}]"))
            }
        }
        None => Fault::Broken(format!("PostgreSQL: {}", describe(&e))),
    }
}

/// An error with what caused it (`tokio-postgres` keeps the server's text and the
/// socket's error as the source); never the connection string.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn broken(e: tokio_postgres::Error) -> String {
    match fault(e) {
        Fault::Refused(m) | Fault::Broken(m) => m,
    }
}

/// The target's tables as this session knows them, and how to write rows into them.
struct Tables {
    schema: String,
    create: bool,
    /// Table → column → type as the catalog names it.
    known: HashMap<String, HashMap<String, String>>,
}

impl Tables {
    fn name(&self, table: &str) -> String {
        format!("{}.{}", quote(&self.schema), quote(table))
    }

    /// Make sure `table` exists with these columns (created when the link may, columns
    /// added); a column of another type is a clash naming it.
    async fn ensure(
        &mut self,
        tx: &Transaction<'_>,
        table: &str,
        key: &[String],
        shape: &[(String, PgType)],
    ) -> Result<(), Fault> {
        if !self.known.contains_key(table) {
            let rows = tx
                .query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = $1 AND table_name = $2",
                    &[&self.schema, &table],
                )
                .await
                .map_err(fault)?;
            let mut cols: HashMap<String, String> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if cols.is_empty() {
                if !self.create {
                    return Err(Fault::Refused(format!(
                        "table {} does not exist, and the link does not create tables \
                         (\"create_tables\": true)",
                        self.name(table)
                    )));
                }
                let mut ddl = format!("CREATE TABLE IF NOT EXISTS {} (", self.name(table));
                for (name, ty) in shape {
                    let _ = write!(ddl, "{} {}, ", quote(name), ty.sql());
                }
                let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
                let _ = write!(ddl, "PRIMARY KEY ({}))", keys.join(", "));
                tx.batch_execute(&ddl).await.map_err(fault)?;
                tracing::info!(table = %self.name(table), "created the table from the row mapping");
                cols = shape
                    .iter()
                    .map(|(n, t)| (n.clone(), t.catalog().to_string()))
                    .collect();
            }
            self.known.insert(table.to_string(), cols);
        }
        let cols = self.known.get_mut(table).expect("inserted above");
        for (name, ty) in shape {
            match cols.get(name) {
                Some(have) if have == ty.catalog() => {}
                Some(have) => {
                    return Err(Fault::Refused(format!(
                        "type clash: column '{name}' of table {} is {have} in PostgreSQL, the \
                         row mapping gives {} (columns are never retyped)",
                        format_args!("{}.{}", self.schema, table),
                        ty.sql()
                    )))
                }
                None => {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS {} {}",
                        quote(&self.schema),
                        quote(table),
                        quote(name),
                        ty.sql()
                    ))
                    .await
                    .map_err(fault)?;
                    tracing::info!(table, column = %name, "added a column from the row mapping");
                    cols.insert(name.clone(), ty.catalog().to_string());
                }
            }
        }
        Ok(())
    }

    /// Apply rows as few statements ([`Plan`]: the last operation of each key, upserts
    /// and deletes per table and shape, new keys by `COPY`). Err on the first refusal
    /// (the caller rolls back).
    async fn apply_set(
        &mut self,
        tx: &Transaction<'_>,
        rows: &[Row],
        plan: &Plan,
    ) -> Result<(), Fault> {
        for Planned {
            shape,
            members,
            copy,
        } in &plan.statements
        {
            self.ensure(tx, &shape.table, &shape.key, &shape.columns)
                .await?;
            // Keys inserted at the source are new here too (exactly once): a binary COPY
            // writes them, much cheaper than an upsert. Should one exist after all (rows
            // written before the link, a failover's replay), it is the upsert again.
            if let Some(copy) = copy {
                let data = copy.as_ref().map_err(|why| Fault::Refused(why.clone()))?;
                tx.batch_execute("SAVEPOINT doppel_copy")
                    .await
                    .map_err(fault)?;
                match self.copy(tx, shape, data).await {
                    Ok(()) => {
                        tx.batch_execute("RELEASE SAVEPOINT doppel_copy")
                            .await
                            .map_err(fault)?;
                        continue;
                    }
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT doppel_copy")
                            .await
                            .map_err(fault)?;
                    }
                    Err(e) => return Err(fault(e)),
                }
            }
            let mut values: Vec<Values<'_>> = shape
                .columns
                .iter()
                .map(|(_, t)| Values::new(*t, members.len()))
                .collect();
            for &i in members {
                for ((name, ty, v), out) in rows[i].columns().zip(values.iter_mut()) {
                    out.push(name, ty, v).map_err(Fault::Refused)?;
                }
            }
            let sql = if shape.delete {
                delete_sql(&self.name(&shape.table), &shape.columns)
            } else {
                upsert_sql(&self.name(&shape.table), &shape.columns, &shape.key)
            };
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Values::param).collect();
            tx.execute(sql.as_str(), &params).await.map_err(fault)?;
        }
        Ok(())
    }

    /// Rows of one shape by a binary `COPY` into the table: the data [`copy_data`] made.
    async fn copy(
        &self,
        tx: &Transaction<'_>,
        shape: &Shape,
        data: &[Bytes],
    ) -> Result<(), tokio_postgres::Error> {
        let cols: Vec<String> = shape.columns.iter().map(|(name, _)| quote(name)).collect();
        let sink = tx
            .copy_in::<_, Bytes>(&format!(
                "COPY {} ({}) FROM STDIN BINARY",
                self.name(&shape.table),
                cols.join(", ")
            ))
            .await?;
        tokio::pin!(sink);
        for chunk in data {
            sink.send(chunk.clone()).await?;
        }
        sink.finish().await?;
        Ok(())
    }

    /// Apply rows inside `tx`: all at once (by `plan` when it was made beforehand), or,
    /// when PostgreSQL refuses that, row by row under savepoints. The refused rows
    /// (index, PostgreSQL's text); Err when the connection or the server failed.
    async fn apply(
        &mut self,
        tx: &Transaction<'_>,
        rows: &[Row],
        plan: Option<&Plan>,
    ) -> Result<Vec<(usize, String)>, String> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        tx.batch_execute("SAVEPOINT doppel_rows")
            .await
            .map_err(broken)?;
        let made;
        let plan = match plan {
            Some(plan) => plan,
            None => {
                made = Plan::of(rows);
                &made
            }
        };
        match self.apply_set(tx, rows, plan).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT doppel_rows")
                    .await
                    .map_err(broken)?;
                return Ok(Vec::new());
            }
            Err(Fault::Broken(e)) => return Err(e),
            Err(Fault::Refused(_)) => {}
        }
        tx.batch_execute("ROLLBACK TO SAVEPOINT doppel_rows")
            .await
            .map_err(broken)?;
        // What the rolled-back part created is gone too.
        self.known.clear();
        let mut refused = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            tx.batch_execute("SAVEPOINT doppel_row")
                .await
                .map_err(broken)?;
            let one = std::slice::from_ref(row);
            match self.apply_set(tx, one, &Plan::of(one)).await {
                Ok(()) => tx.batch_execute("RELEASE SAVEPOINT doppel_row").await,
                Err(Fault::Broken(e)) => return Err(e),
                Err(Fault::Refused(why)) => {
                    refused.push((i, why));
                    self.known.clear();
                    tx.batch_execute("ROLLBACK TO SAVEPOINT doppel_row").await
                }
            }
            .map_err(broken)?;
        }
        tx.batch_execute("RELEASE SAVEPOINT doppel_rows")
            .await
            .map_err(broken)?;
        Ok(refused)
    }
}

fn upsert_sql(table: &str, shape: &[(String, PgType)], key: &[String]) -> String {
    let cols: Vec<String> = shape.iter().map(|(n, _)| quote(n)).collect();
    let selects: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("u.c{i}::{}", t.sql()))
        .collect();
    let params: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::{}", i + 1, t.param()))
        .collect();
    let aliases: Vec<String> = (0..shape.len()).map(|i| format!("c{i}")).collect();
    let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let updates: Vec<String> = shape
        .iter()
        .filter(|(n, _)| !key.contains(n))
        .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote(n)))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) DO {action}",
        cols.join(", "),
        selects.join(", "),
        params.join(", "),
        aliases.join(", "),
        keys.join(", ")
    )
}

fn delete_sql(table: &str, shape: &[(String, PgType)]) -> String {
    let params: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::{}", i + 1, t.param()))
        .collect();
    let aliases: Vec<String> = (0..shape.len()).map(|i| format!("c{i}")).collect();
    let matches: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, (n, t))| format!("t.{} = u.c{i}::{}", quote(n), t.sql()))
        .collect();
    format!(
        "DELETE FROM {table} AS t USING unnest({}) AS u({}) WHERE {}",
        params.join(", "),
        aliases.join(", "),
        matches.join(" AND ")
    )
}

/// A session's connection to the target and what it knows of the target's tables.
struct Target {
    client: Client,
    tables: Tables,
    link: String,
    /// The source stream, as PostgreSQL's bigint holds it.
    stream: i64,
    /// What the link's stages are (a hash of them): a position row says it, so that a
    /// re-pointed link takes over only the position of a link that mapped as it does.
    mapping: i64,
    /// Reports the connection's end.
    closed: oneshot::Receiver<String>,
    _connection: AbortOnDrop,
}

impl Target {
    /// Connect and make sure the positions table exists.
    async fn connect(def: &LinkDef, stream: u64) -> Result<Target, String> {
        let url = def
            .postgres_url
            .as_deref()
            .ok_or("the link has no PostgreSQL connection string")?;
        let (client, connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
                .await
                .map_err(|_| "connecting to PostgreSQL timed out".to_string())?
                .map_err(|e| format!("connecting to PostgreSQL: {}", describe(&e)))?;
        let (tx, closed) = oneshot::channel();
        let task = tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the PostgreSQL connection ended".to_string(),
                Err(e) => format!("the PostgreSQL connection ended: {}", describe(&e)),
            };
            let _ = tx.send(why);
        });
        let schema = def
            .spec
            .target
            .schema
            .clone()
            .unwrap_or_else(|| "public".into());
        let target = Target {
            client,
            tables: Tables {
                schema,
                create: def.spec.options.create_tables,
                known: HashMap::new(),
            },
            link: def.id.clone(),
            stream: stream as i64,
            mapping: xxhash_rust::xxh3::xxh3_64(
                serde_json::to_string(&def.spec.options.stages)
                    .unwrap_or_default()
                    .as_bytes(),
            ) as i64,
            closed,
            _connection: AbortOnDrop(task),
        };
        target
            .client
            .batch_execute(&format!(
                "SET client_min_messages TO warning; CREATE TABLE IF NOT EXISTS {} (link text NOT NULL, stream bigint NOT NULL, \
                 serial bigint NOT NULL, updated timestamptz NOT NULL DEFAULT now(), \
                 epoch bigint, mapping bigint, PRIMARY KEY (link, stream))",
                target.tables.name(POSITIONS_TABLE)
            ))
            .await
            .map_err(broken)?;
        // A table made before positions said their epoch and mapping gets the columns
        // (looked up first: adding them locks the table).
        let have: i64 = target
            .client
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 \
                 AND table_name = $2 AND column_name IN ('epoch', 'mapping')",
                &[&target.tables.schema, &POSITIONS_TABLE],
            )
            .await
            .map_err(broken)?
            .get(0);
        if have < 2 {
            target
                .client
                .batch_execute(&format!(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS epoch bigint, \
                     ADD COLUMN IF NOT EXISTS mapping bigint",
                    target.tables.name(POSITIONS_TABLE)
                ))
                .await
                .map_err(broken)?;
        }
        Ok(target)
    }

    /// The last source serial applied, if the link has a position.
    async fn position(&self) -> Result<Option<u64>, String> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT serial FROM {} WHERE link = $1 AND stream = $2",
                    self.tables.name(POSITIONS_TABLE)
                ),
                &[&self.link, &self.stream],
            )
            .await
            .map_err(broken)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    /// Write the position inside `tx`: the serial, and the epoch of the source's log
    /// that wrote it (`transport::history`; None when not known).
    async fn set_position(
        (tables, link, stream, mapping): (&Tables, &str, i64, i64),
        tx: &Transaction<'_>,
        serial: u64,
        epoch: Option<u64>,
    ) -> Result<(), String> {
        tx.execute(
            &format!(
                "INSERT INTO {} (link, stream, serial, epoch, mapping) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (link, stream) DO UPDATE SET serial = EXCLUDED.serial, \
                 epoch = EXCLUDED.epoch, mapping = EXCLUDED.mapping, updated = now()",
                tables.name(POSITIONS_TABLE)
            ),
            &[
                &link,
                &stream,
                &(serial as i64),
                &epoch.map(|e| e as i64),
                &mapping,
            ],
        )
        .await
        .map_err(broken)?;
        Ok(())
    }

    /// A link a failover re-pointed (`resync`) and that has no position of its own
    /// takes over the position another link with the same stages left, when this
    /// database's log holds the same entries up to it: its history names, for that
    /// serial, the epoch the other link's source had (`transport::history`: one epoch
    /// is one linear log). `usable` says whether the log can continue from a serial.
    /// The lowest such position when several agree (each of them applied everything up
    /// to its own). The other link's id and the serial taken over.
    async fn take_over(
        &mut self,
        history: &[history::Epoch],
        usable: impl Fn(u64) -> bool,
    ) -> Result<Option<(String, u64)>, String> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT link, serial, epoch FROM {} WHERE mapping = $1 AND epoch IS NOT NULL \
                     AND link <> $2",
                    self.tables.name(POSITIONS_TABLE)
                ),
                &[&self.mapping, &self.link],
            )
            .await
            .map_err(broken)?;
        let found = rows
            .iter()
            .map(|r| {
                let (serial, epoch): (i64, i64) = (r.get(1), r.get(2));
                (r.get::<_, String>(0), serial as u64, epoch as u64)
            })
            .filter(|(_, serial, epoch)| {
                usable(*serial) && history::epoch_at(history, *serial) == Some(*epoch)
            })
            .min_by_key(|(_, serial, _)| *serial);
        let Some((from, serial, epoch)) = found else {
            return Ok(None);
        };
        let tx = self.client.transaction().await.map_err(broken)?;
        let at = (&self.tables, self.link.as_str(), self.stream, self.mapping);
        Target::set_position(at, &tx, serial, Some(epoch)).await?;
        tx.commit().await.map_err(broken)?;
        Ok(Some((from, serial)))
    }
}

/// Staged rows of one or more source transactions, and where to find the source record
/// a refused row's dead letter names: the transactions, decoded again only then (so
/// the hot path keeps no copy of every record), or a bootstrap's records.
#[derive(Default)]
struct Staged {
    rows: Vec<Row>,
    /// The rows' statements, made before the commit (while the previous one ran).
    plan: Option<Plan>,
    /// The epoch of the source's log that wrote the group's last serial.
    epoch: Option<u64>,
    txns: Vec<RawTxn>,
    schema: Option<crate::store::Schema>,
    origin: u64,
    /// A bootstrap's records by (bootstrap) serial, kept when `keep_records`.
    sources: HashMap<u64, OwnedRecord>,
    keep_records: bool,
}

impl Staged {
    /// The source record of serial `serial`.
    fn source(&self, serial: u64) -> Option<OwnedRecord> {
        if let Some(r) = self.sources.get(&serial) {
            return Some(r.clone());
        }
        let txn = self
            .txns
            .iter()
            .find(|t| t.first_serial <= serial && serial <= t.last_serial)?;
        logical::records(self.schema.as_ref()?, self.origin, txn)
            .ok()?
            .into_iter()
            .find(|r| r.serial == serial)
    }
}

/// The built-in `json-columns` as a link's only stage, run on the host: the plugin's own
/// mapping (`json_columns::map_columns`, the same code the wasm component runs) without
/// a wasm call, nor a row document written and read again. Not a tenant's plugin, so it
/// is not charged to the tenant's plugin CPU.
struct Native {
    config: json_columns::Config,
    /// `json-columns@{version}`, as dead letters name the stage.
    plugin: String,
    /// The shapes the mapping has made (one per file and operation): rows share them.
    shapes: parking_lot::Mutex<Vec<Arc<Shape>>>,
    /// No two files map to the same table, so a table's keys are one file's keys.
    one_file_per_table: bool,
}

impl Native {
    /// Some when the link's stages are exactly the built-in json-columns (its config
    /// loads as the plugin would load it).
    fn of(def: &LinkDef) -> Option<Native> {
        let [stage] = def.spec.options.stages.as_slice() else {
            return None;
        };
        let version = crate::plugins::registry::builtin_version("json-columns")?;
        if stage.plugin != format!("json-columns@{version}") {
            return None;
        }
        let config =
            doppel_sdk::load_config::<json_columns::Config>(&stage.config.to_string()).ok()?;
        let mut tables: Vec<&str> = config.files.values().map(|m| m.table.as_str()).collect();
        tables.sort_unstable();
        let one_file_per_table = tables.windows(2).all(|w| w[0] != w[1]);
        Some(Native {
            plugin: stage.plugin.clone(),
            shapes: parking_lot::Mutex::new(Vec::new()),
            one_file_per_table,
            config,
        })
    }

    /// A mapped record as a row, its shape shared with the rows mapped before it.
    fn row(
        shapes: &mut Vec<Arc<Shape>>,
        m: json_columns::Mapped<'_>,
        op: RecordOp,
        serial: u64,
    ) -> Row {
        let delete = op == RecordOp::Delete;
        let fits = |s: &Arc<Shape>| {
            s.delete == delete
                && s.table == m.table
                && s.key.len() == 1
                && s.key[0] == m.key
                && s.columns.len() == m.columns.len()
                && s.columns
                    .iter()
                    .zip(&m.columns)
                    .all(|((n, t), (mn, mt, _))| n == mn && t == mt)
        };
        let shape = match shapes.iter().find(|s| fits(s)) {
            Some(s) => s.clone(),
            None => {
                let columns = m.columns.iter().map(|(n, t, _)| (n.to_string(), *t));
                let shape = Shape::new(
                    delete,
                    m.table.to_owned(),
                    vec![m.key.to_owned()],
                    columns.collect(),
                )
                .expect("json-columns maps the key column first");
                shapes.push(Arc::new(shape));
                shapes.last().expect("pushed").clone()
            }
        };
        Row {
            shape,
            insert: op == RecordOp::Insert,
            values: m.columns.into_iter().map(|(_, _, v)| v).collect(),
            serial,
        }
    }

    /// Rows of `records`, and the records the mapping refuses (by index).
    fn rows(&self, records: &[OwnedRecord], into: &mut Vec<Row>) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        let mut shapes = self.shapes.lock();
        for (i, r) in records.iter().enumerate() {
            match json_columns::map_columns(&self.config, r.op, &r.file, &r.key, &r.data) {
                Ok(Some(m)) => into.push(Native::row(&mut shapes, m, r.op, r.serial)),
                Ok(None) => {}
                Err(message) => rejected.push(Rejected {
                    index: Some(i),
                    plugin: self.plugin.clone(),
                    message,
                }),
            }
        }
        rejected
    }

    /// The rows of one transaction mapped straight from its log, no record copied.
    /// False, with no row added, when the mapping refuses one of its records: the caller
    /// then stages the transaction's records, which rejects that one by the link's error
    /// policy.
    fn rows_of(
        &self,
        schema: &crate::store::Schema,
        txn: &RawTxn,
        into: &mut Vec<Row>,
    ) -> Result<bool, String> {
        let start = into.len();
        let mut refused = false;
        let mut shapes = self.shapes.lock();
        logical::each_log_record(schema, txn, |r| {
            if refused {
                return Ok(());
            }
            let key = String::from_utf8_lossy(r.key);
            let data = r.image.map_or(&[][..], |i| i.data);
            match json_columns::map_columns(&self.config, r.op, &r.file.name, &key, data) {
                Ok(Some(m)) => into.push(Native::row(&mut shapes, m, r.op, r.serial)),
                Ok(None) => {}
                Err(_) => refused = true,
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        if refused {
            into.truncate(start);
        }
        Ok(!refused)
    }
}

/// Run `records` through the link's stages (or the [`Native`] mapping) and read the
/// output as rows; what the stages or the row reading reject follows the error policy
/// (`sender::reject`).
#[allow(clippy::too_many_arguments)]
fn stage_rows(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    chain: &mut crate::plugins::Chain,
    native: Option<&Native>,
    txn: &RawTxn,
    records: Vec<OwnedRecord>,
    into: &mut Staged,
) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    if let Some(native) = native {
        into.rows.reserve(records.len());
        let rejected = native.rows(&records, &mut into.rows);
        sender::reject(repl, link, def, txn, &records, &rejected, "not shipped")?;
        if into.keep_records {
            into.sources
                .extend(records.into_iter().map(|r| (r.serial, r)));
        }
        return Ok(());
    }
    let mut input = BatchBuilder::new();
    for r in &records {
        input.push(r);
    }
    let ops = sender::stage(repl, link, def, chain, txn, &records, input)?;
    let mut rejected = Vec::new();
    let mut at = 0;
    while at + 4 <= ops.len() {
        let len = u32::from_le_bytes(ops[at..at + 4].try_into().expect("4 bytes")) as usize;
        let raw = &ops[at + 4..at + 4 + len];
        at += 4 + len;
        let r = Record::decode(raw).map_err(|e| format!("a staged record: {e:?}"))?;
        match Row::from_record(&r) {
            Ok(row) => into.rows.push(row),
            Err(message) => rejected.push(Rejected {
                index: records.iter().position(|s| s.serial == r.serial),
                plugin: "postgres".into(),
                message,
            }),
        }
    }
    sender::reject(repl, link, def, txn, &records, &rejected, "not applied")?;
    if into.keep_records {
        into.sources
            .extend(records.into_iter().map(|r| (r.serial, r)));
    }
    Ok(())
}

/// Apply staged rows and the position in one PostgreSQL transaction; refused rows go
/// to dead letters (`quarantine`) or stop the link (`stop`, nothing committed).
async fn commit(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    pg: &mut Target,
    staged: &Staged,
    serials: (u64, u64),
) -> Result<(), String> {
    let tx = pg.client.transaction().await.map_err(broken)?;
    let refused = pg
        .tables
        .apply(&tx, &staged.rows, staged.plan.as_ref())
        .await?;
    for (i, why) in &refused {
        let row = &staged.rows[*i];
        let record = staged.source(row.serial);
        if def.spec.options.on_error == OnError::Stop {
            link.stopped.store(true, Ordering::SeqCst);
            let what = record.map_or(String::new(), |r| {
                format!(" record '{}' of file '{}',", r.key, r.file)
            });
            return Err(format!(
                "stopped by its error policy: PostgreSQL refused{what} source serials {}-{}: {why}",
                serials.0, serials.1
            ));
        }
        let seq = repl.node.generate_id().map_err(|e| e.to_string())?;
        let shown = record.as_ref().map_or_else(
            || json!({"file": row.shape.table, "serial": row.serial}),
            logical::record_json,
        );
        repl.dead_letters
            .push(
                &def.id,
                seq,
                logical::DeadLetter::new(
                    shown,
                    "postgres",
                    why,
                    "refused by PostgreSQL",
                    wall_us() / 1000,
                ),
            )
            .map_err(|e| e.to_string())?;
        link.status.lock().quarantined += 1;
    }
    let at = (&pg.tables, pg.link.as_str(), pg.stream, pg.mapping);
    Target::set_position(at, &tx, serials.1, staged.epoch).await?;
    tx.commit().await.map_err(broken)
}

/// One session of a PostgreSQL link: connect, find the position (or bootstrap), then
/// apply the log as it grows. Ok when the link's definition changed; Err with why it
/// broke (the caller retries with backoff and shows it).
pub(super) async fn session(
    repl: &Arc<Replication>,
    link: &Arc<LinkHandle>,
    control: &mut watch::Receiver<u64>,
) -> Result<(), String> {
    let def = link.def.lock().clone();
    link.status.lock().state = LinkState::Connecting;
    let db = repl
        .node
        .database(&def.tenant, &def.spec.database)
        .map_err(|e| format!("the source database: {e}"))?;
    let mut pg = Target::connect(&def, repl.stream_id(&db)).await?;
    link.status.lock().connections += 1;
    let mut stages = logical::stages(&repl.plugins, &def.tenant, &def.spec.options.stages)
        .map_err(|e| e.to_string())?;
    let native = Native::of(&def);
    let mut sources = (!stages.rules.is_empty())
        .then(|| interrelation::Sources::new(repl.node.clone(), &def.tenant, &db));

    let position = pg.position().await?;
    let (last, _) = db.serials();
    let oldest = db
        .log_store()
        .oldest_serial(db.def.uid, LogKind::A)
        .map_err(|e| e.to_string())?;
    let forced = link.force_bootstrap.swap(false, Ordering::SeqCst);
    let usable =
        |from: u64| from <= last && (from == last || oldest.is_some_and(|o| o <= from + 1));
    let mut position = position;
    if position.is_none() && !forced && def.spec.target.resync {
        let history = repl.history(&db).map_err(|e| e.to_string())?;
        if let Some((from, serial)) = pg.take_over(&history, usable).await? {
            tracing::info!(link = %def.id, from = %from, serial,
                "took over the position of the link this one replaces");
            link.status.lock().resumed_by_serial += 1;
            position = Some(serial);
        }
    }
    let from = position.unwrap_or(0);
    let continues = !forced && usable(from);
    let from = if continues {
        link.status.lock().started_at = Some(from);
        from
    } else {
        let serial = bootstrap(
            repl,
            link,
            &def,
            &db,
            (&mut stages.chain, native.as_ref()),
            &mut pg,
        )
        .await?;
        link.status.lock().started_at = None;
        serial
    };
    {
        let mut status = link.status.lock();
        status.state = LinkState::Streaming;
        status.acked_serial = from;
        status.sent_serial = from;
    }
    tracing::info!(link = %def.id, from, "applying into PostgreSQL");

    let schema = db.schema();
    let ship_early = db.def.spec.durability == Durability::None;
    let mut next = from + 1;
    let mut durable = 0;
    let mut appended = db.subscribe_appended();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut rate = (Instant::now(), from);
    // The PostgreSQL side of the pipeline: while one group commits on its own task, the
    // next is read and staged here. `pg` is home when no commit is in flight.
    let mut pg = Some(pg);
    let mut inflight: Option<InFlight> = None;
    // A landed commit's row buffer, emptied, for the next group but one: the big
    // buffers are kept, not allocated (and their pages zeroed) for every group.
    let mut spare: Vec<Row> = Vec::new();
    let result: Result<(), String> = async {
        loop {
            if control.has_changed().unwrap_or(true) {
                return Ok(());
            }
            let available = *appended.borrow_and_update();
            if next <= available {
                if !ship_early && next > durable {
                    db.await_durable()
                        .await
                        .map_err(|e| format!("the source log: {e}"))?;
                    durable = available;
                }
                let txns = db
                    .log_store()
                    .read_txns(db.def.uid, next - 1, GROUP_BYTES, &[])
                    .map_err(|e| format!("reading the source log: {e}"))?;
                if txns.first().map(|t| t.first_serial) != Some(next) {
                    link.force_bootstrap.store(true, Ordering::SeqCst);
                    return Err(format!(
                        "the source log no longer holds serial {next}; the link will bootstrap again"
                    ));
                }
                let txns: Vec<RawTxn> = txns
                    .into_iter()
                    .take_while(|t| ship_early || t.last_serial <= durable)
                    .collect();
                let Some(end) = txns.last().map(|t| t.last_serial) else {
                    continue;
                };
                // The rows go into the buffer the commit before last gave back.
                let mut staged = Staged {
                    rows: std::mem::take(&mut spare),
                    ..Staged::default()
                };
                let mut waits: HashMap<String, u64> = HashMap::new();
                for txn in &txns {
                    if let Some(native) = native.as_ref().filter(|_| sources.is_none()) {
                        if native.rows_of(&schema, txn, &mut staged.rows)? {
                            continue;
                        }
                    }
                    let records = logical::records(&schema, repl.origin(), txn)
                        .map_err(|e| e.to_string())?;
                    if let Some(sources) = sources.as_mut().filter(|_| !records.is_empty()) {
                        let mut batch = BatchBuilder::new();
                        for r in &records {
                            batch.push(r);
                        }
                        let deps = sender::interrelate(
                            repl,
                            link,
                            &def,
                            &mut stages.rules,
                            sources,
                            txn,
                            &records,
                            &batch,
                        )?;
                        if !deps.is_empty() {
                            link.status.lock().interrelated += 1;
                        }
                        for d in deps {
                            let w = waits.entry(d.database).or_default();
                            *w = (*w).max(d.serial);
                        }
                    }
                    debug_assert!(
                        txn.outcome != Outcome::Cancelled || records.is_empty(),
                        "a cancelled transaction carries no records"
                    );
                    stage_rows(
                        repl,
                        link,
                        &def,
                        &mut stages.chain,
                        native.as_ref(),
                        txn,
                        records,
                        &mut staged,
                    )?;
                }
                let distinct = native.as_ref().is_some_and(|n| n.one_file_per_table);
                staged.plan = Some(Plan::of_group(&staged.rows, distinct));
                let history = repl.history(&db).map_err(|e| e.to_string())?;
                staged.epoch = history::epoch_at(&history, end);
                staged.txns = txns;
                staged.schema = Some(schema.clone());
                staged.origin = repl.origin();
                landed(link, &mut inflight, &mut pg, &mut spare).await?;
                measure(link, &mut rate);
                if !waits.is_empty() && !wait_for_dependencies(repl, &def, &waits, control).await
                {
                    return Ok(());
                }
                let target = pg.take().expect("no commit in flight");
                inflight = Some(spawn_commit(repl, link, &def, target, staged, (next, end)));
                next = end + 1;
                continue;
            }
            if inflight.is_some() {
                landed(link, &mut inflight, &mut pg, &mut spare).await?;
                measure(link, &mut rate);
                continue;
            }
            let target = pg.as_mut().expect("no commit in flight");
            tokio::select! {
                changed = appended.changed() => {
                    if changed.is_err() {
                        return Err("the source database was deleted".into());
                    }
                }
                _ = control.changed() => return Ok(()),
                why = &mut target.closed => {
                    return Err(why.unwrap_or_else(|_| "the PostgreSQL connection ended".into()));
                }
                _ = tick.tick() => {
                    // Caught up: nothing waits.
                    link.status.lock().lag_ms = 0;
                    measure(link, &mut rate);
                }
            }
        }
    }
    .await;
    // Never leave a commit running behind this session: the next one starts from the
    // position that commit writes.
    let landed = landed(link, &mut inflight, &mut pg, &mut spare).await;
    result.and(landed)
}

/// At most once a second, the rows' rate: source entries applied per second since the
/// last measure (`rate`: when, and the position then).
fn measure(link: &LinkHandle, rate: &mut (Instant, u64)) {
    let elapsed = rate.0.elapsed().as_secs_f64();
    if elapsed < 1.0 {
        return;
    }
    let mut status = link.status.lock();
    let acked = status.acked_serial;
    status.throughput = (acked - rate.1.min(acked)) as f64 / elapsed;
    *rate = (Instant::now(), acked);
}

/// A group's commit on its own task: it gives the connection back, and the group's row
/// buffer emptied, with the last serial it applied, or why it failed.
type InFlight = tokio::task::JoinHandle<(Target, Vec<Row>, Result<u64, String>)>;

fn spawn_commit(
    repl: &Arc<Replication>,
    link: &Arc<LinkHandle>,
    def: &LinkDef,
    mut pg: Target,
    staged: Staged,
    serials: (u64, u64),
) -> InFlight {
    let (repl, link, def) = (repl.clone(), link.clone(), def.clone());
    tokio::spawn(async move {
        let result = commit(&repl, &link, &def, &mut pg, &staged, serials)
            .await
            .map(|()| serials.1);
        let mut rows = staged.rows;
        rows.clear();
        (pg, rows, result)
    })
}

/// Wait for the commit in flight, if any: the connection and the row buffer (`spare`)
/// come home and the status shows the new position.
async fn landed(
    link: &LinkHandle,
    inflight: &mut Option<InFlight>,
    pg: &mut Option<Target>,
    spare: &mut Vec<Row>,
) -> Result<(), String> {
    let Some(handle) = inflight.take() else {
        return Ok(());
    };
    let (target, rows, result) = handle
        .await
        .map_err(|e| format!("applying into PostgreSQL: {e}"))?;
    *pg = Some(target);
    *spare = rows;
    let end = result?;
    let mut status = link.status.lock();
    status.acked_serial = end;
    status.sent_serial = end;
    Ok(())
}

/// Hold until, for each database named, its PostgreSQL link into the same target has
/// applied the serial (SPEC D on a PostgreSQL target). A database without such a link
/// cannot be waited for. False when this link's definition changed meanwhile.
async fn wait_for_dependencies(
    repl: &Replication,
    def: &LinkDef,
    waits: &HashMap<String, u64>,
    control: &mut watch::Receiver<u64>,
) -> bool {
    let same_target = |d: &LinkDef| {
        d.tenant == def.tenant
            && d.postgres_url == def.postgres_url
            && d.spec.target.schema == def.spec.target.schema
    };
    loop {
        let pending = waits.iter().any(|(database, serial)| {
            repl.links.lock().values().any(|h| {
                let d = h.def.lock();
                same_target(&d) && &d.spec.database == database && {
                    drop(d);
                    h.status.lock().acked_serial < *serial
                }
            })
        });
        if !pending {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(DEPENDENCY_POLL) => {}
            _ = control.changed() => return false,
        }
    }
}

/// Bootstrap: every record of a frozen copy of the source, through the stages, in one
/// PostgreSQL transaction with the copy's serial as the position. Returns the serial.
async fn bootstrap(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    db: &Database,
    (chain, native): (&mut crate::plugins::Chain, Option<&Native>),
    pg: &mut Target,
) -> Result<u64, String> {
    link.status.lock().state = LinkState::Bootstrapping;
    let (store, serial, _) = db.freeze();
    let schema = store.schema().clone();
    let marker = RawTxn {
        txn: 0,
        outcome: Outcome::Committed,
        first_serial: serial,
        last_serial: serial,
        last_timestamp_us: 0,
        chunks: Vec::new(),
    };
    let mut all: Vec<OwnedRecord> = Vec::new();
    for (table, file) in schema.files.iter().enumerate() {
        if file.name == crate::node::versions::VERSIONS_FILE {
            continue;
        }
        store.files()[schema.main_id(table) as usize].scan(b"", None, |r| {
            // Numbered within the bootstrap, so a dead letter finds its record.
            let serial = all.len() as u64 + 1;
            all.push(logical::stored_record(repl.origin(), serial, file, r));
            true
        });
    }
    let count = all.len();
    let tx = pg.client.transaction().await.map_err(broken)?;
    let mut quarantined = Vec::new();
    while !all.is_empty() {
        let rest = all.split_off(all.len().min(SNAPSHOT_RECORDS));
        let part = std::mem::replace(&mut all, rest);
        let mut staged = Staged {
            keep_records: true,
            ..Staged::default()
        };
        stage_rows(repl, link, def, chain, native, &marker, part, &mut staged)?;
        for (i, why) in pg.tables.apply(&tx, &staged.rows, None).await? {
            quarantined.push((staged.source(staged.rows[i].serial), why));
        }
    }
    for (record, why) in quarantined {
        if def.spec.options.on_error == OnError::Stop {
            link.stopped.store(true, Ordering::SeqCst);
            return Err(format!(
                "stopped by its error policy: PostgreSQL refused a record of the bootstrap: {why}"
            ));
        }
        let seq = repl.node.generate_id().map_err(|e| e.to_string())?;
        repl.dead_letters
            .push(
                &def.id,
                seq,
                logical::DeadLetter::new(
                    record.as_ref().map_or(Value::Null, logical::record_json),
                    "postgres",
                    &why,
                    "refused by PostgreSQL",
                    wall_us() / 1000,
                ),
            )
            .map_err(|e| e.to_string())?;
        link.status.lock().quarantined += 1;
    }
    let epoch = history::epoch_at(&repl.history(db).map_err(|e| e.to_string())?, serial);
    let at = (&pg.tables, pg.link.as_str(), pg.stream, pg.mapping);
    Target::set_position(at, &tx, serial, epoch).await?;
    tx.commit().await.map_err(broken)?;
    link.status.lock().bootstraps += 1;
    tracing::info!(link = %def.id, serial, records = count, "bootstrapped the PostgreSQL target");
    Ok(serial)
}

/// Re-drive: staged operations (`logical::ops_bytes`) applied into the link's
/// PostgreSQL target as a transaction of their own, without moving the position. Err
/// with PostgreSQL's text when it refuses them.
pub(super) async fn redrive(def: &LinkDef, ops: &[u8]) -> Result<usize, RedriveError> {
    let mut rows = Vec::new();
    let mut at = 0;
    while at + 4 <= ops.len() {
        let len = u32::from_le_bytes(ops[at..at + 4].try_into().expect("4 bytes")) as usize;
        let r = Record::decode(&ops[at + 4..at + 4 + len])
            .map_err(|e| RedriveError::Rejected(format!("a staged record: {e:?}")))?;
        rows.push(Row::from_record(&r).map_err(RedriveError::Rejected)?);
        at += 4 + len;
    }
    let unavailable = |e: String| RedriveError::Node(Error::Unavailable(e));
    let mut pg = Target::connect(def, 0).await.map_err(unavailable)?;
    let tx = pg
        .client
        .transaction()
        .await
        .map_err(|e| unavailable(broken(e)))?;
    let refused = pg
        .tables
        .apply(&tx, &rows, None)
        .await
        .map_err(unavailable)?;
    if let Some((_, why)) = refused.into_iter().next() {
        return Err(RedriveError::Rejected(format!(
            "PostgreSQL refuses it: {why}"
        )));
    }
    tx.commit().await.map_err(|e| unavailable(broken(e)))?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_and_deletes_read_their_columns_from_arrays() {
        let shape = vec![
            ("id".to_string(), PgType::Text),
            ("total".to_string(), PgType::Double),
            ("extra".to_string(), PgType::Jsonb),
        ];
        assert_eq!(
            upsert_sql("\"public\".\"orders\"", &shape, &["id".into()]),
            "INSERT INTO \"public\".\"orders\" (\"id\", \"total\", \"extra\") SELECT u.c0::text, \
             u.c1::double precision, u.c2::jsonb FROM unnest($1::text[], $2::float8[], $3::text[]) \
             AS u(c0, c1, c2) ON CONFLICT (\"id\") DO UPDATE SET \"total\" = EXCLUDED.\"total\", \
             \"extra\" = EXCLUDED.\"extra\""
        );
        assert_eq!(
            delete_sql("\"s\".\"t\"", &shape[..1]),
            "DELETE FROM \"s\".\"t\" AS t USING unnest($1::text[]) AS u(c0) WHERE t.\"id\" = u.c0::text"
        );
    }

    #[test]
    fn a_row_document_reads_back_and_a_record_that_is_not_one_is_refused() {
        let mut r = OwnedRecord::new(
            RecordOp::Update,
            "orders",
            "o-1",
            r#"{"row":1,"table":"orders","key":["id"],"columns":[["id","text","o-1"],["n","bigint",3]]}"#,
        );
        r.serial = 9;
        let mut b = BatchBuilder::new();
        b.push(&r);
        let batch = b.as_batch();
        let row = Row::from_record(&Record::decode(batch.raw(0).unwrap()).unwrap()).unwrap();
        assert_eq!(
            (row.shape.table.as_str(), row.serial, row.shape.delete),
            ("orders", 9, false)
        );
        assert_eq!(row.columns().nth(1), Some(("n", PgType::Bigint, &json!(3))));
        assert_eq!(row.identity(), ("orders", Cow::Borrowed("o-1")));

        let plain = OwnedRecord::new(RecordOp::Insert, "orders", "o-1", r#"{"total": 1}"#);
        let mut b = BatchBuilder::new();
        b.push(&plain);
        let batch = b.as_batch();
        let err = Row::from_record(&Record::decode(batch.raw(0).unwrap()).unwrap()).unwrap_err();
        assert!(err.contains("is not a row"), "{err}");
    }

    #[test]
    fn a_value_that_does_not_fit_its_column_names_the_column() {
        let (fits, not) = (json!(1.5), json!("x"));
        let mut v = Values::new(PgType::Double, 1);
        assert!(v.push("total", PgType::Double, &fits).is_ok());
        let err = v.push("total", PgType::Double, &not).unwrap_err();
        assert!(err.contains("column 'total'"), "{err}");
        let err = put_value(&mut BytesMut::new(), "total", PgType::Double, &not).unwrap_err();
        assert!(err.contains("column 'total'"), "{err}");
    }

    /// Rows of `orders` (id text, n bigint, extra jsonb): `(op, key, n)`.
    fn orders(ops: &[(RecordOp, &str, i64)]) -> Vec<Row> {
        let upsert = Arc::new(
            Shape::new(
                false,
                "orders".into(),
                vec!["id".into()],
                vec![
                    ("id".into(), PgType::Text),
                    ("n".into(), PgType::Bigint),
                    ("extra".into(), PgType::Jsonb),
                ],
            )
            .unwrap(),
        );
        let delete = Arc::new(
            Shape::new(
                true,
                "orders".into(),
                vec!["id".into()],
                vec![("id".into(), PgType::Text)],
            )
            .unwrap(),
        );
        ops.iter()
            .enumerate()
            .map(|(i, (op, key, n))| Row {
                shape: if *op == RecordOp::Delete {
                    delete.clone()
                } else {
                    upsert.clone()
                },
                insert: *op == RecordOp::Insert,
                values: if *op == RecordOp::Delete {
                    vec![json!(key)]
                } else {
                    vec![json!(key), json!(n), json!({"k": key})]
                },
                serial: i as u64 + 1,
            })
            .collect()
    }

    #[test]
    fn a_plan_keeps_the_last_operation_of_each_key_and_copies_only_keys_new_at_the_source() {
        use RecordOp::{Delete, Insert, Update};
        let mut ops: Vec<(RecordOp, String, i64)> = (0..COPY_MIN_ROWS as i64)
            .map(|i| (Insert, format!("n{i}"), i))
            .collect();
        ops.extend([
            (Insert, "a".to_string(), 1),
            (Update, "a".to_string(), 2),
            (Update, "b".to_string(), 3),
            (Insert, "c".to_string(), 4),
            (Delete, "c".to_string(), 0),
        ]);
        let ops: Vec<(RecordOp, &str, i64)> =
            ops.iter().map(|(o, k, n)| (*o, k.as_str(), *n)).collect();
        let rows = orders(&ops);
        let plan = Plan::of(&rows);
        let members: Vec<(bool, Vec<u64>)> = plan
            .statements
            .iter()
            .map(|p| {
                let serials = p.members.iter().map(|&i| rows[i].serial).collect();
                (p.shape.delete, serials)
            })
            .collect();
        // One upsert statement (the new keys, a's update, b's update), one delete (c).
        let n = COPY_MIN_ROWS as u64;
        let mut upserted: Vec<u64> = (1..=n).collect();
        upserted.extend([n + 2, n + 3]);
        assert_eq!(members, vec![(false, upserted), (true, vec![n + 5])]);
        // b was updated, not inserted, here: the statement is an upsert, not a COPY.
        assert!(plan.statements.iter().all(|p| p.copy.is_none()));

        // Only new keys, enough of them: a COPY, in the binary format.
        let fresh: Vec<(RecordOp, &str, i64)> = ops[..COPY_MIN_ROWS].to_vec();
        let rows = orders(&fresh);
        let plan = Plan::of(&rows);
        let [Planned {
            copy: Some(Ok(data)),
            members,
            ..
        }] = plan.statements.as_slice()
        else {
            panic!("one COPY statement");
        };
        assert_eq!(members.len(), COPY_MIN_ROWS);
        let all: Vec<u8> = data.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(all.starts_with(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"));
        assert!(all.ends_with(&[0xff, 0xff]));
        // The first tuple: 3 fields; "n0" (2 bytes), 0 as int8, jsonb {"k":"n0"}.
        let mut first = vec![0, 3, 0, 0, 0, 2, b'n', b'0', 0, 0, 0, 8];
        first.extend(0i64.to_be_bytes());
        let json = br#"{"k":"n0"}"#;
        first.extend((json.len() as i32 + 1).to_be_bytes());
        first.push(1);
        first.extend(json);
        assert_eq!(&all[19..19 + first.len()], first.as_slice());

        // Fewer than COPY_MIN_ROWS new keys: an upsert.
        let plan = Plan::of(&rows[..COPY_MIN_ROWS - 1]);
        assert!(plan.statements[0].copy.is_none());
    }

    #[test]
    fn a_bulk_load_of_new_keys_is_one_copy_and_any_other_group_is_collapsed_by_key() {
        use RecordOp::{Insert, Update};
        let keys: Vec<String> = (0..COPY_MIN_ROWS).map(|i| format!("k{i}")).collect();
        let fresh: Vec<(RecordOp, &str, i64)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (Insert, k.as_str(), i as i64))
            .collect();
        let rows = orders(&fresh);
        let copy_of = |plan: &Plan| -> Vec<(Vec<usize>, Option<Vec<Bytes>>)> {
            plan.statements
                .iter()
                .map(|p| (p.members.clone(), p.copy.clone().map(Result::unwrap)))
                .collect()
        };
        // New keys only: the same single COPY the collapsing plan makes.
        let bulk = copy_of(&Plan::of_group(&rows, true));
        assert_eq!(bulk, copy_of(&Plan::of(&rows)));
        assert_eq!(bulk.len(), 1);
        assert_eq!(bulk[0].0, (0..COPY_MIN_ROWS).collect::<Vec<_>>());
        assert!(bulk[0].1.is_some());

        // An update of k0 among them: collapsed to k0's last operation, still new here.
        let mut mixed = fresh.clone();
        mixed.push((Update, "k0", 99));
        let rows = orders(&mixed);
        let plan = copy_of(&Plan::of_group(&rows, true));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0.len(), COPY_MIN_ROWS);
        assert!(!plan[0].0.contains(&0) && plan[0].0.contains(&COPY_MIN_ROWS));
        assert!(plan[0].1.is_some());
        // An update of a key inserted before the group: an upsert.
        mixed.push((Update, "older", 7));
        let plan = copy_of(&Plan::of_group(&orders(&mixed), true));
        assert_eq!(plan[0].0.len(), COPY_MIN_ROWS + 1);
        assert!(plan[0].1.is_none());

        // Two files into one table may insert the same key: not taken as distinct.
        let mut twice = fresh.clone();
        twice.push((Insert, "k0", 99));
        let rows = orders(&twice);
        let plan = copy_of(&Plan::of_group(&rows, false));
        assert_eq!(plan[0].0.len(), COPY_MIN_ROWS);
        assert!(!plan[0].0.contains(&0));
    }
}
