#!/usr/bin/env bash
# Broker proxy overhead: keep-alive HTTPS to one local TLS upstream, directly and through the
# broker's forward proxy (CONNECT, TLS interception with a minted leaf, placeholder substitution,
# upstream TLS, audit), in one process and one run. Load client: crates/broker/examples/bench_proxy.rs.
# Per arm: req/s, p50/p99, and the process CPU per request (steadier than req/s on a shared machine).
#   bash bench/broker/run.sh            memory audit sink, then a durable SQLite audit log
#   BENCH_SECONDS=5 BENCH_CONCURRENCY=8 bash bench/broker/run.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
seconds="${BENCH_SECONDS:-10}"
concurrency="${BENCH_CONCURRENCY:-16}"
results="$root/bench/results"
mkdir -p "$results"
cargo build --release -p mandate-broker --example bench_proxy
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_proxy"
for audit in memory sqlite; do
    "$bin" --seconds "$seconds" --concurrency "$concurrency" --audit "$audit" --out "$results/broker-$audit.json"
    echo
done
