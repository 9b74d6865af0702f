#!/usr/bin/env bash
# Runs fuzz targets one after another (the machine has few cores), each until RUNS
# executions or SECS seconds, whichever comes first, keeping what it learns in
# corpus/<target> and printing libFuzzer's final figures. Needs nightly and cargo-fuzz.
#   fuzz/run.sh                      every target, 10,000,000 executions, 30 min cap each
#   RUNS=100000 fuzz/run.sh wire     one target, a short run
# A crash leaves its input in artifacts/<target>/: fix the decoder, then move the input
# to regressions/<target>/ (the stable test replays it from then on).
set -uo pipefail
cd "$(dirname "$0")"
RUNS="${RUNS:-10000000}"
SECS="${SECS:-1800}"
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(wire log_chunk spool snapshot rest jwt plugin plugin_smith segment)
mkdir -p logs
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t"
  build=()
  case "$t" in
    # The plugin targets: instrumented only along the upload's path, `-O` with debug
    # assertions in Doppel's crates only (see instrument-plugin-path.sh), in a target
    # directory of their own so that the decoders' build is not redone; inputs up to
    # 4 KiB (the small seeds of every role are about 1 KB; a built-in plugin, 116 KB,
    # is cut to its first 4 KiB).
    plugin | plugin_smith)
      export RUSTC_WRAPPER="$PWD/instrument-plugin-path.sh"
      build=(-O --target-dir target-plugin)
      limits=(-max_len=4096)
      ;;
    *)
      unset RUSTC_WRAPPER
      limits=()
      ;;
  esac
  cargo +nightly fuzz run -s none "${build[@]}" "$t" "corpus/$t" -- \
    -runs="$RUNS" -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -timeout=10 -print_final_stats=1 "${limits[@]}" >"logs/$t.log" 2>&1
  echo "exit $?"
  grep -E "DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|SUMMARY|panicked|ERROR" "logs/$t.log" | tail -8
done
