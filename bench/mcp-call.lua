-- One MCP tools/call per request on an open session (bench/mcp_calls.py --wrk): the yardstick's wrk, so a
-- tools/call's CPU is measured under the same load as chat.lua's. A JSON-RPC error answers 200: counted apart.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
wrk.headers["Mcp-Session-Id"] = os.getenv("MCP_SESSION") or ""
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' ..
  (os.getenv("MCP_TOOL") or "files__get_weather") .. '","arguments":{"city":"Paris"}}}'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) failed = 0 end
function response(status, headers, body)
  if status ~= 200 or string.find(body, '"error"', 1, true) or string.find(body, '"isError":true', 1, true) then
    failed = failed + 1
  end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("failed") end
  io.write(string.format("failed %d\n", n))
end
