-- wrk request script for bench/gateway: every request is the same MCP JSON-RPC tools/call,
-- which the gateway parses (MCP awareness: the tool name goes into the Txn-Token and the audit
-- event). The access token, if any, comes from wrk's own -H "Authorization: ..." flag.
-- No response() callback on purpose: it would make wrk parse every body.
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":40}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
