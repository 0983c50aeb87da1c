#!/usr/bin/env bash
# Starts a local distkv cluster (manager + servers on 127.0.0.1) and opens the
# client on it. Quitting the client stops the cluster. Other subcommands act on
# a running local cluster from another terminal (see usage below).
set -euo pipefail

servers=3
tables="customers=100000,orders=10000"
manager_port=24000
server_port=23000
open_client=1
persistence=0
# Seconds to wait for every process to listen, and for the cluster to answer.
listen_wait_s=10
ready_wait_s=30

usage() {
  cat <<USAGE
usage: $0 [start] [--servers N] [--tables t1=N1,t2=N2] [--manager-port P] [--server-port P]
                 [--persistence] [--no-client]
       $0 restart-server N [--manager-port P]
       $0 kill-server N [--manager-port P]
       $0 start-server N [--manager-port P]
       $0 status [--manager-port P]
       $0 stop [--manager-port P]

start (the default) builds distkv (release), starts a manager on 127.0.0.1:<manager-port> and
N servers on 127.0.0.1:<server-port>.., checks that every one of them is up and that the
cluster answers, then opens the interactive client; quitting the client (exit) stops the
cluster. With --no-client it waits until Ctrl-C (or '$0 stop') instead. It refuses to start
if one of its ports is taken (e.g. by a cluster started earlier).

Logs go to \$DISTKV_LOGS (default: a fresh temporary directory). With --persistence the servers
keep their data in \$DISTKV_DATA (default: ./data) and find it again when the cluster is started
the same way.

From another terminal, while it runs (--manager-port names the cluster if not the default):
  restart-server N   stop server N (SIGTERM: it hands its leaderships off and flushes its log)
                     and start it again with the same flags; its log goes on in serverN.log
  kill-server N      stop server N and leave it down (to watch the others carry on)
  start-server N     start server N again after kill-server
  status             which processes run, their pids, ports and logs
  stop               stop every process of the cluster

defaults: --servers $servers --tables $tables --manager-port $manager_port --server-port $server_port
USAGE
}

die() {
  echo "error: $*" >&2
  exit 1
}

command=start
node=""
case "${1:-}" in
  start | status | stop) command="$1"; shift ;;
  restart-server | kill-server | start-server)
    command="$1"
    [ $# -ge 2 ] || die "$1 needs a server number (0, 1, ...)"
    node="$2"
    [[ "$node" =~ ^[0-9]+$ ]] || die "$1: '$node' is not a server number"
    shift 2
    ;;
esac

while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --tables) tables="$2"; shift 2 ;;
    --manager-port) manager_port="$2"; shift 2 ;;
    --server-port) server_port="$2"; shift 2 ;;
    --no-client) open_client=0; shift ;;
    --persistence) persistence=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
repo="$(pwd)"
# Where a running cluster keeps its pids and flags, one directory per manager port.
run="${DISTKV_RUN:-${TMPDIR:-/tmp}/distkv-local-$manager_port}"

# Whether something listens on 127.0.0.1:$1 (or on all addresses).
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Whether 127.0.0.1:$1 accepts connections.
accepts() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Who listens on port $1, if the system says: ' (by "server", pid 123)', or nothing.
who_listens() {
  local users name pid
  command -v ss >/dev/null 2>&1 || return 0
  users="$(ss -Htlnp "sport = :$1" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -n 1 || true)"
  [ -n "$users" ] || return 0
  name="${users#*\"}"
  name="${name%%\"*}"
  pid="${users##*pid=}"
  echo " (by \"$name\", pid $pid)"
}

# The pid recorded for process $1 (manager, server0, ...) if it still runs
# one of this cluster's binaries; nothing otherwise.
live_pid() {
  local file="$run/$1.pid" pid program
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  kill -0 "$pid" 2>/dev/null || return 0
  # Not a pid reused by some other program since.
  program="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1 || true)"
  case "${program##*/}" in
    manager | server) echo "$pid" ;;
  esac
}

# Prints the last lines of process $1's log.
show_log_tail() {
  local log="$logs/$1.log"
  echo "--- last lines of $log:" >&2
  tail -n 20 "$log" >&2 2>/dev/null || echo "(no log)" >&2
  echo "---" >&2
}

# Waits until process $1 (pid $2) accepts connections on port $3; fails with
# the tail of its log if it exits or does not listen in time.
wait_listening() {
  local name="$1" pid="$2" port="$3" tries=$((listen_wait_s * 10))
  while ! accepts "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name (127.0.0.1:$port) exited during startup" >&2
      show_log_tail "$name"
      return 1
    fi
    tries=$((tries - 1))
    if [ "$tries" -le 0 ]; then
      echo "error: $name (pid $pid) is not listening on 127.0.0.1:$port after ${listen_wait_s} s" >&2
      show_log_tail "$name"
      return 1
    fi
    sleep 0.1
  done
  # Listening, but is it ours? (Another process may hold the port.)
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "error: $name exited during startup" >&2
    show_log_tail "$name"
    return 1
  fi
}

# Starts server $1 in the background, appending to its log; records its pid.
start_server() {
  local i="$1" durable=()
  if [ "$persistence" = 1 ]; then
    durable=(--persistence --db-path "$data/db$i" --log-path "$data/log$i")
  fi
  "$bin/server" --node-id "$i" --listen-addr "127.0.0.1:$((server_port + i))" \
    --manager-addr "$manager" "${durable[@]}" </dev/null 2>>"$logs/server$i.log" &
  echo $! >"$run/server$i.pid"
}

# Stops server $1 if it runs, and waits until it is gone.
stop_server() {
  local pid
  pid="$(live_pid "server$1")"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

# Loads the flags of the cluster running on $manager_port, or fails.
load_cluster() {
  [ -f "$run/cluster.env" ] && [ -n "$(live_pid manager)" ] ||
    die "no local cluster runs with manager port $manager_port (nothing in $run); start one with $0"
  # shellcheck source=/dev/null
  . "$run/cluster.env"
  if [ -n "$node" ] && [ "$node" -ge "$servers" ]; then
    die "the cluster has servers 0..$((servers - 1)), not $node"
  fi
}

case "$command" in
  status)
    load_cluster
    echo "distkv: manager $manager, servers $addrs, tables $tables; logs in $logs"
    pid="$(live_pid manager)"
    echo "manager   pid ${pid:-(down)}  $manager"
    for ((i = 0; i < servers; i++)); do
      pid="$(live_pid "server$i")"
      echo "server $i  pid ${pid:-(down)}  127.0.0.1:$((server_port + i))  $logs/server$i.log"
    done
    exit 0
    ;;
  stop)
    load_cluster
    for ((i = 0; i < servers; i++)); do stop_server "$i"; done
    pid="$(live_pid manager)"
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    echo "distkv: stopped the cluster with manager $manager"
    exit 0
    ;;
  kill-server)
    load_cluster
    stop_server "$node"
    echo "distkv: server $node (127.0.0.1:$((server_port + node))) stopped; '$0 start-server $node' starts it again"
    exit 0
    ;;
  restart-server | start-server)
    load_cluster
    if [ "$command" = restart-server ]; then
      stop_server "$node"
    elif [ -n "$(live_pid "server$node")" ]; then
      die "server $node already runs (pid $(live_pid "server$node")); use restart-server"
    fi
    port=$((server_port + node))
    if port_in_use "$port"; then
      die "port $port of server $node is taken by another process$(who_listens "$port")"
    fi
    echo "=== $(date -u '+%F %T') restarted by $0" >>"$logs/server$node.log"
    start_server "$node"
    wait_listening "server$node" "$(cat "$run/server$node.pid")" "$port" || exit 1
    echo "distkv: server $node runs again (pid $(cat "$run/server$node.pid"), 127.0.0.1:$port); log: $logs/server$node.log"
    exit 0
    ;;
esac

# --- start ---

[[ "$servers" =~ ^[1-9][0-9]*$ ]] || die "--servers must be a positive number, not '$servers'"
manager="127.0.0.1:$manager_port"

# Refuse to attach to whatever already runs on our ports.
if [ -n "$(live_pid manager)" ]; then
  die "a local cluster already runs with manager $manager (pid $(live_pid manager); '$0 status --manager-port $manager_port' lists it).
Stop it first: 'exit' in its client or Ctrl-C in its terminal, or '$0 stop --manager-port $manager_port'.
Or run a second cluster on other ports: --manager-port P --server-port Q."
fi
ports=("$manager_port:manager")
for ((i = 0; i < servers; i++)); do ports+=("$((server_port + i)):server $i"); done
for entry in "${ports[@]}"; do
  port="${entry%%:*}"
  if port_in_use "$port"; then
    die "port $port (wanted by the ${entry#*:}) on 127.0.0.1 is already in use$(who_listens "$port").
Another cluster is probably running: stop it ('exit' in its client, Ctrl-C in its terminal,
or '$0 stop --manager-port <its manager port>'), or choose other ports with
--manager-port P --server-port Q."
  fi
done

cargo build --release --quiet --bins
bin="$repo/target/release"
logs="${DISTKV_LOGS:-$(mktemp -d -t distkv-logs.XXXXXX)}"
mkdir -p "$logs"
logs="$(cd "$logs" && pwd)"
data="${DISTKV_DATA:-./data}"
mkdir -p "$run"
rm -f "$run"/*.pid

addrs=""
for ((i = 0; i < servers; i++)); do
  addrs+="${addrs:+,}127.0.0.1:$((server_port + i))"
done
if [ "$persistence" = 1 ]; then
  mkdir -p "$data"
  data="$(cd "$data" && pwd)"
fi
# What the other subcommands need to find and restart this cluster's processes.
cat >"$run/cluster.env" <<ENV
bin=$(printf '%q' "$bin")
logs=$(printf '%q' "$logs")
data=$(printf '%q' "$data")
manager=$manager
servers=$servers
server_port=$server_port
addrs=$addrs
tables=$(printf '%q' "$tables")
persistence=$persistence
ENV

cleanup() {
  trap - EXIT INT TERM
  local pid
  for ((i = 0; i < servers; i++)); do
    pid="$(live_pid "server$i")"
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  done
  pid="$(live_pid manager)"
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -f "$run"/*.pid "$run/cluster.env"
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin/manager" --listen-addr "$manager" --servers "$addrs" --tables "$tables" \
  </dev/null 2>"$logs/manager.log" &
echo $! >"$run/manager.pid"
for ((i = 0; i < servers; i++)); do
  : >"$logs/server$i.log"
  start_server "$i"
done

# Every process must be up and listening on its own port...
wait_listening manager "$(cat "$run/manager.pid")" "$manager_port" || exit 1
for ((i = 0; i < servers; i++)); do
  wait_listening "server$i" "$(cat "$run/server$i.pid")" "$((server_port + i))" || exit 1
done

# ...and the cluster must answer: a GET on every table succeeds once every
# partition it touches has a leader.
probe=""
IFS=',' read -r -a table_specs <<<"$tables"
for spec in "${table_specs[@]}"; do probe+="GET ${spec%%=*}0"$'\n'; done
probe+="STOP"$'\n'
reply=""
for ((try = 0; try < ready_wait_s * 5; try++)); do
  reply="$(printf '%s' "$probe" | "$bin/benchmark" --connect-addr "$manager" --timeout-ms 200 2>&1 || true)"
  if ! grep -q "^ERROR\|^error" <<<"$reply" && grep -q "^STOP" <<<"$reply"; then
    break
  fi
  reply="not ready: $reply"
  for name in manager $(for ((i = 0; i < servers; i++)); do echo "server$i"; done); do
    if [ -z "$(live_pid "$name")" ]; then
      echo "error: $name exited during startup" >&2
      show_log_tail "$name"
      exit 1
    fi
  done
  sleep 0.2
done
if [[ "$reply" == "not ready: "* ]]; then
  echo "error: the cluster did not answer a GET on every table within ${ready_wait_s} s; last try:" >&2
  echo "${reply#not ready: }" >&2
  for ((i = 0; i < servers; i++)); do show_log_tail "server$i"; done
  exit 1
fi

echo "distkv: manager $manager, servers $addrs, tables $tables"
echo "distkv: logs in $logs"
echo "distkv: connect more clients with: $bin/client --connect-addr $manager"
echo "distkv: see servers and partitions with: $bin/admin --connect-addr $manager servers (or partitions)"
echo "distkv: restart a server with: $0 restart-server N$([ "$manager_port" = 24000 ] || echo " --manager-port $manager_port")"
if [ "$open_client" = 1 ]; then
  "$bin/client" --connect-addr "$manager"
else
  echo "distkv: running; Ctrl-C stops the cluster"
  while [ -n "$(live_pid manager)" ]; do sleep 1; done
  echo "distkv: the manager stopped; stopping the cluster" >&2
fi
