//! The target side: the replication listener and one session per connected link.
//!
//! A session checks the handshake (protocol version, a registered link, its credential,
//! the tenant and database it was registered for) and refuses anything else with a
//! [`Msg::Refused`] before closing. It then applies whole transactions in serial order:
//! a duplicate (a retransmission, a duplicated frame) is skipped, a gap (a lost or
//! reordered frame) asks for a retransmission from the first missing serial, and the
//! watermark the source sends with every frame and heartbeat reveals a gap at the end
//! of the stream too. After each frame the replica answers "backup completed" with its
//! last applied serial, once that is as durable as the replica's database promises; the
//! confirmations wait for the flush in a writing half of their own, so applying goes on
//! while the flush runs and one flush confirms many frames. At durability `none` there
//! is no flush to wait for: the reading half writes the confirmation itself on the turn
//! that applied the frame (no hand-off to the writing half), unless replies are queued
//! there before it.
//!
//! A session's steps: `serve` checks the handshake, `stream` welcomes the source and
//! starts the writing half (`write_replies`), and `apply_stream` reads frame after
//! frame and hands each to the session's `Applier` in one turn:
//! `Applier::begin_frame` (suspension notices, the spool replayed on release),
//! `Applier::on_msg` for each message (a mirror transaction applied or spooled when it
//! completes, `Applier::completed`; a logical one applied, `Applier::logical`; a
//! watermark checked for a gap at the end of the stream; a snapshot received and
//! installed), then
//! `Applier::end_frame` (the retransmission request, the confirmation). The socket is
//! read in the loop; the methods decide what a message does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use super::interrelation;
use super::links::{self, ReplicaReg};
use super::logical;
use super::mutual;
use super::net::{self, Listener, Reader, Writer};
use super::spool;
use super::wire::{self, FrameWriter, Msg};
use super::Replication;
use crate::log::codec;
use crate::log::durable::RawChunk;
use crate::node::database::ReplicaApply;
use crate::node::{Database, Durability};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A source sends a heartbeat every half second; this much silence ends the session.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accept replication connections until the node stops.
pub async fn listen(repl: Arc<Replication>, mut listener: Box<dyn Listener>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                let peer = conn.peer.clone();
                let repl = repl.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(async move {
                    if let Err(e) = serve(&repl, conn, rx).await {
                        tracing::info!(peer = %peer, error = %e, "replication session ended");
                    }
                });
                let _ = tx.send(task.abort_handle());
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Write one frame to the source.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), String> {
    wire::write_frame(w, frame)
        .await
        .map_err(|e| format!("answering the source: {e}"))
}

/// Refuse the handshake: tell the source why (if it still listens), then end the
/// session with the reason.
async fn refuse<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: &str,
    reason: String,
) -> Result<(), String> {
    let _ = send(
        w,
        &wire::single(&Msg::Refused {
            code: code.into(),
            reason: reason.clone(),
        }),
    )
    .await;
    Err(format!("refused: {reason}"))
}

/// A transaction being received.
struct Pending {
    txn: u64,
    chunks: Vec<RawChunk>,
}

/// A snapshot being received. Blocks are cut out of the parts as they arrive, so the
/// install only assembles them (no second copy of the whole store).
struct Incoming {
    serial: u64,
    next_txn: u64,
    layout: crate::store::snapshot::SnapshotLayout,
    size: u64,
    received: u64,
    blocks: Vec<crate::store::block::Block>,
    /// The start of a block split across two parts.
    carry: Vec<u8>,
    /// A block with a bad header arrived: the snapshot is damaged.
    bad: bool,
    hasher: xxhash_rust::xxh3::Xxh3,
    started: std::time::Instant,
    /// What the snapshot's records depend on in other databases (a `Depends` for
    /// [`wire::SNAPSHOT_TXN`] before its `SnapshotBegin`): it is installed only once the
    /// gates hold them, as a transaction would be (SPEC D3).
    deps: Option<Vec<wire::Dependency>>,
}

impl Incoming {
    /// Take one part: hashed, counted, and cut into whole blocks; a block split across
    /// parts waits in `carry` for its end.
    fn take_part(&mut self, mut bytes: &[u8]) {
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        let size = self.layout.block_size as usize;
        if size == 0 {
            self.bad = true;
            return;
        }
        if !self.carry.is_empty() {
            let need = (size - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..need]);
            bytes = &bytes[need..];
            if self.carry.len() == size {
                let whole = std::mem::take(&mut self.carry);
                self.push_block(&whole);
            }
        }
        let mut chunks = bytes.chunks_exact(size);
        for block in &mut chunks {
            self.push_block(block);
        }
        self.carry.extend_from_slice(chunks.remainder());
    }

    /// One whole block, or the mark that the snapshot is damaged.
    fn push_block(&mut self, bytes: &[u8]) {
        match crate::store::block::Block::from_bytes(bytes) {
            Some(b) => self.blocks.push(b),
            None => self.bad = true,
        }
    }
}

/// A replicated log chunk as the log stores it (its head read from its bytes).
fn chunk(bytes: &[u8]) -> Result<RawChunk, String> {
    let head = codec::peek(bytes).map_err(|e| format!("a replicated chunk: {e}"))?;
    Ok(RawChunk {
        head,
        bytes: bytes.into(),
    })
}

/// One connection: check the handshake (refusing what does not match a registered
/// link), take the link's session slot (`me` aborts this task when a newer connection
/// of the link takes it), then [`stream`].
async fn serve(
    repl: &Arc<Replication>,
    conn: net::Conn,
    me: tokio::sync::oneshot::Receiver<tokio::task::AbortHandle>,
) -> Result<(), String> {
    let net::Conn { mut rd, mut wr, .. } = conn;
    let payload = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut rd))
        .await
        .map_err(|_| "no handshake".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = match wire::messages(&payload).map(|m| m.into_iter().next()) {
        Ok(Some(Msg::Hello(h))) => h,
        _ => {
            return refuse(
                &mut wr,
                "protocol",
                "the first message must be a Hello".into(),
            )
            .await
        }
    };
    if hello.version != wire::PROTOCOL_VERSION {
        return refuse(
            &mut wr,
            "version",
            format!(
                "this node speaks replication protocol {}, the peer {}",
                wire::PROTOCOL_VERSION,
                hello.version
            ),
        )
        .await;
    }
    let reg: Option<ReplicaReg> = repl.replica(&hello.link).filter(|r| {
        links::constant_time_eq(
            &r.credential_sha256,
            &links::credential_hash(&hello.credential),
        ) && r.tenant == hello.tenant
            && r.database == hello.database
    });
    let Some(reg) = reg else {
        tracing::warn!(link = %hello.link, source = %hello.source_node, "replication peer refused: unknown link or bad credential");
        return refuse(
            &mut wr,
            "unknown-link",
            "unknown link or bad credential".into(),
        )
        .await;
    };
    let db = match repl.node.database(&reg.tenant, &reg.database) {
        Ok(db) => db,
        Err(e) => return refuse(&mut wr, "no-database", e.to_string()).await,
    };
    if let Ok(abort) = me.await {
        repl.set_session(&reg.link, abort);
    }
    let result = stream(repl, &reg, &hello, &db, rd, wr).await;
    repl.end_session(&reg.link, tokio::task::id());
    result
}

/// What the session's writing half sends.
enum Reply {
    /// A frame to send now.
    Frame(Vec<u8>),
    /// Confirm `serial` once the replica's log is as durable as its database promises.
    Ack(u64),
    /// Confirm nothing more until this (a bootstrap snapshot being stored) is done.
    Wait(tokio::task::JoinHandle<Result<(), String>>),
}

/// The session's way back to the source: the writing half's queue and, for a replica
/// whose confirmations wait for no flush (durability `none`), the socket itself.
struct Answers {
    tx: mpsc::Sender<Reply>,
    /// Replies handed to the writing half and not yet written.
    queued: Arc<AtomicUsize>,
    wr: Arc<tokio::sync::Mutex<Writer>>,
    /// Confirmations wait for no flush: the reading half writes them itself.
    direct: bool,
}

impl Answers {
    /// Send `frame` (replies, a confirmation that needs no flush) from the reading half
    /// itself, on this turn, when nothing queued for the writing half must go before it;
    /// otherwise queue it behind what is.
    async fn answer(&self, frame: &[u8]) -> Result<(), String> {
        if self.queued.load(Ordering::SeqCst) == 0 {
            // Nothing queued: the writing half is idle and holds no lock.
            if let Ok(mut wr) = self.wr.try_lock() {
                return send(&mut *wr, frame).await;
            }
        }
        queue(self, Reply::Frame(frame.to_vec())).await
    }
}

/// The writing half: sends replies in order, and confirms applied serials after the
/// group flush that covers them, several at once when they queue up while a flush
/// runs. The reading half never waits for a flush.
async fn write_replies(
    db: Arc<Database>,
    wr: Arc<tokio::sync::Mutex<Writer>>,
    mut rx: mpsc::Receiver<Reply>,
    queued: Arc<AtomicUsize>,
) -> Result<(), String> {
    while let Some(first) = rx.recv().await {
        let mut ack = None;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(reply) = next.take().or_else(|| rx.try_recv().ok()) {
            taken += 1;
            match reply {
                Reply::Frame(frame) => send(&mut *wr.lock().await, &frame).await?,
                Reply::Ack(serial) => ack = ack.max(Some(serial)),
                Reply::Wait(task) => {
                    if let Some(serial) = ack.take() {
                        db.await_durable()
                            .await
                            .map_err(|e| format!("the replica's log: {e}"))?;
                        let frame = wire::single(&Msg::BackupCompleted { serial });
                        send(&mut *wr.lock().await, &frame).await?;
                    }
                    task.await.map_err(|e| e.to_string())??;
                }
            }
        }
        if let Some(serial) = ack {
            db.await_durable()
                .await
                .map_err(|e| format!("the replica's log: {e}"))?;
            let frame = wire::single(&Msg::BackupCompleted { serial });
            send(&mut *wr.lock().await, &frame).await?;
        }
        // Written: the reading half may write again itself.
        queued.fetch_sub(taken, Ordering::SeqCst);
    }
    Ok(())
}

/// Welcome the source with where the replica stands (a fresh replica adopts the
/// source's stream), then apply its stream with the writing half ([`write_replies`])
/// running beside it until either ends.
async fn stream(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Arc<Database>,
    mut rd: Reader,
    mut wr: Writer,
) -> Result<(), String> {
    let last = applied(reg, db, hello.stream).max(
        repl.target
            .spool
            .last(&reg.link)
            .map_err(|e| e.to_string())?
            .unwrap_or(0),
    );
    let mut stream = reg.stream;
    if stream == 0 && last == 0 {
        repl.adopt_stream(&reg.link, hello.stream)
            .map_err(|e| e.to_string())?;
        stream = hello.stream;
    }
    // A logical replica's positions are per stream: its log's history says nothing.
    let history = match reg.apply {
        links::Apply::Mirror => repl.history(db).map_err(|e| e.to_string())?,
        links::Apply::Logical => Vec::new(),
    };
    send(
        &mut wr,
        &wire::single(&Msg::Welcome {
            last_serial: last,
            stream,
            suspended: false,
            history,
        }),
    )
    .await?;
    tracing::info!(link = %reg.link, database = %reg.database, serial = last, "replica connected");
    let (tx, rx) = mpsc::channel(1024);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let queued = Arc::new(AtomicUsize::new(0));
    let answers = Answers {
        tx,
        queued: queued.clone(),
        wr: wr.clone(),
        direct: db.def.spec.durability == Durability::None,
    };
    let writer = tokio::spawn(write_replies(db.clone(), wr, rx, queued));
    let result = apply_stream(repl, reg, hello, db, &mut rd, &answers).await;
    drop(answers);
    // Whatever the reading half queued (a refusal, a request for a snapshot) goes out.
    let written = writer.await.map_err(|e| e.to_string())?;
    result.and(written)
}

/// How far the replica got: its own serial (mirror) or its position in the source's
/// stream (logical).
fn applied(reg: &ReplicaReg, db: &Database, stream: u64) -> u64 {
    match reg.apply {
        links::Apply::Logical => db.position(stream),
        links::Apply::Mirror => db.serials().0,
    }
}

/// What came for transaction `txn` just before it (versions, dependencies), taken out
/// of `slot`: None if it was for another transaction (that one's is dropped too).
fn for_txn<T>(slot: &mut Option<(u64, T)>, txn: u64) -> Option<T> {
    slot.take().filter(|(t, _)| *t == txn).map(|(_, v)| v)
}

/// Apply a mutual link's transaction (or bootstrap part, `position` None): each write
/// against the version held here, conflicts decided by the link's resolver and kept in
/// the conflict log.
#[allow(clippy::too_many_arguments)]
fn apply_mutual(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Database,
    schema: &crate::store::Schema,
    resolver: &mut mutual::Resolver,
    position: Option<(u64, u64)>,
    ops: &[u8],
    stamps: &[(u64, crate::node::versions::Stamp)],
) -> Result<ReplicaApply, String> {
    let writes = mutual::incoming(schema, ops, stamps).map_err(|e| e.to_string())?;
    // An update of a transaction come back to this node is a loop. A bootstrap part
    // (`position` None) is the source's whole store, with what this node wrote and
    // the source applied: held here already (the same version, skipped), not a loop.
    let here = repl.origin();
    let returned = match position {
        Some(_) => writes.iter().filter(|w| w.stamp.o == here).count() as u64,
        None => 0,
    };
    let received = writes.len() as u64;
    let mut notes = Vec::new();
    let (applied, seen) = net::blocking(|| {
        db.apply_mutual(hello.stream, position, writes, &mut |c| {
            let (decision, note) = resolver.decide(c);
            notes.push(note);
            decision
        })
    })
    .map_err(|e| e.to_string())?;
    let here = repl.node_id.clone();
    let source = reg.source_node.clone();
    let names = move |o: u64| {
        [&here, &source]
            .into_iter()
            .find(|n| crate::node::versions::origin_of(n) == o)
            .cloned()
    };
    {
        let mut counts = repl.target.mutual_counts.lock();
        let c = counts.entry(reg.link.clone()).or_default();
        c.writes += received;
        c.conflicts += seen.len() as u64;
        c.returned += returned;
    }
    let seen: Vec<_> = seen.into_iter().zip(notes).collect();
    net::blocking(|| {
        repl.conflicts
            .record(db.def.uid, &reg.link, resolver.strategy(), &seen, &names)
    })
    .map_err(|e| e.to_string())?;
    Ok(applied)
}

/// Hand a reply to the writing half.
async fn queue(tx: &Answers, reply: Reply) -> Result<(), String> {
    tx.queued.fetch_add(1, Ordering::SeqCst);
    tx.tx
        .send(reply)
        .await
        .map_err(|_| "the connection to the source is closed".to_string())
}

/// Hand a frame to the writing half, to be sent in order with the confirmations.
async fn reply_now(tx: &Answers, frame: Vec<u8>) -> Result<(), String> {
    queue(tx, Reply::Frame(frame)).await
}

/// Apply the stream, frame by frame, until the connection ends or something does not
/// apply (Err). Each frame is one turn: [`Applier::begin_frame`] (attachment, the
/// spool's replay on release), [`Applier::on_msg`] for each message, then
/// [`Applier::end_frame`] (a retransmission request, the confirmation). The socket read
/// is here; what a message does is the [`Applier`]'s.
async fn apply_stream(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Arc<Database>,
    rd: &mut Reader,
    tx: &Answers,
) -> Result<(), String> {
    let mut s = Applier::new(repl, reg, hello, db, tx)?;
    let mut payload = Vec::new();
    loop {
        tokio::time::timeout(IDLE_TIMEOUT, wire::read_frame_into(rd, &mut payload))
            .await
            .map_err(|_| "the source went silent".to_string())?
            .map_err(|e| format!("the source's connection: {e}"))?;
        let msgs = wire::messages(&payload).map_err(|e| format!("from the source: {e}"))?;
        let mut turn = s.begin_frame().await?;
        for msg in msgs {
            s.on_msg(msg, &mut turn).await?;
        }
        s.end_frame(turn).await?;
    }
}

/// What one frame brings about.
struct Turn {
    /// The replica's messages besides the confirmation (attachment, retransmission).
    reply: FrameWriter,
    /// The frame carried something to confirm (a transaction, a watermark, a heartbeat).
    answer: bool,
    /// The first missing serial, and whether a watermark showed it. A gap seen in the
    /// transactions asks once per missing serial; one a watermark shows (nothing
    /// arrives after the loss) asks again at every heartbeat.
    gap: Option<(u64, bool)>,
    /// The replica is suspended: mirror transactions go to the spool.
    suspended: bool,
}

/// One session's state on the target between frames: the transaction and snapshot
/// being received, what was spooled, the interrelation and version information waiting
/// for its transaction, and the last retransmission asked for. Every early return of
/// its methods is an Err that ends the session (after a refusal or a request for a
/// snapshot queued to the source).
///
/// Invariants: transactions apply in serial order, each from the replica's position
/// plus one (the database checks it and answers Duplicate or Gap otherwise; the spool
/// takes only the next serial); a confirmation is the replica's applied (or spooled)
/// serial at the time it is queued, never a serial from a message.
struct Applier<'a> {
    repl: &'a Replication,
    reg: &'a ReplicaReg,
    hello: &'a wire::Hello,
    db: &'a Arc<Database>,
    tx: &'a Answers,
    /// A database's files are fixed when it is created: resolve logical operations
    /// against one copy of the schema for the whole session.
    schema: crate::store::Schema,
    /// The stream's key for the interrelation gates.
    key: interrelation::StreamKey,
    pending: Option<Pending>,
    incoming: Option<Incoming>,
    /// The serial a retransmission was last asked from (until something applies).
    requested: Option<u64>,
    /// Spooled while suspended and not applied yet: the serial to continue from.
    spooled: Option<u64>,
    /// Spooled since the last confirmation: flush the spool before the next one.
    spool_unflushed: bool,
    told_suspended: bool,
    /// Interrelation information for the transaction that follows it (SPEC D1).
    depends: Option<(u64, Vec<wire::Dependency>)>,
    /// A mutual link's record versions for the transaction that follows them (SPEC F4).
    versions: Option<(u64, Vec<(u64, crate::node::versions::Stamp)>)>,
    resolver: Option<mutual::Resolver>,
    /// What the replica held when the session began (the Welcome's serial): a `Follow`
    /// may discard only that, never what this session applied.
    held_at_start: u64,
}

impl<'a> Applier<'a> {
    fn new(
        repl: &'a Replication,
        reg: &'a ReplicaReg,
        hello: &'a wire::Hello,
        db: &'a Arc<Database>,
        tx: &'a Answers,
    ) -> Result<Applier<'a>, String> {
        let schema = db.schema();
        let spooled = repl
            .target
            .spool
            .last(&reg.link)
            .map_err(|e| e.to_string())?;
        let resolver = match &reg.conflicts {
            Some(spec) => Some(
                mutual::Resolver::load(&repl.plugins, &reg.tenant, spec)
                    .map_err(|e| format!("link {}: {e}", reg.link))?,
            ),
            None => None,
        };
        let held_at_start = applied(reg, db, hello.stream).max(spooled.unwrap_or(0));
        Ok(Applier {
            held_at_start,
            repl,
            reg,
            hello,
            db,
            tx,
            schema,
            key: Replication::stream_key(reg),
            pending: None,
            incoming: None,
            requested: None,
            spooled,
            spool_unflushed: false,
            told_suspended: false,
            depends: None,
            versions: None,
            resolver,
        })
    }

    /// How far the replica got in this stream ([`applied`]).
    fn applied(&self) -> u64 {
        applied(self.reg, self.db, self.hello.stream)
    }

    /// What the replica holds: applied, or spooled beyond that.
    fn held(&self) -> u64 {
        self.applied().max(self.spooled.unwrap_or(0))
    }

    /// The start of a frame's turn: tell the source when the replica was suspended or
    /// released since the last frame, and on release apply the spool first.
    async fn begin_frame(&mut self) -> Result<Turn, String> {
        let mut turn = Turn {
            reply: FrameWriter::new(),
            answer: false,
            gap: None,
            suspended: self.repl.is_suspended(&self.reg.link),
        };
        if turn.suspended != self.told_suspended {
            turn.reply.push(if turn.suspended {
                &Msg::Suspend
            } else {
                &Msg::Release
            });
            self.told_suspended = turn.suspended;
        }
        if !turn.suspended && self.spooled.is_some() {
            self.replay_spool().await?;
        }
        Ok(turn)
    }

    /// Released: apply what was spooled while suspended, in order, then stream on.
    async fn replay_spool(&mut self) -> Result<(), String> {
        let mut n = 0;
        while let Some(mut entry) = self
            .repl
            .target
            .spool
            .first(&self.reg.link)
            .map_err(|e| e.to_string())?
        {
            let last = spool::last_serial(&entry.chunks).unwrap_or(0);
            // Released, a spooled transaction still waits for what it depends on
            // in other databases (SPEC D3), like one that arrives now.
            self.hold(Some(std::mem::take(&mut entry.deps)), last)
                .await?;
            match self.db.apply_replicated(&entry.chunks) {
                Err(e) => {
                    let reason = format!("replaying a spooled transaction: {e}");
                    return ask_snapshot(self.tx, &reason).await;
                }
                Ok(applied) => debug_assert!(
                    !matches!(applied, ReplicaApply::Gap(_)),
                    "the spool holds the serials after the applied one, in order"
                ),
            }
            self.repl.target.gates.applied(&self.key, last, false);
            self.repl
                .target
                .spool
                .remove(&entry)
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        tracing::info!(link = %self.reg.link, transactions = n, "replica released; spooled transactions applied");
        self.spooled = None;
        Ok(())
    }

    /// One message of the frame.
    async fn on_msg(&mut self, msg: Msg<'_>, turn: &mut Turn) -> Result<(), String> {
        let streaming = matches!(msg, Msg::TxnStart { .. } | Msg::Watermark { .. });
        if streaming && self.incoming.is_some() {
            // The source streams only after a snapshot's end: that end was lost. Left
            // waiting for it, the replica would never see a gap at the end of the
            // stream again (found by the simulation).
            self.incoming = None;
            return ask_snapshot(self.tx, "the snapshot's end was lost").await;
        }
        match msg {
            Msg::Depends { txn, deps } => self.depends = Some((txn, deps)),
            Msg::Versions { txn, stamps } => self.versions = Some((txn, stamps)),
            Msg::TxnStart { txn, .. } => {
                self.pending = Some(Pending {
                    txn,
                    chunks: Vec::new(),
                })
            }
            Msg::Updates { txn, chunk: bytes } => match self.pending.as_mut() {
                Some(p) if p.txn == txn => p.chunks.push(chunk(bytes)?),
                _ => self.pending = None,
            },
            Msg::TxnCompleted { txn, .. } => self.completed(txn, &[], turn).await?,
            Msg::Cancel { txn, b_chunks, .. } => self.completed(txn, &b_chunks, turn).await?,
            Msg::Logical {
                txn,
                first_serial,
                last_serial,
                ops,
            } => {
                self.logical(txn, first_serial, last_serial, ops, turn)
                    .await?
            }
            Msg::LogicalSnapshot { serial, last, ops } => {
                self.logical_snapshot(serial, last, ops, turn).await?
            }
            Msg::Watermark {
                serial,
                timestamp_us,
            } => self.watermark(serial, timestamp_us, turn),
            Msg::Heartbeat => turn.answer = true,
            Msg::SnapshotBegin {
                serial,
                next_txn,
                layout,
                size_bytes,
            } => {
                self.snapshot_begin(serial, next_txn, layout, size_bytes)
                    .await?
            }
            Msg::SnapshotPart { bytes } => self.snapshot_part(bytes),
            Msg::SnapshotEnd { checksum } => self.snapshot_end(checksum, turn).await?,
            Msg::Follow { serial } => self.follow(serial, turn).await?,
            other => {
                tracing::debug!(link = %self.reg.link, message = ?other, "unexpected message ignored");
            }
        }
        Ok(())
    }

    /// The end of a frame's turn: ask for a retransmission if a gap showed, send the
    /// replies, and confirm what the replica holds if the frame asked for an answer.
    /// At durability `none` the confirmation goes out now, on this turn, with the
    /// replies in one frame; otherwise (or while replies are queued before it) the
    /// writing half sends it after the flush that covers it.
    async fn end_frame(&mut self, mut turn: Turn) -> Result<(), String> {
        if let Some(from) = self.retransmit_from(turn.gap) {
            turn.reply.push(&Msg::Retransmit { from });
        }
        if turn.answer && self.spool_unflushed {
            // A confirmation covers what was spooled: it must be on disk, and the
            // spool is in the node's sled, which the database's flush does not cover.
            let spool = &self.repl.target.spool;
            net::blocking(|| spool.flush()).map_err(|e| e.to_string())?;
            self.spool_unflushed = false;
        }
        let confirm = turn.answer.then(|| self.confirmable());
        if self.tx.direct {
            if let Some(serial) = confirm {
                turn.reply.push(&Msg::BackupCompleted { serial });
            }
            if !turn.reply.is_empty() {
                self.tx.answer(turn.reply.frame()).await?;
            }
            return Ok(());
        }
        if !turn.reply.is_empty() {
            reply_now(self.tx, turn.reply.finish()).await?;
        }
        if let Some(serial) = confirm {
            queue(self.tx, Reply::Ack(serial)).await?;
        }
        Ok(())
    }

    /// The serial a confirmation names: what the replica holds.
    #[cfg(not(feature = "sim-bug-early-ack"))]
    fn confirmable(&self) -> u64 {
        self.held()
    }

    /// A known bug, put back on purpose for the simulation to find (docs/RELIABILITY.md):
    /// the replica confirms the highest serial the source announced, whether it holds it
    /// or not (a gap does not hold the confirmation back).
    #[cfg(feature = "sim-bug-early-ack")]
    fn confirmable(&self) -> u64 {
        let announced = self
            .repl
            .target
            .announced
            .lock()
            .get(&self.reg.link)
            .copied();
        self.held().max(announced.unwrap_or(0))
    }

    /// The serial to ask a retransmission from, if any: a gap seen in the transactions
    /// is asked for once (until something applies); one a watermark shows, every time.
    fn retransmit_from(&mut self, gap: Option<(u64, bool)>) -> Option<u64> {
        let (expected, from_watermark) = gap?;
        if self.requested == Some(expected) && !from_watermark {
            return None;
        }
        self.requested = Some(expected);
        Some(expected)
    }

    /// The end (completion or cancel, with the B chunks that restore the before images)
    /// of mirror transaction `txn`: applied, or spooled while the replica is suspended.
    /// One whose start or a chunk went missing is dropped: the gap shows on the next.
    async fn completed(
        &mut self,
        txn: u64,
        b_chunks: &[&[u8]],
        turn: &mut Turn,
    ) -> Result<(), String> {
        turn.answer = true;
        let Some(mut p) = self.pending.take().filter(|p| p.txn == txn) else {
            return Ok(());
        };
        for b in b_chunks {
            p.chunks.push(chunk(b)?);
        }
        if turn.suspended {
            self.spool_txn(txn, &p.chunks, turn)
        } else {
            self.apply_txn(txn, &p.chunks, turn).await
        }
    }

    /// Keep a mirror transaction in the spool while the replica is suspended, if it is
    /// the next one after what the replica holds (a duplicate is skipped, a gap asked
    /// for).
    fn spool_txn(&mut self, txn: u64, chunks: &[RawChunk], turn: &mut Turn) -> Result<(), String> {
        let first = chunks.first().map_or(0, |c| c.head.first_serial);
        let last = spool::last_serial(chunks).unwrap_or(0);
        let have = self.spooled.unwrap_or(0).max(self.applied());
        if last <= have {
            return Ok(());
        }
        if first != have + 1 {
            turn.gap = Some((have + 1, false));
            return Ok(());
        }
        debug_assert!(last >= first, "a transaction ends at or after its start");
        let deps = for_txn(&mut self.depends, txn).unwrap_or_default();
        self.repl
            .target
            .spool
            .push(&self.reg.link, first, chunks, &deps)
            .map_err(|e| e.to_string())?;
        self.spooled = Some(last);
        self.spool_unflushed = true;
        self.requested = None;
        Ok(())
    }

    /// Apply a mirror transaction once what it depends on is here ([`Self::hold`]); a
    /// duplicate is skipped, a gap asked for; one that does not apply means the replica
    /// diverged: it asks for a snapshot (Err).
    async fn apply_txn(
        &mut self,
        txn: u64,
        chunks: &[RawChunk],
        turn: &mut Turn,
    ) -> Result<(), String> {
        let last = spool::last_serial(chunks).unwrap_or(0);
        let deps = for_txn(&mut self.depends, txn);
        self.hold(deps, last).await?;
        match self.db.apply_replicated(chunks) {
            Ok(outcome) => self.took(outcome, last, turn),
            Err(e) => {
                let reason = format!("applying transaction {txn}: {e}");
                tracing::error!(link = %self.reg.link, error = %reason, "replica diverged; asking for a snapshot");
                return ask_snapshot(self.tx, &reason).await;
            }
        }
        Ok(())
    }

    /// What applying a transaction that ends at source serial `last` leaves: the gates
    /// learn how far the replica got, a duplicate changes nothing, a gap asks for a
    /// retransmission.
    fn took(&mut self, outcome: ReplicaApply, last: u64, turn: &mut Turn) {
        match outcome {
            ReplicaApply::Applied(at) => {
                debug_assert_eq!(at, last, "the replica stands at the transaction's end");
                self.requested = None;
                self.repl.target.gates.applied(&self.key, last, false);
            }
            ReplicaApply::Duplicate => {}
            ReplicaApply::Gap(expected) => turn.gap = Some((expected, false)),
        }
    }

    /// Apply a logical transaction (source serials `first..=last`) once what it depends
    /// on is here: through the resolver on a mutual link, as plain operations otherwise.
    /// One that does not apply is refused (Err).
    async fn logical(
        &mut self,
        txn: u64,
        first: u64,
        last: u64,
        ops: &[u8],
        turn: &mut Turn,
    ) -> Result<(), String> {
        turn.answer = true;
        let deps = for_txn(&mut self.depends, txn);
        self.hold(deps, last).await?;
        let applied = match self.through_resolver(txn, Some((first, last)), ops) {
            Some(applied) => applied,
            None => logical::decode_ops(&self.schema, ops)
                .and_then(|ops| self.db.apply_logical(self.hello.stream, first, last, ops))
                .map_err(|e| e.to_string()),
        };
        match applied {
            Ok(outcome) => self.took(outcome, last, turn),
            Err(e) => {
                let reason = format!("transaction {txn} (source serials {first}-{last}): {e}");
                tracing::error!(link = %self.reg.link, error = %reason, "a logical transaction does not apply");
                return refuse_stream(self.tx, reason).await;
            }
        }
        Ok(())
    }

    /// Apply `ops` through a mutual link's resolver, with the versions that came for
    /// transaction `versions_of` (0: a bootstrap's); `range` is the source serials of a
    /// transaction, None for a bootstrap part. None when the link is not mutual.
    fn through_resolver(
        &mut self,
        versions_of: u64,
        range: Option<(u64, u64)>,
        ops: &[u8],
    ) -> Option<Result<ReplicaApply, String>> {
        let resolver = self.resolver.as_mut()?;
        let stamps = for_txn(&mut self.versions, versions_of).unwrap_or_default();
        Some(apply_mutual(
            self.repl,
            self.reg,
            self.hello,
            self.db,
            &self.schema,
            resolver,
            range,
            ops,
            &stamps,
        ))
    }

    /// A part of a logical bootstrap (records as upserts, or through the resolver on a
    /// mutual link); the last one sets the replica's position in the stream to
    /// `serial` and is confirmed.
    async fn logical_snapshot(
        &mut self,
        serial: u64,
        last: bool,
        ops: &[u8],
        turn: &mut Turn,
    ) -> Result<(), String> {
        let applied = match self.through_resolver(0, None, ops) {
            Some(applied) => applied.map(|_| ()),
            None => logical::decode_ops(&self.schema, ops)
                .and_then(|ops| self.db.apply_redriven(ops))
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = applied {
            let reason = format!("the logical bootstrap at serial {serial}: {e}");
            return refuse_stream(self.tx, reason).await;
        }
        if last {
            self.db
                .set_position(self.hello.stream, serial)
                .map_err(|e| format!("the logical bootstrap: {e}"))?;
            self.bootstrapped(serial)?;
            tracing::info!(link = %self.reg.link, serial, "logical bootstrap applied");
            turn.answer = true;
        }
        Ok(())
    }

    /// The source's watermark: announced to the gates, and a gap at the end of the
    /// stream (nothing being received, the replica short of it) is asked for.
    fn watermark(&mut self, serial: u64, timestamp_us: u64, turn: &mut Turn) {
        turn.answer = true;
        self.repl.announce(&self.reg.link, serial, false);
        self.repl
            .target
            .gates
            .watermark(&self.key, serial, timestamp_us, self.applied());
        let have = self.held();
        if serial > have && self.pending.is_none() && self.incoming.is_none() {
            turn.gap = Some((have + 1, true));
        }
    }

    /// A snapshot begins: refused over the database's memory quota; an unreadable
    /// layout asks for another snapshot.
    async fn snapshot_begin(
        &mut self,
        serial: u64,
        next_txn: u64,
        layout: &[u8],
        size_bytes: u64,
    ) -> Result<(), String> {
        if size_bytes > self.db.def.spec.memory_quota_bytes {
            let reason = format!(
                "the snapshot holds {size_bytes} bytes of blocks, over database '{}''s memory quota of {}",
                self.reg.database, self.db.def.spec.memory_quota_bytes
            );
            let refusal = wire::single(&Msg::Refused {
                code: "quota".into(),
                reason: reason.clone(),
            });
            reply_now(self.tx, refusal).await?;
            return Err(reason);
        }
        let layout: crate::store::snapshot::SnapshotLayout = match postcard::from_bytes(layout) {
            Ok(l) => l,
            Err(e) => {
                return ask_snapshot(self.tx, &format!("an unreadable snapshot layout: {e}")).await
            }
        };
        let count = (size_bytes / u64::from(layout.block_size.max(1))) as usize;
        self.incoming = Some(Incoming {
            serial,
            next_txn,
            layout,
            size: size_bytes,
            received: 0,
            blocks: Vec::with_capacity(count),
            carry: Vec::new(),
            bad: false,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            started: std::time::Instant::now(),
            deps: for_txn(&mut self.depends, wire::SNAPSHOT_TXN),
        });
        Ok(())
    }

    /// A snapshot part: cut into blocks; more bytes than announced drop the snapshot
    /// (its end then asks for another).
    fn snapshot_part(&mut self, bytes: &[u8]) {
        if let Some(s) = self.incoming.as_mut() {
            if s.received + bytes.len() as u64 > s.size {
                self.incoming = None;
            } else {
                s.take_part(bytes);
            }
        }
    }

    /// The snapshot is complete: checked, installed in place of the store (the spool
    /// dropped), and stored in the background; nothing more is confirmed until it is
    /// stored. A lost or damaged one asks for another (Err).
    async fn snapshot_end(&mut self, checksum: u64, turn: &mut Turn) -> Result<(), String> {
        let Some(s) = self.incoming.take() else {
            return ask_snapshot(self.tx, "a snapshot part was lost").await;
        };
        if s.hasher.digest() != checksum || s.received != s.size || s.bad || !s.carry.is_empty() {
            return ask_snapshot(self.tx, "the snapshot arrived damaged").await;
        }
        let (bytes, transfer, serial) = (s.size, s.started.elapsed(), s.serial);
        let mut s = s;
        // An interrelated snapshot becomes visible only with what its records depend on
        // (nothing is confirmed meanwhile: what the replica held before the snapshot is
        // not of the stream it is joining).
        if let Some(deps) = s.deps.take() {
            self.wait_for_deps(&deps).await;
        }
        let installing = std::time::Instant::now();
        self.repl
            .target
            .spool
            .clear(&self.reg.link)
            .map_err(|e| e.to_string())?;
        self.spooled = None;
        let save = install(self.db, s).await?;
        let saving = tokio::task::spawn_blocking(move || {
            save.save()
                .map_err(|e| format!("storing the bootstrap snapshot: {e}"))
        });
        queue(self.tx, Reply::Wait(saving)).await?;
        tracing::info!(
            link = %self.reg.link,
            bytes,
            transfer_secs = transfer.as_secs_f64(),
            install_secs = installing.elapsed().as_secs_f64(),
            "bootstrap snapshot installed"
        );
        self.bootstrapped(serial)?;
        turn.answer = true;
        Ok(())
    }

    /// The source continues the stream after `serial`, which both logs hold (their
    /// histories say so, `transport::history`): a replica holding more discards it
    /// first, and from now on follows the source's stream and history.
    async fn follow(&mut self, serial: u64, turn: &mut Turn) -> Result<(), String> {
        let held = self.held();
        if held > self.held_at_start.max(serial) {
            // The source sends it first; transactions of this session applied before it
            // mean frames arrived out of order. Discarding them would drop what was
            // confirmed (a synchronous commit, found by the simulation): end the
            // session, the next handshake starts over from what the replica holds.
            return Err(format!(
                "a Follow at serial {serial} arrived after this session's transactions \
                 (the replica holds {held}, {} at the handshake)",
                self.held_at_start
            ));
        }
        if held > serial {
            if self.spooled.is_some() || self.reg.apply != links::Apply::Mirror {
                let reason = format!(
                    "the replica holds serials {}..={held} that the source's history does not",
                    serial + 1
                );
                return ask_snapshot(self.tx, &reason).await;
            }
            self.discard_tail(serial, held).await?;
        }
        if held == serial && self.reg.stream != self.hello.stream {
            tracing::info!(link = %self.reg.link, serial, "the replica's log is a prefix of its new source's: it follows on by serial");
        }
        self.repl
            .adopt_stream(&self.reg.link, self.hello.stream)
            .map_err(|e| e.to_string())?;
        let before = self
            .repl
            .stored_history(self.db)
            .map_err(|e| e.to_string())?;
        self.repl
            .save_history(self.db, &self.hello.history)
            .map_err(|e| e.to_string())?;
        if before != self.hello.history {
            // This database's own replicas were told the old history when their
            // sessions began (a chain's middle node can follow its source after its
            // replica followed it): they connect again and learn the new one.
            self.repl.restart_links_of(&self.reg.tenant, self.db.name());
        }
        turn.answer = true;
        Ok(())
    }

    /// Drop the replica's diverged tail, serials `serial + 1..=held`: its store goes back
    /// to what it was at `serial`, rebuilt from its own snapshot and A log
    /// ([`crate::node::restore::store_at`]), and becomes its snapshot there; nothing
    /// crosses the network. A snapshot is asked for when its log no longer reaches back.
    async fn discard_tail(&mut self, serial: u64, held: u64) -> Result<(), String> {
        let started = std::time::Instant::now();
        let db = self.db.clone();
        let rolled = tokio::task::spawn_blocking(move || {
            let Some(store) =
                crate::node::restore::store_at(&db, serial).map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let (layout, blocks) = store.snapshot_parts();
            let blocks = blocks.into_iter().cloned().collect();
            let next_txn = db.freeze().2;
            db.install_snapshot(layout, blocks, serial, next_txn)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e: String| format!("discarding the replica's diverged tail: {e}"))?;
        let Some(save) = rolled else {
            let reason = format!(
                "the replica's log no longer reaches serial {serial}, where its source's \
                 history and its own part"
            );
            return ask_snapshot(self.tx, &reason).await;
        };
        let saving = tokio::task::spawn_blocking(move || {
            save.save()
                .map_err(|e| format!("storing the replica at serial {serial}: {e}"))
        });
        queue(self.tx, Reply::Wait(saving)).await?;
        tracing::info!(link = %self.reg.link, serial, discarded = held - serial, took_ms = started.elapsed().as_millis() as u64, "the replica's diverged tail was discarded; it follows on by serial");
        self.repl.target.gates.applied(&self.key, serial, true);
        self.repl.announce(&self.reg.link, serial, true);
        Ok(())
    }

    /// A bootstrap brought the replica to `serial` of this source's stream: the link
    /// adopts the stream and the source's history, the gates and the link's followers
    /// learn the new position.
    fn bootstrapped(&mut self, serial: u64) -> Result<(), String> {
        self.repl
            .adopt_stream(&self.reg.link, self.hello.stream)
            .map_err(|e| e.to_string())?;
        if self.reg.apply == links::Apply::Mirror {
            self.repl
                .save_history(self.db, &self.hello.history)
                .map_err(|e| e.to_string())?;
        }
        self.repl.target.gates.applied(&self.key, serial, true);
        self.repl.announce(&self.reg.link, serial, true);
        self.requested = None;
        Ok(())
    }

    /// Before applying a transaction ending at source serial `last`: if interrelation
    /// information (`deps`) came for it, wait until the updates it depends on in other
    /// databases are applied on this node (SPEC D3). What was applied before is
    /// confirmed first, so a held transaction never holds up its predecessors'
    /// confirmations (and that confirmation never covers it).
    async fn hold(&self, deps: Option<Vec<wire::Dependency>>, last: u64) -> Result<(), String> {
        let Some(deps) = deps else {
            return Ok(());
        };
        let done = self.applied();
        if last <= done {
            return Ok(());
        }
        debug_assert!(
            done < last,
            "a confirmation never covers a held transaction"
        );
        queue(self.tx, Reply::Ack(done)).await?;
        self.wait_for_deps(&deps).await;
        Ok(())
    }

    /// Wait until the interrelation gates hold what `deps` name (SPEC D).
    async fn wait_for_deps(&self, deps: &[wire::Dependency]) {
        self.repl
            .target
            .gates
            .hold(
                &self.reg.link,
                &self.reg.source_node,
                &self.reg.tenant,
                deps,
            )
            .await;
    }
}

/// Refuse what the source sent (through the writing half, which sends it before
/// closing) and end the session with the reason.
async fn refuse_stream(tx: &Answers, reason: String) -> Result<(), String> {
    let refusal = wire::single(&Msg::Refused {
        code: "apply".into(),
        reason: reason.clone(),
    });
    let _ = reply_now(tx, refusal).await;
    Err(reason)
}

/// Ask the source for a snapshot (the replica cannot go on from where it is) and end
/// the session with the reason.
async fn ask_snapshot(tx: &Answers, reason: &str) -> Result<(), String> {
    let _ = reply_now(
        tx,
        wire::single(&Msg::NeedBootstrap {
            reason: reason.into(),
        }),
    )
    .await;
    Err(reason.into())
}

/// Install a received snapshot in place of the store (off the async threads); what
/// stores it is returned, to run in the background.
async fn install(
    db: &Arc<Database>,
    s: Incoming,
) -> Result<crate::node::database::SnapshotSave, String> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        db.install_snapshot(s.layout, s.blocks, s.serial, s.next_txn)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("installing the snapshot: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::block::{Block, BlockKind};
    use crate::store::snapshot::SnapshotLayout;
    use crate::store::Schema;

    fn incoming(size: u64) -> Incoming {
        Incoming {
            serial: 1,
            next_txn: 1,
            layout: SnapshotLayout {
                schema: Schema { files: Vec::new() },
                block_size: 512,
                files: Vec::new(),
            },
            size,
            received: 0,
            blocks: Vec::new(),
            carry: Vec::new(),
            bad: false,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            started: std::time::Instant::now(),
            deps: None,
        }
    }

    #[test]
    fn blocks_are_cut_out_of_parts_whatever_their_boundaries() {
        let blocks: Vec<Block> = (0..3)
            .map(|_| Block::new(512, BlockKind::Primary))
            .collect();
        let packed: Vec<u8> = blocks.iter().flat_map(|b| b.as_bytes().to_vec()).collect();
        let mut s = incoming(packed.len() as u64);
        for part in [&packed[..100], &packed[100..800], &packed[800..]] {
            s.take_part(part);
        }
        assert_eq!(s.blocks.len(), 3);
        assert!(s
            .blocks
            .iter()
            .zip(&blocks)
            .all(|(a, b)| a.as_bytes() == b.as_bytes()));
        assert!(s.carry.is_empty() && !s.bad);
        assert_eq!(s.hasher.digest(), xxhash_rust::xxh3::xxh3_64(&packed));
        // A block with a bad header marks the snapshot damaged.
        let mut s = incoming(512);
        s.take_part(&[0xFF; 512]);
        assert!(s.bad);
    }
}
