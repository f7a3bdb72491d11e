"""Output minimisation: a reply carries only what the OpenAI API documents a caller needs.

On by default for chat completions, with no guardrails configured. A reply keeps ``BASE_*``;
anything else (``logprobs``, ``system_fingerprint``, vLLM's ``stop_reason``, ``prompt_logprobs``,
``kv_transfer_params``, ``token_ids``..., fields no one has named yet) is stripped unless the caller's
``expose`` set lists it. A ``Shape`` is one expose set, compiled once and shared.

Cheap when nothing must go: a whole reply is decoded once into strict typed structs (unknown
fields refused, the known vendor fields allowed only as ``null``) and, when that succeeds, goes
out as the very bytes it came in; only a reply that fails it is decoded whole, stripped and
re-encoded. A stream's first event gets the same strict check (a stream carries its vendor's
fields in every event); after that, memchr probes for the named keys with a non-null value decide.
A ``null`` vendor field says nothing and stays where stripping it would cost a rewrite.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

# Fields of a completion, a choice and a message that every caller gets; others need `expose`.
BASE_REPLY = frozenset({"id", "object", "created", "model", "choices", "usage", "service_tier"})
BASE_CHOICE = frozenset({"index", "message", "delta", "finish_reason"})
BASE_MESSAGE = frozenset({"role", "content", "tool_calls", "refusal", "function_call", "annotations"})
# Fields OpenAI or vLLM write, often as null: null passes untouched, any other value is stripped.
VENDOR = ("logprobs", "system_fingerprint", "stop_reason", "reasoning_content", "reasoning", "prompt_logprobs",
          "prompt_token_ids", "token_ids", "kv_transfer_params", "audio", "obfuscation")

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def strip(d: dict[str, Any], base: frozenset[str], expose: frozenset[str], nulls: bool = False) -> bool:
    """Drop fields beyond ``base`` not exposed; in streams, null ones stay (they say nothing, and cost a rewrite)."""
    extra = [k for k, v in d.items() if k not in base and k not in expose and (nulls or v is not None)]
    for k in extra:
        del d[k]
    return bool(extra)


def strip_reply(d: Any, expose: frozenset[str], nulls: bool) -> bool:
    """Minimise a decoded reply or stream event in place, at every level; whether anything went."""
    if not isinstance(d, dict):
        return False
    changed = strip(d, BASE_REPLY, expose, nulls)
    for choice in d.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        changed |= strip(choice, BASE_CHOICE, expose, nulls)
        for part in ("message", "delta"):
            msg = choice.get(part)
            if isinstance(msg, dict):
                changed |= strip(msg, BASE_MESSAGE, expose, nulls)
    return changed


def _strict(name: str, base: frozenset[str], expose: frozenset[str], nested: dict[str, Any], vendor: Any = None) -> type:
    """A struct that decodes only a level with no unknown field: base and exposed fields, the vendor
    ones typed ``vendor`` (None: allowed only as null, so a value to strip fails the decode)."""
    fields: list[tuple[str, Any, Any]] = [(f, nested.get(f, Any), None) for f in sorted(base | expose)]
    fields += [(f, vendor, None) for f in VENDOR if f not in base and f not in expose]
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False)


def _scalar_remover(names: list[str]) -> re.Pattern[bytes]:
    """Matches a named field with a scalar value, with the comma that joins it to its neighbour."""
    key = rb'\s*"(?:' + b"|".join(n.encode() for n in names) + rb')"\s*:\s*'
    scalar = rb'(?:"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false)'
    return re.compile(rb',' + key + scalar + rb'(?=\s*[,}])|(?<=\{)' + key + scalar + rb'(?:\s*,|(?=\s*\}))')


class Shape:
    """One expose set, compiled: the strict probe types for whole replies and first stream events."""

    __slots__ = ("expose", "_reply", "_event", "_keys", "_values", "_scalars")

    def __init__(self, expose: frozenset[str]) -> None:
        self.expose = expose
        message = _strict("Message", BASE_MESSAGE, expose, {})
        choice = _strict("Choice", BASE_CHOICE, expose, {"message": message | None, "delta": message | None})
        reply = _strict("Reply", BASE_REPLY, expose, {"choices": list[choice] | None})  # type: ignore[valid-type]
        self._reply = msgspec.json.Decoder(reply).decode
        # a stream's first event: unknown fields fail it; the named vendor fields are the probes' job
        message = _strict("Message", BASE_MESSAGE, expose, {}, Any)
        choice = _strict("Choice", BASE_CHOICE, expose, {"message": message | None, "delta": message | None}, Any)
        self._event = msgspec.json.Decoder(_strict("Event", BASE_REPLY, expose, {"choices": list[choice] | None}, Any)).decode
        named = [f for f in VENDOR if f not in expose]
        self._keys = tuple(b'"' + f.encode() + b'"' for f in named)
        # a named key with a value that is not null; escaped quotes inside strings cannot match
        self._values = re.compile(rb'"(?:' + b"|".join(f.encode() for f in named) + rb')": ?(?!null\b)') if named else None
        self._scalars = _scalar_remover(named) if named else None

    def clean(self, body: bytes) -> bool | None:
        """Whether a whole reply (or one event) has nothing to strip; None if it is not JSON at all."""
        try:
            self._reply(body)
        except msgspec.ValidationError:
            return False
        except msgspec.DecodeError:
            return None
        return True

    def minimise(self, body: bytes) -> bytes:
        """A whole reply with only what the caller may see: the same bytes when nothing must go."""
        if self.clean(body) is not False:  # clean, or not JSON (passed on as it came, as before)
            return body
        d = _decode(body)
        strip_reply(d, self.expose, True)
        return _encode(d)

    def named(self, block: bytes) -> bool:
        """Whether a block of events may hold a named vendor field with a value (memchr-fast first)."""
        values = self._values
        if values is None:
            return False
        for key in self._keys:
            if key in block:
                return values.search(block) is not None
        return False

    def first_event_clean(self, block: bytes) -> bool | None:
        """Whether the first JSON event of a block has nothing to strip (a stream's shape is its first
        event's); None when the block holds no JSON event (a keepalive comment)."""
        at = block.find(b"data: {")
        if at < 0:
            return None
        end = block.find(b"\n", at)
        try:
            self._event(block[at + 6:end if end >= 0 else len(block)])
        except msgspec.ValidationError:
            return False
        except msgspec.DecodeError:
            pass
        return True

    def scrub(self, block: bytes) -> bytes:
        """The block without the named vendor fields whose values are scalars (OpenAI's fingerprint on
        every chunk): a byte rewrite, no decoding; object values (logprobs) are left to the decoder."""
        return self._scalars.sub(b"", block) if self._scalars is not None else block


_SHAPES: dict[frozenset[str], Shape] = {}


def shape(expose: frozenset[str]) -> Shape:
    """The shared ``Shape`` of an expose set (few distinct sets: they come from the policy)."""
    got = _SHAPES.get(expose)
    if got is None:
        if len(_SHAPES) > 1024:
            _SHAPES.clear()
        got = _SHAPES[expose] = Shape(expose)
    return got
