#!/usr/bin/env bash
# Broker proxy overhead: keep-alive HTTPS to one local TLS upstream, directly and through the
# broker's forward proxy (CONNECT, TLS interception with a minted leaf, placeholder substitution,
# upstream TLS, audit), in one process and one run. Load client: crates/broker/examples/bench_proxy.rs.
# Per arm: req/s, p50/p99, and the process CPU per request (steadier than req/s on a shared machine).
# The peer: Squid (Debian squid-openssl) as a TLS-intercepting forward proxy (ssl_bump, leaves minted
# per host with its own CA) in front of the same upstream, same load, in the memory-audit run.
#   bash bench/broker/run.sh            memory audit sink (+ the Squid peer), then a durable SQLite audit log
#   BENCH_SECONDS=5 BENCH_CONCURRENCY=8 bash bench/broker/run.sh
#   BENCH_PEER=0                        no Squid arm
#   BENCH_SQUID_WORKERS=2               Squid SMP workers (default 2: one per core, as the broker's runtime)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
seconds="${BENCH_SECONDS:-10}"
concurrency="${BENCH_CONCURRENCY:-16}"
peer="${BENCH_PEER:-1}"
squid_workers="${BENCH_SQUID_WORKERS:-2}"
results="$root/bench/results"
mkdir -p "$results"
cargo build --release -p mandate-broker --example bench_proxy
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_proxy"

peer_args=()
work=""
squid_pid=""
cleanup() {
    if [[ -n "$squid_pid" ]]; then
        kill -TERM "$squid_pid" 2>/dev/null || true
        wait "$squid_pid" 2>/dev/null || true
    fi
    [[ -n "$work" ]] && rm -rf "$work"
}
trap cleanup EXIT

if [[ "$peer" == 1 ]]; then
    if [[ ! -x /usr/sbin/squid || ! -x /usr/lib/squid/security_file_certgen ]]; then
        sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
        echo "installing squid-openssl (apt-get), the peer" >&2
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq squid-openssl >/dev/null
        # The package starts a system-wide Squid; the bench runs its own.
        $sudo systemctl stop squid 2>/dev/null || $sudo service squid stop 2>/dev/null || true
    fi
    work="$(mktemp -d /tmp/bench-broker-squid.XXXXXX)"
    ca() { # NAME CN: a P-256 CA certificate and key
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$2" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$work/$1.key" -out "$work/$1.pem" 2>/dev/null
    }
    ca upstream-ca "bench upstream CA"
    ca squid-ca "bench squid CA"
    /usr/lib/squid/security_file_certgen -c -s "$work/ssl_db" -M 16MB >/dev/null
    port="$(python3 "$root/bench/token-throughput/benchlib.py" freeport)"
    cat >"$work/squid.conf" <<EOF
workers $squid_workers
http_port 127.0.0.1:$port ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert=$work/squid-ca.pem tls-key=$work/squid-ca.key
sslcrtd_program /usr/lib/squid/security_file_certgen -s $work/ssl_db -M 16MB
sslcrtd_children 4
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile=$work/upstream-ca.pem
acl SSL_ports port 1-65535
acl Safe_ports port 1-65535
http_access allow localhost
http_access deny all
cache deny all
access_log none
cache_log $work/cache.log
pid_filename $work/squid.pid
coredump_dir $work
cache_effective_user proxy
EOF
    chown -R proxy:proxy "$work" 2>/dev/null || true
    chmod 755 "$work"
    /usr/sbin/squid -N -f "$work/squid.conf" >"$work/squid.out" 2>&1 &
    squid_pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$work/cache.log" >&2; echo "squid did not start" >&2; exit 1; }
    peer_args=(--upstream-ca-cert "$work/upstream-ca.pem" --upstream-ca-key "$work/upstream-ca.key"
        --peer "http://127.0.0.1:$port" --peer-ca "$work/squid-ca.pem" --peer-pid "$squid_pid")
    echo "peer: squid $(/usr/sbin/squid -v | head -n1 | awk '{print $4}'), $squid_workers workers, ssl_bump on 127.0.0.1:$port"
fi

for audit in memory sqlite; do
    args=()
    [[ "$audit" == memory ]] && args=("${peer_args[@]}")
    "$bin" --seconds "$seconds" --concurrency "$concurrency" --audit "$audit" --out "$results/broker-$audit.json" "${args[@]}"
    echo
done
