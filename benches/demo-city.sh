# Sourced by the benchmark scripts: waits until the --demo server whose metrics are on
# port $1 has registered the whole demo city (2,350 car parks), for at most 60 s.

# Benchmarks measure the server's throughput from one loopback address and a few
# credentials: the per-caller rate limits (on by default) are off for them. Set in the
# environment, so an older build under comparison (benches/ab.sh) ignores them.
export CITYPARK_RATE_OPERATOR=0 CITYPARK_RATE_DRIVER=0 CITYPARK_RATE_ANONYMOUS=0

# A Redis deployment's history is PostgreSQL (--history, required with --store): a
# database of the bench's own on the server at $CITYPARK_BENCH_POSTGRES (default the
# local one), dropped by `drop_bench_history` (the scripts' EXIT traps call it), and a
# plate key in `$1`. Set as variables, which an older build (benches/ab.sh) ignores;
# the embedded runs use the same history.
bench_history() {
  bench_pg=${CITYPARK_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
  bench_db="citypark_bench_$$"
  command -v psql >/dev/null || { echo "psql missing: apt-get install -y postgresql-client" >&2; exit 1; }
  psql -q "$bench_pg/postgres" -c "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null
  psql -q "$bench_pg/postgres" -c "CREATE DATABASE $bench_db" >/dev/null
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1/plate.key"
  export CITYPARK_HISTORY="$bench_pg/$bench_db" CITYPARK_HISTORY_PLATE_KEY_FILE="$1/plate.key" \
    CITYPARK_DATA_DIR="$1/data"
}

drop_bench_history() {
  [ -n "${bench_db:-}" ] && psql -q "$bench_pg/postgres" -c "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null 2>&1
  return 0
}

wait_for_demo_city() {
  local mport=$1 n
  for _ in $(seq 1 120); do
    n=$( (curl -s "http://127.0.0.1:$mport/metrics" || true) | awk '/^citypark_grpc_requests_total\{method="citypark.v1.Registry\/UpsertCarPark",code="ok"\}/ {print $2}')
    [ "${n:-0}" -ge 2350 ] 2>/dev/null && return 0
    sleep 0.5
  done
  echo "the demo city was not registered within 60 s" >&2
}

# Runs the gRPC bench binary `$1` (benches/$1.rs) against a --demo server on the
# embedded store, then on a standalone Redis started here; `$2` names it in the output.
# A function `after_demo_city PORT` defined by the caller, if any, runs once the city is
# registered (a further wait). Rounds and seconds come from `$3` and `$4`.
run_on_each_store() {
  local name=$1 title=$2 rounds=${3:-3} seconds=${4:-3}
  command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
  cargo build --release --quiet --bins --bench "$name"
  local citypark=./target/release/citypark bench redis_port=${REDIS_PORT:-16391}
  # Global: the EXIT trap reads them after this function has returned.
  out=""
  bench=$(ls -t target/release/deps/"$name"-* | grep -v '\.d$' | head -1)
  out=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; drop_bench_history; rm -rf "$out"' EXIT
  bench_history "$out"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
    --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
  pids+=($!)
  sleep 0.5
  for store in embedded redis; do
    local port=$((50300 + ${#pids[@]})) mport=$((9800 + ${#pids[@]}))
    local args=(serve --demo --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --http-addr 127.0.0.1:0 --log warn)
    [ "$store" = redis ] && args+=(--store "redis://127.0.0.1:$redis_port/0")
    "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
    pids+=($!)
    wait_for_demo_city "$mport"
    if declare -F after_demo_city >/dev/null; then after_demo_city "$mport"; fi
    echo "== $store: $title (tonic client)"
    CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_ROUNDS=$rounds \
      CITYPARK_BENCH_SECONDS=$seconds CITYPARK_BENCH_METRICS="http://127.0.0.1:$mport/metrics" "$bench"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  done
}
