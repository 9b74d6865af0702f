#!/usr/bin/env bash
# The quiet writer of the neighbours scenario (its phase (a), `--records 1000`) in a
# process of its own, next to a flood from another process started at a given nice
# value, on a node of its own (docs/BENCHMARKS.md, issue 24 sixth part):
#   server/benches/neighbours_apart.sh BINARY NICE     (NICE: 0, 10, ..., or none)
# Separates what the flood's client costs the quiet writer from what the node does.
set -euo pipefail
bin=$(realpath "$1")
shift
# shellcheck source=loud_node.sh
source "$(dirname "$0")/loud_node.sh"
if [ "$1" != none ]; then
  nice -n "$1" "$bin" bench --url "$url" --token "$admin" --tenant loud --scenario all --connections 4 --durability none --records 6000000 > "$dir/flood.log" 2>&1 &
  sleep 1.5
fi
"$bin" bench --scenario neighbours --url "$url" --token "$admin" --tenant loud --records 1000 --durability none 2>&1 | grep "(a) alone"
if [ "$1" != none ]; then
  grep -m1 "records/s" "$dir/flood.log" || true
  kill %1 2>/dev/null || true
fi
