//! Unit-test a plugin function without a server: the same batch loop the wasm guest
//! runs, over records you build with [`OwnedRecord`].
//!
//! ```ignore
//! let kept = doppel_sdk::testing::filter(keep, r#"{"prefixes":["a"]}"#, &[rec("t", "a1")])?;
//! assert_eq!(kept, vec![true]);
//! ```

use std::fmt::Display;

use crate::abi::{bit, BatchBuilder, Op, OwnedRecord, Record};
use crate::run::{Out, Verdict};
use crate::PluginConfig;

/// A record with the given file and key, an insert with empty data.
pub fn rec(file: &str, key: &str) -> OwnedRecord {
    OwnedRecord::new(Op::Insert, file, key, "{}")
}

fn batch(records: &[OwnedRecord]) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(r);
    }
    b
}

/// Per-record outcome of a filter: kept or not, or the record's error.
pub fn filter<C: PluginConfig, V: Verdict>(
    f: impl Fn(&Record<'_>, &C) -> V,
    config: &str,
    records: &[OwnedRecord],
) -> Result<Vec<Result<bool, String>>, String> {
    let cfg = crate::load_config::<C>(config)?;
    let b = batch(records);
    let out = crate::run::filter(b.as_batch(), &cfg, f);
    let mut res: Vec<Result<bool, String>> =
        (0..records.len()).map(|i| Ok(bit(&out.keep, i))).collect();
    for (i, e) in out.errors {
        res[i as usize] = Err(e);
    }
    Ok(res)
}

/// The records a transform forwards, and its per-record errors.
#[allow(clippy::type_complexity)]
pub fn transform<C: PluginConfig, E: Display>(
    f: impl Fn(&Record<'_>, &C) -> Result<Out, E>,
    config: &str,
    records: &[OwnedRecord],
) -> Result<(Vec<OwnedRecord>, Vec<(u32, String)>), String> {
    let cfg = crate::load_config::<C>(config)?;
    let b = batch(records);
    let out = crate::run::transform(b.as_batch(), &cfg, f);
    let kept = out
        .batch
        .as_batch()
        .iter()
        .map(|r| r.map(|r| r.to_owned()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kept, out.errors))
}
