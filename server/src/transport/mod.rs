//! Replication between nodes (SPEC C1–C5): links, the wire protocol, the sender that
//! ships a source database's log and the receiver that applies it on a replica.
//!
//! [`Replication`] is the node's replication service: who this node is to others (node
//! id, replication address), and the shared things both sides use (the node, tenancy
//! for tokens, the plugin registry). Each concern has its own module, and where it adds
//! operations to the service it does so in an `impl Replication` block of its own file:
//!
//! - [`source`]: the source side: link definitions (sled `config` tree), their sender
//!   tasks and live status; create, check, pause, swap stages, delete; dead letters.
//! - [`target`]: the target side ([`target::Replicas`]): replica registrations, the
//!   running session of each, what their sources announced, suspend and release,
//!   promote, detach.
//! - [`links`]: the definitions both sides store and send: link options, replica
//!   registrations, live status, credentials.
//! - [`wire`]: frames and messages.
//! - [`sender`]: one task per link on the source: register with the target's API,
//!   connect, bootstrap from a snapshot when needed, then stream the log.
//! - [`net`]: how a sender reaches a target and a receiver takes connections (TCP in
//!   production, turmoil's virtual network in the simulation), and [`net::blocking`].
//! - [`history`]: the history of a database's log (an epoch per promotion), compared
//!   at the handshake so a re-pointed replica continues by serial.
//! - [`receiver`]: the replication listener on the target: handshake, gap and
//!   duplicate detection, apply, "backup completed".
//! - [`interrelation`]: dependencies between databases (SPEC D1–D4), attached on the
//!   source by rule stages and waited for on the target.
//! - [`logical`]: logical apply, the link's stages, dead letters.
//! - [`mutual`]: mutual (multi-master) links: what ships, conflict decisions, the
//!   conflict log (SPEC F4).
//! - [`parallel`]: parallel databases: a write's records locked on every site first,
//!   through the node's write gate (SPEC F5).
//! - [`postgres`]: links whose target is a PostgreSQL database: rows through a
//!   row-mapping stage, applied with the position in the same PostgreSQL transaction.
//! - [`spool`]: what a suspended replica stores.
//! - [`redrive`]: re-driving dead letters through the stages to the replica.
//! - [`verify`]: comparing a mirror with its source block by block, and repairing it.
//!
//! Calls to another node's REST API go through [`crate::remote`], with the token
//! [`Replication::target_client`] picks.
//!
//! The source and target agree on the endpoint themselves: the source registers the
//! link through the target's REST API (`PUT /v1/tenants/{t}/replicas/{link}`), which
//! answers with the target's replication address; the source then connects there and
//! presents the link's credential. Invariants: a replica applies serials in order
//! exactly once; it stores what it applied in the same sled batch as the applied
//! serial; a source never waits on a replica except through a synchronous link's
//! quorum ([`crate::node::quorum`]).

pub mod history;
pub mod interrelation;
pub mod links;
pub mod logical;
pub mod mutual;
pub mod net;
pub mod parallel;
pub mod postgres;
pub mod receiver;
pub mod redrive;
pub mod sender;
pub mod source;
pub mod spool;
pub mod target;
pub mod verify;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::node::{Database, Error, Node, Result};
use crate::remote::{self, RemoteError};
use crate::tenancy::Tenancy;
use links::{LinkDef, ReplicaReg};
pub use source::LinkHandle;

const LINK_PREFIX: &str = "link/";
const REPLICA_PREFIX: &str = "replica/";
/// The node config key of the node's id (made at its first start; the simulation
/// sets it beforehand, so a seed's ids are the same on every run).
pub const NODE_ID_KEY: &str = "node/id";
const QUORUM_PREFIX: &str = "quorum/";
/// The deadline of one call to a link's target node.
const TARGET_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A node's replication: its links as a source, its replicas as a target.
pub struct Replication {
    pub node: Arc<Node>,
    pub tenancy: Arc<Tenancy>,
    /// The plugin registry the stages of logical links and resolvers come from.
    pub plugins: Arc<crate::plugins::Registry>,
    pub node_id: String,
    /// Where this node's replication listener is reachable.
    pub advertised: SocketAddr,
    /// How senders register with and connect to their targets.
    pub net: Arc<dyn net::Network>,
    /// The source side ([`source`]): this node's links by id.
    links: Mutex<BTreeMap<String, Arc<LinkHandle>>>,
    /// Records that logical links quarantined.
    pub dead_letters: logical::DeadLetters,
    /// The target side ([`target`]): who replicates into this node.
    pub target: target::Replicas,
    /// Conflicts mutual links met (SPEC F4).
    pub conflicts: mutual::ConflictLog,
    /// Record locks of parallel databases (SPEC F5).
    pub exclusive: parallel::Exclusive,
}

/// A call to another node that fails: a node that does not answer leaves the operation
/// unavailable (503); one that answers with a problem of its own (4xx) refuses it (409
/// `link-refused`, its problem in the detail).
impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Error {
        let refused = match &e {
            RemoteError::NotFound { .. } | RemoteError::Conflict { .. } => true,
            RemoteError::Refused { status, .. } => (400..500).contains(status),
            _ => false,
        };
        if refused {
            Error::LinkRefused(format!("the target node refuses it: {e}"))
        } else {
            Error::Unavailable(e.to_string())
        }
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
        let listener = Box::new(net::TcpAcceptor(listener));
        Self::start_on(
            node,
            tenancy,
            plugins,
            listener,
            advertised,
            Arc::new(net::Tcp),
        )
        .await
    }

    /// [`Replication::start`] on a given network: connections accepted from
    /// `listener` (reachable at `advertised`), links registered and connected through
    /// `net`. The simulation's hosts start here with turmoil's network.
    pub async fn start_on(
        node: Arc<Node>,
        tenancy: Arc<Tenancy>,
        plugins: Arc<crate::plugins::Registry>,
        listener: Box<dyn net::Listener>,
        advertised: SocketAddr,
        net: Arc<dyn net::Network>,
    ) -> Result<Arc<Replication>> {
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
        node.set_origin(crate::node::versions::origin_of(&node_id));
        let spool_tree = node.tree("spool")?;
        let conflicts_tree = node.tree("conflicts")?;
        let dead_tree = node.tree("dead-letters")?;
        let repl = Arc::new(Replication {
            node,
            tenancy,
            node_id,
            advertised,
            net,
            plugins,
            links: Mutex::new(BTreeMap::new()),
            dead_letters: logical::DeadLetters::open(dead_tree),
            target: target::Replicas::new(spool::Spool::open(spool_tree)),
            conflicts: mutual::ConflictLog::open(conflicts_tree),
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
            repl.target.regs.lock().insert(reg.link.clone(), reg);
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

    /// The number this node's records carry as their origin in plugin batches and
    /// mutual versions: the node's (set from its id when replication started).
    pub fn origin(&self) -> u64 {
        self.node.origin()
    }

    /// This node as the API shows it (`GET /v1/node`; the API adds its name and, for
    /// the node administrator, its footprint).
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.node_id.clone(),
            origin: self.origin(),
            version: env!("CARGO_PKG_VERSION"),
            replication: self.advertised.to_string(),
            protocol_version: wire::PROTOCOL_VERSION,
            name: None,
            footprint: None,
            worker_threads: None,
            refused_databases: Vec::new(),
        }
    }
}

/// This node, as `GET /v1/node` answers.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct NodeInfo {
    /// The node's id (its records' origin is derived from it).
    pub id: String,
    /// The number this node's records carry as their origin.
    pub origin: u64,
    /// The server's version.
    pub version: &'static str,
    /// The replication address other nodes connect to.
    pub replication: String,
    /// The replication protocol's version.
    pub protocol_version: u16,
    /// The node's name in its config (`null`: none).
    pub name: Option<String>,
    /// Its memory and disk: for the node administrator only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<crate::node::footprint::Footprint>,
    /// Threads running the node's async work (`[node] worker_threads`): for the node
    /// administrator only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Databases that did not start, with why (for the node administrator; absent when
    /// there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_databases: Vec<crate::node::RefusedDatabase>,
}
