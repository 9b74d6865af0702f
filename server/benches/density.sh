#!/usr/bin/env bash
# server/benches/density.sh BINARY N: a node's RSS, threads and data directory before
# and after N small databases (one file, one record each), on a scratch directory.
set -u
bin=$1; n=${2:-50}
dir=$(mktemp -d /tmp/doppel-density.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --data "$dir"/d --listen 127.0.0.1:$port > "$dir"/log 2>&1 &
pid=$!
for _ in $(seq 50); do grep -q "admin token" "$dir"/log && break; sleep 0.1; done
T=$(grep "admin token" "$dir"/log | sed 's/doppel admin token: //')
echo "start: threads $(ls /proc/$pid/task | wc -l) $(grep VmRSS /proc/$pid/status)"
for i in $(seq 1 $n); do
  curl -sf -XPOST http://127.0.0.1:$port/v1/tenants/default/databases -H "authorization: Bearer $T" -H 'content-type: application/json' -d "{\"name\":\"db$i\",\"files\":[{\"name\":\"f\"}]}" >/dev/null || echo fail
  curl -sf -XPUT http://127.0.0.1:$port/v1/tenants/default/databases/db$i/files/f/records/k -H "authorization: Bearer $T" -H 'content-type: application/json' -d '{"data":1}' > /dev/null || echo failput
done
echo "after $n dbs: threads $(ls /proc/$pid/task | wc -l) $(grep VmRSS /proc/$pid/status) data $(du -sh "$dir"/d | cut -f1)"
kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"
