//! Repairing a database's blocks in place from its source's copy (verify and repair,
//! [`crate::transport::verify`]), and the fault injection its tests use.
//!
//! A repair replaces whole blocks under the state lock, so readers see the file before
//! or after, never a mix; it then takes a snapshot, because the log does not hold the
//! repaired blocks and a restart would otherwise replay the damage back.

use std::sync::Arc;

use super::Database;
use crate::node::error::{Error, Result};
use crate::store::Store;

impl Database {
    /// Repair block file `file` (a name from the checksums) from its source's copy; see
    /// [`Store::repair_file`]. The repaired state is then stored as a snapshot, so a
    /// restart keeps it. Returns how many blocks were replaced.
    pub async fn repair_blocks(
        self: &Arc<Self>,
        file: &str,
        layout: crate::store::file::FileLayout,
        used: &[u32],
        blocks: Vec<(u32, crate::store::block::Block)>,
    ) -> Result<usize> {
        let replaced = {
            let mut state = self.state.write();
            let index = block_file_index(&state.store, file)?;
            state
                .store
                .repair_file(index, layout, used, blocks)
                .map_err(Error::Invalid)?
        };
        self.snapshot().await?;
        Ok(replaced)
    }

    /// Flip a byte of a block (fault injection for tests of verify and repair).
    #[cfg(feature = "fault-injection")]
    pub fn corrupt_block(&self, file: &str, number: u32) -> Result<()> {
        let mut state = self.state.write();
        let index = block_file_index(&state.store, file)?;
        let block = state
            .store
            .file_mut(index as crate::store::FileId)
            .and_then(|f| f.block_mut(number))
            .ok_or_else(|| Error::NotFound(format!("block {number} of '{file}'")))?;
        let bytes = block.bytes_mut();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5A;
        Ok(())
    }
}

/// The index of block file `file` (`table` or `table#alt`) in a store.
fn block_file_index(store: &Store, file: &str) -> Result<usize> {
    store
        .schema()
        .block_file_names()
        .iter()
        .position(|n| n == file)
        .ok_or_else(|| Error::NotFound(format!("block file '{file}'")))
}
