//! `doppel plugin new`: the plugin project generator. It writes a ready crate for one
//! role (contract through `doppel-sdk`, a typed config, two example tests, sample
//! records for `doppel plugin test`, a README) that builds as generated.
//!
//! The SDK dependency is a path dependency on a `doppel-sdk` checkout named by
//! `--sdk PATH` (or `DOPPEL_SDK`); without either, the `sdk/` of the source tree this
//! binary was built from, when it still exists. The crate declares its own (empty)
//! workspace so that it builds wherever it is generated, and when the SDK sits in a
//! Doppel checkout its `Cargo.lock` is copied, so the crate resolves the dependency
//! versions the SDK is tested with.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

/// The roles a generated plugin can have (the four worlds of `sdk/wit/doppel.wit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NewRole {
    Filter,
    Transform,
    Rule,
    Resolver,
}

impl NewRole {
    pub fn name(self) -> &'static str {
        match self {
            NewRole::Filter => "filter",
            NewRole::Transform => "transform",
            NewRole::Rule => "rule",
            NewRole::Resolver => "resolver",
        }
    }
}

/// The language of a generated plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Js,
}

/// A plugin name: what the registry stores it under and the crate's package name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name '{name}': 1 to 64 characters of a-z, 0-9 and '-', starting with a letter"
        ))
    }
}

/// Where the SDK is: `--sdk`, else the source tree this binary was built from.
pub fn find_sdk(given: Option<&Path>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
            if !built.join("Cargo.toml").is_file() {
                return Err(format!(
                    "no doppel-sdk found: this binary was built from {}, which is gone; \
                     give --sdk PATH (the sdk/ folder of a Doppel checkout) or set DOPPEL_SDK",
                    built.display()
                ));
            }
            built
        }
    };
    let path = path
        .canonicalize()
        .map_err(|e| format!("--sdk {}: {e}", path.display()))?;
    let manifest = std::fs::read_to_string(path.join("Cargo.toml"))
        .map_err(|e| format!("--sdk {}: no Cargo.toml ({e})", path.display()))?;
    if !manifest.contains("name = \"doppel-sdk\"") {
        return Err(format!(
            "--sdk {}: its Cargo.toml is not the doppel-sdk package",
            path.display()
        ));
    }
    Ok(path)
}

/// Writes the project into `dir` (which must not exist or be empty); returns the
/// files written, relative to `dir`.
pub fn generate(dir: &Path, name: &str, role: NewRole, sdk: &Path) -> Result<Vec<String>, String> {
    check_name(name)?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} exists and is not empty: choose another place (--dir)",
            dir.display()
        ));
    }
    let sdk_text = sdk
        .to_str()
        .ok_or_else(|| format!("--sdk {}: not a UTF-8 path", sdk.display()))?;
    let fill = |t: &str| {
        t.replace("{{NAME}}", name)
            .replace("{{ROLE}}", role.name())
            .replace("{{SDK}}", &sdk_text.replace('\\', "\\\\"))
    };
    let (lib, records, example) = match role {
        NewRole::Filter => (FILTER_LIB, FILTER_RECORDS, FILTER_CONFIG),
        NewRole::Transform => (TRANSFORM_LIB, TRANSFORM_RECORDS, TRANSFORM_CONFIG),
        NewRole::Rule => (RULE_LIB, RULE_RECORDS, RULE_CONFIG),
        NewRole::Resolver => (RESOLVER_LIB, RESOLVER_RECORDS, RESOLVER_CONFIG),
    };
    let mut files: Vec<(&str, String)> = vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(lib)),
        ("records.json", fill(records)),
        ("README.md", fill(README).replace("{{CONFIG}}", example)),
        (".gitignore", "/target\n/dist\n".into()),
    ];
    // The versions the SDK is tested with, when the SDK is in a Doppel checkout.
    if let Ok(lock) = std::fs::read_to_string(sdk.join("../Cargo.lock")) {
        files.push(("Cargo.lock", lock));
    }
    std::fs::create_dir_all(dir.join("src")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(file.to_owned());
    }
    Ok(written)
}

/// Writes a JavaScript project (filters and transforms) into `dir`: package.json (with
/// `"doppel": {"role", "source", "sdk"}`), src/plugin.js, two tests run by `npm test`
/// (node's test runner), records.json and a README.
pub fn generate_js(
    dir: &Path,
    name: &str,
    role: NewRole,
    sdk: &Path,
) -> Result<Vec<String>, String> {
    check_name(name)?;
    let (plugin, test, records, example) = match role {
        NewRole::Filter => (JS_FILTER, JS_FILTER_TEST, FILTER_RECORDS, FILTER_CONFIG),
        NewRole::Transform => (
            JS_TRANSFORM,
            JS_TRANSFORM_TEST,
            TRANSFORM_RECORDS,
            TRANSFORM_CONFIG,
        ),
        NewRole::Rule | NewRole::Resolver => {
            return Err(format!(
            "--lang js: a JavaScript plugin is a filter or a transform (a {} is Rust only for now)",
            role.name()
        ))
        }
    };
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} exists and is not empty: choose another place (--dir)",
            dir.display()
        ));
    }
    let sdk_text = sdk
        .to_str()
        .ok_or_else(|| format!("--sdk {}: not a UTF-8 path", sdk.display()))?;
    let sdk_json = serde_json::to_string(sdk_text).expect("a string serialises");
    let sdk_json = &sdk_json[1..sdk_json.len() - 1];
    let fill = |t: &str| {
        t.replace("{{NAME}}", name)
            .replace("{{ROLE}}", role.name())
            .replace("{{SDK}}", sdk_json)
    };
    let files: Vec<(&str, String)> = vec![
        ("package.json", fill(JS_PACKAGE)),
        ("src/plugin.js", fill(plugin)),
        ("test/plugin.test.js", fill(test)),
        ("records.json", fill(records)),
        ("README.md", fill(JS_README).replace("{{CONFIG}}", example)),
        (
            ".gitignore",
            "/node_modules\n/dist\n/src/.doppel-build\n".into(),
        ),
    ];
    for sub in ["src", "test"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(file.to_owned());
    }
    Ok(written)
}

const JS_PACKAGE: &str = r#"{
  "name": "{{NAME}}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "description": "A Doppel {{ROLE}} plugin in JavaScript",
  "doppel": {"role": "{{ROLE}}", "source": "src/plugin.js", "sdk": "{{SDK}}"},
  "scripts": {"test": "node --test"},
  "dependencies": {"@doppel/plugin-sdk": "file:{{SDK}}/js"}
}
"#;

const JS_README: &str = r#"# {{NAME}}

A Doppel {{ROLE}} plugin in JavaScript, generated by `doppel plugin new --lang js`. The
guide is docs/PLUGINS.md in the Doppel repository.

```sh
npm install                 # links @doppel/plugin-sdk
npm test                    # the example tests, in Node
doppel plugin build         # dist/{{NAME}}.wasm (componentize-js; run `npm install` in the SDK's js/ once)
doppel plugin test          # runs it on records.json in the server's runtime and limits
doppel plugin upload --url http://127.0.0.1:7070 --token "$TOKEN"
```

An example config:

```json
{{CONFIG}}
```
"#;

const JS_FILTER: &str = r#"// {{NAME}}: a Doppel filter in JavaScript. Keeps the records whose key starts with
// one of the configured prefixes; records of files the config does not list pass.
import { filter as makeFilter } from "@doppel/plugin-sdk";

/** Keep the record or not; a throw is this record's error. */
export function keep(r, cfg) {
  if (cfg.files.length && !cfg.files.includes(r.file)) return true;
  return cfg.prefixes.some((p) => r.key.startsWith(p));
}

const plugin = makeFilter(keep, {
  // Exported as config-schema: the console renders a form from it.
  schema: {
    type: "object",
    required: ["prefixes"],
    properties: {
      prefixes: { type: "array", items: { type: "string" } },
      files: { type: "array", items: { type: "string" } },
    },
  },
  defaults: { files: [] },
  // Runs when the stage loads; a message (or a throw) rejects the config.
  validate(cfg) {
    if (!Array.isArray(cfg.prefixes) || cfg.prefixes.length === 0) return "prefixes: give at least one";
  },
});

export const { contractVersion, configSchema, configure, filter } = plugin;
"#;

const JS_FILTER_TEST: &str = r#"import { test } from "node:test";
import assert from "node:assert/strict";
import { testing } from "@doppel/plugin-sdk";
import * as plugin from "../src/plugin.js";

test("keeps the keys with a prefix", () => {
  const got = testing.filter(plugin, { prefixes: ["eu-"], files: ["orders"] }, [
    { file: "orders", key: "eu-1", data: {} },
    { file: "orders", key: "us-1", data: {} },
    { file: "lines", key: "us-1", data: {} },
  ]);
  assert.deepEqual(got, [true, false, true]);
});

test("refuses a config without prefixes", () => {
  assert.throws(() => testing.filter(plugin, { prefixes: [] }, []), /prefixes: give at least one/);
});
"#;

const JS_TRANSFORM: &str = r#"// {{NAME}}: a Doppel transform in JavaScript. Masks one field (a dotted path) of every
// record's data and before image; records without the field pass unchanged.
import { transform as makeTransform, Edit, Keep, json } from "@doppel/plugin-sdk";

const decoder = new TextDecoder();

function masked(bytes, cfg) {
  if (!bytes || bytes.length === 0) return undefined;
  const v = JSON.parse(decoder.decode(bytes)); // not JSON: a throw, this record's error
  return json.replace(v, cfg.field, cfg.mask) ? v : undefined;
}

/** Keep, Drop or Edit({file, key, data, before}); a throw is this record's error. */
export function mask(r, cfg) {
  const data = masked(r.data, cfg);
  const before = masked(r.before, cfg);
  if (data === undefined && before === undefined) return Keep;
  return Edit({ data, before });
}

const plugin = makeTransform(mask, {
  schema: {
    type: "object",
    required: ["field"],
    properties: { field: { type: "string" }, mask: { type: "string" } },
  },
  defaults: { mask: "***" },
  validate(cfg) {
    json.checkPath("field", cfg.field);
  },
});

export const { contractVersion, configSchema, configure, transform } = plugin;
"#;

const JS_TRANSFORM_TEST: &str = r#"import { test } from "node:test";
import assert from "node:assert/strict";
import { testing } from "@doppel/plugin-sdk";
import * as plugin from "../src/plugin.js";

test("masks the field", () => {
  const { records, errors } = testing.transform(plugin, { field: "email" }, [
    { file: "users", key: "u-1", data: { email: "ann@example.com", n: 1 } },
    { file: "users", key: "u-2", data: { n: 2 } },
  ]);
  assert.deepEqual(errors, []);
  assert.deepEqual(records.map((r) => r.data), [{ email: "***", n: 1 }, { n: 2 }]);
});

test("data that is not JSON is that record's error", () => {
  const notJson = { file: "users", key: "u-1", data: new TextEncoder().encode("not json") };
  const { records, errors } = testing.transform(plugin, { field: "email" }, [notJson]);
  assert.equal(records.length, 0);
  assert.equal(errors[0].index, 0);
});
"#;

const CARGO_TOML: &str = r#"[package]
name = "{{NAME}}"
version = "0.1.0"
edition = "2021"
description = "A Doppel {{ROLE}} plugin"
publish = false

# `doppel plugin build` and `doppel plugin upload` read the role from here.
[package.metadata.doppel]
role = "{{ROLE}}"

[lib]
# cdylib: the wasm module; rlib: `cargo test` runs the same functions natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
doppel-sdk = { path = "{{SDK}}" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

# A workspace of its own: the crate builds wherever it was generated.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
"#;

const README: &str = r#"# {{NAME}}

A Doppel {{ROLE}} plugin, generated by `doppel plugin new`. The guide is
docs/PLUGINS.md in the Doppel repository.

```sh
cargo test                          # the example tests, natively, no server
doppel plugin build                 # dist/{{NAME}}.wasm: a component ready to upload
doppel plugin test                  # runs it on records.json in the server's runtime and limits
doppel plugin upload --url http://127.0.0.1:7070 --token "$TOKEN"
```

`src/lib.rs` holds the configuration (`Config`: parsed from JSON, checked by
`validate` when the stage loads) and the function the role calls. An example config:

```json
{{CONFIG}}
```

`records.json` is a dry-run body (`config`, `records`), the input of
`doppel plugin test` and `doppel plugin dry-run`. Put the uploaded plugin on a
logical link as a stage, on the source node only:

```sh
doppel link create SOURCE_DB --to http://REPLICA:7070 --target-token "$REPLICA_TOKEN" \
  --stage '{{NAME}}@0.1.0={{CONFIG}}' --on-error quarantine --wait
```
"#;

const FILTER_CONFIG: &str = r#"{"prefixes": ["eu-"], "files": ["orders"]}"#;

const FILTER_LIB: &str = r##"//! {{NAME}}: a Doppel filter. Keeps the records whose key starts with one of the
//! configured prefixes; records of files the config does not list pass.

use doppel_sdk::{PluginConfig, Record};
use serde::Deserialize;

/// The stage's configuration, e.g. `{"prefixes": ["eu-"], "files": ["orders"]}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A kept key starts with one of these.
    pub prefixes: Vec<String>,
    /// The files the filter applies to; empty or absent: every file.
    #[serde(default)]
    pub files: Vec<String>,
}

impl PluginConfig for Config {
    /// Exported as `config-schema`: the console renders a form from it.
    const SCHEMA: &'static str = r#"{"type":"object","required":["prefixes"],"properties":{"prefixes":{"type":"array","items":{"type":"string"}},"files":{"type":"array","items":{"type":"string"}}}}"#;

    /// Runs when the stage loads; an error rejects the config.
    fn validate(&self) -> Result<(), String> {
        if self.prefixes.is_empty() {
            return Err("prefixes: give at least one".into());
        }
        Ok(())
    }
}

/// Keep the record or not.
pub fn keep(r: &Record, cfg: &Config) -> bool {
    if !cfg.files.is_empty() && !cfg.files.iter().any(|f| f == r.file) {
        return true;
    }
    cfg.prefixes.iter().any(|p| r.key.starts_with(p.as_str()))
}

doppel_sdk::filter!(keep, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::{filter, rec};

    #[test]
    fn keeps_the_keys_with_a_prefix() {
        let records = [rec("orders", "eu-1"), rec("orders", "us-1"), rec("lines", "us-1")];
        let got = filter(keep, r#"{"prefixes":["eu-"],"files":["orders"]}"#, &records).unwrap();
        assert_eq!(got, vec![Ok(true), Ok(false), Ok(true)]);
    }

    #[test]
    fn refuses_a_config_without_prefixes() {
        let err = filter(keep, r#"{"prefixes":[]}"#, &[]).unwrap_err();
        assert!(err.contains("prefixes: give at least one"), "{err}");
    }
}
"##;

const FILTER_RECORDS: &str = r#"{
  "config": {"prefixes": ["eu-"], "files": ["orders"]},
  "records": [
    {"op": "insert", "file": "orders", "key": "eu-1", "data": {"total": 10}},
    {"op": "insert", "file": "orders", "key": "us-1", "data": {"total": 20}},
    {"op": "insert", "file": "lines", "key": "us-1/1", "data": {"qty": 1}}
  ]
}
"#;

const TRANSFORM_CONFIG: &str = r#"{"field": "email", "mask": "***"}"#;

const TRANSFORM_LIB: &str = r##"//! {{NAME}}: a Doppel transform. Masks one field (a dotted path) of every record's
//! data and before image; records without the field pass unchanged.

use doppel_sdk::json;
use doppel_sdk::{Edit, Out, PluginConfig, Record};
use serde::Deserialize;
use serde_json::Value;

/// The stage's configuration, e.g. `{"field": "email", "mask": "***"}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A dotted path into the record's JSON data (`customer.email`).
    pub field: String,
    /// What replaces the value.
    #[serde(default = "default_mask")]
    pub mask: String,
}

fn default_mask() -> String {
    "***".into()
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","required":["field"],"properties":{"field":{"type":"string"},"mask":{"type":"string"}}}"#;

    fn validate(&self) -> Result<(), String> {
        json::check_path("field", &self.field)
    }
}

/// The JSON bytes with the field masked, or `None` when there is nothing to mask.
fn masked(bytes: &[u8], cfg: &Config) -> Result<Option<Vec<u8>>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut v = json::parse(bytes)?;
    Ok(json::replace(&mut v, &cfg.field, Value::String(cfg.mask.clone())).then(|| json::to_bytes(&v)))
}

/// Forward the record, with the field masked where it has it. An `Err` is this record's
/// error (the link's `on_error` decides what happens to it).
pub fn mask(r: &Record, cfg: &Config) -> Result<Out, String> {
    let data = masked(r.data, cfg)?;
    let before = match r.before {
        Some(b) => masked(b, cfg)?.map(Some),
        None => None,
    };
    if data.is_none() && before.is_none() {
        return Ok(Out::Keep);
    }
    Ok(Out::Edit(Edit { data, before, ..Edit::default() }))
}

doppel_sdk::transform!(mask, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::transform;
    use doppel_sdk::{Op, OwnedRecord};

    #[test]
    fn masks_the_field() {
        let records = [
            OwnedRecord::new(Op::Insert, "users", "u-1", r#"{"email":"ann@example.com","n":1}"#),
            OwnedRecord::new(Op::Insert, "users", "u-2", r#"{"n":2}"#),
        ];
        let (out, errors) = transform(mask, r#"{"field":"email"}"#, &records).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out[0].data, br#"{"email":"***","n":1}"#);
        assert_eq!(out[1].data, br#"{"n":2}"#);
    }

    #[test]
    fn data_that_is_not_json_is_that_records_error() {
        let records = [
            OwnedRecord::new(Op::Insert, "users", "u-1", "not json"),
            OwnedRecord::new(Op::Insert, "users", "u-2", r#"{"email":"b@example.com"}"#),
        ];
        let (out, errors) = transform(mask, r#"{"field":"email"}"#, &records).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 0);
    }
}
"##;

const TRANSFORM_RECORDS: &str = r#"{
  "config": {"field": "email", "mask": "***"},
  "records": [
    {"op": "insert", "file": "users", "key": "u-1", "data": {"email": "ann@example.com", "name": "Ann"}},
    {"op": "insert", "file": "users", "key": "u-2", "data": {"name": "Bob"}}
  ]
}
"#;

const RULE_CONFIG: &str =
    r#"{"file": "lines", "parent_file": "orders", "parent_key_field": "order"}"#;

const RULE_LIB: &str = r##"//! {{NAME}}: a Doppel interrelation rule. A record of `file` depends on the record of
//! `parent_file` whose key is in its `parent_key_field`: the replica applies it only
//! once that parent is there.

use doppel_sdk::{json, Dependency, PluginConfig, Record};
use serde::Deserialize;
use serde_json::Value;

/// The stage's configuration, e.g.
/// `{"file": "lines", "parent_file": "orders", "parent_key_field": "order"}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub file: String,
    pub parent_file: String,
    /// A dotted path into the child's data holding the parent's key.
    pub parent_key_field: String,
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","required":["file","parent_file","parent_key_field"],"properties":{"file":{"type":"string"},"parent_file":{"type":"string"},"parent_key_field":{"type":"string"}}}"#;

    fn validate(&self) -> Result<(), String> {
        json::check_path("parent_key_field", &self.parent_key_field)
    }
}

/// The record this record depends on, if any. A delete reads its before image.
pub fn depends(r: &Record, cfg: &Config) -> Result<Option<Dependency>, String> {
    if r.file != cfg.file {
        return Ok(None);
    }
    let bytes = if r.data.is_empty() { r.before.unwrap_or_default() } else { r.data };
    if bytes.is_empty() {
        return Ok(None);
    }
    let v = json::parse(bytes)?;
    match json::get(&v, &cfg.parent_key_field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(key)) => Ok(Some(Dependency::new(&cfg.parent_file, key.clone()))),
        Some(Value::Number(n)) => Ok(Some(Dependency::new(&cfg.parent_file, n.to_string()))),
        Some(other) => Err(format!("{}: {other} is not a key", cfg.parent_key_field)),
    }
}

doppel_sdk::rule!(depends, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::rule;
    use doppel_sdk::{Op, OwnedRecord};

    const CONFIG: &str = r#"{"file":"lines","parent_file":"orders","parent_key_field":"order"}"#;

    #[test]
    fn a_line_depends_on_its_order() {
        let records = [
            OwnedRecord::new(Op::Insert, "lines", "l-1", r#"{"order":"o-1"}"#),
            OwnedRecord::new(Op::Insert, "orders", "o-1", r#"{}"#),
        ];
        let got = rule(depends, CONFIG, &records).unwrap();
        assert_eq!(got, vec![Ok(vec![Dependency::new("orders", "o-1")]), Ok(vec![])]);
    }

    #[test]
    fn a_parent_key_that_is_not_a_key_is_that_records_error() {
        let records = [OwnedRecord::new(Op::Insert, "lines", "l-1", r#"{"order":[1]}"#)];
        let got = rule(depends, CONFIG, &records).unwrap();
        assert!(got[0].as_ref().is_err_and(|e| e.contains("is not a key")), "{got:?}");
    }
}
"##;

const RULE_RECORDS: &str = r#"{
  "config": {"file": "lines", "parent_file": "orders", "parent_key_field": "order"},
  "records": [
    {"op": "insert", "file": "orders", "key": "o-1", "data": {"total": 10}},
    {"op": "insert", "file": "lines", "key": "l-1", "data": {"order": "o-1", "qty": 2}}
  ]
}
"#;

const RESOLVER_CONFIG: &str = r#"{"field": "n"}"#;

const RESOLVER_LIB: &str = r##"//! {{NAME}}: a Doppel conflict resolver for counters. When two sites changed one
//! record, each side's increment over the base counts once: merged = local + remote - base.
//! It decides from the three versions alone, so every site reaches the same data.

use doppel_sdk::{PluginConfig, Record, Resolution};
use serde::Deserialize;

/// The stage's configuration, e.g. `{"field": "n"}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The top-level counter field.
    pub field: String,
}

impl PluginConfig for Config {
    const SCHEMA: &'static str = r#"{"type":"object","required":["field"],"properties":{"field":{"type":"string"}}}"#;

    fn validate(&self) -> Result<(), String> {
        if self.field.is_empty() {
            return Err("field: empty".into());
        }
        Ok(())
    }
}

/// Resolve one conflict. A delete on either side is decided by the later version.
pub fn add(local: &Record, remote: &Record, base: Option<&Record>, cfg: &Config) -> Result<Resolution, String> {
    if local.data.is_empty() || remote.data.is_empty() {
        let later = (remote.timestamp, remote.origin) > (local.timestamp, local.origin);
        return Ok(if later { Resolution::Remote } else { Resolution::Local });
    }
    let n = |r: Option<&Record>| -> Result<i64, String> {
        match r {
            Some(r) if !r.data.is_empty() => Ok(r.json()?[cfg.field.as_str()].as_i64().unwrap_or(0)),
            _ => Ok(0),
        }
    };
    let (l, r, b) = (n(Some(local))?, n(Some(remote))?, n(base)?);
    let mut merged = local.json()?;
    if !merged.is_object() {
        return Err("the local data is not a JSON object".into());
    }
    merged[cfg.field.as_str()] = serde_json::json!(l + r - b);
    Ok(Resolution::merge(&merged))
}

doppel_sdk::resolver!(add, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::resolve;
    use doppel_sdk::{Op, OwnedRecord};

    fn counter(n: i64) -> OwnedRecord {
        OwnedRecord::new(Op::Update, "counters", "c-1", &format!(r#"{{"n":{n}}}"#))
    }

    #[test]
    fn both_increments_count() {
        let got = resolve(add, r#"{"field":"n"}"#, &[(counter(12), counter(15), Some(counter(10)))]).unwrap();
        assert_eq!(got, vec![Ok(Resolution::merge(&serde_json::json!({"n": 17})))]);
    }

    #[test]
    fn without_a_base_both_values_add_up() {
        let got = resolve(add, r#"{"field":"n"}"#, &[(counter(2), counter(3), None)]).unwrap();
        assert_eq!(got, vec![Ok(Resolution::merge(&serde_json::json!({"n": 5})))]);
    }
}
"##;

const RESOLVER_RECORDS: &str = r#"{
  "config": {"field": "n"},
  "records": [{"op": "update", "file": "counters", "key": "c-1", "data": {"n": 12}, "timestamp": 10, "origin": 1}],
  "remote": [{"op": "update", "file": "counters", "key": "c-1", "data": {"n": 15}, "timestamp": 20, "origin": 2}],
  "base": [{"op": "update", "file": "counters", "key": "c-1", "data": {"n": 10}}]
}
"#;
