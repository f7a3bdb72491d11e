#!/usr/bin/env bash
# `make profile`: where the data plane's time goes. The benchmark gateway under wrk load,
# sampled by py-spy for the whole burst.
# Prints the top functions by own time and by total time, non-streaming then streaming.
# Env: SECONDS_EACH (default 10), CONC (default 16), CONFIG, API (chat, messages, responses; default chat).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
command -v py-spy >/dev/null || pip install --quiet py-spy
start_stack profile-gateway.log
secs=${SECONDS_EACH:-10}
for kind in plain stream; do
  api_request "${API:-chat}" "$kind"
  py-spy record --pid "$gw" --duration "$secs" --rate 250 --format raw --output ".sluice/profile-$kind.txt" --nonblocking >/dev/null 2>&1 &
  spy=$!
  SECONDS_EACH=$secs BENCH_MODEL=$model "$shared/load" "http://127.0.0.1:8080$path" "$lua" "${CONC:-16}"
  wait "$spy" || true
  echo "== $kind: top own time, then top total time (share of samples) =="
  python3 "$(dirname "$0")/spy-top.py" ".sluice/profile-$kind.txt"
done
