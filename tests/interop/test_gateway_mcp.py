"""`mandate gateway` in front of an MCP server nobody on the project wrote: the official MCP Python
SDK's server (mcp_upstream_server.py, streamable HTTP) is the upstream, and the SDK's own client
(`streamable_http_client` + `ClientSession`) calls it through the gateway with an agent's access
token. The test checks what reached the upstream (never the access token; a Txn-Token naming the
agent, the transaction and the tool, verified here with PyJWT against Mandate's JWKS), that each
call is in the audit log under its `txn` with its tool name, and that calls without a valid token
are refused with the RFC 9728 challenge and never forwarded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import jwt
import pytest
import requests
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import (
    OTHER_RESOURCE,
    STARTUP_TIMEOUT_S,
    Mandate,
    child_env,
    free_port,
    running_mandate,
)

HERE = Path(__file__).resolve().parent
OWNER = "alice"
AGENT = "assistant"
AGENT_SPIFFE = "spiffe://mandate.local/agent/assistant"
TRUST_DOMAIN = "mandate.local"
SCOPE = "tools:call"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}
MCP_ACCEPT = "application/json, text/event-stream"


def _wait_for_line(proc: subprocess.Popen, log_path: Path, needle: str, what: str) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        text = log_path.read_text()
        if needle in text:
            return text
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {proc.poll()}):\n{text}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_sdk_upstream(root: Path):
    """The MCP Python SDK server on a free port; yields (base URL, file of recorded requests)."""
    port = free_port()
    record = root / "upstream-requests.jsonl"
    record.touch()
    log_path = root / "upstream.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "mcp_upstream_server.py"), str(port), str(record)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
        )
    try:
        _wait_for_line(proc, log_path, "listening on", "the MCP SDK upstream")
        yield f"http://127.0.0.1:{port}", record
    finally:
        _stop(proc)


@contextlib.contextmanager
def running_gateway(server: Mandate, root: Path, upstream: str, resource: str, port: int):
    """`mandate gateway` as a second process on the server's data directory."""
    log_path = root / "gateway.log"
    argv = [str(server.bin), "--data-dir", str(server.data_dir), "gateway", "--listen", f"127.0.0.1:{port}",
            "--upstream", upstream, "--resource", resource, "--scopes", SCOPE, "--issuer", server.base_url]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
    try:
        _wait_for_line(proc, log_path, f"Mandate gateway listening on http://127.0.0.1:{port}", "mandate gateway")
        yield
    finally:
        _stop(proc)


@dataclass
class World:
    server: Mandate
    resource: str  # the gateway's public URL, …/mcp
    record: Path  # what the upstream received, one JSON line per HTTP request
    client_id: str
    client_secret: str

    def token(self, resource: str | None = None) -> str:
        resp = self.server.token_request(
            {"resource": resource or self.resource, "scope": SCOPE}, auth=(self.client_id, self.client_secret)
        )
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def upstream_requests(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def audit_txn(self, txn: str) -> list[dict]:
        out = self.server.cli("--json", "audit", "query", "--txn", txn).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gateway-mcp")
    gateway_port = free_port()
    resource = f"http://127.0.0.1:{gateway_port}/mcp"
    with running_mandate(mandate_bin, root) as server, running_sdk_upstream(root) as (upstream, record):
        server.cli("owner", "create", OWNER)
        server.cli("resource", "create", resource, "--scope", SCOPE)
        server.cli("resource", "create", OTHER_RESOURCE, "--scope", SCOPE)
        server.cli("agent", "create", AGENT, "--owner", OWNER, "--scope", SCOPE)
        client = server.create_client(AGENT)
        with running_gateway(server, root, upstream, resource, gateway_port):
            yield World(server, resource, record, client["client_id"], client["client_secret"])


@dataclass
class Session:
    tool_names: list[str]
    add: object
    whoami: dict


def structured(result) -> dict:
    """A tool result's structured content, else its first text block parsed as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def sdk_session(resource: str, token: str) -> Session:
    """The MCP Python SDK client against the gateway: initialize, tools/list, two tools/call."""

    async def run() -> Session:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http:
            async with streamable_http_client(resource, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = await session.list_tools()
                    added = await session.call_tool("add", {"a": 2, "b": 40})
                    who = await session.call_tool("whoami", {})
        return Session([t.name for t in tools.tools], added, structured(who))

    return asyncio.run(run())


def verify_txn_token(server: Mandate, token: str) -> dict:
    """Check a Txn-Token with PyJWT against the server's JWKS: typ, signature, iss, aud, exp."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "txntoken+jwt"
    keys = jwt.PyJWKSet.from_dict(requests.get(server.url("/.well-known/jwks.json"), timeout=10).json())
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    return jwt.decode(token, key, algorithms=["EdDSA", "ES256"], audience=TRUST_DOMAIN, issuer=server.base_url,
                      options={"require": ["exp", "iat", "txn", "sub"]})


def test_sdk_client_calls_sdk_server_through_the_gateway(world: World):
    token = world.token()
    world.server.tokens_seen.append(token)
    before = len(world.upstream_requests())

    session = sdk_session(world.resource, token)

    # tools/list and tools/call work end to end.
    assert {"add", "whoami"} <= set(session.tool_names)
    assert not session.add.is_error
    assert session.add.content[0].text == "42"

    # The upstream saw a Txn-Token, and neither the access token nor any Authorization/DPoP header.
    who = session.whoami
    assert who["received"] == {"authorization": False, "dpop": False, "txn-token": True}, who
    seen = world.upstream_requests()[before:]
    assert seen, "the upstream received nothing"
    for request in seen:
        assert request["authorization"] == [], request
        assert "authorization" not in request["header_names"] and "dpop" not in request["header_names"]
        assert len(request["txn_token"]) == 1, request
        assert token not in json.dumps(request)

    # The Txn-Token is genuine and says who acts for whom, in which transaction, with which tool.
    claims = verify_txn_token(world.server, who["txn_token"])
    assert claims == who["txn_claims"]
    assert claims["sub"] == AGENT_SPIFFE
    assert claims["act"] == {"sub": AGENT_SPIFFE}
    assert claims["mandate_owner"] == OWNER
    assert claims["scope"] == SCOPE
    assert claims["req_wl"] == f"spiffe://{TRUST_DOMAIN}/gateway"
    assert claims["tctx"]["mcp_method"] == "tools/call" and claims["tctx"]["tool"] == "whoami"
    assert claims["tctx"]["path"] == "/mcp"
    assert claims["rctx"]["req_ip"] == "127.0.0.1"

    # Every request is its own transaction; the `add` call carried its own tool name.
    per_request = [jwt.decode(r["txn_token"][0], options={"verify_signature": False}) for r in seen]
    assert len({c["txn"] for c in per_request}) == len(per_request)
    add_calls = [c for c in per_request if c.get("tctx", {}).get("tool") == "add"]
    assert len(add_calls) == 1 and add_calls[0]["tctx"]["mcp_method"] == "tools/call"
    assert any(c.get("tctx", {}).get("mcp_method") == "tools/list" for c in per_request)

    # The audit log has the gateway's event for each call, under its txn, with the tool name.
    for tool, txn in (("whoami", claims["txn"]), ("add", add_calls[0]["txn"])):
        events = world.audit_txn(txn)
        assert events and all(e["txn"] == txn for e in events), events
        forward = [e for e in events if e["action"] == "gateway.forward"]
        assert len(forward) == 1, events
        assert forward[0]["decision"] == "allow"
        assert f"tool={tool}" in forward[0]["detail"] and "mcp_method=tools/call" in forward[0]["detail"]
        assert forward[0]["agent"] == AGENT_SPIFFE and forward[0]["owner"] == OWNER
        assert forward[0]["client"] == world.client_id and forward[0]["resource"] == world.resource
        assert forward[0]["jti"] == jwt.decode(token, options={"verify_signature": False})["jti"]
        assert forward[0]["correlation_id"] == next(e["correlation_id"] for e in events if e is not forward[0])
        assert any(e["action"] == "txn_token.issue" and e["decision"] == "allow" for e in events), events
        assert token not in json.dumps(events)


def _refused_and_not_forwarded(world: World, headers: dict) -> requests.Response:
    before = len(world.upstream_requests())
    resp = requests.post(world.resource, json=INITIALIZE, headers={"Accept": MCP_ACCEPT, **headers}, timeout=10)
    assert len(world.upstream_requests()) == before, "a refused request reached the upstream"
    return resp


def test_call_without_token_is_refused_with_resource_metadata_challenge(world: World):
    resp = _refused_and_not_forwarded(world, {})
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["WWW-Authenticate"]
    metadata_url = world.resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{metadata_url}"' in challenge, challenge

    # The challenge leads an MCP client to the authorization server (RFC 9728).
    metadata = requests.get(metadata_url, timeout=10)
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["resource"] == world.resource
    assert world.server.base_url in metadata.json()["authorization_servers"]


def test_token_for_another_resource_is_refused(world: World):
    token = world.token(OTHER_RESOURCE)
    resp = _refused_and_not_forwarded(world, {"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401, resp.text
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_forged_token_is_refused(world: World):
    head, body, sig = world.token().split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA" if not sig.endswith("AAAA") else f"{head}.{body}.{sig[:-4]}BBBB"
    resp = _refused_and_not_forwarded(world, {"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401, resp.text
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
