//! Where a snapshot's block bytes live: one file per snapshot, `<shard>/snapshots/<serial>.snap`,
//! written once in order and read once in order.
//!
//! A file is [`FILE_MAGIC`], then each part as `length (u32 LE) | bytes`. A part is a run
//! of whole packed blocks (up to `SNAPSHOT_PART_BYTES`, in `durable.rs`).
//!
//! Why a plain file. Snapshots first sat in the shard's sled tree, then in a sled
//! instance of their own per snapshot, and sled kept what it wrote and read in memory:
//! after a 1M-record load the node held the 143 MB snapshot it had just written and
//! sled's sealed IO buffers, about 270 MB of RSS (docs/BENCHMARKS.md, issue 24), and
//! sled's pages took 1.5× the blocks on disk. A file costs the blocks' bytes on disk and
//! one part's buffer in memory; the kernel's page cache, not the process, holds what was
//! read. Snapshots written by an earlier build as sled instances (`<serial>/`, a
//! directory) are still read ([`read`]) and removed as before; new ones are files.
//!
//! A snapshot is written into `<serial>.snap.tmp`, synced, and renamed to
//! `<serial>.snap` (the directory is fsynced); only then does [`super::LogStore`] write
//! its metadata, the commit point. A crash before leaves a `.tmp` file or a file without
//! metadata, which [`super::LogStore::drop_unfinished_snapshots`] removes.
//!
//! Checksums: the writer takes each part's xxh3, and the metadata is stored with them
//! ([`encode_meta`]): the metadata's postcard bytes, the parts' checksums, then the
//! xxh3 of all of that and [`SUMS_MAGIC`]. [`read`] checks every part
//! against its sum and [`decode_meta`] the metadata against its own, so a flipped byte
//! anywhere in a snapshot is named (snapshot, part, path) instead of being served. A
//! metadata value without the footer was written before checksums and still reads,
//! unchecked; a node from before checksums reads the new values too (postcard stops
//! at the end of the metadata).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::durable::{sled_config, LogError, SnapshotMeta};

/// The first 8 bytes of a snapshot file.
const FILE_MAGIC: &[u8; 8] = b"dpsnap\x00\x01";

/// The largest part a reader accepts: a damaged length must not make it allocate
/// gigabytes (parts are written at 256 KiB).
const MAX_PART_BYTES: usize = 64 << 20;

/// sled's page cache for a snapshot written as an instance by an earlier build: it is
/// read in order, once.
const LEGACY_CACHE_BYTES: u64 = 1 << 20;

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

/// The folder of a shard's snapshots.
pub(super) fn folder(shard: &Path) -> PathBuf {
    shard.join("snapshots")
}

/// Snapshot `serial`'s file.
pub(super) fn file(shard: &Path, serial: u64) -> PathBuf {
    folder(shard).join(format!("{serial}.snap"))
}

/// Snapshot `serial`'s sled instance, as an earlier build wrote it.
fn legacy_dir(shard: &Path, serial: u64) -> PathBuf {
    folder(shard).join(serial.to_string())
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::io(format!("cannot {what} {}", path.display()), &e)
}

/// Make a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

/// Writes one snapshot's parts; [`Writer::finish`] makes them durable under the
/// snapshot's final name.
pub(super) struct Writer {
    out: BufWriter<File>,
    tmp: PathBuf,
    done: PathBuf,
    /// xxh3 of each part pushed.
    sums: Vec<u64>,
}

impl Writer {
    /// A new file for snapshot `serial` of the shard at `shard` (what a crashed
    /// earlier attempt left under the same name is removed first).
    pub(super) fn create(shard: &Path, serial: u64) -> Result<Writer, LogError> {
        let done = file(shard, serial);
        let tmp = done.with_extension("snap.tmp");
        remove(shard, serial)?;
        let folder = folder(shard);
        std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
        let created = File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, created);
        out.write_all(FILE_MAGIC)
            .map_err(|e| io_error("write", &tmp, e))?;
        Ok(Writer {
            out,
            tmp,
            done,
            sums: Vec::new(),
        })
    }

    /// Append the next part; returns its number.
    pub(super) fn push(&mut self, part: &[u8]) -> Result<u32, LogError> {
        let number = self.sums.len() as u32;
        self.sums.push(xxh3_64(part));
        let len = u32::try_from(part.len()).expect("a part is far below 4 GiB");
        self.out
            .write_all(&len.to_le_bytes())
            .and_then(|()| self.out.write_all(part))
            .map_err(|e| io_error("write", &self.tmp, e))?;
        Ok(number)
    }

    /// Make what was pushed durable (the writer paces itself with this, so the data it
    /// leaves for the kernel to write stays small ahead of other databases' fsyncs).
    pub(super) fn flush(&mut self) -> Result<(), LogError> {
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(|e| io_error("sync", &self.tmp, e))
    }

    /// Sync, close, and give the snapshot its final name durably. Returns the checksum
    /// of each of its parts.
    pub(super) fn finish(mut self) -> Result<Vec<u64>, LogError> {
        self.flush()?;
        let Writer {
            out,
            tmp,
            done,
            sums,
        } = self;
        drop(out);
        std::fs::rename(&tmp, &done).map_err(|e| io_error("rename", &tmp, e))?;
        sync_dir(done.parent().unwrap_or(&done))?;
        Ok(sums)
    }
}

/// Each of the `parts` parts of snapshot `serial`, in order, each checked against its
/// checksum in `sums` when the snapshot has them.
pub(super) fn read(
    shard: &Path,
    serial: u64,
    parts: u32,
    sums: Option<&[u64]>,
    mut visit: impl FnMut(&[u8]) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let path = file(shard, serial);
    let check = |number: u32, bytes: &[u8], path: &Path| -> Result<(), LogError> {
        if let Some(&stored) = sums.and_then(|s| s.get(number as usize)) {
            let computed = xxh3_64(bytes);
            if computed != stored {
                return Err(LogError::Damaged(format!(
                    "snapshot {serial}: part {number} in {} fails its checksum \
                     (stored {stored:016x}, read {computed:016x})",
                    path.display()
                )));
            }
        }
        Ok(())
    };
    let opened = match File::open(&path) {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let legacy = legacy_dir(shard, serial);
            if legacy.is_dir() {
                return read_legacy(&legacy, serial, parts, check, visit);
            }
            return Err(LogError::Damaged(format!(
                "snapshot {serial} has no file at {}",
                path.display()
            )));
        }
        Err(e) => return Err(io_error("open", &path, e)),
    };
    let short = |read: u32, what: &str| {
        LogError::Damaged(format!(
            "snapshot {serial} has {read} of its {parts} parts readable in {} ({what})",
            path.display()
        ))
    };
    let mut input = BufReader::with_capacity(1 << 20, opened);
    let mut magic = [0u8; 8];
    if input.read_exact(&mut magic).is_err() || &magic != FILE_MAGIC {
        return Err(short(0, "it does not start as a snapshot file"));
    }
    let mut bytes = Vec::new();
    for number in 0..parts {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            return Err(short(number, "the file ends early"));
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_PART_BYTES {
            return Err(short(number, &format!("part {number} claims {len} bytes")));
        }
        bytes.resize(len, 0);
        if input.read_exact(&mut bytes).is_err() {
            return Err(short(number, "the file ends early"));
        }
        check(number, &bytes, &path)?;
        visit(&bytes)?;
    }
    if input
        .read(&mut [0u8; 1])
        .map_err(|e| io_error("read", &path, e))?
        != 0
    {
        return Err(LogError::Damaged(format!(
            "snapshot {serial}: {} holds more than its {parts} parts",
            path.display()
        )));
    }
    Ok(())
}

/// [`read`] of a snapshot an earlier build wrote as a sled instance of its own (keys
/// are the part numbers, 4 bytes big-endian). The instance is closed when this returns.
fn read_legacy(
    path: &Path,
    serial: u64,
    parts: u32,
    check: impl Fn(u32, &[u8], &Path) -> Result<(), LogError>,
    mut visit: impl FnMut(&[u8]) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let db = sled_config(path, LEGACY_CACHE_BYTES)
        .flush_every_ms(None)
        .open()
        .map_err(|e| {
            LogError::Sled(format!(
                "cannot open the snapshot at {}: {e}",
                path.display()
            ))
        })?;
    let mut expected = 0u32;
    for item in db.iter() {
        let (key, bytes) = item?;
        if key.as_ref() != expected.to_be_bytes() {
            return Err(LogError::Damaged(format!(
                "snapshot {serial} misses part {expected}"
            )));
        }
        check(expected, &bytes, path)?;
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

/// Whether snapshot `serial` is stored under its final name (a file, or an earlier
/// build's instance).
pub(super) fn exists(shard: &Path, serial: u64) -> bool {
    file(shard, serial).is_file() || legacy_dir(shard, serial).is_dir()
}

/// Where a damaged snapshot is kept for inspection, out of the way of
/// [`remove_others`].
pub(super) fn damaged_folder(shard: &Path) -> PathBuf {
    shard.join("damaged-snapshots")
}

/// Move snapshot `serial` into [`damaged_folder`]; returns where it went (`None`: it
/// had no file).
pub(super) fn set_aside(shard: &Path, serial: u64) -> Result<Option<PathBuf>, LogError> {
    let (from, name) = if file(shard, serial).is_file() {
        (file(shard, serial), format!("{serial}.snap"))
    } else if legacy_dir(shard, serial).is_dir() {
        (legacy_dir(shard, serial), serial.to_string())
    } else {
        return Ok(None);
    };
    let folder = damaged_folder(shard);
    std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
    let mut to = folder.join(&name);
    let mut n = 1;
    while to.exists() {
        to = folder.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to).map_err(|e| io_error("move", &from, e))?;
    Ok(Some(to))
}

/// Remove a file or a directory tree, if it is there.
fn remove_path(path: &Path) -> Result<(), LogError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", path, e)),
        _ => Ok(()),
    }
}

/// Remove snapshot `serial`'s file (or instance), and what an unfinished write of it
/// left, if there is any.
pub(super) fn remove(shard: &Path, serial: u64) -> Result<(), LogError> {
    let done = file(shard, serial);
    for path in [
        done.with_extension("snap.tmp"),
        done,
        legacy_dir(shard, serial),
        legacy_dir(shard, serial).with_extension("tmp"),
    ] {
        remove_path(&path)?;
    }
    Ok(())
}

/// The serial a finished snapshot's name in [`folder`] stands for: `<serial>.snap`, or
/// an earlier build's instance `<serial>`.
fn finished_serial(name: &str) -> Option<u64> {
    name.strip_suffix(".snap").unwrap_or(name).parse().ok()
}

/// Remove every file or instance that is not a finished snapshot in `keep` (a `.tmp`
/// one, or one whose metadata was never written). Returns how many went.
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
        let finished = entry
            .file_name()
            .to_str()
            .and_then(finished_serial)
            .is_some_and(|serial| keep.contains(&serial));
        if !finished {
            remove_path(&entry.path())?;
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

    /// Write a snapshot of two parts at serial 42; returns their checksums.
    fn two_parts(shard: &Path) -> Vec<u64> {
        let mut writer = Writer::create(shard, 42).unwrap();
        writer.push(&[1; 4096]).unwrap();
        writer.push(&[2; 4096]).unwrap();
        writer.finish().unwrap()
    }

    fn read_all(shard: &Path, sums: Option<&[u64]>) -> Result<Vec<Vec<u8>>, String> {
        let mut parts = Vec::new();
        read(shard, 42, 2, sums, |bytes| {
            parts.push(bytes.to_vec());
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(parts)
    }

    #[test]
    fn a_snapshot_is_one_file_of_its_parts_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let sums = two_parts(dir.path());
        assert!(exists(dir.path(), 42));
        let files: Vec<_> = std::fs::read_dir(folder(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec!["42.snap"], "no .tmp left behind");
        let len = std::fs::metadata(file(dir.path(), 42)).unwrap().len();
        assert_eq!(
            len,
            8 + 2 * (4 + 4096),
            "the blocks' bytes and a length each"
        );
        assert_eq!(
            read_all(dir.path(), Some(&sums)).unwrap(),
            vec![vec![1; 4096], vec![2; 4096]]
        );
        remove(dir.path(), 42).unwrap();
        assert!(!exists(dir.path(), 42));
    }

    #[test]
    fn a_flipped_byte_in_a_part_is_named_with_its_part_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let sums = two_parts(dir.path());
        let path = file(dir.path(), 42);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8 + 4 + 4096 + 4 + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_all(dir.path(), Some(&sums)).unwrap_err();
        assert!(
            err.contains("snapshot 42: part 1 in ") && err.contains("fails its checksum"),
            "{err}"
        );
        // Without checksums (a snapshot from before them) the same read passes.
        read_all(dir.path(), None).unwrap();
    }

    #[test]
    fn a_cut_or_lengthened_file_is_damage_not_a_shorter_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let sums = two_parts(dir.path());
        let path = file(dir.path(), 42);
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 5, 8 + 2, 8 + 4 + 4096, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let err = read_all(dir.path(), Some(&sums)).unwrap_err();
            assert!(err.contains("parts readable in"), "cut at {cut}: {err}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let err = read_all(dir.path(), Some(&sums)).unwrap_err();
        assert!(err.contains("holds more than its 2 parts"), "{err}");
        let mut huge = whole;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let err = read_all(dir.path(), Some(&sums)).unwrap_err();
        assert!(err.contains("part 0 claims"), "{err}");
    }

    #[test]
    fn a_snapshot_an_earlier_build_wrote_as_a_sled_instance_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let instance = legacy_dir(dir.path(), 42);
        let sums = {
            let db = sled_config(&instance, LEGACY_CACHE_BYTES).open().unwrap();
            db.insert(0u32.to_be_bytes(), vec![1; 4096]).unwrap();
            db.insert(1u32.to_be_bytes(), vec![2; 4096]).unwrap();
            db.flush().unwrap();
            vec![xxh3_64(&[1; 4096]), xxh3_64(&[2; 4096])]
        };
        assert!(exists(dir.path(), 42));
        assert_eq!(
            read_all(dir.path(), Some(&sums)).unwrap(),
            vec![vec![1; 4096], vec![2; 4096]]
        );
        let wrong = [sums[0], 7];
        let err = read_all(dir.path(), Some(&wrong)).unwrap_err();
        assert!(
            err.contains("part 1 in ") && err.contains("fails its checksum"),
            "{err}"
        );
        // A leftover `.tmp`, a file without metadata and the kept instance: only the
        // kept one stays.
        std::fs::write(folder(dir.path()).join("43.snap.tmp"), b"x").unwrap();
        std::fs::write(folder(dir.path()).join("44.snap"), b"x").unwrap();
        let keep = std::collections::HashSet::from([42]);
        assert_eq!(remove_others(dir.path(), &keep).unwrap(), 2);
        assert!(exists(dir.path(), 42));
        let moved = set_aside(dir.path(), 42).unwrap().unwrap();
        assert!(moved.is_dir() && !exists(dir.path(), 42));
    }
}
