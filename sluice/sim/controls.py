"""The sim's test controls: ``/sim/stats`` (counters) and ``/sim/faults`` (what to break)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from .faults import FaultSpec
from .replica import ReplicaBase, error_reply, json_reply

_faults_decoder = msgspec.json.Decoder(FaultSpec)


class SimControls(ReplicaBase):
    """Stats and faults of a replica, for tests and benchmarks."""

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /sim/stats``: counters, gauges, the prefix cache size and the current faults."""
        snap: dict[str, Any] = self.stats.snapshot()
        snap["waiting"] = self.latency.waiting
        snap["decoding"] = self.latency.decoding
        snap["prefix_cache_blocks"] = len(self.cache)
        snap["replica"] = self.replica
        snap["faults"] = self.faults.state()
        snap["last_chat"] = self.last_chat
        snap["last_completion"] = self.last_completion
        snap["last_messages"] = self.last_messages
        snap["last_responses"] = self.last_responses
        snap["traceparents"] = list(self.traceparents)
        return json_reply(snap)

    async def kv_events(self, request: web.Request) -> web.Response:
        """``GET /sim/kv_events?after=SEQ``: the KV block event batches after ``SEQ`` (404 unless enabled)."""
        log = self.cache.events
        if log is None:
            return error_reply(404, "KV events are off; start the sim with kv_events enabled.")
        try:
            after = int(request.query.get("after", "-1"))
        except ValueError:
            return error_reply(400, "`after` must be an integer sequence number.")
        return json_reply({"next_seq": log.next_seq, "batches": log.after(after)})

    async def reset_stats(self, request: web.Request) -> web.Response:
        """``POST /sim/stats/reset``."""
        self.stats.reset()
        return json_reply({"ok": True})

    async def set_faults(self, request: web.Request) -> web.Response:
        """``POST /sim/faults``: replace the injected faults."""
        try:
            spec = _faults_decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return error_reply(400, str(exc))
        self.faults.set(spec)
        return json_reply(self.faults.state())

    async def clear_faults(self, request: web.Request) -> web.Response:
        """``DELETE /sim/faults``: back to healthy."""
        self.faults.clear()
        return json_reply(self.faults.state())
