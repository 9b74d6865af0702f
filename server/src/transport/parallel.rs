//! Parallel databases (SPEC F5): mutual sites that share the same data under mutual
//! exclusion, one writer per record at a time across all of them.
//!
//! A parallel database is a mutual one whose links carry `"exclusive": true` (and run
//! `sync`). Before a write commits on one site, the site takes its records' locks here
//! and then on every other site (`POST …/databases/{db}/locks`); the write then commits
//! and, its links being synchronous, returns once every other site applied it; only
//! then are the locks released everywhere. A writer on another site meanwhile waits for
//! the record, so no two sites ever write it concurrently: parallel sites meet no
//! conflicts.
//!
//! **Deadlocks across sites** are prevented by wait-die on a global transaction id
//! `(node clock time, origin node)`, which every site orders the same way: a request for
//! a record held by an older transaction is refused at once (`409 deadlock`: the younger
//! side is cancelled and the client may retry); one held by a younger transaction is
//! waited for, up to the lock timeout (`409 lock-timeout`). So two sites that each hold
//! one record and want the other's cannot wait on each other forever.
//!
//! Locks taken for another site are leases ([`LEASE`]): a site that dies holding them
//! does not block the others for longer than that.
//!
//! **Every writer takes the locks**: they are taken by [`ParallelGate`], the node's write
//! gate ([`crate::node::gate`]), which [`Replication::start`] installs on the node, so
//! [`Database::execute`] takes them whoever calls it (the REST routes, a replay) and
//! [`Database::begin`] refuses interactive transactions. Nothing else may call
//! `exclusive_write`: a second lock of the same records under another transaction id
//! would be refused as a deadlock with itself.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::links::LinkDef;
use super::Replication;
use crate::node::gate::{GateGuard, WriteGate};
use crate::node::versions;
use crate::node::{Database, Error, Result};
use crate::remote::RemoteError;
use crate::txn::locks::LockError;
use crate::txn::{clock, Op};

/// How long a lock taken for another site lives if it is not released.
pub const LEASE: Duration = Duration::from_secs(30);

/// A transaction's id across sites: (node clock time, origin). Smaller is older.
pub type Gid = (u64, u64);

struct Held {
    gid: Gid,
    until: Instant,
}

/// The record locks of this node's parallel databases, held for local and remote
/// transactions alike.
#[derive(Default)]
pub struct Exclusive {
    held: Mutex<HashMap<(u64, Vec<u8>), Held>>,
    released: tokio::sync::Notify,
}

impl Exclusive {
    /// Take `keys` of database `uid` for `gid`, all or none (wait-die, see the module).
    pub async fn acquire(
        &self,
        uid: u64,
        keys: &[Vec<u8>],
        gid: Gid,
        timeout: Duration,
    ) -> std::result::Result<(), LockError> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let released = self.released.notified();
            {
                let mut held = self.held.lock();
                let now = Instant::now();
                let blocker = keys.iter().find_map(|k| {
                    held.get(&(uid, k.clone()))
                        .filter(|h| h.gid != gid && h.until > now)
                        .map(|h| h.gid)
                });
                match blocker {
                    None => {
                        for k in keys {
                            held.insert(
                                (uid, k.clone()),
                                Held {
                                    gid,
                                    until: now + LEASE,
                                },
                            );
                        }
                        return Ok(());
                    }
                    Some(older) if older < gid => {
                        return Err(LockError::SiteDeadlock(format!(
                            "a record is held by an older transaction ({}.{}); this one \
                             ({}.{}) is cancelled rather than wait, so no two sites wait on \
                             each other; retry it",
                            older.0, older.1, gid.0, gid.1
                        )))
                    }
                    Some(younger) if now >= deadline => {
                        return Err(LockError::SiteTimeout(format!(
                            "transaction {}.{} holds a record this one waited {} ms for",
                            younger.0,
                            younger.1,
                            started.elapsed().as_millis()
                        )))
                    }
                    Some(_) => {}
                }
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// Release everything `gid` holds.
    pub fn release(&self, gid: Gid) {
        self.held.lock().retain(|_, h| h.gid != gid);
        self.released.notify_waiters();
    }
}

/// The lock keys of a transaction's operations.
pub fn keys_of(db: &Database, ops: &[Op]) -> Vec<Vec<u8>> {
    let schema = db.schema();
    let mut keys: Vec<Vec<u8>> = ops
        .iter()
        .filter_map(|op| {
            let table = schema.table_of(op.file)?;
            Some(versions::entry_key(&schema.files[table].name, op.key()))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Locks a local write holds on every site; release them with [`Guard::release`].
pub struct Guard {
    repl: Arc<Replication>,
    gid: Gid,
    peers: Vec<LinkDef>,
}

impl Guard {
    pub async fn release(self) {
        self.repl.exclusive.release(self.gid);
        release_on(&self.repl, self.gid, self.peers).await;
    }
}

impl GateGuard for Guard {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(Guard::release(*self))
    }
}

/// The node's write gate (see the module): a write of a parallel database takes its
/// records' locks here and on every other site before it commits. Whether a database is
/// parallel is read from the link definitions at each write, so a link created, deleted
/// or loaded at start-up counts from its next write on.
///
/// It holds the replication weakly: the node holds the gate, and the replication holds
/// the node.
pub struct ParallelGate(Weak<Replication>);

impl ParallelGate {
    pub fn new(repl: &Arc<Replication>) -> ParallelGate {
        ParallelGate(Arc::downgrade(repl))
    }
}

impl WriteGate for ParallelGate {
    fn guards(&self, db: &Database) -> bool {
        // Only a mutual database can have exclusive links (checked when they are made):
        // every other write passes without looking at the links.
        db.def.spec.mutual
            && self
                .0
                .upgrade()
                .is_some_and(|repl| repl.is_parallel(&db.def.tenant, db.name()))
    }

    fn lock<'a>(
        &'a self,
        db: &'a Database,
        ops: &'a [Op],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn GateGuard>>>> {
        Box::pin(async move {
            let Some(repl) = self.0.upgrade() else {
                return Ok(None);
            };
            let guard = repl
                .exclusive_write(&db.def.tenant, db, ops, timeout)
                .await?;
            Ok(guard.map(|g| Box::new(g) as Box<dyn GateGuard>))
        })
    }
}

async fn release_on(repl: &Arc<Replication>, gid: Gid, peers: Vec<LinkDef>) {
    let repl = repl.clone();
    // Best effort: a lock not released here ends with its lease.
    let _ = tokio::task::spawn_blocking(move || {
        for def in &peers {
            let path = format!(
                "/databases/{}/locks/{}.{}",
                def.spec.target.database, gid.0, gid.1
            );
            let released = repl
                .target_client(def)
                .and_then(|c| c.call("DELETE", &path, None));
            if let Err(e) = released {
                tracing::warn!(link = %def.id, error = %e, "releasing a parallel lock failed; its lease ends it");
            }
        }
    })
    .await;
}

/// Whether link `d` is an exclusive (parallel) link out of database `db` of `tenant`.
fn is_exclusive(d: &LinkDef, tenant: &str, db: &str) -> bool {
    d.tenant == tenant
        && d.spec.database == db
        && d.spec
            .options
            .conflicts
            .as_ref()
            .is_some_and(|c| c.exclusive)
}

impl Replication {
    /// Whether database `db` of `tenant` is parallel: it has exclusive links.
    pub fn is_parallel(&self, tenant: &str, db: &str) -> bool {
        self.links
            .lock()
            .values()
            .any(|h| is_exclusive(&h.def.lock(), tenant, db))
    }

    /// The exclusive (parallel) links out of database `db` of `tenant`.
    fn exclusive_links(&self, tenant: &str, db: &str) -> Vec<LinkDef> {
        self.links
            .lock()
            .values()
            .filter_map(|h| {
                let d = h.def.lock();
                is_exclusive(&d, tenant, db).then(|| d.clone())
            })
            .collect()
    }

    /// Before a local write of a parallel database: take its records' locks here and
    /// on every other site. None for a database that is not parallel. Only
    /// [`ParallelGate`] calls it (see the module).
    async fn exclusive_write(
        self: &Arc<Self>,
        tenant: &str,
        db: &Database,
        ops: &[Op],
        timeout: Duration,
    ) -> Result<Option<Guard>> {
        // Only a mutual database can have exclusive links (checked when they are made):
        // every other write passes without looking at the links.
        if !db.def.spec.mutual {
            return Ok(None);
        }
        let peers = self.exclusive_links(tenant, db.name());
        if peers.is_empty() {
            return Ok(None);
        }
        let keys = keys_of(db, ops);
        let gid = (clock::next_us(), self.origin());
        self.exclusive
            .acquire(db.def.uid, &keys, gid, timeout)
            .await?;
        let body = serde_json::json!({
            "holder": [gid.0, gid.1],
            "keys": keys.iter().map(|k| String::from_utf8_lossy(k)).collect::<Vec<_>>(),
            "timeout_ms": timeout.as_millis() as u64,
        });
        let repl = self.clone();
        let asked = peers.clone();
        let refused = tokio::task::spawn_blocking(move || {
            for (i, def) in asked.iter().enumerate() {
                let path = format!("/databases/{}/locks", def.spec.target.database);
                let locked = repl
                    .target_client(def)
                    .and_then(|c| c.send("POST", &path, &body));
                if let Err(e) = locked {
                    return Some((i, e));
                }
            }
            None
        })
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        if let Some((i, reason)) = refused {
            self.exclusive.release(gid);
            release_on(self, gid, peers[..i].to_vec()).await;
            let site = &peers[i].spec.target.url;
            let on_site = || format!("on the site at {site}: {}", reason.detail());
            return Err(match &reason {
                RemoteError::Conflict { code, .. } if code == "deadlock" => {
                    Error::Lock(LockError::SiteDeadlock(on_site()))
                }
                RemoteError::Conflict { code, .. } if code == "lock-timeout" => {
                    Error::Lock(LockError::SiteTimeout(on_site()))
                }
                _ => Error::Unavailable(format!(
                    "the records could not be locked on the site at {site}: {reason}"
                )),
            });
        }
        Ok(Some(Guard {
            repl: self.clone(),
            gid,
            peers,
        }))
    }
}
