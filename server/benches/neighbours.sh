#!/usr/bin/env bash
# The neighbours scenario on a node of its own (docs/BENCHMARKS.md):
#   server/benches/neighbours.sh BINARY [RECORDS] [LOUD_CONCURRENT_WRITES]
# Starts BINARY on a scratch directory with a fixed key, mints the node administrator's
# and the loud tenant's tokens, runs `doppel bench --scenario neighbours` (flood at
# durability none, with the quota phase), and stops the node. LOUD_CONCURRENT_WRITES
# (default: unset) sets the loud tenant's concurrent_writes before the run; NODE_TOML
# adds lines to the node's [node] section (e.g. NODE_TOML='log_backlog_bytes = 4194304').
# FLOOD_APART=1 starts a second node for the loud tenant (`--flood-url`): the figures
# are then the machine's floor, two processes sharing only its cores and disk.
set -euo pipefail
bin=$(realpath "$1")
records=${2:-1500000}
turns=${3:-}
here=$(dirname "$0")
apart=()
if [ -n "${FLOOD_APART:-}" ]; then
  # The flood's node in a subshell that keeps it (its own trap stops it) while this
  # script runs.
  urlfile=$(mktemp /tmp/doppel-flood-url.XXXXXX)
  # shellcheck source=loud_node.sh
  (source "$here/loud_node.sh"; echo "$url" > "$urlfile"
   while kill -0 $$ 2>/dev/null; do sleep 1; done) > /dev/null 2>&1 &
  for _ in $(seq 300); do [ -s "$urlfile" ] && break; sleep 0.1; done
  apart=(--flood-url "$(cat "$urlfile")")
  rm -f "$urlfile"
fi
# shellcheck source=loud_node.sh
source "$here/loud_node.sh"
loud=$("$bin" token --tenant loud --role writer --config "$dir/c.toml")
if [ -n "$turns" ]; then
  curl -sf -X PUT "$url/v1/tenants/loud/quotas" -H "authorization: Bearer $admin" \
    -H 'content-type: application/json' -d "{\"concurrent_writes\": $turns}" >/dev/null
fi
quota=()
# Builds before the quota phase have no --loud-token.
if "$bin" bench --help | grep -q -- --loud-token; then quota=(--loud-token "$loud"); fi
"$bin" bench --scenario neighbours --url "$url" --token "$admin" --tenant loud \
  "${quota[@]}" "${apart[@]}" --records "$records" --durability none
