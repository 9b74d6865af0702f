//! Replication between nodes (SPEC C1–C5): links, the wire protocol, the sender that
//! ships a source database's log and the receiver that applies it on a replica.
//!
//! - [`links`]: link definitions, replica registrations, live status.
//! - [`wire`]: frames and messages.
//! - [`sender`]: one task per link on the source: register with the target's API,
//!   connect, bootstrap from a snapshot when needed, then stream the log.
//! - [`receiver`]: the replication listener on the target: handshake, gap and
//!   duplicate detection, apply, "backup completed".
//! - [`interrelation`]: dependencies between databases (SPEC D1–D4), attached on the
//!   source by rule stages and waited for on the target.
//! - [`logical`]: logical apply, the link's stages, dead letters.
//! - [`spool`]: what a suspended replica stores.
//! - [`redrive`]: re-driving dead letters through the stages to the replica.
//! - [`verify`]: comparing a mirror with its source block by block, and repairing it.
//!
//! The source and target agree on the endpoint themselves: the source registers the
//! link through the target's REST API (`PUT /v1/tenants/{t}/replicas/{link}`), which
//! answers with the target's replication address; the source then connects there and
//! presents the link's credential. Invariants: a replica applies serials in order
//! exactly once; it stores what it applied in the same sled batch as the applied
//! serial; a source never waits on a replica except through a synchronous link's
//! quorum ([`crate::node::quorum`]).

pub mod interrelation;
pub mod links;
pub mod logical;
pub mod mutual;
pub mod parallel;
pub mod receiver;
pub mod redrive;
pub mod sender;
pub mod spool;
pub mod verify;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::node::{Database, Error, Node, Result};
use crate::remote::{self, RemoteError};
use crate::tenancy::Tenancy;
use crate::txn::clock::wall_ms;
use links::{LinkDef, LinkSpec, LinkStatus, Mode, ReplicaReg, ReplicaRequest};

const LINK_PREFIX: &str = "link/";
const REPLICA_PREFIX: &str = "replica/";
const NODE_ID_KEY: &str = "node/id";
const QUORUM_PREFIX: &str = "quorum/";
/// The deadline of one call to a link's target node.
const TARGET_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A link on the source, with its running sender.
pub struct LinkHandle {
    pub def: Mutex<LinkDef>,
    pub status: Mutex<LinkStatus>,
    /// Bumped when the definition changes (pause, resume, delete): the sender re-reads.
    pub control: tokio::sync::watch::Sender<u64>,
    pub deleted: std::sync::atomic::AtomicBool,
    /// Set when the replica asked for a snapshot: the next session bootstraps.
    pub force_bootstrap: std::sync::atomic::AtomicBool,
    /// Stopped by its error policy until resumed.
    pub stopped: std::sync::atomic::AtomicBool,
    /// Ship nothing past this serial (0: no limit): a verify holds the replica at the
    /// point its source's checksums were taken.
    pub hold_at: std::sync::atomic::AtomicU64,
}

impl LinkHandle {
    fn poke(&self) {
        self.control.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// A node's replication: its links as a source, its replicas as a target.
pub struct Replication {
    pub node: Arc<Node>,
    pub tenancy: Arc<Tenancy>,
    pub node_id: String,
    /// Where this node's replication listener is reachable.
    pub advertised: SocketAddr,
    links: Mutex<BTreeMap<String, Arc<LinkHandle>>>,
    replicas: Mutex<BTreeMap<String, ReplicaReg>>,
    /// The running receiver session of each replica link (a new connection ends the
    /// previous one).
    sessions: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
    /// What suspended replicas received (SPEC G6).
    pub spool: spool::Spool,
    /// The plugin registry the stages of logical links come from.
    pub plugins: Arc<crate::plugins::Registry>,
    /// Records that logical links quarantined.
    pub dead_letters: logical::DeadLetters,
    /// How far each replica got, for the transactions that wait on it (SPEC D3).
    pub gates: interrelation::Gates,
    /// Per replica link: the last serial its source announced (watermark), to tell
    /// whether it is caught up before a promotion.
    announced: Mutex<BTreeMap<String, u64>>,
    /// Conflicts mutual links met (SPEC F4).
    pub conflicts: mutual::ConflictLog,
    /// Per mutual replica link, what it brought since the node started.
    pub mutual_counts: Mutex<BTreeMap<String, mutual::Counts>>,
    /// Record locks of parallel databases (SPEC F5).
    pub exclusive: parallel::Exclusive,
}

/// A call to another node that fails leaves the operation unavailable (503), with what
/// that node said.
impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Error {
        Error::Unavailable(e.to_string())
    }
}

/// A stored link, replica registration or quorum that does not decode.
fn stored(e: serde_json::Error) -> Error {
    Error::Log(crate::log::durable::LogError::Damaged(format!(
        "a stored replication setting: {e}"
    )))
}

impl Replication {
    /// Load links and replicas, bind the replication listener on `listen`, and start
    /// every link's sender.
    pub async fn start(
        node: Arc<Node>,
        tenancy: Arc<Tenancy>,
        plugins: Arc<crate::plugins::Registry>,
        listen: SocketAddr,
    ) -> Result<Arc<Replication>> {
        let unavailable = |e: std::io::Error| {
            Error::Unavailable(format!("cannot listen for replication on {listen}: {e}"))
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(unavailable)?;
        let advertised = listener.local_addr().map_err(unavailable)?;
        let node_id = match node.config_value(NODE_ID_KEY)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let secret =
                    links::random_secret().map_err(|e| Error::Unavailable(e.to_string()))?;
                let id = format!("n{}", &secret[..12]);
                node.set_config_value(NODE_ID_KEY, id.as_bytes())?;
                id
            }
        };
        // Local writes of mutual databases carry this node's id in their versions.
        crate::node::versions::set_local_origin(crate::node::versions::origin_of(&node_id));
        let spool_tree = node.tree("spool")?;
        let conflicts_tree = node.tree("conflicts")?;
        let dead_tree = node.tree("dead-letters")?;
        let repl = Arc::new(Replication {
            node,
            tenancy,
            node_id,
            advertised,
            links: Mutex::new(BTreeMap::new()),
            replicas: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(BTreeMap::new()),
            spool: spool::Spool::open(spool_tree),
            plugins,
            dead_letters: logical::DeadLetters::open(dead_tree),
            gates: interrelation::Gates::default(),
            announced: Mutex::new(BTreeMap::new()),
            conflicts: mutual::ConflictLog::open(conflicts_tree),
            mutual_counts: Mutex::new(BTreeMap::new()),
            exclusive: parallel::Exclusive::default(),
        });
        // Before any link is loaded or any request served: every write of a parallel
        // database takes its records' locks on every site, whoever writes it.
        repl.node
            .set_write_gate(Arc::new(parallel::ParallelGate::new(&repl)));
        for (_, value) in repl.node.config_scan(REPLICA_PREFIX)? {
            let reg: ReplicaReg = serde_json::from_slice(&value).map_err(stored)?;
            if let Ok(db) = repl.node.database(&reg.tenant, &reg.database) {
                // A mutual database takes its own writes too.
                if reg.conflicts.is_none() {
                    db.set_replica_of(Some(reg.link.clone()));
                }
                repl.publish_progress(&reg, &db);
            }
            repl.replicas.lock().insert(reg.link.clone(), reg);
        }
        for (key, value) in repl.node.config_scan(QUORUM_PREFIX)? {
            let mut parts = key[QUORUM_PREFIX.len()..].splitn(2, '/');
            let (Some(tenant), Some(db)) = (parts.next(), parts.next()) else {
                continue;
            };
            let q: (usize, u64) = serde_json::from_slice(&value).map_err(stored)?;
            if let Ok(db) = repl.node.database(tenant, db) {
                db.quorum.configure(q.0, q.1);
            }
        }
        for (_, value) in repl.node.config_scan(LINK_PREFIX)? {
            let def: LinkDef = serde_json::from_slice(&value).map_err(stored)?;
            repl.spawn_link(def);
        }
        tokio::spawn(receiver::listen(repl.clone(), listener));
        tracing::info!(address = %advertised, node = %repl.node_id, "replication listening");
        Ok(repl)
    }

    /// A client for the target node of link `def`, at `…/v1/tenants/{tenant}`: with the
    /// token given when the link was created, or else one this node signs for the
    /// tenant (operator, five minutes) when it has a keyring.
    pub(crate) fn target_client(
        &self,
        def: &LinkDef,
    ) -> std::result::Result<remote::Client, RemoteError> {
        let base = format!(
            "{}/v1/tenants/{}",
            def.spec.target.url.trim_end_matches('/'),
            def.tenant
        );
        let client = remote::Client::new(&base).with_timeout(TARGET_CALL_TIMEOUT);
        let token = match (&def.target_token, &self.tenancy.keyring) {
            (Some(t), _) => t.clone(),
            (None, Some(keyring)) => keyring
                .issue(
                    &format!("node:{}", self.node_id),
                    &def.tenant,
                    crate::tenancy::roles::Role::Operator,
                    300,
                )
                .map_err(RemoteError::Token)?,
            (None, None) => return Ok(client),
        };
        Ok(client.with_token(&token))
    }

    /// The identity of a source database's update stream: node and database.
    pub fn stream_id(&self, db: &Database) -> u64 {
        let node = xxhash_rust::xxh3::xxh3_64(self.node_id.as_bytes());
        (node ^ db.def.uid.rotate_left(32)).max(1)
    }

    fn spawn_link(self: &Arc<Self>, def: LinkDef) -> Arc<LinkHandle> {
        let id = def.id.clone();
        if def.spec.options.mode == Mode::Sync {
            if let Ok(db) = self.node.database(&def.tenant, &def.spec.database) {
                db.quorum.register(&id, 0);
                db.quorum.set_suspended(&id, def.paused);
            }
        }
        let handle = Arc::new(LinkHandle {
            def: Mutex::new(def),
            status: Mutex::new(LinkStatus::default()),
            control: tokio::sync::watch::channel(0).0,
            deleted: false.into(),
            force_bootstrap: false.into(),
            stopped: false.into(),
            hold_at: 0.into(),
        });
        self.links.lock().insert(id, handle.clone());
        tokio::spawn(sender::run(self.clone(), handle.clone()));
        handle
    }

    fn save_link(&self, def: &LinkDef) -> Result<()> {
        let bytes = serde_json::to_vec(def).map_err(|e| Error::Unavailable(e.to_string()))?;
        self.node
            .set_config_value(&format!("{LINK_PREFIX}{}", def.id), &bytes)
    }

    /// Check a link request as [`Self::create_link`] would, creating nothing: the
    /// source database, the target, the stages (loaded with their configs), and that
    /// no link of the tenant already targets that database. Returns the normalised spec.
    /// `source_pending`: the source database will come from a replica registration, so
    /// its absence is not an error.
    pub fn check_link(
        &self,
        tenant: &str,
        mut spec: LinkSpec,
        source_pending: bool,
    ) -> Result<LinkSpec> {
        match self.node.database(tenant, &spec.database) {
            Err(Error::NotFound(_)) if source_pending => {}
            other => {
                other?;
            }
        }
        if !spec.target.url.starts_with("http://") {
            return Err(Error::Malformed(
                "target.url must be the target node's API, as http://host:port".into(),
            ));
        }
        crate::node::check_name("database", &spec.target.database)?;
        self.check_stages(tenant, spec.options.apply, &spec.options.stages)?;
        if let Some(conflicts) = &spec.options.conflicts {
            let db = self.node.database(tenant, &spec.database).ok();
            mutual::check_link(self, tenant, &spec, db.as_deref(), conflicts)?;
        }
        let url = spec.target.url.trim_end_matches('/').to_string();
        let duplicate = self.links.lock().values().any(|l| {
            let d = l.def.lock();
            d.tenant == tenant
                && d.spec.target.url.trim_end_matches('/') == url
                && d.spec.target.database == spec.target.database
                // Logical links of several databases may consolidate into one.
                && (d.spec.database == spec.database
                    || d.spec.options.apply == links::Apply::Mirror
                    || spec.options.apply == links::Apply::Mirror)
        });
        if duplicate {
            return Err(Error::AlreadyExists(format!(
                "a link to database '{}' at {url}",
                spec.target.database
            )));
        }
        spec.target.url = url;
        Ok(spec)
    }

    /// Create a link on this (source) node and start it.
    pub fn create_link(self: &Arc<Self>, tenant: &str, spec: LinkSpec) -> Result<Value> {
        let mut spec = self.check_link(tenant, spec, false)?;
        let target_token = spec.target.token.take();
        let id = format!("{}-{}", self.node_id, self.node.generate_id()?);
        let def = LinkDef {
            id: id.clone(),
            tenant: tenant.to_string(),
            spec,
            credential: links::random_secret().map_err(|e| Error::Unavailable(e.to_string()))?,
            target_token,
            created_ms: wall_ms(),
            paused: false,
        };
        self.save_link(&def)?;
        let handle = self.spawn_link(def);
        Ok(self.view(&handle))
    }

    /// Load a link's stages to check them; a mirror takes interrelation rules only.
    fn check_stages(
        &self,
        tenant: &str,
        apply: links::Apply,
        stages: &[links::StageSpec],
    ) -> Result<()> {
        let loaded = logical::stages(&self.plugins, tenant, stages)?;
        if apply == links::Apply::Mirror && !loaded.chain.stages.is_empty() {
            return Err(Error::Malformed(
                "a mirror link carries every update unchanged; filter and transform stages \
                 need \"apply\": \"logical\" (interrelation rules are fine on a mirror)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn handle(&self, tenant: &str, id: &str) -> Result<Arc<LinkHandle>> {
        self.links
            .lock()
            .get(id)
            .filter(|h| h.def.lock().tenant == tenant)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("link '{id}'")))
    }

    /// A link as the API shows it: definition (without secrets) and live status.
    pub fn view(&self, handle: &LinkHandle) -> Value {
        let def = handle.def.lock().clone();
        let mut status = handle.status.lock().clone();
        if let Ok(db) = self.node.database(&def.tenant, &def.spec.database) {
            status.source_serial = db.serials().0;
            status.lag_entries = status.source_serial.saturating_sub(status.acked_serial);
            if status.lag_entries == 0 {
                status.lag_ms = 0;
            }
        }
        json!({
            "id": def.id,
            "tenant": def.tenant,
            "database": def.spec.database,
            "target": def.spec.target,
            "mode": def.spec.options.mode,
            "apply": def.spec.options.apply,
            "stages": def.spec.options.stages,
            "on_error": def.spec.options.on_error,
            "b_log": def.spec.options.b_log,
            "conflicts": def.spec.options.conflicts,
            "paused": def.paused,
            "created_ms": def.created_ms,
            "status": status,
        })
    }

    pub fn list_links(&self, tenant: &str) -> Vec<Value> {
        let handles: Vec<_> = self
            .links
            .lock()
            .values()
            .filter(|h| h.def.lock().tenant == tenant)
            .cloned()
            .collect();
        handles.iter().map(|h| self.view(h)).collect()
    }

    pub fn show_link(&self, tenant: &str, id: &str) -> Result<Value> {
        let handle = self.handle(tenant, id)?;
        Ok(self.view(&handle))
    }

    /// Pause (`true`) or resume a link. Resuming also restarts a link its error policy
    /// stopped.
    pub fn set_paused(&self, tenant: &str, id: &str, paused: bool) -> Result<Value> {
        let handle = self.handle(tenant, id)?;
        let def = {
            let mut def = handle.def.lock();
            def.paused = paused;
            def.clone()
        };
        if !paused {
            handle
                .stopped
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        self.save_link(&def)?;
        if let Ok(db) = self.node.database(tenant, &def.spec.database) {
            if def.spec.options.mode == Mode::Sync {
                db.quorum.set_suspended(id, paused);
            }
        }
        handle.poke();
        Ok(self.view(&handle))
    }

    /// Swap a logical link's stages (a new plugin version or config) while it runs: the
    /// new chain is loaded and checked first, then the sender reconnects and resumes
    /// from the replica's position, so transactions not yet confirmed pass the new
    /// stages too.
    pub fn set_stages(
        &self,
        tenant: &str,
        id: &str,
        stages: Vec<links::StageSpec>,
    ) -> Result<Value> {
        let handle = self.handle(tenant, id)?;
        let apply = handle.def.lock().spec.options.apply;
        self.check_stages(tenant, apply, &stages)?;
        let def = {
            let mut def = handle.def.lock();
            def.spec.options.stages = stages;
            def.clone()
        };
        self.save_link(&def)?;
        handle.poke();
        Ok(self.view(&handle))
    }

    /// Delete a link: its sender stops; the replica keeps its data (and stays a replica
    /// until detached on the target).
    pub fn delete_link(&self, tenant: &str, id: &str) -> Result<()> {
        let handle = self.handle(tenant, id)?;
        self.node
            .remove_config_value(&format!("{LINK_PREFIX}{id}"))?;
        self.links.lock().remove(id);
        handle
            .deleted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.dead_letters.clear(id)?;
        let def = handle.def.lock().clone();
        if let Ok(db) = self.node.database(tenant, &def.spec.database) {
            db.quorum.unregister(id);
        }
        handle.poke();
        Ok(())
    }

    /// Keep a database's quorum settings across restarts.
    pub fn save_quorum(
        &self,
        tenant: &str,
        database: &str,
        k: usize,
        timeout_ms: u64,
    ) -> Result<()> {
        let bytes =
            serde_json::to_vec(&(k, timeout_ms)).map_err(|e| Error::Unavailable(e.to_string()))?;
        self.node
            .set_config_value(&format!("{QUORUM_PREFIX}{tenant}/{database}"), &bytes)
    }

    // ---- target side ----

    /// Register (or re-register) a replica of link `id` on this (target) node; creates
    /// the database from the source's definition if it does not exist.
    pub fn register_replica(&self, tenant: &str, id: &str, req: ReplicaRequest) -> Result<Value> {
        if id.is_empty() || id.len() > 128 {
            return Err(Error::Malformed("a link id is 1 to 128 characters".into()));
        }
        let mut spec = req.spec.clone();
        spec.name = req.database.clone();
        let (db, created) = match self.node.database(tenant, &req.database) {
            Ok(db) => (db, false),
            Err(Error::NotFound(_)) => (self.node.create_database(tenant, spec.clone())?, true),
            Err(e) => return Err(e),
        };
        if !created
            && req.apply == links::Apply::Mirror
            && (db.def.spec.files != spec.files || db.def.spec.block_size != spec.block_size)
        {
            return Err(Error::AlreadyExists(format!(
                "database '{}' with other files or another block size than the source's; a \
                 mirror needs the same (delete it, or link to a new database)",
                req.database
            )));
        }
        if let Some(problem) = mutual::check_target(&db, &req) {
            return Err(problem);
        }
        let mutual = req.conflicts.is_some();
        if !created && !mutual && !req.resync && db.replica_of().is_none() && db.serials().0 > 0 {
            return Err(Error::AlreadyExists(format!(
                "database '{}' with data of its own; a replica starts empty or from its \
                 source (delete it, or link to a new database)",
                req.database
            )));
        }
        let mut previous = self.replicas.lock().get(id).cloned();
        // Many-to-one: logical links of other sources consolidate into one database.
        let mut consolidating = false;
        if let Some(other) = db.replica_of().filter(|l| l != id) {
            // A new link from the same source database takes the replica over (a link
            // replaced with another mode, say): it continues the same stream.
            let taken = self.replica(&other).filter(|r| {
                r.tenant == tenant
                    && r.source_node == req.source_node
                    && !r.source_database.is_empty()
                    && r.source_database == req.source_database
            });
            match taken {
                Some(taken) => {
                    tracing::info!(database = %req.database, old = %other, new = %id, "a new link of the same source takes the replica over");
                    self.forget_replica(&other)?;
                    previous = previous.or(Some(taken));
                }
                // Another source: only a resync takes it over, from scratch.
                None if req.resync => {
                    self.forget_replica(&other)?;
                    tracing::info!(database = %req.database, old = %other, new = %id, "a link of another source takes the replica over; it will be bootstrapped");
                }
                None if req.apply == links::Apply::Logical
                    && self
                        .replica(&other)
                        .is_some_and(|r| r.apply == links::Apply::Logical) =>
                {
                    consolidating = true;
                }
                None => {
                    return Err(Error::AlreadyExists(format!(
                        "database '{}' as the replica of link {other} (a link of another \
                         source takes it over only with \"resync\": true; logical links of \
                         several sources may share a database)",
                        req.database
                    )))
                }
            }
        }
        let reg = ReplicaReg {
            link: id.to_string(),
            tenant: tenant.to_string(),
            database: req.database.clone(),
            credential_sha256: links::credential_hash(&req.credential),
            source_node: req.source_node.clone(),
            source_database: req.source_database.clone(),
            stream: previous.as_ref().map_or(0, |p| p.stream),
            suspended: previous.as_ref().is_some_and(|p| p.suspended),
            apply: req.apply,
            created_ms: previous.as_ref().map_or(wall_ms(), |p| p.created_ms),
            conflicts: req.conflicts.clone(),
        };
        self.save_replica(&reg)?;
        if !consolidating && !mutual {
            db.set_replica_of(Some(id.to_string()));
        }
        self.publish_progress(&reg, &db);
        Ok(json!({
            "link": id,
            "database": req.database,
            "created": created,
            "replication": self.advertised.to_string(),
            "last_serial": db.serials().0,
            "node": self.node_id,
        }))
    }

    /// The stream a replica follows, as interrelation names it.
    pub(crate) fn stream_key(reg: &ReplicaReg) -> interrelation::StreamKey {
        (
            reg.source_node.clone(),
            reg.tenant.clone(),
            reg.source_database.clone(),
        )
    }

    /// Tell waiting transactions how far a replica durably got (at start, when it is
    /// registered): its link need not be connected for its dependents to go on.
    fn publish_progress(&self, reg: &ReplicaReg, db: &Database) {
        let applied = match reg.apply {
            links::Apply::Logical => db.position(reg.stream),
            links::Apply::Mirror => db.serials().0,
        };
        self.gates.applied(&Self::stream_key(reg), applied, false);
    }

    fn save_replica(&self, reg: &ReplicaReg) -> Result<()> {
        let bytes = serde_json::to_vec(reg).map_err(|e| Error::Unavailable(e.to_string()))?;
        self.node
            .set_config_value(&format!("{REPLICA_PREFIX}{}", reg.link), &bytes)?;
        self.replicas.lock().insert(reg.link.clone(), reg.clone());
        Ok(())
    }

    /// The replica of link `id` of `tenant`, if `credential` is the link's (checked in
    /// constant time); otherwise NotFound, saying nothing more.
    pub(crate) fn authenticated_replica(
        &self,
        tenant: &str,
        id: &str,
        credential: &str,
    ) -> Result<ReplicaReg> {
        self.replica(id)
            .filter(|r| {
                r.tenant == tenant
                    && links::constant_time_eq(
                        &r.credential_sha256,
                        &links::credential_hash(credential),
                    )
            })
            .ok_or_else(|| Error::NotFound(format!("replica of link '{id}'")))
    }

    pub(crate) fn replica(&self, id: &str) -> Option<ReplicaReg> {
        self.replicas.lock().get(id).cloned()
    }

    /// The replica now follows `stream`.
    pub(crate) fn adopt_stream(&self, id: &str, stream: u64) -> Result<()> {
        let Some(mut reg) = self.replica(id) else {
            return Err(Error::NotFound(format!("replica of link '{id}'")));
        };
        if reg.stream != stream {
            reg.stream = stream;
            self.save_replica(&reg)?;
        }
        Ok(())
    }

    /// Replicas on this node, of one tenant.
    pub fn list_replicas(&self, tenant: &str) -> Vec<Value> {
        self.replicas
            .lock()
            .values()
            .filter(|r| r.tenant == tenant)
            .map(|r| {
                json!({
                    "link": r.link,
                    "database": r.database,
                    "source_node": r.source_node,
                    "apply": r.apply,
                    "connected": self.sessions.lock().contains_key(&r.link),
                    "suspended": r.suspended,
                    "spooled": self.spool.len(&r.link),
                    "waiting_for": self.gates.held(&r.link),
                    "source_database": r.source_database,
                    "conflicts": r.conflicts,
                    "mutual": r.conflicts.as_ref().map(|_| {
                        self.mutual_counts.lock().get(&r.link).copied().unwrap_or_default()
                    }),
                    "created_ms": r.created_ms,
                })
            })
            .collect()
    }

    /// Detach a replica: the link's connection ends, its registration goes, and the
    /// database takes client writes again (what a promotion does first).
    pub fn detach_replica(&self, tenant: &str, id: &str) -> Result<()> {
        let reg = self
            .replica(id)
            .filter(|r| r.tenant == tenant)
            .ok_or_else(|| Error::NotFound(format!("replica of link '{id}'")))?;
        self.forget_replica(id)?;
        if let Ok(db) = self.node.database(tenant, &reg.database) {
            // Another source may still feed it (many-to-one): it stays a replica.
            let other = self
                .replicas
                .lock()
                .values()
                .find(|r| r.tenant == tenant && r.database == reg.database && r.conflicts.is_none())
                .map(|r| r.link.clone());
            db.set_replica_of(other);
        }
        Ok(())
    }

    /// The source of replica `link` announced it has sent up to `serial`; `restart`
    /// (a bootstrap snapshot) starts the count afresh.
    pub(crate) fn announce(&self, link: &str, serial: u64, restart: bool) {
        let mut a = self.announced.lock();
        // Every watermark comes here: allocate the key only for a new link.
        match a.get_mut(link) {
            Some(e) => *e = if restart { serial } else { (*e).max(serial) },
            None => {
                a.insert(link.to_string(), serial);
            }
        }
    }

    /// Promote a replica database to a primary (SPEC G4): it stops following its link
    /// and takes client writes, with its blocks as they are (a mirror keeps the source's
    /// layout). Refused when its source had announced updates it has not applied,
    /// unless `force` (those updates are then lost to it).
    pub fn promote(&self, tenant: &str, database: &str, force: bool) -> Result<Value> {
        let started = std::time::Instant::now();
        let db = self.node.database(tenant, database)?;
        let Some(link) = db.replica_of() else {
            return Err(Error::Malformed(format!(
                "database '{database}' is not a replica; it takes writes already"
            )));
        };
        let reg = self.replica(&link);
        let applied = match reg.as_ref().map(|r| r.apply) {
            Some(links::Apply::Logical) => reg.as_ref().map_or(0, |r| db.position(r.stream)),
            _ => db.serials().0,
        };
        let announced = self.announced.lock().get(&link).copied().unwrap_or(0);
        if announced > applied && !force {
            return Err(Error::NotCaughtUp(format!(
                "replica '{database}' applied its source's stream up to serial {applied}, but \
                 the source announced {announced}; promote with \"force\": true to accept \
                 losing the difference"
            )));
        }
        if reg.is_some() {
            self.forget_replica(&link)?;
        }
        self.announced.lock().remove(&link);
        db.set_replica_of(None);
        let took_us = started.elapsed().as_micros() as u64;
        tracing::info!(database, link = %link, applied, announced, took_us, "replica promoted to primary");
        Ok(json!({
            "database": database,
            "promoted_from_link": link,
            "serial": db.serials().0,
            "source_serial_applied": applied,
            "source_serial_announced": announced,
            "took_us": took_us,
        }))
    }

    /// Drop a replica's registration, session and spool (its database stays as it is).
    fn forget_replica(&self, id: &str) -> Result<()> {
        self.node
            .remove_config_value(&format!("{REPLICA_PREFIX}{id}"))?;
        self.replicas.lock().remove(id);
        self.announced.lock().remove(id);
        if let Some(session) = self.sessions.lock().remove(id) {
            session.abort();
        }
        Ok(self.spool.clear(id)?)
    }

    /// Suspend (detach) or release a replica (SPEC G6). Suspended, it stores what
    /// arrives and applies nothing, so readers see a frozen state; released, it applies
    /// what it stored and follows again (its session does so at the next frame).
    pub fn set_suspended(&self, tenant: &str, id: &str, suspended: bool) -> Result<Value> {
        let mut reg = self
            .replica(id)
            .filter(|r| r.tenant == tenant)
            .ok_or_else(|| Error::NotFound(format!("replica of link '{id}'")))?;
        reg.suspended = suspended;
        self.save_replica(&reg)?;
        Ok(json!({
            "link": id,
            "database": reg.database,
            "suspended": suspended,
            "spooled": self.spool.len(id),
        }))
    }

    pub(crate) fn is_suspended(&self, id: &str) -> bool {
        self.replicas.lock().get(id).is_some_and(|r| r.suspended)
    }

    pub(crate) fn set_session(&self, id: &str, abort: tokio::task::AbortHandle) {
        if let Some(old) = self.sessions.lock().insert(id.to_string(), abort) {
            old.abort();
        }
    }

    pub(crate) fn end_session(&self, id: &str, task: tokio::task::Id) {
        let mut sessions = self.sessions.lock();
        if sessions.get(id).is_some_and(|a| a.id() == task) {
            sessions.remove(id);
        }
    }

    /// The number this node's records carry as their origin in plugin batches.
    pub fn origin(&self) -> u64 {
        crate::node::versions::origin_of(&self.node_id)
    }

    /// Dead letters of a link of `tenant`.
    pub fn dead_letters(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<Value>> {
        self.handle(tenant, id)?;
        Ok(self.dead_letters.list(id, limit)?)
    }

    /// Drop one dead letter.
    pub fn drop_dead_letter(&self, tenant: &str, id: &str, seq: u64) -> Result<()> {
        let handle = self.handle(tenant, id)?;
        if !self.dead_letters.remove(id, seq)? {
            return Err(Error::NotFound(format!("dead letter {seq} of link '{id}'")));
        }
        let mut status = handle.status.lock();
        status.quarantined = status.quarantined.saturating_sub(1);
        Ok(())
    }

    /// This node as the API shows it.
    pub fn node_info(&self) -> Value {
        json!({
            "id": self.node_id,
            "origin": self.origin(),
            "version": env!("CARGO_PKG_VERSION"),
            "replication": self.advertised.to_string(),
            "protocol_version": wire::PROTOCOL_VERSION,
        })
    }
}
