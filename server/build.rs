//! Builds the built-in plugins in `plugins/` from source to wasm components.
//!
//! The pattern of wasmtime's `crates/test-programs/artifacts/build.rs`: run cargo for
//! `wasm32-unknown-unknown` (a target dir of its own under `target/`), wrap each core
//! module into a component with `wit_component::ComponentEncoder`, write the components
//! to OUT_DIR and generate `builtin_plugins.rs`, so that the server binary carries them
//! and a plain `cargo build` or `cargo test` needs nothing else.
//!
//! The core modules cargo leaves in `target/wasm-guest-build/` are not plugins (the
//! registry refuses a core module); the components, the files a user could upload, are
//! also copied to `target/plugins/{name}.wasm`. Every node carries them anyway, available
//! to every tenant as `{name}@{version}` without an upload (the crate's own version, else the server's).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// The API reference's Swagger UI (`api::reference`, `GET /docs`): the npm package
/// `swagger-ui-dist` that `npm ci` put in `web/reference/node_modules` (`.ci/run` does),
/// copied to OUT_DIR for `include_str!`. Without it the binary is built all the same and
/// `/docs` says how to get it.
fn vendor_reference(root: &Path, out: &Path) {
    let dir = root.join("web").join("reference");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo::rustc-check-cfg=cfg(doppel_reference)");
    let dist = dir.join("node_modules").join("swagger-ui-dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let files = ["swagger-ui-bundle.js", "swagger-ui.css"];
    if files.iter().all(|f| dist.join(f).is_file()) {
        let to = out.join("reference");
        fs::create_dir_all(&to).expect("reference dir");
        for f in files {
            fs::copy(dist.join(f), to.join(f)).expect("copy the reference's files");
        }
        println!("cargo:rustc-cfg=doppel_reference");
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    // Not all of sdk/: sdk/js (and its node_modules) is not the Rust SDK.
    for part in ["sdk/src", "sdk/wit", "sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(part).display());
    }

    vendor_reference(&root, &out);

    let plugins = find_plugins(&root.join("plugins"));
    for (dir, _, _, _) in &plugins {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    check_target();

    let target_dir = root.join("target").join("wasm-guest-build");
    let user_dir = root.join("target").join("plugins");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy, coverage) are not for the guests.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        // Speed over size: opt-level 3 made the guests 17-55% faster than "s" for
        // components 15-25% larger (docs/BENCHMARKS.md, plugins).
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        // One codegen unit: the guests are small, and whole-crate inlining means fewer
        // calls, so fewer epoch checks (one per function entry) on the hot path.
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for (_, name, _, _) in &plugins {
        cmd.args(["-p", name]);
    }
    if !plugins.is_empty() {
        let status = cmd.status().expect("running cargo for the wasm plugins");
        assert!(
            status.success(),
            "building the built-in plugins for {TARGET} failed"
        );
    }

    let mut src = String::from(
        "/// The built-in plugins: (name, role, description, wasm component bytes).\n\
         pub const BUILTIN_PLUGINS: &[(&str, &str, &str, &[u8])] = &[\n",
    );
    let mut consts = String::new();
    let mut versions = String::from(
        "/// Each built-in plugin's version: its crate's own when it has one (a contract \
         users name, as `json-columns@1.0.0`), else the server's.\n\
         pub const BUILTIN_VERSIONS: &[(&str, &str)] = &[\n",
    );
    for (dir, name, role, description) in &plugins {
        let module_path = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let module = fs::read(&module_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", module_path.display()));
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| e.validate(true).encode())
            .unwrap_or_else(|e| panic!("making a component of {name}: {e:#}"));
        let short = dir
            .file_name()
            .and_then(|s| s.to_str())
            .expect("plugin dir name");
        let file = out.join(format!("{short}.wasm"));
        fs::write(&file, &component).expect("writing component");
        // Best effort: a copy where a user looks for a plugin file to upload.
        if fs::create_dir_all(&user_dir).is_ok() {
            let _ = fs::write(user_dir.join(format!("{short}.wasm")), &component);
        }
        let version = crate_version(dir).unwrap_or_else(|| env::var("CARGO_PKG_VERSION").unwrap());
        versions.push_str(&format!("    ({short:?}, {version:?}),\n"));
        let ident = short.replace('-', "_").to_uppercase();
        src.push_str(&format!(
            "    ({short:?}, {role:?}, {description:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
        consts.push_str(&format!(
            "/// The `{short}` built-in plugin, a wasm component.\npub const {ident}: &[u8] = include_bytes!({:?});\n",
            file.display().to_string()
        ));
    }
    src.push_str("];\n");
    versions.push_str("];\n");
    src.push_str(&versions);
    src.push_str(&consts);
    fs::write(out.join("builtin_plugins.rs"), src).expect("writing builtin_plugins.rs");
}

/// (dir, package name, role, description) of every crate in `plugins/`, sorted by name.
fn find_plugins(dir: &Path) -> Vec<(PathBuf, String, String, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let toml = entry.path().join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&toml) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .and_then(|rest| rest.trim().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        let name = field("name").unwrap_or_else(|| panic!("{}: no package name", toml.display()));
        let role = field("role")
            .unwrap_or_else(|| panic!("{}: no [package.metadata.doppel] role", toml.display()));
        let description = field("description").unwrap_or_default();
        found.push((entry.path(), name, role, description));
    }
    found.sort();
    found
}

/// A plugin crate's own `version = "…"` in its `[package]` (None: the workspace's).
fn crate_version(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    text.lines()
        .take_while(|l| !l.trim_start().starts_with('[') || l.trim() == "[package]")
        .find_map(|l| l.trim().strip_prefix("version"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

fn check_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(sysroot) = sysroot {
        let lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
        if !lib.exists() {
            panic!(
                "the Rust target {TARGET} is not installed; the built-in plugins need it.\n\
                 Run: rustup target add {TARGET}   (bash .ci/run does this for you)"
            );
        }
    }
}
