#!/usr/bin/env bash
# Sessions benchmark: gate reports over Ingest.Publish (each the entry or the exit of
# one car with its plate, so every report opens or closes a parking session, matched by
# its plate) against Ping (same tonic client, same run), next to plain Publish (deltas
# without plates) in the same server; on the embedded store kept in memory (`--store
# memory`), on the durable embedded store (the default: live.sqlite3 in a new data
# directory) and on a standalone Redis started here. The plates are not linked:
# sessions close at the barrier, no charge.
# Usage: benches/sessions.sh [rounds] [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
rounds=${1:-5}
seconds=${2:-3}
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
cargo build --release --quiet --bins --bench ingest
citypark=./target/release/citypark
bench=$(ls -t target/release/deps/ingest-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; drop_bench_history; rm -rf "$out"' EXIT
bench_history "$out"
key=bench-key
hash=$("$citypark" hash-key "$key")
redis_port=${REDIS_PORT:-16392}
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
pids+=($!)
sleep 0.5
for store in $BENCH_STORES; do
  port=$((50400 + ${#pids[@]})); mport=$((9900 + ${#pids[@]}))
  args=(serve --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --http-addr 127.0.0.1:0 --log warn --api-keys "bench:$hash")
  store_args "$store" "redis://127.0.0.1:$redis_port/0" "$out" "$citypark" || { echo "== $store: skipped (no such store in $citypark)"; continue; }
  args+=("${store_args[@]}")
  "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$mport/metrics" >/dev/null && break; sleep 0.5; done
  for plates in 0 1; do
    echo "== $store: $([ $plates = 1 ] && echo 'Publish with plates (sessions)' || echo 'Publish without plates')"
    before=$(store_commits "$mport")
    CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_KEY=$key CITYPARK_BENCH_ROUNDS=$rounds \
      CITYPARK_BENCH_SECONDS=$seconds CITYPARK_BENCH_PLATES=$plates "$bench"
    [ "$store" = durable ] && durable_commits "$mport" "$before"
  done
  echo "== $store: sessions by result"
  curl -s "http://127.0.0.1:$mport/metrics" | grep '^citypark_sessions_total' || true
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
done
