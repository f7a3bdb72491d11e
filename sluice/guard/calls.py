"""Tool calls in a reply, by position: read from a whole message or from a choice's held stream events,
and written back with only the calls that may go, their arguments as judged (canonical, masked).

Calls are told apart by where they stand (their place in ``tool_calls``, their streamed ``index``),
never by ``id``: a model may send calls with no id or the same id twice. The legacy
``function_call`` (one call per message) is a call like the others, standing after them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .tools import ToolCall

LEGACY = -1  # the position of a message's ``function_call``
Mask = Callable[[str], str]


def call_of(c: Any) -> ToolCall:
    """A ``tool_calls`` entry (or a ``function_call``) as the judge reads it."""
    if not isinstance(c, dict):
        return ToolCall()
    fn = c.get("function") if "function" in c else c  # function_call carries name and arguments itself
    fn = fn if isinstance(fn, dict) else {}
    return ToolCall(id=str(c.get("id") or ""), name=str(fn.get("name") or ""), arguments=str(fn.get("arguments") or ""))


def message_calls(msg: dict[str, Any]) -> list[tuple[int, ToolCall]]:
    """(position, call) of each call a whole message makes: its ``tool_calls``, then its ``function_call``."""
    calls = msg.get("tool_calls")
    out = [(n, call_of(c)) for n, c in enumerate(calls)] if isinstance(calls, list) else []
    if isinstance(msg.get("function_call"), dict):
        out.append((LEGACY, call_of(msg["function_call"])))
    return out


def rewrite_message(msg: dict[str, Any], outs: dict[int, str | None], mask: Mask | None = None) -> bool:
    """Keep the calls whose position maps to arguments (None: the call goes), names masked; whether any call is left."""
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        kept = []
        for n, c in enumerate(calls):
            args = outs.get(n)
            if args is None:
                continue
            if isinstance(c, dict) and isinstance(c.get("function"), dict):
                _set(c["function"], args, mask)
            kept.append(c)
        if kept:
            msg["tool_calls"] = kept
        else:
            msg.pop("tool_calls", None)
    if isinstance(msg.get("function_call"), dict):
        args = outs.get(LEGACY)
        if args is None:
            msg.pop("function_call")
        else:
            _set(msg["function_call"], args, mask)
    return bool(msg.get("tool_calls")) or "function_call" in msg


def _set(fn: dict[str, Any], args: str, mask: Mask | None) -> None:
    fn["arguments"] = args
    if mask is not None and isinstance(fn.get("name"), str):
        fn["name"] = mask(fn["name"])


class StreamedCalls:
    """One choice's tool-call events, held until the calls are complete; assembled by streamed index."""

    __slots__ = ("events", "_calls", "_pieces", "_named")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._calls: dict[int, ToolCall] = {}
        self._pieces: dict[int, list[dict[str, Any]]] = {}  # the dicts whose "arguments" hold each call's fragments
        self._named: dict[int, list[dict[str, Any]]] = {}  # the dicts whose "name" holds each call's name

    def add(self, d: dict[str, Any]) -> None:
        self.events.append(d)
        delta = d["choices"][0].get("delta") or {}
        for tc in delta.get("tool_calls") or ():
            if isinstance(tc, dict):
                k = tc.get("index")
                self._add(k if type(k) is int and k >= 0 else 0, tc, tc.get("function"))
        fc = delta.get("function_call")
        if isinstance(fc, dict):
            self._add(LEGACY, fc, fc)

    def _add(self, k: int, entry: dict[str, Any], fn: Any) -> None:
        call = self._calls.setdefault(k, ToolCall())
        call.id = call.id or str(entry.get("id") or "")
        if isinstance(fn, dict):
            if fn.get("name"):
                call.name += str(fn["name"])
                self._named.setdefault(k, []).append(fn)
            if "arguments" in fn:
                call.arguments += str(fn.get("arguments") or "")
                self._pieces.setdefault(k, []).append(fn)

    def calls(self) -> list[tuple[int, ToolCall]]:
        """(position, call), the ``tool_calls`` in index order and the ``function_call`` last."""
        return sorted(self._calls.items(), key=lambda kv: (kv[0] == LEGACY, kv[0]))

    def rewrite(self, outs: dict[int, str | None], mask: Mask | None = None) -> tuple[list[dict[str, Any]], bool]:
        """(the events with only the kept calls, renumbered, their arguments spread over the same
        fragments, names masked; events left with nothing dropped), whether any call is left."""
        for k, args in outs.items():
            if args is not None:
                _spread_arguments(self._pieces.get(k, []), args)
                for fn in self._named.get(k, ()):
                    if mask is not None:
                        fn["name"] = mask(str(fn["name"]))
        renumber = {k: n for n, k in enumerate(sorted(k for k, a in outs.items() if a is not None and k != LEGACY))}
        events = []
        for d in self.events:
            c = d["choices"][0]
            delta = c.get("delta") or {}
            if "tool_calls" in delta:
                kept = []
                for tc in delta["tool_calls"] or ():
                    k = tc.get("index") if isinstance(tc, dict) else None
                    k = k if type(k) is int and k >= 0 else 0
                    if k in renumber:
                        kept.append({**tc, "index": renumber[k]})
                if kept:
                    delta["tool_calls"] = kept
                else:
                    del delta["tool_calls"]
            if "function_call" in delta and outs.get(LEGACY) is None:
                del delta["function_call"]
            if delta or c.get("finish_reason") is not None:
                events.append(d)
        return events, bool(renumber) or outs.get(LEGACY) is not None


def _spread_arguments(pieces: list[dict[str, Any]], text: str) -> None:
    """Put ``text`` back into the fragments it came in, each keeping its length where it can (the last takes the rest)."""
    if not pieces:
        return
    at = 0
    for fn in pieces[:-1]:
        n = len(str(fn.get("arguments") or ""))
        fn["arguments"] = text[at:at + n]
        at += n
    pieces[-1]["arguments"] = text[at:]
