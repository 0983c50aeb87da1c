#!/usr/bin/env bash
# Measures what README "Large partitions" reports: write throughput on a small and on a large
# partition (one copy, and 3 replicas with a follower caught up by snapshot), snapshot transfer
# time and restart time against data size, and memory per key for small values.
#
# Every cluster here is started by this script on 127.0.0.1 (manager + servers, release build),
# with one table `big=1` (one partition holding every key) or `mem=1`, and stopped again.
# Results go to stdout as table rows; process logs to $BENCH_DIR (default: a temporary dir).
set -euo pipefail

usage() {
  cat <<USAGE
usage: $0 [all|throughput|snapshot|restart|memory]...

  throughput  benchmark load --workload w (10 KB values, 16 clients) on a small partition and
              on a large one (LARGE_KEYS x 10 KB), with --replicas 1 (one server) and
              --replicas 3 (three servers); in the 3-replica case a follower is killed, misses
              writes, and is restarted (empty) during the measured load: the time until it
              logs "installing a snapshot" is reported
  snapshot    snapshot transfer time against data size (SNAP_SIZES_MB): 3 in-memory servers,
              a follower restarted empty; time from its start until it logs the install
  restart     restart time against data size (SNAP_SIZES_MB): one server with --persistence,
              kill -9, time from the new process's start until it answers a GET
  memory      RSS per key: one server, MEM_KEYS keys of 100-byte values

environment (defaults): LARGE_KEYS=100000 SMALL_KEYS=200 SNAP_SIZES_MB="100 1000"
  MEM_KEYS=1000000 DURATION_S=8 CLIENTS=16 BASE_PORT=27400 BENCH_DIR=(mktemp -d)
USAGE
}

LARGE_KEYS=${LARGE_KEYS:-100000}
SMALL_KEYS=${SMALL_KEYS:-200}
SNAP_SIZES_MB=${SNAP_SIZES_MB:-"100 1000"}
MEM_KEYS=${MEM_KEYS:-1000000}
DURATION_S=${DURATION_S:-8}
CLIENTS=${CLIENTS:-16}
BASE_PORT=${BASE_PORT:-27400}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d -t distkv-bench.XXXXXX)}
VALUE_SIZE=10000
mkdir -p "$BENCH_DIR"

cd "$(dirname "$0")/.."
BIN=target/release
MANAGER_ADDR="127.0.0.1:$BASE_PORT"
pids=()

die() {
  echo "error: $*" >&2
  exit 1
}

stop_all() {
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    # (a server restarted from a subshell is not our child: wait for it by hand)
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  done
  pids=()
}
trap stop_all EXIT

now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_cluster SERVERS REPLICAS TABLES [server flags...]
start_cluster() {
  local n=$1 replicas=$2 tables=$3
  shift 3
  # Never attach to someone else's cluster: every port must be free.
  for ((p = BASE_PORT; p <= BASE_PORT + n; p++)); do
    if port_taken "$p"; then
      die "port $p is taken (another cluster?); pick free ones with BASE_PORT=..."
    fi
  done
  SERVER_FLAGS=("$@")
  local servers=""
  for ((i = 0; i < n; i++)); do
    servers+="${servers:+,}127.0.0.1:$((BASE_PORT + 1 + i))"
  done
  "$BIN/manager" --listen-addr "$MANAGER_ADDR" --servers "$servers" --tables "$tables" \
    --replicas "$replicas" 2>>"$BENCH_DIR/manager.log" &
  pids[0]=$!
  for ((i = 0; i < n; i++)); do
    start_server "$i"
  done
}

# start_server I: with the flags of the last start_cluster; its pid in pids[I+1].
start_server() {
  local i=$1
  RUST_LOG=info "$BIN/server" --node-id "$i" --listen-addr "127.0.0.1:$((BASE_PORT + 1 + i))" \
    --manager-addr "$MANAGER_ADDR" --heartbeat-ms 200 \
    --db-path "$BENCH_DIR/db$i" --log-path "$BENCH_DIR/log$i" \
    "${SERVER_FLAGS[@]}" 2>>"$BENCH_DIR/server$i.log" &
  pids[$((i + 1))]=$!
}

kill_server() {
  local pid=${pids[$(($1 + 1))]}
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

# wait_serving KEY [limit_s]: until a GET of KEY succeeds.
wait_serving() {
  local key=$1 limit=${2:-120} start
  start=$(now_s)
  while true; do
    if printf 'GET %s\nSTOP\n' "$key" | "$BIN/benchmark" --connect-addr "$MANAGER_ADDR" \
      --timeout-ms 1000 2>/dev/null | grep -q "^GET "; then
      return 0
    fi
    if [ "$(elapsed "$start" "$(now_s)" | cut -d. -f1)" -ge "$limit" ]; then
      die "the cluster did not serve $key within ${limit}s (logs: $BENCH_DIR)"
    fi
    sleep 0.1
  done
}

# fill TABLE KEYS VALUE_BYTES: PUT every key 0..KEYS-1 once, 8 writers over disjoint ranges.
fill() {
  local table=$1 keys=$2 bytes=$3 writers=8 fill_pids=()
  for ((w = 0; w < writers; w++)); do
    awk -v t="$table" -v lo=$((keys * w / writers)) -v hi=$((keys * (w + 1) / writers)) \
      -v n="$bytes" 'BEGIN {
        v = "v"; while (length(v) < n) v = v v; v = substr(v, 1, n)
        for (i = lo; i < hi; i++) print "PUT " t i " " v
        print "STOP"
      }' | "$BIN/benchmark" --connect-addr "$MANAGER_ADDR" --timeout-ms 30000 \
      >"$BENCH_DIR/fill.$w.out" 2>>"$BENCH_DIR/fill.log" &
    fill_pids+=($!)
  done
  for pid in "${fill_pids[@]}"; do wait "$pid"; done
  if cat "$BENCH_DIR"/fill.*.out | grep -q "^ERROR"; then
    die "fill: $(cat "$BENCH_DIR"/fill.*.out | grep -c "^ERROR") errors (logs: $BENCH_DIR)"
  fi
}

# load KEYS: write-only load on table big; prints "ops/s p99".
load() {
  "$BIN/benchmark" load --connect-addr "$MANAGER_ADDR" --workload w --table big \
    --keys "$1" --value-size "$VALUE_SIZE" --clients "$CLIENTS" --duration-s "$DURATION_S" \
    --warmup-s 1 --progress-ms 0 --json 2>>"$BENCH_DIR/load.log" |
    sed -E 's/.*"throughput_ops_per_s":([0-9.]+).*"p99":([0-9.]+).*/\1 \2/'
}

# wait_installed I COUNT [limit_s]: until server I's current log has COUNT snapshot installs.
wait_installed() {
  local i=$1 count=$2 limit=${3:-600} start
  start=$(now_s)
  while [ "$(grep -c "installing a snapshot" "$BENCH_DIR/server$i.log" || true)" -lt "$count" ]; do
    if [ "$(elapsed "$start" "$(now_s)" | cut -d. -f1)" -ge "$limit" ]; then
      die "server $i installed no snapshot within ${limit}s (logs: $BENCH_DIR)"
    fi
    sleep 0.05
  done
}

installs() { grep -c "installing a snapshot" "$BENCH_DIR/server$1.log" || true; }

throughput() {
  echo "## write throughput: workload w, ${VALUE_SIZE}-byte values, $CLIENTS clients, ${DURATION_S}s"
  echo "| setup | partition | writes/s | p99 ms | notes |"
  echo "|---|---|---|---|---|"
  for replicas in 1 3; do
    for keys in "$SMALL_KEYS" "$LARGE_KEYS"; do
      rm -rf "$BENCH_DIR"/db* "$BENCH_DIR"/log* "$BENCH_DIR"/server*.log
      start_cluster "$replicas" "$replicas" big=1
      wait_serving big0
      local mb=$((keys * VALUE_SIZE / 1000000))
      local start
      start=$(now_s)
      fill big "$keys" "$VALUE_SIZE"
      local filled
      filled=$(elapsed "$start" "$(now_s)")
      local rss
      rss=$(($(rss_kb "${pids[1]}") / 1024))
      read -r ops p99 < <(load "$keys")
      echo "| $replicas server(s), --replicas $replicas | $keys keys, ~${mb} MB | $ops | $p99 | filled in ${filled}s; server 0 RSS ${rss} MB |"
      if [ "$replicas" = 3 ]; then
        # A follower misses writes, comes back empty and is caught up by snapshot while the
        # measured load runs.
        kill_server 2
        load "$keys" >/dev/null
        local before
        before=$(installs 2)
        (
          sleep 1
          start_server 2
          echo "${pids[3]}" >"$BENCH_DIR/restarted.pid"
          local at
          at=$(now_s)
          wait_installed 2 $((before + 1))
          elapsed "$at" "$(now_s)" >"$BENCH_DIR/caught-up.s"
        ) &
        local restarter=$!
        read -r ops p99 < <(load "$keys")
        wait "$restarter"
        pids[3]=$(cat "$BENCH_DIR/restarted.pid")
        echo "| 3 servers, follower restarted empty 1 s into the load | $keys keys, ~${mb} MB | $ops | $p99 | the follower installed its snapshot $(cat "$BENCH_DIR/caught-up.s")s after its restart |"
      fi
      stop_all
    done
  done
}

snapshot() {
  echo "## snapshot transfer: 3 in-memory servers (--compact-entries 1000), a follower restarted empty"
  echo "| data | from restart to installed | snapshot bytes |"
  echo "|---|---|---|"
  for mb in $SNAP_SIZES_MB; do
    local keys=$((mb * 1000000 / VALUE_SIZE))
    rm -rf "$BENCH_DIR"/db* "$BENCH_DIR"/log* "$BENCH_DIR"/server*.log
    # Compaction after 1,000 entries (default 10,000), so that the leader's log
    # surely starts past an empty follower even for the smaller sizes.
    start_cluster 3 3 big=1 --compact-entries 1000
    wait_serving big0
    fill big "$keys" "$VALUE_SIZE"
    sleep 2
    local victim=2
    kill_server "$victim"
    : >"$BENCH_DIR/server$victim.log"
    local start
    start=$(now_s)
    start_server "$victim"
    wait_installed "$victim" 1
    local took
    took=$(elapsed "$start" "$(now_s)")
    local bytes
    bytes=$(grep "installing a snapshot" "$BENCH_DIR/server$victim.log" | head -1 |
      sed -E 's/.*bytes=([0-9]+).*/\1/')
    echo "| ${mb} MB ($keys x ${VALUE_SIZE} B) | ${took}s | $bytes |"
    stop_all
  done
}

restart() {
  echo "## restart with --persistence: one server, kill -9, time until it serves a GET"
  echo "| data | restart to serving | server RSS after restart |"
  echo "|---|---|---|"
  for mb in $SNAP_SIZES_MB; do
    local keys=$((mb * 1000000 / VALUE_SIZE))
    rm -rf "$BENCH_DIR"/db* "$BENCH_DIR"/log* "$BENCH_DIR"/server*.log
    start_cluster 1 1 big=1 --persistence
    wait_serving big0
    fill big "$keys" "$VALUE_SIZE"
    sleep 2
    kill_server 0
    local start
    start=$(now_s)
    start_server 0
    wait_serving "big$((keys - 1))" 600
    local took
    took=$(elapsed "$start" "$(now_s)")
    echo "| ${mb} MB ($keys x ${VALUE_SIZE} B) | ${took}s | $(($(rss_kb "${pids[1]}") / 1024)) MB |"
    stop_all
  done
}

memory() {
  echo "## memory per key: one server, in memory, $MEM_KEYS keys of 100-byte values"
  rm -rf "$BENCH_DIR"/db* "$BENCH_DIR"/log* "$BENCH_DIR"/server*.log
  start_cluster 1 1 mem=1
  wait_serving mem0
  local base
  base=$(rss_kb "${pids[1]}")
  fill mem "$MEM_KEYS" 100
  sleep 1
  local rss
  rss=$(rss_kb "${pids[1]}")
  awk -v b="$base" -v r="$rss" -v k="$MEM_KEYS" 'BEGIN {
    printf "RSS %.0f MB before, %.0f MB after %d keys: %.0f bytes per key (%.0f of them above the key and value bytes)\n",
      b / 1024, r / 1024, k, (r - b) * 1024 / k, (r - b) * 1024 / k - 100 - 8
  }'
  stop_all
}

[ -x "$BIN/server" ] && [ -x "$BIN/benchmark" ] || die "build first: cargo build --release"
[ $# -gt 0 ] || set -- all
for what in "$@"; do
  case "$what" in
    all) throughput; snapshot; restart; memory ;;
    throughput | snapshot | restart | memory) "$what" ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
echo "logs: $BENCH_DIR; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
