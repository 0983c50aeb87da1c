#!/usr/bin/env bash
# Backup and restore at size (README "Backup and restore"): fill KEYS keys
# (100-byte values, 1000 per command) into 3 durable servers, take
# `admin backup` while `benchmark load` writes (and once idle), then restore
# into a second cluster of 3 durable servers and check the two backups match.
# Env: KEYS (default 1000000), BASE_PORT (default 25100). Prints the times.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${KEYS:-1000000}
base=${BASE_PORT:-25100}
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d -t distkv-backup.XXXXXX)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

# start_cluster NAME MANAGER_PORT: a manager and 3 durable servers.
start_cluster() {
  local name=$1 port=$2
  local servers="127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"
  "$bin/manager" --listen-addr "127.0.0.1:$port" --servers "$servers" --tables "customers=$keys" \
    2>"$work/$name-manager.log" &
  pids+=($!)
  for i in 0 1 2; do
    "$bin/server" --node-id "$i" --listen-addr "127.0.0.1:$((port + 1 + i))" \
      --manager-addr "127.0.0.1:$port" --persistence --db-path "$work/$name-db$i" \
      --log-path "$work/$name-log$i" 2>"$work/$name-server$i.log" &
    pids+=($!)
  done
  for _ in $(seq 1 120); do
    printf 'GET customers0\n' | "$bin/benchmark" --connect-addr "127.0.0.1:$port" --timeout-ms 1000 2>/dev/null |
      grep -q '^GET' && return 0
    sleep 0.5
  done
  echo "bench-backup.sh: cluster $name did not come up" >&2
  exit 1
}
seconds() { echo "$2 - $1" | bc; }

start_cluster src "$base"
value=$(printf 'v%.0s' $(seq 1 100))
python3 - "$keys" "$value" >"$work/fill.txt" <<'PY'
import sys
keys, value = int(sys.argv[1]), sys.argv[2]
out = sys.stdout
for start in range(0, keys, 1000):
    out.write("cmd\n")
    for k in range(start, min(start + 1000, keys)):
        out.write(f"op PUT customers{k} {value}\n")
    out.write("done\n")
out.write("exit\n")
PY
"$bin/client" --connect-addr "127.0.0.1:$base" --timeout-ms 30000 <"$work/fill.txt" >/dev/null
admin() { "$bin/admin" --connect-addr "127.0.0.1:$1" --timeout-ms 30000 "${@:2}"; }

echo "## $keys keys of 100 bytes, 3 durable servers, 3 replicas; $(nproc) cores"
t0=$(date +%s.%N)
admin "$base" backup --out "$work/idle" >/dev/null
t1=$(date +%s.%N)
echo "backup, idle cluster: $(seconds "$t0" "$t1") s, $(du -sb "$work/idle" | cut -f1) bytes"

# Under load: 16 clients overwriting random keys.
"$bin/benchmark" load --connect-addr "127.0.0.1:$base" --clients 16 --duration-s 30 \
  --workload w --keys "$keys" >"$work/load.txt" 2>&1 &
load=$!
sleep 3
t0=$(date +%s.%N)
admin "$base" backup --out "$work/busy" >/dev/null
t1=$(date +%s.%N)
echo "backup, under 16 writing clients: $(seconds "$t0" "$t1") s"
wait "$load" || true
tail -n 2 "$work/load.txt"

start_cluster dst $((base + 50))
t0=$(date +%s.%N)
admin $((base + 50)) restore --from "$work/idle" >/dev/null
t1=$(date +%s.%N)
echo "restore into 3 fresh durable servers: $(seconds "$t0" "$t1") s"
admin $((base + 50)) backup --out "$work/again" >/dev/null
if cmp -s "$work/idle/customers.rows" "$work/again/customers.rows"; then
  echo "restored cluster backed up again: identical rows file"
else
  echo "bench-backup.sh: the restored cluster's backup differs" >&2
  exit 1
fi
