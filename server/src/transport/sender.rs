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
//! time the previous frame took to write. A synchronous link that is caught up keeps
//! one frame in flight: the commits made while it travels share the next frame and its
//! one confirmation. The reading half hands the replica's confirmations straight to a
//! synchronous link's quorum, which wakes the commits they cover.
//!
//! A session's steps: `connect` (register with the target's API, handshake),
//! `continue_from` (where the log continues the replica: the last serial both logs'
//! histories share, `transport::history`) or else `bootstrap` (a snapshot), then `stream`, whose loop does the waiting and the socket writes. What to
//! send is decided by plain state: the `Window` (whether a frame may start, what a
//! confirmation or a retransmission request does to it) and the `Shipper` (the
//! durability wait, the log read, the frame with each transaction's stages,
//! interrelation and versions, and what each reply of the replica changes).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, watch};

use doppel_sdk::abi::OwnedRecord;

use super::history;
use super::interrelation;
use super::links::{Apply, LinkDef, LinkState, Mode, OnError, ReplicaRequest};
use super::logical;
use super::mutual;
use super::net::{self, Reader, Writer};
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
/// The replica answers every frame and heartbeat; this much silence (or a write that
/// long blocked) ends the session. A connection whose peer vanished while the network
/// was partitioned otherwise stays open with nothing getting through (found by the
/// simulation, docs/RELIABILITY.md).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(30);
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
        let to_postgres = link.def.lock().postgres_url.is_some();
        let result = if to_postgres {
            super::postgres::session(&repl, &link, &mut control).await
        } else {
            session(&repl, &link, &mut control).await
        };
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

/// Register the replica with the target node (its REST API, through the node's
/// [`net::Network`]): the target's replication address.
async fn register(repl: &Arc<Replication>, def: &LinkDef, db: &Database) -> Result<String, String> {
    let body = ReplicaRequest {
        database: def.spec.target.database.clone(),
        source_database: def.spec.database.clone(),
        spec: db.def.spec.clone(),
        credential: def.credential.clone(),
        source_node: repl.node_id.clone(),
        apply: def.spec.options.apply,
        resync: def.spec.target.resync,
        conflicts: def.spec.options.conflicts.clone(),
    };
    repl.net.register(repl, def, body).await
}

/// What the reading half reports besides confirmations (those go to [`Replies::acked`]).
enum Event {
    /// The replica was suspended (true) or released.
    Suspended(bool),
    Retransmit(u64),
    NeedBootstrap(String),
    Closed(String),
}

/// Where the reading half puts what the replica said.
struct Replies {
    /// The highest serial the replica confirmed, for the session's window: the latest
    /// value is what counts, so confirmations never queue (nor block the reading half).
    acked: Arc<watch::Sender<u64>>,
    events: mpsc::Sender<Event>,
    /// A synchronous link's quorum (the database and the link's id): told of each
    /// confirmation and suspension by the reading half itself, in the order the replica
    /// sent them, so a commit is released without a hop through the session's task.
    quorum: Option<(Arc<Database>, String)>,
    /// A synchronous link's status, whose confirmed serial the reading half keeps up
    /// to date itself (the session's task takes confirmations only when it needs them).
    status: Option<Arc<LinkHandle>>,
}

impl Replies {
    /// The replica was suspended (true) or released: the quorum does not wait for a
    /// detached replica (SPEC G6); the session shows it.
    fn suspended(&self, suspended: bool) -> Event {
        if let Some((db, link)) = &self.quorum {
            db.quorum.set_suspended(link, suspended);
        }
        Event::Suspended(suspended)
    }
}

/// The reading half: hands confirmations to the quorum (a synchronous link) and the
/// session's window, the replica's other messages to the session as [`Event`]s, and
/// ends with [`Event::Closed`] when the connection does (or a frame is malformed).
async fn read_replies(mut rd: Reader, out: Replies) {
    let mut payload = Vec::new();
    loop {
        let event = match wire::read_frame_into(&mut rd, &mut payload).await {
            Ok(()) => match wire::messages(&payload) {
                Ok(msgs) => {
                    let mut events = Vec::new();
                    for m in msgs {
                        match m {
                            Msg::BackupCompleted { serial } => {
                                if let Some((db, link)) = &out.quorum {
                                    db.quorum.ack(link, serial);
                                }
                                out.acked.send_if_modified(|acked| {
                                    let moved = serial > *acked;
                                    *acked = (*acked).max(serial);
                                    moved
                                });
                                if let Some(link) = &out.status {
                                    let mut status = link.status.lock();
                                    status.acked_serial = status.acked_serial.max(serial);
                                }
                            }
                            Msg::Retransmit { from } => events.push(Event::Retransmit(from)),
                            Msg::Suspend => events.push(out.suspended(true)),
                            Msg::Release => events.push(out.suspended(false)),
                            Msg::Refused { code, reason } => events.push(Event::Closed(format!(
                                "the replica refused: {reason} ({code})"
                            ))),
                            Msg::NeedBootstrap { reason } => {
                                events.push(Event::NeedBootstrap(reason))
                            }
                            _ => {}
                        }
                    }
                    for e in events {
                        if out.events.send(e).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(e) => Event::Closed(format!("the replica sent a malformed frame: {e}")),
            },
            Err(e) => Event::Closed(format!("the replica's connection ended: {e}")),
        };
        let _ = out.events.send(event).await;
        return;
    }
}

/// Write one frame to the replica.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), String> {
    wire::write_frame(w, frame)
        .await
        .map_err(|e| format!("sending to the replica: {e}"))
}

/// Write one frame of the stream: one that cannot be written for [`SILENCE_TIMEOUT`]
/// (nothing is read at the other end) ends the session.
async fn send_live<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), String> {
    tokio::time::timeout(SILENCE_TIMEOUT, send(w, frame))
        .await
        .map_err(|_| {
            format!(
                "the replica has not read for {} s",
                SILENCE_TIMEOUT.as_secs()
            )
        })?
}

/// Stream a frozen copy of the store: the serial the replica continues from, and the
/// bytes sent.
async fn send_snapshot<W: AsyncWrite + Unpin>(
    db: &Database,
    wr: &mut W,
    deps: Option<impl FnOnce(&crate::store::Store) -> Result<Vec<wire::Dependency>, String>>,
) -> Result<(u64, u64), String> {
    let (frozen, serial, next_txn) = db.freeze();
    if let Some(deps) = deps {
        // What the frozen records depend on in other databases goes first, so the
        // replica installs the snapshot only once those are there (SPEC D3).
        let deps = deps(&frozen)?;
        if !deps.is_empty() {
            send(
                wr,
                &wire::single(&Msg::Depends {
                    txn: wire::SNAPSHOT_TXN,
                    deps,
                }),
            )
            .await?;
        }
    }
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
    Ok((serial, size + layout_bytes.len() as u64))
}

/// One connection's life, step by step: [`connect`] (register, handshake), a snapshot
/// through [`bootstrap`] when [`continue_from`] says the replica's position cannot be
/// continued from the log (else a `Follow` telling it where it continues), then [`stream`]. Ok when the link's definition changed
/// (pause, delete); Err with the reason it broke.
async fn session(
    repl: &Arc<Replication>,
    link: &Arc<LinkHandle>,
    control: &mut watch::Receiver<u64>,
) -> Result<(), String> {
    let def = link.def.lock().clone();
    link.status.lock().state = LinkState::Connecting;
    let db = repl
        .node
        .database(&def.tenant, &def.spec.database)
        .map_err(|e| format!("the source database: {e}"))?;
    let (rd, mut wr, peer) = connect(repl, &def, &db).await?;
    link.status.lock().connections += 1;

    let (last, _) = db.serials();
    let oldest = db
        .log_store()
        .oldest_serial(db.def.uid, LogKind::A)
        .map_err(|e| e.to_string())?;
    // Asked for (by the replica, a lost log tail) or needed: either way, once.
    let forced = link.force_bootstrap.swap(false, Ordering::SeqCst);
    let mirror = def.spec.options.apply == Apply::Mirror;
    let start = if forced {
        None
    } else {
        continue_from(&peer, last, oldest, mirror)
    };
    // A mirror's stages are interrelation rules only (checked when the link was made).
    let mut stages = logical::stages(&repl.plugins, &def.tenant, &def.spec.options.stages)
        .map_err(|e| e.to_string())?;
    let sources = (!stages.rules.is_empty())
        .then(|| interrelation::Sources::new(repl.node.clone(), &def.tenant, &db));
    let window = match start {
        None => {
            tracing::info!(link = %def.id, replica_serial = peer.last, source_serial = last, "bootstrapping the replica from a snapshot");
            let rules = (!stages.rules.is_empty()).then_some(&mut stages.rules[..]);
            let serial =
                bootstrap(repl, link, &def, &db, &mut stages.chain, rules, &mut wr).await?;
            link.status.lock().started_at = None;
            // Nothing is confirmed until the replica confirms the snapshot's serial.
            Window::new(serial + 1, 0)
        }
        Some(from) => {
            if mirror {
                // The replica drops what it holds beyond `from` and takes our history.
                let frame = wire::single(&Msg::Follow { serial: from });
                send(&mut wr, &frame).await?;
                let discarded = peer.last.saturating_sub(from);
                let mut status = link.status.lock();
                status.bytes_sent += frame.len() as u64;
                status.discarded_entries += discarded;
                if peer.stream != peer.ours && peer.last > 0 {
                    status.resumed_by_serial += 1;
                    tracing::info!(link = %def.id, replica_serial = peer.last, from, discarded, source_serial = last, "the replica follows another source's history: continued by serial, no snapshot");
                }
            }
            link.status.lock().started_at = Some(from);
            Window::new(from + 1, from)
        }
    };
    let shipper = Shipper::new(repl, link, def, db, stages, sources, window);
    shipper.started();
    stream(shipper, rd, wr, control).await
}

/// What the replica answered to the handshake.
struct Peer {
    /// The last serial it holds of ours: the replica's own serial (mirror) or its
    /// position in our stream (logical).
    last: u64,
    /// The stream it follows (0: none yet).
    stream: u64,
    /// Our stream, as the Hello presented it.
    ours: u64,
    /// The history of the replica's log (empty: unknown).
    theirs: Vec<history::Epoch>,
    /// Ours, as the Hello presented it.
    history: Vec<history::Epoch>,
}

/// Register the replica with the target's API, connect to its replication address and
/// shake hands (protocol version, link, credential): the socket's halves and where the
/// replica stands.
async fn connect(
    repl: &Arc<Replication>,
    def: &LinkDef,
    db: &Database,
) -> Result<(Reader, Writer, Peer), String> {
    let registered = register(repl, def, db).await?;
    let addr = def.spec.target.replication.clone().unwrap_or(registered);
    let net::Conn { mut rd, mut wr, .. } =
        tokio::time::timeout(CONNECT_TIMEOUT, repl.net.connect(&addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let ours = repl.stream_id(db);
    let history = repl
        .history(db)
        .map_err(|e| format!("the log's history: {e}"))?;
    send(
        &mut wr,
        &wire::single(&Msg::Hello(Hello {
            version: wire::PROTOCOL_VERSION,
            link: def.id.clone(),
            credential: def.credential.clone(),
            source_node: repl.node_id.clone(),
            tenant: def.tenant.clone(),
            database: def.spec.target.database.clone(),
            stream: ours,
            history: history.clone(),
        })),
    )
    .await?;
    let payload = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read_frame(&mut rd))
        .await
        .map_err(|_| "the replica did not answer the handshake".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    match wire::messages(&payload)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
    {
        Some(Msg::Welcome {
            last_serial,
            stream,
            history: theirs,
            ..
        }) => Ok((
            rd,
            wr,
            Peer {
                last: last_serial,
                stream,
                ours,
                theirs,
                history,
            },
        )),
        Some(Msg::Refused { code, reason }) => {
            Err(format!("the replica refused the link: {reason} ({code})"))
        }
        _ => Err("the replica answered the handshake with something else".into()),
    }
}

/// Where the replica's position can be continued from the log (None: it needs a
/// snapshot). A mirror compares the two logs' histories ([`history::common`]): the
/// replica continues after the last serial both hold, discarding a diverged tail beyond
/// it, as long as it keeps some of its log and ours reaches back there. Without a known
/// history (and for logical links, whose positions are per stream), only a replica of
/// our own stream (or a fresh one) that is not ahead of us continues.
fn continue_from(peer: &Peer, last: u64, oldest: Option<u64>, mirror: bool) -> Option<u64> {
    let fresh = peer.stream == 0 && peer.last == 0;
    let ours_or_fresh = peer.stream == peer.ours || fresh;
    let by_history = mirror
        .then(|| history::common(&peer.theirs, peer.last, &peer.history, last))
        .flatten();
    let shared = match by_history {
        // Nothing in common but an empty log: the replica is another database.
        Some(0) if peer.last > 0 => None,
        Some(shared) => Some(shared),
        None => (ours_or_fresh && peer.last <= last).then_some(peer.last),
    }?;
    let log_reaches = shared >= last || oldest.is_some_and(|o| o <= shared + 1);
    log_reaches.then_some(shared)
}

/// Send the replica a snapshot (a frozen copy of the store, or of its records through
/// the stages for a logical link): the serial it will stand at.
#[allow(clippy::too_many_arguments)]
async fn bootstrap<W: AsyncWrite + Unpin>(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    db: &Database,
    chain: &mut crate::plugins::Chain,
    rules: Option<&mut [crate::plugins::Stage]>,
    wr: &mut W,
) -> Result<u64, String> {
    link.status.lock().state = LinkState::Bootstrapping;
    let serial = if def.spec.options.apply == Apply::Logical {
        send_logical_snapshot(repl, link, def, db, chain, wr).await?
    } else {
        let deps = rules.map(|rules| {
            let sources = interrelation::Sources::new(repl.node.clone(), &def.tenant, db);
            move |store: &crate::store::Store| {
                snapshot_depends(repl, link, def, rules, sources, store)
            }
        });
        let (serial, bytes) = send_snapshot(db, wr, deps).await?;
        link.status.lock().bytes_sent += bytes;
        serial
    };
    link.status.lock().bootstraps += 1;
    Ok(serial)
}

/// Stream the log until the definition changes (Ok) or the connection breaks (Err):
/// ship a frame whenever the log holds more and the window has room; otherwise wait for
/// whichever comes first of more log, a reply, the heartbeat and a change of the
/// definition. The waiting and the socket are here; what to send and what a reply
/// changes are the [`Shipper`]'s.
///
/// A synchronous link keeps one frame in flight while it is caught up: the commits
/// made while a frame travels wait for its confirmation and then share the next frame
/// and its one confirmation (group commit over the wire). One commit alone finds
/// nothing in flight and goes at once; a link catching up (the log held more than its
/// last frame took) sends frame after frame as an asynchronous one does.
async fn stream(
    mut s: Shipper<'_>,
    rd: Reader,
    mut wr: Writer,
    control: &mut watch::Receiver<u64>,
) -> Result<(), String> {
    let (tx, mut events) = mpsc::channel(256);
    // Kept here too, so the channel stays open when the reading half ends (its last
    // word, why, comes as an event).
    let acked_tx = Arc::new(watch::channel(s.window.acked).0);
    let mut acked = acked_tx.subscribe();
    let sync = s.def.spec.options.mode == Mode::Sync;
    let replies = Replies {
        acked: acked_tx.clone(),
        events: tx,
        quorum: sync.then(|| (s.db.clone(), s.def.id.clone())),
        status: sync.then(|| s.link.clone()),
    };
    let reader = tokio::spawn(read_replies(rd, replies));
    let _reader = AbortOnDrop(reader);
    let mut appended = s.db.subscribe_appended();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    // When the replica was last heard from, and a timer that looks at it only when it
    // fires (then set again from `heard`), so an answer costs no timer of its own.
    let mut heard = tokio::time::Instant::now();
    let silence = tokio::time::sleep(SILENCE_TIMEOUT);
    tokio::pin!(silence);
    // The log held more than the last frame took: the link is catching up, frames go
    // back to back.
    let mut catching_up = false;
    loop {
        // The definition changed (stages swapped, paused, deleted): nothing more ships
        // under the old one; the next session reads the new one. Checked before each
        // frame, so a record committed after the change never goes through old stages.
        if control.has_changed().unwrap_or(true) {
            return Ok(());
        }
        // What the replica confirmed since the last turn. A synchronous link's reading
        // half wakes this task for a confirmation only when it waits for one (below):
        // the quorum and the status have it already, so a commit is released without
        // waking this task too.
        if acked.has_changed().unwrap_or(false) {
            heard = tokio::time::Instant::now();
            let serial = *acked.borrow_and_update();
            s.acked(serial);
        }
        let available = *appended.borrow_and_update();
        let hold = s.link.hold_at.load(Ordering::SeqCst);
        // A synchronous link that is caught up keeps one frame in flight: what is
        // committed meanwhile waits for its confirmation and goes in the next frame.
        let in_flight = sync && !catching_up && s.window.acked < s.window.sent();
        if !in_flight && s.window.may_send(available, hold) {
            s.await_durable(available).await?;
            let txns = s.read_log()?;
            let frame = s.frame(&txns, hold)?;
            let bytes = frame.len() as u64;
            send_live(&mut wr, frame).await?;
            let mut status = s.link.status.lock();
            status.sent_serial = s.window.sent();
            status.bytes_sent += bytes;
            drop(status);
            catching_up = s.window.sent() < available;
            continue;
        }
        // The log holds more than was sent, and only a confirmation lets it go (the
        // frame in flight, a full window): wait for that rather than for more log.
        let blocked = s.window.next <= available && (in_flight || !s.window.has_room());
        tokio::select! {
            changed = appended.changed(), if !sync || !blocked => {
                if changed.is_err() {
                    return Err("the source database was deleted".into());
                }
            }
            _ = acked.changed(), if !sync || blocked => {
                heard = tokio::time::Instant::now();
                let serial = *acked.borrow_and_update();
                s.acked(serial);
            }
            event = events.recv() => {
                heard = tokio::time::Instant::now();
                // What the replica confirmed before asking for something is taken
                // first, as it was sent.
                if acked.has_changed().unwrap_or(false) {
                    let serial = *acked.borrow_and_update();
                    s.acked(serial);
                }
                s.on_event(event)?
            }
            _ = heartbeat.tick() => send_live(&mut wr, &s.heartbeat()).await?,
            _ = control.changed() => return Ok(()),
            _ = &mut silence => {
                let now = tokio::time::Instant::now();
                if heard + SILENCE_TIMEOUT <= now {
                    if events.is_empty() && !acked.has_changed().unwrap_or(false) {
                        return Err(format!(
                            "the replica has not answered for {} s",
                            SILENCE_TIMEOUT.as_secs()
                        ));
                    }
                    // Answers queued while frames went out: taken on the next turn.
                    heard = now;
                }
                silence.as_mut().reset(heard + SILENCE_TIMEOUT);
            }
        }
    }
}

/// A session's window over the stream: the next serial to send, the last one the
/// replica confirmed, and the transactions sent in between. Plain data: it decides
/// whether a frame may start and what a confirmation or a retransmission request does
/// to it; the socket is the caller's.
///
/// Invariants: `acked` never moves backward; the in-flight transactions' serials
/// increase and are all below `next`; a frame starts only with fewer than
/// [`WINDOW_ENTRIES`] serials sent past `acked` (the frame itself may carry up to
/// [`FRAME_BYTES`] of log, or one larger transaction, past that).
struct Window {
    /// The next serial to send (at least 1).
    next: u64,
    /// The last serial the replica confirmed (0 after a bootstrap, until it confirms
    /// the snapshot).
    acked: u64,
    /// (last serial, timestamp in µs) of each transaction sent and not yet confirmed.
    in_flight: VecDeque<(u64, u64)>,
}

impl Window {
    fn new(next: u64, acked: u64) -> Window {
        debug_assert!(next >= 1, "serials start at 1");
        Window {
            next,
            acked,
            in_flight: VecDeque::new(),
        }
    }

    /// The last serial sent.
    fn sent(&self) -> u64 {
        self.next - 1
    }

    /// Room for another frame: fewer than [`WINDOW_ENTRIES`] serials unconfirmed
    /// (backpressure).
    fn has_room(&self) -> bool {
        self.next - 1 < self.acked + WINDOW_ENTRIES
    }

    /// Whether a frame may start: the log holds serial `next` (`available` is the last
    /// appended), the window has room, and a verify's hold (`hold`, 0: none) is not
    /// reached.
    fn may_send(&self, available: u64, hold: u64) -> bool {
        let held = hold != 0 && self.next > hold;
        self.next <= available && self.has_room() && !held
    }

    /// Transaction `first..=last`, stamped `timestamp_us` at its end, went into a
    /// frame. The log is read in order without gaps, so it starts at `next`.
    fn sent_txn(&mut self, first: u64, last: u64, timestamp_us: u64) {
        debug_assert_eq!(first, self.next, "transactions are sent in serial order");
        debug_assert!(last >= first, "a transaction ends at or after its start");
        debug_assert!(
            self.in_flight.back().is_none_or(|(s, _)| *s < last),
            "in-flight serials increase"
        );
        self.in_flight.push_back((last, timestamp_us));
        self.next = last + 1;
    }

    /// The replica confirmed `serial`: true if that moved the window (a confirmation
    /// reordered or duplicated on the way is older than one already seen).
    fn ack(&mut self, serial: u64) -> bool {
        if serial <= self.acked {
            return false;
        }
        self.acked = serial;
        while self.in_flight.front().is_some_and(|(s, _)| *s <= serial) {
            self.in_flight.pop_front();
        }
        true
    }

    /// The replica asked for everything from `from` again: true if the request is
    /// current (sent and not confirmed), which rewinds the window to it.
    fn rewind(&mut self, from: u64) -> bool {
        if !(from < self.next && from > self.acked.saturating_sub(1)) {
            return false;
        }
        self.next = from.max(1);
        self.in_flight.retain(|(s, _)| *s < from);
        true
    }

    /// How long the oldest unconfirmed transaction has been waiting, in ms.
    fn lag_ms(&self) -> u64 {
        self.in_flight
            .front()
            .map_or(0, |(_, ts)| wall_us().saturating_sub(*ts) / 1000)
    }
}

/// A transaction's records, ready for the stages and the interrelation rules.
struct Staged {
    records: Vec<OwnedRecord>,
    batch: doppel_sdk::abi::BatchBuilder,
    /// A mutual link's record versions, by record serial.
    stamps: Option<HashMap<u64, Stamp>>,
}

/// One streaming session's state on the source: what the link ships and how (mirror or
/// logical, stages, interrelation rules, the extra logs), the [`Window`], and the frame
/// being built, reused frame after frame. Its methods decide what to send and build it,
/// and account what the replica answers; [`stream`] does the waiting and the writing.
struct Shipper<'a> {
    repl: &'a Arc<Replication>,
    link: &'a Arc<LinkHandle>,
    def: LinkDef,
    db: Arc<Database>,
    /// A database's files are fixed when it is created: one copy serves the session.
    schema: crate::store::Schema,
    stages: logical::Stages,
    /// The tenant's other databases, when the link has interrelation rules.
    sources: Option<interrelation::Sources>,
    logical: bool,
    mutual: bool,
    /// The logs shipped besides A.
    also: &'static [LogKind],
    /// Ship what is in the log without waiting for it to be durable.
    ship_early: bool,
    /// Everything up to here is known durable on the source.
    durable: u64,
    window: Window,
    frame: FrameWriter,
    /// The timestamp of the last update shipped: with the serial shipped, the watermark.
    last_shipped_us: u64,
    /// When the throughput was last measured, and the confirmed serial then.
    rate: (Instant, u64),
}

impl<'a> Shipper<'a> {
    fn new(
        repl: &'a Arc<Replication>,
        link: &'a Arc<LinkHandle>,
        def: LinkDef,
        db: Arc<Database>,
        stages: logical::Stages,
        sources: Option<interrelation::Sources>,
        window: Window,
    ) -> Shipper<'a> {
        let logical = def.spec.options.apply == Apply::Logical;
        // A mirror ships its B (when asked) and T logs too (its A chunks carry the T log;
        // separate T chunks are those an earlier build wrote); a logical link needs A only.
        let mutual = def.spec.options.conflicts.is_some();
        let also: &'static [LogKind] = match (logical, def.spec.options.b_log) {
            // A mutual link sends each record's before image, a resolver's base.
            (true, _) if mutual => &[LogKind::B],
            (true, _) => &[],
            (false, true) => &[LogKind::B, LogKind::T],
            (false, false) => &[LogKind::T],
        };
        let ship_early =
            def.spec.options.mode == Mode::Sync || db.def.spec.durability == Durability::None;
        Shipper {
            repl,
            link,
            schema: db.schema(),
            rate: (Instant::now(), window.acked),
            def,
            db,
            stages,
            sources,
            logical,
            mutual,
            also,
            ship_early,
            durable: 0,
            window,
            frame: FrameWriter::new(),
            last_shipped_us: 0,
        }
    }

    /// The link is streaming: its status and, for a synchronous link, the quorum learn
    /// where the replica stands.
    fn started(&self) {
        {
            let mut status = self.link.status.lock();
            status.state = LinkState::Streaming;
            status.acked_serial = self.window.acked;
            status.sent_serial = self.window.sent();
        }
        if self.def.spec.options.mode == Mode::Sync {
            self.db.quorum.ack(&self.def.id, self.window.acked);
        }
    }

    /// An asynchronous link ships only what is durable on the source: wait for the
    /// flush that covers `available` unless that is known already.
    async fn await_durable(&mut self, available: u64) -> Result<(), String> {
        if !self.ship_early && self.window.next > self.durable {
            // `available` was read before this flush was asked for: it is covered.
            self.db
                .await_durable()
                .await
                .map_err(|e| format!("the source log: {e}"))?;
            self.durable = available;
        }
        Ok(())
    }

    /// The next transactions from the log, up to [`FRAME_BYTES`], starting at the
    /// window's next serial. If the log no longer holds it, the replica must be
    /// bootstrapped again (Err; the next session does it).
    fn read_log(&self) -> Result<Vec<crate::log::durable::RawTxn>, String> {
        let next = self.window.next;
        let txns = self
            .db
            .log_store()
            .read_txns(self.db.def.uid, next - 1, FRAME_BYTES, self.also)
            .map_err(|e| format!("reading the source log: {e}"))?;
        if txns.first().map(|t| t.first_serial) != Some(next) {
            self.link.force_bootstrap.store(true, Ordering::SeqCst);
            return Err(format!(
                "the source log no longer holds serial {next}; the replica will be re-bootstrapped"
            ));
        }
        Ok(txns)
    }

    /// Build the frame of `txns` (up to a verify's hold, `hold`, 0: none), ending with
    /// the watermark; the window counts them as sent.
    fn frame(&mut self, txns: &[crate::log::durable::RawTxn], hold: u64) -> Result<&[u8], String> {
        debug_assert!(
            self.window.has_room(),
            "a frame starts only with room in the window"
        );
        self.frame.clear();
        for txn in txns {
            if hold != 0 && txn.first_serial > hold {
                break;
            }
            self.push_txn(txn)?;
            self.window
                .sent_txn(txn.first_serial, txn.last_serial, txn.last_timestamp_us);
            self.last_shipped_us = txn.last_timestamp_us;
        }
        self.frame.push(&Msg::Watermark {
            serial: self.window.sent(),
            timestamp_us: self.last_shipped_us,
        });
        Ok(self.frame.frame())
    }

    /// Put one transaction into the frame: as stored (mirror) or as the operations the
    /// stages make of it (logical); first its dependencies when the link has
    /// interrelation rules, and on a mutual link its records' versions.
    fn push_txn(&mut self, txn: &crate::log::durable::RawTxn) -> Result<(), String> {
        let staged = self.staged(txn)?;
        if let (Some(sources), Some(staged)) = (self.sources.as_mut(), &staged) {
            let deps = interrelate(
                self.repl,
                self.link,
                &self.def,
                &mut self.stages.rules,
                sources,
                txn,
                &staged.records,
                &staged.batch,
            )?;
            if !deps.is_empty() {
                self.frame.push(&Msg::Depends { txn: txn.txn, deps });
                self.link.status.lock().interrelated += 1;
            }
        }
        match staged.filter(|_| self.logical) {
            Some(staged) => {
                let ops = stage(
                    self.repl,
                    self.link,
                    &self.def,
                    &mut self.stages.chain,
                    txn,
                    &staged.records,
                    staged.batch,
                )?;
                if let Some(stamps) = &staged.stamps {
                    self.frame.push(
                        &mutual::versions_msg(txn.txn, &ops, stamps).map_err(|e| e.to_string())?,
                    );
                }
                self.frame.push(&Msg::Logical {
                    txn: txn.txn,
                    first_serial: txn.first_serial,
                    last_serial: txn.last_serial,
                    ops: &ops,
                });
            }
            None => push_mirror(&mut self.frame, txn),
        }
        Ok(())
    }

    /// A transaction's records, when the stages or the interrelation rules need them
    /// (None for a mirror without rules: it ships the stored chunks).
    fn staged(&self, txn: &crate::log::durable::RawTxn) -> Result<Option<Staged>, String> {
        if !self.logical && self.sources.is_none() {
            return Ok(None);
        }
        let mut records =
            logical::records(&self.schema, self.repl.origin(), txn).map_err(|e| e.to_string())?;
        let mut stamps = None;
        if self.mutual {
            let (local, by_serial) =
                mutual::outgoing(&self.schema, txn, records, self.repl.origin())
                    .map_err(|e| e.to_string())?;
            records = local;
            stamps = Some(by_serial);
        }
        let mut batch = doppel_sdk::abi::BatchBuilder::new();
        for r in &records {
            batch.push(r);
        }
        Ok(Some(Staged {
            records,
            batch,
            stamps,
        }))
    }

    /// What the replica said besides confirmations: a retransmission request rewinds the
    /// window; a request for a snapshot, a refusal or the end of the connection end
    /// the session (Err).
    fn on_event(&mut self, event: Option<Event>) -> Result<(), String> {
        match event {
            Some(Event::Suspended(suspended)) => self.suspended(suspended),
            Some(Event::Retransmit(from)) => {
                if self.window.rewind(from) {
                    tracing::debug!(link = %self.def.id, from, "retransmitting");
                }
            }
            Some(Event::NeedBootstrap(reason)) => {
                self.link.force_bootstrap.store(true, Ordering::SeqCst);
                return Err(format!("the replica asked for a snapshot: {reason}"));
            }
            Some(Event::Closed(reason)) => return Err(reason),
            None => return Err("the replica's connection ended".into()),
        }
        Ok(())
    }

    /// The replica confirmed `serial`: the window and the status move on (a synchronous
    /// link's quorum heard it from the reading half already).
    fn acked(&mut self, serial: u64) {
        let before = self.window.acked;
        if !self.window.ack(serial) {
            return;
        }
        debug_assert!(self.window.acked > before, "acked never moves backward");
        let mut status = self.link.status.lock();
        // A synchronous link's reading half may have set a later one already.
        status.acked_serial = status.acked_serial.max(self.window.acked);
        status.lag_ms = self.window.lag_ms();
    }

    /// The replica was suspended (true) or released: the link's state says so (the
    /// reading half told a synchronous link's quorum, which does not wait for a
    /// detached replica, SPEC G6).
    fn suspended(&self, suspended: bool) {
        self.link.status.lock().state = if suspended {
            LinkState::Suspended
        } else {
            LinkState::Streaming
        };
        tracing::info!(link = %self.def.id, suspended, "the replica changed its attachment");
    }

    /// The heartbeat's frame, with the watermark (so a loss at the end of the stream
    /// shows); at most once a second it also measures throughput and lag.
    fn heartbeat(&mut self) -> Vec<u8> {
        let (elapsed, base) = (self.rate.0.elapsed().as_secs_f64(), self.rate.1);
        if elapsed >= 1.0 {
            let acked = self.window.acked;
            let mut status = self.link.status.lock();
            let now = (acked - base.min(acked)) as f64 / elapsed;
            status.throughput = if status.throughput == 0.0 {
                now
            } else {
                0.5 * status.throughput + 0.5 * now
            };
            status.lag_ms = self.window.lag_ms();
            self.rate = (Instant::now(), acked);
        }
        let mut frame = FrameWriter::new();
        frame.push(&Msg::Heartbeat);
        let sent = self.window.sent();
        frame.push(&Msg::Watermark {
            serial: sent,
            timestamp_us: complete_us(&self.db, sent, self.last_shipped_us),
        });
        frame.finish()
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
    let versions_id =
        versions::versions_id(&schema).filter(|_| def.spec.options.conflicts.is_some());
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
            records.push(logical::stored_record(repl.origin(), serial, file, r));
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
    if def.spec.options.conflicts.is_some() {
        frame.push(&mutual::versions_msg(0, &ops, stamps).map_err(|e| e.to_string())?);
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
pub(super) fn interrelate(
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
    let result = net::blocking(|| {
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

/// What the records of a frozen store (a bootstrap snapshot of a link with interrelation
/// rules) depend on in other databases: the rules run over every record, in batches, as
/// they would over the transactions that wrote them. Each dependency is on the other
/// database as it stands now, after the freeze (`before_us` the commit clock at the
/// freeze): coarser than each record's own, which is always safe. A record a rule
/// complains about is shipped all the same (the stream's rule errors are dead letters
/// of transactions; a snapshot has none to name), with a warning.
fn snapshot_depends(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    rules: &mut [crate::plugins::Stage],
    mut sources: interrelation::Sources,
    store: &crate::store::Store,
) -> Result<Vec<wire::Dependency>, String> {
    let frozen_us = crate::txn::clock::last_us();
    let schema = store.schema().clone();
    let mut deps: Vec<wire::Dependency> = Vec::new();
    let mut run = |records: &mut Vec<OwnedRecord>| -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = doppel_sdk::abi::BatchBuilder::new();
        for r in records.iter() {
            batch.push(r);
        }
        throttle(repl, def);
        let started = Instant::now();
        let result = net::blocking(|| {
            interrelation::depends(rules, &mut sources, &def.spec.database, records, &batch)
        });
        charge(repl, link, def, started.elapsed());
        let (found, errors) = result.map_err(|e| e.to_string())?;
        if let Some(e) = errors.first() {
            tracing::warn!(link = %def.id, plugin = %e.plugin, error = %e.message, complaints = errors.len(), "an interrelation rule complained about records of a bootstrap snapshot; they are shipped");
        }
        for dep in found {
            match deps.iter_mut().find(|d| d.database == dep.database) {
                Some(d) => d.serial = d.serial.max(dep.serial),
                None => deps.push(wire::Dependency {
                    before_us: frozen_us,
                    ..dep
                }),
            }
        }
        records.clear();
        Ok(())
    };
    let mut records: Vec<OwnedRecord> = Vec::with_capacity(SNAPSHOT_RECORDS);
    for (table, file) in schema.files.iter().enumerate() {
        if file.name == versions::VERSIONS_FILE {
            continue;
        }
        let mut scanned = Vec::new();
        store.files()[schema.main_id(table) as usize].scan(b"", None, |r| {
            scanned.push(OwnedRecord {
                timestamp: frozen_us,
                ..super::logical::stored_record(repl.origin(), 0, file, r)
            });
            true
        });
        for record in scanned {
            records.push(record);
            if records.len() == SNAPSHOT_RECORDS {
                run(&mut records)?;
            }
        }
    }
    run(&mut records)?;
    Ok(deps)
}

/// The tenant's plugin CPU budget throttles the link: it waits; nothing is dropped.
fn throttle(repl: &Replication, def: &LinkDef) {
    while let Err(wait) = repl.tenancy.quotas.plugin_cpu_available(&def.tenant) {
        net::blocking(|| std::thread::sleep(wait.min(Duration::from_millis(100))));
    }
}

/// Account a stage's CPU time to the link and to the tenant's plugin budget.
fn charge(repl: &Replication, link: &LinkHandle, def: &LinkDef, spent: Duration) {
    link.status.lock().plugin_seconds += spent.as_secs_f64();
    repl.tenancy.quotas.charge_plugin_cpu(&def.tenant, spent);
}

/// A record a stage rejected (`index` None: every record of the batch is suspect).
pub(super) struct Rejected {
    pub index: Option<usize>,
    pub plugin: String,
    pub message: String,
}

/// Apply the error policy to what stages rejected: `stop` stops the link with the first
/// error (Err; nothing of the transaction ships); `quarantine` keeps each record in the
/// dead letters with why, `outcome` saying what became of it.
pub(super) fn reject(
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
    if def.spec.options.on_error == OnError::Stop {
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
            repl.dead_letters
                .push(
                    &def.id,
                    seq,
                    logical::DeadLetter::new(
                        logical::record_json(record),
                        &r.plugin,
                        &r.message,
                        outcome,
                        wall_us() / 1000,
                    ),
                )
                .map_err(|e| e.to_string())?;
            link.status.lock().quarantined += 1;
        }
    }
    Ok(())
}

/// Run one transaction of a logical link through its filters and transforms; the
/// operations to ship. What they reject follows the error policy ([`reject`]).
pub(super) fn stage(
    repl: &Replication,
    link: &LinkHandle,
    def: &LinkDef,
    chain: &mut crate::plugins::Chain,
    txn: &crate::log::durable::RawTxn,
    records: &[OwnedRecord],
    input: doppel_sdk::abi::BatchBuilder,
) -> Result<Vec<u8>, String> {
    if chain.stages.is_empty() || records.is_empty() {
        return logical::ops_bytes(&input).map_err(|e| e.to_string());
    }
    throttle(repl, def);
    let started = Instant::now();
    let result = net::blocking(|| chain.run(input));
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
    logical::ops_bytes(&output).map_err(|e| e.to_string())
}

/// Aborts the task when dropped (the reading half of a session).
pub(super) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
