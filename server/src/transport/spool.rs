//! The spool of a suspended (detached) replica (SPEC G6): transactions that arrived
//! while it was suspended, stored in sled (tree `spool`) in serial order and applied,
//! in that order, when it is released. A read-only job on the replica meanwhile sees a
//! frozen state, and nothing that arrived is lost if the node restarts.
//!
//! Key: `len(link) u8 | link | first serial u64 BE`; value: the transaction's chunks,
//! `count u32 | (len u32 | bytes)*`.

use crate::log::codec;
use crate::log::durable::RawChunk;
use crate::log::LogKind;

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

fn encode(chunks: &[RawChunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + chunks.iter().map(|c| c.bytes.len() + 4).sum::<usize>());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&(c.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&c.bytes);
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<RawChunk>, String> {
    let bad = || "a spooled transaction is damaged".to_string();
    let count = u32::from_le_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().expect("4")) as usize;
    let mut pos = 4;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = u32::from_le_bytes(
            bytes
                .get(pos..pos + 4)
                .ok_or_else(bad)?
                .try_into()
                .expect("4"),
        ) as usize;
        pos += 4;
        let chunk = bytes.get(pos..pos + len).ok_or_else(bad)?;
        pos += len;
        let head = codec::peek(chunk).map_err(|e| e.to_string())?;
        out.push(RawChunk {
            head,
            bytes: chunk.into(),
        });
    }
    Ok(out)
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
    pub fn last(&self, link: &str) -> Result<Option<u64>, String> {
        match self.tree.scan_prefix(prefix(link)).next_back() {
            Some(item) => {
                let (_, value) = item.map_err(|e| e.to_string())?;
                Ok(last_serial(&decode(&value)?))
            }
            None => Ok(None),
        }
    }

    /// How many transactions wait for `link`.
    pub fn len(&self, link: &str) -> usize {
        self.tree.scan_prefix(prefix(link)).count()
    }

    /// Store one transaction.
    pub fn push(&self, link: &str, first_serial: u64, chunks: &[RawChunk]) -> Result<(), String> {
        let mut key = prefix(link);
        key.extend_from_slice(&first_serial.to_be_bytes());
        self.tree
            .insert(key, encode(chunks))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Hand every spooled transaction of `link` to `apply`, oldest first, removing each
    /// once applied. Returns how many were applied.
    pub fn drain(
        &self,
        link: &str,
        mut apply: impl FnMut(&[RawChunk]) -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut applied = 0;
        for item in self.tree.scan_prefix(prefix(link)) {
            let (key, value) = item.map_err(|e| e.to_string())?;
            apply(&decode(&value)?)?;
            self.tree.remove(key).map_err(|e| e.to_string())?;
            applied += 1;
        }
        Ok(applied)
    }

    /// Forget everything spooled for `link`.
    pub fn clear(&self, link: &str) -> Result<(), String> {
        remove_prefix(&self.tree, &prefix(link))
    }
}

/// Remove every key of `tree` under `prefix`.
pub(crate) fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<(), String> {
    for key in tree.scan_prefix(prefix).keys() {
        tree.remove(key.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
