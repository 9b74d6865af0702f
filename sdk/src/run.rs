//! The batch loops behind the role macros (filter, transform, rule, resolver): decode
//! each record in place, call the author's function, collect the bitmap, output batch or
//! dependency list, index errors, take log lines. Plain Rust, so the test harness runs
//! exactly what the wasm guest runs.

use std::fmt::Display;

use crate::abi::{set_bit, BatchBuilder, BatchRef, Op, OwnedRecord, Record};

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
    /// Forward the record with some fields replaced: encoded straight from the input's
    /// bytes, so nothing else is copied into owned values (cheaper than `Replace`).
    Edit(Edit),
    /// Forward nothing.
    Drop,
}

/// The fields an [`Out::Edit`] replaces; `None` keeps the input's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    pub file: Option<String>,
    pub key: Option<String>,
    /// The after image (JSON bytes).
    pub data: Option<Vec<u8>>,
    /// The before image: `Some(None)` removes it.
    pub before: Option<Option<Vec<u8>>>,
}

/// One record a rule says a record depends on: the record `key` of file `file`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dependency {
    pub file: String,
    pub key: String,
}

impl Dependency {
    pub fn new(file: impl Into<String>, key: impl Into<String>) -> Dependency {
        Dependency {
            file: file.into(),
            key: key.into(),
        }
    }
}

/// What a rule function may return: no dependency, one, or several (or an error).
pub trait Depends {
    fn depends(self) -> Result<Vec<Dependency>, String>;
}

impl Depends for Vec<Dependency> {
    fn depends(self) -> Result<Vec<Dependency>, String> {
        Ok(self)
    }
}

impl Depends for Option<Dependency> {
    fn depends(self) -> Result<Vec<Dependency>, String> {
        Ok(self.into_iter().collect())
    }
}

impl<T: Depends, E: Display> Depends for Result<T, E> {
    fn depends(self) -> Result<Vec<Dependency>, String> {
        self.map_err(|e| e.to_string()).and_then(Depends::depends)
    }
}

/// What a resolver decides for one conflicting record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the version this site already has.
    Local,
    /// Take the incoming version.
    Remote,
    /// Neither as it is: this merged data (JSON bytes) replaces both.
    Merge(Vec<u8>),
}

impl Resolution {
    /// A merge whose data is this JSON value.
    pub fn merge(value: &serde_json::Value) -> Resolution {
        Resolution::Merge(value.to_string().into_bytes())
    }

    /// The decision code of the contract: 0 local, 1 remote, 2 merged.
    pub fn code(&self) -> u8 {
        match self {
            Resolution::Local => 0,
            Resolution::Remote => 1,
            Resolution::Merge(_) => 2,
        }
    }
}

/// What a resolver function may return: a [`Resolution`], or a `Result` of one.
pub trait Resolves {
    fn resolution(self) -> Result<Resolution, String>;
}

impl Resolves for Resolution {
    fn resolution(self) -> Result<Resolution, String> {
        Ok(self)
    }
}

impl<E: Display> Resolves for Result<Resolution, E> {
    fn resolution(self) -> Result<Resolution, String> {
        self.map_err(|e| e.to_string())
    }
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

/// A rule call's outcome: `(record index, file, key)` per dependency, in record order.
#[derive(Debug, Default)]
pub struct RuleOut {
    pub depends: Vec<(u32, Dependency)>,
    pub errors: Vec<(u32, String)>,
    pub log: Vec<String>,
}

/// A resolver call's outcome: one decision per record (0 local, 1 remote, 2 merged),
/// one merged record per decision 2, in record order.
#[derive(Debug, Default)]
pub struct ResolveOut {
    pub decisions: Vec<u8>,
    pub merged: BatchBuilder,
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
        let rec = match Record::decode(raw) {
            Ok(rec) => rec,
            Err(e) => {
                out.errors.push((i as u32, e.to_string()));
                continue;
            }
        };
        match f(&rec, cfg).map_err(|e| e.to_string()) {
            Ok(Out::Keep) => out.batch.push_raw(raw),
            Ok(Out::Replace(r)) => out.batch.push(&r),
            Ok(Out::Edit(e)) => rec.encode_edited(&e, &mut out.batch),
            Ok(Out::Drop) => {}
            Err(e) => out.errors.push((i as u32, e)),
        }
    }
    out.log = crate::log::take();
    out
}

/// Runs a rule function over a batch.
pub fn rule<C, D: Depends>(
    batch: BatchRef<'_>,
    cfg: &C,
    f: impl Fn(&Record<'_>, &C) -> D,
) -> RuleOut {
    let mut out = RuleOut::default();
    for i in 0..batch.len() {
        match batch
            .get(i)
            .map_err(|e| e.to_string())
            .and_then(|r| f(&r, cfg).depends())
        {
            Ok(deps) => out.depends.extend(deps.into_iter().map(|d| (i as u32, d))),
            Err(e) => out.errors.push((i as u32, e)),
        }
    }
    out.log = crate::log::take();
    out
}

/// Record i of one side of a conflict, or why it is missing.
fn side<'a>(b: BatchRef<'a>, i: usize, name: &str) -> Result<Record<'a>, String> {
    if i >= b.len() {
        return Err(format!("no {name} record at index {i}"));
    }
    b.get(i).map_err(|e| format!("{name}: {e}"))
}

/// Runs a resolver function over conflicts: record i of `local`, `remote` and `base`
/// is one record; the function gets `None` for a base that is the "no base" record
/// ([`crate::abi::no_base`]). A record missing from one of the batches, or a merge whose
/// data is not JSON, is that index's error; a record with an error keeps its local
/// version.
pub fn resolve<C, D: Resolves>(
    local: BatchRef<'_>,
    remote: BatchRef<'_>,
    base: BatchRef<'_>,
    cfg: &C,
    f: impl Fn(&Record<'_>, &Record<'_>, Option<&Record<'_>>, &C) -> D,
) -> ResolveOut {
    let n = local.len().max(remote.len()).max(base.len());
    let mut out = ResolveOut {
        decisions: Vec::with_capacity(n),
        ..ResolveOut::default()
    };
    for i in 0..n {
        let res = side(local, i, "local").and_then(|l| {
            let r = side(remote, i, "remote")?;
            let b = side(base, i, "base")?;
            let b = (!b.is_no_base()).then_some(&b);
            let res = f(&l, &r, b, cfg).resolution()?;
            if let Resolution::Merge(data) = &res {
                serde_json::from_slice::<serde::de::IgnoredAny>(data)
                    .map_err(|e| format!("merged data is not JSON: {e}"))?;
            }
            Ok((l, res))
        });
        match res {
            Ok((l, res)) => {
                out.decisions.push(res.code());
                if let Resolution::Merge(data) = res {
                    l.encode_with(Op::Update, &data, None, &mut out.merged);
                }
            }
            Err(e) => {
                out.decisions.push(0);
                out.errors.push((i as u32, e));
            }
        }
    }
    out.log = crate::log::take();
    out
}

fn unconfigured_errors(n: usize) -> Vec<(u32, String)> {
    (0..n as u32)
        .map(|i| (i, "plugin is not configured".to_owned()))
        .collect()
}

/// Every record fails: the stage was called before `configure`.
pub fn unconfigured(n: usize) -> FilterOut {
    FilterOut {
        keep: vec![0; n.div_ceil(8)],
        errors: unconfigured_errors(n),
        log: Vec::new(),
    }
}

/// Every record fails: the stage was called before `configure`.
pub fn unconfigured_transform(n: usize) -> TransformOut {
    TransformOut {
        errors: unconfigured_errors(n),
        ..TransformOut::default()
    }
}

/// Every record fails: the stage was called before `configure`.
pub fn unconfigured_rule(n: usize) -> RuleOut {
    RuleOut {
        errors: unconfigured_errors(n),
        ..RuleOut::default()
    }
}

/// Every record fails (and keeps its local version): the stage was called before
/// `configure`.
pub fn unconfigured_resolve(n: usize) -> ResolveOut {
    ResolveOut {
        decisions: vec![0; n],
        errors: unconfigured_errors(n),
        ..ResolveOut::default()
    }
}
