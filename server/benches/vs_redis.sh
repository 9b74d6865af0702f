#!/usr/bin/env bash
# Doppel and Redis side by side, each with one replica on loopback, in one run (issue 19).
#
#   cargo build --release --bin doppel && cargo bench --bench sync_clients --no-run
#   server/benches/vs_redis.sh target/release/doppel [ROUNDS]
#   VS_REDIS_BASE=/tmp/doppel-base VS_REDIS_PARTS=sync server/benches/vs_redis.sh target/release/doppel 3
#
# Starts a Redis primary and replica (no persistence) and two release Doppel nodes, then
# measures, interleaving Doppel and Redis in every round so that the machine's swings
# fall on both:
#   1. replicated writes/s: `redis-benchmark -t set -d 100 -c 50 -P 128` (its own figure,
#      and the time until the replica's offset caught up) against `doppel bench
#      --scenario async` (records/s applied on the replica, durability none), once with
#      JSON batches and once with binary ones (`--format binary`), and once more (binary)
#      through a logical link's filter → transform chain (`--scenario logical-live`),
#      each with the CPU seconds the client and each server process spent on it;
#   2. sync commit latency, one connection, and commits/s with 64 connections: the
#      `sync_clients` bench speaks HTTP to Doppel (PUT on a database with a sync link)
#      and RESP to Redis (SET + WAIT 1 0 in one send), the same client for both;
#      once with both Doppel databases at durability `none`, once at `group`.
# Prints every figure with the CPU seconds of each process beside it, and a ratio line
# per comparison. Everything listens on 127.0.0.1 and is stopped at exit.
# VS_REDIS_BASE=BINARY also starts a pair of nodes of another build (the base of a
# change) and runs the sync part round by round as: this build, the base, Redis (each
# line names its side: doppel, base, redis; the two builds take turns going first), so
# the two builds are compared in one run. VS_REDIS_SYNC="group" (or "none") runs the
# sync part at that durability only. VS_REDIS_SYSCALLS=1 also counts each process's
# system calls per commit (perf stat; context switches per commit are always given).
# Needs redis-server and redis-tools (Debian), python3 for nothing.
set -euo pipefail
BIN=$(realpath "${1:?usage: vs_redis.sh DOPPEL_BINARY [ROUNDS]}")
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# VS_REDIS_PARTS=throughput runs the first part alone (it needs no sync_clients build).
PARTS=${VS_REDIS_PARTS:-throughput sync}
CLIENT=$(ls -t "$ROOT"/target/release/deps/sync_clients-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
if [[ $PARTS == *sync* && ! -x $CLIENT ]]; then
  echo "build the client first: cargo bench --bench sync_clients --no-run" >&2; exit 2
fi
command -v redis-server >/dev/null || { echo "apt-get install -y redis-server redis-tools" >&2; exit 2; }
BASE=${VS_REDIS_BASE:+$(realpath "$VS_REDIS_BASE")}
RP=6392 RR=6393 DA=7191 DB=7192 BA=7193 BB=7194
for p in $RP $RR $DA $DB $BA $BB; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p in use" >&2; exit 2; fi
done
W=$(mktemp -d /tmp/vs_redis.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

# ---- Redis: primary + replica, no persistence
redis_conf() {
  printf 'bind 127.0.0.1\nport %s\ndir %s\nsave ""\nappendonly no\nclient-output-buffer-limit replica 0 0 0\nrepl-backlog-size 512mb\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n' "$1" "$W"
}
redis_conf $RP > "$W/rp.conf"
{ redis_conf $RR; echo "replicaof 127.0.0.1 $RP"; } > "$W/rr.conf"
redis-server "$W/rp.conf" > "$W/rp.log" 2>&1 & PIDS+=($!); REDIS_P=$!
redis-server "$W/rr.conf" > "$W/rr.log" 2>&1 & PIDS+=($!); REDIS_R=$!
wait_for() {  # $1: what, then a command that succeeds when ready (20 s at most)
  local what=$1; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$what did not come up" >&2; exit 1
}
wait_for "redis replica" bash -c "redis-cli -p $RR info replication | grep -q master_link_status:up"

# ---- Doppel: two release nodes with a shared key
cat > "$W/node.toml" <<'TOML'
[auth]
keys = [{ kid = "k1", alg = "HS256", secret = "2NHZLtpOIpiurLauq38zVWVVxFcodPJWgM1DuSXbe5Q=" }]
TOML
"$BIN" serve --data "$W/a" --listen 127.0.0.1:$DA --config "$W/node.toml" > "$W/a.log" 2>&1 & PIDS+=($!); DOPPEL_A=$!
"$BIN" serve --data "$W/b" --listen 127.0.0.1:$DB --config "$W/node.toml" > "$W/b.log" 2>&1 & PIDS+=($!); DOPPEL_B=$!
wait_for "doppel A" curl -sf http://127.0.0.1:$DA/v1/health
wait_for "doppel B" curl -sf http://127.0.0.1:$DB/v1/health
PIDLIST="doppel_a=$DOPPEL_A,doppel_b=$DOPPEL_B,redis_p=$REDIS_P,redis_r=$REDIS_R"
if [[ -n $BASE ]]; then
  "$BASE" serve --data "$W/ba" --listen 127.0.0.1:$BA --config "$W/node.toml" > "$W/ba.log" 2>&1 & PIDS+=($!); BASE_A=$!
  "$BASE" serve --data "$W/bb" --listen 127.0.0.1:$BB --config "$W/node.toml" > "$W/bb.log" 2>&1 & PIDS+=($!); BASE_B=$!
  wait_for "base A" curl -sf http://127.0.0.1:$BA/v1/health
  wait_for "base B" curl -sf http://127.0.0.1:$BB/v1/health
  PIDLIST="doppel_a=$DOPPEL_A,doppel_b=$DOPPEL_B,base_a=$BASE_A,base_b=$BASE_B,redis_p=$REDIS_P,redis_r=$REDIS_R"
fi
TOKEN=$("$BIN" token --tenant default --role admin --config "$W/node.toml")
api() {  # METHOD PATH [BODY]   (on node A; API=port for another)
  curl -sf -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    "http://127.0.0.1:${API:-$DA}$2" ${3:+-d "$3"}
}
cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $("$BIN" --version)${BASE:+ against base $("$BASE" --version)}; $(redis-server --version | cut -d' ' -f3)"

# ---- 1. replicated writes/s
redis_offsets_equal() {
  local p r
  p=$(redis-cli -p $RP info replication | tr -d '\r' | sed -n 's/^master_repl_offset://p')
  r=$(redis-cli -p $RR info replication | tr -d '\r' | sed -n 's/^slave_repl_offset://p')
  [[ -n $p && $p == "$r" ]]
}
# CPU seconds between two readings of `cpu` for each pid of $1 (space-separated).
cpu_all() { for p in $1; do cpu "$p"; done | paste -sd' '; }
cpu_diff() { paste -d' ' <(tr ' ' '\n' <<< "$1") <(tr ' ' '\n' <<< "$2") | awk '{printf "%.2f ", $2-$1}'; }
for round in $(seq 1 "$ROUNDS"); do
  [[ $PARTS == *throughput* ]] || break
  for format in json binary; do
    before=$(cpu_all "$DOPPEL_A $DOPPEL_B")
    /usr/bin/time -f '%U %S' -o "$W/client.time" \
      "$BIN" bench --url http://127.0.0.1:$DA --token "$TOKEN" --replica http://127.0.0.1:$DB \
      --scenario async --records 1000000 --durability none --format $format > "$W/bench.out" 2>&1
    read -r src rep <<< "$(cpu_diff "$before" "$(cpu_all "$DOPPEL_A $DOPPEL_B")")"
    echo "throughput round $round doppel $format: $(cat "$W/bench.out"); cpu: source ${src}s replica ${rep}s client $(awk '{print $1+$2}' "$W/client.time")s"
  done
  # The same records through a logical link's filter → transform chain, streaming
  # while they are written (binary batches).
  before=$(cpu_all "$DOPPEL_A $DOPPEL_B")
  /usr/bin/time -f '%U %S' -o "$W/client.time" \
    "$BIN" bench --url http://127.0.0.1:$DA --token "$TOKEN" --replica http://127.0.0.1:$DB \
    --scenario logical-live --records 1000000 --durability none --format binary > "$W/bench.out" 2>&1
  read -r src rep <<< "$(cpu_diff "$before" "$(cpu_all "$DOPPEL_A $DOPPEL_B")")"
  echo "throughput round $round doppel logical: $(cat "$W/bench.out"); cpu: source ${src}s replica ${rep}s client $(awk '{print $1+$2}' "$W/client.time")s"
  before=$(cpu_all "$REDIS_P $REDIS_R")
  t0=$(date +%s.%N)
  rps=$(/usr/bin/time -f '%U %S' -o "$W/client.time" \
    redis-benchmark -h 127.0.0.1 -p $RP -t set -d 100 -r 1000000 -n 1000000 -c 50 -P 128 -q 2>/dev/null \
    | tr '\r' '\n' | sed -n 's/^SET: \([0-9.]*\) requests per second.*/\1/p' | tail -1)
  wait_for "redis replica catch-up" redis_offsets_equal
  t1=$(date +%s.%N)
  read -r prim repl <<< "$(cpu_diff "$before" "$(cpu_all "$REDIS_P $REDIS_R")")"
  echo "throughput round $round redis: redis-benchmark -P 128: $rps SET/s; 1000000 SETs applied on the replica in $(echo "$t1 - $t0" | bc) s = $(echo "1000000 / ($t1 - $t0)" | bc) records/s; cpu: primary ${prim}s replica ${repl}s client $(awk '{print $1+$2}' "$W/client.time")s"
done

# ---- 2. sync commits, durability none, then group
# A database with a sync link from node $1 (API port) to node $2: waits until it streams.
sync_db() {
  local src=$1 dst=$2 db=$3 durability=$4 id
  API=$src api POST /v1/tenants/default/databases \
    "{\"name\":\"$db\",\"files\":[{\"name\":\"bench\"}],\"durability\":\"$durability\"}" > /dev/null
  API=$src api POST /v1/tenants/default/links \
    "{\"database\":\"$db\",\"mode\":\"sync\",\"target\":{\"url\":\"http://127.0.0.1:$dst\",\"database\":\"$db\"}}" > "$W/link.json"
  id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$W/link.json")
  wait_for "sync link" bash -c "curl -sf -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:$src/v1/tenants/default/links/$id | grep -q '\"state\":\"streaming\"'"
}
for durability in ${VS_REDIS_SYNC:-none group}; do
  [[ $PARTS == *sync* ]] || break
  db="sync_$durability"
  sync_db $DA $DB "$db" $durability
  [[ -n $BASE ]] && sync_db $BA $BB "$db" $durability
  echo "# sync commits, Doppel databases at durability $durability (Redis: no persistence); load $(cut -d' ' -f1-3 /proc/loadavg)"
  mode=all; [[ $durability == group ]] && mode=latency
  client=("$CLIENT" --token "$TOKEN" --redis 127.0.0.1:$RP --path "/v1/tenants/default/databases/$db/files/bench/records"
    --pids "$PIDLIST" --clients 64 --mode $mode ${VS_REDIS_SYSCALLS:+--syscalls})
  if [[ -z $BASE ]]; then
    "${client[@]}" --doppel 127.0.0.1:$DA --rounds "$ROUNDS" | sed "s/^/$durability /"
    continue
  fi
  # This build and the base (in turn first: even rounds this build, odd ones the base),
  # then Redis, round after round; each call one round of each mode.
  for round in $(seq 0 $((ROUNDS - 1))); do
    this=("${client[@]}" --rounds 1 --first-round "$round" --sides doppel --doppel 127.0.0.1:$DA)
    base=("${client[@]}" --rounds 1 --first-round "$round" --sides doppel --doppel 127.0.0.1:$BA --doppel-name base)
    if (( round % 2 == 0 )); then "${this[@]}"; "${base[@]}"; else "${base[@]}"; "${this[@]}"; fi | sed "s/^/$durability /"
    "${client[@]}" --rounds 1 --first-round "$round" --sides redis | sed "s/^/$durability /"
    echo "$durability round $round done; load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
