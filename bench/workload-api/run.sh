#!/usr/bin/env bash
# Workload API latency: FetchX509SVID (first message), FetchJWTSVID, ValidateJWTSVID and
# FetchJWTBundles (first message, the attest-only baseline), p50/p90/p99 over N sequential calls
# from the `spiffe` crate's client against a release `mandate serve --workload-socket`.
#
#   bash bench/workload-api/run.sh
#
# Env knobs:
#   BENCH_CALLS=1000        measured calls per operation
#   BENCH_WARMUP=50         discarded calls per operation first
#   BENCH_SKIP_BUILD=0      1 = do not build (binaries must exist)
#   BENCH_OUT=...           JSON output (default bench/results/workload-api.json)
#   BENCH_KEEP_WORK=0       1 = keep the scratch dir (logs, data dir) after exit
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CALLS="${BENCH_CALLS:-1000}"
WARMUP="${BENCH_WARMUP:-50}"
OUT="${BENCH_OUT:-$REPO/bench/results/workload-api.json}"

log() { printf '[bench] %s\n' "$*" >&2; }
fail() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
[[ "$CALLS" =~ ^[0-9]+$ && "$CALLS" -ge 1 ]] || fail "BENCH_CALLS must be a positive integer"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || fail "BENCH_WARMUP must be a whole number"

cd "$REPO"
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
MANDATE="$TARGET/release/mandate"
CLIENT="$TARGET/release/examples/workload_api_latency"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  cargo build --release -q -p mandate
  cargo build --release -q -p mandate-workload --example workload_api_latency
fi
[[ -x "$MANDATE" && -x "$CLIENT" ]] || fail "missing $MANDATE or $CLIENT"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "${BENCH_KEEP_WORK:-0}" == 1 ]]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

DATA="$WORK/data"
SOCKET="$WORK/run/workload.sock"
# Mandate refuses unknown MANDATE_* variables; run it without the caller's.
UNSET=()
for name in $(env | awk -F= '/^MANDATE_/ {print $1}'); do UNSET+=(-u "$name"); done
clean_env() { env "${UNSET[@]}" "$@"; }

log "starting mandate serve (socket $SOCKET)"
# `env` execs the server, so $! is the server's own pid.
env "${UNSET[@]}" MANDATE_LOG=warn "$MANDATE" --data-dir "$DATA" serve --listen 127.0.0.1:0 \
  --workload-socket "$SOCKET" >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
for _ in $(seq 1 200); do
  grep -q "audit key:" "$WORK/serve.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.err" >&2; fail "server exited"; }
  sleep 0.05
done
[[ -S "$SOCKET" ]] || fail "no socket at $SOCKET"

# The caller is the benchmark client: attest it by uid and the real path of its binary.
clean_env "$MANDATE" --data-dir "$DATA" owner create bench >/dev/null
clean_env "$MANDATE" --data-dir "$DATA" agent create bench-client --owner bench \
  --selector "unix:uid:$(id -u)" --selector "unix:path:$(readlink -f "$CLIENT")" >/dev/null

log "measuring: $CALLS calls per operation after $WARMUP warm-up calls"
"$CLIENT" "unix:$SOCKET" "$CALLS" "$WARMUP" >"$WORK/report.json"

python3 - "$WORK/report.json" "$OUT" <<'PY'
import json, os, platform, subprocess, sys
report = json.load(open(sys.argv[1]))
report["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release()}
report["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
base = report["fetch_jwt_bundles_first"]["p50_us"]
print(f"{'operation':28} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'mean µs':>9}  p50/baseline")
for op in ("fetch_x509_svid_first", "fetch_jwt_svid", "validate_jwt_svid", "fetch_jwt_bundles_first"):
    r = report[op]
    print(f"{op:28} {r['p50_us']:9.0f} {r['p90_us']:9.0f} {r['p99_us']:9.0f} {r['mean_us']:9.0f}  {r['p50_us'] / base:6.2f}x")
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(f"written to {sys.argv[2]}")
PY
