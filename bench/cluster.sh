#!/usr/bin/env bash
# Several hosts on one machine (issue 16): events/s and p99 with one, two and three hosts over a
# three-server JetStream cluster (R3), and the failover time (SIGKILL of a node to the first event
# of each of its operators committed by the new owner). Needs wrk and nats-server
# (apt-get install wrk nats-server). All on loopback; every loop is bounded.
#   DURATION=10s CONNECTIONS=24 bash bench/cluster.sh
# HOST_BIN=path skips the build (a binary built by `cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-24}
LEASE_MS=${LEASE_MS:-3000}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
ADMIN="Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN"
if [ -z "${HOST_BIN:-}" ]; then
  cargo build --release -p commission-host >/dev/null
  cargo build-plugins >/dev/null
  HOST_BIN=target/release/commission-host
fi
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
OPERATORS=(op1 op2 op3)

start_nats() { # a fresh three-server JetStream cluster on ports 14221-14223 (routes 16221-16223)
  for i in 1 2 3; do
    mkdir -p "$work/nats$i"
    cat >"$work/nats$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:1422$i
jetstream { store_dir: "$work/nats$i", max_file_store: 1GB, max_memory_store: 64MB }
cluster { name: bench, listen: 127.0.0.1:1622$i, routes: ["nats-route://127.0.0.1:16221", "nats-route://127.0.0.1:16222", "nats-route://127.0.0.1:16223"] }
CONF
    "$NATS" -c "$work/nats$i.conf" >"$work/nats$i.log" 2>&1 &
    echo $! >"$work/nats$i.pid"
  done
  sleep 2
}
stop_all() {
  for pid in "$work"/*.pid; do [ -e "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; rm -f "$pid"; done
  sleep 1
  rm -rf "$work"/nats? "$work"/data?
}
start_host() { # node number: listens on 1808N
  local n=$1
  "$HOST_BIN" serve --data "$work/data$n" --listen "127.0.0.1:1808$n" \
    --cluster nats://127.0.0.1:14221,nats://127.0.0.1:14222,nats://127.0.0.1:14223 --node "node$n" \
    --lease-ms "$LEASE_MS" >"$work/host$n.out" 2>"$work/host$n.err" &
  echo $! >"$work/host$n.pid"
  for _ in $(seq 600); do grep -q listening "$work/host$n.out" && return; sleep 0.1; done
  echo "node$n did not start"; cat "$work/host$n.err"; exit 1
}
# Operators and plugins are each node's own (not replicated yet): every node is given the
# operators and the multi-event plugin; the affiliate aff1 goes through the log (putting it again
# changes nothing). Each node's postback tokens are its own.
declare -A TOKEN
set_up() { # node number
  local n=$1 H=http://127.0.0.1:1808$1
  for op in "${OPERATORS[@]}"; do
    created=$(curl -s -X POST $H/v1/operators -H "$ADMIN" -d "{\"id\":\"$op\",\"name\":\"$op\",\"currency\":\"USD\"}")
    TOKEN[$n-$op]=$(echo "$created" | sed -E 's/.*"postback_token":"([^"]+)".*/\1/')
    curl -s -o /dev/null -X POST "$H/v1/operators/$op/plugins?activate=true" -H "$ADMIN" \
      -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/multi_event.wasm
    curl -s -o /dev/null -X PUT $H/v1/operators/$op/affiliates/aff1 -H "$ADMIN" -d '{"deal":{}}'
  done
}

echo "== machine"; nproc; lscpu | grep 'Model name' || true; uptime

show_owners() { # each operator's owner, as GET /v1/cluster on node1 says
  curl -s http://127.0.0.1:18081/v1/cluster -H "$ADMIN" \
    | grep -o '"operator":"[^"]*","owner":"[^"]*"' | sed -E 's/"operator":"([^"]*)","owner":"([^"]*)"/  \1 on \2/'
}

run_load() { # label hosts: wrk over each host and operator at once; prints each and the total
  local label=$1 hosts=$2 per=$(( CONNECTIONS / $2 / 3 )); [ "$per" -ge 1 ] || per=1
  for n in $(seq "$hosts"); do
    for op in "${OPERATORS[@]}"; do
      wrk -t1 -c"$per" -d"$DURATION" --latency -s bench/postback.lua "http://127.0.0.1:1808$n" \
        -- "/postback/$op?token=${TOKEN[$n-$op]}" "$label-n$n" >"$work/wrk-$label-$n-$op" &
    done
  done
  wait $(jobs -p | tail -$(( hosts * 3 )))
  local total=0
  for f in "$work"/wrk-"$label"-*; do
    rps=$(grep Requests/sec "$f" | awk '{print $2}')
    total=$(echo "$total + $rps" | bc)
    echo "  $(basename "$f"): $rps req/s, $(grep percentiles "$f") $(grep Non-2xx "$f" || true)"
  done
  echo "  total: $total events/s"
}

echo "== baseline: the embedded default (one host, no cluster), $CONNECTIONS connections over the three operators"
"$HOST_BIN" serve --data "$work/data1" --listen 127.0.0.1:18081 >"$work/host1.out" 2>"$work/host1.err" &
echo $! >"$work/host1.pid"
for _ in $(seq 600); do grep -q listening "$work/host1.out" && break; sleep 0.1; done
set_up 1
run_load embedded 1
stop_all

for hosts in 1 2 3; do
  echo "== $hosts host(s), $CONNECTIONS connections spread over the hosts and the three operators"
  start_nats
  for n in $(seq "$hosts"); do start_host "$n"; done
  for n in $(seq "$hosts"); do set_up "$n"; done
  sleep $(( LEASE_MS / 1000 + 2 ))  # the leases settle
  show_owners
  run_load "h$hosts" "$hosts"
  stop_all
done

echo "== failover: three hosts, one sender per operator through node2, node1 SIGKILLed"
start_nats
for n in 1 2 3; do start_host "$n"; done
for n in 1 2 3; do set_up "$n"; done
sleep $(( LEASE_MS / 1000 + 2 ))
# node1 was set up first and took the operators' leases (the others did not have them yet);
# each has moved since to its preferred node. The operators node1 owns at the kill are the
# ones that wait.
show_owners
victim=1 via=2
for op in "${OPERATORS[@]}"; do
  ( for i in $(seq 3000); do  # at most 3,000 events per sender, and stopped after the wait below
      [ -e "$work/stop" ] && break
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 15 \
        "http://127.0.0.1:1808$via/postback/$op?token=${TOKEN[$via-$op]}&type=deposit&amount=10&currency=USD&affiliate=aff1&customer=f$i&id=f-$op-$i")
      echo "$(date +%s.%N) $code" >>"$work/sent-$op"
    done ) &
done
sleep 3
killed=$(date +%s.%N)
kill -9 "$(cat "$work/host$victim.pid")"; rm -f "$work/host$victim.pid"
sleep $(( LEASE_MS / 1000 * 4 + 5 ))
touch "$work/stop"; wait $(jobs -p | tail -3) 2>/dev/null || true
for op in "${OPERATORS[@]}"; do
  # The longest wait for an answer across the kill: from the last 200 before it to the first 200
  # after it, for this operator.
  gap=$(awk -v k="$killed" '$2 == 200 { if ($1 < k) last = $1; else if (!first) first = $1 } END { printf "%.2f", first - last }' "$work/sent-$op")
  echo "  $op: $gap s without an answer across the kill ($(awk '$2 != 200' "$work/sent-$op" | wc -l) answers not 200, $(wc -l <"$work/sent-$op") sent)"
done
stop_all
