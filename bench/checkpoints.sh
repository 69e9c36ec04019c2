#!/usr/bin/env bash
# Issue 15: what a late event, a statement and verify cost as history grows. For each size in
# SIZES, two RevShare operators (10 affiliates, 500 customers) are filled through the import
# route: one with every event in one month (2025-01), closed; one with the events spread over
# ten months (2025-01 to 2025-10), each closed in order. Then, timed through HTTP (curl):
# a late wager into the latest closed month, into the oldest of ten, one affiliate's statement,
# a full verify (events/s), and a verify job that goes on from the last one after 1,000 more
# events (`"start": "last_verified"`). Usage: SIZES="10000 100000 1000000" bench/checkpoints.sh
# HOST_BIN=path skips the build (a binary built by `cargo build --release`). SERVE_ARGS are
# passed to the host's `serve` (say, SERVE_ARGS="--ledger-cache-bytes 8589934592"); DROP_CACHES=1
# (as root) empties the kernel's page cache between filling and timing, as a cold disk.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"10000 100000"}
export COMMISSION_HOST_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
[ -n "${HOST_BIN:-}" ] || cargo build --release -p commission-host >/dev/null
[ -e target/wasm32-wasip2/plugin/revshare.wasm ] || cargo build-plugins >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
H=http://127.0.0.1:18083
${HOST_BIN:-target/release/commission-host} serve --data "$work/data" --listen 127.0.0.1:18083 ${SERVE_ARGS:-} >"$work/host.out" 2>"$work/host.err" &
until grep -q listening "$work/host.out"; do sleep 0.2; done
admin=(-H "Authorization: Bearer $COMMISSION_HOST_ADMIN_TOKEN")
ms() { awk '{ printf "%d", $1 * 1000 }'; }

setup() { # operator months size
  local op=$1 months=$2 size=$3 created key
  created=$(curl -s -X POST $H/v1/operators "${admin[@]}" -d "{\"id\":\"$op\",\"name\":\"$op\",\"currency\":\"USD\"}")
  key=$(echo "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  curl -s -o /dev/null -X PUT $H/v1/operators/$op/limits "${admin[@]}" -d '{"stored_bytes": 100000000000}'
  curl -s -o /dev/null -X POST "$H/v1/operators/$op/plugins?activate=true" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/wasm' --data-binary @target/wasm32-wasip2/plugin/revshare.wasm
  for a in 0 1 2 3 4 5 6 7 8 9; do
    curl -s -o /dev/null -X PUT $H/v1/operators/$op/affiliates/aff$a -H "Authorization: Bearer $key" \
      -d '{"deal":{"revshare_percent":"30"}}'
  done
  awk -v n="$size" -v months="$months" 'BEGIN {
    for (c = 0; c < 500; c++)
      printf "{\"id\":\"r%d\",\"type\":\"registration\",\"customer\":\"c%d\",\"affiliate\":\"aff%d\",\"occurred_at\":\"2025-01-01T00:00:00Z\"}\n", c, c, c % 10
    for (i = 500; i < n; i++) {
      m = 1 + int((i - 500) * months / (n - 500)); day = 1 + (i % 27)
      printf "{\"id\":\"e%d\",\"type\":\"%s\",\"customer\":\"c%d\",\"amount\":\"%d\",\"occurred_at\":\"2025-%02d-%02dT%02d:00:00Z\"}\n",
        i, (i % 3 == 0 ? "win" : "wager"), i % 500, 1 + i % 50, m, day, i % 24
    }
  }' >"$work/$op.ndjson"
  local started=$(date +%s)
  curl -s -o "$work/$op.import" -X POST "$H/v1/operators/$op/imports?format=ndjson" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/x-ndjson' --data-binary @"$work/$op.ndjson"
  echo "   imported $size events in $(( $(date +%s) - started )) s: $(head -c 200 "$work/$op.import")" >&2
  for m in $(seq 1 "$months"); do
    curl -s -o /dev/null -X POST "$H/v1/operators/$op/periods/2025-$(printf %02d "$m")/close" -H "Authorization: Bearer $key"
  done
  echo "$key"
}

late() { # operator key id month -> ms of three late events, one after the other
  for i in 1 2 3; do
    curl -s -o "$work/late.out" -w '%{time_total}\n' -X POST "$H/v1/operators/$1/events" -H "Authorization: Bearer $2" \
      -d "{\"id\":\"$3-$i\",\"type\":\"wager\",\"customer\":\"c$i\",\"amount\":\"100\",\"occurred_at\":\"2025-$4-20T10:00:00Z\"}" | ms
    printf ' '
  done
}

verify_job() { # operator key body -> ms from the start to done, and where it replayed from
  local started=$(date +%s%N) url answer
  url=$(curl -s -X POST "$H/v1/operators/$1/verify-jobs" -H "Authorization: Bearer $2" -d "$3" | sed -E 's/.*"url":"([^"]+)".*/\1/')
  for _ in $(seq 1 30000); do # at most 10 minutes
    answer=$(curl -s "$H$url" -H "Authorization: Bearer $2")
    echo "$answer" | grep -q '"status":"running"' || break
    sleep 0.02
  done
  echo "$(( ($(date +%s%N) - started) / 1000000 )) ms, from $(echo "$answer" | sed -E 's/.*"verified_from":([0-9]+).*/\1/')"
}

for size in $SIZES; do
  key1=$(setup "one$size" 1 "$size")
  key10=$(setup "ten$size" 10 "$size")
  if [ -n "${DROP_CACHES:-}" ]; then # the kernel's page cache emptied (root): reads not in sled's own cache go to the disk
    sync && echo 3 >/proc/sys/vm/drop_caches
  fi
  echo "== $size events of history ($(du -sh "$work/data" | cut -f1) on disk for both)"
  echo "late event into the latest closed month, one month:  $(late "one$size" "$key1" late1 01) ms"
  echo "late event into the latest closed month, ten months: $(late "ten$size" "$key10" late10 10) ms"
  echo "late event into the oldest of ten closed months:     $(late "ten$size" "$key10" late11 01) ms"
  t=""
  for a in aff1 aff2 aff3; do
    t="$t$(curl -s -o /dev/null -w '%{time_total}\n' "$H/v1/operators/one$size/periods/2025-01/statement?affiliate=$a" -H "Authorization: Bearer $key1" | ms) "
  done
  echo "one affiliate's statement (from storage, its first 1,000 lines), one month, three affiliates: $t ms"
  bytes=$(curl -s "$H/v1/operators/one$size/periods/2025-01/statement?affiliate=aff1&lines_limit=100" -H "Authorization: Bearer $key1" | wc -c)
  echo "   (a page of 100 lines is $bytes bytes of JSON, both views)"
  t=$(curl -s -o "$work/verify.out" -w '%{time_total}\n' -X POST "$H/v1/operators/one$size/verify" -H "Authorization: Bearer $key1" | ms)
  echo "full verify, one month: $t ms ($(( size * 1000 / (t + 1) )) events/s): $(head -c 120 "$work/verify.out")"
  t=$(curl -s -o "$work/verify.out" -w '%{time_total}\n' -X POST "$H/v1/operators/ten$size/verify" -H "Authorization: Bearer $key10" | ms)
  echo "full verify, ten months: $t ms ($(( size * 1000 / (t + 1) )) events/s): $(head -c 120 "$work/verify.out")"
  echo "   (events evaluated ahead by the verifies' helpers: $(curl -s "$H/metrics" "${admin[@]}" | grep '^commission_host_verify_evaluated_ahead_total' | cut -d' ' -f2))"
  echo "   (periodic checkpoints written: $(curl -s "$H/metrics" "${admin[@]}" | grep '^commission_host_periodic_checkpoints_total' | sed -E 's/.*operator="([^"]+)",kind="([^"]+)"} /\1 \2 /' | tr '\n' ' '))"
  echo "verify job from the first event, ten months: $(verify_job "ten$size" "$key10" '{}')"
  awk -v n="$size" 'BEGIN { for (i = 0; i < 1000; i++)
    printf "{\"id\":\"more%d\",\"type\":\"wager\",\"customer\":\"c%d\",\"amount\":\"10\",\"occurred_at\":\"2025-11-02T10:00:00Z\"}\n", i, i % 500 }' >"$work/more.ndjson"
  curl -s -o /dev/null -X POST "$H/v1/operators/ten$size/imports?format=ndjson" -H "Authorization: Bearer $key10" \
    -H 'Content-Type: application/x-ndjson' --data-binary @"$work/more.ndjson"
  echo "then 1,000 more events, and a verify job from the last verified point: $(verify_job "ten$size" "$key10" '{"start":"last_verified"}')"
  for op in "one$size" "ten$size"; do
    sed 's/\x1b\[[0-9;]*m//g' "$work/host.err" | grep "checkpoint before" | grep "operator=\"\?$op\"\? " \
      | sed -E 's/.*seq=([0-9]+).*bytes=([0-9]+).*keys=([0-9]+).*/\1 \2 \3/' \
      | awk -v op="$op" '{ n++; b += $2; k = $3 } END { printf "checkpoints of %s: %d, %d bytes of JSON in all, %d state keys in the last\n", op, n, b, k }'
  done
done
