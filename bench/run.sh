#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md in one run: baselines and the real server, on the
# same machine, one after the other. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789

cargo build --release -p commission-host -p bench >/dev/null
cargo build-plugins >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

echo "== machine"; nproc; lscpu | grep 'Model name' || true; df -T "$work" | tail -1

echo "== baseline: bare hyper"
target/release/bare-hyper 127.0.0.1:18090 >/dev/null & sleep 0.5
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency http://127.0.0.1:18090/ | grep -E 'Requests/sec|Latency|50%|99%'
kill %1; wait %1 2>/dev/null || true

echo "== baseline: raw sled"
target/release/sled-baseline "$work/sled"

echo "== baseline: the plugin's rules natively"
target/release/native-plugin

echo "== commission-host: durable postbacks through the multi-event plugin"
target/release/commission-host serve --data "$work/data" --listen 127.0.0.1:18080 >"$work/host.out" 2>"$work/host.err" &
until grep -q listening "$work/host.out"; do sleep 0.2; done
H=http://127.0.0.1:18080
created=$(curl -s -X POST $H/v1/operators -H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN" -d '{"id":"bench","name":"Bench","currency":"USD"}')
key=$(echo "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
token=$(echo "$created" | sed -E 's/.*"postback_token":"([^"]+)".*/\1/')
curl -s -o /dev/null -X POST "$H/v1/operators/bench/plugins?activate=true" -H "Authorization: Bearer $key" \
  -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/multi_event.wasm
curl -s -o /dev/null -X PUT $H/v1/operators/bench/affiliates/aff1 -H "Authorization: Bearer $key" -d '{"deal":{}}'
metrics() {
  curl -s $H/metrics -H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN" \
    | grep -E '^commission_host_(plugin_evaluation_seconds|ledger_flush_seconds|ledger_commit_seconds)_(sum|count)|^commission_host_events_total'
}
# One connection first: the cost of each step without contention for the 2 cores.
echo "-- 1 connection"
wrk -t1 -c1 -d"$DURATION" --latency -s bench/postback.lua "$H" -- "/postback/bench?token=$token" serial \
  | grep -E 'Requests/sec|Latency|50%|99%|Non-2xx'
metrics
echo "-- $CONNECTIONS connections"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/postback.lua "$H" -- "/postback/bench?token=$token" load \
  | grep -E 'Requests/sec|Latency|50%|99%|Non-2xx'
metrics
# Webhook batches: one answer per batch, once every event of it is durable. Events/s is the
# requests/s times the batch size.
for size in 1 100; do
  connections=$([ "$size" = 1 ] && echo "$CONNECTIONS" || echo 8)
  echo "-- webhook batches of $size, $connections connections"
  wrk -t2 -c"$connections" -d"$DURATION" --latency -s bench/webhook.lua "$H" -- "/v1/operators/bench/events" "$key" "$size" "batch$size" \
    | grep -E 'Requests/sec|Latency|50%|99%|Non-2xx'
  metrics
done
kill %1; wait %1 2>/dev/null || true

echo "== micro-benchmarks (criterion): the plugin call beside the native rules, the parsers"
cargo bench -p bench --bench host_parts -- --warm-up-time 1 --measurement-time 5 2>/dev/null | grep -E '^[a-z_]+/|time:|thrpt:'

