//! The `doppel` command run as a user runs it from a folder, for the tests of its
//! subcommands (`tests/plugin_cli.rs`, `tests/js_plugins.rs`): the admin token in
//! `DOPPEL_TOKEN`, no other `DOPPEL_*` setting from the caller's environment, and the
//! test's own extra variables.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::{admin_token, node_binary};

/// A command's exit status and both outputs, for an assertion's message.
pub fn show(what: &str, out: &Output) -> String {
    format!(
        "`{what}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `doppel ARGS` (the node binary is the same program) in `dir`, with `env` added.
pub fn doppel_in(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(node_binary());
    command
        .args(args)
        .current_dir(dir)
        .env_remove("DOPPEL_URL")
        .env_remove("DOPPEL_TENANT")
        .env_remove("DOPPEL_SDK")
        .env("DOPPEL_TOKEN", admin_token());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running doppel")
}

/// [`doppel_in`] that must succeed and print JSON: the JSON.
#[track_caller]
pub fn ok_json(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Value {
    let out = doppel_in(dir, args, env);
    let what = format!("doppel {}", args.join(" "));
    assert!(out.status.success(), "{}", show(&what, &out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", show(&what, &out)))
}

/// [`doppel_in`] that must fail: its standard error.
#[track_caller]
pub fn fails(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = doppel_in(dir, args, env);
    let what = format!("doppel {}", args.join(" "));
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        show(&what, &out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
