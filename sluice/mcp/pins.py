"""Rug-pull defence (issue 25, item 5): a tool's definition is pinned by hash in the policy; anything else is quarantined.

A definition is what a model reads of a tool: its name (the server's own), title, description, input and
output schemas and annotations, as canonical JSON (keys sorted), hashed with SHA-256. The active policy's
``mcp.pins`` maps the namespaced name (``server__tool``) to the hash an operator approved. On a server whose
``mcp.pin`` is ``required`` (the default), a tool whose current definition is not pinned (``unpinned``) or
is not the pinned one (``changed``) is quarantined: ``tools/list`` hides it and ``tools/call`` refuses it,
until an operator approves the definition by a change set that sets its pin. Every replica reads the same
pins (they are in the policy version) and hashes what its upstream says now, so all agree.

A call is checked against the definitions this replica last listed from the server, listed again when they
are older than ``mcp.pin_recheck_s``. The first time a replica quarantines a definition it writes an audit
entry (``mcp.quarantine``) naming the tool, both hashes and the scan finding.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
import mcp.types as mt

from ..core import clock
from ..core.mcp_config import McpPolicy
from ..core.types import ChangeEvent
from ..guard import Detector
from ..guard.injection import injection_score
from .authz import namespaced
from .jsonrpc import REFUSED, Refusal

log = logging.getLogger("sluice.mcp")
State = Literal["pinned", "changed", "unpinned", "off"]
FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
_SCAN = Detector()
_NO_PINS = McpPolicy()


def definition(tool: mt.Tool) -> dict[str, Any]:
    """The part of a tool that is pinned, as plain JSON data (absent fields are absent, not null)."""
    data = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {k: data[k] for k in FIELDS if k in data}


def definition_hash(tool: mt.Tool) -> str:
    """SHA-256 (hex) of the canonical JSON of a tool's definition."""
    return hashlib.sha256(msgspec.json.encode(definition(tool), order="sorted")).hexdigest()


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


def scan(tool: mt.Tool) -> dict[str, Any]:
    """What an approver should know before pinning: the injection signal and the secret/PII kinds found in
    every text of the definition (descriptions, schema titles, enum values, annotations)."""
    text = "\n".join(_texts(definition(tool)))
    score = injection_score(text)
    kinds = sorted({f.kind for f in _SCAN.find(text)})
    return {"injection": score, "detectors": kinds, "flagged": score > 0 or bool(kinds)}


class Seen:
    """One tool as its server lists it now, with its pin state under the active policy."""

    __slots__ = ("server", "name", "tool", "sha256", "pinned", "state")

    def __init__(self, server: str, name: str, tool: mt.Tool, sha256: str, pinned: str | None, state: State) -> None:
        self.server, self.name, self.tool = server, name, tool  # name: namespaced
        self.sha256, self.pinned, self.state = sha256, pinned, state

    @property
    def quarantined(self) -> bool:
        return self.state in ("changed", "unpinned")


class Pins:
    """Compares what the servers list with the active policy's pins; remembers each server's last listing."""

    def __init__(self, policy: Callable[[], McpPolicy | None], recheck_s: float,
                 record: Callable[[ChangeEvent], Awaitable[None]] | None = None) -> None:
        self._policy = policy  # the active version's ``mcp`` section
        self._recheck_s = recheck_s
        self._record = record  # the store's change log and audit journal
        self._listed: dict[str, tuple[float, dict[str, Seen]]] = {}  # server -> (monotonic time, tools by own name)
        self._reported: set[tuple[str, str]] = set()  # (namespaced tool, hash) already written as quarantined

    def section(self) -> McpPolicy:
        return self._policy() or _NO_PINS

    def judge(self, server: str, namespace: str, tool: mt.Tool) -> Seen:
        p = self.section()
        name = namespaced(namespace, tool.name)
        digest = definition_hash(tool)
        pinned = p.pins.get(name)
        if p.mode(server) == "off":
            state: State = "off"
        else:
            state = "unpinned" if pinned is None else "pinned" if pinned == digest else "changed"
        return Seen(server=server, name=name, tool=tool, sha256=digest, pinned=pinned, state=state)

    async def observe(self, server: str, namespace: str, tools: list[mt.Tool]) -> list[Seen]:
        """Every tool of a listing with its state; remembers the listing and records each new quarantine."""
        seen = [self.judge(server, namespace, t) for t in tools]
        self._listed[server] = (time.monotonic(), {s.tool.name: s for s in seen})
        for s in seen:
            if s.quarantined and (s.name, s.sha256) not in self._reported:
                self._reported.add((s.name, s.sha256))
                await self._quarantined(s)
        return seen

    async def screen(self, server: str, namespace: str, tools: list[mt.Tool]) -> list[mt.Tool]:
        """The tools of a listing that are not quarantined."""
        return [s.tool for s in await self.observe(server, namespace, tools) if not s.quarantined]

    async def check_call(self, server: str, namespace: str, tool: str,
                         listing: Callable[[], Awaitable[list[mt.Tool]]]) -> None:
        """Refuse a call to a quarantined tool (a ``Refusal``); lists the server again when the last listing is old."""
        if self.section().mode(server) == "off":
            return
        at, tools = self._listed.get(server, (None, {}))
        if at is None or time.monotonic() - at > self._recheck_s:
            await self.screen(server, namespace, await listing())
            tools = self._listed[server][1]
        got = tools.get(tool)
        seen = self.judge(server, namespace, got.tool) if got is not None else None  # pins may have changed since
        if seen is None or seen.quarantined:
            name = namespaced(namespace, tool)
            why = "the server does not list it" if seen is None else (
                "its definition is not pinned" if seen.state == "unpinned" else "its definition changed since it was pinned")
            raise Refusal(REFUSED, f"The tool {name[:64]} is quarantined pending approval: {why}. An operator approves "
                                   f"its definition with `sluice mcp approve {name[:64]}`.", "tool_quarantined",
                          data={"reason": "quarantined", "state": "unlisted" if seen is None else seen.state,
                                "sha256": None if seen is None else seen.sha256})

    async def _quarantined(self, s: Seen) -> None:
        log.warning("mcp: tool %s quarantined (%s): sha256 %s, pinned %s", s.name, s.state, s.sha256, s.pinned)
        if self._record is None:
            return
        event = ChangeEvent(id=uuid.uuid4().hex, ts=clock.now(), actor="sluice", action="mcp.quarantine", target=s.name,
                            source_ip=None, detail={"server": s.server, "state": s.state, "sha256": s.sha256,
                                                    "pinned": s.pinned, "scan": scan(s.tool)})
        try:
            await self._record(event)
        except Exception as exc:  # the tool stays quarantined either way; only the entry is missing
            self._reported.discard((s.name, s.sha256))
            log.warning("mcp: could not record the quarantine of %s: %s", s.name, type(exc).__name__)
