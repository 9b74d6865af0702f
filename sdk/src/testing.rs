//! Unit-test a plugin function without a server: the same batch loop the wasm guest
//! runs, over records you build with [`OwnedRecord`]. One helper per role: [`filter`],
//! [`transform`], [`rule`] and [`resolve`]; each loads the config the way a stage does,
//! so a config the plugin refuses is the `Err` of the helper.
//!
//! ```text
//! let kept = doppel_sdk::testing::filter(keep, r#"{"prefixes":["a"]}"#, &[rec("t", "a1")])?;
//! assert_eq!(kept, vec![Ok(true)]);
//! ```

use std::fmt::Display;

use crate::abi::{bit, no_base, BatchBuilder, Op, OwnedRecord, Record};
use crate::run::{Dependency, Depends, Out, Resolution, Resolves, Verdict};
use crate::PluginConfig;

/// An insert of the given file and key whose data is the empty JSON object `{}`.
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

/// The dependencies a rule names for each record (in the order it named them), or the
/// record's error.
#[allow(clippy::type_complexity)]
pub fn rule<C: PluginConfig, D: Depends>(
    f: impl Fn(&Record<'_>, &C) -> D,
    config: &str,
    records: &[OwnedRecord],
) -> Result<Vec<Result<Vec<Dependency>, String>>, String> {
    let cfg = crate::load_config::<C>(config)?;
    let b = batch(records);
    let out = crate::run::rule(b.as_batch(), &cfg, f);
    let mut res: Vec<Result<Vec<Dependency>, String>> = vec![Ok(Vec::new()); records.len()];
    for (i, d) in out.depends {
        if let Ok(deps) = &mut res[i as usize] {
            deps.push(d);
        }
    }
    for (i, e) in out.errors {
        res[i as usize] = Err(e);
    }
    Ok(res)
}

/// One conflict for [`resolve`]: `(local, remote, base)`, base `None` when there is no
/// base version (the host then sends [`no_base`]).
pub type Conflict = (OwnedRecord, OwnedRecord, Option<OwnedRecord>);

/// The resolution of each conflicting `(local, remote, base)` record, or its error. A
/// merge carries the merged data exactly as the host receives it.
pub fn resolve<C: PluginConfig, D: Resolves>(
    f: impl Fn(&Record<'_>, &Record<'_>, Option<&Record<'_>>, &C) -> D,
    config: &str,
    conflicts: &[Conflict],
) -> Result<Vec<Result<Resolution, String>>, String> {
    let cfg = crate::load_config::<C>(config)?;
    let local = batch(&conflicts.iter().map(|c| c.0.clone()).collect::<Vec<_>>());
    let remote = batch(&conflicts.iter().map(|c| c.1.clone()).collect::<Vec<_>>());
    let base = batch(
        &conflicts
            .iter()
            .map(|c| c.2.clone().unwrap_or_else(|| no_base(&c.0.file, &c.0.key)))
            .collect::<Vec<_>>(),
    );
    let out = crate::run::resolve(
        local.as_batch(),
        remote.as_batch(),
        base.as_batch(),
        &cfg,
        f,
    );
    let merged = out.merged.as_batch();
    let mut next_merge = 0;
    let mut res = Vec::with_capacity(conflicts.len());
    for d in &out.decisions {
        res.push(Ok(match d {
            0 => Resolution::Local,
            1 => Resolution::Remote,
            _ => {
                let r = merged.get(next_merge).map_err(|e| e.to_string())?;
                next_merge += 1;
                Resolution::Merge(r.data.to_vec())
            }
        }));
    }
    for (i, e) in out.errors {
        res[i as usize] = Err(e);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(r: &Record<'_>, _: &crate::NoConfig) -> Result<Option<Dependency>, String> {
        match r.key.split_once('/') {
            Some((p, _)) => Ok(Some(Dependency::new("orders", p))),
            None if r.key.is_empty() => Err("empty key".into()),
            None => Ok(None),
        }
    }

    #[test]
    fn the_rule_harness_indexes_dependencies_and_errors_by_record() {
        let got = rule(
            parent,
            "",
            &[rec("lines", "o1/1"), rec("lines", "o2"), rec("lines", "")],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Ok(vec![Dependency::new("orders", "o1")]),
                Ok(vec![]),
                Err("empty key".into())
            ]
        );
    }

    fn newer(
        l: &Record<'_>,
        r: &Record<'_>,
        base: Option<&Record<'_>>,
        _: &crate::NoConfig,
    ) -> Result<Resolution, String> {
        if l.data == b"merge" {
            let base = base.map(|b| b.timestamp).unwrap_or(0);
            return Ok(Resolution::merge(&serde_json::json!({ "base": base })));
        }
        if l.data == b"bad" {
            return Ok(Resolution::Merge(b"{not json".to_vec()));
        }
        Ok(if r.timestamp > l.timestamp {
            Resolution::Remote
        } else {
            Resolution::Local
        })
    }

    #[test]
    fn the_resolver_harness_lines_up_local_remote_and_base_by_index() {
        let old = rec("f", "k").with_timestamp(1);
        let new = rec("f", "k").with_timestamp(2);
        let mut merge = rec("f", "k");
        merge.data = b"merge".to_vec();
        let got = resolve(
            newer,
            "{}",
            &[
                (old.clone(), new.clone(), None),
                (new.clone(), old.clone(), None),
                (merge.clone(), new.clone(), Some(old.clone())),
                (merge, new, None),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Ok(Resolution::Remote),
                Ok(Resolution::Local),
                Ok(Resolution::Merge(br#"{"base":1}"#.to_vec())),
                Ok(Resolution::Merge(br#"{"base":0}"#.to_vec())),
            ]
        );
    }

    #[test]
    fn a_merge_that_is_not_json_is_the_records_error_and_keeps_local() {
        let mut bad = rec("f", "k");
        bad.data = b"bad".to_vec();
        let l = crate::run::resolve(
            batch(&[bad]).as_batch(),
            batch(&[rec("f", "k")]).as_batch(),
            batch(&[no_base("f", "k")]).as_batch(),
            &crate::NoConfig {},
            newer,
        );
        assert_eq!(l.decisions, vec![0]);
        assert!(l.merged.is_empty());
        assert!(
            l.errors[0].1.contains("merged data is not JSON"),
            "{:?}",
            l.errors
        );
    }

    #[test]
    fn a_resolver_given_batches_of_different_lengths_reports_the_missing_index() {
        let out = crate::run::resolve(
            batch(&[rec("f", "a"), rec("f", "b")]).as_batch(),
            batch(&[rec("f", "a"), rec("f", "b")]).as_batch(),
            batch(&[no_base("f", "a")]).as_batch(),
            &crate::NoConfig {},
            newer,
        );
        assert_eq!(out.decisions, vec![0, 0]);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].0, 1);
        assert!(
            out.errors[0].1.contains("no base record"),
            "{:?}",
            out.errors
        );
    }
}
