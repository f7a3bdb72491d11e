"""Server-sent events named by their ``event:`` line, as Anthropic's and the Responses API's streams are
written: read into (name, data) pairs for the grammar validators (``messages_grammar``, ``responses_grammar``)."""

from __future__ import annotations

import json
from typing import Any

Event = tuple[str, dict[str, Any]]


class GrammarError(AssertionError):
    """The stream breaks the grammar; the message says where and how."""


def parse_sse(raw: bytes) -> list[Event]:
    """(event name, data) of each SSE event; an event's name must equal its data's ``type``; a comment-only
    event (a keepalive) is skipped, as every SSE client skips it."""
    out: list[Event] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line and not line.startswith(":"):
                raise GrammarError(f"not an SSE line: {line!r}")
        if not data:
            continue
        payload = json.loads("\n".join(data))
        if name != payload.get("type"):
            raise GrammarError(f"event {name!r} carries data of type {payload.get('type')!r}")
        out.append((name, payload))
    return out
