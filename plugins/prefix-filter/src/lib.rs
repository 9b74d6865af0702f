//! Built-in filter: keeps records of the listed files whose key starts with one of the
//! listed prefixes. An empty list matches everything.

use doppel_sdk::{PluginConfig, Record};
use serde::Deserialize;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Files to keep; empty keeps every file.
    #[serde(default)]
    pub files: Vec<String>,
    /// Key prefixes to keep; empty keeps every key.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","additionalProperties":false,"properties":{"files":{"type":"array","items":{"type":"string"}},"prefixes":{"type":"array","items":{"type":"string"}}}}"#;
    fn validate(&self) -> Result<(), String> {
        if self.files.iter().any(String::is_empty) {
            return Err("files: a file name is empty".into());
        }
        Ok(())
    }
}

pub fn keep(r: &Record<'_>, cfg: &Config) -> bool {
    (cfg.files.is_empty() || cfg.files.iter().any(|f| f == r.file))
        && (cfg.prefixes.is_empty() || cfg.prefixes.iter().any(|p| r.key.starts_with(p.as_str())))
}

doppel_sdk::filter!(keep, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::{filter, rec};

    #[test]
    fn keeps_matching_files_and_prefixes_only() {
        let cfg = r#"{"files": ["orders"], "prefixes": ["eu-", "uk-"]}"#;
        let got = filter(
            keep,
            cfg,
            &[
                rec("orders", "eu-1"),
                rec("orders", "us-1"),
                rec("lines", "eu-1"),
            ],
        )
        .unwrap();
        assert_eq!(got, vec![Ok(true), Ok(false), Ok(false)]);
    }

    #[test]
    fn an_unknown_config_field_is_rejected_at_load() {
        let err = filter(keep, r#"{"prefix": "eu"}"#, &[]).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
