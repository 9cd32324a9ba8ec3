#!/usr/bin/env bash
# Run every libFuzzer target for a while and keep new corpus entries that
# raise coverage (then commit tests/fuzz/corpus/). Not part of the test run:
# the normal build already replays every corpus as ctest fuzz_replay_*.
#
#   bench/fuzz.sh [SECONDS_PER_TARGET (60)] [TARGET_SUBSTRING]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
ONLY=${2:-}
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$(nproc)" >/dev/null
B=build/fuzz/tests/fuzz
total_new=0
for bin in "$B"/fuzz_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin"); name=${name#fuzz_}
  [ -n "$ONLY" ] && [[ $name != *"$ONLY"* ]] && continue
  corpus=tests/fuzz/corpus/$name
  work=$(mktemp -d)
  before=$(find "$corpus" -type f | wc -l)
  # Explore into a scratch dir seeded from the corpus, then merge back only
  # the inputs that add coverage.
  "$bin" -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$work" "$corpus" >"$work.log" 2>&1 || {
      echo "$name: FUZZER FOUND A PROBLEM (log: $work.log)"; tail -30 "$work.log"; exit 1; }
  "$bin" -merge=1 "$corpus" "$work" >/dev/null 2>&1
  after=$(find "$corpus" -type f | wc -l)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' || echo '?')
  echo "$name: $runs runs in ${SECS}s, corpus $before -> $after"
  total_new=$((total_new + after - before))
  rm -rf "$work" "$work.log"
done
echo "new corpus entries: $total_new (git add tests/fuzz/corpus to keep them)"
