"""The kill switch: `mandate revoke --agent` invalidates everything issued to the agent so far,
as seen through RFC 7662 introspection, without touching other agents."""

import time

import jwt as pyjwt
import pytest

from conftest import OWNER

AGENT2 = "bot2"


@pytest.fixture(scope="module")
def bot2(mandate, registry) -> dict:
    mandate.cli("agent", "create", AGENT2, "--owner", OWNER, "--scope", "read")
    return mandate.create_client(AGENT2, "--auth", "client_secret_post")


def _token(mandate, client: dict) -> str:
    resp = mandate.token_request({"client_id": client["client_id"], "client_secret": client["client_secret"]})
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def test_revoke_agent_kills_its_tokens_only(mandate, registry, bot2):
    before = _token(mandate, bot2)
    assert pyjwt.decode(before, options={"verify_signature": False})["sub"] == "spiffe://mandate.local/agent/bot2"
    bystander = _token(mandate, registry.post)  # agent `bot`, same owner
    assert mandate.introspect(before)["active"] is True
    assert mandate.introspect(bystander)["active"] is True

    out = mandate.cli_json("revoke", "--agent", AGENT2)
    assert out["agent"] == AGENT2
    epoch = out["revoked_before"]
    iat = pyjwt.decode(before, options={"verify_signature": False})["iat"]
    assert epoch >= iat

    assert mandate.introspect(before) == {"active": False}
    assert mandate.introspect(bystander)["active"] is True

    # Epochs are whole seconds and inclusive: a token must come from a later second to live.
    time.sleep(1.1)
    after = _token(mandate, bot2)
    assert pyjwt.decode(after, options={"verify_signature": False})["iat"] > epoch
    answer = mandate.introspect(after)
    assert answer["active"] is True
    assert answer["sub"] == "spiffe://mandate.local/agent/bot2"
    # The old token stays dead.
    assert mandate.introspect(before) == {"active": False}


def test_revoke_unknown_agent_fails(mandate, registry):
    proc = mandate.cli("revoke", "--agent", "no-such-agent", check=False)
    assert proc.returncode != 0
    assert "no-such-agent" in proc.stderr
