//! `doppel plugin`: a plugin author's commands. `new` generates a project
//! (`plugin_new`), `build` compiles it to a component ready to upload (cargo for
//! `wasm32-unknown-unknown`, then `wit-component` in-process: no other tool), `test`
//! runs the component on sample records in the host runtime the server uses, with the
//! same limits, and `upload`, `list`, `dry-run` and `delete` talk to a node's registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::client::{connect, encode_segment, Target};
use super::plugin_new::{self, Lang, NewRole};
use super::progress;
use crate::plugins::{Limits, Role, Runtime};

const WASM_TARGET: &str = "wasm32-unknown-unknown";

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Generate a plugin project: doppel plugin new my-filter --role filter
    New {
        /// The plugin's name (a-z, 0-9 and '-'), also the crate's.
        name: String,
        #[arg(long, value_enum)]
        role: NewRole,
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The doppel-sdk to depend on: the sdk/ folder of a Doppel checkout (default:
        /// the one this binary was built from).
        #[arg(long, env = "DOPPEL_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Build the project to a component ready to upload (dist/NAME.wasm).
    Build {
        /// The project's folder.
        #[arg(long, default_value = ".")]
        path: PathBuf,
    },
    /// Run the built component on sample records in the server's runtime and limits.
    Test {
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// The component (default: the project's dist/NAME.wasm).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// A dry-run body: {"config": ..., "records": [...]} (default: records.json).
        #[arg(long)]
        records: Option<PathBuf>,
        /// The config (JSON), instead of the records file's.
        #[arg(long)]
        config: Option<String>,
        /// The role, for a --wasm outside a project (name and version are then "plugin@0").
        #[arg(long)]
        role: Option<String>,
        /// Also measure: instantiation, per-call latency at batch 1 and records/s at
        /// batch 256 (the records file's records, repeated).
        #[arg(long)]
        bench: bool,
    },
    /// Upload the built component to a node (as NAME@VERSION of the project).
    Upload {
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// The component (default: the project's dist/NAME.wasm).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Name (default: the project's).
        #[arg(long)]
        name: Option<String>,
        /// Version (default: the project's, e.g. 0.1.0).
        #[arg(long = "plugin-version")]
        version: Option<String>,
        /// Role (default: the project's [package.metadata.doppel] role).
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List the tenant's plugins (uploaded and built-in).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Run records through an uploaded plugin on the node: doppel plugin dry-run NAME@VERSION --records FILE
    DryRun {
        /// NAME@VERSION, the full version (my-filter@0.1.0).
        plugin: String,
        #[arg(long, default_value = "records.json")]
        records: PathBuf,
        #[arg(long)]
        config: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete an uploaded plugin version: doppel plugin delete NAME@VERSION
    Delete {
        plugin: String,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(command: PluginCommand) -> Result<(), String> {
    use PluginCommand as P;
    match command {
        P::New {
            name,
            role,
            lang,
            dir,
            sdk,
        } => {
            plugin_new::check_name(&name)?;
            let sdk = plugin_new::find_sdk(sdk.as_deref())?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files = match lang {
                Lang::Rust => plugin_new::generate(&dir, &name, role, &sdk)?,
                Lang::Js => plugin_new::generate_js(&dir, &name, role, &sdk)?,
            };
            let next = match lang {
                Lang::Rust => "cargo test && doppel plugin build && doppel plugin test",
                Lang::Js => "npm install && npm test && doppel plugin build && doppel plugin test",
            };
            print_json(&serde_json::json!({
                "created": dir.display().to_string(),
                "name": name,
                "role": role.name(),
                "sdk": sdk.display().to_string(),
                "files": files,
                "lang": match lang { Lang::Rust => "rust", Lang::Js => "js" },
                "next": format!("cd {} && {next}", dir.display()),
            }));
            Ok(())
        }
        P::Build { path } => {
            let project = Project::read(&path)?;
            let out = build(&project)?;
            print_json(&out);
            Ok(())
        }
        P::Test {
            path,
            wasm,
            records,
            config,
            role,
            bench,
        } => {
            let project = Project::read(&path).ok();
            let wasm = component_path(&path, project.as_ref(), wasm)?;
            let bytes = read(&wasm)?;
            let given =
                match role.as_deref() {
                    Some(r) => Some(Role::parse(r).ok_or_else(|| {
                        format!("--role {r}: filter, transform, rule or resolver")
                    })?),
                    None => None,
                };
            let (name, version, role) = match (&project, given) {
                (Some(p), Some(role)) => (p.name.clone(), p.version.clone(), role),
                (Some(p), None) => (p.name.clone(), p.version.clone(), p.role()?),
                (None, Some(role)) => ("plugin".to_owned(), "0".to_owned(), role),
                (None, None) => return Err(format!(
                    "{}: not a plugin project (no Cargo.toml with [package.metadata.doppel] role); give --path",
                    path.display()
                )),
            };
            let records = records.unwrap_or_else(|| path.join("records.json"));
            let body = dry_run_body(&records, config.as_deref())?;
            let bench_input = bench.then(|| (body["config"].clone(), body["records"].clone()));
            let body = serde_json::from_value(body)
                .map_err(|e| format!("{}: not a dry-run body: {e}", records.display()))?;
            let runtime = Runtime::new(Limits::default()).map_err(|e| e.to_string())?;
            let label = format!("{name}@{version}");
            let started = std::time::Instant::now();
            let template = instantiate(&runtime, &label, role, &bytes)?;
            let compile_ms = started.elapsed().as_secs_f64() * 1e3;
            let out =
                crate::api::plugins::run_dry(&template, &label, body).map_err(|e| e.detail)?;
            let mut out = serde_json::to_value(out).expect("a dry run's answer is JSON");
            if let Some((config, records)) = bench_input {
                let mut figures = measure(&template, &config, records)?;
                figures["compile_ms"] = serde_json::json!(round(compile_ms));
                figures["component_bytes"] = serde_json::json!(bytes.len());
                out["bench"] = figures;
            }
            print_json(&out);
            Ok(())
        }
        P::Upload {
            path,
            wasm,
            name,
            version,
            role,
            target,
        } => {
            let project = Project::read(&path).ok();
            let wasm = component_path(&path, project.as_ref(), wasm)?;
            let from_project = |what: &str| {
                format!(
                    "give --{what}: {} is not a plugin project to take it from",
                    path.display()
                )
            };
            let name = match (name, &project) {
                (Some(n), _) => n,
                (None, Some(p)) => p.name.clone(),
                (None, None) => return Err(from_project("name")),
            };
            let version = match (version, &project) {
                (Some(v), _) => v,
                (None, Some(p)) => p.version.clone(),
                (None, None) => return Err(from_project("plugin-version")),
            };
            let role = match (role, &project) {
                (Some(r), _) => r,
                (None, Some(p)) => p.role()?.name().to_owned(),
                (None, None) => return Err(from_project("role")),
            };
            let bytes = read(&wasm)?;
            let bar = progress::bytes(bytes.len() as u64, format!("uploading {name}@{version}"));
            let reader = bar.wrap_read(std::io::Cursor::new(bytes.clone()));
            // The node compiles the component before it answers: a JavaScript one
            // (about 11 MiB) can take a minute on a busy machine.
            let answer = connect(&target)
                .with_timeout(std::time::Duration::from_secs(600))
                .call_reader(
                    "PUT",
                    &format!(
                        "{}/{}/{}?role={}",
                        plugins_path(&target),
                        encode_segment(&name),
                        encode_segment(&version),
                        encode_segment(&role)
                    ),
                    "application/wasm",
                    bytes.len() as u64,
                    reader,
                );
            bar.finish_and_clear();
            print_json(&answer?);
            Ok(())
        }
        P::List { target } => {
            print_json(&connect(&target).call("GET", &plugins_path(&target), None)?);
            Ok(())
        }
        P::DryRun {
            plugin,
            records,
            config,
            target,
        } => {
            let (name, version) = split_plugin(&plugin)?;
            let body = dry_run_body(&records, config.as_deref())?;
            let path = format!(
                "{}/{}/{}/dry-run",
                plugins_path(&target),
                encode_segment(name),
                encode_segment(version)
            );
            print_json(&connect(&target).call("POST", &path, Some(&body))?);
            Ok(())
        }
        P::Delete { plugin, target } => {
            let (name, version) = split_plugin(&plugin)?;
            let path = format!(
                "{}/{}/{}",
                plugins_path(&target),
                encode_segment(name),
                encode_segment(version)
            );
            connect(&target).call("DELETE", &path, None)?;
            print_json(&serde_json::json!({"deleted": plugin}));
            Ok(())
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn plugins_path(target: &Target) -> String {
    format!("/v1/tenants/{}/plugins", encode_segment(&target.tenant))
}

/// `name@version`, the full version a stage and the registry name.
pub fn split_plugin(plugin: &str) -> Result<(&str, &str), String> {
    match plugin.rsplit_once('@') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok((name, version)),
        _ => Err(format!(
            "'{plugin}': name a plugin with its full version, NAME@VERSION (e.g. my-filter@0.1.0)"
        )),
    }
}

/// A dry-run body from a file, its config replaced by `config` if given.
fn dry_run_body(records: &Path, config: Option<&str>) -> Result<Value, String> {
    let text = std::fs::read_to_string(records).map_err(|e| {
        format!(
            "{}: {e} (a dry-run body: {{\"config\": ..., \"records\": [...]}})",
            records.display()
        )
    })?;
    let mut body: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", records.display()))?;
    if !body.is_object() {
        return Err(format!(
            "{}: a dry-run body is an object: {{\"config\": ..., \"records\": [...]}}",
            records.display()
        ));
    }
    if let Some(config) = config {
        body["config"] =
            serde_json::from_str(config).map_err(|e| format!("--config: not JSON: {e}"))?;
    }
    Ok(body)
}

/// The component to test or upload: `--wasm`, else the project's `dist/NAME.wasm`.
fn component_path(
    path: &Path,
    project: Option<&Project>,
    wasm: Option<PathBuf>,
) -> Result<PathBuf, String> {
    if let Some(w) = wasm {
        return Ok(w);
    }
    let project = project.ok_or_else(|| {
        format!(
            "{}: not a plugin project (no Cargo.toml); give --wasm FILE or --path",
            path.display()
        )
    })?;
    let built = project.component();
    if !built.is_file() {
        return Err(format!(
            "{} is not built yet: run `doppel plugin build` first (or give --wasm FILE)",
            built.display()
        ));
    }
    Ok(built)
}

/// Compiles and checks a component as an upload does, and pre-instantiates it.
fn instantiate(
    runtime: &Arc<Runtime>,
    label: &str,
    role: Role,
    wasm: &[u8],
) -> Result<crate::plugins::runtime::Template, String> {
    let component = runtime
        .compile(label, role, wasm)
        .map_err(|e| e.to_string())?;
    let template = runtime
        .template(label, role, &component)
        .map_err(|e| e.to_string())?;
    template.check().map_err(|e| e.to_string())?;
    Ok(template)
}

/// A plugin project: a crate whose Cargo.toml has `[package.metadata.doppel] role`, or a
/// JavaScript project whose package.json has `"doppel": {"role", "source", "sdk"}`.
pub struct Project {
    dir: PathBuf,
    name: String,
    version: String,
    role: Option<String>,
    /// A JavaScript project: its source module and the Doppel SDK folder.
    js: Option<(PathBuf, PathBuf)>,
}

impl Project {
    pub fn read(dir: &Path) -> Result<Project, String> {
        if !dir.join("Cargo.toml").exists() && dir.join("package.json").exists() {
            return Project::read_js(dir);
        }
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|e| {
            format!(
                "{}: {e} (a plugin project is a crate made by `doppel plugin new`)",
                manifest.display()
            )
        })?;
        let doc: toml::Value =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
        let package = doc
            .get("package")
            .ok_or_else(|| format!("{}: no [package]", manifest.display()))?;
        let field = |key: &str| package.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Project {
            dir: dir.to_path_buf(),
            name: field("name")
                .ok_or_else(|| format!("{}: no package name", manifest.display()))?,
            version: field("version")
                .ok_or_else(|| format!("{}: no package version", manifest.display()))?,
            role: package
                .get("metadata")
                .and_then(|m| m.get("doppel"))
                .and_then(|d| d.get("role"))
                .and_then(|r| r.as_str())
                .map(str::to_owned),
            js: None,
        })
    }

    fn read_js(dir: &Path) -> Result<Project, String> {
        let manifest = dir.join("package.json");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("{}: {e}", manifest.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", manifest.display()))?;
        let field = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{}: no {what}", manifest.display()))
        };
        let doppel = &doc["doppel"];
        let source = dir.join(field(&doppel["source"], "doppel.source")?);
        let sdk = PathBuf::from(field(&doppel["sdk"], "doppel.sdk (the sdk/ folder)")?);
        Ok(Project {
            dir: dir.to_path_buf(),
            name: field(&doc["name"], "name")?,
            version: field(&doc["version"], "version")?,
            role: doppel["role"].as_str().map(str::to_owned),
            js: Some((source, sdk)),
        })
    }

    fn role(&self) -> Result<Role, String> {
        let role = self.role.as_deref().ok_or_else(|| {
            format!(
                "{}: no [package.metadata.doppel] role = \"filter|transform|rule|resolver\"",
                self.dir.join("Cargo.toml").display()
            )
        })?;
        Role::parse(role).ok_or_else(|| {
            format!("role '{role}' in Cargo.toml: filter, transform, rule or resolver")
        })
    }

    /// Where `build` puts the component.
    fn component(&self) -> PathBuf {
        self.dir.join("dist").join(format!("{}.wasm", self.name))
    }
}

/// cargo for wasm32, the component wrapping, and the upload's checks, in-process.
fn build(project: &Project) -> Result<Value, String> {
    let role = project.role()?;
    let (component, spinner) = match &project.js {
        Some((source, sdk)) => {
            let spinner = progress::spinner(format!(
                "componentize-js {} (a minute on a slow machine)",
                source.display()
            ));
            (js_build(project, role, source, sdk)?, spinner)
        }
        None => {
            check_wasm_target()?;
            let module = cargo_build(project)?;
            let spinner = progress::spinner(format!("making a component of {}", module.display()));
            let core = read(&module)?;
            let component = wit_component::ComponentEncoder::default()
                .module(&core)
                .and_then(|e| e.validate(true).encode())
                .map_err(|e| format!("making a component of {}: {e:#}", module.display()))?;
            (component, spinner)
        }
    };
    spinner.set_message("checking it as an upload is checked");
    let runtime = Runtime::new(Limits::default()).map_err(|e| e.to_string())?;
    let label = format!("{}@{}", project.name, project.version);
    instantiate(&runtime, &label, role, &component)?;
    let out = project.component();
    std::fs::create_dir_all(out.parent().expect("dist/ has a parent"))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(&out, &component).map_err(|e| format!("{}: {e}", out.display()))?;
    spinner.finish_and_clear();
    let sha: String = Sha256::digest(&component)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(serde_json::json!({
        "component": out.display().to_string(),
        "plugin": label,
        "role": role,
        "bytes": component.len(),
        "limit_bytes": Limits::default().max_module_bytes,
        "sha256": sha,
    }))
}

fn check_wasm_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running rustc: {e} (is Rust installed? https://rustup.rs)"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .exists()
    {
        return Err(format!(
            "the Rust target {WASM_TARGET} is not installed: run `rustup target add {WASM_TARGET}`"
        ));
    }
    Ok(())
}

/// Runs cargo and answers the core module it built for the project's cdylib.
fn cargo_build(project: &Project) -> Result<PathBuf, String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = project
        .dir
        .join("Cargo.toml")
        .canonicalize()
        .map_err(|e| format!("{}: {e}", project.dir.display()))?;
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--target", WASM_TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running cargo: {e}"))?;
    let spinner = progress::spinner(format!("cargo build --target {WASM_TARGET}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let status_bar = spinner.clone();
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let trimmed = line.trim_start();
            if trimmed.starts_with("Compiling") || trimmed.starts_with("Finished") {
                status_bar.set_message(trimmed.to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut module = None;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let ours = msg["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path());
        let cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if ours && cdylib {
            module = msg["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from);
        }
    }
    let status = child.wait().map_err(|e| format!("cargo: {e}"))?;
    let log = errors.join().unwrap_or_default();
    spinner.finish_and_clear();
    if !status.success() {
        return Err(format!("cargo build failed:\n{log}"));
    }
    module.ok_or_else(|| {
        format!(
            "cargo built no wasm module for {}: its Cargo.toml needs [lib] crate-type = [\"cdylib\", \"rlib\"]",
            project.name
        )
    })
}

/// A JavaScript project's component: `node SDK/js/build.mjs` (componentize-js, every WASI
/// feature off), written to `dist/.componentize.wasm` and read back.
fn js_build(project: &Project, role: Role, source: &Path, sdk: &Path) -> Result<Vec<u8>, String> {
    if !matches!(role, Role::Filter | Role::Transform) {
        return Err(format!(
            "a JavaScript plugin is a filter or a transform; this project's role is {role}"
        ));
    }
    let script = sdk.join("js").join("build.mjs");
    if !script.is_file() {
        return Err(format!(
            "{}: not found; doppel.sdk in package.json names the sdk/ folder of a Doppel checkout",
            script.display()
        ));
    }
    if !sdk
        .join("js/node_modules/@bytecodealliance/componentize-js")
        .is_dir()
    {
        return Err(format!(
            "componentize-js is not installed: run `npm install` in {}",
            sdk.join("js").display()
        ));
    }
    let out = project.dir.join("dist").join(".componentize.wasm");
    let run = std::process::Command::new("node")
        .arg(&script)
        .args(["--role", role.name()])
        .arg(source)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| format!("running node (is Node.js installed?): {e}"))?;
    if !run.status.success() {
        return Err(format!(
            "componentize-js failed:\n{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let component = read(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(component)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What `plugin test --bench` measures, in the server's runtime: instantiation (with
/// `configure`), the latency of a call of one record, and records per second at batch
/// 256. Medians of repeated runs, after a warm-up call.
fn measure(
    template: &crate::plugins::runtime::Template,
    config: &Value,
    records: Value,
) -> Result<Value, String> {
    use std::time::Instant;
    if template.role() == Role::Resolver {
        return Err("--bench measures filters, transforms and rules".into());
    }
    let config = if config.is_null() {
        String::new()
    } else {
        config.to_string()
    };
    let list = records.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return Err("--bench needs at least one record".into());
    }
    let batch = |n: usize| {
        let cycled: Vec<Value> = list.iter().cycle().take(n).cloned().collect();
        crate::api::plugins::records_batch(Value::Array(cycled)).map_err(|e| e.detail)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bar = progress::spinner("measuring");
    let mut inst = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        template.stage(&config).map_err(|e| e.to_string())?;
        inst.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut stage = template.stage(&config).map_err(|e| e.to_string())?;
    let mut time_calls = |b: &doppel_sdk::abi::BatchBuilder, n: usize| {
        stage.call(b.as_batch(), None).map_err(|e| e.to_string())?;
        let mut took = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            stage.call(b.as_batch(), None).map_err(|e| e.to_string())?;
            took.push(t.elapsed().as_secs_f64());
        }
        Ok::<_, String>(took)
    };
    let single = time_calls(&batch(1)?, 500)?;
    let many = time_calls(&batch(256)?, 50)?;
    bar.finish_and_clear();
    Ok(serde_json::json!({
        "instantiate_us": round(median(inst)),
        "call_batch_1_us": round(median(single) * 1e6),
        "records_per_s_batch_256": (256.0 / median(many)).round(),
    }))
}
