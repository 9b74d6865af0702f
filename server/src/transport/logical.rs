//! Logical links (SPEC C4, E1–E3): a source transaction's updates, decoded into plugin
//! records, run through the link's stage chain (filters and transforms from the plugin
//! registry) and shipped as operations by key; and the dead letters of records a stage
//! rejected under the `quarantine` policy.
//!
//! The replica applies the operations as transactions of its own (`Database::
//! apply_logical`), so its blocks are its own; it keeps its position in the source's
//! stream in the same sled batch. Every source transaction ships, even one whose records
//! were all filtered out, so positions never skip.

use serde_json::{json, value::RawValue, Value};

use doppel_sdk::abi::{BatchBuilder, Op as RecordOp, OwnedRecord};

use super::links::StageSpec;
use crate::log::codec;
use crate::log::durable::RawTxn;
use crate::log::{LogKind, Outcome};
use crate::plugins::{Chain, Registry};
use crate::store::{block, Effect, Schema};

/// Build the chain of a link's stages, each `name@version` from the tenant's registry.
pub fn chain(registry: &Registry, tenant: &str, stages: &[StageSpec]) -> Result<Chain, String> {
    let mut out = Vec::with_capacity(stages.len());
    for (i, stage) in stages.iter().enumerate() {
        let (name, version) = stage.plugin.split_once('@').ok_or_else(|| {
            format!(
                "stages[{i}]: name the plugin as name@version, not '{}'",
                stage.plugin
            )
        })?;
        let template = registry
            .template(tenant, name, version)
            .map_err(|e| format!("stages[{i}] ({}): {e}", stage.plugin))?;
        let config = if stage.config.is_null() {
            String::new()
        } else {
            stage.config.to_string()
        };
        out.push(
            template
                .stage(&config)
                .map_err(|e| format!("stages[{i}] ({}): {e}", stage.plugin))?,
        );
    }
    Ok(Chain { stages: out })
}

/// The records of one transaction (main files only; reorganisations and undo updates
/// carry nothing a key-based replica needs, and a cancelled transaction none at all).
pub fn records(schema: &Schema, origin: u64, txn: &RawTxn) -> Result<Vec<OwnedRecord>, String> {
    let mut out = Vec::new();
    if txn.outcome == Outcome::Cancelled {
        return Ok(out);
    }
    for chunk in txn.chunks.iter().filter(|c| c.head.kind == LogKind::A) {
        let decoded = codec::decode(&chunk.bytes).map_err(|e| e.to_string())?;
        for entry in &decoded.entries {
            let h = entry.header;
            if h.undo || h.effect == Effect::Reorg {
                continue;
            }
            let Some(table) = schema.table_of(h.file) else {
                continue;
            };
            let file = &schema.files[table];
            let mut record = OwnedRecord {
                origin,
                serial: h.serial,
                timestamp: h.timestamp_us,
                txn: h.txn,
                file: file.name.clone(),
                ..OwnedRecord::default()
            };
            match h.effect {
                Effect::Delete => {
                    record.op = RecordOp::Delete;
                    record.key =
                        String::from_utf8_lossy(entry.key.unwrap_or_default()).into_owned();
                }
                _ => {
                    record.op = if h.effect == Effect::Insert {
                        RecordOp::Insert
                    } else {
                        RecordOp::Update
                    };
                    let image = entry.image.ok_or("a put without its after image")?;
                    let r = block::decode(image).ok_or("an undecodable after image")?;
                    record.key = String::from_utf8_lossy(r.key).into_owned();
                    record.data = r.data.to_vec();
                    record.alt = r
                        .alts()
                        .filter_map(|(index, value)| {
                            let name = file.alt_keys.get(index as usize)?;
                            Some((name.clone(), String::from_utf8_lossy(value).into_owned()))
                        })
                        .collect();
                }
            }
            out.push(record);
        }
    }
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

/// The operations a batch of (staged) records asks the replica for, as the JSON the
/// transactions API takes: puts become upserts, reads are dropped.
pub fn ops_json(batch: &BatchBuilder) -> Result<Vec<u8>, String> {
    let mut ops: Vec<Value> = Vec::with_capacity(batch.len());
    for r in batch.as_batch().iter() {
        let r = r.map_err(|e| format!("a stage produced an undecodable record: {e:?}"))?;
        let op = match r.op {
            RecordOp::Delete => "delete",
            RecordOp::Read => continue,
            _ => "upsert",
        };
        let mut v = json!({
            "op": op,
            "file": r.file,
            "key": r.key,
            "alt": r.alt().collect::<std::collections::BTreeMap<_, _>>(),
        });
        if op == "upsert" {
            let text = std::str::from_utf8(r.data).map_err(|_| "record data is not UTF-8")?;
            let raw = RawValue::from_string(text.to_string())
                .map_err(|e| format!("record '{}' has data that is not JSON: {e}", r.key))?;
            v["data"] = serde_json::to_value(raw).map_err(|e| e.to_string())?;
        }
        ops.push(v);
    }
    serde_json::to_vec(&ops).map_err(|e| e.to_string())
}

/// Records a link's stages rejected (sled tree `dead-letters`): key
/// `len(link) u8 | link | sequence u64 BE`, value JSON.
pub struct DeadLetters {
    tree: sled::Tree,
}

fn prefix(link: &str) -> Vec<u8> {
    let mut p = vec![link.len().min(255) as u8];
    p.extend_from_slice(link.as_bytes());
    p
}

impl DeadLetters {
    pub fn open(tree: sled::Tree) -> DeadLetters {
        DeadLetters { tree }
    }

    /// Keep a rejected record with why and where.
    pub fn push(&self, link: &str, seq: u64, mut entry: Value) -> Result<(), String> {
        entry["id"] = json!(seq);
        let mut key = prefix(link);
        key.extend_from_slice(&seq.to_be_bytes());
        self.tree
            .insert(key, serde_json::to_vec(&entry).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The oldest `limit` dead letters of `link`.
    pub fn list(&self, link: &str, limit: usize) -> Result<Vec<Value>, String> {
        self.tree
            .scan_prefix(prefix(link))
            .take(limit)
            .map(|item| {
                let (_, v) = item.map_err(|e| e.to_string())?;
                serde_json::from_slice(&v).map_err(|e| e.to_string())
            })
            .collect()
    }

    pub fn count(&self, link: &str) -> usize {
        self.tree.scan_prefix(prefix(link)).count()
    }

    /// Drop one dead letter; false if there was none with that id.
    pub fn remove(&self, link: &str, seq: u64) -> Result<bool, String> {
        let mut key = prefix(link);
        key.extend_from_slice(&seq.to_be_bytes());
        Ok(self.tree.remove(key).map_err(|e| e.to_string())?.is_some())
    }

    /// Drop every dead letter of a deleted link.
    pub fn clear(&self, link: &str) -> Result<(), String> {
        for key in self.tree.scan_prefix(prefix(link)).keys() {
            self.tree
                .remove(key.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
