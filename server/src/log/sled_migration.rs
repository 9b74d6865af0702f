//! What earlier builds kept of a database's log and snapshots in sled, moved out once
//! into the layout a shard has now: segment files for the log ([`super::segments`]) and
//! one file per snapshot with its metadata as a trailer ([`super::snapshot_files`]).
//!
//! Earlier builds kept, in each shard's own sled instance (and before shards, in the
//! node's instance, keys prefixed by the database's uid):
//! - the `log` tree: key `uid | kind | first serial` → a chunk, and markers under kind
//!   byte 0 (a logical replica's position, the last serial retention pruned);
//! - the `snapshots` tree: key `uid | serial | part (u32 BE)` → a part of the
//!   snapshot's blocks (the oldest layout), or under part `u32::MAX` its metadata, whose
//!   blocks were then in a sled instance `snapshots/<serial>/` or in a file
//!   `snapshots/<serial>.snap` without a trailer ([`snapshot_files::FILE_MAGIC_V1`]).
//!
//! A shard that still has a sled instance has it moved when it opens
//! ([`migrate_shard`]): the log into segments, each snapshot with metadata into a file
//! of today's layout (its parts and its metadata copied byte for byte, so a damaged one
//! stays damaged and recovery judges it as before), then the instance's files go. Every
//! step can run again after a crash: a chunk stored twice replaces itself in the
//! segment index, a snapshot already in today's layout is skipped, and the instance goes
//! last.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::codec;
use super::durable::{sled_config, LogError};
use super::segments::Segments;
use super::snapshot_files::{self, Writer};
use super::LogKind;

/// sled's page cache while an instance is moved: it is read in order, once.
const CACHE_BYTES: u64 = 1 << 20;

/// The part number under which a snapshot's metadata was kept.
pub(super) const META_PART: u32 = u32::MAX;

/// Whether the shard at `shard` still has a sled instance of an earlier build.
pub(super) fn instance_in(shard: &Path) -> bool {
    shard.join("conf").is_file() || shard.join("db").is_file()
}

/// Move the sled instance of the shard at `shard` into `segments` and snapshot files,
/// then remove it. Returns the entries moved.
pub(super) fn migrate_shard(shard: &Path, segments: &Segments) -> Result<u64, LogError> {
    let moved = {
        let db = sled_config(shard, CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                LogError::Sled(format!("cannot open the log at {}: {e}", shard.display()))
            })?;
        let log = existing_tree(&db, "log")?;
        let snapshots = existing_tree(&db, "snapshots")?;
        move_trees(log.as_ref(), snapshots.as_ref(), &[], shard, segments)?
    };
    remove_instance(shard)?;
    tracing::info!(
        path = %shard.display(),
        entries = moved,
        "moved a database's log and snapshot metadata out of sled into files"
    );
    Ok(moved)
}

/// `name` in `db`, if it is there (without creating it).
pub(super) fn existing_tree(db: &sled::Db, name: &str) -> Result<Option<sled::Tree>, LogError> {
    let present = db
        .tree_names()
        .iter()
        .any(|t| t.as_ref() == name.as_bytes());
    Ok(if present {
        Some(db.open_tree(name)?)
    } else {
        None
    })
}

/// Move the entries under `prefix` (a uid, or nothing for all) of a `log` tree into
/// `segments` and of a `snapshots` tree into files of the shard at `shard`. The trees
/// are left as they are. Returns the entries moved.
pub(super) fn move_trees(
    log: Option<&sled::Tree>,
    snapshots: Option<&sled::Tree>,
    prefix: &[u8],
    shard: &Path,
    segments: &Segments,
) -> Result<u64, LogError> {
    let mut moved = 0;
    if let Some(log) = log {
        moved += move_log(log, prefix, segments)?;
    }
    segments.sync()?;
    if let Some(snapshots) = snapshots {
        moved += move_snapshots(snapshots, prefix, shard)?;
    }
    Ok(moved)
}

/// The log tree's chunks and markers into segments.
fn move_log(tree: &sled::Tree, prefix: &[u8], segments: &Segments) -> Result<u64, LogError> {
    let mut moved = 0u64;
    for item in tree.scan_prefix(prefix) {
        let (key, value) = item?;
        moved += 1;
        if key.get(8) != Some(&0) {
            let head = codec::peek(&value).map_err(|e| LogError::Damaged(e.to_string()))?;
            segments.append(&[(head, &value[..])], None)?;
            continue;
        }
        let number = |at: usize| {
            key.get(at..at + 8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        };
        let value = <[u8; 8]>::try_from(value.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| LogError::Damaged("a log marker is not 8 bytes".into()))?;
        match (key.len(), number(9)) {
            // A logical replica's position in a stream.
            (25, Some(u64::MAX)) => {
                let stream = number(17).expect("25 bytes");
                segments.append(&[], Some((stream, value)))?;
            }
            // The last serial retention pruned of a kind.
            (17, Some(marker)) => {
                if let Some(kind) = [LogKind::A, LogKind::B, LogKind::T]
                    .into_iter()
                    .find(|k| u64::MAX - *k as u64 == marker)
                {
                    segments.mark_pruned(kind, value)?;
                }
            }
            _ => {}
        }
    }
    Ok(moved)
}

/// Every snapshot with metadata in the tree into a file of today's layout; then what
/// has no metadata (a save a crash interrupted) goes.
fn move_snapshots(tree: &sled::Tree, prefix: &[u8], shard: &Path) -> Result<u64, LogError> {
    let mut metadata: BTreeMap<u64, sled::IVec> = BTreeMap::new();
    let mut parts: BTreeMap<u64, Vec<sled::IVec>> = BTreeMap::new();
    for item in tree.scan_prefix(prefix) {
        let (key, value) = item?;
        let (Some(serial), Some(part)) = (key.get(8..16), key.get(16..20)) else {
            continue;
        };
        let serial = u64::from_be_bytes(serial.try_into().expect("8 bytes"));
        if part == META_PART.to_be_bytes() {
            metadata.insert(serial, value);
        } else {
            parts.entry(serial).or_default().push(value);
        }
    }
    let mut moved = 0;
    for (serial, stored) in &metadata {
        let done = snapshot_files::file(shard, *serial);
        if has_magic(&done, snapshot_files::FILE_MAGIC_V1)? == Some(false) {
            continue; // moved before a crash
        }
        let mut writer = Writer::create(shard, *serial)?;
        let instance = folder_instance(shard, *serial);
        if done.is_file() {
            copy_framed_parts(&done, &mut writer)?;
        } else if instance.is_dir() {
            copy_instance_parts(&instance, &mut writer)?;
        } else {
            for part in parts.get(serial).into_iter().flatten() {
                writer.push(part)?;
            }
        }
        writer.finish_with(stored)?;
        snapshot_files::remove_path(&instance)?;
        moved += 1;
        tracing::info!(
            serial,
            path = %done.display(),
            "moved a snapshot and its metadata out of sled into a file"
        );
    }
    // Files and instances without metadata: what a crash left of a save.
    let folder = snapshot_files::folder(shard);
    if let Ok(entries) = std::fs::read_dir(&folder) {
        for entry in entries {
            let path = entry
                .map_err(|e| snapshot_files::io_error("list", &folder, e))?
                .path();
            if path.is_dir() || has_magic(&path, snapshot_files::FILE_MAGIC_V1)? == Some(true) {
                snapshot_files::remove_path(&path)?;
            }
        }
    }
    snapshot_files::sync_dir(shard)?;
    Ok(moved)
}

/// Whether the file at `path` starts with `magic` (`None`: there is no such file).
fn has_magic(path: &Path, magic: &[u8; 8]) -> Result<Option<bool>, LogError> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut start = [0u8; 8];
    let read = File::open(path)
        .and_then(|mut f| f.read(&mut start))
        .map_err(|e| snapshot_files::io_error("read", path, e))?;
    Ok(Some(read == 8 && &start == magic))
}

/// Snapshot `serial`'s sled instance, as an earlier build wrote it.
fn folder_instance(shard: &Path, serial: u64) -> std::path::PathBuf {
    snapshot_files::folder(shard).join(serial.to_string())
}

/// The parts of a file without a trailer, byte for byte after its magic.
fn copy_framed_parts(path: &Path, writer: &mut Writer) -> Result<(), LogError> {
    let mut input = File::open(path).map_err(|e| snapshot_files::io_error("open", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut skipped = 0;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| snapshot_files::io_error("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        let from = (8 - skipped).min(n);
        skipped += from;
        writer.push_framed(&buf[from..n])?;
    }
}

/// The parts of a snapshot kept as a sled instance (keys: part numbers, u32 BE).
fn copy_instance_parts(path: &Path, writer: &mut Writer) -> Result<(), LogError> {
    let db = sled_config(path, CACHE_BYTES)
        .flush_every_ms(None)
        .open()
        .map_err(|e| {
            LogError::Sled(format!(
                "cannot open the snapshot at {}: {e}",
                path.display()
            ))
        })?;
    for item in db.iter() {
        writer.push(&item?.1)?;
    }
    Ok(())
}

/// Remove a shard's sled instance (closed) durably: its `conf`, `db`, `blobs/` and
/// `snap.*` files.
fn remove_instance(shard: &Path) -> Result<(), LogError> {
    let entries =
        std::fs::read_dir(shard).map_err(|e| snapshot_files::io_error("list", shard, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| snapshot_files::io_error("list", shard, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "db" || name == "blobs" || name.starts_with("snap.") {
            snapshot_files::remove_path(&entry.path())?;
        }
    }
    // `conf` last: while it is there, the next open moves again what is left.
    snapshot_files::remove_path(&shard.join("conf"))?;
    snapshot_files::sync_dir(shard)
}
