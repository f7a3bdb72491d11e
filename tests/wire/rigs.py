"""What the rigs of the native-wire tests share.

Over a real gateway (``messages_rig``, ``test_responses_native``): the tools and guardrails both native
rigs are configured with, the fallback routes between a native upstream and the same sim over chat, and
a request's usage row once the ledger has written it. In miniature (``test_anthropic_native``,
``test_responses_native_read``): an upstream's named SSE event, a real output guard, and its answer read
into the chat form, relayed, guarded and encoded back as the gateway does."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from support import Gateway

from sluice.core.guardrails import DetectorRules, Guardrails, RuleSet, ToolSpec
from sluice.guard import GuardPolicy, OutputGuard
from sluice.upstream import SSERelay

TOOLS = [
    {"name": "get_weather", "risk": "read", "identities": ["app"]},
    {"name": "delete_repo", "risk": "write", "identities": ["nobody"]},
    {"name": "transfer_funds", "risk": "high", "identities": ["app"]},
]
# the caller's secrets are masked both ways; a tool it may not use is removed before the upstream
GUARDRAILS = {"rule_sets": [{"name": "app", "match": {"identities": ["app"]},
                             "detectors": {"input": "mask", "output": "mask"}, "tools": {"undeclared": "remove"}}]}


def fallbacks(native: str) -> dict:
    """Routes between the sim over its native upstream ``native`` and over chat (``simc``): model ``fb`` tries
    the native one first and falls back to chat, ``bf`` the reverse."""
    return {
        "registry": [{"name": "fb", "versions": [
            {"version": "native", "upstream": native, "upstream_model": "sim-small", "approved": True},
            {"version": "chat", "upstream": "simc", "upstream_model": "sim-small", "approved": True}]}],
        "routes": [{"name": "to-chat", "match": {"models": ["fb"]}, "targets": [{"target": "fb@native"}],
                    "fallbacks": ["fb@chat"]},
                   {"name": "to-native", "match": {"models": ["bf"]}, "targets": [{"target": "fb@chat"}],
                    "fallbacks": ["fb@native"]}],
    }


def usage_row(g: Gateway, request_id: str, timeout: float = 10.0) -> dict:
    """The usage record of one request, once the ledger has written it."""
    deadline = time.monotonic() + timeout
    while True:
        rows = g.admin("GET", "/admin/usage", params={"limit": 200}).json()["data"]
        found = [r for r in rows if r["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            assert found, (request_id, rows[:3])
            return found[0]
        time.sleep(0.1)


def ev(name: str, **payload: Any) -> bytes:
    """One event of an upstream's stream, named as its data's ``type``."""
    return b"event: " + name.encode() + b"\ndata: " + json.dumps({"type": name, **payload}).encode() + b"\n\n"


def guard(tools: bool = False) -> OutputGuard:
    """An output guard that masks secrets, and with ``tools`` judges calls against a registry of ``get_weather``."""
    specs = [ToolSpec(name="get_weather", risk="read", identities=["i"])] if tools else []
    policy = GuardPolicy(Guardrails(rule_sets=[RuleSet(name="t", detectors=DetectorRules(output="mask"))]), specs)

    async def hold(_):  # no high-risk tools here
        raise AssertionError

    return OutputGuard(policy.rules_for(frozenset({"m"}), "i", None), policy, "i", None, tools=tools, hold=hold,
                       record=lambda j: None)


def relayed(reads: list[bytes], reader: Any, relay: SSERelay, enc: Any, g: OutputGuard | None) -> list[bytes]:
    """What ``enc`` writes, opening included, of the upstream's ``reads`` read by ``reader`` into the chat form,
    relayed and guarded by ``g`` (if any), before it is closed."""
    out = [enc.start()]

    async def go() -> None:
        for piece in reads:
            for chunk in reader.feed(piece):
                block = relay.feed(chunk)
                if g is not None and block:
                    block = await g.feed(block)
                if block:
                    out.append(enc.feed(block))

    asyncio.run(go())
    return out
