#!/usr/bin/env bash
# `make bench-floor`: sluice against the yardstick's floor (../shared/bench/floor.py: the bare job on
# asyncio protocols and llhttp, nothing else), in one session, alternating, both pinned to CPU 0.
# Absolute req/s move with the machine (a slow machine halves both); the ratio to the floor
# measured in the same minute does not, so the issue's targets are read as ratios to the floor
# the issue measured beside them (floor 37,000-37,700 req/s c=16 plain, 15,500-17,000 streaming
# c=16, 0.15 ms p50 at c=1): 15,000 req/s plain is 0.40 of the floor, 8,000 streaming is 0.49,
# 0.2 ms at c=1 is 1.33 times the floor's p50.
# Env: ROUNDS (default 3), SECONDS_EACH (default 5), CONFIG (default bench/gateway.yaml).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_stack floor-gateway.log
export SECONDS_EACH=${SECONDS_EACH:-5}
out=.sluice/floor-ratio.txt
: > "$out"
floor() {  # $1 mode (plain|stream): start floor.py on 8095 for this mode, pinned like the gateway
  BENCH_KEY=$BENCH_KEY taskset -c 0 python3 "$shared/floor.py" 8095 "$1" > .sluice/floor.log 2>&1 &
  floor_pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8095) 2>/dev/null && return; sleep 0.1; done
}
row() {  # $1 who, $2 port, $3 kind, $4 conc
  local lua=chat.lua model=mock-model
  [ "$3" = stream ] && { lua=chat-stream.lua; model=mock-stream; }
  BENCH_MODEL=$model "$shared/load" "http://127.0.0.1:$2/v1/chat/completions" "$lua" "$4" | awk -v w="$1" -v k="$3" 'END {print w, k, $1, $2, $3}' | tee -a "$out"
}
for _ in $(seq "${ROUNDS:-3}"); do
  for kind in plain stream; do
    floor "$kind"
    for c in 1 16; do row floor 8095 "$kind" "$c"; row sluice 8080 "$kind" "$c"; done
    kill "$floor_pid"; wait "$floor_pid" 2>/dev/null || true
  done
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def med(who, kind, c, i):
    return statistics.median(float(r[i]) for r in rows if r[0] == who and r[1] == kind and r[2] == c)
print("what                      floor        sluice       sluice/floor   target as a ratio")
for kind, c, target in (("plain", "16", 0.40), ("stream", "16", 0.49), ("plain", "1", None)):
    f, s = med("floor", kind, c, 3), med("sluice", kind, c, 3)
    print(f"{kind:6} c={c:2} req/s       {f:10,.0f}   {s:10,.0f}   {s / f:10.3f}     {'>= %.2f' % target if target else ''}")
f, s = med("floor", "plain", "1", 4), med("sluice", "plain", "1", 4)
print(f"plain  c= 1 p50 ms      {f:10.3f}   {s:10.3f}   {s / f:10.2f}x    <= 1.33x")
PY
