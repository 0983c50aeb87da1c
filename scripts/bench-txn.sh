#!/usr/bin/env bash
# Transactions across partitions against single-partition PUTs, measured side
# by side in one run on a local cluster (3 servers, --replicas 3): for 1, 16
# and 64 closed-loop clients, uniform and zipfian keys, `benchmark load
# --workload w` (one PUT per command) and `--workload txn` (GET two keys and
# PUT both, in one command; over 100,000 keys in 3 partitions, so most span
# two partitions). Prints one table row per measurement (README
# "Performance"). Env: DURATION (s per point, default 8), PERSISTENCE=1 for
# --persistence, MANAGER_PORT / SERVER_PORT (defaults 26000 / 26100).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-8}
mport=${MANAGER_PORT:-26000}
sport=${SERVER_PORT:-26100}
persist=()
if [ "${PERSISTENCE:-0}" = 1 ]; then
  persist=(--persistence)
  export DISTKV_DATA
  DISTKV_DATA=$(mktemp -d)
fi
cargo build --release --quiet --bins
./scripts/local-cluster.sh start --no-client --manager-port "$mport" --server-port "$sport" \
  --tables usertable=100000 "${persist[@]}" >/tmp/bench-txn-cluster.log 2>&1 &
trap './scripts/local-cluster.sh stop --manager-port "$mport" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 120); do
  grep -q "running;" /tmp/bench-txn-cluster.log 2>/dev/null && break
  sleep 1
done
grep -q "running;" /tmp/bench-txn-cluster.log || { cat /tmp/bench-txn-cluster.log; exit 1; }

echo "| workload | keys | clients | ops/s | p50 ms | p99 ms | txns committed | conflict retries |"
echo "|---|---|---|---|---|---|---|---|"
for dist in uniform zipfian; do
  for clients in 1 16 64; do
    for workload in w txn; do
      json=$(./target/release/benchmark load --connect-addr "127.0.0.1:$mport" \
        --workload "$workload" --distribution "$dist" --table usertable --keys 100000 \
        --clients "$clients" --duration-s "$duration" --warmup-s 1 --progress-ms 0 --json 2>/dev/null | tail -1)
      python3 - "$workload" "$dist" "$clients" "$json" <<'PY'
import json, sys
w, d, c, j = sys.argv[1:]
r = json.loads(j)
t = r.get("transactions", {})
print(f"| {w} | {d} | {c} | {r['throughput_ops_per_s']:,.0f} | {r['latency_ms']['p50']:.2f} | "
      f"{r['latency_ms']['p99']:.2f} | {t.get('committed', 0):,} | {t.get('retries', 0):,} |")
PY
    done
  done
done
