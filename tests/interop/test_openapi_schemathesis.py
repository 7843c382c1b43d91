"""The admin API against its own OpenAPI document, with schemathesis (an independent,
property-based API tester): every documented operation is called with generated valid and
invalid input, and the answers must never be server errors, must use documented status codes,
media types and headers, and must match the documented response schemas.

The run gets its own server: it creates, deletes and revokes registry records, rotates keys and
replaces the policy set, which would disturb the session server the other tests share.  It is
bounded (examples per operation and a time budget) and seeded, so CI stays fast and a failure
can be replayed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import child_env, running_mandate

# Each check is a schemathesis built-in (`st run --help`).
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # Every operation but the document itself must refuse requests without the admin credential.
    "ignored_auth",
    # Undocumented methods are answered 405 with an Allow header.
    "unsupported_method",
    "allow_header_conformance",
])
MAX_EXAMPLES = "20"
TIME_BUDGET_S = "60"
SEED = "20261123"
RUN_TIMEOUT_S = 300


def schemathesis_cli() -> list[str]:
    """The `st` entry point installed beside this interpreter (requirements.txt)."""
    script = Path(sys.executable).with_name("st")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]


@pytest.fixture(scope="module")
def own_server(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_mandate(mandate_bin, tmp_path_factory.mktemp("schemathesis")) as server:
        yield server


def test_document_is_public_and_the_api_is_not(own_server) -> None:
    doc = requests.get(own_server.url("/admin/api/v1/openapi.json"), timeout=10)
    assert doc.status_code == 200, doc.text
    assert doc.json()["openapi"].startswith("3.1")
    listed = requests.get(own_server.url("/admin/api/v1/owners"), timeout=10)
    assert listed.status_code == 401


def test_admin_api_conforms_to_its_openapi_document(own_server, tmp_path: Path) -> None:
    argv = [
        *schemathesis_cli(), "run", own_server.url("/admin/api/v1/openapi.json"),
        "--header", f"Authorization: Bearer {own_server.admin_token}",
        "--checks", CHECKS,
        "--max-examples", MAX_EXAMPLES,
        "--max-time", TIME_BUDGET_S,
        "--seed", SEED,
        "--workers", "2",
        "--request-timeout", "30",
        "--no-color",
        "--report-dir", str(tmp_path / "report"),
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=child_env(), cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert own_server.admin_token not in output, "schemathesis output must not show the credential"
    assert result.returncode == 0, output[-20000:]
    assert "passed" in output, output[-4000:]
