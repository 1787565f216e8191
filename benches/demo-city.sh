# Sourced by the benchmark scripts: the stores they run on and each one's serve flags,
# the PostgreSQL history of their servers, a wait until a --demo server has registered
# the whole demo city (2,350 car parks), the durable store's commits from the metrics,
# and `run_on_each_store` for the gRPC bench binaries.

# Benchmarks measure the server's throughput from one loopback address and a few
# credentials: the per-caller rate limits (on by default) are off for them. Set in the
# environment, so an older build under comparison (benches/ab.sh) ignores them.
export CITYPARK_RATE_OPERATOR=0 CITYPARK_RATE_DRIVER=0 CITYPARK_RATE_ANONYMOUS=0

# A Redis deployment's history is PostgreSQL (--history, required with --store): a
# database of the bench's own on the server at $CITYPARK_BENCH_POSTGRES (default the
# local one), dropped by `drop_bench_history` (the scripts' EXIT traps call it), and a
# plate key in `$1`. Set as variables, which an older build (benches/ab.sh) ignores;
# the embedded (memory, durable) runs use the same history.
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

# The stores every benchmark runs on, in this order: `memory` (embedded, kept nowhere:
# the behaviour before the durable store, now `--store memory`), `durable` (embedded,
# every write synced to `live.sqlite3` before it is acknowledged: the default of serve)
# and `redis` (a standalone Redis started by the script). `BENCH_STORES=durable` in the
# environment runs only some.
BENCH_STORES=${BENCH_STORES:-"memory durable redis"}

# Sets the array `store_args` to the serve flags for store `$1`: the Redis URL is `$2`,
# and a durable store gets a new empty data directory under `$3`, so no run loads the
# live state another run left. A build from before the durable store (benches/ab.sh
# compares one) has neither `--store memory` nor a durable default: its embedded store
# is the memory one, so `memory` gets no flag and `durable` returns 1 (the caller skips
# the store).
store_args() {
  local store=$1 redis_url=$2 dir=$3 citypark=${4:-./target/release/citypark}
  local durable=1
  "$citypark" serve --help 2>/dev/null | grep -q 'live.sqlite3' || durable=0
  case $store in
    memory)
      store_args=()
      if [ "$durable" = 1 ]; then store_args=(--store memory); fi ;;
    durable)
      [ "$durable" = 1 ] || return 1
      store_args=(--data-dir "$(mktemp -d "$dir/live-durable.XXXXXX")") ;;
    redis) store_args=(--store "$redis_url") ;;
    *) echo "unknown store $store" >&2; exit 1 ;;
  esac
}

# The metric lines that count what a client asked to be written (an awk pattern):
# applied occupancy reports, and the successful calls of the methods that write.
# A call may write several records in one group; it counts once.
WRITE_OPS='^citypark_ingest_reports_total\\{result="applied"|^citypark_grpc_requests_total\\{method="citypark\\.v1\\.[A-Za-z]+/(UpsertCarPark|DeleteCarPark|CreateReservation|CancelReservation|CheckIn|CheckOut|OfferSpace|UpdateOffer|WithdrawOffer|BookOffer|CancelBooking|LinkPlate|UnlinkPlate|TopUp)",code="ok"\\}'

# The durable store's transactions so far, from the metrics on port `$1`, and the sum
# of the $WRITE_OPS lines: "commits seconds_sum seconds_count writes". (Rendering the
# metrics folds the histogram's pending samples in, so its count is the counter's.)
store_commits() {
  (curl -s "http://127.0.0.1:$1/metrics" || true) | awk -v ops="$WRITE_OPS" '
    /^citypark_store_commits_total\{result="ok"\}/ {c += $2}
    /^citypark_store_commit_duration_seconds_sum/ {s += $2}
    /^citypark_store_commit_duration_seconds_count/ {n += $2}
    $0 ~ ops {o += $NF}
    END {printf "%d %.6f %d %d\n", c, s, n, o}'
}

# Prints what the durable store on metrics port `$1` did since the `store_commits`
# snapshot `$2`: its transactions (each one fsync), the writes asked for (all the
# server's: the demo operators' too) per transaction, and the mean time to write and
# sync one.
durable_commits() {
  local -a before after
  read -r -a before <<<"$2"
  read -r -a after <<<"$(store_commits "$1")"
  python3 -c '
import sys
c0, s0, n0, o0, c1, s1, n1, o1 = map(float, sys.argv[1:9])
commits, ops = c1 - c0, o1 - o0
if commits <= 0:
    print("durable: no commits")
else:
    mean = f", {1000 * (s1 - s0) / (n1 - n0):.2f} ms a commit (write + fsync), mean" if n1 > n0 else ""
    print(f"durable: {ops / commits:.1f} writes per commit ({ops:.0f} applied reports and write calls in {commits:.0f} commits){mean}")
' "${before[@]}" "${after[@]}"
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

# Runs the gRPC bench binary `$1` (benches/$1.rs) against a --demo server on each of
# $BENCH_STORES (memory, durable, then a standalone Redis started here); `$2` names it
# in the output. A function `after_demo_city PORT` defined by the caller, if any, runs
# once the city is registered (a further wait). Rounds and seconds come from `$3` and
# `$4`. On the durable store it also prints the store's commits over the bench run.
run_on_each_store() {
  local name=$1 title=$2 rounds=${3:-3} seconds=${4:-3}
  command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
  local citypark=./target/release/citypark bench redis_port=${REDIS_PORT:-16391}
  # CITYPARK_BIN and CITYPARK_BENCH_BIN, when both set, are the server and the bench
  # client to use instead of building this tree's (an A/B of two builds).
  if [ -n "${CITYPARK_BIN:-}" ] && [ -n "${CITYPARK_BENCH_BIN:-}" ]; then
    citypark=$CITYPARK_BIN bench=$CITYPARK_BENCH_BIN
  else
    cargo build --release --quiet --bins --bench "$name"
    bench=$(ls -t target/release/deps/"$name"-* | grep -v '\.d$' | head -1)
  fi
  # Global: the EXIT trap reads them after this function has returned.
  out=""
  out=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; drop_bench_history; rm -rf "$out"' EXIT
  bench_history "$out"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
    --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
  pids+=($!)
  sleep 0.5
  local store before
  for store in $BENCH_STORES; do
    local port=$((50300 + ${#pids[@]})) mport=$((9800 + ${#pids[@]}))
    local args=(serve --demo --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --http-addr 127.0.0.1:0 --log warn)
    store_args "$store" "redis://127.0.0.1:$redis_port/0" "$out" "$citypark" || { echo "== $store: skipped (no such store in $citypark)"; continue; }
    args+=("${store_args[@]}")
    "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
    pids+=($!)
    wait_for_demo_city "$mport"
    if declare -F after_demo_city >/dev/null; then after_demo_city "$mport"; fi
    echo "== $store: $title (tonic client)"
    before=$(store_commits "$mport")
    CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_ROUNDS=$rounds \
      CITYPARK_BENCH_SECONDS=$seconds CITYPARK_BENCH_METRICS="http://127.0.0.1:$mport/metrics" "$bench"
    [ "$store" = durable ] && durable_commits "$mport" "$before"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  done
}
