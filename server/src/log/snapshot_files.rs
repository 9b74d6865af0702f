//! Where a snapshot's block bytes live: a sled instance of their own per snapshot, in
//! `<shard>/snapshots/<serial>`, opened only while the snapshot is written or read.
//!
//! The parts used to sit in the shard's own `snapshots` tree, and sled kept them in
//! memory long after they were written or read. sled 0.34 charges a page to its cache
//! only once 64 accesses have queued in that page's LRU shard (one of 256), so up to
//! 16k pages per instance are never evicted whatever `cache_capacity` says: after a
//! 1M-record load the node held the whole 130 MB snapshot it had just written, and a
//! restart that listed the snapshots read every part and kept 140 MB of them
//! (docs/BENCHMARKS.md, heaptrack). An instance that is closed when the snapshot is
//! written or loaded gives all of that back, and deleting a snapshot removes its
//! directory, so its disk space comes back at once rather than when sled cleans its
//! segments.
//!
//! A snapshot is written into `<serial>.tmp`, flushed, closed, and renamed to
//! `<serial>` (the directory is fsynced); only then does [`super::LogStore`] write its
//! metadata, the commit point. A crash before leaves a `.tmp` directory or a directory
//! without metadata, which [`super::LogStore::drop_unfinished_snapshots`] removes.
//! Keys are the part numbers (4 bytes, big-endian), so the parts read back in order.

use std::path::{Path, PathBuf};

use super::durable::{sled_config, LogError};

/// sled's page cache for a snapshot's instance: it is read and written in order, once.
const CACHE_BYTES: u64 = 1 << 20;

/// The folder of a shard's snapshot instances.
pub(super) fn folder(shard: &Path) -> PathBuf {
    shard.join("snapshots")
}

fn dir(shard: &Path, serial: u64) -> PathBuf {
    folder(shard).join(serial.to_string())
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::Sled(format!("cannot {what} {}: {e}", path.display()))
}

fn open(path: &Path) -> Result<sled::Db, LogError> {
    sled_config(path, CACHE_BYTES)
        .flush_every_ms(None)
        .open()
        .map_err(|e| {
            LogError::Sled(format!(
                "cannot open the snapshot at {}: {e}",
                path.display()
            ))
        })
}

/// Writes one snapshot's parts; [`Writer::finish`] makes them durable under the
/// snapshot's final name.
pub(super) struct Writer {
    db: sled::Db,
    tmp: PathBuf,
    done: PathBuf,
    parts: u32,
}

impl Writer {
    /// A new instance for snapshot `serial` of the shard at `shard` (what a crashed
    /// earlier attempt left under the same name is removed first).
    pub(super) fn create(shard: &Path, serial: u64) -> Result<Writer, LogError> {
        let done = dir(shard, serial);
        let tmp = done.with_extension("tmp");
        for stale in [&tmp, &done] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| io_error("remove", stale, e))?;
            }
        }
        std::fs::create_dir_all(folder(shard))
            .map_err(|e| io_error("create", &folder(shard), e))?;
        Ok(Writer {
            db: open(&tmp)?,
            tmp,
            done,
            parts: 0,
        })
    }

    /// Store the next part; returns its number.
    pub(super) fn push(&mut self, part: Vec<u8>) -> Result<u32, LogError> {
        let number = self.parts;
        self.db.insert(number.to_be_bytes(), part)?;
        self.parts += 1;
        Ok(number)
    }

    /// Make what was pushed durable (the writer paces itself with this).
    pub(super) fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }

    /// Flush, close, and give the snapshot its final name durably. Returns its parts.
    pub(super) fn finish(self) -> Result<u32, LogError> {
        self.db.flush()?;
        let Writer {
            db,
            tmp,
            done,
            parts,
        } = self;
        drop(db);
        std::fs::rename(&tmp, &done).map_err(|e| io_error("rename", &tmp, e))?;
        let parent = done.parent().unwrap_or(&done);
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("sync", parent, e))?;
        Ok(parts)
    }
}

/// Each of the `parts` parts of snapshot `serial`, in order. The instance is closed
/// when this returns.
pub(super) fn read(
    shard: &Path,
    serial: u64,
    parts: u32,
    mut visit: impl FnMut(&[u8]) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let path = dir(shard, serial);
    if !path.is_dir() {
        return Err(LogError::Damaged(format!(
            "snapshot {serial} has no files at {}",
            path.display()
        )));
    }
    let db = open(&path)?;
    let mut expected = 0u32;
    for item in db.iter() {
        let (key, bytes) = item?;
        if key.as_ref() != expected.to_be_bytes() {
            return Err(LogError::Damaged(format!(
                "snapshot {serial} misses part {expected}"
            )));
        }
        visit(&bytes)?;
        expected += 1;
    }
    if expected != parts {
        return Err(LogError::Damaged(format!(
            "snapshot {serial} has {expected} of its {parts} parts"
        )));
    }
    Ok(())
}

/// Whether snapshot `serial`'s instance exists under its final name.
pub(super) fn exists(shard: &Path, serial: u64) -> bool {
    dir(shard, serial).is_dir()
}

/// Remove snapshot `serial`'s instance, if there is one.
pub(super) fn remove(shard: &Path, serial: u64) -> Result<(), LogError> {
    let path = dir(shard, serial);
    match std::fs::remove_dir_all(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", &path, e)),
        _ => Ok(()),
    }
}

/// Remove every instance that is not a finished snapshot in `keep` (a `.tmp` one, or
/// one whose metadata was never written). Returns how many went.
pub(super) fn remove_others(
    shard: &Path,
    keep: &std::collections::HashSet<u64>,
) -> Result<usize, LogError> {
    let folder = folder(shard);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("list", &folder, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", &folder, e))?;
        let name = entry.file_name();
        let finished = name
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|serial| keep.contains(&serial));
        if !finished {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| io_error("remove", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}
