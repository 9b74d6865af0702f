//! Built-in row mapping: a record's top-level JSON fields become typed columns of a
//! table, so a link into PostgreSQL (`transport::postgres`) needs no code for the common
//! case.
//!
//! It is a transform that speaks the **row contract** (the transform contract's
//! extension for row targets, docs/PLUGINS.md): each output record keeps its op and key,
//! its file becomes the table, and its data is a row document
//!
//! ```json
//! {"row": 1, "table": "orders", "key": ["id"],
//!  "columns": [["id", "text", "o-1"], ["total", "double", 12.5], ["rest", "jsonb", {}]]}
//! ```
//!
//! with every value typed: `text`, `bigint`, `double`, `boolean`, `jsonb`,
//! `timestamptz` (an RFC 3339 string), `bytea` (base64) or JSON `null`. A delete's
//! document carries the key column only. The configuration, per source file:
//!
//! ```json
//! {"files": {"orders": {"table": "orders", "key": "id",
//!   "columns": {"total": "double", "customer": "text"}, "rest": "extra"}}}
//! ```
//!
//! `key` names the primary-key column that holds the record's key (text unless
//! `columns` gives it another type); a listed field missing from a record is `null`;
//! `rest` (optional) names a jsonb column that takes the fields not listed; a file with
//! no entry is not shipped. A value that does not fit its column's type is a record
//! error that names the column.

use std::borrow::Cow;
use std::collections::BTreeMap;

use doppel_sdk::{json, Op, Out, OwnedRecord, PluginConfig, Record};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The column types of the row contract (the one list of them: a PostgreSQL target
/// reads row documents with [`ColumnType::parse`]).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Text,
    Bigint,
    Double,
    Boolean,
    Jsonb,
    Timestamptz,
    Bytea,
}

impl ColumnType {
    pub const ALL: [ColumnType; 7] = [
        ColumnType::Text,
        ColumnType::Bigint,
        ColumnType::Double,
        ColumnType::Boolean,
        ColumnType::Jsonb,
        ColumnType::Timestamptz,
        ColumnType::Bytea,
    ];

    /// The type a row document names.
    pub fn parse(name: &str) -> Option<ColumnType> {
        ColumnType::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Bigint => "bigint",
            ColumnType::Double => "double",
            ColumnType::Boolean => "boolean",
            ColumnType::Jsonb => "jsonb",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Bytea => "bytea",
        }
    }

    /// Whether a JSON value fits the type (`null` fits every type).
    fn fits(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null) | (ColumnType::Jsonb, _) => true,
            (ColumnType::Text | ColumnType::Timestamptz | ColumnType::Bytea, Value::String(_)) => {
                true
            }
            (ColumnType::Bigint, Value::Number(n)) => n.as_i64().is_some(),
            (ColumnType::Double, Value::Number(_)) => true,
            (ColumnType::Boolean, Value::Bool(_)) => true,
            _ => false,
        }
    }
}

/// How one source file maps to a table.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileMap {
    pub table: String,
    pub key: String,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnType>,
    /// The jsonb column for the fields not listed.
    #[serde(default)]
    pub rest: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub files: BTreeMap<String, FileMap>,
}

/// A PostgreSQL identifier the target can quote plainly: lower case ASCII letters,
/// digits and `_`, not starting with a digit, at most 63 bytes.
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
            "{what}: '{name}' is not a column or table name (a-z, 0-9 and _, not starting \
             with a digit, at most 63 characters)"
        ))
    }
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r##"{"type":"object","required":["files"],"additionalProperties":false,"properties":{"files":{"type":"object","additionalProperties":{"type":"object","required":["table","key"],"additionalProperties":false,"properties":{"table":{"type":"string","pattern":"^[a-z_][a-z0-9_]*$"},"key":{"type":"string","pattern":"^[a-z_][a-z0-9_]*$"},"columns":{"type":"object","additionalProperties":{"enum":["text","bigint","double","boolean","jsonb","timestamptz","bytea"]}},"rest":{"type":"string","pattern":"^[a-z_][a-z0-9_]*$"}}}}}}"##;

    fn validate(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Err("files: map at least one file to a table".into());
        }
        for (file, m) in &self.files {
            let at = format!("files.{file}");
            check_ident(&format!("{at}.table"), &m.table)?;
            check_ident(&format!("{at}.key"), &m.key)?;
            for name in m.columns.keys() {
                check_ident(&format!("{at}.columns"), name)?;
            }
            if let Some(rest) = &m.rest {
                check_ident(&format!("{at}.rest"), rest)?;
                if m.columns.contains_key(rest) || *rest == m.key {
                    return Err(format!(
                        "{at}.rest: '{rest}' is also a listed column or the key"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The key column's value: the record's key in the key column's type.
fn key_value(m: &FileMap, key: &str) -> Result<(ColumnType, Value), String> {
    let ty = m.columns.get(&m.key).copied().unwrap_or(ColumnType::Text);
    let v = match ty {
        ColumnType::Text | ColumnType::Timestamptz => Value::String(key.to_string()),
        ColumnType::Bigint => key
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("column '{}': the key '{key}' is not a bigint", m.key))?,
        other => {
            return Err(format!(
                "column '{}': a key column is text, bigint or timestamptz, not {}",
                m.key,
                other.name()
            ))
        }
    };
    Ok((ty, v))
}

/// A record's top-level fields read straight into the columns they fill: a listed
/// field's value into its column, the others into the `rest` object, or skipped without
/// being built when there is none. No map of every field is made, and field names are
/// borrowed from the data (this runs for every record).
struct Fields<'c, 'v> {
    /// The key column: the record's key fills it, whatever the data says.
    key: &'c str,
    listed: &'v mut [(&'c str, ColumnType, Value)],
    rest: Option<Map<String, Value>>,
}

impl Fields<'_, '_> {
    /// Read `data`, a JSON object, into the columns (the errors of parsing it whole).
    fn read(&mut self, data: &[u8]) -> Result<(), String> {
        if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            json::parse(data)?;
            return Err("the record is not a JSON object".into());
        }
        let mut de = serde_json::Deserializer::from_slice(data);
        serde::Deserializer::deserialize_map(&mut de, &mut *self)
            .and_then(|()| de.end())
            .map_err(|e| format!("data is not JSON: {e}"))
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Fields<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Name(name)) = map.next_key()? {
            // A later duplicate wins, as in a parsed object.
            let listed = self.listed.iter().position(|(n, _, _)| *n == name);
            let is_key = name == self.key;
            if let Some(at) = listed {
                self.listed[at].2 = map.next_value()?;
            } else if let Some(rest) = self.rest.as_mut().filter(|_| !is_key) {
                rest.insert(name.into_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A field name, borrowed from the data unless it has escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(Text)
    }
}

/// One record mapped to its row: the table, the key column and the typed columns (the
/// key's first; a delete's only the key's).
#[derive(Debug, PartialEq)]
pub struct Mapped<'c> {
    pub table: &'c str,
    pub key: &'c str,
    pub columns: Vec<(&'c str, ColumnType, Value)>,
}

/// Map one record by `cfg`: None when its file has no entry (not shipped); Err, naming
/// the column, when a value does not fit. What the plugin and a PostgreSQL target that
/// maps natively (`transport::postgres`) both run.
pub fn map_columns<'c>(
    cfg: &'c Config,
    op: Op,
    file: &str,
    key: &str,
    data: &[u8],
) -> Result<Option<Mapped<'c>>, String> {
    let Some(m) = cfg.files.get(file) else {
        return Ok(None);
    };
    let (key_ty, key) = key_value(m, key)?;
    let mut columns = Vec::with_capacity(m.columns.len() + 2);
    columns.push((m.key.as_str(), key_ty, key));
    if op != Op::Delete {
        // The listed columns (the key's excepted) in order, filled as the data is read.
        columns.extend(
            m.columns
                .iter()
                .filter(|(name, _)| **name != m.key)
                .map(|(name, ty)| (name.as_str(), *ty, Value::Null)),
        );
        let mut fields = Fields {
            key: &m.key,
            listed: &mut columns[1..],
            rest: m.rest.as_ref().map(|_| Map::new()),
        };
        fields.read(data)?;
        let rest = fields.rest.take();
        for (name, ty, v) in &columns[1..] {
            if !ty.fits(v) {
                return Err(format!(
                    "column '{name}': expected {}, got {}",
                    ty.name(),
                    kind(v)
                ));
            }
        }
        if let (Some(name), Some(fields)) = (&m.rest, rest) {
            columns.push((name.as_str(), ColumnType::Jsonb, Value::Object(fields)));
        }
    }
    Ok(Some(Mapped {
        table: &m.table,
        key: &m.key,
        columns,
    }))
}

/// One record as a row document (the row contract).
pub fn map_row(r: &Record<'_>, cfg: &Config) -> Result<Out, String> {
    let Some(m) = map_columns(cfg, r.op, r.file, r.key, r.data)? else {
        return Ok(Out::Drop);
    };
    // Written straight out, not built as a JSON value first: this runs for every record.
    let mut doc = Vec::with_capacity(r.data.len() + 96);
    doc.extend_from_slice(br#"{"row":1,"table":"#);
    put(&mut doc, m.table);
    doc.extend_from_slice(br#","key":["#);
    put(&mut doc, m.key);
    doc.extend_from_slice(br#"],"columns":["#);
    for (i, (name, ty, v)) in m.columns.iter().enumerate() {
        if i > 0 {
            doc.push(b',');
        }
        column(&mut doc, name, *ty, v);
    }
    doc.extend_from_slice(b"]}");
    Ok(Out::Replace(OwnedRecord {
        file: m.table.to_string(),
        data: doc,
        before: None,
        ..r.to_owned()
    }))
}

/// A JSON value into the document.
fn put<T: serde::Serialize + ?Sized>(doc: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *doc, v).expect("writing JSON into memory cannot fail");
}

/// `[name, type, value]`.
fn column(doc: &mut Vec<u8>, name: &str, ty: ColumnType, v: &Value) {
    doc.push(b'[');
    put(doc, name);
    doc.extend_from_slice(b",\"");
    doc.extend_from_slice(ty.name().as_bytes());
    doc.extend_from_slice(b"\",");
    put(doc, v);
    doc.push(b']');
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

doppel_sdk::transform!(map_row, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::transform;
    use serde_json::json;

    const CFG: &str = r#"{"files": {"orders": {"table": "orders", "key": "id",
        "columns": {"total": "double", "customer": "text"}, "rest": "extra"}}}"#;

    fn doc(r: &OwnedRecord) -> Value {
        json::parse(&r.data).unwrap()
    }

    #[test]
    fn listed_fields_become_typed_columns_and_the_rest_goes_to_the_jsonb_column() {
        let r = OwnedRecord::new(
            Op::Insert,
            "orders",
            "o-1",
            r#"{"total": 12.5, "customer": "ann", "note": "rush", "id": "ignored"}"#,
        );
        let (out, errors) = transform(map_row, CFG, &[r]).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (out[0].file.as_str(), out[0].key.as_str()),
            ("orders", "o-1")
        );
        assert_eq!(
            doc(&out[0]),
            json!({"row": 1, "table": "orders", "key": ["id"], "columns": [
                ["id", "text", "o-1"], ["customer", "text", "ann"], ["total", "double", 12.5],
                ["extra", "jsonb", {"note": "rush"}]]})
        );
    }

    #[test]
    fn a_missing_field_is_null_a_delete_carries_the_key_and_unmapped_files_are_dropped() {
        let recs = [
            OwnedRecord::new(Op::Update, "orders", "o-2", r#"{"total": 3}"#),
            OwnedRecord::new(Op::Delete, "orders", "o-3", ""),
            OwnedRecord::new(Op::Insert, "audit", "a-1", r#"{"x": 1}"#),
        ];
        let (out, errors) = transform(map_row, CFG, &recs).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out.len(), 2);
        assert_eq!(
            doc(&out[0])["columns"][1],
            json!(["customer", "text", null])
        );
        assert_eq!(out[1].op, Op::Delete);
        assert_eq!(doc(&out[1])["columns"], json!([["id", "text", "o-3"]]));
    }

    #[test]
    fn a_type_clash_is_a_record_error_naming_the_column() {
        let recs = [
            OwnedRecord::new(Op::Insert, "orders", "o-1", r#"{"total": "lots"}"#),
            OwnedRecord::new(Op::Insert, "orders", "o-2", "[1]"),
        ];
        let (out, errors) = transform(map_row, CFG, &recs).unwrap();
        assert!(out.is_empty());
        assert_eq!(errors[0].1, "column 'total': expected double, got a string");
        assert!(errors[1].1.contains("not a JSON object"), "{}", errors[1].1);
    }

    #[test]
    fn a_bigint_key_column_takes_the_key_as_a_number() {
        let cfg = r#"{"files": {"n": {"table": "n", "key": "id", "columns": {"id": "bigint"}}}}"#;
        let recs = [
            OwnedRecord::new(Op::Insert, "n", "42", "{}"),
            OwnedRecord::new(Op::Insert, "n", "x", "{}"),
        ];
        let (out, errors) = transform(map_row, cfg, &recs).unwrap();
        assert_eq!(doc(&out[0])["columns"], json!([["id", "bigint", 42]]));
        assert!(errors[0].1.contains("column 'id'"), "{}", errors[0].1);
    }

    #[test]
    fn fields_read_in_place_match_the_parsed_object() {
        let cfg: Config = doppel_sdk::load_config(CFG).unwrap();
        let map = |data: &str| map_columns(&cfg, Op::Insert, "orders", "o-1", data.as_bytes());
        // A later duplicate wins, escaped names are read, the key field is never data,
        // and unlisted fields (escaped or not) go to the rest column.
        let m = map(
            r#" {"total": 1, "tot\u0061l": 2.5, "id": "x", "n\u00f6te": [1], "customer": null}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m.columns,
            vec![
                ("id", ColumnType::Text, json!("o-1")),
                ("customer", ColumnType::Text, Value::Null),
                ("total", ColumnType::Double, json!(2.5)),
                ("extra", ColumnType::Jsonb, json!({"n\u{f6}te": [1]})),
            ]
        );
        for (data, want) in [
            ("", "not a JSON object"),
            ("  [1]", "not a JSON object"),
            ("{\"total\": 1} x", "data is not JSON"),
            ("{\"total\": ", "data is not JSON"),
            ("nope", "data is not JSON"),
        ] {
            let err = map(data).unwrap_err();
            assert!(err.contains(want), "{data:?}: {err}");
        }
    }

    #[test]
    fn bad_configs_are_refused_at_load() {
        let cases = [
            (r#"{"files": {}}"#, "at least one file"),
            (
                r#"{"files": {"o": {"table": "Orders", "key": "id"}}}"#,
                "files.o.table",
            ),
            (
                r#"{"files": {"o": {"table": "o", "key": "id", "columns": {"a": "money"}}}}"#,
                "unknown variant",
            ),
            (
                r#"{"files": {"o": {"table": "o", "key": "id", "columns": {"a": "text"}, "rest": "a"}}}"#,
                "files.o.rest",
            ),
        ];
        for (cfg, want) in cases {
            let err = transform(map_row, cfg, &[]).unwrap_err();
            assert!(err.contains(want), "{cfg}: {err}");
        }
    }
}
