#!/usr/bin/env bash
# MQTT ingest benchmark: reports applied a second from one device connection through
# a real broker, and the delay from publish to ack (p50, p99), against Ping from the
# same client in the same run. A mosquitto broker is started here, and in turn a
# release server with --mqtt-url on each of $BENCH_STORES (memory, durable, Redis), with
# the demo city and its operators streaming over gRPC throughout.
# Usage: benches/mqtt.sh [rounds] [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
rounds=${1:-5}
seconds=${2:-3}
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$mosquitto" ] || { echo "mosquitto missing: apt-get install -y mosquitto" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
cargo build --release --quiet --bins --bench mqtt
citypark=./target/release/citypark
bench=$(ls -t target/release/deps/mqtt-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; drop_bench_history; rm -rf "$out"' EXIT
bench_history "$out"

mqtt_port=${MQTT_PORT:-18830}
# The broker passes on up to 1,000 unacknowledged QoS 1 messages each way, queues
# without a bound and sends at once (no Nagle): the bench measures citypark, not the
# broker's flow control.
cat >"$out/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
set_tcp_nodelay true
allow_anonymous true
persistence false
max_inflight_messages 1000
max_queued_messages 0
CONF
"$mosquitto" -c "$out/mosquitto.conf" >"$out/mosquitto.log" 2>&1 &
pids+=($!)
redis_port=${REDIS_PORT:-16392}
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no --logfile "$out/redis.log" &
pids+=($!)
sleep 0.5

key=bench-key
hash=$("$citypark" hash-key "$key")
for store in $BENCH_STORES; do
  port=$((50400 + ${#pids[@]})); mport=$((9900 + ${#pids[@]}))
  args=(serve --demo --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$mport --http-addr 127.0.0.1:0
    --log warn --api-keys "bench:$hash" --mqtt-url "mqtt://127.0.0.1:$mqtt_port" --mqtt-client-id "citypark-bench-$store")
  store_args "$store" "redis://127.0.0.1:$redis_port/0" "$out" "$citypark" || { echo "== $store: skipped"; continue; }
  args+=("${store_args[@]}")
  "$citypark" "${args[@]}" >"$out/$store.log" 2>&1 &
  pids+=($!)
  wait_for_demo_city "$mport"
  echo "== $store: MQTT ingest (one device connection, rumqttc)"
  CITYPARK_BENCH_SERVER="http://127.0.0.1:$port" CITYPARK_BENCH_KEY=$key CITYPARK_BENCH_OPERATOR=bench \
    CITYPARK_BENCH_MQTT_PORT=$mqtt_port CITYPARK_BENCH_ROUNDS=$rounds CITYPARK_BENCH_SECONDS=$seconds "$bench"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
done
