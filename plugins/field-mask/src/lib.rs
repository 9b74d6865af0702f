//! Built-in transform: redacts JSON fields by dotted path (personal data), in the after
//! and the before image. Records without any listed field are forwarded untouched.

use doppel_sdk::json;
use doppel_sdk::{Edit, Out, PluginConfig, Record};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dotted paths of the fields to redact (`email`, `card.number`).
    pub paths: Vec<String>,
    /// What a redacted field becomes; `null` removes the field.
    #[serde(default = "default_mask")]
    pub mask: Value,
    /// Files to apply to; empty means every file.
    #[serde(default)]
    pub files: Vec<String>,
}

fn default_mask() -> Value {
    Value::String("***".into())
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","required":["paths"],"additionalProperties":false,"properties":{"paths":{"type":"array","items":{"type":"string","minLength":1}},"mask":{},"files":{"type":"array","items":{"type":"string"}}}}"#;
    fn validate(&self) -> Result<(), String> {
        if self.paths.is_empty() {
            return Err("paths: give at least one field path".into());
        }
        self.paths
            .iter()
            .try_for_each(|p| json::check_path("paths", p))
    }
}

fn mask(data: &[u8], cfg: &Config) -> Result<Option<Vec<u8>>, String> {
    let mut v = json::parse(data)?;
    let mut changed = false;
    for p in &cfg.paths {
        changed |= if cfg.mask.is_null() {
            json::remove(&mut v, p).is_some()
        } else {
            json::replace(&mut v, p, cfg.mask.clone())
        };
    }
    Ok(changed.then(|| json::to_bytes(&v)))
}

pub fn redact(r: &Record<'_>, cfg: &Config) -> Result<Out, String> {
    if !cfg.files.is_empty() && !cfg.files.iter().any(|f| f == r.file) {
        return Ok(Out::Keep);
    }
    let data = mask(r.data, cfg)?;
    let before = match r.before {
        Some(b) => mask(b, cfg)?,
        None => None,
    };
    if data.is_none() && before.is_none() {
        return Ok(Out::Keep);
    }
    Ok(Out::Edit(Edit {
        data,
        before: before.map(Some),
        ..Edit::default()
    }))
}

doppel_sdk::transform!(redact, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::transform;
    use doppel_sdk::{Op, OwnedRecord};

    #[test]
    fn listed_fields_are_masked_in_after_and_before_images() {
        let mut r = OwnedRecord::new(Op::Update, "users", "u1", r#"{"email":"a@b","age":3}"#);
        r.before = Some(br#"{"email":"old@b"}"#.to_vec());
        let (out, errors) = transform(redact, r#"{"paths":["email"]}"#, &[r]).unwrap();
        assert!(errors.is_empty());
        assert_eq!(out[0].data, br#"{"age":3,"email":"***"}"#);
        assert_eq!(out[0].before.as_deref(), Some(&br#"{"email":"***"}"#[..]));
    }

    #[test]
    fn a_null_mask_removes_the_field_and_bad_json_is_a_record_error() {
        let recs = [
            OwnedRecord::new(Op::Insert, "u", "1", r#"{"a":{"b":1,"c":2}}"#),
            OwnedRecord::new(Op::Insert, "u", "2", "{oops"),
        ];
        let (out, errors) = transform(redact, r#"{"paths":["a.b"],"mask":null}"#, &recs).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, br#"{"a":{"c":2}}"#);
        assert_eq!(errors[0].0, 1);
    }

    #[test]
    fn an_empty_path_list_is_rejected_at_load() {
        let err = transform(redact, r#"{"paths":[]}"#, &[]).unwrap_err();
        assert!(err.contains("at least one"), "{err}");
    }
}
