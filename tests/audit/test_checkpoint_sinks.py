"""Checkpoints are signed periodically when the log grew and pushed to sinks kept apart from the
store: an append-only file and a webhook; a webhook that is down gets the checkpoint later."""

from __future__ import annotations

import time

from sluice.audit import Signer
from sluice.audit.note import open_checkpoint, split_notes
from support import LoopbackServer, QuietHandler, Sim, start_gateway

ORIGIN = "test.sluice/sinks"


class Collector(QuietHandler):
    received: list[str] = []
    failing = True

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        if Collector.failing:
            self.send_response(503)
        else:
            Collector.received.append(body)
            self.send_response(204)
        self.end_headers()


def _until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_periodic_checkpoints_reach_the_file_and_the_webhook_even_after_it_was_down(tmp_path):
    hook = LoopbackServer(Collector)
    sim = Sim(tmp_path)
    key = Signer.generate(ORIGIN)
    sink = tmp_path / "sink" / "checkpoints.log"
    sink.parent.mkdir()
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": f"{sim.url}/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=[],
                      extra={"audit": {"origin": ORIGIN, "signing_key": key.text(), "checkpoint_interval_s": 0.3,
                                       "checkpoint_file": str(sink), "checkpoint_webhook": hook.url + "/cp"}})
    try:
        assert g.admin("POST", "/admin/teams", json={"name": "t1", "owner": "o@example.com"}).status_code == 201
        notes = _until(lambda: [n for n in split_notes(sink.read_text()) if open_checkpoint(n, key.verifier()).size]
                       if sink.exists() else [])
        cp = open_checkpoint(notes[-1], key.verifier())
        assert cp.origin == ORIGIN and cp.size >= 1
        assert not Collector.received  # the webhook is down: nothing accepted yet
        Collector.failing = False
        _until(lambda: [n for n in Collector.received if open_checkpoint(n, key.verifier()).size >= cp.size])
        size = cp.size
        assert g.admin("POST", "/admin/teams", json={"name": "t2", "owner": "o@example.com"}).status_code == 201
        # the tree now holds every entry so far (the policy's seed included): wait for its checkpoint
        now = len(g.admin("GET", "/admin/audit/entries").json()["data"])
        assert now > size
        grown = _until(lambda: [n for n in split_notes(sink.read_text()) if open_checkpoint(n, key.verifier()).size >= now])
        _until(lambda: grown[0] in Collector.received)
        count = len(split_notes(sink.read_text()))
        time.sleep(1.5)  # the log did not grow: no new checkpoint
        assert len(split_notes(sink.read_text())) == count
        assert hook.url not in g.log()  # the webhook's address is not logged
    finally:
        g.stop()
        sim.stop()
        hook.stop()
