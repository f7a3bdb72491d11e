-- POST /v1/embeddings with a different text each request, base64 as the openai SDK asks (bench/embed_batch.py).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
local model = os.getenv("BENCH_MODEL") or "e-batch"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"model":"' .. model .. '","input":"The quick brown fox jumps over the lazy dog, '
    .. 'and request ' .. n .. ' asks for its own vector.","encoding_format":"base64"}')
end
