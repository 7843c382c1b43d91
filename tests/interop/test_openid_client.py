"""openid-client (npm, panva) against Mandate: OIDC discovery, authorization code + PKCE with the
RFC 9207 `iss` check, ID token validation, DPoP-bound access tokens (RFC 9449) used at the
guard-protected example MCP resource, and refresh-token rotation.  The node script does the
protocol work; this file sets up the registry and checks the outcome."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jwt
import pytest

from conftest import OWNER, Mandate, child_env, running_mcp_resource

HERE = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"
REDIRECT_URI = "http://127.0.0.1:9/callback"


def set_password(mandate: Mandate, owner: str, password: str) -> None:
    argv = [str(mandate.bin), "--data-dir", str(mandate.data_dir), "owner", "set-password", owner]
    proc = subprocess.run(argv, input=password + "\n", env=child_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def flow(mandate: Mandate, registry, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("openid-client")
    set_password(mandate, OWNER, PASSWORD)
    with running_mcp_resource(mandate.base_url, root) as resource:
        mandate.cli("resource", "create", resource, "--scope", "notes:read", "--scope", "notes:write")
        made = mandate.cli_json(
            "client", "create", "--auth", "none", "--redirect-uri", REDIRECT_URI, "--name", "openid-client interop"
        )
        argv = ["node", str(HERE / "openid_client" / "flow.mjs"), mandate.base_url, made["client_id"], REDIRECT_URI,
                resource, resource, OWNER, PASSWORD]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=child_env())
        assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["client_id"] = made["client_id"]
        result["resource"] = resource
        mandate.tokens_seen += [result["access_token"], result["refreshed_access_token"]]
        return result


def test_authorization_response_carries_iss_and_a_forged_one_is_refused(flow: dict) -> None:
    assert flow["callback_has_iss"] is True
    assert flow["forged_iss_error"], "openid-client accepted an authorization response from another issuer"


def test_id_token_was_validated_by_openid_client(flow: dict, mandate: Mandate) -> None:
    claims = flow["id_token_claims"]
    assert claims["iss"] == mandate.base_url
    assert claims["sub"] == OWNER
    assert claims["aud"] == flow["client_id"] or flow["client_id"] in claims["aud"]


def test_access_token_is_dpop_bound_and_audience_restricted(flow: dict, mandate: Mandate) -> None:
    assert flow["token_type"].lower() == "dpop"
    claims = jwt.decode(flow["access_token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(flow["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == flow["resource"]
    assert claims["sub"] == OWNER
    assert "jkt" in claims["cnf"]
    assert mandate.introspect(flow["access_token"])["active"] is True


def test_resource_accepts_the_dpop_token_and_refuses_it_as_bearer(flow: dict) -> None:
    assert flow["rs_dpop_status"] == 200, flow
    assert flow["rs_dpop_body"]["result"]["protocolVersion"]
    assert flow["rs_bearer_status"] == 401
    assert "invalid_token" in (flow["rs_bearer_challenge"] or "")
    # openid-client parsed both challenges the guard sent: Bearer and DPoP.
    schemes = {c["scheme"].lower() for c in flow["rs_bearer_parsed"]}
    assert {"bearer", "dpop"} <= schemes, flow["rs_bearer_parsed"]


def test_refresh_rotates_and_stays_dpop_bound(flow: dict) -> None:
    assert flow["has_refresh_token"] is True
    assert flow["rotated"] is True
    assert flow["refreshed_token_type"].lower() == "dpop"
    assert flow["rs_refreshed_status"] == 200
