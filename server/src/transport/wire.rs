//! The node-to-node wire protocol: length-prefixed frames of compact binary messages.
//!
//! ```text
//! frame   = len u32 LE | message*          (len counts the messages' bytes)
//! message = tag u8 | fields                (integers LE; bytes/str = len u32 | bytes)
//! ```
//!
//! A frame carries many messages (batching); a frame is never larger than
//! [`MAX_FRAME_BYTES`], and a peer announcing a larger one is cut off before anything
//! is allocated. Log chunks travel exactly as the source stored them (`log::codec`), so
//! every update keeps its transaction number, kind, file id, block number, record
//! offset, serial number and timestamp, and a mirror replica stores the same bytes.
//!
//! The first frame each way is the handshake: [`Msg::Hello`] from the source (protocol
//! version, link, credential, stream), [`Msg::Welcome`] or [`Msg::Refused`] from the
//! target. Decoding checks every length and tag: a malformed frame is an error, never a
//! panic.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::node::versions::Stamp;

/// The protocol version this node speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest frame accepted or sent.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The source's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub link: String,
    /// The per-link secret the target was given when the link was registered.
    pub credential: String,
    pub source_node: String,
    pub tenant: String,
    /// The target database.
    pub database: String,
    /// Identity of the source's update stream (its node and database); serials are
    /// per stream.
    pub stream: u64,
    /// The history of the source's log: `(epoch, first serial)` in serial order
    /// (`transport::history`).
    pub history: Vec<(u64, u64)>,
}

/// What one transaction depends on in another database of the same source node
/// (SPEC D1): every update of `database` stamped before `before_us`. `serial` is that
/// database's serial when the dependency was taken, so a replica that has applied it
/// has everything needed (and more); a transmission-completion watermark can show it
/// sooner. See `transport::interrelation`.
/// The transaction number a `Depends` names when it is for the bootstrap snapshot that
/// follows it (no transaction has number 0): the snapshot's records' dependencies, as of
/// its freeze. A receiver from before this drops it unused.
pub const SNAPSHOT_TXN: u64 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub database: String,
    pub serial: u64,
    pub before_us: u64,
}

/// One protocol message. Borrowed fields point into the frame they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<'a> {
    Hello(Hello),
    /// The target accepts; it has applied the stream up to `last_serial`.
    Welcome {
        last_serial: u64,
        stream: u64,
        /// The replica is detached: it stores but does not apply (SPEC G6).
        suspended: bool,
        /// The history of the replica's log (empty: unknown), compared with the
        /// source's to find the last serial both hold (`transport::history`).
        history: Vec<(u64, u64)>,
    },
    /// The source's decision after the handshake, when no snapshot is needed: the
    /// replica's log matches the source's up to `serial`; it discards what it holds
    /// beyond (a diverged tail) and the stream continues after `serial`.
    Follow {
        serial: u64,
    },
    /// The target refuses the link; the connection closes after it.
    Refused {
        code: String,
        reason: String,
    },
    /// A transaction begins.
    TxnStart {
        txn: u64,
        first_serial: u64,
    },
    /// Stored log chunks (A, B or T) of the current transaction.
    Updates {
        txn: u64,
        chunk: &'a [u8],
    },
    /// The transaction is complete: apply it.
    TxnCompleted {
        txn: u64,
        last_serial: u64,
    },
    /// A whole transaction of a logical link: the source serials it covers and its
    /// operations after the link's stages (`len u32 | plugin record`, see
    /// `transport::logical`).
    Logical {
        txn: u64,
        first_serial: u64,
        last_serial: u64,
        ops: &'a [u8],
    },
    /// A logical link's bootstrap (its source's log no longer reaches the replica's
    /// position): the source's records as of `serial`, through the link's stages, as
    /// operations like [`Msg::Logical`]'s; `last` ends it, and the replica then
    /// continues from `serial`.
    LogicalSnapshot {
        serial: u64,
        last: bool,
        ops: &'a [u8],
    },
    /// Interrelation information (SPEC D1) for transaction `txn`, sent just before it:
    /// the replica applies it only once each dependency holds (SPEC D3).
    Depends {
        txn: u64,
        deps: Vec<Dependency>,
    },
    /// The record versions of a mutual link's transaction `txn` (SPEC F4), sent just
    /// before it (or before a bootstrap part, `txn` 0): each shipped record's version
    /// and the version it replaced, by the record's serial.
    Versions {
        txn: u64,
        stamps: Vec<(u64, Stamp)>,
    },
    /// The transaction was cancelled on the source; its chunks (including the undo
    /// updates) are followed by its B log, and the replica ends at its before images.
    Cancel {
        txn: u64,
        last_serial: u64,
        b_chunks: Vec<&'a [u8]>,
    },
    /// Everything up to `serial` is applied (and durable as the replica's database
    /// promises): the "backup completed" answer.
    BackupCompleted {
        serial: u64,
    },
    /// The receiver saw a gap: send again from `from`.
    Retransmit {
        from: u64,
    },
    /// Transmission-completion watermark (SPEC D2): the source has sent everything up
    /// to `serial`, stamped `timestamp_us`.
    Watermark {
        serial: u64,
        timestamp_us: u64,
    },
    /// Detach: store what arrives, apply nothing (SPEC G6).
    Suspend,
    /// Re-attach: apply what was stored and follow again.
    Release,
    Heartbeat,
    /// A bootstrap snapshot begins: the store as of `serial`.
    SnapshotBegin {
        serial: u64,
        next_txn: u64,
        /// The postcard-encoded `SnapshotLayout`.
        layout: &'a [u8],
        size_bytes: u64,
    },
    SnapshotPart {
        bytes: &'a [u8],
    },
    /// The snapshot is complete; `checksum` is the xxh3-64 of every part's bytes in
    /// order (a lost or reordered part is caught before anything is installed).
    SnapshotEnd {
        checksum: u64,
    },
    /// The replica cannot continue the stream (it diverged, or its log no longer
    /// matches): the source must send a snapshot.
    NeedBootstrap {
        reason: String,
    },
}

/// A malformed frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed frame at byte {0}")]
    Malformed(usize),
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("connection: {0}")]
    Io(String),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e.to_string())
    }
}

/// Builds a frame message by message.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new() -> FrameWriter {
        FrameWriter { buf: vec![0; 4] }
    }

    /// Bytes of messages so far.
    pub fn len(&self) -> usize {
        self.buf.len().saturating_sub(4)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn epochs(&mut self, history: &[(u64, u64)]) {
        self.buf
            .extend_from_slice(&(history.len() as u32).to_le_bytes());
        for (epoch, first) in history {
            self.u64(*epoch);
            self.u64(*first);
        }
    }

    /// Append one message.
    pub fn push(&mut self, msg: &Msg<'_>) {
        match msg {
            Msg::Hello(h) => {
                self.u8(1);
                self.u16(h.version);
                self.str(&h.link);
                self.str(&h.credential);
                self.str(&h.source_node);
                self.str(&h.tenant);
                self.str(&h.database);
                self.u64(h.stream);
                self.epochs(&h.history);
            }
            Msg::Welcome {
                last_serial,
                stream,
                suspended,
                history,
            } => {
                self.u8(2);
                self.u64(*last_serial);
                self.u64(*stream);
                self.u8(*suspended as u8);
                self.epochs(history);
            }
            Msg::Follow { serial } => {
                self.u8(4);
                self.u64(*serial);
            }
            Msg::Refused { code, reason } => {
                self.u8(3);
                self.str(code);
                self.str(reason);
            }
            Msg::TxnStart { txn, first_serial } => {
                self.u8(10);
                self.u64(*txn);
                self.u64(*first_serial);
            }
            Msg::Updates { txn, chunk } => {
                self.u8(11);
                self.u64(*txn);
                self.bytes(chunk);
            }
            Msg::TxnCompleted { txn, last_serial } => {
                self.u8(12);
                self.u64(*txn);
                self.u64(*last_serial);
            }
            Msg::Logical {
                txn,
                first_serial,
                last_serial,
                ops,
            } => {
                self.u8(14);
                self.u64(*txn);
                self.u64(*first_serial);
                self.u64(*last_serial);
                self.bytes(ops);
            }
            Msg::LogicalSnapshot { serial, last, ops } => {
                self.u8(16);
                self.u64(*serial);
                self.u8(*last as u8);
                self.bytes(ops);
            }
            Msg::Depends { txn, deps } => {
                self.u8(15);
                self.u64(*txn);
                self.buf
                    .extend_from_slice(&(deps.len() as u32).to_le_bytes());
                for d in deps {
                    self.str(&d.database);
                    self.u64(d.serial);
                    self.u64(d.before_us);
                }
            }
            Msg::Versions { txn, stamps } => {
                self.u8(17);
                self.u64(*txn);
                self.buf
                    .extend_from_slice(&(stamps.len() as u32).to_le_bytes());
                for (serial, s) in stamps {
                    for v in [*serial, s.t, s.o, s.bt, s.bo] {
                        self.u64(v);
                    }
                    self.u8(s.del as u8);
                }
            }
            Msg::Cancel {
                txn,
                last_serial,
                b_chunks,
            } => {
                self.u8(13);
                self.u64(*txn);
                self.u64(*last_serial);
                self.buf
                    .extend_from_slice(&(b_chunks.len() as u32).to_le_bytes());
                for c in b_chunks {
                    self.bytes(c);
                }
            }
            Msg::BackupCompleted { serial } => {
                self.u8(20);
                self.u64(*serial);
            }
            Msg::Retransmit { from } => {
                self.u8(21);
                self.u64(*from);
            }
            Msg::Watermark {
                serial,
                timestamp_us,
            } => {
                self.u8(22);
                self.u64(*serial);
                self.u64(*timestamp_us);
            }
            Msg::Suspend => self.u8(23),
            Msg::Release => self.u8(24),
            Msg::Heartbeat => self.u8(25),
            Msg::SnapshotBegin {
                serial,
                next_txn,
                layout,
                size_bytes,
            } => {
                self.u8(30);
                self.u64(*serial);
                self.u64(*next_txn);
                self.bytes(layout);
                self.u64(*size_bytes);
            }
            Msg::SnapshotPart { bytes } => {
                self.u8(31);
                self.bytes(bytes);
            }
            Msg::SnapshotEnd { checksum } => {
                self.u8(32);
                self.u64(*checksum);
            }
            Msg::NeedBootstrap { reason } => {
                self.u8(33);
                self.str(reason);
            }
        }
    }

    /// The frame so far, length prefix included, without giving up the buffer: a
    /// writer reused frame after frame ([`Self::clear`]) allocates nothing in steady
    /// state (fresh large buffers cost page faults, measured at 30% of a busy node).
    pub fn frame(&mut self) -> &[u8] {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        &self.buf
    }

    /// Empty the writer, keeping its buffer.
    pub fn clear(&mut self) {
        self.buf.truncate(4);
    }

    /// The finished frame, length prefix included; the writer is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        std::mem::replace(&mut self.buf, vec![0; 4])
    }
}

/// Reads the messages of one frame's payload.
pub struct FrameReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> FrameReader<'a> {
    pub fn new(payload: &'a [u8]) -> FrameReader<'a> {
        FrameReader {
            bytes: payload,
            pos: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(WireError::Malformed(self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, WireError> {
        let at = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed(at))
    }

    /// A log's history: `count u32 | (epoch u64, first serial u64)*`.
    fn epochs(&mut self) -> Result<Vec<(u64, u64)>, WireError> {
        let at = self.pos;
        let n = self.u32()? as usize;
        // Each epoch takes 16 bytes: a count past that is a lie.
        if n > (self.bytes.len() - self.pos) / 16 {
            return Err(WireError::Malformed(at));
        }
        (0..n).map(|_| Ok((self.u64()?, self.u64()?))).collect()
    }

    /// The next message, or None at the end of the frame.
    pub fn next_msg(&mut self) -> Result<Option<Msg<'a>>, WireError> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let at = self.pos;
        let msg = match self.u8()? {
            1 => Msg::Hello(Hello {
                version: self.u16()?,
                link: self.string()?,
                credential: self.string()?,
                source_node: self.string()?,
                tenant: self.string()?,
                database: self.string()?,
                stream: self.u64()?,
                history: self.epochs()?,
            }),
            2 => Msg::Welcome {
                last_serial: self.u64()?,
                stream: self.u64()?,
                suspended: self.u8()? != 0,
                history: self.epochs()?,
            },
            4 => Msg::Follow {
                serial: self.u64()?,
            },
            3 => Msg::Refused {
                code: self.string()?,
                reason: self.string()?,
            },
            10 => Msg::TxnStart {
                txn: self.u64()?,
                first_serial: self.u64()?,
            },
            11 => Msg::Updates {
                txn: self.u64()?,
                chunk: self.bytes()?,
            },
            12 => Msg::TxnCompleted {
                txn: self.u64()?,
                last_serial: self.u64()?,
            },
            14 => Msg::Logical {
                txn: self.u64()?,
                first_serial: self.u64()?,
                last_serial: self.u64()?,
                ops: self.bytes()?,
            },
            16 => Msg::LogicalSnapshot {
                serial: self.u64()?,
                last: self.u8()? != 0,
                ops: self.bytes()?,
            },
            15 => {
                let txn = self.u64()?;
                let n = self.u32()? as usize;
                // Each dependency takes at least 20 bytes: a count past that is a lie.
                if n > (self.bytes.len() - self.pos) / 20 {
                    return Err(WireError::Malformed(at));
                }
                let mut deps = Vec::with_capacity(n);
                for _ in 0..n {
                    deps.push(Dependency {
                        database: self.string()?,
                        serial: self.u64()?,
                        before_us: self.u64()?,
                    });
                }
                Msg::Depends { txn, deps }
            }
            17 => {
                let txn = self.u64()?;
                let n = self.u32()? as usize;
                // Each stamp takes 41 bytes: a count past that is a lie.
                if n > (self.bytes.len() - self.pos) / 41 {
                    return Err(WireError::Malformed(at));
                }
                let mut stamps = Vec::with_capacity(n);
                for _ in 0..n {
                    let serial = self.u64()?;
                    let stamp = Stamp {
                        t: self.u64()?,
                        o: self.u64()?,
                        bt: self.u64()?,
                        bo: self.u64()?,
                        del: self.u8()? != 0,
                    };
                    stamps.push((serial, stamp));
                }
                Msg::Versions { txn, stamps }
            }
            13 => {
                let txn = self.u64()?;
                let last_serial = self.u64()?;
                let n = self.u32()? as usize;
                // Each chunk takes at least its 4-byte length: a count past that is a
                // lie (and would reserve 16 bytes a chunk up front).
                if n > (self.bytes.len() - self.pos) / 4 {
                    return Err(WireError::Malformed(at));
                }
                let mut b_chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    b_chunks.push(self.bytes()?);
                }
                Msg::Cancel {
                    txn,
                    last_serial,
                    b_chunks,
                }
            }
            20 => Msg::BackupCompleted {
                serial: self.u64()?,
            },
            21 => Msg::Retransmit { from: self.u64()? },
            22 => Msg::Watermark {
                serial: self.u64()?,
                timestamp_us: self.u64()?,
            },
            23 => Msg::Suspend,
            24 => Msg::Release,
            25 => Msg::Heartbeat,
            30 => Msg::SnapshotBegin {
                serial: self.u64()?,
                next_txn: self.u64()?,
                layout: self.bytes()?,
                size_bytes: self.u64()?,
            },
            31 => Msg::SnapshotPart {
                bytes: self.bytes()?,
            },
            32 => Msg::SnapshotEnd {
                checksum: self.u64()?,
            },
            33 => Msg::NeedBootstrap {
                reason: self.string()?,
            },
            _ => return Err(WireError::Malformed(at)),
        };
        Ok(Some(msg))
    }
}

/// Read one frame's payload (without its length prefix).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(len));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Read one frame's payload into `buf`, reusing its allocation.
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// Write a finished frame (from [`FrameWriter::finish`]).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), WireError> {
    if frame.len() - 4 > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(frame.len() - 4));
    }
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// A frame holding one message.
pub fn single(msg: &Msg<'_>) -> Vec<u8> {
    let mut w = FrameWriter::new();
    w.push(msg);
    w.finish()
}

/// Every message of a payload.
pub fn messages(payload: &[u8]) -> Result<Vec<Msg<'_>>, WireError> {
    let mut r = FrameReader::new(payload);
    let mut out = Vec::new();
    while let Some(m) = r.next_msg()? {
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg<'static>> {
        vec![
            Msg::Hello(Hello {
                version: PROTOCOL_VERSION,
                link: "l-1".into(),
                credential: "secret".into(),
                source_node: "n1".into(),
                tenant: "default".into(),
                database: "shop".into(),
                stream: 42,
                history: vec![(42, 1), (77, 1_000)],
            }),
            Msg::Welcome {
                last_serial: 7,
                stream: 42,
                suspended: true,
                history: vec![(42, 1)],
            },
            Msg::Follow { serial: 7 },
            Msg::Refused {
                code: "bad-credential".into(),
                reason: "no".into(),
            },
            Msg::TxnStart {
                txn: 3,
                first_serial: 8,
            },
            Msg::Updates {
                txn: 3,
                chunk: b"chunk",
            },
            Msg::TxnCompleted {
                txn: 3,
                last_serial: 9,
            },
            Msg::Cancel {
                txn: 4,
                last_serial: 12,
                b_chunks: vec![b"b1", b"b2"],
            },
            Msg::Logical {
                txn: 5,
                first_serial: 13,
                last_serial: 14,
                ops: b"[]",
            },
            Msg::Depends {
                txn: 6,
                deps: vec![
                    Dependency {
                        database: "orders".into(),
                        serial: 41,
                        before_us: 1_700_000_000_000_000,
                    },
                    Dependency {
                        database: "customers".into(),
                        serial: 0,
                        before_us: 1,
                    },
                ],
            },
            Msg::LogicalSnapshot {
                serial: 77,
                last: true,
                ops: b"ops",
            },
            Msg::Versions {
                txn: 3,
                stamps: vec![
                    (
                        8,
                        Stamp {
                            t: 1_700_000_000_000_001,
                            o: 0xdead_beef,
                            bt: 1_700_000_000_000_000,
                            bo: 7,
                            del: true,
                        },
                    ),
                    (9, Stamp::default()),
                ],
            },
            Msg::BackupCompleted { serial: 9 },
            Msg::Retransmit { from: 10 },
            Msg::Watermark {
                serial: 12,
                timestamp_us: 99,
            },
            Msg::Suspend,
            Msg::Release,
            Msg::Heartbeat,
            Msg::SnapshotBegin {
                serial: 5,
                next_txn: 2,
                layout: b"layout",
                size_bytes: 4096,
            },
            Msg::SnapshotPart { bytes: b"blocks" },
            Msg::SnapshotEnd { checksum: 7 },
            Msg::NeedBootstrap {
                reason: "diverged".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_in_one_frame() {
        let mut w = FrameWriter::new();
        for m in all() {
            w.push(&m);
        }
        let frame = w.finish();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(messages(&frame[4..]).unwrap(), all());
    }

    #[test]
    fn truncated_or_garbled_frames_are_errors_not_panics() {
        let mut w = FrameWriter::new();
        for m in all() {
            w.push(&m);
        }
        let frame = w.finish();
        let payload = &frame[4..];
        for cut in 0..payload.len() {
            // Every strict prefix that ends inside a message is malformed.
            let _ = messages(&payload[..cut]);
        }
        let mut garbled = payload.to_vec();
        for i in 0..garbled.len() {
            garbled[i] ^= 0xA5;
            let _ = messages(&garbled);
            garbled[i] ^= 0xA5;
        }
        assert_eq!(messages(&[99]), Err(WireError::Malformed(0)));
        assert!(messages(&[11, 1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_allocation() {
        let mut bytes: &[u8] = &((MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        let err = read_frame(&mut bytes).await.unwrap_err();
        assert_eq!(err, WireError::TooLarge(MAX_FRAME_BYTES + 1));
    }
}
