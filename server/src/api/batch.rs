//! The binary batch body of the transaction routes, `application/vnd.doppel.batch`: its
//! layout, the decoder the routes run, the encoder clients use, and the extractor that
//! takes either body (this one or JSON `{"ops": [...]}`) into the same operations, read
//! in place from the body's bytes.
//!
//! A batch carries what the JSON body carries, operation by operation, without JSON
//! around it: no field names, no escapes, lengths instead of delimiters. All integers
//! are little-endian; every string is UTF-8.
//!
//! ```text
//! batch = "DPB1" count:u32 op{count}           nothing after the last op
//! op    = kind:u8 file:str16 key:str16 alts:u8 (name:str16 value:str16){alts} data:bytes32
//! kind  = 1 insert | 2 update | 3 upsert | 4 delete
//! str16 = len:u16, then len bytes
//! bytes32 = len:u32, then len bytes: the record's data as JSON text (len 0: no data)
//! ```
//!
//! `count` is 1 to 100000, as for `ops`. An operation decodes into the [`OpRef`] a JSON
//! body's operation gives, borrowed from the batch's bytes, so both run the same checks
//! afterwards (the file exists, key 1 to 1024 bytes, alternate keys of the file, record
//! size). The decoder refuses what JSON
//! cannot say either: an unknown kind, a string that is not UTF-8, data that is not one
//! JSON value, an alternate key named twice, a body that ends inside an operation or
//! goes on after the last one; each with the operation's index and byte offset.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{read_body, ApiError};
use super::routes::OpsBody;
use crate::node::database::MAX_TXN_OPS;
use crate::node::records::{OpInput, OpName, OpRef};

/// The media type of a binary batch.
pub const MEDIA_TYPE: &str = "application/vnd.doppel.batch";

/// The first four bytes of every batch (the layout's version is its last byte).
pub const MAGIC: &[u8; 4] = b"DPB1";

/// The fewest bytes an operation takes: kind, two empty strings, no alternate keys, no
/// data.
const MIN_OP_BYTES: usize = 1 + 2 + 2 + 1 + 4;

/// The operation each kind byte stands for: byte = index + 1 (0 is not a kind).
const KINDS: [OpName; 4] = [
    OpName::Insert,
    OpName::Update,
    OpName::Upsert,
    OpName::Delete,
];

fn kind_byte(op: OpName) -> u8 {
    let at = KINDS
        .iter()
        .position(|k| *k == op)
        .expect("every OpName has a byte");
    at as u8 + 1
}

/// Builds a batch, operation by operation.
pub struct Writer {
    buf: Vec<u8>,
    count: u32,
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

impl Writer {
    pub fn new() -> Writer {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer { buf, count: 0 }
    }

    fn str16(&mut self, s: &str) {
        let len = u16::try_from(s.len()).expect("a batch string is at most 65535 bytes");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Add an operation; `data` is JSON text (`None`: no data). Panics on a file, key
    /// or alternate key over 65535 bytes, or more than 255 alternate keys, which the
    /// layout cannot carry (the node takes keys of at most 1024 bytes).
    pub fn push(
        &mut self,
        op: OpName,
        file: &str,
        key: &str,
        alts: &[(&str, &str)],
        data: Option<&str>,
    ) {
        self.buf.push(kind_byte(op));
        self.str16(file);
        self.str16(key);
        self.buf
            .push(u8::try_from(alts.len()).expect("at most 255 alternate keys"));
        for (name, value) in alts {
            self.str16(name);
            self.str16(value);
        }
        let data = data.unwrap_or("");
        let len = u32::try_from(data.len()).expect("data under 4 GiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(data.as_bytes());
        self.count += 1;
    }

    /// Operations added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The batch's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[4..8].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Reads a batch front to back, naming where it stopped.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The operation being read, for the errors.
    op: usize,
}

impl<'a> Reader<'a> {
    /// A refusal of the current operation at byte `at` of the body.
    fn fail_at(&self, at: usize, detail: String) -> ApiError {
        let mut e = ApiError::malformed(format!("op {} (byte {at}): {detail}", self.op));
        e.op_index = Some(self.op);
        e
    }

    fn fail(&self, detail: String) -> ApiError {
        self.fail_at(self.at, detail)
    }

    /// `what` names the part in the error (formatted only when there is one).
    fn take(&mut self, n: usize, what: &dyn std::fmt::Display) -> Result<&'a [u8], ApiError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(self.fail(format!(
                "the body ends inside its {what} ({} announced, {left} left)",
                byte_count(n)
            )));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ApiError> {
        Ok(self.take(1, &what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<usize, ApiError> {
        let b = self.take(4, &what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn str16(&mut self, what: &str) -> Result<&'a str, ApiError> {
        let b = self.take(2, &format_args!("{what}'s length"))?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let at = self.at;
        let bytes = self.take(len, &what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            self.fail_at(
                at,
                format!("its {what} is not UTF-8 (at its byte {})", e.valid_up_to()),
            )
        })
    }

    fn op(&mut self) -> Result<OpRef<'a>, ApiError> {
        let kind = self.u8("kind")?;
        let Some(&op) = (kind as usize).checked_sub(1).and_then(|at| KINDS.get(at)) else {
            return Err(self.fail_at(
                self.at - 1,
                format!("unknown operation {kind} (1 insert, 2 update, 3 upsert, 4 delete)"),
            ));
        };
        let file = self.str16("file")?;
        let key = self.str16("key")?;
        let count = self.u8("count of alternate keys")?;
        let mut alt: Vec<(&'a str, &'a str)> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let at = self.at;
            let name = self.str16("alternate key name")?;
            let value = self.str16("alternate key value")?;
            if alt.iter().any(|(seen, _)| *seen == name) {
                return Err(self.fail_at(at, format!("alternate key '{name}' is given twice")));
            }
            alt.push((name, value));
        }
        let len = self.u32("data's length")?;
        let at = self.at;
        let data = self.take(len, &"data")?;
        let data = if data.is_empty() {
            None
        } else {
            // Checked and borrowed in one pass, as the text it is (no copy).
            let value: &RawValue = serde_json::from_slice(data).map_err(|e| {
                if std::str::from_utf8(data).is_err() {
                    self.fail_at(at, "its data is not UTF-8 JSON text".into())
                } else {
                    self.fail_at(at, format!("its data is not one JSON value: {e}"))
                }
            })?;
            Some(value.get())
        };
        Ok(OpRef {
            op,
            file,
            key,
            alt,
            data,
        })
    }
}

/// `n` bytes, in words.
fn byte_count(n: usize) -> String {
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

/// The operations of a batch, read in place, or the precise reason it is not one (400
/// `malformed-request`; its `op_index` names the operation it stopped in).
pub fn decode(bytes: &[u8]) -> Result<Vec<OpRef<'_>>, ApiError> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(ApiError::malformed(format!(
            "a binary batch ({MEDIA_TYPE}) starts with the 4 bytes \"DPB1\" and a u32 count of operations"
        )));
    }
    let count = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    check_count(count)?;
    let mut r = Reader {
        bytes,
        at: 8,
        op: 0,
    };
    // At most what the body can hold: a count is no reason to allocate.
    let mut ops = Vec::with_capacity(count.min((bytes.len() - 8) / MIN_OP_BYTES));
    while ops.len() < count {
        r.op = ops.len();
        ops.push(r.op()?);
    }
    if r.at != bytes.len() {
        return Err(ApiError::malformed(format!(
            "{} after op {}, the last of the {count} the batch announces (byte {})",
            byte_count(bytes.len() - r.at),
            count - 1,
            r.at
        )));
    }
    Ok(ops)
}

/// The bound the document states on `ops`, for either body.
pub fn check_count(count: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::malformed("ops: give at least one operation"));
    }
    if count > MAX_TXN_OPS {
        return Err(ApiError::malformed(format!(
            "a request holds at most {MAX_TXN_OPS} operations"
        )));
    }
    Ok(())
}

/// The operations of a transaction route's body: JSON (`application/json`, or another
/// `…+json` type) or a binary batch ([`MEDIA_TYPE`]). Any other type is 415
/// `unsupported-media-type`. Either body is kept as its bytes and read by [`Ops::read`],
/// so its operations borrow from it.
pub enum Ops {
    /// `owned` holds the operations when the route's own parser had to read them
    /// ([`json_in_place`] could not).
    Json {
        bytes: Bytes,
        owned: OnceLock<Vec<OpInput>>,
    },
    Batch(Bytes),
}

impl Ops {
    /// The operations, borrowed from the body, or the precise reason there are none
    /// (400 `malformed-request`; a batch's names the operation and byte where it stops).
    /// A big body's reading runs off the async worker at a lower priority
    /// ([`crate::node::usage::big_work`]).
    pub fn read(&self) -> Result<Vec<OpRef<'_>>, ApiError> {
        match self {
            Ops::Json { bytes, owned } => crate::node::usage::big_work(big(bytes), || {
                let copies = match json_in_place(bytes) {
                    Some(InPlace::Borrowed(ops)) => {
                        check_count(ops.len())?;
                        return Ok(ops);
                    }
                    Some(InPlace::Copied(ops)) => ops,
                    // Refused (or a string this cannot borrow in an alternate key): the
                    // route's own parser reads it, and its answer (or its error) stands.
                    None => super::error::parse_json::<OpsBody>(bytes)?.ops,
                };
                check_count(copies.len())?;
                Ok(owned
                    .get_or_init(|| copies)
                    .iter()
                    .map(OpInput::as_ref)
                    .collect())
            }),
            Ops::Batch(bytes) => crate::node::usage::big_work(big(bytes), || decode(bytes)),
        }
    }
}

/// What [`json_in_place`] made of a body.
#[derive(Debug)]
pub enum InPlace<'a> {
    /// Every operation borrowed from the body.
    Borrowed(Vec<OpRef<'a>>),
    /// A file or key held an escape (`"k\u00e9"`): the operations as the route's
    /// parser would give them, copied.
    Copied(Vec<OpInput>),
}

/// A JSON body's operations read in place, in one pass: the common case, where no file
/// or key holds an escape, costs no copy of them nor of the data. The fields and rules
/// of [`OpsBody`] and [`OpInput`] (unknown fields refused, an alternate key named twice:
/// the last one). `None` for a body it would refuse or an alternate key with an escape,
/// which the route's own parser ([`super::error::parse_json`]) then reads: its answer is
/// the one the client gets, so this changes no outcome, only the cost of the common one.
pub fn json_in_place(bytes: &[u8]) -> Option<InPlace<'_>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body<'a> {
        #[serde(borrow)]
        ops: Vec<Op<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Op<'a> {
        op: OpName,
        #[serde(borrow)]
        file: Cow<'a, str>,
        #[serde(borrow)]
        key: Cow<'a, str>,
        #[serde(default, borrow)]
        alt: BTreeMap<&'a str, &'a str>,
        #[serde(default, borrow)]
        data: Option<&'a RawValue>,
    }
    // The document says object: the route's parser refuses the array form.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let body: Body<'_> = serde_json::from_slice(bytes).ok()?;
    let refs: Option<Vec<OpRef<'_>>> = body
        .ops
        .iter()
        .map(|op| {
            Some(OpRef {
                op: op.op,
                file: borrowed(&op.file)?,
                key: borrowed(&op.key)?,
                alt: op.alt.iter().map(|(name, value)| (*name, *value)).collect(),
                data: op.data.map(RawValue::get),
            })
        })
        .collect();
    if let Some(refs) = refs {
        return Some(InPlace::Borrowed(refs));
    }
    let copied = body.ops.into_iter().map(|op| OpInput {
        op: op.op,
        file: op.file.into_owned(),
        key: op.key.into_owned(),
        alt: op
            .alt
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        data: op.data.map(RawValue::to_owned),
    });
    Some(InPlace::Copied(copied.collect()))
}

/// The text of a string the parser could borrow (`None`: it had an escape).
fn borrowed<'a>(text: &Cow<'a, str>) -> Option<&'a str> {
    match text {
        Cow::Borrowed(text) => Some(text),
        Cow::Owned(_) => None,
    }
}

/// A body big enough that reading it is work for a blocking thread (a third of a
/// flood's CPU as JSON), so a neighbour's small request goes first.
fn big(bytes: &[u8]) -> bool {
    bytes.len() >= crate::node::usage::BIG_BODY_BYTES
}

impl<S: Send + Sync> FromRequest<S> for Ops {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let essence = super::error::media_type(req.headers());
        if essence.as_deref() == Some(MEDIA_TYPE) {
            return Ok(Ops::Batch(read_body(req, state).await?));
        }
        if essence.as_deref().is_some_and(super::error::is_json) {
            return Ok(Ops::Json {
                bytes: read_body(req, state).await?,
                owned: OnceLock::new(),
            });
        }
        let got = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            match got {
                Some(ct) => format!(
                    "the operations are JSON (Content-Type: application/json) or a binary batch (Content-Type: {MEDIA_TYPE}), not '{ct}'"
                ),
                None => format!(
                    "give the body's Content-Type: application/json or {MEDIA_TYPE}"
                ),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        op: OpName,
        file: &str,
        key: &str,
        alts: &[(&str, &str)],
        data: Option<&str>,
    ) -> Vec<u8> {
        let mut w = Writer::new();
        w.push(op, file, key, alts, data);
        w.finish()
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let bytes = one(OpName::Upsert, "f", "k1", &[("a", "v")], Some("[1]"));
        let expected: &[u8] = &[
            b'D', b'P', b'B', b'1', 1, 0, 0, 0, // magic, count
            3, // upsert
            1, 0, b'f', // file
            2, 0, b'k', b'1', // key
            1, 1, 0, b'a', 1, 0, b'v', // one alternate key
            3, 0, 0, 0, b'[', b'1', b']', // data
        ];
        assert_eq!(bytes, expected);
        let ops = decode(&bytes).unwrap();
        assert_eq!(ops.len(), 1);
        let op = &ops[0];
        assert_eq!((op.op, op.file, op.key), (OpName::Upsert, "f", "k1"));
        assert_eq!(op.alt, [("a", "v")]);
        assert_eq!(op.data, Some("[1]"));
    }

    #[test]
    fn every_kind_round_trips_and_no_data_is_none() {
        let mut w = Writer::new();
        for (i, op) in [
            OpName::Insert,
            OpName::Update,
            OpName::Upsert,
            OpName::Delete,
        ]
        .into_iter()
        .enumerate()
        {
            w.push(op, "orders", &format!("k{i}"), &[], None);
        }
        let bytes = w.finish();
        let ops = decode(&bytes).unwrap();
        let kinds: Vec<OpName> = ops.iter().map(|o| o.op).collect();
        assert_eq!(
            kinds,
            [
                OpName::Insert,
                OpName::Update,
                OpName::Upsert,
                OpName::Delete
            ]
        );
        assert!(ops.iter().all(|o| o.data.is_none() && o.alt.is_empty()));
    }

    fn refused(bytes: &[u8]) -> String {
        let e = decode(bytes).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "malformed-request")
        );
        e.detail
    }

    #[test]
    fn bad_batches_are_refused_precisely() {
        assert!(refused(b"").contains("starts with the 4 bytes"));
        assert!(refused(b"DPB2\x01\0\0\0").contains("starts with the 4 bytes"));
        assert_eq!(refused(b"DPB1\0\0\0\0"), "ops: give at least one operation");
        assert_eq!(
            refused(&[b'D', b'P', b'B', b'1', 0xa1, 0x86, 0x01, 0]),
            "a request holds at most 100000 operations"
        );
        let good = one(OpName::Insert, "f", "k", &[], Some("1"));
        // Cut anywhere inside the operation: it ends inside one of its parts.
        for cut in 8..good.len() {
            let d = refused(&good[..cut]);
            assert!(d.starts_with("op 0 (byte "), "{d}");
            assert!(d.contains("the body ends inside its"), "{d}");
        }
        assert_eq!(
            refused(&good[..good.len() - 1]),
            "op 0 (byte 20): the body ends inside its data (1 byte announced, 0 left)"
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            refused(&trailing),
            "1 byte after op 0, the last of the 1 the batch announces (byte 21)"
        );
        let mut unknown = good.clone();
        unknown[8] = 9;
        assert_eq!(
            refused(&unknown),
            "op 0 (byte 8): unknown operation 9 (1 insert, 2 update, 3 upsert, 4 delete)"
        );
        let e = decode(&unknown).unwrap_err();
        assert_eq!(e.op_index, Some(0));
        let mut bad_key = good.clone();
        bad_key[14] = 0xff;
        assert_eq!(
            refused(&bad_key),
            "op 0 (byte 14): its key is not UTF-8 (at its byte 0)"
        );
        let not_json = one(OpName::Insert, "f", "k", &[], Some("{x"));
        assert!(
            refused(&not_json).starts_with("op 0 (byte 20): its data is not one JSON value"),
            "{}",
            refused(&not_json)
        );
        let two_values = one(OpName::Insert, "f", "k", &[], Some("1 2"));
        assert!(refused(&two_values).contains("is not one JSON value"));
        let twice = one(OpName::Insert, "f", "k", &[("a", "1"), ("a", "2")], None);
        assert!(refused(&twice).ends_with("alternate key 'a' is given twice"));
        // The second operation's index is the one named.
        let mut w = Writer::new();
        w.push(OpName::Insert, "f", "k", &[], None);
        w.push(OpName::Insert, "f", "k", &[], None);
        let mut second = w.finish();
        second[8 + 12] = 0; // the second operation's kind
        assert!(refused(&second).starts_with("op 1 (byte "));
        // A huge count over a short body allocates for the body, not the count.
        let mut big = b"DPB1".to_vec();
        big.extend_from_slice(&100_000u32.to_le_bytes());
        assert!(refused(&big).contains("the body ends inside its kind"));
    }
    fn json(text: &str) -> Ops {
        Ops::Json {
            bytes: Bytes::copy_from_slice(text.as_bytes()),
            owned: OnceLock::new(),
        }
    }

    /// What the route's own parser makes of `text`, as `OpRef`s.
    fn parsed(text: &str) -> Result<Vec<OpRef<'static>>, String> {
        let body: OpsBody = crate::api::error::parse_json(text.as_bytes()).map_err(|e| e.detail)?;
        let ops: &'static [OpInput] = Box::leak(body.ops.into_boxed_slice());
        Ok(ops.iter().map(OpInput::as_ref).collect())
    }

    #[test]
    fn a_json_body_is_read_in_place_as_its_parser_reads_it() {
        let text = r#"{"ops": [{"op": "upsert", "file": "f", "key": "k1",
            "alt": {"b": "2", "a": "1", "a": "3"}, "data": {"x": [1, 2.5]} },
            {"op": "delete", "file": "f", "key": "k2", "data": null}]}"#;
        let Some(InPlace::Borrowed(fast)) = json_in_place(text.as_bytes()) else {
            panic!("read in place")
        };
        assert_eq!(fast, parsed(text).unwrap());
        assert_eq!(fast[0].alt, [("a", "3"), ("b", "2")]);
        assert_eq!(fast[0].data, Some(r#"{"x": [1, 2.5]}"#));
        assert_eq!(fast[1].data, None);
        assert_eq!(json(text).read().unwrap(), fast);
    }

    #[test]
    fn what_cannot_be_read_in_place_goes_to_the_routes_parser() {
        // An escape in a key: copied in the same pass, the same operations.
        let escaped = r#"{"ops": [{"op": "insert", "file": "f", "key": "plain"},
            {"op": "insert", "file": "f", "key": "k\u00e9\n", "data": [1]}]}"#;
        let Some(InPlace::Copied(copied)) = json_in_place(escaped.as_bytes()) else {
            panic!("copied")
        };
        assert_eq!(copied.len(), 2);
        let ops = json(escaped);
        let read = ops.read().unwrap();
        assert_eq!(read[1].key, "k\u{e9}\n");
        assert_eq!(read, parsed(escaped).unwrap());
        // An escape in an alternate key: the route's parser, the same operations.
        let alt = r#"{"ops": [{"op": "insert", "file": "f", "key": "k", "alt": {"a": "\u00e9"}}]}"#;
        assert!(json_in_place(alt.as_bytes()).is_none());
        let ops = json(alt);
        assert_eq!(ops.read().unwrap()[0].alt, [("a", "\u{e9}")]);
        assert_eq!(ops.read().unwrap(), parsed(alt).unwrap());
        // Refused bodies: the parser's own words, whichever reader failed.
        for bad in [
            r#"[{"op": "insert", "file": "f", "key": "k"}]"#,
            r#"{"ops": [{"op": "insert", "file": "f", "key": "k", "extra": 1}]}"#,
            r#"{"ops": [{"op": "merge", "file": "f", "key": "k"}]}"#,
            r#"{"ops": [{"op": "insert", "file": "f", "key": "k", "data": }]}"#,
            r#"{"ops": []}"#,
        ] {
            let err = json(bad).read().unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            match parsed(bad) {
                Err(detail) => assert_eq!(err.detail, detail, "{bad}"),
                Ok(_) => assert_eq!(err.detail, "ops: give at least one operation"),
            }
        }
    }
}
