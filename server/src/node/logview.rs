//! The A/B/T log of a database as clients inspect it (`GET …/log`).
//!
//! Reads the three logs from sled for a serial range and merges them by serial into one
//! entry per update, decoding record images into client records.

use std::collections::BTreeMap;

use serde::Serialize;

use super::error::Result;
use super::records::{self, OpName, RecordView};
use super::Database;
use crate::log::{EntryRef, LogKind};
use crate::store::{block, Effect, Schema};

/// One update with its A, B and T entries (each present if still retained).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LogEntryView {
    pub serial: u64,
    pub txn: u64,
    pub kind: &'static str,
    pub file: String,
    pub block: u32,
    pub offset: u32,
    pub timestamp_us: u64,
    pub undo: bool,
    pub a: Option<RecordView>,
    pub b: Option<RecordView>,
    pub t: Option<TView>,
}

/// The T entry: the client's operation.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TView {
    pub op: OpName,
    #[serde(flatten)]
    pub record: RecordView,
}

fn kind_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Insert => "insert",
        Effect::Update => "update",
        Effect::Delete => "delete",
        Effect::Reorg => "reorg",
    }
}

fn image(schema: &Schema, file: u32, bytes: Option<&[u8]>) -> Option<RecordView> {
    let table = schema.table_of(file)?;
    let record = block::decode(bytes?)?;
    Some(records::view(&schema.files[table], &record))
}

fn key_only(key: &[u8]) -> RecordView {
    RecordView {
        key: String::from_utf8_lossy(key).into_owned(),
        alt: BTreeMap::new(),
        data: serde_json::value::RawValue::from_string("null".into()).expect("null is JSON"),
        block: None,
        offset: None,
    }
}

/// Up to `limit` updates from serial `from` on.
pub fn read(db: &Database, from: u64, limit: usize) -> Result<Vec<LogEntryView>> {
    let schema = db.schema();
    let names = schema.block_file_names();
    let mut entries: BTreeMap<u64, LogEntryView> = BTreeMap::new();
    let mut upto = u64::MAX;
    for kind in [LogKind::A, LogKind::B, LogKind::T] {
        db.log_store().read(db.def.uid, kind, from, |chunk| {
            for entry in &chunk.entries {
                let serial = entry.header.serial;
                if serial < from {
                    continue;
                }
                if serial > upto || (kind == LogKind::A && entries.len() >= limit) {
                    return false;
                }
                let view = entries
                    .entry(serial)
                    .or_insert_with(|| new_view(&names, entry));
                attach(&schema, view, kind, entry);
            }
            true
        })?;
        if kind == LogKind::A {
            // B and T entries are read for the same serials as the A entries.
            upto = match entries.keys().next_back() {
                Some(last) if entries.len() >= limit => *last,
                _ => from.saturating_add(limit as u64),
            };
        }
    }
    Ok(entries.into_values().take(limit).collect())
}

fn new_view(names: &[String], entry: &EntryRef<'_>) -> LogEntryView {
    let h = entry.header;
    LogEntryView {
        serial: h.serial,
        txn: h.txn,
        kind: kind_name(h.effect),
        file: names.get(h.file as usize).cloned().unwrap_or_default(),
        block: h.block,
        offset: h.offset,
        timestamp_us: h.timestamp_us,
        undo: h.undo,
        a: None,
        b: None,
        t: None,
    }
}

fn attach(schema: &Schema, view: &mut LogEntryView, kind: LogKind, entry: &EntryRef<'_>) {
    let file = entry.header.file;
    match kind {
        LogKind::A => view.a = image(schema, file, entry.image).or_else(|| entry.key.map(key_only)),
        LogKind::B => view.b = image(schema, file, entry.image),
        LogKind::T => {
            let record = if entry.header.effect == Effect::Delete {
                entry.image.map(key_only)
            } else {
                image(schema, file, entry.image)
            };
            view.t = record.zip(entry.op).map(|(record, op)| TView {
                op: op.into(),
                record,
            });
        }
    }
}
