#!/usr/bin/env bash
# A/B of gate reports with plates (benches/ingest.rs with CITYPARK_BENCH_PLATES=1, the
# ratio of Publish to Ping) between two builds, on the embedded store kept in memory
# (`--store memory` where the build has the durable store, as the default), interleaved
# (A B B A): each build gets a warm-up of 20 s of gate reports (about a million
# sessions) and a pause of 45 s; build B runs with a hot window of one minute, so its
# hand-off moves the warm-up's sessions to a PostgreSQL history while the measured
# rounds run; build A (before the history) keeps them.
# Usage: benches/handoff_ab.sh DIR_A DIR_B [rounds] [seconds-per-run]
#   DIR_A, DIR_B: checkouts with `cargo build --release --bins --bench ingest` done.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
a=$1 b=$2 rounds=${3:-3} seconds=${4:-3}
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; drop_bench_history; rm -rf "$out"' EXIT
bench_history "$out"
export CITYPARK_HOT_WINDOW_MINUTES=1 CITYPARK_TOMBSTONE_GRACE_MINUTES=1
client() { ls -t "$1"/target/release/deps/ingest-* | grep -v '\.d$' | head -1; }
key=bench-key
run() {
  local side=$1 dir=$2 port=$((50600 + RANDOM % 100)) mport=$((9700 + RANDOM % 100))
  local hash
  hash=$("$dir/target/release/citypark" hash-key "$key")
  # Memory, as both builds had it: a durable store would also carry one run's live
  # state into the next run of the same build through the shared data directory.
  store_args memory "" "$out" "$dir/target/release/citypark"
  "$dir/target/release/citypark" serve --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport \
    --http-addr 127.0.0.1:0 --log warn --api-keys "bench:$hash" "${store_args[@]}" >"$out/$side.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$mport/metrics" >/dev/null && break; sleep 0.5; done
  local bench
  bench=$(client "$dir")
  CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_KEY=$key CITYPARK_BENCH_ROUNDS=1 \
    CITYPARK_BENCH_SECONDS=20 CITYPARK_BENCH_PLATES=1 "$bench" >/dev/null
  sleep 45
  echo "== build $side: measured while $( [ "$side" = B ] && echo 'the hand-off runs' || echo 'no hand-off exists')"
  CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_KEY=$key CITYPARK_BENCH_ROUNDS=$rounds \
    CITYPARK_BENCH_SECONDS=$seconds CITYPARK_BENCH_PLATES=1 "$bench"
  echo "handed off: $(curl -s "http://127.0.0.1:$mport/metrics" | awk '/^citypark_history_handed_off_total\{kind="session"\}/ {print $2}')"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
}
for side in A B B A; do
  dir=$a; [ "$side" = B ] && dir=$b
  run "$side" "$dir"
done
