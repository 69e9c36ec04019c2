#!/usr/bin/env bash
# Throughput as the ledger grows: fills one operator's ledger with webhook batches of 100 to each
# size in SIZES (events), and at each size measures durable postbacks over 32 connections.
# Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"10000 100000 1000000"}
DURATION=${DURATION:-10s}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
cargo build --release -p commission-host >/dev/null
cargo build-plugins >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
H=http://127.0.0.1:18082
target/release/commission-host serve --data "$work/data" --listen 127.0.0.1:18082 >"$work/host.out" 2>"$work/host.err" &
until grep -q listening "$work/host.out"; do sleep 0.2; done
created=$(curl -s -X POST $H/v1/operators -H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN" -d '{"id":"bench","name":"Bench","currency":"USD"}')
key=$(echo "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
token=$(echo "$created" | sed -E 's/.*"postback_token":"([^"]+)".*/\1/')
curl -s -o /dev/null -X POST "$H/v1/operators/bench/plugins?activate=true" -H "Authorization: Bearer $key" \
  -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/multi_event.wasm
curl -s -o /dev/null -X PUT $H/v1/operators/bench/affiliates/aff1 -H "Authorization: Bearer $key" -d '{"deal":{}}'
stored() {
  curl -s $H/metrics -H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN" \
    | awk '/^commission_host_events_total\{operator="bench"/ { sum += $2 } END { printf "%d", sum }'
}
fill=0
for size in $SIZES; do
  while [ "$(stored)" -lt "$size" ]; do
    fill=$((fill + 1))
    wrk -t2 -c8 -d10s -s bench/webhook.lua "$H" -- "/v1/operators/bench/events" "$key" 100 "fill$fill" >/dev/null
  done
  echo "== $(stored) events stored ($(du -sh "$work/data" | cut -f1) on disk): postbacks, 32 connections"
  wrk -t2 -c32 -d"$DURATION" --latency -s bench/postback.lua "$H" -- "/postback/bench?token=$token" "at$size" \
    | grep -E 'Requests/sec|50%|99%|Non-2xx'
done
