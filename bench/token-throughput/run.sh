#!/usr/bin/env bash
# Token-endpoint throughput benchmark: Mandate vs oidc-provider.
#
#   bash bench/token-throughput/run.sh
#
# Both servers issue EdDSA-signed JWT access tokens (typ at+jwt) for the
# client_credentials grant with a resource indicator; both get the same wrk
# load. See README.md in this directory for what is measured and the targets.
#
# Env knobs:
#   BENCH_CONNS=64 BENCH_THREADS=2 BENCH_DURATION=10   wrk load (seconds)
#   BENCH_WARMUP=2          seconds of discarded wrk warm-up per server (0 = none)
#   BENCH_COLD_RUNS=3       cold-start repetitions (median reported)
#   BENCH_ONLY=both         both | mandate | oidc-provider
#   BENCH_SKIP_BUILD=0      1 = do not run cargo build (binary must exist)
#   MANDATE_BIN=...         Mandate binary (default <target dir>/release/mandate)
#   BENCH_OUT=...           JSON output (default bench/results/token-throughput.json)
#   BENCH_KEEP_WORK=0       1 = keep the scratch dir (logs, data dir) after exit
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LIB="$HERE/benchlib.py"
OP_DIR="$HERE/oidc-provider"

CONNS="${BENCH_CONNS:-64}"
THREADS="${BENCH_THREADS:-2}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
COLD_RUNS="${BENCH_COLD_RUNS:-3}"
ONLY="${BENCH_ONLY:-both}"
OUT="${BENCH_OUT:-$REPO/bench/results/token-throughput.json}"

RESOURCE="https://api.bench.test"
SCOPE="read"
BODY="grant_type=client_credentials&resource=https%3A%2F%2Fapi.bench.test&scope=read"

log() { printf '[bench] %s\n' "$*" >&2; }
fail() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---- argument checks --------------------------------------------------------
strip_s() { local v="${1%s}"; [[ "$v" =~ ^[0-9]+$ ]] || fail "$2 must be a whole number of seconds, got '$1'"; echo "$v"; }
DURATION="$(strip_s "$DURATION" BENCH_DURATION)"
WARMUP="$(strip_s "$WARMUP" BENCH_WARMUP)"
[[ "$CONNS" =~ ^[0-9]+$ && "$CONNS" -ge 1 ]] || fail "BENCH_CONNS must be a positive integer"
[[ "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 ]] || fail "BENCH_THREADS must be a positive integer"
[[ "$CONNS" -ge "$THREADS" ]] || fail "BENCH_CONNS ($CONNS) must be >= BENCH_THREADS ($THREADS)"
[[ "$COLD_RUNS" =~ ^[0-9]+$ && "$COLD_RUNS" -ge 1 ]] || fail "BENCH_COLD_RUNS must be >= 1"
[[ "$DURATION" -ge 1 ]] || fail "BENCH_DURATION must be >= 1"
case "$ONLY" in both|mandate|oidc-provider) ;; *) fail "BENCH_ONLY must be both, mandate or oidc-provider" ;; esac
want() { [[ "$ONLY" == both || "$ONLY" == "$1" ]]; }

# ---- cleanup: every background process dies on exit -------------------------
PIDS=()
WORK=""
PIDFILE=""
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n "$PIDFILE" && -f "$PIDFILE" ]]; then
    # processes started by benchlib.py coldstart (normally already stopped)
    while read -r pid; do [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true; done <"$PIDFILE"
  fi
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ "${BENCH_KEEP_WORK:-0}" == 1 || $rc -ne 0 ]]; then
      log "scratch dir kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg LOGFILE CMD... : start CMD in the background, pid in LAST_PID
start_bg() {
  local logf="$1"; shift
  "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# ---- prerequisites ------------------------------------------------------------
APT_UPDATED=0
apt_install() {
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  command -v apt-get >/dev/null || fail "need $* but apt-get is not available; install it by hand"
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    $sudo apt-get update -qq >&2 || fail "apt-get update failed"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2 || fail "apt-get install $* failed"
}
command -v python3 >/dev/null || apt_install python3
command -v wrk >/dev/null || apt_install wrk
command -v wrk >/dev/null || fail "wrk still not found after install"
if want oidc-provider; then
  command -v node >/dev/null || apt_install nodejs npm
  command -v npm >/dev/null || apt_install npm
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' \
    || fail "oidc-provider needs Node.js >= 20.19 (found $(node --version))"
fi

mkdir -p "$REPO/bench/results"
# Scratch dir on the repo's filesystem (not a tmpfs), so Mandate's durable
# writes really hit the disk. bench/results/ is git-ignored.
WORK="$(mktemp -d "$REPO/bench/results/.token-throughput.XXXXXX")"
PIDFILE="$WORK/coldstart.pids"
PIECES="$WORK/pieces"
mkdir -p "$PIECES/servers"
put() { mkdir -p "$PIECES/servers/$1"; printf '%s\n' "$3" >"$PIECES/servers/$1/$2.json"; }

basic_auth() { # RFC 6749 2.3.1: form-urlencode id and secret, then base64
  python3 -c 'import base64,sys,urllib.parse as u; q=lambda s:u.quote(s,safe=""); print("Basic "+base64.b64encode((q(sys.argv[1])+":"+q(sys.argv[2])).encode()).decode())' "$1" "$2"
}

# run_wrk NAME URL AUTH : warm-up, then measured run; output in $WORK/wrk-NAME.txt
run_wrk() {
  local name="$1" url="$2" auth="$3"
  if [[ "$WARMUP" -gt 0 ]]; then
    log "$name: wrk warm-up ${WARMUP}s"
    BENCH_AUTH="$auth" BENCH_BODY="$BODY" timeout $((WARMUP + 30)) \
      wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$HERE/post.lua" "$url" >"$WORK/wrk-$name-warmup.txt" 2>&1 \
      || fail "$name: wrk warm-up failed: $(cat "$WORK/wrk-$name-warmup.txt")"
  fi
  log "$name: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency POST $url"
  BENCH_AUTH="$auth" BENCH_BODY="$BODY" timeout $((DURATION + 30)) \
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$HERE/post.lua" "$url" >"$WORK/wrk-$name.txt" 2>&1 \
    || fail "$name: wrk failed: $(cat "$WORK/wrk-$name.txt")"
  sed 's/^/    /' "$WORK/wrk-$name.txt" >&2
  local parsed
  parsed="$(python3 "$LIB" parse-wrk "$WORK/wrk-$name.txt")" || fail "$name: could not parse wrk output"
  put "$name" load "$parsed"
}

# measure_running NAME PID READY_URL TOKEN_URL AUTH BAD_AUTH
measure_running() {
  local name="$1" pid="$2" ready="$3" token_url="$4" auth="$5" bad_auth="$6" rss check
  python3 "$LIB" wait-ready "$ready" --pid "$pid" --timeout 30 >/dev/null \
    || fail "$name: server did not become ready at $ready"
  sleep 1 # settle, then idle RSS before any load
  rss="$(python3 "$LIB" rss "$pid")" || fail "$name: cannot read /proc/$pid/status"
  rss="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["vmrss_mib"])' "$rss")"
  put "$name" idle_rss_mib "$rss"
  log "$name: idle RSS $rss MiB (pid $pid)"
  check="$(python3 "$LIB" token-check "$token_url" --auth "$auth" --body "$BODY" --bad-auth "$bad_auth")" \
    || fail "$name: sanity check of the token endpoint failed (see above)"
  put "$name" token_check "$check"
  log "$name: sanity OK: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("JWT header", json.dumps(d["jwt_header"]), "aud", d["aud"], "wrong secret ->", d["bad_credentials_status"])' "$check")"
  run_wrk "$name" "$token_url" "$auth"
  kill -0 "$pid" 2>/dev/null || fail "$name: server (pid $pid) died during the load run"
  rss="$(python3 "$LIB" rss "$pid")" || fail "$name: cannot read /proc/$pid/status"
  rss="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["vmhwm_mib"])' "$rss")"
  put "$name" peak_rss_mib "$rss"
}

# ---- Mandate: build ---------------------------------------------------------------
if want mandate; then
  if [[ -z "${MANDATE_BIN:-}" ]]; then
    MANDATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/mandate"
    [[ "$MANDATE_BIN" = /* ]] || MANDATE_BIN="$REPO/$MANDATE_BIN"
  fi
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    command -v cargo >/dev/null || fail "cargo not found; install Rust or set BENCH_SKIP_BUILD=1 MANDATE_BIN=..."
    log "building Mandate: cargo build --release -p mandate (minutes on a cold machine)"
    (cd "$REPO" && cargo build --release -p mandate) || fail "cargo build --release -p mandate failed"
  fi
  [[ -x "$MANDATE_BIN" ]] || fail "Mandate binary not found at $MANDATE_BIN (build it or set MANDATE_BIN)"
fi

# ---- oidc-provider: install -------------------------------------------------------
if want oidc-provider; then
  want_ver="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["oidc-provider"])' "$OP_DIR/package.json")"
  have_ver="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OP_DIR/node_modules/oidc-provider/package.json" 2>/dev/null || true)"
  if [[ "$have_ver" != "$want_ver" ]]; then
    log "installing oidc-provider@$want_ver (npm ci)"
    (cd "$OP_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || fail "npm ci in $OP_DIR failed"
  fi
fi

# ---- config / environment record ----------------------------------------------------
MANDATE_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO" status --porcelain 2>/dev/null | head -1)" ]]; then MANDATE_REV="$MANDATE_REV+dirty"; fi
export BENCH_J_CONNS="$CONNS" BENCH_J_THREADS="$THREADS" BENCH_J_DURATION="$DURATION" BENCH_J_WARMUP="$WARMUP" \
  BENCH_J_COLD_RUNS="$COLD_RUNS" BENCH_J_BODY="$BODY" BENCH_J_REV="$MANDATE_REV" \
  BENCH_J_FSTYPE="$(stat -f -c %T "$WORK" 2>/dev/null || echo unknown)" \
  BENCH_J_WRK="$(wrk -v 2>&1 | head -1 || true)" \
  BENCH_J_NODE="$(command -v node >/dev/null && node --version || echo none)" \
  BENCH_J_OP="$( (python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OP_DIR/node_modules/oidc-provider/package.json") 2>/dev/null || echo none)"
python3 - "$PIECES/config.json" <<'EOF'
import datetime, json, os, platform, sys
e = os.environ
cfg = {
    "benchmark": "token-throughput",
    "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "config": {
        "connections": int(e["BENCH_J_CONNS"]), "threads": int(e["BENCH_J_THREADS"]),
        "duration_s": int(e["BENCH_J_DURATION"]), "warmup_s": int(e["BENCH_J_WARMUP"]),
        "cold_start_runs": int(e["BENCH_J_COLD_RUNS"]),
        "request": "POST token endpoint, HTTP Basic client auth, body: " + e["BENCH_J_BODY"],
        "cpus": os.cpu_count(),
    },
    "environment": {
        "kernel": platform.release(), "machine": platform.machine(),
        "wrk": e["BENCH_J_WRK"], "node": e["BENCH_J_NODE"],
        "oidc_provider_version": e["BENCH_J_OP"], "mandate_git_rev": e["BENCH_J_REV"],
        "scratch_fs_type": e["BENCH_J_FSTYPE"],
    },
    "targets": {"throughput_ratio_min": 4.0, "idle_rss_mib_max": 40, "cold_start_ms_max": 200},
    "notes": [
        "wrk and the server under test run on the same machine and share its CPUs; servers are run one after the other",
        "oidc-provider: one node process (NODE_ENV=production, no cluster), default in-memory adapter; its JWT access tokens are not persisted",
        "Mandate: every issuance is durably audited before the response",
        "throughput ratio uses 2xx req/s; a run where most responses are non-2xx is INVALID and gets no ratio",
    ],
}
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF

# ---- oidc-provider ---------------------------------------------------------------------
if want oidc-provider; then
  log "=== oidc-provider $BENCH_J_OP (node $BENCH_J_NODE, single process)"
  OP_AUTH="$(basic_auth bench secret)"
  OP_BAD="$(basic_auth bench not-the-secret)"
  put oidc-provider info "$(printf '{"version": "%s", "process_model": "single node process, NODE_ENV=production", "token_endpoint": "/token"}' "$BENCH_J_OP")"

  cs="$(python3 "$LIB" coldstart --ready-url 'http://127.0.0.1:{port}/token' --post-body "$BODY" --auth "$OP_AUTH" \
        --runs "$COLD_RUNS" --log "$WORK/oidc-provider-coldstart.log" --pidfile "$PIDFILE" -- \
        env NODE_ENV=production 'PORT={port}' node "$OP_DIR/server.mjs")" \
    || fail "oidc-provider cold start measurement failed (log: $WORK/oidc-provider-coldstart.log)"
  put oidc-provider cold_start_to_first_token_ms "$cs"
  log "oidc-provider: cold start to first token $cs"

  OP_PORT="$(python3 "$LIB" freeport)"
  start_bg "$WORK/oidc-provider.log" env NODE_ENV=production PORT="$OP_PORT" node "$OP_DIR/server.mjs"
  OP_PID="$LAST_PID"
  measure_running oidc-provider "$OP_PID" "http://127.0.0.1:$OP_PORT/.well-known/openid-configuration" \
    "http://127.0.0.1:$OP_PORT/token" "$OP_AUTH" "$OP_BAD"
  stop_pid "$OP_PID"
fi

# ---- Mandate -------------------------------------------------------------------------------
# mandate_cli ARGS... : run a registry command against $MDATA; stdout captured in CLI_OUT
mandate_cli() {
  local rc=0
  CLI_OUT="$(cd "$WORK" && MANDATE_DATA_DIR="$MDATA" "$MANDATE_BIN" --data-dir "$MDATA" "$@" 2>"$WORK/cli.err")" || rc=$?
  if [[ $rc -eq 2 ]] && grep -qi 'unexpected argument\|usage' "$WORK/cli.err"; then
    # --data-dir may only be accepted after the subcommand
    rc=0
    CLI_OUT="$(cd "$WORK" && MANDATE_DATA_DIR="$MDATA" "$MANDATE_BIN" "$@" --data-dir "$MDATA" 2>"$WORK/cli.err")" || rc=$?
  fi
  if [[ $rc -ne 0 ]]; then
    fail "'mandate $*' exited with $rc
--- stdout ---
$CLI_OUT
--- stderr ---
$(cat "$WORK/cli.err")"
  fi
}

if want mandate; then
  log "=== Mandate ($MANDATE_BIN, rev $MANDATE_REV)"
  MDATA="$WORK/mandate-data"
  [[ ! -e "$MDATA" ]] || fail "data dir $MDATA already exists"

  # 1. First-ever start on a fresh data dir (creates SQLite + keys) -> /healthz 200.
  fs="$(python3 "$LIB" coldstart --ready-url 'http://127.0.0.1:{port}/healthz' --runs 1 \
        --log "$WORK/mandate-first-start.log" --pidfile "$PIDFILE" -- \
        "$MANDATE_BIN" serve --data-dir "$MDATA" --listen '127.0.0.1:{port}')" \
    || fail "Mandate first start failed; output: $(tail -n 30 "$WORK/mandate-first-start.log" 2>/dev/null)"
  put mandate first_start_to_healthz_ms "$fs"
  log "mandate: first-ever start (fresh data dir) to /healthz 200: $fs"
  [[ -d "$MDATA" ]] || fail "'mandate serve --data-dir $MDATA' did not create the data dir"

  # 2. Register owner, resource, agent, client (CLI writes the data dir directly).
  mandate_cli owner create alice
  mandate_cli resource create "$RESOURCE" --scope "$SCOPE"
  mandate_cli agent create bench-bot --owner alice --scope "$SCOPE"
  mandate_cli client create --agent bench-bot --json
  CREDS="$(python3 - "$CLI_OUT" <<'EOF'
import json, sys
out = sys.argv[1].strip()
cands = [out] + [l for l in reversed(out.splitlines()) if l.strip().startswith("{")]
for c in cands:
    try:
        d = json.loads(c)
    except ValueError:
        continue
    if isinstance(d, dict) and isinstance(d.get("client_id"), str) and isinstance(d.get("client_secret"), str) \
            and d["client_id"] and d["client_secret"]:
        print(d["client_id"]); print(d["client_secret"]); sys.exit(0)
sys.exit(1)
EOF
)" || fail "'mandate client create --agent bench-bot --json' did not print {\"client_id\":...,\"client_secret\":...}; it printed:
$CLI_OUT"
  M_ID="$(sed -n 1p <<<"$CREDS")"
  M_SECRET="$(sed -n 2p <<<"$CREDS")"
  log "mandate: registered client $M_ID"
  M_AUTH="$(basic_auth "$M_ID" "$M_SECRET")"
  M_BAD="$(basic_auth "$M_ID" "not-the-secret")"
  put mandate info "$(printf '{"binary": "%s", "git_rev": "%s", "token_endpoint": "/oauth2/token", "process_model": "single process (mandate serve)"}' "$MANDATE_BIN" "$MANDATE_REV")"

  # 3. Cold start: initialised data dir, client registered -> first 200 from the token endpoint.
  cs="$(python3 "$LIB" coldstart --ready-url 'http://127.0.0.1:{port}/oauth2/token' --post-body "$BODY" --auth "$M_AUTH" \
        --runs "$COLD_RUNS" --log "$WORK/mandate-coldstart.log" --pidfile "$PIDFILE" -- \
        "$MANDATE_BIN" serve --data-dir "$MDATA" --listen '127.0.0.1:{port}')" \
    || fail "Mandate cold start to first token failed; output: $(tail -n 30 "$WORK/mandate-coldstart.log" 2>/dev/null)"
  put mandate cold_start_to_first_token_ms "$cs"
  log "mandate: cold start to first served token $cs"

  # 4. Idle RSS, sanity check, load.
  M_PORT="$(python3 "$LIB" freeport)"
  start_bg "$WORK/mandate.log" "$MANDATE_BIN" serve --data-dir "$MDATA" --listen "127.0.0.1:$M_PORT"
  M_PID="$LAST_PID"
  measure_running mandate "$M_PID" "http://127.0.0.1:$M_PORT/healthz" \
    "http://127.0.0.1:$M_PORT/oauth2/token" "$M_AUTH" "$M_BAD"
  stop_pid "$M_PID"
fi

# ---- report ---------------------------------------------------------------------------------
python3 "$LIB" report --dir "$PIECES" --out "$OUT"
