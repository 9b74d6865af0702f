//! One database's A, B and T logs in append-only segment files of its own (SPEC B4, B5).
//!
//! A shard's `segments/` directory holds numbered files (`<number>.seg`, 20 digits). Each
//! is a run of records:
//!
//! ```text
//! record := body length (u32 LE) | xxh3-64 of the body (u64 LE) | body
//! body   := 1 | chunk count (u32 LE) | (chunk length (u32 LE) | chunk)* | position?
//!             (one transaction's chunks, all of them or none; a logical replica's
//!              position after them: 1 | stream (u64 LE) | serial (u64 LE), or 0)
//!         | 2 | kind | 1 | through first serial (u64 LE) | pruned through (u64 LE)
//!             (retention removed the oldest chunks of a kind; with 0 and no first
//!              serial, only the retention mark moved)
//!         | 3 | kind | above first serial (u64 LE)
//!             (a torn tail's chunks removed)
//!         | 4 | position count (u32 LE) | (stream, serial)* | pruned through A, B, T
//!             (the state a new segment starts with, so older segments can go)
//! ```
//!
//! A transaction is one record with one checksum, so a crash keeps all of its chunks or
//! none, with one `write` and, at `group` durability, one `fdatasync` per group of
//! commits ([`Segments::sync`]), and no thread hand-off: sled cost a commit a thread-pool
//! wake-up per flush and three inserts (docs/BENCHMARKS.md, issue 19).
//!
//! In memory each kind has an index of its chunks, sorted by first serial, with where
//! each one lies; nothing else is cached (the newest transactions are in
//! [`super::tail::Tail`]). Opening reads every segment once: the last one may end in a
//! record a crash cut short, which is cut off; a record that fails its checksum with
//! valid records after it, or anywhere in an older segment, is damage, and the open
//! fails naming the file and offset rather than serving a log with a hole in it.
//!
//! An A chunk that carries the T log (`codec`'s version 2) is indexed under A and T: each
//! kind's retention lets go of it on its own, and its bytes stay while either holds it.
//!
//! Every [`WRITE_BEHIND_BYTES`] appended, the kernel is asked to start writing them out
//! (`sync_file_range`, without waiting), whatever the durability: otherwise a database
//! at `none` leaves its log in the page cache until the kernel's own writeback takes
//! hundreds of megabytes at once, and another database's `fdatasync` waits behind that
//! on the same disk (issue 24 point 4; PostgreSQL's `wal_writer_flush_after` and
//! `backend_flush_after` do the same). A snapshot file is paced too, with a sync every
//! `durable::SNAPSHOT_PACE_BYTES`.
//!
//! Retention removes the oldest chunks of a kind; a segment file goes once no chunk of
//! any kind in it, nor in any older segment, is still held. Each new segment starts with
//! the positions and retention marks, so nothing an older segment said is lost with it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::codec::{self, ChunkHead};
use super::durable::LogError;
use super::LogKind;

/// A new segment is started once the current one holds this many bytes.
const SEGMENT_BYTES: u64 = 32 << 20;
/// Bytes appended to a segment between two requests to the kernel to start writing
/// them out ([`start_writeback`]).
const WRITE_BEHIND_BYTES: u64 = 2 << 20;
/// Record header: body length and checksum.
const HEADER: usize = 12;
/// Bytes read at once when scanning a segment or reading neighbouring chunks.
const READ_SPAN: u64 = 1 << 20;
/// Bytes hashed at most when looking for a valid record after an invalid one.
const SEARCH_HASH_BYTES: usize = 64 << 20;
/// Index entries taken at a time by [`Segments::scan`].
const SCAN_BATCH: usize = 256;

const TXN: u8 = 1;
const PRUNE: u8 = 2;
const TRUNCATE: u8 = 3;
const CHECKPOINT: u8 = 4;

const KINDS: [LogKind; 3] = [LogKind::A, LogKind::B, LogKind::T];

fn slot(kind: LogKind) -> usize {
    kind as usize - 1
}

fn kind_of(byte: u8) -> Option<LogKind> {
    KINDS.into_iter().find(|k| *k as u8 == byte)
}

/// Where one chunk lies, with the fields the log's readers and retention ask about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub first: u64,
    pub last: u64,
    pub last_ts: u64,
    segment: u64,
    offset: u64,
    pub len: u32,
    /// A T entry that is an A chunk carrying the T log (`codec::ChunkHead::carries_t`):
    /// the A index points at the same bytes.
    pub shared: bool,
}

struct Segment {
    file: Arc<File>,
    /// Index entries that point into it.
    live: u64,
}

struct Inner {
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to, and its length.
    active: u64,
    end: u64,
    /// Where in the active segment the kernel was last asked to start writing out.
    behind: u64,
    index: [Vec<Entry>; 3],
    bytes: [u64; 3],
    /// Bytes counted under both A and T: chunks both indexes hold.
    both: u64,
    positions: BTreeMap<u64, u64>,
    pruned: [u64; 3],
    /// Segments written since the last sync (the active one is always synced).
    unsynced: Vec<Arc<File>>,
    /// A segment was created or removed since the last sync of the directory.
    dir_changed: bool,
}

/// A shard's segment files and their index.
pub struct Segments {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn seg_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

/// Ask the kernel to start writing `len` bytes at `offset` of `file` to the disk, and
/// return at once (`SYNC_FILE_RANGE_WRITE`: it neither waits for the writes nor makes
/// them durable; [`Segments::sync`] does that). Only a hint: a failure shows at the
/// next sync, or never matters.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

fn io(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::io(format!("cannot {what} {}", path.display()), &e)
}

/// A record whose body [`frame`] will follow: room for the header, then the tag.
fn record(tag: u8, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 1 + capacity);
    out.extend_from_slice(&[0; HEADER]);
    out.push(tag);
    out
}

/// Fill in the header of a record from [`record`]: its body's length and checksum (the
/// body is written once, in place).
fn frame(mut out: Vec<u8>) -> Vec<u8> {
    let body = &out[HEADER..];
    let (len, sum) = (body.len() as u32, xxhash_rust::xxh3::xxh3_64(body));
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..HEADER].copy_from_slice(&sum.to_le_bytes());
    out
}

/// The record of one transaction's chunks (and a logical replica's position), with
/// where each chunk starts in it.
pub fn txn_record(
    chunks: &[(ChunkHead, &[u8])],
    position: Option<(u64, u64)>,
) -> (Vec<u8>, Vec<usize>) {
    let mut body = record(
        TXN,
        4 + 17 + chunks.iter().map(|(_, b)| b.len() + 4).sum::<usize>(),
    );
    body.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    let mut offsets = Vec::with_capacity(chunks.len());
    for (_, bytes) in chunks {
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        offsets.push(body.len());
        body.extend_from_slice(bytes);
    }
    match position {
        Some((stream, serial)) => {
            body.push(1);
            body.extend_from_slice(&stream.to_le_bytes());
            body.extend_from_slice(&serial.to_le_bytes());
        }
        None => body.push(0),
    }
    (frame(body), offsets)
}

/// The record a new segment starts with: the positions and retention marks.
pub fn checkpoint_record(positions: &BTreeMap<u64, u64>, pruned: [u64; 3]) -> Vec<u8> {
    let mut body = record(CHECKPOINT, 4 + 16 * positions.len() + 24);
    body.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for (stream, serial) in positions {
        body.extend_from_slice(&stream.to_le_bytes());
        body.extend_from_slice(&serial.to_le_bytes());
    }
    for mark in pruned {
        body.extend_from_slice(&mark.to_le_bytes());
    }
    frame(body)
}

/// A little-endian cursor over a record's body.
struct Body<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What a segment's scan found at its end.
enum ScanEnd {
    /// Every byte is in a valid record.
    Clean,
    /// The records stop being valid at this offset.
    Invalid { at: u64, followed_by_valid: bool },
}

impl Segments {
    /// Open the segments in `dir` (created if missing) and index them.
    pub fn open(dir: &Path) -> Result<Segments, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let entry = entry.map_err(|e| io("list", dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut inner = Inner::empty();
        let last = numbers.last().copied();
        for number in numbers {
            let path = seg_path(dir, number);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("open", &path, e))?;
            inner.segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    live: 0,
                },
            );
            let (len, end) = inner.scan(number, &path)?;
            match end {
                ScanEnd::Clean => {}
                ScanEnd::Invalid {
                    at,
                    followed_by_valid: false,
                } if Some(number) == last => {
                    tracing::warn!(
                        path = %path.display(),
                        offset = at,
                        cut = len - at,
                        "cut off the end of the log a crash left half-written"
                    );
                    let file = &inner.segments[&number].file;
                    file.set_len(at).map_err(|e| io("truncate", &path, e))?;
                    file.sync_data().map_err(|e| io("sync", &path, e))?;
                }
                ScanEnd::Invalid { at, .. } => {
                    return Err(LogError::Damaged(format!(
                        "log segment {} fails its checksum at byte {at} of {len}",
                        path.display()
                    )));
                }
            }
            inner.active = number;
            inner.end = match end {
                ScanEnd::Clean => len,
                ScanEnd::Invalid { at, .. } => at,
            };
            inner.behind = inner.end;
        }
        let segments = Segments {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
        };
        if last.is_none() {
            segments.roll(&mut segments.inner.lock(), 1)?;
        }
        Ok(segments)
    }

    /// Append one transaction's chunks (and a logical replica's position) as one
    /// record. Returns the bytes written.
    pub fn append(
        &self,
        chunks: &[(ChunkHead, &[u8])],
        position: Option<(u64, u64)>,
    ) -> Result<u64, LogError> {
        let (record, offsets) = txn_record(chunks, position);
        let mut inner = self.inner.lock();
        let at = self.write(&mut inner, &record)?;
        let segment = inner.active;
        for ((head, bytes), offset) in chunks.iter().zip(offsets) {
            inner.add_chunk(head, segment, at + offset as u64, bytes.len());
        }
        if let Some((stream, serial)) = position {
            inner.positions.insert(stream, serial);
        }
        Ok(record.len() as u64)
    }

    /// Write `record` at the end of the active segment, starting a new one first when
    /// it is full. Returns the offset written at.
    fn write(&self, inner: &mut Inner, record: &[u8]) -> Result<u64, LogError> {
        if inner.end >= SEGMENT_BYTES {
            let next = inner.active + 1;
            self.roll(inner, next)?;
        }
        let at = inner.end;
        let file = &inner.segments[&inner.active].file;
        if let Err(e) = file.write_all_at(record, at) {
            // Nothing is indexed. What part of the record reached the file goes, so the
            // next record follows the last whole one (a full disk frees what it took).
            let path = seg_path(&self.dir, inner.active);
            if let Err(cut) = file.set_len(at) {
                tracing::error!(path = %path.display(), error = %cut,
                    "could not cut a failed write off the log; the next open will");
            }
            return Err(io("write", &path, e));
        }
        inner.end = at + record.len() as u64;
        if inner.end - inner.behind >= WRITE_BEHIND_BYTES {
            start_writeback(file, inner.behind, inner.end - inner.behind);
            inner.behind = inner.end;
        }
        Ok(at)
    }

    /// Start segment `number`, opening it with the positions and retention marks.
    fn roll(&self, inner: &mut Inner, number: u64) -> Result<(), LogError> {
        let path = seg_path(&self.dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        if let Some(old) = inner.segments.get(&inner.active) {
            inner.unsynced.push(old.file.clone());
        }
        inner.segments.insert(
            number,
            Segment {
                file: Arc::new(file),
                live: 0,
            },
        );
        inner.active = number;
        inner.end = 0;
        inner.behind = 0;
        inner.dir_changed = true;
        let record = checkpoint_record(&inner.positions, inner.pruned);
        let file = &inner.segments[&number].file;
        file.write_all_at(&record, 0)
            .map_err(|e| io("write", &path, e))?;
        inner.end = record.len() as u64;
        Ok(())
    }

    /// Make everything appended so far durable: the segments written since the last
    /// sync, then the active one, then the directory if a segment came or went. The
    /// lock is held only to collect the files, so appends go on meanwhile.
    pub fn sync(&self) -> Result<(), LogError> {
        let (files, dir_changed) = {
            let mut inner = self.inner.lock();
            let mut files = std::mem::take(&mut inner.unsynced);
            files.push(inner.segments[&inner.active].file.clone());
            (files, std::mem::take(&mut inner.dir_changed))
        };
        for file in files {
            file.sync_data()
                .map_err(|e| io("fdatasync the log in", &self.dir, e))?;
        }
        if dir_changed {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync the log directory", &self.dir, e))?;
        }
        Ok(())
    }

    /// Remove the oldest `kind` chunks while `remove` says so of the next one, and
    /// remember `pruned through` as the last serial removed. Returns the chunks and bytes
    /// removed.
    pub fn prune_oldest(
        &self,
        kind: LogKind,
        mut remove: impl FnMut(&Entry) -> bool,
    ) -> Result<(usize, u64), LogError> {
        let mut inner = self.inner.lock();
        let index = &inner.index[slot(kind)];
        let count = index.iter().take_while(|e| remove(e)).count();
        if count == 0 {
            return Ok((0, 0));
        }
        let through_first = index[count - 1].first;
        let through = index[..count].iter().map(|e| e.last).max().unwrap_or(0);
        let pruned = inner.pruned[slot(kind)].max(through);
        let bytes = self.write_prune(&mut inner, kind, Some(through_first), pruned)?;
        self.drop_unused(&mut inner)?;
        Ok((count, bytes))
    }

    /// Move `kind`'s retention mark to `pruned` (a log moved out of sled brings it).
    pub fn mark_pruned(&self, kind: LogKind, pruned: u64) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        self.write_prune(&mut inner, kind, None, pruned).map(|_| ())
    }

    /// Write and apply a prune record. Returns the bytes of the chunks removed.
    fn write_prune(
        &self,
        inner: &mut Inner,
        kind: LogKind,
        through_first: Option<u64>,
        pruned: u64,
    ) -> Result<u64, LogError> {
        let mut body = record(PRUNE, 18);
        body.extend_from_slice(&[kind as u8, through_first.is_some() as u8]);
        body.extend_from_slice(&through_first.unwrap_or(0).to_le_bytes());
        body.extend_from_slice(&pruned.to_le_bytes());
        self.write(inner, &frame(body))?;
        Ok(inner.prune(kind, through_first, pruned))
    }

    /// Remove the `kind` chunks whose first serial is above `above`. Returns the chunks
    /// and bytes removed.
    pub fn truncate_above(&self, kind: LogKind, above: u64) -> Result<(usize, u64), LogError> {
        let mut inner = self.inner.lock();
        let index = &inner.index[slot(kind)];
        let keep = index.partition_point(|e| e.first <= above);
        let count = index.len() - keep;
        if count == 0 {
            return Ok((0, 0));
        }
        let mut body = record(TRUNCATE, 9);
        body.push(kind as u8);
        body.extend_from_slice(&above.to_le_bytes());
        self.write(&mut inner, &frame(body))?;
        Ok((count, inner.truncate(kind, above)))
    }

    /// Remove segment files, oldest first, while no chunk in them is held.
    fn drop_unused(&self, inner: &mut Inner) -> Result<(), LogError> {
        while let Some((&number, segment)) = inner.segments.first_key_value() {
            if number == inner.active || segment.live > 0 {
                break;
            }
            inner.segments.remove(&number);
            let path = seg_path(&self.dir, number);
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            inner.dir_changed = true;
        }
        Ok(())
    }

    /// Up to `max` index entries of `kind` from the one holding serial `from` on (the
    /// last whose first serial is at or below it, if any), in serial order.
    pub fn entries_from(&self, kind: LogKind, from: u64, max: usize) -> Vec<Entry> {
        let inner = self.inner.lock();
        let index = &inner.index[slot(kind)];
        let at = index.partition_point(|e| e.first <= from).saturating_sub(1);
        index[at..].iter().take(max).copied().collect()
    }

    /// Up to `max` index entries of `kind` whose first serial is in `range`.
    pub fn entries_in(
        &self,
        kind: LogKind,
        range: std::ops::RangeInclusive<u64>,
        max: usize,
    ) -> Vec<Entry> {
        let inner = self.inner.lock();
        let index = &inner.index[slot(kind)];
        let start = index.partition_point(|e| e.first < *range.start());
        let end = index.partition_point(|e| e.first <= *range.end());
        index[start..end.max(start)]
            .iter()
            .take(max)
            .copied()
            .collect()
    }

    /// The first serial of the `kind` chunk holding `serial` (the last one starting at
    /// or before it), or `serial` itself when none does.
    pub fn holding(&self, kind: LogKind, serial: u64) -> u64 {
        self.entries_from(kind, serial, 1)
            .first()
            .filter(|e| e.first <= serial)
            .map_or(serial, |e| e.first)
    }

    /// The `kind` chunks whose first serial is `from_first` or later, in serial order,
    /// until `visit` returns false. Reads a few hundred chunks at a time, so the index
    /// lock is never held across a read.
    pub fn scan(
        &self,
        kind: LogKind,
        from_first: u64,
        mut visit: impl FnMut(&Entry, sled::IVec) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let mut next = from_first;
        loop {
            let batch = self.entries_in(kind, next..=u64::MAX, SCAN_BATCH);
            let Some(last) = batch.last().copied() else {
                return Ok(());
            };
            let mut go = true;
            self.read(&batch, |entry, bytes| {
                go = visit(entry, bytes)?;
                Ok(go)
            })?;
            if !go || last.first == u64::MAX {
                return Ok(());
            }
            next = last.first + 1;
        }
    }

    /// The oldest and newest entry of `kind`.
    pub fn bounds(&self, kind: LogKind) -> (Option<Entry>, Option<Entry>) {
        let inner = self.inner.lock();
        let index = &inner.index[slot(kind)];
        (index.first().copied(), index.last().copied())
    }

    /// Read the chunks of `entries` (sorted as the index gives them), neighbours in one
    /// read, and pass each to `visit` until it returns false.
    pub fn read(
        &self,
        entries: &[Entry],
        mut visit: impl FnMut(&Entry, sled::IVec) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let mut i = 0;
        while i < entries.len() {
            let first = entries[i];
            // Chunks of the same segment laid out forward within a span: one read.
            let mut j = i + 1;
            while j < entries.len()
                && entries[j].segment == first.segment
                && entries[j].offset >= entries[j - 1].offset
                && entries[j].offset + entries[j].len as u64 - first.offset <= READ_SPAN
            {
                j += 1;
            }
            let span_end = entries[i..j]
                .iter()
                .map(|e| e.offset + e.len as u64)
                .max()
                .expect("at least one");
            let file = self.file(first.segment)?;
            let mut buf = vec![0u8; (span_end - first.offset) as usize];
            file.read_exact_at(&mut buf, first.offset)
                .map_err(|e| io("read", &seg_path(&self.dir, first.segment), e))?;
            for entry in &entries[i..j] {
                let at = (entry.offset - first.offset) as usize;
                let chunk = sled::IVec::from(&buf[at..at + entry.len as usize]);
                if !visit(entry, chunk)? {
                    return Ok(());
                }
            }
            i = j;
        }
        Ok(())
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, LogError> {
        self.inner
            .lock()
            .segments
            .get(&segment)
            .map(|s| s.file.clone())
            .ok_or_else(|| {
                LogError::Sled(format!(
                    "log segment {segment} went while it was read (retention removed it)"
                ))
            })
    }

    /// The source serial a logical replica has applied, per source stream.
    pub fn positions(&self) -> BTreeMap<u64, u64> {
        self.inner.lock().positions.clone()
    }

    /// The last serial whose `kind` chunks retention removed (0: none).
    pub fn pruned_through(&self, kind: LogKind) -> u64 {
        self.inner.lock().pruned[slot(kind)]
    }

    /// Bytes of the `kind` chunks held.
    pub fn kind_bytes(&self, kind: LogKind) -> u64 {
        self.inner.lock().bytes[slot(kind)]
    }

    /// Bytes of every chunk held (once, however many kinds hold it).
    pub fn chunk_bytes(&self) -> u64 {
        let inner = self.inner.lock();
        inner.bytes.iter().sum::<u64>() - inner.both
    }
}

impl Inner {
    /// Nothing indexed, no segments open.
    fn empty() -> Inner {
        Inner {
            segments: BTreeMap::new(),
            active: 1,
            end: 0,
            behind: 0,
            index: Default::default(),
            bytes: [0; 3],
            both: 0,
            positions: BTreeMap::new(),
            pruned: [0; 3],
            unsynced: Vec::new(),
            dir_changed: false,
        }
    }

    /// Index a chunk with head `head` at `offset` of `segment`: under its kind, and under
    /// T too when it is an A chunk that carries the T log.
    fn add_chunk(&mut self, head: &ChunkHead, segment: u64, offset: u64, len: usize) {
        let entry = Entry {
            first: head.first_serial,
            last: head.last_serial,
            last_ts: head.last_timestamp_us,
            segment,
            offset,
            len: len as u32,
            shared: false,
        };
        self.add(entry, head.kind);
        if head.kind == LogKind::A && head.carries_t {
            self.add(
                Entry {
                    shared: true,
                    ..entry
                },
                LogKind::T,
            );
        }
    }

    /// Whether the other index of an A chunk carrying the T log holds `entry` too (the
    /// T index for an A entry, the A index for a shared T entry).
    fn held_twice(&self, kind: LogKind, entry: &Entry) -> bool {
        let other = match kind {
            LogKind::A => LogKind::T,
            LogKind::T if entry.shared => LogKind::A,
            _ => return false,
        };
        let index = &self.index[slot(other)];
        let at = index.partition_point(|e| e.first < entry.first);
        index.get(at).is_some_and(|e| {
            (e.segment, e.offset, e.first) == (entry.segment, entry.offset, entry.first)
        })
    }

    /// Add `entry` to its kind's index; a chunk with the same first serial is replaced.
    fn add(&mut self, entry: Entry, kind: LogKind) {
        let index = &mut self.index[slot(kind)];
        let at = index.partition_point(|e| e.first < entry.first);
        let replaced = match index.get_mut(at) {
            Some(old) if old.first == entry.first => Some(std::mem::replace(old, entry)),
            _ => {
                index.insert(at, entry);
                None
            }
        };
        if let Some(old) = replaced {
            self.release(kind, &old);
        }
        self.bytes[slot(kind)] += entry.len as u64;
        if self.held_twice(kind, &entry) {
            self.both += entry.len as u64;
        }
        if let Some(segment) = self.segments.get_mut(&entry.segment) {
            segment.live += 1;
        }
    }

    /// Account for `entry`, already out of its kind's index.
    fn release(&mut self, kind: LogKind, entry: &Entry) {
        self.bytes[slot(kind)] -= entry.len as u64;
        if self.held_twice(kind, entry) {
            self.both -= entry.len as u64;
        }
        if let Some(segment) = self.segments.get_mut(&entry.segment) {
            segment.live -= 1;
        }
    }

    /// Remove `kind` entries whose first serial is at or below `through_first` (none
    /// when it is `None`), and move the retention mark to `pruned`.
    fn prune(&mut self, kind: LogKind, through_first: Option<u64>, pruned: u64) -> u64 {
        let index = &mut self.index[slot(kind)];
        let count = through_first.map_or(0, |t| index.partition_point(|e| e.first <= t));
        let removed: Vec<Entry> = index.drain(..count).collect();
        let bytes = removed.iter().map(|e| e.len as u64).sum();
        for entry in &removed {
            self.release(kind, entry);
        }
        self.pruned[slot(kind)] = self.pruned[slot(kind)].max(pruned);
        bytes
    }

    /// Remove `kind` entries whose first serial is above `above`.
    fn truncate(&mut self, kind: LogKind, above: u64) -> u64 {
        let index = &mut self.index[slot(kind)];
        let keep = index.partition_point(|e| e.first <= above);
        let removed: Vec<Entry> = index.drain(keep..).collect();
        let bytes = removed.iter().map(|e| e.len as u64).sum();
        for entry in &removed {
            self.release(kind, entry);
        }
        bytes
    }

    /// Index segment `number` at `path`: returns its length and how it ends.
    fn scan(&mut self, number: u64, path: &Path) -> Result<(u64, ScanEnd), LogError> {
        let mut file = File::open(path).map_err(|e| io("open", path, e))?;
        let len = file.metadata().map_err(|e| io("stat", path, e))?.len();
        let mut bytes = Vec::with_capacity(len.min(SEGMENT_BYTES * 2) as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| io("read", path, e))?;
        Ok((bytes.len() as u64, self.scan_bytes(number, &bytes)))
    }

    /// Index the records of segment `number`, whose bytes are `bytes`.
    fn scan_bytes(&mut self, number: u64, bytes: &[u8]) -> ScanEnd {
        let mut at = 0usize;
        while at < bytes.len() {
            let Some(body) = valid_record(bytes, at) else {
                return ScanEnd::Invalid {
                    at: at as u64,
                    followed_by_valid: valid_record_after(bytes, at),
                };
            };
            let body_at = at + HEADER;
            if !self.apply(number, body_at as u64, body) {
                return ScanEnd::Invalid {
                    at: at as u64,
                    followed_by_valid: true,
                };
            }
            at = body_at + body.len();
        }
        ScanEnd::Clean
    }

    /// Apply one record read at open. False if its body does not parse (with a valid
    /// checksum: written by a different program, or damage the checksum missed).
    fn apply(&mut self, segment: u64, body_at: u64, body: &[u8]) -> bool {
        let mut b = Body {
            bytes: body,
            pos: 0,
        };
        let parsed = (|| -> Option<()> {
            match b.u8()? {
                TXN => {
                    let count = b.u32()?;
                    let mut found = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        let len = b.u32()? as usize;
                        let offset = body_at + b.pos as u64;
                        let chunk = b.take(len)?;
                        let head = codec::peek(chunk).ok()?;
                        found.push((head, offset, len));
                    }
                    let position = match b.u8()? {
                        0 => None,
                        _ => Some((b.u64()?, b.u64()?)),
                    };
                    for (head, offset, len) in found {
                        self.add_chunk(&head, segment, offset, len);
                    }
                    if let Some((stream, serial)) = position {
                        self.positions.insert(stream, serial);
                    }
                }
                PRUNE => {
                    let kind = kind_of(b.u8()?)?;
                    let has_through = b.u8()? != 0;
                    let (through_first, pruned) = (b.u64()?, b.u64()?);
                    self.prune(kind, has_through.then_some(through_first), pruned);
                }
                TRUNCATE => {
                    let kind = kind_of(b.u8()?)?;
                    let above = b.u64()?;
                    self.truncate(kind, above);
                }
                CHECKPOINT => {
                    let count = b.u32()?;
                    for _ in 0..count {
                        let (stream, serial) = (b.u64()?, b.u64()?);
                        self.positions.insert(stream, serial);
                    }
                    for kind in KINDS {
                        let pruned = b.u64()?;
                        let mark = &mut self.pruned[slot(kind)];
                        *mark = (*mark).max(pruned);
                    }
                }
                _ => return None,
            }
            Some(())
        })();
        parsed.is_some()
    }
}

/// Whether a valid record follows the invalid one at `at`: damage, where a crash in the
/// middle of a write leaves nothing valid after it. Looks where the record's own length
/// says the next one starts (a damaged body), then at every later offset, hashing at most
/// [`SEARCH_HASH_BYTES`] (a header damaged too).
fn valid_record_after(bytes: &[u8], at: usize) -> bool {
    let claimed = bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    if let Some(next) = claimed.and_then(|len| (at + HEADER).checked_add(len)) {
        if next > at + HEADER && valid_record(bytes, next).is_some() {
            return true;
        }
    }
    let mut budget = SEARCH_HASH_BYTES;
    for next in at + 1..bytes.len() {
        let Some(header) = bytes.get(next..next + HEADER) else {
            break;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || next + HEADER + len > bytes.len() {
            continue;
        }
        if len > budget {
            break;
        }
        budget -= len;
        if valid_record(bytes, next).is_some() {
            return true;
        }
    }
    false
}

/// The fuzz target's view of a segment (`crate::fuzzing::segment`): index `bytes` as
/// opening a database does, then check every entry the index holds lies inside the
/// valid records and is the chunk it says. Panics on a broken invariant.
pub fn check_scan(bytes: &[u8]) {
    let mut inner = Inner::empty();
    let valid_end = match inner.scan_bytes(1, bytes) {
        ScanEnd::Clean => bytes.len() as u64,
        ScanEnd::Invalid { at, .. } => at,
    };
    for kind in KINDS {
        let index = &inner.index[slot(kind)];
        assert!(
            index.windows(2).all(|w| w[0].first < w[1].first),
            "index sorted"
        );
        let mut held = 0;
        for entry in index {
            let end = entry.offset + entry.len as u64;
            assert!(end <= valid_end, "an entry past the valid records");
            let chunk = &bytes[entry.offset as usize..end as usize];
            let head = codec::peek(chunk).expect("an indexed chunk has a head");
            assert!(head.holds(kind), "an indexed chunk holds its kind");
            assert_eq!(
                (head.kind != kind, head.first_serial, head.last_serial),
                (entry.shared, entry.first, entry.last)
            );
            held += entry.len as u64;
        }
        assert_eq!(inner.bytes[slot(kind)], held, "byte count of {kind:?}");
    }
    let shared: u64 = inner.index[slot(LogKind::T)]
        .iter()
        .filter(|e| e.shared && inner.held_twice(LogKind::T, e))
        .map(|e| e.len as u64)
        .sum();
    assert_eq!(inner.both, shared, "bytes held under both A and T");
}

/// The body of the record at `at` in `bytes`, if a whole one with a matching checksum
/// starts there.
fn valid_record(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(header[4..].try_into().ok()?);
    let body = bytes.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    (len > 0 && xxhash_rust::xxh3::xxh3_64(body) == sum).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Header, OpKind, Outcome, TxnLog, Update};

    fn txn(serial: u64, ts: u64) -> TxnLog {
        TxnLog {
            txn: serial,
            outcome: Outcome::Committed,
            updates: vec![Update {
                header: Header {
                    serial,
                    txn: serial,
                    effect: crate::store::Effect::Insert,
                    file: 0,
                    block: 0,
                    offset: 0,
                    timestamp_us: ts,
                    undo: false,
                },
                after: Some(vec![7; 100]),
                before: None,
                op: Some(OpKind::Insert),
            }],
        }
    }

    /// Append `log` as the log writes it: A chunks (carrying the T log) and B chunks.
    fn append(segments: &Segments, log: &TxnLog) {
        append_encoded(segments, log, codec::encode, &[LogKind::A, LogKind::B]);
    }

    fn append_encoded(
        segments: &Segments,
        log: &TxnLog,
        encode: codec::Encoder,
        kinds: &[LogKind],
    ) {
        let encoded: Vec<Vec<u8>> = kinds
            .iter()
            .flat_map(|k| encode(log, *k))
            .map(|(_, b)| b)
            .collect();
        let chunks: Vec<(ChunkHead, &[u8])> = encoded
            .iter()
            .map(|b| (codec::peek(b).unwrap(), b.as_slice()))
            .collect();
        segments.append(&chunks, None).unwrap();
    }

    fn firsts(segments: &Segments, kind: LogKind) -> Vec<u64> {
        segments
            .entries_from(kind, 0, usize::MAX)
            .iter()
            .map(|e| e.first)
            .collect()
    }

    #[test]
    fn a_reopened_log_holds_what_was_appended_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        for serial in 1..=10 {
            append(&segments, &txn(serial, serial * 10));
        }
        segments.prune_oldest(LogKind::A, |e| e.last <= 4).unwrap();
        segments.sync().unwrap();
        let mut read = Vec::new();
        segments
            .read(&segments.entries_from(LogKind::A, 7, 2), |e, bytes| {
                read.push((e.first, codec::peek(&bytes).unwrap().first_serial));
                Ok(true)
            })
            .unwrap();
        assert_eq!(read, vec![(7, 7), (8, 8)]);
        drop(segments);

        let reopened = Segments::open(dir.path()).unwrap();
        assert_eq!(firsts(&reopened, LogKind::A), (5..=10).collect::<Vec<_>>());
        assert_eq!(firsts(&reopened, LogKind::T), (1..=10).collect::<Vec<_>>());
        assert_eq!(reopened.pruned_through(LogKind::A), 4);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_damage_before_valid_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        for serial in 1..=3 {
            append(&segments, &txn(serial, serial));
        }
        drop(segments);
        let path = seg_path(dir.path(), 1);
        let whole = std::fs::read(&path).unwrap();
        // A crash in the middle of the last record's write.
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        let reopened = Segments::open(dir.path()).unwrap();
        assert_eq!(firsts(&reopened, LogKind::A), vec![1, 2]);
        append(&reopened, &txn(3, 3));
        drop(reopened);
        assert_eq!(
            firsts(&Segments::open(dir.path()).unwrap(), LogKind::A),
            vec![1, 2, 3],
            "the cut-off record is written again after the valid ones"
        );

        // A flipped byte in the first transaction, with valid records after it.
        let mut damaged = std::fs::read(&path).unwrap();
        let second_record = damaged.len() / 2;
        damaged[second_record - 30] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        match Segments::open(dir.path()) {
            Err(LogError::Damaged(message)) => assert!(message.contains("checksum"), "{message}"),
            other => panic!("damage must be refused, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_in_a_segment_is_caught() {
        let segment = crate::fuzzing::seeds()["segment"][0].clone();
        let mut clean = Inner::empty();
        assert!(matches!(clean.scan_bytes(1, &segment), ScanEnd::Clean));
        // Every fourth byte: headers, bodies and chunk lengths all get their turn.
        for at in (0..segment.len()).step_by(4) {
            let mut flipped = segment.clone();
            flipped[at] ^= 0x20;
            check_scan(&flipped);
            match Inner::empty().scan_bytes(1, &flipped) {
                ScanEnd::Invalid { at: invalid, .. } => assert!(
                    invalid as usize <= at,
                    "byte {at} flipped, the scan went on to {invalid}"
                ),
                ScanEnd::Clean => panic!("byte {at} flipped and the segment reads clean"),
            }
        }
    }

    #[test]
    fn old_segments_go_once_retention_removed_everything_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        {
            let mut inner = segments.inner.lock();
            inner.positions.insert(9, 42);
            segments.roll(&mut inner, 2).unwrap();
        }
        append(&segments, &txn(1, 1));
        {
            let mut inner = segments.inner.lock();
            segments.roll(&mut inner, 3).unwrap();
        }
        append(&segments, &txn(2, 2));
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 3);
        for kind in [LogKind::A, LogKind::T] {
            segments.prune_oldest(kind, |e| e.first == 1).unwrap();
        }
        assert_eq!(files(), 1, "segments 1 and 2 hold nothing still needed");
        drop(segments);
        let reopened = Segments::open(dir.path()).unwrap();
        assert_eq!(reopened.positions(), BTreeMap::from([(9, 42)]));
        assert_eq!(reopened.pruned_through(LogKind::T), 1);
        assert_eq!(firsts(&reopened, LogKind::A), vec![2]);
    }

    #[test]
    fn a_chunks_carrying_the_t_log_are_held_until_both_kinds_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        append(&segments, &txn(1, 1));
        let one = segments.kind_bytes(LogKind::A);
        assert_eq!(
            segments.kind_bytes(LogKind::T),
            one,
            "T indexes the A chunk"
        );
        assert_eq!(segments.chunk_bytes(), one, "its bytes are held once");
        {
            let mut inner = segments.inner.lock();
            segments.roll(&mut inner, 2).unwrap();
        }
        append(&segments, &txn(2, 2));
        // A chunk that a build before the folding wrote: A and T apart.
        append_encoded(
            &segments,
            &txn(3, 3),
            codec::encode_v1,
            &[LogKind::A, LogKind::T],
        );
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let bytes = segments.chunk_bytes();
        assert_eq!(firsts(&segments, LogKind::T), vec![1, 2, 3]);

        // The A log lets go of serial 1 (a snapshot covers it): T still reads it.
        segments.prune_oldest(LogKind::A, |e| e.first == 1).unwrap();
        assert_eq!(segments.chunk_bytes(), bytes, "T still holds the chunk");
        let mut read = Vec::new();
        segments
            .read(&segments.entries_from(LogKind::T, 1, 1), |e, bytes| {
                let t = codec::decode_as(&bytes, LogKind::T).unwrap();
                read.push((
                    e.shared,
                    t.entries[0].op,
                    t.entries[0].image.map(<[u8]>::len),
                ));
                Ok(true)
            })
            .unwrap();
        assert_eq!(read, vec![(true, Some(OpKind::Insert), Some(100))]);
        assert_eq!(files(), 2, "segment 1 is still held by T");

        // Then T's retention: the chunk and its segment go.
        segments.prune_oldest(LogKind::T, |e| e.first == 1).unwrap();
        assert_eq!(segments.chunk_bytes(), bytes - one);
        assert_eq!(files(), 1);
        check_scan(&std::fs::read(seg_path(dir.path(), 2)).unwrap());
        drop(segments);

        let reopened = Segments::open(dir.path()).unwrap();
        assert_eq!(firsts(&reopened, LogKind::A), vec![2, 3]);
        assert_eq!(firsts(&reopened, LogKind::T), vec![2, 3]);
        let shared: Vec<bool> = reopened
            .entries_from(LogKind::T, 0, usize::MAX)
            .iter()
            .map(|e| e.shared)
            .collect();
        assert_eq!(
            shared,
            vec![true, false],
            "the old build's T chunk is its own"
        );
        assert_eq!(reopened.chunk_bytes(), bytes - one);
    }
}
