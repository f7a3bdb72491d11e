#!/usr/bin/env bash
# `make ab`: what a config change costs. Two gateways run side by side, both pinned to
# CPU 0 (only one is loaded at a time), and wrk drives them in alternating short bursts
# (A, B, A, B, ...), so slow drift of this shared machine falls on both sides alike.
# Per burst: req/s, and the gateway's CPU microseconds per request (all its threads, from
# /proc). At the end: the median of the per-round B/A ratios, non-streaming and streaming.
# Env: A and B (configs; default bench/gateway.yaml and bench/gateway-limits.yaml),
#      A_ENV and B_ENV (extra environment of one side: "NAME=value ..."),
#      A_API and B_API (the client API each side is driven through: chat (default), messages, responses), ROUNDS (default 12), CONC (default 16), SECONDS_EACH (default 3), LIMITS_BACKEND.
#      A config naming ${OTLP_ENDPOINT} (bench/gateway-tracing.yaml) starts the live OTLP sink on CPU 1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
A=${A:-bench/gateway.yaml}
B=${B:-bench/gateway-limits.yaml}
export SECONDS_EACH=${SECONDS_EACH:-3}
start_upstream
if grep -qs 'OTLP_ENDPOINT' "$A" "$B"; then start_collector; fi  # a config tracing to the bench sink gets a live one
start_gateway "$A" ab-A.log 0 "${A_ENV:-}"; gw_a=$last_gw
start_gateway "$B" ab-B.log 10 "${B_ENV:-}"; gw_b=$last_gw
hz=$(getconf CLK_TCK)
out=.sluice/ab.txt
: > "$out"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

api_of() { if [ "$1" = A ]; then echo "${A_API:-chat}"; else echo "${B_API:-chat}"; fi; }

burst() {  # $1 side, $2 pid, $3 port, $4 kind (plain|stream)
  local lua path model api t0 t1 row rps
  api=$(api_of "$1")
  api_request "$api" "$4"
  t0=$(cpu_ticks "$2")
  row=$(BENCH_MODEL=$model "$shared/load" "http://127.0.0.1:$3$path" "$lua" "${CONC:-16}" | tail -n 1)
  t1=$(cpu_ticks "$2")
  rps=$(awk '{print $2}' <<<"$row")
  # a side answering errors would look fast: every answer of a burst must be a 2xx
  [ "$(awk '{print $5}' <<<"$row")" = 0 ] || { echo "side $1 ($api, $4) answered non-2xx: $row" >&2; exit 1; }
  awk -v s="$1" -v k="$4" -v r="$rps" -v a="$t0" -v b="$t1" -v hz="$hz" -v d="$SECONDS_EACH" \
    'BEGIN {printf "%s %s %.0f %.1f\n", s, k, r, (b - a) / hz * 1e6 / (r * d)}' | tee -a "$out"
}

for port in 8080 8090; do  # warm both: pools, caches, tokenizer
  curl -fs "127.0.0.1:$port/v1/chat/completions" -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
done
echo "side kind rps cpu_us_per_req  (A=$A ${A_API:-chat} B=$B ${B_API:-chat}, c=${CONC:-16}, ${SECONDS_EACH}s bursts, ${ROUNDS:-12} rounds)"
for kind in plain stream; do
  for _ in $(seq "${ROUNDS:-12}"); do burst A "$gw_a" 8080 "$kind"; burst B "$gw_b" 8090 "$kind"; done
done
python3 - "$out" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
for kind in ("plain", "stream"):
    a = [r for r in rows if r[0] == "A" and r[1] == kind]
    b = [r for r in rows if r[0] == "B" and r[1] == kind]
    rps = [float(y[2]) / float(x[2]) for x, y in zip(a, b)]
    cpu = [float(x[3]) / float(y[3]) for x, y in zip(a, b)]
    med = lambda rs, i: statistics.median(float(r[i]) for r in rs)
    print(f"{kind:6}: req/s A {med(a, 2):,.0f} B {med(b, 2):,.0f}, median B/A {statistics.median(rps):.3f} "
          f"(quartiles {statistics.quantiles(rps, n=4)[0]:.3f}-{statistics.quantiles(rps, n=4)[2]:.3f}) | "
          f"CPU per request A {med(a, 3):.0f} us B {med(b, 3):.0f} us, median A/B {statistics.median(cpu):.3f}")
EOF
[ -z "${collector:-}" ] || echo "OTLP sink received: $(curl -fs "127.0.0.1:${OTLP_PORT:-14318}/stats")"
