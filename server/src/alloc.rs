//! The process's memory allocator: mimalloc for every allocation under
//! [`LARGE_BYTES`], the system allocator for larger ones.
//!
//! mimalloc is fast where the write path allocates per record from several threads
//! (glibc malloc spent a quarter of the CPU there). But it made every large zeroed
//! allocation resident at once: sled's page table is 6 MiB of zeroes per instance, and
//! with one instance per database a node's RSS grew by 7 MB per database (50 databases:
//! 56 -> 398 MB) where the system allocator, which maps large blocks fresh from the
//! kernel, grew by 0.25 MB each (docs/BENCHMARKS.md). Large allocations are few (tables,
//! big request bodies, snapshot buffers), so sending them to the system allocator costs
//! nothing measurable, and they go back to the kernel when freed.
//!
//! Which allocator owns a block follows from its layout's size alone, which `dealloc`
//! and `realloc` are given, so no bookkeeping is needed; a `realloc` across the
//! boundary moves the block.

use std::alloc::{GlobalAlloc, Layout, System};

/// From this size on, allocations go to the system allocator.
pub const LARGE_BYTES: usize = 1 << 20;

/// See the module doc.
pub struct SplitAlloc;

static SMALL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn is_large(size: usize) -> bool {
    size >= LARGE_BYTES
}

// SAFETY: every block is allocated and freed by the same allocator, chosen by the
// layout's size, which the caller passes unchanged to `dealloc` and `realloc`.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc(layout)
        } else {
            SMALL.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            SMALL.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            System.dealloc(ptr, layout)
        } else {
            SMALL.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            (true, true) => System.realloc(ptr, layout, new_size),
            (false, false) => SMALL.realloc(ptr, layout, new_size),
            _ => {
                // SAFETY: the caller guarantees `new_size` with `layout`'s alignment is
                // a valid layout.
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blocks_keep_their_bytes_across_the_boundary_both_ways() {
        let mut v: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        // Grow past the boundary (small -> large), then shrink back (large -> small).
        v.resize(super::LARGE_BYTES + 4096, 7);
        assert!(v[..1000].iter().enumerate().all(|(i, b)| *b == i as u8));
        assert_eq!(v[super::LARGE_BYTES], 7);
        v.truncate(500);
        v.shrink_to_fit();
        assert!(v.iter().enumerate().all(|(i, b)| *b == i as u8));
        // A large zeroed block reads as zeroes.
        let zeroes = vec![0u64; super::LARGE_BYTES];
        assert!(zeroes.iter().all(|z| *z == 0));
    }
}
