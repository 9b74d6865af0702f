//! How the process uses glibc's allocator: its tunables, set once at start, what it
//! holds ([`heap_stats`], for the node's footprint), and giving the memory freed inside
//! its heaps back to the kernel.
//!
//! The node runs on the system allocator (see the crate doc). glibc keeps freed memory
//! inside its heaps for reuse, and returns it only from the top of a heap or by
//! `malloc_trim`. Under sustained writes the write path frees and allocates buffers of
//! every size on several threads, so the heaps fill with free holes: a node updating
//! the same 100,000 records at 26,000 updates/s grew from 46 to 73 MB of RSS in 14
//! minutes, heaptrack found its live heap well under its RSS, and one `malloc_trim`
//! gave 13 MB back (docs/BENCHMARKS.md, issue 24, fourth part).

use std::time::{Duration, Instant};

/// Allocations from this size on get pages of their own from the kernel, given back
/// when freed. See [`tune`].
pub const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// How often [`give_back`] runs from the node's upkeep.
pub const GIVE_BACK_EVERY: Duration = Duration::from_secs(10);

/// Set glibc malloc's mmap threshold to [`MMAP_THRESHOLD_BYTES`], before anything else
/// allocates. glibc raises the threshold each time a large block is freed (up to 32
/// MiB), after which request bodies, log reads and snapshot buffers come from the heap
/// and the freed space stays in the process: under 15 minutes of sustained updates a
/// node's RSS kept growing, 92 -> 130 MB; with the threshold fixed at 128 KiB, 74 -> 93
/// MB at the same rates, and a restart after a 1M-record load holds 167 MB instead of
/// 180. Setting the threshold also turns that adjustment off. 256 KiB rather than 128:
/// a 1,000-operation request body (about 150 KB) then stays on the heap, where the
/// lower threshold gave each one fresh pages from the kernel (bulk loads 10-20 % slower
/// in interleaved runs); the restart figure is the same at 256 KiB (168 MB).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// What the allocator holds, as it counts it: the bytes the process has allocated and
/// not freed, and the free bytes kept inside its heaps for reuse (what `malloc_trim`
/// could give back if whole pages of it are free). Beside the RSS they tell live growth
/// from fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Allocated and not yet freed: in the heaps, and in chunks of their own (mmap,
    /// counted at their full size, resident or not).
    pub in_use_bytes: u64,
    /// Free inside the heaps, kept by the allocator (pages of it [`give_back`] returned
    /// to the kernel still count).
    pub free_bytes: u64,
}

/// The allocator's own count ([`HeapStats`]); `None` where the allocator is not glibc's.
/// Walks every heap under its lock (`mallinfo2`): for an occasional look, not a hot
/// path.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads glibc's allocator statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            in_use_bytes: (info.uordblks + info.hblkhd) as u64,
            free_bytes: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Give the free memory inside the allocator's heaps back to the kernel
/// (`malloc_trim(0)`); returns how long it took. It walks every heap under that heap's
/// lock, so a thread allocating meanwhile waits: call it off the async runtime, and
/// rarely ([`GIVE_BACK_EVERY`]).
pub fn give_back() -> Duration {
    let started = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of glibc's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
    started.elapsed()
}
