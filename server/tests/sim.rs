//! Deterministic simulation of replication (issue 16 §2, docs/RELIABILITY.md).
//!
//! Two real nodes (`src` and `dst`: `Node`, sled logs in a temporary directory per
//! host, `Replication` with its sender and receiver) run as turmoil hosts: one thread,
//! virtual time, a virtual network. The transport runs over it through
//! `transport::net` (the same sender and receiver code as over TCP). Everything that
//! varies comes from the seed: the workload (transactions of 1-4 upserts and deletes),
//! the link's mode (async or sync, k = 1), the network's latency, frames dropped,
//! duplicated, held back (reordered) and connections cut (reset) by [`FaultyWriter`],
//! partitions and heals, and restarts of either host (its state rebuilt from its sled
//! directory). After the faulty phase the network heals and the run waits for the
//! replica to catch up.
//!
//! Invariants checked during and after every schedule:
//! - prefix: the replica's A log is the source's, transaction by transaction (same
//!   serials, same bytes), with no gap and no duplicate, and it ends at the serial the
//!   replica's database stands at;
//! - a synchronous commit was acknowledged only once the replica held it (checked when
//!   the commit returns, and again when the replica restarts);
//! - after healing: the same last serial and identical block checksums;
//! - no panic on the simulation's thread (a debug assertion in the node counts).
//!
//! Mutual schedules (`mutual_seeds`, SPEC F4): two sites `a` and `b`, each writing the
//! same keys, linked both ways by mutual links (last writer wins, async or sync), with
//! the same faults. Checked: no update comes back to its origin; a sync commit was
//! acknowledged only once the other site applied it; after healing, once each site has
//! applied the other's stream to its end, the same records and versions on both, every
//! conflict decided by last writer wins (see [`check_mutual`]).
//!
//! `SIM_SEEDS=N` runs seeds 0..N (`SIM_FIRST` moves the start), `SIM_SEED=s` one seed
//! with its trace; `SIM_MUTUAL_SEEDS`, `SIM_MUTUAL_FIRST` and `SIM_MUTUAL_SEED` the same
//! for the mutual schedules. A failure prints its seed; the run is reproducible from it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::AsyncWrite;

use doppel_server::log::OpKind;
use doppel_server::node::{Database, Node, NodeSettings, DEFAULT_TENANT};
use doppel_server::plugins::{Limits, Registry, Runtime};
use doppel_server::store::encode_record;
use doppel_server::tenancy::auth::AuthConfig;
use doppel_server::tenancy::Tenancy;
use doppel_server::transport::links::{LinkDef, LinkSpec, ReplicaRequest};
use doppel_server::transport::net::{self, BoxFuture, Conn, Listener, Network};
use doppel_server::transport::{Replication, NODE_ID_KEY};
use doppel_server::txn::Op;

const PORT: u16 = 7000;
/// The "REST API" a registration must reach (accepts and closes): a partitioned
/// target refuses registrations as a real one would.
const API_PORT: u16 = 7001;
const DB: &str = "shop";
/// The interrelated database (in some schedules): each line depends on an order of
/// `shop` through the built-in `parent-rule` stage on its link.
const LINES: &str = "lines";
const SRC: &str = "src";
const DST: &str = "dst";
/// After healing, the replica must catch up within this much virtual time.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

/// A small deterministic generator (SplitMix64): the schedule, the workload and the
/// frame faults each draw from their own, seeded from the run's seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Frame faults, per mille of frames, while `on`.
struct Faults {
    on: AtomicBool,
    drop: u64,
    dup: u64,
    hold: u64,
    cut: u64,
}

/// A connection's writing half that faults whole frames (the wire's length-prefixed
/// frames, cut out of what is written): drops, duplicates, holds one back until the
/// next goes (reorder), or cuts the connection (every later write fails: a reset). The
/// first frame (the handshake) passes.
struct FaultyWriter {
    inner: net::Writer,
    faults: Arc<Faults>,
    rng: Rng,
    input: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    held: Option<Vec<u8>>,
    frames: u64,
    broken: bool,
}

impl FaultyWriter {
    fn new(inner: net::Writer, faults: Arc<Faults>, rng: Rng) -> FaultyWriter {
        FaultyWriter {
            inner,
            faults,
            rng,
            input: Vec::new(),
            out: Vec::new(),
            written: 0,
            held: None,
            frames: 0,
            broken: false,
        }
    }

    /// Cut whole frames out of the input and decide each one's fate.
    fn cut_frames(&mut self) {
        while self.input.len() >= 4 {
            let len = u32::from_le_bytes(self.input[..4].try_into().unwrap()) as usize;
            if self.input.len() < 4 + len {
                return;
            }
            let frame: Vec<u8> = self.input.drain(..4 + len).collect();
            self.frames += 1;
            let f = &self.faults;
            if self.frames == 1 || !f.on.load(Ordering::Relaxed) {
                self.out.extend_from_slice(&frame);
                if let Some(h) = self.held.take() {
                    self.out.extend_from_slice(&h);
                }
                continue;
            }
            let r = self.rng.below(1000);
            if r < f.drop {
                continue;
            } else if r < f.drop + f.dup {
                self.out.extend_from_slice(&frame);
                self.out.extend_from_slice(&frame);
            } else if r < f.drop + f.dup + f.hold && self.held.is_none() {
                self.held = Some(frame);
            } else if r < f.drop + f.dup + f.hold + f.cut {
                self.broken = true;
                return;
            } else {
                self.out.extend_from_slice(&frame);
                if let Some(h) = self.held.take() {
                    self.out.extend_from_slice(&h);
                }
            }
        }
    }

    /// Write out what was decided.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FaultyWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        std::task::ready!(self.drain(cx))?;
        self.input.extend_from_slice(buf);
        self.cut_frames();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A host's running replication service (None while it is down).
type Slot = Arc<Mutex<Option<Arc<Replication>>>>;

/// The simulation's network: registration straight into the target's `Replication`
/// (after reaching its API port, so partitions refuse it), connections over turmoil
/// TCP with frame faults.
struct SimNet {
    slots: HashMap<&'static str, Slot>,
    faults: Arc<Faults>,
    seed: u64,
    conns: AtomicU64,
}

impl SimNet {
    fn faulty(&self, stream: turmoil::net::TcpStream, peer: String) -> Conn {
        let (rd, wr) = stream.into_split();
        let n = self.conns.fetch_add(1, Ordering::Relaxed);
        Conn {
            rd: Box::new(rd),
            wr: Box::new(FaultyWriter::new(
                Box::new(wr),
                self.faults.clone(),
                Rng::new(self.seed, 1000 + n),
            )),
            peer,
        }
    }
}

impl Network for SimNet {
    fn register<'a>(
        &'a self,
        _repl: &'a Arc<Replication>,
        def: &'a LinkDef,
        body: ReplicaRequest,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            // The target's host, out of its URL (`http://{host}:{API_PORT}`).
            let named = def.spec.target.url.trim_start_matches("http://");
            let named = named.split(':').next().unwrap_or_default();
            let host = *self
                .slots
                .keys()
                .find(|h| **h == named)
                .ok_or("the target's API did not answer")?;
            let reach = turmoil::net::TcpStream::connect((host, API_PORT));
            match tokio::time::timeout(Duration::from_secs(2), reach).await {
                Ok(Ok(_)) => {}
                _ => return Err("the target's API did not answer".into()),
            }
            let target = self.slots[host].lock().clone();
            let target = target.ok_or("the target's API did not answer")?;
            target
                .register_replica(&def.tenant, &def.id, body)
                .map_err(|e| format!("the target refused the link: {e}"))?;
            Ok(format!("{host}:{PORT}"))
        })
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Conn>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(self.faulty(stream, addr.to_string()))
        })
    }
}

struct SimListener {
    inner: turmoil::net::TcpListener,
    net: Arc<SimNet>,
}

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Conn>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            Ok(self.net.faulty(stream, peer.to_string()))
        })
    }
}

/// The plugin engine, shared by every host of every run (it holds no node state).
fn plugin_runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(Limits::default()).expect("plugin runtime"))
        .clone()
}

thread_local! {
    /// Panics on this thread (the simulation's) since the last reset.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread is running a simulation now (its panics are counted, not
    /// printed).
    static IN_SIM: Cell<bool> = const { Cell::new(false) };
}

/// Count panics on the simulation's thread: tokio catches a task's panic, so a debug
/// assertion that fires in a session would otherwise pass unseen.
fn install_panic_counter() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_sim = IN_SIM.try_with(Cell::get).unwrap_or(false);
            if in_sim {
                let _ = PANICS.try_with(|p| p.borrow_mut().push(info.to_string()));
            }
            if !in_sim || std::env::var_os("SIM_SEED").is_some() {
                previous(info);
            }
        }));
    });
}

/// What the run's hosts share with the harness (one thread: `Rc`).
struct Shared {
    seed: u64,
    sync: bool,
    /// A second database, `lines`, interrelated with `shop`.
    interrelated: bool,
    /// The replica of `lines` stood on a snapshot (a bootstrap, or a tail cut back)
    /// while the interrelation was checked.
    lines_snapshot: Cell<bool>,
    txns: u64,
    /// The next workload transaction to write (survives the source's restarts).
    next_txn: Cell<u64>,
    /// The highest serial a synchronous commit was acknowledged at.
    max_sync_acked: Cell<u64>,
    violations: RefCell<Vec<String>>,
    trace: RefCell<Vec<String>>,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violations.borrow_mut().push(what);
    }
}

fn database_spec(name: &str, file: &str) -> doppel_server::node::DatabaseSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "files": [{"name": file}],
        "block_size": 512,
        "durability": "none",
    }))
    .expect("database spec")
}

fn link_spec(db: &str, sync: bool) -> LinkSpec {
    let mut spec = serde_json::json!({
        "database": db,
        "target": {"url": format!("http://{DST}:{API_PORT}"), "database": db},
        "mode": if sync { "sync" } else { "async" },
    });
    if db == LINES {
        let rule = format!(
            "parent-rule@{}",
            doppel_server::plugins::registry::BUILTIN_VERSION
        );
        spec["stages"] = serde_json::json!([{"plugin": rule, "config": {"rules": [
            {"file": "lines", "parent_file": "orders", "parent_key_field": "order"}]}}]);
    }
    serde_json::from_value(spec).expect("link spec")
}

/// Start a node on `dir` with its replication on the simulated network.
async fn start_node(
    name: &'static str,
    dir: PathBuf,
    slot: &Slot,
    net: Arc<SimNet>,
) -> Result<Arc<Replication>, Box<dyn std::error::Error>> {
    let settings = NodeSettings {
        sled_cache_bytes: 1 << 20,
        ..NodeSettings::default()
    };
    let node = Arc::new(Node::open(&dir, settings)?);
    // The node's id from the host and the seed, not from the OS's random source: the
    // same origins and stream ids on every run of a seed.
    if node.config_value(NODE_ID_KEY)?.is_none() {
        let id = format!("n{name}{:x}", net.seed);
        node.set_config_value(NODE_ID_KEY, id.as_bytes())?;
    }
    let auth = AuthConfig {
        enabled: false,
        ..AuthConfig::default()
    };
    let (tenancy, _) = Tenancy::start(&node, &auth, Default::default())?;
    let plugins = Arc::new(Registry::open(&node, plugin_runtime())?);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let advertised = SocketAddr::new(turmoil::lookup(name), PORT);
    let listener = Box::new(SimListener {
        inner: listener,
        net: net.clone(),
    });
    let repl =
        Replication::start_on(node, Arc::new(tenancy), plugins, listener, advertised, net).await?;
    *slot.lock() = Some(repl.clone());
    Ok(repl)
}

/// Transaction `i` of the workload: 1-4 upserts and deletes over 24 keys.
fn workload_ops(seed: u64, i: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed, 10_000_000 + i);
    let n = 1 + rng.below(4);
    let mut ops = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..n {
        let key = format!("k{:02}", rng.below(24));
        if keys.contains(&key) {
            continue;
        }
        let kind = if rng.chance(150) {
            OpKind::Delete
        } else {
            OpKind::Upsert
        };
        let mut payload = Vec::new();
        match kind {
            OpKind::Delete => payload.extend_from_slice(key.as_bytes()),
            _ => {
                let pad = "x".repeat(rng.below(120) as usize);
                let data = format!("{{\"i\":{i},\"pad\":\"{pad}\"}}");
                encode_record(&mut payload, key.as_bytes(), &[], data.as_bytes());
            }
        }
        keys.push(key);
        ops.push(Op {
            kind,
            file: 0,
            payload,
        });
    }
    ops
}

/// The key an operation of [`workload_ops`] writes.
fn op_key(op: &Op) -> String {
    let key = match op.kind {
        OpKind::Delete => &op.payload[..],
        _ => {
            let len = u16::from_le_bytes([op.payload[0], op.payload[1]]) as usize;
            &op.payload[2..2 + len]
        }
    };
    String::from_utf8_lossy(key).into_owned()
}

/// The source host: its node, the database and link on first start, then the
/// workload from where it stood.
async fn run_source(
    dir: PathBuf,
    slots: HashMap<&'static str, Slot>,
    net: Arc<SimNet>,
    shared: Rc<Shared>,
) -> turmoil::Result {
    let repl = start_node(SRC, dir, &slots[SRC], net).await?;
    let db = match repl.node.database(DEFAULT_TENANT, DB) {
        Ok(db) => db,
        Err(_) => {
            let db = repl
                .node
                .create_database(DEFAULT_TENANT, database_spec(DB, "orders"))?;
            repl.create_link(DEFAULT_TENANT, link_spec(DB, shared.sync))?;
            if shared.interrelated {
                repl.node
                    .create_database(DEFAULT_TENANT, database_spec(LINES, "lines"))?;
                repl.create_link(DEFAULT_TENANT, link_spec(LINES, shared.sync))?;
            }
            db
        }
    };
    db.quorum.configure(1, 2_000);
    let lines = repl.node.database(DEFAULT_TENANT, LINES).ok();
    if let Some(lines) = &lines {
        lines.quorum.configure(1, 2_000);
    }
    let mut pace = Rng::new(shared.seed, 3);
    while shared.next_txn.get() < shared.txns {
        let i = shared.next_txn.get();
        let ops = workload_ops(shared.seed, i);
        let written = match db.execute(ops.clone(), Duration::from_secs(1)).await {
            Ok(committed) => {
                if shared.sync {
                    check_sync_ack(&shared, &repl, &slots[DST], DB, committed.last_serial);
                }
                true
            }
            // Committed here, not confirmed in time: not acknowledged to a client.
            Err(doppel_server::node::Error::ReplicationTimeout(_)) => true,
            // A delete of a missing key: nothing written.
            Err(_) => false,
        };
        if let (Some(lines), true) = (&lines, written) {
            // A line of the order just written: visible on the replica only once
            // `shop` is there up to (at least) where it stands now.
            let order = op_key(&ops[0]);
            let needs = db.serials().0;
            let data = format!("{{\"order\":\"{order}\",\"needs\":{needs}}}");
            let mut payload = Vec::new();
            let key = format!("l{i:04}");
            encode_record(&mut payload, key.as_bytes(), &[], data.as_bytes());
            let op = Op {
                kind: OpKind::Upsert,
                file: 0,
                payload,
            };
            if let Ok(committed) = lines.execute(vec![op], Duration::from_secs(1)).await {
                if shared.sync {
                    check_sync_ack(&shared, &repl, &slots[DST], LINES, committed.last_serial);
                }
            }
        }
        shared.next_txn.set(i + 1);
        tokio::time::sleep(Duration::from_millis(pace.below(30))).await;
    }
    drop((db, lines));
    std::future::pending::<()>().await;
    Ok(())
}

/// The source's link status, for a violation's message.
fn link_status(src: &Replication) -> String {
    src.list_links(DEFAULT_TENANT)
        .first()
        .map_or("none".into(), |l| l["status"].to_string())
}

/// A synchronous commit at `serial` was acknowledged: the replica holds it.
fn check_sync_ack(shared: &Shared, src: &Replication, dst: &Slot, name: &str, serial: u64) {
    if name == DB {
        shared
            .max_sync_acked
            .set(shared.max_sync_acked.get().max(serial));
    }
    let held = dst
        .lock()
        .as_ref()
        .and_then(|r| r.node.database(DEFAULT_TENANT, name).ok())
        .map(|db| db.serials().0);
    match held {
        Some(held) if held >= serial => {}
        // Down: checked again when it restarts.
        None if dst.lock().is_none() => {}
        other => shared.violation(format!(
            "a synchronous commit of {name} at serial {serial} was acknowledged while the replica held {other:?}; the link: {}",
            link_status(src) + &format!(" dst dbs {:?}", dst.lock().as_ref().map(|r| r.node.databases(DEFAULT_TENANT).unwrap().iter().map(|d| (d.def.spec.name.clone(), d.def.uid, d.serials())).collect::<Vec<_>>()))
        )),
    }
}

/// The target host: its node, a listener standing for its REST API, and the check
/// that it came back with every acknowledged synchronous commit.
async fn run_target(
    dir: PathBuf,
    slot: Slot,
    net: Arc<SimNet>,
    shared: Rc<Shared>,
) -> turmoil::Result {
    let repl = start_node(DST, dir, &slot, net).await?;
    if let Ok(db) = repl.node.database(DEFAULT_TENANT, DB) {
        let held = db.serials().0;
        if held < shared.max_sync_acked.get() {
            shared.violation(format!(
                "the replica restarted at serial {held}, below the acknowledged synchronous commit {}",
                shared.max_sync_acked.get()
            ));
        }
    }
    drop(repl);
    let api = turmoil::net::TcpListener::bind(("0.0.0.0", API_PORT)).await?;
    loop {
        let _ = api.accept().await?;
    }
}

fn database(slot: &Slot, name: &str) -> Option<Arc<Database>> {
    slot.lock()
        .as_ref()
        .and_then(|r| r.node.database(DEFAULT_TENANT, name).ok())
}

/// Interrelated updates are visible together: every line the replica shows has the
/// orders it depends on (`shop` up to its `needs` serial) applied too.
fn check_interrelated(shop: &Database, lines: &Database) -> Result<(), String> {
    let (records, _) = lines
        .scan("lines", "", None, usize::MAX)
        .map_err(|e| e.to_string())?;
    let at = shop.serials().0;
    for r in records {
        let data: serde_json::Value =
            serde_json::from_str(r.data.get()).map_err(|e| e.to_string())?;
        let needs = data["needs"].as_u64().unwrap_or(0);
        if needs > at {
            return Err(format!(
                "the replica shows line {} before the orders it depends on: it needs shop at serial {needs}, shop stands at {at}",
                r.key
            ));
        }
    }
    Ok(())
}

/// The replica's A log is a prefix of the source's: transaction by transaction the
/// same serials and bytes, no gap, no duplicate, ending where the replica stands.
fn check_prefix(src: &Database, dst: &Database) -> Result<(), String> {
    let read = |db: &Database| {
        db.log_store()
            .read_txns(db.def.uid, 0, usize::MAX, &[])
            .map_err(|e| e.to_string())
    };
    let (ours, theirs) = (read(src)?, read(dst)?);
    let by_first: HashMap<u64, &doppel_server::log::durable::RawTxn> =
        ours.iter().map(|t| (t.first_serial, t)).collect();
    let mut expected = theirs.first().map(|t| t.first_serial);
    for t in &theirs {
        if Some(t.first_serial) != expected {
            return Err(format!(
                "the replica's log has a gap or a duplicate: transaction at serial {} after one ending at {}",
                t.first_serial,
                expected.unwrap_or(0).saturating_sub(1)
            ));
        }
        let Some(s) = by_first.get(&t.first_serial) else {
            return Err(format!(
                "the replica holds serial {} that the source's log does not start a transaction at",
                t.first_serial
            ));
        };
        let bytes = |x: &doppel_server::log::durable::RawTxn| {
            x.chunks
                .iter()
                .filter(|c| c.head.kind == doppel_server::log::LogKind::A)
                .map(|c| c.bytes.to_vec())
                .collect::<Vec<_>>()
        };
        if s.last_serial != t.last_serial || bytes(s) != bytes(t) {
            return Err(format!(
                "the replica's transaction at serial {} differs from the source's",
                t.first_serial
            ));
        }
        expected = Some(t.last_serial + 1);
    }
    let last = theirs.last().map_or(0, |t| t.last_serial);
    let at = dst.serials().0;
    if !theirs.is_empty() && last != at {
        return Err(format!(
            "the replica stands at serial {at}, its log ends at {last}"
        ));
    }
    if at > src.serials().0 {
        return Err(format!(
            "the replica stands at serial {at}, beyond the source's {}",
            src.serials().0
        ));
    }
    Ok(())
}

/// The checks while both hosts run: prefix (every database), interrelation; once
/// `settle` (healed, workload done) and every replica stands at its source's serial,
/// identical checksums, and `Some` of the serials (converged).
fn check_point(
    shared: &Shared,
    slots: &HashMap<&'static str, Slot>,
    names: &[&str],
    settle: bool,
) -> Result<Option<Vec<u64>>, String> {
    let mut pairs = Vec::new();
    for name in names {
        match (database(&slots[SRC], name), database(&slots[DST], name)) {
            (Some(s), Some(d)) => pairs.push((s, d)),
            _ => return Ok(None),
        }
    }
    for (s, d) in &pairs {
        check_prefix(s, d).map_err(|e| format!("{}: {e}", s.name()))?;
    }
    if shared.interrelated {
        // Bootstrap snapshots included: a snapshot of `lines` is installed only once
        // the replica of `shop` holds what its lines depend on (seed 246 found them
        // shown early when snapshots carried no dependencies).
        if pairs[1].1.serials().1 > 0 && !shared.lines_snapshot.replace(true) {
            shared
                .trace
                .borrow_mut()
                .push("the replica of lines stands on a snapshot".into());
        }
        check_interrelated(&pairs[0].1, &pairs[1].1)?;
    }
    if !settle || pairs.iter().any(|(s, d)| s.serials().0 != d.serials().0) {
        return Ok(None);
    }
    for (s, d) in &pairs {
        if s.checksums() != d.checksums() {
            return Err(format!(
                "after healing, {} at serial {} on both, the block checksums differ",
                s.name(),
                s.serials().0
            ));
        }
    }
    Ok(Some(pairs.iter().map(|(s, _)| s.serials().0).collect()))
}

/// One fault of the schedule, at a virtual time.
#[derive(Debug, Clone)]
enum Event {
    Crash(&'static str),
    Bounce(&'static str),
    Partition,
    Repair,
    Latency(u64),
    /// A snapshot of a mutual site's database: from its second on, its log is pruned up
    /// to the one before, so the other site, if behind that, needs a bootstrap.
    Snapshot(&'static str),
}

/// The faults every schedule draws, in this order from `rng`: 0-3 restarts of a host
/// `pick` chooses, 0-3 partitions with their heal, 0-2 latency changes, at virtual
/// milliseconds within the faulty phase (restarts and heals may fall after it).
fn host_and_network_events(
    rng: &mut Rng,
    faulty_ms: u64,
    mut pick: impl FnMut(&mut Rng) -> &'static str,
) -> Vec<(u64, Event)> {
    let mut events = Vec::new();
    for _ in 0..rng.below(4) {
        let host = pick(rng);
        let at = 200 + rng.below(faulty_ms);
        events.push((at, Event::Crash(host)));
        events.push((at + 50 + rng.below(2_000), Event::Bounce(host)));
    }
    for _ in 0..rng.below(4) {
        let at = rng.below(faulty_ms);
        events.push((at, Event::Partition));
        events.push((at + rng.below(3_000), Event::Repair));
    }
    for _ in 0..rng.below(3) {
        events.push((rng.below(faulty_ms), Event::Latency(1 + rng.below(200))));
    }
    events
}

/// Apply `event` if it is a host or network fault between `pair` (a restart, a
/// partition or its heal, a latency change), keeping `down` (the crashed hosts) up to
/// date. Returns the event back if it is none of these (or a crash of a host already
/// down, a restart of one that is up).
fn apply_fault(
    sim: &mut turmoil::Sim<'_>,
    event: Event,
    down: &mut Vec<&'static str>,
    slots: &HashMap<&'static str, Slot>,
    pair: (&'static str, &'static str),
) -> Option<Event> {
    match event {
        Event::Crash(h) if !down.contains(&h) => {
            sim.crash(h);
            // Nothing of the old process may outlive it (sled's lock).
            slots[h].lock().take();
            down.push(h);
        }
        Event::Bounce(h) if down.contains(&h) => {
            sim.bounce(h);
            down.retain(|d| *d != h);
        }
        Event::Partition => sim.partition(pair.0, pair.1),
        Event::Repair => sim.repair(pair.0, pair.1),
        Event::Latency(ms) => sim.set_max_message_latency(Duration::from_millis(ms)),
        other => return Some(other),
    }
    None
}

/// End the faulty phase: no more faulty frames, the partition repaired, latency
/// back to 5 ms, and every crashed host started again.
fn heal(
    sim: &mut turmoil::Sim<'_>,
    faults: &Faults,
    pair: (&'static str, &'static str),
    down: &mut Vec<&'static str>,
) {
    faults.on.store(false, Ordering::Relaxed);
    sim.repair(pair.0, pair.1);
    sim.set_max_message_latency(Duration::from_millis(5));
    for h in down.drain(..) {
        sim.bounce(h);
    }
}

/// The outcome of one seed.
pub struct Outcome {
    /// (sync, interrelated, the replica of `lines` stood on a snapshot).
    pub kind: (bool, bool, bool),
    pub violations: Vec<String>,
    /// A digest of the run's trace: equal for two runs of the same seed.
    pub digest: u64,
    pub trace: Vec<String>,
    /// Conflicts the sites met (mutual schedules).
    pub conflicts: u64,
}

/// Run seed `seed`: build the schedule, run it, heal, wait for the replica, check.
pub fn run_seed(seed: u64) -> Outcome {
    install_panic_counter();
    PANICS.with(|p| p.borrow_mut().clear());
    IN_SIM.with(|s| s.set(true));
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(seed, 1);
    let shared = Rc::new(Shared {
        seed,
        sync: rng.chance(400),
        interrelated: rng.chance(100),
        lines_snapshot: Cell::new(false),
        txns: 20 + rng.below(120),
        next_txn: Cell::new(0),
        max_sync_acked: Cell::new(0),
        violations: RefCell::new(Vec::new()),
        trace: RefCell::new(Vec::new()),
    });
    let faults = Arc::new(Faults {
        on: AtomicBool::new(true),
        drop: rng.below(60),
        dup: rng.below(60),
        hold: rng.below(60),
        cut: rng.below(15),
    });
    let slots: HashMap<&'static str, Slot> = [SRC, DST]
        .into_iter()
        .map(|h| (h, Slot::default()))
        .collect();
    let net = Arc::new(SimNet {
        slots: slots.clone(),
        faults: faults.clone(),
        seed,
        conns: AtomicU64::new(0),
    });
    // The faulty phase: events at virtual milliseconds.
    let faulty_ms = 2_000 + rng.below(8_000);
    let mut events =
        host_and_network_events(
            &mut rng,
            faulty_ms,
            |rng| {
                if rng.chance(500) {
                    SRC
                } else {
                    DST
                }
            },
        );
    events.sort_by_key(|(at, _)| *at);
    shared.trace.borrow_mut().push(format!(
        "seed {seed}: sync {} interrelated {} txns {} faults drop {} dup {} hold {} cut {} per mille, faulty phase {faulty_ms} ms, events {events:?}",
        shared.sync, shared.interrelated, shared.txns, faults.drop, faults.dup, faults.hold, faults.cut
    ));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(3_600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1 + rng.below(50)))
        .build();
    {
        let (dir, slots, net, shared) = (
            tmp.path().join(SRC),
            slots.clone(),
            net.clone(),
            shared.clone(),
        );
        sim.host(SRC, move || {
            run_source(dir.clone(), slots.clone(), net.clone(), shared.clone())
        });
    }
    {
        let (dir, slot, net, shared) = (
            tmp.path().join(DST),
            slots[DST].clone(),
            net.clone(),
            shared.clone(),
        );
        sim.host(DST, move || {
            run_target(dir.clone(), slot.clone(), net.clone(), shared.clone())
        });
    }

    let names: &[&str] = if shared.interrelated {
        &[DB, LINES]
    } else {
        &[DB]
    };
    let mut next_event = 0;
    let mut down: Vec<&'static str> = Vec::new();
    let mut healed_at: Option<Duration> = None;
    let mut steps = 0u64;
    loop {
        let now = sim.elapsed();
        while next_event < events.len() && events[next_event].0 <= now.as_millis() as u64 {
            let event = events[next_event].1.clone();
            next_event += 1;
            shared
                .trace
                .borrow_mut()
                .push(format!("{} ms: {event:?}", now.as_millis()));
            apply_fault(&mut sim, event, &mut down, &slots, (SRC, DST));
        }
        let workload_done = shared.next_txn.get() >= shared.txns;
        let faulty_over = now.as_millis() as u64 >= faulty_ms;
        if healed_at.is_none() && next_event == events.len() && workload_done && faulty_over {
            heal(&mut sim, &faults, (SRC, DST), &mut down);
            healed_at = Some(now);
            shared
                .trace
                .borrow_mut()
                .push(format!("{} ms: healed", now.as_millis()));
        }
        if let Err(e) = sim.step() {
            shared.violation(format!("a host failed: {e}"));
            break;
        }
        steps += 1;
        let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        for p in panics {
            shared.violation(format!("panic: {p}"));
        }
        if !shared.violations.borrow().is_empty() {
            break;
        }
        if steps.is_multiple_of(64) || healed_at.is_some() {
            match check_point(&shared, &slots, names, healed_at.is_some() && workload_done) {
                Err(e) => {
                    shared.violation(e);
                    break;
                }
                Ok(Some(serials)) => {
                    let healed = healed_at.expect("converged after healing");
                    let status = slots[SRC].lock().as_ref().map(|r| {
                        r.list_links(DEFAULT_TENANT)
                            .iter()
                            .map(|l| {
                                let st = &l["status"];
                                format!(
                                    "connections {}, bytes sent {}, bootstraps {}",
                                    st["connections"], st["bytes_sent"], st["bootstraps"]
                                )
                            })
                            .collect::<Vec<_>>()
                    });
                    shared.trace.borrow_mut().push(format!(
                        "{} ms: converged at serials {serials:?} ({} ms after healing); the links since the source's last start: {:?}",
                        sim.elapsed().as_millis(),
                        (sim.elapsed() - healed).as_millis(),
                        status.unwrap_or_default()
                    ));
                    break;
                }
                Ok(None) => {}
            }
            if let Some(healed) = healed_at {
                if sim.elapsed() - healed > CONVERGE_WITHIN {
                    let at = |slot: &Slot| {
                        names
                            .iter()
                            .map(|n| database(slot, n).map(|d| d.serials().0))
                            .collect::<Vec<_>>()
                    };
                    let links = slots[SRC]
                        .lock()
                        .as_ref()
                        .map(|r| r.list_links(DEFAULT_TENANT));
                    shared.violation(format!(
                        "no convergence within {CONVERGE_WITHIN:?} of healing: source at {:?}, replica at {:?}; the source's links: {links:?}",
                        at(&slots[SRC]),
                        at(&slots[DST])
                    ));
                    break;
                }
            }
        }
    }
    if !shared.violations.borrow().is_empty() {
        let at = sim.elapsed().as_millis();
        let first = shared.violations.borrow()[0].clone();
        let first: String = first.chars().take(160).collect();
        shared
            .trace
            .borrow_mut()
            .push(format!("{at} ms (step {steps}): violation: {first}"));
    }
    // Stop the hosts before their directories go.
    for h in [SRC, DST] {
        if !down.contains(&h) {
            sim.crash(h);
        }
        slots[h].lock().take();
    }
    drop(sim);
    IN_SIM.with(|s| s.set(false));
    let trace = shared.trace.borrow().clone();
    let violations = shared.violations.borrow().clone();
    let digest = xxhash_rust::xxh3::xxh3_64(trace.join("\n").as_bytes());
    Outcome {
        kind: (
            shared.sync,
            shared.interrelated,
            shared.lines_snapshot.get(),
        ),
        violations,
        digest,
        trace,
        conflicts: 0,
    }
}

/// Run `seeds` (`mutual`: the mutual schedules), stop at the first violation: the seed and what broke.
fn run_seeds(seeds: std::ops::Range<u64>, mutual: bool) -> Result<(u64, Duration), (u64, Outcome)> {
    let started = Instant::now();
    let mut n = 0u64;
    let (mut sync, mut inter, mut conflicts, mut with_conflicts) = (0, 0, 0, 0);
    let mut on_snapshot = Vec::new();
    for seed in seeds {
        let outcome = if mutual {
            run_mutual_seed(seed)
        } else {
            run_seed(seed)
        };
        if !outcome.violations.is_empty() {
            return Err((seed, outcome));
        }
        n += 1;
        if n.is_multiple_of(250) {
            println!(
                "{n} schedules, 0 violations so far, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        sync += outcome.kind.0 as u64;
        inter += outcome.kind.1 as u64;
        conflicts += outcome.conflicts;
        with_conflicts += (outcome.conflicts > 0) as u64;
        if outcome.kind.2 {
            on_snapshot.push(seed);
        }
    }
    if !mutual {
        println!(
            "{sync} of them sync; {inter} with an interrelated database, in {} of them \
             checked while the replica of lines stood on a snapshot (seeds {on_snapshot:?})",
            on_snapshot.len()
        );
    } else {
        println!("{sync} of them sync; {conflicts} conflicts met, in {with_conflicts} schedules");
    }
    Ok((n, started.elapsed()))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn report(result: Result<(u64, Duration), (u64, Outcome)>, test: &str, var: &str) {
    match result {
        Ok((n, took)) => println!(
            "{n} schedules, 0 violations, {:.1} s, {:.1} schedules/s",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        ),
        Err((seed, outcome)) => panic!(
            "seed {seed} violates an invariant: {}\nrerun it with: {var}={seed} cargo test -p doppel-server --test sim {test} -- --nocapture\ntrace:\n{}",
            outcome.violations.join("; "),
            outcome.trace.join("\n")
        ),
    }
}

/// The CI run: 200 seeds (or `SIM_SEEDS` from `SIM_FIRST`); `SIM_SEED` runs one and
/// prints its trace.
#[test]
fn seeds() {
    if let Some(seed) = env_u64("SIM_SEED") {
        one_seed(seed, run_seed);
        return;
    }
    let first = env_u64("SIM_FIRST").unwrap_or(0);
    let n = env_u64("SIM_SEEDS").unwrap_or(200);
    report(run_seeds(first..first + n, false), "seeds", "SIM_SEED");
}

/// The same seed twice: the same schedule, the same outcome (the trace's digest).
#[test]
fn a_seed_replays_exactly() {
    let (a, b) = (run_seed(7), run_seed(7));
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.digest, b.digest);
}

// Mutual sites (SPEC F4): two sites, each writing the same keys, linked both ways.

/// The two sites of a mutual schedule.
const SITES: [&str; 2] = ["a", "b"];

/// What a mutual run's sites share with the harness.
struct MutualShared {
    seed: u64,
    sync: bool,
    /// Workload transactions per site.
    txns: u64,
    /// Each site's next workload transaction (survives its restarts).
    next_txn: [Cell<u64>; 2],
    /// Synchronous commits acknowledged (and checked).
    sync_acked: Cell<u64>,
    violations: RefCell<Vec<String>>,
    trace: RefCell<Vec<String>>,
}

fn mutual_database_spec() -> doppel_server::node::DatabaseSpec {
    serde_json::from_value(serde_json::json!({
        "name": DB,
        "files": [{"name": "orders"}],
        "block_size": 512,
        "durability": "none",
        "mutual": true,
    }))
    .expect("database spec")
}

/// A site's link to the other: logical, mutual, last writer wins.
fn mutual_link_spec(other: &str, sync: bool) -> LinkSpec {
    serde_json::from_value(serde_json::json!({
        "database": DB,
        "target": {"url": format!("http://{other}:{API_PORT}"), "database": DB},
        "mode": if sync { "sync" } else { "async" },
        "apply": "logical",
        "conflicts": {"strategy": "lww"},
    }))
    .expect("link spec")
}

/// Site `me`'s workload transaction `i`: the keys of [`workload_ops`] (the same 24 on
/// both sites, so their writes conflict), its own choice of them.
fn site_ops(seed: u64, me: usize, i: u64) -> Vec<Op> {
    workload_ops(seed ^ ((me as u64 + 1) << 40), i)
}

/// A site: its node, a listener standing for its REST API, the database (unless the
/// other site's registration made it) and its link to the other site on first start,
/// then its workload from where it stood.
async fn run_site(
    me: usize,
    dir: PathBuf,
    slots: HashMap<&'static str, Slot>,
    net: Arc<SimNet>,
    shared: Rc<MutualShared>,
) -> turmoil::Result {
    let (name, other) = (SITES[me], SITES[1 - me]);
    let repl = start_node(name, dir, &slots[name], net).await?;
    tokio::spawn(async {
        if let Ok(api) = turmoil::net::TcpListener::bind(("0.0.0.0", API_PORT)).await {
            while api.accept().await.is_ok() {}
        }
    });
    let db = match repl.node.database(DEFAULT_TENANT, DB) {
        Ok(db) => db,
        Err(_) => repl
            .node
            .create_database(DEFAULT_TENANT, mutual_database_spec())?,
    };
    if repl.list_links(DEFAULT_TENANT).is_empty() {
        repl.create_link(DEFAULT_TENANT, mutual_link_spec(other, shared.sync))?;
    }
    db.quorum.configure(1, 2_000);
    let mut pace = Rng::new(shared.seed, 4 + me as u64);
    let next = &shared.next_txn[me];
    while next.get() < shared.txns {
        let i = next.get();
        let ops = site_ops(shared.seed, me, i);
        if let Ok(committed) = db.execute(ops, Duration::from_secs(1)).await {
            if shared.sync {
                check_mutual_sync_ack(
                    &shared,
                    name,
                    &repl,
                    &db,
                    &slots[other],
                    committed.last_serial,
                );
            }
        }
        next.set(i + 1);
        tokio::time::sleep(Duration::from_millis(pace.below(30))).await;
    }
    drop(db);
    std::future::pending::<()>().await;
    Ok(())
}

/// A synchronous commit of a mutual site at `serial` was acknowledged: the other site
/// (if up) has applied this site's stream up to it.
fn check_mutual_sync_ack(
    shared: &MutualShared,
    site: &str,
    repl: &Replication,
    db: &Database,
    other: &Slot,
    serial: u64,
) {
    let Some(there) = other.lock().clone() else {
        return;
    };
    let Ok(theirs) = there.node.database(DEFAULT_TENANT, DB) else {
        return;
    };
    shared.sync_acked.set(shared.sync_acked.get() + 1);
    let held = theirs.position(repl.stream_id(db));
    if held < serial {
        shared.violations.borrow_mut().push(format!(
            "a synchronous commit of site {site} at serial {serial} was acknowledged while the other site had applied its stream to {held}"
        ));
    }
}

/// A mutual database's records of `file`: (key, data).
fn contents(db: &Database, file: &str) -> Result<Vec<(String, String)>, String> {
    let (records, _) = db
        .scan(file, "", None, usize::MAX)
        .map_err(|e| format!("{}: {e}", db.name()))?;
    Ok(records
        .into_iter()
        .map(|r| (r.key, r.data.get().to_string()))
        .collect())
}

/// Every conflict `repl` met on `db` was between two versions and decided by last
/// writer wins: the larger `(timestamp, origin)` kept. Returns the conflicts and the versions they saw.
fn check_lww(
    site: &str,
    repl: &Replication,
    db: &Database,
) -> Result<Vec<doppel_server::transport::mutual::ConflictEntry>, String> {
    let list = repl
        .conflicts
        .list(db.def.uid, doppel_server::transport::mutual::KEEP as usize)
        .map_err(|e| e.to_string())?;
    for c in &list {
        if (c.remote.timestamp_us, c.remote.origin) == (c.local.timestamp_us, c.local.origin) {
            return Err(format!(
                "site {site}: conflict {} on {} is a version in conflict with itself ({}, {}): a write already held is not a conflict",
                c.id, c.key, c.local.timestamp_us, c.local.origin
            ));
        }
        let remote_wins =
            (c.remote.timestamp_us, c.remote.origin) > (c.local.timestamp_us, c.local.origin);
        let kept_remote = match c.decision {
            doppel_server::transport::mutual::ConflictDecision::Remote => true,
            doppel_server::transport::mutual::ConflictDecision::Local => false,
            doppel_server::transport::mutual::ConflictDecision::Merged => {
                return Err(format!(
                    "conflict {} on {} was merged under lww",
                    c.id, c.key
                ));
            }
        };
        if kept_remote != remote_wins {
            return Err(format!(
                "site {site}: conflict {} on {} kept the {} version, last writer wins keeps the other (local ({}, {}), remote ({}, {}))",
                c.id,
                c.key,
                if kept_remote { "remote" } else { "local" },
                c.local.timestamp_us,
                c.local.origin,
                c.remote.timestamp_us,
                c.remote.origin
            ));
        }
    }
    Ok(list)
}

/// The checks of a mutual run: no update came back to its origin; once `settle`
/// (healed, workloads done) and each site has applied the other's stream to its last
/// serial: the same records and versions on both, each record present unless its
/// version is a delete, every conflict decided by last writer wins and (`no_restart`:
/// nothing written was lost) every record at a version at least as late as each one
/// its conflicts saw. `Some` of the serials and the conflicts once converged.
fn check_mutual(
    slots: &HashMap<&'static str, Slot>,
    settle: bool,
    no_restart: bool,
) -> Result<Option<(Vec<u64>, u64)>, String> {
    let mut sites = Vec::new();
    for h in SITES {
        let Some(repl) = slots[h].lock().clone() else {
            return Ok(None);
        };
        let Ok(db) = repl.node.database(DEFAULT_TENANT, DB) else {
            return Ok(None);
        };
        sites.push((repl, db));
    }
    for ((repl, _), site) in sites.iter().zip(SITES) {
        for c in repl.target.mutual_counts.lock().values() {
            if c.returned > 0 {
                return Err(format!(
                    "site {site}: {} updates came back to their origin",
                    c.returned
                ));
            }
        }
    }
    if !settle {
        return Ok(None);
    }
    for x in 0..2 {
        let (rx, dx) = &sites[x];
        let (_, dy) = &sites[1 - x];
        if dy.position(rx.stream_id(dx)) != dx.serials().0 {
            return Ok(None);
        }
    }
    let versions_file = doppel_server::node::versions::VERSIONS_FILE;
    let (a, b) = (&sites[0].1, &sites[1].1);
    for file in ["orders", versions_file] {
        let (ca, cb) = (contents(a, file)?, contents(b, file)?);
        if ca != cb {
            let (ma, mb): (BTreeMap<_, _>, BTreeMap<_, _>) =
                (ca.into_iter().collect(), cb.into_iter().collect());
            let differ = ma
                .keys()
                .chain(mb.keys())
                .find(|k| ma.get(*k) != mb.get(*k))
                .map(|k| format!("{k}: {:?} on a, {:?} on b", ma.get(k), mb.get(k)))
                .unwrap_or_default();
            return Err(format!(
                "both sites applied each other's stream to its end (serials {} and {}), but their {file} differ: {differ}",
                a.serials().0,
                b.serials().0
            ));
        }
    }
    let records: HashMap<String, String> = contents(a, "orders")?.into_iter().collect();
    let mut held = HashMap::new();
    for (key, data) in contents(a, versions_file)? {
        let stamp: serde_json::Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        let record_key = key.trim_start_matches("orders/").to_string();
        let deleted = stamp["del"].as_bool().unwrap_or(false);
        if deleted == records.contains_key(&record_key) {
            return Err(format!(
                "record {record_key}: its version {stamp} says {}, the record is {}",
                if deleted { "deleted" } else { "written" },
                if deleted { "there" } else { "missing" }
            ));
        }
        held.insert(
            record_key,
            (
                stamp["t"].as_u64().unwrap_or(0),
                stamp["o"].as_u64().unwrap_or(0),
            ),
        );
    }
    let mut conflicts = 0;
    for ((repl, db), site) in sites.iter().zip(SITES) {
        let list = check_lww(site, repl, db)?;
        conflicts += list.len() as u64;
        if !no_restart {
            continue;
        }
        for c in list {
            let seen = [
                (c.local.timestamp_us, c.local.origin),
                (c.remote.timestamp_us, c.remote.origin),
            ];
            let now = held.get(&c.key).copied().unwrap_or_default();
            if seen.iter().any(|v| *v > now) {
                return Err(format!(
                    "record {} stands at version {now:?}, before one its conflict {} on site {site} saw ({seen:?})",
                    c.key, c.id
                ));
            }
        }
    }
    Ok(Some((
        sites.iter().map(|(_, d)| d.serials().0).collect(),
        conflicts,
    )))
}

/// Run mutual seed `seed`: the schedule, both sites' workloads, heal, wait until each
/// has the other's writes, check.
pub fn run_mutual_seed(seed: u64) -> Outcome {
    install_panic_counter();
    PANICS.with(|p| p.borrow_mut().clear());
    IN_SIM.with(|s| s.set(true));
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(seed, 2);
    let shared = Rc::new(MutualShared {
        seed,
        sync: rng.chance(300),
        txns: 10 + rng.below(70),
        next_txn: [Cell::new(0), Cell::new(0)],
        sync_acked: Cell::new(0),
        violations: RefCell::new(Vec::new()),
        trace: RefCell::new(Vec::new()),
    });
    let faults = Arc::new(Faults {
        on: AtomicBool::new(true),
        drop: rng.below(60),
        dup: rng.below(60),
        hold: rng.below(60),
        cut: rng.below(15),
    });
    let slots: HashMap<&'static str, Slot> =
        SITES.into_iter().map(|h| (h, Slot::default())).collect();
    let net = Arc::new(SimNet {
        slots: slots.clone(),
        faults: faults.clone(),
        seed,
        conns: AtomicU64::new(0),
    });
    let faulty_ms = 2_000 + rng.below(8_000);
    let mut events =
        host_and_network_events(&mut rng, faulty_ms, |rng| SITES[rng.below(2) as usize]);
    for _ in 0..rng.below(3) {
        // Two snapshots of one site, some time apart (one serial apart at least: a
        // second one at the same serial is the same snapshot).
        let host = SITES[rng.below(2) as usize];
        let at = rng.below(faulty_ms);
        events.push((at, Event::Snapshot(host)));
        events.push((at + 1 + rng.below(2_000), Event::Snapshot(host)));
    }
    events.sort_by_key(|(at, _)| *at);
    let no_restart = !events.iter().any(|(_, e)| matches!(e, Event::Crash(_)));
    shared.trace.borrow_mut().push(format!(
        "mutual seed {seed}: sync {} txns {} per site, faults drop {} dup {} hold {} cut {} per mille, faulty phase {faulty_ms} ms, events {events:?}",
        shared.sync, shared.txns, faults.drop, faults.dup, faults.hold, faults.cut
    ));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(3_600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1 + rng.below(50)))
        .build();
    for (me, site) in SITES.into_iter().enumerate() {
        let (dir, slots, net, shared) = (
            tmp.path().join(site),
            slots.clone(),
            net.clone(),
            shared.clone(),
        );
        sim.host(site, move || {
            run_site(me, dir.clone(), slots.clone(), net.clone(), shared.clone())
        });
    }

    let [a, b] = SITES;
    let mut next_event = 0;
    let mut down: Vec<&'static str> = Vec::new();
    let mut healed_at: Option<Duration> = None;
    let mut steps = 0u64;
    let mut conflicts = 0;
    loop {
        let now = sim.elapsed();
        while next_event < events.len() && events[next_event].0 <= now.as_millis() as u64 {
            let event = events[next_event].1.clone();
            next_event += 1;
            shared
                .trace
                .borrow_mut()
                .push(format!("{} ms: {event:?}", now.as_millis()));
            if let Some(Event::Snapshot(h)) =
                apply_fault(&mut sim, event, &mut down, &slots, (a, b))
            {
                if let Some(db) = database(&slots[h], DB) {
                    // Between two steps, on a runtime of its own: no host runs
                    // meanwhile, so the schedule stays the seed's.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime");
                    if let Err(e) = rt.block_on(db.snapshot()) {
                        shared
                            .violations
                            .borrow_mut()
                            .push(format!("a snapshot of site {h} failed: {e}"));
                    }
                    let oldest = db
                        .log_store()
                        .oldest_serial(db.def.uid, doppel_server::log::LogKind::A)
                        .ok()
                        .flatten();
                    let other = if h == a { b } else { a };
                    let applied = slots[h].lock().clone().and_then(|r| {
                        database(&slots[other], DB).map(|d| d.position(r.stream_id(&db)))
                    });
                    shared.trace.borrow_mut().push(format!(
                        "site {h} snapshotted at serial {}, its log now from {oldest:?}; site {other} had applied its stream to {applied:?}",
                        db.serials().0
                    ));
                }
            }
        }
        let workload_done = shared.next_txn.iter().all(|n| n.get() >= shared.txns);
        let faulty_over = now.as_millis() as u64 >= faulty_ms;
        if healed_at.is_none() && next_event == events.len() && workload_done && faulty_over {
            heal(&mut sim, &faults, (a, b), &mut down);
            healed_at = Some(now);
            shared
                .trace
                .borrow_mut()
                .push(format!("{} ms: healed", now.as_millis()));
        }
        if let Err(e) = sim.step() {
            shared
                .violations
                .borrow_mut()
                .push(format!("a host failed: {e}"));
            break;
        }
        steps += 1;
        let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        for p in panics {
            shared.violations.borrow_mut().push(format!("panic: {p}"));
        }
        if !shared.violations.borrow().is_empty() {
            break;
        }
        if steps.is_multiple_of(64) || healed_at.is_some() {
            match check_mutual(&slots, healed_at.is_some() && workload_done, no_restart) {
                Err(e) => {
                    shared.violations.borrow_mut().push(e);
                    break;
                }
                Ok(Some((serials, met))) => {
                    let healed = healed_at.expect("converged after healing");
                    conflicts = met;
                    let links: Vec<String> = SITES
                        .iter()
                        .filter_map(|h| slots[h].lock().clone())
                        .flat_map(|r| r.list_links(DEFAULT_TENANT))
                        .map(|l| {
                            let st = &l["status"];
                            format!(
                                "connections {}, bootstraps {}",
                                st["connections"], st["bootstraps"]
                            )
                        })
                        .collect();
                    shared.trace.borrow_mut().push(format!(
                        "{} ms: converged at serials {serials:?} ({} ms after healing), {met} conflicts, {} synchronous commits acknowledged; the links since their site's last start: {links:?}",
                        sim.elapsed().as_millis(),
                        (sim.elapsed() - healed).as_millis(),
                        shared.sync_acked.get(),
                    ));
                    break;
                }
                Ok(None) => {}
            }
            if let Some(healed) = healed_at {
                if sim.elapsed() - healed > CONVERGE_WITHIN {
                    let state = |h: &str| {
                        slots[h].lock().as_ref().map(|r| {
                            let db = r.node.database(DEFAULT_TENANT, DB).ok();
                            (
                                db.map(|d| d.serials().0),
                                r.list_links(DEFAULT_TENANT)
                                    .first()
                                    .map(|l| l["status"].to_string()),
                            )
                        })
                    };
                    shared.violations.borrow_mut().push(format!(
                        "no convergence within {CONVERGE_WITHIN:?} of healing: site a {:?}, site b {:?}",
                        state(a),
                        state(b)
                    ));
                    break;
                }
            }
        }
    }
    if !shared.violations.borrow().is_empty() {
        let at = sim.elapsed().as_millis();
        let first: String = shared.violations.borrow()[0].chars().take(160).collect();
        shared
            .trace
            .borrow_mut()
            .push(format!("{at} ms (step {steps}): violation: {first}"));
    }
    for h in SITES {
        if !down.contains(&h) {
            sim.crash(h);
        }
        slots[h].lock().take();
    }
    drop(sim);
    IN_SIM.with(|s| s.set(false));
    let trace = shared.trace.borrow().clone();
    let violations = shared.violations.borrow().clone();
    let digest = xxhash_rust::xxh3::xxh3_64(trace.join("\n").as_bytes());
    Outcome {
        kind: (shared.sync, false, false),
        violations,
        digest,
        trace,
        conflicts,
    }
}

/// Run one seed alone with its trace (`var` names it) and the tracing log if `RUST_LOG`.
fn one_seed(seed: u64, run: fn(u64) -> Outcome) {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .init();
    }
    let outcome = run(seed);
    for line in &outcome.trace {
        println!("{line}");
    }
    println!("digest {:016x}", outcome.digest);
    assert!(
        outcome.violations.is_empty(),
        "seed {seed}: {}",
        outcome.violations.join("; ")
    );
}

/// The CI run of mutual sites: 60 seeds (or `SIM_MUTUAL_SEEDS` from
/// `SIM_MUTUAL_FIRST`); `SIM_MUTUAL_SEED` runs one and prints its trace.
#[test]
fn mutual_seeds() {
    if let Some(seed) = env_u64("SIM_MUTUAL_SEED") {
        one_seed(seed, run_mutual_seed);
        return;
    }
    let first = env_u64("SIM_MUTUAL_FIRST").unwrap_or(0);
    let n = env_u64("SIM_MUTUAL_SEEDS").unwrap_or(60);
    report(
        run_seeds(first..first + n, true),
        "mutual_seeds",
        "SIM_MUTUAL_SEED",
    );
}

/// A mutual seed twice: the same trace.
#[test]
fn a_mutual_seed_replays_exactly() {
    let (a, b) = (run_mutual_seed(3), run_mutual_seed(3));
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(a.trace, b.trace);
}
