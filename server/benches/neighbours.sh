#!/usr/bin/env bash
# The neighbours scenario on a node of its own (docs/BENCHMARKS.md):
#   server/benches/neighbours.sh BINARY [RECORDS] [LOUD_CONCURRENT_WRITES]
# Starts BINARY on a scratch directory with a fixed key, mints the node administrator's
# and the loud tenant's tokens, runs `doppel bench --scenario neighbours` (flood at
# durability none, with the quota phase), and stops the node. LOUD_CONCURRENT_WRITES
# (default: unset) sets the loud tenant's concurrent_writes before the run; NODE_TOML
# adds lines to the node's [node] section (e.g. NODE_TOML='log_backlog_bytes = 4194304').
set -euo pipefail
bin=$(realpath "$1")
records=${2:-1500000}
turns=${3:-}
dir=$(mktemp -d /tmp/doppel-neighbours.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/c.toml" <<TOML
[node]
snapshot_every_entries = 100000000
${NODE_TOML:-}
[auth]
keys = [{ kid = "k1", alg = "HS256", secret = "bmVpZ2hib3Vycy1iZW5jaC1rZXktb2YtdGhpcnR5LXR3by1ieXRlcw==" }]
TOML
"$bin" serve --data "$dir/data" --listen "127.0.0.1:$port" --config "$dir/c.toml" >"$dir/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
admin=$("$bin" token --tenant '*' --role admin --config "$dir/c.toml")
url="http://127.0.0.1:$port"
curl -sf -X POST "$url/v1/tenants" -H "authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"name":"loud"}' >/dev/null
loud=$("$bin" token --tenant loud --role writer --config "$dir/c.toml")
if [ -n "$turns" ]; then
  curl -sf -X PUT "$url/v1/tenants/loud/quotas" -H "authorization: Bearer $admin" \
    -H 'content-type: application/json' -d "{\"concurrent_writes\": $turns}" >/dev/null
fi
quota=()
# Builds before the quota phase have no --loud-token.
if "$bin" bench --help | grep -q -- --loud-token; then quota=(--loud-token "$loud"); fi
"$bin" bench --scenario neighbours --url "$url" --token "$admin" --tenant loud \
  "${quota[@]}" --records "$records" --durability none
