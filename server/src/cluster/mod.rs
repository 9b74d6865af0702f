//! The cluster (issue 15): a control plane on etcd, automatic failover with fencing.
//!
//! A node started with `[cluster]` (name, etcd endpoints, node id, lease TTL) joins the
//! cluster `name`. Everything it shares lives under `/doppel/{name}/` in etcd:
//!
//! | key | what | lease |
//! |---|---|---|
//! | `members/{node}` | node id, API URL, replication address, version | the node's |
//! | `topologies/{tenant}/{name}` | a topology document; its `mod_revision` is the revision a post compares | none |
//! | `leaders/{tenant}/{database}` | the primary of a replicated database: node, URL, serial and time it took over | the primary's |
//! | `elected/{tenant}/{database}` | that the database had a primary (standbys stand only then) | none |
//! | `sync/{tenant}/{database}` | the synchronous standby set and `k` the primary commits with | none |
//! | `candidates/{tenant}/{database}/{node}` | a standby's applied serial while no primary holds the key | the standby's |
//! | `failovers/{at_ms}-{tenant}-{database}` | a failover record | none |
//!
//! Threads (blocking, etcd's JSON gateway, [`etcd`]):
//! - the **lease** keeper grants the node's lease, registers the member under it and
//!   renews it every `lease_ttl_ms / 6`; the send time of the last renewal that etcd
//!   confirmed is the base of the fence;
//! - the **watch** follows every key under the prefix and wakes the control loop;
//! - the **control** loop reads the prefix (on each wake, and every `lease_ttl_ms / 4`
//!   in any case), then: reconciles **this node's own** links from each document
//!   ([`Cluster::reconcile`], the plan of [`crate::topology::plan`] carried out with
//!   local calls: no node calls another with a caller's token), sets the quorum of the
//!   primaries it has, takes the leader key of a database it is the head of, and stands
//!   for election when a leader key expired ([`Cluster::elect`]).
//!
//! A **replicated database** is a head endpoint of a document (a source of mirror links
//! that nothing feeds) with the mirror targets of the same database name; its synchronous
//! targets are its standbys. Its leader key is named by tenant and database name.
//!
//! **Fencing** ([`Fence`] installed on the node): a database of a replicated group takes
//! and acknowledges writes only on the node whose lease holds its leader key, and only
//! until `lease_ttl_ms - lease_ttl_ms / 4` after the last confirmed renewal was sent:
//! etcd cannot expire the lease before `lease_ttl_ms` after that send, so a fenced
//! primary has stopped acknowledging before any standby can take its key. Elsewhere a
//! write is refused: 421 `misdirected-write` on a replica, 503 `not-primary` on a node
//! that is not (or no longer) the primary, both with the primary's URL when known.
//!
//! **Automatic failover**: when a leader key is gone, each standby of the set puts its
//! applied serial under `candidates/`; once `N - k + 1` of the `N` standbys have (so at
//! least one of them confirmed every acknowledged commit, since each needed `k`
//! confirmations), the one with the highest serial (then the lowest name) takes the key
//! in a transaction that succeeds only if the key is still absent, promotes itself
//! (issue 23's path: a new epoch, the quorum before the first write), and stores the
//! document after the failover (`topology::after_failover`: the others follow it,
//! resync by serial; the old primary becomes its replica) with compare-and-set. Every
//! member reconciles its links from that document, the old primary when it returns.
//! A primary that restarts moves its key from its previous process's lease to its new
//! one (compare on the lease), so a restart is no failover.

pub mod etcd;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex as StdMutex};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::node::fence::Fence;
use crate::node::{self, Error, Node};
use crate::topology::{self, Applied, Endpoint, FailoverPolicy, Stored, Topology};
use crate::transport::links::{Apply, Mode};
use crate::transport::Replication;
use crate::txn::clock::wall_ms;
use etcd::{Compare, Etcd, EtcdError, Kv, TxnOp};

/// Default lease TTL: short enough for a failover within about three seconds, long
/// enough that a busy 2-core machine renews in time (docs/BENCHMARKS.md).
pub const DEFAULT_LEASE_TTL_MS: u64 = 2_000;

/// `[cluster]` in the node's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: its keys live under `/doppel/{name}/`.
    pub name: String,
    /// etcd's client URLs (`http://host:2379`).
    pub etcd: Vec<String>,
    /// This node's name in the cluster (default: the node's own id); a topology
    /// document names the node so (or by its API URL).
    #[serde(default)]
    pub node_id: Option<String>,
    /// The node's lease: a primary that could not renew it for about this long loses
    /// its databases to a standby (etcd grants whole seconds, at least 2).
    #[serde(default = "default_ttl")]
    pub lease_ttl_ms: u64,
}

fn default_ttl() -> u64 {
    DEFAULT_LEASE_TTL_MS
}

impl ClusterConfig {
    /// Refuse a config that cannot work, naming the field.
    pub fn check(&self) -> Result<(), String> {
        node::check_name("cluster", &self.name).map_err(|e| format!("[cluster] name: {e}"))?;
        if self.etcd.is_empty() || self.etcd.iter().any(|e| !e.starts_with("http://")) {
            return Err("[cluster] etcd: give etcd's client URLs as [\"http://host:2379\"]".into());
        }
        if !(1_000..=60_000).contains(&self.lease_ttl_ms) {
            return Err("[cluster] lease_ttl_ms must be between 1000 and 60000".into());
        }
        Ok(())
    }
}

/// A leader key's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Leader {
    /// The node's name in the document.
    node: String,
    /// The member (cluster node id).
    member: String,
    url: String,
    /// The database's last serial when it took the key.
    serial: u64,
    since_ms: u64,
    topology: String,
}

/// A replicated database of a document (see the module).
#[derive(Debug, Clone)]
struct Group {
    tenant: String,
    database: String,
    topology: String,
    head: String,
    /// Every mirror target (node names).
    replicas: Vec<String>,
    /// The synchronous ones.
    standbys: Vec<String>,
    k: usize,
    /// `async-allowed`: every live replica may stand (the most advanced wins).
    async_allowed: bool,
}

/// `GET /v1/cluster`: its members, the primary of each replicated database, failovers.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ClusterView {
    /// The cluster's name (`[cluster] name`).
    pub name: String,
    /// This node's id.
    pub node: String,
    /// The live members, then the nodes the documents name that hold no membership.
    pub members: Vec<Member>,
    pub primaries: Vec<Primary>,
    /// The automatic failovers, oldest first.
    #[schemars(with = "Vec<FailoverEvent>")]
    pub failovers: Vec<Value>,
}

/// A node of a cluster.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Member {
    pub node: String,
    pub url: String,
    pub state: MemberState,
}

/// Whether a node holds a live membership.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Up,
    Down,
}

/// The primary of a replicated database: who holds its leader key.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Primary {
    pub tenant: String,
    pub database: String,
    /// The node's name in the topology.
    pub node: String,
    pub url: String,
    /// The database's last serial when it took the key.
    pub serial: u64,
    pub since_ms: u64,
}

/// An automatic failover, as stored in etcd (`failovers/…`) and shown.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct FailoverEvent {
    pub at_ms: u64,
    pub tenant: String,
    pub database: String,
    /// The node that was primary.
    pub from: String,
    /// The node promoted.
    pub to: String,
    /// The promoted database's last serial.
    pub serial: u64,
    /// Entries the old primary had announced that the promoted one had not applied.
    pub lost_entries: u64,
    pub took_ms: u64,
    /// The epoch its log opened.
    pub epoch: u64,
    pub topology: String,
    /// `sync-only` or `async-allowed`: what the topology lets it promote.
    pub policy: String,
    pub reason: String,
}

/// What this node last read under the prefix.
#[derive(Default)]
struct View {
    /// Read from etcd at least once (until then no write of any database is taken:
    /// this node cannot know which it may take).
    loaded: bool,
    members: BTreeMap<String, Value>,
    /// (tenant, name) → (document, revision).
    topologies: BTreeMap<(String, String), (Topology, i64)>,
    /// (tenant, database) → (leader, its lease).
    leaders: BTreeMap<(String, String), (Leader, i64)>,
    elected: BTreeSet<(String, String)>,
    sync: BTreeMap<(String, String), Value>,
    /// (tenant, database) → node → serial.
    candidates: BTreeMap<(String, String), BTreeMap<String, u64>>,
    failovers: Vec<Value>,
    /// The groups this node is part of, by (tenant, database), with its name there.
    mine: BTreeMap<(String, String), (Group, String)>,
}

/// The node's membership and control loop (see the module).
pub struct Cluster {
    pub config: ClusterConfig,
    pub node_id: String,
    /// This node's API, `http://host:port`.
    pub url: String,
    prefix: String,
    etcd: Etcd,
    /// Renewals get a shorter deadline: a late answer is as bad as none.
    keeper: Etcd,
    node: Arc<Node>,
    repl: Arc<Replication>,
    lease: AtomicI64,
    /// When the last renewal etcd confirmed was sent (the fence counts from it).
    renewed: Mutex<Option<(i64, Instant)>>,
    view: RwLock<View>,
    wake: (StdMutex<bool>, Condvar),
    /// When this node first saw a group without a primary (failover time).
    vacant_since: Mutex<BTreeMap<(String, String), Instant>>,
    /// The last reconcile error per topology, logged once.
    said: Mutex<BTreeMap<(String, String), String>>,
}

fn unavailable(e: EtcdError) -> Error {
    Error::Unavailable(e.to_string())
}

fn json_of(kv: &Kv) -> Value {
    serde_json::from_slice(&kv.value).unwrap_or(Value::Null)
}

/// The replicated databases of `doc`.
fn groups(tenant: &str, doc: &Topology) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for l in &doc.links {
        let Some(to) = l.to.endpoint() else {
            continue;
        };
        let mirror = l.options.apply == Apply::Mirror
            && l.options.conflicts.is_none()
            && l.from.database == to.database;
        let fed = doc.links.iter().any(|m| m.to == l.from);
        if !mirror || fed {
            continue;
        }
        let g = match out
            .iter_mut()
            .find(|g| g.head == l.from.node && g.database == l.from.database)
        {
            Some(g) => g,
            None => {
                let k = doc
                    .quorum
                    .iter()
                    .find(|q| q.endpoint() == l.from)
                    .map_or(1, |q| q.k);
                out.push(Group {
                    tenant: tenant.to_string(),
                    database: l.from.database.clone(),
                    topology: doc.name.clone(),
                    head: l.from.node.clone(),
                    replicas: Vec::new(),
                    standbys: Vec::new(),
                    k,
                    async_allowed: doc.failover == FailoverPolicy::AsyncAllowed,
                });
                out.last_mut().expect("just pushed")
            }
        };
        g.replicas.push(to.node.clone());
        if l.options.mode == Mode::Sync {
            g.standbys.push(to.node.clone());
        }
    }
    out
}

/// Who may take a vacant leader key: once `N - k + 1` of the `N` standbys have stood
/// (each acknowledged commit was confirmed by `k` standbys, so at least one of these holds
/// every one), the one with the highest applied serial, then the lowest name. `None`:
/// not enough standbys stood yet.
fn winner(standbys: &[String], k: usize, candidates: &BTreeMap<String, u64>) -> Option<String> {
    let standing: Vec<(&String, &u64)> = candidates
        .iter()
        .filter(|(n, _)| standbys.contains(n))
        .collect();
    let need = standbys.len().saturating_sub(k.max(1)) + 1;
    if standbys.is_empty() || standing.len() < need {
        return None;
    }
    standing
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(n, _)| (*n).clone())
}

impl Cluster {
    /// Join the cluster: grant the lease, register, read the prefix once, and start the
    /// lease keeper, the watch and the control loop. The fence is installed before this
    /// returns, so no write of a replicated database is taken unchecked.
    pub fn start(
        config: ClusterConfig,
        node: Arc<Node>,
        repl: Arc<Replication>,
        url: String,
    ) -> Result<Arc<Cluster>, String> {
        config.check()?;
        let ttl = Duration::from_millis(config.lease_ttl_ms);
        let cluster = Arc::new(Cluster {
            node_id: config
                .node_id
                .clone()
                .unwrap_or_else(|| repl.node_id.clone()),
            prefix: format!("/doppel/{}/", config.name),
            etcd: Etcd::new(&config.etcd, Duration::from_secs(2).max(ttl / 2)),
            keeper: Etcd::new(&config.etcd, ttl / 4),
            config,
            url,
            node,
            repl,
            lease: AtomicI64::new(0),
            renewed: Mutex::new(None),
            view: RwLock::new(View::default()),
            wake: (StdMutex::new(false), Condvar::new()),
            vacant_since: Mutex::new(BTreeMap::new()),
            said: Mutex::new(BTreeMap::new()),
        });
        cluster.node.set_fence(cluster.clone());
        // Joining waits for etcd (bounded): a member that cannot register is no member.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match cluster.renew() {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "waiting for etcd to join the cluster");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("cannot join cluster: {e}")),
            }
        }
        if let Err(e) = cluster.refresh() {
            tracing::warn!(error = %e, "first read of the cluster failed");
        }
        let c = cluster.clone();
        std::thread::Builder::new()
            .name("cluster-lease".into())
            .spawn(move || c.lease_loop())
            .map_err(|e| e.to_string())?;
        let c = cluster.clone();
        std::thread::Builder::new()
            .name("cluster-watch".into())
            .spawn(move || c.watch_loop())
            .map_err(|e| e.to_string())?;
        let c = cluster.clone();
        // Links made by the control loop start their tasks on the node's runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("cluster-control".into())
            .spawn(move || {
                let _entered = runtime.enter();
                c.control_loop()
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(cluster = %cluster.config.name, node = %cluster.node_id, "joined the cluster");
        Ok(cluster)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    /// How long after a confirmed renewal was sent this node still acknowledges.
    fn fence_after(&self) -> Duration {
        self.ttl() - self.ttl() / 4
    }

    /// The lease this node holds and may act under now (fence not reached).
    fn live_lease(&self) -> Option<i64> {
        let renewed = *self.renewed.lock();
        renewed
            .filter(|(_, at)| at.elapsed() < self.fence_after())
            .map(|(lease, _)| lease)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Renew the lease, or (it expired, or none yet) grant a new one and register.
    fn renew(&self) -> Result<(), EtcdError> {
        let lease = self.lease.load(Ordering::SeqCst);
        let sent = Instant::now();
        if lease != 0 {
            if self.keeper.keepalive(lease)? > 0 {
                *self.renewed.lock() = Some((lease, sent));
                return Ok(());
            }
            tracing::warn!(
                lease,
                "the node's lease expired: fenced until it has a new one"
            );
            *self.renewed.lock() = None;
        }
        let secs = self.config.lease_ttl_ms.div_ceil(1000).max(2) as i64;
        let lease = self.etcd.grant(secs)?;
        let member = json!({"node": self.node_id, "url": self.url,
                            "replication": self.repl.advertised.to_string(),
                            "version": env!("CARGO_PKG_VERSION")});
        self.etcd.put(
            &self.key(&format!("members/{}", self.node_id)),
            member.to_string().as_bytes(),
            lease,
        )?;
        self.lease.store(lease, Ordering::SeqCst);
        *self.renewed.lock() = Some((lease, sent));
        self.poke();
        Ok(())
    }

    fn lease_loop(self: Arc<Self>) {
        let every = self.ttl() / 6;
        loop {
            let started = Instant::now();
            if let Err(e) = self.renew() {
                tracing::warn!(error = %e, "cannot renew the node's lease");
            }
            std::thread::sleep(every.saturating_sub(started.elapsed()));
        }
    }

    fn watch_loop(self: Arc<Self>) {
        loop {
            let rev = self.etcd.range(&self.prefix).map(|(_, r)| r).unwrap_or(0);
            let watched = self
                .etcd
                .watch(&self.prefix, rev + 1, Duration::from_secs(5), |_| {
                    self.poke();
                    true
                });
            if let Err(e) = watched {
                tracing::debug!(error = %e, "cluster watch ended");
                std::thread::sleep(self.ttl() / 8);
            }
        }
    }

    /// Wake the control loop.
    fn poke(&self) {
        let (flag, cv) = &self.wake;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_one();
    }

    fn control_loop(self: Arc<Self>) {
        let every = self.ttl() / 4;
        loop {
            {
                let (flag, cv) = &self.wake;
                let mut woken = flag.lock().unwrap_or_else(|e| e.into_inner());
                if !*woken {
                    woken = cv
                        .wait_timeout(woken, every)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                *woken = false;
            }
            match self.refresh() {
                Ok(()) => {
                    self.reconcile_all();
                    self.elect();
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the cluster"),
            }
        }
    }

    /// Read everything under the prefix into the view.
    fn refresh(&self) -> Result<(), EtcdError> {
        let (kvs, _) = self.etcd.range(&self.prefix)?;
        let mut v = View {
            loaded: true,
            ..View::default()
        };
        for kv in &kvs {
            let rest = &kv.key[self.prefix.len()..];
            let mut parts = rest.splitn(2, '/');
            let (Some(kind), Some(rest)) = (parts.next(), parts.next()) else {
                continue;
            };
            let pair = |s: &str| {
                let (a, b) = s.split_once('/').unwrap_or((s, ""));
                (a.to_string(), b.to_string())
            };
            match kind {
                "members" => {
                    v.members.insert(rest.to_string(), json_of(kv));
                }
                "topologies" => {
                    if let Ok(doc) = serde_json::from_slice::<Topology>(&kv.value) {
                        v.topologies.insert(pair(rest), (doc, kv.mod_revision));
                    }
                }
                "leaders" => {
                    if let Ok(l) = serde_json::from_slice::<Leader>(&kv.value) {
                        v.leaders.insert(pair(rest), (l, kv.lease));
                    }
                }
                "elected" => {
                    v.elected.insert(pair(rest));
                }
                "sync" => {
                    v.sync.insert(pair(rest), json_of(kv));
                }
                "candidates" => {
                    let (tenant, rest) = pair(rest);
                    let (db, node) = pair(&rest);
                    let serial = json_of(kv)["serial"].as_u64().unwrap_or(0);
                    v.candidates
                        .entry((tenant, db))
                        .or_default()
                        .insert(node, serial);
                }
                "failovers" => v.failovers.push(json_of(kv)),
                _ => {}
            }
        }
        for ((tenant, _), (doc, _)) in &v.topologies {
            let Some(me) = self.my_name(doc) else {
                continue;
            };
            for g in groups(tenant, doc) {
                if g.head == me || g.replicas.contains(&me) {
                    v.mine
                        .insert((g.tenant.clone(), g.database.clone()), (g, me.clone()));
                }
            }
        }
        *self.view.write() = v;
        Ok(())
    }

    /// This node's name in `doc`: its cluster node id, or the node whose URL is ours.
    fn my_name(&self, doc: &Topology) -> Option<String> {
        if doc.nodes.contains_key(&self.node_id) {
            return Some(self.node_id.clone());
        }
        doc.nodes
            .iter()
            .find(|(_, n)| n.url.trim_end_matches('/') == self.url)
            .map(|(name, _)| name.clone())
    }

    fn local_key(tenant: &str, name: &str) -> String {
        format!("cluster-links/{tenant}/{name}")
    }

    fn reconcile_all(&self) {
        let (docs, known): (Vec<_>, BTreeSet<_>) = {
            let v = self.view.read();
            (
                v.topologies
                    .iter()
                    .map(|(k, (d, _))| (k.clone(), d.clone()))
                    .collect(),
                v.topologies.keys().cloned().collect(),
            )
        };
        for ((tenant, name), doc) in docs {
            let result = self.reconcile(&tenant, &doc);
            let mut said = self.said.lock();
            match result {
                Ok(()) => {
                    said.remove(&(tenant, name));
                }
                Err(e) => {
                    let e = e.to_string();
                    if said.get(&(tenant.clone(), name.clone())) != Some(&e) {
                        tracing::warn!(tenant, topology = name, error = %e, "reconcile");
                        said.insert((tenant, name), e);
                    }
                }
            }
        }
        // Documents deleted: their links here go.
        if let Ok(local) = self.node.config_scan("cluster-links/") {
            for (key, value) in local {
                let rest = &key["cluster-links/".len()..];
                let Some((tenant, name)) = rest.split_once('/') else {
                    continue;
                };
                if known.contains(&(tenant.to_string(), name.to_string())) {
                    continue;
                }
                if let Ok(stored) = serde_json::from_slice::<Stored>(&value) {
                    for a in stored.links.values() {
                        let _ = self.repl.delete_link(tenant, &a.id);
                    }
                }
                let _ = self.node.remove_config_value(&key);
            }
        }
    }

    /// Make this node's own links what `doc` says, with local calls.
    fn reconcile(&self, tenant: &str, doc: &Topology) -> Result<(), Error> {
        let Some(me) = self.my_name(doc) else {
            return Ok(());
        };
        let key = Self::local_key(tenant, &doc.name);
        let before: Option<Stored> = self
            .node
            .config_value(&key)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        let mine = Topology {
            links: doc
                .links
                .iter()
                .filter(|l| l.from.node == me)
                .cloned()
                .collect(),
            ..doc.clone()
        };
        let steps = topology::plan(&mine, before.as_ref(), |a| {
            self.repl.handle(tenant, &a.id).is_ok()
        });
        let before_doc = before.as_ref().map(|b| b.doc.clone());
        let old = before.map(|b| b.links).unwrap_or_default();
        let mut stored = Stored {
            doc: mine.clone(),
            links: BTreeMap::new(),
            applied_ms: wall_ms(),
            stale: Vec::new(),
            failover: None,
        };
        let mut failed = None;
        for step in &steps {
            let live = |id: String| Applied {
                node: me.clone(),
                id,
                link: mine.links[step.index.expect("in the document")].clone(),
            };
            let outcome: Result<Option<Applied>, Error> = match step.action {
                "keep" => Ok(step.id.clone().map(live)),
                "delete" => {
                    if let Some(id) = &step.id {
                        match self.repl.delete_link(tenant, id) {
                            Ok(()) | Err(Error::NotFound(_)) => {}
                            Err(e) => failed = Some(e),
                        }
                    }
                    Ok(None)
                }
                "update-stages" => {
                    let i = step.index.expect("in the document");
                    let id = step.id.clone().unwrap_or_default();
                    self.repl
                        .set_stages(tenant, &id, mine.links[i].options.stages.clone())
                        .map(|_| Some(live(id)))
                }
                _ => {
                    if let Some(id) = step.id.as_ref().filter(|_| step.action == "replace") {
                        let _ = self.repl.delete_link(tenant, id);
                    }
                    let i = step.index.expect("in the document");
                    self.repl
                        .create_link(tenant, mine.links[i].spec(&mine))
                        .map(|v| Some(live(v["id"].as_str().unwrap_or_default().to_string())))
                }
            };
            match outcome {
                Ok(Some(a)) => {
                    stored.links.insert(step.link.clone(), a);
                }
                Ok(None) => {}
                Err(e) => {
                    if let Some(a) = old.get(&step.link).filter(|_| step.action != "create") {
                        stored.links.insert(step.link.clone(), a.clone());
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        // Stored again only when something changed (this runs on every read of etcd).
        let same = |a: &BTreeMap<String, Applied>| {
            a.len() == stored.links.len()
                && a.iter()
                    .zip(&stored.links)
                    .all(|((la, x), (lb, y))| la == lb && x.id == y.id && x.link == y.link)
        };
        if !(same(&old) && before_doc.as_ref() == Some(&mine)) {
            let bytes =
                serde_json::to_vec(&stored).map_err(|e| Error::Unavailable(e.to_string()))?;
            self.node.set_config_value(&key, &bytes)?;
        }
        // The heads of this document's replicated databases (sync-only) never let a
        // suspended standby lower their quorum: the election counts on all of them.
        for g in groups(tenant, doc).iter().filter(|g| g.head == me) {
            if let Ok(db) = self.node.database(tenant, &g.database) {
                db.quorum.set_strict(!g.async_allowed);
            }
        }
        // The quorum of the primaries this node is, as the document gives it.
        for q in doc.quorum.iter().filter(|q| q.node == me) {
            if let Ok(db) = self.node.database(tenant, &q.database) {
                let n = doc.sync_links_from(&q.endpoint());
                let info = db.quorum.info();
                if (info.k, info.timeout_ms, info.expected_links) != (q.k, q.timeout_ms, n) {
                    db.quorum.configure(q.k, q.timeout_ms);
                    db.quorum.expect_links(n);
                    self.repl
                        .save_quorum(tenant, &q.database, q.k, q.timeout_ms)?;
                }
            }
        }
        for l in mine.links.iter().filter(|l| l.options.mode == Mode::Sync) {
            if doc.quorum.iter().any(|q| q.endpoint() == l.from) {
                continue;
            }
            if let Ok(db) = self.node.database(tenant, &l.from.database) {
                let n = doc.sync_links_from(&l.from);
                if db.quorum.info().expected_links != n {
                    db.quorum.expect_links(n);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Take the leader keys this node is due, and stand for the vacant ones.
    fn elect(&self) {
        let (mine, leaders, elected, candidates, sync, docs) = {
            let v = self.view.read();
            (
                v.mine.clone(),
                v.leaders.clone(),
                v.elected.clone(),
                v.candidates.clone(),
                v.sync.clone(),
                v.topologies.clone(),
            )
        };
        let Some(lease) = self.live_lease() else {
            return;
        };
        for (id, (g, me)) in mine {
            if let Some((leader, held)) = leaders.get(&id) {
                self.vacant_since.lock().remove(&id);
                // This node restarted while primary: its key still hangs on the lease of
                // its previous process. Move it to this lease (only if that is still
                // the lease it hangs on), instead of waiting for it to expire.
                if leader.member == self.node_id && *held != lease && g.head == me {
                    self.reclaim(&g, leader, *held, lease);
                }
                // A candidacy left from an election someone else won.
                if candidates.get(&id).is_some_and(|c| c.contains_key(&me)) {
                    let _ = self
                        .etcd
                        .delete(&self.key(&format!("candidates/{}/{}/{me}", id.0, id.1)));
                }
                if leader.node == me {
                    self.publish_sync(&g, sync.get(&id));
                }
                continue;
            }
            let Ok(db) = self.node.database(&g.tenant, &g.database) else {
                continue;
            };
            let serial = db.serials().0;
            if g.head == me {
                // The document's primary takes its key (the transaction arbitrates a
                // race with standbys).
                if db.replica_of().is_none() && self.take(&g, &me, lease, serial) {
                    tracing::info!(database = %g.database, "took the leader key");
                }
                continue;
            }
            let may_stand = g.standbys.contains(&me) || g.async_allowed;
            if !elected.contains(&id) || !may_stand {
                continue;
            }
            let since = *self
                .vacant_since
                .lock()
                .entry(id.clone())
                .or_insert_with(Instant::now);
            // Stand: publish the serial this standby applied.
            let mine_now = candidates.get(&id).and_then(|c| c.get(&me)).copied();
            if mine_now != Some(serial) {
                let _ = self.etcd.put(
                    &self.key(&format!("candidates/{}/{}/{me}", id.0, id.1)),
                    json!({"serial": serial}).to_string().as_bytes(),
                    lease,
                );
                continue; // decide on the next read, with this candidacy in it
            }
            let (standbys, k) = match sync.get(&id) {
                // Every replica whose member is alive stands; all of them must have
                // stood, and the most advanced wins (k = 1 of them: need all).
                _ if g.async_allowed => {
                    let live: Vec<String> = g
                        .replicas
                        .iter()
                        .filter(|n| {
                            self.is_member(
                                n,
                                docs.get(&(g.tenant.clone(), g.topology.clone()))
                                    .map(|d| &d.0),
                            )
                        })
                        .cloned()
                        .collect();
                    (live, 1)
                }
                Some(s) => (
                    s["standbys"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_else(|| g.standbys.clone()),
                    s["k"].as_u64().map_or(g.k, |k| k as usize),
                ),
                None => (g.standbys.clone(), g.k),
            };
            let empty = BTreeMap::new();
            let standing = candidates.get(&id).unwrap_or(&empty);
            if winner(&standbys, k, standing).as_deref() != Some(me.as_str()) {
                continue;
            }
            let Some((doc, rev)) = docs.get(&(g.tenant.clone(), g.topology.clone())) else {
                continue;
            };
            if !self.take(&g, &me, lease, serial) {
                continue;
            }
            match self.promote(&g, &me, doc, *rev, since) {
                Ok(record) => tracing::info!(%record, "failover: this node is the primary"),
                Err(e) => tracing::error!(error = %e, database = %g.database, "failover failed"),
            }
            self.vacant_since.lock().remove(&id);
        }
    }

    /// Whether node `name` of `doc` holds a live membership (by node id or API URL).
    fn is_member(&self, name: &str, doc: Option<&Topology>) -> bool {
        let v = self.view.read();
        if v.members.contains_key(name) {
            return true;
        }
        let url = doc
            .and_then(|d| d.nodes.get(name))
            .map(|n| n.url.trim_end_matches('/').to_string());
        url.is_some_and(|u| v.members.values().any(|m| m["url"] == u.as_str()))
    }

    /// The standby set and `k` this primary commits with, in etcd for the candidates.
    fn publish_sync(&self, g: &Group, stored: Option<&Value>) {
        let want = json!({"standbys": g.standbys, "k": g.k,
                          "policy": if g.async_allowed { "async-allowed" } else { "sync-only" }});
        if stored != Some(&want) {
            let _ = self.etcd.put(
                &self.key(&format!("sync/{}/{}", g.tenant, g.database)),
                want.to_string().as_bytes(),
                0,
            );
        }
    }

    /// Move this node's leader key of `g` from lease `old` (its previous process) to
    /// `lease`.
    fn reclaim(&self, g: &Group, leader: &Leader, old: i64, lease: i64) {
        let key = self.key(&format!("leaders/{}/{}", g.tenant, g.database));
        let value = serde_json::to_vec(leader).expect("JSON");
        let op = TxnOp::Put {
            key: key.clone(),
            value,
            lease,
        };
        if self
            .etcd
            .txn(&[Compare::Lease(key, old)], &[op])
            .unwrap_or(false)
        {
            tracing::info!(database = %g.database, "took the leader key over from this node's previous lease");
            self.poke();
        }
    }

    /// Take `g`'s leader key if it is free.
    fn take(&self, g: &Group, me: &str, lease: i64, serial: u64) -> bool {
        let leader = Leader {
            node: me.to_string(),
            member: self.node_id.clone(),
            url: self.url.clone(),
            serial,
            since_ms: wall_ms(),
            topology: g.topology.clone(),
        };
        let key = self.key(&format!("leaders/{}/{}", g.tenant, g.database));
        let ops = [
            TxnOp::Put {
                key: key.clone(),
                value: serde_json::to_vec(&leader).expect("JSON"),
                lease,
            },
            TxnOp::Put {
                key: self.key(&format!("elected/{}/{}", g.tenant, g.database)),
                value: b"1".to_vec(),
                lease: 0,
            },
        ];
        let won = self
            .etcd
            .txn(&[Compare::Absent(key)], &ops)
            .unwrap_or(false);
        if won {
            self.view
                .write()
                .leaders
                .insert((g.tenant.clone(), g.database.clone()), (leader, lease));
        }
        won
    }

    /// This standby won `g`'s key: promote, store the document after the failover and
    /// the record.
    fn promote(
        &self,
        g: &Group,
        me: &str,
        doc: &Topology,
        rev: i64,
        since: Instant,
    ) -> Result<Value, Error> {
        let old = Endpoint {
            node: g.head.clone(),
            database: g.database.clone(),
        };
        let to = Endpoint {
            node: me.to_string(),
            database: g.database.clone(),
        };
        let next = topology::after_failover(doc, &old, &to);
        let quorum = next
            .quorum
            .iter()
            .find(|q| q.endpoint() == to)
            .map(|q| (q.k, q.timeout_ms));
        let promoted = self.repl.promote(
            &g.tenant,
            &g.database,
            true,
            quorum,
            next.sync_links_from(&to),
        )?;
        let key = self.key(&format!("topologies/{}/{}", g.tenant, g.topology));
        let stored = self
            .etcd
            .txn(
                &[Compare::ModRevision(key.clone(), rev)],
                &[TxnOp::Put {
                    key,
                    value: serde_json::to_vec(&next).expect("JSON"),
                    lease: 0,
                }],
            )
            .map_err(unavailable)?;
        if !stored {
            tracing::warn!(topology = %g.topology, "the document changed during the failover");
        }
        let serial = promoted.serial;
        let lost = promoted
            .source_serial_announced
            .saturating_sub(promoted.source_serial_applied);
        let at_ms = wall_ms();
        let record = serde_json::to_value(FailoverEvent {
            at_ms,
            tenant: g.tenant.clone(),
            database: g.database.clone(),
            from: g.head.clone(),
            to: me.to_string(),
            serial,
            lost_entries: lost,
            took_ms: since.elapsed().as_millis() as u64,
            epoch: promoted.epoch,
            topology: g.topology.clone(),
            policy: if g.async_allowed {
                "async-allowed"
            } else {
                "sync-only"
            }
            .into(),
            reason: "the primary's leader key expired".into(),
        })
        .expect("a failover record is JSON");
        let _ = self.etcd.put(
            &self.key(&format!(
                "failovers/{at_ms:013}-{}-{}",
                g.tenant, g.database
            )),
            record.to_string().as_bytes(),
            0,
        );
        let _ = self
            .etcd
            .delete(&self.key(&format!("candidates/{}/{}/{me}", g.tenant, g.database)));
        self.poke();
        Ok(record)
    }

    // ---- what the API asks -------------------------------------------------------

    /// `GET /v1/cluster`, restricted to the tenants `covers` accepts.
    pub fn show(&self, covers: impl Fn(&str) -> bool) -> ClusterView {
        let v = self.view.read();
        let mut members: Vec<Member> = v
            .members
            .iter()
            .map(|(node, m)| Member {
                node: node.clone(),
                url: m["url"].as_str().unwrap_or_default().to_string(),
                state: MemberState::Up,
            })
            .collect();
        // Nodes the documents name that hold no live membership.
        let up: BTreeSet<String> = v
            .members
            .values()
            .filter_map(|m| m["url"].as_str().map(str::to_string))
            .collect();
        let mut down = BTreeMap::new();
        for ((tenant, _), (doc, _)) in &v.topologies {
            if !covers(tenant) {
                continue;
            }
            for (name, n) in &doc.nodes {
                let url = n.url.trim_end_matches('/').to_string();
                if !up.contains(&url) && !v.members.contains_key(name) {
                    down.insert(name.clone(), url);
                }
            }
        }
        members.extend(down.into_iter().map(|(node, url)| Member {
            node,
            url,
            state: MemberState::Down,
        }));
        let primaries: Vec<Primary> = v
            .leaders
            .iter()
            .filter(|((t, _), _)| covers(t))
            .map(|((tenant, database), (l, _))| Primary {
                tenant: tenant.clone(),
                database: database.clone(),
                node: l.node.clone(),
                url: l.url.clone(),
                serial: l.serial,
                since_ms: l.since_ms,
            })
            .collect();
        let failovers: Vec<Value> = v
            .failovers
            .iter()
            .filter(|f| f["tenant"].as_str().is_some_and(&covers))
            .cloned()
            .collect();
        ClusterView {
            name: self.config.name.clone(),
            node: self.node_id.clone(),
            members,
            primaries,
            failovers,
        }
    }

    /// Store a topology document (validated by the caller). `revision`: the revision
    /// the caller read (0: the document must not exist); `None`: whatever is there.
    pub fn store_topology(
        &self,
        tenant: &str,
        doc: &Topology,
        revision: Option<i64>,
    ) -> Result<i64, ClusterError> {
        let key = self.key(&format!("topologies/{tenant}/{}", doc.name));
        let value = serde_json::to_vec(doc).expect("JSON");
        let compare = match revision {
            Some(0) => vec![Compare::Absent(key.clone())],
            Some(rev) => vec![Compare::ModRevision(key.clone(), rev)],
            None => Vec::new(),
        };
        let ok = self
            .etcd
            .txn(
                &compare,
                &[TxnOp::Put {
                    key: key.clone(),
                    value,
                    lease: 0,
                }],
            )
            .map_err(|e| ClusterError::Node(unavailable(e)))?;
        let now = self
            .etcd
            .get(&key)
            .map_err(|e| ClusterError::Node(unavailable(e)))?
            .map_or(0, |kv| kv.mod_revision);
        if !ok {
            return Err(ClusterError::Stale {
                given: revision.unwrap_or(0),
                current: now,
            });
        }
        self.poke();
        Ok(now)
    }

    /// A stored document and its revision.
    pub fn topology(&self, tenant: &str, name: &str) -> Result<(Topology, i64), Error> {
        let key = self.key(&format!("topologies/{tenant}/{name}"));
        let kv = self
            .etcd
            .get(&key)
            .map_err(unavailable)?
            .ok_or_else(|| Error::NotFound(format!("topology '{name}'")))?;
        let doc = serde_json::from_slice(&kv.value)
            .map_err(|e| Error::Unavailable(format!("a stored topology: {e}")))?;
        Ok((doc, kv.mod_revision))
    }

    /// The tenant's documents.
    pub fn topologies(&self, tenant: &str) -> Result<Vec<crate::topology::Summary>, Error> {
        let (kvs, _) = self
            .etcd
            .range(&self.key(&format!("topologies/{tenant}/")))
            .map_err(unavailable)?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let doc: Topology = serde_json::from_slice(&kv.value).ok()?;
                Some(crate::topology::Summary {
                    name: doc.name,
                    nodes: doc.nodes.len(),
                    links: doc.links.len(),
                    applied_ms: None,
                    revision: Some(kv.mod_revision),
                })
            })
            .collect())
    }

    pub fn delete_topology(&self, tenant: &str, name: &str) -> Result<(), Error> {
        let (doc, _) = self.topology(tenant, name)?;
        self.etcd
            .delete(&self.key(&format!("topologies/{tenant}/{name}")))
            .map_err(unavailable)?;
        // Its databases were elected under it: a later document starts afresh.
        for g in groups(tenant, &doc) {
            for kind in ["elected", "sync"] {
                let _ = self
                    .etcd
                    .delete(&self.key(&format!("{kind}/{tenant}/{}", g.database)));
            }
        }
        self.poke();
        Ok(())
    }

    /// The links this node made for a document (id and live status), for the API.
    pub fn local_links(&self, tenant: &str, name: &str) -> Vec<Value> {
        let Ok(Some(bytes)) = self.node.config_value(&Self::local_key(tenant, name)) else {
            return Vec::new();
        };
        let Ok(stored) = serde_json::from_slice::<Stored>(&bytes) else {
            return Vec::new();
        };
        stored
            .links
            .values()
            .map(|a| {
                let status = self
                    .repl
                    .show_link(tenant, &a.id)
                    .map(|v| v["status"].clone())
                    .unwrap_or(Value::Null);
                json!({"link": a.link.label(), "node": a.node, "id": a.id, "status": status})
            })
            .collect()
    }
}

/// Why storing a document failed.
#[derive(Debug)]
pub enum ClusterError {
    /// The document changed since the revision given.
    Stale {
        given: i64,
        current: i64,
    },
    Node(Error),
}

impl Fence for Cluster {
    fn admit(&self, tenant: &str, database: &str) -> node::Result<()> {
        let v = self.view.read();
        if !v.loaded {
            return Err(Error::NotPrimary {
                detail: format!(
                    "this node has not read the cluster's state from etcd yet: it takes no \
                     write of database '{database}' until it knows whether it is its primary"
                ),
                primary: None,
            });
        }
        let Some((g, me)) = v.mine.get(&(tenant.to_string(), database.to_string())) else {
            return Ok(()); // not a replicated database of a clustered topology
        };
        let leader = v.leaders.get(&(tenant.to_string(), database.to_string()));
        // A replica refuses with where to write (a view not read since it became one
        // may still name this node: then without a URL).
        let replica = self
            .node
            .database(tenant, database)
            .is_ok_and(|db| db.replica_of().is_some());
        match leader {
            Some((l, lease)) if &l.node == me && !replica => {
                if self.live_lease() == Some(*lease) {
                    Ok(())
                } else {
                    Err(Error::NotPrimary {
                        detail: format!(
                            "this node could not renew its cluster lease in time: it no \
                             longer acknowledges writes of database '{database}' (another \
                             member may take over)"
                        ),
                        primary: None,
                    })
                }
            }
            Some((l, _)) if g.replicas.contains(me) || g.head == *me => {
                let primary = (&l.node != me).then(|| l.url.clone());
                let detail = match &primary {
                    Some(url) => format!(
                        "database '{database}' has its primary on node '{}' ({url}): write \
                         there",
                        l.node
                    ),
                    None => format!("database '{database}' is a replica on this node"),
                };
                Err(if replica {
                    Error::Misdirected { detail, primary }
                } else {
                    Error::NotPrimary { detail, primary }
                })
            }
            _ if replica => Err(Error::Misdirected {
                detail: format!(
                    "database '{database}' is a replica on this node and its primary is \
                     being elected: retry shortly on the primary"
                ),
                primary: None,
            }),
            _ => Err(Error::NotPrimary {
                detail: format!(
                    "database '{database}' has no primary in the cluster right now (an \
                     election is under way): retry shortly"
                ),
                primary: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_vacant_key_goes_to_the_most_advanced_of_enough_standbys() {
        let standbys = names(&["b", "c", "d"]);
        let mut stood = BTreeMap::new();
        stood.insert("c".to_string(), 10);
        // k = 1 of 3: the one confirmation of a commit may be on any standby: all three.
        assert_eq!(winner(&standbys, 1, &stood), None);
        stood.insert("b".to_string(), 12);
        assert_eq!(winner(&standbys, 1, &stood), None);
        stood.insert("d".to_string(), 11);
        assert_eq!(winner(&standbys, 1, &stood).as_deref(), Some("b"));
        // k = 2 of 3: any two standbys include one that confirmed every commit.
        stood.remove("d");
        assert_eq!(winner(&standbys, 2, &stood).as_deref(), Some("b"));
        // k = N: any one. Equal serials: the lowest name.
        let mut one = BTreeMap::new();
        one.insert("d".to_string(), 7);
        assert_eq!(winner(&standbys, 3, &one).as_deref(), Some("d"));
        one.insert("c".to_string(), 7);
        assert_eq!(winner(&standbys, 3, &one).as_deref(), Some("c"));
        // A node outside the standby set (an async replica) is never counted.
        let mut outsider = BTreeMap::new();
        outsider.insert("z".to_string(), 99);
        assert_eq!(winner(&standbys, 3, &outsider), None);
        assert_eq!(winner(&[], 1, &outsider), None);
    }

    #[test]
    fn a_replicated_database_is_a_head_of_mirror_links_and_its_sync_targets_stand() {
        let doc: Topology = serde_json::from_value(json!({
            "name": "ha",
            "nodes": {"a": {"url": "http://a:1"}, "b": {"url": "http://b:1"},
                      "c": {"url": "http://c:1"}, "d": {"url": "http://d:1"}},
            "links": [
                {"from": {"node": "a", "database": "shop"}, "to": {"node": "b", "database": "shop"}, "mode": "sync"},
                {"from": {"node": "a", "database": "shop"}, "to": {"node": "c", "database": "shop"}},
                {"from": {"node": "c", "database": "shop"}, "to": {"node": "d", "database": "shop"}},
                {"from": {"node": "a", "database": "shop"}, "to": {"node": "d", "database": "copy"}}
            ],
            "quorum": [{"node": "a", "database": "shop", "k": 1}]
        }))
        .unwrap();
        let g = groups("default", &doc);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].head, "a");
        assert_eq!(g[0].replicas, names(&["b", "c"]));
        assert_eq!(g[0].standbys, names(&["b"]));
        assert_eq!(g[0].k, 1);
        assert!(!g[0].async_allowed);
        let mut allowed = doc.clone();
        allowed.failover = FailoverPolicy::AsyncAllowed;
        assert!(groups("default", &allowed)[0].async_allowed);
    }
}
