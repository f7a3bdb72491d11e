"""Output guardrails: minimise, redact and hold tool calls, on whole replies and on streams.

Streams stay streams: text is held back by at most ``stream_window`` characters per choice and
field (``content``, ``refusal``, exposed reasoning), so a secret split across chunks is still seen
whole, plus a span that is still growing at the end of what arrived. Tool-call deltas (and the
legacy ``function_call``) are held until their call is complete, then judged against the registry
(when the policy has one, whatever the request offered) and masked, so nothing of a blocked call
reaches the client and a call's arguments carry no secret the detectors know.

A legacy completion (``completions=True``) is guarded the same way, whole and streamed: its choices'
``text`` is read where a chat reply has its message's or delta's ``content``; it makes no tool calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .calls import StreamedCalls, message_calls, rewrite_message
from .detectors import masked_json
from .held_text import _END, TEXT, HeldText, _light
from .minimise import BASE_CHOICE, BASE_MESSAGE, BASE_REPLY, FIRST_EVENTS, Shape, sampled, shape, strip
from .policy import GuardPolicy, Rules
from .tools import Judgement, ToolCall, judge, notice, summary

log = logging.getLogger("sluice.guard")
Hold = Callable[[Judgement], Awaitable[str]]  # stores a pending approval, returns its id
Record = Callable[[Judgement], None]  # records a decision, off the request path

_decode = msgspec.json.decode
_encode = msgspec.json.encode
_TOOL_KEY, _FUNCTION_KEY = b'"tool_calls"', b'"function_call"'
_MAIN = ("content", "text")  # a choice's main text (chat's, legacy completions'): its channel is its index


def _has_call(raw: bytes) -> bool:
    return _TOOL_KEY in raw or _FUNCTION_KEY in raw


class _Message(msgspec.Struct, omit_defaults=True):
    role: str = "assistant"
    content: str | None | msgspec.UnsetType = msgspec.UNSET
    tool_calls: list[Any] | msgspec.UnsetType = msgspec.UNSET
    refusal: str | None | msgspec.UnsetType = msgspec.UNSET
    function_call: Any = msgspec.UNSET
    annotations: list[Any] | msgspec.UnsetType = msgspec.UNSET


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None | msgspec.UnsetType = msgspec.UNSET
    text: str | None | msgspec.UnsetType = msgspec.UNSET  # a legacy completion's
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


class OutputGuard(HeldText):
    """One request's output guard; ``reply`` for a whole body, ``feed``/``flush`` for a stream."""

    __slots__ = ("_policy", "_identity", "_team", "_hold", "_record", "_tools", "_expose", "_shape", "_calls",
                 "_asked", "_every", "_first", "judgements", "_hold_calls", "_held")

    def __init__(self, rules: Rules, policy: GuardPolicy, identity: str, team: str | None, *, tools: bool,
                 hold: Hold, record: Record, request_id: str = "", exposed: Shape | None = None,
                 every_event: bool = False, completions: bool = False) -> None:
        act = rules.output_action
        super().__init__(rules, rules.detector if act != "allow" else None, request_id, on_choice=completions)
        self._policy = policy
        self._identity = identity
        self._team = team
        self._hold = hold
        self._record = record
        self._tools = tools  # judge calls against the registry
        self._hold_calls = tools or self._detector is not None  # calls are held whole: judged, or their arguments masked
        self._held = 0  # calls of this reply held for approval
        # what this caller sees beyond the basics: its rule set's `output.expose` and its own grants
        self._shape = exposed if exposed is not None else shape(rules.expose)
        self._expose = self._shape.expose
        # a stream's events checked strictly: all of them, or (`sampled`) the first ones and those that
        # close it, all of them once one of those had something to strip
        self._asked = every_event or rules.spec.output.stream_check == "every_event"
        self._every = self._asked
        self._first = FIRST_EVENTS
        self._calls: dict[int, StreamedCalls] = {}  # held tool-call events per choice
        self.judgements: list[Judgement] = []

    def fresh(self) -> OutputGuard:
        """The same guard with nothing held: for a new attempt after one that sent nothing."""
        return OutputGuard(self._rules, self._policy, self._identity, self._team, tools=self._tools,
                           hold=self._hold, record=self._record, request_id=self._request_id, exposed=self._shape,
                           every_event=self._asked, completions=self._on_choice)

    # -- whole replies ------------------------------------------------------------------------
    async def reply(self, body: bytes) -> bytes:
        if not self._hold_calls:  # minimisation only: the same bytes when nothing must go
            return self._shape.minimise(body)
        if not self._tools and not self._expose:  # typed: decoding drops every field beyond the basics
            try:
                r = _minimal(body)
            except msgspec.DecodeError:
                return body
            for c in r.choices:
                if isinstance(c.message, _Message):
                    self._mask_message(c.message)
                if isinstance(c.text, str):
                    c.text = self._mask(c.text)
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
            if not isinstance(choice, dict):
                continue
            strip(choice, BASE_CHOICE, expose, True)
            if self._detector is not None and isinstance(choice.get("text"), str):  # a legacy completion's
                choice["text"] = self._mask(choice["text"])
            msg = choice.get("message")
            if not isinstance(msg, dict):
                continue
            strip(msg, BASE_MESSAGE, expose, True)
            if self._detector is not None:
                for f in TEXT:
                    if isinstance(msg.get(f), str):
                        msg[f] = self._mask(msg[f])
            calls = message_calls(msg)
            if not calls:
                continue
            outs, notes = await self._settle(calls, judged)
            left = rewrite_message(msg, outs, self._name_mask())
            if notes:
                content = msg.get("content")
                msg["content"] = "\n".join(filter(None, [content if isinstance(content, str) else None, *notes]))
                if not left:
                    choice["finish_reason"] = "stop"
        if judged:
            d["sluice"] = {"tool_calls": self._summary(judged)}
        return _encode(d)

    def _mask_message(self, m: _Message) -> None:
        """Every text of a typed message through the detectors: content, refusal, each call's name and arguments."""
        if isinstance(m.content, str):
            m.content = self._mask(m.content)
        if isinstance(m.refusal, str):
            m.refusal = self._mask(m.refusal)
        calls = [(c.get("function") if isinstance(c, dict) else None) for c in m.tool_calls or ()]
        for fn in [*calls, m.function_call]:
            if isinstance(fn, dict):
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = self._arguments(fn["arguments"])
                if isinstance(fn.get("name"), str):
                    fn["name"] = self._mask(fn["name"])

    def _mask(self, text: str) -> str:
        return self._redact(text, final=True)[0]

    def _name_mask(self) -> Callable[[str], str] | None:
        return self._mask if self._detector is not None else None

    async def _settle(self, calls: list[tuple[int, ToolCall]], judged: list[Judgement]
                      ) -> tuple[dict[int, str | None], list[str]]:
        """(position -> the arguments a call goes out with, None for a call that does not go; notices of
        the calls that do not). With a registry, allowed calls carry their canonical arguments."""
        if not self._tools:
            return {k: self._arguments(c.arguments) for k, c in calls}, []
        outs: dict[int, str | None] = {}
        notes = []
        for (k, _), j in zip(calls, await self._judge([c for _, c in calls], judged)):
            if j.verdict == "allow":
                outs[k] = self._arguments(j.canonical or "{}")
            else:
                outs[k] = None
                notes.append(self._mask(notice(j)) if self._detector is not None else notice(j))
        return outs, notes

    def _arguments(self, text: str) -> str:
        """A call's arguments with what the detectors find masked inside its JSON strings (a number
        found becomes its mask as a string), so they stay JSON; text that is not JSON is masked plainly."""
        if self._detector is None:
            return text
        found = self._detector.find_json(text)
        return masked_json(text, found) if found and self._noted(found) else text

    def _summary(self, judged: list[Judgement]) -> list[dict[str, Any]]:
        out = summary(judged)
        if self._detector is not None:  # a model could spell a secret as a tool's name
            for row in out:
                row["name"] = self._mask(row["name"])
        return out

    async def _judge(self, calls: list[ToolCall], judged: list[Judgement]) -> list[Judgement]:
        """One judgement per call, in order; past ``tools.max_held_per_reply`` a held call is blocked."""
        out = []
        cap = self._rules.spec.tools.max_held_per_reply
        for call in calls:
            j = judge(self._policy, self._identity, self._team, call)
            if j.verdict == "hold":
                if self._held >= cap:
                    j = Judgement(call=call, verdict="block", reason="too_many_held_calls", risk=j.risk)
                else:
                    self._held += 1
                    j.approval_id = await self._hold(j)
            out.append(j)
            judged.append(j)
            self.judgements.append(j)
            self._record(j)
        return out

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
                return block, self._hold_calls and _has_call(block)
            self._every = True
        block, clean = self._shape.clean_events(block)
        return block, not clean or (self._hold_calls and _has_call(block))

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
                if slow and ((self._hold_calls and _has_call(raw)) or self._shape.clean(body) is False):
                    await self._event(ev, _decode(body))
                    continue
                light = _light(body)
            except msgspec.DecodeError:
                out.append(await self.flush())
                out.append(ev)
                continue
            choices = light.choices
            if len(choices) != 1:
                if len(choices) > 1 and self._detector is not None:  # several choices in one event: split
                    await self._event(ev, _decode(body))
                else:
                    queue.append([ev, None, -1, None, None])
                continue
            c = choices[0]
            delta = c.delta
            if (self._calls and c.index in self._calls) or (  # the finish of a held tool call, or a text beside content
                    self._detector is not None and delta is not None
                    and (delta.refusal or delta.reasoning_content or delta.reasoning)):
                await self._event(ev, _decode(body))
                continue
            content = delta.content if delta is not None else c.text
            if self._detector is None or not content:
                queue.append([ev, None, c.index, None, None])
            else:
                queue.append([ev, None, c.index, content, content])
        out.append(self._release(final=False))
        return b"".join(out)

    async def _event(self, ev: bytes | None, d: dict[str, Any]) -> None:
        """The rare event: fields to strip, part of a tool call, several choices or several texts."""
        if "choices" not in d:  # not a chunk: an upstream's error event goes on as it came
            self._queue.append([ev, d if ev is None else None, -1, None, None])
            return
        expose = self._expose
        changed = strip(d, BASE_REPLY, expose)
        choices = d.get("choices") or []
        if len(choices) > 1 and self._hold_calls:  # one choice per event from here: each is read on its own
            head = {k: v for k, v in d.items() if k != "choices"}
            for c in choices:
                await self._event(None, {**head, "choices": [c]})
            return
        c = choices[0] if len(choices) == 1 else None
        if not isinstance(c, dict):  # usage chunks (no choice), or several choices and nothing to read in them
            for c in choices:
                if isinstance(c, dict):
                    changed |= strip(c, BASE_CHOICE, expose)
            self._queue.append([None if changed else ev, d, -1, None, None])
            return
        changed |= strip(c, BASE_CHOICE, expose)
        delta = c.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        changed |= strip(delta, BASE_MESSAGE, expose)
        i = c.get("index", 0)
        texts = [(f, delta[f]) for f in TEXT if isinstance(delta.get(f), str) and delta[f]]
        if self._on_choice and isinstance(c.get("text"), str) and c["text"]:  # a legacy completion's text
            texts = [("text", c["text"])]
        if self._hold_calls and (delta.get("tool_calls") or delta.get("function_call") or i in self._calls):
            if texts:  # text beside a call goes the way of text; the call is held
                self._text_event(None, {**d, "choices": [{**c, "delta": dict(texts), "finish_reason": None}]}, i, texts)
                c = {**c, "delta": {k: v for k, v in delta.items() if k not in TEXT}}
                d = {**d, "choices": [c]}
            self._calls.setdefault(i, StreamedCalls()).add(d)
            if c.get("finish_reason") is not None:
                await self._settle_calls(i)
            return
        self._text_event(None if changed else ev, d, i, texts)

    def _text_event(self, ev: bytes | None, d: dict[str, Any], i: int, texts: list[tuple[str, str]]) -> None:
        """Queue an event of one choice; text in several fields becomes one event per field, each field read
        as its own channel (a secret split across a field's events is still seen whole)."""
        if self._detector is None or not texts:
            self._queue.append([ev, d, i, None, None])
            return
        if len(texts) == 1:
            f, v = texts[0]
            self._queue.append([ev, d, i if f in _MAIN else (i, f), v, v])
            return
        c = d["choices"][0]
        delta, last = c["delta"], len(texts) - 1
        for n, (f, v) in enumerate(texts):
            part = {k: x for k, x in delta.items() if k not in TEXT} if n == 0 else {}
            part[f] = v
            one = {**d, "choices": [{**c, "delta": part, "finish_reason": c.get("finish_reason") if n == last else None}]}
            self._queue.append([None, one, i if f == "content" else (i, f), v, v])

    async def _settle_calls(self, i: int) -> None:
        """A choice's calls are complete: judge them and queue what may go, with a notice for the rest."""
        held = self._calls.pop(i)
        judged: list[Judgement] = []
        outs, notes = await self._settle(held.calls(), judged)
        events, left = held.rewrite(outs, self._name_mask())
        if notes:
            last = held.events[-1]
            head = {k: v for k, v in last.items() if k != "choices"}
            note = {**head, "choices": [{"index": i, "delta": {"content": "\n".join(notes)}, "finish_reason": None}],
                    "sluice": {"tool_calls": self._summary(judged)}}
            fin = last["choices"][0]
            if events and events[-1] is last and fin.get("finish_reason") is not None:
                events.insert(len(events) - 1, note)
                if not left:
                    fin["finish_reason"] = "stop"
            else:
                events.append(note)
        self._queue.extend([None, d, -1, None, None] for d in events)

    async def flush(self) -> bytes:
        """Release everything held (the stream's end); open tool calls are judged first."""
        for i in list(self._calls):
            await self._settle_calls(i)
        return self._release(final=True)
