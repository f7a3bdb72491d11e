#!/usr/bin/env bash
# `make bench`: the canned upstream, sluice pinned to CPU 0 as one process, and the shared
# load driver (wrk on CPU 1) at concurrency 1, 16 and 64, non-streaming and streaming, with
# key authentication, scope checks, usage recording and metrics all on.
# Env: SECONDS_EACH (default 10), CONCS and STREAM_CONCS (default "1 16 64"),
#      AUTH=token to call with a short-lived access token exchanged for the key (POST /v1/token),
#      CONFIG=bench/gateway-limits.yaml (with LIMITS_BACKEND=memory|redis) to run with usage limits on.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_stack bench-gateway.log

if [ "${AUTH:-key}" = token ]; then
  BENCH_KEY=$(curl -fs 127.0.0.1:8080/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token_type=urn:ietf:params:oauth:token-type:access_token --data-urlencode "subject_token=$BENCH_KEY" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  echo "== calling with an access token (${#BENCH_KEY} chars) =="
fi

# warm the pools, then measure
curl -fs 127.0.0.1:8080/v1/chat/completions -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
echo "== non-streaming (model mock-model) =="
"$shared/load" http://127.0.0.1:8080/v1/chat/completions chat.lua "${CONCS:-1 16 64}"
echo "== streaming, 64 chunks (model mock-stream) =="
BENCH_MODEL=mock-stream "$shared/load" http://127.0.0.1:8080/v1/chat/completions chat-stream.lua "${STREAM_CONCS:-1 16 64}"
echo "== gateway RSS after the run: $(rss_mib) MiB =="
curl -fs 127.0.0.1:8081/metrics | grep -E '^sluice_requests_total' | head -n 8 || true
