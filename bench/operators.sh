#!/usr/bin/env bash
# Many operators on one host: N operators (default 1,000) each upload the multi-event plugin and
# send one event; then the host restarts and each operator sends one more. Reports the start-up
# time, the time until every operator was served once after the restart (each plugin loaded from
# the compiled-artifact cache, none recompiled), and the host's resident memory.
set -euo pipefail
cd "$(dirname "$0")/.."
OPERATORS=${OPERATORS:-1000}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
cargo build --release -p commission-host >/dev/null
cargo build-plugins >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
H=http://127.0.0.1:18081
admin=(-H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN")

start_host() {
  : >"$work/host.out"
  local started=$(date +%s.%N)
  target/release/commission-host serve --data "$work/data" --listen 127.0.0.1:18081 >"$work/host.out" 2>>"$work/host.err" &
  until grep -q listening "$work/host.out"; do sleep 0.01; done
  echo "start-up: $(echo "$(date +%s.%N) - $started" | bc) s"
}
memory() {
  grep -E 'VmRSS|VmHWM' /proc/$(jobs -p | tail -1)/status | tr -s ' \t' ' ' | tr '\n' ' '; echo
}
send_one_each() {
  local round=$1
  for n in $(seq 1 "$OPERATORS"); do
    [ "$n" = 1 ] || echo "next"
    echo "url = \"$H/v1/operators/op$n/events\""
    echo "header = \"Content-Type: application/json\""
    echo "header = \"Authorization: Bearer $(sed -n "${n}p" "$work/keys")\""
    echo "data = \"{\\\"id\\\":\\\"$round-$n\\\",\\\"type\\\":\\\"deposit\\\",\\\"customer\\\":\\\"c$round\\\",\\\"amount\\\":\\\"100\\\",\\\"affiliate\\\":\\\"aff1\\\"}\""
    echo "output = /dev/null"
    echo "write-out = \"%{http_code}\\\\n\""
  done >"$work/events.curl"
  curl -s -K "$work/events.curl" | sort | uniq -c
}

start_host
: >"$work/keys"
echo "== creating $OPERATORS operators, each with its own upload of the plugin"
started=$(date +%s)
for n in $(seq 1 "$OPERATORS"); do
  key=$(curl -s -X POST $H/v1/operators "${admin[@]}" -d "{\"id\":\"op$n\",\"name\":\"Operator $n\",\"currency\":\"USD\"}" \
    | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  echo "$key" >>"$work/keys"
  curl -s -o /dev/null -X POST "$H/v1/operators/op$n/plugins?activate=true" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/multi_event.wasm
  curl -s -o /dev/null -X PUT "$H/v1/operators/op$n/affiliates/aff1" -H "Authorization: Bearer $key" -d '{"deal":{}}'
done
echo "set-up: $(( $(date +%s) - started )) s"
send_one_each first
echo -n "memory, every operator served once: "; memory

kill %1; wait %1 2>/dev/null || true
echo "== restart"
start_host
echo -n "memory after start-up: "; memory
started=$(date +%s.%N)
send_one_each second
echo "every operator served once after the restart: $(echo "$(date +%s.%N) - $started" | bc) s"
echo -n "memory: "; memory
curl -s $H/metrics "${admin[@]}" | grep -E '^commission_host_plugin_loads_total'
du -sh "$work/data"
