"""The benchmark's real MCP upstream: a server built with the official MCP Python SDK
(`mcp.server.mcpserver.MCPServer`), streamable HTTP in stateless JSON-response mode on
127.0.0.1:PORT/mcp, so every POST of a JSON-RPC `tools/call` is answered on its own (no session,
no SSE stream) and wrk can replay one request body.

    python mcp_upstream.py PORT

Tool: `lookup(key)`, a dictionary lookup — the smallest tool a real server has. The server
prints `listening on http://127.0.0.1:PORT/mcp` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

RECORDS = {f"record-{i}": {"id": i, "owner": "alice", "status": "open"} for i in range(1000)}

server = MCPServer("gateway-bench-upstream")


@server.tool()
def lookup(key: str) -> dict:
    """One record by key."""
    return RECORDS.get(key, {})


async def main(port: int) -> None:
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"127.0.0.1:{port}"],
        allowed_origins=[f"http://127.0.0.1:{port}"],
    )
    app = server.streamable_http_app(
        transport_security=security, host="127.0.0.1", stateless_http=True, json_response=True
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
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
    asyncio.run(main(int(sys.argv[1])))
