#!/usr/bin/env bash
# History benchmarks (benches/history.rs), on the embedded store kept in memory
# (`memory`: the figures of record in BENCHMARKS.md) and on a standalone Redis started
# here, with a PostgreSQL history (a database of their own on the server at
# $CITYPARK_BENCH_POSTGRES, default the local one, dropped at the end):
#   1. drain: N finished sessions in the live store moved to history (sessions/s), then
#      ListMySessions over them (p50/p99, and calls/s against Ping);
#   2. gates: N sessions through Ingest.Publish into the real binary (hot window and
#      tombstone grace of one minute), twice; its resident memory and Redis's
#      used_memory after each run's hand-off (the second should leave them where the
#      first did).
# Usage: benches/history.sh [sessions] [parts: drain,gates]
#   (CITYPARK_BENCH_STORES="redis" runs one store only, default "memory redis";
#   "durable" runs the gates on the durable embedded store, serve's default, in a data
#   directory of its own — the drain runs in this process on the memory store only, so
#   it skips durable; "embedded" is the memory store's old name. CITYPARK_BENCH_SERVE_ARGS
#   adds flags to the gates' server, e.g. "--change-buffer 64")
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
sessions=${1:-1000000}
parts=${2:-drain,gates}
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
command -v psql >/dev/null || { echo "psql missing: apt-get install -y postgresql-client" >&2; exit 1; }
pg=${CITYPARK_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
cargo build --release --quiet --bins --bench history
citypark=./target/release/citypark
bench=$(ls -t target/release/deps/history-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
pids=()
dbs=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for db in "${dbs[@]}"; do psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
  rm -rf "$out"
}
trap cleanup EXIT
new_db() {
  local name="citypark_bench_$$_${#dbs[@]}"
  psql -q "$pg/postgres" -c "CREATE DATABASE $name" >/dev/null
  dbs+=("$name")
  db_url="$pg/$name"
}
redis_port=${REDIS_PORT:-16393}
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
pids+=($!)
sleep 0.5
redis_url="redis://127.0.0.1:$redis_port/0"

if [[ $parts == *drain* ]]; then
  for store in ${CITYPARK_BENCH_STORES:-memory redis}; do
    [ "$store" = embedded ] && store=memory
    if [ "$store" = durable ]; then
      echo "== durable: drain skipped (benches/history.rs drains an in-process memory or Redis store)"
      continue
    fi
    echo "== $store: drain"
    new_db
    redis_env=()
    [ "$store" = redis ] && redis_env=(CITYPARK_BENCH_REDIS="$redis_url")
    env CITYPARK_BENCH_MODE=drain CITYPARK_BENCH_SESSIONS="$sessions" CITYPARK_BENCH_HISTORY="$db_url" \
      "${redis_env[@]}" "$bench"
  done
fi

if [[ $parts == *gates* ]]; then
  key=bench-key
  hash=$("$citypark" hash-key "$key")
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$out/plate.key"
  for store in ${CITYPARK_BENCH_STORES:-memory redis}; do
    [ "$store" = embedded ] && store=memory
    echo "== $store: gates"
    new_db
    redis-cli -p "$redis_port" flushall >/dev/null
    port=$((50500 + ${#pids[@]})); mport=$((9950 + ${#pids[@]}))
    args=(serve --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --http-addr 127.0.0.1:0
      --log warn --api-keys "bench:$hash" --hot-window-minutes 1 --tombstone-grace-minutes 1
      --history "$db_url" --history-plate-key-file "$out/plate.key" --data-dir "$out/$store")
    # shellcheck disable=SC2206 # flags, split on spaces on purpose
    args+=(${CITYPARK_BENCH_SERVE_ARGS:-})
    redis_env=()
    case $store in
      # The memory store is what the figures of record measured (before the durable
      # store became serve's default); durable keeps its live state in --data-dir
      # "$out/durable", new for this run.
      memory) args+=(--store memory) ;;
      durable) ;;
      redis)
        args+=(--store "$redis_url")
        redis_env=(CITYPARK_BENCH_REDIS="$redis_url") ;;
      *) echo "unknown store $store" >&2; exit 1 ;;
    esac
    "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$mport/metrics" >/dev/null && break; sleep 0.5; done
    env CITYPARK_BENCH_MODE=gates CITYPARK_BENCH_SESSIONS="$sessions" CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" \
      CITYPARK_BENCH_KEY=$key CITYPARK_BENCH_METRICS="http://127.0.0.1:$mport/metrics" \
      CITYPARK_BENCH_PID="${pids[-1]}" "${redis_env[@]}" "$bench"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  done
fi
