"""The web console (/ui) in a real browser: headless Chromium (the Debian `chromium` package),
driven by playwright-core (browser/console.mjs). The owner signs in, finds their agent with the
search box, and approves a CIBA request the agent's client made from Python — the client then
gets its token; then the owner pulls the agent's kill switch (typing its name to confirm) and the
audit trail, filtered by the agent, shows the revocation while both tokens fail introspection.
Screenshots of every step go to $MANDATE_ARTIFACTS (default tests/interop/artifacts)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import requests

from conftest import OWNER, RESOURCE, Mandate, child_env
from test_openid_client import PASSWORD, set_password

HERE = Path(__file__).resolve().parent
GRANT = "urn:openid:params:grant-type:ciba"
AGENT = "console-bot"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("MANDATE_ARTIFACTS") or HERE / "artifacts").resolve()


@pytest.fixture(scope="module")
def console_client(mandate: Mandate, registry) -> dict:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian chromium package (.ci/run does)")
    set_password(mandate, OWNER, PASSWORD)
    mandate.cli("agent", "create", AGENT, "--owner", OWNER, "--scope", "read", "--scope", "write")
    return mandate.create_client(AGENT, "--grant-type", "client_credentials", "--grant-type", GRANT)


def in_browser(mandate: Mandate, message: str, phase: str) -> dict:
    argv = ["node", str(HERE / "browser" / "console.mjs"), mandate.base_url, OWNER, PASSWORD, AGENT, message,
            phase, str(ARTIFACTS)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          env={**child_env(), "CHROMIUM": str(CHROMIUM)})
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def redeem(mandate: Mandate, client: dict, auth_req_id: str) -> requests.Response:
    """Polls until the interval allows an answer (slow_down is the server pacing, not a result)."""
    for _ in range(30):
        resp = requests.post(
            mandate.token_endpoint,
            data={"grant_type": GRANT, "auth_req_id": auth_req_id},
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        if resp.status_code != 400 or resp.json().get("error") != "slow_down":
            return resp
        time.sleep(1)
    raise AssertionError("the token endpoint kept answering slow_down")


def test_the_owner_approves_and_pulls_the_kill_switch_in_chromium(mandate: Mandate, console_client: dict) -> None:
    client = (console_client["client_id"], console_client["client_secret"])
    issued = mandate.token_request({"scope": "read"}, auth=client)
    assert issued.status_code == 200, issued.text
    agent_token = issued.json()["access_token"]
    assert mandate.introspect(agent_token)["active"] is True

    message = "Purge the <b>staging</b> cache of console-bot"
    details = [{"type": "cache_action", "actions": ["purge"], "locations": [RESOURCE]}]
    resp = requests.post(
        mandate.url("/oauth2/bc-authorize"),
        data={"scope": "openid write", "resource": RESOURCE, "login_hint": OWNER, "binding_message": message,
              "authorization_details": json.dumps(details)},
        auth=client,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    auth_req_id = resp.json()["auth_req_id"]
    assert redeem(mandate, console_client, auth_req_id).json()["error"] == "authorization_pending"

    approve = in_browser(mandate, message, "approve")
    assert approve["login_url"] == "/ui/login", "no session: the console asks to sign in"
    assert (approve["after_login"], approve["signed_in_as"]) == ("Agents", OWNER)
    assert approve["search_hits"] == [AGENT], approve
    assert approve["agent_heading"] == f"Agent {AGENT}"
    assert approve["live_tokens"] >= 1, "the agent's token is listed as live"
    assert approve["binding_message_shown"] is True, "shown as text, markup and all"
    assert (approve["decision_status"], approve["decision_heading"]) == (200, "Approved")

    granted = redeem(mandate, console_client, auth_req_id)
    assert granted.status_code == 200, granted.text
    ciba_token = granted.json()["access_token"]
    mandate.tokens_seen.append(ciba_token)
    claims = jwt.decode(ciba_token, options={"verify_signature": False})
    assert claims["authorization_details"] == details
    assert mandate.introspect(ciba_token)["active"] is True

    revoke = in_browser(mandate, message, "revoke")
    assert revoke["confirm_heading"] == f"Kill switch: agent {AGENT}"
    assert revoke["confirm_summary"] == f"Every access token issued to agent {AGENT} until now stops working."
    assert (revoke["revoke_status"], revoke["revoke_heading"]) == (200, "Revoked")
    assert revoke["revocation_rows"] >= 1
    assert revoke["log_status"].startswith("The log is verified up to checkpoint ") or "No checkpoint" in \
        revoke["log_status"], revoke["log_status"]
    assert "FAILED" not in revoke["log_status"]
    assert mandate.introspect(agent_token)["active"] is False
    assert mandate.introspect(ciba_token)["active"] is False, "its act chain names the agent"

    steps = [f"approve-{s}" for s in ("1-login", "2-agents", "3-search", "4-agent", "5-approvals", "6-approved")]
    steps += [f"revoke-{s}" for s in ("5-confirm", "6-typed", "7-revoked", "8-audit")]
    for step in steps:
        assert (ARTIFACTS / f"console-{step}.png").stat().st_size > 0, step
