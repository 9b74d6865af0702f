//! The batch loops behind the role macros: decode each record in place, call the
//! author's function, collect the bitmap or output batch, index errors, take log lines.
//! Plain Rust, so the test harness runs exactly what the wasm guest runs.

use std::fmt::Display;

use crate::abi::{set_bit, BatchBuilder, BatchRef, OwnedRecord, Record};

/// What a filter function may return.
pub trait Verdict {
    fn verdict(self) -> Result<bool, String>;
}

impl Verdict for bool {
    fn verdict(self) -> Result<bool, String> {
        Ok(self)
    }
}

impl<E: Display> Verdict for Result<bool, E> {
    fn verdict(self) -> Result<bool, String> {
        self.map_err(|e| e.to_string())
    }
}

/// What a transform does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Forward the record unchanged (its bytes are copied, not re-encoded).
    Keep,
    /// Forward this record instead.
    Replace(OwnedRecord),
    /// Forward nothing.
    Drop,
}

/// A filter call's outcome.
#[derive(Debug, Default)]
pub struct FilterOut {
    pub keep: Vec<u8>,
    pub errors: Vec<(u32, String)>,
    pub log: Vec<String>,
}

/// A transform call's outcome.
#[derive(Debug, Default)]
pub struct TransformOut {
    pub batch: BatchBuilder,
    pub errors: Vec<(u32, String)>,
    pub log: Vec<String>,
}

/// Runs a filter function over a batch.
pub fn filter<C, V: Verdict>(
    batch: BatchRef<'_>,
    cfg: &C,
    f: impl Fn(&Record<'_>, &C) -> V,
) -> FilterOut {
    let n = batch.len();
    let mut out = FilterOut {
        keep: vec![0; n.div_ceil(8)],
        ..FilterOut::default()
    };
    for i in 0..n {
        match batch
            .get(i)
            .map_err(|e| e.to_string())
            .and_then(|r| f(&r, cfg).verdict())
        {
            Ok(true) => set_bit(&mut out.keep, i),
            Ok(false) => {}
            Err(e) => out.errors.push((i as u32, e)),
        }
    }
    out.log = crate::log::take();
    out
}

/// Runs a transform function over a batch.
pub fn transform<C, E: Display>(
    batch: BatchRef<'_>,
    cfg: &C,
    f: impl Fn(&Record<'_>, &C) -> Result<Out, E>,
) -> TransformOut {
    let mut out = TransformOut::default();
    out.batch.arena.reserve(batch.arena.len());
    out.batch.offsets.reserve(batch.len());
    for i in 0..batch.len() {
        let raw = match batch.raw(i) {
            Ok(raw) => raw,
            Err(e) => {
                out.errors.push((i as u32, e.to_string()));
                continue;
            }
        };
        let res = Record::decode(raw)
            .map_err(|e| e.to_string())
            .and_then(|r| f(&r, cfg).map_err(|e| e.to_string()));
        match res {
            Ok(Out::Keep) => out.batch.push_raw(raw),
            Ok(Out::Replace(r)) => out.batch.push(&r),
            Ok(Out::Drop) => {}
            Err(e) => out.errors.push((i as u32, e)),
        }
    }
    out.log = crate::log::take();
    out
}

/// Every record fails: the stage was called before `configure`.
pub fn unconfigured(n: usize) -> FilterOut {
    FilterOut {
        keep: vec![0; n.div_ceil(8)],
        errors: (0..n as u32)
            .map(|i| (i, "plugin is not configured".to_owned()))
            .collect(),
        log: Vec::new(),
    }
}

/// Every record fails: the stage was called before `configure`.
pub fn unconfigured_transform(n: usize) -> TransformOut {
    TransformOut {
        errors: unconfigured(n).errors,
        ..TransformOut::default()
    }
}
