#!/usr/bin/env bash
# `make soak`: resident memory of one sluice process over a long run at concurrency 16.
# Samples RSS every 10 s while wrk drives the non-streaming then the streaming path.
# Env: SOAK_SECONDS (default 300, split between the two paths).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
cd "$root"
export BENCH_KEY=${BENCH_KEY:-$(sluice keys generate --env prod)}
mkdir -p .sluice && rm -f .sluice/bench.db*
total=${SOAK_SECONDS:-300}; half=$((total / 2))
dir=$("$shared/start-mock-upstream" | tail -n 1)
taskset -c 0 sluice serve --config bench/gateway.yaml 2> .sluice/soak-gateway.log &
gw=$!
cleanup() { kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs 127.0.0.1:8081/readyz >/dev/null 2>&1 && break; sleep 0.1; done
rss() { ps -o rss= -p "$gw" | awk '{printf "%.1f", $1/1024}'; }
(
  SECONDS_EACH=$half "$shared/load" http://127.0.0.1:8080/v1/chat/completions chat.lua 16
  SECONDS_EACH=$half BENCH_MODEL=mock-stream "$shared/load" http://127.0.0.1:8080/v1/chat/completions chat-stream.lua 16
) > .sluice/soak-load.txt &
load=$!
echo "t_s rss_mib"
t=0
while kill -0 "$load" 2>/dev/null; do echo "$t $(rss)"; sleep 10; t=$((t + 10)); done
cat .sluice/soak-load.txt
echo "usage rows written: $(python3 -c "import sqlite3;print(sqlite3.connect('.sluice/bench.db').execute('select count(*) from usage').fetchone()[0])")"
