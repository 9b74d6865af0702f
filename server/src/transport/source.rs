//! The source side of a node's replication: its links. A link's definition is kept in
//! the sled `config` tree (`link/{id}`) and has one sender task ([`super::sender`])
//! while it exists; its [`LinkHandle`] is what the API and the sender share: the
//! definition, the live status and the controls (pause, stop, hold, delete).
//!
//! A link is checked in full before it is created (source database, target URL, stages
//! loaded with their configs, mutual rules, no second link into the same target
//! database), so a stored link always names things that loaded once. A sync link
//! registers with its database's quorum when it is spawned and leaves it when deleted.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use super::links::{self, LinkDef, LinkSpec, LinkStatus, Mode};
use super::{logical, mutual, postgres, sender, Replication, LINK_PREFIX, QUORUM_PREFIX};
use crate::node::{Error, Result};
use crate::txn::clock::{wall_ms, wall_us};

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

impl Replication {
    pub(super) fn spawn_link(self: &Arc<Self>, def: LinkDef) -> Arc<LinkHandle> {
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
        if spec.target.postgres.is_some() {
            self.check_stages(tenant, spec.options.apply, &spec.options.stages)?;
            postgres::check_spec(&spec)?;
            return Ok(spec);
        }
        if spec.options.create_tables {
            return Err(Error::Invalid(
                "create_tables is for a PostgreSQL target (\"target\": {\"postgres\": …})".into(),
            ));
        }
        // Both fields are optional in the schema (a PostgreSQL target has neither): a
        // node target without them is refused on meaning; one off its pattern is not.
        if spec.target.url.is_empty() || spec.target.database.is_empty() {
            return Err(Error::Invalid(
                "a node target needs \"url\" (the target node's API, http://host:port) and \
                 \"database\" (or give \"postgres\" for a PostgreSQL target)"
                    .into(),
            ));
        }
        let host = spec.target.url.strip_prefix("http://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') {
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
        // The password stays in the definition's secret part only.
        let postgres_url = spec.target.postgres.clone();
        if let Some(conn) = &mut spec.target.postgres {
            *conn = links::mask_password(conn);
        }
        let id = format!("{}-{}", self.node_id, self.node.generate_id()?);
        let def = LinkDef {
            id: id.clone(),
            tenant: tenant.to_string(),
            spec,
            credential: links::random_secret().map_err(|e| Error::Unavailable(e.to_string()))?,
            target_token,
            postgres_url,
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
            return Err(Error::Invalid(
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
    /// A link as the API shows it (`LinkView`, as JSON: the events stream, metrics and
    /// the cluster read it as a value too).
    pub fn view(&self, handle: &LinkHandle) -> Value {
        serde_json::to_value(self.link_view(handle)).expect("a link view is JSON")
    }

    fn link_view(&self, handle: &LinkHandle) -> LinkView {
        let def = handle.def.lock().clone();
        let mut status = handle.status.lock().clone();
        if let Ok(db) = self.node.database(&def.tenant, &def.spec.database) {
            status.source_serial = db.serials().0;
            status.lag_entries = status.source_serial.saturating_sub(status.acked_serial);
            status.lag_ms = if status.lag_entries == 0 {
                0
            } else {
                // The age of the oldest entry the replica has not confirmed, from its commit
                // time in the log: it grows while the link is paused, stalled or retrying,
                // when the sender (which measures only what is in flight) sees nothing.
                oldest_unconfirmed_us(&db, status.acked_serial + 1).map_or(status.lag_ms, |ts| {
                    status.lag_ms.max(wall_us().saturating_sub(ts) / 1000)
                })
            };
        }
        LinkView {
            id: def.id,
            tenant: def.tenant,
            database: def.spec.database,
            target: def.spec.target,
            mode: def.spec.options.mode,
            apply: def.spec.options.apply,
            stages: def.spec.options.stages,
            on_error: def.spec.options.on_error,
            b_log: def.spec.options.b_log,
            conflicts: def.spec.options.conflicts,
            create_tables: def.spec.options.create_tables,
            paused: def.paused,
            created_ms: def.created_ms,
            status,
        }
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

    /// End the sessions of `database`'s links: each connects again with what changed
    /// (its log's history after a promotion).
    pub(crate) fn restart_links_of(&self, tenant: &str, database: &str) {
        for handle in self.links.lock().values() {
            let def = handle.def.lock();
            if def.tenant == tenant && def.spec.database == database {
                handle.poke();
            }
        }
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

    /// Dead letters of a link of `tenant`.
    pub fn dead_letters(
        &self,
        tenant: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<super::logical::DeadLetter>> {
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
}

/// The commit time of update `serial` of a link's source, from its A log (every link
/// ships from it), if the log still holds it.
fn oldest_unconfirmed_us(db: &crate::node::database::Database, serial: u64) -> Option<u64> {
    db.log_store()
        .timestamp_of(db.def.uid, crate::log::LogKind::A, serial)
        .ok()
        .flatten()
}

/// A link as its source shows it (`GET …/links`, `…/links/{id}`, create, pause, resume,
/// stages): its request, normalised, and its live figures.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct LinkView {
    pub id: String,
    pub tenant: String,
    /// The source database, on this node.
    pub database: String,
    /// A PostgreSQL target's connection string is shown with its password as `***`.
    pub target: links::TargetSpec,
    pub mode: links::Mode,
    pub apply: links::Apply,
    pub stages: Vec<links::StageSpec>,
    pub on_error: links::OnError,
    pub b_log: bool,
    pub conflicts: Option<links::ConflictSpec>,
    pub create_tables: bool,
    pub paused: bool,
    pub created_ms: u64,
    pub status: links::LinkStatus,
}
