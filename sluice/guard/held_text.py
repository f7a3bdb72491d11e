"""A stream's text held back for the detectors: a window per choice and field, scanned, masked, released.

Text is held by at most ``stream_window`` characters per channel (a choice's ``content``, or another
text field of it), plus a span still growing at the end of what arrived, so a secret split across
chunks is still seen whole. The queue keeps events in order; an event goes once the window after it
has been scanned. Blocks of plain content events of one choice are held whole (one item), and turned
into their events only when a finding must be masked in them. A legacy completion's stream is read the
same way, its choices' ``text`` where a chat chunk has its delta's ``content``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec

from .detectors import Detector, Finding, masked_text, open_public_block, public_end
from .policy import Rules

log = logging.getLogger("sluice.guard")
_decode = msgspec.json.decode
_encode = msgspec.json.encode
_BLOCK = object()  # marks a queue item that is a whole block of content events
_CONTENT = re.compile(rb'"content": ?"((?:[^"\\]|\\.)*)"')
_TEXT = re.compile(rb'"text": ?"((?:[^"\\]|\\.)*)"')  # a legacy completion's chunk
_OTHER_CHOICE = re.compile(rb'"index": ?[1-9]')
_OTHER_TEXT = re.compile(rb'"(?:refusal|reasoning_content|reasoning)": ?"')
TEXT = ("content", "refusal", "reasoning_content", "reasoning")  # fields of a message the detectors read
_END = b"data: [DONE]\n\n"


class _LightDelta(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: Any = None
    reasoning: Any = None


class _LightChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _LightDelta | None = None
    text: str | None = None  # a legacy completion's chunk: its choice's text, no delta


class _LightEvent(msgspec.Struct, gc=False):
    """The part of a chunk the stream guard reads on every event."""

    choices: list[_LightChoice] = []


_light = msgspec.json.Decoder(_LightEvent).decode


class HeldText:
    """The queue of a stream's events with the text each holds; ``_release`` says what may go now.

    Items: [event bytes | None (rewritten), event dict | None (not decoded), channel, text, text as it
    came]; the channel of a choice's content is its index, of its other text fields (index, field),
    -1 for an event with no text to read.
    """

    __slots__ = ("_rules", "_detector", "_queue", "_request_id", "kinds", "_released", "_clean_to", "_on_choice",
                 "_main")

    def __init__(self, rules: Rules, detector: Detector | None, request_id: str, on_choice: bool = False) -> None:
        self._rules = rules
        self._detector = detector
        self._request_id = request_id
        # a legacy completion's: a choice's text is its own ``text``, not its delta's ``content``
        self._on_choice = on_choice
        self._main = _TEXT if on_choice else _CONTENT
        self._queue: list[list[Any]] = []
        self.kinds: set[str] = set()
        # per channel: characters released so far, and up to where (from the stream's start) the text was
        # seen whole and clean (a public key block): a later look at its tail finds nothing in it
        self._released: dict[Any, int] = {}
        self._clean_to: dict[Any, int] = {}

    def _redact(self, text: str, *, final: bool, found: list[Finding] | None = None) -> tuple[str, int]:
        """(text with closed findings masked, where a finding still open at the end begins or len)."""
        if found is None:
            found = self._detector.find(text)  # type: ignore[union-attr]
        open_at = len(text)
        if not final and "-----BEGIN" in text:  # a public key still arriving is no secret yet: wait for its END
            public = open_public_block(text)
            if public >= 0:
                open_at = public
                found = [f for f in found if f.end <= public]
        if not found:
            return text, open_at
        if not final and found[-1].end == len(text):
            open_at = min(open_at, found[-1].start)
            found = found[:-1]
        if not self._noted(found):
            return text, open_at
        return _masked(text, found, open_at)

    def _noted(self, found: list[Finding]) -> bool:
        """Log the kinds found (once each, never the values); whether they are to be masked (not `flag`)."""
        kinds = {f.kind for f in found}
        if not kinds <= self.kinds:
            log.warning("guard: reply to %s carries %s (%s)", self._request_id or "-", ",".join(sorted(kinds - self.kinds)),
                        self._rules.output_action)
            self.kinds |= kinds
        return self._rules.output_action != "flag"

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
        if _OTHER_TEXT.search(body) is not None:  # a refusal or reasoning to read too: event by event
            return None
        raw = b"".join(self._main.findall(body))
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
                content = (c[0].delta.content if c[0].delta is not None else c[0].text) if c else None
                items.append([raw + b"\n\n", None, c[0].index if c else -1, content or None, content or None])
        self._queue[:] = items

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
        released = self._released if self._detector is not None else None
        for ev, d, channel, content, original in queue[:keep_from]:
            if released is not None and content is not None:
                released[channel] = released.get(channel, 0) + len(content)
            if ev is None or content != original:  # rewritten: masked or stripped
                if d is None:
                    d = _decode(ev[5:].strip())  # type: ignore[index]
                if content is not None:
                    choice = d["choices"][0]
                    if type(channel) is not int:
                        choice["delta"][channel[1]] = content
                    elif self._on_choice:
                        choice["text"] = content
                    else:
                        choice["delta"]["content"] = content
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
            found = known.get(i)
            base = self._released.get(i, 0)
            clean = self._clean_to.get(i, 0) - base
            if clean > 0:
                found = [f for f in (self._detector.find(text) if found is None else found) if f.end > clean]  # type: ignore[union-attr]
            masked, open_at = self._redact(text, final=final, found=found)
            if masked is not text:
                _spread(queue, slots, text, masked)
                text = "".join(queue[n][3] for n in slots)
                open_at = len(text) if final else min(open_at, len(text))
            end = public_end(text)
            if end:
                self._clean_to[i] = base + end
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
