//! Replay with corrected logic (SPEC G7): roll a database back to before a faulty change
//! and replay what clients asked for since, through a corrected transform.
//!
//! The T log holds each committed transaction's client operations (records as sent,
//! keys of deletes). A replay of `(from_serial, to_serial]`:
//! 1. reads those transactions' T entries (cancelled transactions are skipped: they
//!    changed nothing), refusing when the T log no longer reaches back to the point;
//! 2. runs each transaction's operations, as plugin records, through the given
//!    transform (a registry plugin `name@version` with its config), *before changing
//!    anything*: a record the transform rejects refuses the whole replay;
//! 3. restores the database in place to `from_serial` (point-in-time restore,
//!    [`crate::node::restore`]: logged, so replicas follow);
//! 4. applies the transformed operations as new transactions, one per original one, in
//!    their order, through the normal write path (puts as upserts,
//!    [`Database::execute`](crate::node::Database::execute)), so they pass the node's
//!    write gate like a client's write: on a parallel database, their records are
//!    locked on every site ([`crate::node::gate`]).
//!
//! Writes that arrive while it runs are refused during the restore and land after it
//! otherwise; run it while clients are held off, as one would run a repair script.

use std::time::Duration;

use doppel_sdk::abi::{BatchBuilder, Op as RecordOp, OwnedRecord};
use serde::Deserialize;

use crate::log::{LogKind, OpKind, Outcome};
use crate::node::restore::{self, Point, Request, State};
use crate::node::{Error, Node, Result};
use crate::plugins::Registry;
use crate::store::block;
use crate::transport::links::StageSpec;
use crate::transport::logical;
use crate::txn::Op;

/// Log bytes read per step.
const READ_BYTES: usize = 4 << 20;

/// A replay as a client asks for it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Restore to the state right after this serial, then replay what followed.
    pub from_serial: u64,
    /// Replay up to this serial (default: the last one when the replay starts).
    #[serde(default)]
    pub to_serial: Option<u64>,
    /// The corrected transform; without one, the operations replay unchanged.
    #[serde(default)]
    pub transform: Option<StageSpec>,
    /// Answer what would be replayed, changing nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One original transaction's operations, transformed.
struct Replayed {
    txn: u64,
    ops: Vec<Op>,
}

/// The client operations of `(from, to]` from the T log, as plugin records per
/// transaction.
fn client_operations(
    db: &crate::node::Database,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, Vec<OwnedRecord>)>> {
    let schema = db.schema();
    let uid = db.def.uid;
    let mut out = Vec::new();
    let mut after = from;
    let t_pruned = db.log_store().pruned_through(uid, LogKind::T)?;
    while after < to {
        let txns = db
            .log_store()
            .read_txns(uid, after, READ_BYTES, &[LogKind::T])?;
        let Some(first) = txns.first() else {
            return Err(Error::Invalid(format!(
                "the log holds nothing after serial {after}, short of serial {to}"
            )));
        };
        if first.first_serial != after + 1 {
            return Err(Error::Invalid(format!(
                "the log no longer holds serial {} (its oldest retained transaction starts \
                 at {}); replay from a later serial",
                after + 1,
                first.first_serial
            )));
        }
        for txn in txns.iter().take_while(|t| t.first_serial <= to) {
            after = txn.last_serial;
            if txn.outcome == Outcome::Cancelled {
                continue;
            }
            // The A chunks that carry the T log outlive it when the A log is kept
            // longer: what T retention let go of is gone for replay too.
            let has_t =
                txn.first_serial > t_pruned && txn.chunks.iter().any(|c| c.head.holds(LogKind::T));
            let mut records = Vec::new();
            for chunk in txn.chunks.iter().filter(|c| c.head.holds(LogKind::T)) {
                let decoded = crate::log::codec::decode_as(&chunk.bytes, LogKind::T)
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
                for entry in &decoded.entries {
                    let (Some(op), Some(image)) = (entry.op, entry.image) else {
                        continue;
                    };
                    let Some(table) = schema.table_of(entry.header.file) else {
                        continue;
                    };
                    let file = &schema.files[table];
                    let mut r = OwnedRecord {
                        serial: entry.header.serial,
                        timestamp: entry.header.timestamp_us,
                        txn: entry.header.txn,
                        file: file.name.clone(),
                        ..OwnedRecord::default()
                    };
                    if op == OpKind::Delete {
                        r.op = RecordOp::Delete;
                        r.key = String::from_utf8_lossy(image).into_owned();
                    } else {
                        let rec = block::decode(image).ok_or_else(|| {
                            Error::Unavailable(format!(
                                "serial {}: an undecodable T log record",
                                entry.header.serial
                            ))
                        })?;
                        r.op = if op == OpKind::Update {
                            RecordOp::Update
                        } else {
                            RecordOp::Insert
                        };
                        r.key = String::from_utf8_lossy(rec.key).into_owned();
                        r.data = rec.data.to_vec();
                        r.alt = rec
                            .alts()
                            .filter_map(|(i, v)| {
                                let name = file.alt_keys.get(i as usize)?;
                                Some((name.clone(), String::from_utf8_lossy(v).into_owned()))
                            })
                            .collect();
                    }
                    records.push(r);
                }
            }
            if !has_t {
                return Err(Error::Invalid(format!(
                    "transaction {} (serials {}-{}) has no T log left (retention); replay \
                     needs the client operations",
                    txn.txn, txn.first_serial, txn.last_serial
                )));
            }
            if !records.is_empty() {
                out.push((txn.txn, records));
            }
        }
        if txns.last().is_some_and(|t| t.first_serial > to) {
            break;
        }
    }
    Ok(out)
}

/// Run a replay (blocking: it reads the log, restores, and writes).
pub fn replay(
    node: &Node,
    registry: &Registry,
    tenant: &str,
    database: &str,
    req: ReplayRequest,
) -> std::result::Result<Replay, ReplayError> {
    let db = node.database(tenant, database)?;
    if let Some(link) = db.replica_of() {
        return Err(Error::ReadOnlyReplica(format!(
            "database '{database}' is a replica (link {link}); replay on its source"
        ))
        .into());
    }
    let last = db.serials().0;
    let to = req.to_serial.unwrap_or(last);
    if req.from_serial >= to || to > last {
        return Err(Error::Invalid(format!(
            "replay needs from_serial < to_serial <= {last} (the last serial); got {} and {to}",
            req.from_serial
        ))
        .into());
    }
    let original = client_operations(&db, req.from_serial, to)?;
    let mut stages = match &req.transform {
        Some(spec) => Some(logical::stages(
            registry,
            tenant,
            std::slice::from_ref(spec),
        )?),
        None => None,
    };
    if stages.as_ref().is_some_and(|s| !s.rules.is_empty()) {
        return Err(Error::Invalid("the transform must be a transform or a filter".into()).into());
    }
    let schema = db.schema();
    let mut replayed = Vec::with_capacity(original.len());
    let mut operations = 0;
    for (txn, records) in &original {
        let mut batch = BatchBuilder::new();
        for r in records {
            batch.push(r);
        }
        let out = match stages.as_mut() {
            Some(s) => {
                let out = s
                    .chain
                    .run(batch)
                    .map_err(|e| ReplayError::Rejected(e.to_string()))?;
                if let Some(e) = out.errors.first() {
                    let at = e
                        .index
                        .and_then(|i| records.get(i as usize))
                        .map_or(String::new(), |r| {
                            format!(" record '{}' of file '{}':", r.key, r.file)
                        });
                    return Err(ReplayError::Rejected(format!(
                        "stage {} rejects transaction {txn}'s{at} {}",
                        e.plugin, e.message
                    )));
                }
                out.batch
            }
            None => batch,
        };
        let bytes = logical::ops_bytes(&out)?;
        let ops = logical::decode_ops(&schema, &bytes)
            .map_err(|e| ReplayError::Rejected(format!("transaction {txn}: {e}")))?;
        operations += ops.len();
        if !ops.is_empty() {
            replayed.push(Replayed { txn: *txn, ops });
        }
    }
    let mut summary = Replay {
        database: database.to_string(),
        from_serial: req.from_serial,
        to_serial: to,
        transactions: replayed.len(),
        operations,
        transform: req.transform.as_ref().map(|t| t.plugin.clone()),
        dry_run: None,
        restore: None,
        last_serial: None,
    };
    if req.dry_run {
        summary.dry_run = Some(true);
        return Ok(summary);
    }
    // Their locks would hold the replay's writes after the restore, half way.
    let open = db.open_transactions();
    if open > 0 {
        return Err(Error::TransactionsOpen(format!(
            "database '{database}' has {open} open interactive transactions; commit or \
             cancel them, then replay"
        ))
        .into());
    }
    // Back to the point, then forward again through the corrected logic.
    let prepared = restore::prepare(
        node,
        tenant,
        database,
        &Request {
            point: Point::Serial(req.from_serial),
            into: None,
            method: None,
        },
    )?;
    let op = prepared.operation();
    restore::run(node, prepared);
    let view = op.view();
    if view.state != State::Succeeded {
        return Err(Error::Unavailable(format!(
            "the restore to serial {} failed: {}",
            req.from_serial,
            view.error.unwrap_or_default()
        ))
        .into());
    }
    let handle = tokio::runtime::Handle::current();
    let timeout = Duration::from_millis(node.settings.lock_timeout_ms);
    for r in replayed {
        handle.block_on(db.execute(r.ops, timeout)).map_err(|e| {
            Error::Unavailable(format!(
                "replaying transaction {} after the restore: {e}; the database is \
                     restored to serial {} and the transactions before it are replayed",
                r.txn, req.from_serial
            ))
        })?;
    }
    summary.restore = Some(view.id);
    summary.last_serial = Some(db.serials().0);
    Ok(summary)
}

/// A replay's answer: what it replays; a dry run says so, a replay names its restore
/// and the database's last serial after it.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Replay {
    pub database: String,
    pub from_serial: u64,
    pub to_serial: u64,
    /// Transactions replayed (those the transform left something of).
    pub transactions: usize,
    pub operations: usize,
    /// The corrected transform, `name@version` (`null`: none).
    pub transform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// The restore operation that took the database back to `from_serial`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_serial: Option<u64>,
}

/// Why a replay did not happen.
#[derive(Debug)]
pub enum ReplayError {
    Node(Error),
    /// The transform rejects a record: nothing was changed.
    Rejected(String),
}

impl From<Error> for ReplayError {
    fn from(e: Error) -> Self {
        ReplayError::Node(e)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::node::gate::testing::{spec, CountingGate};
    use crate::node::{NodeSettings, DEFAULT_TENANT};
    use crate::plugins::runtime::{Limits, Runtime};
    use crate::store::encode_record;

    /// Replay writes through [`Database::execute`], so the write gate sees every replayed
    /// transaction, and its refusal stops the replay: a replay that wrote around the gate
    /// would skip a parallel database's cross-site locks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replayed_transactions_pass_the_write_gate() {
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(Node::open(dir.path(), NodeSettings::default()).unwrap());
        let registry =
            Arc::new(Registry::open(&node, Runtime::new(Limits::default()).unwrap()).unwrap());
        let gate = CountingGate::new("par");
        node.set_write_gate(gate.clone());
        let db = node.create_database(DEFAULT_TENANT, spec("par")).unwrap();
        let mut serials = Vec::new();
        for key in ["a", "b", "c"] {
            let mut payload = Vec::new();
            encode_record(&mut payload, key.as_bytes(), &[], b"{}");
            let op = Op {
                kind: OpKind::Upsert,
                file: 0,
                payload,
            };
            let done = db.execute(vec![op], Duration::from_secs(1)).await.unwrap();
            serials.push(done.last_serial);
        }
        assert_eq!(gate.locked(), 3);
        let run = |refuse: bool| {
            gate.refuse.store(refuse, Ordering::SeqCst);
            let (node, registry) = (node.clone(), registry.clone());
            let req = ReplayRequest {
                from_serial: serials[0],
                to_serial: None,
                transform: None,
                dry_run: false,
            };
            tokio::task::spawn_blocking(move || {
                replay(&node, &registry, DEFAULT_TENANT, "par", req)
            })
        };
        // The two transactions after the first are replayed, each through the gate.
        run(false).await.unwrap().unwrap();
        assert_eq!((gate.locked(), gate.released()), (5, 5));
        // A gate that refuses stops the replay at its first transaction.
        let err = run(true).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, ReplayError::Node(e) if e.to_string().contains("refused by the test gate")),
            "{err:?}"
        );
        assert_eq!((gate.locked(), gate.released()), (5, 5));
    }
}
