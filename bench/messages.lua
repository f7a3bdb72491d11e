-- The Anthropic Messages API on the same work as the yardstick's chat.lua (make ab A_API/B_API=messages).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY") or "sk-bench"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "mock-model") .. '","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
