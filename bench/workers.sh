#!/usr/bin/env bash
# `make bench-workers`: `sluice serve --workers 1` against `--workers 2` on this machine, with
# every limit type on in Redis (bench/gateway-limits.yaml, LIMITS_BACKEND=redis) and the native
# server, non-streaming at c = 64. Nothing is pinned: the workers and wrk share the cores, so
# each row also says how much CPU the gateway (all its processes) and wrk used. Alternates
# 1, 2, 1, 2 so drift in the machine's load shows.
# Env: SECONDS_EACH (default 10), CONC (default 64), ROUNDS (default 2).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
export LIMITS_BACKEND=redis REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
start_upstream
secs=${SECONDS_EACH:-10}; conc=${CONC:-64}; hz=$(getconf CLK_TCK)

# CPU seconds (user + system) used so far by a process and its children (the workers)
tree_cpu() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

printf '%-8s %10s %10s %10s %12s %12s %14s\n' workers req/s p50_ms p99_ms gw_cpu_s wrk_cpu_s gw_cpu_us/req
for round in $(seq "${ROUNDS:-2}"); do
  for n in 1 2; do
    rm -f .sluice/bench.db*
    sluice serve --config bench/gateway-limits.yaml --workers "$n" 2> ".sluice/bench-workers-$n.log" &
    pid=$!; gateways+=("$pid")
    for _ in $(seq 200); do curl -fs 127.0.0.1:8080/readyz >/dev/null 2>&1 && break; sleep 0.1; done
    for _ in $(seq 200); do  # warm every worker's pools
      curl -fs 127.0.0.1:8080/v1/chat/completions -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
        -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
    done
    before=$(tree_cpu "$pid")
    out=$( { /usr/bin/time -f 'WRKCPU %U %S' wrk -t1 -c"$conc" -d"${secs}"s --latency -s "$shared/chat.lua" \
             http://127.0.0.1:8080/v1/chat/completions; } 2>&1)
    after=$(tree_cpu "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    wrk_cpu=$(awk '/WRKCPU/ {print $2 + $3}' <<<"$out")
    gw_cpu=$(awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN {printf "%.2f", (a - b) / hz}')
    per=$(awk -v c="$gw_cpu" -v r="$reqs" 'BEGIN {printf "%.0f", c * 1e6 / r}')
    printf '%-8s %10s %10s %10s %12s %12s %14s\n' "$n" "$rps" "$p50" "$p99" "$gw_cpu" "$wrk_cpu" "$per"
  done
done
