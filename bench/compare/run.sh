#!/usr/bin/env bash
# Measures the bare pass-through variants on the shared yardstick (server on CPU 0, wrk on CPU 1).
# Needs: pip install granian uvicorn httptools orjson httpx; nginx and wrk.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); shared=${SHARED_BENCH:-$here/../../../shared/bench}
export BENCH_KEY=${BENCH_KEY:-sk-bench}
dir=$("$shared/start-mock-upstream" | tail -n 1)
trap 'kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true' EXIT
for variant in ${VARIANTS:-"aiohttp aiohttp msgspec" "aiohttp httpx msgspec" "uvicorn aiohttp msgspec" "granian aiohttp msgspec" "aiohttp aiohttp orjson" "aiohttp aiohttp json"}; do
  set -- $variant
  port=19080
  taskset -c 0 python "$here/passthrough.py" "$1" "$2" "$3" $port >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs -XPOST -H "Authorization: Bearer $BENCH_KEY" 127.0.0.1:$port/v1/chat/completions -d '{}' >/dev/null 2>&1 && break; sleep 0.1; done
  echo "== server=$1 client=$2 json=$3"
  "$shared/load" http://127.0.0.1:$port/v1/chat/completions chat.lua "${CONCS:-1 16}" | tail -n +2
  kill $pid; wait $pid 2>/dev/null || true
done
