//! The source side of a link: one task per link that registers the replica with the
//! target's API, connects, bootstraps it from a snapshot when its position cannot be
//! continued from the log, then streams the log.
//!
//! What is shipped comes from the source's own log in sled, never from memory the
//! writer shares: a retransmission or a resumed connection re-reads the same bytes.
//! An asynchronous link ships only what is durable on the source (so a replica is never
//! ahead of what the source would recover after a crash); a synchronous link ships as
//! soon as a transaction is in the log, since its commit waits for the replica anyway.
//! At most [`WINDOW_ENTRIES`] unconfirmed entries are in flight (backpressure), and
//! frames are sent as soon as there is something to send: the batching delay is the
//! time the previous frame took to write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use doppel_sdk::abi::OwnedRecord;

use super::interrelation;
use super::links::{Apply, LinkDef, LinkState, Mode, OnError, ReplicaRequest};
use super::logical;
use super::mutual;
use super::wire::{self, FrameWriter, Hello, Msg};
use super::{LinkHandle, Replication};
use crate::log::LogKind;
use crate::node::versions::{self, Stamp};
use crate::node::{Database, Durability};
use crate::txn::clock::wall_us;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Log bytes gathered into one frame.
const FRAME_BYTES: usize = 512 * 1024;
/// Most entries sent and not yet confirmed.
pub const WINDOW_ENTRIES: u64 = 500_000;
/// Bytes of packed blocks per snapshot frame.
const SNAPSHOT_PART_BYTES: usize = 1 << 20;

/// Run a link until it is deleted.
pub async fn run(repl: Arc<Replication>, link: Arc<LinkHandle>) {
    let mut control = link.control.subscribe();
    let mut backoff = RETRY_MIN;
    loop {
        if link.deleted.load(Ordering::SeqCst) {
            return;
        }
        control.borrow_and_update();
        let stopped = link.stopped.load(Ordering::SeqCst);
        if link.def.lock().paused || stopped {
            {
                let mut status = link.status.lock();
                status.state = if stopped {
                    LinkState::Stopped
                } else {
                    LinkState::Paused
                };
                // Nothing flows while it stands still.
                status.throughput = 0.0;
            }
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        let result = session(&repl, &link, &mut control).await;
        if link.deleted.load(Ordering::SeqCst) {
            return;
        }
        match result {
            Ok(()) => backoff = RETRY_MIN,
            Err(error) => {
                let id = link.def.lock().id.clone();
                tracing::warn!(link = %id, error = %error, "link disconnected; retrying");
                {
                    let mut status = link.status.lock();
                    status.state = LinkState::Retrying;
                    status.last_error = Some(error);
                    status.last_error_ms = Some(wall_us() / 1000);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = control.changed() => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// What the target's API answered to the registration.
struct Registered {
    replication: String,
}

/// Register the replica through the target's REST API.
async fn register(
    repl: &Arc<Replication>,
    def: &LinkDef,
    db: &Database,
) -> Result<Registered, String> {
    let body = ReplicaRequest {
        database: def.spec.target.database.clone(),
        source_database: def.spec.database.clone(),
        spec: db.def.spec.clone(),
        credential: def.credential.clone(),
        source_node: repl.node_id.clone(),
        apply: def.spec.apply,
        resync: def.spec.target.resync,
        conflicts: def.spec.conflicts.clone(),
    };
    let (repl, def) = (repl.clone(), def.clone());
    let answer = tokio::task::spawn_blocking(move || {
        repl.target_client(&def)
            .and_then(|c| c.send("PUT", &format!("/replicas/{}", def.id), &body))
            .map_err(|e| match e.status() {
                Some(_) => format!("the target refused the link: {e}"),
                None => format!("the target's API did not answer: {e}"),
            })
    })
    .await
    .map_err(|e| e.to_string())??;
    let replication = answer["replication"]
        .as_str()
        .ok_or("the target's answer has no replication address")?
        .to_string();
    Ok(Registered { replication })
}

/// What the reading half reports.
enum Event {
    Acked(u64),
    /// The replica was suspended (true) or released.
    Suspended(bool),
    Retransmit(u64),
    NeedBootstrap(String),
    Closed(String),
}

async fn read_replies(mut rd: OwnedReadHalf, tx: mpsc::Sender<Event>) {
    loop {
        let event = match wire::read_frame(&mut rd).await {
            Ok(payload) => match wire::messages(&payload) {
                Ok(msgs) => {
                    let mut events = Vec::new();
                    for m in msgs {
                        match m {
                            Msg::BackupCompleted { serial } => events.push(Event::Acked(serial)),
                            Msg::Retransmit { from } => events.push(Event::Retransmit(from)),
                            Msg::Suspend => events.push(Event::Suspended(true)),
                            Msg::Refused { code, reason } => events.push(Event::Closed(format!(
                                "the replica refused: {reason} ({code})"
                            ))),
                            Msg::Release => events.push(Event::Suspended(false)),
                            Msg::NeedBootstrap { reason } => {
                                events.push(Event::NeedBootstrap(reason))
                            }
                            _ => {}
                        }
                    }
                    for e in events {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(e) => Event::Closed(format!("the replica sent a malformed frame: {e}")),
            },
            Err(e) => Event::Closed(format!("the replica's connection ended: {e}")),
        };
        let _ = tx.send(event).await;
        return;
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), String> {
    wire::write_frame(w, frame)
        .await
        .map_err(|e| format!("sending to the replica: {e}"))
}

/// Stream a frozen copy of the store: the replica continues from the returned serial.
async fn send_snapshot<W: AsyncWrite + Unpin>(db: &Database, wr: &mut W) -> Result<u64, String> {
    let (frozen, serial, next_txn) = db.freeze();
    let (layout, blocks) = frozen.snapshot_parts();
    let layout_bytes = postcard::to_allocvec(&layout).map_err(|e| e.to_string())?;
    let size: u64 = blocks.iter().map(|b| b.as_bytes().len() as u64).sum();
    send(
        wr,
        &wire::single(&Msg::SnapshotBegin {
            serial,
            next_txn,
            layout: &layout_bytes,
            size_bytes: size,
        }),
    )
    .await?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut part = Vec::with_capacity(SNAPSHOT_PART_BYTES + 32 * 1024);
    let mut frame = FrameWriter::new();
    for (i, block) in blocks.iter().enumerate() {
        part.extend_from_slice(block.as_bytes());
        if part.len() >= SNAPSHOT_PART_BYTES || i + 1 == blocks.len() {
            hasher.update(&part);
            frame.clear();
            frame.push(&Msg::SnapshotPart { bytes: &part });
            send(wr, frame.frame()).await?;
            part.clear();
        }
    }
    send(
        wr,
        &wire::single(&Msg::SnapshotEnd {
            checksum: hasher.digest(),
        }),
    )
    .await?;
    Ok(serial)
}

/// One connection's life: handshake, optional bootstrap, streaming. Ok when the link's
/// definition changed (pause, delete); Err with the reason it broke.
async fn session(
    repl: &Arc<Replication>,
    link: &Arc<LinkHandle>,
    control: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), String> {
    let def = link.def.lock().clone();
    link.status.lock().state = LinkState::Connecting;
    let db = repl
        .node
        .database(&def.tenant, &def.spec.database)
        .map_err(|e| format!("the source database: {e}"))?;
    let registered = register(repl, &def, &db).await?;
    let addr = def
        .spec
        .target
        .replication
        .clone()
        .unwrap_or(registered.replication);
    let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = sock.into_split();
    let stream = repl.stream_id(&db);
    send(
        &mut wr,
        &wire::single(&Msg::Hello(Hello {
            version: wire::PROTOCOL_VERSION,
            link: def.id.clone(),
            credential: def.credential.clone(),
            source_node: repl.node_id.clone(),
            tenant: def.tenant.clone(),
            database: def.spec.target.database.clone(),
            stream,
        })),
    )
    .await?;
    let payload = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut rd))
        .await
        .map_err(|_| "the replica did not answer the handshake".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (their_last, their_stream) = match wire::messages(&payload)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
    {
        Some(Msg::Welcome {
            last_serial,
            stream,
            ..
        }) => (last_serial, stream),
        Some(Msg::Refused { code, reason }) => {
            return Err(format!("the replica refused the link: {reason} ({code})"))
        }
        _ => return Err("the replica answered the handshake with something else".into()),
    };
    link.status.lock().connections += 1;

    let uid = db.def.uid;
    let (last, _) = db.serials();
    let oldest = db
        .log_store()
        .oldest_serial(uid, LogKind::A)
        .map_err(|e| e.to_string())?;
    let fresh = their_stream == 0 && their_last == 0;
    let log_reaches = their_last >= last || oldest.is_some_and(|o| o <= their_last + 1);
    let bootstrap = link.force_bootstrap.swap(false, Ordering::SeqCst)
        || (their_stream != stream && !fresh)
        || their_last > last
        || !log_reaches;
    let mut next = their_last + 1;
    let mut acked = their_last;
    let logical = def.spec.apply == Apply::Logical;
    // A mirror's stages are interrelation rules only (checked when the link was made).
    let mut stages = logical::stages(&repl.plugins, &def.tenant, &def.spec.stages)?;
    let mut sources = (!stages.rules.is_empty())
        .then(|| interrelation::Sources::new(repl.node.clone(), &def.tenant, &db));
    if bootstrap {
        link.status.lock().state = LinkState::Bootstrapping;
        tracing::info!(link = %def.id, replica_serial = their_last, source_serial = last, "bootstrapping the replica from a snapshot");
        let serial = if logical {
            send_logical_snapshot(repl, link, &def, &db, &mut stages.chain, &mut wr).await?
        } else {
            send_snapshot(&db, &mut wr).await?
        };
        next = serial + 1;
        acked = 0;
        link.status.lock().bootstraps += 1;
    }
    {
        let mut status = link.status.lock();
        status.state = LinkState::Streaming;
        status.acked_serial = acked;
        status.sent_serial = next - 1;
    }
    if def.spec.mode == Mode::Sync {
        db.quorum.ack(&def.id, acked);
    }

    let (tx, mut events) = mpsc::channel(256);
    let reader = tokio::spawn(read_replies(rd, tx));
    let _reader = AbortOnDrop(reader);
    let mut appended = db.subscribe_appended();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut rate = (Instant::now(), acked);
    let ship_early = def.spec.mode == Mode::Sync || db.def.spec.durability == Durability::None;
    // Everything up to here is known durable on the source.
    let mut durable = 0;
    let mut frame = FrameWriter::new();
    // The timestamp of the last update shipped: with the serial shipped, the watermark.
    let mut last_shipped_us = 0;
    // A database's files are fixed when it is created: one copy serves the session.
    let schema = db.schema();
    // A mirror ships its B (when asked) and T logs too; a logical link needs A only.
    let mutual = def.spec.conflicts.is_some();
    let also: &[LogKind] = match (logical, def.spec.b_log) {
        // A mutual link sends each record's before image, a resolver's base.
        (true, _) if mutual => &[LogKind::B],
        (true, _) => &[],
        (false, true) => &[LogKind::B, LogKind::T],
        (false, false) => &[LogKind::T],
    };
    loop {
        // The definition changed (stages swapped, paused, deleted): nothing more ships
        // under the old one; the next session reads the new one. Checked before each
        // frame, so a record committed after the change never goes through old stages.
        if control.has_changed().unwrap_or(true) {
            return Ok(());
        }
        let available = *appended.borrow_and_update();
        let hold = link.hold_at.load(Ordering::SeqCst);
        let held = hold != 0 && next > hold;
        if next <= available && next - 1 < acked + WINDOW_ENTRIES && !held {
            if !ship_early && next > durable {
                // `available` was read before this flush was asked for: it is covered.
                db.await_durable()
                    .await
                    .map_err(|e| format!("the source log: {e}"))?;
                durable = available;
            }
            let txns = db
                .log_store()
                .read_txns(uid, next - 1, FRAME_BYTES, also)
                .map_err(|e| format!("reading the source log: {e}"))?;
            if txns.first().map(|t| t.first_serial) != Some(next) {
                link.force_bootstrap.store(true, Ordering::SeqCst);
                return Err(format!(
                    "the source log no longer holds serial {next}; the replica will be re-bootstrapped"
                ));
            }
            frame.clear();
            for txn in &txns {
                if hold != 0 && txn.first_serial > hold {
                    break;
                }
                let mut stamps = None;
                let staged = if logical || sources.is_some() {
                    let mut records = logical::records(&schema, repl.origin(), txn)?;
                    if mutual {
                        let (local, by_serial) = mutual::outgoing(&schema, txn, records)?;
                        records = local;
                        stamps = Some(by_serial);
                    }
                    let mut batch = doppel_sdk::abi::BatchBuilder::new();
                    for r in &records {
                        batch.push(r);
                    }
                    Some((records, batch))
                } else {
                    None
                };
                if let (Some(sources), Some((records, batch))) = (sources.as_mut(), &staged) {
                    let deps = interrelate(
                        repl,
                        link,
                        &def,
                        &mut stages.rules,
                        sources,
                        txn,
                        records,
                        batch,
                    )?;
                    if !deps.is_empty() {
                        frame.push(&Msg::Depends { txn: txn.txn, deps });
                        link.status.lock().interrelated += 1;
                    }
                }
                match staged.filter(|_| logical) {
                    Some((records, batch)) => {
                        let ops = stage(repl, link, &def, &mut stages.chain, txn, &records, batch)?;
                        if let Some(stamps) = &stamps {
                            frame.push(&mutual::versions_msg(txn.txn, &ops, stamps)?);
                        }
                        frame.push(&Msg::Logical {
                            txn: txn.txn,
                            first_serial: txn.first_serial,
                            last_serial: txn.last_serial,
                            ops: &ops,
                        });
                    }
                    None => push_mirror(&mut frame, txn),
                }
                in_flight.push_back((txn.last_serial, txn.last_timestamp_us));
                next = txn.last_serial + 1;
                last_shipped_us = txn.last_timestamp_us;
            }
            frame.push(&Msg::Watermark {
                serial: next - 1,
                timestamp_us: last_shipped_us,
            });
            send(&mut wr, frame.frame()).await?;
            link.status.lock().sent_serial = next - 1;
            continue;
        }
        tokio::select! {
            changed = appended.changed() => {
                if changed.is_err() {
                    return Err("the source database was deleted".into());
                }
            }
            event = events.recv() => match event {
                Some(Event::Acked(serial)) => {
                    if serial > acked {
                        acked = serial;
                        while in_flight.front().is_some_and(|(s, _)| *s <= acked) {
                            in_flight.pop_front();
                        }
                        let mut status = link.status.lock();
                        status.acked_serial = acked;
                        status.lag_ms = in_flight.front().map_or(0, |(_, ts)| wall_us().saturating_sub(*ts) / 1000);
                        drop(status);
                        if def.spec.mode == Mode::Sync {
                            db.quorum.ack(&def.id, acked);
                        }
                    }
                }
                Some(Event::Suspended(suspended)) => {
                    // A detached replica is not waited for (SPEC G6).
                    if def.spec.mode == Mode::Sync {
                        db.quorum.set_suspended(&def.id, suspended);
                    }
                    link.status.lock().state = if suspended { LinkState::Suspended } else { LinkState::Streaming };
                    tracing::info!(link = %def.id, suspended, "the replica changed its attachment");
                }
                Some(Event::Retransmit(from)) => {
                    if from < next && from > acked.saturating_sub(1) {
                        tracing::debug!(link = %def.id, from, "retransmitting");
                        next = from.max(1);
                        in_flight.retain(|(s, _)| *s < from);
                    }
                }
                Some(Event::NeedBootstrap(reason)) => {
                    link.force_bootstrap.store(true, Ordering::SeqCst);
                    return Err(format!("the replica asked for a snapshot: {reason}"));
                }
                Some(Event::Closed(reason)) => return Err(reason),
                None => return Err("the replica's connection ended".into()),
            },
            _ = heartbeat.tick() => {
                let (elapsed, base) = (rate.0.elapsed().as_secs_f64(), rate.1);
                if elapsed >= 1.0 {
                    let mut status = link.status.lock();
                    let now = (acked - base.min(acked)) as f64 / elapsed;
                    status.throughput = if status.throughput == 0.0 { now } else { 0.5 * status.throughput + 0.5 * now };
                    status.lag_ms = in_flight.front().map_or(0, |(_, ts)| wall_us().saturating_sub(*ts) / 1000);
                    rate = (Instant::now(), acked);
                }
                let mut frame = FrameWriter::new();
                frame.push(&Msg::Heartbeat);
                frame.push(&Msg::Watermark { serial: next - 1, timestamp_us: complete_us(&db, next - 1, last_shipped_us) });
                send(&mut wr, &frame.finish()).await?;
            }
            _ = control.changed() => return Ok(()),
        }
    }
}

/// A mirror transaction: its stored chunks as they are, between start and completion
/// (or cancel, which carries the B chunks that restore the before images).
fn push_mirror(frame: &mut FrameWriter, txn: &crate::log::durable::RawTxn) {
    frame.push(&Msg::TxnStart {
        txn: txn.txn,
        first_serial: txn.first_serial,
    });
    let cancelled = txn.outcome == crate::log::Outcome::Cancelled;
    let mut b_chunks = Vec::new();
    for chunk in &txn.chunks {
        if cancelled && chunk.head.kind == LogKind::B {
            b_chunks.push(&chunk.bytes[..]);
        } else {
            frame.push(&Msg::Updates {
                txn: txn.txn,
                chunk: &chunk.bytes,
            });
        }
    }
    if cancelled {
        frame.push(&Msg::Cancel {
            txn: txn.txn,
            last_serial: txn.last_serial,
            b_chunks,
        });
    } else {
        frame.push(&Msg::TxnCompleted {
            txn: txn.txn,
            last_serial: txn.last_serial,
        });
    }
}

/// Records per message of a logical bootstrap.
const SNAPSHOT_RECORDS: usize = 2_000;

/// Bootstrap a logical replica: every record of a frozen copy of the source, through
/// the link's filters and transforms, as upserts (SPEC C5 for logical links). The
/// replica upserts them and then stands at the copy's serial. It is not wiped first
/// (it may hold other sources' records, many-to-one): a record the source deleted while
/// the replica could not follow stays there. Returns the serial.
async fn send_logical_snapshot<W: AsyncWrite + Unpin>(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    db: &Database,
    chain: &mut crate::plugins::Chain,
    wr: &mut W,
) -> Result<u64, String> {
    let (store, serial, _) = db.freeze();
    let schema = store.schema().clone();
    // A mutual link ships every record with its version, and the deletes as
    // tombstones, so the replica keeps whichever side is later.
    let versions_id = versions::versions_id(&schema).filter(|_| def.spec.conflicts.is_some());
    let mut stamps: HashMap<u64, Stamp> = HashMap::new();
    let marker = crate::log::durable::RawTxn {
        txn: 0,
        outcome: crate::log::Outcome::Committed,
        first_serial: serial,
        last_serial: serial,
        last_timestamp_us: 0,
        chunks: Vec::new(),
    };
    let mut frame = FrameWriter::new();
    let mut batch: Vec<OwnedRecord> = Vec::with_capacity(SNAPSHOT_RECORDS);
    let mut sent = 0usize;
    for (table, file) in schema.files.iter().enumerate() {
        if file.name == versions::VERSIONS_FILE {
            continue;
        }
        let mut records = Vec::new();
        store.files()[schema.main_id(table) as usize].scan(b"", None, |r| {
            records.push(OwnedRecord {
                op: doppel_sdk::abi::Op::Insert,
                origin: repl.origin(),
                serial,
                file: file.name.clone(),
                key: String::from_utf8_lossy(r.key).into_owned(),
                data: r.data.to_vec(),
                alt: r
                    .alts()
                    .filter_map(|(i, v)| {
                        let name = file.alt_keys.get(i as usize)?;
                        Some((name.clone(), String::from_utf8_lossy(v).into_owned()))
                    })
                    .collect(),
                ..OwnedRecord::default()
            });
            true
        });
        if let Some(vid) = versions_id {
            let from = versions::entry_key(&file.name, b"");
            store.files()[vid as usize].scan(&from, None, |v| {
                let Some((name, key)) = versions::split_entry_key(v.key) else {
                    return false;
                };
                if name != file.name {
                    return false;
                }
                if Stamp::decode(v.data).is_some_and(|s| s.del) {
                    records.push(OwnedRecord {
                        op: doppel_sdk::abi::Op::Delete,
                        file: file.name.clone(),
                        key: String::from_utf8_lossy(key).into_owned(),
                        ..OwnedRecord::default()
                    });
                }
                true
            });
        }
        for mut r in records {
            if let Some(vid) = versions_id {
                // Numbered within the bootstrap, so each record finds its version.
                r.serial = stamps.len() as u64 + 1;
                let stamp = versions::current(&store, vid, &r.file, r.key.as_bytes())
                    .ok_or_else(|| format!("record '{}' has no version", r.key))?;
                (r.timestamp, r.origin) = (stamp.t, stamp.o);
                stamps.insert(r.serial, stamp);
            }
            batch.push(r);
            if batch.len() == SNAPSHOT_RECORDS {
                sent += batch.len();
                ship_snapshot_part(
                    repl, link, def, chain, &marker, &mut batch, serial, false, &stamps,
                    &mut frame, wr,
                )
                .await?;
            }
        }
    }
    sent += batch.len();
    ship_snapshot_part(
        repl, link, def, chain, &marker, &mut batch, serial, true, &stamps, &mut frame, wr,
    )
    .await?;
    tracing::info!(link = %def.id, serial, records = sent, "logical bootstrap sent");
    Ok(serial)
}

/// One message of a logical bootstrap: `batch` through the stages (emptied).
#[allow(clippy::too_many_arguments)]
async fn ship_snapshot_part<W: AsyncWrite + Unpin>(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    chain: &mut crate::plugins::Chain,
    marker: &crate::log::durable::RawTxn,
    batch: &mut Vec<OwnedRecord>,
    serial: u64,
    last: bool,
    stamps: &HashMap<u64, Stamp>,
    frame: &mut FrameWriter,
    wr: &mut W,
) -> Result<(), String> {
    let mut input = doppel_sdk::abi::BatchBuilder::new();
    for r in batch.iter() {
        input.push(r);
    }
    let ops = stage(repl, link, def, chain, marker, batch, input)?;
    batch.clear();
    frame.clear();
    if def.spec.conflicts.is_some() {
        frame.push(&mutual::versions_msg(0, &ops, stamps)?);
    }
    frame.push(&Msg::LogicalSnapshot {
        serial,
        last,
        ops: &ops,
    });
    send(wr, frame.frame()).await
}

/// The transmission-completion watermark's time (SPEC D2) once everything up to
/// `shipped` has been sent: every update of the database stamped at or before it has
/// been sent. When the link has caught up, that is the database's stable point (so an
/// idle database lets the replica's dependents go on); otherwise the last update sent.
fn complete_us(db: &Database, shipped: u64, last_shipped_us: u64) -> u64 {
    let (serial, us) = db.stable_point();
    if serial <= shipped {
        us
    } else {
        last_shipped_us
    }
}

/// Run one transaction through the link's interrelation rules: its dependencies on the
/// tenant's other databases (SPEC D1). What a rule rejects follows the error policy;
/// under `quarantine` the transaction still ships, without that record's dependency,
/// and the dead letter says so.
#[allow(clippy::too_many_arguments)]
fn interrelate(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    rules: &mut [crate::plugins::Stage],
    sources: &mut interrelation::Sources,
    txn: &crate::log::durable::RawTxn,
    records: &[OwnedRecord],
    batch: &doppel_sdk::abi::BatchBuilder,
) -> Result<Vec<wire::Dependency>, String> {
    throttle(repl, def);
    let started = Instant::now();
    let result = tokio::task::block_in_place(|| {
        interrelation::depends(rules, sources, &def.spec.database, records, batch)
    });
    charge(repl, link, def, started.elapsed());
    let (deps, errors) = match result {
        Ok(out) => out,
        Err(e) => (
            Vec::new(),
            vec![interrelation::RuleError {
                index: None,
                plugin: e.plugin().to_string(),
                message: e.to_string(),
            }],
        ),
    };
    let rejected: Vec<Rejected> = errors
        .into_iter()
        .map(|e| Rejected {
            index: e.index,
            plugin: e.plugin,
            message: e.message,
        })
        .collect();
    reject(
        repl,
        link,
        def,
        txn,
        records,
        &rejected,
        "shipped without this record's interrelation",
    )?;
    Ok(deps)
}

/// The tenant's plugin CPU budget throttles the link: it waits; nothing is dropped.
fn throttle(repl: &Replication, def: &LinkDef) {
    while let Err(wait) = repl.tenancy.quotas.plugin_cpu_available(&def.tenant) {
        tokio::task::block_in_place(|| std::thread::sleep(wait.min(Duration::from_millis(100))));
    }
}

/// Account a stage's CPU time to the link and to the tenant's plugin budget.
fn charge(repl: &Replication, link: &LinkHandle, def: &LinkDef, spent: Duration) {
    link.status.lock().plugin_seconds += spent.as_secs_f64();
    repl.tenancy.quotas.charge_plugin_cpu(&def.tenant, spent);
}

/// A record a stage rejected (`index` None: every record of the batch is suspect).
struct Rejected {
    index: Option<usize>,
    plugin: String,
    message: String,
}

/// Apply the error policy to what stages rejected: `stop` stops the link with the first
/// error (Err; nothing of the transaction ships); `quarantine` keeps each record in the
/// dead letters with why, `outcome` saying what became of it.
fn reject(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    txn: &crate::log::durable::RawTxn,
    records: &[OwnedRecord],
    rejected: &[Rejected],
    outcome: &str,
) -> Result<(), String> {
    let Some(first) = rejected.first() else {
        return Ok(());
    };
    if def.spec.on_error == OnError::Stop {
        let at = first
            .index
            .and_then(|i| records.get(i))
            .map_or(String::new(), |r| {
                format!(" record '{}' of file '{}',", r.key, r.file)
            });
        link.stopped.store(true, Ordering::SeqCst);
        return Err(format!(
            "stopped by its error policy: stage {} rejected{at} source serials {}-{}: {}",
            first.plugin, txn.first_serial, txn.last_serial, first.message
        ));
    }
    for r in rejected {
        let hit: Vec<&OwnedRecord> = match r.index {
            Some(i) => records.get(i).into_iter().collect(),
            None => records.iter().collect(),
        };
        for record in hit {
            let seq = repl.node.generate_id().map_err(|e| e.to_string())?;
            repl.dead_letters.push(
                &def.id,
                seq,
                serde_json::json!({
                    "record": logical::record_json(record),
                    "plugin": r.plugin,
                    "error": r.message,
                    "outcome": outcome,
                    "at_ms": wall_us() / 1000,
                }),
            )?;
            link.status.lock().quarantined += 1;
        }
    }
    Ok(())
}

/// Run one transaction of a logical link through its filters and transforms; the
/// operations to ship. What they reject follows the error policy ([`reject`]).
fn stage(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    chain: &mut crate::plugins::Chain,
    txn: &crate::log::durable::RawTxn,
    records: &[OwnedRecord],
    input: doppel_sdk::abi::BatchBuilder,
) -> Result<Vec<u8>, String> {
    if chain.stages.is_empty() || records.is_empty() {
        return logical::ops_bytes(&input);
    }
    throttle(repl, def);
    let started = Instant::now();
    let result = tokio::task::block_in_place(|| chain.run(input));
    charge(repl, link, def, started.elapsed());
    let (output, rejected) = match result {
        Ok(out) => {
            let errors = out
                .errors
                .into_iter()
                .map(|e| Rejected {
                    index: e.index.map(|i| i as usize),
                    plugin: e.plugin,
                    message: e.message,
                })
                .collect();
            (out.batch, errors)
        }
        // The whole batch failed (a trap, a limit): every record of it is rejected.
        Err(e) => (
            doppel_sdk::abi::BatchBuilder::new(),
            vec![Rejected {
                index: None,
                plugin: e.plugin().to_string(),
                message: e.to_string(),
            }],
        ),
    };
    reject(repl, link, def, txn, records, &rejected, "not shipped")?;
    logical::ops_bytes(&output)
}

/// Aborts the task when dropped (the reading half of a session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
