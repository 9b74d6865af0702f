//! Built-in transform: renames files and maps field paths (SPEC E2 "rename files and
//! fields", "map a schema"), with separate rules per source node. A rule for file
//! `table1` from origin `tokyo` may send its records to `table2` with field `recode1`
//! moved to `recode2`, in the after and the before image. Records of a file without a
//! rule are forwarded unchanged.
//!
//! ```json
//! {"nodes": {"tokyo": 1},
//!  "sources": {"tokyo": {"table1": {"file": "table2", "fields": {"recode1": "recode2"}}}},
//!  "default": {"customers": {"fields": {"addr.zip": "postcode"}}}}
//! ```
//!
//! A record takes the rule of its origin for its file, or else the `default` rule for
//! its file. Field moves happen together, so `{"a": "b", "b": "a"}` swaps two fields.

use std::collections::{BTreeMap, HashMap};

use doppel_sdk::{json, origin, Out, PluginConfig, Record};
use serde::Deserialize;
use serde_json::Value;

/// What happens to the records of one file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// The new file name; absent keeps the file name.
    #[serde(default)]
    pub file: Option<String>,
    /// Field path → new field path (dotted).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// Rules by file name.
pub type FileRules = BTreeMap<String, FileRule>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    nodes: BTreeMap<String, u64>,
    #[serde(default)]
    sources: BTreeMap<String, FileRules>,
    #[serde(default)]
    default: FileRules,
}

/// The configuration, with sources resolved to node ids at load.
#[derive(Deserialize, Debug)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    sources: HashMap<u64, FileRules>,
    default: FileRules,
}

fn check_rules(scope: &str, rules: &FileRules) -> Result<(), String> {
    for (file, rule) in rules {
        if file.is_empty() || rule.file.as_deref() == Some("") {
            return Err(format!("{scope}: a file name is empty"));
        }
        if rule.file.is_none() && rule.fields.is_empty() {
            return Err(format!("{scope}.{file}: the rule changes nothing"));
        }
        let mut targets: Vec<&str> = Vec::with_capacity(rule.fields.len());
        for (from, to) in &rule.fields {
            json::check_path(&format!("{scope}.{file}.fields"), from)?;
            json::check_path(&format!("{scope}.{file}.fields"), to)?;
            targets.push(to);
        }
        targets.sort_unstable();
        for pair in targets.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a == b || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('.')) {
                return Err(format!(
                    "{scope}.{file}.fields: targets '{a}' and '{b}' overlap"
                ));
            }
        }
    }
    Ok(())
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(raw: RawConfig) -> Result<Config, String> {
        if raw.sources.is_empty() && raw.default.is_empty() {
            return Err("give at least one rule in \"sources\" or \"default\"".into());
        }
        for (name, rules) in &raw.sources {
            check_rules(&format!("sources.{name}"), rules)?;
        }
        check_rules("default", &raw.default)?;
        Ok(Config {
            sources: origin::by_node(raw.sources, &raw.nodes)?,
            default: raw.default,
        })
    }
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r##"{"type":"object","additionalProperties":false,"$defs":{"rules":{"type":"object","additionalProperties":{"type":"object","additionalProperties":false,"properties":{"file":{"type":"string","minLength":1},"fields":{"type":"object","additionalProperties":{"type":"string","minLength":1}}}}}},"properties":{"nodes":{"type":"object","additionalProperties":{"type":"integer","minimum":0}},"sources":{"type":"object","additionalProperties":{"$ref":"#/$defs/rules"}},"default":{"$ref":"#/$defs/rules"}}}"##;
}

impl Config {
    /// The rule for a record of `file` from node `origin`, if any.
    pub fn rule(&self, origin: u64, file: &str) -> Option<&FileRule> {
        self.sources
            .get(&origin)
            .and_then(|rules| rules.get(file))
            .or_else(|| self.default.get(file))
    }
}

/// Moves the fields of one image; `None` when nothing moved.
fn remap(data: &[u8], fields: &BTreeMap<String, String>) -> Result<Option<Vec<u8>>, String> {
    if fields.is_empty() || data.is_empty() {
        return Ok(None);
    }
    let mut v = json::parse(data)?;
    // Take every source first, then place them: moves do not see each other.
    let moved: Vec<(&str, Value)> = fields
        .iter()
        .filter_map(|(from, to)| json::remove(&mut v, from).map(|x| (to.as_str(), x)))
        .collect();
    if moved.is_empty() {
        return Ok(None);
    }
    for (to, x) in moved {
        json::insert(&mut v, to, x).map_err(|_| {
            format!("cannot move a field to '{to}': a field on the way is not an object")
        })?;
    }
    Ok(Some(json::to_bytes(&v)))
}

pub fn rename(r: &Record<'_>, cfg: &Config) -> Result<Out, String> {
    let Some(rule) = cfg.rule(r.origin, r.file) else {
        return Ok(Out::Keep);
    };
    let data = remap(r.data, &rule.fields)?;
    let before = match r.before {
        Some(b) => remap(b, &rule.fields)?,
        None => None,
    };
    if rule.file.is_none() && data.is_none() && before.is_none() {
        return Ok(Out::Keep);
    }
    let mut out = r.to_owned();
    if let Some(file) = &rule.file {
        out.file.clone_from(file);
    }
    if let Some(d) = data {
        out.data = d;
    }
    if before.is_some() {
        out.before = before;
    }
    Ok(Out::Replace(out))
}

doppel_sdk::transform!(rename, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::transform;
    use doppel_sdk::{Op, OwnedRecord};

    const TOKYO: u64 = 1;
    const OSAKA: u64 = 2;
    const CFG: &str = r#"{"nodes": {"tokyo": 1, "osaka": 2},
        "sources": {"tokyo": {"table1": {"file": "table2", "fields": {"recode1": "recode2"}}}},
        "default": {"table1": {"fields": {"a.b": "c"}}}}"#;

    #[test]
    fn tokyos_table1_becomes_table2_with_recode1_renamed() {
        let r = OwnedRecord::new(Op::Update, "table1", "key1", r#"{"recode1":"x","other":1}"#)
            .with_origin(TOKYO)
            .with_before(r#"{"recode1":"old"}"#);
        let (out, errors) = transform(rename, CFG, &[r]).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out[0].file, "table2");
        assert_eq!(out[0].key, "key1");
        assert_eq!(
            json::parse(&out[0].data).unwrap(),
            serde_json::json!({"recode2": "x", "other": 1})
        );
        assert_eq!(out[0].before.as_deref(), Some(&br#"{"recode2":"old"}"#[..]));
    }

    #[test]
    fn other_sources_take_the_default_rule_and_unruled_files_pass_unchanged() {
        let osaka = OwnedRecord::new(Op::Insert, "table1", "k", r#"{"a":{"b":5},"recode1":"x"}"#)
            .with_origin(OSAKA);
        let other_file =
            OwnedRecord::new(Op::Insert, "table9", "k", r#"{"recode1":"x"}"#).with_origin(TOKYO);
        let (out, errors) = transform(rename, CFG, &[osaka, other_file.clone()]).unwrap();
        assert!(errors.is_empty());
        assert_eq!(out[0].file, "table1");
        assert_eq!(
            json::parse(&out[0].data).unwrap(),
            serde_json::json!({"a": {}, "c": 5, "recode1": "x"})
        );
        assert_eq!(out[1], other_file);
    }

    #[test]
    fn a_delete_is_renamed_to_the_new_file() {
        let del = OwnedRecord::new(Op::Delete, "table1", "key1", "").with_origin(TOKYO);
        let (out, _) = transform(rename, CFG, &[del]).unwrap();
        assert_eq!((out[0].file.as_str(), out[0].data.len()), ("table2", 0));
    }

    #[test]
    fn field_moves_happen_together_so_two_fields_can_swap() {
        let cfg = r#"{"default": {"t": {"fields": {"a": "b", "b": "a"}}}}"#;
        let r = OwnedRecord::new(Op::Insert, "t", "k", r#"{"a":1,"b":2}"#);
        let (out, _) = transform(rename, cfg, &[r]).unwrap();
        assert_eq!(
            json::parse(&out[0].data).unwrap(),
            serde_json::json!({"a": 2, "b": 1})
        );
    }

    #[test]
    fn a_move_through_a_scalar_and_bad_json_are_record_errors() {
        let cfg = r#"{"default": {"t": {"fields": {"a": "s.a"}}}}"#;
        let recs = [
            OwnedRecord::new(Op::Insert, "t", "1", r#"{"a":1,"s":"text"}"#),
            OwnedRecord::new(Op::Insert, "t", "2", "{nope"),
            OwnedRecord::new(Op::Insert, "t", "3", r#"{"a":1}"#),
        ];
        let (out, errors) = transform(rename, cfg, &recs).unwrap();
        assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1]);
        assert!(errors[0].1.contains("'s.a'"), "{}", errors[0].1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, br#"{"s":{"a":1}}"#);
    }

    #[test]
    fn bad_configs_are_rejected_at_load() {
        let cases = [
            (r#"{}"#, "at least one rule"),
            (r#"{"sources": {"kyoto": {"t": {"file": "u"}}}}"#, "'kyoto'"),
            (r#"{"default": {"t": {}}}"#, "changes nothing"),
            (
                r#"{"default": {"t": {"fields": {"a": "x", "b": "x.y"}}}}"#,
                "overlap",
            ),
            (
                r#"{"default": {"t": {"fields": {"a.": "x"}}}}"#,
                "dotted field path",
            ),
            (
                r#"{"default": {"t": {"file": "u", "rename": 1}}}"#,
                "unknown field",
            ),
        ];
        for (cfg, want) in cases {
            let err = transform(rename, cfg, &[]).unwrap_err();
            assert!(err.contains(want), "{cfg}: {err}");
        }
    }
}
