//! Compact snapshots of a store (SPEC G1, seed 003).
//!
//! Freezing a store clones its location tables: blocks are shared (`Arc`) and later
//! writes copy a block before changing it, so the frozen image is not disturbed. The
//! frozen image is then encoded without holding any lock: a [`SnapshotLayout`] (the
//! schema, each file's directory and a dense index → block number table) and the bytes
//! of the used blocks only, packed densely in that order. Its size follows the live
//! data, not the capacity. Decoding re-expands the blocks to their original numbers, so
//! a restored store is byte-identical to the one frozen.

use serde::{Deserialize, Serialize};

use super::block::{Block, MAX_BLOCK_BYTES, MIN_BLOCK_BYTES};
use super::file::{BlockFile, FileLayout};
use super::{Schema, Store};

/// Everything in a snapshot except the block bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLayout {
    pub schema: Schema,
    pub block_size: u32,
    pub files: Vec<FileSnapshot>,
}

/// One block file in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSnapshot {
    pub layout: FileLayout,
    /// Dense index → block number: the i-th packed block is block `dense[i]`.
    pub dense: Vec<u32>,
}

impl SnapshotLayout {
    pub fn block_count(&self) -> usize {
        self.files.iter().map(|f| f.dense.len()).sum()
    }
}

/// Why a snapshot could not be turned back into a store.
#[derive(Debug, thiserror::Error)]
#[error("snapshot is damaged: {0}")]
pub struct SnapshotError(pub String);

impl Store {
    /// The frozen copy a snapshot is taken from. Cheap: shares every block.
    pub fn freeze(&self) -> Store {
        self.clone()
    }

    /// The layout of this (frozen) store and its used blocks in dense order.
    pub fn snapshot_parts(&self) -> (SnapshotLayout, Vec<&Block>) {
        let mut blocks = Vec::new();
        let files = self
            .files()
            .iter()
            .map(|file| {
                let mut dense = Vec::new();
                for (number, block) in file.blocks() {
                    dense.push(number);
                    blocks.push(block);
                }
                FileSnapshot {
                    layout: file.layout(),
                    dense,
                }
            })
            .collect();
        let layout = SnapshotLayout {
            schema: self.schema().clone(),
            block_size: self.block_size() as u32,
            files,
        };
        (layout, blocks)
    }

    /// Rebuild a store from a snapshot's layout and its packed block bytes.
    pub fn from_snapshot(
        layout: SnapshotLayout,
        quota_bytes: u64,
        packed: &[u8],
    ) -> Result<Store, SnapshotError> {
        let block_size = layout.block_size as usize;
        if packed.len() != layout.block_count() * block_size {
            return Err(SnapshotError(format!(
                "{} block bytes for {} blocks of {block_size}",
                packed.len(),
                layout.block_count()
            )));
        }
        let blocks = packed
            .chunks_exact(block_size.max(1))
            .enumerate()
            .map(|(i, bytes)| {
                Block::from_bytes(bytes)
                    .ok_or_else(|| SnapshotError(format!("packed block {i} has a bad header")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Store::from_snapshot_blocks(layout, quota_bytes, blocks)
    }

    /// Like [`Store::from_snapshot`], from the blocks already cut out of the packed
    /// bytes, in their packed order (a bootstrap cuts them as the parts arrive).
    pub fn from_snapshot_blocks(
        layout: SnapshotLayout,
        quota_bytes: u64,
        blocks: Vec<Block>,
    ) -> Result<Store, SnapshotError> {
        let block_size = layout.block_size as usize;
        // The table bound below divides by the block size: a size no store has (a
        // snapshot with no blocks says any) would let a 60-byte layout ask for millions
        // of table slots (found by the `snapshot` fuzz target, docs/RELIABILITY.md).
        if !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&block_size)
            || layout
                .files
                .iter()
                .any(|f| f.layout.block_size != layout.block_size)
        {
            return Err(SnapshotError(format!(
                "a block size of {block_size} bytes (a store's blocks are \
                 {MIN_BLOCK_BYTES}-{MAX_BLOCK_BYTES} bytes, the same in every file)"
            )));
        }
        if blocks.len() != layout.block_count() || blocks.iter().any(|b| b.size() != block_size) {
            return Err(SnapshotError(format!(
                "{} blocks for a layout of {} blocks of {block_size} bytes",
                blocks.len(),
                layout.block_count()
            )));
        }
        // A file's location table is as long as the most blocks it ever held at once,
        // which the memory quota bounds (twice over: undo may pass it for a moment).
        // A longer one is damage or a lie, and would be allocated before anything
        // else is checked.
        let most = (quota_bytes / block_size.max(1) as u64).saturating_mul(2) + 64;
        if let Some(file) = layout
            .files
            .iter()
            .find(|f| u64::from(f.layout.table_len) > most.max(f.dense.len() as u64))
        {
            return Err(SnapshotError(format!(
                "a location table of {} blocks, more than a memory quota of {quota_bytes} bytes holds",
                file.layout.table_len
            )));
        }
        let mut blocks = blocks.into_iter();
        let mut files = Vec::new();
        for (index, file) in layout.files.into_iter().enumerate() {
            let parts: Vec<_> = file
                .dense
                .iter()
                .map(|number| (*number, blocks.next().expect("count checked above")))
                .collect();
            let file = BlockFile::from_parts(file.layout, parts).ok_or_else(|| {
                SnapshotError(format!("file {index} does not fit its location table"))
            })?;
            files.push(file);
        }
        Store::from_files(layout.schema, block_size, quota_bytes, files)
            .ok_or_else(|| SnapshotError("file count does not match the schema".into()))
    }
}
