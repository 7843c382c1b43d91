#!/usr/bin/env python3
"""Helpers for bench/token-throughput/run.sh (stdlib only).

Subcommands:
  freeport                          print a free TCP port on 127.0.0.1
  wait-ready URL [--pid P] [--timeout S]
                                    poll GET URL until HTTP 200; print ms waited
  coldstart --ready-url TMPL [--post-body B --auth A] --runs N --log F -- CMD...
                                    launch CMD (with {port} substituted by a fresh
                                    free port) N times; each time measure ms from
                                    just before exec to the first HTTP 200 of the
                                    readiness request, then stop the process.
                                    Prints JSON {"runs_ms": [...], "median_ms": x}.
  rss PID                           print JSON {"vmrss_mib": x, "vmhwm_mib": y}
  token-check URL --auth A --body B [--bad-auth A2]
                                    POST one token request, require 200 + JSON with
                                    an access_token that is a JWT whose header has
                                    alg EdDSA and typ at+jwt; optionally require the
                                    bad credentials to be refused (4xx). Prints JSON.
  parse-wrk FILE                    parse `wrk --latency` output into JSON
  report --out FILE --dir DIR       merge DIR/config.json and DIR/servers/<name>/<key>.json
                                    into FILE (final JSON) and print the human table
"""

import base64
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse


def die(msg, code=1):
    print(f"benchlib: {msg}", file=sys.stderr)
    sys.exit(code)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url, method="GET", body=None, headers=None, timeout=2.0):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data
    finally:
        conn.close()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombie check
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def cmd_freeport(_args):
    print(free_port())


def cmd_wait_ready(args):
    url = args[0]
    pid = None
    timeout = 60.0
    i = 1
    while i < len(args):
        if args[i] == "--pid":
            pid = int(args[i + 1]); i += 2
        elif args[i] == "--timeout":
            timeout = float(args[i + 1]); i += 2
        else:
            die(f"wait-ready: unknown arg {args[i]}")
    t0 = time.perf_counter()
    deadline = t0 + timeout
    last = "no attempt"
    while time.perf_counter() < deadline:
        if pid is not None and not _pid_alive(pid):
            die(f"process {pid} exited before {url} answered 200 (last: {last})")
        try:
            status, body = _request(url, timeout=1.0)
            if status == 200:
                print(f"{(time.perf_counter() - t0) * 1000:.1f}")
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.01)
    die(f"timed out after {timeout}s waiting for 200 from {url} (last: {last})")


def _stop(proc):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def cmd_coldstart(args):
    if "--" not in args:
        die("coldstart: missing -- CMD")
    sep = args.index("--")
    opts, cmd = args[:sep], args[sep + 1:]
    ready_url = post_body = auth = log = pidfile = None
    runs = 1
    timeout = 20.0
    i = 0
    while i < len(opts):
        k, v = opts[i], opts[i + 1]
        if k == "--ready-url":
            ready_url = v
        elif k == "--post-body":
            post_body = v
        elif k == "--auth":
            auth = v
        elif k == "--runs":
            runs = int(v)
        elif k == "--log":
            log = v
        elif k == "--pidfile":
            pidfile = v
        elif k == "--timeout":
            timeout = float(v)
        else:
            die(f"coldstart: unknown option {k}")
        i += 2
    if not ready_url or not log:
        die("coldstart: --ready-url and --log are required")

    headers = {}
    method = "GET"
    if post_body is not None:
        method = "POST"
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["Accept"] = "application/json"
    if auth:
        headers["Authorization"] = auth

    results = []
    logf = open(log, "ab")
    for n in range(runs):
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in cmd]
        url = ready_url.replace("{port}", str(port))
        u = urllib.parse.urlsplit(url)
        path = u.path + ("?" + u.query if u.query else "")
        logf.write(f"\n=== coldstart run {n + 1}: {' '.join(argv)}\n".encode())
        logf.flush()
        last = "no attempt"
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        if pidfile:
            with open(pidfile, "a") as pf:
                pf.write(f"{proc.pid}\n")
        try:
            deadline = t0 + timeout
            ms = None
            while True:
                now = time.perf_counter()
                if now > deadline:
                    break
                if proc.poll() is not None:
                    die(f"coldstart: {argv[0]} exited with code {proc.returncode} before "
                        f"{url} returned 200 (last: {last}); see {log}")
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
                    try:
                        conn.request(method, path, body=post_body, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                    finally:
                        conn.close()
                    if resp.status == 200:
                        ms = (time.perf_counter() - t0) * 1000
                        break
                    last = f"HTTP {resp.status}: {data[:300]!r}"
                    time.sleep(0.002)
                except OSError as e:
                    last = f"{type(e).__name__}: {e}"
                    time.sleep(0.001)
            if ms is None:
                die(f"coldstart: no 200 from {url} within {timeout}s (last: {last}); see {log}")
            results.append(round(ms, 1))
        finally:
            _stop(proc)
    logf.close()
    print(json.dumps({"runs_ms": results, "median_ms": round(statistics.median(results), 1)}))


def read_rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            for key in ("VmRSS", "VmHWM"):
                if line.startswith(key + ":"):
                    kib = int(line.split()[1])
                    out[key.lower() + "_mib"] = round(kib / 1024, 1)
    return out


def cmd_rss(args):
    print(json.dumps(read_rss(int(args[0]))))


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def cmd_token_check(args):
    url = args[0]
    auth = body = bad_auth = None
    i = 1
    while i < len(args):
        k, v = args[i], args[i + 1]
        if k == "--auth":
            auth = v
        elif k == "--body":
            body = v
        elif k == "--bad-auth":
            bad_auth = v
        else:
            die(f"token-check: unknown option {k}")
        i += 2
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        "Authorization": auth,
    }
    try:
        status, data = _request(url, "POST", body, headers, timeout=10)
    except OSError as e:
        die(f"token-check: POST {url} failed: {e}")
    if status != 200:
        die(f"token-check: POST {url} returned HTTP {status}, expected 200: {data[:500]!r}")
    try:
        j = json.loads(data)
    except ValueError:
        die(f"token-check: response is not JSON: {data[:500]!r}")
    tok = j.get("access_token")
    if not isinstance(tok, str):
        die(f"token-check: no access_token in response: {data[:500]!r}")
    parts = tok.split(".")
    if len(parts) != 3:
        die(f"token-check: access_token is not a JWS compact JWT ({len(parts)} parts): {tok[:80]}...")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError as e:
        die(f"token-check: cannot decode JWT: {e}")
    if header.get("alg") != "EdDSA":
        die(f"token-check: JWT header alg is {header.get('alg')!r}, expected 'EdDSA' (header {header})")
    typ = str(header.get("typ", ""))
    if typ.lower() not in ("at+jwt", "application/at+jwt"):
        die(f"token-check: JWT header typ is {typ!r}, expected 'at+jwt' (header {header})")
    result = {
        "http_status": status,
        "token_type": j.get("token_type"),
        "expires_in": j.get("expires_in"),
        "jwt_header": header,
        "jwt_claims": sorted(claims.keys()),
        "aud": claims.get("aud"),
        "token_bytes": len(tok),
        "response_bytes": len(data),
    }
    if bad_auth:
        bh = dict(headers, Authorization=bad_auth)
        bstatus, bdata = _request(url, "POST", body, bh, timeout=10)
        if not 400 <= bstatus < 500:
            die(f"token-check: wrong client secret got HTTP {bstatus} (expected 4xx): {bdata[:300]!r}")
        result["bad_credentials_status"] = bstatus
    print(json.dumps(result))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _dur_ms(s):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", s.strip())
    if not m:
        raise ValueError(f"unparseable duration {s!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text):
    r = {}
    lines = text.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == "Latency Distribution")
    except StopIteration:
        raise ValueError("no 'Latency Distribution' block (was wrk run with --latency?)") from None
    pct = {}
    for line in lines[start + 1:]:
        pm = re.fullmatch(r"\s*(\d+)%\s+(\S+)\s*", line)
        if not pm:
            break
        pct[int(pm.group(1))] = round(_dur_ms(pm.group(2)), 3)
    r["latency_ms"] = {f"p{k}": v for k, v in sorted(pct.items())}
    if 50 not in pct or 99 not in pct:
        raise ValueError("latency distribution lacks p50 or p99")
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        r["latency_ms"]["avg"] = round(_dur_ms(m.group(1)), 3)
        r["latency_ms"]["max"] = round(_dur_ms(m.group(3)), 3)
    m = re.search(r"(\d+) requests in ([0-9.]+\w+)", text)
    if not m:
        raise ValueError("no 'N requests in T' line")
    r["requests"] = int(m.group(1))
    r["elapsed_s"] = round(_dur_ms(m.group(2)) / 1000, 3)
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if not m:
        raise ValueError("no 'Requests/sec' line")
    r["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
        if m else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    # Validity: most responses must be successes.
    total = r["requests"]
    bad = r["non_2xx"]
    sock = sum(r["socket_errors"].values())
    r["error_fraction"] = round(bad / total, 4) if total else 1.0
    r["ok_rps"] = round(r["rps"] * (1 - bad / total), 2) if total else 0.0
    problems = []
    if total == 0:
        problems.append("no requests completed")
    elif bad * 2 > total:
        problems.append(f"{bad} of {total} responses were non-2xx")
    if total and sock * 2 > total:
        problems.append(f"{sock} socket errors for {total} requests")
    r["valid"] = not problems
    warnings = []
    if not problems:
        if bad:
            warnings.append(f"{bad} non-2xx responses ({100 * bad / total:.2f}%)")
        if sock:
            warnings.append(f"socket errors {r['socket_errors']}")
    r["problems"] = problems
    r["warnings"] = warnings
    return r


def cmd_parse_wrk(args):
    with open(args[0]) as f:
        text = f.read()
    try:
        print(json.dumps(parse_wrk(text)))
    except ValueError as e:
        die(f"parse-wrk {args[0]}: {e}\n--- wrk output ---\n{text}")


def _fmt(v, spec, na="n/a"):
    return na if v is None else format(v, spec)


def _load_pieces(dirpath):
    """config.json plus servers/<name>/<key>.json -> one dict."""
    with open(os.path.join(dirpath, "config.json")) as f:
        d = json.load(f)
    d["servers"] = {}
    sdir = os.path.join(dirpath, "servers")
    if os.path.isdir(sdir):
        for name in sorted(os.listdir(sdir)):
            entry = {}
            for fn in sorted(os.listdir(os.path.join(sdir, name))):
                if fn.endswith(".json"):
                    with open(os.path.join(sdir, name, fn)) as f:
                        entry[fn[:-5]] = json.load(f)
            d["servers"][name] = entry
    return d


def cmd_report(args):
    out = pieces = None
    i = 0
    while i < len(args):
        if args[i] == "--out":
            out = args[i + 1]
        elif args[i] == "--dir":
            pieces = args[i + 1]
        else:
            die(f"report: unknown option {args[i]}")
        i += 2
    if not out or not pieces:
        die("report: --out FILE and --dir DIR are required")
    d = _load_pieces(pieces)

    servers = d["servers"]
    m = servers.get("mandate")
    o = servers.get("oidc-provider")
    targets = d["targets"]

    ratio = None
    ratio_note = None
    if m and o and m.get("load") and o.get("load"):
        ml, ol = m["load"], o["load"]
        if ml["valid"] and ol["valid"] and ol["ok_rps"] > 0:
            ratio = round(ml["ok_rps"] / ol["ok_rps"], 2)
        else:
            ratio_note = "not computed: a run was invalid (most responses were errors)"
    elif not (m and o):
        ratio_note = "not computed: only one server was benchmarked"
    d["throughput_ratio_mandate_over_oidc_provider"] = ratio
    if ratio_note:
        d["throughput_ratio_note"] = ratio_note

    checks = {}
    if ratio is not None:
        checks["throughput_ratio"] = {"value": ratio, "target": f">= {targets['throughput_ratio_min']}",
                                      "pass": ratio >= targets["throughput_ratio_min"]}
    if m:
        rss = m.get("idle_rss_mib")
        if rss is not None:
            checks["mandate_idle_rss_mib"] = {"value": rss, "target": f"< {targets['idle_rss_mib_max']}",
                                              "pass": rss < targets["idle_rss_mib_max"]}
        cs = (m.get("cold_start_to_first_token_ms") or {}).get("median_ms")
        if cs is not None:
            checks["mandate_cold_start_to_first_token_ms"] = {
                "value": cs, "target": f"< {targets['cold_start_ms_max']}",
                "pass": cs < targets["cold_start_ms_max"]}
        if m.get("load") and not m["load"]["valid"]:
            checks["mandate_load_valid"] = {"value": False, "target": "valid run", "pass": False}
    d["checks"] = checks

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")

    cfg = d["config"]
    print()
    print(f"Token endpoint throughput — client_credentials, EdDSA JWT access tokens")
    print(f"wrk: {cfg['threads']} threads, {cfg['connections']} connections, {cfg['duration_s']} s"
          f" (+{cfg['warmup_s']} s warm-up) on {cfg['cpus']} CPUs shared by wrk and the server")
    print()
    hdr = f"{'server':<16} {'req/s':>10} {'2xx req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'idle RSS MiB':>12} {'peak RSS MiB':>12} {'cold start ms':>13}  status"
    print(hdr)
    print("-" * len(hdr))
    for name in ("mandate", "oidc-provider"):
        s = servers.get(name)
        if not s:
            continue
        ld = s.get("load") or {}
        lat = ld.get("latency_ms", {})
        cs = (s.get("cold_start_to_first_token_ms") or {}).get("median_ms")
        if not ld:
            status = "not run"
        elif ld["valid"]:
            status = "ok" + (" (" + "; ".join(ld["warnings"]) + ")" if ld["warnings"] else "")
        else:
            status = "INVALID: " + "; ".join(ld["problems"])
        print(f"{name:<16} {_fmt(ld.get('rps'), '10.1f'):>10} {_fmt(ld.get('ok_rps'), '10.1f'):>10}"
              f" {_fmt(lat.get('p50'), '8.2f'):>8} {_fmt(lat.get('p99'), '8.2f'):>8}"
              f" {_fmt(ld.get('non_2xx'), 'd'):>8} {_fmt(s.get('idle_rss_mib'), '12.1f'):>12}"
              f" {_fmt(s.get('peak_rss_mib'), '12.1f'):>12} {_fmt(cs, '13.1f'):>13}  {status}")
    print()
    if ratio is not None:
        print(f"throughput ratio Mandate / oidc-provider (2xx req/s): {ratio:.2f}x")
    else:
        print(f"throughput ratio Mandate / oidc-provider: {ratio_note}")
    if m:
        fs = (m.get("first_start_to_healthz_ms") or {}).get("median_ms")
        if fs is not None:
            print(f"Mandate first-ever start (fresh data dir, key generation) to /healthz 200: {fs:.1f} ms")
    if checks:
        print()
        print("targets:")
        for k, c in checks.items():
            print(f"  {'PASS' if c['pass'] else 'FAIL'}  {k} = {c['value']} (target {c['target']})")
    for note in d.get("notes", []):
        print(f"note: {note}")
    print()
    print(f"results written to {out}")


def main():
    if len(sys.argv) < 2:
        die(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "freeport": cmd_freeport,
        "wait-ready": cmd_wait_ready,
        "coldstart": cmd_coldstart,
        "rss": cmd_rss,
        "token-check": cmd_token_check,
        "parse-wrk": cmd_parse_wrk,
        "report": cmd_report,
    }.get(cmd)
    if not fn:
        die(f"unknown subcommand {cmd}\n{__doc__}")
    fn(args)


if __name__ == "__main__":
    main()
