//! A Doppel node: its tenants, their databases, and the sled data directory that keeps
//! their definitions, logs and snapshots.
//!
//! The node owns the one sled database of its data directory. Tenant and database
//! definitions live in the `config` tree as JSON; logs and snapshots in the trees of
//! [`LogStore`]. Opening a node recovers every database from its last snapshot plus the
//! log after it. Background upkeep (idle transactions, retention, periodic snapshots)
//! runs from [`Node::upkeep`]; a snapshot it starts is written in a task of its own.

pub mod database;
pub mod error;
pub mod fence;
pub mod footprint;
pub mod gate;
pub mod logview;
pub mod quorum;
pub mod records;
#[cfg(test)]
mod recovery_tests;
pub mod restore;
#[cfg(test)]
mod upkeep_tests;
pub mod usage;
pub mod versions;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use database::{Database, DatabaseDef, DatabaseSpec, Durability};
pub use error::{Error, Result};
pub use gate::WriteGate;

use crate::log::LogStore;
use crate::store::block::{MAX_BLOCK_BYTES, MIN_BLOCK_BYTES};
use crate::store::MAX_ALT_KEYS;
use crate::txn::clock::wall_ms;

/// sled's page cache of each instance unless configured (its own default is 1 GiB,
/// which a node filled with log pages it hardly reads again: RSS 880 MB for 153 MB of
/// blocks). Each database's log has an instance, and the node one more for its config.
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 16 << 20;

/// The most bytes a database writes ahead of its flushes unless configured (see
/// `log_backlog_bytes`).
pub const DEFAULT_LOG_BACKLOG_BYTES: u64 = 32 << 20;

/// The tenant every node has.
pub const DEFAULT_TENANT: &str = "default";

/// Node settings that are not per database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Take a snapshot of a database once this many updates follow its last one.
    pub snapshot_every_entries: u64,
    /// Default wait for a locked record.
    pub lock_timeout_ms: u64,
    /// Cancel interactive transactions idle this long.
    pub txn_idle_timeout_secs: u64,
    /// Bytes of sled's page cache per sled instance: each database's log has one, and
    /// the node's config one (log chunks and snapshot parts read back: senders of
    /// links, restores). Reads of data never use it: they come from the RAM store.
    pub sled_cache_bytes: u64,
    /// Bytes a database may have logged and not yet flushed; past them a client write
    /// waits for a flush before it is admitted (refused with 503 `log-backlog` and
    /// `Retry-After` if none catches up within 2 s), whatever its durability. A database
    /// at durability `none` written faster than the disk takes it is held to the disk's
    /// pace instead of piling up gigabytes that other databases' flushes wait behind.
    pub log_backlog_bytes: u64,
    /// Threads that run the node's async work (requests, links, upkeep); absent: one
    /// per core, or `TOKIO_WORKER_THREADS` if set. Read by `doppel serve` when it builds
    /// its runtime. One thread gives the lowest latency to a node with one busy client
    /// (a sync commit wakes no second thread), at the cost of a neighbour's flood then
    /// sharing that thread with everyone (docs/BENCHMARKS.md, issue 19 sixth part).
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            snapshot_every_entries: 1_000_000,
            lock_timeout_ms: 5_000,
            txn_idle_timeout_secs: 300,
            sled_cache_bytes: DEFAULT_SLED_CACHE_BYTES,
            log_backlog_bytes: DEFAULT_LOG_BACKLOG_BYTES,
            worker_threads: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TenantDef {
    name: String,
    created_ms: u64,
}

/// A database the node did not start, and why: requests to it get the same reason
/// (503); it can be deleted, and its files stay until then.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct RefusedDatabase {
    pub tenant: String,
    pub database: String,
    pub reason: String,
}

#[derive(Default)]
struct Tenant {
    databases: BTreeMap<String, Arc<Database>>,
    /// Databases that did not recover at start (say a damaged snapshot the log cannot
    /// replace): their uid and why. They are not served; requests get the reason.
    refused: BTreeMap<String, (u64, String)>,
}

/// A running node's state.
pub struct Node {
    sled: sled::Db,
    config: sled::Tree,
    log: Arc<LogStore>,
    tenants: RwLock<BTreeMap<String, Tenant>>,
    pub settings: NodeSettings,
    /// Point-in-time restores run since the node started.
    pub restores: restore::Restores,
    /// The rule every client write passes ([`gate`]), handed to each database.
    write_gate: RwLock<Option<Arc<dyn WriteGate>>>,
    fence: RwLock<Option<Arc<dyn fence::Fence>>>,
    /// The number this node's writes of mutual databases carry as their origin
    /// ([`versions`]), handed to each database; 0 until replication starts.
    origin: AtomicU64,
    /// Where the node keeps its files, for its disk footprint ([`footprint`]).
    data_dir: PathBuf,
    /// The databases (by uid) whose snapshot the upkeep started and is still being
    /// written: it starts the next one of a database only once this one ends.
    upkeep_snapshots: Arc<Mutex<HashSet<u64>>>,
}

/// Check a tenant, database or file name: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed(format!(
            "{what} name '{name}' must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

fn db_key(tenant: &str, name: &str) -> String {
    format!("db/{tenant}/{name}")
}

fn open_sled(data_dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
    crate::log::sled_config(&data_dir.join("sled"), cache_bytes)
        .open()
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot open the data directory {}: {e}",
                data_dir.display()
            ))
        })
}

/// Reads one value of the `config` tree of a data directory no node is running on.
pub fn read_config_offline(data_dir: &Path, key: &str) -> Result<Option<Vec<u8>>> {
    if !data_dir.join("sled").exists() {
        return Err(Error::NotFound(format!(
            "a data directory at {}",
            data_dir.display()
        )));
    }
    let sled = open_sled(data_dir, DEFAULT_SLED_CACHE_BYTES)?;
    let config = sled
        .open_tree("config")
        .map_err(crate::log::LogError::from)?;
    let value = config.get(key).map_err(crate::log::LogError::from)?;
    Ok(value.map(|v| v.to_vec()))
}

impl Node {
    /// Open (or create) the node in `data_dir` and recover its databases.
    pub fn open(data_dir: &Path, settings: NodeSettings) -> Result<Node> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let sled = open_sled(data_dir, settings.sled_cache_bytes)?;
        let config = sled
            .open_tree("config")
            .map_err(crate::log::LogError::from)?;
        let log = LogStore::open(&data_dir.join("logs"), settings.log_backlog_bytes)?;
        log.adopt_shared_trees(&sled)?;
        let node = Node {
            sled,
            config,
            log,
            tenants: RwLock::new(BTreeMap::new()),
            settings,
            restores: restore::Restores::default(),
            write_gate: RwLock::new(None),
            fence: RwLock::new(None),
            origin: AtomicU64::new(0),
            data_dir: data_dir.to_path_buf(),
            upkeep_snapshots: Arc::default(),
        };
        node.load()?;
        if !node.tenants.read().contains_key(DEFAULT_TENANT) {
            node.create_tenant(DEFAULT_TENANT)?;
        }
        Ok(node)
    }

    fn load(&self) -> Result<()> {
        let mut tenants = self.tenants.write();
        let mut defs = Vec::new();
        for item in self.config.scan_prefix("db/") {
            let (_, value) = item.map_err(crate::log::LogError::from)?;
            let def: DatabaseDef =
                serde_json::from_slice(&value).map_err(|e| Error::Unavailable(e.to_string()))?;
            defs.push(def);
        }
        let live = defs.iter().map(|d| d.uid).collect();
        let orphans = self.log.remove_other_databases(&live)?;
        if orphans > 0 {
            tracing::warn!(
                directories = orphans,
                "removed the logs of databases deleted before a crash"
            );
        }
        for item in self.config.scan_prefix("tenant/") {
            let (_, value) = item.map_err(crate::log::LogError::from)?;
            let def: TenantDef =
                serde_json::from_slice(&value).map_err(|e| Error::Unavailable(e.to_string()))?;
            tenants.entry(def.name).or_default();
        }
        for def in defs {
            let started = Instant::now();
            let (tenant, name) = (def.tenant.clone(), def.spec.name.clone());
            let uid = def.uid;
            let (db, replayed) = match Database::recover(def, self.log.clone()) {
                Ok(recovered) => recovered,
                Err(e) => {
                    // Never serve what may be wrong: this database stays down, with the
                    // reason, and the node serves the others.
                    tracing::error!(
                        tenant = %tenant,
                        database = %name,
                        error = %e,
                        "database not started: it could not be recovered"
                    );
                    tenants
                        .entry(tenant)
                        .or_default()
                        .refused
                        .insert(name, (uid, e.to_string()));
                    continue;
                }
            };
            // Count its stored bytes now, before any write can race the count.
            db.stored_bytes()?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                tenant = %tenant,
                database = %name,
                replayed_entries = replayed,
                seconds = secs,
                entries_per_sec = (replayed as f64 / secs.max(1e-9)) as u64,
                "database recovered"
            );
            tenants
                .entry(tenant)
                .or_default()
                .databases
                .insert(name, Arc::new(db));
        }
        Ok(())
    }

    /// Names of all tenants.
    pub fn tenants(&self) -> Vec<String> {
        self.tenants.read().keys().cloned().collect()
    }

    /// Create a tenant.
    pub fn create_tenant(&self, name: &str) -> Result<()> {
        check_name("tenant", name)?;
        let mut tenants = self.tenants.write();
        if tenants.contains_key(name) {
            return Err(Error::AlreadyExists(format!("tenant '{name}'")));
        }
        let def = TenantDef {
            name: name.to_string(),
            created_ms: wall_ms(),
        };
        self.put_config(&format!("tenant/{name}"), &def)?;
        tenants.insert(name.to_string(), Tenant::default());
        Ok(())
    }

    /// Another sled tree of the node's data directory (e.g. the audit log).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self
            .sled
            .open_tree(name)
            .map_err(crate::log::LogError::from)?)
    }

    /// A number unique and increasing across the node's life.
    pub fn generate_id(&self) -> Result<u64> {
        Ok(self
            .sled
            .generate_id()
            .map_err(crate::log::LogError::from)?)
    }

    /// A raw value of the `config` tree (other modules keep their settings there).
    pub fn config_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let value = self.config.get(key).map_err(crate::log::LogError::from)?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Sets a raw value of the `config` tree, durably.
    pub fn set_config_value(&self, key: &str, value: &[u8]) -> Result<()> {
        self.config
            .insert(key, value)
            .map_err(crate::log::LogError::from)?;
        self.flush_config()?;
        Ok(())
    }

    /// Removes a value of the `config` tree, durably.
    pub fn remove_config_value(&self, key: &str) -> Result<()> {
        self.config
            .remove(key)
            .map_err(crate::log::LogError::from)?;
        self.flush_config()?;
        Ok(())
    }

    /// Every (key, value) of the `config` tree under `prefix`.
    pub fn config_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.config
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item.map_err(crate::log::LogError::from)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn put_config<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Unavailable(e.to_string()))?;
        self.config
            .insert(key, bytes)
            .map_err(crate::log::LogError::from)?;
        self.flush_config()?;
        Ok(())
    }

    pub(crate) fn check_spec(spec: &DatabaseSpec) -> Result<()> {
        check_name("database", &spec.name)?;
        if spec.files.is_empty() {
            return Err(Error::Malformed(
                "a database needs at least one file".into(),
            ));
        }
        if !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&spec.block_size) {
            return Err(Error::Malformed(format!(
                "block_size must be between {MIN_BLOCK_BYTES} and {MAX_BLOCK_BYTES} bytes"
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for file in &spec.files {
            check_name("file", &file.name)?;
            if file.name.starts_with(versions::RESERVED_PREFIX) {
                return Err(Error::Malformed(format!(
                    "file '{}': names starting with '{}' are Doppel's own",
                    file.name,
                    versions::RESERVED_PREFIX
                )));
            }
            if !names.insert(&file.name) {
                return Err(Error::Invalid(format!(
                    "file '{}' is declared twice",
                    file.name
                )));
            }
            if file.alt_keys.len() > MAX_ALT_KEYS {
                return Err(Error::Malformed(format!(
                    "a file has at most {MAX_ALT_KEYS} alternate keys"
                )));
            }
            let mut alts = std::collections::BTreeSet::new();
            for alt in &file.alt_keys {
                check_name("alternate key", alt)?;
                if !alts.insert(alt) {
                    return Err(Error::Malformed(format!(
                        "alternate key '{alt}' is declared twice"
                    )));
                }
            }
        }
        if spec.memory_quota_bytes < spec.block_size as u64 {
            return Err(Error::Invalid(
                "memory_quota_bytes must hold at least one block".into(),
            ));
        }
        Ok(())
    }

    /// Create a database in `tenant`.
    pub fn create_database(&self, tenant: &str, spec: DatabaseSpec) -> Result<Arc<Database>> {
        Self::check_spec(&spec)?;
        let mut tenants = self.tenants.write();
        let owner = tenants
            .get_mut(tenant)
            .ok_or_else(|| Error::NotFound(format!("tenant '{tenant}'")))?;
        if owner.databases.contains_key(&spec.name) || owner.refused.contains_key(&spec.name) {
            return Err(Error::AlreadyExists(format!("database '{}'", spec.name)));
        }
        let uid = self
            .sled
            .generate_id()
            .map_err(crate::log::LogError::from)?
            + 1;
        let def = DatabaseDef {
            uid,
            tenant: tenant.to_string(),
            spec,
            created_ms: wall_ms(),
        };
        self.put_config(&db_key(tenant, &def.spec.name), &def)?;
        let name = def.spec.name.clone();
        let db = Arc::new(Database::create(def, self.log.clone()));
        db.set_write_gate(self.write_gate.read().clone());
        db.set_fence(self.fence.read().clone());
        db.set_origin(self.origin());
        db.stored_bytes()?;
        owner.databases.insert(name, db.clone());
        Ok(db)
    }

    /// Every database that did not start (say a damaged snapshot the log cannot
    /// replace), with why, for the node administrator.
    pub fn refused_databases(&self) -> Vec<RefusedDatabase> {
        let tenants = self.tenants.read();
        tenants
            .iter()
            .flat_map(|(tenant, owner)| {
                owner
                    .refused
                    .iter()
                    .map(move |(name, (_, reason))| RefusedDatabase {
                        tenant: tenant.clone(),
                        database: name.clone(),
                        reason: reason.clone(),
                    })
            })
            .collect()
    }

    /// The databases of `tenant`.
    pub fn databases(&self, tenant: &str) -> Result<Vec<Arc<Database>>> {
        let tenants = self.tenants.read();
        let owner = tenants
            .get(tenant)
            .ok_or_else(|| Error::NotFound(format!("tenant '{tenant}'")))?;
        Ok(owner.databases.values().cloned().collect())
    }

    /// One database of `tenant`.
    pub fn database(&self, tenant: &str, name: &str) -> Result<Arc<Database>> {
        let tenants = self.tenants.read();
        let owner = tenants
            .get(tenant)
            .ok_or_else(|| Error::NotFound(format!("tenant '{tenant}'")))?;
        if let Some((_, reason)) = owner.refused.get(name) {
            return Err(Error::Unavailable(format!(
                "database '{name}' was not started: {reason}"
            )));
        }
        owner
            .databases
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("database '{name}'")))
    }

    /// Delete a database with its logs and snapshots.
    pub fn delete_database(&self, tenant: &str, name: &str) -> Result<()> {
        let mut tenants = self.tenants.write();
        let owner = tenants
            .get_mut(tenant)
            .ok_or_else(|| Error::NotFound(format!("tenant '{tenant}'")))?;
        // A database refused at start can be deleted too (its files go with it).
        let uid = match owner.databases.remove(name) {
            Some(db) => db.def.uid,
            None => {
                owner
                    .refused
                    .remove(name)
                    .ok_or_else(|| Error::NotFound(format!("database '{name}'")))?
                    .0
            }
        };
        self.config
            .remove(db_key(tenant, name))
            .map_err(crate::log::LogError::from)?;
        // The definition goes first and durably: a crash after it leaves a log
        // directory that the next start removes, never a definition without its log.
        self.flush_config()?;
        self.log.delete_database(uid)?;
        Ok(())
    }

    /// Install the rule every client write of every database passes before it commits
    /// ([`gate`]): on the databases the node has, and on every one it creates later.
    pub fn set_write_gate(&self, gate: Arc<dyn WriteGate>) {
        // Under the tenants lock, so a database being created gets the gate either from
        // the node or from this loop.
        let tenants = self.tenants.read();
        *self.write_gate.write() = Some(gate.clone());
        for db in tenants.values().flat_map(|t| t.databases.values()) {
            db.set_write_gate(Some(gate.clone()));
        }
    }

    /// Set the origin this node's writes of mutual databases carry ([`versions`]): on
    /// the databases the node has, and on every one it creates or recovers later. Set
    /// once, from the node's id, when replication starts.
    pub fn set_origin(&self, origin: u64) {
        let tenants = self.tenants.read();
        self.origin.store(origin, Ordering::Relaxed);
        for db in tenants.values().flat_map(|t| t.databases.values()) {
            db.set_origin(origin);
        }
    }

    /// The origin this node's writes carry (0 until [`Node::set_origin`]).
    pub fn origin(&self) -> u64 {
        self.origin.load(Ordering::Relaxed)
    }

    /// Install the cluster's fence ([`fence`]) on every database, now and later.
    pub fn set_fence(&self, f: Arc<dyn fence::Fence>) {
        let tenants = self.tenants.read();
        *self.fence.write() = Some(f.clone());
        for db in tenants.values().flat_map(|t| t.databases.values()) {
            db.set_fence(Some(f.clone()));
        }
    }

    pub(crate) fn all_databases(&self) -> Vec<Arc<Database>> {
        self.tenants
            .read()
            .values()
            .flat_map(|t| t.databases.values().cloned())
            .collect()
    }

    /// One round of background upkeep: cancel idle transactions, enforce retention, and
    /// snapshot databases whose log has grown. Errors are logged, not returned.
    pub async fn upkeep(&self) {
        for db in self.all_databases() {
            let cancelled =
                db.cancel_idle(Duration::from_secs(self.settings.txn_idle_timeout_secs));
            if cancelled > 0 {
                tracing::info!(database = %db.name(), cancelled, "idle transactions cancelled");
            }
            if let Err(e) = db.enforce_retention() {
                tracing::warn!(database = %db.name(), error = %e, "retention failed");
            }
            if db.wants_snapshot(self.settings.snapshot_every_entries) {
                self.start_snapshot(db);
            }
        }
    }

    /// Take a snapshot of `db` in a task of its own, unless the upkeep's previous one of
    /// it is still being written: a big database's snapshot (seconds for gigabytes)
    /// holds up neither the next rounds of upkeep nor the other databases' retention,
    /// idle transactions and snapshots.
    fn start_snapshot(&self, db: Arc<Database>) {
        let uid = db.def.uid;
        if !self.upkeep_snapshots.lock().insert(uid) {
            return;
        }
        /// Takes the database out of the set however the task ends.
        struct Running(Arc<Mutex<HashSet<u64>>>, u64);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.lock().remove(&self.1);
            }
        }
        let running = Running(self.upkeep_snapshots.clone(), uid);
        tokio::spawn(async move {
            let _running = running;
            match db.snapshot().await {
                Ok(meta) => {
                    tracing::info!(database = %db.name(), serial = meta.serial, bytes = meta.size_bytes, "snapshot taken")
                }
                Err(e) => tracing::warn!(database = %db.name(), error = %e, "snapshot failed"),
            }
        });
    }

    /// Make the `config` tree durable (the node's own sled instance).
    fn flush_config(&self) -> Result<()> {
        self.sled.flush().map_err(crate::log::LogError::from)?;
        Ok(())
    }

    /// Flush everything and stop the log flushers.
    pub fn shutdown(&self) -> Result<()> {
        self.log.shutdown()?;
        self.flush_config()
    }
}
