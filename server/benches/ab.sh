#!/usr/bin/env bash
# Two fresh release nodes of one build and one `doppel bench --replica` run between them,
# with each node's and the bench client's CPU seconds after it: what the replication
# figures in docs/BENCHMARKS.md compare, build against build, interleaved.
#
#   server/benches/ab.sh BINARY SCENARIO DURABILITY [more doppel bench args]
#   e.g. server/benches/ab.sh target/release/doppel async none --records 300000
#        server/benches/ab.sh target/release/doppel async none --records 1000000 --format binary
#
# SCENARIO is one of `doppel bench --replica`'s: async, sync, bootstrap, catchup,
# logical, verify, promote, mutual. The nodes listen on 127.0.0.1:7291 and :7292 and
# their data goes when the run ends.
set -euo pipefail
BIN=$(realpath "${1:?usage: ab.sh BINARY SCENARIO DURABILITY [bench args]}"); SC=$2; DUR=$3; shift 3
W=$(mktemp -d /tmp/doppel-ab.XXXXXX)
cat > "$W/node.toml" <<'TOML'
[auth]
keys = [{ kid = "k1", alg = "HS256", secret = "2NHZLtpOIpiurLauq38zVWVVxFcodPJWgM1DuSXbe5Q=" }]
TOML
"$BIN" serve --data "$W/a" --listen 127.0.0.1:7291 --config "$W/node.toml" > "$W/a.log" 2>&1 & A=$!
"$BIN" serve --data "$W/b" --listen 127.0.0.1:7292 --config "$W/node.toml" > "$W/b.log" 2>&1 & B=$!
trap 'kill $A $B 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 200); do
  curl -sf http://127.0.0.1:7291/v1/health >/dev/null && curl -sf http://127.0.0.1:7292/v1/health >/dev/null && break
  sleep 0.1
done
TOKEN=$("$BIN" token --tenant default --role admin --config "$W/node.toml")
/usr/bin/time -f '%U %S' -o "$W/client.time" \
  "$BIN" bench --url http://127.0.0.1:7291 --token "$TOKEN" --replica http://127.0.0.1:7292 \
  --scenario "$SC" --durability "$DUR" "$@" 2>&1
ca=$(awk '{print ($14+$15)/100}' /proc/$A/stat); cb=$(awk '{print ($14+$15)/100}' /proc/$B/stat)
cc=$(awk '{print $1+$2}' "$W/client.time")
echo "cpu: source ${ca}s replica ${cb}s client ${cc}s; load $(cut -d' ' -f1-3 /proc/loadavg)"
