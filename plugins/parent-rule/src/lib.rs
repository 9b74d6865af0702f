//! Built-in interrelation rule (SPEC D4, E3): "an order line depends on its order". For a
//! record of a child file it names the parent record, found either in a field of the
//! record's data (a dotted path) or as the part of its key before the last separator.
//!
//! ```json
//! {"rules": [
//!   {"file": "lines", "parent_file": "orders", "parent_key_field": "order.id"},
//!   {"file": "notes", "parent_file": "orders", "key_separator": "/"}]}
//! ```
//!
//! A line `{"order": {"id": "o-1"}}` depends on `(orders, o-1)`; a note keyed
//! `o-1/n-7` depends on `(orders, o-1)`. For a delete the field is read from the before
//! image. A record without the field (or the separator) depends on nothing, unless the
//! rule says `"required": true`, which makes that a record error. Several rules for one
//! file give several dependencies. A record never depends on itself.

use doppel_sdk::{json, Dependency, PluginConfig, Record};
use serde::Deserialize;
use serde_json::Value;

/// One child → parent relation.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The child file.
    pub file: String,
    /// The file of the parent record.
    pub parent_file: String,
    /// Dotted path of the field holding the parent's key.
    #[serde(default)]
    pub parent_key_field: Option<String>,
    /// Or: the parent's key is the child's key up to the last occurrence of this.
    #[serde(default)]
    pub key_separator: Option<String>,
    /// A child without a parent key is an error rather than independent.
    #[serde(default)]
    pub required: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<Rule>,
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","required":["rules"],"additionalProperties":false,"properties":{"rules":{"type":"array","minItems":1,"items":{"type":"object","required":["file","parent_file"],"additionalProperties":false,"properties":{"file":{"type":"string","minLength":1},"parent_file":{"type":"string","minLength":1},"parent_key_field":{"type":"string","minLength":1},"key_separator":{"type":"string","minLength":1},"required":{"type":"boolean"}},"oneOf":[{"required":["parent_key_field"]},{"required":["key_separator"]}]}}}}"#;

    fn validate(&self) -> Result<(), String> {
        if self.rules.is_empty() {
            return Err("rules: give at least one rule".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.file.is_empty() || r.parent_file.is_empty() {
                return Err(format!("rules[{i}]: a file name is empty"));
            }
            match (&r.parent_key_field, &r.key_separator) {
                (Some(path), None) => {
                    json::check_path(&format!("rules[{i}].parent_key_field"), path)?
                }
                (None, Some(sep)) if !sep.is_empty() => {}
                (None, Some(_)) => return Err(format!("rules[{i}].key_separator: empty")),
                _ => {
                    return Err(format!(
                        "rules[{i}]: give exactly one of parent_key_field and key_separator"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The parent key held in `path` of the after image, or of the before image when the
/// after image has none (a delete).
fn key_from_field(r: &Record<'_>, path: &str) -> Result<Option<String>, String> {
    for image in [Some(r.data), r.before].into_iter().flatten() {
        let v = json::parse(image)?;
        match json::get(&v, path) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(other) => {
                return Err(format!(
                    "field '{path}' should hold the parent's key, but is {}",
                    kind(other)
                ))
            }
        }
    }
    Ok(None)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn depends(r: &Record<'_>, cfg: &Config) -> Result<Vec<Dependency>, String> {
    let mut deps = Vec::new();
    for rule in cfg.rules.iter().filter(|rule| rule.file == r.file) {
        let parent = match (&rule.parent_key_field, &rule.key_separator) {
            (Some(path), _) => key_from_field(r, path)?,
            (None, Some(sep)) => r.key.rsplit_once(sep.as_str()).map(|(p, _)| p.to_owned()),
            (None, None) => None,
        };
        match parent {
            Some(key) if rule.parent_file == r.file && key == r.key => {}
            Some(key) => deps.push(Dependency::new(rule.parent_file.clone(), key)),
            None if rule.required => {
                let from = match (&rule.parent_key_field, &rule.key_separator) {
                    (Some(path), _) => format!("no field '{path}'"),
                    (_, sep) => format!("no '{}' in the key", sep.as_deref().unwrap_or("")),
                };
                return Err(format!(
                    "{from}: cannot name its {} record",
                    rule.parent_file
                ));
            }
            None => {}
        }
    }
    Ok(deps)
}

doppel_sdk::rule!(depends, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::rule;
    use doppel_sdk::{Op, OwnedRecord};

    const CFG: &str =
        r#"{"rules": [{"file": "lines", "parent_file": "orders", "parent_key_field": "order"}]}"#;

    fn line(key: &str, data: &str) -> OwnedRecord {
        OwnedRecord::new(Op::Insert, "lines", key, data)
    }

    fn dep(file: &str, key: &str) -> Dependency {
        Dependency::new(file, key)
    }

    #[test]
    fn an_order_line_depends_on_its_order() {
        let recs = [
            line("l-1", r#"{"order":"o-1","qty":2}"#),
            line("l-2", r#"{"order":17}"#),
            line("l-3", r#"{"qty":2}"#),
            OwnedRecord::new(Op::Insert, "orders", "o-1", r#"{"order":"o-0"}"#),
        ];
        let got = rule(depends, CFG, &recs).unwrap();
        assert_eq!(
            got,
            vec![
                Ok(vec![dep("orders", "o-1")]),
                Ok(vec![dep("orders", "17")]),
                Ok(vec![]),
                Ok(vec![])
            ]
        );
    }

    #[test]
    fn a_dotted_path_reaches_a_nested_field_and_a_delete_reads_its_before_image() {
        let cfg = r#"{"rules": [{"file": "lines", "parent_file": "orders", "parent_key_field": "order.id"}]}"#;
        let del = OwnedRecord::new(Op::Delete, "lines", "l-1", "")
            .with_before(r#"{"order":{"id":"o-9"}}"#);
        let got = rule(
            depends,
            cfg,
            &[line("l-2", r#"{"order":{"id":"o-1"}}"#), del],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Ok(vec![dep("orders", "o-1")]),
                Ok(vec![dep("orders", "o-9")])
            ]
        );
    }

    #[test]
    fn the_parent_key_can_be_the_key_before_the_last_separator() {
        let cfg = r#"{"rules": [{"file": "lines", "parent_file": "orders", "key_separator": "/"},
                                {"file": "lines", "parent_file": "products", "parent_key_field": "sku"}]}"#;
        let got = rule(
            depends,
            cfg,
            &[line("eu/o-1/3", r#"{"sku":"p-5"}"#), line("flat", "{}")],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Ok(vec![dep("orders", "eu/o-1"), dep("products", "p-5")]),
                Ok(vec![])
            ]
        );
    }

    #[test]
    fn a_required_parent_that_is_missing_or_not_a_key_is_a_record_error() {
        let cfg = r#"{"rules": [{"file": "lines", "parent_file": "orders", "parent_key_field": "order", "required": true}]}"#;
        let got = rule(
            depends,
            cfg,
            &[
                line("l-1", "{}"),
                line("l-2", r#"{"order":[1]}"#),
                line("l-3", "{x"),
            ],
        )
        .unwrap();
        assert!(
            got[0].as_ref().unwrap_err().contains("no field 'order'"),
            "{got:?}"
        );
        assert!(
            got[1].as_ref().unwrap_err().contains("is an array"),
            "{got:?}"
        );
        assert!(got[2].as_ref().unwrap_err().contains("not JSON"), "{got:?}");
    }

    #[test]
    fn a_record_never_depends_on_itself() {
        let cfg =
            r#"{"rules": [{"file": "tree", "parent_file": "tree", "parent_key_field": "parent"}]}"#;
        let root = OwnedRecord::new(Op::Insert, "tree", "r", r#"{"parent":"r"}"#);
        let leaf = OwnedRecord::new(Op::Insert, "tree", "l", r#"{"parent":"r"}"#);
        let got = rule(depends, cfg, &[root, leaf]).unwrap();
        assert_eq!(got, vec![Ok(vec![]), Ok(vec![dep("tree", "r")])]);
    }

    #[test]
    fn bad_configs_are_rejected_at_load() {
        let cases = [
            (r#"{"rules": []}"#, "at least one rule"),
            (
                r#"{"rules": [{"file": "l", "parent_file": "o"}]}"#,
                "exactly one of",
            ),
            (
                r#"{"rules": [{"file": "l", "parent_file": "o", "parent_key_field": "a", "key_separator": "/"}]}"#,
                "exactly one of",
            ),
            (
                r#"{"rules": [{"file": "l", "parent_file": "o", "parent_key_field": "a..b"}]}"#,
                "dotted field path",
            ),
            (
                r#"{"rules": [{"file": "l", "parent_file": "", "key_separator": "/"}]}"#,
                "file name is empty",
            ),
            (
                r#"{"rules": [{"file": "l", "parent_file": "o", "key_separator": ""}]}"#,
                "key_separator: empty",
            ),
        ];
        for (cfg, want) in cases {
            let err = rule(depends, cfg, &[]).unwrap_err();
            assert!(err.contains(want), "{cfg}: {err}");
        }
    }
}
