#!/usr/bin/env bash
# Interop tests: Mandate driven by OAuth/JOSE clients nobody on the project wrote.
#   tests/interop/run.sh            build target/debug/mandate, then run the suite
#   MANDATE_BIN=/path/mandate tests/interop/run.sh   use that binary (mcp-resource beside it, or
#                                                    MCP_RESOURCE_BIN), build nothing else
# Extra arguments go to pytest (e.g. -k audit -x).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

venv="$here/.venv"
if [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >/dev/null 2>&1; then
    python="$venv/bin/python"
else
    echo "run.sh: python3 -m venv is unavailable; installing with pip --user" >&2
    python="python3"
fi
pip_args=(-q install --disable-pip-version-check -r "$here/requirements.txt")
if [ "$python" = "python3" ]; then
    pip_args+=(--user)
fi
"$python" -m pip "${pip_args[@]}"

# Node clients (one npm project per directory with a lockfile), installed exactly as locked.
for lock in "$here"/*/package-lock.json; do
    [ -e "$lock" ] || continue
    (cd "$(dirname "$lock")" && npm ci --no-audit --no-fund --loglevel=error)
done

if [ -z "${MANDATE_BIN:-}" ]; then
    cargo build -p mandate -p mandate-example-mcp-resource
    export MANDATE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/mandate"
fi
# The guard-protected example MCP server the OAuth client tests call.
if [ -z "${MCP_RESOURCE_BIN:-}" ] && [ ! -x "$(dirname "$MANDATE_BIN")/mcp-resource" ]; then
    cargo build -p mandate-example-mcp-resource
fi

set +e
"$python" -m pytest -q tests/interop "$@"
status=$?
set -e
exit "$status"
