#!/usr/bin/env bash
# A RUSTC_WRAPPER for the plugin targets (fuzz/run.sh sets it for them): libFuzzer's
# coverage instrumentation goes only into the crates a plugin upload's checks run
# through (wasmparser, wasmtime and its environment, doppel-server and the target
# itself); everything else, wasmtime's code generators and wasm-smith first of all, is
# built without it. Those are fuzzed by their own projects. Instrumented, `plugin_smith`
# ran 270 executions/s; with only this path instrumented, 1,880 (docs/RELIABILITY.md §1),
# which brings 10M executions within reach.
# cargo does not rebuild when this file changes: remove fuzz/target-plugin/ after an edit.
set -euo pipefail
rustc="$1"
shift
crate=""
prev=""
for a in "$@"; do
  [ "$prev" = "--crate-name" ] && crate="$a"
  prev="$a"
done
case "$crate" in
  # Doppel's code keeps the debug assertions and overflow checks `-O` turns off.
  doppel_server | plugin | plugin_smith)
    exec "$rustc" "$@" -Cdebug-assertions=on -Coverflow-checks=on ;;
  wasmparser | wasmtime | wasmtime_environ)
    exec "$rustc" "$@" ;;
esac
args=()
for a in "$@"; do
  case "$a" in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-* | -Cllvm-args=-simplifycfg-branch-fold-threshold=0) ;;
    *) args+=("$a") ;;
  esac
done
exec "$rustc" "${args[@]}"
