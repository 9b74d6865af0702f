//! The record layout inside a batch arena, shared by the host and the guests.
//!
//! A batch is one arena and an offset table; record i occupies
//! `arena[offsets[i]..offsets[i + 1]]` (the last one runs to the end). One record is:
//!
//! ```text
//! op u8 | flags u8 (bit 0: before image present) | alt count u16
//! origin u64 | serial u64 | timestamp u64 (µs since the epoch) | txn u64
//! file, key, data [, before] : u32 length + bytes each
//! alt count × (name, value)  : u32 length + bytes each
//! ```
//!
//! All integers are little-endian. Decoding borrows from the arena: nothing is copied.

use std::fmt;

/// Contract version, returned by every plugin's `contract-version`. Version 2 changed
/// the resolver world only (the base version, decisions and merges); the host accepts
/// filters, transforms and rules of version 1 too.
pub const CONTRACT_VERSION: u32 = 2;

/// The record a resolver is given as `base[i]` when there is no base version (the
/// record did not exist, or the base is not known): op `delete`, empty data, timestamp 0,
/// origin 0 (serial and txn 0 too), with the conflicting record's file and key.
pub fn no_base(file: &str, key: &str) -> OwnedRecord {
    OwnedRecord::new(Op::Delete, file, key, "")
}

/// What happened to a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Op {
    #[default]
    Insert,
    Update,
    Delete,
    /// A read, forwarded only by links that replicate reads (SPEC E1).
    Read,
}

impl Op {
    pub fn code(self) -> u8 {
        match self {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Read => 3,
        }
    }
    pub fn from_code(c: u8) -> Option<Op> {
        Some(match c {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::Delete,
            3 => Op::Read,
            _ => return None,
        })
    }
    /// The name used in JSON (`insert`, `update`, `delete`, `read`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Read => "read",
        }
    }
    pub fn from_name(s: &str) -> Option<Op> {
        Some(match s {
            "insert" | "upsert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            "read" => Op::Read,
            _ => return None,
        })
    }
    /// Whether the operation changes data.
    pub fn is_write(self) -> bool {
        !matches!(self, Op::Read)
    }
}

/// The serial of a record from its bytes, reading only its fixed header (no decoding):
/// how the host follows records through a chain. `None` when the header is truncated.
pub fn peek_serial(raw: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(raw.get(12..20)?.try_into().ok()?))
}

/// A record borrowed from a batch arena.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub op: Op,
    pub origin: u64,
    pub serial: u64,
    pub timestamp: u64,
    pub txn: u64,
    pub file: &'a str,
    pub key: &'a str,
    /// The after image, JSON bytes (empty for deletes).
    pub data: &'a [u8],
    /// The before image, JSON bytes, where known.
    pub before: Option<&'a [u8]>,
    alt_count: u16,
    alt_bytes: &'a [u8],
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("op", &self.op)
            .field("file", &self.file)
            .field("key", &self.key)
            .field("data", &String::from_utf8_lossy(self.data))
            .field("origin", &self.origin)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| DecodeError("u64"))?,
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("text is not UTF-8"))
    }
}

impl<'a> Record<'a> {
    /// Decodes one record from its bytes.
    pub fn decode(buf: &'a [u8]) -> Result<Record<'a>, DecodeError> {
        let mut r = Reader { buf };
        let head = r.take(4)?;
        let op = Op::from_code(head[0]).ok_or(DecodeError("unknown op"))?;
        let has_before = head[1] & 1 != 0;
        let alt_count = u16::from_le_bytes([head[2], head[3]]);
        let origin = r.u64()?;
        let serial = r.u64()?;
        let timestamp = r.u64()?;
        let txn = r.u64()?;
        let file = r.str()?;
        let key = r.str()?;
        let data = r.bytes()?;
        let before = if has_before { Some(r.bytes()?) } else { None };
        let alt_bytes = r.buf;
        let rec = Record {
            op,
            origin,
            serial,
            timestamp,
            txn,
            file,
            key,
            data,
            before,
            alt_count,
            alt_bytes,
        };
        // Validate the alternate keys once so that iterating them cannot fail.
        let mut n = 0;
        let mut ar = Reader { buf: alt_bytes };
        while n < alt_count {
            ar.str()?;
            ar.str()?;
            n += 1;
        }
        Ok(rec)
    }

    /// Whether this is the "no base" record of [`no_base`] (a delete with empty data,
    /// timestamp 0 and origin 0).
    pub fn is_no_base(&self) -> bool {
        self.op == Op::Delete && self.data.is_empty() && self.timestamp == 0 && self.origin == 0
    }

    /// The alternate keys, as (name, value) pairs.
    pub fn alt(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut r = Reader {
            buf: self.alt_bytes,
        };
        (0..self.alt_count).filter_map(move |_| Some((r.str().ok()?, r.str().ok()?)))
    }

    /// The value of one alternate key.
    pub fn alt_key(&self, name: &str) -> Option<&'a str> {
        self.alt().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The after image parsed as JSON (`Value::Null` when empty).
    pub fn json(&self) -> Result<serde_json::Value, String> {
        crate::json::parse(self.data)
    }

    /// An owned copy, to edit and re-encode.
    pub fn to_owned(&self) -> OwnedRecord {
        OwnedRecord {
            op: self.op,
            origin: self.origin,
            serial: self.serial,
            timestamp: self.timestamp,
            txn: self.txn,
            file: self.file.to_owned(),
            key: self.key.to_owned(),
            data: self.data.to_vec(),
            before: self.before.map(<[u8]>::to_vec),
            alt: self
                .alt()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// Appends this record, unchanged, to a batch being built.
    pub fn encode_into(&self, out: &mut BatchBuilder) {
        self.encode_with(self.op, self.data, self.before, out);
    }

    /// Appends this record with the fields of `edit` replaced (the others, and the
    /// alternate keys, copied as they are).
    pub fn encode_edited(&self, edit: &crate::run::Edit, out: &mut BatchBuilder) {
        out.push_parts(&Parts {
            op: self.op,
            origin: self.origin,
            serial: self.serial,
            timestamp: self.timestamp,
            txn: self.txn,
            file: edit.file.as_deref().unwrap_or(self.file),
            key: edit.key.as_deref().unwrap_or(self.key),
            data: edit.data.as_deref().unwrap_or(self.data),
            before: match &edit.before {
                Some(b) => b.as_deref(),
                None => self.before,
            },
            alt_count: self.alt_count,
            alt_bytes: self.alt_bytes,
        });
    }

    /// Appends this record with another op, data and before image (the header fields
    /// and alternate keys unchanged): how a resolver's merge is encoded.
    pub fn encode_with(&self, op: Op, data: &[u8], before: Option<&[u8]>, out: &mut BatchBuilder) {
        out.push_parts(&Parts {
            op,
            origin: self.origin,
            serial: self.serial,
            timestamp: self.timestamp,
            txn: self.txn,
            file: self.file,
            key: self.key,
            data,
            before,
            alt_count: self.alt_count,
            alt_bytes: self.alt_bytes,
        });
    }
}

/// An owned record: what tests and transforms build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRecord {
    pub op: Op,
    pub origin: u64,
    pub serial: u64,
    pub timestamp: u64,
    pub txn: u64,
    pub file: String,
    pub key: String,
    pub data: Vec<u8>,
    pub before: Option<Vec<u8>>,
    pub alt: Vec<(String, String)>,
}

impl OwnedRecord {
    /// A record with the given op, file, key and JSON data.
    pub fn new(op: Op, file: &str, key: &str, data: &str) -> OwnedRecord {
        OwnedRecord {
            op,
            file: file.to_owned(),
            key: key.to_owned(),
            data: data.as_bytes().to_vec(),
            ..OwnedRecord::default()
        }
    }

    /// The same record, from origin node `origin`.
    pub fn with_origin(mut self, origin: u64) -> OwnedRecord {
        self.origin = origin;
        self
    }

    /// The same record, stamped `timestamp` (µs since the epoch).
    pub fn with_timestamp(mut self, timestamp: u64) -> OwnedRecord {
        self.timestamp = timestamp;
        self
    }

    /// The same record, with a before image (JSON).
    pub fn with_before(mut self, before: &str) -> OwnedRecord {
        self.before = Some(before.as_bytes().to_vec());
        self
    }
}

struct Parts<'a> {
    op: Op,
    origin: u64,
    serial: u64,
    timestamp: u64,
    txn: u64,
    file: &'a str,
    key: &'a str,
    data: &'a [u8],
    before: Option<&'a [u8]>,
    alt_count: u16,
    alt_bytes: &'a [u8],
}

/// Builds a batch arena and its offset table.
#[derive(Default, Debug, Clone)]
pub struct BatchBuilder {
    pub arena: Vec<u8>,
    pub offsets: Vec<u32>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    fn push_parts(&mut self, p: &Parts<'_>) {
        self.offsets.push(self.arena.len() as u32);
        let a = &mut self.arena;
        a.push(p.op.code());
        a.push(u8::from(p.before.is_some()));
        a.extend_from_slice(&p.alt_count.to_le_bytes());
        for n in [p.origin, p.serial, p.timestamp, p.txn] {
            a.extend_from_slice(&n.to_le_bytes());
        }
        put_bytes(a, p.file.as_bytes());
        put_bytes(a, p.key.as_bytes());
        put_bytes(a, p.data);
        if let Some(b) = p.before {
            put_bytes(a, b);
        }
        a.extend_from_slice(p.alt_bytes);
    }

    /// Appends an owned record.
    pub fn push(&mut self, r: &OwnedRecord) {
        let mut alt = Vec::new();
        for (n, v) in &r.alt {
            put_bytes(&mut alt, n.as_bytes());
            put_bytes(&mut alt, v.as_bytes());
        }
        self.push_parts(&Parts {
            op: r.op,
            origin: r.origin,
            serial: r.serial,
            timestamp: r.timestamp,
            txn: r.txn,
            file: &r.file,
            key: &r.key,
            data: &r.data,
            before: r.before.as_deref(),
            alt_count: r.alt.len().min(u16::MAX as usize) as u16,
            alt_bytes: &alt,
        });
    }

    /// Appends a record's bytes as they are (no decoding): how the host forwards kept
    /// records from one stage to the next.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.offsets.push(self.arena.len() as u32);
        self.arena.extend_from_slice(bytes);
    }

    pub fn as_batch(&self) -> BatchRef<'_> {
        BatchRef {
            arena: &self.arena,
            offsets: &self.offsets,
        }
    }
}

/// A batch borrowed as arena + offsets.
#[derive(Clone, Copy, Debug)]
pub struct BatchRef<'a> {
    pub arena: &'a [u8],
    pub offsets: &'a [u32],
}

impl<'a> BatchRef<'a> {
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The bytes of record i, or an error when the offset table is inconsistent.
    pub fn raw(&self, i: usize) -> Result<&'a [u8], DecodeError> {
        let start = *self.offsets.get(i).ok_or(DecodeError("index"))? as usize;
        let end = match self.offsets.get(i + 1) {
            Some(e) => *e as usize,
            None => self.arena.len(),
        };
        if start > end || end > self.arena.len() {
            return Err(DecodeError("offset table out of range"));
        }
        Ok(&self.arena[start..end])
    }

    /// Decodes record i.
    pub fn get(&self, i: usize) -> Result<Record<'a>, DecodeError> {
        Record::decode(self.raw(i)?)
    }

    /// Decodes every record, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Record<'a>, DecodeError>> + 'a {
        let b = *self;
        (0..b.len()).map(move |i| b.get(i))
    }
}

/// Bit i of a bitmap.
pub fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Sets bit i, growing the bitmap as needed.
pub fn set_bit(bitmap: &mut Vec<u8>, i: usize) {
    if bitmap.len() <= i / 8 {
        bitmap.resize(i / 8 + 1, 0);
    }
    bitmap[i / 8] |= 1 << (i % 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_an_arena() {
        let mut r = OwnedRecord::new(Op::Update, "orders", "o-1", r#"{"total":1}"#);
        r.before = Some(b"{}".to_vec());
        r.alt = vec![("customer".into(), "ann".into())];
        r.origin = 7;
        r.serial = 42;
        let mut b = BatchBuilder::new();
        b.push(&r);
        b.push(&OwnedRecord::new(Op::Delete, "lines", "l-1", ""));
        let batch = b.as_batch();
        assert_eq!(batch.get(0).unwrap().to_owned(), r);
        assert_eq!(batch.get(0).unwrap().alt_key("customer"), Some("ann"));
        assert_eq!(batch.get(1).unwrap().key, "l-1");
        let mut copy = BatchBuilder::new();
        copy.push_raw(batch.raw(1).unwrap());
        assert_eq!(copy.as_batch().get(0).unwrap().file, "lines");
    }

    #[test]
    fn an_edit_replaces_only_its_fields_and_the_serial_is_read_from_the_header() {
        let mut r = OwnedRecord::new(Op::Update, "orders", "o-1", r#"{"a":1}"#).with_before("{}");
        r.alt = vec![("customer".into(), "ann".into())];
        r.serial = 42;
        let mut b = BatchBuilder::new();
        b.push(&r);
        let rec = b.as_batch().get(0).unwrap();
        assert_eq!(peek_serial(b.as_batch().raw(0).unwrap()), Some(42));
        let mut out = BatchBuilder::new();
        let edit = crate::run::Edit {
            key: Some("x/o-1".into()),
            before: Some(None),
            ..Default::default()
        };
        rec.encode_edited(&edit, &mut out);
        let got = out.as_batch().get(0).unwrap().to_owned();
        assert_eq!(
            got,
            OwnedRecord {
                key: "x/o-1".into(),
                before: None,
                ..r
            }
        );
        assert_eq!(peek_serial(&[0; 19]), None);
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let mut b = BatchBuilder::new();
        b.push(&OwnedRecord::new(Op::Insert, "f", "k", "1"));
        for cut in 0..b.arena.len() {
            assert!(Record::decode(&b.arena[..cut]).is_err());
        }
    }
}
