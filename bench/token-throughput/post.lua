-- wrk request script for bench/token-throughput.
-- Every request is the same client_credentials token request:
--   POST <url>   (the token endpoint path is part of the URL given to wrk)
--   Authorization: Basic base64(client_id:client_secret)   from env BENCH_AUTH
--   body: grant_type=client_credentials&resource=...&scope=read  from env BENCH_BODY
-- No response() callback is defined on purpose: it would make wrk parse
-- every body and slow the load generator down.
local auth = os.getenv("BENCH_AUTH")
local body = os.getenv("BENCH_BODY")
if auth == nil or auth == "" or body == nil or body == "" then
  io.stderr:write("post.lua: BENCH_AUTH and BENCH_BODY must be set\n")
  os.exit(2)
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = auth
wrk.headers["Accept"] = "application/json"
