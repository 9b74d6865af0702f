//! What one database uses while it works, counted as it goes: the CPU time its writes
//! and replica applies take on the thread that runs them, and the client operations it
//! writes; and running a big write at a lower CPU priority ([`at_low_priority`]). Totals only grow (a scraper takes rates from them); [`Meter`] also gives the
//! rate of the last whole second, for a person reading `GET …/usage` or the console.
//! A tenant's figures are the sums over its databases (`api::routes::usage`, metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// The CPU time the calling thread has used so far, in nanoseconds (0 if the clock is
/// missing). A thread runs one write at a time, so the difference around a write is
/// that write's CPU time, whatever else the process does meanwhile.
pub fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusive `now`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return 0;
    }
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Operations from which a request's CPU work counts as big ([`big_work`]): a write of
/// this many takes on the order of a millisecond.
pub const BIG_OPS: usize = 100;

/// Body bytes from which decoding a request counts as big ([`big_work`]): about
/// [`BIG_OPS`] operations of 100 B values as JSON.
pub const BIG_BODY_BYTES: usize = 16 << 10;

/// Run `work`, when `big`, off the async worker (tokio hands the worker's other tasks
/// to another thread meanwhile) and at a lower CPU priority ([`at_low_priority`]), so a
/// neighbour's small request is served first instead of after it (issue 24, fair
/// shares). Small work, and work outside a multi-threaded runtime, runs as it is.
pub fn big_work<T>(big: bool, work: impl FnOnce() -> T) -> T {
    if big && on_multi_thread_runtime() {
        tokio::task::block_in_place(|| at_low_priority(work))
    } else {
        work()
    }
}

/// Run `work` where it holds up no other task: on a worker of a multi-threaded runtime
/// through `block_in_place` (tokio hands the worker's other tasks to another thread
/// meanwhile); anywhere else (a blocking thread, a current-thread runtime, no runtime)
/// as it is. For work of milliseconds that borrows what the caller holds.
pub fn off_worker<T>(work: impl FnOnce() -> T) -> T {
    if on_multi_thread_runtime() {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Whether this thread runs inside a multi-threaded tokio runtime, where
/// `block_in_place` may be called.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Run `work` at a lower CPU priority on this thread (nice +10), then restore it: the
/// kernel then serves a neighbour's small request first. Only where the process may
/// raise a thread's priority back (checked once); elsewhere `work` runs as it is.
pub fn at_low_priority<T>(work: impl FnOnce() -> T) -> T {
    static CAN_RESTORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let can = *CAN_RESTORE.get_or_init(|| {
        std::thread::spawn(|| {
            let was = nice();
            set_nice(lowered(was)) && set_nice(was)
        })
        .join()
        .unwrap_or(false)
    });
    // Relative to where the thread is: a node an operator started niced stays below
    // what it was given, and gets exactly that back.
    let was = nice();
    let lowered = can && set_nice(lowered(was));
    let out = work();
    if lowered {
        set_nice(was);
    }
    out
}

/// Ten steps below `nice`, within the scheduler's range.
fn lowered(nice: i32) -> i32 {
    (nice + 10).min(19)
}

/// This thread's nice value.
fn nice() -> i32 {
    // SAFETY: gettid has no preconditions; getpriority only reads this thread's
    // priority.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Set this thread's nice value; whether it took.
fn set_nice(nice: i32) -> bool {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only
    // changes this thread's scheduling priority.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0
    }
}

/// A database's usage counters.
#[derive(Default)]
pub struct Usage {
    /// Nanoseconds of CPU time.
    pub cpu_ns: Meter,
    /// Client operations written.
    pub operations: Meter,
}

impl Usage {
    /// Start charging CPU time: the returned guard adds the thread's CPU time since now
    /// when it drops (so early returns are charged too).
    pub fn charge_cpu(&self) -> CpuCharge<'_> {
        CpuCharge {
            usage: self,
            started: thread_cpu_ns(),
        }
    }
}

/// See [`Usage::charge_cpu`].
pub struct CpuCharge<'a> {
    usage: &'a Usage,
    started: u64,
}

impl Drop for CpuCharge<'_> {
    fn drop(&mut self) {
        let spent = thread_cpu_ns().saturating_sub(self.started);
        self.usage.cpu_ns.add(spent);
    }
}

/// A count with its total and the amount counted in the last whole second.
#[derive(Default)]
pub struct Meter {
    total: AtomicU64,
    /// (the second being counted, its count so far, the count of the second before it).
    seconds: Mutex<(u64, u64, u64)>,
}

impl Meter {
    /// Count `n` now.
    pub fn add(&self, n: u64) {
        self.add_at(n, crate::txn::clock::wall_ms() / 1000);
    }

    fn add_at(&self, n: u64, second: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        let mut s = self.seconds.lock();
        if s.0 != second {
            let previous = if s.0 + 1 == second { s.1 } else { 0 };
            *s = (second, 0, previous);
        }
        s.1 += n;
    }

    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// What was counted in the last whole second.
    pub fn last_second(&self) -> u64 {
        self.last_second_at(crate::txn::clock::wall_ms() / 1000)
    }

    fn last_second_at(&self, second: u64) -> u64 {
        let s = self.seconds.lock();
        if s.0 == second {
            s.2
        } else if s.0 + 1 == second {
            s.1
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_reports_the_last_whole_second_and_keeps_the_total() {
        let m = Meter::default();
        m.add_at(5, 100);
        m.add_at(7, 100);
        assert_eq!(m.last_second_at(100), 0, "second 100 is not over yet");
        assert_eq!(m.last_second_at(101), 12);
        m.add_at(3, 101);
        assert_eq!(m.last_second_at(101), 12);
        assert_eq!(m.last_second_at(102), 3);
        assert_eq!(m.last_second_at(104), 0, "nothing in second 103");
        m.add_at(1, 110);
        assert_eq!(m.last_second_at(110), 0, "the gap is not carried");
        assert_eq!(m.total(), 16);
    }

    #[test]
    fn low_priority_work_runs_10_nice_steps_lower_and_the_thread_gets_its_priority_back() {
        std::thread::spawn(|| {
            let before = nice();
            let inside = at_low_priority(nice);
            assert_eq!(nice(), before, "the thread's priority is restored");
            // Where the process may raise a priority again (root, or RLIMIT_NICE), the
            // work ran lowered; elsewhere it ran as it was.
            assert!(inside == lowered(before) || inside == before, "{inside}");
        })
        .join()
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_big_work_runs_lowered_and_the_worker_gets_its_priority_back() {
        let before = nice();
        assert_eq!(big_work(false, nice), before, "small work runs as it is");
        let inside = big_work(true, nice);
        assert_eq!(nice(), before, "the worker's priority is restored");
        assert!(inside == lowered(before) || inside == before, "{inside}");
        if inside == before {
            return; // this process may not raise a priority again
        }
        // Outside a multi-threaded runtime there is no worker to hand over: as it is.
        let outside = std::thread::spawn(|| big_work(true, nice)).join().unwrap();
        assert_eq!(outside, before);
    }

    #[test]
    fn cpu_time_is_charged_when_the_guard_drops() {
        let usage = Usage::default();
        {
            let _charge = usage.charge_cpu();
            // Work the optimiser cannot drop, until the thread clock has moved.
            let started = thread_cpu_ns();
            let mut x = 0u64;
            while thread_cpu_ns() == started {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(usage.cpu_ns.total() > 0);
    }
}
