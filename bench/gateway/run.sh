#!/usr/bin/env bash
# Gateway overhead benchmark: the same wrk load against a tiny upstream directly and through
# `mandate gateway` (token verification, in-process Txn-Token minting, durable audit, proxying).
#
#   bash bench/gateway/run.sh
#
# Prints req/s, p50 and p99 for both, the throughput ratio gateway/direct (target >= 0.60) and
# the added p99 latency (target < 1 ms), for GET (headline) and for an MCP JSON-RPC tools/call
# POST (the gateway parses the body). See "gateway/" in bench/README.md.
#
# Env knobs:
#   BENCH_CONNS=32 BENCH_THREADS=2 BENCH_DURATION=10   wrk load, same for every run (seconds)
#   BENCH_WARMUP=2          seconds of discarded wrk warm-up before each measured run (0 = none)
#   BENCH_POST=1            0 = GET runs only
#   BENCH_LATENCY=1         0 = skip the one-connection latency runs (-t1 -c1 -d5s)
#   BENCH_C1_REPEAT=3       one-connection runs per pair, direct and proxied alternating; the report takes
#                           each percentile's median over the repeats (one noisy run moves no p99)
#   BENCH_PEER=1            0 = skip the peer: nginx as a bare reverse proxy (no auth, no audit) in front
#                           of the same upstream, GET (installed with apt-get when missing)
#   BENCH_MCP=1             0 = skip the MCP phase: the official MCP Python SDK server (PyPI `mcp`) as the
#                           upstream, tools/call POSTs directly vs through a gateway (venv under bench/results)
#   BENCH_POLICY=1          0 = skip the policy phase (200 Cedar policies active, GET and POST again;
#                           target: throughput with policy within 15% of without)
#   BENCH_SKIP_BUILD=0      1 = do not build (the release binaries must exist)
#   BENCH_OUT=...           JSON output (default bench/results/gateway.json)
#   BENCH_KEEP_WORK=0       1 = keep the scratch dir (logs, data dir) after exit
#   BENCH_SCRATCH=...       parent of the scratch dir (default bench/results; /dev/shm = no real fsync)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LIB="$REPO/bench/token-throughput/benchlib.py" # freeport, wait-ready, parse-wrk

CONNS="${BENCH_CONNS:-32}"
THREADS="${BENCH_THREADS:-2}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
POST="${BENCH_POST:-1}"
POLICY="${BENCH_POLICY:-1}"
PEER="${BENCH_PEER:-1}"
MCP="${BENCH_MCP:-1}"
LATENCY="${BENCH_LATENCY:-1}"
C1_REPEAT="${BENCH_C1_REPEAT:-3}"
OUT="${BENCH_OUT:-$REPO/bench/results/gateway.json}"
SCOPE="tools:call"

log() { printf '[bench] %s\n' "$*" >&2; }
fail() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
[[ "$CONNS" =~ ^[0-9]+$ && "$THREADS" =~ ^[0-9]+$ && "$THREADS" -ge 1 && "$CONNS" -ge "$THREADS" ]] \
  || fail "BENCH_CONNS and BENCH_THREADS must be positive integers, CONNS >= THREADS"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || fail "BENCH_DURATION must be a whole number of seconds >= 1"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || fail "BENCH_WARMUP must be a whole number of seconds"
[[ "$C1_REPEAT" =~ ^[0-9]+$ && "$C1_REPEAT" -ge 1 ]] || fail "BENCH_C1_REPEAT must be a whole number >= 1"
if ! command -v wrk >/dev/null; then
  command -v apt-get >/dev/null || fail "wrk not found; install it"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "installing wrk (apt-get)"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk; } >&2 \
    || fail "apt-get install wrk failed"
fi
command -v curl >/dev/null || fail "curl not found"
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
if [[ "$PEER" == 1 && ! -x "$NGINX_BIN" ]]; then
  log "installing nginx-light (apt-get), the bare-proxy peer"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light; } >&2 \
    || fail "apt-get install nginx-light failed"
  NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
fi
# The MCP upstream's Python environment: the same MCP SDK release as the interop suite.
MCP_VENV="$REPO/bench/results/.venv-mcp"
MCP_PYTHON="$MCP_VENV/bin/python"
if [[ "$MCP" == 1 ]]; then
  mcp_pin="$(grep -E '^mcp==' "$REPO/tests/interop/requirements.txt")" || fail "no mcp pin in tests/interop/requirements.txt"
  if ! "$MCP_PYTHON" -c 'import mcp, uvicorn' 2>/dev/null; then
    log "creating $MCP_VENV with $mcp_pin"
    python3 -m venv "$MCP_VENV" || fail "python3 -m venv failed (apt-get install python3-venv)"
    "$MCP_PYTHON" -m pip -q install --disable-pip-version-check "$mcp_pin" >&2 || fail "pip install $mcp_pin failed"
  fi
fi

# ---- build ------------------------------------------------------------------------------
cd "$REPO"
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
MANDATE="$TARGET/release/mandate"
UPSTREAM_BIN="$TARGET/release/bench-upstream"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries (minutes on a cold machine)"
  cargo build --release -q -p mandate -p mandate-bench-upstream || fail "cargo build --release failed"
fi
[[ -x "$MANDATE" && -x "$UPSTREAM_BIN" ]] || fail "missing $MANDATE or $UPSTREAM_BIN"

# ---- processes: each one is stopped on exit ---------------------------------------------
mkdir -p "$REPO/bench/results"
# On the repo's filesystem, not a tmpfs, so the durable audit writes really reach the disk.
# BENCH_SCRATCH=/dev/shm puts it on a tmpfs instead: a diagnostic that takes the fsync out.
SCRATCH="${BENCH_SCRATCH:-$REPO/bench/results}"
WORK="$(mktemp -d "$SCRATCH/.gateway.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "${BENCH_KEEP_WORK:-0}" == 1 || $rc -ne 0 ]]; then log "scratch dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Mandate refuses unknown MANDATE_* variables: run it without the caller's. Tokens live an hour,
# so one token lasts the whole run.
UNSET=()
for name in $(env | awk -F= '/^MANDATE_/ {print $1}'); do UNSET+=(-u "$name"); done
MANDATE_ENV=(env "${UNSET[@]}" MANDATE_LOG=warn MANDATE_ACCESS_TOKEN_TTL_SECS=3600)
mandate_env() { "${MANDATE_ENV[@]}" "$@"; }
DATA="$WORK/data"
cli() { mandate_env "$MANDATE" --data-dir "$DATA" "$@" 2>>"$WORK/cli.err"; }

# start_bg NAME LOGFILE CMD... : `env` execs CMD, so $! is the process itself (not a subshell).
# NAME labels the process in the CPU-per-request columns.
NAMES=()
start_bg() {
  local name="$1" logf="$2"; shift 2
  "${MANDATE_ENV[@]}" "$@" >"$logf" 2>&1 </dev/null &
  PIDS+=("$!")
  NAMES+=("$name")
}
wait_line() { # FILE TEXT WHAT
  local i
  for i in $(seq 1 400); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  cat "$1" >&2
  fail "$3 did not start"
}

UP_PORT="$(python3 "$LIB" freeport)"
SRV_PORT="$(python3 "$LIB" freeport)"
GW_PORT="$(python3 "$LIB" freeport)"
UPSTREAM="http://127.0.0.1:$UP_PORT"
SERVER="http://127.0.0.1:$SRV_PORT"
GATEWAY="http://127.0.0.1:$GW_PORT"
RESOURCE="$GATEWAY/mcp"

log "starting the upstream ($UPSTREAM), mandate serve ($SERVER)"
start_bg upstream "$WORK/upstream.log" "$UPSTREAM_BIN" "127.0.0.1:$UP_PORT"
wait_line "$WORK/upstream.log" "listening on" "bench-upstream"
start_bg server "$WORK/serve.log" "$MANDATE" --data-dir "$DATA" serve --listen "127.0.0.1:$SRV_PORT"
wait_line "$WORK/serve.log" "audit key:" "mandate serve"
python3 "$LIB" wait-ready "$SERVER/healthz" --timeout 30 >/dev/null || fail "mandate serve not healthy"

cli owner create bench >/dev/null
cli resource create "$RESOURCE" --scope "$SCOPE" >/dev/null
cli agent create bench-agent --owner bench --scope "$SCOPE" >/dev/null
CLIENT_JSON="$(cli --json client create --agent bench-agent)" || fail "client create failed: $(cat "$WORK/cli.err")"

log "starting mandate gateway ($GATEWAY -> $UPSTREAM)"
start_bg gateway "$WORK/gateway.log" "$MANDATE" --data-dir "$DATA" gateway --listen "127.0.0.1:$GW_PORT" \
  --upstream "$UPSTREAM" --resource "$RESOURCE" --scopes "$SCOPE" --issuer "$SERVER"
wait_line "$WORK/gateway.log" "Mandate gateway listening on" "mandate gateway"

# ---- access tokens (client_credentials, resource = a gateway) ---------------------------
# token_for RESOURCE: prints an access token for RESOURCE, valid for the whole run.
token_for() {
  python3 - "$CLIENT_JSON" "$SERVER/oauth2/token" "$1" "$SCOPE" <<'PY'
import base64, json, sys, urllib.parse, urllib.request
client, url, resource, scope = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
q = lambda s: urllib.parse.quote(s, safe="")
basic = base64.b64encode(f"{q(client['client_id'])}:{q(client['client_secret'])}".encode()).decode()
body = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": resource, "scope": scope}).encode()
req = urllib.request.Request(url, data=body, headers={"Authorization": "Basic " + basic})
answer = json.load(urllib.request.urlopen(req, timeout=10))
if answer.get("expires_in", 0) < 600:
    sys.exit(f"token lifetime {answer.get('expires_in')} s is too short for the run")
print(answer["access_token"])
PY
}
TOKEN="$(token_for "$RESOURCE")" || fail "could not get an access token"

# ---- sanity: same body both ways, the token is needed, the MCP POST passes ----------------
direct_body="$(curl -sf "$UPSTREAM/mcp")" || fail "upstream GET failed"
gw_body="$(curl -sf -H "Authorization: Bearer $TOKEN" "$RESOURCE")" || fail "gateway GET with the token failed"
[[ "$direct_body" == "$gw_body" ]] || fail "gateway answered '$gw_body', upstream '$direct_body'"
no_token="$(curl -s -o /dev/null -w '%{http_code}' "$RESOURCE")"
[[ "$no_token" == 401 ]] || fail "gateway without a token answered $no_token, expected 401"
post_status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":40}}}' "$RESOURCE")"
[[ "$post_status" == 200 ]] || fail "gateway tools/call POST answered $post_status"
log "sanity OK: same body direct and via the gateway; no token -> 401"

# ---- load ---------------------------------------------------------------------------------
# run_wrk NAME URL [wrk args...] : warm-up, then the measured run; parsed JSON in $WORK/NAME.json
# (R_THREADS, R_CONNS, R_DURATION override the load for one run.)
run_wrk() {
  local name="$1" url="$2"; shift 2
  local t="${R_THREADS:-$THREADS}" c="${R_CONNS:-$CONNS}" d="${R_DURATION:-$DURATION}"
  if [[ "$WARMUP" -gt 0 ]]; then
    timeout $((WARMUP + 30)) wrk -t"$t" -c"$c" -d"${WARMUP}s" "$@" "$url" >"$WORK/$name-warmup.txt" 2>&1 \
      || fail "$name: wrk warm-up failed: $(cat "$WORK/$name-warmup.txt")"
  fi
  log "$name: wrk -t$t -c$c -d${d}s --latency $url"
  local before after
  before="$(cpu_ticks)"
  timeout $((d + 30)) wrk -t"$t" -c"$c" -d"${d}s" --latency "$@" "$url" >"$WORK/$name.txt" 2>&1 \
    || fail "$name: wrk failed: $(cat "$WORK/$name.txt")"
  after="$(cpu_ticks)"
  python3 "$LIB" parse-wrk "$WORK/$name.txt" >"$WORK/$name.json" || fail "$name: cannot parse the wrk output"
  printf '%s\n%s\n' "$before" "$after" >"$WORK/$name.cpu"
}
# run_c1 DIRECT_NAME DIRECT_URL PROXIED_NAME PROXIED_URL [wrk args...] : one connection, one request
# at a time, BENCH_C1_REPEAT pairs alternating; each proxied run adds the PROXY_ARGS array.
run_c1() {
  local dname="$1" durl="$2" pname="$3" purl="$4" i; shift 4
  for i in $(seq 1 "$C1_REPEAT"); do
    R_THREADS=1 R_CONNS=1 R_DURATION=5 run_wrk "$dname-$i" "$durl" "$@"
    R_THREADS=1 R_CONNS=1 R_DURATION=5 run_wrk "$pname-$i" "$purl" "$@" "${PROXY_ARGS[@]}"
  done
}
# cpu_ticks: "NAME:TICKS ..." CPU time (user+system, clock ticks) of each started process so far
cpu_ticks() {
  local i out=""
  local pids
  for i in "${!PIDS[@]}"; do
    # The process and its children (nginx's workers).
    pids="${PIDS[$i]} $(pgrep -P "${PIDS[$i]}" | tr '\n' ' ')"
    out+="${NAMES[$i]}:$(for p in $pids; do cat "/proc/$p/stat" 2>/dev/null; done | awk '{t += $14 + $15} END {print t}') "
  done
  echo "$out"
}

AUTH=(-H "Authorization: Bearer $TOKEN")
run_wrk get-direct "$UPSTREAM/mcp"
run_wrk get-gateway "$RESOURCE" "${AUTH[@]}"
if [[ "$POST" == 1 ]]; then
  run_wrk post-direct "$UPSTREAM/mcp" -s "$HERE/post.lua"
  run_wrk post-gateway "$RESOURCE" -s "$HERE/post.lua" "${AUTH[@]}"
fi
if [[ "$LATENCY" == 1 ]]; then
  # One connection, one request at a time: the latency the gateway adds without queueing.
  PROXY_ARGS=("${AUTH[@]}")
  run_c1 c1-direct "$UPSTREAM/mcp" c1-gateway "$RESOURCE"
fi
if [[ "$PEER" == 1 ]]; then
  # The peer: nginx as a bare reverse proxy (keep-alive upstream pool, no token check, no audit)
  # in front of the same upstream: what any proxy on this machine gets relative to direct.
  NGINX_PORT="$(python3 "$LIB" freeport)"
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream bench { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
  start_bg nginx "$WORK/nginx.log" "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
  python3 "$LIB" wait-ready "http://127.0.0.1:$NGINX_PORT/mcp" --timeout 20 >/dev/null || fail "nginx did not start"
  run_wrk get-nginx "http://127.0.0.1:$NGINX_PORT/mcp"
  if [[ "$LATENCY" == 1 ]]; then
    PROXY_ARGS=()
    run_c1 c1n-direct "$UPSTREAM/mcp" c1-nginx "http://127.0.0.1:$NGINX_PORT/mcp"
  fi
fi
if [[ "$MCP" == 1 ]]; then
  # A real MCP server (official MCP Python SDK, stateless streamable HTTP) as the upstream, called
  # directly and through a second gateway in front of it: tools/call POSTs, the tool name parsed.
  MCP_PORT="$(python3 "$LIB" freeport)"
  GW2_PORT="$(python3 "$LIB" freeport)"
  MCP_UPSTREAM="http://127.0.0.1:$MCP_PORT"
  MCP_RESOURCE="http://127.0.0.1:$GW2_PORT/mcp"
  start_bg mcp-upstream "$WORK/mcp-upstream.log" "$MCP_PYTHON" "$HERE/mcp_upstream.py" "$MCP_PORT"
  wait_line "$WORK/mcp-upstream.log" "listening on" "the MCP Python SDK upstream"
  cli resource create "$MCP_RESOURCE" --scope "$SCOPE" >/dev/null
  start_bg mcp-gateway "$WORK/mcp-gateway.log" "$MANDATE" --data-dir "$DATA" gateway --listen "127.0.0.1:$GW2_PORT" \
    --upstream "$MCP_UPSTREAM" --resource "$MCP_RESOURCE" --scopes "$SCOPE" --issuer "$SERVER"
  wait_line "$WORK/mcp-gateway.log" "Mandate gateway listening on" "the MCP gateway"
  MCP_TOKEN="$(token_for "$MCP_RESOURCE")" || fail "could not get an access token for the MCP gateway"
  MCP_CALL='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup","arguments":{"key":"record-7"}}}'
  mcp_post() { curl -sf -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' "$@" -d "$MCP_CALL"; }
  direct_answer="$(mcp_post "$MCP_UPSTREAM/mcp")" || fail "MCP upstream tools/call failed"
  gw_answer="$(mcp_post -H "Authorization: Bearer $MCP_TOKEN" "$MCP_RESOURCE")" || fail "MCP tools/call via the gateway failed"
  [[ "$direct_answer" == "$gw_answer" && "$direct_answer" == *'\"owner\": \"alice\"'* ]] \
    || fail "MCP answers differ: direct '$direct_answer', gateway '$gw_answer'"
  log "MCP phase: the SDK server answers tools/call the same directly and via the gateway"
  run_wrk mcp-direct "$MCP_UPSTREAM/mcp" -s "$HERE/mcp_call.lua"
  run_wrk mcp-gateway "$MCP_RESOURCE" -s "$HERE/mcp_call.lua" -H "Authorization: Bearer $MCP_TOKEN"
  if [[ "$LATENCY" == 1 ]]; then
    PROXY_ARGS=(-H "Authorization: Bearer $MCP_TOKEN")
    run_c1 mcpc1-direct "$MCP_UPSTREAM/mcp" mcpc1-gateway "$MCP_RESOURCE" -s "$HERE/mcp_call.lua"
  fi
fi
if [[ "$POLICY" == 1 ]]; then
  # 200 policies for the gateway's resource become the server's active set; the co-located gateway
  # reloads it within a second. Then the same GET and POST loads again, every call decided by Cedar.
  python3 "$HERE/policies.py" "$RESOURCE" "$WORK/policies.cedar"
  cli policy set "$WORK/policies.cedar" >/dev/null || fail "policy set failed: $(cat "$WORK/cli.err")"
  sleep 2
  denied="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"sql":"DROP TABLE t"}}}' "$RESOURCE")"
  [[ "$denied" == 403 ]] || fail "with the policy set active, a DROP TABLE call answered $denied, expected 403"
  log "policy phase: 200 policies active (a DROP TABLE call is refused)"
  run_wrk get-policy "$RESOURCE" "${AUTH[@]}"
  [[ "$POST" == 1 ]] && run_wrk post-policy "$RESOURCE" -s "$HERE/post.lua" "${AUTH[@]}"
fi
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a process (pid $pid) died during the run"; done

# ---- report -------------------------------------------------------------------------------
REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - "$WORK" "$OUT" "$THREADS" "$CONNS" "$DURATION" "$WARMUP" "$REV" "$SCRATCH" <<'PY'
import json, os, statistics, sys
work, out, threads, conns, duration, warmup, rev, scratch = sys.argv[1:]
RATIO_MIN, ADDED_P99_MAX_MS = 0.60, 1.0
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# Each run: (upstream process, proxy process or None) for the CPU columns.
RUNS = {
    "get-direct": ("upstream", None), "get-gateway": ("upstream", "gateway"),
    "post-direct": ("upstream", None), "post-gateway": ("upstream", "gateway"),
    "c1-direct": ("upstream", None), "c1-gateway": ("upstream", "gateway"),
    "get-nginx": ("upstream", "nginx"), "c1n-direct": ("upstream", None), "c1-nginx": ("upstream", "nginx"),
    "mcp-direct": ("mcp-upstream", None), "mcp-gateway": ("mcp-upstream", "mcp-gateway"),
    "mcpc1-direct": ("mcp-upstream", None), "mcpc1-gateway": ("mcp-upstream", "mcp-gateway"),
    "get-policy": ("upstream", "gateway"), "post-policy": ("upstream", "gateway"),
}
def load(name):
    """One wrk run with the CPU ticks (per process) it spent."""
    r = json.load(open(os.path.join(work, name + ".json")))
    before, after = (dict(pair.split(":") for pair in line.split()) for line in open(os.path.join(work, name + ".cpu")))
    r["cpu_ticks"] = {proc: int(after[proc]) - int(before[proc]) for proc in before if proc in after}
    return r

def merge(repeats):
    """Repeated runs of one kind: each percentile is the median over the repeats, counts add up."""
    median = statistics.median_high
    return {
        "latency_ms": {k: median([r["latency_ms"][k] for r in repeats]) for k in repeats[0]["latency_ms"]},
        "requests": sum(r["requests"] for r in repeats),
        "ok_rps": round(sum(r["ok_rps"] for r in repeats) / len(repeats), 1),
        "non_2xx": sum(r["non_2xx"] for r in repeats),
        "socket_errors": {k: sum(r["socket_errors"][k] for r in repeats) for k in repeats[0]["socket_errors"]},
        "valid": all(r["valid"] for r in repeats),
        "cpu_ticks": {p: sum(r["cpu_ticks"].get(p, 0) for r in repeats) for p in repeats[0]["cpu_ticks"]},
        "repeats": [{"p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"], "ok_rps": r["ok_rps"]} for r in repeats],
    }

runs = {}
for name, (upstream, proxy) in RUNS.items():
    if os.path.exists(os.path.join(work, name + ".json")):
        r = load(name)
    else:
        repeats = [load(f"{name}-{i}") for i in range(1, 100) if os.path.exists(os.path.join(work, f"{name}-{i}.json"))]
        if not repeats:
            continue
        r = merge(repeats)
    # CPU each of our processes spent per request of this run, in microseconds.
    r["cpu_us_per_request"] = {
        proc: round(ticks * TICK_S * 1e6 / r["requests"], 1) if r["requests"] else None
        for proc, ticks in r.pop("cpu_ticks").items()
    }
    r["upstream_process"], r["proxy_process"] = upstream, proxy
    runs[name] = r

def compare(direct, proxied):
    d, g = runs.get(direct), runs.get(proxied)
    if not d or not g:
        return None
    valid = d["valid"] and g["valid"] and d["non_2xx"] == 0 and g["non_2xx"] == 0
    ratio = round(g["ok_rps"] / d["ok_rps"], 3) if d["ok_rps"] else None
    added_p99 = round(g["latency_ms"]["p99"] - d["latency_ms"]["p99"], 3)
    added_p50 = round(g["latency_ms"]["p50"] - d["latency_ms"]["p50"], 3)
    return {"direct": direct, "proxied": proxied, "valid": valid, "ratio": ratio,
            "added_p50_ms": added_p50, "added_p99_ms": added_p99,
            "ratio_pass": ratio is not None and ratio >= RATIO_MIN,
            # None: the direct run's tail was the noisier one (CPU contention), no evidence either way.
            "added_p99_pass": None if added_p99 < 0 else added_p99 < ADDED_P99_MAX_MS}

COMPARISONS = {
    "get": ("get-direct", "get-gateway", "GET, tiny upstream"),
    "post": ("post-direct", "post-gateway", "POST tools/call, tiny upstream"),
    "c1": ("c1-direct", "c1-gateway", "GET, tiny upstream, 1 connection"),
    "nginx-get": ("get-direct", "get-nginx", "peer: nginx bare proxy, GET, tiny upstream"),
    "nginx-c1": ("c1n-direct", "c1-nginx", "peer: nginx bare proxy, GET, 1 connection"),
    "mcp": ("mcp-direct", "mcp-gateway", "MCP Python SDK upstream, tools/call"),
    "mcp-c1": ("mcpc1-direct", "mcpc1-gateway", "MCP Python SDK upstream, tools/call, 1 connection"),
}
result = {
    "config": {"threads": int(threads), "connections": int(conns), "duration_s": int(duration),
               "warmup_s": int(warmup), "cpus": os.cpu_count(), "rev": rev, "scratch": scratch,
               "loadavg": open("/proc/loadavg").read().split()[:3]},
    "targets": {"throughput_ratio_min": RATIO_MIN, "added_p99_ms_max": ADDED_P99_MAX_MS},
    "runs": runs,
    "comparisons": {k: c for k, (d, g, _) in COMPARISONS.items() if (c := compare(d, g))},
}
POLICY_RATIO_MIN = 0.85
result["policy"] = {
    kind: {"ratio_policy_on_off": round(on["ok_rps"] / off["ok_rps"], 3) if off["ok_rps"] else None,
           "valid": on["valid"] and on["non_2xx"] == 0}
    for kind in ("get", "post")
    if (off := runs.get(f"{kind}-gateway")) and (on := runs.get(f"{kind}-policy"))
}
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

print()
print("mandate gateway overhead: upstream called directly vs through the gateway (and a bare nginx peer)")
print(f"wrk: {threads} threads, {conns} connections, {duration} s (+{warmup} s warm-up) per run, "
      f"{os.cpu_count()} CPUs shared by wrk, upstream, gateway and server; load average {' '.join(result['config']['loadavg'])}")
print(f"data dir (durable audit, SQLite synchronous=FULL) under {scratch}")
print()
hdr = (f"{'run':<14} {'req/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8}"
       f" {'CPU us/req: upstream':>21} {'proxy':>8}")
print(hdr)
print("-" * len(hdr))
def cpu(r, proc):
    value = r["cpu_us_per_request"].get(proc) if proc else None
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"
for name, r in runs.items():
    lat = r["latency_ms"]
    print(f"{name:<14} {r['ok_rps']:>10.1f} {lat['p50']:>8.3f} {lat.get('p90', float('nan')):>8.3f} "
          f"{lat['p99']:>8.3f} {r['non_2xx']:>8} {sum(r['socket_errors'].values()):>8}"
          f" {cpu(r, r['upstream_process']):>21} {cpu(r, r['proxy_process'])}")
print()
for kind, c in result["comparisons"].items():
    label = COMPARISONS[kind][2]
    note = "" if c["valid"] else "  (INVALID: errors in a run)"
    target = kind not in ("nginx-get", "nginx-c1")
    if c["added_p99_pass"] is None:
        p99_verdict = "INCONCLUSIVE: direct p99 above the proxied one"
    else:
        p99_verdict = "PASS" if c["added_p99_pass"] else "FAIL"
    ratio_verdict = "PASS" if c["ratio_pass"] else "FAIL"
    if not target:
        p99_verdict = ratio_verdict = "peer, no target"
    ratio = "" if kind.endswith("c1") else f"throughput proxied/direct = {c['ratio']:.2f} [{ratio_verdict}]; "
    print(f"{label}: {ratio}added p99 = {c['added_p99_ms']:.3f} ms [{p99_verdict}]; "
          f"added p50 = {c['added_p50_ms']:.3f} ms{note}")
print(f"(targets: throughput >= {RATIO_MIN} of direct, added p99 < {ADDED_P99_MAX_MS} ms)")
for kind, p in result["policy"].items():
    verdict = "PASS" if p["ratio_policy_on_off"] is not None and p["ratio_policy_on_off"] >= POLICY_RATIO_MIN else "FAIL"
    note = "" if p["valid"] else "  (INVALID: errors in a run)"
    print(f"{kind.upper()} with 200 policies: throughput policy on/off = {p['ratio_policy_on_off']:.2f} "
          f"[{verdict}, target >= {POLICY_RATIO_MIN}]{note}")
print()
print(f"results written to {out}")
PY
