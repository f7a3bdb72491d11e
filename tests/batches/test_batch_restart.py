"""A batch survives a restart of its only replica, and the owner's limits pace its lines without failing them."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import Sim, start_gateway  # noqa: E402

from sluice.identity import generate  # noqa: E402

MODELS = [{"name": "sim-small", "upstream": "sim"}]


def lines(n: int) -> bytes:
    return b"".join(json.dumps({"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "sim-small", "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 3}}).encode() + b"\n"
        for i in range(n))


def finish(c: openai.OpenAI, bid: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while (b := c.batches.retrieve(bid)).status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, b
        time.sleep(0.2)
    return b


def test_a_batch_resumes_after_its_replica_restarts_and_each_line_is_answered_once(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    sim.faults(delay_ms=100)  # 400 lines take 5 s at the runner's 8 at once: the stop lands mid-batch
    key, admin = generate("dev"), generate("prod", kind="admin")
    ident = [{"name": "app", "owner": "a@example.com", "models": ["sim-small"], "keys": [key]}]
    up = [{"name": "sim", "base_url": sim.url + "/v1"}]
    g = start_gateway(tmp_path, upstreams=up, models=MODELS, identities=ident, admin_key=admin)
    try:
        c = openai.OpenAI(base_url=g.v1, api_key=key, max_retries=0, timeout=60.0)
        f = c.files.create(file=("in.jsonl", io.BytesIO(lines(400))), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while c.batches.retrieve(b.id).request_counts.completed < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        g.stop()  # SIGTERM mid-batch: its lease is given back, the lines in flight run again later
        g = start_gateway(tmp_path, upstreams=up, models=MODELS, identities=ident, admin_key=admin, port=g.port)
        c = openai.OpenAI(base_url=g.v1, api_key=key, max_retries=0, timeout=60.0)
        mid = c.batches.retrieve(b.id)
        assert mid.status == "in_progress" and mid.request_counts.completed < 400, mid  # stopped mid-batch
        done = finish(c, b.id)
        assert done.status == "completed" and done.request_counts.completed == 400, done.request_counts
        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]  # type: ignore[arg-type]
        assert sorted(o["custom_id"] for o in out) == sorted(f"c-{i}" for i in range(400))
        rows = g.admin("GET", f"/admin/usage?since={time.time() - 600}&limit=1000").json()["data"]
        mine = sorted(r["request_id"] for r in rows if r["request_id"].startswith(b.id))
        assert mine == sorted(o["response"]["request_id"] for o in out)
        # each line's one row is its answer's, not that of the run the stop cut (which ran again)
        cut = [r for r in rows if r["request_id"].startswith(b.id) and (r["status"] != 200 or r["completion_tokens"] != 3)]
        assert not cut, cut[:3]
    finally:
        g.stop()
        sim.stop()


def test_the_owners_concurrency_limit_paces_the_lines_without_failing_them(tmp_path: Path) -> None:
    sim = Sim(tmp_path)
    sim.faults(delay_ms=50)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=MODELS,
                      identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small"]}],
                      extra={"limits": {"rules": [{"name": "two-at-once", "concurrent_requests": 2}]}})
    try:
        c = openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0, timeout=60.0)
        f = c.files.create(file=("in.jsonl", io.BytesIO(lines(30))), purpose="batch")
        done = finish(c, c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h").id)
        assert done.status == "completed" and done.request_counts.completed == 30 and done.request_counts.failed == 0
        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]  # type: ignore[arg-type]
        assert len({o["custom_id"] for o in out}) == 30 and all(o["response"]["status_code"] == 200 for o in out)
        # the refused attempts are usage rows of their own (429, no tokens); each line is charged by one 200 row
        deadline = time.monotonic() + 15
        while True:
            rows = [r for r in g.admin("GET", f"/admin/usage?since={time.time() - 600}&limit=1000").json()["data"]
                    if r["request_id"].startswith(done.id)]
            ok = sorted(r["request_id"] for r in rows if r["status"] == 200)
            if len(ok) >= 30 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ok == sorted(o["response"]["request_id"] for o in out)
        refused = [r for r in rows if r["status"] == 429]
        assert refused and all(r["completion_tokens"] == 0 for r in refused)
    finally:
        g.stop()
        sim.stop()
