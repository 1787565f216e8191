#!/usr/bin/env bash
# What citypark's layers cost a call: its Ping (E) against the bare tonic echo of
# benches/echo.rs (same messages, codec and allocator; no admission, metrics,
# gRPC-Web, CORS or connection wrapper), in one run, interleaved, medians.
# Usage: benches/layers.sh [rounds] [seconds-per-run]
#
# citypark runs without --demo on the in-memory store with nothing else running, as
# the issue that asked for it measured (issue 22, item 8); h2load (Debian's
# nghttp2-client) drives both with the same pre-encoded request, -c 10 -m 10 -t 1.
set -euo pipefail
export CITYPARK_RATE_OPERATOR=0 CITYPARK_RATE_DRIVER=0 CITYPARK_RATE_ANONYMOUS=0
cd "$(dirname "$0")/.."

rounds=${1:-3}
seconds=${2:-8}
port=${PORT:-50161}
echo_port=${ECHO_PORT:-50171}

command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
if [ -z "${CITYPARK_BIN:-}" ]; then
  cargo build --release --quiet --bins --bench echo
fi
bin=${CITYPARK_BIN:-./target/release/citypark}
echo_bin=${ECHO_BIN:-$(ls -t target/release/deps/echo-* | grep -v '\.d$' | head -1)}
out=$(mktemp -d)
trap 'kill $server $bare 2>/dev/null || true; rm -rf "$out"' EXIT

printf '\0\0\0\0\0' >"$out/ping.bin" # one gRPC frame: uncompressed, length 0 (Ping{})

"$bin" serve --store memory --grpc-addr 127.0.0.1:$port --http-addr 127.0.0.1:0 \
  --metrics-addr 127.0.0.1:0 --log warn >"$out/server.log" 2>&1 &
server=$!
"$echo_bin" 127.0.0.1:$echo_port >"$out/echo.log" 2>&1 &
bare=$!
for p in $port $echo_port; do
  for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

run() { # port -> calls/s
  h2load -D "$seconds" -c 10 -m 10 -t 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$out/ping.bin" \
    "http://127.0.0.1:$1/citypark.v1.Availability/Ping" 2>&1 |
    awk '/^finished in/ {gsub(",", "", $4); print $4} /^requests:/ {if ($10 != "0") {print "FAILED " $0 > "/dev/stderr"}}'
}

run $echo_port >/dev/null; run $port >/dev/null # warm-up
bare_rates=(); ping_rates=()
for i in $(seq 1 "$rounds"); do
  if [ $((i % 2)) -eq 1 ]; then
    bare_rates+=("$(run $echo_port)"); ping_rates+=("$(run $port)")
  else
    ping_rates+=("$(run $port)"); bare_rates+=("$(run $echo_port)")
  fi
  echo "round $i: bare echo ${bare_rates[-1]} calls/s, citypark Ping ${ping_rates[-1]} calls/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median "${bare_rates[@]}"); p=$(median "${ping_rates[@]}")
echo "median: bare echo $b calls/s, citypark Ping $p calls/s, ratio $(python3 -c "print(f'{$p/$b:.2f}')")"
