//! A snapshot on disk: one file per snapshot, `<shard>/snapshots/<serial>.snap`, holding
//! its block bytes and its metadata, written once in order and read once in order.
//!
//! A file is [`FILE_MAGIC`], then each part as `length (u32 LE) | bytes` (a part is a
//! run of whole packed blocks, up to `SNAPSHOT_PART_BYTES` in `durable.rs`), then its
//! trailer: the metadata as [`encode_meta`] stores it, its length (u32 LE) and
//! [`TRAILER_MAGIC`]. [`list`] reads the trailers of the folder's files: the folder is
//! the list of snapshots.
//!
//! Why a plain file. Snapshots first sat in the shard's sled tree, then in a sled
//! instance of their own per snapshot, and sled kept what it wrote and read in memory:
//! after a 1M-record load the node held the 143 MB snapshot it had just written and
//! sled's sealed IO buffers, about 270 MB of RSS (docs/BENCHMARKS.md, issue 24). Their
//! metadata then stayed in a sled instance per database, and under sustained updates
//! that instance was most of what the node's memory grew by (sled kept every metadata
//! value it wrote and its IO buffers: docs/BENCHMARKS.md, issue 24 fifth part). A file
//! costs the blocks' bytes on disk and one part's buffer in memory; the kernel's page
//! cache, not the process, holds what was read. What earlier builds kept in sled is
//! moved into files once, when a shard opens ([`super::sled_migration`]).
//!
//! A snapshot is written into `<serial>.snap.tmp`, synced, and renamed to
//! `<serial>.snap` (the directory is fsynced): the rename is the commit point. A crash
//! before leaves a `.tmp` file, which no listing shows and [`remove_others`] removes.
//! Removing a snapshot is one unlink, made durable by an fsync of the directory.
//!
//! Checksums: the writer takes each part's xxh3, and the metadata is stored with them
//! ([`encode_meta`]): the metadata's postcard bytes, the parts' checksums, then the
//! xxh3 of all of that and [`SUMS_MAGIC`]. [`read`] checks every part against its sum
//! and [`decode_meta`] the metadata against its own, so a flipped byte anywhere in a
//! snapshot is named (snapshot, part, path) instead of being served. Metadata without
//! the checksums was written before them (and moved here from sled as it was): it
//! still reads, unchecked.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::durable::{LogError, SnapshotMeta};

/// The first 8 bytes of a snapshot file.
const FILE_MAGIC: &[u8; 8] = b"dpsnap\x00\x02";

/// The first 8 bytes of a snapshot file an earlier build wrote, whose metadata it kept
/// in sled ([`super::sled_migration`] moves it into a file of this layout).
pub(super) const FILE_MAGIC_V1: &[u8; 8] = b"dpsnap\x00\x01";

/// The last 8 bytes of a snapshot file.
const TRAILER_MAGIC: &[u8; 8] = b"dpsnmeta";

/// The trailer's fixed end: the metadata's length and [`TRAILER_MAGIC`].
const TRAILER_END: u64 = 12;

/// The largest part or metadata a reader accepts: a damaged length must not make it
/// allocate gigabytes (parts are written at 256 KiB).
const MAX_PART_BYTES: usize = 64 << 20;

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

pub(super) fn io_error(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::io(format!("cannot {what} {}", path.display()), &e)
}

/// Make a rename or removal in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

/// Writes one snapshot's file; [`Writer::finish`] makes it durable under the
/// snapshot's final name.
pub(super) struct Writer {
    out: BufWriter<File>,
    tmp: PathBuf,
    done: PathBuf,
    /// xxh3 of each part pushed.
    sums: Vec<u64>,
    /// Bytes of the parts pushed (without their lengths).
    size: u64,
}

impl Writer {
    /// A new file for snapshot `serial` of the shard at `shard`, written as
    /// `<serial>.snap.tmp` (what a crashed earlier attempt left there is overwritten).
    pub(super) fn create(shard: &Path, serial: u64) -> Result<Writer, LogError> {
        let done = file(shard, serial);
        let tmp = done.with_extension("snap.tmp");
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
            size: 0,
        })
    }

    /// Append the next part; returns its number.
    pub(super) fn push(&mut self, part: &[u8]) -> Result<u32, LogError> {
        let number = self.sums.len() as u32;
        self.sums.push(xxh3_64(part));
        self.size += part.len() as u64;
        let len = u32::try_from(part.len()).expect("a part is far below 4 GiB");
        self.write(&len.to_le_bytes())?;
        self.write(part)?;
        Ok(number)
    }

    /// Append bytes as they are: parts already framed by an earlier build's file, moved
    /// with their metadata as it was stored ([`Self::finish_with`]).
    pub(super) fn push_framed(&mut self, framed: &[u8]) -> Result<(), LogError> {
        self.write(framed)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.out
            .write_all(bytes)
            .map_err(|e| io_error("write", &self.tmp, e))
    }

    /// Make what was pushed durable (the writer paces itself with this, so the data it
    /// leaves for the kernel to write stays small ahead of other databases' fsyncs).
    pub(super) fn flush(&mut self) -> Result<(), LogError> {
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(|e| io_error("sync", &self.tmp, e))
    }

    /// Write `meta` (its parts and size as pushed) with the parts' checksums as the
    /// trailer, sync, close, and give the snapshot its final name durably: the snapshot
    /// exists from here on. Returns the metadata stored and the file's bytes.
    pub(super) fn finish(self, mut meta: SnapshotMeta) -> Result<(SnapshotMeta, u64), LogError> {
        meta.parts = self.sums.len() as u32;
        meta.size_bytes = self.size;
        let stored = encode_meta(&meta, &self.sums)?;
        let bytes = self.finish_with(&stored)?;
        Ok((meta, bytes))
    }

    /// [`Self::finish`] with metadata bytes as they were stored elsewhere (moved from
    /// sled as they are, damaged or without checksums, for [`list`] to judge). Returns
    /// the file's bytes.
    pub(super) fn finish_with(mut self, stored_meta: &[u8]) -> Result<u64, LogError> {
        let len = u32::try_from(stored_meta.len())
            .ok()
            .filter(|len| *len as usize <= MAX_PART_BYTES)
            .ok_or_else(|| LogError::Damaged("a snapshot's metadata is too large".into()))?;
        self.write(stored_meta)?;
        self.write(&len.to_le_bytes())?;
        self.write(TRAILER_MAGIC)?;
        self.flush()?;
        let Writer { out, tmp, done, .. } = self;
        let bytes = out
            .get_ref()
            .metadata()
            .map_err(|e| io_error("stat", &tmp, e))?
            .len();
        drop(out);
        std::fs::rename(&tmp, &done).map_err(|e| io_error("rename", &tmp, e))?;
        sync_dir(done.parent().unwrap_or(&done))?;
        Ok(bytes)
    }
}

/// A snapshot file opened for reading, its trailer read.
struct Opened {
    input: BufReader<File>,
    path: PathBuf,
    meta: SnapshotMeta,
    /// The parts' checksums (`None`: metadata from before checksums).
    sums: Option<Vec<u64>>,
    /// Where the parts end and the trailer starts.
    parts_end: u64,
}

/// Open snapshot `serial`'s file and read its metadata from its trailer.
fn open(shard: &Path, serial: u64) -> Result<Opened, LogError> {
    let path = file(shard, serial);
    let damaged =
        |what: String| LogError::Damaged(format!("snapshot {serial}: {} {what}", path.display()));
    let opened = match File::open(&path) {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LogError::Damaged(format!(
                "snapshot {serial} has no file at {}",
                path.display()
            )))
        }
        Err(e) => return Err(io_error("open", &path, e)),
    };
    let bytes = opened
        .metadata()
        .map_err(|e| io_error("stat", &path, e))?
        .len();
    let mut input = BufReader::with_capacity(1 << 20, opened);
    let mut magic = [0u8; 8];
    if input.read_exact(&mut magic).is_err() || &magic != FILE_MAGIC {
        return Err(damaged("does not start as a snapshot file".into()));
    }
    let short = || damaged(format!("ends early ({bytes} bytes): it has no metadata"));
    if bytes < FILE_MAGIC.len() as u64 + TRAILER_END {
        return Err(short());
    }
    let mut end = [0u8; TRAILER_END as usize];
    input
        .seek(SeekFrom::Start(bytes - TRAILER_END))
        .and_then(|_| input.read_exact(&mut end))
        .map_err(|e| io_error("read", &path, e))?;
    if &end[4..] != TRAILER_MAGIC {
        return Err(short());
    }
    let len = u64::from(u32::from_le_bytes(end[..4].try_into().expect("4 bytes")));
    let parts_end = (bytes - TRAILER_END)
        .checked_sub(len)
        .filter(|at| *at >= FILE_MAGIC.len() as u64)
        .ok_or_else(|| damaged(format!("claims {len} bytes of metadata in {bytes}")))?;
    let mut stored = vec![0u8; len as usize];
    input
        .seek(SeekFrom::Start(parts_end))
        .and_then(|_| input.read_exact(&mut stored))
        .map_err(|e| io_error("read", &path, e))?;
    let (meta, sums) = decode_meta(serial, &stored)?;
    input
        .seek(SeekFrom::Start(FILE_MAGIC.len() as u64))
        .map_err(|e| io_error("read", &path, e))?;
    Ok(Opened {
        input,
        path,
        meta,
        sums,
        parts_end,
    })
}

/// Snapshot `serial`'s metadata, from its file's trailer (checked against its checksum).
pub(super) fn read_meta(shard: &Path, serial: u64) -> Result<SnapshotMeta, LogError> {
    open(shard, serial).map(|opened| opened.meta)
}

/// Each part of snapshot `serial`, in order, each checked against its checksum when
/// the snapshot has them. Returns its metadata.
pub(super) fn read(
    shard: &Path,
    serial: u64,
    mut visit: impl FnMut(&[u8]) -> Result<(), LogError>,
) -> Result<SnapshotMeta, LogError> {
    let Opened {
        mut input,
        path,
        meta,
        sums,
        parts_end,
    } = open(shard, serial)?;
    let parts = meta.parts;
    let short = |read: u32, what: &str| {
        LogError::Damaged(format!(
            "snapshot {serial} has {read} of its {parts} parts readable in {} ({what})",
            path.display()
        ))
    };
    let mut at = FILE_MAGIC.len() as u64;
    let mut bytes = Vec::new();
    for number in 0..parts {
        let mut len = [0u8; 4];
        if at + 4 > parts_end || input.read_exact(&mut len).is_err() {
            return Err(short(number, "the parts end early"));
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_PART_BYTES || at + 4 + len as u64 > parts_end {
            return Err(short(number, &format!("part {number} claims {len} bytes")));
        }
        bytes.resize(len, 0);
        if input.read_exact(&mut bytes).is_err() {
            return Err(short(number, "the file ends early"));
        }
        at += 4 + len as u64;
        if let Some(&stored) = sums.as_ref().and_then(|s| s.get(number as usize)) {
            let computed = xxh3_64(&bytes);
            if computed != stored {
                return Err(LogError::Damaged(format!(
                    "snapshot {serial}: part {number} in {} fails its checksum \
                     (stored {stored:016x}, read {computed:016x})",
                    path.display()
                )));
            }
        }
        visit(&bytes)?;
    }
    if at != parts_end {
        return Err(LogError::Damaged(format!(
            "snapshot {serial}: {} holds more than its {parts} parts",
            path.display()
        )));
    }
    Ok(meta)
}

/// One snapshot file in a shard's folder: its serial and its metadata (or why that is
/// damaged).
pub(super) type Listed = (u64, Result<SnapshotMeta, LogError>);

/// Every finished snapshot of the shard at `shard`, oldest first, each with its
/// metadata from its trailer or why that cannot be read.
pub(super) fn list(shard: &Path) -> Result<Vec<Listed>, LogError> {
    let mut out: Vec<Listed> = finished(shard)?
        .into_iter()
        .map(|(serial, _)| (serial, read_meta(shard, serial)))
        .collect();
    out.sort_by_key(|(serial, _)| *serial);
    Ok(out)
}

/// Bytes of every finished snapshot file of the shard at `shard` (their trailers unread).
pub(super) fn total_bytes(shard: &Path) -> Result<u64, LogError> {
    Ok(finished(shard)?
        .iter()
        .map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()))
        .sum())
}

/// The serial a finished snapshot's name in [`folder`] stands for: `<serial>.snap`.
fn finished_serial(name: &str) -> Option<u64> {
    name.strip_suffix(".snap")?.parse().ok()
}

/// Every `<serial>.snap` file of the shard's folder, with its path.
fn finished(shard: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let folder = folder(shard);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", &folder, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", &folder, e))?;
        let serial = entry.file_name().to_str().and_then(finished_serial);
        if let (Some(serial), true) = (serial, entry.path().is_file()) {
            out.push((serial, entry.path()));
        }
    }
    Ok(out)
}

/// Where a damaged snapshot is kept for inspection, out of the way of
/// [`remove_others`].
pub(super) fn damaged_folder(shard: &Path) -> PathBuf {
    shard.join("damaged-snapshots")
}

/// Move snapshot `serial` into [`damaged_folder`], durably; returns where it went
/// (`None`: it had no file).
pub(super) fn set_aside(shard: &Path, serial: u64) -> Result<Option<PathBuf>, LogError> {
    let from = file(shard, serial);
    if !from.is_file() {
        return Ok(None);
    }
    let folder = damaged_folder(shard);
    std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
    let name = format!("{serial}.snap");
    let mut to = folder.join(&name);
    let mut n = 1;
    while to.exists() {
        to = folder.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to).map_err(|e| io_error("move", &from, e))?;
    sync_dir(&folder)?;
    sync_dir(from.parent().unwrap_or(&from))?;
    Ok(Some(to))
}

/// Remove a file or a directory tree, if it is there.
pub(super) fn remove_path(path: &Path) -> Result<(), LogError> {
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

/// Remove snapshot `serial`'s file durably, and what an unfinished write of it left.
/// Returns the bytes its file held.
pub(super) fn remove(shard: &Path, serial: u64) -> Result<u64, LogError> {
    let done = file(shard, serial);
    let bytes = std::fs::metadata(&done).map(|m| m.len()).unwrap_or(0);
    remove_path(&done.with_extension("snap.tmp"))?;
    remove_path(&done)?;
    sync_dir(&folder(shard))?;
    Ok(bytes)
}

/// Remove everything in the shard's folder that is not a finished snapshot (what a
/// crash left of a write: `.tmp` files). Returns how many went.
pub(super) fn remove_others(shard: &Path) -> Result<usize, LogError> {
    let folder = folder(shard);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("list", &folder, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", &folder, e))?;
        let finished = entry.path().is_file()
            && entry
                .file_name()
                .to_str()
                .and_then(finished_serial)
                .is_some();
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

    /// Write a snapshot of two parts at serial 42; returns its metadata.
    fn two_parts(shard: &Path) -> SnapshotMeta {
        let mut writer = Writer::create(shard, 42).unwrap();
        writer.push(&[1; 4096]).unwrap();
        writer.push(&[2; 4096]).unwrap();
        writer.finish(meta(42, 0)).unwrap().0
    }

    fn read_all(shard: &Path) -> Result<Vec<Vec<u8>>, String> {
        let mut parts = Vec::new();
        read(shard, 42, |bytes| {
            parts.push(bytes.to_vec());
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(parts)
    }

    #[test]
    fn a_snapshot_is_one_file_of_its_parts_and_metadata_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let written = two_parts(dir.path());
        assert_eq!((written.parts, written.size_bytes), (2, 8192));
        let files: Vec<_> = std::fs::read_dir(folder(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec!["42.snap"], "no .tmp left behind");
        let len = std::fs::metadata(file(dir.path(), 42)).unwrap().len();
        let sums = [xxh3_64(&[1; 4096]), xxh3_64(&[2; 4096])];
        let trailer = encode_meta(&written, &sums).unwrap().len() as u64 + TRAILER_END;
        assert_eq!(
            len,
            8 + 2 * (4 + 4096) + trailer,
            "the blocks' bytes and a length each, then the metadata"
        );
        assert_eq!(read_meta(dir.path(), 42).unwrap(), written);
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, 42);
        assert_eq!(total_bytes(dir.path()).unwrap(), len);
        assert_eq!(listed[0].1.as_ref().unwrap(), &written);
        assert_eq!(
            read_all(dir.path()).unwrap(),
            vec![vec![1; 4096], vec![2; 4096]]
        );
        assert_eq!(remove(dir.path(), 42).unwrap(), len);
        assert!(list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_flipped_byte_in_a_part_is_named_with_its_part_and_path() {
        let dir = tempfile::tempdir().unwrap();
        two_parts(dir.path());
        let path = file(dir.path(), 42);
        let whole = std::fs::read(&path).unwrap();
        let mut bad = whole.clone();
        bad[8 + 4 + 4096 + 4 + 100] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = read_all(dir.path()).unwrap_err();
        assert!(
            err.contains("snapshot 42: part 1 in ") && err.contains("fails its checksum"),
            "{err}"
        );
        // Metadata from before checksums (moved from sled as it was) reads unchecked.
        let mut writer = Writer::create(dir.path(), 42).unwrap();
        writer.push_framed(&bad[8..8 + 2 * (4 + 4096)]).unwrap();
        let legacy = postcard::to_allocvec(&SnapshotMeta {
            parts: 2,
            size_bytes: 8192,
            ..meta(42, 2)
        })
        .unwrap();
        writer.finish_with(&legacy).unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_flipped_byte_in_the_trailer_is_named_and_lists_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        two_parts(dir.path());
        let path = file(dir.path(), 42);
        let whole = std::fs::read(&path).unwrap();
        for at in 8 + 2 * (4 + 4096)..whole.len() {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let listed = list(dir.path()).unwrap();
            let err = listed[0].1.as_ref().map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("snapshot 42"), "byte {at}: {err}");
            assert!(read_all(dir.path()).is_err(), "byte {at}");
        }
    }

    #[test]
    fn a_cut_or_lengthened_file_is_damage_not_a_shorter_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        two_parts(dir.path());
        let path = file(dir.path(), 42);
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 5, 8 + 2, 8 + 4 + 4096, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let err = read_all(dir.path()).unwrap_err();
            assert!(err.contains("snapshot 42"), "cut at {cut}: {err}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let err = read_all(dir.path()).unwrap_err();
        assert!(err.contains("has no metadata"), "{err}");
        // Metadata that counts fewer parts than the file holds.
        let mut writer = Writer::create(dir.path(), 42).unwrap();
        writer.push(&[1; 4096]).unwrap();
        writer.push(&[2; 4096]).unwrap();
        let one = encode_meta(&meta(42, 1), &[xxh3_64(&[1; 4096])]).unwrap();
        writer.finish_with(&one).unwrap();
        let err = read_all(dir.path()).unwrap_err();
        assert!(err.contains("holds more than its 1 parts"), "{err}");
        // A part length past the parts' end.
        let mut huge = whole;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let err = read_all(dir.path()).unwrap_err();
        assert!(err.contains("part 0 claims"), "{err}");
    }

    #[test]
    fn only_finished_snapshots_are_listed_and_the_rest_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        two_parts(dir.path());
        std::fs::write(folder(dir.path()).join("43.snap.tmp"), b"x").unwrap();
        assert_eq!(
            list(dir.path()).unwrap().len(),
            1,
            "a .tmp file is not listed"
        );
        assert_eq!(remove_others(dir.path()).unwrap(), 1);
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        let moved = set_aside(dir.path(), 42).unwrap().unwrap();
        assert!(moved.is_file() && list(dir.path()).unwrap().is_empty());
        assert!(moved.starts_with(damaged_folder(dir.path())));
    }
}
