//! Mutual links (SPEC F4): two or more sites each take writes to the same database,
//! each site linked to every other both ways, every link carrying `conflicts`.
//!
//! * **Loop prevention.** A mutual link ships only the writes made on its own node (the
//!   record's version names its origin, `node::versions`); what a site applied from
//!   another site is not sent on. So an update never returns to its origin, and the
//!   sites form a full mesh (the topology validation asks for it). Every source
//!   transaction still ships, possibly empty, so stream positions never skip.
//! * **Detection.** Each shipped record travels with its version and the version it
//!   replaced ([`wire::Msg::Versions`]). The target applies a write that follows the
//!   version it holds; one made on another version is concurrent with it: a conflict.
//! * **Resolution**, the same at every site, per the link's [`ConflictSpec`]:
//!   last writer wins by (hybrid logical clock, node id), site priority, or a resolver
//!   plugin (winner or merge). A resolver that fails on a pair falls back to last
//!   writer wins, and the conflict log says so.
//! * **The conflict log** (sled tree `conflicts`): the count per database and the last
//!   [`KEEP`] conflicts with both versions and the decision.

use std::collections::HashMap;

use serde_json::Value;

use doppel_sdk::abi::{BatchBuilder, OwnedRecord, Record};

use super::links::{ConflictSpec, ReplicaRequest, Strategy};
use super::logical;
use super::{wire, Replication};
use crate::log::durable::{LogError, RawTxn};
use crate::log::{codec, LogKind};
use crate::node::database::{Conflict, ConflictSeen, Decision, MutualWrite};
use crate::node::versions::{self, Stamp};
use crate::node::{Database, Error};
type Result<T, E = Error> = std::result::Result<T, E>;
use crate::plugins::{Registry, Resolution, Role, Stage};
use crate::store::{block, Schema};

/// Conflicts kept per database.
pub const KEEP: u64 = 1000;

/// What a mutual replica link brought since the node started.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, schemars::JsonSchema)]
pub struct Counts {
    /// Writes received.
    pub writes: u64,
    /// Of those, concurrent with the version held here.
    pub conflicts: u64,
    /// Of the streamed ones, written on this very node: an update come back to its
    /// origin (loop prevention keeps this at 0). A bootstrap's records, which include
    /// this node's writes the source holds, are not counted.
    pub returned: u64,
}

/// Refuse a mutual link that cannot work, on its source.
pub fn check_link(
    repl: &Replication,
    tenant: &str,
    spec: &super::links::LinkSpec,
    db: Option<&Database>,
    conflicts: &ConflictSpec,
) -> Result<()> {
    if spec.options.apply != super::links::Apply::Logical {
        return Err(Error::Invalid(
            "a mutual link (with \"conflicts\") applies by key: give \"apply\": \"logical\"".into(),
        ));
    }
    let stages = logical::stages(&repl.plugins, tenant, &spec.options.stages)?;
    if stages
        .chain
        .stages
        .iter()
        .any(|s| s.role() == Role::Transform)
    {
        return Err(Error::Invalid(
            "a mutual link keeps the sites identical, so it takes filters but no transforms".into(),
        ));
    }
    if let Some(db) = db.filter(|db| !db.def.spec.mutual) {
        return Err(Error::Invalid(format!(
            "database '{}' keeps no record versions: a mutual link needs databases created \
             with \"mutual\": true on every site",
            db.name()
        )));
    }
    Resolver::load(&repl.plugins, tenant, conflicts)?;
    Ok(())
}

/// Refuse a registration that would mix mutual and other writers, on the target.
pub fn check_target(db: &Database, req: &ReplicaRequest) -> Option<Error> {
    let mutual = req.conflicts.is_some();
    if mutual && !db.def.spec.mutual {
        return Some(Error::Invalid(format!(
            "database '{}' keeps no record versions: a mutual link needs databases created \
             with \"mutual\": true on every site",
            req.database
        )));
    }
    if !mutual && db.def.spec.mutual && req.apply == super::links::Apply::Logical {
        return Some(Error::Invalid(format!(
            "database '{}' is mutual: a logical link into it must be mutual too (give \
             \"conflicts\")",
            req.database
        )));
    }
    None
}

/// How a target decides conflicts.
pub struct Resolver {
    spec: ConflictSpec,
    /// Origins, highest priority first.
    priority: Vec<u64>,
    plugin: Option<Stage>,
}

impl Resolver {
    pub fn load(registry: &Registry, tenant: &str, spec: &ConflictSpec) -> Result<Self> {
        let plugin = match (spec.strategy, &spec.resolver) {
            (Strategy::Resolver, Some(stage)) => {
                let loaded = logical::load_stage(registry, tenant, stage, "conflicts.resolver")?;
                if loaded.role() != Role::Resolver {
                    return Err(Error::Invalid(format!(
                        "conflicts.resolver ({}): a {} is not a resolver",
                        stage.plugin,
                        loaded.role()
                    )));
                }
                Some(loaded)
            }
            (Strategy::Resolver, None) => {
                return Err(Error::Invalid(
                    "conflicts: the resolver strategy needs \"resolver\": {\"plugin\": \"name@version\"}"
                        .into(),
                ))
            }
            (_, Some(_)) => {
                return Err(Error::Invalid(
                    "conflicts.resolver is used by the resolver strategy only".into(),
                ))
            }
            (Strategy::Priority, None) if spec.priority.is_empty() => {
                return Err(Error::Invalid(
                    "conflicts: the priority strategy needs \"priority\": [node ids, highest first]"
                        .into(),
                ))
            }
            _ => None,
        };
        Ok(Resolver {
            priority: spec
                .priority
                .iter()
                .map(|n| versions::origin_of(n))
                .collect(),
            spec: spec.clone(),
            plugin,
        })
    }

    pub fn strategy(&self) -> Strategy {
        self.spec.strategy
    }

    /// Decide a conflict, with a note when the plan could not be followed.
    pub fn decide(&mut self, c: &Conflict<'_>) -> (Decision, Option<String>) {
        let lww = if c.remote.stamp.version() > c.local.version() {
            Decision::Remote
        } else {
            Decision::Local
        };
        match self.spec.strategy {
            Strategy::Lww => (lww, None),
            Strategy::Priority => {
                let rank = |o: u64| {
                    self.priority
                        .iter()
                        .position(|p| *p == o)
                        .unwrap_or(self.priority.len())
                };
                let (local, remote) = (rank(c.local.o), rank(c.remote.stamp.o));
                let decision = match remote.cmp(&local) {
                    std::cmp::Ordering::Less => Decision::Remote,
                    std::cmp::Ordering::Greater => Decision::Local,
                    std::cmp::Ordering::Equal => lww,
                };
                (decision, None)
            }
            Strategy::Resolver => match self.resolve(c) {
                Ok(d) => (d, None),
                Err(e) => (
                    lww,
                    Some(format!("the resolver failed ({e}); last writer wins")),
                ),
            },
        }
    }

    fn resolve(&mut self, c: &Conflict<'_>) -> Result<Decision, String> {
        let stage = self.plugin.as_mut().ok_or("no resolver loaded")?;
        let side = |stamp: &Stamp, data: Option<&[u8]>| {
            let mut r = OwnedRecord::new(
                if data.is_some() {
                    doppel_sdk::abi::Op::Update
                } else {
                    doppel_sdk::abi::Op::Delete
                },
                c.file,
                &String::from_utf8_lossy(c.key),
                "",
            );
            r.data = data.map(<[u8]>::to_vec).unwrap_or_default();
            r.timestamp = stamp.t;
            r.origin = stamp.o;
            r
        };
        let remote_data =
            (c.remote.op.kind != crate::log::OpKind::Delete).then_some(&c.remote.data[..]);
        // The base: the record as the remote write found it where it was made (its
        // before image); none known is a delete at time 0 by origin 0, per the contract.
        let base_stamp = Stamp {
            t: c.remote.stamp.bt,
            o: c.remote.stamp.bo,
            ..Stamp::default()
        };
        let base_record = match &c.remote.base_data {
            Some(data) => side(&base_stamp, Some(data)),
            None => doppel_sdk::abi::no_base(c.file, &String::from_utf8_lossy(c.key)),
        };
        let batch = |r: &OwnedRecord| {
            let mut b = BatchBuilder::new();
            b.push(r);
            b
        };
        let (local, remote, base) = (
            batch(&side(&c.local, c.local_data)),
            batch(&side(&c.remote.stamp, remote_data)),
            batch(&base_record),
        );
        let out = stage
            .resolve(local.as_batch(), remote.as_batch(), base.as_batch())
            .map_err(|e| e.to_string())?;
        if let Some(e) = out.errors.first() {
            return Err(e.message.clone());
        }
        Ok(match out.decisions.into_iter().next() {
            Some(Resolution::Remote) => Decision::Remote,
            Some(Resolution::Merged(data)) => Decision::Merged(data),
            _ => Decision::Local,
        })
    }
}

/// The records a mutual link ships out of one source transaction: those written on
/// this node, each with its version as timestamp and origin and its before image, and
/// their stamps by serial. What this node applied from other sites stays here.
/// `local` is this node's origin (`Replication::origin`).
pub fn outgoing(
    schema: &Schema,
    txn: &RawTxn,
    records: Vec<OwnedRecord>,
    local: u64,
) -> Result<(Vec<OwnedRecord>, HashMap<u64, Stamp>)> {
    let mut stamps: HashMap<u64, Stamp> = HashMap::new();
    let mut befores: HashMap<u64, Vec<u8>> = HashMap::new();
    let Some(versions_id) = versions::versions_id(schema) else {
        return Err(Error::Malformed(
            "the source database keeps no record versions".into(),
        ));
    };
    // Each write is followed by its version's (maybe in the next chunk of a large
    // transaction): pair them by record.
    let mut pending: HashMap<(u32, Vec<u8>), u64> = HashMap::new();
    for chunk in &txn.chunks {
        let decoded = codec::decode(&chunk.bytes)
            .map_err(|e| Error::Log(LogError::Damaged(e.to_string())))?;
        match chunk.head.kind {
            LogKind::A => {
                for e in &decoded.entries {
                    let h = e.header;
                    if h.undo || h.effect == crate::store::Effect::Reorg {
                        continue;
                    }
                    let key = match (e.image.and_then(block::decode), e.key) {
                        (Some(r), _) => r.key.to_vec(),
                        (None, Some(k)) => k.to_vec(),
                        (None, None) => continue,
                    };
                    if h.file == versions_id {
                        let (Some(r), Some((file, k))) = (
                            e.image.and_then(block::decode),
                            versions::split_entry_key(&key),
                        ) else {
                            continue;
                        };
                        let Some(table) = schema.file_index(file) else {
                            continue;
                        };
                        if let (Some(serial), Some(stamp)) = (
                            pending.remove(&(schema.main_id(table), k.to_vec())),
                            Stamp::decode(r.data),
                        ) {
                            stamps.insert(serial, stamp);
                        }
                    } else if schema.table_of(h.file).is_some() {
                        pending.insert((h.file, key), h.serial);
                    }
                }
            }
            LogKind::B => {
                for e in &decoded.entries {
                    if let Some(r) = e.image.and_then(block::decode) {
                        befores.insert(e.header.serial, r.data.to_vec());
                    }
                }
            }
            LogKind::T => {}
        }
    }
    let mut out = Vec::with_capacity(records.len());
    for mut r in records {
        let stamp = stamps.get(&r.serial).ok_or_else(|| {
            Error::Malformed(format!(
                "record '{}' of serial {} has no version",
                r.key, r.serial
            ))
        })?;
        if stamp.o != local {
            continue;
        }
        r.timestamp = stamp.t;
        r.origin = stamp.o;
        r.before = befores.remove(&r.serial);
        out.push(r);
    }
    stamps.retain(|_, s| s.o == local);
    Ok((out, stamps))
}

/// The stamps of the records a batch of shipped operations holds, in wire form.
pub fn stamps_for(ops: &[u8], stamps: &HashMap<u64, Stamp>) -> Result<Vec<(u64, Stamp)>> {
    let mut out = Vec::new();
    logical::for_each_record(ops, |r| {
        let stamp = stamps.get(&r.serial).ok_or_else(|| {
            Error::Malformed(format!("record '{}': a stage changed its serial", r.key))
        })?;
        out.push((r.serial, *stamp));
        Ok(())
    })?;
    Ok(out)
}

/// The writes a mutual transaction brings, resolved against this database's schema.
pub fn incoming(schema: &Schema, ops: &[u8], stamps: &[(u64, Stamp)]) -> Result<Vec<MutualWrite>> {
    let by_serial: HashMap<u64, Stamp> = stamps.iter().copied().collect();
    let mut out = Vec::new();
    logical::for_each_record(ops, |r: Record<'_>| {
        let (table, op) = logical::decode_op(schema, &r)?;
        let stamp = *by_serial.get(&r.serial).ok_or_else(|| {
            Error::Malformed(format!("record '{}' came without its version", r.key))
        })?;
        out.push(MutualWrite {
            op,
            table,
            key: r.key.as_bytes().to_vec(),
            data: r.data.to_vec(),
            stamp,
            base_data: r.before.map(<[u8]>::to_vec),
        });
        Ok(())
    })?;
    Ok(out)
}

/// A conflict a mutual link met, as it is stored and as `GET …/conflicts` lists it.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ConflictEntry {
    /// Its number in the database's conflicts (1, 2, …).
    pub id: u64,
    /// When it was met, ms since the Unix epoch.
    pub at_ms: u64,
    /// The mutual link whose update met it.
    pub link: String,
    pub file: String,
    pub key: String,
    pub strategy: Strategy,
    pub decision: ConflictDecision,
    /// This node's version.
    pub local: ConflictSide,
    /// The version the link brought.
    pub remote: ConflictSide,
    /// The data a resolver merged the two into (`decision` `merged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<Value>,
    /// What else happened (a resolver that failed, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Which version a conflict kept.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConflictDecision {
    Local,
    Remote,
    Merged,
}

/// One side of a conflict.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ConflictSide {
    /// Its version's hybrid timestamp.
    pub timestamp_us: u64,
    /// The origin that wrote it.
    pub origin: u64,
    /// The node id of that origin, where known.
    pub node: Option<String>,
    /// It is a delete.
    pub deleted: bool,
    /// Its data (JSON, or its bytes as text); `null` for a delete.
    pub data: Value,
}

/// Conflicts per database (sled tree `conflicts`): key `uid u64 BE | seq u64 BE`, value
/// JSON; the count under `uid | u64::MAX`.
pub struct ConflictLog {
    tree: sled::Tree,
}

fn key(uid: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&uid.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn data_json(data: Option<&[u8]>) -> Value {
    match data {
        None => Value::Null,
        Some(d) => serde_json::from_slice(d)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(d).into_owned())),
    }
}

impl ConflictLog {
    pub fn open(tree: sled::Tree) -> ConflictLog {
        ConflictLog { tree }
    }

    /// How many conflicts database `uid` has met.
    pub fn count(&self, uid: u64) -> u64 {
        self.tree
            .get(key(uid, u64::MAX))
            .ok()
            .flatten()
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
    }

    /// Keep the conflicts one transaction met, durably (a blocking flush when there
    /// were any); `names` turns an origin into a node id where known.
    pub fn record(
        &self,
        uid: u64,
        link: &str,
        strategy: Strategy,
        seen: &[(ConflictSeen, Option<String>)],
        names: &dyn Fn(u64) -> Option<String>,
    ) -> Result<(), LogError> {
        if seen.is_empty() {
            return Ok(());
        }
        let at_ms = crate::txn::clock::wall_ms();
        let mut seq = self.count(uid);
        let side = |stamp: &Stamp, data: Option<&[u8]>| ConflictSide {
            timestamp_us: stamp.t,
            origin: stamp.o,
            node: names(stamp.o),
            deleted: data.is_none(),
            data: data_json(data),
        };
        let mut batch = sled::Batch::default();
        for (c, note) in seen {
            seq += 1;
            let (decision, merged) = match &c.decision {
                Decision::Local => (ConflictDecision::Local, None),
                Decision::Remote => (ConflictDecision::Remote, None),
                Decision::Merged(d) => (ConflictDecision::Merged, Some(data_json(Some(d)))),
            };
            let entry = ConflictEntry {
                id: seq,
                at_ms,
                link: link.to_string(),
                file: c.file.clone(),
                key: String::from_utf8_lossy(&c.key).into_owned(),
                strategy,
                decision,
                local: side(&c.local, c.local_data.as_deref()),
                remote: side(&c.remote, c.remote_data.as_deref()),
                merged,
                note: note.clone(),
            };
            batch.insert(
                &key(uid, seq)[..],
                serde_json::to_vec(&entry).expect("a conflict serialises"),
            );
            if seq > KEEP {
                batch.remove(&key(uid, seq - KEEP)[..]);
            }
        }
        batch.insert(&key(uid, u64::MAX)[..], &seq.to_be_bytes()[..]);
        self.tree.apply_batch(batch)?;
        // The tree is in the node's own sled instance, not the database's log shard,
        // whose flush makes the apply durable: flush it before the apply is confirmed,
        // or a kill -9 after the confirmation could lose the record.
        self.tree.flush()?;
        Ok(())
    }

    /// The newest `limit` conflicts of database `uid`, newest first.
    pub fn list(&self, uid: u64, limit: usize) -> Result<Vec<ConflictEntry>, LogError> {
        self.tree
            .range(key(uid, 0)..key(uid, u64::MAX))
            .rev()
            .take(limit)
            .map(|item| {
                serde_json::from_slice(&item?.1)
                    .map_err(|e| LogError::Damaged(format!("a conflict log entry: {e}")))
            })
            .collect()
    }

    /// Forget a deleted database's conflicts.
    pub fn clear(&self, uid: u64) -> Result<(), LogError> {
        for item in self.tree.range(key(uid, 0)..=key(uid, u64::MAX)) {
            self.tree.remove(item?.0)?;
        }
        Ok(())
    }
}

/// The Versions message a mutual link sends before `ops`.
pub fn versions_msg(
    txn: u64,
    ops: &[u8],
    stamps: &HashMap<u64, Stamp>,
) -> Result<wire::Msg<'static>> {
    Ok(wire::Msg::Versions {
        txn,
        stamps: stamps_for(ops, stamps)?,
    })
}
