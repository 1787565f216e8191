#!/usr/bin/env bash
# Runs the fuzz targets for SECONDS each (default 600), one after the other, from the
# committed seeds (fuzz/seeds/<target>) and the corpus earlier runs grew
# (fuzz/corpus/<target>, not committed), then prints how many inputs each ran.
# Fails if any target found a crash: a panic, a broken check, or an input that took
# more than 10 s (a request that slow is a denial of service); libFuzzer saves the
# input under fuzz/artifacts/<target>/ and the log below says how to replay it.
#
#   fuzz/run.sh [SECONDS] [TARGET...]       every target if none is named
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Builds without a sanitizer: citypark is safe Rust, and AddressSanitizer would halve
# the inputs run in the time. Set FUZZ_SANITIZER=address to build with it anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
[ $# -gt 0 ] && shift
sanitizer=${FUZZ_SANITIZER:-none}
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build of every target first, so the time each runs is spent fuzzing.
cargo +nightly fuzz build --sanitizer "$sanitizer"

summary=()
failed=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  echo "== fuzz $target for ${seconds} s"
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed=1
    # What broke (the panic and its message, or libFuzzer's timeout or out-of-memory),
    # the input, and how to replay it; without the stack frames.
    sed -n '/panicked at\|ALARM: working on\|ERROR: libFuzzer/,$p' "$log" |
      grep -vE '^ +([0-9]+: |at )' | head -n 60
  fi
  # libFuzzer's last words: "Done 123456 runs in 600 second(s)"; a crash ends
  # without them, the inputs run then being in its last status line ("#123456 ...").
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 inputs in \2 s/p' "$log" | tail -n 1)
  if [ -z "$runs" ]; then
    runs="$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#') inputs before the crash"
  fi
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  summary+=("$(printf '%-16s %-7s %s; corpus %s' "$target" "$result" "$runs" "$corpus")")
  rm -f "$log"
done

echo "== fuzz summary (sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$failed"
