"""Output guardrails: minimise, redact and hold tool calls, on whole replies and on streams.

Streams stay streams: content is held back by at most ``stream_window`` characters per choice
(so a secret split across chunks is still seen whole), plus a span that is still growing at the
end of what arrived; tool-call deltas are held until their call is complete and judged, so
nothing of a blocked call reaches the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import logging
import re

import msgspec

from .detectors import Detector, Finding, masked_text
from .minimise import BASE_CHOICE, BASE_MESSAGE, BASE_REPLY, FIRST_EVENTS, Shape, sampled, shape, strip
from .policy import GuardPolicy, Rules
from .tools import Judgement, ToolCall, judge, notice, summary

log = logging.getLogger("sluice.guard")
Hold = Callable[[Judgement], Awaitable[str]]  # stores a pending approval, returns its id
Record = Callable[[Judgement], None]  # records a decision, off the request path

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_TOOL_KEY = b'"tool_calls"'


class _LightDelta(msgspec.Struct, gc=False):
    content: str | None = None


class _LightChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _LightDelta | None = None


class _LightEvent(msgspec.Struct, gc=False):
    """The part of a chunk the stream guard reads on every event."""

    choices: list[_LightChoice] = []


_light = msgspec.json.Decoder(_LightEvent).decode
_light_all = msgspec.json.Decoder(list[_LightEvent]).decode
class _Message(msgspec.Struct, omit_defaults=True):
    role: str = "assistant"
    content: str | None | msgspec.UnsetType = msgspec.UNSET
    tool_calls: list[Any] | msgspec.UnsetType = msgspec.UNSET
    refusal: str | None | msgspec.UnsetType = msgspec.UNSET
    function_call: Any = msgspec.UNSET
    annotations: list[Any] | msgspec.UnsetType = msgspec.UNSET


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    finish_reason: str | None = None


class _Minimal(msgspec.Struct, omit_defaults=True):
    """A whole reply with only what every caller gets (``BASE_*``): decoding is the minimisation."""

    id: str | msgspec.UnsetType = msgspec.UNSET
    object: str | msgspec.UnsetType = msgspec.UNSET
    created: int | msgspec.UnsetType = msgspec.UNSET
    model: str | msgspec.UnsetType = msgspec.UNSET
    choices: list[_Choice] = []
    usage: Any = msgspec.UNSET
    service_tier: str | None | msgspec.UnsetType = msgspec.UNSET


_minimal = msgspec.json.Decoder(_Minimal).decode
_BLOCK = object()  # marks a queue item that is a whole block of content events
_CONTENT = re.compile(rb'"content": ?"((?:[^"\\]|\\.)*)"')
_OTHER_CHOICE = re.compile(rb'"index": ?[1-9]')
_END = b"data: [DONE]\n\n"


class OutputGuard:
    """One request's output guard; ``reply`` for a whole body, ``feed``/``flush`` for a stream."""

    __slots__ = ("_rules", "_policy", "_identity", "_team", "_hold", "_record", "_detector", "_tools", "_expose",
                 "_shape", "_queue", "_calls", "_request_id", "_asked", "_every", "_first", "judgements", "kinds")

    def __init__(self, rules: Rules, policy: GuardPolicy, identity: str, team: str | None, *, tools: bool,
                 hold: Hold, record: Record, request_id: str = "", exposed: Shape | None = None,
                 every_event: bool = False) -> None:
        self._request_id = request_id
        self._rules = rules
        self._policy = policy
        self._identity = identity
        self._team = team
        self._hold = hold
        self._record = record
        act = rules.output_action
        self._detector: Detector | None = rules.detector if act != "allow" else None
        self._tools = tools
        # what this caller sees beyond the basics: its rule set's `output.expose` and its own grants
        self._shape = exposed if exposed is not None else shape(rules.expose)
        self._expose = self._shape.expose
        # a stream's events checked strictly: all of them, or (`sampled`) the first ones and those that
        # close it, all of them once one of those had something to strip
        self._asked = every_event or rules.spec.output.stream_check == "every_event"
        self._every = self._asked
        self._first = FIRST_EVENTS
        # [event bytes | None (rewritten), event dict | None (not decoded), choice, content, content as it came]
        self._queue: list[list[Any]] = []
        self._calls: dict[int, list[dict[str, Any]]] = {}  # held tool-call events per choice
        self.judgements: list[Judgement] = []
        self.kinds: set[str] = set()

    def fresh(self) -> OutputGuard:
        """The same guard with nothing held: for a new attempt after one that sent nothing."""
        return OutputGuard(self._rules, self._policy, self._identity, self._team, tools=self._tools,
                           hold=self._hold, record=self._record, request_id=self._request_id, exposed=self._shape,
                           every_event=self._asked)

    # -- whole replies ------------------------------------------------------------------------
    async def reply(self, body: bytes) -> bytes:
        if not self._tools and self._detector is None:  # minimisation only: the same bytes when nothing must go
            return self._shape.minimise(body)
        if not self._tools and not self._expose:  # typed: decoding drops every field beyond the basics
            try:
                r = _minimal(body)
            except msgspec.DecodeError:
                return body
            if self._detector is not None:
                for c in r.choices:
                    m = c.message
                    if m is not None and isinstance(m.content, str):
                        m.content = self._redact(m.content, final=True)[0]
            return _encode(r)
        try:
            d = _decode(body)
        except msgspec.DecodeError:
            return body
        if not isinstance(d, dict):
            return body
        expose = self._expose
        strip(d, BASE_REPLY, expose, True)
        judged: list[Judgement] = []
        for choice in d.get("choices") or ():
            strip(choice, BASE_CHOICE, expose, True)
            msg = choice.get("message")
            if not isinstance(msg, dict):
                continue
            strip(msg, BASE_MESSAGE, expose, True)
            text = msg.get("content")
            if isinstance(text, str) and self._detector is not None:
                msg["content"] = self._redact(text, final=True)[0]
            calls = msg.get("tool_calls")
            if calls and self._tools:
                kept, notes = await self._judge([_call_of(c) for c in calls], judged)
                kept_raw = [c for c in calls if _call_of(c).id in {k.id for k in kept}]
                if notes:
                    msg["content"] = "\n".join(filter(None, [msg.get("content"), *notes]))
                    msg["tool_calls"] = kept_raw or None
                    if not kept_raw:
                        msg.pop("tool_calls", None)
                        choice["finish_reason"] = "stop"
        if judged:
            d["sluice"] = {"tool_calls": summary(judged)}
        return _encode(d)

    async def _judge(self, calls: list[ToolCall], judged: list[Judgement]) -> tuple[list[ToolCall], list[str]]:
        kept, notes = [], []
        for call in calls:
            j = judge(self._policy, self._identity, self._team, call)
            if j.verdict == "hold":
                j.approval_id = await self._hold(j)
            if j.verdict == "allow":
                kept.append(call)
            else:
                notes.append(notice(j))
            judged.append(j)
            self.judgements.append(j)
            self._record(j)
        return kept, notes

    def _redact(self, text: str, *, final: bool, found: list[Finding] | None = None) -> tuple[str, int]:
        """(text with closed findings masked, where a finding still open at the end begins or len)."""
        if found is None:
            found = self._detector.find(text)  # type: ignore[union-attr]
        if not found:
            return text, len(text)
        open_at = len(text)
        if not final and found[-1].end == len(text):
            open_at = found[-1].start
            found = found[:-1]
        kinds = {f.kind for f in found}
        if not kinds <= self.kinds:  # kinds only, once each: the values never reach a log
            log.warning("guard: reply to %s carries %s (%s)", self._request_id or "-", ",".join(sorted(kinds - self.kinds)),
                        self._rules.output_action)
            self.kinds |= kinds
        if self._rules.output_action == "flag":
            return text, open_at
        return _masked(text, found, open_at)

    # -- streams ------------------------------------------------------------------------------
    def _probe(self, block: bytes) -> tuple[bytes, bool]:
        """(the block, scalar vendor fields cut, whether some event still has fields to strip or a
        tool call to judge): one strict decode of the whole block when nothing must go.

        ``sampled`` (the default) decodes only the events ``sampled`` picks, the middle of a stream
        passing as it came, until one of them has something to strip: a stream that carries a vendor
        field carries it throughout, so from then on every block is checked whole.
        """
        if not self._every:
            part, n = sampled(block, self._first)
            self._first -= n
            if self._shape.pure(part):
                return block, self._tools and _TOOL_KEY in block
            self._every = True
        block, clean = self._shape.clean_events(block)
        return block, not clean or (self._tools and _TOOL_KEY in block)

    async def feed(self, block: bytes) -> bytes:
        """Whole events in; the events that may go out now (possibly rewritten or held back).

        The common event (content only) is decoded into a small typed struct and goes out as the
        very bytes it came in; only an event that must change is decoded whole and re-encoded.
        """
        block, slow = self._probe(block)  # some event has fields to strip or tool calls
        if not slow and self._detector is None and not self._queue:
            return block
        queue = self._queue
        if not slow and not self._calls:  # content only: the block is held or released whole
            body, tail = (block[:-len(_END)], _END) if block.endswith(_END) else (block, b"")
            item = self._block_item(body) if body else None
            if item is not None or not body:
                if item is not None:
                    queue.append(item)
                return (await self.flush()) + tail if tail else self._release(final=False)
        out: list[bytes] = []
        for raw in block.split(b"\n\n"):
            if not raw:
                continue
            ev = raw + b"\n\n"
            body = raw[5:].strip() if raw.startswith(b"data:") else b""
            if not body.startswith(b"{"):
                out.append(await self.flush())  # [DONE], comments, anything else: release all first
                out.append(ev)
                continue
            try:
                if slow and ((self._tools and _TOOL_KEY in raw) or self._shape.clean(body) is False):
                    await self._event(ev, _decode(body))
                    continue
                light = _light(body)
            except msgspec.DecodeError:
                out.append(await self.flush())
                out.append(ev)
                continue
            choices = light.choices
            if len(choices) != 1:
                queue.append([ev, None, -1, None, None])
                continue
            c = choices[0]
            if self._calls and c.index in self._calls:  # the finish of a held tool call
                await self._event(ev, _decode(body))
                continue
            content = c.delta.content if c.delta is not None else None
            if self._detector is None or not content:
                queue.append([ev, None, c.index, None, None])
            else:
                queue.append([ev, None, c.index, content, content])
        out.append(self._release(final=False))
        return b"".join(out)

    def _block_item(self, body: bytes) -> list[Any] | None:
        """A block of content events of choice 0 as one queue item, or None: go event by event.

        The text is read straight from the bytes: an unescaped ``"content":"`` can only be a key
        (quotes inside JSON strings are escaped), and escaped pieces joined are one escaped string.
        Decoding the block into structs cost three times as much on the 64-event bench stream.
        """
        if not body.startswith(b"data: ") or _OTHER_CHOICE.search(body) is not None:
            return None
        if self._detector is None:
            return [body, _BLOCK, -1, None, None]
        raw = b"".join(_CONTENT.findall(body))
        try:
            text = msgspec.json.decode(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        return [body, _BLOCK, 0, text, text]

    def _explode(self) -> None:
        """Turn held blocks into their events, so a finding can be masked event by event."""
        items: list[list[Any]] = []
        for item in self._queue:
            if item[1] is not _BLOCK:
                items.append(item)
                continue
            for raw in item[0].split(b"\n\n"):
                if not raw:
                    continue
                c = _light(raw[5:].strip()).choices
                content = c[0].delta.content if c and c[0].delta is not None else None
                items.append([raw + b"\n\n", None, c[0].index if c else -1, content or None, content or None])
        self._queue[:] = items

    async def _event(self, ev: bytes, d: dict[str, Any]) -> None:
        """The rare event: fields to strip, or part of a tool call."""
        if "choices" not in d:  # not a chunk: an upstream's error event goes on as it came
            self._queue.append([ev, None, -1, None, None])
            return
        expose = self._expose
        changed = strip(d, BASE_REPLY, expose)
        choices = d.get("choices") or []
        if len(choices) != 1:  # usage chunks, or several choices in one event (rare): pass in order
            for c in choices:
                changed |= strip(c, BASE_CHOICE, expose)
            self._queue.append([None if changed else ev, d, -1, None, None])
            return
        c = choices[0]
        changed |= strip(c, BASE_CHOICE, expose)
        delta = c.get("delta") or {}
        changed |= strip(delta, BASE_MESSAGE, expose)
        i = c.get("index", 0)
        if self._tools and (delta.get("tool_calls") or i in self._calls):
            self._calls.setdefault(i, []).append(d)
            if c.get("finish_reason") is not None:
                await self._judge_stream(i)
            return
        content = delta.get("content")
        if self._detector is None or not isinstance(content, str) or not content:
            self._queue.append([None if changed else ev, d, i, None, None])
            return
        self._queue.append([None if changed else ev, d, i, content, content])

    async def _judge_stream(self, i: int) -> None:
        events = self._calls.pop(i)
        calls: dict[int, ToolCall] = {}
        for d in events:
            for tc in (d["choices"][0].get("delta") or {}).get("tool_calls") or ():
                call = calls.setdefault(tc.get("index", 0), ToolCall())
                call.id = tc.get("id") or call.id
                fn = tc.get("function") or {}
                call.name += fn.get("name") or ""
                call.arguments += fn.get("arguments") or ""
        judged: list[Judgement] = []
        kept, notes = await self._judge(list(calls.values()), judged)
        last = events[-1]
        if not notes:  # every call allowed: the events go out as they came
            self._queue.extend([None, d, -1, None, None] for d in events)
            return
        head = {k: v for k, v in last.items() if k != "choices"}
        if kept:
            delta = {"tool_calls": [{"index": n, "id": k.id, "type": "function",
                                     "function": {"name": k.name, "arguments": k.arguments}} for n, k in enumerate(kept)]}
            self._queue.append([None, {**head, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}, -1, None, None])
        self._queue.append([None, {**head, "choices": [{"index": i, "delta": {"content": "\n".join(notes)},
                                                        "finish_reason": None}], "sluice": {"tool_calls": summary(judged)}},
                            -1, None, None])
        fin = last["choices"][0]
        fin["delta"] = {}
        fin["finish_reason"] = "tool_calls" if kept else "stop"
        self._queue.append([None, last, -1, None, None])

    async def flush(self) -> bytes:
        """Release everything held (the stream's end); open tool calls are judged first."""
        for i in list(self._calls):
            await self._judge_stream(i)
        return self._release(final=True)

    def _release(self, *, final: bool) -> bytes:
        queue = self._queue
        if not queue:
            return b""
        window = self._rules.spec.output.stream_window
        keep_from = len(queue)
        if self._detector is not None:
            # scan once a window has gathered, keep half of it as the look-behind: each character is
            # scanned about twice, not once per event that follows it
            if not final and sum(len(e[3]) for e in queue if e[3] is not None) < window:
                return b""
            keep_from = self._scan(final, window // 2)
        out = []
        for ev, d, _, content, original in queue[:keep_from]:
            if ev is None or content != original:  # rewritten: masked or stripped
                if d is None:
                    d = _decode(ev[5:].strip())  # type: ignore[index]
                if content is not None:
                    d["choices"][0]["delta"]["content"] = content
                ev = b"data: " + _encode(d) + b"\n\n"
            out.append(ev)
        del queue[:keep_from]
        return b"".join(out)

    def _scan(self, final: bool, window: int) -> int:
        """Mask findings across the held content of each choice; how many queued events may go."""
        queue = self._queue
        known: dict[int, list[Finding]] = {}
        if any(e[1] is _BLOCK for e in queue):  # blocks are all choice 0
            known[0] = self._detector.find("".join(e[3] for e in queue if e[2] == 0 and e[3] is not None))  # type: ignore[union-attr]
            if known[0]:
                self._explode()  # the same text, now event by event: the findings stay valid
        hold_at = len(queue)
        for i in {e[2] for e in queue if e[3] is not None}:
            slots = [n for n, e in enumerate(queue) if e[2] == i and e[3] is not None]
            text = "".join(queue[n][3] for n in slots)
            masked, open_at = self._redact(text, final=final, found=known.get(i))
            if masked is not text:
                _spread(queue, slots, text, masked)
                text = "".join(queue[n][3] for n in slots)
                open_at = len(text) if final else min(open_at, len(text))
            if final:
                continue
            # an event may go once `window` chars follow it and no open finding starts in it
            limit = min(open_at, len(text) - window, _run_start(text))
            at = 0
            for n in slots:
                at += len(queue[n][3])
                if at > limit:
                    hold_at = min(hold_at, n)
                    break
        return hold_at


_HOLD_RUN = 4096  # a trailing run of non-space characters is held back up to this long


def _run_start(text: str) -> int:
    """Where the unbroken run at the end begins: a token still arriving may be a secret's prefix."""
    start = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1
    return max(start, len(text) - _HOLD_RUN)


def _masked(text: str, found: list[Finding], open_at: int) -> tuple[str, int]:
    out = masked_text(text, found)
    return out, open_at + (len(out) - len(text)) if open_at < len(text) else len(out)


def _spread(queue: list[list[Any]], slots: list[int], before: str, after: str) -> None:
    """Put masked text back into the events it came from: the same split where text is unchanged."""
    # common prefix and suffix lengths locate the changed middle; events keep their share of the rest
    p = 0
    while p < min(len(before), len(after)) and before[p] == after[p]:
        p += 1
    s = 0
    while s < min(len(before), len(after)) - p and before[-1 - s] == after[-1 - s]:
        s += 1
    middle = after[p:len(after) - s]
    at, placed = 0, False
    for n in slots:
        content: str = queue[n][3]
        lo, hi = at, at + len(content)
        at = hi
        keep_head = content[:max(0, min(p, hi) - lo)]
        keep_tail = content[len(content) - max(0, hi - max(lo, len(before) - s)):] if hi > len(before) - s else ""
        mid = ""
        if not placed and hi > p or (not placed and hi == len(before)):
            mid, placed = middle, True
        queue[n][3] = keep_head + mid + keep_tail


def _call_of(c: dict[str, Any]) -> ToolCall:
    fn = c.get("function") or {}
    return ToolCall(id=str(c.get("id") or ""), name=str(fn.get("name") or ""), arguments=str(fn.get("arguments") or ""))
