#!/usr/bin/env bash
# Policy decision latency (issue 7): p99 of PolicyEngine::decide with 200 policies for one
# resource, against plain Cedar over the full set, and the worst case where all 200 heads match.
#
#   bash bench/policy/run.sh [iterations]     (default 200000)
#
# Builds `bench-policy` (crate mandate-bench-policy, release) and runs it; RESULT lines are
# collected into bench/results/policy.json. Env knobs:
#   BENCH_SKIP_BUILD=1   reuse target/release/bench-policy
#   BENCH_OUT=...        JSON output (default bench/results/policy.json)
#   BENCH_SLICED_ONLY=1, BENCH_REALISTIC_ONLY=1, BENCH_BREAKDOWN=1, BENCH_SLOWEST=n: see bench/README.md
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_OUT:-$REPO/bench/results/policy.json}"
mkdir -p "$(dirname "$OUT")"
cd "$REPO"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release -p mandate-bench-policy
fi
BIN="$REPO/target/release/bench-policy"

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
"$BIN" "${1:-200000}" | tee "$LOG"

grep '^RESULT ' "$LOG" | sed 's/^RESULT //' | tr ' ' '\n' | awk -F= '
    BEGIN { printf "{" } NF == 2 { printf "%s\"%s\": %s", sep, $1, $2; sep = ", " } END { print "}" }' > "$OUT"
echo "wrote $OUT"
