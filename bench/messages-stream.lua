-- The Anthropic Messages API on the same work as the yardstick's chat-stream.lua.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY") or "sk-bench"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "mock-stream") .. '","stream":true,"messages":[{"role":"user","content":"Count to sixty-four."}],"max_tokens":64}'
