#!/usr/bin/env bash
# distkv against etcd 3.4 or Redis, side by side in one run (issue
# "Performance"), all on loopback on this machine, closed-loop clients,
# printable values (100 bytes by default) over 100,000 keys, the same
# measurement alternated between the two stores point by point (distkv put,
# other put, distkv get, other get, for each client count), so both see the
# same machine load.
#
# SETUP=replicated (default): 3 etcd members against 3 distkv servers
#   (`--replicas 3`, `--persistence`), so both fsync every write on every
#   member. Gets are linearizable on both (distkv: ReadIndex; etcd: its
#   default linearizable read).
# SETUP=single: one Redis with `appendonly yes`, `appendfsync always` (an
#   fsync per write) against one distkv server (`--replicas 1`,
#   `--persistence`).
# The etcd and Redis load comes from tools/compare-load (gRPC / RESP, the same
# report as `benchmark load --json`, built here on demand).
#
# Writes every point's JSON report and a Markdown table to $OUT (default
# bench-results/compare-<UTC time>), then the plots (fig/*.svg by default,
# fig/single-*.svg for SETUP=single; scripts/plot.py). Takes about
# (2 stores x ops x clients x (DURATION+2)) s.
#
# Env: SETUP, DURATION (measured s per point, default 8), WARMUP (s, default
# 1), CLIENTS (default "1 16 64"), OPS (default "put get"; `txn` adds distkv's
# two-key transactions, measured on distkv only), KEYS (default 100000),
# VALUE_SIZE (bytes, default 100), OUT, FIG (plot directory, default fig;
# empty: no plots), ETCD_PORT (default 27379; members use ETCD_PORT, +10, +20
# and peers +1), REDIS_PORT (default 27479), MANAGER_PORT / SERVER_PORT
# (defaults 27600 / 27610), DISTKV_ONLY=1 to measure distkv alone when etcd or
# Redis is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
setup=${SETUP:-replicated}
duration=${DURATION:-8}
warmup=${WARMUP:-1}
clients_list=${CLIENTS:-"1 16 64"}
ops=${OPS:-"put get"}
keys=${KEYS:-100000}
value_size=${VALUE_SIZE:-100}
out=${OUT:-bench-results/compare-$(date -u +%Y%m%dT%H%M%SZ)}
fig=${FIG-fig}
etcd_port=${ETCD_PORT:-27379}
redis_port=${REDIS_PORT:-27479}
mport=${MANAGER_PORT:-27600}
sport=${SERVER_PORT:-27610}
distkv_only=${DISTKV_ONLY:-0}

die() {
  echo "compare.sh: $*" >&2
  exit 2
}

case "$setup" in
  replicated) base=etcd servers=3 prefix="" ;;
  single) base=redis servers=1 prefix="single-" ;;
  *) die "SETUP must be 'replicated' (against etcd) or 'single' (against Redis), not '$setup'" ;;
esac
if [ "$distkv_only" != 1 ]; then
  if [ "$base" = etcd ]; then
    command -v etcd >/dev/null ||
      die "etcd is not installed. On Debian/Ubuntu: apt-get install etcd-server etcd-client (etcd 3.4); or DISTKV_ONLY=1 to measure distkv alone"
  else
    command -v redis-server >/dev/null ||
      die "Redis is not installed. On Debian/Ubuntu: apt-get install redis-server; or DISTKV_ONLY=1 to measure distkv alone"
  fi
  command -v protoc >/dev/null ||
    die "building tools/compare-load needs protoc. On Debian/Ubuntu: apt-get install protobuf-compiler"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d -t distkv-compare.XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  ./scripts/local-cluster.sh stop --manager-port "$mport" >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "compare.sh: building distkv$([ "$distkv_only" = 1 ] || echo " and tools/compare-load") (release)" >&2
cargo build --release --quiet --bins
if [ "$distkv_only" != 1 ]; then
  (cd tools/compare-load && cargo build --release --quiet)
fi
bench="$repo/target/release/benchmark"
other_load="$repo/tools/compare-load/target/release/compare-load"

# --- etcd: 3 members, default durability (fsync per commit) ---
endpoints=""
if [ "$distkv_only" != 1 ] && [ "$base" = etcd ]; then
  cluster=""
  for i in 0 1 2; do
    cluster+="${cluster:+,}etcd$i=http://127.0.0.1:$((etcd_port + 10 * i + 1))"
  done
  for i in 0 1 2; do
    client="http://127.0.0.1:$((etcd_port + 10 * i))"
    peer="http://127.0.0.1:$((etcd_port + 10 * i + 1))"
    endpoints+="${endpoints:+,}$client"
    etcd --name "etcd$i" --data-dir "$work/etcd$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token distkv-compare --log-level error \
      >"$work/etcd$i.log" 2>&1 &
    pids+=($!)
  done
  ready=0
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then
      ready=1
      break
    fi
    sleep 0.2
  done
  [ "$ready" = 1 ] || { tail -n 20 "$work"/etcd*.log >&2; die "etcd did not become healthy"; }
fi

# --- Redis: one node, an fsync per write (appendfsync always), no RDB ---
if [ "$distkv_only" != 1 ] && [ "$base" = redis ]; then
  mkdir -p "$work/redis"
  endpoints="127.0.0.1:$redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" \
    --appendonly yes --appendfsync always --save "" --daemonize no \
    >"$work/redis.log" 2>&1 &
  pids+=($!)
  ready=0
  for _ in $(seq 1 100); do
    if redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
      ready=1
      break
    fi
    sleep 0.2
  done
  [ "$ready" = 1 ] || { tail -n 20 "$work/redis.log" >&2; die "Redis did not start"; }
fi

# --- distkv: manager + 3 servers (--replicas 3) or 1, --persistence ---
DISTKV_DATA="$work/distkv" DISTKV_LOGS="$work/distkv-logs" \
  ./scripts/local-cluster.sh start --no-client --persistence --servers "$servers" --manager-port "$mport" \
  --server-port "$sport" --tables "usertable=$keys" >"$work/cluster.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  grep -q "running;" "$work/cluster.log" 2>/dev/null && break
  sleep 1
done
grep -q "running;" "$work/cluster.log" || { cat "$work/cluster.log" >&2; die "distkv did not start"; }

machine="$(nproc) cores, $(uname -r), $(date -u '+%F %T UTC')"
if [ "$base" = etcd ]; then
  other_version=$([ "$distkv_only" = 1 ] || etcd --version 2>/dev/null | head -n 1)
  other="etcd: ${other_version:-not measured}, 3 members, default settings"
else
  other_version=$([ "$distkv_only" = 1 ] || redis-server --version 2>/dev/null | head -n 1 | cut -d' ' -f1-3)
  other="redis: ${other_version:-not measured}, one node, appendonly yes, appendfsync always"
fi
cat >"$out/setup.txt" <<SETUP
machine: $machine
distkv: $(git rev-parse --short HEAD)$(git diff --quiet || echo "+uncommitted"), $servers server(s), --replicas $servers, --persistence
$other
load: closed-loop clients, ${keys} keys uniform, ${value_size}-byte values, ${warmup} s warm-up + ${duration} s per point, alternated
SETUP
cat "$out/setup.txt" >&2

measure() { # store op clients -> $out/<store>-<op>-<clients>.json (stderr in .log)
  local store=$1 op=$2 clients=$3 name="$1-$2-$3" workload status=0
  local file="$out/$name.json" log="$out/$name.log"
  case "$op" in
    put) workload=w ;;
    get) workload=c ;;
    txn) workload=txn ;;
    *) die "unknown op '$op' in OPS (put, get, txn)" ;;
  esac
  if [ "$store" = distkv ]; then
    "$bench" load --connect-addr "127.0.0.1:$mport" --workload "$workload" --table usertable \
      --keys "$keys" --value-size "$value_size" --clients "$clients" --duration-s "$duration" \
      --warmup-s "$warmup" --progress-ms 0 --json >"$file.out" 2>"$log" || status=$?
  else
    "$other_load" --store "$store" --endpoints "$endpoints" --workload "$workload" --keys "$keys" \
      --value-size "$value_size" --clients "$clients" --duration-s "$duration" \
      --warmup-s "$warmup" --json >"$file.out" 2>"$log" || status=$?
  fi
  tail -n 1 "$file.out" >"$file"
  rm -f "$file.out"
  # A point that failed is reported and left out of the table; the run goes on.
  if [ "$status" != 0 ] || ! python3 scripts/plot.py point "$file" "$store" "$op" "$clients" >&2 2>/dev/null; then
    echo "compare.sh: $store $op $clients clients: no report (exit $status); last lines of $log:" >&2
    tail -n 5 "$log" >&2
    rm -f "$file"
  fi
}

stores="distkv"
[ "$distkv_only" = 1 ] || stores="distkv $base"
for clients in $clients_list; do
  for op in $ops; do
    for store in $stores; do
      # Transactions are distkv's own (two keys, usually two partitions).
      [ "$op" = txn ] && [ "$store" != distkv ] && continue
      measure "$store" "$op" "$clients"
    done
  done
done

python3 scripts/plot.py table "$out" | tee "$out/table.md"
if [ -n "$fig" ]; then
  python3 scripts/plot.py svg "$out" "$fig" "$prefix"
  echo "compare.sh: plots in $fig/${prefix}throughput.svg and $fig/${prefix}latency.svg" >&2
fi
echo "compare.sh: reports and table in $out" >&2
