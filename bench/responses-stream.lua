-- The OpenAI Responses API on the same work as the yardstick's chat-stream.lua.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "mock-stream") .. '","stream":true,"store":' .. (os.getenv("RESPONSES_STORE") or "false") .. ',"input":"Count to sixty-four.","max_output_tokens":64}'
