//! The target side of a node's replication: the replicas that links of other nodes
//! feed here. A source registers its link through the API (`PUT …/replicas/{link}`,
//! [`Replication::register_replica`]), which creates the database from the source's
//! definition when it does not exist and refuses a target it would overwrite
//! (other files, data of its own, another source's replica) unless the link resyncs
//! it. The registration is kept in the sled `config` tree (`replica/{link}`) and in
//! [`Replicas`], with the running receiver session of each link, the serial its source
//! last announced (so a promotion can tell whether the replica caught up), what a
//! suspended replica stores ([`super::spool`]) and how far each replica got for the
//! transactions that wait on it ([`super::interrelation::Gates`]).

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::links::{self, ReplicaReg, ReplicaRequest};
use super::{interrelation, mutual, spool, Replication, REPLICA_PREFIX};
use crate::node::{Database, Error, Result};
use crate::txn::clock::wall_ms;

/// Who replicates into this node, and how far each got.
pub struct Replicas {
    /// Registrations by link id.
    pub(super) regs: Mutex<BTreeMap<String, ReplicaReg>>,
    /// The running receiver session of each replica link (a new connection ends the
    /// previous one).
    sessions: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
    /// Per replica link: the last serial its source announced (watermark), to tell
    /// whether it is caught up before a promotion.
    pub(super) announced: Mutex<BTreeMap<String, u64>>,
    /// What suspended replicas received (SPEC G6).
    pub spool: spool::Spool,
    /// How far each replica got, for the transactions that wait on it (SPEC D3).
    pub gates: interrelation::Gates,
    /// Per mutual replica link, what it brought since the node started.
    pub mutual_counts: Mutex<BTreeMap<String, mutual::Counts>>,
}

impl Replicas {
    pub(super) fn new(spool: spool::Spool) -> Replicas {
        Replicas {
            regs: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(BTreeMap::new()),
            announced: Mutex::new(BTreeMap::new()),
            spool,
            gates: interrelation::Gates::default(),
            mutual_counts: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Replication {
    /// Register (or re-register) a replica of link `id` on this (target) node; creates
    /// the database from the source's definition if it does not exist.
    pub fn register_replica(
        &self,
        tenant: &str,
        id: &str,
        req: ReplicaRequest,
    ) -> Result<Registered> {
        if id.is_empty() || id.len() > 128 {
            return Err(Error::Malformed("a link id is 1 to 128 characters".into()));
        }
        // The source's own name for it, which the replica does not take, still follows
        // the rule the document states.
        crate::node::check_name("database", &req.spec.name)?;
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
        let mut previous = self.target.regs.lock().get(id).cloned();
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
        if !consolidating && !mutual {
            if req.apply == links::Apply::Mirror {
                // A primary taken over (an old primary rejoining) keeps the history of
                // its own log, compared at the handshake.
                self.history(&db)?;
            }
            self.save_replica(&reg)?;
            db.set_replica_of(Some(id.to_string()));
        } else {
            self.save_replica(&reg)?;
        }
        self.publish_progress(&reg, &db);
        Ok(Registered {
            link: id.to_string(),
            database: req.database,
            created,
            replication: self.advertised.to_string(),
            last_serial: db.serials().0,
            node: self.node_id.clone(),
        })
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
    pub(super) fn publish_progress(&self, reg: &ReplicaReg, db: &Database) {
        let applied = match reg.apply {
            links::Apply::Logical => db.position(reg.stream),
            links::Apply::Mirror => db.serials().0,
        };
        self.target
            .gates
            .applied(&Self::stream_key(reg), applied, false);
    }

    fn save_replica(&self, reg: &ReplicaReg) -> Result<()> {
        let bytes = serde_json::to_vec(reg).map_err(|e| Error::Unavailable(e.to_string()))?;
        self.node
            .set_config_value(&format!("{REPLICA_PREFIX}{}", reg.link), &bytes)?;
        self.target
            .regs
            .lock()
            .insert(reg.link.clone(), reg.clone());
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
        self.target.regs.lock().get(id).cloned()
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
    pub fn list_replicas(&self, tenant: &str) -> Vec<ReplicaView> {
        self.target
            .regs
            .lock()
            .values()
            .filter(|r| r.tenant == tenant)
            .map(|r| ReplicaView {
                link: r.link.clone(),
                database: r.database.clone(),
                source_node: r.source_node.clone(),
                apply: r.apply,
                connected: self.target.sessions.lock().contains_key(&r.link),
                suspended: r.suspended,
                spooled: self.target.spool.len(&r.link),
                waiting_for: self.target.gates.held(&r.link),
                source_database: r.source_database.clone(),
                conflicts: r.conflicts.clone(),
                mutual: r.conflicts.as_ref().map(|_| {
                    self.target
                        .mutual_counts
                        .lock()
                        .get(&r.link)
                        .copied()
                        .unwrap_or_default()
                }),
                created_ms: r.created_ms,
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
                .target
                .regs
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
        let mut a = self.target.announced.lock();
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
    /// unless `force` (those updates are then lost to it). `quorum` (k, timeout in ms)
    /// and `sync_links` (the synchronous links it will have) are in force before the
    /// first write is taken: commits wait for those links even before they exist.
    pub fn promote(
        &self,
        tenant: &str,
        database: &str,
        force: bool,
        quorum: Option<(usize, u64)>,
        sync_links: usize,
    ) -> Result<Promoted> {
        let started = std::time::Instant::now();
        let db = self.node.database(tenant, database)?;
        let Some(link) = db.replica_of() else {
            return Err(Error::NotAReplica(format!(
                "database '{database}' is not a replica; it takes writes already"
            )));
        };
        let reg = self.replica(&link);
        let applied = match reg.as_ref().map(|r| r.apply) {
            Some(links::Apply::Logical) => reg.as_ref().map_or(0, |r| db.position(r.stream)),
            _ => db.serials().0,
        };
        let announced = self
            .target
            .announced
            .lock()
            .get(&link)
            .copied()
            .unwrap_or(0);
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
        self.target.announced.lock().remove(&link);
        // From its next serial on, its log is a history of its own.
        let epoch = self.open_epoch(&db)?;
        if let Some((k, timeout_ms)) = quorum {
            db.quorum.configure(k, timeout_ms);
            self.save_quorum(tenant, database, k, timeout_ms)?;
        }
        db.quorum.expect_links(sync_links);
        db.set_replica_of(None);
        // Its own links (a chain) start again, telling their replicas the new history.
        self.restart_links_of(tenant, database);
        let took_us = started.elapsed().as_micros() as u64;
        tracing::info!(database, link = %link, applied, announced, took_us, "replica promoted to primary");
        Ok(Promoted {
            database: database.to_string(),
            promoted_from_link: link,
            serial: db.serials().0,
            source_serial_applied: applied,
            source_serial_announced: announced,
            epoch,
            quorum: db.quorum.info(),
            took_us,
        })
    }

    /// Drop a replica's registration, session and spool (its database stays as it is).
    fn forget_replica(&self, id: &str) -> Result<()> {
        self.node
            .remove_config_value(&format!("{REPLICA_PREFIX}{id}"))?;
        self.target.regs.lock().remove(id);
        self.target.announced.lock().remove(id);
        if let Some(session) = self.target.sessions.lock().remove(id) {
            session.abort();
        }
        Ok(self.target.spool.clear(id)?)
    }

    /// Suspend (detach) or release a replica (SPEC G6). Suspended, it stores what
    /// arrives and applies nothing, so readers see a frozen state; released, it applies
    /// what it stored and follows again (its session does so at the next frame).
    pub fn set_suspended(&self, tenant: &str, id: &str, suspended: bool) -> Result<Suspension> {
        let mut reg = self
            .replica(id)
            .filter(|r| r.tenant == tenant)
            .ok_or_else(|| Error::NotFound(format!("replica of link '{id}'")))?;
        reg.suspended = suspended;
        self.save_replica(&reg)?;
        Ok(Suspension {
            link: id.to_string(),
            database: reg.database,
            suspended,
            spooled: self.target.spool.len(id),
        })
    }

    pub(crate) fn is_suspended(&self, id: &str) -> bool {
        self.target.regs.lock().get(id).is_some_and(|r| r.suspended)
    }

    pub(crate) fn set_session(&self, id: &str, abort: tokio::task::AbortHandle) {
        if let Some(old) = self.target.sessions.lock().insert(id.to_string(), abort) {
            old.abort();
        }
    }

    pub(crate) fn end_session(&self, id: &str, task: tokio::task::Id) {
        let mut sessions = self.target.sessions.lock();
        if sessions.get(id).is_some_and(|a| a.id() == task) {
            sessions.remove(id);
        }
    }
}

/// A replica registered (`PUT …/replicas/{link}`), as the source node reads it.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Registered {
    pub link: String,
    pub database: String,
    /// The database was created from the source's definition.
    pub created: bool,
    /// This node's replication address, where the link connects.
    pub replication: String,
    /// The replica's last serial.
    pub last_serial: u64,
    /// This node's id.
    pub node: String,
}

/// A replica promoted to a primary (`POST …/promote`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Promoted {
    pub database: String,
    /// The link it followed.
    pub promoted_from_link: String,
    /// Its last serial.
    pub serial: u64,
    /// How far it applied its source's stream.
    pub source_serial_applied: u64,
    /// How far its source announced (above `source_serial_applied`: the difference is
    /// lost to it, promoted with `force`).
    pub source_serial_announced: u64,
    /// The epoch of its log it opened.
    pub epoch: u64,
    pub quorum: crate::node::quorum::QuorumInfo,
    pub took_us: u64,
}

/// A replica suspended or released.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Suspension {
    pub link: String,
    pub database: String,
    pub suspended: bool,
    /// The updates it stored and has not applied.
    pub spooled: usize,
}

/// A replica on this node, as `GET …/replicas` lists it.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ReplicaView {
    /// The link that feeds it.
    pub link: String,
    pub database: String,
    pub source_node: String,
    pub apply: super::links::Apply,
    /// The link's connection is up.
    pub connected: bool,
    /// It stores what arrives and applies nothing.
    pub suspended: bool,
    /// Transactions stored, not yet applied.
    pub spooled: usize,
    /// The link whose progress an interrelation rule holds this one for (`null`: none).
    pub waiting_for: Option<String>,
    pub source_database: String,
    pub conflicts: Option<super::links::ConflictSpec>,
    /// A mutual link's counts (`null`: not mutual).
    pub mutual: Option<super::mutual::Counts>,
    pub created_ms: u64,
}
