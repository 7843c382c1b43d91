"""ID-JAG (Identity Assertion JWT Authorization Grant) across two Mandate instances, driven by
code nobody on the project wrote: the MCP Python SDK's `IdentityAssertionOAuthProvider` (SEP-990
client side, `mcp` on PyPI) redeems an ID-JAG that Mandate-as-IdP issued at a second Mandate (the
MCP server's authorization server) and calls the guard-protected example MCP resource with the
access token; PyJWT and joserfc verify the ID-JAG and the access token independently.

The ID token Mandate-as-IdP trades for the ID-JAG comes from an upstream IdP this test plays
(its key is made here with `cryptography`, the ID token signed with PyJWT)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx2
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from conftest import CLI_TIMEOUT_S, Mandate, child_env, running_mandate, running_mcp_resource

INSECURE = {"MANDATE_ALLOW_INSECURE_FEDERATION": "true"}
UPSTREAM = "https://upstream.interop.example"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
AGENT_SPIFFE = "spiffe://mandate.local/agent/assistant"


def cli_insecure(server: Mandate, *args: str) -> dict:
    """A CLI command that names http:// loopback issuers, which only the test mode admits."""
    argv = [str(server.bin), "--data-dir", str(server.data_dir), "--json", *args]
    proc = subprocess.run(argv, env={**child_env(), **INSECURE}, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class Upstream:
    """An OpenID provider outside Mandate: a P-256 key and ID tokens signed with PyJWT."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": "upstream-1", "alg": "ES256", "use": "sig"}]}

    def id_token(self, sub: str, client_id: str) -> str:
        now = int(time.time())
        claims = {"iss": UPSTREAM, "sub": sub, "aud": client_id, "iat": now, "exp": now + 300,
                  "auth_time": now - 10, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "upstream-1", "typ": "JWT"})


def jwks_of(server: Mandate) -> dict:
    return requests.get(server.url("/.well-known/jwks.json"), timeout=10).json()


@pytest.fixture(scope="module")
def world(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """Mandate as IdP, Mandate as the MCP server's AS, and the example MCP resource."""
    root = tmp_path_factory.mktemp("id-jag")
    (root / "idp").mkdir()
    (root / "as").mkdir()
    upstream = Upstream()
    with running_mandate(mandate_bin, root / "idp", extra_env=INSECURE) as idp, \
            running_mandate(mandate_bin, root / "as", extra_env=INSECURE) as ras, \
            running_mcp_resource(ras.base_url, root) as resource:
        # The resource AS: the MCP server as a resource, the agent's client, the IdP trusted.
        ras.cli("owner", "create", "alice")
        ras.cli("resource", "create", resource, "--scope", "notes:read", "--scope", "notes:write")
        ras.cli("agent", "create", "assistant", "--owner", "alice", "--scope", "notes:read", "--scope", "notes:write")
        ras_client = ras.create_client("assistant", "--auth", "client_secret_post")
        cli_insecure(ras, "idp", "add", "mandate-idp", "--issuer", idp.base_url,
                     "--jwks-url", idp.url("/.well-known/jwks.json"))
        # The IdP: the same agent, trusting the upstream IdP, delegated to the resource AS.
        idp.cli("owner", "create", "alice")
        idp.cli("agent", "create", "assistant", "--owner", "alice")
        idp_client = idp.create_client("assistant")
        jwks_file = root / "upstream-jwks.json"
        jwks_file.write_text(json.dumps(upstream.jwks))
        idp.cli("idp", "add", "upstream", "--issuer", UPSTREAM, "--jwks-file", str(jwks_file))
        cli_insecure(idp, "agent", "delegate", "assistant", "--audience", ras.base_url, "--resource", resource,
                     "--scope", "notes:read", "--scope", "notes:write", "--client-id", ras_client["client_id"])
        yield {"idp": idp, "ras": ras, "resource": resource, "upstream": upstream,
               "idp_client": idp_client, "ras_client": ras_client}


def request_id_jag(world: dict, audience: str, resource: str, scope: str = "notes:read") -> requests.Response:
    idp, client = world["idp"], world["idp_client"]
    id_token = world["upstream"].id_token("alice", client["client_id"])
    form = {"grant_type": TOKEN_EXCHANGE, "requested_token_type": ID_JAG, "subject_token": id_token,
            "subject_token_type": ID_TOKEN, "audience": audience, "resource": resource, "scope": scope}
    return requests.post(idp.token_endpoint, data=form, auth=(client["client_id"], client["client_secret"]),
                         timeout=10)


def test_id_jag_verifies_with_pyjwt_and_joserfc(world: dict) -> None:
    resp = request_id_jag(world, world["ras"].base_url, world["resource"], "notes:read notes:delete")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["issued_token_type"] == ID_JAG and body["token_type"] == "N_A"
    assert body["scope"] == "notes:read"
    id_jag = body["access_token"]
    assert jwt.get_unverified_header(id_jag)["typ"] == "oauth-id-jag+jwt"

    keys = jwt.PyJWKSet.from_dict(jwks_of(world["idp"]))
    kid = jwt.get_unverified_header(id_jag)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims = jwt.decode(id_jag, key, algorithms=["EdDSA", "ES256"], audience=world["ras"].base_url,
                        issuer=world["idp"].base_url, options={"require": ["exp", "iat", "jti", "sub"]})
    assert claims["sub"] == "alice"
    assert claims["client_id"] == world["ras_client"]["client_id"]
    assert claims["resource"] == world["resource"]
    assert claims["scope"] == "notes:read"
    assert claims["act"] == {"sub": AGENT_SPIFFE}
    assert claims["exp"] - claims["iat"] == 300

    token = jose_jwt.decode(id_jag, KeySet.import_key_set(jwks_of(world["idp"])), algorithms=["EdDSA", "ES256"])
    assert token.header["typ"] == "oauth-id-jag+jwt"
    assert token.claims["aud"] == world["ras"].base_url
    world["idp"].tokens_seen.append(id_jag)


def test_an_id_jag_for_an_unconfigured_audience_is_refused(world: dict) -> None:
    resp = request_id_jag(world, "https://unknown-as.example", world["resource"])
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_target", resp.text


class MemoryStorage:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def test_mcp_sdk_redeems_the_id_jag_and_calls_the_mcp_server(world: dict) -> None:
    ras, resource = world["ras"], world["resource"]
    asked: list[tuple[str, str]] = []

    async def assertion_provider(audience: str, resource_id: str) -> str:
        asked.append((audience, resource_id))
        resp = await asyncio.to_thread(request_id_jag, world, audience, resource_id)
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    storage = MemoryStorage()
    provider = IdentityAssertionOAuthProvider(
        server_url=resource,
        storage=storage,
        client_id=world["ras_client"]["client_id"],
        client_secret=world["ras_client"]["client_secret"],
        issuer=ras.base_url,
        assertion_provider=assertion_provider,
        scope="notes:read",
    )

    async def call() -> httpx2.Response:
        async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
            request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            return await http.post(resource, json=request, headers={"Accept": "application/json, text/event-stream"})

    response = asyncio.run(call())
    assert response.status_code == 200, response.text
    assert "tools" in response.json()["result"]
    assert asked == [(ras.base_url, resource)], "the SDK asks for an ID-JAG for this AS and MCP server"

    assert storage.tokens is not None and storage.tokens.token_type.lower() == "bearer"
    access_token = storage.tokens.access_token
    ras.tokens_seen.append(access_token)
    keys = jwt.PyJWKSet.from_dict(jwks_of(ras))
    kid = jwt.get_unverified_header(access_token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims = jwt.decode(access_token, key, algorithms=["EdDSA", "ES256"], audience=resource, issuer=ras.base_url)
    assert jwt.get_unverified_header(access_token)["typ"] == "at+jwt"
    assert claims["sub"] == "alice" and claims["mandate_owner"] == "alice"
    assert claims["client_id"] == world["ras_client"]["client_id"]
    assert claims["act"] == {"sub": AGENT_SPIFFE}
    assert claims["mandate_idp"] == world["idp"].base_url
    assert claims["scope"] == "notes:read"
