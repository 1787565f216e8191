#!/usr/bin/env bash
# gRPC benchmark: FindNearby, and FindNearby with an arrival time (each result's
# forecast then), against the Ping echo baseline (E), same server, same load generator
# (h2load, Debian's nghttp2-client), runs interleaved A/B/C/A/B/C and reported as
# medians. Usage: benches/grpc.sh [rounds] [requests-per-run]
#
# The server is the release binary with the demo city (2,350 car parks, simulated
# operators streaming occupancy meanwhile) on the embedded store kept in memory
# (`--store memory`): the figures of record (BENCHMARKS.md) were taken before the
# durable store became the default, and queries never touch the store anyway, so the
# demo's writes need not pay an fsync here. Requests are pre-encoded gRPC frames, so
# the client costs the same for every method.
set -euo pipefail
# Benchmarks measure the server's throughput from one loopback address and a few
# credentials: the per-caller rate limits (on by default) are off for them. Set in the
# environment, so an older build under comparison (benches/ab.sh) ignores them.
export CITYPARK_RATE_OPERATOR=0 CITYPARK_RATE_DRIVER=0 CITYPARK_RATE_ANONYMOUS=0
cd "$(dirname "$0")/.."

rounds=${1:-5}
requests=${2:-100000}
conns=${CONNS:-4}
streams=${STREAMS:-32}
port=${PORT:-50151}
metrics_port=${METRICS_PORT:-9564}

command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build --release --quiet
out=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$out"' EXIT

# One gRPC frame: flag byte 0 (uncompressed), 4-byte big-endian length, protobuf.
python3 - "$out" <<'PY'
import struct, sys, time
out = sys.argv[1]
def frame(msg): return b"\x00" + struct.pack(">I", len(msg)) + msg
def double(field, v): return bytes([(field << 3) | 1]) + struct.pack("<d", v)
def sub(field, body): return bytes([(field << 3) | 2, len(body)]) + body
def varint(field, v):
    out = bytes([field << 3])
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v: return out
latlng = double(1, 36.066) + double(2, 120.383)
# Twenty minutes from now: valid for the whole run (arrival times reach 7 days ahead).
arrival = sub(14, varint(1, int(time.time()) + 20 * 60))
open(f"{out}/nearby.bin", "wb").write(frame(sub(1, latlng)))          # FindNearby{location}
open(f"{out}/arrive.bin", "wb").write(frame(sub(1, latlng) + arrival)) # ... arrival_time
open(f"{out}/ping.bin", "wb").write(frame(b""))                        # Ping{}
PY

./target/release/citypark serve --demo --store memory --grpc-addr 127.0.0.1:$port --metrics-addr 127.0.0.1:$metrics_port \
  --http-addr 127.0.0.1:0 --log warn >"$out/server.log" 2>&1 &
server=$!
# Wait until the demo city is registered (the demo registers through the API).
for _ in $(seq 1 120); do
  n=$(curl -s "http://127.0.0.1:$metrics_port/metrics" | awk '/^citypark_grpc_requests_total\{method="citypark.v1.Registry\/UpsertCarPark",code="ok"\}/ {print $2}')
  [ "${n:-0}" -ge 2350 ] 2>/dev/null && break
  sleep 0.5
done

run() { # method body -> req/s
  h2load -n "$requests" -c "$conns" -m "$streams" -t 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$out/$2.bin" \
    "http://127.0.0.1:$port/citypark.v1.Availability/$1" 2>&1 |
    awk '/^finished in/ {gsub(",", "", $4); print $4} /^requests:/ {if ($10 != "0") {print "FAILED " $0 > "/dev/stderr"}}'
}

run Ping ping >/dev/null # warm-up
ping=(); nearby=(); arrive=()
for i in $(seq 1 "$rounds"); do
  ping+=("$(run Ping ping)")
  nearby+=("$(run FindNearby nearby)")
  arrive+=("$(run FindNearby arrive)")
  echo "round $i: Ping ${ping[-1]} req/s, FindNearby ${nearby[-1]} req/s, with arrival_time ${arrive[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p=$(median "${ping[@]}"); f=$(median "${nearby[@]}"); a=$(median "${arrive[@]}")
echo "median: Ping (E) $p req/s, FindNearby $f req/s, ratio $(python3 -c "print(f'{$f/$p:.2f}')")"
echo "median: FindNearby with arrival_time $a req/s, ratio $(python3 -c "print(f'{$a/$p:.2f}')")"
