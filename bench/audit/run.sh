#!/usr/bin/env bash
# Audit log targets (issue 6): durable appends/s with group commit, offline verification of a
# 1,000,000-event export, and inclusion/consistency proof latency at 10,000,000 entries.
#
#   bash bench/audit/run.sh
#
# Builds `bench-audit` (crate mandate-bench-audit, release) and runs its three modes; each
# prints a human line and `RESULT key=value` lines, collected into bench/results/audit.json.
# Env knobs:
#   BENCH_APPENDS=200000      events for the append run
#   BENCH_TASKS=2048          concurrent AuditLog::record tasks (group commit batches up to 1024)
#   BENCH_VERIFY=1000000      events written, exported and verified
#   BENCH_PROOF_SIZE=10000000 synthesized leaves for the proof run
#   BENCH_PROOF_SAMPLES=1000  proofs timed (each: one inclusion, one consistency)
#   BENCH_SCRATCH=$TMPDIR     where the temporary databases go (the 10M one is ~1 GB)
#   BENCH_SKIP_BUILD=1        reuse target/release/bench-audit
#   BENCH_OUT=...             JSON output (default bench/results/audit.json)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_OUT:-$REPO/bench/results/audit.json}"
mkdir -p "$(dirname "$OUT")"
cd "$REPO"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release -p mandate-bench-audit
fi
BIN="$REPO/target/release/bench-audit"

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
"$BIN" appends "${BENCH_APPENDS:-200000}" "${BENCH_TASKS:-2048}" | tee -a "$LOG"
"$BIN" verify "${BENCH_VERIFY:-1000000}" | tee -a "$LOG"
"$BIN" proofs "${BENCH_PROOF_SIZE:-10000000}" "${BENCH_PROOF_SAMPLES:-1000}" | tee -a "$LOG"

# RESULT lines -> one JSON object of numbers.
grep '^RESULT ' "$LOG" | sed 's/^RESULT //' | tr ' ' '\n' | awk -F= '
    BEGIN { printf "{" } NF == 2 { printf "%s\"%s\": %s", sep, $1, $2; sep = ", " } END { print "}" }' > "$OUT"
echo
echo "targets: appends >= 50000/s, verify 1M < 10 s, inclusion proof < 1 ms (p50/p99 above)"
echo "wrote $OUT"
