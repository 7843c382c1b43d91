"""openid-client (npm, panva) as a CIBA client of Mandate in poll mode: it starts a backchannel
authentication, polls the token endpoint while the owner approves on Mandate's page, and validates
the ID token. The node script does the protocol work; this file sets up and checks the outcome."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jwt
import pytest

from conftest import OWNER, RESOURCE, Mandate, child_env
from test_openid_client import PASSWORD, set_password

HERE = Path(__file__).resolve().parent
GRANT = "urn:openid:params:grant-type:ciba"


@pytest.fixture(scope="module")
def ciba(mandate: Mandate, registry) -> dict:
    set_password(mandate, OWNER, PASSWORD)
    mandate.cli("agent", "create", "ciba-bot", "--owner", OWNER, "--scope", "read", "--scope", "write")
    made = mandate.create_client("ciba-bot", "--grant-type", GRANT)
    argv = ["node", str(HERE / "openid_client" / "ciba.mjs"), mandate.base_url, made["client_id"],
            made["client_secret"], RESOURCE, OWNER, PASSWORD, str(mandate.bin), str(mandate.data_dir)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["client_id"] = made["client_id"]
    mandate.tokens_seen.append(result["access_token"])
    return result


def test_the_backchannel_request_was_accepted(ciba: dict) -> None:
    assert ciba["interval"] == 5
    assert ciba["expires_in"] == 300
    assert ciba["approve_status"] == 200


def test_the_token_names_the_owner_the_agent_and_exactly_the_approved_action(ciba: dict) -> None:
    assert ciba["token_type"].lower() == "bearer"
    assert ciba["has_refresh_token"] is False
    claims = jwt.decode(ciba["access_token"], options={"verify_signature": False})
    assert claims["sub"] == OWNER
    assert claims["act"]["sub"].endswith("/agent/ciba-bot")
    assert claims["aud"] == RESOURCE
    assert claims["authorization_details"] == json.loads(ciba["details"])


def test_openid_client_validated_the_id_token(ciba: dict, mandate: Mandate) -> None:
    claims = ciba["id_token_claims"]
    assert claims["iss"] == mandate.base_url
    assert claims["sub"] == OWNER
    assert claims["urn:openid:params:jwt:claim:auth_req_id"] == ciba["auth_req_id"]
