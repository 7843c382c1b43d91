"""The CIBA approval page in a real browser: headless Chromium (the Debian `chromium` package),
driven by playwright-core (browser/decide.mjs). An agent's client asks for approval of one
described action (from Python); the owner opens the approval page in Chromium, sees the binding
message, signs in and clicks Approve (first request) or Deny (second). The client's token
request then succeeds with exactly the approved `authorization_details`, or is refused with
`access_denied`. Screenshots before and after each step go to $MANDATE_ARTIFACTS (default
tests/interop/artifacts), which CI keeps."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jwt
import pytest
import requests

from conftest import OWNER, RESOURCE, Mandate, child_env
from test_openid_client import PASSWORD, set_password

HERE = Path(__file__).resolve().parent
GRANT = "urn:openid:params:grant-type:ciba"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("MANDATE_ARTIFACTS") or HERE / "artifacts").resolve()


@pytest.fixture(scope="module")
def ciba_client(mandate: Mandate, registry) -> dict:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian chromium package (.ci/run does)")
    set_password(mandate, OWNER, PASSWORD)
    mandate.cli("agent", "create", "browser-bot", "--owner", OWNER, "--scope", "read", "--scope", "write")
    return mandate.create_client("browser-bot", "--grant-type", GRANT)


def details(action: str) -> str:
    return json.dumps([{"type": "db_action", "actions": [action], "locations": [RESOURCE]}])


def ask(mandate: Mandate, client: dict, message: str, action: str) -> str:
    resp = requests.post(
        mandate.url("/oauth2/bc-authorize"),
        data={"scope": "openid write", "resource": RESOURCE, "login_hint": OWNER, "binding_message": message,
              "authorization_details": details(action)},
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["auth_req_id"]


def approval_url(mandate: Mandate, message: str) -> str:
    """The owner's page for the pending request with this binding message. The path comes from
    `mandate ciba pending`; the host is the server's (the CLI does not know its listen port)."""
    pending = json.loads(mandate.cli("--json", "ciba", "pending", OWNER).stdout)
    row = next((r for r in pending if r["binding_message"] == message), None)
    assert row is not None, pending
    return mandate.url(f"/oauth2/ciba/approve/{row['approval_id']}")


def in_browser(url: str, decision: str, message: str, name: str) -> dict:
    argv = ["node", str(HERE / "browser" / "decide.mjs"), url, OWNER, PASSWORD, decision, message,
            str(ARTIFACTS), name]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**child_env(), "CHROMIUM": str(CHROMIUM)})
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def redeem(mandate: Mandate, client: dict, auth_req_id: str) -> requests.Response:
    return requests.post(
        mandate.token_endpoint,
        data={"grant_type": GRANT, "auth_req_id": auth_req_id},
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )


def test_the_owner_approves_in_chromium_and_the_token_carries_exactly_that_action(
    mandate: Mandate, ciba_client: dict
) -> None:
    message = "Delete row 7 of the customers table"
    auth_req_id = ask(mandate, ciba_client, message, "delete-row-7")
    before = redeem(mandate, ciba_client, auth_req_id)
    assert (before.status_code, before.json()["error"]) == (400, "authorization_pending")

    page = in_browser(approval_url(mandate, message), "approve", message, "approve")
    assert page["page_status"] == 200
    assert page["page_heading"] == "Approve this action?"
    assert page["binding_message_shown"] is True
    assert (page["decision_status"], page["decision_heading"]) == (200, "Approved")

    resp = redeem(mandate, ciba_client, auth_req_id)
    assert resp.status_code == 200, resp.text
    mandate.tokens_seen.append(resp.json()["access_token"])
    claims = jwt.decode(resp.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == OWNER
    assert claims["authorization_details"] == json.loads(details("delete-row-7"))
    for step in ("1-opened", "2-signed-in", "3-approved"):
        assert (ARTIFACTS / f"approve-{step}.png").stat().st_size > 0


def test_the_owner_denies_in_chromium_and_the_client_gets_access_denied(
    mandate: Mandate, ciba_client: dict
) -> None:
    message = "Export every customer record"
    auth_req_id = ask(mandate, ciba_client, message, "export-all")

    page = in_browser(approval_url(mandate, message), "deny", message, "deny")
    assert page["binding_message_shown"] is True
    assert (page["decision_status"], page["decision_heading"]) == (200, "Denied")

    resp = redeem(mandate, ciba_client, auth_req_id)
    assert (resp.status_code, resp.json()["error"]) == (400, "access_denied"), resp.text
    pending = json.loads(mandate.cli("--json", "ciba", "pending", OWNER).stdout)
    assert not [r for r in pending if r["binding_message"] == message], "a denied request is no longer pending"
    for step in ("1-opened", "2-signed-in", "3-denied"):
        assert (ARTIFACTS / f"deny-{step}.png").stat().st_size > 0
