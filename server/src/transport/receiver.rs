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
//! while the flush runs and one flush confirms many frames.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::links::{self, ReplicaReg};
use super::logical;
use super::mutual;
use super::spool;
use super::wire::{self, FrameWriter, Msg};
use super::Replication;
use crate::log::codec;
use crate::log::durable::RawChunk;
use crate::node::database::ReplicaApply;
use crate::node::Database;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A source sends a heartbeat every half second; this much silence ends the session.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accept replication connections until the node stops.
pub async fn listen(repl: Arc<Replication>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let repl = repl.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(async move {
                    if let Err(e) = serve(&repl, sock, rx).await {
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

async fn send<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), String> {
    wire::write_frame(w, frame)
        .await
        .map_err(|e| format!("answering the source: {e}"))
}

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
}

impl Incoming {
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

    fn push_block(&mut self, bytes: &[u8]) {
        match crate::store::block::Block::from_bytes(bytes) {
            Some(b) => self.blocks.push(b),
            None => self.bad = true,
        }
    }
}

fn chunk(bytes: &[u8]) -> Result<RawChunk, String> {
    let head = codec::peek(bytes).map_err(|e| format!("a replicated chunk: {e}"))?;
    Ok(RawChunk {
        head,
        bytes: bytes.into(),
    })
}

async fn serve(
    repl: &Arc<Replication>,
    sock: TcpStream,
    me: tokio::sync::oneshot::Receiver<tokio::task::AbortHandle>,
) -> Result<(), String> {
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = sock.into_split();
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

/// The writing half: sends replies in order, and confirms applied serials after the
/// group flush that covers them, several at once when they queue up while a flush
/// runs. The reading half never waits for a flush.
async fn write_replies(
    db: Arc<Database>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Reply>,
) -> Result<(), String> {
    while let Some(first) = rx.recv().await {
        let mut ack = None;
        let mut next = Some(first);
        while let Some(reply) = next.take().or_else(|| rx.try_recv().ok()) {
            match reply {
                Reply::Frame(frame) => send(&mut wr, &frame).await?,
                Reply::Ack(serial) => ack = ack.max(Some(serial)),
                Reply::Wait(task) => {
                    if let Some(serial) = ack.take() {
                        db.await_durable()
                            .await
                            .map_err(|e| format!("the replica's log: {e}"))?;
                        send(&mut wr, &wire::single(&Msg::BackupCompleted { serial })).await?;
                    }
                    task.await.map_err(|e| e.to_string())??;
                }
            }
        }
        if let Some(serial) = ack {
            db.await_durable()
                .await
                .map_err(|e| format!("the replica's log: {e}"))?;
            send(&mut wr, &wire::single(&Msg::BackupCompleted { serial })).await?;
        }
    }
    Ok(())
}

async fn stream(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Arc<Database>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), String> {
    let last = applied(reg, db, hello.stream).max(repl.spool.last(&reg.link)?.unwrap_or(0));
    let mut stream = reg.stream;
    if stream == 0 && last == 0 {
        repl.adopt_stream(&reg.link, hello.stream)
            .map_err(|e| e.to_string())?;
        stream = hello.stream;
    }
    send(
        &mut wr,
        &wire::single(&Msg::Welcome {
            last_serial: last,
            stream,
            suspended: false,
        }),
    )
    .await?;
    tracing::info!(link = %reg.link, database = %reg.database, serial = last, "replica connected");
    let (tx, rx) = mpsc::channel(1024);
    let writer = tokio::spawn(write_replies(db.clone(), wr, rx));
    let result = apply_stream(repl, reg, hello, db, &mut rd, &tx).await;
    drop(tx);
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

/// The versions sent for transaction `txn` (none if they were for another).
fn take_versions(
    versions: &mut Option<(u64, Vec<(u64, crate::node::versions::Stamp)>)>,
    txn: u64,
) -> Vec<(u64, crate::node::versions::Stamp)> {
    versions
        .take()
        .filter(|(t, _)| *t == txn)
        .map(|(_, s)| s)
        .unwrap_or_default()
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
    let writes = mutual::incoming(schema, ops, stamps)?;
    let here = crate::node::versions::local_origin();
    let returned = writes.iter().filter(|w| w.stamp.o == here).count() as u64;
    let received = writes.len() as u64;
    let mut notes = Vec::new();
    let (applied, seen) = tokio::task::block_in_place(|| {
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
        let mut counts = repl.mutual_counts.lock();
        let c = counts.entry(reg.link.clone()).or_default();
        c.writes += received;
        c.conflicts += seen.len() as u64;
        c.returned += returned;
    }
    let seen: Vec<_> = seen.into_iter().zip(notes).collect();
    repl.conflicts
        .record(db.def.uid, &reg.link, resolver.strategy(), &seen, &names)?;
    Ok(applied)
}

/// Hand a reply to the writing half.
async fn queue(tx: &mpsc::Sender<Reply>, reply: Reply) -> Result<(), String> {
    tx.send(reply)
        .await
        .map_err(|_| "the connection to the source is closed".to_string())
}

async fn reply_now(tx: &mpsc::Sender<Reply>, frame: Vec<u8>) -> Result<(), String> {
    queue(tx, Reply::Frame(frame)).await
}

async fn apply_stream(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Arc<Database>,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    tx: &mpsc::Sender<Reply>,
) -> Result<(), String> {
    // A database's files are fixed when it is created: resolve logical operations
    // against one copy of the schema for the whole session.
    let schema = db.schema();
    let mut pending: Option<Pending> = None;
    let mut incoming: Option<Incoming> = None;
    let mut requested: Option<u64> = None;
    // Spooled while suspended and not applied yet: the serial to continue from.
    let mut spooled = repl.spool.last(&reg.link)?;
    let mut told_suspended = false;
    let mut payload = Vec::new();
    // Interrelation information for the transaction that follows it (SPEC D1).
    let mut depends: Option<(u64, Vec<wire::Dependency>)> = None;
    // A mutual link's record versions for the transaction that follows them (SPEC F4).
    let mut versions: Option<(u64, Vec<(u64, crate::node::versions::Stamp)>)> = None;
    let mut resolver = match &reg.conflicts {
        Some(spec) => Some(
            mutual::Resolver::load(&repl.plugins, &reg.tenant, spec)
                .map_err(|e| format!("link {}: {e}", reg.link))?,
        ),
        None => None,
    };
    let key = Replication::stream_key(reg);
    loop {
        tokio::time::timeout(IDLE_TIMEOUT, wire::read_frame_into(rd, &mut payload))
            .await
            .map_err(|_| "the source went silent".to_string())?
            .map_err(|e| format!("the source's connection: {e}"))?;
        let msgs = wire::messages(&payload).map_err(|e| format!("from the source: {e}"))?;
        let mut reply = FrameWriter::new();
        let mut answer = false;
        // A gap seen in the transactions asks once per missing serial; one a watermark
        // shows (nothing arrives after the loss) asks again at every heartbeat.
        let mut gap: Option<(u64, bool)> = None;
        let suspended = repl.is_suspended(&reg.link);
        if suspended != told_suspended {
            reply.push(if suspended {
                &Msg::Suspend
            } else {
                &Msg::Release
            });
            told_suspended = suspended;
        }
        if !suspended && spooled.is_some() {
            let mut n = 0;
            while let Some(mut entry) = repl.spool.first(&reg.link)? {
                let last = spool::last_serial(&entry.chunks).unwrap_or(0);
                let txn = entry.chunks.first().map_or(0, |c| c.head.txn);
                // Released, a spooled transaction still waits for what it depends on
                // in other databases (SPEC D3), like one that arrives now.
                let mut deps = Some((txn, std::mem::take(&mut entry.deps)));
                hold(repl, reg, hello, db, tx, &mut deps, txn, last).await?;
                if let Err(e) = db.apply_replicated(&entry.chunks) {
                    let reason = format!("replaying a spooled transaction: {e}");
                    return ask_snapshot(tx, &reason).await;
                }
                repl.gates.applied(&key, last, false);
                repl.spool.remove(&entry)?;
                n += 1;
            }
            tracing::info!(link = %reg.link, transactions = n, "replica released; spooled transactions applied");
            spooled = None;
        }
        for msg in msgs {
            match msg {
                Msg::Depends { txn, deps } => depends = Some((txn, deps)),
                Msg::Versions { txn, stamps } => versions = Some((txn, stamps)),
                Msg::TxnStart { txn, .. } => {
                    pending = Some(Pending {
                        txn,
                        chunks: Vec::new(),
                    })
                }
                Msg::Updates { txn, chunk: bytes } => match pending.as_mut() {
                    Some(p) if p.txn == txn => p.chunks.push(chunk(bytes)?),
                    _ => pending = None,
                },
                Msg::TxnCompleted { txn, .. } | Msg::Cancel { txn, .. } => {
                    let extra = match &msg {
                        Msg::Cancel { b_chunks, .. } => b_chunks.clone(),
                        _ => Vec::new(),
                    };
                    answer = true;
                    let Some(mut p) = pending.take().filter(|p| p.txn == txn) else {
                        continue;
                    };
                    for b in extra {
                        p.chunks.push(chunk(b)?);
                    }
                    if suspended {
                        let first = p.chunks.first().map_or(0, |c| c.head.first_serial);
                        let last = spool::last_serial(&p.chunks).unwrap_or(0);
                        let have = spooled.unwrap_or(0).max(applied(reg, db, hello.stream));
                        if last <= have {
                            continue;
                        }
                        if first != have + 1 {
                            gap = Some((have + 1, false));
                            continue;
                        }
                        let deps = depends
                            .take()
                            .filter(|(t, _)| *t == txn)
                            .map(|(_, d)| d)
                            .unwrap_or_default();
                        repl.spool.push(&reg.link, first, &p.chunks, &deps)?;
                        spooled = Some(last);
                        requested = None;
                        continue;
                    }
                    let last = spool::last_serial(&p.chunks).unwrap_or(0);
                    hold(repl, reg, hello, db, tx, &mut depends, txn, last).await?;
                    match db.apply_replicated(&p.chunks) {
                        Ok(ReplicaApply::Applied(_)) => {
                            requested = None;
                            repl.gates.applied(&key, last, false);
                        }
                        Ok(ReplicaApply::Duplicate) => {}
                        Ok(ReplicaApply::Gap(expected)) => gap = Some((expected, false)),
                        Err(e) => {
                            let reason = format!("applying transaction {txn}: {e}");
                            tracing::error!(link = %reg.link, error = %reason, "replica diverged; asking for a snapshot");
                            return ask_snapshot(tx, &reason).await;
                        }
                    }
                }
                Msg::Logical {
                    txn,
                    first_serial,
                    last_serial,
                    ops,
                } => {
                    answer = true;
                    let at =
                        format!("transaction {txn} (source serials {first_serial}-{last_serial})");
                    hold(repl, reg, hello, db, tx, &mut depends, txn, last_serial).await?;
                    let applied = match resolver.as_mut() {
                        Some(resolver) => {
                            let stamps = take_versions(&mut versions, txn);
                            apply_mutual(
                                repl,
                                reg,
                                hello,
                                db,
                                &schema,
                                resolver,
                                Some((first_serial, last_serial)),
                                ops,
                                &stamps,
                            )
                        }
                        None => logical::decode_ops(&schema, ops).and_then(|ops| {
                            db.apply_logical(hello.stream, first_serial, last_serial, ops)
                                .map_err(|e| e.to_string())
                        }),
                    };
                    match applied {
                        Ok(ReplicaApply::Applied(_)) => {
                            requested = None;
                            repl.gates.applied(&key, last_serial, false);
                        }
                        Ok(ReplicaApply::Duplicate) => {}
                        Ok(ReplicaApply::Gap(expected)) => gap = Some((expected, false)),
                        Err(e) => {
                            let reason = format!("{at}: {e}");
                            tracing::error!(link = %reg.link, error = %reason, "a logical transaction does not apply");
                            let refusal = wire::single(&Msg::Refused {
                                code: "apply".into(),
                                reason: reason.clone(),
                            });
                            let _ = reply_now(tx, refusal).await;
                            return Err(reason);
                        }
                    }
                }
                Msg::LogicalSnapshot { serial, last, ops } => {
                    let applied = match resolver.as_mut() {
                        Some(resolver) => {
                            let stamps = take_versions(&mut versions, 0);
                            apply_mutual(
                                repl, reg, hello, db, &schema, resolver, None, ops, &stamps,
                            )
                            .map(|_| ())
                        }
                        None => logical::decode_ops(&schema, ops)
                            .and_then(|ops| db.apply_redriven(ops).map_err(|e| e.to_string())),
                    };
                    if let Err(e) = applied {
                        let reason = format!("the logical bootstrap at serial {serial}: {e}");
                        let refusal = wire::single(&Msg::Refused {
                            code: "apply".into(),
                            reason: reason.clone(),
                        });
                        let _ = reply_now(tx, refusal).await;
                        return Err(reason);
                    }
                    if last {
                        db.set_position(hello.stream, serial)
                            .map_err(|e| format!("the logical bootstrap: {e}"))?;
                        repl.adopt_stream(&reg.link, hello.stream)
                            .map_err(|e| e.to_string())?;
                        repl.gates.applied(&key, serial, true);
                        repl.announce(&reg.link, serial, true);
                        tracing::info!(link = %reg.link, serial, "logical bootstrap applied");
                        requested = None;
                        answer = true;
                    }
                }
                Msg::Watermark {
                    serial,
                    timestamp_us,
                } => {
                    answer = true;
                    repl.announce(&reg.link, serial, false);
                    repl.gates.watermark(
                        &key,
                        serial,
                        timestamp_us,
                        applied(reg, db, hello.stream),
                    );
                    let have = applied(reg, db, hello.stream).max(spooled.unwrap_or(0));
                    if serial > have && pending.is_none() && incoming.is_none() {
                        gap = Some((have + 1, true));
                    }
                }
                Msg::Heartbeat => answer = true,
                Msg::SnapshotBegin {
                    serial,
                    next_txn,
                    layout,
                    size_bytes,
                } => {
                    if size_bytes > db.def.spec.memory_quota_bytes {
                        let reason = format!(
                            "the snapshot holds {size_bytes} bytes of blocks, over database '{}''s memory quota of {}",
                            reg.database, db.def.spec.memory_quota_bytes
                        );
                        let refusal = wire::single(&Msg::Refused {
                            code: "quota".into(),
                            reason: reason.clone(),
                        });
                        reply_now(tx, refusal).await?;
                        return Err(reason);
                    }
                    let layout: crate::store::snapshot::SnapshotLayout =
                        match postcard::from_bytes(layout) {
                            Ok(l) => l,
                            Err(e) => {
                                return ask_snapshot(
                                    tx,
                                    &format!("an unreadable snapshot layout: {e}"),
                                )
                                .await
                            }
                        };
                    let count = (size_bytes / u64::from(layout.block_size.max(1))) as usize;
                    incoming = Some(Incoming {
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
                    });
                }
                Msg::SnapshotPart { bytes } => {
                    if let Some(s) = incoming.as_mut() {
                        if s.received + bytes.len() as u64 > s.size {
                            incoming = None;
                        } else {
                            s.take_part(bytes);
                        }
                    }
                }
                Msg::SnapshotEnd { checksum } => {
                    let Some(s) = incoming.take() else {
                        return ask_snapshot(tx, "a snapshot part was lost").await;
                    };
                    if s.hasher.digest() != checksum
                        || s.received != s.size
                        || s.bad
                        || !s.carry.is_empty()
                    {
                        return ask_snapshot(tx, "the snapshot arrived damaged").await;
                    }
                    let (bytes, transfer, serial) = (s.size, s.started.elapsed(), s.serial);
                    let installing = std::time::Instant::now();
                    repl.spool.clear(&reg.link)?;
                    spooled = None;
                    let save = install(db, s).await?;
                    let saving = tokio::task::spawn_blocking(move || {
                        save.save()
                            .map_err(|e| format!("storing the bootstrap snapshot: {e}"))
                    });
                    queue(tx, Reply::Wait(saving)).await?;
                    tracing::info!(
                        link = %reg.link,
                        bytes,
                        transfer_secs = transfer.as_secs_f64(),
                        install_secs = installing.elapsed().as_secs_f64(),
                        "bootstrap snapshot installed"
                    );
                    repl.adopt_stream(&reg.link, hello.stream)
                        .map_err(|e| e.to_string())?;
                    repl.gates.applied(&key, serial, true);
                    repl.announce(&reg.link, serial, true);
                    requested = None;
                    answer = true;
                }
                other => {
                    tracing::debug!(link = %reg.link, message = ?other, "unexpected message ignored");
                }
            }
        }
        if let Some((expected, from_watermark)) = gap {
            if requested != Some(expected) || from_watermark {
                reply.push(&Msg::Retransmit { from: expected });
                requested = Some(expected);
            }
        }
        if !reply.is_empty() {
            reply_now(tx, reply.finish()).await?;
        }
        if answer {
            let confirmed = applied(reg, db, hello.stream).max(spooled.unwrap_or(0));
            queue(tx, Reply::Ack(confirmed)).await?;
        }
    }
}

/// Before applying transaction `txn` (ending at source serial `last`): if interrelation
/// information came for it, wait until the updates it depends on in other databases
/// are applied on this node (SPEC D3). What was applied before is confirmed first, so
/// a held transaction never holds up its predecessors' confirmations.
#[allow(clippy::too_many_arguments)]
async fn hold(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Database,
    tx: &mpsc::Sender<Reply>,
    depends: &mut Option<(u64, Vec<wire::Dependency>)>,
    txn: u64,
    last: u64,
) -> Result<(), String> {
    let Some((_, deps)) = depends.take().filter(|(t, _)| *t == txn) else {
        return Ok(());
    };
    let done = applied(reg, db, hello.stream);
    if last <= done {
        return Ok(());
    }
    queue(tx, Reply::Ack(done)).await?;
    repl.gates
        .hold(&reg.link, &reg.source_node, &reg.tenant, &deps)
        .await;
    Ok(())
}

async fn ask_snapshot(tx: &mpsc::Sender<Reply>, reason: &str) -> Result<(), String> {
    let _ = reply_now(
        tx,
        wire::single(&Msg::NeedBootstrap {
            reason: reason.into(),
        }),
    )
    .await;
    Err(reason.into())
}

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
