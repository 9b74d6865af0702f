#!/usr/bin/env bash
# The quiet writer of the neighbours scenario (its phase (a), `--records 1000`) in a
# process of its own, next to a flood from another process started at a given nice
# value, on a node of its own (docs/BENCHMARKS.md, issue 24 sixth part):
#   server/benches/neighbours_apart.sh BINARY NICE     (NICE: 0, 10, ..., or none)
# Separates what the flood's client costs the quiet writer from what the node does.
set -euo pipefail
bin=$(realpath "$1")
shift
dir=$(mktemp -d /tmp/doppel-apart.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/c.toml" <<TOML
[node]
snapshot_every_entries = 100000000
[auth]
keys = [{ kid = "k1", alg = "HS256", secret = "bmVpZ2hib3Vycy1iZW5jaC1rZXktb2YtdGhpcnR5LXR3by1ieXRlcw==" }]
TOML
"$bin" serve --data "$dir/data" --listen "127.0.0.1:$port" --config "$dir/c.toml" >"$dir/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
admin=$("$bin" token --tenant '*' --role admin --config "$dir/c.toml")
url="http://127.0.0.1:$port"
curl -sf -X POST "$url/v1/tenants" -H "authorization: Bearer $admin" -H 'content-type: application/json' -d '{"name":"loud"}' >/dev/null
if [ "$1" != none ]; then
  nice -n "$1" "$bin" bench --url "$url" --token "$admin" --tenant loud --scenario all --connections 4 --durability none --records 6000000 > "$dir/flood.log" 2>&1 &
  sleep 1.5
fi
"$bin" bench --scenario neighbours --url "$url" --token "$admin" --tenant loud --records 1000 --durability none 2>&1 | grep "(a) alone"
if [ "$1" != none ]; then
  grep -m1 "records/s" "$dir/flood.log" || true
  kill %1 2>/dev/null || true
fi
