#!/usr/bin/env bash
# Plain HTTP/JSON by the Connect protocol against gRPC, on the same server: JSON
# Ingest/Report and Availability/FindNearby over HTTP/1.1 keep-alive, against gRPC
# Ping (E) over HTTP/2, in one run, interleaved, medians; the ratio of each to E.
# Usage: benches/connect.sh [rounds] [seconds-per-run]
#
# The server is the demo city (2,350 car parks) on the in-memory store, its simulated
# operators quiet (a report a minute each, 39 a second in all: enough to keep every
# car park live, as its data goes stale after 90 s, and a FindNearby that finds its
# ten results nearby) so that the calls measured are the load.
# h2load (Debian's nghttp2-client) sends one pre-encoded request over and over: 100
# calls in flight each way (gRPC: -c 10 -m 10 on HTTP/2; HTTP/1.1: -c 100, one call
# per connection at a time, as a keep-alive client pool does). The report is a
# snapshot with restart_sequence, so every call is applied, not a duplicate.
set -euo pipefail
export CITYPARK_RATE_OPERATOR=0 CITYPARK_RATE_DRIVER=0 CITYPARK_RATE_ANONYMOUS=0
cd "$(dirname "$0")/.."

rounds=${1:-3}
seconds=${2:-8}
port=${PORT:-50181}

command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
if [ -z "${CITYPARK_BIN:-}" ]; then
  cargo build --release --quiet --bins
fi
bin=${CITYPARK_BIN:-./target/release/citypark}
out=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$out"' EXIT

printf '\0\0\0\0\0' >"$out/ping.bin" # one gRPC frame: uncompressed, length 0 (Ping{})
cat >"$out/report.json" <<EOF
{"report": {"carParkId": "qd-000001", "sequence": "1", "restartSequence": true,
 "observedAt": "$(date -u +%FT%TZ)",
 "snapshot": {"free": [{"category": "SPACE_CATEGORY_STANDARD", "count": 12}]}}}
EOF
echo '{"location": {"latitude": 36.066, "longitude": 120.383}, "limit": 10}' >"$out/nearby.json"

"$bin" serve --store memory --demo --demo-interval-secs 60 --grpc-addr 127.0.0.1:$port \
  --http-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --log warn >"$out/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
sleep 2 # the demo city registered

url() { echo "http://127.0.0.1:$port/citypark.v1.$1"; }
rate() { # h2load's output -> calls/s; a failed call fails the run
  awk '/^finished in/ {gsub(",", "", $4); print $4}
       /^requests:/ {if ($10 != "0") {print "FAILED " $0 > "/dev/stderr"; exit 1}}
       /^status codes:/ {if ($7 != "0" || $9 != "0") {print "FAILED " $0 > "/dev/stderr"; exit 1}}'
}
run() { # what -> calls/s
  case $1 in
    ping) h2load -D "$seconds" -c 10 -m 10 -t 1 -H 'content-type: application/grpc' \
      -H 'te: trailers' -d "$out/ping.bin" "$(url Availability/Ping)" 2>&1 | rate ;;
    report) h2load --h1 -D "$seconds" -c 100 -m 1 -t 1 -H 'content-type: application/json' \
      -H 'authorization: Bearer demo-key-west-coast-parking' -d "$out/report.json" \
      "$(url Ingest/Report)" 2>&1 | rate ;;
    nearby) h2load --h1 -D "$seconds" -c 100 -m 1 -t 1 -H 'content-type: application/json' \
      -d "$out/nearby.json" "$(url Availability/FindNearby)" 2>&1 | rate ;;
  esac
}

# One call of each, to see it answers what it should.
curl -sf "$(url Ingest/Report)" -H 'content-type: application/json' \
  -H 'authorization: Bearer demo-key-west-coast-parking' -d @"$out/report.json" |
  grep -q REPORT_RESULT_APPLIED || { echo "the JSON report is not applied" >&2; exit 1; }
curl -sf "$(url Availability/FindNearby)" -H 'content-type: application/json' \
  -d @"$out/nearby.json" | grep -q carParkId || { echo "the JSON search finds nothing" >&2; exit 1; }

for w in ping report nearby; do run $w >/dev/null; done # warm-up
ping=(); report=(); nearby=()
for i in $(seq 1 "$rounds"); do
  order=(ping report nearby)
  [ $((i % 2)) -eq 0 ] && order=(nearby report ping)
  for w in "${order[@]}"; do
    r=$(run "$w")
    case $w in ping) ping+=("$r") ;; report) report+=("$r") ;; nearby) nearby+=("$r") ;; esac
  done
  echo "round $i: gRPC Ping ${ping[-1]}, JSON Report ${report[-1]}, JSON FindNearby ${nearby[-1]} calls/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
e=$(median "${ping[@]}"); r=$(median "${report[@]}"); n=$(median "${nearby[@]}")
echo "median: E (gRPC Ping) $e, JSON Report $r ($(python3 -c "print(f'{$r/$e:.2f}')")×E), JSON FindNearby $n ($(python3 -c "print(f'{$n/$e:.2f}')")×E) calls/s"
