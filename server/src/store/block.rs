//! One fixed-size block: the byte layout of records inside it.
//!
//! A block is `block_size` bytes. It starts with a 32-byte header, then an array of
//! slots kept in unique-key order, then free space; records are packed at the end of
//! the block and grow downward. The layout is a pure function of the sequence of
//! inserts and removals applied to it, so two stores that apply the same operations
//! hold byte-identical blocks (SPEC A5): freed bytes are always zeroed.
//!
//! Each slot carries, besides the record's offset, the key's *head*: the four key
//! bytes that follow the prefix every key of the block shares (kept in the header).
//! A lookup compares heads inside the slot array and reads a record only to settle a
//! tie, so it touches two or three cache lines instead of one per probe.
//!
//! ```text
//! 0   kind      u8   1 = primary, 2 = overflow
//! 1   skip      u8   length of the prefix all keys share (at most 16)
//! 2   count     u16  number of records
//! 4   heap      u32  offset of the lowest record byte (records fill [heap, size))
//! 8   next      u32  next block of the overflow chain, NO_BLOCK if none
//! 12  reserved  u32
//! 16  prefix    [u8; 16]  the shared prefix (bytes past `skip` are zero)
//! 32  slots     count x (offset u16 LE, head u32 BE), in key order
//! ```
//!
//! A record is `key_len u16 | key | alt_count u8 | (alt_index u8, len u16, bytes)* |
//! data_len u32 | data`, all little-endian.

use std::cmp::Ordering;
use std::sync::Arc;

/// Size of the block header in bytes.
pub const HEADER_BYTES: usize = 32;
/// Bytes a record costs in the slot array: its offset and its key head.
pub const SLOT_BYTES: usize = 6;
/// Where the shared key prefix sits in the header, and its longest length.
const PREFIX_AT: usize = 16;
const MAX_SKIP: usize = 16;

/// The four key bytes after `skip`, zero padded, as an integer whose order is the
/// bytes' order.
#[inline]
fn head_of(key: &[u8], skip: usize) -> u32 {
    let mut head = [0u8; 4];
    if let Some(rest) = key.get(skip..) {
        let n = rest.len().min(4);
        head[..n].copy_from_slice(&rest[..n]);
    }
    u32::from_be_bytes(head)
}
/// Marks "no block" in chain pointers.
pub const NO_BLOCK: u32 = u32::MAX;
/// Smallest and largest configurable block sizes. Slot offsets are `u16`.
pub const MIN_BLOCK_BYTES: usize = 512;
pub const MAX_BLOCK_BYTES: usize = 32 * 1024;

const KIND_PRIMARY: u8 = 1;
const KIND_OVERFLOW: u8 = 2;

/// Whether a block is reached from the block directory or only through its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Primary,
    Overflow,
}

/// The bytes of one block. Clones share the bytes; the first write to a shared block
/// copies it (copy-on-write), which is what keeps a snapshot frozen.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("kind", &self.kind())
            .field("count", &self.count())
            .field("next", &self.next())
            .finish()
    }
}

/// A record seen in place inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    alts: &'a [u8],
    alt_count: u8,
    pub data: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// The alternate-key values present on this record, as (alt index, value).
    pub fn alts(&self) -> AltIter<'a> {
        AltIter {
            rest: self.alts,
            left: self.alt_count,
        }
    }

    /// The value of alternate key `index`, if the record has one.
    pub fn alt(&self, index: u8) -> Option<&'a [u8]> {
        self.alts().find(|(i, _)| *i == index).map(|(_, v)| v)
    }
}

/// Iterator over the alternate keys of a record.
pub struct AltIter<'a> {
    rest: &'a [u8],
    left: u8,
}

impl<'a> Iterator for AltIter<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let index = self.rest[0];
        let len = u16::from_le_bytes([self.rest[1], self.rest[2]]) as usize;
        let value = &self.rest[3..3 + len];
        self.rest = &self.rest[3 + len..];
        Some((index, value))
    }
}

/// Encoded length of a record with these parts.
pub fn record_len(key: &[u8], alts: &[(u8, &[u8])], data: &[u8]) -> usize {
    2 + key.len() + 1 + alts.iter().map(|(_, v)| 3 + v.len()).sum::<usize>() + 4 + data.len()
}

/// Encode a record into `out` (cleared first). Alternate keys must be sorted by index.
pub fn encode_record(out: &mut Vec<u8>, key: &[u8], alts: &[(u8, &[u8])], data: &[u8]) {
    debug_assert!(key.len() <= u16::MAX as usize);
    debug_assert!(alts.windows(2).all(|w| w[0].0 < w[1].0));
    out.clear();
    out.reserve(record_len(key, alts, data));
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.push(alts.len() as u8);
    for (index, value) in alts {
        out.push(*index);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// Decode a record that starts at the beginning of `bytes`; returns it and its length.
fn decode_record(bytes: &[u8]) -> (RecordRef<'_>, usize) {
    let key_len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
    let key = &bytes[2..2 + key_len];
    let mut pos = 2 + key_len;
    let alt_count = bytes[pos];
    pos += 1;
    let alts_start = pos;
    for _ in 0..alt_count {
        let len = u16::from_le_bytes([bytes[pos + 1], bytes[pos + 2]]) as usize;
        pos += 3 + len;
    }
    let alts = &bytes[alts_start..pos];
    let data_len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
    pos += 4;
    let data = &bytes[pos..pos + data_len];
    (
        RecordRef {
            key,
            alts,
            alt_count,
            data,
        },
        pos + data_len,
    )
}

/// Decode a record from bytes that did not come from a block (a log entry, a request),
/// checking every length. Returns None if `bytes` is not exactly one record.
pub fn decode(bytes: &[u8]) -> Option<RecordRef<'_>> {
    let take = |pos: usize, len: usize| bytes.get(pos..pos.checked_add(len)?);
    let key_len = u16::from_le_bytes(take(0, 2)?.try_into().ok()?) as usize;
    let key = take(2, key_len)?;
    let mut pos = 2 + key_len;
    let alt_count = *take(pos, 1)?.first()?;
    pos += 1;
    let alts_start = pos;
    let mut last_index = None;
    for _ in 0..alt_count {
        let header = take(pos, 3)?;
        if last_index.is_some_and(|last| header[0] <= last) {
            return None;
        }
        last_index = Some(header[0]);
        let len = u16::from_le_bytes([header[1], header[2]]) as usize;
        take(pos + 3, len)?;
        pos += 3 + len;
    }
    let alts = &bytes[alts_start..pos];
    let data_len = u32::from_le_bytes(take(pos, 4)?.try_into().ok()?) as usize;
    let data = take(pos + 4, data_len)?;
    (pos + 4 + data_len == bytes.len()).then_some(RecordRef {
        key,
        alts,
        alt_count,
        data,
    })
}

/// The length of the record at the start of `bytes`, checking every length against
/// the end of `bytes` (None: it does not fit).
fn record_extent(bytes: &[u8]) -> Option<usize> {
    let u16_at = |pos: usize| {
        let b = bytes.get(pos..pos.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let mut pos = 2 + u16_at(0)?;
    let alt_count = *bytes.get(pos)?;
    pos += 1;
    for _ in 0..alt_count {
        pos += 3 + u16_at(pos + 1)?;
    }
    let data_len = bytes.get(pos..pos + 4)?;
    let end = pos + 4 + u32::from_le_bytes(data_len.try_into().ok()?) as usize;
    (end <= bytes.len()).then_some(end)
}

/// The key of the record at `bytes` without decoding the rest.
#[inline]
fn record_key(bytes: &[u8]) -> &[u8] {
    let key_len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
    &bytes[2..2 + key_len]
}

impl Block {
    /// A new, empty block of `size` bytes.
    pub fn new(size: usize, kind: BlockKind) -> Block {
        assert!((MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&size));
        let mut block = Block {
            // SAFETY: all-zero bytes are a valid `[u8]`. Allocating zeroed in place
            // avoids building a Vec and copying it into the Arc (measured: block
            // allocation dominated replay through page faults).
            bytes: unsafe { Arc::<[u8]>::new_zeroed_slice(size).assume_init() },
        };
        block.set_kind(kind);
        block.set_heap(size);
        block.set_next(NO_BLOCK);
        block
    }

    /// Rebuild a block from bytes taken out of a snapshot. Checks the header.
    pub fn from_bytes(bytes: &[u8]) -> Option<Block> {
        let block = Block {
            bytes: bytes.into(),
        };
        let size = block.bytes.len();
        let ok = (MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&size)
            && matches!(block.bytes[0], KIND_PRIMARY | KIND_OVERFLOW)
            && block.heap() <= size
            && block.skip() <= MAX_SKIP
            && HEADER_BYTES + block.count() * SLOT_BYTES <= block.heap()
            && block.records_are_sound();
        ok.then_some(block)
    }

    /// Whether every slot points at a whole record inside the heap, the keys carry the
    /// block's prefix and their slot's head, and they are in strictly increasing
    /// order: what reads take for granted (they index the bytes unchecked), checked
    /// once for a block that comes from outside (a snapshot, a repair).
    fn records_are_sound(&self) -> bool {
        let (heap, size, skip) = (self.heap(), self.size(), self.skip());
        let prefix = &self.bytes[PREFIX_AT..PREFIX_AT + skip];
        let mut previous: Option<&[u8]> = None;
        for index in 0..self.count() {
            let start = self.slot(index);
            if start < heap || start >= size {
                return false;
            }
            let Some(len) = record_extent(&self.bytes[start..]) else {
                return false;
            };
            let key = record_key(&self.bytes[start..start + len]);
            if !key.starts_with(prefix)
                || head_of(key, skip) != self.head(index)
                || previous.is_some_and(|p| p >= key)
            {
                return false;
            }
            previous = Some(key);
        }
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Mutable access to the raw bytes, for tests that corrupt blocks on purpose.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        Arc::make_mut(&mut self.bytes)
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// xxh3 of the block's bytes: equal blocks have equal checksums (SPEC G3).
    pub fn checksum(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.bytes)
    }

    pub fn kind(&self) -> BlockKind {
        if self.bytes[0] == KIND_OVERFLOW {
            BlockKind::Overflow
        } else {
            BlockKind::Primary
        }
    }

    pub fn set_kind(&mut self, kind: BlockKind) {
        self.bytes_mut()[0] = match kind {
            BlockKind::Primary => KIND_PRIMARY,
            BlockKind::Overflow => KIND_OVERFLOW,
        };
    }

    pub fn count(&self) -> usize {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]]) as usize
    }

    fn heap(&self) -> usize {
        u32::from_le_bytes(self.bytes[4..8].try_into().expect("4 bytes")) as usize
    }

    fn set_heap(&mut self, heap: usize) {
        self.bytes_mut()[4..8].copy_from_slice(&(heap as u32).to_le_bytes());
    }

    /// The next block of the overflow chain.
    pub fn next(&self) -> u32 {
        u32::from_le_bytes(self.bytes[8..12].try_into().expect("4 bytes"))
    }

    pub fn set_next(&mut self, next: u32) {
        self.bytes_mut()[8..12].copy_from_slice(&next.to_le_bytes());
    }

    /// Largest record an empty block of `size` bytes can hold.
    pub fn capacity(size: usize) -> usize {
        size - HEADER_BYTES - SLOT_BYTES
    }

    /// Bytes free for new records and their slots.
    pub fn free(&self) -> usize {
        self.heap() - HEADER_BYTES - self.count() * SLOT_BYTES
    }

    /// Bytes used by records and slots.
    pub fn used(&self) -> usize {
        self.size() - HEADER_BYTES - self.free()
    }

    /// Whether a record of `len` bytes fits without reorganising.
    pub fn fits(&self, len: usize) -> bool {
        self.free() >= len + SLOT_BYTES
    }

    #[inline]
    fn slot(&self, index: usize) -> usize {
        let at = HEADER_BYTES + index * SLOT_BYTES;
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]) as usize
    }

    #[inline]
    fn head(&self, index: usize) -> u32 {
        let at = HEADER_BYTES + index * SLOT_BYTES + 2;
        u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    #[inline]
    fn skip(&self) -> usize {
        self.bytes[1] as usize
    }

    fn prefix(&self) -> &[u8] {
        &self.bytes[PREFIX_AT..PREFIX_AT + self.skip()]
    }

    /// Byte offset of the record at slot `index` (the "record offset" of SPEC B2).
    pub fn offset(&self, index: usize) -> u32 {
        self.slot(index) as u32
    }

    /// The key at slot `index`.
    #[inline]
    pub fn key(&self, index: usize) -> &[u8] {
        record_key(&self.bytes[self.slot(index)..])
    }

    /// The record at slot `index`.
    pub fn record(&self, index: usize) -> RecordRef<'_> {
        decode_record(&self.bytes[self.slot(index)..]).0
    }

    /// The raw bytes of the record at slot `index`.
    pub fn record_bytes(&self, index: usize) -> &[u8] {
        let start = self.slot(index);
        let len = decode_record(&self.bytes[start..]).1;
        &self.bytes[start..start + len]
    }

    /// Lowest key held (the FROM of the block's range).
    pub fn first_key(&self) -> Option<&[u8]> {
        (self.count() > 0).then(|| self.key(0))
    }

    /// Highest key held (the TO of the block's range).
    pub fn last_key(&self) -> Option<&[u8]> {
        let count = self.count();
        (count > 0).then(|| self.key(count - 1))
    }

    /// Binary search for `key`: `Ok(slot)` if present, `Err(slot)` where it would go.
    #[inline]
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let count = self.count();
        if count == 0 {
            return Err(0);
        }
        // A key outside the shared prefix sorts before or after every key here.
        let prefix = self.prefix();
        let n = prefix.len().min(key.len());
        match key[..n].cmp(&prefix[..n]) {
            Ordering::Less => return Err(0),
            Ordering::Greater => return Err(count),
            Ordering::Equal if key.len() < prefix.len() => return Err(0),
            Ordering::Equal => {}
        }
        // The first slot whose head is not below the key's; heads never decrease.
        let head = head_of(key, prefix.len());
        let (mut low, mut high) = (0usize, count);
        while low < high {
            let mid = (low + high) / 2;
            if self.head(mid) < head {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        // Equal heads: settle by the whole key.
        while low < count && self.head(low) == head {
            match self.key(low).cmp(key) {
                Ordering::Less => low += 1,
                Ordering::Equal => return Ok(low),
                Ordering::Greater => return Err(low),
            }
        }
        Err(low)
    }

    /// Whether `key` sorts before this block's lowest key, deciding from the header and
    /// the first slot when it can (one cache line) and from the record only on a tie.
    /// The block must hold records.
    #[inline]
    pub fn sorts_before_first(&self, key: &[u8]) -> bool {
        debug_assert!(self.count() > 0);
        let prefix = self.prefix();
        let n = prefix.len().min(key.len());
        match key[..n].cmp(&prefix[..n]) {
            Ordering::Less => return true,
            Ordering::Greater => return false,
            Ordering::Equal if key.len() < prefix.len() => return true,
            Ordering::Equal => {}
        }
        match head_of(key, prefix.len()).cmp(&self.head(0)) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => key < self.key(0),
        }
    }

    /// Shrink the shared prefix to what it has in common with `key`, recomputing every
    /// slot's head if it shrank.
    fn share_prefix_with(&mut self, key: &[u8]) {
        let count = self.count();
        if count == 0 {
            let skip = key.len().min(MAX_SKIP);
            let bytes = self.bytes_mut();
            bytes[1] = skip as u8;
            bytes[PREFIX_AT..PREFIX_AT + skip].copy_from_slice(&key[..skip]);
            return;
        }
        let prefix = self.prefix();
        let common = prefix.iter().zip(key).take_while(|(a, b)| a == b).count();
        if common == prefix.len() {
            return;
        }
        let heads: Vec<u32> = (0..count).map(|i| head_of(self.key(i), common)).collect();
        let bytes = self.bytes_mut();
        bytes[1] = common as u8;
        bytes[PREFIX_AT + common..PREFIX_AT + MAX_SKIP].fill(0);
        for (index, head) in heads.into_iter().enumerate() {
            let at = HEADER_BYTES + index * SLOT_BYTES + 2;
            bytes[at..at + 4].copy_from_slice(&head.to_be_bytes());
        }
    }

    /// Insert encoded `record` at slot `index`. The caller checked `fits` and order.
    /// Returns the record's offset.
    pub fn insert_at(&mut self, index: usize, record: &[u8]) -> u32 {
        assert!(self.fits(record.len()), "insert into a block without room");
        let count = self.count();
        debug_assert!(index <= count);
        let key = record_key(record);
        // Slots are in strictly increasing key order: search, FROM/TO and the block
        // directory all rely on it, and a record out of place would be lost to reads.
        debug_assert!(
            index == 0 || self.key(index - 1) < key,
            "insert out of order"
        );
        debug_assert!(
            index == count || key < self.key(index),
            "insert out of order"
        );
        self.share_prefix_with(key);
        let head = head_of(key, self.skip());
        let heap = self.heap() - record.len();
        // The record heap grows down, the slot array up: they must never meet.
        debug_assert!(heap >= HEADER_BYTES + (count + 1) * SLOT_BYTES);
        let bytes = self.bytes_mut();
        bytes[heap..heap + record.len()].copy_from_slice(record);
        bytes[4..8].copy_from_slice(&(heap as u32).to_le_bytes());
        let slots_at = HEADER_BYTES + index * SLOT_BYTES;
        let slots_end = HEADER_BYTES + count * SLOT_BYTES;
        bytes.copy_within(slots_at..slots_end, slots_at + SLOT_BYTES);
        bytes[slots_at..slots_at + 2].copy_from_slice(&(heap as u16).to_le_bytes());
        bytes[slots_at + 2..slots_at + SLOT_BYTES].copy_from_slice(&head.to_be_bytes());
        bytes[2..4].copy_from_slice(&((count + 1) as u16).to_le_bytes());
        heap as u32
    }

    /// Remove the record at slot `index`, closing the gap and zeroing freed bytes.
    pub fn remove_at(&mut self, index: usize) {
        let count = self.count();
        assert!(index < count, "remove of a missing slot");
        let offset = self.slot(index);
        let len = decode_record(&self.bytes[offset..]).1;
        let heap = self.heap();
        let bytes = self.bytes_mut();
        // Close the hole: records below it move up by `len`.
        bytes.copy_within(heap..offset, heap + len);
        bytes[heap..heap + len].fill(0);
        bytes[4..8].copy_from_slice(&((heap + len) as u32).to_le_bytes());
        for slot in 0..count {
            let at_slot = HEADER_BYTES + slot * SLOT_BYTES;
            let at = u16::from_le_bytes([bytes[at_slot], bytes[at_slot + 1]]) as usize;
            if at < offset {
                bytes[at_slot..at_slot + 2].copy_from_slice(&((at + len) as u16).to_le_bytes());
            }
        }
        let slots_at = HEADER_BYTES + index * SLOT_BYTES;
        let slots_end = HEADER_BYTES + count * SLOT_BYTES;
        bytes.copy_within(slots_at + SLOT_BYTES..slots_end, slots_at);
        bytes[slots_end - SLOT_BYTES..slots_end].fill(0);
        bytes[2..4].copy_from_slice(&((count - 1) as u16).to_le_bytes());
        if count == 1 {
            // An emptied block forgets its prefix, so it equals a fresh one.
            bytes[1] = 0;
            bytes[PREFIX_AT..PREFIX_AT + MAX_SKIP].fill(0);
        }
    }

    /// Move the records from slot `from` on into `other` (which must be empty),
    /// keeping their order. Used by splits.
    pub fn move_tail(&mut self, from: usize, other: &mut Block) {
        debug_assert_eq!(other.count(), 0);
        let count = self.count();
        for index in from..count {
            let record = self.record_bytes(index).to_vec();
            other.insert_at(index - from, &record);
        }
        for index in (from..count).rev() {
            self.remove_at(index);
        }
    }

    /// The slot at which to split so that each side holds about half the bytes.
    pub fn byte_midpoint(&self) -> usize {
        let half = self.used() / 2;
        let mut acc = 0;
        for index in 0..self.count() {
            acc += self.record_bytes(index).len() + SLOT_BYTES;
            if acc >= half {
                return (index + 1).min(self.count() - 1).max(1);
            }
        }
        self.count() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, key.as_bytes(), &[(0, b"x")], data.as_bytes());
        out
    }

    #[test]
    fn insert_search_remove_keeps_order_and_zeroes() {
        let mut block = Block::new(512, BlockKind::Primary);
        let empty = block.clone();
        for key in ["m", "c", "x", "a"] {
            let slot = block.search(key.as_bytes()).unwrap_err();
            block.insert_at(slot, &rec(key, "data"));
        }
        let keys: Vec<_> = (0..block.count()).map(|i| block.key(i).to_vec()).collect();
        assert_eq!(
            keys,
            vec![b"a".to_vec(), b"c".to_vec(), b"m".to_vec(), b"x".to_vec()]
        );
        assert_eq!(block.record(2).data, b"data");
        assert_eq!(block.record(2).alt(0), Some(&b"x"[..]));
        for key in ["c", "x", "a", "m"] {
            let slot = block.search(key.as_bytes()).unwrap();
            block.remove_at(slot);
        }
        assert_eq!(block, empty, "removing everything restores the empty bytes");
    }

    #[test]
    fn search_and_first_key_checks_agree_with_plain_comparison() {
        let mut block = Block::new(4096, BlockKind::Primary);
        let keys = [
            "abcd",
            "abcde",
            "abcdef\0",
            "abcdefgh1",
            "abcdefgh2",
            "abcx",
            "abd",
        ];
        for key in keys {
            let slot = block.search(key.as_bytes()).unwrap_err();
            block.insert_at(slot, &rec(key, "v"));
        }
        let probes = [
            "",
            "a",
            "abc",
            "abcd",
            "abcd\0",
            "abcde",
            "abcdef",
            "abcdefgh",
            "abcdefgh2",
            "abcdefgh3",
            "abcz",
            "abd",
            "b",
        ];
        for probe in probes {
            let expected = keys
                .iter()
                .position(|k| *k == probe)
                .ok_or_else(|| keys.iter().filter(|k| **k < probe).count());
            assert_eq!(block.search(probe.as_bytes()), expected, "search {probe:?}");
            assert_eq!(
                block.sorts_before_first(probe.as_bytes()),
                probe < keys[0],
                "first {probe:?}"
            );
        }
    }

    #[test]
    fn split_moves_tail_in_order() {
        let mut block = Block::new(512, BlockKind::Primary);
        for i in 0..10 {
            let key = format!("k{i}");
            let slot = block.search(key.as_bytes()).unwrap_err();
            block.insert_at(slot, &rec(&key, "0123456789"));
        }
        let mut other = Block::new(512, BlockKind::Overflow);
        let mid = block.byte_midpoint();
        block.move_tail(mid, &mut other);
        assert_eq!(block.count() + other.count(), 10);
        assert!(block.last_key().unwrap() < other.first_key().unwrap());
    }

    #[test]
    fn from_bytes_rejects_garbage() {
        assert!(Block::from_bytes(&[0xff; 512]).is_none());
        let block = Block::new(1024, BlockKind::Overflow);
        let copy = Block::from_bytes(block.as_bytes()).unwrap();
        assert_eq!(copy, block);
    }
}
