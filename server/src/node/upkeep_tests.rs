//! The node's upkeep with a big database: its snapshot is written beside the upkeep,
//! so the other databases' retention, idle transactions and snapshots go on meanwhile
//! (issue 24: a neighbour's snapshot stalls no one).
//!
//! The test never blocks a runtime worker: a task spawned from a worker can sit in that
//! worker's own slot, where no other worker takes it, so every wait here is awaited.

use std::sync::mpsc;
use std::time::Duration;

use super::recovery_tests::put_many;
use crate::node::gate::testing::spec;
use crate::node::{Node, NodeSettings, DEFAULT_TENANT};

const DEADLINE: Duration = Duration::from_secs(20);

/// Wait until `done` holds, checking every 10 ms, for at most [`DEADLINE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {DEADLINE:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_being_written_holds_up_neither_the_upkeep_nor_another_database() {
    let dir = tempfile::tempdir().unwrap();
    let settings = NodeSettings {
        snapshot_every_entries: 10,
        ..NodeSettings::default()
    };
    let node = Node::open(dir.path(), settings).unwrap();
    let big = node.create_database(DEFAULT_TENANT, spec("big")).unwrap();
    let small = node.create_database(DEFAULT_TENANT, spec("small")).unwrap();
    put_many(&big, "b", 20).await;

    // The first snapshot part stored (big's: only big wants a snapshot yet) waits, on
    // the snapshot's blocking thread, until the test lets it go; later parts pass.
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
    let (release, go_on) = mpsc::channel::<()>();
    let mut first = true;
    node.log.set_after_snapshot_part(move |_| {
        if std::mem::take(&mut first) {
            reached_tx.send(()).ok();
            go_on.recv_timeout(DEADLINE).ok();
        }
    });

    tokio::time::timeout(DEADLINE, node.upkeep())
        .await
        .expect("the upkeep returns while big's snapshot is being written");
    tokio::time::timeout(DEADLINE, reached.recv())
        .await
        .expect("big's snapshot started");
    assert!(node.upkeep_snapshots.lock().contains(&big.def.uid));

    // Meanwhile another database wants its snapshot: the next round takes it, and
    // does not start a second one of big.
    put_many(&small, "s", 20).await;
    tokio::time::timeout(DEADLINE, node.upkeep())
        .await
        .expect("the next round returns too");
    until("small's snapshot is taken", || {
        !small.snapshots().unwrap().is_empty()
    })
    .await;
    assert!(big.snapshots().unwrap().is_empty(), "big's is still held");

    release.send(()).unwrap();
    until("big's snapshot ends", || {
        !node.upkeep_snapshots.lock().contains(&big.def.uid)
    })
    .await;
    let taken = big.snapshots().unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].serial, big.serials().0);
}
