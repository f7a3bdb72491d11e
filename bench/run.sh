#!/usr/bin/env bash
# `make bench`: the canned upstream, sluice pinned to CPU 0 as one process, and the shared
# load driver (wrk on CPU 1) at concurrency 1, 16 and 64, non-streaming and streaming, with
# key authentication, scope checks, usage recording and metrics all on.
# Env: SECONDS_EACH (default 10), CONCS (default "1 16 64"), STREAM_CONCS (default "1 16 64").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
cd "$root"

need() { command -v "$1" >/dev/null || { echo "installing $1"; (apt-get update -qq && apt-get install -y -qq "$1") >/dev/null; }; }
need nginx
need wrk
command -v sluice >/dev/null || { echo "sluice is not on PATH: run via 'make bench'" >&2; exit 1; }

export BENCH_KEY=${BENCH_KEY:-$(sluice keys generate --env prod)}
export SLUICE_ADMIN_KEY=${SLUICE_ADMIN_KEY:-$(sluice keys generate --admin)}
mkdir -p .sluice && rm -f .sluice/bench.db*

dir=$("$shared/start-mock-upstream" | tail -n 1)
taskset -c 0 sluice serve --config bench/gateway.yaml 2> .sluice/bench-gateway.log &
gw=$!
cleanup() { kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs 127.0.0.1:8081/readyz >/dev/null 2>&1 && break; sleep 0.1; done

# warm the pools, then measure
curl -fs 127.0.0.1:8080/v1/chat/completions -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
echo "== non-streaming (model mock-model) =="
"$shared/load" http://127.0.0.1:8080/v1/chat/completions chat.lua "${CONCS:-1 16 64}"
echo "== streaming, 64 chunks (model mock-stream) =="
BENCH_MODEL=mock-stream "$shared/load" http://127.0.0.1:8080/v1/chat/completions chat-stream.lua "${STREAM_CONCS:-1 16 64}"
echo "== gateway RSS after the run: $(ps -o rss= -p "$gw" | awk '{printf "%.0f MiB", $1/1024}') =="
curl -fs 127.0.0.1:8081/metrics | grep -E '^sluice_requests_total' | head -n 8 || true
