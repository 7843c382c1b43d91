#!/usr/bin/env bash
# SVID issuance rate of Mandate's SPIFFE CA (X.509-SVIDs and JWT-SVIDs), release build.
#
#   bash bench/svid-issuance/run.sh
#
# Runs the `svid_issuance` bench of crates/workload (cargo bench = release profile).
# Env knobs:
#   BENCH_SECS=3          seconds per measurement
#   BENCH_CONCURRENCY=64  audited issuances in flight (audit log group commit)
#   BENCH_OUT=...         JSON output (default bench/results/svid-issuance.json)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export BENCH_OUT="${BENCH_OUT:-$REPO/bench/results/svid-issuance.json}"
mkdir -p "$(dirname "$BENCH_OUT")"

cd "$REPO"
exec cargo bench -p mandate-workload --bench svid_issuance
