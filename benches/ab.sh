#!/usr/bin/env bash
# A/B of two builds of citypark with benches/ingest.sh, interleaved (A B, then B A,
# …) so the noise of a shared machine falls on both alike; prints the medians of the
# ratios to Ping (E) per build and store (memory, durable, redis; a build from before
# the durable store runs memory and redis only, and `embedded` is what older outputs
# of ingest.sh called the memory store).
# Usage: benches/ab.sh DIR_A DIR_B [rounds] [seconds-per-run]
#   DIR_A, DIR_B: checkouts with `cargo build --release --bins --bench ingest` done.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-3} seconds=${4:-3}
out=$(mktemp -d)
client() { ls -t "$1"/target/release/deps/ingest-* | grep -v '\.d$' | head -1; }
for round in $(seq 1 "$rounds"); do
  order=(A B); [ $((round % 2)) -eq 0 ] && order=(B A)
  for side in "${order[@]}"; do
    dir=$a; [ "$side" = B ] && dir=$b
    echo "== round $round, build $side ($dir)" >&2
    if ! CITYPARK_BIN="$dir/target/release/citypark" CITYPARK_BENCH_BIN="$(client "$dir")" \
      bash benches/ingest.sh 1 "$seconds" >"$out/$side.$round" 2>&1; then
      echo "benches/ingest.sh failed for build $side; its output is in $out/$side.$round" >&2
      tail -5 "$out/$side.$round" >&2
      exit 1
    fi
  done
done
python3 - "$out" "$rounds" <<'PY'
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for side in "AB":
    for r in range(1, rounds + 1):
        text = open(f"{out}/{side}.{r}").read()
        for store, block in re.findall(r"== (memory|durable|embedded|redis): FindNearby \(h2load\)\n(.*?)(?=\n== (?:memory|durable|embedded|redis): FindNearby|\Z)", text, re.S):
            m = re.search(r"ratio ([\d.]+)", block)
            rows.setdefault((store, "FindNearby/Ping", side), []).append(float(m.group(1)))
            m = re.search(r"median: Ping \(E\) (\d+) req/s, Publish (\d+) reports/s, ratio ([\d.]+)", block)
            rows.setdefault((store, "Publish/Ping", side), []).append(float(m.group(3)))
            m = re.search(r"redis: ([\d.]+) reports per round trip", block)
            if m:
                rows.setdefault((store, "reports/round trip", side), []).append(float(m.group(1)))
print("| store | measure | A (median) | B (median) | A runs | B runs |")
print("|---|---|---:|---:|---|---|")
for store in ("memory", "durable", "embedded", "redis"):
    for measure in ("FindNearby/Ping", "Publish/Ping", "reports/round trip"):
        a, b = rows.get((store, measure, "A")), rows.get((store, measure, "B"))
        if a and b:
            print(f"| {store} | {measure} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | {', '.join(f'{x:.2f}' for x in a)} | {', '.join(f'{x:.2f}' for x in b)} |")
PY
rm -rf "$out"
