//! The k-of-N gate of a database's synchronous links (SPEC C1, C3).
//!
//! Every synchronous link of a source database registers here and reports the highest
//! serial its replica confirmed ("backup completed"). A commit on that database waits
//! until `k` links have confirmed its last serial, while holding its record locks; other
//! transactions go on meanwhile. `k` is capped at the number of registered links that
//! are not suspended: a detached replica is never waited for (SPEC G6), a replica that
//! is merely down is, until the commit's deadline.
//!
//! A topology also says how many synchronous links the database has (`expected`): until
//! that many are registered, the missing ones count as links that have confirmed
//! nothing, so a freshly promoted primary holds its commits (within the timeout) until
//! the links the topology gives it are in place and caught up, instead of
//! acknowledging them with no replica behind.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// Default wait for the quorum before a commit reports a replication timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy)]
struct LinkAck {
    acked: u64,
    suspended: bool,
}

#[derive(Debug)]
struct State {
    links: HashMap<String, LinkAck>,
    k: usize,
    timeout_ms: u64,
    /// Synchronous links the database's topology gives it (0: whatever is registered).
    expected: usize,
    /// A suspended link still counts (as one that confirms nothing): set for the primary
    /// of a cluster's replicated database, whose standbys' election assumes each
    /// acknowledged commit was confirmed by `k` of its whole standby set.
    strict: bool,
}

/// Why a commit's quorum wait ended without enough confirmations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumTimeout {
    pub confirmed: usize,
    pub needed: usize,
    pub waited_ms: u64,
}

/// The quorum settings as the API shows them.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct QuorumInfo {
    pub k: usize,
    pub sync_links: usize,
    pub timeout_ms: u64,
    /// Synchronous links the topology gives the database (0: not set).
    pub expected_links: usize,
}

/// One database's synchronous-link gate.
#[derive(Debug)]
pub struct Quorum {
    state: Mutex<State>,
    /// Bumped on every change; waiters re-check on it.
    changed: watch::Sender<u64>,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum {
            state: Mutex::new(State {
                links: HashMap::new(),
                k: 1,
                timeout_ms: DEFAULT_TIMEOUT_MS,
                expected: 0,
                strict: false,
            }),
            changed: watch::channel(0).0,
        }
    }
}

impl Quorum {
    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Whether any synchronous link is registered (commits then hold their locks).
    pub fn is_active(&self) -> bool {
        let state = self.state.lock();
        !state.links.is_empty() || state.expected > 0
    }

    /// Register a synchronous link whose replica has confirmed up to `acked`.
    pub fn register(&self, link: &str, acked: u64) {
        self.state.lock().links.insert(
            link.to_string(),
            LinkAck {
                acked,
                suspended: false,
            },
        );
        self.bump();
    }

    pub fn unregister(&self, link: &str) {
        self.state.lock().links.remove(link);
        self.bump();
    }

    /// A suspended (detached) link is not waited for.
    pub fn set_suspended(&self, link: &str, suspended: bool) {
        if let Some(l) = self.state.lock().links.get_mut(link) {
            l.suspended = suspended;
        }
        self.bump();
    }

    /// The link's replica confirmed everything up to `serial`.
    pub fn ack(&self, link: &str, serial: u64) {
        let mut state = self.state.lock();
        if let Some(l) = state.links.get_mut(link) {
            if serial > l.acked {
                l.acked = serial;
                drop(state);
                self.bump();
            }
        }
    }

    /// Set `k` (at least 1) and the wait before a replication timeout.
    pub fn configure(&self, k: usize, timeout_ms: u64) {
        let mut state = self.state.lock();
        state.k = k.max(1);
        state.timeout_ms = timeout_ms;
        drop(state);
        self.bump();
    }

    /// The number of synchronous links the database's topology gives it: commits wait
    /// for the missing ones as for links that confirmed nothing (0: no such floor).
    pub fn expect_links(&self, n: usize) {
        self.state.lock().expected = n;
        self.bump();
    }

    /// Count suspended links as links that confirm nothing (see `State::strict`).
    pub fn set_strict(&self, strict: bool) {
        let mut state = self.state.lock();
        if state.strict != strict {
            state.strict = strict;
            drop(state);
            self.bump();
        }
    }

    pub fn info(&self) -> QuorumInfo {
        let state = self.state.lock();
        QuorumInfo {
            k: state.k,
            sync_links: state.links.len(),
            timeout_ms: state.timeout_ms,
            expected_links: state.expected,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.state.lock().timeout_ms)
    }

    /// (confirmed, needed) for `serial` now.
    fn count(&self, serial: u64) -> (usize, usize) {
        let state = self.state.lock();
        let live: Vec<&LinkAck> = state
            .links
            .values()
            .filter(|l| state.strict || !l.suspended)
            .collect();
        let confirmed = live.iter().filter(|l| l.acked >= serial).count();
        let suspended = state.links.len() - live.len();
        let links = live.len().max(state.expected.saturating_sub(suspended));
        (confirmed, state.k.min(links))
    }

    /// Wait until `k` links confirmed `serial`, or the configured timeout passes (tokio's
    /// clock, so a simulation's virtual time drives the deadline).
    pub async fn wait(&self, serial: u64) -> Result<(), QuorumTimeout> {
        let started = Instant::now();
        let deadline = started + self.timeout();
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let (confirmed, needed) = self.count(serial);
            if confirmed >= needed {
                return Ok(());
            }
            let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let (confirmed, needed) = self.count(serial);
                if confirmed >= needed {
                    return Ok(());
                }
                return Err(QuorumTimeout {
                    confirmed,
                    needed,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn k_of_n_waits_for_k_live_links_and_ignores_suspended_ones() {
        let q = std::sync::Arc::new(Quorum::default());
        q.register("a", 0);
        q.register("b", 0);
        q.configure(2, 200);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.wait(5).await })
        };
        q.ack("a", 5);
        q.ack("b", 4);
        q.ack("b", 6);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // b suspended: k = 2 is capped at the one live link.
        q.set_suspended("b", true);
        q.ack("a", 7);
        assert_eq!(q.wait(7).await, Ok(()));
    }

    #[tokio::test]
    async fn a_missing_confirmation_times_out_with_the_counts() {
        let q = Quorum::default();
        q.register("a", 0);
        q.register("b", 0);
        q.configure(2, 20);
        q.ack("a", 3);
        let err = q.wait(3).await.unwrap_err();
        assert_eq!((err.confirmed, err.needed), (1, 2));
    }

    #[tokio::test]
    async fn expected_links_not_yet_registered_hold_the_commit_until_they_confirm() {
        let q = std::sync::Arc::new(Quorum::default());
        q.configure(1, 5_000);
        q.expect_links(1);
        assert!(q.is_active());
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.wait(9).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        q.register("late", 0);
        q.ack("late", 9);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Never registered: the commit times out rather than go unreplicated.
        let q = Quorum::default();
        q.configure(1, 20);
        q.expect_links(1);
        assert_eq!(q.wait(1).await.unwrap_err().needed, 1);
    }

    #[tokio::test]
    async fn a_strict_quorum_does_not_shrink_when_a_link_is_suspended() {
        let q = Quorum::default();
        q.register("a", 0);
        q.register("b", 0);
        q.configure(2, 20);
        q.set_strict(true);
        q.set_suspended("b", true);
        q.ack("a", 3);
        let err = q.wait(3).await.unwrap_err();
        assert_eq!((err.confirmed, err.needed), (1, 2));
        q.set_strict(false);
        assert_eq!(q.wait(3).await, Ok(()));
    }

    #[tokio::test]
    async fn no_sync_link_means_no_wait() {
        let q = Quorum::default();
        assert!(!q.is_active());
        assert_eq!(q.wait(100).await, Ok(()));
    }
}
