"""One record per MCP tool call, resource read, prompt get and completion: the ``tool_decisions`` row, the metric,
the span.

Every ``tools/call`` that names a tool of a server ends in exactly one ``Call.finish``, whatever became
of it: refused by the registry (``block``), held (``hold``), refused by a limit (``limited``), quarantined
(``quarantined``), run (``allow``), or failed upstream or in the result checks (``error``). A
``resources/read`` or ``prompts/get`` that reaches a server ends in one as well, in the same columns: its
``tool`` is ``resource:URI`` or ``prompt:server__prompt``, its arguments the URI or the prompt's arguments,
its decision ``allow``, ``block`` (no grant), ``quarantined`` or ``error``; its metric label is
``prompt:server__prompt`` or, for every resource, ``resources/read`` (URIs are unbounded); its span is
``mcp resources/read`` or ``mcp prompts/get``. A ``completion/complete`` likewise: ``tool`` ``completion:`` and the
prompt (``server__prompt``) or resource template it names, its arguments the ref, the argument and the context,
its metric label ``completion:server__prompt`` or, for every template, ``completion/complete``. The row says who, which server
and tool, the arguments' hash (and masked form), the decision and its reason, the latency, the result's
size, the upstream's status, the result as it went back (masked, bounded) and, when the caller names
it, the model tool call that proposed this call (``tool_call_id``: ``_meta["sluice/tool_call_id"]`` or
the ``x-sluice-tool-call-id`` header), which joins it to that model call's own decision row.

Rows go to the store off the request path (``ToolApprovals.record``); the metric is a labelled counter
and histogram (``sluice_mcp_calls``, ``sluice_mcp_call_duration_seconds``); the span is emitted only
when tracing is on and the call is sampled. ``metrics`` and ``tracer`` are handed in by the composition
root (``sluice.mcp`` does not import ``sluice.telemetry``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from ..core import clock
from ..guard import Judgement, context_digest
from ..guard.approvals import MASK
from ..guard.tools import canonical, masked_args

TOOL_CALL_META = "sluice/tool_call_id"
_CONTEXTS: dict[tuple[str, str], str] = {}  # (server, tool) -> the context digest of its calls


def _context(server: str, tool: str) -> str:
    """What an MCP call's decision is tied to: its server and tool (the same digest for every call of it)."""
    got = _CONTEXTS.get((server, tool))
    if got is None:
        if len(_CONTEXTS) > 10_000:  # tool names come from callers: the memo stays bounded
            _CONTEXTS.clear()
        got = _CONTEXTS[(server, tool)] = context_digest({"mcp": server, "tool": tool})
    return got
TOOL_CALL_HEADER = "x-sluice-tool-call-id"


class Call:
    """What one tools/call came to, filled in along the call path and written once at its end."""

    __slots__ = ("server", "tool", "arguments", "tool_call_id", "judgement", "decision", "reason", "upstream_status",
                 "result_bytes", "result_masked", "approval_id", "started", "started_ns", "sampling", "method", "label")

    def __init__(self, server: str, tool: str, arguments: dict[str, Any], tool_call_id: str | None,
                 sampling: Any, method: str = "tools/call", label: str | None = None) -> None:
        self.server, self.tool, self.arguments = server, tool, arguments
        self.method = method  # tools/call, resources/read, prompts/get
        self.label = label or tool  # the metric's ``tool`` label
        self.tool_call_id = tool_call_id[:128] if tool_call_id else None
        self.judgement: Judgement | None = None
        self.decision, self.reason = "allow", "allowed"
        self.upstream_status: str | None = None  # ok | error <code> | timeout | unreachable (None: never sent)
        self.result_bytes: int | None = None
        self.result_masked: str | None = None
        self.approval_id: str | None = None
        self.started = time.perf_counter()
        self.started_ns = time.time_ns() if sampling is not None else 0
        self.sampling = sampling  # the tracer's sampling of this request (None: no span)

    def refuse(self, decision: str, reason: str) -> None:
        self.decision, self.reason = decision, reason[:256]


class CallLog:
    """Writes a finished ``Call`` out: the store row, the metric, the span."""

    def __init__(self, record: Any, active: Any, metrics: Any = None, tracer: Any = None,
                 max_result_chars: int = 4096) -> None:
        self._record = record  # ToolApprovals.record: rows written off the request path
        self._active = active  # the active policy version (``.version``, ``.hash``)
        self._metrics = metrics
        self.tracer = tracer
        self._max_result_chars = max_result_chars

    def begin(self, server: str, tool: str, arguments: dict[str, Any], headers: Mapping[str, str], meta: Mapping[str, Any],
              method: str = "tools/call", label: str | None = None) -> Call:
        """A call's record, started: the proposing tool call's id from ``_meta`` or the header, the trace sampling."""
        proposed = meta.get(TOOL_CALL_META) or headers.get(TOOL_CALL_HEADER)
        tracer = self.tracer
        return Call(server, tool, arguments, str(proposed) if proposed is not None else None,
                    tracer.sampling(headers) if tracer is not None else None, method, label)

    def result(self, call: Call, guarded: Any) -> dict[str, Any]:
        """A guarded result (``results.guard_result``) kept with its record as it goes back (already masked by the
        detectors, bounded), with what the detectors found in the record's reason; its body."""
        body: dict[str, Any] = guarded.body
        call.result_bytes = guarded.size
        if self._max_result_chars:
            text = msgspec.json.encode(body).decode()
            call.result_masked = text if len(text) <= self._max_result_chars else text[:self._max_result_chars] + "…"
        if guarded.injection:
            call.reason = f"{call.reason}; injection {guarded.injection:.2f}"[:256]
        if guarded.kinds:
            call.reason = f"{call.reason}; masked {','.join(sorted(guarded.kinds))}"[:256]
        return body

    def finish(self, call: Call, who: Any, request_id: str) -> None:
        seconds = time.perf_counter() - call.started
        j = call.judgement
        if j is not None:
            args_text = j.canonical or j.call.arguments
            digest = j.args_sha256
        else:
            try:
                args_text = canonical(call.arguments)
            except (ValueError, TypeError, RecursionError):  # a float the body's decoder read as NaN or infinite
                args_text = '"[not JSON]"'
            digest = hashlib.sha256(args_text.encode()).hexdigest()
        active = self._active()
        self._record([{
            "ts": clock.now(), "request_id": request_id, "identity_id": who.identity_id, "model": f"mcp:{call.server}",
            "context_digest": _context(call.server, call.tool), "tool": call.tool[:64],
            "call_id": "", "decision": call.decision, "reason": call.reason,
            "args_masked": masked_args(args_text, MASK), "args_sha256": digest, "approval_id": call.approval_id,
            "approver": None, "policy_version": getattr(active, "version", None),
            "policy_hash": getattr(active, "hash", None), "latency_ms": round(seconds * 1000.0, 3),
            "result_bytes": call.result_bytes, "upstream_status": call.upstream_status,
            "tool_call_id": call.tool_call_id, "result_masked": call.result_masked}])
        if self._metrics is not None:
            self._metrics.mcp_call(call.server, call.label, call.decision, seconds)
        if self.tracer is not None and call.sampling is not None:
            attrs: dict[str, Any] = {"mcp.server": call.server, "mcp.tool": call.tool, "mcp.method": call.method,
                                     "sluice.decision": call.decision, "sluice.identity": who.identity_name,
                                     "sluice.request_id": request_id}
            if call.upstream_status:
                attrs["mcp.upstream_status"] = call.upstream_status
            if call.result_bytes is not None:
                attrs["mcp.result_bytes"] = call.result_bytes
            if call.tool_call_id:
                attrs["gen_ai.tool.call.id"] = call.tool_call_id
            error = call.reason if call.decision in ("error", "limited", "block", "quarantined") else None
            self.tracer.single(f"mcp {call.method}", call.sampling, who.identity_id, attrs, error, call.started_ns,
                               time.time_ns())
