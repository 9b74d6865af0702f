#!/usr/bin/env bash
# The quiet writer of the neighbours scenario (its phase (a), `--records 1000`) in a
# process of its own, next to a flood from another process started at a given nice
# value (docs/BENCHMARKS.md, issue 24 sixth and seventh parts):
#   server/benches/neighbours_apart.sh BINARY NICE [same|other]
# NICE: 0, 10, ..., or none (no flood). With `other`, the flood goes into a second node
# of its own, so the two share only the machine: what the quiet writer sees then is the
# floor this machine gives two unrelated processes, and the difference to `same` (the
# default, one node for both) is what sharing the node costs.
# Separates what the flood's client costs the quiet writer from what the node does.
# QUIET_PREFIX runs the quiet writer under a command (e.g. QUIET_PREFIX='chrt -f 10':
# its own waits for a core taken away).
set -euo pipefail
bin=$(realpath "$1")
flood_nice=$2
where=${3:-same}
here=$(dirname "$0")
flood() { # URL TOKEN: the flood, in the background, until the script kills it
  nice -n "$flood_nice" "$bin" bench --url "$1" --token "$2" --tenant loud --scenario all \
    --connections 4 --durability none --records 6000000
}
# shellcheck source=loud_node.sh
source "$here/loud_node.sh"
if [ "$flood_nice" != none ]; then
  if [ "$where" = other ]; then
    # A second node in a subshell: its own directory, and its own trap stops it.
    (source "$here/loud_node.sh"; flood "$url" "$admin") > "$dir/flood.log" 2>&1 &
  else
    flood "$url" "$admin" > "$dir/flood.log" 2>&1 &
  fi
  flooder=$!
  sleep 2
fi
${QUIET_PREFIX:-} "$bin" bench --scenario neighbours --url "$url" --token "$admin" --tenant loud --records 1000 --durability none 2>&1 | grep "(a) alone"
if [ "$flood_nice" != none ]; then
  grep -m1 "records/s" "$dir/flood.log" || true
  pkill -P "$flooder" 2>/dev/null || true
  kill "$flooder" 2>/dev/null || true
  wait "$flooder" 2>/dev/null || true
fi
