#!/usr/bin/env bash
# Shared-parking benchmark: SearchOffers, FindNearby with include_shared and BookOffer
# against Ping (same tonic client, same run), on the embedded store
# and on a standalone Redis started here. Each server runs --demo (its driver tokens
# are signed with the demo secret) with the demo's operators streaming occupancy.
# Usage: benches/shared.sh [rounds] [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
rounds=${1:-3}
seconds=${2:-3}
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
cargo build --release --quiet --bins --bench shared
citypark=./target/release/citypark
bench=$(ls -t target/release/deps/shared-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"' EXIT

redis_port=${REDIS_PORT:-16391}
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
pids+=($!)
sleep 0.5

for store in embedded redis; do
  port=$((50300 + ${#pids[@]})); mport=$((9800 + ${#pids[@]}))
  args=(serve --demo --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --log warn)
  [ "$store" = redis ] && args+=(--store "redis://127.0.0.1:$redis_port/0")
  "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
  pids+=($!)
  wait_for_demo_city "$mport"
  # And for the demo hosts' 2,000 offers.
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$mport/metrics" | grep -q '^citypark_shared_offers{state="active"} 2000' && break
    sleep 0.5
  done
  echo "== $store: shared parking (tonic client)"
  CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_ROUNDS=$rounds \
    CITYPARK_BENCH_SECONDS=$seconds CITYPARK_BENCH_METRICS="http://127.0.0.1:$mport/metrics" "$bench"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
done
