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

use crate::abi::{bit, BatchBuilder, Op, OwnedRecord, Record};
use crate::run::{Decision, Dependency, Depends, Out, Verdict, Winner};
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

/// The winner of each conflicting `(local, remote)` pair, or the pair's error.
pub fn resolve<C: PluginConfig, D: Decision>(
    f: impl Fn(&Record<'_>, &Record<'_>, &C) -> D,
    config: &str,
    pairs: &[(OwnedRecord, OwnedRecord)],
) -> Result<Vec<Result<Winner, String>>, String> {
    let cfg = crate::load_config::<C>(config)?;
    let local = batch(&pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>());
    let remote = batch(&pairs.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
    let out = crate::run::resolve(local.as_batch(), remote.as_batch(), &cfg, f);
    let mut res: Vec<Result<Winner, String>> = (0..pairs.len())
        .map(|i| {
            Ok(if bit(&out.remote_wins, i) {
                Winner::Remote
            } else {
                Winner::Local
            })
        })
        .collect();
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

    fn newer(l: &Record<'_>, r: &Record<'_>, _: &crate::NoConfig) -> Winner {
        if r.timestamp > l.timestamp {
            Winner::Remote
        } else {
            Winner::Local
        }
    }

    #[test]
    fn the_resolver_harness_pairs_local_and_remote_by_index() {
        let old = rec("f", "k").with_timestamp(1);
        let new = rec("f", "k").with_timestamp(2);
        let got = resolve(newer, "{}", &[(old.clone(), new.clone()), (new, old)]).unwrap();
        assert_eq!(got, vec![Ok(Winner::Remote), Ok(Winner::Local)]);
    }

    #[test]
    fn a_resolver_given_unpaired_batches_reports_the_unpaired_index() {
        let mut local = BatchBuilder::new();
        local.push(&rec("f", "a"));
        local.push(&rec("f", "b"));
        let mut remote = BatchBuilder::new();
        remote.push(&rec("f", "a"));
        let out = crate::run::resolve(
            local.as_batch(),
            remote.as_batch(),
            &crate::NoConfig {},
            newer,
        );
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].0, 1);
        assert!(out.errors[0].1.contains("no remote record"));
    }
}
