#!/usr/bin/env bash
# How distkv's cost grows (issue "Performance", README "Scale"):
#   data:       fill KEYS keys (100-byte values, 1000 per command) into 3
#               durable servers; RSS per key, the fill rate, the time of a
#               checkpoint (snapshot of every replica), and the restart time
#               of a server (kill -9, start: until its storage is recovered and
#               until it answers again);
#   partitions: idle CPU and Raft traffic of 3 servers hosting P replicas
#               each (P/3 tables of 3 partitions; 3 replicas each), for P in
#               PARTITIONS.
# Env: KEYS (default 1000000), PARTITIONS (default "10 100 1000"), BASE_PORT
# (default 25000). Prints one table per part.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${KEYS:-1000000}
partitions_list=${PARTITIONS:-"10 100 1000"}
base=${BASE_PORT:-25000}
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d -t distkv-scale.XXXXXX)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start_cluster TABLES: a manager on $base and 3 durable servers, metrics on.
start_cluster() {
  local tables=$1 servers="127.0.0.1:$((base + 10)),127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12))"
  "$bin/manager" --listen-addr "127.0.0.1:$base" --servers "$servers" --tables "$tables" \
    2>"$work/manager.log" &
  pids+=($!)
  for i in 0 1 2; do
    start_server "$i"
  done
  for _ in $(seq 1 120); do
    printf 'GET customers0\n' | "$bin/benchmark" --connect-addr "127.0.0.1:$base" --timeout-ms 1000 2>/dev/null |
      grep -q '^GET' && return 0
    sleep 0.5
  done
  echo "bench-scale.sh: the cluster did not come up" >&2
  exit 1
}
server_pid=()
start_server() {
  local i=$1
  "$bin/server" --node-id "$i" --listen-addr "127.0.0.1:$((base + 10 + i))" \
    --manager-addr "127.0.0.1:$base" --persistence --db-path "$work/db$i" --log-path "$work/log$i" \
    --metrics-addr "127.0.0.1:$((base + 20 + i))" 2>>"$work/server$i.log" &
  pids+=($!)
  server_pid[i]=$!
}

echo "## data: $keys keys, 100-byte values, 3 durable servers, 3 replicas"
rm -rf "$work"/db* "$work"/log*
start_cluster "customers=$keys"
before=$(( $(rss_kb "${server_pid[0]}") + $(rss_kb "${server_pid[1]}") + $(rss_kb "${server_pid[2]}") ))
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
t0=$(date +%s.%N)
committed=$("$bin/client" --connect-addr "127.0.0.1:$base" --timeout-ms 30000 <"$work/fill.txt" 2>&1 | grep -c '^COMMITTED' || true)
t1=$(date +%s.%N)
expected=$(( (keys + 999) / 1000 ))
[ "$committed" = "$expected" ] || { echo "bench-scale.sh: $committed of $expected fill commands committed" >&2; exit 1; }
sleep 2
after=$(( $(rss_kb "${server_pid[0]}") + $(rss_kb "${server_pid[1]}") + $(rss_kb "${server_pid[2]}") ))
fill_s=$(echo "$t1 - $t0" | bc)
echo "| keys | fill (s) | fill keys/s | RSS of 3 servers before / after (MiB) | bytes per key per replica |"
echo "|---|---|---|---|---|"
printf "| %s | %.1f | %.0f | %d / %d | %.0f |\n" "$keys" "$fill_s" "$(echo "$keys / $fill_s" | bc -l)" \
  $((before / 1024)) $((after / 1024)) "$(echo "($after - $before) * 1024 / $keys / 3" | bc -l)"
echo
echo "checkpoints (from server 0's log):"
grep -o 'checkpoint done.*' "$work/server0.log" | tail -n 3 || echo "(none: under --checkpoint-log-mb of log)"
du -sh "$work"/db0 "$work"/log0 | sed 's/^/  /'

# Restart: kill -9 server 1 and start it again.
kill -9 "${server_pid[1]}"
sleep 1
: >"$work/server1.log"
t0=$(date +%s.%N)
start_server 1
for _ in $(seq 1 600); do
  grep -q 'storage recovered' "$work/server1.log" && break
  sleep 0.1
done
t1=$(date +%s.%N)
recovered=$(grep -o 'storage recovered.*' "$work/server1.log" | head -1)
echo "restart of server 1 (kill -9, then start): storage recovered after $(printf '%.1f' "$(echo "$t1 - $t0" | bc)") s: $recovered"
stop_all

echo
echo "## partitions: idle servers hosting P replicas each (3 servers, 3 replicas per partition)"
echo "| replicas per server | idle CPU per server (% of a core) | Raft bytes/s sent per server | RSS per server (MiB) |"
echo "|---|---|---|---|"
for p in $partitions_list; do
  rm -rf "$work"/db* "$work"/log* "$work"/*.log
  tables=$(python3 -c "import sys; n=max(1, $p // 3); print(','.join(['customers=3'] + [f't{chr(97 + i // 26 // 26 % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i % 26)}=3' for i in range(n - 1)]))")
  start_cluster "$tables"
  sleep 5
  t0=$(cpu_ticks "${server_pid[0]}")
  b0=$(curl -s "127.0.0.1:$((base + 20))/metrics" | awk '/^distkv_raft_sent_bytes_total/ {print $2}')
  sleep 10
  t1=$(cpu_ticks "${server_pid[0]}")
  b1=$(curl -s "127.0.0.1:$((base + 20))/metrics" | awk '/^distkv_raft_sent_bytes_total/ {print $2}')
  hz=$(getconf CLK_TCK)
  hosted=$(curl -s "127.0.0.1:$((base + 20))/metrics" | awk '/^distkv_replicas/ {print $2}')
  printf "| %d | %.1f | %.0f | %d |\n" "${hosted:-$p}" "$(echo "($t1 - $t0) * 100 / $hz / 10" | bc -l)" \
    "$(echo "(${b1:-0} - ${b0:-0}) / 10" | bc -l)" $(( $(rss_kb "${server_pid[0]}") / 1024 ))
  stop_all
done
