//! The byte format of a log chunk: one transaction's entries of one log kind.
//!
//! ```text
//! last_timestamp_us u64 BE   first, so retention reads it without decoding the rest
//! version u8 | kind u8 | txn u64 | outcome u8 | first_serial u64 | last_serial u64
//! version 2 only: t u8 (1: some entry carries its client operation)
//! count u32, then per entry:
//!   serial u64 | effect u8 | file u32 | block u32 | offset u32 | timestamp_us u64 | undo u8
//!   A, version 2: op u8 (0: none, 1 + the operation) | after (opt bytes) | key (opt bytes)
//!   A, version 1: after (opt bytes) | key (opt bytes)
//!   B: before (bytes)
//!   T (version 1 only): op u8 | payload (bytes)
//! bytes = len u32 | bytes; opt bytes = 0 | 1 bytes.   Integers LE unless marked.
//! ```
//!
//! The T log is folded into the A log: a T entry's payload is the after image (puts) or
//! the deleted key, which the A entry holds already, so an A chunk of version 2 carries
//! each entry's client operation and *is* the T chunk of its transaction
//! ([`decode_as`] reads it either way; the segments index it under both kinds). That
//! keeps one copy of every record on disk and on a mirror's wire instead of two
//! (docs/BENCHMARKS.md, issue 24). Chunks of version 1 (A without operations, and
//! separate T chunks), as earlier builds wrote them, still decode.
//!
//! Decoding checks every length and returns borrowed entries: replay allocates nothing
//! per entry.

use super::{EntryRef, Header, LogKind, OpKind, Outcome, TxnLog, Update};
use crate::store::Effect;

/// B chunks, and the A and T chunks earlier builds wrote.
const VERSION_1: u8 = 1;
/// A chunks that carry each entry's client operation (the T log).
const VERSION_2: u8 = 2;

/// Largest encoded chunk, so sled keeps every chunk inline in its log rather than as a
/// separate blob file (a file per value made writes 40% slower).
pub const MAX_CHUNK_BYTES: usize = 48 * 1024;

/// Encode the entries of `kind` for `txn` as chunks of at most [`MAX_CHUNK_BYTES`]
/// (a single larger entry gets a chunk of its own). Returns each chunk with the serial
/// of its first entry; empty if the kind has no entries. The log writes A and B chunks
/// only (A carries the T log); `LogKind::T` gives the separate T chunks of version 1
/// that earlier builds wrote, for tests and fuzz seeds of those logs.
pub fn encode(txn: &TxnLog, kind: LogKind) -> Vec<(u64, Vec<u8>)> {
    let version = if kind == LogKind::A {
        VERSION_2
    } else {
        VERSION_1
    };
    encode_version(txn, kind, version)
}

/// [`encode`] or [`encode_v1`], for tests and seeds that write either.
pub type Encoder = fn(&TxnLog, LogKind) -> Vec<(u64, Vec<u8>)>;

/// [`encode`] as builds before the T log was folded into the A log wrote chunks (A
/// without operations): for tests and fuzz seeds of logs those builds left.
pub fn encode_v1(txn: &TxnLog, kind: LogKind) -> Vec<(u64, Vec<u8>)> {
    encode_version(txn, kind, VERSION_1)
}

fn encode_version(txn: &TxnLog, kind: LogKind, version: u8) -> Vec<(u64, Vec<u8>)> {
    let chosen = txn.updates.iter().filter(|u| match kind {
        LogKind::A => true,
        LogKind::B => u.before.is_some(),
        LogKind::T => u.op.is_some(),
    });
    let mut chunks = Vec::new();
    let mut piece: Vec<&Update> = Vec::new();
    let mut piece_bytes = 0;
    for update in chosen {
        let size = 48
            + update.after.as_ref().map_or(0, Vec::len)
            + update.before.as_ref().map_or(0, Vec::len);
        if !piece.is_empty() && piece_bytes + size > MAX_CHUNK_BYTES {
            chunks.push(encode_piece(txn, kind, version, &piece));
            piece.clear();
            piece_bytes = 0;
        }
        piece.push(update);
        piece_bytes += size;
    }
    if !piece.is_empty() {
        chunks.push(encode_piece(txn, kind, version, &piece));
    }
    chunks
}

fn encode_piece(txn: &TxnLog, kind: LogKind, version: u8, chosen: &[&Update]) -> (u64, Vec<u8>) {
    let first = chosen.first().map_or(0, |u| u.header.serial);
    let last = chosen.last().map_or(0, |u| u.header.serial);
    let last_ts = chosen.last().map_or(0, |u| u.header.timestamp_us);
    let payload: usize = chosen
        .iter()
        .map(|u| 40 + u.after.as_ref().map_or(0, Vec::len) + u.before.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(64 + payload);
    out.extend_from_slice(&last_ts.to_be_bytes());
    out.push(version);
    out.push(kind as u8);
    out.extend_from_slice(&txn.txn.to_le_bytes());
    out.push(match txn.outcome {
        Outcome::Committed => 0,
        Outcome::Cancelled => 1,
    });
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    if version == VERSION_2 {
        out.push(chosen.iter().any(|u| u.op.is_some()) as u8);
    }
    out.extend_from_slice(&(chosen.len() as u32).to_le_bytes());
    for update in chosen {
        put_header(&mut out, &update.header);
        let deleted_key = match (update.header.effect, &update.before) {
            (Effect::Delete, Some(before)) => crate::store::block::decode(before).map(|r| r.key),
            _ => None,
        };
        match kind {
            LogKind::A => {
                if version == VERSION_2 {
                    out.push(update.op.map_or(0, |op| 1 + op_code(op)));
                }
                put_opt(&mut out, update.after.as_deref());
                put_opt(&mut out, deleted_key);
            }
            LogKind::B => put_bytes(&mut out, update.before.as_deref().unwrap_or_default()),
            LogKind::T => {
                out.push(op_code(update.op.expect("filtered on op")));
                put_bytes(
                    &mut out,
                    update.after.as_deref().or(deleted_key).unwrap_or_default(),
                );
            }
        }
    }
    (first, out)
}

fn put_header(out: &mut Vec<u8>, h: &Header) {
    out.extend_from_slice(&h.serial.to_le_bytes());
    out.push(effect_code(h.effect));
    out.extend_from_slice(&h.file.to_le_bytes());
    out.extend_from_slice(&h.block.to_le_bytes());
    out.extend_from_slice(&h.offset.to_le_bytes());
    out.extend_from_slice(&h.timestamp_us.to_le_bytes());
    out.push(h.undo as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
        None => out.push(0),
    }
}

fn op_code(op: OpKind) -> u8 {
    match op {
        OpKind::Insert => 0,
        OpKind::Update => 1,
        OpKind::Upsert => 2,
        OpKind::Delete => 3,
    }
}

fn op_of(code: u8) -> Option<OpKind> {
    match code {
        0 => Some(OpKind::Insert),
        1 => Some(OpKind::Update),
        2 => Some(OpKind::Upsert),
        3 => Some(OpKind::Delete),
        _ => None,
    }
}

fn effect_code(effect: Effect) -> u8 {
    match effect {
        Effect::Insert => 0,
        Effect::Update => 1,
        Effect::Delete => 2,
        Effect::Reorg => 3,
    }
}

/// A decoded chunk whose entries borrow from its bytes.
#[derive(Debug, Clone)]
pub struct ChunkRef<'a> {
    pub kind: LogKind,
    pub txn: u64,
    pub outcome: Outcome,
    pub first_serial: u64,
    pub last_serial: u64,
    pub last_timestamp_us: u64,
    pub entries: Vec<EntryRef<'a>>,
}

/// Why a chunk could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log chunk is malformed at byte {0}")]
pub struct CodecError(pub usize);

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(len).ok_or(CodecError(self.pos))?;
        let out = self.bytes.get(self.pos..end).ok_or(CodecError(self.pos))?;
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn opt(&mut self) -> Result<Option<&'a [u8]>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(CodecError(self.pos - 1)),
        }
    }
    /// The fixed fields at the front of a chunk.
    fn head(&mut self) -> Result<ChunkHead, CodecError> {
        let last_timestamp_us = u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
        let version = self.u8()?;
        let kind = match (version, self.u8()?) {
            (VERSION_1 | VERSION_2, 1) => LogKind::A,
            (VERSION_1, 2) => LogKind::B,
            (VERSION_1, 3) => LogKind::T,
            (VERSION_1 | VERSION_2, _) => return Err(CodecError(9)),
            _ => return Err(CodecError(8)),
        };
        let txn = self.u64()?;
        let outcome = match self.u8()? {
            0 => Outcome::Committed,
            1 => Outcome::Cancelled,
            _ => return Err(CodecError(18)),
        };
        let first_serial = self.u64()?;
        let last_serial = self.u64()?;
        let carries_t = match version {
            VERSION_2 => match self.u8()? {
                0 => false,
                1 => true,
                _ => return Err(CodecError(self.pos - 1)),
            },
            _ => false,
        };
        Ok(ChunkHead {
            kind,
            version,
            txn,
            outcome,
            first_serial,
            last_serial,
            last_timestamp_us,
            carries_t,
        })
    }

    fn header(&mut self, txn: u64) -> Result<Header, CodecError> {
        let serial = self.u64()?;
        let at = self.pos;
        let effect = match self.u8()? {
            0 => Effect::Insert,
            1 => Effect::Update,
            2 => Effect::Delete,
            3 => Effect::Reorg,
            _ => return Err(CodecError(at)),
        };
        Ok(Header {
            serial,
            txn,
            effect,
            file: self.u32()?,
            block: self.u32()?,
            offset: self.u32()?,
            timestamp_us: self.u64()?,
            undo: self.u8()? != 0,
        })
    }
}

/// Decode a chunk.
pub fn decode(bytes: &[u8]) -> Result<ChunkRef<'_>, CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let ChunkHead {
        kind,
        version,
        txn,
        outcome,
        first_serial,
        last_serial,
        last_timestamp_us,
        ..
    } = r.head()?;
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(bytes.len() / 30));
    for _ in 0..count {
        let header = r.header(txn)?;
        let entry = match kind {
            LogKind::A => {
                let op = match version {
                    VERSION_2 => {
                        let at = r.pos;
                        match r.u8()? {
                            0 => None,
                            code => Some(op_of(code - 1).ok_or(CodecError(at))?),
                        }
                    }
                    _ => None,
                };
                let image = r.opt()?;
                let key = r.opt()?;
                EntryRef {
                    header,
                    image,
                    key,
                    op,
                }
            }
            LogKind::B => EntryRef {
                header,
                image: Some(r.bytes()?),
                key: None,
                op: None,
            },
            LogKind::T => {
                let at = r.pos;
                let op = op_of(r.u8()?).ok_or(CodecError(at))?;
                EntryRef {
                    header,
                    image: Some(r.bytes()?),
                    key: None,
                    op: Some(op),
                }
            }
        };
        entries.push(entry);
    }
    if r.pos != bytes.len() {
        return Err(CodecError(r.pos));
    }
    Ok(ChunkRef {
        kind,
        txn,
        outcome,
        first_serial,
        last_serial,
        last_timestamp_us,
        entries,
    })
}

/// Decode a chunk as a chunk of `kind`: itself, or for `LogKind::T` an A chunk that
/// carries the T log (version 2), read as the T chunk it stands for: its entries with a
/// client operation, each with the record (puts) or the key (deletes) as its payload.
pub fn decode_as(bytes: &[u8], kind: LogKind) -> Result<ChunkRef<'_>, CodecError> {
    let mut chunk = decode(bytes)?;
    if chunk.kind == kind {
        return Ok(chunk);
    }
    if kind != LogKind::T || chunk.kind != LogKind::A || !peek(bytes)?.carries_t {
        return Err(CodecError(9));
    }
    chunk.kind = LogKind::T;
    chunk.entries.retain(|e| e.op.is_some());
    for e in &mut chunk.entries {
        e.image = e.image.or(e.key);
        e.key = None;
    }
    Ok(chunk)
}

/// The fixed fields at the front of an encoded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHead {
    pub kind: LogKind,
    /// The format's version (see the module doc).
    pub version: u8,
    pub txn: u64,
    pub outcome: Outcome,
    pub first_serial: u64,
    pub last_serial: u64,
    pub last_timestamp_us: u64,
    /// An A chunk that is also its transaction's T chunk.
    pub carries_t: bool,
}

impl ChunkHead {
    /// Whether the chunk holds entries of `kind`'s log.
    pub fn holds(&self, kind: LogKind) -> bool {
        self.kind == kind || (kind == LogKind::T && self.carries_t)
    }
}

/// Read a chunk's fixed fields without decoding its entries (replication forwards the
/// chunk bytes as they are).
pub fn peek(bytes: &[u8]) -> Result<ChunkHead, CodecError> {
    Reader { bytes, pos: 0 }.head()
}

/// The last timestamp of an encoded chunk, read from its first bytes.
pub fn last_timestamp_us(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(
        serial: u64,
        effect: Effect,
        after: Option<&[u8]>,
        before: Option<&[u8]>,
        op: Option<OpKind>,
    ) -> Update {
        Update {
            header: Header {
                serial,
                txn: 7,
                effect,
                file: 2,
                block: 5,
                offset: 4000,
                timestamp_us: 1_000 + serial,
                undo: false,
            },
            after: after.map(<[u8]>::to_vec),
            before: before.map(<[u8]>::to_vec),
            op,
        }
    }

    /// An insert, a delete of record `k` and a reorganisation, serials 10-12.
    fn mixed_txn() -> TxnLog {
        let mut rec = Vec::new();
        crate::store::encode_record(&mut rec, b"k", &[], b"old");
        TxnLog {
            txn: 7,
            outcome: Outcome::Committed,
            updates: vec![
                update(10, Effect::Insert, Some(b"new"), None, Some(OpKind::Insert)),
                update(11, Effect::Delete, None, Some(&rec), Some(OpKind::Delete)),
                update(12, Effect::Reorg, None, None, None),
            ],
        }
    }

    #[test]
    fn round_trips_each_kind() {
        let txn = mixed_txn();
        let a = encode(&txn, LogKind::A).pop().unwrap().1;
        let chunk = decode(&a).unwrap();
        assert_eq!(
            (chunk.first_serial, chunk.last_serial, chunk.entries.len()),
            (10, 12, 3)
        );
        assert_eq!(chunk.entries[0].image, Some(&b"new"[..]));
        assert_eq!(chunk.entries[1].key, Some(&b"k"[..]));
        assert_eq!(chunk.entries[1].header.offset, 4000);
        assert_eq!(last_timestamp_us(&a), Some(1_012));
        let b = encode(&txn, LogKind::B).pop().unwrap().1;
        assert_eq!(decode(&b).unwrap().entries.len(), 1);
        let t = encode(&txn, LogKind::T).pop().unwrap().1;
        let t = decode(&t).unwrap();
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[1].op, Some(OpKind::Delete));
    }

    #[test]
    fn a_chunks_carry_the_t_log() {
        let txn = mixed_txn();
        let a = encode(&txn, LogKind::A).pop().unwrap().1;
        let head = peek(&a).unwrap();
        assert!(head.carries_t && head.holds(LogKind::T) && head.holds(LogKind::A));
        assert!(!head.holds(LogKind::B));
        // Read as the A log: every entry, with its operation.
        let ops: Vec<_> = decode(&a).unwrap().entries.iter().map(|e| e.op).collect();
        assert_eq!(ops, [Some(OpKind::Insert), Some(OpKind::Delete), None]);
        // Read as the T log: what the separate T chunk said, entry for entry.
        let t = decode_as(&a, LogKind::T).unwrap();
        let legacy_bytes = encode_v1(&txn, LogKind::T).pop().unwrap().1;
        let legacy = decode(&legacy_bytes).unwrap();
        assert_eq!(t.kind, LogKind::T);
        assert_eq!(t.entries, legacy.entries);
        assert_eq!(t.entries[1].image, Some(&b"k"[..]));
        assert!(decode_as(&a, LogKind::B).is_err());
        // A transaction with no client operation has no T log.
        let undo = TxnLog {
            updates: vec![update(13, Effect::Reorg, None, None, None)],
            ..txn.clone()
        };
        let a = encode(&undo, LogKind::A).pop().unwrap().1;
        assert!(!peek(&a).unwrap().carries_t);
        assert!(decode_as(&a, LogKind::T).is_err());
    }

    #[test]
    fn chunks_of_version_1_still_decode() {
        let txn = TxnLog {
            txn: 7,
            outcome: Outcome::Committed,
            updates: vec![update(
                10,
                Effect::Insert,
                Some(b"new"),
                None,
                Some(OpKind::Upsert),
            )],
        };
        let a = encode_v1(&txn, LogKind::A).pop().unwrap().1;
        let head = peek(&a).unwrap();
        assert_eq!((head.version, head.carries_t), (1, false));
        let chunk = decode(&a).unwrap();
        assert_eq!(chunk.entries[0].image, Some(&b"new"[..]));
        assert_eq!(chunk.entries[0].op, None);
        let t = encode_v1(&txn, LogKind::T).pop().unwrap().1;
        let t = decode_as(&t, LogKind::T).unwrap();
        assert_eq!(t.entries[0].op, Some(OpKind::Upsert));
        // Version 2 adds the head's T flag and each entry's operation.
        let a2 = encode(&txn, LogKind::A).pop().unwrap().1;
        assert_eq!(a2.len(), a.len() + 2);
    }

    #[test]
    fn large_transactions_are_split_into_consecutive_chunks() {
        let big = vec![7u8; 1000];
        let txn = TxnLog {
            txn: 3,
            outcome: Outcome::Committed,
            updates: (1..=200)
                .map(|s| update(s, Effect::Insert, Some(&big), None, Some(OpKind::Insert)))
                .collect(),
        };
        let chunks = encode(&txn, LogKind::A);
        assert!(chunks.len() > 1);
        let mut next = 1;
        for (first, bytes) in &chunks {
            assert!(bytes.len() <= MAX_CHUNK_BYTES + 64);
            let chunk = decode(bytes).unwrap();
            assert_eq!((chunk.first_serial, *first), (next, next));
            next = chunk.last_serial + 1;
        }
        assert_eq!(next, 201);
    }

    #[test]
    fn truncated_or_garbage_chunks_are_errors() {
        let txn = TxnLog {
            txn: 1,
            outcome: Outcome::Committed,
            updates: vec![update(
                1,
                Effect::Insert,
                Some(b"x"),
                None,
                Some(OpKind::Upsert),
            )],
        };
        let a = encode(&txn, LogKind::A).pop().unwrap().1;
        for cut in 0..a.len() {
            assert!(decode(&a[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[0xff; 64]).is_err());
    }
}
