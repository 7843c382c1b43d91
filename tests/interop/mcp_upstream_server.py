"""The upstream of test_gateway_mcp.py: an MCP server built with the official MCP Python SDK
(`mcp.server.mcpserver.MCPServer`, called FastMCP before mcp 2), streamable HTTP on
127.0.0.1:PORT/mcp, run as a subprocess behind `mandate gateway`.

    python mcp_upstream_server.py PORT RECORD_FILE

Tools: `add(a, b)` and `whoami`, which reports which credential headers reached the server and
the Txn-Token (raw, plus its unverified header and claims) for the test to check. Every HTTP
request's header names and Txn-Token (if any) are also appended to RECORD_FILE as JSON lines, so
the test can assert that no request at all, not only the tool calls, carried `Authorization`.
The server prints `listening on http://127.0.0.1:PORT/mcp` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

CREDENTIAL_HEADERS = ("authorization", "dpop", "txn-token")


def unverified_jwt_parts(token: str) -> tuple[dict, dict]:
    """A JWT's header and claims, decoded without verifying anything (the test verifies)."""

    def part(text: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))

    head, body, _sig = token.split(".")
    return part(head), part(body)


server = MCPServer("gateway-interop-upstream")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def whoami(ctx: Context) -> dict:
    """Which credentials the HTTP request that carried this call had, and the Txn-Token's claims."""
    headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
    seen = {name: name in headers for name in CREDENTIAL_HEADERS}
    answer: dict = {"received": seen, "header_names": sorted(headers)}
    token = headers.get("txn-token")
    if token:
        jose_header, claims = unverified_jwt_parts(token)
        answer.update(txn_token=token, txn_token_header=jose_header, txn_claims=claims)
    return answer


class RecordHeaders:
    """ASGI middleware: one JSON line per HTTP request with its method, path, header names and
    Txn-Token, written before the MCP app sees the request."""

    def __init__(self, app, record_path: str) -> None:
        self.app = app
        self.record_path = record_path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
            entry = {
                "method": scope["method"],
                "path": scope["path"],
                "header_names": sorted({k for k, _ in headers}),
                "authorization": [v for k, v in headers if k == "authorization"],
                "txn_token": [v for k, v in headers if k == "txn-token"],
            }
            with open(self.record_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        await self.app(scope, receive, send)


async def main(port: int, record_path: str) -> None:
    # DNS-rebinding protection stays on; the gateway sends the upstream's own authority as Host.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"127.0.0.1:{port}"],
        allowed_origins=[f"http://127.0.0.1:{port}"],
    )
    app = server.streamable_http_app(transport_security=security, host="127.0.0.1")
    config = uvicorn.Config(RecordHeaders(app, record_path), host="127.0.0.1", port=port, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    serving = asyncio.create_task(uvicorn_server.serve())
    while not uvicorn_server.started:
        if serving.done():
            await serving  # re-raises the startup failure
            return
        await asyncio.sleep(0.02)
    print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
