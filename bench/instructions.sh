#!/usr/bin/env bash
# `make instructions`: what one request costs in instructions, counted by valgrind's callgrind, so the
# figure does not move with what else the machine runs (CPU time under wrk does: a busy 2-core box
# moved `make ab`'s CPU per request by 10% between runs). The canned upstream as for every bench;
# one gateway at a time under callgrind with its instrumentation off until WARM requests are done,
# then on for N requests (httpx, 16 in flight, keep-alive), off again. Prints instructions per request.
# Periodic work (the ledger's flush, the store's polls) falls into the window at its rate: compare
# runs of the same N. Sides are run one after another and each one twice; the spread is printed.
# Env: SIDES ("NAME:ROOT:API:KIND ..."; ROOT a checkout, API chat|messages|responses|mcp, KIND plain|stream,
#      for mcp plain|pinned: the server's `pin: off` or `required` with the tool pinned;
#      default: this checkout's chat and messages, plain and stream), N (default 1000), WARM (default 100),
#      CONFIG (default bench/gateway.yaml; an mcp side needs bench/gateway-mcp.yaml, which `make
#      instructions-mcp` passes with chat and tools/call sides, so both are counted on one config in one run),
#      BENCH_PORT (the config's data-plane port, default 8080; 8090 for bench/gateway-mcp.yaml),
#      KEEP (a directory: each run's callgrind file is kept there as NAME-RUN.out, for callgrind_annotate).
# An mcp side's tool server (tests/mcp/upstream_server.py, fastmcp) runs on CPU 1 outside callgrind: its
# instructions are not counted, as the issue's cost line excludes its time.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || { echo "installing valgrind"; (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null; }
N=${N:-1000}
WARM=${WARM:-100}
SIDES=${SIDES:-"chat:$root:chat:plain messages:$root:messages:plain chat-s:$root:chat:stream messages-s:$root:messages:stream"}
start_upstream
CONFIG=${CONFIG:-bench/gateway.yaml}
export BENCH_PORT=${BENCH_PORT:-8080}  # the config's data-plane port (its control plane's is the next)
export MCP_PORT=${MCP_PORT:-18010}
case " $SIDES" in *:mcp:*)
  taskset -c 1 python "$root/tests/mcp/upstream_server.py" "$MCP_PORT" /dev/null >/dev/null 2>&1 &
  tool_server=$!
  trap 'kill "$tool_server" 2>/dev/null || true; stop_stack' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$MCP_PORT/mcp" && break; sleep 0.1; done
  MCP_PIN=$(PYTHONPATH="$root" python "$root/bench/requests.py" pin "$MCP_PORT")  # what `pinned` pins
  export MCP_PIN ;;
esac
# the store's operations are bounded at 5 s, which a gateway under callgrind's start-up can pass
pre=$(mktemp -d)
cat > "$pre/sitecustomize.py" <<'EOF'
import sluice.store.sql as _s
_init = _s.SqlStore.__init__
_s.SqlStore.__init__ = lambda self, url, *, timeout=5.0: _init(self, url, timeout=600.0)
EOF

count() {  # $1 root, $2 api, $3 kind, $4 the kept file's name: prints instructions per request
  local side_root=$1 out log gwpid
  if [ "$2" = mcp ]; then
    model=-
    if [ "$3" = pinned ]; then export MCP_PIN_MODE=required; else export MCP_PIN_MODE=off; fi
  else
    api_request "$2" "$3"
  fi
  out=$(mktemp) log=$(mktemp)
  rm -f .sluice/bench.db*
  PYTHONPATH="$side_root:$pre" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    python -m sluice serve --config "$CONFIG" 2> "$log" &
  gwpid=$!
  for _ in $(seq 1200); do curl -fs "127.0.0.1:$((BENCH_PORT + 1))/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
  python "$root/bench/requests.py" "$2" "$3" "$model" "$WARM"
  callgrind_control -i on "$gwpid" >/dev/null
  python "$root/bench/requests.py" "$2" "$3" "$model" "$N"
  callgrind_control -i off "$gwpid" >/dev/null
  kill -INT "$gwpid"; wait "$gwpid" || true
  awk -v n="$N" '/refs:/ {gsub(",", "", $4); printf "%.0f\n", $4 / n}' "$log"
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; mv "$out" "$KEEP/$4.out"; else rm -f "$out"; fi
  rm -f "$log"
}

printf "%-12s %-8s %-6s %12s %12s\n" side api kind "instr/req" "2nd run"
for side in $SIDES; do
  IFS=: read -r name side_root api kind <<<"$side"
  a=$(count "$side_root" "$api" "$kind" "$name-1")
  b=$(count "$side_root" "$api" "$kind" "$name-2")
  printf "%-12s %-8s %-6s %12s %12s\n" "$name" "$api" "$kind" "$a" "$b"
done
rm -rf "$pre"
