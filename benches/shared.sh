#!/usr/bin/env bash
# Shared-parking benchmark: SearchOffers, FindNearby with include_shared and BookOffer
# against Ping (same tonic client, same run), on the embedded store kept in memory
# (`--store memory`), on the durable embedded store (the default: live.sqlite3 in a new
# data directory; its writes per commit too) and on a standalone Redis started here.
# Each server runs --demo (its driver tokens are signed with the demo secret) with the
# demo's operators streaming occupancy.
# Usage: benches/shared.sh [rounds] [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
# The demo hosts' 2,000 offers come after the car parks.
after_demo_city() {
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$1/metrics" | grep -q '^citypark_shared_offers{state="active"} 2000' && return 0
    sleep 0.5
  done
}
run_on_each_store shared "shared parking" "${1:-3}" "${2:-3}"
