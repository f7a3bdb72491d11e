#!/usr/bin/env bash
# guidellm (the vLLM project's benchmark client) through sluice, against the sim, and straight
# against the sim: every request must succeed and the inter-token latency match within 15%.
#
# guidellm pulls in torch (~5-6 GB), so it lives in its own venv outside the repository
# ($GUIDELLM_VENV, default /tmp/guidellm-venv) and never runs in `make test`. Everything is
# offline: the tokenizer guidellm needs for synthetic prompts is a word-level one built here.
#
#   bench/guidellm.sh            # STREAMS=8 REQUESTS=200 PROMPT=128 OUTPUT=64 DECODE_MS=10
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${GUIDELLM_VENV:-/tmp/guidellm-venv}
streams=${STREAMS:-8} requests=${REQUESTS:-200} prompt=${PROMPT:-128} output=${OUTPUT:-64}
decode_ms=${DECODE_MS:-10}
sluice=$root/.venv/bin/sluice
[ -x "$sluice" ] || { echo "run 'make install' first" >&2; exit 1; }
if [ ! -x "$venv/bin/guidellm" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet guidellm
fi
work=$(mktemp -d /tmp/sluice-guidellm.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# A word-level tokenizer over Faker's vocabulary (what guidellm writes prompts from).
"$venv/bin/python" - "$work/tokenizer" <<'PY'
import sys
from faker import Faker
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast
fake = Faker(); fake.seed_instance(0)
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
tok.train_from_iterator((fake.text(2000) for _ in range(300)), trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(sys.argv[1])
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(free_port) data_port=$(free_port) admin_port=$(free_port)
"$sluice" sim --port "$sim_port" --decode-ms "$decode_ms" --prefill-ms 0 --base-ms 0 > "$work/sim.log" 2>&1 &
pids+=($!)
key=$("$sluice" keys generate --env dev)
cat > "$work/sluice.yaml" <<YAML
data_plane: {port: $data_port}
control_plane: {port: $admin_port}
store: {url: "sqlite:///$work/sluice.db"}
security: {pepper: "$(python3 -c 'import secrets; print(secrets.token_hex(16))')"}
upstreams: [{name: sim, base_url: "http://127.0.0.1:$sim_port/v1", extra_params: vllm}]
models: [{name: sim-small, upstream: sim}]
identities: [{name: bench, owner: bench@example.com, models: [sim-small], keys: ["$key"]}]
YAML
"$sluice" serve --config "$work/sluice.yaml" > "$work/sluice.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && curl -fs "127.0.0.1:$sim_port/health" >/dev/null && break; sleep 0.2; done

run() {  # $1: name, $2: target, $3: api key or ""
  local backend="kind=openai_http,target=$2,model=sim-small,request_format=/v1/chat/completions"
  [ -n "$3" ] && backend="$backend,api_key=$3"
  "$venv/bin/guidellm" run --backend "$backend" \
    --profile "kind=concurrent,streams=$streams" \
    --constraint "kind=max_requests,count=$requests" \
    --data "kind=synthetic_text,prompt_tokens=$prompt,output_tokens=$output" \
    --tokenizer "kind=hf_auto,model=$work/tokenizer" \
    --output "kind=json,path=$work/$1.json" --disable-console-interactive > "$work/$1.out" 2>&1 \
    || { echo "guidellm failed ($1); see $work/$1.out" >&2; tail -20 "$work/$1.out" >&2; exit 1; }
}
run direct "http://127.0.0.1:$sim_port" ""
run sluice "http://127.0.0.1:$data_port" "$key"

"$venv/bin/python" - "$work/direct.json" "$work/sluice.json" <<'PY'
import json, sys
def stats(path):
    b = json.load(open(path))["benchmarks"][0]
    m, t = b["metrics"], b["scheduler_metrics"] if "scheduler_metrics" in b else {}
    req = m["request_totals"]
    return {"successful": req["successful"], "errored": req["errored"], "incomplete": req["incomplete"],
            "itl_ms": m["inter_token_latency_ms"]["successful"]["median"],
            "ttft_ms": m["time_to_first_token_ms"]["successful"]["median"],
            "req_s": m["requests_per_second"]["successful"]["mean"]}
d, s = stats(sys.argv[1]), stats(sys.argv[2])
print(f"{'':8} {'ok':>5} {'err':>4} {'inc':>4} {'ITL ms (median)':>16} {'TTFT ms (median)':>17} {'req/s':>7}")
for name, x in (("direct", d), ("sluice", s)):
    print(f"{name:8} {x['successful']:>5} {x['errored']:>4} {x['incomplete']:>4} {x['itl_ms']:>16.2f} {x['ttft_ms']:>17.2f} {x['req_s']:>7.1f}")
ratio = s["itl_ms"] / d["itl_ms"]
print(f"ITL sluice/direct = {ratio:.3f}")
ok = s["errored"] == 0 and s["incomplete"] == 0 and s["successful"] > 0 and abs(ratio - 1) <= 0.15
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
