# Sourced by neighbours.sh and neighbours_apart.sh: starts "$bin" on a scratch directory
# with a fixed key (NODE_TOML adds lines to its [node] section), waits for it, and
# creates the tenant `loud`. Sets dir, url, admin (the node administrator's token) and
# node (its pid); the node stops and the directory goes when the script exits.
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
