//! The node's commit clock: microsecond timestamps that strictly increase across every
//! database of the process, even when the wall clock steps back.
//!
//! One clock for all databases is what lets interrelation (SPEC D1–D3) compare updates
//! of different databases: an update committed after another one, in any database of
//! this node, carries a larger timestamp. [`last_us`] read while a database's writer
//! lock is held therefore bounds every update that database has committed so far, and
//! every update it commits later is stamped above it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST_US: AtomicU64 = AtomicU64::new(0);

/// The wall clock in microseconds since the Unix epoch (0 before it). For display and
/// deadlines that outlive the process (leases, retention); never an order of updates:
/// that is [`next_us`].
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// [`wall_us`] in milliseconds.
pub fn wall_ms() -> u64 {
    wall_us() / 1000
}

/// A timestamp above every one handed out before (the wall clock when it is ahead).
pub fn next_us() -> u64 {
    let wall = wall_us();
    let mut prev = LAST_US.load(Ordering::Relaxed);
    loop {
        let next = wall.max(prev + 1);
        match LAST_US.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => prev = actual,
        }
    }
}

/// The last timestamp handed out: every later [`next_us`] is above it.
pub fn last_us() -> u64 {
    LAST_US.load(Ordering::Acquire)
}

/// Never hand out a timestamp at or below `us` (one recovered from a log).
pub fn observe(us: u64) {
    LAST_US.fetch_max(us, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..10_000).map(|_| next_us()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| {
                let v = t.join().unwrap();
                assert!(v.windows(2).all(|w| w[0] < w[1]), "per thread, in order");
                v
            })
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no timestamp is handed out twice");
        assert!(last_us() >= *all.last().unwrap());
    }

    #[test]
    fn an_observed_timestamp_from_the_future_is_never_repeated() {
        let ahead = wall_us() + 60_000_000;
        observe(ahead);
        assert!(next_us() > ahead);
    }
}
