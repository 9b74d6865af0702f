//! Update logs (SPEC B2): A logs (after images), B logs (before images) and T logs
//! (operations as the client sent them), and their durable home: each database's
//! segment files ([`segments`]) and its snapshot files ([`snapshot_files`], blocks and
//! metadata in one file each).
//!
//! Every store mutation of a committed (or cancelled) transaction becomes one
//! [`Update`] with a serial number per database. A transaction's updates are written as
//! one chunk per log kind, all three in one checksummed segment record, in serial
//! order: the segments then always hold a prefix of the log, never a torn transaction.
//! Replay at restart reads only A chunks; B and T chunks serve inspection, point-in-time
//! restore and replay with corrected logic, each kept for its own retention period
//! (SPEC B4).

pub mod codec;
pub mod durable;
pub(crate) mod segments;
mod sled_migration;
mod snapshot_files;
mod tail;

use serde::{Deserialize, Serialize};

use crate::store::{Effect, FileId, PutMode};

pub use durable::{sled_config, FlushTicket, LogError, LogStore};

/// The three kinds of log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogKind {
    A = 1,
    B = 2,
    T = 3,
}

/// The fields every log entry carries (SPEC B2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub serial: u64,
    pub txn: u64,
    pub effect: Effect,
    pub file: FileId,
    pub block: u32,
    pub offset: u32,
    pub timestamp_us: u64,
    /// True for an update that restores a before image when a transaction is cancelled.
    pub undo: bool,
}

/// What the client asked for (the T log's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    Insert,
    Update,
    Upsert,
    Delete,
}

impl OpKind {
    pub fn put_mode(self) -> Option<PutMode> {
        match self {
            OpKind::Insert => Some(PutMode::Insert),
            OpKind::Update => Some(PutMode::Update),
            OpKind::Upsert => Some(PutMode::Upsert),
            OpKind::Delete => None,
        }
    }
}

/// One update with everything its three log entries need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub header: Header,
    /// The encoded record after the update (puts); None for deletes and reorgs.
    pub after: Option<Vec<u8>>,
    /// The encoded record before the update, if there was one.
    pub before: Option<Vec<u8>>,
    /// The client's operation; its T log payload is the record (puts) or the key
    /// (deletes). None for updates the client did not send (reorgs, undo).
    pub op: Option<OpKind>,
}

/// One decoded log entry of any kind, borrowing its bytes from the stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub header: Header,
    /// A: the after image (puts). B: the before image. T: the client's record or key.
    pub image: Option<&'a [u8]>,
    /// A: the deleted key (deletes). T: the client's operation.
    pub key: Option<&'a [u8]>,
    pub op: Option<OpKind>,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Committed,
    /// Cancelled after some updates were applied: the chunk ends with their undo.
    Cancelled,
}

/// A transaction's updates, to be written as one chunk per log kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnLog {
    pub txn: u64,
    pub outcome: Outcome,
    pub updates: Vec<Update>,
}

impl TxnLog {
    pub fn first_serial(&self) -> Option<u64> {
        self.updates.first().map(|u| u.header.serial)
    }

    pub fn last_serial(&self) -> Option<u64> {
        self.updates.last().map(|u| u.header.serial)
    }

    pub fn last_timestamp_us(&self) -> u64 {
        self.updates.last().map_or(0, |u| u.header.timestamp_us)
    }
}
