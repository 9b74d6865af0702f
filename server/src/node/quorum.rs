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
//!
//! A waiting commit is woken only when its serial is covered: every change (a
//! confirmation, a link registered, suspended or gone, new settings) computes the
//! highest serial `k` links confirm and releases the commits at or below it, so a
//! confirmation does not wake the commits it does not cover (with 64 concurrent
//! commits, each confirmation used to wake all of them to check and sleep again).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
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
    /// The commits waiting, by (serial, arrival), each with what wakes it.
    waiters: BTreeMap<(u64, u64), oneshot::Sender<()>>,
    /// The arrival number of the next waiter.
    arrivals: u64,
}

impl State {
    /// The links counted and how many of them must confirm a serial, as (live links'
    /// confirmations, needed).
    fn live(&self) -> (impl Iterator<Item = u64> + Clone + '_, usize) {
        let strict = self.strict;
        let live = self
            .links
            .values()
            .filter(move |l| strict || !l.suspended)
            .map(|l| l.acked);
        let suspended = self.links.len() - live.clone().count();
        let links = live
            .clone()
            .count()
            .max(self.expected.saturating_sub(suspended));
        (live, self.k.min(links))
    }

    /// (confirmed, needed) for `serial` now.
    fn count(&self, serial: u64) -> (usize, usize) {
        let (live, needed) = self.live();
        (live.filter(|acked| *acked >= serial).count(), needed)
    }

    /// The highest serial that enough links confirmed now (None: not even serial 0,
    /// fewer links than needed; `u64::MAX` when none is needed). A serial passes
    /// exactly when it is at or below this, as [`Self::count`] would decide.
    fn covered(&self) -> Option<u64> {
        let (live, needed) = self.live();
        if needed == 0 {
            return Some(u64::MAX);
        }
        // The needed-th highest confirmation (links are few: no sort, no allocation).
        live.clone()
            .filter(|a| live.clone().filter(|b| b >= a).count() >= needed)
            .max()
    }

    /// Take the waiters of the serials [`Self::covered`] lets through.
    fn release(&mut self) -> BTreeMap<(u64, u64), oneshot::Sender<()>> {
        let Some(covered) = self.covered() else {
            return BTreeMap::new();
        };
        match covered.checked_add(1) {
            Some(above) => {
                let rest = self.waiters.split_off(&(above, 0));
                std::mem::replace(&mut self.waiters, rest)
            }
            None => std::mem::take(&mut self.waiters),
        }
    }
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
                waiters: BTreeMap::new(),
                arrivals: 0,
            }),
        }
    }
}

/// Takes a waiting commit's entry out when its wait ends without a wake (timeout, or
/// the commit's future dropped).
struct Waiting<'a> {
    quorum: &'a Quorum,
    key: (u64, u64),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.quorum.state.lock().waiters.remove(&self.key);
    }
}

impl Quorum {
    /// Something changed under the lock (`state`): wake the commits it lets through,
    /// after letting the lock go.
    fn changed(&self, mut state: parking_lot::MutexGuard<'_, State>) {
        let woken = state.release();
        drop(state);
        for (_, tx) in woken {
            let _ = tx.send(());
        }
    }

    /// Whether any synchronous link is registered (commits then hold their locks).
    pub fn is_active(&self) -> bool {
        let state = self.state.lock();
        !state.links.is_empty() || state.expected > 0
    }

    /// Register a synchronous link whose replica has confirmed up to `acked`.
    pub fn register(&self, link: &str, acked: u64) {
        let mut state = self.state.lock();
        state.links.insert(
            link.to_string(),
            LinkAck {
                acked,
                suspended: false,
            },
        );
        self.changed(state);
    }

    pub fn unregister(&self, link: &str) {
        let mut state = self.state.lock();
        state.links.remove(link);
        self.changed(state);
    }

    /// A suspended (detached) link is not waited for.
    pub fn set_suspended(&self, link: &str, suspended: bool) {
        let mut state = self.state.lock();
        if let Some(l) = state.links.get_mut(link) {
            l.suspended = suspended;
        }
        self.changed(state);
    }

    /// The link's replica confirmed everything up to `serial`: the commits that this
    /// lets through are woken, the others are not.
    pub fn ack(&self, link: &str, serial: u64) {
        let mut state = self.state.lock();
        if let Some(l) = state.links.get_mut(link) {
            if serial > l.acked {
                l.acked = serial;
                if !state.waiters.is_empty() {
                    self.changed(state);
                }
            }
        }
    }

    /// Set `k` (at least 1) and the wait before a replication timeout.
    pub fn configure(&self, k: usize, timeout_ms: u64) {
        let mut state = self.state.lock();
        state.k = k.max(1);
        state.timeout_ms = timeout_ms;
        self.changed(state);
    }

    /// The number of synchronous links the database's topology gives it: commits wait
    /// for the missing ones as for links that confirmed nothing (0: no such floor).
    pub fn expect_links(&self, n: usize) {
        let mut state = self.state.lock();
        state.expected = n;
        self.changed(state);
    }

    /// Count suspended links as links that confirm nothing (see `State::strict`).
    pub fn set_strict(&self, strict: bool) {
        let mut state = self.state.lock();
        if state.strict != strict {
            state.strict = strict;
            self.changed(state);
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

    /// Commits waiting now.
    pub fn waiting(&self) -> usize {
        self.state.lock().waiters.len()
    }

    /// Wait until `k` links confirmed `serial`, or the configured timeout passes (tokio's
    /// clock, so a simulation's virtual time drives the deadline). The commit is woken
    /// once, by the change that lets it through; it checks the count itself only when
    /// its deadline passes.
    pub async fn wait(&self, serial: u64) -> Result<(), QuorumTimeout> {
        let started = Instant::now();
        let (woken, key, timeout_ms) = {
            let mut state = self.state.lock();
            if state.covered().is_some_and(|c| c >= serial) {
                return Ok(());
            }
            // Entered under the lock every change takes: no change can slip between
            // the check above and the entry.
            let key = (serial, state.arrivals);
            state.arrivals += 1;
            let (tx, rx) = oneshot::channel();
            state.waiters.insert(key, tx);
            (rx, key, state.timeout_ms)
        };
        let entry = Waiting { quorum: self, key };
        let deadline = started + Duration::from_millis(timeout_ms);
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, woken).await {
            // Taken out by the change that woke it.
            std::mem::forget(entry);
            return Ok(());
        }
        drop(entry);
        let (confirmed, needed) = self.state.lock().count(serial);
        if confirmed >= needed {
            return Ok(());
        }
        Err(QuorumTimeout {
            confirmed,
            needed,
            waited_ms: started.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quorum of links `a` and `b`, both needed, with this timeout.
    fn both_of_two(timeout_ms: u64) -> std::sync::Arc<Quorum> {
        let q = std::sync::Arc::new(Quorum::default());
        q.register("a", 0);
        q.register("b", 0);
        q.configure(2, timeout_ms);
        q
    }

    #[tokio::test]
    async fn k_of_n_waits_for_k_live_links_and_ignores_suspended_ones() {
        let q = both_of_two(200);
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
        let q = both_of_two(20);
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
        let q = both_of_two(20);
        q.set_strict(true);
        q.set_suspended("b", true);
        q.ack("a", 3);
        let err = q.wait(3).await.unwrap_err();
        assert_eq!((err.confirmed, err.needed), (1, 2));
        q.set_strict(false);
        assert_eq!(q.wait(3).await, Ok(()));
    }

    #[tokio::test]
    async fn a_confirmation_releases_the_commits_it_covers_and_no_later_one() {
        let q = both_of_two(5_000);
        let wait = |serial| {
            let q = q.clone();
            tokio::spawn(async move { q.wait(serial).await })
        };
        let (early, late) = (wait(3), wait(7));
        while q.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        q.ack("a", 9);
        q.ack("b", 5);
        assert_eq!(early.await.unwrap(), Ok(()));
        // Serial 7 has one confirmation of the two it needs: it still waits.
        assert_eq!(q.waiting(), 1);
        assert!(!late.is_finished());
        q.ack("b", 7);
        assert_eq!(late.await.unwrap(), Ok(()));
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test]
    async fn a_commit_that_timed_out_or_was_dropped_leaves_no_waiter_behind() {
        let q = Quorum::default();
        q.register("a", 0);
        q.configure(1, 20);
        assert!(q.wait(4).await.is_err());
        let dropped = tokio::time::timeout(Duration::from_millis(1), q.wait(5)).await;
        assert!(dropped.is_err());
        assert_eq!(q.waiting(), 0);
        // A link that goes away lets the commits waiting for it through.
        q.configure(1, 5_000);
        let both = async {
            let waiter = q.wait(6);
            tokio::pin!(waiter);
            assert!(futures_poll_once(waiter.as_mut()).await.is_none());
            q.unregister("a");
            waiter.await
        };
        assert_eq!(both.await, Ok(()));
    }

    /// Poll a future once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn no_sync_link_means_no_wait() {
        let q = Quorum::default();
        assert!(!q.is_active());
        assert_eq!(q.wait(100).await, Ok(()));
    }
}
