#!/usr/bin/env bash
# `make soak`: resident memory of one sluice process over a long run at concurrency 16.
# Samples RSS every 10 s while wrk drives the non-streaming then the streaming path.
# Env: SOAK_SECONDS (default 300, split between the two paths).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_stack soak-gateway.log
half=$((${SOAK_SECONDS:-300} / 2))
(
  SECONDS_EACH=$half "$shared/load" http://127.0.0.1:8080/v1/chat/completions chat.lua 16
  SECONDS_EACH=$half BENCH_MODEL=mock-stream "$shared/load" http://127.0.0.1:8080/v1/chat/completions chat-stream.lua 16
) > .sluice/soak-load.txt &
load=$!
echo "t_s rss_mib"
t=0
while kill -0 "$load" 2>/dev/null; do echo "$t $(rss_mib)"; sleep 10; t=$((t + 10)); done
cat .sluice/soak-load.txt
echo "usage rows written: $(python3 -c "import sqlite3;print(sqlite3.connect('.sluice/bench.db').execute('select count(*) from usage').fetchone()[0])")"
