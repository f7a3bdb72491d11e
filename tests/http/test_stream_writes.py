"""A stream's writes are batched (head, events and last chunk in one send when they come together),
but nothing is held back waiting for a batch: a slow model's stream head goes out at once."""

from __future__ import annotations

import time

import httpx

from support import Sim, start_gateway


def test_a_stream_head_is_not_held_back_by_a_slow_first_event(tmp_path):
    sim = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "o", "models": ["*"]}])
    try:
        sim.faults(first_token_delay_ms=2000)
        body = {"model": "sim-small", "stream": True, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        t0 = time.monotonic()
        with httpx.stream("POST", g.v1 + "/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {g.keys['app']}"}) as r:
            head_s = time.monotonic() - t0
            lines = [line for line in r.iter_lines() if line]
            body_s = time.monotonic() - t0
        assert r.status_code == 200 and lines[-1] == "data: [DONE]"
        # The head is sent when the upstream's head arrives, not with the first event 2 s later.
        assert head_s < 1.2 and body_s >= 2.0, (head_s, body_s)
    finally:
        g.stop()
        sim.stop()
