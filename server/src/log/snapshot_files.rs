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
//!
//! Checksums: the writer takes each part's xxh3, and the metadata is stored with them
//! ([`encode_meta`]): the metadata's postcard bytes, the parts' checksums, then the
//! xxh3 of all of that and [`SUMS_MAGIC`]. [`read`] checks every part
//! against its sum and [`decode_meta`] the metadata against its own, so a flipped byte
//! anywhere in a snapshot is named (snapshot, part, path) instead of being served. A
//! metadata value without the footer was written before checksums and still reads,
//! unchecked; a node from before checksums reads the new values too (postcard stops
//! at the end of the metadata).

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::durable::{sled_config, LogError, SnapshotMeta};

/// sled's page cache for a snapshot's instance: it is read and written in order, once.
const CACHE_BYTES: u64 = 1 << 20;

/// The last 8 bytes of a snapshot's metadata stored with checksums.
const SUMS_MAGIC: &[u8; 8] = b"dpsnxh3\x01";

/// A snapshot's metadata as stored: `meta`'s postcard bytes, the checksum of each of
/// its parts (`parts`, in order, as [`Writer::finish`] returned them; postcard) and
/// their length (u32 LE), then the xxh3 of all of that (u64 LE) and [`SUMS_MAGIC`].
pub(super) fn encode_meta(meta: &SnapshotMeta, parts: &[u64]) -> Result<Vec<u8>, LogError> {
    let encode = |e: postcard::Error| LogError::Damaged(format!("cannot encode a snapshot: {e}"));
    let mut out = postcard::to_allocvec(meta).map_err(encode)?;
    let sums = postcard::to_allocvec(parts).map_err(encode)?;
    out.extend_from_slice(&sums);
    out.extend_from_slice(&(sums.len() as u32).to_le_bytes());
    let whole = xxh3_64(&out);
    out.extend_from_slice(&whole.to_le_bytes());
    out.extend_from_slice(SUMS_MAGIC);
    Ok(out)
}

/// Decode snapshot `serial`'s stored metadata, checking it against its checksum.
/// Returns it with its parts' checksums (`None`: written before checksums).
pub(super) fn decode_meta(
    serial: u64,
    bytes: &[u8],
) -> Result<(SnapshotMeta, Option<Vec<u64>>), LogError> {
    let damaged = |what: String| LogError::Damaged(format!("snapshot {serial}: {what}"));
    let (meta_bytes, sums) = match bytes.strip_suffix(SUMS_MAGIC.as_slice()) {
        Some(rest) if rest.len() >= 12 => {
            let (body, stored) = rest.split_at(rest.len() - 8);
            let stored = u64::from_le_bytes(stored.try_into().expect("8 bytes"));
            let computed = xxh3_64(body);
            if computed != stored {
                return Err(damaged(format!(
                    "its metadata fails its checksum (stored {stored:016x}, computed {computed:016x})"
                )));
            }
            let (body, len) = body.split_at(body.len() - 4);
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            if len > body.len() {
                return Err(damaged(format!(
                    "its metadata's checksums claim {len} of its {} bytes",
                    body.len()
                )));
            }
            let (meta_bytes, sums) = body.split_at(body.len() - len);
            let sums: Vec<u64> = postcard::from_bytes(sums)
                .map_err(|e| damaged(format!("its part checksums do not decode: {e}")))?;
            (meta_bytes, Some(sums))
        }
        _ => (bytes, None),
    };
    let (meta, rest): (SnapshotMeta, _) = postcard::take_from_bytes(meta_bytes)
        .map_err(|e| damaged(format!("its metadata does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(damaged(format!(
            "{} bytes follow its metadata that are not its checksums",
            rest.len()
        )));
    }
    if meta.serial != serial {
        return Err(damaged(format!(
            "its metadata names serial {}",
            meta.serial
        )));
    }
    if let Some(sums) = &sums {
        if sums.len() != meta.parts as usize {
            return Err(damaged(format!(
                "{} part checksums for {} parts",
                sums.len(),
                meta.parts
            )));
        }
    }
    Ok((meta, sums))
}

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
    /// xxh3 of each part pushed.
    sums: Vec<u64>,
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
            sums: Vec::new(),
        })
    }

    /// Store the next part; returns its number.
    pub(super) fn push(&mut self, part: Vec<u8>) -> Result<u32, LogError> {
        let number = self.parts;
        self.sums.push(xxh3_64(&part));
        self.db.insert(number.to_be_bytes(), part)?;
        self.parts += 1;
        Ok(number)
    }

    /// Make what was pushed durable (the writer paces itself with this).
    pub(super) fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }

    /// Flush, close, and give the snapshot its final name durably. Returns the
    /// checksum of each of its parts.
    pub(super) fn finish(self) -> Result<Vec<u64>, LogError> {
        self.db.flush()?;
        let Writer {
            db,
            tmp,
            done,
            parts,
            sums,
        } = self;
        debug_assert_eq!(sums.len(), parts as usize);
        drop(db);
        std::fs::rename(&tmp, &done).map_err(|e| io_error("rename", &tmp, e))?;
        let parent = done.parent().unwrap_or(&done);
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("sync", parent, e))?;
        Ok(sums)
    }
}

/// Each of the `parts` parts of snapshot `serial`, in order, each checked against its
/// checksum in `sums` when the snapshot has them. The instance is closed when this
/// returns.
pub(super) fn read(
    shard: &Path,
    serial: u64,
    parts: u32,
    sums: Option<&[u64]>,
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
        if let Some(&stored) = sums.and_then(|s| s.get(expected as usize)) {
            let computed = xxh3_64(&bytes);
            if computed != stored {
                return Err(LogError::Damaged(format!(
                    "snapshot {serial}: part {expected} in {} fails its checksum \
                     (stored {stored:016x}, read {computed:016x})",
                    path.display()
                )));
            }
        }
        visit(&bytes)?;
        expected += 1;
    }
    if expected != parts {
        return Err(LogError::Damaged(format!(
            "snapshot {serial} has {expected} of its {parts} parts readable in {} \
             (its files are damaged or incomplete)",
            path.display()
        )));
    }
    Ok(())
}

/// Whether snapshot `serial`'s instance exists under its final name.
pub(super) fn exists(shard: &Path, serial: u64) -> bool {
    dir(shard, serial).is_dir()
}

/// Where a damaged snapshot's instance is kept for inspection, out of the way of
/// [`remove_others`].
pub(super) fn damaged_folder(shard: &Path) -> PathBuf {
    shard.join("damaged-snapshots")
}

/// Move snapshot `serial`'s instance into [`damaged_folder`]; returns where it went
/// (`None`: it had no instance).
pub(super) fn set_aside(shard: &Path, serial: u64) -> Result<Option<PathBuf>, LogError> {
    let from = dir(shard, serial);
    if !from.is_dir() {
        return Ok(None);
    }
    let folder = damaged_folder(shard);
    std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
    let mut to = folder.join(serial.to_string());
    let mut n = 1;
    while to.exists() {
        to = folder.join(format!("{serial}.{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to).map_err(|e| io_error("move", &from, e))?;
    Ok(Some(to))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(serial: u64, parts: u32) -> SnapshotMeta {
        let spec = crate::node::gate::testing::spec("shop");
        let store = crate::store::Store::new(spec.schema(), 512, 1 << 20);
        SnapshotMeta {
            serial,
            next_txn: 9,
            created_ms: 1_700_000_000_000,
            parts,
            size_bytes: 0,
            layout: store.snapshot_parts().0,
        }
    }

    #[test]
    fn metadata_reads_back_with_its_part_checksums() {
        let stored = encode_meta(&meta(42, 2), &[7, 8]).unwrap();
        let (read, sums) = decode_meta(42, &stored).unwrap();
        assert_eq!(read, meta(42, 2));
        assert_eq!(sums, Some(vec![7, 8]));
    }

    #[test]
    fn metadata_written_before_checksums_still_reads() {
        let legacy = postcard::to_allocvec(&meta(42, 3)).unwrap();
        let (read, sums) = decode_meta(42, &legacy).unwrap();
        assert_eq!(read, meta(42, 3));
        assert_eq!(sums, None, "nothing to check its parts against");
        // And a node from before checksums reads the new form (it stops at the end of
        // the metadata).
        let stored = encode_meta(&meta(42, 1), &[5]).unwrap();
        let old_reader: SnapshotMeta = postcard::from_bytes(&stored).unwrap();
        assert_eq!(old_reader, meta(42, 1));
    }

    #[test]
    fn every_flipped_byte_of_the_metadata_is_caught() {
        let stored = encode_meta(&meta(42, 2), &[7, 8]).unwrap();
        for at in 0..stored.len() {
            let mut bad = stored.clone();
            bad[at] ^= 0x10;
            let err = match decode_meta(42, &bad) {
                Err(e) => e.to_string(),
                Ok(read) => panic!("byte {at} flipped read as {read:?}"),
            };
            assert!(err.contains("snapshot 42"), "byte {at}: {err}");
        }
    }

    #[test]
    fn a_flipped_byte_in_a_part_is_named_with_its_part_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::create(dir.path(), 42).unwrap();
        writer.push(vec![1; 4096]).unwrap();
        writer.push(vec![2; 4096]).unwrap();
        let sums = writer.finish().unwrap();
        let mut seen = 0;
        read(dir.path(), 42, 2, Some(&sums), |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 2);
        {
            let db = open(&dir.path().join("snapshots").join("42")).unwrap();
            let mut part = db.get(1u32.to_be_bytes()).unwrap().unwrap().to_vec();
            part[100] ^= 1;
            db.insert(1u32.to_be_bytes(), part).unwrap();
            db.flush().unwrap();
        }
        let err = read(dir.path(), 42, 2, Some(&sums), |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("snapshot 42: part 1 in ") && err.contains("fails its checksum"),
            "{err}"
        );
        // Without checksums (a snapshot from before them) the same read passes.
        read(dir.path(), 42, 2, None, |_| Ok(())).unwrap();
    }
}
