//! Logical links (SPEC C4, E1–E3): a source transaction's updates, decoded into plugin
//! records, run through the link's stage chain (filters and transforms from the plugin
//! registry) and shipped as operations by key; loading a link's stages (interrelation
//! rules among them, see `transport::interrelation`); and the dead letters of records a stage
//! rejected under the `quarantine` policy.
//!
//! The replica applies the operations as transactions of its own (`Database::
//! apply_logical`), so its blocks are its own; it keeps its position in the source's
//! stream in the same sled batch. Every source transaction ships, even one whose records
//! were all filtered out, so positions never skip. Operations travel as the staged
//! batch's record bytes, so nothing is converted to JSON and back on the way.

use std::collections::BTreeMap;

use serde_json::{json, value::RawValue, Value};

use doppel_sdk::abi::{BatchBuilder, Op as RecordOp, OwnedRecord, Record};

use super::links::StageSpec;
use super::spool::prefix;
use crate::log::codec;
use crate::log::durable::{LogError, RawTxn};
use crate::log::OpKind;
use crate::log::{LogKind, Outcome};
use crate::node::{records, versions, Error, Result};
use crate::plugins::registry::RegistryError;
use crate::plugins::{Chain, Registry, Role};
use crate::store::{block, Effect, Schema, Store};
use crate::txn::Op;

/// Shipped operations this database cannot take (the message names the record).
fn bad(detail: impl Into<String>) -> Error {
    Error::Malformed(detail.into())
}

/// A log chunk that does not decode.
fn damaged(detail: impl std::fmt::Display) -> Error {
    Error::Log(LogError::Damaged(detail.to_string()))
}

/// A stored JSON value (a dead letter).
fn stored_letter(bytes: &[u8]) -> std::result::Result<DeadLetter, LogError> {
    serde_json::from_slice(bytes).map_err(|e| LogError::Damaged(format!("a dead letter: {e}")))
}

/// A record a link's stages (or its PostgreSQL target) rejected under the quarantine
/// policy, as it is stored and as `GET …/links/{link}/dead-letters` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct DeadLetter {
    /// Its id in the link's dead letters (drop or re-drive it by this id).
    #[serde(default)]
    pub id: u64,
    /// The record as the stages saw it ([`record_json`]); a PostgreSQL bootstrap's row
    /// that did not decode shows only its file and serial.
    #[schemars(with = "Option<ShownRecord>")]
    pub record: Value,
    /// The stage plugin that rejected it (`postgres`: the PostgreSQL target).
    #[serde(default)]
    pub plugin: String,
    /// Why.
    #[serde(default)]
    pub error: String,
    /// What became of the record's transaction (the rest of it shipped, or it did).
    #[serde(default)]
    pub outcome: String,
    /// When it was quarantined, ms since the Unix epoch.
    #[serde(default)]
    pub at_ms: u64,
}

impl DeadLetter {
    /// A dead letter to [`DeadLetters::push`] (its id is set there).
    pub fn new(record: Value, plugin: &str, error: &str, outcome: &str, at_ms: u64) -> Self {
        DeadLetter {
            id: 0,
            record,
            plugin: plugin.to_string(),
            error: error.to_string(),
            outcome: outcome.to_string(),
            at_ms,
        }
    }
}

/// A record as the API shows it ([`record_json`]): the schema of a dead letter's.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct ShownRecord {
    /// `insert`, `update` or `delete`.
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Alternate keys by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    alt: Option<BTreeMap<String, String>>,
    /// The record's data (JSON, or its bytes as text when they are not JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    serial: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    txn: Option<u64>,
}

/// A link's stages, loaded: its interrelation rules (which only read) and the chain of
/// filters and transforms (which change what ships).
pub struct Stages {
    pub rules: Vec<crate::plugins::Stage>,
    pub chain: Chain,
}

impl Stages {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.chain.stages.is_empty()
    }
}

/// Load a link's stages, each `name@version` from the tenant's registry, with its
/// config. Rules run on the source's records whatever their place in the list; filters
/// and transforms run in the order given.
pub fn stages(registry: &Registry, tenant: &str, specs: &[StageSpec]) -> Result<Stages> {
    let mut out = Stages {
        rules: Vec::new(),
        chain: Chain { stages: Vec::new() },
    };
    for (i, stage) in specs.iter().enumerate() {
        let loaded = load_stage(registry, tenant, stage, &format!("stages[{i}]"))?;
        match loaded.role() {
            Role::Rule => out.rules.push(loaded),
            Role::Filter | Role::Transform => out.chain.stages.push(loaded),
            role => {
                return Err(Error::Invalid(format!(
                    "stages[{i}] ({}): a {role} is not a link stage (links take filters, \
                     transforms and interrelation rules)",
                    stage.plugin
                )))
            }
        }
    }
    Ok(out)
}

/// Load one plugin named `name@version` from the tenant's registry and configure it;
/// errors name the part of the request (`at`) and the plugin.
pub fn load_stage(
    registry: &Registry,
    tenant: &str,
    stage: &StageSpec,
    at: &str,
) -> Result<crate::plugins::Stage> {
    let (name, version) = stage.plugin.split_once('@').ok_or_else(|| {
        Error::Malformed(format!(
            "{at}: name the plugin as name@version, not '{}'",
            stage.plugin
        ))
    })?;
    let template = registry
        .template(tenant, name, version)
        .map_err(|e| match e {
            // 404 like any missing thing a request names; the registry's hint (the
            // built-in's own version) is kept.
            RegistryError::NotFound(m) => Error::NotFound(match m.split_once("not found: ") {
                Some((_, hint)) => format!("{at}: plugin '{}' ({hint})", stage.plugin),
                None => format!("{at}: plugin '{}'", stage.plugin),
            }),
            e => Error::Invalid(format!("{at} ({}): {e}", stage.plugin)),
        })?;
    let config = if stage.config.is_null() {
        String::new()
    } else {
        stage.config.to_string()
    };
    template
        .stage(&config)
        .map_err(|e| Error::Invalid(format!("{at} ({}): {e}", stage.plugin)))
}

/// One record of a transaction, borrowed from its log chunk.
pub struct LogRecord<'a> {
    pub op: RecordOp,
    pub serial: u64,
    pub timestamp: u64,
    pub txn: u64,
    pub file: &'a crate::store::FileSchema,
    pub key: &'a [u8],
    /// The after image (None for a delete).
    pub image: Option<block::RecordRef<'a>>,
}

impl LogRecord<'_> {
    /// The record as a plugin record of its own.
    pub fn owned(&self, origin: u64) -> OwnedRecord {
        let file = self.file;
        OwnedRecord {
            origin,
            serial: self.serial,
            timestamp: self.timestamp,
            txn: self.txn,
            op: self.op,
            file: file.name.clone(),
            key: String::from_utf8_lossy(self.key).into_owned(),
            data: self.image.map_or_else(Vec::new, |r| r.data.to_vec()),
            alt: self.image.map_or_else(Vec::new, |r| {
                r.alts()
                    .filter_map(|(index, value)| {
                        let name = file.alt_keys.get(index as usize)?;
                        Some((name.clone(), String::from_utf8_lossy(value).into_owned()))
                    })
                    .collect()
            }),
            ..OwnedRecord::default()
        }
    }
}

/// Each record of one transaction, in order, borrowed from the log (main files only;
/// reorganisations and undo updates carry nothing a key-based replica needs, and a
/// cancelled transaction none at all): what [`records`] copies, and what a PostgreSQL
/// link that maps records on the host reads without copying them.
pub fn each_log_record(
    schema: &Schema,
    txn: &RawTxn,
    mut f: impl FnMut(LogRecord<'_>) -> Result<()>,
) -> Result<()> {
    if txn.outcome == Outcome::Cancelled {
        return Ok(());
    }
    for chunk in txn.chunks.iter().filter(|c| c.head.kind == LogKind::A) {
        let decoded = codec::decode(&chunk.bytes).map_err(damaged)?;
        for entry in &decoded.entries {
            let h = entry.header;
            if h.undo || h.effect == Effect::Reorg {
                continue;
            }
            let Some(table) = schema.table_of(h.file) else {
                continue;
            };
            let file = &schema.files[table];
            // A mutual database's versions travel beside its records (`transport::mutual`).
            if file.name == versions::VERSIONS_FILE {
                continue;
            }
            let (op, key, image) = match h.effect {
                Effect::Delete => (RecordOp::Delete, entry.key.unwrap_or_default(), None),
                effect => {
                    let image = entry
                        .image
                        .ok_or_else(|| damaged("a put without its after image"))?;
                    let r = block::decode(image)
                        .ok_or_else(|| damaged("an undecodable after image"))?;
                    let op = if effect == Effect::Insert {
                        RecordOp::Insert
                    } else {
                        RecordOp::Update
                    };
                    (op, r.key, Some(r))
                }
            };
            f(LogRecord {
                op,
                serial: h.serial,
                timestamp: h.timestamp_us,
                txn: h.txn,
                file,
                key,
                image,
            })?;
        }
    }
    Ok(())
}

/// The records of one transaction ([`each_log_record`], each a record of its own).
pub fn records(schema: &Schema, origin: u64, txn: &RawTxn) -> Result<Vec<OwnedRecord>> {
    let mut out = Vec::new();
    each_log_record(schema, txn, |r| {
        out.push(r.owned(origin));
        Ok(())
    })?;
    Ok(out)
}

/// A record as JSON, for dead letters and the wire.
pub fn record_json(r: &OwnedRecord) -> Value {
    let data: Value = serde_json::from_slice(&r.data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.data).into_owned()));
    json!({
        "op": r.op.name(),
        "file": r.file,
        "key": r.key,
        "alt": r.alt.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "data": data,
        "serial": r.serial,
        "txn": r.txn,
    })
}

/// The operations a batch of (staged) records asks the replica for, as the batch's own
/// record bytes (`len u32 | record`, the layout of `doppel_sdk::abi`): nothing is
/// re-encoded on the way. Reads are dropped.
pub fn ops_bytes(batch: &BatchBuilder) -> Result<Vec<u8>> {
    let b = batch.as_batch();
    let mut out = Vec::with_capacity(b.arena.len() + 4 * b.len());
    for i in 0..b.len() {
        let raw = b
            .raw(i)
            .map_err(|e| bad(format!("a stage produced an undecodable record: {e:?}")))?;
        let r = Record::decode(raw)
            .map_err(|e| bad(format!("a stage produced an undecodable record: {e:?}")))?;
        if r.op == RecordOp::Read {
            continue;
        }
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        out.extend_from_slice(raw);
    }
    Ok(out)
}

/// The replica's side of [`ops_bytes`]: each record resolved against this database's
/// schema into an upsert or a delete. A file the replica lacks, an alternate key it does
/// not declare or data that is not JSON is an error naming the record.
pub fn decode_ops(schema: &Schema, bytes: &[u8]) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for_each_record(bytes, |r| {
        ops.push(decode_op(schema, &r)?.1);
        Ok(())
    })?;
    Ok(ops)
}

/// Each record of [`ops_bytes`]'s output, in order.
pub fn for_each_record(
    mut bytes: &[u8],
    mut f: impl FnMut(Record<'_>) -> Result<()>,
) -> Result<()> {
    while !bytes.is_empty() {
        let len = bytes
            .get(..4)
            .map(|l| u32::from_le_bytes(l.try_into().expect("4")) as usize)
            .ok_or_else(|| bad("truncated operations"))?;
        let raw = bytes
            .get(4..4 + len)
            .ok_or_else(|| bad("truncated operations"))?;
        bytes = &bytes[4 + len..];
        f(Record::decode(raw).map_err(|e| bad(format!("an undecodable record: {e:?}")))?)?;
    }
    Ok(())
}

/// One shipped record as an operation of this database, with its table.
pub fn decode_op(schema: &Schema, r: &Record<'_>) -> Result<(usize, Op)> {
    let table = schema
        .file_index(r.file)
        .filter(|t| schema.files[*t].name != versions::VERSIONS_FILE)
        .ok_or_else(|| {
            bad(format!(
                "record '{}': this database has no file '{}'",
                r.key, r.file
            ))
        })?;
    let file = schema.main_id(table);
    Store::check_key(r.key.as_bytes()).map_err(|e| bad(format!("record '{}': {e}", r.key)))?;
    if r.op == RecordOp::Delete {
        let op = Op {
            kind: OpKind::Delete,
            file,
            payload: r.key.as_bytes().to_vec(),
        };
        return Ok((table, op));
    }
    // Checked and borrowed in one pass: one JSON value, as UTF-8 text.
    let data: &RawValue = serde_json::from_slice(r.data)
        .map_err(|e| bad(format!("record '{}': its data is not JSON: {e}", r.key)))?;
    // By name, the last one given winning (no allocation when there is none).
    let alt: BTreeMap<&str, &str> = r.alt().collect();
    let payload = records::encode(&schema.files[table], r.key, alt, Some(data.get()))
        .map_err(|e| bad(format!("record '{}': {e}", r.key)))?;
    let op = Op {
        kind: OpKind::Upsert,
        file,
        payload,
    };
    Ok((table, op))
}

/// Records a link's stages rejected (sled tree `dead-letters`): key
/// `len(link) u8 | link | sequence u64 BE`, value JSON.
pub struct DeadLetters {
    tree: sled::Tree,
}

impl DeadLetters {
    pub fn open(tree: sled::Tree) -> DeadLetters {
        DeadLetters { tree }
    }

    /// Keep a rejected record with why and where, on disk before this returns (rare:
    /// one flush per rejected record).
    pub fn push(
        &self,
        link: &str,
        seq: u64,
        mut entry: DeadLetter,
    ) -> std::result::Result<(), LogError> {
        entry.id = seq;
        let mut key = prefix(link);
        key.extend_from_slice(&seq.to_be_bytes());
        let bytes = serde_json::to_vec(&entry).expect("a dead letter serialises");
        self.tree.insert(key, bytes)?;
        // The link moves past the record once the rest of its transaction is applied:
        // the dead letter must be on disk by then, and the tree is in the node's sled
        // instance, which the database's log flush does not cover.
        super::net::blocking(|| self.tree.flush())?;
        Ok(())
    }

    /// The oldest `limit` dead letters of `link`.
    pub fn list(&self, link: &str, limit: usize) -> std::result::Result<Vec<DeadLetter>, LogError> {
        self.tree
            .scan_prefix(prefix(link))
            .take(limit)
            .map(|item| stored_letter(&item?.1))
            .collect()
    }

    /// One dead letter, if there is one with that id.
    pub fn get(&self, link: &str, seq: u64) -> std::result::Result<Option<DeadLetter>, LogError> {
        let mut key = prefix(link);
        key.extend_from_slice(&seq.to_be_bytes());
        self.tree.get(key)?.map(|v| stored_letter(&v)).transpose()
    }

    pub fn count(&self, link: &str) -> usize {
        self.tree.scan_prefix(prefix(link)).count()
    }

    /// Drop one dead letter; false if there was none with that id.
    pub fn remove(&self, link: &str, seq: u64) -> std::result::Result<bool, LogError> {
        let mut key = prefix(link);
        key.extend_from_slice(&seq.to_be_bytes());
        Ok(self.tree.remove(key)?.is_some())
    }

    /// Drop every dead letter of a deleted link.
    pub fn clear(&self, link: &str) -> std::result::Result<(), LogError> {
        super::spool::remove_prefix(&self.tree, &prefix(link))
    }
}

/// A record of a frozen copy (a bootstrap's snapshot) as an insert of `file`, numbered
/// `serial`, its alternate keys by name.
pub fn stored_record(
    origin: u64,
    serial: u64,
    file: &crate::store::FileSchema,
    r: crate::store::RecordRef<'_>,
) -> OwnedRecord {
    OwnedRecord {
        op: RecordOp::Insert,
        origin,
        serial,
        file: file.name.clone(),
        key: String::from_utf8_lossy(r.key).into_owned(),
        data: r.data.to_vec(),
        alt: r
            .alts()
            .filter_map(|(i, v)| {
                let name = file.alt_keys.get(i as usize)?;
                Some((name.clone(), String::from_utf8_lossy(v).into_owned()))
            })
            .collect(),
        ..OwnedRecord::default()
    }
}
