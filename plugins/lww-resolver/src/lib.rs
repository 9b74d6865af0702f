//! Built-in conflict resolver (SPEC E4, F): deterministic, so every site picks the same
//! winner of a conflicting pair whichever side it sees as local.
//!
//! - `{"strategy": "lww"}` (the default): last writer wins. The later timestamp wins;
//!   on equal timestamps the higher origin node id wins; then the higher serial. Only
//!   two copies of one version compare equal, and then the local copy is kept.
//! - `{"strategy": "max", "field": "version"}`: the larger value of a field (dotted
//!   path) wins: numbers by value, strings by bytes, `false < true`. A record without the
//!   field (or with `null`, or a delete) loses to one that has it; equal values and two
//!   records without the field fall back to last writer wins. Values of different types,
//!   or arrays and objects, cannot be ordered: that pair is a record error.

use std::cmp::Ordering;

use doppel_sdk::{json, PluginConfig, Record, Winner};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Lww,
    Max,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub strategy: Strategy,
    /// The compared field, for `max`.
    #[serde(default)]
    pub field: Option<String>,
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","additionalProperties":false,"properties":{"strategy":{"enum":["lww","max"],"default":"lww"},"field":{"type":"string","minLength":1}},"if":{"properties":{"strategy":{"const":"max"}},"required":["strategy"]},"then":{"required":["field"]}}"#;

    fn validate(&self) -> Result<(), String> {
        match (self.strategy, &self.field) {
            (Strategy::Max, Some(f)) => json::check_path("field", f),
            (Strategy::Max, None) => Err("field: the max strategy needs a field".into()),
            (Strategy::Lww, Some(_)) => Err("field: only the max strategy compares a field".into()),
            (Strategy::Lww, None) => Ok(()),
        }
    }
}

/// Last writer wins: (timestamp, origin, serial), a total order on versions.
pub fn lww(local: &Record<'_>, remote: &Record<'_>) -> Winner {
    let key = |r: &Record<'_>| (r.timestamp, r.origin, r.serial);
    if key(remote) > key(local) {
        Winner::Remote
    } else {
        Winner::Local
    }
}

/// The field's value, `None` when absent or null.
fn field_value(r: &Record<'_>, path: &str) -> Result<Option<Value>, String> {
    if r.data.is_empty() {
        return Ok(None);
    }
    let v = r.json()?;
    Ok(json::get(&v, path).filter(|x| !x.is_null()).cloned())
}

fn compare(path: &str, a: &Value, b: &Value) -> Result<Ordering, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Ok(x.cmp(&y))
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                Ok(x.cmp(&y))
            } else {
                let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                Ok(x.total_cmp(&y))
            }
        }
        (Value::String(x), Value::String(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        _ => Err(format!(
            "field '{path}' cannot be ordered: local {a}, remote {b}"
        )),
    }
}

pub fn resolve(local: &Record<'_>, remote: &Record<'_>, cfg: &Config) -> Result<Winner, String> {
    let path = match (cfg.strategy, &cfg.field) {
        (Strategy::Max, Some(path)) => path,
        _ => return Ok(lww(local, remote)),
    };
    let order = match (field_value(local, path)?, field_value(remote, path)?) {
        (Some(l), Some(r)) => compare(path, &l, &r)?,
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    Ok(match order {
        Ordering::Less => Winner::Remote,
        Ordering::Greater => Winner::Local,
        Ordering::Equal => lww(local, remote),
    })
}

doppel_sdk::resolver!(resolve, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::resolve as run;
    use doppel_sdk::{Op, OwnedRecord};
    use Winner::{Local, Remote};

    fn v(ts: u64, origin: u64, data: &str) -> OwnedRecord {
        OwnedRecord::new(Op::Update, "f", "k", data)
            .with_timestamp(ts)
            .with_origin(origin)
    }

    /// Every pair decided both ways round: the same version must win at both sites.
    fn agree(cfg: &str, pairs: &[(OwnedRecord, OwnedRecord)]) -> Vec<Winner> {
        let here = run(resolve, cfg, pairs).unwrap();
        let swapped: Vec<_> = pairs.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
        let there = run(resolve, cfg, &swapped).unwrap();
        for (i, (h, t)) in here.iter().zip(&there).enumerate() {
            let (h, t) = (h.clone().unwrap(), t.clone().unwrap());
            if pairs[i].0 != pairs[i].1 {
                assert_ne!(h, t, "pair {i}: both sites must keep the same version");
            }
        }
        here.into_iter().map(Result::unwrap).collect()
    }

    #[test]
    fn the_later_timestamp_wins_and_a_tie_goes_to_the_higher_node_id() {
        let pairs = [
            (v(10, 1, "{}"), v(20, 1, "{}")),
            (v(20, 1, "{}"), v(10, 2, "{}")),
            (v(10, 1, "{}"), v(10, 2, "{}")),
            (v(10, 3, "{}"), v(10, 2, "{}")),
        ];
        assert_eq!(agree("", &pairs), [Remote, Local, Remote, Local]);
        assert_eq!(agree(r#"{"strategy":"lww"}"#, &pairs[..1]), [Remote]);
    }

    #[test]
    fn the_larger_field_wins_regardless_of_time() {
        let cfg = r#"{"strategy":"max","field":"meta.version"}"#;
        let pairs = [
            (
                v(99, 1, r#"{"meta":{"version":3}}"#),
                v(1, 2, r#"{"meta":{"version":4}}"#),
            ),
            (
                v(1, 1, r#"{"meta":{"version":10}}"#),
                v(99, 2, r#"{"meta":{"version":9}}"#),
            ),
            (
                v(1, 1, r#"{"meta":{"version":"b"}}"#),
                v(2, 2, r#"{"meta":{"version":"a"}}"#),
            ),
            (
                v(1, 1, r#"{"meta":{"version":1.5}}"#),
                v(2, 2, r#"{"meta":{"version":2}}"#),
            ),
        ];
        assert_eq!(agree(cfg, &pairs), [Remote, Local, Local, Remote]);
    }

    #[test]
    fn a_record_without_the_field_loses_and_ties_fall_back_to_lww() {
        let cfg = r#"{"strategy":"max","field":"version"}"#;
        let mut del = v(99, 9, "");
        del.op = Op::Delete;
        let pairs = [
            (v(99, 1, r#"{"x":1}"#), v(1, 2, r#"{"version":1}"#)),
            (v(1, 1, r#"{"version":0}"#), v(99, 2, r#"{"version":null}"#)),
            (v(1, 1, r#"{"version":5}"#), del),
            (v(1, 1, r#"{"version":5}"#), v(2, 1, r#"{"version":5}"#)),
            (v(5, 1, "{}"), v(5, 2, "{}")),
        ];
        assert_eq!(agree(cfg, &pairs), [Remote, Local, Local, Remote, Remote]);
    }

    #[test]
    fn values_that_cannot_be_ordered_are_the_pairs_error() {
        let cfg = r#"{"strategy":"max","field":"version"}"#;
        let pairs = [
            (v(1, 1, r#"{"version":1}"#), v(2, 2, r#"{"version":"1"}"#)),
            (v(1, 1, r#"{"version":[1]}"#), v(2, 2, r#"{"version":[2]}"#)),
            (v(1, 1, r#"{"version":1}"#), v(2, 2, "{bad")),
        ];
        let got = run(resolve, cfg, &pairs).unwrap();
        assert!(
            got[0].as_ref().unwrap_err().contains("cannot be ordered"),
            "{got:?}"
        );
        assert!(got[1].is_err());
        assert!(got[2].as_ref().unwrap_err().contains("not JSON"), "{got:?}");
    }

    #[test]
    fn bad_configs_are_rejected_at_load() {
        let cases = [
            (r#"{"strategy":"max"}"#, "needs a field"),
            (r#"{"strategy":"lww","field":"v"}"#, "only the max strategy"),
            (r#"{"strategy":"newest"}"#, "unknown variant"),
            (r#"{"strategy":"max","field":"a..b"}"#, "dotted field path"),
        ];
        for (cfg, want) in cases {
            let err = run(resolve, cfg, &[]).unwrap_err();
            assert!(err.contains(want), "{cfg}: {err}");
        }
    }
}
