#!/usr/bin/env bash
# PostgreSQL's synchronous replication as a peer for Doppel's sync commit at durability
# `group` (issue 19, goal 2): a primary and one streaming standby on loopback, with
# `synchronous_commit = remote_apply`, so a commit returns once the standby applied it,
# as a Doppel sync commit returns once its replica applied it. Prints the p50 and p99 of
# single-row INSERTs from one connection (pgbench, per-transaction log).
#
#   server/benches/pg_remote_apply.sh [SECONDS]
#
# Runs as root: PostgreSQL runs as the `postgres` user, in a temporary directory that is
# removed at exit. Needs Debian's postgresql (15).
set -euo pipefail
SECONDS_RUN=${1:-10}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
P=55433 S=55434
W=$(mktemp -d /tmp/pg_remote_apply.XXXXXX)
chown postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$W/standby" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$W/primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$W/primary" -U postgres --auth=trust >/dev/null
cat >> "$W/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $P
unix_socket_directories = '$W'
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = 'standby1'
synchronous_commit = remote_apply
CONF
echo "host replication postgres 127.0.0.1/32 trust" >> "$W/primary/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >/dev/null
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p $P -U postgres -D "$W/standby" -R -X stream >/dev/null
sed -i "s/^port = $P/port = $S/" "$W/standby/postgresql.conf"
sed -i "s|^primary_conninfo = '|primary_conninfo = 'application_name=standby1 |" "$W/standby/postgresql.auto.conf"
as_pg "$PGBIN/pg_ctl" -D "$W/standby" -l "$W/standby.log" -w start >/dev/null
for _ in $(seq 100); do
  state=$(as_pg "$PGBIN/psql" -h 127.0.0.1 -p $P -U postgres -Atc \
    "select sync_state from pg_stat_replication where application_name = 'standby1'" 2>/dev/null || true)
  [[ $state == sync ]] && break
  sleep 0.1
done
[[ $state == sync ]] || { echo "the standby did not become synchronous" >&2; exit 1; }
as_pg "$PGBIN/psql" -h 127.0.0.1 -p $P -U postgres -qc \
  "create table t (k bigserial primary key, v text not null)"
echo "insert into t (v) values (repeat('x', 100));" > "$W/insert.sql"
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $("$PGBIN/postgres" --version)"
cd "$W"
as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p $P -U postgres -n -c 1 -T "$SECONDS_RUN" -f insert.sql -l postgres >/dev/null 2>&1
# pgbench's log: client, transaction, latency in µs, ...
cat "$W"/pgbench_log.* | awk '{print $3}' | sort -n | awk '
  { v[NR] = $1 }
  END { printf "postgres remote_apply: %d single-row INSERTs, one connection: p50 %.1f µs, p99 %.1f µs\n",
        NR, v[int(NR * 0.5)], v[int(NR * 0.99)] }'
rows=$(as_pg "$PGBIN/psql" -h 127.0.0.1 -p $S -U postgres -Atc "select count(*) from t")
echo "rows on the standby: $rows"
