#!/usr/bin/env bash
# Ingest benchmark: Publish reports/s against Ping (same tonic client, same run), on
# the embedded store kept in memory (`--store memory`), on the durable embedded store
# (the default: live.sqlite3 in a new data directory) and on a standalone Redis started
# here; also FindNearby against Ping with h2load on each, Redis reports per round trip,
# and the durable store's writes per commit (one fsync each).
# Usage: benches/ingest.sh [rounds] [seconds-per-run]
# CITYPARK_BIN and CITYPARK_BENCH_BIN, when both set, are the server and the bench
# client to use instead of building this tree's (benches/ab.sh sets them).
set -euo pipefail
# Benchmarks measure the server's throughput from one loopback address and a few
# credentials: the per-caller rate limits (on by default) are off for them. Set in the
# environment, so an older build under comparison (benches/ab.sh) ignores them.
export CITYPARK_RATE_OPERATOR=0 CITYPARK_RATE_DRIVER=0 CITYPARK_RATE_ANONYMOUS=0
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
rounds=${1:-5}
seconds=${2:-3}
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
if [ -n "${CITYPARK_BIN:-}" ] && [ -n "${CITYPARK_BENCH_BIN:-}" ]; then
  citypark=$CITYPARK_BIN bench=$CITYPARK_BENCH_BIN
else
  cargo build --release --quiet --bins --bench ingest
  citypark=./target/release/citypark
  bench=$(ls -t target/release/deps/ingest-* | grep -v '\.d$' | head -1)
fi
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; drop_bench_history; rm -rf "$out"' EXIT
bench_history "$out"

key=bench-key
hash=$("$citypark" hash-key "$key")
redis_port=${REDIS_PORT:-16390}
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
pids+=($!)
sleep 0.5

python3 - "$out" <<'PY'
import struct, sys
def frame(m): return b"\x00" + struct.pack(">I", len(m)) + m
def double(f, v): return bytes([(f << 3) | 1]) + struct.pack("<d", v)
def sub(f, b): return bytes([(f << 3) | 2, len(b)]) + b
open(f"{sys.argv[1]}/nearby.bin", "wb").write(frame(sub(1, double(1, 36.066) + double(2, 120.383))))
open(f"{sys.argv[1]}/ping.bin", "wb").write(frame(b""))
PY

nearby_ratio() { # port -> "ping nearby ratio" medians over $rounds
  local port=$1 p=() f=()
  for _ in $(seq 1 "$rounds"); do
    for m in Ping:ping FindNearby:nearby; do
      r=$(h2load -n 50000 -c 4 -m 32 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$out/${m#*:}.bin" "http://127.0.0.1:$port/citypark.v1.Availability/${m%%:*}" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
      if [ "${m%%:*}" = Ping ]; then p+=("$r"); else f+=("$r"); fi
    done
  done
  # A run that did not finish (h2load prints no rate) is left out, not divided by.
  python3 -c "import statistics,sys; p=[float(x or 0) for x in sys.argv[1].split(',')]; f=[float(x or 0) for x in sys.argv[2].split(',')]; ok=[(a,b) for a,b in zip(p,f) if a>0 and b>0]; print(f'Ping {statistics.median(a for a,_ in ok):.0f} req/s, FindNearby {statistics.median(b for _,b in ok):.0f} req/s, ratio {statistics.median([b/a for a,b in ok]):.2f}' if ok else 'no complete h2load run')" "$(IFS=,; echo "${p[*]}")" "$(IFS=,; echo "${f[*]}")"
}

for store in $BENCH_STORES; do
  port=$((50200 + ${#pids[@]})); mport=$((9700 + ${#pids[@]}))
  args=(serve --demo --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --http-addr 127.0.0.1:0 --log warn --api-keys "bench:$hash")
  store_args "$store" "redis://127.0.0.1:$redis_port/0" "$out" "$citypark" || { echo "== $store: skipped (no such store in $citypark)"; continue; }
  args+=("${store_args[@]}")
  "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
  pids+=($!)
  wait_for_demo_city "$mport"
  echo "== $store: FindNearby (h2load)"
  nearby_ratio "$port"
  echo "== $store: Publish (tonic client)"
  before=$(store_commits "$mport")
  CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_KEY=$key CITYPARK_BENCH_ROUNDS=$rounds \
    CITYPARK_BENCH_SECONDS=$seconds CITYPARK_BENCH_METRICS="http://127.0.0.1:$mport/metrics" "$bench"
  [ "$store" = durable ] && durable_commits "$mport" "$before"
  echo "== $store: redis round trips by purpose"
  curl -s "http://127.0.0.1:$mport/metrics" | grep '^citypark_redis_round_trips_total' || echo "(none: $store store)"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
done
