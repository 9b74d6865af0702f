//! A block file: the location table, the block directory and overflow chains.
//!
//! A [`BlockFile`] is one file (table) of a database, or one alternate-key table. It
//! owns:
//! - the **location table**: block number → block in memory. Block numbers are logical
//!   and stable; a block that moves (copy-on-write under a snapshot) keeps its number.
//! - the **block directory**: the lower key bound of each primary block. The first
//!   primary block has the empty bound, so every key has exactly one primary block.
//! - **overflow chains**: a full block gets an overflow block chained after it. A chain
//!   holds its records in key order across its blocks, and overflow blocks are reached
//!   only through their primary block. Overflow blocks are never empty.
//!
//! Splitting inside a chain happens as part of a put. Promoting a long chain's overflow
//! blocks to primary blocks is a separate, logged reorganisation ([`BlockFile::reorg`]),
//! so that a replica applying the same log entries builds the same layout (SPEC A3).
//! Every decision here is deterministic: free block numbers are reused lowest first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use smallvec::SmallVec;

use super::block::{Block, BlockKind, RecordRef, NO_BLOCK, SLOT_BYTES};

/// A directory bound: the key's first eight bytes as an integer, then the whole key.
/// Ordering by (prefix, key) is the keys' byte order, and most comparisons in a lookup
/// are then one integer compare; short keys live inline in the directory's nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Bound_ {
    prefix: u64,
    key: SmallVec<[u8; 16]>,
}

impl Bound_ {
    fn new() -> Bound_ {
        Bound_::default()
    }

    fn from_slice(key: &[u8]) -> Bound_ {
        let mut prefix = [0u8; 8];
        let n = key.len().min(8);
        prefix[..n].copy_from_slice(&key[..n]);
        Bound_ {
            prefix: u64::from_be_bytes(prefix),
            key: SmallVec::from_slice(key),
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.key
    }
}

/// Where a record sits: its block number and byte offset inside the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub block: u32,
    pub offset: u32,
}

/// Chains longer than this many blocks are promoted to primary blocks by a reorg.
pub const MAX_CHAIN_BLOCKS: usize = 2;

/// Most blocks one put may allocate in one file: a three-way split may be followed by
/// a split plus a block of the record's own.
pub const MAX_BLOCKS_PER_PUT: usize = 3;

/// One file of blocks. Cloning is cheap: blocks are shared until written.
#[derive(Clone, Debug)]
pub struct BlockFile {
    block_size: usize,
    table: Vec<Option<Block>>,
    directory: BTreeMap<Bound_, u32>,
    free: BTreeSet<u32>,
    /// Where the current transaction's last put landed (block, slot): a put into the
    /// next slot of a full block continues an ascending run, and the block is split at
    /// the run rather than in the middle (see [`Self::put_at`]). Cleared by
    /// [`Self::begin`] at every transaction, so a replay of the log (a replica, a
    /// recovery), which begins the same transactions, splits the same way.
    run: Option<(u32, usize)>,
}

/// Result of [`BlockFile::put`].
#[derive(Debug, Clone, Copy)]
pub struct PutOutcome {
    pub placement: Placement,
    /// The primary block whose chain received the record, and that chain's length.
    pub primary: u32,
    pub chain_blocks: usize,
}

/// The parts of a file a snapshot keeps besides the blocks themselves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileLayout {
    pub block_size: u32,
    pub table_len: u32,
    pub directory: Vec<(Vec<u8>, u32)>,
}

impl BlockFile {
    pub fn new(block_size: usize) -> BlockFile {
        BlockFile {
            block_size,
            table: Vec::new(),
            directory: BTreeMap::new(),
            free: BTreeSet::new(),
            run: None,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks allocated (in use).
    /// Bytes of RAM the file's indexes take besides its blocks, estimated from their
    /// sizes: the location table's slots, and the directory's bounds with their node
    /// overhead (a key over 16 bytes is on the heap too).
    pub fn index_bytes(&self) -> u64 {
        let slot = std::mem::size_of::<Option<Block>>();
        let bound = std::mem::size_of::<Bound_>() + std::mem::size_of::<u32>() + 16;
        let spilled: usize = self
            .directory
            .keys()
            .map(|b| if b.key.spilled() { b.key.len() } else { 0 })
            .sum();
        (self.table.capacity() * slot
            + self.directory.len() * bound
            + spilled
            + self.free.len() * 8) as u64
    }

    pub fn allocated_blocks(&self) -> usize {
        self.table.len() - self.free.len()
    }

    /// The block at `number`, if allocated.
    pub fn block(&self, number: u32) -> Option<&Block> {
        self.table.get(number as usize)?.as_ref()
    }

    fn blk(&self, number: u32) -> &Block {
        self.table[number as usize]
            .as_ref()
            .expect("location table points at an allocated block")
    }

    fn blk_mut(&mut self, number: u32) -> &mut Block {
        self.table[number as usize]
            .as_mut()
            .expect("location table points at an allocated block")
    }

    /// Mutable access for tests and repair: replaces a block's bytes in place.
    pub fn block_mut(&mut self, number: u32) -> Option<&mut Block> {
        self.table.get_mut(number as usize)?.as_mut()
    }

    /// Allocated blocks in block-number order.
    pub fn blocks(&self) -> impl Iterator<Item = (u32, &Block)> {
        self.table
            .iter()
            .enumerate()
            .filter_map(|(number, block)| block.as_ref().map(|b| (number as u32, b)))
    }

    fn alloc(&mut self, block: Block) -> u32 {
        if let Some(number) = self.free.pop_first() {
            self.table[number as usize] = Some(block);
            number
        } else {
            self.table.push(Some(block));
            (self.table.len() - 1) as u32
        }
    }

    fn release(&mut self, number: u32) {
        self.table[number as usize] = None;
        self.free.insert(number);
    }

    /// The primary block whose range covers `key`.
    fn primary_for(&self, key: &[u8]) -> Option<(&Bound_, u32)> {
        self.directory
            .range(..=Bound_::from_slice(key))
            .next_back()
            .map(|(bound, number)| (bound, *number))
    }

    /// The block of the chain that holds (or would hold) `key`, with its predecessor
    /// in the chain and the primary block.
    pub fn locate(&self, key: &[u8]) -> Option<Target> {
        let (_, primary) = self.primary_for(key)?;
        let mut previous = NO_BLOCK;
        let mut current = primary;
        loop {
            let next = self.blk(current).next();
            if next == NO_BLOCK {
                break;
            }
            if self.blk(next).sorts_before_first(key) {
                break;
            }
            previous = current;
            current = next;
        }
        Some(Target {
            primary,
            previous,
            block: current,
        })
    }

    fn chain_blocks(&self, primary: u32) -> usize {
        let mut count = 1;
        let mut next = self.blk(primary).next();
        while next != NO_BLOCK {
            count += 1;
            next = self.blk(next).next();
        }
        count
    }

    /// Find a record by unique key.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<(Placement, RecordRef<'_>)> {
        self.get_at(&self.locate(key)?, key)
    }

    /// Find a record in the block `target` located.
    #[inline]
    pub fn get_at(&self, target: &Target, key: &[u8]) -> Option<(Placement, RecordRef<'_>)> {
        let block = self.blk(target.block);
        let slot = block.search(key).ok()?;
        Some((
            Placement {
                block: target.block,
                offset: block.offset(slot),
            },
            block.record(slot),
        ))
    }

    /// How many blocks a put of a `len`-byte record under `key` may allocate. Zero means
    /// the put fits in place; otherwise an upper bound.
    pub fn blocks_needed(&self, key: &[u8], len: usize) -> usize {
        self.blocks_needed_at(self.locate(key).as_ref(), key, len)
    }

    /// [`Self::blocks_needed`] for a key already located.
    pub fn blocks_needed_at(&self, target: Option<&Target>, key: &[u8], len: usize) -> usize {
        let Some(target) = target else {
            return 1;
        };
        let block = self.blk(target.block);
        let reclaimed = match block.search(key) {
            Ok(slot) => block.record_bytes(slot).len() + SLOT_BYTES,
            Err(_) => 0,
        };
        if block.free() + reclaimed >= len + SLOT_BYTES {
            0
        } else {
            MAX_BLOCKS_PER_PUT
        }
    }

    /// A new transaction starts: puts before it no longer make a run.
    pub fn begin(&mut self) {
        self.run = None;
    }

    /// Insert or replace the record under `key`. `record` is the encoded record.
    /// The caller checked size and quota.
    pub fn put(&mut self, key: &[u8], record: &[u8]) -> PutOutcome {
        self.put_at(self.locate(key), key, record)
    }

    /// [`Self::put`] for a key already located (nothing changed in this file since).
    ///
    /// A full block makes room by moving its highest records right, else by spreading
    /// over three blocks, else by a split. One case goes first: a transaction that puts
    /// ascending keys into the middle of the key space (a batch of keys below ones
    /// already there, as concurrent loads commit them) would split the block at the
    /// insertion point over and over and leave each piece part-empty. When the put lands
    /// right after the transaction's previous one in the same full block, the block is
    /// split at the key: the run keeps filling its block, the higher keys move to a block
    /// of their own (a load of 1M records by four connections used 12 % fewer blocks).
    pub fn put_at(&mut self, target: Option<Target>, key: &[u8], record: &[u8]) -> PutOutcome {
        let (outcome, slot) = self.place(target, key, record);
        // The slot is known where the record simply fit (almost every put); after a
        // shift or a split, look it up.
        let block = outcome.placement.block;
        let slot = slot.or_else(|| self.blk(block).search(key).ok());
        self.run = slot.map(|slot| (block, slot));
        outcome
    }

    /// Put the record; also its slot when the target block took it as it was.
    fn place(
        &mut self,
        target: Option<Target>,
        key: &[u8],
        record: &[u8],
    ) -> (PutOutcome, Option<usize>) {
        let target = match target {
            Some(target) => target,
            None => {
                let number = self.alloc(Block::new(self.block_size, BlockKind::Primary));
                self.directory.insert(Bound_::new(), number);
                self.locate(key).expect("a file with blocks has a target")
            }
        };
        let block = self.blk_mut(target.block);
        if let Ok(slot) = block.search(key) {
            block.remove_at(slot);
        }
        let slot = block.search(key).expect_err("key was just removed");
        if block.fits(record.len()) {
            let offset = block.insert_at(slot, record);
            let outcome = PutOutcome {
                placement: Placement {
                    block: target.block,
                    offset,
                },
                primary: target.primary,
                // The chain did not grow.
                chain_blocks: 0,
            };
            return (outcome, Some(slot));
        }
        if let Some(placement) = self.shift_right(&target, slot, key, record) {
            let outcome = PutOutcome {
                placement,
                primary: target.primary,
                chain_blocks: 0,
            };
            return (outcome, None);
        }
        let continues_run = slot > 0
            && slot < self.blk(target.block).count()
            && self.run == Some((target.block, slot - 1));
        let placement = if continues_run {
            self.split_at_key(target.block, slot, record)
        } else {
            match self.split_three(&target, key, record) {
                Some(placement) => placement,
                None => self.split_insert(target.block, slot, key, record),
            }
        };
        let outcome = PutOutcome {
            placement,
            primary: target.primary,
            chain_blocks: self.chain_blocks(target.primary),
        };
        (outcome, None)
    }

    /// Make room in the full target block by moving its highest records to the block
    /// after it in key order (the next block of its chain, or the next primary block)
    /// when that one has room, and insert there. Keeps blocks fuller than splitting.
    /// Returns None, changing nothing, when the neighbour cannot take enough.
    fn shift_right(
        &mut self,
        target: &Target,
        slot: usize,
        key: &[u8],
        record: &[u8],
    ) -> Option<Placement> {
        let (right, right_bound) = self.right_neighbour(target, key)?;
        let block = self.blk(target.block);
        let count = block.count();
        let right_free = self.blk(right).free();
        let need = record.len() + SLOT_BYTES;
        // Move the k highest records: the fewest that leave room on the record's side.
        let mut moved_bytes = 0;
        let mut choice = None;
        for k in 0..count {
            let first_moved = count - k;
            if k > 0 {
                moved_bytes += block.record_bytes(first_moved).len() + SLOT_BYTES;
            }
            if moved_bytes > right_free {
                return None;
            }
            let goes_left = slot < first_moved;
            let fits = if goes_left {
                block.free() + moved_bytes >= need
            } else {
                right_free >= moved_bytes + need
            };
            if fits {
                choice = Some((first_moved, goes_left));
                break;
            }
        }
        let (first_moved, goes_left) = choice?;
        let moving: Vec<Vec<u8>> = (first_moved..count)
            .map(|i| block.record_bytes(i).to_vec())
            .collect();
        let block = self.blk_mut(target.block);
        for index in (first_moved..count).rev() {
            block.remove_at(index);
        }
        let neighbour = self.blk_mut(right);
        for (index, moved) in moving.iter().enumerate() {
            neighbour.insert_at(index, moved);
        }
        let placement = if goes_left {
            let offset = self.blk_mut(target.block).insert_at(slot, record);
            Placement {
                block: target.block,
                offset,
            }
        } else {
            let offset = self.blk_mut(right).insert_at(slot - first_moved, record);
            Placement {
                block: right,
                offset,
            }
        };
        self.rebound(right, right_bound);
        Some(placement)
    }

    /// The block after the target's in key order: the next block of its chain, or the
    /// next primary block with its directory bound.
    fn right_neighbour(&self, target: &Target, key: &[u8]) -> Option<(u32, Option<Bound_>)> {
        match self.blk(target.block).next() {
            NO_BLOCK => {
                let (bound, _) = self.primary_for(key)?;
                let (next_bound, next) = self
                    .directory
                    .range((Excluded(bound.clone()), Unbounded))
                    .next()?;
                Some((*next, Some(next_bound.clone())))
            }
            next => Some((next, None)),
        }
    }

    /// After a primary block's lowest key changed, make its directory bound that key.
    fn rebound(&mut self, number: u32, old: Option<Bound_>) {
        let Some(old) = old else { return };
        let first = self
            .blk(number)
            .first_key()
            .expect("a rebound block holds records");
        let bound = Bound_::from_slice(first);
        if bound != old {
            self.directory.remove(&old);
            self.directory.insert(bound, number);
        }
    }

    /// Spread the full target block and its full right neighbour over three blocks, a
    /// third each (as B*-trees do), then insert. Blocks then stay at least two thirds
    /// full under random inserts instead of half. Only for records small enough to fit
    /// afterwards; returns None, changing nothing, otherwise.
    fn split_three(&mut self, target: &Target, key: &[u8], record: &[u8]) -> Option<Placement> {
        let capacity = Block::capacity(self.block_size);
        if record.len() + SLOT_BYTES > capacity / 8 {
            return None;
        }
        let (right, right_bound) = self.right_neighbour(target, key)?;
        let (left, neighbour) = (self.blk(target.block), self.blk(right));
        if left.count() < 2 || neighbour.count() < 2 {
            return None;
        }
        let third = (left.used() + neighbour.used()) / 3;
        let middle = self.link_after(
            target.block,
            Block::new(self.block_size, BlockKind::Overflow),
        );
        // Each side gives the middle its records nearest to it, while the middle has room.
        while self.blk(target.block).used() > third && self.blk(target.block).count() > 1 {
            let left = self.blk(target.block);
            let last = left.count() - 1;
            if !self.blk(middle).fits(left.record_bytes(last).len()) {
                break;
            }
            let moved = left.record_bytes(last).to_vec();
            self.blk_mut(target.block).remove_at(last);
            self.blk_mut(middle).insert_at(0, &moved);
        }
        while self.blk(right).used() > third && self.blk(right).count() > 1 {
            if !self.blk(middle).fits(self.blk(right).record_bytes(0).len()) {
                break;
            }
            let moved = self.blk(right).record_bytes(0).to_vec();
            self.blk_mut(right).remove_at(0);
            let middle_block = self.blk_mut(middle);
            let at = middle_block.count();
            middle_block.insert_at(at, &moved);
        }
        if self.blk(middle).count() == 0 {
            // Nothing could move: take the empty block back out of the chain.
            let after = self.blk(middle).next();
            self.blk_mut(target.block).set_next(after);
            self.release(middle);
            return None;
        }
        self.rebound(right, right_bound);
        let home = self.locate(key).expect("the file has blocks");
        let block = self.blk_mut(home.block);
        let slot = block.search(key).expect_err("the key is new");
        if !block.fits(record.len()) {
            return Some(self.split_insert(home.block, slot, key, record));
        }
        let offset = block.insert_at(slot, record);
        Some(Placement {
            block: home.block,
            offset,
        })
    }

    /// Insert into the full block `number` by splitting it. At most two new blocks.
    fn split_insert(&mut self, number: u32, slot: usize, key: &[u8], record: &[u8]) -> Placement {
        let size = self.block_size;
        let block = self.blk(number);
        let count = block.count();
        let mut tail = Block::new(size, BlockKind::Overflow);
        if slot == count {
            // Appending past the block's highest key: a fresh block takes the record
            // and the full block stays full.
            let offset = tail.insert_at(0, record);
            let placement = self.link_after(number, tail);
            return Placement {
                block: placement,
                offset,
            };
        }
        // Prefer a split in the middle (by bytes) when the record then fits its side.
        let mid = if count >= 2 {
            block.byte_midpoint()
        } else {
            count
        };
        let goes_left = mid < count && key < block.key(mid);
        let side_used: usize = if mid == count {
            usize::MAX / 2
        } else if goes_left {
            (0..mid)
                .map(|i| block.record_bytes(i).len() + SLOT_BYTES)
                .sum()
        } else {
            (mid..count)
                .map(|i| block.record_bytes(i).len() + SLOT_BYTES)
                .sum()
        };
        let capacity = Block::capacity(size) + SLOT_BYTES;
        if mid < count && capacity - side_used >= record.len() + SLOT_BYTES {
            self.blk_mut(number).move_tail(mid, &mut tail);
            let (home, home_slot) = if goes_left {
                (number, slot)
            } else {
                (NO_BLOCK, slot - mid)
            };
            let tail_number = self.link_after(number, tail);
            let home = if home == NO_BLOCK { tail_number } else { home };
            let offset = self.blk_mut(home).insert_at(home_slot, record);
            return Placement {
                block: home,
                offset,
            };
        }
        self.split_at_key(number, slot, record)
    }

    /// Split full block `number` exactly at `slot`, where `record` goes: the records
    /// from `slot` on move to a new block after it, and the record goes into the lower
    /// part, or into a block of its own if even that leaves no room (a large record).
    fn split_at_key(&mut self, number: u32, slot: usize, record: &[u8]) -> Placement {
        let size = self.block_size;
        let mut tail = Block::new(size, BlockKind::Overflow);
        self.blk_mut(number).move_tail(slot, &mut tail);
        self.link_after(number, tail);
        if self.blk(number).fits(record.len()) {
            let offset = self.blk_mut(number).insert_at(slot, record);
            return Placement {
                block: number,
                offset,
            };
        }
        let mut own = Block::new(size, BlockKind::Overflow);
        let offset = own.insert_at(0, record);
        Placement {
            block: self.link_after(number, own),
            offset,
        }
    }

    /// Chain `block` right after block `number`; returns its block number.
    fn link_after(&mut self, number: u32, mut block: Block) -> u32 {
        block.set_kind(BlockKind::Overflow);
        block.set_next(self.blk(number).next());
        let new_number = self.alloc(block);
        self.blk_mut(number).set_next(new_number);
        new_number
    }

    /// Remove the record under `key`; returns where it was.
    pub fn delete(&mut self, key: &[u8]) -> Option<Placement> {
        let target = self.locate(key)?;
        let block = self.blk(target.block);
        let slot = block.search(key).ok()?;
        let placement = Placement {
            block: target.block,
            offset: block.offset(slot),
        };
        let block = self.blk_mut(target.block);
        block.remove_at(slot);
        if block.count() > 0 {
            return Some(placement);
        }
        let next = block.next();
        if target.previous != NO_BLOCK {
            // An empty overflow block leaves its chain.
            self.blk_mut(target.previous).set_next(next);
            self.release(target.block);
        } else if next == NO_BLOCK {
            // An empty primary without a chain leaves the directory, unless it is the
            // first one (the empty bound), which stays so the file keeps its root.
            let (bound, _) = self
                .primary_for(key)
                .expect("primary block is in the directory");
            let bound = bound.clone();
            if !bound.as_slice().is_empty() {
                self.directory.remove(&bound);
                self.release(target.block);
            }
        }
        Some(placement)
    }

    /// Whether `primary`'s chain is long enough to be promoted by [`Self::reorg`].
    pub fn needs_reorg(chain_blocks: usize) -> bool {
        chain_blocks > MAX_CHAIN_BLOCKS
    }

    /// Promote the overflow blocks of `primary`'s chain to primary blocks. Returns
    /// false if `primary` is not a primary block with a chain.
    pub fn reorg(&mut self, primary: u32) -> bool {
        match self.block(primary) {
            Some(block) if block.kind() == BlockKind::Primary && block.next() != NO_BLOCK => {}
            _ => return false,
        }
        let mut next = self.blk(primary).next();
        self.blk_mut(primary).set_next(NO_BLOCK);
        while next != NO_BLOCK {
            let block = self.blk_mut(next);
            let after = block.next();
            block.set_next(NO_BLOCK);
            block.set_kind(BlockKind::Primary);
            let bound =
                Bound_::from_slice(block.first_key().expect("overflow blocks are never empty"));
            self.directory.insert(bound, next);
            next = after;
        }
        true
    }

    /// Visit records with `from <= key` (and `key <= to` when given) in key order,
    /// until `visit` returns false.
    pub fn scan<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
        mut visit: impl FnMut(RecordRef<'a>) -> bool,
    ) {
        self.scan_placed(from, to, |_, record| visit(record))
    }

    /// [`Self::scan`], also telling where each record sits.
    pub fn scan_placed<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
        mut visit: impl FnMut(Placement, RecordRef<'a>) -> bool,
    ) {
        let Some((start, _)) = self.primary_for(from) else {
            return;
        };
        for (_, &primary) in self.directory.range(start.clone()..) {
            let mut number = primary;
            while number != NO_BLOCK {
                let block = self.blk(number);
                let first = match block.search(from) {
                    Ok(slot) | Err(slot) => slot,
                };
                for slot in first..block.count() {
                    let record = block.record(slot);
                    if to.is_some_and(|to| record.key > to) {
                        return;
                    }
                    let placement = Placement {
                        block: number,
                        offset: block.offset(slot),
                    };
                    if !visit(placement, record) {
                        return;
                    }
                }
                number = block.next();
            }
        }
    }

    /// The layout a snapshot stores beside the used blocks.
    pub fn layout(&self) -> FileLayout {
        FileLayout {
            block_size: self.block_size as u32,
            table_len: self.table.len() as u32,
            directory: self
                .directory
                .iter()
                .map(|(k, v)| (k.as_slice().to_vec(), *v))
                .collect(),
        }
    }

    /// Rebuild a file from a snapshot layout and its used blocks (re-expanded to their
    /// original block numbers). Returns None if they do not fit together.
    pub fn from_parts(layout: FileLayout, blocks: Vec<(u32, Block)>) -> Option<BlockFile> {
        let mut table: Vec<Option<Block>> = vec![None; layout.table_len as usize];
        for (number, block) in blocks {
            if block.size() != layout.block_size as usize {
                return None;
            }
            let slot = table.get_mut(number as usize)?;
            *slot = Some(block);
        }
        let free = (0..layout.table_len)
            .filter(|n| table[*n as usize].is_none())
            .collect();
        let directory: BTreeMap<_, _> = layout
            .directory
            .into_iter()
            .map(|(k, v)| (Bound_::from_slice(&k), v))
            .collect();
        // Every chain starts at a primary block of the directory and runs through
        // overflow blocks that exist, each block in one chain once: reads and writes
        // follow chains unchecked (a dangling or looping one would panic or spin).
        let mut seen = vec![false; table.len()];
        for &primary in directory.values() {
            let mut number = primary;
            let mut kind = BlockKind::Primary;
            while number != NO_BLOCK {
                let block = table.get(number as usize)?.as_ref()?;
                if block.kind() != kind || std::mem::replace(&mut seen[number as usize], true) {
                    return None;
                }
                kind = BlockKind::Overflow;
                number = block.next();
            }
        }
        Some(BlockFile {
            block_size: layout.block_size as usize,
            table,
            directory,
            free,
            run: None,
        })
    }
}

/// Where a key belongs: found by [`BlockFile::locate`].
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub primary: u32,
    previous: u32,
    pub block: u32,
}

#[cfg(test)]
mod tests {
    use super::super::block::encode_record;
    use super::*;

    fn put(file: &mut BlockFile, key: &str, data: &[u8]) -> PutOutcome {
        let mut rec = Vec::new();
        encode_record(&mut rec, key.as_bytes(), &[], data);
        let out = file.put(key.as_bytes(), &rec);
        if BlockFile::needs_reorg(out.chain_blocks) {
            file.reorg(out.primary);
        }
        out
    }

    fn keys(file: &BlockFile) -> Vec<String> {
        let mut out = Vec::new();
        file.scan(b"", None, |r| {
            out.push(String::from_utf8(r.key.to_vec()).unwrap());
            true
        });
        out
    }

    #[test]
    fn sequential_inserts_fill_blocks_and_scan_in_order() {
        let mut file = BlockFile::new(512);
        for i in 0..500 {
            put(&mut file, &format!("key{i:05}"), &[7u8; 40]);
        }
        let all = keys(&file);
        assert_eq!(all.len(), 500);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        // Appends keep blocks full: 500 records of ~50 bytes in 512-byte blocks.
        // Appends fill blocks completely: as many records per block as fit.
        let per_block = (512 - super::super::block::HEADER_BYTES) / (55 + SLOT_BYTES);
        assert_eq!(file.allocated_blocks(), 500usize.div_ceil(per_block));
    }

    #[test]
    fn random_inserts_and_deletes_match_a_btreemap() {
        let mut file = BlockFile::new(512);
        let mut model = BTreeMap::new();
        let mut x: u64 = 12345;
        for step in 0..4000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 700);
            if step % 3 == 0 {
                let was = model.remove(&key).is_some();
                assert_eq!(file.delete(key.as_bytes()).is_some(), was);
            } else {
                let data = vec![(x % 251) as u8; (x % 90) as usize];
                put(&mut file, &key, &data);
                model.insert(key, data);
            }
        }
        assert_eq!(keys(&file), model.keys().cloned().collect::<Vec<_>>());
        for (key, data) in &model {
            assert_eq!(file.get(key.as_bytes()).unwrap().1.data, data.as_slice());
        }
        let mut ranged = Vec::new();
        file.scan(b"k3", Some(b"k4"), |r| {
            ranged.push(r.key.to_vec());
            true
        });
        let expected: Vec<_> = model
            .range("k3".to_string()..="k4".to_string())
            .map(|(k, _)| k.as_bytes().to_vec())
            .collect();
        assert_eq!(ranged, expected);
    }

    #[test]
    fn large_records_split_without_loss() {
        let mut file = BlockFile::new(512);
        for i in (0..40).rev() {
            put(
                &mut file,
                &format!("{i:03}"),
                &vec![1u8; 100 + (i * 37) % 360],
            );
        }
        assert_eq!(keys(&file).len(), 40);
    }

    #[test]
    fn layout_round_trips_through_parts() {
        let mut file = BlockFile::new(512);
        for i in 0..300 {
            put(&mut file, &format!("{:03}", (i * 7) % 300), &[3u8; 30]);
        }
        let blocks = file.blocks().map(|(n, b)| (n, b.clone())).collect();
        let copy = BlockFile::from_parts(file.layout(), blocks).unwrap();
        assert_eq!(keys(&copy), keys(&file));
        let a: Vec<_> = file.blocks().map(|(n, b)| (n, b.checksum())).collect();
        let b: Vec<_> = copy.blocks().map(|(n, b)| (n, b.checksum())).collect();
        assert_eq!(a, b);
    }
}
