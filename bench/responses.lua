-- The OpenAI Responses API on the same work as the yardstick's chat.lua; store false (store true adds
-- one database write per request: measure it with RESPONSES_STORE=true).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "mock-model") .. '","store":' .. (os.getenv("RESPONSES_STORE") or "false") .. ',"input":"Say hello in one short sentence.","max_output_tokens":32}'
