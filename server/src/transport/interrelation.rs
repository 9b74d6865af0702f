//! Interrelation (SPEC D1–D4): related updates of different databases become visible on
//! a replica together and in order, even when one database's stream is delayed.
//!
//! **On the source**, a link's interrelation-rule stages (E3) name, for each record of a
//! transaction, the `(file, key)` records it depends on. A file of the link's own
//! database needs nothing (one stream is applied in order). A file of another database
//! of the tenant on this node becomes a [`Dependency`] on that database: "every update
//! it committed before this transaction", carried as the transaction's first timestamp
//! (the node's commit clock orders all its databases, `txn::clock`) and that database's
//! serial when the dependency was taken. The sender ships it in a `Depends` message just
//! before the transaction.
//!
//! **On the target**, every replica publishes its progress in its source's stream
//! ([`Gates`]): the serial it applied and, from the transmission-completion watermarks
//! (D2), the time up to which it holds every update of its source. A transaction with
//! dependencies waits until, for each, the replica of that database (same source node
//! and tenant) has applied the serial or is complete up to the timestamp (D3). Waiting
//! holds the link's stream, never another's. A dependency only points at updates stamped
//! before the dependent one, so two databases that depend on each other cannot wait on
//! each other forever.
//!
//! A dependency is on the other database as of a point in time, not on one record:
//! coarser than the rule's answer (a line waits for every order committed before it,
//! not only its own), which is always safe and costs only waiting.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use doppel_sdk::abi::OwnedRecord;

use super::wire::Dependency;
use crate::node::{Database, Node};
use crate::plugins::{PluginError, Stage};

/// A rule stage's complaint about a record (`index` None: the whole batch).
pub struct RuleError {
    pub index: Option<usize>,
    pub plugin: String,
    pub message: String,
}

/// The source side: which database of the tenant holds a file a rule names.
pub struct Sources {
    node: Arc<Node>,
    tenant: String,
    own: crate::store::Schema,
    by_file: HashMap<String, Arc<Database>>,
}

impl Sources {
    pub fn new(node: Arc<Node>, tenant: &str, own: &Database) -> Sources {
        Sources {
            node,
            tenant: tenant.to_string(),
            own: own.schema(),
            by_file: HashMap::new(),
        }
    }

    /// The other database holding `file`; None for a file of the link's own database.
    fn database_of(&mut self, file: &str, own_name: &str) -> Result<Option<Arc<Database>>, String> {
        if self.own.file_index(file).is_some() {
            return Ok(None);
        }
        if let Some(db) = self.by_file.get(file) {
            return Ok(Some(db.clone()));
        }
        let holders: Vec<Arc<Database>> = self
            .node
            .databases(&self.tenant)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|db| db.name() != own_name && db.schema().file_index(file).is_some())
            .collect();
        match holders.as_slice() {
            [db] => {
                self.by_file.insert(file.to_string(), db.clone());
                Ok(Some(db.clone()))
            }
            [] => Err(format!(
                "depends on file '{file}', which no database of tenant '{}' on this node has",
                self.tenant
            )),
            [a, b, ..] => Err(format!(
                "depends on file '{file}', which databases '{}' and '{}' both have; name a \
                 file only one database holds",
                a.name(),
                b.name()
            )),
        }
    }
}

/// Run the rule stages over one transaction's records (their batch is `input`): its
/// dependencies on other databases, and what the rules rejected.
pub fn depends(
    rules: &mut [Stage],
    sources: &mut Sources,
    own_name: &str,
    records: &[OwnedRecord],
    input: &doppel_sdk::abi::BatchBuilder,
) -> Result<(Vec<Dependency>, Vec<RuleError>), PluginError> {
    let mut deps: Vec<Dependency> = Vec::new();
    let mut errors = Vec::new();
    if records.is_empty() {
        return Ok((deps, errors));
    }
    let before_us = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    for stage in rules.iter_mut() {
        let out = stage.call(input.as_batch(), None)?;
        for e in out.errors {
            errors.push(RuleError {
                index: Some(e.index as usize),
                plugin: stage.plugin().to_string(),
                message: e.message,
            });
        }
        for (index, file, _key) in out.depends {
            let index = index as usize;
            if index >= records.len() {
                errors.push(RuleError {
                    index: None,
                    plugin: stage.plugin().to_string(),
                    message: format!(
                        "named a dependency of record {index} of a batch of {}",
                        records.len()
                    ),
                });
                continue;
            }
            match sources.database_of(&file, own_name) {
                Ok(None) => {}
                Ok(Some(db)) => {
                    if deps.iter().all(|d| d.database != db.name()) {
                        deps.push(Dependency {
                            database: db.name().to_string(),
                            serial: db.stable_point().0,
                            before_us,
                        });
                    }
                }
                Err(message) => errors.push(RuleError {
                    index: Some(index),
                    plugin: stage.plugin().to_string(),
                    message,
                }),
            }
        }
    }
    Ok((deps, errors))
}

/// A replicated source database: its source node, tenant and name.
pub type StreamKey = (String, String, String);

/// How far this node's replica of one source database got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last source serial applied.
    pub applied: u64,
    /// Every update of the source stamped at or before this is applied.
    pub complete_us: u64,
}

impl Progress {
    pub fn satisfies(&self, dep: &Dependency) -> bool {
        self.applied >= dep.serial || self.complete_us >= dep.before_us.saturating_sub(1)
    }
}

/// The target side: each replica's progress, and which links wait on it.
#[derive(Default)]
pub struct Gates {
    streams: Mutex<HashMap<StreamKey, watch::Sender<Progress>>>,
    /// Link → what it is waiting for, while it waits.
    held: Mutex<HashMap<String, String>>,
}

impl Gates {
    /// The stream's progress channel (made on first use; the key is cloned only then,
    /// since every applied transaction comes here).
    fn sender(&self, key: &StreamKey) -> watch::Sender<Progress> {
        let mut streams = self.streams.lock();
        if let Some(s) = streams.get(key) {
            return s.clone();
        }
        streams
            .entry(key.clone())
            .or_insert_with(|| watch::channel(Progress::default()).0)
            .clone()
    }

    /// The replica of `key` applied up to `applied` (after a snapshot: restart from it).
    pub fn applied(&self, key: &StreamKey, applied: u64, rebased: bool) {
        self.sender(key).send_if_modified(|p| {
            let before = *p;
            if rebased {
                *p = Progress {
                    applied,
                    complete_us: 0,
                };
            } else {
                p.applied = p.applied.max(applied);
            }
            *p != before
        });
    }

    /// A watermark arrived: the source sent every update stamped up to `us` by
    /// `serial`; `applied` is how far the replica got.
    pub fn watermark(&self, key: &StreamKey, serial: u64, us: u64, applied: u64) {
        self.sender(key).send_if_modified(|p| {
            let before = *p;
            p.applied = p.applied.max(applied);
            if applied >= serial {
                p.complete_us = p.complete_us.max(us);
            }
            *p != before
        });
    }

    pub fn progress(&self, key: &StreamKey) -> Progress {
        *self.sender(key).borrow()
    }

    /// Wait until every dependency holds; while waiting, `link` shows what it waits for.
    pub async fn hold(&self, link: &str, source_node: &str, tenant: &str, deps: &[Dependency]) {
        for dep in deps {
            let key = (
                source_node.to_string(),
                tenant.to_string(),
                dep.database.clone(),
            );
            let mut rx = self.sender(&key).subscribe();
            if rx.borrow_and_update().satisfies(dep) {
                continue;
            }
            self.held.lock().insert(
                link.to_string(),
                format!(
                    "database '{}' of the source up to serial {}",
                    dep.database, dep.serial
                ),
            );
            tracing::debug!(link, database = %dep.database, serial = dep.serial, "holding a transaction for its interrelated updates");
            while rx.changed().await.is_ok() {
                if rx.borrow_and_update().satisfies(dep) {
                    break;
                }
            }
        }
        self.held.lock().remove(link);
    }

    /// What `link` is waiting for, if it is.
    pub fn held(&self, link: &str) -> Option<String> {
        self.held.lock().get(link).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dep(serial: u64, before_us: u64) -> Dependency {
        Dependency {
            database: "orders".into(),
            serial,
            before_us,
        }
    }

    fn key() -> StreamKey {
        ("n1".into(), "t".into(), "orders".into())
    }

    #[test]
    fn a_dependency_holds_by_serial_or_by_completeness_in_time() {
        let p = Progress {
            applied: 10,
            complete_us: 500,
        };
        assert!(p.satisfies(&dep(10, 900)), "the serial is applied");
        assert!(
            p.satisfies(&dep(11, 501)),
            "everything before 501 is applied"
        );
        assert!(!p.satisfies(&dep(11, 502)));
        assert!(Progress::default().satisfies(&dep(0, 1)));
    }

    #[test]
    fn a_watermark_counts_only_once_the_replica_reached_it() {
        let g = Gates::default();
        g.watermark(&key(), 20, 700, 15);
        assert_eq!(
            g.progress(&key()),
            Progress {
                applied: 15,
                complete_us: 0
            }
        );
        g.watermark(&key(), 20, 700, 20);
        assert_eq!(g.progress(&key()).complete_us, 700);
        g.applied(&key(), 3, true);
        assert_eq!(
            g.progress(&key()),
            Progress {
                applied: 3,
                complete_us: 0
            },
            "a snapshot starts the replica's progress afresh"
        );
    }

    #[tokio::test]
    async fn a_held_transaction_goes_once_its_database_catches_up() {
        let g = Arc::new(Gates::default());
        g.applied(&key(), 4, false);
        let waiting = {
            let g = g.clone();
            tokio::spawn(async move { g.hold("l1", "n1", "t", &[dep(9, 1_000)]).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while g.held("l1").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never held");
            tokio::task::yield_now().await;
        }
        assert!(g.held("l1").unwrap().contains("up to serial 9"));
        g.applied(&key(), 8, false);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "serial 8 is not enough");
        g.applied(&key(), 9, false);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released")
            .unwrap();
        assert_eq!(g.held("l1"), None);
        // Another tenant's or node's stream of the same name is another stream.
        let other = ("n2".to_string(), "t".to_string(), "orders".to_string());
        assert_eq!(g.progress(&other), Progress::default());
    }
}
