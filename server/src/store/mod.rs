//! The RAM block store of one database (SPEC A1–A5).
//!
//! A [`Store`] holds the block files of one database: for each file (table) of its
//! [`Schema`], the main file keyed by unique key, and one alternate-key table per
//! alternate key, itself a block file whose keys are `len(value) | value | unique key`.
//!
//! Every change enters through [`Store::apply`] (or its quota-free twin
//! `apply_unchecked`), whether it comes from a client transaction, an undo, a log
//! replay at restart, a mirror replica applying its source's A log, a logical or mutual
//! replica's operations, a restore or a repair. The function is
//! deterministic: the same sequence of [`Mutation`]s gives byte-identical blocks. A put
//! never reorganises a chain by itself; it reports a chain that has grown too long, and
//! the writer applies (and logs) a [`Mutation::Reorg`] for it.
//!
//! Invariants: a failed `apply` changes nothing (size and quota are checked first);
//! memory in use never passes the quota except while undoing a cancelled transaction.

pub mod block;
pub mod file;
pub mod snapshot;

use serde::{Deserialize, Serialize};

pub use block::{encode_record, Block, RecordRef};
pub use file::{BlockFile, Placement};

/// Index of a block file inside a database (main files and alternate-key tables).
pub type FileId = u32;

/// The tables of a database and their alternate keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub files: Vec<FileSchema>,
}

/// One table: its name and the names of its alternate keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileSchema {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`, not starting with `__` (Doppel's own).
    #[schemars(regex(pattern = r"^(?!__)[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 16), extend("uniqueItems" = true), inner(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$")))]
    pub alt_keys: Vec<String>,
}

/// Maximum alternate keys per file (alt indexes are one byte).
pub const MAX_ALT_KEYS: usize = 16;
/// Maximum key and alternate-key value length in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

impl Schema {
    /// Id of the main block file of table `index`.
    pub fn main_id(&self, index: usize) -> FileId {
        self.files[..index]
            .iter()
            .map(|f| 1 + f.alt_keys.len() as u32)
            .sum()
    }

    /// Index of the table called `name`.
    pub fn file_index(&self, name: &str) -> Option<usize> {
        self.files.iter().position(|f| f.name == name)
    }

    /// The table whose main file is `id`, if `id` is a main file.
    pub fn table_of(&self, id: FileId) -> Option<usize> {
        (0..self.files.len()).find(|i| self.main_id(*i) == id)
    }

    /// Names of all block files in id order: `table` and `table#alt`.
    pub fn block_file_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for file in &self.files {
            names.push(file.name.clone());
            for alt in &file.alt_keys {
                names.push(format!("{}#{}", file.name, alt));
            }
        }
        names
    }
}

/// Why a mutation was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no file with id {0}")]
    UnknownFile(FileId),
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {len} bytes; at most {max} are allowed")]
    KeyTooLong { len: usize, max: usize },
    #[error("a record with this unique key already exists")]
    DuplicateKey,
    #[error("no record with this unique key")]
    NotFound,
    #[error("the record needs {len} bytes but a block holds at most {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error(
        "the database would need {needed_bytes} bytes of blocks; its memory quota is {quota_bytes}"
    )]
    QuotaExceeded { needed_bytes: u64, quota_bytes: u64 },
    #[error("the record bytes are malformed")]
    Malformed,
    #[error("block {block} of file {file} is not a primary block with a chain")]
    BadReorg { file: FileId, block: u32 },
}

/// How a put treats an existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutMode {
    /// Fails with `DuplicateKey` if the key exists.
    Insert,
    /// Fails with `NotFound` if the key is absent.
    Update,
    /// Inserts or replaces.
    Upsert,
}

/// One change to the store.
#[derive(Debug, Clone, Copy)]
pub enum Mutation<'a> {
    Put {
        file: FileId,
        mode: PutMode,
        /// The encoded record (see [`block::encode_record`]).
        record: &'a [u8],
    },
    Delete {
        file: FileId,
        key: &'a [u8],
    },
    Reorg {
        file: FileId,
        block: u32,
    },
}

/// What an applied mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Insert,
    Update,
    Delete,
    Reorg,
}

/// The result of [`Store::apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    pub effect: Effect,
    /// Where the record now is (put) or was (delete); the reorganised block for reorg.
    pub placement: Placement,
    /// The encoded record before the change, if there was one.
    pub before: Option<Vec<u8>>,
    /// A chain that grew past its limit; the writer should reorganise it next.
    pub reorg: Option<(FileId, u32)>,
}

/// The blocks of one database.
#[derive(Debug, Clone)]
pub struct Store {
    schema: Schema,
    block_size: usize,
    quota_bytes: u64,
    files: Vec<BlockFile>,
    /// The transaction whose mutations are being applied ([`Store::begin`]).
    txn: u64,
}

impl Store {
    pub fn new(schema: Schema, block_size: usize, quota_bytes: u64) -> Store {
        let count = schema.block_file_names().len();
        Store {
            schema,
            block_size,
            quota_bytes,
            files: (0..count).map(|_| BlockFile::new(block_size)).collect(),
            txn: 0,
        }
    }

    /// Rebuild a store from its block files (snapshot restore).
    pub fn from_files(
        schema: Schema,
        block_size: usize,
        quota_bytes: u64,
        files: Vec<BlockFile>,
    ) -> Option<Store> {
        (files.len() == schema.block_file_names().len()).then_some(Store {
            schema,
            block_size,
            quota_bytes,
            files,
            txn: 0,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Bytes of blocks allocated across all files.
    pub fn memory_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.allocated_blocks() as u64)
            .sum::<u64>()
            * self.block_size as u64
    }

    /// Bytes of RAM the files' indexes take besides the blocks
    /// ([`BlockFile::index_bytes`]).
    pub fn index_bytes(&self) -> u64 {
        self.files.iter().map(BlockFile::index_bytes).sum()
    }

    /// The block files, indexed by [`FileId`].
    pub fn files(&self) -> &[BlockFile] {
        &self.files
    }

    /// Repair block file `index` from its source's copy (SPEC G3): the source's layout
    /// (directory and table size), the numbers of the blocks it uses, and the blocks
    /// that differ here. Blocks not sent are kept as they are here; one that is used by
    /// the source, missing here and not sent is an error, and so is a result that does
    /// not fit together. The memory quota does not apply: the source holds as much.
    pub fn repair_file(
        &mut self,
        index: usize,
        layout: file::FileLayout,
        used: &[u32],
        blocks: Vec<(u32, block::Block)>,
    ) -> Result<usize, String> {
        let current = self
            .files
            .get(index)
            .ok_or_else(|| format!("no block file {index}"))?;
        let sent = blocks.len();
        let mut replacing: std::collections::BTreeMap<u32, block::Block> =
            blocks.into_iter().collect();
        let mut parts = Vec::with_capacity(used.len());
        for &n in used {
            let block = match replacing.remove(&n) {
                Some(b) => b,
                None => current
                    .block(n)
                    .cloned()
                    .ok_or_else(|| format!("block {n} is missing here and was not sent"))?,
            };
            parts.push((n, block));
        }
        if let Some(n) = replacing.keys().next() {
            return Err(format!("block {n} was sent but the source does not use it"));
        }
        self.files[index] = file::BlockFile::from_parts(layout, parts)
            .ok_or("the repaired blocks do not fit the source's layout")?;
        Ok(sent)
    }

    pub fn file_mut(&mut self, id: FileId) -> Option<&mut BlockFile> {
        self.files.get_mut(id as usize)
    }

    /// Largest encoded record a block holds.
    pub fn max_record_bytes(&self) -> usize {
        Block::capacity(self.block_size)
    }

    /// Find a record in main file `file` by unique key.
    #[inline]
    pub fn get(&self, file: FileId, key: &[u8]) -> Option<(Placement, RecordRef<'_>)> {
        self.files.get(file as usize)?.get(key)
    }

    /// Records of table `table` whose alternate key `alt` equals `value`, in unique-key
    /// order, at most `limit`.
    pub fn lookup_alt(
        &self,
        table: usize,
        alt: usize,
        value: &[u8],
        limit: usize,
    ) -> Vec<(Placement, RecordRef<'_>)> {
        let main = self.schema.main_id(table);
        let index = &self.files[(main + 1 + alt as u32) as usize];
        let prefix = alt_prefix(value);
        let mut keys = Vec::new();
        index.scan(&prefix, None, |entry| {
            if !entry.key.starts_with(&prefix) || keys.len() >= limit {
                return false;
            }
            keys.push(&entry.key[prefix.len()..]);
            true
        });
        keys.into_iter()
            .filter_map(|key| self.files[main as usize].get(key))
            .collect()
    }

    /// The mutations that follow are transaction `txn`'s. Where a record lands may
    /// depend on the transaction's earlier puts (`BlockFile::put_at`), so the writer
    /// and every replay of its log (`txn::replay_entry`) call this alike: replay lands
    /// each record where the log says.
    pub fn begin(&mut self, txn: u64) {
        if txn != self.txn {
            self.txn = txn;
            for file in &mut self.files {
                file.begin();
            }
        }
    }

    /// Apply one mutation. On error nothing changed.
    pub fn apply(&mut self, mutation: Mutation<'_>) -> Result<Applied, StoreError> {
        self.apply_inner(mutation, true)
    }

    /// Apply without the quota check: used only to restore before images on cancel,
    /// which must not fail.
    pub fn apply_unchecked(&mut self, mutation: Mutation<'_>) -> Result<Applied, StoreError> {
        self.apply_inner(mutation, false)
    }

    fn apply_inner(
        &mut self,
        mutation: Mutation<'_>,
        check_quota: bool,
    ) -> Result<Applied, StoreError> {
        match mutation {
            Mutation::Put { file, mode, record } => self.put(file, mode, record, check_quota),
            Mutation::Delete { file, key } => self.delete(file, key),
            Mutation::Reorg { file, block } => {
                let target = self
                    .files
                    .get_mut(file as usize)
                    .ok_or(StoreError::UnknownFile(file))?;
                if !target.reorg(block) {
                    return Err(StoreError::BadReorg { file, block });
                }
                Ok(Applied {
                    effect: Effect::Reorg,
                    placement: Placement { block, offset: 0 },
                    before: None,
                    reorg: None,
                })
            }
        }
    }

    fn table_for(&self, file: FileId) -> Result<usize, StoreError> {
        self.schema
            .table_of(file)
            .ok_or(StoreError::UnknownFile(file))
    }

    /// Check a key's length rules.
    pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_BYTES,
            });
        }
        Ok(())
    }

    fn put(
        &mut self,
        file: FileId,
        mode: PutMode,
        record: &[u8],
        check_quota: bool,
    ) -> Result<Applied, StoreError> {
        let table = self.table_for(file)?;
        let rec = block::decode(record).ok_or(StoreError::Malformed)?;
        Self::check_key(rec.key)?;
        for (_, value) in rec.alts() {
            if value.len() > MAX_KEY_BYTES {
                return Err(StoreError::KeyTooLong {
                    len: value.len(),
                    max: MAX_KEY_BYTES,
                });
            }
        }
        let max = self.max_record_bytes();
        if record.len() > max {
            return Err(StoreError::RecordTooLarge {
                len: record.len(),
                max,
            });
        }
        let main = &self.files[file as usize];
        let target = main.locate(rec.key);
        let before = target
            .and_then(|t| main.get_at(&t, rec.key))
            .map(|(_, r)| r);
        match (mode, before.is_some()) {
            (PutMode::Insert, true) => return Err(StoreError::DuplicateKey),
            (PutMode::Update, false) => return Err(StoreError::NotFound),
            _ => {}
        }
        // Alternate-key entries to remove and add.
        let old_alts: Vec<(u8, Vec<u8>)> = before
            .map(|r| {
                r.alts()
                    .map(|(i, v)| (i, alt_entry_key(v, rec.key)))
                    .collect()
            })
            .unwrap_or_default();
        let new_alts: Vec<(u8, Vec<u8>)> = rec
            .alts()
            .map(|(i, v)| (i, alt_entry_key(v, rec.key)))
            .collect();
        let alt_count = self.schema.files[table].alt_keys.len();
        let mut needed_blocks = main.blocks_needed_at(target.as_ref(), rec.key, record.len());
        for (index, entry) in &new_alts {
            if *index as usize >= alt_count {
                return Err(StoreError::UnknownFile(file + 1 + *index as u32));
            }
            let len = block::record_len(entry, &[], &[]);
            if len > max {
                return Err(StoreError::RecordTooLarge { len, max });
            }
            if !old_alts.contains(&(*index, entry.clone())) {
                needed_blocks +=
                    self.files[(file + 1 + *index as u32) as usize].blocks_needed(entry, len);
            }
        }
        if check_quota && needed_blocks > 0 {
            let needed_bytes = self.memory_bytes() + (needed_blocks * self.block_size) as u64;
            if needed_bytes > self.quota_bytes {
                return Err(StoreError::QuotaExceeded {
                    needed_bytes,
                    quota_bytes: self.quota_bytes,
                });
            }
        }
        let before = before.map(|r| encode_owned(&r));
        let mut entry = Vec::new();
        for (index, key) in old_alts.iter().filter(|e| !new_alts.contains(e)) {
            self.files[(file + 1 + *index as u32) as usize].delete(key);
        }
        let mut reorg = None;
        for (index, key) in new_alts.iter().filter(|e| !old_alts.contains(e)) {
            let id = file + 1 + *index as u32;
            encode_record(&mut entry, key, &[], &[]);
            let outcome = self.files[id as usize].put(key, &entry);
            if BlockFile::needs_reorg(outcome.chain_blocks) {
                reorg = Some((id, outcome.primary));
            }
        }
        let outcome = self.files[file as usize].put_at(target, rec.key, record);
        if BlockFile::needs_reorg(outcome.chain_blocks) {
            reorg = Some((file, outcome.primary));
        }
        Ok(Applied {
            effect: if before.is_some() {
                Effect::Update
            } else {
                Effect::Insert
            },
            placement: outcome.placement,
            before,
            reorg,
        })
    }

    fn delete(&mut self, file: FileId, key: &[u8]) -> Result<Applied, StoreError> {
        self.table_for(file)?;
        Self::check_key(key)?;
        let (_, record) = self.files[file as usize]
            .get(key)
            .ok_or(StoreError::NotFound)?;
        let before = encode_owned(&record);
        let alts: Vec<(u8, Vec<u8>)> = record
            .alts()
            .map(|(i, v)| (i, alt_entry_key(v, key)))
            .collect();
        for (index, entry) in alts {
            self.files[(file + 1 + index as u32) as usize].delete(&entry);
        }
        let placement = self.files[file as usize]
            .delete(key)
            .expect("record was just found");
        Ok(Applied {
            effect: Effect::Delete,
            placement,
            before: Some(before),
            reorg: None,
        })
    }

    /// Per-block checksums of every block file, in file-id order.
    pub fn checksums(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        self.schema
            .block_file_names()
            .into_iter()
            .zip(&self.files)
            .map(|(name, file)| {
                (
                    name,
                    file.blocks().map(|(n, b)| (n, b.checksum())).collect(),
                )
            })
            .collect()
    }
}

/// Re-encode a record seen in a block.
pub fn encode_owned(record: &RecordRef<'_>) -> Vec<u8> {
    let alts: Vec<(u8, &[u8])> = record.alts().collect();
    let mut out = Vec::new();
    encode_record(&mut out, record.key, &alts, record.data);
    out
}

fn alt_prefix(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + value.len());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn alt_entry_key(value: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = alt_prefix(value);
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests;
