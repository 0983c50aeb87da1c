#!/usr/bin/env bash
# CI's test of the deployment files: builds the image (scripts/docker-image.sh),
# starts deploy/docker-compose.yml (a manager and three durable servers on a
# private network), then, from the host:
#   1. writes 200 keys and reads them back;
#   2. stops one server container (SIGTERM: graceful) and reads everything back
#      and writes more while it is down; starts it again;
#   3. cuts another server off the network (docker network disconnect) and
#      reads everything back and writes more through the two still connected;
#   4. reconnects it and checks it serves again (the Redis protocol on each
#      server, so every server is asked directly).
# Exits non-zero on the first failure, with the containers' logs. Needs a
# Docker engine and docker-compose (v1) or `docker compose`.
set -euo pipefail
cd "$(dirname "$0")/.."
project=${COMPOSE_PROJECT:-distkvci}
file=deploy/docker-compose.yml
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$project" -f "$file")
else
  compose=(docker-compose -p "$project" -f "$file")
fi
manager=172.28.0.10:24000
bench=target/release/benchmark

fail() {
  echo "test-compose.sh: FAILED: $*" >&2
  "${compose[@]}" logs --tail 30 >&2 || true
  exit 1
}
cleanup() { "${compose[@]}" down -v >/dev/null 2>&1 || true; }
trap cleanup EXIT

./scripts/docker-image.sh
cleanup
"${compose[@]}" up -d

# Runs benchmark's stdin mode against the cluster; prints its replies.
ask() { printf '%b' "$1" | "$bench" --connect-addr "$manager" --timeout-ms 5000 2>&1; }

echo "test-compose.sh: waiting for the cluster"
for _ in $(seq 1 60); do
  if ask 'PUT customers0 ready\nGET customers0\n' | grep -q '^GET customers0 ready$'; then
    break
  fi
  sleep 1
done
ask 'GET customers0\n' | grep -q '^GET customers0 ready$' || fail "the cluster did not come up"

# Writes keys $1..$2 of both tables with values v<i>.
write() {
  local input=""
  for i in $(seq "$1" "$2"); do input+="PUT customers$i v$i\nPUT orders$i v$i\n"; done
  local out
  out=$(ask "$input")
  [ "$(grep -c '^PUT ' <<<"$out")" = $((2 * ($2 - $1 + 1))) ] || fail "writes $1..$2: $out"
}
# Reads keys $1..$2 back; each must hold v<i>.
check() {
  local input="" expect=""
  for i in $(seq "$1" "$2"); do
    input+="GET customers$i\nGET orders$i\n"
    expect+="GET customers$i v$i"$'\n'"GET orders$i v$i"$'\n'
  done
  local out
  out=$(ask "$input")
  [ "$out"$'\n' = "$expect" ] || fail "$3: reads $1..$2 differ: $(diff <(echo "$out") <(printf '%s' "$expect") | head -5)"
}

write 1 100
check 1 100 "all up"
echo "test-compose.sh: 200 keys written and read back"

server1=$("${compose[@]}" ps -q server1) # before stop: `ps` may list running ones only
"${compose[@]}" stop server1
code=$(docker inspect -f '{{.State.ExitCode}}' "$server1")
[ "$code" = 0 ] || fail "server1 exited with $code on SIGTERM (a graceful stop exits 0)"
check 1 100 "server1 stopped"
write 101 150
check 101 150 "server1 stopped"
echo "test-compose.sh: server1 stopped (SIGTERM): everything read back, writes go on"
"${compose[@]}" start server1

network="${project}_distkv"
container=$("${compose[@]}" ps -q server2)
# server1 must serve again before another is cut off (else one of 3 is left).
back=0
for _ in $(seq 1 30); do
  if [ "$(docker inspect -f '{{.State.Running}}' "$server1")" = true ] &&
    ask 'GET customers150\n' | grep -q '^GET customers150 v150$'; then
    back=1
    break
  fi
  sleep 1
done
[ "$back" = 1 ] || fail "server1 did not come back"
sleep 3 # its replicas catch up (heartbeats; it was down for seconds only)
docker network disconnect "$network" "$container"
check 1 150 "server2 cut off"
write 151 200
check 151 200 "server2 cut off"
echo "test-compose.sh: server2 cut off the network: everything read back, writes go on"
docker network connect --ip 172.28.0.13 "$network" "$container"

# Every server answers the Redis protocol again, with the data.
if command -v redis-cli >/dev/null; then
  for ip in 172.28.0.11 172.28.0.12 172.28.0.13; do
    ok=0
    for _ in $(seq 1 30); do
      if [ "$(redis-cli -h "$ip" -p 6379 get customers199 2>/dev/null)" = v199 ]; then
        ok=1
        break
      fi
      sleep 1
    done
    [ "$ok" = 1 ] || fail "the Redis protocol on $ip did not answer GET customers199"
  done
  echo "test-compose.sh: every server answers redis-cli"
fi
check 1 200 "all back"
echo "test-compose.sh: PASSED"
