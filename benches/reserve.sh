#!/usr/bin/env bash
# Reservation benchmark: CreateReservation against Ping (same tonic client, same run),
# Redis round trips per reservation, and the 1,000-driver race, on the embedded store
# kept in memory (`--store memory`), on the durable embedded store (the default:
# live.sqlite3 in a new data directory; its writes per commit too) and on a standalone
# Redis started here. Each server runs --demo (its driver tokens are signed with the
# demo secret) with the demo's operators streaming occupancy.
# Usage: benches/reserve.sh [rounds] [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/demo-city.sh
source benches/demo-city.sh
run_on_each_store reserve "CreateReservation" "${1:-3}" "${2:-3}"
