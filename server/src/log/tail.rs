//! The newest transactions of one database's log, kept in memory for its links.
//!
//! A link's sender reads the log right after a commit appended to it. Reading that back
//! from storage (when the log was in sled, a range scan and a page lookup per chunk)
//! cost a third of a synchronous commit's CPU on the source under 64 concurrent
//! clients. The [`Tail`] keeps the chunks of the last few transactions as they were
//! written (shared `IVec`s, not copied), so [`super::LogStore::read_txns`] answers from
//! memory when the tail reaches back far enough, and from the segment files otherwise.
//!
//! The tail is filled only once something reads the log (a database without links pays
//! nothing), holds whole transactions in serial order without a gap (an append that
//! does not follow on empties it first), and is bounded by [`TAIL_BYTES`], dropping the
//! oldest transactions first. What it answers is what the segments would answer: every
//! append goes to the segments first and to the tail after, under the database's writer
//! lock, and a sender reads only serials whose append has returned.

use std::collections::VecDeque;

use super::durable::{add_a_chunk, RawChunk, RawTxn};
use super::LogKind;

/// Chunk bytes one database's tail holds at most.
pub const TAIL_BYTES: usize = 4 << 20;

#[derive(Default)]
pub struct Tail {
    /// Something read the log: keep the newest transactions from now on.
    wanted: bool,
    txns: VecDeque<RawTxn>,
    bytes: usize,
}

fn txn_bytes(txn: &RawTxn) -> usize {
    txn.chunks.iter().map(|c| c.bytes.len()).sum()
}

impl Tail {
    /// Whether appends should be kept.
    pub fn wanted(&self) -> bool {
        self.wanted
    }

    /// Keep the newest transactions from now on (a reader of the log exists).
    pub fn want(&mut self) {
        self.wanted = true;
    }

    /// Forget everything (the log was written around the tail, e.g. by a restore).
    pub fn clear(&mut self) {
        self.txns.clear();
        self.bytes = 0;
    }

    /// The chunks of transactions just appended, in any order (A, B and T chunks of
    /// one or more whole transactions).
    pub fn push(&mut self, chunks: &[RawChunk]) {
        if !self.wanted {
            return;
        }
        for txn in group(chunks) {
            if self
                .txns
                .back()
                .is_some_and(|last| last.last_serial + 1 != txn.first_serial)
            {
                self.clear();
            }
            self.bytes += txn_bytes(&txn);
            self.txns.push_back(txn);
        }
        while self.bytes > TAIL_BYTES && self.txns.len() > 1 {
            let old = self.txns.pop_front().expect("more than one");
            self.bytes -= txn_bytes(&old);
        }
        if self.bytes > TAIL_BYTES {
            // One transaction over the bound: the segments serve it.
            self.clear();
        }
    }

    /// What [`super::LogStore::read_txns`] would answer for `after`, if the tail
    /// reaches back to `after + 1`; `None` sends the reader to the segments.
    pub fn read(&self, after: u64, max_bytes: usize, also: &[LogKind]) -> Option<Vec<RawTxn>> {
        let first = self.txns.front()?.first_serial;
        let last = self.txns.back()?.last_serial;
        if after + 1 < first || after > last {
            return None;
        }
        let start = self.txns.partition_point(|t| t.last_serial <= after);
        let mut out = Vec::new();
        let mut bytes = 0;
        for txn in self.txns.iter().skip(start) {
            if txn.first_serial != after + 1 && out.is_empty() {
                // `after` falls inside a transaction: the segments' answer starts mid-way.
                return None;
            }
            if bytes >= max_bytes {
                break;
            }
            let chunks: Vec<RawChunk> = txn
                .chunks
                .iter()
                .filter(|c| c.head.kind == LogKind::A || also.contains(&c.head.kind))
                .cloned()
                .collect();
            bytes += chunks
                .iter()
                .filter(|c| c.head.kind == LogKind::A)
                .map(|c| c.bytes.len())
                .sum::<usize>();
            out.push(RawTxn {
                chunks,
                ..txn.clone_head()
            });
        }
        Some(out)
    }
}

impl RawTxn {
    fn clone_head(&self) -> RawTxn {
        RawTxn {
            txn: self.txn,
            outcome: self.outcome,
            first_serial: self.first_serial,
            last_serial: self.last_serial,
            last_timestamp_us: self.last_timestamp_us,
            chunks: Vec::new(),
        }
    }
}

/// Whole transactions from their chunks: A chunks in serial order, joined while they
/// continue one transaction, then each transaction's B and T chunks by serial range.
fn group(chunks: &[RawChunk]) -> Vec<RawTxn> {
    let mut a: Vec<&RawChunk> = chunks
        .iter()
        .filter(|c| c.head.kind == LogKind::A)
        .collect();
    a.sort_by_key(|c| c.head.first_serial);
    let mut out: Vec<RawTxn> = Vec::new();
    for c in a {
        add_a_chunk(&mut out, c.clone());
    }
    for kind in [LogKind::B, LogKind::T] {
        let mut of_kind: Vec<&RawChunk> = chunks.iter().filter(|c| c.head.kind == kind).collect();
        of_kind.sort_by_key(|c| c.head.first_serial);
        for c in of_kind {
            if let Some(txn) = out.iter_mut().find(|t| {
                t.first_serial <= c.head.first_serial && c.head.first_serial <= t.last_serial
            }) {
                txn.chunks.push(c.clone());
            }
        }
    }
    out
}
