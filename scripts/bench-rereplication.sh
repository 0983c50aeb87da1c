#!/usr/bin/env bash
# Measures what README "Losing a server for good" reports: how long re-replication takes after a
# server is lost for good (MB/s copied), and the foreground latency while it runs against the
# same load without a fault.
#
# Starts, on 127.0.0.1 (release build): a manager with --replicas 3 --dead-after-ms DEAD_AFTER_MS
# and 4 durable servers; fills table t with KEYS keys of VALUE_SIZE bytes; runs `benchmark load
# --workload a` for DURATION_S twice: once undisturbed (the baseline), once with server 0 killed
# -9 for good KILL_AT_S into it. It then polls `admin partitions --json` until every partition
# has 3 voters, none on server 0, and no learner. Prints a markdown table; logs in $BENCH_DIR.
#
# environment (defaults): KEYS=90000 VALUE_SIZE=1000 CLIENTS=32 DURATION_S=25 KILL_AT_S=5
#   DEAD_AFTER_MS=3000 BASE_PORT=27600 BENCH_DIR=(mktemp -d)
set -euo pipefail

KEYS=${KEYS:-90000}
VALUE_SIZE=${VALUE_SIZE:-1000}
CLIENTS=${CLIENTS:-32}
DURATION_S=${DURATION_S:-25}
KILL_AT_S=${KILL_AT_S:-5}
DEAD_AFTER_MS=${DEAD_AFTER_MS:-3000}
BASE_PORT=${BASE_PORT:-27600}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d -t distkv-rerepl.XXXXXX)}
mkdir -p "$BENCH_DIR"
cd "$(dirname "$0")/.."
BIN=target/release
MANAGER="127.0.0.1:$BASE_PORT"
SERVERS=4
declare -a PIDS=()

[ -x "$BIN/server" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v jq >/dev/null || { echo "this script needs jq" >&2; exit 1; }
for ((p = BASE_PORT; p <= BASE_PORT + SERVERS; p++)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is taken; pick free ones with BASE_PORT=..." >&2
    exit 1
  fi
done

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

addr() { echo "127.0.0.1:$((BASE_PORT + 1 + $1))"; }
admin() { "$BIN/admin" --connect-addr "$MANAGER" --timeout-ms 5000 "$@"; }
secs() { date +%s.%N; }

servers=""
for ((i = 0; i < SERVERS; i++)); do servers+="${servers:+,}$(addr "$i")"; done
"$BIN/manager" --listen-addr "$MANAGER" --servers "$servers" --tables "t=$KEYS" --replicas 3 \
  --dead-after-ms "$DEAD_AFTER_MS" 2>"$BENCH_DIR/manager.log" &
PIDS+=($!)
for ((i = 0; i < SERVERS; i++)); do
  "$BIN/server" --node-id "$i" --listen-addr "$(addr "$i")" --manager-addr "$MANAGER" \
    --persistence --db-path "$BENCH_DIR/db$i" --log-path "$BENCH_DIR/log$i" --heartbeat-ms 500 \
    2>"$BENCH_DIR/server$i.log" &
  PIDS+=($!)
done
until printf 'GET t0\nSTOP\n' | "$BIN/benchmark" --connect-addr "$MANAGER" --timeout-ms 1000 \
  2>/dev/null | grep -q '^GET '; do sleep 0.2; done

echo "filling t with $KEYS keys of $VALUE_SIZE bytes ..." >&2
fills=()
for ((w = 0; w < 8; w++)); do
  awk -v lo=$((KEYS * w / 8)) -v hi=$((KEYS * (w + 1) / 8)) -v n="$VALUE_SIZE" 'BEGIN {
    v = "v"; while (length(v) < n) v = v v; v = substr(v, 1, n)
    for (i = lo; i < hi; i++) print "PUT t" i " " v
    print "STOP" }' |
    "$BIN/benchmark" --connect-addr "$MANAGER" --timeout-ms 30000 >"$BENCH_DIR/fill.$w" &
  fills+=($!)
done
for pid in "${fills[@]}"; do wait "$pid"; done
if grep -q '^ERROR' "$BENCH_DIR"/fill.*; then echo "the fill failed (see $BENCH_DIR)" >&2; exit 1; fi

load() {
  "$BIN/benchmark" load --connect-addr "$MANAGER" --workload a --keys "$KEYS" \
    --value-size "$VALUE_SIZE" --clients "$CLIENTS" --duration-s "$DURATION_S" --warmup-s 1 \
    --progress-ms 0 --json 2>>"$BENCH_DIR/load.log"
}

echo "baseline: ${DURATION_S}s of workload a, no fault ..." >&2
load >"$BENCH_DIR/baseline.json"

# What server 0 holds: the data that must be copied elsewhere.
held=$(admin partitions --json | jq '[.[] | select(.replicas | index(0)) | .bytes] | add // 0')
echo "with server 0 lost ${KILL_AT_S}s in ..." >&2
load >"$BENCH_DIR/fault.json" &
load_pid=$!
sleep "$KILL_AT_S"
kill -9 "${PIDS[1]}"
killed=$(secs)
wait "${PIDS[1]}" 2>/dev/null || true
until admin partitions --json 2>/dev/null | jq -e 'all(.[]; (.replicas | length) == 3
    and ((.replicas | index(0)) | not) and (.learners | length) == 0 and .leader != null)' \
    >/dev/null; do
  sleep 0.2
done
repaired=$(secs)
wait "$load_pid"

took=$(awk -v a="$killed" -v b="$repaired" 'BEGIN { printf "%.1f", b - a }')
after_dead=$(awk -v t="$took" -v d="$DEAD_AFTER_MS" 'BEGIN { printf "%.1f", t - d / 1000 }')
mb=$(awk -v b="$held" 'BEGIN { printf "%.1f", b / 1e6 }')
rate=$(awk -v b="$held" -v t="$after_dead" 'BEGIN { printf "%.1f", (t > 0 ? b / 1e6 / t : 0) }')
row() {
  jq -r --arg what "$1" '"| \($what) | \(.throughput_ops_per_s | floor) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.latency_ms.max) |"' "$2"
}
echo "| run | ops/s | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
row "baseline (no fault)" "$BENCH_DIR/baseline.json"
row "server 0 lost at ${KILL_AT_S}s" "$BENCH_DIR/fault.json"
echo
echo "re-replication: every partition back to 3 live replicas ${took}s after the kill" \
  "(${after_dead}s after --dead-after-ms); ${mb} MB held by server 0 copied at ~${rate} MB/s"
echo "logs: $BENCH_DIR"
