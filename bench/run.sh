#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md in one run: baselines and the real server, on the
# same machine, one after the other. Needs wrk (apt-get install wrk). SERVE_ARGS are passed to
# the host's `serve` (say, SERVE_ARGS="--checkpoint-every 10000"); MICRO=0 skips criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789abcdef

cargo build --release -p commission-host -p bench >/dev/null
cargo build-plugins >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== machine"; nproc; lscpu | grep 'Model name' || true; df -T "$work" | tail -1

echo "== baseline: bare hyper"
target/release/bare-hyper 127.0.0.1:18090 >/dev/null & sleep 0.5
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency http://127.0.0.1:18090/ | grep -E 'Requests/sec|Latency|50%|99%'
kill %1; wait %1 2>/dev/null || true

echo "== baseline: raw sled"
target/release/sled-baseline "$work/sled"

echo "== baseline: the plugin's rules natively"
target/release/native-plugin

echo "== commission-host: three operators, each with a reference plugin (multi-event, revshare, cpa)"
target/release/commission-host serve --data "$work/data" --listen 127.0.0.1:18080 ${SERVE_ARGS:-} >"$work/host.out" 2>"$work/host.err" &
until grep -q listening "$work/host.out"; do sleep 0.2; done
H=http://127.0.0.1:18080
OPERATORS=(multi-event revshare cpa)
declare -A KEY TOKEN
for plugin in "${OPERATORS[@]}"; do
  created=$(curl -s -X POST $H/v1/operators -H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN" -d "{\"id\":\"$plugin\",\"name\":\"$plugin\",\"currency\":\"USD\"}")
  KEY[$plugin]=$(echo "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  TOKEN[$plugin]=$(echo "$created" | sed -E 's/.*"postback_token":"([^"]+)".*/\1/')
  curl -s -o /dev/null -X POST "$H/v1/operators/$plugin/plugins?activate=true" -H "Authorization: Bearer ${KEY[$plugin]}" \
    -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/${plugin//-/_}.wasm
  curl -s -o /dev/null -X PUT $H/v1/operators/$plugin/affiliates/aff1 -H "Authorization: Bearer ${KEY[$plugin]}" -d '{"deal":{}}'
done
metrics() {
  curl -s $H/metrics -H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN" \
    | grep -E '^commission_host_(plugin_evaluation_seconds|ledger_flush_seconds|ledger_commit_seconds|ledger_commit_group_seconds|ledger_commit_group_events)_(sum|count)'
}
# Each wrk prints its requests/s and percentiles; the run's events/s is the sum over operators
# (times the batch size for webhooks).
load() { # name threads connections script args...
  local name=$1 threads=$2 connections=$3 script=$4; shift 4
  wrk -t"$threads" -c"$connections" -d"$DURATION" --latency -s "$script" "$H" -- "$@" >"$work/wrk-$name"
  echo "$name: $(grep -E 'Requests/sec' "$work/wrk-$name" | tr -s ' ') $(grep -E 'Non-2xx' "$work/wrk-$name" || true)"
  grep percentiles "$work/wrk-$name"
}
# One connection to one operator first: the cost of each step without contention for the cores.
echo "-- postbacks, 1 connection, multi-event"
load serial 1 1 bench/postback.lua "/postback/multi-event?token=${TOKEN[multi-event]}" serial
metrics
# About half the peak below: one connection per operator. Its p99 is the latency target's.
echo "-- postbacks, 3 connections, one per operator"
for plugin in "${OPERATORS[@]}"; do
  load "half-$plugin" 1 1 bench/postback.lua "/postback/$plugin?token=${TOKEN[$plugin]}" half &
done
wait $(jobs -p | tail -3)
metrics
echo "-- postbacks, $CONNECTIONS connections over the three operators"
for plugin in "${OPERATORS[@]}"; do
  load "postback-$plugin" 1 $((CONNECTIONS / 3)) bench/postback.lua "/postback/$plugin?token=${TOKEN[$plugin]}" load &
done
wait $(jobs -p | tail -3)
metrics
# Webhook batches: one answer per batch, once every event of it is durable.
for size in 1 100; do
  connections=$([ "$size" = 1 ] && echo "$CONNECTIONS" || echo 9)
  echo "-- webhook batches of $size, $connections connections over the three operators"
  for plugin in "${OPERATORS[@]}"; do
    load "batch$size-$plugin" 1 $((connections / 3)) bench/webhook.lua "/v1/operators/$plugin/events" "${KEY[$plugin]}" "$size" "batch$size" &
  done
  wait $(jobs -p | tail -3)
  metrics
done
kill %1; wait %1 2>/dev/null || true

# MICRO=0 skips them (a rerun of the server phases alone).
if [ "${MICRO:-1}" = 1 ]; then
  echo "== micro-benchmarks (criterion): the plugin call beside the native rules, the parsers, the ledger commit"
  cargo bench -p bench --bench host_parts -- --warm-up-time 1 --measurement-time 5 2>/dev/null | grep -E '^[a-z_]+/|time:|thrpt:'
fi
