//! Built-in conflict resolver (SPEC E4, F): deterministic, so every site reaches the
//! same version of a conflicting record whichever side it sees as local.
//!
//! Versions are ordered by the host's hybrid-logical-clock `timestamp` (microseconds,
//! strictly increasing per node and raised past every remote version the node has seen,
//! so a version written after seeing another is later than it), then by origin node id,
//! then by serial, then by op and data bytes: a total order, two versions compare equal
//! only when they are the same.
//!
//! - `{"strategy": "lww"}` (the default): last writer wins, the later version in that
//!   order. Equal versions keep the local copy (they are the same).
//! - `{"strategy": "max", "field": "version"}`: the larger value of a field (dotted
//!   path) wins: numbers by value, strings by bytes, `false < true`. A record without the
//!   field (or with `null`, or a delete) loses to one that has it; equal values and two
//!   records without the field fall back to last writer wins. Values of different types,
//!   or arrays and objects, cannot be ordered: that pair is a record error.
//! - `{"strategy": "merge"}`: a three-way merge of the top-level fields of two JSON
//!   objects against the base. A field changed on one side only (added, changed or
//!   removed) takes that side's value; a field changed on both sides to different values
//!   takes the last writer's value. A delete on either side, or data that is not an
//!   object, is decided for the whole record by last writer wins. Without a base (or a
//!   base that is a delete or not an object) every field counts as changed by the side
//!   that has it. The merged data is the same whichever side is local.

use std::cmp::Ordering;

use std::collections::BTreeSet;

use doppel_sdk::{json, Op, PluginConfig, Record, Resolution};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Lww,
    Max,
    Merge,
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
    const SCHEMA: &'static str = r#"{"type":"object","additionalProperties":false,"properties":{"strategy":{"enum":["lww","max","merge"],"default":"lww"},"field":{"type":"string","minLength":1}},"if":{"properties":{"strategy":{"const":"max"}},"required":["strategy"]},"then":{"required":["field"]}}"#;

    fn validate(&self) -> Result<(), String> {
        match (self.strategy, &self.field) {
            (Strategy::Max, Some(f)) => json::check_path("field", f),
            (Strategy::Max, None) => Err("field: the max strategy needs a field".into()),
            (_, Some(_)) => Err("field: only the max strategy compares a field".into()),
            (_, None) => Ok(()),
        }
    }
}

/// A version's place in the last-writer-wins order: (timestamp, origin, serial, op, data).
fn version<'a>(r: &Record<'a>) -> (u64, u64, u64, u8, &'a [u8]) {
    (r.timestamp, r.origin, r.serial, r.op.code(), r.data)
}

/// Last writer wins: the later version in a total order (see the module doc).
pub fn lww(local: &Record<'_>, remote: &Record<'_>) -> Resolution {
    if version(remote) > version(local) {
        Resolution::Remote
    } else {
        Resolution::Local
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

/// A record's data as a JSON object, `None` for a delete or data that is no object.
fn object(r: &Record<'_>, side: &str) -> Result<Option<serde_json::Map<String, Value>>, String> {
    if r.op == Op::Delete || r.data.is_empty() {
        return Ok(None);
    }
    match r.json().map_err(|e| format!("{side}: {e}"))? {
        Value::Object(m) => Ok(Some(m)),
        _ => Ok(None),
    }
}

/// The three-way merge of the `merge` strategy.
fn merge(
    local: &Record<'_>,
    remote: &Record<'_>,
    base: Option<&Record<'_>>,
) -> Result<Resolution, String> {
    let winner = lww(local, remote);
    let (Some(l), Some(r)) = (object(local, "local")?, object(remote, "remote")?) else {
        return Ok(winner);
    };
    let b = match base {
        Some(b) => object(b, "base")?.unwrap_or_default(),
        None => serde_json::Map::new(),
    };
    let fields: BTreeSet<&String> = l.keys().chain(r.keys()).collect();
    let mut merged = serde_json::Map::new();
    for k in fields {
        let (lv, rv, bv) = (l.get(k), r.get(k), b.get(k));
        // Unchanged by remote (or the same on both): local's. Changed by remote only, or
        // by both and remote is the later writer: remote's. Otherwise local's.
        let take_remote = lv != rv && rv != bv && (lv == bv || winner == Resolution::Remote);
        let v = if take_remote { rv } else { lv };
        if let Some(v) = v {
            merged.insert(k.clone(), v.clone());
        }
    }
    // Equal data on both sides: the later version, so both sites keep the same one.
    Ok(if l == r {
        winner
    } else if merged == l {
        Resolution::Local
    } else if merged == r {
        Resolution::Remote
    } else {
        Resolution::merge(&Value::Object(merged))
    })
}

pub fn resolve(
    local: &Record<'_>,
    remote: &Record<'_>,
    base: Option<&Record<'_>>,
    cfg: &Config,
) -> Result<Resolution, String> {
    let path = match (cfg.strategy, &cfg.field) {
        (Strategy::Merge, _) => return merge(local, remote, base),
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
        Ordering::Less => Resolution::Remote,
        Ordering::Greater => Resolution::Local,
        Ordering::Equal => lww(local, remote),
    })
}

doppel_sdk::resolver!(resolve, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::{resolve as run, Conflict};
    use doppel_sdk::OwnedRecord;
    use serde_json::json;
    use Resolution::{Local, Remote};

    fn v(ts: u64, origin: u64, data: &str) -> OwnedRecord {
        OwnedRecord::new(Op::Update, "f", "k", data)
            .with_timestamp(ts)
            .with_origin(origin)
    }

    fn deleted(ts: u64, origin: u64) -> OwnedRecord {
        let mut r = v(ts, origin, "");
        r.op = Op::Delete;
        r
    }

    fn no_base(pairs: &[(OwnedRecord, OwnedRecord)]) -> Vec<Conflict> {
        pairs
            .iter()
            .map(|(l, r)| (l.clone(), r.clone(), None))
            .collect()
    }

    /// What a site ends up with: one of the two versions as it is, or merged data.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Kept(OwnedRecord),
        Merged(Value),
    }

    fn outcome(res: &Resolution, c: &Conflict) -> Outcome {
        match res {
            Resolution::Local => Outcome::Kept(c.0.clone()),
            Resolution::Remote => Outcome::Kept(c.1.clone()),
            Resolution::Merge(d) => Outcome::Merged(serde_json::from_slice(d).unwrap()),
        }
    }

    /// Every conflict decided both ways round: both sites must end with the same data.
    fn agree(cfg: &str, conflicts: &[Conflict]) -> Vec<Resolution> {
        let here = run(resolve, cfg, conflicts).unwrap();
        let swapped: Vec<Conflict> = conflicts
            .iter()
            .map(|(a, b, base)| (b.clone(), a.clone(), base.clone()))
            .collect();
        let there = run(resolve, cfg, &swapped).unwrap();
        for (i, (h, t)) in here.iter().zip(&there).enumerate() {
            let (h, t) = (h.as_ref().unwrap(), t.as_ref().unwrap());
            assert_eq!(
                outcome(h, &conflicts[i]),
                outcome(t, &swapped[i]),
                "conflict {i}: both sites must end with the same version"
            );
        }
        here.into_iter().map(Result::unwrap).collect()
    }

    #[test]
    fn the_later_timestamp_wins_and_a_tie_goes_to_the_higher_node_id() {
        let pairs = no_base(&[
            (v(10, 1, "{}"), v(20, 1, "{}")),
            (v(20, 1, "{}"), v(10, 2, "{}")),
            (v(10, 1, "{}"), v(10, 2, "{}")),
            (v(10, 3, "{}"), v(10, 2, "{}")),
            // Same clock, node and serial but different data: still one winner.
            (v(10, 1, r#"{"a":1}"#), v(10, 1, r#"{"a":2}"#)),
        ]);
        assert_eq!(agree("", &pairs), [Remote, Local, Remote, Local, Remote]);
        assert_eq!(agree(r#"{"strategy":"lww"}"#, &pairs[..1]), [Remote]);
    }

    #[test]
    fn the_larger_field_wins_regardless_of_time() {
        let cfg = r#"{"strategy":"max","field":"meta.version"}"#;
        let pairs = no_base(&[
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
        ]);
        assert_eq!(agree(cfg, &pairs), [Remote, Local, Local, Remote]);
    }

    #[test]
    fn a_record_without_the_field_loses_and_ties_fall_back_to_lww() {
        let cfg = r#"{"strategy":"max","field":"version"}"#;
        let pairs = no_base(&[
            (v(99, 1, r#"{"x":1}"#), v(1, 2, r#"{"version":1}"#)),
            (v(1, 1, r#"{"version":0}"#), v(99, 2, r#"{"version":null}"#)),
            (v(1, 1, r#"{"version":5}"#), deleted(99, 9)),
            (v(1, 1, r#"{"version":5}"#), v(2, 1, r#"{"version":5}"#)),
            (v(5, 1, "{}"), v(5, 2, "{}")),
        ]);
        assert_eq!(agree(cfg, &pairs), [Remote, Local, Local, Remote, Remote]);
    }

    #[test]
    fn values_that_cannot_be_ordered_are_the_pairs_error() {
        let cfg = r#"{"strategy":"max","field":"version"}"#;
        let pairs = no_base(&[
            (v(1, 1, r#"{"version":1}"#), v(2, 2, r#"{"version":"1"}"#)),
            (v(1, 1, r#"{"version":[1]}"#), v(2, 2, r#"{"version":[2]}"#)),
            (v(1, 1, r#"{"version":1}"#), v(2, 2, "{bad")),
        ]);
        let got = run(resolve, cfg, &pairs).unwrap();
        assert!(
            got[0].as_ref().unwrap_err().contains("cannot be ordered"),
            "{got:?}"
        );
        assert!(got[1].is_err());
        assert!(got[2].as_ref().unwrap_err().contains("not JSON"), "{got:?}");
    }

    const MERGE: &str = r#"{"strategy":"merge"}"#;

    fn merged(r: &Resolution) -> Value {
        match r {
            Resolution::Merge(d) => serde_json::from_slice(d).unwrap(),
            other => panic!("expected a merge, got {other:?}"),
        }
    }

    #[test]
    fn merge_takes_each_field_from_the_side_that_changed_it() {
        let base = v(5, 3, r#"{"name":"Ann","city":"Oslo","tier":1,"note":"x"}"#);
        let conflicts = [(
            // Local renamed and dropped the note; remote moved and added a phone.
            v(10, 1, r#"{"name":"Anna","city":"Oslo","tier":1}"#),
            v(
                20,
                2,
                r#"{"name":"Ann","city":"Bergen","tier":1,"note":"x","phone":"9"}"#,
            ),
            Some(base),
        )];
        let got = agree(MERGE, &conflicts);
        assert_eq!(
            merged(&got[0]),
            json!({"name":"Anna","city":"Bergen","tier":1,"phone":"9"})
        );
    }

    #[test]
    fn merge_gives_a_field_both_sides_changed_to_the_last_writer() {
        let base = v(5, 3, r#"{"qty":1,"colour":"red"}"#);
        let conflicts = [
            // Remote is later: its qty wins; colour changed on local only.
            (
                v(10, 1, r#"{"qty":2,"colour":"blue"}"#),
                v(20, 2, r#"{"qty":3,"colour":"red"}"#),
                Some(base.clone()),
            ),
            // Same clock: the higher node id (local, 7) is the later writer.
            (
                v(10, 7, r#"{"qty":2,"colour":"red"}"#),
                v(10, 2, r#"{"qty":3,"colour":"green"}"#),
                Some(base.clone()),
            ),
            // One side removed the field, the other changed it: the later side wins.
            (
                v(30, 1, r#"{"colour":"red"}"#),
                v(20, 2, r#"{"qty":9,"colour":"red"}"#),
                Some(base),
            ),
        ];
        let got = agree(MERGE, &conflicts);
        assert_eq!(merged(&got[0]), json!({"qty":3,"colour":"blue"}));
        assert_eq!(merged(&got[1]), json!({"qty":2,"colour":"green"}));
        // The merge equals the local version: kept as it is.
        assert_eq!(got[2], Local);
    }

    #[test]
    fn merge_decides_deletes_and_non_objects_for_the_whole_record_by_last_writer() {
        let base = Some(v(5, 3, r#"{"a":1,"b":1}"#));
        let conflicts = [
            (deleted(10, 1), v(20, 2, r#"{"a":2,"b":1}"#), base.clone()),
            (deleted(30, 1), v(20, 2, r#"{"a":2,"b":1}"#), base.clone()),
            (deleted(30, 1), deleted(20, 2), base.clone()),
            (
                v(10, 1, "[1,2]"),
                v(20, 2, r#"{"a":1,"b":2}"#),
                base.clone(),
            ),
            (v(30, 1, r#""text""#), v(20, 2, r#"{"a":1,"b":2}"#), base),
        ];
        assert_eq!(
            agree(MERGE, &conflicts),
            [Remote, Local, Local, Remote, Local]
        );
    }

    #[test]
    fn merge_without_a_base_keeps_fields_either_side_added() {
        // Both sides inserted the record concurrently: nothing to compare against.
        let mut deleted_base = v(5, 3, "");
        deleted_base.op = Op::Delete;
        for base in [None, Some(deleted_base)] {
            let conflicts = [(
                v(10, 1, r#"{"a":1,"same":0,"both":"l"}"#),
                v(20, 2, r#"{"b":2,"same":0,"both":"r"}"#),
                base,
            )];
            let got = agree(MERGE, &conflicts);
            assert_eq!(merged(&got[0]), json!({"a":1,"b":2,"same":0,"both":"r"}));
        }
    }

    #[test]
    fn merge_is_symmetric_over_many_generated_conflicts() {
        // Every combination of a field's presence and value on three versions, on
        // clocks that tie and that do not: both sites must end with the same data.
        let values = [None, Some(json!(1)), Some(json!(2)), Some(json!(3))];
        let obj = |vals: &[Option<Value>]| {
            let m: serde_json::Map<String, Value> = vals
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.clone().map(|v| (format!("f{i}"), v)))
                .collect();
            Value::Object(m).to_string()
        };
        let mut conflicts = Vec::new();
        for (i, l) in values.iter().enumerate() {
            for (j, r) in values.iter().enumerate() {
                for b in &values {
                    let (lv, rv, bv) = (
                        vec![l.clone(), r.clone()],
                        vec![r.clone(), l.clone()],
                        vec![b.clone(), b.clone()],
                    );
                    let base = v(1, 3, &obj(&bv));
                    conflicts.push((
                        v(10 + i as u64 % 2, 1, &obj(&lv)),
                        v(10 + j as u64 % 2, 2, &obj(&rv)),
                        Some(base),
                    ));
                }
            }
        }
        agree(MERGE, &conflicts);
    }

    #[test]
    fn merge_reports_data_that_is_not_json_as_the_records_error() {
        let got = run(
            resolve,
            MERGE,
            &[
                (v(1, 1, "{bad"), v(2, 2, "{}"), None),
                (v(1, 1, "{}"), v(2, 2, "{}"), Some(v(0, 3, "{bad"))),
            ],
        )
        .unwrap();
        assert!(got[0].as_ref().unwrap_err().contains("local"), "{got:?}");
        assert!(got[1].as_ref().unwrap_err().contains("base"), "{got:?}");
    }

    #[test]
    fn bad_configs_are_rejected_at_load() {
        let cases = [
            (r#"{"strategy":"max"}"#, "needs a field"),
            (r#"{"strategy":"lww","field":"v"}"#, "only the max strategy"),
            (
                r#"{"strategy":"merge","field":"v"}"#,
                "only the max strategy",
            ),
            (r#"{"strategy":"newest"}"#, "unknown variant"),
            (r#"{"strategy":"max","field":"a..b"}"#, "dotted field path"),
        ];
        for (cfg, want) in cases {
            let err = run(resolve, cfg, &[]).unwrap_err();
            assert!(err.contains(want), "{cfg}: {err}");
        }
    }
}
