#!/usr/bin/env bash
# Bytecodes per request, per Python function: where the interpreter's share of `make instructions` goes.
# The bench gateway (bench/gateway.yaml, the canned upstream) runs with a settrace opcode counter on every
# thread (sitecustomize below), off until WARM requests are done, on for N (bench/requests.py, 16 in
# flight), then written as JSON {"file:line:function": [opcodes, calls]}. Tracing slows the gateway ~10x, so
# per-batch work (the ledger's) weighs as under callgrind, not as at real speed. Compare two trees with
# bench/opcodes_diff.py A.json B.json N. Not beside `make instructions`: both use .sluice/bench.db.
# Env: SIDES ("NAME:ROOT ..."), N (default 2000), WARM (100), OUT (directory, default .sluice/opcodes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N=${N:-2000}
WARM=${WARM:-100}
OUT=${OUT:-.sluice/opcodes}
SIDES=${SIDES:-"now:$root"}
mkdir -p "$OUT"
start_upstream
api_request chat plain
pre=$(mktemp -d)
cat > "$pre/sitecustomize.py" <<'PY'
import collections, json, os, signal, sys, threading
import sluice.store.sql as _s
_init = _s.SqlStore.__init__
_s.SqlStore.__init__ = lambda self, url, *, timeout=5.0: _init(self, url, timeout=600.0)  # tracing is slow
ops, calls, on = collections.Counter(), collections.Counter(), [False]
def _op(frame, event, arg):
    if event == "opcode":
        ops[frame.f_code] += 1
    return _op
def _call(frame, event, arg):
    if not on[0]:
        return None
    frame.f_trace_opcodes = True
    calls[frame.f_code] += 1
    return _op
sys.settrace(_call)
threading.settrace(_call)
def _start(*_):
    ops.clear(); calls.clear(); on[0] = True
def _dump(*_):
    on[0] = False
    out = {}
    for c in {*ops, *calls}:
        out[f"{c.co_filename.split('/sluice/')[-1]}:{c.co_firstlineno}:{c.co_name}"] = [ops[c], calls[c]]
    with open(os.environ["OPCOUNT_OUT"], "w") as f:
        json.dump(out, f)
signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _dump)
PY
for side in $SIDES; do
  IFS=: read -r name side_root <<<"$side"
  rm -f .sluice/bench.db*
  OPCOUNT_OUT="$OUT/$name.json" PYTHONPATH="$side_root:$pre" python -m sluice serve --config bench/gateway.yaml 2> "$OUT/$name.log" &
  gwpid=$!
  for _ in $(seq 600); do curl -fs "127.0.0.1:8081/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
  python "$root/bench/requests.py" chat plain "$model" "$WARM"
  kill -USR1 "$gwpid"
  python "$root/bench/requests.py" chat plain "$model" "$N"
  kill -USR2 "$gwpid"; sleep 2
  kill -INT "$gwpid"; wait "$gwpid" || true
  echo "$OUT/$name.json"
done
rm -rf "$pre"
