//! The fuzz corpus on stable: every committed input of `fuzz/corpus/<target>/` and every
//! past crash input of `fuzz/regressions/<target>/` goes through the same target
//! function the libFuzzer binary calls (`doppel_server::fuzzing`), so a decoder that
//! panics again on an input that once crashed it fails CI without nightly.

use std::path::{Path, PathBuf};

use doppel_server::fuzzing::{seeds, Target, TARGETS};

#[path = "../../fuzz/smith.rs"]
mod smith;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every target the fuzz crate has: the decoders, and `plugin_smith` (a `wasm-smith`
/// component through the plugin upload).
fn targets() -> Vec<(&'static str, Target)> {
    let mut all = TARGETS.to_vec();
    all.push(("plugin_smith", |data| {
        if let Ok(upload) = smith::upload(data) {
            doppel_server::fuzzing::plugin(&upload);
        }
    }));
    all
}

/// The files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on the input at `path`, naming the input if it panics.
fn run(name: &str, target: Target, path: &Path) {
    let bytes = std::fs::read(path).expect("a corpus input");
    if std::panic::catch_unwind(|| target(&bytes)).is_err() {
        panic!("fuzz target '{name}' panicked on {}", path.display());
    }
}

#[test]
fn every_target_replays_its_committed_corpus() {
    let mut total = 0;
    for (name, target) in targets() {
        let inputs = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !inputs.is_empty(),
            "fuzz/corpus/{name} is empty: run the target and `cargo fuzz cmin {name}` (docs/RELIABILITY.md)"
        );
        for path in &inputs {
            run(name, target, path);
        }
        total += inputs.len();
    }
    println!("replayed {total} corpus inputs");
}

#[test]
fn every_past_crash_input_is_harmless_now() {
    let root = fuzz_dir().join("regressions");
    let targets = targets();
    let mut total = 0;
    for entry in std::fs::read_dir(&root).expect("fuzz/regressions") {
        let dir = entry.expect("a regressions entry").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // A folder that names no target would otherwise never run.
        let (_, target) = targets
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap_or_else(|| panic!("fuzz/regressions/{name} is not a fuzz target"));
        for path in files(&dir) {
            run(name, *target, &path);
            total += 1;
        }
    }
    println!("replayed {total} past crash inputs");
}

#[test]
fn the_seeds_from_the_node_encoders_are_accepted_by_every_target() {
    let all = seeds();
    for (name, target) in TARGETS {
        let inputs = all
            .get(name)
            .unwrap_or_else(|| panic!("no seeds for '{name}'"));
        assert!(!inputs.is_empty());
        for input in inputs {
            target(input);
        }
    }
}
