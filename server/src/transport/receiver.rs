//! The target side: the replication listener and one session per connected link.
//!
//! A session checks the handshake (protocol version, a registered link, its credential,
//! the tenant and database it was registered for) and refuses anything else with a
//! [`Msg::Refused`] before closing. It then applies whole transactions in serial order:
//! a duplicate (a retransmission, a duplicated frame) is skipped, a gap (a lost or
//! reordered frame) asks for a retransmission from the first missing serial, and the
//! watermark the source sends with every frame and heartbeat reveals a gap at the end
//! of the stream too. After each frame the replica answers "backup completed" with its
//! last applied serial, once that is as durable as the replica's database promises.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};

use super::links::{self, ReplicaReg};
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

/// A snapshot being received.
struct Incoming {
    serial: u64,
    next_txn: u64,
    layout: Vec<u8>,
    size: u64,
    packed: Vec<u8>,
    hasher: xxhash_rust::xxh3::Xxh3,
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
    let result = stream(repl, &reg, &hello, &db, rd, &mut wr).await;
    repl.end_session(&reg.link, tokio::task::id());
    result
}

async fn stream<W: AsyncWrite + Unpin>(
    repl: &Replication,
    reg: &ReplicaReg,
    hello: &wire::Hello,
    db: &Arc<Database>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: &mut W,
) -> Result<(), String> {
    let (last, _) = db.serials();
    let mut stream = reg.stream;
    if stream == 0 && last == 0 {
        repl.adopt_stream(&reg.link, hello.stream)
            .map_err(|e| e.to_string())?;
        stream = hello.stream;
    }
    send(
        wr,
        &wire::single(&Msg::Welcome {
            last_serial: last,
            stream,
            suspended: false,
        }),
    )
    .await?;
    tracing::info!(link = %reg.link, database = %reg.database, serial = last, "replica connected");

    let mut pending: Option<Pending> = None;
    let mut incoming: Option<Incoming> = None;
    let mut requested: Option<u64> = None;
    loop {
        let payload = tokio::time::timeout(IDLE_TIMEOUT, wire::read_frame(&mut rd))
            .await
            .map_err(|_| "the source went silent".to_string())?
            .map_err(|e| format!("the source's connection: {e}"))?;
        let msgs = wire::messages(&payload).map_err(|e| format!("from the source: {e}"))?;
        let mut reply = FrameWriter::new();
        let mut answer = false;
        // A gap seen in the transactions asks once per missing serial; one a watermark
        // shows (nothing arrives after the loss) asks again at every heartbeat.
        let mut gap: Option<(u64, bool)> = None;
        for msg in msgs {
            match msg {
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
                    match db.apply_replicated(&p.chunks) {
                        Ok(ReplicaApply::Applied(_)) => requested = None,
                        Ok(ReplicaApply::Duplicate) => {}
                        Ok(ReplicaApply::Gap(expected)) => gap = Some((expected, false)),
                        Err(e) => {
                            let reason = format!("applying transaction {txn}: {e}");
                            tracing::error!(link = %reg.link, error = %reason, "replica diverged; asking for a snapshot");
                            let _ = send(
                                wr,
                                &wire::single(&Msg::NeedBootstrap {
                                    reason: reason.clone(),
                                }),
                            )
                            .await;
                            return Err(reason);
                        }
                    }
                }
                Msg::Watermark { serial, .. } => {
                    answer = true;
                    let have = db.serials().0;
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
                        return refuse(wr, "quota", reason).await;
                    }
                    incoming = Some(Incoming {
                        serial,
                        next_txn,
                        layout: layout.to_vec(),
                        size: size_bytes,
                        packed: Vec::with_capacity(size_bytes as usize),
                        hasher: xxhash_rust::xxh3::Xxh3::new(),
                    });
                }
                Msg::SnapshotPart { bytes } => {
                    if let Some(s) = incoming.as_mut() {
                        if s.packed.len() + bytes.len() > s.size as usize {
                            incoming = None;
                        } else {
                            s.hasher.update(bytes);
                            s.packed.extend_from_slice(bytes);
                        }
                    }
                }
                Msg::SnapshotEnd { checksum } => {
                    let Some(s) = incoming.take() else {
                        return ask_snapshot(wr, "a snapshot part was lost").await;
                    };
                    if s.hasher.digest() != checksum || s.packed.len() as u64 != s.size {
                        return ask_snapshot(wr, "the snapshot arrived damaged").await;
                    }
                    install(db, s).await?;
                    repl.adopt_stream(&reg.link, hello.stream)
                        .map_err(|e| e.to_string())?;
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
        if answer {
            db.await_durable()
                .await
                .map_err(|e| format!("the replica's log: {e}"))?;
            reply.push(&Msg::BackupCompleted {
                serial: db.serials().0,
            });
        }
        if !reply.is_empty() {
            send(wr, &reply.finish()).await?;
        }
    }
}

async fn ask_snapshot<W: AsyncWrite + Unpin>(wr: &mut W, reason: &str) -> Result<(), String> {
    let _ = send(
        wr,
        &wire::single(&Msg::NeedBootstrap {
            reason: reason.into(),
        }),
    )
    .await;
    Err(reason.into())
}

async fn install(db: &Arc<Database>, s: Incoming) -> Result<(), String> {
    let layout = postcard::from_bytes(&s.layout).map_err(|e| format!("snapshot layout: {e}"))?;
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        db.install_snapshot(layout, &s.packed, s.serial, s.next_txn)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("installing the snapshot: {e}"))
}
