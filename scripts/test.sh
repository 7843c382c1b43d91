#!/usr/bin/env bash
# The whole test suite: formatting and lint gates, every Rust test (unit, the store suite on
# SQLite and PostgreSQL, end-to-end tests against the real binary), then the interop suite
# with clients nobody on this project wrote. Needs PostgreSQL at 127.0.0.1:5432 (user
# postgres, database test) — present on every development and CI machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export MANDATE_TEST_POSTGRES="${MANDATE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== mandate demo"
cargo run -q --locked -p mandate -- demo
echo "== interop"
bash tests/interop/run.sh
