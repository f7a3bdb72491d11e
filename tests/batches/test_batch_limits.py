"""A batch line is charged once against its owner's limits however often it runs (issue 27 item 5): a replica
killed with lines in flight leaves their reservations in the shared counters (Redis), and the replica that runs
those lines again takes no second charge; the owner's spend is exactly what its answers cost."""

from __future__ import annotations

import io
import json
import re
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import REDIS_URL, Sim, require_redis, start_gateway  # noqa: E402

from sluice.identity import generate  # noqa: E402

MODELS = [{"name": "sim-small", "upstream": "sim"}]
LINES, BUDGET = 48, 1000.0


def _lines() -> bytes:
    return b"".join(json.dumps({"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "sim-small", "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 5}}).encode() + b"\n"
        for i in range(LINES))


def test_lines_run_again_after_their_replica_died_are_charged_once_against_the_owners_spend(tmp_path: Path) -> None:
    require_redis()
    sim = Sim(tmp_path)
    sim.faults(delay_ms=250)  # the runner's 8 lines are in flight when the replica dies
    key, admin = generate("dev"), generate("prod", kind="admin")
    ident = [{"name": "app", "owner": "a@example.com", "models": ["sim-small"], "keys": [key]}]
    up = [{"name": "sim", "base_url": sim.url + "/v1"}]
    extra = {"limits": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": f"t{uuid.uuid4().hex[:8]}:",
                        "rules": [{"name": "budget", "spend_per_day": BUDGET}]},
             "prices": {"sim-small": {"input": 0.0, "output": 1_000_000.0}}}  # 1.00 an output token: 5.00 a line
    g = start_gateway(tmp_path, upstreams=up, models=MODELS, identities=ident, admin_key=admin, extra=extra)
    try:
        c = openai.OpenAI(base_url=g.v1, api_key=key, max_retries=0, timeout=60.0)
        f = c.files.create(file=("in.jsonl", io.BytesIO(_lines())), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while c.batches.retrieve(b.id).request_counts.completed < 8:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        g.proc.stop(signal.SIGKILL)  # its lines in flight hold their reservations in Redis, never settled
        g = start_gateway(tmp_path, upstreams=up, models=MODELS, identities=ident, admin_key=admin, extra=extra,
                          port=g.port)
        c = openai.OpenAI(base_url=g.v1, api_key=key, max_retries=0, timeout=60.0)
        deadline = time.monotonic() + 120  # the dead replica's lease runs out, then this one resumes the batch
        while (done := c.batches.retrieve(b.id)).status != "completed":
            assert done.status in ("validating", "in_progress", "finalizing") and time.monotonic() < deadline, done
            time.sleep(0.3)
        assert done.request_counts.completed == LINES
        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]  # type: ignore[arg-type]
        spent = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in out) * 1.0
        assert spent == LINES * 5
        time.sleep(1.0)  # the last settlements reach Redis off the request path
        # a call that does not fit says what is left of the day's budget: exactly the budget less the answers
        r = httpx.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30, json={
            "model": "sim-small", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 2000})
        assert r.status_code == 429, r.text
        left = float(re.search(r"remaining ([0-9.]+)", r.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
        assert left == BUDGET - spent, r.json()["error"]["message"]
    finally:
        g.stop()
        sim.stop()
