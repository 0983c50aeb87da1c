#!/usr/bin/env bash
# Starts a local distkv cluster (manager + servers on 127.0.0.1) and opens the
# client on it. Quitting the client stops the cluster.
set -euo pipefail

servers=3
tables="customers=100000,orders=10000"
manager_port=24000
server_port=23000
open_client=1
persistence=0

usage() {
  cat <<USAGE
usage: $0 [--servers N] [--tables t1=N1,t2=N2] [--manager-port P] [--server-port P]
          [--persistence] [--no-client]

Builds distkv (release), starts a manager on 127.0.0.1:<manager-port> and N servers on
127.0.0.1:<server-port>.., then opens the interactive client. Logs go to \$DISTKV_LOGS
(default: a fresh temporary directory). With --persistence the servers keep their data in
\$DISTKV_DATA (default: ./data) and find it again when the cluster is started the same way.
With --no-client it waits until Ctrl-C instead.

defaults: --servers $servers --tables $tables --manager-port $manager_port --server-port $server_port
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --tables) tables="$2"; shift 2 ;;
    --manager-port) manager_port="$2"; shift 2 ;;
    --server-port) server_port="$2"; shift 2 ;;
    --no-client) open_client=0; shift ;;
    --persistence) persistence=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
bin=target/release
logs="${DISTKV_LOGS:-$(mktemp -d -t distkv-logs.XXXXXX)}"
mkdir -p "$logs"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

addrs=""
for ((i = 0; i < servers; i++)); do
  addrs+="${addrs:+,}127.0.0.1:$((server_port + i))"
done

manager="127.0.0.1:$manager_port"
"$bin/manager" --listen-addr "$manager" --servers "$addrs" --tables "$tables" 2>"$logs/manager.log" &
pids+=($!)
for ((i = 0; i < servers; i++)); do
  durable=()
  if [ "$persistence" = 1 ]; then
    data="${DISTKV_DATA:-./data}"
    durable=(--persistence --db-path "$data/db$i" --log-path "$data/log$i")
  fi
  "$bin/server" --node-id "$i" --listen-addr "127.0.0.1:$((server_port + i))" \
    --manager-addr "$manager" "${durable[@]}" 2>"$logs/server$i.log" &
  pids+=($!)
done

# Wait until every server has its partitions (a GET on each table answers).
first_table="${tables%%=*}"
for _ in $(seq 1 100); do
  if printf 'GET %s0\nSTOP\n' "$first_table" | "$bin/benchmark" --connect-addr "$manager" --timeout-ms 300 2>/dev/null | grep -q "^GET"; then
    break
  fi
  sleep 0.1
done

echo "distkv: manager $manager, servers $addrs, tables $tables"
echo "distkv: logs in $logs"
echo "distkv: connect more clients with: $bin/client --connect-addr $manager"
if [ "$open_client" = 1 ]; then
  "$bin/client" --connect-addr "$manager"
else
  echo "distkv: running; Ctrl-C stops the cluster"
  wait
fi
