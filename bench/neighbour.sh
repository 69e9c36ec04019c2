#!/usr/bin/env bash
# The noisy neighbour (issue 14): a well-behaved operator's postbacks (multi-event plugin) alone,
# then the same load beside an operator whose plugin hits a limit on every event (fuel, a trap,
# memory, the stack: tests/plugins/hostile, as tests/sequencer.rs uses it). Prints the
# well-behaved operator's p99 and events/s in both runs and their ratios; the target is a p99
# within 3x of its p99 alone. Real release binary, loopback, bounded by DURATION. Needs wrk.
# VERIFY_EVENTS=N adds a third run: the same load while verify jobs run one after the other on a
# third operator with N events of history (its verify helpers use the other cores: compare
# with `bench/neighbour.sh --verify-helpers 0`). Arguments are passed to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
GOOD_CONNECTIONS=${GOOD_CONNECTIONS:-4}
HOSTILE_CONNECTIONS=${HOSTILE_CONNECTIONS:-8}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789abcdef

# NO_BUILD=1 runs the binary and plugins already built (say, by `cargo test --release`).
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p commission-host >/dev/null
  cargo build-plugins >/dev/null
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== machine"; nproc; lscpu | grep 'Model name' || true
target/release/commission-host serve --data "$work/data" --listen 127.0.0.1:18082 "$@" >"$work/host.out" 2>"$work/host.err" &
until grep -q listening "$work/host.out"; do sleep 0.2; done
H=http://127.0.0.1:18082
admin=(-H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN")
declare -A TOKEN
operator() { # id plugin
  local created key
  created=$(curl -s -X POST $H/v1/operators "${admin[@]}" -d "{\"id\":\"$1\",\"name\":\"$1\",\"currency\":\"USD\"}")
  key=$(echo "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  TOKEN[$1]=$(echo "$created" | sed -E 's/.*"postback_token":"([^"]+)".*/\1/')
  curl -s -o /dev/null -X POST "$H/v1/operators/$1/plugins?activate=true" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/wasm' --data-binary @"$2"
  curl -s -o /dev/null -X PUT $H/v1/operators/$1/affiliates/aff1 -H "Authorization: Bearer $key" -d '{"deal":{}}'
}
operator good target/wasm32-wasip2/plugin/multi_event.wasm
operator hostile target/wasm32-wasip2/plugin/hostile.wasm

good() { # run
  wrk -t1 -c"$GOOD_CONNECTIONS" -d"$DURATION" --latency -s bench/postback.lua "$H" -- "/postback/good?token=${TOKEN[good]}" "$1" >"$work/wrk-$1"
  echo "good, $1: $(grep -E 'Requests/sec' "$work/wrk-$1" | tr -s ' ') $(grep -E 'Non-2xx|Socket errors' "$work/wrk-$1" | tr '\n' ' ' || true)"
  grep percentiles "$work/wrk-$1"
}
p99() { sed -E 's/.*p99 ([0-9.]+) ms.*/\1/' <(grep percentiles "$work/wrk-$1"); }
rps() { grep -E 'Requests/sec' "$work/wrk-$1" | awk '{print $2}'; }

echo "-- the well-behaved operator alone, $GOOD_CONNECTIONS connections"
good alone
echo "-- the same, beside the hostile operator on $HOSTILE_CONNECTIONS connections"
wrk -t1 -c"$HOSTILE_CONNECTIONS" -d"$DURATION" --timeout 10s -s bench/hostile.lua "$H" -- "/postback/hostile?token=${TOKEN[hostile]}" attack >"$work/wrk-hostile" &
good beside
wait $(jobs -p | tail -1)
echo "hostile: $(grep -E 'Requests/sec' "$work/wrk-hostile" | tr -s ' ')"
curl -s $H/metrics "${admin[@]}" | grep -E '^commission_host_(throttled_total|throttled_seconds_total|plugin_failures_total|sequencer_turns_total|periodic_checkpoints_total|checkpoint_(capture|write)_seconds_(sum|count))' || true
awk -v a="$(p99 alone)" -v b="$(p99 beside)" -v ra="$(rps alone)" -v rb="$(rps beside)" 'BEGIN {
  printf "p99 beside / alone: %.2f ms / %.2f ms = %.2fx (target <= 3x)\n", b, a, b / a
  printf "events/s beside / alone: %.0f / %.0f = %.2f\n", rb, ra, rb / ra
}'
if [ -n "${VERIFY_EVENTS:-}" ]; then
  created=$(curl -s -X POST $H/v1/operators "${admin[@]}" -d '{"id":"big","name":"big","currency":"USD"}')
  bigkey=$(echo "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  curl -s -o /dev/null -X PUT $H/v1/operators/big/limits "${admin[@]}" -d '{"stored_bytes": 100000000000}'
  curl -s -o /dev/null -X POST "$H/v1/operators/big/plugins?activate=true" -H "Authorization: Bearer $bigkey" \
    -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/multi_event.wasm
  curl -s -o /dev/null -X PUT $H/v1/operators/big/affiliates/aff1 -H "Authorization: Bearer $bigkey" -d '{"deal":{}}'
  awk -v n="$VERIFY_EVENTS" 'BEGIN { for (i = 0; i < n; i++)
    printf "{\"id\":\"v%d\",\"type\":\"deposit\",\"customer\":\"c%d\",\"amount\":\"100\",\"affiliate\":\"aff1\",\"occurred_at\":\"2026-10-15T09:00:00Z\"}\n", i, i % 300 }' >"$work/big.ndjson"
  curl -s -o /dev/null -X POST "$H/v1/operators/big/imports?format=ndjson" -H "Authorization: Bearer $bigkey" \
    -H 'Content-Type: application/x-ndjson' --data-binary @"$work/big.ndjson"
  echo "-- the well-behaved operator beside verify jobs of an operator with $VERIFY_EVENTS events"
  ( end=$((SECONDS + ${DURATION%s} + 2)); jobs=0
    while [ $SECONDS -lt $end ]; do
      url=$(curl -s -X POST "$H/v1/operators/big/verify-jobs" -H "Authorization: Bearer $bigkey" | sed -E 's/.*"url":"([^"]+)".*/\1/')
      jobs=$((jobs + 1))
      while [ $SECONDS -lt $end ] && curl -s "$H$url" -H "Authorization: Bearer $bigkey" | grep -q '"status":"running"'; do sleep 0.1; done
    done
    echo "verify jobs started: $jobs" ) &
  verifier=$!
  sleep 1
  good verifying
  wait $verifier
  curl -s $H/metrics "${admin[@]}" | grep -E '^commission_host_verify_evaluated_ahead_total' || true
  awk -v a="$(p99 alone)" -v b="$(p99 verifying)" -v ra="$(rps alone)" -v rb="$(rps verifying)" 'BEGIN {
    printf "p99 beside verify jobs / alone: %.2f ms / %.2f ms = %.2fx\n", b, a, b / a
    printf "events/s beside verify jobs / alone: %.0f / %.0f = %.2f\n", rb, ra, rb / ra
  }'
fi
kill %1; wait %1 2>/dev/null || true
