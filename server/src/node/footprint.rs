//! What the node costs the machine (issue 24: a node many tenants share): its resident
//! memory, the bytes under its data directory, and the parts of the memory it can name
//! (its databases' blocks and indexes, the most sled's cache may hold, the logs'
//! unflushed bytes), for `GET /v1/node` and `/metrics`. Side by side they show how much
//! of the RSS is data and how much is overhead the node cannot name (allocator slack,
//! sled's own structures).

use std::path::Path;

use super::Node;

/// The node's memory and disk, measured when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Footprint {
    /// Resident memory of the process (`VmRSS`); `None` where `/proc` has none.
    pub rss_bytes: Option<u64>,
    /// Sum of the sizes of the files under the data directory.
    pub data_dir_bytes: u64,
    /// Bytes of blocks in RAM over every tenant's databases.
    pub blocks_bytes: u64,
    /// Bytes of their location tables and directories (estimated from their sizes).
    pub index_bytes: u64,
    /// The most sled's page cache may hold: the node's one instance (config, plugins,
    /// audit; databases keep their logs and snapshots in files).
    pub sled_cache_limit_bytes: u64,
    /// Bytes logged and not yet flushed, over every database.
    pub log_backlog_bytes: u64,
    /// Bytes the process has allocated and not freed, as the allocator counts them
    /// (blocks, indexes, buffers, sled's structures: everything on the heap; a large
    /// allocation with pages of its own counts in full, touched or not); `None` where
    /// the allocator does not say.
    pub heap_in_use_bytes: Option<u64>,
    /// Free bytes the allocator keeps inside its heaps for reuse, holding no data
    /// (fragmentation; pages of it the periodic trim gave back count too, though no
    /// longer resident); `None` where the allocator does not say.
    pub heap_free_bytes: Option<u64>,
}

impl Node {
    /// Measure the footprint. Walks the data directory, so blocking and not free:
    /// meant for an operator's or a scraper's occasional look.
    pub fn footprint(&self) -> Footprint {
        let databases = self.all_databases();
        let heap = crate::memory::heap_stats();
        Footprint {
            rss_bytes: rss_bytes(),
            data_dir_bytes: dir_bytes(&self.data_dir),
            blocks_bytes: databases.iter().map(|db| db.memory_bytes()).sum(),
            index_bytes: databases.iter().map(|db| db.index_bytes()).sum(),
            sled_cache_limit_bytes: self.settings.sled_cache_bytes,
            log_backlog_bytes: databases.iter().map(|db| db.log_backlog()).sum(),
            heap_in_use_bytes: heap.map(|h| h.in_use_bytes),
            heap_free_bytes: heap.map(|h| h.free_bytes),
        }
    }
}

/// This process's resident memory from `/proc/self/status` (Linux).
fn rss_bytes() -> Option<u64> {
    process_rss_bytes("self")
}

/// A process's resident memory from `/proc/PID/status` (`pid`: a number or `self`);
/// `None` once the process is gone or where `/proc` has none.
pub fn process_rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:   1234 kB` line of a `/proc/PID/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sum of the file sizes under `dir`. sled creates and removes files while this walks,
/// so whatever vanishes in between counts as nothing rather than failing the count.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tdoppel\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn a_directory_counts_the_files_of_its_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 123);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn a_node_counts_its_blocks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path(), Default::default()).unwrap();
        let f = node.footprint();
        assert_eq!(f.blocks_bytes, 0);
        assert!(f.data_dir_bytes > 0, "{f:?}");
        #[cfg(target_os = "linux")]
        assert!(f.rss_bytes.unwrap_or(0) > 0, "{f:?}");
    }
}
