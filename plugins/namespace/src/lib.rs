//! Built-in transform: namespaces each source's data for many-to-one consolidation
//! (SPEC E2). Records from each source node get a key prefix and/or a file-name prefix,
//! so that several sources' `orders/o-1` land apart on one target.
//!
//! ```json
//! {"nodes": {"tokyo": 1, "osaka": 2},
//!  "sources": {"tokyo": {"key_prefix": "tokyo/"}, "osaka": {"file_prefix": "osaka_"}},
//!  "default": {"key_prefix": "other/"}}
//! ```
//!
//! A record from a node without an entry takes `default`; without a `default` it is
//! forwarded unchanged. Deletes are namespaced like any write, so they reach the record
//! the insert made. Alternate keys are not prefixed.

use std::collections::{BTreeMap, HashMap};

use doppel_sdk::{origin, Edit, Out, PluginConfig, Record};
use serde::Deserialize;

/// The namespace of one source.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Space {
    /// Put before every key.
    #[serde(default)]
    pub key_prefix: String,
    /// Put before every file name.
    #[serde(default)]
    pub file_prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    nodes: BTreeMap<String, u64>,
    #[serde(default)]
    sources: BTreeMap<String, Space>,
    #[serde(default)]
    default: Option<Space>,
}

/// The configuration, with sources resolved to node ids at load.
#[derive(Deserialize, Debug)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    sources: HashMap<u64, Space>,
    default: Option<Space>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(raw: RawConfig) -> Result<Config, String> {
        if raw.sources.is_empty() && raw.default.is_none() {
            return Err("give at least one namespace in \"sources\" or \"default\"".into());
        }
        let named = raw.sources.iter().map(|(n, s)| (format!("sources.{n}"), s));
        for (scope, space) in named.chain(raw.default.iter().map(|s| ("default".into(), s))) {
            if space.key_prefix.is_empty() && space.file_prefix.is_empty() {
                return Err(format!("{scope}: give a key_prefix or a file_prefix"));
            }
        }
        // Two sources with one namespace would consolidate into each other's records.
        let mut seen: Vec<(&Space, &str)> = Vec::new();
        for (name, space) in &raw.sources {
            if let Some((_, other)) = seen.iter().find(|(s, _)| *s == space) {
                return Err(format!(
                    "sources '{other}' and '{name}' share one namespace"
                ));
            }
            seen.push((space, name));
        }
        Ok(Config {
            sources: origin::by_node(raw.sources, &raw.nodes)?,
            default: raw.default,
        })
    }
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r##"{"type":"object","additionalProperties":false,"$defs":{"space":{"type":"object","additionalProperties":false,"properties":{"key_prefix":{"type":"string"},"file_prefix":{"type":"string"}}}},"properties":{"nodes":{"type":"object","additionalProperties":{"type":"integer","minimum":0}},"sources":{"type":"object","additionalProperties":{"$ref":"#/$defs/space"}},"default":{"$ref":"#/$defs/space"}}}"##;
}

impl Config {
    /// The namespace of records from node `origin`, if any.
    pub fn space(&self, origin: u64) -> Option<&Space> {
        self.sources.get(&origin).or(self.default.as_ref())
    }
}

pub fn namespace(r: &Record<'_>, cfg: &Config) -> Result<Out, String> {
    let Some(space) = cfg.space(r.origin) else {
        return Ok(Out::Keep);
    };
    // Concatenated by hand: `format!` goes through the formatting machinery per record.
    let prefixed = |prefix: &str, s: &str| {
        (!prefix.is_empty()).then(|| {
            let mut out = String::with_capacity(prefix.len() + s.len());
            out.push_str(prefix);
            out.push_str(s);
            out
        })
    };
    Ok(Out::Edit(Edit {
        key: prefixed(&space.key_prefix, r.key),
        file: prefixed(&space.file_prefix, r.file),
        ..Edit::default()
    }))
}

doppel_sdk::transform!(namespace, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::transform;
    use doppel_sdk::{Op, OwnedRecord};

    const CFG: &str = r#"{"nodes": {"tokyo": 1, "osaka": 2},
        "sources": {"tokyo": {"key_prefix": "tokyo/"}, "osaka": {"key_prefix": "osaka/", "file_prefix": "jp_"}}}"#;

    fn from(origin: u64, op: Op, key: &str) -> OwnedRecord {
        OwnedRecord::new(op, "orders", key, r#"{"total":1}"#).with_origin(origin)
    }

    #[test]
    fn the_same_key_from_two_sources_lands_in_two_namespaces() {
        let recs = [
            from(1, Op::Insert, "o-1"),
            from(2, Op::Insert, "o-1"),
            from(2, Op::Delete, "o-2"),
        ];
        let (out, errors) = transform(namespace, CFG, &recs).unwrap();
        assert!(errors.is_empty());
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.file.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("orders", "tokyo/o-1"),
                ("jp_orders", "osaka/o-1"),
                ("jp_orders", "osaka/o-2")
            ]
        );
        assert_eq!(out[0].data, recs[0].data);
        assert_eq!(out[0].origin, 1);
    }

    #[test]
    fn an_unlisted_source_takes_the_default_or_passes_unchanged() {
        let stranger = from(9, Op::Insert, "o-1");
        let (out, _) = transform(namespace, CFG, std::slice::from_ref(&stranger)).unwrap();
        assert_eq!(out[0], stranger);
        let with_default =
            r#"{"sources": {"1": {"key_prefix": "t/"}}, "default": {"key_prefix": "other/"}}"#;
        let (out, _) = transform(namespace, with_default, &[stranger]).unwrap();
        assert_eq!(out[0].key, "other/o-1");
    }

    #[test]
    fn bad_configs_are_rejected_at_load() {
        let cases = [
            ("{}", "at least one namespace"),
            (r#"{"sources": {"1": {}}}"#, "key_prefix or a file_prefix"),
            (
                r#"{"sources": {"1": {"key_prefix": "a/"}, "2": {"key_prefix": "a/"}}}"#,
                "share one namespace",
            ),
            (r#"{"sources": {"tokyo": {"key_prefix": "a/"}}}"#, "'tokyo'"),
            (r#"{"default": {"prefix": "a/"}}"#, "unknown field"),
        ];
        for (cfg, want) in cases {
            let err = transform(namespace, cfg, &[]).unwrap_err();
            assert!(err.contains(want), "{cfg}: {err}");
        }
    }
}
