//! The write gate: a rule every client write of a database passes before it commits,
//! whoever the writer is (the REST routes, a replay, anything that calls
//! [`Database::execute`]).
//!
//! The rule belongs to a layer above the node: a parallel database (SPEC F5) locks a
//! write's records on every other site before it commits, and only transport knows the
//! sites. The node cannot call transport (dependencies point down: transport → node), so
//! transport installs an implementation of [`WriteGate`] on the node once, at start-up
//! ([`crate::node::Node::set_write_gate`]), and the node hands it to every database it
//! has or creates. Whether a database is guarded is asked at each write
//! ([`WriteGate::guards`]), from the gate's own state (for parallel databases, the link
//! definitions as they are at that moment), so nothing has to be kept in step with the
//! life of links and databases.
//!
//! What the node does with it:
//! - [`Database::execute`] takes the gate after its own checks (at least one operation,
//!   not a replica, not restoring) and before waiting for record locks, and releases it
//!   once the write is done, committed or refused. A refusal of the gate (a cross-site
//!   deadlock or lock timeout, as [`Error::Lock`]) refuses the write with nothing
//!   written.
//! - [`Database::begin`] refuses an interactive transaction on a guarded database: it
//!   would hold the gate across requests.
//!
//! What links write into a replica does not pass the gate: the site it comes from held
//! the gate when the write committed there.
//!
//! [`Error::Lock`]: super::Error::Lock

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Database, Result};
use crate::txn::Op;

/// A rule that client writes of a database pass before they commit (see the module).
pub trait WriteGate: Send + Sync {
    /// Whether writes of `db` pass this gate. Such a database takes no interactive
    /// transactions. Asked at every write, so keep it cheap.
    fn guards(&self, db: &Database) -> bool;

    /// Take what a write of `ops` to `db` needs before it commits, waiting at most about
    /// `timeout`. `None`: nothing to hold (the database stopped being guarded meanwhile).
    fn lock<'a>(
        &'a self,
        db: &'a Database,
        ops: &'a [Op],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Box<dyn GateGuard>>>>;
}

/// What [`WriteGate::lock`] took; the database releases it once the write is done.
pub trait GateGuard: Send {
    /// Let go of what the gate took (best effort: it cannot fail the write any more).
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

#[cfg(test)]
pub(crate) mod testing {
    //! A gate for tests: it counts what passes it and can refuse.

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::node::database::{DatabaseSpec, Durability, Retention};
    use crate::node::Error;
    use crate::store::FileSchema;
    use crate::txn::locks::LockError;

    /// A database of one file, `orders`, acknowledged from RAM.
    pub(crate) fn spec(name: &str) -> DatabaseSpec {
        DatabaseSpec {
            name: name.into(),
            files: vec![FileSchema {
                name: "orders".into(),
                alt_keys: vec![],
            }],
            block_size: 512,
            durability: Durability::None,
            memory_quota_bytes: 1 << 30,
            retention: Retention::default(),
            mutual: false,
        }
    }

    /// Guards every database whose name is `name`; counts locks and releases, and
    /// records the database's last serial at each (to show nothing was written before
    /// the lock and everything before the release).
    #[derive(Default)]
    pub(crate) struct CountingGate {
        pub name: String,
        pub locked: AtomicUsize,
        pub released: Arc<AtomicUsize>,
        pub refuse: AtomicBool,
        pub serials_at_lock: parking_lot::Mutex<Vec<u64>>,
    }

    impl CountingGate {
        pub(crate) fn new(name: &str) -> Arc<CountingGate> {
            Arc::new(CountingGate {
                name: name.into(),
                ..CountingGate::default()
            })
        }

        pub(crate) fn locked(&self) -> usize {
            self.locked.load(Ordering::SeqCst)
        }

        pub(crate) fn released(&self) -> usize {
            self.released.load(Ordering::SeqCst)
        }
    }

    struct Counted(Arc<AtomicUsize>);

    impl GateGuard for Counted {
        fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                self.0.fetch_add(1, Ordering::SeqCst);
            })
        }
    }

    impl WriteGate for CountingGate {
        fn guards(&self, db: &Database) -> bool {
            db.name() == self.name
        }

        fn lock<'a>(
            &'a self,
            db: &'a Database,
            _ops: &'a [Op],
            _timeout: Duration,
        ) -> BoxFuture<'a, Result<Option<Box<dyn GateGuard>>>> {
            Box::pin(async move {
                self.serials_at_lock.lock().push(db.serials().0);
                if self.refuse.load(Ordering::SeqCst) {
                    return Err(Error::Lock(LockError::SiteDeadlock(
                        "refused by the test gate".into(),
                    )));
                }
                self.locked.fetch_add(1, Ordering::SeqCst);
                Ok(Some(
                    Box::new(Counted(self.released.clone())) as Box<dyn GateGuard>
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::testing::{spec, CountingGate};
    use crate::log::OpKind;
    use crate::node::{Database, Error, Node, NodeSettings, DEFAULT_TENANT};
    use crate::store::encode_record;
    use crate::txn::locks::LockError;
    use crate::txn::Op;

    fn op(kind: OpKind, key: &str) -> Op {
        let mut payload = Vec::new();
        encode_record(&mut payload, key.as_bytes(), &[], b"{}");
        Op {
            kind,
            file: 0,
            payload,
        }
    }

    async fn write(db: &Database, kind: OpKind, key: &str) -> crate::node::Result<u64> {
        let committed = db
            .execute(vec![op(kind, key)], Duration::from_secs(1))
            .await?;
        Ok(committed.last_serial)
    }

    /// A node with the test gate guarding databases named `par`, and two databases:
    /// `par`, created before the gate was installed, and `plain`, after.
    fn node() -> (tempfile::TempDir, Node, Arc<CountingGate>) {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path(), NodeSettings::default()).unwrap();
        node.create_database(DEFAULT_TENANT, spec("par")).unwrap();
        let gate = CountingGate::new("par");
        node.set_write_gate(gate.clone());
        node.create_database(DEFAULT_TENANT, spec("plain")).unwrap();
        (dir, node, gate)
    }

    #[tokio::test]
    async fn a_write_takes_the_gate_before_it_writes_and_releases_it_after() {
        let (_dir, node, gate) = node();
        let par = node.database(DEFAULT_TENANT, "par").unwrap();
        let last = write(&par, OpKind::Upsert, "a").await.unwrap();
        assert_eq!((gate.locked(), gate.released()), (1, 1));
        assert_eq!(
            *gate.serials_at_lock.lock(),
            vec![0],
            "locked before writing"
        );
        assert!(last > 0);
        // A database the gate does not guard writes without it.
        let plain = node.database(DEFAULT_TENANT, "plain").unwrap();
        write(&plain, OpKind::Upsert, "a").await.unwrap();
        assert_eq!((gate.locked(), gate.released()), (1, 1));
    }

    #[tokio::test]
    async fn a_write_the_gate_refuses_changes_nothing() {
        let (_dir, node, gate) = node();
        let par = node.database(DEFAULT_TENANT, "par").unwrap();
        gate.refuse.store(true, Ordering::SeqCst);
        let err = write(&par, OpKind::Upsert, "a").await.unwrap_err();
        assert!(
            matches!(err, Error::Lock(LockError::SiteDeadlock(_))),
            "{err:?}"
        );
        assert_eq!(par.serials().0, 0);
        assert!(par.get("orders", "a").is_err());
        assert_eq!(gate.released(), 0, "nothing was taken");
    }

    #[tokio::test]
    async fn a_write_the_store_refuses_still_releases_the_gate() {
        let (_dir, node, gate) = node();
        let par = node.database(DEFAULT_TENANT, "par").unwrap();
        write(&par, OpKind::Insert, "a").await.unwrap();
        let err = write(&par, OpKind::Insert, "a").await.unwrap_err();
        assert!(matches!(err, Error::AtOp { .. }), "{err:?}");
        assert_eq!((gate.locked(), gate.released()), (2, 2));
    }

    #[tokio::test]
    async fn a_guarded_database_takes_no_interactive_transactions() {
        let (_dir, node, _gate) = node();
        let par = node.database(DEFAULT_TENANT, "par").unwrap();
        let err = par.begin().unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("is parallel"), "{err}");
        let plain = node.database(DEFAULT_TENANT, "plain").unwrap();
        plain.begin().unwrap();
    }

    #[tokio::test]
    async fn a_database_created_after_the_gate_gets_it_too() {
        let (_dir, node, gate) = node();
        node.create_tenant("other").unwrap();
        let par = node.create_database("other", spec("par")).unwrap();
        write(&par, OpKind::Upsert, "a").await.unwrap();
        assert_eq!((gate.locked(), gate.released()), (1, 1));
    }
}
