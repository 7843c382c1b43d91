-- wrk request script for the MCP phase of bench/gateway: every request is the same JSON-RPC
-- tools/call of the MCP Python SDK upstream's `lookup` tool (stateless streamable HTTP, JSON
-- answers). The access token, if any, comes from wrk's own -H "Authorization: ..." flag.
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup","arguments":{"key":"record-7"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
