//! The spool of a suspended (detached) replica (SPEC G6): transactions that arrived
//! while it was suspended, stored in sled (tree `spool`) in serial order and applied,
//! in that order, when it is released. A read-only job on the replica meanwhile sees a
//! frozen state, and nothing that arrived is lost if the node restarts.
//!
//! A transaction keeps the interrelation dependencies it came with (SPEC D3), so on
//! release it still waits for the updates of other databases it depends on.
//!
//! Key: `len(link) u8 | link | first serial u64 BE`; value: the transaction's chunks,
//! `count u32 | (len u32 | bytes)*`, then, if it has dependencies, the replication
//! protocol's `Depends` message that brought them ([`wire`]).

use super::wire::{self, Dependency, FrameWriter, Msg};
use crate::log::codec;
use crate::log::durable::{LogError, RawChunk};
use crate::log::LogKind;

/// One spooled transaction.
pub struct Spooled {
    key: sled::IVec,
    pub chunks: Vec<RawChunk>,
    pub deps: Vec<Dependency>,
}

/// The spool tree of a node.
pub struct Spool {
    tree: sled::Tree,
}

/// `len(link) u8 | link`: the key prefix of one link's entries (spool, dead letters).
pub(crate) fn prefix(link: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(link.len() + 1);
    p.push(link.len().min(255) as u8);
    p.extend_from_slice(link.as_bytes());
    p
}

pub(crate) fn encode(chunks: &[RawChunk], deps: &[Dependency]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + chunks.iter().map(|c| c.bytes.len() + 4).sum::<usize>());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&(c.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&c.bytes);
    }
    if !deps.is_empty() {
        let mut w = FrameWriter::new();
        w.push(&Msg::Depends {
            txn: chunks.first().map_or(0, |c| c.head.txn),
            deps: deps.to_vec(),
        });
        // The message without the frame's length prefix.
        out.extend_from_slice(&w.frame()[4..]);
    }
    out
}

/// Reads a spooled value front to back, checking every length.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        let out = self
            .bytes
            .get(self.pos..self.pos + n)
            .ok_or_else(|| LogError::Damaged("a spooled transaction".into()))?;
        self.pos += n;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(Vec<RawChunk>, Vec<Dependency>), LogError> {
    let mut r = Reader { bytes, pos: 0 };
    let count = r.u32()? as usize;
    let mut chunks = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let chunk = r.take(len)?;
        let head = codec::peek(chunk).map_err(|e| LogError::Damaged(e.to_string()))?;
        chunks.push(RawChunk {
            head,
            bytes: chunk.into(),
        });
    }
    let rest = &bytes[r.pos..];
    if rest.is_empty() {
        return Ok((chunks, Vec::new()));
    }
    match wire::messages(rest).map(|m| m.into_iter().next()) {
        Ok(Some(Msg::Depends { deps, .. })) => Ok((chunks, deps)),
        _ => Err(LogError::Damaged(
            "a spooled transaction's dependencies".into(),
        )),
    }
}

/// The last serial of a transaction's A chunks.
pub fn last_serial(chunks: &[RawChunk]) -> Option<u64> {
    chunks
        .iter()
        .filter(|c| c.head.kind == LogKind::A)
        .map(|c| c.head.last_serial)
        .max()
}

impl Spool {
    pub fn open(tree: sled::Tree) -> Spool {
        Spool { tree }
    }

    /// The last serial spooled for `link`.
    pub fn last(&self, link: &str) -> Result<Option<u64>, LogError> {
        match self.tree.scan_prefix(prefix(link)).next_back() {
            Some(item) => {
                let (_, value) = item?;
                Ok(last_serial(&decode(&value)?.0))
            }
            None => Ok(None),
        }
    }

    /// How many transactions wait for `link`.
    pub fn len(&self, link: &str) -> usize {
        self.tree.scan_prefix(prefix(link)).count()
    }

    /// Store one transaction with the dependencies it came with.
    pub fn push(
        &self,
        link: &str,
        first_serial: u64,
        chunks: &[RawChunk],
        deps: &[Dependency],
    ) -> Result<(), LogError> {
        let mut key = prefix(link);
        key.extend_from_slice(&first_serial.to_be_bytes());
        self.tree.insert(key, encode(chunks, deps))?;
        Ok(())
    }

    /// The oldest transaction spooled for `link`. Remove it with [`Self::remove`] once
    /// it is applied.
    pub fn first(&self, link: &str) -> Result<Option<Spooled>, LogError> {
        let Some(item) = self.tree.scan_prefix(prefix(link)).next() else {
            return Ok(None);
        };
        let (key, value) = item?;
        let (chunks, deps) = decode(&value)?;
        Ok(Some(Spooled { key, chunks, deps }))
    }

    /// Forget one applied transaction.
    pub fn remove(&self, spooled: &Spooled) -> Result<(), LogError> {
        self.tree.remove(&spooled.key)?;
        Ok(())
    }

    /// Put everything spooled so far on disk.
    pub fn flush(&self) -> Result<(), LogError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Forget everything spooled for `link`.
    pub fn clear(&self, link: &str) -> Result<(), LogError> {
        remove_prefix(&self.tree, &prefix(link))
    }
}

/// Remove every key of `tree` under `prefix`.
pub(crate) fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<(), LogError> {
    for key in tree.scan_prefix(prefix).keys() {
        tree.remove(key?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Header, Outcome, TxnLog, Update};
    use crate::store::Effect;

    fn chunks(txn: u64, serial: u64) -> Vec<RawChunk> {
        let log = TxnLog {
            txn,
            outcome: Outcome::Committed,
            updates: vec![Update {
                header: Header {
                    txn,
                    serial,
                    effect: Effect::Insert,
                    file: 0,
                    block: 0,
                    offset: 0,
                    timestamp_us: 7,
                    undo: false,
                },
                after: Some(b"after".to_vec()),
                before: None,
                op: None,
            }],
        };
        codec::encode(&log, LogKind::A)
            .into_iter()
            .map(|(_, bytes)| RawChunk {
                head: codec::peek(&bytes).unwrap(),
                bytes: bytes.into(),
            })
            .collect()
    }

    #[test]
    fn a_spooled_transaction_keeps_its_dependencies_and_comes_back_oldest_first() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let spool = Spool::open(db.open_tree("spool").unwrap());
        let deps = vec![Dependency {
            database: "orders".into(),
            serial: 41,
            before_us: 1_000,
        }];
        spool.push("l", 5, &chunks(2, 5), &[]).unwrap();
        spool.push("l", 6, &chunks(3, 6), &deps).unwrap();
        spool.push("other", 1, &chunks(9, 1), &[]).unwrap();
        assert_eq!(spool.last("l").unwrap(), Some(6));
        let first = spool.first("l").unwrap().unwrap();
        assert_eq!((first.chunks[0].head.txn, first.deps.len()), (2, 0));
        spool.remove(&first).unwrap();
        let second = spool.first("l").unwrap().unwrap();
        assert_eq!(second.chunks[0].head.txn, 3);
        assert_eq!(second.deps, deps);
        spool.remove(&second).unwrap();
        assert!(spool.first("l").unwrap().is_none());
        assert_eq!(spool.len("other"), 1);
    }

    #[test]
    fn a_damaged_dependency_list_is_an_error_not_a_panic() {
        let mut bytes = encode(
            &chunks(2, 5),
            &[Dependency {
                database: "orders".into(),
                serial: 1,
                before_us: 2,
            }],
        );
        bytes.truncate(bytes.len() - 3);
        assert!(decode(&bytes).is_err());
    }
}
